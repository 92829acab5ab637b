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
    assert not (split[truth == 0]).any()  # nothing outside the heart
    everything = split_heart(image, truth > 0, spacing, HeartSplitConfig(rv_from_bright_only=False))
    assert np.array_equal(everything > 0, truth > 0)  # every heart voxel gets a code
    assert np.array_equal(split[split > 0], everything[split > 0])  # the default only leaves the dark rest out
    dices = {code: _dice(split == code, truth == code) for code in STRUCTURES}
    assert dices[LV_BLOOD_POOL] > 0.85 and dices[LV_MYOCARDIUM] > 0.9 and dices[RV_BLOOD_POOL] > 0.7, dices


def test_a_mask_larger_than_the_heart_still_finds_the_lv(phantom):
    image, truth, spacing = phantom
    loose = ndimage.binary_dilation(truth > 0, structure=np.ones((1, 3, 3)), iterations=3)
    split = split_heart(image, loose, spacing)
    assert _dice(split == LV_BLOOD_POOL, truth == LV_BLOOD_POOL) > 0.85


def test_nothing_outside_the_heart_is_labelled_even_where_the_mask_has_a_hole(phantom):
    image, truth, spacing = phantom
    holed = truth > 0
    k = 3
    centre = np.round(ndimage.center_of_mass(truth[k] == LV_BLOOD_POOL)).astype(int)
    holed[k, centre[0] - 1:centre[0] + 2, centre[1] - 1:centre[1] + 2] = False  # a hole inside the LV pool
    split = split_heart(image, holed, spacing, HeartSplitConfig(rv_from_bright_only=False))
    assert np.array_equal(split > 0, holed)
    filled = split_heart(image, truth > 0, spacing)
    assert (split[k] == LV_BLOOD_POOL).sum() == (filled[k] == LV_BLOOD_POOL).sum() - 9


def test_distances_are_in_millimetres_whatever_the_pixel_shape(phantom):
    # the same anatomy sampled at 1.5 x 3 mm and at 3 x 1.5 mm gives the same split, turned
    image, truth, _ = phantom
    tall_image, tall_heart = image[:, :, ::2], truth[:, :, ::2] > 0
    wide_image, wide_heart = np.swapaxes(tall_image, 1, 2), np.swapaxes(tall_heart, 1, 2)
    tall = split_heart(tall_image, tall_heart, (8.0, 1.5, 3.0))
    wide = split_heart(wide_image, wide_heart, (8.0, 3.0, 1.5))
    assert np.array_equal(np.swapaxes(wide, 1, 2), tall)


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
    (lambda im, h, sp: (im, h, None), "positive spacings"),
    (lambda im, h, sp: (im, h, ("a", 1.5, 1.5)), "positive spacings"),
    (lambda im, h, sp: (im[:0], h[:0], sp), "at least one slice"),
    (lambda im, h, sp: (im.astype(np.complex64), h, sp), "real numbers"),
    (lambda im, h, sp: (im.astype(object), h, sp), "real numbers"),
    (lambda im, h, sp: (im, np.where(h, np.nan, 0.0), sp), "heart mask holds NaN"),
])
def test_bad_input_is_refused_with_a_clear_message(phantom, change, message):
    image, truth, spacing = phantom
    with pytest.raises(InputError, match=message):
        split_heart(*change(image, truth > 0, spacing))


@pytest.mark.parametrize("field", ["myocardium_mm", "ring_mm", "min_pool_mm2", "track_mm", "solidity_weight"])
@pytest.mark.parametrize("value", [0, -1.0, float("nan"), True])
def test_bad_settings_are_refused(field, value):
    assert HeartSplitConfig(**{field: np.float32(2.0)})  # numpy numbers are numbers
    if field == "solidity_weight" and value == 0:
        assert HeartSplitConfig(solidity_weight=0).solidity_weight == 0  # 0 turns the shape term off
        return
    with pytest.raises(InputError, match=field):
        HeartSplitConfig(**{field: value})


def test_the_dark_rest_of_a_loose_mask_is_not_called_rv(phantom):
    image, truth, spacing = phantom
    loose = ndimage.binary_dilation(truth > 0, structure=np.ones((1, 3, 3)), iterations=3)
    rv_of_the_true_heart = np.count_nonzero(split_heart(image, truth > 0, spacing) == RV_BLOOD_POOL)
    rv_default = np.count_nonzero(split_heart(image, loose, spacing) == RV_BLOOD_POOL)
    rv_everything = np.count_nonzero(
        split_heart(image, loose, spacing, HeartSplitConfig(rv_from_bright_only=False)) == RV_BLOOD_POOL)
    # the margin does not swell the RV by default; counted as RV, it adds over half again
    assert abs(rv_default - rv_of_the_true_heart) < 0.1 * rv_of_the_true_heart
    assert rv_everything > 1.5 * rv_default
    with pytest.raises(InputError, match="rv_from_bright_only"):
        HeartSplitConfig(rv_from_bright_only="yes")


def test_a_config_of_another_type_is_refused(phantom):
    image, truth, spacing = phantom
    with pytest.raises(InputError, match="HeartSplitConfig"):
        split_heart(image, truth > 0, spacing, {"ring_mm": 4.0})


def test_without_the_shape_term_a_loose_mask_takes_the_rv_for_the_lv(phantom):
    # why the default weighs solidity: the dark margin of a mask wider than the heart closes around the RV as well
    image, truth, spacing = phantom
    loose = ndimage.binary_dilation(truth > 0, structure=np.ones((1, 3, 3)), iterations=3)
    split = split_heart(image, loose, spacing, HeartSplitConfig(solidity_weight=0))
    assert _dice(split == LV_BLOOD_POOL, truth == LV_BLOOD_POOL) < 0.5
