"""Task metrics against values computed by hand."""

import math

import pytest

from pretrain_bench.eval.metrics import (accuracy, f1, matthews, pearson, spearman, summarize, task_score)

PREDICTIONS = [1, 0, 1, 1, 0, 1]
LABELS = [1, 0, 0, 1, 0, 0]  # TP 2, TN 2, FP 2, FN 0


def test_classification_metrics_by_hand():
    assert accuracy(PREDICTIONS, LABELS) == pytest.approx(4 / 6)
    # precision 2/4, recall 2/2 -> F1 = 2 * 0.5 * 1 / 1.5
    assert f1(PREDICTIONS, LABELS) == pytest.approx(2 / 3)
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 4 / sqrt(4*2*4*2)
    assert matthews(PREDICTIONS, LABELS) == pytest.approx(0.5)
    assert accuracy([0, 2, 1, 2], [0, 1, 1, 2]) == pytest.approx(0.75)  # three classes


def test_f1_counts_label_index_one_as_positive():
    # all predicted 0: no true positives -> F1 0, although accuracy is high
    assert f1([0, 0, 0, 0], [0, 0, 0, 1]) == 0.0
    assert f1([1, 1, 0, 0], [1, 1, 0, 0]) == 1.0


def test_matthews_is_zero_for_a_constant_classifier_and_minus_one_when_inverted():
    assert matthews([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0
    assert matthews([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_correlations_by_hand():
    # dx = [-1.5, -.5, .5, 1.5], dy = [-3, -1, 0, 4]: r = 11 / sqrt(5 * 26)
    assert pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(130))
    # ranks [1, 2, 3, 4] against [1, 3, 2, 4]: rho = 1 - 6 * 2 / (4 * 15)
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(0.8)
    assert spearman([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)  # monotone, not linear
    assert pearson([1, 2, 3, 4], [1, 8, 27, 64]) < 1.0


def test_spearman_gives_ties_their_average_rank():
    # ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4]: Pearson of the ranks = 4.5 / sqrt(4.5 * 5) = 0.9487;
    # the textbook 1 - 6 sum(d^2) / (n (n^2 - 1)) would give 1 - 6 * 0.5 / 60 = 0.95
    assert spearman([7, 7, 8, 9], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(22.5))


def test_a_collapsed_or_diverged_regressor_scores_zero_not_nan():
    assert pearson([2.5, 2.5, 2.5], [0.0, 2.0, 5.0]) == 0.0
    assert spearman([2.5, 2.5, 2.5], [0.0, 2.0, 5.0]) == 0.0
    assert pearson([1.0, float("nan"), 3.0], [0.0, 2.0, 5.0]) == 0.0
    assert spearman([1.0, float("inf"), 3.0], [0.0, 2.0, 5.0]) == 0.0


def test_task_score_is_the_mean_of_its_metrics_and_seed_summary():
    assert task_score({"f1": 2 / 3, "accuracy": 0.5}) == pytest.approx(7 / 12)
    stats = summarize([0.1, 0.5, 0.3])
    assert stats["median"] == pytest.approx(0.3) and stats["min"] == 0.1 and stats["max"] == 0.5
    assert stats["std"] == pytest.approx(0.2) and stats["n"] == 3 and stats["values"] == [0.1, 0.5, 0.3]
    assert summarize([0.7])["std"] == 0.0
    assert summarize([0.1, 0.5, 0.3, 0.2])["median"] == pytest.approx(0.25)  # an even count: the middle pair's mean
