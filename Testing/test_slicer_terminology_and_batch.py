"""The CardiacAI terminology file, the headless Slicer batch script and the training module's plot and registration.

Slicer is not installed here. The ``.term.json`` is read as JSON and checked against the label table and against the
members Slicer's terminology reader requires (``vtkSlicerTerminologiesModuleLogic``: CodeMeaning,
CodingSchemeDesignator, CodeValue; types found by designator and value). The batch script is imported as a plain
module (it imports ``slicer`` only inside ``main``) and its pure parts are run. The training module is parsed (ast).
"""
from __future__ import annotations

import ast
import csv
import importlib.util
import json
import math
import os
import re
from pathlib import Path

import pytest

from cardiac_ai.batch_summary import summary_columns, summary_values
from cardiac_ai.cli import build_parser
from cardiac_ai.errors import DataError, InputError, ModelError
from cardiac_ai.io.atomic import write_text_atomic
from cardiac_ai.io.report import write_csv, write_report
from cardiac_ai.labels import LABELS, MVO, segment_terminology_string
from cardiac_ai.models.registry import ModelCard
from cardiac_ai.pipeline import BatchCase, output_folder, run_batch
from cardiac_ai.provenance import Provenance
from cardiac_ai.slicer_results import training_log_series
from cardiac_ai.subprocess_runner import build_command
from cardiac_ai.training.engine import LOG_FILE

ROOT = Path(__file__).resolve().parents[1]
TERMINOLOGY = ROOT / "CardiacAI" / "Resources" / "CardiacAI.term.json"
BATCH_SCRIPT = ROOT / "CardiacAI" / "Scripts" / "batch_headless.py"
CARDIACAI_MODULE = ROOT / "CardiacAI" / "CardiacAI.py"
TRAINING_MODULE = ROOT / "CardiacAITraining" / "CardiacAITraining.py"


# -- terminology ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def context() -> dict:
    return json.loads(TERMINOLOGY.read_text(encoding="utf-8"))


def _key(code: dict) -> tuple[str, str]:
    """How Slicer finds a category or type in a context: coding scheme designator and code value."""
    return code["CodingSchemeDesignator"], code["CodeValue"]


def _categories(context: dict) -> list[dict]:
    return context["SegmentationCodes"]["Category"]


def _find(context: dict, category, type_) -> tuple[dict, dict]:
    category_key, type_key = (category.scheme, category.code_value), (type_.scheme, type_.code_value)
    found = [c for c in _categories(context) if _key(c) == category_key]
    assert len(found) == 1, f"category {category_key} appears {len(found)} times"
    types = [t for t in found[0]["Type"] if _key(t) == type_key]
    assert len(types) == 1, f"type {type_key} appears {len(types)} times in category {category_key}"
    return found[0], types[0]


def _first_tissue_of_each_type() -> dict:
    first = {}
    for code in sorted(LABELS):
        row = LABELS[code]
        first.setdefault(((row.category.scheme, row.category.code_value), (row.type.scheme, row.type.code_value)), row)
    return first


def test_terminology_is_the_cardiacai_context_with_the_members_slicer_requires(context):
    assert context["SegmentationCategoryTypeContextName"] == "CardiacAI"
    assert context["@schema"].endswith("segment-context-schema.json#")
    categories = _categories(context)
    assert categories and len({_key(c) for c in categories}) == len(categories)
    for category in categories:
        for member in ("CodeMeaning", "CodingSchemeDesignator", "CodeValue"):
            assert isinstance(category[member], str) and category[member], (member, category)
        assert category["showAnatomy"] is True  # the anatomic region (left or right ventricle) can be chosen
        types = category["Type"]
        assert types and len({_key(t) for t in types}) == len(types), f"repeated type in {category['CodeMeaning']}"
        for type_ in types:
            for member in ("CodeMeaning", "CodingSchemeDesignator", "CodeValue"):
                assert isinstance(type_[member], str) and type_[member], (member, type_)
            rgb = type_["recommendedDisplayRGBValue"]
            assert len(rgb) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in rgb), type_
            assert isinstance(type_.get("3dSlicerLabel", ""), str)


@pytest.mark.parametrize("code", sorted(LABELS), ids=lambda c: LABELS[c].name)
def test_every_tissue_has_its_label_table_codes_in_the_terminology(context, code):
    row = LABELS[code]
    category, type_ = _find(context, row.category, row.type)
    assert category["CodeMeaning"] == row.category.meaning
    assert type_["CodeMeaning"] == row.type.meaning
    assert row.type_modifier is None and "Modifier" not in type_  # no tissue has a type modifier


@pytest.mark.parametrize("code", sorted(LABELS), ids=lambda c: LABELS[c].name)
def test_every_tissue_colour_is_its_types_recommended_colour(context, code):
    # Slicer keys the recommended colour by category and type. The blood pools share the type Blood (and differ in
    # their anatomic region), so Blood carries the colour of the first of them; every segment's own colour is
    # written into the .seg.nrrd by the backend.
    row = LABELS[code]
    _, type_ = _find(context, row.category, row.type)
    owner = _first_tissue_of_each_type()[
        ((row.category.scheme, row.category.code_value), (row.type.scheme, row.type.code_value))
    ]
    expected = [255 * c for c in owner.color_rgb]
    assert all(abs(v - e) <= 0.5 for v, e in zip(type_["recommendedDisplayRGBValue"], expected)), (
        f"{row.name}: {type_['recommendedDisplayRGBValue']} is not {owner.name}'s colour {expected} (0-255)"
    )
    if owner is row and "3dSlicerLabel" in type_:
        assert type_["3dSlicerLabel"] == row.name


def test_terminology_has_no_category_or_type_that_the_label_table_lacks(context):
    used = set(_first_tissue_of_each_type())
    listed = {(_key(c), _key(t)) for c in _categories(context) for t in c["Type"]}
    assert listed == used


def test_codes_snomed_lacks_use_the_private_cardiacai_designator(context):
    schemes = {_key(t)[0] for c in _categories(context) for t in c["Type"]} | {_key(c)[0] for c in _categories(context)}
    assert schemes == {"SCT", "CardiacAI"}
    _, mvo = _find(context, LABELS[MVO].category, LABELS[MVO].type)
    assert _key(mvo) == ("CardiacAI", "CAI-MVO")


@pytest.mark.parametrize("code", sorted(LABELS), ids=lambda c: LABELS[c].name)
def test_segment_terminology_tags_written_by_the_backend_resolve_in_the_context(context, code):
    # Slicer looks a segment's category and type up in the named context first, then in every loaded context
    # (vtkSlicerTerminologiesModuleLogic::UpdateEntryFromLoadedTerminologies), by designator and value.
    parts = segment_terminology_string(LABELS[code]).split("~")
    assert len(parts) == 7
    (c_scheme, c_value, _), (t_scheme, t_value, _) = parts[1].split("^"), parts[2].split("^")
    category = next(c for c in _categories(context) if _key(c) == (c_scheme, c_value))
    assert any(_key(t) == (t_scheme, t_value) for t in category["Type"])


def test_cmake_installs_the_terminology_and_the_batch_script():
    text = (ROOT / "CardiacAI" / "CMakeLists.txt").read_text()
    resources = re.search(r"set\(MODULE_PYTHON_RESOURCES(.*?)\n  \)", text, flags=re.S).group(1)
    scripts = re.search(r"set\(MODULE_PYTHON_SCRIPTS(.*?)\n  \)", text, flags=re.S).group(1)
    assert "Resources/CardiacAI.term.json" in resources.split()
    assert "Scripts/batch_headless.py" in scripts.split()
    assert TERMINOLOGY.is_file() and BATCH_SCRIPT.is_file()


def _class(path: Path, name: str) -> ast.ClassDef:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name)


def test_cardiacai_module_loads_the_terminology_when_slicer_has_started():
    module_class = _class(CARDIACAI_MODULE, "CardiacAI")
    init = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    connects = [n for n in ast.walk(init) if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "connect"]
    assert [(ast.literal_eval(c.args[0]), c.args[1].attr) for c in connects] == [
        ("startupCompleted()", "loadTerminology")
    ]
    loader = next(n for n in module_class.body if isinstance(n, ast.FunctionDef) and n.name == "loadTerminology")
    constants = {n.value for n in ast.walk(loader) if isinstance(n, ast.Constant)}
    calls = {n.func.attr for n in ast.walk(loader) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
    assert {"Resources", TERMINOLOGY.name} <= constants and "LoadTerminologyFromFile" in calls


# -- headless Slicer batch script -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def batch():
    spec = importlib.util.spec_from_file_location("cardiacai_batch_headless", BATCH_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # would fail here if it imported slicer at the top
    return module


def test_batch_script_imports_slicer_only_inside_functions():
    tree = ast.parse(BATCH_SCRIPT.read_text(encoding="utf-8"))
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    roots = {alias.name.split(".")[0] for n in top_level for alias in n.names} | {
        n.module.split(".")[0] for n in top_level if isinstance(n, ast.ImportFrom) and n.module
    }
    assert not roots & {"slicer", "vtk", "qt", "ctk", "CardiacAI", "cardiac_ai"}
    main_guard = tree.body[-1]
    assert isinstance(main_guard, ast.If) and "__main__" in ast.unparse(main_guard.test)
    assert "slicer.util.exit" in ast.unparse(main_guard)


def test_batch_arguments_have_the_documented_defaults(batch, tmp_path):
    args = batch.parse_arguments(["--input-folder", str(tmp_path), "--output-folder", str(tmp_path / "out")])
    assert (args.input_folder, args.output_folder) == (tmp_path.resolve(), (tmp_path / "out").resolve())
    assert (args.task, args.device, args.mode, args.models_dir, args.overwrite) == (
        "segment-cine", "auto", "region-aware", None, False
    )
    args = batch.parse_arguments(["--input-folder", str(tmp_path), "--output-folder", str(tmp_path / "o"),
                                  "--device", "cuda:1", "--mode", "baseline", "--overwrite"])
    assert (args.device, args.mode, args.overwrite) == ("cuda:1", "baseline", True)
    assert (args.kind, args.fibrosis_model, args.explain, args.no_qc, args.qc_threshold) == (
        None, "weak", None, False, 0.8)
    args = batch.parse_arguments(["--input-folder", str(tmp_path), "--output-folder", str(tmp_path / "o"),
                                  "--task", "map", "--kind", "T2", "--no-qc"])
    assert (args.task, args.kind, args.no_qc) == ("map", "T2", True)
    assert args.slice_order == "unknown"
    args = batch.parse_arguments(["--input-folder", str(tmp_path), "--output-folder", str(tmp_path / "o"),
                                  "--task", "fibrosis", "--slice-order", "apex-first", "--no-qc"])
    assert (args.task, args.slice_order, args.no_qc) == ("fibrosis", "apex-first", True)
    assert batch.FIBROSIS_SLICE_ORDERS == _slicer_module_constants()["FIBROSIS_SLICE_ORDERS"]
    assert batch.TASK_TABLES["fibrosis"]["qcTableNode"] == "qc.csv"


def _slicer_module_constants() -> dict:
    """The module-level constants of CardiacAI.py (it imports Slicer, so it is read, not imported)."""
    import ast

    tree = ast.parse((ROOT / "CardiacAI" / "CardiacAI.py").read_text(encoding="utf-8"))
    return {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id.isupper() and isinstance(node.value, (ast.Tuple, ast.Constant))}


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ([], "--input-folder"),
        (["--input-folder", "{tmp}/missing", "--output-folder", "{tmp}/out"], "is not a folder"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}"], "is the input folder"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--device", "gpu"], "--device 'gpu'"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--task", "function"], "invalid choice"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--task", "map"], "needs --kind"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--qc-threshold", "80"], "between 0 and 1"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--models-dir", "{tmp}/none"], "--models-dir"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--frobnicate"], "unrecognized"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--structures"], "applies to --task cam"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--lv-wall-mm", "5"], "applies to --task cam"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--task", "cam", "--lv-wall-mm", "-1"],
         "width from 0 to 30 mm"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--task", "cam", "--lv-wall-mm", "nan"],
         "width from 0 to 30 mm"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--task", "cam", "--lv-wall-mm", "1e6"],
         "width from 0 to 30 mm"),
        (["--input-folder", "{tmp}", "--output-folder", "{tmp}/out", "--slice-order", "base-first"],
         "applies to --task fibrosis"),
    ],
    ids=["missing", "no-input", "same-folder", "device", "task", "map-kind", "qc-threshold", "models-dir",
         "unknown-option", "structures-not-cam", "lv-wall-not-cam", "lv-wall-negative", "lv-wall-nan",
         "lv-wall-huge", "slice-order-not-fibrosis"],
)
def test_batch_rejects_bad_arguments_without_exiting_slicer(batch, tmp_path, extra, match):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    with pytest.raises(batch.UsageError, match=match):
        batch.parse_arguments(argv)


def test_batch_help_is_not_an_error(batch, capsys):
    with pytest.raises(batch.HelpShown):
        batch.parse_arguments(["--help"])
    assert "--input-folder" in capsys.readouterr().out
    assert batch.main(["--help"]) == batch.EXIT_OK


def test_batch_usage_errors_give_exit_status_2_before_slicer_is_needed(batch, tmp_path, capsys):
    assert batch.main(["--input-folder", str(tmp_path), "--output-folder", str(tmp_path / "out")]) == 2
    assert "No volume file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_batch_lists_one_case_per_volume_file(batch, tmp_path):
    for name in ("p02.nii.gz", "p01.nrrd", "p03.mha", "p01_gt.seg.nrrd", "notes.txt", ".hidden.nii"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dicom_series").mkdir()
    cases = batch.list_cases(tmp_path)
    assert [(case_id, path.name) for case_id, path in cases] == [
        ("p01", "p01.nrrd"), ("p02", "p02.nii.gz"), ("p03", "p03.mha")
    ]


def test_batch_refuses_two_files_of_one_case(batch, tmp_path):
    (tmp_path / "p01.nii").write_bytes(b"")
    (tmp_path / "p01.nrrd").write_bytes(b"")
    with pytest.raises(batch.UsageError, match="both give the case id 'p01'"):
        batch.list_cases(tmp_path)


def test_a_case_counts_as_done_only_with_a_usable_report_whose_numbers_the_resumed_summary_keeps(tmp_path, caplog):
    from cardiac_ai.batch_summary import earlier_summary_values

    case = tmp_path / "p01"
    assert earlier_summary_values(case) is None
    case.mkdir()
    (case / "segmentation.seg.nrrd").write_bytes(b"")
    assert earlier_summary_values(case) is None  # outputs without the report, written last: unfinished
    (case / "report.json").write_text("{not json")
    assert earlier_summary_values(case) is None and "running it again" in caplog.text
    report = _cine_report({"rv_blood_pool": 151.2, "lv_myocardium": 98.0, "lv_blood_pool": 120.4}, [])
    (case / "report.json").write_text(json.dumps(report))
    assert earlier_summary_values(case) == summary_values(report)


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _cine_report(volumes: dict, warnings: list) -> dict:
    return {"provenance": {"command": "segment-cine", "warnings": warnings}, "heart_found": True,
            "volumes_ml": volumes, "lv_mass_g": 102.9}


def test_batch_summary_rows_read_back_with_volumes_errors_and_empty_cells(batch, tmp_path):
    report = _cine_report({"rv_blood_pool": 151.23456, "lv_myocardium": 98.0, "lv_blood_pool": 120.4},
                          ["slice 3 flagged", "resampled"])
    rows = [
        batch.summary_row("p01", tmp_path / "p01.nii.gz", status="ok", values=summary_values(report), seconds=12.34567),
        batch.summary_row("p02", tmp_path / "p02.nii.gz", status="failed", error=RuntimeError("bad file"), seconds=1),
        batch.summary_row("p03", tmp_path / "p03.nii.gz", status="skipped (done earlier)"),
    ]
    write_csv(tmp_path / "summary.csv", rows, columns=summary_columns(rows))  # as the script, in Slicer
    back = _read_csv(tmp_path / "summary.csv")
    assert [r["status"] for r in back] == ["ok", "failed", "skipped (done earlier)"]
    assert back[0]["rv_blood_pool_ml"] == "151.235" and back[0]["lv_mass_g"] == "102.9"
    assert back[0]["warnings"] == "slice 3 flagged | resampled" and back[0]["seconds"] == "12.346"
    assert back[1]["error"] == "RuntimeError: bad file" and back[1]["rv_blood_pool_ml"] == ""
    assert back[2]["seconds"] == "" and back[2]["inputs"].endswith("p03.nii.gz")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]  # no temporary file left behind
    assert batch.exit_status(rows) == batch.EXIT_CASES_FAILED == 5
    assert batch.exit_status([rows[0], rows[2]]) == batch.EXIT_OK


def test_batch_summary_has_the_columns_of_cardiacai_batch(batch, tmp_path):
    """The same report gives the same row, whichever front end ran the case (seconds aside)."""
    report = _cine_report({"rv_blood_pool": 151.2, "lv_myocardium": 98.0, "lv_blood_pool": 120.4}, ["w"])
    report["qc"] = {"min_slice_dice": 0.61234, "n_flagged_slices": 2, "needs_review": True}

    def job(case, case_dir):
        if case.case_id == "bad":
            raise InputError("not a short-axis stack")
        return report

    cases = [BatchCase("good", (tmp_path / "good.nii.gz",)), BatchCase("bad", (tmp_path / "bad.nii.gz",))]
    run_batch(cases, tmp_path / "plain", task="segment-cine", models=None, job=job)
    plain = _read_csv(tmp_path / "plain" / "summary.csv")

    rows = [batch.summary_row("good", tmp_path / "good.nii.gz", status="ok", seconds=1.0,
                              values=summary_values(report)),
            batch.summary_row("bad", tmp_path / "bad.nii.gz", status="failed", seconds=1.0,
                              error=InputError("not a short-axis stack"))]
    write_csv(tmp_path / "slicer.csv", rows, columns=summary_columns(rows))  # as the script
    slicer = _read_csv(tmp_path / "slicer.csv")
    assert list(slicer[0]) == list(plain[0])
    assert plain[0]["qc_min_dice"] == "0.6123" and plain[0]["qc_needs_review"] == "True"
    for ours, theirs in zip(slicer, plain):
        assert {k: v for k, v in ours.items() if k != "seconds"} == {k: v for k, v in theirs.items() if k != "seconds"}


def _writing_job(report: dict, settings: dict):
    """A batch job that writes like a command: labels, a QC table when settings["qc"], then its report."""
    def job(case, case_dir):
        if case.case_id.startswith("bad"):
            raise InputError("not a short-axis stack")
        with output_folder(case_dir, overwrite=True) as folder:
            write_text_atomic(folder / "labels.csv", "1")
            if settings["qc"]:
                write_text_atomic(folder / "qc_slices.csv", "2")
            results = {k: v for k, v in report.items() if k != "provenance"}
            write_report(folder, provenance=Provenance(command="segment-cine"), results=results)
        return report
    return job


def test_batch_summary_header_is_the_same_whether_cases_fail_run_or_are_skipped(tmp_path):
    report = _cine_report({"rv_blood_pool": 151.2, "lv_myocardium": 98.0, "lv_blood_pool": 120.4}, [])
    job = _writing_job(report, {"qc": True})
    cases = [BatchCase("bad", (tmp_path / "a.nii.gz",)), BatchCase("good", (tmp_path / "g.nii.gz",))]
    run_batch(cases, tmp_path / "out", task="segment-cine", models=None, job=job)
    first = _read_csv(tmp_path / "out" / "summary.csv")
    run_batch(cases[1:], tmp_path / "out", task="segment-cine", models=None, job=job)  # skipped: no seconds
    again = _read_csv(tmp_path / "out" / "summary.csv")
    columns = list(first[0])
    assert columns[:3] == ["case_id", "inputs", "status"] and columns[-2:] == ["error", "seconds"]
    assert list(again[0]) == columns and again[0]["status"] == "skipped (done earlier)"
    assert again[0]["rv_blood_pool_ml"] == first[1]["rv_blood_pool_ml"] == "151.2"


def test_a_redone_batch_case_keeps_nothing_of_its_earlier_run_but_the_users_files(tmp_path):
    report = _cine_report({"rv_blood_pool": 151.2, "lv_myocardium": 98.0, "lv_blood_pool": 120.4}, [])
    settings = {"qc": True}
    cases = [BatchCase("good", (tmp_path / "g.nii.gz",))]
    run_batch(cases, tmp_path / "out", task="segment-cine", models=None, job=_writing_job(report, settings))
    case = tmp_path / "out" / "good"
    (case / "notes.txt").write_text("mine")
    settings["qc"] = False
    run_batch(cases, tmp_path / "out", task="segment-cine", models=None, job=_writing_job(report, settings),
              resume=False)
    assert {p.name for p in case.iterdir()} == {"labels.csv", "report.json", "notes.txt"}


def test_batch_script_summarises_through_the_backend_and_writes_atomically():
    """The script computes no summary column itself: it calls the backend's summary_values on the Logic's report,
    and writes tables, summary and report with the backend's atomic writers."""
    source = BATCH_SCRIPT.read_text(encoding="utf-8")
    assert 'importBackend("batch_summary").summary_values' in source and 'summaryValues(result["report"])' in source
    assert "reportIO.write_json(caseFolder / DONE_MARKER" in source
    assert 'importBackend("batch_summary").earlier_summary_values' in source  # resumed cases keep their numbers
    assert source.count("columns=summaryColumns([*rows, *kept])") == 2  # one header whatever the rows hold
    # the refusals and the kept rows of `cardiacai batch`, from the backend, not written again here
    assert "pipeline.check_batch_folders(batchCases" in source
    assert "pipeline.finished_cases_of_earlier_runs(args.output_folder" in source
    assert "write_text(" not in source and "csv.DictWriter" not in source


def test_batch_script_checks_case_ids_with_the_backends_rules(batch, tmp_path):
    """The headless batch lists the cases itself but judges their ids as `cardiacai batch` does: P01 and p01 (one
    folder on Windows and macOS) and CON (no folder on Windows) are refused before any case runs."""
    from cardiac_ai.errors import DataError
    from cardiac_ai.pipeline import check_case_id, check_unique_case_ids

    for name in ("P01.nii.gz", "p01.nrrd", "CON.nii.gz"):
        (tmp_path / name).write_text("image")
    ids = [case_id for case_id, _ in batch.list_cases(tmp_path)]
    assert ids == ["CON", "P01", "p01"]  # the script's own listing lets them through ...
    with pytest.raises(DataError, match="ignoring upper/lower case.*P01 / p01"):
        check_unique_case_ids(ids)  # ... the backend's rules do not
    with pytest.raises(DataError, match="'CON' cannot name a folder on Windows"):
        check_case_id("CON", "x")
    source = BATCH_SCRIPT.read_text(encoding="utf-8")
    assert "pipeline.check_case_id(caseId" in source and "pipeline.check_unique_case_ids(" in source
    assert source.index("check_unique_case_ids(") < source.index("for number, (caseId, inputPath) in enumerate")


# -- training: live loss plot, registration ----------------------------------------------------------------------------
ENGINE_LOG = "epoch,train_loss,val_dice,val_loss,lr,seconds\n1,0.91,,,0.001,3.2\n2,0.72,0.41,0.66,0.001,3.1\n"


def test_training_log_series_gives_one_number_per_epoch_and_nan_where_not_validated():
    series = training_log_series(ENGINE_LOG)
    assert list(series) == ["epoch", "train_loss", "val_dice", "val_loss", "lr", "seconds"]
    assert series["epoch"] == [1.0, 2.0] and series["train_loss"] == [0.91, 0.72]
    assert math.isnan(series["val_dice"][0]) and series["val_dice"][1] == 0.41


def test_training_log_series_of_a_log_not_written_yet_is_empty():
    assert training_log_series("") == {}
    assert training_log_series("\n\n") == {}
    assert training_log_series("epoch,train_loss,lr,seconds\r\n") == {"epoch": [], "train_loss": [], "lr": [],
                                                                       "seconds": []}


def test_training_log_series_reads_windows_line_ends_and_blank_lines():
    windows = training_log_series(ENGINE_LOG.replace("\n", "\r\n") + "\r\n")
    unix = training_log_series(ENGINE_LOG)
    assert list(windows) == list(unix)
    for column, values in unix.items():  # one approx per column: newer pytest refuses nested containers
        assert windows[column] == pytest.approx(values, nan_ok=True), column


@pytest.mark.parametrize(
    ("text", "error", "match"),
    [
        ("step,loss\n1,0.5\n", DataError, "'epoch' column"),
        ("epoch,loss,loss\n1,0.5,0.4\n", DataError, "unique"),
        ("epoch,train_loss\n1,0.5\n2\n", DataError, "Line 3 .* 1 cells, the header has 2"),
        ("epoch,train_loss\n1,lots\n", DataError, "'lots' in column 'train_loss'"),
        (b"epoch\n1\n", InputError, "str"),
    ],
    ids=["no-epoch", "repeated-column", "short-row", "not-a-number", "bytes"],
)
def test_training_log_series_rejects_what_is_not_a_training_log(text, error, match):
    with pytest.raises(error, match=match):
        training_log_series(text)


def _assigned_constant(path: Path, name: str):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == name)
    return ast.literal_eval(node.value)


def _logic_method(name: str) -> ast.FunctionDef:
    logic = _class(TRAINING_MODULE, "CardiacAITrainingLogic")
    return next(n for n in logic.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_every_option_the_training_logic_passes_is_a_cardiacai_train_flag():
    method = _logic_method("trainOptions")
    names = set()
    for node in ast.walk(method):
        if isinstance(node, ast.Dict):
            names |= {k.value for k in node.keys if isinstance(k, ast.Constant)}
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
            names.add(node.slice.value)
    assert {"data", "out", "layout", "model_name", "model_version", "register_to"} <= names
    train = next(a for a in build_parser()._actions if a.choices and "train" in a.choices).choices["train"]
    options = {}
    for name in sorted(names):
        action = train._option_string_actions["--" + name.replace("_", "-")]
        if action.nargs == 0:  # a bare flag (--resume, --overwrite)
            options[name] = True
        else:
            options[name] = next(iter(action.choices)) if action.choices else "1"
    command = build_command("train", [], {**options, "models_dir": "models"}, python_executable="python")
    parsed = build_parser().parse_args(command[3:])
    assert parsed.register_to == "1" and parsed.models_dir == ["models"]
    assert parsed.resume and parsed.overwrite  # the panel's choice for an earlier run in the output folder


def test_training_layouts_are_the_layouts_cardiacai_train_accepts():
    train = next(a for a in build_parser()._actions if a.choices and "train" in a.choices).choices["train"]
    assert tuple(train._option_string_actions["--layout"].choices) == _assigned_constant(TRAINING_MODULE, "LAYOUTS")


@pytest.mark.parametrize("name", ["custom_unet2d", "cine_baseline", "2d_net", "Cine", "cine-base", "_x", "", "a b"])
def test_training_model_name_check_agrees_with_the_model_registry(name):
    pattern = _assigned_constant(TRAINING_MODULE, "MODEL_NAME_PATTERN")
    try:
        ModelCard(name=name, version="1.0", task="segmentation", network="unet2d")
        accepted = True
    except ModelError:
        accepted = False
    assert bool(re.fullmatch(pattern, name)) == accepted


@pytest.mark.parametrize("version", ["1", "1.0", "2.1.3", "1.2.3.4", "1.2.3.4.5", "v1", "1.", ""])
def test_training_model_version_check_agrees_with_the_model_registry(version):
    pattern = _assigned_constant(TRAINING_MODULE, "MODEL_VERSION_PATTERN")
    try:
        ModelCard(name="custom_unet2d", version=version, task="segmentation", network="unet2d")
        accepted = True
    except ModelError:
        accepted = False
    assert bool(re.fullmatch(pattern, version)) == accepted


def test_cardiacai_reads_the_models_folder_setting_that_training_writes():
    key = _assigned_constant(TRAINING_MODULE, "MODELS_FOLDER_SETTING")
    run_command = next(
        n for n in ast.walk(_class(CARDIACAI_MODULE, "CardiacAILogic"))
        if isinstance(n, ast.FunctionDef) and n.name == "runCommand"
    )
    assert key in {n.value for n in ast.walk(run_command) if isinstance(n, ast.Constant)}


def test_training_plots_the_log_file_that_cardiacai_train_writes():
    method = _logic_method("trainingLogPath")
    parts = [n.value for n in ast.walk(method) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    assert parts[-2:] == ["checkpoints", LOG_FILE]
    cli = (ROOT / "CardiacAI" / "cardiac_ai" / "cli.py").read_text(encoding="utf-8")
    assert 'out_dir=out / "checkpoints"' in cli
    not_plotted = _assigned_constant(TRAINING_MODULE, "NOT_PLOTTED_COLUMNS")
    assert set(training_log_series(ENGINE_LOG)) - set(not_plotted) == {"train_loss", "val_dice", "val_loss"}


def test_training_tasks_are_the_tasks_the_backend_can_build_commands_for():
    from cardiac_ai.slicer_results import TRAINING_TASKS

    assert _assigned_constant(TRAINING_MODULE, "TRAINING_TASKS") == tuple(TRAINING_TASKS)
    assert _assigned_constant(TRAINING_MODULE, "TRAINING_TASKS")[0] == "segmentation"  # the parameter default
    train = next(a for a in build_parser()._actions if a.choices and "train" in a.choices).choices["train"]
    cli_tasks = tuple(name for name, task in TRAINING_TASKS.items() if task.script is None)
    assert set(train._option_string_actions["--task"].choices) == set(cli_tasks) == {"segmentation", "weak-cam",
                                                                                      "fibrosis"}
    for task in TRAINING_TASKS.values():
        if task.script:
            assert (ROOT / "scripts" / task.script).is_file(), task.script


def test_weak_cam_training_command_is_cardiacai_train_with_the_label_column(tmp_path):
    from cardiac_ai.slicer_results import training_command

    command = training_command("weak-cam", python_executable="python", data=tmp_path / "data", out=tmp_path / "run",
                               epochs=7, layout="generic", register_to=tmp_path / "models", label_column="diagnosis")
    assert command[:4] == ["python", "-m", "cardiac_ai", "train"] and command[-1] == "--progress-lines"
    for flag, value in (("--task", "weak-cam"), ("--epochs", "7"), ("--seg-epochs", "7"),
                        ("--label-column", "diagnosis"), ("--register-to", str(tmp_path / "models"))):
        assert command[command.index(flag) + 1] == value
    assert "--model-name" not in command
    parsed = build_parser().parse_args(command[3:])  # the CLI accepts what it is given
    assert parsed.task == "weak-cam" and parsed.label_column == "diagnosis"


def _train_options_function():
    """CardiacAITrainingLogic.trainOptions, compiled alone with the module's constants (it needs no Slicer)."""
    method = _logic_method("trainOptions")
    namespace = {"os": os, "re": re}
    for name in ("TRAINING_TASKS", "DEVICES", "LAYOUTS", "MODEL_NAME_PATTERN", "MODEL_VERSION_PATTERN",
                 "EARLIER_RUNS"):
        namespace[name] = _assigned_constant(TRAINING_MODULE, name)
    exec(compile(ast.Module(body=[method], type_ignores=[]), str(TRAINING_MODULE), "exec"), namespace)
    return lambda *args, **kwargs: namespace["trainOptions"](None, *args, **kwargs)


def test_the_training_panels_choice_for_an_earlier_run_reaches_cardiacai_train(tmp_path):
    from cardiac_ai.errors import InputError
    from cardiac_ai.slicer_results import EARLIER_RUN_CHOICES, training_command
    from cardiac_ai.subprocess_runner import build_command

    assert _assigned_constant(TRAINING_MODULE, "EARLIER_RUNS") == EARLIER_RUN_CHOICES
    train_options = _train_options_function()
    data, run = tmp_path / "data", tmp_path / "run"
    data.mkdir()

    def parsed(options):
        return build_parser().parse_args(build_command("train", [], options, python_executable="python")[3:])

    fresh = parsed(train_options(data, run, "segmentation", 2, "cpu"))  # no folder yet: nothing to refuse
    assert not fresh.resume and not fresh.overwrite
    run.mkdir()
    (run / "checkpoints").mkdir()
    with pytest.raises(ValueError, match="'resume' to continue it or 'restart'"):  # said before anything runs
        train_options(data, run, "segmentation", 2, "cpu")
    resumed = parsed(train_options(data, run, "segmentation", 2, "cpu", earlierRun="resume"))
    assert resumed.resume and not resumed.overwrite
    restarted = parsed(train_options(data, run, "weak-cam", 2, "cpu", earlierRun="restart"))
    assert restarted.overwrite and not restarted.resume
    with pytest.raises(ValueError, match="empty output folder to start again"):
        train_options(data, run, "qc", 2, "cpu", earlierRun="restart")
    assert train_options(data, run, "qc", 2, "cpu")["out"] == str(run)  # the scripts continue their stages
    with pytest.raises(ValueError, match="choose one of refuse, resume, restart"):
        train_options(data, tmp_path / "new", "segmentation", 2, "cpu", earlierRun="keep")
    # the command the scripted tasks get from the backend's builder
    for choice, flag in (("resume", "--resume"), ("restart", "--overwrite")):
        command = training_command("fibrosis", python_executable="python", data=data, out=run, epochs=2,
                                   earlier_run=choice)
        assert flag in command and getattr(build_parser().parse_args(command[3:]), flag[2:])
    assert "--resume" not in training_command("weak-cam", python_executable="python", data=data, out=run, epochs=2)
    with pytest.raises(InputError, match="empty output folder to start again"):
        training_command("qc", python_executable="python", data=data, out=run, epochs=2, earlier_run="restart",
                         scripts_dir=ROOT / "scripts")
    with pytest.raises(InputError, match="choose one of"):
        training_command("segmentation", python_executable="python", data=data, out=run, epochs=2,
                         earlier_run="keep")


def test_a_restart_from_the_training_panel_applies_to_one_start_only():
    widget = ast.unparse(_class(TRAINING_MODULE, "CardiacAITrainingWidget"))
    assert "restart = self._parameterNode.earlierRun == 'restart'" in widget
    assert "if restart:\n                        self._parameterNode.earlierRun = 'refuse'" in widget


# -- headless batch: the other tasks ------------------------------------------------------------------------------
def test_batch_tasks_are_the_logic_methods_it_calls_and_their_tables_exist(batch):
    assert batch.TASKS == ("segment-cine", "map", "fibrosis", "cam") and set(batch.TASK_TABLES) == set(batch.TASKS)
    logic = _class(CARDIACAI_MODULE, "CardiacAILogic")
    methods = {n.name: n for n in logic.body if isinstance(n, ast.FunctionDef)}
    run_task = ast.unparse(next(n for n in ast.parse(BATCH_SCRIPT.read_text(encoding="utf-8")).body
                                if isinstance(n, ast.FunctionDef) and n.name == "runTask"))
    for method in ("segmentCine", "analyseMap", "quantifyFibrosis", "explainCam"):
        assert f"logic.{method}(" in run_task and method in methods
        returned = ast.unparse(methods[method])
        task = {"segmentCine": "segment-cine", "analyseMap": "map", "quantifyFibrosis": "fibrosis",
                "explainCam": "cam"}[method]
        for key in batch.TASK_TABLES[task]:
            assert f"'{key}'" in returned or f'"{key}"' in returned, (method, key)
    assert _assigned_constant(BATCH_SCRIPT, "FIBROSIS_MODELS") == _assigned_constant(CARDIACAI_MODULE,
                                                                                      "FIBROSIS_MODELS")


def test_the_slicer_batch_writes_the_structures_only_when_asked_and_never_keeps_an_earlier_runs(batch):
    source = ast.unparse(ast.parse(BATCH_SCRIPT.read_text()))
    functions = {n.name: ast.unparse(n) for n in ast.walk(ast.parse(BATCH_SCRIPT.read_text()))
                 if isinstance(n, ast.FunctionDef)}
    # a redone case runs as one run in its folder (an earlier run's estimate is set aside, and dropped when the case
    # finishes), then saves the node only where the Logic returned one
    assert "case_folder_as_one_run" in functions["processCase"] and "_processCaseFiles(" in functions["processCase"]
    assert "result.get('structuresSegmentationNode') is not None" in functions["_processCaseFiles"]
    assert "structures=args.structures" in source
    assert "lvWallMm=args.lv_wall_mm" in source
    assert batch.STRUCTURES_NAME == "structures.seg.nrrd"
    assert batch.parse_arguments.__doc__ and not batch.build_parser().parse_args(
        ["--input-folder", "i", "--output-folder", "o"]).structures
