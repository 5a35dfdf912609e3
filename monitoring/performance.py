"""The model's error before labels arrive: direct loss estimation (numpy only, no HTTP, no metrics).

NannyML's direct loss estimation (DLE) fits a second model to the main model's errors on held-out
data; on new traffic, the mean of its predictions estimates the loss the labels will show. Here the
error model is small enough to live in the artifact as numbers and to run in a few microseconds:

    ErrorModel          fitted at training time (train.py) on the held-out rows: the expected
                        squared error of a prediction of y_hat as r_b * y_hat^2, r_b the held-out
                        ratio sum(e^2) / sum(y_hat^2) within the predicted-price band b (20 bands
                        at held-out quantiles). Errors grow with price, and the band ratio follows
                        that growth within a band as well as across bands.
    PerformanceEstimator  per check: the estimated MSE of the window's predictions, and whether it
                        left its band: the range the estimate keeps on clean windows of the same
                        size, from the held-out predictions' own estimates (a Welch-Satterthwaite
                        gamma approximation of their window mean; tests/test_performance.py checks
                        it against clean reference chunks).

What it cannot see: anything that changes the prices but not the inputs (concept drift: prices 15%
higher for the same stones leave the estimate where it was: the concept-drift tests see that), and
errors the held-out data did not show (stones unlike any it held: the error model extrapolates its
last band). It sees the model being asked about stones on which it errs more (or less): more large
stones raise the estimated MSE before a single label comes back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

METRIC = "mse"
# Share of clean checks whose estimate may leave its band (both sides together).
DEFAULT_BAND_ALPHA = 0.005


@dataclass
class ErrorModel:
    """Expected squared error of a prediction y_hat: ratio[band(y_hat)] * y_hat^2."""

    edges: np.ndarray  # inner band edges of predicted price
    ratios: np.ndarray  # one per band

    @classmethod
    def fit(cls, actual: np.ndarray, predicted: np.ndarray, n_bands: int = 20) -> "ErrorModel":
        actual = np.asarray(actual, dtype=np.float64)
        predicted = np.asarray(predicted, dtype=np.float64)
        ok = np.isfinite(actual) & np.isfinite(predicted)
        actual, predicted = actual[ok], predicted[ok]
        edges = np.unique(np.quantile(predicted, np.arange(1, n_bands) / n_bands))
        bands = np.searchsorted(edges, predicted, side="right")
        squared, scale = (actual - predicted) ** 2, predicted ** 2
        ratios = np.array([squared[bands == b].sum() / max(scale[bands == b].sum(), 1e-12)
                           for b in range(len(edges) + 1)])
        return cls(edges, ratios)

    def expected_squared_error(self, predicted: np.ndarray) -> np.ndarray:
        predicted = np.asarray(predicted, dtype=np.float64)
        return self.ratios[np.searchsorted(self.edges, predicted, side="right")] * predicted ** 2

    def to_dict(self) -> dict:
        """Plain numbers, for the artifact."""
        return {"metric": METRIC, "kind": "band-ratio", "edges": self.edges.tolist(), "ratios": self.ratios.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ErrorModel":
        if d.get("metric") != METRIC or d.get("kind") != "band-ratio":
            raise ValueError(f"unknown error model {d.get('kind')!r} for {d.get('metric')!r}")
        return cls(np.asarray(d["edges"], dtype=np.float64), np.asarray(d["ratios"], dtype=np.float64))


@dataclass
class PerformanceEstimate:
    metric: str
    estimated: float | None  # the window's estimated MSE
    reference: float  # the estimate's mean on clean traffic (held-out predictions)
    lower: float | None  # the band for this window size
    upper: float | None
    detected: bool  # the estimate left its band
    window_size: int

    def to_dict(self) -> dict:
        return {"metric": self.metric, "estimated": self.estimated, "reference": self.reference,
                "lower": self.lower, "upper": self.upper, "detected": bool(self.detected),
                "window_size": int(self.window_size)}


class PerformanceEstimator:
    """Direct loss estimation on the served predictions (no labels).

    Reference: the error model and the held-out predictions. Their per-prediction estimates have
    mean mu and variance v; on clean windows of m predictions the estimate (their mean) is about
    Gamma(shape m mu^2 / v, scale v / (m mu)) (Welch-Satterthwaite: the estimates are skewed, as
    squared errors are), and the band is its alpha/2 and 1 - alpha/2 quantiles, so a clean check
    leaves it with probability about alpha.
    """

    def __init__(self, error_model: ErrorModel, reference_predicted: np.ndarray, alpha: float = DEFAULT_BAND_ALPHA,
                 min_samples: int = 50):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.error_model = error_model
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        predicted = np.asarray(reference_predicted, dtype=np.float64)
        estimates = error_model.expected_squared_error(predicted[np.isfinite(predicted)])
        self.reference = float(estimates.mean())
        self._variance = float(estimates.var())

    def band(self, m: int) -> tuple[float, float]:
        """The clean range of the estimate over m predictions."""
        shape = m * self.reference ** 2 / self._variance
        scale = self._variance / (m * self.reference)
        low, high = special.gammaincinv(shape, [self.alpha / 2, 1 - self.alpha / 2])
        return float(low * scale), float(high * scale)

    def score(self, predicted: np.ndarray) -> PerformanceEstimate:
        predicted = np.asarray(predicted, dtype=np.float64).ravel()
        predicted = predicted[np.isfinite(predicted)]
        m = int(predicted.size)
        if m < self.min_samples:
            return PerformanceEstimate(METRIC, None, self.reference, None, None, False, m)
        estimated = float(self.error_model.expected_squared_error(predicted).mean())
        lower, upper = self.band(m)
        return PerformanceEstimate(METRIC, estimated, self.reference, lower, upper,
                                   not lower <= estimated <= upper, m)
