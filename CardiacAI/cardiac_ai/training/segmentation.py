"""Training a 2D slice segmentation model end to end: cases in, registered model out.

This is the few-lines API every capability uses::

    from cardiac_ai.datasets import list_acdc, load_case, default_acdc_split, refs_in_part
    from cardiac_ai.training import TrainingConfig
    from cardiac_ai.training.segmentation import train_segmentation

    refs = list_acdc("../shared/data/acdc/training")
    split = default_acdc_split(refs)
    train = [load_case(r) for r in refs_in_part(refs, split, "train")]
    val = [load_case(r) for r in refs_in_part(refs, split, "validation")]
    config = TrainingConfig(network="unet2d", network_kwargs={"out_channels": 4}, input_spec=InputSpec().to_dict(),
                            epochs=100, metric_name="val_dice", metric_mode="max")
    result = train_segmentation(train, val, config=config, out_dir="runs/cine", model_name="cine_unet2d",
                                model_version="1.0", models_dir="Resources/Models")
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..datasets.case import Case
from ..errors import InputError, OutputError
from ..labels import LABELS
from ..preprocessing import CropCenter, InputSpec
from ..progress import ProgressCallback, subrange
from ..models.registry import check_models_folder, register_models
from .augmentation import AugmentationConfig, build_augmentation
from .config import TrainingConfig
from .engine import Trainer, TrainingResult
from .slices import PreparedSlices, SliceDataset, prepare_slices

__all__ = ["SegmentationTrainingResult", "train_segmentation", "dice_metric_fn", "train_segmentation_prepared",
           "check_network_takes_crop"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationTrainingResult:
    training: TrainingResult
    card_path: Path | None  # the registered model card, when models_dir was given
    validation_metrics: dict[str, float]


def dice_metric_fn(label_codes: Sequence[int]) -> Callable[[Any, Any, Any], dict[str, float]]:
    """A ``metric_fn`` for :class:`Trainer`: Dice per label over all validation pixels, and their mean (``val_dice``)."""

    def compute(network, loader, device) -> dict[str, float]:
        import torch

        intersections = np.zeros(len(label_codes))
        totals = np.zeros(len(label_codes))
        for batch in loader:
            logits = network(batch["image"].to(device))
            predicted = torch.argmax(logits, dim=1).cpu().numpy()
            truth = batch["label"].cpu().numpy().reshape(predicted.shape)
            for n, code in enumerate(label_codes):
                p, t = predicted == code, truth == code
                intersections[n] += np.logical_and(p, t).sum()
                totals[n] += p.sum() + t.sum()
        dices = np.where(totals > 0, 2 * intersections / np.maximum(totals, 1), np.nan)
        metrics = {f"dice_{LABELS[c].name if c in LABELS else c}": float(d) for c, d in zip(label_codes, dices)}
        metrics["val_dice"] = float(np.nanmean(dices)) if np.any(np.isfinite(dices)) else 0.0
        return metrics

    return compute


def check_network_takes_crop(config: TrainingConfig, spec: InputSpec) -> None:
    """One forward pass of the configured network on an empty crop: a crop it cannot take is an InputError here,
    not an error deep in torch or monai after preparation.

    A crop is taken when the pass runs and its logits have the crop's own ``(j, i)`` size: a U-Net that pools ``n``
    times fails on a side not divisible by ``2 ** n`` (an error, or logits one pixel larger or smaller than the
    label crop). The message names the divisor the network needs, found by trying sides that are ``2 ** n`` times
    an odd number, and the nearest crop size that works.

    Raises
    ------
    InputError
        If the network cannot take ``spec.crop_size`` (the message names the crop size and what works).
    """
    network = _network_for_check(config)
    crop = tuple(int(size) for size in spec.crop_size)
    problem = _crop_problem(network, spec.channels, crop)
    if problem is None:
        return
    divisor = _crop_divisor(network, spec.channels)
    if divisor is None:
        advice = "choose another crop size or network"
    else:
        nearest = tuple(divisor * max(1, round(size / divisor)) for size in crop)
        if _crop_problem(network, spec.channels, nearest) is not None:
            nearest = tuple(max(3 * divisor, size) for size in nearest)  # too small for the network's depth
        example = " x ".join(str(size) for size in dict.fromkeys(nearest))
        advice = f"use a crop size divisible by {divisor}, e.g. {example} (--crop-size)"
    raise InputError(
        f"The network {config.network!r} cannot take a {crop[0]} x {crop[1]} px crop ({problem}); {advice}."
    )


def _network_for_check(config: TrainingConfig) -> Any:
    from ..models.networks import build_network

    return build_network(config.network, **config.network_kwargs).eval()


def _crop_problem(network: Any, channels: int, crop: tuple[int, ...]) -> str | None:
    """Why ``network`` cannot segment a ``crop``-sized input (a short text), or None when it can."""
    import torch

    try:
        with torch.no_grad():
            logits = network(torch.zeros(1, channels, *crop))
    except (RuntimeError, ValueError) as error:  # a size mismatch in a skip connection; a norm on a 1 x 1 map
        return str(error).splitlines()[0][:120] if str(error) else type(error).__name__
    if not isinstance(logits, torch.Tensor):
        return None  # not a plain segmentation network (a VAE's tuple): the shape cannot be judged here
    found = tuple(int(size) for size in logits.shape[2:])
    if found != crop:
        return f"its logits would be {' x '.join(map(str, found)) or 'not a map'} px, not the crop's size"
    return None


def _crop_divisor(network: Any, channels: int, *, max_power: int = 6) -> int | None:
    """The smallest ``2 ** n`` (n <= max_power) such that a side of ``2 ** n`` times an odd number (3) is taken."""
    for power in range(max_power + 1):
        divisor = 2 ** power
        if _crop_problem(network, channels, (3 * divisor, 3 * divisor)) is None:
            return divisor
    return None


def train_segmentation_prepared(
    train_slices: PreparedSlices,
    val_slices: PreparedSlices,
    *,
    config: TrainingConfig,
    out_dir: str | Path,
    augmentation: AugmentationConfig | None = None,
    label_codes: Sequence[int] = (1, 2, 3),
    batch_sampler: Any = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    initial_weights: str | Path | None = None,
    overwrite: bool = False,
) -> tuple[TrainingResult, Any, dict[str, float]]:
    """Train on already prepared slices; returns (result, network with the best weights, its validation metrics).

    ``initial_weights``: a checkpoint (``best.pt``) of the same network to start from (fine-tuning).
    ``overwrite``: start a new run in an ``out_dir`` that holds an earlier one.
    """
    from ..models.networks import build_seeded_network
    from .checkpoint import load_checkpoint_weights

    augmentation = AugmentationConfig() if augmentation is None else augmentation
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    if initial_weights is not None:
        load_checkpoint_weights(network, initial_weights)
    train_set = SliceDataset(train_slices, augmentation=build_augmentation(augmentation, seed=config.seed))
    val_set = SliceDataset(val_slices)
    trainer = Trainer(
        config, network, train_set, val_set, metric_fn=dice_metric_fn(label_codes), out_dir=out_dir,
        device=device, progress=progress, batch_sampler=batch_sampler,
    )
    result = trainer.fit(resume=resume, overwrite=overwrite)
    if result.best_checkpoint is None:
        raise InputError("Training gave no finite validation Dice; nothing to keep. Check labels and learning rate.")
    load_checkpoint_weights(network, result.best_checkpoint)
    best = next((h for h in result.history if h.get("epoch") == result.best_epoch), {})
    metrics = {k: float(v) for k, v in best.items() if k.startswith("dice_") or k == "val_dice"}
    return result, network, metrics


def train_segmentation(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    *,
    config: TrainingConfig,
    out_dir: str | Path,
    model_name: str,
    model_version: str = "1.0",
    models_dir: str | Path | None = None,
    augmentation: AugmentationConfig | None = None,
    crop_center: CropCenter = "labels",
    label_codes: Sequence[int] = (1, 2, 3),
    training_data: str = "",
    device: str | None = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> SegmentationTrainingResult:
    """Preprocess the cases, train with the shared :class:`Trainer`, and register the best model.

    The network outputs ``max(label_codes) + 1`` channels (channel = label code); ``config.network_kwargs`` must say
    so through ``out_channels``. The model card records the input spec, split, epochs and validation Dice.
    ``overwrite`` starts a new run in an ``out_dir`` that holds an earlier one.

    Raises
    ------
    InputError
        No training or validation case, an output channel count that does not fit the codes, or a crop the
        network cannot take (checked with one forward pass before anything is prepared or written).
    OutputError
        ``out_dir`` or ``models_dir`` is a file or lies under one (checked before training), or the model cannot be
        registered (then nothing is: the card and weights go in together).
    """
    if not train_cases or not val_cases:
        raise InputError("train_segmentation needs at least one training and one validation case.")
    n_channels = int(config.network_kwargs.get("out_channels", 0))
    if n_channels != max(label_codes) + 1:
        raise InputError(
            f"network_kwargs['out_channels'] is {n_channels}, but label codes {list(label_codes)} need "
            f"{max(label_codes) + 1} output channels (one per code, background included)."
        )
    spec = InputSpec.from_dict(config.input_spec) if config.input_spec else InputSpec()
    check_network_takes_crop(config, spec)
    _check_run_folder(out_dir)
    if models_dir is not None:
        check_models_folder(models_dir, [f"{model_name}-{model_version}"])
    train_slices = prepare_slices(train_cases, spec, crop_center=crop_center, progress=subrange(progress, 0, 0.05))
    val_slices = prepare_slices(val_cases, spec, crop_center=crop_center, progress=subrange(progress, 0.05, 0.1))
    log.info("Training on %d slices, validating on %d", len(train_slices), len(val_slices))
    result, network, metrics = train_segmentation_prepared(
        train_slices, val_slices, config=config, out_dir=out_dir, augmentation=augmentation,
        label_codes=label_codes, device=device, progress=subrange(progress, 0.1, 1.0), resume=resume,
        overwrite=overwrite,
    )
    card_path = None
    if models_dir is not None:
        from ..models.registry import ModelCard, save_model

        card = ModelCard(
            name=model_name,
            version=model_version,
            task="segmentation",
            network=config.network,
            network_kwargs=dict(config.network_kwargs),
            input_spec=spec.to_dict(),
            label_map={0: "background", **{c: LABELS[c].name for c in label_codes if c in LABELS}},
            training_data=training_data,
            split={
                "train": sorted({c.case_id for c in train_cases}),
                "validation": sorted({c.case_id for c in val_cases}),
            },
            epochs=len(result.history),
            validation_metrics=metrics,
            date=datetime.date.today().isoformat(),
            description=_sampling_description(config),
        )
        card_path = register_models(models_dir, {card.stem: lambda folder: save_model(network, card, folder)})[0]
    return SegmentationTrainingResult(result, card_path, metrics)


def _check_run_folder(out_dir: str | os.PathLike) -> None:
    from ..io.atomic import check_output_location

    try:
        check_output_location(out_dir)
    except OutputError as error:
        raise OutputError(f"Cannot train into {out_dir}: {error}") from error


def _sampling_description(config: TrainingConfig) -> str:
    if config.position_sampling_ratio is None:
        return ""
    return (f"Trained with region-aware batch sampling: quadratic over the slice position from base to apex, basal "
            f"and apical slices {config.position_sampling_ratio:g} times as likely as mid-ventricular ones.")
