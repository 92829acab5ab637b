from __future__ import annotations

import pytest
import torch

from cardiac_ai import InputError
from cardiac_ai.device import lent_for_inference, place_for_inference, resolve_device, run_batched_with_fallback
from cardiac_ai.progress import format_progress_line, parse_progress_line, subrange
from cardiac_ai.provenance import Provenance


def test_progress_line_round_trip_and_other_lines_ignored():
    line = format_progress_line(0.25, "Segmenting\nslice 3")
    assert line == "PROGRESS 0.2500 Segmenting slice 3"
    assert parse_progress_line(line) == (0.25, "Segmenting slice 3")
    assert parse_progress_line("INFO something") is None
    assert parse_progress_line("PROGRESS abc x") is None
    assert parse_progress_line("PROGRESS 1.5 x") is None


def test_subrange_maps_nested_progress_monotonically():
    seen = []
    nested = subrange(lambda f, m: seen.append(f), 0.5, 0.75)
    for fraction in (0.0, 0.5, 1.0, 2.0):
        nested(fraction, "x")
    assert seen == [0.5, 0.625, 0.75, 0.75]


def test_resolve_device_explicit_choice_wins_and_cuda_without_gpu_is_an_error():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type in {"cpu", "cuda"}
    with pytest.raises(InputError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA"):
            resolve_device("cuda")


def test_out_of_memory_halves_batch_then_falls_back_to_cpu(monkeypatch):
    """Simulates CUDA OOM (no GPU here): the runner must shrink the batch, then finish on the CPU, and say so."""
    calls = []

    def run_batch(batch, device):
        calls.append((len(batch), device.type))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return [x * 2 for x in batch]

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    provenance = Provenance()
    results, device = run_batched_with_fallback(
        list(range(5)), run_batch, device=torch.device("cuda"), batch_size=4, provenance=provenance
    )
    assert results == [0, 2, 4, 6, 8]
    assert device.type == "cpu"
    assert [c for c in calls if c[1] == "cuda"] == [(4, "cuda"), (2, "cuda"), (1, "cuda")]
    assert any("batch size 2" in w for w in provenance.warnings)
    assert any("CPU" in w for w in provenance.warnings)


def test_other_errors_are_not_swallowed():
    def run_batch(batch, device):
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        run_batched_with_fallback([1], run_batch, device=torch.device("cpu"), batch_size=1)


def test_place_for_inference_sets_eval_and_leaves_a_placed_network_untouched(monkeypatch):
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Dropout(0.5), torch.nn.ReLU())
    network.eval()
    network[1].train()  # one layer left in training mode is enough to need eval()

    assert place_for_inference(network, "cpu") is network
    assert not any(module.training for module in network.modules())

    def walked(*args, **kwargs):
        raise AssertionError("an eval-mode network already on its device must not be walked again")

    monkeypatch.setattr(network, "to", walked)
    monkeypatch.setattr(network, "eval", walked)
    place_for_inference(network, torch.device("cpu"))
    place_for_inference(torch.nn.ReLU(), "cpu")  # no parameters or buffers: nothing to move


def test_lent_for_inference_hands_a_training_network_back_in_training_mode():
    network = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    network.train()

    with lent_for_inference(network, "cpu") as lent:
        assert lent is network and not any(module.training for module in network.modules())

    assert all(module.training for module in network.modules())
    network.eval()
    with lent_for_inference(network, "cpu"):
        pass
    assert not network.training  # an eval-mode network stays in eval mode
