"""Where a segmentation stops before the heart does: slices beyond its labelled range where the heart is still seen.

QC judges the slices a segmentation labels; a segmentation that leaves out the top or bottom slices of the heart
(another tool's, or a reader's that stopped early) looks good slice by slice and loses volume unseen. The cine
localiser (``cine_localiser``, trained on whole-heart masks) gives an independent extent: a slice beyond the
labelled range on which it sees a heart cross-section of at least half the median labelled slice's is one the
segmentation should have labelled.

Two slices are required because the localiser commonly sees the heart one slice past where ACDC's annotators stop
(the valve plane): on 67 ACDC volumes (ED and ES, every third file) it did so on 16, on up to 0.65 of the median
area, but never on two slices at >= 0.5 of it; ground truth with its two end slices removed at both ends was
caught in all 67 (session 15, docs/benchmarks.md).

The apex needs a second measure: its slices are small, below half the median area, so a segmentation that left out
the two apical slices was caught in 4 of 200 ACDC volumes. Against the localiser's area on the segmentation's own end
slice instead (two adjacent slices beyond it at >= 0.3 of that and >= 100 mm^2), 126 of 200 are caught, and still
no ground truth is flagged (session 16, ``benchmarks/heart_presence.py``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

__all__ = ["unsegmented_heart_slices", "MIN_RELATIVE_AREA", "MIN_END_RELATIVE_AREA", "MIN_END_AREA_MM2",
           "MIN_UNSEGMENTED_SLICES"]

#: A slice beyond the segmentation counts when the localiser's heart there is at least this share of the median
#: heart area of the segmented slices.
MIN_RELATIVE_AREA = 0.5
#: Or, for the slices next to an end of the segmentation (one after the other), at least this share of the
#: localiser's heart area on that end slice, and at least MIN_END_AREA_MM2: the apex, whose slices are small.
MIN_END_RELATIVE_AREA = 0.3
MIN_END_AREA_MM2 = 100.0
#: How many such slices it takes to report a segmentation that stops early.
MIN_UNSEGMENTED_SLICES = 2


def unsegmented_heart_slices(
    label_array: NDArray[np.integer],
    heart_area_mm2: Sequence[float],
    *,
    min_relative_area: float = MIN_RELATIVE_AREA,
    min_end_relative_area: float = MIN_END_RELATIVE_AREA,
    min_end_area_mm2: float = MIN_END_AREA_MM2,
    min_slices: int = MIN_UNSEGMENTED_SLICES,
) -> list[int]:
    """Slices k beyond the labelled range of ``label_array`` where the heart is seen; empty below ``min_slices``.

    Parameters
    ----------
    label_array : (k, j, i) integer ndarray
        The segmentation (any non-zero code is labelled).
    heart_area_mm2 : (k,) floats
        Area of the heart an independent detector finds on each slice (e.g.
        :attr:`cardiac_ai.regions.pipeline.LocalisedHeart.slice_area_mm2`).
    min_relative_area, min_end_relative_area, min_end_area_mm2, min_slices
        See :data:`MIN_RELATIVE_AREA`, :data:`MIN_END_RELATIVE_AREA`, :data:`MIN_END_AREA_MM2` and
        :data:`MIN_UNSEGMENTED_SLICES`.

    Returns
    -------
    list of int
        Sorted slice indices: those beyond the labelled range at ``min_relative_area`` of the median when there
        are ``min_slices`` of them, and the run of slices next to either end at ``min_end_relative_area`` of that
        end slice's area (and ``min_end_area_mm2``) when it is ``min_slices`` long; empty for an empty
        segmentation (QC flags it anyway).

    Raises
    ------
    InputError
        ``heart_area_mm2`` not one value per slice.
    """
    labels = np.asarray(label_array)
    areas = np.asarray(heart_area_mm2, dtype=np.float64)
    if labels.ndim != 3 or areas.shape != (labels.shape[0],):
        raise InputError(f"heart_area_mm2 must give one area per slice of the (k, j, i) labels {labels.shape}, got "
                         f"shape {areas.shape}.")
    labelled = np.flatnonzero(labels.any(axis=(1, 2)))
    if labelled.size == 0:
        return []
    first, last = int(labelled[0]), int(labelled[-1])
    found: set[int] = set()
    reference = float(np.median(areas[first: last + 1]))
    if reference > 0:
        beyond = [k for k in range(labels.shape[0])
                  if (k < first or k > last) and areas[k] >= min_relative_area * reference]
        if len(beyond) >= min_slices:
            found.update(beyond)
    for end, step in ((first, -1), (last, 1)):
        if areas[end] < min_end_area_mm2:  # the localiser barely sees the end slice: no measure to compare with
            continue
        floor = max(min_end_relative_area * float(areas[end]), min_end_area_mm2)
        run = []
        k = end + step
        while 0 <= k < areas.size and areas[k] >= floor:
            run.append(k)
            k += step
        if len(run) >= min_slices:
            found.update(run)
    return sorted(found)
