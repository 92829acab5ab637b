"""Region-aware non-uniform batch sampling (quadratic in the slice position from base to apex).

From "Region-aware basal/apical segmentation" (approach 1, *non-uniform batch sampling*): for every mini-batch,
basal and apical slices are more likely to be drawn than mid-ventricular ones, through a quadratic probability
distribution whose lower and upper limits set the minimum and maximum sampling probabilities; non-cardiac slices keep
their usual probability. The paper tried max/min ratios of 4 ("low") and 20 ("high"; better).

With ``p`` in [0, 1] the slice's normalised position (0 base, 1 apex) and ``r`` the max/min ratio, the weight is::

    w(p) = w_min * (1 + (r - 1) * (2 p - 1) ** 2),   w_min = 3 / (r + 2)

``w_min`` makes the mean of ``w`` over uniformly spread positions 1, the weight of a non-cardiac slice (position
NaN), so the share of cardiac versus non-cardiac slices stays as with uniform sampling.
"""
from __future__ import annotations

import logging
import math
from typing import Iterator

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ..errors import InputError

__all__ = ["quadratic_position_weights", "QuadraticPositionSampler"]

log = logging.getLogger(__name__)


def quadratic_position_weights(positions: ArrayLike, *, ratio: float = 20.0) -> NDArray[np.float64]:
    """Sampling weight of each slice from its normalised base-to-apex position.

    Parameters
    ----------
    positions : (n,) array of float
        0 at the base, 1 at the apex; NaN for non-cardiac slices (weight 1, as uniform sampling).
    ratio : float
        Weight at the ends (p = 0 or 1) divided by the weight in the middle (p = 0.5); at least 1 (1 = uniform).

    Returns
    -------
    (n,) float64 ndarray
        Unnormalised weights; mean 1 over uniformly spread positions.

    Raises
    ------
    InputError
        If ``positions`` is not 1D, holds values outside [0, 1] (other than NaN), or ``ratio < 1``.
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 1:
        raise InputError(f"positions must be a 1D sequence of slice positions, got shape {p.shape}.")
    finite = np.isfinite(p)
    if np.any(p[finite] < 0) or np.any(p[finite] > 1) or np.any(np.isinf(p)):
        bad = p[~np.isnan(p) & ((p < 0) | (p > 1) | np.isinf(p))][:5]
        raise InputError(
            f"positions must lie in [0, 1] (0 base, 1 apex) or be NaN for non-cardiac slices; found {bad.tolist()}."
        )
    if not ratio >= 1:
        raise InputError(f"ratio (max/min sampling probability) must be >= 1, got {ratio}; the paper used 4 and 20.")
    w_min = 3.0 / (ratio + 2.0)
    weights = np.ones_like(p)
    weights[finite] = w_min * (1.0 + (ratio - 1.0) * (2.0 * p[finite] - 1.0) ** 2)
    return weights


class QuadraticPositionSampler:
    """Batch sampler drawing slices with :func:`quadratic_position_weights`, with replacement.

    Pass it as ``batch_sampler`` to a ``DataLoader`` or to :class:`~cardiac_ai.training.engine.Trainer`.

    Parameters
    ----------
    positions : (n,) array of float
        One normalised position per dataset item (0 base, 1 apex, NaN non-cardiac), in dataset order.
    batch_size : int
        Items per batch.
    num_batches : int
        Batches per epoch over all processes (nnU-Net's 250); each of ``num_replicas`` ranks yields
        ``ceil(num_batches / num_replicas)`` of them, so all ranks take the same number of steps.
    ratio : float
        Max/min sampling probability ratio (4 "low", 20 "high" in the paper).
    seed : int
        With the epoch (:meth:`set_epoch`) it fixes the draw: the same seed and epoch give the same batches, which
        makes resumed training identical to uninterrupted training.
    num_replicas, rank : int
        DDP world size and this process's rank; ranks take interleaved batches of one shared draw.

    Raises
    ------
    InputError
        For an empty ``positions``, non-positive sizes, or a rank outside ``0 .. num_replicas - 1``.
    """

    def __init__(
        self,
        positions: ArrayLike,
        *,
        batch_size: int,
        num_batches: int,
        ratio: float = 20.0,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        weights = quadratic_position_weights(positions, ratio=ratio)
        if weights.size == 0:
            raise InputError("QuadraticPositionSampler needs at least one slice position, got none.")
        if batch_size < 1 or num_batches < 1:
            raise InputError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise InputError(f"rank must be in 0 .. num_replicas - 1, got rank {rank} of {num_replicas}.")
        self.probabilities = weights / weights.sum()
        self.batch_size = int(batch_size)
        self.num_batches = int(num_batches)
        self.ratio = float(ratio)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_batches / self.num_replicas)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        per_rank = len(self)
        draws = rng.choice(
            self.probabilities.size, size=(per_rank * self.num_replicas, self.batch_size), p=self.probabilities
        )
        for batch in draws[self.rank :: self.num_replicas]:
            yield batch.tolist()

