"""Weak-label training (no pixel label may reach it) and the ``cardiacai cam`` job, on tiny phantom cohorts."""
from __future__ import annotations

import dataclasses
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


# -- cam options: CAM averaging, pseudo-label settings, models of different runs ------------------------------------
def _write_image(cohort, tmp_path):
    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[0].image, image_path)
    return image_path


def test_cli_cam_views_are_those_of_the_cam_module():
    from cardiac_ai import cli
    from cardiac_ai.weak.cam import AUGMENTATIONS

    assert cli.CAM_AUGMENTATIONS == AUGMENTATIONS  # repeated in the CLI so that its parser does not import torch
    from cardiac_ai import slicer_results
    from cardiac_ai.weak.structures import LV_WALL_MM

    assert cli.LV_WALL_MM == slicer_results.CAM_LV_WALL_MM == LV_WALL_MM


def test_cam_averages_over_the_views_given_on_the_command_line_and_records_them(trained_weak_models, cohort,
                                                                                tmp_path, monkeypatch):
    import cardiac_ai.weak.pipeline as weak_pipeline

    views = []
    real_slice_cams = weak_pipeline.slice_cams

    def recording(*args, **kwargs):
        views.append(tuple(kwargs.get("augment", ())))
        return real_slice_cams(*args, **kwargs)

    monkeypatch.setattr(weak_pipeline, "slice_cams", recording)
    image_path = _write_image(cohort, tmp_path)
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    assert main(["cam", str(image_path), "--out", str(tmp_path / "plain"), *common]) == 0
    assert main(["cam", str(image_path), "--out", str(tmp_path / "views"), "--cam-augment", "hflip", "shift",
                 *common]) == 0
    assert views == [(), ("hflip", "shift")]
    plain = json.loads((tmp_path / "plain" / "report.json").read_text())
    averaged = json.loads((tmp_path / "views" / "report.json").read_text())
    assert plain["cam"]["cam_augment"] == [] and averaged["cam"]["cam_augment"] == ["hflip", "shift"]
    assert averaged["provenance"]["parameters"]["cam_augment"] == ["hflip", "shift"]
    assert not np.allclose(read_volume(tmp_path / "plain" / "cam.nii.gz").array,
                           read_volume(tmp_path / "views" / "cam.nii.gz").array)


def test_cam_pseudo_label_settings_override_the_model_card_and_are_recorded(trained_weak_models, cohort, tmp_path,
                                                                            monkeypatch):
    import cardiac_ai.weak.pipeline as weak_pipeline

    configs = []
    real_pseudo_labels = weak_pipeline.pseudo_labels

    def recording(*args, **kwargs):
        configs.append(kwargs["config"])
        return real_pseudo_labels(*args, **kwargs)

    monkeypatch.setattr(weak_pipeline, "pseudo_labels", recording)
    image_path = _write_image(cohort, tmp_path)
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet", "--pseudo-label"]
    assert main(["cam", str(image_path), "--out", str(tmp_path / "card"), *common]) == 0
    assert main(["cam", str(image_path), "--out", str(tmp_path / "tuned"), *common, "--crf-iterations", "2",
                 "--crf-smoothness", "0.5", "4", "--crf-appearance", "2", "40", "9", "--otsu-classes", "0",
                 "--scale-range", "0.4", "0.9", "--min-fraction", "0.2"]) == 0
    card_settings = json.loads((tmp_path / "card" / "report.json").read_text())["cam"]["pseudo_label"]
    assert configs[0] == PseudoLabelConfig(otsu_source="cam")  # the card's settings (see trained_weak_models)
    assert card_settings == {"settings": json.loads(json.dumps(dataclasses.asdict(configs[0]))),
                             "defaults_from": "model card", "overridden": []}
    tuned = json.loads((tmp_path / "tuned" / "report.json").read_text())["cam"]["pseudo_label"]
    expected = PseudoLabelConfig(otsu_source="cam", crf_iterations=2, crf_w2=0.5, crf_theta_gamma=4.0, crf_w1=2.0,
                                 crf_theta_alpha=40.0, crf_theta_beta=9.0, otsu_classes=None,
                                 scale_range=(0.4, 0.9), min_fraction=0.2)
    assert configs[1] == expected  # what made the labels
    assert tuned["settings"] == json.loads(json.dumps(dataclasses.asdict(expected)))
    assert tuned["defaults_from"] == "model card" and tuned["overridden"] == sorted(
        ["crf_iterations", "crf_w2", "crf_theta_gamma", "crf_w1", "crf_theta_alpha", "crf_theta_beta", "otsu_classes",
         "scale_range", "min_fraction"])
    assert main(["cam", str(image_path), "--out", str(tmp_path / "unet"), *common[:-1]]) == 0
    assert json.loads((tmp_path / "unet" / "report.json").read_text())["cam"]["pseudo_label"] is None  # U-Net labels


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--crf-iterations", "2"], "--crf-iterations set the CAM pseudo-label; add --pseudo-label"),
        (["--pseudo-label", "--scale-range", "0.9", "0.5"], "--scale-range must be (low, high)"),
        (["--pseudo-label", "--crf-smoothness", "-1", "3"], "--crf-smoothness needs a weight >= 0"),
        (["--pseudo-label", "--min-fraction", "1.5"], "--min-fraction must lie in [0, 1)"),
    ],
    ids=["without-pseudo-label", "scale-range-reversed", "negative-weight", "min-fraction-above-1"],
)
def test_cam_refuses_pseudo_label_settings_it_cannot_use_before_writing(tmp_path, cohort, capsys, monkeypatch,
                                                                        options, message):
    from cardiac_ai.weak.pipeline import WeakModels

    def never(*args, **kwargs):
        raise AssertionError("the models were loaded before the settings were checked")

    monkeypatch.setattr(WeakModels, "from_registry", never)
    image_path = _write_image(cohort, tmp_path)
    assert main(["cam", str(image_path), "--out", str(tmp_path / "out"), "--device", "cpu", *options]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_explain_volume_refuses_pseudo_label_settings_when_the_u_net_makes_the_labels(trained_weak_models, cohort):
    from cardiac_ai.pipeline import load_weak_models
    from cardiac_ai.weak.pipeline import explain_volume

    models = load_weak_models([trained_weak_models["models"]], device="cpu")
    with pytest.raises(InputError, match="labels come from the weak U-Net"):
        explain_volume(cohort[0].image, models, pseudo_label_overrides={"crf_iterations": 2})
    with pytest.raises(InputError, match="Unknown pseudo-label setting"):
        explain_volume(cohort[0].image, models, use_segmenter=False, pseudo_label_overrides={"crf_steps": 2})
    with pytest.raises(InputError, match="augment must list distinct views"):
        explain_volume(cohort[0].image, models, augment=("rotate",))


def test_batch_forwards_the_cam_settings_to_every_case(trained_weak_models, cohort, tmp_path, capsys):
    (tmp_path / "inputs").mkdir()
    for number in (1, 2):
        write_volume(cohort[number].image, tmp_path / "inputs" / f"cine{number}.nii.gz")
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "out"), "--models-dir",
                 str(trained_weak_models["models"]), "--device", "cpu", "--quiet", "--cam-augment", "vflip",
                 "--pseudo-label", "--crf-iterations", "3"]) == 0
    for number in (1, 2):
        report = json.loads((tmp_path / "out" / f"cine{number}" / "report.json").read_text())["cam"]
        assert report["cam_augment"] == ["vflip"]
        assert report["pseudo_label"]["settings"]["crf_iterations"] == 3
        assert report["pseudo_label"]["overridden"] == ["crf_iterations"]
    for option in (["--cam-augment", "hflip"], ["--otsu-classes", "0"]):  # 0 is given, not absent
        assert main(["batch", str(tmp_path / "inputs"), "--task", "map", "--kind", "t1", "--out",
                     str(tmp_path / "map"), *option]) == 2
        assert "applies to --task cam, not map" in capsys.readouterr().err


def test_cam_completes_the_lv_wall_of_the_u_nets_heart_and_records_it(trained_weak_models, cohort, tmp_path,
                                                                     monkeypatch, capsys):
    import cardiac_ai.weak.pipeline as weak_pipeline
    from cardiac_ai.weak.structures import LV_WALL_MM, complete_lv_wall

    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[2].image, image_path)
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    calls = []

    def spy(image, heart, spacing, wall_mm):
        calls.append((heart.copy(), spacing, wall_mm))
        return complete_lv_wall(image, heart, spacing, wall_mm)

    monkeypatch.setattr(weak_pipeline, "complete_lv_wall", spy)
    assert main(["cam", str(image_path), "--out", str(tmp_path / "as_is"), "--lv-wall-mm", "0", *common]) == 0
    assert main(["cam", str(image_path), "--out", str(tmp_path / "wall"), *common]) == 0
    assert len(calls) == 1  # only the default run adds a wall
    u_net = read_volume(tmp_path / "as_is" / "labels.nii.gz").array > 0
    walled = read_volume(tmp_path / "wall" / "labels.nii.gz")
    heart, spacing, wall_mm = calls[0]
    assert np.array_equal(heart, u_net) and wall_mm == LV_WALL_MM
    assert spacing == cohort[2].image.geometry.spacing_kji_mm  # the native grid's, in mm
    assert np.array_equal(walled.array > 0, complete_lv_wall(cohort[2].image.array, u_net, spacing))
    assert np.count_nonzero(walled.array) > np.count_nonzero(u_net)  # this U-Net's heart did get a wall
    assert walled.geometry.is_close(cohort[2].image.geometry)
    reports = {name: json.loads((tmp_path / name / "report.json").read_text()) for name in ("as_is", "wall")}
    assert reports["wall"]["cam"]["lv_wall_mm"] == LV_WALL_MM == reports["wall"]["provenance"]["parameters"][
        "lv_wall_mm"]
    assert "LV wall completed (11 mm" in reports["wall"]["cam"]["label_source"]
    assert reports["as_is"]["cam"]["lv_wall_mm"] == 0 and "LV wall" not in reports["as_is"]["cam"]["label_source"]
    # the CAM pseudo-label keeps its own shape: the wall was chosen for the U-Net's heart only
    assert main(["cam", str(image_path), "--out", str(tmp_path / "pseudo"), "--pseudo-label", *common]) == 0
    assert len(calls) == 1
    pseudo = json.loads((tmp_path / "pseudo" / "report.json").read_text())
    assert pseudo["cam"]["lv_wall_mm"] == 0 and not any("--lv-wall-mm" in w for w in pseudo["provenance"]["warnings"])
    # a width asked for where it cannot apply is said, not silently dropped
    assert main(["cam", str(image_path), "--out", str(tmp_path / "pseudo5"), "--pseudo-label", "--lv-wall-mm", "5",
                 *common]) == 0
    pseudo5 = json.loads((tmp_path / "pseudo5" / "report.json").read_text())
    assert pseudo5["cam"]["lv_wall_mm"] == 0 and len(calls) == 1
    assert any("--lv-wall-mm 5: not applied" in w for w in pseudo5["provenance"]["warnings"])
    capsys.readouterr()
    assert main(["cam", str(image_path), "--out", str(tmp_path / "bad"), "--lv-wall-mm", "-2", *common]) == 2
    assert "LV wall width" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_the_structures_caution_says_when_the_lv_wall_is_not_the_one_its_figures_are_for(trained_weak_models, cohort,
                                                                                         tmp_path):
    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[2].image, image_path)
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet", "--structures"]
    assert main(["cam", str(image_path), "--out", str(tmp_path / "default"), *common]) == 0
    assert main(["cam", str(image_path), "--out", str(tmp_path / "none"), "--lv-wall-mm", "0", *common]) == 0
    cautions = {name: json.loads((tmp_path / name / "report.json").read_text())["structures"]["caution"]
                for name in ("default", "none")}
    assert "this run added" not in cautions["default"] and "CAM pseudo-label" not in cautions["default"]
    assert "these figures are for the default LV wall of 11 mm, this run added 0 mm" in cautions["none"]


def test_batch_forwards_the_lv_wall_width_to_cam_only(trained_weak_models, cohort, tmp_path, capsys):
    (tmp_path / "inputs").mkdir()
    write_volume(cohort[1].image, tmp_path / "inputs" / "cine1.nii.gz")
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "out"), "--models-dir",
                 str(trained_weak_models["models"]), "--device", "cpu", "--quiet", "--lv-wall-mm", "5"]) == 0
    assert json.loads((tmp_path / "out" / "cine1" / "report.json").read_text())["cam"]["lv_wall_mm"] == 5.0
    assert main(["batch", str(tmp_path / "inputs"), "--task", "segment-cine", "--out", str(tmp_path / "cine"),
                 "--lv-wall-mm", "5"]) == 2
    assert "applies to --task cam, not segment-cine" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "bad"),
                 "--lv-wall-mm", "nan"]) == 2
    assert "LV wall width" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def _models_of_two_runs(trained_weak_models, tmp_path, *, unet_spec=None):
    """The classifier in one folder, the U-Net in another (its card naming ``unet_spec`` when given)."""
    import shutil

    classifier_dir, unet_dir = tmp_path / "classifier_run", tmp_path / "unet_run"
    for folder, name in ((classifier_dir, "weak_cam_classifier"), (unet_dir, "weak_heart_unet")):
        folder.mkdir()
        for path in trained_weak_models["models"].glob(f"{name}-*"):
            shutil.copy(path, folder / path.name)
    if unet_spec is not None:
        card_path = unet_dir / "weak_heart_unet-1.0.json"
        card = json.loads(card_path.read_text())
        card["input_spec"] = unet_spec.to_dict()
        card_path.write_text(json.dumps(card))
    return classifier_dir, unet_dir


def _u_net_input_sizes(models) -> list:
    sizes = []
    models.segmenter.network.register_forward_pre_hook(lambda module, inputs: sizes.append(tuple(inputs[0].shape)))
    return sizes


def test_cam_gives_a_u_net_of_another_grid_its_own_crop_and_warns(trained_weak_models, cohort, tmp_path):
    from cardiac_ai.pipeline import load_weak_models
    from cardiac_ai.weak.pipeline import explain_volume

    other_grid = InputSpec(in_plane_spacing_mm=(2.0, 2.0), crop_size=(48, 48))
    models = load_weak_models(_models_of_two_runs(trained_weak_models, tmp_path, unet_spec=other_grid), device="cpu")
    sizes = _u_net_input_sizes(models)
    result = explain_volume(cohort[0].image, models, device="cpu")
    assert sizes and all(size[-2:] == (48, 48) for size in sizes)  # not the classifier's 32 x 32 crop
    assert result.labels.array.shape == cohort[0].image.array.shape
    assert result.labels.geometry.is_close(cohort[0].image.geometry)
    warning = next(w for w in result.warnings if w.startswith("The weak models work on different grids"))
    assert "3 x 3 mm, 32 x 32 pixels" in warning and "2 x 2 mm, 48 x 48 pixels" in warning
    assert "classifier_run" in warning and "unet_run" in warning


def test_cam_warns_about_weak_models_from_different_folders_only(trained_weak_models, cohort, tmp_path):
    from cardiac_ai.pipeline import load_weak_models
    from cardiac_ai.weak.pipeline import explain_volume

    together = load_weak_models([trained_weak_models["models"]], device="cpu")
    sizes = _u_net_input_sizes(together)
    assert not [w for w in explain_volume(cohort[0].image, together, device="cpu").warnings if "weak models" in w]
    assert sizes and all(size[-2:] == (32, 32) for size in sizes)  # the classifier's crops, as before
    apart = load_weak_models(_models_of_two_runs(trained_weak_models, tmp_path), device="cpu")
    warnings = explain_volume(cohort[0].image, apart, device="cpu").warnings
    assert any(w.startswith("The weak models come from different folders") for w in warnings)
    assert not [w for w in explain_volume(cohort[0].image, apart, use_segmenter=False, device="cpu").warnings
                if "weak models" in w]  # the U-Net is not used: nothing to pair


# -- cam reporting: models that ran, the weak U-Net's mode, one class per CAM volume ---------------------------------
def test_cam_provenance_lists_only_the_models_that_made_the_results(trained_weak_models, cohort, tmp_path):
    image_path = _write_image(cohort, tmp_path)
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    names = {}
    for run, extra in (("unet", []), ("pseudo", ["--pseudo-label"])):
        assert main(["cam", str(image_path), "--out", str(tmp_path / run), *common, *extra]) == 0
        report = json.loads((tmp_path / run / "report.json").read_text())
        names[run] = [m["name"] for m in report["provenance"]["models"]]
    assert names["unet"] == ["weak_cam_classifier", "weak_heart_unet"]
    assert names["pseudo"] == ["weak_cam_classifier"]  # the installed U-Net made no label


@pytest.mark.parametrize(
    ("card_fields", "expected"),
    [
        ({"inference": {"weak_mode": "cam_prior"}}, "soft CAM prior"),
        ({"description": "Whole-heart U-Net trained without pixel labels (mode cam_prior: soft CAM prior)."},
         "soft CAM prior"),  # a card registered before the inference field
        ({"inference": {"weak_mode": "self_training"}}, "self-trained"),
        ({"inference": {"weak_mode": "pseudo_label"}}, "CAM pseudo-labels"),
        ({}, "names no weak mode"),
    ],
    ids=["cam-prior", "cam-prior-description", "self-training", "pseudo-label", "unknown"],
)
def test_cam_label_source_names_the_weak_u_nets_training_mode(trained_weak_models, cohort, tmp_path, card_fields,
                                                              expected):
    from cardiac_ai.pipeline import load_weak_models
    from cardiac_ai.weak.pipeline import explain_volume

    models = load_weak_models([trained_weak_models["models"]], device="cpu")
    models.segmenter = dataclasses.replace(models.segmenter,
                                           card=dataclasses.replace(models.segmenter.card, **card_fields))
    source = explain_volume(cohort[0].image, models, device="cpu").label_source
    assert source.startswith("weak_heart_unet (") and expected in source
    if expected != "CAM pseudo-labels":
        assert "pseudo-labels" not in source


def _models_with_slice_logits(trained_weak_models, slice_logits):
    """The trained weak models, the classifier's plain forward pass giving ``slice_logits`` (k, 2) instead of its
    own; the CAM pass is untouched (its hook is removed once the probabilities are taken)."""
    import torch

    from cardiac_ai.pipeline import load_weak_models

    models = load_weak_models([trained_weak_models["models"]], device="cpu")
    handle = models.classifier.network.register_forward_hook(
        lambda module, inputs, output: torch.tensor(slice_logits, dtype=output.dtype))
    return models, handle


def test_cam_explains_the_volumes_predicted_class_on_every_slice_by_default(trained_weak_models, cohort, tmp_path,
                                                                           monkeypatch):
    import cardiac_ai.weak.pipeline as weak_pipeline
    from cardiac_ai.pipeline import cam_file

    # slice 0 says NOR (class 1) strongly, the other four DCM (class 0) mildly: the volume's mean says DCM
    slice_logits = [[0.0, 4.0]] + [[1.0, 0.0]] * 4
    explained = []
    real_slice_cams = weak_pipeline.slice_cams
    for explain, out in ((None, "default"), ("slice", "per_slice")):
        models, handle = _models_with_slice_logits(trained_weak_models, slice_logits)

        def recording(*args, _handle=handle, **kwargs):
            _handle.remove()
            explained.append(list(kwargs["class_index"]))
            return real_slice_cams(*args, **kwargs)

        monkeypatch.setattr(weak_pipeline, "slice_cams", recording)
        cam_file(_write_image(cohort, tmp_path), tmp_path / out, models=models, explain=explain, device="cpu")
    assert explained == [[0, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
    default = json.loads((tmp_path / "default" / "report.json").read_text())
    per_slice = json.loads((tmp_path / "per_slice" / "report.json").read_text())
    assert default["cam"]["volume_prediction"]["class"] == "DCM"
    assert default["cam"]["explain"] == "predicted" and default["cam"]["explained_class"] == "DCM"
    assert [s["explained_class"] for s in default["cam"]["slices"]] == ["DCM"] * 5
    assert [s["predicted_class"] for s in default["cam"]["slices"]] == ["NOR"] + ["DCM"] * 4
    assert default["provenance"]["parameters"]["explain"] == "predicted"
    assert per_slice["cam"]["explain"] == "slice" and per_slice["cam"]["explained_class"] is None
    assert [s["explained_class"] for s in per_slice["cam"]["slices"]] == ["NOR"] + ["DCM"] * 4
    rows = (tmp_path / "default" / "cam_slices.csv").read_text().splitlines()
    assert rows[0].startswith("k,explained_class,predicted_class") and rows[1].startswith("0,DCM,NOR")


def test_cam_structures_split_the_heart_it_wrote_and_report_their_volumes(trained_weak_models, cohort, tmp_path):
    from cardiac_ai.io import read_seg_nrrd
    from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL

    image_path = tmp_path / "image.nii.gz"
    write_volume(cohort[2].image, image_path)
    plain, split = tmp_path / "plain", tmp_path / "split"
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet", "--pseudo-label"]
    assert main(["cam", str(image_path), "--out", str(plain), *common]) == 0
    assert main(["cam", str(image_path), "--out", str(split), "--structures", *common]) == 0
    assert not (plain / "structures.nii.gz").exists() and "structures" not in json.loads(
        (plain / "report.json").read_text())
    heart = read_volume(split / "labels.nii.gz").array > 0
    structures = read_volume(split / "structures.nii.gz")
    assert heart.any()  # else the split would have nothing to divide
    assert structures.geometry.is_close(cohort[2].image.geometry)
    assert set(np.unique(structures.array)) <= {0, RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL}
    assert not structures.array[~heart].any()  # the heart cam wrote, divided, nothing added
    report = json.loads((split / "report.json").read_text())
    voxel_ml = np.prod(cohort[2].image.geometry.spacing_mm) / 1000.0
    volumes = report["structures"]["volumes_ml"]
    assert volumes["lv_blood_pool"] == pytest.approx(np.count_nonzero(structures.array == LV_BLOOD_POOL) * voxel_ml)
    assert sum(volumes.values()) <= report["cam"]["heart_volume_ml"] + 1e-6
    assert "not a measurement" in report["structures"]["caution"]
    # the heart came from the CAM pseudo-label here: the caution and a warning say it is rougher still
    assert "CAM pseudo-label" in report["structures"]["caution"]
    assert any("--structures" in w and "CAM pseudo-label" in w for w in report["provenance"]["warnings"])
    assert "structures.seg.nrrd" in report["outputs"]
    assert np.array_equal(read_seg_nrrd(split / "structures.seg.nrrd").labels.array, structures.array)


def test_batch_cam_structures_become_summary_columns(trained_weak_models, cohort, tmp_path, capsys):
    import csv

    (tmp_path / "inputs").mkdir()
    write_volume(cohort[1].image, tmp_path / "inputs" / "cine1.nii.gz")
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "out"), "--models-dir",
                 str(trained_weak_models["models"]), "--device", "cpu", "--quiet", "--pseudo-label",
                 "--structures"]) == 0
    row = next(csv.DictReader((tmp_path / "out" / "summary.csv").open()))
    report = json.loads((tmp_path / "out" / "cine1" / "report.json").read_text())
    assert float(row["estimated_lv_blood_pool_ml"]) == pytest.approx(
        report["structures"]["volumes_ml"]["lv_blood_pool"], abs=1e-3)
    # a resumed batch skips a case finished without --structures, and says so
    write_volume(cohort[2].image, tmp_path / "inputs" / "cine2.nii.gz")
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--pseudo-label"]
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "plain"), *common]) == 0
    capsys.readouterr()
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "plain"), *common,
                 "--structures"]) == 0
    assert "2 case(s) finished by an earlier run without --structures" in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "inputs"), "--task", "cam", "--out", str(tmp_path / "out"), *common,
                 "--structures"]) == 0  # cine1 done with them, cine2 new: nothing to say
    assert "without --structures" not in capsys.readouterr().err
    assert main(["batch", str(tmp_path / "inputs"), "--task", "map", "--kind", "t1", "--out", str(tmp_path / "m"),
                 "--structures"]) == 2
    assert "applies to --task cam, not map" in capsys.readouterr().err


@pytest.fixture(scope="module")
def ed_es_pair():
    return make_phantom_cohort(1, seed=3, groups=("DCM",), phases=("ED", "ES"), n_slices=5, shape=(48, 48),
                               spacing_mm=(3.0, 3.0, 8.0))


def test_cam_with_the_end_diastolic_frame_carries_its_heart_to_the_input_frame(trained_weak_models, ed_es_pair,
                                                                               tmp_path, monkeypatch):
    import cardiac_ai.weak.pipeline as weak_pipeline
    from cardiac_ai.weak.propagation import carry_mask_between_frames

    ed, es = ed_es_pair
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    write_volume(es.image, tmp_path / "es.nii.gz")
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    calls = []

    def spy(mask, source, target, spacing, **kwargs):
        calls.append((mask.copy(), source.copy(), target.copy(), spacing))
        return carry_mask_between_frames(mask, source, target, spacing, **kwargs)

    monkeypatch.setattr(weak_pipeline, "carry_mask_between_frames", spy)
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--out", str(tmp_path / "own"), *common]) == 0
    assert main(["cam", str(tmp_path / "ed.nii.gz"), "--out", str(tmp_path / "ed_own"), *common]) == 0
    assert not calls
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--ed", str(tmp_path / "ed.nii.gz"), "--out",
                 str(tmp_path / "carried"), *common]) == 0
    [(mask, source, target, spacing)] = calls
    ed_heart = read_volume(tmp_path / "ed_own" / "labels.nii.gz").array > 0
    assert np.array_equal(mask, ed_heart)  # the ED frame's own cam heart (LV wall included) is what moves
    assert np.array_equal(source, ed.image.array) and np.array_equal(target, es.image.array)
    assert spacing == es.image.geometry.spacing_kji_mm
    carried = read_volume(tmp_path / "carried" / "labels.nii.gz")
    assert carried.geometry.is_close(es.image.geometry)
    assert np.array_equal(carried.array > 0, carry_mask_between_frames(ed_heart, ed.image.array, es.image.array,
                                                                       spacing))
    # the CAM is the input frame's own, whatever heart the labels hold
    assert np.array_equal(read_volume(tmp_path / "carried" / "cam.nii.gz").array,
                          read_volume(tmp_path / "own" / "cam.nii.gz").array)
    report = json.loads((tmp_path / "carried" / "report.json").read_text())
    assert report["cam"]["heart_from_end_diastole"] is True
    assert report["cam"]["label_source"].startswith("the end-diastolic frame's heart")
    assert report["provenance"]["parameters"]["end_diastole"] == str(tmp_path / "ed.nii.gz")
    own = json.loads((tmp_path / "own" / "report.json").read_text())
    assert own["cam"]["heart_from_end_diastole"] is False and "end_diastole" not in own["provenance"]["parameters"]


def test_cam_takes_the_end_diastolic_frame_from_a_4d_input(trained_weak_models, ed_es_pair, tmp_path):
    from cardiac_ai.geometry import Volume

    ed, es = ed_es_pair
    write_volume(Volume(np.stack([ed.image.array, es.image.array]), ed.image.geometry, axes="tkji"),
                 tmp_path / "cine.nii.gz")
    write_volume(es.image, tmp_path / "es.nii.gz")
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    assert main(["cam", str(tmp_path / "cine.nii.gz"), "--frame", "1", "--ed-frame", "0", "--out",
                 str(tmp_path / "4d"), *common]) == 0
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--ed", str(tmp_path / "ed.nii.gz"), "--out",
                 str(tmp_path / "3d"), *common]) == 0
    assert np.array_equal(read_volume(tmp_path / "4d" / "labels.nii.gz").array,
                          read_volume(tmp_path / "3d" / "labels.nii.gz").array)
    assert json.loads((tmp_path / "4d" / "report.json").read_text())["provenance"]["parameters"][
        "end_diastole_frame"] == 0
    # the end-diastolic frame stored in another axis order (its header saying so) is the same grid
    from cardiac_ai.geometry import InPlaneTurn

    turn = InPlaneTurn(flip_j=True, flip_i=True)
    write_volume(Volume(np.ascontiguousarray(turn.apply(ed.image.array)),
                        turn.geometry(ed.image.geometry, ed.image.spatial_shape)), tmp_path / "ed_turned.nii.gz")
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--ed", str(tmp_path / "ed_turned.nii.gz"), "--out",
                 str(tmp_path / "turned"), *common]) == 0
    assert np.array_equal(read_volume(tmp_path / "turned" / "labels.nii.gz").array,
                          read_volume(tmp_path / "3d" / "labels.nii.gz").array)


def test_cam_refuses_an_end_diastolic_frame_of_another_grid_before_writing(trained_weak_models, ed_es_pair, cohort,
                                                                           tmp_path, capsys):
    from cardiac_ai.pipeline import load_weak_models
    from cardiac_ai.weak.pipeline import explain_volume

    ed, es = ed_es_pair
    write_volume(es.image, tmp_path / "es.nii.gz")
    shifted = dataclasses.replace(ed.image.geometry, origin_lps_mm=(5.0, 0.0, 0.0))
    write_volume(ed.image.__class__(ed.image.array, shifted), tmp_path / "ed_elsewhere.nii.gz")
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--ed", str(tmp_path / "ed_elsewhere.nii.gz"), "--out",
                 str(tmp_path / "out"), "--models-dir", str(trained_weak_models["models"]), "--device", "cpu"]) == 2
    assert "lies on another grid than the image" in capsys.readouterr().err and not (tmp_path / "out").exists()
    models = load_weak_models([trained_weak_models["models"]], device="cpu")
    smaller = cohort[0].image.with_array(cohort[0].image.array[:3])
    with pytest.raises(InputError, match="another grid"):
        explain_volume(es.image, models, end_diastole=smaller)
    with pytest.raises(InputError, match="NaN or Inf"):
        explain_volume(es.image, models, end_diastole=ed.image.with_array(np.full(ed.image.array.shape, np.nan)))


def test_cam_pseudo_label_says_it_did_not_use_the_end_diastolic_frame(trained_weak_models, ed_es_pair, monkeypatch):
    import cardiac_ai.weak.pipeline as weak_pipeline
    from cardiac_ai.pipeline import load_weak_models

    ed, es = ed_es_pair
    monkeypatch.setattr(weak_pipeline, "carry_mask_between_frames", lambda *a, **k: pytest.fail("registered"))
    models = load_weak_models([trained_weak_models["models"]], device="cpu")
    result = weak_pipeline.explain_volume(es.image, models, use_segmenter=False, end_diastole=ed.image)
    assert not result.heart_from_end_diastole
    assert any("end-diastolic frame was not used" in w for w in result.warnings)


def test_cam_warns_that_an_image_of_noise_gives_meaningless_results(trained_weak_models, cohort):
    from cardiac_ai.pipeline import load_weak_models
    from cardiac_ai.weak.pipeline import explain_volume, neighbour_correlation

    models = load_weak_models([trained_weak_models["models"]], device="cpu")
    image = cohort[0].image
    noise = image.with_array(np.random.default_rng(0).normal(100.0, 30.0, image.array.shape))
    assert neighbour_correlation(noise.array) < 0.1 < 0.5 < neighbour_correlation(image.array)
    assert any(w.startswith("The image looks like noise") for w in explain_volume(noise, models).warnings)
    assert not any("noise" in w for w in explain_volume(image, models).warnings)
    assert neighbour_correlation(np.ones((2, 4, 4))) == 1.0


def test_a_cam_batch_csv_may_give_each_case_its_end_diastolic_frame(trained_weak_models, ed_es_pair, tmp_path):
    ed, es = ed_es_pair
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    write_volume(es.image, tmp_path / "es.nii.gz")
    (tmp_path / "cases.csv").write_text("case_id,input,ed\ncarried,es.nii.gz,ed.nii.gz\nown,es.nii.gz,\n")
    assert main(["batch", str(tmp_path / "cases.csv"), "--task", "cam", "--out", str(tmp_path / "out"),
                 "--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]) == 0
    reports = {name: json.loads((tmp_path / "out" / name / "report.json").read_text()) for name in ("carried", "own")}
    assert reports["carried"]["cam"]["heart_from_end_diastole"] and not reports["own"]["cam"]["heart_from_end_diastole"]
    assert reports["carried"]["provenance"]["parameters"]["end_diastole"] == str(tmp_path / "ed.nii.gz")
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--ed", str(tmp_path / "ed.nii.gz"), "--out",
                 str(tmp_path / "single"), "--models-dir", str(trained_weak_models["models"]), "--device", "cpu",
                 "--quiet"]) == 0
    assert np.array_equal(read_volume(tmp_path / "out" / "carried" / "labels.nii.gz").array,
                          read_volume(tmp_path / "single" / "labels.nii.gz").array)
    rows = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    assert "heart_from_end_diastole" in rows[0]


def test_cam_with_the_end_diastolic_frame_keeps_the_u_nets_structures_caution_and_wall(trained_weak_models,
                                                                                     ed_es_pair, tmp_path):
    ed, es = ed_es_pair
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    write_volume(es.image, tmp_path / "es.nii.gz")
    assert main(["cam", str(tmp_path / "es.nii.gz"), "--ed", str(tmp_path / "ed.nii.gz"), "--structures",
                 "--lv-wall-mm", "8", "--out", str(tmp_path / "out"), "--models-dir",
                 str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["cam"]["heart_from_end_diastole"] and report["cam"]["lv_wall_mm"] == 8.0
    assert not any("pseudo-label" in w or "not applied" in w for w in report["provenance"]["warnings"])
    caution = report["structures"]["caution"]
    assert "CAM pseudo-label" not in caution and "carried from the end-diastolic frame" in caution


def test_cam_reads_the_series_of_a_dicom_folder_given_by_series_uid(trained_weak_models, cohort, tmp_path,
                                                                    monkeypatch):
    import cardiac_ai.pipeline as pipeline

    write_volume(cohort[0].image, tmp_path / "image.nii.gz")
    calls = []

    def reading(path, *, frame=None, series_uid=None):
        calls.append((str(path), series_uid))
        return cohort[0].image

    monkeypatch.setattr(pipeline, "read_input", reading)
    common = ["--models-dir", str(trained_weak_models["models"]), "--device", "cpu", "--quiet"]
    assert main(["cam", str(tmp_path / "image.nii.gz"), "--series-uid", "1.2.3", "--out", str(tmp_path / "one"),
                 *common]) == 0
    assert calls == [(str(tmp_path / "image.nii.gz"), "1.2.3")]
    report = json.loads((tmp_path / "one" / "report.json").read_text())
    assert report["provenance"]["parameters"]["series_uid"] == "1.2.3"
    (tmp_path / "cases").mkdir()
    write_volume(cohort[0].image, tmp_path / "cases" / "case1.nii.gz")
    assert main(["batch", str(tmp_path / "cases"), "--task", "cam", "--series-uid", "4.5.6", "--out",
                 str(tmp_path / "batch"), *common]) == 0
    assert calls[-1][1] == "4.5.6"
