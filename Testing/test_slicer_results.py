"""The tables and warnings the Slicer module shows, parsed from the reports ``cardiacai`` really writes.

The reports come from the real command line (``segment-cine`` and ``function`` with tiny untrained models saved
here, so the numbers are arbitrary but the format is the one Slicer reads) or from the real report writer with a
:class:`CineSegmentation` built by hand, for the cases the models cannot be made to produce on purpose.
"""
from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from cardiac_ai.errors import DataError, InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.io import write_volume
from cardiac_ai.io.report import write_report
from cardiac_ai.labels import LABELS
from cardiac_ai.metrics import cardiac_function
from cardiac_ai.phantom import make_cine_phantom_pair
from cardiac_ai.provenance import Provenance
from cardiac_ai.regions.pipeline import CineSegmentation
from cardiac_ai.slicer_results import (
    CINE_TABLES,
    FUNCTION_MEASUREMENTS,
    cine_tables_from_report,
    function_rows_from_report,
    models_from_info_output,
    read_report,
    report_warnings,
    table_columns,
)

RV, MYO, LV = (LABELS[c].display_name for c in (1, 2, 3))


@pytest.fixture(scope="module")
def phantom_pair():
    return make_cine_phantom_pair(n_slices=5, shape=(64, 64), spacing_mm=(2.0, 2.0, 8.0), seed=3)


@pytest.fixture(scope="module")
def cli_reports(tmp_path_factory, phantom_pair):
    """Run ``cardiacai segment-cine`` (region-aware) and ``cardiacai function`` (baseline) on a phantom."""
    import torch

    from cardiac_ai.cli import main
    from cardiac_ai.models import ModelCard, save_model
    from cardiac_ai.preprocessing import InputSpec
    from cardiac_ai.regions.pipeline import CINE_MODEL_NAMES

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("cli_reports")
    spec = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32)).to_dict()
    for key, name in CINE_MODEL_NAMES.items():
        network, kwargs, task = ("unet2d", {"out_channels": 4, "channels": (4, 8), "strides": (2,),
                                            "num_res_units": 0}, "segmentation")
        if key == "classifier":
            network, kwargs, task = "tiny_cnn2d", {"in_channels": 1, "out_channels": 4, "features": 4}, "classification"
        card = ModelCard(name=name, version="0.1", task=task, network=network, network_kwargs=kwargs,
                         input_spec=spec, label_map={0: "background", 1: "rv", 2: "myo", 3: "lv"})
        save_model(card.build_network(), card, root / "models")
    ed, es = phantom_pair
    write_volume(ed.image, root / "ed.nii.gz")
    write_volume(es.image, root / "es.nii.gz")
    common = ["--models-dir", str(root / "models"), "--device", "cpu", "-q"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # untrained models: odd volumes, e.g. ESV > EDV
        assert main(["segment-cine", str(root / "ed.nii.gz"), "--out", str(root / "cine"), *common]) == 0
        assert main(["function", str(root / "ed.nii.gz"), str(root / "es.nii.gz"), "--out",
                     str(root / "function"), "--mode", "baseline", *common]) == 0
    return root


def _written_cine_report(folder, labels: Volume, *, probabilities=True, warn=()):
    """report.json as ``segment-cine`` writes it, for a hand-made result (labels as given)."""
    provenance = Provenance(command="segment-cine")
    for message in warn:
        provenance.warn(message)
    n_slices = labels.array.shape[0]
    regions = np.array([0, 1, 2, 3, 0][:n_slices] + [0] * max(0, n_slices - 5), np.int8)
    table = None
    if probabilities:
        table = np.full((n_slices, 4), 0.1, np.float32)
        table[np.arange(n_slices), regions] = 0.7
    voxel_ml = float(np.prod(labels.geometry.spacing_mm)) / 1000
    volumes = {LABELS[c].name: voxel_ml * int(np.count_nonzero(labels.array == c)) for c in (1, 2, 3)}
    result = CineSegmentation(labels, regions, table, True, None, volumes, volumes["lv_myocardium"] * 1.05,
                              "region-aware" if probabilities else "baseline", provenance)
    write_report(folder, provenance=provenance, results=result.to_report())
    return read_report(folder)


# -- cine ---------------------------------------------------------------------------------------------------------
def test_cine_volume_rows_from_the_real_command_follow_label_order_with_mass_last(cli_reports):
    report = read_report(cli_reports / "cine")
    rows = cine_tables_from_report(report)["volumes"]
    assert [(r["Structure"], r["Measurement"], r["Unit"]) for r in rows] == [
        (RV, "Volume", "ml"), (MYO, "Volume", "ml"), (LV, "Volume", "ml"), (MYO, "Mass", "g")]
    assert [r["Value"] for r in rows[:3]] == pytest.approx(
        [report["volumes_ml"][k] for k in ("rv_blood_pool", "lv_myocardium", "lv_blood_pool")])
    assert rows[3]["Value"] == pytest.approx(1.05 * rows[1]["Value"])


def test_cine_slice_rows_from_the_real_command_match_its_label_map(cli_reports):
    import SimpleITK as sitk

    report = read_report(cli_reports / "cine")
    rows = cine_tables_from_report(report)["slices"]
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(cli_reports / "cine" / "labels.nii.gz")))
    assert [r["Slice"] for r in rows] == list(range(labels.shape[0]))
    assert list(rows[0]) == ["Slice", "Region", "Region probability", f"{RV} (pixels)", f"{MYO} (pixels)",
                             f"{LV} (pixels)"]
    for row in rows:
        k = row["Slice"]
        assert row["Region"] in {"non-cardiac", "base", "middle", "apex"}
        assert 0.0 <= row["Region probability"] <= 1.0  # region-aware mode has a classifier probability
        assert [row[f"{n} (pixels)"] for n in (RV, MYO, LV)] == [int((labels[k] == c).sum()) for c in (1, 2, 3)]


def test_slice_rows_are_sorted_by_slice_index(tmp_path, phantom_pair):
    report = _written_cine_report(tmp_path, phantom_pair[0].labels)
    report["slices"] = report["slices"][::-1]
    assert [r["Slice"] for r in cine_tables_from_report(report)["slices"]] == [0, 1, 2, 3, 4]


def test_baseline_report_has_no_region_probability_and_it_becomes_nan_in_the_table(tmp_path, phantom_pair):
    report = _written_cine_report(tmp_path, phantom_pair[0].labels, probabilities=False)
    rows = cine_tables_from_report(report)["slices"]
    assert all(r["Region probability"] is None for r in rows)
    columns = {name: (kind, values) for name, kind, values in table_columns(rows)}
    kind, values = columns["Region probability"]
    assert kind == "float" and all(math.isnan(v) for v in values)
    assert columns["Slice"] == ("int", [0, 1, 2, 3, 4])


def test_empty_segmentation_warns_that_no_heart_was_found(tmp_path, phantom_pair):
    geometry = phantom_pair[0].labels.geometry
    empty = Volume(np.zeros_like(phantom_pair[0].labels.array), geometry)
    report = _written_cine_report(tmp_path, empty, probabilities=False, warn=["No heart found by the localiser"])
    assert report["heart_found"] is False
    messages = report_warnings(report)
    assert messages[0].startswith("No heart was found in the image") and "short-axis" in messages[0]
    assert messages[1:] == ["No heart found by the localiser"]
    assert [r["Value"] for r in cine_tables_from_report(report)["volumes"]] == [0.0, 0.0, 0.0, 0.0]


def test_cine_report_with_a_heart_warns_only_what_the_backend_warned(cli_reports):
    report = read_report(cli_reports / "cine")
    assert report["heart_found"] is True
    assert report_warnings(report) == report["provenance"]["warnings"]
    report["provenance"]["warnings"] = []
    assert report_warnings(report) == []
    assert set(cine_tables_from_report(report)) == set(CINE_TABLES)


@pytest.mark.parametrize("key", ["volumes_ml", "lv_mass_g", "slices"])
def test_cine_report_missing_a_key_is_a_data_error_naming_it(tmp_path, phantom_pair, key):
    report = _written_cine_report(tmp_path, phantom_pair[0].labels)
    del report[key]
    with pytest.raises(DataError, match=f"lacks '{key}'.*segment-cine"):
        cine_tables_from_report(report)


def test_slice_row_missing_a_pixel_count_is_a_data_error_naming_row_and_key(tmp_path, phantom_pair):
    report = _written_cine_report(tmp_path, phantom_pair[0].labels)
    del report["slices"][2]["lv_blood_pool_pixels"]
    with pytest.raises(DataError, match="Row 2 .*'lv_blood_pool_pixels'"):
        cine_tables_from_report(report)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda r: r["volumes_ml"].update(aorta=3.0), "aorta.*not CardiacAI structures"),
        (lambda r: r.update(lv_mass_g="heavy"), "lv_mass_g should be a number"),
        (lambda r: r["slices"][0].update(slice=1.5), "0-based integer"),
        (lambda r: r["slices"][1].update(rv_blood_pool_pixels=-1), "pixel count"),
        (lambda r: r.update(volumes_ml=[]), "should map structure names"),
    ],
    ids=["unknown-structure", "mass-not-number", "slice-not-int", "negative-count", "volumes-not-dict"],
)
def test_malformed_cine_values_are_data_errors(tmp_path, phantom_pair, change, match):
    report = _written_cine_report(tmp_path, phantom_pair[0].labels)
    change(report)
    with pytest.raises(DataError, match=match):
        cine_tables_from_report(report)


# -- function ------------------------------------------------------------------------------------------------------
def test_function_rows_from_the_real_command_are_in_order_with_units(cli_reports):
    report = read_report(cli_reports / "function")
    rows = function_rows_from_report(report)
    assert [(r["Structure"], r["Measurement"], r["Unit"]) for r in rows] == [
        (structure, measurement, unit) for _, structure, measurement, unit in FUNCTION_MEASUREMENTS]
    assert rows[0]["Unit"] == "ml" and rows[3] == {**rows[3], "Measurement": "Ejection fraction", "Unit": "%"}
    values = {key: row["Value"] for (key, *_), row in zip(FUNCTION_MEASUREMENTS, rows)}
    assert values == pytest.approx({k: report["function"][k] for k in values})
    assert values["lv_sv_ml"] == pytest.approx(values["lv_edv_ml"] - values["lv_esv_ml"])


def test_function_without_rv_at_ed_gives_none_ejection_fraction_and_its_warning(tmp_path, phantom_pair):
    ed, es = (case.labels.array.copy() for case in phantom_pair)
    ed[ed == 1] = 0  # no RV blood pool at end-diastole: the RV ejection fraction is undefined (NaN)
    with pytest.warns(RuntimeWarning, match="RV end-diastolic volume is 0"):
        function = cardiac_function(ed, es, phantom_pair[0].labels.geometry.spacing_kji_mm)
    provenance = Provenance(command="function")
    for message in function.warnings:
        provenance.warn(message)
    write_report(tmp_path, provenance=provenance, results={"function": function.to_dict()})
    report = read_report(tmp_path)
    rows = {(r["Structure"], r["Measurement"]): r["Value"] for r in function_rows_from_report(report)}
    assert rows[("Right ventricle", "Ejection fraction")] is None
    assert rows[("Left ventricle", "Ejection fraction")] == pytest.approx(function.lv_ef_percent)
    assert function.warnings and report_warnings(report) == list(function.warnings)  # listed once, not twice


def test_function_report_warns_about_a_phase_without_heart(cli_reports):
    report = read_report(cli_reports / "function")
    report["es"]["heart_found"] = False
    messages = report_warnings(report)
    assert "end-systolic (ES) volume" in messages[0] and "end-diastolic" not in messages[0]
    assert messages[1:] == report["provenance"]["warnings"]  # the untrained models may give odd volumes


def test_function_report_missing_a_measurement_is_a_data_error_naming_it(cli_reports):
    report = read_report(cli_reports / "function")
    del report["function"]["rv_ef_percent"]
    with pytest.raises(DataError, match="lacks 'rv_ef_percent'.*cardiacai function"):
        function_rows_from_report(report)
    with pytest.raises(DataError, match="lacks 'function'"):
        function_rows_from_report({"provenance": {}})


def test_report_without_provenance_warnings_is_a_data_error():
    with pytest.raises(DataError, match="lacks 'provenance'"):
        report_warnings({"heart_found": True})
    with pytest.raises(DataError, match="lacks 'warnings'"):
        report_warnings({"provenance": {"device": "cpu"}})


# -- files and generic tables ----------------------------------------------------------------------------------------
def test_read_report_says_when_the_backend_wrote_none_or_garbage(tmp_path):
    with pytest.raises(DataError, match="wrote no report"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="expected an object"):
        read_report(tmp_path)


def test_table_columns_types_each_column_and_fills_missing_values():
    rows = [{"n": 1, "x": 2, "name": "a", "maybe": None}, {"n": 3, "x": 2.5, "name": None, "maybe": 0.5}]
    columns = table_columns(rows)
    assert [(name, kind) for name, kind, _ in columns] == [("n", "int"), ("x", "float"), ("name", "str"),
                                                           ("maybe", "float")]
    assert columns[2][2] == ["a", ""] and math.isnan(columns[3][2][0]) and columns[3][2][1] == 0.5
    assert table_columns([]) == []


def test_table_columns_refuses_rows_with_different_keys():
    with pytest.raises(InputError, match="Row 1 has the columns"):
        table_columns([{"a": 1, "b": 2}, {"b": 2, "a": 1}])


def test_models_are_read_from_the_real_info_output_between_log_lines(tmp_path, capsys):
    from cardiac_ai.cli import main

    assert main(["info", "--json", "--models-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out.splitlines()
    expected = json.loads("\n".join(printed))["models"]
    lines = ["INFO cardiac_ai: starting", *printed, "INFO cardiac_ai.cli: info finished in 0.1 s"]
    assert models_from_info_output(lines) == expected
    assert models_from_info_output(["{", '  "models": ["cine_baseline 1.0"]', "}"]) == ["cine_baseline 1.0"]
    with pytest.raises(DataError, match="no JSON object"):
        models_from_info_output(["Traceback (most recent call last):", "ImportError: torch"])
