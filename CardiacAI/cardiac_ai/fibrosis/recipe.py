"""Training the LGE fibrosis models on your own cohort (or EMIDEC): what ``cardiacai train --task fibrosis`` runs.

:func:`train_fibrosis_models` chains the steps of :mod:`cardiac_ai.fibrosis.training` for the models the
``cardiacai fibrosis`` pipeline loads (:data:`~cardiac_ai.fibrosis.pipeline.FIBROSIS_MODEL_NAMES`):

``prepare``       every slice of every case on the models' grid, as the pipeline prepares it at inference
                  (:func:`~cardiac_ai.fibrosis.training.prepare_lge_stack`: EMIDEC's nominal pixel for PNG, else
                  resampled; crop at the image centre). ``prepared/<part>_weak.npz``: the slices that have a weak
                  label, with images and slice labels only; ``prepared/<part>_myocardium.npz``: the slices of cases
                  with a label map, with scar and MVO folded into myocardium (no fibrosis information).
``myocardium``    ``lge_myocardium``: U-Net, Dice loss -> ``runs/myocardium``; its predictions on the weak slices ->
                  ``predicted/<part>_myocardium.npz``.
``classifier``    ``lge_fibrosis_classifier``: ``fibrosis_cam_2d`` on (image, predicted myocardium), BCE on the
                  slice labels -> ``runs/classifier_slice``.
``pseudo``        CAM pseudo-labels (section 3.3, paper defaults) inside the predicted myocardium; negative slices
                  empty -> ``pseudo/slice_<part>.npz``.
``weak_unet``     ``lge_fibrosis_weak``: U-Net on the pseudo-labels from the LGE image alone ->
                  ``runs/weak_unet_slice``.
``register``      the three models with cards into ``register_to``.

The stack-level (patient) classifier and the pixel-supervised comparison U-Net are not trained here
(``scripts/train_emidec_fibrosis.py`` trains them on EMIDEC).

Weak labels (:func:`slice_weak_labels`): a ``labels.csv`` column (default ``fibrosis``) of 0/1 per ``(case_id,
slice)`` row. A whole-case row with 0 marks every slice of that case negative (a patient without fibrosis); a
whole-case 1 says nothing about single slices, which stay unlabelled. Slices without a label are used by the
myocardium model only. With ``slice_labels_from_label_maps`` a slice without a CSV label gets 1 when its label map
holds scar or MVO on the models' grid, else 0 (EMIDEC, which has no slice table, is always read so, as in the paper).

Honesty: the classifier, pseudo-labels and weak U-Net read only the weak data (images and slice labels) and the
myocardium model's predictions; the pixel scar labels reach the weak models only as slice labels, and only when asked.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from ..datasets.case import CaseRef, load_case
from ..datasets.splits import (
    Split,
    check_run_data,
    keep_run_data,
    keep_run_split,
    make_patient_split,
    refs_in_part,
    remove_earlier_run,
)
from ..errors import InputError, OutputError
from ..labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, SCAR
from ..preprocessing import InputSpec
from ..progress import ProgressCallback, report, subrange
from .classifier_input import TRAINING_DEFAULTS, ClassifierInputSettings
from .inputs import EMIDEC_NOMINAL_PIXEL_MM
from .pipeline import FIBROSIS_MODEL_NAMES
from .training import FibrosisSlices, load_arrays, myocardium_targets, prepare_lge_stack, save_arrays

__all__ = [
    "FIBROSIS_RECIPE_MODELS",
    "FIBROSIS_RECIPE_STAGES",
    "FibrosisRecipe",
    "FibrosisTraining",
    "FibrosisData",
    "slice_weak_labels",
    "prepare_fibrosis_data",
    "train_fibrosis_models",
]

log = logging.getLogger(__name__)

#: Registry names of the models :func:`train_fibrosis_models` registers.
FIBROSIS_RECIPE_MODELS = tuple(FIBROSIS_MODEL_NAMES[key] for key in ("myocardium", "classifier", "weak"))
FIBROSIS_RECIPE_STAGES = ("prepare", "myocardium", "classifier", "pseudo", "weak_unet", "register")
#: Rough cost of each stage (minutes per 100 epochs on 2 CPU cores, roughly), for progress.
_STAGE_WEIGHTS = {"prepare": 0.5, "myocardium": 3.0, "classifier": 2.0, "pseudo": 0.5, "weak_unet": 3.0,
                  "register": 0.1}
#: Folders the recipe writes into its run folder besides its split and data record (removed by ``overwrite``).
_RUN_FOLDERS = ("prepared", "predicted", "pseudo", "runs")
_TRAINING_PARTS = ("train", "validation")
_YES, _NO = ("1", "yes", "true", "y", "p"), ("0", "no", "false", "n")


@dataclass(frozen=True)
class FibrosisRecipe:
    """Grid, network sizes and training settings of :func:`train_fibrosis_models`.

    Attributes
    ----------
    crop_size : square crop in pixels at the image centre (a multiple of 8).
    spacing_mm : in-plane pixel of the models' grid; default EMIDEC's nominal pixel (PNG input is taken to have it).
    width : channels of the U-Nets' first level, doubled per level (16: the script's (16, 32, 64, 128)); the
        classifier's four stages have width / 2, width, 2 width, 4 width channels.
    epochs_myocardium, epochs_classifier, epochs_unet : epochs of each network.
    batch_size, learning_rate, seed : training settings shared by the three networks.
    classifier_input : how the classifier's two channels are made (recorded in its card).
    """

    crop_size: int = 128
    spacing_mm: float = EMIDEC_NOMINAL_PIXEL_MM
    width: int = 16
    epochs_myocardium: int = 40
    epochs_classifier: int = 30
    epochs_unet: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    classifier_weight_decay: float = 1e-3
    seed: int = 0
    classifier_input: ClassifierInputSettings = field(default_factory=lambda: TRAINING_DEFAULTS)

    def __post_init__(self) -> None:
        if self.crop_size < 16 or self.crop_size % 8:
            raise InputError(f"crop_size must be a multiple of 8 of at least 16 (the U-Net pools 3 times), "
                             f"got {self.crop_size}.")
        if self.width < 2:
            raise InputError(f"width must be at least 2 channels, got {self.width}.")
        for name in ("epochs_myocardium", "epochs_classifier", "epochs_unet", "batch_size"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}.")
        if not self.spacing_mm > 0:
            raise InputError(f"spacing_mm must be positive, got {self.spacing_mm}.")

    def spec(self, channels: int = 1) -> InputSpec:
        return InputSpec(in_plane_spacing_mm=(self.spacing_mm, self.spacing_mm),
                         crop_size=(self.crop_size, self.crop_size), channels=channels)

    def unet_kwargs(self, in_channels: int, out_channels: int) -> dict:
        return {"in_channels": in_channels, "out_channels": out_channels,
                "channels": [self.width * 2 ** n for n in range(4)], "strides": [2, 2, 2], "num_res_units": 1}

    def classifier_kwargs(self) -> dict:
        half = max(self.width // 2, 1)
        return {"in_channels": 2, "out_channels": 1, "features": [half, self.width, 2 * self.width, 4 * self.width],
                "blocks_per_stage": [1, 1, 2, 2], "mask_channel": 1}


@dataclass(frozen=True)
class FibrosisTraining:
    """What :func:`train_fibrosis_models` did.

    Attributes
    ----------
    split : the patient split (also ``work_dir/split.json``).
    slice_counts : part -> {"slices", "positive", "negative", "myocardium"}: weak-labelled slices, of which positive
        and negative, and slices with a label map.
    metrics : network -> validation metrics of its best epoch.
    card_paths : registered model cards (empty without ``register_to``).
    """

    split: Split
    slice_counts: dict[str, dict[str, int]]
    metrics: dict[str, dict[str, float]]
    card_paths: tuple[Path, ...] = ()


# -- weak labels -----------------------------------------------------------------------------------------------------
def _binary(value: Any, where: str, column: str) -> int:
    text = str(value).strip().lower()
    if text in _YES:
        return 1
    if text in _NO:
        return 0
    try:  # 1.0 / 0.0: how pandas writes an integer column with gaps
        number = float(text)
    except ValueError:
        number = None
    if number in (0.0, 1.0):
        return int(number)
    raise InputError(f"{where}: the {column!r} label must be 0 or 1 (fibrosis absent or present), got {value!r}.")


def _label_columns(refs: Sequence[CaseRef]) -> list[str]:
    columns = {name for ref in refs for name in ref.image_labels}
    columns |= {name for ref in refs for row in ref.metadata.get("slice_labels", {}).values() for name in row}
    return sorted(columns)


def slice_weak_labels(ref: CaseRef, label_column: str) -> tuple[dict[int, int], int | None]:
    """The weak labels the user gave for one case: ({slice k: 0/1} from slice rows, whole-case 0/1 or None).

    Raises
    ------
    InputError
        A value that is not 0/1 (or yes/no, true/false), naming the case and slice.
    """
    slices = {int(k): _binary(row[label_column], f"labels.csv, case {ref.case_id!r} slice {k}", label_column)
              for k, row in ref.metadata.get("slice_labels", {}).items() if label_column in row}
    whole = ref.image_labels.get(label_column)
    return slices, None if whole is None else _binary(whole, f"labels.csv, case {ref.case_id!r}", label_column)


def _check_weak_labels(refs: Sequence[CaseRef], label_column: str, from_label_maps: bool) -> None:
    """Refuse, from the listing alone (no image read), weak labels that cannot train the classifier."""
    if not any(ref.label_paths for ref in refs):
        raise InputError("No case has a label map (labels/): the LGE myocardium model learns from them (codes 2 "
                         "myocardium, 3 LV blood pool; scar 4 and MVO 5 count as myocardium). Add label maps for "
                         "some cases.")
    labels = [slice_weak_labels(ref, label_column) for ref in refs]
    has_slice_rows = any(slices for slices, _ in labels)
    if from_label_maps:
        return
    if not has_slice_rows:
        columns = _label_columns(refs)
        whole = any(w is not None for _, w in labels)
        raise InputError(
            f"No slice-level {label_column!r} labels: labels.csv needs rows 'case_id,slice,{label_column}' with 0/1 "
            f"per slice (slice = 0-based index k){' (the column has whole-case values only)' if whole else ''}; "
            f"label columns found: {columns or 'none'}. Name another column with --label-column, or pass "
            "--slice-labels-from-label-maps to take a slice as positive when its label map holds scar or MVO.")
    positive = any(1 in slices.values() for slices, _ in labels)
    negative = any(0 in slices.values() or whole == 0 for slices, whole in labels)
    if not (positive and negative):
        raise InputError(f"The {label_column!r} slice labels are all {'positive' if positive else 'negative'}: the "
                         "classifier needs slices with fibrosis (1) and without (0).")


# -- preparation -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FibrosisData:
    """Prepared training data of :func:`train_fibrosis_models`, kept in two separate parts.

    Attributes
    ----------
    weak : the slices with a weak label: images and slice labels only (what the weak models may see);
        ``stack_labels`` is 1 for a patient with a positive slice.
    myocardium_images, myocardium_labels, myocardium_patient_ids : every slice of the cases with a label map, its
        labels with scar and MVO folded into myocardium (:func:`myocardium_targets`), and its patient.
    """

    weak: FibrosisSlices
    myocardium_images: NDArray[np.float32]
    myocardium_labels: NDArray[np.uint8]
    myocardium_patient_ids: NDArray[np.str_]

    def subset(self, patient_ids: Sequence[str]) -> "FibrosisData":
        keep = np.isin(self.myocardium_patient_ids, np.asarray(list(patient_ids), dtype=str))
        return FibrosisData(self.weak.subset(patient_ids), self.myocardium_images[keep], self.myocardium_labels[keep],
                            self.myocardium_patient_ids[keep])

    def patient_groups(self) -> dict[str, str]:
        """Patient -> "P" when a slice of theirs is labelled positive, else "N" (to stratify the split)."""
        positive = set(self.weak.patient_ids[self.weak.slice_labels == 1].tolist())
        patients = {*self.weak.patient_ids.tolist(), *self.myocardium_patient_ids.tolist()}
        return {p: "P" if p in positive else "N" for p in sorted(patients)}


def _pixel_size_unknown(ref: CaseRef) -> bool:
    """PNG images carry no pixel size: they are read as EMIDEC pixels, as ``cardiacai fibrosis`` reads PNG."""
    return all(str(p).lower().endswith(".png") for p in ref.image_paths)


def prepare_fibrosis_data(
    refs: Sequence[CaseRef],
    label_column: str,
    *,
    recipe: FibrosisRecipe = FibrosisRecipe(),
    slice_labels_from_label_maps: bool = False,
    progress: ProgressCallback | None = None,
) -> FibrosisData:
    """Read and prepare ``refs`` on the models' grid.

    The weak slices are those with a weak label (:func:`slice_weak_labels`); no label map enters them except, with
    ``slice_labels_from_label_maps``, as the slice label of slices the CSV does not label.

    Raises
    ------
    DataError
        Unreadable files, label maps that do not match their image, CSV slices beyond a case's slices.
    InputError
        Labels that are not 0/1.
    """
    images, ids, indices, weak_labels = [], [], [], []
    myo_images, myo_labels, myo_ids = [], [], []
    for number, ref in enumerate(refs):
        report(progress, number / max(len(refs), 1), f"Preparing {ref.case_id}")
        case = load_case(ref)
        image, labels = prepare_lge_stack(case.image, case.labels, spec=recipe.spec(),
                                          pixel_size_unknown=_pixel_size_unknown(ref))
        if labels is not None:
            myo_images.append(image)
            myo_labels.append(myocardium_targets(labels))
            myo_ids += [ref.patient_id] * len(labels)
        slices, whole = slice_weak_labels(ref, label_column)
        for k in range(image.shape[0]):
            label = slices.get(k, 0 if whole == 0 else None)
            if label is None and slice_labels_from_label_maps and labels is not None:
                label = int(np.isin(labels[k], (SCAR, MVO)).any())
            if label is None:
                continue
            images.append(image[k])
            ids.append(ref.patient_id)
            indices.append(k)
            weak_labels.append(label)
    report(progress, 1.0, f"Prepared {len(refs)} cases")
    size = (0, recipe.crop_size, recipe.crop_size)
    slice_labels = np.asarray(weak_labels, np.int8)
    patient_ids = np.asarray(ids, dtype=str)
    positive_patients = set(patient_ids[slice_labels == 1].tolist())
    weak = FibrosisSlices(
        np.stack(images).astype(np.float32) if images else np.zeros(size, np.float32), patient_ids,
        np.asarray(indices, np.int64), slice_labels,
        np.asarray([int(p in positive_patients) for p in ids], np.int8),
    )
    return FibrosisData(weak, np.concatenate(myo_images) if myo_images else np.zeros(size, np.float32),
                        np.concatenate(myo_labels) if myo_labels else np.zeros(size, np.uint8),
                        np.asarray(myo_ids, dtype=str))


def _count(part: FibrosisData) -> dict[str, int]:
    positive = int(part.weak.slice_labels.sum())
    return {"slices": len(part.weak), "positive": positive, "negative": len(part.weak) - positive,
            "myocardium": int(len(part.myocardium_images))}


def _check_parts(prepared: Mapping[str, FibrosisData], split: Split) -> None:
    train, validation = prepared["train"], prepared["validation"]
    counts = _count(train)
    total_positive = sum(_count(p)["positive"] for p in prepared.values())
    total_negative = sum(_count(p)["negative"] for p in prepared.values())
    if not (total_positive and total_negative):
        raise InputError(f"The weak labels give {total_positive} positive and {total_negative} negative slices: the "
                         "classifier needs slices with fibrosis and without.")
    if not (counts["positive"] and counts["negative"]):
        raise InputError(f"The training patients ({len(split.train)}) have {counts['positive']} positive and "
                         f"{counts['negative']} negative labelled slices; the classifier needs both. Give more "
                         "patients, or a --split that puts both kinds in training.")
    if not len(validation.weak):
        raise InputError("The validation patients have no slice with a weak label; the classifier and the weak "
                         "U-Net need some to pick their best epoch.")
    in_validation = _count(validation)
    if not (in_validation["positive"] and in_validation["negative"]):
        kind = "with fibrosis" if not in_validation["positive"] else "without fibrosis"
        log.warning("The validation patients have no slice %s (%d positive, %d negative): the classifier's AUROC is "
                    "undefined there and the weak U-Net's validation Dice stays 0, so their best epoch is the first "
                    "and not a choice. Give a --split that puts patients of both kinds in validation.", kind,
                    in_validation["positive"], in_validation["negative"])
    for name, part in (("training", train), ("validation", validation)):
        if not len(part.myocardium_images):
            raise InputError(f"No {name} patient has a label map: the myocardium model needs some in training and "
                             "validation. Add label maps, or give a --split.")


# -- the stages ------------------------------------------------------------------------------------------------------
def _config(recipe: FibrosisRecipe, network: str, kwargs: dict, *, channels: int, epochs: int, loss: str = "dice",
            weight_decay: float = 1e-5, metric: str = "val_dice"):
    from ..training.config import TrainingConfig

    return TrainingConfig(network=network, network_kwargs=kwargs, input_spec=recipe.spec(channels).to_dict(),
                          epochs=epochs, batch_size=recipe.batch_size, learning_rate=recipe.learning_rate,
                          weight_decay=weight_decay, loss=loss, metric_name=metric, metric_mode="max",
                          seed=recipe.seed)


def _weak(work: Path, part: str) -> FibrosisSlices:
    return FibrosisSlices.from_arrays(load_arrays(work / "prepared" / f"{part}_weak.npz"))


def _best_metrics(result) -> dict[str, float]:
    """The validation metrics of the best epoch (from the run's history)."""
    best = next((r for r in result.history if r.get("epoch") == result.best_epoch), {})
    return {k: float(v) for k, v in best.items() if k.startswith("val_") and isinstance(v, (int, float))}


def _train_networks(work: Path, recipe: FibrosisRecipe, stages: Sequence[str], device, progress, metrics) -> None:
    from ..training.augmentation import AugmentationConfig
    from .training import make_pseudo_labels, predict_myocardium, slice_cams, train_fibrosis_unet, train_myocardium
    from .training import train_slice_classifier

    done, total = 0.0, sum(_STAGE_WEIGHTS[s] for s in stages)
    weak = {part: _weak(work, part) for part in _TRAINING_PARTS}
    predicted: dict[str, NDArray[np.uint8]] = {}
    for stage in stages:
        step = subrange(progress, done / total, (done + _STAGE_WEIGHTS[stage]) / total)
        done += _STAGE_WEIGHTS[stage]
        report(step, 0.0, f"{stage}: started")
        log.info("stage %s", stage)
        if stage == "myocardium":
            data = {part: load_arrays(work / "prepared" / f"{part}_myocardium.npz") for part in _TRAINING_PARTS}
            images = {part: data[part]["images_uint8"].astype(np.float32) / 255.0 for part in _TRAINING_PARTS}
            config = _config(recipe, "unet2d", recipe.unet_kwargs(1, 4), channels=1, epochs=recipe.epochs_myocardium)
            result, network = train_myocardium(
                images["train"], data["train"]["labels"], images["validation"], data["validation"]["labels"],
                config=config, out_dir=work / "runs" / "myocardium", augmentation=AugmentationConfig(),
                device=device, progress=subrange(step, 0.0, 0.95))
            metrics["myocardium"] = _best_metrics(result)
            for part in _TRAINING_PARTS:
                predicted[part] = predict_myocardium(network, weak[part].images, device=device)
                save_arrays(work / "predicted" / f"{part}_myocardium.npz", {"myocardium": predicted[part]})
        elif stage == "classifier":
            config = _config(recipe, "fibrosis_cam_2d", recipe.classifier_kwargs(), channels=2,
                             epochs=recipe.epochs_classifier, loss="bce", metric="val_score",
                             weight_decay=recipe.classifier_weight_decay)
            result, classifier = train_slice_classifier(
                weak["train"], predicted["train"], weak["validation"], predicted["validation"], config=config,
                out_dir=work / "runs" / "classifier_slice", augmentation=AugmentationConfig(),
                input_settings=recipe.classifier_input, device=device, progress=step)
            metrics["classifier"] = _best_metrics(result)
        elif stage == "pseudo":
            for part in _TRAINING_PARTS:
                data = weak[part]
                cams = slice_cams(classifier, data.images, predicted[part], input_settings=recipe.classifier_input,
                                  device=device)
                pseudo = make_pseudo_labels(cams, data.images, data.slice_labels, predicted[part])
                save_arrays(work / "pseudo" / f"slice_{part}.npz", {"cams": cams.astype(np.float16), "pseudo": pseudo})
                n_positive, n_marked = int(data.slice_labels.sum()), int(pseudo.any(axis=(1, 2)).sum())
                log.info("Pseudo-labels %s: %d slices, %d positive, %d non-empty", part, len(pseudo), n_positive,
                         n_marked)
                if part == "train" and n_positive and not n_marked:
                    log.warning("No pseudo-label marks any scar although %d training slices are positive: the weak "
                                "U-Net would learn to draw nothing. Train the classifier longer (--epochs).",
                                n_positive)
        elif stage == "weak_unet":
            labels = {part: load_arrays(work / "pseudo" / f"slice_{part}.npz")["pseudo"] for part in _TRAINING_PARTS}
            config = _config(recipe, "unet2d", recipe.unet_kwargs(1, 2), channels=1, epochs=recipe.epochs_unet)
            result, _ = train_fibrosis_unet(
                weak["train"].images, labels["train"], weak["validation"].images, labels["validation"],
                config=config, out_dir=work / "runs" / "weak_unet_slice", augmentation=AugmentationConfig(),
                device=device, progress=step)
            metrics["weak_unet"] = _best_metrics(result)
        report(step, 1.0, f"{stage}: done")


def _register(work: Path, register_to: Path, recipe: FibrosisRecipe, *, version: str, training_data: str,
              split: Split, license: str) -> tuple[Path, ...]:
    """Export the three runs' best weights into ``register_to``: all three models, or none (OutputError)."""
    from functools import partial

    from ..training.checkpoint import export_best_model
    from ..models.registry import register_models

    grid = (f" Pixel grid: {recipe.spacing_mm:g} mm pixels (PNG input is taken to have them), {recipe.crop_size} x "
            f"{recipe.crop_size} crop at the image centre.")
    myo, scar = LABELS[LV_MYOCARDIUM].name, LABELS[SCAR].name
    exports = [
        ("myocardium", FIBROSIS_MODEL_NAMES["myocardium"], "segmentation",
         {0: "background", LV_MYOCARDIUM: myo, LV_BLOOD_POOL: LABELS[LV_BLOOD_POOL].name},
         "2D U-Net (Dice loss) on pixel myocardium labels; scar and MVO count as myocardium.", None),
        ("classifier_slice", FIBROSIS_MODEL_NAMES["classifier"], "classification", {0: "fibrosis"},
         "Slice-level fibrosis classifier (fibrosis_cam_2d) on (LGE, predicted myocardium); BCE on slice labels only.",
         {"classifier_input": ClassifierInputSettings.load(work / "runs" / "classifier_slice").to_dict()}),
        ("weak_unet_slice", FIBROSIS_MODEL_NAMES["weak"], "segmentation", {0: "background", 1: scar},
         "2D U-Net on the LGE image alone, trained on CAM pseudo-labels from slice-level labels (no pixel scar "
         "labels).", None),
    ]
    split_info = {"train": list(split.train), "validation": list(split.validation), "test": list(split.test)}
    return register_models(register_to, {  # each called with the folder to write into
        f"{name}-{version}": partial(
            export_best_model, work / "runs" / run_name, name=name, version=version, task=task, label_map=label_map,
            training_data=training_data, split=split_info, license=license, inference=inference,
            description=description + grid)
        for run_name, name, task, label_map, description, inference in exports
    })


def train_fibrosis_models(
    refs: Sequence[CaseRef],
    *,
    work_dir: str | Path,
    label_column: str = "fibrosis",
    slice_labels_from_label_maps: bool = False,
    split: Split | None = None,
    recipe: FibrosisRecipe = FibrosisRecipe(),
    register_to: str | Path | None = None,
    model_version: str = "1.0",
    training_data: str = "",
    license: str = "",
    resume: bool = False,
    overwrite: bool = False,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> FibrosisTraining:
    """Train ``lge_myocardium``, ``lge_fibrosis_classifier`` and ``lge_fibrosis_weak`` (see the module docstring).

    Parameters
    ----------
    refs : cases from ``list_generic`` or ``list_emidec``; label maps (``labels/``) for the myocardium model.
    work_dir : run folder.
    label_column : the labels.csv column of slice-level 0/1 fibrosis labels.
    slice_labels_from_label_maps : label slices the CSV does not label from the scar/MVO of their label map.
    split : patient split; default: 80/20 stratified by whether a patient has a positive slice (seed
        ``recipe.seed``). Saved in ``work_dir/split.json``.
    recipe : grid, network sizes, epochs.
    register_to : models folder (a ``--models-dir``) for the three models; None: train only.
    model_version, training_data, license : model card fields.
    resume : continue the run in ``work_dir`` (each network from its ``last.pt``).
    overwrite : start again in a ``work_dir`` that holds a run (its prepared, predicted, pseudo and runs folders
        are removed, once every check has passed).
    device : "cpu", "cuda", None for CUDA when available.
    progress : fraction 0..1 and messages.

    Returns
    -------
    FibrosisTraining

    Raises
    ------
    InputError
        No label map; no slice-level labels (and ``slice_labels_from_label_maps`` off); labels that are not 0/1; no
        positive or no negative slice (overall or among the training patients); parts without labelled slices or
        label maps. All raised before ``work_dir`` is written.
    DataError
        Unreadable files; labels.csv naming unknown cases (from the listing) or slices a case does not have.
    OutputError
        ``work_dir`` holds files and neither ``resume`` nor ``overwrite`` is given.
    """
    refs = list(refs)
    if not refs:
        raise InputError("No cases to train the fibrosis models on.")
    _check_weak_labels(refs, label_column, slice_labels_from_label_maps)
    work = Path(work_dir)
    started = work.is_dir() and any(work.iterdir())
    if started and not (resume or overwrite):
        raise OutputError(f"Run folder {work} already holds files; pass --resume to continue or --overwrite to start "
                          "again.")
    check_run_data(refs, work, resume=resume and not overwrite, label_column=label_column)
    if split is not None:
        for part in ("train", "validation", "test"):
            refs_in_part(refs, split, part)  # refuses a split that does not list every patient

    stages = [s for s in FIBROSIS_RECIPE_STAGES if s != "register" or register_to is not None]
    if register_to is not None:  # a models folder that cannot take the models fails now, not after the training
        from ..models.registry import check_models_folder

        check_models_folder(register_to)
    prepare_share = _STAGE_WEIGHTS["prepare"] / sum(_STAGE_WEIGHTS[s] for s in stages)
    data = prepare_fibrosis_data(refs, label_column, recipe=recipe,
                                 slice_labels_from_label_maps=slice_labels_from_label_maps,
                                 progress=subrange(progress, 0.0, prepare_share))
    if split is None:  # stratified by whether the patient has a positive slice
        groups = data.patient_groups()
        split = make_patient_split(sorted(groups), groups=groups, seed=recipe.seed, keep_together=())
    if not split.validation:
        raise InputError("The split has no validation patients; training needs some to pick the best epochs.")
    prepared = {part: data.subset(getattr(split, part)) for part in ("train", "validation", "test")
                if getattr(split, part)}
    _check_parts(prepared, split)

    # every check has passed: from here on the run folder is written
    if started and overwrite and not resume:
        remove_earlier_run(work, _RUN_FOLDERS)
    work.mkdir(parents=True, exist_ok=True)
    keep_run_data(refs, work, label_column=label_column)
    split = keep_run_split(split, work / "split.json", resume=resume)
    for part, part_data in prepared.items():
        save_arrays(work / "prepared" / f"{part}_weak.npz", part_data.weak.to_arrays())
        save_arrays(work / "prepared" / f"{part}_myocardium.npz",
                    {"images_uint8": np.round(np.clip(part_data.myocardium_images, 0, 1) * 255).astype(np.uint8),
                     "labels": part_data.myocardium_labels})
    counts = {part: _count(part_data) for part, part_data in prepared.items()}
    (work / "slice_counts.json").write_text(json.dumps(counts, indent=1) + "\n")
    log.info("Weak-labelled slices (positive/negative): %s", ", ".join(
        f"{part} {c['positive']}/{c['negative']}" for part, c in counts.items()))

    metrics: dict[str, dict[str, float]] = {}
    _train_networks(work, recipe, [s for s in stages if s not in ("prepare", "register")], device,
                    subrange(progress, prepare_share, 1.0 if register_to is None else 0.99), metrics)
    cards: tuple[Path, ...] = ()
    if register_to is not None:
        cards = _register(work, Path(register_to), recipe, version=model_version, training_data=training_data,
                          split=split, license=license)
    report(progress, 1.0, "Fibrosis models trained")
    return FibrosisTraining(split, counts, metrics, cards)
