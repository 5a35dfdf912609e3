"""Write data/friedman.csv, the second regression data set the monitor ships (a target that takes
negative values, a categorical column with dozens of categories, an integer column with few values).

Generated once and committed, so that training and tests need no download; rerunning writes the
same bytes (seeded). scikit-learn's make_friedman1 (Friedman 1991): y = 10 sin(pi x1 x2) +
20 (x3 - 0.5)^2 + 10 x4 + 5 x5 + noise, x1..x10 uniform on [0, 1] (x6..x10 unused); here centred
on its mean so that about half the targets are negative, plus `site` (30 categories, each shifting
y by a fixed offset) and `level` (integers 0-4, adding 0.5 per level).

    python -m tools.make_data
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import make_friedman1

ROWS = 20_000  # a held-out fifth of 4,000: two halves of 2,000, as evaluate_drift's protocol streams
SEED = 7
OUT = Path(__file__).resolve().parent.parent / "data" / "friedman.csv"


def friedman_frame(rows: int = ROWS, seed: int = SEED) -> pd.DataFrame:
    X, y = make_friedman1(n_samples=rows, n_features=10, noise=1.0, random_state=seed)
    rng = np.random.default_rng(seed)
    sites = np.array([f"s{i:02d}" for i in range(30)])
    site_offset = dict(zip(sites, rng.normal(0.0, 1.5, size=sites.size)))
    site = rng.choice(sites, size=rows)
    level = rng.integers(0, 5, size=rows)
    y = y + np.array([site_offset[s] for s in site]) + 0.5 * level
    frame = pd.DataFrame(np.round(X, 4), columns=[f"x{i}" for i in range(1, 11)])
    frame.insert(0, "site", site)
    frame.insert(1, "level", level)
    frame["y"] = np.round(y - y.mean(), 4)
    return frame


def main() -> None:
    frame = friedman_frame()
    frame.to_csv(OUT, index=False)
    print(f"wrote {OUT} ({len(frame):,} rows, {int((frame.y < 0).sum()):,} negative targets)")


if __name__ == "__main__":
    main()
