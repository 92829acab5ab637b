"""The tables and warnings the Slicer module shows, parsed from the reports ``cardiacai`` really writes.

The reports come from the real command line (``segment-cine`` and ``function`` with tiny untrained models saved
here, so the numbers are arbitrary but the format is the one Slicer reads) or from the real report writer with a
:class:`CineSegmentation` built by hand, for the cases the models cannot be made to produce on purpose.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

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
    CAM_AUGMENTATIONS,
    CAM_METHODS,
    FIBROSIS_MODELS,
    MAP_KINDS,
    QC_DEFAULT_THRESHOLD,
    QC_PREDICTORS,
    TRAINING_TASKS,
    cam_call,
    cam_tables_from_report,
    contour_curves,
    ecv_call,
    ecv_tables_from_report,
    fibrosis_call,
    fibrosis_tables_from_report,
    fit_map_call,
    fit_map_outputs,
    fit_map_rows,
    latest_training_log,
    map_call,
    map_tables_from_stats,
    parse_times_ms,
    qc_call,
    qc_entries,
    qc_slice_rows,
    qc_warnings,
    segment_label_codes,
    times_from_sequence_index,
    training_command,
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
    # untrained models draw no heart's shape: --min-heart-ml 0 keeps what they draw
    common = ["--models-dir", str(root / "models"), "--device", "cpu", "-q", "--min-heart-ml", "0"]
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
    # the untrained models may give odd volumes; each warning is listed once even when ED and ES both gave it
    assert messages[1:] == list(dict.fromkeys(report["provenance"]["warnings"]))


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


# -- backend command lines: every call the Slicer module builds is accepted by the real parser ------------------------
def _parsed(call):
    from cardiac_ai.cli import build_parser
    from cardiac_ai.subprocess_runner import build_command

    command = build_command(call.command, call.positional, call.options, python_executable="python")
    return build_parser().parse_args(command[3:])


@pytest.mark.parametrize("kind", sorted(MAP_KINDS))
def test_map_and_fit_map_calls_parse_with_the_kind_the_backend_expects(kind):
    args = _parsed(map_call("map.nrrd", "out", kind=kind.lower(), device="cuda:1", models_dir="models",
                            qc=False, qc_threshold=0.7))
    assert (args.command, args.input, args.kind, args.device, args.models_dir) == (
        "map", "map.nrrd", MAP_KINDS[kind][0], "cuda:1", ["models"])
    assert args.no_qc and args.qc_threshold == 0.7 and args.progress_lines
    args = _parsed(fit_map_call("series.nii.gz", "out", kind=kind, times_ms=[100, 180.5, 1100]))
    assert (args.command, args.kind, args.times, args.models_dir) == ("fit-map", MAP_KINDS[kind][1],
                                                                      [100.0, 180.5, 1100.0], [])
    assert not args.signed
    if MAP_KINDS[kind][1] == "molli":  # phase-sensitive MOLLI from the panel or the console: fit-map --signed
        assert _parsed(fit_map_call("series.nii.gz", "out", kind=kind, times_ms=[100, 1100], signed=True)).signed
    else:
        with pytest.raises(InputError, match="T1 \\(MOLLI\\)"):
            fit_map_call("series.nii.gz", "out", kind=kind, times_ms=[100, 1100], signed=True)


def test_ecv_fibrosis_cam_and_qc_calls_parse_with_their_options():
    args = _parsed(ecv_call("native.nrrd", "post.nrrd", "out", haematocrit=0.42))
    assert (args.native, args.post, args.haematocrit) == ("native.nrrd", "post.nrrd", 0.42)
    assert _parsed(ecv_call("n.nrrd", "p.nrrd", "out", haematocrit=0.0)).haematocrit is None  # 0: synthetic
    for model in FIBROSIS_MODELS:
        assert _parsed(fibrosis_call("lge.nrrd", "out", model=model)).model == model
    args = _parsed(fibrosis_call("lge.nrrd", "out", qc=False, qc_threshold=0.6, qc_predictor="search"))
    assert args.no_qc and args.qc_threshold == 0.6 and args.qc_predictor == "search"
    default = _parsed(fibrosis_call("lge.nrrd", "out"))
    assert not default.no_qc and default.qc_predictor == "auto" and not default.pixel_size_unknown
    assert _parsed(fibrosis_call("lge.nrrd", "out", pixel_size_unknown=True)).pixel_size_unknown
    assert _parsed(fibrosis_call("lge.nrrd", "out", slice_order="apex-first")).slice_order == "apex-first"
    assert default.slice_order is None
    args = _parsed(cam_call("cine.nrrd", "out", explain="DCM", method="gradcampp", pseudo_label=True))
    assert (args.explain, args.method, args.pseudo_label) == ("DCM", "gradcampp", True)
    args = _parsed(cam_call("cine.nrrd", "out", explain="predicted", method="default"))
    assert (args.explain, args.method, args.pseudo_label) == (None, None, False)
    assert _parsed(cam_call("cine.nrrd", "out", explain="slice")).explain == "slice"
    assert _parsed(cam_call("cine.nrrd", "out", structures=True)).structures
    assert not _parsed(cam_call("cine.nrrd", "out")).structures
    assert _parsed(cam_call("cine.nrrd", "out")).lv_wall_mm is None  # the backend's default
    assert _parsed(cam_call("cine.nrrd", "out", lv_wall_mm=0)).lv_wall_mm == 0.0  # 0 is given, not absent
    assert _parsed(cam_call("cine.nrrd", "out", lv_wall_mm=np.float32(7.5))).lv_wall_mm == 7.5
    for bad in (-1, float("nan"), "wide"):
        with pytest.raises(InputError, match="LV wall width"):
            cam_call("cine.nrrd", "out", lv_wall_mm=bad)
    assert _parsed(cam_call("es.nrrd", "out", end_diastole_path="ed.nrrd")).ed == "ed.nrrd"
    assert _parsed(cam_call("es.nrrd", "out")).ed is None
    with pytest.raises(InputError, match="end-diastolic frame is missing"):
        cam_call("es.nrrd", "out", end_diastole_path=" ")
    args = _parsed(qc_call("image.nrrd", "labels.nrrd", "out", threshold=0.9, write_surrogate=True))
    assert (args.image, args.labels, args.threshold, args.write_surrogate) == ("image.nrrd", "labels.nrrd", 0.9, True)
    assert _parsed(qc_call("i.nrrd", "l.nrrd", "out")).threshold == QC_DEFAULT_THRESHOLD
    assert _parsed(qc_call("i.nrrd", "l.nrrd", "out", predictor="regressor")).predictor == "regressor"
    assert _parsed(qc_call("i.nrrd", "l.nrrd", "out")).predictor == "auto"
    assert _parsed(qc_call("i.nrrd", "l.nrrd", "out")).label_codes is None
    assert _parsed(qc_call("i.nrrd", "l.nrrd", "out", structures=[2])).label_codes == ["MYO=2"]
    assert _parsed(qc_call("i.nrrd", "l.nrrd", "out", structures=(3, 1, 2, 4))).label_codes == [
        "RV=1", "MYO=2", "LV=3", "SCAR=4"]
    with pytest.raises(InputError, match="label codes"):
        qc_call("i.nrrd", "l.nrrd", "out", structures=[9])
    from cardiac_ai.slicer_results import partial_structures

    assert partial_structures([2]) == [2] and partial_structures([3, 2, 4]) == [2, 3, 4]
    assert partial_structures([1, 2, 3]) is None and partial_structures([4, 3, 2, 1]) is None  # a whole heart


def test_cam_call_passes_the_averaging_and_pseudo_label_settings_the_cli_accepts():
    from cardiac_ai.cli import _pseudo_label_overrides

    default = _parsed(cam_call("cine.nrrd", "out", pseudo_label=True))
    settings = ("cam_augment", "crf_iterations", "crf_smoothness", "crf_appearance", "otsu_classes", "scale_range",
                "min_fraction")
    assert all(getattr(default, name) is None for name in settings)  # None everywhere: the model card's settings
    assert _pseudo_label_overrides(default) == {}
    assert _parsed(cam_call("cine.nrrd", "out", augment=CAM_AUGMENTATIONS)).cam_augment == list(CAM_AUGMENTATIONS)
    assert _parsed(cam_call("cine.nrrd", "out", augment="vflip")).cam_augment == ["vflip"]
    assert _parsed(cam_call("cine.nrrd", "out", augment=["shift", "shift"])).cam_augment == ["shift"]
    assert _parsed(cam_call("cine.nrrd", "out", augment=())).cam_augment is None
    args = _parsed(cam_call("cine.nrrd", "out", pseudo_label=True, augment=["hflip"], crf_iterations=7,
                            crf_smoothness=(2, 1.5), crf_appearance=[10, 60.0, 20], otsu_classes=0,
                            scale_range=(0.4, 0.9), min_fraction=0.25))
    assert args.pseudo_label and args.cam_augment == ["hflip"]
    assert (args.crf_iterations, args.crf_smoothness, args.crf_appearance) == (7, [2.0, 1.5], [10.0, 60.0, 20.0])
    assert (args.otsu_classes, args.scale_range, args.min_fraction) == (0, [0.4, 0.9], 0.25)
    assert _pseudo_label_overrides(args) == {  # the CLI's own check (run before any model loads) accepts them
        "crf_iterations": 7, "crf_w2": 2.0, "crf_theta_gamma": 1.5, "crf_w1": 10.0, "crf_theta_alpha": 60.0,
        "crf_theta_beta": 20.0, "otsu_classes": None, "scale_range": (0.4, 0.9), "min_fraction": 0.25}
    args = _parsed(cam_call("cine.nrrd", "out", pseudo_label=True, otsu_classes=3, scale_range=[0, 1],
                            min_fraction=0, crf_smoothness=[0, 3]))
    assert (args.otsu_classes, args.scale_range, args.min_fraction, args.crf_smoothness) == (
        3, [0.0, 1.0], 0.0, [0.0, 3.0])
    assert _pseudo_label_overrides(args)["otsu_classes"] == 3


def test_cam_settings_given_as_numpy_numbers_reach_the_command_line():
    import numpy as np

    from cardiac_ai.subprocess_runner import build_command

    call = cam_call("c.nrrd", "out", pseudo_label=True, crf_iterations=np.int64(7), min_fraction=np.float32(0.25),
                    scale_range=(np.float64(0.4), 1))
    argv = build_command(call.command, call.positional, call.options, python_executable="python")
    assert argv[argv.index("--crf-iterations") + 1] == "7" and argv[argv.index("--min-fraction") + 1] == "0.25"
    assert argv[argv.index("--scale-range") + 1: argv.index("--scale-range") + 3] == ["0.4", "1.0"]


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"augment": ["rotate"]}, "Unknown CAM augmentation 'rotate'"),
        ({"augment": "flip"}, "Unknown CAM augmentation 'flip'"),
        ({"crf_iterations": 5, "min_fraction": 0.2, "pseudo_label": False}, "crf_iterations, min_fraction set the"),
        ({"crf_iterations": 0}, "crf_iterations .* >= 1, got 0"),
        ({"crf_iterations": 2.5}, "whole number >= 1, got 2.5"),
        ({"crf_iterations": True}, "whole number"),
        ({"crf_smoothness": 1.0}, "crf_smoothness .* must be 2 finite numbers"),
        ({"crf_smoothness": (1, 0)}, "width > 0 pixels"),
        ({"crf_smoothness": (-1, 3)}, "weight >= 0"),
        ({"crf_appearance": (1, 80)}, "must be 3 finite numbers"),
        ({"crf_appearance": (1, 80, float("nan"))}, "must be 3 finite numbers"),
        ({"crf_appearance": (1, 80, 0)}, "grey levels"),
        ({"otsu_classes": 1}, "0 \\(no multi-Otsu step\\) or 2 to 4 .*got 1"),
        ({"otsu_classes": -1}, "otsu_classes must be 0 .* got -1"),
        ({"scale_range": (0.9, 0.5)}, "0 <= low < high <= 1"),
        ({"scale_range": (0.5, 1.5)}, "0 <= low < high <= 1"),
        ({"scale_range": ("0.5", 1)}, "2 finite numbers"),
        ({"min_fraction": 1.0}, "min_fraction must lie in \\[0, 1\\)"),
        ({"min_fraction": -0.1}, "min_fraction must lie"),
    ],
    ids=["augment-view", "augment-string", "without-pseudo-label", "iterations-0", "iterations-float",
         "iterations-bool", "smoothness-one", "smoothness-width", "smoothness-weight", "appearance-two",
         "appearance-nan", "appearance-grey", "otsu-1", "otsu-negative", "scale-reversed", "scale-above-1",
         "scale-text", "min-fraction-1", "min-fraction-negative"],
)
def test_bad_cam_settings_are_input_errors(settings, match):
    with pytest.raises(InputError, match=match):
        cam_call("c.nrrd", "out", **{"pseudo_label": True, **settings})


def test_choice_tables_match_the_cli_choices_and_the_qc_default():
    from cardiac_ai.cli import build_parser
    from cardiac_ai.qc import DEFAULT_DICE_THRESHOLD
    from cardiac_ai.qc import QC_PREDICTORS as BACKEND_QC_PREDICTORS

    commands = next(a for a in build_parser()._actions if a.choices and "cam" in a.choices).choices
    assert tuple(commands["cam"]._option_string_actions["--method"].choices) == CAM_METHODS
    assert tuple(commands["cam"]._option_string_actions["--cam-augment"].choices) == CAM_AUGMENTATIONS
    assert set(commands["fibrosis"]._option_string_actions["--model"].choices) == set(FIBROSIS_MODELS)
    assert {k for k, _ in MAP_KINDS.values()} == set(commands["map"]._option_string_actions["--kind"].choices)
    assert {k for _, k in MAP_KINDS.values()} == set(commands["fit-map"]._option_string_actions["--kind"].choices)
    assert QC_DEFAULT_THRESHOLD == DEFAULT_DICE_THRESHOLD
    assert QC_PREDICTORS == BACKEND_QC_PREDICTORS
    assert tuple(commands["qc"]._option_string_actions["--predictor"].choices) == QC_PREDICTORS
    assert tuple(commands["map"]._option_string_actions["--qc-predictor"].choices) == QC_PREDICTORS


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: map_call("m.nrrd", "out", kind="T3"), "Unknown map kind 'T3'"),
        (lambda: map_call("m.nrrd", "out", kind="T1", device="gpu"), "device must be"),
        (lambda: map_call("m.nrrd", "", kind="T1"), "output folder"),
        (lambda: map_call("m.nrrd", "out", kind="T1", qc_threshold=80), "between 0 and 1"),
        (lambda: fit_map_call("s.nrrd", "out", kind="T1", times_ms=None), "inversion time of every frame"),
        (lambda: fit_map_call("s.nrrd", "out", kind="T2", times_ms=[10, float("nan")]), "finite numbers"),
        (lambda: ecv_call("n.nrrd", "p.nrrd", "out", haematocrit=42), "percentage: use 0.42"),
        (lambda: fibrosis_call("l.nrrd", "out", model="strong"), "Unknown fibrosis model"),
        (lambda: fibrosis_call("l.nrrd", "out", slice_order="sideways"), "Unknown slice order"),
        (lambda: cam_call("c.nrrd", "out", method="lime"), "Unknown CAM method"),
        (lambda: cam_call("c.nrrd", "out", explain="--overwrite"), "one class name"),
        (lambda: qc_call("i.nrrd", None, "out"), "label map file is missing"),
        (lambda: map_call("m.nrrd", "out", kind="T1", qc_predictor="vae"), "Unknown QC predictor 'vae'"),
        (lambda: qc_call("i.nrrd", "l.nrrd", "out", predictor=None), "Unknown QC predictor"),
    ],
    ids=["kind", "device", "no-out", "qc-threshold", "no-times", "nan-time", "haematocrit-percent", "fibrosis-model",
         "fibrosis-slice-order", "cam-method", "cam-explain-flag", "qc-no-labels", "qc-predictor", "qc-predictor-none"],
)
def test_bad_panel_settings_are_input_errors_before_anything_runs(build, match):
    with pytest.raises(InputError, match=match):
        build()


def test_times_typed_in_the_panel_are_read_in_order():
    assert parse_times_ms("100, 180,260 ; 1100  1180") == [100.0, 180.0, 260.0, 1100.0, 1180.0]
    assert parse_times_ms("") is None and parse_times_ms("  ") is None and parse_times_ms(None) is None
    with pytest.raises(InputError, match="'1OO' in the times"):
        parse_times_ms("1OO, 180")
    with pytest.raises(InputError, match="-5"):
        parse_times_ms("100, -5")


def test_sequence_index_gives_times_only_when_it_holds_them():
    assert times_from_sequence_index("InversionTime", "ms", ["100", "180.5"], kind="T1") == [100.0, 180.5]
    assert times_from_sequence_index("inversion_time", "s", ["0.1", "0.2"], kind="T1") == [100.0, 200.0]
    assert times_from_sequence_index("T2PrepTime", "ms", ["0", "25", "55"], kind="T2") == [0.0, 25.0, 55.0]
    assert times_from_sequence_index("time", "s", ["0", "0.03"], kind="T1") is None  # a cine time axis
    assert times_from_sequence_index("InversionTime", "ms", ["100"], kind="T2") is None
    assert times_from_sequence_index("InversionTime", "ms", ["n/a"], kind="T1") is None
    assert times_from_sequence_index("InversionTime", "mm", ["100"], kind="T1") is None


# -- quality control: the real `cardiacai qc` and the QC that segment-cine / function run ------------------------------
@pytest.fixture(scope="module")
def qc_report(tmp_path_factory, cli_reports, phantom_pair, tiny_qc_models):
    """`cardiacai qc` with a tiny QC VAE and a threshold no slice reaches: every assessed slice is flagged.

    segment-cine, function and map write the same ``qc`` object (``QCResult.to_dict``) into their reports."""
    from cardiac_ai.cli import main

    root = tmp_path_factory.mktemp("qc_report")
    write_volume(phantom_pair[0].labels, root / "labels.nii.gz")
    code = main(["qc", str(cli_reports / "ed.nii.gz"), str(root / "labels.nii.gz"), "--out", str(root / "qc"),
                 "--threshold", "0.99", "--write-surrogate", "--models-dir", str(tiny_qc_models),
                 "--device", "cpu", "-q"])
    assert code == 0
    return root / "qc"


def test_qc_rows_agree_with_the_qc_slices_csv_the_backend_writes(qc_report):
    import csv

    report = read_report(qc_report)
    rows = qc_slice_rows(qc_entries(report)[""])
    with open(qc_report / "qc_slices.csv", newline="", encoding="utf-8") as f:
        written = list(csv.DictReader(f))
    assert [r["Slice"] for r in rows] == [int(w["slice"]) for w in written]
    assert list(rows[0]) == ["Slice", "Assessed", "Flagged", "Lowest predicted Dice", f"{RV} predicted Dice",
                             f"{MYO} predicted Dice", f"{LV} predicted Dice", "Rule checks"]
    for row, line in zip(rows, written):
        assert row["Flagged"] == ("yes" if line["flagged"] == "True" else "no")
        assert row["Assessed"] == ("yes" if line["assessed"] == "True" else "no")
        for name, column in (("rv_blood_pool", RV), ("lv_myocardium", MYO), ("lv_blood_pool", LV)):
            value = row[f"{column} predicted Dice"]
            assert (value is None) == (line[f"dice_{name}"] == "")
            if value is not None:
                assert value == pytest.approx(float(line[f"dice_{name}"]))
    assert {r["Flagged"] for r in rows if r["Assessed"] == "no"} <= {"no"}


def test_flagged_slices_give_one_clear_warning_naming_them(qc_report):
    report = read_report(qc_report)
    qc = report["qc"]
    assert qc["flagged_slices"], "threshold 0.99 should flag slices"
    messages = qc_warnings(report)
    assert len(messages) == 1
    assert f"slices {', '.join(map(str, qc['flagged_slices']))}" in messages[0]
    assert "below 0.99" in messages[0] and "Review the flagged slices" in messages[0]
    report["qc"] = {**qc, "flagged_slices": [], "n_flagged_slices": 0, "needs_review": False,
                    "rules": {**qc["rules"], "passed": True}}
    assert qc_warnings(report) == []
    report["qc"] = {**report["qc"], "rules": {"passed": False, "volume_reasons": ["RV missing on the mid slice"]},
                    "needs_review": True, "indicative": True}
    assert "rule checks of the segmentation failed: RV missing" in qc_warnings(report)[0]
    assert "indicative only" in qc_warnings(report)[0]


def test_qc_entries_are_found_by_phase_and_skipped_qc_gives_none(qc_report):
    qc = read_report(qc_report)["qc"]
    assert set(qc_entries({"qc": qc})) == {""}
    # cardiacai function writes ed.qc and es.qc; a phase whose QC could not run has null
    function = {"ed": {"qc": qc}, "es": {"qc": None}, "function": {}}
    assert set(qc_entries(function)) == {"ED"}
    assert "in the end-diastolic (ED) segmentation" in qc_warnings(function)[0]
    assert qc_entries({"qc": None, "provenance": {"warnings": []}}) == {}  # QC could not run
    assert qc_entries({"volumes_ml": {}}) == {}  # --no-qc
    with pytest.raises(DataError, match="'qc' should be an object or null"):
        qc_entries({"qc": [1, 2]})
    with pytest.raises(DataError, match="lacks 'slices'"):
        qc_slice_rows({"structures": {"lv_myocardium": 2}})


def test_segment_names_map_to_label_codes_and_unknown_names_are_refused():
    assert segment_label_codes([RV, "lv_myocardium", "LV"]) == {RV: 1, "lv_myocardium": 2, "LV": 3}
    assert segment_label_codes(["Myo", "Scar", "MVO"]) == {"Myo": 2, "Scar": 4, "MVO": 5}
    with pytest.raises(InputError, match="'Segment_1' is not a CardiacAI structure"):
        segment_label_codes(["Segment_1"])
    with pytest.raises(InputError, match="'LV' and 'Left ventricle blood pool' are the same structure"):
        segment_label_codes(["LV", "Left ventricle blood pool"])


def test_overlapping_segments_are_painted_so_that_a_whole_heart_stays_under_its_structures():
    """What the Slicer Logic does with the order: a later segment wins where two overlap."""
    import numpy as np

    from cardiac_ai.slicer_results import segment_paint_order

    codes = segment_label_codes(["Heart", "Scar", "Myo", "LV", "RV"])
    order = segment_paint_order(codes)
    assert order == ["Heart", "RV", "Myo", "LV", "Scar"]
    heart, myocardium, scar = np.zeros((3, 8), bool), np.zeros((3, 8), bool), np.zeros((3, 8), bool)
    heart[:, 1:7], myocardium[1, 2:6], scar[1, 4:6] = True, True, True
    masks = {"Heart": heart, "Myo": myocardium, "Scar": scar, "LV": np.zeros_like(heart), "RV": np.zeros_like(heart)}
    labels = np.zeros((3, 8), np.uint8)
    for name in order:
        labels[masks[name]] = codes[name]
    assert labels[1].tolist() == [0, 6, 2, 2, 4, 4, 6, 0]


# -- T1/T2 mapping and ECV: the real map and ecv commands, with the ground truth in place of the network ---------------
@pytest.fixture(scope="module")
def mapping_outputs(tmp_path_factory, save_untrained_map_model):
    """`analyse_map_file` and `ecv_files` on a phantom mapping case, the network replaced by the true labels, and
    `fit_map_file` on a small noiseless MOLLI series."""

    from cardiac_ai.mapping import MappingModels, make_mapping_case
    from cardiac_ai.mapping import pipeline as mapping_pipeline
    from cardiac_ai.models import ModelRegistry
    from cardiac_ai.phantom import make_cine_phantom
    from cardiac_ai.pipeline import analyse_map_file, ecv_files, fit_map_file

    root = tmp_path_factory.mktemp("mapping_outputs")
    case = make_mapping_case(make_cine_phantom(seed=5, shape=(80, 80), spacing_mm=(2.0, 2.0, 8.0)), seed=5,
                             disease="none", noise=0.0, misregistration_px=0.0)
    save_untrained_map_model(root / "models")
    models = MappingModels.from_registry(ModelRegistry(paths=[root / "models"]), device="cpu")
    write_volume(case.t1_map_ms, root / "t1.nii.gz")
    post = np.where(case.t1_map_ms.array > 0, 0.5 * case.t1_map_ms.array, 0).astype(np.float32)
    write_volume(case.t1_map_ms.with_array(post), root / "post.nii.gz")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mapping_pipeline, "_segment_probabilities",
                      lambda *args, **kwargs: np.moveaxis(np.eye(4, dtype=np.float32)[case.labels.array], -1, 0))
        analysis = analyse_map_file(root / "t1.nii.gz", root / "map", kind="t1", models=models, device="cpu")
        ecv_files(root / "t1.nii.gz", root / "post.nii.gz", root / "ecv", models=models, haematocrit=0.4,
                  device="cpu")
    series = case.molli.with_array(case.molli.array[:, 1:2, 20:60, 20:60], axes="tkji")
    from cardiac_ai.io import volume_to_sitk
    import SimpleITK as sitk

    sitk.WriteImage(volume_to_sitk(series), str(root / "molli.nii.gz"))
    fit_map_file(root / "molli.nii.gz", root / "fit", kind="molli", times_ms=case.inversion_times_ms, device="cpu")
    return {"root": root, "case": case, "analysis": analysis}


def test_map_tables_hold_the_statistics_stats_json_holds(mapping_outputs):
    out = mapping_outputs["root"] / "map"
    stats = json.loads((out / "stats.json").read_text())
    tables = map_tables_from_stats(stats)
    summary = {r["Region"]: r for r in tables["summary"]}
    assert summary["Myocardium"]["Median (ms)"] == pytest.approx(stats["myocardium"]["median"])
    assert summary["Myocardium"]["Pixels"] == int((mapping_outputs["analysis"].labels.array == 2).sum())
    assert summary["LV blood pool"]["Pixels"] == stats["lv_blood_pool"]["n_pixels"] > 0
    assert [r["Slice"] for r in tables["slices"]] == [0, 1, 2]
    assert [r["Level"] for r in tables["slices"]] == ["base", "mid", "apex"]
    segments = tables["segments"]
    assert segments and [r["AHA segment"] for r in segments] == sorted(int(k) for k in stats["segments"])
    assert all(1 <= r["AHA segment"] <= 16 and r["Name"] for r in segments)
    columns = dict((name, kind) for name, kind, _ in table_columns(tables["slices"]))
    assert columns["Median (ms)"] == "float" and columns["Pixels"] == "int" and columns["Level"] == "str"


def test_contour_curves_are_the_contours_in_ras_around_the_myocardium(mapping_outputs):
    out = mapping_outputs["root"] / "map"
    contours = json.loads((out / "contours.json").read_text())
    curves = contour_curves(contours)
    assert [c["name"] for c in curves[:2]] == ["Slice 0 endocardium", "Slice 0 epicardium"]
    geometry = mapping_outputs["case"].labels.geometry
    for curve in curves:
        points = np.asarray(curve["points_ras"])
        lps = points * [-1, -1, 1]
        kji = np.linalg.solve(geometry.ijk_to_lps_matrix(), np.c_[lps, np.ones(len(lps))].T)[:3].T[:, ::-1]
        assert np.allclose(kji[:, 0], curve["slice"], atol=1e-3)  # on its own slice
        myocardium = np.argwhere(mapping_outputs["analysis"].labels.array[curve["slice"]] == 2)
        centre = np.argwhere(mapping_outputs["analysis"].labels.array[curve["slice"]] > 0).mean(axis=0)
        assert np.linalg.norm(kji[:, 1:].mean(axis=0) - centre) < 2.0  # around the LV, in the map's own pixels
        nearest = np.min(np.linalg.norm(kji[:, None, 1:] - myocardium[None], axis=2), axis=1)
        assert nearest.max() < 1.5  # every point on the myocardium's border
    endo, epi = (np.asarray(c["points_ras"]) for c in curves[:2])
    assert np.ptp(epi[:, 0]) > np.ptp(endo[:, 0])  # the epicardium encloses the endocardium
    with pytest.raises(DataError, match="not \\(x, y, z\\)"):
        contour_curves({"slices": [{"endocardium": {"points_lps_mm": [[1, 2]]}}]})


def test_fit_map_rows_and_outputs_follow_the_real_fit(mapping_outputs):
    report = read_report(mapping_outputs["root"] / "fit")
    assert fit_map_outputs(report) == ("t1_map.nii.gz", "r2_map.nii.gz")
    assert all((mapping_outputs["root"] / "fit" / name).is_file() for name in fit_map_outputs(report))
    rows = {r["Measurement"]: r["Value"] for r in fit_map_rows(report)}
    assert rows["Median T1 of fitted pixels"] == pytest.approx(report["median_t1_ms"])
    assert rows["Pixels fitted"] == report["n_fitted_pixels"] > 0
    assert rows["Inversion times"] == ", ".join(f"{t:g}" for t in mapping_outputs["case"].inversion_times_ms)
    with pytest.raises(DataError, match="kind 'ir'"):
        fit_map_outputs({"kind": "ir"})


def test_ecv_tables_give_the_myocardial_ecv_in_percent(mapping_outputs):
    report = read_report(mapping_outputs["root"] / "ecv")
    tables = ecv_tables_from_report(report)
    summary = {r["Measurement"]: r for r in tables["summary"]}
    assert summary["Myocardial ECV"]["Value"] == pytest.approx(100 * report["ecv"]["myocardium"]["ecv_fraction"])
    assert summary["Myocardial ECV"]["Unit"] == "%" and summary["Haematocrit (given)"]["Value"] == 0.4
    assert summary["Native T1, LV blood pool"]["Unit"] == "ms"
    regions = tables["regions"]
    assert len(regions) == len(report["ecv"]["septal_roi"]) + len(report["ecv"]["segments"])
    assert all(r["Pixels"] > 0 for r in regions)
    with pytest.raises(DataError, match="lacks 'ecv'"):
        ecv_tables_from_report({"native": {}})


# -- fibrosis and CAM: the real report writers with results built by hand ---------------------------------------------
def test_fibrosis_tables_from_a_written_fibrosis_report(tmp_path, phantom_pair):
    from cardiac_ai.fibrosis.clinical import scar_measures
    from cardiac_ai.fibrosis.pipeline import FibrosisResult

    labels = phantom_pair[0].labels.array.copy()
    labels[labels == 1] = 0
    k, j, i = np.argwhere(labels == 2)[len(np.argwhere(labels == 2)) // 2]
    labels[k, j - 2:j + 3, i - 2:i + 3][labels[k, j - 2:j + 3, i - 2:i + 3] == 2] = 4  # a little scar
    spacing = phantom_pair[0].labels.geometry.spacing_kji_mm
    measures = scar_measures(labels, pixel_spacing_ji_mm=spacing[1:], slice_spacing_mm=spacing[0],
                             levels=["base", "base", "mid", "mid", "apex"])
    probabilities = np.linspace(0.1, 0.9, labels.shape[0]).astype(np.float32)
    result = FibrosisResult(phantom_pair[0].labels.with_array(labels), probabilities, measures, "weak", True,
                            Provenance(command="fibrosis"))
    write_report(tmp_path, provenance=result.provenance, results=result.to_report())
    tables = fibrosis_tables_from_report(read_report(tmp_path))
    summary = {r["Measurement"]: r for r in tables["summary"]}
    assert summary["Scar volume (scar + MVO)"]["Value"] == pytest.approx(measures.scar_volume)
    assert summary["Scar volume (scar + MVO)"]["Unit"] == "mL"
    assert summary["Scar of the myocardium"]["Value"] == pytest.approx(measures.scar_percent_of_myocardium)
    assert summary["MVO of the scar"]["Value"] == pytest.approx(0.0)
    rows = tables["slices"]
    assert [r["Slice"] for r in rows] == list(range(labels.shape[0]))
    assert [r["Fibrosis probability"] for r in rows] == pytest.approx(probabilities.tolist())
    assert rows[k]["Scar (%)"] > 0 and all(r["Scar (%)"] in (0.0, None) or r["Slice"] == k for r in rows)
    assert tables["segments"] and max(r["Max transmurality (%)"] for r in tables["segments"]) > 0

    unassessed = scar_measures(labels, pixel_spacing_ji_mm=spacing[1:], slice_spacing_mm=spacing[0],
                               mvo_assessed=False)
    result = FibrosisResult(phantom_pair[0].labels.with_array(labels), None, unassessed, "weak", True,
                            Provenance(command="fibrosis"))
    write_report(tmp_path / "unassessed", provenance=result.provenance, results=result.to_report())
    tables = fibrosis_tables_from_report(read_report(tmp_path / "unassessed"))
    summary = {r["Measurement"]: r["Value"] for r in tables["summary"]}
    assert summary["MVO (not assessed by this model) volume"] is None  # a blank cell, not a measured 0
    assert summary["MVO (not assessed by this model) of the scar"] is None
    assert all(r["MVO area"] is None for r in tables["slices"])


def test_cam_tables_from_a_written_cam_report(tmp_path, phantom_pair):
    from cardiac_ai.weak.pipeline import CamResult

    image = phantom_pair[0].image
    n = image.array.shape[0]
    probabilities = np.tile([[0.1, 0.2, 0.5, 0.1, 0.1]], (n, 1)).astype(np.float32)
    heart = (phantom_pair[0].labels.array > 0).astype(np.uint8) * 6
    result = CamResult(image.with_array(np.zeros(image.array.shape, np.float32)), image.with_array(heart),
                       "weak_heart_unet", ("NOR", "MINF", "DCM", "HCM", "RV"), probabilities,
                       np.full(n, 2), [])
    write_report(tmp_path, provenance=Provenance(command="cam"), results={"cam": result.to_report()})
    tables = cam_tables_from_report(read_report(tmp_path))
    summary = {r["Measurement"]: r["Value"] for r in tables["summary"]}
    assert summary["Predicted class (volume)"] == "DCM" and summary["Mean probability of DCM"] == "0.500"
    assert summary["Labels from"] == "weak_heart_unet"
    voxel_ml = np.prod(image.geometry.spacing_mm) / 1000.0
    assert float(summary["Heart volume (ml)"]) == pytest.approx(np.count_nonzero(heart) * voxel_ml, abs=0.05)
    rows = tables["slices"]
    assert list(rows[0]) == ["Slice", "Explained class", "Heart pixels", "P(NOR)", "P(MINF)", "P(DCM)", "P(HCM)",
                             "P(RV)"]
    assert [r["Heart pixels"] for r in rows] == [int((heart[k] > 0).sum()) for k in range(n)]
    assert {r["Explained class"] for r in rows} == {"DCM"}
    assert not any(name.startswith("Estimated") for name in summary)  # only with cam --structures
    with pytest.raises(DataError, match="lacks 'classes'"):
        cam_tables_from_report({"cam": {"slices": []}})
    from cardiac_ai.pipeline import _weak_structures_report

    split = phantom_pair[0].labels  # any RV / MYO / LV map on the image's grid
    write_report(tmp_path, provenance=Provenance(command="cam"),
                 results={"cam": result.to_report(),
                          "structures": _weak_structures_report(split, heart_from_weak_unet=True, lv_wall_mm=11.0)})
    summary = {r["Measurement"]: r["Value"] for r in cam_tables_from_report(read_report(tmp_path))["summary"]}
    assert float(summary["Estimated Left ventricle blood pool (ml, label-free, rough)"]) == pytest.approx(
        np.count_nonzero(split.array == 3) * voxel_ml, abs=0.05)
    assert {name for name in summary if name.startswith("Estimated")} == {
        f"Estimated {s} (ml, label-free, rough)"
        for s in ("Right ventricle blood pool", "Left ventricle myocardium", "Left ventricle blood pool")}


# -- training: every task has a well-formed command --------------------------------------------------------------------
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.mark.parametrize("task", sorted(TRAINING_TASKS))
def test_every_training_task_builds_a_command_its_parser_accepts(task, tmp_path):
    import argparse
    import importlib.util
    import sys
    from unittest import mock

    spec = TRAINING_TASKS[task]
    layout = spec.layouts[0]
    command = training_command(task, python_executable="python", data=tmp_path / "data", out=tmp_path / "run",
                               epochs=3, device="cpu", layout=layout, register_to=tmp_path / "models",
                               scripts_dir=SCRIPTS)
    if spec.script is None:
        from cardiac_ai.cli import build_parser

        assert command[:4] == ["python", "-m", "cardiac_ai", "train"]
        args = build_parser().parse_args(command[3:])
        assert (args.epochs, args.device, args.register_to, args.layout) == (3, "cpu", str(tmp_path / "models"),
                                                                             layout)
        return
    assert command[:2] == ["python", str(SCRIPTS / spec.script)]
    module_spec = importlib.util.spec_from_file_location(f"train_script_{task}", SCRIPTS / spec.script)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # imports only; main() is not run
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def parse_only(self, args=None, namespace=None):
        captured["args"] = original(self, args, namespace)  # exits (SystemExit 2) on an unknown option
        raise SystemExit(0)  # stop the script before it trains

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_only), \
            mock.patch.object(sys, "argv", command[1:]), pytest.raises(SystemExit) as stopped:
        module.main()  # the script's own main parses sys.argv
    assert stopped.value.code == 0
    args = captured["args"]
    assert (args.data, args.work, args.device) == (str(tmp_path / "data"), str(tmp_path / "run"), "cpu")
    for option in spec.epoch_options:
        assert getattr(args, option) == 3
    if task == "fibrosis":
        assert args.models_dir == str(tmp_path / "models")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"task": "nnunet"}, "Unknown training task 'nnunet'"),
        ({"task": "cine", "epochs": 0}, "positive integer"),
        ({"task": "fibrosis", "layout": "acdc"}, "reads auto, generic, emidec data"),
        ({"task": "qc", "scripts_dir": None}, "source checkout"),
        ({"task": "qc", "scripts_dir": "/nonexistent"}, "does not exist"),
        ({"task": "segmentation", "sampling_ratio": 0.5}, "1 \\(uniform\\) or more"),
        ({"task": "weak-cam", "sampling_ratio": 4.0}, "option of the segmentation task"),
    ],
    ids=["task", "epochs", "layout", "no-scripts", "missing-script", "sampling-below-1", "sampling-weak"],
)
def test_training_command_refuses_what_cannot_run(kwargs, match, tmp_path):
    settings = {"python_executable": "python", "data": tmp_path, "out": tmp_path / "run", "epochs": 2,
                "scripts_dir": SCRIPTS, **kwargs}
    task = settings.pop("task")
    with pytest.raises(InputError, match=match):
        training_command(task, **settings)


def test_segmentation_training_command_carries_the_batch_sampling_ratio(tmp_path):
    from cardiac_ai.cli import build_parser

    def command(ratio):
        return training_command("segmentation", python_executable="python", data=tmp_path, out=tmp_path / "run",
                                epochs=2, sampling_ratio=ratio)

    assert build_parser().parse_args(command(20.0)[3:]).sampling_ratio == 20.0
    assert "--sampling-ratio" not in command(1.0) and "--sampling-ratio" not in command(None)  # 1: uniform


def test_latest_training_log_follows_the_run_being_written(tmp_path):
    import os

    assert latest_training_log(tmp_path / "missing") is None and latest_training_log(tmp_path) is None
    first = tmp_path / "run_classifier" / "log.csv"
    second = tmp_path / "runs" / "weak_unet" / "log.csv"
    for path, stamp in ((first, 1_000), (second, 2_000)):
        path.parent.mkdir(parents=True)
        path.write_text("epoch,train_loss\n")
        os.utime(path, ns=(stamp * 10**9, stamp * 10**9))
    assert latest_training_log(tmp_path) == second
