"""Weak-label training (no pixel label may reach it) and the ``cardiacai cam`` job, on tiny phantom cohorts."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cardiac_ai.cli import main
from cardiac_ai.errors import InputError
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.labels import HEART
from cardiac_ai.models.registry import ModelRegistry
from cardiac_ai.phantom.cine import make_phantom_cohort
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.checkpoint import export_best_model
from cardiac_ai.weak.pseudo_labels import PseudoLabelConfig
from cardiac_ai.weak.training import (
    cam_prior_loss,
    compute_pseudo_labels,
    prepare_weak_slices,
    train_weak_classifier,
    train_weak_segmentation,
)

SPEC = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32))
CLASSIFIER_KWARGS = {"in_channels": 1, "out_channels": 2, "mask_channel": None, "features": (4, 8, 8, 8),
                     "blocks_per_stage": (1, 1, 1, 1)}


@pytest.fixture(scope="module")
def cohort():
    return make_phantom_cohort(4, groups=("NOR", "DCM"), phases=("ED",), n_slices=5, shape=(48, 48),
                               spacing_mm=(3.0, 3.0, 8.0))


def test_weak_slices_hide_the_label_maps_and_carry_the_case_class(cohort):
    weak, truth = prepare_weak_slices(cohort, label_name="group", spec=SPEC)
    assert weak.slices.labels is None  # nothing pixel-level can reach training
    assert weak.classes == ("DCM", "NOR")
    assert truth is not None and truth.shape == weak.slices.images.shape and truth.max() > 0
    for case in cohort:
        rows = weak.slices.case_ids == case.case_id
        assert set(weak.targets[rows]) == {weak.classes.index(case.image_labels["group"])}


def test_weak_crop_is_the_field_of_view_centre_even_for_an_off_centre_heart(cohort):
    """Moving the heart inside the image must move it inside the crop too (a label-centred crop would not)."""
    from dataclasses import replace

    case = cohort[0]
    shifted = np.roll(case.image.array, 6, axis=2)
    moved = replace(case, image=case.image.with_array(shifted), labels=case.labels.with_array(
        np.roll(case.labels.array, 6, axis=2)))
    _, truth_plain = prepare_weak_slices([case, cohort[1]], label_name="group", spec=SPEC)
    _, truth_moved = prepare_weak_slices([moved, cohort[1]], label_name="group", spec=SPEC)
    n = case.image.array.shape[0]
    centroid = lambda t: np.argwhere(t[:n] > 0)[:, 2].mean()  # noqa: E731
    assert centroid(truth_moved) > centroid(truth_plain) + 2.0


def test_weak_slices_need_the_label_and_two_classes(cohort):
    with pytest.raises(InputError, match="no image-level label 'fibrosis'"):
        prepare_weak_slices(cohort, label_name="fibrosis", spec=SPEC)
    with pytest.raises(InputError, match="at least two classes"):
        prepare_weak_slices(cohort[:1], label_name="group", spec=SPEC)


def test_cam_prior_loss_is_lowest_when_the_prediction_follows_the_prior():
    import torch

    prior = torch.zeros(1, 8, 8)
    prior[0, 2:6, 2:6] = 255
    follows = torch.stack([-5 * (prior / 255 - 0.5), 5 * (prior / 255 - 0.5)], dim=1)
    opposes = -follows
    assert cam_prior_loss(follows, prior) < cam_prior_loss(opposes, prior)


@pytest.fixture(scope="module")
def trained_weak_models(cohort, tmp_path_factory):
    work = tmp_path_factory.mktemp("weak")
    weak, _ = prepare_weak_slices(cohort, label_name="group", spec=SPEC)
    config = TrainingConfig(network="cam_classifier_2d", network_kwargs=CLASSIFIER_KWARGS,
                            input_spec=SPEC.to_dict(), epochs=2, batch_size=8, learning_rate=1e-3, loss="ce",
                            metric_name="val_balanced_accuracy", metric_mode="max", seed=0)
    _, classifier, _ = train_weak_classifier(weak, weak, config=config, out_dir=work / "classifier", device="cpu")
    pseudo_config = PseudoLabelConfig(otsu_source="cam")
    cams, masks = compute_pseudo_labels(classifier, weak, method="model", config=pseudo_config, device="cpu")
    unet = TrainingConfig(network="tiny_unet2d", network_kwargs={"out_channels": 2}, input_spec=SPEC.to_dict(),
                          epochs=1, batch_size=8, loss="dice_ce", seed=0)
    results = {}
    for mode in ("pseudo_label", "cam_prior"):
        results[mode] = train_weak_segmentation(weak, cams, masks, weak, cams, masks, mode=mode, config=unet,
                                                out_dir=work / mode, device="cpu")
    models = work / "models"
    inference = {"cam_method": "model", "pseudo_label_config": {"otsu_source": "cam"}}
    export_best_model(work / "classifier", models, name="weak_cam_classifier", version="1.0",
                      task="classification", label_map={0: "DCM", 1: "NOR"}, inference=inference)
    export_best_model(work / "pseudo_label", models, name="weak_heart_unet", version="1.0", task="segmentation",
                      label_map={0: "background", 1: "heart"})
    return {"weak": weak, "cams": cams, "masks": masks, "results": results, "models": models}


def test_pseudo_labels_and_cams_have_the_slices_shape_and_range(trained_weak_models):
    weak, cams, masks = (trained_weak_models[k] for k in ("weak", "cams", "masks"))
    assert cams.shape == masks.shape == weak.slices.images.shape
    assert cams.min() >= 0.0 and cams.max() <= 1.0
    assert set(np.unique(masks)) <= {0, 1}


def test_both_weak_modes_train_and_keep_a_checkpoint_chosen_without_ground_truth(trained_weak_models):
    for mode, (result, network, metrics) in trained_weak_models["results"].items():
        assert result.best_checkpoint is not None, mode
        assert set(metrics) == {"val_loss"}, mode  # chosen by the loss on pseudo-labels/priors, no Dice vs truth


def test_cam_command_writes_cam_and_heart_labels_in_the_input_geometry(trained_weak_models, cohort, tmp_path):
    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[2].image, image_path)
    out = tmp_path / "out"
    code = main(["cam", str(image_path), "--out", str(out), "--models-dir", str(trained_weak_models["models"]),
                 "--device", "cpu", "--quiet"])
    assert code == 0
    cam, labels = read_volume(out / "cam.nii.gz"), read_volume(out / "labels.nii.gz")
    for volume in (cam, labels):
        assert volume.array.shape == cohort[2].image.array.shape
        assert volume.geometry.is_close(cohort[2].image.geometry)
    assert 0.0 <= cam.array.min() and cam.array.max() <= 1.0
    assert set(np.unique(labels.array)) <= {0, HEART}
    report = json.loads((out / "report.json").read_text())
    assert report["cam"]["classes"] == ["DCM", "NOR"]
    assert len(report["cam"]["slices"]) == cohort[2].image.array.shape[0]
    voxel_ml = np.prod(cohort[2].image.geometry.spacing_mm) / 1000.0  # 3 x 3 x 8 mm: not 1 mm voxels
    assert report["cam"]["heart_volume_ml"] == pytest.approx(np.count_nonzero(labels.array) * voxel_ml)
    assert (out / "cam_slices.csv").read_text().startswith("k,explained_class")


def test_cam_command_explains_a_chosen_class_and_can_use_the_pseudo_label(trained_weak_models, cohort, tmp_path):
    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[0].image, image_path)
    out = tmp_path / "out"
    assert main(["cam", str(image_path), "--out", str(out), "--models-dir", str(trained_weak_models["models"]),
                 "--explain", "NOR", "--pseudo-label", "--device", "cpu", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())["cam"]
    assert {s["explained_class"] for s in report["slices"]} == {"NOR"}
    assert report["label_source"].startswith("CAM pseudo-label")
    code = main(["cam", str(image_path), "--out", str(tmp_path / "bad"), "--explain", "XYZ", "--models-dir",
                 str(trained_weak_models["models"]), "--device", "cpu", "--quiet"])
    assert code == 2 and not (tmp_path / "bad").exists()


def test_cam_refuses_an_image_smaller_than_a_heart_and_notes_a_single_slice(trained_weak_models, cohort, tmp_path,
                                                                             capsys):
    image = cohort[0].image
    small = image.with_array(image.array[:, :8, :8].copy())  # 24 x 24 mm
    write_volume(small, tmp_path / "small.nii.gz")
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    assert main(["cam", str(tmp_path / "small.nii.gz"), "--out", str(tmp_path / "s"), *common]) == 2
    assert "less than a short-axis view" in capsys.readouterr().err and not (tmp_path / "s").exists()
    write_volume(image.with_array(image.array[2:3].copy()), tmp_path / "one.nii.gz")
    assert main(["cam", str(tmp_path / "one.nii.gz"), "--out", str(tmp_path / "one"), *common]) == 0
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    assert any(w.startswith("One slice") for w in report["cam"]["warnings"])


def test_cam_command_without_a_weak_model_says_how_to_train_one(tmp_path, cohort, capsys, monkeypatch):
    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[0].image, image_path)
    monkeypatch.setattr(ModelRegistry, "has", lambda self, name: False)
    code = main(["cam", str(image_path), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 3 and "train_weak_acdc.py" in capsys.readouterr().err
