"""One replica on PostgreSQL beside one on SQLite, and the fleet's drift check at a large window.

    python bench/fleet_bench.py --model model.joblib                     # starts a throwaway PostgreSQL
    python bench/fleet_bench.py --model model.joblib --db postgresql://monitor:...@host/bench

For each backend in turn (alternating, `--rounds` times, so that a busy machine hurts both alike):
a monitor process with its store there, single-row POST /predict under wrk (16 connections) and
1,000-row lists from 4 clients; then, with windows of `--window` (10,000), both windows filled
through the API and `--checks` POST /drift/check timed (the server's duration_seconds: for
PostgreSQL that includes reading the fleet's windows from the database, taking the lock and
storing the report). Without --db, a PostgreSQL server is started for the run (initdb/pg_ctl as
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
        conn.execute("DROP TABLE IF EXISTS predictions, drift_reports, schema_version; "
                     "DROP SEQUENCE IF EXISTS label_order")


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
            checks[backend] = {**B.time_checks(port, args.checks), "fill": fill}
            procs.stop(proc)
            B.say(f"  server median {checks[backend]['server_median_ms']} ms")

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
    args = parser.parse_args(argv)
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
