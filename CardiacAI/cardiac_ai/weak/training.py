"""Segmentation without pixel labels: slices with image-level labels, CAM pseudo-labels, weak U-Nets.

The three steps, each usable from ``cardiacai train``, ``scripts/train_weak_acdc.py`` and the console:

1. :func:`prepare_weak_slices`: every slice of every case, cropped around the **centre of the field of view** (never
   around the labels: a weak model must not learn where the heart is from pixel labels), with the case's
   image-level label as the slice's class. Label maps, when the cases have them, come back in a separate array
   that only evaluation may read.
2. :func:`train_weak_classifier`: a slice classifier on those classes (shared :class:`~cardiac_ai.training.Trainer`).
3. :func:`compute_pseudo_labels`, then :func:`train_weak_segmentation` in one of two modes:
   ``"pseudo_label"`` (a U-Net trained with Dice + cross-entropy on the DenseCRF pseudo-labels) or ``"cam_prior"``
   (the U-Net's foreground probability is pulled towards the soft CAM prior itself: soft Dice plus binary
   cross-entropy against the prior, so it is penalised where it departs from the prior). Checkpoints are chosen
   by the loss on the validation slices' pseudo-labels or priors: no ground truth anywhere. Self-training
   (:func:`~cardiac_ai.weak.pseudo_labels.self_training_labels`) trains a second ``"pseudo_label"`` U-Net on the
   first one's own predictions.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from ..datasets.case import Case
from ..errors import InputError
from ..preprocessing import InputSpec
from ..progress import ProgressCallback, report
from ..training.augmentation import AugmentationConfig
from ..training.config import TrainingConfig
from ..training.slices import PreparedSlices, prepare_slices

__all__ = [
    "WEAK_SPEC",
    "WeakSlices",
    "prepare_weak_slices",
    "train_weak_classifier",
    "compute_pseudo_labels",
    "slice_cams",
    "scale_cams",
    "train_weak_segmentation",
    "cam_prior_loss",
    "PRIOR_LEVELS",
]

log = logging.getLogger(__name__)

#: Default grid of the weak models: 1.5 mm, 128 x 128 (192 mm) around the centre of the field of view.
WEAK_SPEC = InputSpec(in_plane_spacing_mm=(1.5, 1.5), crop_size=(128, 128))
#: A soft prior in [0, 1] is stored as uint8 0..PRIOR_LEVELS in the label array of :class:`PreparedSlices`.
PRIOR_LEVELS = 255


@dataclass(frozen=True)
class WeakSlices:
    """Slices for weak training: images without any label map, and one class per slice.

    Attributes
    ----------
    slices : PreparedSlices with ``labels`` None (nothing pixel-level can reach training through it).
    targets : (N,) int64 class index per slice (the case's image-level label).
    classes : the class names, index order.
    """

    slices: PreparedSlices
    targets: np.ndarray
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.slices)


def prepare_weak_slices(
    cases: Sequence[Case],
    *,
    label_name: str,
    classes: Sequence[str] | None = None,
    spec: InputSpec = WEAK_SPEC,
    progress: ProgressCallback | None = None,
) -> tuple[WeakSlices, np.ndarray | None]:
    """Slices cropped at the field-of-view centre with their case's image-level label; truth kept apart.

    Parameters
    ----------
    cases : cases with ``image_labels[label_name]`` (e.g. ACDC ``"group"``, or a ``labels.csv`` column).
    label_name : which image-level label is the class.
    classes : class names in index order; default: the sorted distinct values found.
    spec : grid and crop (the crop is always centred on the image, whatever ``spec`` says about it).

    Returns
    -------
    (WeakSlices, truth)
        ``truth`` is the (N, cj, ci) uint8 label maps on the same crop when every case has one (for evaluation
        only), else None.
    """
    cases = list(cases)
    if not cases:
        raise InputError("prepare_weak_slices got no cases.")
    missing = [c.case_id for c in cases if label_name not in c.image_labels]
    if missing:
        raise InputError(
            f"{len(missing)} case(s) have no image-level label {label_name!r} (e.g. {missing[0]}); "
            f"add a {label_name!r} column to labels.csv or choose another label."
        )
    values = [str(c.image_labels[label_name]) for c in cases]
    classes = tuple(sorted(set(values))) if classes is None else tuple(str(c) for c in classes)
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise InputError(f"Image-level labels {unknown} are not among the classes {list(classes)}.")
    if len(classes) < 2:
        raise InputError(f"A classifier needs at least two classes of {label_name!r}; found only {list(classes)}.")
    prepared = prepare_slices(cases, spec, crop_center="image_center", require_labels=False, progress=progress)
    all_labelled = all(c.labels is not None for c in cases)
    truth = prepared.labels if all_labelled else None
    slice_counts = {c.case_id: int(np.sum(prepared.case_ids == c.case_id)) for c in cases}
    targets = np.concatenate([
        np.full(slice_counts[c.case_id], classes.index(v), np.int64) for c, v in zip(cases, values)
    ])
    label_free = PreparedSlices(
        prepared.images, None, prepared.case_ids, prepared.slice_indices,
        np.full(len(prepared), np.nan, np.float32), np.zeros(len(prepared), np.int8), spec,
    )
    return WeakSlices(label_free, targets, classes), truth


def train_weak_classifier(
    train: WeakSlices,
    val: WeakSlices,
    *,
    config: TrainingConfig,
    out_dir: str | Path,
    augmentation: AugmentationConfig | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
):
    """Train ``config.network`` to predict each slice's image-level class; returns (result, network, metrics)."""
    from ..training.classification import train_classifier_prepared

    if train.classes != val.classes:
        raise InputError(f"Training classes {train.classes} differ from validation classes {val.classes}.")
    return train_classifier_prepared(
        train.slices, val.slices, train_targets=train.targets, val_targets=val.targets,
        n_classes=len(train.classes), config=config, out_dir=out_dir, augmentation=augmentation, device=device,
        progress=progress, resume=resume,
    )


def slice_cams(
    classifier: Any,
    images: np.ndarray,
    *,
    method: str = "model",
    target_layer: str | None = None,
    fc_layer: str | None = None,
    class_index: Sequence[int] | None = None,
    augment: Sequence[str] = (),
    device: str | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Raw CAMs (n, j, i) of (n, j, i) single-channel slices: ``method`` "model" (the network's own CAM head,
    :func:`~cardiac_ai.weak.cam.model_cam`) or a MONAI method of :data:`~cardiac_ai.weak.cam.CAM_METHODS`."""
    from .cam import class_activation_maps, model_cam

    batch = np.asarray(images, np.float32)[:, np.newaxis]
    if method == "model":
        return model_cam(classifier, batch, class_index=class_index, augment=augment, device=device,
                         batch_size=batch_size)
    if target_layer is None:
        raise InputError(f"CAM method {method!r} needs target_layer (e.g. 'attention' for cam_classifier_2d).")
    return class_activation_maps(classifier, batch, method=method, target_layer=target_layer, fc_layer=fc_layer,
                                 class_index=class_index, augment=augment, device=device, batch_size=batch_size)


def scale_cams(cams: np.ndarray) -> np.ndarray:
    """Positive part of each CAM divided by its own maximum: (n, j, i) float32 in [0, 1], zero maps stay zero."""
    positive = np.clip(np.asarray(cams, np.float32), 0.0, None)
    peak = positive.reshape(len(positive), -1).max(axis=1)
    return (positive / np.where(peak > 0, peak, 1.0)[:, None, None]).astype(np.float32)


def compute_pseudo_labels(
    classifier: Any,
    weak: WeakSlices,
    *,
    method: str = "model",
    target_layer: str | None = None,
    fc_layer: str | None = None,
    class_source: Literal["label", "predicted"] = "label",
    augment: Sequence[str] = (),
    config: Any = None,
    device: str | None = None,
    batch_size: int = 32,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """CAMs and DenseCRF pseudo-labels of every slice.

    ``class_source="label"`` explains each slice's own image-level class (training data: the weak label is known);
    ``"predicted"`` explains the classifier's prediction (new data). Returns (cams (N, cj, ci) float32 in [0, 1]
    (:func:`scale_cams`), pseudo-labels (N, cj, ci) uint8 0/1).
    """
    from .pseudo_labels import PseudoLabelConfig, pseudo_labels

    class_index = weak.targets.tolist() if class_source == "label" else None
    cams = np.empty(weak.slices.images.shape, np.float32)
    n = len(cams)
    for start in range(0, n, batch_size):
        report(progress, 0.8 * start / n, f"Class activation maps {start}/{n}")
        stop = min(start + batch_size, n)
        cams[start:stop] = slice_cams(
            classifier, weak.slices.images[start:stop], method=method, target_layer=target_layer, fc_layer=fc_layer,
            class_index=None if class_index is None else class_index[start:stop], augment=augment, device=device,
            batch_size=batch_size,
        )
    report(progress, 0.8, "Pseudo-labels (multi-Otsu, DenseCRF)")
    config = PseudoLabelConfig() if config is None else config
    masks = pseudo_labels(cams, weak.slices.images, np.ones(n, bool), config=config)
    report(progress, 1.0, "Pseudo-labels done")
    return scale_cams(cams), np.asarray(masks, np.uint8)


def cam_prior_loss(logits, label, *, bce_weight: float = 1.0):
    """Soft Dice + BCE between the foreground probability (softmax channel 1) and the soft CAM prior.

    ``label`` holds the prior quantised to 0..:data:`PRIOR_LEVELS` (how it travels through the slice dataset).
    """
    import torch

    prior = label.to(logits.dtype).reshape(logits.shape[0], *logits.shape[2:]) / PRIOR_LEVELS
    foreground = torch.softmax(logits, dim=1)[:, 1]
    dims = tuple(range(1, foreground.ndim))
    intersection = (foreground * prior).sum(dims)
    soft_dice = 1.0 - (2.0 * intersection + 1.0) / (foreground.sum(dims) + prior.sum(dims) + 1.0)
    bce = torch.nn.functional.binary_cross_entropy(foreground.clamp(1e-6, 1 - 1e-6), prior)
    return soft_dice.mean() + bce_weight * bce


def _with_labels(slices: PreparedSlices, labels: np.ndarray) -> PreparedSlices:
    return PreparedSlices(slices.images, labels.astype(np.uint8), slices.case_ids, slices.slice_indices,
                          slices.positions, slices.regions, slices.spec)


def train_weak_segmentation(
    train: WeakSlices,
    train_cams: np.ndarray | None,
    train_masks: np.ndarray,
    val: WeakSlices,
    val_cams: np.ndarray | None,
    val_masks: np.ndarray,
    *,
    mode: Literal["pseudo_label", "cam_prior"],
    config: TrainingConfig,
    out_dir: str | Path,
    augmentation: AugmentationConfig | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
):
    """Train a two-class (background, heart) U-Net from pseudo-labels or from the CAM prior; no pixel label.

    Returns (result, network with the best weights, metrics); the best epoch is the lowest loss on the validation
    slices' own pseudo-labels (mode ``pseudo_label``) or priors (``cam_prior``). Mode ``pseudo_label`` reads only the
    masks (the CAMs may be None); ``cam_prior`` reads only the CAMs.
    """
    from ..models.networks import build_seeded_network
    from ..training.augmentation import build_augmentation
    from ..training.checkpoint import load_checkpoint_weights
    from ..training.engine import Trainer, build_loss
    from ..training.slices import SliceDataset

    if mode not in ("pseudo_label", "cam_prior"):
        raise InputError(f"mode must be 'pseudo_label' or 'cam_prior', got {mode!r}.")
    used = (("train_masks", train_masks, train), ("val_masks", val_masks, val)) if mode == "pseudo_label" else (
        ("train_cams", train_cams, train), ("val_cams", val_cams, val))
    for name, array, weak in used:
        if array is None:
            raise InputError(f"Mode {mode!r} needs {name}.")
        if np.shape(array) != weak.slices.images.shape:
            raise InputError(f"{name} has shape {np.shape(array)}; expected {weak.slices.images.shape}.")
    if mode == "pseudo_label":
        train_labels, val_labels = np.asarray(train_masks) > 0, np.asarray(val_masks) > 0
        loss_fn = build_loss(config.loss)
    else:
        to_levels = lambda cams: np.rint(np.clip(cams, 0.0, 1.0) * PRIOR_LEVELS)  # noqa: E731
        train_labels, val_labels = to_levels(train_cams), to_levels(val_cams)
        loss_fn = cam_prior_loss
    augmentation = AugmentationConfig() if augmentation is None else augmentation
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    train_set = SliceDataset(_with_labels(train.slices, train_labels),
                             augmentation=build_augmentation(augmentation, seed=config.seed))
    val_set = SliceDataset(_with_labels(val.slices, val_labels))
    trainer = Trainer(config, network, train_set, val_set, out_dir=out_dir, device=device, progress=progress,
                      loss_fn=loss_fn)
    result = trainer.fit(resume=resume)
    if result.best_checkpoint is None:
        raise InputError("Weak segmentation training gave no finite validation loss; nothing to keep.")
    load_checkpoint_weights(network, result.best_checkpoint)
    best = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    return result, network, {k: float(v) for k, v in best.items() if k.startswith("val_")}

