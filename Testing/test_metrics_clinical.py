"""Ventricular volumes, ejection fractions and LV mass from box-shaped label maps computed by hand."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from cardiac_ai.metrics import MYOCARDIAL_DENSITY_G_PER_ML, cardiac_function, structure_volume_ml

SPACING_KJI = (8.0, 1.25, 1.25)  # voxel volume 12.5 mm^3
VOXEL_ML = 8.0 * 1.25 * 1.25 / 1000.0


def _phase(lv_rows: int, rv_rows: int) -> np.ndarray:
    """10 slices: LV blood pool lv_rows x 8, a 1-voxel myocardium frame around it, RV blood pool rv_rows x 6."""
    labels = np.zeros((10, 24, 24), dtype=np.uint8)
    labels[:, 1 : 1 + lv_rows + 2, 1:11] = LV_MYOCARDIUM  # frame: (lv_rows + 2) x 10 box
    labels[:, 2 : 2 + lv_rows, 2:10] = LV_BLOOD_POOL  # lv_rows x 8 inside it
    labels[:, 14 : 14 + rv_rows, 14:20] = RV_BLOOD_POOL
    return labels


def test_structure_volume_is_voxel_count_times_voxel_volume():
    labels = _phase(8, 6)
    assert structure_volume_ml(labels, LV_BLOOD_POOL, SPACING_KJI) == pytest.approx(640 * VOXEL_ML)
    assert structure_volume_ml(labels, 5, SPACING_KJI) == 0.0


def test_ejection_fractions_of_two_boxes_match_hand_values():
    ed, es = _phase(8, 6), _phase(5, 3)
    result = cardiac_function(ed, es, SPACING_KJI)
    # LV: ED 10 x 8 x 8 = 640 voxels = 8 ml; ES 10 x 5 x 8 = 400 voxels = 5 ml -> SV 3 ml, EF 37.5 %
    assert result.lv_edv_ml == pytest.approx(8.0)
    assert result.lv_esv_ml == pytest.approx(5.0)
    assert result.lv_sv_ml == pytest.approx(3.0)
    assert result.lv_ef_percent == pytest.approx(37.5)
    # RV: ED 10 x 6 x 6 = 360 voxels = 4.5 ml; ES 10 x 3 x 6 = 180 voxels = 2.25 ml -> EF 50 %
    assert result.rv_edv_ml == pytest.approx(4.5)
    assert result.rv_esv_ml == pytest.approx(2.25)
    assert result.rv_sv_ml == pytest.approx(2.25)
    assert result.rv_ef_percent == pytest.approx(50.0)
    assert result.warnings == ()


def test_lv_mass_is_ed_myocardium_voxels_times_voxel_volume_times_1_05():
    ed = _phase(8, 6)
    myocardium_voxels = 10 * (10 * 10 - 8 * 8)  # 10 slices of a 10 x 10 frame around the 8 x 8 pool
    assert np.count_nonzero(ed == LV_MYOCARDIUM) == myocardium_voxels
    result = cardiac_function(ed, _phase(5, 3), SPACING_KJI)
    expected = myocardium_voxels * 8.0 * 1.25 * 1.25 * 1.05 / 1000.0
    assert result.lv_mass_g == pytest.approx(expected)
    assert MYOCARDIAL_DENSITY_G_PER_ML == 1.05


def test_missing_rv_gives_nan_rv_ejection_fraction_with_a_warning_and_keeps_lv_results():
    ed, es = _phase(8, 6), _phase(5, 3)
    ed[ed == RV_BLOOD_POOL] = 0
    es[es == RV_BLOOD_POOL] = 0
    with pytest.warns(RuntimeWarning, match="RV end-diastolic volume is 0"):
        result = cardiac_function(ed, es, SPACING_KJI)
    assert math.isnan(result.rv_ef_percent)
    assert result.rv_edv_ml == 0.0
    assert result.lv_ef_percent == pytest.approx(37.5)
    assert any("RV end-diastolic" in note for note in result.warnings)


def test_swapped_phases_warn_and_give_negative_ejection_fraction():
    with pytest.warns(RuntimeWarning, match="swapped"):
        result = cardiac_function(_phase(5, 3), _phase(8, 6), SPACING_KJI)
    assert result.lv_ef_percent == pytest.approx(-60.0)  # (5 - 8) / 5


def test_es_frame_on_its_own_grid_uses_its_own_spacing():
    ed = _phase(8, 6)
    es = _phase(5, 3)[:, ::2, ::2]  # 2 x 2 pixels merged: half the rows and columns
    es_voxels = np.count_nonzero(es == LV_BLOOD_POOL)
    result = cardiac_function(ed, es, SPACING_KJI, es_spacing_kji_mm=(8.0, 2.5, 2.5))
    assert result.lv_esv_ml == pytest.approx(es_voxels * 8.0 * 2.5 * 2.5 / 1000.0)


def test_phases_of_different_shape_need_es_spacing():
    with pytest.raises(InputError, match="es_spacing_kji_mm"):
        cardiac_function(_phase(8, 6), _phase(5, 3)[:, :20], SPACING_KJI)


def test_codes_outside_the_label_table_are_rejected():
    ed = _phase(8, 6)
    ed[0, 0, 0] = 9
    with pytest.raises(InputError, match=r"ed_labels holds label values \[9\]"):
        cardiac_function(ed, _phase(5, 3), SPACING_KJI)


def test_two_dimensional_phase_is_rejected():
    with pytest.raises(InputError, match=r"\(k, j, i\)"):
        cardiac_function(_phase(8, 6)[0], _phase(5, 3)[0], SPACING_KJI[1:])


def test_spacing_with_wrong_length_is_rejected():
    with pytest.raises(InputError, match="spacing_kji_mm has 2 values"):
        structure_volume_ml(_phase(8, 6), LV_BLOOD_POOL, (1.25, 1.25))


def test_to_dict_has_every_field_for_json():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = cardiac_function(_phase(8, 6), _phase(5, 3), SPACING_KJI).to_dict()
    assert data["lv_ef_percent"] == pytest.approx(37.5)
    assert data["warnings"] == []
    assert set(data) >= {"lv_edv_ml", "rv_esv_ml", "lv_mass_g"}


def _acdc_phase(patient_dir, phase: str):
    from cardiac_ai.io import read_volume

    info = dict(line.split(": ", 1) for line in (patient_dir / "Info.cfg").read_text().splitlines() if ": " in line)
    frame = int(info[phase])
    return info["Group"], read_volume(patient_dir / f"{patient_dir.name}_frame{frame:02d}_gt.nii.gz")


@pytest.mark.shared_data
@pytest.mark.parametrize("patient, low, high", [("patient001", 0, 40), ("patient002", 0, 40),
                                                ("patient061", 50, 80), ("patient062", 50, 80)])
def test_acdc_reference_ejection_fraction_matches_the_patients_group(acdc_root, patient, low, high):
    # ACDC group definitions: dilated cardiomyopathy (DCM) has LV EF < 40 %, normal subjects (NOR) > 50 %.
    group, ed = _acdc_phase(acdc_root / patient, "ED")
    _, es = _acdc_phase(acdc_root / patient, "ES")
    assert ed.geometry.is_close(es.geometry)
    result = cardiac_function(ed.array, es.array, ed.geometry.spacing_kji_mm)
    assert group in ("DCM", "NOR")
    assert low < result.lv_ef_percent < high
    assert 50 < result.lv_mass_g < 300


def test_one_ventricle_growing_while_the_other_ejects_blames_its_segmentation_not_the_phases():
    with pytest.warns(RuntimeWarning) as caught:
        result = cardiac_function(_phase(8, 3), _phase(5, 6), SPACING_KJI)  # the RV "grows" from ED to ES
    notes = " ".join(str(w.message) for w in caught)
    assert result.rv_ef_percent < 0 < result.lv_ef_percent
    assert "RV end-systolic volume" in notes and "not swapped: the RV segmentation is unreliable" in notes
    assert "check that ED and ES are not swapped" not in notes


def test_an_rv_far_smaller_than_the_lv_is_called_missed_not_measured():
    ed, es = _phase(8, 1), _phase(5, 1)
    ed[:9][ed[:9] == RV_BLOOD_POOL] = 0  # RV 0.075 ml at ED against an 8 ml LV
    with pytest.warns(RuntimeWarning) as caught:  # and the RV "grows" to ES: a second note
        result = cardiac_function(ed, es, SPACING_KJI)
    assert any("under a tenth of the LV's" in str(w.message) for w in caught)
    assert any("mirrored" in note for note in result.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 1.5 ml against 8 ml: a small RV, not a missed one
        cardiac_function(_phase(8, 2), _phase(5, 1), SPACING_KJI)
