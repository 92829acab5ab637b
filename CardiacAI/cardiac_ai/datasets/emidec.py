"""The EMIDEC late gadolinium enhancement data set, as exported to 8-bit PNG slices.

Layout read here::

    dataset/
      train/Case_P001_slice000.png    one 256 x 256 short-axis LGE slice; Case_N... no infarct, Case_P... infarct
      trainannot/Case_P001_slice000.png   its mask: 0 background, 1 LV cavity, 2 normal myocardium,
                                          3 infarct (fibrosis), 4 no-reflow (microvascular obstruction)
      val/, valannot/                 the same for the validation part

Masks are mapped to CardiacAI codes: 1 -> 3 (LV blood pool), 2 -> 2 (LV myocardium), 3 -> 4 (scar),
4 -> 5 (MVO). Weak labels: a slice has ``fibrosis`` 1 when its mask holds scar or MVO; a patient has ``group``
``"N"`` or ``"P"`` from its name (and ``fibrosis`` 0 or 1 to match). The PNG export keeps no pixel size, so volumes
get spacing 1 x 1 x 1 and every distance is in pixels. In the cases inspected, slice 000 lies near the apex.

Cite A. Lalande et al., Medical Image Analysis 79:102428, 2022, for any use of the data.
"""
from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, SCAR
from .case import Case, CaseRef

__all__ = [
    "EMIDEC_LABEL_MAP",
    "EMIDEC_PIXEL_NOTE",
    "map_emidec_labels",
    "list_emidec",
    "list_emidec_slices",
    "load_emidec_case",
]

log = logging.getLogger(__name__)

#: EMIDEC mask value -> CardiacAI label code.
EMIDEC_LABEL_MAP: dict[int, int] = {0: 0, 1: LV_BLOOD_POOL, 2: LV_MYOCARDIUM, 3: SCAR, 4: MVO}

#: Stored in every EMIDEC case's metadata under ``"pixel_size"``.
EMIDEC_PIXEL_NOTE = "pixel size unknown (EMIDEC PNG export)"

_NAME_PATTERN = re.compile(r"^(?P<patient>Case_(?P<group>[NP])\d+)_slice(?P<slice>\d+)\.png$")
_UNIT_SPACING = (1.0, 1.0, 1.0)
_SPLITS = ("train", "val")


def map_emidec_labels(mask: np.ndarray, *, source: str | os.PathLike = "EMIDEC mask") -> np.ndarray:
    """Map EMIDEC mask values (0-4) to CardiacAI label codes.

    Parameters
    ----------
    mask : integer ndarray of any shape holding EMIDEC values 0-4.
    source : named in the error message (e.g. the mask file).

    Returns
    -------
    ndarray of uint8, same shape: 0, 3 (LV blood pool), 2 (LV myocardium), 4 (scar), 5 (MVO).

    Raises
    ------
    DataError
        If the mask holds another value; the message names ``source`` and the values found.
    """
    values = np.asarray(mask)
    if not np.issubdtype(values.dtype, np.integer):
        raise DataError(f"{source}: an EMIDEC mask must hold integers 0-4, got dtype {values.dtype}.")
    unknown = sorted(set(np.unique(values).tolist()) - set(EMIDEC_LABEL_MAP))
    if unknown:
        raise DataError(
            f"{source} holds mask values {unknown}; EMIDEC masks hold 0 background, 1 LV cavity, "
            "2 normal myocardium, 3 infarct, 4 no-reflow."
        )
    lookup = np.zeros(max(EMIDEC_LABEL_MAP) + 1, dtype=np.uint8)
    for emidec_code, code in EMIDEC_LABEL_MAP.items():
        lookup[emidec_code] = code
    return lookup[values]


def _dataset_folder(root: str | os.PathLike) -> Path:
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"EMIDEC folder not found: {folder}")
    if not any((folder / split).is_dir() for split in _SPLITS) and (folder / "dataset").is_dir():
        folder = folder / "dataset"
    return folder


def _read_png_array(path: Path) -> np.ndarray:
    """(j, i) array of one PNG slice, read through cardiac_ai.io with the unit spacing EMIDEC implies."""
    from ..io import read_volume

    return read_volume(path, spacing_mm=_UNIT_SPACING).array[0]


def _check_patient_consistency(patient_id: str, group: str, n_fibrotic_slices: int) -> None:
    if group == "P" and n_fibrotic_slices == 0:
        log.warning("EMIDEC %s is named P (infarct) but no slice of its masks holds scar or MVO.", patient_id)
    elif group == "N" and n_fibrotic_slices > 0:
        log.warning(
            "EMIDEC %s is named N (no infarct) but %d slices of its masks hold scar or MVO.",
            patient_id,
            n_fibrotic_slices,
        )


def _scan(
    root: str | os.PathLike, splits: Sequence[str] | None
) -> list[tuple[str, str, str, int, Path, Path | None]]:
    """(split, patient_id, group, slice_number, image, mask or None) for every slice, sorted."""
    for split in splits or ():
        if split not in _SPLITS:
            raise InputError(f"splits must be chosen from {_SPLITS}, got {split!r}.")
    folder = _dataset_folder(root)
    if splits is None:
        splits = [split for split in _SPLITS if (folder / split).is_dir()]
        if not splits:
            raise DataError(f"No train or val folder in {folder}; expected {folder}/{{train,val}}/Case_*.png.")
    rows = []
    seen: dict[str, str] = {}
    for split in splits:
        image_folder, mask_folder = folder / split, folder / f"{split}annot"
        if not image_folder.is_dir():
            raise DataError(
                f"EMIDEC folder {image_folder} not found; expected {folder}/{{train,val}}/Case_*.png. "
                "Leave splits=None to read the folders that exist."
            )
        has_masks = mask_folder.is_dir()
        if not has_masks:
            log.info("EMIDEC %s has no %s folder; its slices are listed without masks.", split, mask_folder)
        names = set()
        for path in sorted(image_folder.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() != ".png":
                continue
            match = _NAME_PATTERN.match(path.name)
            if match is None:
                raise DataError(f"{path}: expected a name like Case_P001_slice000.png (EMIDEC PNG export).")
            patient_id = match["patient"]
            if seen.setdefault(patient_id, split) != split:
                raise DataError(f"EMIDEC patient {patient_id} has slices in both {seen[patient_id]} and {split}.")
            mask = mask_folder / path.name if has_masks else None
            if mask is not None and not mask.is_file():
                raise DataError(f"{path} has no mask {mask}; every slice in {image_folder} needs one.")
            names.add(path.name)
            rows.append((split, patient_id, match["group"], int(match["slice"]), path, mask))
        if has_masks:
            orphans = sorted(p.name for p in mask_folder.glob("*.png") if p.name not in names)
            if orphans:
                raise DataError(f"{mask_folder} holds masks without an image in {image_folder}: {orphans[:5]}.")
    if not rows:
        raise DataError(f"No EMIDEC slices (Case_*_slice*.png) found under {folder}.")
    rows.sort(key=lambda row: (row[1], row[3]))
    return rows


def list_emidec_slices(
    root: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    read_masks: bool = True,
) -> list[CaseRef]:
    """List every EMIDEC slice as its own case, with its slice-level fibrosis label.

    Parameters
    ----------
    root : the ``dataset`` folder (holding ``train``, ``trainannot``, ``val``, ``valannot``) or its parent.
    splits : which EMIDEC parts to list ("train", "val"); None: those whose folder exists.
    read_masks : read each mask (256 x 256 PNG, fast) to set the slice's ``fibrosis`` label and check each
        patient's N/P name against its masks (a mismatch logs a warning). With False, only the file names are read.

    Returns
    -------
    list of CaseRef
        source ``"emidec_slice"``, sorted by patient then slice number; ``case_id`` ``"Case_P001_slice003"``,
        ``patient_id`` ``"Case_P001"``; ``image_labels`` ``{"fibrosis": 0 | 1}`` (when masks were read);
        ``metadata`` with ``patient_group`` ("N"/"P"), ``split``, ``slice_number``, ``pixel_size``.

    Raises
    ------
    DataError
        Missing folders, odd file names, images without masks (or masks without images), mask values outside 0-4.
    """
    rows = _scan(root, splits)
    refs = []
    fibrotic_slices: dict[str, int] = defaultdict(int)
    for split, patient_id, group, slice_number, image, mask in rows:
        image_labels: dict[str, str | int | float] = {}
        if read_masks and mask is not None:
            codes = map_emidec_labels(_read_png_array(mask), source=mask)
            fibrosis = int(np.isin(codes, (SCAR, MVO)).any())
            image_labels["fibrosis"] = fibrosis
            fibrotic_slices[patient_id] += fibrosis
        refs.append(
            CaseRef(
                case_id=f"{patient_id}_slice{slice_number:03d}",
                patient_id=patient_id,
                source="emidec_slice",
                image_paths=(image,),
                label_paths=(mask,) if mask is not None else (),
                image_labels=image_labels,
                metadata={
                    "dataset": "EMIDEC",
                    "patient_group": group,
                    "split": split,
                    "slice_number": slice_number,
                    "pixel_size": EMIDEC_PIXEL_NOTE,
                },
            )
        )
    if read_masks:
        groups = {row[1]: row[2] for row in rows if row[5] is not None}
        for patient_id, group in groups.items():
            _check_patient_consistency(patient_id, group, fibrotic_slices[patient_id])
    return refs


def list_emidec(root: str | os.PathLike, *, splits: Sequence[str] | None = None) -> list[CaseRef]:
    """List EMIDEC patients as slice stacks, from the file names alone.

    Parameters
    ----------
    root : the ``dataset`` folder (holding ``train``, ``trainannot``, ``val``, ``valannot``) or its parent.
    splits : which EMIDEC parts to list ("train", "val"); None: those whose folder exists.

    Returns
    -------
    list of CaseRef
        source ``"emidec_stack"``, one per patient, sorted by patient id; ``image_paths`` are the slices in slice
        order (low slice number = low k); ``image_labels`` ``{"group": "N" | "P", "fibrosis": 0 | 1}`` from the name;
        ``metadata`` with ``split``, ``slice_numbers``, ``pixel_size``.

    Raises
    ------
    DataError
        As :func:`list_emidec_slices`.
    """
    rows = _scan(root, splits)
    by_patient: dict[str, list] = defaultdict(list)
    for row in rows:
        by_patient[row[1]].append(row)
    refs = []
    for patient_id in sorted(by_patient):
        patient_rows = by_patient[patient_id]
        split, _, group = patient_rows[0][:3]
        masks = [row[5] for row in patient_rows]
        refs.append(
            CaseRef(
                case_id=patient_id,
                patient_id=patient_id,
                source="emidec_stack",
                image_paths=tuple(row[4] for row in patient_rows),
                label_paths=tuple(masks) if all(m is not None for m in masks) else (),
                image_labels={"group": group, "fibrosis": int(group == "P")},
                metadata={
                    "dataset": "EMIDEC",
                    "split": split,
                    "slice_numbers": [row[3] for row in patient_rows],
                    "pixel_size": EMIDEC_PIXEL_NOTE,
                },
            )
        )
    return refs


def load_emidec_case(ref: CaseRef) -> Case:
    """Read one EMIDEC slice or patient stack listed by :func:`list_emidec_slices` or :func:`list_emidec`.

    Returns
    -------
    Case
        Image float32 (k, j, i) with the PNG's 0-255 values and spacing 1 x 1 x 1 (pixels; see ``pixel_size`` in
        the metadata); one slice for a slice reference, the patient's slices in slice order for a stack. Labels
        uint8 CardiacAI codes (0, 2, 3, 4, 5) or None. A stack's metadata holds ``slice_labels``
        ``{k: {"fibrosis": 0 | 1}}``; a P patient without scar pixels (or an N patient with some) logs a warning.

    Raises
    ------
    InputError
        A reference from another reader.
    DataError
        Unreadable PNG, slices of different sizes, mask values outside 0-4, a mask of another size than its image.
    """
    if ref.source not in ("emidec_slice", "emidec_stack"):
        raise InputError(f"load_emidec_case needs a reference from list_emidec(_slices), got {ref.source!r}.")
    images = [_read_png_array(path) for path in ref.image_paths]
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        raise DataError(
            f"EMIDEC {ref.case_id}: slices differ in size {sorted(shapes)} ({ref.image_paths[0].parent}); "
            "a stack needs equal slices."
        )
    geometry = Geometry(spacing_mm=_UNIT_SPACING)
    image = Volume(np.stack(images).astype(np.float32), geometry)
    metadata = dict(
        ref.metadata,
        image_path=[str(p) for p in ref.image_paths] if len(ref.image_paths) > 1 else str(ref.image_paths[0]),
    )
    labels = None
    image_labels = dict(ref.image_labels)
    if ref.label_paths:
        codes = np.stack([map_emidec_labels(_read_png_array(path), source=path) for path in ref.label_paths])
        labels = Volume(codes, geometry)
        metadata["label_path"] = (
            [str(p) for p in ref.label_paths] if len(ref.label_paths) > 1 else str(ref.label_paths[0])
        )
        slice_fibrosis = np.isin(codes, (SCAR, MVO)).any(axis=(1, 2))
        if ref.source == "emidec_slice":
            image_labels["fibrosis"] = int(slice_fibrosis[0])
        else:
            metadata["slice_labels"] = {k: {"fibrosis": int(f)} for k, f in enumerate(slice_fibrosis)}
            _check_patient_consistency(ref.patient_id, str(ref.image_labels["group"]), int(slice_fibrosis.sum()))
    return Case(ref.case_id, ref.patient_id, image, labels, image_labels, metadata)
