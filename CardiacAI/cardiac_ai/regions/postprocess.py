"""Anatomical clean-up of short-axis cine label maps (RV blood pool, LV myocardium, LV blood pool).

Segmentation networks make a few typical mistakes, most often in basal and apical slices: a blob of "RV" in the
liver or the atria, a patch of myocardium away from the heart, a hole in a blood pool, a myocardial ring whose
cavity is partly unlabelled. :func:`postprocess_cine_labels` removes or fills these with simple, conservative
rules and lists what it changed.

Rules, in order (each pass; passes repeat until nothing changes, so the result is a fixed point and
post-processing twice equals post-processing once):

1. **One LV.** The LV (myocardium and blood pool together) keeps its largest 3D connected component
   (26-connectivity: in-plane 8-neighbours and every neighbour in the adjacent slices, so a slice shifted by a
   pixel between breath-holds stays connected). Myocardium and blood pool are *not* reduced to their own largest
   components: a single slice whose cavity the network missed would otherwise delete half the cavity.
2. **Myocardium around the cavity.** In a slice where the largest myocardium piece (in-plane 8-connected)
   touches the LV blood pool, the myocardium pieces that do not touch it are removed; in a slice without blood
   pool (the apical cap), or whose main myocardium touches none (a stray speck of "cavity" beside the cap), they
   all stay. Then, likewise, blood-pool pieces that do not touch the myocardium are removed where the largest
   blood-pool piece does. The largest piece of a structure in a slice is never removed by this rule.
3. **One RV, attached to the LV.** RV 3D components (26-connectivity) that neither touch the LV nor come within
   ``rv_max_gap_mm`` of it are removed; of the rest the largest is kept. Without any LV (myocardium or blood pool)
   the RV touches nothing and is removed too, with a note: an RV alone is no heart (the issue's "never return an
   RV or LV touching nothing"). Likewise an LV blood pool in a map without any myocardium is removed; myocardium
   alone (an apical cap) stays.
4. **No specks.** In each slice, pieces of a structure smaller than ``min_component_mm2`` are removed unless the
   piece is that structure's largest in the slice (a small apical cap or a thin basal RV stays). A slice's largest
   piece goes too when it is smaller than ``min_lone_piece_mm2`` (default one pixel of the 1.5 mm grid the cine
   networks work on) and the structure has a piece of ``min_component_mm2`` elsewhere: a network cannot draw less
   than a pixel, so such a piece is an artefact of restoring its labels onto finer pixels (a 1 mm² fleck of
   myocardium beyond the apex of a 0.66 mm cine, which QC then flagged).
5. **No holes.** Per slice: pixels enclosed by the LV blood pool become LV blood pool (background, and
   myocardium islands inside the cavity, which ACDC counts as cavity: papillary muscles); background enclosed by
   the RV blood pool becomes RV; background pinholes enclosed by the myocardium alone and smaller than
   ``min_component_mm2`` become myocardium; the remaining background enclosed by myocardium and LV blood pool
   together (a cavity the network left unlabelled inside the ring) becomes LV blood pool when that slice has LV
   blood pool (an apical ring without any blood pool is left as it is).

Nothing is relabelled across structures other than in rule 5, and no rule removes the last piece of a
myocardium, so a non-empty map with a plausible heart never becomes empty; a map of RV or blood pool alone does. Work is done on the bounding box of the labels.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError
from ..labels import BACKGROUND, LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL, values_present

__all__ = ["PostprocessResult", "postprocess_cine_labels"]

log = logging.getLogger(__name__)

_CINE_CODES = (BACKGROUND, RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL)
_MAX_PASSES = 5

#: In-plane 8-connectivity, no link across slices: one 3D ``ndimage.label`` call labels every slice separately.
_IN_PLANE_8 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_8[1] = True
#: In-plane 4-connectivity, for background (the complement of 8-connected foreground), as binary_fill_holes.
_IN_PLANE_4 = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE_4[1] = ndimage.generate_binary_structure(2, 1)
#: Full 3D 26-connectivity.
_CONNECTED_26 = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class PostprocessResult:
    """Result of :func:`postprocess_cine_labels`.

    Attributes
    ----------
    labels : (k, j, i) ndarray
        Cleaned label map, same shape and dtype as the input.
    notes : list of str
        One human-readable line per change (or why nothing was done), in the order applied.
    n_changed_voxels : int
        Voxels whose label differs from the input.
    """

    labels: np.ndarray
    notes: list[str] = field(default_factory=list)
    n_changed_voxels: int = 0


def _name(code: int) -> str:
    return LABELS[code].display_name


def _check_inputs(
    labels: object,
    spacing_kji_mm: Sequence[float],
    min_component_mm2: float | None,
    rv_max_gap_mm: float,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InputError(
            f"labels must be a (k, j, i) short-axis label map, got a {array.ndim}D array of shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"labels must have an integer dtype (uint8 label codes), got {array.dtype}.")
    present = values_present(array)
    unexpected = [int(v) for v in present if int(v) not in _CINE_CODES]
    if unexpected:
        raise InputError(
            f"labels holds codes {unexpected}; cine post-processing handles only 0 background, 1 RV blood pool, "
            "2 LV myocardium, 3 LV blood pool. Map other tissues (scar, MVO) to myocardium first."
        )
    try:
        spacing = tuple(float(s) for s in spacing_kji_mm)
    except (TypeError, ValueError) as e:
        raise InputError(f"spacing_kji_mm must be 3 numbers in mm, got {spacing_kji_mm!r}.") from e
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise InputError(
            f"spacing_kji_mm must be 3 positive finite voxel sizes in mm in (k, j, i) order "
            f"(Geometry.spacing_kji_mm), got {spacing_kji_mm!r}."
        )
    if min_component_mm2 is not None and not (np.isfinite(min_component_mm2) and min_component_mm2 >= 0):
        raise InputError(f"min_component_mm2 must be >= 0 mm² or None, got {min_component_mm2!r}.")
    if not (np.isfinite(rv_max_gap_mm) and rv_max_gap_mm >= 0):
        raise InputError(f"rv_max_gap_mm must be >= 0 mm, got {rv_max_gap_mm!r}.")
    return array, spacing  # type: ignore[return-value]


def _component_slices(components: np.ndarray, n: int) -> NDArray[np.intp]:
    """k index of each in-plane component 1..n (entry 0 unused)."""
    k_of = np.zeros(n + 1, dtype=np.intp)
    for index, box in enumerate(ndimage.find_objects(components, max_label=n), start=1):
        if box is not None:
            k_of[index] = box[0].start
    return k_of


def _keep_largest_lv(work: np.ndarray, notes: list[str]) -> None:
    """Rule 1: keep the largest 26-connected component of myocardium + LV blood pool; a blood pool without any
    myocardium in the map touches nothing and goes."""
    pool = work == LV_BLOOD_POOL
    if pool.any() and not (work == LV_MYOCARDIUM).any():
        work[pool] = BACKGROUND
        notes.append(f"{_name(LV_BLOOD_POOL)}: removed ({int(pool.sum())} voxels): there is no myocardium in the map "
                     "around it.")
    lv = (work == LV_MYOCARDIUM) | (work == LV_BLOOD_POOL)
    components, n = ndimage.label(lv, _CONNECTED_26)
    if n <= 1:
        return
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    drop = lv & (components != int(np.argmax(sizes)))
    work[drop] = BACKGROUND
    notes.append(
        f"LV: removed {n - 1} component(s) ({int(drop.sum())} voxels) of myocardium/blood pool not connected to "
        "the largest LV component."
    )


def _remove_not_touching(work: np.ndarray, code: int, other: int, notes: list[str], why: str) -> None:
    """Remove in-plane pieces of ``code`` not touching ``other``, in slices where the largest piece of ``code`` does.

    The largest piece of a slice is never removed, so a speck cannot make the main structure disappear.
    """
    mask = work == code
    other_mask = work == other
    if not mask.any() or not other_mask.any():
        return
    components, n = ndimage.label(mask, _IN_PLANE_8)
    near_other = ndimage.binary_dilation(other_mask, _IN_PLANE_8)
    touching = np.zeros(n + 1, dtype=bool)
    touching[np.unique(components[near_other & mask])] = True
    touching[0] = False
    k_of = _component_slices(components, n)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    sizes[0] = 0
    largest_in_slice = np.zeros(work.shape[0], dtype=sizes.dtype)
    np.maximum.at(largest_in_slice, k_of[1:], sizes[1:])
    largest_touches = np.zeros(work.shape[0], dtype=bool)
    largest_touches[k_of[touching & (sizes == largest_in_slice[k_of])]] = True
    drop_label = ~touching & largest_touches[k_of]
    drop_label[0] = False
    if not drop_label.any():
        return
    drop = drop_label[components]
    work[drop] = BACKGROUND
    notes.append(
        f"{_name(code)}: removed {int(drop_label.sum())} piece(s) ({int(drop.sum())} voxels) {why}."
    )


def _keep_attached_rv(
    work: np.ndarray, spacing: tuple[float, float, float], rv_max_gap_mm: float, notes: list[str]
) -> None:
    """Rule 3: keep the largest RV 3D component that touches the LV or lies within ``rv_max_gap_mm`` of it."""
    rv = work == RV_BLOOD_POOL
    if not rv.any():
        return
    components, n = ndimage.label(rv, _CONNECTED_26)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    lv = (work == LV_MYOCARDIUM) | (work == LV_BLOOD_POOL)
    if lv.any():
        distance_mm = ndimage.distance_transform_edt(~lv, sampling=spacing)
        nearest_mm = np.asarray(ndimage.minimum(distance_mm, components, index=np.arange(1, n + 1)))
        # A 26-neighbour of the LV is at most one voxel diagonal away: touching always counts as attached.
        limit_mm = max(float(rv_max_gap_mm), float(np.sqrt(np.sum(np.square(spacing))))) + 1e-6
        attached = nearest_mm <= limit_mm
        if not attached.any():
            work[rv] = BACKGROUND
            notes.append(
                f"{_name(RV_BLOOD_POOL)}: removed all {n} component(s) ({int(rv.sum())} voxels): none touches the "
                f"LV or lies within {rv_max_gap_mm:g} mm of it."
            )
            return
        keep = int(np.argmax(np.where(attached, sizes, -1))) + 1
        why = "not the largest component attached to the LV"
    else:
        work[rv] = BACKGROUND
        notes.append(f"{_name(RV_BLOOD_POOL)}: removed all {n} component(s) ({int(rv.sum())} voxels): there is no "
                     "LV in the map for them to belong to.")
        return
    if n > 1:
        drop = rv & (components != keep)
        work[drop] = BACKGROUND
        notes.append(f"{_name(RV_BLOOD_POOL)}: removed {n - 1} component(s) ({int(drop.sum())} voxels), {why}.")


def _remove_specks(
    work: np.ndarray, min_pixels: float, min_component_mm2: float, lone_pixels: float, notes: list[str]
) -> None:
    """Rule 4: per slice, remove pieces below ``min_pixels`` that are not the structure's largest in that slice, and
    largest pieces below ``lone_pixels`` where the structure has a piece of ``min_pixels`` somewhere."""
    for code in (RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL):
        mask = work == code
        if not mask.any():
            continue
        components, n = ndimage.label(mask, _IN_PLANE_8)
        if n <= 1:
            continue
        sizes = np.bincount(components.ravel(), minlength=n + 1)
        sizes[0] = 0
        k_of = _component_slices(components, n)
        largest_in_slice = np.zeros(work.shape[0], dtype=sizes.dtype)
        np.maximum.at(largest_in_slice, k_of[1:], sizes[1:])
        drop_label = (sizes < min_pixels) & (sizes < largest_in_slice[k_of])
        if sizes.max() >= min_pixels:
            drop_label |= sizes < lone_pixels
        drop_label[0] = False
        if drop_label.any():
            drop = drop_label[components]
            work[drop] = BACKGROUND
            notes.append(
                f"{_name(code)}: removed {int(drop_label.sum())} island(s) ({int(drop.sum())} voxels) smaller than "
                f"{min_component_mm2:g} mm² in their slice."
            )


def _holes(mask: np.ndarray) -> np.ndarray:
    """Pixels not in ``mask`` enclosed by it within their slice (4-connected background not reaching the edge)."""
    background, n = ndimage.label(~mask, _IN_PLANE_4)
    if n == 0:
        return np.zeros_like(mask)
    edge = np.concatenate(
        [background[:, 0, :].ravel(), background[:, -1, :].ravel(), background[:, :, 0].ravel(),
         background[:, :, -1].ravel()]
    )
    enclosed = np.ones(n + 1, dtype=bool)
    enclosed[0] = False
    enclosed[edge] = False
    return enclosed[background]


def _fill(work: np.ndarray, where: np.ndarray, code: int, notes: list[str], what: str) -> None:
    if where.any():
        work[where] = code
        notes.append(f"{_name(code)}: filled {int(where.sum())} voxel(s) of {what}.")


def _small_holes(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """Holes of ``mask`` (see :func:`_holes`) whose in-plane area is below ``min_pixels``."""
    holes = _holes(mask)
    if not holes.any():
        return holes
    components, n = ndimage.label(holes, _IN_PLANE_4)
    sizes = np.bincount(components.ravel(), minlength=n + 1)
    small = sizes < min_pixels
    small[0] = False
    return small[components]


def _fill_holes(work: np.ndarray, min_pixels: float | None, min_component_mm2: float, notes: list[str]) -> None:
    """Rule 5: per-slice hole filling of the blood pools, the myocardial wall and the cavity inside the ring."""
    pool = work == LV_BLOOD_POOL
    if pool.any():
        inside = _holes(pool) & ((work == BACKGROUND) | (work == LV_MYOCARDIUM))
        _fill(work, inside, LV_BLOOD_POOL, notes, "holes in the LV blood pool")
    rv = work == RV_BLOOD_POOL
    if rv.any():
        _fill(work, _holes(rv) & (work == BACKGROUND), RV_BLOOD_POOL, notes, "holes in the RV blood pool")
    myocardium = work == LV_MYOCARDIUM
    if min_pixels is not None and myocardium.any():
        # Before the cavity rule, so that a pinhole in the wall does not become a speck of blood pool.
        gaps = _small_holes(myocardium, min_pixels) & (work == BACKGROUND)
        _fill(work, gaps, LV_MYOCARDIUM, notes, f"holes smaller than {min_component_mm2:g} mm² in the myocardium")
    pool = work == LV_BLOOD_POOL
    if pool.any():
        slices_with_pool = pool.any(axis=(1, 2))
        ring = _holes(pool | (work == LV_MYOCARDIUM)) & (work == BACKGROUND) & slices_with_pool[:, None, None]
        _fill(work, ring, LV_BLOOD_POOL, notes, "unlabelled cavity inside the myocardium")


def _one_pass(
    work: np.ndarray,
    spacing: tuple[float, float, float],
    min_component_mm2: float | None,
    min_lone_piece_mm2: float,
    rv_max_gap_mm: float,
    notes: list[str],
) -> None:
    _keep_largest_lv(work, notes)
    _remove_not_touching(
        work, LV_MYOCARDIUM, LV_BLOOD_POOL, notes,
        "not touching the LV blood pool, in a slice where the main myocardium does",
    )
    _remove_not_touching(
        work, LV_BLOOD_POOL, LV_MYOCARDIUM, notes,
        "not touching the myocardium, in a slice where the main blood pool does",
    )
    _keep_attached_rv(work, spacing, rv_max_gap_mm, notes)
    pixel_mm2 = spacing[1] * spacing[2]
    min_pixels = float(min_component_mm2) / pixel_mm2 if min_component_mm2 else None
    if min_component_mm2 and min_pixels is not None:
        lone_pixels = min(min_lone_piece_mm2, min_component_mm2) / pixel_mm2
        _remove_specks(work, min_pixels, min_component_mm2, lone_pixels, notes)
    _fill_holes(work, min_pixels, float(min_component_mm2 or 0.0), notes)


def postprocess_cine_labels(
    labels: NDArray[np.integer],
    *,
    spacing_kji_mm: Sequence[float],
    min_component_mm2: float | None = 10.0,
    min_lone_piece_mm2: float = 2.25,
    rv_max_gap_mm: float = 5.0,
) -> PostprocessResult:
    """Remove implausible pieces from a cine label map and fill its holes (rules in the module docstring).

    Parameters
    ----------
    labels : (k, j, i) integer ndarray
        Label map with codes 0 background, 1 RV blood pool, 2 LV myocardium, 3 LV blood pool (usually uint8);
        slices along k. Not modified.
    spacing_kji_mm : sequence of 3 float
        Voxel size in mm in array order (k, j, i), e.g. ``volume.geometry.spacing_kji_mm``.
    min_component_mm2 : float or None
        In-plane area in mm² below which a piece of a structure is removed from its slice, unless it is that
        structure's largest piece there (default 10 mm², about 4 pixels of 1.5 mm). None or 0 turns this off.
    min_lone_piece_mm2 : float
        A slice's largest piece of a structure is removed when smaller than this (and than ``min_component_mm2``),
        if the structure has a piece of ``min_component_mm2`` elsewhere (default 2.25 mm², one pixel of the cine
        networks' 1.5 mm grid: less is a resampling artefact). 0 keeps every slice's largest piece.
    rv_max_gap_mm : float
        An RV component is kept only if it touches the LV or comes within this distance of it (3D, in mm;
        default 5 mm tolerates a thin unlabelled septum edge).

    Returns
    -------
    PostprocessResult
        ``labels`` with the input's shape and dtype, ``notes`` listing every change (an empty input gives one
        note and an unchanged copy), ``n_changed_voxels``. A clean map is returned unchanged; applying the
        function to its own output changes nothing.

    Raises
    ------
    InputError
        If ``labels`` is not a 3D integer array, holds codes other than 0-3, or a spacing or threshold is not
        a valid positive number.
    """
    array, spacing = _check_inputs(labels, spacing_kji_mm, min_component_mm2, rv_max_gap_mm)
    if not (np.isfinite(min_lone_piece_mm2) and min_lone_piece_mm2 >= 0):
        raise InputError(f"min_lone_piece_mm2 must be >= 0 mm², got {min_lone_piece_mm2!r}.")
    if not array.any():
        return PostprocessResult(labels=array.copy(), notes=["empty label map: nothing to post-process."])
    # Work on the in-plane bounding box of the labels plus a background margin of one pixel (hole detection needs
    # the background around the heart to reach the crop edge, as it reaches the image edge).
    occupied_j = np.flatnonzero(array.any(axis=(0, 2)))
    occupied_i = np.flatnonzero(array.any(axis=(0, 1)))
    box = (
        slice(None),
        slice(max(occupied_j[0] - 1, 0), occupied_j[-1] + 2),
        slice(max(occupied_i[0] - 1, 0), occupied_i[-1] + 2),
    )
    work = array[box].astype(np.uint8)
    notes: list[str] = []
    for _ in range(_MAX_PASSES):
        before = work.copy()
        _one_pass(work, spacing, min_component_mm2, min_lone_piece_mm2, rv_max_gap_mm, notes)
        if np.array_equal(before, work):
            break
    else:
        log.warning("Post-processing did not settle after %d passes; returning the last pass.", _MAX_PASSES)
        notes.append(f"post-processing did not settle after {_MAX_PASSES} passes.")
    result = array.copy()
    result[box] = work.astype(array.dtype)
    n_changed = int(np.count_nonzero(result != array))
    if not notes:
        notes.append("no change: the label map already satisfies every rule.")
    log.info("Post-processing changed %d voxels (%d note(s)).", n_changed, len(notes))
    return PostprocessResult(labels=result, notes=notes, n_changed_voxels=n_changed)
