"""Binary classification metrics of closed-set answers, as POPE reports them (the positive class is Yes / True).

Scores for AUC-ROC are P(positive answer). AUC is the Mann-Whitney rank statistic: the probability that a random
positive case scores above a random negative one, ties counting one half (average ranks), i.e. the exact area under
the ROC curve with tied scores joined by straight segments (what `sklearn.metrics.roc_auc_score` returns).
Undefined values are None: precision with no positive prediction, recall with no positive case, F1 with neither a
positive case nor a positive prediction, AUC unless both classes are present.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass


def auc_roc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve of `scores` for binary `labels` (True = positive), ties handled; None if one class
    is absent."""
    if len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels but {len(scores)} scores")
    n_pos = sum(1 for y in labels if y)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # average 1-based rank over each run of tied scores
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


@dataclass(frozen=True)
class BinaryMetrics:
    n: int
    tp: int
    fp: int
    tn: int
    fn: int
    accuracy: float
    precision: float | None
    recall: float | None
    f1: float | None
    auc: float | None
    yes_ratio: float  # share of positive predictions (POPE's "yes ratio")

    def to_dict(self) -> dict:
        return asdict(self)


def binary_metrics(labels: Sequence[bool], predictions: Sequence[bool], scores: Sequence[float]) -> BinaryMetrics:
    """Metrics of `predictions` against `labels` (True = positive answer), AUC from `scores` = P(positive)."""
    if not len(labels) == len(predictions) == len(scores):
        raise ValueError("labels, predictions and scores must have the same length")
    if not labels:
        raise ValueError("no cases")
    tp = sum(1 for y, p in zip(labels, predictions) if y and p)
    fp = sum(1 for y, p in zip(labels, predictions) if not y and p)
    tn = sum(1 for y, p in zip(labels, predictions) if not y and not p)
    fn = sum(1 for y, p in zip(labels, predictions) if y and not p)
    n = len(labels)
    return BinaryMetrics(
        n=n, tp=tp, fp=fp, tn=tn, fn=fn,
        accuracy=(tp + tn) / n,
        precision=_ratio(tp, tp + fp),
        recall=_ratio(tp, tp + fn),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        auc=auc_roc(labels, scores),
        yes_ratio=(tp + fp) / n,
    )
