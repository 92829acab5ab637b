"""Myocardial T1 / T2 statistics: global, AHA segments, septal ROI, blood pool and ECV, with a bullseye plot.

Angle and segment convention (AHA 16 segments)
----------------------------------------------
Angles are measured around the LV centre (centroid of LV myocardium + blood pool, holes filled) *as the (j, i)
array is displayed with row 0 at the top and column 0 at the left* (matplotlib ``imshow``): 0 deg points to
increasing column (screen right), 90 deg to decreasing row (screen top), angles grow counter-clockwise on screen.
Offsets are scaled by the pixel size first, so angles are physical on anisotropic pixels.

Segments are numbered from the **anterior RV insertion point** (the junction of RV and LV wall that lies
anteriorly) in the direction that crosses the septum towards the inferior insertion point. That direction is
anatomical: it is counter-clockwise on screen for a standard short-axis view (anterior up, RV on the image left)
and clockwise for a mirrored one. With ``phi`` the angle from the anterior insertion in that direction:

=========  ===========================================================  ==============================
level      sectors of ``phi``                                           segments
=========  ===========================================================  ==============================
base       [0, 60) [60, 120) [120, 180) [180, 240) [240, 300) [300, 360)  2, 3, 4, 5, 6, 1
mid        same                                                         8, 9, 10, 11, 12, 7
apex       [15, 105) [105, 195) [195, 285) [285, 375)                   14, 15, 16, 13
=========  ===========================================================  ==============================

So the anterior insertion is the border of segments 1/2 (7/8): 1 anterior, 2 anteroseptal, 3 inferoseptal,
4 inferior, 5 inferolateral, 6 anterolateral (Cerqueira et al., Circulation 2002;105:539-42). The insertion points
are usually about 120 deg apart, so the septum is segments 2-3. Apical sectors are 90 deg wide and centred on the
mid-septum (``phi`` = 60 deg) and on the directions 90 deg apart, i.e. their borders are 45 deg from those centres
(as the UK Biobank pipeline of Bai et al. 2018): 13 anterior, 14 septal, 15 inferior, 16 lateral.

Which insertion point is anterior: with a ``geometry``, the one with the smaller LPS y (P) coordinate; without, the
image is taken as a standard view, so the RV contact arc runs counter-clockwise on screen from the anterior to the
inferior point. Pass ``rv_insertion`` to override detection.

Statistics
----------
Standard deviations are sample SDs (``ddof=1``); percentiles use numpy's linear interpolation. Non-finite map values
inside the mask are excluded and counted (``n_nan``). Erosion is in-plane only (slice by slice), with an elliptic
footprint of radius ``erosion_mm`` in physical units.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError
from ..geometry import Geometry
from ..io.atomic import atomic_path
from ..labels import LV_BLOOD_POOL, MYOCARDIUM_CODES, RV_BLOOD_POOL, check_label_values
from .contours import _check_spacing_ji  # one validation of in-plane spacing for the package

__all__ = [
    "AHA_SEGMENT_NAMES",
    "ECV",
    "MapStatistics",
    "RVInsertion",
    "aha_segments",
    "bullseye_plot",
    "extracellular_volume",
    "find_rv_insertion",
    "lv_blood_pool_t1",
    "myocardial_statistics",
    "segment_statistics",
    "septal_roi",
    "synthetic_haematocrit",
]

log = logging.getLogger(__name__)


#: AHA segment number -> name (Cerqueira et al. 2002); 17 (apical cap) is not in short-axis slices.
AHA_SEGMENT_NAMES: dict[int, str] = {
    1: "basal anterior",
    2: "basal anteroseptal",
    3: "basal inferoseptal",
    4: "basal inferior",
    5: "basal inferolateral",
    6: "basal anterolateral",
    7: "mid anterior",
    8: "mid anteroseptal",
    9: "mid inferoseptal",
    10: "mid inferior",
    11: "mid inferolateral",
    12: "mid anterolateral",
    13: "apical anterior",
    14: "apical septal",
    15: "apical inferior",
    16: "apical lateral",
}

_LEVEL_SEGMENTS: dict[str, tuple[int, ...]] = {
    "base": (1, 2, 3, 4, 5, 6),
    "mid": (7, 8, 9, 10, 11, 12),
    "apex": (13, 14, 15, 16),
}

#: Treibel et al. synthetic haematocrit: Hct = slope / T1_blood_native[ms] + intercept (1.5 T).
_SYNTHETIC_HCT_SLOPE_MS = 866.0
_SYNTHETIC_HCT_INTERCEPT = -0.1232


# -- results -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MapStatistics:
    """Summary of the map values inside a region, in ``units`` (ms for T1 and T2 maps).

    ``n_pixels`` counts the finite values used; ``n_nan`` the non-finite values inside the region that were left
    out. With no value left every statistic is NaN and ``warnings`` says why.
    """

    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    iqr: float
    p5: float
    p95: float
    n_pixels: int
    n_nan: int
    erosion_mm: float = 0.0
    units: str = "ms"
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN becomes None)."""

        def clean(value: float) -> float | None:
            return None if not math.isfinite(value) else round(float(value), 4)

        return {
            "mean": clean(self.mean),
            "sd": clean(self.sd),
            "median": clean(self.median),
            "q1": clean(self.q1),
            "q3": clean(self.q3),
            "iqr": clean(self.iqr),
            "p5": clean(self.p5),
            "p95": clean(self.p95),
            "n_pixels": self.n_pixels,
            "n_nan": self.n_nan,
            "erosion_mm": self.erosion_mm,
            "units": self.units,
            "warnings": list(self.warnings),
        }


@dataclass(frozen=True)
class RVInsertion:
    """RV insertion points of one slice, (row, column) pixel coordinates.

    ``septal_arc_deg`` is the angle from the anterior to the inferior point through the septum;
    ``septum_counter_clockwise`` says whether that way is counter-clockwise on screen (see the module docstring).
    """

    anterior_px: tuple[float, float]
    inferior_px: tuple[float, float]
    centre_px: tuple[float, float]
    septal_arc_deg: float
    septum_counter_clockwise: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "anterior_px": [round(v, 3) for v in self.anterior_px],
            "inferior_px": [round(v, 3) for v in self.inferior_px],
            "centre_px": [round(v, 3) for v in self.centre_px],
            "septal_arc_deg": round(self.septal_arc_deg, 2),
            "septum_counter_clockwise": self.septum_counter_clockwise,
        }


@dataclass(frozen=True)
class ECV:
    """Extracellular volume fraction.

    ``ecv_fraction`` is a float for ROI values or a float32 array (NaN where a pixel's T1 values are unusable) for
    maps; 0.25 means 25 %. ``synthetic_haematocrit`` is True when ``haematocrit`` was estimated from native blood T1.
    """

    ecv_fraction: float | NDArray[np.float32]
    haematocrit: float
    synthetic_haematocrit: bool
    n_invalid_pixels: int = 0
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary; for a map, its median and pixel count instead of the array."""
        if isinstance(self.ecv_fraction, np.ndarray):
            finite = self.ecv_fraction[np.isfinite(self.ecv_fraction)]
            value: dict[str, Any] = {
                "ecv_fraction_median": round(float(np.median(finite)), 5) if finite.size else None,
                "n_pixels": int(finite.size),
            }
        else:
            value = {"ecv_fraction": round(float(self.ecv_fraction), 5)}
        return {
            **value,
            "haematocrit": round(self.haematocrit, 4),
            "synthetic_haematocrit": self.synthetic_haematocrit,
            "n_invalid_pixels": self.n_invalid_pixels,
            "warnings": list(self.warnings),
        }


# -- validation helpers ------------------------------------------------------------------------------------------
def _check_map(values: object, name: str) -> NDArray[np.float64]:
    if not isinstance(values, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(values).__name__}.")
    if values.ndim not in (2, 3):
        raise InputError(f"{name} must be (j, i) or (k, j, i), got shape {values.shape}.")
    if not (np.issubdtype(values.dtype, np.floating) or np.issubdtype(values.dtype, np.integer)):
        raise InputError(f"{name} must hold numbers, got dtype {values.dtype}.")
    return values.astype(np.float64, copy=False)


def _check_mask(mask: object, shape: tuple[int, ...], name: str) -> NDArray[np.bool_]:
    if not isinstance(mask, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(mask).__name__}.")
    if mask.shape != shape:
        raise InputError(f"{name} has shape {mask.shape} but the map has {shape}; pass the mask of the same slices.")
    if mask.dtype != bool:
        unique = np.unique(mask)
        if not np.all(np.isin(unique, (0, 1))):
            raise InputError(
                f"{name} must be boolean (or 0/1), found values {unique[:6].tolist()}. "
                "For a label map pass labels == 2 (LV myocardium)."
            )
    return mask.astype(bool, copy=False)


def _check_labels2d(labels2d: object) -> np.ndarray:
    if not isinstance(labels2d, np.ndarray):
        raise InputError(f"labels2d must be a numpy array, got {type(labels2d).__name__}.")
    if labels2d.ndim != 2:
        raise InputError(f"labels2d must be one 2D slice (j, i), got shape {labels2d.shape}. Pass labels[k].")
    check_label_values(labels2d, what="labels2d")
    return labels2d


def _resolve_spacing(spacing_ji_mm: object | None, geometry: Geometry | None) -> tuple[float, float]:
    if geometry is not None and not isinstance(geometry, Geometry):
        raise InputError(f"geometry must be a cardiac_ai.geometry.Geometry, got {type(geometry).__name__}.")
    from_geometry = None if geometry is None else tuple(geometry.spacing_kji_mm[1:])
    if spacing_ji_mm is None:
        return (1.0, 1.0) if from_geometry is None else from_geometry  # type: ignore[return-value]
    spacing = _check_spacing_ji(spacing_ji_mm)
    if from_geometry is not None and not np.allclose(spacing, from_geometry, rtol=1e-4):
        raise InputError(
            f"spacing_ji_mm {spacing} disagrees with the geometry's in-plane spacing {from_geometry} (row, column)."
        )
    return spacing


def _erode_in_plane(
    mask: NDArray[np.bool_], erosion_mm: float, spacing_ji_mm: object | None, what: str
) -> tuple[NDArray[np.bool_], list[str]]:
    """Erode each slice of ``mask`` by ``erosion_mm``; raise if nothing is left."""
    if not (math.isfinite(erosion_mm) and erosion_mm >= 0):
        raise InputError(f"erosion_mm must be >= 0, got {erosion_mm}.")
    if erosion_mm == 0:
        return mask, []
    if spacing_ji_mm is None:
        raise InputError("Erosion needs the pixel size: pass spacing_ji_mm (row, column) in mm.")
    sj, si = _check_spacing_ji(spacing_ji_mm)
    rj, ri = int(erosion_mm // sj), int(erosion_mm // si)
    if rj == 0 and ri == 0:
        message = f"erosion_mm={erosion_mm} is smaller than one pixel ({sj} x {si} mm): the {what} was not eroded."
        log.warning(message)
        return mask, [message]
    jj, ii = np.mgrid[-rj : rj + 1, -ri : ri + 1]
    footprint = (jj * sj) ** 2 + (ii * si) ** 2 <= erosion_mm**2 + 1e-9
    if mask.ndim == 3:
        footprint = footprint[None]
    eroded = ndimage.binary_erosion(mask, structure=footprint)
    if not eroded.any():
        raise InputError(
            f"Eroding the {what} ({int(mask.sum())} pixels) by {erosion_mm} mm leaves no pixel; "
            "pass a smaller erosion_mm (or 0)."
        )
    return eroded, []


def _summarise(
    values: NDArray[np.float64], n_nan: int, erosion_mm: float, units: str, notes: list[str]
) -> MapStatistics:
    if values.size == 0:
        nan = math.nan
        return MapStatistics(nan, nan, nan, nan, nan, nan, nan, nan, 0, n_nan, erosion_mm, units, tuple(notes))
    p5, q1, median, q3, p95 = (float(v) for v in np.percentile(values, [5, 25, 50, 75, 95]))
    sd = float(np.std(values, ddof=1)) if values.size > 1 else math.nan
    return MapStatistics(
        mean=float(np.mean(values)),
        sd=sd,
        median=median,
        q1=q1,
        q3=q3,
        iqr=q3 - q1,
        p5=p5,
        p95=p95,
        n_pixels=int(values.size),
        n_nan=n_nan,
        erosion_mm=float(erosion_mm),
        units=units,
        warnings=tuple(notes),
    )


def _region_statistics(
    values: NDArray[np.float64], mask: NDArray[np.bool_], erosion_mm: float, units: str, notes: list[str]
) -> MapStatistics:
    inside = values[mask]
    finite = np.isfinite(inside)
    n_nan = int((~finite).sum())
    if n_nan:
        notes = [*notes, f"{n_nan} non-finite map value(s) inside the region were left out."]
    return _summarise(inside[finite], n_nan, erosion_mm, units, notes)


# -- global statistics -------------------------------------------------------------------------------------------
def myocardial_statistics(
    map_values: NDArray[np.floating],
    myocardium_mask: NDArray[np.bool_],
    *,
    erosion_mm: float = 0.0,
    spacing_ji_mm: Sequence[float] | None = None,
    units: str = "ms",
) -> MapStatistics:
    """Mean, SD, median, quartiles, 5th / 95th percentiles and pixel count of a map inside the myocardium.

    Parameters
    ----------
    map_values : (j, i) or (k, j, i) float ndarray
        T1 or T2 map in ms (or any map in ``units``); NaN marks pixels that were not fitted.
    myocardium_mask : bool ndarray, same shape
        Region to summarise (e.g. ``labels == 2``).
    erosion_mm : float
        Erode the region in-plane by this distance first, to avoid partial volume with blood and fat.
    spacing_ji_mm : (2,) floats, optional
        (row, column) pixel size in mm; required when ``erosion_mm > 0``.
    units : str
        Units of the map, copied into the result.

    Returns
    -------
    MapStatistics

    Raises
    ------
    InputError
        If the shapes differ, the mask is empty, erosion leaves nothing, or no finite map value lies inside.
    """
    values = _check_map(map_values, "map_values")
    mask = _check_mask(myocardium_mask, values.shape, "myocardium_mask")
    if not mask.any():
        raise InputError("myocardium_mask is empty: there is no myocardium to summarise in these slices.")
    mask, notes = _erode_in_plane(mask, erosion_mm, spacing_ji_mm, "myocardium")
    result = _region_statistics(values, mask, erosion_mm, units, notes)
    if result.n_pixels == 0:
        raise InputError(
            f"All {result.n_nan} map values inside the myocardium are NaN or infinite; "
            "the map was not fitted there (check the fit's mask and R^2 map)."
        )
    return result


# -- RV insertion and AHA segments -------------------------------------------------------------------------------
def _screen_angles_deg(
    rows: NDArray, cols: NDArray, centre: tuple[float, float], spacing: tuple[float, float]
) -> NDArray:
    """Angle of (row, col) points around ``centre`` as displayed (0 = right, 90 = up), in [0, 360)."""
    dy = -(np.asarray(rows, dtype=np.float64) - centre[0]) * spacing[0]
    dx = (np.asarray(cols, dtype=np.float64) - centre[1]) * spacing[1]
    return np.mod(np.degrees(np.arctan2(dy, dx)), 360.0)


def _lv_centre(labels: np.ndarray) -> tuple[float, float]:
    lv = ndimage.binary_fill_holes(np.isin(labels, (*MYOCARDIUM_CODES, LV_BLOOD_POOL)))
    if not lv.any():
        raise InputError("The slice has no LV myocardium or blood pool; it has no AHA segments.")
    rows, cols = np.nonzero(lv)
    return float(rows.mean()), float(cols.mean())


def _is_more_anterior(a: tuple[float, float], b: tuple[float, float], geometry: Geometry) -> bool:
    """True if pixel a lies more anteriorly (smaller LPS y) than pixel b in the same slice."""
    scaled = geometry.direction_matrix @ np.diag(geometry.spacing_mm)
    delta_ijk = np.array([a[1] - b[1], a[0] - b[0], 0.0])
    return float((scaled @ delta_ijk)[1]) < 0


def find_rv_insertion(
    labels2d: NDArray[np.integer],
    *,
    geometry: Geometry | None = None,
    spacing_ji_mm: Sequence[float] | None = None,
    contact_px: float = 1.5,
) -> RVInsertion:
    """Find the anterior and inferior RV insertion points of one short-axis slice.

    The contact region is the LV myocardium within ``contact_px`` pixels of the RV blood pool (label 1). Its
    pixels' angles around the LV centre form an arc; the insertion points are the contact pixels at the two ends
    of the arc (the arc is the circle minus its largest angular gap). See the module docstring for which end is
    anterior.

    Parameters
    ----------
    labels2d : (j, i) integer ndarray
        Labels of one slice (1 RV blood pool, 2 LV myocardium, 3 LV blood pool).
    geometry : Geometry, optional
        Geometry of the stack; used to tell the anterior point (smaller LPS y) and for the pixel size.
    spacing_ji_mm : (2,) floats, optional
        (row, column) pixel size in mm, for physical angles; default the geometry's, else square pixels.
    contact_px : float
        Largest distance in pixels between RV blood pool and myocardium that counts as contact.

    Returns
    -------
    RVInsertion

    Raises
    ------
    InputError
        If the slice has no myocardium, no RV blood pool, or they do not touch.
    """
    labels = _check_labels2d(labels2d)
    spacing = _resolve_spacing(spacing_ji_mm, geometry)
    if not (math.isfinite(contact_px) and contact_px >= 1.0):
        raise InputError(f"contact_px must be at least 1 (adjacent pixels), got {contact_px}.")
    myocardium = np.isin(labels, MYOCARDIUM_CODES)
    rv = labels == RV_BLOOD_POOL
    if not myocardium.any():
        raise InputError("The slice has no LV myocardium (label 2); it has no RV insertion points.")
    if not rv.any():
        raise InputError(
            "The slice has no RV blood pool (label 1), so the RV insertion points cannot be found. "
            "Pass rv_insertion explicitly, or use a segmentation that includes the RV."
        )
    distance_to_rv = ndimage.distance_transform_edt(~rv)
    contact = myocardium & (distance_to_rv <= contact_px)
    if not contact.any():
        raise InputError(
            f"The RV blood pool does not touch the LV myocardium (no myocardium pixel within {contact_px} px). "
            "Pass rv_insertion explicitly or a larger contact_px."
        )
    centre = _lv_centre(labels)
    rows, cols = np.nonzero(contact)
    angles = _screen_angles_deg(rows, cols, centre, spacing)
    order = np.argsort(angles)
    sorted_angles = angles[order]
    gaps = np.diff(np.concatenate([sorted_angles, sorted_angles[:1] + 360.0]))
    widest = int(np.argmax(gaps))
    # Counter-clockwise on screen the arc starts after the widest gap and ends before it.
    start = order[(widest + 1) % len(order)]
    end = order[widest]
    arc = float(360.0 - gaps[widest])
    start_px = (float(rows[start]), float(cols[start]))
    end_px = (float(rows[end]), float(cols[end]))
    if arc >= 270.0:
        log.warning("RV contact spans %.0f deg of the LV; the insertion points may be unreliable.", arc)
    anterior_is_start = True if geometry is None else _is_more_anterior(start_px, end_px, geometry)
    if anterior_is_start:
        return RVInsertion(start_px, end_px, centre, arc, True)
    return RVInsertion(end_px, start_px, centre, arc, False)


def _insertion_from_points(rv_insertion: object, labels: np.ndarray, spacing: tuple[float, float]) -> RVInsertion:
    """Accept an RVInsertion or a pair ((row, col) anterior, (row, col) inferior)."""
    if isinstance(rv_insertion, RVInsertion):
        return rv_insertion
    try:
        points = np.asarray(rv_insertion, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"rv_insertion must be an RVInsertion or two (row, col) points, got {rv_insertion!r}.") from e
    if points.shape != (2, 2) or not np.all(np.isfinite(points)):
        raise InputError(
            "rv_insertion must be an RVInsertion or ((row, col) anterior, (row, col) inferior), "
            f"got shape {points.shape}."
        )
    centre = _lv_centre(labels)
    a_ant, a_inf = _screen_angles_deg(points[:, 0], points[:, 1], centre, spacing)
    ccw = float(np.mod(a_inf - a_ant, 360.0))
    # The septum is the shorter way round from the anterior to the inferior point.
    counter_clockwise = ccw <= 180.0
    arc = ccw if counter_clockwise else 360.0 - ccw
    return RVInsertion(tuple(points[0]), tuple(points[1]), centre, arc, counter_clockwise)  # type: ignore[arg-type]


def _septal_angles(
    labels: np.ndarray, insertion: RVInsertion, spacing: tuple[float, float]
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """phi (deg from the anterior insertion towards the septum) of every pixel, and the myocardium mask."""
    myocardium = np.isin(labels, MYOCARDIUM_CODES)
    rows, cols = np.indices(labels.shape)
    theta = _screen_angles_deg(rows, cols, insertion.centre_px, spacing)
    anterior_row, anterior_col = insertion.anterior_px
    theta_anterior = float(_screen_angles_deg(anterior_row, anterior_col, insertion.centre_px, spacing))
    sign = 1.0 if insertion.septum_counter_clockwise else -1.0
    return np.mod(sign * (theta - theta_anterior), 360.0), myocardium


def aha_segments(
    labels2d: NDArray[np.integer],
    *,
    level: Literal["base", "mid", "apex"],
    rv_insertion: RVInsertion | Sequence[Sequence[float]] | None = None,
    geometry: Geometry | None = None,
    spacing_ji_mm: Sequence[float] | None = None,
) -> NDArray[np.int8]:
    """AHA segment of every myocardium pixel of one short-axis slice.

    Parameters
    ----------
    labels2d : (j, i) integer ndarray
        Labels of one slice; myocardium is label 2 (scar 4 and MVO 5 count as myocardium).
    level : {"base", "mid", "apex"}
        Slice level: segments 1-6, 7-12 or 13-16.
    rv_insertion : RVInsertion or ((row, col) anterior, (row, col) inferior), optional
        Insertion points; found with :func:`find_rv_insertion` when None. With two points the septum is taken as
        the shorter way round between them.
    geometry : Geometry, optional
        Used to tell the anterior insertion point and for the pixel size.
    spacing_ji_mm : (2,) floats, optional
        (row, column) pixel size in mm; default the geometry's, else square pixels.

    Returns
    -------
    (j, i) int8 ndarray
        Segment number 1-16 on myocardium pixels, 0 elsewhere; numbering as in the module docstring.

    Raises
    ------
    InputError
        If the level is unknown, the slice has no myocardium, or the insertion points cannot be found.
    """
    if level not in _LEVEL_SEGMENTS:
        raise InputError(f"level must be one of {list(_LEVEL_SEGMENTS)}, got {level!r}.")
    labels = _check_labels2d(labels2d)
    spacing = _resolve_spacing(spacing_ji_mm, geometry)
    if not np.isin(labels, MYOCARDIUM_CODES).any():
        raise InputError("The slice has no LV myocardium (label 2); it has no AHA segments.")
    if rv_insertion is None:
        insertion = find_rv_insertion(labels, geometry=geometry, spacing_ji_mm=spacing)
    else:
        insertion = _insertion_from_points(rv_insertion, labels, spacing)
    phi, myocardium = _septal_angles(labels, insertion, spacing)
    if level == "apex":
        # 0 septal (14), 1 inferior (15), 2 lateral (16), 3 anterior (13)
        index = np.floor(np.mod(phi - 15.0, 360.0) / 90.0).astype(np.int64) % 4
        segments = 13 + (index + 1) % 4
    else:
        # 0 anteroseptal (2), 1 inferoseptal (3), ..., 5 anterior (1)
        index = np.floor(phi / 60.0).astype(np.int64) % 6
        segments = 1 + (index + 1) % 6 + (6 if level == "mid" else 0)
    return np.where(myocardium, segments, 0).astype(np.int8)


def segment_statistics(
    map_values: NDArray[np.floating],
    segment_map: NDArray[np.integer],
    *,
    erosion_mm: float = 0.0,
    spacing_ji_mm: Sequence[float] | None = None,
    units: str = "ms",
) -> dict[int, MapStatistics]:
    """Statistics of a map in each AHA segment.

    Parameters
    ----------
    map_values : (j, i) or (k, j, i) float ndarray
        T1 or T2 map in ms (or ``units``).
    segment_map : integer ndarray, same shape
        Output of :func:`aha_segments` (stacked for several slices): 1-16 on myocardium, 0 elsewhere.
    erosion_mm : float
        The whole myocardium (segment_map > 0) is eroded in-plane by this distance before it is split.
    spacing_ji_mm : (2,) floats, optional
        (row, column) pixel size in mm; required when ``erosion_mm > 0``.
    units : str
        Units of the map.

    Returns
    -------
    dict
        Segment number -> MapStatistics, for every segment of each level present in ``segment_map`` (a level is
        present when any of its segments is). A segment without pixels has NaN statistics and a warning.

    Raises
    ------
    InputError
        If shapes differ, ``segment_map`` holds values outside 0-16 or no segment at all.
    """
    values = _check_map(map_values, "map_values")
    if not isinstance(segment_map, np.ndarray) or segment_map.shape != values.shape:
        found = getattr(segment_map, "shape", type(segment_map).__name__)
        raise InputError(f"segment_map must be an array of the map's shape {values.shape}, got {found}.")
    if not np.issubdtype(segment_map.dtype, np.integer):
        raise InputError(f"segment_map must hold integer segment numbers, got dtype {segment_map.dtype}.")
    present = set(np.unique(segment_map).tolist()) - {0}
    bad = sorted(v for v in present if not 1 <= v <= 16)
    if bad:
        raise InputError(f"segment_map holds {bad}; AHA segments are 1-16 (0 outside the myocardium).")
    if not present:
        raise InputError("segment_map has no segment (all zero); compute it with aha_segments first.")
    myocardium, notes = _erode_in_plane(segment_map > 0, erosion_mm, spacing_ji_mm, "myocardium")
    expected = sorted(s for segs in _LEVEL_SEGMENTS.values() if present & set(segs) for s in segs)
    result: dict[int, MapStatistics] = {}
    for segment in expected:
        region = myocardium & (segment_map == segment)
        stats = _region_statistics(values, region, erosion_mm, units, list(notes))
        if stats.n_pixels == 0:
            message = f"AHA segment {segment} ({AHA_SEGMENT_NAMES[segment]}) has no usable pixel."
            log.warning(message)
            stats = _summarise(np.empty(0), stats.n_nan, erosion_mm, units, [*stats.warnings, message])
        result[segment] = stats
    return result


# -- bullseye plot -----------------------------------------------------------------------------------------------
def _bullseye_layout() -> dict[int, tuple[float, float, float, float]]:
    """Segment -> (centre angle rad, width rad, inner radius, outer radius); anterior up, septum left."""
    layout = {}
    for ring, (first, inner, outer) in enumerate(((1, 0.75, 1.0), (7, 0.5, 0.75))):
        for n in range(6):
            layout[first + n] = (math.radians(90.0 + 60.0 * n), math.radians(60.0), inner, outer)
    for n in range(4):
        layout[13 + n] = (math.radians(90.0 + 90.0 * n), math.radians(90.0), 0.22, 0.5)
    return layout


def bullseye_plot(
    values: Mapping[int, float],
    path: str | os.PathLike,
    *,
    title: str = "",
    units: str = "ms",
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    value_format: str = "{:.0f}",
) -> Path:
    """Write a 16-segment AHA bullseye of segment values as a PNG.

    Standard orientation: basal ring outside, apical ring inside, anterior (1, 7, 13) at the top, septum
    (2-3, 8-9, 14) on the left. Segments missing from ``values`` or NaN are grey and marked "n/a".

    Parameters
    ----------
    values : mapping int -> float
        Segment number (1-16) -> value in ``units`` (e.g. median T1 in ms).
    path : path-like
        Output PNG, written atomically.
    title : str
        Figure title.
    units : str
        Colour-bar label.
    vmin, vmax : float, optional
        Colour range; default the range of the finite values.
    cmap : str
        Matplotlib colour map name.
    value_format : str
        Format of the number printed in each segment.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    InputError
        If a key is not a segment 1-16, a value is not a number, or vmin >= vmax.
    """
    try:
        from matplotlib import colormaps
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize
        from matplotlib.figure import Figure
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise InputError("matplotlib is required to draw the bullseye plot: pip install matplotlib") from e
    cleaned: dict[int, float] = {}
    for key, value in values.items():
        if not isinstance(key, (int, np.integer)) or not 1 <= int(key) <= 16:
            raise InputError(f"bullseye_plot keys must be AHA segments 1-16, got {key!r}.")
        try:
            cleaned[int(key)] = float(value)
        except (TypeError, ValueError) as e:
            raise InputError(f"Segment {key}: value {value!r} is not a number.") from e
    finite = [v for v in cleaned.values() if math.isfinite(v)]
    low = vmin if vmin is not None else (min(finite) if finite else 0.0)
    high = vmax if vmax is not None else (max(finite) if finite else 1.0)
    if high == low and vmin is None and vmax is None:
        low, high = low - 1.0, high + 1.0
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise InputError(f"The colour range needs vmin < vmax, got vmin={low}, vmax={high}.")
    try:
        colour_map = colormaps[cmap]
    except KeyError as e:
        raise InputError(f"Unknown matplotlib colour map {cmap!r}.") from e
    norm = Normalize(vmin=low, vmax=high)

    figure = Figure(figsize=(5.0, 4.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(projection="polar")
    for segment, (angle, width, inner, outer) in _bullseye_layout().items():
        value = cleaned.get(segment, math.nan)
        missing = not math.isfinite(value)
        colour = (0.82, 0.82, 0.82, 1.0) if missing else colour_map(norm(value))
        axes.bar(angle, outer - inner, width=width, bottom=inner, color=colour, edgecolor="white", linewidth=1.5)
        label = f"{segment}\nn/a" if missing else f"{segment}\n{value_format.format(value)}"
        luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
        axes.text(
            angle,
            (inner + outer) / 2,
            label,
            ha="center",
            va="center",
            fontsize=7,
            color="black" if luminance > 0.5 else "white",
        )
    axes.set_ylim(0, 1.0)
    axes.set_axis_off()
    if title:
        axes.set_title(title, fontsize=10)
    colour_bar = figure.colorbar(ScalarMappable(norm=norm, cmap=colour_map), ax=axes, shrink=0.7, pad=0.08)
    colour_bar.set_label(units)
    target = Path(path)
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png")
    return target


# -- ROIs --------------------------------------------------------------------------------------------------------
def septal_roi(
    labels2d: NDArray[np.integer],
    rv_insertion: RVInsertion | Sequence[Sequence[float]] | None = None,
    *,
    margin_deg: float = 10.0,
    erosion_mm: float | None = None,
    geometry: Geometry | None = None,
    spacing_ji_mm: Sequence[float] | None = None,
) -> NDArray[np.bool_]:
    """Septal ROI of a (mid-ventricular) slice: the myocardium between the RV insertion points, eroded.

    As the SCMR recommendation for a conservative septal ROI: the myocardium whose angle lies between the anterior
    and inferior insertion points (through the septum), ``margin_deg`` away from each insertion point, with
    ``erosion_mm`` removed at the endo- and epicardial borders.

    Parameters
    ----------
    labels2d : (j, i) integer ndarray
        Labels of one slice.
    rv_insertion : RVInsertion or ((row, col) anterior, (row, col) inferior), optional
        Found with :func:`find_rv_insertion` when None.
    margin_deg : float
        Angle kept clear of each insertion point.
    erosion_mm : float, optional
        Border erosion; default one pixel (the larger pixel side).
    geometry : Geometry, optional
        Used to tell the anterior point and for the pixel size.
    spacing_ji_mm : (2,) floats, optional
        (row, column) pixel size in mm; default the geometry's, else square pixels.

    Returns
    -------
    (j, i) bool ndarray

    Raises
    ------
    InputError
        If the insertion points cannot be found, the margins leave no angle, or the ROI is empty.
    """
    labels = _check_labels2d(labels2d)
    spacing = _resolve_spacing(spacing_ji_mm, geometry)
    if not (math.isfinite(margin_deg) and margin_deg >= 0):
        raise InputError(f"margin_deg must be >= 0, got {margin_deg}.")
    if not np.isin(labels, MYOCARDIUM_CODES).any():
        raise InputError("The slice has no LV myocardium (label 2); it has no septal ROI.")
    if rv_insertion is None:
        insertion = find_rv_insertion(labels, geometry=geometry, spacing_ji_mm=spacing)
    else:
        insertion = _insertion_from_points(rv_insertion, labels, spacing)
    if insertion.septal_arc_deg <= 2 * margin_deg:
        raise InputError(
            f"The insertion points are {insertion.septal_arc_deg:.0f} deg apart, not more than twice "
            f"margin_deg={margin_deg}; pass a smaller margin_deg."
        )
    phi, myocardium = _septal_angles(labels, insertion, spacing)
    sector = (phi >= margin_deg) & (phi <= insertion.septal_arc_deg - margin_deg)
    erosion = max(spacing) if erosion_mm is None else erosion_mm
    eroded, _ = _erode_in_plane(myocardium, erosion, spacing, "myocardium")
    roi = eroded & sector
    if not roi.any():
        raise InputError(
            "The septal ROI is empty after erosion; the septum is too thin for erosion_mm="
            f"{erosion} mm. Pass a smaller erosion_mm."
        )
    return roi


def lv_blood_pool_t1(
    t1_map_ms: NDArray[np.floating],
    labels: NDArray[np.integer],
    *,
    spacing_ji_mm: Sequence[float],
    erosion_mm: float = 2.0,
) -> MapStatistics:
    """T1 statistics of the LV blood pool (label 3), eroded away from the myocardium and papillary muscles.

    Parameters
    ----------
    t1_map_ms : (j, i) or (k, j, i) float ndarray
        T1 map in ms.
    labels : integer ndarray, same shape
        Label map (3 = LV blood pool).
    spacing_ji_mm : (2,) floats
        (row, column) pixel size in mm.
    erosion_mm : float
        In-plane erosion of the blood pool.

    Returns
    -------
    MapStatistics

    Raises
    ------
    InputError
        If shapes differ, there is no blood pool, erosion leaves nothing, or every value inside is NaN.
    """
    values = _check_map(t1_map_ms, "t1_map_ms")
    if not isinstance(labels, np.ndarray) or labels.shape != values.shape:
        found = getattr(labels, "shape", type(labels).__name__)
        raise InputError(f"labels must be an array of the map's shape {values.shape}, got {found}.")
    check_label_values(labels, what="labels")
    blood = labels == LV_BLOOD_POOL
    if not blood.any():
        raise InputError("The labels have no LV blood pool (label 3); blood T1 cannot be measured.")
    blood, notes = _erode_in_plane(blood, erosion_mm, spacing_ji_mm, "LV blood pool")
    result = _region_statistics(values, blood, erosion_mm, "ms", notes)
    if result.n_pixels == 0:
        raise InputError("Every T1 value inside the LV blood pool is NaN or infinite; check the fitted map.")
    return result


# -- ECV ---------------------------------------------------------------------------------------------------------
def synthetic_haematocrit(native_t1_blood_ms: float) -> float:
    """Haematocrit estimated from native blood T1 (synthetic haematocrit).

    ``Hct = 866.0 / T1_blood_native[ms] - 0.1232`` (i.e. 866.0 * R1 - 0.1232 with R1 = 1 / T1 in 1/ms), the
    regression of Treibel et al. for 1.5 T: Treibel TA, Fontana M, Maestrini V, et al. *Automatic measurement of
    the myocardial interstitium: synthetic extracellular volume quantification without hematocrit sampling.*
    JACC Cardiovasc Imaging 2016;9(1):54-63. It was calibrated for a specific T1 sequence at 1.5 T: at 3 T or with
    another sequence, measure the haematocrit. The result is a fraction (0.42 = 42 %).

    Raises
    ------
    InputError
        If the T1 is not positive and finite, or the estimate falls outside 0-1.
    """
    t1 = float(native_t1_blood_ms)
    if not (math.isfinite(t1) and t1 > 0):
        raise InputError(f"native_t1_blood_ms must be a positive T1 in ms, got {native_t1_blood_ms!r}.")
    haematocrit = _SYNTHETIC_HCT_SLOPE_MS / t1 + _SYNTHETIC_HCT_INTERCEPT
    if not 0.0 < haematocrit < 1.0:
        raise InputError(
            f"Native blood T1 of {t1:.0f} ms gives a synthetic haematocrit of {haematocrit:.3f}, outside 0-1: "
            "the value is not a 1.5 T native blood T1 in ms. Pass the measured haematocrit."
        )
    return haematocrit


def _check_blood_t1(value: object, name: str) -> float:
    try:
        t1 = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as e:
        raise InputError(
            f"{name} must be one T1 value in ms (the blood-pool ROI mean or median), got {value!r}."
        ) from e
    if not (math.isfinite(t1) and t1 > 0):
        raise InputError(f"{name} must be a positive T1 in ms, got {t1}.")
    return t1


def extracellular_volume(
    native_t1_myo: float | NDArray[np.floating],
    post_t1_myo: float | NDArray[np.floating],
    native_t1_blood: float,
    post_t1_blood: float,
    *,
    haematocrit: float | None = None,
    field_strength_t: float = 1.5,
) -> ECV:
    """Extracellular volume fraction from native and post-contrast T1, for an ROI or pixel by pixel.

    ``ECV = (1 - Hct) * dR1_myo / dR1_blood`` with ``dR1 = 1 / T1_post - 1 / T1_native`` (T1 in ms). Without a
    measured haematocrit the synthetic haematocrit of :func:`synthetic_haematocrit` is used
    (``Hct = 866.0 / T1_blood_native - 0.1232``, Treibel et al. 2016, 1.5 T) and the result says so.

    Parameters
    ----------
    native_t1_myo, post_t1_myo : float, or float ndarray of one shape
        Myocardial T1 in ms: ROI values, or co-registered maps for a pixelwise ECV map.
    native_t1_blood, post_t1_blood : float
        LV blood-pool T1 in ms (e.g. ``lv_blood_pool_t1(...).median``).
    haematocrit : float, optional
        Measured haematocrit as a fraction (0.42, not 42).
    field_strength_t : float
        Field strength in tesla; the synthetic haematocrit is only offered at 1.5 T.

    Returns
    -------
    ECV
        Map pixels whose T1 values are not positive and finite are NaN and counted in ``n_invalid_pixels``.

    Raises
    ------
    InputError
        If the blood T1 values are unusable or post-contrast blood T1 is not shorter than native, ROI values are
        unusable, maps differ in shape, the haematocrit is not a fraction, or a synthetic haematocrit is needed
        at a field other than 1.5 T.
    """
    blood_native = _check_blood_t1(native_t1_blood, "native_t1_blood")
    blood_post = _check_blood_t1(post_t1_blood, "post_t1_blood")
    if blood_post >= blood_native:
        raise InputError(
            f"Post-contrast blood T1 ({blood_post:.0f} ms) is not shorter than native blood T1 "
            f"({blood_native:.0f} ms); "
            "check that the native and post-contrast maps are not swapped."
        )
    notes: list[str] = []
    if haematocrit is None:
        if not math.isclose(field_strength_t, 1.5, abs_tol=0.05):
            raise InputError(
                f"The synthetic haematocrit formula is calibrated at 1.5 T, not {field_strength_t} T; "
                "pass the measured haematocrit."
            )
        hct = synthetic_haematocrit(blood_native)
        synthetic = True
        notes.append(
            f"Synthetic haematocrit {hct:.3f} from native blood T1 {blood_native:.0f} ms "
            "(Treibel et al. 2016, 1.5 T: Hct = 866.0 / T1 - 0.1232)."
        )
        if not 0.2 <= hct <= 0.6:
            notes.append(f"Synthetic haematocrit {hct:.3f} is outside the usual 0.20-0.60; check the blood T1.")
            log.warning(notes[-1])
    else:
        hct = float(haematocrit)
        synthetic = False
        if not (math.isfinite(hct) and 0.0 < hct < 1.0):
            hint = f" It looks like a percentage: pass {hct / 100:.2f}." if 1.0 < hct <= 100.0 else ""
            raise InputError(f"haematocrit must be a fraction between 0 and 1, got {haematocrit!r}.{hint}")
    delta_r1_blood = 1.0 / blood_post - 1.0 / blood_native

    scalar = np.ndim(native_t1_myo) == 0 and np.ndim(post_t1_myo) == 0
    if scalar:
        native = _check_blood_t1(native_t1_myo, "native_t1_myo")
        post = _check_blood_t1(post_t1_myo, "post_t1_myo")
        ecv = (1.0 - hct) * (1.0 / post - 1.0 / native) / delta_r1_blood
        if not 0.0 <= ecv <= 1.0:
            notes.append(f"ECV {ecv:.3f} is outside 0-1; check the ROI values and the T1 maps.")
            log.warning(notes[-1])
        return ECV(float(ecv), hct, synthetic, 0, tuple(notes))

    native_map = np.asarray(native_t1_myo, dtype=np.float64)
    post_map = np.asarray(post_t1_myo, dtype=np.float64)
    if native_map.shape != post_map.shape:
        raise InputError(
            f"native_t1_myo has shape {native_map.shape} but post_t1_myo has {post_map.shape}; "
            "pixelwise ECV needs co-registered maps of one shape (or pass ROI values)."
        )
    valid = np.isfinite(native_map) & np.isfinite(post_map) & (native_map > 0) & (post_map > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecv_map = (1.0 - hct) * (1.0 / post_map - 1.0 / native_map) / delta_r1_blood
    ecv_map = np.where(valid, ecv_map, np.nan).astype(np.float32)
    n_invalid = int((~valid).sum())
    if n_invalid:
        notes.append(f"{n_invalid} pixel(s) without a positive finite native and post-contrast T1 are NaN.")
        log.warning(notes[-1])
    return ECV(ecv_map, hct, synthetic, n_invalid, tuple(notes))
