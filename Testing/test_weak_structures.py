"""RV / myocardium / LV inside a whole-heart mask without pixel labels (cardiac_ai.weak.structures)."""
from __future__ import annotations

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.weak.structures import HeartSplitConfig, split_heart
from scipy import ndimage

STRUCTURES = (RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


@pytest.fixture(scope="module")
def phantom():
    case = make_cine_phantom()
    return case.image.array, case.labels.array, case.image.geometry.spacing_kji_mm


def test_the_true_heart_splits_into_its_three_structures(phantom):
    image, truth, spacing = phantom
    split = split_heart(image, truth > 0, spacing)
    assert split.dtype == np.uint8 and split.shape == truth.shape
    assert np.array_equal(split > 0, truth > 0)  # every heart voxel gets a code, nothing outside the heart
    dices = {code: _dice(split == code, truth == code) for code in STRUCTURES}
    assert dices[LV_BLOOD_POOL] > 0.85 and dices[LV_MYOCARDIUM] > 0.9 and dices[RV_BLOOD_POOL] > 0.7, dices


def test_a_mask_larger_than_the_heart_still_finds_the_lv(phantom):
    image, truth, spacing = phantom
    loose = ndimage.binary_dilation(truth > 0, structure=np.ones((1, 3, 3)), iterations=3)
    split = split_heart(image, loose, spacing)
    assert _dice(split == LV_BLOOD_POOL, truth == LV_BLOOD_POOL) > 0.85


def test_no_side_is_assumed_a_mirrored_stack_gives_the_mirrored_split(phantom):
    image, truth, spacing = phantom
    split = split_heart(image, truth > 0, spacing)
    mirrored = split_heart(image[:, :, ::-1], truth[:, :, ::-1] > 0, spacing)
    assert np.array_equal(mirrored, split[:, :, ::-1])


def test_inputs_are_left_as_they_were_and_the_result_is_deterministic(phantom):
    image, truth, spacing = phantom
    image_copy, heart = image.copy(), truth > 0
    heart_copy = heart.copy()
    first = split_heart(image, heart, spacing)
    assert np.array_equal(image, image_copy) and np.array_equal(heart, heart_copy)
    assert np.array_equal(first, split_heart(image, heart, spacing))


def test_an_empty_heart_gives_an_empty_split_and_a_slice_without_blood_is_myocardium(phantom):
    image, truth, spacing = phantom
    assert not split_heart(image, np.zeros(truth.shape, bool), spacing).any()
    dark_only = (truth == LV_MYOCARDIUM)
    dark_only[:, :, :] &= False
    dark_only[3] = truth[3] == LV_MYOCARDIUM  # one slice, muscle only: no bright piece to call a blood pool
    flat = image.copy()
    flat[3][dark_only[3]] = 0.25
    split = split_heart(flat, dark_only, spacing)
    assert set(np.unique(split[3][dark_only[3]]).tolist()) == {LV_MYOCARDIUM}


@pytest.mark.parametrize("change, message", [
    (lambda im, h, sp: (im[0], h[0], sp), "3D"),
    (lambda im, h, sp: (im, h[:, :-1], sp), "same shape"),
    (lambda im, h, sp: (np.where(h, np.nan, im), h, sp), "NaN"),
    (lambda im, h, sp: (im, h, (8.0, 0.0, 1.5)), "positive spacings"),
    (lambda im, h, sp: (im, h, (8.0, 1.5)), "positive spacings"),
])
def test_bad_input_is_refused_with_a_clear_message(phantom, change, message):
    image, truth, spacing = phantom
    with pytest.raises(InputError, match=message):
        split_heart(*change(image, truth > 0, spacing))


@pytest.mark.parametrize("field", ["myocardium_mm", "ring_mm", "min_pool_mm2", "track_mm", "solidity_weight"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), True])
def test_bad_settings_are_refused(field, value):
    if field == "solidity_weight" and value == 0:
        assert HeartSplitConfig(solidity_weight=0).solidity_weight == 0  # 0 turns the shape term off
        return
    with pytest.raises(InputError, match=field):
        HeartSplitConfig(**{field: value})


def test_without_the_shape_term_a_loose_mask_takes_the_rv_for_the_lv(phantom):
    # why the default weighs solidity: the dark margin of a mask wider than the heart closes around the RV as well
    image, truth, spacing = phantom
    loose = ndimage.binary_dilation(truth > 0, structure=np.ones((1, 3, 3)), iterations=3)
    split = split_heart(image, loose, spacing, HeartSplitConfig(solidity_weight=0))
    assert _dice(split == LV_BLOOD_POOL, truth == LV_BLOOD_POOL) < 0.5
