"""Class activation maps and whole-heart segmentation of a short-axis volume without pixel-trained models.

``cardiacai cam INPUT --out DIR`` runs :func:`explain_volume`: the weak classifier (``weak_cam_classifier``) gives a
class probabilities per slice and, by default, the CAM of the class it predicts for the whole volume on every slice
(``explain="slice"``: each slice's own prediction; or a class chosen by the user); the CAM becomes a pseudo-label;
when the weak U-Net (``weak_heart_unet``) is installed its output is the label map instead. Everything is computed
on the crop around the centre of the field of view that the models were trained on, then put back on the input grid.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InputError, ModelError
from ..geometry import Volume
from ..labels import HEART
from ..progress import ProgressCallback, report
from ..provenance import Provenance
from .cam import AUGMENTATIONS
from .propagation import carry_mask_between_frames
from .pseudo_labels import PseudoLabelConfig, pseudo_labels
from .structures import LV_WALL_MM, check_wall_mm, complete_lv_wall
from .training import scale_cams, slice_cams

__all__ = ["WeakModels", "CamResult", "explain_volume", "CLASSIFIER_NAME", "SEGMENTER_NAME"]

log = logging.getLogger(__name__)

CLASSIFIER_NAME = "weak_cam_classifier"
SEGMENTER_NAME = "weak_heart_unet"
#: Slices whose CAM-class probability is below this get no pseudo-label (the classifier saw no heart evidence).
_MIN_CLASS_PROBABILITY = 0.0
#: ``explain`` values that are not class names: the class the classifier predicts for the whole volume (mean of the
#: slice probabilities) on every slice, the default, so that cam.nii.gz shows one class's evidence throughout; or each
#: slice's own prediction (the default before 2026-12; its volume may mix classes across slices).
EXPLAIN_VOLUME_PREDICTION = "predicted"
EXPLAIN_SLICE_PREDICTION = "slice"
#: Below this in-plane correlation of neighbouring pixels an image is noise rather than anatomy (ACDC cine frames:
#: 0.95; white noise: 0.00). The weak models see a heart in anything, so this is their only sanity check.
MIN_NEIGHBOUR_CORRELATION = 0.5
#: Descriptions of the weak U-Net's training modes (:data:`~cardiac_ai.weak.recipe.WEAK_MODES`) in ``label_source``.
_WEAK_MODE_SOURCES = {
    "pseudo_label": "U-Net trained on CAM pseudo-labels",
    "cam_prior": "U-Net trained with the soft CAM prior in its loss",
    "self_training": "U-Net self-trained on a first pseudo-label U-Net's predictions",
}


@dataclass
class WeakModels:
    """The weak classifier (required) and the weak U-Net (optional), as registry ``LoadedModel`` objects."""

    classifier: Any
    segmenter: Any = None

    @classmethod
    def from_registry(cls, registry, *, device) -> "WeakModels":
        if not registry.has(CLASSIFIER_NAME):
            raise ModelError(
                f"No {CLASSIFIER_NAME!r} model found in {', '.join(str(p) for p in registry.search_paths)}. "
                "Train it on your data with: cardiacai train --task weak-cam --data FOLDER --label-column COLUMN "
                "--out RUN --register-to MODELS, then pass --models-dir MODELS (on ACDC, also: python "
                "scripts/train_weak_acdc.py --data ACDC_FOLDER --work work_data/weak, then --models-dir "
                "work_data/weak/models)."
            )
        segmenter = registry.load(SEGMENTER_NAME, device=device) if registry.has(SEGMENTER_NAME) else None
        return cls(registry.load(CLASSIFIER_NAME, device=device), segmenter)

    def uses(self) -> list:
        return [m.model_use() for m in (self.classifier, self.segmenter) if m is not None]


@dataclass
class CamResult:
    """CAM (float in [0, 1]) and whole-heart labels (0 / :data:`~cardiac_ai.labels.HEART`) in the input geometry."""

    cam: Volume
    labels: Volume
    label_source: str
    classes: tuple[str, ...]
    slice_probabilities: np.ndarray  # (k, n_classes)
    explained_classes: np.ndarray  # (k,) class index whose CAM was computed
    warnings: list[str] = field(default_factory=list)
    explain: str = EXPLAIN_VOLUME_PREDICTION  # "predicted" (volume), "slice", or the class name given
    augment: tuple[str, ...] = ()  # views whose CAMs were averaged with the plain one
    pseudo_label: dict | None = None  # settings of the CAM pseudo-label when it made the labels, else None
    lv_wall_mm: float = 0.0  # LV wall band added to the weak U-Net's heart (weak.structures.complete_lv_wall); 0: none
    heart_from_end_diastole: bool = False  # the heart is the ED frame's, carried here (weak.propagation)
    heart_from_weak_unet: bool = False  # the weak U-Net drew the heart (else the CAM pseudo-label)

    def to_report(self) -> dict:
        from ..metrics.clinical import structure_volume_ml

        mean = self.slice_probabilities.mean(axis=0)
        explained = {self.classes[int(c)] for c in self.explained_classes}
        return {
            "classes": list(self.classes),
            "heart_volume_ml": structure_volume_ml(self.labels.array, HEART,
                                                   self.labels.geometry.spacing_kji_mm),
            "volume_prediction": {"class": self.classes[int(np.argmax(mean))],
                                  "probabilities": {c: float(p) for c, p in zip(self.classes, mean)}},
            "explain": self.explain,
            # one class when every CAM slice explains the same one, else None (explain="slice": see the slices)
            "explained_class": explained.pop() if len(explained) == 1 else None,
            "slices": [
                {"k": k, "explained_class": self.classes[int(c)],
                 "predicted_class": self.classes[int(np.argmax(probs))],
                 "probabilities": {name: float(p) for name, p in zip(self.classes, probs)},
                 "heart_pixels": int(np.count_nonzero(self.labels.array[k]))}
                for k, (c, probs) in enumerate(zip(self.explained_classes, self.slice_probabilities))
            ],
            "label_source": self.label_source,
            "cam_augment": list(self.augment),
            "pseudo_label": self.pseudo_label,
            "lv_wall_mm": self.lv_wall_mm,
            "heart_from_end_diastole": self.heart_from_end_diastole,
            "warnings": list(self.warnings),
        }


def _explain_mode(explain: str | None, classes: Sequence[str]) -> str:
    """``explain`` checked: a class name (which wins over a keyword it equals), "predicted" (also for None) or
    "slice"."""
    if explain in classes:
        return explain
    if explain is None or explain in (EXPLAIN_VOLUME_PREDICTION, EXPLAIN_SLICE_PREDICTION):
        return explain or EXPLAIN_VOLUME_PREDICTION
    raise InputError(f"Unknown class {explain!r} to explain; the classifier's classes are {list(classes)} (or "
                     f"{EXPLAIN_VOLUME_PREDICTION!r}: the volume's predicted class, {EXPLAIN_SLICE_PREDICTION!r}: each "
                     "slice's own).")


def _explained_classes(mode: str, classes: Sequence[str], probabilities: np.ndarray) -> np.ndarray:
    """(k,) class index whose CAM each slice gets."""
    if mode == EXPLAIN_SLICE_PREDICTION and mode not in classes:
        return probabilities.argmax(axis=1)
    if mode == EXPLAIN_VOLUME_PREDICTION and mode not in classes:
        index = int(probabilities.mean(axis=0).argmax())  # as CamResult.to_report's volume_prediction
    else:
        index = list(classes).index(mode)
    return np.full(len(probabilities), index, np.int64)


def _segmenter_source(card: Any) -> str:
    """``label_source`` of the weak U-Net: the training mode its card names (``inference["weak_mode"]``, or the
    "(mode NAME:" of the description that cards registered before that field have)."""
    import re

    mode = card.inference.get("weak_mode")
    if mode is None:
        found = re.search(r"\(mode (\w+):", card.description or "")
        mode = found.group(1) if found else None
    how = _WEAK_MODE_SOURCES.get(mode, "U-Net trained without pixel labels (its model card names no weak mode)")
    return f"{SEGMENTER_NAME} ({how}, no pixel label)"


def _check_augment(augment: Sequence[str]) -> tuple[str, ...]:
    augment = (augment,) if isinstance(augment, str) else tuple(augment)
    unknown = sorted(set(augment) - set(AUGMENTATIONS))
    if unknown or len(set(augment)) != len(augment):
        raise InputError(f"augment must list distinct views of {AUGMENTATIONS}, got {list(augment)}.")
    return augment


def _pseudo_label_settings(
    pseudo_config: PseudoLabelConfig | None, card_inference: Mapping[str, Any], overrides: Mapping[str, Any]
) -> tuple[PseudoLabelConfig, dict]:
    """The pseudo-label settings to use and their report entry: ``overrides`` (PseudoLabelConfig field names) over
    ``pseudo_config``, else over the classifier card's settings, else over the paper's."""
    if pseudo_config is not None:
        base, origin = pseudo_config, "caller"
    elif "pseudo_label_config" in card_inference:
        base, origin = PseudoLabelConfig(**card_inference["pseudo_label_config"]), "model card"
    else:
        base, origin = PseudoLabelConfig(), "PseudoLabelConfig defaults (the model card stores none)"
    known = [f.name for f in dataclasses.fields(PseudoLabelConfig)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"Unknown pseudo-label setting(s) {unknown}; PseudoLabelConfig has {known}.")
    config = dataclasses.replace(base, **overrides)  # validated again by PseudoLabelConfig
    settings = {**dataclasses.asdict(config), "scale_range": list(config.scale_range)}
    return config, {"settings": settings, "defaults_from": origin, "overridden": sorted(overrides)}


def _grid(model: Any) -> str:
    spec = model.card.input_spec_object()
    spacing = " x ".join(f"{s:g}" for s in spec.in_plane_spacing_mm)
    crop = " x ".join(str(c) for c in spec.crop_size)
    return (f"{model.card.name} {model.card.version} ({Path(model.weights_path).parent}): {spacing} mm, {crop} "
            f"pixels, {spec.normalization} normalisation")


def _pairing_warning(models: WeakModels) -> str | None:
    """Why the U-Net's labels may not match the classifier's CAM: the two models come from different folders, or
    work on different grids (the U-Net then gets its own crop of the image, see :func:`explain_volume`)."""
    classifier, segmenter = models.classifier, models.segmenter
    same_grid = classifier.card.input_spec_object() == segmenter.card.input_spec_object()
    same_folder = Path(classifier.weights_path).parent == Path(segmenter.weights_path).parent
    if same_grid and same_folder:
        return None
    advice = ("To use the models of one training run, put both in one --models-dir folder (`cardiacai train --task "
              "weak-cam --register-to DIR` registers both) or take the labels from the CAM (--pseudo-label).")
    if same_grid:
        return (f"The weak models come from different folders ({_grid(classifier)}; {_grid(segmenter)}), so "
                f"probably from different training runs: the heart labels need not match the classifier's CAM. "
                f"{advice}")
    return (f"The weak models work on different grids ({_grid(classifier)}; {_grid(segmenter)}): they were not "
            f"trained together. Each model got the image on its own grid, so the heart labels and the CAM come from "
            f"different crops of the image. {advice}")


#: Smallest in-plane extent (mm) of an image that can show a short-axis view of the heart.
MIN_FIELD_OF_VIEW_MM = 80.0


def explain_volume(
    volume: Volume,
    models: WeakModels,
    *,
    explain: str | None = None,
    method: str | None = None,
    augment: Sequence[str] = (),
    pseudo_config: PseudoLabelConfig | None = None,
    pseudo_label_overrides: Mapping[str, Any] | None = None,
    use_segmenter: bool = True,
    lv_wall_mm: float = LV_WALL_MM,
    end_diastole: Volume | None = None,
    device: str | None = None,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
) -> CamResult:
    """CAM and whole-heart labels of a short-axis stack.

    Parameters
    ----------
    volume : Volume (k, j, i)
    models : WeakModels
    explain : class name to explain on every slice; None or "predicted" (the default): the class predicted for the
        whole volume (the mean of the slice probabilities) on every slice, so that the CAM volume shows one class's
        evidence; "slice": each slice's own predicted class (slices may then explain different classes). The report
        gives each slice's ``explained_class`` and ``predicted_class`` either way.
    method : "model", "gradcam" or "gradcampp"; default: the one the model card names (chosen on validation).
    augment : views of :data:`~cardiac_ai.weak.cam.AUGMENTATIONS` ("hflip", "vflip", "shift") whose CAMs, mapped
        back, are averaged with the plain one; default none.
    pseudo_config : pseudo-label settings; default: those stored in the classifier's card, else the paper's.
    pseudo_label_overrides : PseudoLabelConfig field -> value, replacing those of ``pseudo_config`` (or the card's);
        only where the labels are the CAM pseudo-label (``use_segmenter=False`` or no weak U-Net installed).
    use_segmenter : use the weak U-Net for the labels when installed (else the CAM pseudo-label).
    lv_wall_mm : the weak U-Net's heart gets, on every slice, the band within this many mm of the LV blood pool that
        :func:`~cardiac_ai.weak.structures.split_heart` finds in it (:func:`~cardiac_ai.weak.structures.
        complete_lv_wall`: the U-Net misses about 30 % of the myocardium); default 11 mm, chosen on the ACDC
        validation patients (whole-heart Dice 0.722 -> 0.744); 0 keeps the U-Net's output as it is. Not applied to
        the CAM pseudo-label (not validated there).
    end_diastole : the end-diastolic frame of the same cine stack (same grid, in any axis order), when ``volume`` is
        another frame (end-systole): the weak U-Net segments it, and its heart (LV wall completed), carried onto ``volume`` by a
        deformable registration of the two images (:func:`~cardiac_ai.weak.propagation.carry_mask_between_frames`),
        is the labels. The U-Net draws an end-diastolic-sized heart on every frame, so this is the better heart for
        an end-systolic frame (ACDC test patients, per volume: 0.716 -> 0.751; validation 0.698 -> 0.728). Not
        used by the CAM pseudo-label (a warning says so); the CAM is ``volume``'s own either way.

    The classifier explains crops on its card's grid. The weak U-Net segments the same crops when its card names
    the same grid, else its own crop of the image on its grid; either way the report warns when the two models come
    from different folders or grids (not one training run).

    Raises
    ------
    InputError
        A 4D volume, an image smaller than a short-axis view, an unknown class, view or pseudo-label setting,
        ``pseudo_label_overrides`` while the weak U-Net makes the labels, ``lv_wall_mm`` not a number >= 0, or an
        ``end_diastole`` that is not a 3D frame on ``volume``'s grid.
    """
    import torch

    from ..preprocessing import preprocess, restore_labels, restore_probabilities

    if volume.axes != "kji":
        raise InputError(f"cam needs a 3D (k, j, i) volume, got axes {volume.axes!r}; choose a frame of 4D data.")
    field_of_view = np.asarray(volume.array.shape[1:]) * np.asarray(volume.geometry.spacing_kji_mm[1:])
    if field_of_view.min() < MIN_FIELD_OF_VIEW_MM:
        raise InputError(
            f"The image covers {field_of_view[1]:.0f} x {field_of_view[0]:.0f} mm, less than a short-axis view of "
            f"the heart ({MIN_FIELD_OF_VIEW_MM:.0f} mm at least); cam needs a short-axis cine image (check the "
            "pixel size in the header)."
        )
    augment = _check_augment(augment)
    lv_wall_mm = check_wall_mm(lv_wall_mm)
    if end_diastole is not None:
        end_diastole = _on_the_image_grid(end_diastole, volume)
    provenance = provenance or Provenance(command="cam")
    card = models.classifier.card
    classes = tuple(card.label_map[i] for i in sorted(card.label_map))
    extra = card.inference
    method = method or extra.get("cam_method", "model")
    layer = extra.get("cam_target_layer", "attention")
    segment = models.segmenter is not None and use_segmenter
    overrides = dict(pseudo_label_overrides or {})
    if overrides and segment:
        raise InputError(
            f"Pseudo-label settings {sorted(overrides)} were given, but the labels come from the weak U-Net "
            f"({SEGMENTER_NAME}), not from the CAM pseudo-label; add --pseudo-label (use_segmenter=False) to use them."
        )
    pseudo_config, pseudo_entry = _pseudo_label_settings(pseudo_config, extra, overrides)
    explain_mode = _explain_mode(explain, classes)
    spec = card.input_spec_object()
    report(progress, 0.05, "Preprocessing")
    prepared = preprocess(volume, spec, crop_center="image_center")
    images = prepared.image.astype(np.float32)
    network = models.classifier.network
    target_device = models.classifier.device
    with torch.no_grad():
        logits = network(torch.from_numpy(images[:, None]).to(target_device)).float().cpu()
    probabilities = torch.softmax(logits, dim=1).numpy()
    explained = _explained_classes(explain_mode, classes, probabilities)
    report(progress, 0.3, f"Class activation maps ({method})")
    cams = slice_cams(network, images, method=method, target_layer=layer, class_index=explained.tolist(),
                      augment=augment, device=str(target_device))
    scaled = scale_cams(cams)
    warnings: list[str] = []
    correlation = neighbour_correlation(volume.array)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        warnings.append(
            f"The image looks like noise (neighbouring pixels correlate {correlation:.2f}; cine images about 0.95): "
            "the weak models have no heart detector and find a heart and a diagnosis in any image, so these results "
            "are not to be trusted.")
    if volume.array.shape[0] == 1:
        warnings.append(f"One slice: heart_volume_ml is its heart area times the slice thickness of the header "
                        f"({volume.geometry.spacing_kji_mm[0]:g} mm; a 2D file has none and gets 1 mm).")
    carried = False
    if segment:
        report(progress, 0.6, "Weak U-Net")
        pairing = _pairing_warning(models)
        if pairing is not None:
            warnings.append(pairing)
        source = _segmenter_source(models.segmenter.card)
        if lv_wall_mm:
            source += f", LV wall completed ({lv_wall_mm:g} mm around the LV blood pool)"
        if end_diastole is None:
            heart = _weak_unet_heart(volume, models.segmenter, prepared if _same_grid(models, spec) else None)
            if lv_wall_mm:
                report(progress, 0.7, "LV wall")
                heart = complete_lv_wall(volume.array, heart, volume.geometry.spacing_kji_mm, lv_wall_mm)
        else:
            report(progress, 0.7, "Weak U-Net on the end-diastolic frame")
            # no check that it is end-diastolic: the U-Net draws an ED-sized heart on every frame, so its sizes
            # cannot tell the phases apart (tried: 3 false alarms in 15 ACDC patients, 4 of 15 swaps caught)
            diastolic_heart = _weak_unet_heart(end_diastole, models.segmenter, None)
            if lv_wall_mm:
                diastolic_heart = complete_lv_wall(end_diastole.array, diastolic_heart,
                                                   end_diastole.geometry.spacing_kji_mm, lv_wall_mm)
            report(progress, 0.75, "Registering the end-diastolic frame onto this one")
            heart = carry_mask_between_frames(diastolic_heart, end_diastole.array, volume.array,
                                              volume.geometry.spacing_kji_mm)
            source = f"the end-diastolic frame's heart ({source}), carried to this frame by deformable registration"
            carried = True
        pseudo_entry = None
        labels_native = Volume(np.where(heart, HEART, 0).astype(np.uint8), volume.geometry)
    else:
        report(progress, 0.6, "Pseudo-labels (DenseCRF)")
        heart = np.asarray(pseudo_labels(cams, images, np.ones(len(images), bool), config=pseudo_config), np.uint8)
        source = f"CAM pseudo-label ({method}, DenseCRF)"
        if models.segmenter is None:
            warnings.append(f"No {SEGMENTER_NAME!r} model installed: labels are the CAM pseudo-labels.")
        if end_diastole is not None:
            warnings.append("The end-diastolic frame was not used: it carries the weak U-Net's heart to this frame, "
                            "and these labels are the CAM pseudo-label's.")
        labels_native = restore_labels(np.where(heart > 0, HEART, 0).astype(np.uint8), prepared.transform)
    report(progress, 0.85, "Restoring the input grid")
    cam_native = restore_probabilities(scaled[np.newaxis], prepared.transform, background_channel=None)[0]
    wall_added = lv_wall_mm if segment else 0.0
    for message in warnings:
        provenance.warn(message)
    # only the models that ran: with the CAM pseudo-label an installed U-Net made none of the results
    used = [models.classifier, models.segmenter] if segment else [models.classifier]
    provenance.models.extend(model.model_use() for model in used)
    provenance.parameters.update({"cam_method": method, "explain": explain_mode,
                                  "cam_augment": list(augment), "lv_wall_mm": wall_added,
                                  "heart_from_end_diastole": carried})
    report(progress, 1.0, "CAM done")
    return CamResult(
        cam=Volume(np.clip(cam_native, 0.0, 1.0).astype(np.float32), volume.geometry),
        labels=Volume(labels_native.array, volume.geometry),
        label_source=source,
        classes=classes,
        slice_probabilities=probabilities.astype(np.float32),
        explained_classes=explained,
        warnings=warnings,
        explain=explain_mode,
        augment=augment,
        pseudo_label=pseudo_entry,
        lv_wall_mm=wall_added,
        heart_from_end_diastole=carried,
        heart_from_weak_unet=segment,
    )


def _same_grid(models: WeakModels, spec: Any) -> bool:
    return models.segmenter.card.input_spec_object() == spec


def _weak_unet_heart(volume: Volume, segmenter: Any, prepared: Any) -> np.ndarray:
    """The weak U-Net's heart on ``volume``'s grid (bool). ``prepared``: the classifier's crops of ``volume`` when
    the U-Net's card names the same grid, else None (the U-Net's own crops are made: a U-Net fed crops of another
    grid would see the heart at the wrong size)."""
    import torch

    from ..preprocessing import preprocess, restore_labels

    if prepared is None:
        prepared = preprocess(volume, segmenter.card.input_spec_object(), crop_center="image_center")
    with torch.no_grad():
        out = segmenter.network(torch.from_numpy(prepared.image.astype(np.float32)[:, None]).to(segmenter.device))
    heart = torch.argmax(out.float(), dim=1).cpu().numpy().astype(np.uint8)
    return restore_labels(np.where(heart > 0, HEART, 0).astype(np.uint8), prepared.transform).array > 0


def _on_the_image_grid(end_diastole: Any, volume: Volume) -> Volume:
    """``end_diastole`` on ``volume``'s grid (frames of one cine series share it): the same voxels stored in
    another axis order (its header saying so) are reordered; InputError for any other grid."""
    from ..geometry import align_axes

    if not isinstance(end_diastole, Volume) or end_diastole.axes != "kji":
        raise InputError("The end-diastolic frame must be one 3D (k, j, i) frame; choose a frame of 4D data.")
    end_diastole = align_axes(end_diastole, volume.geometry)
    differences = end_diastole.geometry.differences(volume.geometry, atol_mm=0.01, atol_direction=1e-3)
    if end_diastole.array.shape != volume.array.shape:
        differences.insert(0, f"size {end_diastole.array.shape} vs {volume.array.shape} voxels (k, j, i)")
    if differences:
        raise InputError("The end-diastolic frame lies on another grid than the image (" + "; ".join(differences)
                         + "): give a frame of the same cine series, whose frames share one grid.")
    if not np.all(np.isfinite(end_diastole.array)):
        raise InputError("The end-diastolic frame holds NaN or Inf values.")
    return end_diastole


def neighbour_correlation(array: np.ndarray) -> float:
    """Pearson correlation of in-plane neighbouring pixels (along i and j, all slices), NaN-free; 1.0 for an image
    with no variation along either axis (nothing there to call noise)."""
    values = np.asarray(array)
    # about a million pairs are plenty for a noise check: every step-th row (column) of a large image, whose pairs
    # along the row (column) stay whole (a 768 x 768 x 25 cine took 1.6 s and a GB in float64 copies)
    step = max(1, int(np.ceil(values.size / 1_000_000)))
    rows, columns = values[..., ::step, :], values[..., :, ::step]
    pairs = [(rows[..., :-1], rows[..., 1:]), (columns[..., :-1, :], columns[..., 1:, :])]
    correlations = []
    for first, second in pairs:
        first, second = first.astype(np.float64).ravel(), second.astype(np.float64).ravel()
        if first.size and first.std() > 0 and second.std() > 0:
            correlations.append(float(np.corrcoef(first, second)[0, 1]))
    return float(np.mean(correlations)) if correlations else 1.0
