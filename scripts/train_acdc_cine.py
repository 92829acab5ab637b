"""Train the cine models on ACDC (localiser + baseline U-Net) from compact preprocessed crops.

Usage: python scripts/train_acdc_cine.py --data ../shared/data/acdc/training --work work_data/cine [--stage all]
Runs on the CPU or a GPU (the same script); writes prepared .npz crops, run folders and registered models.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np

from cardiac_ai.datasets import (
    groups_from_refs, list_acdc, load_case, load_split, make_patient_split, refs_in_part, save_split,
)
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.progress import PROGRESS_LINES_HELP, StageProgress
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.segmentation import train_segmentation_prepared
from cardiac_ai.training.slices import load_prepared, prepare_slices, save_prepared

LOCALISER_SPEC = InputSpec(in_plane_spacing_mm=(3.5, 3.5), crop_size=(128, 128))
CINE_SPEC = InputSpec(in_plane_spacing_mm=(1.5, 1.5), crop_size=(128, 128))


CLASSIFIER_SPEC = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(64, 64))
CINE_AUGMENTATION = AugmentationConfig(translate_prob=0.7, translate_range_px=16.0)


SPLIT_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Splits" / "acdc_cine_split.json"


def acdc_cine_split(refs):
    """70 train / 10 validation (epoch selection) / 20 test (reported only) patients, 4 test patients per group."""
    if SPLIT_FILE.exists():
        return load_split(SPLIT_FILE)
    patients = sorted({r.patient_id for r in refs})
    split = make_patient_split(patients, groups=groups_from_refs(refs), validation_fraction=0.1,
                               test_fraction=0.2, seed=0)
    save_split(split, SPLIT_FILE)
    return split


def baseline_config(epochs: int, learning_rate: float = 2e-3, spec: InputSpec | None = None) -> TrainingConfig:
    spec = spec or CINE_SPEC
    return TrainingConfig(
        network="unet2d",
        network_kwargs={"in_channels": spec.channels, "out_channels": 4, "channels": (16, 32, 64, 128, 256),
                        "strides": (2, 2, 2, 2), "num_res_units": 2},
        input_spec=spec.to_dict(), epochs=epochs, batch_size=16, learning_rate=learning_rate,
        metric_name="val_dice", metric_mode="max", seed=0,
    )


def prepared(work: Path, name: str, cases, spec, crop_center):
    path = work / f"{name}.npz"
    if path.exists():
        return load_prepared(path)
    slices = prepare_slices(cases, spec, crop_center=crop_center)
    save_prepared(slices, path)
    return load_prepared(path)  # train on exactly what a GPU run would read


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--work", default="work_data/cine")
    parser.add_argument("--stage", default="all",
                        choices=["prepare", "import-gpu", "import-folds", "localiser", "baseline", "sampler",
                                 "classifier", "regions", "register", "all"])
    parser.add_argument("--epochs", type=int, default=80, help="epochs of the baseline and the sampler variant")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--version", default="1.0", help="version of the registered models (stages register, import-gpu)")
    parser.add_argument("--gpu-results", help="folder of train_cine_gpu.py's .pt files (stages import-gpu, "
                                              "import-folds)")
    parser.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    parser.add_argument("--spacing-mm", type=float, default=1.5,
                        help="in-plane spacing of the segmentation crops (prepare; the localiser and classifier "
                             "crops keep theirs)")
    parser.add_argument("--crop-px", type=int, default=128, help="segmentation crop size in pixels (prepare)")
    parser.add_argument("--slice-context", type=int, default=0,
                        help="baseline, sampler and region models see this many neighbouring slices on each side "
                             "as extra channels (2.5D)")
    parser.add_argument("--init-from", metavar="FOLDER",
                        help="prepare: also write WORK/init.pt, the cine_baseline of this registry folder as the "
                             "start of train_cine_gpu.py --init-weights (a fine-tune, e.g. at another spacing)")
    args = parser.parse_args()
    global CINE_SPEC
    CINE_SPEC = InputSpec(in_plane_spacing_mm=(args.spacing_mm, args.spacing_mm), crop_size=(args.crop_px,) * 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    stage_progress = StageProgress(stage_weights(args), enabled=args.progress_lines)
    stage_progress.stage("prepare")

    refs = list_acdc(args.data)
    split = acdc_cine_split(refs)
    save_split(split, work / "split.json")
    names = ["localiser_train", "localiser_val", "cine_train", "cine_val", "classifier_train", "classifier_val"]
    if not all((work / f"{n}.npz").exists() for n in names):
        train_cases = [load_case(r) for r in refs_in_part(refs, split, "train")]
        val_cases = [load_case(r) for r in refs_in_part(refs, split, "validation")]
    else:
        train_cases = val_cases = []
    loc_train = prepared(work, "localiser_train", train_cases, LOCALISER_SPEC, "image_center")
    loc_val = prepared(work, "localiser_val", val_cases, LOCALISER_SPEC, "image_center")
    cine_train = prepared(work, "cine_train", train_cases, CINE_SPEC, "labels")
    cine_val = prepared(work, "cine_val", val_cases, CINE_SPEC, "labels")
    cls_train = prepared(work, "classifier_train", train_cases, CLASSIFIER_SPEC, "labels")
    cls_val = prepared(work, "classifier_val", val_cases, CLASSIFIER_SPEC, "labels")
    print({n: len(s) for n, s in zip(names, [loc_train, loc_val, cine_train, cine_val, cls_train, cls_val])},
          flush=True)
    if args.stage == "prepare":
        write_sampling_weights(work, cine_train)
        if args.init_from:
            from cardiac_ai.training.checkpoint import registry_model_checkpoint

            registry_model_checkpoint(args.init_from, "cine_baseline", work / "init.pt")
        stage_progress.finish()
        return
    if args.stage == "import-gpu":
        stage_progress.stage("import-gpu")
        import_gpu_results(Path(args.gpu_results), work)
        register(work, split, args.version)
        stage_progress.finish()
        return
    if args.stage == "import-folds":
        stage_progress.stage("import-gpu")
        import_fold_results(Path(args.gpu_results), work, split, args.version)
        stage_progress.finish()
        return

    if args.slice_context:  # before any subset: a region's edge slices keep their neighbours
        cine_train, cine_val = (part.with_slice_context(args.slice_context) for part in (cine_train, cine_val))

    def progress(fraction, message):
        now = time.strftime("%H:%M:%S")
        if message.startswith("Epoch") or "finished" in message:
            print(f"{now} {fraction:.3f} {message}", flush=True)

    if args.stage in ("localiser", "all"):
        config = TrainingConfig(
            network="unet2d",
            network_kwargs={"out_channels": 4, "channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1},
            input_spec=LOCALISER_SPEC.to_dict(), epochs=30, batch_size=16,
            learning_rate=2e-3, metric_name="val_dice", metric_mode="max", seed=0,
        )
        result, _, metrics = train_segmentation_prepared(
            loc_train, loc_val, config=config, out_dir=work / "run_localiser", device=args.device,
            augmentation=AugmentationConfig(translate_prob=0.5, translate_range_px=10.0),
            progress=stage_progress.stage("localiser", then=progress),
            resume=(work / "run_localiser" / "last.pt").exists(),
        )
        print("localiser", metrics, flush=True)

    if args.stage in ("baseline", "all"):
        result, _, metrics = train_segmentation_prepared(
            cine_train, cine_val, config=baseline_config(args.epochs, spec=cine_train.spec),
            out_dir=work / "run_baseline",
            device=args.device, augmentation=CINE_AUGMENTATION,
            progress=stage_progress.stage("baseline", then=progress),
            resume=(work / "run_baseline" / "last.pt").exists(),
        )
        print("baseline", metrics, flush=True)

    if args.stage in ("sampler", "all"):
        config = dataclasses.replace(baseline_config(args.epochs, spec=cine_train.spec), position_sampling_ratio=20.0)
        result, _, metrics = train_segmentation_prepared(
            cine_train, cine_val, config=config, out_dir=work / "run_sampler", device=args.device,
            augmentation=CINE_AUGMENTATION, progress=stage_progress.stage("sampler", then=progress),
            resume=(work / "run_sampler" / "last.pt").exists(),
        )
        print("sampler", metrics, flush=True)

    if args.stage in ("classifier", "all"):
        from cardiac_ai.training.classification import train_classifier_prepared

        config = TrainingConfig(
            network="densenet121_2d", network_kwargs={"in_channels": 1, "out_channels": 4},
            input_spec=CLASSIFIER_SPEC.to_dict(), epochs=40, batch_size=32, learning_rate=5e-4, loss="ce",
            metric_name="val_balanced_accuracy", metric_mode="max", seed=0,
        )
        result, _, metrics = train_classifier_prepared(
            cls_train, cls_val, train_targets=cls_train.regions, val_targets=cls_val.regions, n_classes=4,
            config=config, out_dir=work / "run_classifier", device=args.device,
            augmentation=AugmentationConfig(translate_prob=0.5, translate_range_px=6.0),
            progress=stage_progress.stage("classifier", then=progress),
            resume=(work / "run_classifier" / "last.pt").exists(),
        )
        print("classifier", metrics, flush=True)

    if args.stage in ("regions", "all"):
        for region, name, epochs in ((1, "base", 40), (2, "middle", 15), (3, "apex", 40)):
            config = baseline_config(epochs, learning_rate=5e-4, spec=cine_train.spec)
            result, _, metrics = train_segmentation_prepared(
                cine_train.subset(cine_train.regions == region), cine_val.subset(cine_val.regions == region),
                config=config, out_dir=work / f"run_region_{name}", device=args.device,
                augmentation=CINE_AUGMENTATION,
                progress=stage_progress.stage("regions", then=progress, part=REGION_PARTS[name]),
                initial_weights=work / "run_baseline" / "best.pt",
                resume=(work / f"run_region_{name}" / "last.pt").exists(),
            )
            print(f"region {name}", metrics, flush=True)

    if args.stage in ("register", "all"):
        stage_progress.stage("register")
        register(work, split, args.version)
    stage_progress.finish()


#: Stages after "prepare" and their rough cost in baseline epochs (the regions train on subsets: base 40 epochs on
#: about a quarter of the slices, middle 15 on a half, apex 40 on a quarter), for --progress-lines.
TRAINING_STAGE_COSTS = {"localiser": 15.0, "baseline": None, "sampler": None, "classifier": 20.0, "regions": 27.5,
                        "register": 0.5}
REGION_PARTS = {"base": (0.0, 10 / 27.5), "middle": (10 / 27.5, 17.5 / 27.5), "apex": (17.5 / 27.5, 1.0)}


def stage_weights(args) -> dict[str, float]:
    """The stages this run does, in order, with their rough cost in baseline epochs ("prepare" always runs)."""
    costs = {stage: float(args.epochs) if cost is None else cost for stage, cost in TRAINING_STAGE_COSTS.items()}
    if args.stage == "prepare":
        return {"prepare": 5.0}
    if args.stage in ("import-gpu", "import-folds"):
        return {"prepare": 5.0, "import-gpu": 1.0}
    return {"prepare": 5.0, **{stage: cost for stage, cost in costs.items() if args.stage in (stage, "all")}}


RUNS = {  # run folder -> (model name, task, description)
    "run_localiser": ("cine_localiser", "segmentation",
                      "Coarse cine segmentation at 3.5 mm over the whole field of view; gives the heart centre."),
    "run_baseline": ("cine_baseline", "segmentation",
                     "2D U-Net for short-axis cine slices (RV blood pool, LV myocardium, LV blood pool)."),
    "run_classifier": ("cine_region_classifier", "classification",
                       "DenseNet121: non-cardiac / base / middle / apex per short-axis slice."),
    "run_region_base": ("cine_base", "segmentation", "U-Net for basal slices, fine-tuned from cine_baseline."),
    "run_region_middle": ("cine_middle", "segmentation", "U-Net for mid-ventricular slices, fine-tuned from cine_baseline."),
    "run_region_apex": ("cine_apex", "segmentation", "U-Net for apical slices, fine-tuned from cine_baseline."),
}


def write_sampling_weights(work: Path, cine_train) -> Path:
    """Quadratic batch-sampling weights (ratios 4 and 20) of the training slices, for train_cine_gpu.py."""
    from cardiac_ai.training import quadratic_position_weights

    path = work / "sampling_weights.npz"
    np.savez(path, **{f"ratio{r}": quadratic_position_weights(cine_train.positions, ratio=float(r)) for r in (4, 20)})
    return path


GPU_RUNS = {  # model key in train_cine_gpu.py's results -> run folder here
    "cine_baseline": "run_baseline", "cine_base": "run_region_base", "cine_middle": "run_region_middle",
    "cine_apex": "run_region_apex", "cine_localiser": "run_localiser", "cine_region_classifier": "run_classifier",
    "cine_baseline_sampler4": "run_sampler4", "cine_baseline_sampler20": "run_sampler20",
}


def import_gpu_results(results: Path, work: Path, runs: dict[str, str] | None = None, pattern: str = "*.pt") -> None:
    """Turn train_cine_gpu.py's results into run folders (config.json, best.pt, history.json) that register reads.

    ``runs`` maps a result's model key to its run folder (default: the cine models' ``GPU_RUNS``); ``pattern``
    chooses the result files."""
    import json
    import sys

    from cardiac_ai.training.checkpoint import save_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the GPU trainer beside this script
    from train_cine_gpu import load_results

    runs = GPU_RUNS if runs is None else runs
    for path in sorted(results.glob(pattern)):
        for key, result in load_results(path).items():
            if key not in runs:
                print(f"{path.name}: {key} skipped (no run folder for it)")
                continue
            run = work / runs[key]
            run.mkdir(parents=True, exist_ok=True)
            classification = result["task"] == "classification"
            TrainingConfig(
                network=result["network"], network_kwargs=result["network_kwargs"], input_spec=result["input_spec"],
                epochs=result["epochs"], batch_size=result["batch_size"], learning_rate=result["learning_rate"],
                loss="ce" if classification else result.get("loss", "dice_ce"), amp=True, seed=result["seed"],
                metric_name=result["metric_name"], metric_mode="max",
            ).save(run / "config.json")
            save_checkpoint(run / "best.pt", {"model": result["state"], "epoch": result["best_epoch"],
                                              "metric_name": result["metric_name"], "metric": result["metric"]})
            save_checkpoint(run / "last.pt", {"epoch": result["epochs_done"]})  # epochs done; cannot resume
            summary = {k: v for k, v in result.items() if k != "state"}
            (run / "history.json").write_text(json.dumps(summary, indent=1))
            print(f"{key}: {result['metric_name']} {result['metric']:.4f} at epoch {result['best_epoch']} of "
                  f"{result['epochs_done']}/{result['epochs']} ({result['seconds']} s, {result['slices_per_second']} "
                  f"slices/s on {result['device']}{', stopped early' if result['stopped_early'] else ''})")


def _training_note(run: Path) -> str:
    """Where and how a run was trained, for its model card (train_cine_gpu.py runs leave a history.json)."""
    import json

    history = run / "history.json"
    if not history.exists():
        return ""
    h = json.loads(history.read_text())
    stopped = f", stopped by its time budget after {h['epochs_done']}" if h["stopped_early"] else ""
    where = "the CPU (float32)" if h["device"] == "cpu" else f"one {h['device']} (bf16)"
    start = f", starting from {h['started_from']}" if h.get("started_from") else ""
    context = h["input_spec"].get("slice_context", 0)
    sees = f" Input: the slice and {context} neighbouring slice(s) on each side (2.5D)." if context else ""
    return (f"{sees} Trained on {where} by scripts/train_cine_gpu.py{start}: {h['epochs']} epochs planned{stopped}, "
            f"batch {h['batch_size']}, AdamW lr {h['learning_rate']} cosine, batch augmentation (affine, "
            f"elastic, gamma, bias field, noise), {h['sampling']} sampling; best validation {h['metric_name']} "
            f"{h['metric']:.4f} at epoch {h['best_epoch']}; {h['seconds']:.0f} s.")


def register(work: Path, split, version: str = "1.0") -> None:
    """Export every finished run's best checkpoint as a registry model (weights in float16 plus a model card)."""
    from cardiac_ai.training.checkpoint import export_best_model

    segmentation_labels = {0: "background", 1: "rv_blood_pool", 2: "lv_myocardium", 3: "lv_blood_pool"}
    region_labels = {0: "non_cardiac", 1: "base", 2: "middle", 3: "apex"}
    split_summary = {"file": "Resources/Splits/acdc_cine_split.json", "train": list(split.train),
                     "validation": list(split.validation), "test": list(split.test)}
    for run, (name, task, description) in RUNS.items():
        description = description + _training_note(work / run)
        if (work / run / "best.pt").exists():
            export_best_model(
                work / run, work / "models", name=name, version=version, task=task,
                label_map=region_labels if task == "classification" else segmentation_labels,
                training_data="ACDC training set (ED and ES frames), 70 training patients of the split",
                split=split_summary, description=description, license="CC BY-NC-SA 4.0 (ACDC data terms)",
            )
    for run, ratio in (("run_sampler", 20), ("run_sampler4", 4), ("run_sampler20", 20)):
        if (work / run / "best.pt").exists():
            note = _training_note(work / run)
            export_best_model(
                work / run, work / f"models_{run.removeprefix('run_')}", name="cine_baseline", version=version,
                task="segmentation", label_map=segmentation_labels,
                training_data=f"ACDC, as cine_baseline, quadratic batch sampling ratio {ratio}", split=split_summary,
                description=f"Baseline U-Net trained with quadratic non-uniform batch sampling (ratio {ratio}).{note}",
            )


def import_fold_results(results: Path, work: Path, split, version: str = "1.0") -> list[Path]:
    """Register each cross-validation baseline of train_cine_gpu.py (``fold<k>.pt``) as ``cine_baseline`` in its own
    registry folder ``WORK/folds/fold<k>/models``, its card's split naming the training patients it never saw
    (``split["held_out"]``): what ``train_qc.py --cine-fold-models`` reads. Returns the folders."""
    import json

    from cardiac_ai.training.checkpoint import export_best_model

    folders = []
    for path in sorted(results.glob("fold*.pt")):
        fold_work = work / "folds" / path.stem
        import_gpu_results(results, fold_work, runs={"cine_baseline": "run_baseline"}, pattern=path.name)
        held_out = json.loads((fold_work / "run_baseline" / "history.json").read_text())["held_out_patients"]
        trained_on = [p for p in split.train if p not in held_out]
        export_best_model(
            fold_work / "run_baseline", fold_work / "models", name="cine_baseline", version=version,
            task="segmentation",
            label_map={0: "background", 1: "rv_blood_pool", 2: "lv_myocardium", 3: "lv_blood_pool"},
            training_data=f"ACDC training set (ED and ES frames), {len(trained_on)} of the split's "
                          f"{len(split.train)} training patients: cross-validation {path.stem}, without "
                          f"{', '.join(held_out)}",
            split={"file": "Resources/Splits/acdc_cine_split.json", "train": trained_on, "held_out": held_out,
                   "validation": list(split.validation), "test": list(split.test)},
            description="Cross-validation baseline U-Net (as cine_baseline) that never saw the held-out training "
                        "patients: their segmentations by it are realistic QC training pairs, not shipped."
                        + _training_note(fold_work / "run_baseline"),
            license="CC BY-NC-SA 4.0 (ACDC data terms)",
        )
        folders.append(fold_work / "models")
        print(f"{path.stem}: cine_baseline {version} in {fold_work / 'models'} (held out: {', '.join(held_out)})")
    if not folders:
        raise SystemExit(f"no fold*.pt in {results}: run train_cine_gpu.py --jobs fold0 ... fold4 first")
    return folders


if __name__ == "__main__":
    main()
