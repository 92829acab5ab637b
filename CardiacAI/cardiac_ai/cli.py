"""The ``cardiacai`` command line: ``cardiacai <command> ... --out DIR``.

Every command accepts ``--device``, ``--overwrite``, ``--progress-lines`` (machine-readable ``PROGRESS <fraction>
<message>`` lines on stdout, read by the Slicer modules) and exits non-zero with a one-line error on bad input:
2 for bad input or data, 3 for model problems, 4 for refused outputs, 5 when some cases of a batch failed,
130 when cancelled (Ctrl-C), 143 when terminated (SIGTERM), 1 for anything unexpected.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
from typing import Callable, Iterator, Sequence

from . import __version__
from .errors import Cancelled, CardiacAIError, DataError, InputError, ModelError, OutputError
from .progress import PROGRESS_LINES_HELP, ProgressCallback, format_progress_line

__all__ = ["main", "build_parser"]

log = logging.getLogger("cardiac_ai.cli")

EXIT_UNEXPECTED = 1
EXIT_INPUT = 2
EXIT_MODEL = 3
EXIT_OUTPUT = 4
EXIT_BATCH_FAILURES = 5
EXIT_CANCELLED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process that SIGTERM ended

Handler = Callable[[argparse.Namespace, ProgressCallback], int]

# Choices shared by the single-case commands and ``batch``; repeated from the backend (cardiac_ai.pipeline.BATCH_TASKS,
# cardiac_ai.fibrosis, cardiac_ai.weak) so that building the parser does not import torch.
BATCH_TASK_CHOICES = ("segment-cine", "function", "map", "fibrosis", "cam", "qc")
MAP_KINDS = ("t1", "t2")
FIBROSIS_MODELS = ("weak", "weak_stack", "pixel")
CAM_METHODS = ("model", "gradcam", "gradcampp")
_STRUCTURES_HELP = ("also split the heart into RV blood pool, LV myocardium and LV blood pool by image intensity "
                    "(no pixel label): structures.nii.gz, structures.seg.nrrd and their volumes in report.json. A "
                    "rough estimate: per-volume Dice on held-out ACDC patients about 0.53 / 0.64 / 0.74, volumes "
                    "off by 30-50 ml")
_LABEL_CODES_HELP = ("another tool's label values, as the value of each structure in the label map: RV, MYO, LV (also "
                     "SCAR, MVO, HEART; BG drops a value, e.g. BG=-1; VALUE may be a comma list), e.g. LV=1 MYO=2 RV=3 "
                     "(M&Ms) or "
                     "MYO=255 (binary mask); every nonzero value must be named; the file is not changed; only the "
                     "structures named are judged")
_WRITE_SURROGATE_HELP = "also write the surrogate segmentation: surrogate.nii.gz and surrogate.seg.nrrd"
#: cardiac_ai.weak.cam.AUGMENTATIONS, repeated for the same reason (a test checks that they agree).
CAM_AUGMENTATIONS = ("hflip", "vflip", "shift")
#: cardiac_ai.weak.structures.LV_WALL_MM, repeated for the same reason (the same test checks it).
LV_WALL_MM = 11.0
_HANDLERS: dict[str, Handler] = {}


# -- progress ----------------------------------------------------------------------------------------------------
class _ProgressPrinter:
    """Progress to the terminal: PROGRESS lines with --progress-lines, a tqdm bar on a terminal, else nothing."""

    def __init__(self, *, lines: bool, quiet: bool) -> None:
        self.lines = lines
        self.bar = None
        if not lines and not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", leave=False, bar_format="{l_bar}{bar}| {elapsed}")
        self._last = 0

    def __call__(self, fraction: float, message: str) -> None:
        if self.lines:
            print(format_progress_line(fraction, message), flush=True)
        elif self.bar is not None:
            done = int(round(fraction * 1000))
            if done > self._last:
                self.bar.update(done - self._last)
                self._last = done
            self.bar.set_description_str(message[:40])

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# -- parser ------------------------------------------------------------------------------------------------------
def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    group.add_argument("--overwrite", action="store_true",
                       help="redo this command's earlier run in a non-empty output folder (never another command's "
                            "output, nor a folder another run is writing); train: start the run again")
    group.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    group.add_argument(
        "--models-dir", action="append", default=[], metavar="DIR",
        help="extra folder of trained models (searched before the bundled ones; also CARDIACAI_MODELS)",
    )
    group.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    group.add_argument("-q", "--quiet", action="store_true", help="only errors")
    group.add_argument("--debug", action="store_true", help="show the full traceback of unexpected errors")
    return common


def _command(name: str):
    def register(function: Handler) -> Handler:
        _HANDLERS[name] = function
        return function

    return register


def _whole_number_at_least_0(text: str) -> int:
    """argparse type of seeds and frame numbers: a whole number >= 0 (a negative one is an argument error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _finite_number_at_least(minimum: float, hint: str = ""):
    """argparse type of a finite number >= ``minimum`` (``hint`` added to the error, e.g. what the paper used)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum:g}{hint}, got {text}")
        return value

    return parse


#: ``--min-heart-ml`` and the like; ``--sampling-ratio`` (a max/min probability ratio, 1 is uniform).
_non_negative_number = _finite_number_at_least(0.0)
_ratio_at_least_1 = _finite_number_at_least(1.0, " (the paper used 4 and 20)")


def _whole_number_at_least_1(text: str) -> int:
    value = _whole_number_at_least_0(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _otsu_classes(text: str) -> int:
    """argparse type of ``--otsu-classes``: 0 (skip the multi-Otsu step) or a whole number from 2 to 4."""
    from .weak.pseudo_labels import MAX_OTSU_CLASSES

    value = _whole_number_at_least_0(text)
    if value == 1 or value > MAX_OTSU_CLASSES:
        raise argparse.ArgumentTypeError(f"must be 0 (no multi-Otsu step) or 2 to {MAX_OTSU_CLASSES}, got {value}")
    return value


#: Destinations of the options that replace a pseudo-label setting of the classifier's model card.
_PSEUDO_LABEL_OPTIONS = ("crf_iterations", "crf_smoothness", "crf_appearance", "otsu_classes", "scale_range",
                         "min_fraction")


def _add_cam_settings(group, *, prefix: str) -> None:
    """``--cam-augment`` and the pseudo-label settings of ``cam`` (and, each help starting with ``prefix``, of
    ``batch --task cam``). Pixels are those of the classifier's crop (the grid its model card names)."""
    card = " (default: the classifier's model card)"
    group.add_argument(
        "--lv-wall-mm", type=float, metavar="MM",
        help=f"{prefix}add to the weak U-Net's heart, on every slice, the band within MM of the LV blood pool found in "
             f"it (the U-Net misses about 30 %% of the myocardium); default {LV_WALL_MM:g}, chosen on ACDC validation "
             "patients (whole-heart Dice 0.72 -> 0.74); 0 keeps the U-Net's output as it is, 30 at most")
    group.add_argument(
        "--cam-augment", nargs="+", choices=CAM_AUGMENTATIONS, metavar="VIEW",
        help=f"{prefix}average the CAM of each slice with those of these views, each mapped back to the slice: hflip "
             "(left-right flip), vflip (up-down flip), shift (circular shift by 1/16 of the crop along rows and "
             "columns); default: the plain slice only")
    group.add_argument("--crf-iterations", type=_whole_number_at_least_1, metavar="N",
                       help=f"{prefix}with --pseudo-label: DenseCRF mean-field iterations{card}")
    group.add_argument("--crf-smoothness", type=float, nargs=2, metavar=("W", "PX"),
                       help=f"{prefix}with --pseudo-label: DenseCRF smoothness (Gaussian) kernel weight w2 and width "
                            f"theta_gamma in pixels; weight 0 drops the kernel{card}")
    group.add_argument("--crf-appearance", type=float, nargs=3, metavar=("W", "PX", "GREY"),
                       help=f"{prefix}with --pseudo-label: DenseCRF appearance (bilateral) kernel weight w1, spatial "
                            "width theta_alpha in pixels and intensity width theta_beta in grey levels of the slice "
                            f"scaled to 0-255; used only when w1 > 0{card}")
    group.add_argument("--otsu-classes", type=_otsu_classes, metavar="N",
                       help=f"{prefix}with --pseudo-label: classes of the multi-Otsu step, whose lowest class of "
                            f"candidate pixels is dropped, 2 to 4; 0 skips the step{card}")
    group.add_argument("--scale-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                       help=f"{prefix}with --pseudo-label: probability range the positive CAM values are scaled into "
                            f"before the CRF, 0 <= LOW < HIGH <= 1; the paper's is 0.5 1{card}")
    group.add_argument("--min-fraction", type=float, metavar="F",
                       help=f"{prefix}with --pseudo-label: candidate pixels must reach F times the slice's CAM "
                            f"maximum, 0 <= F < 1; 0 keeps every positive pixel{card}")


def _lv_wall_mm(args: argparse.Namespace) -> float | None:
    """``--lv-wall-mm`` checked (InputError before any model loads); None when not given (the backend's default, and
    no warning that a width given with --pseudo-label goes unused)."""
    from .weak.structures import check_wall_mm

    return None if args.lv_wall_mm is None else check_wall_mm(args.lv_wall_mm)


def _pseudo_label_overrides(args: argparse.Namespace) -> dict:
    """The pseudo-label settings given on the command line, as PseudoLabelConfig fields, checked before any model
    loads; InputError without --pseudo-label, where the weak U-Net would make the labels and they would do nothing."""
    given = [f"--{dest.replace('_', '-')}" for dest in _PSEUDO_LABEL_OPTIONS if getattr(args, dest) is not None]
    if not given:
        return {}
    if not args.pseudo_label:
        raise InputError(f"{', '.join(given)} set the CAM pseudo-label; add --pseudo-label to make the labels from "
                         "it (without it the weak U-Net makes them when installed).")
    from .weak.pseudo_labels import pseudo_label_overrides

    return pseudo_label_overrides(**{dest: getattr(args, dest) for dest in _PSEUDO_LABEL_OPTIONS},
                                  spelled=lambda dest: f"--{dest.replace('_', '-')}")


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="cardiacai",
        description="CardiacAI: cardiac MRI segmentation, T1/T2 mapping, LGE fibrosis, CAM and QC.",
    )
    parser.add_argument("--version", action="version", version=f"cardiac_ai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("info", parents=[common], help="versions, device and models found")
    p.add_argument("--json", action="store_true", help="print the information as JSON")

    p = sub.add_parser("convert", parents=[common], help="convert an image (NIfTI, NRRD, MHA, DICOM folder, PNG)")
    p.add_argument("input", help="input file, DICOM folder, Slicer .seg.nrrd or DICOM SEG (read as a label map in "
                                 "CardiacAI codes, segments matched by name)")
    p.add_argument("--out", required=True, help="output file: .nii.gz, .nii, .nrrd, .mha, or .seg.nrrd for labels")
    p.add_argument("--frame", type=_whole_number_at_least_0,
                   help="0-based frame of a 4D series (or phase of a DICOM cine series, in trigger-time order)")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM", help="pixel spacing for PNG input (i j [k])")
    p.add_argument("--series-uid", help="DICOM SeriesInstanceUID to read when the folder holds several series")

    p = sub.add_parser("demo", parents=[common], help="run the main job on the bundled synthetic phantom")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=_whole_number_at_least_0, default=0)

    cine = argparse.ArgumentParser(add_help=False)
    group = cine.add_argument_group("cine segmentation")
    group.add_argument("--frame", type=_whole_number_at_least_0,
                       help="0-based frame of a 4D cine file, or phase of a DICOM cine series (trigger-time order)")
    group.add_argument("--series-uid", help="DICOM SeriesInstanceUID when the folder holds several series")
    group.add_argument("--mode", choices=["region-aware", "baseline"], default="region-aware",
                       help="region-aware: slice-region classifier + base/middle/apex models (default)")
    group.add_argument("--base", choices=["auto", "first", "last"], default="auto",
                       help="where the base lies along the slice axis (auto: decided by the region classifier)")
    group.add_argument("--regions", choices=["classifier", "segmentation"], default="classifier",
                       help="region-aware mode: slice regions from the region classifier (default) or from the "
                            "20/60/20 split of the slices the baseline segments")
    group.add_argument("--region-combination", choices=["average", "replace"], default="average",
                       help="region-aware mode: average each region model with the baseline (default, chosen on "
                            "the validation patients) or let the region model alone decide (the paper)")
    group.add_argument("--no-postprocess", action="store_true", help="keep the raw network labels")
    group.add_argument("--min-heart-ml", type=_non_negative_number, metavar="ML",
                       help="smallest heart the localiser may find before the image counts as holding none (empty "
                            "segmentation, a warning); default 60 (adult hearts in ACDC: 106 ml and more); lower it "
                            "for small (paediatric) hearts, 0 accepts anything")

    quality = _qc_parent()
    p = sub.add_parser("segment-cine", parents=[common, cine, quality], help="segment a short-axis cine frame")
    p.add_argument("input", help="3D short-axis volume (NIfTI, NRRD, MHA, DICOM folder)")
    p.add_argument("--out", required=True, help="output folder: labels.nii.gz, segmentation.seg.nrrd, report.json")

    p = sub.add_parser("function", parents=[common, cine, quality],
                       help="LV/RV volumes, EF and LV mass from ED and ES")
    p.add_argument("ed", help="end-diastolic short-axis volume")
    p.add_argument("es", help="end-systolic short-axis volume (may be the ED file or DICOM folder, with --ed-frame "
                              "and --es-frame, or with --ed-series-uid and --es-series-uid)")
    p.add_argument("--out", required=True, help="output folder: labels_ed/es.nii.gz, .seg.nrrd, function.csv, "
                                                "report.json (--from-labels: function.csv and report.json)")
    p.add_argument("--ed-frame", type=_whole_number_at_least_0, metavar="N",
                   help="0-based end-diastolic frame of a 4D ED file or DICOM cine series (default: --frame)")
    p.add_argument("--es-frame", type=_whole_number_at_least_0, metavar="N",
                   help="0-based end-systolic frame of a 4D ES file or DICOM cine series (default: --frame)")
    p.add_argument("--ed-series-uid", metavar="UID",
                   help="SeriesInstanceUID of the end-diastolic series when the ED folder holds several "
                        "(default: --series-uid)")
    p.add_argument("--es-series-uid", metavar="UID",
                   help="SeriesInstanceUID of the end-systolic series when the ES folder holds several (default: "
                        "--series-uid); ED and ES may then be one folder")
    p.add_argument("--from-labels", action="store_true",
                   help="ED and ES are label maps (manual contours, another tool's output; .seg.nrrd and DICOM SEG by "
                        "their segment names): no segmentation, the volumes, ejection fractions and LV mass of those "
                        "labels (function.csv, report.json)")
    p.add_argument("--label-codes", nargs="+", metavar="NAME=VALUE",
                   help="with --from-labels: the label maps' values when another tool wrote them, e.g. LV=1 MYO=2 RV=3")

    p = sub.add_parser(
        "batch", parents=[common, cine, quality],
        help="run segment-cine, function, map, fibrosis, cam or qc over a cohort (resumable; summary.csv)",
        description="Run one task over every case of a cohort, with the models loaded once. Each case gets the "
                    "output folder of the single-case command (OUT/<case_id>/); OUT/summary.csv holds one row per "
                    "case (status, the task's main numbers, warnings, QC, error, seconds). A case whose folder "
                    "holds report.json is skipped (--overwrite redoes it); a failing case never stops the batch, "
                    "and the exit status is then 5. The cine options apply to segment-cine and function (--frame "
                    "also to cam), quality control to segment-cine, function, map and fibrosis; --task qc checks "
                    "existing segmentations (a CSV of case_id,image,labels) with --qc-threshold and --qc-predictor.",
    )
    p.add_argument("source", help="folder of inputs (a volume file, DICOM folder or, for fibrosis, PNG-slice folder "
                                  "per case) or CSV: case_id,input (function: case_id,ed,es; qc: case_id,image,labels)")
    p.add_argument("--task", choices=BATCH_TASK_CHOICES, default="segment-cine",
                   help="what to run on every case, as the command of that name (default %(default)s)")
    p.add_argument("--out", required=True, help="output folder: one subfolder per case and summary.csv")
    group = p.add_argument_group("map, fibrosis and cam tasks (the options of those commands)")
    group.add_argument("--kind", type=str.lower, choices=MAP_KINDS, help="map: what the maps hold (required)")
    group.add_argument("--erosion-mm", type=float, metavar="MM", help="map: myocardial erosion in mm (default 0)")
    group.add_argument("--model", choices=FIBROSIS_MODELS,
                       help="fibrosis: scar model (default weak; see `cardiacai fibrosis --help`)")
    group.add_argument("--no-classifier", action="store_true",
                       help="fibrosis: skip the per-slice and patient (stack) probabilities")
    group.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                       help="fibrosis: pixel spacing of PNG inputs (i j [k]); without it numbers are in pixels")
    group.add_argument("--pixel-size-unknown", action="store_true",
                       help="fibrosis: ignore the spacing the files state (PNG slices saved by a viewer with 1 mm "
                            "pixels); numbers in pixels")
    group.add_argument("--explain", metavar="CLASS",
                       help="cam: class mapped on every slice (default 'predicted': the volume's predicted class; "
                            "'slice': each slice's own)")
    group.add_argument("--method", choices=CAM_METHODS, help="cam: CAM method (default: the model card's)")
    group.add_argument("--pseudo-label", action="store_true",
                       help="cam: labels from the CAM pseudo-label even when the weak U-Net is installed")
    group.add_argument("--structures", action="store_true", help="cam: " + _STRUCTURES_HELP)
    _add_cam_settings(group, prefix="cam: ")
    group = p.add_argument_group("qc task (the options of `cardiacai qc`; threshold and predictor: --qc-threshold, "
                                 "--qc-predictor)")
    group.add_argument("--label-codes", nargs="+", metavar="NAME=VALUE", help="qc: " + _LABEL_CODES_HELP)
    group.add_argument("--write-surrogate", action="store_true", help="qc: " + _WRITE_SURROGATE_HELP)
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="cases processed at once, each in its own process with its own copy of the models "
                        "(default 1). Most per-case work is CPU-bound, so on a many-core machine (with or without "
                        "a GPU) N up to the number of cores / 2 multiplies the throughput; memory grows with N")

    p = sub.add_parser("evaluate", parents=[common], help="compare predicted with true label maps (Dice, HD95, ...)")
    p.add_argument("pred_dir", help="folder of predicted label maps (volume files, .seg.nrrd or DICOM SEG .dcm)")
    p.add_argument("truth_dir", help="folder of true label maps (names match; a truth may end in _gt)")
    p.add_argument("--out", help="folder for metrics.csv, summary.csv, regional.csv and report.json (optional)")
    p.add_argument("--labels", type=int, nargs="+", default=[1, 2, 3], help="label codes to evaluate")
    p.add_argument("--label-codes", nargs="+", metavar="NAME=VALUE",
                   help="the predictions' values, when another tool wrote them with its own (the truth stays in "
                        "CardiacAI codes): RV, MYO, LV (also SCAR, MVO, HEART; BG drops a value, e.g. BG=-1; VALUE "
                        "may be a comma list), e.g. LV=1 MYO=2 RV=3 (nnU-Net on M&Ms); label maps only (a .seg.nrrd "
                        "or DICOM SEG is matched by its segment names)")

    p = sub.add_parser(
        "train", parents=[common], help="train a model on ACDC, EMIDEC or your own data",
        description="segmentation: a U-Net from pixel label maps. weak-cam: from an image-level label only (a "
                    "labels.csv column such as diagnosis, or the ACDC diagnosis of Info.cfg): a CAM classifier, its "
                    "class activation maps turned into pseudo-labels, and a whole-heart U-Net trained on them. "
                    "weak-cam never reads a pixel label map, even when the folder has labels/. It uses the ED-ES "
                    "motion prior when every case has its other phase (case ids <patient>_ED and <patient>_ES), "
                    "else the CAMs. With --register-to DIR, `cardiacai cam INPUT --models-dir DIR` uses the models. "
                    "fibrosis: the LGE models of `cardiacai fibrosis` (generic or EMIDEC layout): the myocardium "
                    "U-Net from the label maps (scar and MVO count as myocardium), the slice fibrosis classifier "
                    "from slice-level 0/1 labels (a labels.csv column, --label-column, default fibrosis, with a "
                    "slice column), its CAM pseudo-labels and the weak scar U-Net trained on them; the weak models "
                    "never read the pixel scar labels. The stack-level classifier and the pixel-supervised U-Net "
                    "are not trained (scripts/train_emidec_fibrosis.py trains them on EMIDEC). With --register-to "
                    "DIR, `cardiacai fibrosis INPUT --models-dir DIR` uses the models.",
    )
    p.add_argument("--task", choices=["segmentation", "weak-cam", "fibrosis"], default="segmentation",
                   help="segmentation (needs label maps), weak-cam (image-level labels only; label maps are NOT "
                        "read) or fibrosis (LGE: label maps for the myocardium, slice-level labels for the scar)")
    p.add_argument("--data", required=True, help="data folder")
    p.add_argument("--layout", choices=["auto", "acdc", "emidec", "generic"], default="auto",
                   help="how the folder is laid out (auto: recognised from its contents)")
    p.add_argument("--out", required=True, help="run folder: split.json and checkpoints/ (weak-cam: prepared slices, "
                                                "run_classifier/, pseudo-labels, run_weak_*/)")
    p.add_argument("--split", help="split JSON to use (default: a stratified 80/20 patient split, saved in --out)")
    p.add_argument("--network", help="segmentation: network name (default unet2d; `cardiacai info` lists them)")
    p.add_argument("--epochs", type=int, help="default 100 (weak-cam and fibrosis: 30, of the classifier)")
    p.add_argument("--batch-size", type=int, help="default 16 (weak-cam: 32)")
    p.add_argument("--learning-rate", type=float, help="default 1e-3 (weak-cam: 1e-3 classifier, 2e-3 U-Net)")
    p.add_argument("--crop-size", type=int,
                   help="square crop in pixels (default 128; weak-cam: 96, a multiple of 16, around the image centre)")
    p.add_argument("--spacing", type=float, help="in-plane spacing in mm the model works at (default 1.25; weak-cam 2)")
    p.add_argument("--seed", type=_whole_number_at_least_0, default=0)
    p.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    p.add_argument("--model-name", default="custom_unet2d",
                   help="segmentation: name of the registered model (weak-cam registers weak_cam_classifier and "
                        "weak_heart_unet). Named cine_baseline, `cardiacai segment-cine --models-dir DIR --mode "
                        "baseline` segments with it in place of the bundled baseline (the bundled localiser still "
                        "finds the heart)")
    p.add_argument("--model-version", default="1.0")
    p.add_argument("--register-to", metavar="DIR", help="write the trained model(s) here (a --models-dir folder)")
    p.add_argument("--sampling-ratio", type=_ratio_at_least_1, metavar="R",
                   help="segmentation: region-aware batch sampling (the region-aware paper's approach 1): batches "
                        "drawn with a quadratic probability over the slice position from base to apex, basal and "
                        "apical slices R times as often as mid-ventricular ones (the paper used 4 and 20); slices "
                        "outside the labelled heart keep the mean probability. Default: uniform shuffling")
    group = p.add_argument_group("weak-cam (image-level labels only; pixel label maps are never read)")
    group.add_argument("--label-column", metavar="NAME",
                       help="the image-level label to learn: a labels.csv column (generic layout, required, e.g. "
                            "diagnosis); ACDC: group, the Info.cfg diagnosis (the default)")
    group.add_argument("--seg-epochs", type=int, help="weak U-Net epochs (default: --epochs)")
    group.add_argument("--self-epochs", type=int,
                       help="epochs of the self-trained U-Net (default: --seg-epochs; on ACDC 100 did better than 25 "
                            "and 50)")
    group.add_argument("--prior", choices=["auto", "cam", "motion"],
                       help="where the pseudo-labels come from: auto (default: ED-ES motion when every case has both "
                            "phases, else CAM), cam, or motion")
    group.add_argument("--weak-mode", choices=["self_training", "pseudo_label", "cam_prior"],
                       help="U-Net target: self_training (default: a U-Net on the pseudo-labels, then a second one "
                            "on the first one's own predictions, thresholded and eroded; about twice the U-Net "
                            "time), pseudo_label (DenseCRF pseudo-labels only) or cam_prior (soft CAM)")
    group.add_argument("--width", type=int,
                       help="channels of the first level of both networks, doubled per level (default 16)")
    group = p.add_argument_group("fibrosis (LGE; also takes --label-column, default fibrosis, --seg-epochs: epochs of "
                                 "the myocardium and weak U-Nets, default 40, and --width)")
    group.add_argument("--slice-labels-from-label-maps", action="store_true",
                       help="fibrosis: a slice that labels.csv does not label is positive when its label map holds "
                            "scar (4) or MVO (5), else negative. Off by default: the weak labels come from labels.csv "
                            "only (a whole-case 0 marks all its slices negative). EMIDEC is always read so")

    p = sub.add_parser("map", parents=[common, quality],
                       help="myocardial T1 or T2 from a map: contours, AHA segments, stats")
    p.add_argument("input", help="T1 or T2 map in ms (NIfTI, NRRD, MHA, DICOM folder); 0 = not fitted")
    p.add_argument("--kind", required=True, type=str.lower, choices=MAP_KINDS,
                   help="what the map holds (checked against values)")
    p.add_argument("--out", required=True,
                   help="output folder: labels.nii.gz, stats.json, contours.json, bullseye.png, report.json")
    p.add_argument("--erosion-mm", type=float, default=0.0, metavar="MM",
                   help="erode the myocardium by MM in-plane before its statistics (partial volume); default 0")
    p.add_argument("--levels", nargs="+", choices=["base", "mid", "apex"],
                   help="level of each slice in slice order (default: thirds of the stack, base first)")
    p.add_argument("--series-uid", help="DICOM SeriesInstanceUID when the folder holds several series")

    p = sub.add_parser("fit-map", parents=[common], help="fit a T1 (MOLLI) or T2 (T2-prepared) map from raw series")
    p.add_argument("series", help="4D series file (frames along the 4th axis, or a vector NRRD such as Slicer's "
                                  "MultiVolume) or DICOM folder")
    p.add_argument("--kind", required=True, choices=["molli", "t2prep"])
    p.add_argument("--out", required=True, help="output folder: t1_map.nii.gz or t2_map.nii.gz, r2_map.nii.gz, "
                                                "report.json")
    p.add_argument("--times", type=float, nargs="+", metavar="MS",
                   help="inversion (molli) or T2-preparation (t2prep) times in ms, one per frame, in frame order")
    p.add_argument("--sidecar", metavar="FILE", help="JSON ({\"inversion_times_ms\": [...]} or "
                                                     "{\"echo_times_ms\": [...]}) or one-column CSV of times in ms")
    p.add_argument("--signed", action="store_true",
                   help="molli: phase-sensitive (PSIR) frames, negative before the null point (default: magnitude)")
    p.add_argument("--t2-model", choices=["mono", "mono_offset"], default="mono",
                   help="T2 model: S0 exp(-TE/T2), or with a constant offset (needs 4 or more times)")
    p.add_argument("--series-uid", help="DICOM SeriesInstanceUID when the folder holds several series")

    p = sub.add_parser("ecv", parents=[common], help="extracellular volume from native and post-contrast T1 maps")
    p.add_argument("native", help="native T1 map in ms")
    p.add_argument("post", help="post-contrast T1 map in ms (same grid for a pixelwise ECV map)")
    p.add_argument("--out", required=True, help="output folder: labels.nii.gz, ecv_map.nii.gz, report.json")
    p.add_argument("--haematocrit", type=float, metavar="H",
                   help="measured haematocrit as a fraction (0.42); default: synthetic haematocrit (1.5 T)")
    p.add_argument("--erosion-mm", type=float, default=0.0, metavar="MM", help="myocardial erosion (mm)")
    p.add_argument("--series-uid", help="DICOM SeriesInstanceUID when the folder holds several series")

    p = sub.add_parser("qc", parents=[common], help="predict the Dice of a segmentation without ground truth")
    p.add_argument("image", help="short-axis image (NIfTI, NRRD, MHA, DICOM folder; one 3D frame)")
    p.add_argument("labels", help="its segmentation: label map (1 RV, 2 myocardium, 3 LV; others: --label-codes), "
                                  ".seg.nrrd or DICOM SEG file, on the image's voxel lattice (a box of it, as Slicer "
                                  "crops, is padded with 0; axes in another order are reordered)")
    p.add_argument("--out", required=True, help="output folder: report.json, qc_slices.csv (and the surrogate)")
    # --qc-threshold / --qc-predictor as in the segmenting commands and batch --task qc: one spelling works everywhere
    p.add_argument("--threshold", "--qc-threshold", dest="threshold", type=float, default=_QC_THRESHOLD,
                   metavar="DICE",
                   help="flag slices whose predicted Dice is below DICE (default %(default)s)")
    p.add_argument("--predictor", "--qc-predictor", dest="predictor", choices=_QC_PREDICTORS, default="auto",
                   help=_QC_PREDICTOR_HELP)
    p.add_argument("--label-codes", nargs="+", metavar="NAME=VALUE", help=_LABEL_CODES_HELP)
    p.add_argument("--write-surrogate", action="store_true", help=_WRITE_SURROGATE_HELP)

    p = sub.add_parser("cam", parents=[common],
                       help="class activation map and whole-heart labels from diagnosis-label (weak) models")
    p.add_argument("input", help="short-axis image (NIfTI, NRRD, MHA, DICOM folder; one 3D frame)")
    p.add_argument("--out", required=True,
                   help="output folder: cam.nii.gz, labels.nii.gz, segmentation.seg.nrrd, cam_slices.csv, report.json")
    p.add_argument("--explain", metavar="CLASS",
                   help="class whose evidence is mapped on every slice (e.g. DCM); default (or 'predicted'): the class "
                        "predicted for the whole volume (mean of the slice probabilities), so cam.nii.gz shows one "
                        "class; 'slice': each slice's own prediction (slices may differ). report.json and "
                        "cam_slices.csv give each slice's explained_class and predicted_class")
    p.add_argument("--method", choices=CAM_METHODS,
                   help="CAM method; default: the one chosen on validation patients (in the model card)")
    p.add_argument("--pseudo-label", action="store_true",
                   help="labels from the CAM pseudo-label (DenseCRF) even when the weak U-Net is installed")
    p.add_argument("--structures", action="store_true", help=_STRUCTURES_HELP)
    p.add_argument("--frame", type=_whole_number_at_least_0,
                   help="frame of a 4D input, or phase of a DICOM cine series (0-based)")
    p.add_argument("--series-uid", help="DICOM SeriesInstanceUID of INPUT when its folder holds several series")
    p.add_argument("--ed", metavar="IMAGE",
                   help="the end-diastolic frame of the same cine series (file or DICOM folder), when INPUT is another "
                        "frame (end-systole): the weak U-Net's heart on it, carried onto INPUT by image registration, "
                        "makes labels.nii.gz; the U-Net draws an end-diastolic-sized heart on every frame, so this "
                        "is better at end-systole (held-out ACDC end-systolic whole-heart Dice 0.72 -> 0.75). The CAM stays INPUT's")
    p.add_argument("--ed-frame", type=_whole_number_at_least_0, metavar="N",
                   help="0-based end-diastolic frame of a 4D --ed file, or of a 4D INPUT when --ed is not given")
    _add_cam_settings(p.add_argument_group(
        "CAM averaging and pseudo-label settings (pixels are those of the classifier's crop; report.json's cam "
        "section records the settings used)"), prefix="")

    p = sub.add_parser("fibrosis", parents=[common, quality],
                       help="LGE scar segmentation: myocardium, scar, MVO, transmurality")
    p.add_argument("input", help="LGE short-axis stack: NIfTI/NRRD/MHA, DICOM folder, a PNG slice, or a folder of one "
                                 "patient's <patient>_sliceNNN.png slices (EMIDEC)")
    p.add_argument("--out", required=True, help="output folder: labels.nii.gz, segmentation.seg.nrrd, report.json, "
                                                "fibrosis.csv, transmurality.csv")
    p.add_argument("--model", choices=FIBROSIS_MODELS, default="weak",
                   help="scar model: weak = trained on slice-level labels (default), weak_stack = on patient-level "
                        "labels, pixel = on pixel labels (comparison)")
    p.add_argument("--spacing", type=float, nargs="+", metavar="MM",
                   help="pixel spacing for PNG input (i j [k]); without it numbers are in pixels")
    p.add_argument("--pixel-size-unknown", action="store_true",
                   help="ignore the spacing the file states: for PNG slices a viewer loaded with its default 1 mm "
                        "pixels and saved (e.g. as NRRD); EMIDEC's pixel is assumed for the models and the numbers "
                        "are in pixels")
    p.add_argument("--levels", nargs="+", choices=["base", "mid", "apex"],
                   help="level of each slice in slice order, for AHA segment numbers (default: unknown, 6 sectors)")
    p.add_argument("--slice-order", choices=["base-first", "apex-first"],
                   help="instead of --levels: where the base lies along the slices; the slices with myocardium are "
                        "split into basal, mid and apical thirds for AHA segment numbers")
    p.add_argument("--anchor-angle", type=float, metavar="DEG",
                   help="screen angle (0 right, 90 up) of the anterior RV insertion point, on the slices shown as "
                        "a short-axis view (viewed from the apex; report.json's input.slices_shown_to_networks says "
                        "how the stored slices were turned to show them so); default: standard view (approximate)")
    p.add_argument("--no-classifier", action="store_true",
                   help="skip the per-slice fibrosis probability and the patient one (report.json's "
                        "patient_fibrosis_probability, from lge_fibrosis_stack_classifier when installed)")
    p.add_argument("--series-uid", help="DICOM SeriesInstanceUID when the folder holds several series")

    return parser


#: Default QC flag threshold: cardiac_ai.qc.DEFAULT_DICE_THRESHOLD (why 0.80: see there), repeated here so that
#: building the parser does not import torch; a test checks that the two agree.
_QC_THRESHOLD = 0.80
#: cardiac_ai.qc.QC_PREDICTORS, repeated for the same reason (a test checks that they agree).
_QC_PREDICTORS = ("auto", "search", "regressor", "combined")
_QC_PREDICTOR_HELP = ("where the predicted Dice comes from: the CNN Dice regressor (regressor), the VAE's latent "
                      "search (search), both weighed as the regressor's card says (combined), or auto (default): "
                      "the regressor weighed with the search where that runs anyway (cardiacai qc) or with the VAE "
                      "encoder's Dice (the segmenting commands) when its card says how, else the regressor when "
                      "installed, else the search")


def _qc_parent() -> argparse.ArgumentParser:
    """``--no-qc`` and ``--qc-threshold`` of the commands that segment (QC runs when a qc_vae model is found)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("quality control (generative QC; runs when a qc_vae model is found)")
    group.add_argument("--no-qc", action="store_true", help="do not quality-check the segmentation")
    group.add_argument("--qc-threshold", type=float, default=_QC_THRESHOLD, metavar="DICE",
                       help="flag slices whose predicted Dice is below DICE (default %(default)s)")
    group.add_argument("--qc-predictor", choices=_QC_PREDICTORS, default="auto", help=_QC_PREDICTOR_HELP)
    return parent


# -- commands ----------------------------------------------------------------------------------------------------
@_command("info")
def _info(args: argparse.Namespace, progress: ProgressCallback) -> int:
    import json
    import platform

    import numpy
    import SimpleITK

    info: dict = {
        "cardiac_ai": __version__,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "SimpleITK": SimpleITK.Version.VersionString(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        from .device import resolve_device

        info["device"] = str(resolve_device(args.device))
    except ImportError:
        info["torch"] = None
        info["device"] = "unavailable: torch is not installed"
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError:
        info["monai"] = None
    info["models"], info["unusable_model_cards"] = _list_models(args)
    try:
        from .models.networks import network_names

        info["networks"] = list(network_names())  # what `cardiacai train --network` takes
    except ImportError:
        info["networks"] = []
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            if key in ("models", "unusable_model_cards"):
                if key == "models" or value:
                    print(f"{key:<{width}}  {len(value)} found")
                for model in value:
                    print(f"{'':<{width}}  - {model}")
            elif key == "networks":
                print(f"{key:<{width}}  {', '.join(value)}")
            else:
                print(f"{key:<{width}}  {value}")
    return 0


def _list_models(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The models found ("name version") and the cards that were found but cannot be used ("path: why")."""
    try:
        from .models.registry import ModelRegistry
    except ImportError:
        return [], []
    registry = ModelRegistry(extra_paths=[Path(p) for p in args.models_dir])
    return ([f"{card.name} {card.version}" for card in registry.list()],
            [f"{path}: {why}" for path, why in registry.problems.items()])


@_command("convert")
def _convert(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .io import ensure_not_input, read_volume, write_volume
    from .io.volumes import check_not_detached_header

    out = Path(args.out)
    ensure_not_input(out, [args.input])
    if out.is_dir():
        raise OutputError(f"--out {out} is a folder; convert writes one file: give a file path such as "
                          f"{out / 'image.nii.gz'}.")
    if out.exists() and not args.overwrite:
        raise OutputError(f"{out} exists; pass --overwrite to replace it.")
    check_not_detached_header(out)  # before a large input is read
    if args.spacing and (args.series_uid or not str(args.input).lower().endswith(".png")):
        raise InputError("--spacing applies to PNG input only (a PNG stores no pixel size); other formats keep the "
                         "spacing of their header.")
    progress(0.0, "Reading")
    kwargs = {}
    if args.series_uid:
        from .io.dicom import read_dicom_series

        volume = read_dicom_series(Path(args.input), series_uid=args.series_uid, frame=args.frame)
    elif _is_segmentation_file(args.input):
        # segments matched by name or terminology (their own label values are the drawing tool's, not CardiacAI's
        # codes); a DICOM SEG on the lattice of its frames
        from .io.seg_nrrd import read_label_file

        if args.frame is not None:
            raise InputError(f"--frame applies to 4D images; {args.input} is a segmentation.")
        volume = read_label_file(args.input).labels
    else:
        if args.spacing:
            kwargs["spacing_mm"] = tuple(args.spacing)
        volume = read_volume(args.input, frame=args.frame, allow_complex=True, **kwargs)  # converted as it is
    progress(0.5, "Writing")
    if out.name.lower().endswith(".seg.nrrd"):
        import numpy as np

        from .io.seg_nrrd import write_seg_nrrd
        from .labels import check_label_values

        check_label_values(volume.array, what=str(args.input))
        write_seg_nrrd(volume.with_array(volume.array.astype(np.uint8)), out)
    else:
        write_volume(volume, out)
    progress(1.0, "Done")
    log.info("Wrote %s (%s voxels, spacing %s mm)", out, volume.array.shape, volume.geometry.spacing_mm)
    return 0


def _is_segmentation_file(path) -> bool:
    """A Slicer .seg.nrrd or a DICOM SEG: files whose segments, not their voxel values, say which structure is which."""
    from .io.dicom_seg import is_dicom_seg

    source = Path(path)
    return source.is_file() and (source.name.lower().endswith(".seg.nrrd") or is_dicom_seg(source))


@_command("demo")
def _demo(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .demo import run_demo

    summary = run_demo(Path(args.out), seed=args.seed, overwrite=args.overwrite, progress=progress)
    if not args.quiet:
        print(summary)
    return 0


@_command("evaluate")
def _evaluate(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .evaluation import evaluate_folders
    from .io import prepare_output_dir
    from .io.report import write_csv, write_report
    from .metrics import CASE_COLUMNS
    from .pipeline import check_not_another_commands_output, output_folder
    from .provenance import Provenance

    inputs = [args.pred_dir, args.truth_dir]
    if args.out:  # refused before the work, not after it
        prepare_output_dir(args.out, overwrite=args.overwrite, inputs=inputs)
        check_not_another_commands_output(args.out, "evaluate")
    from .labels import parse_label_codes

    codes = None if args.label_codes is None else parse_label_codes(args.label_codes)
    result = evaluate_folders(Path(args.pred_dir), Path(args.truth_dir), labels=args.labels, progress=progress,
                              prediction_label_codes=codes)
    print(result.markdown())
    if args.out:
        # one run, as every command's: an interrupted or failed rerun puts the earlier tables back
        with output_folder(args.out, overwrite=args.overwrite, inputs=inputs, command="evaluate") as out:
            write_csv(out / "metrics.csv", result.rows, columns=CASE_COLUMNS)
            write_csv(out / "summary.csv", result.summary)
            if result.regional:
                write_csv(out / "regional.csv", result.regional)
            provenance = Provenance(command="evaluate")
            provenance.parameters.update({"predictions": str(args.pred_dir), "truth": str(args.truth_dir),
                                          "labels": args.labels, "label_codes": args.label_codes})
            write_report(out, provenance=provenance, results={
                "summary": result.summary, "unmatched_predictions": result.unmatched_predictions,
                "unmatched_truths": result.unmatched_truths})
        log.info("Wrote metrics.csv, summary.csv%s and report.json to %s", ", regional.csv" if result.regional
                 else "", args.out)
    return 0


def _detect_layout(folder: Path) -> str:
    if not folder.is_dir():
        raise DataError(f"Data folder {folder} does not exist.")
    if any(folder.glob("patient*/Info.cfg")):
        return "acdc"
    if (folder / "dataset" / "train").is_dir() or (folder / "train").is_dir() and (folder / "trainannot").is_dir():
        return "emidec"
    if (folder / "images").is_dir():
        return "generic"
    raise DataError(
        f"Cannot tell the layout of {folder}: expected patientNNN/Info.cfg (ACDC), dataset/train (EMIDEC PNG) or "
        "images/ with optional labels/ and labels.csv (generic). Pass --layout to say which."
    )


#: Defaults of the train options that differ between tasks (None in the parser).
_TRAIN_DEFAULTS = {
    "segmentation": {"network": "unet2d", "epochs": 100, "batch_size": 16, "learning_rate": 1e-3, "crop_size": 128,
                     "spacing": 1.25},
    "weak-cam": {"epochs": 30, "batch_size": 32, "crop_size": 96, "spacing": 2.0, "prior": "auto",
                 "weak_mode": "self_training", "width": 16},
    "fibrosis": {"epochs": 30, "seg_epochs": 40, "batch_size": 16, "learning_rate": 1e-3, "crop_size": 128,
                 "width": 16, "label_column": "fibrosis"},
}
_WEAK_CAM_OPTIONS = ("label_column", "seg_epochs", "self_epochs", "prior", "weak_mode", "width")


@_command("train")
def _train(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .datasets import (
        check_run_data, default_acdc_split, groups_from_refs, keep_run_data, keep_run_split, list_acdc, list_emidec,
        list_generic, load_case, load_split, make_patient_split, refs_in_part,
    )
    from .datasets.splits import remove_earlier_run
    from .labels import LABELS
    from .preprocessing import InputSpec
    from .training import TrainingConfig
    from .training.segmentation import check_network_takes_crop, train_segmentation

    _check_train_folders(args)
    if args.task == "fibrosis":
        return _train_fibrosis(args, progress)
    if args.slice_labels_from_label_maps:
        raise InputError("--slice-labels-from-label-maps applies to --task fibrosis.")
    for name, value in _TRAIN_DEFAULTS[args.task].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.task == "weak-cam":
        if args.sampling_ratio is not None:
            raise InputError("--sampling-ratio applies to --task segmentation: weak-cam reads no label map, so its "
                             "slices have no base-to-apex position.")
        if args.network is not None:
            raise InputError(f"--network {args.network} applies to --task segmentation: weak-cam trains its own "
                             "networks (a cam_classifier_2d classifier and a U-Net); --width sets their size.")
        return _train_weak_cam(args, progress)
    given = [f"--{name.replace('_', '-')}" for name in _WEAK_CAM_OPTIONS if getattr(args, name) is not None]
    if given:
        raise InputError(f"{', '.join(given)} apply to --task weak-cam, not segmentation.")
    layout = _detect_layout(Path(args.data)) if args.layout == "auto" else args.layout
    listing = {"acdc": list_acdc, "emidec": list_emidec, "generic": list_generic}[layout]
    refs = [ref for ref in listing(args.data) if ref.has_labels]
    if not refs:
        raise InputError(f"No case with a label map in {args.data} ({layout} layout); segmentation needs them.")
    # everything is checked before the run folder is touched: a refused or failed start writes nothing
    out = Path(args.out)
    started = out.is_dir() and any(out.iterdir())
    if started and not (args.resume or args.overwrite):
        raise OutputError(f"Run folder {out} already holds files; pass --resume to continue or --overwrite to start "
                          "again.")
    resume = args.resume and (out / "checkpoints" / "last.pt").is_file()
    if args.resume and not resume:
        log.warning("%s holds no checkpoint to resume from: starting a new run there.", out)
    _check_register_target(args.register_to, [args.model_name], args.model_version, overwrite=args.overwrite)
    check_run_data(refs, out, resume=resume)
    if args.split:
        split = _given_split(args.split, refs)
    elif resume and (out / "split.json").is_file():
        split = load_split(out / "split.json")  # the run's own split, whatever the seed would draw now
    elif layout == "acdc":
        split = default_acdc_split(refs)
    else:
        groups = groups_from_refs(refs) if all("group" in r.image_labels for r in refs) else None
        split = make_patient_split(sorted({r.patient_id for r in refs}), groups=groups, seed=args.seed)
    train_refs, val_refs = refs_in_part(refs, split, "train"), refs_in_part(refs, split, "validation")
    if not val_refs:
        raise InputError("The split has no validation patients; training needs some to pick the best epoch.")
    spec = InputSpec(in_plane_spacing_mm=(args.spacing, args.spacing), crop_size=(args.crop_size, args.crop_size))
    check_network_takes_crop(TrainingConfig(network=args.network, network_kwargs={"out_channels": max(LABELS) + 1}),
                             spec)  # before the cases load; the output channels do not change which crops work
    progress(0.0, f"Loading {len(train_refs) + len(val_refs)} cases")
    train_cases, val_cases = [load_case(r) for r in train_refs], [load_case(r) for r in val_refs]
    if layout == "emidec":  # the PNG export dropped the pixel size: EMIDEC's nominal one, as --task fibrosis takes
        from .fibrosis.inputs import EMIDEC_NOMINAL_PIXEL_MM

        log.warning("EMIDEC PNG slices store no pixel size: they are taken as %g mm pixels (EMIDEC's nominal size, "
                    "as --task fibrosis takes them), so that the model's card states a grid in mm.",
                    EMIDEC_NOMINAL_PIXEL_MM)
        train_cases, val_cases = ([_with_pixel_size(case, EMIDEC_NOMINAL_PIXEL_MM) for case in cases]
                                  for cases in (train_cases, val_cases))
    codes = sorted({int(c) for case in train_cases for c in np.unique(case.labels.array) if c in LABELS})
    if not codes:
        raise InputError(f"No training case of {args.data} holds a label (codes 1-6) in its label map: nothing to "
                         "learn. Check the labels/ folder.")
    only_validation = sorted({int(c) for case in val_cases for c in np.unique(case.labels.array)
                              if c in LABELS} - set(codes))
    if only_validation:
        log.warning("Label code(s) %s occur in validation cases only; the model does not learn them.",
                    only_validation)
    config = TrainingConfig(
        network=args.network, network_kwargs={"out_channels": max(codes) + 1}, input_spec=spec.to_dict(),
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
        metric_name="val_dice", metric_mode="max", position_sampling_ratio=args.sampling_ratio,
    )
    out.mkdir(parents=True, exist_ok=True)
    if not resume:  # a new run (--overwrite) records its own data and split, and writes its own checkpoints: an
        # earlier run's left beside the new split would be resumed as this run's
        remove_earlier_run(out, ("checkpoints",))
    keep_run_data(refs, out)
    keep_run_split(split, out / "split.json", resume=resume)
    result = train_segmentation(
        train_cases, val_cases, config=config, out_dir=out / "checkpoints", model_name=args.model_name,
        model_version=args.model_version, models_dir=args.register_to, label_codes=codes,
        training_data=f"{layout}:{args.data}", device=args.device, progress=progress, resume=resume,
        overwrite=started and not resume,
    )
    if not args.quiet:
        print(f"Best validation Dice {result.validation_metrics.get('val_dice', float('nan')):.4f} "
              f"at epoch {result.training.best_epoch}; log {result.training.log_path}")
        if result.card_path:
            print(f"Registered {result.card_path}")
    return 0


def _with_pixel_size(case, pixel_mm: float):
    """``case`` with its image's and labels' in-plane pixel size set to ``pixel_mm`` (slice spacing kept)."""
    import dataclasses

    def resized(volume):
        if volume is None:
            return None
        spacing = (pixel_mm, pixel_mm, volume.geometry.spacing_mm[2])
        return dataclasses.replace(volume, geometry=volume.geometry.with_spacing(spacing))

    return dataclasses.replace(case, image=resized(case.image), labels=resized(case.labels))


def _given_split(path, refs):
    """The --split file, with a warning for the patients it names that the data do not hold (a typo, or another
    cohort's split): they train and validate nothing."""
    from .datasets import load_split

    split = load_split(path)
    present = {ref.patient_id for ref in refs}
    missing = sorted(p for part in (split.train, split.validation, split.test) for p in part if p not in present)
    if missing:
        log.warning("--split %s names %d patient(s) the data do not hold: %s%s.", path, len(missing),
                    ", ".join(missing[:10]), " ..." if len(missing) > 10 else "")
    return split


def _check_train_folders(args: argparse.Namespace) -> None:
    """Refuse, before any data is read, a ``--out`` or ``--register-to`` that is a file or lies under one."""
    from .io.atomic import check_output_location
    from .models.registry import check_models_folder

    try:
        check_output_location(args.out)
    except OutputError as error:
        raise OutputError(f"--out {args.out}: {error}") from error
    if args.register_to is not None:
        check_models_folder(args.register_to)


def _check_register_target(folder, names: Sequence[str], version: str, *, overwrite: bool) -> None:
    """Refuse, before training, names or a version no model card takes, and to replace a model already registered
    under the same name and version."""
    from .models.registry import check_models_folder, name_and_version_problems

    problems = [problem for name in names for problem in name_and_version_problems(name, version)]
    if problems:
        raise InputError("--model-name / --model-version: " + "; ".join(dict.fromkeys(problems)) + ".")
    if folder is None:
        return
    check_models_folder(folder, [f"{name}-{version}" for name in names])  # a file or a folder in the way
    taken = [name for name in names if (Path(folder) / f"{name}-{version}.json").exists()]
    if taken and not overwrite:
        raise OutputError(f"{', '.join(f'{n} {version}' for n in taken)} already registered in {folder}; give "
                          "another --model-version, another --register-to folder, or --overwrite to replace it.")


def _train_weak_cam(args: argparse.Namespace, progress: ProgressCallback) -> int:
    """``train --task weak-cam``: :func:`cardiac_ai.weak.recipe.train_weak_cam_models`, label-free (no label map is
    opened: the recipe drops the label paths before reading any case)."""
    from .datasets import default_acdc_split, list_acdc, list_generic
    from .preprocessing import InputSpec
    from .weak.recipe import WeakRecipe, train_weak_cam_models

    layout = _detect_layout(Path(args.data)) if args.layout == "auto" else args.layout
    if layout not in ("acdc", "generic"):
        raise InputError(f"--task weak-cam reads the acdc and generic layouts, not {layout}; for EMIDEC's weak "
                         "fibrosis labels use --task fibrosis.")
    label = args.label_column or ("group" if layout == "acdc" else None)
    if layout == "acdc" and label == "diagnosis":  # ACDC's diagnosis is Info.cfg's Group (the Slicer panel's default)
        label = "group"
    if label is None:
        raise InputError("--task weak-cam needs --label-column NAME: the labels.csv column to learn, e.g. diagnosis.")
    out = Path(args.out)
    if not (args.resume or args.overwrite) and out.is_dir() and any(out.iterdir()):
        raise OutputError(f"Run folder {out} already holds files; pass --resume to continue that run or --overwrite "
                          "to start it again.")
    _check_register_target(args.register_to, ["weak_cam_classifier", "weak_heart_unet"], args.model_version,
                           overwrite=args.overwrite)
    refs = list_acdc(args.data) if layout == "acdc" else list_generic(args.data)
    if args.split:
        split = _given_split(args.split, refs)
    else:  # ACDC: the project's ACDC split; else 80/20 stratified by the label (in the recipe)
        split = default_acdc_split(refs) if layout == "acdc" else None
    rates = {} if args.learning_rate is None else {"classifier_learning_rate": args.learning_rate,
                                                   "unet_learning_rate": args.learning_rate}
    recipe = WeakRecipe(
        spec=InputSpec(in_plane_spacing_mm=(args.spacing, args.spacing), crop_size=(args.crop_size, args.crop_size)),
        width=args.width, epochs=args.epochs, seg_epochs=args.epochs if args.seg_epochs is None else args.seg_epochs,
        self_training_epochs=args.self_epochs, batch_size=args.batch_size,
        seed=args.seed, **rates,
    )
    result = train_weak_cam_models(
        refs, label, work_dir=out, split=split, recipe=recipe, prior=args.prior, modes=(args.weak_mode,),
        register_to=args.register_to, model_version=args.model_version, resume=args.resume,
        overwrite=args.overwrite and not args.resume, device=args.device,
        training_data=(f"{layout}:{args.data}, image-level label {label!r} only (no pixel label map read); crops "
                       "centred on the field of view"),
        progress=progress,
    )
    if not args.quiet:
        accuracy = result.classifier_metrics.get("val_balanced_accuracy", float("nan"))
        prior = (result.choice or {}).get("chosen", {}).get("prior", "?")
        print(f"Classes {', '.join(result.classes)} ({label!r}); classifier validation balanced accuracy "
              f"{accuracy:.3f}; weak U-Net ({args.weak_mode}) from the {prior} prior; run folder {out}")
        if result.card_paths:
            print(f"Registered weak_cam_classifier and weak_heart_unet in {args.register_to}; use them with "
                  f"`cardiacai cam INPUT --models-dir {args.register_to}`")
    return 0


def _train_fibrosis(args: argparse.Namespace, progress: ProgressCallback) -> int:
    """``train --task fibrosis``: :func:`cardiac_ai.fibrosis.recipe.train_fibrosis_models` on the generic or EMIDEC
    layout. Every refusal (options, labels, run folder, register target) comes before anything is written."""
    from .datasets import list_emidec, list_generic
    from .fibrosis.inputs import EMIDEC_NOMINAL_PIXEL_MM
    from .fibrosis.recipe import FIBROSIS_RECIPE_MODELS, FibrosisRecipe, train_fibrosis_models

    misplaced = {"--sampling-ratio": args.sampling_ratio, "--network": args.network, "--self-epochs": args.self_epochs,
                 "--prior": args.prior, "--weak-mode": args.weak_mode}
    given = [name for name, value in misplaced.items() if value is not None]
    if given:
        raise InputError(f"{', '.join(given)} do not apply to --task fibrosis: it trains its own U-Nets and "
                         "classifier (--width sets their size).")
    for name, value in _TRAIN_DEFAULTS["fibrosis"].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    layout = _detect_layout(Path(args.data)) if args.layout == "auto" else args.layout
    if layout not in ("generic", "emidec"):
        raise InputError(f"--task fibrosis reads LGE in the generic and emidec layouts, not {layout}.")
    recipe = FibrosisRecipe(
        crop_size=args.crop_size, spacing_mm=args.spacing or EMIDEC_NOMINAL_PIXEL_MM, width=args.width,
        epochs_myocardium=args.seg_epochs, epochs_classifier=args.epochs, epochs_unet=args.seg_epochs,
        batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
    )
    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not (args.resume or args.overwrite):
        raise OutputError(f"Run folder {out} already holds files; pass --resume to continue or --overwrite to start "
                          "again.")
    _check_register_target(args.register_to, FIBROSIS_RECIPE_MODELS, args.model_version, overwrite=args.overwrite)
    refs = list_generic(args.data) if layout == "generic" else list_emidec(args.data)
    # EMIDEC has no slice table: its slice labels are the scar of its masks, as in the paper
    from_maps = args.slice_labels_from_label_maps or layout == "emidec"
    result = train_fibrosis_models(
        refs, work_dir=out, label_column=args.label_column, slice_labels_from_label_maps=from_maps,
        split=_given_split(args.split, refs) if args.split else None, recipe=recipe, register_to=args.register_to,
        model_version=args.model_version, resume=args.resume, overwrite=args.overwrite, device=args.device,
        training_data=(f"{layout}:{args.data}; slice labels: "
                       + ("scar/MVO of the label maps where labels.csv gives none" if from_maps
                          else f"labels.csv column {args.label_column!r}")),
        progress=progress,
    )
    if not args.quiet:
        train = result.slice_counts["train"]
        auroc = result.metrics.get("classifier", {}).get("val_auroc", float("nan"))
        print(f"Trained on {train['positive']} positive and {train['negative']} negative slices "
              f"({len(result.split.train)} patients); classifier validation AUROC {auroc:.3f}; run folder {out}")
        if result.card_paths:
            print(f"Registered {', '.join(FIBROSIS_RECIPE_MODELS)} in {args.register_to}; use them with "
                  f"`cardiacai fibrosis INPUT --models-dir {args.register_to}`")
    return 0


def _cine_options(args: argparse.Namespace):
    from .pipeline import CineOptions

    return CineOptions(
        mode=args.mode, base_first={"auto": None, "first": True, "last": False}[args.base],
        postprocess=not args.no_postprocess, frame=args.frame, series_uid=args.series_uid, device=args.device,
        region_source=args.regions, region_combination=args.region_combination, min_heart_ml=args.min_heart_ml,
        ed_frame=getattr(args, "ed_frame", None), es_frame=getattr(args, "es_frame", None),
        ed_series_uid=getattr(args, "ed_series_uid", None), es_series_uid=getattr(args, "es_series_uid", None),
    )


def _cine_models(args: argparse.Namespace, provenance):
    from .pipeline import load_cine_models

    return load_cine_models(args.models_dir, mode=args.mode, device=args.device, provenance=provenance)


@_command("segment-cine")
def _segment_cine(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .pipeline import output_folder, segment_cine_file
    from .progress import subrange
    from .provenance import Provenance

    provenance = Provenance(command="segment-cine")
    # refuse before loading models
    with output_folder(args.out, overwrite=args.overwrite, inputs=[args.input], command="segment-cine"):
        progress(0.0, "Loading models")
        models = _cine_models(args, provenance)
        qc = _qc_options(args, provenance)
        result = segment_cine_file(args.input, args.out, models=models, options=_cine_options(args), qc=qc,
                                   overwrite=True, provenance=provenance, progress=subrange(progress, 0.05, 1.0))
    if not args.quiet:
        volumes = ", ".join(f"{k} {v:.1f} ml" for k, v in result.volumes_ml.items())
        print(f"Wrote {args.out}: {volumes}; LV mass {result.lv_mass_g:.1f} g{_qc_summary_line(args)}")
    return 0


@_command("function")
def _function(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .pipeline import check_phase_paths
    from .provenance import Provenance

    if args.label_codes and not args.from_labels:
        raise InputError("--label-codes applies to --from-labels (label maps given as ED and ES).")
    provenance = Provenance(command="function")
    if args.from_labels:
        from .labels import parse_label_codes
        from .pipeline import cardiac_function_of_label_files

        if any(v is not None for v in (args.frame, args.ed_frame, args.es_frame, args.series_uid, args.ed_series_uid,
                                       args.es_series_uid)):
            raise InputError("--from-labels reads two label map files; frames and DICOM series do not apply.")

        codes = parse_label_codes(args.label_codes) if args.label_codes else None
        f = cardiac_function_of_label_files(args.ed, args.es, args.out, label_codes=codes, overwrite=args.overwrite,
                                            provenance=provenance, progress=progress)
    else:
        check_phase_paths(args.ed, args.es, _cine_options(args))
        f = _function_of_images(args, provenance, progress)
    if not args.quiet:
        print(f"LV EDV {f.lv_edv_ml:.1f} ml, ESV {f.lv_esv_ml:.1f} ml, EF {f.lv_ef_percent:.1f} %; "
              f"RV EDV {f.rv_edv_ml:.1f} ml, ESV {f.rv_esv_ml:.1f} ml, EF {f.rv_ef_percent:.1f} %; "
              f"LV mass {f.lv_mass_g:.1f} g")
    return 0


def _function_of_images(args: argparse.Namespace, provenance, progress: ProgressCallback):
    """``function`` on two images: segmented, then measured."""
    from .pipeline import cardiac_function_files, output_folder
    from .progress import subrange

    # refuse before loading
    with output_folder(args.out, overwrite=args.overwrite, inputs=[args.ed, args.es], command="function"):
        progress(0.0, "Loading models")
        models = _cine_models(args, provenance)
        f = cardiac_function_files(args.ed, args.es, args.out, models=models, options=_cine_options(args),
                                   qc=_qc_options(args, provenance), overwrite=True, provenance=provenance,
                                   progress=subrange(progress, 0.05, 1.0))
    return f


#: Batch options that apply to some tasks only (dest -> tasks); given with another task they are an error.
_BATCH_TASK_OPTIONS = {
    "kind": ("map",), "erosion_mm": ("map",), "model": ("fibrosis",), "no_classifier": ("fibrosis",),
    "spacing": ("fibrosis",), "pixel_size_unknown": ("fibrosis",), "explain": ("cam",), "method": ("cam",),
    "pseudo_label": ("cam",), "structures": ("cam",),
    "frame": ("segment-cine", "function", "cam"), "series_uid": ("segment-cine", "function", "map", "fibrosis", "cam"),
    "min_heart_ml": ("segment-cine", "function"),
    **{dest: ("cam",) for dest in ("cam_augment", "lv_wall_mm", *_PSEUDO_LABEL_OPTIONS)},
    "label_codes": ("qc",), "write_surrogate": ("qc",),
}


def _batch_options(args: argparse.Namespace):
    """The task's options for :func:`~cardiac_ai.pipeline.run_batch`; InputError for options of another task."""
    from .pipeline import CamOptions, FibrosisOptions, MapOptions, QCBatchOptions

    for dest, tasks in _BATCH_TASK_OPTIONS.items():  # "is", not "in": a given 0 (--frame 0) equals False
        if getattr(args, dest) is not None and getattr(args, dest) is not False and args.task not in tasks:
            raise InputError(f"--{dest.replace('_', '-')} applies to --task {' or '.join(tasks)}, not {args.task}.")
    if args.task == "qc":
        from .labels import parse_label_codes
        from .qc.assess import QCConfig

        if args.no_qc:
            raise InputError("--no-qc with --task qc: quality control is the task itself.")
        return QCBatchOptions(config=QCConfig(dice_threshold=args.qc_threshold, predictor=args.qc_predictor),
                              label_codes=None if args.label_codes is None else parse_label_codes(args.label_codes),
                              write_surrogate=args.write_surrogate, device=args.device)
    if args.task == "map":
        if args.kind is None:
            raise InputError("--task map needs --kind t1 or --kind t2 (what the maps hold).")
        return MapOptions(kind=args.kind, erosion_mm=0.0 if args.erosion_mm is None else args.erosion_mm,
                          series_uid=args.series_uid, device=args.device)
    if args.task == "fibrosis":
        return FibrosisOptions(spacing_mm=tuple(args.spacing) if args.spacing else None, series_uid=args.series_uid,
                               pixel_size_unknown=args.pixel_size_unknown, device=args.device)
    if args.task == "cam":
        return CamOptions(explain=args.explain, method=args.method, use_segmenter=not args.pseudo_label,
                          frame=args.frame, device=args.device, augment=tuple(args.cam_augment or ()),
                          pseudo_label_overrides=_pseudo_label_overrides(args), structures=args.structures,
                          lv_wall_mm=_lv_wall_mm(args), series_uid=args.series_uid)
    return _cine_options(args)


def _batch_models(args: argparse.Namespace, provenance):
    """(models, QC options) of the batch's task, loaded once; cam runs no QC, and qc is QC (its models)."""
    if args.task == "qc":
        from .pipeline import load_qc_file_models

        return load_qc_file_models(args.models_dir, device=args.device, predictor=args.qc_predictor,
                                   provenance=provenance), None
    if args.task == "map":
        return _mapping_models(args, provenance), _qc_options(args, provenance)
    if args.task == "fibrosis":
        from .fibrosis.pipeline import load_fibrosis_models

        return (load_fibrosis_models(args.models_dir, model=args.model or "weak", classifier=not args.no_classifier,
                                     device=args.device, provenance=provenance), _qc_options(args, provenance))
    if args.task == "cam":
        from .pipeline import load_weak_models

        return load_weak_models(args.models_dir, device=args.device, provenance=provenance), None
    return _cine_models(args, provenance), _qc_options(args, provenance)


def _batch_models_in_worker(args: argparse.Namespace) -> tuple:
    """The batch's models and QC options, loaded again in a worker process (``cardiacai batch --workers``)."""
    from .provenance import Provenance

    return _batch_models(args, Provenance(command="batch"))


@_command("batch")
def _batch(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .io import ensure_not_input
    from .pipeline import BATCH_SUMMARY_NAME, check_batch_folders, list_batch_cases, run_batch
    from .provenance import Provenance

    options = _batch_options(args)  # bad options fail before the cases are listed and the models load
    cases = list_batch_cases(args.source, task=args.task)
    ensure_not_input(args.out, [args.source])
    ensure_not_input(Path(args.out) / BATCH_SUMMARY_NAME, [args.source])  # a cases CSV saved as summary.csv
    check_batch_folders(cases, args.out, task=args.task)  # before the models load
    provenance = Provenance(command="batch")
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}.")
    progress(0.0, f"Loading models for {len(cases)} cases")
    models, qc = _batch_models(args, provenance)  # also with workers: a missing model fails here, clearly
    load_models = None
    if args.workers > 1:
        models = qc = None
        load_models = functools.partial(_batch_models_in_worker, args)
    rows = run_batch(cases, args.out, task=args.task, models=models, options=options, qc=qc,
                     resume=not args.overwrite, progress=progress, workers=args.workers, load_models=load_models)
    failed = [r["case_id"] for r in rows if r["status"] == "failed"]
    if not args.quiet:
        done = sum(r["status"] == "ok" for r in rows)
        skipped = sum(r["status"].startswith("skipped") for r in rows)
        print(f"{done} done, {skipped} skipped, {len(failed)} failed; summary in {Path(args.out) / 'summary.csv'}")
    if failed:
        print(f"cardiacai: {len(failed)} case(s) failed: {', '.join(failed[:10])}", file=sys.stderr)
        return EXIT_BATCH_FAILURES
    return 0


def _mapping_models(args: argparse.Namespace, provenance):
    from .pipeline import load_mapping_models

    return load_mapping_models(args.models_dir, device=args.device, provenance=provenance)


@_command("map")
def _map(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .pipeline import analyse_map_file, output_folder
    from .progress import subrange
    from .provenance import Provenance

    provenance = Provenance(command="map")
    # refuse before loading models
    with output_folder(args.out, overwrite=args.overwrite, inputs=[args.input], command="map"):
        progress(0.0, "Loading models")
        models = _mapping_models(args, provenance)
        analysis = analyse_map_file(
            args.input, args.out, kind=args.kind, models=models, erosion_mm=args.erosion_mm, levels=args.levels,
            series_uid=args.series_uid, device=args.device, qc=_qc_options(args, provenance), overwrite=True,
            provenance=provenance, progress=subrange(progress, 0.05, 1.0),
        )
    if not args.quiet:
        stats = analysis.myocardium
        value = "no myocardial statistics (see the warnings in report.json)" if stats is None else (
            f"myocardial {analysis.quantity} median {stats.median:.1f} ms (IQR {stats.iqr:.1f} ms, "
            f"{stats.n_pixels} pixels)")
        print(f"Wrote {args.out}: {value}; {len(analysis.provenance.warnings)} warning(s){_qc_summary_line(args)}")
    return 0


@_command("fit-map")
def _fit_map(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .pipeline import fit_map_file

    fits = fit_map_file(
        args.series, args.out, kind=args.kind, times_ms=args.times, sidecar=args.sidecar, t2_model=args.t2_model,
        series_uid=args.series_uid, device=args.device, overwrite=args.overwrite, progress=progress,
        signed=args.signed,
    )
    if not args.quiet:
        failed = sum(f.n_failed_pixels for f in fits)
        fitted = sum(f.n_fitted_pixels for f in fits)
        name = "t1_map.nii.gz" if args.kind == "molli" else "t2_map.nii.gz"
        print(f"Wrote {Path(args.out) / name} and r2_map.nii.gz: {fitted} pixels fitted, {failed} failed (0 in the "
              "maps)")
    return 0


@_command("ecv")
def _ecv(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .pipeline import ecv_files, output_folder
    from .progress import subrange
    from .provenance import Provenance

    provenance = Provenance(command="ecv")
    with output_folder(args.out, overwrite=args.overwrite, inputs=[args.native, args.post], command="ecv"):
        progress(0.0, "Loading models")
        models = _mapping_models(args, provenance)
        results = ecv_files(
            args.native, args.post, args.out, models=models, haematocrit=args.haematocrit,
            erosion_mm=args.erosion_mm, series_uid=args.series_uid, device=args.device, overwrite=True,
            provenance=provenance, progress=subrange(progress, 0.05, 1.0),
        )
    if not args.quiet:
        ecv = results["ecv"]["myocardium"]
        source = "synthetic" if ecv["synthetic_haematocrit"] else "given"
        print(f"Myocardial ECV {100 * ecv['ecv_fraction']:.1f} % (haematocrit {ecv['haematocrit']:.2f}, {source}); "
              f"report in {Path(args.out) / 'report.json'}")
    return 0


def _qc_options(args: argparse.Namespace, provenance):
    """QC options of a segmenting command: None with --no-qc; else the qc_vae model when one is found."""
    if args.no_qc:
        return None
    from .pipeline import qc_options
    from .qc.assess import QCConfig

    return qc_options(args.models_dir, device=args.device,
                      config=QCConfig(dice_threshold=args.qc_threshold, predictor=args.qc_predictor),
                      provenance=provenance)


def _qc_summary_line(args: argparse.Namespace) -> str:
    """``"; QC: ..."`` from the report just written (empty with --no-qc)."""
    if args.no_qc:
        return ""
    from .io.report import REPORT_NAME, read_json

    entry = read_json(Path(args.out) / REPORT_NAME).get("qc")
    if entry is None:
        return "; QC skipped (see the warnings)"
    minimum = entry["min_slice_dice"]
    return (f"; QC: {entry['n_flagged_slices']} of {entry['n_assessed_slices']} slices flagged (predicted Dice < "
            f"{entry['dice_threshold']:.2f}), min predicted Dice {'n/a' if minimum is None else f'{minimum:.3f}'}"
            + (" (indicative)" if entry.get("indicative") else ""))


@_command("qc")
def _qc(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .labels import parse_label_codes
    from .pipeline import qc_file
    from .qc.assess import QCConfig

    label_codes = None if args.label_codes is None else parse_label_codes(args.label_codes)
    result = qc_file(
        args.image, args.labels, args.out, models_dirs=args.models_dir, device=args.device,
        config=QCConfig(dice_threshold=args.threshold, predictor=args.predictor), label_codes=label_codes,
        write_surrogate=args.write_surrogate, overwrite=args.overwrite, progress=progress,
    )
    if not args.quiet:
        minimum = result.min_slice_dice
        flagged = ", ".join(map(str, result.flagged_slices)) or "none"
        rules = "passed" if result.rules.passed else "failed: " + "; ".join(result.rules.reasons[:3])
        print(f"Wrote {args.out}: {result.n_flagged_slices} of {int(result.assessed.sum())} slices flagged "
              f"(predicted Dice < {result.dice_threshold:.2f}; slices {flagged}); min predicted Dice "
              f"{'n/a' if np.isnan(minimum) else f'{minimum:.3f}'}, mean {result.mean_dice:.3f}; rule checks {rules}")
    return 0


@_command("cam")
def _cam(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .pipeline import cam_file

    overrides = _pseudo_label_overrides(args)  # bad settings fail before the output folder or the models
    lv_wall_mm = _lv_wall_mm(args)
    result = cam_file(
        args.input, args.out, models_dirs=args.models_dir, explain=args.explain, method=args.method,
        use_segmenter=not args.pseudo_label, frame=args.frame, device=args.device, overwrite=args.overwrite,
        progress=progress, augment=tuple(args.cam_augment or ()), pseudo_label_overrides=overrides,
        structures=args.structures, lv_wall_mm=lv_wall_mm, end_diastole=args.ed, end_diastole_frame=args.ed_frame,
        series_uid=args.series_uid,
    )
    if not args.quiet:
        summary = result.to_report()["volume_prediction"]
        print(f"Wrote {args.out}: predicted {summary['class']} "
              f"(p = {summary['probabilities'][summary['class']]:.2f}); labels from {result.label_source}"
              + ("; structures.nii.gz: a rough label-free estimate" if args.structures else ""))
    return 0


@_command("fibrosis")
def _fibrosis(args: argparse.Namespace, progress: ProgressCallback) -> int:
    from .fibrosis.pipeline import fibrosis_file, load_fibrosis_models
    from .pipeline import output_folder
    from .progress import subrange
    from .provenance import Provenance

    if not Path(args.input).exists():  # bad input fails before the models load
        raise DataError(f"Input {args.input} does not exist; give an LGE NIfTI/NRRD file, DICOM folder or PNG slice(s).")
    provenance = Provenance(command="fibrosis")
    # refuse before loading models
    with output_folder(args.out, overwrite=args.overwrite, inputs=[args.input], command="fibrosis"):
        progress(0.0, "Loading models")
        models = load_fibrosis_models(args.models_dir, model=args.model, classifier=not args.no_classifier,
                                      device=args.device, provenance=provenance)
        result = fibrosis_file(
            args.input, args.out, models=models, spacing_mm=args.spacing, series_uid=args.series_uid,
            levels=args.levels, anchor_angle_deg=args.anchor_angle, device=args.device, overwrite=True,
            provenance=provenance, progress=subrange(progress, 0.05, 1.0), qc=_qc_options(args, provenance),
            pixel_size_unknown=args.pixel_size_unknown, slice_order=args.slice_order,
        )
    if not args.quiet:
        m = result.measures
        mvo = f"MVO {m.mvo_volume:.1f} {m.volume_unit}" if m.mvo_assessed else "MVO not assessed by this model"
        print(f"Wrote {args.out}: scar {m.scar_volume:.1f} {m.volume_unit} "
              f"({m.scar_percent_of_myocardium:.1f} % of the myocardium), {mvo}; "
              f"{len(result.provenance.warnings)} warning(s){_qc_summary_line(args)}")
    return 0


# -- entry point -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _logging_to_stderr(args: argparse.Namespace) -> Iterator[None]:
    """Show the package's log on stderr while a command runs; restore the previous set-up afterwards, so that
    calling :func:`main` in-process (tests, Slicer's console) leaves the caller's logging as it was."""
    level = logging.ERROR if args.quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose + 1, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_logger = logging.getLogger("cardiac_ai")
    saved = (package_logger.handlers[:], package_logger.level, package_logger.propagate)
    package_logger.handlers[:] = [handler]
    package_logger.setLevel(level)
    package_logger.propagate = False
    try:
        yield
    finally:
        package_logger.handlers[:], package_logger.level, package_logger.propagate = saved


def _printable_streams() -> None:
    """A path the console's encoding cannot show (CJK under cp1252, Windows' encoding for a pipe or file) is printed
    escaped instead of failing a command whose outputs are written already."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            try:
                stream.reconfigure(errors="backslashreplace")
            except (ValueError, OSError):  # a closed or detached stream: leave it
                pass


def main(argv: Sequence[str] | None = None) -> int:
    _printable_streams()
    parser = build_parser()
    args = parser.parse_args(argv)
    with _logging_to_stderr(args), _terminate_as_interrupt():
        return _run(args)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a job scheduler's cancel, ``docker stop``), raised where the command is, so
    that it cleans up as after Ctrl-C: an interrupted run puts the earlier outputs back."""


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # signal handlers belong to the main thread
        yield
        return

    def terminate(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args: argparse.Namespace) -> int:
    handler = _HANDLERS[args.command]
    printer = _ProgressPrinter(lines=args.progress_lines, quiet=args.quiet)
    start = time.perf_counter()
    try:
        code = handler(args, printer)
        log.info("%s finished in %.2f s", args.command, time.perf_counter() - start)
        return code
    except Cancelled:
        print("cardiacai: cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except (InputError, DataError) as e:
        print(f"cardiacai: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except ModelError as e:
        print(f"cardiacai: model error: {e}", file=sys.stderr)
        return EXIT_MODEL
    except OutputError as e:
        print(f"cardiacai: output error: {e}", file=sys.stderr)
        return EXIT_OUTPUT
    except CardiacAIError as e:
        print(f"cardiacai: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except Terminated:
        print("cardiacai: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("cardiacai: interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    except Exception as e:  # noqa: BLE001 - the one place that turns any failure into a one-line message
        if args.debug:
            raise
        print(f"cardiacai: unexpected error ({type(e).__name__}): {e} (rerun with --debug for details)", file=sys.stderr)
        return EXIT_UNEXPECTED
    finally:
        printer.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
