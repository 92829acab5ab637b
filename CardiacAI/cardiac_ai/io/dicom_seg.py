"""DICOM SEG output (highdicom): a label map segmented from a DICOM series, written so that a PACS or viewer shows
it on the images it came from.

The SEG refers to the source series' instances slice by slice (the order :func:`~cardiac_ai.io.dicom.read_dicom_series`
stacks them), names each segment from the label table (display name, SNOMED-CT category, type and anatomic region, as
the Slicer terminology of ``.seg.nrrd``) and records CardiacAI as the algorithm. Only a label map on the source
series' own grid can be written; the source files are read, never changed.

A DICOM SEG from any tool is read back (:func:`read_dicom_seg`) as a label map in its own frame of reference, its
segments matched to CardiacAI's codes; placing it on an image is :func:`~cardiac_ai.geometry.pad_to_reference_grid`'s.
"""
from __future__ import annotations

import copy
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from ..labels import LABELS, Terminology, Tissue, code_for_segment_name, overlap_priority, values_present
from .atomic import atomic_path
from .dicom import series_headers

__all__ = ["write_dicom_seg", "dicom_seg_of_dicom_input", "read_dicom_seg", "is_dicom_seg", "DICOM_SEG_NAME"]

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
    frame: int | None = None,
    series_description: str = "CardiacAI segmentation",
    series_number: int = 9901,
) -> Path | None:
    """Write ``labels`` as a DICOM SEG of the series in ``source_folder`` it was segmented from.

    Parameters
    ----------
    labels : (k, j, i) label map on the source series' grid (codes of the label table).
    source_folder, series_uid, frame : the DICOM series (and, for a cine series, its phase), as given to
        :func:`~cardiac_ai.io.dicom.read_dicom_series`: the SEG refers to the images of that phase.
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

    _, headers, geometry = series_headers(source_folder, series_uid=series_uid, frame=frame, report_skipped=False)
    array = np.asarray(labels.array)
    if labels.axes != "kji" or array.shape != (len(headers), int(headers[0].Rows), int(headers[0].Columns)):
        raise InputError(f"The label map {array.shape} is not on the grid of the DICOM series in {source_folder} "
                         f"({len(headers)} slices of {headers[0].Rows} x {headers[0].Columns}).")
    differences = labels.geometry.differences(geometry, atol_mm=1e-2, atol_direction=1e-4)
    if differences:
        raise InputError(f"The label map does not lie on the DICOM series' grid ({'; '.join(differences)}).")
    present = [int(c) for c in values_present(array) if c != 0]
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
                             series_uid: str | None, provenance, frame: int | None = None) -> Path | None:
    """What the segmenting commands do: for an input read from a DICOM series (a folder), also write the labels as
    a DICOM SEG of it; a series a SEG cannot refer to gives a provenance warning, never a failed segmentation.
    Returns the file, or None (not a DICOM input, nothing to write, or the warning)."""
    source = Path(input_path)
    if source.is_file() and source.name.upper() == "DICOMDIR":  # read as its folder's series (read_volume)
        source = input_path = source.parent
    if not source.is_dir():
        if source.suffix.lower() == ".dcm":
            provenance.warn("No DICOM SEG written: the input is one DICOM file; give the folder of its series for a "
                            "DICOM SEG that refers to every slice.", log)
        return None
    try:
        return write_dicom_seg(labels, input_path, path, series_uid=series_uid, frame=frame)
    except (DataError, InputError) as error:
        provenance.warn(f"No DICOM SEG written: {error}", log)
        return None


def _same_grid_to_header_precision(geometry: Geometry, reference: Geometry) -> bool:
    """The same axes and voxel size up to the rounding of DICOM decimal strings (0.1 % of the spacing, 0.001 in a
    direction cosine), as two readers of one series give them."""
    return bool(np.allclose(geometry.spacing_mm, reference.spacing_mm, rtol=1e-3, atol=0.0)
                and np.allclose(geometry.direction_lps, reference.direction_lps, atol=1e-3))


def _onto_reference_lattice(geometry: Geometry, reference: Geometry, *, atol_voxel: float = 0.05) -> Geometry:
    """``geometry`` with the reference's spacing and direction, and its origin moved onto the reference's nearest
    voxel centre when it lies within ``atol_voxel`` of it (else kept: the lattice check then refuses it)."""
    snapped = Geometry(reference.spacing_mm, geometry.origin_lps_mm, reference.direction_lps)
    offset = reference.lattice_offset_kji(snapped, (1, 1, 1), atol_voxel=atol_voxel)  # the origin voxel alone
    if offset is None:
        return snapped
    origin = tuple(float(v) for v in reference.index_to_lps(np.array([offset], dtype=np.float64))[0])
    return Geometry(reference.spacing_mm, origin, reference.direction_lps)


def is_dicom_seg(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file of modality SEG (header only; any file name, DICOM files often have none)."""
    import pydicom

    source = Path(path)
    if not source.is_file():
        return False
    try:
        header = pydicom.dcmread(str(source), stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # not DICOM at all: pydicom raises InvalidDicomError, OSError, ...
        return False
    return str(header.get("Modality", "")) == "SEG"


def _code_of_segment(segment, tissues: dict[int, Tissue], source: Path) -> int:
    """A SEG segment's CardiacAI code: by tracking ID (CardiacAI writes the tissue's machine name), then label
    (display or machine name, any case), then coded property type and anatomic region."""
    tracking = str(getattr(segment, "TrackingID", "") or "").lower()
    label = str(getattr(segment, "SegmentLabel", "") or "")
    for code, row in tissues.items():
        if tracking == row.name.lower():
            return code
    named = code_for_segment_name(label)
    if named is not None and named in tissues:
        return named
    type_codes = {item.CodeValue for item in getattr(segment, "SegmentedPropertyTypeCodeSequence", [])}
    region_codes = {item.CodeValue for item in getattr(segment, "AnatomicRegionSequence", [])}
    region_codes |= {item.CodeValue for item in getattr(segment, "SegmentedPropertyTypeModifierCodeSequence", [])}
    for type_item in getattr(segment, "SegmentedPropertyTypeCodeSequence", []):
        region_codes |= {item.CodeValue for item in getattr(type_item, "SegmentedPropertyTypeModifierCodeSequence", [])}
    matches = [code for code, row in tissues.items() if row.type.code_value in type_codes
               and (row.anatomic_region is None or row.anatomic_region.code_value in region_codes)]
    if len(matches) == 1:
        return matches[0]
    raise InputError(
        f"{source}: segment {int(segment.SegmentNumber)} ({getattr(segment, 'SegmentLabel', '')!r}) matches no "
        f"CardiacAI structure by tracking ID, label or coded type and region. Label the segments "
        f"{', '.join(repr(row.display_name) for row in tissues.values())}."
    )


def _frame_thickness(segmentation, steps: np.ndarray) -> float:
    """A single frame's slice thickness: the SEG's PixelMeasures SliceThickness, else highdicom's step."""
    for group in getattr(segmentation, "SharedFunctionalGroupsSequence", []):
        for measures in group.get("PixelMeasuresSequence", []):
            thickness = measures.get("SliceThickness")
            if thickness is not None and float(thickness) > 0:
                return float(thickness)
    return float(np.linalg.norm(steps[:, 2]))


def read_dicom_seg(path: str | os.PathLike, *, tissues: dict[int, Tissue] = LABELS,
                   reference: Geometry | None = None):
    """A DICOM SEG (binary, fractional or label map) as a (k, j, i) uint8 label map with CardiacAI codes, on the
    lattice of the frames it holds (usually only the segmented slices), stacked along the slice normal as
    :func:`~cardiac_ai.io.dicom.read_dicom_series` stacks a series.

    Returns a :class:`~cardiac_ai.io.seg_nrrd.SegmentationFile`: ``labels`` and one ``SegmentInfo`` per segment
    (``label_value`` is the SEG's segment number).

    Segments are matched by tracking ID, label, then coded type and anatomic region; where segments overlap, the
    higher code wins (scar over myocardium, never a whole heart over its parts; logged). Fractional segments are
    the voxels of probability >= 0.5. With a ``reference`` (the image's geometry), a single frame takes the
    reference's slice spacing (it has none of its own), and frames with gaps (every other slice segmented, which
    highdicom stacks at twice the spacing) are spread onto the reference's spacing. Place the result on an image with
    :func:`~cardiac_ai.geometry.pad_to_reference_grid`, which reorders and pads it.

    Raises
    ------
    DataError
        A file that is not a readable DICOM SEG, or whose frames do not form one regular volume.
    InputError
        A segment that matches no CardiacAI structure.
    """
    import highdicom as hd

    from .seg_nrrd import SegmentationFile, SegmentInfo

    source = Path(path)
    if not source.is_file():
        raise DataError(f"DICOM SEG file not found: {source}")
    try:
        segmentation = hd.seg.segread(str(source))
    except Exception as error:  # pydicom and highdicom raise many types for a damaged or foreign file
        raise DataError(f"Cannot read {source} as a DICOM SEG: {error}") from error
    segments = [segment for segment in segmentation.SegmentSequence
                if int(segment.SegmentNumber) != 0]  # 0: a LABELMAP SEG's background
    codes = {int(segment.SegmentNumber): _code_of_segment(segment, tissues, source) for segment in segments}
    try:
        volume = segmentation.get_volume(combine_segments=False, segment_numbers=sorted(codes))
    except (ValueError, RuntimeError) as error:
        raise DataError(f"{source}: its frames do not form one volume ({error}); export it on the image's "
                        "slices.") from error
    masks = np.asarray(volume.array)
    if masks.ndim == 3:  # one segment: no channel axis
        masks = masks[..., np.newaxis]
    fractional = str(getattr(segmentation, "SegmentationType", "")).upper() == "FRACTIONAL"
    present = masks >= 0.5 if fractional else masks > 0
    labels = np.zeros(masks.shape[:3], np.uint8)
    overlaps = 0
    for channel, number in sorted(enumerate(sorted(codes)), key=lambda item: overlap_priority(codes[item[1]])):
        overlaps += int(np.count_nonzero(present[..., channel] & (labels != 0)))
        labels[present[..., channel]] = codes[number]  # ascending priority: MVO over scar, a heart under its parts
    if overlaps:
        log.warning("%s: segments overlap in %d voxels; the higher label code wins there (a whole heart never over "
                    "its parts).", source, overlaps)
    affine = np.asarray(volume.affine, dtype=np.float64)  # (slice, row, column) index -> LPS mm
    steps = affine[:3, [2, 1, 0]].copy()  # columns for (i, j, k) = (column, row, slice)
    origin = affine[:3, 3].copy()
    normal = np.cross(steps[:, 0], steps[:, 1])
    if labels.shape[0] > 1 and float(steps[:, 2] @ normal) < 0:  # highdicom may stack against the normal
        labels = np.ascontiguousarray(labels[::-1])
        origin = origin + (masks.shape[0] - 1) * steps[:, 2]
        steps[:, 2] = -steps[:, 2]
    unit_normal = normal / max(np.linalg.norm(normal), 1e-12)
    reference_step = None  # the reference's slice spacing along this SEG's normal, when it has such an axis
    if reference is not None:
        along = np.abs(reference.direction_matrix.T @ unit_normal)
        if along.max() > 1.0 - 1e-4:
            reference_step = float(reference.spacing_mm[int(np.argmax(along))])
    if labels.shape[0] == 1:  # one frame: only its plane is known; the slice step is the image's
        thickness = reference_step if reference_step is not None else _frame_thickness(segmentation, steps)
        steps[:, 2] = unit_normal * thickness
    elif reference_step is not None:
        # segmented slices with gaps (every other slice): highdicom's step is a multiple of the image's
        ratio = float(np.linalg.norm(steps[:, 2])) / reference_step
        gap = int(round(ratio))
        if gap > 1 and abs(ratio - gap) < 1e-3:
            spread = np.zeros(((labels.shape[0] - 1) * gap + 1, *labels.shape[1:]), np.uint8)
            spread[::gap] = labels
            labels = spread
            steps[:, 2] = steps[:, 2] / gap
    spacing = np.linalg.norm(steps, axis=0)
    if np.any(spacing <= 0):
        raise DataError(f"{source}: its frames have a zero spacing.")
    geometry = Geometry(tuple(float(v) for v in spacing), tuple(float(v) for v in origin),
                        tuple(float(v) for v in (steps / spacing).ravel()))
    if reference is not None and _same_grid_to_header_precision(geometry, reference):
        # a SEG of the image's series whose headers round the orientation (e.g. to 3 decimals): highdicom's grid
        # differs from the image reader's by that rounding only, which moves a slice by a few hundredths of a voxel
        geometry = _onto_reference_lattice(geometry, reference)
    infos = [SegmentInfo(segment_id=str(getattr(segment, "TrackingID", "") or segment.SegmentNumber),
                         name=str(getattr(segment, "SegmentLabel", "")), color_rgb=None,
                         code=codes[int(segment.SegmentNumber)], terminology=None,
                         label_value=int(segment.SegmentNumber), layer=0) for segment in segments]
    return SegmentationFile(Volume(labels, geometry), infos)

