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

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_cine_gpu import SEGMENTATION_AUGMENTATION, load_part, save_results, train_model

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
    if args.raw_epochs > 0:
        both = concatenate(load_part(data / "raw_train.npz", device, args.limit), maps_train)
        phase1 = train_model(train=both, epochs=args.raw_epochs, learning_rate=1e-3,
                             deadline=args.started + args.phase1_share * args.budget, tag=f"{job} phase 1", **common)
        initial_state = phase1.pop("state")
    phase2 = train_model(train=maps_train, epochs=args.epochs, learning_rate=5e-4 if initial_state else 1e-3,
                         deadline=args.started + args.budget, initial_state=initial_state, tag=f"{job} phase 2",
                         **common)
    phase2["phase1"] = phase1
    for path in save_results({f"map_myocardium_{job}": phase2}, out / f"map_{job}.pt"):
        log(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB)")
    log(f"best val Dice {phase2['metric']:.4f} at epoch {phase2['best_epoch']} of {phase2['epochs_done']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="work_data/mapping", help="folder of maps_*.npz and raw_train.npz")
    parser.add_argument("--out", required=True, help="folder for the .pt results")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--raw-epochs", type=int, default=30, help="phase 1 epochs (raw frames + maps); 0: none")
    parser.add_argument("--epochs", type=int, default=600, help="phase 2 epochs (maps only)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--budget", type=float, default=330.0, help="seconds until every job stops")
    parser.add_argument("--phase1-share", type=float, default=0.35, help="part of the budget phase 1 may use")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="about this many slices per part (smoke runs)")
    parser.add_argument("--started", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.started = args.started or time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.job:
        run_job(args.job, args)
        return 0
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}", flush=True)
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--jobs" and a not in JOBS]
    processes = {job: subprocess.Popen([sys.executable, __file__, *forwarded, "--job", job,
                                        "--started", str(args.started)]) for job in args.jobs}
    failed = [job for job, process in processes.items() if process.wait() != 0]
    print(f"done in {time.time() - args.started:.0f} s; failed jobs: {failed or 'none'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
