"""QC training data and training: ground-truth pairs, poor segmentations, the VAE and the CNN Dice regressor, the
training script (and a tiny end-to-end run of it and of the QC benchmark on the real data when present)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cardiac_ai.errors import InputError
from cardiac_ai.metrics.overlap import dice
from cardiac_ai.models import ModelRegistry, build_network
from cardiac_ai.models.qc_regressor import QCDiceRegressor, regress_dice
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.qc.training import (
    CORRUPTION_KINDS,
    QCPairDataset,
    augment_qc_pairs,
    augment_regressor_pairs,
    concatenate_qc_pairs,
    corrupt_labels,
    evaluate_dice_prediction,
    load_qc_pairs,
    make_poor_segmentations,
    prepare_qc_pairs,
    save_qc_pairs,
    train_qc_regressor,
    train_qc_vae,
    vae_predicted_dice,
)

REPO = Path(__file__).resolve().parents[1]
TINY_VAE = (4, 8, 8, 16)
TINY_REGRESSOR = (4, 8)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def cases():
    return [make_cine_phantom(n_slices=6, seed=seed, phase=phase) for seed in (1, 2) for phase in ("ED", "ES")]


@pytest.fixture(scope="module")
def gt_pairs(cases):
    return prepare_qc_pairs(cases)


@pytest.fixture(scope="module")
def poor_pairs(cases):
    return make_poor_segmentations(cases, n_variants=6, seed=0)


# -- ground-truth pairs ----------------------------------------------------------------------------------------------


def test_prepare_qc_pairs_keeps_labelled_slices_as_96_pixel_pairs_with_dice_one(cases, gt_pairs):
    labelled = sum(int(np.any(c.labels.array > 0, axis=(1, 2)).sum()) for c in cases)
    assert len(gt_pairs) == labelled == 16  # 6 slices, 1 without heart at each end, 4 cases
    assert gt_pairs.images.shape == (16, 96, 96) and gt_pairs.images.dtype == np.uint8
    assert gt_pairs.structures.shape == (16, 3, 96, 96) and gt_pairs.structures.dtype == np.bool_
    x = gt_pairs.as_float()
    assert x.shape == (16, 4, 96, 96) and x.dtype == np.float32
    assert x[:, 0].min() == 0.0 and x[:, 0].max() == 1.0
    assert set(np.unique(x[:, 1:])) == {0.0, 1.0}
    assert np.all(x[:, 2].sum(axis=(1, 2)) > 0)  # every kept slice shows myocardium
    finite = gt_pairs.dice[np.isfinite(gt_pairs.dice)]
    assert finite.size > 0 and np.all(finite == 1.0)
    assert set(gt_pairs.kinds) == {"ground_truth"}
    assert set(gt_pairs.case_ids) == {c.case_id for c in cases}
    assert np.all((gt_pairs.slice_indices >= 1) & (gt_pairs.slice_indices <= 4))
    assert np.allclose(gt_pairs.roi_spacing_mm, 1.8)


def test_prepare_qc_pairs_matches_qc_input_image(cases, gt_pairs):
    from cardiac_ai.qc import qc_input

    pairs, _ = qc_input(cases[0].image, cases[0].labels)
    ours = gt_pairs.as_float(gt_pairs.case_ids == cases[0].case_id)
    assert np.abs(ours[:, 0] - pairs[1:5, 0]).max() <= 0.5 / 255 + 1e-6
    assert np.array_equal(ours[:, 1:], pairs[1:5, 1:])


def test_prepare_qc_pairs_rejects_a_case_without_labels(cases):
    from dataclasses import replace

    with pytest.raises(InputError, match="no ground-truth labels"):
        prepare_qc_pairs([replace(cases[0], labels=None)])
    with pytest.raises(InputError, match="no cases"):
        prepare_qc_pairs([])


def test_qc_pairs_save_load_round_trip(poor_pairs, tmp_path):
    path = save_qc_pairs(poor_pairs, tmp_path / "poor.npz")
    back = load_qc_pairs(path)
    for name in ("images", "structures", "slice_indices", "levels", "roi_spacing_mm"):
        assert np.array_equal(getattr(back, name), getattr(poor_pairs, name)), name
    assert np.array_equal(back.dice, poor_pairs.dice, equal_nan=True)
    assert list(back.case_ids) == list(poor_pairs.case_ids) and list(back.kinds) == list(poor_pairs.kinds)
    assert back.structure_codes == poor_pairs.structure_codes
    with pytest.raises(InputError, match=".npz"):
        save_qc_pairs(poor_pairs, tmp_path / "poor.npy")


def test_concatenate_refuses_pairs_of_other_structures(gt_pairs, cases):
    myocardium_only = prepare_qc_pairs(cases[:1], structures=(2,))
    assert myocardium_only.structures.shape[1] == 1
    with pytest.raises(InputError, match="Cannot concatenate"):
        concatenate_qc_pairs([gt_pairs, myocardium_only])


def test_with_structures_equals_pairs_prepared_for_those_structures(poor_pairs, cases):
    full = prepare_qc_pairs(cases[:1])
    myocardium_only = prepare_qc_pairs(cases[:1], structures=(2,))
    subset = full.with_structures((2,))
    assert subset.structure_codes == (2,) and np.array_equal(subset.images, myocardium_only.images)
    assert np.array_equal(subset.structures, myocardium_only.structures)
    assert np.array_equal(subset.dice, myocardium_only.dice, equal_nan=True)
    swapped = poor_pairs.with_structures((3, 1))
    assert np.array_equal(swapped.structures[:, 0], poor_pairs.structures[:, 2])
    assert np.array_equal(swapped.dice[:, 1], poor_pairs.dice[:, 0], equal_nan=True)
    for codes in ((), (4,), (2, 2)):
        with pytest.raises(InputError, match="with_structures"):
            poor_pairs.with_structures(codes)


# -- poor segmentations ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CORRUPTION_KINDS)
def test_corrupt_labels_is_graded_from_identity_to_poor(cases, kind):
    truth = cases[0].labels
    assert np.array_equal(corrupt_labels(truth, kind, 0.0).array, truth.array)
    mild = dice(corrupt_labels(truth, kind, 0.3, seed=4).array > 0, truth.array > 0)
    strong = dice(corrupt_labels(truth, kind, 1.0, seed=4).array > 0, truth.array > 0)
    assert strong < 0.9 and strong <= mild + 1e-9
    out = corrupt_labels(truth, kind, 1.0, seed=4)
    assert out.array.dtype == truth.array.dtype and out.geometry == truth.geometry


def test_corrupt_labels_rejects_unknown_kind_and_level(cases):
    with pytest.raises(InputError, match="kind must be one of"):
        corrupt_labels(cases[0].labels, "blur", 0.5)
    with pytest.raises(InputError, match=r"level must be a number in \[0, 1\]"):
        corrupt_labels(cases[0].labels, "shift", 1.5)


def test_make_poor_segmentations_spreads_true_dice_over_zero_to_one(poor_pairs):
    true = poor_pairs.dice[np.isfinite(poor_pairs.dice)]
    assert true.min() < 0.3 and true.max() == 1.0
    assert np.mean(true < 0.8) > 0.2 and np.mean(true > 0.9) > 0.2  # good and poor slices both well represented
    assert np.std(true) > 0.2
    kinds = set(poor_pairs.kinds)
    assert "ground_truth" in kinds and len(kinds - {"ground_truth"}) >= 3
    assert np.all(poor_pairs.dice[poor_pairs.kinds == "ground_truth"][np.isfinite(
        poor_pairs.dice[poor_pairs.kinds == "ground_truth"])] == 1.0)
    targets = poor_pairs.targets()
    assert targets.dtype == np.float32 and np.all(np.isfinite(targets)) and targets.min() >= 0 and targets.max() <= 1


def test_make_poor_segmentations_is_deterministic_with_a_seed(cases, poor_pairs):
    again = make_poor_segmentations(cases, n_variants=6, seed=0)
    other = make_poor_segmentations(cases, n_variants=6, seed=1)
    assert np.array_equal(again.structures, poor_pairs.structures)
    assert np.array_equal(again.dice, poor_pairs.dice, equal_nan=True)
    assert list(again.kinds) == list(poor_pairs.kinds)
    assert len(other) != len(poor_pairs) or not np.array_equal(other.structures, poor_pairs.structures)


def test_margin_slices_add_the_slices_beyond_the_heart_as_correctly_empty(cases, poor_pairs):
    truth_only = make_poor_segmentations(cases, n_variants=0, seed=0, margin_slices=1)
    assert set(truth_only.kinds) == {"ground_truth"}
    assert len(truth_only) == 4 * 6  # the 4 labelled slices of each case and the one beyond each end
    beyond = np.isin(truth_only.slice_indices, (0, 5))
    assert beyond.sum() == 8 and not truth_only.structures[beyond].any()
    assert np.isnan(truth_only.dice[beyond]).all()  # nothing to overlap: the regressor's target is 1 (right)
    np.testing.assert_array_equal(truth_only.targets()[beyond], 1.0)
    widened = make_poor_segmentations(cases, n_variants=6, seed=0, margin_slices=2)
    empty_in_both = ~widened.structures.any(axis=(1, 2, 3)) & np.isnan(widened.dice).all(axis=1)
    assert empty_in_both.any()
    unwidened = widened.subset(~empty_in_both)  # the pairs without a margin, in order; only empty ones were added
    np.testing.assert_array_equal(unwidened.structures, poor_pairs.structures)
    np.testing.assert_array_equal(unwidened.dice, poor_pairs.dice)
    with pytest.raises(InputError, match="margin_slices"):
        make_poor_segmentations(cases[:1], margin_slices=-1)


def test_noise_attacks_can_use_each_cases_own_models(cases, monkeypatch):
    """A callable gives each case its models (a cross-validation fold that never saw the patient)."""
    from cardiac_ai.qc import training

    used = {}

    def attacked(case, variances, *, cine_models, **options):
        used[case.case_id] = cine_models
        return []

    monkeypatch.setattr(training, "attacked_segmentations", attacked)
    make_poor_segmentations(cases, n_variants=1, cine_models=lambda case: f"models for {case.case_id}")
    assert used == {c.case_id: f"models for {c.case_id}" for c in cases}
    make_poor_segmentations(cases[:1], n_variants=1, cine_models="shared models")
    assert used[cases[0].case_id] == "shared models"


def test_make_poor_segmentations_rejects_bad_options(cases):
    with pytest.raises(InputError, match="kinds must be"):
        make_poor_segmentations(cases[:1], kinds=("blur",))
    with pytest.raises(InputError, match="level_range"):
        make_poor_segmentations(cases[:1], level_range=(0.5, 2.0))


# -- VAE training ----------------------------------------------------------------------------------------------------


def test_train_qc_vae_loss_decreases_on_a_toy_set(gt_pairs, tmp_path):
    model, history = train_qc_vae(gt_pairs, gt_pairs, features=TINY_VAE, epochs=5, batch_size=4, lr=3e-3,
                                  out_dir=tmp_path / "vae", seed=0)
    losses = [h["train_loss"] for h in history]
    assert len(history) == 5 and losses[-1] < 0.8 * losses[0]
    assert {"val_loss", "val_bce", "val_mse", "val_kl"} <= set(history[0])
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert model.latent_size == 8 and model.features == TINY_VAE
    assert (tmp_path / "vae" / "best.pt").is_file() and (tmp_path / "vae" / "vae_loss.json").is_file()


def test_train_qc_vae_is_deterministic_with_a_seed(gt_pairs, tmp_path):
    kwargs = dict(features=TINY_VAE, epochs=2, batch_size=8, lr=1e-3, seed=3)
    first, history_a = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "a", **kwargs)
    second, history_b = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "b", **kwargs)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), name
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]
    other, _ = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "c", **{**kwargs, "seed": 4})
    assert not torch.equal(other.state_dict()["to_latent.weight"], first.state_dict()["to_latent.weight"])


def test_augment_qc_pairs_moves_image_and_masks_together_and_keeps_masks_binary(gt_pairs):
    x = torch.from_numpy(np.stack([gt_pairs.as_float(i)[0] for i in range(4)]))
    moved = augment_qc_pairs(x, torch.Generator().manual_seed(0), rotate_deg=30.0, translate_px=6.0)
    assert moved.shape == x.shape and not torch.equal(moved, x)
    masks = moved[:, 1:]
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    assert float(moved[:, :1].min()) >= 0.0 and float(moved[:, :1].max()) <= 1.0
    # the masks follow the image: the same transform without gamma maps the image as the masks are mapped
    no_gamma = augment_qc_pairs(x, torch.Generator().manual_seed(0), rotate_deg=30.0, translate_px=6.0, gamma=1.0)
    twice = augment_qc_pairs(x, torch.Generator().manual_seed(0), rotate_deg=30.0, translate_px=6.0, gamma=1.0)
    assert torch.equal(no_gamma, twice)
    blood_pool = x[:, 3] > 0.5  # LV blood pool: brighter than the image average in cine
    moved_pool = no_gamma[:, 3] > 0.5
    assert x[:, 0][blood_pool].mean() > x[:, 0].mean()
    assert no_gamma[:, 0][moved_pool].mean() > no_gamma[:, 0].mean()
    identity = augment_qc_pairs(x, torch.Generator().manual_seed(0), rotate_deg=0.0, scale=0.0, translate_px=0.0,
                                gamma=1.0)
    assert torch.allclose(identity[:, :1], x[:, :1], atol=1e-5) and torch.equal(identity[:, 1:], x[:, 1:])


def test_train_qc_vae_with_augmentation_is_deterministic(gt_pairs, tmp_path):
    kwargs = dict(features=TINY_VAE, epochs=2, batch_size=8, lr=1e-3, seed=3, augment=True)
    first, history_a = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "a", **kwargs)
    second, history_b = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "b", **kwargs)
    plain, history_c = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "c", **{**kwargs, "augment": False})
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]
    assert [h["train_loss"] for h in history_a] != [h["train_loss"] for h in history_c]


def test_augmented_vae_training_resumes_as_if_never_stopped(gt_pairs, tmp_path):
    from cardiac_ai.errors import Cancelled

    kwargs = dict(features=TINY_VAE, epochs=2, batch_size=8, lr=1e-3, seed=3, augment=True)
    uninterrupted, _ = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "full", **kwargs)

    def stop_in_the_second_epoch(fraction, message):
        if fraction > 0.5:
            raise Cancelled("stopped")

    with pytest.raises(Cancelled):
        train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "cut", progress=stop_in_the_second_epoch, **kwargs)
    resumed, history = train_qc_vae(gt_pairs, gt_pairs, out_dir=tmp_path / "cut", resume=True, **kwargs)
    assert len(history) == 2
    for (name, a), b in zip(uninterrupted.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_train_qc_vae_refuses_to_resume_with_another_beta(gt_pairs, tmp_path):
    train_qc_vae(gt_pairs, gt_pairs, features=TINY_VAE, epochs=1, batch_size=8, beta=0.01, out_dir=tmp_path / "v")
    with pytest.raises(InputError, match="beta=0.01"):
        train_qc_vae(gt_pairs, gt_pairs, features=TINY_VAE, epochs=2, batch_size=8, beta=0.1,
                     out_dir=tmp_path / "v", resume=True)


def test_train_qc_vae_rejects_bad_inputs(gt_pairs, cases, tmp_path):
    with pytest.raises(InputError, match="val_pairs must be a non-empty QCPairs"):
        train_qc_vae(gt_pairs, None, out_dir=tmp_path / "x")
    with pytest.raises(InputError, match="beta must be"):
        train_qc_vae(gt_pairs, gt_pairs, beta=-1.0, out_dir=tmp_path / "x")
    with pytest.raises(InputError, match="differ in structures"):
        train_qc_vae(gt_pairs, prepare_qc_pairs(cases[:1], structures=(2,)), out_dir=tmp_path / "x")


def test_vae_predicted_dice_in_chunks_equals_one_call(gt_pairs, tmp_path):
    model, _ = train_qc_vae(gt_pairs, gt_pairs, features=TINY_VAE, epochs=1, batch_size=8, out_dir=tmp_path / "v")
    whole = vae_predicted_dice(model, gt_pairs, steps=0, chunk_size=100)
    chunked = vae_predicted_dice(model, gt_pairs, steps=0, chunk_size=3)
    assert whole.shape == (len(gt_pairs), 3) and np.array_equal(whole, chunked)
    assert np.all((whole >= 0) & (whole <= 1))


# -- CNN Dice regressor ----------------------------------------------------------------------------------------------


def test_regressor_outputs_one_dice_per_structure_in_zero_one():
    torch.manual_seed(0)
    network = build_network("qc_dice_regressor")
    assert isinstance(network, QCDiceRegressor)
    assert sum(p.numel() for p in network.parameters()) < 1_000_000  # fits the bundled-weights budget
    with torch.no_grad():
        logits = network.eval()(torch.rand(2, 4, 96, 96))
    assert logits.shape == (2, 3)
    pairs = np.random.default_rng(0).random((5, 4, 96, 96), dtype=np.float32)
    predicted = regress_dice(network.train(), pairs, batch_size=2)
    assert predicted.shape == (5, 3) and predicted.dtype == np.float64
    assert np.all((predicted > 0) & (predicted < 1))
    assert network.training  # mode restored


def test_regressor_rejects_wrong_input_and_settings():
    network = QCDiceRegressor(features=TINY_REGRESSOR)
    with pytest.raises(InputError, match=r"expects input \(batch, 4, 96, 96\)"):
        network(torch.rand(1, 3, 96, 96))
    with pytest.raises(InputError, match="divisible"):
        QCDiceRegressor(input_size=90)
    with pytest.raises(InputError, match="pairs must be"):
        regress_dice(network, np.zeros((4, 96, 96), np.float32))
    for rotations in ((), (float("nan"),), ("six",), "15", {"6": 0}, (True,), (720.0,), None, 6.0):
        with pytest.raises(InputError, match="rotations_deg"):
            regress_dice(network, np.zeros((1, 4, 96, 96), np.float32), rotations_deg=rotations)


def test_test_time_rotations_turn_the_pair_and_keep_its_masks_binary():
    from cardiac_ai.models.qc_regressor import rotated_pairs

    size = 96
    yy, xx = np.mgrid[:size, :size]
    bar = ((np.abs(yy - 48) < 4) & (np.abs(xx - 48) < 30)).astype(np.float32)  # a horizontal bar
    disc = (np.hypot(yy - 48, xx - 48) < 20).astype(np.float32)
    pair = torch.from_numpy(np.stack([bar * 0.7, bar, disc, np.zeros_like(bar)])[None])
    assert rotated_pairs(pair, 0.0, 3) is pair
    turned = rotated_pairs(pair, 90.0, 3)[0].numpy()
    assert set(np.unique(turned[1:])) <= {0.0, 1.0}  # masks stay masks
    assert abs(turned[2].sum() - disc.sum()) < 0.02 * disc.sum()  # a centred disc turns into itself
    vertical = turned[1] > 0.5
    rows, cols = np.nonzero(vertical)
    assert np.ptp(rows) > 3 * np.ptp(cols)  # the bar now stands upright, in the image channel too
    assert np.corrcoef(turned[0].ravel(), turned[1].ravel())[0, 1] > 0.95


def test_the_regressor_averages_its_views():
    torch.manual_seed(0)
    network = QCDiceRegressor(features=TINY_REGRESSOR).eval()
    pairs = np.random.default_rng(1).random((3, 4, 96, 96), dtype=np.float32)
    pairs[:, 1:] = pairs[:, 1:] > 0.5
    one = [regress_dice(network, pairs, rotations_deg=(a,)) for a in (0.0, 10.0, -10.0)]
    np.testing.assert_allclose(regress_dice(network, pairs), one[0])
    np.testing.assert_allclose(regress_dice(network, pairs, rotations_deg=(0, 10, -10)), np.mean(one, axis=0),
                               rtol=1e-6)
    assert not np.allclose(one[0], one[1])


def test_train_qc_regressor_lowers_its_error(poor_pairs, tmp_path):
    model, history = train_qc_regressor(poor_pairs, poor_pairs, features=TINY_REGRESSOR, epochs=4, batch_size=16,
                                        lr=3e-3, out_dir=tmp_path / "reg", seed=0)
    assert len(history) == 4 and {"val_loss", "val_mae"} <= set(history[0])
    assert min(h["train_loss"] for h in history[1:]) < history[0]["train_loss"]
    predicted = regress_dice(model, poor_pairs.as_float())
    assert predicted.shape == (len(poor_pairs), 3)
    dataset = QCPairDataset(poor_pairs)
    item = dataset[0]
    assert item["image"].shape == (4, 96, 96) and item["label"].shape == (3,)


def test_regressor_augmentation_adds_noise_to_the_image_only(gt_pairs):
    x = torch.from_numpy(np.stack([gt_pairs.as_float(i)[0] for i in range(4)]))
    plain = augment_qc_pairs(x, torch.Generator().manual_seed(1), gamma=2.0)
    quiet = augment_regressor_pairs(x, torch.Generator().manual_seed(1), noise_probability=0.0)
    noisy = augment_regressor_pairs(x, torch.Generator().manual_seed(1), noise_probability=1.0, noise_sd=0.2)
    assert torch.equal(quiet, plain)  # the geometric part and gamma are augment_qc_pairs's
    assert torch.equal(noisy[:, 1:], plain[:, 1:]) and set(torch.unique(noisy[:, 1:]).tolist()) <= {0.0, 1.0}
    assert not torch.equal(noisy[:, :1], plain[:, :1])
    assert float(noisy[:, :1].min()) >= 0.0 and float(noisy[:, :1].max()) <= 1.0
    again = augment_regressor_pairs(x, torch.Generator().manual_seed(1), noise_probability=1.0, noise_sd=0.2)
    assert torch.equal(noisy, again)


def test_train_qc_regressor_with_augmentation_is_deterministic_and_differs(poor_pairs, tmp_path):
    kwargs = dict(features=TINY_REGRESSOR, epochs=2, batch_size=16, lr=3e-3, seed=0, augment=True)
    first, history_a = train_qc_regressor(poor_pairs, poor_pairs, out_dir=tmp_path / "a", **kwargs)
    second, history_b = train_qc_regressor(poor_pairs, poor_pairs, out_dir=tmp_path / "b", **kwargs)
    plain, history_c = train_qc_regressor(poor_pairs, poor_pairs, out_dir=tmp_path / "c",
                                          **{**kwargs, "augment": False})
    assert [h["train_loss"] for h in history_a] == [h["train_loss"] for h in history_b]
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name
    assert [h["train_loss"] for h in history_a] != [h["train_loss"] for h in history_c]


# -- evaluation ------------------------------------------------------------------------------------------------------


def test_fit_dice_combination_recovers_the_weights_behind_the_true_dice(poor_pairs, monkeypatch):
    from cardiac_ai.models import qc_regressor
    from cardiac_ai.qc import training
    from cardiac_ai.qc.training import fit_dice_combination

    rng = np.random.default_rng(0)
    regressed = rng.uniform(0, 1, poor_pairs.dice.shape)
    searched = rng.uniform(0, 1, poor_pairs.dice.shape)
    weights = np.array([[0.6, 0.2, 0.1, 0.05], [0.7, 0.1, 0.0, 0.1], [0.5, 0.3, 0.2, 0.0]])
    truth = weights[:, 0] * regressed + weights[:, 1] * searched + weights[:, 2] * regressed * searched + weights[:, 3]
    pairs = poor_pairs.subset(np.arange(len(poor_pairs)))
    object.__setattr__(pairs, "dice", np.where(np.isnan(poor_pairs.dice), np.nan, truth))
    monkeypatch.setattr(qc_regressor, "regress_dice", lambda network, x, **options: regressed[:len(x)].copy())
    monkeypatch.setattr(training, "vae_predicted_dice", lambda vae, p, **options: searched[:len(p)].copy())
    coefficients, summary = fit_dice_combination(None, None, pairs)
    np.testing.assert_allclose(coefficients, weights, atol=1e-9)
    assert all(c["mae"] < 1e-9 for c in summary["combined"]) and len(summary["n_values"]) == 3
    few = pairs.subset(np.arange(5))
    with pytest.raises(InputError, match="at least 10"):
        fit_dice_combination(None, None, few)


def test_evaluate_dice_prediction_reports_r_and_mae_over_finite_truth():
    true = np.array([[0.2, np.nan], [0.5, 0.9], [0.8, 1.0]])
    perfect = evaluate_dice_prediction(np.nan_to_num(true, nan=0.3), true)
    assert perfect["n"] == 5 and perfect["mae"] == 0.0 and perfect["pearson_r"] == pytest.approx(1.0)
    shifted = evaluate_dice_prediction(true + 0.1, true)
    assert shifted["mae"] == pytest.approx(0.1) and shifted["pearson_r"] == pytest.approx(1.0)
    assert np.isnan(evaluate_dice_prediction(np.full(3, 0.5), np.array([0.1, 0.5, 0.9]))["pearson_r"])
    with pytest.raises(InputError, match="same shape"):
        evaluate_dice_prediction(np.zeros(3), np.zeros(4))


# -- the script ------------------------------------------------------------------------------------------------------


def _load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_help_lists_the_stages():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train_qc.py"), "--help"], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    for stage in ("prepare", "vae", "ablation", "regressor", "register"):
        assert stage in done.stdout


@pytest.mark.shared_data
def test_train_script_tiny_end_to_end_run_registers_both_models(acdc_root, tmp_path, monkeypatch):
    work = tmp_path / "qc"
    script = _load_script("train_qc_script", REPO / "scripts" / "train_qc.py")
    started = time.perf_counter()
    status = script.main([
        "--data", str(acdc_root), "--work", str(work), "--limit", "2", "--phases", "ED", "--epochs", "1",
        "--regressor-epochs", "1", "--no-attacks", "--search-steps", "2", "--ablation-val-slices", "10",
        "--latent-sizes", "4", "--betas", "0.01", "--ablation-epochs", "1", "--ablation-search-steps", "2",
        "--vae-features", "8", "16", "16", "32", "--regressor-features", "8", "16", "--variants", "2",
        "--margin-slices", "1",
    ])
    elapsed = time.perf_counter() - started
    assert status == 0
    registry = ModelRegistry(paths=[work / "models"])
    vae = registry.load("qc_vae", device="cpu")
    regressor = registry.load("qc_dice_regressor", device="cpu")
    assert vae.card.precision == "float16" and regressor.card.precision == "float16"
    assert vae.card.task == "quality_control" and "val_dice_mae_search" in vae.card.validation_metrics
    assert regressor.card.inference["assess_margin_slices"] == 1 and "beyond each end" in regressor.card.training_data
    combination = regressor.card.inference["combination"]  # stage combine, fitted on the validation pairs
    assert np.asarray(combination["coefficients"]).shape == (3, 4) and "validation pairs" in combination["fitted_on"]
    split = vae.card.split
    assert len(split["train"]) == 2 and len(split["test"]) == 20
    assert not set(split["test"]) & (set(split["train"]) | set(split["validation"]))
    trained_on = {c.split("_")[0] for c in load_qc_pairs(work / "pairs_train.npz").case_ids}
    assert trained_on == set(split["train"])
    assert (work / "ablation" / "results.json").is_file()
    print(f"tiny end-to-end training run: {elapsed:.1f} s")

    # combine a regressor registered in its own folder with the VAE of another; the source card stays as it was
    regressor_only, combined = tmp_path / "regressor_only", tmp_path / "combined"
    regressor_only.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy2(work / "models" / f"qc_dice_regressor-1.0{suffix}", regressor_only)
    source_text = (regressor_only / "qc_dice_regressor-1.0.json").read_text()
    common = ["--data", str(acdc_root), "--work", str(work), "--limit", "2", "--phases", "ED", "--no-attacks",
              "--search-steps", "2", "--variants", "2", "--margin-slices", "1", "--stage", "combine"]
    assert script.main([*common, "--combine-models", str(regressor_only), str(work / "models"),
                        "--combine-out", str(combined), "--version", "1.1"]) == 0
    again = ModelRegistry(paths=[combined]).load("qc_dice_regressor", device="cpu")
    assert again.card.version == "1.1" and "combination_encoder" in again.card.inference
    assert (regressor_only / "qc_dice_regressor-1.0.json").read_text() == source_text
    assert not (combined / "qc_vae-1.0.json").exists()
    with pytest.raises(SystemExit, match="would replace the regressor it combines"):
        script.main([*common, "--combine-models", str(regressor_only), str(work / "models"),
                     "--combine-out", str(regressor_only), "--version", "1.0"])
    assert again.card.inference["test_time_rotations_deg"] == [0.0]  # none asked for: one view
    assert script.main([*common, "--combine-models", str(combined), str(work / "models"), "--combine-out",
                        str(tmp_path / "views"), "--version", "1.2", "--regressor-rotations", "0", "6", "-6"]) == 0
    views = ModelRegistry(paths=[tmp_path / "views"]).load("qc_dice_regressor", device="cpu")
    assert views.card.inference["test_time_rotations_deg"] == [0.0, 6.0, -6.0] and "rotations" in views.card.description
    assert views.card.inference["combination"]["coefficients"] != again.card.inference["combination"]["coefficients"]
    assert (regressor_only / "qc_dice_regressor-1.0.json").read_text() == source_text

    # the benchmark on these models: synthetic corruptions of one test patient (no cine models needed)
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    benchmark = _load_script("qc_evaluation_script", REPO / "benchmarks" / "qc_evaluation.py")
    report = tmp_path / "qc.md"
    assert benchmark.main([
        "--data", str(acdc_root), "--qc-models", str(work / "models"), "--cine-models", str(tmp_path / "none"),
        "--limit", "1", "--search-steps", "2", "--levels", "0.5", "--kinds", "shift", "erode",
        "--ablation", str(work / "ablation" / "results.json"), "--report", str(report),
    ]) == 0
    text = report.read_text()
    assert "Table 1" in text and "(c) shift" in text and "rules acc" in text and "Table A1" in text
    assert report.with_suffix(".png").is_file()


def test_random_intensity_curve_keeps_the_range_and_the_order_when_monotone():
    from cardiac_ai.training.batch_augmentation import random_intensity_curve

    ramp = torch.linspace(0, 1, 64).repeat(6, 1, 1, 1)  # (6, 1, 1, 64): every sample a ramp
    monotone = random_intensity_curve(ramp, torch.Generator().manual_seed(0), monotone_probability=1.0)
    assert monotone.shape == ramp.shape
    for sample in monotone:
        assert float(sample.min()) == pytest.approx(0.0) and float(sample.max()) == pytest.approx(1.0)
        assert bool((sample.flatten().diff() >= -1e-6).all())  # the order of intensities is kept
    free = random_intensity_curve(ramp, torch.Generator().manual_seed(0), monotone_probability=0.0)
    assert any(bool((sample.flatten().diff() < -1e-3).any()) for sample in free)  # some tissue order changes
    again = random_intensity_curve(ramp, torch.Generator().manual_seed(0), monotone_probability=0.0)
    assert torch.equal(free, again)


def test_regressor_curve_augmentation_changes_the_image_only_and_is_checked(gt_pairs, poor_pairs, tmp_path):
    x = torch.from_numpy(np.stack([gt_pairs.as_float(i)[0] for i in range(4)]))
    plain = augment_regressor_pairs(x, torch.Generator().manual_seed(2), noise_probability=0.0)
    curved = augment_regressor_pairs(x, torch.Generator().manual_seed(2), noise_probability=0.0, curve_probability=1.0)
    assert torch.equal(curved[:, 1:], plain[:, 1:]) and not torch.equal(curved[:, :1], plain[:, :1])
    assert float(curved[:, :1].min()) >= 0.0 and float(curved[:, :1].max()) <= 1.0
    with pytest.raises(InputError, match="curve_probability"):
        train_qc_regressor(poor_pairs, poor_pairs, features=TINY_REGRESSOR, epochs=1, out_dir=tmp_path / "r",
                           augment=True, curve_probability=1.5)
