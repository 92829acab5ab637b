"""A synthetic short-axis cine stack with known labels, for unit tests, tiny training runs and the README demo.

The heart is drawn slice by slice in millimetres, so the anatomy does not depend on the pixel grid:

* the LV is half a prolate ellipsoid: the cavity radius shrinks from the base (low k) to zero one slice before the
  apex, where only a cap of myocardium is left; the myocardial ring surrounds the cavity on every other slice, except
  on the most basal slice, where a gap toward the outflow tract opens it;
* the RV blood pool is a crescent wrapped around the septum on the image's left (low i), thickest at the base and
  gone before the apex;
* end systole (ES) has a smaller cavity and a thicker wall than end diastole (ED) (myocardial area is conserved per
  slice) and a thinner RV crescent.

The image is a bright-blood cine: blood bright, myocardium and RV free wall dark, a textured body on dark air, a
smooth multiplicative bias field and Rician noise. Labels use CardiacAI's codes (1 RV blood pool, 2 LV myocardium,
3 LV blood pool).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

from ..datasets.case import Case
from ..errors import InputError
from ..geometry import Geometry, Volume
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL

__all__ = ["PHANTOM_GROUPS", "make_cine_phantom", "make_cine_phantom_pair", "make_phantom_cohort"]

log = logging.getLogger(__name__)

Phase = Literal["ED", "ES"]
PhantomGroup = Literal["NOR", "DCM", "HCM"]


@dataclass(frozen=True)
class _Shape:
    """Basal sizes in mm at ED, and the ES cavity radius as a fraction of ED."""

    endo_radius_mm: float
    wall_mm: float
    es_cavity_factor: float
    rv_width_mm: float


#: Anatomy of each phantom group: normal, dilated (large thin-walled, poorly contracting LV), hypertrophic
#: (small cavity, thick wall, strong contraction).
PHANTOM_GROUPS: dict[str, _Shape] = {
    "NOR": _Shape(endo_radius_mm=24.0, wall_mm=8.0, es_cavity_factor=0.65, rv_width_mm=18.0),
    "DCM": _Shape(endo_radius_mm=30.0, wall_mm=6.0, es_cavity_factor=0.88, rv_width_mm=16.0),
    "HCM": _Shape(endo_radius_mm=19.0, wall_mm=14.0, es_cavity_factor=0.55, rv_width_mm=16.0),
}

_CAVITY_END = 0.85  # cavity radius reaches 0 at this fraction of the base-apex length (last slice: myocardial cap)
_EPI_END = 1.05  # epicardial radius reaches 0 just beyond the apex slice
_RV_END = 0.8  # the RV crescent ends here
_RV_HALF_SPAN_DEG = 80.0  # angular half-width of the RV crescent around the septum
_LVOT_ANGLE_DEG = -100.0  # direction of the basal gap (outflow tract): anterior (low j), slightly septal
_LVOT_HALF_WIDTH_DEG = 22.0
_RV_WALL_MM = 3.0
_RV_SIDE_DEG = 180.0  # the RV lies toward low i (image left)

_INTENSITY = {"air": 0.03, "body": 0.35, "myocardium": 0.2, "lv_blood": 0.85, "rv_blood": 0.8, "rv_wall": 0.25}


def _validate(
    n_slices: int,
    shape: Sequence[int],
    spacing_mm: Sequence[float],
    phase: str,
    group: str,
    outside_slices: int,
    noise: float,
    scale: float,
) -> tuple[tuple[int, int], tuple[float, float, float]]:
    if phase not in ("ED", "ES"):
        raise InputError(f"phase must be 'ED' or 'ES', got {phase!r}.")
    if group not in PHANTOM_GROUPS:
        raise InputError(f"group must be one of {sorted(PHANTOM_GROUPS)}, got {group!r}.")
    if len(tuple(shape)) != 2 or any(int(s) < 32 for s in shape):
        raise InputError(f"shape must be (j, i) with at least 32 pixels each, got {tuple(shape)}.")
    if len(tuple(spacing_mm)) != 3 or any(not s > 0 for s in spacing_mm):
        raise InputError(f"spacing_mm must be three positive values (i, j, k) in mm, got {tuple(spacing_mm)}.")
    if outside_slices < 0:
        raise InputError(f"outside_slices must be >= 0, got {outside_slices}.")
    if n_slices - 2 * outside_slices < 3:
        raise InputError(
            f"n_slices={n_slices} leaves {n_slices - 2 * outside_slices} heart slices after {outside_slices} "
            "non-cardiac slice(s) at each end; the phantom needs at least 3 (base, mid, apex)."
        )
    if not 0.0 <= noise < 1.0:
        raise InputError(f"noise must be in [0, 1) (standard deviation relative to blood), got {noise}.")
    if not 0.3 <= scale <= 3.0:
        raise InputError(f"scale must be in [0.3, 3], got {scale}.")
    return (int(shape[0]), int(shape[1])), (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))


def _draw_heart(
    n_slices: int,
    shape: tuple[int, int],
    spacing_mm: tuple[float, float, float],
    *,
    phase: Phase,
    anatomy: _Shape,
    scale: float,
    center_offset_mm: tuple[float, float],
    rotation_deg: float,
    outside_slices: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (k, j, i) uint8, RV free wall mask (k, j, i) bool)."""
    n_j, n_i = shape
    spacing_i, spacing_j, _ = spacing_mm
    endo_ed = anatomy.endo_radius_mm * scale
    epi_ed = (anatomy.endo_radius_mm + anatomy.wall_mm) * scale
    rv_width = anatomy.rv_width_mm * scale
    if phase == "ES":
        endo = endo_ed * anatomy.es_cavity_factor
        epi = math.sqrt(epi_ed**2 - endo_ed**2 + endo**2)  # same myocardial area as at ED
        rv_width *= 0.7
    else:
        endo, epi = endo_ed, epi_ed

    # In-plane coordinates in mm relative to the LV centre, rotated into the heart's frame (u toward the LV free
    # wall, v toward inferior). The LV centre sits right of the image centre so that the RV fits on the left.
    x = (np.arange(n_i) - (n_i - 1) / 2.0) * spacing_i
    y = (np.arange(n_j) - (n_j - 1) / 2.0) * spacing_j
    dx = x[np.newaxis, :] - (0.25 * epi_ed + center_offset_mm[0])
    dy = y[:, np.newaxis] - center_offset_mm[1]
    angle = math.radians(rotation_deg)
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    rho = np.hypot(u, v)
    phi = np.degrees(np.arctan2(v, u))

    def angular_distance(target_deg: float) -> np.ndarray:
        return np.abs((phi - target_deg + 180.0) % 360.0 - 180.0)

    rv_profile = np.sqrt(np.clip(np.cos(np.radians(angular_distance(_RV_SIDE_DEG) * 90.0 / _RV_HALF_SPAN_DEG)), 0, 1))
    rv_profile[angular_distance(_RV_SIDE_DEG) > _RV_HALF_SPAN_DEG] = 0.0
    lvot = angular_distance(_LVOT_ANGLE_DEG) <= _LVOT_HALF_WIDTH_DEG

    labels = np.zeros((n_slices, n_j, n_i), dtype=np.uint8)
    rv_wall = np.zeros((n_slices, n_j, n_i), dtype=bool)
    n_heart = n_slices - 2 * outside_slices
    for position in range(n_heart):
        k = outside_slices + position
        t = position / (n_heart - 1)  # 0 at the base, 1 at the apex
        r_endo = endo * math.sqrt(max(0.0, 1.0 - (t / _CAVITY_END) ** 2))
        r_epi = epi * math.sqrt(max(0.0, 1.0 - (t / _EPI_END) ** 2))
        w_rv = rv_width * math.sqrt(max(0.0, 1.0 - (t / _RV_END) ** 2))
        slice_labels = labels[k]
        myocardium = (rho >= r_endo) & (rho < r_epi)
        cavity = rho < r_endo
        if position == 0:  # basal slice: the ring opens toward the outflow tract
            cavity |= myocardium & lvot
            myocardium &= ~lvot
        slice_labels[myocardium] = LV_MYOCARDIUM
        slice_labels[cavity] = LV_BLOOD_POOL
        if w_rv > 0:
            outer = r_epi + w_rv * rv_profile
            rv = (rho >= r_epi) & (rho < outer) & (rv_profile > 0)
            slice_labels[rv & (slice_labels == 0)] = RV_BLOOD_POOL
            rv_wall[k] = (rho >= outer) & (rho < outer + _RV_WALL_MM) & (rv_profile > 0.05)
    border = np.ones((n_j, n_i), dtype=bool)
    border[2:-2, 2:-2] = False
    if np.any(labels[:, border]) or np.any(rv_wall[:, border]):
        raise InputError(
            f"The phantom heart does not fit in {shape} pixels of {spacing_i} x {spacing_j} mm; increase shape or "
            "spacing_mm, or lower scale or center_offset_mm."
        )
    return labels, rv_wall


def _render(
    labels: np.ndarray,
    rv_wall: np.ndarray,
    spacing_mm: tuple[float, float, float],
    *,
    anatomy_rng: np.random.Generator,
    noise_rng: np.random.Generator,
    noise: float,
    bias_field: bool,
) -> np.ndarray:
    n_k, n_j, n_i = labels.shape
    spacing_i, spacing_j, _ = spacing_mm
    x = (np.arange(n_i) - (n_i - 1) / 2.0) / (n_i / 2.0)
    y = (np.arange(n_j) - (n_j - 1) / 2.0) / (n_j / 2.0)
    body = (x[np.newaxis, :] / 0.95) ** 2 + (y[:, np.newaxis] / 0.8) ** 2 < 1.0

    texture = ndimage.gaussian_filter(
        anatomy_rng.standard_normal((n_k, n_j, n_i)), sigma=(0.0, 4.0 / spacing_j, 4.0 / spacing_i)
    )
    texture /= max(float(texture.std()), 1e-6)
    image = np.where(body, _INTENSITY["body"] + 0.07 * texture, _INTENSITY["air"])
    image[rv_wall] = _INTENSITY["rv_wall"]
    image[labels == LV_MYOCARDIUM] = _INTENSITY["myocardium"]
    image[labels == LV_BLOOD_POOL] = _INTENSITY["lv_blood"]
    image[labels == RV_BLOOD_POOL] = _INTENSITY["rv_blood"]
    image = ndimage.gaussian_filter(image, sigma=(0.0, 0.6, 0.6))  # partial volume at edges

    if bias_field:
        a, b, c, d = anatomy_rng.uniform(-0.15, 0.15, size=4)
        xx, yy = x[np.newaxis, :], y[:, np.newaxis]
        image = image * np.exp(a * xx + b * yy + c * xx * yy + d * (xx**2 - yy**2))[np.newaxis]
    if noise > 0:
        real = image + noise_rng.normal(0.0, noise, size=image.shape)
        imaginary = noise_rng.normal(0.0, noise, size=image.shape)
        image = np.hypot(real, imaginary)  # magnitude of complex Gaussian noise: Rician
    return image.astype(np.float32)


def make_cine_phantom(
    *,
    n_slices: int = 8,
    shape: tuple[int, int] = (96, 96),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 8.0),
    phase: Phase = "ED",
    group: PhantomGroup = "NOR",
    scale: float = 1.0,
    center_offset_mm: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    outside_slices: int = 1,
    seed: int = 0,
    noise: float = 0.03,
    bias_field: bool = True,
    origin_lps_mm: tuple[float, float, float] | None = None,
    direction_lps: Sequence[float] | None = None,
    patient_id: str | None = None,
) -> Case:
    """A synthetic short-axis cine frame with its exact labels.

    Parameters
    ----------
    n_slices : slices k, base (low k) to apex; ``outside_slices`` at each end hold no heart.
    shape : (j, i) pixels per slice.
    spacing_mm : (i, j, k) voxel size in mm.
    phase : "ED" (large cavity, thin wall) or "ES" (small cavity, thick wall, thinner RV).
    group : "NOR", "DCM" (dilated, thin wall, ES cavity 88 % of ED radius) or "HCM" (small cavity, thick wall).
    scale : multiplies every size of the heart.
    center_offset_mm : (x, y) shift of the heart in mm along i and j.
    rotation_deg : in-plane rotation of the heart (RV side and outflow tract) about the LV centre.
    outside_slices : non-cardiac slices at each end.
    seed : drives the background texture and bias field (shared by ED and ES of one seed) and the noise.
    noise : standard deviation of the complex Gaussian noise, relative to a blood intensity of about 0.85.
    bias_field : multiply by a smooth random field (about +-20 %).
    origin_lps_mm, direction_lps : geometry; default origin 0 and identity direction.
    patient_id : default ``"phantom_seed{seed}"``.

    Returns
    -------
    Case
        ``case_id`` ``"{patient_id}_{phase}"``; image float32 (n_slices, j, i), about 0-1; labels uint8 (0, 1, 2, 3)
        with the same geometry; ``image_labels`` ``{"group": group}``; ``metadata`` with ``phase``, ``seed``,
        ``slice_order`` ``"base_to_apex"``, ``heart_slices`` (first, last k) and the anatomy parameters.
        With the defaults: k 0 and 7 empty; k 1 (base) RV, LV blood and an open myocardial ring; k 2-4 RV, LV
        blood and a closed ring; k 5 LV blood and ring; k 6 a myocardial cap only.

    Raises
    ------
    InputError
        Bad options, or a heart that does not fit in the image (increase ``shape`` or ``spacing_mm``).
    """
    shape_ji, spacing = _validate(n_slices, shape, spacing_mm, phase, group, outside_slices, noise, scale)
    anatomy = PHANTOM_GROUPS[group]
    labels, rv_wall = _draw_heart(
        n_slices, shape_ji, spacing, phase=phase, anatomy=anatomy, scale=scale,
        center_offset_mm=(float(center_offset_mm[0]), float(center_offset_mm[1])),
        rotation_deg=float(rotation_deg), outside_slices=outside_slices,
    )
    image = _render(
        labels, rv_wall, spacing,
        anatomy_rng=np.random.default_rng([seed, 0]),
        noise_rng=np.random.default_rng([seed, 1 if phase == "ED" else 2]),
        noise=noise, bias_field=bias_field,
    )
    geometry = Geometry(
        spacing,
        origin_lps_mm if origin_lps_mm is not None else (0.0, 0.0, 0.0),
        tuple(direction_lps) if direction_lps is not None else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
    )
    patient = patient_id if patient_id is not None else f"phantom_seed{seed}"
    metadata = {
        "dataset": "phantom",
        "phase": phase,
        "seed": seed,
        "slice_order": "base_to_apex",
        "heart_slices": (outside_slices, n_slices - outside_slices - 1),
        "scale": scale,
        "center_offset_mm": tuple(center_offset_mm),
        "rotation_deg": rotation_deg,
        "noise": noise,
    }
    return Case(
        case_id=f"{patient}_{phase}",
        patient_id=patient,
        image=Volume(image, geometry),
        labels=Volume(labels, geometry),
        image_labels={"group": group},
        metadata=metadata,
    )


def make_cine_phantom_pair(
    *,
    n_slices: int = 8,
    shape: tuple[int, int] = (96, 96),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 8.0),
    group: PhantomGroup = "NOR",
    scale: float = 1.0,
    center_offset_mm: tuple[float, float] = (0.0, 0.0),
    rotation_deg: float = 0.0,
    outside_slices: int = 1,
    seed: int = 0,
    noise: float = 0.03,
    bias_field: bool = True,
    origin_lps_mm: tuple[float, float, float] | None = None,
    direction_lps: Sequence[float] | None = None,
    patient_id: str | None = None,
) -> tuple[Case, Case]:
    """The ED and ES frames of one phantom patient (same position, background and bias; independent noise).

    Parameters are those of :func:`make_cine_phantom`. Returns ``(ed, es)``.
    """
    common = dict(
        n_slices=n_slices, shape=shape, spacing_mm=spacing_mm, group=group, scale=scale,
        center_offset_mm=center_offset_mm, rotation_deg=rotation_deg, outside_slices=outside_slices, seed=seed,
        noise=noise, bias_field=bias_field, origin_lps_mm=origin_lps_mm, direction_lps=direction_lps,
        patient_id=patient_id,
    )
    return make_cine_phantom(phase="ED", **common), make_cine_phantom(phase="ES", **common)


def make_phantom_cohort(
    n: int,
    *,
    seed: int = 0,
    groups: Sequence[PhantomGroup] = ("NOR", "DCM", "HCM"),
    phases: Sequence[Phase] = ("ED", "ES"),
    n_slices: int = 8,
    shape: tuple[int, int] = (96, 96),
    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 8.0),
    noise: float = 0.03,
) -> list[Case]:
    """Several phantom patients of varied size, position and rotation, for tiny training and weak-label tests.

    Parameters
    ----------
    n : number of patients, ``"phantom000"``, ``"phantom001"``...
    seed : the cohort is the same for the same seed.
    groups : patient p gets ``groups[p % len(groups)]`` (its ``image_labels["group"]``).
    phases : frames per patient, in this order.
    n_slices, shape, spacing_mm, noise : as :func:`make_cine_phantom`.

    Returns
    -------
    list of Case
        ``n * len(phases)`` cases, patient by patient. Each patient has a scale in [0.9, 1.1], a shift of up to
        6 mm along i and j and a rotation in [-25, 25] degrees.

    Raises
    ------
    InputError
        ``n`` < 1, no groups or phases, or options :func:`make_cine_phantom` refuses.
    """
    if n < 1:
        raise InputError(f"make_phantom_cohort needs n >= 1 patients, got {n}.")
    if not groups or not phases:
        raise InputError("make_phantom_cohort needs at least one group and one phase.")
    rng = np.random.default_rng(seed)
    cases = []
    for p in range(n):
        scale = float(rng.uniform(0.9, 1.1))
        offset = tuple(float(v) for v in rng.uniform(-6.0, 6.0, size=2))
        rotation = float(rng.uniform(-25.0, 25.0))
        patient_seed = int(rng.integers(0, 2**31 - 1))
        for phase in phases:
            cases.append(
                make_cine_phantom(
                    n_slices=n_slices, shape=shape, spacing_mm=spacing_mm, phase=phase, group=groups[p % len(groups)],
                    scale=scale, center_offset_mm=offset, rotation_deg=rotation, seed=patient_seed, noise=noise,
                    patient_id=f"phantom{p:03d}",
                )
            )
    return cases
