"""Segmentation quality control on held-out ACDC patients: predicted against true Dice; prints Markdown tables.

    python benchmarks/qc_evaluation.py --data ../shared/data/acdc/training --qc-models work_data/qc/models \
        --cine-models work_data/cine/models [--phases ED] [--report docs/results/qc.md --figure docs/results/qc.png]
    python benchmarks/qc_evaluation.py --limit 1 --search-steps 5 --noise-variances 0 0.1 --levels 0.5  # quick

Poor segmentations of the split's TEST patients (never seen by any model), three kinds:

(a) ``noise_attack``: the cine models (``--cine-mode``, region-aware by default) on images attacked with white noise of
    graded variance (``cardiac_ai.qc.add_noise_to_image``; 0 = the clean image), so that the true Dice spreads over
    [0, 1], as the paper's UK Biobank experiment. The QC sees the *clean* image with the segmentation.
(b) another domain, the cine models on images they were not trained on, and the QC on those images:
    ``t1_map`` / ``t2_map``: the semi-synthetic T1 and T2 maps of the mapping data set
    (``cardiac_ai.mapping.make_mapping_case`` on each test patient's ED frame: 3 slices, other pixel size, other
    contrast; labels are the ACDC ground truth resampled). This is the only other labelled cardiac modality available
    here and stands in for the paper's ACDC experiment (a model deployed on another scanner without fine-tuning).
    ``gamma``: the cine images with a gamma transform of their intensities (``--gammas``), a contrast change as
    between scanners or sequence settings, keeping ACDC's exact ground truth. Intensity inversion (``--invert``) is
    off by default: the cine models then find no heart at all, giving true Dice 0 everywhere and no spread (the rule
    checks catch an empty segmentation anyway). EMIDEC is not used: its PNGs have no pixel spacing and no RV label.
(c) synthetic corruptions of the ground truth (``cardiac_ai.qc.training.corrupt_labels``): shift, erosion, dilation,
    holes, missing slices at ``--levels``.

For every case four QC methods: VAE latent search (Wang et al., Algorithm 1, ``--search-steps``), the VAE encoder
only (no search), the CNN Dice regressor (Robinson et al. 2018) and the rule checks (``cardiac_ai.qc.check_rules``,
pass/fail only). Predicted against true Dice per slice and structure (slices where the segmentation or the truth
shows the structure): Pearson r and MAE per kind and overall (the paper's Table 1), and per volume for the
myocardium (the paper's unit); flagging accuracy at true Dice < ``--flag-threshold`` for all four; a scatter plot
with the identity line (Figure 3); timing of the QC of a volume with the full search (models loaded once, apart);
and the ablation (Table A1) from ``scripts/train_qc.py --stage ablation``'s results.

Note on fairness: the regressor was trained on synthetic corruptions and noise attacks of the training patients, so
kinds (a) and (c) are failure types it has seen (on other patients); kind (b) is new to it. The VAE saw only
ground-truth pairs.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part
from cardiac_ai.device import resolve_device
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.io import write_csv
from cardiac_ai.labels import LV_MYOCARDIUM
from cardiac_ai.metrics import format_markdown_table
from cardiac_ai.metrics.overlap import dice, dice_per_slice
from cardiac_ai.models import ModelRegistry
from cardiac_ai.qc import (
    QCConfig,
    assess_segmentation,
    check_rules,
    latent_search,
    predicted_dice,
    qc_input,
    regressor_combination,
)
from cardiac_ai.qc.training import (
    CORRUPTION_KINDS,
    PoorSegmentation,
    attacked_segmentations,
    corrupt_labels,
    evaluate_dice_prediction,
)

from _output import emit_report  # benchmarks/_output.py, beside this script

STRUCTURES = {1: "RV", 2: "MYO", 3: "LV"}
METHODS = {"vae": "VAE search", "encoder": "VAE encoder only", "cnn": "CNN regression",
           "mean": "mean of CNN and VAE search", "combined": "CNN and search combined (card)",
           "combined_encoder": "CNN and encoder combined (card)"}
GROUPS = {"noise_attack": "a", "t1_map": "b", "t2_map": "b", "gamma": "b", "inverted": "b",
          **{kind: "c" for kind in CORRUPTION_KINDS}}
GROUP_NAMES = {"a": "(a) noise attack", "b": "(b) other domain", "c": "(c) synthetic"}
COLOURS = {"a": "tab:blue", "b": "tab:orange", "c": "tab:green"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--part", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--phases", nargs="+", default=["ED"], choices=["ED", "ES"],
                        help="frames (the paper: ED); the mapping cases are made from ED frames only")
    parser.add_argument("--limit", type=int, help="only the first N patients (quick check)")
    parser.add_argument("--qc-models", default="work_data/qc/models", help="folder with qc_vae and qc_dice_regressor")
    parser.add_argument("--cine-models", default="work_data/cine/models", help="registry folder of the cine models")
    parser.add_argument("--cine-mode", default="region-aware", choices=["region-aware", "baseline"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-steps", type=int, default=100)
    parser.add_argument("--noise-variances", type=float, nargs="+",
                        default=[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5])
    parser.add_argument("--gammas", type=float, nargs="*", default=[0.4, 2.5])
    parser.add_argument("--no-maps", action="store_true", help="skip the T1/T2 maps of kind (b)")
    parser.add_argument("--invert", action="store_true", help="also intensity-inverted cine images in kind (b)")
    parser.add_argument("--kinds", nargs="*", default=list(CORRUPTION_KINDS), choices=list(CORRUPTION_KINDS))
    parser.add_argument("--levels", type=float, nargs="+", default=[0.25, 0.5, 0.8],
                        help="corruption levels of kind (c), in [0, 1]")
    parser.add_argument("--flag-threshold", type=float, default=0.8)
    parser.add_argument("--ablation", default="work_data/qc/ablation/results.json",
                        help="results.json of scripts/train_qc.py --stage ablation")
    parser.add_argument("--report", help="also write the tables to this Markdown file")
    parser.add_argument("--figure", help="scatter plot PNG (default: beside --report, else qc_scatter.png)")
    parser.add_argument("--csv", help="per-slice predictions as CSV")
    return parser.parse_args(argv)


def gamma_image(image: np.ndarray, gamma: float) -> np.ndarray:
    """Intensities mapped through x ** gamma between their 0.5 and 99.5 percentiles (range kept)."""
    low, high = np.percentile(image, (0.5, 99.5))
    x = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    return (low + x ** gamma * (high - low)).astype(np.float32)


def poor_cases(case, args, cine_models, device) -> list[PoorSegmentation]:
    """Every poor segmentation of one test frame: kinds (a), (b) and (c)."""
    from cardiac_ai.regions import segment_cine

    items: list[PoorSegmentation] = []
    base_first = None if args.cine_mode == "region-aware" else True

    def segmented(kind: str, level: float, image: Volume, truth: Volume) -> PoorSegmentation:
        result = segment_cine(image, models=cine_models, mode=args.cine_mode, base_first=base_first, device=device)
        return PoorSegmentation(case.case_id, kind, level, image, result.labels, truth)

    if cine_models is not None:
        items += attacked_segmentations(case, args.noise_variances, cine_models=cine_models, mode=args.cine_mode,
                                        seed=args.seed, device=device)
        if not args.no_maps and case.metadata.get("phase") == "ED":
            from cardiac_ai.mapping import make_mapping_case

            mapping = make_mapping_case(case, seed=args.seed)
            items.append(segmented("t1_map", 0.0, mapping.t1_map_ms, mapping.labels))
            items.append(segmented("t2_map", 0.0, mapping.t2_map_ms, mapping.labels))
        for gamma in args.gammas:
            image = case.image.with_array(gamma_image(case.image.array, gamma))
            items.append(segmented("gamma", gamma, image, case.labels))
        if args.invert:
            array = case.image.array
            items.append(segmented("inverted", 1.0, case.image.with_array((array.max() - array).astype(np.float32)),
                                   case.labels))
    for number, kind in enumerate(args.kinds):
        for level in args.levels:
            corrupted = corrupt_labels(case.labels, kind, level, seed=args.seed + number)
            items.append(PoorSegmentation(case.case_id, kind, level, case.image, corrupted, case.labels))
    return items


def volume_dice(surrogate: np.ndarray, given: np.ndarray) -> float:
    """Dice of two (n, j, i) masks over the whole stack (both empty: 1, as predicted_dice)."""
    total = np.count_nonzero(surrogate) + np.count_nonzero(given)
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(surrogate & given) / total


def qc_one(item: PoorSegmentation, vae, regressor, args, device) -> tuple[list[dict], dict, dict]:
    """Slice rows, one volume row and timings of every QC method on one segmentation (``regressor``: the loaded
    model, whose card gives the slices it assesses, or None)."""
    times = {}
    started = time.perf_counter()
    pairs, _ = qc_input(item.image, item.labels)
    search = latent_search(vae, pairs, steps=args.search_steps, device=device)
    searched = predicted_dice(search.surrogate, pairs[:, 1:])
    times["search"] = time.perf_counter() - started
    started = time.perf_counter()
    encoder = latent_search(vae, pairs, steps=0, device=device)
    encoded = predicted_dice(encoder.surrogate, pairs[:, 1:])
    times["encoder"] = time.perf_counter() - started
    regressed = regressed_volume = combined = combined_volume = encoder_combined = encoder_combined_volume = None
    if regressor is not None:
        # what QC reports (the product's own calls; the search column above is the benchmark's own, on every slice)
        started = time.perf_counter()
        reported = assess_segmentation(item.image, item.labels, vae, regressor=regressor, surrogate_wanted=False,
                                       device=device, config=QCConfig(predictor="regressor"))
        regressed, regressed_volume = reported.slice_dice, reported.volume_dice
        times["cnn"] = time.perf_counter() - started
        if regressor_combination(regressor, len(STRUCTURES), encoder_only=True) is not None:
            started = time.perf_counter()  # what the segmenting commands report: no search, the encoder's Dice
            quick = assess_segmentation(item.image, item.labels, vae, regressor=regressor, surrogate_wanted=False,
                                        device=device)
            encoder_combined, encoder_combined_volume = quick.slice_dice, quick.volume_dice
            times["combined_encoder"] = time.perf_counter() - started
        if regressor_combination(regressor, len(STRUCTURES)) is not None:
            started = time.perf_counter()
            both = assess_segmentation(item.image, item.labels, vae, regressor=regressor, device=device,
                                       config=QCConfig(steps=args.search_steps, predictor="combined"))
            combined, combined_volume = both.slice_dice, both.volume_dice
            times["combined"] = time.perf_counter() - started
    started = time.perf_counter()
    labels, truth = np.asarray(item.labels.array), np.asarray(item.truth.array)
    rules = check_rules(labels, item.labels.geometry.spacing_mm)
    times["rules"] = time.perf_counter() - started
    rule_flags = rules.slice_flags | (len(rules.volume_reasons) > 0)

    true = dice_per_slice(labels, truth, tuple(STRUCTURES), empty_value=np.nan)
    shown = np.any(np.isin(labels, tuple(STRUCTURES)), axis=(1, 2)) | np.any(np.isin(truth, tuple(STRUCTURES)),
                                                                            axis=(1, 2))
    rows = []
    for k in np.flatnonzero(shown):
        for n, short in enumerate(STRUCTURES.values()):
            rows.append({
                "case": item.case_id, "group": GROUPS.get(item.kind, "?"), "kind": item.kind, "level": item.level,
                "slice": int(k), "structure": short, "true": float(true[k, n]), "vae": float(searched[k, n]),
                "encoder": float(encoded[k, n]), "cnn": float(regressed[k, n]) if regressed is not None else np.nan,
                "mean": 0.5 * (float(regressed[k, n]) + float(searched[k, n])) if regressed is not None else np.nan,
                "combined": float(combined[k, n]) if combined is not None else np.nan,
                "combined_encoder": float(encoder_combined[k, n]) if encoder_combined is not None else np.nan,
                "rules_flag": bool(rule_flags[k]),
            })
    myo = list(STRUCTURES).index(LV_MYOCARDIUM)
    given_myo = pairs[:, 1 + myo] > 0.5
    volume = {
        "case": item.case_id, "group": GROUPS.get(item.kind, "?"), "kind": item.kind, "level": item.level,
        "true": dice(labels == LV_MYOCARDIUM, truth == LV_MYOCARDIUM, empty_value=1.0),
        "vae": volume_dice(search.surrogate[:, myo] > 0.5, given_myo),
        "encoder": volume_dice(encoder.surrogate[:, myo] > 0.5, given_myo),
        "cnn": np.nan if regressed is None else float(regressed_volume[myo]),
        "rules_flag": not rules.passed, "n_slices": int(labels.shape[0]), "iterations": search.iterations,
    }
    volume["mean"] = 0.5 * (volume["cnn"] + volume["vae"])
    volume["combined"] = np.nan if combined_volume is None else float(combined_volume[myo])
    volume["combined_encoder"] = np.nan if encoder_combined_volume is None else float(encoder_combined_volume[myo])
    return rows, volume, times


def accuracy_table(rows: list[dict], threshold: float, methods: dict) -> list[dict]:
    """Per slice: poor when the lowest true Dice of a shown structure < threshold; flagged when the lowest predicted
    Dice < threshold (rules: a broken rule)."""
    slices: dict[tuple, dict] = {}
    for r in rows:
        key = (r["case"], r["kind"], r["level"], r["slice"])
        entry = slices.setdefault(key, {"group": r["group"], "true": [], "rules": r["rules_flag"],
                                        **{m: [] for m in methods}})
        if np.isfinite(r["true"]):
            entry["true"].append(r["true"])
        for m in methods:
            entry[m].append(r[m])
    entries = [e for e in slices.values() if e["true"]]
    table = []
    for group in [*sorted({e["group"] for e in entries}), None]:
        chosen = entries if group is None else [e for e in entries if e["group"] == group]
        poor = np.array([min(e["true"]) < threshold for e in chosen])
        row = {"kind": "all" if group is None else GROUP_NAMES[group], "slices": len(chosen),
               "truly poor": float(poor.mean())}
        flags = {title: np.array([_flagged(e[m], threshold) for e in chosen]) for m, title in methods.items()}
        flags["rules"] = np.array([e["rules"] for e in chosen])
        for title, flagged in flags.items():
            row[f"{title} acc"] = float(np.mean(flagged == poor))
            row[f"{title} sens"] = float(np.mean(flagged[poor])) if poor.any() else np.nan
            row[f"{title} spec"] = float(np.mean(~flagged[~poor])) if (~poor).any() else np.nan
        table.append(row)
    return table


def _flagged(predicted: list[float], threshold: float) -> bool:
    """A slice is flagged when its lowest predicted Dice is below the threshold; no prediction at all (a structure
    judged absent, a slice QC does not assess) flags nothing."""
    values = np.asarray(predicted, dtype=float)
    return bool(np.isfinite(values).any() and np.nanmin(values) < threshold)


def metric_row(name: str, chosen: list[dict], methods: dict) -> dict:
    """r and MAE (SD) of each method over ``chosen`` rows (NaN truth left out)."""
    true = np.array([r["true"] for r in chosen])
    row: dict = {"kind": name, "n": int(np.isfinite(true).sum())}
    for m, title in methods.items():
        result = evaluate_dice_prediction(np.array([r[m] for r in chosen]), true)
        row[f"{title} r"] = result["pearson_r"]
        row[f"{title} MAE"] = f"{result['mae']:.3f} ({result['mae_sd']:.3f})" if result["n"] else "n/a"
    return row


def metric_table(rows: list[dict], methods: dict, *, by_kind: bool = True) -> list[dict]:
    """One row per kind (optional), per group (a, b, c) and overall."""
    table = []
    if by_kind:
        for kind in dict.fromkeys(r["kind"] for r in rows):
            table.append(metric_row(f"({GROUPS.get(kind, '?')}) {kind}", [r for r in rows if r["kind"] == kind],
                                    methods))
    for group, name in GROUP_NAMES.items():
        chosen = [r for r in rows if r["group"] == group]
        if chosen:
            table.append(metric_row(name, chosen, methods))
    table.append(metric_row("all", rows, methods))
    return table


def ablation_table(path: Path) -> str:
    results = json.loads(path.read_text())
    betas = sorted({r["beta"] for r in results})
    table = []
    for latent in sorted({r["latent_size"] for r in results}):
        row = {"m": latent}
        for beta in betas:
            match = [r for r in results if r["latent_size"] == latent and r["beta"] == beta]
            row[f"beta {beta:g}"] = (f"{match[0]['mae']:.3f} (r {match[0]['pearson_r']:.2f})" if match else "")
        table.append(row)
    first = results[0]
    return (f"MAE (Pearson r) of the searched Dice on {first['n_pairs']} validation pairs of known quality, "
            f"{first['epochs']} epochs per configuration, {first['search_steps']} search steps.\n\n"
            + format_markdown_table(table))


def scatter(path: Path, rows: list[dict], volumes: list[dict], methods: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(methods), figsize=(4.2 * len(methods), 8.4), squeeze=False)
    for column, (m, title) in enumerate(methods.items()):
        for row_index, (data, unit) in enumerate(((rows, "slice and structure"), (volumes, "volume, myocardium"))):
            axis = axes[row_index, column]
            for group, colour in COLOURS.items():
                chosen = [r for r in data if r["group"] == group and np.isfinite(r["true"]) and np.isfinite(r[m])]
                if chosen:
                    axis.scatter([r["true"] for r in chosen], [r[m] for r in chosen], s=6 if row_index == 0 else 14,
                                 alpha=0.35 if row_index == 0 else 0.7, color=colour, label=GROUP_NAMES[group])
            axis.plot([0, 1], [0, 1], "k--", linewidth=1)
            result = evaluate_dice_prediction(np.array([r[m] for r in data]), np.array([r["true"] for r in data]))
            axis.set_title(f"{title} ({unit})\nr = {result['pearson_r']:.3f}, MAE = {result['mae']:.3f}", fontsize=9)
            axis.set_xlim(-0.02, 1.02)
            axis.set_ylim(-0.02, 1.02)
            axis.set_xlabel("true Dice")
            axis.set_ylabel("predicted Dice")
            axis.set_aspect("equal")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None) -> int:
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message=".*unexpected scales.*")
    device = resolve_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    refs = refs_in_part(list_acdc(args.data, phases=tuple(args.phases)), load_split(args.split), args.part)
    patients = sorted({r.patient_id for r in refs})[: args.limit]
    refs = [r for r in refs if r.patient_id in patients]

    started = time.perf_counter()
    registry = ModelRegistry(paths=[Path(args.qc_models)])
    vae = registry.load("qc_vae", device=device)
    try:
        regressor = registry.load("qc_dice_regressor", device=device)
    except Exception as error:  # noqa: BLE001 - a missing regressor only drops its column
        print(f"no CNN regressor: {error}", file=sys.stderr)
        regressor = None
    qc_load_seconds = time.perf_counter() - started
    cine_models = None
    if Path(args.cine_models).is_dir():
        from cardiac_ai.regions import CineModels

        cine_models = CineModels.from_registry(ModelRegistry(paths=[Path(args.cine_models)]), mode=args.cine_mode,
                                               device=device)
    else:
        print(f"no cine models at {args.cine_models}: kinds (a) and (b) skipped", file=sys.stderr)
    combines = {key: regressor is not None and regressor_combination(regressor, len(STRUCTURES),
                                                                     encoder_only=key == "combined_encoder") is not None
                for key in ("combined", "combined_encoder")}
    methods = {m: t for m, t in METHODS.items()
               if (m not in ("cnn", "mean") or regressor is not None) and combines.get(m, True)}

    rows: list[dict] = []
    volumes: list[dict] = []
    timings: list[dict] = []
    skipped: list[str] = []
    for number, ref in enumerate(refs):
        case = load_case(ref)
        for item in poor_cases(case, args, cine_models, device):
            try:
                slice_rows, volume, times = qc_one(item, vae.network, regressor, args, device)
            except InputError as error:
                skipped.append(f"{item.case_id} {item.kind} {item.level:g}: {error}")
                continue
            rows += slice_rows
            volumes.append(volume)
            timings.append({**times, "n_slices": volume["n_slices"], "iterations": volume["iterations"],
                            "kind": item.kind})
        print(f"[{number + 1}/{len(refs)}] {ref.case_id}: {len(volumes)} segmentations so far", file=sys.stderr,
              flush=True)

    out: list[str] = []
    out.append(f"Patients: {len(patients)} ({args.part} part of {args.split}), frames {'+'.join(args.phases)}; "
               f"{len(volumes)} segmentations, {len(rows)} slice-structure values "
               f"({sum(np.isfinite(r['true']) for r in rows)} with the structure in truth or segmentation).")
    out.append(f"QC models: {args.qc_models} (qc_vae {vae.card.version}, latent size "
               f"{vae.card.network_kwargs.get('latent_size')}"
               + (f"; qc_dice_regressor {regressor.card.version}" if regressor else "; no regressor") + "). "
               f"Cine models: {args.cine_models if cine_models else 'none'} ({args.cine_mode}). "
               f"Search: {args.search_steps} steps. Machine: {platform.processor() or platform.machine()}, "
               f"device {device}; date {time.strftime('%Y-%m-%d')}.")
    if skipped:
        out.append(f"Skipped {len(skipped)} segmentations that qc_input refuses: {'; '.join(skipped[:5])}"
                   + (" ..." if len(skipped) > 5 else ""))

    out.append("\n### Table 1: predicted against true Dice per slice and structure: Pearson r, MAE (SD)\n")
    out.append(format_markdown_table(metric_table(rows, methods), digits=3))

    out.append("\n### Per structure (all kinds)\n")
    out.append(format_markdown_table(
        [metric_row(s, [r for r in rows if r["structure"] == s], methods) for s in STRUCTURES.values()], digits=3))

    out.append("\n### Per volume, myocardium (the paper's unit): Pearson r, MAE (SD)\n")
    out.append("VAE: Dice of surrogate and segmentation over the whole ROI stack; CNN: the volume value QC reports "
               "(cardiac_ai.qc.regressed_dice: slice predictions weighted by the segmented myocardium area, a slice "
               "where the myocardium is judged missing by its median area).\n")
    out.append(format_markdown_table(metric_table(volumes, methods, by_kind=False), digits=3))

    out.append(f"\n### Flagging poor slices (lowest true Dice of a shown structure < {args.flag_threshold:g}): "
               "accuracy, sensitivity, specificity\n")
    out.append("Models flag a slice when their lowest predicted Dice is below the threshold; the rules when the slice "
               "breaks a rule or the stack fails a volume rule.\n")
    out.append(format_markdown_table(accuracy_table(rows, args.flag_threshold, methods), digits=3))

    cine_like = [t for t in timings if t["n_slices"] >= 6]
    if cine_like:
        out.append("\n### Speed (QC of one volume; models loaded once, apart)\n")
        out.append(format_markdown_table([{
            "QC model loading (s)": qc_load_seconds,
            "volumes timed": len(cine_like),
            "slices per volume (mean)": float(np.mean([t["n_slices"] for t in cine_like])),
            "full search per volume (s)": float(np.mean([t["search"] for t in cine_like])),
            "full search per 10 slices (s)": float(np.mean([10 * t["search"] / t["n_slices"] for t in cine_like])),
            "search iterations (mean)": float(np.mean([t["iterations"] for t in cine_like])),
            "encoder only per volume (s)": float(np.mean([t["encoder"] for t in cine_like])),
            "CNN per volume (s)": float(np.mean([t["cnn"] for t in cine_like])) if regressor else np.nan,
            "combined per volume (s)": (float(np.mean([t["combined"] for t in cine_like])) if combines["combined"]
                                        else np.nan),
            "encoder combined per volume (s)": (float(np.mean([t["combined_encoder"] for t in cine_like]))
                                                if combines["combined_encoder"] else np.nan),
            "rules per volume (s)": float(np.mean([t["rules"] for t in cine_like])),
        }], digits=3))

    ablation = Path(args.ablation)
    out.append("\n### Table A1: ablation of latent size m and beta (validation patients)\n")
    out.append(ablation_table(ablation) if ablation.exists() else
               f"(no ablation results at {ablation}: run scripts/train_qc.py --stage ablation)")

    figure = Path(args.figure) if args.figure else (
        Path(args.report).with_suffix(".png") if args.report else Path("qc_scatter.png"))
    if rows:
        scatter(figure, rows, volumes, methods)
        out.append(f"\nFigure 3 (scatter, identity dashed): {figure}")
    if args.csv:
        write_csv(args.csv, rows)
    emit_report(out, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
