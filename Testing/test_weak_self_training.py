"""Self-training of the weak heart U-Net: labels from the first U-Net's own predictions, thresholded and eroded
(cardiac_ai.weak.pseudo_labels.self_training_labels), and the recipe's ``weak_self`` stage."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cardiac_ai.datasets import list_generic
from cardiac_ai.datasets.splits import Split
from cardiac_ai.errors import InputError
from cardiac_ai.io import write_volume
from cardiac_ai.metrics.overlap import dice
from cardiac_ai.phantom import make_phantom_cohort
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.weak.pseudo_labels import self_training_labels
from cardiac_ai.weak.recipe import WeakRecipe, self_training_grid, train_weak_cam_models


def _disc(radius: float, shape=(40, 40), centre=(20.0, 20.0)) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius ** 2


def test_erosion_takes_a_teacher_s_systematic_oversize_back_out():
    """A teacher that draws every heart 3 px too wide (what pseudo-labels from a blurred motion prior teach): the
    eroded labels match the truth far better than the teacher's own."""
    truth = np.stack([_disc(r) for r in (6, 8, 10)])
    teacher = np.stack([np.where(_disc(r + 3), 0.9, 0.05) for r in (6, 8, 10)]).astype(np.float32)
    as_is = self_training_labels(teacher)
    eroded = self_training_labels(teacher, erosion_px=3)
    assert dice(as_is > 0, truth) < 0.85
    assert dice(eroded > 0, truth) > 0.95


def test_labels_keep_the_largest_piece_with_its_holes_filled_above_the_threshold():
    p = np.zeros((1, 30, 30), np.float32)
    p[0, 5:20, 5:20] = 0.9
    p[0, 10:13, 10:13] = 0.1  # a hole: filled
    p[0, 24:27, 24:27] = 0.95  # a smaller piece elsewhere: dropped
    p[0, 2, 2:10] = 0.6  # above 0.5 only: below the threshold
    labels = self_training_labels(p, threshold=0.7)[0]
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1}
    assert labels[5:20, 5:20].all() and labels.sum() == 15 * 15
    assert not labels[24:27, 24:27].any()


def test_an_empty_prediction_gives_an_empty_label():
    assert not self_training_labels(np.zeros((2, 8, 8), np.float32), erosion_px=2).any()


@pytest.mark.parametrize("probabilities, options, message", [
    (np.zeros((8, 8), np.float32), {}, "(n, j, i)"),
    (np.zeros((1, 8, 8), np.int64), {}, "float"),
    (np.full((1, 8, 8), np.nan, np.float32), {}, "finite"),
    (np.full((1, 8, 8), 1.5, np.float32), {}, "[0, 1]"),
    (np.zeros((1, 8, 8), np.float32), {"threshold": 1.0}, "threshold"),
    (np.zeros((1, 8, 8), np.float32), {"erosion_px": -1}, "erosion_px"),
    (np.zeros((1, 8, 8), np.float32), {"erosion_px": 1.5}, "erosion_px"),
])
def test_bad_probabilities_or_settings_are_refused(probabilities, options, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        self_training_labels(probabilities, **options)


# -- the recipe stage ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom_folder(tmp_path_factory):
    """ED and ES of six phantom patients with their real label maps (the validation_truth selection reads them)."""
    root = tmp_path_factory.mktemp("weak_self")
    cases = make_phantom_cohort(6, groups=("NOR", "DCM"), phases=("ED", "ES"), n_slices=5, shape=(48, 48),
                                spacing_mm=(3.0, 3.0, 8.0))
    (root / "images").mkdir()
    (root / "labels").mkdir()
    lines = ["case_id,patient_id,diagnosis"]
    for case in cases:
        write_volume(case.image, root / "images" / f"{case.case_id}.nii.gz")
        write_volume(case.labels, root / "labels" / f"{case.case_id}.nii.gz")
        lines.append(f"{case.case_id},{case.patient_id},{case.image_labels['group']}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    patients = sorted({c.patient_id for c in cases})
    return root, Split(train=tuple(patients[:4]), validation=tuple(patients[4:]), test=())


TINY_RECIPE = WeakRecipe(spec=InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32)), width=4, epochs=1,
                         seg_epochs=2, batch_size=8)


def test_self_training_stage_chooses_its_labels_on_validation_and_can_be_registered(phantom_folder, tmp_path):
    root, split = phantom_folder
    result = train_weak_cam_models(
        list_generic(root), "diagnosis", work_dir=tmp_path / "run", split=split, recipe=TINY_RECIPE,
        modes=("pseudo_label", "self_training"), selection="validation_truth", register_to=tmp_path / "models",
        device="cpu",
    )
    run = tmp_path / "run"
    for name in ("self_train.npz", "self_validation.npz", "run_weak_self_training/best.pt"):
        assert (run / name).exists(), name
    record = json.loads((run / "self_choice.json").read_text())
    grid = record["grid"]
    assert [{k: r[k] for k in ("threshold", "erosion_mm")} for r in grid] == self_training_grid()
    best = max(grid, key=lambda r: r["val_volume_dice"])
    assert record["chosen"]["threshold"] == best["threshold"]
    assert record["chosen"]["erosion_mm"] == best["erosion_mm"]
    assert record["chosen"]["erosion_px"] == round(best["erosion_mm"] / 3.0)
    labels = np.load(run / "self_train.npz")["masks"]
    assert labels.shape == np.load(run / "weak_train.npz")["images"].shape and set(np.unique(labels)) <= {0, 1}
    assert set(result.unet_metrics) == {"pseudo_label", "self_training"}
    card = json.loads((tmp_path / "models" / "weak_heart_unet-1.0.json").read_text())
    assert result.registered_mode in ("pseudo_label", "self_training")
    assert f"mode {result.registered_mode}" in card["description"]
    assert card["inference"] == {"weak_mode": result.registered_mode}


def test_self_training_without_the_first_u_net_says_which_stage_to_run(phantom_folder, tmp_path):
    root, split = phantom_folder
    common = dict(work_dir=tmp_path / "run", split=split, recipe=TINY_RECIPE, device="cpu", resume=True)
    train_weak_cam_models(list_generic(root), "diagnosis", stages=["prepare", "classifier", "pseudo"], **common)
    with pytest.raises(InputError, match="weak_pseudo stage first"):
        train_weak_cam_models(list_generic(root), "diagnosis", stages=["weak_self"], modes=("self_training",),
                              **common)


def test_self_training_mode_alone_also_trains_the_first_u_net(phantom_folder, tmp_path):
    """Label-free: the default settings (8 mm erosion), no label map, and the self-trained U-Net registered."""
    root, split = phantom_folder
    result = train_weak_cam_models(
        list_generic(root), "diagnosis", work_dir=tmp_path / "run", split=split, recipe=TINY_RECIPE,
        modes=("self_training",), register_to=tmp_path / "models", device="cpu",
    )
    record = json.loads((tmp_path / "run" / "self_choice.json").read_text())
    assert record["selection"] == "label_free" and record["grid"] == []
    assert record["chosen"] == {"threshold": 0.5, "erosion_mm": 8.0, "erosion_px": 3}
    assert (tmp_path / "run" / "run_weak_pseudo_label" / "best.pt").exists()
    assert result.registered_mode == "self_training"
    card = json.loads((tmp_path / "models" / "weak_heart_unet-1.0.json").read_text())
    assert "mode self_training" in card["description"] and "eroded 8 mm" in card["description"]
    assert "self-training, no pixel label" in card["training_data"]


def test_the_self_trained_u_net_may_train_longer_than_the_first():
    recipe = WeakRecipe(seg_epochs=25, self_training_epochs=50)
    assert recipe.unet_config("self_training").epochs == 50
    assert recipe.unet_config("pseudo_label").epochs == recipe.unet_config("cam_prior").epochs == 25
    assert WeakRecipe(seg_epochs=25).unet_config("self_training").epochs == 25
    with pytest.raises(InputError, match="self_training_epochs"):
        WeakRecipe(self_training_epochs=0)
