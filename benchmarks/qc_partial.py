"""How well does QC judge a segmentation of the myocardium alone (another tool's, or a T1/T2 contour)?

    python benchmarks/qc_partial.py [--data ../shared/data/acdc/training]
        [--split Resources/Splits/acdc_cine_split.json] [--part test] [--report FILE]

On every ED and ES frame of the split's ``--part`` patients, the true myocardium as is, eroded by 2 and 4 px,
dilated by 2 px and shifted by 4 and 8 px (``cardiac_ai.qc.corruptions``) is judged by the bundled QC models
(``assess_segmentation``, auto predictor, only the myocardium judged), in three settings:

* ``as given``: the myocardium alone, the blood pools empty (what QC saw before the context was added);
* ``cine pools``: what ``cardiacai qc`` does now: the blood pools drawn by the bundled cine baseline on the
  segmented slices (``cardiac_ai.pipeline._with_drawn_context``);
* ``truth pools``: the true blood pools (a reference no user has).

Prints Pearson r, MAE and bias of the predicted against the true myocardium Dice per slice (slices where both the
truth and the corrupted mask have myocardium). The ground truth makes the cases and scores them, nothing else.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from cardiac_ai.datasets import list_acdc
from cardiac_ai.datasets.case import load_case
from cardiac_ai.datasets.splits import load_split, refs_in_part
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from cardiac_ai.pipeline import _with_drawn_context, load_qc_file_models
from cardiac_ai.provenance import Provenance
from cardiac_ai.qc import QCConfig, assess_segmentation
from cardiac_ai.qc.corruptions import dilate_labels, erode_labels, shift_labels
from scipy.stats import pearsonr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_report  # noqa: E402

CORRUPTIONS = {
    "truth": lambda labels: labels,
    "eroded 2 px": lambda labels: erode_labels(labels, 2),
    "eroded 4 px": lambda labels: erode_labels(labels, 4),
    "dilated 2 px": lambda labels: dilate_labels(labels, 2),
    "shifted 4 px": lambda labels: shift_labels(labels, 4),
    "shifted 8 px": lambda labels: shift_labels(labels, 8),
}
SETTINGS = ("as given", "cine pools", "truth pools")


def slice_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    total = a.sum(axis=(1, 2)) + b.sum(axis=(1, 2))
    return np.where(total > 0, 2 * (a & b).sum(axis=(1, 2)) / np.maximum(total, 1), np.nan)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--part", default="test")
    parser.add_argument("--report")
    args = parser.parse_args(argv)

    refs = list_acdc(args.data)
    refs = refs_in_part(refs, load_split(args.split), args.part)
    models = load_qc_file_models((), device="cpu")
    vae, regressor = models.vae, models.regressor
    config = QCConfig(judged_structures=(LV_MYOCARDIUM,))
    predicted: dict[str, list[np.ndarray]] = {name: [] for name in SETTINGS}
    truth: list[np.ndarray] = []
    for index, ref in enumerate(refs):
        case = load_case(ref)
        gt = case.labels.array
        for corrupt in CORRUPTIONS.values():
            myocardium = corrupt(gt) == LV_MYOCARDIUM
            scored = (gt == LV_MYOCARDIUM).any(axis=(1, 2)) & myocardium.any(axis=(1, 2))
            truth.append(slice_dice(myocardium, gt == LV_MYOCARDIUM)[scored])
            alone = np.where(myocardium, LV_MYOCARDIUM, 0).astype(np.uint8)
            with_truth = np.where(np.isin(gt, (RV_BLOOD_POOL, LV_BLOOD_POOL)), gt, 0).astype(np.uint8)
            with_truth[myocardium] = LV_MYOCARDIUM
            drawn, _ = _with_drawn_context(case.image, case.labels.with_array(alone), (LV_MYOCARDIUM,), models,
                                           device="cpu", provenance=Provenance())
            for name, labels in zip(SETTINGS, (alone, drawn.array, with_truth)):
                result = assess_segmentation(case.image, case.labels.with_array(labels), vae, regressor=regressor,
                                             config=config, surrogate_wanted=False)
                predicted[name].append(result.slice_dice[scored, 1])
        print(f"[{index + 1}/{len(refs)}] {ref.case_id}", file=sys.stderr, flush=True)

    true = np.concatenate(truth)
    lines = [f"Myocardium-only segmentations of {len(refs)} {args.part} volumes x {len(CORRUPTIONS)} variants "
             f"({', '.join(CORRUPTIONS)}), {true.size} slices; predicted against true myocardium Dice per slice.", "",
             "| blood pools QC sees | Pearson r | MAE | bias (predicted - true) |", "| --- | --- | --- | --- |"]
    for name in SETTINGS:
        values = np.concatenate(predicted[name])
        ok = ~np.isnan(values)
        lines.append(f"| {name} | {pearsonr(values[ok], true[ok])[0]:.3f} | {np.abs(values[ok] - true[ok]).mean():.3f} "
                     f"| {(values[ok] - true[ok]).mean():+.3f} |")
    emit_report(lines, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
