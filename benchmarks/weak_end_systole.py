"""The weak whole heart at end-systole: the weak U-Net's own heart on the ES frame against its ED heart carried onto
the ES frame by image registration (``cardiacai cam ES --ed ED``), on the ACDC validation and test patients.

Usage:
    python benchmarks/weak_end_systole.py [--models Resources/Models] [--parts validation test] [--report FILE]

Both use the registered weak models (diagnosis labels and ED-ES motion only) through
:func:`cardiac_ai.weak.pipeline.explain_volume` with its defaults (LV wall 11 mm), on the native grid; the ground
truth only scores. Dice per volume, mean over the part's patients; "both phases" is the mean of the ED and ES
columns, the unit of issue 6's target (0.80 per volume over ED and ES volumes). Also timed: the registration step
(:func:`cardiac_ai.weak.propagation.carry_mask_between_frames` of the ED heart, called on its own) and the whole ``explain_volume`` call with
``end_diastole``, models loaded once, per 10 slices.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _output import emit_report  # noqa: E402

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part  # noqa: E402
from cardiac_ai.metrics import format_markdown_table  # noqa: E402
from cardiac_ai.metrics.overlap import dice  # noqa: E402
from cardiac_ai.models import ModelRegistry  # noqa: E402
from cardiac_ai.weak.propagation import carry_mask_between_frames  # noqa: E402
from cardiac_ai.weak.pipeline import WeakModels, explain_volume  # noqa: E402

SPLIT_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Splits" / "acdc_cine_split.json"


def markdown(columns: list[str], rows: list[list[str]]) -> str:
    return format_markdown_table([dict(zip(columns, row)) for row in rows], columns=columns)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--models", default="Resources/Models")
    parser.add_argument("--parts", nargs="+", default=["validation", "test"])
    parser.add_argument("--limit", type=int, help="first N patients of each part (a quick check)")
    parser.add_argument("--report", help="also write the Markdown report here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    models = WeakModels.from_registry(ModelRegistry(paths=[Path(args.models)]), device="cpu")
    split = load_split(SPLIT_FILE)
    refs = list_acdc(args.data, phases=("ED", "ES"))
    registration_s: list[float] = []

    rows, per_volume_rows, call_s, slices = [], [], [], []
    for part in args.parts:
        patients: dict[str, dict] = {}
        for ref in refs_in_part(refs, split, part):
            patients.setdefault(ref.patient_id, {})[ref.metadata["phase"]] = ref
        names = sorted(patients)[: args.limit]
        scores = {"ED": [], "ES U-Net": [], "ES from ED": []}
        for name in names:
            ed, es = load_case(patients[name]["ED"]), load_case(patients[name]["ES"])
            heart_ed = explain_volume(ed.image, models, device="cpu").labels.array > 0
            heart_es = explain_volume(es.image, models, device="cpu").labels.array > 0
            started = time.perf_counter()
            carried = explain_volume(es.image, models, end_diastole=ed.image, device="cpu")
            call_s.append(time.perf_counter() - started)
            slices.append(es.image.array.shape[0])
            started = time.perf_counter()
            carry_mask_between_frames(heart_ed, ed.image.array, es.image.array, es.image.geometry.spacing_kji_mm)
            registration_s.append(time.perf_counter() - started)
            truth_ed, truth_es = ed.labels.array > 0, es.labels.array > 0
            values = (dice(heart_ed, truth_ed), dice(heart_es, truth_es), dice(carried.labels.array > 0, truth_es))
            for key, value in zip(scores, values):
                scores[key].append(value)
            per_volume_rows.append([part, name, *[f"{v:.3f}" for v in values]])
            print(part, name, " ".join(f"{v:.3f}" for v in values), flush=True)
        ed_mean, es_unet, es_carried = (float(np.mean(v)) for v in scores.values())
        rows.append([part, str(len(names)), f"{ed_mean:.3f}", f"{es_unet:.3f}", f"**{es_carried:.3f}**",
                     f"{(ed_mean + es_unet) / 2:.3f}", f"**{(ed_mean + es_carried) / 2:.3f}**"])

    per_ten = [s * 10.0 / n for s, n in zip(registration_s, slices)]
    call_ten = [s * 10.0 / n for s, n in zip(call_s, slices)]
    lines = [
        "# Weak whole heart at end-systole: the U-Net's own against its ED heart carried by registration", "",
        f"Machine: {platform.node()} ({platform.machine()}, {torch.get_num_threads()} threads); models: {args.models}; "
        f"date {time.strftime('%Y-%m-%d')}.", "",
        markdown(["part", "patients", "ED (cam)", "ES (cam)", "ES (cam --ed)", "both phases (cam)",
                  "both phases (ES with --ed)"], rows), "",
        f"Speed (models loaded): registration {np.mean(per_ten):.2f} s per 10 slices (max {np.max(per_ten):.2f}); "
        f"`explain_volume(ES, end_diastole=ED)` in all {np.mean(call_ten):.2f} s per 10 slices "
        f"(max {np.max(call_ten):.2f}; {len(call_s)} volumes of {np.mean(slices):.1f} slices).", "",
        "## Per patient: whole-heart Dice", "",
        markdown(["part", "patient", "ED (cam)", "ES (cam)", "ES (cam --ed)"], per_volume_rows),
    ]
    emit_report(lines, args.report)


if __name__ == "__main__":
    main()
