"""The weak-label recipe end to end: image-level labels in, a CAM classifier and a whole-heart U-Net out.

:func:`train_weak_cam_models` is what ``cardiacai train --task weak-cam`` (your own data) and
``scripts/train_weak_acdc.py`` (ACDC) both run. It works in stages, each leaving files in ``work_dir``, so that an
interrupted run continues (``resume=True``) where it stopped:

``prepare``      ``weak_<part>.npz`` for every non-empty part of the split: every slice of every case on the recipe's
                 grid, cropped around the CENTRE OF THE FIELD OF VIEW, with its case's image-level label as class
                 (:func:`~cardiac_ai.weak.training.prepare_weak_slices`); ``weak_slices.json`` records the label and grid.
``classifier``   ``run_classifier/``: ``cam_classifier_2d`` (dilated residual network, non-local block, CAM head) on
                 those classes; cross-entropy; best epoch by the validation balanced accuracy (image-level labels).
``pseudo``       ``pseudo_<part>.npz`` (scaled CAMs and pseudo-labels of the training and validation slices) and
                 ``pseudo_choice.json`` (prior, CAM method and pseudo-label settings used).
``weak_pseudo``  ``run_weak_pseudo_label/``: U-Net (background, heart) on the pseudo-labels, Dice + cross-entropy.
``weak_prior``   ``run_weak_cam_prior/``: the same U-Net pulled towards the soft CAM prior.
``weak_self``    ``self_<part>.npz`` and ``self_choice.json``: the pseudo-label U-Net's own predictions on the training
                 and validation slices, thresholded and eroded (:func:`~cardiac_ai.weak.pseudo_labels.
                 self_training_labels`); ``run_weak_self_training/``: a new U-Net trained on them (self-training).
``register``     ``weak_cam_classifier`` (its card's ``inference`` field holds the CAM method and pseudo-label settings
                 that ``cardiacai cam`` reuses) and ``weak_heart_unet`` into ``register_to``.

Two ways to choose the prior, the CAM method, the pseudo-label settings and the U-Net that is registered:

``"label_free"`` (the default; the only one ``cardiacai train`` offers)
    No label map is ever opened: the case references lose their label paths before any file is read. The settings
    are those the ACDC validation patients chose (:data:`LABEL_FREE_CAM_METHOD`, :data:`LABEL_FREE_CAM_PSEUDO_LABEL`,
    :data:`LABEL_FREE_MOTION_PSEUDO_LABEL`, :data:`LABEL_FREE_SELF_TRAINING`). The prior (``prior="auto"``) is the
    ED-ES motion of each slice (:func:`~cardiac_ai.weak.pseudo_labels.motion_prior`: the heart beats, the chest barely
    moves) when every case has its other phase, i.e. case ids ``<patient>_ED`` and ``<patient>_ES`` with the same
    slices (ACDC; name your files so in the generic layout); otherwise the CAM of each slice's own class. The first
    U-Net of ``modes`` that was trained is registered.
``"validation_truth"`` (``scripts/train_weak_acdc.py``)
    Label maps are read; the heart masks of every part go to ``truth_<part>.npz`` (for benchmarks), and only those
    of the VALIDATION patients choose among CAM methods, pseudo-label settings and priors (mean Jaccard), the
    self-training threshold and erosion (mean whole-heart Dice per volume) and between the trained U-Nets (Dice):
    hyper-parameters chosen on validation patients. No training step sees a label map.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np

from ..datasets.case import CaseRef, load_case
from ..datasets.splits import (
    Split,
    check_run_data,
    groups_from_refs,
    keep_run_data,
    keep_run_split,
    make_patient_split,
    refs_in_part,
    remove_earlier_run,
)
from ..errors import InputError, OutputError
from ..io.atomic import atomic_path, write_text_atomic
from ..preprocessing import InputSpec
from ..progress import ProgressCallback, report, subrange
from ..training.augmentation import AugmentationConfig
from ..training.config import TrainingConfig
from ..training.slices import PreparedSlices
from .pseudo_labels import PseudoLabelConfig

__all__ = [
    "RECIPE_SPEC",
    "WEAK_STAGES",
    "WEAK_MODES",
    "CAM_TARGET_LAYERS",
    "WEAK_AUGMENTATION",
    "LABEL_FREE_CAM_METHOD",
    "LABEL_FREE_CAM_PSEUDO_LABEL",
    "LABEL_FREE_MOTION_PSEUDO_LABEL",
    "LABEL_FREE_SELF_TRAINING",
    "WeakRecipe",
    "WeakCamTraining",
    "cam_pseudo_label_grid",
    "motion_pseudo_label_grid",
    "self_training_grid",
    "check_image_labels",
    "save_weak_slices",
    "load_weak_slices",
    "other_phase",
    "motion_of",
    "load_trained_network",
    "predict_heart",
    "predict_heart_probabilities",
    "train_weak_cam_models",
]

log = logging.getLogger(__name__)

#: The recipe's grid: 2 mm, 96 x 96 (192 mm) around the centre of the field of view (the ACDC models').
RECIPE_SPEC = InputSpec(in_plane_spacing_mm=(2.0, 2.0), crop_size=(96, 96))
#: Stages in the order they run.
WEAK_STAGES = ("prepare", "classifier", "pseudo", "weak_pseudo", "weak_prior", "weak_self", "register")
#: Weak U-Nets, and the stage that trains each: "pseudo_label" and "cam_prior" are the modes of
#: :func:`~cardiac_ai.weak.training.train_weak_segmentation`; "self_training" is a second "pseudo_label" U-Net
#: trained on the first one's own predictions (it needs "pseudo_label").
WEAK_MODES = {"pseudo_label": "weak_pseudo", "cam_prior": "weak_prior", "self_training": "weak_self"}
#: CAM methods compared, with the layer a MONAI method explains (None: the network's own CAM head).
CAM_TARGET_LAYERS: dict[str, str | None] = {"model": None, "gradcam": "attention", "gradcampp": "attention"}
#: Augmentation of the classifier and the U-Nets: the heart is not centred in a field-of-view crop, so shift.
WEAK_AUGMENTATION = AugmentationConfig(translate_prob=0.5, translate_range_px=8.0)
#: Label-free defaults: what the ACDC validation patients chose (docs/benchmarks.md, weak_cam_classifier 1.0).
LABEL_FREE_CAM_METHOD = "gradcampp"
LABEL_FREE_CAM_PSEUDO_LABEL = "floor 0.3 + CAM multi-Otsu + CRF"
LABEL_FREE_MOTION_PSEUDO_LABEL = "motion, 2-class Otsu + CRF, compact"
#: Self-training labels without ground truth: what the ACDC validation patients chose (threshold 0.5, 8 mm erosion).
LABEL_FREE_SELF_TRAINING = {"threshold": 0.5, "erosion_mm": 8.0}

_PARTS = ("train", "validation", "test")
_SLICES_FILE = "weak_slices.json"
_CHOICE_FILE = "pseudo_choice.json"
_SELF_CHOICE_FILE = "self_choice.json"
_PHASE_SWAP = {"_ED": "_ES", "_ES": "_ED"}


def cam_pseudo_label_grid() -> dict[str, PseudoLabelConfig]:
    """Pseudo-label settings for CAMs, by name. The paper's intensity multi-Otsu is left out: it drops dark pixels,
    which in cine are the myocardium (part of the whole-heart target)."""
    return {
        "paper steps without intensity Otsu (ReLU, [0.5, 1], CRF)": PseudoLabelConfig(otsu_classes=None),
        "CAM multi-Otsu + CRF": PseudoLabelConfig(otsu_source="cam"),
        "CAM multi-Otsu, no CRF": PseudoLabelConfig(otsu_source="cam", use_crf=False),
        "floor 0.3 + CRF": PseudoLabelConfig(otsu_classes=None, min_fraction=0.3),
        "floor 0.5 + CRF": PseudoLabelConfig(otsu_classes=None, min_fraction=0.5),
        "floor 0.3 + CAM multi-Otsu + CRF": PseudoLabelConfig(otsu_source="cam", min_fraction=0.3),
    }


def motion_pseudo_label_grid() -> dict[str, PseudoLabelConfig]:
    """Pseudo-label settings for the ED-ES motion prior (:func:`~cardiac_ai.weak.pseudo_labels.motion_prior`)."""
    return {
        "motion, 2-class Otsu + CRF, compact": PseudoLabelConfig(otsu_source="cam", otsu_classes=2, shape="compact"),
        "motion, 3-class Otsu + CRF, compact": PseudoLabelConfig(otsu_source="cam", otsu_classes=3, shape="compact"),
        "motion, 3-class Otsu + CRF": PseudoLabelConfig(otsu_source="cam", otsu_classes=3),
    }


def self_training_grid() -> list[dict[str, float]]:
    """Self-training label settings compared on validation patients: probability threshold x erosion (mm)."""
    return [{"threshold": threshold, "erosion_mm": erosion}
            for threshold in (0.5, 0.7, 0.8, 0.9) for erosion in (0.0, 2.0, 4.0, 6.0, 8.0, 10.0)]


@dataclass(frozen=True)
class WeakRecipe:
    """Grid, network sizes and optimisation of the recipe; the defaults trained the bundled ACDC models.

    Attributes
    ----------
    spec : InputSpec
        Grid and crop of both networks; the crop must be divisible by 16 (the U-Net pools four times).
    width : int
        Channels of the first level of both networks, doubled per level: classifier ``(w, 2w, 4w, 8w)``, U-Net
        ``(w, 2w, 4w, 8w, 16w)``.
    epochs, seg_epochs : int
        Epochs of the classifier and of each U-Net.
    self_training_epochs : int or None
        Epochs of the self-trained U-Net; None: ``seg_epochs``. (ACDC, validation Dice per volume: 0.702 after 25,
        0.713 after 50, 0.730 after 100; it learns from cleaner labels than the first U-Net and keeps improving.)
    batch_size : int
    classifier_learning_rate, unet_learning_rate : float
    seed : int
        Seed of weights, shuffling and augmentation.
    """

    spec: InputSpec = RECIPE_SPEC
    width: int = 16
    epochs: int = 30
    seg_epochs: int = 30
    self_training_epochs: int | None = None
    batch_size: int = 32
    classifier_learning_rate: float = 1e-3
    unet_learning_rate: float = 2e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if any(size % 16 for size in self.spec.crop_size):
            raise InputError(f"The weak recipe's crop must be divisible by 16 (the U-Net pools four times), got "
                             f"{tuple(self.spec.crop_size)}; use e.g. 64, 96 or 128.")
        for name in ("width", "epochs", "seg_epochs", "batch_size", "self_training_epochs"):
            value = getattr(self, name)
            if name == "self_training_epochs" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"WeakRecipe.{name} must be a positive integer, got {value!r}.")
        for name in ("classifier_learning_rate", "unet_learning_rate"):
            if not getattr(self, name) > 0:
                raise InputError(f"WeakRecipe.{name} must be > 0, got {getattr(self, name)!r}.")

    def classifier_kwargs(self, n_classes: int) -> dict[str, Any]:
        w = self.width
        return {"in_channels": 1, "out_channels": n_classes, "mask_channel": None, "features": (w, 2 * w, 4 * w, 8 * w)}

    def unet_kwargs(self) -> dict[str, Any]:
        w = self.width
        return {"out_channels": 2, "channels": (w, 2 * w, 4 * w, 8 * w, 16 * w), "strides": (2, 2, 2, 2),
                "num_res_units": 1}

    def classifier_config(self, n_classes: int) -> TrainingConfig:
        return TrainingConfig(network="cam_classifier_2d", network_kwargs=self.classifier_kwargs(n_classes),
                              input_spec=self.spec.to_dict(), epochs=self.epochs, batch_size=self.batch_size,
                              learning_rate=self.classifier_learning_rate, loss="ce",
                              metric_name="val_balanced_accuracy", metric_mode="max", seed=self.seed)

    def unet_config(self, mode: str = "pseudo_label") -> TrainingConfig:
        epochs = self.seg_epochs if mode != "self_training" or self.self_training_epochs is None \
            else self.self_training_epochs
        return TrainingConfig(network="unet2d", network_kwargs=self.unet_kwargs(), input_spec=self.spec.to_dict(),
                              epochs=epochs, batch_size=self.batch_size,
                              learning_rate=self.unet_learning_rate, loss="dice_ce", metric_name="val_loss",
                              metric_mode="min", seed=self.seed)


@dataclass(frozen=True)
class WeakCamTraining:
    """What :func:`train_weak_cam_models` did (fields of stages that did not run in this call stay empty).

    Attributes
    ----------
    work_dir : the run folder.
    classes : class names in index order (the classifier's outputs).
    split : the patient split used (also in ``work_dir/split.json``).
    classifier_metrics : validation metrics of the classifier's best epoch.
    unet_metrics : mode -> validation metrics (the loss on the validation pseudo-labels or priors) of its best epoch.
    choice : the content of ``pseudo_choice.json`` (prior, CAM method, pseudo-label settings, selection).
    registered_mode : the weak U-Net mode registered as ``weak_heart_unet``.
    card_paths : model cards written.
    """

    work_dir: Path
    classes: tuple[str, ...]
    split: Split
    classifier_metrics: dict[str, float] = field(default_factory=dict)
    unet_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    choice: dict[str, Any] | None = None
    registered_mode: str | None = None
    card_paths: tuple[Path, ...] = ()


# -- labels, split ------------------------------------------------------------------------------------------------
def check_image_labels(
    refs: Sequence[CaseRef],
    label_column: str,
    *,
    classes: Sequence[str] | None = None,
    allow_missing_classes: bool = False,
) -> tuple[str, ...]:
    """The classes of ``label_column``, after checking that every case has one and that there are two or more.

    Parameters
    ----------
    refs : the cases (their ``image_labels``: a ``labels.csv`` column, or ACDC's ``"group"``).
    label_column : the image-level label to classify.
    classes : class names in index order; default: the sorted distinct values.
    allow_missing_classes : accept classes of ``classes`` without any case (quick checks on a few patients).

    Raises
    ------
    InputError
        No case has the label (the message lists the labels found), some cases lack it, a value outside
        ``classes``, fewer than two classes, or one of ``classes`` without any case.
    """
    refs = list(refs)
    if not refs:
        raise InputError("No cases to train on.")
    having = [r for r in refs if label_column in r.image_labels]
    if not having:
        found = sorted({name for r in refs for name in r.image_labels})
        raise InputError(
            f"No case has an image-level label {label_column!r}; labels found: {found or 'none'}. "
            f"Give --label-column one of those, or add a {label_column!r} column to labels.csv "
            f"(case_id,{label_column}); ACDC cases carry 'group' (the diagnosis of Info.cfg)."
        )
    lacking = [r.case_id for r in refs if label_column not in r.image_labels]
    if lacking:
        raise InputError(
            f"{len(lacking)} of {len(refs)} cases have no {label_column!r} label (e.g. {', '.join(lacking[:3])}). "
            f"Give every case a value in labels.csv (a row with an empty slice column) or remove those images."
        )
    values = [str(r.image_labels[label_column]) for r in refs]
    found_classes = tuple(sorted(set(values)))
    classes = found_classes if classes is None else tuple(str(c) for c in classes)
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise InputError(f"{label_column!r} values {unknown} are not among the classes {list(classes)}.")
    if len(classes) < 2:
        raise InputError(
            f"A classifier needs at least two classes of {label_column!r}; all {len(refs)} cases are "
            f"{list(classes)}. Add cases of another class."
        )
    empty = [c for c in classes if c not in found_classes]
    if empty and not allow_missing_classes:
        raise InputError(f"Class(es) {empty} of {label_column!r} have no case; add cases or drop those classes.")
    return classes


def _default_split(refs: Sequence[CaseRef], label_column: str, seed: int) -> Split:
    """80/20 patient split stratified by the label, so that every class reaches training when it can."""
    groups = groups_from_refs(refs, key=label_column)
    return make_patient_split(sorted(groups), groups=groups, validation_fraction=0.2, test_fraction=0.0, seed=seed)


def _check_parts(refs: Sequence[CaseRef], split: Split, label_column: str, classes: Sequence[str], *,
                 allow_missing_classes: bool) -> None:
    train = refs_in_part(refs, split, "train")
    validation = refs_in_part(refs, split, "validation")
    if not validation:
        raise InputError("The split has no validation patients; training needs some to choose the best epochs. "
                         "Add patients or give a split with a validation part.")
    unchecked = sorted(set(classes) - {str(r.image_labels[label_column]) for r in validation})
    if unchecked:
        log.warning("Class(es) %s of %r have no validation case; the classifier's best epoch is chosen without them.",
                    unchecked, label_column)
    seen = {str(r.image_labels[label_column]) for r in train}
    for name in () if allow_missing_classes else classes:
        if name not in seen:
            patients = sorted({r.patient_id for r in refs if str(r.image_labels[label_column]) == name})
            raise InputError(
                f"Class {name!r} of {label_column!r} has no case among the training patients (its patients: "
                f"{patients[:5]}, all in other parts). Add patients of that class (two or more, so that one can "
                f"train) or give a split that puts one in training."
            )


# -- prepared slices on disk --------------------------------------------------------------------------------------
def save_weak_slices(weak: Any, path: str | Path) -> Path:
    """Write :class:`~cardiac_ai.weak.training.WeakSlices` as a compressed npz; images (percentile-normalised, in
    [0, 1]) as uint8, a quarter of the size."""
    images = np.clip(np.rint(weak.slices.images * 255.0), 0, 255).astype(np.uint8)
    return _save_npz(path, images=images, targets=weak.targets, case_ids=weak.slices.case_ids,
                     slice_indices=weak.slices.slice_indices, classes=np.array(weak.classes))


def _save_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """np.savez_compressed, atomically: an interrupted run never leaves a half-written file to resume from."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    return Path(path)


def load_weak_slices(path: str | Path, spec: InputSpec) -> Any:
    """Read what :func:`save_weak_slices` wrote, as WeakSlices on grid ``spec``."""
    from .training import WeakSlices

    data = np.load(path)
    n = len(data["targets"])
    if tuple(data["images"].shape[1:]) != tuple(spec.crop_size):
        raise InputError(f"{path} holds {data['images'].shape[1:]} crops, not {tuple(spec.crop_size)}: it was "
                         "prepared with another grid. Use a new run folder for other grid settings.")
    slices = PreparedSlices(data["images"].astype(np.float32) / 255.0, None, data["case_ids"], data["slice_indices"],
                            np.full(n, np.nan, np.float32), np.zeros(n, np.int8), spec)
    return WeakSlices(slices, data["targets"], tuple(str(c) for c in data["classes"]))


def _pairs(weak: Any) -> np.ndarray | None:
    where = {(c, int(k)): i for i, (c, k) in enumerate(zip(weak.slices.case_ids, weak.slices.slice_indices))}
    pairs = []
    for c, k in zip(weak.slices.case_ids, weak.slices.slice_indices):
        suffix = str(c)[-3:]
        if suffix not in _PHASE_SWAP:
            return None
        partner = where.get((str(c)[:-3] + _PHASE_SWAP[suffix], int(k)))
        if partner is None:
            return None
        pairs.append(partner)
    return np.asarray(pairs, np.int64)


def other_phase(weak: Any) -> np.ndarray:
    """Index of the same slice at the other phase (``<patient>_ED`` <-> ``<patient>_ES``) for every slice.

    Raises
    ------
    InputError
        A slice without its other phase.
    """
    pairs = _pairs(weak)
    if pairs is None:
        raise InputError(
            "The ED-ES motion prior needs both phases of every patient: case ids <patient>_ED and <patient>_ES with "
            "the same slices. Name the images so, or use the CAM prior."
        )
    return pairs


def motion_of(weak: Any) -> np.ndarray:
    """ED-ES motion prior (n, cj, ci) of every slice (:func:`~cardiac_ai.weak.pseudo_labels.motion_prior`)."""
    from .pseudo_labels import motion_prior

    return motion_prior(weak.slices.images, weak.slices.images[other_phase(weak)], sigma_px=3.0)


def load_trained_network(run: str | Path, name: str | None = None, kwargs: Mapping[str, Any] | None = None):
    """The network of a training run with its ``best.pt`` weights, in eval mode; built from the run's
    ``config.json`` unless ``name`` and ``kwargs`` are given."""
    from ..models.networks import build_network
    from ..training.checkpoint import load_checkpoint_weights
    from ..training.config import CONFIG_FILE_NAME

    run = Path(run)
    if name is None:
        config = TrainingConfig.load(run / CONFIG_FILE_NAME)
        name, kwargs = config.network, config.network_kwargs
    network = build_network(name, **dict(kwargs or {}))
    load_checkpoint_weights(network, run / "best.pt")
    return network.eval()


def predict_heart_probabilities(network: Any, images: np.ndarray, device: str | None) -> np.ndarray:
    """Foreground softmax (n, j, i) float32 of a two-class U-Net on (n, j, i) slices, in batches of 64."""
    import torch

    from ..device import resolve_device

    target = resolve_device(device)
    network = network.to(target)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            batch = torch.from_numpy(images[start:start + 64, None].astype(np.float32)).to(target)
            out.append(torch.softmax(network(batch).float(), dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def predict_heart(network: Any, images: np.ndarray, device: str | None) -> np.ndarray:
    """Labels (n, j, i) uint8 of a two-class U-Net on (n, j, i) slices (foreground probability above 0.5)."""
    return (predict_heart_probabilities(network, images, device) > 0.5).astype(np.uint8)


def _mean_volume_dice(masks: np.ndarray, truth: np.ndarray, case_ids: np.ndarray) -> float:
    """Mean over cases of the whole-heart Dice of all their slices together (the benchmark's unit)."""
    from ..metrics.overlap import dice

    scores = [dice(masks[case_ids == c] > 0, truth[case_ids == c] > 0) for c in np.unique(case_ids)
              if truth[case_ids == c].any()]
    return float(np.mean(scores)) if scores else float("nan")


def _mean_jaccard(masks: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-slice Jaccard over slices whose ground truth holds heart (the paper's per-slice average)."""
    from ..metrics.overlap import jaccard

    scores = [jaccard(m > 0, t > 0) for m, t in zip(masks, truth) if t.any()]
    return float(np.mean(scores)) if scores else float("nan")


# -- stages -------------------------------------------------------------------------------------------------------
def _prepare(refs, split, work, *, label_column, classes, recipe, selection, resume, progress) -> None:
    from .training import prepare_weak_slices

    record = {"label_column": label_column, "classes": list(classes), "spec": recipe.spec.to_dict()}
    record_path = work / _SLICES_FILE
    if record_path.is_file():
        stored = json.loads(record_path.read_text())
        if stored != json.loads(json.dumps(record)):
            raise InputError(f"{work} was prepared for {stored}, not {record}; use a new run folder.")
    parts = [p for p in _PARTS if refs_in_part(refs, split, p)]
    for number, part in enumerate(parts):
        if resume and (work / f"weak_{part}.npz").exists():
            continue
        part_refs = refs_in_part(refs, split, part)
        if selection == "label_free":
            # The honesty rule: a label map that is never opened cannot leak into training.
            part_refs = [dataclasses.replace(r, label_paths=()) for r in part_refs]
        step = subrange(progress, number / len(parts), (number + 1) / len(parts))
        report(step, 0.0, f"Reading {len(part_refs)} {part} cases")
        cases = [load_case(r) for r in part_refs]
        weak, truth = prepare_weak_slices(cases, label_name=label_column, classes=classes, spec=recipe.spec,
                                          progress=subrange(step, 0.5, 1.0))
        save_weak_slices(weak, work / f"weak_{part}.npz")
        if selection == "validation_truth":
            if truth is None:
                raise InputError(f"selection 'validation_truth' needs a label map for every {part} case.")
            _save_npz(work / f"truth_{part}.npz", heart=(truth > 0).astype(np.uint8), labels=truth)
        log.info("prepared %s: %d slices of %d volumes", part, len(weak), len(set(weak.slices.case_ids)))
    write_text_atomic(record_path, json.dumps(record, indent=2) + "\n")


def _train_classifier(work, *, recipe, n_classes, resume, device, progress) -> dict[str, float]:
    from .training import train_weak_classifier

    run = work / "run_classifier"
    _, _, metrics = train_weak_classifier(
        load_weak_slices(work / "weak_train.npz", recipe.spec), load_weak_slices(work / "weak_validation.npz",
                                                                                  recipe.spec),
        config=recipe.classifier_config(n_classes), out_dir=run, augmentation=WEAK_AUGMENTATION, device=device,
        progress=progress, resume=resume and (run / "last.pt").exists(),
    )
    log.info("classifier %s", metrics)
    return metrics


def _choose_with_truth(classifier, val, truth, *, use_motion: bool, motion_only: bool, device, progress):
    """(results, best CAM result, best result, validation CAMs per method): settings by validation Jaccard."""
    from .pseudo_labels import pseudo_labels
    from .training import slice_cams

    everything = np.ones(len(val), bool)
    results, val_cams = [], {}
    for number, (method, layer) in enumerate(CAM_TARGET_LAYERS.items()):
        report(progress, number / (len(CAM_TARGET_LAYERS) + 1), f"Validation CAMs ({method})")
        val_cams[method] = slice_cams(classifier, val.slices.images, method=method, target_layer=layer,
                                      class_index=val.targets.tolist(), device=device)
        for name, config in cam_pseudo_label_grid().items():
            masks = pseudo_labels(val_cams[method], val.slices.images, everything, config=config)
            results.append({"prior": "cam", "method": method, "pseudo_label": name,
                            "val_jaccard": _mean_jaccard(masks, truth)})
            log.info("%-10s %-60s validation Jaccard %.3f", method, name, results[-1]["val_jaccard"])
    if use_motion:
        val_motion = motion_of(val)
        for name, config in motion_pseudo_label_grid().items():
            masks = pseudo_labels(val_motion, val.slices.images, everything, config=config)
            results.append({"prior": "motion", "method": "ED-ES motion", "pseudo_label": name,
                            "val_jaccard": _mean_jaccard(masks, truth)})
            log.info("%-10s %-60s validation Jaccard %.3f", "motion", name, results[-1]["val_jaccard"])
    best_cam = max((r for r in results if r["prior"] == "cam"), key=lambda r: r["val_jaccard"])
    candidates = [r for r in results if r["prior"] == "motion"] if motion_only else results
    best = max(candidates, key=lambda r: r["val_jaccard"])
    return results, best_cam, best, val_cams


def _pseudo(work, *, recipe, selection, prior, device, progress) -> dict[str, Any]:
    from .pseudo_labels import pseudo_labels
    from .training import scale_cams, slice_cams

    classifier = load_trained_network(work / "run_classifier")
    train = load_weak_slices(work / "weak_train.npz", recipe.spec)
    val = load_weak_slices(work / "weak_validation.npz", recipe.spec)
    if prior == "motion":  # raise before any work when a phase is missing
        other_phase(train)
        other_phase(val)
    use_motion = prior == "motion" or (prior == "auto" and _pairs(train) is not None and _pairs(val) is not None)
    if prior == "auto" and not use_motion:
        log.info("Not every case has its other phase (<patient>_ED and <patient>_ES): CAM prior, no motion prior.")
    if selection == "validation_truth":
        truth = np.load(work / "truth_validation.npz")["heart"]
        results, best_cam, best, val_cams = _choose_with_truth(
            classifier, val, truth, use_motion=use_motion, motion_only=prior == "motion", device=device,
            progress=subrange(progress, 0.0, 0.5))
    else:
        results, val_cams = [], {}
        best_cam = {"prior": "cam", "method": LABEL_FREE_CAM_METHOD, "pseudo_label": LABEL_FREE_CAM_PSEUDO_LABEL,
                    "val_jaccard": None}
        best = best_cam if not use_motion else {"prior": "motion", "method": "ED-ES motion",
                                                "pseudo_label": LABEL_FREE_MOTION_PSEUDO_LABEL, "val_jaccard": None}
    log.info("CAM pseudo-labels: %s; used for training: %s", best_cam, best)
    cam_config = cam_pseudo_label_grid()[best_cam["pseudo_label"]]
    config = cam_config if best["prior"] == "cam" else motion_pseudo_label_grid()[best["pseudo_label"]]
    method = best_cam["method"]
    start = 0.5 if selection == "validation_truth" else 0.0
    for number, (part, weak) in enumerate((("train", train), ("validation", val))):
        step = subrange(progress, start + (1 - start) * number / 2, start + (1 - start) * (number + 1) / 2)
        report(step, 0.0, f"{part} CAMs ({method})")
        cams = val_cams[method] if part == "validation" and method in val_cams else slice_cams(
            classifier, weak.slices.images, method=method, target_layer=CAM_TARGET_LAYERS[method],
            class_index=weak.targets.tolist(), device=device)
        report(step, 0.6, f"{part} pseudo-labels ({best['prior']} prior, DenseCRF)")
        source = cams if best["prior"] == "cam" else motion_of(weak)
        masks = pseudo_labels(source, weak.slices.images, np.ones(len(weak), bool), config=config)
        _save_npz(work / f"pseudo_{part}.npz", cams=scale_cams(cams).astype(np.float16),
                  masks=np.asarray(masks, np.uint8))
    choice = {"chosen": best, "chosen_cam": best_cam, "grid": results, "config": dataclasses.asdict(config),
              "cam_config": dataclasses.asdict(cam_config), "selection": selection}
    text = json.dumps(choice, indent=2)
    write_text_atomic(work / _CHOICE_FILE, text)
    return json.loads(text)


def _self_training_labels(work, *, recipe, selection, device, progress) -> dict[str, Any]:
    """``self_<part>.npz`` from the pseudo-label U-Net's predictions; settings by validation Dice or the defaults."""
    from .pseudo_labels import self_training_labels

    teacher_run = work / "run_weak_pseudo_label"
    if not (teacher_run / "best.pt").exists():
        raise InputError(f"Self-training starts from the pseudo-label U-Net; run the weak_pseudo stage first "
                         f"({teacher_run} has no best.pt).")
    teacher = load_trained_network(teacher_run)
    spacing = float(min(recipe.spec.in_plane_spacing_mm))
    in_px = lambda setting: int(round(setting["erosion_mm"] / spacing))  # noqa: E731
    probabilities, slices = {}, {}
    for number, part in enumerate(("train", "validation")):
        report(progress, 0.4 * number, f"Pseudo-label U-Net on the {part} slices")
        slices[part] = load_weak_slices(work / f"weak_{part}.npz", recipe.spec).slices
        probabilities[part] = predict_heart_probabilities(teacher, slices[part].images, device)
    grid: list[dict[str, Any]] = []
    if selection == "validation_truth":
        report(progress, 0.8, "Choosing threshold and erosion on the validation patients")
        truth = np.load(work / "truth_validation.npz")["heart"]
        case_ids = slices["validation"].case_ids
        for setting in self_training_grid():
            masks = self_training_labels(probabilities["validation"], threshold=setting["threshold"],
                                         erosion_px=in_px(setting))
            grid.append({**setting, "val_volume_dice": _mean_volume_dice(masks, truth, case_ids)})
            log.info("self-training labels %s: validation whole-heart Dice %.3f", setting, grid[-1]["val_volume_dice"])
        best = max(grid, key=lambda r: r["val_volume_dice"])
        chosen = {"threshold": best["threshold"], "erosion_mm": best["erosion_mm"]}
    else:
        chosen = dict(LABEL_FREE_SELF_TRAINING)
    for part in ("train", "validation"):
        _save_npz(work / f"self_{part}.npz", masks=self_training_labels(
            probabilities[part], threshold=chosen["threshold"], erosion_px=in_px(chosen)))
    record = {"chosen": {**chosen, "erosion_px": in_px(chosen)}, "grid": grid, "selection": selection,
              "teacher": "run_weak_pseudo_label"}
    write_text_atomic(work / _SELF_CHOICE_FILE, json.dumps(record, indent=2) + "\n")
    log.info("self-training labels: %s", record["chosen"])
    return record


def _train_unet(work, mode, *, recipe, resume, device, progress) -> dict[str, float]:
    from .training import train_weak_segmentation

    run = work / f"run_weak_{mode}"
    train = load_weak_slices(work / "weak_train.npz", recipe.spec)
    val = load_weak_slices(work / "weak_validation.npz", recipe.spec)
    if mode == "self_training":
        train_masks = np.load(work / "self_train.npz")["masks"]
        val_masks = np.load(work / "self_validation.npz")["masks"]
        train_cams = val_cams = None
    else:
        train_p, val_p = np.load(work / "pseudo_train.npz"), np.load(work / "pseudo_validation.npz")
        train_cams, train_masks = train_p["cams"].astype(np.float32), train_p["masks"]
        val_cams, val_masks = val_p["cams"].astype(np.float32), val_p["masks"]
    _, _, metrics = train_weak_segmentation(
        train, train_cams, train_masks, val, val_cams, val_masks,
        mode="cam_prior" if mode == "cam_prior" else "pseudo_label", config=recipe.unet_config(mode), out_dir=run,
        augmentation=WEAK_AUGMENTATION, device=device, progress=progress,
        resume=resume and (run / "last.pt").exists(),
    )
    log.info("weak U-Net (%s) %s", mode, metrics)
    return metrics


def _register(work, register_to, *, recipe, selection, modes, classes, label_title, training_data, split_summary,
              license, version, device) -> tuple[str, tuple[Path, ...]]:
    from ..metrics.overlap import dice
    from functools import partial

    from ..training.checkpoint import export_best_model
    from ..models.registry import register_models

    trained = [m for m in WEAK_MODES if (work / f"run_weak_{m}" / "best.pt").exists()]
    if not trained:
        raise InputError(f"No weak U-Net in {work} to register; run the weak_pseudo, weak_prior or weak_self stage "
                         "first.")
    scores: dict[str, float] = {}
    if selection == "validation_truth":
        val = load_weak_slices(work / "weak_validation.npz", recipe.spec)
        truth = np.load(work / "truth_validation.npz")["heart"]
        for mode in trained:
            predicted = predict_heart(load_trained_network(work / f"run_weak_{mode}"), val.slices.images, device)
            scores[mode] = float(np.mean([dice(p > 0, t > 0) for p, t in zip(predicted, truth) if t.any()]))
        log.info("validation whole-heart Dice per weak U-Net: %s", scores)
        best_mode = max(scores, key=scores.get)
    else:
        best_mode = next((m for m in modes if m in trained), trained[0])
    stored = json.loads((work / _CHOICE_FILE).read_text())
    choice, cam_choice = stored["chosen"], stored["chosen_cam"]
    inference = {"cam_method": cam_choice["method"],
                 "cam_target_layer": CAM_TARGET_LAYERS[cam_choice["method"]] or "attention",
                 "pseudo_label_config": stored["cam_config"]}
    chosen_how = ("CAM method chosen on validation: {method}, pseudo-labels: {name}."
                  if selection == "validation_truth" else
                  "CAM method {method}, pseudo-labels {name}: label-free defaults (chosen on ACDC validation "
                  "patients).")
    export_classifier = partial(  # called with the folder to write into
        export_best_model, work / "run_classifier", name="weak_cam_classifier", version=version, task="classification",
        label_map=dict(enumerate(classes)), training_data=training_data, split=split_summary,
        description=(f"{label_title} classifier ({', '.join(classes)}) per short-axis slice with a CAM head "
                     "(dilated residual network, non-local block); its class activation maps localise the heart. "
                     + chosen_how.format(method=cam_choice["method"], name=cam_choice["pseudo_label"])),
        license=license, inference=inference,
    )
    ending = (f"; validation whole-heart Dice {scores[best_mode]:.3f}." if best_mode in scores else
              "; best epoch by the loss on the validation slices' own targets, no ground truth.")
    pseudo_source = f"DenseCRF pseudo-labels from the {choice['prior']} prior ({choice['pseudo_label']})"
    if best_mode == "self_training":
        setting = json.loads((work / _SELF_CHOICE_FILE).read_text())["chosen"]
        target = (f"the predictions of a first U-Net trained on {pseudo_source}, above "
                  f"{setting['threshold']:g}, eroded {setting['erosion_mm']:g} mm, largest piece with holes filled")
    else:
        target = pseudo_source if best_mode == "pseudo_label" else "soft CAM prior"
    export_unet = partial(
        export_best_model, work / f"run_weak_{best_mode}", name="weak_heart_unet", version=version, task="segmentation",
        label_map={0: "background", 1: "heart"},
        training_data=f"{training_data}; targets: {choice['prior']}-prior pseudo-labels"
                      + (" and self-training" if best_mode == "self_training" else "") + ", no pixel label",
        split=split_summary,
        description=f"Whole-heart U-Net trained without pixel labels (mode {best_mode}: {target}){ending}",
        license=license, inference={"weak_mode": best_mode},  # `cardiacai cam` reports how its labels were learnt
    )
    cards = register_models(register_to, {f"weak_cam_classifier-{version}": export_classifier,  # both, or neither
                                          f"weak_heart_unet-{version}": export_unet})
    log.info("registered weak_cam_classifier and weak_heart_unet (%s) into %s", best_mode, register_to)
    return best_mode, cards


# -- the recipe ---------------------------------------------------------------------------------------------------
_STAGE_WEIGHTS = {"prepare": 1.0, "classifier": 4.0, "pseudo": 1.5, "weak_pseudo": 3.0, "weak_prior": 3.0,
                  "weak_self": 3.2, "register": 0.5}
_STAGE_TITLES = {"prepare": "Preparing slices", "classifier": "CAM classifier", "pseudo": "CAMs and pseudo-labels",
                 "weak_pseudo": "Weak U-Net (pseudo-labels)", "weak_prior": "Weak U-Net (CAM prior)",
                 "weak_self": "Weak U-Net (self-training)", "register": "Registering"}


def _titled(progress: ProgressCallback | None, title: str) -> ProgressCallback | None:
    """Prefix a stage's messages with its title, so that the panel says which stage an epoch belongs to."""
    if progress is None:
        return None
    return lambda fraction, message: progress(fraction, f"{title}: {message}")


#: What the recipe writes into its run folder besides its split and data record (``overwrite`` removes exactly
#: these, nothing of the user's).
_RUN_FILE_PATTERNS = ("weak_*.npz", "truth_*.npz", "pseudo_*.npz", "self_*.npz", "run_classifier", "run_weak_*")


def train_weak_cam_models(
    refs: Sequence[CaseRef],
    label_column: str,
    *,
    work_dir: str | Path,
    split: Split | None = None,
    classes: Sequence[str] | None = None,
    allow_missing_classes: bool = False,
    recipe: WeakRecipe = WeakRecipe(),
    prior: Literal["auto", "cam", "motion"] = "auto",
    modes: Sequence[Literal["pseudo_label", "cam_prior", "self_training"]] = ("pseudo_label",),
    selection: Literal["label_free", "validation_truth"] = "label_free",
    stages: Sequence[str] | None = None,
    register_to: str | Path | None = None,
    model_version: str = "1.0",
    label_title: str | None = None,
    training_data: str = "",
    split_summary: Mapping[str, Any] | None = None,
    license: str = "",
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> WeakCamTraining:
    """Train the CAM classifier on image-level labels, make pseudo-labels, train the weak heart U-Net, register both.

    Parameters
    ----------
    refs : cases listed by a reader (``list_generic``, ``list_acdc``...). With ``selection="label_free"`` their label
        maps are never opened.
    label_column : the image-level label to classify (a ``labels.csv`` column; ``"group"`` for ACDC).
    work_dir : run folder for every stage's files (see the module docstring).
    split : patient split; default: 80/20 stratified by ``label_column`` (seed ``recipe.seed``). Saved in
        ``work_dir/split.json``. Every non-empty part is prepared; training uses "train", choices "validation".
    classes : class names in index order; default: the sorted distinct values of ``label_column``.
    allow_missing_classes : accept classes without a training case (quick checks on a few patients); otherwise
        every class needs one.
    recipe : grid, network width, epochs, batch size, learning rates, seed.
    prior : "auto" (motion when every case has its other phase, else CAM), "cam", or "motion".
    modes : weak U-Nets to train, in order of preference: "pseudo_label" (Dice + CE on the pseudo-labels),
        "cam_prior" (soft CAM prior), "self_training" (a second U-Net on the pseudo-label U-Net's own predictions;
        it trains "pseudo_label" too). With ``selection="label_free"`` the first of ``modes`` that was trained is
        registered.
    selection : "label_free" (fixed settings, no label map read) or "validation_truth" (see the module docstring).
    stages : subset of :data:`WEAK_STAGES` to run; default: all, the U-Net stages of ``modes``, and "register"
        when ``register_to`` is given.
    register_to : registry folder (a ``--models-dir``) for ``weak_cam_classifier`` and ``weak_heart_unet``.
    model_version, label_title, training_data, split_summary, license : model card fields; ``label_title`` names
        the label in the classifier's description (default ``label_column``).
    resume : skip stages whose outputs exist and continue interrupted training; False needs a ``work_dir`` without
        a previous run, or ``overwrite``.
    overwrite : start again in a ``work_dir`` that holds a run: once every check has passed, the earlier run's files
        (its slices, pseudo-labels, runs, split and data records) are removed; nothing else in the folder is.
    device : "cpu", "cuda", None for CUDA when available.
    progress : fraction 0..1 and messages prefixed with the stage.

    Returns
    -------
    WeakCamTraining

    Raises
    ------
    InputError
        A missing label, fewer than two classes, a class without a training case, no validation patients, the
        motion prior without both phases, an unknown stage, mode or selection, ``register`` without ``register_to``.
    OutputError
        ``work_dir`` holds a previous run and ``resume`` is False.
    """
    if selection not in ("label_free", "validation_truth"):
        raise InputError(f"selection must be 'label_free' or 'validation_truth', got {selection!r}.")
    if prior not in ("auto", "cam", "motion"):
        raise InputError(f"prior must be 'auto', 'cam' or 'motion', got {prior!r}.")
    modes = tuple(modes)
    if not modes or any(m not in WEAK_MODES for m in modes):
        raise InputError(f"modes must be one or more of {list(WEAK_MODES)}, got {list(modes)}.")
    if stages is None:
        needed = set(modes) | ({"pseudo_label"} if "self_training" in modes else set())
        stages = ["prepare", "classifier", "pseudo", *[WEAK_MODES[m] for m in WEAK_MODES if m in needed]]
        stages += ["register"] if register_to is not None else []
    unknown = sorted(set(stages) - set(WEAK_STAGES))
    if unknown:
        raise InputError(f"Unknown stage(s) {unknown}; stages are {list(WEAK_STAGES)}.")
    stages = [s for s in WEAK_STAGES if s in set(stages)]  # always in the order they depend on each other
    if "register" in stages and register_to is None:
        raise InputError("The register stage needs register_to (a models folder).")
    if "register" in stages:  # a models folder that cannot take the models fails now, not after the training
        from ..models.registry import check_models_folder

        check_models_folder(register_to)

    refs = list(refs)
    if prior == "motion":
        ids = {r.case_id for r in refs}
        lonely = [c for c in sorted(ids) if c[-3:] not in _PHASE_SWAP or c[:-3] + _PHASE_SWAP[c[-3:]] not in ids]
        if lonely:
            raise InputError(f"The motion prior needs both phases of every patient: case ids <patient>_ED and "
                             f"<patient>_ES; {len(lonely)} case(s) have no partner (e.g. {lonely[0]}). Name the "
                             "images so, or use the CAM prior (prior 'cam' or 'auto').")
    classes = check_image_labels(refs, label_column, classes=classes, allow_missing_classes=allow_missing_classes)
    split = _default_split(refs, label_column, recipe.seed) if split is None else split
    _check_parts(refs, split, label_column, classes, allow_missing_classes=allow_missing_classes)
    work = Path(work_dir)
    started = work.is_dir() and any(work.iterdir())
    if started and not (resume or overwrite):
        raise OutputError(f"{work} already holds files; continue that run with resume (--resume), start it again "
                          "with overwrite (--overwrite), or use an empty folder.")
    check_run_data(refs, work, resume=resume, label_column=label_column)
    if started and overwrite and not resume:  # every check has passed: the earlier run's files go
        remove_earlier_run(work, _RUN_FILE_PATTERNS)
    work.mkdir(parents=True, exist_ok=True)
    keep_run_data(refs, work, label_column=label_column)
    split = keep_run_split(split, work / "split.json", resume=resume)
    split_summary = dict(split_summary) if split_summary is not None else {
        "train": list(split.train), "validation": list(split.validation), "test": list(split.test)}

    total = sum(_STAGE_WEIGHTS[s] for s in stages)
    done = 0.0
    classifier_metrics: dict[str, float] = {}
    unet_metrics: dict[str, dict[str, float]] = {}
    choice = None
    registered, cards = None, ()
    for stage in stages:
        step = _titled(subrange(progress, done / total, (done + _STAGE_WEIGHTS[stage]) / total),
                       _STAGE_TITLES[stage])
        done += _STAGE_WEIGHTS[stage]
        report(step, 0.0, "started")
        log.info("stage %s", stage)
        if stage == "prepare":
            _prepare(refs, split, work, label_column=label_column, classes=classes, recipe=recipe,
                     selection=selection, resume=resume, progress=step)
        elif stage == "classifier":
            classifier_metrics = _train_classifier(work, recipe=recipe, n_classes=len(classes), resume=resume,
                                                   device=device, progress=step)
        elif stage == "pseudo":
            if resume and (work / _CHOICE_FILE).exists():
                choice = json.loads((work / _CHOICE_FILE).read_text())
            else:
                choice = _pseudo(work, recipe=recipe, selection=selection, prior=prior, device=device, progress=step)
        elif stage in WEAK_MODES.values():
            mode = next(m for m, s in WEAK_MODES.items() if s == stage)
            if stage == "weak_self" and not (resume and (work / _SELF_CHOICE_FILE).exists()):
                _self_training_labels(work, recipe=recipe, selection=selection, device=device,
                                      progress=subrange(step, 0.0, 0.1))
                step = subrange(step, 0.1, 1.0)
            unet_metrics[mode] = _train_unet(work, mode, recipe=recipe, resume=resume, device=device, progress=step)
        elif stage == "register":
            registered, cards = _register(
                work, Path(register_to), recipe=recipe, selection=selection, modes=modes, classes=classes,
                label_title=label_title or label_column, training_data=training_data, split_summary=split_summary,
                license=license, version=model_version, device=device,
            )
        report(step, 1.0, "done")
    if choice is None and (work / _CHOICE_FILE).exists():
        choice = json.loads((work / _CHOICE_FILE).read_text())
    return WeakCamTraining(work, classes, split, classifier_metrics, unet_metrics, choice, registered, cards)
