"""Measure the prediction store's group commit on this machine.

    python bench/store_bench.py                   # one thread, then 16, with synchronous NORMAL and FULL
    python bench/store_bench.py --prefill 1000000 --dir /var/tmp   # a store that has run a while
    python bench/store_bench.py --db postgresql://monitor@localhost/bench  # PostgreSQL instead (emptied first)

Each line is one run as JSON: rows/s, commits/s, rows per commit, commit time (mean, max) and the
latency of one add_predictions call (p50, p99; waiting for the group commit included). The
figures depend on the disk and on what else runs; the README quotes them with their date.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:   # run as a script: bench/ is on the path, the project root is not
    sys.path.insert(0, str(ROOT))

from monitoring.store import PredictionRecord, Store, open_store  # noqa: E402


def _record(i: int, ts: float) -> PredictionRecord:
    return PredictionRecord(uuid.uuid4().hex, ts, (0.3 + (i % 50) / 20, "Ideal", "G", "VS1",
                            61.5, 57.0), 1000.0 + i, "bench")


def bench_store(path: str | Path, threads: int = 16, n: int = 1_000, synchronous: str = "NORMAL",
                batch: int = 1, prefill: int = 0) -> dict:
    """Each of `threads` threads calls add_predictions `n` times with `batch` rows, as request
    handlers do. Returns rows/s, commits/s, rows per commit, commit time (mean, max) and call
    latency percentiles (ms: queueing for the group commit included). Starts from a new store at
    `path` (removed first) holding `prefill` rows (a store that has been running a while). A
    postgresql:// URL instead of a path: the same on that database, its tables dropped first
    (`synchronous` does not apply: PostgreSQL's synchronous_commit, on by default, decides)."""
    if isinstance(path, str) and path.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(path, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS predictions, predictions_gone, predictions_gone_horizon, drift_reports, "
                         "schema_version; DROP FUNCTION IF EXISTS predictions_mark_changed, predictions_log_gone; "
                         "DROP SEQUENCE IF EXISTS label_order")
        store = open_store(path, retention_seconds=None, max_rows=None)
        synchronous = "postgresql"
    else:
        path = Path(path)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                Path(str(path) + suffix).unlink()
        store = Store(path, synchronous=synchronous, retention_seconds=None, max_rows=None)
    ts0 = time.time() - 86400
    for start_row in range(0, prefill, 10_000):
        store.add_predictions([_record(i, ts0 + i * 1e-3)
                               for i in range(start_row, min(prefill, start_row + 10_000))])
    before = store.stats()
    with store._mutex:
        store._stats["commit_seconds_max"] = 0.0   # the prefill's big commits are not the subject
    latencies: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def worker(k: int) -> None:
        records = [[_record(i, time.time()) for _ in range(batch)] for i in range(n)]
        start.wait()
        mine = latencies[k]
        for group in records:
            t0 = time.perf_counter()
            store.add_predictions(group)
            mine.append(time.perf_counter() - t0)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    start.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    stats = {k: v - before[k] if k != "commit_seconds_max" else v for k, v in store.stats().items()}
    counted = store.counts()["predictions"] - prefill
    store.close()
    calls = sorted(x for xs in latencies for x in xs)
    q = statistics.quantiles(calls, n=100) if len(calls) > 1 else calls * 99
    return {
        "synchronous": synchronous.upper(), "threads": threads, "batch": batch, "prefill": prefill,
        "calls": len(calls),
        "rows": counted, "seconds": round(elapsed, 3),
        "rows_per_s": round(counted / elapsed), "commits_per_s": round(stats["commits"] / elapsed),
        "rows_per_commit": round(counted / max(stats["commits"], 1), 1),
        "commit_ms_mean": round(1000 * stats["commit_seconds_sum"] / max(stats["commits"], 1), 3),
        "commit_ms_max": round(1000 * stats["commit_seconds_max"], 3),
        "call_ms_p50": round(1000 * q[49], 3), "call_ms_p99": round(1000 * q[98], 3),
    }


def bench_serial(path: str | Path, n: int = 2_000, synchronous: str = "NORMAL") -> dict:
    """One thread, one row per call: the cost of a commit with nothing to share it."""
    return bench_store(path, threads=1, n=n, synchronous=synchronous)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Measure the prediction store's group commit.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("-n", type=int, default=1_000, help="calls per thread")
    parser.add_argument("--batch", type=int, default=1, help="rows per call of the concurrent run")
    parser.add_argument("--prefill", type=int, default=0, help="rows stored before measuring")
    parser.add_argument("--sync", choices=("NORMAL", "FULL"), action="append",
                        help="synchronous mode(s) to measure (default: both)")
    parser.add_argument("--dir", default=None, help="folder for the scratch database (default: a temp dir)")
    parser.add_argument("--db", default=None, help="a postgresql:// URL to measure instead of SQLite files "
                                                   "(its tables are dropped first)")
    args = parser.parse_args(argv)
    if args.db:
        print(json.dumps(bench_serial(args.db, n=args.n)), flush=True)
        print(json.dumps(bench_store(args.db, args.threads, args.n, batch=args.batch, prefill=args.prefill)),
              flush=True)
        return 0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for sync in args.sync or ("NORMAL", "FULL"):
            print(json.dumps(bench_serial(Path(tmp) / "serial.db", n=args.n, synchronous=sync)), flush=True)
            print(json.dumps(bench_store(Path(tmp) / "bench.db", args.threads, args.n, sync,
                                         batch=args.batch, prefill=args.prefill)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
