"""Scores of classifiers: area under the ROC curve and weighted F1 (the CAM and fibrosis papers' tables)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

__all__ = ["auroc", "weighted_f1"]


def auroc(scores: Sequence[float] | NDArray, labels: Sequence[int] | NDArray) -> float:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula; ties count one half.

    Parameters
    ----------
    scores : (n,) float
        Higher means "more likely positive" (a probability or a logit).
    labels : (n,) 0/1 or bool

    Returns
    -------
    float
        In [0, 1]; NaN when ``labels`` hold only one class (AUROC undefined).

    Raises
    ------
    InputError
        Different lengths, non-finite scores, or labels other than 0 and 1.
    """
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise InputError(f"auroc needs one label per score, got {scores.size} scores and {labels.size} labels.")
    if not np.all(np.isfinite(scores)):
        raise InputError("auroc got NaN or infinite scores.")
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise InputError(f"auroc labels must be 0 or 1, got {sorted(set(labels.tolist()))[:5]}.")
    positive = labels.astype(bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def weighted_f1(truth: Sequence[int] | NDArray, predicted: Sequence[int] | NDArray, n_classes: int) -> float:
    """F1 per class averaged with the classes' support as weights (scikit-learn's ``average="weighted"``).

    Parameters
    ----------
    truth, predicted : (n,) class indices in 0..n_classes-1.
    n_classes : number of classes.

    Returns
    -------
    float in [0, 1]; NaN for no samples.
    """
    truth, predicted = np.asarray(truth).ravel(), np.asarray(predicted).ravel()
    if truth.shape != predicted.shape:
        raise InputError(f"weighted_f1 needs one prediction per sample, got {truth.size} and {predicted.size}.")
    scores, weights = [], []
    for c in range(n_classes):
        tp = np.sum((predicted == c) & (truth == c))
        wrong = np.sum((predicted == c) & (truth != c)) + np.sum((predicted != c) & (truth == c))
        scores.append(2 * tp / (2 * tp + wrong) if (2 * tp + wrong) else 0.0)
        weights.append(np.sum(truth == c))
    return float(np.average(scores, weights=weights)) if sum(weights) else float("nan")
