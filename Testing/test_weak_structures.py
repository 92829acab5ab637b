"""RV / myocardium / LV inside a whole-heart mask without pixel labels (cardiac_ai.weak.structures)."""
from __future__ import annotations

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.weak.structures import LV_WALL_MM, HeartSplitConfig, complete_lv_wall, split_heart
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


# -- complete_lv_wall ------------------------------------------------------------------------------------------------
def test_a_heart_without_its_myocardium_gets_the_wall_back(phantom):
    # the weak U-Net's failure, exaggerated: the blood pools without the muscle between and around them
    image, truth, spacing = phantom
    pools = (truth > 0) & (truth != LV_MYOCARDIUM)
    completed = complete_lv_wall(image, pools, spacing)
    assert completed.dtype == bool and completed.shape == truth.shape
    assert not (pools & ~completed).any()  # only ever adds
    myocardium = truth == LV_MYOCARDIUM
    assert np.count_nonzero(completed & myocardium) > 0.85 * np.count_nonzero(myocardium)
    assert _dice(completed, truth > 0) > _dice(pools, truth > 0) + 0.15
    # what it adds lies within the wall's width of the LV pool, in plane
    pool = split_heart(image, pools, spacing) == LV_BLOOD_POOL
    for k in range(truth.shape[0]):
        added = completed[k] & ~pools[k]
        if added.any():
            distance = ndimage.distance_transform_edt(~pool[k], sampling=spacing[1:])
            assert distance[added].max() <= LV_WALL_MM


def test_a_narrower_wall_adds_less_and_zero_adds_nothing(phantom):
    image, truth, spacing = phantom
    pools = (truth > 0) & (truth != LV_MYOCARDIUM)
    narrow, wide = (complete_lv_wall(image, pools, spacing, wall_mm) for wall_mm in (4.0, 11.0))
    assert np.count_nonzero(pools) < np.count_nonzero(narrow) < np.count_nonzero(wide)
    assert not (narrow & ~wide).any()
    unchanged = complete_lv_wall(image, pools, spacing, 0)
    assert np.array_equal(unchanged, pools) and unchanged is not pools


def test_the_wall_is_measured_in_millimetres_whatever_the_pixel_shape(phantom):
    image, truth, _ = phantom
    pools = (truth > 0) & (truth != LV_MYOCARDIUM)
    tall = complete_lv_wall(image[:, :, ::2], pools[:, :, ::2], (8.0, 1.5, 3.0))
    wide = complete_lv_wall(np.swapaxes(image[:, :, ::2], 1, 2), np.swapaxes(pools[:, :, ::2], 1, 2),
                            (8.0, 3.0, 1.5))
    assert np.array_equal(np.swapaxes(wide, 1, 2), tall)
    # and in millimetres of the right axis: with j and i swapped the band would reach 21 mm along i
    pool = split_heart(image[:, :, ::2], pools[:, :, ::2], (8.0, 1.5, 3.0)) == LV_BLOOD_POOL
    reach = [ndimage.distance_transform_edt(~pool[k], sampling=(1.5, 3.0))[tall[k] & ~pools[k, :, ::2]].max()
             for k in range(tall.shape[0]) if (tall[k] & ~pools[k, :, ::2]).any()]
    assert reach and max(reach) <= LV_WALL_MM


def test_slices_without_an_lv_pool_and_an_empty_heart_are_left_as_they_are(phantom):
    image, truth, spacing = phantom
    assert not complete_lv_wall(image, np.zeros(truth.shape, bool), spacing).any()
    heart = truth > 0
    heart[3] = truth[3] == LV_MYOCARDIUM  # muscle only: no bright piece large enough for a pool
    flat = image.copy()
    flat[3][heart[3]] = 0.25
    completed = complete_lv_wall(flat, heart, spacing)
    assert np.array_equal(completed[3], heart[3])
    assert np.count_nonzero(completed) > np.count_nonzero(heart)  # the other slices do get a wall


def test_complete_lv_wall_leaves_its_inputs_alone_and_is_deterministic(phantom):
    image, truth, spacing = phantom
    pools = (truth > 0) & (truth != LV_MYOCARDIUM)
    image_copy, pools_copy = image.copy(), pools.copy()
    first = complete_lv_wall(image, pools, spacing)
    assert np.array_equal(image, image_copy) and np.array_equal(pools, pools_copy)
    assert np.array_equal(first, complete_lv_wall(image, pools, spacing))


@pytest.mark.parametrize("wall_mm", [-1.0, float("nan"), float("inf"), True, "11", None, 10 ** 400, 1e6, 30.5])
def test_a_bad_wall_width_is_refused(phantom, wall_mm):  # 1e6 mm would make the whole field of view heart
    image, truth, spacing = phantom
    with pytest.raises(InputError, match="LV wall width"):
        complete_lv_wall(image, truth > 0, spacing, wall_mm)


@pytest.mark.parametrize("change, message", [
    (lambda im, h, sp: (im[0], h[0], sp), "complete_lv_wall needs a 3D"),
    (lambda im, h, sp: (np.where(h, np.inf, im), h, sp), "complete_lv_wall: the image holds NaN or Inf"),
    (lambda im, h, sp: (im, h, (8.0, -1.5, 1.5)), "complete_lv_wall needs three positive spacings"),
])
def test_complete_lv_wall_refuses_bad_input_in_its_own_name(phantom, change, message):
    image, truth, spacing = phantom
    with pytest.raises(InputError, match=message):
        complete_lv_wall(*change(image, truth > 0, spacing))


@pytest.mark.parametrize("pixel_mm", [(0.65, 0.65), (0.5, 0.8), (1.5, 1.5)])
def test_the_split_on_the_hearts_box_equals_the_split_of_the_whole_slice(pixel_mm):
    # the box must hold the ring scored around each bright piece: on fine pixels 2 pixels of margin cut it off
    from cardiac_ai.weak import structures

    config = structures.HeartSplitConfig()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    for trial in range(60):
        heart = (yy - 48) ** 2 / rng.uniform(15, 30) ** 2 + (xx - 48) ** 2 / rng.uniform(15, 30) ** 2 <= 1
        image = rng.normal(100, 5, (96, 96))
        for _ in range(rng.integers(2, 4)):  # bright pieces, some at the heart's edge
            cy, cx = rng.uniform(25, 71, 2)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= rng.uniform(4, 12) ** 2] += 200
        track = None if trial % 2 else np.array([48.0, 48.0]) + rng.normal(0, 5, 2)
        boxed, boxed_centre = structures._split_slice(image, heart, pixel_mm, config, track)
        whole, whole_centre = structures._split_in_box(image, heart, pixel_mm, config, track)
        np.testing.assert_array_equal(boxed, whole)
        assert (boxed_centre is None) == (whole_centre is None)
        if boxed_centre is not None:
            np.testing.assert_allclose(boxed_centre, whole_centre)
