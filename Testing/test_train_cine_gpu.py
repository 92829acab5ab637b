"""scripts/train_cine_gpu.py (the lent-GPU trainer) on the CPU: augmentation, one job end to end, import + register."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cardiac_ai.phantom import make_phantom_cohort
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.training.slices import prepare_slices, save_prepared

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_script():
    return _load("train_cine_gpu")


@pytest.fixture(scope="module")
def prepared_folder(tmp_path_factory):
    """Phantom crops in the layout train_acdc_cine.py --stage prepare writes (small crops keep the test fast)."""
    folder = tmp_path_factory.mktemp("cine_prepared")
    cohort = make_phantom_cohort(3, seed=11, phases=("ED", "ES"))
    spec = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32))
    for part, cases in (("train", cohort[:4]), ("val", cohort[4:])):
        slices = prepare_slices(cases, spec)
        for name in ("cine", "localiser", "classifier"):
            save_prepared(slices, folder / f"{name}_{part}.npz")
    return folder


def test_augmentation_moves_images_and_labels_together(gpu_script, prepared_folder):
    part = gpu_script.load_part(prepared_folder / "cine_train.npz", torch.device("cpu"))
    images, labels = gpu_script.as_float(part["images"]), part["labels"]
    first = gpu_script.augment(images, labels, torch.Generator().manual_seed(0),
                               **gpu_script.SEGMENTATION_AUGMENTATION)
    again = gpu_script.augment(images, labels, torch.Generator().manual_seed(0),
                               **gpu_script.SEGMENTATION_AUGMENTATION)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], labels)
    moved_images, moved_labels = first
    for image, label in ((images, labels), (moved_images, moved_labels)):
        lv, background = image[:, 0][label == 3], image[:, 0][label == 0]
        assert lv.mean() > background.mean() + 0.1  # the bright blood pool stays under its label
    assert set(torch.unique(moved_labels).tolist()) <= {0, 1, 2, 3}


def test_one_job_trains_saves_and_is_registered_with_its_history(gpu_script, prepared_folder, tmp_path):
    out = tmp_path / "out"
    argv = ["--data", str(prepared_folder), "--out", str(out), "--epochs", "2", "--fine-tune-scale", "0.01",
            "--batch-size", "4", "--budget", "120", "--device", "cpu", "--job", "main"]
    gpu_script.SEGMENTATION_KWARGS.update(channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    assert gpu_script.main(argv) == 0
    results = {**torch.load(out / "main_a.pt", weights_only=True), **torch.load(out / "main_b.pt", weights_only=True)}
    assert set(results) == {"cine_baseline", "cine_base", "cine_middle", "cine_apex"}
    baseline = results["cine_baseline"]
    assert baseline["epochs_done"] == 2 and not baseline["stopped_early"] and baseline["best_epoch"] in (1, 2)
    assert all(v.dtype == torch.float16 for v in baseline["state"].values())
    assert 0.0 <= baseline["metric"] <= 1.0 and baseline["history"][-1]["epoch"] == 2

    cine = _load("train_acdc_cine")
    work = tmp_path / "work"
    cine.import_gpu_results(out, work)
    config = json.loads((work / "run_baseline" / "config.json").read_text())
    assert config["network_kwargs"]["channels"] == [4, 8, 16]
    split = type("Split", (), {"train": ("a",), "validation": ("b",), "test": ("c",)})()
    cine.register(work, split, version="9.9")
    card = json.loads((work / "models" / "cine_baseline-9.9.json").read_text())
    assert card["epochs"] == 2 and "train_cine_gpu.py" in card["description"]
    assert card["validation_metrics"]["val_dice"] == pytest.approx(baseline["metric"])


def test_a_2_5d_job_starts_from_a_single_slice_model_and_its_card_says_what_it_sees(gpu_script, prepared_folder,
                                                                                     tmp_path):
    from cardiac_ai.models.networks import build_network

    gpu_script.SEGMENTATION_KWARGS.update(channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    start = tmp_path / "init.pt"
    torch.save({"model": build_network("unet2d", **gpu_script.SEGMENTATION_KWARGS).state_dict(),
                "from": "cine_baseline 0.1"}, start)
    out = tmp_path / "out"
    argv = ["--data", str(prepared_folder), "--out", str(out), "--epochs", "1", "--fine-tune-scale", "0.01",
            "--batch-size", "4", "--budget", "120", "--device", "cpu", "--job", "main", "--slice-context", "1",
            "--init-weights", str(start)]
    assert gpu_script.main(argv) == 0
    baseline = torch.load(out / "main_a.pt", weights_only=True)["cine_baseline"]
    assert baseline["network_kwargs"]["in_channels"] == 3 and baseline["started_from"] == "cine_baseline 0.1"
    assert baseline["input_spec"]["slice_context"] == 1 and baseline["input_spec"]["channels"] == 3
    part = gpu_script.load_part(prepared_folder / "cine_val.npz", torch.device("cpu"), slice_context=1)
    assert part["images"].shape[1] == 3 and part["images"].dtype == torch.uint8

    cine = _load("train_acdc_cine")
    work = tmp_path / "work"
    cine.import_gpu_results(out, work)
    cine.register(work, type("Split", (), {"train": ("a",), "validation": ("b",), "test": ("c",)})(), version="9.9")
    card = json.loads((work / "models" / "cine_base-9.9.json").read_text())
    assert card["input_spec"]["slice_context"] == 1 and card["network_kwargs"]["in_channels"] == 3
    assert "neighbouring slice" in card["description"] and "on the CPU" in card["description"]


def test_a_job_past_its_deadline_stops_and_says_so(gpu_script, prepared_folder, tmp_path):
    argv = ["--data", str(prepared_folder), "--out", str(tmp_path), "--epochs", "50", "--batch-size", "4",
            "--budget", "0", "--fine-tune-grace", "0", "--device", "cpu", "--job", "sampler4"]
    weights = np.ones(len(np.load(prepared_folder / "cine_train.npz")["regions"]))
    np.savez(prepared_folder / "sampling_weights.npz", ratio4=weights, ratio20=weights)
    gpu_script.SEGMENTATION_KWARGS.update(channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    assert gpu_script.main(argv) == 0
    result = torch.load(tmp_path / "sampler4.pt", weights_only=True)["cine_baseline_sampler4"]
    assert result["stopped_early"] and result["epochs_done"] == 1 and result["sampling"] == "quadratic"


def test_training_code_imports_without_the_imaging_stack():
    """The lent GPU machine has torch and MONAI but no SimpleITK, nibabel or slicerio: training must not need them."""
    import subprocess

    code = (
        "import sys\n"
        "for name in ('SimpleITK', 'nibabel', 'slicerio', 'pydicom', 'highdicom', 'pydensecrf'):\n"
        "    sys.modules[name] = None\n"
        "import cardiac_ai.models.networks, cardiac_ai.io.atomic, cardiac_ai.training, cardiac_ai.fibrosis.training\n"
        "from cardiac_ai.models import build_network\n"
        "build_network('unet2d')\n"
        "import cardiac_ai.io as io\n"
        "try:\n"
        "    io.read_volume\n"
        "except ImportError:\n"
        "    print('read_volume needs SimpleITK, as it should')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "read_volume needs SimpleITK" in done.stdout


def test_pack_runs_brings_back_what_export_needs_in_half_the_size(tmp_path):
    import tarfile

    from cardiac_ai.models import build_network
    from cardiac_ai.training import TrainingConfig
    from cardiac_ai.training.checkpoint import export_best_model, load_checkpoint, save_checkpoint

    pack_runs = _load("pack_runs")
    kwargs = {"out_channels": 2, "channels": [4, 8], "strides": [2], "num_res_units": 0}
    network = build_network("unet2d", **kwargs)
    run = tmp_path / "work" / "runs" / "tiny"
    run.mkdir(parents=True)
    TrainingConfig(network="unet2d", network_kwargs=kwargs, input_spec=InputSpec().to_dict(), epochs=3).save(
        run / "config.json")
    state = network.state_dict()
    save_checkpoint(run / "best.pt", {"model": state, "epoch": 2, "metric_name": "val_dice", "metric": 0.5})
    save_checkpoint(run / "last.pt", {"model": state, "optimizer": {"state": {}}, "epoch": 3})
    (run / "log.csv").write_text("epoch,train_loss\n1,0.9\n")
    archive = pack_runs.pack(tmp_path / "work", tmp_path / "runs.tar.gz", [])
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "back")
    back = tmp_path / "back" / "runs" / "tiny"
    assert set(p.name for p in back.iterdir()) == {"config.json", "log.csv", "best.pt", "last.pt"}
    last = load_checkpoint(back / "last.pt")
    assert last["epoch"] == 3 and "model" not in last and "optimizer" not in last
    assert all(v.dtype == torch.float16 for v in load_checkpoint(back / "best.pt")["model"].values()
               if v.is_floating_point())
    card = json.loads(export_best_model(back, tmp_path / "models", name="tiny", version="1.0",
                                        task="segmentation", label_map={0: "background", 1: "x"}).read_text())
    assert card["epochs"] == 3 and card["validation_metrics"] == {"val_dice": 0.5}


def _tiny_job(gpu_script, prepared_folder, **overrides):
    part = gpu_script.load_part(prepared_folder / "cine_train.npz", torch.device("cpu"))
    val = gpu_script.load_part(prepared_folder / "cine_val.npz", torch.device("cpu"))
    settings = dict(network="unet2d", kwargs={"out_channels": 4, "channels": [4, 8], "strides": [2],
                                              "num_res_units": 0},
                    train=part, val=val, task="segmentation", epochs=3, batch_size=4, learning_rate=1e-3, seed=0,
                    deadline=float("inf"), augmentation=gpu_script.SEGMENTATION_AUGMENTATION, log=lambda _: None,
                    tag="test")
    settings.update(overrides)
    return gpu_script.train_model(**settings)


def test_fit_to_deadline_plans_the_epochs_that_fit_so_the_schedule_can_end(gpu_script, prepared_folder):
    import time

    result = _tiny_job(gpu_script, prepared_folder, epochs=10_000, deadline=time.time() + 3.0, fit_to_deadline=True)
    assert result["epochs_requested"] == 10_000
    assert 4 <= result["epochs"] < 10_000  # planned down after the third epoch
    assert result["epochs_done"] <= result["epochs"]
    unplanned = _tiny_job(gpu_script, prepared_folder, epochs=3)
    assert unplanned["epochs"] == unplanned["epochs_requested"] == unplanned["epochs_done"] == 3


def test_the_mapping_papers_jaccard_loss_is_an_option_and_is_recorded(gpu_script, prepared_folder):
    result = _tiny_job(gpu_script, prepared_folder, epochs=1, loss_name="jaccard")
    assert result["loss"] == "jaccard" and 0.0 <= result["metric"] <= 1.0
    with pytest.raises(ValueError, match="loss_name"):
        _tiny_job(gpu_script, prepared_folder, epochs=1, loss_name="focal")


def test_mapping_gpu_candidates_train_in_two_phases_and_register_with_their_history(prepared_folder, tmp_path):
    """scripts/train_mapping_gpu.py (phase 1 raw + maps, phase 2 maps) -> train_mapping.py --stage import-gpu."""
    data = tmp_path / "mapping"
    data.mkdir()
    for source, target in (("cine_train", "maps_train"), ("cine_val", "maps_val"), ("cine_train", "raw_train")):
        (data / f"{target}.npz").write_bytes((prepared_folder / f"{source}.npz").read_bytes())
    mapping_gpu = _load("train_mapping_gpu")
    out = tmp_path / "out"
    argv = ["--data", str(data), "--out", str(out), "--raw-epochs", "1", "--epochs", "2", "--batch-size", "4",
            "--budget", "600", "--device", "cpu", "--job", "resnet10"]
    assert mapping_gpu.main(argv) == 0
    result = torch.load(out / "map_resnet10.pt", weights_only=True)["map_myocardium_resnet10"]
    assert result["loss"] == "jaccard" and result["network"] == "flexible_unet"
    assert result["network_kwargs"]["backbone"] == "resnet10" and result["phase1"]["epochs_done"] == 1
    assert "state" not in result["phase1"] and result["epochs_done"] == 2

    mapping = _load("train_mapping")
    work = tmp_path / "work"
    mapping.import_gpu_candidates(out, work, "9.9")
    card = json.loads((work / "models_gpu_resnet10" / "map_myocardium-9.9.json").read_text())
    assert "train_mapping_gpu.py" in card["description"] and "phase 1" in card["description"]
    assert json.loads((work / "run_gpu_resnet10" / "config.json").read_text())["loss"] == "jaccard"
    assert card["validation_metrics"]["val_dice"] == pytest.approx(result["metric"])


def test_results_over_the_device_tools_file_limit_travel_as_shards_and_join_again(gpu_script, tmp_path):
    """The device tool returns files of at most 16 MB; a 24 MB result was once lost that way."""
    state = {f"layer{n}.weight": torch.randn(1000, dtype=torch.float32).half() for n in range(10)}  # 2 kB each
    results = {"model_a": {"state": state, "metric": 0.9}, "model_b": {"state": {"w": torch.ones(3)}, "metric": 0.5}}
    files = gpu_script.save_results(results, tmp_path / "out.pt", max_bytes=5_000)
    assert len(files) == 1 + 5 and all(f.stat().st_size < 5_000 + 2_000 for f in files[1:])
    assert results["model_a"]["state"] is state  # the caller's results are left as they were
    back = gpu_script.load_results(tmp_path / "out.pt")
    assert set(back["model_a"]["state"]) == set(state) and "state_shards" not in back["model_a"]
    assert all(torch.equal(back["model_a"]["state"][k], state[k]) for k in state)
    assert torch.equal(back["model_b"]["state"]["w"], torch.ones(3)) and back["model_b"]["metric"] == 0.5
    assert list(tmp_path.glob("*.pt")) == [tmp_path / "out.pt"]  # shards are not taken for results files


def test_cross_validation_folds_leave_patients_out_and_register_for_qc(gpu_script, prepared_folder, tmp_path):
    """Fold jobs train the baseline without every fifth training patient; import-folds registers each with the
    patients it never saw, which train_qc.py --cine-fold-models reads to pick a case's model."""
    import argparse

    from cardiac_ai.errors import InputError
    from cardiac_ai.models import ModelRegistry

    patients = np.array([f"patient{n:03d}" for n in (3, 1, 2, 1, 7, 5, 4, 6, 8, 9, 10, 11)])
    folds = [gpu_script.held_out_patients(patients, k) for k in range(gpu_script.N_FOLDS)]
    assert folds[0] == ["patient001", "patient006", "patient011"] and folds[4] == ["patient005", "patient010"]
    assert sorted(sum(folds, [])) == sorted(set(patients))  # every patient left out exactly once

    out = tmp_path / "out"
    gpu_script.SEGMENTATION_KWARGS.update(channels=[4, 8, 16], strides=[2, 2], num_res_units=0)
    for fold in ("fold0", "fold1"):  # two phantom training patients: one held out by each of the first two folds
        assert gpu_script.main(["--data", str(prepared_folder), "--out", str(out), "--epochs", "1", "--batch-size",
                                "4", "--budget", "120", "--device", "cpu", "--job", fold]) == 0
    result = torch.load(out / "fold1.pt", weights_only=True)["cine_baseline"]
    assert result["held_out_patients"] == ["phantom001"] and result["epochs_done"] == 1
    with pytest.raises(SystemExit, match="fewer than 5 folds"):
        gpu_script.main(["--data", str(prepared_folder), "--out", str(out), "--epochs", "1", "--device", "cpu",
                         "--job", "fold2"])

    cine = _load("train_acdc_cine")
    split = type("Split", (), {"train": ("phantom000", "phantom001"), "validation": ("phantom002",), "test": ()})()
    folders = cine.import_fold_results(out, tmp_path / "work", split, version="9.9")
    assert [f.parent.name for f in folders] == ["fold0", "fold1"]
    card = ModelRegistry(paths=[folders[1]]).load("cine_baseline", device="cpu").card
    assert card.split["held_out"] == ["phantom001"] and card.split["train"] == ["phantom000"]
    assert "without phantom001" in card.training_data

    qc_script = _load("train_qc")
    from cardiac_ai.regions import CineModels

    bundled = CineModels(localiser="bundled localiser", baseline="bundled baseline")
    args = argparse.Namespace(cine_mode="baseline", cine_fold_models=[str(f) for f in folders], device="cpu")
    for_case = qc_script.fold_models_by_patient(args, bundled, ["phantom000", "phantom001"])
    case = type("Case", (), {"case_id": "phantom001_ES"})()
    chosen = for_case(case)
    assert chosen.localiser == "bundled localiser" and chosen.baseline.card.split["held_out"] == ["phantom001"]
    assert for_case(type("Case", (), {"case_id": "phantom002_ED"})()) is bundled  # a validation patient
    with pytest.raises(InputError, match="phantom009"):
        qc_script.fold_models_by_patient(args, bundled, ["phantom000", "phantom001", "phantom009"])
    with pytest.raises(InputError, match="cine-mode baseline"):
        qc_script.fold_models_by_patient(argparse.Namespace(**{**vars(args), "cine_mode": "region-aware"}), bundled,
                                         ["phantom000"])
