"""``cardiacai batch --task map|fibrosis|cam``: every case as the single-case command, models loaded once, resumable.

Tiny models and inputs come from the tests of each task: an untrained ``map_myocardium`` whose labels are replaced
by the phantom's truth (the map tests' monkeypatch of ``_segment_probabilities``), the random tiny fibrosis models of
``test_fibrosis_pipeline`` and the weak models trained in a second by ``test_weak_training_and_cam``.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from test_fibrosis_pipeline import _stack
from test_fibrosis_pipeline import models_dir as fibrosis_models_dir  # noqa: F401 - a fixture
from test_mapping_pipeline import _mapping_case
from test_weak_training_and_cam import cohort, trained_weak_models  # noqa: F401 - fixtures

from cardiac_ai.cli import main
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import write_volume

torch = pytest.importorskip("torch")


@dataclass
class BatchSetup:
    """One task's batch: two good inputs, the options the batch and the single-case command share, and the
    registry class whose loads are counted."""

    task: str
    inputs: list[Path]
    options: list[str]
    model_class: type
    check_row: Callable[[dict, dict], None]  # (summary row, the case's report.json)


def _read_summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _read_report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


# -- map: untrained model, labels from the phantom's truth ---------------------------------------------------------
@pytest.fixture(scope="module")
def map_cases():
    return [_mapping_case(seed, group="NOR", rotation_deg=10.0 * (seed - 6)) for seed in (7, 8)]


@pytest.fixture(scope="module")
def map_models_dir(tmp_path_factory, save_untrained_map_model):
    return save_untrained_map_model(tmp_path_factory.mktemp("map_models"))  # the labels come from the truth below


def _map_setup(map_cases, map_models_dir, tmp_path, monkeypatch) -> BatchSetup:
    from cardiac_ai.mapping import MappingModels
    from cardiac_ai.mapping import pipeline as mapping_pipeline

    real_segment = mapping_pipeline._segment_probabilities

    def truth_of_the_case(map_ms, volume, model, *, device, provenance):
        real_segment(map_ms, volume, model, device=device, provenance=provenance)  # the network still runs
        same_grid = [c for c in map_cases if c.t1_map_ms.array.shape == volume.array.shape]
        case = min(same_grid, key=lambda c: float(np.abs(c.t1_map_ms.array - volume.array).sum()))
        return np.moveaxis(np.eye(4, dtype=np.float32)[case.labels.array], -1, 0)  # one-hot probabilities

    monkeypatch.setattr(mapping_pipeline, "_segment_probabilities", truth_of_the_case)
    inputs = []
    for number, case in enumerate(map_cases, start=1):
        inputs.append(tmp_path / "inputs" / f"case{number}.nii.gz")
        write_volume(case.t1_map_ms, inputs[-1])

    def check_row(row, report):
        assert float(row["myocardium_t1_median_ms"]) == pytest.approx(report["myocardium_median_ms"], abs=1e-3)
        assert 800 < float(row["myocardium_t1_median_ms"]) < 1300 and float(row["myocardium_t1_iqr_ms"]) > 0
        assert int(row["myocardium_pixels"]) > 0 and row["slices_without_myocardium"] == "0"
        assert float(row["lv_blood_pool_t1_median_ms"]) > float(row["myocardium_t1_median_ms"])
        assert report["kind"] == "t1" and report["provenance"]["parameters"]["erosion_mm"] == 1.0

    options = ["--kind", "T1", "--erosion-mm", "1", "--models-dir", str(map_models_dir)]
    return BatchSetup("map", inputs, options, MappingModels, check_row)


# -- fibrosis: the random tiny models of the fibrosis tests --------------------------------------------------------
def _fibrosis_setup(models_dir, tmp_path) -> BatchSetup:
    from cardiac_ai.fibrosis import FibrosisModels

    geometry = Geometry(spacing_mm=(1.4, 1.4, 8.0), origin_lps_mm=(-20.0, 7.0, 1.5))
    inputs = []
    for number in (1, 2):
        inputs.append(tmp_path / "inputs" / f"lge{number}.nii.gz")
        write_volume(Volume(_stack(n_slices=3, size=40, seed=number), geometry), inputs[-1])

    def check_row(row, report):
        clinical = report["clinical"]
        assert clinical["volume_unit"] == "mL" and report["supervision"] == "pixel"
        for name in ("scar_volume", "mvo_volume", "myocardium_volume"):
            assert float(row[f"{name}_mL"]) == pytest.approx(clinical[name], abs=1e-3)
        percent = clinical["scar_percent_of_myocardium"]
        if percent is None or np.isnan(percent):  # no myocardium found by the random model: an empty cell
            assert row["scar_percent_of_myocardium"] == ""
        else:
            assert float(row["scar_percent_of_myocardium"]) == pytest.approx(percent, abs=1e-3)
        assert float(row["max_slice_fibrosis_probability"]) == pytest.approx(
            max(report["slice_fibrosis_probability"]), abs=1e-3)
        qc = report["qc"]  # the bundled QC models check the myocardium and blood pool, as the single command does
        assert qc["indicative"] and row["qc_needs_review"] == str(qc["needs_review"])
        assert int(row["qc_flagged_slices"]) == qc["n_flagged_slices"]

    options = ["--model", "pixel", "--models-dir", str(models_dir)]
    return BatchSetup("fibrosis", inputs, options, FibrosisModels, check_row)


# -- cam: the weak models trained by the weak-label tests ----------------------------------------------------------
def _cam_setup(cases, models, tmp_path) -> BatchSetup:
    from cardiac_ai.weak.pipeline import WeakModels

    inputs = []
    for number in (1, 2):
        inputs.append(tmp_path / "inputs" / f"cine{number}.nii.gz")
        write_volume(cases[number].image, inputs[-1])

    def check_row(row, report):
        prediction = report["cam"]["volume_prediction"]
        assert row["predicted_class"] == prediction["class"] in ("DCM", "NOR")
        assert float(row["predicted_probability"]) == pytest.approx(
            prediction["probabilities"][prediction["class"]], abs=1e-3)
        assert float(row["p_DCM"]) + float(row["p_NOR"]) == pytest.approx(1.0, abs=2e-3)
        assert float(row["heart_volume_ml"]) == pytest.approx(report["cam"]["heart_volume_ml"], abs=1e-3)
        assert {s["explained_class"] for s in report["cam"]["slices"]} == {"NOR"}

    options = ["--explain", "NOR", "--models-dir", str(models)]
    return BatchSetup("cam", inputs, options, WeakModels, check_row)


@pytest.fixture(params=["map", "fibrosis", "cam"])
def setup(request, tmp_path, monkeypatch) -> BatchSetup:
    (tmp_path / "inputs").mkdir()
    if request.param == "map":
        return _map_setup(request.getfixturevalue("map_cases"), request.getfixturevalue("map_models_dir"), tmp_path,
                          monkeypatch)
    if request.param == "fibrosis":
        return _fibrosis_setup(request.getfixturevalue("fibrosis_models_dir"), tmp_path)
    weak = request.getfixturevalue("trained_weak_models")
    return _cam_setup(request.getfixturevalue("cohort"), weak["models"], tmp_path)


@pytest.fixture
def model_loads(setup, monkeypatch) -> list:
    """One entry per loading of the task's models from the registry."""
    loads: list = []
    original = setup.model_class.from_registry  # bound to the class

    def counted(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return original(*args, **kwargs)

    monkeypatch.setattr(setup.model_class, "from_registry", classmethod(counted))
    return loads


def _batch(setup: BatchSetup, source: Path, out: Path, *extra: str) -> int:
    return main(["batch", str(source), "--task", setup.task, "--out", str(out), "--device", "cpu", "--quiet",
                 *setup.options, *extra])


# -- the tests -------------------------------------------------------------------------------------------------------
def test_batch_writes_each_case_as_the_single_command_and_summarises_it(setup, model_loads, tmp_path):
    out = tmp_path / "out"
    assert _batch(setup, tmp_path / "inputs", out) == 0
    assert model_loads == [setup.model_class.__name__]  # once for the batch, not once per case
    rows = _read_summary(out)
    assert list(rows) == [path.name.removesuffix(".nii.gz") for path in setup.inputs]
    single = tmp_path / "single"
    assert main([setup.task, str(setup.inputs[0]), "--out", str(single), "--device", "cpu", "--quiet",
                 *setup.options]) == 0
    for case_id, row in rows.items():
        assert row["status"] == "ok" and not row.get("error") and float(row["seconds"]) >= 0
        case_dir = out / case_id
        assert {p.name for p in case_dir.iterdir()} == {p.name for p in single.iterdir()}
        report = _read_report(case_dir)
        assert report["provenance"]["command"] == setup.task
        setup.check_row(row, report)


def test_batch_skips_finished_cases_when_run_again(setup, model_loads, tmp_path):
    out = tmp_path / "out"
    assert _batch(setup, tmp_path / "inputs", out) == 0
    first = {case_id: (out / case_id / "report.json").stat().st_mtime_ns for case_id in _read_summary(out)}
    first_rows = _read_summary(out)
    assert _batch(setup, tmp_path / "inputs", out) == 0
    rows = _read_summary(out)
    assert {row["status"] for row in rows.values()} == {"skipped (done earlier)"}
    for case_id, row in rows.items():  # the resumed summary keeps every number of the finished cases
        kept = {k: v for k, v in first_rows[case_id].items() if k not in ("status", "seconds")}
        assert {k: row[k] for k in kept} == kept
    assert {case_id: (out / case_id / "report.json").stat().st_mtime_ns for case_id in rows} == first
    assert _batch(setup, tmp_path / "inputs", out, "--overwrite") == 0  # --overwrite redoes every case
    assert {row["status"] for row in _read_summary(out).values()} == {"ok"}


def test_a_bad_case_gives_exit_status_5_and_the_other_case_still_runs(setup, tmp_path):
    (tmp_path / "broken.nii.gz").write_bytes(b"not an image")
    listing = tmp_path / "cases.csv"  # relative paths are read from the CSV's folder
    listing.write_text(f"case_id,input\ngood,{setup.inputs[0].relative_to(tmp_path)}\nbad,broken.nii.gz\n")
    out = tmp_path / "out"
    assert _batch(setup, listing, out) == 5
    rows = _read_summary(out)
    assert rows["good"]["status"] == "ok" and (out / "good" / "report.json").is_file()
    assert rows["bad"]["status"] == "failed" and rows["bad"]["error"]
    assert not (out / "bad" / "report.json").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--task", "map"], "--task map needs --kind"),
        (["--task", "map", "--kind", "t1", "--explain", "DCM"], "--explain applies to --task cam"),
        (["--task", "cam", "--model", "pixel"], "--model applies to --task fibrosis"),
        (["--task", "fibrosis", "--erosion-mm", "2"], "--erosion-mm applies to --task map"),
    ],
    ids=["map-without-kind", "explain-with-map", "model-with-cam", "erosion-with-fibrosis"],
)
def test_options_of_another_task_are_refused_before_anything_runs(extra, message, tmp_path, capsys):
    assert main(["batch", str(tmp_path), "--out", str(tmp_path / "out"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_flat_folder_of_png_slices_says_how_to_make_cases(tmp_path):
    from cardiac_ai.errors import DataError
    from cardiac_ai.io import write_png
    from cardiac_ai.pipeline import list_batch_cases

    for k in range(2):
        write_png(_stack(n_slices=1, size=16)[0].astype(np.uint8), tmp_path / f"Case_P001_slice{k:03d}.png")
    with pytest.raises(DataError, match="in a folder of their own"):
        list_batch_cases(tmp_path, task="fibrosis")
