"""The training configuration: one readable JSON file saved as ``config.json`` next to the checkpoints."""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

from ..errors import InputError
from ..io.atomic import write_text_atomic

__all__ = ["TrainingConfig", "OPTIMIZERS", "SCHEDULERS", "LOSSES", "CONFIG_FILE_NAME"]

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("cosine", "poly", "none")
LOSSES = ("dice_ce", "dice", "jaccard", "ce", "bce")
CONFIG_FILE_NAME = "config.json"


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that defines a training run except the data and the code.

    Attributes
    ----------
    network, network_kwargs
        Registry name and hyperparameters, passed to :func:`cardiac_ai.models.build_network`.
    input_spec : dict
        Preprocessing the model expects (``InputSpec.to_dict()``); copied into the model card.
    epochs : int
        Maximum number of epochs.
    batch_size : int
        Samples per batch (per process under DDP). Ignored when the trainer gets a ``batch_sampler``.
    learning_rate, weight_decay : float
        Optimiser settings.
    optimizer : {"adamw", "adam", "sgd"}
        ``sgd`` is nnU-Net's: Nesterov momentum 0.99.
    scheduler : {"cosine", "poly", "none"}
        Learning-rate schedule over ``epochs``, stepped once per epoch (``poly``: ``(1 - epoch / epochs) ** 0.9``).
    loss : {"dice_ce", "dice", "jaccard", "ce", "bce"}
        ``dice_ce``, ``dice``, ``jaccard``: MONAI losses on softmax of the logits against integer label maps
        ``(batch, [1,] j, i)``; ``ce``: cross-entropy against integer labels (maps or classes); ``bce``: binary
        cross-entropy with logits against float targets shaped like the logits.
    amp : bool
        bfloat16 autocast, on CUDA only (ignored on the CPU).
    seed : int
        Seeds weights' training order, shuffling, dropout and worker augmentation.
    early_stopping_patience : int or None
        Stop after this many validations without improvement of the metric; None never stops early.
    val_every : int
        Validate every ``val_every`` epochs, and always after the last epoch.
    metric_name : str
        Key of the validation metric that selects ``best.pt``: ``"val_loss"`` (the default validation, the loss on
        the validation set), ``"train_loss"``, or a key returned by the trainer's ``metric_fn``.
    metric_mode : {"max", "min"}
        Whether a larger or a smaller metric is better.
    num_workers : int
        DataLoader worker processes (0: load in the main process).
    grad_clip_norm : float or None
        Clip the gradient norm to this value (nnU-Net uses 12); None: no clipping.
    deterministic : bool
        Ask torch for deterministic algorithms during training (warns where none exists).
    position_sampling_ratio : float or None
        Region-aware non-uniform batch sampling (the region-aware paper's approach 1): batches are drawn with
        replacement, basal and apical slices up to this many times as often as mid-ventricular ones, through
        :class:`~cardiac_ai.training.samplers.QuadraticPositionSampler` over the training set's slice
        ``positions``; the paper used 4 and 20. None (the default): every slice once per epoch, shuffled.
    """

    network: str
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    input_spec: dict[str, Any] = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    scheduler: Literal["cosine", "poly", "none"] = "cosine"
    loss: Literal["dice_ce", "dice", "jaccard", "ce", "bce"] = "dice_ce"
    amp: bool = True
    seed: int = 0
    early_stopping_patience: int | None = None
    val_every: int = 1
    metric_name: str = "val_loss"
    metric_mode: Literal["max", "min"] = "min"
    num_workers: int = 0
    grad_clip_norm: float | None = None
    deterministic: bool = True
    position_sampling_ratio: float | None = None

    def __post_init__(self) -> None:
        if hasattr(self.input_spec, "to_dict"):
            object.__setattr__(self, "input_spec", self.input_spec.to_dict())
        problems = []
        if not isinstance(self.network, str) or not self.network:
            problems.append(f"network must be a network name, got {self.network!r}")
        for name in ("network_kwargs", "input_spec"):
            if not isinstance(getattr(self, name), Mapping):
                problems.append(f"{name} must be a dict, got {type(getattr(self, name)).__name__}")
        for name in ("epochs", "batch_size", "val_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            problems.append(f"num_workers must be an integer >= 0, got {self.num_workers!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.weight_decay >= 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("loss", LOSSES)):
            if getattr(self, name) not in allowed:
                problems.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.metric_mode not in ("max", "min"):
            problems.append(f"metric_mode must be 'max' or 'min', got {self.metric_mode!r}")
        if not isinstance(self.metric_name, str) or not self.metric_name:
            problems.append(f"metric_name must be a non-empty string, got {self.metric_name!r}")
        if self.early_stopping_patience is not None and (
            not isinstance(self.early_stopping_patience, int) or self.early_stopping_patience < 1
        ):
            problems.append(
                f"early_stopping_patience must be None or an integer >= 1, got {self.early_stopping_patience!r}"
            )
        ratio = self.position_sampling_ratio
        if ratio is not None and not (
            isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and math.isfinite(ratio) and ratio >= 1
        ):
            problems.append(
                f"position_sampling_ratio must be None or a number >= 1 (the paper used 4 and 20), got "
                f"{self.position_sampling_ratio!r}"
            )
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            problems.append(f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm!r}")
        if problems:
            raise InputError("Invalid training config: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (a deep copy)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingConfig":
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        InputError
            If a key is unknown (a typo would otherwise be ignored) or ``network`` is missing, or a value is invalid.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"Training config has unknown keys {unknown}; known keys are {sorted(known)}.")
        if "network" not in data:
            raise InputError("Training config has no 'network' key; name the network to train (e.g. 'unet2d').")
        return cls(**dict(data))

    def to_json(self) -> str:
        """Indented JSON text with sorted keys."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TrainingConfig":
        """Parse :meth:`to_json` output.

        Raises
        ------
        InputError
            If the text is not a JSON object or fails :meth:`from_dict`.
        """
        try:
            data = json.loads(text)
        except ValueError as error:
            raise InputError(f"Training config is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise InputError(f"Training config must be a JSON object, got {type(data).__name__}.")
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_json` to ``path`` atomically."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainingConfig":
        """Read a config written by :meth:`save`.

        Raises
        ------
        InputError
            If the file cannot be read or is not a valid config (the message names the file).
        """
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"Cannot read training config {path}: {error}") from error
        try:
            return cls.from_json(text)
        except InputError as error:
            raise InputError(f"{path}: {error}") from error
