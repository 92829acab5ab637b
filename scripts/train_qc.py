"""Train the segmentation quality-control models on ACDC: the generative VAE (Wang et al.) and the CNN Dice regressor.

Usage:
    python scripts/train_qc.py --data ../shared/data/acdc/training --work work_data/qc [--stage all]
    python scripts/train_qc.py --limit 2 --epochs 1 --regressor-epochs 1 --no-attacks --work /tmp/qc_check  # quick

Patients come from the cine models' split ``Resources/Splits/acdc_cine_split.json`` (70 train / 10 validation /
20 test); the test patients are never read here (``benchmarks/qc_evaluation.py`` uses them). Stages (each skips
what is already on disk, so a run can be resumed; ``--stage`` takes several):

``prepare``    ground-truth QC pairs (96 x 96 ROI at 1.8 mm, image + RV/MYO/LV masks, labelled slices only) of the
               training and validation frames (``pairs_train.npz``, ``pairs_val.npz``), and pairs of known quality
               for the regressor and the ablation (``poor_train.npz``, ``poor_val.npz``): the ground truth,
               ``--variants`` synthetic corruptions per frame (shift, erosion, dilation, holes, missing slices at
               random strength) and, unless ``--no-attacks`` or the cine models are missing, the cine models'
               segmentations of images attacked with white noise of 6 variances (``--cine-mode``, baseline by
               default: several times faster on a CPU than region-aware). ``--cine-fold-models`` segments each
               training patient with a cross-validation baseline that never saw it (realistic errors; the
               bundled models segment their own training patients too well); ``--margin-slices`` adds slices beyond
               the heart (the regressor's card then lets QC assess that many slices beyond a segmentation's end).
``vae``        the VAE on the ground-truth training pairs (Adam, lr 1e-4, batch 16, up to ``--epochs`` epochs with
               early stopping on the validation loss, m = ``--latent-size``, beta = ``--beta``), then its Dice
               prediction error on the validation pairs of known quality (``run_vae/val_qc.json``).
``ablation``   Table A1: latent size {4, 8, 16} x beta {0.001, 0.01, 0.1}, ``--ablation-epochs`` epochs each, MAE of
               the searched Dice (``--ablation-search-steps`` steps) on ``--ablation-val-slices`` validation pairs of
               known quality; ``ablation/results.json`` (one entry per configuration, written as each finishes;
               configurations already in it are skipped: delete the folder to redo the grid with other settings).
``regressor``  the CNN Dice regressor (Robinson et al. 2018) on the training pairs of known quality.
``register``   exports ``qc_vae`` and ``qc_dice_regressor`` (``--version``, default 1.0; float16 weights + model
               cards) into WORK/models.
``combine``    fits how QC weighs the regressor's and the search's Dice (per structure: regressor, search, their
               product, constant) on the validation pairs of known quality, with the qc_vae and qc_dice_regressor
               found in ``--combine-models`` (one or more folders, the first holding a model wins; default
               WORK/models), and writes that regressor again as ``--version`` with the weights on its card
               (``inference.combination``: QC's "combined" predictor) into ``--combine-out`` (default WORK/models);
               it refuses to replace the card it combines, unless the register stage of the same run wrote it.
               ``--regressor-rotations 0 6 -6 12 -12`` averages the regressor over those rotations (test-time
               augmentation; fitted and recorded on the card as ``inference.test_time_rotations_deg``).

Rough times on a 2-core CPU with the defaults (a GPU is many times faster): prepare 15-20 min (most of it the noise
attacks), vae about 1 min per epoch (up to 100 epochs: under 2 h), ablation about 2 h, regressor about 7 min per
epoch (10 epochs: about 1 h 10 min), register seconds. Check ``run_vae/log.csv`` early: ``val_bce`` should fall well
below 0.05; ACDC gives about 1,200 training slices against the paper's 8,000, so if it stalls, train longer or raise
``--lr``.
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
from cardiac_ai.device import resolve_device
from cardiac_ai.io.atomic import write_text_atomic
from cardiac_ai.progress import PROGRESS_LINES_HELP, StageProgress
from cardiac_ai.qc.training import (
    ATTACK_NOISE_VARIANCES,
    QCPairs,
    evaluate_dice_prediction,
    fit_dice_combination,
    load_qc_pairs,
    make_poor_segmentations,
    prepare_qc_pairs,
    save_qc_pairs,
    train_qc_regressor,
    train_qc_vae,
    vae_predicted_dice,
)

REPO = Path(__file__).resolve().parents[1]
SPLIT_FILE = REPO / "Resources" / "Splits" / "acdc_cine_split.json"
STAGES = ("prepare", "vae", "ablation", "regressor", "register", "combine")
VAE_LABELS = {0: "image", 1: "rv_blood_pool", 2: "lv_myocardium", 3: "lv_blood_pool"}
REGRESSOR_LABELS = {0: "dice_rv_blood_pool", 1: "dice_lv_myocardium", 2: "dice_lv_blood_pool"}
LICENSE = "CC BY-NC-SA 4.0 (ACDC data terms)"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training", help="ACDC training folder")
    parser.add_argument("--work", default="work_data/qc", help="prepared data, runs and WORK/models")
    parser.add_argument("--split", default=str(SPLIT_FILE))
    parser.add_argument("--stage", nargs="+", default=["all"], choices=[*STAGES, "all"])
    parser.add_argument("--phases", nargs="+", default=["ED", "ES"], choices=["ED", "ES"])
    parser.add_argument("--limit", type=int, help="only the first N patients of each part (quick check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    parser.add_argument("--version", default="1.0", help="model version the register stage writes")
    vae = parser.add_argument_group("VAE")
    vae.add_argument("--epochs", type=int, default=100, help="VAE epochs (the paper: 100, early stopping)")
    vae.add_argument("--patience", type=int, default=15, help="early stopping patience (epochs); 0: none")
    vae.add_argument("--batch-size", type=int, default=16)
    vae.add_argument("--lr", type=float, default=1e-4)
    vae.add_argument("--latent-size", type=int, default=8)
    vae.add_argument("--beta", type=float, default=0.01)
    vae.add_argument("--vae-features", type=int, nargs=4, default=[32, 64, 128, 256])
    vae.add_argument("--augment", action="store_true",
                     help="random rotation, scale, shift and gamma of the training pairs (against over-fitting)")
    vae.add_argument("--search-steps", type=int, default=100, help="latent search steps of the validation check")
    ablation = parser.add_argument_group("ablation (Table A1)")
    ablation.add_argument("--latent-sizes", type=int, nargs="+", default=[4, 8, 16])
    ablation.add_argument("--betas", type=float, nargs="+", default=[0.001, 0.01, 0.1])
    ablation.add_argument("--ablation-epochs", type=int, default=10)
    ablation.add_argument("--ablation-search-steps", type=int, default=50)
    ablation.add_argument("--ablation-val-slices", type=int, default=400,
                          help="validation pairs of known quality (random, fixed seed) the MAE is measured on")
    poor = parser.add_argument_group("pairs of known quality and the regressor")
    poor.add_argument("--variants", type=int, default=4, help="synthetic corruptions per frame")
    poor.add_argument("--cine-models", default="work_data/cine/models", help="ModelRegistry folder of the cine models")
    poor.add_argument("--cine-mode", default="baseline", choices=["baseline", "region-aware"])
    poor.add_argument("--no-attacks", action="store_true", help="no noise attacks on the cine models")
    poor.add_argument("--cine-fold-models", nargs="+", metavar="FOLDER",
                      help="registry folders of cross-validation cine baselines (train_acdc_cine.py --stage "
                           "import-folds: WORK/folds/fold*/models); each training patient's noise attacks are then "
                           "segmented by the baseline that never saw it (its card's split held_out), with the "
                           "--cine-models localiser; validation patients by --cine-models. Needs --cine-mode baseline")
    poor.add_argument("--margin-slices", type=int, default=0, metavar="N",
                      help="also N slices beyond each end of the labelled extent (heart in neither segmentation nor "
                           "truth), so that QC can assess N slices beyond a segmentation's end; the regressor's card "
                           "records it (default 0)")
    poor.add_argument("--combine-models", nargs="+", metavar="FOLDER",
                      help="stage combine: registry folders holding the qc_vae and the qc_dice_regressor to combine, "
                           "searched in order (e.g. a freshly registered regressor's folder, then Resources/Models "
                           "for the bundled VAE; default WORK/models)")
    poor.add_argument("--combine-out", metavar="FOLDER",
                      help="stage combine: where the combined regressor is written (default WORK/models)")
    poor.add_argument("--regressor-rotations", type=float, nargs="+", metavar="DEG",
                      help="stage combine: test-time rotations of the regressor, averaged (e.g. 0 6 -6 12 -12); the "
                           "weights are fitted on the averaged predictions and the card records the angles for QC "
                           "(default: those of the card combined, else none)")
    poor.add_argument("--regressor-epochs", type=int, default=10)
    poor.add_argument("--regressor-batch-size", type=int, default=32)
    poor.add_argument("--regressor-lr", type=float, default=1e-3)
    poor.add_argument("--regressor-features", type=int, nargs="+", default=[16, 32, 64, 128])
    poor.add_argument("--regressor-augment", action="store_true",
                      help="augment the regressor's training pairs (rotation, scale, shift; gamma and noise on the "
                           "image), so it judges the segmentation rather than the image's look")
    poor.add_argument("--regressor-curve-probability", type=float, default=0.0, metavar="P",
                      help="with --regressor-augment: share of the images also mapped through a random intensity "
                           "curve (another contrast; default 0)")
    args = parser.parse_args(argv)
    args.stages = set(STAGES) if "all" in args.stage else set(args.stage)
    return args


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def epoch_progress(fraction: float, message: str) -> None:
    if "done" in message or "finished" in message:
        say(f"{fraction:.3f} {message}")


class Data:
    """The split's cases, read on first use (the test part never)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.split = load_split(args.split)
        self.refs = list_acdc(args.data, phases=tuple(args.phases))
        self._cases: dict[str, list] = {}

    def patients(self, part: str) -> list[str]:
        patients = sorted({r.patient_id for r in refs_in_part(self.refs, self.split, part)})
        return patients[: self.args.limit] if self.args.limit else patients

    def cases(self, part: str) -> list:
        if part not in self._cases:
            chosen = set(self.patients(part))
            refs = [r for r in refs_in_part(self.refs, self.split, part) if r.patient_id in chosen]
            say(f"reading {len(refs)} {part} frames")
            self._cases[part] = [load_case(r) for r in refs]
        return self._cases[part]

    def split_summary(self) -> dict:
        return {"file": "Resources/Splits/acdc_cine_split.json", "train": self.patients("train"),
                "validation": self.patients("validation"), "test": list(self.split.test),
                "phases": list(self.args.phases)}


def cached_pairs(path: Path, make) -> QCPairs:
    if path.exists():
        return load_qc_pairs(path)
    pairs = make()
    save_qc_pairs(pairs, path)
    say(f"wrote {path} ({len(pairs)} pairs)")
    return load_qc_pairs(path)  # train on exactly what another machine would read


def cine_models(args: argparse.Namespace, data: "Data"):
    """The cine models for the noise attacks (with --cine-fold-models a case -> models function), or None (with the
    reason printed)."""
    if args.no_attacks:
        return None
    folder = Path(args.cine_models)
    if not folder.is_dir():
        say(f"no cine models at {folder}: pairs of known quality without noise attacks (train them with "
            "scripts/train_acdc_cine.py, or pass --cine-models)")
        return None
    from cardiac_ai.models import ModelRegistry
    from cardiac_ai.regions import CineModels

    models = CineModels.from_registry(ModelRegistry(paths=[folder]), mode=args.cine_mode, device=args.device)
    return fold_models_by_patient(args, models, data.patients("train")) if args.cine_fold_models else models


def fold_models_by_patient(args: argparse.Namespace, models, training_patients):
    """A case -> CineModels function: the cross-validation baseline that never saw the case's patient (training
    patients), else ``models`` (validation patients, whom no cine model saw)."""
    import dataclasses

    from cardiac_ai.errors import InputError
    from cardiac_ai.models import ModelRegistry

    if args.cine_mode != "baseline":
        raise InputError("--cine-fold-models holds baselines only: use --cine-mode baseline.")
    by_patient = {}
    for folder in args.cine_fold_models:
        baseline = ModelRegistry(paths=[Path(folder)]).load("cine_baseline", device=args.device)
        held_out = baseline.card.split.get("held_out")
        if not held_out:
            raise InputError(f"The cine_baseline in {folder} names no held-out patients (card split 'held_out'): "
                             "register cross-validation baselines with train_acdc_cine.py --stage import-folds.")
        fold = dataclasses.replace(models, baseline=baseline)
        by_patient |= {patient: fold for patient in held_out}
    say(f"cross-validation cine baselines: {len(args.cine_fold_models)} folds, {len(by_patient)} held-out patients")
    seen_by_all = set(training_patients) - set(by_patient)
    if seen_by_all:
        raise InputError(f"No cross-validation baseline leaves out training patient(s) {sorted(seen_by_all)}; every "
                         "training patient needs the fold that never saw it.")

    def for_case(case):
        return by_patient.get(case.case_id.split("_")[0], models)

    return for_case


def ground_truth_pairs(args, data: Data, work: Path, part: str) -> QCPairs:
    name = "train" if part == "train" else "val"
    return cached_pairs(work / f"pairs_{name}.npz", lambda: prepare_qc_pairs(data.cases(part)))


def say_poor(fraction: float, message: str) -> None:
    if message.startswith("Poor"):
        say(f"{fraction:.2f} {message}")


def poor_pairs(args, data: Data, work: Path, part: str, models_holder: dict, progress=say_poor) -> QCPairs:
    name = "train" if part == "train" else "val"

    def make() -> QCPairs:
        if "models" not in models_holder:
            models_holder["models"] = cine_models(args, data)
        return make_poor_segmentations(
            data.cases(part), n_variants=args.variants, cine_models=models_holder["models"],
            noise_variances=ATTACK_NOISE_VARIANCES, cine_mode=args.cine_mode, margin_slices=args.margin_slices,
            seed=args.seed, device=args.device, progress=progress,
        )

    return cached_pairs(work / f"poor_{name}.npz", make)


def summarise(name: str, pairs: QCPairs) -> None:
    kinds, counts = np.unique(pairs.kinds, return_counts=True)
    finite = pairs.dice[np.isfinite(pairs.dice)]
    say(f"{name}: {len(pairs)} pairs, kinds {dict(zip(kinds.tolist(), counts.tolist()))}, true Dice quartiles "
        f"{np.round(np.percentile(finite, [25, 50, 75]), 3).tolist() if finite.size else []}")


def validation_subset(pairs: QCPairs, n: int, seed: int) -> QCPairs:
    if n <= 0 or n >= len(pairs):
        return pairs
    chosen = np.sort(np.random.default_rng(seed).choice(len(pairs), size=n, replace=False))
    return pairs.subset(chosen)


def vae_stage(args, work: Path, train: QCPairs, val: QCPairs, poor_val: QCPairs,
              progress=epoch_progress) -> None:
    run = work / "run_vae"
    model, history = train_qc_vae(
        train, val, latent_size=args.latent_size, beta=args.beta, features=args.vae_features, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, early_stopping_patience=args.patience or None, seed=args.seed,
        out_dir=run, device=args.device, progress=progress, resume=(run / "last.pt").exists(), augment=args.augment,
    )
    say(f"VAE: {len(history)} epochs, best val_loss {min(h.get('val_loss', np.inf) for h in history):.4f}")
    check = run / "val_qc.json"
    if not check.exists():
        subset = validation_subset(poor_val, args.ablation_val_slices, args.seed)
        searched = vae_predicted_dice(model, subset, steps=args.search_steps, device=args.device)
        encoder = vae_predicted_dice(model, subset, steps=0, device=args.device)
        metrics = {"search": evaluate_dice_prediction(searched, subset.dice),
                   "encoder_only": evaluate_dice_prediction(encoder, subset.dice),
                   "search_steps": args.search_steps, "n_pairs": len(subset)}
        write_text_atomic(check, json.dumps(metrics, indent=2) + "\n")
    say(f"VAE validation QC: {json.loads(check.read_text())}")


def ablation_stage(args, work: Path, train: QCPairs, val: QCPairs, poor_val: QCPairs,
                   stage_progress: StageProgress) -> None:
    folder = work / "ablation"
    results_path = folder / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {(r["latent_size"], r["beta"]) for r in results}
    subset = validation_subset(poor_val, args.ablation_val_slices, args.seed)
    n_configurations = len(args.latent_sizes) * len(args.betas)
    for row, latent_size in enumerate(args.latent_sizes):
        for column, beta in enumerate(args.betas):
            if (latent_size, beta) in done:
                continue
            number = row * len(args.betas) + column
            run = folder / f"m{latent_size}_beta{beta:g}"
            started = time.perf_counter()
            model, history = train_qc_vae(
                train, val, latent_size=latent_size, beta=beta, features=args.vae_features,
                epochs=args.ablation_epochs, batch_size=args.batch_size, lr=args.lr, early_stopping_patience=None,
                seed=args.seed, out_dir=run, device=args.device,
                progress=stage_progress.stage("ablation", then=epoch_progress,
                                              part=(number / n_configurations, (number + 1) / n_configurations)),
                resume=(run / "last.pt").exists(),
            )
            predicted = vae_predicted_dice(model, subset, steps=args.ablation_search_steps, device=args.device)
            metrics = evaluate_dice_prediction(predicted, subset.dice)
            results.append({
                "latent_size": latent_size, "beta": beta, "features": list(args.vae_features), "epochs": len(history),
                "best_val_loss": min(h.get("val_loss", np.inf) for h in history),
                "search_steps": args.ablation_search_steps, "n_pairs": len(subset), **metrics,
                "seconds": time.perf_counter() - started,
            })
            write_text_atomic(results_path, json.dumps(results, indent=2) + "\n")
            say(f"ablation m={latent_size} beta={beta:g}: MAE {metrics['mae']:.3f}, r {metrics['pearson_r']:.3f}")


def regressor_stage(args, work: Path, poor_train: QCPairs, poor_val: QCPairs, progress=epoch_progress) -> None:
    run = work / "run_regressor"
    _, history = train_qc_regressor(
        poor_train, poor_val, features=args.regressor_features, epochs=args.regressor_epochs,
        batch_size=args.regressor_batch_size, lr=args.regressor_lr, seed=args.seed, out_dir=run, device=args.device,
        progress=progress, resume=(run / "last.pt").exists(), augment=args.regressor_augment,
        curve_probability=args.regressor_curve_probability,
    )
    best = min(history, key=lambda h: h.get("val_loss", np.inf))
    say(f"regressor: {len(history)} epochs, best val MSE {best['val_loss']:.4f}, val MAE {best['val_mae']:.4f}")


def register_stage(args, work: Path, data: Data) -> None:
    from cardiac_ai.models.registry import read_card
    from cardiac_ai.training.checkpoint import export_best_model

    models = work / "models"
    split = data.split_summary()
    frames = "+".join(args.phases)
    exported = []
    if (work / "run_vae" / "best.pt").exists():
        card_path = export_best_model(
            work / "run_vae", models, name="qc_vae", version=args.version, task="quality_control", label_map=VAE_LABELS,
            training_data=f"ACDC training set, ground-truth segmentations of the {frames} frames of the split's "
                          f"{len(split['train'])} training patients (96 x 96 ROI at 1.8 mm around the heart)",
            split=split, license=LICENSE,
            description="Variational autoencoder of good image-segmentation pairs (Wang et al., generative QC). "
                        "Latent search (cardiac_ai.qc.latent_search) projects a pair onto its manifold; the Dice "
                        "between the surrogate and the given segmentation predicts the segmentation's quality. "
                        f"Latent size {args.latent_size}, beta {args.beta:g}. Outputs are probabilities (sigmoid): "
                        "channel 0 the image, then RV blood pool, LV myocardium, LV blood pool.",
        )
        check = work / "run_vae" / "val_qc.json"
        if check.exists():
            metrics = json.loads(check.read_text())
            extra = {f"val_dice_mae_{k}": v["mae"] for k, v in metrics.items() if isinstance(v, dict)}
            extra |= {f"val_dice_r_{k}": v["pearson_r"] for k, v in metrics.items() if isinstance(v, dict)}
            card = read_card(card_path)
            card = dataclasses.replace(card, validation_metrics={**card.validation_metrics, **extra})
            write_text_atomic(card_path, json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
        exported.append(card_path)
    if (work / "run_regressor" / "best.pt").exists():
        exported.append(export_best_model(
            work / "run_regressor", models, name="qc_dice_regressor", version=args.version, task="regression",
            label_map=REGRESSOR_LABELS, split=split, license=LICENSE,
            training_data=f"ACDC training set, {frames} frames of the split's {len(split['train'])} training patients: "
                          "ground truth, synthetic corruptions (shift, erosion, dilation, holes, missing slices) and "
                          + ("no noise attacks" if args.no_attacks else
                             "segmentations of noise-attacked images by cine baselines that never saw the patient "
                             f"({len(args.cine_fold_models)}-fold cross-validation; validation patients: the "
                             "bundled baseline)" if args.cine_fold_models else
                             f"cine model ({args.cine_mode}) segmentations of noise-attacked images") +
                          ", with their true Dice per slice and structure"
                          + (f", and up to {args.margin_slices} slices beyond each end of the labelled extent"
                             if args.margin_slices else "")
                          + ("; augmented per batch (rotation, scale, shift; gamma and noise on the image"
                             + (f"; random intensity curves on {args.regressor_curve_probability:g} of the images"
                                if args.regressor_curve_probability > 0 else "") + ")"
                             if args.regressor_augment else ""),
            description="CNN regression of segmentation quality (Robinson et al. 2018, the baseline of Wang et al.): "
                        "image + RV/MYO/LV masks (96 x 96 at 1.8 mm) in, per-structure Dice logits out; "
                        "sigmoid gives the predicted Dice (cardiac_ai.models.qc_regressor.regress_dice).",
            inference={"assess_margin_slices": args.margin_slices} if args.margin_slices else None,
        ))
    for path in exported:
        say(f"registered {path}")
    if not exported:
        say("nothing to register: run the vae and regressor stages first")


def combine_stage(args, work: Path, poor_val: QCPairs) -> Path:
    from cardiac_ai.models import ModelRegistry, save_model
    from cardiac_ai.models.qc_regressor import check_rotations
    from cardiac_ai.qc import COMBINATION_TERMS
    from cardiac_ai.qc.assess import regressor_rotations

    folders = [Path(f) for f in args.combine_models] if args.combine_models else [work / "models"]
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"--combine-models: {folder} is not a folder")
    registry = ModelRegistry(paths=folders)
    vae = registry.load("qc_vae", device=args.device)
    regressor = registry.load("qc_dice_regressor", device=args.device)
    out = Path(args.combine_out) if args.combine_out else work / "models"
    source_card = registry.card_path("qc_dice_regressor", regressor.card.version)
    registered_now = "register" in args.stages and source_card.parent.resolve() == (work / "models").resolve()
    if (out / f"qc_dice_regressor-{args.version}.json").resolve() == source_card.resolve() and not registered_now:
        raise SystemExit(f"stage combine would replace the regressor it combines ({source_card}): give another "
                         f"--version or --combine-out")
    rotations = (regressor_rotations(regressor) if args.regressor_rotations is None
                 else check_rotations(args.regressor_rotations))
    say(f"combining {source_card} with {registry.card_path('qc_vae', vae.card.version)}; regressor views at "
        f"{list(rotations)} degrees")
    names = [REGRESSOR_LABELS[s].removeprefix("dice_") for s in range(poor_val.n_structures)]
    combinations = {}
    for key, steps in (("combination", args.search_steps), ("combination_encoder", 0)):
        coefficients, summary = fit_dice_combination(regressor.network, vae.network, poor_val, steps=steps,
                                                     device=args.device, rotations_deg=rotations)
        for name, n, alone, combined in zip(names, summary["n_values"], summary["regressor"], summary["combined"]):
            say(f"{key}, {name} ({n} validation values): regressor r {alone['pearson_r']:.3f} MAE "
                f"{alone['mae']:.3f} -> combined r {combined['pearson_r']:.3f} MAE {combined['mae']:.3f}")
        combinations[key] = {
            "terms": list(COMBINATION_TERMS), "coefficients": np.round(coefficients, 6).tolist(), "structures": names,
            "fitted_on": f"{len(poor_val)} validation pairs of known quality "
                         f"({', '.join(sorted(set(poor_val.kinds)))}), qc_vae {vae.card.version}, "
                         + (f"latent search {steps} steps" if steps else "encoder only (no search steps)"),
        }
    card = regressor.card
    card = dataclasses.replace(
        card, version=args.version,
        inference={**card.inference, **combinations, "test_time_rotations_deg": list(rotations)},
        description=card.description.split(" Combined with the search")[0]
        + f" Combined with the search ({', '.join(COMBINATION_TERMS)} per structure) by scripts/train_qc.py --stage "
          f"combine from version {card.version}: same weights"
        + (f", predictions averaged over rotations of {list(rotations)} degrees." if rotations != (0.0,) else "."),
    )
    path = save_model(regressor.network, card, out)
    say(f"registered {path}")
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    args.device = str(resolve_device(args.device))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = Data(args)
    holder: dict = {}
    say(f"patients: train {len(data.patients('train'))}, validation {len(data.patients('validation'))} "
        f"(test patients held out); stages {sorted(args.stages)}")

    needs_pairs = args.stages & {"prepare", "vae", "ablation"}
    needs_poor = args.stages & {"prepare", "vae", "ablation", "regressor", "combine"}
    stage_progress = StageProgress(stage_weights(args, prepares=bool(needs_poor)), enabled=args.progress_lines)
    if needs_pairs:
        stage_progress.stage("prepare")
        train, val = ground_truth_pairs(args, data, work, "train"), ground_truth_pairs(args, data, work, "validation")
        summarise("ground-truth pairs train", train)
        summarise("ground-truth pairs validation", val)
    if needs_poor:
        poor_train = poor_pairs(args, data, work, "train", holder,
                                stage_progress.stage("prepare", then=say_poor, part=(0.1, 0.9)))
        poor_val = poor_pairs(args, data, work, "validation", holder,
                              stage_progress.stage("prepare", then=say_poor, part=(0.9, 1.0)))
        summarise("pairs of known quality train", poor_train)
        summarise("pairs of known quality validation", poor_val)
    if "vae" in args.stages:
        vae_stage(args, work, train, val, poor_val,
                  stage_progress.stage("vae", then=epoch_progress, part=(0.0, 0.9)))  # then the validation search
    if "ablation" in args.stages:
        stage_progress.stage("ablation")
        ablation_stage(args, work, train, val, poor_val, stage_progress)
    if "regressor" in args.stages:
        regressor_stage(args, work, poor_train, poor_val, stage_progress.stage("regressor", then=epoch_progress))
    if "register" in args.stages:
        stage_progress.stage("register")
        register_stage(args, work, data)
    if "combine" in args.stages:
        stage_progress.stage("combine")
        combine_stage(args, work, poor_val)
    stage_progress.finish()
    return 0


def stage_weights(args: argparse.Namespace, *, prepares: bool) -> dict[str, float]:
    """Rough cost of each stage that runs, in minutes on a 2-core CPU (the module docstring), for --progress-lines.
    ``prepares``: the pairs are read or made (every stage but register needs them)."""
    minutes = {
        "prepare": 18.0,
        "vae": 1.0 * args.epochs,
        "ablation": 1.0 * args.ablation_epochs * len(args.latent_sizes) * len(args.betas),
        "regressor": 7.0 * args.regressor_epochs,
        "register": 0.1,
        "combine": 4.0,
    }
    running = [stage for stage in STAGES if stage in args.stages or (stage == "prepare" and prepares)]
    return {stage: minutes[stage] for stage in running}


if __name__ == "__main__":
    raise SystemExit(main())
