"""Drift scenarios: what production traffic might turn into, in one place.

evaluate_drift.py measures the detectors on them and a traffic simulator can replay them. A
scenario changes rows of held-out traffic (columns FEATURES + "price"):

  kind "none"     clean traffic, nothing changes
  kind "data"     the inputs change (the mix of stones, or a feature's values); the relation between
                  inputs and price does not, so only data drift should fire
  kind "concept"  only the prices (labels) change for the same inputs; only concept drift should fire

A scenario with a `ramp` of n rows switches on gradually: row i of its traffic is drawn from the
drifted traffic with probability min(1, (i + 1) / n), else from the clean rows.

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
    ramp: int = 0  # rows over which the drifted share rises linearly from 0 to 1 (0: at once)

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
        if self.ramp > 0:
            # the drifted share rises linearly: the rest of each row's chance goes to a clean row
            clean = rows.iloc[rng.choice(len(rows), size=n, replace=replace)].reset_index(drop=True)
            drifted = rng.random(n) < np.minimum(1.0, (np.arange(n) + 1.0) / self.ramp)
            out = pd.concat([out[drifted], clean[~drifted]]).sort_index().reset_index(drop=True)
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


def _scale(column: str, factor: float, decimals: int) -> Transform:
    """A measurement off by `factor`, reported to `decimals` places as before (carat to 0.01)."""
    def transform(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        rows[column] = np.round(rows[column].astype(np.float64) * factor, decimals)
        return rows

    return transform


def _couple_grade_to(column: str, by: str, noise: float) -> Transform:
    """Joint drift with unchanged marginals: the rows' own `column` grades are dealt out again, the
    best to the rows largest in `by` (ranked with Gaussian noise of `noise` x the rows' count), so
    each feature's distribution stays as it was while better grades move to larger stones."""
    def transform(rows: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        n = len(rows)
        key = rows[by].rank(method="first").to_numpy() + rng.normal(0.0, noise * n, n)
        grades = rows[column].to_numpy()
        codes = rows[column].cat.codes.to_numpy() if isinstance(rows[column].dtype, pd.CategoricalDtype) \
            else pd.Categorical(grades).codes
        # seaborn lists grades best first: code 0 is the best grade; the best go to the largest keys
        dealt = np.empty(n, dtype=object)
        dealt[np.argsort(-key, kind="stable")] = grades[np.argsort(codes, kind="stable")]
        rows[column] = pd.Categorical(dealt, dtype=rows[column].dtype) \
            if isinstance(rows[column].dtype, pd.CategoricalDtype) else dealt
        return rows

    return transform


def _weight_where(condition: Callable[[pd.DataFrame], np.ndarray]) -> Weight:
    return lambda rows: np.asarray(condition(rows), dtype=np.float64)


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
    # issue #11: the peers' scenarios (window 500, a check every 50 rows)
    Scenario("large_stones_15", "data", "stones served in proportion to carat^1.5",
             weight=lambda rows: rows["carat"].to_numpy(dtype=np.float64) ** 1.5),
    Scenario("colors_g_to_j", "data", "only colours G, H, I and J",
             weight=_weight_where(lambda rows: rows["color"].astype(str).isin(["G", "H", "I", "J"]).to_numpy())),
    Scenario("table_up_1", "data", "table + 1.0 (0.45 sd)", transform=_shift("table", 1.0)),
    Scenario("carat_high_5", "data", "carat measured 5% high (reported to 0.01 as before)",
             transform=_scale("carat", 1.05, 2)),
    Scenario("large_stones_ramp", "data", "share of stones served in proportion to carat^1.5 rising "
             "linearly from 0 to 1 over 1,000 rows", weight=lambda rows: rows["carat"].to_numpy(dtype=np.float64) ** 1.5,
             ramp=1000),
    Scenario("clarity_to_large", "data", "better clarity grades dealt to larger stones; every "
             "feature's own distribution unchanged", transform=_couple_grade_to("clarity", "carat", 0.25)),
    Scenario("price_up_15", "concept", "prices 15% higher for the same stones", transform=_price_factor(1.15)),
    Scenario("large_up_15", "concept", "stones over 1 carat 15% dearer, others unchanged",
             transform=_price_factor(1.15, where=lambda rows: rows["carat"].to_numpy(dtype=np.float64) > 1.0)),
]}
