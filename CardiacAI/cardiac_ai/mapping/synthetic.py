"""Semi-synthetic native T1 and T2 maps, with their raw MOLLI and T2-prepared series, from real cine anatomy.

No real mapping data can be had here, so mapping work trains and is evaluated on maps drawn on the anatomy of
real short-axis cine frames (ACDC end diastole). For each patient three slices are taken at basal, mid-ventricular
and apical level; every pixel gets a tissue class (the cine labels for the heart, a documented intensity and
position heuristic for the rest of the chest), every tissue a T1, T2 and a proton-density-like amplitude drawn
around literature values at 1.5 T with per-patient variation, optionally diffuse or focal (coronary-territory)
disease. The maps are resampled in-plane to a mapping-like pixel size, mixed with the adjacent cine slice
(through-plane partial volume of an 8 mm slab), blurred slightly (in-plane partial volume) and given mild noise;
the raw series follow the MOLLI and T2-preparation signal models with Rician noise and per-frame misregistration.
Ground truth is the resampled cine label map.

The values are literature-informed approximations, not measurements: see ``docs/mapping-synthetic-data.md``.

Tissue classes outside the heart (a crude, documented heuristic), from the cine image normalised to the median
of the LV blood pool and smoothed (Gaussian, sigma 1 pixel):

* dark (below 0.6 x the myocardial median, and at least below 0.12): **air** outside the convex hull of the body,
  **lung** inside it;
* bright (> 0.6) and not labelled: **fat** within 20 mm of the hull border (subcutaneous) or in small bright
  components (< 150 mm^2, epicardial and pericardial fat), else **blood** (great vessels, atria);
* anything else: **RV wall** (myocardium values) within 5 mm of the RV blood pool, **liver** for the largest deep
  (> 15 mm) mid-intensity component of at least 2000 mm^2 whose centre lies below the heart (row index j larger
  than the heart's centre plus half its radius), else **skeletal muscle** (chest wall and other soft tissue).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage.morphology import convex_hull_image

from ..datasets.case import Case
from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from ..io.atomic import atomic_path, prepare_output_dir, write_text_atomic
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from ..progress import ProgressCallback, report

__all__ = [
    "DISEASE_EFFECTS",
    "MAPPING_LEVELS",
    "TISSUE_VALUES",
    "MappingCase",
    "TissueValues",
    "build_mapping_dataset",
    "load_mapping_case",
    "make_mapping_case",
    "molli_inversion_times_ms",
    "save_mapping_case",
]

log = logging.getLogger(__name__)

#: Slice levels of every mapping case, in slice (k) order.
MAPPING_LEVELS: tuple[str, str, str] = ("base", "mid", "apex")

DiseaseKind = Literal["random", "none", "diffuse", "focal"]


@dataclass(frozen=True)
class TissueValues:
    """Native relaxation times of one tissue at 1.5 T and how they vary between patients.

    ``t1_ms``/``t2_ms`` are (mean, between-patient SD, low, high): a patient's value is drawn from a normal
    distribution and clipped to [low, high]. ``pd`` is a proton-density-like signal amplitude relative to blood
    (illustrative, chosen for a plausible image contrast, not a measured proton density).
    """

    t1_ms: tuple[float, float, float, float]
    t2_ms: tuple[float, float, float, float]
    pd: float
    source: str


#: Literature-informed tissue values at 1.5 T (MOLLI native T1, T2-prepared bSSFP T2). Approximations, not
#: measurements; see ``docs/mapping-synthetic-data.md`` for the references behind each row.
TISSUE_VALUES: dict[str, TissueValues] = {
    "myocardium": TissueValues((1000.0, 25.0, 950.0, 1050.0), (50.0, 2.0, 45.0, 55.0), 0.75,
                               "Messroghli 2017; Dabir 2014 (T1); Giri 2009; Wassmuth 2013 (T2)"),
    "blood": TissueValues((1575.0, 40.0, 1500.0, 1650.0), (225.0, 12.0, 200.0, 250.0), 1.0,
                          "Messroghli 2017; Dabir 2014 (T1); T2-prepared bSSFP blood T2 (Giri 2009)"),
    "fat": TissueValues((300.0, 25.0, 250.0, 350.0), (60.0, 5.0, 50.0, 70.0), 0.9,
                        "de Bazelaire 2004 (1.5 T subcutaneous fat)"),
    "liver": TissueValues((600.0, 25.0, 550.0, 650.0), (45.0, 3.0, 40.0, 52.0), 0.6,
                          "de Bazelaire 2004 (1.5 T liver)"),
    "skeletal_muscle": TissueValues((900.0, 25.0, 850.0, 950.0), (32.0, 2.0, 27.0, 38.0), 0.65,
                                    "de Bazelaire 2004 (1.5 T skeletal muscle)"),
    "lung": TissueValues((1250.0, 60.0, 1150.0, 1350.0), (45.0, 6.0, 35.0, 60.0), 0.12,
                         "Stadler 2005 (lung T1 at 1.5 T); low proton density"),
}

#: Relative change of the venous (RV) blood T2 against the LV blood: lower oxygen saturation shortens blood T2
#: (Wright 1991).
_RV_BLOOD_T2_FACTOR = 0.9

#: Disease effects, as (low, high) relative changes of the myocardial T1 and T2 drawn uniformly per patient.
DISEASE_EFFECTS: dict[str, dict[str, tuple[float, float]]] = {
    # diffuse fibrosis, amyloid or storage-like: native T1 up (Messroghli 2017; Karamitsos 2013), T2 at most mildly
    "diffuse": {"t1": (0.05, 0.20), "t2": (0.0, 0.08)},
    # acute infarct or myocarditis in one coronary territory: oedema raises T1 and T2 (Messroghli 2007; Giri 2009)
    "focal": {"t1": (0.10, 0.25), "t2": (0.10, 0.30), "width_deg": (60.0, 120.0), "transmurality": (0.4, 1.0)},
}

#: Probabilities of "none", "diffuse", "focal" when ``disease="random"``.
_DISEASE_PROBABILITIES = {"none": 0.4, "diffuse": 0.3, "focal": 0.3}

#: Territory centres, degrees from the septal direction (LV centre -> RV centre) towards the anterior side
#: (image top, low j). Approximate AHA territories: LAD anterior and anteroseptal, RCA inferior and inferoseptal,
#: LCx lateral.
_TERRITORY_CENTRES_DEG = {"LAD": 60.0, "RCA": -60.0, "LCx": 180.0}

# -- acquisition model ------------------------------------------------------------------------------------------
_SIGNAL_SCALE = 1000.0  # magnitude of a PD = 1 tissue, fully recovered, in arbitrary scanner-like units
_LOOK_LOCKER_RATIO = (1.85, 1.98)  # B / A per patient (ideal inversion with bSSFP readout: just under 2)
_RR_MS = (800.0, 1100.0)  # heart rate 55-75 bpm
_FIRST_TI_MS = (100.0, 120.0)
_MOLLI_SECOND_SET_SHIFT_MS = 80.0  # 5(3)3: second Look-Locker set shifted by 80 ms (Kellman & Hansen 2014)
_DEFAULT_ECHO_TIMES_MS = (0.0, 25.0, 55.0)  # T2-preparation durations of the paper's protocol
_SPACING_RANGE_MM = (1.4, 1.9)
_MAP_NOISE_GAIN = {"t1": 1.5, "t2": 2.5}  # map SD relative to value = gain * noise / PD
_MAP_LIMITS_MS = {"t1": (0.0, 4500.0), "t2": (0.0, 1000.0)}
_TEXTURE_SD = 0.015  # smooth within-tissue heterogeneity, relative
_TEXTURE_SIGMA_MM = 4.0
_INPLANE_BLUR_PX = 0.5  # in-plane point spread (Gaussian sigma, output pixels)

# -- tissue-class heuristic ---------------------------------------------------------------------------------------
_AIR, _LUNG, _FAT, _MUSCLE, _LIVER, _BLOOD, _LV_BLOOD, _RV_BLOOD, _MYOCARDIUM = range(9)
_CLASS_NAMES = ("air", "lung", "fat", "skeletal_muscle", "liver", "blood", "lv_blood", "rv_blood", "myocardium")
_AIR_THRESHOLD = 0.12  # relative to the LV blood-pool median of the cine image: background noise floor
_DARK_FRACTION_OF_MYOCARDIUM = 0.6  # lung: darker than this fraction of the myocardial median
_BRIGHT = 0.6  # fat or blood: brighter than this (relative to the LV blood pool)
_LIVER_MIN_MM2 = 2000.0
_SUBCUTANEOUS_MM = 20.0
_SMALL_BRIGHT_MM2 = 150.0
_RV_WALL_MM = 5.0
_LIVER_DEPTH_MM = 15.0

_FORMAT = "cardiac_ai.mapping_case"
_INDEX_FORMAT = "cardiac_ai.mapping_dataset"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class MappingCase:
    """One semi-synthetic mapping study: maps, raw series, ground-truth labels and the known truth.

    Parameters
    ----------
    patient_id : e.g. ``"patient001"``.
    t1_map_ms, t2_map_ms : Volume, array (3, j, i) float32, k = base, mid, apex. What a scanner would output:
        the true maps plus mild noise; 0 in air.
    molli : Volume with axes "tkji", array (n_ti, 3, j, i) float32: magnitude MOLLI images, one frame per
        inversion time, with Rician noise and per-frame misregistration; values are rounded to float16 precision.
    inversion_times_ms : n_ti effective inversion times in ms, ascending, in frame order.
    t2prep : Volume with axes "tkji", array (n_te, 3, j, i) float32: T2-prepared magnitude images.
    t2prep_times_ms : n_te T2-preparation (echo) times in ms, in frame order.
    labels : Volume, array (3, j, i) uint8: 0 background, 1 RV blood pool, 2 LV myocardium, 3 LV blood pool (the
        resampled cine labels: the ground truth).
    disease_mask : Volume, array (3, j, i) uint8: 1 where the myocardium is diseased (all of it for diffuse
        disease, the sector for focal disease), else 0.
    truth : plain-JSON dict (lists, floats, strings): ``levels``, per-slice ``t1_myocardium_median_ms`` and
        ``t2_myocardium_median_ms`` (medians over the label-2 pixels of the noise-free maps), the same on the
        tissue maps before partial volume (``*_tissue_median_ms``), blood medians, ``disease``, ``tissue_values``,
        acquisition parameters and the source slices; see :func:`make_mapping_case`.

    All volumes share one geometry: spacing (s, s, slice thickness), origin and direction from the cine image.
    Along k the three slices are not contiguous: their true positions along the cine stack are in
    ``truth["slice_positions_mm"]``.

    Raises
    ------
    InputError
        Shapes, axes, dtypes, slice count or timing lengths that do not fit together.
    """

    patient_id: str
    t1_map_ms: Volume
    t2_map_ms: Volume
    molli: Volume
    inversion_times_ms: tuple[float, ...]
    t2prep: Volume
    t2prep_times_ms: tuple[float, ...]
    labels: Volume
    disease_mask: Volume
    truth: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "inversion_times_ms", tuple(float(t) for t in self.inversion_times_ms))
        object.__setattr__(self, "t2prep_times_ms", tuple(float(t) for t in self.t2prep_times_ms))
        shape = self.t1_map_ms.array.shape
        if len(shape) != 3 or shape[0] != len(MAPPING_LEVELS):
            raise InputError(
                f"MappingCase {self.patient_id!r}: t1_map_ms must be (3, j, i) (base, mid, apex), got {shape}."
            )
        for name in ("t1_map_ms", "t2_map_ms", "labels", "disease_mask"):
            volume = getattr(self, name)
            if volume.axes != "kji" or volume.array.shape != shape:
                raise InputError(
                    f"MappingCase {self.patient_id!r}: {name} must be a (k, j, i) volume of shape {shape}, got "
                    f"axes {volume.axes!r} and shape {volume.array.shape}."
                )
        for name, times in (("molli", self.inversion_times_ms), ("t2prep", self.t2prep_times_ms)):
            volume = getattr(self, name)
            if volume.axes != "tkji" or volume.array.shape[1:] != shape:
                raise InputError(
                    f"MappingCase {self.patient_id!r}: {name} must be a (t, k, j, i) series with (k, j, i) = "
                    f"{shape}, got axes {volume.axes!r} and shape {volume.array.shape}."
                )
            if volume.array.shape[0] != len(times):
                raise InputError(
                    f"MappingCase {self.patient_id!r}: {name} has {volume.array.shape[0]} frames but "
                    f"{len(times)} times; give one time in ms per frame."
                )
        for name in ("labels", "disease_mask"):
            if getattr(self, name).array.dtype != np.uint8:
                raise InputError(f"MappingCase {self.patient_id!r}: {name} must be uint8.")


# ---------------------------------------------------------------------------------------------------------------
# validation and slice choice
# ---------------------------------------------------------------------------------------------------------------
def _validate(
    case: Case,
    disease: str,
    in_plane_spacing_mm: float | None,
    slice_thickness_mm: float,
    noise: float,
    misregistration_px: float,
    echo_times_ms: Sequence[float],
) -> list[int]:
    if not isinstance(case, Case):
        raise InputError(f"make_mapping_case needs a Case (e.g. from load_case), got {type(case).__name__}.")
    if case.labels is None:
        raise InputError(
            f"Case {case.case_id!r} has no labels; semi-synthetic maps need the cine label map (ground truth). "
            "Use a labelled frame (ACDC ED or ES)."
        )
    if disease not in ("random", "none", "diffuse", "focal"):
        raise InputError(f"disease must be 'random', 'none', 'diffuse' or 'focal', got {disease!r}.")
    if in_plane_spacing_mm is not None and not (math.isfinite(in_plane_spacing_mm) and in_plane_spacing_mm > 0):
        raise InputError(f"in_plane_spacing_mm must be a positive number of mm or None, got {in_plane_spacing_mm}.")
    if not (math.isfinite(slice_thickness_mm) and slice_thickness_mm > 0):
        raise InputError(f"slice_thickness_mm must be positive, got {slice_thickness_mm}.")
    if not (math.isfinite(noise) and noise >= 0):
        raise InputError(f"noise must be >= 0 (relative noise SD; 0 for noiseless data), got {noise}.")
    if not (math.isfinite(misregistration_px) and misregistration_px >= 0):
        raise InputError(f"misregistration_px must be >= 0 (SD of the per-frame shift), got {misregistration_px}.")
    times = [float(t) for t in echo_times_ms]
    if len(times) < 2 or any(not math.isfinite(t) or t < 0 for t in times):
        raise InputError(f"echo_times_ms needs at least 2 non-negative times in ms, got {list(echo_times_ms)}.")
    myocardium = case.labels.array == LV_MYOCARDIUM
    labelled = [int(k) for k in np.flatnonzero(myocardium.any(axis=(1, 2)))]
    if len(labelled) < 3:
        raise InputError(
            f"Case {case.case_id!r} has {len(labelled)} slices with LV myocardium (label {LV_MYOCARDIUM}); "
            "a mapping case needs at least 3 (base, mid, apex). Use a full short-axis stack."
        )
    if case.metadata.get("slice_order") == "apex_to_base":
        labelled = labelled[::-1]
    return labelled


def _choose_slices(labelled: list[int]) -> list[int]:
    """Base, mid, apex source slices: second, middle, second-to-last labelled slice (all ends when fewer than 5)."""
    n = len(labelled)
    if n >= 5:
        return [labelled[1], labelled[n // 2], labelled[-2]]
    return [labelled[0], labelled[n // 2], labelled[-1]]


def molli_inversion_times_ms(rr_ms: float = 1000.0, first_ti_ms: float = 110.0) -> tuple[float, ...]:
    """Effective inversion times of a MOLLI 5(3)3 scheme, ascending.

    Two Look-Locker sets, 5 and 3 images one RR interval apart, the second shifted by 80 ms; sorted as scanners
    store them. Returns 8 times in ms, e.g. ``(110, 190, 1110, 1190, 2110, 2190, 3110, 4110)`` for RR 1000 ms.
    """
    if not (rr_ms > 0 and first_ti_ms >= 0):
        raise InputError(f"rr_ms must be > 0 and first_ti_ms >= 0, got {rr_ms}, {first_ti_ms}.")
    first = [first_ti_ms + n * rr_ms for n in range(5)]
    second = [first_ti_ms + _MOLLI_SECOND_SET_SHIFT_MS + n * rr_ms for n in range(3)]
    return tuple(float(t) for t in sorted(first + second))


# ---------------------------------------------------------------------------------------------------------------
# tissue classes and values
# ---------------------------------------------------------------------------------------------------------------
def _largest_component(mask: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(components.ravel())[1:]
    return components == (int(np.argmax(sizes)) + 1)


def _classify_slice(
    image: np.ndarray,
    labels: np.ndarray,
    spacing_ji_mm: tuple[float, float],
    dark_threshold: float,
    heart_centre_j: float,
    heart_radius_px: float,
) -> np.ndarray:
    """Tissue class per pixel (int8, codes ``_AIR``..``_MYOCARDIUM``) of one cine slice normalised to LV blood."""
    smooth = ndimage.gaussian_filter(image, sigma=1.0)
    dark = smooth < max(dark_threshold, _AIR_THRESHOLD)
    bright = smooth > _BRIGHT
    body = _largest_component(ndimage.binary_opening(smooth >= _AIR_THRESHOLD, iterations=2))
    hull = convex_hull_image(body) if body.any() else body
    depth_mm = ndimage.distance_transform_edt(hull, sampling=spacing_ji_mm)
    pixel_area = spacing_ji_mm[0] * spacing_ji_mm[1]

    classes = np.full(image.shape, _MUSCLE, dtype=np.int8)
    classes[dark & hull] = _LUNG
    classes[dark & ~hull] = _AIR

    unlabelled_bright = bright & (labels == 0)
    components, count = ndimage.label(unlabelled_bright)
    if count:
        areas = np.bincount(components.ravel()) * pixel_area
        large = areas[components] >= _SMALL_BRIGHT_MM2
        classes[unlabelled_bright] = _FAT
        classes[unlabelled_bright & large & (depth_mm >= _SUBCUTANEOUS_MM)] = _BLOOD

    mid = ~dark & ~bright & (labels == 0)
    heart = labels > 0
    near_heart = (
        ndimage.distance_transform_edt(~heart, sampling=spacing_ji_mm) <= _RV_WALL_MM if heart.any() else heart
    )
    candidates = ndimage.binary_opening(mid & (depth_mm > _LIVER_DEPTH_MM) & ~near_heart, iterations=2)
    components, count = ndimage.label(candidates)
    if count:
        index = np.arange(1, count + 1)
        areas = ndimage.sum_labels(candidates, components, index) * pixel_area
        centres_j = np.asarray(ndimage.center_of_mass(candidates, components, index))[:, 0]
        below = (centres_j > heart_centre_j + 0.5 * heart_radius_px) & (areas >= _LIVER_MIN_MM2)
        if below.any():
            liver = index[below][int(np.argmax(areas[below]))]
            classes[components == liver] = _LIVER
    if (labels == RV_BLOOD_POOL).any():
        near_rv = ndimage.distance_transform_edt(labels != RV_BLOOD_POOL, sampling=spacing_ji_mm) <= _RV_WALL_MM
        classes[mid & near_rv] = _MYOCARDIUM

    classes[labels == RV_BLOOD_POOL] = _RV_BLOOD
    classes[labels == LV_BLOOD_POOL] = _LV_BLOOD
    classes[labels == LV_MYOCARDIUM] = _MYOCARDIUM
    return classes


def _draw_tissue_values(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    values = {}
    for name, tissue in TISSUE_VALUES.items():
        drawn = {}
        for key, (mean, sd, low, high) in (("t1_ms", tissue.t1_ms), ("t2_ms", tissue.t2_ms)):
            drawn[key] = float(np.clip(rng.normal(mean, sd), low, high))
        drawn["pd"] = float(tissue.pd * np.clip(rng.normal(1.0, 0.05), 0.9, 1.1))
        values[name] = drawn
    return values


def _class_parameters(values: dict[str, dict[str, float]]) -> np.ndarray:
    """(n_classes, 3) table of (T1 ms, T2 ms, PD) per tissue class code."""
    table = np.zeros((len(_CLASS_NAMES), 3), dtype=np.float64)
    source = {
        _LUNG: "lung", _FAT: "fat", _MUSCLE: "skeletal_muscle", _LIVER: "liver", _BLOOD: "blood",
        _LV_BLOOD: "blood", _RV_BLOOD: "blood", _MYOCARDIUM: "myocardium",
    }
    for code, name in source.items():
        table[code] = (values[name]["t1_ms"], values[name]["t2_ms"], values[name]["pd"])
    table[_RV_BLOOD, 1] *= _RV_BLOOD_T2_FACTOR
    return table  # air stays (0, 0, 0)


# ---------------------------------------------------------------------------------------------------------------
# disease
# ---------------------------------------------------------------------------------------------------------------
def _draw_disease(kind: str, rng: np.random.Generator) -> dict[str, Any]:
    """Disease parameters; every draw is made whatever the kind, so one seed gives one anatomy and one noise."""
    diffuse_t1 = float(rng.uniform(*DISEASE_EFFECTS["diffuse"]["t1"]))
    diffuse_t2 = float(rng.uniform(*DISEASE_EFFECTS["diffuse"]["t2"]))
    focal = DISEASE_EFFECTS["focal"]
    focal_t1 = float(rng.uniform(*focal["t1"]))
    focal_t2 = float(rng.uniform(*focal["t2"]))
    territory = str(rng.choice(sorted(_TERRITORY_CENTRES_DEG)))
    width = float(rng.uniform(*focal["width_deg"]))
    transmurality = float(rng.uniform(*focal["transmurality"]))
    first, last = sorted(int(v) for v in rng.integers(0, len(MAPPING_LEVELS), size=2))
    if kind == "none":
        return {"kind": "none"}
    if kind == "diffuse":
        return {
            "kind": "diffuse",
            "description": f"diffuse myocardial disease: native T1 +{100 * diffuse_t1:.1f} %, "
                           f"T2 +{100 * diffuse_t2:.1f} % in the whole myocardium",
            "t1_change_percent": 100 * diffuse_t1,
            "t2_change_percent": 100 * diffuse_t2,
            "levels": list(MAPPING_LEVELS),
        }
    levels = list(MAPPING_LEVELS[first:last + 1])
    return {
        "kind": "focal",
        "description": f"focal {territory} territory lesion: T1 +{100 * focal_t1:.1f} %, T2 +{100 * focal_t2:.1f} % "
                       f"in a {width:.0f} degree sector, {100 * transmurality:.0f} % transmural from the "
                       f"endocardium, at {', '.join(levels)}",
        "t1_change_percent": 100 * focal_t1,
        "t2_change_percent": 100 * focal_t2,
        "territory": territory,
        "sector_centre_from_septum_deg": _TERRITORY_CENTRES_DEG[territory],
        "sector_centre_image_deg": None,  # set once the septum is known: atan2(dj, di) about the LV centre
        "sector_width_deg": width,
        "transmurality": transmurality,
        "levels": levels,
    }


def _septal_direction(labels: np.ndarray) -> np.ndarray | None:
    """Unit (x = i, y = j) vector from the LV centre to the RV centre on one slice, or None."""
    lv = np.isin(labels, (LV_MYOCARDIUM, LV_BLOOD_POOL))
    rv = labels == RV_BLOOD_POOL
    if not lv.any() or not rv.any():
        return None
    lv_c = np.array(ndimage.center_of_mass(lv))[::-1]
    rv_c = np.array(ndimage.center_of_mass(rv))[::-1]
    vector = rv_c - lv_c
    norm = float(np.hypot(*vector))
    return vector / norm if norm > 0 else None


def _sector_centre_angle(septum: np.ndarray, centre_from_septum_deg: float) -> float:
    """Image angle (radians, atan2(dj, di)) of a territory centre given the septal direction (x = i, y = j)."""
    anterior = np.array([-septum[1], septum[0]])
    if anterior[1] > 0:  # the anterior side is toward the image top (low j)
        anterior = -anterior
    angle = math.radians(centre_from_septum_deg)
    direction = math.cos(angle) * septum + math.sin(angle) * anterior
    return math.atan2(direction[1], direction[0])


def _disease_mask(labels: np.ndarray, disease: dict[str, Any], level_on: bool) -> np.ndarray:
    """Diseased myocardium (bool (j, i)) of one slice."""
    myocardium = labels == LV_MYOCARDIUM
    if disease["kind"] == "none" or not level_on or not myocardium.any():
        return np.zeros(labels.shape, dtype=bool)
    if disease["kind"] == "diffuse":
        return myocardium
    lv = np.isin(labels, (LV_MYOCARDIUM, LV_BLOOD_POOL))
    cy, cx = ndimage.center_of_mass(lv)
    jj, ii = np.indices(labels.shape)
    pixel_angle = np.arctan2(jj - cy, ii - cx)
    centre_angle = math.radians(disease["sector_centre_image_deg"])
    difference = np.abs((pixel_angle - centre_angle + np.pi) % (2 * np.pi) - np.pi)
    sector = difference <= math.radians(disease["sector_width_deg"]) / 2
    cavity = labels == LV_BLOOD_POOL
    if cavity.any():
        to_endo = ndimage.distance_transform_edt(~cavity)
        to_epi = ndimage.distance_transform_edt(lv)
        depth = (to_endo - 0.5) / np.maximum(to_endo + to_epi - 1.0, 1e-6)  # 0 at the endocardium, 1 at the epicardium
        sector &= depth <= disease["transmurality"]
    return myocardium & sector


# ---------------------------------------------------------------------------------------------------------------
# geometry helpers
# ---------------------------------------------------------------------------------------------------------------
def _through_plane_weights(k: int, offset_mm: float, dz_mm: float, thickness_mm: float, n_k: int) -> dict[int, float]:
    """Weights of the cine slices under a slab of ``thickness_mm`` centred ``offset_mm`` from slice k's centre.

    Each cine slice covers its spacing ``dz_mm`` (contiguous slices assumed); slices beyond the stack repeat the
    end slice.
    """
    low, high = offset_mm - thickness_mm / 2, offset_mm + thickness_mm / 2
    weights: dict[int, float] = {}
    reach = math.ceil((thickness_mm / 2 + abs(offset_mm)) / dz_mm) + 1
    for m in range(-reach, reach + 1):
        overlap = min(high, (m + 0.5) * dz_mm) - max(low, (m - 0.5) * dz_mm)
        if overlap > 0:
            source = int(np.clip(k + m, 0, n_k - 1))
            weights[source] = weights.get(source, 0.0) + overlap / thickness_mm
    return weights


def _resample_stack(stack: np.ndarray, spacing_ji: tuple[float, float], new_spacing: float,
                    size_ji: tuple[int, int], *, nearest: bool) -> np.ndarray:
    """Resample (n, j, i) in-plane onto a grid of ``new_spacing`` covering the same field of view (SimpleITK)."""
    image = sitk.GetImageFromArray(stack.astype(np.uint8 if nearest else np.float64))
    image.SetSpacing((spacing_ji[1], spacing_ji[0], 1.0))
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing((new_spacing, new_spacing, 1.0))
    resampler.SetSize((size_ji[1], size_ji[0], stack.shape[0]))
    resampler.SetOutputOrigin(((new_spacing - spacing_ji[1]) / 2, (new_spacing - spacing_ji[0]) / 2, 0.0))
    resampler.SetInterpolator(sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear)
    resampler.SetDefaultPixelValue(0)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _shift_frames(series: np.ndarray, rng: np.random.Generator, sd_px: float) -> tuple[np.ndarray, list]:
    """Translate each (k, j, i) frame in-plane by a random (dj, di) ~ N(0, sd_px); returns the shifts too."""
    shifts = rng.normal(0.0, sd_px, size=(series.shape[0], 2)) if sd_px > 0 else np.zeros((series.shape[0], 2))
    if sd_px > 0:
        series = np.stack([
            ndimage.shift(frame, (0.0, dj, di), order=1, mode="nearest") for frame, (dj, di) in zip(series, shifts)
        ])
    return series, [[float(dj), float(di)] for dj, di in shifts]


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma <= 0:
        return signal
    return np.hypot(signal + rng.normal(0.0, sigma, signal.shape), rng.normal(0.0, sigma, signal.shape))


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# the case
# ---------------------------------------------------------------------------------------------------------------
def make_mapping_case(
    case: Case,
    *,
    seed: int = 0,
    in_plane_spacing_mm: float | None = None,
    slice_thickness_mm: float = 8.0,
    disease: DiseaseKind = "random",
    noise: float = 0.02,
    misregistration_px: float = 1.0,
    echo_times_ms: Sequence[float] = _DEFAULT_ECHO_TIMES_MS,
) -> MappingCase:
    """Semi-synthetic T1/T2 maps and raw MOLLI / T2-prepared series on the anatomy of one labelled cine frame.

    Parameters
    ----------
    case : Case with labels (ACDC end-diastolic frame or a phantom), image (k, j, i), labels 1 RV blood pool,
        2 LV myocardium, 3 LV blood pool; slices base (low k) to apex unless ``metadata["slice_order"]`` is
        ``"apex_to_base"``.
    seed : with ``case.patient_id``, fixes every random draw (same seed and patient: identical case). Separate
        random streams drive geometry, tissue values, disease, map noise, raw-image noise and motion, so changing
        ``disease`` or ``noise`` changes nothing else.
    in_plane_spacing_mm : output pixel size; None draws it uniformly in [1.4, 1.9] mm.
    slice_thickness_mm : slab thickness; the slab (centred within a quarter of the cine spacing of its source
        slice) averages the cine slices it overlaps (through-plane partial volume).
    disease : "none", "diffuse" (whole myocardium: T1 +5-20 %, T2 +0-8 %), "focal" (one coronary territory,
        60-120 degree sector, 40-100 % transmural from the endocardium, at a contiguous run of levels: T1 +10-25 %,
        T2 +10-30 %) or "random" (none 40 %, diffuse 30 %, focal 30 %).
    noise : Rician noise SD of the raw images relative to the fully recovered signal of a PD = 1 tissue (0.02:
        SNR 50 in blood, about 37 in myocardium); the maps get Gaussian noise of SD ``gain * noise / PD`` relative
        to the value (gain 1.5 for T1, 2.5 for T2: about 40 ms and 3 ms in myocardium at the default). 0: noiseless.
    misregistration_px : SD in output pixels of the random in-plane translation of each raw frame (the maps are
        not shifted: they stand for motion-corrected scanner maps).
    echo_times_ms : T2-preparation times of the T2 series (default 0, 25, 55 ms as in the paper).

    Returns
    -------
    MappingCase
        Three slices (base, mid, apex); maps float32 in ms; MOLLI 5(3)3 series (8 frames, inversion times from a
        random RR of 800-1100 ms); T2-prepared series; labels uint8 0-3; truth dict.

    Raises
    ------
    InputError
        A case without labels, with fewer than 3 slices holding myocardium, a cine image without signal in the LV
        blood pool, or bad options.

    Notes
    -----
    Signal models (noise-free): MOLLI ``S(TI) = |A - B exp(-TI / T1*)|`` with ``A = 1000 * PD``, ``B / A`` drawn
    per patient in [1.85, 1.98] and ``T1* = T1 / (B / A - 1)``; T2 preparation ``S(TE) = 1000 * PD exp(-TE / T2)``.
    Both are computed from the final noise-free parameter maps (partial volume is applied to T1, T2 and PD, not to
    the signals), so a fit of a noiseless series returns the true map exactly. The raw series are rounded to
    float16 precision (relative 5e-4) so that they are stored at half size and round trips are exact.
    """
    labelled = _validate(
        case, disease, in_plane_spacing_mm, slice_thickness_mm, noise, misregistration_px, echo_times_ms
    )
    started = time.perf_counter()
    streams = np.random.SeedSequence([int(seed), zlib.crc32(case.patient_id.encode("utf-8"))]).spawn(7)
    geometry_rng, tissue_rng, kind_rng, disease_rng, map_rng, raw_rng, motion_rng = (
        np.random.default_rng(s) for s in streams
    )

    image = case.image.array.astype(np.float64)
    labels = case.labels.array
    n_k = labels.shape[0]
    dz, dj, di = case.image.geometry.spacing_kji_mm
    sources = _choose_slices(labelled)

    # geometry draws
    drawn_spacing = float(geometry_rng.uniform(*_SPACING_RANGE_MM))
    spacing = drawn_spacing if in_plane_spacing_mm is None else float(in_plane_spacing_mm)
    offsets_mm = geometry_rng.uniform(-dz / 4, dz / 4, size=3)
    size_ji = (max(1, round(labels.shape[1] * dj / spacing)), max(1, round(labels.shape[2] * di / spacing)))

    # tissue values and acquisition draws
    values = _draw_tissue_values(tissue_rng)
    table = _class_parameters(values)
    ratio = float(tissue_rng.uniform(*_LOOK_LOCKER_RATIO))
    rr_ms = float(tissue_rng.uniform(*_RR_MS))
    inversion_times = molli_inversion_times_ms(rr_ms, float(tissue_rng.uniform(*_FIRST_TI_MS)))
    texture_seed = int(tissue_rng.integers(2**31))

    kind = disease
    if kind == "random":
        names = list(_DISEASE_PROBABILITIES)
        kind = str(kind_rng.choice(names, p=[_DISEASE_PROBABILITIES[n] for n in names]))
    disease_info = _draw_disease(kind, disease_rng)

    # normalise the cine image to its LV blood pool and find the heart
    cavity = labels == LV_BLOOD_POOL
    reference = float(np.median(image[cavity])) if cavity.any() else float(np.percentile(image, 99))
    if reference <= 0:
        raise InputError(f"Case {case.case_id!r}: the cine image has no positive signal in the LV blood pool.")
    normalised = image / reference
    dark_threshold = _DARK_FRACTION_OF_MYOCARDIUM * float(np.median(normalised[labels == LV_MYOCARDIUM]))
    heart = np.isin(labels, (LV_MYOCARDIUM, LV_BLOOD_POOL))
    heart_centre_j = float(ndimage.center_of_mass(heart)[1])
    heart_radius_px = math.sqrt(heart.sum() / max(len(labelled), 1) / math.pi)
    septum = _septal_direction(labels[sources[1]])
    if septum is None:
        septum = next((d for d in (_septal_direction(labels[k]) for k in labelled) if d is not None),
                      np.array([-1.0, 0.0]))
    if disease_info["kind"] == "focal":
        centre = _sector_centre_angle(septum, disease_info["sector_centre_from_septum_deg"])
        disease_info["sector_centre_image_deg"] = math.degrees(centre)

    # tissue parameter maps per cine slice (only the slices a slab overlaps)
    weights = [_through_plane_weights(k, offsets_mm[n], dz, slice_thickness_mm, n_k) for n, k in enumerate(sources)]
    needed = sorted({k for w in weights for k in w})
    texture_rng = np.random.default_rng(texture_seed)
    sigma_px = (_TEXTURE_SIGMA_MM / dj, _TEXTURE_SIGMA_MM / di)
    level_of = {k: MAPPING_LEVELS[n] for n, k in enumerate(sources)}
    parameters: dict[int, np.ndarray] = {}
    diseased: dict[int, np.ndarray] = {}
    for k in needed:
        classes = _classify_slice(normalised[k], labels[k], (dj, di), dark_threshold, heart_centre_j, heart_radius_px)
        slice_parameters = table[classes].transpose(2, 0, 1).copy()  # (3: T1, T2, PD, j, i)
        field_ = ndimage.gaussian_filter(texture_rng.standard_normal((2, *classes.shape)), sigma=(0, *sigma_px))
        field_ /= np.maximum(field_.std(axis=(1, 2), keepdims=True), 1e-12)
        slice_parameters[:2] *= 1.0 + _TEXTURE_SD * field_
        nearest_level = level_of.get(k) or level_of[min(sources, key=lambda s: abs(s - k))]
        mask = _disease_mask(labels[k], disease_info, nearest_level in disease_info.get("levels", []))
        slice_parameters[0][mask] *= 1.0 + disease_info.get("t1_change_percent", 0.0) / 100
        slice_parameters[1][mask] *= 1.0 + disease_info.get("t2_change_percent", 0.0) / 100
        parameters[k] = slice_parameters
        diseased[k] = mask

    # tissue truth (no partial volume) on the cine grid
    tissue_t1 = [_median(parameters[k][0][labels[k] == LV_MYOCARDIUM]) for k in sources]
    tissue_t2 = [_median(parameters[k][1][labels[k] == LV_MYOCARDIUM]) for k in sources]

    # through-plane partial volume, resampling, in-plane partial volume
    mixed = np.stack([sum(w * parameters[k] for k, w in weight.items()) for weight in weights], axis=1)  # (3, 3, j, i)
    resampled = np.stack([
        _resample_stack(mixed[p], (dj, di), spacing, size_ji, nearest=False) for p in range(3)
    ])
    true_maps = ndimage.gaussian_filter(resampled, sigma=(0, 0, _INPLANE_BLUR_PX, _INPLANE_BLUR_PX))
    true_maps = np.maximum(true_maps, 0.0)
    out_labels = _resample_stack(labels[sources], (dj, di), spacing, size_ji, nearest=True).astype(np.uint8)
    out_disease = _resample_stack(np.stack([diseased[k] for k in sources]), (dj, di), spacing, size_ji,
                                  nearest=True).astype(np.uint8)
    out_disease &= (out_labels == LV_MYOCARDIUM).astype(np.uint8)
    t1_true, t2_true, pd = true_maps

    # scanner-like maps: true maps plus mild noise (noise 0: the true maps, as float32)
    maps, noise_free = {}, {}
    for name, truth_map in (("t1", t1_true), ("t2", t2_true)):
        relative_sd = _MAP_NOISE_GAIN[name] * noise / np.maximum(pd, 0.05)
        noisy = truth_map * (1.0 + relative_sd * map_rng.standard_normal(truth_map.shape))
        maps[name] = np.clip(noisy, *_MAP_LIMITS_MS[name]).astype(np.float32)
        noise_free[name] = np.clip(truth_map, *_MAP_LIMITS_MS[name]).astype(np.float32)

    # raw series from the noise-free parameters
    amplitude = _SIGNAL_SCALE * pd
    t1_star = np.maximum(t1_true, 1.0) / (ratio - 1.0)
    times = np.asarray(inversion_times)[:, None, None, None]
    molli = np.abs(amplitude - ratio * amplitude * np.exp(-times / t1_star))
    echoes = np.asarray([float(t) for t in echo_times_ms])[:, None, None, None]
    t2prep = amplitude * np.exp(-echoes / np.maximum(t2_true, 1.0))
    molli, molli_shifts = _shift_frames(molli, motion_rng, misregistration_px)
    t2prep, t2prep_shifts = _shift_frames(t2prep, motion_rng, misregistration_px)
    sigma = noise * _SIGNAL_SCALE
    molli = _rician(molli, sigma, raw_rng).astype(np.float16).astype(np.float32)
    t2prep = _rician(t2prep, sigma, raw_rng).astype(np.float16).astype(np.float32)

    # geometry: same direction, new in-plane grid over the same field of view, k at the basal slab
    source_geometry = case.image.geometry
    corner_shift = np.array([(spacing - di) / 2, (spacing - dj) / 2, sources[0] * dz + offsets_mm[0]])
    origin = np.asarray(source_geometry.origin_lps_mm) + source_geometry.direction_matrix @ corner_shift
    geometry = Geometry((spacing, spacing, float(slice_thickness_mm)), tuple(origin), source_geometry.direction_lps)

    myocardium = out_labels == LV_MYOCARDIUM
    lv_blood = out_labels == LV_BLOOD_POOL
    truth = {
        "levels": list(MAPPING_LEVELS),
        "t1_myocardium_median_ms": [_median(noise_free["t1"][n][myocardium[n]]) for n in range(3)],
        "t2_myocardium_median_ms": [_median(noise_free["t2"][n][myocardium[n]]) for n in range(3)],
        "t1_myocardium_tissue_median_ms": tissue_t1,
        "t2_myocardium_tissue_median_ms": tissue_t2,
        "t1_lv_blood_median_ms": [_median(noise_free["t1"][n][lv_blood[n]]) for n in range(3)],
        "t2_lv_blood_median_ms": [_median(noise_free["t2"][n][lv_blood[n]]) for n in range(3)],
        "myocardium_pixels": [int(m.sum()) for m in myocardium],
        "disease": disease_info,
        "tissue_values": values,
        "look_locker_ratio": ratio,
        "rr_ms": rr_ms,
        "in_plane_spacing_mm": spacing,
        "slice_thickness_mm": float(slice_thickness_mm),
        "slice_positions_mm": [float(k * dz + o) for k, o in zip(sources, offsets_mm)],
        "source_slices": [int(k) for k in sources],
        "partial_volume_weights": [{str(k): float(w) for k, w in weight.items()} for weight in weights],
        "noise": float(noise),
        "snr_blood": float(1.0 / noise) if noise > 0 else None,
        "misregistration_px": float(misregistration_px),
        "molli_shifts_px": molli_shifts,
        "t2prep_shifts_px": t2prep_shifts,
        "seed": int(seed),
        "source_case_id": case.case_id,
        "source_group": str(case.image_labels.get("group", "")),
        "source_spacing_mm": [float(v) for v in source_geometry.spacing_mm],
    }
    log.debug("Mapping case %s (%s) made in %.2f s", case.patient_id, disease_info["kind"],
              time.perf_counter() - started)
    return MappingCase(
        patient_id=case.patient_id,
        t1_map_ms=Volume(maps["t1"], geometry),
        t2_map_ms=Volume(maps["t2"], geometry),
        molli=Volume(molli, geometry, "tkji"),
        inversion_times_ms=inversion_times,
        t2prep=Volume(t2prep, geometry, "tkji"),
        t2prep_times_ms=tuple(float(t) for t in echo_times_ms),
        labels=Volume(out_labels, geometry),
        disease_mask=Volume(out_disease, geometry),
        truth=truth,
    )


# ---------------------------------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------------------------------
def save_mapping_case(mapping_case: MappingCase, path: str | os.PathLike) -> Path:
    """Write one case as a compressed ``.npz`` (atomically). Raw series are stored as float16."""
    target = Path(path)
    with atomic_path(target) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(
            handle,
            format=np.array(_FORMAT),
            version=np.array(_FORMAT_VERSION),
            patient_id=np.array(mapping_case.patient_id),
            geometry=np.array(json.dumps(mapping_case.t1_map_ms.geometry.to_dict())),
            truth=np.array(json.dumps(mapping_case.truth)),
            t1_map_ms=mapping_case.t1_map_ms.array.astype(np.float32),
            t2_map_ms=mapping_case.t2_map_ms.array.astype(np.float32),
            molli=mapping_case.molli.array.astype(np.float16),
            inversion_times_ms=np.asarray(mapping_case.inversion_times_ms, dtype=np.float64),
            t2prep=mapping_case.t2prep.array.astype(np.float16),
            t2prep_times_ms=np.asarray(mapping_case.t2prep_times_ms, dtype=np.float64),
            labels=mapping_case.labels.array.astype(np.uint8),
            disease_mask=mapping_case.disease_mask.array.astype(np.uint8),
        )
    return target


def load_mapping_case(path: str | os.PathLike) -> MappingCase:
    """Read a case written by :func:`build_mapping_dataset` (or ``save_mapping_case``).

    Parameters
    ----------
    path : a ``patientNNN.npz`` of a mapping data set.

    Returns
    -------
    MappingCase
        Equal to the case that was written (raw series back in float32).

    Raises
    ------
    DataError
        Missing or unreadable file, not a CardiacAI mapping case, another format version, or missing arrays.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"Mapping case not found: {source}")
    try:
        with np.load(source, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != _FORMAT:
                raise DataError(f"{source} is not a CardiacAI mapping case (no format {_FORMAT!r}).")
            if int(data["version"]) != _FORMAT_VERSION:
                raise DataError(
                    f"{source} is mapping-case version {int(data['version'])}; this CardiacAI reads version "
                    f"{_FORMAT_VERSION}. Rebuild the data set with build_mapping_dataset."
                )
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError, zlib.error) as e:
        raise DataError(f"Cannot read mapping case {source}: {e}") from e
    try:
        geometry = Geometry.from_dict(json.loads(str(arrays["geometry"])))
        return MappingCase(
            patient_id=str(arrays["patient_id"]),
            t1_map_ms=Volume(arrays["t1_map_ms"], geometry),
            t2_map_ms=Volume(arrays["t2_map_ms"], geometry),
            molli=Volume(arrays["molli"].astype(np.float32), geometry, "tkji"),
            inversion_times_ms=tuple(arrays["inversion_times_ms"].tolist()),
            t2prep=Volume(arrays["t2prep"].astype(np.float32), geometry, "tkji"),
            t2prep_times_ms=tuple(arrays["t2prep_times_ms"].tolist()),
            labels=Volume(arrays["labels"], geometry),
            disease_mask=Volume(arrays["disease_mask"], geometry),
            truth=json.loads(str(arrays["truth"])),
        )
    except (KeyError, json.JSONDecodeError, InputError) as e:
        raise DataError(f"Mapping case {source} is incomplete or inconsistent: {e}") from e


def build_mapping_dataset(
    acdc_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split_file: str | os.PathLike,
    parts: Sequence[str] = ("train", "validation", "test"),
    seed: int = 0,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write one semi-synthetic mapping case per ACDC patient (ED frame) and an index.

    Parameters
    ----------
    acdc_root : ACDC's ``training`` folder.
    out_dir : new or empty folder (or any folder with ``overwrite``); gets ``{part}/{patient_id}.npz`` and
        ``index.json``.
    split_file : a split written by ``cardiac_ai.datasets.save_split`` (use the cine models' split,
        ``Resources/Splits/acdc_cine_split.json``, so that no test patient is trained on).
    parts : which parts of the split to build.
    seed : passed to :func:`make_mapping_case` for every patient (with the patient id it fixes each case).
    overwrite : allow a folder that already holds files (files are replaced one by one).
    progress : called with (fraction, message) after each patient; may raise ``Cancelled``.

    Returns
    -------
    Path
        The ``index.json``: ``format``, ``version``, ``seed``, ``split_file``, ``parts`` and ``cases`` (one entry
        per patient: ``patient_id``, ``part``, ``file`` relative to the folder, ``group``, ``disease``,
        ``in_plane_spacing_mm``, per-slice true medians), ``seconds``.

    Raises
    ------
    InputError
        An unknown part name.
    DataError
        Unreadable ACDC folder or split file, or a split listing patients the folder lacks. Patients of the folder
        that the split does not list are skipped.
    OutputError
        An output folder that holds files (without ``overwrite``) or lies inside the ACDC folder.
    """
    from ..datasets import list_acdc, load_case, load_split, refs_in_part

    for part in parts:
        if part not in ("train", "validation", "test"):
            raise InputError(f"parts must be among 'train', 'validation', 'test', got {part!r}.")
    out = prepare_output_dir(out_dir, overwrite=overwrite, inputs=[acdc_root])
    split = load_split(split_file)
    refs = list_acdc(acdc_root, phases=("ED",))
    known = {ref.patient_id for ref in refs}
    wanted = [p for part in parts for p in getattr(split, part)]
    missing = [p for p in wanted if p not in known]
    if missing:
        raise DataError(
            f"Split {split_file} lists {len(missing)} patients that {acdc_root} lacks, e.g. {missing[:5]}; "
            "use the split made for this ACDC folder."
        )
    listed = [ref for ref in refs if ref.patient_id in set(split.patient_ids)]
    if len(listed) < len(refs):
        log.info("%d ACDC patients are not in split %s and are skipped", len(refs) - len(listed), split_file)
    chosen = [(part, ref) for part in parts for ref in refs_in_part(listed, split, part)]
    started = time.perf_counter()
    entries = []
    report(progress, 0.0, f"Building {len(chosen)} mapping cases")
    for number, (part, ref) in enumerate(chosen):
        mapping_case = make_mapping_case(load_case(ref), seed=seed)
        relative = Path(part) / f"{ref.patient_id}.npz"
        save_mapping_case(mapping_case, out / relative)
        truth = mapping_case.truth
        entries.append({
            "patient_id": ref.patient_id,
            "part": part,
            "file": relative.as_posix(),
            "group": str(ref.image_labels.get("group", "")),
            "disease": truth["disease"]["kind"],
            "in_plane_spacing_mm": truth["in_plane_spacing_mm"],
            "shape_kji": list(mapping_case.t1_map_ms.array.shape),
            "t1_myocardium_median_ms": truth["t1_myocardium_median_ms"],
            "t2_myocardium_median_ms": truth["t2_myocardium_median_ms"],
        })
        report(progress, (number + 1) / len(chosen), f"{ref.patient_id} ({part})")
    seconds = time.perf_counter() - started
    index = {
        "format": _INDEX_FORMAT,
        "version": _FORMAT_VERSION,
        "seed": int(seed),
        "split_file": str(split_file),
        "parts": list(parts),
        "levels": list(MAPPING_LEVELS),
        "cases": entries,
        "seconds": round(seconds, 2),
    }
    index_path = write_text_atomic(out / "index.json", json.dumps(index, indent=2) + "\n")
    log.info("Built %d mapping cases in %s in %.1f s", len(entries), out, seconds)
    return index_path
