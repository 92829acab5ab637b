"""Dice and Jaccard against values computed by hand, and the empty-mask rule."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.metrics import dice, dice_per_label, dice_per_slice, jaccard, jaccard_per_label, jaccard_per_slice


def _four_and_six_sharing_three() -> tuple[np.ndarray, np.ndarray]:
    pred = np.zeros((4, 5), dtype=bool)
    pred[0, 0:4] = True  # 4 pixels
    true = np.zeros((4, 5), dtype=bool)
    true[0, 1:4] = True  # 3 of them shared
    true[1, 1:4] = True  # 6 pixels in all
    return pred, true


def test_dice_of_4_and_6_pixels_sharing_3_is_0_6():
    pred, true = _four_and_six_sharing_three()
    assert dice(pred, true) == pytest.approx(2 * 3 / (4 + 6))


def test_jaccard_of_4_and_6_pixels_sharing_3_is_3_over_7():
    pred, true = _four_and_six_sharing_three()
    assert jaccard(pred, true) == pytest.approx(3 / 7)
    d = dice(pred, true)
    assert jaccard(pred, true) == pytest.approx(d / (2 - d))


def test_dice_is_symmetric_and_one_for_identical_masks():
    pred, true = _four_and_six_sharing_three()
    assert dice(pred, true) == dice(true, pred)
    assert dice(true, true) == 1.0
    assert jaccard(true, true) == 1.0


def test_both_masks_empty_gives_nan_or_the_chosen_empty_value():
    empty = np.zeros((3, 3), dtype=bool)
    assert math.isnan(dice(empty, empty))
    assert math.isnan(jaccard(empty, empty))
    assert dice(empty, empty, empty_value=1.0) == 1.0


def test_one_mask_empty_gives_zero():
    pred, _ = _four_and_six_sharing_three()
    empty = np.zeros_like(pred)
    assert dice(pred, empty) == 0.0
    assert dice(empty, pred) == 0.0
    assert jaccard(empty, pred) == 0.0


def test_integer_zero_one_masks_are_accepted():
    pred, true = _four_and_six_sharing_three()
    assert dice(pred.astype(np.uint8), true.astype(np.float32)) == pytest.approx(0.6)


def test_label_map_passed_as_mask_is_rejected():
    labels = np.array([[0, 1], [2, 3]])
    with pytest.raises(InputError, match="not a binary mask"):
        dice(labels, labels)


def test_masks_of_different_shape_are_rejected():
    with pytest.raises(InputError, match=r"shape \(3, 3\).*shape \(3, 4\)"):
        dice(np.zeros((3, 3), bool), np.zeros((3, 4), bool))


def test_non_array_input_is_rejected():
    with pytest.raises(InputError, match="numpy array"):
        dice([[True]], np.ones((1, 1), bool))


def _label_maps() -> tuple[np.ndarray, np.ndarray]:
    """Two slices; LV (3) 4 vs 6 voxels sharing 3 in slice 0; myocardium (2) only in the prediction, slice 1."""
    true = np.zeros((2, 4, 5), dtype=np.uint8)
    pred = np.zeros_like(true)
    true[0, 0, 1:4] = 3
    true[0, 1, 1:4] = 3
    pred[0, 0, 0:4] = 3
    pred[1, 3, 0:2] = 2
    return pred, true


def test_dice_per_label_matches_hand_values_and_marks_absent_label_nan():
    pred, true = _label_maps()
    result = dice_per_label(pred, true, labels=(1, 2, 3))
    assert list(result) == [1, 2, 3]
    assert math.isnan(result[1])  # absent from both
    assert result[2] == 0.0  # only predicted
    assert result[3] == pytest.approx(0.6)
    assert jaccard_per_label(pred, true, labels=(3,))[3] == pytest.approx(3 / 7)


def test_dice_per_slice_has_one_row_per_slice_and_one_column_per_label():
    pred, true = _label_maps()
    table = dice_per_slice(pred, true, labels=(2, 3))
    assert table.shape == (2, 2)
    assert math.isnan(table[0, 0])  # myocardium absent from both in slice 0
    assert table[0, 1] == pytest.approx(0.6)
    assert table[1, 0] == 0.0  # false-positive myocardium in slice 1
    assert math.isnan(table[1, 1])  # no LV in slice 1 in either map
    jac = jaccard_per_slice(pred, true, labels=(2, 3))
    assert jac[0, 1] == pytest.approx(3 / 7)


def test_dice_per_slice_needs_a_3d_stack():
    pred, true = _label_maps()
    with pytest.raises(InputError, match="add a leading axis"):
        dice_per_slice(pred[0], true[0])


@pytest.mark.parametrize("labels, message", [((), "empty"), ((0, 1), "background"), ((3, 3), "repeated")])
def test_invalid_label_lists_are_rejected(labels, message):
    pred, true = _label_maps()
    with pytest.raises(InputError, match=message):
        dice_per_label(pred, true, labels=labels)


def test_non_integer_label_values_are_rejected():
    pred, true = _label_maps()
    with pytest.raises(InputError, match="whole-number"):
        dice_per_label(pred.astype(float) + 0.5, true)


def test_auroc_and_weighted_f1_match_hand_computed_values():
    from cardiac_ai.metrics import auroc, weighted_f1

    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert np.isnan(auroc([0.1, 0.2], [1, 1]))
    # class 0: P=R=1 (2 samples); class 1: tp 1, fp 0, fn 1 -> F1 2/3 (2 samples); class 2: tp 1, fp 1 -> 2/3 (1)
    assert weighted_f1([0, 0, 1, 1, 2], [0, 0, 1, 2, 2], 3) == pytest.approx((2 * 1 + 2 * 2 / 3 + 1 * 2 / 3) / 5)
