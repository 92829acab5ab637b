"""Regional (base / middle / apex) analysis of short-axis segmentations.

After *Improved AI-based segmentation of apical and basal slices from clinical cine CMR* (regional analysis): each
slice of a short-axis stack is put in one of four regions using the **reference** segmentation. Slices without any
reference label are non-cardiac; the labelled slices, ordered from base to apex, are split 20 % / 60 % / 20 % into
base, middle and apex. Per-slice Dice is then summarised per region and label (the paper's Table 1: mean and SD,
Welch's unequal-variance t-test of base and apex against middle), and drawn as a profile from base to apex
interpolated to 101 points (the paper's Fig. 2).

Region rule (exact, no floating-point ties)
-------------------------------------------
With ``n`` labelled slices and rank ``r = 0 .. n-1`` counted from the base, the slice's position is
``(r + 0.5) / n`` (its centre as a fraction of the labelled stack). Position < 0.2 -> base, < 0.8 -> middle,
otherwise apex. Hence base and apex each get ``round(0.2 n)`` slices (never a tie for integer ``n``):

==========  ====  ======  ====
labelled    base  middle  apex
==========  ====  ======  ====
1           0     1       0
2           0     2       0
3           1     1       1
4           1     2       1
5           1     3       1
8           2     4       2
10          2     6       2
==========  ====  ======  ====

So a stack with 5 or more labelled slices always has every region, and a stack with 1-2 labelled slices is all
middle (neither slice centre lies in the outer 20 %). Unlabelled slices between labelled ones are non-cardiac and
do not count in ``n``.
"""
from __future__ import annotations

import enum
import logging
import warnings
from typing import Iterable, NamedTuple, Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from ..errors import InputError
from ..geometry import Volume
from .overlap import (
    DEFAULT_LABELS,
    _as_labels,
    _check_labels_arg,
    _check_same_shape,
    _structure_name,
    dice_per_slice,
)
from .tables import format_markdown_table

__all__ = [
    "CardiacRegion",
    "TTest",
    "assign_slice_regions",
    "regional_dice",
    "dice_profile",
    "welch_t_test",
    "paired_t_test",
    "compare_regions",
    "format_region_comparison",
]

log = logging.getLogger(__name__)

class CardiacRegion(enum.IntEnum):
    """Region code of a short-axis slice; ``.label`` gives the name used in tables ("base", "non_cardiac")."""

    NON_CARDIAC = 0
    BASE = 1
    MIDDLE = 2
    APEX = 3

    @property
    def label(self) -> str:
        """Lower-case name used in tables: ``non_cardiac``, ``base``, ``middle``, ``apex``."""
        return self.name.lower()


_HEART_REGIONS = (CardiacRegion.BASE, CardiacRegion.MIDDLE, CardiacRegion.APEX)


class TTest(NamedTuple):
    """Result of a t-test: statistic and two-sided p-value (unpacks as ``t, p``)."""

    t: float
    p: float


def _labelled_slices(true: np.ndarray, codes: tuple[int, ...] | None) -> NDArray[np.intp]:
    """Indices of slices holding any reference label (or any of ``codes``)."""
    present = np.isin(true, codes) if codes is not None else true != 0
    return np.flatnonzero(present.reshape(true.shape[0], -1).any(axis=1))


def _check_3d(array: np.ndarray, name: str) -> None:
    if array.ndim != 3:
        raise InputError(
            f"{name} must be a (k, j, i) short-axis stack, got a {array.ndim}D array of shape {array.shape}."
        )


def assign_slice_regions(
    true_labels: NDArray,
    *,
    labels: Sequence[int] | None = None,
    base_first: bool = True,
) -> NDArray[np.int8]:
    """Cardiac region of every slice of a short-axis stack, from its reference segmentation.

    Parameters
    ----------
    true_labels : (k, j, i) integer ndarray
        Reference label map; slices are along k.
    labels : sequence of int, optional
        Codes that make a slice "labelled" (default: any non-zero code).
    base_first : bool
        True when k = 0 is the basal end of the stack (almost every ACDC volume); False when k runs from apex
        to base.

    Returns
    -------
    (k,) int8 ndarray
        :class:`CardiacRegion` codes: 0 non-cardiac, 1 base, 2 middle, 3 apex (rule in the module docstring).

    Raises
    ------
    InputError
        If ``true_labels`` is not a 3D label map.
    """
    true = _as_labels(true_labels, "true_labels")
    _check_3d(true, "true_labels")
    codes = _check_labels_arg(labels) if labels is not None else None
    labelled = _labelled_slices(true, codes)
    regions = np.full(true.shape[0], CardiacRegion.NON_CARDIAC, dtype=np.int8)
    n = labelled.size
    if n == 0:
        return regions
    if not base_first:
        labelled = labelled[::-1]
    rank = np.arange(n)
    # position (r + 0.5) / n compared with 0.2 and 0.8 in integers: 10 r + 5 < 2 n  and  10 r + 5 < 8 n.
    twice_ten_position = 10 * rank + 5
    region = np.where(
        twice_ten_position < 2 * n,
        CardiacRegion.BASE,
        np.where(twice_ten_position < 8 * n, CardiacRegion.MIDDLE, CardiacRegion.APEX),
    )
    regions[labelled] = region
    return regions


def _slice_dice_by_region(
    pred_labels: object,
    true_labels: object,
    codes: tuple[int, ...],
    base_first: bool,
) -> dict[tuple[CardiacRegion, int], NDArray[np.float64]]:
    """{(region, code): finite per-slice Dice values} for base, middle and apex of one stack."""
    pred = _as_labels(pred_labels, "pred_labels")
    true = _as_labels(true_labels, "true_labels")
    _check_same_shape(pred, true, "pred_labels", "true_labels")
    _check_3d(true, "true_labels")
    per_slice = dice_per_slice(pred, true, codes)
    regions = assign_slice_regions(true, base_first=base_first)
    result = {}
    for region in _HEART_REGIONS:
        rows = per_slice[regions == region]
        for column, code in enumerate(codes):
            values = rows[:, column]
            result[(region, code)] = values[np.isfinite(values)]
    return result


def _mean_sd(values: NDArray[np.float64]) -> tuple[float, float]:
    mean = float(values.mean()) if values.size else float("nan")
    sd = float(values.std(ddof=1)) if values.size >= 2 else float("nan")
    return mean, sd


def regional_dice(
    pred_labels: NDArray,
    true_labels: NDArray,
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    base_first: bool = True,
) -> list[dict[str, object]]:
    """Per-slice Dice of one stack summarised by region and label.

    Slices get their region from ``true_labels`` (:func:`assign_slice_regions`). A slice where a structure is absent
    from both maps has no Dice for it (NaN, dropped); where only one map has it the Dice is 0 and is kept.
    Non-cardiac slices are not reported (their Dice is 0 or undefined by construction).

    Parameters
    ----------
    pred_labels, true_labels : (k, j, i) integer ndarray, same shape
        Predicted and reference label maps.
    labels : sequence of int
        Structures to score (default 1 RV blood pool, 2 LV myocardium, 3 LV blood pool).
    base_first : bool
        See :func:`assign_slice_regions`.

    Returns
    -------
    list of dict
        One row per (region, label) in the order base, middle, apex: ``region`` (str), ``label`` (int code),
        ``structure`` (name from the label table), ``mean`` and ``sd`` (Dice as a fraction 0..1; SD with ddof=1,
        NaN with fewer than 2 slices), ``n`` (number of slices with a defined Dice).

    Raises
    ------
    InputError
        If the maps are not 3D or differ in shape, or ``labels`` is invalid.
    """
    codes = _check_labels_arg(labels)
    values = _slice_dice_by_region(pred_labels, true_labels, codes, base_first)
    rows: list[dict[str, object]] = []
    for region in _HEART_REGIONS:
        for code in codes:
            v = values[(region, code)]
            mean, sd = _mean_sd(v)
            rows.append(
                {"region": region.label, "label": code, "structure": _structure_name(code), "mean": mean,
                 "sd": sd, "n": int(v.size)}
            )
    return rows


def dice_profile(
    pred_labels: NDArray,
    true_labels: NDArray,
    label: int,
    *,
    n_points: int = 101,
    base_first: bool = True,
) -> NDArray[np.float64]:
    """Per-slice Dice of one structure from base (0) to apex (1), linearly interpolated to ``n_points``.

    The labelled slices of ``true_labels`` (any non-zero code, as :func:`assign_slice_regions`) are placed at
    positions ``r / (n - 1)``, r = 0 (basal-most) .. n - 1 (apical-most); their Dice values are interpolated onto
    ``numpy.linspace(0, 1, n_points)``. Profiles of stacks with different slice counts can then be averaged point by
    point (``numpy.nanmean``), as in the paper's Fig. 2.

    Slices where ``label`` is absent from both maps have no Dice; the profile interpolates across them and is NaN
    before the first and after the last slice that has one. A single labelled slice gives a constant profile; no
    labelled slice (or no defined Dice) gives all NaN.

    Parameters
    ----------
    pred_labels, true_labels : (k, j, i) integer ndarray, same shape
        Predicted and reference label maps.
    label : int
        Structure code, e.g. 3 for the LV blood pool.
    n_points : int, >= 2
        Number of profile samples (default 101, i.e. steps of 1 %).
    base_first : bool
        See :func:`assign_slice_regions`.

    Returns
    -------
    (n_points,) float64 ndarray
        Dice (0..1) at positions 0, 1/(n_points-1), ..., 1 from base to apex.

    Raises
    ------
    InputError
        If the maps are not 3D or differ in shape, ``label`` is 0, or ``n_points`` < 2.
    """
    if int(n_points) != n_points or n_points < 2:
        raise InputError(f"n_points must be an integer >= 2, got {n_points!r}.")
    code = _check_labels_arg((label,))
    pred = _as_labels(pred_labels, "pred_labels")
    true = _as_labels(true_labels, "true_labels")
    _check_same_shape(pred, true, "pred_labels", "true_labels")
    _check_3d(true, "true_labels")
    grid = np.linspace(0.0, 1.0, int(n_points))
    labelled = _labelled_slices(true, None)
    if not base_first:
        labelled = labelled[::-1]
    if labelled.size == 0:
        return np.full(grid.shape, np.nan)
    values = dice_per_slice(pred[labelled], true[labelled], code)[:, 0]
    if labelled.size == 1:
        return np.full(grid.shape, values[0])
    positions = np.arange(labelled.size) / (labelled.size - 1)
    defined = np.isfinite(values)
    if not defined.any():
        return np.full(grid.shape, np.nan)
    return np.interp(grid, positions[defined], values[defined], left=np.nan, right=np.nan)


def _as_float_vector(values: object, name: str) -> NDArray[np.float64]:
    try:
        array = np.asarray(values, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a sequence of numbers, got {type(values).__name__}.") from e
    return array


def welch_t_test(a: Sequence[float] | NDArray, b: Sequence[float] | NDArray) -> TTest:
    """Welch's unequal-variance t-test of two independent samples (``scipy.stats.ttest_ind(equal_var=False)``).

    NaN values are dropped first (e.g. Dice of slices where a structure is absent from both maps).

    Parameters
    ----------
    a, b : sequence of float
        The two samples, e.g. per-slice Dice of basal and of middle slices.

    Returns
    -------
    TTest
        ``(t, p)``, two-sided. ``t > 0`` when ``a`` has the larger mean. NaN when both samples are constant.

    Raises
    ------
    InputError
        If either sample has fewer than 2 non-NaN values.
    """
    x = _as_float_vector(a, "a")
    y = _as_float_vector(b, "b")
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    for name, sample in (("a", x), ("b", y)):
        if sample.size < 2:
            raise InputError(
                f"welch_t_test needs at least 2 non-NaN values in each sample; {name} has {sample.size}."
            )
    with warnings.catch_warnings():  # identical samples (a perfect prediction): NaN, as documented, not a warning
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        result = stats.ttest_ind(x, y, equal_var=False)
    return TTest(float(result.statistic), float(result.pvalue))


def paired_t_test(a: Sequence[float] | NDArray, b: Sequence[float] | NDArray) -> TTest:
    """Paired Student's t-test (``scipy.stats.ttest_rel``), e.g. the same slices scored by two methods.

    Pairs where either value is NaN are dropped.

    Parameters
    ----------
    a, b : sequence of float, same length
        Paired measurements, ``a[i]`` with ``b[i]``.

    Returns
    -------
    TTest
        ``(t, p)``, two-sided; ``t > 0`` when ``a`` is larger on average.

    Raises
    ------
    InputError
        If the lengths differ or fewer than 2 complete pairs remain.
    """
    x = _as_float_vector(a, "a")
    y = _as_float_vector(b, "b")
    if x.size != y.size:
        raise InputError(f"paired_t_test needs samples of equal length, got {x.size} and {y.size} values.")
    keep = ~(np.isnan(x) | np.isnan(y))
    if np.count_nonzero(keep) < 2:
        raise InputError(
            f"paired_t_test needs at least 2 pairs without NaN; {np.count_nonzero(keep)} of {x.size} remain."
        )
    result = stats.ttest_rel(x[keep], y[keep])
    return TTest(float(result.statistic), float(result.pvalue))


def _unwrap_pair(pair: object, index: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        pred, true = pair  # type: ignore[misc]
    except (TypeError, ValueError) as e:
        raise InputError(f"Case {index}: expected a (pred, true) pair, got {type(pair).__name__}.") from e
    if isinstance(pred, Volume) and isinstance(true, Volume):
        if not pred.geometry.is_close(true.geometry):
            raise InputError(
                f"Case {index}: prediction and reference geometries differ ({pred.geometry} vs {true.geometry}); "
                "resample the prediction onto the reference grid first."
            )
        return pred.array, true.array
    if isinstance(pred, Volume) or isinstance(true, Volume):
        raise InputError(f"Case {index}: pass both pred and true as Volumes or both as arrays.")
    return pred, true  # type: ignore[return-value]


def compare_regions(
    pairs: Iterable[tuple[NDArray | Volume, NDArray | Volume]],
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    base_first: bool = True,
) -> list[dict[str, object]]:
    """The paper's Table 1: per-slice Dice pooled over cases, by region and label, with Welch tests against middle.

    Parameters
    ----------
    pairs : iterable of (pred, true)
        One pair per short-axis stack (case and phase): (k, j, i) integer label maps, or two :class:`Volume` with
        matching geometry. Regions come from ``true``.
    labels : sequence of int
        Structures (table rows), default 1 RV blood pool, 2 LV myocardium, 3 LV blood pool.
    base_first : bool
        See :func:`assign_slice_regions`; the same for every stack.

    Returns
    -------
    list of dict
        One row per label: ``label``, ``structure``, then for each of ``base``, ``middle``, ``apex``:
        ``{region}_mean``, ``{region}_sd`` (Dice fraction 0..1, SD ddof=1) and ``{region}_n`` (slices), then
        ``p_base_vs_middle`` and ``p_apex_vs_middle`` (Welch, two-sided). A p-value is NaN, with a logged warning,
        when a region has fewer than 2 slices with a defined Dice.

    Raises
    ------
    InputError
        If ``pairs`` is empty, or a pair is invalid (see :func:`regional_dice`).
    """
    codes = _check_labels_arg(labels)
    pooled: dict[tuple[CardiacRegion, int], list[NDArray[np.float64]]] = {
        (region, code): [] for region in _HEART_REGIONS for code in codes
    }
    n_cases = 0
    for index, pair in enumerate(pairs):
        pred, true = _unwrap_pair(pair, index)
        for key, values in _slice_dice_by_region(pred, true, codes, base_first).items():
            pooled[key].append(values)
        n_cases += 1
    if n_cases == 0:
        raise InputError("compare_regions got no cases; pass an iterable of (pred, true) label-map pairs.")
    rows: list[dict[str, object]] = []
    for code in codes:
        row: dict[str, object] = {"label": code, "structure": _structure_name(code)}
        samples = {}
        for region in _HEART_REGIONS:
            values = np.concatenate(pooled[(region, code)])
            samples[region] = values
            mean, sd = _mean_sd(values)
            row[f"{region.label}_mean"] = mean
            row[f"{region.label}_sd"] = sd
            row[f"{region.label}_n"] = int(values.size)
        for region in (CardiacRegion.BASE, CardiacRegion.APEX):
            key = f"p_{region.label}_vs_middle"
            if samples[region].size < 2 or samples[CardiacRegion.MIDDLE].size < 2:
                log.warning(
                    "%s: %s has %d and middle %d slices with a Dice; %s is NaN (Welch needs 2 each).",
                    _structure_name(code), region.label, samples[region].size,
                    samples[CardiacRegion.MIDDLE].size, key,
                )
                row[key] = float("nan")
            else:
                row[key] = welch_t_test(samples[region], samples[CardiacRegion.MIDDLE]).p
        rows.append(row)
    return rows


def format_region_comparison(
    rows: Sequence[dict[str, object]],
    *,
    alpha: float = 0.01,
    percent: bool = True,
    digits: int = 2,
) -> str:
    """Markdown table in the paper's Table 1 layout: ``mean* (SD)`` per region, one line per label.

    Parameters
    ----------
    rows : sequence of dict
        Output of :func:`compare_regions`.
    alpha : float
        An asterisk marks base or apex when its Welch p-value against middle is below ``alpha`` (paper: 0.01).
    percent : bool
        Show Dice in percent (as the paper) instead of a fraction.
    digits : int
        Decimals.

    Returns
    -------
    str
        Markdown table with columns Label, Base, Middle, Apex.

    Raises
    ------
    InputError
        If a row lacks a column of :func:`compare_regions`.
    """
    scale = 100.0 if percent else 1.0
    table = []
    for index, row in enumerate(rows):
        line: dict[str, object] = {"Label": row.get("structure", row.get("label"))}
        for region in _HEART_REGIONS:
            try:
                mean = float(row[f"{region.label}_mean"]) * scale  # type: ignore[arg-type]
                sd = float(row[f"{region.label}_sd"]) * scale  # type: ignore[arg-type]
                p = float(row.get(f"p_{region.label}_vs_middle", float("nan")))  # type: ignore[arg-type]
            except KeyError as e:
                raise InputError(f"Row {index} lacks column {e}; pass the rows of compare_regions.") from None
            star = "*" if p < alpha else ""  # NaN compares False
            mean_text = "n/a" if np.isnan(mean) else f"{mean:.{digits}f}"
            sd_text = "n/a" if np.isnan(sd) else f"{sd:.{digits}f}"
            line[region.label.capitalize()] = f"{mean_text}{star} ({sd_text})"
        table.append(line)
    return format_markdown_table(table, ["Label", "Base", "Middle", "Apex"])
