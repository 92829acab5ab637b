"""Quality control of one segmentation without ground truth: the integration of the QC building blocks.

:func:`assess_segmentation` predicts the Dice of every slice and structure of a short-axis stack, with the CNN Dice
regressor (Robinson et al. 2018) when one is given, or by Wang et al.'s Algorithm 1 (ROI with
:func:`~cardiac_ai.qc.search.qc_input`, :func:`~cardiac_ai.qc.search.latent_search` from the encoder mean,
:func:`~cardiac_ai.qc.search.predicted_dice` against the surrogate); the search also gives the surrogate
segmentation, mapped back onto the image's grid as a suggested correction. It adds the rule checks
(:func:`~cardiac_ai.qc.rules.check_rules`) and flags slices whose predicted Dice falls below a threshold.
:func:`run_qc` is what the file pipelines call: it never makes a segmentation fail, and says so in the provenance
when QC could not run (no model installed, unusable ROI).

Typical use::

    registry = ModelRegistry()
    vae, regressor = registry.load("qc_vae"), registry.load("qc_dice_regressor")
    result = assess_segmentation(image, labels, vae, regressor=regressor, config=QCConfig(dice_threshold=0.8))
    result.flagged_slices, result.volume_dice, result.surrogate   # surrogate: Volume on the image's grid
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import InputError, ModelError
from ..geometry import Volume
from ..labels import (LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, RV_BLOOD_POOL, SCAR, check_label_values,
                      codes_of_structure, values_present)
from ..preprocessing import restore_labels
from ..progress import ProgressCallback, report
from ..provenance import Provenance
from .rules import RuleReport, check_rules, lv_surround_fractions
from .search import QC_SPACING_MM, QC_STRUCTURES, SearchResult, latent_search, predicted_dice, qc_input
from .vae import SegmentationVAE

__all__ = [
    "QC_MODEL_NAME",
    "QC_REGRESSOR_NAME",
    "QC_PREDICTORS",
    "COMBINATION_TERMS",
    "DEFAULT_DICE_THRESHOLD",
    "QCConfig",
    "QCResult",
    "regressed_dice",
    "regressor_combination",
    "regressor_rotations",
    "combination_terms",
    "assess_segmentation",
    "run_qc",
]

log = logging.getLogger(__name__)

#: Registry name of the generative QC model (a ``qc_vae`` network), trained by ``scripts/train_qc.py``.
QC_MODEL_NAME = "qc_vae"

#: Default flag threshold on the predicted Dice of a slice. The generative QC paper (Wang et al. 2020) and the UK
#: Biobank pipelines it follows (Robinson et al. 2019, Bai et al. 2018) send a segmentation for manual review when
#: its (predicted) Dice falls below about 0.7-0.8; we take the stricter end, 0.80, so that a reviewer sees
#: borderline slices too. It is a screening threshold, not a clinical one: set it with ``QCConfig(dice_threshold=)``
#: or the CLI's ``--threshold`` / ``--qc-threshold``.
DEFAULT_DICE_THRESHOLD = 0.80

#: Tolerances (mm, direction cosines) within which labels count as lying on the image's grid, as ``preprocess``.
_GRID_ATOL_MM = 1e-3
_GRID_ATOL_DIRECTION = 1e-4
#: A surrogate probability above this counts as the structure (also predicted_dice's default).
_SURROGATE_THRESHOLD = 0.5

#: Registry name of the CNN Dice regressor (Robinson et al. 2018), used for the predicted Dice when installed.
QC_REGRESSOR_NAME = "qc_dice_regressor"
#: What :attr:`QCConfig.predictor` may be.
QC_PREDICTORS = ("auto", "search", "regressor", "combined")
#: The terms a regressor card's ``inference["combination"]`` weighs, per structure, in this order.
COMBINATION_TERMS = ("regressor", "search", "regressor*search", "1")

_METHODS = {
    "search": (
        "generative QC (Wang et al. 2020, Algorithm 1): a VAE of good image-segmentation pairs; gradient search in "
        "its latent space for the closest good pair (surrogate); predicted Dice = Dice(surrogate, given segmentation)"
    ),
    "regressor": (
        "CNN Dice regression (Robinson et al. 2018): a network trained on segmentations of known quality predicts "
        "each structure's Dice from the image-segmentation pair; where a surrogate is wanted (cardiacai qc), the "
        "generative VAE's latent search (Wang et al. 2020) gives it (suggested correction) and a second opinion "
        "(search_dice); see search.ran"
    ),
    "combined": (
        "CNN Dice regression (Robinson et al. 2018) and the generative VAE's latent search (Wang et al. 2020) "
        "combined: per structure, a linear function of the regressed Dice, the searched Dice and their product, "
        "fitted on validation patients' segmentations of known quality (the regressor's model card, "
        "inference.combination); where no search runs (search.encoder_only), the VAE encoder's Dice without search "
        "steps takes the searched Dice's place, with its own fitted weights (inference.combination_encoder); a "
        "search gives the surrogate (suggested correction) and search_dice"
    ),
}
_VOLUME_DICE_DEFINITIONS = {
    "search": (
        "per structure, 2|S n G| / (|S| + |G|) with the pixels of all assessed slices pooled (QC region of interest "
        "grid); mean_dice is the mean of the per-structure values"
    ),
    "regressor": (
        "per structure, the mean of the slices' predicted Dice weighted by the structure's segmented area on each "
        "slice, and a slice where the structure is judged missing (Dice 0) by its median segmented area on the other "
        "slices (QC region of interest grid); mean_dice is the mean of the per-structure values"
    ),
}
_VOLUME_DICE_DEFINITIONS["combined"] = _VOLUME_DICE_DEFINITIONS["regressor"]
_NOT_ASSESSED = (
    "slices outside the labelled range (first to last slice with any label), widened by margin_slices on each side "
    "when the regressor predicts, are not assessed (Dice null, never flagged); on an assessed slice a structure "
    "absent from both the segmentation and the surrogate (search) has no Dice (null), and so has one absent from "
    "the segmentation whose regressed Dice is at least 0.5 (the regressor judges the absence right); below 0.5 the "
    "structure is judged missing and its Dice is 0. An empty segmentation is assessed on every slice with Dice 0."
)


@dataclass(frozen=True)
class QCConfig:
    """How :func:`assess_segmentation` searches and flags.

    Attributes
    ----------
    dice_threshold : float in [0, 1]
        A slice is flagged when the predicted Dice of any structure on it is below this value (strictly);
        default :data:`DEFAULT_DICE_THRESHOLD` (0.80, see there why). 0 flags nothing; 1 flags every assessed
        slice whose prediction is not perfect.
    steps : int >= 0
        Largest number of gradient steps of the latent search (0: the encoder mean, no search).
    lr : float > 0
        Adam learning rate of the search.
    tolerance : float >= 0
        Relative change of the mean distance below which the search stops early.
    structures : tuple of int or None
        Label codes of the model's segmentation channels in channel order, ``(1, 2, 3)`` or ``(2,)``. None: the
        model card's non-background label codes when they fit the network, else ``(1, 2, 3)`` for a
        three-structure and ``(2,)`` for a one-structure model.
    spacing_mm : float or None
        In-plane spacing of the QC region of interest. None: the model card's ``input_spec`` spacing (the one
        it was trained at), else :data:`~cardiac_ai.qc.search.QC_SPACING_MM` (1.8 mm, UK Biobank).
    predictor : {"auto", "search", "regressor", "combined"}
        Where the predicted Dice comes from: ``"search"`` the VAE's latent search (Wang et al.), ``"regressor"``
        the CNN Dice regressor (an error when none is given), ``"combined"`` both, weighed as the regressor's card
        says (``inference["combination"]``; the search then always runs), ``"auto"`` (default) the combination
        when the regressor's card has one: with the search when that runs anyway (a surrogate is wanted), else with
        the VAE encoder's Dice (no search steps, milliseconds; ``inference["combination_encoder"]``); else the
        regressor when one is given, else the search. On the validation patients the regressor predicted Dice
        better than the search, and either combination better than the regressor (``docs/benchmarks.md``,
        generative QC).
    margin_slices : int >= 0 or None
        Slices beyond each end of the segmentation's labelled range that the regressor also assesses: a structure
        it expects there is a segmentation that stopped early. None (default): the regressor's model card
        (``inference["assess_margin_slices"]``, the margin its training pairs had; 0 for a regressor without it,
        which has never seen a slice beyond the heart). The search never assesses beyond the labelled range.
    judged_structures : tuple of int or None
        The structures QC judges, a subset of the model's: the others get no predicted Dice (null), no flag and no
        rule, for a segmentation that never draws them (the LGE pipeline has no RV). None: every structure.
    """

    dice_threshold: float = DEFAULT_DICE_THRESHOLD
    steps: int = 100
    lr: float = 0.05
    tolerance: float = 1e-4
    structures: tuple[int, ...] | None = None
    spacing_mm: float | None = None
    predictor: str = "auto"
    margin_slices: int | None = None
    judged_structures: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        threshold = self.dice_threshold
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise InputError(f"dice_threshold must be a number in [0, 1] (a Dice value), got {threshold!r}.")
        object.__setattr__(self, "dice_threshold", float(threshold))
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 0:
            raise InputError(f"steps must be a non-negative integer, got {self.steps!r}.")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"lr must be a positive number, got {self.lr!r}.")
        if not (isinstance(self.tolerance, (int, float)) and self.tolerance >= 0):
            raise InputError(f"tolerance must be >= 0, got {self.tolerance!r}.")
        if self.structures is not None:
            structures = tuple(int(s) for s in self.structures)
            if not structures or len(set(structures)) != len(structures) or not set(structures) <= set(QC_STRUCTURES):
                raise InputError(f"structures must be distinct codes from {QC_STRUCTURES}, got {self.structures!r}.")
            object.__setattr__(self, "structures", structures)
        if self.spacing_mm is not None and not (
            isinstance(self.spacing_mm, (int, float)) and math.isfinite(self.spacing_mm) and self.spacing_mm > 0
        ):
            raise InputError(f"spacing_mm must be a positive number of mm or None, got {self.spacing_mm!r}.")
        if self.predictor not in QC_PREDICTORS:
            raise InputError(f"predictor must be one of {', '.join(QC_PREDICTORS)}, got {self.predictor!r}.")
        margin = self.margin_slices
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int) or margin < 0):
            raise InputError(f"margin_slices must be a non-negative integer or None, got {margin!r}.")
        if self.judged_structures is not None:
            judged = tuple(int(s) for s in self.judged_structures)
            if not judged or len(set(judged)) != len(judged) or not set(judged) <= set(QC_STRUCTURES):
                raise InputError(f"judged_structures must be distinct codes from {QC_STRUCTURES}, got "
                                 f"{self.judged_structures!r}.")
            object.__setattr__(self, "judged_structures", judged)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for the provenance parameters)."""
        return {
            "dice_threshold": self.dice_threshold, "steps": self.steps, "lr": self.lr, "tolerance": self.tolerance,
            "structures": None if self.structures is None else list(self.structures), "spacing_mm": self.spacing_mm,
            "predictor": self.predictor, "margin_slices": self.margin_slices,
            "judged_structures": None if self.judged_structures is None else list(self.judged_structures),
        }


@dataclass(frozen=True)
class QCResult:
    """Outcome of :func:`assess_segmentation` for one (k, j, i) segmentation.

    Attributes
    ----------
    slice_dice : (k, n_structures) float64 ndarray
        Predicted Dice of each slice and structure, in [0, 1]; NaN on slices that were not assessed and where a
        structure is absent from both the segmentation and the surrogate (see Notes).
    structures : tuple of int
        Label code of each column of ``slice_dice`` (``(1, 2, 3)``: RV blood pool, LV myocardium, LV blood pool).
    volume_dice : (n_structures,) float64 ndarray
        Predicted Dice of each structure over the stack: pixels of all assessed slices pooled; NaN when the
        structure is absent from both everywhere.
    assessed : (k,) bool ndarray
        Slices within the labelled range, widened by ``margin_slices`` (every slice of an empty segmentation).
    margin_slices : int
        Slices beyond each end of the labelled range that the regressor assessed (:class:`QCConfig`); 0 with the
        search as predictor.
    slice_flags : (k,) bool ndarray
        True where some structure's predicted Dice is below ``dice_threshold``.
    dice_threshold : float
        The threshold used.
    rules : RuleReport
        Rule checks of the segmentation (:func:`~cardiac_ai.qc.rules.check_rules`), independent of the model.
    surrogate : Volume or None
        (k, j, i) uint8 surrogate segmentation with the structures' codes, on exactly the image's grid and
        geometry; 0 on slices that were not assessed. None when the search was skipped (``surrogate_wanted=False``
        with the regressor as predictor).
    roi_spacing_mm : float
        In-plane spacing of the QC region of interest actually used.
    resampled_to_fit : bool
        True when ``roi_spacing_mm`` was raised above the configured one because the segmented heart did not fit
        the ROI (a warning says so).
    roi_size_px : int
        Side of the square ROI (the model's input size).
    empty_segmentation : bool
        The segmentation had no labelled voxel; every slice is then flagged with Dice 0.
    search : dict
        ``ran`` (False when the search was skipped: nothing else then), ``steps``, ``lr``, ``tolerance``,
        ``iterations``, ``converged``, ``device``, ``mean_initial_distance`` and ``mean_final_distance`` (BCE + MSE
        per slice, averaged over the assessed slices).
    warnings : tuple of str
        Everything odd: ROI resampled to fit, empty segmentation, CPU fallback.
    predictor : {"search", "regressor", "combined"}
        Where ``slice_dice`` and ``volume_dice`` come from (see :class:`QCConfig`).
    search_dice : (k, n_structures) float64 ndarray or None
        With the regressor or the combination as predictor and the search run: the latent search's predicted Dice,
        as a second opinion; else None.

    Notes
    -----
    Dice values are computed on the QC ROI grid (``roi_spacing_mm``, ``roi_size_px`` square), where the model
    works, not on the image's own grid.
    """

    slice_dice: NDArray[np.float64]
    structures: tuple[int, ...]
    volume_dice: NDArray[np.float64]
    assessed: NDArray[np.bool_]
    slice_flags: NDArray[np.bool_]
    dice_threshold: float
    rules: RuleReport
    surrogate: Volume | None
    roi_spacing_mm: float
    resampled_to_fit: bool
    roi_size_px: int
    empty_segmentation: bool
    search: dict[str, Any]
    warnings: tuple[str, ...]
    predictor: str = "search"
    search_dice: NDArray[np.float64] | None = None
    margin_slices: int = 0

    @property
    def structure_names(self) -> tuple[str, ...]:
        """Machine names of ``structures`` (``"rv_blood_pool"``, ...)."""
        return tuple(LABELS[code].name for code in self.structures)

    @property
    def slice_min_dice(self) -> NDArray[np.float64]:
        """(k,) lowest predicted Dice of each slice over its structures; NaN where it has none."""
        values = np.where(np.isnan(self.slice_dice), np.inf, self.slice_dice).min(axis=1)
        return np.where(np.isinf(values), np.nan, values)

    @property
    def min_slice_dice(self) -> float:
        """Lowest predicted Dice of any assessed slice and structure; NaN when there is none."""
        values = self.slice_dice[~np.isnan(self.slice_dice)]
        return float(values.min()) if values.size else math.nan

    @property
    def mean_dice(self) -> float:
        """Mean of ``volume_dice`` over the structures that have one; NaN when none has."""
        values = self.volume_dice[~np.isnan(self.volume_dice)]
        return float(values.mean()) if values.size else math.nan

    @property
    def flagged_slices(self) -> list[int]:
        """Indices k of the flagged slices."""
        return [int(k) for k in np.flatnonzero(self.slice_flags)]

    @property
    def n_flagged_slices(self) -> int:
        return int(np.count_nonzero(self.slice_flags))

    @property
    def needs_review(self) -> bool:
        """True when a slice is flagged or a rule check failed: someone should look at this segmentation."""
        return bool(self.slice_flags.any()) or not self.rules.passed

    def _named(self, row: NDArray[np.float64]) -> dict[str, float]:
        return {name: _rounded(value) for name, value in zip(self.structure_names, row)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict for ``report.json`` (NaN becomes null when written with ``write_report``)."""
        slice_min = self.slice_min_dice
        slices = [
            {
                "slice": k,
                "assessed": bool(self.assessed[k]),
                "flagged": bool(self.slice_flags[k]),
                "min_dice": _rounded(slice_min[k]),
                "dice": self._named(self.slice_dice[k]),
                **({} if self.search_dice is None else {"search_dice": self._named(self.search_dice[k])}),
                "rule_reasons": list(self.rules.slice_reasons[k]),
            }
            for k in range(self.slice_dice.shape[0])
        ]
        return {
            "method": _METHODS[self.predictor],
            "predictor": self.predictor,
            "dice_threshold": self.dice_threshold,
            "flag_rule": "a slice is flagged when the predicted Dice of any structure on it is below dice_threshold",
            "needs_review": self.needs_review,
            "flagged_slices": self.flagged_slices,
            "n_flagged_slices": self.n_flagged_slices,
            "n_assessed_slices": int(np.count_nonzero(self.assessed)),
            "margin_slices": self.margin_slices,
            "min_slice_dice": _rounded(self.min_slice_dice),
            "mean_dice": _rounded(self.mean_dice),
            "volume_dice": self._named(self.volume_dice),
            "volume_dice_definition": _VOLUME_DICE_DEFINITIONS[self.predictor],
            "not_assessed": _NOT_ASSESSED,
            "structures": {name: code for name, code in zip(self.structure_names, self.structures)},
            "slices": slices,
            "rules": {
                "passed": self.rules.passed,
                "volume_reasons": list(self.rules.volume_reasons),
                "flagged_slices": [int(k) for k in np.flatnonzero(self.rules.slice_flags)],
                "labelled_range": None if self.rules.labelled_range is None else list(self.rules.labelled_range),
                "mid_slice": self.rules.mid_slice,
            },
            "roi": {"spacing_mm": self.roi_spacing_mm, "size_px": self.roi_size_px,
                    "resampled_to_fit": self.resampled_to_fit},
            "search": dict(self.search),
            "empty_segmentation": self.empty_segmentation,
            "warnings": list(self.warnings),
        }

    def slice_table_rows(self) -> list[dict[str, Any]]:
        """One row per slice for ``qc_slices.csv``: slice, assessed, flagged, min_dice, dice_<structure>...,
        rule_reasons (``"; "``-joined). Missing values (NaN) become empty cells."""
        slice_min = self.slice_min_dice
        rows = []
        for k in range(self.slice_dice.shape[0]):
            row: dict[str, Any] = {
                "slice": k,
                "assessed": bool(self.assessed[k]),
                "flagged": bool(self.slice_flags[k]),
                "min_dice": _rounded(slice_min[k]),
            }
            row.update({f"dice_{name}": value for name, value in self._named(self.slice_dice[k]).items()})
            row["rule_reasons"] = "; ".join(self.rules.slice_reasons[k])
            rows.append(row)
        return rows


def _rounded(value: float) -> float:
    return round(float(value), 4) if math.isfinite(value) else math.nan


# -- validation ----------------------------------------------------------------------------------------------------


def _unwrap_model(model: Any) -> tuple[SegmentationVAE, Any]:
    """(network, card or None) from a SegmentationVAE or a registry ``LoadedModel`` holding one."""
    if isinstance(model, SegmentationVAE):
        return model, None
    network = getattr(model, "network", None)
    if isinstance(network, SegmentationVAE):
        return network, getattr(model, "card", None)
    name = getattr(getattr(model, "card", None), "network", None)
    raise ModelError(
        f"The QC model must be a SegmentationVAE (network '{QC_MODEL_NAME}') or a loaded model holding one; got "
        f"{type(network if network is not None else model).__name__}"
        + (f" (card network {name!r})" if name else "") + ". Check the qc_vae model card."
    )


def _unwrap_regressor(regressor: Any, n_structures: int, input_size: int) -> Any:
    """The regressor network from a QCDiceRegressor or a registry ``LoadedModel``, checked against the VAE's input."""
    from ..models.qc_regressor import QCDiceRegressor

    network = regressor if isinstance(regressor, QCDiceRegressor) else getattr(regressor, "network", None)
    if not isinstance(network, QCDiceRegressor):
        raise ModelError(
            f"The QC regressor must be a QCDiceRegressor (network '{QC_REGRESSOR_NAME}') or a loaded model holding "
            f"one; got {type(network if network is not None else regressor).__name__}."
        )
    if (network.in_channels, network.n_outputs, network.input_size) != (1 + n_structures, n_structures, input_size):
        raise ModelError(
            f"The QC regressor takes {network.in_channels} channels of {network.input_size} px and predicts "
            f"{network.n_outputs} structures, but the QC VAE works on 1 + {n_structures} channels of {input_size} px; "
            "use models trained together (scripts/train_qc.py)."
        )
    return network


def regressed_dice(
    network: Any, pairs: NDArray[np.float32], *, device: Any = None,
    searched: NDArray[np.float64] | None = None, combination: NDArray[np.float64] | None = None,
    rotations_deg: Sequence[float] = (0.0,),
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Predicted Dice from the CNN regressor as QC reports it: per slice and structure (n, S), and per volume (S,).

    ``pairs`` (n, 1 + S, size, size) are the QC input of one stack's assessed slices (:func:`~cardiac_ai.qc.qc_input`),
    the last S channels the segmentation's masks; see :data:`_NOT_ASSESSED` for the nulls. With ``searched`` (n, S),
    the latent search's Dice of the same slices, and ``combination`` (S, 4), the weights of
    :data:`COMBINATION_TERMS` per structure, a structure the segmentation shows gets the combined value (clipped to
    [0, 1]; the regressor's alone where the search has none). ``rotations_deg``: the regressor's test-time views
    (:func:`regressor_rotations`, from its card).

    A structure the segmentation leaves out of a slice has no overlap to regress: the regressor only says whether it
    belongs there. Judged absent (>= 0.5): no Dice. Judged missing (< 0.5): Dice 0, which is what any non-empty truth
    gives. The volume value weights each slice by the structure's segmented area, and a missed slice by the median
    segmented area of the structure on the stack's other slices, so that missing slices lower it as they lower the
    true volume Dice (with segmented-area weights alone they counted for nothing).
    """
    from ..models.qc_regressor import regress_dice

    dice = regress_dice(network, pairs, device=device, rotations_deg=rotations_deg)
    given = pairs[:, pairs.shape[1] - dice.shape[1]:] > 0.5
    areas = np.count_nonzero(given, axis=(2, 3)).astype(np.float64)
    empty = areas == 0
    if combination is not None:
        if searched is None:
            raise InputError("regressed_dice: a combination needs the searched Dice of the same slices.")
        combined = np.clip((combination_terms(dice, searched) * np.asarray(combination)).sum(axis=-1), 0.0, 1.0)
        dice = np.where(~empty & np.isfinite(searched), combined, dice)
    dice[empty & (dice >= 0.5)] = np.nan
    missed = empty & (dice < 0.5)
    dice[missed] = 0.0
    segmented = np.where(empty, np.nan, areas)
    typical = np.zeros(areas.shape[1])
    present = ~np.isnan(segmented).all(axis=0)
    typical[present] = np.nanmedian(segmented[:, present], axis=0)
    weights = np.where(np.isnan(dice), 0.0, np.where(missed, typical[np.newaxis, :], areas))
    totals = weights.sum(axis=0)
    volume = np.where(totals > 0, np.nansum(dice * weights, axis=0) / np.maximum(totals, 1e-12), np.nan)
    return dice, volume


def _searched_dice(
    surrogate_probabilities: NDArray[np.float32], given: NDArray[np.bool_], n_slices: int, assessed: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """(slice Dice (k, S) on the whole stack, volume Dice (S,)) of the given masks against the search's surrogate."""
    surrogate_masks = surrogate_probabilities > _SURROGATE_THRESHOLD
    dice = predicted_dice(surrogate_probabilities, given.astype(np.float32), threshold=_SURROGATE_THRESHOLD)
    intersection = np.count_nonzero(surrogate_masks & given, axis=(2, 3)).astype(np.float64)
    total = (np.count_nonzero(surrogate_masks, axis=(2, 3)) + np.count_nonzero(given, axis=(2, 3))).astype(np.float64)
    dice[total == 0] = np.nan  # absent from both: nothing to compare
    slice_dice = np.full((n_slices, given.shape[1]), np.nan)
    slice_dice[assessed] = dice
    pooled_total = total.sum(axis=0)
    volume_dice = np.where(pooled_total > 0, 2.0 * intersection.sum(axis=0) / np.maximum(pooled_total, 1.0), np.nan)
    return slice_dice, volume_dice


def _surrogate_on_image_grid(
    surrogate_probabilities: NDArray[np.float32], assessed: NDArray[np.bool_], structures: tuple[int, ...],
    size: int, transform: Any,
) -> Volume:
    """The surrogate as a label map on the image's grid (0 on slices that were not assessed)."""
    probabilities = np.zeros((assessed.size, len(structures), size, size), dtype=np.float32)
    probabilities[assessed] = surrogate_probabilities
    roi_labels = np.where(
        probabilities.max(axis=1) > _SURROGATE_THRESHOLD,
        np.asarray(structures, dtype=np.uint8)[probabilities.argmax(axis=1)],
        0,
    ).astype(np.uint8)
    return restore_labels(roi_labels, transform)


def _check_grid(image: Volume, labels: Volume) -> None:
    if not isinstance(image, Volume) or image.axes != "kji":
        raise InputError(
            "image must be one 3D (k, j, i) cardiac_ai Volume; pick a frame of a cine series first (volume.frame(t))."
        )
    if not isinstance(labels, Volume) or labels.axes != "kji":
        raise InputError("labels must be one 3D (k, j, i) cardiac_ai Volume (a label map).")
    if labels.spatial_shape != image.spatial_shape:
        raise InputError(
            f"The labels' shape (k, j, i) {labels.spatial_shape} differs from the image's {image.spatial_shape}. "
            "QC needs the segmentation on the image's grid: export or resample it onto the image (in Slicer: export "
            "the segmentation to a labelmap with the image as reference geometry)."
        )
    if labels.geometry.is_close(image.geometry, atol_mm=_GRID_ATOL_MM, atol_direction=_GRID_ATOL_DIRECTION):
        return
    differences = []
    for name, atol in (("spacing_mm", _GRID_ATOL_MM), ("origin_lps_mm", _GRID_ATOL_MM),
                       ("direction_lps", _GRID_ATOL_DIRECTION)):
        found, expected = getattr(labels.geometry, name), getattr(image.geometry, name)
        if not np.allclose(found, expected, atol=atol):
            differences.append(
                f"{name} {tuple(round(float(v), 4) for v in found)} vs the image's "
                f"{tuple(round(float(v), 4) for v in expected)}"
            )
    raise InputError(
        "The labels' geometry differs from the image's: " + "; ".join(differences) + ". QC needs the segmentation "
        "on the image's grid: export or resample it onto the image (in Slicer: export the segmentation to a labelmap "
        "with the image as reference geometry)."
    )


def _structures(config: QCConfig, network: SegmentationVAE, card: Any) -> tuple[int, ...]:
    n = network.n_structures
    if config.structures is not None:
        if len(config.structures) != n:
            raise InputError(
                f"config.structures {config.structures} has {len(config.structures)} codes but the QC model has {n} "
                "segmentation channels; give one code per channel, in channel order."
            )
        return config.structures
    label_map = getattr(card, "label_map", None) or {}
    from_card = tuple(sorted(int(code) for code in label_map if int(code) != 0))
    if len(from_card) == n and set(from_card) <= set(QC_STRUCTURES):
        return from_card
    if n == len(QC_STRUCTURES):
        return QC_STRUCTURES
    if n == 1:
        return (LV_MYOCARDIUM,)
    raise ModelError(
        f"The QC model has {n} segmentation channels and its card names no matching structures; pass "
        "QCConfig(structures=...) with one label code per channel."
    )


def _regressor_margin_slices(regressor: Any) -> int:
    """Slices beyond a segmentation's labelled range that a Dice regressor can assess: its model card's
    ``inference["assess_margin_slices"]`` (the margin of its training pairs), 0 without one (a bare network)."""
    margin = _card_inference(regressor).get("assess_margin_slices", 0)
    if isinstance(margin, bool) or not isinstance(margin, int) or margin < 0:
        raise ModelError(
            f"The QC regressor's card gives inference.assess_margin_slices {margin!r}; it must be a non-negative "
            "integer (the margin of its training pairs, scripts/train_qc.py --margin-slices)."
        )
    return margin


def combination_terms(regressed: NDArray[np.floating], searched: NDArray[np.floating]) -> NDArray[np.float64]:
    """The :data:`COMBINATION_TERMS` of each value, stacked on a new last axis (... , 4)."""
    regressed, searched = np.asarray(regressed, dtype=np.float64), np.asarray(searched, dtype=np.float64)
    return np.stack([regressed, searched, regressed * searched, np.ones_like(regressed)], axis=-1)


def _card_inference(model: Any) -> dict:
    """The ``inference`` settings of a loaded model's card; empty for a bare network."""
    return getattr(getattr(model, "card", None), "inference", None) or {}


def regressor_combination(
    regressor: Any, n_structures: int, *, encoder_only: bool = False
) -> NDArray[np.float64] | None:
    """(S, 4) weights of :data:`COMBINATION_TERMS` per structure from a regressor's model card
    (``inference["combination"]["coefficients"]``, with the full latent search; ``inference["combination_encoder"]``
    with ``encoder_only``, the encoder's Dice without search steps; fitted by ``scripts/train_qc.py --stage
    combine``); None when the card has none."""
    key = "combination_encoder" if encoder_only else "combination"
    combination = _card_inference(regressor).get(key)
    if combination is None:
        return None
    try:
        weights = np.asarray(combination["coefficients"], dtype=np.float64)
        terms = tuple(combination.get("terms", COMBINATION_TERMS))
    except (TypeError, KeyError, ValueError) as error:
        raise ModelError(f"The QC regressor's card has an unreadable inference.{key} ({error}).") from None
    if terms != COMBINATION_TERMS or weights.shape != (n_structures, len(COMBINATION_TERMS)) or not np.isfinite(
            weights).all():
        raise ModelError(
            f"The QC regressor's card gives inference.{key} with terms {list(terms)} and coefficients of shape "
            f"{weights.shape}; QC needs terms {list(COMBINATION_TERMS)} and finite coefficients of shape "
            f"({n_structures}, {len(COMBINATION_TERMS)})."
        )
    return weights


def regressor_rotations(regressor: Any) -> tuple[float, ...]:
    """The regressor's test-time rotations in degrees (``inference["test_time_rotations_deg"]`` of its card, written
    by ``scripts/train_qc.py --stage combine --regressor-rotations``; its combination weights were fitted on the
    averaged predictions); (0,) without."""
    from ..models.qc_regressor import check_rotations

    angles = _card_inference(regressor).get("test_time_rotations_deg", (0.0,))
    try:
        return check_rotations(angles)
    except InputError as error:
        raise ModelError(f"The QC regressor's card has an unreadable inference.test_time_rotations_deg: {error}") \
            from None


def _blood_pools_look_swapped(label_array: NDArray[np.integer]) -> bool:
    """The myocardium rings the "RV" and not the "LV": the signature of LV and RV codes exchanged."""
    if not (np.any(label_array == RV_BLOOD_POOL) and np.any(label_array == LV_MYOCARDIUM)):
        return False
    ringed = {code: lv_surround_fractions(label_array, code) for code in (RV_BLOOD_POOL, LV_BLOOD_POOL)}
    rv, lv = (float(np.nanmean(f)) if np.isfinite(f).any() else 0.0 for f in ringed.values())
    # ACDC truth: the myocardium covers 0.15-0.43 of the RV's border and all of the LV's (RV minus LV <= -0.57)
    return rv >= 0.7 and rv - lv >= 0.3


def _assessed_slices(label_array: NDArray[np.integer], margin_slices: int = 0) -> NDArray[np.bool_]:
    """(k,) slices QC assesses in a (k, j, i) label map: first to last labelled slice, widened by ``margin_slices``
    on each side; every slice of an empty segmentation."""
    labelled = np.flatnonzero(np.any(np.asarray(label_array) != 0, axis=(1, 2)))
    if labelled.size == 0:
        return np.ones(len(label_array), dtype=bool)
    assessed = np.zeros(len(label_array), dtype=bool)
    assessed[max(labelled[0] - margin_slices, 0): labelled[-1] + margin_slices + 1] = True
    return assessed


def _roi_spacing(config: QCConfig, card: Any) -> float:
    if config.spacing_mm is not None:
        return float(config.spacing_mm)
    spacing = (getattr(card, "input_spec", None) or {}).get("in_plane_spacing_mm")
    if spacing:
        values = [float(v) for v in (spacing if isinstance(spacing, (list, tuple)) else [spacing])]
        if all(math.isfinite(v) and v > 0 for v in values):
            return max(values)
    return QC_SPACING_MM


def _search(
    network: SegmentationVAE, pairs: NDArray[np.float32], config: QCConfig, device: Any, warn
) -> tuple[SearchResult, str]:
    """Latent search on ``device``; a CUDA out-of-memory error reruns it on the CPU with a warning."""
    import torch

    from ..device import is_out_of_memory, resolve_device

    if device is None:
        parameter = next(network.parameters(), None)
        run_device = parameter.device if parameter is not None else torch.device("cpu")
    elif isinstance(device, torch.device):
        run_device = device
    else:
        run_device = resolve_device(str(device))
    options = {"steps": config.steps, "lr": config.lr, "tolerance": config.tolerance}
    try:
        return latent_search(network, pairs, device=run_device, **options), str(run_device)
    except RuntimeError as error:
        if run_device.type != "cuda" or not is_out_of_memory(error):
            raise
        torch.cuda.empty_cache()
        warn(f"QC: CUDA out of memory in the latent search of {pairs.shape[0]} slices; it ran on the CPU instead.")
        return latent_search(network, pairs, device="cpu", **options), "cpu"


# -- the job ---------------------------------------------------------------------------------------------------------


def assess_segmentation(
    image: Volume,
    labels: Volume,
    model: Any,
    *,
    config: QCConfig = QCConfig(),
    device: Any = None,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    regressor: Any = None,
    surrogate_wanted: bool = True,
    unsegmented_slices: Sequence[int] = (),
) -> QCResult:
    """Predict the Dice of every slice of a segmentation without ground truth, flag poor slices, check the rules.

    Parameters
    ----------
    image : Volume with axes "kji"
        The short-axis stack the segmentation belongs to (one frame; any intensity unit).
    labels : Volume with axes "kji"
        The segmentation to check, on exactly the image's grid (shape and geometry), CardiacAI codes
        (1 RV blood pool, 2 LV myocardium, 3 LV blood pool; 4 scar and 5 MVO count as myocardium).
    model : SegmentationVAE or LoadedModel
        The trained QC VAE, or what ``ModelRegistry.load("qc_vae")`` returns (its card then gives the structures
        and the ROI spacing, see :class:`QCConfig`). Its weights are not changed.
    config : QCConfig
        Threshold and search options.
    device : str, torch.device or None
        Where the search runs: None the model's device; ``"auto"``, ``"cpu"``, ``"cuda"`` as
        :func:`~cardiac_ai.device.resolve_device`. CUDA out of memory falls back to the CPU with a warning.
    provenance : Provenance, optional
        Receives the warnings (they are in ``QCResult.warnings`` too).
    progress : ProgressCallback, optional
        Fraction 0..1 and a short message; may raise ``Cancelled``.
    regressor : QCDiceRegressor or LoadedModel, optional
        The CNN Dice regressor (``ModelRegistry.load("qc_dice_regressor")``); with ``config.predictor`` "auto"
        (default) or "regressor" it gives the predicted Dice, and the search's Dice becomes ``search_dice``.
    surrogate_wanted : bool
        Run the latent search for the surrogate segmentation even when the regressor predicts the Dice (default).
        False skips the search in that case (about 1 s per volume on a CPU): ``surrogate`` and ``search_dice`` are
        then None and ``search["ran"]`` is False. The search always runs when it is the predictor.
    unsegmented_slices : sequence of int
        Slices without a label where the heart is known to be (:func:`cardiac_ai.qc.extent.unsegmented_heart_slices`,
        from the cine localiser): each is assessed with predicted Dice 0, flagged, and given a rule reason; the
        rules then fail ("stops before the heart does").

    Returns
    -------
    QCResult
        Per-slice and per-structure predicted Dice, flags, rule report and the surrogate on the image's grid.

    Raises
    ------
    InputError
        4D input; labels whose shape or geometry differs from the image's (the message names the differing
        field: spacing_mm, origin_lps_mm or direction_lps); label values outside the label table; an image that
        is constant inside the QC region of interest; structures that do not fit the model.
    ModelError
        ``model`` is not a SegmentationVAE; ``regressor`` is not a QCDiceRegressor or does not fit the VAE's input;
        ``config.predictor`` is "regressor" and no regressor is given.

    Notes
    -----
    Only slices from the first to the last labelled slice are assessed: beyond the segmented extent there is no
    given structure to compare, and the surrogate there would be the VAE's guess at a heart that may not be in the
    image. A regressor trained with slices beyond the heart (``QCConfig.margin_slices``) also assesses that many
    slices beyond each end, where a structure it expects is a segmentation that stopped early (Dice 0). Missing
    slices inside the extent are caught by the rule checks ("gap"). An empty segmentation is not an
    error: every slice is assessed and gets Dice 0 (flagged), with a warning, and the surrogate still shows what
    the model proposes. When the segmented heart is too large for the ROI at the configured spacing,
    :func:`~cardiac_ai.qc.search.qc_input` raises the spacing until it fits; ``resampled_to_fit`` and a warning
    report it.
    """
    network, card = _unwrap_model(model)
    _check_grid(image, labels)
    label_array = np.asarray(labels.array)
    check_label_values(label_array, what="labels")
    label_array = label_array.astype(np.uint8)
    if network.n_image_channels != 1:
        raise ModelError(f"The QC model expects {network.n_image_channels} image channels; QC supports 1.")
    structures = _structures(config, network, card)
    judged = structures if config.judged_structures is None else config.judged_structures
    if not set(judged) <= set(structures):
        raise InputError(f"QC judged_structures {list(judged)} are not all among the model's structures "
                         f"{list(structures)}.")
    spacing = _roi_spacing(config, card)
    combines = regressor is not None and config.predictor in ("auto", "combined")
    combination = regressor_combination(regressor, len(structures)) if combines else None
    encoder_combination = None
    predictor = config.predictor
    if predictor == "auto" and regressor is not None and not surrogate_wanted:
        # no search wanted: the encoder's Dice (no search steps, a few ms) is weighed in where the card says how
        encoder_combination = regressor_combination(regressor, len(structures), encoder_only=True)
    if predictor == "auto":
        predictor = ("search" if regressor is None else
                     "combined" if (combination is not None and surrogate_wanted) or encoder_combination is not None
                     else "regressor")
    regressor_network = None
    if predictor in ("regressor", "combined"):
        if regressor is None:
            raise ModelError(
                f"QC predictor {predictor!r} needs the {QC_REGRESSOR_NAME} model, and none was given; install it "
                "next to the qc_vae model (scripts/train_qc.py --stage regressor register) or use predictor 'search'."
            )
        if predictor == "combined" and combination is None and encoder_combination is None:
            raise ModelError(
                "QC predictor 'combined' needs a regressor whose card gives inference.combination (scripts/train_qc.py "
                "--stage combine); this one has none: use predictor 'regressor'."
            )
        regressor_network = _unwrap_regressor(regressor, len(structures), network.input_size)
        rotations = regressor_rotations(regressor)  # a bad card fails before the slow work
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if provenance is not None:
            provenance.warn(message, log)
        else:
            log.warning(message)

    known = {0, RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL, SCAR, MVO}
    unjudged = sorted(set(values_present(label_array).tolist()) - known)
    if unjudged:
        warn(f"QC: label code(s) {unjudged} ({', '.join(LABELS[c].display_name for c in unjudged)}) are not judged "
             "and count as background; QC judges the RV and LV blood pools and the myocardium (scar and MVO included).")
    if _blood_pools_look_swapped(label_array):
        warn("QC: the myocardium surrounds the structure coded RV blood pool (1), not the one coded LV blood pool "
             "(3): the two codes look swapped, as in tools that code LV 1 and RV 3 (M&Ms). `cardiacai qc "
             "--label-codes LV=1 MYO=2 RV=3` maps them; judged as given, both get a low predicted Dice.")
    report(progress, 0.0, "QC: region of interest")
    roi_notes = Provenance()
    pairs, transform = qc_input(
        image, labels.with_array(label_array), spacing_mm=spacing, structures=structures,
        crop_size=network.input_size, provenance=roi_notes,
    )
    warnings.extend(roi_notes.warnings)  # qc_input logged them already
    if provenance is not None:
        provenance.record_logged(roi_notes.warnings)
    roi_spacing = float(transform.spec.in_plane_spacing_mm[0])
    resampled_to_fit = roi_spacing > spacing * (1.0 + 1e-9)

    n_slices = pairs.shape[0]
    empty = not label_array.any()
    if empty:
        warn(
            "QC: the segmentation is empty; every slice is flagged with predicted Dice 0. Check that the "
            "segmentation ran on this image (and found the heart)."
        )
    searched_range = _assessed_slices(label_array)
    margin = 0
    if regressor_network is not None and not empty:
        margin = config.margin_slices if config.margin_slices is not None else _regressor_margin_slices(regressor)
    assessed = _assessed_slices(label_array, margin)

    chosen = pairs[searched_range]
    given = chosen[:, network.n_image_channels:] > 0.5
    search_dice = surrogate = None
    search_record: dict[str, Any] = {"ran": False}
    if predictor == "search" or surrogate_wanted or (predictor == "combined" and encoder_combination is None):
        report(progress, 0.1, f"QC: latent search on {int(searched_range.sum())} slices")
        search, used_device = _search(network, chosen, config, device, warn)
        report(progress, 0.85, "QC: predicted Dice")
        searched, searched_volume = _searched_dice(search.surrogate, given, n_slices, searched_range)
        search_record = {
            "ran": True, "steps": config.steps, "lr": config.lr, "tolerance": config.tolerance,
            "iterations": search.iterations, "converged": search.converged, "device": used_device,
            "mean_initial_distance": float(np.mean(search.initial_loss)),
            "mean_final_distance": float(np.mean(search.final_loss)),
        }
        report(progress, 0.9, "QC: surrogate on the image grid")
        surrogate = _surrogate_on_image_grid(search.surrogate, searched_range, structures, network.input_size,
                                             transform)
    if encoder_combination is not None:
        report(progress, 0.5, "QC: encoder Dice")
        encoded, _ = _search(network, chosen, replace(config, steps=0), device, warn)
        searched, _ = _searched_dice(encoded.surrogate, given, n_slices, searched_range)
        search_record = {"ran": True, "steps": 0, "encoder_only": True}
        combination = encoder_combination
    if predictor in ("regressor", "combined"):
        report(progress, 0.95, "QC: regressed Dice")
        search_dice = None if surrogate is None else searched
        slice_dice = np.full((n_slices, len(structures)), np.nan)
        slice_dice[assessed], volume_dice = regressed_dice(
            regressor_network, pairs[assessed], searched=None if predictor != "combined" else searched[assessed],
            combination=combination if predictor == "combined" else None, rotations_deg=rotations)
    else:
        slice_dice, volume_dice = searched, searched_volume
    if empty:
        slice_dice[:] = 0.0
        volume_dice[:] = 0.0
    filled = ~np.any(label_array == 0, axis=(1, 2))
    if filled.any():  # no heart segmentation labels every pixel of a slice, whatever a model makes of the crop
        warn(f"QC: the segmentation labels every pixel of slice(s) {np.flatnonzero(filled).tolist()} (no "
             "background): it is not a segmentation of the heart; predicted Dice 0 there and for the volume.")
        slice_dice[filled] = 0.0
        volume_dice[:] = 0.0
    not_judged = [index for index, code in enumerate(structures) if code not in judged]
    slice_dice[:, not_judged] = np.nan
    volume_dice[not_judged] = np.nan
    for index, code in enumerate(structures):  # judged but drawn nowhere: a failed segmentation of it, not "n/a"
        if code in judged and not empty and not np.isin(label_array, codes_of_structure(code)).any():
            volume_dice[index] = 0.0
    if search_dice is not None:
        search_dice = search_dice.copy()
        search_dice[:, not_judged] = np.nan
    slice_min = np.where(np.isnan(slice_dice), np.inf, slice_dice).min(axis=1)
    flags = assessed & (slice_min < config.dice_threshold)

    rules = check_rules(label_array, image.geometry.spacing_mm, structures=judged)
    missed = sorted({int(k) for k in unsegmented_slices if 0 <= int(k) < n_slices and not label_array[int(k)].any()})
    if missed:
        judged_columns = [index for index, code in enumerate(structures) if code in judged]
        assessed[missed] = True
        slice_dice[np.ix_(missed, judged_columns)] = 0.0
        flags[missed] = True
        reason = "heart seen here by the cine localiser, but nothing is segmented"
        message = (f"The segmentation stops before the heart does: the cine localiser sees the heart on unlabelled "
                   f"slice(s) {missed} beyond its labelled range; they are flagged with predicted Dice 0, and the "
                   "volume Dice does not count them.")
        rules = replace(
            rules, passed=False, slice_flags=rules.slice_flags | np.isin(np.arange(n_slices), missed),
            slice_reasons=tuple(reasons + ((reason,) if k in missed else ()) for k, reasons in
                                enumerate(rules.slice_reasons)),
            volume_reasons=rules.volume_reasons + (message,),
        )
        warn(f"QC: {message}")

    result = QCResult(
        slice_dice=slice_dice,
        structures=structures,
        volume_dice=volume_dice,
        assessed=assessed,
        slice_flags=flags,
        dice_threshold=config.dice_threshold,
        rules=rules,
        surrogate=surrogate,
        roi_spacing_mm=roi_spacing,
        resampled_to_fit=bool(resampled_to_fit),
        roi_size_px=network.input_size,
        empty_segmentation=bool(empty),
        search=search_record,
        warnings=tuple(warnings),
        predictor=predictor,
        search_dice=search_dice,
        margin_slices=margin,
    )
    log.info(
        "QC: %d of %d assessed slices flagged (predicted Dice < %.2f); min predicted Dice %.3f",
        result.n_flagged_slices, int(assessed.sum()), config.dice_threshold, result.min_slice_dice,
    )
    report(progress, 1.0, "QC done")
    return result


def run_qc(
    image: Volume,
    labels: Volume,
    model: Any | None,
    *,
    config: QCConfig = QCConfig(),
    device: Any = None,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    searched: str | Sequence[str] = "",
    regressor: Any = None,
    surrogate_wanted: bool = False,
) -> QCResult | None:
    """QC as a step of a segmentation pipeline: :func:`assess_segmentation`, or None with a warning.

    Parameters
    ----------
    image, labels, config, device, progress
        As :func:`assess_segmentation`.
    model : SegmentationVAE, LoadedModel or None
        None when no ``qc_vae`` model is installed: QC is skipped.
    provenance : Provenance, optional
        Receives the warnings, the QC timing (``"qc"``), the QC model (when it is a ``LoadedModel``) and the
        QC parameters (``parameters["qc"]``).
    searched : str or sequence of str
        Where the model was looked for, named in the "QC skipped" warning.
    regressor : QCDiceRegressor, LoadedModel or None
        The CNN Dice regressor when installed (see :func:`assess_segmentation`).
    surrogate_wanted : bool
        As :func:`assess_segmentation`, but False by default: a segmentation pipeline writes no surrogate, so with
        the regressor as predictor the latent search is skipped.

    Returns
    -------
    QCResult or None
        None when there is no model, or the input cannot be quality-checked (e.g. a constant image in the ROI);
        the reason is a provenance warning starting "QC skipped" or "QC not done". A segmentation never fails
        because of QC.
    """
    provenance = provenance if provenance is not None else Provenance(command="qc")
    if model is None:
        where = searched if isinstance(searched, str) else ", ".join(str(p) for p in searched)
        provenance.warn(
            f"QC skipped: no {QC_MODEL_NAME} model found in {where or 'the model folders'}; train one with "
            "scripts/train_qc.py (see README) and pass its folder with --models-dir (or CARDIACAI_MODELS).",
            log,
        )
        return None
    try:
        with provenance.timed("qc"):
            result = assess_segmentation(image, labels, model, config=config, device=device,
                                         provenance=provenance, progress=progress, regressor=regressor,
                                         surrogate_wanted=surrogate_wanted)
    except (InputError, ModelError) as error:
        provenance.warn(f"QC not done: {error}", log)
        return None
    for used in (model, regressor if result.predictor in ("regressor", "combined") else None):
        if hasattr(used, "model_use"):
            use = used.model_use()
            if use not in provenance.models:
                provenance.models.append(use)
    provenance.parameters["qc"] = config.to_dict()
    return result
