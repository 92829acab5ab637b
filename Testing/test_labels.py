from __future__ import annotations

import numpy as np
import pytest

from cardiac_ai import InputError
from cardiac_ai.labels import LABELS, check_label_values, segment_terminology_string, tissue


def test_acdc_codes_and_snomed_terms():
    assert tissue(1).name == "rv_blood_pool" and tissue(2).name == "lv_myocardium" and tissue(3).name == "lv_blood_pool"
    assert tissue("lv_myocardium").type.code_value == "74281007"
    assert tissue(1).anatomic_region.code_value == "53085002"
    assert tissue(3).anatomic_region.code_value == "87878005"
    assert tissue("scar").type.code_value == "12402003"


def test_every_tissue_has_distinct_name_and_colour():
    assert len({t.name for t in LABELS.values()}) == len(LABELS)
    assert len({t.color_rgb for t in LABELS.values()}) == len(LABELS)
    assert all(0 <= c <= 1 for t in LABELS.values() for c in t.color_rgb)


def test_terminology_string_parses_with_slicerio():
    from slicerio.segmentation import terminology_entry_from_string

    entry = terminology_entry_from_string(segment_terminology_string(tissue(2)))
    assert entry["type"] == ["SCT", "74281007", "Myocardium"]
    assert entry["anatomicRegion"] == ["SCT", "87878005", "Left ventricle"]


def test_unknown_label_values_are_named():
    with pytest.raises(InputError, match=r"\[7, 9\]"):
        check_label_values(np.array([0, 1, 7, 9]))
    with pytest.raises(InputError, match="whole-number"):
        check_label_values(np.array([0.0, 1.5]))
    check_label_values(np.array([0, 1, 2, 3], dtype=np.uint8))


def test_unknown_tissue_lists_choices():
    with pytest.raises(InputError, match="label table"):
        tissue(42)
