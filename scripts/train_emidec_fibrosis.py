"""Train the weakly supervised LGE fibrosis models on EMIDEC (Klein et al.), stage by stage, resumably.

Usage::

    python scripts/train_emidec_fibrosis.py --data ../shared/data/emidec-png --work work_data/fibrosis --stage all
    python scripts/train_emidec_fibrosis.py --stage myocardium --epochs-myocardium 60     # one stage
    cardiacai fibrosis CASE_FOLDER --out out --models-dir work_data/fibrosis/models         # use the models

Stages (each skips what already exists and resumes an interrupted training from its ``last.pt``):

=================  ==============================================================================================
split              Resources/Splits/emidec_split.json (EMIDEC ``val`` folder + 20 % of the P patients = test;
                   15 % of the rest = validation, stratified N/P; seed 0); copied to WORK/split.json
prepare            WORK/prepared/<part>_{weak,myocardium,fibrosis_truth}.npz: 128 x 128 central crops at the PNG's
                   own resolution, uint8. ``weak`` holds images + slice/stack labels only; ``myocardium`` the
                   myocardium labels (scar folded in: no fibrosis information); ``fibrosis_truth`` the pixel scar/MVO
                   labels, read only by ``pixel_unet`` and the benchmark
myocardium         U-Net (16, 32, 64, 128), Dice loss -> WORK/runs/myocardium; its predictions of every part
                   -> WORK/predicted/<part>_myocardium.npz
classifier_slice   fibrosis_cam_2d on (image, predicted myocardium), BCE on slice labels -> runs/classifier_slice;
                   inputs by ``classifier_inputs``: intensity relative to the slice's predicted myocardium, image
                   zeroed beyond --classifier-mask-dilation px of it, heart crop resampled to --classifier-crop px
classifier_stack   its 3x3x1 inflation, weighted BCE on patient N/P labels, one stack per batch, same inputs
pseudo             CAM -> pseudo-labels (section 3.3, PseudoLabelConfig defaults: w1 0, w2 1, theta_gamma 3, 5
                   iterations), restricted to the predicted myocardium; negatives empty -> WORK/pseudo/
weak_unet          U-Net on the pseudo-labels from the LGE image alone, slice- and stack-level -> runs/weak_unet_*
pixel_unet         comparison: U-Net on pixel scar/MVO labels with the predicted myocardium as 2nd channel
register           export float16 models with cards into --models-dir (default WORK/models): lge_myocardium,
                   lge_fibrosis_classifier, lge_fibrosis_stack_classifier, lge_fibrosis_weak,
                   lge_fibrosis_weak_stack, lge_fibrosis_pixel
=================  ==============================================================================================

Honesty: the classifiers, pseudo-labels and weak U-Nets read only ``<part>_weak.npz`` (images, slice and patient
labels) and the myocardium model's *predictions*; pixel fibrosis labels reach only ``pixel_unet`` and evaluation.

Time on CPU-2 (2 cores; 308 training slices of 128 x 128, 43 training patients), measured 2026-11-27: classifier_slice
30 epochs x ~3 s (8-64 channels on 96 px heart crops) = 1.6 min; classifier_stack 15 epochs = 1 min; pseudo 7 s;
weak_unet 2 x 40 epochs x ~2.8 s = 4 min; pixel_unet 120 x 2.8 s = 6 min; the myocardium U-Net is the pixel
U-Net's size.
A GPU (``--device cuda``) takes well under a minute per stage.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from cardiac_ai.datasets import load_split, save_split
from cardiac_ai.fibrosis.classifier_input import TRAINING_DEFAULTS, ClassifierInputSettings
from cardiac_ai.fibrosis.inputs import EMIDEC_NOMINAL_PIXEL_MM
from cardiac_ai.fibrosis.training import (
    FibrosisSlices,
    emidec_fibrosis_split,
    fibrosis_targets,
    load_arrays,
    make_pseudo_labels,
    myocardium_targets,
    predict_myocardium,
    prepare_emidec_stacks,
    save_arrays,
    slice_cams,
    stack_cams,
    train_fibrosis_unet,
    train_myocardium,
    train_slice_classifier,
    train_stack_classifier,
)
from cardiac_ai.labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, SCAR
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.progress import PROGRESS_LINES_HELP, StageProgress
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig

log = logging.getLogger("train_emidec_fibrosis")

REPO = Path(__file__).resolve().parents[1]
SPLIT_FILE = REPO / "Resources" / "Splits" / "emidec_split.json"
STAGES = ("split", "prepare", "myocardium", "classifier_slice", "classifier_stack", "pseudo", "weak_unet",
          "pixel_unet", "register")
PARTS = ("train", "validation", "test")
LEVELS = ("slice", "stack")
TRAINING_DATA = ("EMIDEC LGE (PNG export, 256 x 256, pixel size unknown; Lalande et al., Medical Image Analysis 79:"
                 "102428, 2022)")
LICENSE = "Trained on EMIDEC: research use under the EMIDEC data terms, cite Lalande et al. 2022"


def _unet_kwargs(args, in_channels: int, out_channels: int) -> dict:
    if args.tiny:
        return {"in_channels": in_channels, "out_channels": out_channels, "channels": [4, 8], "strides": [2],
                "num_res_units": 0}
    return {"in_channels": in_channels, "out_channels": out_channels, "channels": [16, 32, 64, 128],
            "strides": [2, 2, 2], "num_res_units": 1}


def _classifier_kwargs(args) -> dict:
    features = [4, 8, 8, 8] if args.tiny else args.classifier_features
    blocks = [1, 1, 1, 1] if args.tiny else [1, 1, 2, 2]
    kwargs = {"in_channels": 2, "out_channels": 1, "features": features, "blocks_per_stage": blocks, "mask_channel": 1}
    if args.classifier_top_fraction is not None:
        kwargs["top_fraction"] = args.classifier_top_fraction
    return kwargs


def _classifier_settings(args) -> ClassifierInputSettings:
    return ClassifierInputSettings(
        intensity=args.classifier_intensity,
        mask_dilation_px=None if args.classifier_mask_dilation < 0 else args.classifier_mask_dilation,
        heart_crop=args.classifier_crop or None,
    )


def _spec(args, channels: int) -> dict:
    return InputSpec(in_plane_spacing_mm=(EMIDEC_NOMINAL_PIXEL_MM, EMIDEC_NOMINAL_PIXEL_MM),
                     crop_size=(args.crop_size, args.crop_size), channels=channels).to_dict()


def _config(args, network: str, kwargs: dict, *, channels: int, epochs: int, metric: str, loss: str = "dice",
            batch_size: int | None = None, learning_rate: float = 1e-3, weight_decay: float = 1e-5) -> TrainingConfig:
    return TrainingConfig(
        network=network, network_kwargs=kwargs, input_spec=_spec(args, channels), epochs=epochs,
        batch_size=batch_size or args.batch_size, learning_rate=learning_rate, weight_decay=weight_decay, loss=loss,
        metric_name=metric, metric_mode="max", seed=args.seed, num_workers=args.num_workers,
    )


def _paths(work: Path) -> dict[str, Path]:
    return {"prepared": work / "prepared", "predicted": work / "predicted", "pseudo": work / "pseudo",
            "runs": work / "runs"}


def _weak(work: Path, part: str) -> FibrosisSlices:
    return FibrosisSlices.from_arrays(load_arrays(work / "prepared" / f"{part}_weak.npz"))


def _predicted_myocardium(work: Path, part: str) -> np.ndarray:
    return load_arrays(work / "predicted" / f"{part}_myocardium.npz")["myocardium"]


def _load_run(run_dir: Path):
    from cardiac_ai.models.networks import build_network
    from cardiac_ai.training.checkpoint import load_checkpoint_weights

    config = TrainingConfig.load(run_dir / "config.json")
    network = build_network(config.network, **config.network_kwargs)
    load_checkpoint_weights(network, run_dir / "best.pt")
    return network.eval()


def _limit(split, max_patients: int):
    """The first ``max_patients`` patients of each part, taking P and N alternately (for smoke runs)."""
    if max_patients <= 0:
        return split
    from cardiac_ai.datasets.splits import Split

    def pick(ids):
        p = [i for i in ids if split.groups.get(i) == "P"]
        n = [i for i in ids if split.groups.get(i) != "P"]
        chosen = []
        while len(chosen) < max_patients and (p or n):
            for pool in (p, n):
                if pool and len(chosen) < max_patients:
                    chosen.append(pool.pop(0))
        return tuple(sorted(chosen))

    return Split(pick(list(split.train)), pick(list(split.validation)), pick(list(split.test)), seed=split.seed,
                 groups=split.groups)


# -- stages ----------------------------------------------------------------------------------------------------------
def stage_split(args, work: Path):
    split_file = Path(args.split_file)
    if split_file.exists():
        split = load_split(split_file)
        log.info("Split %s exists (%d/%d/%d)", split_file, len(split.train), len(split.validation), len(split.test))
    else:
        split = emidec_fibrosis_split(args.data, seed=args.seed)
        save_split(split, split_file)
        log.info("Wrote %s", split_file)
    split = _limit(split, args.max_patients)
    save_split(split, work / "split.json")
    return split


def stage_prepare(args, work: Path, split, stage_progress: StageProgress) -> None:
    folder = _paths(work)["prepared"]
    spec = InputSpec.from_dict(_spec(args, 1))
    for number, part in enumerate(PARTS):
        names = [folder / f"{part}_{kind}.npz" for kind in ("weak", "myocardium", "fibrosis_truth")]
        ids = list(getattr(split, part))
        if all(n.exists() for n in names) or not ids:
            continue
        weak, truth = prepare_emidec_stacks(
            args.data, ids, spec=spec,
            progress=stage_progress.stage("prepare", part=(number / len(PARTS), (number + 1) / len(PARTS))),
        )
        save_arrays(names[0], weak.to_arrays())
        save_arrays(names[1], {"labels": myocardium_targets(truth)})
        save_arrays(names[2], {"labels": fibrosis_targets(truth)})
        log.info("Prepared %s: %d patients, %d slices (%d with fibrosis)", part, len(ids), len(weak),
                 int(weak.slice_labels.sum()))


def _parts_present(work: Path) -> list[str]:
    return [p for p in PARTS if (work / "prepared" / f"{p}_weak.npz").exists()]


def stage_myocardium(args, work: Path, stage_progress: StageProgress) -> None:
    prepared, runs = work / "prepared", work / "runs" / "myocardium"
    train, val = _weak(work, "train"), _weak(work, "validation")
    config = _config(args, "unet2d", _unet_kwargs(args, 1, 4), channels=1, epochs=args.epochs_myocardium,
                     metric="val_dice")
    _, network = train_myocardium(
        train.images, load_arrays(prepared / "train_myocardium.npz")["labels"],
        val.images, load_arrays(prepared / "validation_myocardium.npz")["labels"],
        config=config, out_dir=runs, augmentation=AugmentationConfig(), device=args.device,
        progress=stage_progress.stage("myocardium", part=(0.0, 0.95)),
    )
    for part in _parts_present(work):
        target = work / "predicted" / f"{part}_myocardium.npz"
        if not target.exists() or target.stat().st_mtime < (runs / "best.pt").stat().st_mtime:
            save_arrays(target, {"myocardium": predict_myocardium(network, _weak(work, part).images,
                                                                  device=args.device)})


def stage_classifier_slice(args, work: Path, stage_progress: StageProgress) -> None:
    config = _config(args, "fibrosis_cam_2d", _classifier_kwargs(args), channels=2, epochs=args.epochs_classifier,
                     metric="val_score", loss="bce", weight_decay=args.classifier_weight_decay)
    train_slice_classifier(
        _weak(work, "train"), _predicted_myocardium(work, "train"), _weak(work, "validation"),
        _predicted_myocardium(work, "validation"), config=config, out_dir=work / "runs" / "classifier_slice",
        augmentation=AugmentationConfig(), input_settings=_classifier_settings(args), device=args.device,
        progress=stage_progress.stage("classifier_slice"),
    )


def stage_classifier_stack(args, work: Path, stage_progress: StageProgress) -> None:
    config = _config(args, "fibrosis_cam_stack", _classifier_kwargs(args), channels=2, epochs=args.epochs_stack,
                     metric="val_score", loss="bce", batch_size=1, learning_rate=3e-4,
                     weight_decay=args.classifier_weight_decay)
    slice_run = work / "runs" / "classifier_slice"
    train_stack_classifier(
        _weak(work, "train"), _predicted_myocardium(work, "train"), _weak(work, "validation"),
        _predicted_myocardium(work, "validation"), config=config, out_dir=work / "runs" / "classifier_stack",
        initial_2d=_load_run(slice_run), augmentation=AugmentationConfig(),
        input_settings=ClassifierInputSettings.load(slice_run), device=args.device,
        progress=stage_progress.stage("classifier_stack"),
    )


def stage_pseudo(args, work: Path, stage_progress: StageProgress) -> None:
    for number, level in enumerate(LEVELS):
        report = stage_progress.stage("pseudo", part=(number / len(LEVELS), (number + 1) / len(LEVELS)))
        if report is not None:
            report(0.0, f"CAM pseudo-labels from the {level} classifier")
        run = work / "runs" / f"classifier_{level}"
        network = None
        for part in ("train", "validation"):
            target = work / "pseudo" / f"{level}_{part}.npz"
            if target.exists() and target.stat().st_mtime >= (run / "best.pt").stat().st_mtime:
                continue
            network = network or _load_run(run)
            settings = ClassifierInputSettings.load(run)
            data, myocardium = _weak(work, part), _predicted_myocardium(work, part)
            if level == "slice":
                cams = slice_cams(network, data.images, myocardium, input_settings=settings, device=args.device)
                positives = data.slice_labels
            else:
                cams = stack_cams(network, data, myocardium, input_settings=settings, device=args.device)
                positives = data.stack_labels
            pseudo = make_pseudo_labels(cams, data.images, positives, myocardium)
            save_arrays(target, {"cams": cams.astype(np.float16), "pseudo": pseudo})
            n_positive, n_marked = int(np.asarray(positives).sum()), int(pseudo.any(axis=(1, 2)).sum())
            log.info("Pseudo-labels %s/%s: %d slices, %d positive, %d non-empty", level, part, len(pseudo),
                     n_positive, n_marked)
            if part == "train" and n_positive and not n_marked:
                log.warning("No %s-level pseudo-label marks any scar although %d training slices are positive: the "
                            "weak U-Net would learn to draw nothing. Check the %s classifier's CAMs (more epochs, "
                            "or the classifier input options) before training it.", level, n_positive, level)


def stage_weak_unet(args, work: Path, stage_progress: StageProgress) -> None:
    for number, level in enumerate(LEVELS):
        train, val = _weak(work, "train"), _weak(work, "validation")
        config = _config(args, "unet2d", _unet_kwargs(args, 1, 2), channels=1, epochs=args.epochs_unet,
                         metric="val_dice")
        train_fibrosis_unet(
            train.images, load_arrays(work / "pseudo" / f"{level}_train.npz")["pseudo"],
            val.images, load_arrays(work / "pseudo" / f"{level}_validation.npz")["pseudo"],
            config=config, out_dir=work / "runs" / f"weak_unet_{level}", augmentation=AugmentationConfig(),
            device=args.device,
            progress=stage_progress.stage("weak_unet", part=(number / len(LEVELS), (number + 1) / len(LEVELS))),
        )


def stage_pixel_unet(args, work: Path, stage_progress: StageProgress) -> None:
    prepared = work / "prepared"
    train, val = _weak(work, "train"), _weak(work, "validation")
    config = _config(args, "unet2d", _unet_kwargs(args, 2, 3), channels=2, epochs=args.epochs_unet,
                     metric="val_dice")
    train_fibrosis_unet(
        train.images, load_arrays(prepared / "train_fibrosis_truth.npz")["labels"],
        val.images, load_arrays(prepared / "validation_fibrosis_truth.npz")["labels"],
        config=config, out_dir=work / "runs" / "pixel_unet", train_myocardium=_predicted_myocardium(work, "train"),
        val_myocardium=_predicted_myocardium(work, "validation"), augmentation=AugmentationConfig(),
        device=args.device, progress=stage_progress.stage("pixel_unet"),
    )


def stage_register(args, work: Path, split) -> list[Path]:
    from cardiac_ai.training.checkpoint import export_best_model

    models_dir = Path(args.models_dir) if args.models_dir else work / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    split_file = Path(args.split_file).resolve()
    split_info = {"file": str(split_file.relative_to(REPO) if split_file.is_relative_to(REPO) else split_file),
                  "train": list(split.train),
                  "validation": list(split.validation), "test": list(split.test)}
    myo, scar, mvo = LABELS[LV_MYOCARDIUM].name, LABELS[SCAR].name, LABELS[MVO].name
    exports = [
        ("myocardium", "lge_myocardium", "segmentation",
         {0: "background", LV_MYOCARDIUM: myo, LV_BLOOD_POOL: LABELS[LV_BLOOD_POOL].name},
         "2D U-Net (Dice loss) on EMIDEC pixel myocardium labels; scar and MVO count as myocardium."),
        ("classifier_slice", "lge_fibrosis_classifier", "classification", {0: "fibrosis"},
         "Slice-level fibrosis classifier (fibrosis_cam_2d: dilated residual net, non-local block, CAM head, "
         "myocardium-restricted pooling) on (LGE, predicted myocardium), made as the card's "
         "inference.classifier_input says (cardiac_ai.fibrosis.classifier_input); BCE on slice labels only."),
        ("classifier_stack", "lge_fibrosis_stack_classifier", "classification", {0: "fibrosis"},
         "Stack-level (patient) fibrosis classifier: the slice model inflated to 3x3x1 kernels, weighted BCE on "
         "patient N/P labels only. Input (batch, 2, j, i, k), slice axis last."),
        ("weak_unet_slice", "lge_fibrosis_weak", "segmentation", {0: "background", 1: scar},
         "2D U-Net on the LGE image alone, trained on CAM pseudo-labels from slice-level labels (no pixel scar "
         "labels)."),
        ("weak_unet_stack", "lge_fibrosis_weak_stack", "segmentation", {0: "background", 1: scar},
         "2D U-Net on the LGE image alone, trained on CAM pseudo-labels from stack-level (patient) labels."),
        ("pixel_unet", "lge_fibrosis_pixel", "segmentation", {0: "background", 1: scar, 2: mvo},
         "Comparison model: 2D U-Net on pixel scar/MVO labels, inputs LGE + predicted myocardium."),
    ]
    written = []
    for run_name, name, task, label_map, description in exports:
        run = work / "runs" / run_name
        if not (run / "best.pt").exists():
            log.warning("No trained %s (%s); not registering %s", run_name, run / "best.pt", name)
            continue
        card = models_dir / f"{name}-{args.version}.json"
        if card.exists() and card.stat().st_mtime >= (run / "best.pt").stat().st_mtime:
            written.append(card)
            continue
        inference = ({"classifier_input": ClassifierInputSettings.load(run).to_dict()}
                     if run_name.startswith("classifier_") else None)
        written.append(export_best_model(
            run, models_dir, name=name, version=args.version, task=task, label_map=label_map,
            training_data=TRAINING_DATA, split=split_info, license=LICENSE, inference=inference,
            description=description + f" Pixel grid: EMIDEC PNG pixels (nominal {EMIDEC_NOMINAL_PIXEL_MM} mm), "
                                      f"{args.crop_size} x {args.crop_size} crop at the image centre.",
        ))
        log.info("Registered %s", written[-1])
    return written


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "emidec-png"))
    parser.add_argument("--work", default=str(REPO / "work_data" / "fibrosis"))
    parser.add_argument("--stage", nargs="+", default=["all"], choices=[*STAGES, "all"])
    parser.add_argument("--split-file", default=str(SPLIT_FILE), help="split JSON (written by the split stage)")
    parser.add_argument("--models-dir", help="where register writes the models (default WORK/models)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs-myocardium", type=int, default=40)
    parser.add_argument("--epochs-classifier", type=int, default=30)
    parser.add_argument("--epochs-stack", type=int, default=15)
    parser.add_argument("--epochs-unet", type=int, default=40, help="epochs of each weak U-Net and the pixel U-Net")
    parser.add_argument("--classifier-intensity", default=TRAINING_DEFAULTS.intensity,
                        choices=["myocardium_relative", "image"],
                        help="classifier intensity channel (cardiac_ai.fibrosis.classifier_input)")
    parser.add_argument("--classifier-mask-dilation", type=int, default=TRAINING_DEFAULTS.mask_dilation_px,
                        metavar="PX",
                        help="zero the classifier image beyond this many pixels of the predicted myocardium (-1: off)")
    parser.add_argument("--classifier-crop", type=int, default=TRAINING_DEFAULTS.heart_crop, metavar="PX",
                        help="heart-centred classifier input of this many pixels (0: the whole 128 px grid)")
    parser.add_argument("--classifier-features", type=int, nargs=4, default=[8, 16, 32, 64], metavar="C",
                        help="channels of the classifier's four residual stages")
    parser.add_argument("--classifier-weight-decay", type=float, default=1e-3, metavar="WD")
    parser.add_argument("--classifier-top-fraction", type=float, default=None, metavar="F",
                        help="pool the CAM as the mean of its highest F of the myocardium (top-k pooling) instead of "
                             "the paper's mean over the whole myocardium (default: the mean)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader processes (augmentation on the CPU)")
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="1.0", help="version of the registered models")
    parser.add_argument("--max-patients", type=int, default=0, help="patients per part (smoke runs; 0 = all)")
    parser.add_argument("--tiny", action="store_true", help="tiny networks (smoke runs and tests)")
    parser.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stages = STAGES if "all" in args.stage else tuple(s for s in STAGES if s in args.stage)
    stage_progress = StageProgress(stage_weights(args, stages), enabled=args.progress_lines)
    stage_progress.stage("split")
    split = stage_split(args, work)
    timings = {}
    for stage in stages:
        if stage == "split":
            continue
        started = time.perf_counter()
        log.info("Stage %s", stage)
        stage_progress.stage(stage)
        if stage == "prepare":
            stage_prepare(args, work, split, stage_progress)
        elif stage == "register":
            stage_register(args, work, split)
        else:
            globals()[f"stage_{stage}"](args, work, stage_progress)
        timings[stage] = round(time.perf_counter() - started, 1)
        log.info("Stage %s done in %.1f s", stage, timings[stage])
    (work / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    stage_progress.finish()
    return 0


def stage_weights(args, stages) -> dict[str, float]:
    """Rough cost of each stage that runs, in minutes on a 2-core CPU (the module docstring), for the progress
    lines: the split first (always read or made), then ``stages`` in order."""
    minutes = {
        "split": 0.1, "prepare": 1.0, "myocardium": 0.05 * args.epochs_myocardium,
        "classifier_slice": 0.05 * args.epochs_classifier, "classifier_stack": 0.07 * args.epochs_stack,
        "pseudo": 0.2, "weak_unet": 2 * 0.05 * args.epochs_unet, "pixel_unet": 0.05 * args.epochs_unet,
        "register": 0.1,
    }
    return {"split": minutes["split"], **{stage: minutes[stage] for stage in stages if stage != "split"}}


if __name__ == "__main__":
    sys.exit(main())
