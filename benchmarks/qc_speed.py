"""Speed of QC (VAE latent search, and the CNN Dice regressor when installed) on held-out ACDC volumes.

    python benchmarks/qc_speed.py --qc-models Resources/Models [--threads 2] [--limit 6] [--predictor search]
                                  [--device cuda]

Prints a Markdown table. Times :func:`cardiac_ai.qc.assess_segmentation` as the commands run it (ROI, batched latent
search, predicted Dice from the regressor when the folder holds one and ``--predictor`` allows it, rules) on the ground
truth of the split's test patients (ED), once per volume after one warm-up call on the same volume, and scales each
time to 10 slices. Model loading is not included. Targets (issue 8): 1 s per 10-slice volume on CPU-2, 0.1 s on an
H100-class GPU.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part
from cardiac_ai.metrics import format_markdown_table
from cardiac_ai.models import ModelRegistry
from cardiac_ai.qc.assess import QC_PREDICTORS, QC_REGRESSOR_NAME, QCConfig, assess_segmentation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--qc-models", default="Resources/Models",
                        help="folder with a qc_vae model (and optionally a qc_dice_regressor)")
    parser.add_argument("--predictor", default="auto", choices=QC_PREDICTORS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=6, help="test patients timed")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    refs = list_acdc(args.data, phases=("ED",))
    registry = ModelRegistry(paths=[args.qc_models])
    model = registry.load("qc_vae", device=args.device)
    has_regressor = any(card.name == QC_REGRESSOR_NAME for card in registry.list())
    regressor = registry.load(QC_REGRESSOR_NAME, device=args.device) if has_regressor else None
    config = QCConfig(predictor=args.predictor)
    rows = []
    for ref in refs_in_part(refs, load_split(args.split), "test")[: args.limit]:
        case = load_case(ref)
        assess_segmentation(case.image, case.labels, model, device=args.device, config=config, regressor=regressor)
        started = time.perf_counter()
        result = assess_segmentation(case.image, case.labels, model, device=args.device, config=config,
                                     regressor=regressor)
        seconds = time.perf_counter() - started  # the results are NumPy arrays: the device has finished
        n_slices = case.image.array.shape[0]
        rows.append({"volume": ref.case_id, "slices": n_slices, "seconds": seconds,
                     "seconds per 10 slices": seconds / n_slices * 10})
    per10 = [r["seconds per 10 slices"] for r in rows]
    rows.append({"volume": "median", "slices": statistics.median(r["slices"] for r in rows),
                 "seconds": statistics.median(r["seconds"] for r in rows), "seconds per 10 slices": statistics.median(per10)})
    print(f"QC speed: qc_vae{' and ' + QC_REGRESSOR_NAME if has_regressor else ''} from {args.qc_models}, "
          f"predictor {result.predictor}, {args.threads} torch threads, device {args.device} "
          f"({torch.cuda.get_device_name(0) if args.device.startswith('cuda') else platform.machine()}), "
          f"{time.strftime('%Y-%m-%d')}\n")
    print(format_markdown_table(rows, digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
