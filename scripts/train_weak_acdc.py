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
``register``    exports ``weak_cam_classifier`` and ``weak_heart_unet`` (the better weak U-Net on validation Dice)
                with model cards.

The splits are the cine models' (``Resources/Splits/acdc_cine_split.json``): 70 training, 10 validation, 20 test.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part
from cardiac_ai.datasets.acdc import ACDC_GROUPS
from cardiac_ai.metrics.overlap import jaccard
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.slices import PreparedSlices
from cardiac_ai.weak.pseudo_labels import PseudoLabelConfig, motion_prior, pseudo_labels
from cardiac_ai.weak.training import (
    WeakSlices,
    prepare_weak_slices,
    scale_cams,
    slice_cams,
    train_weak_classifier,
    train_weak_segmentation,
)

SPLIT_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Splits" / "acdc_cine_split.json"
SPEC = InputSpec(in_plane_spacing_mm=(2.0, 2.0), crop_size=(96, 96))
PARTS = ("train", "validation", "test")
CLASSIFIER = ("cam_classifier_2d", {"in_channels": 1, "out_channels": len(ACDC_GROUPS), "mask_channel": None,
                                    "features": (16, 32, 64, 128)})
UNET = ("unet2d", {"out_channels": 2, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2),
                   "num_res_units": 1})
CAM_METHODS = {"model": None, "gradcam": "attention", "gradcampp": "attention"}
CLASSIFIER_AUGMENTATION = AugmentationConfig(translate_prob=0.5, translate_range_px=8.0)
log = logging.getLogger("train_weak_acdc")


def stamp(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def save_weak(weak: WeakSlices, path: Path) -> None:
    images = np.clip(np.rint(weak.slices.images * 255.0), 0, 255).astype(np.uint8)  # percentile-normalised [0, 1]
    np.savez_compressed(path, images=images, targets=weak.targets, case_ids=weak.slices.case_ids,
                        slice_indices=weak.slices.slice_indices, classes=np.array(weak.classes))


def load_weak(path: Path) -> WeakSlices:
    data = np.load(path)
    n = len(data["targets"])
    slices = PreparedSlices(data["images"].astype(np.float32) / 255.0, None, data["case_ids"], data["slice_indices"],
                            np.full(n, np.nan, np.float32), np.zeros(n, np.int8), SPEC)
    return WeakSlices(slices, data["targets"], tuple(str(c) for c in data["classes"]))


def prepare(args, work: Path) -> None:
    split = load_split(SPLIT_FILE)
    refs = list_acdc(args.data, phases=("ED", "ES"))
    for part in PARTS:
        if (work / f"weak_{part}.npz").exists():
            continue
        part_refs = refs_in_part(refs, split, part)
        if args.limit:
            patients = sorted({r.patient_id for r in part_refs})[: args.limit]
            part_refs = [r for r in part_refs if r.patient_id in patients]
        weak, truth = prepare_weak_slices([load_case(r) for r in part_refs], label_name="group",
                                          classes=ACDC_GROUPS, spec=SPEC)
        save_weak(weak, work / f"weak_{part}.npz")
        np.savez_compressed(work / f"truth_{part}.npz", heart=(truth > 0).astype(np.uint8), labels=truth)
        stamp(f"prepared {part}: {len(weak)} slices of {len(set(weak.slices.case_ids))} volumes")


def classifier_config(epochs: int) -> TrainingConfig:
    return TrainingConfig(network=CLASSIFIER[0], network_kwargs=CLASSIFIER[1], input_spec=SPEC.to_dict(),
                          epochs=epochs, batch_size=32, learning_rate=1e-3, loss="ce",
                          metric_name="val_balanced_accuracy", metric_mode="max", seed=0)


def unet_config(epochs: int) -> TrainingConfig:
    return TrainingConfig(network=UNET[0], network_kwargs=UNET[1], input_spec=SPEC.to_dict(), epochs=epochs,
                          batch_size=32, learning_rate=2e-3, loss="dice_ce", metric_name="val_loss",
                          metric_mode="min", seed=0)


def progress(fraction: float, message: str) -> None:
    if message.startswith("Epoch") or "finished" in message:
        stamp(f"{fraction:.3f} {message}")


def load_network(run: Path, name: str, kwargs: dict):
    from cardiac_ai.models.networks import build_network
    from cardiac_ai.training.checkpoint import load_checkpoint_weights

    network = build_network(name, **kwargs)
    load_checkpoint_weights(network, run / "best.pt")
    return network.eval()


def mean_jaccard(masks: np.ndarray, truth: np.ndarray) -> float:
    """Mean per-slice Jaccard over slices whose ground truth holds heart (the paper's per-slice average)."""
    scores = [jaccard(m > 0, t > 0) for m, t in zip(masks, truth) if t.any()]
    return float(np.mean(scores)) if scores else float("nan")


def pseudo_grid() -> dict[str, PseudoLabelConfig]:
    """Pseudo-label settings compared on the validation patients. The paper's intensity multi-Otsu is left out:
    it drops dark pixels, which in cine are the myocardium (part of the whole-heart target)."""
    return {
        "paper steps without intensity Otsu (ReLU, [0.5, 1], CRF)": PseudoLabelConfig(otsu_classes=None),
        "CAM multi-Otsu + CRF": PseudoLabelConfig(otsu_source="cam"),
        "CAM multi-Otsu, no CRF": PseudoLabelConfig(otsu_source="cam", use_crf=False),
        "floor 0.3 + CRF": PseudoLabelConfig(otsu_classes=None, min_fraction=0.3),
        "floor 0.5 + CRF": PseudoLabelConfig(otsu_classes=None, min_fraction=0.5),
        "floor 0.3 + CAM multi-Otsu + CRF": PseudoLabelConfig(otsu_source="cam", min_fraction=0.3),
    }


def motion_grid() -> dict[str, PseudoLabelConfig]:
    """Pseudo-label settings for the ED-ES motion prior (see :func:`cardiac_ai.weak.motion_prior`)."""
    return {
        "motion, 2-class Otsu + CRF, compact": PseudoLabelConfig(otsu_source="cam", otsu_classes=2, shape="compact"),
        "motion, 3-class Otsu + CRF, compact": PseudoLabelConfig(otsu_source="cam", otsu_classes=3, shape="compact"),
        "motion, 3-class Otsu + CRF": PseudoLabelConfig(otsu_source="cam", otsu_classes=3),
    }


def other_phase(weak: WeakSlices) -> np.ndarray:
    """Index of the same slice at the other phase (ED <-> ES) of the same patient, for every slice."""
    where = {(c, int(k)): i for i, (c, k) in enumerate(zip(weak.slices.case_ids, weak.slices.slice_indices))}
    swap = {"ED": "ES", "ES": "ED"}
    pairs = [where.get((c[:-2] + swap[c[-2:]], int(k)), -1)
             for c, k in zip(weak.slices.case_ids, weak.slices.slice_indices)]
    if min(pairs) < 0:
        raise SystemExit("Every slice needs its other phase (prepare ED and ES frames of every patient).")
    return np.asarray(pairs)


def motion_of(weak: WeakSlices) -> np.ndarray:
    return motion_prior(weak.slices.images, weak.slices.images[other_phase(weak)], sigma_px=3.0)


def pseudo(args, work: Path) -> None:
    """CAM and motion pseudo-labels; settings chosen by the Jaccard on the VALIDATION patients' heart masks."""
    if (work / "pseudo_choice.json").exists():
        return
    classifier = load_network(work / "run_classifier", *CLASSIFIER)
    val = load_weak(work / "weak_validation.npz")
    val_truth = np.load(work / "truth_validation.npz")["heart"]
    everything = np.ones(len(val), bool)
    results, val_cams = [], {}
    for method, layer in CAM_METHODS.items():
        val_cams[method] = slice_cams(classifier, val.slices.images, method=method, target_layer=layer,
                                      class_index=val.targets.tolist(), device=args.device)
        for name, config in pseudo_grid().items():
            masks = pseudo_labels(val_cams[method], val.slices.images, everything, config=config)
            results.append({"prior": "cam", "method": method, "pseudo_label": name,
                            "val_jaccard": mean_jaccard(masks, val_truth)})
            stamp(f"{method:10s} {name:60s} validation Jaccard {results[-1]['val_jaccard']:.3f}")
    val_motion = motion_of(val)
    for name, config in motion_grid().items():
        masks = pseudo_labels(val_motion, val.slices.images, everything, config=config)
        results.append({"prior": "motion", "method": "ED-ES motion", "pseudo_label": name,
                        "val_jaccard": mean_jaccard(masks, val_truth)})
        stamp(f"{'motion':10s} {name:60s} validation Jaccard {results[-1]['val_jaccard']:.3f}")
    best_cam = max((r for r in results if r["prior"] == "cam"), key=lambda r: r["val_jaccard"])
    best = max(results, key=lambda r: r["val_jaccard"])
    stamp(f"best CAM pseudo-labels: {best_cam}; used for training: {best}")
    cam_config = pseudo_grid()[best_cam["pseudo_label"]]
    config = cam_config if best["prior"] == "cam" else motion_grid()[best["pseudo_label"]]
    layer = CAM_METHODS[best_cam["method"]]
    for part in ("train", "validation"):
        weak = load_weak(work / f"weak_{part}.npz")
        cams = val_cams[best_cam["method"]] if part == "validation" else slice_cams(
            classifier, weak.slices.images, method=best_cam["method"], target_layer=layer,
            class_index=weak.targets.tolist(), device=args.device)
        prior = cams if best["prior"] == "cam" else motion_of(weak)
        masks = pseudo_labels(prior, weak.slices.images, np.ones(len(weak), bool), config=config)
        np.savez_compressed(work / f"pseudo_{part}.npz", cams=scale_cams(cams).astype(np.float16),
                            masks=np.asarray(masks, np.uint8))
    (work / "pseudo_choice.json").write_text(json.dumps(
        {"chosen": best, "chosen_cam": best_cam, "grid": results, "config": dataclasses.asdict(config),
         "cam_config": dataclasses.asdict(cam_config)}, indent=2))


def weak_unet(args, work: Path, mode: str) -> None:
    run = work / f"run_weak_{mode}"
    train, val = load_weak(work / "weak_train.npz"), load_weak(work / "weak_validation.npz")
    train_p, val_p = np.load(work / "pseudo_train.npz"), np.load(work / "pseudo_validation.npz")
    _, _, metrics = train_weak_segmentation(
        train, train_p["cams"].astype(np.float32), train_p["masks"], val, val_p["cams"].astype(np.float32),
        val_p["masks"], mode=mode, config=unet_config(args.seg_epochs), out_dir=run,
        augmentation=CLASSIFIER_AUGMENTATION, device=args.device, progress=progress,
        resume=(run / "last.pt").exists(),
    )
    stamp(f"weak U-Net ({mode}) {metrics}")


def predict_heart(network, images: np.ndarray, device: str) -> np.ndarray:
    import torch

    from cardiac_ai.device import resolve_device

    target = resolve_device(device)
    network = network.to(target)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 64):
            batch = torch.from_numpy(images[start:start + 64, None].astype(np.float32)).to(target)
            out.append(torch.argmax(network(batch), dim=1).cpu().numpy().astype(np.uint8))
    return np.concatenate(out)


def register(args, work: Path) -> None:
    from cardiac_ai.metrics.overlap import dice
    from cardiac_ai.training.checkpoint import export_best_model

    split = load_split(SPLIT_FILE)
    split_summary = {"file": "Resources/Splits/acdc_cine_split.json", "train": list(split.train),
                     "validation": list(split.validation), "test": list(split.test)}
    val = load_weak(work / "weak_validation.npz")
    truth = np.load(work / "truth_validation.npz")["heart"]
    scores = {}
    for mode in ("pseudo_label", "cam_prior"):
        run = work / f"run_weak_{mode}"
        if (run / "best.pt").exists():
            predicted = predict_heart(load_network(run, *UNET), val.slices.images, args.device)
            scores[mode] = float(np.mean([dice(p > 0, t > 0) for p, t in zip(predicted, truth) if t.any()]))
    stamp(f"validation whole-heart Dice per weak U-Net: {scores}")
    best_mode = max(scores, key=scores.get)
    stored = json.loads((work / "pseudo_choice.json").read_text())
    choice, cam_choice = stored["chosen"], stored["chosen_cam"]
    inference = {"cam_method": cam_choice["method"],
                 "cam_target_layer": CAM_METHODS[cam_choice["method"]] or "attention",
                 "pseudo_label_config": stored["cam_config"]}
    data = ("ACDC training set, ED and ES slices of the 70 training patients of the split, with the patient's "
            "diagnosis (Info.cfg Group) as the only label; crops centred on the field of view")
    export_best_model(
        work / "run_classifier", work / "models", name="weak_cam_classifier", version="1.0", task="classification",
        label_map={i: g for i, g in enumerate(ACDC_GROUPS)}, training_data=data, split=split_summary,
        description=("Diagnosis classifier (NOR, MINF, DCM, HCM, RV) per short-axis slice with a CAM head "
                     "(dilated residual network, non-local block); its class activation maps localise the heart. "
                     f"CAM method chosen on validation: {cam_choice['method']}, pseudo-labels: "
                     f"{cam_choice['pseudo_label']}."),
        license="CC BY-NC-SA 4.0 (ACDC data terms)", inference=inference,
    )
    export_best_model(
        work / f"run_weak_{best_mode}", work / "models", name="weak_heart_unet", version="1.0", task="segmentation",
        label_map={0: "background", 1: "heart"}, training_data=data + "; targets: CAM pseudo-labels, no pixel label",
        split=split_summary,
        description=(f"Whole-heart U-Net trained without pixel labels (mode {best_mode}: "
                     + (f"DenseCRF pseudo-labels from the {choice['prior']} prior ({choice['pseudo_label']})"
                        if best_mode == "pseudo_label" else "soft CAM prior")
                     + f"); validation whole-heart Dice {scores[best_mode]:.3f}."),
        license="CC BY-NC-SA 4.0 (ACDC data terms)",
    )
    stamp(f"registered into {work / 'models'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--work", default="work_data/weak")
    parser.add_argument("--stage", default="all",
                        choices=["prepare", "classifier", "pseudo", "weak_pseudo", "weak_prior", "register", "all"])
    parser.add_argument("--epochs", type=int, default=30, help="classifier epochs")
    parser.add_argument("--seg-epochs", type=int, default=30, help="weak U-Net epochs")
    parser.add_argument("--limit", type=int, help="only the first N patients of each part (a check)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("cardiac_ai.training.engine").setLevel(logging.INFO)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = [args.stage] if args.stage != "all" else ["prepare", "classifier", "pseudo", "weak_pseudo",
                                                        "weak_prior", "register"]
    for stage in stages:
        stamp(f"stage {stage}")
        if stage == "prepare":
            prepare(args, work)
        elif stage == "classifier":
            run = work / "run_classifier"
            _, _, metrics = train_weak_classifier(
                load_weak(work / "weak_train.npz"), load_weak(work / "weak_validation.npz"),
                config=classifier_config(args.epochs), out_dir=run, augmentation=CLASSIFIER_AUGMENTATION,
                device=args.device, progress=progress, resume=(run / "last.pt").exists(),
            )
            stamp(f"classifier {metrics}")
        elif stage == "pseudo":
            pseudo(args, work)
        elif stage == "weak_pseudo":
            weak_unet(args, work, "pseudo_label")
        elif stage == "weak_prior":
            weak_unet(args, work, "cam_prior")
        elif stage == "register":
            register(args, work)


if __name__ == "__main__":
    main()
