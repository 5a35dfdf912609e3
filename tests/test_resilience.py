"""Losing nothing and staying up: restarts, SIGKILL, SIGTERM, a failing database, hostile clients, soak."""
from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from tests.helpers import as_payload, heldout_frame, metric_value, request

ROOT = Path(__file__).resolve().parent.parent
ROW = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}


@pytest.fixture(scope="module")
def heldout():
    return heldout_frame()


def _start(small_artifact, **overrides):
    config = MonitorConfig(**{"model_path": Path("unused"), "port": 0, "check_interval": 0, **overrides})
    return start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())


def _stored_ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM predictions")}


# ------------------------------------------------------------------------- real processes, real signals

class _MonitorProcess:
    """`python monitor.py` in a subprocess on a free port, read from its log line."""

    def __init__(self, model: Path, db: Path, *extra: str):
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "monitor.py"), "--model", str(model), "--db", str(db), "--port", "0",
             "--check-interval", "0", "--window", "500", "--label-window", "500", *extra],
            stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.log: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise AssertionError("monitor exited before serving:\n" + "".join(self.log))
            self.log.append(line)
            match = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                break
        else:
            raise AssertionError("monitor did not start in 60 s")
        self._reader = threading.Thread(target=self._drain_log, daemon=True)
        self._reader.start()

    def _drain_log(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self, sig=signal.SIGKILL, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def test_sigkill_loses_nothing_acknowledged_and_a_restart_rebuilds_the_windows(small_artifact_path, tmp_path, heldout):
    db = tmp_path / "monitor.db"
    first = _MonitorProcess(small_artifact_path, db)
    acknowledged: list[str] = []
    stop = threading.Event()

    def hammer():  # keep predicting while the process is killed
        payload = as_payload(heldout.iloc[:5])
        while not stop.is_set():
            try:
                status, _, body = request(first.url, "POST", "/predict", payload, timeout=5)
            except (OSError, http.client.HTTPException):  # the process is gone
                return
            if status == 200:
                acknowledged.extend(body["ids"])

    clients = [threading.Thread(target=hammer) for _ in range(4)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 20
    while len(acknowledged) < 600 and time.monotonic() < deadline:
        time.sleep(0.02)
    first.stop(signal.SIGKILL)
    stop.set()
    for c in clients:
        c.join(timeout=10)
    assert len(acknowledged) >= 600
    assert set(acknowledged) <= _stored_ids(db)  # every answered prediction was on disk

    second = _MonitorProcess(small_artifact_path, db)
    try:
        health = request(second.url, "GET", "/healthz")[2]
        assert health["windows"]["inputs"] == 500  # refilled from the store, not empty
        # the gauges and /drift show the refilled windows at once, not a check interval later
        assert metric_value(request(second.url, "GET", "/metrics")[2], "drift_window_samples",
                            {"window": "inputs"}) == 500
        report = request(second.url, "GET", "/drift")[2]
        assert report["checked_at"] is not None and report["data_drift"]["window_size"] == 500
        labels = [{"id": i, "actual": 1800.0} for i in acknowledged[:50]]
        status, _, reply = request(second.url, "POST", "/feedback", labels)
        assert status == 200 and reply == {"accepted": 50, "unknown": []}  # late labels still join
        assert request(second.url, "GET", "/healthz")[2]["windows"]["labelled"] == 50
    finally:
        assert second.stop(signal.SIGTERM) == 0

    third = _MonitorProcess(small_artifact_path, db)  # labels survive a restart too
    try:
        assert request(third.url, "GET", "/healthz")[2]["windows"]["labelled"] == 50
    finally:
        third.stop(signal.SIGTERM)


def test_sigterm_finishes_requests_in_flight_then_exits_zero(small_artifact_path, tmp_path, heldout):
    db = tmp_path / "monitor.db"
    proc = _MonitorProcess(small_artifact_path, db)
    big = as_payload(heldout.iloc[:10_000])  # a request that takes a while to parse and predict
    result = {}

    def slow_request():
        result["response"] = request(proc.url, "POST", "/predict", big, timeout=60)

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(0.3)  # the body is on its way or being predicted
    started = time.monotonic()
    code = proc.stop(signal.SIGTERM)
    took = time.monotonic() - started
    client.join(timeout=30)
    assert code == 0
    assert took < 10
    status, _, body = result["response"]
    assert status == 200 and len(body["ids"]) == 10_000
    assert set(body["ids"]) <= _stored_ids(db)
    assert any("stopped" in line for line in proc.log)


def test_an_export_of_labelled_records_for_retraining(small_artifact, tmp_path, heldout):
    db = tmp_path / "monitor.db"
    handle = _start(small_artifact, db_path=db)
    try:
        body = request(handle.url, "POST", "/predict", as_payload(heldout.iloc[:20]))[2]
        labels = [{"id": i, "actual": float(p)} for i, p in zip(body["ids"][:12], heldout.price.iloc[:12])]
        request(handle.url, "POST", "/feedback", labels)
    finally:
        handle.stop()
    target = tmp_path / "labelled.csv"
    out = subprocess.run([sys.executable, str(ROOT / "monitor.py"), "--db", str(db), "--export-labelled", str(target)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    import pandas as pd

    frame = pd.read_csv(target)
    assert len(frame) == 12
    assert {"carat", "cut", "color", "clarity", "depth", "table", "prediction", "actual"} <= set(frame.columns)
    assert frame["actual"].tolist() == [float(p) for p in heldout.price.iloc[:12]]


# ------------------------------------------------------------------------------------- a failing database

def test_a_full_database_degrades_health_but_predictions_answer_and_recover(small_artifact, tmp_path):
    db = tmp_path / "monitor.db"
    handle = _start(small_artifact, db_path=db, maintenance_interval=0.1)
    try:
        store = handle.monitor.store
        assert request(handle.url, "POST", "/predict", ROW)[0] == 200
        pages = store._writer_conn().execute("PRAGMA page_count").fetchone()[0]
        store._writer_conn().execute(f"PRAGMA max_page_count = {pages}")  # "database or disk is full"

        answered = []
        for _ in range(3):
            status, _, body = request(handle.url, "POST", "/predict", [ROW] * 200)
            assert status == 200
            answered += body["ids"]
        health = request(handle.url, "GET", "/healthz")[2]
        assert health["status"] == "degraded" and "full" in health["store"]["error"]
        # while it fails, a single row tries to write itself only, not the whole retry buffer
        latencies = []
        for _ in range(20):
            started = time.monotonic()
            status, _, body = request(handle.url, "POST", "/predict", ROW)
            latencies.append(time.monotonic() - started)
            assert status == 200
            answered.append(body["id"])
        assert sorted(latencies)[10] < 0.05, latencies
        text = request(handle.url, "GET", "/metrics")[2]
        assert metric_value(text, "store_healthy") == 0
        assert metric_value(text, "store_pending_records") >= 600  # single rows may still fit a page
        status, _, reply = request(handle.url, "POST", "/feedback", {"id": answered[0], "actual": 1000})
        assert status == 503 and "send them again" in reply["error"]  # not acknowledged, so not lost
        text = request(handle.url, "GET", "/metrics")[2]  # the server's refusal, not the client's fault
        assert metric_value(text, "refused_requests_total", {"endpoint": "/feedback", "reason": "store_unavailable"}) == 1
        with pytest.raises(KeyError):
            metric_value(text, "invalid_requests_total", {"endpoint": "/feedback", "reason": "store_unavailable"})

        store._writer_conn().execute("PRAGMA max_page_count = 1073741823")  # space again
        deadline = time.monotonic() + 10
        while not store.healthy and time.monotonic() < deadline:
            time.sleep(0.05)  # the maintenance loop retries without waiting for traffic
        assert store.healthy
        assert request(handle.url, "GET", "/healthz")[2]["status"] == "ok"
        assert request(handle.url, "POST", "/feedback", {"id": answered[0], "actual": 1000})[2]["accepted"] == 1
    finally:
        handle.stop()
    assert set(answered) <= _stored_ids(db)


# --------------------------------------------------------------------------------------- hostile clients

def _raw_exchange(url: str, data: bytes, timeout: float = 10) -> bytes:
    host, port = url.rsplit(":", 1)
    with socket.create_connection((host.split("//")[1], int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except socket.timeout:
            pass
        return b"".join(chunks)


def _status_and_json(response: bytes):
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_huge_declared_body_is_refused_without_reading_it(small_artifact):
    handle = _start(small_artifact, db_path=None)
    try:
        started = time.monotonic()
        response = _raw_exchange(handle.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                             b"Content-Length: 1000000000\r\n\r\n{\"carat\":")
        status, body = _status_and_json(response)
        assert status == 413 and "at most" in body["error"]
        assert time.monotonic() - started < 5
    finally:
        handle.stop()


def test_a_content_length_that_lies_gets_a_json_4xx(small_artifact):
    handle = _start(small_artifact, db_path=None, socket_timeout=0.5)
    try:
        short = _raw_exchange(handle.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{\"carat\": 1}")
        status, body = _status_and_json(short)
        assert status == 408 and "in time" in body["error"]
        # More bytes than declared: the rest is read as a next request, which is not HTTP.
        long = _raw_exchange(handle.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}garbage here\r\n\r\n")
        statuses = re.findall(rb"HTTP/1.1 (\d{3})", long)
        assert statuses[0] == b"400" and all(s.startswith(b"4") for s in statuses)
        assert b"Traceback" not in long and b"<html" not in long.lower()
        assert request(handle.url, "POST", "/predict", ROW)[0] == 200  # the server is unharmed
    finally:
        handle.stop()


def test_malformed_request_lines_and_headers_get_json_errors(small_artifact):
    handle = _start(small_artifact, db_path=None)
    try:
        for raw in (b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
                    b"BREW /predict HTTP/1.1\r\nHost: x\r\n\r\n"):
            response = _raw_exchange(handle.url, raw)
            status, body = _status_and_json(response)
            assert 400 <= status < 500 and "error" in body
        assert request(handle.url, "GET", "/healthz")[0] == 200
    finally:
        handle.stop()


def test_idle_and_half_sent_connections_make_room_and_busy_ones_get_a_503(small_artifact):
    handle = _start(small_artifact, db_path=None, socket_timeout=5.0, max_connections=20)
    host, port = handle.server.server_address[:2]
    hogs = []
    try:
        for i in range(30):  # more than max_connections: idle ones and half-sent headers
            sock = socket.create_connection((host, port), timeout=5)
            if i % 2:
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le")
            hogs.append(sock)
        time.sleep(0.2)
        # They hold no request: a new client takes the place of the one that waited longest, at once.
        started = time.monotonic()
        assert request(handle.url, "POST", "/predict", ROW, timeout=5)[0] == 200
        assert time.monotonic() - started < 1.0
        for sock in hogs:
            sock.close()
        # Connections busy with a request (a complete head, its body still to come) are never closed
        # to make room: past the limit a new connection is told so at once.
        busy = []
        for _ in range(20):
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            busy.append(sock)
        hogs = busy
        time.sleep(0.3)
        with socket.create_connection((host, port), timeout=5) as sock:
            status, body = _status_and_json(sock.recv(65536))
        assert status == 503 and "too many open connections" in body["error"]
    finally:
        for sock in hogs:
            sock.close()
        handle.stop()


def test_write_endpoints_need_the_token_when_one_is_set(small_artifact):
    handle = _start(small_artifact, db_path=None, token="s3cret")
    try:
        body = request(handle.url, "POST", "/predict", ROW)[2]  # predictions stay open
        label = {"id": body["id"], "actual": 1500}
        status, headers, reply = request(handle.url, "POST", "/feedback", label)
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "Authorization" in reply["error"]
        assert request(handle.url, "POST", "/feedback", label, headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(handle.url, "POST", "/drift/check")[0] == 401
        ok = request(handle.url, "POST", "/feedback", label, headers={"Authorization": "Bearer s3cret"})
        assert ok[0] == 200 and ok[2]["accepted"] == 1
        assert request(handle.url, "POST", "/drift/check", headers={"Authorization": "Bearer s3cret"})[0] == 200
        # the scheme is case-insensitive (RFC 7235); the token is not
        assert request(handle.url, "POST", "/drift/check", headers={"Authorization": "bearer s3cret"})[0] == 200
        assert request(handle.url, "POST", "/drift/check", headers={"Authorization": "Bearer S3CRET"})[0] == 401
        assert request(handle.url, "POST", "/drift/check", headers={"Authorization": "Basic s3cret"})[0] == 401
    finally:
        handle.stop()


# ------------------------------------------------------------------------------------------------ soak

def test_soak_mixed_traffic_keeps_counts_consistent_and_records_everything(small_artifact, tmp_path, heldout):
    db = tmp_path / "monitor.db"
    handle = _start(small_artifact, db_path=db, window=2000, label_window=1000)
    payloads = [as_payload(heldout.iloc[i:i + n]) for i, n in ((0, 1), (10, 7), (40, 25), (100, 1))]
    prices = [heldout.price.iloc[i:i + n].tolist() for i, n in ((0, 1), (10, 7), (40, 25), (100, 1))]
    lock = threading.Lock()
    sent = {"rows": 0, "labels": 0, "errors": []}
    acknowledged: list[str] = []
    deadline = time.monotonic() + 8

    def predictor(k):
        i = k
        while time.monotonic() < deadline:
            payload, price = payloads[i % 4], prices[i % 4]
            i += 1
            status, _, body = request(handle.url, "POST", "/predict", payload)
            if status != 200:
                sent["errors"].append(("predict", status, body))
                continue
            labels = [{"id": x, "actual": float(p)} for x, p in zip(body["ids"], price)]
            status, _, reply = request(handle.url, "POST", "/feedback", labels if i % 2 else labels[0])
            if status != 200:
                sent["errors"].append(("feedback", status, reply))
            with lock:
                sent["rows"] += len(body["ids"])
                sent["labels"] += reply.get("accepted", 0)
                acknowledged.extend(body["ids"])

    def observer():
        while time.monotonic() < deadline:
            for method, path in (("GET", "/metrics"), ("POST", "/drift/check"), ("GET", "/drift"), ("GET", "/healthz")):
                status, _, _ = request(handle.url, method, path)
                if status != 200:
                    sent["errors"].append((path, status))

    threads = [threading.Thread(target=predictor, args=(k,)) for k in range(8)] + \
              [threading.Thread(target=observer) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not sent["errors"], sent["errors"][:5]
        text = request(handle.url, "GET", "/metrics")[2]
        assert metric_value(text, "predictions_total") == sent["rows"] > 100
        assert metric_value(text, "labels_received_total") == sent["labels"]
        assert metric_value(text, "drift_check_failures_total") == 0
        assert metric_value(text, "drift_checks_total") > 0
        assert metric_value(text, "store_rows", {"kind": "predictions"}) == sent["rows"]
    finally:
        handle.stop()
    assert set(acknowledged) == _stored_ids(db)


# ------------------------------------------------------------------------------ what the store holds

def test_stored_rows_that_no_longer_fit_the_model_are_left_out_at_start(small_artifact, tmp_path):
    from monitoring.store import PredictionRecord, Store

    db = tmp_path / "monitor.db"
    with Store(db) as store:
        store.add_predictions([PredictionRecord.create((0.5, "Ideal", "E", "VS1", 61.5, 55.0), 1500.0, "v1")
                               for _ in range(40)])
    with sqlite3.connect(db) as conn:  # what an older model, or a damaged file, left behind
        conn.execute("INSERT INTO predictions (id, ts, carat, cut, color, clarity, depth, table_, prediction, "
                     "model_version) VALUES ('a', 1e10, 0.5, 'Perfect', 'E', 'VS1', 61.5, 55, 1.0, 'old')")
        conn.execute("INSERT INTO predictions (id, ts, carat, cut, color, clarity, depth, table_, prediction, "
                     "model_version) VALUES ('b', 1e10, NULL, 'Ideal', 'E', 'VS1', 61.5, 55, 1.0, 'old')")
    handle = _start(small_artifact, db_path=db)  # today's model: no crash, no crash loop
    try:
        health = request(handle.url, "GET", "/healthz")[2]
        assert health["status"] == "ok" and health["windows"]["inputs"] == 40
        assert request(handle.url, "POST", "/predict", ROW)[0] == 200
    finally:
        handle.stop()


def test_retention_runs_soon_after_start_not_an_interval_later(small_artifact, tmp_path):
    from monitoring.store import PredictionRecord, Store

    db = tmp_path / "monitor.db"
    with Store(db) as store:  # a year old
        store.add_predictions([PredictionRecord.create((0.5, "Ideal", "E", "VS1", 61.5, 55.0), 1500.0, "v1",
                                                       ts=time.time() - 365 * 86400) for _ in range(30)])
    handle = _start(small_artifact, db_path=db, retention_days=30, prune_interval=600)
    try:
        deadline = time.monotonic() + 15
        while handle.monitor.store.counts()["predictions"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert handle.monitor.store.counts()["predictions"] == 0, "not pruned within 15 s of start"
    finally:
        handle.stop()


def test_healthz_says_how_many_answered_predictions_were_not_recorded(small_artifact, tmp_path):
    handle = _start(small_artifact, db_path=tmp_path / "monitor.db", maintenance_interval=60)
    try:
        store = handle.monitor.store
        store.max_pending = 100  # a small retry buffer, to overflow it quickly
        assert request(handle.url, "POST", "/predict", ROW)[0] == 200
        pages = store._writer_conn().execute("PRAGMA page_count").fetchone()[0]
        store._writer_conn().execute(f"PRAGMA max_page_count = {pages}")  # "database or disk is full"
        for _ in range(3):
            assert request(handle.url, "POST", "/predict", [ROW] * 200)[0] == 200  # still answered
        health = request(handle.url, "GET", "/healthz")[2]
        assert health["status"] == "degraded"
        assert health["store"]["pending"] == 100 and health["store"]["acknowledged_not_recorded"] == 500
        assert metric_value(request(handle.url, "GET", "/metrics")[2], "store_dropped_records_total") == 500
    finally:
        handle.stop()
