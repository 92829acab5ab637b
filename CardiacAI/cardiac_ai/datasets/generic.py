"""Your own data: a folder of images, optional label maps and an optional table of image-level labels.

Layout::

    my_data/
      images/                 one volume per case; the case id is the file name without its suffix
        case01.nii.gz         any format cardiac_ai.io.read_volume reads: .nii, .nii.gz, .nrrd, .nhdr, .mha, .mhd,
        case02.nrrd           .png (one slice, pixel size unknown), or a sub-folder holding one DICOM series
        case03/               (the folder name is then the case id)
      labels/                 optional; a label map per case, named like its image (the suffix may differ)
        case01.nii.gz         CardiacAI codes: 0 background, 1 RV blood pool, 2 LV myocardium, 3 LV blood pool,
                              4 scar, 5 MVO; same size, spacing, origin and direction as the image
        case02.seg.nrrd       or a segmentation saved by 3D Slicer: segments matched by name or terminology,
                              on the image's voxel grid (cropped to its contents, as Slicer saves it, is fine)
      labels.csv              optional; weak labels for whole cases or single slices

``labels.csv`` needs a ``case_id`` column naming files in ``images/``. Optional columns: ``patient_id`` (cases of one
patient are kept in the same split; the default is the case id) and ``slice`` (the 0-based slice index k; a row with
a slice number labels that slice only, a row with an empty ``slice`` labels the whole case). Every other column is a
label (e.g. ``diagnosis``, ``fibrosis``); whole numbers are read as int, other numbers as float, the rest as text.
Empty cells, and cells that mark a missing value as pandas' ``read_csv`` does by default (``nan``, ``NaN``, ``NA``,
``N/A``, ``n/a``, ``#N/A``, ``NULL``, ``null``, ``None``, ``<NA>``, ...; see ``MISSING_VALUES``) or that read as a
floating-point NaN in any spelling (``NAN``), are skipped: the case or slice has no label in that column::

    case_id,patient_id,slice,diagnosis,fibrosis
    case01,p01,,DCM,
    case01,p01,4,,1
    case02,p02,,NOR,0

Cases without a label map or without a row are allowed: they have no labels of that kind.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..errors import DataError, InputError
from ..geometry import Volume
from ..io.formats import VOLUME_SUFFIXES
from .case import Case, CaseRef, ImageLabelValue, _read_image, _read_label_map

__all__ = ["GENERIC_SUFFIXES", "MISSING_VALUES", "list_generic", "load_generic_case"]

log = logging.getLogger(__name__)

#: File suffixes read from ``images/`` and ``labels/``; other files there are ignored with a warning.
GENERIC_SUFFIXES = (*VOLUME_SUFFIXES, ".seg.nrrd", ".png")  # .seg.nrrd: a label map saved by 3D Slicer

#: Cell texts of ``labels.csv`` that mean "no value", as an empty cell does: pandas' default ``na_values`` (so a
#: table written by ``DataFrame.to_csv`` with missing values reads back the same); any text that parses as a float
#: NaN is missing too.
MISSING_VALUES = frozenset({
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>", "N/A", "NA",
    "NULL", "NaN", "None", "n/a", "nan", "null",
})

_RESERVED_COLUMNS = ("case_id", "patient_id", "slice")
_COMPANION_SUFFIXES = (".raw", ".zraw", ".raw.gz", ".img")  # data files of .mhd / .nhdr headers


def _case_id(path: Path) -> str | None:
    """File name without its volume suffix; None for files that are not volumes."""
    if path.is_dir():
        return path.name
    name = path.name.lower()
    for suffix in sorted(GENERIC_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _index_folder(folder: Path, *, allow_dirs: bool) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir() and not allow_dirs:
            log.warning("Ignoring folder %s: label maps must be files.", path)
            continue
        case_id = _case_id(path)
        if case_id is None:
            if not path.name.lower().endswith(_COMPANION_SUFFIXES):
                log.warning("Ignoring %s: not a volume (%s).", path, ", ".join(GENERIC_SUFFIXES))
            continue
        if case_id in found:
            raise DataError(
                f"Two files in {folder} give case id {case_id!r}: {found[case_id].name} and {path.name}. "
                "Keep one file per case."
            )
        found[case_id] = path
    return found


def _is_missing(text: str) -> bool:
    """Whether a (stripped) labels.csv cell holds no value: see :data:`MISSING_VALUES`."""
    if text in MISSING_VALUES:
        return True
    try:
        return math.isnan(float(text))
    except ValueError:
        return False


def _parse_value(text: str) -> ImageLabelValue:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _read_label_table(
    path: Path, case_ids: set[str]
) -> tuple[dict[str, dict[str, ImageLabelValue]], dict[str, dict[int, dict[str, ImageLabelValue]]], dict[str, str]]:
    """(case labels, slice labels, patient ids) from labels.csv."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"Cannot read {path} as CSV: {e}") from e
    if "case_id" not in columns:
        raise DataError(
            f"{path} has no 'case_id' column (columns found: {columns}). The first line must name the columns, "
            "e.g. 'case_id,diagnosis'."
        )
    label_columns = [c for c in columns if c not in _RESERVED_COLUMNS and c]
    case_labels: dict[str, dict[str, ImageLabelValue]] = {}
    slice_labels: dict[str, dict[int, dict[str, ImageLabelValue]]] = defaultdict(dict)
    patients: dict[str, str] = {}
    for line_number, raw in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if isinstance(v, str) or v is None}
        case_id = row.get("case_id", "")
        if not case_id:
            raise DataError(f"{path}, line {line_number}: empty case_id.")
        if case_id not in case_ids:
            raise DataError(
                f"{path}, line {line_number}: case {case_id!r} has no image in {path.parent / 'images'}. "
                "Fix the case_id (the image file name without suffix) or remove the row."
            )
        patient_id = row.get("patient_id", "")
        if patient_id and patients.setdefault(case_id, patient_id) != patient_id:
            raise DataError(
                f"{path}, line {line_number}: case {case_id!r} has patient_id {patient_id!r} here but "
                f"{patients[case_id]!r} on an earlier line."
            )
        labels = {c: _parse_value(row[c]) for c in label_columns if not _is_missing(row.get(c, ""))}
        slice_text = row.get("slice", "")
        if slice_text:
            try:
                k = int(slice_text)
            except ValueError:
                raise DataError(
                    f"{path}, line {line_number}: slice must be a 0-based slice index, found {slice_text!r}."
                ) from None
            if k < 0:
                raise DataError(f"{path}, line {line_number}: slice must be >= 0, found {k}.")
            if k in slice_labels[case_id]:
                raise DataError(f"{path}, line {line_number}: case {case_id!r} slice {k} has a second row.")
            slice_labels[case_id][k] = labels
        else:
            if case_id in case_labels:
                raise DataError(f"{path}, line {line_number}: case {case_id!r} has a second whole-case row.")
            case_labels[case_id] = labels
    return case_labels, dict(slice_labels), patients


def list_generic(root: str | os.PathLike) -> list[CaseRef]:
    """List the cases of a folder laid out as this module describes, without reading any volume.

    Parameters
    ----------
    root : the folder holding ``images/`` and, optionally, ``labels/`` and ``labels.csv``.

    Returns
    -------
    list of CaseRef
        source ``"generic"``, sorted by case id; ``image_labels`` from the whole-case rows of ``labels.csv``;
        ``metadata`` with ``slice_labels`` ``{k: {name: value}}`` when the table has slice rows.

    Raises
    ------
    DataError
        No ``images/`` folder or no image in it; two files with one case id; a label map without an image; a
        ``labels.csv`` without a ``case_id`` column, with rows naming unknown cases, repeated rows or bad slice
        numbers. Messages name the file (and line).
    """
    folder = Path(root)
    image_folder, label_folder, table = folder / "images", folder / "labels", folder / "labels.csv"
    if not image_folder.is_dir():
        raise DataError(
            f"{folder} has no images/ folder. Put one volume per case in {image_folder} "
            "(see cardiac_ai.datasets.generic for the layout)."
        )
    images = _index_folder(image_folder, allow_dirs=True)
    if not images:
        raise DataError(f"No images in {image_folder} (readable suffixes: {', '.join(GENERIC_SUFFIXES)}).")
    label_maps: dict[str, Path] = {}
    if label_folder.is_dir():
        label_maps = _index_folder(label_folder, allow_dirs=False)
        orphans = sorted(set(label_maps) - set(images))
        if orphans:
            raise DataError(
                f"Label maps without an image: {[label_maps[c].name for c in orphans]} in {label_folder}. "
                f"Name each label map like its image in {image_folder}."
            )
    case_labels: dict[str, dict[str, ImageLabelValue]] = {}
    slice_labels: dict[str, dict[int, dict[str, ImageLabelValue]]] = {}
    patients: dict[str, str] = {}
    if table.is_file():
        case_labels, slice_labels, patients = _read_label_table(table, set(images))

    refs = []
    for case_id in sorted(images):
        metadata: dict[str, Any] = {"dataset": str(folder)}
        if case_id in slice_labels:
            metadata["slice_labels"] = slice_labels[case_id]
        refs.append(
            CaseRef(
                case_id=case_id,
                patient_id=patients.get(case_id, case_id),
                source="generic",
                image_paths=(images[case_id],),
                label_paths=(label_maps[case_id],) if case_id in label_maps else (),
                image_labels=case_labels.get(case_id, {}),
                metadata=metadata,
            )
        )
    log.info("Listed %d cases (%d with label maps) in %s", len(refs), len(label_maps), folder)
    return refs


def load_generic_case(ref: CaseRef) -> Case:
    """Read one case listed by :func:`list_generic`.

    Returns
    -------
    Case
        Image float32 (k, j, i); labels uint8 CardiacAI codes with the image's geometry, or None.

    Raises
    ------
    InputError
        A reference from another reader.
    DataError
        Unreadable file; label values outside the label table; a label map whose shape or geometry differs from
        its image's (both files named); slice labels for a slice index the image does not have.
    """
    if ref.source != "generic":
        raise InputError(f"load_generic_case needs a reference from list_generic, got source {ref.source!r}.")
    image_path = ref.image_paths[0]
    image = _read_image(image_path)
    metadata = dict(ref.metadata, image_path=str(image_path))
    labels = None
    if ref.label_paths:
        if ref.label_paths[0].name.lower().endswith(".seg.nrrd"):
            labels = _slicer_segmentation_on(ref.label_paths[0], image)
        else:
            labels = _read_label_map(ref.label_paths[0])
        metadata["label_path"] = str(ref.label_paths[0])
    n_slices = image.spatial_shape[0]
    bad = sorted(k for k in metadata.get("slice_labels", {}) if k >= n_slices)
    if bad:
        raise DataError(
            f"labels.csv gives labels for slices {bad} of case {ref.case_id!r}, but {image_path} has {n_slices} "
            f"slices (0..{n_slices - 1}). Slice numbers are 0-based indices k."
        )
    return Case(ref.case_id, ref.patient_id, image, labels, dict(ref.image_labels), metadata)


def _slicer_segmentation_on(path: Path, image: Volume) -> Volume:
    """A Slicer segmentation's CardiacAI codes (segments matched by name or terminology, not by Slicer's own label
    values) on its image's grid: Slicer saves a segmentation cropped to its contents."""
    from ..geometry import pad_to_reference_grid
    from ..io import read_label_map

    try:
        labels = read_label_map(path, reference=image.geometry)
        return pad_to_reference_grid(labels, image, what=f"segmentation {path.name}", reference_name="image")
    except InputError as error:
        raise DataError(str(error)) from error
