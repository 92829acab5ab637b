"""3D Slicer segmentation files (``.seg.nrrd``) through slicerio, with CardiacAI's names, colours and terminology.

The one place where array axis order changes: a :class:`~cardiac_ai.geometry.Volume` array is (k, j, i), while
slicerio (through pynrrd) holds voxels as (i, j, k) with ``ijkToLPS`` mapping (i, j, k, 1) to LPS. This module
transposes on the way out and back; nothing else in the package should.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from ..labels import (LABELS, Tissue, check_label_values, code_for_segment_name, overlap_priority,
                      segment_terminology_string, values_present)
from .atomic import atomic_path

__all__ = ["SegmentInfo", "SegmentationFile", "names_its_segments", "read_label_file", "read_label_map",
           "read_seg_nrrd", "seg_nrrd_has_segments", "write_seg_nrrd"]

log = logging.getLogger(__name__)

#: overlap_priority of every uint8 code, for whole arrays at once.
_PRIORITY = np.array([overlap_priority(code) for code in range(256)])


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a ``.seg.nrrd`` file as CardiacAI understands it.

    Attributes
    ----------
    segment_id : the segment's ID in the file (CardiacAI writes the tissue's machine name, e.g. "lv_myocardium").
    name : the segment's name shown in Slicer.
    color_rgb : colour, 0..1, or None when the file has none.
    code : the CardiacAI label code the segment was mapped to (see ``cardiac_ai.labels``).
    terminology : Slicer's TerminologyEntry string, or None.
    label_value : value of the segment's voxels in its layer of the file.
    layer : layer index in the file (0 unless segments overlap).
    """

    segment_id: str
    name: str
    color_rgb: tuple[float, float, float] | None
    code: int
    terminology: str | None
    label_value: int
    layer: int = 0


@dataclass(frozen=True)
class SegmentationFile:
    """What :func:`read_seg_nrrd` returns: one label map with CardiacAI codes, plus the segments it came from."""

    labels: Volume  # (k, j, i) uint8, CardiacAI codes
    segments: list[SegmentInfo]
    #: warnings logged while reading (a segment matched by its label value alone), for a report to keep
    notes: list[str] = field(default_factory=list)


def _terminology_dict(row: Tissue) -> dict:
    from slicerio.segmentation import terminology_entry_from_string

    return terminology_entry_from_string(segment_terminology_string(row))


def _check_labels(labels: Volume, tissues: Mapping[int, Tissue]) -> np.ndarray:
    if not isinstance(labels, Volume):
        raise InputError(f"write_seg_nrrd needs a Volume of labels, got {type(labels).__name__}.")
    if labels.axes != "kji":
        raise InputError(
            f"write_seg_nrrd needs one 3D label map (axes 'kji'), got axes {labels.axes!r} with shape "
            f"{labels.array.shape}. Write one frame at a time (volume.frame(t))."
        )
    array = labels.array
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise InputError(
            f"Label map must hold integer codes, got dtype {array.dtype}. Round and cast it explicitly "
            "(e.g. np.rint(x).astype(np.uint8)) after checking that it really is a label map."
        )
    check_label_values(array, allowed=set(tissues), what="Label map")
    return array.astype(np.uint8)


def write_seg_nrrd(
    labels: Volume,
    path: str | os.PathLike,
    *,
    tissues: Mapping[int, Tissue] = LABELS,
    reference: Volume | Geometry | None = None,
) -> Path:
    """Write a label map as a Slicer ``.seg.nrrd``: one segment per tissue code present, in one layer.

    Parameters
    ----------
    labels : Volume, axes "kji"
        Integer label map (k, j, i) with codes from ``tissues`` (0 = background). Written as uint8.
    path : output file, normally ending in ``.seg.nrrd``; written atomically (a failure leaves an old file intact).
    tissues : code -> Tissue table giving each segment's ID (``Tissue.name``), name (``display_name``), colour
        and terminology; defaults to CardiacAI's :data:`~cardiac_ai.labels.LABELS`.
    reference : the image the labels were computed on (or its Geometry); when given, the label map must share
        its grid, so that Slicer shows the segments on it without resampling.

    Returns
    -------
    Path of the written file. A label map with no foreground gives a valid file with zero segments.

    Raises
    ------
    InputError
        Not a 3D integer label map, codes missing from ``tissues``, or a grid that differs from ``reference``.
    """
    import slicerio

    array_kji = _check_labels(labels, tissues)
    geometry = labels.geometry
    if reference is not None:
        reference_geometry = reference.geometry if isinstance(reference, Volume) else reference
        if not isinstance(reference_geometry, Geometry):
            raise InputError(f"reference must be a Volume or Geometry, got {type(reference).__name__}.")
        if isinstance(reference, Volume) and reference.spatial_shape != labels.spatial_shape:
            raise InputError(
                f"Label map shape {labels.spatial_shape} (k, j, i) differs from the reference image's "
                f"{reference.spatial_shape}; segment the reference image itself or resample the labels onto it."
            )
        if not geometry.is_close(reference_geometry):
            raise InputError(
                f"Label map geometry {geometry.to_dict()} differs from the reference image's "
                f"{reference_geometry.to_dict()}; resample the labels onto the reference grid first."
            )

    codes = [int(c) for c in values_present(array_kji) if c != 0]
    segments = []
    for code in codes:
        row = tissues[code]
        segments.append(
            {
                "id": row.name,
                "name": row.display_name,
                "color": [float(c) for c in row.color_rgb],
                "labelValue": code,
                "layer": 0,
                "terminology": _terminology_dict(row),
                "nameAutoGenerated": False,
                "colorAutoGenerated": False,
            }
        )
    segmentation = {
        # The only transpose in the package: (k, j, i) -> slicerio's (i, j, k).
        "voxels": np.ascontiguousarray(array_kji.transpose(2, 1, 0)),
        "ijkToLPS": geometry.ijk_to_lps_matrix(),
        "segments": segments,
        "containedRepresentationNames": ["Binary labelmap"],
        "masterRepresentation": "Binary labelmap",
        "referenceImageExtentOffset": [0, 0, 0],
    }
    target = Path(path)
    with atomic_path(target) as temporary:
        # zlib level 1: a fifth of level 9's time (1.4 against 6.3 ms for an ACDC frame) for 8 KB instead of 3.5 KB
        slicerio.write_segmentation(str(temporary), segmentation, compression_level=1)
    log.info("Wrote %s with %d segments %s.", target, len(segments), [s["id"] for s in segments])
    return target


def _code_for_segment(segment: dict, tissues: Mapping[int, Tissue], source: Path, notes: list[str]) -> int:
    """Map a slicerio segment to a CardiacAI code: by ID, terminology, name, then its label value."""
    from slicerio.segmentation import terminology_entry_matches

    segment_id = str(segment.get("id", ""))
    name = str(segment.get("name", ""))
    for code, row in tissues.items():
        if segment_id == row.name:
            return code
    terminology = segment.get("terminology")
    if terminology and "category" in terminology and "type" in terminology:
        for code, row in tissues.items():
            try:
                if terminology_entry_matches(terminology, _terminology_dict(row)):
                    return code
            except (IndexError, KeyError):
                break
    for code, row in tissues.items():
        if name.lower() in (row.name.lower(), row.display_name.lower()):
            return code
    named = code_for_segment_name(name)  # short names (RV, Myo, LV...), as Slicer users type them
    if named is not None and named in tissues:
        return named
    label_value = int(segment.get("labelValue", 1))
    if label_value not in tissues:
        raise InputError(
            f"{source}: segment {name or segment_id!r} (label value {label_value}) matches no CardiacAI tissue by "
            f"ID, terminology or name, and its label value is not a CardiacAI code {sorted(tissues)}. "
            "Rename the segment (e.g. 'Left ventricle myocardium') or set its terminology in Slicer."
        )
    note = (f"{source}: segment {name or segment_id!r} matches no CardiacAI tissue by ID, terminology or name; "
            f"using its label value {label_value} ({tissues[label_value].display_name}).")
    log.warning("%s", note)
    notes.append(note)
    return label_value


def read_seg_nrrd(path: str | os.PathLike, *, tissues: Mapping[int, Tissue] = LABELS) -> SegmentationFile:
    """Read a Slicer ``.seg.nrrd`` into one (k, j, i) uint8 label map with CardiacAI codes.

    Each segment is mapped to a code by its ID (``Tissue.name``), its terminology (category, type, anatomic
    region), its name (``name`` or ``display_name``, any case), and only then its label value (logged).
    Files with overlapping segments (several layers) are merged; where segments overlap, the higher code wins
    (MVO over scar over myocardium; a whole-heart segment never over the structures it holds:
    :func:`~cardiac_ai.labels.overlap_priority`), with a logged warning.

    Parameters
    ----------
    path : ``.seg.nrrd`` file, as written by Slicer or :func:`write_seg_nrrd`.
    tissues : code -> Tissue table to map segments onto; defaults to :data:`~cardiac_ai.labels.LABELS`.

    Returns
    -------
    SegmentationFile
        ``labels``: Volume (k, j, i) uint8 with the file's geometry; ``segments``: one SegmentInfo per segment.

    Raises
    ------
    DataError
        Missing or unreadable file, or a file that is not a segmentation (3D or 4D layers) NRRD.
    InputError
        A segment that maps to no CardiacAI code.
    """
    import slicerio

    source = Path(path)
    if not source.is_file():
        raise DataError(f"Segmentation file not found: {source}")
    try:
        segmentation = slicerio.read_segmentation(str(source))
    except Exception as e:  # pynrrd and slicerio raise NRRDError, IOError, ValueError, ...
        raise DataError(f"Cannot read {source} as a Slicer segmentation: {e}") from e
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim == 3:
        layers = voxels[np.newaxis]
    elif voxels.ndim == 4:
        layers = voxels
    else:
        raise DataError(f"{source}: segmentation voxels have {voxels.ndim} dimensions; expected 3 or 4 (layers).")
    try:
        geometry = Geometry.from_ijk_to_ras_matrix(
            np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(segmentation["ijkToLPS"], dtype=np.float64)
        )
    except InputError as e:
        raise DataError(f"{source}: invalid geometry in the header: {e}") from e

    # slicerio's (i, j, k) -> our (k, j, i)
    layers_kji = np.ascontiguousarray(layers.transpose(0, 3, 2, 1))
    labels = np.zeros(layers_kji.shape[1:], dtype=np.uint8)
    segments: list[SegmentInfo] = []
    notes: list[str] = []
    for segment in segmentation.get("segments", []):
        label_value = int(segment.get("labelValue", 1))
        if label_value <= 0:  # 0 is every voxel of the layer outside its segments
            raise DataError(f"{source}: segment {segment.get('name') or segment.get('id')!r} has label value "
                            f"{label_value}, the value of its layer's background, so its voxels cannot be told from "
                            "the background. Save the segmentation again from 3D Slicer (each segment then gets a "
                            "value of 1 or more).")
        code = _code_for_segment(segment, tissues, source, notes)
        layer = int(segment.get("layer", 0))
        if not 0 <= layer < layers_kji.shape[0]:
            raise DataError(f"{source}: segment {segment.get('name')!r} refers to missing layer {layer}.")
        mask = layers_kji[layer] == label_value
        overlap = mask & (labels != 0) & (labels != code)
        if np.any(overlap):
            log.warning(
                "%s: segment %r overlaps other segments in %d voxels; the higher label code wins there (a whole "
                "heart never over its parts).", source, segment.get("name"), int(np.count_nonzero(overlap)),
            )
        keep = mask & ((labels == 0) | (_PRIORITY[labels] < overlap_priority(code)))
        labels[keep] = code
        terminology = segment.get("terminology")
        color = segment.get("color")
        segments.append(
            SegmentInfo(
                segment_id=str(segment.get("id", "")),
                name=str(segment.get("name", "")),
                color_rgb=tuple(float(c) for c in color[:3]) if color is not None else None,  # type: ignore[arg-type]
                code=code,
                terminology=_terminology_to_string(terminology) if terminology else None,
                label_value=label_value,
                layer=layer,
            )
        )
    if not segments and layers_kji.any():
        return SegmentationFile(_plain_label_map(layers_kji, geometry, tissues, source), [])
    check_label_values(labels, allowed=set(tissues), what=f"{source}")
    return SegmentationFile(Volume(labels, geometry), segments, notes)


PLAIN_LABEL_MAP_NOTE = ("has no segment metadata (a label map saved under a .seg.nrrd name, not by Slicer's "
                        "Segmentations module); its voxel values are read as CardiacAI label codes")


def _plain_label_map(layers_kji: np.ndarray, geometry: Geometry, tissues: Mapping[int, Tissue],
                     source: Path) -> Volume:
    """A ``.seg.nrrd`` without segments but with voxels: its values are taken as codes, never dropped silently."""
    if layers_kji.shape[0] != 1:
        raise DataError(f"{source} has {layers_kji.shape[0]} layers but no segment metadata saying what they hold.")
    values = layers_kji[0]
    check_label_values(values, allowed=set(tissues), what=f"{source}")
    log.warning("%s %s.", source, PLAIN_LABEL_MAP_NOTE)
    return Volume(values.astype(np.uint8), geometry)


def seg_nrrd_has_segments(path: str | os.PathLike) -> bool:
    """Whether a ``.seg.nrrd`` names its segments (Slicer's ``SegmentN_`` header fields); reads the header only."""
    import slicerio

    try:
        segmentation = slicerio.read_segmentation(str(path), skip_voxels=True)
    except Exception as e:  # pynrrd and slicerio raise NRRDError, IOError, ValueError, ...
        raise DataError(f"Cannot read {path} as a Slicer segmentation: {e}") from e
    return bool(segmentation.get("segments"))


def read_label_file(path: str | os.PathLike, *, tissues: Mapping[int, Tissue] = LABELS,
                    reference: Geometry | None = None) -> SegmentationFile:
    """Any label file as a (k, j, i) label map with CardiacAI codes and the segments it names: a volume file (values
    are the codes; no segments), a Slicer ``.seg.nrrd`` (segments matched by :func:`read_seg_nrrd`, overlapping
    layers merged; none for one without segment fields) or a DICOM SEG of any file name
    (:func:`~cardiac_ai.io.dicom_seg.read_dicom_seg`, on the lattice of its frames; ``reference``, the image's
    geometry, gives a one-frame or gapped SEG its slice spacing). Place the labels on an image with
    :func:`~cardiac_ai.geometry.pad_to_reference_grid`.

    Raises
    ------
    DataError
        Missing or unreadable file.
    InputError
        Values or segments outside the label table.
    """
    if str(path).lower().endswith(".seg.nrrd"):
        return read_seg_nrrd(path, tissues=tissues)
    from .dicom_seg import is_dicom_seg, read_dicom_seg
    from .volumes import read_volume

    if is_dicom_seg(path):
        return read_dicom_seg(path, tissues=dict(tissues), reference=reference)
    labels = read_volume(path)
    check_label_values(labels.array, allowed=set(tissues), what=str(path))
    return SegmentationFile(labels, [])


def read_label_map(path: str | os.PathLike, *, tissues: Mapping[int, Tissue] = LABELS,
                   reference: Geometry | None = None) -> Volume:
    """The label map of :func:`read_label_file` (what ``evaluate`` reads)."""
    return read_label_file(path, tissues=tissues, reference=reference).labels


def names_its_segments(path: str | os.PathLike) -> bool:
    """Whether a label file matches its structures by segment (a ``.seg.nrrd`` with segment fields, or a DICOM SEG)
    rather than by voxel value, so that another tool's value codes cannot apply to it."""
    from .dicom_seg import is_dicom_seg

    if str(path).lower().endswith(".seg.nrrd"):
        return Path(path).is_file() and seg_nrrd_has_segments(path)
    return is_dicom_seg(path)


def _terminology_to_string(terminology: dict) -> str | None:
    from slicerio.segmentation import terminology_entry_to_string

    try:
        return terminology_entry_to_string(terminology)
    except (KeyError, TypeError):
        return None
