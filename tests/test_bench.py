"""bench.py runs end to end and reports sane, parseable figures. No timing is asserted here: the
benchmark is the measure, and a busy test machine must not fail the suite."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent



def test_the_load_generator_is_installed():
    # Not a skip: without wrk the benchmark cannot run, and `make test` installs it.
    assert shutil.which("wrk"), "wrk is missing: `make test` installs it (apt-get install wrk)"


@pytest.fixture(scope="module")
def quick_run(small_artifact_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench.py"), "--quick", "--model", str(small_artifact_path),
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"bench.py failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout, json.loads(out.read_text())


def test_single_row_load_has_throughput_and_no_errors(quick_run):
    _, results = quick_run
    for name in ("bare", "monitor"):
        s = results["single"][name]
        assert s["requests"] > 0 and s["rps"] > 0, name
        assert 0 < s["p50_ms"] <= s["p99_ms"] <= s["max_ms"], name
        assert s["non2xx"] == 0 and s["socket_errors"] == 0, name


def test_batches_are_served(quick_run):
    _, results = quick_run
    b = results["batch"]["monitor"]
    assert b["batches"] > 0 and b["rows_per_s"] > 0
    assert b["rows_per_batch"] == 1000
    assert b["errors"] == 0, b["first_errors"]


def test_drift_check_times_are_reported(quick_run):
    _, results = quick_run
    d = results["drift"]["1000"]
    assert d["window_size"] == 1000 and d["labelled_size"] == 1000  # both windows were filled
    assert 0 < d["server_median_ms"] <= d["server_max_ms"]
    assert d["client_median_ms"] > 0
    during = results["drift"]["during_load"]
    assert during["checks"] > 0 and during["check_failures"] == 0
    assert during["with_checks"]["rps"] > 0
    assert during["with_checks"]["non2xx"] == 0 and during["with_checks"]["socket_errors"] == 0


def test_memory_and_machine_are_reported(quick_run):
    _, results = quick_run
    m = results["memory"]
    assert m["monitor"]["rss_mb"] > m["import_baseline"]["rss_mb"] > 0
    assert m["monitor"]["hwm_mb"] >= m["monitor"]["rss_mb"]
    assert results["model"]["file_mb"] > 0
    assert results["machine"]["nproc"] >= 1 and results["machine"]["python"]
    assert {t["target"] for t in results["targets"]}  # every measured target is listed


def test_prints_a_markdown_table(quick_run):
    stdout, _ = quick_run
    assert "| server | req/s |" in stdout
    assert "### Targets" in stdout
    assert "monitor, store on" in stdout or "| monitor |" in stdout


def test_no_server_is_left_running(quick_run, small_artifact_path):
    # the baselines, and the monitors serving this session's model: none may survive the run
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    leftovers = [line for line in out.splitlines() if "--port" in line and (
        "bench/bare_server.py" in line or "bench/lab_app.py" in line
        or ("monitor.py" in line and str(small_artifact_path) in line))]
    assert not leftovers


def test_the_fleet_bench_runs_both_backends_side_by_side(small_artifact_path, postgres_server):
    """bench/fleet_bench.py on a database of the tests' PostgreSQL: one short round per backend and
    checks at a small window. Figures are reported, not judged (see the module docstring)."""
    url = postgres_server.new_database()
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet_bench.py"), "--model", str(small_artifact_path),
                           "--db", url, "--rounds", "1", "--duration", "1", "--warmup", "1", "--batch-duration", "1",
                           "--window", "300", "--checks", "2", "--rate", "2", "--steady-checks", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"fleet_bench.py failed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads(proc.stdout)
    for backend in ("sqlite", "postgresql"):
        summary = results["summary"][backend]
        assert summary["single_row_rps"] > 0 and summary["list_rows_per_s"] > 0, backend
        assert summary["single_row_errors"] == 0 and summary["list_errors"] == 0, backend
        checks = results["checks"][backend]
        assert checks["window_size"] == 300 and checks["labelled_size"] == 300, backend
        assert 0 < checks["server_median_ms"] <= checks["server_max_ms"], backend
        assert checks["cold_ms"] > 0, backend
        steady = checks["steady"]   # two checks, each after a minute's traffic at 2 rows/s
        assert steady["checks"] == 2 and steady["rows_between_checks"] == 120, backend
        assert 0 < steady["server_median_ms"] <= steady["server_max_ms"], backend
    assert url.split("@")[0].split(":")[2] not in proc.stdout + proc.stderr   # the password stays out


def test_compare_runs_two_commits_in_turn_and_cleans_up():
    # This checkout against its own HEAD: both sides trained (5 trees), served and loaded in turn.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "HEAD", "--rounds", "2",
                           "--duration", "1", "--warmup", "1", "--n-estimators", "5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"compare.py failed:\n{proc.stdout}\n{proc.stderr}"
    rounds = [line for line in proc.stderr.splitlines() + proc.stdout.splitlines() if line.startswith("round ")]
    assert [r.split()[2].rstrip(":") for r in rounds] == ["baseline", "this", "this", "baseline"]   # in turn
    table = [line for line in proc.stdout.splitlines() if line.startswith(("| baseline", "| this"))]
    assert len(table) == 2
    for row in table:
        rps = float(row.split("|")[2].split()[0].replace(",", ""))
        assert rps > 0
    # its own baseline removed (other checkouts of this repository may be running compare.py too)
    tree = next(line.split(" checked out at ")[1] for line in proc.stderr.splitlines() if " checked out at " in line)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "monitor-compare-" in tree and tree not in worktrees and not Path(tree).exists()


def test_compare_fleet_alternates_the_fleet_bench_between_two_commits():
    # This checkout against its own HEAD: each side's monitor.py under this checkout's fleet_bench.py.
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "HEAD", "--fleet", "--rounds", "1",
                           "--n-estimators", "5", "--window", "300", "--checks", "1", "--rate", "1",
                           "--steady-checks", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"compare.py --fleet failed:\n{proc.stdout}\n{proc.stderr}"
    rounds = [line for line in proc.stderr.splitlines() if line.startswith("round ")]
    assert [r.split()[2].rstrip(":") for r in rounds] == ["baseline", "this"]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("| |"))
    assert "postgresql cold" in header and "postgresql steady" in header
    table = [line for line in proc.stdout.splitlines() if line.startswith(("| baseline", "| this"))]
    assert len(table) == 2
    for row in table:
        assert all(float(cell.split()[0]) > 0 for cell in row.strip("|").split("|")[1:])
