"""Weak-label (diagnosis-only) heart segmentation on ACDC: the CAM paper's Table 1 and more; Markdown tables.

    python benchmarks/weak_cam.py --work work_data/weak --data ../shared/data/acdc/training \
        [--report docs/results/weak_cam.md] [--figure docs/results/weak_cam_cases.png]

Reads what ``scripts/train_weak_acdc.py`` wrote in WORK (prepared slices, the classifier and weak U-Net runs, the
registered models in WORK/models). For training, validation and test patients:

* **Classification**: slice accuracy, weighted F1 and one-vs-rest ROC AUC per class (as the paper), and the
  patient-level accuracy of the mean slice probabilities.
* **Table 1**: mean per-slice Jaccard against the ground-truth heart (RV + myocardium + LV blood pool) per diagnosis
  class, over the slices whose ground truth holds heart, for the CAM mask (CAM >= half its maximum), the DenseCRF
  pseudo-label (settings chosen on validation), the self-training labels and every weak U-Net (pseudo-label,
  CAM-prior and self-training). CAMs are
  of the patient's own class for training and validation (as used for training) and of the PREDICTED class for test
  patients (no label at inference).
* **Whole-heart Dice per volume** of ``cardiacai cam`` (the registered models through
  :func:`cardiac_ai.weak.pipeline.explain_volume`) on the native grid of the test volumes, against the ground truth:
  target 0.80. Everything here uses the registered models; the ground truth only scores.
* **Figure**: the two best and two worst test slices by CAM Jaccard: image, CAM, ground truth, and the registered
  weak U-Net's heart with the ground-truth outline (red).
* **Speed**: CAM plus pseudo-label for one volume (about 10 slices), models loaded once; target 3 s on this CPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _output import emit_report  # noqa: E402

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part  # noqa: E402
from cardiac_ai.datasets.acdc import ACDC_GROUPS  # noqa: E402
from cardiac_ai.metrics import auroc, format_markdown_table, weighted_f1  # noqa: E402
from cardiac_ai.metrics.overlap import dice, jaccard  # noqa: E402
from cardiac_ai.models import ModelRegistry  # noqa: E402
from cardiac_ai.weak.pipeline import WeakModels, explain_volume  # noqa: E402
from cardiac_ai.weak.pseudo_labels import PseudoLabelConfig, pseudo_labels, self_training_labels  # noqa: E402
from cardiac_ai.weak.recipe import WEAK_MODES  # noqa: E402
from cardiac_ai.weak.training import scale_cams, slice_cams  # noqa: E402

import train_weak_acdc as recipe  # noqa: E402

PARTS = ("train", "validation", "test")


def table(columns: list[str], rows: list[list[str]]) -> str:
    return format_markdown_table([dict(zip(columns, row)) for row in rows], columns=columns)


def predict_probabilities(network, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = [torch.softmax(network(torch.from_numpy(images[s:s + 64, None].astype(np.float32))), dim=1).numpy()
               for s in range(0, len(images), 64)]
    return np.concatenate(out)


def per_class_mean(values: np.ndarray, classes: np.ndarray, keep: np.ndarray) -> list[str]:
    cells = []
    for c in range(len(ACDC_GROUPS)):
        chosen = values[(classes == c) & keep]
        cells.append(f"{np.nanmean(chosen):.3f}" if chosen.size else "-")
    cells.append(f"{np.nanmean(values[keep]):.3f}")
    return cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="work_data/weak")
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--models", help="registry folder (default WORK/models)")
    parser.add_argument("--report")
    parser.add_argument("--figure")
    parser.add_argument("--limit", type=int, help="only the first N test volumes for the per-volume Dice")
    args = parser.parse_args()
    work = Path(args.work)
    models_dir = Path(args.models or work / "models")
    registry = ModelRegistry(extra_paths=[models_dir])
    models = WeakModels.from_registry(registry, device="cpu")
    classifier = models.classifier.network
    inference = models.classifier.card.inference
    method, layer = inference.get("cam_method", "model"), inference.get("cam_target_layer", "attention")
    pseudo_config = PseudoLabelConfig(**inference.get("pseudo_label_config", {}))
    stored = json.loads((work / "pseudo_choice.json").read_text())
    chosen = stored["chosen"]
    unets = {mode: recipe.load_network(work / f"run_weak_{mode}", *recipe.UNET)
             for mode in WEAK_MODES if (work / f"run_weak_{mode}" / "best.pt").exists()}
    self_choice = json.loads((work / "self_choice.json").read_text())["chosen"] if "self_training" in unets else None

    lines = [f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}; CPU only; date "
             f"{time.strftime('%Y-%m-%d')}. CAM method {method} (layer {layer}); pseudo-labels {pseudo_config}.", ""]
    classification_rows, table1_rows, examples = [], [], []
    for part in PARTS:
        weak = recipe.load_weak(work / f"weak_{part}.npz")
        truth = np.load(work / f"truth_{part}.npz")["heart"]
        probabilities = predict_probabilities(classifier, weak.slices.images)
        predicted = probabilities.argmax(axis=1)
        aucs = [auroc(probabilities[:, c], (weak.targets == c).astype(int)) for c in range(len(ACDC_GROUPS))]
        patients = np.array([cid.split("_")[0] for cid in weak.slices.case_ids])
        patient_hits = []
        for patient in np.unique(patients):
            rows = patients == patient
            patient_hits.append(probabilities[rows].mean(axis=0).argmax() == weak.targets[rows][0])
        classification_rows.append([
            part, str(len(weak)), f"{np.mean(predicted == weak.targets):.3f}",
            f"{weighted_f1(weak.targets, predicted, len(ACDC_GROUPS)):.3f}",
            *[f"{a:.3f}" for a in aucs], f"{np.nanmean(aucs):.3f}", f"{np.mean(patient_hits):.3f}",
        ])
        explained = predicted if part == "test" else weak.targets
        raw = slice_cams(classifier, weak.slices.images, method=method, target_layer=layer,
                         class_index=explained.tolist(), device="cpu")
        cams = scale_cams(raw)
        pseudo = pseudo_labels(raw, weak.slices.images, np.ones(len(raw), bool), config=pseudo_config)
        has_heart = truth.reshape(len(truth), -1).any(axis=1)
        cam_j = np.array([jaccard(c >= 0.5, t > 0) if h else np.nan for c, t, h in zip(cams, truth, has_heart)])
        pseudo_j = np.array([jaccard(p > 0, t > 0) if h else np.nan for p, t, h in zip(pseudo, truth, has_heart)])
        rows = {"CAM mask (>= half max)": cam_j, "CAM DenseCRF pseudo-label": pseudo_j}
        if chosen.get("prior") == "motion":
            motion_masks = pseudo_labels(recipe.motion_of(weak), weak.slices.images, np.ones(len(weak), bool),
                                         config=PseudoLabelConfig(**stored["config"]))
            rows["ED-ES motion pseudo-label (trains the U-Net)"] = np.array(
                [jaccard(p > 0, t > 0) if h else np.nan for p, t, h in zip(motion_masks, truth, has_heart)])
        if self_choice is not None:  # the labels the self-trained U-Net learnt from (test: for comparison)
            teacher = recipe.predict_heart_probabilities(unets["pseudo_label"], weak.slices.images, "cpu")
            self_labels = self_training_labels(teacher, threshold=self_choice["threshold"],
                                               erosion_px=self_choice["erosion_px"])
            rows["self-training labels (pseudo-label U-Net, thresholded, eroded)"] = np.array(
                [jaccard(p > 0, t > 0) if h else np.nan for p, t, h in zip(self_labels, truth, has_heart)])
        for mode, network in unets.items():
            heart = recipe.predict_heart(network, weak.slices.images, "cpu")
            rows[f"weak U-Net ({mode})"] = np.array(
                [jaccard(p > 0, t > 0) if h else np.nan for p, t, h in zip(heart, truth, has_heart)])
        for name, values in rows.items():
            table1_rows.append([part, name, *per_class_mean(values, weak.targets, has_heart)])
        table1_rows.append([part, "ROC AUC (slices)", *[f"{a:.3f}" for a in aucs], f"{np.nanmean(aucs):.3f}"])
        if part == "test":
            order = np.argsort(np.where(has_heart, cam_j, np.nan))
            valid = [i for i in order if has_heart[i] and np.isfinite(cam_j[i])]
            examples = [(i, cam_j[i]) for i in valid[-2:][::-1] + valid[:2]]
            segmented = (None if models.segmenter is None else
                         recipe.predict_heart(models.segmenter.network, weak.slices.images, "cpu"))
            test_data = (weak, truth, cams, segmented)

    lines += ["### Diagnosis classification (slices; patient = mean of its ED and ES slice probabilities)", ""]
    lines.append(table(
        ["part", "slices", "accuracy", "weighted F1", *[f"AUC {g}" for g in ACDC_GROUPS], "mean AUC",
         "patient accuracy"], classification_rows))
    lines += ["", "### Table 1: mean per-slice Jaccard with the ground-truth heart, per diagnosis class", ""]
    lines.append(table(["part", "what", *ACDC_GROUPS, "all"], table1_rows))

    # Whole-heart Dice per test volume through the inference path (native grid).
    split = load_split(recipe.SPLIT_FILE)
    refs = refs_in_part(list_acdc(args.data, phases=("ED", "ES")), split, "test")[: args.limit]
    volume_rows, dices_model, dices_pseudo, timings = [], [], [], []
    for ref in refs:
        case = load_case(ref)
        truth = case.labels.array > 0
        result = explain_volume(case.image, models, device="cpu")
        started = time.perf_counter()
        pseudo_result = explain_volume(case.image, models, use_segmenter=False, device="cpu")
        timings.append((case.image.array.shape[0], time.perf_counter() - started))
        d_model = dice(result.labels.array > 0, truth)
        d_pseudo = dice(pseudo_result.labels.array > 0, truth)
        dices_model.append(d_model)
        dices_pseudo.append(d_pseudo)
        volume_rows.append([ref.case_id, ref.image_labels["group"],
                            result.to_report()["volume_prediction"]["class"], f"{d_model:.3f}", f"{d_pseudo:.3f}"])
    lines += ["", f"### Whole-heart Dice per test volume (native grid; {len(refs)} volumes)", ""]
    lines.append(table(
        ["volume", "diagnosis", "predicted", "Dice weak U-Net", "Dice CAM pseudo-label"], volume_rows))
    lines += ["", f"Mean whole-heart Dice: weak U-Net {np.mean(dices_model):.3f} (SD {np.std(dices_model):.3f}), "
              f"CAM pseudo-label {np.mean(dices_pseudo):.3f} (SD {np.std(dices_pseudo):.3f}); target 0.80.", ""]
    per_ten = [seconds * 10.0 / max(n, 1) for n, seconds in timings]
    lines.append(f"Speed: CAM + pseudo-label (classifier, CAM, DenseCRF, resampling back), models loaded once: "
                 f"mean {np.mean([s for _, s in timings]):.2f} s per volume of "
                 f"{np.mean([n for n, _ in timings]):.1f} slices, {np.mean(per_ten):.2f} s per 10 slices "
                 "(target 3 s).")
    emit_report(lines, args.report)

    if args.figure and examples:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        weak, truth, cams, segmented = test_data
        columns = 3 if segmented is None else 4
        fig, axes = plt.subplots(len(examples), columns, figsize=(2.5 * columns, 2.5 * len(examples)))
        for row, (index, score) in enumerate(examples):
            image = weak.slices.images[index]
            axes[row, 0].imshow(image, cmap="gray")
            axes[row, 1].imshow(image, cmap="gray")
            axes[row, 1].imshow(cams[index], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            axes[row, 1].set_title(f"CAM, Jaccard {score:.2f}", fontsize=8)
            axes[row, 2].imshow(image, cmap="gray")
            axes[row, 2].imshow(np.ma.masked_equal(truth[index], 0), cmap="autumn", alpha=0.5)
            axes[row, 2].set_title("ground truth heart", fontsize=8)
            if segmented is not None:
                axes[row, 3].imshow(image, cmap="gray")
                axes[row, 3].imshow(np.ma.masked_equal(segmented[index], 0), cmap="winter", alpha=0.5)
                axes[row, 3].contour(truth[index] > 0, [0.5], colors="r", linewidths=0.8)
                axes[row, 3].set_title(f"weak U-Net, Jaccard {jaccard(segmented[index] > 0, truth[index] > 0):.2f}",
                                       fontsize=8)
            axes[row, 0].set_title(f"{'best' if row < 2 else 'worst'}: {weak.slices.case_ids[index]} "
                                   f"k={weak.slices.slice_indices[index]}", fontsize=8)
            for ax in axes[row]:
                ax.axis("off")
        fig.tight_layout()
        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.figure, dpi=110)
        print(f"figure: {args.figure}")
    (work / "benchmark_summary.json").write_text(json.dumps(
        {"mean_volume_dice_unet": float(np.mean(dices_model)), "mean_volume_dice_pseudo": float(np.mean(dices_pseudo))},
        indent=2))


if __name__ == "__main__":
    main()
