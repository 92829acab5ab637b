"""Train the T1/T2-map myocardium model (``map_myocardium``) on one GPU, from the crops of ``train_mapping.py``.

Usage (the GPU machine needs torch, numpy and MONAI only)::

    python scripts/train_mapping.py --stage prepare --work work_data/mapping                # here: uint8 crops
    python scripts/train_mapping_gpu.py --data work_data/mapping --out OUT --budget 330     # there: OUT/map_*.pt
    python scripts/train_mapping.py --stage import-gpu --gpu-results OUT --work work_data/mapping --version 2.0

Each candidate (``--jobs``) trains in its own process on the one GPU, as the paper did: phase 1 on every raw MOLLI
and T2-prepared frame plus the maps (``raw_train.npz`` + ``maps_train.npz``), phase 2 on the T1 and T2 maps only,
starting from phase 1's best weights; Jaccard loss; MONAI FlexibleUNet with a randomly initialised ResNet encoder
(no ImageNet weights can be downloaded); the cine trainer's GPU augmentation (affine, elastic, gamma, bias field,
contrast, noise), bf16. Phase 1 may use ``--phase1-share`` of the budget; both phases plan fewer epochs when the
measured pace cannot finish them in time, so each cosine schedule still ends. The validation patients' maps
(``maps_val.npz``, label-centred crops) choose the best epoch of each phase.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cine_gpu import (
    SEGMENTATION_AUGMENTATION,
    job_parser,
    load_part,
    run_parallel_jobs,
    save_results,
    train_model,
)

#: job -> (encoder, seed)
JOBS = {"resnet10": ("resnet10", 0), "resnet10_seed1": ("resnet10", 1), "resnet18": ("resnet18", 0)}


def flexible_kwargs(backbone: str) -> dict:
    """The map model's network: FlexibleUNet with a light decoder (the CPU trainer uses the same)."""
    return {"out_channels": 4, "backbone": backbone, "decoder_channels": (128, 64, 32, 16, 16)}


def concatenate(*parts: dict) -> dict:
    """Prepared parts stacked along the slice axis (same crop spec)."""
    joined = {key: torch.cat([p[key] for p in parts]) for key in ("images", "labels", "regions")}
    joined["spec"] = parts[0]["spec"]
    return joined


def run_job(job: str, args) -> None:
    backbone, seed = JOBS[job]
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    data, out = Path(args.data), Path(args.out)

    def log(message: str) -> None:
        print(f"{time.time() - args.started:7.1f}s [{job}] {message}", flush=True)

    maps_train = load_part(data / "maps_train.npz", device, args.limit)
    maps_val = load_part(data / "maps_val.npz", device, args.limit)
    common = {"network": "flexible_unet", "kwargs": flexible_kwargs(backbone), "val": maps_val,
              "task": "segmentation", "batch_size": args.batch_size, "seed": seed,
              "augmentation": SEGMENTATION_AUGMENTATION, "log": log, "loss_name": "jaccard", "fit_to_deadline": True}
    initial_state, phase1 = None, None
    if args.init_weights:  # fine-tune a trained model (train_mapping.py --stage prepare --init-from): no phase 1
        initial_state = torch.load(args.init_weights, map_location=device)["model"]
    elif args.raw_epochs > 0:
        both = concatenate(load_part(data / "raw_train.npz", device, args.limit), maps_train)
        phase1 = train_model(train=both, epochs=args.raw_epochs, learning_rate=1e-3,
                             deadline=args.started + args.phase1_share * args.budget, tag=f"{job} phase 1", **common)
        initial_state = phase1.pop("state")
    learning_rate = args.learning_rate or (5e-4 if initial_state else 1e-3)
    phase2 = train_model(train=maps_train, epochs=args.epochs, learning_rate=learning_rate,
                         deadline=args.started + args.budget, initial_state=initial_state, tag=f"{job} phase 2",
                         **common)
    phase2["phase1"] = phase1
    for path in save_results({f"map_myocardium_{job}": phase2}, out / f"map_{job}.pt"):
        log(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
    log(f"best val Dice {phase2['metric']:.4f} at epoch {phase2['best_epoch']} of {phase2['epochs_done']}")


def main(argv=None) -> int:
    parser = job_parser(__doc__, data="work_data/mapping", jobs=JOBS, budget=330.0)
    parser.add_argument("--raw-epochs", type=int, default=30, help="phase 1 epochs (raw frames + maps); 0: none")
    parser.add_argument("--epochs", type=int, default=600, help="phase 2 epochs (maps only)")
    parser.add_argument("--phase1-share", type=float, default=0.35, help="part of the budget phase 1 may use")
    parser.add_argument("--init-weights", help="trainer checkpoint (.pt, 'model' state dict) to fine-tune on the maps "
                                               "instead of phase 1 (train_mapping.py --stage prepare --init-from)")
    parser.add_argument("--learning-rate", type=float,
                        help="phase 2 learning rate (default 5e-4 after phase 1 or --init-weights, else 1e-3)")
    return run_parallel_jobs(__file__, argv, parser.parse_args(argv), JOBS, run_job)


if __name__ == "__main__":
    raise SystemExit(main())
