"""The errors cardiac_ai raises on purpose.

Builtin bases keep ``except ValueError`` / ``except OSError`` working for callers that do not know this package.
"""
from __future__ import annotations

__all__ = ["CardiacAIError", "InputError", "ModelError", "DataError", "OutputError", "Cancelled"]


class CardiacAIError(Exception):
    """Base of every error cardiac_ai raises on purpose."""


class InputError(CardiacAIError, ValueError):
    """Array, shape, geometry, unit or label the function cannot use."""


class ModelError(CardiacAIError):
    """Weights missing, corrupt, or not matching the model's input spec."""


class DataError(CardiacAIError):
    """A dataset, DICOM folder or file that cannot be read as promised."""


class OutputError(CardiacAIError, OSError):
    """An output cannot be written without overwriting data the user did not offer."""


class Cancelled(CardiacAIError):
    """Raised by a progress callback to stop work; never caught in the backend."""
