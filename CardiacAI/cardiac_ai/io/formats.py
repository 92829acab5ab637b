"""File-name suffixes of the formats CardiacAI reads and writes (no imaging library needed to ask)."""
from __future__ import annotations

__all__ = ["VOLUME_SUFFIXES"]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
"""Volume formats that :func:`cardiac_ai.io.read_volume` and :func:`cardiac_ai.io.write_volume` handle."""
