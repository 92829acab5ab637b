"""Accuracy and speed of cine segmentation on held-out ACDC patients; prints Markdown tables.

    python benchmarks/cine_segmentation.py --data ../shared/data/acdc/training --models Resources/Models \
        [--part test] [--sampler-models DIR [DIR ...]] [--report docs/results/cine.md]

Variants: the baseline U-Net; the baseline trained with quadratic batch sampling (one per --sampler-models folder,
ratio from its card); the region-aware pipeline (region classifier + base/middle/apex models, each averaged with
the baseline: the default); the same with the region model alone (the paper's replacement); regions from the
baseline's segmentation; and the ground-truth regions (a perfect classifier: the upper bound).
Tables follow the paper (region-aware-basal-apical-segmentation.txt): Table 1 (Dice per region and label for the
baseline, Welch tests against the middle), Table 2 (classifier precision and recall per region), Table 3 (change of
mean and SD Dice at base and apex against the baseline, paired t-tests over slices).
"""
from __future__ import annotations

import argparse
import platform
import re
import warnings
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.io.seg_nrrd import write_seg_nrrd
from cardiac_ai.metrics import (
    cardiac_function,
    compare_regions,
    dice_per_label,
    dice_per_slice,
    format_markdown_table,
    format_region_comparison,
    hd95_mm,
    paired_t_test,
)
from cardiac_ai.metrics.regional import CardiacRegion, assign_slice_regions
from cardiac_ai.models import ModelRegistry
from cardiac_ai.regions import CineModels, segment_cine

from _output import emit_report  # benchmarks/_output.py, beside this script

STRUCTURES = {1: "RV", 2: "MYO", 3: "LV"}
REGIONS = {CardiacRegion.BASE: "base", CardiacRegion.MIDDLE: "middle", CardiacRegion.APEX: "apex"}


def _variants(args) -> dict[str, tuple[CineModels, str]]:
    registry = ModelRegistry(paths=[Path(args.models)])
    if args.baseline_only:
        full = CineModels.from_registry(registry, mode="baseline", device=args.device)
        return {"baseline": (full, "baseline")}
    full = CineModels.from_registry(registry, mode="region-aware", device=args.device)
    variants = {
        "baseline": (CineModels(full.localiser, full.baseline), "baseline"),
        "region-aware": (full, "region-aware"),
        "region-aware, region model alone (paper)": (full, "region-aware-replace"),
        "region-aware, regions from segmentation": (full, "region-aware-segmentation"),
        "region-aware, true regions": (full, "region-aware-oracle"),
    }
    for folder in args.sampler_models or []:
        sampler = ModelRegistry(paths=[Path(folder)]).load("cine_baseline", device=args.device)
        ratio = re.search(r"ratio (\d+)", sampler.card.training_data)
        label = f"batch sampling (ratio {ratio.group(1)})" if ratio else f"batch sampling ({Path(folder).name})"
        variants[label] = (CineModels(full.localiser, sampler), "baseline")
    return variants


def _slice_dices(pred: np.ndarray, true: np.ndarray, regions: np.ndarray) -> dict[tuple[int, int], list[float]]:
    per_slice = dice_per_slice(pred, true, labels=tuple(STRUCTURES))
    values: dict[tuple[int, int], list[float]] = {}
    for region in REGIONS:
        for n, code in enumerate(STRUCTURES):
            values[(int(region), code)] = [float(d) for d in per_slice[regions == region, n]]
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--models", default="Resources/Models")
    parser.add_argument("--sampler-models", nargs="+",
                        help="folders, each with a batch-sampling baseline (named cine_baseline; the ratio is read "
                             "from its card's training_data)")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--part", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--limit", type=int, help="only the first N patients (quick check)")
    parser.add_argument("--report", help="also write the tables to this Markdown file")
    parser.add_argument("--baseline-only", action="store_true", help="only the baseline U-Net (no classifier)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*exceeds end-diastolic volume.*")  # counted in the EF error

    refs = refs_in_part(list_acdc(args.data), load_split(args.split), args.part)
    patients = sorted({r.patient_id for r in refs})[: args.limit]
    refs = [r for r in refs if r.patient_id in patients]
    start = time.perf_counter()
    variants = _variants(args)
    load_seconds = time.perf_counter() - start
    timed = "region-aware" if "region-aware" in variants else "baseline"

    rows: dict[str, list[dict]] = {name: [] for name in variants}
    pairs: dict[str, list] = {name: [] for name in variants}
    slices: dict[str, dict] = {name: {} for name in variants}
    predictions: dict[str, dict] = {name: {} for name in variants}
    classifier_truth, classifier_argmax, classifier_decoded = [], [], []
    seconds_per_volume: list[float] = []
    truths = {}
    with tempfile.TemporaryDirectory() as scratch:
        for number, ref in enumerate(refs):
            case = load_case(ref)
            truth = case.labels.array
            truths[ref.case_id] = (case, ref)
            regions = assign_slice_regions(truth).astype(np.int8)
            for name, (models, mode) in variants.items():
                if name == timed:  # timed like the CLI: file in, outputs written
                    t0 = time.perf_counter()
                    volume = read_volume(ref.image_paths[0])
                    result = segment_cine(volume, models=models, mode=mode, device=args.device,
                                          base_first=None if mode == "region-aware" else True)
                    write_volume(result.labels, Path(scratch) / "labels.nii.gz")
                    write_seg_nrrd(result.labels, Path(scratch) / "segmentation.seg.nrrd")
                    seconds_per_volume.append(time.perf_counter() - t0)
                    if result.slice_region_probabilities is not None:
                        classifier_truth.extend(regions.tolist())
                        classifier_argmax.extend(np.argmax(result.slice_region_probabilities, axis=1).tolist())
                        classifier_decoded.extend(result.slice_regions.tolist())
                elif mode == "region-aware-replace":
                    result = segment_cine(case.image, models=models, mode="region-aware",
                                          region_combination="replace", device=args.device)
                elif mode == "region-aware-segmentation":
                    result = segment_cine(case.image, models=models, mode="region-aware",
                                          region_source="segmentation", device=args.device)
                elif mode == "region-aware-oracle":
                    result = segment_cine(case.image, models=models, mode="region-aware", slice_regions=regions,
                                          base_first=True, device=args.device)
                else:
                    result = segment_cine(case.image, models=models, mode="baseline", base_first=True,
                                          device=args.device)
                pred = result.labels.array
                predictions[name][ref.case_id] = pred
                dices = dice_per_label(pred, truth, labels=tuple(STRUCTURES))
                spacing = case.image.geometry.spacing_kji_mm
                row = {"case": ref.case_id, "phase": ref.metadata.get("phase", "")}
                for code, short in STRUCTURES.items():
                    row[f"dice_{short}"] = dices[code]
                    row[f"hd95_{short}"] = hd95_mm(pred == code, truth == code, spacing)
                rows[name].append(row)
                pairs[name].append((pred, truth))
                for key, values in _slice_dices(pred, truth, regions).items():
                    slices[name].setdefault(key, []).extend(values)
            print(f"[{number + 1}/{len(refs)}] {ref.case_id}", file=sys.stderr, flush=True)

    out: list[str] = []
    out.append(f"Patients: {len(patients)} ({args.part} part of {args.split}); volumes: {len(refs)} (ED and ES).")
    out.append(f"Machine: {platform.processor() or platform.machine()}, device {args.device}; "
               f"date {time.strftime('%Y-%m-%d')}.\n")

    out.append("### Dice and HD95 per structure (mean over volumes)\n")
    table = []
    for name in variants:
        for phase in ("ED", "ES", "all"):
            chosen = [r for r in rows[name] if phase == "all" or r["phase"] == phase]
            entry = {"variant": name, "phase": phase}
            for short in STRUCTURES.values():
                entry[f"Dice {short}"] = np.nanmean([r[f"dice_{short}"] for r in chosen])
            entry["Dice mean"] = np.mean([entry[f"Dice {s}"] for s in STRUCTURES.values()])
            for short in STRUCTURES.values():
                finite = [r[f"hd95_{short}"] for r in chosen if np.isfinite(r[f"hd95_{short}"])]
                entry[f"HD95 {short} (mm)"] = np.mean(finite) if finite else np.nan
            table.append(entry)
    out.append(format_markdown_table(table, digits=3))

    out.append("\n### Table 1: baseline Dice (%) per region (* p < 0.01 against middle, Welch)\n")
    out.append(format_region_comparison(compare_regions(pairs["baseline"], tuple(STRUCTURES))))
    for name in variants:
        if name != "baseline":
            out.append(f"\n{name}:\n")
            out.append(format_region_comparison(compare_regions(pairs[name], tuple(STRUCTURES))))

    if not classifier_truth:
        out.append("\n(Region classifier not evaluated: --baseline-only.)")
    if classifier_truth:
        out.append("\n### Table 2: region classifier, precision and recall per region\n")
        truth_regions = np.array(classifier_truth)
        table = []
        for label, guesses in (("independent argmax", classifier_argmax), ("monotonic decoding", classifier_decoded)):
            guesses = np.array(guesses)
            entry = {"decoding": label, "accuracy": float(np.mean(guesses == truth_regions))}
            for region in CardiacRegion:
                predicted, actual = guesses == region, truth_regions == region
                tp = np.count_nonzero(predicted & actual)
                entry[f"{region.name.lower()} P"] = tp / max(np.count_nonzero(predicted), 1)
                entry[f"{region.name.lower()} R"] = tp / max(np.count_nonzero(actual), 1)
            table.append(entry)
        out.append(format_markdown_table(table, digits=3))

    if len(variants) > 1:
        out.append("\n### Table 3: change against the baseline at base and apex, Dice percentage points: "
                   "mean (SD); positive = higher mean / lower SD; * p < 0.01 paired t-test over slices\n")
        table = []
        for name in variants:
            if name == "baseline":
                continue
            entry = {"variant": name}
            for region in (CardiacRegion.BASE, CardiacRegion.APEX):
                for code, short in STRUCTURES.items():
                    base_values = np.array(slices["baseline"][(int(region), code)])
                    values = np.array(slices[name][(int(region), code)])
                    # NaN = structure absent from truth and prediction (a correct empty slice): when only one
                    # variant has NaN it scored 1 there, and the other a false positive (0); both NaN: left out.
                    keep = np.isfinite(base_values) | np.isfinite(values)
                    base_values, values = np.nan_to_num(base_values, nan=1.0), np.nan_to_num(values, nan=1.0)
                    delta_mean = 100 * (values[keep].mean() - base_values[keep].mean())
                    delta_sd = 100 * (base_values[keep].std(ddof=1) - values[keep].std(ddof=1))
                    test = paired_t_test(values[keep], base_values[keep])
                    star = "*" if test.p < 0.01 else ""
                    entry[f"{REGIONS[region]} {short}"] = f"{delta_mean:+.2f}{star} ({delta_sd:+.2f})"
            table.append(entry)
        out.append(format_markdown_table(table))

    out.append("\n### Clinical indices: mean absolute error against the ground truth (per patient)\n")
    table = []
    for name in variants:
        errors = {"LV EF (points)": [], "RV EF (points)": [], "LV EDV (ml)": [], "LV mass (g)": []}
        for patient in patients:
            ed_id, es_id = f"{patient}_ED", f"{patient}_ES"
            if ed_id not in truths or es_id not in truths:
                continue
            (ed_case, _), (es_case, _) = truths[ed_id], truths[es_id]
            spacing_ed, spacing_es = ed_case.image.geometry.spacing_kji_mm, es_case.image.geometry.spacing_kji_mm
            true_fn = cardiac_function(ed_case.labels.array, es_case.labels.array, spacing_ed,
                                       es_spacing_kji_mm=spacing_es)
            pred_fn = cardiac_function(predictions[name][ed_id], predictions[name][es_id], spacing_ed,
                                       es_spacing_kji_mm=spacing_es)
            errors["LV EF (points)"].append(abs(pred_fn.lv_ef_percent - true_fn.lv_ef_percent))
            errors["RV EF (points)"].append(abs(pred_fn.rv_ef_percent - true_fn.rv_ef_percent))
            errors["LV EDV (ml)"].append(abs(pred_fn.lv_edv_ml - true_fn.lv_edv_ml))
            errors["LV mass (g)"].append(abs(pred_fn.lv_mass_g - true_fn.lv_mass_g))
        table.append({"variant": name, **{k: float(np.nanmean(v)) for k, v in errors.items()}})
    out.append(format_markdown_table(table, digits=2))

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.append(f"\n### Speed ({timed}, file to written outputs, models loaded once)\n")
    out.append(format_markdown_table([{
        "model loading (s, all variants)": load_seconds,
        "per volume median (s)": float(np.median(seconds_per_volume)),
        "per volume max (s)": float(np.max(seconds_per_volume)),
        "slices per volume (median)": float(np.median([truths[c][0].image.array.shape[0] for c in truths])),
        "peak memory (MB, whole benchmark)": peak_mb,
    }], digits=2))
    emit_report(out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
