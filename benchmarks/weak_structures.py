"""RV blood pool, LV myocardium and LV blood pool from diagnosis labels only (issue 6: "go further where the data
allow"): the weak U-Net's whole heart split by :func:`cardiac_ai.weak.structures.split_heart`, and optionally a
4-class U-Net self-trained on those splits, against the ACDC ground truth.

Usage:
    python benchmarks/weak_structures.py [--unet-epochs 40 --work work_data/weak_structures] [--report FILE]

Which signal each step uses: the whole heart is ``cardiacai cam``'s (the bundled weak classifier and weak U-Net:
diagnosis labels and the ED-ES motion of each slice); the split reads only the image and that mask; the 4-class
U-Net trains on the splits of the training patients' volumes (validation patients' splits pick its epoch). The
ground truth is read only to score, and (split settings, chosen before this script) on the validation patients.

Rows "true heart" split the ground-truth heart instead: what the split alone costs, whatever the heart mask.
Dice per volume (native grid for the split; the U-Net's 96 px field-of-view crops at 2 mm, and the split on the
same crops, for the U-Net rows), mean over the part's volumes.

The heart is ``cardiacai cam``'s default, the weak U-Net's output with its LV wall completed
(:func:`~cardiac_ai.weak.structures.complete_lv_wall`, ``--lv-wall-mm``); a second table gives the whole-heart Dice
of the heart mask for wall widths from 0 (the U-Net as it is) to 13 mm, the grid the default was chosen from on the
validation patients, with ED and ES apart.
"""
from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _output import emit_report  # noqa: E402

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part  # noqa: E402
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL  # noqa: E402
from cardiac_ai.metrics import format_markdown_table  # noqa: E402
from cardiac_ai.metrics.overlap import dice, dice_per_label  # noqa: E402
from cardiac_ai.models import ModelRegistry  # noqa: E402
from cardiac_ai.weak.pipeline import WeakModels, explain_volume  # noqa: E402
from cardiac_ai.weak.structures import LV_WALL_MM, HeartSplitConfig, complete_lv_wall, split_heart  # noqa: E402

SPLIT_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Splits" / "acdc_cine_split.json"
STRUCTURES = ((RV_BLOOD_POOL, "RV"), (LV_MYOCARDIUM, "MYO"), (LV_BLOOD_POOL, "LV"))
#: LV wall widths (mm) whose whole-heart Dice the second table gives; 0 is the weak U-Net as it is.
WALL_GRID_MM = (0.0, 3.0, 5.0, 7.0, 9.0, 11.0, 13.0)


def volume_dice(predicted: np.ndarray, truth: np.ndarray) -> list[float]:
    """Dice per structure and of the whole heart; NaN where both are empty."""
    per_structure = dice_per_label(predicted, truth, [code for code, _ in STRUCTURES])
    return [*per_structure.values(), dice(predicted > 0, truth > 0)]


def per_case_dice(predicted: np.ndarray, truth: np.ndarray, case_ids: np.ndarray) -> np.ndarray:
    return np.array([volume_dice(predicted[case_ids == c], truth[case_ids == c]) for c in np.unique(case_ids)])


def where_it_goes_wrong(part: str, heart: np.ndarray, structures: np.ndarray, truth: np.ndarray,
                        voxel_ml: float) -> tuple:
    """(part, share of the true RV / MYO / LV inside the heart mask, share of LV slices whose LV pool is elsewhere,
    estimated minus true volume of RV / MYO / LV in ml)."""
    inside = [np.count_nonzero(heart & (truth == c)) / max(np.count_nonzero(truth == c), 1) for c, _ in STRUCTURES]
    both = [k for k in range(truth.shape[0]) if (truth[k] == LV_BLOOD_POOL).any() and
            (structures[k] == LV_BLOOD_POOL).any()]
    wrong = sum(not ((truth[k] == LV_BLOOD_POOL) & (structures[k] == LV_BLOOD_POOL)).any() for k in both)
    errors = [(np.count_nonzero(structures == c) - np.count_nonzero(truth == c)) * voxel_ml for c, _ in STRUCTURES]
    return (part, *inside, wrong / len(both) if both else float("nan"), *errors)


def row(part: str, what: str, values: np.ndarray) -> list[str]:
    mean = np.nanmean(values, axis=0)
    return [part, what, str(len(values)), *[f"{v:.3f}" for v in mean]]


def train_structure_unet(train_slices, val_slices, epochs: int, work: Path):
    import torch

    from cardiac_ai.models.networks import build_seeded_network
    from cardiac_ai.training.augmentation import build_augmentation
    from cardiac_ai.training.checkpoint import load_checkpoint_weights
    from cardiac_ai.training.config import TrainingConfig
    from cardiac_ai.training.engine import Trainer, build_loss
    from cardiac_ai.training.slices import SliceDataset
    from cardiac_ai.weak.recipe import RECIPE_SPEC, WEAK_AUGMENTATION, WeakRecipe

    config = TrainingConfig(network="unet2d", network_kwargs={**WeakRecipe().unet_kwargs(), "out_channels": 4},
                            input_spec=RECIPE_SPEC.to_dict(), epochs=epochs, batch_size=32, learning_rate=2e-3,
                            loss="dice_ce", metric_name="val_loss", metric_mode="min", seed=0)
    network = build_seeded_network(config.network, config.seed, **config.network_kwargs)

    def progress(fraction: float, message: str) -> None:
        if "done" in message:
            print(f"  {message}", flush=True)

    trainer = Trainer(config, network, SliceDataset(train_slices, augmentation=build_augmentation(WEAK_AUGMENTATION,
                                                                                                  seed=0)),
                      SliceDataset(val_slices), out_dir=work, device="cpu", loss_fn=build_loss("dice_ce"),
                      progress=progress)
    result = trainer.fit()
    load_checkpoint_weights(network, result.best_checkpoint)
    network.eval()

    def predict(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([network(torch.from_numpy(images[i:i + 64, None])).argmax(1).numpy()
                                   for i in range(0, len(images), 64)]).astype(np.uint8)

    return predict, result.best_epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--models", default="Resources/Models", help="registry folder of the weak models")
    parser.add_argument("--unet-epochs", type=int, default=0,
                        help="also self-train a 4-class U-Net on the training patients' splits (0: no)")
    parser.add_argument("--work", default="work_data/weak_structures", help="the U-Net's run folder")
    parser.add_argument("--limit", type=int, help="only the first N volumes of each part (a quick check)")
    parser.add_argument("--report")
    args = parser.parse_args()

    import torch
    torch.set_num_threads(2)
    models = WeakModels.from_registry(ModelRegistry(paths=[Path(args.models)]), device="cpu")
    split = load_split(SPLIT_FILE)
    refs = list_acdc(args.data, phases=("ED", "ES"))
    config = HeartSplitConfig()
    parts = ("train", "validation", "test") if args.unet_epochs else ("validation", "test")
    rows, crops, seconds, coverage, wall_dice = [], {}, [], [], []
    started = time.time()
    for part in parts:
        weak_rows, true_rows, pseudo_cases, truth_cases = [], [], [], []
        for ref in refs_in_part(refs, split, part)[:args.limit]:
            case = load_case(ref)
            image, spacing, truth = case.image.array, case.image.geometry.spacing_kji_mm, case.labels.array
            u_net_heart = explain_volume(case.image, models, lv_wall_mm=0, device="cpu").labels.array > 0
            heart = complete_lv_wall(image, u_net_heart, spacing, LV_WALL_MM)  # what `cam` writes by default
            if part != "train":
                walls = [complete_lv_wall(image, u_net_heart, spacing, wall) for wall in WALL_GRID_MM]
                wall_dice.append((part, ref.metadata["phase"], [dice(w, truth > 0) for w in walls]))
            begun = time.perf_counter()
            structures = split_heart(case.image.array, heart, case.image.geometry.spacing_kji_mm, config)
            seconds.append(time.perf_counter() - begun)
            if part != "train":
                weak_rows.append(volume_dice(structures, truth))
                coverage.append(where_it_goes_wrong(part, heart, structures, truth,
                                                    float(np.prod(case.image.geometry.spacing_mm)) / 1000.0))
                true_rows.append(volume_dice(split_heart(case.image.array, truth > 0,
                                                         case.image.geometry.spacing_kji_mm, config), truth))
            if args.unet_epochs:
                pseudo_cases.append(dataclasses.replace(case, labels=case.labels.with_array(structures)))
                truth_cases.append(case)
        print(f"{part}: split in {time.time() - started:.0f} s", flush=True)
        if part != "train":
            rows.append(row(part, f"split of the weak U-Net's heart, LV wall {LV_WALL_MM:g} mm (native grid)",
                            np.array(weak_rows)))
            rows.append(row(part, "split of the true heart (native grid)", np.array(true_rows)))
        if args.unet_epochs:
            from cardiac_ai.training.slices import prepare_slices
            from cardiac_ai.weak.recipe import RECIPE_SPEC

            crops[part] = (prepare_slices(pseudo_cases, RECIPE_SPEC, crop_center="image_center"),
                           prepare_slices(truth_cases, RECIPE_SPEC, crop_center="image_center"))
    lines = [f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; CPU only; date "
             f"{time.strftime('%Y-%m-%d')}. Split settings: {config}. Models: {args.models}.", ""]
    if args.unet_epochs:
        predict, best_epoch = train_structure_unet(crops["train"][0], crops["validation"][0], args.unet_epochs,
                                                   Path(args.work))
        for part in ("validation", "test"):
            pseudo, truth = crops[part]
            rows.append(row(part, "split of the weak U-Net's heart (96 px crops)",
                            per_case_dice(pseudo.labels, truth.labels, truth.case_ids)))
            rows.append(row(part, f"4-class U-Net self-trained on the splits ({args.unet_epochs} epochs, best "
                                  f"{best_epoch}; 96 px crops)",
                            per_case_dice(predict(truth.images), truth.labels, truth.case_ids)))
    rows.sort(key=lambda r: ("validation", "test").index(r[0]))
    columns = ["part", "what", "volumes", "RV", "MYO", "LV", "whole heart"]
    lines.append(format_markdown_table([dict(zip(columns, r)) for r in rows], columns=columns))
    lines += ["", "Where the split of the weak heart goes wrong (per volume, mean): share of each true structure "
                  "inside the weak heart; share of slices with both a true and a predicted LV blood pool where the "
                  "two do not overlap (the wrong bright piece taken for the LV); estimated minus true volume (ml), "
                  "mean (bias) and mean absolute value.", ""]
    summary = []
    for part in ("validation", "test"):
        values = np.array([c[1:] for c in coverage if c[0] == part], dtype=float)
        shares, errors = np.nanmean(values[:, :4], axis=0), values[:, 4:]
        summary.append({"part": part, **dict(zip(["true RV inside", "true MYO inside", "true LV inside",
                                                  "LV taken wrong"], [f"{v:.2f}" for v in shares])),
                        **{f"{name} volume error (ml): bias / MAE": f"{errors[:, i].mean():+.1f} / "
                                                                    f"{np.abs(errors[:, i]).mean():.1f}"
                           for i, (_, name) in enumerate(STRUCTURES)}})
    lines.append(format_markdown_table(summary, columns=list(summary[0])))
    lines += ["", f"Split alone: {np.mean(seconds):.3f} s per volume (mean of {len(seconds)}; CPU).", "",
              "Whole-heart Dice per volume of the heart mask (labels.nii.gz) by LV wall width (mm; 0: the weak U-Net "
              "as it is), mean over volumes (ED / ES):", ""]
    wall_rows = []
    for part in ("validation", "test"):
        for phase in (None, "ED", "ES"):
            values = np.array([d for p, ph, d in wall_dice if p == part and phase in (None, ph)])
            wall_rows.append({"part": part, "phase": phase or "both", "volumes": str(len(values)),
                              **{f"{wall:g} mm": f"{v:.3f}" for wall, v in zip(WALL_GRID_MM, values.mean(axis=0))}})
    lines.append(format_markdown_table(wall_rows, columns=list(wall_rows[0])))
    emit_report(lines, args.report)


if __name__ == "__main__":
    main()
