"""Tests of cardiac_ai.regions.postprocess on phantom label maps with known corruptions."""
from __future__ import annotations

import time

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.regions.postprocess import PostprocessResult, postprocess_cine_labels
from scipy import ndimage

SPACING = (8.0, 1.5, 1.5)  # the phantom's default (k, j, i) voxel size in mm


def _clean(**options: object) -> np.ndarray:
    """Phantom labels (8, 96, 96) uint8: k 0 and 7 empty, k 1-4 RV + ring + cavity, k 5 ring + cavity, k 6 cap."""
    return make_cine_phantom(**options).labels.array.copy()


def _run(labels: np.ndarray, **options: object) -> PostprocessResult:
    return postprocess_cine_labels(labels, spacing_kji_mm=SPACING, **options)


@pytest.mark.parametrize("group", ["NOR", "DCM", "HCM"])
@pytest.mark.parametrize("phase", ["ED", "ES"])
def test_clean_phantom_is_returned_unchanged(group: str, phase: str) -> None:
    clean = _clean(group=group, phase=phase, rotation_deg=30.0)
    result = _run(clean)
    np.testing.assert_array_equal(result.labels, clean)
    assert result.n_changed_voxels == 0
    assert result.notes and "no change" in result.notes[0]


def test_distant_rv_blob_is_removed() -> None:
    clean = _clean()
    corrupted = clean.copy()
    assert not corrupted[3, 2:10, 2:10].any()
    corrupted[3, 2:10, 2:10] = RV_BLOOD_POOL
    result = _run(corrupted)
    np.testing.assert_array_equal(result.labels, clean)
    assert result.n_changed_voxels == 64
    assert any("Right ventricle" in note for note in result.notes)


def test_rv_blob_larger_than_the_true_rv_but_detached_from_the_lv_loses() -> None:
    clean = _clean(shape=(128, 128))
    corrupted = clean.copy()
    assert not corrupted[1:6, 0:32, 0:32].any()
    corrupted[1:6, 0:32, 0:32] = RV_BLOOD_POOL  # 5120 voxels, more than the whole true RV
    assert (corrupted[1:6, 0:32, 0:32] == RV_BLOOD_POOL).sum() > (clean == RV_BLOOD_POOL).sum()
    np.testing.assert_array_equal(_run(corrupted).labels, clean)


def test_rv_separated_by_a_thin_gap_is_kept_and_removed_without_tolerance() -> None:
    clean = _clean()
    gapped = clean.copy()
    lv = (clean == LV_MYOCARDIUM) | (clean == LV_BLOOD_POOL)
    near_lv = ndimage.binary_dilation(lv, np.ones((3, 3, 3), dtype=bool), iterations=1)
    gapped[near_lv & (clean == RV_BLOOD_POOL)] = 0  # a one-voxel (1.5 mm, or 8 mm across slices) gap
    assert (gapped == RV_BLOOD_POOL).any()
    kept = _run(gapped)
    assert (kept.labels == RV_BLOOD_POOL).sum() == (gapped == RV_BLOOD_POOL).sum()
    # Without tolerance only touching counts (up to one voxel diagonal, 8.3 mm here): open a 7-pixel (10.5 mm) gap.
    wide = clean.copy()
    wide[ndimage.binary_dilation(lv, np.ones((1, 3, 3), dtype=bool), iterations=7) & (clean == RV_BLOOD_POOL)] = 0
    assert (wide == RV_BLOOD_POOL).any()
    removed = _run(wide, rv_max_gap_mm=0.0)
    assert not (removed.labels == RV_BLOOD_POOL).any()
    assert any("none touches the LV" in note for note in removed.notes)
    assert (removed.labels == LV_MYOCARDIUM).sum() == (clean == LV_MYOCARDIUM).sum()


def test_hole_in_the_lv_blood_pool_is_filled() -> None:
    clean = _clean()
    corrupted = clean.copy()
    assert (corrupted[3, 46:50, 50:54] == LV_BLOOD_POOL).all()
    corrupted[3, 46:50, 50:54] = 0
    corrupted[2, 46:48, 50:52] = LV_MYOCARDIUM  # a "papillary muscle" labelled myocardium inside the cavity
    result = _run(corrupted)
    np.testing.assert_array_equal(result.labels, clean)
    assert any("holes in the LV blood pool" in note for note in result.notes)


def test_unlabelled_cavity_inside_the_myocardial_ring_becomes_lv_blood_pool() -> None:
    clean = _clean()
    corrupted = clean.copy()
    half = np.zeros_like(clean, dtype=bool)
    half[3, :48, :] = True
    corrupted[half & (clean == LV_BLOOD_POOL)] = 0
    result = _run(corrupted)
    np.testing.assert_array_equal(result.labels, clean)
    assert any("inside the myocardium" in note for note in result.notes)


def test_hole_in_the_rv_blood_pool_is_filled() -> None:
    clean = _clean()
    rv = np.argwhere(ndimage.binary_erosion(clean[2] == RV_BLOOD_POOL, np.ones((5, 5), dtype=bool)))
    assert rv.size
    corrupted = clean.copy()
    j, i = rv[len(rv) // 2]
    corrupted[2, j, i] = 0
    np.testing.assert_array_equal(_run(corrupted).labels, clean)


def test_myocardium_island_far_from_the_lv_is_removed() -> None:
    clean = _clean()
    corrupted = clean.copy()
    assert not corrupted[4, 80:88, 80:88].any()
    corrupted[4, 80:88, 80:88] = LV_MYOCARDIUM
    result = _run(corrupted)
    np.testing.assert_array_equal(result.labels, clean)
    assert any("LV: removed 1 component" in note for note in result.notes)


def test_speck_of_lv_blood_pool_outside_the_ring_is_removed() -> None:
    clean = _clean()
    outside = ndimage.binary_dilation(clean[3] == LV_MYOCARDIUM) & (clean[3] == 0)
    outside &= ~ndimage.binary_dilation(clean[3] == RV_BLOOD_POOL, iterations=3)
    j, i = np.argwhere(outside)[0]
    corrupted = clean.copy()
    corrupted[3, j, i] = LV_BLOOD_POOL
    result = _run(corrupted)
    np.testing.assert_array_equal(result.labels, clean)
    assert any("smaller than 10 mm²" in note for note in result.notes)


def test_apical_cap_survives_specks_of_cavity_beside_it() -> None:
    clean = _clean()
    cap = clean[6] == LV_MYOCARDIUM
    # Specks over the ring of slice 5 (so they belong to the 3D LV) but away from the cap in slice 6.
    candidates = (clean[5] == LV_MYOCARDIUM) & ~ndimage.binary_dilation(cap, iterations=3)
    j, i = np.argwhere(candidates)[0]
    corrupted = clean.copy()
    corrupted[6, j, i] = LV_BLOOD_POOL
    neighbour = (j, i + 1) if candidates[j, i + 1] else (j + 1, i)
    corrupted[6, neighbour[0], neighbour[1]] = LV_MYOCARDIUM  # a myocardium speck touching the cavity speck
    result = _run(corrupted)
    assert (result.labels[6][cap] == LV_MYOCARDIUM).all()
    np.testing.assert_array_equal(result.labels[:6], clean[:6])


def test_fleck_under_a_network_pixel_beyond_the_apex_is_removed_but_a_small_cap_stays() -> None:
    fine = (8.0, 0.7, 0.7)  # a fine cine: 4 pixels are 1.96 mm², less than one 1.5 mm pixel of the networks
    clean = _clean()
    np.testing.assert_array_equal(postprocess_cine_labels(clean, spacing_kji_mm=fine).labels, clean)
    cap = np.argwhere(clean[6] == LV_MYOCARDIUM)
    j, i = cap[len(cap) // 2]
    flecked = clean.copy()
    flecked[7, j:j + 2, i:i + 2] = LV_MYOCARDIUM  # 3D-connected to the cap above; its slice's only piece
    result = postprocess_cine_labels(flecked, spacing_kji_mm=fine)
    np.testing.assert_array_equal(result.labels, clean)
    assert any("removed 1 island(s) (4 voxels)" in note for note in result.notes)
    kept = postprocess_cine_labels(flecked, spacing_kji_mm=fine, min_lone_piece_mm2=0).labels
    np.testing.assert_array_equal(kept, flecked)
    np.testing.assert_array_equal(_run(flecked).labels, flecked)  # at 1.5 mm the same 4 pixels are a small cap
    flecks_only = np.zeros((3, 20, 20), dtype=np.uint8)
    flecks_only[0, 8, 8] = flecks_only[1, 8, 8] = flecks_only[1, 12, 12] = LV_MYOCARDIUM
    left = postprocess_cine_labels(flecks_only, spacing_kji_mm=fine).labels  # no larger piece: never all removed
    assert left[0, 8, 8] == LV_MYOCARDIUM and (left[1] == LV_MYOCARDIUM).sum() == 1


def _heavily_corrupted(seed: int, shape: tuple[int, int] = (96, 96), n_slices: int = 8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = _clean(shape=shape, n_slices=n_slices)
    n = labels.size // 50
    flat = labels.reshape(-1)
    flat[rng.integers(0, labels.size, n)] = rng.integers(0, 4, n).astype(np.uint8)
    k, j, i = labels.shape
    labels[k // 2, 2:10, 2:10] = RV_BLOOD_POOL
    labels[k // 2 + 1, j - 10: j - 2, i - 10: i - 2] = LV_MYOCARDIUM
    return labels


@pytest.mark.parametrize("seed", range(3))
def test_postprocessing_twice_equals_once(seed: int) -> None:
    corrupted = _heavily_corrupted(seed)
    once = _run(corrupted)
    assert once.n_changed_voxels > 0
    twice = _run(once.labels)
    np.testing.assert_array_equal(twice.labels, once.labels)
    assert twice.n_changed_voxels == 0


@pytest.mark.parametrize("seed", range(3))
def test_heavily_corrupted_map_keeps_every_structure_and_gets_closer_to_truth(seed: int) -> None:
    clean = _clean()
    corrupted = _heavily_corrupted(seed)
    result = _run(corrupted)
    for code in (RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL):
        assert (result.labels == code).any()
    assert np.count_nonzero(result.labels != clean) < np.count_nonzero(corrupted != clean) / 2


def test_empty_input_stays_empty_with_a_note() -> None:
    empty = np.zeros((4, 16, 16), dtype=np.uint8)
    result = _run(empty)
    assert result.labels.shape == empty.shape and result.labels.dtype == np.uint8
    assert not result.labels.any()
    assert result.labels is not empty
    assert result.notes == ["empty label map: nothing to post-process."]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64])
def test_shape_and_dtype_are_preserved_and_input_is_not_modified(dtype: type) -> None:
    corrupted = _heavily_corrupted(7).astype(dtype)
    before = corrupted.copy()
    result = _run(corrupted)
    assert result.labels.shape == corrupted.shape
    assert result.labels.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(corrupted, before)


def test_an_rv_or_lv_touching_nothing_is_removed_but_a_lone_myocardium_stays() -> None:
    rv_only = np.zeros((3, 20, 20), dtype=np.uint8)
    rv_only[1, 5:10, 5:10] = RV_BLOOD_POOL
    result = _run(rv_only)
    assert not result.labels.any()
    assert any("no LV in the map" in note for note in result.notes)
    pool_only = rv_only.copy()
    pool_only[1, 12:16, 12:16] = LV_BLOOD_POOL  # a cavity with no wall anywhere: neither it nor the RV is a heart
    result = _run(pool_only)
    assert not result.labels.any() and any("no myocardium" in note for note in result.notes)
    cap_only = np.zeros((3, 20, 20), dtype=np.uint8)
    cap_only[1, 8:10, 8:10] = LV_MYOCARDIUM  # a tiny apical cap, below the speck area, is its slice's largest
    np.testing.assert_array_equal(_run(cap_only).labels, cap_only)


def test_large_map_is_fast() -> None:
    corrupted = _heavily_corrupted(3, shape=(256, 256), n_slices=10)
    corrupted[:, 0, :] = RV_BLOOD_POOL  # spread labels to the image edge: no bounding-box shortcut
    corrupted[:, -1, -1] = LV_MYOCARDIUM
    start = time.perf_counter()
    postprocess_cine_labels(corrupted, spacing_kji_mm=(10.0, 1.25, 1.25))
    assert time.perf_counter() - start < 2.0  # about 0.1-0.3 s on an idle core


@pytest.mark.parametrize(
    ("labels", "options", "match"),
    [
        (np.zeros((16, 16), dtype=np.uint8), {}, r"\(k, j, i\).*2D"),
        (np.zeros((2, 16, 16), dtype=np.float32), {}, "integer dtype"),
        (np.full((2, 4, 4), 4, dtype=np.uint8), {}, r"codes \[4\]"),
        (np.zeros((2, 4, 4), dtype=np.uint8), {"spacing_kji_mm": (1.0, 1.0)}, "spacing_kji_mm"),
        (np.zeros((2, 4, 4), dtype=np.uint8), {"spacing_kji_mm": (1.0, 0.0, 1.0)}, "spacing_kji_mm"),
        (np.zeros((2, 4, 4), dtype=np.uint8), {"min_component_mm2": -1.0}, "min_component_mm2"),
        (np.zeros((2, 4, 4), dtype=np.uint8), {"rv_max_gap_mm": float("nan")}, "rv_max_gap_mm"),
    ],
)
def test_invalid_inputs_raise(labels: np.ndarray, options: dict, match: str) -> None:
    options = {"spacing_kji_mm": SPACING, **options}
    with pytest.raises(InputError, match=match):
        postprocess_cine_labels(labels, **options)
