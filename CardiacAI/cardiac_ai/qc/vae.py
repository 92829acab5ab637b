"""Variational autoencoder of good image-segmentation pairs (Wang et al., generative QC, section 2.3, Fig. A1).

The VAE sees a 96 x 96 region of interest: channel 0 the image normalised to [0, 1], then one binary channel per
structure (by default 1 RV blood pool, 2 LV myocardium, 3 LV blood pool; or the myocardium alone). Trained on
ground-truth pairs only, its decoder generates pairs on the "good-quality manifold"; :mod:`cardiac_ai.qc.search`
projects any pair onto that manifold and compares the projected (surrogate) segmentation with the given one.
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError

__all__ = ["SegmentationVAE", "vae_loss", "reconstruction_loss", "DEFAULT_FEATURES"]

log = logging.getLogger(__name__)

#: Channels of the four encoder convolutions (the decoder mirrors them).
DEFAULT_FEATURES: tuple[int, int, int, int] = (32, 64, 128, 256)


class SegmentationVAE(nn.Module):
    """Convolutional VAE of (image, one-hot segmentation) pairs; outputs are probabilities (sigmoid), not logits.

    Parameters
    ----------
    n_structures : int
        Segmentation channels: 3 (RV blood pool, LV myocardium, LV blood pool) or 1 (myocardium only).
    latent_size : int
        Dimension m of the latent space (the paper's default 8).
    features : 4 ints
        Channels of the encoder's four stride-2 convolutions; the decoder uses them in reverse.
    input_size : int
        Side of the square input in pixels (96); must be divisible by 16.
    n_image_channels : int
        Image channels in front of the segmentation channels (1).

    Notes
    -----
    Encoder: four 4x4 convolutions with stride 2, each followed by ReLU (96 -> 48 -> 24 -> 12 -> 6), flatten, and
    one fully connected layer to ``2 * latent_size`` values (mean and log-variance). Decoder: a fully connected
    layer back to ``features[-1] x 6 x 6``, four 4x4 transposed convolutions with stride 2 (ReLU between them) and a
    sigmoid on the last. ``forward`` samples ``z`` with the reparameterisation trick in training mode and uses the
    mean in eval mode, so evaluation is deterministic.

    forward(x): x (batch, n_image_channels + n_structures, input_size, input_size) float32 in [0, 1];
    returns (reconstruction of the same shape in (0, 1), mu (batch, latent_size), logvar (batch, latent_size)).
    """

    def __init__(
        self,
        *,
        n_structures: int = 3,
        latent_size: int = 8,
        features: Sequence[int] = DEFAULT_FEATURES,
        input_size: int = 96,
        n_image_channels: int = 1,
    ) -> None:
        super().__init__()
        for name, value in (("n_structures", n_structures), ("latent_size", latent_size),
                            ("n_image_channels", n_image_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"SegmentationVAE: {name} must be a positive integer, got {value!r}.")
        features = tuple(features)
        if len(features) != 4 or not all(isinstance(f, int) and f >= 1 for f in features):
            raise InputError(f"SegmentationVAE: features must be 4 positive integers, got {features!r}.")
        if not isinstance(input_size, int) or input_size < 16 or input_size % 16:
            raise InputError(
                f"SegmentationVAE: input_size must be a multiple of 16 (four stride-2 layers), got {input_size!r}."
            )
        self.n_structures = n_structures
        self.n_image_channels = n_image_channels
        self.in_channels = n_image_channels + n_structures
        self.latent_size = latent_size
        self.input_size = input_size
        self.features = features
        self._bottom = input_size // 16

        layers: list[nn.Module] = []
        previous = self.in_channels
        for channels in features:
            layers += [nn.Conv2d(previous, channels, 4, stride=2, padding=1), nn.ReLU()]
            previous = channels
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        flat = features[-1] * self._bottom**2
        self.to_latent = nn.Linear(flat, 2 * latent_size)

        self.from_latent = nn.Linear(latent_size, flat)
        reversed_features = list(reversed(features))
        layers = []
        for channels_in, channels_out in zip(reversed_features, reversed_features[1:]):
            layers += [nn.ReLU(), nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.ConvTranspose2d(reversed_features[-1], self.in_channels, 4, stride=2, padding=1)]
        self.decoder = nn.Sequential(*layers, nn.Sigmoid())

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise InputError(
                f"SegmentationVAE expects input (batch, {expected[0]}, {expected[1]}, {expected[2]}) "
                f"(image + {self.n_structures} structure channels), got {tuple(x.shape)}."
            )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, C, S, S) pairs -> (mu, logvar), each (batch, latent_size)."""
        self._check_input(x)
        mu, logvar = self.to_latent(self.encoder(x)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(batch, latent_size) latent codes -> (batch, C, S, S) pairs with values in (0, 1)."""
        if z.ndim != 2 or z.shape[1] != self.latent_size:
            raise InputError(f"decode expects z of shape (batch, {self.latent_size}), got {tuple(z.shape)}.")
        hidden = self.from_latent(z).view(-1, self.features[-1], self._bottom, self._bottom)
        return self.decoder(hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decode(z), mu, logvar


def reconstruction_loss(
    recon: torch.Tensor, x: torch.Tensor, *, n_image_channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample BCE on the segmentation channels and MSE on the image channels.

    Parameters
    ----------
    recon, x : (batch, C, j, i) float tensors
        Decoder output in (0, 1) and the target pair (image in [0, 1], binary structure channels).
    n_image_channels : int
        Leading channels that hold the image.

    Returns
    -------
    bce, mse : (batch,) tensors
        Means over every pixel and channel of the segmentation part and of the image part of each sample.
    """
    if recon.shape != x.shape or x.ndim != 4:
        raise InputError(f"recon {tuple(recon.shape)} and x {tuple(x.shape)} must be equal (batch, C, j, i) shapes.")
    if not 0 < n_image_channels < x.shape[1]:
        raise InputError(
            f"n_image_channels must leave at least one segmentation channel: got {n_image_channels} of {x.shape[1]}."
        )
    k = n_image_channels
    bce = F.binary_cross_entropy(recon[:, k:], x[:, k:], reduction="none").mean(dim=(1, 2, 3))
    mse = F.mse_loss(recon[:, :k], x[:, :k], reduction="none").mean(dim=(1, 2, 3))
    return bce, mse


def vae_loss(
    recon: torch.Tensor,
    x: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    beta: float = 0.01,
    n_image_channels: int = 1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's equations 3-4: BCE(segmentation) + MSE(image) + beta * KL(N(mu, sigma^2) || N(0, I)).

    Parameters
    ----------
    recon, x : (batch, C, j, i) float tensors
        Decoder output in (0, 1) and the target pair; channels ``[:n_image_channels]`` are the image.
    mu, logvar : (batch, latent_size) tensors
        Encoder outputs.
    beta : float
        Weight of the KL term (0.01 in the paper; Table A1 ablates it).

    Returns
    -------
    total : scalar tensor
        ``sum-BCE + sum-MSE + beta * kl`` per sample, averaged over the batch.
    parts : dict
        ``"bce"``, ``"mse"`` (per-pixel means, comparable across image sizes) and ``"kl"`` scalar tensors
        (detached), for logging.

    Notes
    -----
    Reduction: BCE and MSE are summed over the pixels (and channels) of each sample, KL over the latent dimensions,
    as in the usual (Keras) VAE implementation the paper builds on. With per-pixel means instead, beta = 0.01 weighs
    the KL term about 10^4 times more: on ACDC the KL then stayed near 3 nats, the latent space was barely used and
    the reconstructed myocardium reached a Dice of only 0.32 against the ground truth (CPU-2, 2026-11-26).
    """
    if beta < 0:
        raise InputError(f"beta must be >= 0, got {beta}.")
    if mu.shape != logvar.shape or mu.ndim != 2 or mu.shape[0] != x.shape[0]:
        raise InputError(f"mu {tuple(mu.shape)} and logvar {tuple(logvar.shape)} must be (batch, latent_size).")
    bce, mse = reconstruction_loss(recon, x, n_image_channels=n_image_channels)
    kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    n_image_values = n_image_channels * x.shape[2] * x.shape[3]
    n_segmentation_values = (x.shape[1] - n_image_channels) * x.shape[2] * x.shape[3]
    total = (bce * n_segmentation_values).mean() + (mse * n_image_values).mean() + beta * kl.mean()
    parts = {"bce": bce.mean().detach(), "mse": mse.mean().detach(), "kl": kl.mean().detach()}
    return total, parts
