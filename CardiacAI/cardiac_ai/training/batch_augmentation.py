"""Random spatial and intensity changes of a whole batch on its own device (GPU training, the QC VAE).

:mod:`cardiac_ai.training.augmentation` transforms one sample at a time with MONAI on the CPU, in data-loader
workers; these functions change a batch already on the GPU, where per-sample CPU work would starve it. Draws come
from an explicit ``torch.Generator``, so a seeded generator repeats the same batch of transforms.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_sampling_grid", "random_gamma", "random_intensity_curve"]


def _uniform(generator: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, device=generator.device)


def random_sampling_grid(
    n: int,
    size_hw: tuple[int, int],
    generator: torch.Generator,
    *,
    rotate_deg: float,
    scale: float,
    translate_px: float,
    anisotropy: float = 0.0,
    elastic_px: float = 0.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """An ``F.grid_sample`` grid ``(n, h, w, 2)`` per sample: rotation, zoom, stretch, shift and elastic warp.

    Parameters
    ----------
    rotate_deg : rotation uniform within +-rotate_deg.
    scale : zoom log-uniform within 1/(1 + scale) .. 1 + scale (0: none).
    translate_px : shift uniform within +-translate_px along each axis.
    anisotropy : extra zoom of the column axis, log-uniform within 1/(1 + anisotropy) .. 1 + anisotropy.
    elastic_px : half of the samples get a smooth displacement (a 6 x 6 Gaussian field, bicubic) of about this size.
    device : where the grid lives (default: the generator's device).

    Sample the images with ``mode="bilinear"`` and label maps with ``mode="nearest"`` on the same grid
    (``align_corners=False``). With every range 0 the grid is the identity.
    """
    h, w = size_hw
    device = torch.device(device) if device is not None else generator.device
    angle = _uniform(generator, -1, 1, n).to(device) * math.radians(rotate_deg)
    zoom = torch.exp(_uniform(generator, -1, 1, n).to(device) * math.log(1 + scale))
    stretch = torch.exp(_uniform(generator, -1, 1, n).to(device) * math.log(1 + anisotropy))
    shift = _uniform(generator, -1, 1, n, 2).to(device) * (2 * translate_px / torch.tensor([w, h], device=device))
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 1] = cos / (zoom * stretch), -sin / zoom
    theta[:, 1, 0], theta[:, 1, 1] = sin / (zoom * stretch), cos / zoom
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False)
    if elastic_px > 0:
        coarse = torch.randn(n, 2, 6, 6, generator=generator, device=generator.device).to(device)
        coarse = coarse * (2 * elastic_px / max(h, w))
        coarse = coarse * (_uniform(generator, 0, 1, n, 1, 1, 1).to(device) < 0.5)
        grid = grid + F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False).permute(0, 2, 3, 1)
    return grid


def random_gamma(images: torch.Tensor, generator: torch.Generator, max_gamma: float) -> torch.Tensor:
    """``clamp(images, 0, 1) ** g``, g log-uniform within 1/max_gamma .. max_gamma per sample (1: unchanged)."""
    gamma = torch.exp(_uniform(generator, -1, 1, images.shape[0], 1, 1, 1).to(images.device) * math.log(max_gamma))
    return images.clamp(0, 1) ** gamma


def random_intensity_curve(
    images: torch.Tensor, generator: torch.Generator, *, n_points: int = 5, monotone_probability: float = 0.5
) -> torch.Tensor:
    """Map intensities in [0, 1] through a random piecewise-linear curve per sample, then min-max rescale to [0, 1].

    The curve passes through ``n_points`` equally spaced knots with uniform random heights; on a
    ``monotone_probability`` share of the samples the heights are sorted, so the mapping keeps the order of
    intensities (a contrast change), on the others it may reorder tissues, as another MR contrast does (fat is bright
    in cine and dark in a native T1 map). The rescaling keeps the [0, 1] range QC inputs have.
    """
    n = images.shape[0]
    heights = _uniform(generator, 0, 1, n, n_points)
    monotone = _uniform(generator, 0, 1, n, 1) < monotone_probability
    heights = torch.where(monotone, heights.sort(dim=1).values, heights).to(images.device)
    position = images.clamp(0, 1) * (n_points - 1)
    left = position.floor().clamp(max=n_points - 2).long()
    weight = position - left
    flat_left = left.reshape(n, -1)
    low = torch.gather(heights, 1, flat_left).reshape(images.shape)
    high = torch.gather(heights, 1, flat_left + 1).reshape(images.shape)
    mapped = low + weight * (high - low)
    minimum = mapped.reshape(n, -1).min(dim=1).values.view(n, *([1] * (images.ndim - 1)))
    maximum = mapped.reshape(n, -1).max(dim=1).values.view(n, *([1] * (images.ndim - 1)))
    return (mapped - minimum) / (maximum - minimum).clamp_min(1e-6)
