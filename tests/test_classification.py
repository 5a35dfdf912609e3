"""The classifier's concept-drift detector (monitoring/classification.py): its two tests agree with
scipy's, it decides nothing on too few labels, it catches mislabelled classes, and on clean held-out
traffic it false-alarms on at most 1% of checks (simulated on the shipped diamonds classifier's
held-out predictions)."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

import train
from monitoring.classification import ClassificationConceptDetector, labelled_pairs

DIAMONDS = Path(__file__).resolve().parent.parent / "data" / "diamonds.csv"


@functools.cache
def _heldout() -> tuple[np.ndarray, np.ndarray]:
    """Held-out true class codes and probabilities of a small forest classifying cut."""
    artifact = train.train_csv(DIAMONDS, "cut", n_estimators=10, n_jobs=1, say=lambda _: None)
    errors = artifact["reference_errors"]
    return errors["actual"], errors["probabilities"]


def _synthetic(n: int, seed: int, accuracy: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    actual = rng.integers(0, 3, n)
    probabilities = rng.dirichlet([1, 1, 1], n)
    right = rng.random(n) < accuracy
    top = probabilities.max(axis=1)
    probabilities[np.arange(n), actual] = np.where(right, top + 0.5, probabilities[np.arange(n), actual] * 0.5)
    return actual, probabilities / probabilities.sum(axis=1, keepdims=True)


def test_labelled_pairs_are_correctness_and_clipped_log_loss():
    probabilities = np.array([[0.7, 0.3], [0.0, 1.0], [0.5, 0.5]])
    pairs = labelled_pairs(probabilities, [0, 0, 1], [0, 1, 0])
    assert pairs[:, 0].tolist() == [1.0, 0.0, 0.0]
    assert pairs[:, 1] == pytest.approx([-np.log(0.7), -np.log(1e-15), -np.log(0.5)])


def test_the_loss_test_is_scipys_mann_whitney_and_the_accuracy_test_fishers():
    actual, probabilities = _synthetic(3000, 1)
    detector = ClassificationConceptDetector(actual, probabilities, alpha=0.01)
    reference = labelled_pairs(probabilities, actual, probabilities.argmax(axis=1))
    window_actual, window_probabilities = _synthetic(400, 2, accuracy=0.7)
    window = labelled_pairs(window_probabilities, window_actual, window_probabilities.argmax(axis=1))
    # ties, as a forest makes them (many probabilities of exactly 1)
    window[:50, 1] = reference[0, 1]
    report = detector.score(window[:, 0], window[:, 1])
    expected_loss = stats.mannwhitneyu(window[:, 1], reference[:, 1], alternative="greater", method="asymptotic")
    assert report.loss_p_value == pytest.approx(expected_loss.pvalue, rel=1e-9)
    right, n = int(window[:, 0].sum()), 400
    ref_right = int(round(reference[:, 0].sum()))
    table = [[right, n - right], [ref_right, 3000 - ref_right]]
    assert report.accuracy_p_value == pytest.approx(stats.fisher_exact(table, alternative="less").pvalue, rel=1e-9)
    assert report.accuracy == pytest.approx(right / n)
    assert report.accuracy_drop == pytest.approx(reference[:, 0].mean() - right / n)
    assert report.loss_increase == pytest.approx(window[:, 1].mean() / reference[:, 1].mean() - 1)
    assert report.p_value == pytest.approx(min(1.0, 2 * min(report.loss_p_value, report.accuracy_p_value)))
    assert report.detected == (report.p_value <= 0.01)


def test_too_few_labels_decide_nothing():
    actual, probabilities = _synthetic(500, 3)
    detector = ClassificationConceptDetector(actual, probabilities, min_samples=30)
    report = detector.score(np.zeros(29), np.full(29, 30.0))
    assert report.detected is False and report.p_value is None and report.labelled_size == 29
    assert report.reason == "not enough data: 29 labelled predictions in the window, at least 30 needed"
    assert report.to_dict()["score"] is None


def test_a_better_window_is_not_drift_and_a_mislabelled_class_is():
    actual, probabilities = _heldout()
    half = actual.size // 2
    detector = ClassificationConceptDetector(actual[:half], probabilities[:half])
    stream_actual, stream_probabilities = actual[half:half + 300], probabilities[half:half + 300]
    predicted = stream_probabilities.argmax(axis=1)
    perfect = labelled_pairs(stream_probabilities, predicted, predicted)  # every prediction right
    assert detector.score(perfect[:, 0], perfect[:, 1]).detected is False
    flipped = np.where(stream_actual == 3, 2, stream_actual)  # Premium labelled Ideal
    pairs = labelled_pairs(stream_probabilities, flipped, predicted)
    report = detector.score(pairs[:, 0], pairs[:, 1])
    assert report.detected is True and report.accuracy_drop > 0.1 and report.loss_increase > 1.0


def test_false_alarms_on_clean_heldout_traffic_stay_under_one_percent():
    """Half of the held-out predictions as the reference, the other half streamed as live traffic:
    windows of 500 labels, a check every 25, 30 random halvings, alpha 0.005 (the default)."""
    actual, probabilities = _heldout()
    pairs = labelled_pairs(probabilities, actual, probabilities.argmax(axis=1))
    rng = np.random.default_rng(12)
    alarms = checks = 0
    for _ in range(30):
        order = rng.permutation(actual.size)
        reference, stream = order[:actual.size // 2], order[actual.size // 2:]
        detector = ClassificationConceptDetector(actual[reference], probabilities[reference])
        live = pairs[stream]
        for end in range(500, live.shape[0] + 1, 25):
            alarms += detector.score(live[end - 500:end, 0], live[end - 500:end, 1]).detected
            checks += 1
    assert checks > 5000
    assert alarms / checks <= 0.01, f"{alarms} false alarms in {checks} clean checks"
