"""Metrics against hand-computed values: accuracy, precision, recall, F1, AUC-ROC (ties included), per category."""

import itertools
import random
from pathlib import Path

import pytest

from cobra_app.probe import CaseResult, ProbeCase, auc_roc, binary_metrics, compute_metrics


def pairwise_auc(labels, scores):
    """The definition, by brute force: P(score of a positive > score of a negative), ties count 1/2."""
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_confusion_counts_and_ratios_by_hand():
    labels = [True, True, True, True, True, False, False, False]
    preds = [True, True, True, False, False, True, False, False]
    scores = [0.9, 0.8, 0.7, 0.4, 0.3, 0.6, 0.2, 0.1]
    m = binary_metrics(labels, preds, scores)
    assert (m.n, m.tp, m.fp, m.tn, m.fn) == (8, 3, 1, 2, 2)
    assert m.accuracy == pytest.approx(5 / 8)
    assert m.precision == pytest.approx(3 / 4)
    assert m.recall == pytest.approx(3 / 5)
    assert m.f1 == pytest.approx(2 * (3 / 4) * (3 / 5) / (3 / 4 + 3 / 5))  # = 2/3
    assert m.yes_ratio == pytest.approx(4 / 8)
    # positives ranked above negatives except 0.4 and 0.3 below 0.6: 15 pairs, 2 lost
    assert m.auc == pytest.approx(13 / 15)


def test_auc_with_ties_by_hand():
    # positives 0.9, 0.5, 0.5; negatives 0.5, 0.1, 0.7
    # 0.9 beats all three (3); each 0.5 ties 0.5 (1/2), beats 0.1 (1), loses to 0.7 (0): 1.5 each -> 6 of 9
    labels = [True, True, False, False, True, False]
    scores = [0.9, 0.5, 0.5, 0.1, 0.5, 0.7]
    assert auc_roc(labels, scores) == pytest.approx(6 / 9)
    # scikit-learn's documented example: roc_auc_score([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auc_roc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    # all scores tied: chance level; perfectly separated: 1; reversed: 0
    assert auc_roc([True, False, True, False], [0.5] * 4) == pytest.approx(0.5)
    assert auc_roc([True, False], [0.9, 0.1]) == 1.0 and auc_roc([True, False], [0.1, 0.9]) == 0.0


def test_auc_matches_the_pairwise_definition_on_heavily_tied_scores():
    rng = random.Random(0)
    for _ in range(20):
        n = rng.randint(2, 40)
        labels = [rng.random() < 0.4 for _ in range(n)]
        labels[0], labels[1] = True, False
        scores = [rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]) for _ in range(n)]
        assert auc_roc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_undefined_values_are_none():
    only_negatives = binary_metrics([False, False], [False, False], [0.2, 0.3])
    assert only_negatives.auc is None and only_negatives.recall is None and only_negatives.precision is None
    assert only_negatives.f1 is None and only_negatives.accuracy == 1.0 and only_negatives.yes_ratio == 0.0
    never_yes = binary_metrics([True, False], [False, False], [0.4, 0.3])
    assert never_yes.precision is None and never_yes.recall == 0.0 and never_yes.f1 == 0.0 and never_yes.auc == 1.0
    assert auc_roc([True, True], [0.1, 0.2]) is None
    with pytest.raises(ValueError):
        binary_metrics([], [], [])
    with pytest.raises(ValueError):
        auc_roc([True], [0.1, 0.2])


def _result(line, category, answers, answer, p_pos):
    words = {"yes-no": ("Yes", "No"), "true-false": ("True", "False")}[answers]
    case = ProbeCase(line, f"c{line}", "x.png", Path("x.png"), "q", answer, answers, category)
    return CaseResult(case, "q", p_pos, 1 - p_pos, words[0] if p_pos >= 0.5 else words[1])


def test_per_category_and_overall_from_case_results():
    results = [
        _result(1, "random", "yes-no", "Yes", 0.8),  # TP
        _result(2, "random", "yes-no", "No", 0.6),  # FP
        _result(3, "random", "yes-no", "No", 0.2),  # TN
        _result(4, "left of", "true-false", "True", 0.3),  # FN
        _result(5, "left of", "true-false", "False", 0.1),  # TN
        _result(6, "random", "yes-no", "Yes", 0.5),  # TP (a tie goes to the positive word)
    ]
    categories, overall = compute_metrics(results)
    assert list(categories) == ["random", "left of"]  # order of first appearance
    r, s = categories["random"], categories["left of"]
    assert (r.n, r.tp, r.fp, r.tn, r.fn) == (4, 2, 1, 1, 0) and r.accuracy == 0.75
    assert r.precision == pytest.approx(2 / 3) and r.recall == 1.0 and r.f1 == pytest.approx(0.8)
    assert r.auc == pytest.approx(3 / 4)  # 0.8 beats 0.6 and 0.2; 0.5 beats 0.2 only
    assert (s.tp, s.fp, s.tn, s.fn) == (0, 0, 1, 1) and s.precision is None and s.f1 == 0.0 and s.auc == 1.0
    assert (overall.n, overall.tp, overall.fp, overall.tn, overall.fn) == (6, 2, 1, 2, 1)
    assert overall.accuracy == pytest.approx(4 / 6)
    assert overall.auc == pytest.approx(7 / 9)  # positives 0.8, 0.3, 0.5 vs negatives 0.6, 0.2, 0.1: 3 + 2 + 2
