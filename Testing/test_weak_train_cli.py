"""``cardiacai train --task weak-cam`` on your own folder: image-level labels in, models ``cardiacai cam`` uses out,
and never a pixel label map read (cardiac_ai.weak.recipe)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cardiac_ai.cli import main
from cardiac_ai.datasets import Split, save_split
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import write_volume
from cardiac_ai.phantom import make_phantom_cohort

#: Tiny networks, a 32 x 32 crop at 3 mm and one epoch each: the whole recipe in a few seconds on a CPU.
TINY = ["--crop-size", "32", "--spacing", "3", "--width", "4", "--epochs", "1", "--seg-epochs", "1",
        "--batch-size", "8", "--device", "cpu"]


def _write_folder(root, *, phases, n_patients=6, label_maps=True, rows=None):
    """images/ of phantom patients (NOR: normal heart, DCM: dilated) and labels.csv with their diagnosis; labels/
    holds GARBAGE label maps (wrong shape, codes outside the label table): reading any of them would fail."""
    (root / "images").mkdir(parents=True)
    cases = make_phantom_cohort(n_patients, groups=("NOR", "DCM"), phases=phases, n_slices=5, shape=(48, 48),
                                spacing_mm=(3.0, 3.0, 8.0))
    lines = ["case_id,patient_id,diagnosis"]
    for case in cases:
        write_volume(case.image, root / "images" / f"{case.case_id}.nii.gz")
        lines.append(f"{case.case_id},{case.patient_id},{case.image_labels['group']}")
        if label_maps:
            (root / "labels").mkdir(exist_ok=True)
            garbage = Volume(np.full((2, 3, 3), 77, np.uint8), Geometry((1.0, 1.0, 1.0)))
            write_volume(garbage, root / "labels" / f"{case.case_id}.nii.gz")
    (root / "labels.csv").write_text("\n".join(rows if rows is not None else lines) + "\n")
    return cases


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One label-free run on ED frames only (so the CAM prior), registered into models/."""
    root = tmp_path_factory.mktemp("weak_cli")
    cases = _write_folder(root / "data", phases=("ED",))
    code = main(["train", "--task", "weak-cam", "--data", str(root / "data"), "--label-column", "diagnosis",
                 "--out", str(root / "run"), "--register-to", str(root / "models"), "--quiet", *TINY])
    return {"root": root, "cases": cases, "code": code}


def test_weak_cam_training_writes_the_run_folder(trained):
    assert trained["code"] == 0
    run = trained["root"] / "run"
    for name in ("split.json", "weak_train.npz", "weak_validation.npz", "pseudo_train.npz", "pseudo_choice.json",
                 "run_classifier/best.pt", "run_weak_pseudo_label/best.pt", "self_choice.json",
                 "run_weak_self_training/best.pt"):
        assert (run / name).exists(), name
    assert not list(run.glob("truth_*.npz"))  # label-free: no ground truth prepared at all
    choice = json.loads((run / "pseudo_choice.json").read_text())
    assert choice["selection"] == "label_free" and choice["chosen"]["prior"] == "cam"  # ED only: no motion prior


def test_weak_cam_training_registers_both_models_with_the_inference_settings(trained):
    models = trained["root"] / "models"
    classifier = json.loads((models / "weak_cam_classifier-1.0.json").read_text())
    unet = json.loads((models / "weak_heart_unet-1.0.json").read_text())
    assert classifier["label_map"] == {"0": "DCM", "1": "NOR"} and classifier["task"] == "classification"
    assert classifier["inference"]["cam_method"] == "gradcampp"
    assert classifier["inference"]["cam_target_layer"] == "attention"
    assert classifier["inference"]["pseudo_label_config"]["min_fraction"] == 0.3
    assert unet["label_map"] == {"0": "background", "1": "heart"} and unet["task"] == "segmentation"
    assert "mode self_training" in unet["description"]  # the default --weak-mode
    assert unet["inference"] == {"weak_mode": "self_training"}  # what `cardiacai cam` reports as the label source
    assert "no pixel label" in unet["training_data"]


def test_cam_command_runs_with_the_trained_models(trained, tmp_path):
    image = tmp_path / "image.nii.gz"
    write_volume(trained["cases"][0].image, image)
    out = tmp_path / "cam"
    code = main(["cam", str(image), "--out", str(out), "--models-dir", str(trained["root"] / "models"),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())["cam"]
    assert report["classes"] == ["DCM", "NOR"] and report["label_source"].startswith("weak_heart_unet")


def test_weak_cam_training_never_reads_a_label_map(tmp_path, monkeypatch):
    """Garbage label maps sit in labels/ (reading one raises); the reader itself is also made to raise."""
    import cardiac_ai.datasets.case as case_module
    import cardiac_ai.datasets.generic as generic_module

    def refuse(path, **kwargs):
        raise AssertionError(f"weak-cam read the label map {path}")

    monkeypatch.setattr(case_module, "_read_label_map", refuse)
    monkeypatch.setattr(generic_module, "_read_label_map", refuse)
    _write_folder(tmp_path / "data", phases=("ED", "ES"), n_patients=4)
    code = main(["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--label-column", "diagnosis",
                 "--out", str(tmp_path / "run"), "--quiet", *TINY])
    assert code == 0
    choice = json.loads((tmp_path / "run" / "pseudo_choice.json").read_text())
    assert choice["chosen"]["prior"] == "motion"  # ED and ES of every patient: the motion prior
    assert not (tmp_path / "models").exists()  # nothing registered without --register-to


def test_weak_cam_training_reports_progress_lines(tmp_path, capsys):
    _write_folder(tmp_path / "data", phases=("ED",), n_patients=4, label_maps=False)
    code = main(["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--label-column", "diagnosis",
                 "--out", str(tmp_path / "run"), "--progress-lines", *TINY])
    out = capsys.readouterr().out
    assert code == 0
    fractions = [float(line.split()[1]) for line in out.splitlines() if line.startswith("PROGRESS ")]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert "PROGRESS" in out and "CAM classifier: epoch 1/1" in out and "Weak U-Net" in out
    assert "Classes DCM, NOR ('diagnosis')" in out


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        (None, ["--label-column", "stage"], "No case has an image-level label 'stage'; labels found: ['diagnosis']"),
        (None, [], "needs --label-column NAME"),
        (["case_id,diagnosis"] + [f"phantom00{p}_ED,DCM" for p in range(4)], ["--label-column", "diagnosis"],
         "at least two classes"),
        (["case_id,diagnosis", "phantom000_ED,NOR", "phantom001_ED,DCM", "phantom002_ED,DCM", "phantom003_ED,DCM"],
         ["--label-column", "diagnosis", "--split", "SPLIT"], "Class 'NOR' of 'diagnosis' has no case among the "
                                                             "training patients"),
        (["case_id,diagnosis", "phantom000_ED,NOR", "phantom001_ED,DCM"], ["--label-column", "diagnosis"],
         "2 of 4 cases have no 'diagnosis' label"),
        (None, ["--label-column", "diagnosis", "--prior", "motion"], "The motion prior needs both phases"),
    ],
    ids=["missing-column", "no-column-given", "one-class", "class-without-training-case", "unlabelled-cases",
         "motion-without-es"],
)
def test_weak_cam_training_refuses_bad_labels_with_a_clear_message(tmp_path, capsys, rows, options, message):
    _write_folder(tmp_path / "data", phases=("ED",), n_patients=4, label_maps=False, rows=rows)
    # Without a patient_id column each case is its own patient.
    split = save_split(Split(("phantom001_ED", "phantom002_ED"), ("phantom000_ED", "phantom003_ED"), ()),
                       tmp_path / "split.json")
    options = [str(split) if o == "SPLIT" else o for o in options]
    code = main(["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
                 *options, *TINY])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "run_classifier").exists()


def test_weak_cam_options_are_refused_for_segmentation(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--label-column", "diagnosis"])
    assert code == 2 and "--label-column apply to --task weak-cam" in capsys.readouterr().err
    code = main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--self-epochs", "3"])
    assert code == 2 and "--self-epochs apply to --task weak-cam" in capsys.readouterr().err


def test_the_self_trained_u_net_trains_for_self_epochs(tmp_path):
    _write_folder(tmp_path / "data", phases=("ED",), n_patients=4, label_maps=False)
    code = main(["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--label-column", "diagnosis",
                 "--out", str(tmp_path / "run"), "--quiet", *TINY, "--self-epochs", "2"])
    assert code == 0
    def epochs(run):  # rows of the run's log.csv after its header
        return len((tmp_path / "run" / run / "log.csv").read_text().strip().splitlines()) - 1

    assert epochs("run_weak_pseudo_label") == 1  # --seg-epochs 1
    assert epochs("run_weak_self_training") == 2


def test_weak_cam_recipe_checks_labels_before_reading_anything():
    from cardiac_ai.datasets import CaseRef
    from cardiac_ai.weak.recipe import check_image_labels

    refs = [CaseRef(f"c{i}", f"p{i}", "generic", (f"/nowhere/c{i}.nii.gz",), image_labels={"diagnosis": d})
            for i, d in enumerate(["NOR", "DCM", "NOR"])]
    assert check_image_labels(refs, "diagnosis") == ("DCM", "NOR")
    with pytest.raises(InputError, match=r"Class\(es\) \['HCM'\] of 'diagnosis' have no case"):
        check_image_labels(refs, "diagnosis", classes=("NOR", "DCM", "HCM"))
    assert check_image_labels(refs, "diagnosis", classes=("NOR", "DCM", "HCM"), allow_missing_classes=True) == (
        "NOR", "DCM", "HCM")


def test_weak_cam_run_folder_is_refused_again_but_resumes(trained, capsys):
    root = trained["root"]
    command = ["train", "--task", "weak-cam", "--data", str(root / "data"), "--label-column", "diagnosis",
               "--out", str(root / "run"), *TINY]
    assert main(command) == 4 and "--resume" in capsys.readouterr().err
    assert main([*command, "--resume", "--register-to", str(root / "again"), "--quiet"]) == 0
    assert (root / "again" / "weak_heart_unet-1.0.json").exists()


def test_weak_cam_resume_refuses_other_data_and_registering_over_a_model(trained, tmp_path, capsys):
    root = trained["root"]
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    (swapped / "images").symlink_to(root / "data" / "images")
    lines = (root / "data" / "labels.csv").read_text().splitlines()
    flip = {"DCM": "NOR", "NOR": "DCM"}
    (swapped / "labels.csv").write_text("\n".join([lines[0]] + [",".join(line.split(",")[:2] + [
        flip[line.split(",")[2]]]) for line in lines[1:]]) + "\n")
    command = ["train", "--task", "weak-cam", "--label-column", "diagnosis", "--out", str(root / "run"), *TINY]
    assert main([*command, "--data", str(swapped), "--resume", "--quiet"]) == 2
    assert "started on other data" in capsys.readouterr().err
    assert main([*command, "--data", str(root / "data"), "--resume", "--register-to", str(root / "models"),
                 "--quiet"]) == 4
    assert "already registered" in capsys.readouterr().err


def test_weak_cam_training_refuses_a_network_it_would_not_train(tmp_path, capsys):
    code = main(["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--label-column", "diagnosis",
                 "--out", str(tmp_path / "run"), "--network", "unet2d", *TINY])
    err = capsys.readouterr().err
    assert code == 2 and "--network unet2d applies to --task segmentation" in err
    assert "weak-cam trains its own networks" in err and "--width" in err
    assert not (tmp_path / "run").exists()


def test_weak_cam_training_over_a_4d_image_names_the_file_and_says_how_to_export_its_phases(tmp_path, capsys):
    cases = _write_folder(tmp_path / "data", phases=("ED",), n_patients=4, label_maps=False)
    image = cases[0].image
    series = Volume(np.stack([image.array, image.array]), image.geometry, axes="tkji")
    four_d = tmp_path / "data" / "images" / f"{cases[0].case_id}.nii.gz"
    write_volume(series, four_d)
    code = main(["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--label-column", "diagnosis",
                 "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2 and f"{four_d} is a 4D series (2 frames)" in err
    assert "<patient>_ED and <patient>_ES" in err and "motion prior" in err
    assert not (tmp_path / "run" / "run_classifier").exists()


def test_a_4d_input_of_a_single_command_still_asks_for_a_frame(tmp_path):
    from cardiac_ai.io import read_volume

    frames = np.random.default_rng(0).random((2, 3, 16, 16)).astype(np.float32)
    write_volume(Volume(frames, Geometry((2.0, 2.0, 8.0)), axes="tkji"), tmp_path / "cine.nii.gz")
    with pytest.raises(InputError, match="Pick one frame: --frame N"):
        read_volume(tmp_path / "cine.nii.gz")


def test_weak_cam_on_the_acdc_layout_takes_diagnosis_as_its_group(tmp_path, capsys):
    """The Slicer training panel sends --label-column diagnosis whatever the layout; on ACDC the diagnosis is
    Info.cfg's Group, so that run must train, not stop at 'no case has a label diagnosis'."""
    from cardiac_ai.phantom import make_cine_phantom

    root = tmp_path / "acdc"
    for number, group in enumerate(("NOR", "DCM", "NOR", "DCM"), start=1):
        folder = root / f"patient{number:03d}"
        folder.mkdir(parents=True)
        (folder / "Info.cfg").write_text(f"ED: 1\nES: 5\nGroup: {group}\nHeight: 170.0\nNbFrame: 20\nWeight: 70.0\n")
        for frame, phase in ((1, "ED"), (5, "ES")):
            case = make_cine_phantom(phase=phase, shape=(48, 48), spacing_mm=(3.0, 3.0, 8.0), n_slices=5,
                                     seed=number, group=group)
            write_volume(case.image, folder / f"patient{number:03d}_frame{frame:02d}.nii.gz")
            write_volume(case.labels, folder / f"patient{number:03d}_frame{frame:02d}_gt.nii.gz")
    split = save_split(Split(("patient001", "patient002"), ("patient003", "patient004"), ()), tmp_path / "split.json")
    code = main(["train", "--task", "weak-cam", "--data", str(root), "--layout", "acdc", "--label-column",
                 "diagnosis", "--split", str(split), "--out", str(tmp_path / "run"), "--register-to",
                 str(tmp_path / "models"), *TINY])  # not --quiet: the Slicer panel reads what it prints
    assert code == 0
    assert (tmp_path / "run" / "run_classifier" / "best.pt").exists()
    # the line the Slicer training panel reads to name what this run registered
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Registered ")]
    assert len(said) == 1 and said[0].startswith(f"Registered weak_cam_classifier and weak_heart_unet in "
                                                 f"{tmp_path / 'models'}")


def test_weak_cam_overwrite_starts_the_run_again_and_keeps_the_users_files(tmp_path, capsys):
    _write_folder(tmp_path / "data", phases=("ED",))
    run = tmp_path / "run"
    command = ["train", "--task", "weak-cam", "--data", str(tmp_path / "data"), "--label-column", "diagnosis",
               "--out", str(run), "--quiet", *TINY]
    assert main(command) == 0
    first_log = (run / "run_classifier" / "log.csv").read_text()
    (run / "my_notes.txt").write_text("kept")
    (run / "run_classifier" / "stale_marker").write_text("only the earlier run has this")
    assert main([*command, "--seed", "5", "--overwrite"]) == 0, capsys.readouterr().err
    assert (run / "my_notes.txt").read_text() == "kept"
    assert not (run / "run_classifier" / "stale_marker").exists()  # the classifier ran again from scratch
    assert (run / "run_classifier" / "log.csv").read_text() != first_log
