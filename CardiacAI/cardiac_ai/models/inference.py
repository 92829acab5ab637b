"""Batched (optionally sliding-window) 2D inference over a stack of slices, surviving CUDA out-of-memory."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
from numpy.typing import NDArray

from ..device import place_for_inference, resolve_device, run_batched_with_fallback
from ..errors import InputError
from ..geometry import Volume
from ..provenance import Provenance

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..preprocessing import CropCenter
    from .registry import LoadedModel

__all__ = ["predict_slices", "segment_stack", "StackSegmentation"]

log = logging.getLogger(__name__)

_ACTIVATIONS = ("none", "softmax", "sigmoid")


def predict_slices(
    network: "nn.Module",
    images: NDArray[np.float32],
    *,
    device: "str | torch.device | None" = None,
    batch_size: int = 16,
    activation: Literal["none", "softmax", "sigmoid"] = "none",
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    provenance: Provenance | None = None,
) -> NDArray[np.float32]:
    """Run a 2D network over every slice of a stack, a batch at a time.

    Parameters
    ----------
    network : torch.nn.Module
        Returns logits ``(batch, classes, j, i)`` (segmentation) or ``(batch, classes)`` (classification). It is put
        in eval mode and moved to the device that runs.
    images : (k, c, j, i) float32 ndarray
        Preprocessed slices (normalised, resampled, cropped as the model's input spec says).
    device : str or torch.device, optional
        None or ``"auto"``: CUDA when available. On CUDA out-of-memory the batch is halved, then the CPU takes over;
        each fallback is logged at WARNING and added to ``provenance.warnings``.
    batch_size : int
        Slices per forward pass (at least 1).
    activation : {"none", "softmax", "sigmoid"}
        Applied over the class axis (axis 1) before returning.
    roi_size : (j, i) ints, optional
        When given, each slice is processed with MONAI ``sliding_window_inference`` in windows of this size
        (``overlap`` fraction between windows, Gaussian blending); for segmentation networks only.
    overlap : float
        Window overlap in [0, 1) when ``roi_size`` is given.
    provenance : Provenance, optional
        Receives fallback warnings and the device that finished (``provenance.device``).

    Returns
    -------
    (k, classes, j, i) or (k, classes) float32 ndarray
        Logits, or probabilities when ``activation`` is not ``"none"``.

    Raises
    ------
    InputError
        If ``images`` is not a finite 4D float array with at least one slice, or an option is invalid.
    """
    import torch

    images = np.asarray(images)
    if images.ndim != 4 or images.shape[0] == 0:
        raise InputError(
            f"predict_slices needs images shaped (k, c, j, i) with k >= 1, got shape {images.shape}. "
            "Add a channel axis with images[:, None] for single-channel slices."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"predict_slices needs float images, got dtype {images.dtype}; normalise them first.")
    if not np.isfinite(images).all():
        raise InputError("predict_slices got NaN or infinite pixel values; fill or mask them before inference.")
    if activation not in _ACTIVATIONS:
        raise InputError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
    if roi_size is not None and (len(roi_size) != 2 or min(roi_size) < 1):
        raise InputError(f"roi_size must be two positive ints (j, i), got {roi_size!r}.")
    if not 0.0 <= overlap < 1.0:
        raise InputError(f"overlap must be in [0, 1), got {overlap}.")

    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    stack = images.astype(np.float32, copy=False)

    def run_batch(indices: Sequence[int], run_device: "torch.device") -> list[np.ndarray]:
        place_for_inference(network, run_device)
        batch = torch.from_numpy(np.ascontiguousarray(stack[list(indices)])).to(run_device)
        with torch.inference_mode():
            if roi_size is None:
                out = network(batch)
            else:
                from monai.inferers import sliding_window_inference

                out = sliding_window_inference(
                    batch, tuple(roi_size), sw_batch_size=len(indices), predictor=network, overlap=overlap,
                    mode="gaussian",
                )
            if activation == "softmax":
                out = torch.softmax(out.float(), dim=1)
            elif activation == "sigmoid":
                out = torch.sigmoid(out.float())
        return list(out.float().cpu().numpy())

    results, finished_on = run_batched_with_fallback(
        list(range(stack.shape[0])), run_batch, device=torch_device, batch_size=batch_size, provenance=provenance
    )
    if provenance is not None:
        provenance.device = str(finished_on)
    return np.stack(results).astype(np.float32, copy=False)


@dataclass(frozen=True)
class StackSegmentation:
    """Labels and class probabilities of a 2D model over a stack, on the input's own grid and geometry."""

    labels: Volume  # (k, j, i) uint8, codes = output channels
    probabilities: NDArray[np.float32]  # (classes, k, j, i)


def segment_stack(
    model: LoadedModel,
    volume: Volume,
    *,
    crop_center: CropCenter = "image_center",
    device: "str | torch.device | None" = None,
    batch_size: int = 16,
    provenance: Provenance | None = None,
    base_first: bool = True,
) -> StackSegmentation:
    """Preprocess ``volume`` as the model card says, segment every slice, and map the result back to the input grid.

    The same :func:`~cardiac_ai.preprocessing.preprocess` as in training; the inverse is exact in geometry.
    ``base_first`` (the base at low k) orders the neighbouring slices a 2.5D model sees (``slice_context``).
    """
    from ..preprocessing import InputSpec, network_input, preprocess, restore_probabilities

    spec = InputSpec.from_dict(model.card.input_spec)
    prepared = preprocess(volume, spec, crop_center=crop_center)
    probabilities = predict_slices(
        model.network, network_input(prepared.image, spec, base_first=base_first), device=device, batch_size=batch_size,
        activation="softmax", provenance=provenance,
    )  # (k, classes, cj, ci)
    native = restore_probabilities(np.moveaxis(probabilities, 1, 0), prepared.transform)
    labels = np.argmax(native, axis=0).astype(np.uint8)
    return StackSegmentation(Volume(labels, volume.geometry), native)
