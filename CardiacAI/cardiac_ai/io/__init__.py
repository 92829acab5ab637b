"""All file input and output: volumes, DICOM, PNG, Slicer segmentations, reports."""
from __future__ import annotations

from .atomic import atomic_path, ensure_not_input, prepare_output_dir, write_text_atomic
from .dicom import DicomSeriesInfo, list_dicom_series, read_dicom_series
from .png import read_png, write_png
from .report import REPORT_NAME, read_json, to_jsonable, write_csv, write_json, write_report
from .seg_nrrd import SegmentationFile, SegmentInfo, read_seg_nrrd, write_seg_nrrd
from .volumes import VOLUME_SUFFIXES, check_finite, read_volume, volume_from_sitk, volume_to_sitk, write_volume

__all__ = [
    "REPORT_NAME",
    "VOLUME_SUFFIXES",
    "DicomSeriesInfo",
    "SegmentInfo",
    "SegmentationFile",
    "atomic_path",
    "check_finite",
    "ensure_not_input",
    "list_dicom_series",
    "prepare_output_dir",
    "read_dicom_series",
    "read_json",
    "read_png",
    "read_seg_nrrd",
    "read_volume",
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
