"""Class activation maps (CAMs) of a trained classifier, on the input pixel grid.

Two sources of CAMs, one output convention (``(n, j, i)`` float32, on the input grid):

* :func:`class_activation_maps` / :func:`cam_for_class`: any classifier returning ``(batch, classes)`` logits, through
  MONAI's ``CAM`` (class weights of the last linear layer applied at every position; needs ``fc_layer``),
  ``GradCAM`` or ``GradCAMpp`` (gradient-weighted feature maps of ``target_layer``). Used for the ACDC diagnosis
  classifier (any ``resnet*_2d`` / ``tiny_cnn2d`` network of the registry).
* :func:`model_cam`: a network whose ``forward_with_cam(x)`` returns ``(logits, cam)`` itself, such as
  :class:`cardiac_ai.models.weak_networks.FibrosisCAMClassifier` (slice or stack level).

Normalisation
-------------
MONAI's default post-processing (``default_normalizer``) maps each image's minimum to 1 and maximum to 0, which
flips magnitudes and throws away the scale. It is *not* used. With ``normalise=False`` (the default) the maps are raw:
Grad-CAM and Grad-CAM++ are already ReLU'd by MONAI (non-negative); ``"cam"`` and :func:`model_cam` keep their sign
(the class score at each position, whose average is the logit), because the pseudo-label step
(:mod:`cardiac_ai.weak.pseudo_labels`) takes the positive part itself. With ``normalise=True`` every map is ReLU'd and
divided by its own maximum, so it lies in [0, 1] with 0 kept at 0; an all-zero map stays zero.

The model is never changed: CAMs are computed on a deep copy (moved to ``device``, float32, eval mode), so the
caller's model keeps its train/eval mode, gains no hooks and accumulates no gradients. The copy costs the model's
memory once per call.
"""
from __future__ import annotations

import copy
import difflib
import logging
import time
from typing import TYPE_CHECKING, Callable, Literal, Sequence

import numpy as np
from numpy.typing import NDArray

from ..device import resolve_device
from ..errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["CAM_METHODS", "AUGMENTATIONS", "class_activation_maps", "cam_for_class", "model_cam"]

log = logging.getLogger(__name__)

CAM_METHODS = ("gradcam", "gradcampp", "cam")
"""``method`` values of :func:`class_activation_maps`: MONAI ``GradCAM``, ``GradCAMpp`` and ``CAM``."""

AUGMENTATIONS = ("hflip", "vflip", "shift")
"""Test-time augmentations: flip along ``i`` (columns), flip along ``j`` (rows), circular shift by 1/16 of each side.

Each one's CAM is mapped back to the original grid (the transform undone) and averaged with the plain CAM."""


# --------------------------------------------------------------------------------------------------- validation


def _check_images(images: object, *, ndims: tuple[int, ...], function: str) -> NDArray[np.float32]:
    layouts = {4: "(n, channels, j, i)", 5: "(n, channels, j, i, k)"}
    expected = " or ".join(layouts[d] for d in ndims)
    if not isinstance(images, np.ndarray):
        raise InputError(f"{function}: images must be a numpy array {expected}, got {type(images).__name__}.")
    if images.ndim not in ndims:
        raise InputError(
            f"{function}: images must be {expected}, got shape {images.shape}. Add the batch and channel axes, e.g. "
            "images[:, None] for a stack of single-channel slices."
        )
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(
            f"{function}: images must be float (normalised as the model was trained), got dtype {images.dtype}."
        )
    if images.shape[0] == 0 or min(images.shape[1:]) < 1:
        raise InputError(f"{function}: images {images.shape} is empty.")
    n_bad = int(np.size(images) - np.count_nonzero(np.isfinite(images)))
    if n_bad:
        raise InputError(f"{function}: images contain {n_bad} NaN or infinite values; fill or mask them first.")
    return np.ascontiguousarray(images, dtype=np.float32)


def _check_layer(model: "nn.Module", name: str, argument: str) -> None:
    names = [n for n, _ in model.named_modules() if n]
    if name in names:
        return
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.4)
    hint = f"close names: {close}" if close else f"its layers include {names[:10]}"
    raise InputError(
        f"{argument}={name!r} is not a layer of {type(model).__name__}; {hint}. "
        "List them all with [n for n, _ in model.named_modules()]."
    )


def _check_options(augment: Sequence[str], batch_size: int) -> tuple[str, ...]:
    if isinstance(augment, str):
        augment = (augment,)
    augment = tuple(augment)
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown:
        raise InputError(f"Unknown augment {unknown}; choose from {AUGMENTATIONS}.")
    if len(set(augment)) != len(augment):
        raise InputError(f"augment {augment} lists an augmentation twice.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return augment


def _resolve_classes(
    class_index: int | Sequence[int] | None, predicted: NDArray[np.int64], n_classes: int
) -> NDArray[np.int64]:
    n = predicted.shape[0]
    if class_index is None:
        return predicted
    if isinstance(class_index, (int, np.integer)) and not isinstance(class_index, bool):
        classes = np.full(n, int(class_index), dtype=np.int64)
    else:
        classes = np.asarray(class_index)
        if classes.shape != (n,) or not np.issubdtype(classes.dtype, np.integer):
            raise InputError(
                f"class_index must be None, an int, or one int per image ({n}), got {class_index!r}."
            )
        classes = classes.astype(np.int64)
    if classes.min() < 0 or classes.max() >= n_classes:
        raise InputError(
            f"class_index {sorted(set(classes.tolist()))} outside 0..{n_classes - 1}: the model returns "
            f"{n_classes} logits (a single-logit binary model has only class 0)."
        )
    return classes


# --------------------------------------------------------------------------------------------------- helpers


def _check_model(model: object) -> None:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}.")


def _working_copy(model: "nn.Module", device: str | None) -> tuple["nn.Module", "torch.device"]:
    """A float32, eval-mode deep copy on ``device``; parameters never require grad (inputs do, for Grad-CAM)."""
    target = resolve_device(device)
    work = copy.deepcopy(model).to(target).float().eval()
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    return work, target


def _probabilities(logits: "torch.Tensor") -> "torch.Tensor":
    import torch

    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def _predict(
    work: "nn.Module", images: NDArray[np.float32], device: "torch.device", batch_size: int, function: str
) -> NDArray[np.float32]:
    """Logits (n, classes) of the un-augmented images."""
    import torch

    outputs = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            logits = work(torch.from_numpy(images[start : start + batch_size]).to(device))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
                raise InputError(
                    f"{function}: the model must return (batch, classes) logits, got {shape}. Segmentation networks "
                    "have no class activation map."
                )
            outputs.append(logits.float().cpu().numpy())
    return np.concatenate(outputs, axis=0)


def _shift(size: int) -> int:
    return max(1, round(size / 16))


def _augment(x: "torch.Tensor", name: str, *, undo: bool) -> "torch.Tensor":
    """Apply (or undo) one augmentation on the ``j`` (axis 2) and ``i`` (axis 3) axes of (n, c, j, i[, k])."""
    import torch

    if name == "hflip":
        return torch.flip(x, dims=(3,))
    if name == "vflip":
        return torch.flip(x, dims=(2,))
    sign = -1 if undo else 1
    return torch.roll(x, shifts=(sign * _shift(x.shape[2]), sign * _shift(x.shape[3])), dims=(2, 3))


def _averaged_over_views(
    images: NDArray[np.float32],
    augment: tuple[str, ...],
    compute: Callable[["torch.Tensor", slice], "torch.Tensor"],
    device: "torch.device",
    batch_size: int,
) -> NDArray[np.float32]:
    """Mean over the plain view and each augmentation of ``compute(x, batch_slice)`` -> (b, 1, *spatial) CAMs."""
    import torch

    total = np.zeros((images.shape[0], *images.shape[2:]), dtype=np.float64)
    for view in (None, *augment):
        for start in range(0, images.shape[0], batch_size):
            rows = slice(start, min(start + batch_size, images.shape[0]))
            x = torch.from_numpy(images[rows]).to(device)
            if view is not None:
                x = _augment(x, view, undo=False)
            cam = compute(x, rows).detach()
            if view is not None:
                cam = _augment(cam, view, undo=True)
            total[rows] += cam[:, 0].float().cpu().numpy()
    return (total / (1 + len(augment))).astype(np.float32)


def _finish(cams: NDArray[np.float32], normalise: bool) -> NDArray[np.float32]:
    if not normalise:
        return cams
    positive = np.maximum(cams, 0.0)
    peak = positive.reshape(positive.shape[0], -1).max(axis=1)
    scale = np.where(peak > 0, peak, 1.0).reshape((-1,) + (1,) * (cams.ndim - 1))
    return (positive / scale).astype(np.float32)


def _monai_cam(work: "nn.Module", method: str, target_layer: str, fc_layer: str | None):
    """A MONAI CAM object on ``work`` whose class score is taken per image (see :func:`_per_image_hooks`)."""
    from monai.visualize import CAM, GradCAM, GradCAMpp

    hooks = _per_image_hooks(work, target_layer, backward=method != "cam")

    def keep(x):  # MONAI's default_normalizer would flip and rescale each map; see the module docstring
        return x

    if method == "cam":
        return CAM(nn_module=hooks, target_layers=target_layer, fc_layers=fc_layer, postprocessing=keep)
    factory = GradCAM if method == "gradcam" else GradCAMpp
    return factory(nn_module=hooks, target_layers=target_layer, postprocessing=keep)


def _per_image_hooks(work: "nn.Module", target_layer: str, *, backward: bool):
    """MONAI ``ModelWithHooks`` whose class score takes each image's own class.

    MONAI's ``class_score`` is ``logits[:, class_idx]``: with one class index per image that is an (n, n) matrix, and
    the summed score would mix the gradients of every image's class into every image. ``gather`` picks one logit per
    image instead.
    """
    import torch
    from monai.visualize.class_activation_maps import ModelWithHooks

    class _PerImageHooks(ModelWithHooks):
        def class_score(self, logits: torch.Tensor, class_idx) -> torch.Tensor:
            index = torch.as_tensor(class_idx, device=logits.device, dtype=torch.long).reshape(-1, 1)
            return logits.gather(1, index.expand(logits.shape[0], 1)).squeeze(1)

    return _PerImageHooks(work, target_layer, register_forward=True, register_backward=backward)


# --------------------------------------------------------------------------------------------------- public API


def cam_for_class(
    model: "nn.Module",
    images: NDArray[np.floating],
    *,
    target_layer: str,
    method: Literal["gradcam", "gradcampp", "cam"] = "gradcam",
    class_index: int | Sequence[int] | None = None,
    fc_layer: str | None = None,
    augment: Sequence[str] = (),
    normalise: bool = False,
    device: str | None = None,
    batch_size: int = 16,
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Class activation maps of a classifier, with the class probabilities it predicts.

    Parameters
    ----------
    model : torch.nn.Module
        A classifier whose ``forward`` returns logits ``(batch, classes)``; not modified (see the module docstring).
    images : (n, channels, j, i) float ndarray
        Inputs, pre-processed exactly as for the model (same normalisation, crop and channels); all finite.
    target_layer : str
        Name in ``model.named_modules()`` of the layer whose output feature map is weighted (e.g. ``"layer4"`` for
        MONAI ResNets, ``"attention"`` for the fibrosis classifier, ``"3"`` for ``tiny_cnn2d``). For ``"cam"`` it must
        be the feature map right before global pooling.
    method : {"gradcam", "gradcampp", "cam"}
        MONAI ``GradCAM``, ``GradCAMpp`` or ``CAM``. Grad-CAM++ is computed one image at a time (MONAI broadcasts its
        class score wrongly over a batch).
    class_index : int, sequence of n int, or None
        Class whose map is computed, for all images or one per image; None takes each image's predicted class
        (argmax of the logits; class 0 for a single-logit binary model). With augmentation the class is fixed on the
        plain image and kept for every view.
    fc_layer : str, optional
        Name of the last linear layer (``"fc"`` for MONAI ResNets, ``"6"`` for ``tiny_cnn2d``); required by ``"cam"``,
        ignored otherwise.
    augment : sequence of {"hflip", "vflip", "shift"}
        Test-time augmentations (see :data:`AUGMENTATIONS`); their maps, transformed back, are averaged with the map
        of the plain image. ``"shift"`` rolls the image circularly by ``round(side / 16)`` pixels (at least 1) along
        ``j`` and ``i``, so content leaving one edge enters the opposite one.
    normalise : bool
        False: raw maps (non-negative for Grad-CAM and Grad-CAM++, signed for ``"cam"``). True: ReLU, then each map
        divided by its maximum (range [0, 1]).
    device : {"auto", "cpu", "cuda", None}
        Where to compute; None or ``"auto"`` is CUDA when available.
    batch_size : int
        Images per forward/backward pass.

    Returns
    -------
    cams : (n, j, i) float32 ndarray
        One map per image on the input grid (MONAI upsamples the feature map bilinearly).
    probabilities : (n, classes) float32 ndarray
        Softmax of the plain images' logits (sigmoid for a single-logit model).

    Raises
    ------
    InputError
        For images that are not a finite float (n, c, j, i) array, an unknown method or augmentation, a layer name
        the model lacks (the message lists close names), a missing ``fc_layer`` for ``"cam"``, a class index out of
        range, or a model that does not return (batch, classes) logits.
    """
    started = time.perf_counter()
    function = "cam_for_class"
    images = _check_images(images, ndims=(4,), function=function)
    if method not in CAM_METHODS:
        raise InputError(f"Unknown CAM method {method!r}; choose from {CAM_METHODS}.")
    augment = _check_options(augment, batch_size)
    _check_model(model)
    _check_layer(model, target_layer, "target_layer")
    if method == "cam":
        if fc_layer is None:
            raise InputError(
                "method='cam' needs fc_layer, the name of the linear layer after global pooling (e.g. 'fc' for MONAI "
                "ResNets); or use method='gradcam', which needs only target_layer."
            )
        _check_layer(model, fc_layer, "fc_layer")
    work, target = _working_copy(model, device)

    import torch

    logits = _predict(work, images, target, batch_size, function)
    probabilities = _probabilities(torch.from_numpy(logits)).numpy().astype(np.float32)
    classes = _resolve_classes(class_index, logits.argmax(axis=1).astype(np.int64), logits.shape[1])
    monai_cam = _monai_cam(work, method, target_layer, fc_layer)

    def gradient_input(x: torch.Tensor) -> torch.Tensor:  # parameters are frozen: gradients flow from the input
        return x.detach().clone().requires_grad_(True)

    def compute(x: torch.Tensor, rows: slice) -> torch.Tensor:
        index = torch.from_numpy(classes[rows]).to(x.device)
        if method == "cam":
            with torch.no_grad():
                return monai_cam(x=x, class_idx=index)
        if method == "gradcampp":  # one image at a time, see the docstring
            return torch.cat(
                [monai_cam(x=gradient_input(x[i : i + 1]), class_idx=index[i : i + 1]) for i in range(len(x))]
            )
        return monai_cam(x=gradient_input(x), class_idx=index)

    cams = _averaged_over_views(images, augment, compute, target, batch_size)
    log.debug(
        "%s CAMs of %d images (augment %s) on %s in %.2f s", method, images.shape[0], augment or "none", target,
        time.perf_counter() - started,
    )
    return _finish(cams, normalise), probabilities


def class_activation_maps(
    model: "nn.Module",
    images: NDArray[np.floating],
    *,
    target_layer: str,
    method: Literal["gradcam", "gradcampp", "cam"] = "gradcam",
    class_index: int | Sequence[int] | None = None,
    fc_layer: str | None = None,
    augment: Sequence[str] = (),
    normalise: bool = False,
    device: str | None = None,
    batch_size: int = 16,
) -> NDArray[np.float32]:
    """Class activation maps ``(n, j, i)`` float32 on the input grid; :func:`cam_for_class` without probabilities.

    See :func:`cam_for_class` for every parameter and the errors raised.
    """
    cams, _ = cam_for_class(
        model, images, target_layer=target_layer, method=method, class_index=class_index, fc_layer=fc_layer,
        augment=augment, normalise=normalise, device=device, batch_size=batch_size,
    )
    return cams


def model_cam(
    model: "nn.Module",
    images: NDArray[np.floating],
    *,
    class_index: int | Sequence[int] | None = None,
    augment: Sequence[str] = (),
    normalise: bool = False,
    device: str | None = None,
    batch_size: int = 16,
) -> NDArray[np.float32]:
    """The CAM a network computes itself (``forward_with_cam``), upsampled to the input grid.

    Parameters
    ----------
    model : torch.nn.Module
        Has ``forward_with_cam(x) -> (logits (batch, classes), cam (batch, classes, *reduced_spatial))``, e.g.
        :class:`~cardiac_ai.models.weak_networks.FibrosisCAMClassifier`; not modified.
    images : (n, channels, j, i) or (n, channels, j, i, k) float ndarray
        Inputs as the model takes them (for the fibrosis classifier: LGE image and myocardium mask channels; the
        stack model has the slice axis last).
    class_index : int, sequence of n int, or None
        CAM channel to return, for all images or one per image; None: the predicted class (argmax of the logits;
        always 0 for a single-logit binary model).
    augment : sequence of {"hflip", "vflip", "shift"}
        As in :func:`cam_for_class`; applied to the ``j`` and ``i`` axes (never along slices).
    normalise : bool
        False: the raw, signed CAM (its myocardium-weighted mean is the logit). True: ReLU, divided by each map's
        maximum.
    device : {"auto", "cpu", "cuda", None}
        Where to compute.
    batch_size : int
        Images (or stacks) per forward pass.

    Returns
    -------
    (n, j, i) or (n, j, i, k) float32 ndarray
        The CAM, upsampled bilinearly (in-plane; along ``k`` the size is unchanged) to the input grid with
        ``align_corners=False``.

    Raises
    ------
    InputError
        For images that are not finite float arrays of the right rank, a model without ``forward_with_cam``, an
        unknown augmentation or a class index out of range.
    """
    import torch
    import torch.nn.functional as F

    function = "model_cam"
    images = _check_images(images, ndims=(4, 5), function=function)
    augment = _check_options(augment, batch_size)
    _check_model(model)
    if not callable(getattr(model, "forward_with_cam", None)):
        raise InputError(
            f"model_cam needs a model with forward_with_cam(x) -> (logits, cam); {type(model).__name__} has none. "
            "For an ordinary classifier use class_activation_maps(model, images, target_layer=...)."
        )
    work, target = _working_copy(model, device)
    logits = _predict(work, images, target, batch_size, function)
    classes = _resolve_classes(class_index, logits.argmax(axis=1).astype(np.int64), logits.shape[1])
    mode = "bilinear" if images.ndim == 4 else "trilinear"

    def compute(x: torch.Tensor, rows: slice) -> torch.Tensor:
        with torch.no_grad():
            _, cam = work.forward_with_cam(x)
            cam = F.interpolate(cam.float(), size=tuple(x.shape[2:]), mode=mode, align_corners=False)
            index = torch.from_numpy(classes[rows]).to(cam.device).reshape(-1, 1, *([1] * (cam.ndim - 2)))
            return cam.gather(1, index.expand(-1, 1, *cam.shape[2:]))

    cams = _averaged_over_views(images, augment, compute, target, batch_size)
    return _finish(cams, normalise)
