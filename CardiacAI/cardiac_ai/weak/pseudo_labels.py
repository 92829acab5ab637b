"""Pixel pseudo-labels from class activation maps and image-level (weak) labels.

The recipe of Klein et al. (weakly-supervised LGE fibrosis segmentation, section 3.3), with its constants exposed in
:class:`PseudoLabelConfig` so that it also serves other weak labels (e.g. ACDC diagnosis CAMs):

1. An image whose weak label is negative gets an empty mask; steps 2-5 run only for positive ones.
2. ReLU the CAM (already resized to the image grid, see :mod:`cardiac_ai.weak.cam`) and scale the positive values
   linearly into ``scale_range`` (0.5 to 1.0): a probability map whose non-zero pixels are the candidates.
3. 3-class multi-Otsu thresholds (``skimage.filters.threshold_multiotsu``) of the *image intensities* of the
   candidate pixels; candidates darker than the lowest threshold get probability 0 (healthy myocardium is dark in LGE).
4. A dense CRF (``pydensecrf``; Kraehenbuehl and Koltun 2011) on the two-class probabilities ``[1 - p, p]``:
   smoothness kernel of width ``theta_gamma`` and weight ``w2``; appearance (bilateral) kernel only when ``w1 > 0``.
   It removes small, unconnected, low-probability pixels.
5. The CRF's most likely label is the binary pseudo-label (without the CRF: ``p > foreground_threshold``).

Everything is deterministic (the CRF is mean-field inference, no sampling).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

__all__ = ["PseudoLabelConfig", "pseudo_label_overrides", "cam_to_pseudo_label", "pseudo_labels", "motion_prior",
           "self_training_labels"]

#: Most classes of the multi-Otsu step: scikit-image's exhaustive search grows steeply with them (4 classes take
#: about 0.1 s per slice, 5 about 5 s), so more would hang a run for no use on a CAM.
MAX_OTSU_CLASSES = 4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabelConfig:
    """Parameters of :func:`cam_to_pseudo_label`; the defaults are the fibrosis paper's.

    Attributes
    ----------
    relu : bool
        True: only pixels with a positive CAM are candidates, their values scaled as ``v / max(v)`` into
        ``scale_range`` (so 0 stays outside and every positive pixel lies above ``scale_range[0]``). False: every
        pixel (within ``restrict_to``) is a candidate, min-max scaled into ``scale_range``.
    scale_range : (float, float)
        Probability range of the candidates, ``0 <= low < high <= 1``; paper: (0.5, 1.0). A map whose candidates are
        all equal gets ``high`` everywhere.
    otsu_classes : int or None
        Classes of the multi-Otsu intensity step (paper: 3), at least 2; None skips the step (e.g. for cine, where
        intensity says nothing about the target). If the candidates' intensities have fewer distinct values than
        classes, fewer classes are used (down to 2); with a single distinct value the step is skipped; both logged at
        WARNING.
    use_crf : bool
        Refine with the dense CRF; False thresholds the probability at ``foreground_threshold`` instead.
    crf_w1, crf_theta_alpha, crf_theta_beta : float
        Appearance (bilateral) kernel: weight, spatial width in pixels, intensity width in uint8 grey levels of the
        image min-max scaled to 0..255. Added only when ``crf_w1 > 0`` (paper: ``w1 = 0``).
    crf_w2, crf_theta_gamma : float
        Smoothness (Gaussian) kernel: weight (paper 1) and spatial width in pixels (paper 3).
    crf_iterations : int
        Mean-field iterations (paper: k = 5).
    foreground_threshold : float
        Without the CRF, pixels with probability above it are foreground.
    otsu_source : {"image", "cam"}
        What the multi-Otsu step thresholds: the image intensities of the candidates (paper: scar is bright, healthy
        myocardium dark) or the candidates' CAM values (the generalisation for targets whose intensity says nothing,
        such as the whole heart in cine: the lowest CAM class is dropped).
    min_fraction : float
        Candidates must reach this fraction of the map's maximum (0 keeps every positive pixel, as the paper);
        a floor for maps that are positive over most of the image, chosen on validation data.
    shape : {"free", "compact"}
        "free" keeps the CRF's mask as it is (paper: scar may be patchy). "compact" keeps its largest connected
        piece, fills its holes and takes its convex hull: for targets known to be one convex blob, such as the
        whole heart on a short-axis slice.
    """

    relu: bool = True
    scale_range: tuple[float, float] = (0.5, 1.0)
    otsu_classes: int | None = 3
    use_crf: bool = True
    crf_w1: float = 0.0
    crf_w2: float = 1.0
    crf_theta_alpha: float = 80.0
    crf_theta_beta: float = 13.0
    crf_theta_gamma: float = 3.0
    crf_iterations: int = 5
    foreground_threshold: float = 0.5
    otsu_source: str = "image"
    min_fraction: float = 0.0
    shape: str = "free"

    def __post_init__(self) -> None:
        message = f"scale_range must be (low, high) with 0 <= low < high <= 1, got {self.scale_range}."
        try:
            low, high = (float(v) for v in self.scale_range)
        except (TypeError, ValueError) as error:
            raise InputError(message) from error
        if not 0.0 <= low < high <= 1.0:
            raise InputError(message)
        object.__setattr__(self, "scale_range", (low, high))
        if self.otsu_classes is not None and (
            not isinstance(self.otsu_classes, (int, np.integer)) or not 2 <= self.otsu_classes <= MAX_OTSU_CLASSES
        ):
            raise InputError(
                f"otsu_classes must be an integer from 2 to {MAX_OTSU_CLASSES} or None (no intensity step), got "
                f"{self.otsu_classes}."
            )
        weights = {"crf_w1": self.crf_w1, "crf_w2": self.crf_w2}
        widths = {k: getattr(self, k) for k in ("crf_theta_alpha", "crf_theta_beta", "crf_theta_gamma")}
        if any(not np.isfinite(v) or v < 0 for v in weights.values()):
            raise InputError(f"CRF kernel weights must be finite and >= 0, got {weights}.")
        if any(not np.isfinite(v) or v <= 0 for v in widths.values()):
            raise InputError(f"CRF kernel widths must be finite and > 0, got {widths}.")
        if not isinstance(self.crf_iterations, (int, np.integer)) or self.crf_iterations < 1:
            raise InputError(f"crf_iterations must be a positive integer, got {self.crf_iterations}.")
        if self.otsu_source not in ("image", "cam"):
            raise InputError(f"otsu_source must be 'image' or 'cam', got {self.otsu_source!r}.")
        if self.shape not in ("free", "compact"):
            raise InputError(f"shape must be 'free' or 'compact', got {self.shape!r}.")
        if not 0.0 <= self.min_fraction < 1.0:
            raise InputError(f"min_fraction must lie in [0, 1), got {self.min_fraction}.")
        if not 0.0 <= self.foreground_threshold < 1.0:
            raise InputError(f"foreground_threshold must lie in [0, 1), got {self.foreground_threshold}.")


def pseudo_label_overrides(*, crf_iterations: int | None = None, crf_smoothness: Sequence[float] | None = None,
                           crf_appearance: Sequence[float] | None = None, otsu_classes: int | None = None,
                           scale_range: Sequence[float] | None = None, min_fraction: float | None = None,
                           spelled: Callable[[str], str] = str) -> dict:
    """The user-facing pseudo-label settings (``cardiacai cam --crf-iterations ...``, the Slicer CAM panel) as
    :class:`PseudoLabelConfig` fields, checked: the one place both front ends translate and validate them.

    ``crf_iterations`` >= 1; ``crf_smoothness`` (weight w2 >= 0, width theta_gamma > 0 pixels); ``crf_appearance``
    (weight w1 >= 0, width theta_alpha > 0 pixels, width theta_beta > 0 grey levels); ``otsu_classes`` 0 (no
    multi-Otsu step) or >= 2; ``scale_range`` (low, high), 0 <= low < high <= 1; ``min_fraction`` in [0, 1). None
    leaves a setting to the model card. ``spelled`` names a setting in the messages as its front end does (the
    command line: ``--crf-iterations``).

    Raises
    ------
    InputError
        A value of the wrong kind or count, or out of its range; the message names the setting.
    """
    overrides: dict = {}
    if crf_iterations is not None:
        if not _whole(crf_iterations) or crf_iterations < 1:
            raise InputError(f"{spelled('crf_iterations')} (DenseCRF mean-field iterations) must be a whole number "
                             f">= 1, got {crf_iterations!r}.")
        overrides["crf_iterations"] = int(crf_iterations)
    if crf_smoothness is not None:
        name = spelled("crf_smoothness")
        weight, width = _finite(crf_smoothness, 2, f"{name} (weight, width in pixels)")
        if weight < 0 or width <= 0:
            raise InputError(f"{name} needs a weight >= 0 (0 drops the kernel) and a width > 0 pixels, "
                             f"got {crf_smoothness!r}.")
        overrides["crf_w2"], overrides["crf_theta_gamma"] = weight, width
    if crf_appearance is not None:
        name = spelled("crf_appearance")
        weight, width, grey = _finite(crf_appearance, 3, f"{name} (weight, width in pixels, grey levels)")
        if weight < 0 or width <= 0 or grey <= 0:
            raise InputError(f"{name} needs a weight >= 0, a width > 0 pixels and a width > 0 grey levels, "
                             f"got {crf_appearance!r}.")
        overrides["crf_w1"], overrides["crf_theta_alpha"], overrides["crf_theta_beta"] = weight, width, grey
    if otsu_classes is not None:
        if not _whole(otsu_classes) or otsu_classes < 0 or otsu_classes == 1 or otsu_classes > MAX_OTSU_CLASSES:
            raise InputError(f"{spelled('otsu_classes')} must be 0 (no multi-Otsu step) or 2 to {MAX_OTSU_CLASSES} "
                             f"(multi-Otsu's cost grows steeply with the classes: 5 take seconds per slice), "
                             f"got {otsu_classes!r}.")
        overrides["otsu_classes"] = int(otsu_classes) or None
    if scale_range is not None:
        name = spelled("scale_range")
        low, high = _finite(scale_range, 2, f"{name} (low, high)")
        if not 0.0 <= low < high <= 1.0:
            raise InputError(f"{name} must be (low, high) with 0 <= low < high <= 1, got {scale_range!r}.")
        overrides["scale_range"] = (low, high)
    if min_fraction is not None:
        name = spelled("min_fraction")
        (fraction,) = _finite(min_fraction if isinstance(min_fraction, (list, tuple)) else [min_fraction], 1, name)
        if not 0.0 <= fraction < 1.0:
            raise InputError(f"{name} must lie in [0, 1) (0 keeps every positive CAM pixel), got {min_fraction!r}.")
        overrides["min_fraction"] = fraction
    dataclasses.replace(PseudoLabelConfig(), **overrides)  # the config's own checks, as a backstop
    return overrides


def _whole(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _finite(values: object, count: int, what: str) -> list[float]:
    items = list(values) if isinstance(values, (list, tuple)) else [values]
    if len(items) != count or not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                                      and math.isfinite(float(v)) for v in items):
        raise InputError(f"{what} must be {count} finite number{'s' if count > 1 else ''}, got "
                         f"{values[0] if count == 1 and isinstance(values, list) and len(values) == 1 else values!r}.")
    return [float(v) for v in items]


def _check_pair(cam: object, image: object, restrict_to: object, *, ndim: int, function: str):
    names = "(n, j, i)" if ndim == 3 else "(j, i)"
    for name, array in (("cam", cam), ("image", image)):
        if not isinstance(array, np.ndarray) or array.ndim != ndim:
            shape = getattr(array, "shape", type(array).__name__)
            raise InputError(f"{function}: {name} must be a {names} ndarray, got {shape}.")
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise InputError(f"{function}: {name} must be numeric, got dtype {array.dtype}.")
        n_bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if n_bad:
            raise InputError(
                f"{function}: {name} has {n_bad} NaN or infinite values; a CAM or image with NaN cannot be "
                "thresholded. Replace them (e.g. np.nan_to_num) or mask the slice out."
            )
    if cam.shape != image.shape:
        raise InputError(
            f"{function}: cam {cam.shape} and image {image.shape} differ in shape; resize the CAM to the image grid "
            "first (class_activation_maps and model_cam already do)."
        )
    if restrict_to is not None:
        if not isinstance(restrict_to, np.ndarray) or restrict_to.shape != cam.shape:
            shape = getattr(restrict_to, "shape", type(restrict_to).__name__)
            raise InputError(f"{function}: restrict_to must be a mask of shape {cam.shape}, got {shape}.")
        if restrict_to.dtype != bool and not np.isin(restrict_to, (0, 1)).all():
            raise InputError(f"{function}: restrict_to must be boolean (or 0/1), got values other than 0 and 1.")
        restrict_to = restrict_to.astype(bool)
    return np.asarray(cam, dtype=np.float64), np.asarray(image, dtype=np.float64), restrict_to


def _probability(cam: NDArray[np.float64], region: NDArray[np.bool_], config: PseudoLabelConfig) -> NDArray[np.float64]:
    """Step 2: candidates scaled into ``config.scale_range``; 0 elsewhere."""
    low, high = config.scale_range
    candidates = region & (cam > 0) if config.relu else region
    probability = np.zeros_like(cam)
    if not candidates.any():
        return probability
    if config.min_fraction > 0:
        candidates = candidates & (cam >= config.min_fraction * cam[candidates].max())
    values = cam[candidates]
    floor = 0.0 if config.relu else values.min()
    span = values.max() - floor
    fraction = (values - floor) / span if span > 0 else np.ones_like(values)
    probability[candidates] = low + (high - low) * fraction
    return probability


def _intensity_floor(intensities: NDArray[np.float64], classes: int) -> float | None:
    """Step 3: the lowest multi-Otsu threshold of ``intensities``, falling back to fewer classes; None to skip."""
    from skimage.filters import threshold_multiotsu

    n_distinct = np.unique(intensities).size
    usable = min(classes, n_distinct)
    if usable < classes:
        log.warning(
            "multi-Otsu: the candidate pixels have %d distinct intensities, fewer than otsu_classes=%d; %s",
            n_distinct, classes, f"using {usable} classes" if usable >= 2 else "skipping the intensity step",
        )
    while usable >= 2:
        try:
            return float(threshold_multiotsu(intensities, classes=usable)[0])
        except ValueError:  # the histogram can merge distinct values into fewer bins than classes
            usable -= 1
            log.warning("multi-Otsu failed on the candidates' intensities; trying %d classes", usable)
    return None


def _crf(probability: NDArray[np.float64], image: NDArray[np.float64], config: PseudoLabelConfig) -> NDArray[np.bool_]:
    """Step 4: dense-CRF MAP labels (True = foreground)."""
    import pydensecrf.densecrf as dcrf
    from pydensecrf.utils import unary_from_softmax

    height, width = probability.shape
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(np.stack([1.0 - probability, probability]))))
    if config.crf_w2 > 0:
        crf.addPairwiseGaussian(sxy=float(config.crf_theta_gamma), compat=float(config.crf_w2))
    if config.crf_w1 > 0:
        low, high = image.min(), image.max()
        grey = np.zeros(image.shape, np.uint8) if high == low else np.round(255 * (image - low) / (high - low))
        rgb = np.ascontiguousarray(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2))
        crf.addPairwiseBilateral(
            sxy=float(config.crf_theta_alpha), srgb=float(config.crf_theta_beta), rgbim=rgb, compat=float(config.crf_w1)
        )
    q = np.asarray(crf.inference(int(config.crf_iterations))).reshape(2, height, width)
    return q[1] > q[0]


def _pseudo_label(
    cam: NDArray[np.float64],
    image: NDArray[np.float64],
    positive: bool,
    config: PseudoLabelConfig,
    restrict_to: NDArray[np.bool_] | None,
) -> NDArray[np.uint8]:
    empty = np.zeros(cam.shape, dtype=np.uint8)
    if not positive:
        return empty
    region = np.ones(cam.shape, dtype=bool) if restrict_to is None else restrict_to
    probability = _probability(cam, region, config)
    candidates = probability > 0
    if not candidates.any():
        return empty
    if config.otsu_classes is not None:
        values = image if config.otsu_source == "image" else cam
        floor = _intensity_floor(values[candidates], int(config.otsu_classes))
        if floor is not None:
            probability[candidates & (values < floor)] = 0.0  # below the lowest threshold: skimage's class 0
    if config.use_crf:
        mask = _crf(probability, image, config)
    else:
        mask = probability > config.foreground_threshold
    if config.shape == "compact":
        mask = _compact(mask)
    return (mask & region).astype(np.uint8)


def _compact(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Largest connected piece, holes filled, convex hull."""
    from skimage.morphology import convex_hull_image

    mask = _largest_piece_filled(mask)
    return convex_hull_image(mask) if mask.any() else mask


def _largest_piece_filled(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    from scipy import ndimage

    pieces, count = ndimage.label(mask)
    if count == 0:
        return mask
    if count > 1:
        sizes = ndimage.sum_labels(mask, pieces, index=np.arange(1, count + 1))
        mask = pieces == int(np.argmax(sizes)) + 1
    return ndimage.binary_fill_holes(mask)


def self_training_labels(
    probabilities: NDArray[np.floating],
    *,
    threshold: float = 0.5,
    erosion_px: int = 0,
) -> NDArray[np.uint8]:
    """Labels for the next round of self-training from a weak U-Net's own foreground probabilities.

    Per slice: ``probabilities > threshold``, eroded ``erosion_px`` times (3 x 3 cross), the largest connected piece
    with its holes filled. A U-Net trained on pseudo-labels inherits their systematic error (the motion prior's
    blur makes the ED-ES pseudo-labels about 1.7 times the heart's area); the erosion takes that bias back out, and
    the student trained on these labels learns the teacher's shapes without it.

    Parameters
    ----------
    probabilities : (n, j, i) float in [0, 1]
    threshold : float in [0, 1)
    erosion_px : int >= 0

    Returns
    -------
    (n, j, i) uint8 0/1.
    """
    from scipy import ndimage

    p = np.asarray(probabilities)
    if p.ndim != 3 or not np.issubdtype(p.dtype, np.floating):
        raise InputError(f"self_training_labels needs (n, j, i) float probabilities, got shape {p.shape}, "
                         f"dtype {p.dtype}.")
    if not np.isfinite(p).all() or p.min(initial=0.0) < 0 or p.max(initial=0.0) > 1:
        raise InputError("self_training_labels: probabilities must be finite and lie in [0, 1].")
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"threshold must lie in [0, 1), got {threshold}.")
    if isinstance(erosion_px, bool) or int(erosion_px) != erosion_px or erosion_px < 0:
        raise InputError(f"erosion_px must be an integer >= 0, got {erosion_px!r}.")
    labels = np.zeros(p.shape, np.uint8)
    for index, mask in enumerate(p > threshold):
        if erosion_px:
            mask = ndimage.binary_erosion(mask, iterations=int(erosion_px))
        labels[index] = _largest_piece_filled(mask)
    return labels


def motion_prior(
    frames: NDArray[np.floating],
    other_frames: NDArray[np.floating],
    *,
    sigma_px: float = 3.0,
) -> NDArray[np.float32]:
    """Where a slice changes between two cardiac phases (ED and ES): |a - b| smoothed, each map scaled to [0, 1].

    A label-free prior of the heart for cine data with two frames of the same slices (the beating heart moves, the
    chest wall and the liver barely do); use it in place of a CAM with :func:`pseudo_labels`.

    Parameters
    ----------
    frames, other_frames : (n, j, i) float
        The same slices at two phases, on the same grid and intensity scale (e.g. both percentile-normalised).
    sigma_px : float
        Gaussian smoothing of the difference, in pixels.

    Returns
    -------
    (n, j, i) float32 in [0, 1]; an unchanged slice gives zeros.
    """
    from scipy import ndimage

    a = np.asarray(frames, dtype=np.float32)
    b = np.asarray(other_frames, dtype=np.float32)
    if a.ndim != 3 or a.shape != b.shape:
        raise InputError(f"motion_prior needs two (n, j, i) arrays of one shape, got {a.shape} and {b.shape}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("motion_prior: the frames contain NaN or Inf.")
    if not sigma_px > 0:
        raise InputError(f"sigma_px must be > 0, got {sigma_px}.")
    change = np.stack([ndimage.gaussian_filter(np.abs(x - y), sigma_px) for x, y in zip(a, b)])
    peak = change.reshape(len(change), -1).max(axis=1)
    return (change / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def cam_to_pseudo_label(
    cam: NDArray[np.floating],
    image: NDArray[np.floating],
    *,
    positive: bool = True,
    config: PseudoLabelConfig | None = None,
    restrict_to: NDArray[np.bool_] | None = None,
) -> NDArray[np.uint8]:
    """Binary pseudo-label of one slice from its CAM, its image and its weak label.

    Parameters
    ----------
    cam : (j, i) float ndarray
        Class activation map on the image grid, raw (unbounded, e.g. ``model_cam(..., normalise=False)``) or
        normalised; only its positive part matters when ``config.relu``.
    image : (j, i) float ndarray
        The slice the CAM explains (e.g. LGE intensities), used for the multi-Otsu step and the CRF's appearance
        kernel.
    positive : bool
        The weak label. False gives an empty mask without looking at the CAM.
    config : PseudoLabelConfig, optional
        Defaults to the paper's settings.
    restrict_to : (j, i) bool ndarray, optional
        Pixels allowed in the label (e.g. the myocardium): pixels outside are not candidates, do not enter the Otsu
        thresholds, and are never foreground.

    Returns
    -------
    (j, i) uint8 ndarray
        1 = foreground (e.g. fibrosis), 0 = background. Empty when the label is negative, when no pixel has a positive
        CAM (an all-zero CAM), or when every candidate is darker than the lowest Otsu threshold.

    Raises
    ------
    InputError
        For non-2D or differently shaped ``cam`` and ``image``, NaN or infinite values, or a ``restrict_to`` that is
        not a boolean mask of the same shape.
    """
    config = PseudoLabelConfig() if config is None else config
    if not isinstance(config, PseudoLabelConfig):
        raise InputError(f"config must be a PseudoLabelConfig, got {type(config).__name__}.")
    cam64, image64, region = _check_pair(cam, image, restrict_to, ndim=2, function="cam_to_pseudo_label")
    return _pseudo_label(cam64, image64, bool(positive), config, region)


def pseudo_labels(
    cams: NDArray[np.floating],
    images: NDArray[np.floating],
    positives: Sequence[bool] | NDArray[np.bool_],
    *,
    config: PseudoLabelConfig | None = None,
    restrict_to: NDArray[np.bool_] | None = None,
) -> NDArray[np.uint8]:
    """:func:`cam_to_pseudo_label` for a stack of slices.

    Parameters
    ----------
    cams : (n, j, i) float ndarray
        One CAM per slice, on the image grid.
    images : (n, j, i) float ndarray
        The slices.
    positives : (n,) bool
        Weak label of each slice (for stack-level labels, repeat the stack's label for its slices).
    config : PseudoLabelConfig, optional
        Shared by all slices; defaults to the paper's settings.
    restrict_to : (n, j, i) bool ndarray, optional
        Allowed pixels per slice (e.g. the predicted myocardium).

    Returns
    -------
    (n, j, i) uint8 ndarray
        Binary pseudo-labels, 1 = foreground.

    Raises
    ------
    InputError
        As :func:`cam_to_pseudo_label`, and when ``positives`` is not one boolean per slice.
    """
    config = PseudoLabelConfig() if config is None else config
    if not isinstance(config, PseudoLabelConfig):
        raise InputError(f"config must be a PseudoLabelConfig, got {type(config).__name__}.")
    cams64, images64, region = _check_pair(cams, images, restrict_to, ndim=3, function="pseudo_labels")
    labels = np.asarray(positives)
    if labels.shape != (cams64.shape[0],) or not (labels.dtype == bool or np.isin(labels, (0, 1)).all()):
        raise InputError(
            f"pseudo_labels: positives must hold one bool per slice ({cams64.shape[0]}), got shape {labels.shape} "
            f"and dtype {labels.dtype}."
        )
    out = np.zeros(cams64.shape, dtype=np.uint8)
    for index in range(cams64.shape[0]):
        out[index] = _pseudo_label(
            cams64[index], images64[index], bool(labels[index]), config, None if region is None else region[index]
        )
    log.debug("pseudo-labels: %d slices, %d positive, %d non-empty", len(out), labels.sum(), out.any((1, 2)).sum())
    return out
