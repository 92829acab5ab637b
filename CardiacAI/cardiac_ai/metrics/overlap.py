"""Overlap metrics: Dice and Jaccard for masks, per label, per volume and per slice.

Empty-mask rule (the same everywhere in this module)
-----------------------------------------------------
* both masks empty -> ``empty_value`` (default NaN: the metric is *not applicable*, e.g. no right ventricle in an
  apical slice and none predicted); NaN values are dropped by ``numpy.nanmean`` and by the tables of this package;
* exactly one mask empty -> 0.0 (a missed structure or a false positive is a complete failure);
* otherwise ``dice = 2 |P & T| / (|P| + |T|)`` and ``jaccard = |P & T| / |P | T|``.

This is MONAI's ``compute_dice(..., ignore_empty=True)`` convention, written in numpy so that per-slice tables do
not need torch.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..labels import LABELS

__all__ = [
    "dice",
    "jaccard",
    "dice_per_label",
    "jaccard_per_label",
    "dice_per_slice",
    "jaccard_per_slice",
]

log = logging.getLogger(__name__)

DEFAULT_LABELS: tuple[int, ...] = (1, 2, 3)


# -- validation shared by the metrics package ---------------------------------------------------------------------
def _as_array(value: object, name: str) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(value).__name__}.")
    if value.size == 0:
        raise InputError(f"{name} is empty (shape {value.shape}).")
    return value


def _check_same_shape(pred: np.ndarray, true: np.ndarray, pred_name: str, true_name: str) -> None:
    if pred.shape != true.shape:
        raise InputError(
            f"{pred_name} has shape {pred.shape} but {true_name} has shape {true.shape}; they must match voxel for "
            "voxel. Resample the prediction onto the reference grid first."
        )


def _as_mask(value: object, name: str) -> NDArray[np.bool_]:
    """A boolean view of a mask; integer/float arrays are accepted when they hold only 0 and 1."""
    array = _as_array(value, name)
    if array.dtype == np.bool_:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{name} must be a boolean or numeric mask, got dtype {array.dtype}.")
    foreground = array == 1
    if not np.all(foreground | (array == 0)):
        found = np.unique(array[~(foreground | (array == 0))])[:5].tolist()
        raise InputError(
            f"{name} is not a binary mask: it holds values {found} besides 0 and 1. "
            "For a label map pass one structure, e.g. labels == 3, or use dice_per_label."
        )
    return foreground


def _as_labels(value: object, name: str) -> np.ndarray:
    """Validate a label map: integer codes (whole-number floats are accepted)."""
    array = _as_array(value, name)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.all(np.mod(array, 1) == 0):
            raise InputError(f"{name} must hold whole-number label codes; found non-integer or non-finite values.")
        return array
    raise InputError(f"{name} must be an integer label map, got dtype {array.dtype}.")


def _check_labels_arg(labels: Sequence[int]) -> tuple[int, ...]:
    try:
        codes = tuple(int(code) for code in labels)
    except (TypeError, ValueError) as e:
        raise InputError(f"labels must be a sequence of integer label codes, got {labels!r}.") from e
    if not codes:
        raise InputError("labels is empty; name at least one label code, e.g. labels=(1, 2, 3).")
    if len(set(codes)) != len(codes):
        raise InputError(f"labels has repeated codes: {codes}.")
    if any(code == 0 for code in codes):
        raise InputError("labels includes 0 (background); overlap metrics are computed for structures only.")
    return codes


def _structure_name(code: int) -> str:
    """Machine name of a label code from the label table (``label_<code>`` for codes it lacks)."""
    return LABELS[code].name if code in LABELS else f"label_{code}"


# -- the one computation ------------------------------------------------------------------------------------------
def _ratio(intersection: np.ndarray, size_sum: np.ndarray, *, jaccard: bool, empty_value: float) -> np.ndarray:
    """Dice or Jaccard from counts (any shape); applies the empty-mask rule."""
    intersection = np.asarray(intersection, dtype=np.float64)
    size_sum = np.asarray(size_sum, dtype=np.float64)
    denominator = size_sum - intersection if jaccard else size_sum
    numerator = intersection if jaccard else 2.0 * intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        result = np.where(size_sum > 0, numerator / np.where(denominator > 0, denominator, 1.0), empty_value)
    return result


def _per_slice_counts(
    pred: np.ndarray, true: np.ndarray, codes: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(k, n_labels) intersection and |P| + |T| counts."""
    n_slices = pred.shape[0]
    intersection = np.zeros((n_slices, len(codes)), dtype=np.int64)
    size_sum = np.zeros((n_slices, len(codes)), dtype=np.int64)
    for column, code in enumerate(codes):
        p = (pred == code).reshape(n_slices, -1)
        t = (true == code).reshape(n_slices, -1)
        intersection[:, column] = np.count_nonzero(p & t, axis=1)
        size_sum[:, column] = np.count_nonzero(p, axis=1) + np.count_nonzero(t, axis=1)
    return intersection, size_sum


def _mask_metric(pred_mask: object, true_mask: object, *, jaccard: bool, empty_value: float) -> float:
    pred = _as_mask(pred_mask, "pred_mask")
    true = _as_mask(true_mask, "true_mask")
    _check_same_shape(pred, true, "pred_mask", "true_mask")
    intersection = np.count_nonzero(pred & true)
    size_sum = np.count_nonzero(pred) + np.count_nonzero(true)
    return float(_ratio(intersection, size_sum, jaccard=jaccard, empty_value=empty_value))


def dice(pred_mask: NDArray, true_mask: NDArray, *, empty_value: float = np.nan) -> float:
    """Dice similarity coefficient ``2 |P & T| / (|P| + |T|)`` of two binary masks.

    Parameters
    ----------
    pred_mask, true_mask : ndarray of bool (or 0/1 numbers), same shape, any dimension
        Predicted and reference masks, e.g. ``labels == 3``.
    empty_value : float, optional
        Returned when both masks are empty (default NaN, "not applicable"). Exactly one empty mask gives 0.

    Returns
    -------
    float
        In [0, 1], or ``empty_value``.

    Raises
    ------
    InputError
        If the shapes differ or an array holds values other than 0 and 1.

    Examples
    --------
    >>> a = np.zeros((3, 3), bool); a[0, :2] = a[1, :2] = True        # 4 pixels
    >>> b = np.zeros((3, 3), bool); b[0] = True; b[1, :3] = True      # 6 pixels, 4 shared
    >>> round(dice(a, b), 3)
    0.8
    """
    return _mask_metric(pred_mask, true_mask, jaccard=False, empty_value=empty_value)


def jaccard(pred_mask: NDArray, true_mask: NDArray, *, empty_value: float = np.nan) -> float:
    """Jaccard index (intersection over union) ``|P & T| / |P | T|`` of two binary masks.

    Same inputs, empty-mask rule and errors as :func:`dice`; ``jaccard = dice / (2 - dice)``.
    """
    return _mask_metric(pred_mask, true_mask, jaccard=True, empty_value=empty_value)


def _label_metric(
    pred_labels: object,
    true_labels: object,
    labels: Sequence[int],
    *,
    jaccard: bool,
    empty_value: float,
) -> dict[int, float]:
    pred = _as_labels(pred_labels, "pred_labels")
    true = _as_labels(true_labels, "true_labels")
    _check_same_shape(pred, true, "pred_labels", "true_labels")
    codes = _check_labels_arg(labels)
    result = {}
    for code in codes:
        p = pred == code
        t = true == code
        intersection = np.count_nonzero(p & t)
        size_sum = np.count_nonzero(p) + np.count_nonzero(t)
        result[code] = float(_ratio(intersection, size_sum, jaccard=jaccard, empty_value=empty_value))
    return result


def dice_per_label(
    pred_labels: NDArray,
    true_labels: NDArray,
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    empty_value: float = np.nan,
) -> dict[int, float]:
    """Dice of each structure over the whole array (volume Dice).

    Parameters
    ----------
    pred_labels, true_labels : integer ndarray, same shape, any dimension (usually (k, j, i))
        Label maps with the codes of :mod:`cardiac_ai.labels` (1 RV blood pool, 2 LV myocardium, 3 LV blood pool).
    labels : sequence of int
        Codes to score; 0 (background) is not allowed.
    empty_value : float
        Value when a structure is absent from both maps (default NaN).

    Returns
    -------
    dict
        ``{code: dice}`` in the order of ``labels``.

    Raises
    ------
    InputError
        If the shapes differ, a map holds non-integer values or ``labels`` is empty, repeated or contains 0.
    """
    return _label_metric(pred_labels, true_labels, labels, jaccard=False, empty_value=empty_value)


def jaccard_per_label(
    pred_labels: NDArray,
    true_labels: NDArray,
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    empty_value: float = np.nan,
) -> dict[int, float]:
    """Jaccard index of each structure over the whole array; see :func:`dice_per_label`."""
    return _label_metric(pred_labels, true_labels, labels, jaccard=True, empty_value=empty_value)


def _slice_metric(
    pred_labels: object,
    true_labels: object,
    labels: Sequence[int],
    *,
    jaccard: bool,
    empty_value: float,
) -> NDArray[np.float64]:
    pred = _as_labels(pred_labels, "pred_labels")
    true = _as_labels(true_labels, "true_labels")
    _check_same_shape(pred, true, "pred_labels", "true_labels")
    if pred.ndim != 3:
        raise InputError(
            f"Per-slice metrics need (k, j, i) label maps, got {pred.ndim}D arrays of shape {pred.shape}. "
            "For one 2D slice add a leading axis: labels[np.newaxis]."
        )
    codes = _check_labels_arg(labels)
    intersection, size_sum = _per_slice_counts(pred, true, codes)
    return _ratio(intersection, size_sum, jaccard=jaccard, empty_value=empty_value)


def dice_per_slice(
    pred_labels: NDArray,
    true_labels: NDArray,
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    empty_value: float = np.nan,
) -> NDArray[np.float64]:
    """Dice of each structure in each slice (2D Dice along k).

    Parameters
    ----------
    pred_labels, true_labels : (k, j, i) integer ndarray, same shape
        Label maps.
    labels : sequence of int
        Codes to score, one output column each.
    empty_value : float
        Value for a slice where the structure is absent from both maps (default NaN).

    Returns
    -------
    (k, len(labels)) float64 ndarray
        ``result[s, c]`` is the Dice of ``labels[c]`` in slice ``s``.

    Raises
    ------
    InputError
        If the maps are not 3D or differ in shape, or ``labels`` is invalid.
    """
    return _slice_metric(pred_labels, true_labels, labels, jaccard=False, empty_value=empty_value)


def jaccard_per_slice(
    pred_labels: NDArray,
    true_labels: NDArray,
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    empty_value: float = np.nan,
) -> NDArray[np.float64]:
    """Jaccard index of each structure in each slice; (k, len(labels)); see :func:`dice_per_slice`."""
    return _slice_metric(pred_labels, true_labels, labels, jaccard=True, empty_value=empty_value)
