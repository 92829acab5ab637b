"""The one training loop every CardiacAI model uses; variants override hooks (as nnU-Net's trainer subclasses do).

A run writes into ``out_dir``::

    config.json    the TrainingConfig
    last.pt        after every epoch: weights, optimiser, scheduler, RNG states, best metric, history, config
    best.pt        weights of the epoch with the best validation metric
    log.csv        epoch, train_loss, validation metrics, lr, seconds (rewritten atomically every epoch)

``fit(resume=True)`` continues from ``last.pt`` and takes exactly the steps an uninterrupted run would have taken:
the data order and worker augmentation of epoch ``e`` depend only on ``(seed, e)``, and the global torch, numpy and
Python generators are restored from the checkpoint. Under ``torchrun`` (``WORLD_SIZE > 1``) the trainer wraps the
network in ``DistributedDataParallel`` and only rank 0 writes files.

Datasets yield dicts ``{"image": (C, j, i) tensor, "label": tensor}``; the loop only passes the label to the loss.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from ..device import resolve_device
from ..errors import InputError, ModelError
from ..io.atomic import atomic_path, prepare_output_dir
from ..progress import ProgressCallback, report
from .checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from .config import CONFIG_FILE_NAME, TrainingConfig
from .distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_object,
    cleanup_distributed,
    device_for_rank,
    setup_distributed,
    wrap_model,
)
from .samplers import QuadraticPositionSampler

if TYPE_CHECKING:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset

__all__ = [
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
    "LOG_FILE",
    "MetricFn",
    "LossFn",
    "TrainerHook",
    "TrainingResult",
    "Trainer",
    "build_loss",
    "seed_worker",
]

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
LOG_FILE = "log.csv"

LossFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
MetricFn = Callable[["nn.Module", "DataLoader", "torch.device"], Mapping[str, float]]


def build_loss(name: str) -> LossFn:
    """The loss ``name`` of :data:`~cardiac_ai.training.config.LOSSES` as ``loss(logits, label) -> scalar``.

    Parameters
    ----------
    name : str
        ``"dice_ce"`` (MONAI ``DiceCELoss``), ``"dice"`` (``DiceLoss``), ``"jaccard"`` (``DiceLoss(jaccard=True)``):
        softmax over the logits ``(batch, classes, j, i)`` against integer labels ``(batch, j, i)`` or
        ``(batch, 1, j, i)``. ``"ce"``: cross-entropy, labels ``(batch, j, i)``/``(batch, 1, j, i)`` for maps or
        ``(batch,)`` for classes. ``"bce"``: ``BCEWithLogitsLoss``, float targets shaped like the logits.

    Raises
    ------
    InputError
        For an unknown name.
    """
    from torch import nn

    def as_channel_label(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if label.ndim == logits.ndim - 1:
            label = label.unsqueeze(1)
        return label.long()

    if name in ("dice_ce", "dice", "jaccard"):
        from monai.losses import DiceCELoss, DiceLoss

        monai_loss = (
            DiceCELoss(to_onehot_y=True, softmax=True)
            if name == "dice_ce"
            else DiceLoss(to_onehot_y=True, softmax=True, jaccard=name == "jaccard")
        )

        def dice_family(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return monai_loss(logits, as_channel_label(logits, label))

        return dice_family
    if name == "ce":
        cross_entropy = nn.CrossEntropyLoss()

        def ce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            if label.ndim == logits.ndim and label.shape[1] == 1:
                label = label[:, 0]
            return cross_entropy(logits, label.long())

        return ce
    if name == "bce":
        bce_loss = nn.BCEWithLogitsLoss()

        def bce(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
            return bce_loss(logits, label.to(logits.dtype).reshape(logits.shape))

        return bce
    from .config import LOSSES

    raise InputError(f"Unknown loss {name!r}; choose one of {LOSSES}, or pass loss_fn= to the Trainer.")


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: seeds numpy, ``random`` and MONAI random transforms in each worker.

    torch already gives each worker the seed ``base_seed + worker_id``, with ``base_seed`` drawn from the loader's
    generator; this passes that seed on, so worker augmentation is reproducible.
    """
    import torch
    from monai.data.utils import set_rnd

    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        set_rnd(info.dataset, seed=seed)


class TrainerHook:
    """Callbacks a :class:`Trainer` calls; subclass and override what you need (each default does nothing)."""

    def on_train_epoch_start(self, trainer: "Trainer", epoch: int) -> None:
        """Before the first batch of ``epoch`` (0-based)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, record: Mapping[str, float]) -> None:
        """After training, validation and ``best.pt`` of ``epoch``, before ``last.pt`` is written."""


@dataclass(frozen=True)
class TrainingResult:
    """What :meth:`Trainer.fit` produced.

    Attributes
    ----------
    best_metric : float or None
        Best value of ``metric_name``; None if no validation gave a finite value.
    best_epoch : int or None
        1-based epoch of ``best_metric``.
    metric_name : str
    epochs_completed : int
    stopped_early : bool
    out_dir, last_checkpoint, best_checkpoint, log_path, config_path : Path
        ``best_checkpoint`` is None when there was no best epoch.
    history : tuple of dict
        One record per epoch: ``epoch`` (1-based), ``train_loss``, ``lr``, ``seconds`` and validation metrics.
    """

    best_metric: float | None
    best_epoch: int | None
    metric_name: str
    epochs_completed: int
    stopped_early: bool
    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    log_path: Path
    config_path: Path
    history: tuple[dict[str, float], ...]


_LOADER_STREAM, _VALIDATION_STREAM, _TRANSFORM_STREAM = 0, 1, 2


def _epoch_seed(seed: int, epoch: int, stream: int = _LOADER_STREAM) -> int:
    """A 63-bit seed that depends only on (seed, stream, epoch)."""
    return int(np.random.SeedSequence([seed, stream, epoch]).generate_state(1, dtype=np.uint64)[0] >> 1)


@contextlib.contextmanager
def _isolated_global_rng(device: "torch.device", deterministic: bool) -> Iterator[None]:
    """Seeding inside fit() must not leak: restore torch, numpy and Python generators (and determinism) after."""
    import torch

    numpy_state, python_state = np.random.get_state(), random.getstate()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    warn_only_before = torch.is_deterministic_algorithms_warn_only_enabled()
    devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=True)
            yield
    finally:
        torch.use_deterministic_algorithms(deterministic_before, warn_only=warn_only_before)
        np.random.set_state(numpy_state)
        random.setstate(python_state)


class Trainer:
    """Train a network on dict datasets with checkpoints, resume, early stopping, logs and progress.

    Override in a subclass: :meth:`on_train_epoch_start`, :meth:`train_step`, :meth:`validation_step`,
    :meth:`evaluate`, :meth:`on_epoch_end`; or pass :class:`TrainerHook` objects.

    Parameters
    ----------
    config : TrainingConfig
    network : torch.nn.Module
        Built with ``build_network(config.network, **config.network_kwargs)``; returns logits.
    train_dataset : Dataset
        Map-style, ``len() > 0``, items ``{"image": (C, j, i) float tensor, "label": tensor}``.
    val_dataset : Dataset, optional
        Needed unless ``config.metric_name == "train_loss"``.
    loss_fn : callable, optional
        ``loss_fn(logits, label) -> scalar``; default :func:`build_loss` of ``config.loss``.
    metric_fn : callable, optional
        ``metric_fn(network, val_loader, device) -> {name: value}`` with ``config.metric_name`` among the keys,
        called in eval mode under ``torch.no_grad()`` (on rank 0 only under DDP, with the unwrapped network).
        Default: the mean loss over the validation set, as ``"val_loss"``.
    out_dir : path
        Where checkpoints and logs go; a new or empty folder unless resuming or ``fit(overwrite=True)``.
    device : str or torch.device, optional
        None/``"auto"``: CUDA when available. Under DDP on CUDA each rank uses ``cuda:LOCAL_RANK``.
    progress : ProgressCallback, optional
        Called after every batch and epoch with the fraction of all epochs done; raising
        :class:`~cardiac_ai.errors.Cancelled` stops training, leaving ``last.pt`` of the last finished epoch.
    batch_sampler : iterable of index lists, optional
        Replaces shuffling (e.g. :class:`~cardiac_ai.training.samplers.QuadraticPositionSampler`); its
        ``set_epoch(epoch)`` is called each epoch when it exists. Under DDP it must have ``num_replicas`` equal to
        the world size and yield this rank's share. ``config.position_sampling_ratio`` builds the quadratic one
        from the training set's ``positions`` instead (then pass none here).
    hooks : sequence of TrainerHook
        Called after the trainer's own hook methods.

    Raises
    ------
    InputError
        For an empty training set, a missing validation set, or a sampler that does not fit the process group.
    """

    def __init__(
        self,
        config: TrainingConfig,
        network: "nn.Module",
        train_dataset: "Dataset",
        val_dataset: "Dataset | None" = None,
        *,
        loss_fn: LossFn | None = None,
        metric_fn: MetricFn | None = None,
        out_dir: str | Path,
        device: "str | torch.device | None" = None,
        progress: ProgressCallback | None = None,
        batch_sampler: Any = None,
        hooks: Sequence[TrainerHook] = (),
    ) -> None:
        import torch
        from torch import nn

        if not isinstance(config, TrainingConfig):
            raise InputError(f"config must be a TrainingConfig, got {type(config).__name__}.")
        if not isinstance(network, nn.Module):
            raise InputError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if len(train_dataset) == 0:  # type: ignore[arg-type]
            raise InputError("train_dataset is empty; check the case list and the split.")
        if val_dataset is None and config.metric_name != "train_loss":
            raise InputError(
                f"No val_dataset, but config.metric_name is {config.metric_name!r}. Pass a validation set, or set "
                "metric_name='train_loss' (and metric_mode='min') to select checkpoints by training loss."
            )
        if val_dataset is not None and len(val_dataset) == 0:  # type: ignore[arg-type]
            raise InputError("val_dataset is empty; pass None or a non-empty validation set.")
        if metric_fn is None and config.metric_name not in ("val_loss", "train_loss"):
            raise InputError(
                f"config.metric_name is {config.metric_name!r} but no metric_fn computes it; pass metric_fn or use "
                "'val_loss'."
            )
        self.config = config
        self.network = network
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.loss_fn = loss_fn if loss_fn is not None else build_loss(config.loss)
        self.metric_fn = metric_fn
        self.out_dir = Path(out_dir)
        self.progress = progress
        self.hooks = tuple(hooks)
        self.requested_device = device if isinstance(device, torch.device) else resolve_device(device)
        self.device = self.requested_device
        self.dist = DistributedContext()
        self.batch_sampler = batch_sampler
        if config.position_sampling_ratio is not None:
            if batch_sampler is not None:
                raise InputError("config.position_sampling_ratio builds the batch sampler; pass no batch_sampler.")
            self.batch_sampler = self._position_sampler()
        self.model: nn.Module = network
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.epochs_completed = 0
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.bad_validations = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------ paths
    @property
    def last_checkpoint(self) -> Path:
        return self.out_dir / LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.out_dir / BEST_CHECKPOINT

    @property
    def log_path(self) -> Path:
        return self.out_dir / LOG_FILE

    @property
    def config_path(self) -> Path:
        return self.out_dir / CONFIG_FILE_NAME

    # ------------------------------------------------------------------ building blocks
    def _build_optimizer(self) -> "torch.optim.Optimizer":
        import torch

        c = self.config
        params = self.network.parameters()
        if c.optimizer == "adamw":
            return torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=c.learning_rate, weight_decay=c.weight_decay)
        return torch.optim.SGD(params, lr=c.learning_rate, weight_decay=c.weight_decay, momentum=0.99, nesterov=True)

    def _build_scheduler(self, optimizer: "torch.optim.Optimizer") -> Any:
        import torch

        epochs = self.config.epochs
        if self.config.scheduler == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
        if self.config.scheduler == "poly":
            return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: (1.0 - min(e, epochs) / epochs) ** 0.9)
        return None

    def _autocast(self) -> contextlib.AbstractContextManager:
        import torch

        if self.config.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loader_generator(self, epoch: int, stream: int = _LOADER_STREAM) -> "torch.Generator":
        import torch

        generator = torch.Generator()
        generator.manual_seed(_epoch_seed(self.config.seed, epoch, stream))
        return generator

    def train_loader(self, epoch: int) -> "DataLoader":
        """The training DataLoader of ``epoch``: its order and augmentation depend only on ``(seed, epoch)``."""
        from monai.data.utils import set_rnd
        from torch.utils.data import DataLoader, DistributedSampler

        c = self.config
        generator = self._loader_generator(epoch)
        if c.num_workers == 0:  # workers are seeded by seed_worker; in-process MONAI transforms here
            set_rnd(self.train_dataset, seed=_epoch_seed(c.seed, epoch, _TRANSFORM_STREAM) % 2**32)
        common = dict(num_workers=c.num_workers, worker_init_fn=seed_worker, generator=generator,
                      pin_memory=self.device.type == "cuda")
        if self.batch_sampler is not None:
            if hasattr(self.batch_sampler, "set_epoch"):
                self.batch_sampler.set_epoch(epoch)
            return DataLoader(self.train_dataset, batch_sampler=self.batch_sampler, **common)
        if self.dist.is_distributed:
            sampler = DistributedSampler(
                self.train_dataset, num_replicas=self.dist.world_size, rank=self.dist.rank, shuffle=True, seed=c.seed
            )
            sampler.set_epoch(epoch)
            return DataLoader(self.train_dataset, batch_size=c.batch_size, sampler=sampler, **common)
        return DataLoader(self.train_dataset, batch_size=c.batch_size, shuffle=True, **common)

    def val_loader(self) -> "DataLoader":
        """The validation DataLoader (fixed order)."""
        from torch.utils.data import DataLoader

        return DataLoader(
            self.val_dataset, batch_size=self.config.batch_size, shuffle=False, num_workers=self.config.num_workers,
            worker_init_fn=seed_worker, generator=self._loader_generator(0, _VALIDATION_STREAM),
        )

    # ------------------------------------------------------------------ hooks
    def on_train_epoch_start(self, epoch: int) -> None:
        """Called before the first batch of ``epoch`` (0-based). Default: nothing."""

    def train_step(self, batch: Mapping[str, Any]) -> "torch.Tensor":
        """One optimiser step on ``batch``; returns the (detached) loss."""
        import torch

        assert self.optimizer is not None
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model(image)
        loss = self.loss_fn(logits.float(), label)
        loss.backward()
        if self.config.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip_norm)
        self.optimizer.step()
        return loss.detach()

    def validation_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """Metrics of one validation batch (default: ``{"val_loss": loss}``), with the unwrapped network."""
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        with self._autocast():
            logits = self.network(image)
        return {"val_loss": float(self.loss_fn(logits.float(), label))}

    def evaluate(self) -> dict[str, float]:
        """Validation metrics of the current weights: ``metric_fn`` if given, else batch-size-weighted means of
        :meth:`validation_step`. Runs in eval mode under ``torch.no_grad()``; training mode is restored after."""
        import torch

        if self.val_dataset is None:
            return {}
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                loader = self.val_loader()
                if self.metric_fn is not None:
                    return {k: float(v) for k, v in dict(self.metric_fn(self.network, loader, self.device)).items()}
                sums: dict[str, float] = {}
                count = 0
                for batch in loader:
                    size = len(batch["image"])
                    for key, value in self.validation_step(batch).items():
                        sums[key] = sums.get(key, 0.0) + value * size
                    count += size
                return {key: value / count for key, value in sums.items()}
        finally:
            self.network.train(was_training)

    def on_epoch_end(self, epoch: int, record: Mapping[str, float]) -> None:
        """Called after training, validation and ``best.pt`` of ``epoch``, before ``last.pt``. Default: nothing."""

    # ------------------------------------------------------------------ checkpoints and logs
    def _weights(self) -> dict[str, "torch.Tensor"]:
        return {key: value.detach().cpu() for key, value in self.network.state_dict().items()}

    def _save_last(self) -> None:
        assert self.optimizer is not None
        save_checkpoint(
            self.last_checkpoint,
            {
                "epoch": self.epochs_completed,
                "model": self._weights(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "rng": capture_rng_state(self.device),
                "best_metric": self.best_metric,
                "best_epoch": self.best_epoch,
                "bad_validations": self.bad_validations,
                "history": self.history,
                "config": self.config.to_dict(),
            },
        )

    def _save_best(self, epoch: int, metric: float) -> None:
        save_checkpoint(
            self.best_checkpoint,
            {
                "epoch": epoch,
                "metric_name": self.config.metric_name,
                "metric": metric,
                "model": self._weights(),
                "config": self.config.to_dict(),
            },
        )

    def _write_log(self) -> None:
        fixed = {"epoch", "train_loss", "lr", "seconds"}
        metric_keys = sorted({key for record in self.history for key in record} - fixed)
        fields = ["epoch", "train_loss", *metric_keys, "lr", "seconds"]
        with atomic_path(self.log_path) as temporary:
            with open(temporary, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=fields, restval="")
                writer.writeheader()
                for record in self.history:
                    writer.writerow(record)

    def _resume(self) -> None:
        checkpoint = load_checkpoint(self.last_checkpoint)
        saved = checkpoint["config"]
        current = self.config.to_dict()
        differing = sorted(key for key in set(saved) | set(current) if saved.get(key) != current.get(key))
        if differing:
            raise InputError(
                f"Cannot resume from {self.last_checkpoint}: it was trained with a different config "
                f"({', '.join(f'{k}: {saved.get(k)!r} -> {current.get(k)!r}' for k in differing)}). Resume with the "
                "settings of that run (its config.json; on the command line the same options), or start a new run "
                "(another --out, or --overwrite); a finished run cannot be extended with more epochs."
            )
        try:
            self.network.load_state_dict(checkpoint["model"], strict=True)
        except RuntimeError as error:
            raise ModelError(f"{self.last_checkpoint} does not fit the network: {error}") from error
        assert self.optimizer is not None
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.epochs_completed = int(checkpoint["epoch"])
        self.best_metric = checkpoint["best_metric"]
        self.best_epoch = checkpoint["best_epoch"]
        self.bad_validations = int(checkpoint["bad_validations"])
        self.history = [dict(record) for record in checkpoint["history"]]
        restore_rng_state(checkpoint["rng"], self.device)
        log.info("Resumed from %s after epoch %d.", self.last_checkpoint, self.epochs_completed)

    # ------------------------------------------------------------------ the loop
    def _is_better(self, metric: float) -> bool:
        if not math.isfinite(metric):
            return False
        if self.best_metric is None:
            return True
        return metric > self.best_metric if self.config.metric_mode == "max" else metric < self.best_metric

    def _position_sampler(self) -> QuadraticPositionSampler:
        """The quadratic base/apex batch sampler ``config.position_sampling_ratio`` asks for, over the training
        set's ``positions`` (one batch per ``batch_size`` slices per epoch, as uniform shuffling)."""
        positions = getattr(self.train_dataset, "positions", None)
        if positions is None:
            raise InputError(
                "config.position_sampling_ratio needs a training set with slice positions (a SliceDataset of "
                f"prepared slices); {type(self.train_dataset).__name__} has none."
            )
        positions = np.asarray(positions, dtype=np.float64)
        if not np.isfinite(positions).any():
            log.warning("Position sampling: no training slice has a base-to-apex position (no labelled heart), so "
                        "every slice is drawn equally often.")
        return QuadraticPositionSampler(
            positions, batch_size=self.config.batch_size,
            num_batches=math.ceil(len(positions) / self.config.batch_size), ratio=float(self.config.position_sampling_ratio), seed=self.config.seed,
            num_replicas=self.dist.world_size, rank=self.dist.rank,
        )

    def _check_sampler(self) -> None:
        if self.batch_sampler is None or not self.dist.is_distributed:
            return
        replicas = getattr(self.batch_sampler, "num_replicas", 1)
        rank = getattr(self.batch_sampler, "rank", 0)
        if replicas != self.dist.world_size or rank != self.dist.rank:
            raise InputError(
                f"batch_sampler has num_replicas={replicas}, rank={rank}, but this process is rank {self.dist.rank} of "
                f"{self.dist.world_size}. Build the sampler with num_replicas=WORLD_SIZE and rank=RANK."
            )

    def fit(self, *, resume: bool = False, overwrite: bool = False) -> TrainingResult:
        """Train for ``config.epochs`` epochs, or until early stopping.

        Parameters
        ----------
        resume : bool
            Continue from ``out_dir/last.pt`` (same config required); the result is identical to a run that was
            never interrupted.
        overwrite : bool
            Allow a fresh run in a folder that already holds files (they are replaced as they are rewritten).

        Returns
        -------
        TrainingResult

        Raises
        ------
        InputError
            If resuming without ``last.pt`` or with a different config.
        OutputError
            If ``out_dir`` holds files and neither ``resume`` nor ``overwrite`` is set.
        Cancelled
            When the progress callback cancels; ``last.pt`` then holds the last finished epoch.
        """
        import torch

        self.dist = setup_distributed(self.requested_device)
        self.device = device_for_rank(self.requested_device, self.dist)
        try:
            with _isolated_global_rng(self.device, self.config.deterministic):
                result = self._fit(resume=resume, overwrite=overwrite)
            # every rank is done with the group before one destroys it: gloo aborts a process whose peer tears the
            # group down under it ("terminate called without an active exception"). Not on failure: a rank that
            # raised would leave the others waiting here.
            barrier(self.dist)
            return result
        finally:
            cleanup_distributed(self.dist)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def _fit(self, *, resume: bool, overwrite: bool) -> TrainingResult:
        import torch

        c = self.config
        self._check_sampler()
        if resume and not self.last_checkpoint.is_file():
            raise InputError(
                f"resume=True but {self.last_checkpoint} does not exist; start without resume to begin a new run."
            )
        if self.dist.is_main and not resume:
            prepare_output_dir(self.out_dir, overwrite=overwrite)
            c.save(self.config_path)
        barrier(self.dist)

        torch.manual_seed(c.seed)
        np.random.seed(c.seed % 2**32)
        random.seed(c.seed)
        self.network.to(self.device)
        self.optimizer = self._build_optimizer()
        self.scheduler = self._build_scheduler(self.optimizer)
        self.epochs_completed, self.best_metric, self.best_epoch, self.bad_validations = 0, None, None, 0
        self.history = []
        if resume:
            self._resume()
        self.model = wrap_model(self.network, self.dist, self.device)
        self.model.train()

        stopped_early = bool(
            c.early_stopping_patience is not None and self.bad_validations >= c.early_stopping_patience
        )
        start = self.epochs_completed
        report(self.progress, start / c.epochs, f"training {c.network}: epoch {start + 1}/{c.epochs}")
        for epoch in range(start, c.epochs if not stopped_early else start):
            started = time.perf_counter()
            self.on_train_epoch_start(epoch)
            for hook in self.hooks:
                hook.on_train_epoch_start(self, epoch)
            self.model.train()
            loader = self.train_loader(epoch)
            n_batches = len(loader)
            total, steps = 0.0, 0
            for index, batch in enumerate(loader):
                loss = float(self.train_step(batch))
                total, steps = total + loss, steps + 1
                report(
                    self.progress,
                    (epoch + (index + 1) / max(n_batches, 1)) / c.epochs,
                    f"epoch {epoch + 1}/{c.epochs}: batch {index + 1}/{n_batches}, loss {loss:.4f}",
                )
            if steps == 0:
                raise InputError(f"Epoch {epoch + 1} had no batches; the sampler or dataset yields nothing.")
            train_loss = all_reduce_mean(total / steps, self.dist)
            record: dict[str, float] = {"epoch": epoch + 1, "train_loss": train_loss,
                                        "lr": float(self.optimizer.param_groups[0]["lr"])}
            if self.scheduler is not None:
                self.scheduler.step()

            if (epoch + 1) % c.val_every == 0 or epoch + 1 == c.epochs:
                metrics = self.evaluate() if self.dist.is_main else None
                metrics = broadcast_object(metrics, self.dist)
                record.update(metrics)
                if c.metric_name not in record:
                    raise InputError(
                        f"Validation returned {sorted(metrics)} but config.metric_name is {c.metric_name!r}; "
                        "make metric_fn return it or change metric_name."
                    )
                metric = float(record[c.metric_name])
                if not math.isfinite(metric):
                    log.warning("Epoch %d: %s is %s; not counted as an improvement.", epoch + 1, c.metric_name, metric)
                if self._is_better(metric):
                    self.best_metric, self.best_epoch, self.bad_validations = metric, epoch + 1, 0
                    if self.dist.is_main:
                        self._save_best(epoch + 1, metric)
                else:
                    self.bad_validations += 1
            record["seconds"] = time.perf_counter() - started
            self.history.append(record)
            self.epochs_completed = epoch + 1
            self.on_epoch_end(epoch, record)
            for hook in self.hooks:
                hook.on_epoch_end(self, epoch, record)
            if self.dist.is_main:
                self._save_last()
                self._write_log()
            barrier(self.dist)
            log.info(
                "Epoch %d/%d: train_loss %.4f%s (%.1f s)", epoch + 1, c.epochs, train_loss,
                f", {c.metric_name} {record[c.metric_name]:.4f}" if c.metric_name in record else "",
                record["seconds"],
            )
            report(self.progress, (epoch + 1) / c.epochs,
                   f"epoch {epoch + 1}/{c.epochs} done, train loss {train_loss:.4f}")
            if c.early_stopping_patience is not None and self.bad_validations >= c.early_stopping_patience:
                stopped_early = True
                log.info("Early stopping after epoch %d: %d validations without improvement of %s.",
                         epoch + 1, self.bad_validations, c.metric_name)
                break
        report(self.progress, 1.0, "training finished")
        return TrainingResult(
            best_metric=self.best_metric,
            best_epoch=self.best_epoch,
            metric_name=c.metric_name,
            epochs_completed=self.epochs_completed,
            stopped_early=stopped_early,
            out_dir=self.out_dir,
            last_checkpoint=self.last_checkpoint,
            best_checkpoint=self.best_checkpoint if self.best_epoch is not None else None,
            log_path=self.log_path,
            config_path=self.config_path,
            history=tuple(dict(record) for record in self.history),
        )
