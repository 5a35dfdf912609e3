"""Slow and heavy clients against a running monitor: what a normal client sees beside them.

    python bench/hostile_clients.py                    # trains a small model into a temp dir first
    python bench/hostile_clients.py --model model.joblib --json hostile.json

Three loads, each against a monitor started here as a subprocess on 127.0.0.1:
  * trickle:  300 clients sending a request head one byte a second; a normal client predicts one row
              every 0.1 s beside them: its latencies (the server must drop a head that takes longer
              than --socket-timeout in all, and close waiting connections to make room);
  * big:      four clients sending 10,000-row lists back to back; a fifth predicts single rows:
              their p50/p99 (big lists are predicted a chunk per model call, in turn);
  * flood:    64 bodies of 4 MB of `[{}, {}, ...]` at once: the monitor's resident memory before,
              at its peak and after (such bodies are refused before they are parsed).
tests/test_slow_clients.py runs the same functions and asserts the figures the README promises.
"""
from __future__ import annotations

import argparse
import http.client
import json
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: `python bench/hostile_clients.py`
    sys.path.insert(0, str(ROOT))

ROW = json.dumps({"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}).encode()
TRICKLED_HEAD = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 90\r\n\r\n"


@dataclass
class Monitor:
    """`python monitor.py` as a subprocess on a free port."""
    proc: subprocess.Popen
    host: str
    port: int

    @classmethod
    def start(cls, model: Path, db: Path | str, *extra: str) -> "Monitor":
        proc = subprocess.Popen([sys.executable, str(ROOT / "monitor.py"), "--model", str(model), "--db", str(db),
                                 "--port", "0", "--check-interval", "0", *extra],
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
        log = []
        for line in proc.stderr:  # bounded: the process ends, or says where it listens
            log.append(line)
            match = re.search(r"on http://([\d.]+):(\d+)", line)
            if match:
                threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
                return cls(proc, match.group(1), int(match.group(2)))
        raise RuntimeError("monitor exited before serving:\n" + "".join(log))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def rss_mb(self) -> float:
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def _single_rows(monitor: Monitor, seconds: float, pause: float) -> tuple[list[float], list[int]]:
    """A normal client: one row at a time on a keep-alive connection; (latencies in s, statuses)."""
    latencies, statuses = [], []
    conn = monitor.connection()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            status, _ = _post(conn, ROW)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn, status = monitor.connection(), 0
        latencies.append(time.perf_counter() - started)
        statuses.append(status)
        time.sleep(pause)
    conn.close()
    return latencies, statuses


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def trickle(monitor: Monitor, clients: int = 300, seconds: float = 6.0) -> dict:
    """`clients` connections sending a request head a byte a second, and a normal client beside them."""
    stop = threading.Event()
    sockets = [socket.create_connection((monitor.host, monitor.port), timeout=5) for _ in range(clients)]

    def send_slowly(sock: socket.socket) -> None:
        for byte in TRICKLED_HEAD:
            if stop.wait(1.0):
                return
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # dropped by the server
                return

    for sock in sockets:
        threading.Thread(target=send_slowly, args=(sock,), daemon=True).start()
    try:
        latencies, statuses = _single_rows(monitor, seconds, pause=0.1)
    finally:
        stop.set()
        for sock in sockets:
            sock.close()
    return {"trickling_clients": clients, "requests": len(latencies), "ok": statuses.count(200),
            "p50_ms": 1000 * _quantile(latencies, 0.5), "max_ms": 1000 * max(latencies)}


def big_lists(monitor: Monitor, rows: list[dict], clients: int = 4, seconds: float = 8.0) -> dict:
    """`clients` sending `rows` as one list back to back, and single rows beside them."""
    body = json.dumps(rows).encode()
    stop = threading.Event()
    served: list[int] = []
    list_seconds: list[float] = []

    def send_lists() -> None:
        conn = monitor.connection(timeout=120)
        while not stop.is_set():
            started = time.perf_counter()
            served.append(_post(conn, body)[0])
            list_seconds.append(time.perf_counter() - started)

    senders = [threading.Thread(target=send_lists, daemon=True) for _ in range(clients)]
    for sender in senders:
        sender.start()
    time.sleep(1.0)  # the lists are flowing
    try:
        latencies, statuses = _single_rows(monitor, seconds, pause=0.01)
    finally:
        stop.set()
        for sender in senders:
            sender.join(timeout=120)
    return {"list_clients": clients, "rows_per_list": len(rows), "lists_served": len(served),
            "lists_ok": served.count(200), "list_p50_ms": 1000 * _quantile(list_seconds, 0.5),
            "single_rows": len(latencies), "single_ok": statuses.count(200),
            "single_p50_ms": 1000 * _quantile(latencies, 0.5), "single_p99_ms": 1000 * _quantile(latencies, 0.99)}


def body_flood(monitor: Monitor, bodies: int = 64, size: int = 4 * 1024 * 1024) -> dict:
    """`bodies` requests of `size` bytes of `[{}, {}, ...]` at once: the monitor's memory throughout."""
    body = b"[" + b"{}," * (size // 3 - 1) + b"{}]"
    assert _post(monitor.connection(), ROW)[0] == 200  # warm: the first prediction allocates too
    before = peak = monitor.rss_mb()
    answers: list[tuple[int, str]] = []

    def send() -> None:
        status, reply = _post(monitor.connection(timeout=120), body)
        answers.append((status, json.loads(reply).get("error", "")))

    senders = [threading.Thread(target=send) for _ in range(bodies)]
    for sender in senders:
        sender.start()
    while any(sender.is_alive() for sender in senders):
        peak = max(peak, monitor.rss_mb())
        time.sleep(0.02)
    time.sleep(0.5)
    return {"bodies": bodies, "body_mb": len(body) / 2**20, "statuses": sorted({s for s, _ in answers}),
            "answers": len(answers), "error": answers[0][1] if answers else "", "rss_before_mb": before,
            "rss_peak_mb": peak, "rss_after_mb": monitor.rss_mb()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, help="artifact to serve (default: train a 20-tree model first)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    from monitoring import diamonds

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            import train

            model = Path(tmp) / "model.joblib"
            print("training a 20-tree model ...", flush=True)
            train.save_artifact(train.train(n_estimators=20), model)
        _, X_test, _, _ = diamonds.split(diamonds.load_diamonds())
        rows = diamonds.as_payload(X_test.iloc[:10_000])
        results = {}
        for name, run in (("trickle", trickle), ("big", lambda m: big_lists(m, rows)), ("flood", body_flood)):
            monitor = Monitor.start(model, Path(tmp) / f"{name}.db")
            try:
                results[name] = run(monitor)
            finally:
                monitor.stop()
            print(name, json.dumps(results[name], default=float), flush=True)
    t, b, f = results["trickle"], results["big"], results["flood"]
    print(f"\n| load | what a normal client sees |\n|---|---|\n"
          f"| {t['trickling_clients']} clients trickling a request head, 1 byte/s | {t['ok']}/{t['requests']} "
          f"answered, p50 {t['p50_ms']:.1f} ms, slowest {t['max_ms']:.0f} ms |\n"
          f"| {b['list_clients']} clients sending {b['rows_per_list']:,}-row lists back to back "
          f"({b['lists_ok']} served) | single rows p50 {b['single_p50_ms']:.1f} ms, p99 {b['single_p99_ms']:.1f} ms |\n"
          f"| {f['bodies']} bodies of {f['body_mb']:.0f} MB of `[{{}}, ...]` at once (answered {f['statuses']}) | "
          f"RSS {f['rss_before_mb']:.0f} MB before, {f['rss_peak_mb']:.0f} MB peak, {f['rss_after_mb']:.0f} MB after |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
