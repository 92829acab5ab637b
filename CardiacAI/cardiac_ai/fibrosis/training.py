"""Training the weakly supervised LGE fibrosis models on EMIDEC (Klein et al.'s four steps), with the shared Trainer.

1. :func:`train_myocardium`: 2D U-Net, Dice loss, pixel myocardium labels (scar and MVO folded into myocardium,
   so this label map carries no fibrosis information).
2. :func:`train_slice_classifier` / :func:`train_stack_classifier`: ``fibrosis_cam_2d`` (BCE on slice labels) and
   its 3x3x1 inflation ``fibrosis_cam_stack`` (weighted BCE on patient N/P labels); input = LGE image + the
   *predicted* myocardium (:func:`predict_myocardium`), never the true one, made by
   :func:`~cardiac_ai.fibrosis.classifier_input.classifier_inputs` (myocardium-relative intensity, heart crop).
3. :func:`slice_cams`, :func:`stack_cams`, then :func:`cardiac_ai.weak.pseudo_labels` (section 3.3, paper defaults),
   restricted to the predicted myocardium; images with a negative weak label get an empty pseudo-label.
4. :func:`train_fibrosis_unet`: 2D U-Net, Dice loss, on pseudo-labels from the LGE image alone (weak), or on pixel
   fibrosis labels with the predicted myocardium as a second channel (the comparison model).

Data (:func:`prepare_emidec_stacks`) come in two separate arrays: :class:`FibrosisSlices` (images and weak labels
only, what the weak models may see) and the truth label maps (for the myocardium model, the pixel comparison model and
evaluation). :func:`emidec_fibrosis_split` makes the patient-level split.

Every ``train_*`` function resumes from ``out_dir/last.pt`` when it exists (a finished run returns at once) and
returns ``(TrainingResult, network with the best weights)``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, InputError
from ..geometry import Volume
from ..labels import LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, MYOCARDIUM_CODES, SCAR
from ..preprocessing import InputSpec, preprocess
from ..progress import ProgressCallback, report
from .classifier_input import TRAINING_DEFAULTS, ClassifierInputSettings, classifier_inputs
from .evaluation import auroc
from .inputs import FIBROSIS_SPEC, with_nominal_pixels

if TYPE_CHECKING:
    from torch import nn

    from ..datasets.splits import Split
    from ..training.augmentation import AugmentationConfig
    from ..training.config import TrainingConfig
    from ..training.engine import TrainingResult

__all__ = [
    "FibrosisSlices",
    "emidec_fibrosis_split",
    "prepare_emidec_stacks",
    "prepare_lge_stack",
    "myocardium_targets",
    "fibrosis_targets",
    "save_arrays",
    "load_arrays",
    "predict_myocardium",
    "train_myocardium",
    "train_slice_classifier",
    "train_stack_classifier",
    "slice_cams",
    "stack_cams",
    "make_pseudo_labels",
    "train_fibrosis_unet",
    "classifier_probabilities",
]

log = logging.getLogger(__name__)


# -- split -----------------------------------------------------------------------------------------------------------
def emidec_fibrosis_split(
    root: str | os.PathLike,
    *,
    validation_fraction: float = 0.15,
    test_positive_fraction: float = 0.2,
    seed: int = 0,
) -> "Split":
    """The patient split of the fibrosis models: EMIDEC ``val`` folder held out, plus some infarct patients.

    The EMIDEC ``val`` folder of this export holds only N patients (no infarct), which cannot measure fibrosis Dice
    or AUROC. The test part is therefore the whole ``val`` folder **plus** ``test_positive_fraction`` of the ``train``
    folder's P patients (seeded draw). Of the rest of the ``train`` folder, ``validation_fraction`` (stratified N/P)
    validates (epoch selection) and the others train.

    Parameters
    ----------
    root : EMIDEC folder (``dataset`` or its parent).
    validation_fraction : share of the remaining train-folder patients used for validation.
    test_positive_fraction : share of the train folder's P patients moved to the test part.
    seed : seed of both draws.

    Returns
    -------
    Split
        With ``groups`` N/P for every patient.

    Raises
    ------
    DataError
        When the EMIDEC folders cannot be listed.
    InputError
        For fractions outside [0, 1).
    """
    from ..datasets import list_emidec, make_patient_split
    from ..datasets.splits import Split

    refs = list_emidec(root)
    groups = {r.patient_id: str(r.image_labels["group"]) for r in refs}
    folder_of = {r.patient_id: r.metadata["split"] for r in refs}
    held_out = sorted(p for p, f in folder_of.items() if f == "val")
    train_folder = sorted(p for p, f in folder_of.items() if f == "train")
    if not train_folder:
        raise DataError(f"No EMIDEC train folder patients under {root}; the fibrosis split needs them.")
    positives = [p for p in train_folder if groups[p] == "P"]
    test_positive: tuple[str, ...] = ()
    if positives and test_positive_fraction > 0:
        test_positive = make_patient_split(
            positives, validation_fraction=0.0, test_fraction=test_positive_fraction, seed=seed, keep_together=()
        ).test
    remaining = [p for p in train_folder if p not in test_positive]
    inner = make_patient_split(
        remaining, groups={p: groups[p] for p in remaining}, validation_fraction=validation_fraction, seed=seed,
        keep_together=(),
    )
    split = Split(train=inner.train, validation=inner.validation, test=tuple(sorted((*held_out, *test_positive))),
                  seed=seed, groups=groups)
    log.info(
        "EMIDEC fibrosis split: %d train, %d validation, %d test (%d from the val folder, %d P from train)",
        len(split.train), len(split.validation), len(split.test), len(held_out), len(test_positive),
    )
    return split


# -- prepared data ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FibrosisSlices:
    """Preprocessed LGE slices with their weak labels only: what the weakly supervised models may see.

    Attributes
    ----------
    images : (N, cj, ci) float32, percentile-normalised (per patient stack) to [0, 1], on :data:`FIBROSIS_SPEC`.
    patient_ids : (N,) str.
    slice_indices : (N,) int, k of the slice in its patient's stack (stacks are stored contiguously, in k order).
    slice_labels : (N,) int8, 1 when the slice holds fibrosis (the slice-level weak label).
    stack_labels : (N,) int8, the patient's N (0) / P (1) label repeated on its slices (the stack-level weak label).
    """

    images: NDArray[np.float32]
    patient_ids: NDArray[np.str_]
    slice_indices: NDArray[np.int64]
    slice_labels: NDArray[np.int8]
    stack_labels: NDArray[np.int8]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def stacks(self) -> list[NDArray[np.int64]]:
        """Row indices of each patient's slices, patients in first-appearance order."""
        order = list(dict.fromkeys(self.patient_ids.tolist()))
        return [np.flatnonzero(self.patient_ids == p) for p in order]

    def subset(self, patient_ids: Sequence[str]) -> "FibrosisSlices":
        """Only the slices of ``patient_ids`` (in stored order)."""
        keep = np.isin(self.patient_ids, np.asarray(list(patient_ids), dtype=str))
        return FibrosisSlices(self.images[keep], self.patient_ids[keep], self.slice_indices[keep],
                              self.slice_labels[keep], self.stack_labels[keep])

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for :func:`save_arrays` (images quantised to uint8)."""
        return {
            "images_uint8": np.round(np.clip(self.images, 0.0, 1.0) * 255).astype(np.uint8),
            "patient_ids": self.patient_ids.astype(str),
            "slice_indices": self.slice_indices,
            "slice_labels": self.slice_labels,
            "stack_labels": self.stack_labels,
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "FibrosisSlices":
        try:
            return cls(arrays["images_uint8"].astype(np.float32) / 255.0, arrays["patient_ids"].astype(str),
                       arrays["slice_indices"].astype(np.int64), arrays["slice_labels"].astype(np.int8),
                       arrays["stack_labels"].astype(np.int8))
        except KeyError as e:
            raise DataError(f"Prepared fibrosis slices lack the array {e.args[0]!r}; prepare them again.") from e


def save_arrays(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write named arrays as one compressed ``.npz`` atomically."""
    from ..io.atomic import atomic_path

    target = Path(path)
    if target.suffix != ".npz":
        raise InputError(f"Arrays are saved as .npz, got {target.name}.")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return target


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.npz`` written by :func:`save_arrays` (no pickles)."""
    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError) as e:
        raise DataError(f"Cannot read {source}: {e}") from e


def prepare_emidec_stacks(
    root: str | os.PathLike,
    patient_ids: Sequence[str],
    *,
    spec: InputSpec = FIBROSIS_SPEC,
    progress: ProgressCallback | None = None,
) -> tuple[FibrosisSlices, NDArray[np.uint8]]:
    """Preprocess EMIDEC patient stacks exactly as the pipeline does (nominal pixels, image-centre crop).

    Parameters
    ----------
    root : EMIDEC folder.
    patient_ids : patients to prepare, in this order.
    spec : grid of the models (default :data:`FIBROSIS_SPEC`).

    Returns
    -------
    (FibrosisSlices, truth)
        ``truth`` (N, cj, ci) uint8 CardiacAI codes (2 myocardium, 3 LV blood pool, 4 scar, 5 MVO), kept apart
        from the weak data: only the myocardium model (via :func:`myocardium_targets`), the pixel comparison model
        and evaluation read it.

    Raises
    ------
    InputError
        A patient id the folder does not hold.
    """
    from ..datasets import list_emidec, load_emidec_case

    refs = {r.patient_id: r for r in list_emidec(root)}
    missing = [p for p in patient_ids if p not in refs]
    if missing:
        raise InputError(f"EMIDEC folder {root} has no patients {missing[:5]}; is the split for this data?")
    images, truth, ids, indices, slice_labels, stack_labels = [], [], [], [], [], []
    for number, patient_id in enumerate(patient_ids):
        report(progress, number / max(len(patient_ids), 1), f"Preparing {patient_id}")
        case = load_emidec_case(refs[patient_id])
        image, labels = prepare_lge_stack(case.image, case.labels, spec=spec, pixel_size_unknown=True)
        n = image.shape[0]
        images.append(image)
        truth.append(labels if labels is not None else np.zeros(image.shape, np.uint8))
        ids.append(np.full(n, patient_id))
        indices.append(np.arange(n))
        slice_labels.append(np.isin(truth[-1], (SCAR, MVO)).any(axis=(1, 2)).astype(np.int8))
        stack_labels.append(np.full(n, int(case.image_labels["group"] == "P"), np.int8))
    report(progress, 1.0, f"Prepared {len(patient_ids)} patients")
    if not images:
        raise InputError("prepare_emidec_stacks got no patients.")
    weak = FibrosisSlices(np.concatenate(images), np.concatenate(ids).astype(str), np.concatenate(indices),
                          np.concatenate(slice_labels), np.concatenate(stack_labels))
    return weak, np.concatenate(truth).astype(np.uint8)


def prepare_lge_stack(
    image: Volume,
    labels: Volume | None,
    *,
    spec: InputSpec = FIBROSIS_SPEC,
    pixel_size_unknown: bool,
) -> tuple[NDArray[np.float32], NDArray[np.uint8] | None]:
    """One LGE stack (and its label map) on the models' grid, as the pipeline prepares it at inference.

    ``pixel_size_unknown`` (PNG): the pixels are taken as EMIDEC pixels (:func:`with_nominal_pixels`), as
    ``segment_fibrosis(spacing_known=False)`` does; else the stack is resampled to ``spec``'s spacing. The crop is at
    the image centre (the pipeline has no heart detector), never around the labels, so that training sees what
    inference sees.

    Returns
    -------
    (image, labels)
        (k, cj, ci) float32 normalised image and uint8 labels (None without a label map).
    """
    volume = with_nominal_pixels(image) if pixel_size_unknown else image
    label_volume = Volume(labels.array, volume.geometry) if labels is not None else None
    prepared = preprocess(volume, spec, labels=label_volume, crop_center="image_center")
    return prepared.image.astype(np.float32), prepared.labels


def myocardium_targets(truth: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Myocardium-model labels: 2 myocardium (scar and MVO folded in), 3 LV blood pool, 0 else. No fibrosis left."""
    out = np.zeros(truth.shape, np.uint8)
    out[np.isin(truth, MYOCARDIUM_CODES)] = LV_MYOCARDIUM
    out[truth == LV_BLOOD_POOL] = LV_BLOOD_POOL
    return out


def fibrosis_targets(truth: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Pixel fibrosis labels of the comparison model: 1 scar, 2 MVO, 0 else."""
    out = np.zeros(truth.shape, np.uint8)
    out[truth == SCAR] = 1
    out[truth == MVO] = 2
    return out


# -- datasets --------------------------------------------------------------------------------------------------------
def _split_augmentations(config: "AugmentationConfig | None", seed: int):
    """(spatial, intensity) augmentations from one config: spatial moves all channels and labels, intensity touches
    only the LGE image channels (never the myocardium-mask channels)."""
    import dataclasses

    from ..training.augmentation import AugmentationConfig, build_augmentation

    if config is None:
        return None, None
    spatial_only = dataclasses.replace(config, gamma_prob=0.0, bias_field_prob=0.0, noise_prob=0.0, smooth_prob=0.0)
    intensity_only = dataclasses.replace(
        config, translate_prob=0.0, rotate_prob=0.0, zoom_prob=0.0, elastic_prob=0.0, flip_prob=0.0
    )
    assert isinstance(spatial_only, AugmentationConfig)
    return build_augmentation(spatial_only, seed=seed), build_augmentation(intensity_only, seed=seed + 1)


class _ChannelDataset:
    """Items ``{"image": (C, j, i) or (C, j, i, k), "label": map or target}`` built from image + mask channels.

    ``items[n]`` is ``(rows, target)``: the rows of ``images`` forming the item (one slice, or a patient's stack whose
    slices become the last axis), and its class target (or None for segmentation, whose label map comes from
    ``label_maps``). Mask channels are re-binarised after spatial augmentation.
    """

    def __init__(self, images, items, *, masks=None, label_maps=None, augmentation=None, seed: int = 0,
                 stack: bool = False) -> None:
        self.images = images
        self.masks = masks
        self.label_maps = label_maps
        self.items = list(items)
        self.stack = stack
        self.spatial, self.intensity = _split_augmentations(augmentation, seed)
        if not self.items:
            raise InputError("The training or validation set is empty; check the split.")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        import torch

        rows, target = self.items[index]
        rows = np.atleast_1d(rows)
        n = len(rows)
        channels = [self.images[rows].astype(np.float32)]
        if self.masks is not None:
            channels.append(self.masks[rows].astype(np.float32))
        sample: dict[str, Any] = {"image": np.concatenate(channels, axis=0)}  # (n * channels, j, i)
        if self.label_maps is not None:
            sample["label"] = self.label_maps[rows[0]][np.newaxis]
        if self.spatial is not None:
            sample = self.spatial(sample)
        image = np.asarray(sample["image"], dtype=np.float32)
        if self.intensity is not None:
            image[:n] = self.intensity({"image": image[:n]})["image"]
        if self.masks is not None:
            image[n:] = (image[n:] > 0.5).astype(np.float32)
        image = image.reshape(-1, n, *image.shape[1:])  # (channels, n, j, i)
        image = np.moveaxis(image, 1, -1) if self.stack else image[:, 0]
        out = {"image": torch.as_tensor(np.ascontiguousarray(image))}
        if self.label_maps is not None:
            out["label"] = torch.as_tensor(np.asarray(sample["label"]).astype(np.int64))
        else:
            out["label"] = torch.tensor([float(target)], dtype=torch.float32)
        return out


# -- training helpers ------------------------------------------------------------------------------------------------
def _fit(config: "TrainingConfig", network, train_set, val_set, *, out_dir, loss_fn=None, metric_fn=None,
         device=None, progress=None, batch_size_one: bool = False):
    from ..training.checkpoint import load_checkpoint_weights
    from ..training.engine import LAST_CHECKPOINT, Trainer

    out_dir = Path(out_dir)
    resume = (out_dir / LAST_CHECKPOINT).is_file()
    trainer = Trainer(config, network, train_set, val_set, loss_fn=loss_fn, metric_fn=metric_fn, out_dir=out_dir,
                      device=device, progress=progress)
    if resume:
        log.info("Resuming %s from %s", config.network, out_dir / LAST_CHECKPOINT)
    result = trainer.fit(resume=resume)
    if result.best_checkpoint is None:
        raise InputError(f"Training in {out_dir} gave no finite validation metric; nothing to keep.")
    load_checkpoint_weights(network, result.best_checkpoint)
    network.eval()
    return result, network


def _segmentation_dice_metric(codes: Sequence[int], *, union: bool):
    """``metric_fn``: Dice of the label ``codes`` over all validation pixels (their union when ``union``), as
    ``val_dice``."""

    def compute(network, loader, device) -> dict[str, float]:
        import torch

        groups = [tuple(codes)] if union else [(c,) for c in codes]
        inter = np.zeros(len(groups))
        total = np.zeros(len(groups))
        for batch in loader:
            predicted = torch.argmax(network(batch["image"].to(device)), dim=1).cpu().numpy()
            truth = batch["label"].cpu().numpy().reshape(predicted.shape)
            for n, group in enumerate(groups):
                p, t = np.isin(predicted, group), np.isin(truth, group)
                inter[n] += np.logical_and(p, t).sum()
                total[n] += p.sum() + t.sum()
        dices = np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)
        metrics = {f"dice_{'_'.join(map(str, g))}": float(d) for g, d in zip(groups, dices)}
        metrics["val_dice"] = float(np.nanmean(dices)) if np.isfinite(dices).any() else 0.0
        return metrics

    return compute


def _classifier_metric(pos_weight: float = 1.0):
    """``metric_fn``: ``val_score`` = AUROC when the validation set holds both classes, else minus the BCE loss (the
    same choice every epoch, since the set does not change); also ``val_auroc``, ``val_bce``, ``val_accuracy``."""

    def compute(network, loader, device) -> dict[str, float]:
        import torch

        logits, targets = [], []
        for batch in loader:
            logits.append(network(batch["image"].to(device)).float().cpu().reshape(-1))
            targets.append(batch["label"].float().reshape(-1))
        logit, target = torch.cat(logits), torch.cat(targets)
        bce = float(torch.nn.functional.binary_cross_entropy_with_logits(
            logit, target, pos_weight=torch.tensor(pos_weight)))
        area = auroc(logit.numpy(), target.numpy().astype(int))
        accuracy = float(((logit > 0).float() == target).float().mean())
        return {"val_auroc": area, "val_bce": bce, "val_accuracy": accuracy,
                "val_score": area if np.isfinite(area) else -bce}

    return compute


def _weighted_bce(pos_weight: float):
    import torch

    loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(pos_weight)]))

    def compute(logits, label):
        return loss.to(logits.device)(logits, label.to(logits.dtype).reshape(logits.shape))

    return compute


def _check_same_length(**arrays) -> None:
    lengths = {name: len(a) for name, a in arrays.items() if a is not None}
    if len(set(lengths.values())) > 1:
        raise InputError(f"Arrays of one set differ in length: {lengths}.")


# -- step 1: myocardium ----------------------------------------------------------------------------------------------
def train_myocardium(
    train_images: NDArray[np.float32],
    train_labels: NDArray[np.uint8],
    val_images: NDArray[np.float32],
    val_labels: NDArray[np.uint8],
    *,
    config: "TrainingConfig",
    out_dir: str | os.PathLike,
    augmentation: "AugmentationConfig | None" = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple["TrainingResult", "nn.Module"]:
    """Train the myocardium U-Net (channels = label codes: 2 myocardium, 3 LV blood pool); best epoch by Dice.

    ``train_labels`` / ``val_labels``: (N, j, i) from :func:`myocardium_targets`.
    """
    from ..models.networks import build_seeded_network

    _check_same_length(train_images=train_images, train_labels=train_labels)
    _check_same_length(val_images=val_images, val_labels=val_labels)
    train_set = _ChannelDataset(train_images, [(n, None) for n in range(len(train_images))], label_maps=train_labels,
                                augmentation=augmentation, seed=config.seed)
    val_set = _ChannelDataset(val_images, [(n, None) for n in range(len(val_images))], label_maps=val_labels)
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    return _fit(config, network, train_set, val_set, out_dir=out_dir,
                metric_fn=_segmentation_dice_metric((LV_MYOCARDIUM, LV_BLOOD_POOL), union=False), device=device,
                progress=progress)


def predict_myocardium(
    network: "nn.Module",
    images: NDArray[np.float32],
    *,
    device: str | None = None,
    batch_size: int = 16,
) -> NDArray[np.uint8]:
    """Predicted myocardium mask (N, j, i) uint8 0/1 of the myocardium U-Net (argmax == 2)."""
    from ..models.inference import predict_slices

    if len(images) == 0:
        return np.zeros(images.shape, np.uint8)
    logits = predict_slices(network, images[:, np.newaxis].astype(np.float32), device=device, batch_size=batch_size)
    return (np.argmax(logits, axis=1) == LV_MYOCARDIUM).astype(np.uint8)


# -- step 2: classifiers ---------------------------------------------------------------------------------------------
def _relative_safe(augmentation: "AugmentationConfig | None", settings: ClassifierInputSettings):
    """No gamma on myocardium-relative inputs: a gamma changes the very intensity ratios the classifier reads."""
    import dataclasses

    if augmentation is None or settings.intensity != "myocardium_relative" or augmentation.gamma_prob == 0:
        return augmentation
    return dataclasses.replace(augmentation, gamma_prob=0.0)


def _input_channels(images, myocardium, settings: ClassifierInputSettings) -> tuple[np.ndarray, np.ndarray]:
    inputs = classifier_inputs(images, myocardium, settings).array
    return inputs[:, 0], inputs[:, 1]


def train_slice_classifier(
    train: FibrosisSlices,
    train_myocardium: NDArray[np.uint8],
    val: FibrosisSlices,
    val_myocardium: NDArray[np.uint8],
    *,
    config: "TrainingConfig",
    out_dir: str | os.PathLike,
    augmentation: "AugmentationConfig | None" = None,
    input_settings: ClassifierInputSettings | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple["TrainingResult", "nn.Module"]:
    """Train ``fibrosis_cam_2d`` on (image, predicted myocardium) with the slice-level labels and plain BCE.

    ``input_settings`` (:mod:`cardiac_ai.fibrosis.classifier_input`; default ``TRAINING_DEFAULTS``) say how the two
    input channels are made; they are recorded in ``out_dir`` for inference. With myocardium-relative intensity the
    augmentation's gamma is off.
    The best epoch has the highest validation AUROC (``val_score``; minus the BCE if validation has one class).
    """
    from ..models.networks import build_seeded_network

    settings = input_settings or TRAINING_DEFAULTS
    _check_same_length(train=train.images, train_myocardium=train_myocardium)
    _check_same_length(val=val.images, val_myocardium=val_myocardium)
    train_images, train_masks = _input_channels(train.images, train_myocardium, settings)
    val_images, val_masks = _input_channels(val.images, val_myocardium, settings)
    train_set = _ChannelDataset(train_images, [(n, t) for n, t in enumerate(train.slice_labels)],
                                masks=train_masks, augmentation=_relative_safe(augmentation, settings),
                                seed=config.seed)
    val_set = _ChannelDataset(val_images, [(n, t) for n, t in enumerate(val.slice_labels)], masks=val_masks)
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    fitted = _fit(config, network, train_set, val_set, out_dir=out_dir, loss_fn=_weighted_bce(1.0),
                  metric_fn=_classifier_metric(), device=device, progress=progress)
    settings.save(out_dir)
    return fitted


def _stack_items(data: FibrosisSlices) -> list[tuple[NDArray[np.int64], int]]:
    return [(rows, int(data.stack_labels[rows[0]])) for rows in data.stacks()]


def train_stack_classifier(
    train: FibrosisSlices,
    train_myocardium: NDArray[np.uint8],
    val: FibrosisSlices,
    val_myocardium: NDArray[np.uint8],
    *,
    config: "TrainingConfig",
    out_dir: str | os.PathLike,
    initial_2d: "nn.Module | None" = None,
    augmentation: "AugmentationConfig | None" = None,
    input_settings: ClassifierInputSettings | None = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple["TrainingResult", "nn.Module"]:
    """Train ``fibrosis_cam_stack`` (3x3x1 kernels) on whole patient stacks with the N/P label and weighted BCE.

    ``pos_weight`` = negatives / positives among the training patients (class imbalance). ``initial_2d``: a trained
    slice model whose weights are inflated into the stack model (:func:`inflate_2d_to_stack`); train it with the
    same ``input_settings`` (each slice of a stack gets its own heart crop: the 3x3x1 kernels never mix slices). One
    stack per batch (stacks differ in slice count): ``config.batch_size`` must be 1.
    """
    from ..models.networks import build_seeded_network
    from ..models.weak_networks import inflate_2d_to_stack

    if config.batch_size != 1:
        raise InputError(f"The stack classifier trains one stack per batch; set batch_size=1, got {config.batch_size}.")
    train_items, val_items = _stack_items(train), _stack_items(val)
    n_positive = sum(t for _, t in train_items)
    n_negative = len(train_items) - n_positive
    pos_weight = n_negative / n_positive if n_positive and n_negative else 1.0
    log.info("Stack classifier: %d P and %d N training stacks, pos_weight %.3f", n_positive, n_negative, pos_weight)
    settings = input_settings or TRAINING_DEFAULTS
    train_images, train_masks = _input_channels(train.images, train_myocardium, settings)
    val_images, val_masks = _input_channels(val.images, val_myocardium, settings)
    train_set = _ChannelDataset(train_images, train_items, masks=train_masks,
                                augmentation=_relative_safe(augmentation, settings), seed=config.seed, stack=True)
    val_set = _ChannelDataset(val_images, val_items, masks=val_masks, stack=True)
    if initial_2d is not None:
        network = inflate_2d_to_stack(initial_2d).float().train()
    else:
        network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    fitted = _fit(config, network, train_set, val_set, out_dir=out_dir, loss_fn=_weighted_bce(pos_weight),
                  metric_fn=_classifier_metric(pos_weight), device=device, progress=progress)
    settings.save(out_dir)
    return fitted


def classifier_probabilities(
    network: "nn.Module",
    images: NDArray[np.float32],
    myocardium: NDArray[np.uint8],
    *,
    input_settings: ClassifierInputSettings | None = None,
    device: str | None = None,
    batch_size: int = 16,
) -> NDArray[np.float32]:
    """Fibrosis probability of each slice (N,) from the slice classifier (sigmoid of its logit)."""
    from ..models.inference import predict_slices

    inputs = classifier_inputs(images, myocardium, input_settings).array
    return predict_slices(network, inputs, device=device, batch_size=batch_size, activation="sigmoid")[:, 0]


# -- step 3: CAMs and pseudo-labels ----------------------------------------------------------------------------------
def slice_cams(
    network: "nn.Module",
    images: NDArray[np.float32],
    myocardium: NDArray[np.uint8],
    *,
    input_settings: ClassifierInputSettings | None = None,
    device: str | None = None,
    batch_size: int = 16,
) -> NDArray[np.float32]:
    """Raw CAMs (N, j, i) of the slice classifier, bilinearly resized to the image grid (0 outside a heart crop)."""
    from ..weak import model_cam

    inputs = classifier_inputs(images, myocardium, input_settings)
    return inputs.to_grid(model_cam(network, inputs.array, class_index=0, device=device, batch_size=batch_size))


def stack_cams(
    network: "nn.Module",
    data: FibrosisSlices,
    myocardium: NDArray[np.uint8],
    *,
    input_settings: ClassifierInputSettings | None = None,
    device: str | None = None,
) -> NDArray[np.float32]:
    """Raw CAMs (N, j, i) of the stack classifier, one patient stack at a time, rows in ``data`` order."""
    from ..weak import model_cam

    cams = np.zeros(data.images.shape, np.float32)
    for rows in data.stacks():
        inputs = classifier_inputs(data.images[rows], myocardium[rows], input_settings)
        cam = model_cam(network, inputs.stack(), class_index=0, device=device, batch_size=1)[0]  # (s, s, k)
        cams[rows] = inputs.to_grid(np.moveaxis(cam, -1, 0))
    return cams


def make_pseudo_labels(
    cams: NDArray[np.float32],
    images: NDArray[np.float32],
    positives: NDArray,
    myocardium: NDArray[np.uint8],
    *,
    config: Any = None,
) -> NDArray[np.uint8]:
    """Section 3.3 pseudo-labels (paper defaults), restricted to the predicted myocardium; negatives empty."""
    from ..weak import PseudoLabelConfig, pseudo_labels

    return pseudo_labels(cams, images, np.asarray(positives).astype(bool),
                         config=PseudoLabelConfig() if config is None else config,
                         restrict_to=myocardium.astype(bool))


# -- step 4: fibrosis U-Nets -----------------------------------------------------------------------------------------
def train_fibrosis_unet(
    train_images: NDArray[np.float32],
    train_labels: NDArray[np.uint8],
    val_images: NDArray[np.float32],
    val_labels: NDArray[np.uint8],
    *,
    config: "TrainingConfig",
    out_dir: str | os.PathLike,
    train_myocardium: NDArray[np.uint8] | None = None,
    val_myocardium: NDArray[np.uint8] | None = None,
    augmentation: "AugmentationConfig | None" = None,
    device: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple["TrainingResult", "nn.Module"]:
    """Train a fibrosis U-Net: weak (pseudo-labels 0/1, image alone) or pixel (labels 0/1/2 = scar/MVO, with the
    predicted myocardium as the second input channel when ``train_myocardium`` is given).

    The best epoch has the highest validation Dice of the foreground (scar and MVO together) against the *validation
    labels given*: pseudo-labels for the weak model (no ground truth), true labels for the pixel model.
    """
    from ..models.networks import build_seeded_network

    _check_same_length(train_images=train_images, train_labels=train_labels, train_myocardium=train_myocardium)
    _check_same_length(val_images=val_images, val_labels=val_labels, val_myocardium=val_myocardium)
    if (train_myocardium is None) != (val_myocardium is None):
        raise InputError("Give the predicted myocardium for both training and validation, or for neither.")
    codes = tuple(range(1, int(config.network_kwargs.get("out_channels", 2))))
    train_set = _ChannelDataset(train_images, [(n, None) for n in range(len(train_images))], masks=train_myocardium,
                                label_maps=train_labels, augmentation=augmentation, seed=config.seed)
    val_set = _ChannelDataset(val_images, [(n, None) for n in range(len(val_images))], masks=val_myocardium,
                              label_maps=val_labels)
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)
    return _fit(config, network, train_set, val_set, out_dir=out_dir,
                metric_fn=_segmentation_dice_metric(codes, union=True), device=device, progress=progress)
