"""Train the cine models on ACDC (localiser + baseline U-Net) from compact preprocessed crops.

Usage: python scripts/train_acdc_cine.py --data ../shared/data/acdc/training --work work_data/cine [--stage all]
Runs on the CPU or a GPU (the same script); writes prepared .npz crops, run folders and registered models.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from cardiac_ai.datasets import default_acdc_split, list_acdc, load_case, refs_in_part, save_split
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.segmentation import train_segmentation_prepared
from cardiac_ai.training.slices import load_prepared, prepare_slices, save_prepared

LOCALISER_SPEC = InputSpec(in_plane_spacing_mm=(3.5, 3.5), crop_size=(128, 128))
CINE_SPEC = InputSpec(in_plane_spacing_mm=(1.5, 1.5), crop_size=(128, 128))


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
    parser.add_argument("--stage", default="all", choices=["prepare", "localiser", "baseline", "all"])
    parser.add_argument("--epochs", type=int, default=120)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    refs = list_acdc(args.data)
    split = default_acdc_split(refs)
    save_split(split, work / "split.json")
    names = ["localiser_train", "localiser_val", "cine_train", "cine_val"]
    if not all((work / f"{n}.npz").exists() for n in names):
        train_cases = [load_case(r) for r in refs_in_part(refs, split, "train")]
        val_cases = [load_case(r) for r in refs_in_part(refs, split, "validation")]
    else:
        train_cases = val_cases = []
    loc_train = prepared(work, "localiser_train", train_cases, LOCALISER_SPEC, "image_center")
    loc_val = prepared(work, "localiser_val", val_cases, LOCALISER_SPEC, "image_center")
    cine_train = prepared(work, "cine_train", train_cases, CINE_SPEC, "labels")
    cine_val = prepared(work, "cine_val", val_cases, CINE_SPEC, "labels")
    print({n: len(s) for n, s in zip(names, [loc_train, loc_val, cine_train, cine_val])}, flush=True)
    if args.stage == "prepare":
        return

    def progress(fraction, message):
        now = time.strftime("%H:%M:%S")
        if message.startswith("Epoch") or "finished" in message:
            print(f"{now} {fraction:.3f} {message}", flush=True)

    if args.stage in ("localiser", "all"):
        config = TrainingConfig(
            network="unet2d",
            network_kwargs={"out_channels": 4, "channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 1},
            input_spec=LOCALISER_SPEC.to_dict(), epochs=max(10, args.epochs // 4), batch_size=16,
            learning_rate=2e-3, metric_name="val_dice", metric_mode="max", seed=0,
        )
        result, _, metrics = train_segmentation_prepared(
            loc_train, loc_val, config=config, out_dir=work / "run_localiser", device=args.device,
            augmentation=AugmentationConfig(translate_prob=0.5, translate_range_px=10.0), progress=progress,
            resume=(work / "run_localiser" / "last.pt").exists(),
        )
        print("localiser", metrics, flush=True)

    if args.stage in ("baseline", "all"):
        config = TrainingConfig(
            network="unet2d",
            network_kwargs={"out_channels": 4, "channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2),
                            "num_res_units": 2},
            input_spec=CINE_SPEC.to_dict(), epochs=args.epochs, batch_size=16, learning_rate=2e-3,
            metric_name="val_dice", metric_mode="max", seed=0,
        )
        result, _, metrics = train_segmentation_prepared(
            cine_train, cine_val, config=config, out_dir=work / "run_baseline", device=args.device,
            augmentation=AugmentationConfig(translate_prob=0.7, translate_range_px=16.0), progress=progress,
            resume=(work / "run_baseline" / "last.pt").exists(),
        )
        print("baseline", metrics, flush=True)


if __name__ == "__main__":
    main()
