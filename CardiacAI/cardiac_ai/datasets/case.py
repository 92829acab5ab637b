"""One case of a data set (image, optional label map, image-level labels) and the lightweight reference to it.

Readers work in two steps so that listing a data set is fast: ``list_*`` functions return :class:`CaseRef`
descriptors (file paths plus the labels that cost nothing to read), and :func:`load_case` reads the arrays of one
reference into a :class:`Case`. Listing 100 ACDC patients reads 100 small text files, not 200 volumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Volume
from ..labels import check_label_values

__all__ = ["Case", "CaseRef", "CaseSource", "ImageLabelValue", "load_case"]

log = logging.getLogger(__name__)

#: A weak (image-level or slice-level) label: a class name such as ``"DCM"`` or a number such as ``1``.
ImageLabelValue = str | int | float

#: Which reader a :class:`CaseRef` belongs to; :func:`load_case` dispatches on it.
CaseSource = Literal["acdc", "emidec_slice", "emidec_stack", "generic"]

_SOURCES = ("acdc", "emidec_slice", "emidec_stack", "generic")


@dataclass(frozen=True)
class CaseRef:
    """Where one case's files are and what is known about it without reading any array.

    Parameters
    ----------
    case_id : unique within the data set, e.g. ``"patient001_ED"`` or ``"Case_P001"``.
    patient_id : the patient the case belongs to (splits are made per patient), e.g. ``"patient001"``.
    source : the reader that made the reference: ``"acdc"``, ``"emidec_slice"``, ``"emidec_stack"`` or ``"generic"``.
    image_paths : one file (or DICOM folder), or, for an EMIDEC stack, one PNG per slice in slice order.
    label_paths : same length as ``image_paths``, or empty when the case has no label map.
    image_labels : weak labels of the whole case, e.g. ``{"group": "DCM"}`` or ``{"fibrosis": 1}``.
    metadata : anything else the listing read (phase, frame index, height, weight, split folder...).
    """

    case_id: str
    patient_id: str
    source: CaseSource
    image_paths: tuple[Path, ...]
    label_paths: tuple[Path, ...] = ()
    image_labels: dict[str, ImageLabelValue] = field(default_factory=dict, hash=False)
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.source not in _SOURCES:
            raise InputError(f"CaseRef.source must be one of {_SOURCES}, got {self.source!r}.")
        object.__setattr__(self, "image_paths", tuple(Path(p) for p in self.image_paths))
        object.__setattr__(self, "label_paths", tuple(Path(p) for p in self.label_paths))
        if not self.image_paths:
            raise InputError(f"CaseRef {self.case_id!r} has no image path.")
        if self.label_paths and len(self.label_paths) != len(self.image_paths):
            raise InputError(
                f"CaseRef {self.case_id!r} has {len(self.image_paths)} image paths but {len(self.label_paths)} "
                "label paths; give one label file per image file, or none."
            )

    @property
    def has_labels(self) -> bool:
        """True when the case comes with a label map."""
        return bool(self.label_paths)


def _describe(paths: Any, fallback: str) -> str:
    if paths is None:
        return fallback
    if isinstance(paths, (list, tuple)):
        if not paths:
            return fallback
        return str(paths[0]) if len(paths) == 1 else f"{paths[0]} (and {len(paths) - 1} more)"
    return str(paths)


@dataclass(frozen=True)
class Case:
    """One loaded case: an image, its optional label map, and its image-level labels.

    Parameters
    ----------
    case_id, patient_id : as in :class:`CaseRef`.
    image : Volume, array (k, j, i) float32.
    labels : Volume or None, array (k, j, i) uint8 holding CardiacAI label codes (see ``cardiac_ai.labels``),
        same shape and geometry as ``image``.
    image_labels : weak labels of the whole case, e.g. ``{"group": "DCM"}`` or ``{"fibrosis": 1}``.
    metadata : e.g. ``phase`` ("ED"/"ES"), ``frame``, ``height_cm``, ``weight_kg``, ``image_path``,
        ``label_path``, ``slice_order`` ("base_to_apex"...), ``slice_labels`` ({k: {name: value}}).

    Raises
    ------
    DataError
        When the label map's shape or geometry differs from the image's; the message names both files
        (``metadata["image_path"]`` and ``metadata["label_path"]``).
    InputError
        When ``labels`` is not uint8.
    """

    case_id: str
    patient_id: str
    image: Volume
    labels: Volume | None = None
    image_labels: dict[str, ImageLabelValue] = field(default_factory=dict, hash=False)
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.image, Volume):
            raise InputError(f"Case.image must be a Volume, got {type(self.image).__name__}.")
        if self.labels is None:
            return
        if not isinstance(self.labels, Volume):
            raise InputError(f"Case.labels must be a Volume or None, got {type(self.labels).__name__}.")
        if self.labels.array.dtype != np.uint8:
            raise InputError(
                f"Case {self.case_id!r}: labels must be uint8 CardiacAI codes, got {self.labels.array.dtype}. "
                "Convert with labels.astype(np.uint8) after checking the values."
            )
        image_name = _describe(self.metadata.get("image_path"), "the image")
        label_name = _describe(self.metadata.get("label_path"), "the label map")
        if self.labels.array.shape != self.image.array.shape:
            raise DataError(
                f"Case {self.case_id!r}: label map {label_name} has shape {self.labels.array.shape} (k, j, i) but "
                f"image {image_name} has {self.image.array.shape}. The label map must be drawn on this image."
            )
        if not self.labels.geometry.is_close(self.image.geometry):
            image_geometry, label_geometry = self.image.geometry, self.labels.geometry
            raise DataError(
                f"Case {self.case_id!r}: label map {label_name} does not lie on image {image_name}: "
                f"spacing {label_geometry.spacing_mm} vs {image_geometry.spacing_mm} mm, "
                f"origin {label_geometry.origin_lps_mm} vs {image_geometry.origin_lps_mm} mm (LPS), "
                f"direction {label_geometry.direction_lps} vs {image_geometry.direction_lps}. "
                "Resample the label map onto the image (nearest neighbour) or fix its header."
            )

    @property
    def has_labels(self) -> bool:
        """True when the case comes with a label map."""
        return self.labels is not None


def _read_image(path: Path) -> Volume:
    """Read one image file (or DICOM folder) as a float32 (k, j, i) volume; DataError naming a 4D file."""
    from ..io import read_volume

    # A 4D file is read whole so that the message can name it and count its frames: read_volume's own 4D error
    # speaks of --frame, which the commands have but training (one 3D image per file and case) does not.
    volume = read_volume(path, allow_4d=True)
    if volume.axes == "tkji":
        raise DataError(
            f"{path} is a 4D series ({volume.array.shape[0]} frames); training reads one 3D frame per image file. "
            f"Export the frames to train on as separate files, e.g. `cardiacai convert {path} --frame N --out "
            "images/<patient>_ED.nii.gz`. For --task weak-cam export each patient's ED and ES frames as "
            "<patient>_ED and <patient>_ES (with a patient_id column in labels.csv): its ED-ES motion prior needs "
            "both."
        )
    return volume.with_array(volume.array.astype(np.float32, copy=False))


def _read_label_map(path: Path, *, allowed: set[int] | None = None) -> Volume:
    """Read a label map holding CardiacAI codes (or only ``allowed`` ones) as uint8; DataError naming the file."""
    from ..io import read_volume

    volume = read_volume(path)
    try:
        check_label_values(volume.array, allowed=allowed, what=f"Label map {path}")
    except InputError as e:
        raise DataError(str(e)) from e
    return volume.with_array(volume.array.astype(np.uint8))


def load_case(ref: CaseRef) -> Case:
    """Read the arrays of one listed case.

    Parameters
    ----------
    ref : CaseRef from ``list_acdc``, ``list_emidec``, ``list_emidec_slices`` or ``list_generic``.

    Returns
    -------
    Case
        Image float32 (k, j, i); labels uint8 CardiacAI codes with the image's geometry, or None.

    Raises
    ------
    DataError
        Missing or unreadable files, label values outside the label table, or a label map that does not lie on
        its image (the message names the files).
    """
    if ref.source == "acdc":
        from .acdc import load_acdc_case

        return load_acdc_case(ref)
    if ref.source in ("emidec_slice", "emidec_stack"):
        from .emidec import load_emidec_case

        return load_emidec_case(ref)
    from .generic import load_generic_case

    return load_generic_case(ref)
