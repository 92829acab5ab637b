"""Clinical numbers of an LGE scar segmentation: size, share of the myocardium, MVO, and transmurality per sector.

Pure numpy/scipy on a (k, j, i) label map with CardiacAI codes: 2 LV myocardium (normal), 3 LV blood pool, 4 scar,
5 microvascular obstruction (MVO). Definitions used throughout:

* **myocardium** = normal myocardium + scar + MVO (codes 2, 4, 5);
* **scar** (infarct, fibrosis) = codes 4 and 5: MVO lies inside the infarct core and counts as infarct, as in the
  EMIDEC annotations (no-reflow is inside the infarct); MVO is also reported on its own, as a share of the scar.

Units
-----
Areas are in mm^2 when the in-plane pixel size is known, else in pixels; volumes in mL when the slice spacing is known
too, else in voxels. Every result says which (``area_unit``, ``volume_unit``): EMIDEC PNG slices store no pixel size.

Sectors and transmurality
-------------------------
Each slice's myocardium is split into equal angular sectors around the LV centre (centroid of myocardium + blood pool,
holes filled): 6 sectors for basal and mid slices and for slices of unknown level, 4 for apical slices. Angles follow
:mod:`cardiac_ai.mapping.statistics`: measured *on screen* (row 0 at the top; 0 deg = increasing column, 90 deg = up,
counter-clockwise), physical when pixels are anisotropic. Sectors start at the **anterior RV insertion point** and run
across the septum towards the inferior one (counter-clockwise on screen in a standard short-axis view), numbered like
the AHA segments of that level (sector 1 = anterior, 2 anteroseptal, 3 inferoseptal, 4 inferior, 5 inferolateral,
6 anterolateral; apex: 1 anterior, 2 septal, 3 inferior, 4 lateral), so that with a known level the AHA segment is
``sector`` (base), ``sector + 6`` (mid) or ``sector + 12`` (apex).

EMIDEC has no RV label, so the insertion point cannot be found: by default it is *assumed* at
:data:`DEFAULT_ANCHOR_ANGLE_DEG` (120 deg on screen: upper left, where it lies in a standard short-axis view with
anterior up and the RV on the image's left). The sectors are then approximate; pass ``anchor_angle_deg`` (and
``septum_counter_clockwise``) when the insertion point is known, e.g. from
:func:`cardiac_ai.mapping.statistics.find_rv_insertion` on a cine segmentation.

Transmurality of one ray from the LV centre = (length of the ray inside scar) / (length inside myocardium) (the wall
thickness along the ray); a sector's transmurality is the mean over its rays that cross myocardium, and its maximum.
Rays are sampled every 0.25 pixel with nearest-pixel lookup.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from ..errors import InputError
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, MYOCARDIUM_CODES, SCAR

__all__ = [
    "DEFAULT_ANCHOR_ANGLE_DEG",
    "MYOCARDIUM_CODES",
    "SCAR_CODES",
    "SliceScar",
    "SectorTransmurality",
    "ScarMeasures",
    "sector_transmurality",
    "scar_measures",
]

log = logging.getLogger(__name__)

#: Codes counted as scar (scar + MVO); the myocardium's are labels.MYOCARDIUM_CODES (normal + scar + MVO).
SCAR_CODES = (SCAR, MVO)

#: Assumed screen angle (deg) of the anterior RV insertion point when it is not known: standard short-axis view.
DEFAULT_ANCHOR_ANGLE_DEG = 120.0

Level = Literal["base", "mid", "apex"]
_LEVELS = ("base", "mid", "apex")
_SEGMENT_OFFSET = {"base": 0, "mid": 6, "apex": 12}
_RAY_STEP_PX = 0.25
_RAYS_PER_DEGREE = 1


@dataclass(frozen=True)
class SliceScar:
    """Scar numbers of one slice.

    Attributes
    ----------
    slice_index : k of the slice.
    level : "base", "mid", "apex" or None (unknown).
    myocardium_pixels, scar_pixels, mvo_pixels : pixel counts (scar includes MVO; ``mvo_pixels`` None when MVO
        was not assessed).
    myocardium_area, scar_area, mvo_area : in ``area_unit`` (``mvo_area`` NaN when MVO was not assessed).
    area_unit : "mm2" or "pixels".
    scar_percent : scar / myocardium x 100 (NaN without myocardium).
    """

    slice_index: int
    level: str | None
    myocardium_pixels: int
    scar_pixels: int
    mvo_pixels: int | None
    myocardium_area: float
    scar_area: float
    mvo_area: float
    area_unit: str
    scar_percent: float

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SectorTransmurality:
    """Transmurality of one myocardial sector of one slice.

    Attributes
    ----------
    slice_index, level : the slice (level None when unknown).
    sector : 1-6 (base, mid, unknown level) or 1-4 (apex), numbered as the AHA segments (module docstring).
    aha_segment : 1-16 when the level is known, else None.
    mean_transmurality, max_transmurality : over the sector's rays that cross myocardium (0..1; NaN without any).
    n_rays : rays that crossed myocardium.
    scar_pixels, myocardium_pixels : pixels of the sector (scar includes MVO).
    """

    slice_index: int
    level: str | None
    sector: int
    aha_segment: int | None
    mean_transmurality: float
    max_transmurality: float
    n_rays: int
    scar_pixels: int
    myocardium_pixels: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ScarMeasures:
    """Scar size, share of the myocardium, MVO and transmurality of a stack.

    Attributes
    ----------
    scar_volume, mvo_volume, myocardium_volume : in ``volume_unit`` (scar includes MVO).
    volume_unit : "mL" (pixel and slice spacing known) or "voxels".
    area_unit : "mm2" or "pixels" (per-slice areas).
    scar_percent_of_myocardium : scar / myocardium x 100 over the stack (NaN without myocardium).
    mvo_percent_of_scar : MVO / scar x 100 (NaN without scar).
    mvo_assessed : False when the labels come from a model that cannot mark MVO (weak supervision): the MVO
        numbers are then NaN (null in the report), not zero, and a note says so.
    slices : one :class:`SliceScar` per slice.
    sectors : :class:`SectorTransmurality` of every slice with myocardium.
    anchor : how the sectors were anchored (``"assumed"`` standard view, or ``"given"``) and the angle used.
    notes : caveats, e.g. units in pixels or an assumed anchor.
    """

    scar_volume: float
    mvo_volume: float
    myocardium_volume: float
    volume_unit: str
    area_unit: str
    scar_percent_of_myocardium: float
    mvo_percent_of_scar: float
    slices: tuple[SliceScar, ...]
    sectors: tuple[SectorTransmurality, ...]
    anchor: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    mvo_assessed: bool = True

    def segment_transmurality(self) -> dict[int, dict[str, float]]:
        """AHA segment -> mean and max transmurality over its sectors (slices of known level only)."""
        by_segment: dict[int, list[SectorTransmurality]] = {}
        for sector in self.sectors:
            if sector.aha_segment is not None and sector.n_rays > 0:
                by_segment.setdefault(sector.aha_segment, []).append(sector)
        return {
            segment: {
                "mean_transmurality": float(np.mean([s.mean_transmurality for s in items])),
                "max_transmurality": float(np.max([s.max_transmurality for s in items])),
                "n_slices": len(items),
            }
            for segment, items in sorted(by_segment.items())
        }

    def to_dict(self) -> dict:
        """JSON-ready summary with the per-slice and per-sector tables."""
        return {
            "scar_volume": self.scar_volume,
            "mvo_volume": self.mvo_volume,
            "myocardium_volume": self.myocardium_volume,
            "volume_unit": self.volume_unit,
            "area_unit": self.area_unit,
            "scar_percent_of_myocardium": self.scar_percent_of_myocardium,
            "mvo_percent_of_scar": self.mvo_percent_of_scar,
            "mvo_assessed": self.mvo_assessed,
            "anchor": dict(self.anchor),
            "notes": list(self.notes),
            "slices": [s.to_dict() for s in self.slices],
            "sectors": [s.to_dict() for s in self.sectors],
            "aha_segments": {str(k): v for k, v in self.segment_transmurality().items()},
        }


# -- validation ------------------------------------------------------------------------------------------------------
def _check_labels(labels: object, ndim: int, name: str) -> NDArray[np.integer]:
    shape = "(k, j, i)" if ndim == 3 else "(j, i)"
    if not isinstance(labels, np.ndarray) or labels.ndim != ndim:
        found = getattr(labels, "shape", type(labels).__name__)
        raise InputError(f"{name} must be a {shape} integer label array, got {found}.")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{name} must hold integer label codes (2 myocardium, 4 scar, 5 MVO), got {labels.dtype}.")
    unknown = sorted(set(np.unique(labels).tolist()) - {0, 1, LV_MYOCARDIUM, LV_BLOOD_POOL, SCAR, MVO})
    if unknown:
        raise InputError(
            f"{name} holds codes {unknown}; expected CardiacAI codes 0-5 (2 LV myocardium, 3 LV blood pool, 4 scar, "
            "5 MVO). Map dataset codes first (e.g. cardiac_ai.datasets.map_emidec_labels)."
        )
    return labels


def _check_pixel_spacing(pixel_spacing_ji_mm: object) -> tuple[float, float] | None:
    if pixel_spacing_ji_mm is None:
        return None
    try:
        values = tuple(float(v) for v in pixel_spacing_ji_mm)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise InputError(f"pixel_spacing_ji_mm must be (row, column) mm or None, got {pixel_spacing_ji_mm!r}.") from e
    if len(values) != 2 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"pixel_spacing_ji_mm must be two positive numbers (row, column) in mm, got {values!r}.")
    return values  # type: ignore[return-value]


def _check_level(level: object, name: str = "level") -> str | None:
    if level is None:
        return None
    if level not in _LEVELS:
        raise InputError(f"{name} must be one of {_LEVELS} or None (unknown), got {level!r}.")
    return str(level)


# -- geometry of one slice -------------------------------------------------------------------------------------------
def _screen_angle_deg(d_row: NDArray, d_col: NDArray, spacing: tuple[float, float]) -> NDArray:
    return np.mod(np.degrees(np.arctan2(-d_row * spacing[0], d_col * spacing[1])), 360.0)


def _sector_of_phi(phi: NDArray, n_sectors: int) -> NDArray[np.int64]:
    """1-based sector (AHA position order) of angles ``phi`` measured from the anterior insertion across the septum.

    Six sectors: phi [0, 60) is sector 2 (anteroseptal) ... [300, 360) sector 1 (anterior). Four (apex): 90 deg wide
    sectors centred on the septum (phi 60) and the directions 90 deg apart: 2 septal, 3 inferior, 4 lateral, 1 anterior.
    """
    if n_sectors == 6:
        index = np.floor(np.mod(phi, 360.0) / 60.0).astype(np.int64) % 6
        return 1 + (index + 1) % 6
    index = np.floor(np.mod(phi - 15.0, 360.0) / 90.0).astype(np.int64) % 4
    return 1 + (index + 1) % 4


def sector_transmurality(
    labels2d: NDArray[np.integer],
    *,
    level: Level | None = None,
    pixel_spacing_ji_mm: Sequence[float] | None = None,
    anchor_angle_deg: float | None = None,
    septum_counter_clockwise: bool = True,
    slice_index: int = 0,
) -> list[SectorTransmurality]:
    """Transmurality of each myocardial sector of one short-axis slice.

    Parameters
    ----------
    labels2d : (j, i) integer ndarray
        CardiacAI codes: 2 myocardium, 3 LV blood pool, 4 scar, 5 MVO (scar and MVO count as myocardium).
    level : {"base", "mid", "apex"} or None
        Slice level: 6 sectors (base, mid, None) or 4 (apex); with a level each sector gets its AHA segment number.
    pixel_spacing_ji_mm : (row, column) mm, optional
        For physical angles on anisotropic pixels; None: square pixels.
    anchor_angle_deg : float, optional
        Screen angle (0 = right, 90 = up) of the anterior RV insertion point seen from the LV centre. None: the
        standard-view assumption :data:`DEFAULT_ANCHOR_ANGLE_DEG` (approximate; see the module docstring).
    septum_counter_clockwise : bool
        Whether the septum lies counter-clockwise on screen from the anterior insertion point (standard view).
    slice_index : int
        Copied into the results.

    Returns
    -------
    list of SectorTransmurality
        One per sector in sector order; empty when the slice has no myocardium.

    Raises
    ------
    InputError
        For a label map that is not 2D integer CardiacAI codes, an unknown level, or a bad spacing or angle.
    """
    labels = _check_labels(labels2d, 2, "labels2d")
    level = _check_level(level)
    spacing = _check_pixel_spacing(pixel_spacing_ji_mm) or (1.0, 1.0)
    if anchor_angle_deg is None:
        anchor_angle_deg = DEFAULT_ANCHOR_ANGLE_DEG
    if not math.isfinite(float(anchor_angle_deg)):
        raise InputError(f"anchor_angle_deg must be a finite angle in degrees, got {anchor_angle_deg!r}.")
    myocardium = np.isin(labels, MYOCARDIUM_CODES)
    if not myocardium.any():
        return []
    scar = np.isin(labels, SCAR_CODES)
    lv = ndimage.binary_fill_holes(myocardium | (labels == LV_BLOOD_POOL))
    centre = np.array(ndimage.center_of_mass(lv))
    n_sectors = 4 if level == "apex" else 6
    sign = 1.0 if septum_counter_clockwise else -1.0

    # Rays: one per degree of phi, in physical directions; sampled every _RAY_STEP_PX of the finer pixel side.
    n_rays = 360 * _RAYS_PER_DEGREE
    phi = (np.arange(n_rays) + 0.5) / _RAYS_PER_DEGREE
    theta = np.radians(anchor_angle_deg + sign * phi)
    step_mm = _RAY_STEP_PX * min(spacing)
    max_radius_mm = math.hypot(labels.shape[0] * spacing[0], labels.shape[1] * spacing[1])
    radii = np.arange(0.0, max_radius_mm, step_mm)
    rows = np.rint(centre[0] - np.outer(np.sin(theta), radii) / spacing[0]).astype(np.int64)
    cols = np.rint(centre[1] + np.outer(np.cos(theta), radii) / spacing[1]).astype(np.int64)
    inside = (rows >= 0) & (rows < labels.shape[0]) & (cols >= 0) & (cols < labels.shape[1])
    rows, cols = np.clip(rows, 0, labels.shape[0] - 1), np.clip(cols, 0, labels.shape[1] - 1)
    wall = (myocardium[rows, cols] & inside).sum(axis=1)
    scar_len = (scar[rows, cols] & inside).sum(axis=1)
    ray_sector = _sector_of_phi(phi, n_sectors)

    pixel_rows, pixel_cols = np.indices(labels.shape)
    pixel_theta = _screen_angle_deg(pixel_rows - centre[0], pixel_cols - centre[1], spacing)
    pixel_sector = _sector_of_phi(sign * (pixel_theta - anchor_angle_deg), n_sectors)

    results = []
    for sector in range(1, n_sectors + 1):
        chosen = (ray_sector == sector) & (wall > 0)
        fractions = scar_len[chosen] / wall[chosen]
        in_sector = pixel_sector == sector
        results.append(
            SectorTransmurality(
                slice_index=int(slice_index),
                level=level,
                sector=sector,
                aha_segment=None if level is None else sector + _SEGMENT_OFFSET[level],
                mean_transmurality=float(fractions.mean()) if fractions.size else float("nan"),
                max_transmurality=float(fractions.max()) if fractions.size else float("nan"),
                n_rays=int(chosen.sum()),
                scar_pixels=int(np.count_nonzero(scar & in_sector)),
                myocardium_pixels=int(np.count_nonzero(myocardium & in_sector)),
            )
        )
    return results


def _percent(part: float, whole: float) -> float:
    return 100.0 * part / whole if whole > 0 else float("nan")


def scar_measures(
    labels: NDArray[np.integer],
    *,
    pixel_spacing_ji_mm: Sequence[float] | None = None,
    slice_spacing_mm: float | None = None,
    levels: Sequence[Level | None] | None = None,
    anchor_angle_deg: float | None = None,
    septum_counter_clockwise: bool = True,
    mvo_assessed: bool = True,
) -> ScarMeasures:
    """Scar volume (or voxel count), percentage of the myocardium, MVO, and transmurality per sector of a stack.

    Parameters
    ----------
    labels : (k, j, i) integer ndarray
        CardiacAI codes: 2 myocardium, 3 LV blood pool, 4 scar, 5 MVO.
    pixel_spacing_ji_mm : (row, column) mm, optional
        In-plane pixel size; None when unknown (EMIDEC PNG): areas are then in pixels.
    slice_spacing_mm : float, optional
        Distance between slice centres; volumes are in mL only when it and the pixel size are known, else in voxels.
    levels : sequence of k {"base", "mid", "apex", None}, optional
        Level of each slice (None: unknown); decides 6 or 4 sectors and the AHA segment numbers.
    anchor_angle_deg, septum_counter_clockwise
        Sector anchor, as :func:`sector_transmurality`; the same for every slice.
    mvo_assessed : bool
        False when ``labels`` come from a model without an MVO class: MVO numbers become NaN / None and a note
        says that any MVO is counted as scar.

    Returns
    -------
    ScarMeasures

    Raises
    ------
    InputError
        For labels that are not (k, j, i) CardiacAI codes, a ``levels`` list of another length or with unknown
        values, or a non-positive spacing.
    """
    labels = _check_labels(labels, 3, "labels")
    spacing = _check_pixel_spacing(pixel_spacing_ji_mm)
    if slice_spacing_mm is not None and not (math.isfinite(float(slice_spacing_mm)) and slice_spacing_mm > 0):
        raise InputError(f"slice_spacing_mm must be a positive number of mm or None, got {slice_spacing_mm!r}.")
    n_slices = labels.shape[0]
    if levels is None:
        levels = [None] * n_slices
    levels = list(levels)
    if len(levels) != n_slices:
        raise InputError(f"levels must give one level per slice ({n_slices}), got {len(levels)}.")
    levels = [_check_level(level, f"levels[{k}]") for k, level in enumerate(levels)]

    notes = []
    pixel_area = spacing[0] * spacing[1] if spacing is not None else 1.0
    area_unit = "mm2" if spacing is not None else "pixels"
    if spacing is None:
        notes.append("Pixel size unknown: areas are in pixels and volumes in voxels.")
    volume_in_ml = spacing is not None and slice_spacing_mm is not None
    volume_unit = "mL" if volume_in_ml else "voxels"
    if spacing is not None and slice_spacing_mm is None:
        notes.append("Slice spacing unknown: volumes are in voxels (areas in mm2).")
    voxel_volume = pixel_area * float(slice_spacing_mm) / 1000.0 if volume_in_ml else 1.0
    if anchor_angle_deg is None:
        anchor = {"source": "assumed", "anchor_angle_deg": DEFAULT_ANCHOR_ANGLE_DEG,
                  "septum_counter_clockwise": septum_counter_clockwise}
        notes.append(
            "RV insertion unknown: sectors are anchored at the standard short-axis orientation (anterior up, RV on "
            f"the image left, insertion at {DEFAULT_ANCHOR_ANGLE_DEG:g} deg on screen); sector positions are "
            "approximate."
        )
    else:
        anchor = {"source": "given", "anchor_angle_deg": float(anchor_angle_deg),
                  "septum_counter_clockwise": septum_counter_clockwise}

    if not mvo_assessed:
        notes.append("MVO not assessed: the fibrosis model has no MVO class, so microvascular obstruction is counted "
                     "as scar and the MVO numbers are left empty.")
    myocardium = np.isin(labels, MYOCARDIUM_CODES)
    scar = np.isin(labels, SCAR_CODES)
    mvo = labels == MVO
    slices, sectors = [], []
    for k in range(n_slices):
        n_myo, n_scar, n_mvo = (int(np.count_nonzero(m[k])) for m in (myocardium, scar, mvo))
        slices.append(SliceScar(k, levels[k], n_myo, n_scar, n_mvo if mvo_assessed else None, n_myo * pixel_area,
                                n_scar * pixel_area, n_mvo * pixel_area if mvo_assessed else math.nan, area_unit,
                                _percent(n_scar, n_myo)))
        sectors.extend(sector_transmurality(
            labels[k], level=levels[k], pixel_spacing_ji_mm=spacing, anchor_angle_deg=anchor_angle_deg,
            septum_counter_clockwise=septum_counter_clockwise, slice_index=k,
        ))
    n_myo, n_scar, n_mvo = (int(np.count_nonzero(m)) for m in (myocardium, scar, mvo))
    return ScarMeasures(
        scar_volume=n_scar * voxel_volume,
        mvo_volume=n_mvo * voxel_volume if mvo_assessed else math.nan,
        myocardium_volume=n_myo * voxel_volume,
        volume_unit=volume_unit,
        area_unit=area_unit,
        scar_percent_of_myocardium=_percent(n_scar, n_myo),
        mvo_percent_of_scar=_percent(n_mvo, n_scar) if mvo_assessed else math.nan,
        slices=tuple(slices),
        sectors=tuple(sectors),
        anchor=anchor,
        notes=tuple(notes),
        mvo_assessed=mvo_assessed,
    )
