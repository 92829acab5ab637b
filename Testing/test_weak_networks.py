"""The fibrosis CAM classifier: shapes, myocardium-restricted pooling, 2D -> stack inflation, registry entries."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cardiac_ai.errors import InputError, ModelError
from cardiac_ai.models import build_network
from cardiac_ai.models.weak_networks import CAM_DOWNSAMPLING, FibrosisCAMClassifier, inflate_2d_to_stack

TINY = {"features": (4, 8, 8, 8), "blocks_per_stage": (1, 1, 1, 1)}


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random weights *and* batch-norm statistics/scales (the attention output starts at zero otherwise)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.dtype.is_floating_point:
                values = torch.rand(tensor.shape, generator=generator)
                tensor.copy_(values + 0.5 if name.endswith(("running_var", "weight")) and tensor.ndim == 1 else
                             (values - 0.5) * (0.6 if tensor.ndim > 1 else 1.0))
    return model.eval()


def _inputs(batch: int, size: int = 32, *, slices: int | None = None, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 1, size, size) if slices is None else (batch, 1, size, size, slices)
    image = torch.rand(shape, generator=generator)
    mask = torch.zeros(shape)
    mask[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    return torch.cat([image, mask], dim=1)


def test_slice_model_returns_logits_and_quarter_resolution_cam():
    model = FibrosisCAMClassifier(out_channels=3, **TINY).eval()
    with torch.no_grad():
        logits, cam = model.forward_with_cam(_inputs(2, 32))
        assert torch.equal(model(_inputs(2, 32)), logits)
    assert logits.shape == (2, 3)
    assert cam.shape == (2, 3, 32 // CAM_DOWNSAMPLING, 32 // CAM_DOWNSAMPLING)


def test_stack_model_keeps_slices_and_takes_the_slice_axis_last():
    model = FibrosisCAMClassifier(spatial_dims=3, **TINY).eval()
    with torch.no_grad():
        logits, cam = model.forward_with_cam(_inputs(2, 32, slices=5))
    assert logits.shape == (2, 1)
    assert cam.shape == (2, 1, 8, 8, 5)
    assert model.stem[0].kernel_size == (3, 3, 1)


def test_default_model_fits_the_bundled_weights_budget():
    model = build_network("fibrosis_cam_2d")
    n_parameters = sum(p.numel() for p in model.parameters())
    assert 0.3e6 < n_parameters < 2.5e6  # < 5 MB in float16


def test_restricted_pooling_ignores_cam_outside_the_mask():
    x = _inputs(2, 32)
    inside = torch.nn.functional.adaptive_avg_pool2d(x[:, 1:2], (8, 8)) > 0
    results = {}
    for mask_channel in (1, None):
        model = _randomise(FibrosisCAMClassifier(mask_channel=mask_channel, **TINY))
        with torch.no_grad():
            plain = model(x)
            handle = model.cam_head.register_forward_hook(lambda m, i, out: out + 100.0 * (~inside))
            disturbed = model(x)
            handle.remove()
        results[mask_channel] = (plain, disturbed)
    torch.testing.assert_close(results[1][1], results[1][0])
    assert (results[None][1] - results[None][0]).abs().min() > 10  # plain pooling does see it


def test_restricted_pooling_is_the_mean_over_mask_pixels():
    model = FibrosisCAMClassifier(**TINY)
    cam = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    x = torch.zeros(1, 2, 32, 32)
    x[0, 1, 8:16, 4:12] = 1.0  # covers CAM rows 2..3, columns 1..2 exactly
    assert model.pool(cam, x).item() == pytest.approx(cam[0, 0, 2:4, 1:3].mean().item())


def test_empty_mask_falls_back_to_plain_average_pooling():
    model = FibrosisCAMClassifier(**TINY)
    cam = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    x = _inputs(2, 32)
    x[1, 1] = 0.0
    pooled = model.pool(cam, x)
    assert pooled[1].item() == pytest.approx(cam[1].mean().item())
    assert pooled[0].item() != pytest.approx(cam[0].mean().item())


def test_top_fraction_pooling_is_the_mean_of_the_highest_mask_values():
    model = FibrosisCAMClassifier(top_fraction=0.25, **TINY)
    cam = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8).flip(-1)  # highest values outside the mask too
    x = torch.zeros(1, 2, 32, 32)
    x[0, 1, 8:24, 4:12] = 1.0  # CAM rows 2..5, columns 1..2: 8 pixels, so k = 2
    inside = cam[0, 0, 2:6, 1:3].flatten().sort(descending=True).values
    assert model.pool(cam, x).item() == pytest.approx(inside[:2].mean().item())
    assert cam.max() > inside.max()  # the value outside the mask was there to be (wrongly) picked
    assert FibrosisCAMClassifier(**TINY).pool(cam, x).item() == pytest.approx(inside.mean().item())


def test_top_fraction_pooling_reads_a_small_bright_patch_the_mean_dilutes():
    cam = torch.zeros(2, 1, 8, 8)
    cam[0, 0, 2, 1] = 8.0  # one "scar" pixel of the 16-pixel myocardium
    x = torch.zeros(2, 2, 32, 32)
    x[:, 1, 8:24, 4:20] = 1.0
    mean_pooled = FibrosisCAMClassifier(**TINY).pool(cam, x)
    top_pooled = FibrosisCAMClassifier(top_fraction=1 / 16, **TINY).pool(cam, x)
    assert mean_pooled[0].item() == pytest.approx(0.5) and top_pooled[0].item() == pytest.approx(8.0)
    assert top_pooled[1].item() == 0.0


def test_top_fraction_pooling_falls_back_to_every_pixel_and_survives_inflation():
    model2d = _randomise(FibrosisCAMClassifier(top_fraction=0.5, **TINY))
    cam = torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8)
    assert model2d.pool(cam, torch.zeros(1, 2, 32, 32)).item() == pytest.approx(cam.flatten()[32:].mean().item())
    model3d = inflate_2d_to_stack(model2d)
    assert model3d.top_fraction == 0.5
    x = _inputs(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(model3d(x[..., None]), model2d(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="top_fraction"):
        FibrosisCAMClassifier(top_fraction=0.0)
    assert "top_fraction" not in FibrosisCAMClassifier(**TINY).hyperparameters  # mean-pooling cards unchanged


def test_inflated_stack_model_matches_2d_model_on_one_slice_and_identical_slices():
    model2d = _randomise(FibrosisCAMClassifier(**TINY))
    model3d = inflate_2d_to_stack(model2d)
    x = _inputs(3, 32)
    with torch.no_grad():
        logits2d, cam2d = model2d.forward_with_cam(x)
        one_slice, one_cam = model3d.forward_with_cam(x[..., None])
        repeated = model3d(x[..., None].repeat(1, 1, 1, 1, 4))
    assert logits2d.abs().max() > 1e-3  # not a trivially zero model
    torch.testing.assert_close(one_slice, logits2d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(one_cam[..., 0], cam2d, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(repeated, logits2d, rtol=1e-4, atol=1e-5)


def test_inflated_stack_cam_is_the_2d_cam_of_each_slice():
    model2d = _randomise(FibrosisCAMClassifier(**TINY), seed=3)
    model3d = inflate_2d_to_stack(model2d)
    stack = _inputs(1, 32, slices=3, seed=4)
    with torch.no_grad():
        _, cam3d = model3d.forward_with_cam(stack)
        per_slice = torch.stack([model2d.forward_with_cam(stack[..., k])[1] for k in range(3)], dim=-1)
    torch.testing.assert_close(cam3d, per_slice, rtol=1e-4, atol=1e-5)


def test_inflation_keeps_mode_and_leaves_the_2d_model_unchanged():
    model2d = _randomise(FibrosisCAMClassifier(**TINY)).train()
    before = {k: v.clone() for k, v in model2d.state_dict().items()}
    model3d = inflate_2d_to_stack(model2d)
    assert model3d.training and model3d.spatial_dims == 3
    assert all(torch.equal(before[k], v) for k, v in model2d.state_dict().items())


def test_inflation_rejects_a_stack_model():
    with pytest.raises(InputError, match="spatial_dims=2"):
        inflate_2d_to_stack(FibrosisCAMClassifier(spatial_dims=3, **TINY))


def test_wrong_input_layout_is_an_input_error():
    model = FibrosisCAMClassifier(**TINY)
    with pytest.raises(InputError, match=r"\(batch, channels, j, i\) with 2 channels"):
        model(torch.zeros(1, 1, 32, 32))
    with pytest.raises(InputError, match="j, i, k"):
        FibrosisCAMClassifier(spatial_dims=3, **TINY)(torch.zeros(1, 2, 32, 32))


def test_invalid_hyperparameters_are_rejected():
    with pytest.raises(InputError, match="mask_channel=2"):
        FibrosisCAMClassifier(in_channels=2, mask_channel=2)
    with pytest.raises(InputError, match="4 positive values"):
        FibrosisCAMClassifier(features=(8, 8))
    with pytest.raises(ModelError, match="cannot be built"):
        build_network("fibrosis_cam_stack", mask_channel=5)


def test_registry_builds_slice_and_stack_models_with_matching_weights():
    model2d = build_network("fibrosis_cam_2d", **TINY)
    stack = build_network("fibrosis_cam_stack", **TINY)
    assert isinstance(stack, FibrosisCAMClassifier) and stack.spatial_dims == 3
    inflated = inflate_2d_to_stack(model2d).state_dict()
    assert {k: v.shape for k, v in stack.state_dict().items()} == {k: v.shape for k, v in inflated.items()}


def test_tiny_model_learns_a_bright_blob_inside_the_mask():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, size = 8, 16
    x = np.zeros((n, 2, size, size), np.float32)
    x[:, 0] = rng.normal(0, 0.1, (n, size, size))
    x[:, 1, 4:12, 4:12] = 1
    y = np.arange(n) % 2
    for k in np.flatnonzero(y):
        j, i = rng.integers(4, 10, 2)
        x[k, 0, j : j + 3, i : i + 3] += 2.0
    model = FibrosisCAMClassifier(**TINY)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y).float()[:, None]
    for _ in range(15):
        optimiser.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(inputs), targets).backward()
        optimiser.step()
    with torch.no_grad():
        predicted = (model.eval()(inputs) > 0).float()
    assert torch.equal(predicted, targets)
