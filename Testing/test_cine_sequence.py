"""Cine sequences in the Slicer module: the frame files, the batch summary read back as a volume curve, the choice of
ED and ES, and the module code that uses them (parsed; Slicer is not installed here).

The batch test runs the real ``cardiacai batch --task segment-cine`` on three phantom frames (and one broken file)
with a localiser and a baseline trained here on four phantoms for a few epochs: the curve must be what the batch's
per-frame reports say, in frame order, with ED the fullest and ES the emptiest frame.
"""
from __future__ import annotations

import ast
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from cardiac_ai import cine_sequence
from cardiac_ai.cine_sequence import (
    CineFrameVolumes,
    choose_ed_es_frames,
    frame_case_id,
    frame_from_case_id,
    frame_warnings,
    read_cine_batch,
    sequence_index_title,
    volume_curve_rows,
)
from cardiac_ai.errors import DataError, InputError

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "CardiacAI" / "CardiacAI.py"
UI = ROOT / "CardiacAI" / "Resources" / "UI" / "CardiacAI.ui"


# -- choosing ED and ES -------------------------------------------------------------------------------------------
def test_ed_is_the_largest_and_es_the_smallest_lv_volume():
    choice = choose_ed_es_frames([120.0, 95.5, 60.2, 58.9, 80.0, 118.0])
    assert (choice.ed_frame, choice.es_frame) == (0, 3)
    assert choice.ed_chosen and choice.es_chosen
    assert choice.usable_frames == (0, 1, 2, 3, 4, 5) and choice.skipped_frames == () and choice.warnings == ()


def test_ties_go_to_the_first_frame_for_ed_and_es():
    choice = choose_ed_es_frames([90.0, 130.0, 50.0, 130.0, 50.0, 70.0])
    assert (choice.ed_frame, choice.es_frame) == (1, 2)


@pytest.mark.parametrize("missing", [None, math.nan, math.inf, -math.inf, 0.0, -3.0, "n/a"])
def test_frames_without_a_positive_finite_volume_are_skipped(missing):
    # a failed frame must not become ES because its volume reads 0, nor ED because it reads inf
    choice = choose_ed_es_frames([missing, 100.0, missing, 40.0, 70.0])
    assert (choice.ed_frame, choice.es_frame) == (1, 3)
    assert choice.skipped_frames == (0, 2) and choice.usable_frames == (1, 3, 4)


def test_frames_where_no_heart_was_found_are_skipped_even_with_a_volume():
    # a frame without heart can still carry a small spurious LV volume; it must not be chosen as ES
    choice = choose_ed_es_frames([100.0, 3.0, 40.0, 70.0], heart_found=[True, False, None, True])
    assert (choice.ed_frame, choice.es_frame) == (0, 2)
    assert choice.skipped_frames == (1,)


@pytest.mark.parametrize("volumes, hearts", [
    ([None, math.nan, 80.0], None),
    ([100.0, 40.0], [False, True]),
    ([0.0, 0.0, 0.0], None),
    ([], None),
])
def test_fewer_than_two_usable_frames_is_a_clear_error(volumes, hearts):
    with pytest.raises(InputError, match=r"only [01] of \d+ frame\(s\)") as error:
        choose_ed_es_frames(volumes, heart_found=hearts)
    assert "give the ED and ES frames" in str(error.value)


def test_a_flat_curve_cannot_tell_ed_from_es():
    with pytest.raises(InputError, match="same .* in every usable frame"):
        choose_ed_es_frames([75.0, 75.0, None, 75.0])


def test_given_frames_win_and_the_other_phase_is_chosen_among_the_rest():
    volumes = [120.0, 60.0, 55.0, 100.0]
    assert (choose_ed_es_frames(volumes, ed_frame=3).ed_frame, choose_ed_es_frames(volumes, ed_frame=3).es_frame) \
        == (3, 2)
    both = choose_ed_es_frames(volumes, ed_frame=1, es_frame=0)
    assert (both.ed_frame, both.es_frame, both.ed_chosen, both.es_chosen) == (1, 0, False, False)
    es_given = choose_ed_es_frames(volumes, es_frame=0)  # ED is then the largest of the other frames
    assert (es_given.ed_frame, es_given.es_frame, es_given.ed_chosen) == (3, 0, True)
    # given frames need no usable curve at all, but a warning says when the frame has no volume
    blind = choose_ed_es_frames([None, None, None], ed_frame=0, es_frame=2)
    assert (blind.ed_frame, blind.es_frame) == (0, 2) and len(blind.warnings) == 2
    assert "ED frame 0" in blind.warnings[0] and "ES frame 2" in blind.warnings[1]
    with pytest.raises(InputError, match="choose ES from"):
        choose_ed_es_frames([100.0, None, None], ed_frame=0)


@pytest.mark.parametrize("ed, es, match", [
    (3, None, "from 0 to 2"), (None, -1, "from 0 to 2"), (1.0, None, "frame number"), (True, None, "frame number"),
    (1, 1, "both frame 1"),
])
def test_bad_given_frames_are_refused(ed, es, match):
    with pytest.raises(InputError, match=match):
        choose_ed_es_frames([100.0, 50.0, 70.0], ed_frame=ed, es_frame=es)
    with pytest.raises(ValueError, match=match):  # what the Slicer Logic catches before anything runs
        cine_sequence.check_frame_numbers(3, ed, es)


def test_heart_flags_of_another_length_are_refused():
    with pytest.raises(InputError, match="heart_found has 2 values for 3 frames"):
        choose_ed_es_frames([100.0, 50.0, 70.0], heart_found=[True, True])


def test_the_convention_is_in_the_docstring():
    doc = " ".join(choose_ed_es_frames.__doc__.split())
    assert "largest LV blood-pool volume" in doc and "smallest" in doc and "first frame" in doc


# -- frame names, index column and curve rows ------------------------------------------------------------------------
def test_frame_file_names_sort_in_frame_order_and_read_back():
    names = [frame_case_id(k) for k in (0, 2, 10, 9, 123)]
    assert sorted(names) == [frame_case_id(k) for k in (0, 2, 9, 10, 123)]
    assert [frame_from_case_id(n) for n in names] == [0, 2, 10, 9, 123]
    with pytest.raises(InputError, match="-1"):
        frame_case_id(-1)
    with pytest.raises(DataError, match="not a cine frame"):
        frame_from_case_id("patient001")


@pytest.mark.parametrize("name, unit, title", [
    ("time", "ms", "time (ms)"), ("trigger", "", "trigger"), ("", "", "Index"), ("  ", "s", "Index (s)"),
])
def test_sequence_index_title(name, unit, title):
    assert sequence_index_title(name, unit) == title


def _frames():
    return [
        CineFrameVolumes(0, "ok", 120.0, 150.0, 90.0, True),
        CineFrameVolumes(1, "failed", error="InputError: not a short-axis stack"),
        CineFrameVolumes(2, "ok", 0.0, 0.0, 0.0, False),
        CineFrameVolumes(3, "ok", 50.0, 70.0, 95.0, True),
        CineFrameVolumes(4, "missing"),
    ]


def test_curve_rows_mark_ed_es_and_explain_unusable_frames():
    frames = _frames()
    choice = choose_ed_es_frames([f.lv_blood_pool_ml for f in frames], heart_found=[f.heart_found for f in frames])
    assert (choice.ed_frame, choice.es_frame) == (0, 3)
    rows = volume_curve_rows(frames, ["0", "40.5", "81", "121.5", "162"], index_title="time (ms)", choice=choice)
    assert list(rows[0]) == ["Frame", "time (ms)", "LV blood pool (ml)", "RV blood pool (ml)", "LV myocardium (ml)",
                             "Phase", "Note"]
    assert [r["Frame"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["time (ms)"] for r in rows] == [0.0, 40.5, 81.0, 121.5, 162.0]
    assert [r["Phase"] for r in rows] == ["ED", "", "", "ES", ""]
    assert rows[1]["Note"].startswith("failed: InputError") and rows[1]["LV blood pool (ml)"] is None
    assert rows[2]["Note"] == "no heart found" and rows[4]["Note"] == "missing" and rows[0]["Note"] == ""
    assert rows[3] == {"Frame": 3, "time (ms)": 121.5, "LV blood pool (ml)": 50.0, "RV blood pool (ml)": 70.0,
                       "LV myocardium (ml)": 95.0, "Phase": "ES", "Note": ""}


def test_curve_rows_become_typed_table_columns():
    from cardiac_ai.slicer_results import table_columns

    rows = volume_curve_rows(_frames(), ["a", "b", "c", "d", "e"])
    kinds = {name: kind for name, kind, _ in table_columns(rows)}
    assert kinds == {"Frame": "int", "Index": "str", "LV blood pool (ml)": "float", "RV blood pool (ml)": "float",
                     "LV myocardium (ml)": "float", "Phase": "str", "Note": "str"}
    lv = next(values for name, _, values in table_columns(rows) if name == "LV blood pool (ml)")
    assert math.isnan(lv[1]) and lv[0] == 120.0  # a frame without a volume is NaN, not 0


def test_curve_rows_keep_the_index_column_apart_from_the_volume_columns():
    rows = volume_curve_rows(_frames()[:1], ["7"], index_title="Frame")
    assert list(rows[0])[:2] == ["Frame", "Sequence Frame"] and rows[0]["Sequence Frame"] == 7.0
    with pytest.raises(InputError, match="2 index values for 1 frames"):
        volume_curve_rows(_frames()[:1], ["0", "1"])


def test_frame_warnings_name_failed_missing_and_heartless_frames():
    warnings = frame_warnings(_frames())
    assert len(warnings) == 3
    assert "Frame(s) 1 could not be segmented" in warnings[0] and "not a short-axis stack" in warnings[0]
    assert "Frame(s) 4 are missing" in warnings[1]
    assert "No heart was found in frame(s) 2" in warnings[2]
    assert frame_warnings([CineFrameVolumes(0, "ok", 1.0, 1.0, 1.0, True)]) == []


# -- a real batch ------------------------------------------------------------------------------------------------------
LOCALISER_SPEC = {"in_plane_spacing_mm": (4.5, 4.5), "crop_size": (32, 32)}
SEGMENTER_SPEC = {"in_plane_spacing_mm": (3.0, 3.0), "crop_size": (32, 32)}
UNET = {"out_channels": 4, "channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1}


@pytest.fixture(scope="module")
def baseline_models_dir(tmp_path_factory, one_torch_thread):
    """The localiser and baseline segmenter (what ``--mode baseline`` loads), trained on 4 phantoms x ED/ES for 6
    epochs: seconds on one thread, enough to tell ED from ES on a phantom."""
    from cardiac_ai.models import ModelCard, save_model
    from cardiac_ai.phantom import make_phantom_cohort
    from cardiac_ai.preprocessing import InputSpec
    from cardiac_ai.regions.pipeline import CINE_MODEL_NAMES
    from cardiac_ai.training import TrainingConfig
    from cardiac_ai.training.augmentation import AugmentationConfig
    from cardiac_ai.training.segmentation import train_segmentation_prepared
    from cardiac_ai.training.slices import prepare_slices

    root = tmp_path_factory.mktemp("baseline_cine_models")
    cohort = make_phantom_cohort(4, seed=5, phases=("ED", "ES"))
    train, val = cohort[:6], cohort[6:]
    for key, spec, crop in (("localiser", InputSpec(**LOCALISER_SPEC), {"crop_center": "image_center"}),
                            ("baseline", InputSpec(**SEGMENTER_SPEC), {})):
        config = TrainingConfig(network="unet2d", network_kwargs=UNET, input_spec=spec.to_dict(), epochs=6,
                                batch_size=8, learning_rate=1e-2, metric_name="val_dice", metric_mode="max")
        _, model, _ = train_segmentation_prepared(
            prepare_slices(train, spec, **crop), prepare_slices(val, spec, **crop), config=config,
            out_dir=root / f"run_{key}", augmentation=AugmentationConfig.none(), device="cpu")
        card = ModelCard(name=CINE_MODEL_NAMES[key], version="0.1", task="segmentation", network="unet2d",
                         network_kwargs=UNET, input_spec=spec.to_dict(),
                         label_map={0: "background", 1: "rv", 2: "myo", 3: "lv"}, training_data="phantom")
        save_model(model, card, root)
    return root


@pytest.fixture(scope="module")
def cine_batch(baseline_models_dir, tmp_path_factory):
    """``cardiacai batch`` over frame_0000..0002 (phantom ED, ES, ED shrunk by 10 %) and a broken frame_0003, as the
    Slicer Logic runs it (the same options, frame names from frame_case_id)."""
    from cardiac_ai.cli import main
    from cardiac_ai.io import write_volume
    from cardiac_ai.phantom import make_cine_phantom

    folder = tmp_path_factory.mktemp("cine_batch")
    frames = folder / "frames"
    frames.mkdir()
    for frame, (phase, scale) in enumerate((("ED", 1.0), ("ES", 1.0), ("ED", 0.9))):
        image = make_cine_phantom(seed=11, phase=phase, scale=scale).image
        write_volume(image, frames / (frame_case_id(frame) + cine_sequence.FRAME_SUFFIX))
    (frames / (frame_case_id(3) + cine_sequence.FRAME_SUFFIX)).write_bytes(b"not an image")
    out = folder / "out"
    code = main(["batch", str(frames), "--task", cine_sequence.BATCH_TASK, "--out", str(out), "--mode", "baseline",
                 "--device", "cpu", "--models-dir", str(baseline_models_dir), "--no-qc", "--progress-lines"])
    return code, out


def test_the_batch_exit_status_of_failed_frames_is_the_one_the_logic_tolerates(cine_batch):
    from cardiac_ai.cli import BATCH_TASK_CHOICES, EXIT_BATCH_FAILURES

    code, _ = cine_batch
    assert code == EXIT_BATCH_FAILURES == cine_sequence.BATCH_FAILURES_EXIT_CODE
    assert cine_sequence.BATCH_TASK == "segment-cine" and cine_sequence.BATCH_TASK in BATCH_TASK_CHOICES


def test_real_summary_reads_back_as_the_volume_curve_of_every_frame(cine_batch):
    _, out = cine_batch
    frames = read_cine_batch(out, n_frames=5)  # frame 4 was never written: "missing"
    assert [f.frame for f in frames] == [0, 1, 2, 3, 4]
    assert [f.status for f in frames] == ["ok", "ok", "ok", "failed", "missing"]
    for frame in frames[:3]:
        report = json.loads((out / frame_case_id(frame.frame) / "report.json").read_text())
        assert frame.heart_found is report["heart_found"] is True
        for _, attribute, structure in cine_sequence.CURVE_COLUMNS:
            assert getattr(frame, attribute) == pytest.approx(report["volumes_ml"][structure.removesuffix("_ml")],
                                                              abs=1e-3)
    assert frames[3].error and frames[3].lv_blood_pool_ml is None and frames[3].heart_found is None

    choice = choose_ed_es_frames([f.lv_blood_pool_ml for f in frames], heart_found=[f.heart_found for f in frames])
    lv = [f.lv_blood_pool_ml for f in frames[:3]]
    assert lv[0] > lv[2] > lv[1] > 0, lv  # the phantom's ED, shrunk ED and ES
    assert (choice.ed_frame, choice.es_frame) == (0, 1) and choice.skipped_frames == (3, 4)
    rows = volume_curve_rows(frames, ["0", "150", "300", "450", "600"], index_title="time (ms)", choice=choice)
    assert [r["Phase"] for r in rows] == ["ED", "ES", "", "", ""]
    assert rows[3]["Note"].startswith("failed:") and rows[4]["Note"] == "missing"
    assert len(frame_warnings(frames)) == 2


def test_a_batch_that_wrote_no_summary_or_other_cases_is_refused(tmp_path):
    with pytest.raises(DataError, match="summary.csv is missing"):
        read_cine_batch(tmp_path, n_frames=2)
    (tmp_path / "summary.csv").write_text("case_id,inputs,status\nframe_0005,x,ok\n")
    with pytest.raises(DataError, match="frame 5; the sequence has 2 frames"):
        read_cine_batch(tmp_path, n_frames=2)
    (tmp_path / "summary.csv").write_text("case_id,inputs,status,lv_blood_pool_ml\nframe_0000,x,ok,lots\n")
    with pytest.raises(DataError, match="'lots'"):
        read_cine_batch(tmp_path, n_frames=2)


# -- the module runs inside Slicer: light imports, Python 3.10 ---------------------------------------------------------
def test_cine_sequence_imports_only_the_standard_library_and_errors():
    tree = ast.parse((ROOT / "CardiacAI" / "cardiac_ai" / "cine_sequence.py").read_text(encoding="utf-8"),
                     feature_version=(3, 10))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported <= {"__future__", "csv", "json", "math", "re", "collections.abc", "dataclasses", "pathlib", "typing",
                        ".errors"}


# -- the Slicer module uses it ------------------------------------------------------------------------------------------
def _logic_methods() -> dict[str, ast.FunctionDef]:
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    logic = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CardiacAILogic")
    return {n.name: n for n in logic.body if isinstance(n, ast.FunctionDef)}


def test_logic_analyses_a_sequence_with_one_segment_cine_batch_and_compute_function():
    method = _logic_methods()["analyseCineSequence"]
    doc = ast.get_docstring(method)
    assert "Example, in Slicer's Python console::" in doc and "analyseCineSequence(" in doc and ":return:" in doc
    for key in ("curveTableNode", "edFrame", "esFrame", "edVolumeNode", "esVolumeNode", "warnings"):
        assert f'"{key}"' in doc, key
    arguments = [a.arg for a in method.args.args]
    assert arguments[:4] == ["self", "sequenceNode", "edFrame", "esFrame"]
    assert {"mode", "device", "progressCallback", "shouldCancel", "modelsDir", "qc", "qcThreshold"} <= set(arguments)
    commands = [n for n in ast.walk(method) if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "runCommand"]
    assert len(commands) == 1 and commands[0].args[0].value == "batch"  # one process for every frame
    called = {getattr(n.func, "attr", None) for n in ast.walk(method) if isinstance(n, ast.Call)}
    assert {"writeFrameFiles", "read_cine_batch", "choose_ed_es_frames", "volume_curve_rows", "computeFunction",
            "fillTable"} <= called
    source = ast.unparse(_logic_methods()["writeFrameFiles"])
    assert "volumeToFile" in source and "frame_case_id" in source


def test_process_runs_the_sequence_instead_of_the_two_volumes_when_one_is_chosen():
    source = ast.unparse(_logic_methods()["process"])
    assert "if parameterNode.cineSequence:" in source and "self.analyseCineSequence(" in source
    assert source.index("analyseCineSequence") < source.index("self.computeFunction(")
    assert "parameterNode.cineSequence" in ast.unparse(_logic_methods()["missingInputs"])


def test_ui_has_the_optional_sequence_selector_and_frame_boxes_bound_to_the_parameter_node():
    widgets = {w.get("name"): w for w in ET.parse(UI).getroot().iter("widget")}
    selector = widgets["cineSequenceSelector"]
    properties = {p.get("name"): p for p in selector.findall("property")}
    assert selector.get("class") == "qMRMLNodeComboBox"
    assert [s.text for s in properties["nodeTypes"].iter("string")] == ["vtkMRMLSequenceNode"]
    assert properties["noneEnabled"].findtext("bool") == "true"
    assert properties["SlicerParameterName"].findtext("string") == "cineSequence"
    for name, parameter in (("cineEdFrameSpinBox", "cineEdFrame"), ("cineEsFrameSpinBox", "cineEsFrame")):
        spin = {p.get("name"): p for p in widgets[name].findall("property")}
        assert spin["SlicerParameterName"].findtext("string") == parameter
        assert spin["minimum"].findtext("number") == "-1"  # -1 shows the special value: automatic
    assert widgets["mappingBullseyeLabel"].get("class") == "QLabel"


def test_self_test_runs_the_sequence_step():
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    test_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CardiacAITest")
    methods = {n.name: n for n in test_class.body if isinstance(n, ast.FunctionDef)}
    name = "test_CineSequenceChoosesEdAndEsFromTheVolumeCurveWhenModelsAreRegistered"
    assert name in methods and f"self.{name}()" in ast.unparse(methods["runTest"])
    assert "analyseCineSequence" in ast.unparse(methods[name])


def test_map_analysis_returns_the_bullseye_it_copied_out_of_the_temporary_folder():
    methods = _logic_methods()
    doc = ast.get_docstring(methods["analyseMap"])
    assert '"bullseyeVolumeNode"' in doc and '"bullseyePath"' in doc
    assert "loadBullseye" in ast.unparse(methods["analyseMap"])
    load = ast.unparse(methods["loadBullseye"])
    # copied into a folder the Logic keeps, before loading, then loaded as one file
    assert load.index("shutil.copyfile") < load.index("slicer.util.loadVolume")
    assert "'singleFile': True" in load and "tempDirectory" in load
