"""Random augmentation of 2D training samples (one short-axis slice and its labels), built from MONAI transforms.

A sample is a dict with ``"image"`` (channel, j, i) float and, optionally, ``"label"`` (1, j, i) integer labels, as
cut from :func:`cardiac_ai.preprocessing.preprocess` output. Spatial transforms move image and labels together
(bilinear for the image, nearest neighbour for the labels, so no new label codes appear); intensity transforms
touch only the image.

Typical use, on one preprocessed slice ``image`` (j, i) float32 with ``labels`` (j, i) uint8::

    augment = build_augmentation(AugmentationConfig(), seed=0)
    out = augment({"image": image[np.newaxis], "label": labels[np.newaxis]})
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAffined,
    RandAdjustContrastd,
    RandBiasFieldd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandRotated,
    RandZoomd,
)

from ..errors import InputError

__all__ = ["AugmentationConfig", "Augmentation", "build_augmentation", "IMAGE_KEY", "LABEL_KEY"]

log = logging.getLogger(__name__)

IMAGE_KEY = "image"
LABEL_KEY = "label"

_PROBABILITIES = (
    "translate_prob",
    "rotate_prob",
    "zoom_prob",
    "elastic_prob",
    "gamma_prob",
    "bias_field_prob",
    "noise_prob",
    "smooth_prob",
    "flip_prob",
)
_RANGES = ("zoom_range", "elastic_magnitude_px", "gamma_range", "bias_field_coeff_range", "smooth_sigma_px")


@dataclass(frozen=True)
class AugmentationConfig:
    """Probabilities and ranges of each random transform; defaults suit short-axis cine MRI at about 1.25 mm.

    Each ``*_prob`` is the chance (0..1) that the transform is applied to a sample; 0 leaves it out.

    Attributes
    ----------
    rotate_prob, rotate_range_deg : rotation about the slice centre by an angle uniform in
        [-rotate_range_deg, rotate_range_deg] degrees.
    zoom_prob, zoom_range : isotropic scaling by a factor uniform in (min, max); > 1 enlarges; the size is kept.
    elastic_prob, elastic_spacing_px, elastic_magnitude_px : smooth deformation from random control-point
        offsets (Gaussian, scaled by a factor uniform in ``elastic_magnitude_px``, in pixels) on a grid every
        ``elastic_spacing_px`` pixels.
    gamma_prob, gamma_range : intensity gamma (contrast) uniform in (min, max), on the image's own min..max.
    bias_field_prob, bias_field_degree, bias_field_coeff_range : multiplicative smooth field (exponential of a
        random polynomial of that degree, coefficients uniform in the range), like coil shading.
    noise_prob, noise_std : additive Gaussian noise, standard deviation uniform in [0, noise_std] (image units:
        [0, 1] after percentile normalisation).
    smooth_prob, smooth_sigma_px : Gaussian blur, sigma per axis uniform in (min, max) pixels.
    flip_prob : chance of flipping along each in-plane axis. Off by default: a flip swaps the sides of the RV and
        the LV, which real short-axis images never show.
    """

    translate_prob: float = 0.0
    translate_range_px: float = 0.0
    rotate_prob: float = 0.5
    rotate_range_deg: float = 20.0
    zoom_prob: float = 0.3
    zoom_range: tuple[float, float] = (0.85, 1.2)
    elastic_prob: float = 0.2
    elastic_spacing_px: float = 24.0
    elastic_magnitude_px: tuple[float, float] = (0.0, 1.5)
    gamma_prob: float = 0.3
    gamma_range: tuple[float, float] = (0.7, 1.5)
    bias_field_prob: float = 0.3
    bias_field_degree: int = 3
    bias_field_coeff_range: tuple[float, float] = (0.0, 0.1)
    noise_prob: float = 0.2
    noise_std: float = 0.05
    smooth_prob: float = 0.1
    smooth_sigma_px: tuple[float, float] = (0.25, 1.0)
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        for name in _PROBABILITIES:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
                problems.append(f"{name} must be a probability in [0, 1], got {value!r}")
        for name in _RANGES:
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                problems.append(f"{name} must be two numbers (min, max), got {value!r}")
                continue
            if not (math.isfinite(low) and math.isfinite(high) and 0.0 <= low <= high):
                problems.append(f"{name} must be (min, max) with 0 <= min <= max, got {value!r}")
                continue
            object.__setattr__(self, name, (low, high))
        if isinstance(self.zoom_range, tuple) and len(self.zoom_range) == 2 and not self.zoom_range[0] > 0:
            problems.append(f"zoom_range must be positive factors, got {self.zoom_range!r}")
        for name in ("rotate_range_deg", "noise_std", "translate_range_px"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value < math.inf:
                problems.append(f"{name} must be a finite number >= 0, got {value!r}")
        if not isinstance(self.elastic_spacing_px, (int, float)) or not 1.0 <= self.elastic_spacing_px < math.inf:
            problems.append(f"elastic_spacing_px must be a number >= 1, got {self.elastic_spacing_px!r}")
        degree = self.bias_field_degree
        if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
            problems.append(f"bias_field_degree must be an integer >= 1, got {self.bias_field_degree!r}")
        if problems:
            raise InputError("Invalid augmentation config: " + "; ".join(problems) + ".")

    @classmethod
    def none(cls) -> "AugmentationConfig":
        """No augmentation: every probability 0, so the augmentation returns its input unchanged."""
        return cls(**{name: 0.0 for name in _PROBABILITIES})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for ranges)."""
        return {
            f.name: list(getattr(self, f.name)) if isinstance(getattr(self, f.name), tuple) else getattr(self, f.name)
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AugmentationConfig":
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys raise InputError."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Unknown augmentation settings {unknown}; expected some of {sorted(known)}.")
        return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in data.items()})


class Augmentation:
    """A seeded random augmentation of ``{"image": (c, j, i), "label": (1, j, i)}`` samples.

    Built by :func:`build_augmentation`. Calling it returns a new dict with the same keys, shapes and array types
    as the input (numpy in, numpy out; torch in, torch out); the image float32, the labels in their input dtype.
    Keys other than "image" and "label" pass through untouched. With no transform configured
    (:meth:`AugmentationConfig.none`) it returns a shallow copy of the input dict holding the same arrays.

    It owns its random state: two objects built with the same seed give the same sequence of outputs.
    ``set_random_state`` reseeds it (``monai.data.DataLoader`` calls it once per worker, so workers differ).
    """

    def __init__(self, config: AugmentationConfig, *, seed: int) -> None:
        if not isinstance(config, AugmentationConfig):
            raise InputError(f"config must be an AugmentationConfig, got {type(config).__name__}.")
        self.config = config
        self.compose = Compose(_transforms(config))
        self.set_random_state(seed)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> "Augmentation":
        """Reseed every random transform (MONAI's ``Randomizable`` protocol)."""
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise InputError(f"seed must be a non-negative integer, got {seed!r}.")
        self.compose.set_random_state(seed=None if seed is None else int(seed), state=state)
        return self

    def __call__(self, sample: Mapping[str, Any]) -> dict[str, Any]:
        image, label = _check_sample(sample)
        if not self.compose.transforms:
            return dict(sample)
        data = {IMAGE_KEY: torch.as_tensor(image).float()}
        if label is not None:
            data[LABEL_KEY] = torch.as_tensor(label).float()
        result = self.compose(data)
        out = dict(sample)
        out[IMAGE_KEY] = _like(result[IMAGE_KEY], image, float32=True)
        if label is not None:
            out[LABEL_KEY] = _like(torch.round(_plain(result[LABEL_KEY])), label)
        return out

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.compose.transforms) or "identity"
        return f"Augmentation({names})"


def build_augmentation(config: AugmentationConfig, *, seed: int) -> Augmentation:
    """The random augmentation that ``config`` describes, seeded with ``seed``.

    Parameters
    ----------
    config : AugmentationConfig
        Probabilities and ranges; :meth:`AugmentationConfig.none` gives the identity.
    seed : int
        Seeds the transforms' own random state (no global seeding).

    Returns
    -------
    Augmentation
        Callable on ``{"image": (c, j, i) float, "label": (1, j, i) int}`` dicts (label optional), returning the
        same layout. Order: flips, rotation, zoom, elastic deformation (image and labels), then bias field, gamma,
        blur and noise (image only).

    Raises
    ------
    InputError
        ``config`` is not an AugmentationConfig or ``seed`` not a non-negative integer.

    Notes
    -----
    Spatial transforms fill the area moved in from outside with 0 (black after percentile normalisation;
    background in the labels). Labels are resampled with nearest neighbour, so their codes are a subset of the
    input's. Intensities stay finite for finite input.
    """
    return Augmentation(config, seed=seed)


# -- internals ---------------------------------------------------------------------------------------------------


def _transforms(config: AugmentationConfig) -> list:
    keys = [IMAGE_KEY, LABEL_KEY]
    modes = ("bilinear", "nearest")
    transforms: list = []
    if config.flip_prob > 0:
        for axis in (0, 1):
            transforms.append(RandFlipd(keys, prob=config.flip_prob, spatial_axis=axis, allow_missing_keys=True))
    if config.translate_prob > 0 and config.translate_range_px > 0:
        # Shifts the heart within the crop, so a model trained on label-centred crops tolerates an inexact
        # centre from a localiser at inference.
        shift = config.translate_range_px
        transforms.append(
            RandAffined(
                keys, prob=config.translate_prob, translate_range=(shift, shift), mode=modes,
                padding_mode="zeros", allow_missing_keys=True,
            )
        )
    if config.rotate_prob > 0:
        angle = math.radians(config.rotate_range_deg)
        transforms.append(
            RandRotated(
                keys, range_x=angle, prob=config.rotate_prob, keep_size=True, mode=modes, padding_mode="zeros",
                allow_missing_keys=True,
            )
        )
    if config.zoom_prob > 0:
        transforms.append(
            RandZoomd(
                keys, prob=config.zoom_prob, min_zoom=config.zoom_range[0], max_zoom=config.zoom_range[1],
                mode=modes, padding_mode="constant", keep_size=True, allow_missing_keys=True,
            )
        )
    if config.elastic_prob > 0:
        transforms.append(
            Rand2DElasticd(
                keys, spacing=config.elastic_spacing_px, magnitude_range=config.elastic_magnitude_px,
                prob=config.elastic_prob, mode=modes, padding_mode="zeros", allow_missing_keys=True,
            )
        )
    if config.bias_field_prob > 0:
        transforms.append(
            RandBiasFieldd(
                IMAGE_KEY, degree=config.bias_field_degree, coeff_range=config.bias_field_coeff_range,
                prob=config.bias_field_prob,
            )
        )
    if config.gamma_prob > 0:
        transforms.append(RandAdjustContrastd(IMAGE_KEY, prob=config.gamma_prob, gamma=config.gamma_range))
    if config.smooth_prob > 0:
        transforms.append(
            RandGaussianSmoothd(
                IMAGE_KEY, sigma_x=config.smooth_sigma_px, sigma_y=config.smooth_sigma_px, prob=config.smooth_prob
            )
        )
    if config.noise_prob > 0:
        transforms.append(RandGaussianNoised(IMAGE_KEY, prob=config.noise_prob, mean=0.0, std=config.noise_std))
    return transforms


def _check_sample(sample: Mapping[str, Any]) -> tuple[Any, Any]:
    if not isinstance(sample, Mapping) or IMAGE_KEY not in sample:
        raise InputError(
            f'An augmentation sample must be a dict with an "{IMAGE_KEY}" key, got {type(sample).__name__}.'
        )
    image, label = sample[IMAGE_KEY], sample.get(LABEL_KEY)
    for key, value in ((IMAGE_KEY, image), (LABEL_KEY, label)):
        if value is not None and not isinstance(value, (np.ndarray, torch.Tensor)):
            raise InputError(f'sample["{key}"] must be a numpy array or torch tensor, got {type(value).__name__}.')
    if image.ndim != 3:
        raise InputError(
            f'sample["{IMAGE_KEY}"] must be (channel, j, i), got shape {tuple(image.shape)}; '
            "add a channel axis with image[np.newaxis]."
        )
    if label is not None:
        if label.ndim != 3 or label.shape[0] != 1 or tuple(label.shape[1:]) != tuple(image.shape[1:]):
            raise InputError(
                f'sample["{LABEL_KEY}"] must be (1, j, i) matching the image {tuple(image.shape)}, '
                f"got shape {tuple(label.shape)}."
            )
    return image, label


def _plain(value: Any) -> torch.Tensor:
    """A plain torch tensor (MONAI returns MetaTensors)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor


def _like(value: Any, reference: Any, *, float32: bool = False) -> Any:
    """``value`` as the array type, device and dtype of ``reference`` (float32 if ``float32``)."""
    tensor = _plain(value).detach()
    if isinstance(reference, np.ndarray):
        return tensor.cpu().numpy().astype(np.float32 if float32 else reference.dtype, copy=False)
    return tensor.to(device=reference.device, dtype=torch.float32 if float32 else reference.dtype)
