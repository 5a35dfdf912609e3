"""Slow and heavy clients against a real server: a trickled request head is dropped after a bound
on the whole head, and hundreds of such clients do not keep a normal client from its answers."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from monitor import MonitorConfig, start_monitor
from tests.helpers import request

ROW = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}
HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n"


@pytest.fixture
def server(small_artifact):
    config = MonitorConfig(port=0, check_interval=0, db_path=None, socket_timeout=3.0)
    handle = start_monitor(config, artifact=small_artifact, registry=CollectorRegistry())
    yield handle
    handle.stop()


def test_a_head_sent_a_byte_at_a_time_is_dropped_after_the_head_bound(server):
    host, port = server.server.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as sock:
        started = time.monotonic()
        closed_after = None
        for byte in HEAD:  # one byte every 0.25 s: each read sees data well within the 3 s timeout
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.25)
                if sock.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                continue
            except OSError:  # reset by the server
                closed_after = time.monotonic() - started
                break
            if time.monotonic() - started > 8:
                break
    assert closed_after is not None, "a trickled head was never dropped"
    assert 2.5 < closed_after < 4.5, f"dropped after {closed_after:.1f} s; the bound is 3 s for the whole head"


def test_three_hundred_trickling_clients_do_not_stop_a_normal_one(server):
    host, port = server.server.server_address[:2]
    stop = threading.Event()
    sockets: list[socket.socket] = []

    def trickle(sock: socket.socket) -> None:  # a byte a second until stopped or dropped
        for byte in HEAD:
            if stop.wait(1.0):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                return

    for _ in range(300):
        sock = socket.create_connection((host, port), timeout=5)
        sockets.append(sock)
        threading.Thread(target=trickle, args=(sock,), daemon=True).start()
    latencies = []
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # a normal client, while the trickling goes on
            started = time.monotonic()
            status, _, _ = request(server.url, "POST", "/predict", ROW, timeout=5)
            latencies.append(time.monotonic() - started)
            assert status == 200
            time.sleep(0.1)
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
    assert len(latencies) >= 20
    assert max(latencies) < 1.0, f"slowest answer {max(latencies):.2f} s beside 300 trickling clients"



def _rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_memory_is_bounded_by_the_limits_not_by_the_bodies(small_artifact_path, tmp_path):
    """64 bodies of 4 MB of `[{}, {}, ...]` at once: each would be ~100 MB of Python objects."""
    from tests.test_resilience import _MonitorProcess

    monitor = _MonitorProcess(small_artifact_path, tmp_path / "monitor.db")
    body = b"[" + b"{}," * (4 * 1024 * 1024 // 3 - 1) + b"{}]"
    assert len(body) <= 4 * 1024 * 1024
    host, port = monitor.url.split("//")[1].split(":")
    try:
        assert request(monitor.url, "POST", "/predict", ROW)[0] == 200
        before = _rss_mb(monitor.proc.pid)
        statuses, peak = [], before

        def send():
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            statuses.append((response.status, json.loads(response.read())["error"]))
            conn.close()

        senders = [threading.Thread(target=send) for _ in range(64)]
        for sender in senders:
            sender.start()
        while any(s.is_alive() for s in senders):
            peak = max(peak, _rss_mb(monitor.proc.pid))
            time.sleep(0.02)
        time.sleep(0.5)
        after = _rss_mb(monitor.proc.pid)
    finally:
        monitor.stop()
    assert len(statuses) == 64 and {s for s, _ in statuses} == {413}
    assert "more than 10000 rows can hold" in statuses[0][1]
    assert peak < 600, f"peak RSS {peak:.0f} MB (before {before:.0f} MB)"
    assert after < before + 60, f"RSS {after:.0f} MB after the burst, {before:.0f} MB before"
