"""Reading a DICOM image series from a folder as a :class:`~cardiac_ai.geometry.Volume`.

Slices are ordered by their position along the slice normal (the cross product of the row and column
direction cosines), never by file name or InstanceNumber, which exporters often scramble. Geometry follows
DICOM's patient coordinate system, which is LPS, so no sign flips are needed:

- i (array's last axis) runs along the columns of a slice, direction = ImageOrientationPatient[0:3] (row cosine),
  spacing = PixelSpacing[1] (the distance between adjacent columns);
- j runs along the rows, direction = ImageOrientationPatient[3:6] (column cosine), spacing = PixelSpacing[0];
- k runs across slices, direction = row cosine x column cosine, spacing from the slice positions;
- the origin is ImagePositionPatient of the first slice in that order.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from .atomic import warn_for_report

__all__ = [
    "DicomSeriesInfo",
    "list_dicom_series",
    "read_dicom_series",
    "read_dicom_series_and_headers",
    "series_headers",
    "slice_thickness_stated",
    "series_listing",
]

log = logging.getLogger(__name__)

#: Modalities of objects stored beside images that are not images to read (segmentations, reports, presentation
#: states, structure sets): a folder holding CardiacAI's own DICOM SEG beside its series still reads as one series.
_NOT_IMAGE_MODALITIES = frozenset({"SEG", "SR", "PR", "RTSTRUCT", "KO", "REG"})

#: Largest allowed difference between two slices' ImageOrientationPatient values (direction cosines).
_ORIENTATION_TOLERANCE = 1e-4
#: Largest allowed deviation of one slice gap from the median gap, as a fraction of the median gap.
_GAP_TOLERANCE = 0.10


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One image series found in a DICOM folder.

    Attributes
    ----------
    series_uid : SeriesInstanceUID, what :func:`read_dicom_series` takes as ``series_uid``.
    description : SeriesDescription ("" when absent).
    n_files : number of readable DICOM files of this series.
    orientation : ImageOrientationPatient of the first file (row cosine then column cosine, LPS), or None when
        absent. A series whose files disagree still lists the first file's value; reading it raises InputError.
    modality : Modality ("" when absent), e.g. "MR".
    series_number : SeriesNumber, or None when absent.
    files : the files of the series, sorted by path (not by slice position).
    """

    series_uid: str
    description: str
    n_files: int
    orientation: tuple[float, float, float, float, float, float] | None
    modality: str = ""
    series_number: int | None = None
    files: tuple[Path, ...] = ()

    def describe(self) -> str:
        """One line for error messages and listings."""
        number = f"#{self.series_number} " if self.series_number is not None else ""
        description = self.description or "(no description)"
        return f"{number}{description!r} [{self.modality or '?'}], {self.n_files} files, SeriesInstanceUID {self.series_uid}"


#: File-name suffixes of DICOM files. Files without a suffix, or whose "suffix" is a number (names made of UIDs),
#: are DICOM too in most exports (IM000001, 1.3.12.2.1107.5.2.32.35162.2010).
_DICOM_SUFFIXES = frozenset({".dcm", ".dicom", ".ima"})
#: Files without suffix that DICOM media and scanner exports hold beside the images (often empty, like LOCKFILE):
#: never taken for an unreadable image.
_EXPORT_HOUSEKEEPING_NAMES = frozenset({"LOCKFILE", "VERSION", "DICOMDIR"})
#: MediaStorageSOPClassUID of a DICOMDIR, the index of a DICOM medium: no image of its own.
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
#: How many unreadable files an error message names.
_NAMED_FILES = 3


def _read_header(path: Path):
    """``(dataset, None)``: the file read without pixel data; ``(None, reason)`` when pydicom cannot read it."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=True), None
    except InvalidDicomError as e:  # pydicom's words for a missing preamble end in "Use force=True..."
        reason = "no 'DICM' marker at byte 128" if "DICM" in str(e) else _first_line(e)
        return None, f"not a DICOM file ({reason})"
    except Exception as e:  # truncated or malformed files raise many types (EOFError, struct.error, ...)
        return None, f"unreadable ({type(e).__name__}: {_first_line(e)})"


def _first_line(error: Exception, limit: int = 160) -> str:
    line = (str(error).strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _looks_like_dicom(path: Path) -> bool:
    """Whether a file that pydicom cannot read was meant to be DICOM: the 'DICM' marker at byte 128, a DICOM
    suffix, or (for a name that is not hidden) no suffix or a number as suffix, unless the file is text (a README)."""
    try:
        with open(path, "rb") as file:
            head = file.read(512)
    except OSError:
        return True
    if head[128:132] == b"DICM":
        return True
    if path.name.upper() in _EXPORT_HOUSEKEEPING_NAMES or path.name.startswith("._"):
        return False  # "._NAME": macOS's resource-fork companion of NAME on a non-Mac disk, never an image
    suffix = path.suffix.lower()
    if suffix in _DICOM_SUFFIXES:
        return True
    if path.name.startswith(".") or (suffix and not suffix[1:].isdigit()):
        return False
    text = head.decode("utf-8", errors="replace")
    if len(head) == 512:
        text = text.rstrip("\ufffd")  # a character the 512 bytes cut in two
    is_text = bool(text) and all((c.isprintable() or c.isspace()) and c != "\ufffd" for c in text)
    return not is_text


def _is_dicomdir(dataset) -> bool:
    meta = getattr(dataset, "file_meta", None)
    sop_class = str(meta.get("MediaStorageSOPClassUID", "")) if meta is not None else ""
    return sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in dataset


def _is_image_storage(dataset) -> bool:
    """Whether the SOP class (dataset's, else the file meta's) is an image storage class, which must hold Rows."""
    from pydicom.uid import UID

    meta = getattr(dataset, "file_meta", None)
    sop_class = dataset.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta is not None else None)
    return bool(sop_class) and UID(str(sop_class)).name.endswith("Image Storage")


def _unreadable_files_message(unreadable: list[tuple[Path, str]]) -> str:
    named = "; ".join(f"{path} ({reason})" for path, reason in unreadable[:_NAMED_FILES])
    more = f"; and {len(unreadable) - _NAMED_FILES} more" if len(unreadable) > _NAMED_FILES else ""
    return f"{len(unreadable)} file(s) that look like DICOM cannot be read: {named}{more}."


def _float_tuple(values, length: int) -> tuple[float, ...] | None:
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return result if len(result) == length else None


def _scan(folder: Path, *, report_skipped: bool = True) -> dict[str, tuple[DicomSeriesInfo, list]]:
    """Map SeriesInstanceUID -> (info, headers in path order)."""
    warn = log.warning if report_skipped else log.debug  # a second scan of one folder (its SEG) says it once
    inform = log.info if report_skipped else log.debug
    if not folder.exists():
        raise DataError(f"DICOM folder not found: {folder}")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass the folder that holds the DICOM series.")
    paths = sorted(p for p in folder.rglob("*") if p.is_file())
    groups: dict[str, list] = {}
    unreadable: list[tuple[Path, str]] = []
    for path in paths:
        dataset, problem = _read_header(path)
        if dataset is None:
            if _looks_like_dicom(path):
                unreadable.append((path, problem))
            else:
                warn("Skipping %s: %s.", path, problem)
            continue
        if _is_dicomdir(dataset):
            inform("Skipping %s: a DICOMDIR (the index of a DICOM medium), not an image.", path)
            continue
        uid = dataset.get("SeriesInstanceUID")
        if not uid:  # every DICOM object but a DICOMDIR has one: pydicom read a header cut short or garbled
            unreadable.append((path, "its header has no SeriesInstanceUID: truncated or corrupt"))
            continue
        if "Rows" not in dataset or "Columns" not in dataset:
            if _is_image_storage(dataset):
                unreadable.append((path, "an image whose header has no Rows/Columns: truncated or corrupt"))
            else:
                warn("Skipping %s: DICOM file without an image (no Rows/Columns).", path)
            continue
        if str(dataset.get("Modality", "")) in _NOT_IMAGE_MODALITIES:
            inform("Skipping %s: a %s object, not an image (e.g. an earlier segmentation).", path,
                     dataset.get("Modality"))
            continue
        dataset.filename = str(path)
        groups.setdefault(str(uid), []).append(dataset)
    if not groups:
        found = f" {_unreadable_files_message(unreadable)}" if unreadable else ""
        raise DataError(
            f"No readable DICOM image found in {folder} ({len(paths)} files checked).{found} "
            "Check that the folder holds DICOM image files (not only a DICOMDIR or other data)."
        )
    if unreadable:
        raise DataError(
            f"{folder}: {_unreadable_files_message(unreadable)} A series read without them could silently miss "
            "slices. Copy or export the series again, or remove these files from the folder if they are not part "
            "of it, and rerun."
        )
    result = {}
    for uid, datasets in groups.items():
        first = datasets[0]
        try:
            number = int(first.get("SeriesNumber"))
        except (TypeError, ValueError):
            number = None
        info = DicomSeriesInfo(
            series_uid=uid,
            description=str(first.get("SeriesDescription", "") or ""),
            n_files=len(datasets),
            orientation=_float_tuple(first.get("ImageOrientationPatient", ()), 6),  # type: ignore[arg-type]
            modality=str(first.get("Modality", "") or ""),
            series_number=number,
            files=tuple(Path(d.filename) for d in datasets),
        )
        result[uid] = (info, datasets)
    return result


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """List the image series in a DICOM folder (searched recursively), ordered by SeriesNumber then UID.

    Only headers are read (``stop_before_pixels``). Files that are not DICOM (text, other suffixes) are skipped with
    a logged warning, a DICOMDIR and non-image objects (SEG, SR, ...) with an INFO line.

    Raises
    ------
    DataError
        If the folder does not exist or holds no readable DICOM image, or if files that look like DICOM (the 'DICM'
        marker, a .dcm/.ima suffix, or no suffix) cannot be read: a series without them could miss slices.
    """
    series = _scan(Path(folder))
    infos = [info for info, _ in series.values()]
    return sorted(infos, key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid))


def series_listing(infos: list[DicomSeriesInfo]) -> str:
    """One line per series (UID, number, description, slices), for a message asking the user to choose one."""
    return "\n".join(f"  - {info.describe()}" for info in infos)


def _slice_geometry(info: DicomSeriesInfo, datasets: list) -> tuple[list, Geometry]:
    """Sort the series' headers along the slice normal and compute its geometry."""
    multi_frame = next((d for d in datasets if _frame_count(d) > 1), None)
    if multi_frame is not None:
        raise InputError(
            f"{multi_frame.filename} is a multi-frame DICOM file ({_frame_count(multi_frame)} frames, e.g. Enhanced "
            "MR); a DICOM folder is read as a series of single-frame images. Give the file itself as the input "
            "(it is read through SimpleITK; no DICOM SEG is written for it), or export the series as single-frame "
            "MR Image Storage."
        )
    orientations = []
    positions = []
    for dataset in datasets:
        orientation = _float_tuple(dataset.get("ImageOrientationPatient", ()), 6)
        position = _float_tuple(dataset.get("ImagePositionPatient", ()), 3)
        if orientation is None or position is None:
            raise InputError(
                f"{dataset.filename} (series {info.series_uid}) lacks ImageOrientationPatient or "
                "ImagePositionPatient, so its position in the patient is unknown. CardiacAI needs image-plane "
                "geometry; export the series as MR/CT Image Storage rather than a secondary capture."
            )
        orientations.append(orientation)
        positions.append(position)
    orientations_array = np.asarray(orientations)
    spread = np.abs(orientations_array - orientations_array[0]).max(axis=1)
    if np.any(spread > _ORIENTATION_TOLERANCE):
        distinct = np.unique(np.round(orientations_array, 4), axis=0)
        example = next(d.filename for d, s in zip(datasets, spread) if s > _ORIENTATION_TOLERANCE)
        raise InputError(
            f"Series {info.series_uid} ({info.description or 'no description'}) mixes {len(distinct)} slice "
            f"orientations (ImageOrientationPatient {distinct.tolist()}); e.g. {example} differs from "
            f"{datasets[0].filename}. A volume needs parallel slices: split the series (e.g. short-axis and "
            "long-axis views) into separate folders or series."
        )
    row_cosine = orientations_array[0, :3]
    column_cosine = orientations_array[0, 3:]
    if abs(np.linalg.norm(row_cosine) - 1) > 1e-3 or abs(np.linalg.norm(column_cosine) - 1) > 1e-3:
        raise InputError(
            f"Series {info.series_uid}: ImageOrientationPatient {orientations[0]} does not hold two unit vectors."
        )
    normal = np.cross(row_cosine, column_cosine)
    if np.linalg.norm(normal) < 1e-3:
        raise InputError(
            f"Series {info.series_uid}: row and column directions {orientations[0]} are parallel; "
            "the ImageOrientationPatient is broken."
        )
    # headers round the cosines (often to 5 or 6 digits): made exactly orthonormal, as ITK and highdicom do, so
    # that a DICOM SEG or label map written on this geometry and read back by them lies on the same grid
    row_cosine = row_cosine / np.linalg.norm(row_cosine)
    column_cosine = column_cosine - (column_cosine @ row_cosine) * row_cosine
    column_cosine = column_cosine / np.linalg.norm(column_cosine)
    normal = np.cross(row_cosine, column_cosine)

    positions_array = np.asarray(positions)
    distances = positions_array @ normal
    order = np.argsort(distances, kind="stable")
    sorted_datasets = [datasets[i] for i in order]
    distances = distances[order]
    positions_array = positions_array[order]

    shapes = {(int(d.Rows), int(d.Columns)) for d in sorted_datasets}
    if len(shapes) > 1:
        raise InputError(
            f"Series {info.series_uid} mixes image sizes {sorted(shapes)} (rows, columns); a volume needs one size."
        )
    spacings = {_float_tuple(d.get("PixelSpacing", ()), 2) for d in sorted_datasets}
    if None in spacings:
        raise InputError(
            f"Series {info.series_uid} lacks PixelSpacing in some files; the pixel size is unknown."
        )
    if len(spacings) > 1:
        raise InputError(f"Series {info.series_uid} mixes pixel spacings {sorted(spacings)} (row, column) mm.")
    row_spacing, column_spacing = spacings.pop()  # type: ignore[misc]

    if len(sorted_datasets) == 1:
        thickness = sorted_datasets[0].get("SliceThickness")
        try:
            slice_spacing = float(thickness)
        except (TypeError, ValueError):
            slice_spacing = 0.0
        if slice_spacing <= 0:
            warn_for_report(log, f"Series {info.series_uid} has a single slice without SliceThickness; using 1 mm as "
                                 "slice spacing.")
            slice_spacing = 1.0
    else:
        gaps = np.diff(distances)
        duplicate = np.flatnonzero(gaps < 1e-3)
        if duplicate.size:
            first = sorted_datasets[duplicate[0]]
            second = sorted_datasets[duplicate[0] + 1]
            raise InputError(
                f"Series {info.series_uid} has {duplicate.size} repeated slice position(s), first at "
                f"{distances[duplicate[0]]:.3f} mm along the slice normal, "
                f"e.g. {first.filename} and {second.filename}. This happens with cine or multi-echo series "
                "(several images per position) and duplicated files; export one time frame or echo per series."
            )
        # from the first to the last slice, not the median gap: positions rounded to 0.1 mm in the headers would
        # otherwise give 9.96 instead of 10 mm, and volumes 0.4 % off
        slice_spacing = float((distances[-1] - distances[0]) / (len(distances) - 1))
        uneven = np.abs(gaps - slice_spacing) > _GAP_TOLERANCE * slice_spacing
        if np.any(uneven):
            raise InputError(
                f"Series {info.series_uid} has uneven slice gaps {np.round(gaps, 3).tolist()} mm (mean "
                f"{slice_spacing:.3f} mm; allowed deviation {_GAP_TOLERANCE:.0%}). Missing slices cannot be "
                "placed on a regular grid: check that all files of the series were exported."
            )
        offsets = positions_array - positions_array[0]
        in_plane = offsets - np.outer(offsets @ normal, normal)
        if np.max(np.linalg.norm(in_plane, axis=1)) > _GAP_TOLERANCE * slice_spacing + 1e-3:
            raise InputError(
                f"Series {info.series_uid}: slice positions move within the slice plane (up to "
                f"{np.max(np.linalg.norm(in_plane, axis=1)):.2f} mm) instead of along the slice normal "
                "(a tilted or sheared stack). Resample it onto a regular grid first."
            )

    direction = np.column_stack([row_cosine, column_cosine, normal])
    geometry = Geometry(
        spacing_mm=(column_spacing, row_spacing, slice_spacing),
        origin_lps_mm=tuple(positions_array[0]),
        direction_lps=tuple(direction.ravel()),
    )
    return sorted_datasets, geometry


def _frame_count(dataset) -> int:
    try:
        return int(dataset.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        return 1


def _read_pixels(path: str) -> np.ndarray:
    """One slice's modality values (RescaleSlope and RescaleIntercept applied), float32."""
    return _read_slice(path)[0]


def _read_slice(path: str) -> tuple[np.ndarray, bool]:
    """One slice's modality values, float32, and whether the reader already showed a MONOCHROME1 slice as
    MONOCHROME2 (SimpleITK's GDCM reader inverts it; pydicom does not)."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path)
        if _frame_count(dataset) > 1:
            raise InputError(
                f"{path} is a multi-frame DICOM file ({dataset.NumberOfFrames} frames); CardiacAI reads "
                "single-frame image series. Give the file itself as the input, or convert it to NIfTI or NRRD."
            )
        try:
            pixels = dataset.pixel_array
        except Exception as pydicom_error:  # no decoder for the transfer syntax here (e.g. JPEG Lossless)
            return _read_pixels_with_itk(path, dataset, pydicom_error), _is_monochrome1(dataset)
    except (InputError, DataError):
        raise
    except Exception as e:  # pydicom raises many types for truncated data
        raise DataError(f"Cannot read the pixel data of {path}: {e}") from e
    if pixels.ndim != 2:
        raise InputError(
            f"{path} holds pixel data of shape {pixels.shape}; CardiacAI needs greyscale (one sample per pixel)."
        )
    slope = float(dataset.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(dataset.get("RescaleIntercept", 0.0) or 0.0)
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept), False


def _is_monochrome1(dataset) -> bool:
    return str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper() == "MONOCHROME1"


def _read_pixels_with_itk(path: str, dataset, pydicom_error: Exception) -> np.ndarray:
    """The slice decoded by SimpleITK (GDCM), which reads the compressed transfer syntaxes PACS send (JPEG Lossless,
    the usual one for MR) that pydicom needs extra packages for; ITK applies RescaleSlope and RescaleIntercept."""
    import SimpleITK as sitk

    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as itk_error:
        name = getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")
        raise DataError(f"Cannot read the pixel data of {path} ({name}): pydicom: {_first_line(pydicom_error)}; "
                        f"SimpleITK: {_first_line(itk_error)}") from itk_error
    pixels = sitk.GetArrayFromImage(image)
    pixels = pixels[0] if pixels.ndim == 3 and pixels.shape[0] == 1 else pixels
    if pixels.ndim != 2 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path} holds pixel data of shape {pixels.shape}; CardiacAI needs greyscale (one sample per pixel)."
        )
    if pixels.shape != (int(dataset.Rows), int(dataset.Columns)):
        raise DataError(f"Cannot read the pixel data of {path}: SimpleITK gave {pixels.shape} pixels for a "
                        f"{int(dataset.Rows)} x {int(dataset.Columns)} image.")
    return pixels.astype(np.float32)


def _as_monochrome2(array: np.ndarray, datasets: Sequence, info: DicomSeriesInfo,
                    shown: Sequence[bool]) -> np.ndarray:
    """``array`` with MONOCHROME1 slices inverted (their lowest value is shown white): CardiacAI's models and
    intensity rules expect bright blood, as every MONOCHROME2 scanner stores it. ``shown``: the slices the reader
    already showed as MONOCHROME2 (SimpleITK inverts the ones it decodes), which are left as they are."""
    inverted = [_is_monochrome1(d) for d in datasets]
    if not any(inverted):
        return array
    if not all(inverted):
        raise InputError(f"Series {info.series_uid} mixes MONOCHROME1 and MONOCHROME2 slices (inverted and plain "
                         "greyscale); export it again with one photometric interpretation.")
    raw = np.flatnonzero(~np.asarray(shown, dtype=bool))
    if raw.size == 0:
        return array
    if raw.size < len(datasets):
        raise InputError(f"Series {info.series_uid} is MONOCHROME1 and only some of its slices are compressed: "
                         "their values cannot be put on one scale. Export it again uncompressed or all compressed.")
    log.info("Series %s is MONOCHROME1 (lowest value shown white): its values are inverted within their range.",
             info.series_uid)
    return (array.max() + array.min()) - array


def series_headers(
    folder: str | os.PathLike, *, series_uid: str | None = None, frame: int | None = None,
    report_skipped: bool = True,
) -> tuple[DicomSeriesInfo, list, Geometry]:
    """The headers (no pixel data) of one image series in slice order (k, as :func:`read_dicom_series` stacks
    them), with the series' description and geometry; what a DICOM SEG of a volume read from it refers to.

    ``report_skipped`` False logs the files it skips at DEBUG level only: for a second scan of a folder already
    read (writing its DICOM SEG), whose skipped files the read has reported.

    Raises
    ------
    DataError, InputError
        As :func:`read_dicom_series`, before any pixel is read.
    """
    source = Path(folder)
    series = _scan(source, report_skipped=report_skipped)
    infos = sorted(
        (info for info, _ in series.values()),
        key=lambda s: (s.series_number is None, s.series_number or 0, s.series_uid),
    )
    if series_uid is None:
        if len(series) > 1:
            raise InputError(
                f"{source} holds {len(series)} DICOM series:\n{series_listing(infos)}\n"
                "Choose one with series_uid=... (on the command line: --series-uid UID), "
                "or put each series in its own folder."
            )
        series_uid = infos[0].series_uid
    if series_uid not in series:
        raise InputError(
            f"Series {series_uid} is not in {source}; it holds:\n{series_listing(infos)}\n"
            "Pass one of these SeriesInstanceUIDs."
        )
    info, datasets = series[series_uid]
    sorted_datasets, geometry = _slice_geometry(info, _one_phase(info, _unique_instances(datasets), frame))
    return info, sorted_datasets, geometry


def _unique_instances(datasets: list) -> list:
    """``datasets`` without second copies of one image (the same SOPInstanceUID, e.g. a file copied twice into the
    export), with an INFO line; different images at one position stay (cine phases, or an error later)."""
    seen: dict[str, Any] = {}
    for dataset in datasets:
        seen.setdefault(str(dataset.get("SOPInstanceUID", "")) or str(dataset.filename), dataset)
    if len(seen) < len(datasets):
        log.info("Skipped %d second copies of DICOM images (files with a SOPInstanceUID already read).",
                 len(datasets) - len(seen))
    return list(seen.values())


def _trigger_time(dataset) -> float | None:
    try:
        return float(dataset.get("TriggerTime"))
    except (TypeError, ValueError):
        return None


def _one_phase(info: DicomSeriesInfo, datasets: list, frame: int | None) -> list:
    """The images of one cardiac phase of a cine series that holds every phase of every slice position (several
    images per position, told apart by TriggerTime): phase ``frame``, counted from 0 in trigger-time order at each
    position. A series of one image per position is returned as it is (``frame`` must be None then)."""
    by_position: dict[tuple, list] = {}
    for dataset in datasets:
        position = _float_tuple(dataset.get("ImagePositionPatient", ()), 3)
        key = tuple(np.round(position, 2)) if position is not None else (str(dataset.filename),)
        by_position.setdefault(key, []).append(dataset)
    counts = {len(group) for group in by_position.values()}
    phased = max(counts) > 1 and all(
        len({_trigger_time(d) for d in group}) == len(group) and None not in {_trigger_time(d) for d in group}
        for group in by_position.values() if len(group) > 1)
    if not phased:
        if frame is not None:
            raise InputError(f"--frame {frame} was given, but series {info.series_uid} holds one image per slice "
                             "position, not the phases of a cine series.")
        return datasets  # repeated positions without trigger times are refused with the geometry
    if len(counts) > 1:
        raise InputError(f"Series {info.series_uid} is a cine series with {min(counts)} to {max(counts)} phases per "
                         "slice position: some images are missing. Export the whole series again.")
    phases = counts.pop()
    if frame is None:
        raise InputError(f"Series {info.series_uid} is a cine series: {len(by_position)} slice positions with "
                         f"{phases} phases each. Choose a phase (0 to {phases - 1}, in trigger-time order): --frame N "
                         "in segment-cine, cam, convert and batch, --ed-frame N --es-frame M in function; for the "
                         "other commands convert the phase first with `cardiacai convert DIR --frame N --out "
                         "phase.nii.gz`.")
    if not 0 <= frame < phases:
        raise InputError(f"--frame {frame} is outside the {phases} phases (0 to {phases - 1}) of series "
                         f"{info.series_uid}.")
    chosen = [sorted(group, key=lambda d: (_trigger_time(d), int(d.get("InstanceNumber", 0) or 0)))[frame]
              for group in by_position.values()]
    times = sorted(_trigger_time(d) for d in chosen)
    log.info("Series %s: phase %d of %d (trigger time %.0f to %.0f ms over the %d slice positions).",
             info.series_uid, frame, phases, times[0], times[-1], len(chosen))
    return chosen


def read_dicom_series(
    folder: str | os.PathLike, *, series_uid: str | None = None, frame: int | None = None
) -> Volume:
    """Read one DICOM image series as a (k, j, i) float32 volume with LPS geometry.

    Parameters
    ----------
    folder : folder holding the series' files (searched recursively; files that are not DICOM are skipped with a
        warning, but a file that looks like DICOM and cannot be read is refused, see :func:`list_dicom_series`).
    series_uid : SeriesInstanceUID to read; needed when the folder holds several series
        (see :func:`list_dicom_series`).
    frame : the phase to read of a cine series that holds every phase of every slice position (images at one
        position told apart by TriggerTime), counted from 0 in trigger-time order; needed for such a series, refused
        for another.

    Returns
    -------
    Volume
        Array (k, j, i) float32 with RescaleSlope/RescaleIntercept applied, slices ordered along the slice
        normal. Geometry as described in this module's docstring. A single slice gets SliceThickness as slice
        spacing (1 mm with a warning when absent).

    Raises
    ------
    DataError
        Missing folder, no readable DICOM image in it, files that look like DICOM but cannot be read (named, up to
        three), unreadable pixel data.
    InputError
        Several series and no ``series_uid``, an unknown ``series_uid``, mixed orientations, sizes or pixel
        spacings within the series, repeated slice positions, uneven slice gaps (> 10 %), missing geometry.
    """
    return read_dicom_series_and_headers(folder, series_uid=series_uid, frame=frame)[0]


def read_dicom_series_and_headers(folder: str | os.PathLike, *, series_uid: str | None = None,
                                  frame: int | None = None) -> tuple[Volume, list]:
    """:func:`read_dicom_series`, and the headers it read in slice order (k), for what the volume cannot say, such as
    whether a single slice stated its thickness (:func:`slice_thickness_stated`). Same errors."""
    info, sorted_datasets, geometry = series_headers(folder, series_uid=series_uid, frame=frame)
    slices = [_read_slice(d.filename) for d in sorted_datasets]
    array = _as_monochrome2(np.stack([pixels for pixels, _ in slices]), sorted_datasets, info,
                            [shown for _, shown in slices])
    log.info(
        "Read DICOM series %s: %d slices of %d x %d, spacing %s mm.",
        info.describe(), array.shape[0], array.shape[1], array.shape[2], geometry.spacing_mm,
    )
    return Volume(array, geometry), sorted_datasets


def slice_thickness_stated(headers: Sequence) -> bool:
    """Whether a series' headers (slice order) give its slice spacing: the positions of two or more slices do; a
    single slice needs a positive SliceThickness (without it :func:`read_dicom_series` gives it 1 mm)."""
    if len(headers) > 1:
        return True
    try:
        return float(headers[0].get("SliceThickness")) > 0
    except (TypeError, ValueError):
        return False
