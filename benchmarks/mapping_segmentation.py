"""Accuracy and speed of myocardium segmentation and statistics on semi-synthetic T1 and T2 maps; Markdown tables.

    python benchmarks/mapping_segmentation.py --dataset work_data/mapping/dataset --models work_data/mapping/models \
        [--compare-models work_data/mapping/models_unet] [--part validation] [--limit N] [--report FILE]

The data set is the one ``scripts/train_mapping.py`` builds (``cardiac_ai.mapping.build_mapping_dataset``: one
case per ACDC patient, base / mid / apex slices). For each case of ``--part`` and each map type (T1, T2):

* **Segmentation** (Table 1 here): myocardium Dice, Hausdorff distance and mean surface distance (mm), per slice,
  between the labels written by ``cardiacai map`` (redrawn from the fitted contours) and the ground truth (the
  resampled ACDC labels), summarised per slice level and map type. Targets (issue 5): Dice >= 0.88, Hausdorff <= 4 mm.
* **Median myocardial T1 / T2**: relative error of the per-slice median inside the fitted contours (no erosion)
  against the truth ``truth["t1_myocardium_median_ms"]`` / ``truth["t2_myocardium_median_ms"]``: the median over the
  ground-truth myocardium of the *noise-free* map (with the same partial volume as the map). Targets: T1 within 1.5 %,
  T2 within 3 %. A second column gives the same error for the conservative ROI that the SCMR consensus recommends
  (the myocardium eroded by ``--erosion-mm``, default 2 mm: ``cardiacai map --erosion-mm 2``).
* **Fitted maps**: ``fit_molli`` / ``fit_t2`` on the raw series, inside the ground-truth myocardium: median absolute
  % error against the scanner-like map (the true map plus mild noise: ``t1_map_ms``), and error of the fitted
  median against the noise-free truth median above.
* **Table 8 ablation**: Hausdorff distance (mm) of the endo- and epicardial contours of the network's labels after
  each contour step (Teh-Chin, + B-spline, + filtering, + convex hull) against the full pipeline on the truth
  (:func:`cardiac_ai.mapping.contour_step_hausdorff`).
* **Speed**: ``--speed-slices`` map slices (default 100) from NIfTI file to contours and statistics
  (``read_volume`` + ``analyse_map``), models loaded once, with the seconds of each stage summed over the files.
  Target: 5 s on the CPU, 0.5 s on a GPU. ``--speed-workers N ...`` adds a row per N: the same files shared out
  among N warm worker processes (each loads its models and analyses one file before the clock starts; their
  start-up is given apart), the throughput ``cardiacai batch --workers N`` gives a cohort.

``--compare-models``: a second model folder (e.g. the plain U-Net) for the paper's Table 6 comparison.
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cardiac_ai.io import read_json, read_volume, write_volume
from cardiac_ai.mapping import (
    MappingModels,
    TABLE8_STAGES,
    analyse_map,
    contour_step_hausdorff,
    fit_molli,
    fit_t2,
    load_mapping_case,
    segment_map,
)
from cardiac_ai.metrics import dice_per_slice, format_markdown_table
from cardiac_ai.metrics.surface import hausdorff_mm, mean_surface_distance_mm
from cardiac_ai.models import ModelRegistry

from _output import emit_report  # benchmarks/_output.py, beside this script

KINDS = ("t1", "t2")


def _cases(dataset: Path, part: str, limit: int | None):
    index_path = dataset / "index.json"
    if index_path.exists():
        files = [dataset / e["file"] for e in read_json(index_path)["cases"] if e["part"] == part]
    else:
        files = sorted((dataset / part).glob("*.npz"))
    return files[:limit]


def _nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _eroded_median_error(values, myocardium, spacing_ji, erosion_mm: float, true_median: float) -> float:
    """|median over the myocardium eroded by erosion_mm - truth| / truth in %, NaN where nothing is left."""
    from cardiac_ai.errors import InputError
    from cardiac_ai.mapping.statistics import myocardial_statistics

    if not myocardium.any():
        return float("nan")
    try:
        stats = myocardial_statistics(values, myocardium, erosion_mm=erosion_mm, spacing_ji_mm=spacing_ji)
    except InputError:
        return float("nan")
    return 100 * abs(stats.median - true_median) / true_median


def _evaluate_models(name: str, models: MappingModels, files, device: str,
                     erosion_mm: float = 2.0) -> tuple[list[dict], list[dict]]:
    """Per-slice rows (segmentation and medians) and Table 8 rows of one model over the cases."""
    rows, ablation = [], []
    for path in files:
        case = load_mapping_case(path)
        truth = case.labels.array
        spacing = case.labels.geometry.spacing_kji_mm
        for kind in KINDS:
            volume = case.t1_map_ms if kind == "t1" else case.t2_map_ms
            result = analyse_map(volume, kind=kind, models=models, device=device)
            pred = result.labels.array
            dices = dice_per_slice(pred, truth, labels=(2,))[:, 0]
            hd = hausdorff_mm(pred == 2, truth == 2, spacing, per_slice=True)
            msd = mean_surface_distance_mm(pred == 2, truth == 2, spacing, per_slice=True)
            for k, level in enumerate(result.levels):
                true_median = case.truth[f"{kind}_myocardium_median_ms"][k]
                stats = result.slices[k]
                rows.append({
                    "model": name, "case": case.patient_id, "kind": kind, "level": level, "dice": dices[k],
                    "hd": hd[k], "msd": msd[k],
                    "median_error_percent": np.nan if stats is None else
                    100 * abs(stats.median - true_median) / true_median,
                    "eroded_median_error_percent": _eroded_median_error(
                        volume.array[k], pred[k] == 2, spacing[1:], erosion_mm, true_median),
                    "no_myocardium": stats is None,
                })
            network = segment_map(volume, kind=kind, models=models, device=device).array
            for k in range(network.shape[0]):
                steps = contour_step_hausdorff(network[k], truth[k], spacing[1:])
                for stage, distances in steps.items():
                    ablation.append({"model": name, "kind": kind, "stage": stage, **distances})
        print(f"{name}: {case.patient_id}", file=sys.stderr, flush=True)
    return rows, ablation


def _fit_rows(files) -> list[dict]:
    rows = []
    for path in files:
        case = load_mapping_case(path)
        myocardium = case.labels.array == 2
        for kind, series, times, scanner in (
            ("T1 (MOLLI)", case.molli, case.inversion_times_ms, case.t1_map_ms.array),
            ("T2 (T2-prep)", case.t2prep, case.t2prep_times_ms, case.t2_map_ms.array),
        ):
            fitted = (fit_molli(series, times, mask=myocardium) if kind.startswith("T1")
                      else fit_t2(series, times, mask=myocardium))
            values = fitted.t1_ms if kind.startswith("T1") else fitted.t2_ms
            key = "t1_myocardium_median_ms" if kind.startswith("T1") else "t2_myocardium_median_ms"
            for k in range(values.shape[0]):
                inside = myocardium[k] & np.isfinite(values[k]) & (scanner[k] > 0)
                pixel_error = 100 * np.abs(values[k][inside] - scanner[k][inside]) / scanner[k][inside]
                true_median = case.truth[key][k]
                rows.append({
                    "kind": kind, "level": case.truth["levels"][k],
                    "pixel_error": float(np.median(pixel_error)) if pixel_error.size else np.nan,
                    "median_error": 100 * abs(float(np.nanmedian(values[k][myocardium[k]])) - true_median)
                    / true_median,
                    "failed_percent": 100 * float(np.mean(~np.isfinite(values[k][myocardium[k]]))),
                })
    return rows


def _speed_files(files, n_slices: int, scratch: Path) -> list[tuple[Path, str]]:
    """NIfTI files of the cases' T1 and T2 maps (alternating), reused until ``n_slices`` slices."""
    paths, total = [], 0
    while total < n_slices:
        for path in files:
            if total >= n_slices:
                break
            case = load_mapping_case(path)
            volume = case.t1_map_ms if len(paths) % 2 == 0 else case.t2_map_ms
            keep = min(volume.array.shape[0], n_slices - total)
            target = scratch / f"map{len(paths):03d}.nii.gz"
            write_volume(volume.with_array(volume.array[:keep]), target)
            paths.append((target, "t1" if len(paths) % 2 == 0 else "t2"))
            total += keep
    return paths


def _analyse_file(target: Path, kind: str, models: MappingModels, device: str) -> dict[str, float]:
    """``cardiacai map``'s work on one file, file to contours and statistics; seconds per stage."""
    start = time.perf_counter()
    volume = read_volume(target)
    read = time.perf_counter() - start
    levels = ("base", "mid", "apex")[: volume.array.shape[0]] if volume.array.shape[0] <= 3 else None
    result = analyse_map(volume, kind=kind, models=models, device=device, levels=levels)
    return {"read": read, **result.provenance.timings_s}


def _speed(models: MappingModels, files, n_slices: int, device: str) -> dict:
    """One process: the files one after the other, models loaded once (apart)."""
    with tempfile.TemporaryDirectory() as scratch:
        paths = _speed_files(files, n_slices, Path(scratch))
        _analyse_file(*paths[0], models, device)  # warm-up
        start = time.perf_counter()
        stages = [_analyse_file(target, kind, models, device) for target, kind in paths]
        seconds = time.perf_counter() - start
    return _speed_summary(len(paths), n_slices, seconds, stages, workers=1)


def _speed_summary(n_files: int, n_slices: int, seconds: float, stages, *, workers: int) -> dict:
    row = {"workers": workers, "slices": n_slices, "files": n_files, "seconds": seconds,
           "ms per slice": 1000 * seconds / n_slices}
    for stage in ("read", "segment", "contours", "statistics"):
        row[f"{stage} (s, all files)"] = sum(s.get(stage, 0.0) for s in stages)
    row["worker start-up (s, apart)"] = None
    return row


_worker_models: dict = {}


def _start_speed_worker(models_dir: str, device: str, threads: int, warm_up: tuple, ready) -> None:
    """Pool initialiser: models loaded, one warm-up analysis, then wait until every worker is as far."""
    import torch

    torch.set_num_threads(threads)
    _worker_models["models"] = MappingModels.from_registry(ModelRegistry(paths=[Path(models_dir)]), device=device)
    _worker_models["device"] = device
    _analyse_file(*warm_up, _worker_models["models"], device)
    ready.wait(timeout=600)


def _analyse_in_worker(target: Path, kind: str) -> dict[str, float]:
    return _analyse_file(target, kind, _worker_models["models"], _worker_models["device"])


def _speed_workers(models_dir: Path, files, n_slices: int, device: str, workers: int) -> dict:
    """``workers`` warm processes (each with its own models, started and warmed up before the clock starts, as
    model loading is apart), the files shared out among them: the throughput of ``cardiacai batch --workers``."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")
    threads = max(1, (os.cpu_count() or 1) // workers)
    with tempfile.TemporaryDirectory() as scratch:
        paths = _speed_files(files, n_slices, Path(scratch))
        ready = context.Barrier(workers)
        started = time.perf_counter()
        with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_speed_worker,
                                 initargs=(str(models_dir), device, threads, paths[0], ready)) as pool:
            wait([pool.submit(time.sleep, 0.0) for _ in range(workers)])  # one each: every worker started
            start_up = time.perf_counter() - started
            start = time.perf_counter()
            stages = [future.result() for future in [pool.submit(_analyse_in_worker, *p) for p in paths]]
            seconds = time.perf_counter() - start
    row = _speed_summary(len(paths), n_slices, seconds, stages, workers=workers)
    row["worker start-up (s, apart)"] = start_up
    return row


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="work_data/mapping/dataset")
    parser.add_argument("--models", default="work_data/mapping/models", help="folder holding map_myocardium")
    parser.add_argument("--compare-models", help="second folder holding a map_myocardium (e.g. the plain U-Net)")
    parser.add_argument("--part", default="validation", choices=["train", "validation", "test"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="only the first N cases (quick check)")
    parser.add_argument("--speed-slices", type=int, default=100)
    parser.add_argument("--speed-workers", type=int, nargs="*", default=[], metavar="N",
                        help="also time the speed files shared out among N warm worker processes (one row per N)")
    parser.add_argument("--speed-only", action="store_true",
                        help="only the speed row (e.g. on a lent GPU, with a few cases of the part carried there)")
    parser.add_argument("--report", help="also write the tables to this Markdown file")
    parser.add_argument("--erosion-mm", type=float, default=2.0,
                        help="erosion of the conservative-ROI median column (cardiacai map --erosion-mm)")
    args = parser.parse_args()

    files = _cases(Path(args.dataset), args.part, args.limit)
    if not files:
        print(f"No mapping cases of part {args.part!r} in {args.dataset}.", file=sys.stderr)
        return 2
    variants = {"main": Path(args.models)}
    if args.compare_models:
        variants["compare"] = Path(args.compare_models)
    loaded = {}
    for name, folder in variants.items():
        models = MappingModels.from_registry(ModelRegistry(paths=[folder]), device=args.device)
        label = f"{models.segmenter.card.network} ({folder})"
        loaded[label] = models
    if args.speed_only:
        label, models = next(iter(loaded.items()))
        speed = [_speed(models, files, args.speed_slices, args.device)]
        speed += [_speed_workers(variants["main"], files, args.speed_slices, args.device, n)
                  for n in args.speed_workers]
        out = [f"Speed on device {args.device} ({_device_name(args.device)}), {len(files)} case files of "
               f"{args.dataset} reused until {args.speed_slices} slices; {label}; date {time.strftime('%Y-%m-%d')}.\n",
               format_markdown_table(speed, digits=3)]
        emit_report(out, args.report)
        return 0
    rows, ablation = [], []
    for label, models in loaded.items():
        model_rows, model_ablation = _evaluate_models(label, models, files, args.device, args.erosion_mm)
        rows += model_rows
        ablation += model_ablation

    out = [f"Cases: {len(files)} ({args.part} part of {args.dataset}); device {args.device}; "
           f"machine {platform.processor() or platform.machine()}; date {time.strftime('%Y-%m-%d')}.\n"]
    out.append("### Myocardium segmentation per slice level and map type (mean over slices)\n")
    out.append("Dice, Hausdorff (HD) and mean surface distance (MSD) of the contour-derived myocardium against the "
               "resampled ACDC labels; median error: |median inside contours - truth| / truth, truth = median of the "
               "noise-free map over the true myocardium. Targets: Dice >= 0.88, HD <= 4 mm, T1 <= 1.5 %, "
               "T2 <= 3 %.\n")
    table = []
    for label in loaded:
        for kind in KINDS:
            for level in ("base", "mid", "apex", "all"):
                chosen = [r for r in rows if r["model"] == label and r["kind"] == kind
                          and (level == "all" or r["level"] == level)]
                table.append({
                    "model": label, "map": kind.upper(), "level": level, "slices": len(chosen),
                    "Dice": _nanmean([r["dice"] for r in chosen]),
                    "HD (mm)": _nanmean([r["hd"] for r in chosen]),
                    "MSD (mm)": _nanmean([r["msd"] for r in chosen]),
                    "median error (%)": _nanmean([r["median_error_percent"] for r in chosen]),
                    f"median error, ROI eroded {args.erosion_mm:g} mm (%)":
                        _nanmean([r["eroded_median_error_percent"] for r in chosen]),
                    "slices without myocardium": sum(r["no_myocardium"] for r in chosen),
                })
    out.append(format_markdown_table(table, digits=3))

    out.append("\n### Table 8: contour Hausdorff distance (mm) after each step (network labels vs. truth)\n")
    table = []
    for label in loaded:
        for kind in KINDS:
            entry = {"model": label, "map": kind.upper()}
            for stage, _ in TABLE8_STAGES:
                chosen = [a for a in ablation if a["model"] == label and a["kind"] == kind and a["stage"] == stage]
                entry[f"{stage} endo"] = _nanmean([a["endocardium"] for a in chosen])
                entry[f"{stage} epi"] = _nanmean([a["epicardium"] for a in chosen])
            table.append(entry)
    out.append(format_markdown_table(table, digits=2))

    out.append("\n### Fitted maps against the known truth (inside the true myocardium)\n")
    fit_rows = _fit_rows(files)
    table = []
    for kind in ("T1 (MOLLI)", "T2 (T2-prep)"):
        for level in ("base", "mid", "apex", "all"):
            chosen = [r for r in fit_rows if r["kind"] == kind and (level == "all" or r["level"] == level)]
            table.append({
                "map": kind, "level": level,
                "median |fit - scanner map| (%)": _nanmean([r["pixel_error"] for r in chosen]),
                "|fitted median - truth| (%)": _nanmean([r["median_error"] for r in chosen]),
                "failed pixels (%)": _nanmean([r["failed_percent"] for r in chosen]),
            })
    out.append(format_markdown_table(table, digits=2))

    label, models = next(iter(loaded.items()))
    speed = _speed(models, files, args.speed_slices, args.device)
    out.append(f"\n### Speed: map slices from file to contours and statistics ({label})\n")
    out.append(format_markdown_table([speed], digits=3))
    emit_report(out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
