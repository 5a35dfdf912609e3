"""Concept drift of a classifier: its labelled window against its held-out performance.

Kept apart from drift.py's regression detector: both take the labelled window and give one plain
report, but what a label is differs (a class, not a number). A labelled prediction enters the
window as (correct, loss): whether the predicted class was the true one, and the log loss
-log p(true class) of the probabilities the model served.

Two tests, one Holm family at `alpha` (drift.holm_bonferroni, the project's one correction):

* loss: where each window loss ranks among the held-out losses (its mid-rank PIT). Without concept
  drift the window's losses come from the held-out distribution and their mean rank is 1/2; a
  Mann-Whitney U test (one-sided: losses larger than held-out), normal approximation with the tie
  correction, since a forest gives many rows the same probability (probability 1: loss 0).
* accuracy: the window's accuracy against the held-out accuracy, a one-sided Fisher exact test of
  the two counts right and wrong, which accounts for the held-out estimate's own noise.

Both are one-sided: a model that does better than held-out is not drifting in any way a user must
act on. Magnitudes: `accuracy_drop` (held-out minus window, in points of accuracy) and
`loss_increase` (relative mean log-loss increase: 0.25 = 25% worse), the `concept_drift` gauge.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from monitoring.drift import DEFAULT_ALPHA, NOT_ENOUGH_DATA, _finite_pairs, holm_bonferroni

__all__ = ["ClassificationConceptDetector", "ClassificationConceptReport", "labelled_pairs"]

LOSS_FLOOR = 1e-15  # probabilities are clipped here: a confident mistake costs log(1e15) = 34.5, not infinity


def labelled_pairs(probabilities: np.ndarray, actual_codes, predicted_codes) -> np.ndarray:
    """(correct, loss) rows for labelled predictions: probabilities (rows x classes) as served,
    actual and predicted class codes."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(actual_codes), -1)
    actual = np.asarray(actual_codes, dtype=np.int64)
    p_true = np.clip(probabilities[np.arange(actual.size), actual], LOSS_FLOOR, 1.0)
    correct = (np.asarray(predicted_codes, dtype=np.int64) == actual).astype(np.float64)
    return np.column_stack([correct, -np.log(p_true)])


@dataclass
class ClassificationConceptReport:
    loss_increase: float | None  # relative mean log-loss increase over held-out (JSON: score; gauge: concept_drift)
    detected: bool
    labelled_size: int
    accuracy: float | None
    reference_accuracy: float
    accuracy_drop: float | None  # held-out accuracy minus the window's
    log_loss: float | None
    reference_log_loss: float
    loss_p_value: float | None  # Mann-Whitney: window losses larger than held-out ones
    accuracy_p_value: float | None  # Fisher exact: window accuracy lower than held-out
    p_value: float | None  # the smaller of the two, Holm-adjusted (what `detected` compares with alpha)
    alpha: float
    test: str
    reason: str | None = None
    # What drift.py's regression report dates (when a change began): a classifier's report has no
    # multi-scale detection, so it stays None; kept so that the monitor treats both reports alike.
    detection: object = None

    def to_dict(self) -> dict:
        out = asdict(self)
        out = {"score": out.pop("loss_increase"), **out}
        out["detected"] = bool(out["detected"])
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in out.items()}


class ClassificationConceptDetector:
    """Has the relation between inputs and class changed, as seen by the classifier's mistakes?

    Reference: held-out true classes and the model's probabilities for them (never training rows).
    `score(correct, loss)` takes the labelled window's (correct, loss) columns (labelled_pairs).
    Below `min_samples` labels it decides nothing (reason set)."""

    test = "loss-accuracy"

    def __init__(self, reference_actual, reference_probabilities, alpha: float = DEFAULT_ALPHA,
                 min_samples: int = 30):
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        actual = np.asarray(reference_actual, dtype=np.int64)
        probabilities = np.asarray(reference_probabilities, dtype=np.float64)
        if actual.size < 20:
            raise ValueError("ClassificationConceptDetector needs at least 20 held-out labels")
        pairs = labelled_pairs(probabilities, actual, probabilities.argmax(axis=1))
        self.alpha = float(alpha)
        self.min_samples = int(min_samples)
        self.n = int(actual.size)
        self.reference_accuracy = float(pairs[:, 0].mean())
        self._loss = np.sort(pairs[:, 1])
        self.reference_log_loss = float(self._loss.mean())

    def segment_names(self) -> list[str]:
        """No segments (drift.py's regression detector has some): the metrics list none."""
        return []

    def pit(self, loss) -> np.ndarray:
        """Mid-rank of each loss among the held-out losses, in (0, 1)."""
        loss = np.asarray(loss, dtype=np.float64)
        below = np.searchsorted(self._loss, loss, side="left")
        at_most = np.searchsorted(self._loss, loss, side="right")
        return (0.5 * (below + at_most) + 0.5) / (self.n + 1)

    def _loss_p_value(self, loss: np.ndarray) -> float:
        """One-sided Mann-Whitney U (window losses stochastically larger), normal approximation with
        the tie correction and a continuity correction, as scipy.stats.mannwhitneyu's asymptotic
        method; computed from the sorted reference with searchsorted (no re-sort of the reference)."""
        m, n = loss.size, self.n
        below = np.searchsorted(self._loss, loss, side="left")
        ties = np.searchsorted(self._loss, loss, side="right") - below
        # U of the window: pairs (window, reference) where the window's loss is larger, ties half;
        # ties among window values themselves count in the joint ranks, not here (they cancel in U).
        u = float(np.sum(below + 0.5 * ties))
        mean = m * n / 2.0
        # tie correction over the pooled sample's tie groups
        pooled = np.concatenate([self._loss, loss])
        _, counts = np.unique(pooled, return_counts=True)
        total = m + n
        tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (total * (total - 1))
        variance = m * n / 12.0 * ((total + 1) - tie_term)
        if variance <= 0:
            return 1.0
        z = (u - mean - 0.5) / np.sqrt(variance)
        return float(special.ndtr(-z))

    def _accuracy_p_value(self, correct: np.ndarray) -> float:
        """One-sided Fisher exact test of the 2 x 2 table (window, held-out) x (right, wrong): the
        chance, given the pooled number right, that a window of this size gets this few right. Exact
        where a z-test is not: at accuracies near 1 the count's lower tail is heavier than normal,
        which made the z-test false-alarm at twice its level (0.74% for 0.25%)."""
        m, n = correct.size, self.n
        right = int(round(correct.sum()))
        pooled_right = right + int(round(self.reference_accuracy * n))
        return float(np.clip(stats.hypergeom.cdf(right, m + n, pooled_right, m), 0.0, 1.0))

    def score(self, correct, loss, grades=None) -> ClassificationConceptReport:
        """`grades` is accepted and unused: the regression detector's per-grade segments have no
        classification counterpart here yet."""
        correct, loss = _finite_pairs(correct, loss, "correct and loss")
        m = int(correct.size)
        if m < self.min_samples:
            return ClassificationConceptReport(
                loss_increase=None, detected=False, labelled_size=m, accuracy=None,
                reference_accuracy=self.reference_accuracy, accuracy_drop=None, log_loss=None,
                reference_log_loss=self.reference_log_loss, loss_p_value=None, accuracy_p_value=None,
                p_value=None, alpha=self.alpha, test=self.test,
                reason=NOT_ENOUGH_DATA.format(n=m, what="labelled predictions", need=self.min_samples))
        p_loss, p_accuracy = self._loss_p_value(loss), self._accuracy_p_value(correct)
        rejected = holm_bonferroni([p_loss, p_accuracy], self.alpha)
        accuracy, log_loss = float(correct.mean()), float(loss.mean())
        return ClassificationConceptReport(
            loss_increase=(log_loss - self.reference_log_loss) / self.reference_log_loss
            if self.reference_log_loss > 0 else None,
            detected=bool(rejected.any()), labelled_size=m, accuracy=accuracy,
            reference_accuracy=self.reference_accuracy, accuracy_drop=self.reference_accuracy - accuracy,
            log_loss=log_loss, reference_log_loss=self.reference_log_loss, loss_p_value=p_loss,
            accuracy_p_value=p_accuracy, p_value=min(1.0, 2.0 * min(p_loss, p_accuracy)), alpha=self.alpha,
            test=self.test)
