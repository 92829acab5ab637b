"""CardiacAI backend: cardiac MRI AI as pure functions over numpy arrays with explicit geometry.

Never imports slicer, vtk or qt: the Slicer modules and the ``cardiacai`` command line both call into this package.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import Cancelled, CardiacAIError, DataError, InputError, ModelError, OutputError
from .geometry import Geometry, Volume
from .labels import LABELS, Tissue

__all__ = [
    "__version__",
    "Cancelled",
    "CardiacAIError",
    "DataError",
    "InputError",
    "ModelError",
    "OutputError",
    "Geometry",
    "Volume",
    "LABELS",
    "Tissue",
]
