"""Training data and training of the QC models: the generative VAE and the CNN Dice regressor baseline.

Typical use (``scripts/train_qc.py`` runs these stages on the ACDC split)::

    train_pairs = prepare_qc_pairs(train_cases)                     # ground-truth pairs: the good-quality manifold
    val_pairs = prepare_qc_pairs(val_cases)
    vae, history = train_qc_vae(train_pairs, val_pairs, out_dir="runs/qc_vae", epochs=100)
    poor = make_poor_segmentations(train_cases, cine_models=models)  # corrupted + attacked, with true Dice
    regressor, history = train_qc_regressor(poor, poor_val, out_dir="runs/qc_regressor")

The VAE only ever sees ground-truth pairs (Wang et al., section 2.3); the regressor (Robinson et al. 2018) needs
poor segmentations whose true Dice is known, made here from the training patients in two ways: synthetic
corruptions of the ground truth (:func:`corrupt_labels`: shift, erosion, dilation, holes, missing slices at graded
strength) and, when cine models are given, the cine models' predictions on images attacked with white noise of graded
variance (the paper's attack, :func:`attacked_segmentations`).

Pairs are kept compactly in :class:`QCPairs` (image quantised to 8 bits, binary structure masks): tens of thousands
of 96 x 96 slices fit in memory and in one ``.npz``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from ..datasets.case import Case
from ..errors import DataError, InputError
from ..geometry import Volume
from ..io.atomic import atomic_path, write_text_atomic
from ..labels import LV_MYOCARDIUM, MVO, SCAR
from ..metrics.overlap import dice_per_slice
from ..models.networks import build_seeded_network
from ..preprocessing import InputSpec
from ..progress import ProgressCallback, report
from ..training.checkpoint import load_checkpoint_weights
from ..training.config import TrainingConfig
from ..training.engine import Trainer
from .corruptions import add_noise_to_image, dilate_labels, drop_slices, erode_labels, punch_holes, shift_labels
from .assess import combination_terms
from .search import QC_CROP_SIZE, QC_SPACING_MM, QC_STRUCTURES, latent_search, predicted_dice, qc_input
from .vae import DEFAULT_FEATURES, SegmentationVAE, vae_loss

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CORRUPTION_KINDS",
    "ATTACK_NOISE_VARIANCES",
    "QCPairs",
    "PoorSegmentation",
    "qc_input_spec",
    "corrupt_labels",
    "synthetic_poor_segmentations",
    "attacked_segmentations",
    "pairs_from_segmentations",
    "prepare_qc_pairs",
    "make_poor_segmentations",
    "concatenate_qc_pairs",
    "save_qc_pairs",
    "load_qc_pairs",
    "QCPairDataset",
    "dice_regression_loss",
    "train_qc_vae",
    "train_qc_regressor",
    "augment_qc_pairs",
    "augment_regressor_pairs",
    "vae_predicted_dice",
    "fit_dice_combination",
    "evaluate_dice_prediction",
]

log = logging.getLogger(__name__)

CorruptionKind = Literal["shift", "erode", "dilate", "holes", "missing_slices"]
#: Synthetic corruptions of :func:`corrupt_labels`, in a fixed order.
CORRUPTION_KINDS: tuple[str, ...] = ("shift", "erode", "dilate", "holes", "missing_slices")
#: Noise variances (fraction of the squared 1-99 % intensity range) of the training attacks: true Dice of the
#: cine models' output then spreads from about 0.9 (0.005) to about 0.1-0.3 (0.3).
ATTACK_NOISE_VARIANCES: tuple[float, ...] = (0.005, 0.01, 0.02, 0.05, 0.1, 0.3)

# Strength at level 1 of each corruption, in mm (converted to pixels with the in-plane spacing).
_MAX_SHIFT_MM = 20.0
_MAX_MORPHOLOGY_MM = 6.0
_HOLE_RADIUS_MM = 6.0
_MAX_HOLES_PER_SLICE = 12.0
_VAE_SIDECAR = "vae_loss.json"


# ---------------------------------------------------------------------------------------------------------------------
# containers


@dataclass(frozen=True)
class QCPairs:
    """n image-segmentation pairs of the QC input (96 x 96 ROI), stored compactly, with their true Dice.

    Attributes
    ----------
    images : (n, S, S) uint8 ndarray
        The image channel of :func:`~cardiac_ai.qc.search.qc_input` (min-max normalised to [0, 1]) times 255,
        rounded.
    structures : (n, n_structures, S, S) bool ndarray
        One mask per structure, in the order of ``structure_codes``.
    dice : (n, n_structures) float64 ndarray
        True Dice of the segmentation against the ground truth, per slice and structure, computed on the image's
        own grid; NaN where the structure is absent from both (nothing to judge); 1 for ground-truth pairs.
    case_ids, kinds : (n,) str ndarrays
        Source case, and how the segmentation was made (``"ground_truth"``, ``"noise_attack"``, a corruption kind).
    slice_indices : (n,) int64 ndarray
        k of the slice in its stack.
    levels : (n,) float64 ndarray
        Severity in the kind's unit: 0 for the ground truth, the corruption level in [0, 1], or the noise variance.
    roi_spacing_mm : (n,) float64 ndarray
        In-plane spacing of the ROI actually used (raised above 1.8 mm when a heart did not fit).
    structure_codes : tuple of int
        Label codes of the structure channels (default RV blood pool, LV myocardium, LV blood pool).
    """

    images: NDArray[np.uint8]
    structures: NDArray[np.bool_]
    dice: NDArray[np.float64]
    case_ids: NDArray[np.str_]
    slice_indices: NDArray[np.int64]
    kinds: NDArray[np.str_]
    levels: NDArray[np.float64]
    roi_spacing_mm: NDArray[np.float64]
    structure_codes: tuple[int, ...] = QC_STRUCTURES

    def __post_init__(self) -> None:
        n = self.images.shape[0] if self.images.ndim == 3 else -1
        problems = []
        if self.images.ndim != 3 or self.images.dtype != np.uint8 or self.images.shape[1] != self.images.shape[2]:
            problems.append(f"images must be (n, S, S) uint8, got {self.images.shape} {self.images.dtype}")
        n_structures = len(self.structure_codes)
        if self.structures.shape != (n, n_structures, *self.images.shape[1:]) or self.structures.dtype != np.bool_:
            problems.append(f"structures must be (n, {n_structures}, S, S) bool, "
                            f"got {self.structures.shape} {self.structures.dtype}")
        if self.dice.shape != (n, n_structures):
            problems.append(f"dice must be (n, {n_structures}), got {self.dice.shape}")
        for name in ("case_ids", "slice_indices", "kinds", "levels", "roi_spacing_mm"):
            if getattr(self, name).shape != (n,):
                problems.append(f"{name} must be ({n},), got {getattr(self, name).shape}")
        if problems:
            raise InputError("Invalid QCPairs: " + "; ".join(problems) + ".")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def n_structures(self) -> int:
        return len(self.structure_codes)

    @property
    def crop_size(self) -> int:
        return int(self.images.shape[1])

    def as_float(self, index: Any = slice(None)) -> NDArray[np.float32]:
        """The pairs as the QC models take them: (m, 1 + n_structures, S, S) float32 in [0, 1]."""
        images = self.images[index]
        structures = self.structures[index]
        if images.ndim == 2:  # a single integer index
            images, structures = images[np.newaxis], structures[np.newaxis]
        out = np.empty((images.shape[0], 1 + self.n_structures, *images.shape[1:]), dtype=np.float32)
        out[:, 0] = images.astype(np.float32) / 255.0
        out[:, 1:] = structures
        return out

    def targets(self) -> NDArray[np.float32]:
        """Regression targets (n, n_structures): the true Dice with NaN (structure in neither) counted as 1.0,
        the convention of :func:`~cardiac_ai.qc.search.predicted_dice`."""
        return np.nan_to_num(self.dice, nan=1.0).astype(np.float32)

    def subset(self, mask: NDArray[np.bool_] | NDArray[np.integer]) -> "QCPairs":
        """The pairs selected by a boolean mask of length n or an index array."""
        index = np.asarray(mask)
        if index.dtype == np.bool_ and index.shape != (len(self),):
            raise InputError(f"subset mask must have shape ({len(self)},), got {index.shape}.")
        return QCPairs(
            self.images[index], self.structures[index], self.dice[index], self.case_ids[index],
            self.slice_indices[index], self.kinds[index], self.levels[index], self.roi_spacing_mm[index],
            self.structure_codes,
        )

    def with_structures(self, codes: Sequence[int]) -> "QCPairs":
        """The same pairs with only the structures ``codes`` (in that order), e.g. ``(2,)`` for a myocardium-only
        VAE as in the paper; the image and the true Dice of the kept structures are unchanged."""
        codes = tuple(int(c) for c in codes)
        missing = [c for c in codes if c not in self.structure_codes]
        if not codes or missing or len(set(codes)) != len(codes):
            raise InputError(
                f"with_structures needs distinct label codes among the pairs' {self.structure_codes}, got {codes}."
            )
        index = [self.structure_codes.index(c) for c in codes]
        return dataclasses.replace(self, structures=self.structures[:, index], dice=self.dice[:, index],
                                   structure_codes=codes)


@dataclass(frozen=True)
class PoorSegmentation:
    """A segmentation to be judged, the image it belongs to, and the ground truth it is scored against.

    Attributes
    ----------
    case_id : str
    kind : str
        ``"ground_truth"``, ``"noise_attack"``, one of :data:`CORRUPTION_KINDS`, or a benchmark's own name.
    level : float
        Severity in the kind's unit (corruption level in [0, 1], noise variance, gamma...).
    image : Volume (k, j, i)
        The image the QC sees with the segmentation.
    labels : Volume (k, j, i) uint8
        The segmentation being judged, on the image's grid.
    truth : Volume (k, j, i) uint8
        The ground truth on the same grid.
    """

    case_id: str
    kind: str
    level: float
    image: Volume
    labels: Volume
    truth: Volume


def qc_input_spec(*, n_structures: int = len(QC_STRUCTURES)) -> InputSpec:
    """The input spec of both QC models, for their model cards: 1.8 mm, 96 x 96, min-max normalisation over the
    ROI, image plus ``n_structures`` channels (the spacing may be raised per case to fit the heart, see
    :func:`~cardiac_ai.qc.search.qc_input`)."""
    return InputSpec(
        in_plane_spacing_mm=(QC_SPACING_MM, QC_SPACING_MM), crop_size=(QC_CROP_SIZE, QC_CROP_SIZE),
        normalization="percentile", percentiles=(0.0, 100.0), channels=1 + n_structures,
    )


# ---------------------------------------------------------------------------------------------------------------------
# poor segmentations


def _case_seed(seed: int, case_id: str) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32(case_id.encode("utf-8"))])


def corrupt_labels(labels: Volume, kind: str, level: float, *, seed: int = 0) -> Volume:
    """A corrupted copy of a segmentation, of graded strength.

    Parameters
    ----------
    labels : Volume (k, j, i), integer codes
        The segmentation to corrupt (usually the ground truth). Its in-plane spacing turns mm into pixels.
    kind : {"shift", "erode", "dilate", "holes", "missing_slices"}
        ``shift``: translate every slice by ``level * 20`` mm in one random direction; ``erode`` / ``dilate``:
        shrink / grow every structure by ``level * 6`` mm (rounded to whole pixels); ``holes``: punch
        ``level * 12`` discs of radius 6 mm per labelled slice (in total, rounded); ``missing_slices``: erase the
        labels of ``ceil(level * (n_labelled - 1))`` labelled slices (one at least stays).
    level : float in [0, 1]
        0 returns an unchanged copy; 1 is the strongest corruption.
    seed : int
        Direction of the shift, positions of holes, choice of slices (the same seed nests milder into stronger).

    Returns
    -------
    Volume
        Same geometry and dtype as ``labels``.

    Raises
    ------
    InputError
        An unknown kind, a level outside [0, 1], or labels that are not a 3D Volume.
    """
    if not isinstance(labels, Volume) or labels.axes != "kji":
        raise InputError("labels must be a 3D (k, j, i) cardiac_ai Volume.")
    if kind not in CORRUPTION_KINDS:
        raise InputError(f"kind must be one of {CORRUPTION_KINDS}, got {kind!r}.")
    if not (isinstance(level, (int, float, np.floating, np.integer)) and 0.0 <= float(level) <= 1.0):
        raise InputError(f"level must be a number in [0, 1], got {level!r}.")
    level = float(level)
    array = np.asarray(labels.array)
    spacing_i, spacing_j = labels.geometry.spacing_mm[:2]
    pixel_mm = 0.5 * (spacing_i + spacing_j)
    if kind == "shift":
        out = shift_labels(array, level * _MAX_SHIFT_MM / pixel_mm, seed=seed)
    elif kind == "erode":
        out = erode_labels(array, int(round(level * _MAX_MORPHOLOGY_MM / pixel_mm)))
    elif kind == "dilate":
        out = dilate_labels(array, int(round(level * _MAX_MORPHOLOGY_MM / pixel_mm)))
    elif kind == "holes":
        n_labelled = int(np.count_nonzero(np.any(array != 0, axis=(1, 2))))
        out = punch_holes(array, int(round(level * _MAX_HOLES_PER_SLICE * n_labelled)),
                          radius_px=max(_HOLE_RADIUS_MM / pixel_mm, 1.0), seed=seed)
    else:
        n_labelled = int(np.count_nonzero(np.any(array != 0, axis=(1, 2))))
        n_drop = min(int(math.ceil(level * (n_labelled - 1))), max(n_labelled - 1, 0))
        out = drop_slices(array, n_drop, seed=seed)
    return labels.with_array(out.astype(array.dtype, copy=False))


def _check_case(case: Case) -> None:
    if not isinstance(case, Case):
        raise InputError(f"cases must be cardiac_ai Case objects, got {type(case).__name__}.")
    if case.labels is None:
        raise InputError(f"Case {case.case_id} has no ground-truth labels; QC training data needs them.")


def synthetic_poor_segmentations(
    case: Case,
    *,
    n_variants: int = 4,
    kinds: Sequence[str] = CORRUPTION_KINDS,
    level_range: tuple[float, float] = (0.1, 1.0),
    seed: int = 0,
) -> list[PoorSegmentation]:
    """``n_variants`` corruptions of the case's ground truth, each of a random kind and level.

    Kind and level (uniform in ``level_range``) are drawn from a generator seeded by ``seed`` and the case id, so
    a case always gets the same variants, independent of the other cases.

    Raises
    ------
    InputError
        A case without labels, an unknown kind, or a bad ``n_variants`` / ``level_range``.
    """
    _check_case(case)
    if isinstance(n_variants, bool) or not isinstance(n_variants, int) or n_variants < 0:
        raise InputError(f"n_variants must be a non-negative integer, got {n_variants!r}.")
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in CORRUPTION_KINDS]
    if unknown or (n_variants and not kinds):
        raise InputError(f"kinds must be a non-empty subset of {CORRUPTION_KINDS}, got {kinds!r}.")
    low, high = (float(v) for v in level_range)
    if not 0.0 <= low <= high <= 1.0:
        raise InputError(f"level_range must be (low, high) with 0 <= low <= high <= 1, got {level_range!r}.")
    rng = np.random.default_rng(_case_seed(seed, case.case_id))
    items = []
    for _ in range(n_variants):
        kind = kinds[int(rng.integers(len(kinds)))]
        level = float(rng.uniform(low, high))
        corrupted = corrupt_labels(case.labels, kind, level, seed=int(rng.integers(2**31)))
        items.append(PoorSegmentation(case.case_id, kind, level, case.image, corrupted, case.labels))
    return items


def attacked_segmentations(
    case: Case,
    variances: Sequence[float] = ATTACK_NOISE_VARIANCES,
    *,
    cine_models: Any,
    mode: Literal["baseline", "region-aware"] = "baseline",
    seed: int = 0,
    device: Any = None,
) -> list[PoorSegmentation]:
    """The cine models' segmentations of the case's image attacked with white noise (Wang et al., experiment 1).

    Parameters
    ----------
    case : Case with labels
    variances : sequence of float
        Noise variances as :func:`~cardiac_ai.qc.corruptions.add_noise_to_image` takes them; 0 gives the
        models' segmentation of the clean image.
    cine_models : cardiac_ai.regions.CineModels
        Loaded cine models (``CineModels.from_registry``).
    mode : {"baseline", "region-aware"}
        Pipeline mode of :func:`~cardiac_ai.regions.segment_cine`; baseline is several times faster on a CPU.
    seed : int
        With the case id, seeds the noise.
    device : optional
        Passed to ``segment_cine``.

    Returns
    -------
    list of PoorSegmentation
        ``kind="noise_attack"``, ``level`` the variance. ``image`` is the **clean** image: the noise is only the
        means of making a poor segmentation, and QC judges the segmentation of the image as acquired.
    """
    from ..regions.pipeline import segment_cine

    _check_case(case)
    base_first = None if mode == "region-aware" else case.metadata.get("slice_order", "base_to_apex") != "apex_to_base"
    noise_seed = int(np.random.default_rng(_case_seed(seed, case.case_id)).integers(2**31))
    items = []
    for variance in variances:
        attacked = case.image.with_array(add_noise_to_image(case.image.array, float(variance), seed=noise_seed))
        result = segment_cine(attacked, models=cine_models, mode=mode, base_first=base_first, device=device)
        items.append(PoorSegmentation(case.case_id, "noise_attack", float(variance), case.image, result.labels,
                                      case.labels))
    return items


def _as_myocardium(array: np.ndarray) -> np.ndarray:
    return np.where(np.isin(array, (SCAR, MVO)), LV_MYOCARDIUM, array)


def pairs_from_segmentations(
    items: Iterable[PoorSegmentation],
    *,
    structures: Sequence[int] = QC_STRUCTURES,
    spacing_mm: float = QC_SPACING_MM,
    crop_size: int = QC_CROP_SIZE,
    labelled_only: bool = True,
    margin_slices: int = 0,
) -> QCPairs:
    """QC input pairs of each segmentation (:func:`~cardiac_ai.qc.search.qc_input`) with their true Dice per slice.

    Parameters
    ----------
    items : PoorSegmentation objects
    structures, spacing_mm, crop_size
        As :func:`~cardiac_ai.qc.search.qc_input`.
    labelled_only : bool
        Keep only slices where the segmentation or the ground truth holds one of ``structures`` (slices beyond
        the heart in both say nothing about the overlap).
    margin_slices : int >= 0
        With ``labelled_only``, also keep up to this many slices beyond each end of the labelled extent (first to
        last slice where the segmentation or the truth holds a structure), where both are empty: they teach a Dice
        regressor that no heart there is right, so QC can assess slices beyond a segmentation's end
        (``inference["assess_margin_slices"]`` of the regressor's model card).

    Returns
    -------
    QCPairs
        Items whose image is constant inside the ROI (qc_input refuses them) are left out with a WARNING.

    Raises
    ------
    InputError
        If no item gives any pair.
    """
    structures = tuple(int(s) for s in structures)
    if isinstance(margin_slices, bool) or not isinstance(margin_slices, int) or margin_slices < 0:
        raise InputError(f"margin_slices must be a non-negative integer, got {margin_slices!r}.")
    parts: list[QCPairs] = []
    for item in items:
        try:
            pairs, transform = qc_input(item.image, item.labels, spacing_mm=spacing_mm, structures=structures,
                                        crop_size=crop_size)
        except InputError as error:
            log.warning("Skipping %s (%s, level %g): %s", item.case_id, item.kind, item.level, error)
            continue
        checked, truth = _as_myocardium(np.asarray(item.labels.array)), _as_myocardium(np.asarray(item.truth.array))
        true_dice = dice_per_slice(checked, truth, structures, empty_value=np.nan)
        keep = np.ones(len(pairs), dtype=bool)
        if labelled_only:
            keep = np.any(np.isin(checked, structures), axis=(1, 2)) | np.any(np.isin(truth, structures), axis=(1, 2))
            labelled = np.flatnonzero(keep)
            if margin_slices and labelled.size:
                keep[max(labelled[0] - margin_slices, 0): labelled[-1] + margin_slices + 1] = True
        if not keep.any():
            continue
        n = int(keep.sum())
        parts.append(QCPairs(
            images=np.round(np.clip(pairs[keep, 0], 0.0, 1.0) * 255.0).astype(np.uint8),
            structures=pairs[keep, 1:] > 0.5,
            dice=true_dice[keep],
            case_ids=np.full(n, item.case_id).astype(str),
            slice_indices=np.flatnonzero(keep).astype(np.int64),
            kinds=np.full(n, item.kind).astype(str),
            levels=np.full(n, float(item.level)),
            roi_spacing_mm=np.full(n, float(transform.spec.in_plane_spacing_mm[0])),
            structure_codes=structures,
        ))
    if not parts:
        raise InputError("No QC pairs: every segmentation was skipped or held no labelled slice.")
    return concatenate_qc_pairs(parts)


def prepare_qc_pairs(
    cases: Iterable[Case],
    *,
    structures: Sequence[int] = QC_STRUCTURES,
    spacing_mm: float = QC_SPACING_MM,
    crop_size: int = QC_CROP_SIZE,
    labelled_only: bool = True,
    progress: ProgressCallback | None = None,
) -> QCPairs:
    """Ground-truth image-segmentation pairs, the VAE's training data (the good-quality manifold).

    Parameters
    ----------
    cases : Case objects with labels (ACDC frames)
    structures, spacing_mm, crop_size
        As :func:`~cardiac_ai.qc.search.qc_input`.
    labelled_only : bool
        Keep only slices where the ground truth holds one of ``structures`` (default).
    progress : ProgressCallback, optional

    Returns
    -------
    QCPairs
        ``kinds`` ``"ground_truth"``, ``dice`` 1 (NaN for a structure absent from a slice).

    Raises
    ------
    InputError
        No cases, or a case without labels.
    """
    case_list = list(cases)
    if not case_list:
        raise InputError("prepare_qc_pairs got no cases.")
    items = []
    for number, case in enumerate(case_list):
        _check_case(case)
        report(progress, number / len(case_list), f"QC pairs of {case.case_id}")
        items.append(PoorSegmentation(case.case_id, "ground_truth", 0.0, case.image, case.labels, case.labels))
    pairs = pairs_from_segmentations(items, structures=structures, spacing_mm=spacing_mm, crop_size=crop_size,
                                     labelled_only=labelled_only)
    report(progress, 1.0, f"{len(pairs)} ground-truth QC pairs from {len(case_list)} cases")
    return pairs


def make_poor_segmentations(
    cases: Iterable[Case],
    *,
    n_variants: int = 4,
    kinds: Sequence[str] = CORRUPTION_KINDS,
    level_range: tuple[float, float] = (0.1, 1.0),
    cine_models: Any = None,
    noise_variances: Sequence[float] = ATTACK_NOISE_VARIANCES,
    cine_mode: Literal["baseline", "region-aware"] = "baseline",
    include_ground_truth: bool = True,
    structures: Sequence[int] = QC_STRUCTURES,
    margin_slices: int = 0,
    seed: int = 0,
    device: Any = None,
    progress: ProgressCallback | None = None,
) -> QCPairs:
    """Segmentations of known quality for training the Dice regressor: corrupted ground truth and attacked models.

    Parameters
    ----------
    cases : Case objects with labels (the training patients; never the test patients)
    n_variants : int
        Synthetic corruptions per case (:func:`synthetic_poor_segmentations`).
    kinds, level_range
        Corruption kinds to draw from and the range of their level.
    cine_models : cardiac_ai.regions.CineModels or callable, optional
        When given, also the models' segmentations of each image attacked with every noise variance
        (:func:`attacked_segmentations`). A callable takes the case and returns the models for it, e.g. those of
        the cross-validation fold that never saw the patient: models segment the patients they were trained on
        better than new ones, and a regressor trained on that flatters unseen patients' segmentations.
    noise_variances : sequence of float
        Variances of the attacks.
    cine_mode : {"baseline", "region-aware"}
        Pipeline mode of the attacks.
    include_ground_truth : bool
        Also the ground truth itself (true Dice 1), so the regressor sees good segmentations.
    structures : sequence of int
        Structure channels, as :func:`~cardiac_ai.qc.search.qc_input`.
    margin_slices : int >= 0
        Also this many slices beyond each end of the labelled extent (:func:`pairs_from_segmentations`).
    seed : int
        Seeds corruption kinds, levels and noise (per case, with its id).
    device, progress
        Passed to the cine models; progress over the cases.

    Returns
    -------
    QCPairs
        Slices where the segmentation or the ground truth holds a structure, and the margin slices.

    Raises
    ------
    InputError
        No cases, a case without labels, or bad options.
    """
    case_list = list(cases)
    if not case_list:
        raise InputError("make_poor_segmentations got no cases.")
    parts = []
    for number, case in enumerate(case_list):
        _check_case(case)
        report(progress, number / len(case_list), f"Poor segmentations of {case.case_id}")
        items = []
        if include_ground_truth:
            items.append(PoorSegmentation(case.case_id, "ground_truth", 0.0, case.image, case.labels, case.labels))
        items += synthetic_poor_segmentations(case, n_variants=n_variants, kinds=kinds, level_range=level_range,
                                              seed=seed)
        if cine_models is not None and len(noise_variances):
            models = cine_models(case) if callable(cine_models) else cine_models
            items += attacked_segmentations(case, noise_variances, cine_models=models, mode=cine_mode,
                                            seed=seed, device=device)
        if items:
            parts.append(pairs_from_segmentations(items, structures=structures, margin_slices=margin_slices))
    pairs = concatenate_qc_pairs(parts)
    report(progress, 1.0, f"{len(pairs)} QC pairs of known quality from {len(case_list)} cases")
    return pairs


# ---------------------------------------------------------------------------------------------------------------------
# persistence


def concatenate_qc_pairs(parts: Sequence[QCPairs]) -> QCPairs:
    """One QCPairs from several with the same structures and crop size.

    Raises
    ------
    InputError
        No parts, or parts with different structures or crop sizes.
    """
    parts = list(parts)
    if not parts:
        raise InputError("concatenate_qc_pairs got nothing to concatenate.")
    codes, size = parts[0].structure_codes, parts[0].crop_size
    for part in parts:
        if part.structure_codes != codes or part.crop_size != size:
            raise InputError(
                f"Cannot concatenate QC pairs of structures {part.structure_codes} at {part.crop_size} px with "
                f"{codes} at {size} px."
            )
    return QCPairs(
        *(np.concatenate([getattr(p, name) for p in parts]) for name in
          ("images", "structures", "dice", "case_ids", "slice_indices", "kinds", "levels", "roi_spacing_mm")),
        structure_codes=codes,
    )


def save_qc_pairs(pairs: QCPairs, path: str | os.PathLike) -> Path:
    """Write pairs as one compressed ``.npz`` (atomically); read back with :func:`load_qc_pairs`.

    Raises
    ------
    InputError
        If ``path`` does not end in ``.npz``.
    """
    target = Path(path)
    if target.suffix != ".npz":
        raise InputError(f"QC pairs are saved as .npz, got {target.name}.")
    arrays = {
        "images": pairs.images,
        "structures": np.packbits(pairs.structures, axis=-1),
        "dice": pairs.dice,
        "case_ids": pairs.case_ids.astype(str),
        "slice_indices": pairs.slice_indices,
        "kinds": pairs.kinds.astype(str),
        "levels": pairs.levels,
        "roi_spacing_mm": pairs.roi_spacing_mm,
        "meta_json": np.array(json.dumps({"format": "cardiac_ai.qc_pairs", "version": 1,
                                          "structure_codes": list(pairs.structure_codes),
                                          "crop_size": pairs.crop_size})),
    }
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return target


def load_qc_pairs(path: str | os.PathLike) -> QCPairs:
    """Read pairs written by :func:`save_qc_pairs`.

    Raises
    ------
    DataError
        If the file is missing, unreadable or not a QC pairs file (the message names it).
    """
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            meta = json.loads(str(data["meta_json"]))
            if meta.get("format") != "cardiac_ai.qc_pairs":
                raise DataError(f"{source} is not a QC pairs file (format {meta.get('format')!r}).")
            size = int(meta["crop_size"])
            return QCPairs(
                images=data["images"],
                structures=np.unpackbits(data["structures"], axis=-1, count=size).astype(bool),
                dice=data["dice"],
                case_ids=data["case_ids"],
                slice_indices=data["slice_indices"],
                kinds=data["kinds"],
                levels=data["levels"],
                roi_spacing_mm=data["roi_spacing_mm"],
                structure_codes=tuple(int(c) for c in meta["structure_codes"]),
            )
    except (OSError, KeyError, ValueError, InputError) as error:
        raise DataError(f"Cannot read QC pairs from {source}: {error}") from error


# ---------------------------------------------------------------------------------------------------------------------
# training


class QCPairDataset:
    """Map-style torch dataset of QC pairs: ``{"image": (1 + S, size, size) float32, "label": (S,) float32}``.

    ``label`` is the regression target (:meth:`QCPairs.targets`); the VAE ignores it.
    """

    def __init__(self, pairs: QCPairs) -> None:
        if not isinstance(pairs, QCPairs) or len(pairs) == 0:
            raise InputError("QCPairDataset needs a non-empty QCPairs.")
        self.pairs = pairs
        self._targets = pairs.targets()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        import torch

        return {"image": torch.from_numpy(self.pairs.as_float(int(index))[0]),
                "label": torch.from_numpy(self._targets[int(index)])}


def dice_regression_loss(logits: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
    """MSE between ``sigmoid(logits)`` and the true Dice, both (batch, n_structures): the regressor's loss."""
    import torch

    return torch.nn.functional.mse_loss(torch.sigmoid(logits), target.to(logits.dtype).reshape(logits.shape))


def _check_training_inputs(train_pairs: QCPairs, val_pairs: QCPairs, epochs: int, batch_size: int, lr: float) -> None:
    for name, pairs in (("train_pairs", train_pairs), ("val_pairs", val_pairs)):
        if not isinstance(pairs, QCPairs) or len(pairs) == 0:
            raise InputError(f"{name} must be a non-empty QCPairs (from prepare_qc_pairs or make_poor_segmentations).")
    if train_pairs.structure_codes != val_pairs.structure_codes or train_pairs.crop_size != val_pairs.crop_size:
        raise InputError(
            f"train_pairs ({train_pairs.structure_codes}, {train_pairs.crop_size} px) and val_pairs "
            f"({val_pairs.structure_codes}, {val_pairs.crop_size} px) differ in structures or crop size."
        )
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}.")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a positive number, got {lr!r}.")


def augment_qc_pairs(
    x: "torch.Tensor", generator: "torch.Generator", *, n_image_channels: int = 1, rotate_deg: float = 15.0,
    scale: float = 0.1, translate_px: float = 4.0, gamma: float = 1.3,
) -> "torch.Tensor":
    """The same random rotation, scale and shift for the image and its masks; a random gamma on the image.

    ``x`` is a batch of pairs ``(batch, n_image_channels + S, size, size)`` in [0, 1]; masks stay binary (resampled
    bilinearly, then thresholded at 0.5), so the VAE keeps learning sharp segmentations. Returns a new tensor.
    """
    import torch
    import torch.nn.functional as F

    from ..training.batch_augmentation import random_gamma, random_sampling_grid

    grid = random_sampling_grid(x.shape[0], tuple(x.shape[2:]), generator, rotate_deg=rotate_deg, scale=scale,
                                translate_px=translate_px, device=x.device)
    moved = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    image = random_gamma(moved[:, :n_image_channels], generator, gamma)
    masks = (moved[:, n_image_channels:] > 0.5).to(moved.dtype)
    return torch.cat([image, masks], dim=1)


def augment_regressor_pairs(
    x: "torch.Tensor", generator: "torch.Generator", *, n_image_channels: int = 1, gamma: float = 2.0,
    noise_sd: float = 0.08, noise_probability: float = 0.5, curve_probability: float = 0.0,
) -> "torch.Tensor":
    """:func:`augment_qc_pairs` with a wider gamma and, on some pairs, white noise on the image only.

    The regressor must judge the segmentation, not the look of the image: a good segmentation of a noisy or
    differently contrasted image keeps its Dice, so these changes leave the target as it is. Noise of standard
    deviation up to ``noise_sd`` (uniform per pair) is added to a ``noise_probability`` share of the pairs, then the
    image is clipped to [0, 1] as :func:`~cardiac_ai.qc.search.qc_input` keeps it. With ``curve_probability`` > 0
    that share of the images first goes through a random intensity curve
    (:func:`~cardiac_ai.training.batch_augmentation.random_intensity_curve`: another contrast, tissues possibly
    reordered); 0 (default) draws nothing for it, so runs without it are unchanged.
    """
    import torch

    from ..training.batch_augmentation import random_intensity_curve

    moved = augment_qc_pairs(x, generator, n_image_channels=n_image_channels, gamma=gamma)
    image = moved[:, :n_image_channels]
    batch = x.shape[0]
    if curve_probability > 0:
        curved = (torch.rand(batch, generator=generator) < curve_probability).to(image.device).view(batch, 1, 1, 1)
        image = torch.where(curved, random_intensity_curve(image, generator), image)
    chosen = (torch.rand(batch, generator=generator) < noise_probability).to(torch.float32)
    sd = (torch.rand(batch, generator=generator) * noise_sd * chosen).to(image.device).view(batch, 1, 1, 1)
    noise = torch.randn(image.shape, generator=generator).to(image.device)
    image = (image + sd * noise).clamp(0, 1)
    return torch.cat([image, moved[:, n_image_channels:]], dim=1)


class _RegressorTrainer(Trainer):
    """The shared loop with the regressor's inputs augmented (:func:`augment_regressor_pairs`), seeded per epoch."""

    def __init__(self, *args: Any, augment: bool = False, curve_probability: float = 0.0, **kwargs: Any) -> None:
        import torch

        super().__init__(*args, **kwargs)
        self.augment = bool(augment)
        self.curve_probability = float(curve_probability)
        self._augmentation_generator = torch.Generator()

    def train_step(self, batch: Mapping[str, Any]) -> "torch.Tensor":
        if self.augment:
            batch = {**batch, "image": augment_regressor_pairs(batch["image"], self._augmentation_generator,
                                                               curve_probability=self.curve_probability)}
        return super().train_step(batch)

    def on_train_epoch_start(self, epoch: int) -> None:
        """Seed the augmentation by (seed, epoch): a resumed run draws what an uninterrupted one would."""
        self._augmentation_generator.manual_seed(int(self.config.seed) * 100_003 + int(epoch))


class _VAETrainer(Trainer):
    """The shared loop with the VAE's step: loss = BCE + MSE + beta KL (:func:`~cardiac_ai.qc.vae.vae_loss`)."""

    def __init__(
        self,
        config: TrainingConfig,
        network: SegmentationVAE,
        train_dataset: QCPairDataset,
        val_dataset: QCPairDataset,
        *,
        beta: float,
        out_dir: str | os.PathLike,
        device: Any = None,
        progress: ProgressCallback | None = None,
        augment: bool = False,
    ) -> None:
        import torch

        # config.loss is not used: the steps below compute vae_loss
        super().__init__(config, network, train_dataset, val_dataset, out_dir=out_dir, device=device,
                         progress=progress)
        self.beta = float(beta)
        self.augment = bool(augment)
        self._augmentation_generator = torch.Generator()


    def train_step(self, batch: Mapping[str, Any]) -> "torch.Tensor":
        import torch

        assert self.optimizer is not None
        x = batch["image"].to(self.device, non_blocking=True)
        if self.augment:
            x = augment_qc_pairs(x, self._augmentation_generator, n_image_channels=self.network.n_image_channels)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            recon, mu, logvar = self.model(x)
        total, _ = vae_loss(recon.float(), x, mu.float(), logvar.float(), beta=self.beta,
                            n_image_channels=self.network.n_image_channels)
        total.backward()
        if self.config.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.config.grad_clip_norm)
        self.optimizer.step()
        return total.detach()

    def validation_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        x = batch["image"].to(self.device, non_blocking=True)
        with self._autocast():
            recon, mu, logvar = self.network(x)
        total, parts = vae_loss(recon.float(), x, mu.float(), logvar.float(), beta=self.beta,
                                n_image_channels=self.network.n_image_channels)
        return {"val_loss": float(total), **{f"val_{k}": float(v) for k, v in parts.items()}}

    def on_train_epoch_start(self, epoch: int) -> None:
        """Record beta beside config.json (the config has no field for it), so a resume can check it; seed the
        augmentation by (seed, epoch), so a resumed run draws the same augmentations as an uninterrupted one."""
        sidecar = self.out_dir / _VAE_SIDECAR
        if self.dist.is_main and not sidecar.exists():
            write_text_atomic(sidecar, json.dumps({"beta": self.beta}) + "\n")
        self._augmentation_generator.manual_seed(int(self.config.seed) * 100_003 + int(epoch))


def train_qc_vae(
    train_pairs: QCPairs,
    val_pairs: QCPairs,
    *,
    latent_size: int = 8,
    beta: float = 0.01,
    features: Sequence[int] = DEFAULT_FEATURES,
    epochs: int = 100,
    batch_size: int = 16,
    lr: float = 1e-4,
    early_stopping_patience: int | None = 15,
    seed: int = 0,
    out_dir: str | os.PathLike,
    device: Any = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
    augment: bool = False,
) -> tuple[SegmentationVAE, list[dict[str, float]]]:
    """Train the QC VAE on ground-truth pairs (Wang et al.: Adam, lr 1e-4, batch 16, 100 epochs, early stopping).

    Parameters
    ----------
    train_pairs, val_pairs : QCPairs
        Ground-truth pairs (:func:`prepare_qc_pairs`) of the training and validation patients.
    latent_size, beta : int, float
        The paper's m = 8 and beta = 0.01 by default (its Table A1 ablation).
    features : 4 ints
        Encoder channels (:class:`~cardiac_ai.qc.vae.SegmentationVAE`).
    epochs, batch_size, lr : int, int, float
        Training length, batch and Adam learning rate.
    early_stopping_patience : int or None
        Stop after this many epochs without a lower validation loss; None trains all epochs.
    seed : int
        Seeds the weights, the batch order and the reparameterisation noise: the same seed gives the same model.
    out_dir : path
        The shared trainer's run folder (``config.json``, ``last.pt``, ``best.pt`` selected on the validation
        loss, ``log.csv``) plus ``vae_loss.json`` (beta).
    device : optional
        ``"cpu"``, ``"cuda"``, None for CUDA when available.
    progress : ProgressCallback, optional
        Fraction of the epochs done, after every batch; raise Cancelled in it to stop.
    resume : bool
        Continue an interrupted run in ``out_dir`` (same settings required); a finished run returns at once.
    overwrite : bool
        Allow a fresh run in a folder that already holds files.
    augment : bool
        Random rotation, scale and shift of each training pair and a gamma on its image
        (:func:`augment_qc_pairs`): ACDC has about 1,300 training slices against the paper's 8,000, and without it
        the VAE over-fits within 20 to 30 epochs.

    Returns
    -------
    model : SegmentationVAE
        With the weights of the best validation epoch, in eval mode, on the CPU.
    history : list of dict
        One record per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_bce``, ``val_mse``, ``val_kl``, ``lr``,
        ``seconds``.

    Raises
    ------
    InputError
        Empty or mismatched pairs, bad options, or resuming a run made with another beta or config.
    """
    _check_training_inputs(train_pairs, val_pairs, epochs, batch_size, lr)
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
        raise InputError(f"beta must be a number >= 0, got {beta!r}.")
    config = TrainingConfig(
        network="qc_vae",
        network_kwargs={"n_structures": train_pairs.n_structures, "latent_size": latent_size,
                        "features": [int(f) for f in features], "input_size": train_pairs.crop_size,
                        "n_image_channels": 1},
        input_spec=qc_input_spec(n_structures=train_pairs.n_structures).to_dict(),
        epochs=epochs, batch_size=batch_size, learning_rate=lr, weight_decay=0.0, optimizer="adam",
        scheduler="none", loss="bce", amp=False, seed=seed, early_stopping_patience=early_stopping_patience,
        metric_name="val_loss", metric_mode="min",
    )
    out = Path(out_dir)
    sidecar = out / _VAE_SIDECAR
    if resume and sidecar.exists():
        saved = json.loads(sidecar.read_text(encoding="utf-8")).get("beta")
        if saved != beta:
            raise InputError(f"Cannot resume {out}: it was trained with beta={saved}, now beta={beta}. "
                             "Resume with the same beta, or start a new out_dir.")
    network = build_seeded_network(config.network, seed, **config.network_kwargs)
    trainer = _VAETrainer(config, network, QCPairDataset(train_pairs), QCPairDataset(val_pairs), beta=beta,
                          out_dir=out, device=device, progress=progress, augment=augment)
    result = trainer.fit(resume=resume, overwrite=overwrite)
    if result.best_checkpoint is None:
        raise InputError("VAE training gave no finite validation loss; lower the learning rate.")
    network.to("cpu")
    load_checkpoint_weights(network, result.best_checkpoint)
    log.info("QC VAE (m=%d, beta=%g): best val_loss %.4f at epoch %s of %d", latent_size, beta,
             result.best_metric, result.best_epoch, result.epochs_completed)
    return network.eval(), [dict(record) for record in result.history]


def _regression_metric_fn(network: "nn.Module", loader: Any, device: Any) -> dict[str, float]:
    import torch

    squared, absolute, count = 0.0, 0.0, 0
    for batch in loader:
        predicted = torch.sigmoid(network(batch["image"].to(device)).float())
        target = batch["label"].to(device).to(predicted.dtype)
        squared += float(((predicted - target) ** 2).sum())
        absolute += float((predicted - target).abs().sum())
        count += target.numel()
    return {"val_loss": squared / max(count, 1), "val_mae": absolute / max(count, 1)}


def train_qc_regressor(
    train_pairs: QCPairs,
    val_pairs: QCPairs,
    *,
    features: Sequence[int] = (16, 32, 64, 128),
    dropout: float = 0.2,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    early_stopping_patience: int | None = None,
    seed: int = 0,
    out_dir: str | os.PathLike,
    device: Any = None,
    progress: ProgressCallback | None = None,
    resume: bool = False,
    overwrite: bool = False,
    augment: bool = False,
    curve_probability: float = 0.0,
) -> tuple["nn.Module", list[dict[str, float]]]:
    """Train the CNN Dice regressor (Robinson et al. 2018) on pairs of known quality.

    Parameters
    ----------
    train_pairs, val_pairs : QCPairs
        From :func:`make_poor_segmentations` on the training and validation patients; the targets are
        :meth:`QCPairs.targets`.
    features, dropout
        :class:`~cardiac_ai.models.qc_regressor.QCDiceRegressor` hyperparameters.
    epochs, batch_size, lr, weight_decay : AdamW with a cosine schedule.
    early_stopping_patience, seed, out_dir, device, progress, resume, overwrite
        As :func:`train_qc_vae`; ``best.pt`` is selected on the validation MSE (``val_loss``).
    augment : bool
        Augment each training batch with :func:`augment_regressor_pairs` (rotation, scale, shift of image and masks
        together; gamma and noise on the image), seeded by (seed, epoch). Validation pairs are never augmented.
    curve_probability : float in [0, 1]
        With ``augment``: share of the images also mapped through a random intensity curve (see there).

    Returns
    -------
    model : QCDiceRegressor
        Best validation weights, eval mode, on the CPU; ``sigmoid(model(x))`` is the predicted Dice
        (:func:`~cardiac_ai.models.qc_regressor.regress_dice`).
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss`` (MSE), ``val_mae``, ``lr``, ``seconds``.

    Raises
    ------
    InputError
        Empty or mismatched pairs or bad options.
    """
    _check_training_inputs(train_pairs, val_pairs, epochs, batch_size, lr)
    if not (isinstance(curve_probability, (int, float)) and 0.0 <= curve_probability <= 1.0):
        raise InputError(f"curve_probability must be in [0, 1], got {curve_probability!r}.")
    config = TrainingConfig(
        network="qc_dice_regressor",
        network_kwargs={"in_channels": 1 + train_pairs.n_structures, "n_outputs": train_pairs.n_structures,
                        "features": [int(f) for f in features], "input_size": train_pairs.crop_size,
                        "dropout": float(dropout)},
        input_spec=qc_input_spec(n_structures=train_pairs.n_structures).to_dict(),
        epochs=epochs, batch_size=batch_size, learning_rate=lr, weight_decay=weight_decay, optimizer="adamw",
        scheduler="cosine", loss="bce", amp=False, seed=seed, early_stopping_patience=early_stopping_patience,
        metric_name="val_loss", metric_mode="min",
    )
    network = build_seeded_network(config.network, seed, **config.network_kwargs)
    trainer = _RegressorTrainer(
        config, network, QCPairDataset(train_pairs), QCPairDataset(val_pairs), loss_fn=dice_regression_loss,
        metric_fn=_regression_metric_fn, out_dir=out_dir, device=device, progress=progress, augment=augment,
        curve_probability=curve_probability,
    )
    result = trainer.fit(resume=resume, overwrite=overwrite)
    if result.best_checkpoint is None:
        raise InputError("Regressor training gave no finite validation loss; lower the learning rate.")
    network.to("cpu")
    load_checkpoint_weights(network, result.best_checkpoint)
    return network.eval(), [dict(record) for record in result.history]


# ---------------------------------------------------------------------------------------------------------------------
# evaluation


def vae_predicted_dice(
    model: SegmentationVAE,
    pairs: QCPairs,
    *,
    steps: int = 100,
    lr: float = 0.05,
    chunk_size: int = 256,
    device: Any = None,
    progress: ProgressCallback | None = None,
) -> NDArray[np.float64]:
    """Predicted Dice of every pair by latent search (``steps=0``: the encoder only), in chunks of slices.

    Returns
    -------
    (n, n_structures) float64 ndarray
        :func:`~cardiac_ai.qc.search.predicted_dice` of each pair's surrogate against its segmentation.
    """
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}.")
    out = np.empty((len(pairs), pairs.n_structures), dtype=np.float64)
    for start in range(0, len(pairs), chunk_size):
        report(progress, start / max(len(pairs), 1), f"latent search, slices {start + 1}-{len(pairs)}")
        chunk = pairs.as_float(slice(start, start + chunk_size))
        result = latent_search(model, chunk, steps=steps, lr=lr, device=device)
        out[start:start + len(chunk)] = predicted_dice(result.surrogate, chunk[:, model.n_image_channels:])
    report(progress, 1.0, "latent search done")
    return out


def fit_dice_combination(
    regressor: "nn.Module",
    vae: SegmentationVAE,
    pairs: QCPairs,
    *,
    steps: int = 100,
    device: Any = None,
    progress: ProgressCallback | None = None,
    rotations_deg: Sequence[float] = (0.0,),
) -> tuple[NDArray[np.float64], dict[str, Any]]:
    """Least-squares weights of :data:`~cardiac_ai.qc.assess.COMBINATION_TERMS` per structure, predicting the true
    Dice of pairs of known quality from the regressor's and the latent search's Dice (``steps=0``: the encoder's).
    ``rotations_deg``: the regressor's test-time views (QC must then use the same, from the card).

    Fit on validation pairs (patients neither network trained on), on the slices where the segmentation shows the
    structure (elsewhere QC's absent / missing rule applies, not the combination).

    Returns
    -------
    coefficients : (n_structures, 4) float64 ndarray
    summary : dict
        ``n_values`` per structure, and r / MAE of the regressor alone and of the combination on the fitted values.

    Raises
    ------
    InputError
        Fewer than 10 usable values for a structure.
    """
    from ..models.qc_regressor import regress_dice

    regressed = regress_dice(regressor, pairs.as_float(), device=device, rotations_deg=rotations_deg)
    searched = vae_predicted_dice(vae, pairs, steps=steps, device=device, progress=progress)
    shown = pairs.structures.any(axis=(2, 3))
    coefficients = np.zeros((pairs.n_structures, 4))
    summary: dict[str, Any] = {"n_values": [], "regressor": [], "combined": []}
    for s in range(pairs.n_structures):
        use = shown[:, s] & np.isfinite(pairs.dice[:, s]) & np.isfinite(searched[:, s])
        if use.sum() < 10:
            raise InputError(f"Only {int(use.sum())} pairs show structure {pairs.structure_codes[s]} with a known "
                             "Dice; the combination needs at least 10.")
        terms = combination_terms(regressed[use, s], searched[use, s])
        coefficients[s] = np.linalg.lstsq(terms, pairs.dice[use, s], rcond=None)[0]
        summary["n_values"].append(int(use.sum()))
        summary["regressor"].append(evaluate_dice_prediction(regressed[use, s], pairs.dice[use, s]))
        summary["combined"].append(evaluate_dice_prediction(np.clip(terms @ coefficients[s], 0, 1), pairs.dice[use, s]))
    return coefficients, summary


def evaluate_dice_prediction(predicted: NDArray[np.floating], true: NDArray[np.floating]) -> dict[str, float]:
    """Pearson r and mean absolute error of predicted against true Dice over the finite true values.

    Parameters
    ----------
    predicted, true : ndarrays of the same shape
        NaN in ``true`` (nothing to judge) is left out.

    Returns
    -------
    dict
        ``n``, ``pearson_r`` (NaN when either side is constant or n < 2), ``mae``, ``mae_sd``.

    Raises
    ------
    InputError
        Shapes differ.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    if predicted.shape != true.shape:
        raise InputError(f"predicted {predicted.shape} and true {true.shape} Dice must have the same shape.")
    keep = np.isfinite(true) & np.isfinite(predicted)
    p, t = predicted[keep], true[keep]
    n = int(keep.sum())
    if n == 0:
        return {"n": 0, "pearson_r": math.nan, "mae": math.nan, "mae_sd": math.nan}
    errors = np.abs(p - t)
    r = float(np.corrcoef(p, t)[0, 1]) if n >= 2 and np.std(p) > 0 and np.std(t) > 0 else math.nan
    return {"n": n, "pearson_r": r, "mae": float(errors.mean()), "mae_sd": float(errors.std())}
