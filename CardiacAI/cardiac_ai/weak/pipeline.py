"""Class activation maps and whole-heart segmentation of a short-axis volume without pixel-trained models.

``cardiacai cam INPUT --out DIR`` runs :func:`explain_volume`: the weak classifier (``weak_cam_classifier``) gives a
class per slice and the CAM of that class (or of a class chosen by the user); the CAM becomes a pseudo-label; when the
weak U-Net (``weak_heart_unet``) is installed its output is the label map instead. Everything is computed on the
crop around the centre of the field of view that the models were trained on, then put back on the input grid.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ..errors import InputError, ModelError
from ..geometry import Volume
from ..labels import HEART
from ..progress import ProgressCallback, report
from ..provenance import Provenance
from .pseudo_labels import PseudoLabelConfig, pseudo_labels
from .training import scale_cams, slice_cams

__all__ = ["WeakModels", "CamResult", "explain_volume", "CLASSIFIER_NAME", "SEGMENTER_NAME"]

log = logging.getLogger(__name__)

CLASSIFIER_NAME = "weak_cam_classifier"
SEGMENTER_NAME = "weak_heart_unet"
#: Slices whose CAM-class probability is below this get no pseudo-label (the classifier saw no heart evidence).
_MIN_CLASS_PROBABILITY = 0.0


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

    def to_report(self) -> dict:
        from ..metrics.clinical import structure_volume_ml

        mean = self.slice_probabilities.mean(axis=0)
        return {
            "classes": list(self.classes),
            "heart_volume_ml": structure_volume_ml(self.labels.array, HEART,
                                                   self.labels.geometry.spacing_kji_mm),
            "volume_prediction": {"class": self.classes[int(np.argmax(mean))],
                                  "probabilities": {c: float(p) for c, p in zip(self.classes, mean)}},
            "slices": [
                {"k": k, "explained_class": self.classes[int(c)],
                 "probabilities": {name: float(p) for name, p in zip(self.classes, probs)},
                 "heart_pixels": int(np.count_nonzero(self.labels.array[k]))}
                for k, (c, probs) in enumerate(zip(self.explained_classes, self.slice_probabilities))
            ],
            "label_source": self.label_source,
            "warnings": list(self.warnings),
        }


def _class_index(explain: str | None, classes: Sequence[str]) -> int | None:
    if explain is None or explain == "predicted":
        return None
    if explain not in classes:
        raise InputError(f"Unknown class {explain!r} to explain; the classifier's classes are {list(classes)}.")
    return list(classes).index(explain)


#: Smallest in-plane extent (mm) of an image that can show a short-axis view of the heart.
MIN_FIELD_OF_VIEW_MM = 80.0


def explain_volume(
    volume: Volume,
    models: WeakModels,
    *,
    explain: str | None = None,
    method: str | None = None,
    pseudo_config: PseudoLabelConfig | None = None,
    use_segmenter: bool = True,
    device: str | None = None,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
) -> CamResult:
    """CAM and whole-heart labels of a short-axis stack.

    Parameters
    ----------
    volume : Volume (k, j, i)
    models : WeakModels
    explain : class name to explain on every slice, or None / "predicted" for each slice's predicted class.
    method : "model", "gradcam" or "gradcampp"; default: the one the model card names (chosen on validation).
    pseudo_config : pseudo-label settings; default: those stored in the classifier's card, else the paper's.
    use_segmenter : use the weak U-Net for the labels when installed (else the CAM pseudo-label).
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
    provenance = provenance or Provenance(command="cam")
    card = models.classifier.card
    classes = tuple(card.label_map[i] for i in sorted(card.label_map))
    extra = card.inference
    method = method or extra.get("cam_method", "model")
    layer = extra.get("cam_target_layer", "attention")
    if pseudo_config is None:
        pseudo_config = PseudoLabelConfig(**extra["pseudo_label_config"]) if "pseudo_label_config" in extra \
            else PseudoLabelConfig()
    spec = card.input_spec_object()
    report(progress, 0.05, "Preprocessing")
    prepared = preprocess(volume, spec, crop_center="image_center")
    images = prepared.image.astype(np.float32)
    network = models.classifier.network
    target_device = models.classifier.device
    with torch.no_grad():
        logits = network(torch.from_numpy(images[:, None]).to(target_device)).float().cpu()
    probabilities = torch.softmax(logits, dim=1).numpy()
    fixed = _class_index(explain, classes)
    explained = np.full(len(images), fixed, np.int64) if fixed is not None else probabilities.argmax(axis=1)
    report(progress, 0.3, f"Class activation maps ({method})")
    cams = slice_cams(network, images, method=method, target_layer=layer, class_index=explained.tolist(),
                      device=str(target_device))
    scaled = scale_cams(cams)
    warnings: list[str] = []
    if volume.array.shape[0] == 1:
        warnings.append(f"One slice: heart_volume_ml is its heart area times the slice thickness of the header "
                        f"({volume.geometry.spacing_kji_mm[0]:g} mm; a 2D file has none and gets 1 mm).")
    if models.segmenter is not None and use_segmenter:
        report(progress, 0.6, "Weak U-Net")
        segmenter = models.segmenter
        with torch.no_grad():
            out = segmenter.network(torch.from_numpy(images[:, None]).to(segmenter.device)).float()
        heart = torch.argmax(out, dim=1).cpu().numpy().astype(np.uint8)
        source = f"{SEGMENTER_NAME} (U-Net trained on pseudo-labels, no pixel label)"
    else:
        report(progress, 0.6, "Pseudo-labels (DenseCRF)")
        heart = np.asarray(pseudo_labels(cams, images, np.ones(len(images), bool), config=pseudo_config), np.uint8)
        source = f"CAM pseudo-label ({method}, DenseCRF)"
        if models.segmenter is None:
            warnings.append(f"No {SEGMENTER_NAME!r} model installed: labels are the CAM pseudo-labels.")
    report(progress, 0.85, "Restoring the input grid")
    cam_native = restore_probabilities(scaled[np.newaxis], prepared.transform, background_channel=None)[0]
    labels_native = restore_labels(np.where(heart > 0, HEART, 0).astype(np.uint8), prepared.transform)
    for message in warnings:
        provenance.warn(message)
    provenance.models.extend(models.uses())
    provenance.parameters.update({"cam_method": method, "explain": explain or "predicted"})
    report(progress, 1.0, "CAM done")
    return CamResult(
        cam=Volume(np.clip(cam_native, 0.0, 1.0).astype(np.float32), volume.geometry),
        labels=Volume(labels_native.array, volume.geometry),
        label_source=source,
        classes=classes,
        slice_probabilities=probabilities.astype(np.float32),
        explained_classes=explained,
        warnings=warnings,
    )
