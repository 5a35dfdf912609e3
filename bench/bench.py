"""Benchmark the monitor side by side with its baselines, on this machine, in one run.

    python bench/bench.py                      # full run (~3 min): trains a model into a temp dir first
    python bench/bench.py --with-lab           # also the lab's Flask app (needs `pip install flask` in the
                                         # python that runs bench.py; +~1 min)
    python bench/bench.py --quick              # smoke run (~25 s): short loads, drift at a 1,000 window only
    python bench/bench.py --model model.joblib --json bench.json
    python bench/bench.py --report-page        # also the drift report page: render cost, views beside load

What it measures, each against a server started here as a subprocess on 127.0.0.1 (a free port):
  * single-row POST /predict under wrk (bench/predict.lua: 16 keep-alive connections, 2 threads,
    cycling through 500 real held-out rows), after a short warm-up: requests/s, p50, p99, errors;
    for the monitor (with its SQLite store on, and off with --db ''), a bare stdlib server that
    parses the JSON and answers a constant (bench/bare_server.py: the ceiling of http.server here)
    and, with --with-lab, the lab's Flask app (bench/lab_app.py);
  * 1,000-row POST /predict lists from a few concurrent Python clients: rows/s, latency per batch;
  * POST /drift/check at windows of 1,000 / 10,000 / 100,000 inputs and labels, filled through the
    API (/predict, then /feedback with the true prices): the server's duration_seconds and the
    client's time; and at 10,000, checks back to back while wrk loads /predict;
  * the monitor's memory (VmRSS, VmHWM) next to the model file and a bare import of its libraries;
  * with --report-page, the drift report page (GET /drift/report): what drawing it costs once per
    check at each window (the server's Server-Timing), its size, a cached view's latency, and
    single-row /predict under wrk in alternating runs without views and with --report-rate views/s
    (the spread of the runs without views is the noise the change with views is read against).
The load generator runs on the same machine as the server and takes CPU from it; its CPU use is
reported. Every subprocess is stopped on exit, Ctrl-C included.
"""
from __future__ import annotations

import argparse
import datetime as dt
import http.client
import importlib.util
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
LUA_SCRIPT = BENCH_DIR / "predict.lua"
BARE_SERVER = BENCH_DIR / "bare_server.py"
LAB_APP = BENCH_DIR / "lab_app.py"
MONITOR = ROOT / "monitor.py"
TRAIN = ROOT / "train.py"

SAMPLE_ROW = {"carat": 0.5, "cut": "Ideal", "color": "E", "clarity": "VS1", "depth": 61.5, "table": 55}
LIBRARIES = "numpy, pandas, sklearn.ensemble, scipy.stats, prometheus_client"

TARGETS = {"ratio_to_lab": 25.0, "min_rps": 1500.0, "max_p99_ms": 50.0, "min_batch_rows_per_s": 20_000.0,
           "max_check_ms_at_10k": 100.0, "max_rss_over_model": 1.5, "report_views_per_s": 20.0}


class BenchError(Exception):
    """The benchmark cannot go on (a server did not start, wrk is missing...)."""


# --------------------------------------------------------------------------------------------------
# Subprocesses: every one is registered and stopped on exit


class Processes:
    def __init__(self):
        self._procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log_path: Path, env: dict | None = None) -> subprocess.Popen:
        log = open(log_path, "wb")
        try:
            # A session of its own: Ctrl-C reaches only bench.py, which then stops it in order.
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        finally:
            log.close()
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 15.0) -> None:
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            except ProcessLookupError:
                pass
        if proc in self._procs:
            self._procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self._procs)):
            try:
                self.stop(proc, grace=10.0)
            except Exception:  # noqa: BLE001 - keep stopping the others
                try:
                    proc.kill()
                except OSError:
                    pass


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    """The environment without MONITOR_* settings (a token or a window size set in the shell would
    change what is measured)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MONITOR_")}


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_healthy(port: int, proc: subprocess.Popen, log_path: Path, timeout: float) -> float:
    """Poll GET /healthz until 200; returns the seconds it took. Fails fast if the process dies."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with code {proc.returncode} before answering:\n{tail(log_path)}")
        try:
            status, _, _ = request(port, "GET", "/healthz", timeout=2.0)
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"server on port {port} not healthy after {timeout:.0f} s:\n{tail(log_path)}")


def request(port: int, method: str, path: str, body: bytes | None = None, timeout: float = 60.0,
            conn: http.client.HTTPConnection | None = None):
    """One request; returns (status, parsed JSON or None, client seconds). Reuses `conn` if given."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        started = time.perf_counter()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - started
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = None
        return response.status, parsed, elapsed
    finally:
        if own:
            conn.close()


# --------------------------------------------------------------------------------------------------
# /proc readings


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)


def memory_mb(pid: int | str = "self") -> dict:
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                values[key.lower()] = int(value.split()[0]) / 1024  # KiB -> MiB
    return {"rss_mb": round(values.get("vmrss", 0.0), 1), "hwm_mb": round(values.get("vmhwm", 0.0), 1)}


def machine_cpu_seconds() -> float:
    """CPU seconds spent by the whole machine (all cores, every process) since boot: /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def machine_info() -> dict:
    cpu_model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("numpy", "pandas", "sklearn", "scipy", "prometheus_client"):
        try:
            module = __import__(name)
            versions[name] = getattr(module, "__version__", "?")
        except ImportError:
            versions[name] = None
    wrk = shutil.which("wrk")
    wrk_version = None
    if wrk:
        out = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10)
        wrk_version = (out.stdout + out.stderr).split("[")[0].replace("wrk", "").strip() or None
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        load = float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        load = None
    return {"nproc": os.cpu_count(), "cpu_model": cpu_model, "memory_gb": mem_total, "loadavg_1min_before": load,
            "python": platform.python_version(), "platform": platform.platform(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "wrk": wrk_version, "versions": versions}


# --------------------------------------------------------------------------------------------------
# Data: real held-out rows


def heldout() -> tuple[list[dict], list[float]]:
    """The held-out rows (as /predict JSON objects) and their prices, split exactly as train.py does."""
    sys.path.insert(0, str(ROOT))
    from monitoring import diamonds

    _, X_test, _, y_test = diamonds.split(diamonds.load_diamonds())
    return diamonds.as_payload(X_test), [float(p) for p in y_test]


# --------------------------------------------------------------------------------------------------
# Loads


def run_wrk(port: int, rows_file: Path, duration: float, connections: int, threads: int,
            pid: int | None = None) -> dict:
    """One wrk run against POST /predict; the figures its Lua done() printed, plus CPU use."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk is not installed: apt-get install wrk (or `make bench`, which installs it)")
    cmd = [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency",
           "--timeout", "10s", "-s", str(LUA_SCRIPT), f"http://127.0.0.1:{port}", "--", str(rows_file)]
    server_cpu0 = cpu_seconds(pid) if pid else None
    wrk_cpu0, machine_cpu0 = children_cpu(), machine_cpu_seconds()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=duration + 60)
    except BaseException:
        proc.kill()
        proc.wait(timeout=10)
        raise
    elapsed = time.monotonic() - started
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise BenchError(f"wrk failed (code {proc.returncode}):\n{out}\n{err}")
    raw = json.loads(line[len("BENCH_JSON "):])
    seconds = raw["duration_us"] / 1e6
    errors = raw["errors_connect"] + raw["errors_read"] + raw["errors_write"] + raw["errors_timeout"]
    result = {
        "requests": int(raw["requests"]),
        "seconds": round(seconds, 2),
        "rps": round(raw["requests"] / seconds, 1) if seconds else 0.0,
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "max_ms": round(raw["max_us"] / 1000, 2),
        "mean_ms": round(raw["mean_us"] / 1000, 2),
        "non2xx": int(raw["non2xx"]),
        "socket_errors": int(errors),
        "connections": connections,
        "threads": threads,
        "wrk_cpu_pct": round(100 * (children_cpu() - wrk_cpu0) / elapsed, 1),
        "machine_cpu_pct": round(100 * (machine_cpu_seconds() - machine_cpu0) / elapsed, 1),
    }
    if pid:
        result["server_cpu_pct"] = round(100 * (cpu_seconds(pid) - server_cpu0) / elapsed, 1)
        # what other processes on the machine took meanwhile: a busy machine skews the figures
        result["others_cpu_pct"] = round(max(0.0, result["machine_cpu_pct"] - result["server_cpu_pct"]
                                             - result["wrk_cpu_pct"]), 1)
        # CPU the server spent per answered request: steadier than req/s on a shared machine
        result["server_cpu_us_per_request"] = (round(10_000 * result["server_cpu_pct"] / result["rps"])
                                               if result["rps"] else None)
    return result


def single_row_load(port: int, rows_file: Path, args, pid: int | None) -> dict:
    run_wrk(port, rows_file, args.warmup, args.connections, args.threads)  # warm-up, discarded
    return run_wrk(port, rows_file, args.duration, args.connections, args.threads, pid)


def batch_load(port: int, bodies: list[bytes], rows_per_body: int, duration: float, concurrency: int,
               pid: int | None = None) -> dict:
    """`concurrency` keep-alive connections POSTing pre-encoded `rows_per_body`-row lists for
    `duration` seconds. The client's own CPU is reported to show it is not the bottleneck."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + duration

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        try:
            while time.monotonic() < stop_at:
                body = bodies[i % len(bodies)]
                i += 1
                try:
                    status, parsed, elapsed = request(port, "POST", "/predict", body, conn=conn)
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                    continue
                ok = status == 200 and isinstance(parsed, dict) and len(parsed.get("predictions", ())) == rows_per_body
                with lock:
                    if ok:
                        latencies.append(elapsed)
                    else:
                        errors.append(f"status {status}")
        finally:
            conn.close()

    # one warm-up batch per connection's worth, discarded
    request(port, "POST", "/predict", bodies[0])
    server_cpu0 = cpu_seconds(pid) if pid else None
    machine_cpu0 = machine_cpu_seconds()
    client_cpu0 = time.process_time()
    started = time.monotonic()
    workers = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=duration + 120)
    elapsed = time.monotonic() - started
    client_cpu = time.process_time() - client_cpu0
    machine_cpu = machine_cpu_seconds() - machine_cpu0
    latencies.sort()
    n = len(latencies)
    result = {
        "batches": n,
        "rows_per_batch": rows_per_body,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(n * rows_per_body / elapsed, 0) if elapsed else 0.0,
        "batch_p50_ms": round(1000 * latencies[n // 2], 1) if n else None,
        "batch_p99_ms": round(1000 * latencies[min(n - 1, int(0.99 * n))], 1) if n else None,
        "batch_max_ms": round(1000 * latencies[-1], 1) if n else None,
        "errors": len(errors),
        "first_errors": errors[:3],
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1),
    }
    if pid:
        server_cpu = cpu_seconds(pid) - server_cpu0
        result["server_cpu_pct"] = round(100 * server_cpu / elapsed, 1)
        result["others_cpu_pct"] = round(max(0.0, 100 * (machine_cpu - server_cpu - client_cpu) / elapsed), 1)
        rows = n * rows_per_body
        result["server_cpu_ms_per_1000_rows"] = round(1e6 * server_cpu / rows, 1) if rows else None
    return result


# --------------------------------------------------------------------------------------------------
# Drift checks


def fill_windows(port: int, rows: list[dict], prices: list[float], n: int, chunk: int = 5000) -> dict:
    """Send n rows through /predict (cycling through the held-out rows), then their true prices
    through /feedback, so that both windows hold n samples."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.monotonic()
    labels: list[dict] = []
    try:
        sent = 0
        while sent < n:
            size = min(chunk, n - sent)
            idx = [(sent + j) % len(rows) for j in range(size)]
            body = json.dumps([rows[i] for i in idx]).encode()
            status, parsed, _ = request(port, "POST", "/predict", body, conn=conn)
            if status != 200:
                raise BenchError(f"/predict while filling the window: {status} {parsed}")
            labels.extend({"id": pid, "actual": prices[i]} for pid, i in zip(parsed["ids"], idx))
            sent += size
        predict_seconds = time.monotonic() - started
        for start in range(0, len(labels), chunk):
            status, parsed, _ = request(port, "POST", "/feedback", json.dumps(labels[start:start + chunk]).encode(),
                                        conn=conn)
            if status != 200 or parsed.get("accepted") != len(labels[start:start + chunk]):
                raise BenchError(f"/feedback while filling the window: {status} {parsed}")
    finally:
        conn.close()
    total = time.monotonic() - started
    return {"rows": n, "predict_seconds": round(predict_seconds, 2),
            "feedback_seconds": round(total - predict_seconds, 2)}


def time_checks(port: int, k: int) -> dict:
    """k POST /drift/check in a row: the server's duration_seconds and the client's time."""
    server, client, report = [], [], None
    for _ in range(k):
        status, report, elapsed = request(port, "POST", "/drift/check", b"")
        if status != 200 or not isinstance(report, dict) or "duration_seconds" not in report:
            raise BenchError(f"/drift/check answered {status}: {report}")
        server.append(report["duration_seconds"])
        client.append(elapsed)
    return {
        "checks": k,
        "server_median_ms": round(1000 * statistics.median(server), 2),
        "server_max_ms": round(1000 * max(server), 2),
        "client_median_ms": round(1000 * statistics.median(client), 2),
        "client_max_ms": round(1000 * max(client), 2),
        "window_size": report["data_drift"].get("window_size"),
        "labelled_size": report["concept_drift"].get("labelled_size"),
        "data_drift_detected": report["data_drift"].get("detected"),
        "concept_drift_detected": report["concept_drift"].get("detected"),
    }


def checks_during_load(port: int, pid: int, rows_file: Path, args, duration: float) -> dict:
    """wrk for `duration` s without checks, then `duration` s with POST /drift/check back to back
    (one every `args.check_gap` s) from another connection: do predictions keep flowing?"""
    run_wrk(port, rows_file, min(args.warmup, 2), args.connections, args.threads)
    quiet = run_wrk(port, rows_file, duration, args.connections, args.threads, pid)
    server, client, failures = [], [], []
    stop = threading.Event()

    def checker() -> None:
        deadline = time.monotonic() + duration + 30
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                status, report, elapsed = request(port, "POST", "/drift/check", b"", timeout=30)
            except OSError as exc:
                failures.append(str(exc))
                continue
            if status == 200 and isinstance(report, dict):
                server.append(report["duration_seconds"])
                client.append(elapsed)
            else:
                failures.append(f"status {status}")
            stop.wait(args.check_gap)

    thread = threading.Thread(target=checker, daemon=True)
    thread.start()
    try:
        busy = run_wrk(port, rows_file, duration, args.connections, args.threads, pid)
    finally:
        stop.set()
        thread.join(timeout=60)
    return {
        "without_checks": quiet,
        "with_checks": busy,
        "checks": len(server),
        "check_failures": len(failures),
        "server_median_ms": round(1000 * statistics.median(server), 2) if server else None,
        "server_max_ms": round(1000 * max(server), 2) if server else None,
        "client_median_ms": round(1000 * statistics.median(client), 2) if client else None,
        "client_max_ms": round(1000 * max(client), 2) if client else None,
        "throughput_kept_pct": round(100 * busy["rps"] / quiet["rps"], 1) if quiet["rps"] else None,
    }


# --------------------------------------------------------------------------------------------------
# The drift report page


def get_page(conn: http.client.HTTPConnection, path: str = "/drift/report",
             headers: dict | None = None) -> tuple[int, dict, bytes, float]:
    """One GET on a kept-alive connection: (status, headers lower-cased, body, client seconds)."""
    started = time.perf_counter()
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    body = response.read()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, body, time.perf_counter() - started


def server_render_ms(headers: dict, metric: str = "render") -> float | None:
    """A time the monitor reports in Server-Timing: "render" (wall time of drawing the page) or
    "render-cpu" (the drawing thread's CPU time), as in `render;dur=12.3;desc="...", render-cpu;dur=9.8`."""
    for part in headers.get("server-timing", "").split(","):
        fields = [f.strip() for f in part.split(";")]
        if fields[0] == metric:
            for f in fields[1:]:
                if f.startswith("dur="):
                    return float(f[4:])
    return None


def report_render_cost(port: int, checks: int, pid: int | None = None, views: int = 1000) -> dict:
    """`checks` times: POST /drift/check, then the first view (which draws the page) and a second one
    (from memory). The server's render time, the client's times, the page's size plain and gzipped;
    and, given the server's pid, the server CPU time one view from memory costs (`views` in a row on
    a kept-alive connection): CPU time, unlike latency, does not grow when other processes are busy."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    render, render_cpu, first, cached = [], [], [], []
    try:
        for _ in range(checks):
            status, report, _ = request(port, "POST", "/drift/check", b"")
            if status != 200:
                raise BenchError(f"/drift/check answered {status}: {report}")
            status, headers, body, t_first = get_page(conn)
            if status != 200:
                raise BenchError(f"GET /drift/report answered {status}: {body[:300]!r}")
            status, again, _, t_cached = get_page(conn)
            render.append(server_render_ms(headers))
            render_cpu.append(server_render_ms(headers, "render-cpu"))
            first.append(1000 * t_first)
            cached.append(1000 * t_cached)
            if server_render_ms(again) != render[-1]:
                raise BenchError("the second view of a check was drawn again")
        _, zipped_headers, zipped, _ = get_page(conn, headers={"Accept-Encoding": "gzip"})
        view_cpu_us = None
        if pid:
            cpu0 = cpu_seconds(pid)
            for _ in range(views):
                get_page(conn)
            view_cpu_us = round(1e6 * (cpu_seconds(pid) - cpu0) / views, 1)
    finally:
        conn.close()
    if None in render or None in render_cpu or zipped_headers.get("content-encoding") != "gzip":
        raise BenchError("GET /drift/report lacks its Server-Timing render time or gzip")
    return {"checks": checks, "render_median_ms": round(statistics.median(render), 1),
            "render_max_ms": round(max(render), 1), "render_cpu_median_ms": round(statistics.median(render_cpu), 1),
            "first_view_median_ms": round(statistics.median(first), 1),
            "cached_view_median_ms": round(statistics.median(cached), 2), "view_server_cpu_us": view_cpu_us,
            "page_kb": round(len(body) / 1024, 1),
            "page_gzip_kb": round(len(zipped) / 1024, 1)}


def _views_beside_wrk(port: int, pid: int, rows_file: Path, args, duration: float) -> tuple[dict, dict]:
    """One wrk run with `args.report_rate` GET /drift/report per second from a kept-alive connection
    beside it (a check just before, so that the first view draws the page): (wrk figures, views)."""
    status, report, _ = request(port, "POST", "/drift/check", b"")
    if status != 200:
        raise BenchError(f"/drift/check answered {status}: {report}")
    latencies, failures, renders = [], [], []
    stop = threading.Event()

    def viewer() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        interval = 1.0 / args.report_rate
        due = time.monotonic()
        deadline = due + duration + 30
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    status, headers, body, elapsed = get_page(conn)
                    if status == 200 and body.startswith(b"<!DOCTYPE html>"):
                        latencies.append(elapsed)
                        renders.append(server_render_ms(headers))
                    else:
                        failures.append(f"status {status}")
                except (OSError, http.client.HTTPException) as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                due += interval
                stop.wait(max(0.0, due - time.monotonic()))
        finally:
            conn.close()

    thread = threading.Thread(target=viewer, daemon=True)
    thread.start()
    try:
        loaded = run_wrk(port, rows_file, duration, args.connections, args.threads, pid)
    finally:
        stop.set()
        thread.join(timeout=60)
    return loaded, {"latencies": latencies, "failures": failures, "render_ms": renders[0] if renders else None}


def report_views_during_load(port: int, pid: int, rows_file: Path, args, duration: float) -> dict:
    """Single-row /predict under wrk, `duration` s a run, alternating runs without page views and with
    `args.report_rate` views/s: without, with, without, ... (`args.report_rounds` runs with views, one
    more without). On a shared machine p99 drifts from run to run; the spread of the runs without
    views is the noise the change with views is read against."""
    run_wrk(port, rows_file, min(args.warmup, 2), args.connections, args.threads)
    without, with_views, latencies, failures, renders = [], [], [], [], []
    for _ in range(args.report_rounds):
        without.append(run_wrk(port, rows_file, duration, args.connections, args.threads, pid))
        loaded, views = _views_beside_wrk(port, pid, rows_file, args, duration)
        with_views.append(loaded)
        latencies += views["latencies"]
        failures += views["failures"]
        renders.append(views["render_ms"])
    without.append(run_wrk(port, rows_file, duration, args.connections, args.threads, pid))
    latencies.sort()
    n = len(latencies)
    seconds = sum(r["seconds"] for r in with_views)
    quiet = statistics.median(r["p99_ms"] for r in without)
    loud = statistics.median(r["p99_ms"] for r in with_views)
    return {
        "without_views": without,
        "with_views": with_views,
        "rounds": args.report_rounds,
        "views": n,
        "views_per_s": round(n / seconds, 1) if seconds else None,
        "view_failures": len(failures),
        "first_failures": failures[:3],
        "view_p50_ms": round(1000 * latencies[n // 2], 2) if n else None,
        "view_p99_ms": round(1000 * latencies[min(n - 1, int(0.99 * n))], 2) if n else None,
        "render_ms_under_load": renders,
        "p99_without_median_ms": round(quiet, 2),
        "p99_with_median_ms": round(loud, 2),
        "p99_change_ms": round(loud - quiet, 2),
        "p99_noise_ms": round(max(r["p99_ms"] for r in without) - min(r["p99_ms"] for r in without), 2),
        "errors": sum(r["non2xx"] + r["socket_errors"] for r in without + with_views),
    }


# --------------------------------------------------------------------------------------------------
# Servers


class Bench:
    def __init__(self, args, tmp: Path, procs: Processes):
        self.args, self.tmp, self.procs = args, tmp, procs
        self.started: dict[str, dict] = {}  # memory of each monitor right after it answered /healthz

    def start_monitor(self, name: str, model: Path, window: int, label_window: int,
                      db: str) -> tuple[subprocess.Popen, int]:
        port = free_port()
        cmd = [sys.executable, str(MONITOR), "--port", str(port), "--model", str(model), "--check-interval", "0",
               "--window", str(window), "--label-window", str(label_window), "--log-level", "WARNING", "--db", db]
        log_path = self.tmp / f"{name}.log"
        proc = self.procs.start(cmd, log_path, child_env())
        seconds = wait_healthy(port, proc, log_path, timeout=180)
        self.started[name] = {"seconds_to_healthy": round(seconds, 1), **memory_mb(proc.pid)}
        say(f"  {name}: pid {proc.pid}, port {port}, healthy after {seconds:.1f} s")
        return proc, port

    def start_script(self, name: str, cmd: list[str]) -> tuple[subprocess.Popen, int]:
        port = free_port()
        log_path = self.tmp / f"{name}.log"
        proc = self.procs.start([*cmd, "--port", str(port)], log_path, child_env())
        seconds = wait_healthy(port, proc, log_path, timeout=180)
        self.started[name] = {"seconds_to_healthy": round(seconds, 1), **memory_mb(proc.pid)}
        say(f"  {name}: pid {proc.pid}, port {port}, healthy after {seconds:.1f} s")
        return proc, port


def train_model(script_cmd: list[str], log_path: Path, what: str, timeout: float = 900) -> float:
    started = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(script_cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=child_env(),
                                start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait(timeout=10)
            raise
    if code != 0:
        raise BenchError(f"training {what} failed (code {code}):\n{tail(log_path)}")
    return time.monotonic() - started


def import_baseline_mb() -> dict:
    code = (f"import {LIBRARIES}\n"
            "v = {}\n"
            "for line in open('/proc/self/status'):\n"
            "    if line.startswith(('VmRSS:', 'VmHWM:')):\n"
            "        k, rest = line.split(':', 1); v[k] = int(rest.split()[0]) / 1024\n"
            "print(v['VmRSS'], v['VmHWM'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=child_env())
    if out.returncode != 0:
        raise BenchError(f"import baseline failed: {out.stderr}")
    rss, hwm = (float(x) for x in out.stdout.split())
    return {"rss_mb": round(rss, 1), "hwm_mb": round(hwm, 1)}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(args) -> dict:
    results: dict = {"machine": machine_info(), "command": "python bench/bench.py " + " ".join(args.argv),
                     "settings": {"connections": args.connections, "threads": args.threads,
                                  "duration_s": args.duration, "warmup_s": args.warmup,
                                  "batch_rows": args.batch_rows, "batch_concurrency": args.batch_concurrency,
                                  "batch_duration_s": args.batch_duration, "windows": args.windows,
                                  "quick": args.quick}}
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed: apt-get install wrk (or `make bench`, which installs it)")
    procs = Processes()
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    bench = Bench(args, tmp, procs)
    try:
        say(f"machine: {results['machine']['nproc']} x {results['machine']['cpu_model']}, "
            f"Python {results['machine']['python']}; scratch dir {tmp}")
        # ---- data and models
        rows, prices = heldout()
        rows_file = tmp / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:args.single_rows]))
        bodies = [json.dumps(rows[i:i + args.batch_rows]).encode()
                  for i in range(0, len(rows) - args.batch_rows + 1, args.batch_rows)]
        if not bodies or not 1 <= args.single_rows:
            raise BenchError(f"--batch-rows must be between 1 and {len(rows)}, --single-rows at least 1")
        if args.model:
            model = Path(args.model).resolve()
            results["model"] = {"path": str(model), "trained_here": False}
        else:
            model = tmp / "model.joblib"
            say("training the model into the scratch dir (python train.py) ...")
            seconds = train_model([sys.executable, str(TRAIN), "--output", str(model)], tmp / "train.log", "the model")
            results["model"] = {"path": "(scratch) model.joblib", "trained_here": True, "train_seconds": round(seconds, 1)}
        if not model.is_file():
            raise BenchError(f"no model at {model}")
        results["model"]["file_mb"] = round(model.stat().st_size / 2**20, 1)  # MiB, like VmRSS

        with_lab = args.with_lab and importlib.util.find_spec("flask") is not None
        if args.with_lab and not with_lab:
            say("--with-lab: flask is not importable here (pip install flask); the lab baseline is skipped")
        lab_model = tmp / "lab_model_pipeline.joblib"
        if with_lab:
            say("training the lab's pipeline (one-hot + StandardScaler + fully grown forest) ...")
            seconds = train_model([sys.executable, str(LAB_APP), "train", "--output", str(lab_model)],
                                  tmp / "lab_train.log", "the lab's pipeline")
            results["lab_model"] = {"train_seconds": round(seconds, 1),
                                    "file_mb": round(lab_model.stat().st_size / 2**20, 1)}

        single, batch, memory = {}, {}, {}

        # ---- baseline (a): bare http.server
        say("bare http.server baseline ...")
        proc, port = bench.start_script("bare", [sys.executable, str(BARE_SERVER)])
        single["bare"] = single_row_load(port, rows_file, args, proc.pid)
        procs.stop(proc)

        # ---- baseline (b): the lab's Flask app
        if with_lab:
            say("the lab's Flask app ...")
            proc, port = bench.start_script("lab", [sys.executable, str(LAB_APP), "serve", "--model", str(lab_model)])
            single["lab"] = single_row_load(port, rows_file, args, proc.pid)
            memory["lab"] = memory_mb(proc.pid)
            memory["lab"]["model_file_mb"] = results["lab_model"]["file_mb"]
            memory["lab"]["at_start"] = bench.started["lab"]
            procs.stop(proc)

        # ---- the monitor, store on (the default) and off
        modes = [("monitor", str(tmp / "monitor.db"))]
        if not args.quick:
            modes.append(("monitor_nodb", ""))
        first_window = args.windows[0]
        drift: dict = {}
        page: dict = {"render": {}} if args.report_page else {}
        for name, db in modes:
            say(f"{name} (store {'off' if db == '' else 'on'}): single rows, then "
                f"{args.batch_rows}-row batches ...")
            proc, port = bench.start_monitor(name, model, first_window, first_window, db)
            single[name] = single_row_load(port, rows_file, args, proc.pid)
            batch[name] = batch_load(port, bodies, args.batch_rows, args.batch_duration, args.batch_concurrency,
                                     proc.pid)
            memory[name] = memory_mb(proc.pid)
            memory[name].update(window=first_window, label_window=first_window,
                                at_start=bench.started[name])
            if name == "monitor":
                say(f"  drift checks at a window of {first_window:,} ...")
                fill = fill_windows(port, rows, prices, first_window)
                drift[str(first_window)] = {**time_checks(port, args.checks), "fill": fill,
                                            "memory": memory_mb(proc.pid), "memory_at_start": bench.started[name]}
                if args.quick or args.during_window == first_window:
                    say("  drift checks during wrk load ...")
                    drift["during_load"] = {"window": first_window,
                                            **checks_during_load(port, proc.pid, rows_file, args, args.during_duration)}
                if args.report_page:
                    say(f"  drift report page: render cost, then {args.report_rate:g} views/s beside wrk ...")
                    page["render"][str(first_window)] = report_render_cost(port, args.checks, proc.pid)
                    page["during_load"] = {"window": first_window, "rate": args.report_rate,
                                           **report_views_during_load(port, proc.pid, rows_file, args,
                                                                      args.report_duration)}
            procs.stop(proc)

        # ---- drift checks at the larger windows
        for window in args.windows[1:]:
            say(f"drift checks at a window of {window:,} ...")
            db = str(tmp / f"monitor-{window}.db")
            proc, port = bench.start_monitor(f"monitor_w{window}", model, window, window, db)
            fill = fill_windows(port, rows, prices, window)
            drift[str(window)] = {**time_checks(port, args.checks), "fill": fill, "memory": memory_mb(proc.pid),
                                  "memory_at_start": bench.started[f"monitor_w{window}"]}
            if window == args.during_window and "during_load" not in drift:
                say("  drift checks during wrk load ...")
                drift["during_load"] = {"window": window,
                                        **checks_during_load(port, proc.pid, rows_file, args, args.during_duration)}
            if args.report_page:
                say("  drift report page: render cost ...")
                page["render"][str(window)] = report_render_cost(port, min(args.checks, 5), proc.pid)
            procs.stop(proc)

        memory["import_baseline"] = import_baseline_mb()
        results.update(single=single, batch=batch, drift=drift, memory=memory)
        if page:
            results["report_page"] = page
        results["targets"] = evaluate(results)
        return results
    finally:
        procs.stop_all()
        if args.keep_tmp:
            say(f"scratch dir kept: {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# Report


def evaluate(results: dict) -> list[dict]:
    """Each target of issue 4 with its measured figure; met is None when it was not measured."""
    out = []
    single, batch, drift, memory = results["single"], results["batch"], results["drift"], results["memory"]
    mon = single.get("monitor")
    lab = single.get("lab")
    if mon:
        errors = mon["non2xx"] + mon["socket_errors"]
        if lab and lab["rps"]:
            ratio = mon["rps"] / lab["rps"]
            out.append({"target": f"single-row req/s ≥ {TARGETS['ratio_to_lab']:.0f}x the lab's",
                        "measured": f"{ratio:.1f}x ({mon['rps']:,.0f} vs {lab['rps']:,.0f})",
                        "met": ratio >= TARGETS["ratio_to_lab"]})
        out.append({"target": f"single-row req/s ≥ {TARGETS['min_rps']:,.0f} at {mon['connections']} connections",
                    "measured": f"{mon['rps']:,.0f}", "met": mon["rps"] >= TARGETS["min_rps"]})
        out.append({"target": f"single-row p99 ≤ {TARGETS['max_p99_ms']:.0f} ms", "measured": f"{mon['p99_ms']} ms",
                    "met": mon["p99_ms"] <= TARGETS["max_p99_ms"]})
        out.append({"target": "no errors under load", "measured": f"{errors} errors", "met": errors == 0})
    if batch.get("monitor"):
        b = batch["monitor"]
        out.append({"target": f"{b['rows_per_batch']:,}-row batches ≥ {TARGETS['min_batch_rows_per_s']:,.0f} rows/s",
                    "measured": f"{b['rows_per_s']:,.0f} rows/s ({b['errors']} errors)",
                    "met": b["rows_per_s"] >= TARGETS["min_batch_rows_per_s"] and b["errors"] == 0})
    if "10000" in drift:
        d = drift["10000"]
        out.append({"target": f"drift check at 10,000 ≤ {TARGETS['max_check_ms_at_10k']:.0f} ms",
                    "measured": f"median {d['server_median_ms']} ms, max {d['server_max_ms']} ms (server)",
                    "met": d["server_max_ms"] <= TARGETS["max_check_ms_at_10k"]})
    during = drift.get("during_load")
    if during:
        w = during["with_checks"]
        flowing = w["rps"] > 0 and w["non2xx"] + w["socket_errors"] == 0 and during["checks"] > 0
        out.append({"target": "predictions keep flowing during checks",
                    "measured": f"{during['throughput_kept_pct']}% of req/s kept, {during['checks']} checks, "
                                f"p99 {w['p99_ms']} ms", "met": flowing})
    views = results.get("report_page", {}).get("during_load")
    if views:
        # "unchanged within noise": the median p99 with views is not worse by more than the runs without
        # views spread among themselves (plus 1 ms for wrk's rounding of small latencies)
        within = views["p99_change_ms"] <= views["p99_noise_ms"] + 1.0
        out.append({"target": f"single-row p99 unchanged within noise beside {views['rate']:g} report views/s "
                              "(issue 13)",
                    "measured": f"median p99 {views['p99_without_median_ms']} ms without views, "
                                f"{views['p99_with_median_ms']} ms with (change {views['p99_change_ms']:+} ms; runs "
                                f"without views spread over {views['p99_noise_ms']} ms); {views['views_per_s']} "
                                f"views/s served, {views['view_failures']} failures",
                    "met": within and views["view_failures"] == 0 and views["errors"] == 0})
    if memory.get("monitor"):
        m, model_mb = memory["monitor"], results["model"]["file_mb"]
        base = memory.get("import_baseline", {}).get("rss_mb")
        allowed = TARGETS["max_rss_over_model"] * model_mb + windows_mb(m["window"], m["label_window"])
        if base is not None:
            own = m["rss_mb"] - base
            out.append({"target": f"RSS ≤ {TARGETS['max_rss_over_model']}x model file + windows "
                                  "(above the libraries' import baseline)",
                        "measured": f"{own:,.0f} MiB above the {base:,.0f} MiB baseline = {own / model_mb:.2f}x the "
                                    f"{model_mb:,.0f} MiB file (allowed {allowed:,.0f}); {m['rss_mb']:,.0f} MiB in all",
                        "met": own <= allowed})
    return out


def windows_mb(window: int, label_window: int) -> float:
    """The windows' ring buffers: 6 float64 features per input, (actual, predicted) per label."""
    return (window * 6 + label_window * 2) * 8 / 2**20


def _f(value, fmt: str = ",.1f", missing: str = "–") -> str:
    return missing if value is None else format(value, fmt)


def busy_note(results: dict) -> list[str]:
    """A warning when other processes took a noticeable share of the CPU during the loads."""
    others = [r.get("others_cpu_pct") or 0.0 for r in [*results["single"].values(), *results["batch"].values()]]
    during = results["drift"].get("during_load")
    if during:
        others += [during["without_checks"].get("others_cpu_pct") or 0.0, during["with_checks"].get("others_cpu_pct") or 0.0]
    worst = max(others, default=0.0)
    if worst < 20:
        return []
    return [f"**Other processes used up to {worst:.0f}% CPU (100% = one core) during these loads: the machine was "
            "busy and the figures below are low and noisy; rerun on an idle machine.**", ""]


def render(results: dict) -> str:
    m = results["machine"]
    single, batch, drift, memory = results["single"], results["batch"], results["drift"], results["memory"]
    lines = [
        "## Benchmark",
        "",
        f"`{results['command']}`, {m['date']}: {m['nproc']} × {m['cpu_model']}, {m['memory_gb']} GB, Python "
        f"{m['python']}, scikit-learn {m['versions'].get('sklearn')}, wrk {m['wrk']}; load average before the run "
        f"{m['loadavg_1min_before']} (anything else running skews the figures). Model file "
        f"{results['model']['file_mb']:,} MiB. The load generator runs on the same machine and takes CPU from "
        "the server (its CPU use is shown; 100% = one core).",
        "",
        *busy_note(results),
        f"### Single-row `POST /predict` (wrk, {results['settings']['connections']} keep-alive connections, "
        f"{results['settings']['threads']} threads, {results['settings']['duration_s']:g} s after "
        f"{results['settings']['warmup_s']:g} s warm-up, 500 held-out rows cycled)",
        "",
        "| server | req/s | p50 ms | p99 ms | max ms | non-2xx + socket errors | × lab | % of bare | server CPU % "
        "| server CPU µs/request | wrk CPU % | others' CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {"bare": "bare http.server (ceiling)", "lab": "the lab's Flask app", "monitor": "monitor, store on",
             "monitor_nodb": "monitor, store off (`--db ''`)"}
    lab_rps = single.get("lab", {}).get("rps")
    bare_rps = single.get("bare", {}).get("rps")
    for key in ("bare", "lab", "monitor", "monitor_nodb"):
        s = single.get(key)
        if not s:
            continue
        lines.append(f"| {names[key]} | {s['rps']:,.0f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['max_ms']:.1f} | "
                     f"{s['non2xx'] + s['socket_errors']} | {_f(s['rps'] / lab_rps if lab_rps else None, '.1f')} | "
                     f"{_f(100 * s['rps'] / bare_rps if bare_rps else None, '.0f')} | "
                     f"{_f(s.get('server_cpu_pct'), '.0f')} | {_f(s.get('server_cpu_us_per_request'), ',.0f')} | "
                     f"{_f(s.get('wrk_cpu_pct'), '.0f')} | {_f(s.get('others_cpu_pct'), '.0f')} |")
    if batch:
        b0 = next(iter(batch.values()))
        lines += ["", f"### {b0['rows_per_batch']:,}-row `POST /predict` lists ({b0['concurrency']} concurrent "
                      f"Python clients, {results['settings']['batch_duration_s']:g} s)", "",
                  "| server | rows/s | batches | batch p50 ms | batch p99 ms | errors | server CPU % | "
                  "server CPU ms / 1,000 rows | client CPU % | others' CPU % |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, b in batch.items():
            lines.append(f"| {names[key]} | {b['rows_per_s']:,.0f} | {b['batches']} | {_f(b['batch_p50_ms'])} | "
                         f"{_f(b['batch_p99_ms'])} | {b['errors']} | {_f(b.get('server_cpu_pct'), '.0f')} | "
                         f"{_f(b.get('server_cpu_ms_per_1000_rows'))} | {_f(b['client_cpu_pct'], '.0f')} | "
                         f"{_f(b.get('others_cpu_pct'), '.0f')} |")
    windows = [k for k in drift if k.isdigit()]
    if windows:
        lines += ["", "### `POST /drift/check` (data and concept drift; windows filled through /predict and "
                      f"/feedback with held-out rows; {drift[windows[0]]['checks']} checks each)", "",
                  "| window (inputs = labels) | server median ms | server max ms | client median ms | "
                  "client max ms | fill: /predict s, /feedback s | RSS MiB |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for k in windows:
            d = drift[k]
            lines.append(f"| {int(k):,} | {d['server_median_ms']:.1f} | {d['server_max_ms']:.1f} | "
                         f"{d['client_median_ms']:.1f} | {d['client_max_ms']:.1f} | "
                         f"{d['fill']['predict_seconds']}, {d['fill']['feedback_seconds']} | {d['memory']['rss_mb']:,.0f} |")
    during = drift.get("during_load")
    if during:
        q, w = during["without_checks"], during["with_checks"]
        lines += ["", f"### Drift checks while wrk loads `/predict` (window {during['window']:,}, "
                      f"{q['seconds']:g} s each)", "",
                  "| | req/s | p50 ms | p99 ms | errors | checks run | check median ms | check max ms |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|",
                  f"| without checks | {q['rps']:,.0f} | {q['p50_ms']:.2f} | {q['p99_ms']:.2f} | "
                  f"{q['non2xx'] + q['socket_errors']} | 0 | – | – |",
                  f"| checks back to back | {w['rps']:,.0f} | {w['p50_ms']:.2f} | {w['p99_ms']:.2f} | "
                  f"{w['non2xx'] + w['socket_errors']} | {during['checks']} | {_f(during['server_median_ms'])} | "
                  f"{_f(during['server_max_ms'])} |"]
    if memory:
        base = memory.get("import_baseline", {}).get("rss_mb")
        lines += ["", "### Memory (MiB; VmRSS after the loads above, VmHWM = peak)", "",
                  "| process | RSS at start | VmRSS | VmHWM | model file | RSS / model | (RSS − import baseline) / model |",
                  "|---|---:|---:|---:|---:|---:|---:|"]

        def row(label, mm, model_mb, at_start):
            extra = _f((mm["rss_mb"] - base) / model_mb if base is not None else None, ".2f")
            return (f"| {label} | {_f(at_start, ',.0f')} | {mm['rss_mb']:,.0f} | {mm['hwm_mb']:,.0f} | "
                    f"{model_mb:,.0f} | {mm['rss_mb'] / model_mb:.2f} | {extra} |")

        for key in ("monitor", "monitor_nodb", "lab"):
            mm = memory.get(key)
            if mm:
                label = names[key] + (f", window {mm['window']:,}" if "window" in mm else "")
                lines.append(row(label, mm, mm.get("model_file_mb", results["model"]["file_mb"]),
                                 mm.get("at_start", {}).get("rss_mb")))
        for k in windows:
            lines.append(row(f"monitor, windows of {int(k):,} filled", drift[k]["memory"], results["model"]["file_mb"],
                             drift[k].get("memory_at_start", {}).get("rss_mb")))
        if base is not None:
            ib = memory["import_baseline"]
            lines.append(f"| `python -c \"import {LIBRARIES}\"` | – | {ib['rss_mb']:,.0f} | {ib['hwm_mb']:,.0f} | "
                         "– | – | – |")
    page = results.get("report_page")
    if page:
        lines += ["", "### Drift report page (`GET /drift/report`, drawn once per check on its first view)", "",
                  "| window (inputs = labels) | render median ms | render max ms | render CPU median ms | "
                  "first view ms | cached view ms | server CPU µs per cached view | page KB | gzipped KB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for k, r in page["render"].items():
            lines.append(f"| {int(k):,} | {r['render_median_ms']:.1f} | {r['render_max_ms']:.1f} | "
                         f"{r['render_cpu_median_ms']:.1f} | "
                         f"{r['first_view_median_ms']:.1f} | {r['cached_view_median_ms']:.2f} | "
                         f"{_f(r.get('view_server_cpu_us'), ',.0f')} | {r['page_kb']:,.1f} | "
                         f"{r['page_gzip_kb']:,.1f} |")
        views = page.get("during_load")
        if views:
            lines += ["", f"Single-row `/predict` under wrk, runs without and with {views['rate']:g} page views/s "
                          f"alternating (window {views['window']:,}; {views['with_views'][0]['seconds']:g} s a run; a "
                          "check before each run with views, so its first view draws the page). Views: "
                          f"{views['views_per_s']}/s served, p50 {views['view_p50_ms']} ms, p99 {views['view_p99_ms']} "
                          f"ms, {views['view_failures']} failures; drawing under load took "
                          + ", ".join(f"{r:g}" for r in views["render_ms_under_load"] if r is not None) + " ms.", "",
                      "| run | req/s | p50 ms | p99 ms | max ms | errors | others' CPU % |",
                      "|---|---:|---:|---:|---:|---:|---:|"]
            order = []
            for i, r in enumerate(views["without_views"]):
                order.append((f"{2 * i + 1}. without views", r))
                if i < len(views["with_views"]):
                    order.append((f"{2 * i + 2}. with views", views["with_views"][i]))
            for label, r in order:
                lines.append(f"| {label} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | "
                             f"{r['non2xx'] + r['socket_errors']} | {_f(r.get('others_cpu_pct'), '.0f')} |")
            lines.append(f"| **median p99** | | | **{views['p99_without_median_ms']:.2f}** without, "
                         f"**{views['p99_with_median_ms']:.2f}** with | | | |")
    if results.get("targets"):
        lines += ["", "### Targets (issue 4)", "", "| target | measured | met |", "|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description="Benchmark the monitor against a bare http.server and the lab's app.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", help="model artifact to serve (default: train one into a scratch dir)")
    parser.add_argument("--with-lab", action="store_true",
                        help="also measure the lab's Flask app (needs flask; trains the lab's pipeline, ~1 min)")
    parser.add_argument("--quick", action="store_true", help="smoke run: short loads, drift at a 1,000 window only")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to this JSON file")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk warm-up before each measured run")
    parser.add_argument("--single-rows", type=int, default=500, help="held-out rows wrk cycles through")
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--batch-concurrency", type=int, default=4)
    parser.add_argument("--batch-duration", type=float, default=10.0)
    parser.add_argument("--windows", default="1000,10000,100000", help="drift-check windows, comma-separated")
    parser.add_argument("--checks", type=int, default=7, help="drift checks timed at each window")
    parser.add_argument("--during-window", type=int, default=10_000, help="window of the checks run under load")
    parser.add_argument("--during-duration", type=float, default=10.0, help="seconds of wrk with and without checks")
    parser.add_argument("--check-gap", type=float, default=0.1, help="seconds between checks under load")
    parser.add_argument("--report-page", action="store_true",
                        help="also measure the drift report page: render cost per check at each window, and "
                             "single-row /predict p99 with and without page views")
    parser.add_argument("--report-rate", type=float, default=20.0, help="page views per second beside wrk")
    parser.add_argument("--report-duration", type=float, default=10.0,
                        help="seconds of each wrk run without or with page views")
    parser.add_argument("--report-rounds", type=int, default=3,
                        help="wrk runs with page views, each after one without (and one more without at the end)")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the scratch dir (models, logs, databases)")
    args = parser.parse_args(argv)
    args.argv = argv
    args.windows = [int(w) for w in str(args.windows).split(",") if w.strip()]
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
        args.batch_duration = min(args.batch_duration, 2.0)
        args.windows = args.windows[:1] if "--windows" in " ".join(argv) else [1000]
        args.checks = min(args.checks, 3)
        args.during_duration = min(args.during_duration, 2.0)
        args.report_duration = min(args.report_duration, 3.0)
        args.report_rounds = min(args.report_rounds, 1)
    if not args.windows or min(args.windows) < 1:
        parser.error("--windows needs positive sizes")
    if not args.report_rate > 0 or args.report_rounds < 1:
        parser.error("--report-rate must be positive and --report-rounds at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        results = run(args)
    except BenchError as exc:
        say(f"bench: {exc}")
        return 2
    except KeyboardInterrupt:
        say("bench: interrupted; servers stopped")
        return 130
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
