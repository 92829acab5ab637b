"""The one pre-processing used by training and inference, and its exact inverse.

2D networks see short-axis slices resampled in-plane to a fixed spacing, cropped (or padded) to a fixed size and
intensity-normalised, as an :class:`InputSpec` says (the same spec is stored in each model card). Predictions made on
that grid go back to the input's own grid with :func:`restore_labels` or :func:`restore_probabilities`, using the
:class:`PreprocessTransform` that :func:`preprocess` returned.

Arrays are (k, j, i); "in-plane" means the (j, i) axes. The slice axis k is never resampled, cropped or moved.

Typical use (``image`` and ``labels`` are :class:`~cardiac_ai.geometry.Volume` objects)::

    spec = InputSpec(in_plane_spacing_mm=(1.25, 1.25), crop_size=(128, 128))
    sample = preprocess(image, spec, labels=labels)       # training: crop centred on the heart
    sample = preprocess(image, spec)                      # inference: crop centred on the image
    restored = restore_labels(predicted, sample.transform)  # Volume on the image's grid and geometry
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Sequence, Union

import numpy as np
from numpy.typing import NDArray

from .errors import InputError
from .geometry import NO_TURN, Geometry, InPlaneTurn, Volume, short_axis_display_turn

__all__ = [
    "resample_onto",
    "InputSpec",
    "PreprocessTransform",
    "Preprocessed",
    "CropCenter",
    "CropCenterDetector",
    "MAX_CROP_SIZE",
    "MAX_RESAMPLED_SIZE",
    "MIN_RESAMPLED_SIZE",
    "preprocess",
    "network_input",
    "restore_argmax",
    "restore_labels",
    "restore_probabilities",
]

log = logging.getLogger(__name__)

#: Largest crop side (pixels) an :class:`InputSpec` accepts.
MAX_CROP_SIZE = 1024
#: Neighbours on each side a 2.5D network may see; cine stacks hold 6 to 21 slices.
MAX_SLICE_CONTEXT = 3
#: Largest and smallest in-plane side (pixels) of a resampled slice (the smallest only where the input had at
#: least as many); outside them the spacing is probably in the wrong unit.
MAX_RESAMPLED_SIZE = 4096
MIN_RESAMPLED_SIZE = 4

Normalization = Literal["percentile", "zscore"]
#: Takes the resampled, not yet normalised image (float32, geometry of the resampled grid); returns the crop
#: centre (j, i) as (possibly fractional) indices of that grid.
CropCenterDetector = Callable[[Volume], Sequence[float]]
CropCenter = Union[Literal["labels", "image_center"], Sequence[float], CropCenterDetector, None]

_NORMALIZATIONS = ("percentile", "zscore")


# -- the spec ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputSpec:
    """What a 2D slice network expects as input; stored in its model card.

    Parameters
    ----------
    in_plane_spacing_mm : (2,) floats, (i, j) order as ITK
        Pixel spacing every slice is resampled to, in mm.
    crop_size : (2,) ints, (j, i) order as the arrays
        Rows and columns of the network input; each between 1 and :data:`MAX_CROP_SIZE`.
    normalization : {"percentile", "zscore"}
        ``"percentile"`` maps the ``percentiles`` (low, high) of the input volume to 0 and 1 and clips to [0, 1];
        ``"zscore"`` subtracts the volume's mean and divides by its standard deviation (no clipping).
    percentiles : (2,) floats
        Low and high percentile (0..100) for ``"percentile"``; ignored by ``"zscore"``.
    channels : int
        Input channels of the network. :func:`preprocess` makes one channel per slice; :func:`network_input`
        stacks the neighbouring slices when ``slice_context`` asks for them; other stacks (frames, maps) are the
        caller's job.
    slice_context : int
        Neighbouring slices on each side that the network sees beside the slice it segments (2.5D): 0 (default) for
        one slice, 1 for the slices above and below. ``channels`` is then ``1 + 2 * slice_context``.
    """

    in_plane_spacing_mm: tuple[float, float] = (1.25, 1.25)
    crop_size: tuple[int, int] = (128, 128)
    normalization: Normalization = "percentile"
    percentiles: tuple[float, float] = (1.0, 99.0)
    channels: int = 1
    slice_context: int = 0

    def __post_init__(self) -> None:
        try:
            spacing = tuple(float(s) for s in self.in_plane_spacing_mm)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"in_plane_spacing_mm must be two numbers (i, j) in mm, got {self.in_plane_spacing_mm!r}."
            ) from e
        if len(spacing) != 2 or not all(math.isfinite(s) and s > 0 for s in spacing):
            raise InputError(
                "in_plane_spacing_mm must be two positive finite numbers (i, j) in mm, "
                f"got {self.in_plane_spacing_mm!r}."
            )
        try:
            crop = tuple(int(c) for c in self.crop_size)
            exact = all(float(c) == int(c) for c in self.crop_size)
        except (TypeError, ValueError) as e:
            raise InputError(f"crop_size must be two integers (j, i), got {self.crop_size!r}.") from e
        if len(crop) != 2 or not exact or not all(1 <= c <= MAX_CROP_SIZE for c in crop):
            raise InputError(
                f"crop_size must be two integers (j, i) between 1 and {MAX_CROP_SIZE}, got {self.crop_size!r}. "
                "A larger crop would not fit a GPU batch; resample to a coarser spacing instead."
            )
        if self.normalization not in _NORMALIZATIONS:
            raise InputError(f"normalization must be one of {_NORMALIZATIONS}, got {self.normalization!r}.")
        try:
            percentiles = tuple(float(p) for p in self.percentiles)
        except (TypeError, ValueError) as e:
            raise InputError(f"percentiles must be two numbers (low, high), got {self.percentiles!r}.") from e
        if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
            raise InputError(f"percentiles must be (low, high) with 0 <= low < high <= 100, got {self.percentiles!r}.")
        if isinstance(self.channels, bool) or not isinstance(self.channels, (int, np.integer)) or self.channels < 1:
            raise InputError(f"channels must be a positive integer, got {self.channels!r}.")
        if isinstance(self.slice_context, bool) or not isinstance(self.slice_context, (int, np.integer)) \
                or not 0 <= self.slice_context <= MAX_SLICE_CONTEXT:
            raise InputError(
                f"slice_context must be an integer from 0 to {MAX_SLICE_CONTEXT}, got {self.slice_context!r}.")
        if self.slice_context and self.channels != 1 + 2 * self.slice_context:
            raise InputError(f"slice_context {self.slice_context} gives the network {1 + 2 * self.slice_context} "
                             f"channels (the slice and its neighbours on each side), but channels is {self.channels}.")
        object.__setattr__(self, "in_plane_spacing_mm", spacing)
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "percentiles", percentiles)
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "slice_context", int(self.slice_context))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (lists for tuples)."""
        return {
            "in_plane_spacing_mm": list(self.in_plane_spacing_mm),
            "crop_size": list(self.crop_size),
            "normalization": self.normalization,
            "percentiles": list(self.percentiles),
            "channels": self.channels,
            # Written only when used, so the cards of single-slice models stay readable by older versions.
            **({"slice_context": self.slice_context} if self.slice_context else {}),
        }

    def with_slice_context(self, context: int) -> "InputSpec":
        """The same spec for a network that also sees ``context`` neighbouring slices on each side (0: none)."""
        return dataclasses.replace(self, channels=1 + 2 * context, slice_context=context)

    def same_preprocessing(self, other: "InputSpec") -> bool:
        """True when :func:`preprocess` makes the same slices for both specs (they may stack them differently)."""
        return self.with_slice_context(0) == other.with_slice_context(0)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys raise InputError."""
        if not isinstance(data, dict):
            raise InputError(f"InputSpec.from_dict needs a dict, got {type(data).__name__}.")
        known = {"in_plane_spacing_mm", "crop_size", "normalization", "percentiles", "channels", "slice_context"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Unknown input spec keys {unknown}; expected some of {sorted(known)}.")
        kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in data.items()}
        return cls(**kwargs)


# -- the record of what was done -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreprocessTransform:
    """Everything needed to map arrays between the input grid and the network grid.

    Attributes
    ----------
    spec : InputSpec used.
    native_geometry, native_shape : geometry and (k, j, i) shape of the input volume.
    resampled_geometry, resampled_shape : the in-plane resampled grid (same direction and slice axis as the input,
        turned by ``in_plane_turn``). Equal to the display ones when the input already had the spec's spacing.
    crop_offset_ji : (j, i) index in the resampled grid of the crop's first pixel; negative or running past the
        end where the crop was padded.
    crop_size_ji : (j, i) crop size, ``spec.crop_size``.
    intensity_stats : (low, high) percentile values, or (mean, std) for "zscore", of the input volume.
    in_plane_turn : how the input's rows and columns were reordered before resampling, to show its slices as the
        networks learnt them (:func:`~cardiac_ai.geometry.short_axis_display_turn`); the restore functions undo it.
    """

    spec: InputSpec
    native_geometry: Geometry
    native_shape: tuple[int, int, int]
    resampled_geometry: Geometry
    resampled_shape: tuple[int, int, int]
    crop_offset_ji: tuple[int, int]
    crop_size_ji: tuple[int, int]
    intensity_stats: tuple[float, float]
    in_plane_turn: InPlaneTurn = NO_TURN

    @property
    def display_geometry(self) -> Geometry:
        """The input's grid after ``in_plane_turn`` (the same voxels and positions), which was resampled."""
        return self.in_plane_turn.geometry(self.native_geometry, self.native_shape)

    @property
    def display_shape(self) -> tuple[int, int, int]:
        return self.in_plane_turn.shape(self.native_shape)  # type: ignore[return-value]

    @property
    def was_resampled(self) -> bool:
        """False when the input already had the spec's spacing (no interpolation either way)."""
        return self.resampled_shape != self.display_shape or not self.resampled_geometry.is_close(
            self.display_geometry, atol_mm=1e-9, atol_direction=1e-12
        )

    @property
    def cropped_shape(self) -> tuple[int, int, int]:
        """(k, cj, ci) shape of the network-grid arrays."""
        return (self.native_shape[0], *self.crop_size_ji)

    @property
    def cropped_geometry(self) -> Geometry:
        """Geometry of the (k, cj, ci) crop, e.g. to write it as a volume for inspection."""
        return _shift_origin(self.resampled_geometry, self.crop_offset_ji)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "spec": self.spec.to_dict(),
            "native_geometry": self.native_geometry.to_dict(),
            "native_shape": list(self.native_shape),
            "resampled_geometry": self.resampled_geometry.to_dict(),
            "resampled_shape": list(self.resampled_shape),
            "crop_offset_ji": list(self.crop_offset_ji),
            "crop_size_ji": list(self.crop_size_ji),
            "intensity_stats": list(self.intensity_stats),
            "in_plane_turn": self.in_plane_turn.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessTransform":
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                spec=InputSpec.from_dict(data["spec"]),
                native_geometry=Geometry.from_dict(data["native_geometry"]),
                native_shape=tuple(int(v) for v in data["native_shape"]),  # type: ignore[arg-type]
                resampled_geometry=Geometry.from_dict(data["resampled_geometry"]),
                resampled_shape=tuple(int(v) for v in data["resampled_shape"]),  # type: ignore[arg-type]
                crop_offset_ji=tuple(int(v) for v in data["crop_offset_ji"]),  # type: ignore[arg-type]
                crop_size_ji=tuple(int(v) for v in data["crop_size_ji"]),  # type: ignore[arg-type]
                intensity_stats=tuple(float(v) for v in data["intensity_stats"]),  # type: ignore[arg-type]
                in_plane_turn=InPlaneTurn.from_dict(data.get("in_plane_turn")),
            )
        except KeyError as e:
            raise InputError(f"PreprocessTransform dict lacks key {e.args[0]!r}.") from e


@dataclass(frozen=True)
class Preprocessed:
    """Network-ready arrays and the transform that maps them back.

    Attributes
    ----------
    image : (k, cj, ci) float32 ndarray
        Resampled, cropped and normalised slices.
    labels : (k, cj, ci) uint8 ndarray or None
        The labels on the same grid (nearest-neighbour resampled, padded with 0), when labels were given.
    transform : PreprocessTransform
    """

    image: NDArray[np.float32]
    labels: NDArray[np.uint8] | None
    transform: PreprocessTransform = field(repr=False)

    @property
    def geometry(self) -> Geometry:
        """Geometry of the crop (``transform.cropped_geometry``)."""
        return self.transform.cropped_geometry


# -- public functions ----------------------------------------------------------------------------------------------


def preprocess(
    volume: Volume,
    spec: InputSpec,
    *,
    labels: Volume | None = None,
    crop_center: CropCenter = None,
) -> Preprocessed:
    """Resample in-plane, crop or pad, and normalise a short-axis stack for a 2D network.

    Parameters
    ----------
    volume : Volume with axes "kji"
        The image, any real dtype, finite. For a cine series call this once per frame (``volume.frame(t)``),
        passing the same ``crop_center`` so that every frame gets the same crop.
    spec : InputSpec
        Target spacing, crop size and normalisation.
    labels : Volume with axes "kji", optional
        Integer label map on exactly the image's grid (shape and geometry), values 0..255.
    crop_center : {"labels", "image_center"}, (j, i) floats, callable or None
        Where the crop is centred, in (fractional) indices of the *resampled* grid:
        ``"labels"`` the centre of the bounding box of all labelled (non-zero) pixels of the whole stack (training);
        ``"image_center"`` the centre of the slices (inference without a detector);
        a (j, i) pair taken as given; a callable ``detector(resampled_image: Volume) -> (j, i)`` (e.g. a heart
        localiser). None means "labels" when labels are given, else "image_center". The resampled grid is that of
        the slices turned to the short-axis display (``transform.in_plane_turn``; the input's own orientation when
        its header needs no turn): compute a (j, i) pair from a physical point with the detector's
        ``resampled_image.geometry``, not from the input's indices.

    Returns
    -------
    Preprocessed
        ``image`` (k, cj, ci) float32, ``labels`` (k, cj, ci) uint8 or None, and the ``transform`` for
        :func:`restore_labels` / :func:`restore_probabilities`.

    Raises
    ------
    InputError
        A 4D or non-numeric volume, NaN/Inf voxels, labels that are not integers in 0..255 or not on the image's
        grid, a resampled slice side outside :data:`MIN_RESAMPLED_SIZE` .. :data:`MAX_RESAMPLED_SIZE`, labels
        without foreground for ``crop_center="labels"``, a crop centre that puts the crop entirely outside the
        image, or a constant image.

    Notes
    -----
    *Resampling* works in each slice's own index frame: the new grid has the same direction and slice positions,
    ``round(n * spacing / new_spacing)`` pixels per in-plane axis, and the same field-of-view centre, so the
    physical extent is kept to within one new pixel. Images use linear interpolation, labels nearest neighbour;
    grid points just outside the old pixel centres take the nearest value. No anti-aliasing when downsampling.

    *Normalisation statistics* come from every voxel of the input volume, not from the crop, so they do not depend
    on where the crop lands (label centre in training, image centre or detector at inference). Padding takes the
    image's minimum before normalisation (0 after percentile normalisation); labels are padded with 0.
    A constant image (or one whose low and high percentiles coincide) raises InputError rather than dividing by 1.
    """
    _check_volume(volume, "image")
    if not isinstance(spec, InputSpec):
        raise InputError(f"spec must be an InputSpec, got {type(spec).__name__}.")
    label_array = None
    if labels is not None:
        label_array = _check_labels(labels, volume)
    native = volume
    turn = short_axis_display_turn(volume.geometry)
    if not turn.is_identity:
        log.debug("Slices %s for the networks (direction %s)", turn.describe(), volume.geometry.direction_lps)
        volume = Volume(np.ascontiguousarray(turn.apply(volume.array)), turn.geometry(volume.geometry,
                                                                                        volume.spatial_shape))
        if label_array is not None:
            label_array = np.ascontiguousarray(turn.apply(label_array))
    image = np.asarray(volume.array, dtype=np.float32)
    stats = _intensity_stats(image, spec)

    # 1. resample in-plane
    resampled_geometry, size_ji, offset_mm = _resampled_grid(volume.geometry, volume.spatial_shape[1:], spec)
    resampled_shape = (volume.spatial_shape[0], *size_ji)
    if _same_grid(volume.geometry, resampled_geometry, volume.spatial_shape, resampled_shape):
        resampled_geometry, resampled = volume.geometry, image
        resampled_labels = label_array
    else:
        source_spacing = volume.geometry.spacing_mm[:2]
        target_spacing = resampled_geometry.spacing_mm[:2]
        resampled = _resample_slices(image, source_spacing, target_spacing, size_ji, offset_mm, "linear")
        resampled_labels = None
        if label_array is not None:
            resampled_labels = _resample_slices(
                label_array, source_spacing, target_spacing, size_ji, offset_mm, "nearest"
            )
        log.debug("Resampled %s -> %s (spacing %s mm)", volume.spatial_shape, resampled_shape, target_spacing)

    # 2. crop centre and crop
    center_ji = _crop_center(crop_center, resampled, resampled_geometry, resampled_labels)
    crop_ji = spec.crop_size
    offset_ji = tuple(int(math.floor(c - (n - 1) / 2.0 + 0.5)) for c, n in zip(center_ji, crop_ji))
    if not all(-n < o < size for o, n, size in zip(offset_ji, crop_ji, size_ji)):
        raise InputError(
            f"The crop centre (j, i) = {tuple(round(c, 2) for c in center_ji)} puts the {crop_ji} crop entirely "
            f"outside the resampled slices of size {size_ji}. Give the centre as (j, i) indices of the resampled grid."
        )
    image_crop = _crop_or_pad(resampled, offset_ji, crop_ji, fill=float(image.min()))
    label_crop = None
    if resampled_labels is not None:
        label_crop = _crop_or_pad(resampled_labels, offset_ji, crop_ji, fill=0)
        lost = int(np.count_nonzero(resampled_labels)) - int(np.count_nonzero(label_crop))
        if lost:
            log.warning(
                "The %s crop cuts off %d labelled pixels (of %d); a larger crop_size would keep them.",
                crop_ji, lost, int(np.count_nonzero(resampled_labels)),
            )

    # 3. normalise
    normalised = _normalise(image_crop, spec, stats)
    transform = PreprocessTransform(
        spec=spec,
        native_geometry=native.geometry,
        native_shape=native.spatial_shape,
        resampled_geometry=resampled_geometry,
        resampled_shape=resampled_shape,  # type: ignore[arg-type]
        crop_offset_ji=offset_ji,  # type: ignore[arg-type]
        crop_size_ji=crop_ji,
        intensity_stats=stats,
        in_plane_turn=turn,
    )
    return Preprocessed(image=normalised, labels=label_crop, transform=transform)


def network_input(images: np.ndarray, spec: InputSpec, *, base_first: bool = True) -> np.ndarray:
    """The network's input ``(k, channels, cj, ci)`` from preprocessed slices ``(k, cj, ci)`` of one stack, in their
    dtype (float for inference, the uint8 of prepared training crops).

    With ``spec.slice_context`` = n, slice k's channels are slices k - n .. k + n ordered from the base side to the
    apex side (``base_first``: the base is at low k, as in ACDC), so a 2.5D network reads "towards the base" in the
    same channel whichever way the stack runs; a neighbour beyond the stack is all zeros (no image there, which a
    2.5D model needs to tell the top of a stack from a mid slice). Without context, a channel axis is added.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise InputError(f"network_input needs preprocessed slices (k, cj, ci), got shape {images.shape}.")
    context = spec.slice_context
    if not context:
        return images[:, np.newaxis]
    ordered = images if base_first else images[::-1]
    beyond = np.zeros((context, *images.shape[1:]), images.dtype)
    padded = np.concatenate([beyond, ordered, beyond])
    stacked = np.stack([padded[offset:offset + len(images)] for offset in range(2 * context + 1)], axis=1)
    return stacked if base_first else np.ascontiguousarray(stacked[::-1])


def restore_probabilities(
    probabilities: NDArray[np.floating],
    transform: PreprocessTransform,
    *,
    background_channel: int | None = 0,
) -> NDArray[np.float32]:
    """Map per-class maps from the network grid back onto the input's native grid.

    Parameters
    ----------
    probabilities : (c, k, cj, ci) float ndarray
        Class probabilities (or any per-channel map: logits, CAM) on the grid of ``Preprocessed.image``.
    transform : PreprocessTransform
        From the :func:`preprocess` call that made the network input.
    background_channel : int or None
        Outside the crop, this channel is 1 and the others 0 (a probability map's background). None fills 0 in
        every channel (logits, CAM maps).

    Returns
    -------
    (c, k, j, i) float32 ndarray
        On the native grid: same (k, j, i) shape as the input volume, whose geometry is
        ``transform.native_geometry``. Linear interpolation in-plane, none along k.

    Raises
    ------
    InputError
        Wrong shape, non-finite values, or a background channel that does not exist.
    """
    array, fills = _checked_maps(probabilities, transform, background_channel)
    return _restore_channels(array, transform, fills)


def restore_argmax(probabilities: NDArray[np.floating], transform: PreprocessTransform) -> NDArray[np.uint8]:
    """The native-grid label map of class probabilities: ``argmax(restore_probabilities(...), axis=0)``, faster.

    Parameters
    ----------
    probabilities : (c, k, cj, ci) float ndarray
        Class probabilities on the grid of ``Preprocessed.image``, channel 0 the background (at most 256 classes).
    transform : PreprocessTransform
        From the :func:`preprocess` call that made the network input.

    Returns
    -------
    (k, j, i) uint8 ndarray
        Channel index of the largest restored probability (the first on ties); 0 where the crop does not reach.

    Raises
    ------
    InputError
        As :func:`restore_probabilities`.

    Notes
    -----
    Beyond the crop every pixel is background, so the argmax is taken only where the crop's values reach the native
    grid (about a third of a cine frame): 1 to 2 ms instead of 5 on CPU-2 for a ten-slice ACDC frame.
    """
    array, fills = _checked_maps(probabilities, transform, 0)
    if array.shape[0] > 256:
        raise InputError(f"restore_argmax makes uint8 labels; got {array.shape[0]} channels (at most 256).")
    if not transform.was_resampled:
        return np.argmax(_restore_channels(array, transform, fills), axis=0).astype(np.uint8)
    labels = np.zeros(transform.display_shape, dtype=np.uint8)
    window = _restore_window(np.moveaxis(array, 0, -1), transform, fills)
    if window is not None:
        restored, rows, columns = window
        labels[:, rows, columns] = np.argmax(restored, axis=-1)
    return np.ascontiguousarray(transform.in_plane_turn.undo(labels))


def _checked_maps(
    probabilities: NDArray[np.floating], transform: PreprocessTransform, background_channel: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (c, k, cj, ci) float32 maps and each channel's value beyond the crop."""
    array = np.asarray(probabilities)
    expected = transform.cropped_shape
    if array.ndim != 4 or tuple(array.shape[1:]) != expected:
        raise InputError(
            f"probabilities must be (channels, {', '.join(map(str, expected))}) = (c, k, cj, ci) like the "
            f"preprocessed image, got shape {array.shape}."
        )
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"probabilities must be a real array, got dtype {array.dtype}.")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise InputError("probabilities hold NaN or Inf values; check the network output before restoring.")
    n_channels = array.shape[0]
    if background_channel is not None and not 0 <= background_channel < n_channels:
        raise InputError(f"background_channel {background_channel} does not exist; there are {n_channels} channels.")
    fills = np.zeros(n_channels, dtype=np.float32)
    if background_channel is not None:
        fills[background_channel] = 1.0
    return array, fills


def restore_labels(pred_labels: NDArray[np.integer], transform: PreprocessTransform) -> Volume:
    """Map a label map from the network grid back onto the input's native grid and geometry.

    Parameters
    ----------
    pred_labels : (k, cj, ci) integer ndarray
        Labels 0..255 on the grid of ``Preprocessed.image`` (e.g. the argmax of the network's output).
    transform : PreprocessTransform
        From the :func:`preprocess` call that made the network input.

    Returns
    -------
    Volume
        uint8 (k, j, i) labels with exactly ``transform.native_geometry`` and the input's shape; 0 outside the crop.

    Raises
    ------
    InputError
        Wrong shape, or values that are not integers in 0..255.

    Notes
    -----
    Each label is one-hot encoded, resampled linearly and the largest wins (ties go to the lower code). This gives
    smoother boundaries than nearest neighbour when the native grid is finer than the network's, and the same
    result where it is not. When the input already had the spec's spacing, labels are only un-cropped (exact).
    """
    array = np.asarray(pred_labels)
    expected = transform.cropped_shape
    if array.shape != expected:
        raise InputError(f"pred_labels must have the preprocessed shape (k, cj, ci) = {expected}, got {array.shape}.")
    array = _as_label_array(array, "pred_labels")
    if not transform.was_resampled:
        restored = _crop_or_pad(array, _negated(transform.crop_offset_ji), transform.display_shape[1:], fill=0)
        return Volume(np.ascontiguousarray(transform.in_plane_turn.undo(restored)), transform.native_geometry)
    codes = np.unique(array)
    if codes[0] != 0:
        codes = np.concatenate([[0], codes]).astype(np.uint8)
    one_hot = (array[np.newaxis] == codes[:, np.newaxis, np.newaxis, np.newaxis]).astype(np.float32)
    fills = (codes == 0).astype(np.float32)
    restored_one_hot = _restore_channels(one_hot, transform, fills)
    restored = codes[np.argmax(restored_one_hot, axis=0)].astype(np.uint8)
    return Volume(restored, transform.native_geometry)  # _restore_channels has undone the turn


# -- validation ----------------------------------------------------------------------------------------------------


def _check_volume(volume: Volume, what: str) -> None:
    if not isinstance(volume, Volume):
        raise InputError(f"{what} must be a cardiac_ai Volume, got {type(volume).__name__}.")
    if volume.axes != "kji":
        raise InputError(
            f"{what} is a 4D series {volume.array.shape} (t, k, j, i); preprocess takes one 3D stack (k, j, i). "
            "Call it per frame with volume.frame(t) and the same crop_center."
        )
    dtype = volume.array.dtype
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputError(f"{what} must hold real numbers, got dtype {dtype}.")
    if np.issubdtype(dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(volume.array)))
        if bad:
            raise InputError(
                f"{what} holds {bad} NaN or Inf voxels out of {volume.array.size}. "
                "Fix or mask them (e.g. replace with 0) before pre-processing."
            )


def _as_label_array(array: np.ndarray, what: str) -> NDArray[np.uint8]:
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise InputError(f"{what} must hold whole numbers (label codes), got non-integer values.")
    elif not np.issubdtype(array.dtype, np.integer) and array.dtype != np.bool_:
        raise InputError(f"{what} must be an integer label map, got dtype {array.dtype}.")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(
            f"{what} values must be label codes 0..255, found {array.min()}..{array.max()}. "
            "Map the dataset's codes to the CardiacAI label table first."
        )
    return array.astype(np.uint8, copy=False)


def _check_labels(labels: Volume, volume: Volume) -> NDArray[np.uint8]:
    if not isinstance(labels, Volume) or labels.axes != "kji":
        raise InputError("labels must be a 3D (k, j, i) cardiac_ai Volume.")
    if labels.spatial_shape != volume.spatial_shape:
        raise InputError(
            f"labels shape {labels.spatial_shape} differs from the image's {volume.spatial_shape}; "
            "labels must be on the image's grid (resample them onto it first)."
        )
    if not labels.geometry.is_close(volume.geometry, atol_mm=1e-3, atol_direction=1e-4):
        raise InputError(
            f"labels geometry {labels.geometry} differs from the image geometry {volume.geometry}; "
            "labels must be on the image's grid (resample them onto it first)."
        )
    return _as_label_array(labels.array, "labels")


# -- geometry and resampling ---------------------------------------------------------------------------------------


def _resampled_grid(
    geometry: Geometry, size_ji: Sequence[int], spec: InputSpec
) -> tuple[Geometry, tuple[int, int], tuple[float, float]]:
    """New geometry, (j, i) size and (i, j) origin shift in mm (index frame) of the in-plane resampled grid."""
    spacing_i, spacing_j, spacing_k = geometry.spacing_mm
    new_i, new_j = spec.in_plane_spacing_mm
    n_j, n_i = size_ji
    m_i = max(1, int(round(n_i * spacing_i / new_i)))
    m_j = max(1, int(round(n_j * spacing_j / new_j)))
    if max(m_i, m_j) > MAX_RESAMPLED_SIZE or (min(m_i, m_j) < MIN_RESAMPLED_SIZE <= min(n_i, n_j)):
        raise InputError(
            f"Resampling {n_j} x {n_i} pixels of {spacing_j:g} x {spacing_i:g} mm (j x i) to {new_j:g} x {new_i:g} mm "
            f"would give {m_j} x {m_i} pixels (allowed: {MIN_RESAMPLED_SIZE} to {MAX_RESAMPLED_SIZE}). "
            "Check that the spacing is in mm."
        )
    # keep the centre of the field of view: first new pixel centre, in mm along i and j of the old index frame
    shift_i = ((n_i - 1) * spacing_i - (m_i - 1) * new_i) / 2.0
    shift_j = ((n_j - 1) * spacing_j - (m_j - 1) * new_j) / 2.0
    origin = np.asarray(geometry.origin_lps_mm) + geometry.direction_matrix @ np.array([shift_i, shift_j, 0.0])
    new_geometry = Geometry((new_i, new_j, spacing_k), tuple(origin), geometry.direction_lps)
    return new_geometry, (m_j, m_i), (shift_i, shift_j)


def _same_grid(a: Geometry, b: Geometry, shape_a: Sequence[int], shape_b: Sequence[int]) -> bool:
    return tuple(shape_a) == tuple(shape_b) and bool(
        np.allclose(a.spacing_mm, b.spacing_mm, rtol=1e-6, atol=0.0)
    )


def _shift_origin(geometry: Geometry, offset_ji: Sequence[int]) -> Geometry:
    spacing_i, spacing_j, _ = geometry.spacing_mm
    step = np.array([offset_ji[1] * spacing_i, offset_ji[0] * spacing_j, 0.0])
    origin = np.asarray(geometry.origin_lps_mm) + geometry.direction_matrix @ step
    return Geometry(geometry.spacing_mm, tuple(origin), geometry.direction_lps)


def _resample_slices(
    array: np.ndarray,
    spacing_ij: Sequence[float],
    new_spacing_ij: Sequence[float],
    new_size_ji: Sequence[int],
    new_origin_ij: Sequence[float],
    interpolator: str,
    *,
    origin_ij: Sequence[float] = (0.0, 0.0),
) -> np.ndarray:
    """Resample every (j, i) slice of a (k, j, i) or (k, j, i, c) array in its own index frame.

    Positions are mm along the slice's i and j axes. The source grid has spacing ``spacing_ij`` and its first pixel
    at ``origin_ij``; the target has ``new_spacing_ij`` and its first pixel at ``new_origin_ij``. k stays as is.
    Points beyond the source's outer pixel centres take the nearest value. ``interpolator``: "linear" or "nearest".

    Linear resampling of such an axis-aligned grid is separable: two small matrix products per slice (what ITK's
    linear interpolator computes, at a fraction of its cost for the many-channel probability maps); nearest
    neighbour (label maps) goes through SimpleITK.
    """
    if interpolator == "linear":
        index_j = _source_index(new_size_ji[0], new_origin_ij[1], new_spacing_ij[1], origin_ij[1], spacing_ij[1])
        index_i = _source_index(new_size_ji[1], new_origin_ij[0], new_spacing_ij[0], origin_ij[0], spacing_ij[0])
        return _resample_linear_at(array, index_j, index_i, array.shape[1:3])
    import SimpleITK as sitk  # here, not at module level: InputSpec alone must not need the imaging stack

    is_vector = array.ndim == 4
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    image.SetSpacing((float(spacing_ij[0]), float(spacing_ij[1]), 1.0))
    image.SetOrigin((float(origin_ij[0]), float(origin_ij[1]), 0.0))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize((int(new_size_ji[1]), int(new_size_ji[0]), int(array.shape[0])))
    resampler.SetOutputSpacing((float(new_spacing_ij[0]), float(new_spacing_ij[1]), 1.0))
    resampler.SetOutputOrigin((float(new_origin_ij[0]), float(new_origin_ij[1]), 0.0))
    resampler.SetOutputDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    resampler.SetInterpolator({"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator])
    resampler.SetDefaultPixelValue(0.0)
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetOutputPixelType(image.GetPixelID())
    result = sitk.GetArrayFromImage(resampler.Execute(image))
    if is_vector and result.ndim == 3:  # a one-component vector image comes back without its channel axis
        result = result[..., np.newaxis]
    return result.astype(array.dtype, copy=False)


def _source_index(n_out: int, out_first_mm: float, out_spacing: float, in_first_mm: float,
                  in_spacing: float) -> np.ndarray:
    """Continuous source index of each of ``n_out`` target positions along one axis."""
    return (float(out_first_mm) + np.arange(int(n_out)) * float(out_spacing) - float(in_first_mm)) / float(in_spacing)


def _neighbours(index: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per target position: the two source pixels linear interpolation reads (clamped to the outer pixel centres)
    and its fraction between them."""
    position = np.clip(index, 0.0, n_in - 1.0)
    low = np.floor(position).astype(np.int64)
    return low, np.minimum(low + 1, n_in - 1), position - low


def _beyond_edges(index: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Which target positions lie beyond the source's outer pixel edges, and the nearest source pixel of each
    (ITK's nearest-neighbour extrapolation)."""
    return (index < -0.5) | (index > n_in - 0.5), np.clip(np.floor(index + 0.5), 0, n_in - 1).astype(np.int64)


def _source_reach(index: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest source pixel each target position reads, as :func:`_resample_linear_at` reads them."""
    low, high, _ = _neighbours(index, n_in)
    beyond, nearest = _beyond_edges(index, n_in)
    return np.where(beyond, nearest, low), np.where(beyond, nearest, high)


def _resample_linear_at(
    array: np.ndarray,
    index_j: np.ndarray,
    index_i: np.ndarray,
    grid_size_ji: Sequence[int],
    *,
    window_start_ji: Sequence[int] = (0, 0),
) -> np.ndarray:
    """Linear resampling of a (k, j, i) or (k, j, i, c) array at continuous source indices, as ITK does it.

    ``index_j`` and ``index_i`` are indices of a source grid of ``grid_size_ji`` pixels, of which ``array`` holds the
    window starting at ``window_start_ji`` (the whole grid by default); the window must hold every pixel the
    indices read (:func:`_source_reach`). Clamped to the grid's outer pixel centres, and beyond its outer pixel
    edges the nearest pixel, as ITK's linear interpolator with its nearest-neighbour extrapolator.
    """
    j0, i0 = (int(v) for v in window_start_ji)
    n_j, n_i = (int(v) for v in grid_size_ji)
    values = array.astype(np.float64 if array.dtype == np.float64 else np.float32, copy=False)
    channels_first = np.moveaxis(values, -1, 1) if array.ndim == 4 else values  # j and i last
    result = _interpolate_axis(
        _interpolate_axis(channels_first, index_j, axis=-2, n_grid=n_j, start=j0),
        index_i, axis=-1, n_grid=n_i, start=i0,
    )
    outside_j, nearest_j = _beyond_edges(index_j, n_j)
    outside_i, nearest_i = _beyond_edges(index_i, n_i)
    if outside_j.any() or outside_i.any():
        rows, columns = np.nonzero(outside_j[:, None] | outside_i[None, :])
        result[..., rows, columns] = channels_first[..., nearest_j[rows] - j0, nearest_i[columns] - i0]
    if array.ndim == 4:
        result = np.moveaxis(result, 1, -1)
    return np.ascontiguousarray(result).astype(array.dtype, copy=False)


def _interpolate_axis(values: np.ndarray, index: np.ndarray, *, axis: int, n_grid: int | None = None,
                      start: int = 0) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at continuous indices, clamped to the outer pixel centres
    (as ITK's linear interpolator within the image). ``values`` may hold only the part of a grid of ``n_grid``
    pixels that starts at pixel ``start``; the indices are the whole grid's."""
    low, high, fraction = _neighbours(index, values.shape[axis] if n_grid is None else n_grid)
    shape = [1] * values.ndim
    shape[axis] = -1
    fraction = fraction.astype(values.dtype).reshape(shape)
    below, above = np.take(values, low - start, axis=axis), np.take(values, high - start, axis=axis)
    return below + fraction * (above - below)


def _crop_or_pad(array: np.ndarray, offset_ji: Sequence[int], size_ji: Sequence[int], *, fill: float) -> np.ndarray:
    """Window ``[offset, offset + size)`` of the (j, i) axes of a (k, j, i, ...) array; outside filled with ``fill``.

    With the negated offset and the original size it undoes itself (un-crop).
    """
    out = np.full((array.shape[0], *size_ji, *array.shape[3:]), fill, dtype=array.dtype)
    src, dst = [], []
    for offset, size, available in zip(offset_ji, size_ji, array.shape[1:3]):
        start, stop = max(offset, 0), min(offset + size, available)
        if stop <= start:
            return out
        src.append(slice(start, stop))
        dst.append(slice(start - offset, stop - offset))
    out[:, dst[0], dst[1]] = array[:, src[0], src[1]]
    return out


def _negated(offset_ji: Sequence[int]) -> tuple[int, int]:
    return (-int(offset_ji[0]), -int(offset_ji[1]))


def _restore_channels(array: np.ndarray, transform: PreprocessTransform, fills: np.ndarray) -> np.ndarray:
    """(c, k, cj, ci) float32 on the network grid -> (c, k, j, i) float32 on the native grid.

    Outside the crop every channel is its constant fill, so only the native pixels within one resampled pixel of the
    crop are interpolated (about a third of a cine frame); the rest is filled. The values are those of
    interpolating the whole un-cropped grid: the same source indices, weights and edge rule.
    """
    n_channels = array.shape[0]
    channels_last = np.moveaxis(array, 0, -1)  # (k, cj, ci, c)
    resampled_size = transform.resampled_shape[1:]
    if not transform.was_resampled:
        uncropped = np.empty((channels_last.shape[0], *resampled_size, n_channels), dtype=np.float32)
        for channel in range(n_channels):
            uncropped[..., channel] = _crop_or_pad(
                channels_last[..., channel], _negated(transform.crop_offset_ji), resampled_size,
                fill=float(fills[channel]),
            )
        return np.ascontiguousarray(transform.in_plane_turn.undo(np.moveaxis(uncropped, -1, 0)))
    out = np.empty((n_channels, *transform.display_shape), dtype=np.float32)
    out[...] = fills.astype(np.float32)[:, None, None, None]
    window = _restore_window(channels_last, transform, fills)
    if window is not None:
        restored, rows, columns = window
        out[:, :, rows, columns] = np.moveaxis(restored, -1, 0)
    return out if transform.in_plane_turn.is_identity else np.ascontiguousarray(transform.in_plane_turn.undo(out))


def _restore_window(
    channels_last: np.ndarray, transform: PreprocessTransform, fills: np.ndarray
) -> tuple[np.ndarray, slice, slice] | None:
    """Interpolate (k, cj, ci, c) crop values onto the native pixels that read the crop: (values, rows, columns).

    Every other native pixel is the fill of each channel. None when no native pixel reads the crop.
    """
    n_channels = channels_last.shape[-1]
    native, resampled = transform.display_geometry, transform.resampled_geometry
    # the resampled grid's first pixel, in mm of the native index frame
    shift = np.linalg.solve(
        native.direction_matrix, np.asarray(resampled.origin_lps_mm) - np.asarray(native.origin_lps_mm)
    )
    _, n_j, n_i = transform.display_shape
    resampled_size = transform.resampled_shape[1:]
    spacing_i, spacing_j = native.spacing_mm[:2]
    resampled_spacing_i, resampled_spacing_j = resampled.spacing_mm[:2]
    index_j = _source_index(n_j, 0.0, spacing_j, shift[1], resampled_spacing_j)
    index_i = _source_index(n_i, 0.0, spacing_i, shift[0], resampled_spacing_i)
    # the crop's window in the resampled grid, with the one pixel of fill that linear interpolation reaches into
    window = []
    for axis, index in ((0, index_j), (1, index_i)):
        first, size = int(transform.crop_offset_ji[axis]), int(transform.crop_size_ji[axis])
        start, stop = max(first - 1, 0), min(first + size + 1, resampled_size[axis])
        low, high = _source_reach(index, resampled_size[axis])
        touched = np.flatnonzero((high >= max(first, 0)) & (low < first + size))
        if stop <= start or touched.size == 0:
            return None
        window.append((start, stop, slice(int(touched[0]), int(touched[-1]) + 1)))
    (j_start, j_stop, rows), (i_start, i_stop, columns) = window
    patch = np.empty((channels_last.shape[0], j_stop - j_start, i_stop - i_start, n_channels), dtype=np.float32)
    offset = (j_start - transform.crop_offset_ji[0], i_start - transform.crop_offset_ji[1])
    for channel in range(n_channels):
        patch[..., channel] = _crop_or_pad(
            channels_last[..., channel], offset, patch.shape[1:3], fill=float(fills[channel])
        )
    restored = _resample_linear_at(
        patch, index_j[rows], index_i[columns], resampled_size, window_start_ji=(j_start, i_start)
    )
    return restored, rows, columns


# -- crop centre and intensities -----------------------------------------------------------------------------------


def _crop_center(
    mode: CropCenter, image: np.ndarray, geometry: Geometry, labels: np.ndarray | None
) -> tuple[float, float]:
    if mode is None:
        mode = "labels" if labels is not None else "image_center"
    if isinstance(mode, str):
        if mode == "image_center":
            return ((image.shape[1] - 1) / 2.0, (image.shape[2] - 1) / 2.0)
        if mode == "labels":
            if labels is None:
                raise InputError('crop_center="labels" needs labels; pass labels= or crop_center="image_center".')
            rows = np.flatnonzero(np.any(labels, axis=(0, 2)))
            columns = np.flatnonzero(np.any(labels, axis=(0, 1)))
            if rows.size == 0:
                raise InputError(
                    'crop_center="labels" but the labels have no foreground in any slice; '
                    'pass crop_center="image_center" (or a detector) for unlabelled stacks.'
                )
            return ((rows[0] + rows[-1]) / 2.0, (columns[0] + columns[-1]) / 2.0)
        raise InputError(f'crop_center must be "labels", "image_center", (j, i) or a callable, got {mode!r}.')
    if callable(mode):
        center = mode(Volume(image, geometry))
        what = f"The crop-centre detector {getattr(mode, '__name__', mode)!r} returned"
    else:
        center = mode
        what = "crop_center"
    try:
        values = tuple(float(v) for v in center)  # type: ignore[union-attr]
    except (TypeError, ValueError) as e:
        raise InputError(f"{what} {center!r}; expected (j, i) indices of the resampled grid.") from e
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise InputError(f"{what} {center!r}; expected two finite (j, i) indices of the resampled grid.")
    return values  # type: ignore[return-value]


def _intensity_stats(image: np.ndarray, spec: InputSpec) -> tuple[float, float]:
    if spec.normalization == "percentile":
        low, high = (float(v) for v in np.percentile(image, spec.percentiles))
        if not high - low > 1e-6 * max(abs(low), abs(high), 1e-30):
            minimum, maximum = float(image.min()), float(image.max())
            if minimum == maximum:
                raise InputError(f"The image is constant (every voxel is {minimum:g}); there is nothing to normalise.")
            raise InputError(
                f"The image's {spec.percentiles[0]:g}th and {spec.percentiles[1]:g}th percentiles are both {low:g} "
                f"(most voxels share one value; range {minimum:g}..{maximum:g}). Check the image, or use a model "
                "whose spec normalises with 'zscore'."
            )
        return (low, high)
    mean, std = float(image.mean(dtype=np.float64)), float(image.std(dtype=np.float64))
    if not std > 1e-6 * max(abs(mean), 1e-30):
        raise InputError(f"The image is constant (every voxel is {mean:g}); there is nothing to normalise.")
    return (mean, std)


def _normalise(image: np.ndarray, spec: InputSpec, stats: tuple[float, float]) -> NDArray[np.float32]:
    a, b = stats
    if spec.normalization == "percentile":
        return np.clip((image - a) / (b - a), 0.0, 1.0).astype(np.float32)
    return ((image - a) / b).astype(np.float32)


def resample_onto(volume: Volume, reference: Volume, *, default: float = math.nan) -> Volume:
    """``volume`` resampled (linear, in patient coordinates) onto the grid of the 3D ``reference``: e.g. a
    post-contrast map onto the native map of the same slices with another field of view. Points outside
    ``volume`` get ``default``; NaN voxels spread to the points they touch (a missing value stays missing)."""
    import SimpleITK as sitk

    from .io.volumes import volume_from_sitk, volume_to_sitk

    if volume.axes != "kji" or reference.axes != "kji":
        raise InputError("resample_onto takes 3D (k, j, i) volumes.")
    moving = volume_to_sitk(volume.with_array(np.asarray(volume.array, dtype=np.float64)))
    grid = volume_to_sitk(reference.with_array(np.zeros(reference.array.shape, np.float32)))
    resampled = sitk.Resample(moving, grid, sitk.Transform(), sitk.sitkLinear, float(default), sitk.sitkFloat64)
    return volume_from_sitk(resampled)
