"""CNN regression of segmentation quality: the baseline the generative QC is compared with.

Robinson et al., "Real-time prediction of segmentation quality", MICCAI 2018 (reference [12] of Wang et al.,
generative QC): a CNN takes the image and the segmentation to be checked and regresses its Dice against the
(unknown) ground truth, one value per structure, trained with a mean squared error on Dice values made from poor
segmentations whose true Dice is known (:func:`cardiac_ai.qc.training.make_poor_segmentations`).

Here the network is small (about 0.3 M parameters with the default features, 0.6 MB in float16) so that it fits the
bundled-model budget and trains on a CPU; Wang et al. used a ResNet-18 backbone (11 M parameters). The input is the
same 96 x 96 pair the VAE sees (:func:`cardiac_ai.qc.search.qc_input`).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from ..device import lent_for_inference
from ..errors import InputError

__all__ = ["QCDiceRegressor", "regress_dice", "check_rotations", "rotated_pairs", "DEFAULT_REGRESSOR_FEATURES"]

log = logging.getLogger(__name__)

#: Channels of the four convolution blocks.
DEFAULT_REGRESSOR_FEATURES: tuple[int, int, int, int] = (16, 32, 64, 128)


class QCDiceRegressor(nn.Module):
    """Image + segmentation pair in, per-structure Dice logits out (apply a sigmoid for Dice in (0, 1)).

    Parameters
    ----------
    in_channels : int
        Image channel(s) plus one binary channel per structure: 4 for the image with RV blood pool, LV myocardium
        and LV blood pool, as :func:`~cardiac_ai.qc.search.qc_input` stacks them.
    n_outputs : int
        Structures whose Dice is regressed (3), in the order of the segmentation channels.
    features : sequence of int
        Channels of the convolution blocks; each block halves the resolution, so the input side must be divisible
        by ``2 ** len(features)``.
    input_size : int
        Side of the square input in pixels (96).
    dropout : float
        Dropout before the final linear layer, in [0, 1).

    Notes
    -----
    Each block: 3x3 convolution, batch norm, ReLU, then a 3x3 convolution with stride 2 (halving the resolution),
    batch norm, ReLU. Then global average pooling, dropout and a linear layer. The strided convolutions cost half
    of full-resolution convolutions followed by pooling, which matters for training on a CPU. Like every CardiacAI
    network ``forward`` returns logits; the Dice prediction is ``sigmoid(logits)`` (:func:`regress_dice`), and the
    training loss is the MSE between that and the true Dice (:func:`cardiac_ai.qc.training.dice_regression_loss`).

    forward(x): x (batch, in_channels, input_size, input_size) float32 in [0, 1]; returns (batch, n_outputs).
    """

    def __init__(
        self,
        *,
        in_channels: int = 4,
        n_outputs: int = 3,
        features: Sequence[int] = DEFAULT_REGRESSOR_FEATURES,
        input_size: int = 96,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("n_outputs", n_outputs), ("input_size", input_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"QCDiceRegressor: {name} must be a positive integer, got {value!r}.")
        features = tuple(features)
        if not features or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 1 for f in features):
            raise InputError(f"QCDiceRegressor: features must be positive integers, got {features!r}.")
        if input_size % 2 ** len(features):
            raise InputError(
                f"QCDiceRegressor: input_size {input_size} must be divisible by 2 ** {len(features)} "
                f"(one stride-2 convolution per block of features={features})."
            )
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise InputError(f"QCDiceRegressor: dropout must be in [0, 1), got {dropout!r}.")
        self.in_channels = in_channels
        self.n_outputs = n_outputs
        self.input_size = input_size
        layers: list[nn.Module] = []
        previous = in_channels
        for channels in features:
            layers += [
                nn.Conv2d(previous, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                nn.ReLU(),
            ]
            previous = channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(previous, n_outputs)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"QCDiceRegressor expects input (batch, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(x.shape)}."
            )
        return self.head(self.features(x))


def regress_dice(
    model: nn.Module,
    pairs: NDArray[np.floating],
    *,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    rotations_deg: Sequence[float] = (0.0,),
) -> NDArray[np.float64]:
    """Predicted Dice of each slice and structure from a trained :class:`QCDiceRegressor`.

    Parameters
    ----------
    model : QCDiceRegressor
        Runs in eval mode; its training mode and device are restored afterwards.
    pairs : (n, in_channels, S, S) float ndarray, values in [0, 1]
        As :func:`~cardiac_ai.qc.search.qc_input` returns them.
    batch_size : int
        Slices per forward pass.
    device : str or torch.device, optional
        Where to run; None means the device of the model's parameters.
    rotations_deg : angles in degrees
        Test-time augmentation: the predictions of the pairs rotated by each angle about their centre (image
        bilinear, masks bilinear then thresholded at 0.5, as the training augmentation moves them) are averaged.
        A rotation leaves the true Dice as it is; the average is steadier than one view. Default: no rotation.

    Returns
    -------
    (n, n_outputs) float64 ndarray
        ``sigmoid(logits)``, in (0, 1) (the mean over ``rotations_deg``).

    Raises
    ------
    InputError
        If ``pairs`` is not a 4D array of finite values, ``batch_size`` < 1, or ``rotations_deg`` is not a
        non-empty list of angles within :data:`MAX_ROTATION_DEG` (:func:`check_rotations`).
    """
    array = np.asarray(pairs, dtype=np.float32)
    if array.ndim != 4 or array.shape[0] == 0:
        raise InputError(f"pairs must be (n, channels, S, S) with n >= 1, got shape {array.shape}.")
    if not np.all(np.isfinite(array)):
        raise InputError("pairs hold NaN or Inf values; build them with qc_input.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    angles = check_rotations(rotations_deg)
    parameter = next(model.parameters(), None)
    run_device = torch.device(device) if device is not None else (
        parameter.device if parameter is not None else torch.device("cpu"))
    n_masks = getattr(model, "n_outputs", array.shape[1] - 1)
    outputs = []
    with lent_for_inference(model, run_device), torch.no_grad():
        for start in range(0, len(array), batch_size):
            batch = torch.from_numpy(array[start:start + batch_size]).to(run_device)
            views = [torch.sigmoid(model(rotated_pairs(batch, angle, n_masks)).float()) for angle in angles]
            outputs.append(torch.stack(views).mean(dim=0).cpu().numpy())
    return np.concatenate(outputs).astype(np.float64)


#: Largest test-time rotation: the regressor learnt rotations within 15 degrees (augment_qc_pairs); far beyond it
#: its predictions are not views of the same judgement.
MAX_ROTATION_DEG = 45.0


def check_rotations(rotations_deg: Sequence[float]) -> tuple[float, ...]:
    """The test-time rotations as a tuple of floats; InputError for none, or for an angle that is not a number
    (a string, a truth value) or lies beyond :data:`MAX_ROTATION_DEG`."""
    import numbers
    from collections.abc import Mapping

    if isinstance(rotations_deg, (str, bytes, Mapping)) or not isinstance(rotations_deg, Sequence | np.ndarray):
        raise InputError(f"rotations_deg must be a list of angles in degrees, got {rotations_deg!r}.")
    if not rotations_deg or not all(isinstance(a, numbers.Real) and not isinstance(a, (bool, np.bool_))
                                    for a in rotations_deg):
        raise InputError(f"rotations_deg must hold at least one angle in degrees (numbers), got {rotations_deg!r}.")
    angles = tuple(float(a) for a in rotations_deg)
    if not all(np.isfinite(a) and abs(a) <= MAX_ROTATION_DEG for a in angles):
        raise InputError(f"rotations_deg must be finite angles within +-{MAX_ROTATION_DEG:g} degrees, got "
                         f"{rotations_deg!r}.")
    return angles


def rotated_pairs(batch: torch.Tensor, angle_deg: float, n_masks: int) -> torch.Tensor:
    """``batch`` (n, C, S, S) rotated by ``angle_deg`` about the centre; the last ``n_masks`` channels stay binary."""
    if angle_deg == 0.0:
        return batch
    import torch.nn.functional as F

    angle = np.deg2rad(angle_deg)
    theta = torch.tensor([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0]],
                         dtype=batch.dtype, device=batch.device).expand(batch.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    moved = F.grid_sample(batch, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = (moved[:, batch.shape[1] - n_masks:] > 0.5).to(moved.dtype)
    return torch.cat([moved[:, :batch.shape[1] - n_masks], masks], dim=1)
