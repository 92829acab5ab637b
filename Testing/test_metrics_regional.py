"""Regional (base / middle / apex) analysis: slice regions, regional Dice, Dice profile, t-tests, Table 1."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.metrics import (
    CardiacRegion,
    assign_slice_regions,
    compare_regions,
    dice_per_slice,
    dice_profile,
    format_region_comparison,
    paired_t_test,
    regional_dice,
    welch_t_test,
)

N, B, M, A = (int(r) for r in CardiacRegion)


def _stack(n_slices: int, labelled: range, code: int = 3) -> np.ndarray:
    labels = np.zeros((n_slices, 8, 8), dtype=np.uint8)
    labels[list(labelled), 2:6, 2:6] = code  # 16 voxels per labelled slice
    return labels


def test_ten_labelled_slices_among_fourteen_split_2_6_2():
    regions = assign_slice_regions(_stack(14, range(2, 12)))
    assert regions.tolist() == [N, N, B, B, M, M, M, M, M, M, A, A, N, N]
    assert regions.dtype == np.int8


def test_base_first_false_puts_the_base_at_high_k():
    regions = assign_slice_regions(_stack(14, range(2, 12)), base_first=False)
    assert regions.tolist() == [N, N, A, A, M, M, M, M, M, M, B, B, N, N]


@pytest.mark.parametrize(
    "n_labelled, counts",
    [(1, (0, 1, 0)), (2, (0, 2, 0)), (3, (1, 1, 1)), (4, (1, 2, 1)), (5, (1, 3, 1)), (6, (1, 4, 1)),
     (8, (2, 4, 2)), (9, (2, 5, 2)), (13, (3, 7, 3)), (20, (4, 12, 4))],
)
def test_short_and_long_stacks_get_round_20_percent_at_each_end(n_labelled, counts):
    regions = assign_slice_regions(_stack(n_labelled, range(n_labelled)))
    assert tuple(int(np.count_nonzero(regions == r)) for r in (B, M, A)) == counts
    # base slices come first, apex slices last
    assert regions.tolist() == sorted(regions.tolist(), key=lambda r: (B, M, A).index(r))


def test_every_region_is_present_from_five_labelled_slices_up():
    for n_labelled in range(5, 31):
        regions = assign_slice_regions(_stack(n_labelled, range(n_labelled)))
        assert {B, M, A} <= set(regions.tolist()), n_labelled


def test_unlabelled_gap_slice_is_non_cardiac_and_not_counted():
    labels = _stack(12, range(1, 11))
    labels[5] = 0
    regions = assign_slice_regions(labels)
    assert regions[5] == N
    assert regions.tolist() == [N, B, B, M, M, N, M, M, M, A, A, N]  # 9 labelled slices: 2 / 5 / 2


def test_stack_without_labels_is_all_non_cardiac():
    assert (assign_slice_regions(np.zeros((4, 3, 3), np.uint8)) == N).all()


def test_regions_need_a_3d_stack():
    with pytest.raises(InputError, match=r"\(k, j, i\)"):
        assign_slice_regions(np.zeros((3, 3), np.uint8))


def _pred_with_regional_errors(true: np.ndarray) -> np.ndarray:
    """Base slices half segmented (Dice 2/3), middle exact (1), apex missed (0)."""
    regions = assign_slice_regions(true)
    pred = true.copy()
    for k in np.flatnonzero(regions == B):
        pred[k, 2:4, 2:6] = 0  # 8 of 16 voxels kept: Dice 2 * 8 / 24
    pred[regions == A] = 0
    return pred


def test_regional_dice_reports_mean_sd_and_n_per_region():
    true = _stack(14, range(2, 12))
    rows = regional_dice(_pred_with_regional_errors(true), true, labels=(1, 3))
    by_key = {(row["region"], row["label"]): row for row in rows}
    assert [row["region"] for row in rows] == ["base", "base", "middle", "middle", "apex", "apex"]
    assert by_key[("base", 3)]["mean"] == pytest.approx(2 / 3)
    assert by_key[("base", 3)]["sd"] == pytest.approx(0.0)
    assert by_key[("base", 3)]["n"] == 2
    assert by_key[("middle", 3)]["mean"] == 1.0 and by_key[("middle", 3)]["n"] == 6
    assert by_key[("apex", 3)]["mean"] == 0.0 and by_key[("apex", 3)]["n"] == 2
    assert by_key[("base", 3)]["structure"] == "lv_blood_pool"
    rv = by_key[("middle", 1)]  # absent from both maps: no defined Dice
    assert rv["n"] == 0 and math.isnan(rv["mean"]) and math.isnan(rv["sd"])


def test_regional_dice_rejects_maps_of_different_shape():
    with pytest.raises(InputError, match="shape"):
        regional_dice(_stack(10, range(10)), _stack(11, range(10)))


def test_dice_profile_has_101_points_from_base_to_apex_dice():
    true = _stack(14, range(2, 12))
    pred = _pred_with_regional_errors(true)
    profile = dice_profile(pred, true, 3)
    assert profile.shape == (101,)
    assert profile[0] == pytest.approx(2 / 3)  # basal-most labelled slice
    assert profile[-1] == 0.0  # apical-most labelled slice
    assert profile[50] == 1.0
    assert np.all(np.isfinite(profile))


def test_dice_profile_interpolates_linearly_between_slices():
    true = _stack(3, range(3))
    pred = true.copy()
    pred[0, 2:4, 2:6] = 0  # Dice 2/3 at the base, 1 in the middle, 1 at the apex
    profile = dice_profile(pred, true, 3, n_points=5)  # positions 0, .25, .5, .75, 1
    np.testing.assert_allclose(profile, [2 / 3, (2 / 3 + 1) / 2, 1.0, 1.0, 1.0])


def test_dice_profile_is_nan_where_the_structure_is_absent_from_both_ends():
    true = _stack(5, range(5))
    true[4] = 0
    true[4, 0, 0] = 2  # apical slice labelled, but without LV blood pool
    profile = dice_profile(true, true, 3, n_points=5)
    assert np.all(profile[:4] == 1.0)
    assert math.isnan(profile[4])


def test_dice_profile_needs_two_points():
    true = _stack(3, range(3))
    with pytest.raises(InputError, match="n_points"):
        dice_profile(true, true, 3, n_points=1)


def test_welch_t_test_matches_scipy_after_dropping_nan():
    a = [0.9, 0.8, np.nan, 0.85, 0.7]
    b = [0.95, 0.97, 0.93, 0.96]
    t, p = welch_t_test(a, b)
    expected = stats.ttest_ind([0.9, 0.8, 0.85, 0.7], b, equal_var=False)
    assert t == pytest.approx(expected.statistic)
    assert p == pytest.approx(expected.pvalue)
    assert t < 0


def test_welch_t_test_needs_two_values_per_sample():
    with pytest.raises(InputError, match="at least 2 non-NaN values.*b has 1"):
        welch_t_test([0.1, 0.2, 0.3], [0.5, np.nan])


def test_paired_t_test_matches_scipy_after_dropping_incomplete_pairs():
    a = [0.80, 0.82, np.nan, 0.90, 0.75]
    b = [0.85, 0.86, 0.88, 0.91, 0.79]
    t, p = paired_t_test(a, b)
    expected = stats.ttest_rel([0.80, 0.82, 0.90, 0.75], [0.85, 0.86, 0.91, 0.79])
    assert (t, p) == pytest.approx((expected.statistic, expected.pvalue))


def test_paired_t_test_rejects_unequal_lengths_and_too_few_pairs():
    with pytest.raises(InputError, match="equal length"):
        paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0])
    with pytest.raises(InputError, match="at least 2 pairs"):
        paired_t_test([1.0, np.nan, 3.0], [1.0, 2.0, np.nan])


def _case(rng: np.random.Generator, n_labelled: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A stack whose base and apex predictions lose more voxels than the middle ones."""
    true = _stack(n_labelled + 2, range(1, n_labelled + 1))
    regions = assign_slice_regions(true)
    pred = true.copy()
    for k in np.flatnonzero(regions != N):
        lost = rng.integers(0, 3) if regions[k] == M else rng.integers(6, 10)
        rows, cols = np.nonzero(pred[k] == 3)
        pred[k, rows[:lost], cols[:lost]] = 0
    return pred, true


def test_compare_regions_pools_slices_over_cases_and_tests_against_middle():
    rng = np.random.default_rng(1)
    cases = [_case(rng) for _ in range(4)]
    rows = compare_regions(cases, labels=(3,))
    assert len(rows) == 1
    row = rows[0]
    pooled = {B: [], M: [], A: []}
    for pred, true in cases:
        per_slice = dice_per_slice(pred, true, (3,))[:, 0]
        regions = assign_slice_regions(true)
        for region in pooled:
            pooled[region].extend(per_slice[regions == region])
    assert row["base_n"] == 8 and row["middle_n"] == 24 and row["apex_n"] == 8
    assert row["base_mean"] == pytest.approx(np.mean(pooled[B]))
    assert row["middle_sd"] == pytest.approx(np.std(pooled[M], ddof=1))
    assert row["p_base_vs_middle"] == pytest.approx(stats.ttest_ind(pooled[B], pooled[M], equal_var=False).pvalue)
    assert row["p_apex_vs_middle"] < 0.01
    assert row["base_mean"] < row["middle_mean"]


def test_region_comparison_table_marks_significant_regions_like_table_1():
    rng = np.random.default_rng(1)
    text = format_region_comparison(compare_regions([_case(rng) for _ in range(4)], labels=(3,)))
    lines = text.splitlines()
    assert lines[0] == "| Label | Base | Middle | Apex |"
    cells = [cell.strip() for cell in lines[2].strip("|").split("|")]
    assert cells[0] == "lv_blood_pool"
    assert cells[1].split(" ")[0].endswith("*") and cells[3].split(" ")[0].endswith("*")
    assert "*" not in cells[2]
    assert cells[2].endswith(")") and "(" in cells[2]


def test_compare_regions_accepts_volumes_and_checks_their_geometry():
    rng = np.random.default_rng(2)
    pred, true = _case(rng)
    same = compare_regions([(Volume(pred), Volume(true))], labels=(3,))
    assert same == compare_regions([(pred, true)], labels=(3,))
    moved = Geometry(origin_lps_mm=(5.0, 0.0, 0.0))
    with pytest.raises(InputError, match="geometries differ"):
        compare_regions([(Volume(pred, moved), Volume(true))])


def test_compare_regions_gives_nan_p_when_a_region_has_too_few_slices():
    true = _stack(3, range(3))  # one base, one middle, one apex slice
    rows = compare_regions([(true, true)], labels=(3,))
    assert math.isnan(rows[0]["p_base_vs_middle"])
    assert rows[0]["base_n"] == 1


def test_compare_regions_needs_at_least_one_case():
    with pytest.raises(InputError, match="no cases"):
        compare_regions([])


@pytest.mark.shared_data
def test_acdc_basal_slices_have_larger_lv_sections_than_apical_slices(acdc_root):
    from cardiac_ai.io import read_volume

    for patient in ("patient001", "patient002", "patient061", "patient062"):
        labels = read_volume(acdc_root / patient / f"{patient}_frame01_gt.nii.gz").array
        regions = assign_slice_regions(labels)
        assert {B, M, A} <= set(regions.tolist()), patient
        lv_area = np.count_nonzero(labels >= 2, axis=(1, 2))
        assert lv_area[regions == B].mean() > lv_area[regions == A].mean(), patient


def test_welch_t_test_of_identical_samples_is_nan_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # scipy's "Precision loss" warning reached the evaluate command's stderr
        result = welch_t_test([0.9, 0.9, 0.9], [0.9, 0.9])
    assert np.isnan(result.t) and np.isnan(result.p)
