"""Tests of cardiac_ai.regions.sequence: grammar-constrained decoding of slice regions and slice positions."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.metrics.regional import CardiacRegion
from cardiac_ai.regions.sequence import DecodedRegions, decode_monotonic_regions, region_positions

NC, B, M, A = (int(r) for r in CardiacRegion)


def _confident(sequence: list[int], confidence: float = 0.7) -> np.ndarray:
    """(k, 4) probabilities whose argmax is ``sequence``."""
    p = np.full((len(sequence), 4), (1.0 - confidence) / 3.0)
    p[np.arange(len(sequence)), sequence] = confidence
    return p


def _is_valid(sequence: tuple[int, ...]) -> bool:
    """NON_CARDIAC* BASE* MIDDLE* APEX* NON_CARDIAC*, cardiac slices contiguous."""
    cardiac = [index for index, code in enumerate(sequence) if code != NC]
    if not cardiac:
        return True
    core = sequence[cardiac[0]: cardiac[-1] + 1]
    return NC not in core and all(a <= b for a, b in itertools.pairwise(core))


def _brute_force(p: np.ndarray, min_prob: float = 1e-6) -> tuple[tuple[int, ...], float]:
    log_p = np.log(np.maximum(p, min_prob))
    best, best_score = None, -np.inf
    for sequence in itertools.product(range(4), repeat=p.shape[0]):
        if _is_valid(sequence):
            score = float(log_p[np.arange(p.shape[0]), sequence].sum())
            if score > best_score:
                best, best_score = sequence, score
    return best, best_score


def test_non_monotonic_argmax_is_made_monotonic() -> None:
    p = _confident([NC, B, M, B, M, A, NC])
    p[3] = [0.05, 0.5, 0.4, 0.05]  # the stray "base" is only slightly preferred over middle
    decoded = decode_monotonic_regions(p)
    assert isinstance(decoded, DecodedRegions)
    assert decoded.regions.tolist() == [NC, B, M, M, M, A, NC]
    assert decoded.changed.tolist() == [False, False, False, True, False, False, False]
    assert decoded.n_changed == 1
    assert decoded.regions.dtype == np.int8


def test_valid_sequence_is_returned_unchanged() -> None:
    sequence = [NC, B, B, M, M, M, M, A, A, NC]
    decoded = decode_monotonic_regions(_confident(sequence))
    assert decoded.regions.tolist() == sequence
    assert not decoded.changed.any()
    expected = 10 * np.log(0.7)
    assert decoded.log_likelihood == pytest.approx(expected)


def test_states_can_be_skipped_stack_without_apex_or_base() -> None:
    no_apex = [NC, B, B, M, M, M, NC]
    assert decode_monotonic_regions(_confident(no_apex)).regions.tolist() == no_apex
    no_base = [M, M, M, A, A]
    assert decode_monotonic_regions(_confident(no_base)).regions.tolist() == no_base
    all_nc = [NC, NC, NC]
    assert decode_monotonic_regions(_confident(all_nc)).regions.tolist() == all_nc


def test_weak_non_cardiac_slice_inside_the_heart_is_overruled() -> None:
    p = _confident([NC, B, M, NC, M, A, NC], confidence=0.9)
    p[3] = [0.4, 0.05, 0.35, 0.2]
    decoded = decode_monotonic_regions(p)
    assert decoded.regions.tolist() == [NC, B, M, M, M, A, NC]
    assert decoded.changed[3]


def test_confident_non_cardiac_slice_splits_off_the_weaker_side() -> None:
    # A gap the classifier is sure about cannot stay inside the heart: the weaker cardiac run becomes non-cardiac.
    p = _confident([B, M, M, NC, A], confidence=0.97)
    p[4] = [0.3, 0.0, 0.1, 0.6]
    decoded = decode_monotonic_regions(p)
    assert decoded.regions.tolist() == [B, M, M, NC, NC]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 4, 6])
def test_decoding_is_exact_against_brute_force(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(4, 0.6), size=k)
    decoded = decode_monotonic_regions(p)
    best, best_score = _brute_force(p)
    assert decoded.log_likelihood == pytest.approx(best_score, abs=1e-9)
    assert _is_valid(tuple(int(v) for v in decoded.regions))
    assert tuple(decoded.regions.tolist()) == best
    assert np.array_equal(decoded.changed, decoded.regions != p.argmax(axis=1))


@pytest.mark.parametrize("seed", range(4))
def test_apex_first_stack_decodes_as_the_mirror_image(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    p = rng.dirichlet(np.full(4, 0.6), size=7)
    forward = decode_monotonic_regions(p)
    backward = decode_monotonic_regions(p[::-1], base_first=False)
    assert np.array_equal(backward.regions, forward.regions[::-1])
    assert backward.log_likelihood == pytest.approx(forward.log_likelihood)
    assert np.array_equal(backward.changed, forward.changed[::-1])


def test_apex_first_clean_stack_is_unchanged() -> None:
    sequence = [NC, A, M, M, B, NC]
    assert decode_monotonic_regions(_confident(sequence), base_first=False).regions.tolist() == sequence
    # Read as base-first the same stack breaks the grammar and must change.
    assert decode_monotonic_regions(_confident(sequence)).changed.any()


def test_zero_probability_class_can_still_be_chosen() -> None:
    p = np.array([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0], [0.0, 1.0, 0.0, 0.0]])
    decoded = decode_monotonic_regions(p)
    assert np.isfinite(decoded.log_likelihood)
    assert _is_valid(tuple(decoded.regions.tolist()))


@pytest.mark.parametrize(
    ("probabilities", "match"),
    [
        (np.full((3, 3), 1 / 3), "shape"),
        (np.full((3,), 0.25), "shape"),
        (np.zeros((0, 4)), "k == 0"),
        (np.array([[0.25, 0.25, np.nan, 0.25]]), "NaN"),
        (np.array([[2.0, -1.0, 0.5, 1.5]]), "softmax"),
        (np.array([[0.5, 0.5, 0.5, 0.5]]), "summing to 1"),
    ],
)
def test_invalid_probabilities_raise(probabilities: np.ndarray, match: str) -> None:
    with pytest.raises(InputError, match=match):
        decode_monotonic_regions(probabilities)


@pytest.mark.parametrize("min_prob", [0.0, 1.0, -1e-3])
def test_invalid_min_prob_raises(min_prob: float) -> None:
    with pytest.raises(InputError, match="min_prob"):
        decode_monotonic_regions(_confident([B, M, A]), min_prob=min_prob)


def test_region_positions_span_the_cardiac_slices_base_to_apex() -> None:
    regions = np.array([NC, B, M, M, A, NC], dtype=np.int8)
    positions = region_positions(regions)
    assert positions.dtype == np.float32
    assert np.isnan(positions[[0, 5]]).all()
    np.testing.assert_allclose(positions[1:5], [0.0, 1 / 3, 2 / 3, 1.0], rtol=1e-6)
    reverse = region_positions(regions[::-1].copy(), base_first=False)
    np.testing.assert_array_equal(reverse, positions[::-1])


def test_region_positions_single_and_no_cardiac_slice() -> None:
    np.testing.assert_array_equal(region_positions(np.array([NC, M, NC])), [np.nan, 0.5, np.nan])
    assert np.isnan(region_positions(np.array([NC, NC]))).all()


@pytest.mark.parametrize("regions", [np.zeros((2, 3), dtype=int), np.array([0, 4]), np.array([0.0, 1.0])])
def test_region_positions_rejects_bad_codes(regions: np.ndarray) -> None:
    with pytest.raises(InputError, match="regions must"):
        region_positions(regions)
