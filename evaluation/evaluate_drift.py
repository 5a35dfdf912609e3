"""Measure the drift detectors on the held-out split streamed as production traffic.

For each seed and scenario, one run streams `--warmup` clean rows (at least a window, so the window
holds only clean traffic), then switches the scenario on for `--drift-rows` rows. Every
`--check-every` rows a drift check runs on the newest `--window` inputs and the newest `--window`
labelled predictions (each row is labelled as soon as it is served). It reports:

  false alarms    flagged checks / checks whose window held clean traffic only, pooled over all runs
  delay           drifted samples (inputs for data scenarios, labels for concept ones) from the
                  switch to the first check that flags the scenario's own kind of drift
  other detector  share of drifted-phase checks flagged by the detector that should stay quiet
                  (concept drift under a covariate shift, data drift when only prices change)
  estimate        delay of the performance estimate (direct loss estimation, no labels) leaving its
                  band, and its false alarms on clean checks

Data-drift reference: the training features, as in production. Concept-drift reference: the model's
errors on one half of the held-out split (fixed seed); the other half is what gets streamed, so
the concept detector is never shown its own reference rows. Mix scenarios draw their rows without
replacement, and never a row still in the window at the switch. Delays are multiples of
--check-every. The false-alarm interval resamples whole runs, because consecutive checks share
most of their window and their false alarms come in clusters.

Two sinks, the only part that differs between the modes; the runs, the table and the JSON are the
same code:

  in process     (default) the windows are kept here and scored with drift.py's detectors directly
  --through-api  each seed's stream goes through a real monitor (monitor.start_monitor on a free port
                 of 127.0.0.1, no timer, no store, windows of --window): every --check-every rows are
                 POSTed to /predict as JSON objects, their prices (as the scenario changed them) to
                 /feedback with the returned ids, then POST /drift/check, whose `data_drift.detected`
                 and `concept_drift.detected` are what is counted. The monitor is given the artifact
                 with its `reference_errors` replaced by half A, so both modes have the same references
                 and, seed for seed, give the same records (tests/test_evaluate_drift.py checks it).

    python -m evaluation.evaluate_drift                    # about a minute on 2 cores; prints a markdown table
    python -m evaluation.evaluate_drift --through-api      # 4 seeds through the HTTP API, about a minute
    python -m evaluation.evaluate_drift --seeds 5 --scenarios large_stones price_up_20
    python -m evaluation.evaluate_drift --example classifier   # the diamonds cut classifier (evaluation/anymodel.py)
    python -m evaluation.evaluate_drift --example friedman     # the regression whose targets may be negative
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Iterator
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from evaluation import scenarios
from monitoring import diamonds, drift, performance, sequential
from monitoring.model import DEFAULT_MODEL_PATH, ModelLoadError, load_artifact


@dataclass
class Traffic:
    """Rows to stream, as served (`frame`: FEATURES, "price" = the label that arrives for the row,
    "predicted" = what the model answered) and encoded once as the monitor's windows hold them
    (`arrays`: one array per feature, grades as schema codes, plus "actual" and "predicted")."""

    frame: pd.DataFrame
    arrays: dict[str, np.ndarray]
    _payload: list[dict] | None = field(default=None, repr=False)

    @classmethod
    def of(cls, frame: pd.DataFrame, detector: drift.DataDriftDetector) -> "Traffic":
        arrays = detector.encode(frame)
        arrays["actual"] = frame["price"].to_numpy(dtype=np.float64)
        arrays["predicted"] = frame["predicted"].to_numpy(dtype=np.float64)
        return cls(frame, arrays)

    def __len__(self) -> int:
        return len(self.frame)

    def payload(self) -> list[dict]:
        """The rows as /predict JSON objects (grades as strings, numbers as floats), built once."""
        if self._payload is None:
            self._payload = diamonds.as_payload(self.frame)
        return self._payload


@dataclass
class Flags:
    """What one sink call saw: the windowed tests' decisions at the check, and the first row of the
    batch (1 = its first) at which a data or concept CUSUM alarmed, None if none did."""
    data: bool
    concept: bool
    estimate: bool  # the performance estimate out of its band
    data_alarm: int | None = None
    concept_alarm: int | None = None

    def kind(self, index: int) -> tuple[bool, int | None]:
        """(windowed decision, CUSUM alarm row) of data (0) or concept (1) drift."""
        return (self.data, self.data_alarm) if index == 0 else (self.concept, self.concept_alarm)


# A sink serves rows [start, stop) of some traffic, labels them, runs a drift check and returns its
# Flags. One sink serves one seed's whole stream, so its windows and CUSUMs carry over from one
# scenario to the next in both modes.
Sink = Callable[[Traffic, int, int], Flags]


def in_process_sink(data_detector: drift.DataDriftDetector, concept_detector: drift.ConceptDriftDetector,
                    window: int, estimator: performance.PerformanceEstimator | None = None,
                    sequential_data: sequential.SequentialDataDetector | None = None,
                    sequential_concept: sequential.SequentialConceptDetector | None = None) -> Sink:
    """Keep the newest `window` inputs and labelled predictions, as the monitor's windows do, and
    score them with the detectors in this process; run the CUSUMs (fresh copies) over every row."""
    state: dict[str, np.ndarray] = {}
    seq_data = None if sequential_data is None else sequential_data.fresh()
    seq_concept = None if sequential_concept is None else sequential_concept.fresh()

    def first_alarm(result: sequential.SequentialResult, before: int) -> int | None:
        return min(a.row for a in result.alarms) - before if result.alarm else None

    def serve_and_check(traffic: Traffic, start: int, stop: int) -> Flags:
        flags = Flags(False, False, False)
        if seq_data is not None:
            before = seq_data.rows
            flags.data_alarm = first_alarm(seq_data.update({k: v[start:stop] for k, v in traffic.arrays.items()}), before)
        if seq_concept is not None:
            before = seq_concept.rows
            flags.concept_alarm = first_alarm(seq_concept.update(traffic.arrays["actual"][start:stop],
                                                                 traffic.arrays["predicted"][start:stop]), before)
        for key, values in traffic.arrays.items():
            old = state.get(key)
            new = values[start:stop]
            state[key] = new if old is None else np.concatenate((old, new))[-window:]
        flags.data = data_detector.score(state).detected
        concept = concept_detector.score(state["actual"], state["predicted"],
                                         grades={name: state[name] for name in concept_detector.grades})
        flags.concept = concept.detected
        flags.estimate = bool(estimator is not None and estimator.score(state["predicted"]).detected)
        return flags

    return serve_and_check


class ApiError(RuntimeError):
    pass


def http_sink(url: str, timeout: float = 60.0, cusum: bool = True) -> ContextManager[Sink]:
    """Stream through a monitor's HTTP API at `url` on one keep-alive connection: POST the rows to
    /predict, their labels (traffic.frame's "price") to /feedback with the ids it returned, then
    POST /drift/check and read the decisions from the report: the windowed tests' (any feature or
    the joint test; concept drift's `detection`) and the CUSUM alarms (`sequential.alarms`, row
    numbers counted from the monitor's start) raised by this batch, whichever check reported them
    first (an alarm also triggers a check of its own). Any answer but 200 raises ApiError."""
    parts = urlsplit(url)
    seen = {"inputs": 0, "labels": 0}

    @contextlib.contextmanager
    def connected() -> Iterator[Sink]:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

        def call(path: str, body=None) -> dict:
            payload = b"" if body is None else json.dumps(body).encode()
            conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise ApiError(f"POST {path}: HTTP {response.status}: {data[:300].decode(errors='replace')}")
            return json.loads(data)

        def serve_and_check(traffic: Traffic, start: int, stop: int) -> tuple[bool, bool, bool]:
            served = call("/predict", traffic.payload()[start:stop])
            ids = served["ids"]
            if len(ids) != stop - start:
                raise ApiError(f"/predict answered {len(ids)} ids for {stop - start} rows")
            prices = traffic.frame["price"].to_numpy(dtype=np.float64)[start:stop].tolist()
            accepted = call("/feedback", [{"id": i, "actual": a} for i, a in zip(ids, prices)])
            if accepted["accepted"] != len(ids) or accepted["unknown"]:
                raise ApiError(f"/feedback accepted {accepted['accepted']} of {len(ids)} labels "
                               f"({len(accepted['unknown'])} unknown ids)")
            report = call("/drift/check")
            estimate = report.get("performance_estimate") or {}
            data, concept = report["data_drift"], report["concept_drift"]
            flags = Flags(any(f["detected"] for f in data["features"].values())
                          or bool((data.get("multivariate") or {}).get("detected")),
                          concept.get("detection") is not None, bool(estimate.get("detected", False)))
            for key, part, attr in (("inputs", data, "data_alarm"), ("labels", concept, "concept_alarm")):
                before = seen[key]
                seen[key] += stop - start
                rows = [a["row"] for a in (part.get("sequential") or {}).get("alarms", []) if a["row"] > before] if cusum else []
                setattr(flags, attr, min(rows) - before if rows else None)
            return flags

        try:
            yield serve_and_check
        finally:
            conn.close()

    return connected()


@contextlib.contextmanager
def monitor_sink(artifact: dict, args: argparse.Namespace) -> Iterator[Sink]:
    """A monitor of its own, started in this process on a free port, streamed through by http_sink
    and stopped at the end. Drift is checked only on request (no timer) and nothing is stored."""
    from prometheus_client import CollectorRegistry

    from monitor import MonitorConfig, start_monitor

    config = MonitorConfig(model_path=args.model, port=0, host="127.0.0.1", check_interval=0,
                           window=args.window, label_window=args.window, db_path=None, alpha=args.alpha,
                           scales=tuple(args.scales))
    handle = start_monitor(config, artifact=artifact, registry=CollectorRegistry())
    try:
        with http_sink(handle.url, cusum=not args.no_sequential) as sink:
            yield sink
    finally:
        handle.stop()


@dataclass
class Context:
    """What every run shares: built once, before any worker process forks."""

    pipeline: object
    data_detector: drift.DataDriftDetector
    concept_detector: drift.ConceptDriftDetector
    estimator: performance.PerformanceEstimator | None
    sequential_data: sequential.SequentialDataDetector | None
    sequential_concept: sequential.SequentialConceptDetector | None
    stream_rows: pd.DataFrame  # held-out half B, with the model's "predicted"
    reference_rows: int
    # the artifact with `reference_errors` = half A, as --through-api hands it to the monitor
    monitor_artifact: dict | None = None


def build_context(args: argparse.Namespace) -> Context:
    try:
        artifact = load_artifact(args.model)  # the monitor's own checks: hash, format, versions
    except ModelLoadError as exc:
        sys.exit(str(exc))
    pipeline = artifact["pipeline"]
    heldout = scenarios.heldout_rows(args.data_dir)
    heldout["predicted"] = pipeline.predict(heldout[diamonds.FEATURES])
    order = np.random.default_rng(args.split_seed).permutation(len(heldout))
    reference = heldout.iloc[order[: len(order) // 2]]
    stream = heldout.iloc[order[len(order) // 2:]].reset_index(drop=True)
    if args.warmup > len(stream) or args.drift_rows > len(stream) - args.window:
        sys.exit(f"--warmup and --drift-rows must fit in the {len(stream)} streamed held-out rows")
    import train  # the artifact's own encoding of the held-out rows' grades

    reference_errors = {"actual": reference["price"].to_numpy(dtype=np.float64),
                        "predicted": reference["predicted"].to_numpy(dtype=np.float64),
                        "grades": train.grade_codes(reference, artifact["schema"])}
    grades = {f["name"]: f["categories"] for f in artifact["schema"]["features"] if f["kind"] == "categorical"}
    data_detector = drift.DataDriftDetector(artifact["reference_features"], artifact["schema"], alpha=args.alpha,
                                            scales=args.scales)
    concept_detector = drift.ConceptDriftDetector(reference_errors["actual"], reference_errors["predicted"],
                                                  alpha=args.alpha, scales=args.scales, grades=grades,
                                                  reference_grades=reference_errors["grades"])
    # the monitor's CUSUMs, calibrated here once (forked workers inherit them and the cache)
    with_cusum = not args.no_sequential
    return Context(
        pipeline=pipeline,
        data_detector=data_detector,
        concept_detector=concept_detector,
        sequential_data=(sequential.SequentialDataDetector.of(data_detector, artifact["reference_features"])
                         if with_cusum else None),
        sequential_concept=(sequential.SequentialConceptDetector(concept_detector, reference_errors["actual"],
                                                                 reference_errors["predicted"])
                            if with_cusum else None),
        estimator=(performance.PerformanceEstimator(performance.ErrorModel.from_dict(artifact["error_model"]),
                                                    reference_errors["predicted"], alpha=args.alpha)
                   if "error_model" in artifact else None),
        stream_rows=stream, reference_rows=len(reference),
        monitor_artifact={**artifact, "reference_errors": reference_errors})


def open_sink(ctx: Context, args: argparse.Namespace) -> ContextManager[Sink]:
    """The sink of one seed's stream: through a monitor of its own with --through-api, else in process."""
    if args.through_api:
        return monitor_sink(ctx.monitor_artifact, args)
    return contextlib.nullcontext(in_process_sink(ctx.data_detector, ctx.concept_detector, args.window, ctx.estimator,
                                                  ctx.sequential_data, ctx.sequential_concept))


def run_seed(ctx: Context, args: argparse.Namespace, seed: int) -> list[dict]:
    """One stream: for each scenario in turn, `warmup` clean rows then `drift_rows` drifted ones.
    Returns one record per scenario run."""
    with open_sink(ctx, args) as sink:
        return _stream(ctx, args, seed, sink)


def _stream(ctx: Context, args: argparse.Namespace, seed: int, sink: Sink) -> list[dict]:
    rows, window, every = ctx.stream_rows, args.window, args.check_every
    records = []
    clean_rows = 0  # clean rows streamed since the last drifted one
    for k, name in enumerate(args.scenarios):
        scenario = scenarios.SCENARIOS[name]
        rng = np.random.default_rng([seed, k])
        order = rng.permutation(len(rows))
        warm = rows.iloc[order[: args.warmup]]
        # drifted rows never repeat a row still in the window at the switch
        pool = rows.iloc[np.r_[order[: args.warmup - window], order[args.warmup:]]]
        drifted = scenario.sample(pool, args.drift_rows, rng)  # carries each row's "predicted"
        if scenario.kind == "data":  # the inputs changed: ask the model again
            drifted["predicted"] = ctx.pipeline.predict(drifted[diamonds.FEATURES])
        record = {"scenario": name, "seed": seed, "clean_checks": 0, "clean_data": 0, "clean_concept": 0,
                  "clean_estimate": 0, "clean_data_tests": 0, "clean_concept_tests": 0, "clean_data_cusum": 0,
                  "clean_concept_cusum": 0, "delay": None, "delay_tests": None, "delay_cusum": None,
                  "other_checks": 0, "other_flags": 0, "estimate_delay": None}
        clean = Traffic.of(warm, ctx.data_detector)
        for start in range(0, len(clean), every):
            stop = min(start + every, len(clean))
            flags = sink(clean, start, stop)
            clean_rows += stop - start
            if clean_rows >= window:  # the window holds clean traffic only
                record["clean_checks"] += 1
                for index, key in enumerate(("data", "concept")):
                    tests, alarm = flags.kind(index)
                    record[f"clean_{key}"] += tests or alarm is not None
                    record[f"clean_{key}_tests"] += tests
                    record[f"clean_{key}_cusum"] += alarm is not None
                record["clean_estimate"] += flags.estimate
        if scenario.kind == "none":
            records.append(record)
            continue
        own = 0 if scenario.kind == "data" else 1
        shifted = Traffic.of(drifted, ctx.data_detector)
        for start in range(0, len(shifted), every):
            stop = min(start + every, len(shifted))
            flags = sink(shifted, start, stop)
            tests, alarm = flags.kind(own)
            if tests and record["delay_tests"] is None:
                record["delay_tests"] = stop
            if alarm is not None and record["delay_cusum"] is None:
                record["delay_cusum"] = start + alarm
            if (tests or alarm is not None) and record["delay"] is None:
                record["delay"] = start + alarm if alarm is not None else stop  # at row resolution
            if flags.estimate and record["estimate_delay"] is None:
                record["estimate_delay"] = stop
            record["other_checks"] += 1
            other_tests, other_alarm = flags.kind(1 - own)
            record["other_flags"] += other_tests or other_alarm is not None
        clean_rows = 0
        records.append(record)
    return records


_CONTEXT: Context | None = None  # inherited by forked workers


def _run_seed_in_worker(args: argparse.Namespace, seed: int) -> list[dict]:
    return run_seed(_CONTEXT, args, seed)


def run_evaluation(args: argparse.Namespace) -> dict:
    global _CONTEXT
    started = time.perf_counter()
    _CONTEXT = ctx = build_context(args)
    seeds = range(args.seeds)
    if args.jobs > 1 and args.seeds > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            per_seed = list(pool.map(_run_seed_in_worker, [args] * len(seeds), seeds))
    else:
        per_seed = [run_seed(ctx, args, seed) for seed in seeds]
    return {"runs": [r for records in per_seed for r in records], "seconds": time.perf_counter() - started,
            "reference_rows": ctx.reference_rows, "stream_rows": len(ctx.stream_rows)}


def false_alarms(runs: list[dict], key: str, n_boot: int = 2000) -> tuple[int, int, float, float]:
    """(flagged, checks, low, high): a 95% interval by resampling whole runs, since the checks of
    one run overlap and their false alarms come in clusters."""
    flags = np.array([r[key] for r in runs], dtype=np.float64)
    checks = np.array([r["clean_checks"] for r in runs], dtype=np.float64)
    if checks.sum() == 0:
        return 0, 0, float("nan"), float("nan")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(runs), size=(n_boot, len(runs)))
    rates = flags[idx].sum(axis=1) / np.maximum(checks[idx].sum(axis=1), 1)
    low, high = np.quantile(rates, [0.025, 0.975])
    return int(flags.sum()), int(checks.sum()), float(low), float(high)


def _fmt_delay(value: float, limit: int) -> str:
    return f"> {limit}" if not np.isfinite(value) else f"{value:.0f}"


def render(result: dict, args: argparse.Namespace) -> str:
    runs = result["runs"]
    keys = ("data", "concept", "estimate", "data_tests", "data_cusum", "concept_tests", "concept_cusum")
    fa = {key: false_alarms(runs, f"clean_{key}") if runs and f"clean_{key}" in runs[0] else (0, 0, np.nan, np.nan)
          for key in keys}

    def fa_text(key):
        flagged, checks, low, high = fa[key]
        what = "performance estimate" if key == "estimate" else f"{key} drift"
        text = (f"{what} {flagged}/{checks} checks ({100 * flagged / max(checks, 1):.2f}%, "
                f"95% interval {100 * low:.2f}-{100 * high:.2f}%)")
        if key != "estimate":
            text += (f" [windowed tests {100 * fa[key + '_tests'][0] / max(checks, 1):.2f}%, "
                     f"CUSUMs {100 * fa[key + '_cusum'][0] / max(checks, 1):.2f}% of the 50-row intervals]")
        return text

    mode = ("through the HTTP API: per seed, a monitor started in process; rows POSTed to /predict, "
            "labels to /feedback, then POST /drift/check" if args.through_api
            else "in process: the detectors scored on windows kept here")
    lines = [
        f"Mode: {mode}.",
        "",
        f"Window {args.window} inputs / {args.window} labels, a check every {args.check_every} rows, "
        f"alpha {args.alpha}, {args.seeds} seeds x {len(args.scenarios)} scenarios, each run {args.warmup} clean "
        f"then {args.drift_rows} drifted rows; {result['stream_rows']:,} held-out rows streamed, concept reference = "
        f"the other {result['reference_rows']:,} held-out rows; data reference = the training features.",
        "",
        f"False alarms on clean traffic: {fa_text('data')}; {fa_text('concept')}; {fa_text('estimate')}.",
        "",
        f"| scenario | kind | change | detected within {args.within} | median delay | p90 delay "
        f"| median: tests / CUSUM | other detector flags | estimated MSE leaves its band |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in args.scenarios:
        scenario = scenarios.SCENARIOS[name]
        mine = [r for r in runs if r["scenario"] == name]
        if scenario.kind == "none" or not mine:
            continue
        delays = np.array([np.inf if r["delay"] is None else r["delay"] for r in mine], dtype=np.float64)
        within = float(np.mean(delays <= args.within))
        median, p90 = (float(np.quantile(delays, q, method="higher")) for q in (0.5, 0.9))
        alone = [float(np.quantile(np.array([np.inf if r.get(key) is None else r[key] for r in mine]), 0.5,
                                   method="higher")) for key in ("delay_tests", "delay_cusum")]
        other = "concept" if scenario.kind == "data" else "data"
        checks = sum(r["other_checks"] for r in mine)
        rate = sum(r["other_flags"] for r in mine) / max(checks, 1)
        unit = "inputs" if scenario.kind == "data" else "labels"
        estimate = np.array([np.inf if r.get("estimate_delay") is None else r["estimate_delay"] for r in mine])
        estimate_median = float(np.quantile(estimate, 0.5, method="higher"))
        lines.append(f"| {scenario.name} | {scenario.kind} | {scenario.description} | {100 * within:.0f}% "
                     f"| {_fmt_delay(median, args.drift_rows)} {unit} | {_fmt_delay(p90, args.drift_rows)} {unit} "
                     f"| {_fmt_delay(alone[0], args.drift_rows)} / {_fmt_delay(alone[1], args.drift_rows)} "
                     f"| {other}: {100 * rate:.1f}% of {checks} checks "
                     f"| {_fmt_delay(estimate_median, args.drift_rows)} inputs ({100 * np.mean(np.isfinite(estimate)):.0f}% of runs) |")
    lines += ["", f"({result['seconds']:.0f} s)"]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH, help="artifact written by train.py")
    parser.add_argument("--data-dir", type=Path, default=diamonds.DATA_DIR, help="folder holding diamonds.csv")
    parser.add_argument("--window", type=int, default=500, help="inputs (and labels) in the drift windows")
    parser.add_argument("--check-every", type=int, default=50,
                        help="rows streamed between drift checks (issue #11 compares with other tools at 50)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="runs per scenario; None means 20, or 4 with --through-api")
    parser.add_argument("--through-api", action="store_true",
                        help="stream each seed through a real monitor's HTTP API instead of scoring in process")
    parser.add_argument("--alpha", type=float, default=drift.DEFAULT_ALPHA,
                        help="family-wise false-alarm level of a check")
    parser.add_argument("--scales", type=int, nargs="*", default=list(drift.DEFAULT_SCALES),
                        help="newest-sample counts tested besides the whole window (none: the whole window only)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="clean rows before each switch; None means 4 x --window")
    parser.add_argument("--drift-rows", type=int, default=None, help="drifted rows per run; None means 3 x --window")
    parser.add_argument("--within", type=int, default=500,
                        help="report the share of runs detected within this many drifted samples")
    parser.add_argument("--split-seed", type=int, default=0,
                        help="seed of the held-out split into reference / streamed halves")
    parser.add_argument("--scenarios", nargs="+", default=list(scenarios.SCENARIOS),
                        choices=list(scenarios.SCENARIOS), metavar="NAME", help="scenarios to run")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (seeds run in parallel)")
    parser.add_argument("--no-sequential", action="store_true",
                        help="the windowed tests only, without the CUSUMs between checks")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    args = parser.parse_args(argv)
    args.seeds = args.seeds if args.seeds is not None else (4 if args.through_api else 20)
    args.warmup = args.warmup if args.warmup is not None else 4 * args.window
    args.drift_rows = args.drift_rows if args.drift_rows is not None else 3 * args.window
    if args.warmup < args.window:
        parser.error("--warmup must be at least --window, so that the window holds only clean rows")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--example" in argv:  # another shipped model than the diamond regressor: evaluation/anymodel.py
        from evaluation import anymodel

        return anymodel.main([a if a != "--example" else "--model" for a in argv])
    args = parse_args(argv)
    result = run_evaluation(args)
    print(render(result, args))
    if args.json:
        out = {"mode": "through-api" if args.through_api else "in-process",
               "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "runs": result["runs"]}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
