"""2.5D inputs: a slice with its neighbours as channels, the same in training and at inference, base side first."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiac_ai.errors import InputError, ModelError
from cardiac_ai.models.networks import build_network
from cardiac_ai.preprocessing import InputSpec, network_input
from cardiac_ai.training.checkpoint import widen_input_channels
from cardiac_ai.training.slices import PreparedSlices, SliceDataset, slice_context_images

CONTEXT_1 = InputSpec(channels=3, slice_context=1)


def _numbered_stack(n_slices: int) -> np.ndarray:
    """Slice k is filled with k + 1, so a channel's value names the slice it came from (0 = beyond the stack)."""
    return (np.arange(1, n_slices + 1, dtype=np.float32)[:, None, None] * np.ones((n_slices, 3, 2), np.float32))


def test_each_slice_sees_its_neighbours_base_side_first_and_zeros_beyond_the_stack():
    inputs = network_input(_numbered_stack(4), CONTEXT_1)
    assert inputs.shape == (4, 3, 3, 2)
    assert inputs[:, :, 0, 0].tolist() == [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 0]]
    two = network_input(_numbered_stack(3), InputSpec(channels=5, slice_context=2))
    assert two[0, :, 0, 0].tolist() == [0, 0, 1, 2, 3] and two[2, :, 0, 0].tolist() == [1, 2, 3, 0, 0]


def test_a_stack_with_the_base_at_high_k_gives_each_slice_the_same_channels():
    """Channel 0 is always the neighbour towards the base, whichever way the stack runs."""
    stack = np.random.default_rng(0).random((5, 4, 4), dtype=np.float32)
    forward = network_input(stack, CONTEXT_1, base_first=True)
    backward = network_input(stack[::-1], CONTEXT_1, base_first=False)
    np.testing.assert_array_equal(backward[::-1], forward)


def test_without_context_the_input_is_the_slice_alone():
    stack = _numbered_stack(3)
    np.testing.assert_array_equal(network_input(stack, InputSpec()), stack[:, None])
    with pytest.raises(InputError, match=r"\(k, cj, ci\)"):
        network_input(stack[None], CONTEXT_1)


def test_input_spec_checks_context_against_channels_and_round_trips():
    with pytest.raises(InputError, match="channels is 1"):
        InputSpec(slice_context=1)
    with pytest.raises(InputError, match="slice_context must be"):
        InputSpec(channels=3, slice_context=-1)
    assert InputSpec.from_dict(CONTEXT_1.to_dict()) == CONTEXT_1
    assert "slice_context" not in InputSpec().to_dict()  # single-slice cards stay as older versions wrote them
    assert CONTEXT_1.same_preprocessing(InputSpec())
    assert InputSpec().with_slice_context(1) == CONTEXT_1 and CONTEXT_1.with_slice_context(0) == InputSpec()
    assert not CONTEXT_1.same_preprocessing(InputSpec(crop_size=(64, 64)))


def _prepared(images, case_ids, slice_indices, regions) -> PreparedSlices:
    n = len(images)
    return PreparedSlices(images, np.zeros(images.shape, np.uint8), np.asarray(case_ids), np.asarray(slice_indices),
                          np.zeros(n, np.float32), np.asarray(regions, np.int8), InputSpec(crop_size=(3, 2)))


def test_training_slices_get_the_neighbours_inference_gives_and_keep_them_through_a_subset():
    first, second = _numbered_stack(4), 10 * _numbered_stack(3)
    order = np.random.default_rng(1).permutation(7)  # slices of two cases, shuffled
    images = np.concatenate([first, second])[order]
    case_ids = np.array(["a"] * 4 + ["b"] * 3)[order]
    slice_indices = np.array([0, 1, 2, 3, 0, 1, 2])[order]
    regions = np.array([0, 1, 2, 3, 1, 2, 3])[order]
    prepared = _prepared(images, case_ids, slice_indices, regions).with_slice_context(1)
    assert prepared.spec.channels == 3 and prepared.spec.slice_context == 1
    for row in range(7):
        stack = first if case_ids[row] == "a" else second
        expected = network_input(stack, CONTEXT_1)[slice_indices[row]]
        np.testing.assert_array_equal(prepared.images[row], expected)
    base = prepared.subset(prepared.regions == 1)  # case a's basal slice keeps its non-cardiac neighbour
    row_a = int(np.flatnonzero(base.case_ids == "a")[0])
    assert base.images[row_a, :, 0, 0].tolist() == [1, 2, 3]
    assert SliceDataset(base)[row_a]["image"].shape == (3, 3, 2)
    as_uint8 = slice_context_images(images.astype(np.uint8), case_ids, slice_indices, CONTEXT_1)
    assert as_uint8.dtype == np.uint8 and np.array_equal(as_uint8, prepared.images.astype(np.uint8))


def test_repeated_slice_indices_are_refused():
    with pytest.raises(InputError, match="repeated"):
        slice_context_images(_numbered_stack(2), np.array(["a", "a"]), np.array([0, 0]), CONTEXT_1)


def test_a_widened_network_starts_out_computing_what_the_single_slice_one_did():
    kwargs = {"out_channels": 4, "channels": (4, 8), "strides": (2,), "num_res_units": 1}
    torch.manual_seed(0)
    single = build_network("unet2d", in_channels=1, **kwargs).eval()
    wide = build_network("unet2d", in_channels=3, **kwargs).eval()
    wide.load_state_dict(widen_input_channels(single.state_dict(), wide.state_dict(), keep_channel=1))
    slices = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(wide(slices), single(slices[:, 1:2]))
    other = build_network("unet2d", in_channels=3, out_channels=4, channels=(8, 8), strides=(2,), num_res_units=1)
    with pytest.raises(ModelError, match="cannot widen"):
        widen_input_channels(single.state_dict(), other.state_dict(), keep_channel=1)
