"""Drift scenarios: what production traffic might turn into, in one place.

evaluate_drift.py measures the detectors on them and a traffic simulator can replay them. A
scenario changes rows of held-out traffic (columns FEATURES + "price"):

  kind "none"     clean traffic, nothing changes
  kind "data"     the inputs change (the mix of stones, or a feature's values); the relation between
                  inputs and price does not, so only data drift should fire
  kind "concept"  only the prices (labels) change for the same inputs; only concept drift should fire

A mix change is a sampling weight per row (`weight`): `apply` resamples rows by it (with
replacement, same length) and `sample` draws n rows by it without replacement when the pool is
large enough, so a stone is not served twice. A value change is a `transform` of the rows.

    rows = heldout_rows()
    drifted = SCENARIOS["large_stones"].apply(rows, np.random.default_rng(0))
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from monitoring import diamonds

COLUMNS = diamonds.FEATURES + [diamonds.TARGET]

# Standard deviations over the whole diamonds table (53,940 rows); fixed so that a shift is the
# same whatever batch it is applied to (tests/test_drift.py checks them against the data).
DEPTH_SD = 1.4326
TABLE_SD = 2.2345


def heldout_rows(data_dir: Path = diamonds.DATA_DIR) -> pd.DataFrame:
    """The held-out split exactly as train.py makes it (test_size=0.2, random_state=42): FEATURES
    then price, index reset. Grades are seaborn's categoricals."""
    _, X_test, _, y_test = diamonds.split(diamonds.load_diamonds(data_dir))
    return pd.concat([X_test, y_test], axis=1).reset_index(drop=True)[COLUMNS]


Weight = Callable[[pd.DataFrame], np.ndarray]
Transform = Callable[[pd.DataFrame, np.random.Generator], pd.DataFrame]


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # "none" | "data" | "concept"
    description: str
    weight: Weight | None = None  # mix change: relative chance of each row being served
    transform: Transform | None = None  # value change: returns changed copies of the rows

    def apply(self, rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        """Rows of this scenario's traffic, as many as given: resampled with replacement by the
        scenario's weights (if any), then transformed (if at all). Index reset."""
        return self.sample(rows, len(rows), rng, replace=True)

    def sample(self, rows: pd.DataFrame, n: int, rng: np.random.Generator,
               replace: bool | None = None) -> pd.DataFrame:
        """n rows of this scenario's traffic drawn from `rows`. replace=None draws without
        replacement when n is at most half the pool (so the weighted mix is barely diluted),
        with replacement otherwise."""
        if replace is None:
            replace = n > len(rows) // 2
        if self.weight is None:
            idx = rng.choice(len(rows), size=n, replace=replace)
        else:
            w = np.asarray(self.weight(rows), dtype=np.float64)
            idx = rng.choice(len(rows), size=n, replace=replace, p=w / w.sum())
        out = rows.iloc[idx].reset_index(drop=True)
        if self.transform is not None:
            out = self.transform(out.copy(), rng)
        return out


def _grade_weight(column: str, weights: dict[str, float]) -> Weight:
    def weight(rows: pd.DataFrame) -> np.ndarray:
        return rows[column].astype(str).map(lambda g: weights.get(g, 1.0)).to_numpy(dtype=np.float64)

    return weight


def _shift(column: str, amount: float) -> Transform:
    def transform(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        rows[column] = rows[column].astype(np.float64) + amount
        return rows

    return transform


def _price_factor(factor: float, where: Callable[[pd.DataFrame], np.ndarray] | None = None) -> Transform:
    def transform(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        price = rows["price"].to_numpy(dtype=np.float64)
        mask = np.ones(len(rows), dtype=bool) if where is None else np.asarray(where(rows), dtype=bool)
        rows["price"] = np.where(mask, price * factor, price)
        return rows

    return transform


def _price_noise(sigma: float) -> Transform:
    def transform(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        rows["price"] = rows["price"].to_numpy(dtype=np.float64) * np.exp(rng.normal(0.0, sigma, len(rows)))
        return rows

    return transform


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("clean", "none", "held-out traffic as it is"),
    # data drift: the mix of stones
    Scenario("large_stones", "data", "stones served in proportion to their carat (mean carat 0.80 -> 1.0-1.08)",
             weight=lambda rows: rows["carat"].to_numpy(dtype=np.float64)),
    Scenario("small_stones", "data", "stones served in inverse proportion to their carat",
             weight=lambda rows: 1.0 / rows["carat"].to_numpy(dtype=np.float64)),
    Scenario("cut_mix", "data", "worse cuts more common: Fair and Good 3x, Very Good 1.5x",
             weight=_grade_weight("cut", {"Fair": 3.0, "Good": 3.0, "Very Good": 1.5})),
    Scenario("color_mix", "data", "worse colours more common: J and I 3x, H 1.5x",
             weight=_grade_weight("color", {"J": 3.0, "I": 3.0, "H": 1.5})),
    # data drift: one feature's values
    Scenario("depth_shift", "data", f"depth + 0.5 sd (+{0.5 * DEPTH_SD:.2f})",
             transform=_shift("depth", 0.5 * DEPTH_SD)),
    Scenario("table_shift", "data", f"table - 0.5 sd (-{0.5 * TABLE_SD:.2f})",
             transform=_shift("table", -0.5 * TABLE_SD)),
    # concept drift: prices only
    Scenario("price_up_10", "concept", "prices 10% higher for the same stones", transform=_price_factor(1.10)),
    Scenario("price_up_20", "concept", "prices 20% higher for the same stones", transform=_price_factor(1.20)),
    Scenario("price_up_25", "concept", "prices 25% higher for the same stones", transform=_price_factor(1.25)),
    Scenario("price_down_20", "concept", "prices 20% lower for the same stones", transform=_price_factor(0.80)),
    Scenario("ideal_up_25", "concept", "Ideal cuts (40% of stones) 25% dearer, others unchanged",
             transform=_price_factor(1.25, where=lambda rows: rows["cut"].astype(str).to_numpy() == "Ideal")),
    Scenario("noisy_prices", "concept", "prices scattered by a factor exp(N(0, 0.15)), no bias",
             transform=_price_noise(0.15)),
]}
