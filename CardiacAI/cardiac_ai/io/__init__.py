"""All file input and output: volumes, DICOM, PNG, Slicer segmentations, reports.

Submodules load on first use (PEP 562): ``cardiac_ai.io.atomic`` alone needs no SimpleITK, so code that only writes
files atomically (checkpoints, a GPU training machine with torch and MONAI alone) does not pull the imaging stack.
"""
from __future__ import annotations

from .._lazy import lazy_attributes

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
    "read_label_file": ".seg_nrrd",
    "read_label_map": ".seg_nrrd",
    "read_seg_nrrd": ".seg_nrrd",
    "seg_nrrd_has_segments": ".seg_nrrd",
    "write_seg_nrrd": ".seg_nrrd",
    "VOLUME_SUFFIXES": ".formats",
    "check_finite": ".volumes",
    "read_volume": ".volumes",
    "volume_from_sitk": ".volumes",
    "volume_to_sitk": ".volumes",
    "write_volume": ".volumes",
}

__all__ = [
    "DicomSeriesInfo",
    "REPORT_NAME",
    "SegmentInfo",
    "SegmentationFile",
    "VOLUME_SUFFIXES",
    "atomic_path",
    "check_finite",
    "ensure_not_input",
    "list_dicom_series",
    "prepare_output_dir",
    "read_dicom_series",
    "read_json",
    "read_label_file",
    "read_label_map",
    "read_png",
    "read_seg_nrrd",
    "read_volume",
    "seg_nrrd_has_segments",
    "to_jsonable",
    "volume_from_sitk",
    "volume_to_sitk",
    "write_csv",
    "write_json",
    "write_png",
    "write_report",
    "write_seg_nrrd",
    "write_text_atomic",
    "write_volume",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
