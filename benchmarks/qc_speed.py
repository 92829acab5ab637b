"""Speed of generative QC (VAE latent search) on held-out ACDC volumes; prints a Markdown table.

    python benchmarks/qc_speed.py --qc-models work_data/qc_aug/models [--threads 2] [--limit 6]

Times :func:`cardiac_ai.qc.assess_segmentation` (ROI, batched latent search, predicted Dice, rules) on the ground
truth of the split's test patients (ED), once per volume after one warm-up call on the same volume, and scales each
time to 10 slices. Model loading is not included. Target (issue 8): 1 s per 10-slice volume on CPU-2.
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
from cardiac_ai.qc.assess import assess_segmentation


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--qc-models", default="work_data/qc/models", help="folder with a qc_vae model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=6, help="test patients timed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    refs = list_acdc(args.data, phases=("ED",))
    model = ModelRegistry(paths=[args.qc_models]).load("qc_vae", device="cpu")
    rows = []
    for ref in refs_in_part(refs, load_split(args.split), "test")[: args.limit]:
        case = load_case(ref)
        assess_segmentation(case.image, case.labels, model, device="cpu")
        started = time.perf_counter()
        assess_segmentation(case.image, case.labels, model, device="cpu")
        seconds = time.perf_counter() - started
        n_slices = case.image.array.shape[0]
        rows.append({"volume": ref.case_id, "slices": n_slices, "seconds": seconds,
                     "seconds per 10 slices": seconds / n_slices * 10})
    per10 = [r["seconds per 10 slices"] for r in rows]
    rows.append({"volume": "median", "slices": statistics.median(r["slices"] for r in rows),
                 "seconds": statistics.median(r["seconds"] for r in rows), "seconds per 10 slices": statistics.median(per10)})
    print(f"QC speed: qc_vae from {args.qc_models}, {args.threads} torch threads, {platform.machine()}, "
          f"{time.strftime('%Y-%m-%d')}\n")
    print(format_markdown_table(rows, digits=3))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
