"""Traffic simulator: replay held-out diamonds against the monitor, send their true prices later, and
switch drift scenarios on mid-run, so that the dashboard reacts and the alerts fire.

    python -m evaluation.simulate                                   # 20 rows/s of clean traffic for 10 minutes
    python -m evaluation.simulate --scenario large_stones --drift-after 120
    python -m evaluation.simulate --scenario large_stones,price_up_25 --drift-after 3000rows --duration 1800
    python -m evaluation.simulate --list-scenarios

Rows are the held-out split of train.py (stones the model never saw), in a seeded random order. Each
row is sent to POST /predict (--batch rows per request, --rate rows per second in all); its true
price goes to POST /feedback --label-delay seconds later (ground truth arrives late in real life;
--label-fraction labels only some). After --drift-after (seconds, or "N" + "rows"), rows come from
the drift scenarios instead (scenarios.py: "data" ones change the inputs, "concept" ones change only
the prices; several are applied in the order given). Every --report-every seconds a line shows what
was sent and the monitor's latest drift decisions (GET /drift). The run stops after --duration
seconds. Only the standard library talks HTTP.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections import deque
import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from evaluation.scenarios import SCENARIOS, heldout_rows
from monitoring.diamonds import as_payload
from monitoring.options import add_options, config_from, option



class SimulatorError(Exception):
    """The monitor answered with an error status."""


class Client:
    """JSON over HTTP to the monitor, with urllib (no proxies: the monitor is usually local)."""

    def __init__(self, url: str, timeout: float = 10.0, token: str | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.token = token or None  # the monitor's bearer token (MONITOR_TOKEN), if it has one
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            text = exc.read()[:300].decode("utf-8", "replace")
            raise SimulatorError(f"{method} {path}: HTTP {exc.code}: {text}") from None

    def predict(self, rows: list[dict]) -> list[str]:
        """Prediction ids, one per row."""
        return self.call("POST", "/predict", rows)["ids"]

    def feedback(self, labels: list[tuple[str, float]]) -> dict:
        return self.call("POST", "/feedback", [{"id": i, "actual": a} for i, a in labels])

    def drift(self) -> dict:
        return self.call("GET", "/drift")

    def wait_healthy(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.call("GET", "/healthz")
                return True
            except (OSError, SimulatorError):
                if time.monotonic() >= deadline:
                    return False
                time.sleep(1.0)


def drifted(rows: pd.DataFrame, names: list[str], rng: np.random.Generator) -> pd.DataFrame:
    """The scenarios applied in turn to the whole pool (mix changes resample it, value changes
    transform it)."""
    for name in names:
        rows = SCENARIOS[name].apply(rows, rng)
    return rows.reset_index(drop=True)


def parse_drift_after(text: str) -> tuple[float | None, int | None]:
    """'300' or '300s' -> (300.0, None) seconds; '2000rows' -> (None, 2000) rows."""
    text = str(text).strip().lower()
    try:
        if text.endswith("rows"):
            rows = int(text[:-4])
            if rows < 0:
                raise ValueError
            return None, rows
        seconds = float(text[:-1] if text.endswith("s") else text)
        if seconds < 0 or not math.isfinite(seconds):
            raise ValueError
        return seconds, None
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds (300, 300s) or rows (2000rows)") from None


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number")
        return value
    return parse


def _fraction(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a fraction between 0 and 1")
    return value


def _non_negative(text):
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds >= 0")
    return value


def _scenario_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in str(text).split(",") if n.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario {unknown[0]!r}; known: {', '.join(SCENARIOS)}")
    return names


@dataclass
class Options:
    """The simulator's settings; each is also a flag and a SIMULATE_ environment variable."""
    url: str = option("http://127.0.0.1:5000", "the monitor")
    rate: float = option(20.0, "rows per second", parse=_positive(float))
    batch: int = option(1, "rows per /predict request", parse=_positive(int))
    label_delay: float = option(30.0, "seconds before a prediction's true price is sent to /feedback",
                                parse=_non_negative)
    label_fraction: float = option(1.0, "share of predictions that get a label", parse=_fraction)
    scenarios: tuple[str, ...] = option((), "drift scenario(s) from evaluation/scenarios.py, comma-separated, "
                                            "applied in order; empty for clean traffic (see --list-scenarios)",
                                        flag="--scenario", parse=_scenario_names)
    drift_after: tuple[float | None, int | None] = option((300.0, None), "when drift starts: seconds (300, 300s) "
                                                                        "or rows sent (2000rows)",
                                                          parse=parse_drift_after, shown="300s")
    duration: float = option(600.0, "seconds to run, then stop", parse=_positive(float))
    seed: int = option(0, "seed of the row order, the scenarios and the labelled share")
    report_every: float = option(15.0, "seconds between progress lines", parse=_positive(float))
    wait: float = option(60.0, "seconds to wait for the monitor's /healthz before giving up", parse=_non_negative)
    # A secret: from the environment only (MONITOR_TOKEN, as the monitor), never a flag that `ps` shows.
    token: str | None = None

    @property
    def drift_after_seconds(self) -> float | None:
        return self.drift_after[0]

    @property
    def drift_after_rows(self) -> int | None:
        return self.drift_after[1]


@dataclass
class Summary:
    rows_sent: int = 0
    requests: int = 0
    labels_sent: int = 0
    labels_accepted: int = 0
    labels_unknown: int = 0
    labels_pending: int = 0
    errors: int = 0
    drift_started_after: float | None = None  # seconds into the run
    last_drift_report: dict | None = None


class Pool:
    """Rows to send, cycled in order (the order is already random)."""

    def __init__(self, rows: pd.DataFrame):
        self.rows = rows.reset_index(drop=True)
        self.requests = as_payload(self.rows)
        self.prices = self.rows["price"].to_numpy(dtype=np.float64)
        self.position = 0

    def take(self, n: int) -> tuple[list[dict], np.ndarray]:
        idx = [(self.position + i) % len(self.requests) for i in range(n)]
        self.position = (self.position + n) % len(self.requests)
        return [self.requests[i] for i in idx], self.prices[idx]


def describe_drift(report: dict | None) -> str:
    if not report or not report.get("checked_at"):
        return "no drift check yet"
    data, concept = report.get("data_drift") or {}, report.get("concept_drift") or {}
    drifted_features = [n for n, f in (data.get("features") or {}).items() if f.get("detected")]
    score = data.get("score")
    data_text = (f"data drift: {'YES (' + ', '.join(drifted_features) + ')' if data.get('detected') else 'no'}"
                 f" score {score:.3f}" if score is not None else "data drift: n/a")
    c_score = concept.get("score")
    concept_text = (f"concept drift: {'YES' if concept.get('detected') else 'no'}"
                    + (f" MSE {100 * c_score:+.0f}%" if c_score is not None else ""))
    return (f"{data_text} ({data.get('window_size', 0)} inputs) | {concept_text} "
            f"({concept.get('labelled_size', 0)} labels)")


def run(options: Options, client: Client | None = None, out=print, rows: pd.DataFrame | None = None) -> Summary:
    """Send traffic for options.duration seconds; returns what was sent."""
    client = client or Client(options.url, token=options.token)
    rng = np.random.default_rng(options.seed)
    heldout = heldout_rows() if rows is None else rows
    heldout = heldout.iloc[rng.permutation(len(heldout))].reset_index(drop=True)
    pool = Pool(heldout)
    summary = Summary()
    pending: deque[tuple[float, str, float]] = deque()  # (due, id, price), due times in order
    period = options.batch / options.rate
    start = time.monotonic()
    next_send = next_report = start
    last_error_shown = -math.inf

    def note_error(exc: Exception) -> None:
        nonlocal last_error_shown
        summary.errors += 1
        if time.monotonic() - last_error_shown > 5:  # at most one error line per 5 s
            out(f"error ({summary.errors} so far): {exc}")
            last_error_shown = time.monotonic()

    def report(elapsed: float) -> None:
        try:
            summary.last_drift_report = client.drift()
        except (OSError, SimulatorError, ValueError) as exc:
            note_error(exc)
        phase = "drift " + "+".join(options.scenarios) if summary.drift_started_after is not None else "clean"
        out(f"[{elapsed:6.0f}s] {phase}: {summary.rows_sent} rows in {summary.requests} requests, "
            f"{summary.labels_sent} labels sent ({summary.labels_accepted} accepted), {summary.errors} errors"
            f" | {describe_drift(summary.last_drift_report)}")

    out(f"simulating {options.rate:g} rows/s ({options.batch} per request) to {client.url} for "
        f"{options.duration:g} s; labels after {options.label_delay:g} s; "
        + (f"drift {'+'.join(options.scenarios)} after "
           + (f"{options.drift_after_rows} rows" if options.drift_after_rows is not None
              else f"{options.drift_after_seconds:g} s") if options.scenarios else "no drift"))
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= options.duration:
            break
        if options.scenarios and summary.drift_started_after is None and (
                (options.drift_after_rows is not None and summary.rows_sent >= options.drift_after_rows)
                or (options.drift_after_rows is None and elapsed >= (options.drift_after_seconds or 0))):
            pool = Pool(drifted(heldout, options.scenarios, rng))
            summary.drift_started_after = elapsed
            out(f"[{elapsed:6.0f}s] drift on: {'; '.join(SCENARIOS[n].description for n in options.scenarios)}")

        if now >= next_send:
            requests, prices = pool.take(options.batch)
            try:
                ids = client.predict(requests)
                summary.rows_sent += len(ids)
                summary.requests += 1
                keep = rng.random(len(ids)) < options.label_fraction
                pending.extend((now + options.label_delay, i, float(p)) for i, p, k in zip(ids, prices, keep) if k)
                next_send += period
                if next_send < now - 1.0:  # fell behind by over a second: do not burst to catch up
                    next_send = now
            except (OSError, SimulatorError, ValueError, KeyError) as exc:
                note_error(exc)
                next_send = now + 1.0  # the monitor is failing or unreachable: retry in a second

        if pending and pending[0][0] <= now:
            due = []
            while pending and pending[0][0] <= now and len(due) < 5000:
                _, label_id, price = pending.popleft()
                due.append((label_id, price))
            try:
                answer = client.feedback(due)
                summary.labels_sent += len(due)
                summary.labels_accepted += int(answer.get("accepted", 0))
                summary.labels_unknown += len(answer.get("unknown") or [])
            except (OSError, SimulatorError, ValueError) as exc:
                note_error(exc)

        if now >= next_report:
            report(elapsed)
            next_report += options.report_every

        wake = min(next_send, next_report, start + options.duration, pending[0][0] if pending else math.inf)
        time.sleep(min(max(0.0, wake - time.monotonic()), 1.0))

    summary.labels_pending = len(pending)
    report(time.monotonic() - start)
    out(f"done: {summary.rows_sent} rows, {summary.labels_sent} labels sent "
        f"({summary.labels_pending} not yet due at the end), {summary.errors} errors")
    return summary


# --------------------------------------------------------------------------------------------------
# Command line

def parse_args(argv=None) -> Options | None:
    parser = argparse.ArgumentParser(
        description="Replay held-out diamonds against the monitor, label them later, switch drift on mid-run. "
                    "The bearer token, if the monitor needs one on /feedback, comes from MONITOR_TOKEN.",
        allow_abbrev=False)
    add_options(parser, Options, "SIMULATE_")
    parser.add_argument("--list-scenarios", action="store_true", help="list the drift scenarios and exit")
    args = parser.parse_args(argv)
    if args.list_scenarios:
        for s in SCENARIOS.values():
            print(f"{s.name:15} {s.kind:8} {s.description}")
        return None
    return dataclasses.replace(config_from(args, Options), token=os.environ.get("MONITOR_TOKEN") or None)


def main(argv=None) -> int:
    options = parse_args(argv)
    if options is None:
        return 0
    client = Client(options.url, token=options.token)
    if not client.wait_healthy(options.wait):
        print(f"the monitor at {options.url} did not answer /healthz within {options.wait:g} s", file=sys.stderr)
        return 1

    def out(line: str) -> None:
        print(line, flush=True)

    summary = run(options, client, out)
    return 0 if summary.rows_sent else 1


if __name__ == "__main__":
    sys.exit(main())
