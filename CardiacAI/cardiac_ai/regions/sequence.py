"""Anatomically consistent cardiac regions along a short-axis stack.

A slice classifier (the region-aware approach of *Improved AI-based segmentation of apical and basal slices from
clinical cine CMR*) labels each slice independently as non-cardiac, base, middle or apex
(:class:`~cardiac_ai.metrics.regional.CardiacRegion`). Independent decisions can contradict anatomy, e.g. base,
middle, base, middle, apex. :func:`decode_monotonic_regions` returns instead the most probable sequence that obeys
the grammar of a stack read from base to apex::

    NON_CARDIAC*  BASE*  MIDDLE*  APEX*  NON_CARDIAC*

Every part may be empty (a stack without apical slices, or starting mid-ventricle), but the cardiac slices are
contiguous: no non-cardiac slice between two cardiac ones, and no step back towards the base.

Decoding is exact maximum a posteriori under independent per-slice probabilities restricted to that grammar
(Viterbi, i.e. dynamic programming over five states: leading non-cardiac, base, middle, apex, trailing
non-cardiac; every forward move allowed, no transition penalty). With k slices it costs O(k) time.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError
from ..metrics.regional import CardiacRegion

__all__ = ["DecodedRegions", "decode_monotonic_regions", "region_positions"]

log = logging.getLogger(__name__)

#: Region code emitted by each decoder state: leading non-cardiac, base, middle, apex, trailing non-cardiac.
_STATE_CODES = np.array(
    [CardiacRegion.NON_CARDIAC, CardiacRegion.BASE, CardiacRegion.MIDDLE, CardiacRegion.APEX,
     CardiacRegion.NON_CARDIAC],
    dtype=np.intp,
)
_N_STATES = _STATE_CODES.size
#: _ALLOWED[a, b]: state b may follow state a. Forward moves only; leading -> trailing non-cardiac is excluded
#: (an all non-cardiac stack stays in the leading state), so every valid region sequence has exactly one path.
_ALLOWED = np.triu(np.ones((_N_STATES, _N_STATES), dtype=bool))
_ALLOWED[0, _N_STATES - 1] = False
_N_CLASSES = len(CardiacRegion)
_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DecodedRegions:
    """Result of :func:`decode_monotonic_regions`.

    Attributes
    ----------
    regions : (k,) int8 ndarray
        :class:`CardiacRegion` code of each slice, in the input's slice order.
    log_likelihood : float
        Sum over slices of ``log(max(p[k, regions[k]], min_prob))`` (natural log, <= 0).
    changed : (k,) bool ndarray
        True where ``regions`` differs from the independent per-slice argmax.
    """

    regions: NDArray[np.int8]
    log_likelihood: float
    changed: NDArray[np.bool_]

    @property
    def n_changed(self) -> int:
        """Number of slices whose region the grammar overruled."""
        return int(np.count_nonzero(self.changed))


def _check_probabilities(probabilities: object) -> NDArray[np.float64]:
    try:
        p = np.asarray(probabilities, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(
            f"probabilities must be a numeric (k, {_N_CLASSES}) array, got {type(probabilities).__name__}."
        ) from e
    if p.ndim != 2 or p.shape[1] != _N_CLASSES:
        raise InputError(
            f"probabilities must have shape (k, {_N_CLASSES}) (one row per slice, columns non-cardiac, base, "
            f"middle, apex), got shape {p.shape}."
        )
    if p.shape[0] == 0:
        raise InputError("probabilities has no slices (k == 0); pass one row per slice of the stack.")
    if not np.all(np.isfinite(p)):
        bad = np.flatnonzero(~np.all(np.isfinite(p), axis=1))
        raise InputError(f"probabilities holds NaN or infinite values in slice(s) {bad.tolist()}.")
    sums = p.sum(axis=1)
    bad_rows = np.flatnonzero((np.abs(sums - 1.0) > _SUM_TOLERANCE) | np.any(p < -_SUM_TOLERANCE, axis=1))
    if bad_rows.size:
        first = int(bad_rows[0])
        raise InputError(
            f"probabilities must be per-slice probabilities (non-negative, each row summing to 1), but "
            f"{bad_rows.size} row(s) do not, e.g. slice {first}: {p[first].tolist()} (sum {sums[first]:.4g}). "
            "If these are logits, apply a softmax over the last axis first."
        )
    return p


def _viterbi(log_p: NDArray[np.float64]) -> NDArray[np.intp]:
    """Most probable state path (k,) for log emission scores (k, 4) under the grammar; ties go to earlier states."""
    k = log_p.shape[0]
    emission = log_p[:, _STATE_CODES]  # (k, states)
    forbidden = np.where(_ALLOWED, 0.0, -np.inf)  # (from, to)
    score = emission[0].copy()
    back = np.zeros((k, _N_STATES), dtype=np.intp)
    for step in range(1, k):
        candidates = score[:, None] + forbidden  # (from, to)
        back[step] = np.argmax(candidates, axis=0)
        score = candidates[back[step], np.arange(_N_STATES)] + emission[step]
    path = np.empty(k, dtype=np.intp)
    path[-1] = int(np.argmax(score))
    for step in range(k - 1, 0, -1):
        path[step - 1] = back[step, path[step]]
    return path


def decode_monotonic_regions(
    probabilities: NDArray[np.floating],
    *,
    base_first: bool = True,
    min_prob: float = 1e-6,
) -> DecodedRegions:
    """Most probable per-slice regions that respect the base-to-apex order of the heart.

    Parameters
    ----------
    probabilities : (k, 4) float ndarray
        Per-slice class probabilities (softmax outputs, not logits), columns indexed by :class:`CardiacRegion`
        code: 0 non-cardiac, 1 base, 2 middle, 3 apex. Each row must sum to 1 within 1e-3.
    base_first : bool
        True when k = 0 is the basal end of the stack (ACDC); False when k runs from apex to base (the stack is
        decoded reversed and the result put back in the input order).
    min_prob : float, 0 < min_prob < 1
        Probabilities are clipped to at least this before taking logs, so a class the classifier rules out
        (p = 0) can still be chosen when the grammar demands it.

    Returns
    -------
    DecodedRegions
        ``regions`` (k,) int8 in the input's slice order, the path's ``log_likelihood`` and ``changed`` (k,) bool
        against the independent argmax. A sequence that already obeys the grammar is returned unchanged.

    Raises
    ------
    InputError
        If ``probabilities`` is not (k, 4) with k >= 1, holds NaN or infinities, has negative values or rows not
        summing to 1 (e.g. logits), or ``min_prob`` is outside (0, 1).

    Notes
    -----
    The grammar along k from base to apex is ``NON_CARDIAC* BASE* MIDDLE* APEX* NON_CARDIAC*``. Each of the five
    parts may be empty, so stacks without base or apex slices, or entirely non-cardiac, are allowed; a
    non-cardiac slice between cardiac ones is not. No transition penalty is used: among valid sequences the
    decoder maximises ``sum_k log p[k, region_k]`` exactly.
    """
    p = _check_probabilities(probabilities)
    if not (0.0 < float(min_prob) < 1.0):
        raise InputError(f"min_prob must be in (0, 1), got {min_prob!r}; the default 1e-6 suits softmax outputs.")
    ordered = p if base_first else p[::-1]
    log_p = np.log(np.maximum(ordered, float(min_prob)))
    path = _viterbi(log_p)
    regions = _STATE_CODES[path].astype(np.int8)
    log_likelihood = float(log_p[np.arange(log_p.shape[0]), regions].sum())
    if not base_first:
        regions = regions[::-1].copy()
    changed = regions != np.argmax(p, axis=1)
    if changed.any():
        log.debug("Region decoding overruled the classifier on %d of %d slices.", changed.sum(), changed.size)
    return DecodedRegions(regions=regions, log_likelihood=log_likelihood, changed=changed)


def region_positions(regions: NDArray[np.integer], *, base_first: bool = True) -> NDArray[np.float32]:
    """Normalised position of each cardiac slice from base (0) to apex (1), NaN for non-cardiac slices.

    The cardiac slices (code != 0), in stack order, get ``numpy.linspace(0, 1, n)``; a single cardiac slice gets
    0.5. This is the position the training code attaches to each slice, so a model conditioned on position sees
    the same values at inference.

    Parameters
    ----------
    regions : (k,) integer ndarray
        :class:`CardiacRegion` codes per slice, e.g. ``decode_monotonic_regions(...).regions``.
    base_first : bool
        True when k = 0 is the basal end; False puts position 0 at the highest-k cardiac slice.

    Returns
    -------
    (k,) float32 ndarray
        Positions in [0, 1] for cardiac slices, NaN elsewhere.

    Raises
    ------
    InputError
        If ``regions`` is not 1D or holds codes other than 0-3.
    """
    r = np.asarray(regions)
    if r.ndim != 1:
        raise InputError(f"regions must be a (k,) array of region codes, got shape {r.shape}.")
    if r.size and (not np.issubdtype(r.dtype, np.integer) or r.min() < 0 or r.max() >= _N_CLASSES):
        raise InputError(
            f"regions must hold integer CardiacRegion codes 0-{_N_CLASSES - 1}, got dtype {r.dtype} with values "
            f"{np.unique(r).tolist()[:10]}."
        )
    cardiac = np.flatnonzero(r != CardiacRegion.NON_CARDIAC)
    if not base_first:
        cardiac = cardiac[::-1]
    positions = np.full(r.shape, np.nan, dtype=np.float32)
    if cardiac.size == 1:
        positions[cardiac] = 0.5
    elif cardiac.size > 1:
        positions[cardiac] = np.linspace(0.0, 1.0, cardiac.size, dtype=np.float32)
    return positions
