"""Speed of ``cardiacai segment-cine`` on held-out ACDC frames, file to written outputs, model loading apart.

    python benchmarks/cine_speed.py [--device cuda] [--models DIR] [--limit 3] [--repeats 3] [--threads 2]

Prints a Markdown table. For each ED and ES frame of the first ``--limit`` test patients of the split, after one
warm-up run on the same frame, the median of ``--repeats`` timed runs of:

* ``segment``: read the NIfTI frame, ``segment_cine`` (region-aware, the default), write ``labels.nii.gz`` and
  ``segmentation.seg.nrrd`` (what ``benchmarks/cine_segmentation.py`` times on the CPU);
* ``command``: the whole command's job (``cardiac_ai.pipeline.segment_cine_file``): the same plus the default QC
  (``qc_dice_regressor`` and ``qc_vae`` when found), ``qc_slices.csv`` and ``report.json``, into a new folder.

Model loading (cine models, then QC models) is timed once, apart. Targets (cine issue): one ED volume of about 10
slices in at most 2 s on CPU-2 and 0.2 s on an H100-class GPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from cardiac_ai.datasets import list_acdc, load_split, refs_in_part
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.io.seg_nrrd import write_seg_nrrd
from cardiac_ai.metrics import format_markdown_table
from cardiac_ai.pipeline import (
    CineOptions,
    load_cine_models,
    qc_options,
    segment_cine_file,
)
from cardiac_ai.provenance import Provenance
from cardiac_ai.regions import segment_cine


def _synchronised(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training", help="ACDC layout (patientNNN folders)")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--models", default="Resources/Models", help="folder with the cine (and QC) models")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", default="region-aware", choices=["region-aware", "baseline"])
    parser.add_argument("--limit", type=int, default=3, help="test patients timed (ED and ES each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    refs = refs_in_part(list_acdc(args.data), load_split(args.split), "test")
    patients = sorted({r.patient_id for r in refs})[: args.limit]
    refs = [r for r in refs if r.patient_id in patients]
    if not refs:
        print(f"No test patient of {args.split} in {args.data}.", file=sys.stderr)
        return 2

    loading = Provenance(command="segment-cine")
    started = time.perf_counter()
    models = load_cine_models([args.models], mode=args.mode, device=args.device, provenance=loading)
    cine_loading = time.perf_counter() - started
    started = time.perf_counter()
    qc = qc_options([args.models], device=args.device, provenance=loading)
    qc_loading = time.perf_counter() - started
    options = CineOptions(mode=args.mode, device=args.device)

    def segment_once(path: Path, scratch: Path) -> None:
        volume = read_volume(path)
        result = segment_cine(volume, models=models, mode=args.mode, device=args.device)
        write_volume(result.labels, scratch / "labels.nii.gz")
        write_seg_nrrd(result.labels, scratch / "segmentation.seg.nrrd")

    stage_seconds: dict[str, list[float]] = {}

    qc_used: dict = {}

    def command_once(path: Path, scratch: Path, run: int) -> None:
        provenance = Provenance(command="segment-cine")
        segment_cine_file(path, scratch / f"run{run}", models=models, options=options, qc=qc, provenance=provenance)
        for stage, seconds in provenance.timings_s.items():
            stage_seconds.setdefault(stage, []).append(seconds)
        if not qc_used:  # what the command's QC predicted with, from its own report
            entry = json.loads((scratch / f"run{run}" / "report.json").read_text()).get("qc")
            qc_used["predictor"] = "none" if not entry else entry["predictor"] + (
                " (with the VAE encoder)" if entry["search"].get("encoder_only") else "")

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        run = 0
        for ref in refs:
            path = Path(ref.image_paths[0])
            row = {"frame": ref.case_id, "slices": read_volume(path).array.shape[0]}
            for name in ("segment", "command"):
                seconds = []
                for attempt in range(args.repeats + 1):  # the first run warms up
                    run += 1
                    _synchronised(args.device)
                    t0 = time.perf_counter()
                    if name == "segment":
                        segment_once(path, scratch)
                    else:
                        command_once(path, scratch, run)
                    _synchronised(args.device)
                    if attempt:
                        seconds.append(time.perf_counter() - t0)
                row[f"{name} (s)"] = statistics.median(seconds)
            rows.append(row)
            print(f"{ref.case_id}: {row}", file=sys.stderr, flush=True)
    rows.append({"frame": "median", "slices": statistics.median(r["slices"] for r in rows),
                 **{key: statistics.median(r[key] for r in rows) for key in ("segment (s)", "command (s)")}})
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else (
        platform.processor() or platform.machine())
    print(f"segment-cine speed ({args.mode}), device {args.device} ({device_name}), {args.threads} torch threads, "
          f"{time.strftime('%Y-%m-%d')}; model loading: cine {cine_loading:.2f} s, QC {qc_loading:.2f} s "
          f"(QC: {qc_used.get('predictor', 'not run')}); "
          f"median of {args.repeats} runs after one warm-up\n")
    print(format_markdown_table(rows, digits=3))
    print("\nWhere the command's time goes (median over every run, warm-ups included; seconds):\n")
    print(format_markdown_table([{"stage": stage, "seconds": statistics.median(values)}
                                 for stage, values in stage_seconds.items()], digits=4))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
