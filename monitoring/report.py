"""The drift report page (GET /drift/report): the latest check drawn, not only its numbers.

One self-contained HTML page: inline CSS, inline SVG charts (monitoring/charts.py), no script, no
external font, image or link it needs to render, so it works offline and behind any proxy. For each
input feature, the training data against the live window (histogram and ECDF for numbers, paired
bars of category shares for grades) beside its test, statistic, p-value, distance and decision,
drifted features first; for concept drift, where the labelled window's errors fall among the
held-out errors (PIT histogram against uniform) and the errors against the predicted price.

Cost: everything that does not depend on traffic (sorted training values, category shares, the
held-out error band) is computed once at start (`Reference`). A drift check hands its report and
the snapshot of the windows it scored to `ReportPage.publish`, which only stores them; the first
view after a check renders the page (once: concurrent first views wait for that one render), and
every other view sends the cached bytes (gzip too, when the client takes it). A view never touches
the model, the windows or the detectors, so a flood of them costs a socket write each.
"""
from __future__ import annotations

import base64
import datetime as dt
import gzip
import hashlib
import math
import threading
import time
from dataclasses import dataclass
from html import escape
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from monitoring import charts
from monitoring.diamonds import FEATURE_WORDS, TARGET_UNIT
from monitoring.metrics import change_began, cusum_ratio

REPORT_PATH = "/drift/report"
TEST_NAMES = {"ks": "Kolmogorov-Smirnov (two-sample)", "chi2": "chi-square (homogeneity)",
              "pit-ks": "KS of PIT values against uniform"}
HIST_BINS = 30  # about this many bins per histogram
ECDF_POINTS = 200  # at most this many steps drawn per ECDF (a chart is ~300 units wide)
SCATTER_POINTS = 600  # the newest labelled predictions drawn in the error scatter
PIT_BINS = 10
ERROR_BAND_BINS = 16  # bins of predicted price for the held-out error band
FOOTER_SLOT = "<!--footer-->"  # filled once the render time is known


@dataclass
class DriftSnapshot:
    """The windows a check scored: InputWindow.snapshot() and LabelledWindow.snapshot()."""
    inputs: Mapping[str, np.ndarray]
    actual: np.ndarray
    predicted: np.ndarray


# --------------------------------------------------------------------------------------------------
# The reference side of every chart, computed once


def _quantiles(sorted_values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """np.quantile's default (linear) on an array that is already sorted, without sorting it again."""
    n = sorted_values.size
    out = []
    for q in qs:
        pos = q * (n - 1)
        i = int(pos)
        j = min(i + 1, n - 1)
        out.append(float(sorted_values[i] + (sorted_values[j] - sorted_values[i]) * (pos - i)))
    return out


def _grid(values: np.ndarray) -> float:
    """The coarsest power of ten that at least 90% of the values are multiples of (table: 1,
    depth: 0.1, carat: 0.01), so that histogram bins are centred on the values data really takes."""
    if values.size == 0:
        return 0.0
    sample = values[:: max(1, values.size // 5000)]
    for k in range(3, -7, -1):
        g = 10.0 ** k
        if np.mean(np.abs(sample / g - np.round(sample / g)) < 1e-6) >= 0.9:
            return g
    return 0.0


@dataclass
class _Numeric:
    sorted: np.ndarray
    unique: np.ndarray  # the values it takes: where its ECDF jumps
    grid: float
    decimals: int


@dataclass
class _Categorical:
    categories: list[str]
    shares: np.ndarray  # per category plus "other" (codes outside the list), summing to 1


class Reference:
    """What the report compares the live windows with: the training features, the held-out errors,
    and the detectors (the data detector's category counts, the concept detector's PIT)."""

    def __init__(self, reference_features: pd.DataFrame, data_detector, reference_actual, reference_predicted,
                 concept_detector):
        self.features = [(f["name"], f["kind"]) for f in data_detector.features]
        self.numeric: dict[str, _Numeric] = {}
        self.categorical: dict[str, _Categorical] = {}
        for name, kind in self.features:
            if kind == "categorical":
                detector = data_detector.detectors[name]  # counts per category, then the unseen cell
                counts = detector.reference_counts
                self.categorical[name] = _Categorical(list(detector.categories), counts / max(counts.sum(), 1))
            else:
                values = np.asarray(reference_features[name], dtype=np.float64)
                values = np.sort(values[np.isfinite(values)])
                grid = _grid(values)
                decimals = max(0, -int(math.floor(math.log10(grid)))) if grid else 2
                self.numeric[name] = _Numeric(values, np.unique(values), grid, decimals)
        self.concept = concept_detector
        actual = np.asarray(reference_actual, dtype=np.float64)
        predicted = np.asarray(reference_predicted, dtype=np.float64)
        ok = np.isfinite(actual) & np.isfinite(predicted) & (predicted > 0)
        actual, predicted = actual[ok], predicted[ok]
        self.error_band = _error_band(predicted, 100.0 * (actual / predicted - 1.0))
        self.predicted_range = (float(np.quantile(predicted, 0.005)), float(np.quantile(predicted, 0.995)))


def _error_band(predicted: np.ndarray, error_pct: np.ndarray) -> dict[str, np.ndarray]:
    """Per bin of predicted price (quantiles): the bin's median prediction and the 10th, 50th and
    90th percentiles of the error (% of the prediction)."""
    if predicted.size < 2 * ERROR_BAND_BINS:
        return {k: np.empty(0) for k in ("x", "lo", "mid", "hi")}
    edges = np.quantile(predicted, np.linspace(0, 1, ERROR_BAND_BINS + 1))
    bins = np.clip(np.searchsorted(edges, predicted, side="right") - 1, 0, ERROR_BAND_BINS - 1)
    out = {k: [] for k in ("x", "lo", "mid", "hi")}
    for b in range(ERROR_BAND_BINS):
        sel = bins == b
        if sel.sum() < 5:
            continue
        lo, mid, hi = np.quantile(error_pct[sel], [0.1, 0.5, 0.9])
        out["x"].append(float(np.median(predicted[sel])))
        out["lo"].append(lo), out["mid"].append(mid), out["hi"].append(hi)
    return {k: np.asarray(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# Words and numbers


def _words(name: str) -> dict:
    return FEATURE_WORDS.get(name, {})


def _unit(name: str) -> str:
    return _words(name).get("unit", "")


def _with_unit(value: float, name: str, decimals: int) -> str:
    unit = _unit(name)
    text = f"{value:,.{decimals}f}"
    return f"{text}%" if unit == "%" else f"{text} {unit}" if unit else text


def format_p(p: float | None) -> str:
    """A p-value for people: 0.23, 0.0042, 3.1 × 10⁻⁹, < 10⁻³⁰⁰."""
    if p is None:
        return "–"
    if p == 0:
        return "< 10⁻³⁰⁰"
    if p >= 0.001:
        return f"{p:.2g}" if p < 0.01 else f"{p:.3f}".rstrip("0").rstrip(".")
    exponent = math.floor(math.log10(p))
    mantissa = p / 10 ** exponent
    sup = str(exponent).translate(str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"{mantissa:.1f} × 10{sup}"


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def _dollars(v: float) -> str:
    if v >= 1000:
        return f"${v / 1000:g}k"
    return f"${v:g}"


def describe_numeric(name: str, ref: np.ndarray, live: np.ndarray, detected: bool, decimals: int) -> tuple[str, str]:
    """(title, subtitle) in words: which way the live values moved, with medians and middle halves."""
    r25, r50, r75 = _quantiles(ref, [0.25, 0.5, 0.75])  # both sorted
    l25, l50, l75 = _quantiles(live, [0.25, 0.5, 0.75])

    def q(v):
        return _with_unit(v, name, decimals)

    subtitle = (f"median {q(l50)} live vs {q(r50)} in training; middle half {q(l25)} to {q(l75)} "
                f"vs {q(r25)} to {q(r75)}")
    if not detected:
        return f"{name}: no significant change", subtitle
    iqr = (r75 - r25) or (np.std(ref) or 1.0)
    shift = (l50 - r50) / iqr
    mean_shift = (float(np.mean(live)) - float(np.mean(ref))) / iqr
    spread = (l75 - l25) / iqr
    words = _words(name)
    direction = shift if abs(shift) >= 0.1 else mean_shift if abs(mean_shift) >= 0.1 else 0.0
    if direction > 0:
        what = words.get("higher", f"live {name} is higher")
    elif direction < 0:
        what = words.get("lower", f"live {name} is lower")
    elif spread > 1.25:
        what = "live values are more spread out"
    elif spread < 0.8:
        what = "live values are more concentrated"
    else:
        what = "the shape of the distribution changed"
    return f"{name}: {what}", subtitle


def describe_categorical(name: str, categories: Sequence[str], ref: np.ndarray, live: np.ndarray,
                         detected: bool) -> tuple[str, str]:
    """(title, subtitle): the category whose share moved most, and the two largest moves in numbers."""
    diff = live - ref
    order = np.argsort(-np.abs(diff), kind="stable")
    moves = [f"{categories[i]} {100 * live[i]:.1f}% of live vs {100 * ref[i]:.1f}% of training"
             for i in order[:2] if abs(diff[i]) > 0]
    subtitle = "; ".join(moves) if moves else "the same shares as in training"
    if not detected:
        return f"{name}: no significant change", subtitle
    top = int(order[0])
    return f"{name}: {'more' if diff[top] > 0 else 'fewer'} {categories[top]} in live traffic", subtitle


def describe_concept(report: dict, u: np.ndarray) -> str:
    if not report.get("detected"):
        return "errors are in line with the held-out errors"
    if report.get("error") == "residual":  # a target of any sign: the bias in its own units
        shift, scale = report.get("bias") or 0.0, math.sqrt(report.get("reference_mse") or 0.0)
        if scale and abs(shift) >= 0.1 * scale:
            return f"live values are {abs(shift):.3g} {'above' if shift > 0 else 'below'} what the model predicts"
    bias = report.get("bias_pct") or 0.0
    if abs(bias) >= 3:
        return f"live prices are {abs(bias):.0f}% {'above' if bias > 0 else 'below'} what the model predicts"
    tails = float(np.mean((u < 0.1) | (u > 0.9))) if u.size else 0.2
    if tails > 0.28:
        return "errors are wider than at training"
    if tails < 0.14:
        return "errors are narrower than at training"
    return "errors are distributed differently from training"


# --------------------------------------------------------------------------------------------------
# Sections


def _feature_order(features: Mapping[str, dict], names: Sequence[str]) -> list[str]:
    """Drifted features first; within each group the largest distance first; schema order breaks ties."""
    return sorted(names, key=lambda n: (not features[n]["detected"], -(features[n]["distance"] or 0.0),
                                        names.index(n)))


def _numbers(rows: Sequence[tuple[str, str]], decision: tuple[str, bool] | None = None) -> str:
    out = ['<dl class="numbers">']
    for term, value in rows:
        out.append(f"<div><dt>{escape(term)}</dt><dd>{escape(value)}</dd></div>")
    if decision is not None:
        text, bad = decision
        out.append(f'<div><dt>decision</dt><dd class="{"bad" if bad else "ok"}">{escape(text)}</dd></div>')
    out.append("</dl>")
    return "".join(out)


def _numeric_section(name: str, result: dict, ref: _Numeric, live: np.ndarray) -> tuple[str, str, str]:
    """(title, subtitle, charts) of a numeric feature."""
    live = np.sort(live[np.isfinite(live)])
    xfmt = (lambda v, d=ref.decimals: f"{v:.{d}f}") if ref.decimals <= 2 else (lambda v: f"{v:g}")
    axis = _words(name).get("axis", name)
    if live.size == 0:
        return f"{name}: no live values yet", "", ""
    title, subtitle = describe_numeric(name, ref.sorted, live, result["detected"], ref.decimals)
    lo = min(_quantiles(ref.sorted, [0.005])[0], _quantiles(live, [0.005])[0])
    hi = max(_quantiles(ref.sorted, [0.995])[0], _quantiles(live, [0.995])[0])
    edges = _edges(lo, hi, ref.grid)
    n, m = ref.sorted.size, live.size
    ref_counts = np.diff(np.searchsorted(ref.sorted, edges, side="left"))
    live_counts = np.diff(np.searchsorted(live, edges, side="left"))
    ref_pct, live_pct = 100.0 * ref_counts / n, 100.0 * live_counts / m
    outside_ref, outside_live = 100.0 - ref_pct.sum(), 100.0 - live_pct.sum()
    hist_desc = (f"Histogram of {name}: share of rows per bin, training data as filled bars, the live window of "
                 f"{m:,} inputs as an outline.")
    caption = f"{axis}; bins of {_with_unit(edges[1] - edges[0], name, ref.decimals)}"
    if outside_ref >= 0.05 or outside_live >= 0.05:
        caption += (f"; outside the range shown: {outside_ref:.1f}% of training, {outside_live:.1f}% of live")
    hist = charts.histogram(f"chart-{name}-hist", f"{name}: training vs live, histogram", hist_desc,
                            edges.tolist(), ref_pct.tolist(), live_pct.tolist(), xfmt, axis)
    # ECDF: every jump point of both samples for the exact largest gap; at most ECDF_POINTS drawn
    jumps = np.union1d(ref.unique, live[np.r_[True, live[1:] != live[:-1]]])  # live is sorted
    f_ref = np.searchsorted(ref.sorted, jumps, side="right") / n
    f_live = np.searchsorted(live, jumps, side="right") / m
    k = int(np.argmax(np.abs(f_ref - f_live)))
    gap = (float(jumps[k]), float(f_ref[k]), float(f_live[k]))
    shown = (jumps >= edges[0]) & (jumps <= edges[-1])
    xs, fr, fl = jumps[shown], f_ref[shown], f_live[shown]
    if xs.size > ECDF_POINTS:
        pick = np.unique(np.linspace(0, xs.size - 1, ECDF_POINTS).round().astype(int))
        pick = np.union1d(pick, np.flatnonzero(xs == gap[0]))
        xs, fr, fl = xs[pick], fr[pick], fl[pick]
    ecdf_desc = (f"Cumulative distributions of {name}: training solid, live dashed; the largest vertical gap, "
                 f"the KS statistic D = {abs(gap[1] - gap[2]):.3f}, is at {xfmt(gap[0])}.")
    start = (float(np.searchsorted(ref.sorted, edges[0], side="left") / n),
             float(np.searchsorted(live, edges[0], side="left") / m))  # below the range shown
    ecdf = charts.ecdf(f"chart-{name}-ecdf", f"{name}: training vs live, cumulative", ecdf_desc,
                       (float(edges[0]), float(edges[-1])), xs.tolist(), fr.tolist(), fl.tolist(), gap, xfmt, axis,
                       start=start)
    figures = (f'<figure>{hist}<figcaption>{escape(caption)}</figcaption></figure>'
               f'<figure>{ecdf}<figcaption>The KS statistic D is the largest vertical gap between the two '
               f'curves (marked).</figcaption></figure>')
    return title, subtitle, figures


def _edges(lo: float, hi: float, grid: float) -> np.ndarray:
    """About HIST_BINS equal bins over [lo, hi] at a round width that is a multiple of `grid`, with
    edges halfway between grid values so that each value the data takes falls inside a bin."""
    if not hi > lo:
        hi = lo + (grid or 1.0)
    raw = (hi - lo) / HIST_BINS
    mag = 10 ** math.floor(math.log10(raw))
    width = next(s * mag for s in (1, 2, 5, 10) if s * mag >= raw * (1 - 1e-9))
    if grid:
        width = max(width, grid)
        offset = grid / 2
    else:
        offset = 0.0
    start = math.floor((lo + offset) / width) * width - offset
    count = max(1, int(math.ceil((hi + offset - start) / width - 1e-9)))
    if start + count * width <= hi:
        count += 1
    return start + width * np.arange(count + 1)


def _categorical_section(name: str, result: dict, ref: _Categorical, codes: np.ndarray) -> tuple[str, str, str]:
    codes = np.asarray(codes)
    k = len(ref.categories)
    codes = np.where((codes >= 0) & (codes < k), codes, k).astype(np.int64)
    counts = np.bincount(codes, minlength=k + 1)
    m = int(counts.sum())
    if m == 0:
        return f"{name}: no live values yet", "", ""
    live = counts / m
    categories, ref_shares, live_shares = list(ref.categories), ref.shares, live
    if ref.shares[k] == 0 and live[k] == 0:
        ref_shares, live_shares = ref_shares[:k], live_shares[:k]
    else:
        categories.append("other")
    title, subtitle = describe_categorical(name, categories, ref_shares, live_shares, result["detected"])
    desc = (f"Share of each {name} grade: training (blue, top bar) and the live window of {m:,} inputs "
            f"(orange, bottom bar). " + "; ".join(f"{c} {100 * r:.1f}% vs {100 * v:.1f}%"
                                                 for c, r, v in zip(categories, ref_shares, live_shares)))
    chart = charts.paired_bars(f"chart-{name}-bars", f"{name}: share of each grade, training vs live", desc,
                               categories, (100 * ref_shares).tolist(), (100 * live_shares).tolist())
    axis = _words(name).get("axis", name)
    figures = (f"<figure>{chart}<figcaption>{escape(axis)}, as listed in the model's schema (worst grade "
               f"first)</figcaption></figure>")
    return title, subtitle, figures


def _feature_card(name: str, kind: str, result: dict, reference: Reference, snapshot: DriftSnapshot) -> str:
    values = np.asarray(snapshot.inputs.get(name, np.empty(0)))
    if kind == "categorical":
        title, subtitle, figures = _categorical_section(name, result, reference.categorical[name], values)
    else:
        title, subtitle, figures = _numeric_section(name, result, reference.numeric[name],
                                                    values.astype(np.float64, copy=False))
    detected = bool(result["detected"])
    statistic = result["statistic"]
    stat_text = "–" if statistic is None else (f"D = {statistic:.3f}" if result["test"] == "ks"
                                               else f"χ² = {statistic:,.1f}")
    numbers = _numbers([("test", TEST_NAMES.get(result["test"], result["test"])), ("statistic", stat_text),
                        ("p-value", format_p(result["p_value"])), ("distance", _num(result["distance"]))],
                       ("drifted" if detected else "no drift", detected))
    return (f'<article class="feature{" drifted" if detected else ""}" id="feature-{escape(name)}" '
            f'data-feature="{escape(name)}" data-drifted="{"true" if detected else "false"}">'
            f'<h3>{escape(title)}</h3><p class="sub">{escape(subtitle)}</p>{numbers}'
            f'<div class="charts">{figures}</div></article>')


def _summary_table(order: Sequence[str], features: Mapping[str, dict]) -> str:
    rows = []
    for name in order:
        r = features[name]
        decision = ('<td class="bad">drifted</td>' if r["detected"] else '<td class="ok">no drift</td>')
        rows.append(f'<tr><th scope="row"><a href="#feature-{escape(name)}">{escape(name)}</a></th>'
                    f'<td>{escape(r["test"])}</td><td>{_num(r["statistic"], ",.3f")}</td>'
                    f'<td>{escape(format_p(r["p_value"]))}</td><td>{_num(r["distance"])}</td>{decision}</tr>')
    return ('<div class="scroll"><table class="summary"><thead><tr><th scope="col">feature</th>'
            '<th scope="col">test</th><th scope="col">statistic</th><th scope="col">p-value</th>'
            '<th scope="col">distance</th><th scope="col">decision</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _utc(unix_seconds: float | None) -> str:
    """A unix time as the page writes times: 2026-11-27 22:30:05 UTC."""
    if unix_seconds is None:
        return "–"
    return dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _time(unix_seconds: float | None) -> str:
    """A unix time as a <time> element (its ISO form for machines), or a dash."""
    if unix_seconds is None:
        return "–"
    iso = dt.datetime.fromtimestamp(unix_seconds, dt.timezone.utc).isoformat(timespec="seconds")
    return f'<time datetime="{escape(iso)}">{escape(_utc(unix_seconds))}</time>'


def _since_line(kind: str, began: float | None) -> str:
    """"Drifting since ..." at the top of a section: the figure drift_since_timestamp_seconds has."""
    if began is None:
        return ""
    return (f'<p class="since" id="{kind}-since" data-since="{began!r}"><strong>Drifting since {_time(began)}'
            "</strong>: the earliest start among this check's detections and the CUSUM alarms since the previous "
            "check.</p>")


CUSUM_WORDS = {  # (whose, of what, which way is which)
    "data": ("the inputs", "each numeric feature's normal score (a value's rank among the training values, as a "
                           "standard normal score)", "Up: larger values than in training; down: smaller."),
    "concept": ("the labels", "the labels' errors ranked among the held-out errors of similar predictions (as "
                              "standard normal scores), over every label (all) and within each third of the "
                              "predicted-value bands",
                "Up: actual values above predictions; down: below."),
}
RECENT_ALARMS = 8  # the newest alarms listed under the table


def _cusum_block(kind: str, sequential: dict | None) -> str:
    """The CUSUMs between checks (monitoring/sequential.py) as the check reports them: each subject's
    CUSUM nearest its threshold, its direction, whether it alarmed since the previous check and since
    when the change began (row and time), and the newest alarms. Subjects are read from the report."""
    who, what, ways = CUSUM_WORDS[kind]
    head = f'<div class="cusums" id="{kind}-cusums"><h3>Between checks: CUSUMs of {who}</h3>'
    if not sequential or not sequential.get("subjects"):
        return head + (f'<p class="note">No CUSUM watches {who} of this model between checks (a classifier\'s labels '
                       'and categorical features have none).</p></div>')
    subjects = sequential["subjects"]
    names = list(subjects)
    ratios = [cusum_ratio(subjects[n]) for n in names]
    alarmed = [bool(subjects[n].get("alarm")) for n in names]
    fired = [n for n, a in zip(names, alarmed) if a]
    chart = charts.threshold_bars(
        f"chart-{kind}-cusums", f"CUSUMs of {who}: statistic against threshold",
        f"Each CUSUM nearest its alarm as a fraction of its threshold (1 = alarm): "
        + "; ".join(f"{n} {r:.2f}" + (" (alarmed)" if a else "") for n, r, a in zip(names, ratios, alarmed)) + ".",
        names, ratios, alarmed)
    rows = []
    for name, ratio in zip(names, ratios):
        e = subjects[name]
        alarm = ('<td class="bad">alarmed</td>' if e.get("alarm") else '<td class="ok">no</td>')
        rows.append(f'<tr data-subject="{escape(name)}"><th scope="row">{escape(name)}</th>'
                    f'<td>{escape(str(e.get("direction", "–")))}</td><td>{_num(e.get("statistic"), ".2f")}</td>'
                    f'<td>{_num(e.get("threshold"), ".2f")}</td><td>{_num(ratio if math.isfinite(ratio) else None, ".2f")}</td>'
                    f'{alarm}<td>{"–" if e.get("since_row") is None else format(e["since_row"], ",d")}</td>'
                    f'<td>{_time(e.get("since"))}</td></tr>')
    table = ('<div class="scroll"><table class="summary"><thead><tr><th scope="col">subject</th>'
             '<th scope="col">direction</th><th scope="col">statistic</th><th scope="col">threshold</th>'
             '<th scope="col">ratio</th><th scope="col">since last check</th>'
             '<th scope="col">began at row</th><th scope="col">began at</th></tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>')
    recent = list(reversed(sequential.get("alarms") or []))[:RECENT_ALARMS]
    history = ""
    if recent:
        items = "".join(
            f'<li data-row="{int(a["row"])}">row {int(a["row"]):,}: {escape(str(a["subject"]))} '
            f'{escape(str(a["direction"]))}, {a["statistic"]:.2f} &gt; {a["threshold"]:.2f}, change began at row '
            f'{int(a["since"]):,} ({_time(a.get("since_time"))})</li>' for a in recent)
        history = (f'<p class="sub">Newest alarms (rows counted from the monitor\'s start, {len(recent)} of the '
                   f'{len(sequential.get("alarms") or [])} kept):</p><ul class="alarms">{items}</ul>')
    status = (f'Alarmed since the previous check: {", ".join(fired)}.' if fired
              else "No alarm since the previous check.")
    return (head + f'<p class="sub">Page\'s cumulative sums of {escape(what)}, run over every row as it arrives '
            f'({int(sequential.get("rows") or 0):,} rows so far). A CUSUM alarms when it passes its threshold, '
            'restarts from 0, and the check that follows flags the drift; the change began where it last left 0. '
            'Each subject shows its CUSUM nearest the threshold now, or the value it alarmed at since the previous '
            f'check (ratio = statistic / threshold: 1 is the alarm). {escape(ways)} '
            f'<strong>{escape(status)}</strong></p>'
            f'<div class="charts"><figure>{chart}<figcaption>Dashed: the alarm (statistic = threshold). The '
            'thresholds are calibrated at start so that, on clean traffic, all of these together alarm in at most '
            '0.3% of 50-row intervals.</figcaption></figure></div>' + table + history + "</div>")


def _data_section(data: dict, reference: Reference, snapshot: DriftSnapshot) -> str:
    features = data["features"]
    names = [n for n, _ in reference.features if n in features]
    order = _feature_order(features, names)
    kinds = dict(reference.features)
    drifted = [n for n in order if features[n]["detected"]]
    head = (f"Data drift in {', '.join(drifted)}" if drifted else "No data drift")
    parts = [f'<section id="data"><h2>{escape(head)}: the last {data["window_size"]:,} inputs against the '
             'training data</h2>',
             _since_line("data", change_began([d.get("since") for d in (data.get("detections") or {}).values()],
                                              data.get("sequential")))]
    if data.get("reason"):
        parts.append(f'<p class="note">Not tested: {escape(data["reason"])}.</p>')
    parts.append(f'<p>One test per feature: Kolmogorov-Smirnov for numbers (distance = D, the largest gap between '
                 f'the two cumulative distributions), chi-square for grades (distance = total variation, half the '
                 f'summed differences of shares). A feature is drifted when its test rejects after the Holm '
                 f'correction at family-wise α = {data["alpha"]:g}: on unchanged traffic a check flags any '
                 f'feature with probability at most α. Distances are in [0, 1].</p>')
    parts.append(_summary_table(order, features))
    parts.append('<div class="features">')
    parts.extend(_feature_card(n, kinds[n], features[n], reference, snapshot) for n in order)
    parts.append("</div>" + _cusum_block("data", data.get("sequential")) + "</section>")
    return "".join(parts)


def _classification_section(concept: dict, reference: Reference, snapshot: DriftSnapshot) -> str:
    """A classifier's concept drift: accuracy and log loss of the labelled window against held-out,
    and where the window's losses rank among the held-out losses (monitoring/classification.py)."""
    loss = np.asarray(snapshot.predicted, dtype=np.float64)  # the window holds (correct, loss)
    loss = loss[np.isfinite(loss)]
    m = loss.size
    detected = bool(concept.get("detected"))
    tested = concept.get("p_value") is not None
    head = "Concept drift" if detected else "No concept drift"

    def share(key):
        value = concept.get(key)
        return "–" if value is None else f"{100 * value:.1f}%"

    drop, increase = concept.get("accuracy_drop"), concept.get("score")
    numbers = _numbers([
        ("test", "log loss (Mann-Whitney) and accuracy (Fisher exact), Holm"),
        ("accuracy", f"{share('accuracy')} vs {share('reference_accuracy')} held-out"),
        ("accuracy drop", "–" if drop is None else f"{100 * drop:+.1f} points"),
        ("log loss increase", "–" if increase is None else f"{100 * increase:+.1f}%"),
        ("p-values", f"loss {format_p(concept.get('loss_p_value'))}, accuracy {format_p(concept.get('accuracy_p_value'))}"),
    ], ("drifted" if detected else "no drift", detected) if tested else None)
    parts = [f'<section id="concept"><h2>{escape(head)}: the last {m:,} labelled predictions against the '
             'held-out ones</h2>', _since_line("concept", _concept_began(concept)),
             f'<article class="feature concept{" drifted" if detected else ""}" data-drifted='
             f'"{"true" if detected else "false"}"><h3>classification errors</h3>']
    if concept.get("reason"):
        parts.append(f'<p class="note">Not tested: {escape(concept["reason"])}. Send true classes to '
                     '<code>POST /feedback</code>.</p>')
    parts.append(numbers)
    parts.append('<p class="sub">Each labelled prediction\'s log loss, -log p(true class), is ranked among the '
                 'held-out losses: without concept drift the ranks are uniform. Worse predictions pile up on the '
                 'right.</p>')
    if m:
        k = PIT_BINS if m >= 100 else 5
        edges = np.linspace(0, 1, k + 1)
        density = np.histogram(reference.concept.pit(loss), edges)[0] / m * k
        half = 1.96 * k * math.sqrt((1.0 / k) * (1 - 1.0 / k) / m)
        pit = charts.pit_histogram(
            "chart-concept-pit", "Where live losses rank among held-out losses", (
                f"Histogram of the PIT values of {m:,} labelled predictions in {k} bins, density "
                + ", ".join(f"{d:.2f}" for d in density) + "; 1 everywhere means as at training."),
            edges.tolist(), density.tolist(), (max(0.0, 1 - half), 1 + half))
        parts.append(f'<div class="charts"><figure>{pit}<figcaption>Bars inside the band are as at training; '
                     f'{k} bins of {m:,} ranks.</figcaption></figure></div>')
    parts.append("</article>" + _cusum_block("concept", concept.get("sequential")) + "</section>")
    return "".join(parts)


def _concept_began(concept: dict) -> float | None:
    detection = concept.get("detection") or {}
    return change_began([detection.get("since")], concept.get("sequential"))


def _concept_section(concept: dict, reference: Reference, snapshot: DriftSnapshot) -> str:
    if concept.get("test") == "loss-accuracy":
        return _classification_section(concept, reference, snapshot)
    residual = concept.get("error") == "residual"  # a target of any sign: no % error, no log scale
    actual = np.asarray(snapshot.actual, dtype=np.float64)
    predicted = np.asarray(snapshot.predicted, dtype=np.float64)
    ok = np.isfinite(actual) & np.isfinite(predicted) & (residual or (predicted > 0))
    actual, predicted = actual[ok], predicted[ok]
    m = actual.size
    detected = bool(concept.get("detected"))
    u = reference.concept.pit(actual, predicted)[0] if m else np.empty(0)
    title = describe_concept(concept, u) if concept.get("p_value") is not None else "not tested yet"
    head = "Concept drift" if detected else "No concept drift"
    mse, ref_mse, increase = concept.get("mse"), concept.get("reference_mse"), concept.get("score")
    unit = "" if residual else "$"
    rmse_text = (f"{unit}{math.sqrt(mse):,.3g} vs {unit}{math.sqrt(ref_mse):,.3g} held-out" if residual and mse is not None
                 and ref_mse else f"${math.sqrt(mse):,.0f} vs ${math.sqrt(ref_mse):,.0f} held-out" if mse is not None
                 and ref_mse else "–")
    if residual:
        bias_text = "–" if concept.get("bias") is None else f"{concept['bias']:+.3g} (actual minus predicted)"
    else:
        bias_text = "–" if concept.get("bias_pct") is None else f"{concept['bias_pct']:+.1f}% (actual vs predicted)"
    numbers = _numbers([
        ("test", TEST_NAMES.get(concept.get("test"), str(concept.get("test")))),
        ("statistic", "–" if concept.get("statistic") is None else f"D = {concept['statistic']:.3f}"),
        ("p-value", format_p(concept.get("p_value"))),
        ("MSE increase", "–" if increase is None else f"{100 * increase:+.1f}%"),
        ("RMSE", rmse_text),
        ("bias", bias_text),
    ], ("drifted" if detected else "no drift", detected) if concept.get("p_value") is not None else None)
    parts = [f'<section id="concept"><h2>{escape(head)}: the last {m:,} labelled predictions against the '
             'held-out errors</h2>', _since_line("concept", _concept_began(concept)),
             f'<article class="feature concept{" drifted" if detected else ""}" data-drifted='
             f'"{"true" if detected else "false"}"><h3>{"errors" if residual else "price errors"}: '
             f'{escape(title)}</h3>']
    if concept.get("reason"):
        parts.append(f'<p class="note">Not tested: {escape(concept["reason"])}. Send true '
                     f'{"values" if residual else "prices"} to <code>POST /feedback</code>.</p>')
    parts.append(numbers)
    if residual:
        parts.append('<p class="sub">Each labelled prediction\'s error, actual minus predicted, is ranked among the '
                     'held-out errors of similar predictions (PIT): without concept drift the ranks are uniform '
                     'whatever the mix of inputs. Values above predictions pile up on the right, below on the '
                     'left, noisier values at both ends. Only the test decides.</p>')
    else:
        parts.append('<p class="sub">Each labelled prediction\'s error, log(actual / predicted), is ranked among the '
                     'held-out errors of predictions at a similar price (PIT): without concept drift the ranks are '
                     'uniform whatever the mix of stones. Prices above predictions pile up on the right, below on the '
                     'left, noisier prices at both ends. The MSE increase also moves when the mix of stones changes; '
                     'only the test decides.</p>')
    if m:
        k = PIT_BINS if m >= 100 else 5
        edges = np.linspace(0, 1, k + 1)
        counts = np.histogram(u, edges)[0]
        density = counts / m * k
        p = 1.0 / k
        half = 1.96 * k * math.sqrt(p * (1 - p) / m)
        pit = charts.pit_histogram(
            "chart-concept-pit", "Where live errors rank among held-out errors", (
                f"Histogram of the PIT values of {m:,} labelled predictions in {k} bins, density "
                + ", ".join(f"{d:.2f}" for d in density) + "; 1 everywhere means as at training."),
            edges.tolist(), density.tolist(), (max(0.0, 1 - half), 1 + half))
        if residual:  # the % error against a log-scale prediction axis needs positive values
            parts.append(f'<div class="charts"><figure>{pit}<figcaption>Bars inside the band are as at training; '
                         f'{k} bins of {m:,} ranks.</figcaption></figure></div>')
            parts.append("</article>" + _cusum_block("concept", concept.get("sequential")) + "</section>")
            return "".join(parts)
        err = 100.0 * (actual / predicted - 1.0)
        shown = slice(max(0, m - SCATTER_POINTS), m)  # the newest (windows are oldest first)
        xs, ys = predicted[shown], err[shown]
        band = reference.error_band
        x_lo = min(reference.predicted_range[0], float(xs.min()))
        x_hi = max(reference.predicted_range[1], float(xs.max()))
        y_lo = min(float(band["lo"].min()) if band["lo"].size else 0.0, float(np.quantile(ys, 0.01)))
        y_hi = max(float(band["hi"].max()) if band["hi"].size else 0.0, float(np.quantile(ys, 0.99)))
        pad = 0.08 * (y_hi - y_lo or 10.0)
        y_range = (max(-95.0, y_lo - pad), min(400.0, y_hi + pad))
        outside = int(np.sum((ys < y_range[0]) | (ys > y_range[1])))
        scatter = charts.error_scatter(
            "chart-concept-errors", "Price error against predicted price",
            f"{len(xs):,} live labelled predictions: error in % of the prediction against the predicted price, "
            "over the held-out errors' 10-90% band and median.",
            (x_lo * 0.95, x_hi * 1.05), y_range, band["x"].tolist(), band["lo"].tolist(), band["mid"].tolist(),
            band["hi"].tolist(), xs.tolist(), ys.tolist(), _dollars, lambda v: f"{v:+g}%" if v else "0%",
            f"predicted price ({TARGET_UNIT}, log scale)", "actual vs predicted")
        note = f"The newest {len(xs):,} of {m:,} labelled predictions" if m > len(xs) else f"All {m:,} labelled predictions"
        if outside:
            note += f"; {outside} beyond the range shown are drawn on its edge"
        parts.append(f'<div class="charts"><figure>{pit}<figcaption>Bars inside the band are as at training; '
                     f'{k} bins of {m:,} ranks.</figcaption></figure><figure>{scatter}<figcaption>{escape(note)}; '
                     f'above 0%, the stone sold for more than predicted.</figcaption></figure></div>')
    parts.append("</article>" + _cusum_block("concept", concept.get("sequential")) + "</section>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# The page


CSS = """
:root{--ink:#1b1b1b;--muted:#555;--line:#d8d8d8;--bad:#b34000;--ok:#00704f;--card:#fff;--bg:#f4f4f2}
*{box-sizing:border-box}
body{margin:0;font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
color:var(--ink);background:var(--bg)}
header,main,footer{max-width:1180px;margin:0 auto;padding:12px 16px}
h1{font-size:1.5rem;margin:.2rem 0}h2{font-size:1.2rem;margin:1.4rem 0 .5rem}h3{font-size:1.05rem;margin:0 0 .2rem}
a{color:#0060a0}code{font-size:.9em;background:#e9e9e6;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
.meta,.sub,.note,figcaption{color:var(--muted)}.sub{margin:.1rem 0 .5rem;font-size:.92rem}
.status{display:flex;flex-wrap:wrap;gap:8px;list-style:none;padding:0;margin:.6rem 0}
.status li{padding:4px 10px;border-radius:4px;font-weight:600;border:2px solid}
.bad{color:var(--bad)}.ok{color:var(--ok)}
.status .bad{background:#fbe9df}.status .ok{background:#e2f3ec}
.features{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(100%,33rem),1fr));gap:14px}
.feature{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--ok);border-radius:6px;
padding:12px 14px;min-width:0}
.feature.drifted{border-left-color:var(--bad)}
.numbers{display:flex;flex-wrap:wrap;gap:4px 18px;margin:.3rem 0 .6rem;font-size:.9rem}
.numbers div{display:flex;gap:6px}.numbers dt{color:var(--muted)}.numbers dd{margin:0;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(min(100%,24rem),1fr));gap:10px}
figure{margin:0;min-width:0}figcaption{font-size:.85rem}
svg.chart{display:block;width:100%;height:auto;max-width:480px;overflow:visible}
svg.chart text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;fill:#222}
svg.chart .label{fill:#444}svg.chart .value{font-size:10px;fill:#333}svg.chart .gap{font-weight:700;fill:#8a3300}
svg.chart .grid path{stroke:#e4e4e4;stroke-width:1}svg.chart .axis{stroke:#777;stroke-width:1;fill:none}
svg.chart .zero{stroke:#333;stroke-width:1;stroke-dasharray:2 2}
.scroll{overflow-x:auto}
table.summary{border-collapse:collapse;background:var(--card);font-size:.92rem;margin-bottom:14px}
.summary th,.summary td{border:1px solid var(--line);padding:4px 10px;text-align:right;white-space:nowrap}
.summary th[scope=row],.summary thead th{text-align:left}
pre{background:#1b1b1b;color:#f4f4f2;padding:10px;border-radius:4px;overflow-x:auto;white-space:pre-wrap}
pre code{background:none;color:inherit;padding:0}.status .wait{color:#444;background:#ececec}
.cusums{margin:.2rem 0 1rem}.cusums svg.chart{max-width:560px}.since{font-size:1rem;margin:.3rem 0 .6rem}
ul.alarms{margin:.2rem 0;padding-left:1.2rem;font-size:.9rem}
footer{font-size:.85rem;color:var(--muted)}
@media (max-width:600px){header,main,footer{padding:8px}.feature{padding:10px 8px}}
"""
CSS = "".join(line.strip() for line in CSS.strip().splitlines())
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode()).digest()).decode()
# Nothing is loaded from anywhere: no script at all, only this page's own stylesheet, images only
# as data: URLs (none today). A stray external reference would be refused by the browser.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; img-src data:; "
                           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass(frozen=True)
class Links:
    """Where the page's links point: relative unless a public URL is configured."""
    public_url: str | None = None

    @property
    def base(self) -> str:
        return (self.public_url or "").rstrip("/")

    @property
    def page(self) -> str:
        return f"{self.base}{REPORT_PATH}"

    @property
    def json(self) -> str:
        return f"{self.base}{REPORT_PATH}?format=json"


def _document(title: str, body: str, refresh: int | None = None) -> str:
    meta_refresh = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'{meta_refresh}<meta name="referrer" content="no-referrer"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>")


def render_report(report: dict, snapshot: DriftSnapshot, reference: Reference, links: Links) -> str:
    data, concept = report["data_drift"], report["concept_drift"]
    drifted = [n for n, f in data["features"].items() if f["detected"]]
    checked = report.get("checked_at") or ""
    try:
        checked_text = dt.datetime.fromisoformat(checked).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        checked_text = checked
    status = [f'<li class="bad">Data drift in {escape(", ".join(drifted))}</li>' if drifted
              else '<li class="ok">No data drift</li>',
              '<li class="bad">Concept drift</li>' if concept.get("detected") else '<li class="ok">No concept drift</li>']
    duration = report.get("duration_seconds")
    body = (
        '<header><h1>Drift report</h1>'
        f'<p class="meta">Model <code>{escape(str(report.get("model_version", "")))}</code> · checked '
        f'<time datetime="{escape(checked)}">{escape(checked_text)}</time>'
        + (f" in {1000 * duration:.0f} ms" if isinstance(duration, (int, float)) else "")
        + f' · {data["window_size"]:,} inputs, {concept.get("labelled_size", 0):,} labelled predictions</p>'
        f'<ul class="status">{"".join(status)}</ul>'
        f'<nav><a href="#data">Data drift</a> · <a href="#concept">Concept drift</a> · '
        f'<a href="{escape(links.json)}">These numbers as JSON</a></nav>'
        '<p class="sub">Blue: the reference (training data, held-out errors). Orange: live traffic. '
        'Reload for the latest check.</p></header><main>'
        + _data_section(data, reference, snapshot) + _concept_section(concept, reference, snapshot)
        + "</main>"
    )
    title = f"Drift report: {'data drift in ' + ', '.join(drifted) if drifted else 'no data drift'}, " \
            f"{'concept drift' if concept.get('detected') else 'no concept drift'}"
    return _document(title, body + "<footer>" + FOOTER_SLOT + "</footer>")


def render_waiting(links: Links, check_interval: float, token_required: bool, host: str | None) -> str:
    """The page before the first check: what it will show, and how to run a check now."""
    base = links.base or (f"http://{host}" if host else "http://localhost:5000")
    auth = ' -H "Authorization: Bearer $MONITOR_TOKEN"' if token_required else ""
    when = (f"Checks run every {check_interval:g} s; the first is due within {check_interval:g} s of the "
            "monitor's start, and this page reloads itself then." if check_interval > 0 else
            "Scheduled checks are off (<code>--check-interval 0</code>): checks run only when asked.")
    body = ('<header><h1>Drift report</h1><ul class="status"><li class="wait">No drift check has run yet</li></ul>'
            '</header><main><section id="waiting"><h2>No drift check has run yet</h2>'
            f"<p>{when}</p><p>Run one now, then reload this page:</p>"
            f"<pre><code>curl -X POST{escape(auth)} {escape(base)}/drift/check</code></pre>"
            "<p>The report then shows, for each input feature, the training data against the recent "
            "inputs, and the labelled predictions' errors against the held-out errors.</p>"
            f'<p><a href="{escape(links.json)}">The same state as JSON</a></p></section></main>')
    refresh = int(min(max(check_interval, 5), 600)) if check_interval > 0 else None
    return _document("Drift report: no check yet", body, refresh)


@dataclass
class RenderedPage:
    html: bytes
    gzipped: bytes
    render_ms: float  # what rendering this check's page took (0 for the waiting page)
    render_cpu_ms: float  # of which CPU time of the rendering thread
    checked_at: str | None


class ReportPage:
    """The latest check's page, rendered at most once per check."""

    def __init__(self, reference: Reference, *, public_url: str | None = None, check_interval: float = 60.0,
                 token_required: bool = False):
        self.reference = reference
        self.links = Links(public_url)
        self.check_interval = check_interval
        self.token_required = token_required
        self._latest: tuple[int, dict, DriftSnapshot] | None = None
        self._seq = 0
        self._cached: tuple[int, RenderedPage] | None = None
        self._render_lock = threading.Lock()
        self.renders = 0  # how many times a check's page was rendered (tests and the bench read it)

    def publish(self, report: dict, snapshot: DriftSnapshot) -> None:
        """A check finished: keep what it scored (until the next check: one copy of the windows).
        Costs nothing until someone views the page."""
        self._seq += 1  # publish is called under the monitor's check lock: one writer
        self._latest = (self._seq, report, snapshot)

    def response(self, host: str | None = None, accept_encoding: str = "") -> tuple[bytes, dict[str, str]]:
        """The page's bytes (gzipped when the client accepts it) and its response headers, except
        Content-Type and Content-Length. `host`: the request's Host, for the waiting page's example."""
        page = self.page(host)
        headers = {"Cache-Control": "no-cache", "Vary": "Accept-Encoding", "X-Content-Type-Options": "nosniff",
                   "Content-Security-Policy": CONTENT_SECURITY_POLICY, "Referrer-Policy": "no-referrer",
                   # what drawing this check's page took: wall time, and this thread's CPU time (the cost
                   # on a busy machine, where wall time also counts waiting for a core)
                   "Server-Timing": f'render;dur={page.render_ms:.1f};desc="once per check", '
                                    f'render-cpu;dur={page.render_cpu_ms:.1f}'}
        if accepts_gzip(accept_encoding):
            headers["Content-Encoding"] = "gzip"
            return page.gzipped, headers
        return page.html, headers

    def page(self, host: str | None = None) -> RenderedPage:
        latest = self._latest
        if latest is None:
            html = render_waiting(self.links, self.check_interval, self.token_required, host).encode()
            return RenderedPage(html, gzip.compress(html, 6, mtime=0), 0.0, 0.0, None)
        cached = self._cached
        if cached is not None and cached[0] == latest[0]:
            return cached[1]
        with self._render_lock:  # the first viewers after a check wait for one render
            latest, cached = self._latest, self._cached
            if cached is not None and cached[0] == latest[0]:
                return cached[1]
            seq, report, snapshot = latest
            started, started_cpu = time.perf_counter(), time.thread_time()
            text = render_report(report, snapshot, self.reference, self.links)
            html = text.replace(FOOTER_SLOT, _footer(1000 * (time.perf_counter() - started), len(text)), 1).encode()
            zipped = gzip.compress(html, 6, mtime=0)
            page = RenderedPage(html, zipped, 1000 * (time.perf_counter() - started),
                                1000 * (time.thread_time() - started_cpu), report.get("checked_at"))
            self._cached = (seq, page)
            self.renders += 1
            return page


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header takes gzip (and does not refuse it with q=0)."""
    for item in accept_encoding.lower().split(","):
        coding, *params = [p.strip() for p in item.split(";")]
        if coding in ("gzip", "*"):
            return not any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params)
    return False


def _footer(render_ms: float, size: int) -> str:
    return (f"Drawn by the monitor from this check's windows in {render_ms:.0f} ms, {size / 1024:.0f} KB; "
            "served from memory until the next check. Charts are inline SVG: the page loads nothing else.")
