"""T1 or T2 map in, myocardial contours and statistics out: segmentation, contour fitting and the numbers.

One network (registry name ``map_myocardium``) segments native T1 and T2 maps alike into RV blood pool (1), LV
myocardium (2) and LV blood pool (3). Its input is the map resampled to the model's spacing and normalised by the
map's own 1st and 99th percentiles (the model card's ``input_spec``): percentile normalisation is scale-free, so a
T1 map (0-2000 ms) and a T2 map (0-150 ms) both arrive in [0, 1] without a kind-specific scale. No separate heart
localiser is needed: when the field of view is larger than the model's crop, the same network first runs over the
whole view at twice its spacing (:data:`LOCATE_SPACING_FACTOR`; the middle slice, every slice when that one shows no
LV), the centre of the largest LV component it finds places a crop of the model's input size, and the network
segments that crop at full resolution (a view no larger than the crop, or one where the coarse pass finds no LV, is
segmented whole, padded to a multiple of 32 pixels). Per slice the largest LV component (myocardium + blood pool)
and the largest RV component are kept.

The labels then go through :func:`~cardiac_ai.mapping.contours.fit_myocardial_contours` (the paper's Figure 4; its
sub-pixel boundary follows the network's probabilities between pixel centres), and the myocardium and LV blood pool
are redrawn from the fitted contours: every statistic is measured inside the contours that are reported, not inside
the raw network output. The RV blood pool is kept only to find the RV
insertion points (AHA segments, septal ROI); it is not part of the written label map.

Map values and what they mean
-----------------------------
* ``0`` means "not fitted" (scanner maps are 0 in air; :func:`cardiac_ai.pipeline.fit_map_file` writes failed
  pixels as 0). Zero pixels inside a region are left out of its statistics and counted (``n_nan``).
* NaN or infinite values and negative values are refused (:class:`~cardiac_ai.errors.InputError` with their
  counts): no scanner writes them, they mean a wrong file (a phase or difference image, an unmasked fit). Set
  unfitted pixels to 0.
* Values above the physical maximum (:data:`~cardiac_ai.mapping.fitting.T1_MAX_MS` = 5000 ms for T1,
  :data:`~cardiac_ai.mapping.fitting.T2_MAX_MS` = 1000 ms for T2) are treated as not fitted, with a warning, when
  they are at most :data:`MAX_MASKED_FRACTION` (1 %) of the non-zero pixels (noise or fluid in scanner maps);
  more than that is refused (wrong units or wrong kind).
* The kind is checked against the values: the median of the non-zero pixels of a native T1 map lies near
  900-1300 ms, of a T2 map near 30-60 ms. A median above 400 ms with ``kind="t2"``, or below 200 ms with
  ``kind="t1"`` (unless ``post_contrast``), is refused as a kind (or unit) mistake.

Slice levels
------------
Slices are taken to run from the base (k = 0) to the apex, as ACDC stacks and the semi-synthetic mapping cases do:
by default a slice at relative position ``k / (n - 1)`` below 1/3 is basal, below 2/3 mid-ventricular, else
apical (three slices: base, mid, apex; one slice: mid). Pass ``levels`` for any other order.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError, ModelError
from ..geometry import InPlaneTurn, Volume, short_axis_display_turn
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from ..progress import ProgressCallback, report
from ..provenance import ModelUse, Provenance
from .contours import SliceContours, contours_to_mask, fit_myocardial_contours
from .fitting import T1_MAX_MS, T2_MAX_MS
from .statistics import (
    AHA_SEGMENT_NAMES,
    MapStatistics,
    aha_segments,
    find_rv_insertion,
    lv_blood_pool_t1,
    myocardial_statistics,
    segment_statistics,
    septal_roi,
)

__all__ = [
    "MAP_KINDS",
    "MAP_MODEL_NAME",
    "MAX_MASKED_FRACTION",
    "MIN_FITTED_FRACTION",
    "MIN_MYOCARDIUM_AREA_MM2",
    "MapAnalysis",
    "MappingModels",
    "analyse_map",
    "check_map_values",
    "default_levels",
    "segment_map",
]

log = logging.getLogger(__name__)

#: Registry name of the myocardium segmentation model for T1 and T2 maps.
MAP_MODEL_NAME = "map_myocardium"
#: Map kinds :func:`analyse_map` reads.
MAP_KINDS: tuple[str, str] = ("t1", "t2")
#: Largest fraction of the non-zero pixels above the physical maximum that is masked (with a warning) rather
#: than refused.
MAX_MASKED_FRACTION = 0.01

_LEVELS = ("base", "mid", "apex")
_MAX_MS = {"t1": T1_MAX_MS, "t2": T2_MAX_MS}
#: Median (ms) of the non-zero pixels above which a map cannot be a T2 map, and below which it cannot be a native
#: T1 map (native T1 maps: about 900-1300 ms; T2 maps: about 30-60 ms).
_T2_MEDIAN_LIMIT_MS = 400.0
#: Below this median a "T2 map" is one in seconds (about 0.05) or a T1 map in seconds (about 1): tissue T2 is 20-100 ms.
_T2_MEDIAN_FLOOR_MS = 5.0
_T1_MEDIAN_LIMIT_MS = 200.0
_POST_CONTRAST_T1_MEDIAN_LIMIT_MS = 50.0
#: A slice whose contours enclose less myocardium than this (mm^2) has no detectable myocardium (a short-axis
#: myocardial ring covers several cm^2 even at the apex).
MIN_MYOCARDIUM_AREA_MM2 = 100.0
#: A slice whose segmented myocardium is fitted (non-zero) in less than this fraction of its pixels has no
#: detectable myocardium: the network answered on an unfitted (empty) slice.
MIN_FITTED_FRACTION = 0.5
#: Erosion of the LV blood pool before its statistics, away from the myocardium and papillary muscles.
_BLOOD_POOL_EROSION_MM = 2.0
#: Network inputs are padded to a multiple of this (FlexibleUNet's ResNet encoder downsamples 5 times).
_SIZE_MULTIPLE = 32

Kind = Literal["t1", "t2"]
Level = Literal["base", "mid", "apex"]


# -- models --------------------------------------------------------------------------------------------------
@dataclass
class MappingModels:
    """The loaded model of the mapping pipeline (a ``LoadedModel`` from :class:`~cardiac_ai.models.ModelRegistry`).

    ``segmenter`` outputs 4 channels: background, RV blood pool, LV myocardium, LV blood pool.
    """

    segmenter: Any

    @classmethod
    def from_registry(cls, registry: Any, *, device: Any = None, version: str | None = None) -> "MappingModels":
        """Load ``map_myocardium`` (highest version unless ``version``).

        Raises
        ------
        ModelError
            If the model is missing or its weights do not load (the message says how to get it), or it does not
            output the 4 label channels.
        """
        try:
            segmenter = registry.load(MAP_MODEL_NAME, version, device=device)
        except ModelError as e:
            raise ModelError(
                f"{e} The mapping model is trained with scripts/train_mapping.py; point --models-dir or "
                "CARDIACAI_MODELS at the folder that holds it."
            ) from e
        channels = segmenter.card.network_kwargs.get("out_channels")
        if channels is not None and int(channels) != 4:
            raise ModelError(
                f"{MAP_MODEL_NAME} {segmenter.card.version} outputs {channels} channels; the mapping pipeline needs "
                "4 (background, RV blood pool, LV myocardium, LV blood pool). Retrain with scripts/train_mapping.py."
            )
        return cls(segmenter)

    def uses(self) -> list[ModelUse]:
        """Provenance entries of the models."""
        return [self.segmenter.model_use()]


# -- result --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapAnalysis:
    """Result of :func:`analyse_map` on one map (k, j, i).

    Attributes
    ----------
    kind : "t1" or "t2".
    labels : Volume (k, j, i) uint8 on the map's geometry: 2 LV myocardium, 3 LV blood pool, drawn from the fitted
        contours (what ``labels.nii.gz`` holds).
    labels_with_rv : the same plus 1 RV blood pool from the network (used for the RV insertion points).
    segment_map : Volume (k, j, i) int8: AHA segment 1-16 of each myocardium pixel, 0 elsewhere and in slices
        whose RV insertion points were not found.
    contours : one :class:`~cardiac_ai.mapping.contours.SliceContours` per slice, with LPS points in mm.
    levels : "base", "mid" or "apex" per slice.
    myocardium : statistics over the myocardium of every slice (eroded by ``erosion_mm``), in ms; None when no
        slice has myocardium.
    slices : per-slice myocardial statistics (None where the slice has none).
    segments : AHA segment (1-16) -> statistics, for the levels whose RV insertion points were found.
    septal : slice index -> statistics of the septal ROI, for mid-ventricular slices.
    lv_blood_pool : statistics of the LV blood pool eroded by 2 mm (blood T1 for ECV), or None.
    slice_warnings : slice index -> warnings for that slice (no myocardium, no RV insertion, ...).
    input_summary : counts of zero (not fitted) and masked (above the physical maximum) pixels, median value.
    erosion_mm : erosion of the myocardium before its statistics.
    provenance : model, parameters, device, timings and every warning.
    """

    kind: str
    labels: Volume
    labels_with_rv: Volume
    segment_map: Volume
    contours: tuple[SliceContours, ...]
    levels: tuple[str, ...]
    myocardium: MapStatistics | None
    slices: tuple[MapStatistics | None, ...]
    segments: dict[int, MapStatistics]
    septal: dict[int, MapStatistics]
    lv_blood_pool: MapStatistics | None
    slice_warnings: dict[int, tuple[str, ...]]
    input_summary: dict[str, Any]
    erosion_mm: float
    provenance: Provenance

    @property
    def quantity(self) -> str:
        """"T1" or "T2"."""
        return self.kind.upper()

    def segment_medians(self) -> dict[int, float]:
        """AHA segment -> median in ms (NaN where the segment has no pixel), for :func:`bullseye_plot`."""
        return {segment: stats.median for segment, stats in self.segments.items()}

    def stats_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``stats.json``: global, per-slice, per-segment, septal and blood-pool values."""

        def entry(stats: MapStatistics | None) -> dict[str, Any] | None:
            return None if stats is None else stats.to_dict()

        return {
            "kind": self.kind,
            "quantity": self.quantity,
            "units": "ms",
            "erosion_mm": self.erosion_mm,
            "statistics": "mean, sample SD, median, quartiles (q1, q3, iqr), 5th/95th percentiles, pixel count; "
                          "zero (not fitted) pixels are left out and counted in n_nan",
            "myocardium": entry(self.myocardium),
            "slices": [
                {
                    "slice_index": k,
                    "level": self.levels[k],
                    "myocardium": entry(self.slices[k]),
                    "warnings": list(self.slice_warnings.get(k, ())),
                }
                for k in range(len(self.levels))
            ],
            "segments": {
                str(segment): {"name": AHA_SEGMENT_NAMES[segment], **stats.to_dict()}
                for segment, stats in sorted(self.segments.items())
            },
            "septal_roi": [
                {"slice_index": k, "level": self.levels[k], **stats.to_dict()}
                for k, stats in sorted(self.septal.items())
            ],
            "lv_blood_pool": entry(self.lv_blood_pool),
            "input": dict(self.input_summary),
            "warnings": list(self.provenance.warnings),
        }

    def contours_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``contours.json``: per slice the endo- and epicardial points (LPS mm and pixels)."""
        return {
            "coordinates": "points_lps_mm: LPS millimetres (x right-to-left, y anterior-to-posterior, z inferior-to-"
                           "superior); points_px: (row, column) pixel centres of the map",
            "geometry": self.labels.geometry.to_dict(),
            "slices": [
                {"level": self.levels[k], **contours.to_dict()} for k, contours in enumerate(self.contours)
            ],
        }


# -- validation ----------------------------------------------------------------------------------------------
def default_levels(n_slices: int) -> tuple[str, ...]:
    """Slice levels by position, base at k = 0: thirds of the stack (one slice: "mid")."""
    if n_slices < 1:
        raise InputError(f"A map needs at least one slice, got {n_slices}.")
    if n_slices == 1:
        return ("mid",)
    positions = np.arange(n_slices) / (n_slices - 1)
    return tuple(_LEVELS[min(int(p * 3), 2)] for p in positions)


def _check_levels(levels: Sequence[str] | None, n_slices: int) -> tuple[str, ...]:
    if levels is None:
        return default_levels(n_slices)
    if isinstance(levels, str):
        levels = [levels]
    chosen = tuple(str(level) for level in levels)
    if len(chosen) != n_slices:
        raise InputError(
            f"levels has {len(chosen)} entries but the map has {n_slices} slices; give one of {list(_LEVELS)} per "
            "slice, in slice (k) order."
        )
    unknown = sorted({level for level in chosen if level not in _LEVELS})
    if unknown:
        raise InputError(f"Unknown slice level(s) {unknown}; use {list(_LEVELS)}.")
    return chosen


def check_map_values(
    array: NDArray[np.floating], *, kind: str, post_contrast: bool = False, what: str = "map"
) -> tuple[NDArray[np.float32], dict[str, Any], list[str]]:
    """Check that a T1 or T2 map holds physical values in ms of the kind claimed.

    Parameters
    ----------
    array : (k, j, i) float ndarray
        Map in ms; 0 = not fitted.
    kind : "t1" or "t2".
    post_contrast : bool
        A post-contrast T1 map: the lower median limit of native T1 maps is relaxed to 50 ms.
    what : name of the map in messages.

    Returns
    -------
    clean : (k, j, i) float32
        The map with values above the physical maximum set to 0 (not fitted).
    summary : dict
        ``n_pixels``, ``n_zero`` (not fitted), ``n_masked_above_max``, ``max_ms``, ``median_nonzero_ms``.
    notes : list of str
        Warnings for the caller to record (masked pixels).

    Raises
    ------
    InputError
        Unknown kind; NaN, Inf or negative values (with their counts); an all-zero map; a median that contradicts
        ``kind``; more than :data:`MAX_MASKED_FRACTION` of the non-zero pixels above the physical maximum.
    """
    if kind not in MAP_KINDS:
        raise InputError(f"kind must be 't1' or 't2', got {kind!r}.")
    values = np.asarray(array)
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise InputError(f"The {what} must hold numbers (ms), got dtype {values.dtype}.")
    values = values.astype(np.float32, copy=False)
    n_total = int(values.size)
    n_nonfinite = int(np.count_nonzero(~np.isfinite(values)))
    n_negative = int(np.count_nonzero(values < 0))
    if n_nonfinite or n_negative:
        raise InputError(
            f"The {what} holds non-physical values: {n_nonfinite} NaN or infinite and {n_negative} negative pixels "
            f"(of {n_total}). A {kind.upper()} map holds relaxation times in ms >= 0; set pixels that were not "
            "fitted to 0. Is this a phase, difference or unmasked fit image?"
        )
    positive = values[values > 0]
    if positive.size == 0:
        raise InputError(f"The {what} is all zero: there is no fitted pixel to analyse.")
    median = float(np.median(positive))
    quantity = kind.upper()
    if kind == "t2" and median > _T2_MEDIAN_LIMIT_MS:
        raise InputError(
            f"The {what} does not look like a T2 map: the median of its non-zero pixels is {median:.0f} ms, while "
            f"T2 maps lie around 30-60 ms (limit {_T2_MEDIAN_LIMIT_MS:.0f} ms). Is it a T1 map? Then pass "
            "--kind t1 (kind='t1')."
        )
    if kind == "t2" and median < _T2_MEDIAN_FLOOR_MS:
        raise InputError(
            f"The {what} does not look like a T2 map in ms: the median of its non-zero pixels is {median:.3g} ms "
            f"(below {_T2_MEDIAN_FLOOR_MS:.0f} ms; T2 maps lie around 30-60 ms). Is it a map in seconds (multiply "
            "by 1000)?"
        )
    t1_limit = _POST_CONTRAST_T1_MEDIAN_LIMIT_MS if post_contrast else _T1_MEDIAN_LIMIT_MS
    if kind == "t1" and median < t1_limit:
        raise InputError(
            f"The {what} does not look like a{' post-contrast' if post_contrast else ' native'} T1 map in ms: the "
            f"median of its non-zero pixels is {median:.3g} ms (below {t1_limit:.0f} ms). Is it a T2 map (pass "
            "--kind t2), or a map in seconds (multiply by 1000)?"
        )
    maximum = _MAX_MS[kind]
    above = values > maximum
    n_above = int(np.count_nonzero(above))
    notes: list[str] = []
    if n_above > MAX_MASKED_FRACTION * positive.size:
        raise InputError(
            f"{n_above} of the {positive.size} non-zero pixels of the {what} ({100 * n_above / positive.size:.1f} %) "
            f"exceed {maximum:.0f} ms, the largest physical {quantity}. Check the units (ms) and the kind "
            f"({quantity})."
        )
    clean = values
    if n_above:
        clean = np.where(above, np.float32(0.0), values)
        notes.append(
            f"{n_above} pixel(s) of the {what} above {maximum:.0f} ms (non-physical {quantity}) were treated as not "
            "fitted (left out of every statistic)."
        )
    summary = {
        "n_pixels": n_total,
        "n_zero": int(n_total - positive.size),
        "n_masked_above_max": n_above,
        "max_ms": maximum,
        "median_nonzero_ms": round(median, 3),
    }
    return clean, summary, notes


def _check_map_volume(map_volume: Volume) -> None:
    if not isinstance(map_volume, Volume):
        raise InputError(f"map_volume must be a cardiac_ai Volume (k, j, i) in ms, got {type(map_volume).__name__}.")
    if map_volume.axes != "kji":
        raise InputError(
            f"The map is a 4D series {map_volume.array.shape} (t, k, j, i); analyse_map takes one (k, j, i) map. "
            "A raw MOLLI or T2-prepared series must be fitted first (cardiacai fit-map)."
        )


# -- segmentation --------------------------------------------------------------------------------------------
def _whole_view_spec(spec: Any, volume: Volume) -> Any:
    """The model's spec with a crop covering the whole resampled field of view (a multiple of 32 pixels), on the
    slices as ``preprocess`` turns them for the network (rows and columns swap places in a transposed stack)."""
    from ..preprocessing import MAX_CROP_SIZE

    turn = short_axis_display_turn(volume.geometry)
    spacing_i, spacing_j, _ = turn.geometry(volume.geometry, volume.spatial_shape).spacing_mm
    new_i, new_j = spec.in_plane_spacing_mm
    n_j, n_i = turn.shape(volume.array.shape)[1:]
    sizes = []
    for n, old, new, crop in ((n_j, spacing_j, new_j, spec.crop_size[0]), (n_i, spacing_i, new_i, spec.crop_size[1])):
        resampled = max(1, int(round(n * old / new)))
        size = max(crop, int(math.ceil(resampled / _SIZE_MULTIPLE)) * _SIZE_MULTIPLE)
        sizes.append(min(size, MAX_CROP_SIZE // _SIZE_MULTIPLE * _SIZE_MULTIPLE))
    return dataclasses.replace(spec, crop_size=tuple(sizes))


def _segment(map_ms: NDArray[np.float32], volume: Volume, model: Any, *, device: Any,
             provenance: Provenance) -> NDArray[np.uint8]:
    """Network labels (k, j, i) uint8 0-3 on the map's grid."""
    return np.argmax(_segment_probabilities(map_ms, volume, model, device=device, provenance=provenance),
                     axis=0).astype(np.uint8)


def _segment_probabilities(map_ms: NDArray[np.float32], volume: Volume, model: Any, *, device: Any,
                           provenance: Provenance) -> NDArray[np.float32]:
    """Network class probabilities (4, k, j, i) on the map's grid (background, RV, myocardium, LV blood pool)."""
    from ..models.inference import predict_slices
    from ..preprocessing import InputSpec, preprocess, restore_probabilities

    spec = InputSpec.from_dict(model.card.input_spec)
    if spec.channels != 1:
        raise ModelError(
            f"{model.card.name} {model.card.version} expects {spec.channels} input channels; the mapping pipeline "
            "feeds one (the map)."
        )
    image = volume.with_array(map_ms)
    whole = _whole_view_spec(spec, volume)
    if whole.crop_size[0] * whole.crop_size[1] <= spec.crop_size[0] * spec.crop_size[1]:
        prepared = preprocess(image, whole, crop_center="image_center")
    else:
        heart_lps = _locate_heart(image, spec, model, device=device, provenance=provenance)
        if heart_lps is None:  # nothing like an LV at the coarse scale: the whole view at full resolution
            prepared = preprocess(image, whole, crop_center="image_center")
        else:
            prepared = preprocess(image, spec, crop_center=lambda resampled: _index_ji(resampled.geometry, heart_lps))
    probabilities = predict_slices(
        model.network, prepared.image[:, np.newaxis], device=device, activation="softmax", provenance=provenance
    )
    return restore_probabilities(np.moveaxis(probabilities, 1, 0), prepared.transform)


#: The heart is first found on the whole field of view at this multiple of the model's spacing, then segmented in
#: a crop of the model's input size around it at the model's spacing: a 1.0 mm model over a whole 350 mm view would
#: cost 3.4 times the pixels of its 192 mm crop, and the coarse pass costs a quarter of the whole view per slice.
LOCATE_SPACING_FACTOR = 2.0


def _locate_heart(image: Volume, spec: Any, model: Any, *, device: Any, provenance: Provenance):
    """LPS point (mm) of the centre of the largest LV (myocardium + blood pool) component, segmented over the whole
    field of view at :data:`LOCATE_SPACING_FACTOR` times the model's spacing: in the middle slice, or in any slice
    when the middle one has none (the crop is wide enough for the heart's drift from base to apex); None when no
    slice has one."""
    from ..models.inference import predict_slices
    from ..preprocessing import preprocess

    coarse_mm = tuple(LOCATE_SPACING_FACTOR * s for s in spec.in_plane_spacing_mm)
    coarse = _whole_view_spec(dataclasses.replace(spec, in_plane_spacing_mm=coarse_mm), image)
    prepared = preprocess(image, coarse, crop_center="image_center")
    middle = image.array.shape[0] // 2
    for slices in ([middle], [k for k in range(image.array.shape[0]) if k != middle]):
        if not slices:
            break
        probabilities = predict_slices(model.network, prepared.image[slices, np.newaxis], device=device,
                                       activation="softmax", provenance=provenance)
        centre_ji = _lv_centre_mm(np.argmax(probabilities, axis=1).astype(np.uint8), (1.0, 1.0))  # coarse pixels
        if centre_ji is not None:  # any slice's k: the point is projected onto the slices' plane
            centre_kji = (middle, *(centre_ji + np.asarray(prepared.transform.crop_offset_ji)))
            return prepared.transform.resampled_geometry.index_to_lps(np.asarray(centre_kji))[0]
    return None


def _index_ji(geometry: Any, point_lps: NDArray[np.float64]) -> tuple[float, float]:
    """(j, i) fractional indices of an LPS point on a slice grid (its projection onto the slices' plane)."""
    ijk = np.linalg.solve(geometry.direction_matrix @ np.diag(geometry.spacing_mm),
                          np.asarray(point_lps, float) - np.asarray(geometry.origin_lps_mm))
    return float(ijk[1]), float(ijk[0])


def _largest_component(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    components, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = ndimage.sum_labels(mask, components, index=np.arange(1, count + 1))
    return components == (int(np.argmax(sizes)) + 1)


#: An LV component whose centre lies further than this from the stack's LV centre is not the LV (mm, in-plane).
MAX_LV_OFFSET_MM = 40.0


def _lv_centre_mm(labels: NDArray[np.uint8], spacing_ji_mm: tuple[float, float]) -> NDArray[np.float64] | None:
    """In-plane centre (mm) of the largest LV component over the whole stack: where the heart is."""
    best, centre = 0, None
    for labels2d in labels:
        lv = _largest_component(np.isin(labels2d, (LV_MYOCARDIUM, LV_BLOOD_POOL)))
        size = int(lv.sum())
        if size > best:
            best, centre = size, np.argwhere(lv).mean(axis=0) * np.asarray(spacing_ji_mm)
    return centre


def _lv_component(labels2d: NDArray[np.uint8], centre_mm, spacing_ji_mm) -> NDArray[np.bool_]:
    """The largest LV component of a slice whose centre lies within MAX_LV_OFFSET_MM of the stack's LV centre
    (small apical slices can otherwise lose to a bright abdominal organ); empty when none does."""
    lv = np.isin(labels2d, (LV_MYOCARDIUM, LV_BLOOD_POOL))
    if centre_mm is None:
        return _largest_component(lv)
    components, count = ndimage.label(lv)
    best, chosen = 0, np.zeros_like(lv)
    for index in range(1, count + 1):
        piece = components == index
        offset = np.linalg.norm(np.argwhere(piece).mean(axis=0) * np.asarray(spacing_ji_mm) - centre_mm)
        if offset <= MAX_LV_OFFSET_MM and piece.sum() > best:
            best, chosen = int(piece.sum()), piece
    return chosen


def _clean_slice(labels2d: NDArray[np.uint8], centre_mm=None, spacing_ji_mm=(1.0, 1.0)) -> NDArray[np.uint8]:
    """Keep the LV (myocardium + blood pool) component near the stack's LV centre and the largest RV component."""
    lv = _lv_component(labels2d, centre_mm, spacing_ji_mm)
    rv = _largest_component(labels2d == RV_BLOOD_POOL)
    out = np.zeros_like(labels2d)
    out[rv] = RV_BLOOD_POOL
    out[lv & (labels2d == LV_MYOCARDIUM)] = LV_MYOCARDIUM
    out[lv & (labels2d == LV_BLOOD_POOL)] = LV_BLOOD_POOL
    return out


def segment_map(
    map_volume: Volume,
    *,
    kind: Kind,
    models: MappingModels,
    post_contrast: bool = False,
    device: Any = None,
    provenance: Provenance | None = None,
) -> Volume:
    """The network's labels of a T1 or T2 map, before contour fitting.

    The map is checked (:func:`check_map_values`) and segmented (the heart found on the whole field of view, then a
    crop around it), and per slice only the largest LV (myocardium + blood pool) component within 40 mm of the
    stack's LV centre (the centre of the largest LV component of any slice) and the largest RV component are kept.

    Returns
    -------
    Volume (k, j, i) uint8 on the map's geometry: 1 RV blood pool, 2 LV myocardium, 3 LV blood pool.

    Raises
    ------
    InputError
        As :func:`analyse_map`.
    """
    provenance = provenance if provenance is not None else Provenance(command="segment-map")
    _check_map_volume(map_volume)
    clean, _, notes = check_map_values(map_volume.array, kind=kind, post_contrast=post_contrast,
                                       what=f"{kind.upper()} map")
    for note in notes:
        provenance.warn(note, log)
    labels = _segment(clean, map_volume, models.segmenter, device=device, provenance=provenance)
    spacing_ji = tuple(map_volume.geometry.spacing_kji_mm[1:])
    centre = _lv_centre_mm(labels, spacing_ji)
    return Volume(np.stack([_clean_slice(labels[k], centre, spacing_ji) for k in range(labels.shape[0])]),
                  map_volume.geometry)


# -- the pipeline --------------------------------------------------------------------------------------------
def _as_stored(analysis: MapAnalysis, turn: InPlaneTurn, stored: Volume) -> MapAnalysis:
    """``analysis`` of the turned slices of ``stored``, with its label maps and contour pixels on the stored grid."""
    def volume(turned: Volume) -> Volume:
        return Volume(np.ascontiguousarray(turn.undo(turned.array)), stored.geometry)

    def points(array):
        return None if array is None else turn.undo_points(array, stored.spatial_shape)

    def winding(array):  # a mirror reverses the winding: run the points backwards to keep them counter-clockwise
        return array[::-1] if array is not None and turn.is_mirror else array

    contours = tuple(dataclasses.replace(
        c, endocardium_px=winding(points(c.endocardium_px)), epicardium_px=winding(points(c.epicardium_px)),
        endocardium_lps_mm=winding(c.endocardium_lps_mm), epicardium_lps_mm=winding(c.epicardium_lps_mm),
        extra_endocardium_px=tuple(winding(points(a)) for a in c.extra_endocardium_px),
        extra_epicardium_px=tuple(winding(points(a)) for a in c.extra_epicardium_px),
        spacing_ji_mm=tuple(c.spacing_ji_mm[::-1]) if turn.transpose else c.spacing_ji_mm,
    ) for c in analysis.contours)
    return dataclasses.replace(analysis, labels=volume(analysis.labels), labels_with_rv=volume(analysis.labels_with_rv),
                               segment_map=volume(analysis.segment_map), contours=contours)


def analyse_map(
    map_volume: Volume,
    *,
    kind: Kind,
    models: MappingModels,
    erosion_mm: float = 0.0,
    levels: Sequence[Level] | None = None,
    post_contrast: bool = False,
    device: Any = None,
    progress: ProgressCallback | None = None,
    provenance: Provenance | None = None,
) -> MapAnalysis:
    """Segment the myocardium of a T1 or T2 map, fit its contours and measure the map inside them.

    Parameters
    ----------
    map_volume : Volume (k, j, i), float, in ms
        Native T1 or T2 map, short-axis slices from base (k = 0) to apex unless ``levels`` says otherwise;
        0 = not fitted. See the module docstring for the values accepted.
    kind : "t1" or "t2"
        Checked against the values (a contradiction is an InputError).
    models : MappingModels
        E.g. ``MappingModels.from_registry(ModelRegistry(), device="cpu")``.
    erosion_mm : float
        In-plane erosion of the myocardium before the global, per-slice and per-segment statistics (partial volume
        with blood and fat); 0 keeps every pixel inside the contours. The septal ROI is always eroded by one pixel.
    levels : sequence of "base", "mid", "apex", optional
        Level of each slice, for the AHA segments and the septal ROI (mid slices); default by position
        (:func:`default_levels`).
    post_contrast : bool
        The map is a post-contrast T1 map (relaxes the kind check; see :func:`check_map_values`).
    device : None, str or torch.device
        Where the network runs (None or "auto": CUDA when available).
    progress : ProgressCallback, optional
        Called with (fraction, message); may raise ``Cancelled``.
    provenance : Provenance, optional
        Receives the model, parameters, timings and warnings (a new one when None).

    Returns
    -------
    MapAnalysis
        A slice without detectable myocardium gets an explicit entry in ``slice_warnings`` (and provenance
        warnings) and no values; it never raises.

    Raises
    ------
    InputError
        A 4D series; an unknown kind or level; levels of the wrong length; a negative ``erosion_mm``;
        non-physical map values or a kind that contradicts them (see :func:`check_map_values`).
    ModelError
        A model that does not take one input channel.
    """
    provenance = provenance if provenance is not None else Provenance(command="map")
    _check_map_volume(map_volume)
    turn = short_axis_display_turn(map_volume.geometry)
    if not turn.is_identity:
        # every step (network, contours, RV insertion points, AHA segments) runs on the slices as the short-axis
        # display shows them, so a map stored turned or mirrored gets the same results, put back on its own grid
        shown = Volume(np.ascontiguousarray(turn.apply(map_volume.array)),
                       turn.geometry(map_volume.geometry, map_volume.spatial_shape))
        analysis = analyse_map(shown, kind=kind, models=models, erosion_mm=erosion_mm, levels=levels,
                               post_contrast=post_contrast, device=device, progress=progress, provenance=provenance)
        return _as_stored(analysis, turn, map_volume)
    if kind not in MAP_KINDS:
        raise InputError(f"kind must be 't1' or 't2', got {kind!r}.")
    try:
        erosion = float(erosion_mm)
    except (TypeError, ValueError) as e:
        raise InputError(f"erosion_mm must be a number of mm >= 0, got {erosion_mm!r}.") from e
    if not (math.isfinite(erosion) and erosion >= 0):
        raise InputError(f"erosion_mm must be a number of mm >= 0, got {erosion_mm!r}.")
    n_slices = map_volume.array.shape[0]
    chosen_levels = _check_levels(levels, n_slices)
    clean, summary, notes = check_map_values(map_volume.array, kind=kind, post_contrast=post_contrast,
                                             what=f"{kind.upper()} map")
    for note in notes:
        provenance.warn(note, log)
    provenance.models = [*provenance.models, *[m for m in models.uses() if m not in provenance.models]]
    provenance.parameters.update({
        "kind": kind, "erosion_mm": erosion, "levels": list(chosen_levels), "post_contrast": post_contrast,
        "blood_pool_erosion_mm": _BLOOD_POOL_EROSION_MM,
    })
    geometry = map_volume.geometry
    spacing_ji = tuple(geometry.spacing_kji_mm[1:])

    report(progress, 0.0, f"Segmenting the {kind.upper()} map")
    with provenance.timed("segment"):
        probabilities = _segment_probabilities(clean, map_volume, models.segmenter, device=device,
                                               provenance=provenance)
        network_labels = np.argmax(probabilities, axis=0).astype(np.uint8)
        # The contours' sub-pixel boundary follows the network's probability of blood pool, and of blood pool +
        # myocardium, where they cross 0.5.
        soft_masks = np.stack([probabilities[LV_BLOOD_POOL],
                               probabilities[LV_BLOOD_POOL] + probabilities[LV_MYOCARDIUM]])
    report(progress, 0.6, "Fitting contours")
    slice_warnings: dict[int, list[str]] = {}

    def warn(k: int, message: str) -> None:
        text = f"slice {k} ({chosen_levels[k]}): {message}"
        slice_warnings.setdefault(k, []).append(message)
        provenance.warn(text, log)

    shape_ji = map_volume.array.shape[1:]
    labels = np.zeros(map_volume.array.shape, np.uint8)
    labels_with_rv = np.zeros(map_volume.array.shape, np.uint8)
    contours: list[SliceContours] = []
    lv_centre = _lv_centre_mm(network_labels, spacing_ji)
    with provenance.timed("contours"):
        for k in range(n_slices):
            cleaned = _clean_slice(network_labels[k], lv_centre, spacing_ji)
            fitted = fit_myocardial_contours(cleaned, geometry=geometry, slice_index=k,
                                             probabilities=soft_masks[:, k])
            contours.append(fitted)
            if fitted.epicardium_px is None:
                warn(k, f"no myocardium found ({fitted.reason or 'no LV in the slice'}); no values are reported "
                        "for this slice.")
                labels_with_rv[k][cleaned == RV_BLOOD_POOL] = RV_BLOOD_POOL
                continue
            epicardium = contours_to_mask(fitted.epicardium_px, shape_ji)
            if fitted.endocardium_px is None:
                blood = np.zeros(shape_ji, bool)
                warn(k, f"no LV blood pool ({fitted.endocardium_steps.reason}); the whole epicardial contour is "
                        "counted as myocardium (an apical cap?).")
            else:
                blood = contours_to_mask(fitted.endocardium_px, shape_ji) & epicardium
            myocardium = epicardium & ~blood
            area_mm2 = float(myocardium.sum()) * spacing_ji[0] * spacing_ji[1]
            if area_mm2 < MIN_MYOCARDIUM_AREA_MM2:
                warn(k, f"no myocardium found: the fitted contours enclose {area_mm2:.0f} mm^2 of myocardium (less "
                        f"than {MIN_MYOCARDIUM_AREA_MM2:.0f} mm^2); no values are reported for this slice.")
                continue
            fitted_fraction = float(np.mean(clean[k][myocardium] > 0))
            if fitted_fraction < MIN_FITTED_FRACTION:
                warn(k, f"no myocardium found: the map is not fitted (0) in {100 * (1 - fitted_fraction):.0f} % of "
                        "the segmented myocardium; no values are reported for this slice.")
                continue
            labels[k][myocardium] = LV_MYOCARDIUM
            labels[k][blood] = LV_BLOOD_POOL
            labels_with_rv[k] = labels[k]
            labels_with_rv[k][(cleaned == RV_BLOOD_POOL) & ~epicardium] = RV_BLOOD_POOL

    report(progress, 0.75, "Measuring")
    values = np.where(clean > 0, clean, np.nan).astype(np.float64)
    has_myocardium = [bool(np.any(labels[k] == LV_MYOCARDIUM)) for k in range(n_slices)]
    with provenance.timed("statistics"):
        myocardium_mask = labels == LV_MYOCARDIUM
        global_stats = None
        if any(has_myocardium):
            global_stats = _guarded(
                lambda: myocardial_statistics(values, myocardium_mask, erosion_mm=erosion, spacing_ji_mm=spacing_ji),
                lambda message: provenance.warn(f"global myocardial statistics: {message}", log),
            )
        else:
            provenance.warn("No myocardium was found in any slice: no myocardial values are reported.", log)
        slice_stats: list[MapStatistics | None] = []
        segment_map = np.zeros(map_volume.array.shape, np.int8)
        septal: dict[int, MapStatistics] = {}
        for k in range(n_slices):
            if not has_myocardium[k]:
                slice_stats.append(None)
                continue
            slice_stats.append(_guarded(
                lambda: myocardial_statistics(values[k], myocardium_mask[k], erosion_mm=erosion,
                                              spacing_ji_mm=spacing_ji),
                lambda message: warn(k, message),
            ))
            # The RV insertion points, found once for the AHA segments and the septal ROI.
            insertion_error: list[str] = []
            insertion = _guarded(lambda: find_rv_insertion(labels_with_rv[k], geometry=geometry),
                                 insertion_error.append)
            mid = chosen_levels[k] == "mid"
            if insertion is None:
                warn(k, f"no AHA segments: {insertion_error[0]}")
                if mid:
                    warn(k, f"no septal ROI: {insertion_error[0]}")
                continue
            segments = _guarded(
                lambda: aha_segments(labels_with_rv[k], level=chosen_levels[k], rv_insertion=insertion,
                                     geometry=geometry),
                lambda message: warn(k, f"no AHA segments: {message}"),
            )
            if segments is not None:
                segment_map[k] = segments
            roi = None
            if mid:
                roi = _guarded(lambda: septal_roi(labels_with_rv[k], insertion, geometry=geometry),
                               lambda message: warn(k, f"no septal ROI: {message}"))
            if roi is not None:
                stats = _guarded(
                    lambda: myocardial_statistics(values[k], roi, spacing_ji_mm=spacing_ji),
                    lambda message: warn(k, f"septal ROI: {message}"),
                )
                if stats is not None:
                    septal[k] = stats
        segment_stats: dict[int, MapStatistics] = {}
        if segment_map.any():
            segment_stats = _guarded(
                lambda: segment_statistics(values, segment_map, erosion_mm=erosion, spacing_ji_mm=spacing_ji),
                lambda message: provenance.warn(f"AHA segment statistics: {message}", log),
            ) or {}
        blood_stats = None
        if np.any(labels == LV_BLOOD_POOL):
            blood_stats = _guarded(
                lambda: lv_blood_pool_t1(values, labels, spacing_ji_mm=spacing_ji, erosion_mm=_BLOOD_POOL_EROSION_MM),
                lambda message: provenance.warn(f"LV blood pool: {message}", log),
            )
        else:
            provenance.warn("No LV blood pool was found: no blood-pool value is reported.", log)
        for message in implausible_heart_warnings(global_stats, blood_stats, kind=kind):
            provenance.warn(message, log)
    report(progress, 1.0, "Done")
    log.info("Analysed %s map of %d slices: myocardial median %s ms", kind.upper(), n_slices,
             None if global_stats is None else round(global_stats.median, 1))
    return MapAnalysis(
        kind=kind,
        labels=Volume(labels, geometry),
        labels_with_rv=Volume(labels_with_rv, geometry),
        segment_map=Volume(segment_map, geometry),
        contours=tuple(contours),
        levels=chosen_levels,
        myocardium=global_stats,
        slices=tuple(slice_stats),
        segments=segment_stats,
        septal=septal,
        lv_blood_pool=blood_stats,
        slice_warnings={k: tuple(v) for k, v in slice_warnings.items()},
        input_summary=summary,
        erosion_mm=erosion,
        provenance=provenance,
    )


def implausible_heart_warnings(myocardium: MapStatistics | None, blood: MapStatistics | None, *,
                               kind: str) -> list[str]:
    """What says that the myocardium found may not lie on a heart: values all equal (a fitted map varies from pixel
    to pixel; a uniform or in-painted region does not), or a blood pool with the myocardium's own value (blood and
    muscle differ in every T1 and T2 map, native or post-contrast)."""
    found = []
    quantity = kind.upper()
    if myocardium is not None and myocardium.n_pixels >= 10 and myocardium.iqr <= 0.005 * abs(myocardium.median):
        found.append(f"The myocardium's {quantity} values are nearly all equal (median {myocardium.median:.1f} ms, IQR "
                     f"{myocardium.iqr:.1f} ms over {myocardium.n_pixels} pixels): a fitted map varies from pixel to "
                     "pixel, so the segmentation may not lie on a heart. Check the image and the contours.")
    if myocardium is not None and blood is not None and \
            abs(blood.median - myocardium.median) < 0.05 * abs(myocardium.median):
        found.append(f"The LV blood pool and the myocardium have nearly the same {quantity} ({blood.median:.0f} and "
                     f"{myocardium.median:.0f} ms): blood and muscle differ in every {quantity} map, so the "
                     "segmentation may not lie on a heart. Check the image and the contours.")
    return found


def _guarded(compute: Any, on_error: Any) -> Any:
    """``compute()``, or None after passing an InputError's message to ``on_error`` (a documented per-slice gap)."""
    try:
        return compute()
    except InputError as e:
        on_error(str(e))
        return None
