"""All file input and output: volumes, DICOM, PNG, Slicer segmentations, reports."""
from __future__ import annotations

from .atomic import atomic_path, ensure_not_input, prepare_output_dir, write_text_atomic
from .volumes import VOLUME_SUFFIXES, check_finite, read_volume, volume_from_sitk, volume_to_sitk, write_volume

__all__ = [
    "VOLUME_SUFFIXES",
    "atomic_path",
    "check_finite",
    "ensure_not_input",
    "prepare_output_dir",
    "read_volume",
    "volume_from_sitk",
    "volume_to_sitk",
    "write_text_atomic",
    "write_volume",
]
