"""Tests for cardiac_ai.training.augmentation: seeded MONAI augmentation of 2D slices and their labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cardiac_ai.errors import InputError
from cardiac_ai.training.augmentation import AugmentationConfig, build_augmentation

ALL_ON = AugmentationConfig(
    rotate_prob=1.0,
    zoom_prob=1.0,
    elastic_prob=1.0,
    gamma_prob=1.0,
    bias_field_prob=1.0,
    noise_prob=1.0,
    smooth_prob=1.0,
    flip_prob=0.5,
)


def _slice(size: int = 64) -> dict[str, np.ndarray]:
    """One (1, j, i) slice: RV (1) left of an LV ring (2 around 3), intensities in [0, 1]."""
    y, x = np.mgrid[:size, :size].astype(np.float32)
    lv = np.hypot(y - size / 2, x - size * 0.6)
    labels = np.zeros((size, size), np.uint8)
    labels[(np.hypot(y - size / 2, x - size * 0.3) < size * 0.15) & (lv >= size * 0.18)] = 1
    labels[lv < size * 0.18] = 2
    labels[lv < size * 0.12] = 3
    rng = np.random.default_rng(0)
    image = np.array([0.1, 0.8, 0.3, 0.9], np.float32)[labels] + rng.normal(0, 0.02, labels.shape).astype(np.float32)
    return {"image": image[np.newaxis], "label": labels[np.newaxis]}


def test_same_seed_gives_same_output_and_other_seeds_differ():
    sample = _slice()
    first = build_augmentation(ALL_ON, seed=3)(sample)
    again = build_augmentation(ALL_ON, seed=3)(sample)
    other = build_augmentation(ALL_ON, seed=4)(sample)

    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["label"], again["label"])
    assert not np.array_equal(first["image"], other["image"])


def test_reseeding_replays_the_sequence():
    sample = _slice()
    augment = build_augmentation(ALL_ON, seed=0)
    sequence = [augment(sample)["image"] for _ in range(2)]
    augment.set_random_state(seed=0)
    np.testing.assert_array_equal(augment(sample)["image"], sequence[0])
    assert not np.array_equal(sequence[0], sequence[1])


def test_keeps_shapes_types_finite_intensities_and_only_existing_labels():
    sample = _slice()
    sample["label"][sample["label"] == 1] = 0  # codes {0, 2, 3}
    augment = build_augmentation(ALL_ON, seed=1)

    for _ in range(5):
        out = augment(sample)
        assert out["image"].shape == (1, 64, 64) and out["image"].dtype == np.float32
        assert out["label"].shape == (1, 64, 64) and out["label"].dtype == np.uint8
        assert np.all(np.isfinite(out["image"]))
        assert set(np.unique(out["label"])) <= {0, 2, 3}


def test_torch_in_gives_torch_out_and_extra_keys_pass_through():
    sample = {key: torch.from_numpy(value) for key, value in _slice().items()}
    sample["case"] = "patient001"
    out = build_augmentation(ALL_ON, seed=0)(sample)
    assert isinstance(out["image"], torch.Tensor) and out["image"].dtype == torch.float32
    assert isinstance(out["label"], torch.Tensor) and out["label"].dtype == torch.uint8
    assert out["case"] == "patient001"


def test_image_without_label_is_augmented():
    sample = _slice()
    out = build_augmentation(ALL_ON, seed=0)({"image": sample["image"]})
    assert set(out) == {"image"} and out["image"].shape == (1, 64, 64)


def test_none_preset_is_the_identity():
    sample = _slice()
    out = build_augmentation(AugmentationConfig.none(), seed=0)(sample)
    np.testing.assert_array_equal(out["image"], sample["image"])
    np.testing.assert_array_equal(out["label"], sample["label"])


def test_default_config_never_puts_the_rv_right_of_the_lv():
    sample = _slice()
    augment = build_augmentation(AugmentationConfig(), seed=0)
    columns = np.arange(64)
    for _ in range(10):
        label = augment(sample)["label"][0]
        rv_column = (label == 1).sum(axis=0) @ columns / max((label == 1).sum(), 1)
        lv_column = (label == 3).sum(axis=0) @ columns / (label == 3).sum()
        assert rv_column < lv_column


def test_config_survives_a_json_round_trip():
    config = AugmentationConfig(rotate_range_deg=10.0, zoom_range=(0.9, 1.1), flip_prob=0.2)
    assert AugmentationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rotate_prob": 1.5}, "rotate_prob must be a probability"),
        ({"gamma_range": (1.5, 0.7)}, "gamma_range must be"),
        ({"zoom_range": (0.0, 1.1)}, "zoom_range must be positive"),
        ({"bias_field_degree": 0}, "bias_field_degree"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(InputError, match=match):
        AugmentationConfig(**kwargs)


def test_unknown_config_key_raises():
    with pytest.raises(InputError, match="Unknown augmentation settings"):
        AugmentationConfig.from_dict({"rotation": 0.5})


def test_badly_shaped_samples_raise():
    augment = build_augmentation(ALL_ON, seed=0)
    sample = _slice()
    with pytest.raises(InputError, match=r"\(channel, j, i\)"):
        augment({"image": sample["image"][0]})
    with pytest.raises(InputError, match=r"\(1, j, i\) matching the image"):
        augment({"image": sample["image"], "label": sample["label"][:, :-1]})
    with pytest.raises(InputError, match="seed must be a non-negative integer"):
        build_augmentation(ALL_ON, seed=-1)


def test_translation_moves_image_and_label_together_within_range():
    config = AugmentationConfig(**{**AugmentationConfig.none().to_dict(), "translate_prob": 1.0,
                                   "translate_range_px": 6.0})
    image = np.zeros((1, 40, 40), np.float32)
    image[0, 18:22, 18:22] = 1.0
    sample = build_augmentation(config, seed=3)({"image": image, "label": (image > 0).astype(np.uint8)})
    label_center = np.argwhere(sample["label"][0]).mean(axis=0)
    image_center = np.argwhere(sample["image"][0] > 0.5).mean(axis=0)
    assert np.abs(label_center - 19.5).max() <= 6.0 + 1e-6 and np.abs(label_center - 19.5).max() > 0
    np.testing.assert_allclose(label_center, image_center, atol=0.5)
