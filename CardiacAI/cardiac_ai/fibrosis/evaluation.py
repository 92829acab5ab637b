"""Scores of the fibrosis models (AUROC and Dice live in :mod:`cardiac_ai.metrics`); per-patient summaries."""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from ..metrics.classification import auroc
from ..metrics.overlap import dice as binary_dice

__all__ = ["auroc", "binary_dice", "mean_sd"]

log = logging.getLogger(__name__)


def mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample SD (ddof 1; 0 for one value) and count of the finite values; NaN mean when there are none."""
    finite = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if finite.size == 0:
        return float("nan"), float("nan"), 0
    return float(finite.mean()), float(finite.std(ddof=1)) if finite.size > 1 else 0.0, int(finite.size)
