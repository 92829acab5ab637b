"""``cardiacai train`` on bad input: a crop the network cannot take, an output or models folder that is a file,
missing-value markers in labels.csv, and a models folder that cannot take every model of a recipe. Each is refused
with the package's own error (exit 2 or 4, one line) before any training, and nothing is lost or half-registered."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

from cardiac_ai.cli import main  # noqa: E402
from cardiac_ai.datasets import list_generic  # noqa: E402
from cardiac_ai.errors import InputError, OutputError  # noqa: E402
from cardiac_ai.preprocessing import InputSpec  # noqa: E402
from cardiac_ai.training import TrainingConfig  # noqa: E402
from cardiac_ai.models.registry import register_models  # noqa: E402
from cardiac_ai.training.segmentation import check_network_takes_crop  # noqa: E402
from test_cli import _generic_cohort  # noqa: E402
from test_fibrosis_train_cli import TINY as FIBROSIS_TINY, _write_cohort  # noqa: E402
from test_weak_train_cli import TINY as WEAK_TINY, _write_folder  # noqa: E402

SEGMENTATION_TINY = ["--layout", "generic", "--network", "tiny_unet2d", "--epochs", "1", "--spacing", "3",
                     "--batch-size", "8", "--device", "cpu"]


def _run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _one_error_line(err: str) -> bool:
    """The command's own one-line error (log lines aside), not a Python error."""
    lines = [line for line in err.splitlines() if line.startswith("cardiacai:")]
    return len(lines) == 1 and "unexpected" not in err and "Traceback" not in err


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return _generic_cohort(tmp_path_factory.mktemp("bad_input") / "cohort")


# -- 1. a crop the network cannot take -------------------------------------------------------------------------------
def _config(network: str) -> TrainingConfig:
    return TrainingConfig(network=network, network_kwargs={"out_channels": 4})


@pytest.mark.parametrize("size", [7, 9])
def test_a_crop_whose_logits_come_out_another_size_is_an_input_error_naming_what_works(size):
    with pytest.raises(InputError, match=rf"{size} x {size} px crop.*divisible by 2, e\.g\. 8"):
        check_network_takes_crop(_config("tiny_unet2d"), InputSpec(crop_size=(size, size)))
    check_network_takes_crop(_config("tiny_unet2d"), InputSpec(crop_size=(8, 8)))


def test_a_crop_that_breaks_the_forward_pass_names_the_divisor_of_the_network():
    with pytest.raises(InputError, match=r"40 x 40 px crop.*divisible by 16, e\.g\. 32"):
        check_network_takes_crop(_config("unet2d"), InputSpec(crop_size=(40, 40)))


def test_train_refuses_an_odd_crop_before_loading_and_keeps_an_earlier_run_resumable(cohort, tmp_path, capsys):
    run = tmp_path / "run"
    code, err = _run(capsys, "train", "--data", cohort, "--out", run, "--crop-size", "8", *SEGMENTATION_TINY)
    assert code == 0, err
    before = _snapshot(run)
    assert "checkpoints/last.pt" in before and "checkpoints/config.json" in before
    for size in ("7", "9"):
        code, err = _run(capsys, "train", "--data", cohort, "--out", run, "--crop-size", size, "--overwrite",
                         *SEGMENTATION_TINY)
        assert code == 2 and f"{size} x {size} px crop" in err and "--crop-size" in err, err
        assert _one_error_line(err)
        assert _snapshot(run) == before  # the earlier run's config still matches its checkpoints
    code, err = _run(capsys, "train", "--data", cohort, "--out", tmp_path / "new", "--crop-size", "9",
                     *SEGMENTATION_TINY)
    assert code == 2 and not (tmp_path / "new").exists()


# -- 2. --out or --register-to a file --------------------------------------------------------------------------------
TASKS = {
    "segmentation": [],
    "weak-cam": ["--task", "weak-cam", "--label-column", "group"],
    "fibrosis": ["--task", "fibrosis"],
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("option", ["--out", "--register-to"])
@pytest.mark.parametrize("where", ["is", "under"])
def test_train_refuses_an_output_or_models_folder_that_is_a_file_before_training(cohort, tmp_path, capsys, task,
                                                                                 option, where):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    target = afile if where == "is" else afile / "sub"
    out = target if option == "--out" else tmp_path / "run"
    extra = ["--register-to", target] if option == "--register-to" else []
    code, err = _run(capsys, "train", *TASKS[task], "--data", cohort, "--out", out, "--epochs", "1", *extra)
    assert code == 4, err
    assert "afile" in err and "is a file" in err and _one_error_line(err)
    assert afile.read_text() == "keep me" and not (tmp_path / "run").exists()


# -- 3. missing-value markers in labels.csv --------------------------------------------------------------------------
@pytest.mark.parametrize("marker", ["nan", "NaN", "NA", "N/A", "n/a", "null", "NULL", "None", "<NA>", "#N/A", "NAN"])
def test_labels_csv_missing_value_markers_are_no_label_as_an_empty_cell_is(tmp_path, marker):
    data = _generic_cohort(tmp_path / "cohort")
    (data / "labels.csv").write_text(
        f"case_id,slice,diagnosis,fibrosis\nphantom000_ED,,{marker},1\nphantom001_ED,,DCM,{marker}\n"
        f"phantom002_ED,,,\nphantom002_ED,1,NOR,{marker}\n")
    refs = {ref.case_id: ref for ref in list_generic(data)}
    assert refs["phantom000_ED"].image_labels == {"fibrosis": 1}
    assert refs["phantom001_ED"].image_labels == {"diagnosis": "DCM"}
    assert refs["phantom002_ED"].image_labels == {}
    assert refs["phantom002_ED"].metadata["slice_labels"] == {1: {"diagnosis": "NOR"}}


def test_labels_csv_keeps_values_that_only_look_like_missing_markers(tmp_path):
    data = _generic_cohort(tmp_path / "cohort")
    (data / "labels.csv").write_text("case_id,diagnosis\nphantom000_ED,NAFLD\nphantom001_ED,nano\nphantom002_ED,0\n")
    refs = {ref.case_id: ref for ref in list_generic(data)}
    assert [refs[f"phantom00{n}_ED"].image_labels["diagnosis"] for n in range(3)] == ["NAFLD", "nano", 0]


@pytest.mark.parametrize("marker", ["nan", "NaN", "NA"])
def test_weak_cam_training_refuses_a_nan_label_as_it_refuses_an_empty_one(tmp_path, capsys, marker):
    rows = ["case_id,diagnosis", "phantom000_ED,NOR", "phantom001_ED,DCM", "phantom002_ED,DCM",
            f"phantom003_ED,{marker}"]
    _write_folder(tmp_path / "data", phases=("ED",), n_patients=4, label_maps=False, rows=rows)
    code, err = _run(capsys, "train", "--task", "weak-cam", "--data", tmp_path / "data", "--out", tmp_path / "run",
                     "--label-column", "diagnosis", "--register-to", tmp_path / "models", *WEAK_TINY)
    assert code == 2 and "1 of 4 cases have no 'diagnosis' label" in err, err
    assert not (tmp_path / "models").exists() and not (tmp_path / "run" / "run_classifier").exists()


# -- 4. registering a recipe's models: all or none -------------------------------------------------------------------
def _writer(stem: str, version: str = "first"):
    """An export for register_models: writes a stand-in weights file and card for ``stem``."""
    def export(folder: Path) -> Path:
        (folder / f"{stem}.safetensors").write_text(f"{version} weights of {stem}")
        (folder / f"{stem}.json").write_text(json.dumps({"model_card_schema": 1, "name": stem, "v": version}))
        return folder / f"{stem}.json"

    return export


def _models(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_register_models_puts_every_model_in_place_and_leaves_no_staging(tmp_path):
    folder = tmp_path / "models"
    cards = register_models(folder, {"a-1.0": _writer("a-1.0"), "b-1.0": _writer("b-1.0")})
    assert cards == (folder / "a-1.0.json", folder / "b-1.0.json")
    assert sorted(os.listdir(folder)) == ["a-1.0.json", "a-1.0.safetensors", "b-1.0.json", "b-1.0.safetensors"]


def test_register_models_refuses_a_folder_in_the_way_before_exporting_anything(tmp_path):
    folder = tmp_path / "models"
    (folder / "b-1.0.safetensors").mkdir(parents=True)
    called = []
    with pytest.raises(OutputError, match=r"b-1\.0\.safetensors exists and is not a file"):
        register_models(folder, {"a-1.0": lambda f: called.append(f), "b-1.0": _writer("b-1.0")})
    assert not called and sorted(os.listdir(folder)) == ["b-1.0.safetensors"]


@pytest.mark.parametrize("failing", ["export", "move"])
def test_a_failed_registration_registers_nothing_and_gives_back_the_models_it_replaced(tmp_path, monkeypatch,
                                                                                      failing):
    folder = tmp_path / "models"
    register_models(folder, {"a-1.0": _writer("a-1.0")})
    earlier = _models(folder)
    exports = {"a-1.0": _writer("a-1.0", "second"), "b-1.0": _writer("b-1.0", "second")}
    if failing == "export":
        def broken(folder):
            raise OSError(28, "No space left on device")
        exports["c-1.0"] = broken
    else:
        real_replace = os.replace

        def replace(source, target):
            if Path(target).name == "b-1.0.json":
                raise PermissionError(13, "Permission denied")
            real_replace(source, target)
        monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="nothing was registered"):
        register_models(folder, exports)
    assert _models(folder) == earlier and sorted(os.listdir(folder)) == sorted(earlier)  # no staging folder left


def test_fibrosis_training_refuses_a_models_folder_blocked_by_a_folder_before_training(tmp_path, capsys):
    _write_cohort(tmp_path / "data")
    models = tmp_path / "models"
    (models / "lge_fibrosis_weak-1.0.safetensors").mkdir(parents=True)
    code, err = _run(capsys, "train", "--task", "fibrosis", "--data", tmp_path / "data", "--out", tmp_path / "run",
                     "--register-to", models, "--quiet", *FIBROSIS_TINY)
    assert code == 4 and "lge_fibrosis_weak-1.0.safetensors exists and is not a file" in err, err
    assert not (tmp_path / "run").exists() and os.listdir(models) == ["lge_fibrosis_weak-1.0.safetensors"]


def test_the_fibrosis_recipe_registers_its_three_models_or_none(tmp_path):
    """The library call, past the command's checks: a folder in the way of the last model leaves no model of the
    set registered."""
    from cardiac_ai.fibrosis.recipe import FibrosisRecipe, train_fibrosis_models

    _write_cohort(tmp_path / "data")
    refs = list_generic(tmp_path / "data")
    recipe = FibrosisRecipe(crop_size=32, width=4, epochs_myocardium=1, epochs_classifier=1, epochs_unet=1,
                            batch_size=8)
    train_fibrosis_models(refs, work_dir=tmp_path / "run", recipe=recipe, device="cpu")
    models = tmp_path / "models"
    (models / "lge_fibrosis_weak-1.0.json").mkdir(parents=True)
    with pytest.raises(OutputError, match="lge_fibrosis_weak-1.0.json exists and is not a file"):
        train_fibrosis_models(refs, work_dir=tmp_path / "run", recipe=recipe, device="cpu", resume=True,
                              register_to=models)
    assert os.listdir(models) == ["lge_fibrosis_weak-1.0.json"]
    result = train_fibrosis_models(refs, work_dir=tmp_path / "run", recipe=recipe, device="cpu", resume=True,
                                   register_to=tmp_path / "models2")
    assert sorted(p.name for p in result.card_paths) == ["lge_fibrosis_classifier-1.0.json",
                                                         "lge_fibrosis_weak-1.0.json", "lge_myocardium-1.0.json"]
    assert len(os.listdir(tmp_path / "models2")) == 6


def test_the_weak_recipe_refuses_a_models_folder_that_is_a_file_before_any_work(tmp_path):
    from cardiac_ai.errors import OutputError
    from cardiac_ai.weak.recipe import train_weak_cam_models

    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(OutputError, match="afile"):  # no case is read: the check comes first
        train_weak_cam_models([], "diagnosis", work_dir=tmp_path / "run", register_to=tmp_path / "afile")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", TASKS)
def test_a_model_name_or_version_no_card_takes_is_refused_before_training(cohort, tmp_path, capsys, task):
    option = ["--model-name", "Bad-Name"] if task == "segmentation" else ["--model-version", "v2"]
    code, err = _run(capsys, "train", "--data", cohort, "--out", tmp_path / "run", *TASKS[task], *option,
                     "--register-to", tmp_path / "models", "--epochs", "1")
    assert code == 2 and "--model-name / --model-version" in err and _one_error_line(err), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "models").exists()


def test_an_overwrite_restart_drops_the_earlier_runs_checkpoints_before_writing_its_own_split(cohort, tmp_path,
                                                                                            capsys, monkeypatch):
    from cardiac_ai.training import segmentation

    run = tmp_path / "run"
    assert _run(capsys, "train", "--data", cohort, "--out", run, "--crop-size", "8", *SEGMENTATION_TINY)[0] == 0
    assert (run / "checkpoints" / "last.pt").is_file()

    def stopped_while_preprocessing(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(segmentation, "train_segmentation", stopped_while_preprocessing)
    monkeypatch.setattr("cardiac_ai.training.segmentation.train_segmentation", stopped_while_preprocessing)
    assert _run(capsys, "train", "--data", cohort, "--out", run, "--crop-size", "8", "--seed", "3", "--overwrite",
                *SEGMENTATION_TINY)[0] == 130
    # the split on disk is the new run's: no checkpoint of the earlier run may be resumed beside it
    assert not (run / "checkpoints").exists()


def test_a_constant_image_is_named_by_its_case(tmp_path, capsys):
    import numpy as np

    from cardiac_ai.io import read_volume, write_volume

    data = _generic_cohort(tmp_path / "cohort")
    image = data / "images" / "phantom002_ED.nii.gz"
    volume = read_volume(image)
    write_volume(volume.with_array(np.zeros_like(volume.array)), image)
    code, err = _run(capsys, "train", "--data", data, "--out", tmp_path / "run", "--crop-size", "8",
                     *SEGMENTATION_TINY)
    assert code == 2 and "Case phantom002_ED (" in err and "constant" in err and _one_error_line(err), err


def test_a_split_naming_patients_the_data_do_not_hold_gets_a_warning(cohort, tmp_path, capsys):
    from cardiac_ai.datasets.splits import Split, save_split

    patients = sorted({ref.patient_id for ref in list_generic(cohort)})
    save_split(Split(train=(*patients[:-1], "patient_elsewhere"), validation=(patients[-1],)), tmp_path / "s.json")
    code, err = _run(capsys, "train", "--data", cohort, "--out", tmp_path / "run", "--crop-size", "8",
                     "--split", tmp_path / "s.json", *SEGMENTATION_TINY)
    assert code == 0, err
    assert "names 1 patient(s) the data do not hold: patient_elsewhere" in err
