"""Does the cine localiser tell a heart from no heart, and where a segmentation stops from where the heart does?

    python benchmarks/heart_presence.py [--data ../shared/data/acdc/training] [--step 1] [--extent-only]
        [--split Resources/Splits/acdc_cine_split.json] [--report FILE]

Two calibrations behind thresholds of the product, both from the bundled ``cine_localiser``:

* ``MIN_HEART_ML`` and ``MIN_LV_SURROUND_FRACTION`` (``cardiac_ai.regions.pipeline``, ``segment-cine
  --min-heart-ml``): the volume of the largest heart-like region the localiser finds, and the mean share of the LV
  blood pool's border the segmentation's myocardium covers (region-aware models, both checks off), on every
  ``--step``-th ACDC ED/ES frame, and on images without a heart
  made from every fourth of them: the heart's rows blacked out (with a 10-pixel margin), noise with the image's
  mean and SD, a smooth random field, and a corner of the field of view away from the heart.
* ``cardiac_ai.qc.extent`` (``cardiacai qc``): on the ground truth of the same frames, how often the localiser sees
  the heart on one or on two or more unlabelled slices beyond the labelled range (at >= half the median labelled
  slice's area; two or more would be a false "stops before the heart" flag), and whether the rule catches the
  truth with its two most basal slices removed, or its two most apical; counted per part of ``--split`` too (the
  localiser was trained on its training patients). ``--extent-only`` runs this part alone (a minute).

Prints Markdown tables; the ground truth is used only to make the variants and to score.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from cardiac_ai.datasets import list_acdc
from cardiac_ai.datasets.splits import load_split
from cardiac_ai.geometry import Volume
from cardiac_ai.io import read_volume
from cardiac_ai.pipeline import load_cine_models
from cardiac_ai.provenance import Provenance
from cardiac_ai.qc.extent import MIN_RELATIVE_AREA, unsegmented_heart_slices
from cardiac_ai.qc.rules import lv_surround_fractions
from cardiac_ai.regions.pipeline import MIN_HEART_ML, MIN_LV_SURROUND_FRACTION, localise_heart, segment_cine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_report  # noqa: E402


def no_heart_variants(image: np.ndarray, truth: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.flatnonzero(truth.any(axis=(0, 2)))
    top, bottom = max(rows[0] - 10, 0), min(rows[-1] + 11, image.shape[1])
    blacked = image.copy()
    blacked[:, top:bottom] = 0
    smooth = np.cumsum(np.cumsum(rng.normal(0, 1, image.shape), axis=1), axis=2)
    corner_size = min(96, image.shape[1] // 3, image.shape[2] // 3)
    heart_centre = np.array(np.nonzero(truth.any(axis=0))).mean(axis=1)
    j0 = 0 if heart_centre[0] > image.shape[1] / 2 else image.shape[1] - corner_size
    i0 = 0 if heart_centre[1] > image.shape[2] / 2 else image.shape[2] - corner_size
    return {
        "heart rows blacked out": blacked,
        "noise": rng.normal(image.mean(), image.std(), image.shape),
        "smooth field": smooth - smooth.min(),
        "corner of the field of view": image[:, j0:j0 + corner_size, i0:i0 + corner_size],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--step", type=int, default=1, help="every step-th frame (1: all 200)")
    parser.add_argument("--extent-only", action="store_true", help="only the extent check (no no-heart images)")
    parser.add_argument("--split", default="Resources/Splits/acdc_cine_split.json")
    parser.add_argument("--report")
    args = parser.parse_args(argv)
    models = load_cine_models([], mode="region-aware", device="cpu", provenance=Provenance())
    refs = list_acdc(args.data)[::args.step]
    split = load_split(args.split)
    part_of = {patient: part for part in ("train", "validation", "test") for patient in getattr(split, part)}

    def heart_ml(volume: Volume) -> tuple[float, np.ndarray]:
        found = localise_heart(models.localiser, volume.with_array(volume.array.astype(np.float32)), device="cpu")
        return found.volume_ml, found.slice_area_mm2

    def surround(volume: Volume) -> float:
        labels = segment_cine(volume.with_array(volume.array.astype(np.float32)), models=models, device="cpu",
                              min_heart_ml=0).labels.array
        fractions = lv_surround_fractions(labels)
        return float(np.nanmean(fractions)) if np.isfinite(fractions).any() else float("nan")

    hearts, empty, surrounds, empty_surrounds = [], {}, [], {}
    counts: dict[str, dict[str, int]] = {}
    for number, ref in enumerate(refs):
        image, truth = read_volume(ref.image_paths[0]), read_volume(ref.label_paths[0])
        volume_ml, areas = heart_ml(image)
        hearts.append(volume_ml)
        if not args.extent_only:
            surrounds.append(surround(image))
        labels = truth.array
        labelled = np.flatnonzero(labels.any(axis=(1, 2)))
        median = float(np.median(areas[labelled[0]: labelled[-1] + 1]))
        beyond = [k for k in range(len(areas)) if (k < labelled[0] or k > labelled[-1])
                  and areas[k] >= MIN_RELATIVE_AREA * median]
        without_base, without_apex = labels.copy(), labels.copy()
        without_base[labelled[:2]] = 0  # ACDC stacks run from base (low k) to apex
        without_apex[labelled[-2:]] = 0
        for part in ("all", part_of.get(ref.patient_id, "other")):
            count = counts.setdefault(part, {"n": 0, "one": 0, "two": 0, "base": 0, "apex": 0})
            count["n"] += 1
            count["one"] += len(beyond) == 1
            count["two"] += bool(unsegmented_heart_slices(labels, areas))
            count["base"] += bool(unsegmented_heart_slices(without_base, areas))
            count["apex"] += bool(unsegmented_heart_slices(without_apex, areas))
        if number % 4 == 0 and not args.extent_only:  # the no-heart variants of every fourth frame
            for name, array in no_heart_variants(image.array.astype(np.float32), labels, number).items():
                variant = Volume(array.astype(np.float32), image.geometry)
                empty.setdefault(name, []).append(heart_ml(variant)[0])
                empty_surrounds.setdefault(name, []).append(surround(variant))
        print(f"{ref.case_id}: {volume_ml:.0f} ml", file=sys.stderr, flush=True)

    lines = [f"Frames: {len(refs)} ACDC ED/ES volumes; MIN_HEART_ML = {MIN_HEART_ML:g} ml, MIN_LV_SURROUND_FRACTION "
             f"= {MIN_LV_SURROUND_FRACTION:g}.", ""]
    if not args.extent_only:
        lines += ["| images | n | localiser's largest region (ml): min / median / max | mean LV surround: min / "
                  "median / max | taken for a heart (both checks pass) |", "| --- | --- | --- | --- | --- |"]
        rows = [("ACDC frames (a heart)", hearts, surrounds)] + [
            (f"no heart: {name}", values, empty_surrounds[name]) for name, values in empty.items()]
        for name, values, fractions in rows:
            v, f = np.array(values), np.array(fractions)
            heart = (v >= MIN_HEART_ML) & ~(f < MIN_LV_SURROUND_FRACTION)  # NaN (no LV blood pool) does not refuse
            lines.append(f"| {name} | {v.size} | {v.min():.0f} / {np.median(v):.0f} / {v.max():.0f} | "
                         f"{np.nanmin(f):.2f} / {np.nanmedian(f):.2f} / {np.nanmax(f):.2f} | {int(heart.sum())} |")
        lines.append("")
    parts = [part for part in ("all", "train", "validation", "test", "other") if part in counts]
    lines += ["| ground truth as the segmentation (volumes) | " + " | ".join(parts) + " |",
              "| --- |" + " --- |" * len(parts)]
    for key, name in (("one", "one unlabelled slice beyond the labels where the localiser sees the heart"),
                      ("two", "flagged 'stops before the heart' (false)"),
                      ("base", "two most basal slices removed: caught"),
                      ("apex", "two most apical slices removed: caught")):
        lines.append(f"| {name} | " + " | ".join(f"{counts[p][key]} of {counts[p]['n']}" for p in parts) + " |")
    emit_report(lines, args.report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
