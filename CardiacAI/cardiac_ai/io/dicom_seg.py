"""DICOM SEG output (highdicom): a label map segmented from a DICOM series, written so that a PACS or viewer shows
it on the images it came from.

The SEG refers to the source series' instances slice by slice (the order :func:`~cardiac_ai.io.dicom.read_dicom_series`
stacks them), names each segment from the label table (display name, SNOMED-CT category, type and anatomic region, as
the Slicer terminology of ``.seg.nrrd``) and records CardiacAI as the algorithm. Only a label map on the source
series' own grid can be written; the source files are read, never changed.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Volume
from ..labels import LABELS, Terminology
from .atomic import atomic_path
from .dicom import series_headers

__all__ = ["write_dicom_seg", "dicom_seg_of_dicom_input", "DICOM_SEG_NAME"]

log = logging.getLogger(__name__)

#: File name of the DICOM SEG the segmenting commands write next to their other outputs for a DICOM input.
DICOM_SEG_NAME = "segmentation.dcm"

#: Patient and study attributes a DICOM SEG copies from its source; type 2 (may be empty), so a source that lacks
#: them gets them empty in the copy highdicom reads (the source files are not touched).
_COPIED_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                  "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _coded(term: Terminology):
    import highdicom as hd

    return hd.sr.CodedConcept(term.code_value, term.scheme, term.meaning)


def write_dicom_seg(
    labels: Volume,
    source_folder: str | os.PathLike,
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    series_description: str = "CardiacAI segmentation",
    series_number: int = 9901,
) -> Path | None:
    """Write ``labels`` as a DICOM SEG of the series in ``source_folder`` it was segmented from.

    Parameters
    ----------
    labels : (k, j, i) label map on the source series' grid (codes of the label table).
    source_folder, series_uid : the DICOM series, as given to :func:`~cardiac_ai.io.dicom.read_dicom_series`.
    path : the ``.dcm`` file to write (atomically).

    Returns
    -------
    Path or None
        The file, or None when the label map holds no segment (a SEG needs one; nothing is written).

    Raises
    ------
    InputError
        Labels not on the series' grid (shape or geometry), or codes outside the label table.
    DataError
        A source series a valid SEG cannot refer to (no FrameOfReferenceUID, or headers highdicom refuses).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from .. import __version__

    _, headers, geometry = series_headers(source_folder, series_uid=series_uid)
    array = np.asarray(labels.array)
    if labels.axes != "kji" or array.shape != (len(headers), int(headers[0].Rows), int(headers[0].Columns)):
        raise InputError(f"The label map {array.shape} is not on the grid of the DICOM series in {source_folder} "
                         f"({len(headers)} slices of {headers[0].Rows} x {headers[0].Columns}).")
    differences = labels.geometry.differences(geometry, atol_mm=1e-2, atol_direction=1e-4)
    if differences:
        raise InputError(f"The label map does not lie on the DICOM series' grid ({'; '.join(differences)}).")
    present = [int(c) for c in np.unique(array) if c != 0]
    unknown = [c for c in present if c not in LABELS]
    if unknown:
        raise InputError(f"Label codes {unknown} are not in the label table {sorted(LABELS)}.")
    if not present:
        log.warning("The segmentation is empty: no DICOM SEG written (a SEG needs at least one segment).")
        return None
    if any("FrameOfReferenceUID" not in h for h in headers):
        raise DataError(f"The DICOM series in {source_folder} has no FrameOfReferenceUID, which a DICOM SEG must "
                        "share with its images; no DICOM SEG can refer to it.")
    sources = []
    for header in headers:
        source = copy.deepcopy(header)
        for name in _COPIED_TYPE_2:
            if name not in source:
                setattr(source, name, "")
        sources.append(source)
    algorithm = hd.AlgorithmIdentificationSequence(name="CardiacAI", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions, numbered = [], np.zeros(array.shape, np.uint8)
    for number, code in enumerate(present, start=1):
        row = LABELS[code]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=row.display_name,
            segmented_property_category=_coded(row.category), segmented_property_type=_coded(row.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm,
            anatomic_regions=[_coded(row.anatomic_region)] if row.anatomic_region is not None else None,
            tracking_id=row.name, tracking_uid=hd.UID(),
        ))
        numbered[array == code] = number
    try:
        with warnings.catch_warnings():  # highdicom's remarks on the source's patient name format
            warnings.simplefilter("ignore", UserWarning)
            segmentation = hd.seg.Segmentation(
                source_images=sources, pixel_array=numbered, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=series_number,
                sop_instance_uid=hd.UID(), instance_number=1, manufacturer="CardiacAI",
                manufacturer_model_name="CardiacAI", software_versions=__version__, device_serial_number="0",
                series_description=series_description,
            )
    except (ValueError, TypeError, AttributeError) as error:
        raise DataError(f"No DICOM SEG could be made for the series in {source_folder}: {error}") from error
    target = Path(path)
    with atomic_path(target) as temporary:
        segmentation.save_as(str(temporary))
    return target


def dicom_seg_of_dicom_input(labels: Volume, input_path: str | os.PathLike, path: str | os.PathLike, *,
                             series_uid: str | None, provenance) -> Path | None:
    """What the segmenting commands do: for an input read from a DICOM series (a folder), also write the labels as
    a DICOM SEG of it; a series a SEG cannot refer to gives a provenance warning, never a failed segmentation.
    Returns the file, or None (not a DICOM input, nothing to write, or the warning)."""
    source = Path(input_path)
    if not source.is_dir():
        if source.suffix.lower() == ".dcm":
            provenance.warn("No DICOM SEG written: the input is one DICOM file; give the folder of its series for a "
                            "DICOM SEG that refers to every slice.", log)
        return None
    try:
        return write_dicom_seg(labels, input_path, path, series_uid=series_uid)
    except (DataError, InputError) as error:
        provenance.warn(f"No DICOM SEG written: {error}", log)
        return None
