"""Inline SVG charts for the drift report, written by hand: no plotting library, no script, no font.

Why not matplotlib: importing pyplot takes ~1 s and 27 MiB in the serving process, and one small
histogram takes 100-160 ms to save as an SVG of ~17 KB (glyphs drawn as paths), measured here with
the pinned versions. These charts are a few KB of text each, take well under a millisecond each to
write, use the page's own font (so they stay readable when scaled), and scale to any width through
their viewBox. What they need is little: axes with round ticks, bars, step lines, points, a legend.

Every function returns one `<svg>` element as a string, with a <title> and <desc> for screen readers.
Colours are Okabe-Ito (safe for the common colour-vision deficiencies), and reference and live
series also differ in shape (filled bars against a line, solid against dashed), so the charts read
in greyscale too. All text is escaped here; callers pass plain strings.
"""
from __future__ import annotations

import math
from html import escape
from typing import Callable, Sequence

# Okabe-Ito
BLUE = "#0072B2"  # the reference: training data, held-out errors
ORANGE = "#E69F00"  # the live window
VERMILLION = "#D55E00"  # drift: the KS gap
GREY = "#6b6b6b"

# A chart is drawn at about its viewBox size on a phone (text ~11 px there) and at most 1.4x on a
# wide screen (the page's CSS caps its width).
WIDTH, HEIGHT = 340, 220
MARGIN = {"top": 28, "right": 10, "bottom": 40, "left": 44}

Fmt = Callable[[float], str]


def _c(v: float) -> str:
    """A coordinate: one decimal, no trailing .0 (keeps the markup small)."""
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


class Frame:
    """Maps data coordinates into the plotting area of a WIDTH x HEIGHT viewBox."""

    def __init__(self, x_range: tuple[float, float], y_range: tuple[float, float], *, x_log: bool = False,
                 height: int = HEIGHT, margin: dict | None = None):
        self.m = {**MARGIN, **(margin or {})}
        self.width, self.height = WIDTH, height
        self.x_log = x_log
        x0, x1 = x_range
        if x_log:
            x0, x1 = math.log10(x0), math.log10(x1)
        self.x0, self.x1 = (x0, x1) if x1 > x0 else (x0 - 0.5, x0 + 0.5)
        y0, y1 = y_range
        self.y0, self.y1 = (y0, y1) if y1 > y0 else (y0, y0 + 1.0)
        self.left, self.right = self.m["left"], self.width - self.m["right"]
        self.top, self.bottom = self.m["top"], self.height - self.m["bottom"]

    def x(self, v: float) -> float:
        if self.x_log:
            v = math.log10(max(v, 1e-300))
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, v: float) -> float:
        return self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)

    def clamp_y(self, v: float) -> float:
        return min(max(v, self.y0), self.y1)


def ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] at a 1-2-2.5-5 step, about n of them."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else []
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first = math.ceil(lo / step - 1e-9) * step
    out = []
    v = first
    while v <= hi + step * 1e-9 and len(out) < 50:
        out.append(0.0 if abs(v) < step * 1e-9 else round(v, 12))
        v = first + len(out) * step
    return out


def log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks inside [lo, hi] (lo > 0); 1-3 or powers of ten when those are too many."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1, 2, 5), (1, 3), (1,)):
        out = [m * 10.0 ** k for k in range(k0, k1 + 1) for m in mantissas if lo <= m * 10.0 ** k <= hi]
        if len(out) <= 7:
            return out
    return out


def _svg(chart_id: str, height: int, title: str, desc: str, body: list[str]) -> str:
    return (f'<svg class="chart" id="{escape(chart_id)}" viewBox="0 0 {WIDTH} {height}" role="img" '
            f'aria-labelledby="{escape(chart_id)}-t {escape(chart_id)}-d">'
            f'<title id="{escape(chart_id)}-t">{escape(title)}</title>'
            f'<desc id="{escape(chart_id)}-d">{escape(desc)}</desc>' + "".join(body) + "</svg>")


def _axes(f: Frame, xticks: Sequence[float], yticks: Sequence[float], xfmt: Fmt, yfmt: Fmt,
          xlabel: str, ylabel: str) -> list[str]:
    out = ['<g class="grid">']
    for v in yticks:
        out.append(f'<path d="M{_c(f.left)} {_c(f.y(v))}H{_c(f.right)}"/>')
    out.append("</g>")
    out.append(f'<path class="axis" d="M{_c(f.left)} {_c(f.top)}V{_c(f.bottom)}H{_c(f.right)}"/>')
    out.append('<g class="ticks">')
    for v in yticks:
        out.append(f'<text x="{_c(f.left - 4)}" y="{_c(f.y(v) + 4)}" text-anchor="end">{escape(yfmt(v))}</text>')
    for v in xticks:
        x = f.x(v)
        out.append(f'<path class="axis" d="M{_c(x)} {_c(f.bottom)}v4"/>'
                   f'<text x="{_c(x)}" y="{_c(f.bottom + 16)}" text-anchor="middle">{escape(xfmt(v))}</text>')
    out.append("</g>")
    out.append(f'<text class="label" x="{_c((f.left + f.right) / 2)}" y="{_c(f.height - 6)}" '
               f'text-anchor="middle">{escape(xlabel)}</text>')
    out.append(f'<text class="label" transform="translate(11 {_c((f.top + f.bottom) / 2)}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    return out


def legend(items: Sequence[tuple[str, str, str]], x: float = MARGIN["left"], y: float = 14) -> str:
    """items: (kind, colour, label), kind one of box (translucent), solid, line, dash, dot, band.
    Laid out left to right."""
    out = ['<g class="legend">']
    for kind, colour, label in items:
        if kind == "box":
            out.append(f'<rect x="{_c(x)}" y="{_c(y - 8)}" width="14" height="10" fill="{colour}" fill-opacity="0.5" '
                       f'stroke="{colour}"/>')
        elif kind == "solid":
            out.append(f'<rect x="{_c(x)}" y="{_c(y - 8)}" width="14" height="10" fill="{colour}"/>')
        elif kind == "band":
            out.append(f'<rect x="{_c(x)}" y="{_c(y - 8)}" width="14" height="10" fill="{colour}" fill-opacity="0.18"/>')
        elif kind == "dot":
            out.append(f'<circle cx="{_c(x + 7)}" cy="{_c(y - 3)}" r="3" fill="{colour}" stroke="#000" '
                       'stroke-width="0.5"/>')
        else:
            dash = ' stroke-dasharray="5 3"' if kind == "dash" else ""
            out.append(f'<path d="M{_c(x)} {_c(y - 3)}h14" stroke="{colour}" stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{_c(x + 18)}" y="{_c(y + 1)}">{escape(label)}</text>')
        x += 18 + 6.2 * len(label) + 14  # ~6.2 units per character at the legend's 11 px
    out.append("</g>")
    return "".join(out)


def _step_path(f: Frame, edges: Sequence[float], heights: Sequence[float]) -> str:
    """The outline of a histogram: up and across each bin, from the baseline to the baseline."""
    parts = [f"M{_c(f.x(edges[0]))} {_c(f.y(0))}"]
    for i, h in enumerate(heights):
        parts.append(f"V{_c(f.y(h))}H{_c(f.x(edges[i + 1]))}")
    parts.append(f"V{_c(f.y(0))}")
    return "".join(parts)


def histogram(chart_id: str, title: str, desc: str, edges: Sequence[float], reference: Sequence[float],
              live: Sequence[float], xfmt: Fmt, xlabel: str, ylabel: str = "% of rows per bin",
              labels: tuple[str, str] = ("training", "live")) -> str:
    """Two histograms on the same bins, as % of their rows: the reference as filled blue bars, the
    live window as an orange outline drawn over them."""
    top = max(max(reference, default=0.0), max(live, default=0.0)) * 1.08 or 1.0
    f = Frame((edges[0], edges[-1]), (0.0, top))
    yt = ticks(0.0, top, 4)
    body = _axes(f, ticks(edges[0], edges[-1], 5), yt, xfmt, lambda v: f"{v:g}%", xlabel, ylabel)
    bars = ['<g fill="%s" fill-opacity="0.45">' % BLUE]
    for i, h in enumerate(reference):
        if h > 0:
            x0, x1 = f.x(edges[i]), f.x(edges[i + 1])
            bars.append(f'<rect x="{_c(x0)}" y="{_c(f.y(h))}" width="{_c(max(x1 - x0, 0.5))}" '
                        f'height="{_c(f.y(0) - f.y(h))}"/>')
    bars.append("</g>")
    body += bars
    body.append(f'<path d="{_step_path(f, edges, live)}" fill="none" stroke="{ORANGE}" stroke-width="2.5" '
                'stroke-linejoin="round"/>')
    body.append(legend([("box", BLUE, labels[0]), ("line", ORANGE, labels[1])]))
    return _svg(chart_id, HEIGHT, title, desc, body)


def _ecdf_path(f: Frame, xs: Sequence[float], cdf: Sequence[float], start: float = 0.0) -> str:
    parts = [f"M{_c(f.left)} {_c(f.y(start))}"]
    for x, p in zip(xs, cdf):
        parts.append(f"H{_c(f.x(x))}V{_c(f.y(p))}")
    parts.append(f"H{_c(f.right)}")
    return "".join(parts)


def ecdf(chart_id: str, title: str, desc: str, x_range: tuple[float, float], xs: Sequence[float],
         reference: Sequence[float], live: Sequence[float], gap: tuple[float, float, float] | None,
         xfmt: Fmt, xlabel: str, labels: tuple[str, str] = ("training", "live"),
         start: tuple[float, float] = (0.0, 0.0)) -> str:
    """Both cumulative distributions as step lines (reference solid blue, live dashed orange), each
    from its level `start` at the left edge (the share of values below the range shown); `gap` =
    (x, F_reference(x), F_live(x)) marks the largest vertical distance, the KS statistic D."""
    f = Frame(x_range, (0.0, 1.0))
    body = _axes(f, ticks(x_range[0], x_range[1], 5), [0, 0.25, 0.5, 0.75, 1.0], xfmt,
                 lambda v: f"{100 * v:g}%", xlabel, "share of rows at or below")
    body.append(f'<path d="{_ecdf_path(f, xs, reference, start[0])}" fill="none" stroke="{BLUE}" stroke-width="2"/>')
    body.append(f'<path d="{_ecdf_path(f, xs, live, start[1])}" fill="none" stroke="{ORANGE}" stroke-width="2.5" '
                'stroke-dasharray="6 3"/>')
    items = [("line", BLUE, labels[0]), ("dash", ORANGE, labels[1])]
    if gap is not None:
        x, p_ref, p_live = gap
        gx = min(max(f.x(x), f.left), f.right)
        lo, hi = sorted((p_ref, p_live))
        body.append(f'<path d="M{_c(gx)} {_c(f.y(lo))}V{_c(f.y(hi))}" stroke="{VERMILLION}" stroke-width="3"/>')
        label = f"D = {abs(p_ref - p_live):.3f}"
        anchor, dx = ("start", 5) if gx < (f.left + f.right) / 2 else ("end", -5)
        body.append(f'<text class="gap" x="{_c(gx + dx)}" y="{_c(f.y((lo + hi) / 2) + 4)}" '
                    f'text-anchor="{anchor}">{escape(label)}</text>')
        items.append(("line", VERMILLION, "largest gap"))
    body.append(legend(items))
    return _svg(chart_id, HEIGHT, title, desc, body)


def paired_bars(chart_id: str, title: str, desc: str, categories: Sequence[str], reference: Sequence[float],
                live: Sequence[float], labels: tuple[str, str] = ("training", "live")) -> str:
    """Horizontal bars, one pair per category: share of the reference (blue, top) and of the live
    window (orange, below), each labelled with its %."""
    row, bar = 26, 10
    height = MARGIN["top"] + row * len(categories) + 30
    left = 12 + min(max((len(c) for c in categories), default=4), 14) * 6.6
    f = Frame((0.0, max(max(reference, default=0), max(live, default=0)) * 1.22 or 1.0), (0.0, 1.0),
              height=height, margin={"left": left, "bottom": 30, "right": 8})
    body = []
    xt = ticks(0.0, f.x1 / 1.1, 4)
    body.append('<g class="grid">' + "".join(f'<path d="M{_c(f.x(v))} {_c(f.top)}V{_c(f.bottom)}"/>' for v in xt)
                + "</g>")
    body.append('<g class="ticks">' + "".join(
        f'<text x="{_c(f.x(v))}" y="{_c(f.bottom + 14)}" text-anchor="middle">{v:g}%</text>' for v in xt) + "</g>")
    body.append(f'<text class="label" x="{_c((f.left + f.right) / 2)}" y="{_c(height - 4)}" '
                'text-anchor="middle">% of rows</text>')
    for i, (name, r, v) in enumerate(zip(categories, reference, live)):
        y = f.top + i * row + 2
        body.append(f'<text x="{_c(f.left - 6)}" y="{_c(y + bar + 3)}" text-anchor="end">{escape(name)}</text>')
        body.append(f'<rect x="{_c(f.left)}" y="{_c(y)}" width="{_c(max(f.x(r) - f.left, 0))}" height="{bar}" '
                    f'fill="{BLUE}" fill-opacity="0.5" stroke="{BLUE}" stroke-width="0.6"/>')
        body.append(f'<rect x="{_c(f.left)}" y="{_c(y + bar + 1)}" width="{_c(max(f.x(v) - f.left, 0))}" '
                    f'height="{bar}" fill="{ORANGE}"/>')
        body.append(f'<text class="value" x="{_c(f.x(r) + 3)}" y="{_c(y + bar - 1)}">{r:.1f}%</text>')
        body.append(f'<text class="value" x="{_c(f.x(v) + 3)}" y="{_c(y + 2 * bar)}">{v:.1f}%</text>')
    body.append(f'<path class="axis" d="M{_c(f.left)} {_c(f.top - 2)}V{_c(f.bottom)}"/>')
    body.append(legend([("box", BLUE, labels[0]), ("solid", ORANGE, labels[1])], x=f.left))
    return _svg(chart_id, height, title, desc, body)


def threshold_bars(chart_id: str, title: str, desc: str, names: Sequence[str], ratios: Sequence[float],
                   alarmed: Sequence[bool], xlabel: str = "statistic / threshold") -> str:
    """Horizontal bars, one per CUSUM: its statistic as a fraction of its threshold, against a dashed
    line at 1 (the alarm). A bar that alarmed is vermillion and hatched by its outline (dark, thick),
    the others orange, so that the two differ in greyscale too; each bar is labelled with its value."""
    row, bar = 22, 12
    height = MARGIN["top"] + row * len(names) + 30
    left = 12 + min(max((len(n) for n in names), default=4), 18) * 6.2
    top = max(max((r for r in ratios if math.isfinite(r)), default=0.0), 1.0) * 1.18
    f = Frame((0.0, top), (0.0, 1.0), height=height, margin={"left": left, "bottom": 30, "right": 8})
    body = []
    xt = ticks(0.0, top / 1.1, 4)
    body.append('<g class="grid">' + "".join(f'<path d="M{_c(f.x(v))} {_c(f.top)}V{_c(f.bottom)}"/>' for v in xt)
                + "</g>")
    body.append('<g class="ticks">' + "".join(
        f'<text x="{_c(f.x(v))}" y="{_c(f.bottom + 14)}" text-anchor="middle">{v:g}</text>' for v in xt) + "</g>")
    body.append(f'<text class="label" x="{_c((f.left + f.right) / 2)}" y="{_c(height - 4)}" '
                f'text-anchor="middle">{escape(xlabel)}</text>')
    for i, (name, ratio, fired) in enumerate(zip(names, ratios, alarmed)):
        y = f.top + i * row + 4
        body.append(f'<text x="{_c(f.left - 6)}" y="{_c(y + bar - 2)}" text-anchor="end">{escape(name)}</text>')
        if not math.isfinite(ratio):
            body.append(f'<text class="value" x="{_c(f.left + 3)}" y="{_c(y + bar - 2)}">–</text>')
            continue
        width = max(f.x(min(ratio, top)) - f.left, 0)
        style = (f'fill="{VERMILLION}" stroke="#000" stroke-width="1.5"' if fired else f'fill="{ORANGE}"')
        body.append(f'<rect x="{_c(f.left)}" y="{_c(y)}" width="{_c(width)}" height="{bar}" {style}/>')
        body.append(f'<text class="value" x="{_c(f.left + width + 3)}" y="{_c(y + bar - 2)}">{ratio:.2f}</text>')
    body.append(f'<path d="M{_c(f.x(1.0))} {_c(f.top - 4)}V{_c(f.bottom)}" stroke="#222" stroke-width="2" '
                'stroke-dasharray="5 3"/>')
    body.append(f'<path class="axis" d="M{_c(f.left)} {_c(f.top - 2)}V{_c(f.bottom)}"/>')
    body.append(legend([("solid", ORANGE, "now"), ("solid", VERMILLION, "alarmed"), ("dash", "#222", "alarm at 1")],
                       x=f.left))
    return _svg(chart_id, height, title, desc, body)


def pit_histogram(chart_id: str, title: str, desc: str, edges: Sequence[float], density: Sequence[float],
                  band: tuple[float, float]) -> str:
    """Live PIT values as bars of density against Uniform(0, 1): the dashed line at 1 is "as at
    training", the shaded band the range each bar keeps to 95% of the time when nothing changed."""
    top = max(max(density, default=1.0), band[1], 1.0) * 1.12
    f = Frame((0.0, 1.0), (0.0, top))
    body = _axes(f, [0, 0.25, 0.5, 0.75, 1.0], ticks(0.0, top, 4), lambda v: f"{v:g}",
                 lambda v: f"{v:g}", "rank among held-out errors at similar price (PIT)", "density")
    lo, hi = band
    body.append(f'<rect x="{_c(f.left)}" y="{_c(f.y(hi))}" width="{_c(f.right - f.left)}" '
                f'height="{_c(f.y(lo) - f.y(hi))}" fill="{BLUE}" fill-opacity="0.18"/>')
    body.append(f'<g fill="{ORANGE}" fill-opacity="0.85" stroke="#fff" stroke-width="1">')
    for i, d in enumerate(density):
        x0, x1 = f.x(edges[i]), f.x(edges[i + 1])
        body.append(f'<rect x="{_c(x0)}" y="{_c(f.y(d))}" width="{_c(x1 - x0)}" height="{_c(f.y(0) - f.y(d))}"/>')
    body.append("</g>")
    body.append(f'<path d="M{_c(f.left)} {_c(f.y(1))}H{_c(f.right)}" stroke="{BLUE}" stroke-width="2" '
                'stroke-dasharray="6 3"/>')
    body.append(legend([("solid", ORANGE, "live"), ("dash", BLUE, "as at training"), ("band", BLUE, "95% range")]))
    return _svg(chart_id, HEIGHT, title, desc, body)


def error_scatter(chart_id: str, title: str, desc: str, x_range: tuple[float, float],
                  y_range: tuple[float, float], band_x: Sequence[float], band_lo: Sequence[float],
                  band_mid: Sequence[float], band_hi: Sequence[float], xs: Sequence[float], ys: Sequence[float],
                  xfmt: Fmt, yfmt: Fmt, xlabel: str, ylabel: str) -> str:
    """Live points (orange) over the reference's 10-90% band (shaded blue) and its median (blue
    line), on a log x axis. Points beyond the y range are drawn on its edge."""
    f = Frame(x_range, y_range, x_log=True, margin={"left": 54})
    body = _axes(f, log_ticks(*x_range), ticks(*y_range, 5), xfmt, yfmt, xlabel, ylabel)
    if len(band_x):
        upper = " ".join(f"{_c(f.x(x))},{_c(f.y(f.clamp_y(v)))}" for x, v in zip(band_x, band_hi))
        lower = " ".join(f"{_c(f.x(x))},{_c(f.y(f.clamp_y(v)))}" for x, v in zip(reversed(band_x), reversed(band_lo)))
        body.append(f'<polygon points="{upper} {lower}" fill="{BLUE}" fill-opacity="0.18"/>')
        mid = " ".join(f"{_c(f.x(x))},{_c(f.y(f.clamp_y(v)))}" for x, v in zip(band_x, band_mid))
        body.append(f'<polyline points="{mid}" fill="none" stroke="{BLUE}" stroke-width="2"/>')
    if f.y0 < 0 < f.y1:
        body.append(f'<path class="zero" d="M{_c(f.left)} {_c(f.y(0))}H{_c(f.right)}"/>')
    body.append(f'<g fill="{ORANGE}" fill-opacity="0.7" stroke="#000" stroke-width="0.4">')
    for x, y in zip(xs, ys):
        body.append(f'<circle cx="{_c(f.x(x))}" cy="{_c(f.y(f.clamp_y(y)))}" r="2.2"/>')
    body.append("</g>")
    body.append(legend([("dot", ORANGE, "live"), ("line", BLUE, "held-out median"), ("band", BLUE, "10-90%")],
                       x=f.left))
    return _svg(chart_id, HEIGHT, title, desc, body)
