"""Accuracy and speed of the weakly supervised LGE fibrosis models on the held-out EMIDEC test patients.

    python benchmarks/fibrosis.py --data ../shared/data/emidec-png --models work_data/fibrosis/models \
        [--split Resources/Splits/emidec_split.json] [--figure docs/results/fibrosis_examples.png] \
        [--report docs/results/fibrosis.md] [--device cpu]

Tables follow Klein et al. (weakly-supervised-lge-fibrosis.txt): Table 1 (AUROC of the slice- and stack-level
classifiers), Table 2 (myocardium Dice; fibrosis Dice over the test patients with fibrosis for pixel-, slice- and
stack-level supervision), each with the paper's EMIDEC numbers. Dice is per patient (3D, over the stack), mean and SD.
Also: how many N (no infarct) test patients get any scar predicted, a Figure-2-like PNG (image, truth, pseudo-label,
the three predictions), and the time of one 10-slice stack from file to written outputs (``fibrosis_file``, models
loaded; and the whole ``cardiacai fibrosis`` command including model loading).
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _output import emit_report  # benchmarks/_output.py, beside this script
from cardiac_ai.datasets import list_emidec, load_emidec_case, load_split
from cardiac_ai.fibrosis import FibrosisModels, segment_fibrosis, with_nominal_pixels
from cardiac_ai.fibrosis.evaluation import auroc, binary_dice, mean_sd
from cardiac_ai.fibrosis.pipeline import FIBROSIS_MODEL_NAMES, fibrosis_file
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import write_volume
from cardiac_ai.labels import MVO, SCAR
from cardiac_ai.models import ModelRegistry
from cardiac_ai.models.registry import LoadedModel
from cardiac_ai.pipeline import qc_options
from cardiac_ai.preprocessing import InputSpec, preprocess

REPO = Path(__file__).resolve().parents[1]
PAPER_AUROC = {"slice": 0.86, "stack": 0.81}
PAPER_DICE = {"myocardium": (0.76, 0.10), "pixel": (0.55, 0.40), "weak": (0.61, 0.37), "weak_stack": (0.52, 0.38)}
VARIANTS = {"pixel": "Pixel-level", "weak": "Slice-level", "weak_stack": "Stack-level"}
MYOCARDIUM = (2, 4, 5)


def _load(registry: ModelRegistry, key: str, device) -> LoadedModel | None:
    try:
        return registry.load(FIBROSIS_MODEL_NAMES[key], device=device)
    except Exception as e:  # noqa: BLE001 - a missing model only removes its rows
        print(f"note: {FIBROSIS_MODEL_NAMES[key]} not found ({type(e).__name__}); its rows are skipped", file=sys.stderr)
        return None


def _stack_probability(stack_model: LoadedModel, myocardium: LoadedModel, image: Volume, device) -> float:
    """P(fibrosis) of a whole stack from the stack classifier, on the pipeline's grid and predicted myocardium."""
    import torch
    from cardiac_ai.fibrosis import ClassifierInputSettings, classifier_inputs
    from cardiac_ai.fibrosis.training import predict_myocardium

    spec = InputSpec.from_dict(dict(stack_model.card.input_spec))
    prepared = preprocess(with_nominal_pixels(image), spec, crop_center="image_center")
    mask = predict_myocardium(myocardium.network, prepared.image, device=device)
    settings = ClassifierInputSettings.from_card_inference(stack_model.card.inference)
    x = classifier_inputs(prepared.image, mask, settings).stack()
    with torch.inference_mode():
        logit = stack_model.network(torch.from_numpy(x).to(stack_model.device))
    return float(torch.sigmoid(logit.float()).cpu().reshape(-1)[0])


def _pseudo_label(classifier: LoadedModel, myocardium: LoadedModel, image: Volume, k: int, device) -> np.ndarray:
    """Section 3.3 pseudo-label of slice k (weak label positive) on the native grid, for the figure only."""
    from cardiac_ai.fibrosis import ClassifierInputSettings
    from cardiac_ai.fibrosis.training import (
        make_pseudo_labels,
        predict_myocardium,
        slice_cams,
    )
    from cardiac_ai.preprocessing import restore_labels

    spec = InputSpec.from_dict(dict(classifier.card.input_spec))
    prepared = preprocess(with_nominal_pixels(image), spec, crop_center="image_center")
    mask = predict_myocardium(myocardium.network, prepared.image[k:k + 1], device=device)
    cam = slice_cams(classifier.network, prepared.image[k:k + 1], mask, device=device,
                     input_settings=ClassifierInputSettings.from_card_inference(classifier.card.inference))
    pseudo = make_pseudo_labels(cam, prepared.image[k:k + 1], np.ones(1, bool), mask)
    full = np.zeros(prepared.image.shape, np.uint8)
    full[k] = pseudo[0]
    return restore_labels(full, prepared.transform).array[k]


def _qc_case(qc, image: Volume, labels: np.ndarray, truth: np.ndarray, pairs: list, slices: list, device) -> None:
    """The fibrosis command's QC of one stack against the true Dice of its myocardium (scar and MVO included) and
    LV blood pool, per assessed slice."""
    from cardiac_ai.fibrosis.pipeline import qc_inputs
    from cardiac_ai.qc.assess import QCConfig, run_qc

    config = qc.config or QCConfig()
    result = run_qc(*qc_inputs(image, labels, spacing_known=False), qc.model, config=config, regressor=qc.regressor,
                    device=device)
    if result is None:
        return
    masks = {2: (np.isin(labels, MYOCARDIUM), np.isin(truth, MYOCARDIUM)), 3: (labels == 3, truth == 3)}
    for k in np.flatnonzero(result.assessed):
        true_values = []
        for column, code in enumerate(result.structures):
            if code not in masks or not np.isfinite(result.slice_dice[k, column]):
                continue
            predicted_mask, true_mask = (m[k] for m in masks[code])
            if not predicted_mask.any() and not true_mask.any():
                continue
            true_values.append(binary_dice(predicted_mask, true_mask))
            pairs.append((float(result.slice_dice[k, column]), true_values[-1]))
        if true_values:
            slices.append((bool(result.slice_flags[k]), min(true_values) < config.dice_threshold))


def _share(selected: np.ndarray, among: np.ndarray) -> float:
    return float(selected[among].mean()) if among.any() else float("nan")


def _figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["image", "truth", "pseudo-label", *[VARIANTS[v] for v in VARIANTS if v in rows[0]["predictions"]]]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.2 * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        image = row["image"]
        crop = tuple(slice(max(0, c - 48), c + 48) for c in (image.shape[0] // 2, image.shape[1] // 2))
        overlays = [None, row["truth"], row["pseudo"], *[row["predictions"][v] for v in VARIANTS
                                                         if v in row["predictions"]]]
        for c, (title, overlay) in enumerate(zip(columns, overlays)):
            ax = axes[r, c]
            ax.imshow(image[crop], cmap="gray")
            if overlay is not None:
                ax.imshow(np.ma.masked_where(~overlay[crop], overlay[crop]), cmap="autumn", alpha=0.6,
                          vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(row["name"], fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _speed(models: FibrosisModels, image: Volume, args, tmp: Path) -> dict[str, float]:
    """Seconds for one 10-slice stack: fibrosis_file with loaded models (median of 3), and the whole CLI command."""
    from cardiac_ai.cli import main as cli_main

    slices = np.resize(np.arange(image.array.shape[0]), 10)
    stack = Volume(image.array[slices], Geometry(spacing_mm=(1.5, 1.5, 8.0)))
    path = tmp / "stack10.nii.gz"
    write_volume(stack, path)
    times = []
    for n in range(3):
        started = time.perf_counter()
        fibrosis_file(path, tmp / f"out{n}", models=models, device=args.device)
        times.append(time.perf_counter() - started)
    started = time.perf_counter()
    code = cli_main(["fibrosis", str(path), "--out", str(tmp / "cli"), "--models-dir", str(args.models),
                     "--device", args.device, "-q"])
    cli = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"cardiacai fibrosis failed with exit code {code}")
    return {"file": statistics.median(times), "cli": cli}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "emidec-png"))
    parser.add_argument("--models", default=str(REPO / "work_data" / "fibrosis" / "models"))
    parser.add_argument("--split", default=str(REPO / "Resources" / "Splits" / "emidec_split.json"))
    parser.add_argument("--part", default="test", choices=["train", "validation", "test"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--figure", help="PNG of the examples, as the paper's Figure 2 (default: none; a default path "
                                          "would overwrite the committed figure on every run)")
    parser.add_argument("--report", help="also write the Markdown tables to this file")
    parser.add_argument("--no-speed", action="store_true")
    parser.add_argument("--qc-models", default=str(REPO / "Resources" / "Models"),
                        help="folder with qc_vae and qc_dice_regressor (the indicative QC of `cardiacai fibrosis`)")
    args = parser.parse_args()

    split = load_split(args.split)
    patients = list(getattr(split, args.part))
    refs = {r.patient_id: r for r in list_emidec(args.data)}
    registry = ModelRegistry(paths=[], extra_paths=[Path(args.models)])
    myocardium = registry.load(FIBROSIS_MODEL_NAMES["myocardium"], device=args.device)
    classifier = _load(registry, "classifier", args.device)
    stack_classifier = _load(registry, "stack_classifier", args.device)
    fibrosis = {v: m for v in VARIANTS if (m := _load(registry, v, args.device)) is not None}
    if not fibrosis:
        raise SystemExit(f"No fibrosis model in {args.models}; train with scripts/train_emidec_fibrosis.py.")

    qc = qc_options([args.qc_models], device=args.device)
    qc_pairs: list[tuple[float, float]] = []  # (predicted, true) Dice per slice and structure (myocardium, LV)
    qc_slices: list[tuple[bool, bool]] = []  # (flagged, lowest true Dice < threshold) per assessed slice
    slice_scores, slice_truth, stack_scores, stack_truth = [], [], [], []
    myo_dice: list[float] = []
    fib_dice: dict[str, list[float]] = {v: [] for v in fibrosis}
    false_positive: dict[str, int] = {v: 0 for v in fibrosis}
    n_negative = 0
    examples = []
    started = time.perf_counter()
    for patient_id in patients:
        case = load_emidec_case(refs[patient_id])
        truth = case.labels.array
        has_fibrosis = bool(np.isin(truth, (SCAR, MVO)).any())
        n_negative += not has_fibrosis
        predictions = {}
        for variant, model in fibrosis.items():
            models = FibrosisModels(myocardium, model, classifier if variant == "weak" else None, variant)
            result = segment_fibrosis(case.image, models, spacing_known=False, device=args.device)
            labels = result.labels.array
            predictions[variant] = np.isin(labels, (SCAR, MVO))
            if variant == next(iter(fibrosis)):
                myo_dice.append(binary_dice(np.isin(labels, MYOCARDIUM), np.isin(truth, MYOCARDIUM)))
                if qc.model is not None:
                    _qc_case(qc, case.image, labels, truth, qc_pairs, qc_slices, args.device)
            if result.slice_probabilities is not None:
                slice_scores.extend(result.slice_probabilities.tolist())
                slice_truth.extend(np.isin(truth, (SCAR, MVO)).any(axis=(1, 2)).astype(int).tolist())
            if has_fibrosis:
                fib_dice[variant].append(binary_dice(predictions[variant], np.isin(truth, (SCAR, MVO))))
            elif predictions[variant].any():
                false_positive[variant] += 1
        if stack_classifier is not None:
            stack_scores.append(_stack_probability(stack_classifier, myocardium, case.image, args.device))
            stack_truth.append(int(case.image_labels["group"] == "P"))
        if has_fibrosis:
            k = int(np.argmax(np.isin(truth, (SCAR, MVO)).sum(axis=(1, 2))))
            examples.append({"name": f"{patient_id} k={k}", "k": k, "case": case, "size": int(
                np.isin(truth[k], (SCAR, MVO)).sum()), "truth": np.isin(truth[k], (SCAR, MVO)),
                "image": case.image.array[k], "predictions": {v: p[k] for v, p in predictions.items()}})
    seconds = time.perf_counter() - started

    lines = [f"# LGE fibrosis on EMIDEC ({args.part} part: {len(patients)} patients, "
             f"{len(patients) - n_negative} with fibrosis)", ""]
    lines.append(f"Split `{Path(args.split).name}` (test = EMIDEC val folder, all N, + 20 % of the P patients); "
                 f"models from `{args.models}`; device {args.device}; {platform.processor() or platform.machine()}; "
                 f"evaluation {seconds:.0f} s.")
    lines += ["", "## Table 1: classification AUROC", "", "| Task | AUROC (ours) | n (pos/neg) | AUROC EMIDEC (paper) |",
              "|---|---|---|---|"]
    if slice_scores:
        lines.append(f"| Slice-level | {auroc(slice_scores, slice_truth):.3f} | {sum(slice_truth)}/"
                     f"{len(slice_truth) - sum(slice_truth)} | {PAPER_AUROC['slice']:.2f} |")
    if stack_scores:
        lines.append(f"| Stack-level | {auroc(stack_scores, stack_truth):.3f} | {sum(stack_truth)}/"
                     f"{len(stack_truth) - sum(stack_truth)} | {PAPER_AUROC['stack']:.2f} |")
    lines += ["", "## Table 2: Dice (per patient, mean ± SD)", "",
              "| Tissue | Supervision | Dice (ours) | n | Dice EMIDEC (paper) | N patients with false scar |",
              "|---|---|---|---|---|---|"]
    mean, sd, n = mean_sd(myo_dice)
    lines.append(f"| Myocardium | Pixel-level | {mean:.3f} ± {sd:.3f} | {n} | {PAPER_DICE['myocardium'][0]:.2f} ± "
                 f"{PAPER_DICE['myocardium'][1]:.2f} | |")
    for variant, values in fib_dice.items():
        mean, sd, n = mean_sd(values)
        paper = PAPER_DICE[variant]
        lines.append(f"| Fibrosis | {VARIANTS[variant]} | {mean:.3f} ± {sd:.3f} | {n} | {paper[0]:.2f} ± "
                     f"{paper[1]:.2f} | {false_positive[variant]}/{n_negative} |")

    if qc_pairs:
        predicted, true = np.array(qc_pairs).T
        flagged, poor = np.array(qc_slices).T
        lines += ["", f"## Indicative QC of the myocardium and LV blood pool (`cardiacai fibrosis` default; QC models "
                      f"from `{args.qc_models}`, trained on cine)", "",
                  "| slice-structure values | Pearson r | MAE | slices | poor (true Dice < 0.8) | sensitivity | "
                  "specificity |", "|---|---|---|---|---|---|---|",
                  f"| {len(true)} | {np.corrcoef(predicted, true)[0, 1]:.3f} | {np.abs(predicted - true).mean():.3f} | "
                  f"{len(poor)} | {int(poor.sum())} | {_share(flagged, poor):.2f} | {_share(~flagged, ~poor):.2f} |"]

    if examples and classifier is not None and args.figure:
        chosen = sorted(examples, key=lambda e: -e["size"])[:4]
        for example in chosen:
            example["pseudo"] = _pseudo_label(classifier, myocardium, example["case"].image, example["k"],
                                              args.device).astype(bool)
        _figure(chosen, Path(args.figure))
        lines += ["", f"Figure: `{args.figure}` (rows: test slices with the most scar; columns: image, truth, "
                      "slice-level pseudo-label, pixel-, slice- and stack-level predictions)."]

    if not args.no_speed:
        models = FibrosisModels(myocardium, fibrosis.get("weak", next(iter(fibrosis.values()))), classifier, "weak")
        with tempfile.TemporaryDirectory() as tmp:
            first = load_emidec_case(refs[patients[0]]).image
            speed = _speed(models, first, args, Path(tmp))
        lines += ["", "## Speed: one 10-slice LGE stack (NIfTI) to written outputs", "",
                  "| What | Seconds | Target |", "|---|---|---|",
                  f"| fibrosis_file (models loaded; read, 3 networks, numbers, 5 files; median of 3) | "
                  f"{speed['file']:.2f} | <= 3 |",
                  f"| `cardiacai fibrosis` in-process, including model loading | {speed['cli']:.2f} | |"]
    emit_report(lines, args.report)


if __name__ == "__main__":
    main()
