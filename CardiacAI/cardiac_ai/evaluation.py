"""Comparing a folder of predicted label maps with a folder of true ones (``cardiacai evaluate``)."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import DataError, InputError
from .geometry import Geometry, Volume, align_axes, pad_to_reference_grid
from .io import VOLUME_SUFFIXES, read_label_map, read_volume
from .io.seg_nrrd import names_its_segments
from .labels import remap_label_codes
from .metrics import compare_regions, evaluate_cases, format_markdown_table, format_region_comparison, summarize_rows
from .progress import ProgressCallback, report

__all__ = ["EvaluationResult", "match_label_files", "evaluate_folders", "SUMMARY_COLUMNS"]

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ("dice", "jaccard", "hausdorff_mm", "hd95_mm", "msd_mm")
_TRUTH_SUFFIX = re.compile(r"(_gt|_seg|_labels?|_truth)$")


@dataclass(frozen=True)
class EvaluationResult:
    rows: list[dict] = field(default_factory=list)  # one per case and structure, columns CASE_COLUMNS
    summary: list[dict] = field(default_factory=list)  # one per structure: <metric>_mean, _sd, _n, _n_not_finite
    regional: list[dict] = field(default_factory=list)  # the region-aware paper's Table 1 (base/middle/apex)
    unmatched_predictions: list[str] = field(default_factory=list)
    unmatched_truths: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        headers = ["structure", "cases"] + [f"{c} mean (SD)" for c in SUMMARY_COLUMNS]
        table = [
            {
                "structure": row["structure"],
                "cases": row["n_rows"],
                **{f"{c} mean (SD)": f"{row[f'{c}_mean']:.3f} ({row[f'{c}_sd']:.3f})" for c in SUMMARY_COLUMNS},
            }
            for row in self.summary
        ]
        text = format_markdown_table(table, headers)
        if self.regional:
            text += "\n\nDice (%) per region, base/middle/apex = 20/60/20 % of the labelled slices " \
                    "(* p < 0.01 against middle, Welch):\n\n" + format_region_comparison(self.regional)
        return text


#: Label files evaluate reads: label map volumes, Slicer segmentations and DICOM SEG files.
LABEL_FILE_SUFFIXES = VOLUME_SUFFIXES + (".seg.nrrd", ".dcm")


def _case_key(path: Path) -> str:
    name = path.name
    for suffix in sorted(LABEL_FILE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return _TRUTH_SUFFIX.sub("", name)


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder of label maps.")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and any(path.name.lower().endswith(s) for s in LABEL_FILE_SUFFIXES):
            key = _case_key(path) if path.parent == folder else f"{path.parent.relative_to(folder)}/{_case_key(path)}"
            if key in files:
                kept, other = sorted((files[key], path), key=_format_rank)
                if _format_rank(kept) == _format_rank(other):
                    raise DataError(f"Two label maps in {folder} map to case {key!r}: {files[key].name} and "
                                    f"{path.name}.")
                log.debug("Case %s: %s is used, %s (the same segmentation, another format) is not.", key, kept.name,
                          other.name)
                path = kept  # segment-cine writes one segmentation three ways: the volume file first
            files[key] = path
    return files


def _format_rank(path: Path) -> int:
    """Which of one segmentation's files to read: a label map volume, then a Slicer segmentation, then a DICOM SEG."""
    name = path.name.lower()
    return 2 if name.endswith(".dcm") else 1 if name.endswith(".seg.nrrd") else 0


def match_label_files(pred_dir: Path, truth_dir: Path) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """Pair predictions with truths by case name (``case01.nii.gz`` matches ``case01_gt.nii.gz``)."""
    predictions, truths = _label_files(Path(pred_dir)), _label_files(Path(truth_dir))
    pairs = [(key, predictions[key], truths[key]) for key in sorted(predictions) if key in truths]
    if not pairs:
        raise DataError(
            f"No prediction in {pred_dir} has a matching truth in {truth_dir} "
            f"(found {len(predictions)} and {len(truths)} label maps; names must match, "
            "a truth may end in _gt, _seg or _labels)."
        )
    return pairs, sorted(set(predictions) - set(truths)), sorted(set(truths) - set(predictions))


def _on_one_grid(pred: Volume, truth: Volume, pred_path: Path, truth_path: Path) -> tuple[Volume, Volume]:
    """Both label maps on one grid: maps on one voxel lattice (each cropped to its contents, as Slicer saves a
    segmentation; a DICOM SEG of the segmented slices; axes in another order) are padded onto the box that holds
    both, never resampled; anything off the lattice is an error naming the differing field."""
    if pred.array.shape == truth.array.shape and pred.geometry.is_close(truth.geometry):
        return pred, truth
    # the truth's axes order the stack (its base-to-apex direction), unless it is the DICOM SEG of the two
    if _format_rank(truth_path) == 2 and _format_rank(pred_path) < 2:
        truth_on_pred, pred_on_truth = _on_one_grid(truth, pred, truth_path, pred_path)
        return pred_on_truth, truth_on_pred
    names = {"what": f"labels {pred_path.name}", "reference_name": f"{truth_path.name}"}
    aligned = align_axes(pred, truth.geometry)
    offset = truth.geometry.lattice_offset_kji(aligned.geometry, aligned.spatial_shape)
    if offset is None:
        pad_to_reference_grid(aligned, truth, **names)  # raises, naming what differs
    first = np.minimum(0, offset)
    last = np.maximum(truth.spatial_shape, np.add(offset, aligned.spatial_shape))
    box = Volume(np.zeros(tuple(int(n) for n in last - first), np.uint8), Geometry(
        truth.geometry.spacing_mm, tuple(float(v) for v in truth.geometry.index_to_lps([first])[0]),
        truth.geometry.direction_lps))
    if box.spatial_shape != truth.spatial_shape or aligned.spatial_shape != box.spatial_shape:
        log.info("%s and %s cover different boxes of one voxel lattice; both were padded with background to %s "
                 "voxels.", pred_path.name, truth_path.name, box.spatial_shape)
    return (pad_to_reference_grid(aligned, box, **names),
            pad_to_reference_grid(truth, box, what=f"labels {truth_path.name}", reference_name="common box"))


def evaluate_folders(
    pred_dir: Path,
    truth_dir: Path,
    *,
    labels: Sequence[int] = (1, 2, 3),
    regional_analysis: bool = True,
    base_first: bool = True,
    progress: ProgressCallback | None = None,
    prediction_label_codes: Mapping[int, int] | None = None,
) -> EvaluationResult:
    """Dice, Jaccard, Hausdorff, HD95 and mean surface distance (mm, real spacing) for every matched case, and the
    regional Dice table (base/middle/apex by the truth's labelled slices, ``base_first`` as ACDC) for stacks of
    3 or more slices. ``prediction_label_codes`` ({value: CardiacAI code}, :func:`~cardiac_ai.labels.parse_label_codes`)
    maps the values of predictions that another tool wrote as plain label maps (InputError for one that names its
    segments)."""
    pairs, unmatched_pred, unmatched_truth = match_label_files(pred_dir, truth_dir)
    for name in unmatched_pred:
        log.warning("Prediction %s has no truth; left out.", name)
    for name in unmatched_truth:
        log.warning("Truth %s has no prediction; left out.", name)

    def read_prediction(path: Path, reference):
        if prediction_label_codes is None:
            return read_label_map(path, reference=reference)
        if names_its_segments(path):
            raise InputError(f"{path} names its segments (a .seg.nrrd or DICOM SEG), which are matched by name: "
                             "--label-codes applies to plain label maps only.")
        volume = read_volume(path)
        return volume.with_array(remap_label_codes(volume.array, prediction_label_codes, what=str(path)))

    def cases():
        for index, (key, pred_path, truth_path) in enumerate(pairs):
            report(progress, index / len(pairs), f"Evaluating {key}")
            if _format_rank(truth_path) == 2 and _format_rank(pred_path) < 2:  # the SEG takes the other's slices
                pred = read_prediction(pred_path, None)
                truth = read_label_map(truth_path, reference=pred.geometry)
            else:
                truth = read_label_map(truth_path)
                pred = read_prediction(pred_path, truth.geometry)
            yield key, *_on_one_grid(pred, truth, pred_path, truth_path)

    stacks: list[tuple] = []

    def remember(iterator):
        for key, pred, truth in iterator:
            stacks.append((pred, truth))
            yield key, pred, truth

    rows = evaluate_cases(remember(cases()), labels=tuple(labels))
    summary = summarize_rows(rows, SUMMARY_COLUMNS, group_by="structure")
    regional = []
    if regional_analysis:
        usable = [(p, t) for p, t in stacks if p.array.shape[0] >= 3]
        if usable:
            regional = compare_regions(usable, tuple(labels), base_first=base_first)
        else:
            log.warning("No stack has 3 or more slices; regional (base/middle/apex) analysis skipped.")
    report(progress, 1.0, f"Evaluated {len(pairs)} cases")
    return EvaluationResult(rows, summary, regional, unmatched_pred, unmatched_truth)

