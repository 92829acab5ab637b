"""Networks (built by name), the model-card registry of bundled weights, and batched inference.

The registry and inference are imported on first use (PEP 562), so that ``cardiac_ai.models.networks`` needs only
torch and MONAI: a bare GPU training machine can build every network without SimpleITK and the I/O stack.
"""
from __future__ import annotations

from .._lazy import lazy_attributes
from .networks import NETWORK_BUILDERS, build_network, network_names

_LAZY = {
    "predict_slices": ".inference",
    "MODEL_CARD_SCHEMA": ".registry",
    "MODELS_ENV_VAR": ".registry",
    "LoadedModel": ".registry",
    "ModelCard": ".registry",
    "ModelRegistry": ".registry",
    "default_model_dirs": ".registry",
    "file_sha256": ".registry",
    "load_weights": ".registry",
    "read_card": ".registry",
    "save_model": ".registry",
}

__all__ = [
    "NETWORK_BUILDERS",
    "build_network",
    "network_names",
    "predict_slices",
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
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
