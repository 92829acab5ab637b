"""The fibrosis classifier of the weakly-supervised LGE paper: a network whose forward pass *makes* a CAM.

Klein et al., "Weakly-supervised deep learning for left ventricle fibrosis segmentation in cardiac MRI using
image-level labels" (section 3.2): a dilated residual backbone, a self-attention block, a 1x1 convolution that outputs
the class activation map (CAM) with one channel per class, and a *myocardium-restricted* global average pooling that
turns the CAM into the image-level logit. The myocardium mask is also an input channel.

Two variants share one class:

* ``spatial_dims=2``: the slice-level classifier, input ``(batch, in_channels, j, i)``.
* ``spatial_dims=3``: the stack-level classifier, made from the 2D one by replacing every 3x3 convolution by a
  3x3x1 one, i.e. kernel ``(3, 3, 1)``. Its input is ``(batch, in_channels, j, i, k)``: **the slice axis is last**
  (MONAI's 3D layout), unlike the package's ``(k, j, i)`` numpy convention; move it with
  ``np.moveaxis(stack_kji, 0, -1)``. Nothing mixes slices except the final pooling, which averages the CAM over the
  myocardium of the whole stack. :func:`inflate_2d_to_stack` copies trained 2D weights into it.

The CAM is at 1/4 of the input resolution in ``j`` and ``i`` (two stride-2 stages; the last stage is dilated instead
of strided, as in a dilated residual network) and at full resolution along ``k``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError

__all__ = ["FibrosisCAMClassifier", "inflate_2d_to_stack", "CAM_DOWNSAMPLING"]

log = logging.getLogger(__name__)

CAM_DOWNSAMPLING = 4
"""In-plane factor between the input and the CAM of :class:`FibrosisCAMClassifier` (ceil division)."""

_STAGE_STRIDES = (1, 2, 2, 1)
_STAGE_DILATIONS = (1, 1, 1, 2)


def _kernel(size: int, spatial_dims: int, slice_value: int) -> int | tuple[int, ...]:
    """``size`` in-plane; for the stack model ``(size, size, slice_value)`` (slice axis last)."""
    return size if spatial_dims == 2 else (size, size, slice_value)


def _conv(
    spatial_dims: int, in_channels: int, out_channels: int, *, kernel_size: int, stride: int = 1, dilation: int = 1
) -> nn.Module:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    padding = dilation * (kernel_size - 1) // 2
    return conv(
        in_channels,
        out_channels,
        kernel_size=_kernel(kernel_size, spatial_dims, 1),
        stride=_kernel(stride, spatial_dims, 1),
        padding=_kernel(padding, spatial_dims, 0),
        dilation=_kernel(dilation, spatial_dims, 1),
        bias=False,
    )


def _norm(spatial_dims: int, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if spatial_dims == 2 else nn.BatchNorm3d(channels)


class _ResidualBlock(nn.Module):
    """Two 3x3 (or 3x3x1) convolutions with batch norm and a projected shortcut when the shape changes."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, *, stride: int, dilation: int) -> None:
        super().__init__()
        self.conv1 = _conv(spatial_dims, in_channels, out_channels, kernel_size=3, stride=stride, dilation=dilation)
        self.norm1 = _norm(spatial_dims, out_channels)
        self.conv2 = _conv(spatial_dims, out_channels, out_channels, kernel_size=3, dilation=dilation)
        self.norm2 = _norm(spatial_dims, out_channels)
        self.relu = nn.ReLU()  # not in place: GradCAM hooks must be able to see block outputs
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                _conv(spatial_dims, in_channels, out_channels, kernel_size=1, stride=stride),
                _norm(spatial_dims, out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return self.relu(y + self.shortcut(x))


class _NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block (Wang et al., CVPR 2018) over the in-plane positions of each slice.

    Query, key and value are 1x1 projections to ``channels // 2``; every position attends to every position of its
    slice (softmax of scaled dot products); the attended values are projected back (1x1 convolution + batch norm whose
    scale starts at zero, so the block starts as the identity) and added to the input. The stack model applies it to
    each slice separately, so it stays slice-wise like its 2D parent (and its memory grows with slices, not slices
    squared). MONAI's ``SpatialAttentionBlock`` would do the same but needs ``einops``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = max(channels // 2, 1)
        self.query = nn.Conv2d(channels, inner, kernel_size=1)
        self.key = nn.Conv2d(channels, inner, kernel_size=1)
        self.value = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, kernel_size=1, bias=False), nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)

    def _attend(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        query = self.query(x).flatten(2).transpose(1, 2)  # (batch, positions, inner)
        key = self.key(x).flatten(2)  # (batch, inner, positions)
        value = self.value(x).flatten(2).transpose(1, 2)  # (batch, positions, inner)
        weights = torch.softmax(query @ key / math.sqrt(key.shape[1]), dim=-1)
        attended = (weights @ value).transpose(1, 2).reshape(batch, -1, height, width)
        return x + self.out(attended)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            return self._attend(x)
        batch, channels, height, width, n_slices = x.shape
        per_slice = x.permute(0, 4, 1, 2, 3).reshape(batch * n_slices, channels, height, width)
        out = self._attend(per_slice)
        return out.reshape(batch, n_slices, channels, height, width).permute(0, 2, 3, 4, 1)


class FibrosisCAMClassifier(nn.Module):
    """Dilated residual classifier with self-attention, a CAM head and myocardium-restricted average pooling.

    Parameters
    ----------
    spatial_dims : {2, 3}
        2 for the slice-level model; 3 for the stack-level model with 3x3x1 kernels and the slice axis last.
    in_channels : int
        Input channels; default 2 = (LGE image, myocardium mask).
    out_channels : int
        Number of classes = CAM channels; 1 for binary fibrosis (logit of "fibrosis present").
    features : sequence of 4 int
        Channels of the four residual stages. Stages 2 and 3 stride by 2; stage 4 uses dilation 2 instead.
    blocks_per_stage : sequence of 4 int
        Residual blocks in each stage.
    mask_channel : int or None
        Input channel holding the myocardium mask (values in [0, 1]: binary or a probability). The mask is
        area-averaged to the CAM grid; each CAM pixel is weighted by the fraction of myocardium it covers, so CAM
        pixels without myocardium do not count in the pooled logit. A sample (slice, or whole stack for the 3D model)
        whose mask is empty falls back to plain global average pooling. None: plain pooling always.
    top_fraction : float or None
        None (the paper): the pooled logit is the (myocardium-weighted) *mean* of the CAM. A fraction in (0, 1]:
        the mean of the highest ``top_fraction`` of the CAM values over the myocardium (top-k pooling; k = the
        fraction of the myocardium's area on the CAM grid, at least one pixel). A scar covers a part of the
        myocardium, so the mean dilutes its evidence by the healthy rest; top-k pooling lets the logit read the
        brightest part, as the clinical rule of a high percentile over the median does.

    Notes
    -----
    ``forward(x)``: ``x`` float32 ``(batch, in_channels, j, i)`` (2D) or ``(batch, in_channels, j, i, k)`` (3D);
    returns logits ``(batch, out_channels)``. :meth:`forward_with_cam` also returns the CAM
    ``(batch, out_channels, ceil(j / 4), ceil(i / 4)[, k])``, unbounded (the pooled CAM *is* the logit).
    The module named :attr:`cam_layer` (``"cam_head"``) outputs the CAM; ``"attention"`` (the non-local block, see
    :class:`_NonLocalBlock`) is its input, a good ``target_layer`` for Grad-CAM. About 1.6 M parameters with the
    defaults (3.2 MB in float16).
    """

    cam_layer = "cam_head"

    def __init__(
        self,
        *,
        spatial_dims: int = 2,
        in_channels: int = 2,
        out_channels: int = 1,
        features: Sequence[int] = (24, 48, 96, 192),
        blocks_per_stage: Sequence[int] = (1, 1, 2, 2),
        mask_channel: int | None = 1,
        top_fraction: float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise InputError(f"spatial_dims must be 2 (slice model) or 3 (stack model), got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1:
            raise InputError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}.")
        features, blocks_per_stage = tuple(int(f) for f in features), tuple(int(b) for b in blocks_per_stage)
        if len(features) != 4 or len(blocks_per_stage) != 4 or min(features) < 1 or min(blocks_per_stage) < 1:
            raise InputError(
                f"features and blocks_per_stage need 4 positive values (one per stage), got {features} and "
                f"{blocks_per_stage}."
            )
        if mask_channel is not None and not 0 <= mask_channel < in_channels:
            raise InputError(
                f"mask_channel={mask_channel} is not one of the {in_channels} input channels; pass the index of the "
                "myocardium-mask channel, or None for plain global average pooling."
            )
        if top_fraction is not None and not 0.0 < float(top_fraction) <= 1.0:
            raise InputError(
                f"top_fraction must be in (0, 1] (the share of the myocardium whose highest CAM values make the "
                f"logit), or None for mean pooling; got {top_fraction}."
            )
        self.hyperparameters: dict[str, Any] = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "features": features,
            "blocks_per_stage": blocks_per_stage,
            "mask_channel": mask_channel,
        }
        if top_fraction is not None:  # absent for mean pooling, so the cards of mean-pooling models stay as they were
            self.hyperparameters["top_fraction"] = float(top_fraction)
        self.top_fraction = None if top_fraction is None else float(top_fraction)
        self.spatial_dims = spatial_dims
        self.mask_channel = mask_channel
        self.stem = nn.Sequential(
            _conv(spatial_dims, in_channels, features[0], kernel_size=3), _norm(spatial_dims, features[0]), nn.ReLU()
        )
        stages = []
        previous = features[0]
        for channels, n_blocks, stride, dilation in zip(features, blocks_per_stage, _STAGE_STRIDES, _STAGE_DILATIONS):
            blocks = [_ResidualBlock(spatial_dims, previous, channels, stride=stride, dilation=dilation)]
            blocks += [
                _ResidualBlock(spatial_dims, channels, channels, stride=1, dilation=dilation)
                for _ in range(n_blocks - 1)
            ]
            stages.append(nn.Sequential(*blocks))
            previous = channels
        self.stages = nn.Sequential(*stages)
        self.attention = _NonLocalBlock(features[-1])
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.cam_head = conv(features[-1], out_channels, kernel_size=1)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = self.spatial_dims + 2
        if x.ndim != expected or x.shape[1] != self.hyperparameters["in_channels"]:
            layout = "(batch, channels, j, i)" if self.spatial_dims == 2 else "(batch, channels, j, i, k)"
            raise InputError(
                f"FibrosisCAMClassifier(spatial_dims={self.spatial_dims}) expects {layout} with "
                f"{self.hyperparameters['in_channels']} channels, got shape {tuple(x.shape)}."
            )

    def pool(self, cam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Myocardium-restricted pooling of ``cam`` (batch, classes, ...) -> logits (batch, classes).

        The mean over the myocardium, or the mean of its top ``top_fraction`` (see the class docstring); plain pooling
        over every CAM pixel without a mask channel or for a sample whose mask is empty.
        """
        spatial = tuple(range(2, cam.ndim))
        if self.mask_channel is None:
            weights = torch.ones_like(cam[:, :1])
        else:
            mask = x[:, self.mask_channel : self.mask_channel + 1].clamp(0.0, 1.0)
            pool = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
            weights = pool(mask, cam.shape[2:]).to(cam.dtype)
            empty = weights.sum(dim=spatial, keepdim=True) <= 0
            weights = torch.where(empty, torch.ones_like(weights), weights)
        if self.top_fraction is None:
            total = weights.sum(dim=spatial)  # (batch, 1), > 0 after the fallback above
            return (cam * weights).sum(dim=spatial) / total
        return self._top_fraction_mean(cam.flatten(2), weights.flatten(2))

    def _top_fraction_mean(self, cam: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Mean of the ``top_fraction`` highest values of ``cam`` (batch, classes, n) among pixels with weight > 0."""
        members = weights > 0  # (batch, 1, n)
        k = (self.top_fraction * weights.sum(dim=-1, keepdim=True)).ceil().clamp_min(1.0)  # (batch, 1, 1)
        k = torch.minimum(k, members.sum(dim=-1, keepdim=True).to(k.dtype))
        ranked = cam.masked_fill(~members, float("-inf")).sort(dim=-1, descending=True).values
        taken = torch.arange(cam.shape[-1], device=cam.device).to(k.dtype) < k  # (batch, 1, n)
        return torch.where(taken, ranked, torch.zeros_like(ranked)).sum(dim=-1) / k[..., 0]

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(batch, out_channels)`` and the CAM ``(batch, out_channels, ceil(j/4), ceil(i/4)[, k])``."""
        self._check_input(x)
        features = self.attention(self.stages(self.stem(x)))
        cam = self.cam_head(features)
        return self.pool(cam, x), cam

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, out_channels)``; see the class docstring for the input layout."""
        return self.forward_with_cam(x)[0]


def inflate_2d_to_stack(model2d: FibrosisCAMClassifier) -> FibrosisCAMClassifier:
    """The stack-level model with the slice-level model's weights (3x3 kernels copied into 3x3x1 ones).

    Parameters
    ----------
    model2d : FibrosisCAMClassifier
        A ``spatial_dims=2`` model (trained or not); left unchanged.

    Returns
    -------
    FibrosisCAMClassifier
        ``spatial_dims=3`` with the same hyperparameters, on the same device and dtype, in the same train/eval mode.
        Its CAM of a stack equals the 2D CAM of each slice; its logit is the myocardium-weighted mean over the stack,
        so on a one-slice stack, or a stack of identical slices, it equals the 2D logit (batch norm in eval mode).

    Raises
    ------
    InputError
        If ``model2d`` is not a 2D :class:`FibrosisCAMClassifier`.
    """
    if not isinstance(model2d, FibrosisCAMClassifier) or model2d.spatial_dims != 2:
        raise InputError(
            f"inflate_2d_to_stack needs a FibrosisCAMClassifier with spatial_dims=2, got {type(model2d).__name__}"
            f"{'' if not isinstance(model2d, FibrosisCAMClassifier) else ' with spatial_dims=3'}."
        )
    model3d = FibrosisCAMClassifier(spatial_dims=3, **model2d.hyperparameters)
    state3d = model3d.state_dict()
    inflated = {}
    for name, tensor in model2d.state_dict().items():
        target = state3d[name]
        if tensor.ndim == target.ndim - 1 and name.endswith("weight") and tensor.ndim == 4:
            tensor = tensor.unsqueeze(-1)  # (out, in, 3, 3) -> (out, in, 3, 3, 1): slice axis last
        inflated[name] = tensor.detach().clone()
    model3d.load_state_dict(inflated)
    parameter = next(model2d.parameters())
    model3d.to(device=parameter.device, dtype=parameter.dtype)
    return model3d.train(model2d.training)
