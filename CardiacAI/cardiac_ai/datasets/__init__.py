"""Data set readers (ACDC, EMIDEC, your own folders) and patient-level splits.

Readers list cases fast (:class:`CaseRef`: paths plus image-level labels) and read arrays on demand
(:func:`load_case` -> :class:`Case`). Every reader maps its label codes to CardiacAI's table (``cardiac_ai.labels``).
"""
from __future__ import annotations

from .acdc import ACDC_GROUPS, AcdcInfo, list_acdc, load_acdc_case, parse_info_cfg
from .case import Case, CaseRef, load_case
from .emidec import EMIDEC_LABEL_MAP, list_emidec, list_emidec_slices, load_emidec_case, map_emidec_labels
from .generic import list_generic, load_generic_case
from .splits import (
    ACDC_DUPLICATES,
    Split,
    default_acdc_split,
    check_run_data,
    groups_from_refs,
    keep_run_data,
    keep_run_split,
    load_split,
    make_patient_split,
    refs_in_part,
    save_split,
)

__all__ = [
    "ACDC_DUPLICATES",
    "ACDC_GROUPS",
    "AcdcInfo",
    "Case",
    "CaseRef",
    "EMIDEC_LABEL_MAP",
    "Split",
    "default_acdc_split",
    "check_run_data",
    "groups_from_refs",
    "keep_run_data",
    "keep_run_split",
    "list_acdc",
    "list_emidec",
    "list_emidec_slices",
    "list_generic",
    "load_acdc_case",
    "load_case",
    "load_emidec_case",
    "load_generic_case",
    "load_split",
    "make_patient_split",
    "map_emidec_labels",
    "parse_info_cfg",
    "refs_in_part",
    "save_split",
]
