"""All file input and output: volumes, DICOM, PNG, Slicer segmentations, reports.

Submodules load on first use (PEP 562): ``cardiac_ai.io.atomic`` alone needs no SimpleITK, so code that only writes
files atomically (checkpoints, a GPU training machine with torch and MONAI alone) does not pull the imaging stack.
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "atomic_path": ".atomic",
    "ensure_not_input": ".atomic",
    "prepare_output_dir": ".atomic",
    "write_text_atomic": ".atomic",
    "DicomSeriesInfo": ".dicom",
    "list_dicom_series": ".dicom",
    "read_dicom_series": ".dicom",
    "read_png": ".png",
    "write_png": ".png",
    "REPORT_NAME": ".report",
    "read_json": ".report",
    "to_jsonable": ".report",
    "write_csv": ".report",
    "write_json": ".report",
    "write_report": ".report",
    "SegmentationFile": ".seg_nrrd",
    "SegmentInfo": ".seg_nrrd",
    "read_seg_nrrd": ".seg_nrrd",
    "write_seg_nrrd": ".seg_nrrd",
    "VOLUME_SUFFIXES": ".formats",
    "check_finite": ".volumes",
    "read_volume": ".volumes",
    "volume_from_sitk": ".volumes",
    "volume_to_sitk": ".volumes",
    "write_volume": ".volumes",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
