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


def test_parse_label_codes_reads_names_and_values_and_refuses_malformed_items():
    from cardiac_ai.labels import parse_label_codes

    assert parse_label_codes(["LV=1", "MYO=2", "RV=3"]) == {1: 3, 2: 2, 3: 1}  # M&Ms
    assert parse_label_codes(["myo=255"]) == {255: 2}  # a binary myocardium mask
    assert parse_label_codes(["lv_myocardium=2,4", "BG=7", "background=8"]) == {2: 2, 4: 2, 7: 0, 8: 0}
    assert parse_label_codes(["BG=-1", "LV=1"]) == {-1: 0, 1: 3}  # tools that write background as -1
    for items, message in (
        (["RV3"], "not NAME=VALUE"),
        (["RV="], "not NAME=VALUE"),
        (["AORTA=4"], "unknown structure 'AORTA'.*MYO"),
        (["RV=x"], "'x' is not a whole number"),
        (["RV=1", "LV=1"], "value 1 is given for two structures"),
        ([], "at least one"),
    ):
        with pytest.raises(InputError, match=message):
            parse_label_codes(items)


def test_remap_label_codes_maps_every_value_without_touching_the_input():
    from cardiac_ai.labels import remap_label_codes

    mms = np.array([[0, 1, 2, 3]], dtype=np.int16)
    remapped = remap_label_codes(mms, {1: 3, 2: 2, 3: 1})
    np.testing.assert_array_equal(remapped, [[0, 3, 2, 1]])
    assert remapped.dtype == np.uint8 and mms.tolist() == [[0, 1, 2, 3]]
    np.testing.assert_array_equal(remap_label_codes(np.array([0.0, 255.0]), {255: 2}), [0, 2])
    np.testing.assert_array_equal(remap_label_codes(np.array([0, 2, 7]), {2: 2, 7: 0}), [0, 2, 0])
    with pytest.raises(InputError, match=r"values \[7\] that the label codes \(--label-codes\) do not map.*BG=7"):
        remap_label_codes(np.array([0, 2, 7]), {2: 2})
    with pytest.raises(InputError, match=r"label codes \[9\] are not in the label table"):
        remap_label_codes(np.array([0, 2]), {2: 9})
    with pytest.raises(InputError, match="whole-number"):
        remap_label_codes(np.array([0.0, 0.5]), {1: 2})


def test_unknown_label_values_message_names_the_label_codes_option():
    with pytest.raises(InputError, match=r"Map your codes.*--label-codes NAME=VALUE"):
        check_label_values(np.array([0, 255]))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.uint16, np.int64, np.uint64, bool, np.float32])
def test_values_present_equals_numpy_unique_for_every_label_dtype(dtype):
    from cardiac_ai.labels import values_present

    rng = np.random.default_rng(1)
    low = -5 if dtype in (np.int8, np.int16, np.int64, np.float32) else 0
    for _ in range(20):
        array = rng.integers(low, 7, size=(3, 4, 5)).astype(dtype)
        found, expected = values_present(array), np.unique(array)
        assert found.dtype == expected.dtype and np.array_equal(found, expected)
    wide = np.array([0, 3, 2**40], np.int64)  # a range too wide to count: sorted instead
    assert np.array_equal(values_present(wide), wide)
    huge = np.array([2**63 + 1, 2**63 + 4], np.uint64)  # beyond int64: sorted too, not an overflow
    assert np.array_equal(values_present(huge), huge)
    assert values_present(np.zeros((2, 0), np.uint8)).size == 0
