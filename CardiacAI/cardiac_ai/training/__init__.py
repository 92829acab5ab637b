"""Training: one loop with hooks, its configuration, checkpoints, samplers and DDP support.

Augmentation lives in :mod:`cardiac_ai.training.augmentation` (imported on its own; not re-exported here).
"""
from __future__ import annotations

from .checkpoint import export_best_model, load_checkpoint, load_checkpoint_weights
from .config import LOSSES, OPTIMIZERS, SCHEDULERS, TrainingConfig
from .distributed import DistributedContext, setup_distributed
from .engine import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    LOG_FILE,
    Trainer,
    TrainerHook,
    TrainingResult,
    build_loss,
    seed_worker,
)
from .samplers import QuadraticPositionSampler, quadratic_position_weights

__all__ = [
    "TrainingConfig",
    "LOSSES",
    "OPTIMIZERS",
    "SCHEDULERS",
    "Trainer",
    "TrainerHook",
    "TrainingResult",
    "build_loss",
    "load_checkpoint",
    "seed_worker",
    "BEST_CHECKPOINT",
    "LAST_CHECKPOINT",
    "LOG_FILE",
    "load_checkpoint_weights",
    "export_best_model",
    "QuadraticPositionSampler",
    "quadratic_position_weights",
    "DistributedContext",
    "setup_distributed",
]
