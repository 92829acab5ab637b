"""Generative QC building blocks: the VAE, latent search, predicted Dice, corruptions, rule checks and ROI input."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.metrics.overlap import dice
from cardiac_ai.models import build_network
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.provenance import Provenance
from cardiac_ai.qc import (
    SegmentationVAE,
    add_noise_to_image,
    check_rules,
    dilate_labels,
    drop_slices,
    encoder_only_dice,
    erode_labels,
    latent_search,
    predicted_dice,
    punch_holes,
    qc_input,
    shift_labels,
    vae_loss,
)

TINY = (4, 8, 8, 16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def pairs(cine_phantom):
    pairs, _ = qc_input(cine_phantom.image, cine_phantom.labels)
    return pairs[1:7]  # the six slices with heart


@pytest.fixture(scope="module")
def trained_vae(pairs):
    torch.manual_seed(0)
    model = SegmentationVAE(features=TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = torch.from_numpy(pairs)
    losses = []
    for _ in range(25):
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        total, _ = vae_loss(recon, x, mu, logvar, beta=0.01)
        total.backward()
        optimizer.step()
        losses.append(float(total.detach()))
    return model.eval(), losses


# -- VAE ------------------------------------------------------------------------------------------------------------


def test_vae_shapes_for_three_structures_and_myocardium_only():
    x = torch.rand(2, 4, 96, 96)
    with torch.no_grad():
        recon, mu, logvar = SegmentationVAE(features=TINY, latent_size=8)(x)
    assert recon.shape == x.shape and mu.shape == (2, 8) and logvar.shape == (2, 8)
    assert 0 < float(recon.min()) and float(recon.max()) < 1
    single = SegmentationVAE(n_structures=1, features=TINY)
    assert single.decode(torch.zeros(3, 8)).shape == (3, 2, 96, 96)


def test_vae_rejects_wrong_channel_count():
    with pytest.raises(InputError, match=r"\(batch, 4, 96, 96\)"):
        SegmentationVAE(features=TINY).encode(torch.rand(1, 2, 96, 96))
    with pytest.raises(InputError, match="multiple of 16"):
        SegmentationVAE(input_size=90)


def test_vae_loss_is_finite_and_decreases_in_training(trained_vae):
    _, losses = trained_vae
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3])


def test_vae_loss_parts_weight_kl_by_beta():
    x = torch.rand(2, 4, 16, 16).round()
    recon = torch.full_like(x, 0.5)
    mu, logvar = torch.ones(2, 8), torch.zeros(2, 8)
    total, parts = vae_loss(recon, x, mu, logvar, beta=0.5)
    assert float(parts["kl"]) == pytest.approx(4.0)  # 0.5 * sum(mu^2) over 8 dims
    # per-sample sums: 3 segmentation channels and 1 image channel of 16 x 16 pixels
    assert float(total) == pytest.approx(float(parts["bce"]) * 768 + float(parts["mse"]) * 256 + 2.0, rel=1e-5)
    with pytest.raises(InputError, match="beta"):
        vae_loss(recon, x, mu, logvar, beta=-1)


def test_qc_vae_is_registered_as_a_network():
    model = build_network("qc_vae", n_structures=1, latent_size=4, features=TINY)
    assert isinstance(model, SegmentationVAE) and model.in_channels == 2 and model.latent_size == 4


# -- search and predicted Dice --------------------------------------------------------------------------------------


def test_latent_search_lowers_the_distance_below_the_encoder_start(trained_vae, pairs):
    model, _ = trained_vae
    result = latent_search(model, pairs, steps=15, lr=0.05, tolerance=0.0)
    assert result.surrogate.shape == (6, 3, 96, 96) and result.z.shape == (6, 8)
    assert result.iterations == 15 and not result.converged
    assert np.all(result.final_loss <= result.initial_loss)
    assert result.final_loss.mean() < result.initial_loss.mean()
    assert model.training is False and all(p.requires_grad for p in model.parameters())


def test_latent_search_respects_steps_and_zero_steps_is_encoder_only(trained_vae, pairs):
    model, _ = trained_vae
    assert latent_search(model, pairs, steps=3).iterations <= 3
    direct = latent_search(model, torch.from_numpy(pairs), steps=0)
    assert direct.iterations == 0
    np.testing.assert_array_equal(direct.final_loss, direct.initial_loss)
    np.testing.assert_allclose(
        encoder_only_dice(model, pairs), predicted_dice(direct.surrogate, pairs[:, 1:]), atol=1e-12
    )


def test_latent_search_rejects_pairs_outside_unit_range(trained_vae, pairs):
    model, _ = trained_vae
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        latent_search(model, pairs * 3)
    with pytest.raises(InputError, match="pairs must be"):
        latent_search(model, pairs[:, :2])


def test_predicted_dice_is_one_for_identical_masks_and_in_range(pairs):
    truth = pairs[:, 1:]
    scores = predicted_dice(truth, truth)
    assert scores.shape == (6, 3)
    np.testing.assert_array_equal(scores, 1.0)
    noisy = predicted_dice(np.clip(truth + 0.3 * np.random.default_rng(0).random(truth.shape), 0, 1), truth)
    assert np.all((noisy >= 0) & (noisy <= 1))


def test_empty_input_segmentation_gets_zero_not_nan_where_surrogate_has_heart(pairs):
    surrogate = pairs[:, 1:]
    scores = predicted_dice(surrogate, np.zeros_like(surrogate))
    present = surrogate.any(axis=(2, 3))
    assert not np.isnan(scores).any()
    np.testing.assert_array_equal(scores[present], 0.0)
    np.testing.assert_array_equal(scores[~present], 1.0)  # both empty: agreement


def test_predicted_dice_rejects_mismatched_shapes(pairs):
    with pytest.raises(InputError, match="equal"):
        predicted_dice(pairs[:, 1:], pairs[:, 2:])


# -- corruptions ----------------------------------------------------------------------------------------------------


def _mean_dice(corrupted, truth):
    return np.mean([dice(corrupted == c, truth == c, empty_value=1.0) for c in (1, 2, 3)])


@pytest.mark.parametrize(
    "corrupt, severities",
    [
        (lambda labels, s: shift_labels(labels, s, seed=1), [0, 2, 4, 8]),
        (lambda labels, s: erode_labels(labels, s), [0, 1, 2, 3]),
        (lambda labels, s: dilate_labels(labels, s), [0, 1, 2, 4]),
        (lambda labels, s: punch_holes(labels, s, radius_px=3, seed=1), [0, 5, 20, 60]),
        (lambda labels, s: drop_slices(labels, s, seed=1), [0, 1, 2, 4]),
    ],
    ids=["shift", "erode", "dilate", "holes", "drop"],
)
def test_corruptions_lower_true_dice_monotonically(cine_phantom, corrupt, severities):
    truth = cine_phantom.labels.array
    before = truth.copy()
    scores = [_mean_dice(corrupt(truth, s), truth) for s in severities]
    np.testing.assert_array_equal(truth, before)  # input untouched
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores, scores[1:])), scores
    assert corrupt(truth, severities[-1]).dtype == truth.dtype


def test_random_corruptions_are_reproducible_by_seed(cine_phantom):
    truth = cine_phantom.labels.array
    np.testing.assert_array_equal(punch_holes(truth, 10, seed=4), punch_holes(truth, 10, seed=4))
    assert not np.array_equal(punch_holes(truth, 10, seed=4), punch_holes(truth, 10, seed=5))


def test_image_noise_grows_with_variance_and_is_seeded(cine_phantom):
    image = cine_phantom.image.array
    errors = [np.std(add_noise_to_image(image, v, seed=2) - image) for v in (0.0, 0.01, 0.04)]
    assert errors[0] == 0.0 and errors[1] < errors[2]
    assert errors[2] == pytest.approx(2 * errors[1], rel=1e-3)
    with pytest.raises(InputError, match="variance"):
        add_noise_to_image(image, -1.0)


def test_drop_slices_refuses_more_than_labelled(cine_phantom):
    with pytest.raises(InputError, match="only 6 slices"):
        drop_slices(cine_phantom.labels.array, 7)


# -- rules ----------------------------------------------------------------------------------------------------------


def test_rules_pass_the_phantom_ground_truth(cine_phantom):
    report = check_rules(cine_phantom.labels.array, cine_phantom.labels.geometry.spacing_mm)
    assert report.passed, report.reasons
    assert report.labelled_range == (1, 6) and report.mid_slice == 3


def test_rules_flag_missing_lv_on_mid_slice(cine_phantom):
    labels = cine_phantom.labels.array.copy()
    labels[3][labels[3] == 3] = 0
    report = check_rules(labels, cine_phantom.labels.geometry.spacing_mm)
    assert not report.passed and report.slice_flags[3]
    assert report.slice_reasons[3] == (report.slice_reasons[3][0],)
    assert "mid slice lacks" in report.slice_reasons[3][0]


def test_rules_flag_a_gap_between_labelled_slices(cine_phantom):
    labels = cine_phantom.labels.array.copy()
    labels[4] = 0
    report = check_rules(labels, cine_phantom.labels.geometry.spacing_mm)
    assert report.slice_flags.tolist() == [k == 4 for k in range(8)]
    assert "gap" in report.slice_reasons[4][0]


def test_rules_flag_open_myocardium_and_empty_segmentation(cine_phantom):
    labels = cine_phantom.labels.array.copy()
    labels[3, :48][labels[3, :48] == 2] = 0  # remove the upper half of the ring
    report = check_rules(labels, cine_phantom.labels.geometry.spacing_mm)
    assert report.slice_flags[3] and report.lv_surround_fraction[3] < 0.8
    empty = check_rules(np.zeros_like(labels), (1.5, 1.5, 8.0))
    assert not empty.passed and "no labels" in empty.volume_reasons[0]


def test_rules_reject_unknown_codes():
    with pytest.raises(InputError, match="not in the label table"):
        check_rules(np.full((2, 8, 8), 9, np.uint8), (1.0, 1.0))


# -- ROI input ------------------------------------------------------------------------------------------------------


def test_qc_input_stacks_normalised_image_and_structures(cine_phantom):
    pairs, transform = qc_input(cine_phantom.image, cine_phantom.labels)
    assert pairs.shape == (8, 4, 96, 96) and pairs.dtype == np.float32
    assert pairs[:, 0].min() == 0.0 and pairs[:, 0].max() == 1.0
    assert set(np.unique(pairs[:, 1:])) <= {0.0, 1.0}
    assert transform.spec.in_plane_spacing_mm == (1.8, 1.8)
    myo_only, _ = qc_input(cine_phantom.image, cine_phantom.labels, structures=(2,))
    np.testing.assert_array_equal(myo_only[:, 1], pairs[:, 2])


def test_qc_input_resamples_a_too_large_heart_with_a_warning(caplog):
    big = make_cine_phantom(n_slices=5, shape=(160, 160), spacing_mm=(1.5, 1.5, 8.0), scale=2.2, seed=1)
    provenance = Provenance()
    with caplog.at_level(logging.WARNING):
        pairs, transform = qc_input(big.image, big.labels, provenance=provenance)
    spacing = transform.spec.in_plane_spacing_mm[0]
    assert spacing > 1.8
    assert any(f"resampled to {spacing:g} mm to fit the heart" in w for w in provenance.warnings)
    assert "to fit the heart" in caplog.text
    edge = np.concatenate([pairs[:, 1:, :2].ravel(), pairs[:, 1:, -2:].ravel(),
                           pairs[:, 1:, :, :2].ravel(), pairs[:, 1:, :, -2:].ravel()])
    assert not edge.any()  # the heart lies inside the ROI


def test_qc_input_rejects_labels_off_the_image_grid(cine_phantom):
    with pytest.raises(InputError, match="image's grid"):
        qc_input(cine_phantom.image, Volume(cine_phantom.labels.array[:, :90], cine_phantom.labels.geometry))


def test_qc_input_accepts_an_empty_segmentation_and_scores_it_low(cine_phantom, caplog):
    empty = cine_phantom.labels.with_array(np.zeros_like(cine_phantom.labels.array))
    with caplog.at_level(logging.WARNING):
        pairs, _ = qc_input(cine_phantom.image, empty)
    assert "segmentation is empty" in caplog.text
    assert pairs.shape == (8, 4, 96, 96) and not pairs[:, 1:].any()
    truth, _ = qc_input(cine_phantom.image, cine_phantom.labels)
    scores = predicted_dice(truth[:, 1:], pairs[:, 1:])  # a surrogate that shows the heart
    assert not np.isnan(scores).any()
    np.testing.assert_array_equal(scores[truth[:, 1:].any(axis=(2, 3))], 0.0)


def test_lv_surround_fraction_counts_the_pools_outer_border_wherever_the_pool_lies():
    from cardiac_ai.qc.rules import lv_surround_fractions

    labels = np.zeros((4, 9, 9), np.uint8)
    labels[0, 3:6, 3:6] = 3  # 3 x 3 pool: 12 border pixels, myocardium on the 3 of its top edge
    labels[0, 2, 3:6] = 2
    labels[1, 0:2, 0:2] = 3  # a pool in the corner: its border stops at the image edge (4 pixels), 2 on scar
    labels[1, 2, 0:2] = 4
    labels[2] = 3  # a pool filling the slice has no border
    surround = lv_surround_fractions(labels)
    assert surround[0] == pytest.approx(3 / 12) and surround[1] == pytest.approx(2 / 4)
    assert surround[2] == 0.0 and np.isnan(surround[3])  # slice 3: no pool
    labels[0, 6, 3:6] = 2  # the bottom edge too; a pool in the far corner measures the same as in the first
    labels[1] = np.rot90(labels[1], 2)
    surround = lv_surround_fractions(labels)
    assert surround[0] == pytest.approx(6 / 12) and surround[1] == pytest.approx(2 / 4)
