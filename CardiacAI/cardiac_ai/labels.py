"""The one table of tissue codes used by every model, reader and writer.

Codes 1-3 follow ACDC. Every dataset loader maps its own codes to these. Terminology follows Slicer's DICOM
master list (SCT = SNOMED-CT); codes SNOMED lacks use the private designator ``CardiacAI``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "Tissue",
    "Terminology",
    "LABELS",
    "BACKGROUND",
    "RV_BLOOD_POOL",
    "LV_MYOCARDIUM",
    "LV_BLOOD_POOL",
    "SCAR",
    "MVO",
    "HEART",
    "tissue",
    "code_for_segment_name",
    "overlap_priority",
    "MYOCARDIUM_CODES",
    "codes_of_structure",
    "check_label_values",
    "values_present",
    "segment_terminology_string",
    "LABEL_CODE_NAMES",
    "parse_label_codes",
    "remap_label_codes",
]


@dataclass(frozen=True)
class Terminology:
    """A coded concept, as (code value, coding scheme designator, code meaning)."""

    code_value: str
    scheme: str
    meaning: str

    def as_triplet(self) -> str:
        return f"{self.scheme}^{self.code_value}^{self.meaning}"


@dataclass(frozen=True)
class Tissue:
    """One row of the label table."""

    code: int
    name: str  # machine name, used in tables and JSON keys
    display_name: str  # shown to users and as the Slicer segment name
    color_rgb: tuple[float, float, float]  # 0..1, as Slicer segments
    category: Terminology
    type: Terminology
    type_modifier: Terminology | None = None
    anatomic_region: Terminology | None = None


_TISSUE_CATEGORY = Terminology("85756007", "SCT", "Tissue")
_STRUCTURE_CATEGORY = Terminology("123037004", "SCT", "Anatomical Structure")
_MORPHOLOGY_CATEGORY = Terminology("49755003", "SCT", "Morphologically Altered Structure")
_BLOOD = Terminology("87612001", "SCT", "Blood")
_HEART = Terminology("80891009", "SCT", "Heart")
_LEFT_VENTRICLE = Terminology("87878005", "SCT", "Left ventricle")
_RIGHT_VENTRICLE = Terminology("53085002", "SCT", "Right ventricle")

BACKGROUND = 0
RV_BLOOD_POOL = 1
LV_MYOCARDIUM = 2
LV_BLOOD_POOL = 3
SCAR = 4
MVO = 5
#: Whole heart (LV and RV blood pools and LV myocardium together): what weak models trained on image-level labels
#: segment, when they cannot tell the structures apart.
HEART = 6

#: code -> Tissue. Background (0) is not a segment and has no row.
LABELS: dict[int, Tissue] = {
    RV_BLOOD_POOL: Tissue(
        RV_BLOOD_POOL, "rv_blood_pool", "Right ventricle blood pool", (0.85, 0.69, 0.19),
        _TISSUE_CATEGORY, _BLOOD, anatomic_region=_RIGHT_VENTRICLE,
    ),
    LV_MYOCARDIUM: Tissue(
        LV_MYOCARDIUM, "lv_myocardium", "Left ventricle myocardium", (0.81, 0.39, 0.37),
        _STRUCTURE_CATEGORY, Terminology("74281007", "SCT", "Myocardium"), anatomic_region=_LEFT_VENTRICLE,
    ),
    LV_BLOOD_POOL: Tissue(
        LV_BLOOD_POOL, "lv_blood_pool", "Left ventricle blood pool", (0.56, 0.26, 0.73),
        _TISSUE_CATEGORY, _BLOOD, anatomic_region=_LEFT_VENTRICLE,
    ),
    SCAR: Tissue(
        SCAR, "scar", "Myocardial scar (fibrosis)", (0.98, 0.92, 0.33),
        _MORPHOLOGY_CATEGORY, Terminology("12402003", "SCT", "Scar"), anatomic_region=_HEART,
    ),
    MVO: Tissue(
        MVO, "microvascular_obstruction", "Microvascular obstruction (no-reflow)", (0.30, 0.65, 0.95),
        _MORPHOLOGY_CATEGORY, Terminology("CAI-MVO", "CardiacAI", "Microvascular obstruction"),
        anatomic_region=_HEART,
    ),
    HEART: Tissue(
        HEART, "heart", "Heart (ventricles and myocardium)", (0.90, 0.45, 0.60),
        _STRUCTURE_CATEGORY, _HEART,
    ),
}


def tissue(code_or_name: int | str) -> Tissue:
    """Look up a tissue by code or machine name; raises InputError naming the valid choices."""
    if isinstance(code_or_name, str):
        for row in LABELS.values():
            if row.name == code_or_name:
                return row
        raise InputError(f"Unknown tissue {code_or_name!r}; known: {[t.name for t in LABELS.values()]}.")
    try:
        return LABELS[int(code_or_name)]
    except KeyError:
        raise InputError(f"Unknown label code {code_or_name}; the label table has {sorted(LABELS)}.") from None


#: Short names users give segments (in Slicer, other tools' DICOM SEG labels), besides each tissue's display and
#: machine names.
SEGMENT_NAME_ALIASES: dict[str, int] = {
    "rv": RV_BLOOD_POOL, "right ventricle": RV_BLOOD_POOL, "rv blood pool": RV_BLOOD_POOL,
    "myo": LV_MYOCARDIUM, "myocardium": LV_MYOCARDIUM, "lv myocardium": LV_MYOCARDIUM,
    "lv": LV_BLOOD_POOL, "left ventricle": LV_BLOOD_POOL, "lv blood pool": LV_BLOOD_POOL,
    "scar": SCAR, "fibrosis": SCAR, "mvo": MVO, "heart": HEART,
}


def code_for_segment_name(name: str) -> int | None:
    """The code of a segment name: a tissue's display name ("Left ventricle myocardium") or machine name
    ("lv_myocardium"), case, ``_`` and spacing aside, or a short alias (RV, Myo, LV, Scar, MVO, Heart); None for
    any other name. The one name table of ``.seg.nrrd``, DICOM SEG and Slicer segmentation nodes."""
    key = " ".join(str(name).replace("_", " ").lower().split())
    if key in SEGMENT_NAME_ALIASES:
        return SEGMENT_NAME_ALIASES[key]
    for code, row in LABELS.items():
        if key in (row.display_name.lower(), row.name.replace("_", " ")):
            return code
    return None


#: The codes that are myocardium: healthy, scarred, or with microvascular obstruction.
MYOCARDIUM_CODES = (LV_MYOCARDIUM, SCAR, MVO)


def codes_of_structure(code: int) -> tuple[int, ...]:
    """The label codes that make up a structure: the myocardium's are :data:`MYOCARDIUM_CODES`, any other's its own."""
    return MYOCARDIUM_CODES if code == LV_MYOCARDIUM else (int(code),)


def overlap_priority(code: int) -> int:
    """Which code a voxel keeps where segments overlap: the higher priority wins. MVO over scar over the other
    structures, as the codes rise; the whole heart, which holds them all, lowest of all."""
    return -1 if code == HEART else int(code)


#: Integer label maps whose values span at most this many codes are counted (np.bincount) rather than sorted or
#: hashed (np.unique): twice as fast on a 768 x 768 x 25 cine, where each look at the codes took 25-50 ms.
_COUNTED_SPAN = 1 << 16


#: Voxels counted at a time: np.bincount copies its input as 8-byte integers, so a 768 x 768 x 25 map counted whole
#: would take 118 MB for a few bytes of answer.
_COUNTED_CHUNK = 1 << 22


def values_present(array: np.ndarray) -> np.ndarray:
    """The distinct values of ``array``, sorted, as ``np.unique`` gives them; counted for integer and boolean maps
    of a small range (label maps), sorted for the rest."""
    array = np.asarray(array)
    if array.size and (array.dtype == bool or np.issubdtype(array.dtype, np.integer)):
        flat = array.reshape(-1)
        if array.dtype == bool:
            flat = flat.view(np.uint8)
        low, high = int(flat.min()), int(flat.max())
        if high - low < _COUNTED_SPAN and -(1 << 62) < low and high < (1 << 62):  # int64 holds every shifted value
            counts = np.zeros(high - low + 1, np.int64)
            for start in range(0, flat.size, _COUNTED_CHUNK):
                chunk = flat[start:start + _COUNTED_CHUNK]
                shifted = chunk if low == 0 and chunk.dtype.kind == "u" else chunk.astype(np.int64) - low
                counts += np.bincount(shifted, minlength=counts.size)
            return (np.flatnonzero(counts) + low).astype(array.dtype)
    return np.unique(array)


def check_label_values(labels: np.ndarray, *, allowed: set[int] | None = None, what: str = "label map") -> None:
    """Raise InputError if ``labels`` holds values outside the label table (or ``allowed``)."""
    allowed_codes = {BACKGROUND, *LABELS} if allowed is None else {BACKGROUND, *allowed}
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.all(np.mod(labels, 1) == 0):
            raise InputError(f"{what} must hold whole-number label codes; found non-integer values.")
    present = set(values_present(labels).astype(int).tolist())
    unknown = sorted(present - allowed_codes)
    if unknown:
        raise InputError(
            f"{what} holds label values {unknown} that are not in the label table {sorted(allowed_codes)}. "
            "Map your codes to CardiacAI's: "
            + ", ".join(f"{code} {LABELS[code].display_name}" for code in sorted(allowed_codes - {BACKGROUND}))
            + f" ({_LABEL_CODES_HINT})."
        )


#: Short names of the label table's codes, for users who map another tool's label values onto it (``cardiacai qc
#: --label-codes RV=3 MYO=2 LV=1``); the machine names (``Tissue.name``) and "background" are accepted too.
LABEL_CODE_NAMES: dict[str, int] = {
    "BG": BACKGROUND, "RV": RV_BLOOD_POOL, "MYO": LV_MYOCARDIUM, "LV": LV_BLOOD_POOL, "SCAR": SCAR, "MVO": MVO,
    "HEART": HEART,
}
_LABEL_CODES_HINT = ("cardiacai qc and evaluate map another tool's values with --label-codes NAME=VALUE, e.g. --label-codes LV=1 "
                     "MYO=2 RV=3 for M&Ms, MYO=255 for a binary myocardium mask")


def _code_for_name(name: str) -> int:
    wanted = name.strip().lower()
    for short, code in LABEL_CODE_NAMES.items():
        if wanted == short.lower():
            return code
    if wanted == "background":
        return BACKGROUND
    for row in LABELS.values():
        if wanted == row.name:
            return row.code
    raise InputError(
        f"--label-codes: unknown structure {name!r}; use one of "
        + ", ".join(f"{short} ({LABELS[code].display_name if code else 'background'})"
                    for short, code in LABEL_CODE_NAMES.items())
        + " (or the machine names, e.g. lv_myocardium)."
    )


def parse_label_codes(items: Sequence[str]) -> dict[int, int]:
    """``NAME=VALUE`` items (``["RV=3", "MYO=2", "LV=1"]``, ``["MYO=255"]``, ``["MYO=2,4", "BG=7"]``) as
    {value in the file: CardiacAI code}.

    NAME is a key of :data:`LABEL_CODE_NAMES` (any case), a tissue's machine name or "background"; VALUE is one
    whole number >= 0, or several separated by commas (e.g. scar folded into the myocardium).

    Raises
    ------
    InputError
        An item without "=", an unknown NAME, a VALUE that is not a whole number >= 0, or one value given twice.
    """
    codes: dict[int, int] = {}
    if isinstance(items, str):
        items = [items]
    for item in items:
        name, sign, values = str(item).partition("=")
        if not sign or not name.strip() or not values.strip():
            raise InputError(
                f"--label-codes: {item!r} is not NAME=VALUE; write e.g. --label-codes RV=3 MYO=2 LV=1 (the value "
                "each structure has in your file)."
            )
        code = _code_for_name(name)
        for text in values.split(","):
            try:
                value = int(text.strip())
            except ValueError:
                raise InputError(
                    f"--label-codes: {item!r}: {text.strip()!r} is not a whole number; write NAME=VALUE[,VALUE...]."
                ) from None
            if value in codes and codes[value] != code:
                raise InputError(
                    f"--label-codes: value {value} is given for two structures ({_code_name(codes[value])} and "
                    f"{_code_name(code)}); each value in the file is one structure."
                )
            codes[value] = code
    if not codes:
        raise InputError("--label-codes needs at least one NAME=VALUE, e.g. --label-codes RV=3 MYO=2 LV=1.")
    return codes


def _code_name(code: int) -> str:
    return "background" if code == BACKGROUND else LABELS[code].display_name


def remap_label_codes(labels: np.ndarray, codes: Mapping[int, int], *, what: str = "labels") -> np.ndarray:
    """A new uint8 label map with CardiacAI codes from ``labels`` holding another tool's values.

    Parameters
    ----------
    labels : integer (or whole-number float) label array; not modified.
    codes : {value in ``labels``: CardiacAI code}, as :func:`parse_label_codes` returns; codes 0 (background) or
        from the label table. Value 0 is background unless ``codes`` says otherwise; every other value present
        in ``labels`` must be in ``codes`` (map what you do not want to background, e.g. ``{7: 0}``).
    what : how error messages name ``labels``.

    Raises
    ------
    InputError
        A code outside the label table, non-integer values, or values present in ``labels`` that ``codes`` does
        not map (named, with the values ``codes`` does map).
    """
    outside = sorted({int(code) for code in codes.values()} - {BACKGROUND, *LABELS})
    if outside:
        raise InputError(
            f"label codes {outside} are not in the label table {sorted({BACKGROUND, *LABELS})}; map each value to "
            "one of " + ", ".join(f"{code} {_code_name(code)}" for code in sorted({BACKGROUND, *LABELS})) + "."
        )
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        if not np.all(np.isfinite(labels)) or not np.all(np.mod(labels, 1) == 0):
            raise InputError(f"{what} must hold whole-number label values; found non-integer values.")
    present = set(values_present(labels).astype(np.int64).tolist())
    unmapped = sorted(present - set(codes) - {BACKGROUND})
    if unmapped:
        given = ", ".join(f"{value} -> {_code_name(code)}" for value, code in sorted(codes.items()))
        raise InputError(
            f"{what} hold values {unmapped} that the label codes (--label-codes) do not map (they map {given}). Name "
            f"the structure of each (e.g. MYO={unmapped[0]}), or BG={unmapped[0]} to treat it as background."
        )
    remapped = np.zeros(labels.shape, dtype=np.uint8)
    for value, code in codes.items():
        if code != BACKGROUND:
            remapped[labels == value] = code
    return remapped


def segment_terminology_string(row: Tissue) -> str:
    """Slicer's segment terminology entry string (``Segment_N_Tag TerminologyEntry``).

    Format: ``contextName~category~type~typeModifier~anatomicContextName~anatomicRegion~anatomicRegionModifier``,
    each coded concept written as ``scheme^code^meaning``.
    """
    empty = "^^"
    return "~".join(
        [
            "Segmentation category and type - 3D Slicer General Anatomy list",
            row.category.as_triplet(),
            row.type.as_triplet(),
            row.type_modifier.as_triplet() if row.type_modifier else empty,
            "Anatomic codes - DICOM master list",
            row.anatomic_region.as_triplet() if row.anatomic_region else empty,
            empty,
        ]
    )
