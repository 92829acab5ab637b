"""The ACDC cine data set (Automated Cardiac Diagnosis Challenge, 100 training patients, 5 groups).

Layout read here (the original NIfTI release)::

    training/
      patient001/
        Info.cfg                      ED, ES (1-based frame numbers), Group, Height (cm), Weight (kg), NbFrame
        patient001_frame01.nii.gz     short-axis stack of the ED frame (3D: columns x rows x slices)
        patient001_frame01_gt.nii.gz  its labels: 0 background, 1 RV blood pool, 2 LV myocardium, 3 LV blood pool
        patient001_frame12.nii.gz     the ES frame, and patient001_frame12_gt.nii.gz
      patient002/ ...

ACDC's label codes are CardiacAI's (``cardiac_ai.labels``); they are still checked on reading. Volumes are read
through SimpleITK, which takes the spacing from ``pixdim`` (the headers' sform has unit scales, so nibabel's
``affine`` would give 1 mm voxels). Slices run from the base (low k) to the apex (high k) in almost every volume.

Cite O. Bernard et al., IEEE TMI 37(11):2514-2525, 2018, doi:10.1109/TMI.2018.2837502 for any use of the data.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from ..errors import DataError, InputError
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from .case import Case, CaseRef, _read_image, _read_label_map

__all__ = ["ACDC_GROUPS", "AcdcInfo", "parse_info_cfg", "list_acdc", "load_acdc_case"]

log = logging.getLogger(__name__)

#: Diagnostic groups: normal, previous myocardial infarction, dilated and hypertrophic cardiomyopathy,
#: abnormal right ventricle.
ACDC_GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")

_PATIENT_PATTERN = re.compile(r"^patient\d{3}$")
_REQUIRED_KEYS = ("ED", "ES", "Group", "Height", "Weight", "NbFrame")


@dataclass(frozen=True)
class AcdcInfo:
    """The contents of one ``Info.cfg``.

    ``ed_frame`` and ``es_frame`` are ACDC's 1-based frame numbers (``frame01`` is the first frame of the cine).
    """

    ed_frame: int
    es_frame: int
    group: str
    height_cm: float
    weight_kg: float
    n_frames: int
    path: Path


def parse_info_cfg(path: str | os.PathLike) -> AcdcInfo:
    """Read an ACDC ``Info.cfg`` (``Key: value`` lines).

    Parameters
    ----------
    path : the patient's ``Info.cfg``.

    Returns
    -------
    AcdcInfo

    Raises
    ------
    DataError
        Missing file; a line that is not ``Key: value``; a number that does not parse; a repeated or missing key
        (ED, ES, Group, Height, Weight, NbFrame); a group outside NOR, MINF, DCM, HCM, RV; ED or ES outside
        1..NbFrame. The message names the file and, where there is one, the line.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"ACDC Info.cfg not found: {source}. Each patientNNN folder needs one.")
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Cannot read {source}: {e}") from e

    values: dict[str, tuple[str, int]] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        key, sep, value = stripped.partition(":")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise DataError(f"{source}, line {line_number}: expected 'Key: value', found {line!r}.")
        if key in values:
            raise DataError(f"{source}, line {line_number}: key {key!r} repeats (first on line {values[key][1]}).")
        values[key] = (value, line_number)

    missing = [key for key in _REQUIRED_KEYS if key not in values]
    if missing:
        raise DataError(
            f"{source} lacks {', '.join(missing)}; an ACDC Info.cfg has the keys {', '.join(_REQUIRED_KEYS)}."
        )

    def number(key: str, kind: type) -> float:
        value, line_number = values[key]
        try:
            parsed = float(value)
        except ValueError:
            raise DataError(f"{source}, line {line_number}: {key} must be a number, found {value!r}.") from None
        if kind is int:
            if parsed != int(parsed):
                raise DataError(f"{source}, line {line_number}: {key} must be a whole number, found {value!r}.")
            return int(parsed)
        return parsed

    group, group_line = values["Group"]
    if group not in ACDC_GROUPS:
        raise DataError(
            f"{source}, line {group_line}: unknown Group {group!r}; ACDC groups are {', '.join(ACDC_GROUPS)}."
        )
    info = AcdcInfo(
        ed_frame=int(number("ED", int)),
        es_frame=int(number("ES", int)),
        group=group,
        height_cm=float(number("Height", float)),
        weight_kg=float(number("Weight", float)),
        n_frames=int(number("NbFrame", int)),
        path=source,
    )
    for key, frame in (("ED", info.ed_frame), ("ES", info.es_frame)):
        if not 1 <= frame <= info.n_frames:
            raise DataError(
                f"{source}, line {values[key][1]}: {key} frame {frame} is outside 1..NbFrame ({info.n_frames})."
            )
    return info


def list_acdc(
    root: str | os.PathLike,
    *,
    phases: Sequence[Literal["ED", "ES"]] = ("ED", "ES"),
    require_labels: bool = True,
) -> list[CaseRef]:
    """List the ED and ES frames of every ACDC patient without reading any volume.

    Parameters
    ----------
    root : the folder holding the ``patientNNN`` folders (ACDC's ``training`` or ``testing``).
    phases : which frames to list, in this order within each patient.
    require_labels : raise when a frame has no ``_gt`` label file; with False such frames are listed without labels.

    Returns
    -------
    list of CaseRef
        One per patient and phase, sorted by patient then phase: ``case_id`` ``"patient001_ED"``, ``patient_id``
        ``"patient001"``, ``image_labels`` ``{"group": "DCM"}``, ``metadata`` with ``phase``, ``frame`` (1-based),
        ``height_cm``, ``weight_kg``, ``n_frames``, ``slice_order`` ``"base_to_apex"``, ``info_path``.

    Raises
    ------
    InputError
        A phase other than ED or ES.
    DataError
        No ``patientNNN`` folder in ``root``; a malformed ``Info.cfg``; a missing frame or label file.
    """
    folder = Path(root)
    for phase in phases:
        if phase not in ("ED", "ES"):
            raise InputError(f"phases must be 'ED' and/or 'ES', got {phase!r}.")
    if not folder.is_dir():
        raise DataError(f"ACDC folder not found: {folder}")
    patients = sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT_PATTERN.match(p.name))
    if not patients:
        hint = f" Did you mean {folder / 'training'}?" if (folder / "training").is_dir() else ""
        raise DataError(f"No patientNNN folders in {folder}; point to ACDC's training or testing folder.{hint}")

    refs = []
    for patient in patients:
        info = parse_info_cfg(patient / "Info.cfg")
        for phase in phases:
            frame = info.ed_frame if phase == "ED" else info.es_frame
            image_path = patient / f"{patient.name}_frame{frame:02d}.nii.gz"
            label_path = patient / f"{patient.name}_frame{frame:02d}_gt.nii.gz"
            if not image_path.is_file():
                raise DataError(f"{patient.name}: the {phase} frame {frame} ({info.path}) has no image {image_path}.")
            if not label_path.is_file():
                if require_labels:
                    raise DataError(
                        f"{patient.name}: the {phase} frame has no label file {label_path}. "
                        "Pass require_labels=False to list frames without labels."
                    )
                log.info("%s: no label file for the %s frame (%s)", patient.name, phase, label_path)
            refs.append(
                CaseRef(
                    case_id=f"{patient.name}_{phase}",
                    patient_id=patient.name,
                    source="acdc",
                    image_paths=(image_path,),
                    label_paths=(label_path,) if label_path.is_file() else (),
                    image_labels={"group": info.group},
                    metadata={
                        "dataset": "ACDC",
                        "phase": phase,
                        "frame": frame,
                        "height_cm": info.height_cm,
                        "weight_kg": info.weight_kg,
                        "n_frames": info.n_frames,
                        "slice_order": "base_to_apex",
                        "info_path": str(info.path),
                    },
                )
            )
    log.info("Listed %d ACDC frames of %d patients in %s", len(refs), len(patients), folder)
    return refs


def load_acdc_case(ref: CaseRef) -> Case:
    """Read the image and label map of one ACDC frame listed by :func:`list_acdc`.

    Returns
    -------
    Case
        Image float32 (k, j, i) with the ``pixdim`` spacing; labels uint8 (0-3) with the same geometry, or None.

    Raises
    ------
    InputError
        A reference from another reader.
    DataError
        Unreadable file, label values other than 0-3, or a label map that does not lie on the image.
    """
    if ref.source != "acdc":
        raise InputError(f"load_acdc_case needs a reference from list_acdc, got source {ref.source!r}.")
    image_path = ref.image_paths[0]
    image = _read_image(image_path)
    labels = None
    metadata = dict(ref.metadata, image_path=str(image_path))
    if ref.label_paths:
        label_path = ref.label_paths[0]
        labels = _read_label_map(label_path, allowed={RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL})
        metadata["label_path"] = str(label_path)
    return Case(ref.case_id, ref.patient_id, image, labels, dict(ref.image_labels), metadata)
