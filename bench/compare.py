"""Single-row /predict throughput of this checkout against an earlier commit, in alternating rounds.

    python bench/compare.py 5523900                 # this checkout vs commit 5523900, 6 rounds each
    python bench/compare.py 5523900 --rounds 10 --duration 15
    python bench/compare.py main --fleet --rounds 2  # the fleet drift check (bench/fleet_bench.py) instead

On a shared machine the load of other processes moves req/s by +-25% from one run to the next, more
than most code changes do, so one run of each is no evidence. Here the two monitors take turns
(old, new, new, old, ...) under the same wrk load as bench.py's single-row run, each started fresh
with its own SQLite store and a model trained by its own train.py, and the medians and ranges of
req/s, p99 and the server's CPU per request are compared. A difference smaller than the ranges is
noise. The baseline is checked out with `git worktree add --detach` into a temporary folder and
removed afterwards.

With --fleet, each turn is a run of this checkout's bench/fleet_bench.py (--rounds 0: the drift
checks at a 10,000 window only, on a throwaway PostgreSQL and on SQLite) against the monitor.py of
that side's tree, and the checks' medians are compared: the first (cold) check, checks back to
back, and checks after a minute of traffic at --rate rows/s.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402  (bench/ is not a package: its scripts run as files)

ROOT = B.ROOT


def _prepare(name: str, tree: Path, tmp: Path, train_args: list[str]) -> Path:
    model = tmp / f"{name}.joblib"
    B.say(f"training {name}'s model with its own train.py")
    B.train_model([sys.executable, str(tree / "train.py"), "--output", str(model), *train_args],
                  tmp / f"train-{name}.log", name)
    return model


def _one_round(name: str, tree: Path, model: Path, rows_file: Path, tmp: Path, args, procs: B.Processes) -> dict:
    port = B.free_port()
    cmd = [sys.executable, str(tree / "monitor.py"), "--port", str(port), "--model", str(model), "--check-interval",
           "0", "--log-level", "WARNING", "--db", str(tempfile.mkdtemp(dir=tmp) + "/monitor.db")]
    log_path = tmp / f"{name}.log"
    proc = procs.start(cmd, log_path, B.child_env())
    try:
        B.wait_healthy(port, proc, log_path, timeout=180)
        result = B.single_row_load(port, rows_file, args, proc.pid)
    finally:
        procs.stop_all()
    if result["non2xx"] or result["socket_errors"]:
        raise B.BenchError(f"{name}: {result['non2xx']} non-2xx answers, {result['socket_errors']} socket errors")
    return result


def _fleet_round(name: str, tree: Path, model: Path, tmp: Path, args) -> dict:
    cmd = [sys.executable, str(B.BENCH_DIR / "fleet_bench.py"), "--model", str(model), "--tree", str(tree),
           "--rounds", "0", "--window", str(args.window), "--checks", str(args.checks), "--rate", str(args.rate),
           "--steady-checks", str(args.steady_checks)]
    with open(tmp / f"fleet-{name}.log", "ab") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, env=B.child_env(), timeout=3600)
    if proc.returncode != 0:
        raise B.BenchError(f"{name}: fleet_bench.py failed (code {proc.returncode}), see {tmp}/fleet-{name}.log")
    checks = json.loads(proc.stdout)["checks"]
    return {f"{backend} {what}": (checks[backend][key] if what != "steady" else checks[backend]["steady"][key])
            for backend in ("sqlite", "postgresql")
            for what, key in (("cold", "cold_ms"), ("back to back", "server_median_ms"), ("steady", "server_median_ms"))}


def _fleet_table(runs: dict[str, list[dict]], args) -> None:
    print(f"\n{args.rounds} alternating rounds of bench/fleet_bench.py --rounds 0 --window {args.window} "
          f"--rate {args.rate:g}: drift check, server ms (median (range)); baseline = {args.baseline}")
    keys = list(next(iter(runs.values()))[0])
    print("| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, results in runs.items():
        cells = []
        for key in keys:
            values = [r[key] for r in results]
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


def _summary(runs: list[dict], key: str) -> str:
    values = [r[key] for r in runs]
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("baseline", help="git revision to compare this checkout with")
    parser.add_argument("--rounds", type=int, default=6, help="runs of each monitor, alternating")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each measured wrk run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of wrk warm-up before each run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--n-estimators", type=int, default=None,
                        help="trees of both models (default: train.py's own default)")
    parser.add_argument("--fleet", action="store_true", help="compare the fleet drift check, not /predict")
    parser.add_argument("--window", type=int, default=10_000, help="--fleet: window of the checks")
    parser.add_argument("--checks", type=int, default=10, help="--fleet: checks back to back per run")
    parser.add_argument("--rate", type=float, default=50.0, help="--fleet: rows/s of the steady state's traffic")
    parser.add_argument("--steady-checks", type=int, default=5, help="--fleet: checks after a minute's traffic")
    args = parser.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="monitor-compare-"))
    baseline_tree = tmp / "baseline"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline_tree), args.baseline],
                   check=True, capture_output=True)
    B.say(f"baseline {args.baseline} checked out at {baseline_tree}")
    procs = B.Processes()
    try:
        rows, _ = B.heldout()
        rows_file = tmp / "rows.jsonl"
        rows_file.write_text("\n".join(json.dumps(r) for r in rows[:500]) + "\n")
        trees = {"baseline": baseline_tree, "this": ROOT}
        train_args = [] if args.n_estimators is None else ["--n-estimators", str(args.n_estimators)]
        models = {name: _prepare(name, tree, tmp, train_args) for name, tree in trees.items()}
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for k in range(args.rounds if args.fleet else 0):
            for name in (("baseline", "this") if k % 2 == 0 else ("this", "baseline")):
                runs[name].append(_fleet_round(name, trees[name], models[name], tmp, args))
                B.say(f"round {k + 1} {name:8s}: " + ", ".join(f"{key} {v} ms" for key, v in runs[name][-1].items()))
        if args.fleet:
            _fleet_table(runs, args)
            return 0
        for k in range(args.rounds):
            for name in (("baseline", "this") if k % 2 == 0 else ("this", "baseline")):
                result = _one_round(name, trees[name], models[name], rows_file, tmp, args, procs)
                runs[name].append(result)
                B.say(f"round {k + 1} {name:8s}: {result['rps']:,.0f} req/s, p99 {result['p99_ms']:.1f} ms, "
                      f"{result['server_cpu_us_per_request']} us CPU/request, others {result['others_cpu_pct']}% CPU")
        print(f"\n{args.rounds} alternating rounds, {args.connections} connections, {args.duration:g} s each "
              f"(median (range)); baseline = {args.baseline}")
        print("| | req/s | p99 ms | server CPU us/request | other processes' CPU % |\n|---|---|---|---|---|")
        for name in trees:
            print(f"| {name} | {_summary(runs[name], 'rps')} | {_summary(runs[name], 'p99_ms')} | "
                  f"{_summary(runs[name], 'server_cpu_us_per_request')} | {_summary(runs[name], 'others_cpu_pct')} |")
        return 0
    except B.BenchError as exc:
        print(f"compare failed: {exc}", file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline_tree)],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
