"""False alarms and detection delays for the shipped example models that are not the diamond-price
regressor, with evaluate_drift.py's protocol, in process:

  classifier  data/diamonds.csv, `cut` from the other columns (train.py --data ... --target cut)
  friedman    data/friedman.csv, a regression whose target is negative half the time

Per seed and scenario: `warmup` clean held-out rows, then `drift_rows` drifted ones, a check every
`check_every` rows on the newest `window` inputs and labels (each row labelled as it is served).
Data-drift reference: the training features; concept-drift reference: one half of the held-out rows
(fixed seed), the other half streamed. The windows are scored with the detectors the monitor builds
for that model (monitor.Monitor's choice: ClassificationConceptDetector for a classifier, drift's
ConceptDriftDetector for a regression). Delays are in drifted samples (inputs for data scenarios,
labels for concept ones): at a check (multiples of check_every), or at the row where a CUSUM
between checks alarmed (monitoring/sequential.py, as the monitor runs them).

    python -m evaluation.evaluate_drift --example classifier        # trains the model first (100 trees)
    python -m evaluation.evaluate_drift --example friedman --seeds 10
    python -m evaluation.anymodel --model classifier                 # the same
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

import train
from evaluation.evaluate_drift import false_alarms
from monitoring import drift, sequential
from monitoring.classification import ClassificationConceptDetector, labelled_pairs

DATA = Path(__file__).resolve().parent.parent / "data"
CUT_ORDER = {"color": list("JIHGFED"), "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]}


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "data" | "concept"
    description: str
    # (pool of held-out rows with the target column, n, rng) -> n drifted rows (features and target)
    sample: Callable[[pd.DataFrame, int, np.random.Generator], pd.DataFrame]


def _weighted(weights: Callable[[pd.DataFrame], np.ndarray]):
    def sample(pool, n, rng):
        w = np.asarray(weights(pool), dtype=np.float64)
        return pool.iloc[rng.choice(len(pool), size=n, replace=False, p=w / w.sum())]
    return sample


def _changed(column: str, change: Callable[[pd.Series], pd.Series]):
    def sample(pool, n, rng):
        rows = pool.iloc[rng.choice(len(pool), size=n, replace=False)].copy()
        rows[column] = change(rows[column])
        return rows
    return sample


def _noisy(pool, n, rng):
    rows = pool.iloc[rng.choice(len(pool), size=n, replace=False)].copy()
    rows["y"] = rows["y"] + rng.normal(0.0, 2.0, n)
    return rows


MODELS = {
    "classifier": {
        "data": DATA / "diamonds.csv", "target": "cut", "ordered": CUT_ORDER,
        "scenarios": [
            Scenario("class_mix", "data", "worse cuts more common: Fair and Good 3x, Very Good 1.5x",
                     _weighted(lambda p: p["cut"].map({"Fair": 3.0, "Good": 3.0, "Very Good": 1.5}).fillna(1.0))),
            Scenario("premium_as_ideal", "concept", "labels flipped for one class: Premium labelled Ideal",
                     _changed("cut", lambda c: c.replace({"Premium": "Ideal"}))),
            Scenario("good_as_very_good", "concept", "labels flipped for one class: Good labelled Very Good",
                     _changed("cut", lambda c: c.replace({"Good": "Very Good"}))),
        ],
    },
    "friedman": {
        "data": DATA / "friedman.csv", "target": "y", "ordered": {},
        "scenarios": [
            Scenario("x4_shift", "data", "x4 + 0.15 (half a standard deviation)", _changed("x4", lambda x: x + 0.15)),
            Scenario("site_mix", "data", "sites s00-s09 3x as common (a 30-category column)",
                     _weighted(lambda p: np.where(p["site"] < "s10", 3.0, 1.0))),
            Scenario("y_up_1", "concept", "targets + 1.0 (0.4 residual sd) for the same inputs",
                     _changed("y", lambda y: y + 1.0)),
            Scenario("y_noisy", "concept", "targets + N(0, 2) noise, no bias", _noisy),
        ],
    },
}


class _Setup:
    """The model, its detectors and the streamed half of the held-out rows."""

    def __init__(self, name: str, args: argparse.Namespace):
        spec = MODELS[name]
        self.spec, self.target = spec, spec["target"]
        quiet = lambda _: None  # noqa: E731
        artifact = train.train_csv(spec["data"], spec["target"], ordered=spec["ordered"],
                                   n_estimators=args.n_estimators, n_jobs=args.jobs, say=quiet)
        part = train.split_csv(spec["data"], spec["target"], ordered=spec["ordered"], say=quiet)
        self.metrics = artifact["metrics"]
        self.pipeline, self.schema = artifact["pipeline"], artifact["schema"]
        self.classification = self.schema["task"] == "classification"
        self.classes = self.schema.get("classes", [])
        self.grades: dict[str, list[str]] = {}
        self.features = list(part.X_test.columns)
        heldout = part.X_test.assign(**{self.target: part.y_test.to_numpy()}).reset_index(drop=True)
        order = np.random.default_rng(args.split_seed).permutation(len(heldout))
        reference, self.stream = heldout.iloc[order[:len(order) // 2]], heldout.iloc[order[len(order) // 2:]]
        self.data_detector = drift.DataDriftDetector(artifact["reference_features"], self.schema, alpha=args.alpha)
        if self.classification:
            actual = self._codes(reference[self.target])
            self.concept_detector = ClassificationConceptDetector(
                actual, self.pipeline.predict_proba(reference[self.features]), alpha=args.alpha)
        else:  # as the monitor builds it: its error measure, segments by category
            self.grades = {f["name"]: f["categories"] for f in self.schema["features"] if f["kind"] == "categorical"}
            self.concept_detector = drift.ConceptDriftDetector(
                reference[self.target].to_numpy(dtype=np.float64),
                self.pipeline.predict(reference[self.features]), alpha=args.alpha, grades=self.grades,
                reference_grades=train.grade_codes(reference, self.schema),
                error=artifact["reference_errors"]["error"])
        # the monitor's CUSUMs between checks: the numeric features', and a regression's labels'
        self.sequential_data = sequential.SequentialDataDetector.of(self.data_detector, artifact["reference_features"])
        self.sequential_concept = None if self.classification else sequential.SequentialConceptDetector(
            self.concept_detector, reference[self.target].to_numpy(dtype=np.float64),
            self.pipeline.predict(reference[self.features]))

    def _codes(self, labels) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup[v] for v in labels], dtype=np.int64)

    def windows(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """The rows as the monitor's windows hold them: inputs per feature, and the labelled pair."""
        arrays = self.data_detector.encode(rows)
        if self.classification:
            probabilities = self.pipeline.predict_proba(rows[self.features])
            pairs = labelled_pairs(probabilities, self._codes(rows[self.target]), probabilities.argmax(axis=1))
        else:
            pairs = np.column_stack([rows[self.target].to_numpy(dtype=np.float64),
                                     self.pipeline.predict(rows[self.features])])
        arrays["_first"], arrays["_second"] = pairs[:, 0], pairs[:, 1]
        return arrays


def run_seed(setup: _Setup, args: argparse.Namespace, seed: int) -> list[dict]:
    rows, window, every = setup.stream, args.window, args.check_every
    state: dict[str, np.ndarray] = {}
    seq_data = None if setup.sequential_data is None else setup.sequential_data.fresh()
    seq_concept = None if setup.sequential_concept is None else setup.sequential_concept.fresh()

    def first_alarm(detector, *batch) -> int | None:
        """The batch's first row (1 = its first) at which a CUSUM alarmed, as evaluate_drift counts."""
        if detector is None:
            return None
        before = detector.rows
        result = detector.update(*batch)
        return min(a.row for a in result.alarms) - before if result.alarm else None

    def check(arrays, start, stop) -> tuple[bool, bool, int | None, int | None]:
        alarms = (first_alarm(seq_data, {k: v[start:stop] for k, v in arrays.items()}),
                  first_alarm(seq_concept, arrays["_first"][start:stop], arrays["_second"][start:stop]))
        for key, values in arrays.items():
            old = state.get(key)
            state[key] = values[start:stop] if old is None else np.concatenate((old, values[start:stop]))[-window:]
        data = setup.data_detector.score({k: v for k, v in state.items() if not k.startswith("_")})
        concept = setup.concept_detector.score(state["_first"], state["_second"],
                                               grades={name: state[name] for name in setup.grades})
        return data.detected, concept.detected, *alarms

    records, clean_rows = [], 0
    for k, scenario in enumerate(setup.spec["scenarios"]):
        rng = np.random.default_rng([seed, k])
        order = rng.permutation(len(rows))
        warm = rows.iloc[order[:args.warmup]]
        pool = rows.iloc[np.r_[order[:args.warmup - window], order[args.warmup:]]]
        drifted = scenario.sample(pool, args.drift_rows, rng)
        record = {"scenario": scenario.name, "seed": seed, "clean_checks": 0, "clean_data": 0, "clean_concept": 0,
                  "delay": None, "other_checks": 0, "other_flags": 0}
        clean = setup.windows(warm)
        for start in range(0, len(warm), every):
            stop = min(start + every, len(warm))
            data_flag, concept_flag, data_alarm, concept_alarm = check(clean, start, stop)
            clean_rows += stop - start
            if clean_rows >= window:  # an interval with a check's flag or a CUSUM's alarm
                record["clean_checks"] += 1
                record["clean_data"] += data_flag or data_alarm is not None
                record["clean_concept"] += concept_flag or concept_alarm is not None
        own = 0 if scenario.kind == "data" else 1
        shifted = setup.windows(drifted)
        for start in range(0, len(drifted), every):
            stop = min(start + every, len(drifted))
            flags = check(shifted, start, stop)
            alarm = flags[2 + own]
            if (flags[own] or alarm is not None) and record["delay"] is None:
                record["delay"] = start + alarm if alarm is not None else stop  # at row resolution
            record["other_checks"] += 1
            record["other_flags"] += flags[1 - own] or flags[3 - own] is not None
        clean_rows = 0
        records.append(record)
    return records


def _heldout_figures(setup: _Setup) -> str:
    m = setup.metrics
    if setup.classification:
        return (f"held-out accuracy {m['accuracy']:.4f}, log loss {m['log_loss']:.4f} ({m['n_test']:,} rows; "
                + ", ".join(f"{c} {n:,}" for c, n in m["class_counts"].items()) + ")")
    return f"held-out MSE {m['mse']:.4g}, RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, R2 {m['r2']:.4f} ({m['n_test']:,} rows)"


def render(name: str, setup: _Setup, runs: list[dict], args: argparse.Namespace, seconds: float) -> str:
    def fa_text(key):
        flagged, checks, low, high = false_alarms(runs, f"clean_{key}")
        return (f"{key} drift {flagged}/{checks} checks ({100 * flagged / max(checks, 1):.2f}%, "
                f"95% interval {100 * low:.2f}-{100 * high:.2f}%)")

    lines = [f"Model {name}: {_heldout_figures(setup)}.", "",
             f"Window {args.window} inputs / {args.window} labels, a check every {args.check_every} rows, alpha "
             f"{args.alpha}, {args.seeds} seeds x {len(setup.spec['scenarios'])} scenarios, each run {args.warmup} "
             f"clean then {args.drift_rows} drifted rows; {len(setup.stream):,} held-out rows streamed.", "",
             f"False alarms on clean traffic: {fa_text('data')}; {fa_text('concept')}.", "",
             f"| scenario | kind | change | detected within {args.within} | median delay | p90 delay | other detector flags |",
             "|---|---|---|---|---|---|---|"]
    for scenario in setup.spec["scenarios"]:
        mine = [r for r in runs if r["scenario"] == scenario.name]
        delays = np.array([np.inf if r["delay"] is None else r["delay"] for r in mine], dtype=np.float64)
        median, p90 = (float(np.quantile(delays, q, method="higher")) for q in (0.5, 0.9))
        unit = "inputs" if scenario.kind == "data" else "labels"
        other = "concept" if scenario.kind == "data" else "data"
        checks = sum(r["other_checks"] for r in mine)
        rate = sum(r["other_flags"] for r in mine) / max(checks, 1)

        def fmt(v):
            return f"> {args.drift_rows}" if not np.isfinite(v) else f"{v:.0f}"

        lines.append(f"| {scenario.name} | {scenario.kind} | {scenario.description} | "
                     f"{100 * np.mean(delays <= args.within):.0f}% | {fmt(median)} {unit} | {fmt(p90)} {unit} | "
                     f"{other}: {100 * rate:.1f}% of {checks} checks |")
    lines += ["", f"({seconds:.0f} s)"]
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", choices=list(MODELS), default="classifier", help="which shipped example")
    parser.add_argument("--n-estimators", type=int, default=100, help="trees of the model trained first")
    parser.add_argument("--jobs", type=int, default=-1, help="cores for training")
    parser.add_argument("--window", type=int, default=500)
    parser.add_argument("--check-every", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--alpha", type=float, default=drift.DEFAULT_ALPHA)
    parser.add_argument("--warmup", type=int, default=None, help="clean rows per run; None means 4 x --window")
    parser.add_argument("--drift-rows", type=int, default=None, help="drifted rows per run; None means 3 x --window")
    parser.add_argument("--within", type=int, default=500)
    parser.add_argument("--split-seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.warmup = args.warmup if args.warmup is not None else 4 * args.window
    args.drift_rows = args.drift_rows if args.drift_rows is not None else 3 * args.window
    return args


def evaluate(args: argparse.Namespace) -> tuple[_Setup, list[dict], float]:
    started = time.perf_counter()
    setup = _Setup(args.model, args)
    if args.warmup > len(setup.stream) or args.drift_rows > len(setup.stream) - args.window:
        sys.exit(f"--warmup and --drift-rows must fit in the {len(setup.stream)} streamed held-out rows")
    runs = [r for seed in range(args.seeds) for r in run_seed(setup, args, seed)]
    return setup, runs, time.perf_counter() - started


def main(argv=None) -> int:
    args = parse_args(argv)
    setup, runs, seconds = evaluate(args)
    print(render(args.model, setup, runs, args, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
