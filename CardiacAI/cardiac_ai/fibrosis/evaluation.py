"""Scores of the fibrosis models: AUROC of the classifiers and Dice of the segmentations, as in the paper's tables."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

__all__ = ["auroc", "binary_dice", "mean_sd"]

log = logging.getLogger(__name__)


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


def binary_dice(pred: NDArray, truth: NDArray, *, empty_value: float = float("nan")) -> float:
    """Dice ``2|P & T| / (|P| + |T|)`` of two masks of one shape; ``empty_value`` when both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.shape != truth.shape:
        raise InputError(f"binary_dice got masks of shapes {pred.shape} and {truth.shape}.")
    total = int(pred.sum()) + int(truth.sum())
    if total == 0:
        return float(empty_value)
    return 2.0 * int(np.logical_and(pred, truth).sum()) / total


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample SD (ddof 1; 0 for one value) and count of the finite values; NaN mean when there are none."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0, int(finite.size)
