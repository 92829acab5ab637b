"""The summary.csv columns of one case, read from its report.json (``cardiac_ai.batch_summary``): one function for
``cardiacai batch`` and the Slicer batch script. The reports of the real commands are checked in test_batch_tasks."""
from __future__ import annotations


import pytest

from cardiac_ai.batch_summary import summary_values
from cardiac_ai.errors import DataError


def _report(command: str, warnings=(), **results) -> dict:
    return {"cardiac_ai": "0", "provenance": {"command": command, "warnings": list(warnings)}, **results}


def _qc(min_dice, flagged, review) -> dict:
    return {"min_slice_dice": min_dice, "n_flagged_slices": flagged, "needs_review": review}


def test_cine_columns_are_volumes_mass_warnings_then_qc():
    report = _report("segment-cine", ["resampled"], heart_found=True, lv_mass_g=102.94,
                     volumes_ml={"rv_blood_pool": 151.23456, "lv_blood_pool": 120.4}, qc=_qc(0.61234, 2, True))
    assert summary_values(report) == {"rv_blood_pool_ml": 151.235, "lv_blood_pool_ml": 120.4, "lv_mass_g": 102.94,
                                      "warnings": "resampled", "qc_min_dice": 0.6123, "qc_flagged_slices": 2,
                                      "qc_needs_review": True}


def test_no_heart_is_a_warning_and_without_qc_there_are_no_qc_columns():
    report = _report("segment-cine", heart_found=False, lv_mass_g=0.0, volumes_ml={"lv_blood_pool": 0.0})
    values = summary_values(report)
    assert "No heart was found" in values["warnings"] and not any(k.startswith("qc_") for k in values)
    assert "qc_min_dice" not in summary_values({**report, "qc": None})  # QC could not run: no columns either


def test_function_combines_the_qc_of_ed_and_es():
    report = _report("function", function={"lv_edv_ml": 150.0004, "lv_ef_percent": None, "warnings": ["x"]},
                     ed={"heart_found": True, "qc": _qc(0.9, 0, False)}, es={"heart_found": True, "qc": _qc(0.7, 3, True)})
    values = summary_values(report)
    assert values == {"lv_edv_ml": 150.0, "lv_ef_percent": None, "warnings": "x", "qc_min_dice": 0.7,
                      "qc_flagged_slices": 3, "qc_needs_review": True}


def test_map_columns_come_from_the_reports_statistics():
    stats = {"median": 1001.23456, "iqr": 40.0, "mean": 1003.0, "sd": 30.5, "n_pixels": 812}
    report = _report("map", kind="t2", myocardium_statistics_ms=stats, lv_blood_pool_median_ms=1500.0,
                     slices_without_myocardium=1)
    assert summary_values(report) == {
        "myocardium_t2_median_ms": 1001.235, "myocardium_t2_iqr_ms": 40.0, "myocardium_t2_mean_ms": 1003.0,
        "myocardium_t2_sd_ms": 30.5, "myocardium_pixels": 812, "lv_blood_pool_t2_median_ms": 1500.0,
        "slices_without_myocardium": 1, "warnings": ""}
    empty = summary_values({**report, "myocardium_statistics_ms": None, "lv_blood_pool_median_ms": None})
    assert empty["myocardium_t2_median_ms"] is None and empty["myocardium_pixels"] == 0


def test_fibrosis_columns_take_the_volume_unit_and_leave_what_was_not_computed_empty():
    clinical = {"scar_volume": 5.5, "mvo_volume": 0.0, "myocardium_volume": 0.0, "volume_unit": "voxels",
                "scar_percent_of_myocardium": float("nan"), "mvo_percent_of_scar": None}
    values = summary_values(_report("fibrosis", clinical=clinical, fibrosis_found=True,
                                    slice_fibrosis_probability=[0.2, 0.91234, None]))
    assert values["scar_volume_voxels"] == 5.5 and values["myocardium_volume_voxels"] == 0.0
    assert values["scar_percent_of_myocardium"] is None and values["mvo_percent_of_scar"] is None
    assert values["fibrosis_found"] is True and values["max_slice_fibrosis_probability"] == 0.912
    no_classifier = summary_values(_report("fibrosis", clinical=clinical, fibrosis_found=False))
    assert "max_slice_fibrosis_probability" not in no_classifier


def test_cam_columns_and_its_own_warnings():
    cam = {"volume_prediction": {"class": "DCM", "probabilities": {"DCM": 0.71234, "NOR": 0.28766}},
           "heart_volume_ml": 301.23456, "warnings": ["off-centre heart", "w"]}
    values = summary_values(_report("cam", ["w"], cam=cam))
    assert values == {"predicted_class": "DCM", "predicted_probability": 0.712, "p_DCM": 0.712, "p_NOR": 0.288,
                      "heart_volume_ml": 301.235, "heart_from_end_diastole": False, "warnings": "w | off-centre heart"}
    carried = summary_values(_report("cam", [], cam={**cam, "heart_from_end_diastole": True}))
    assert carried["heart_from_end_diastole"] is True


@pytest.mark.parametrize("report, match", [
    (_report("fit-map"), "No batch summary for a report of 'fit-map'"),
    (_report("qc"), "report of 'qc' lacks"),
    ({"volumes_ml": {}}, "No batch summary for a report of None"),
    (_report("segment-cine", volumes_ml={"lv_blood_pool": 1.0}), "lacks what the summary needs .*lv_mass_g"),
    (_report("map", kind="t1"), "report of 'map' lacks"),
    ([], "JSON object"),
])
def test_reports_it_cannot_summarise_are_data_errors(report, match):
    with pytest.raises(DataError, match=match):
        summary_values(report)
