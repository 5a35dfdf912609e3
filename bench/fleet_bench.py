"""One replica on PostgreSQL beside one on SQLite, and the fleet's drift check at a large window.

    python bench/fleet_bench.py --model model.joblib                     # starts a throwaway PostgreSQL
    python bench/fleet_bench.py --model model.joblib --db postgresql://monitor:...@host/bench

For each backend in turn (alternating, `--rounds` times, so that a busy machine hurts both alike):
a monitor process with its store there, single-row POST /predict under wrk (16 connections) and
1,000-row lists from 4 clients; then, with windows of `--window` (10,000), both windows filled
through the API and `--checks` POST /drift/check timed (the server's duration_seconds: for
PostgreSQL that includes reading the fleet's windows from the database, taking the lock and
storing the report). The first of those checks after the monitor started is reported apart
("cold": a replica's first fleet check reads both windows in full); the others, back to back,
read nothing new. Then the steady state: `--steady-checks` times, a minute of traffic at
`--rate` rows/s (sent at once: `--rate` x 60 predictions through /predict, then their labels
through /feedback), then one timed check, which reads what that traffic changed. Without --db, a
PostgreSQL server is started for the run (initdb/pg_ctl as
the `postgres` user, as the tests do) and removed afterwards; with --db, its tables are emptied
first. Prints one JSON document; every process it starts is stopped on exit.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for path in (str(ROOT), str(BENCH_DIR)):
    if path not in sys.path:
        sys.path.insert(0, path)

import bench as B  # noqa: E402  (bench/bench.py: processes, wrk, loads, checks)


def without_password(url: str) -> str:
    """The URL without its password, which goes to PGPASSWORD instead (libpq reads it): a command
    line is visible to every local user, and the results echo the command."""
    import os
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    os.environ["PGPASSWORD"] = parts.password   # inherited by the monitors this bench starts
    user, host = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{user.split(':', 1)[0]}@{host}"))


def empty_database(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS predictions, predictions_gone, predictions_gone_horizon, drift_reports, "
                     "schema_version; DROP FUNCTION IF EXISTS predictions_mark_changed, predictions_log_gone; "
                     "DROP SEQUENCE IF EXISTS label_order")


def steady_checks(port: int, rows: list, prices: list, args) -> dict:
    """`args.steady_checks` times: a minute of traffic at `args.rate` rows/s (predictions, then
    their labels), then one timed check."""
    server, traffic = [], round(args.rate * 60)
    for _ in range(args.steady_checks):
        if traffic:
            B.fill_windows(port, rows, prices, traffic)
        server.append(B.time_checks(port, 1)["server_median_ms"])
    return {"rows_between_checks": traffic, "checks": len(server),
            "server_median_ms": round(statistics.median(server), 2) if server else None,
            "server_max_ms": max(server) if server else None}


def run(args) -> dict:
    procs = B.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="fleet-bench-"))
    server = None
    url = args.db
    try:
        if url is None:
            from tests.postgres import PostgresServer   # the tests' throwaway server

            B.say("starting a throwaway PostgreSQL ...")
            server = PostgresServer.create()
        rows, prices = B.heldout()
        rows_file = tmp / "rows.jsonl"
        rows_file.write_text("".join(json.dumps(r) + "\n" for r in rows[:500]))
        bodies = [json.dumps(rows[i:i + 1000]).encode() for i in range(0, len(rows) - 999, 1000)]
        bench = B.Bench(args, tmp, procs)
        model = Path(args.model).resolve()
        runs: dict[str, list] = {"sqlite": [], "postgresql": []}

        def location(backend: str, name: str) -> str:
            if backend == "sqlite":
                return str(tmp / f"{name}.db")
            if server is not None:
                return without_password(server.new_database())
            empty_database(url)
            return url

        for k in range(args.rounds):
            for backend in ("sqlite", "postgresql"):
                B.say(f"round {k + 1}: {backend} ...")
                proc, port = bench.start_monitor(f"{backend}-{k}", model, 1000, 500, location(backend, f"load-{k}"))
                single = B.single_row_load(port, rows_file, args, proc.pid)
                batch = B.batch_load(port, bodies, 1000, args.batch_duration, 4, proc.pid)
                procs.stop(proc)
                runs[backend].append({"single_row": single, "lists_of_1000": batch})
                B.say(f"  {single['rps']:.0f} req/s (p99 {single['p99_ms']} ms), {batch['rows_per_s']:.0f} rows/s")
        checks = {}
        for backend in ("sqlite", "postgresql"):
            B.say(f"drift checks at a window of {args.window:,} on {backend} ...")
            proc, port = bench.start_monitor(f"{backend}-checks", model, args.window, args.window,
                                             location(backend, "checks"))
            fill = B.fill_windows(port, rows, prices, args.window)
            cold = B.time_checks(port, 1)["server_median_ms"]
            checks[backend] = {"cold_ms": cold, **B.time_checks(port, args.checks), "fill": fill,
                               "steady": steady_checks(port, rows, prices, args)}
            procs.stop(proc)
            B.say(f"  cold {cold} ms, then server median {checks[backend]['server_median_ms']} ms; after a "
                  f"minute's traffic at {args.rate:g} rows/s: {checks[backend]['steady']['server_median_ms']} ms")

        def medians(backend: str) -> dict:
            r = runs[backend]
            return {"single_row_rps": statistics.median(x["single_row"]["rps"] for x in r),
                    "single_row_p99_ms": statistics.median(x["single_row"]["p99_ms"] for x in r),
                    "single_row_errors": sum(x["single_row"]["non2xx"] + x["single_row"]["socket_errors"] for x in r),
                    "list_rows_per_s": statistics.median(x["lists_of_1000"]["rows_per_s"] for x in r),
                    "list_errors": sum(x["lists_of_1000"]["errors"] for x in r)}

        return {"machine": B.machine_info(), "command": "python bench/fleet_bench.py " + " ".join(args.argv),
                "summary": {b: medians(b) for b in runs if runs[b]}, "checks": checks, "runs": runs}
    finally:
        procs.stop_all()
        if server is not None:
            server.destroy()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model artifact (train.py's output)")
    parser.add_argument("--db", help="postgresql:// URL of a database the bench may empty; default: a throwaway server")
    parser.add_argument("--rounds", type=int, default=2, help="load runs per backend, alternating (default 2)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of wrk per run (default 10)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk before each run, discarded")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-duration", type=float, default=10.0, help="seconds of 1,000-row lists per run")
    parser.add_argument("--window", type=int, default=10_000, help="window for the timed checks (default 10,000)")
    parser.add_argument("--checks", type=int, default=10, help="checks timed per backend (default 10)")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="rows/s of traffic (predictions and their labels) in the steady state (default 50)")
    parser.add_argument("--tree", type=Path, default=None,
                        help="run monitor.py of this checkout instead of this one's (bench/compare.py --fleet)")
    parser.add_argument("--steady-checks", type=int, default=5,
                        help="checks timed after a minute's traffic each (default 5)")
    args = parser.parse_args(argv)
    if args.tree is not None:
        B.MONITOR = args.tree.resolve() / "monitor.py"
    if args.db is not None:
        args.db = without_password(args.db)
    args.argv = [without_password(a) if a.startswith("postgres") else a for a in (argv if argv is not None else sys.argv[1:])]
    try:
        print(json.dumps(run(args), indent=2))
    except B.BenchError as exc:
        print(f"fleet bench failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
