"""Hausdorff, HD95 and mean surface distance in mm against hand-computed values (anisotropic spacing)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.metrics import hausdorff_mm, hd95_mm, mean_surface_distance_mm

SPACING_KJI = (10.0, 2.0, 1.5)  # 10 mm between slices, 2 mm rows, 1.5 mm columns


def test_two_single_voxels_are_their_distance_in_mm_apart():
    pred = np.zeros((4, 6, 8), dtype=bool)
    true = np.zeros_like(pred)
    pred[0, 0, 0] = True
    true[2, 3, 4] = True
    expected = math.sqrt((2 * 10.0) ** 2 + (3 * 2.0) ** 2 + (4 * 1.5) ** 2)
    assert hausdorff_mm(pred, true, SPACING_KJI) == pytest.approx(expected)
    assert hd95_mm(pred, true, SPACING_KJI) == pytest.approx(expected)
    assert mean_surface_distance_mm(pred, true, SPACING_KJI) == pytest.approx(expected)


def _square_pair(shift_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """One-slice stack: a 4 x 4 square and the same square moved one pixel along j (1) or i (2)."""
    true = np.zeros((1, 10, 10), dtype=bool)
    true[0, 1:5, 1:5] = True
    pred = np.roll(true, 1, axis=shift_axis)
    return pred, true


# Mean surface distance by hand, per direction (both directions are mirror images), 12 edge pixels each:
# moved along i (1.5 mm): 6 edge pixels lie on the other edge, 6 are one column (1.5 mm) away -> 9 / 12 mm;
# moved along j (2 mm): 6 on the other edge, 4 one row (2 mm) away, 2 one column (1.5 mm) from a side -> 11 / 12 mm.
@pytest.mark.parametrize("shift_axis, pixel_mm, msd_mm", [(1, 2.0, 11 / 12), (2, 1.5, 9 / 12)])
def test_square_moved_one_pixel_is_one_pixel_spacing_off(shift_axis, pixel_mm, msd_mm):
    pred, true = _square_pair(shift_axis)
    hd = hausdorff_mm(pred, true, SPACING_KJI, per_slice=True)
    assert hd.shape == (1,)
    assert hd[0] == pytest.approx(pixel_mm)
    msd = mean_surface_distance_mm(pred, true, SPACING_KJI, per_slice=True)
    assert msd[0] == pytest.approx(msd_mm)


def test_hd95_ignores_a_single_outlier_that_sets_the_hausdorff_distance():
    true = np.zeros((1, 20, 8), dtype=bool)
    true[0, 0:6, 0:6] = True  # 36 voxels, all surface in a one-slice stack
    pred = true.copy()
    pred[0, 15, 5] = True  # 10 rows below the square's corner (5, 5)
    spacing = (10.0, 1.5, 1.5)
    assert hausdorff_mm(pred, true, spacing) == pytest.approx(10 * 1.5)
    assert hd95_mm(pred, true, spacing) == pytest.approx(0.0)
    assert hausdorff_mm(pred, true, spacing, percentile=100) > hd95_mm(pred, true, spacing)
    assert mean_surface_distance_mm(pred, true, spacing) == pytest.approx(15.0 / (37 + 36))


def test_both_masks_empty_give_nan_and_one_empty_gives_inf():
    empty = np.zeros((2, 5, 5), dtype=bool)
    full = empty.copy()
    full[0, 1:3, 1:3] = True
    for metric in (hausdorff_mm, hd95_mm, mean_surface_distance_mm):
        assert math.isnan(metric(empty, empty, SPACING_KJI))
        assert metric(full, empty, SPACING_KJI) == math.inf
        assert metric(empty, full, SPACING_KJI) == math.inf


def test_per_slice_ignores_slice_spacing_and_marks_empty_slices():
    true = np.zeros((3, 8, 8), dtype=bool)
    true[0, 2:5, 2:5] = True
    true[1, 2:5, 2:5] = True
    pred = true.copy()
    pred[1] = False
    pred[1, 3:6, 2:5] = True  # slice 1 moved one row
    thick = hausdorff_mm(pred, true, (10.0, 2.0, 1.5), per_slice=True)
    thin = hausdorff_mm(pred, true, (1.0, 2.0, 1.5), per_slice=True)
    np.testing.assert_array_equal(thick, thin)
    assert thick[0] == 0.0
    assert thick[1] == pytest.approx(2.0)
    assert math.isnan(thick[2])


def test_in_3d_a_missing_slice_costs_the_slice_spacing():
    true = np.zeros((3, 8, 8), dtype=bool)
    true[:, 2:5, 2:5] = True
    pred = true.copy()
    pred[2] = False  # apical slice missed
    assert hausdorff_mm(pred, true, SPACING_KJI) == pytest.approx(10.0)
    assert hausdorff_mm(pred, true, SPACING_KJI, per_slice=True)[2] == math.inf


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_monai_on_irregular_shapes_with_anisotropic_spacing():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(0)
    grid = np.indices((6, 24, 24))
    centre = np.array([2.5, 11.5, 11.5])[:, None, None, None]
    radius = np.sqrt((((grid - centre) * np.array([3.0, 1.0, 1.0])[:, None, None, None]) ** 2).sum(0))
    true = radius < 8 + rng.uniform(-1.5, 1.5, radius.shape)
    pred = np.roll(radius < 7 + rng.uniform(-1.5, 1.5, radius.shape), 1, axis=2)
    spacing = (8.0, 1.25, 1.5)

    def one_hot(mask):
        return torch.from_numpy(np.stack([~mask, mask])[None].astype(np.float32))

    hd = monai_metrics.compute_hausdorff_distance(one_hot(pred), one_hot(true), spacing=spacing).item()
    hd95 = monai_metrics.compute_hausdorff_distance(
        one_hot(pred), one_hot(true), percentile=95, spacing=spacing
    ).item()
    msd = monai_metrics.compute_average_surface_distance(
        one_hot(pred), one_hot(true), symmetric=True, spacing=spacing
    ).item()
    assert hausdorff_mm(pred, true, spacing) == pytest.approx(hd, rel=1e-5)
    assert hd95_mm(pred, true, spacing) == pytest.approx(hd95, rel=1e-5)
    assert mean_surface_distance_mm(pred, true, spacing) == pytest.approx(msd, rel=1e-5)


def test_spacing_must_have_one_positive_value_per_axis():
    mask = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(InputError, match="2 values.*3D"):
        hausdorff_mm(mask, mask, (1.5, 1.5))
    with pytest.raises(InputError, match="positive"):
        hausdorff_mm(mask, mask, (0.0, 1.5, 1.5))


@pytest.mark.parametrize("percentile", [0, 101, -5])
def test_percentile_outside_0_100_is_rejected(percentile):
    mask = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(InputError, match="percentile"):
        hausdorff_mm(mask, mask, SPACING_KJI, percentile=percentile)


def test_masks_of_different_shape_are_rejected():
    with pytest.raises(InputError, match="shape"):
        mean_surface_distance_mm(np.ones((2, 3, 3), bool), np.ones((2, 3, 4), bool), SPACING_KJI)


def test_per_slice_needs_a_3d_stack():
    mask = np.ones((3, 3), dtype=bool)
    with pytest.raises(InputError, match="per_slice"):
        hd95_mm(mask, mask, (1.5, 1.5), per_slice=True)
