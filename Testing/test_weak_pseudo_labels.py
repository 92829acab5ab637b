"""Pseudo-labels from CAMs and weak labels: ReLU + scaling, multi-Otsu intensity floor, dense CRF."""
from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.weak import PseudoLabelConfig, cam_to_pseudo_label, pseudo_labels

SIZE = 64


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def _scene(seed: int = 0, *, cam_radius: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A bright disc (radius 8) on a darker background, and a Gaussian CAM that is positive out to ``cam_radius``:
    like a real CAM, it covers the lesion and some dark tissue around it."""
    rng = np.random.default_rng(seed)
    jj, ii = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(jj - 30, ii - 34)
    disc = r < 8
    image = np.where(disc, 1.0, 0.3) + rng.normal(0, 0.05, (SIZE, SIZE))
    sigma = 6.0
    cam = 3.0 * (np.exp(-(r**2) / (2 * sigma**2)) - np.exp(-(cam_radius**2) / (2 * sigma**2)))
    return cam.astype(np.float32), image.astype(np.float32), disc


@pytest.mark.parametrize("use_crf", [True, False])
def test_gaussian_cam_over_a_bright_disc_recovers_the_disc(use_crf):
    cam, image, disc = _scene()
    label = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(use_crf=use_crf))
    assert label.dtype == np.uint8 and label.shape == (SIZE, SIZE) and set(np.unique(label)) <= {0, 1}
    assert _jaccard(label, disc) > 0.8


def test_otsu_step_removes_dark_pixels_the_cam_covers():
    cam, image, disc = _scene()
    without = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(otsu_classes=None, use_crf=False))
    with_otsu = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(use_crf=False))
    assert _jaccard(without, disc) < 0.7  # the CAM's positive part is the radius-10 disc
    assert _jaccard(with_otsu, disc) > 0.95
    assert np.array_equal(without.astype(bool), cam > 0)


def test_crf_keeps_the_core_of_the_positive_region_and_trims_its_faint_rim():
    cam, _, _ = _scene(cam_radius=8.0)
    flat = np.ones_like(cam)
    label = cam_to_pseudo_label(cam, flat, config=PseudoLabelConfig(otsu_classes=None)).astype(bool)
    positive = cam > 0
    core = cam > 0.5 * cam.max()
    assert not (label & ~positive).any() and (label & core).sum() == core.sum()
    assert 0.7 < _jaccard(label, positive) < 1.0


def test_negative_weak_label_gives_an_empty_mask():
    cam, image, _ = _scene()
    assert not cam_to_pseudo_label(cam, image, positive=False).any()


def test_all_zero_or_negative_cam_gives_an_empty_mask():
    _, image, _ = _scene()
    assert not cam_to_pseudo_label(np.zeros_like(image), image).any()
    assert not cam_to_pseudo_label(-np.ones_like(image), image).any()


def test_crf_removes_isolated_specks_that_thresholding_keeps():
    cam, image, disc = _scene()
    rng = np.random.default_rng(1)
    specks = np.zeros_like(disc)
    specks[rng.integers(0, SIZE, 40), rng.integers(0, SIZE, 40)] = True
    specks &= ~np.pad(np.ones((24, 24), bool), ((18, 22), (22, 18)))  # away from the disc
    noisy_cam = np.where(specks, 0.3, cam).astype(np.float32)
    noisy_image = np.where(specks, 1.0, image).astype(np.float32)  # bright, so Otsu keeps them
    plain = cam_to_pseudo_label(noisy_cam, noisy_image, config=PseudoLabelConfig(use_crf=False))
    refined = cam_to_pseudo_label(noisy_cam, noisy_image)
    assert (plain.astype(bool) & specks).sum() == specks.sum()
    assert not (refined.astype(bool) & specks).any()
    assert _jaccard(refined, disc) > 0.8


def test_parameters_change_the_output():
    cam, image, _ = _scene()
    default = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(otsu_classes=None))
    smoother = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(otsu_classes=None, crf_w2=5.0))
    appearance = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(otsu_classes=None, crf_w1=5.0))
    stricter = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(use_crf=False, foreground_threshold=0.9))
    assert smoother.sum() < default.sum()
    assert not np.array_equal(appearance, default)
    assert 0 < stricter.sum() < default.sum()


def test_restrict_to_keeps_the_label_inside_the_mask():
    cam, image, disc = _scene()
    half = np.zeros_like(disc)
    half[:, :34] = True
    label = cam_to_pseudo_label(cam, image, restrict_to=half)
    assert not label[~half].any()
    assert _jaccard(label, disc & half) > 0.8


def test_fewer_distinct_intensities_than_otsu_classes_fall_back(caplog):
    cam, _, disc = _scene()
    two_levels = np.where(disc, 2.0, 1.0).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.weak.pseudo_labels"):
        label = cam_to_pseudo_label(cam, two_levels, config=PseudoLabelConfig(use_crf=False))
    assert "2 distinct intensities" in caplog.text and "using 2 classes" in caplog.text
    assert np.array_equal(label.astype(bool), disc)
    flat = np.ones_like(cam)
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.weak.pseudo_labels"):
        label = cam_to_pseudo_label(cam, flat, config=PseudoLabelConfig(use_crf=False))
    assert "skipping the intensity step" in caplog.text
    assert np.array_equal(label.astype(bool), cam > 0)


def test_constant_positive_cam_marks_every_pixel_as_candidate():
    label = cam_to_pseudo_label(np.full((16, 16), 2.0), np.ones((16, 16)), config=PseudoLabelConfig(otsu_classes=None))
    assert label.all()


def test_relu_false_scales_the_whole_map():
    cam, image, _ = _scene()
    config = PseudoLabelConfig(relu=False, otsu_classes=None, use_crf=False, foreground_threshold=0.75)
    label = cam_to_pseudo_label(cam - 10.0, image, config=config)  # all negative: the positive part would be empty
    expected = (cam - cam.min()) / (cam.max() - cam.min()) > 0.5
    assert np.array_equal(label.astype(bool), expected)


def test_batched_pseudo_labels_match_single_slices_and_respect_weak_labels():
    scenes = [_scene(seed) for seed in range(3)]
    cams = np.stack([s[0] for s in scenes])
    images = np.stack([s[1] for s in scenes])
    masks = np.ones_like(cams, dtype=bool)
    masks[2, :, 40:] = False
    labels = pseudo_labels(cams, images, [True, False, True], restrict_to=masks)
    assert labels.shape == (3, SIZE, SIZE) and labels.dtype == np.uint8
    assert not labels[1].any()
    np.testing.assert_array_equal(labels[0], cam_to_pseudo_label(cams[0], images[0]))
    np.testing.assert_array_equal(labels[2], cam_to_pseudo_label(cams[2], images[2], restrict_to=masks[2]))


def test_pseudo_labels_are_deterministic():
    cam, image, _ = _scene()
    config = PseudoLabelConfig(crf_w1=2.0)
    first = cam_to_pseudo_label(cam, image, config=config)
    assert np.array_equal(first, cam_to_pseudo_label(cam.copy(), image.copy(), config=config))


def test_nan_in_cam_or_image_is_an_input_error():
    cam, image, _ = _scene()
    bad = cam.copy()
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="cam has 1 NaN"):
        cam_to_pseudo_label(bad, image)
    with pytest.raises(InputError, match="image has 1 NaN"):
        cam_to_pseudo_label(cam, bad)
    with pytest.raises(InputError, match="cam has 1 NaN"):
        pseudo_labels(bad[None], image[None], [False])


def test_shape_mismatches_are_input_errors():
    cam, image, _ = _scene()
    with pytest.raises(InputError, match="differ in shape; resize the CAM"):
        cam_to_pseudo_label(cam[::2, ::2], image)
    with pytest.raises(InputError, match=r"\(j, i\) ndarray"):
        cam_to_pseudo_label(cam[None], image[None])
    with pytest.raises(InputError, match="restrict_to must be a mask of shape"):
        cam_to_pseudo_label(cam, image, restrict_to=np.ones((3, 3), bool))
    with pytest.raises(InputError, match="restrict_to must be boolean"):
        cam_to_pseudo_label(cam, image, restrict_to=np.full(cam.shape, 2))
    with pytest.raises(InputError, match=r"one bool per slice \(1\)"):
        pseudo_labels(cam[None], image[None], [True, False])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scale_range", (0.8, 0.5), "scale_range"),
        ("otsu_classes", 1, "otsu_classes"),
        ("crf_w2", -1.0, "weights"),
        ("crf_theta_gamma", 0.0, "widths"),
        ("crf_iterations", 0, "crf_iterations"),
        ("foreground_threshold", 1.0, "foreground_threshold"),
    ],
)
def test_invalid_config_is_rejected(field, value, message):
    with pytest.raises(InputError, match=message):
        PseudoLabelConfig(**{field: value})


def test_config_defaults_are_the_papers_and_frozen():
    config = PseudoLabelConfig()
    assert (config.scale_range, config.otsu_classes, config.crf_w1, config.crf_w2) == ((0.5, 1.0), 3, 0.0, 1.0)
    assert (config.crf_theta_gamma, config.crf_iterations) == (3.0, 5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.use_crf = False  # type: ignore[misc]


def test_cam_otsu_keeps_the_cams_core_whatever_the_image_says():
    """For targets whose intensity carries no information (the whole heart in cine), Otsu on the CAM values drops
    the CAM's weak rim instead of dark tissue."""
    cam, _, disc = _scene(cam_radius=14.0)
    flat_image = np.full(cam.shape, 0.5, np.float32)
    label = cam_to_pseudo_label(cam, flat_image, config=PseudoLabelConfig(otsu_source="cam", use_crf=False))
    assert 0 < label.sum() < (cam > 0).sum()
    assert label[cam < 0.2 * cam.max()].sum() == 0  # the rim is gone
    assert label[cam == cam.max()].all()


def test_min_fraction_drops_pixels_below_that_fraction_of_the_peak():
    cam, image, _ = _scene(cam_radius=14.0)
    config = PseudoLabelConfig(otsu_classes=None, use_crf=False, min_fraction=0.5)
    label = cam_to_pseudo_label(cam, image, config=config)
    assert np.array_equal(label.astype(bool), cam >= 0.5 * cam.max())
    with pytest.raises(InputError, match="min_fraction"):
        PseudoLabelConfig(min_fraction=1.0)
    with pytest.raises(InputError, match="otsu_source"):
        PseudoLabelConfig(otsu_source="labels")


def test_motion_prior_is_high_where_the_slices_differ_and_zero_for_a_still_slice():
    from cardiac_ai.weak import motion_prior

    rng = np.random.default_rng(0)
    still = rng.random((1, SIZE, SIZE)).astype(np.float32)
    ed, es = still.repeat(2, axis=0), still.repeat(2, axis=0)
    es[0, 20:40, 20:40] += 0.5  # the "heart" of slice 0 contracts
    prior = motion_prior(ed, es, sigma_px=2.0)
    assert prior.shape == ed.shape and prior.dtype == np.float32
    assert prior[0, 30, 30] == pytest.approx(prior[0].max(), rel=0.2) and prior[0, 5, 5] < 0.05
    assert not prior[1].any()
    with pytest.raises(InputError, match="one shape"):
        motion_prior(ed, es[:1])


def test_compact_shape_keeps_one_filled_convex_piece():
    cam = np.zeros((SIZE, SIZE), np.float32)
    cam[10:40, 10:40] = 1.0
    cam[20:30, 20:30] = 0.0  # a hole
    cam[50:54, 50:54] = 1.0  # a speck elsewhere
    image = np.ones_like(cam)
    free = cam_to_pseudo_label(cam, image, config=PseudoLabelConfig(otsu_classes=None, use_crf=False))
    compact = cam_to_pseudo_label(cam, image,
                                  config=PseudoLabelConfig(otsu_classes=None, use_crf=False, shape="compact"))
    assert free[25, 25] == 0 and free[52, 52] == 1
    assert compact[25, 25] == 1 and compact[52, 52] == 0 and compact[10:40, 10:40].all()
