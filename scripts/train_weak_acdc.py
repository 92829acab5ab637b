"""Whole-heart segmentation of ACDC cine slices from the diagnosis label alone (issue 6): classifier, CAMs,
pseudo-labels, weak U-Nets.

Usage:
    python scripts/train_weak_acdc.py --data ../shared/data/acdc/training --work work_data/weak [--stage all]
    python scripts/train_weak_acdc.py --limit 3 --epochs 1 --seg-epochs 1 --work /tmp/weak_check   # quick check

What each step sees (the honesty rule of the issue):

``prepare``     every ED and ES slice on a 2 mm grid, 96 x 96 (192 mm) around the CENTRE OF THE FIELD OF VIEW (no
                label-centred crop), with the patient's diagnosis (Info.cfg ``Group``) as its class. The ground-truth
                heart masks on the same crop go to separate ``truth_*.npz`` files that only ``pseudo`` (to choose the
                CAM method and pseudo-label settings on the VALIDATION patients) and the benchmark read.
``classifier``  ``cam_classifier_2d`` (dilated residual network, non-local block, CAM head, 1.2 M parameters) on the
                five diagnosis classes; cross-entropy; best epoch by validation balanced accuracy (diagnosis labels).
``pseudo``      CAMs of each slice for its own diagnosis (training and validation) with each method (the
                network's own CAM head, MONAI Grad-CAM and Grad-CAM++ on the attention block), turned into
                pseudo-labels; and, as a second label-free prior, the ED-ES motion of each slice
                (:func:`cardiac_ai.weak.motion_prior`: the heart beats, the chest barely moves). The prior, the CAM
                method and the pseudo-label settings are chosen by the Jaccard against the heart masks of the
                VALIDATION patients only (allowed: hyper-parameters on validation patients).
``weak_pseudo`` U-Net (2 classes) trained with Dice + cross-entropy on the training pseudo-labels; best epoch by the
                loss on the validation pseudo-labels (no ground truth).
``weak_prior``  the same U-Net trained against the soft CAM prior (:func:`cardiac_ai.weak.training.cam_prior_loss`).
``weak_self``   self-training: the ``weak_pseudo`` U-Net's own predictions on the training and validation slices,
                thresholded, eroded, largest piece with holes filled (threshold and erosion chosen by the
                whole-heart Dice of the VALIDATION patients), train a second U-Net the same way.
``register``    exports ``weak_cam_classifier`` and ``weak_heart_unet`` (the best weak U-Net on validation Dice)
                with model cards.

The splits are the cine models' (``Resources/Splits/acdc_cine_split.json``): 70 training, 10 validation, 20 test.
The stages are :func:`cardiac_ai.weak.recipe.train_weak_cam_models` with ``selection="validation_truth"``; on your own
data (no pixel labels read), run ``cardiacai train --task weak-cam``.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from cardiac_ai.datasets import list_acdc, load_split, refs_in_part
from cardiac_ai.datasets.acdc import ACDC_GROUPS
from cardiac_ai.progress import PROGRESS_LINES_HELP, StageProgress
from cardiac_ai.weak.recipe import (
    CAM_TARGET_LAYERS,
    RECIPE_SPEC,
    WEAK_AUGMENTATION,
    WEAK_STAGES,
    WeakRecipe,
    cam_pseudo_label_grid,
    load_trained_network,
    load_weak_slices,
    motion_of,
    motion_pseudo_label_grid,
    other_phase,
    predict_heart,
    predict_heart_probabilities,
    train_weak_cam_models,
)

SPLIT_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Splits" / "acdc_cine_split.json"
SPEC = RECIPE_SPEC
CLASSIFIER = ("cam_classifier_2d", WeakRecipe().classifier_kwargs(len(ACDC_GROUPS)))
UNET = ("unet2d", WeakRecipe().unet_kwargs())
CAM_METHODS = CAM_TARGET_LAYERS
CLASSIFIER_AUGMENTATION = WEAK_AUGMENTATION
DATA = ("ACDC training set, ED and ES slices of the 70 training patients of the split, with the patient's "
        "diagnosis (Info.cfg Group) as the only label; crops centred on the field of view")
log = logging.getLogger("train_weak_acdc")

# The benchmark (benchmarks/weak_cam.py) reads SPEC, UNET, load_weak, load_network, motion_of, predict_heart and
# predict_heart_probabilities
# from this script; the recipe itself is cardiac_ai.weak.recipe.
pseudo_grid, motion_grid = cam_pseudo_label_grid, motion_pseudo_label_grid
__all__ = ["CLASSIFIER", "SPEC", "UNET", "load_network", "load_weak", "motion_of", "other_phase", "predict_heart",
           "predict_heart_probabilities"]


def stamp(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def load_weak(path: Path):
    return load_weak_slices(path, SPEC)


def load_network(run: Path, name: str, kwargs: dict):
    return load_trained_network(run, name, kwargs)


def progress(fraction: float, message: str) -> None:
    if message.startswith("Epoch") or "finished" in message:
        stamp(f"{fraction:.3f} {message}")


def acdc_refs(data: str, limit: int | None):
    """ED and ES of every patient of the split (the first ``limit`` patients of each part with --limit)."""
    split = load_split(SPLIT_FILE)
    refs = list_acdc(data, phases=("ED", "ES"))
    if not limit:
        return refs, split
    kept = []
    for part in ("train", "validation", "test"):
        part_refs = refs_in_part(refs, split, part)
        patients = sorted({r.patient_id for r in part_refs})[:limit]
        kept += [r for r in part_refs if r.patient_id in patients]
    return kept, split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--work", default="work_data/weak")
    parser.add_argument("--stage", default="all", choices=[*WEAK_STAGES, "all"])
    parser.add_argument("--epochs", type=int, default=30, help="classifier epochs")
    parser.add_argument("--seg-epochs", type=int, default=30, help="weak U-Net epochs")
    parser.add_argument("--self-epochs", type=int, help="epochs of the self-trained U-Net (default: --seg-epochs)")
    parser.add_argument("--limit", type=int, help="only the first N patients of each part (a check)")
    parser.add_argument("--model-version", default="1.0", help="version written into the model cards")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("cardiac_ai.training.engine").setLevel(logging.INFO)
    logging.getLogger("cardiac_ai.weak.recipe").setLevel(logging.INFO)
    work = Path(args.work)
    refs, split = acdc_refs(args.data, args.limit)
    split_summary = {"file": "Resources/Splits/acdc_cine_split.json", "train": list(split.train),
                     "validation": list(split.validation), "test": list(split.test)}
    recipe = WeakRecipe(epochs=args.epochs, seg_epochs=args.seg_epochs, self_training_epochs=args.self_epochs)
    stages = [args.stage] if args.stage != "all" else list(WEAK_STAGES)
    costs = {"prepare": 3.0, "classifier": float(args.epochs), "pseudo": 3.0, "weak_pseudo": float(args.seg_epochs),
             "weak_prior": float(args.seg_epochs), "weak_self": float(args.self_epochs or args.seg_epochs) + 1.0,
             "register": 0.5}  # rough, in epochs, for --progress-lines
    stage_progress = StageProgress({stage: costs[stage] for stage in stages}, enabled=args.progress_lines)
    for stage in stages:
        stamp(f"stage {stage}")
        # The settings are chosen on the validation patients' heart masks (selection "validation_truth"); no
        # training step reads a label map (see cardiac_ai.weak.recipe).
        result = train_weak_cam_models(
            refs, "group", work_dir=work, split=split, classes=ACDC_GROUPS, allow_missing_classes=bool(args.limit),
            recipe=recipe,
            modes=("pseudo_label", "cam_prior", "self_training"), selection="validation_truth", stages=[stage],
            register_to=work / "models", model_version=args.model_version, label_title="Diagnosis",
            training_data=DATA, split_summary=split_summary, license="CC BY-NC-SA 4.0 (ACDC data terms)",
            resume=True, device=args.device,
            progress=stage_progress.stage(stage, then=progress),
        )
        if stage == "classifier":
            stamp(f"classifier {result.classifier_metrics}")
        elif stage in ("weak_pseudo", "weak_prior", "weak_self"):
            stamp(f"weak U-Net {result.unet_metrics}")
        elif stage == "register":
            stamp(f"registered {result.registered_mode} into {work / 'models'}")
    stage_progress.finish()


if __name__ == "__main__":
    main()
