"""Argument checks shared by the weak package's functions on (k, j, i) image stacks and masks."""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError


def real_finite(array: np.ndarray, function: str, name: str) -> None:
    """InputError unless ``array`` holds real numbers (or booleans) and no NaN or Inf."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) \
            or np.issubdtype(array.dtype, np.complexfloating):
        raise InputError(f"{function}: the {name} must hold real numbers, got dtype {array.dtype}.")
    if not np.all(np.isfinite(array)):
        raise InputError(f"{function}: the {name} holds NaN or Inf values.")


def in_plane_pixel_mm(spacing_kji_mm: object, function: str) -> tuple[float, float]:
    """The (j, i) pixel size of a (k, j, i) spacing; InputError unless it is three positive finite numbers."""
    try:
        spacing = tuple(float(s) for s in spacing_kji_mm)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        spacing = ()
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"{function} needs three positive spacings (k, j, i) in mm, got {spacing_kji_mm!r}.")
    return spacing[1], spacing[2]
