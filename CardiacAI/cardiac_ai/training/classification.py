"""Training a 2D slice classifier (e.g. the cardiac-region classifier) with the shared :class:`Trainer`."""
from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import InputError
from ..progress import ProgressCallback
from .augmentation import AugmentationConfig, build_augmentation
from .config import TrainingConfig
from .engine import Trainer, TrainingResult
from .slices import PreparedSlices, SliceDataset

__all__ = ["accuracy_metric_fn", "train_classifier_prepared"]

log = logging.getLogger(__name__)


def accuracy_metric_fn(n_classes: int) -> Callable[[Any, Any, Any], dict[str, float]]:
    """A ``metric_fn``: accuracy, balanced accuracy (``val_balanced_accuracy``) and recall per class."""

    def compute(network, loader, device) -> dict[str, float]:
        import torch

        confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
        for batch in loader:
            predicted = torch.argmax(network(batch["image"].to(device)), dim=1).cpu().numpy()
            for truth, guess in zip(batch["label"].cpu().numpy().ravel(), predicted):
                confusion[int(truth), int(guess)] += 1
        support = confusion.sum(axis=1)
        recall = np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)
        metrics = {f"recall_{c}": float(r) for c, r in enumerate(recall)}
        metrics["val_accuracy"] = float(np.trace(confusion) / max(confusion.sum(), 1))
        metrics["val_balanced_accuracy"] = float(np.nanmean(recall))
        return metrics

    return compute


def train_classifier_prepared(
    train_slices: PreparedSlices,
    val_slices: PreparedSlices,
    *,
    train_targets: Sequence[int],
    val_targets: Sequence[int],
    n_classes: int,
    config: TrainingConfig,
    out_dir: Any,
    augmentation: AugmentationConfig | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
) -> tuple[TrainingResult, Any, dict[str, float]]:
    """Train ``config.network`` to predict one class per slice; returns (result, best network, its metrics)."""
    from ..models.networks import build_seeded_network
    from .checkpoint import load_checkpoint_weights

    train_targets = np.asarray(train_targets, dtype=np.int64)
    val_targets = np.asarray(val_targets, dtype=np.int64)
    if train_targets.shape != (len(train_slices),) or val_targets.shape != (len(val_slices),):
        raise InputError("There must be one target per slice in each of the training and validation sets.")
    if train_targets.min() < 0 or train_targets.max() >= n_classes:
        raise InputError(f"Targets must lie in 0..{n_classes - 1}, got {train_targets.min()}..{train_targets.max()}.")
    augmentation = AugmentationConfig() if augmentation is None else augmentation
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    train_set = SliceDataset(
        train_slices, augmentation=build_augmentation(augmentation, seed=config.seed),
        target_fn=lambda i: train_targets[i],
    )
    val_set = SliceDataset(val_slices, target_fn=lambda i: val_targets[i])
    trainer = Trainer(
        config, network, train_set, val_set, metric_fn=accuracy_metric_fn(n_classes), out_dir=out_dir,
        device=device, progress=progress,
    )
    result = trainer.fit(resume=resume)
    if result.best_checkpoint is None:
        raise InputError("Classifier training gave no finite validation metric; nothing to keep.")
    load_checkpoint_weights(network, result.best_checkpoint)
    best = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    metrics = {k: float(v) for k, v in best.items() if k.startswith(("recall_", "val_"))}
    return result, network, metrics
