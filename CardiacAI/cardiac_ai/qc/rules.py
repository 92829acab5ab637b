"""Rule-based quality checks of a short-axis segmentation, after the UK Biobank pipeline (Bai et al. 2018).

No model is needed: each structure must be present with enough area, labelled slices must be contiguous, the
mid-ventricular slice must show the LV and RV, and the myocardium must surround the LV blood pool. The rules are the
baseline the generative QC is compared with, and a safety net for cases it cannot judge (an empty stack).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError
from ..labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, MYOCARDIUM_CODES, RV_BLOOD_POOL, check_label_values

__all__ = ["RuleReport", "check_rules"]

log = logging.getLogger(__name__)

_CROSS = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class RuleReport:
    """Outcome of :func:`check_rules` for one (k, j, i) segmentation.

    Attributes
    ----------
    passed : bool
        True when no slice is flagged and there are no volume-level reasons.
    slice_flags : (k,) bool ndarray
        True for slices that break a rule.
    slice_reasons : tuple of k tuples of str
        Why each slice was flagged (empty tuple for a good slice).
    volume_reasons : tuple of str
        Rules broken by the whole stack (a structure missing or too small everywhere, no labels at all).
    labelled_range : (first, last) slice indices with any label, or None for an empty segmentation.
    mid_slice : int or None
        ``(first + last) // 2``, the slice that must show the LV and RV.
    lv_surround_fraction : (k,) float64 ndarray
        Fraction of the LV blood pool's outer border (4-connected) lying on myocardium; NaN without LV blood pool.
    """

    passed: bool
    slice_flags: NDArray[np.bool_]
    slice_reasons: tuple[tuple[str, ...], ...]
    volume_reasons: tuple[str, ...]
    labelled_range: tuple[int, int] | None
    mid_slice: int | None
    lv_surround_fraction: NDArray[np.float64]

    @property
    def reasons(self) -> list[str]:
        """Every reason, volume-level first, slice reasons prefixed with ``"slice k: "``."""
        out = list(self.volume_reasons)
        for k, reasons in enumerate(self.slice_reasons):
            out += [f"slice {k}: {reason}" for reason in reasons]
        return out


def _name(code: int) -> str:
    return LABELS[code].display_name if code in LABELS else f"label {code}"


def lv_surround_fractions(labels: NDArray[np.integer], pool_code: int = LV_BLOOD_POOL) -> NDArray[np.float64]:
    """(k,) fraction of the LV blood pool's outer border (4-neighbours) lying on myocardium (scar and MVO count as
    myocardium) on each slice; NaN on a slice without LV blood pool, 0 where the blood pool fills the slice.
    ``pool_code`` measures another structure's border instead (the RV's, to spot swapped codes)."""
    array = np.asarray(labels)
    myocardium = np.isin(array, MYOCARDIUM_CODES)
    lv = array == pool_code
    surround = np.full(array.shape[0], np.nan)
    for k in np.flatnonzero(np.any(lv, axis=(1, 2))):
        rows, columns = np.flatnonzero(np.any(lv[k], axis=1)), np.flatnonzero(np.any(lv[k], axis=0))
        # the border lies within one pixel of the pool: its box with a margin of one gives the same pixels, and
        # keeps a fine (768 px) slice from being dilated whole
        box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(columns[0] - 1, 0), columns[-1] + 2))
        pool = lv[k][box]
        border = ndimage.binary_dilation(pool, structure=_CROSS) & ~pool
        n_border = np.count_nonzero(border)
        surround[k] = np.count_nonzero(border & myocardium[k][box]) / n_border if n_border else 0.0
    return surround


def check_rules(
    labels: NDArray[np.integer],
    spacing_mm: Sequence[float],
    *,
    structures: Sequence[int] = (RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL),
    min_area_mm2: float = 30.0,
    min_surround_fraction: float = 0.8,
) -> RuleReport:
    """Check a short-axis segmentation against simple anatomical rules.

    Parameters
    ----------
    labels : (k, j, i) integer ndarray
        CardiacAI codes; scar (4) and MVO (5) count as myocardium.
    spacing_mm : (i, j[, k]) floats
        Pixel spacing in mm, ITK order (only i and j are used).
    structures : sequence of int
        Codes that must be present (default RV blood pool, LV myocardium, LV blood pool); the mid-slice rule
        checks those of the LV blood pool and RV blood pool that are listed.
    min_area_mm2 : float
        Smallest area for "present": a structure must reach it on at least one slice, and on the mid slice.
        30 mm^2 is about the 10 pixels at 1.8 mm of the UK Biobank rule.
    min_surround_fraction : float
        Smallest fraction of the LV blood pool's border that must touch myocardium, on every slice with LV blood;
        checked when both are listed in ``structures``.

    Returns
    -------
    RuleReport

    Raises
    ------
    InputError
        A label map that is not (k, j, i), holds codes outside the label table, or bad options.

    Notes
    -----
    Rules: (1) each listed structure covers at least ``min_area_mm2`` on some slice, else a volume reason;
    (2) slices without labels between the first and last labelled slice are flagged ("gap"); (3) the mid slice
    ``(first + last) // 2`` must hold the LV and RV blood pools with at least ``min_area_mm2`` each; (4) on every
    slice with LV blood pool, at least ``min_surround_fraction`` of the pixels just outside it (4-neighbours) must
    be myocardium; (5) every slice keeps some background (labels filling a slice are no heart). A stack without any
    label fails with the volume reason "no labels".
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InputError(f"labels must be a (k, j, i) label map, got shape {array.shape}.")
    check_label_values(array, what="labels")
    spacing = tuple(float(s) for s in spacing_mm)
    if len(spacing) not in (2, 3) or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise InputError(f"spacing_mm must be (i, j[, k]) positive numbers in mm, got {spacing_mm!r}.")
    structures = tuple(int(s) for s in structures)
    if not set(structures) <= {RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL}:
        raise InputError(f"structures must be codes among (1, 2, 3), got {structures!r}.")
    if not min_area_mm2 >= 0:
        raise InputError(f"min_area_mm2 must be >= 0, got {min_area_mm2!r}.")
    if not 0.0 <= min_surround_fraction <= 1.0:
        raise InputError(f"min_surround_fraction must be in [0, 1], got {min_surround_fraction!r}.")

    n_slices = array.shape[0]
    pixel_mm2 = spacing[0] * spacing[1]
    myocardium = np.isin(array, MYOCARDIUM_CODES)
    masks = {code: (myocardium if code == LV_MYOCARDIUM else array == code) for code in structures}
    areas = {code: np.count_nonzero(mask, axis=(1, 2)) * pixel_mm2 for code, mask in masks.items()}
    reasons: list[list[str]] = [[] for _ in range(n_slices)]
    volume_reasons: list[str] = []

    labelled = np.flatnonzero(np.any(array != 0, axis=(1, 2)))
    surround = np.full(n_slices, np.nan)
    if labelled.size == 0:
        volume_reasons.append("no labels: the segmentation is empty")
        labelled_range, mid = None, None
    else:
        labelled_range = (int(labelled[0]), int(labelled[-1]))
        mid = (labelled_range[0] + labelled_range[1]) // 2
        # (1) presence
        for code in structures:
            best = float(areas[code].max())
            if best < min_area_mm2:
                volume_reasons.append(
                    f"{_name(code)} missing or too small: largest area {best:.0f} mm^2 < {min_area_mm2:g} mm^2"
                )
        # (2) gaps
        for k in range(labelled_range[0], labelled_range[1] + 1):
            if k not in set(labelled.tolist()):
                reasons[k].append("gap: no labels between labelled slices")
        # (3) mid slice
        for code in (LV_BLOOD_POOL, RV_BLOOD_POOL):
            if code in structures and areas[code][mid] < min_area_mm2:
                reasons[mid].append(
                    f"mid slice lacks {_name(code)} ({areas[code][mid]:.0f} mm^2 < {min_area_mm2:g} mm^2)"
                )
        # (4) myocardium around the LV blood pool
        surround = lv_surround_fractions(array)
        for k in np.flatnonzero(np.isfinite(surround)):
            if {LV_MYOCARDIUM, LV_BLOOD_POOL} <= set(structures) and surround[k] < min_surround_fraction:
                reasons[k].append(
                    f"myocardium surrounds only {100 * surround[k]:.0f} % of the LV blood pool "
                    f"(< {100 * min_surround_fraction:.0f} %)"
                )

        # (5) background left on every slice
        for k in np.flatnonzero(~np.any(array == 0, axis=(1, 2))):
            reasons[k].append("no background: the labels fill the whole slice")

    slice_reasons = tuple(tuple(r) for r in reasons)
    flags = np.array([bool(r) for r in slice_reasons], dtype=bool)
    report = RuleReport(
        passed=not volume_reasons and not flags.any(),
        slice_flags=flags,
        slice_reasons=slice_reasons,
        volume_reasons=tuple(volume_reasons),
        labelled_range=labelled_range,
        mid_slice=mid,
        lv_surround_fraction=surround,
    )
    if not report.passed:
        log.info("Rule checks failed: %s", "; ".join(report.reasons))
    return report
