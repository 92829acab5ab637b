"""Networks (built by name), the model-card registry of bundled weights, and batched inference."""
from __future__ import annotations

from .inference import predict_slices
from .networks import NETWORK_BUILDERS, build_network, network_names
from .registry import (
    MODEL_CARD_SCHEMA,
    MODELS_ENV_VAR,
    LoadedModel,
    ModelCard,
    ModelRegistry,
    default_model_dirs,
    file_sha256,
    load_weights,
    read_card,
    save_model,
)

__all__ = [
    "NETWORK_BUILDERS",
    "build_network",
    "network_names",
    "MODEL_CARD_SCHEMA",
    "MODELS_ENV_VAR",
    "LoadedModel",
    "ModelCard",
    "ModelRegistry",
    "default_model_dirs",
    "file_sha256",
    "load_weights",
    "read_card",
    "save_model",
    "predict_slices",
]
