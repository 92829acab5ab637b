"""What the fibrosis classifiers see: the LGE slice as contrast against its own myocardium, cropped to the heart.

Why not the plain image: on EMIDEC (43 training patients) a slice classifier fed the percentile-normalised 128 x 128
image fits its training slices and does not generalise (test AUROC 0.44 to 0.58 in four runs), while the single
number "90th percentile / median of the predicted myocardium" separates scar slices with AUROC 0.86 on the same test
patients. Scar is a *relative* finding (enhanced against nulled myocardium in the same slice), so the classifier is
given exactly that, and less of what lets it recognise a patient instead:

* ``intensity="myocardium_relative"``: log2(image / median image value inside the slice's predicted myocardium),
  mapped from [-2, 4] (a quarter to 16 times the myocardium) to [0, 1]. A slice whose predicted myocardium has fewer
  than :data:`MIN_MYOCARDIUM_PIXELS` pixels uses its 75th intensity percentile as the reference.
* ``mask_dilation_px``: the image is zeroed farther than this many pixels from the predicted myocardium.
* ``heart_crop``: a square around the slice's predicted myocardium (1.5 times its larger extent, at least 36 pixels),
  resampled bilinearly to ``heart_crop`` x ``heart_crop``: every heart at one scale, and the thin myocardium over more
  CAM cells. :meth:`ClassifierInputs.to_grid` maps a CAM back onto the slice grid (zero outside the square).

:data:`TRAINING_DEFAULTS` are what training uses unless told otherwise. The dataclass defaults (``intensity="image"``,
no mask, no crop) are the inputs of classifiers trained before these settings existed: image and myocardium channels
on the whole grid, what a card without settings means. A classifier's settings are stored on its model
card (``inference["classifier_input"]``) and in its training run (:data:`SETTINGS_FILE`), so inference always
builds the inputs the network was trained on.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError

__all__ = [
    "MIN_MYOCARDIUM_PIXELS",
    "SETTINGS_FILE",
    "TRAINING_DEFAULTS",
    "ClassifierInputSettings",
    "ClassifierInputs",
    "classifier_inputs",
    "myocardium_relative_intensity",
]

#: Fewest predicted-myocardium pixels for the slice's myocardium median to be the intensity reference.
MIN_MYOCARDIUM_PIXELS = 20
#: File in a classifier's training run that records its input settings.
SETTINGS_FILE = "classifier_input.json"

_LOG2_RANGE = (-2.0, 4.0)
_CROP_MARGIN = 1.5
_MIN_CROP_PX = 36.0


@dataclass(frozen=True)
class ClassifierInputSettings:
    """How the classifier inputs are made (see the module docstring).

    Attributes
    ----------
    intensity : "image" (the percentile-normalised image) or "myocardium_relative".
    mask_dilation_px : zero the image farther than this from the predicted myocardium; None keeps the whole image.
    heart_crop : side of the heart-centred square input in pixels; None uses the whole grid.
    """

    intensity: Literal["image", "myocardium_relative"] = "image"
    mask_dilation_px: int | None = None
    heart_crop: int | None = None

    def __post_init__(self) -> None:
        if self.intensity not in ("image", "myocardium_relative"):
            raise InputError(f"intensity must be 'image' or 'myocardium_relative', got {self.intensity!r}.")
        for name in ("mask_dilation_px", "heart_crop"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < (0 if name == "mask_dilation_px" else 8)):
                raise InputError(f"{name} must be None or an integer >= {0 if name == 'mask_dilation_px' else 8}, "
                                 f"got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> "ClassifierInputSettings":
        """Settings from a dict; None or {} gives the defaults (classifiers trained without settings)."""
        values = dict(values or {})
        unknown = sorted(set(values) - {"intensity", "mask_dilation_px", "heart_crop"})
        if unknown:
            raise InputError(f"Unknown classifier input settings {unknown}; this CardiacAI is older than the model.")
        return cls(**values)

    @classmethod
    def from_card_inference(cls, inference: Mapping[str, Any] | None) -> "ClassifierInputSettings":
        """The settings stored on a model card's ``inference`` field (defaults when absent)."""
        return cls.from_dict((inference or {}).get("classifier_input"))

    def save(self, run_dir: str | os.PathLike) -> Path:
        path = Path(run_dir) / SETTINGS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> "ClassifierInputSettings":
        """The settings a training run recorded; defaults for runs made before settings were recorded."""
        path = Path(run_dir) / SETTINGS_FILE
        return cls.from_dict(json.loads(path.read_text())) if path.is_file() else cls()


#: The settings new classifiers are trained with (chosen on EMIDEC; ``docs/benchmarks.md``, LGE fibrosis run 4).
TRAINING_DEFAULTS = ClassifierInputSettings(intensity="myocardium_relative", mask_dilation_px=6, heart_crop=96)


@dataclass(frozen=True)
class ClassifierInputs:
    """Classifier inputs and where each came from on the slice grid.

    Attributes
    ----------
    array : (n, 2, s, s) float32: intensity channel and myocardium mask (s = heart_crop, or the grid itself).
    boxes : (n, 4) float64 ``(j0, i0, side_j, side_i)`` of each input's square on the slice grid, in pixels.
    grid_shape : (j, i) of the slice grid.
    """

    array: NDArray[np.float32]
    boxes: NDArray[np.float64]
    grid_shape: tuple[int, int]

    def stack(self) -> NDArray[np.float32]:
        """The inputs as one stack for the stack classifier: (1, 2, s, s, n), slices last."""
        return np.moveaxis(self.array, 0, -1)[np.newaxis].astype(np.float32)

    def to_grid(self, maps: NDArray[np.floating]) -> NDArray[np.float32]:
        """Maps (n, s, s) on the inputs' squares, bilinearly resampled onto the slice grid (n, j, i); 0 outside."""
        from scipy import ndimage

        maps = np.asarray(maps, dtype=np.float32)
        if maps.shape != (self.array.shape[0], *self.array.shape[2:]):
            raise InputError(f"maps must have shape {(self.array.shape[0], *self.array.shape[2:])}, got {maps.shape}.")
        if np.allclose(self.boxes, [0.0, 0.0, *self.grid_shape]) and self.array.shape[2:] == self.grid_shape:
            return maps.copy()
        rows, cols = np.meshgrid(np.arange(self.grid_shape[0]), np.arange(self.grid_shape[1]), indexing="ij")
        out = np.zeros((len(maps), *self.grid_shape), np.float32)
        size_j, size_i = self.array.shape[2:]
        for n, (j0, i0, side_j, side_i) in enumerate(self.boxes):
            u = (rows + 0.5 - j0) * size_j / side_j - 0.5
            v = (cols + 0.5 - i0) * size_i / side_i - 0.5
            inside = (u >= -0.5) & (u <= size_j - 0.5) & (v >= -0.5) & (v <= size_i - 0.5)
            sampled = ndimage.map_coordinates(maps[n], [u, v], order=1, mode="nearest")
            out[n][inside] = sampled[inside]
        return out


def myocardium_relative_intensity(
    images: NDArray[np.floating], myocardium: NDArray[np.integer | np.bool_]
) -> NDArray[np.float32]:
    """log2(image / median of the slice's myocardium), [-2, 4] mapped to [0, 1], per slice (n, j, i)."""
    images = np.asarray(images, dtype=np.float32)
    out = np.empty_like(images)
    low, high = _LOG2_RANGE
    for n, (image, mask) in enumerate(zip(images, np.asarray(myocardium) > 0)):
        values = image[mask]
        reference = float(np.median(values)) if values.size >= MIN_MYOCARDIUM_PIXELS else float(
            np.percentile(image, 75))
        ratio = image / max(reference, 1e-3)
        out[n] = np.clip((np.log2(np.maximum(ratio, 2.0 ** (low - 1))) - low) / (high - low), 0.0, 1.0)
    return out


def _heart_box(mask: NDArray[np.bool_], grid_shape: tuple[int, int]) -> tuple[float, float, float, float]:
    if not mask.any():
        side = max(_MIN_CROP_PX, min(grid_shape) / 2)
        return (grid_shape[0] - side) / 2, (grid_shape[1] - side) / 2, side, side
    rows, cols = np.nonzero(mask)
    side = max(float(rows.max() - rows.min() + 1), float(cols.max() - cols.min() + 1), _MIN_CROP_PX / _CROP_MARGIN)
    side *= _CROP_MARGIN
    centre_j = (rows.min() + rows.max() + 1) / 2
    centre_i = (cols.min() + cols.max() + 1) / 2
    return centre_j - side / 2, centre_i - side / 2, side, side


def classifier_inputs(
    images: NDArray[np.floating],
    myocardium: NDArray[np.integer | np.bool_],
    settings: ClassifierInputSettings | None = None,
) -> ClassifierInputs:
    """The fibrosis classifier's inputs for slices (n, j, i) and their predicted myocardium masks (n, j, i).

    Raises
    ------
    InputError
        When the arrays are not (n, j, i) of one shape, or hold NaN/Inf.
    """
    from scipy import ndimage

    settings = settings or ClassifierInputSettings()
    images = np.asarray(images, dtype=np.float32)
    mask = np.asarray(myocardium) > 0
    if images.ndim != 3 or mask.shape != images.shape:
        raise InputError(f"images and myocardium must both be (n, j, i), got {images.shape} and {mask.shape}.")
    if not np.isfinite(images).all():
        raise InputError("The classifier's images hold NaN or Inf values.")
    grid = (int(images.shape[1]), int(images.shape[2]))
    intensity = images if settings.intensity == "image" else myocardium_relative_intensity(images, mask)
    if settings.mask_dilation_px is not None:
        near = np.stack([ndimage.binary_dilation(m, iterations=settings.mask_dilation_px) if m.any() and
                         settings.mask_dilation_px > 0 else m for m in mask])
        intensity = intensity * near
    if settings.heart_crop is None:
        array = np.stack([intensity, mask.astype(np.float32)], axis=1).astype(np.float32)
        boxes = np.tile(np.array([0.0, 0.0, *grid]), (len(images), 1))
        return ClassifierInputs(array, boxes, grid)
    size = settings.heart_crop
    steps = (np.arange(size) + 0.5) / size
    array = np.zeros((len(images), 2, size, size), np.float32)
    boxes = np.zeros((len(images), 4))
    for n in range(len(images)):
        j0, i0, side_j, side_i = boxes[n] = _heart_box(mask[n], grid)
        u, v = np.meshgrid(j0 + steps * side_j - 0.5, i0 + steps * side_i - 0.5, indexing="ij")
        array[n, 0] = ndimage.map_coordinates(intensity[n], [u, v], order=1, mode="constant", cval=0.0)
        array[n, 1] = ndimage.map_coordinates(mask[n].astype(np.float32), [u, v], order=1, mode="constant") > 0.5
    return ClassifierInputs(array, boxes, grid)
