"""Poor-quality segmentations and images with a known severity, to test quality control.

Every function takes a (k, j, i) array and returns a new, corrupted array of the same shape and dtype; the input
is never modified. Operations act slice by slice in-plane (k is never mixed). Random ones take a ``seed`` and are
nested in their severity: with the same seed, a more severe corruption contains the milder one (more holes are the
same holes plus others, more dropped slices the same slices plus others), so the true Dice falls monotonically.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError

__all__ = ["shift_labels", "erode_labels", "dilate_labels", "punch_holes", "drop_slices", "add_noise_to_image"]

log = logging.getLogger(__name__)

_CROSS = ndimage.generate_binary_structure(2, 1)


def _check_labels(labels: NDArray, name: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InputError(f"{name} must be a (k, j, i) label map, got {array.ndim} dimensions {array.shape}.")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise InputError(f"{name} must be an integer label map, got dtype {array.dtype}.")
    return array


def _check_count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise InputError(f"{name} must be a non-negative integer, got {value!r}.")
    return int(value)


def _codes(labels: np.ndarray, structures: Sequence[int] | None) -> list[int]:
    if structures is None:
        return [int(v) for v in np.unique(labels) if v != 0]
    return [int(s) for s in structures]


def shift_labels(labels: NDArray[np.integer], pixels: float, *, seed: int = 0) -> NDArray[np.integer]:
    """Translate every slice's labels by ``pixels`` in one random in-plane direction (filled with background).

    Parameters
    ----------
    labels : (k, j, i) integer ndarray
    pixels : float
        Shift length in pixels (rounded per axis); 0 returns a copy.
    seed : int
        Chooses the direction (the same for every slice and every ``pixels``).

    Returns
    -------
    (k, j, i) ndarray, same dtype.
    """
    array = _check_labels(labels)
    if not (isinstance(pixels, (int, float, np.integer, np.floating)) and math.isfinite(pixels) and pixels >= 0):
        raise InputError(f"pixels must be a non-negative number, got {pixels!r}.")
    angle = np.random.default_rng(seed).uniform(0.0, 2.0 * np.pi)
    dj, di = int(round(pixels * np.sin(angle))), int(round(pixels * np.cos(angle)))
    return ndimage.shift(array, (0, dj, di), order=0, mode="constant", cval=0).astype(array.dtype, copy=False)


def erode_labels(
    labels: NDArray[np.integer], iterations: int, *, structures: Sequence[int] | None = None
) -> NDArray[np.integer]:
    """Shrink each structure in-plane by ``iterations`` pixels (4-connected); removed pixels become background.

    Parameters
    ----------
    labels : (k, j, i) integer ndarray
    iterations : int
        Erosion steps; 0 returns a copy.
    structures : sequence of int, optional
        Codes to erode; default every non-zero code present.
    """
    array = _check_labels(labels)
    iterations = _check_count(iterations, "iterations")
    out = array.copy()
    if iterations == 0:
        return out
    structure = _CROSS[np.newaxis]  # in-plane only
    for code in _codes(array, structures):
        mask = array == code
        kept = ndimage.binary_erosion(mask, structure=structure, iterations=iterations)
        out[mask & ~kept] = 0
    return out


def dilate_labels(
    labels: NDArray[np.integer], iterations: int, *, structures: Sequence[int] | None = None
) -> NDArray[np.integer]:
    """Grow each structure in-plane by ``iterations`` pixels (4-connected), over background and other structures.

    Structures are grown in the order of ``structures`` (default: ascending codes), a later one overwriting an
    earlier one where their growth overlaps; every growth starts from the original map.
    """
    array = _check_labels(labels)
    iterations = _check_count(iterations, "iterations")
    out = array.copy()
    if iterations == 0:
        return out
    structure = _CROSS[np.newaxis]
    for code in _codes(array, structures):
        grown = ndimage.binary_dilation(array == code, structure=structure, iterations=iterations)
        out[grown] = code
    return out


def punch_holes(
    labels: NDArray[np.integer], n_holes: int, *, radius_px: float = 4.0, seed: int = 0
) -> NDArray[np.integer]:
    """Set discs of radius ``radius_px`` around ``n_holes`` random labelled pixels to background.

    The centres are the first ``n_holes`` of a seeded permutation of the labelled pixels, so a larger ``n_holes``
    keeps the smaller one's holes. Each disc stays in its slice.
    """
    array = _check_labels(labels)
    n_holes = _check_count(n_holes, "n_holes")
    if not (isinstance(radius_px, (int, float)) and radius_px > 0):
        raise InputError(f"radius_px must be a positive number, got {radius_px!r}.")
    out = array.copy()
    foreground = np.argwhere(array != 0)
    if n_holes == 0 or foreground.size == 0:
        return out
    order = np.random.default_rng(seed).permutation(len(foreground))
    r = int(math.ceil(radius_px))
    dj, di = np.mgrid[-r:r + 1, -r:r + 1]
    disc = dj**2 + di**2 <= radius_px**2
    offsets = np.stack([dj[disc], di[disc]], axis=1)
    for k, j, i in foreground[order[:n_holes]]:
        rows, columns = j + offsets[:, 0], i + offsets[:, 1]
        inside = (rows >= 0) & (rows < array.shape[1]) & (columns >= 0) & (columns < array.shape[2])
        out[k, rows[inside], columns[inside]] = 0
    return out


def drop_slices(labels: NDArray[np.integer], n_slices: int, *, seed: int = 0) -> NDArray[np.integer]:
    """Erase the labels of ``n_slices`` random labelled slices (a missed slice); nested in ``n_slices``."""
    array = _check_labels(labels)
    n_slices = _check_count(n_slices, "n_slices")
    out = array.copy()
    labelled = np.flatnonzero(np.any(array != 0, axis=(1, 2)))
    if n_slices > len(labelled):
        raise InputError(
            f"drop_slices cannot drop {n_slices} slices: only {len(labelled)} slices hold labels."
        )
    chosen = labelled[np.random.default_rng(seed).permutation(len(labelled))[:n_slices]]
    out[chosen] = 0
    return out


def add_noise_to_image(image: NDArray[np.floating], variance: float, *, seed: int = 0) -> NDArray[np.float32]:
    """Add white Gaussian noise, as the paper's attack on a segmentation model.

    Parameters
    ----------
    image : (k, j, i) real ndarray
    variance : float
        Noise variance as a fraction of the squared intensity range (1st to 99th percentile) of ``image``:
        0.01 adds noise whose standard deviation is 10 % of that range. 0 returns a float32 copy.
    seed : int
        Noise generator seed; the same seed gives the same noise pattern, scaled by ``sqrt(variance)``.

    Returns
    -------
    (k, j, i) float32 ndarray
    """
    array = np.asarray(image)
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"image must be a numeric (k, j, i) array, got dtype {array.dtype} shape {array.shape}.")
    if not (isinstance(variance, (int, float, np.floating)) and math.isfinite(variance) and variance >= 0):
        raise InputError(f"variance must be a non-negative number, got {variance!r}.")
    low, high = np.percentile(array, (1.0, 99.0))
    scale = float(high - low) or float(np.ptp(array))
    if scale == 0:
        raise InputError("image is constant; a noise variance relative to its intensity range is undefined.")
    noise = np.random.default_rng(seed).standard_normal(array.shape)
    return (array + noise * math.sqrt(variance) * scale).astype(np.float32)
