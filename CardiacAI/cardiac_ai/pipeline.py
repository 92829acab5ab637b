"""File-level jobs shared by the command line, the Slicer modules and batch runs: input file in, output folder out.

Each job reads its input, runs a capability, and writes the public output contract (see README) atomically.
:func:`run_batch` runs a job over a cohort, resumably, so that one failing case never stops the others.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import logging
import os
import time
import traceback
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Mapping, Sequence

import numpy as np

from .errors import Cancelled, DataError, InputError, ModelError, OutputError
from .geometry import Volume, align_axes, pad_to_reference_grid
from .io import VOLUME_SUFFIXES, prepare_output_dir, read_volume, write_volume
from .io.report import REPORT_NAME, volume_entry, write_csv, write_report
from .io.dicom_seg import DICOM_SEG_NAME, dicom_seg_of_dicom_input
from .io.seg_nrrd import write_seg_nrrd
from .labels import LABEL_CODE_NAMES, LABELS, LV_MYOCARDIUM, MVO, SCAR, codes_of_structure, remap_label_codes
from .progress import ProgressCallback, report, subrange
from .provenance import Provenance

__all__ = [
    "CineOptions",
    "read_input",
    "load_cine_models",
    "segment_cine_file",
    "cardiac_function_files",
    "check_phase_paths",
    "phase_pair_warnings",
    "BATCH_TASKS",
    "BatchCase",
    "MapOptions",
    "FibrosisOptions",
    "CamOptions",
    "QCBatchOptions",
    "list_batch_cases",
    "check_case_id",
    "check_unique_case_ids",
    "check_batch_folders",
    "run_batch",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CineOptions:
    """How to read the input and run cine segmentation (the CLI's options)."""

    mode: Literal["region-aware", "baseline"] = "region-aware"
    base_first: bool | None = None
    postprocess: bool = True
    frame: int | None = None
    series_uid: str | None = None
    device: str = "auto"
    region_source: Literal["classifier", "segmentation"] = "classifier"
    region_combination: Literal["average", "replace"] = "average"
    min_heart_ml: float | None = None  # None: segment_cine's default (regions.pipeline.MIN_HEART_ML)
    ed_frame: int | None = None  # function: the frames of a 4D series, when ED and ES come from one file
    es_frame: int | None = None
    ed_series_uid: str | None = None  # function: the series of a DICOM folder that holds ED and ES as two series
    es_series_uid: str | None = None


def read_input(path: str | Path, *, frame: int | None = None, series_uid: str | None = None) -> Volume:
    """A 3D volume from a file or DICOM folder (``series_uid`` chooses among several series)."""
    if series_uid:
        from .io.dicom import read_dicom_series

        return read_dicom_series(Path(path), series_uid=series_uid, frame=frame)  # frame: a cine series' phase
    return read_volume(path, frame=frame)


def load_cine_models(models_dirs: Sequence[str | Path], *, mode: str, device: str, provenance: Provenance):
    """The cine models from the registry (``models_dirs`` searched first); records device and loading time."""
    from .device import resolve_device
    from .models.registry import ModelRegistry
    from .regions.pipeline import CineModels

    torch_device = resolve_device(device)
    provenance.device = str(torch_device)
    with provenance.timed("load_models"):
        registry = ModelRegistry(extra_paths=[Path(p) for p in models_dirs])
        models = CineModels.from_registry(registry, mode=mode, device=torch_device)
    for message in _models_dir_use_warnings(models_dirs, models.loaded(), registry, mode=mode):
        provenance.warn(message, log)
    return models


def _models_dir_use_warnings(models_dirs: Sequence[str | Path], loaded, registry, *, mode: str) -> list[str]:
    """Say when ``--models-dir`` folders hold models the command does not use, or supply only some of what it
    uses (the rest bundled), so that a user's trained model is never ignored or mixed in silently."""
    folders = [Path(p).resolve() for p in models_dirs]
    if not folders:
        return []
    from_folders = [m for m in loaded if any(f in m.weights_path.resolve().parents for f in folders)]
    if len(from_folders) == len(loaded):
        return []
    used = {(m.card.name, m.card.version) for m in loaded}
    unused = sorted(f"{card.name} {card.version}" for card in registry.list()
                    if (card.name, card.version) not in used
                    and any(f in registry.card_path(card.name, card.version).resolve().parents for f in folders))
    names = ", ".join(sorted({m.card.name for m in loaded}))
    if not from_folders:
        return [f"--models-dir {', '.join(map(str, models_dirs))}: none of the models used ({names}) comes from "
                f"there" + (f"; its {', '.join(unused)} are not models this command uses (a model trained with "
                            "`cardiacai train` is used as the cine baseline when registered with --model-name "
                            "cine_baseline; then run with --mode baseline)" if unused else "") + "."]
    mine = ", ".join(sorted(f"{m.card.name} {m.card.version}" for m in from_folders))
    others = ", ".join(sorted(f"{m.card.name} {m.card.version}" for m in loaded if m not in from_folders))
    return [f"Models mixed: {mine} from --models-dir, {others} from the other model folders"
            + ("; to segment with your baseline (and the localiser) only, use --mode baseline."
               if mode == "region-aware" else ".")]


def _read_cine(path, options: CineOptions, provenance: Provenance) -> Volume:
    with provenance.timed("read"):
        volume = read_input(path, frame=options.frame, series_uid=options.series_uid)
    if options.frame is not None:
        provenance.parameters["frame"] = options.frame
    return volume


def _segment(path, models, options: CineOptions, provenance: Provenance, progress, *, volume: Volume | None = None):
    """Read ``path`` (unless its ``volume`` is given, already read) and segment it: ``(volume, CineSegmentation)``."""
    from .regions.pipeline import segment_cine

    if volume is None:
        volume = _read_cine(path, options, provenance)
    result = segment_cine(
        volume, models=models, mode=options.mode, base_first=options.base_first, postprocess=options.postprocess,
        region_source=options.region_source, region_combination=options.region_combination, device=options.device,
        **({} if options.min_heart_ml is None else {"min_heart_ml": options.min_heart_ml}),
        progress=progress, provenance=provenance,
    )
    return volume, result


def segment_cine_file(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    models,
    options: CineOptions = CineOptions(),
    qc: QCOptions | None = None,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
):
    """``cardiacai segment-cine``: writes ``labels.nii.gz``, ``segmentation.seg.nrrd`` and ``report.json``.

    With ``qc`` (the CLI's default) the labels are quality-checked (:func:`cardiac_ai.qc.run_qc`): ``report.json``
    gets ``qc`` (per-slice predicted Dice, flags, threshold; null when QC could not run, the reason in the
    provenance warnings) and ``qc_slices.csv`` is written. Without ``qc`` there is no ``qc`` key.
    """
    return _segment_cine_job(input_path, out_dir, models=models, options=options, qc=qc, overwrite=overwrite,
                             provenance=provenance, progress=progress)[0]


def _segment_cine_job(input_path, out_dir, *, models, options, qc, overwrite, provenance, progress):
    """:func:`segment_cine_file`, returning ``(result, [QCResult or None])`` for the batch summary."""
    with output_folder(out_dir, overwrite=overwrite, inputs=[input_path], command="segment-cine") as out:
        provenance = provenance or Provenance(command="segment-cine")
        provenance.parameters["input"] = str(input_path)
        volume, result = _segment(input_path, models, options, provenance,
                                  subrange(progress, 0.0, 0.95 if qc is None else 0.8))
        with provenance.timed("write"):
            write_volume(result.labels, out / "labels.nii.gz")
            write_seg_nrrd(result.labels, out / "segmentation.seg.nrrd")
            dicom_seg_of_dicom_input(result.labels, input_path, out / DICOM_SEG_NAME, series_uid=options.series_uid,
                                     frame=options.frame, provenance=provenance)
        checks = []
        if qc is not None:
            checks.append(_file_qc(volume, result.labels, qc, provenance, subrange(progress, 0.8, 0.95)))
            if checks[0] is not None:
                write_csv(out / QC_SLICES_NAME, checks[0].slice_table_rows())
        write_report(out, provenance=provenance, results={
            "input": {"path": str(input_path), **volume_entry(volume)},
            **result.to_report(),
            **({"qc": _qc_entry(checks[0])} if qc is not None else {}),
        })
        report(progress, 1.0, "Done")
        return result, checks


def cardiac_function_files(
    ed_path: str | Path,
    es_path: str | Path,
    out_dir: str | Path,
    *,
    models,
    options: CineOptions = CineOptions(),
    qc: QCOptions | None = None,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
):
    """``cardiacai function``: segments ED and ES, writes their labels and ``report.json`` / ``function.csv``.

    With ``qc`` both segmentations are quality-checked: ``report.json`` gets ``ed.qc`` and ``es.qc`` and
    ``qc_slices_ed.csv`` / ``qc_slices_es.csv`` are written (see :func:`segment_cine_file`).
    """
    return _function_job(ed_path, es_path, out_dir, models=models, options=options, qc=qc, overwrite=overwrite,
                         provenance=provenance, progress=progress)[0]


def cardiac_function_of_label_files(
    ed_labels_path: str | Path,
    es_labels_path: str | Path,
    out_dir: str | Path,
    *,
    label_codes: Mapping[int, int] | None = None,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
):
    """``cardiacai function --from-labels``: the same volumes, ejection fractions and LV mass from label maps drawn
    elsewhere (manual contours, another tool's output), without segmenting: ``function.csv`` and ``report.json``.

    Each file is read as ``cardiacai qc`` and ``evaluate`` read labels: a ``.seg.nrrd`` or DICOM SEG by its segment
    names, a plain label map in CardiacAI codes, or with ``label_codes`` (value -> CardiacAI code) for another
    tool's values. The volumes use each file's own voxel size.

    Raises
    ------
    InputError
        Both paths the same file, a label map with values outside the table (or unmapped by ``label_codes``), no LV
        blood pool at ED.
    """
    from .metrics import cardiac_function

    if Path(ed_labels_path).resolve() == Path(es_labels_path).resolve():
        raise InputError(f"ED and ES are the same file ({ed_labels_path}): give the end-diastolic and the "
                         "end-systolic label maps.")
    with output_folder(out_dir, overwrite=overwrite, inputs=[ed_labels_path, es_labels_path],
                       command="function") as out:
        provenance = provenance or Provenance(command="function")
        provenance.parameters.update({"ed_labels": str(ed_labels_path), "es_labels": str(es_labels_path),
                                      "from_labels": True,
                                      "label_codes": None if label_codes is None else dict(label_codes)})
        report(progress, 0.1, "Reading the label maps")
        with provenance.timed("read"):
            labels = {phase: _read_labels(path, label_codes, provenance, None)[0]
                      for phase, path in (("ed", ed_labels_path), ("es", es_labels_path))}
        for message in phase_pair_warnings(labels["ed"], labels["es"]):
            provenance.warn(message.replace("images", "label maps"), log)
        with warnings.catch_warnings():  # its notes come back in function.warnings and go to the report below
            warnings.simplefilter("ignore", RuntimeWarning)
            function = cardiac_function(
                labels["ed"].array, labels["es"].array, labels["ed"].geometry.spacing_kji_mm,
                es_spacing_kji_mm=labels["es"].geometry.spacing_kji_mm,
            )
        for message in function.warnings:
            provenance.warn(message, log)
        write_csv(out / "function.csv", [{k: v for k, v in function.to_dict().items() if k != "warnings"}])
        write_report(out, provenance=provenance, results={
            "function": function.to_dict(), "source": "label maps (no segmentation)",
            **{phase: {"labels": str(path), "shape_kji": list(labels[phase].array.shape),
                       "geometry": labels[phase].geometry.to_dict()}
               for phase, path in (("ed", ed_labels_path), ("es", es_labels_path))},
        })
        report(progress, 1.0, "Done")
        return function


def check_phase_paths(ed_path: str | Path, es_path: str | Path, options: CineOptions | None = None) -> None:
    """Refuse ED and ES given as one file, unless it is a 4D series and two different frames are chosen, or a DICOM
    folder and two different series are chosen.

    Raises
    ------
    InputError
        If both paths name the same file or folder and ``options`` picks neither two different frames nor two
        different series of it.
    """
    options = options or CineOptions()
    ed_frame, es_frame = _phase_frames(options)
    ed_series, es_series = _phase_series(options)
    two_frames = ed_frame is not None and ed_frame != es_frame
    two_series = ed_series is not None and es_series is not None and ed_series != es_series
    if Path(ed_path).resolve() == Path(es_path).resolve() and not (two_frames or two_series):
        raise InputError(f"ED and ES are the same file ({ed_path}): give the end-diastolic and the end-systolic "
                         "frame of one cine series; for a 4D file, pick them with --ed-frame N --es-frame M, and for "
                         "a DICOM folder holding both as two series, with --ed-series-uid and --es-series-uid."
                         + _series_of_folder(ed_path))


def _series_of_folder(path: str | Path) -> str:
    """The listing of a DICOM folder's series for a message (they are the UIDs to choose from), or ""."""
    from .io.dicom import list_dicom_series, series_listing

    if not Path(path).is_dir():
        return ""
    try:
        infos = list_dicom_series(path)
    except (DataError, InputError, OSError):  # not a DICOM folder: the read says so later
        return ""
    return f" It holds {len(infos)} series:\n{series_listing(infos)}" if len(infos) > 1 else ""


def _phase_series(options: CineOptions) -> tuple[str | None, str | None]:
    """The ED and ES series of a DICOM folder: each its own (``ed_series_uid``, ``es_series_uid``), else the shared
    ``series_uid``."""
    return (options.ed_series_uid or options.series_uid, options.es_series_uid or options.series_uid)


def _phase_frames(options: CineOptions) -> tuple[int | None, int | None]:
    """The ED and ES frames: each its own (``ed_frame``, ``es_frame``), else the shared ``frame``."""
    return (options.frame if options.ed_frame is None else options.ed_frame,
            options.frame if options.es_frame is None else options.es_frame)


def phase_pair_warnings(ed: Volume, es: Volume) -> list[str]:
    """What makes an ED and an ES image unlikely to be two frames of one cine series (the function indices assume
    they are): different grids, or identical voxels. The same grid stored in another axis order (its header saying
    so) is one grid."""
    from .geometry import align_axes

    found = []
    es = align_axes(es, ed.geometry)
    differences = ed.geometry.differences(es.geometry, atol_mm=0.01, atol_direction=1e-3)
    if ed.array.shape != es.array.shape:
        differences.insert(0, f"size {ed.array.shape} vs {es.array.shape} voxels (k, j, i)")
    if differences:
        found.append("ED and ES lie on different grids (" + "; ".join(differences) + "): frames of one cine series "
                     "share one grid, so check that both are the same patient's and the same series'.")
    elif np.array_equal(ed.array, es.array):
        found.append("ED and ES images are identical voxel for voxel: the same frame was given twice, so stroke "
                     "volumes and ejection fractions are 0.")
    return found


def _function_job(ed_path, es_path, out_dir, *, models, options, qc, overwrite, provenance, progress):
    """:func:`cardiac_function_files`, returning ``(function, [QCResult or None] * 2)`` for the batch summary."""
    from .metrics import cardiac_function

    check_phase_paths(ed_path, es_path, options)
    with output_folder(out_dir, overwrite=overwrite, inputs=[ed_path, es_path], command="function") as out:
        provenance = provenance or Provenance(command="function")
        provenance.parameters.update({"ed": str(ed_path), "es": str(es_path)})
        results = {}
        checks: dict = {}
        # both phases are read and segmented before anything is written: a bad ES file leaves no ED output behind
        ed_frame, es_frame = _phase_frames(options)
        series = dict(zip(("ed", "es"), _phase_series(options)))
        read = {"ed": _read_cine(ed_path, dataclasses.replace(options, frame=ed_frame, series_uid=series["ed"]),
                                 provenance),
                "es": _read_cine(es_path, dataclasses.replace(options, frame=es_frame, series_uid=series["es"]),
                                 provenance)}
        if ed_frame is not None or es_frame is not None:
            provenance.parameters.update({"ed_frame": ed_frame, "es_frame": es_frame})
        if options.ed_series_uid or options.es_series_uid:
            provenance.parameters.update({"ed_series_uid": series["ed"], "es_series_uid": series["es"]})
        paths = {"ed": ed_path, "es": es_path}
        for phase, (start, stop) in (("ed", (0.0, 0.45)), ("es", (0.45, 0.9))):
            middle = stop if qc is None else start + 0.8 * (stop - start)
            volume, result = _segment(paths[phase], models, options, provenance, subrange(progress, start, middle),
                                      volume=read[phase])
            results[phase] = (volume, result)
            if qc is not None:
                checks[phase] = _file_qc(volume, result.labels, qc, provenance, subrange(progress, middle, stop))
        for phase, (volume, result) in results.items():
            with provenance.timed("write"):
                write_volume(result.labels, out / f"labels_{phase}.nii.gz")
                write_seg_nrrd(result.labels, out / f"segmentation_{phase}.seg.nrrd")
                dicom_seg_of_dicom_input(result.labels, paths[phase], out / f"segmentation_{phase}.dcm",
                                         series_uid=series[phase], provenance=provenance,
                                         frame=ed_frame if phase == "ed" else es_frame)
                if checks.get(phase) is not None:
                    write_csv(out / f"qc_slices_{phase}.csv", checks[phase].slice_table_rows())
        (ed_volume, ed), (es_volume, es) = results["ed"], results["es"]
        for message in phase_pair_warnings(ed_volume, es_volume):
            provenance.warn(message, log)
        with warnings.catch_warnings():  # its notes come back in function.warnings and go to the report below
            warnings.simplefilter("ignore", RuntimeWarning)
            function = cardiac_function(
                ed.labels.array, es.labels.array, ed_volume.geometry.spacing_kji_mm,
                es_spacing_kji_mm=es_volume.geometry.spacing_kji_mm,
            )
        for message in function.warnings:
            provenance.warn(message, log)
        write_csv(out / "function.csv", [{k: v for k, v in function.to_dict().items() if k != "warnings"}])
        qc_keys = {phase: ({"qc": _qc_entry(checks[phase])} if qc is not None else {}) for phase in ("ed", "es")}
        write_report(out, provenance=provenance, results={
            "function": function.to_dict(),
            "ed": {"input": volume_entry(ed_volume), **ed.to_report(), **qc_keys["ed"]},
            "es": {"input": volume_entry(es_volume), **es.to_report(), **qc_keys["es"]},
        })
        report(progress, 1.0, "Done")
        return function, list(checks.values())


# -- batch -------------------------------------------------------------------------------------------------------
#: What ``cardiacai batch --task`` runs over a cohort: the single-case command of the same name for every case.
BATCH_TASKS = ("segment-cine", "function", "map", "fibrosis", "cam", "qc")
BatchTask = Literal["segment-cine", "function", "map", "fibrosis", "cam", "qc"]


@dataclass(frozen=True)
class BatchCase:
    case_id: str
    inputs: tuple[Path, ...]  # one file or folder, ED and ES (function), image and labels (qc), or input and ED (cam)


@dataclass(frozen=True)
class MapOptions:
    """The ``cardiacai map`` options that hold for every case of a batch (``--levels`` is per case: not here)."""

    kind: Literal["t1", "t2"]
    erosion_mm: float = 0.0
    series_uid: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class FibrosisOptions:
    """The ``cardiacai fibrosis`` options that hold for every case of a batch; the scar model and the classifier
    are chosen when the models are loaded (:func:`~cardiac_ai.fibrosis.load_fibrosis_models`)."""

    spacing_mm: tuple[float, ...] | None = None
    series_uid: str | None = None
    device: str = "auto"
    pixel_size_unknown: bool = False


@dataclass(frozen=True)
class CamOptions:
    """The ``cardiacai cam`` options that hold for every case of a batch."""

    explain: str | None = None
    method: str | None = None
    use_segmenter: bool = True
    frame: int | None = None
    device: str = "auto"
    augment: tuple[str, ...] = ()  # views whose CAMs are averaged with the plain one (weak.cam.AUGMENTATIONS)
    pseudo_label_overrides: dict | None = None  # PseudoLabelConfig field -> value, over the model card's settings
    structures: bool = False  # also split the heart into RV / myocardium / LV (weak.structures.split_heart)
    lv_wall_mm: float | None = None  # band around the LV pool added to the weak U-Net's heart; None: LV_WALL_MM
    series_uid: str | None = None  # the series of a DICOM folder that holds several


@dataclass(frozen=True)
class QCBatchOptions:
    """The ``cardiacai qc`` options that hold for every case of a batch of ``qc`` (image and labels per case)."""

    config: object | None = None  # QCConfig; None: the defaults (threshold 0.80, predictor "auto")
    label_codes: Mapping[int, int] | None = None
    write_surrogate: bool = False
    device: str = "auto"


_OPTIONS_OF_TASK = {"segment-cine": CineOptions, "function": CineOptions, "map": MapOptions,
                    "fibrosis": FibrosisOptions, "cam": CamOptions, "qc": QCBatchOptions}


def _is_volume_input(path: Path) -> bool:
    return path.is_dir() or any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


#: The batch's table of cases, in its output folder beside the case folders.
BATCH_SUMMARY_NAME = "summary.csv"
#: Tasks whose cases need more than one input, hence a CSV: its columns besides case_id.
_CSV_COLUMNS = {"function": ("ed", "es"), "qc": ("image", "labels")}
#: Columns a task's CSV may add, a cell left empty where a case has none: cam's ``ed``, the end-diastolic frame of
#: the same series whose heart is carried onto ``input`` (``cardiacai cam --ed``).
_OPTIONAL_CSV_COLUMNS = {"cam": ("ed",)}


def list_batch_cases(source: str | Path, *, task: BatchTask) -> list[BatchCase]:
    """Cases from a folder (one volume file or folder per case: a DICOM series, or for fibrosis a folder of one
    patient's PNG slices; every task but function and qc) or a CSV list.

    The CSV has a ``case_id`` column and ``input`` (every task but function and qc), ``ed`` and ``es`` (function)
    or ``image`` and ``labels`` (qc); relative paths are read from the CSV's folder. A cam CSV may add an ``ed``
    column: the end-diastolic frame of the case's series (``cardiacai cam --ed``; empty: none), the case's second
    input. A case id names the case's
    folder inside the batch's output folder, so it must be a plain name. In a folder, hidden entries (a name that
    starts with '.', such as macOS's ``._case.nii.gz``) are skipped with a warning, and so are PNG files for
    fibrosis (a patient's PNG slices make a case as a folder of their own).

    Raises
    ------
    InputError
        An unknown task, or a folder for a task that needs a CSV.
    DataError
        No case found; a CSV that is not UTF-8 text, lacks a column or has an empty cell; a case id that is empty,
        '.', '..', holds a path separator or a drive (a path), is the batch's summary.csv, is longer than
        :data:`MAX_CASE_ID_BYTES` or cannot name a folder on Windows (CON, NUL, COM1 ..., <>:"|?*, a control
        character, a trailing dot or space); case ids repeated, also when they differ only in upper/lower case.
    """
    if task not in BATCH_TASKS:
        raise InputError(f"Unknown batch task {task!r}; choose one of {', '.join(BATCH_TASKS)}.")
    source = Path(source)
    if not source.exists():
        raise DataError(f"Batch input {source} does not exist.")
    if source.is_dir():
        if task in _CSV_COLUMNS:
            raise InputError(f"A batch of {task!r} needs a CSV with case_id, {' and '.join(_CSV_COLUMNS[task])} "
                             "columns.")
        cases, hidden, slices = [], [], []
        for path in sorted(source.iterdir()):
            if not _is_volume_input(path):
                if task == "fibrosis" and path.suffix.lower() == ".png":
                    slices.append(path.name)
            elif path.name.startswith("."):
                hidden.append(path.name)
            else:
                cases.append(BatchCase(check_case_id(_case_id(path), f"{source}: {path.name}"), (path,)))
        if hidden:
            log.warning("Skipped %d hidden name(s) in %s, not taken as cases: %s. Rename what is a case without "
                        "the leading '.' to include it.", len(hidden), source,
                        ", ".join(hidden[:10]) + (" ..." if len(hidden) > 10 else ""))
        if slices and cases:
            log.warning("Skipped %d PNG file(s) of %s, not taken as cases: %s. A batch takes each patient's PNG "
                        "slices as a folder of their own (e.g. Case_P001/ with its Case_P001_slice*.png): move them "
                        "into one to include them.", len(slices), source,
                        ", ".join(slices[:10]) + (" ..." if len(slices) > 10 else ""))
    else:
        columns = _CSV_COLUMNS.get(task, ("input",))
        try:
            with open(source, newline="", encoding="utf-8-sig") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in ("case_id", *columns) if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(f"{source} lacks the column(s) {missing}; found {reader.fieldnames}.")
                cases = []
                for row in reader:
                    empty = [c for c in ("case_id", *columns) if not (row.get(c) or "").strip()]
                    if empty:
                        raise DataError(f"{source}, line {reader.line_num}: no {' or '.join(empty)} given; every "
                                        f"row needs case_id and {', '.join(columns)}.")
                    case_id = check_case_id(row["case_id"].strip(), f"{source}, line {reader.line_num}")
                    given = [c for c in _OPTIONAL_CSV_COLUMNS.get(task, ()) if (row.get(c) or "").strip()]
                    cases.append(BatchCase(case_id, tuple(source.parent / row[c].strip()
                                                          for c in (*columns, *given))))
        except (UnicodeDecodeError, csv.Error) as error:
            raise DataError(f"{source} cannot be read as a CSV list of cases (UTF-8 text with a case_id column): "
                            f"{error}. Give a folder of cases or such a CSV.") from error
        except OSError as error:
            raise DataError(f"Batch list {source} cannot be read: {error}") from error
    if not cases:
        hint = ""
        if source.is_dir() and any(p.suffix.lower() == ".png" for p in source.iterdir()):
            hint = (" It holds PNG slices: put each patient's slices in a folder of their own (e.g. Case_P001/ with "
                    "its Case_P001_slice*.png) and pass the folder of those folders.")
        raise DataError(f"No case found in {source} (volume files, or folders, one per case).{hint}")
    check_unique_case_ids([case.case_id for case in cases])
    return cases


def check_unique_case_ids(case_ids: Sequence[str]) -> None:
    """DataError unless ``case_ids`` are unique, also ignoring upper/lower case and the Unicode form: they name
    folders, and on Windows and macOS 'P01' and 'p01' are one folder (the second case would take the first's)."""
    spellings: dict[str, list[str]] = {}
    for case_id in case_ids:
        spellings.setdefault(unicodedata.normalize("NFC", case_id).casefold(), []).append(case_id)
    duplicates = sorted(" / ".join(ids) for ids in spellings.values() if len(ids) > 1)
    if duplicates:
        raise DataError(f"Case ids must be unique in a batch, also ignoring upper/lower case (they name folders, "
                        f"and on Windows and macOS 'P01' and 'p01' are one folder); repeated: {duplicates}.")


def check_case_id(case_id: str, where: str) -> str:
    """``case_id`` if it can name a case folder inside the batch's output folder on any system; DataError naming
    ``where`` otherwise (a path would read or write outside it, or clear another folder's files). Also used by the
    headless Slicer batch script."""
    from pathlib import PureWindowsPath

    problem = None
    if not case_id:
        problem = "is empty"
    elif case_id in (".", ".."):
        problem = "is '.' or '..'"
    elif any(c in case_id for c in "/\\\0") or PureWindowsPath(case_id).drive:
        problem = "is a path (it holds a path separator or a drive)"
    elif case_id.lower() == BATCH_SUMMARY_NAME:
        problem = f"is the name of the batch's {BATCH_SUMMARY_NAME}"
    elif len(case_id.encode("utf-8")) > MAX_CASE_ID_BYTES:
        problem = f"is longer than a folder name can be ({MAX_CASE_ID_BYTES} bytes)"
    elif _not_a_windows_folder_name(case_id):
        # Slicer users share cohorts across systems: a folder Windows cannot create fails there mid-batch
        problem = ("cannot name a folder on Windows (a device name such as CON, NUL, COM1 or LPT1, one of the "
                   "characters <>:\"|?*, a control character, or a trailing dot or space)")
    if problem is not None:
        raise DataError(f"{where}: the case id {case_id!r} {problem}. A case id names the case's folder inside "
                        "--out: use a plain name such as 'patient001' (a CSV with case_id,input columns names the "
                        "cases of files you cannot rename).")
    return case_id


MAX_CASE_ID_BYTES = 200
"""Longest case id (UTF-8 bytes): folder names stop at 255 bytes, and Windows paths at 260 characters unless told."""

_WINDOWS_DEVICE_NAMES = frozenset(
    ["con", "prn", "aux", "nul", "conin$", "conout$"]
    + [f"{port}{n}" for port in ("com", "lpt") for n in "123456789\u00b9\u00b2\u00b3"])


def _not_a_windows_folder_name(name: str) -> bool:
    device = name.split(".")[0].rstrip(" ").lower()
    return (device in _WINDOWS_DEVICE_NAMES or any(c in name for c in '<>:"|?*')
            or any(ord(c) < 32 for c in name) or name[-1] in ". ")


def run_batch(
    cases: Sequence[BatchCase],
    out_dir: str | Path,
    *,
    task: BatchTask,
    models,
    options: CineOptions | MapOptions | FibrosisOptions | CamOptions | None = None,
    qc: QCOptions | None = None,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    job: Callable | None = None,
    workers: int = 1,
    load_models: Callable[[], tuple] | None = None,
) -> list[dict]:
    """Run ``task`` for every case into ``out_dir/<case_id>/`` and write ``out_dir/summary.csv``.

    Each case folder is what the single-case command writes (:func:`segment_cine_file`,
    :func:`cardiac_function_files`, :func:`analyse_map_file`, :func:`~cardiac_ai.fibrosis.fibrosis_file`,
    :func:`cam_file`, :func:`qc_file`), with the models loaded once for the whole batch.

    Parameters
    ----------
    models : the task's loaded models: :func:`load_cine_models` (segment-cine, function),
        :func:`load_mapping_models` (map), :func:`~cardiac_ai.fibrosis.load_fibrosis_models` (fibrosis),
        :func:`load_weak_models` (cam), :func:`load_qc_file_models` (qc).
    options : the task's options: :class:`CineOptions` (segment-cine, function; the default), :class:`MapOptions`
        (map; needed for its ``kind``), :class:`FibrosisOptions`, :class:`CamOptions`, :class:`QCBatchOptions`
        (their defaults when None).
    qc : QC of segment-cine, function, map and fibrosis (see :func:`segment_cine_file`); cam has none, and for qc
        QC is the task itself (``options``).
    job : ``job(case, case_dir) -> report`` run instead of the task (tests, other front ends): the case's report,
        as ``report.json`` holds it, whose summary columns the row gets.
    workers : cases run at once, each in its own process (``spawn``: safe with CUDA) that loads the models once
        through ``load_models`` and gets ``cpu_count // workers`` torch threads. 1 (the default) runs the cases here,
        one after the other, with ``models`` and ``qc``. The per-case work is mostly CPU-bound (resampling,
        post-processing, contours, statistics), so on a many-core machine several workers multiply the
        throughput, also beside a GPU.
    load_models : picklable ``() -> (models, qc)``, needed when ``workers > 1`` (e.g. ``functools.partial`` of a
        module-level function); a worker whose models do not load fails every case it is given.

    A case whose folder already holds a readable ``report.json`` is skipped when ``resume`` (a finished earlier run;
    the report is written last), its summary columns read from that report; otherwise the case runs as one run in
    its folder (:func:`output_folder`): the earlier run's outputs (its report's ``outputs``, the report itself
    included) are set aside while it runs, so that a redone case is not taken as finished before its report is
    back, one that succeeds holds nothing of the earlier run, and one that fails or is interrupted gets the earlier
    result back. A case that fails (any exception) is recorded with its error and the batch goes on.
    Returns the summary rows: ``case_id``, ``inputs``, ``status``, the columns of
    :func:`~cardiac_ai.batch_summary.summary_values` (the task's main numbers, ``warnings`` and, with QC,
    ``qc_min_dice``, ``qc_flagged_slices`` and ``qc_needs_review``), read from the ``report.json`` each case wrote, then
    ``seconds`` and, for a failed case, ``error``.

    Raises
    ------
    InputError
        An unknown task, or ``options`` of another task (map without :class:`MapOptions`).
    OutputError
        A case whose input lies in its own output folder, or whose folder holds another command's finished output
        (another batch's ``--out``): nothing is written or removed. An ``out_dir`` that is a file, lies under a file
        or cannot be written; another batch writing into ``out_dir`` (:func:`~cardiac_ai.io.atomic.folder_lock`).
    """
    if task not in BATCH_TASKS:
        raise InputError(f"Unknown batch task {task!r}; choose one of {', '.join(BATCH_TASKS)}.")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a whole number >= 1, got {workers!r}.")
    if workers > 1 and (load_models is None or job is not None):
        raise InputError("Parallel batch workers load their own models: pass load_models (and no job).")
    wanted = _OPTIONS_OF_TASK[task]
    if options is None:
        if wanted is MapOptions and job is None:
            raise InputError("A batch of 'map' needs MapOptions(kind='t1' or 't2'): what the maps hold.")
        options = None if wanted is MapOptions else wanted()
    elif not isinstance(options, wanted):
        raise InputError(f"A batch of {task!r} takes {wanted.__name__}, got {type(options).__name__}.")
    out = Path(out_dir)
    if job is None:
        check_batch_folders(cases, out, task=task)
    prepare_output_dir(out, overwrite=True)  # OutputError for a file, a path under a file, a folder not writable
    from .io.atomic import folder_lock

    with folder_lock(out):  # a second batch into the same folder is refused while this one runs
        if workers > 1:
            return _run_batch_in_workers(cases, out, task=task, options=options, resume=resume, progress=progress,
                                         workers=workers, load_models=load_models)
        return _run_batch_here(cases, out, task=task, models=models, options=options, qc=qc, resume=resume,
                               progress=progress, job=job)


def _run_batch_here(cases, out: Path, *, task, models, options, qc, resume, progress, job) -> list[dict]:
    """:func:`run_batch` in this process, one case after the other."""
    from .batch_summary import earlier_summary_values

    kept = finished_cases_of_earlier_runs(out, cases, task=task)
    rows: list[dict] = []
    for number, case in enumerate(cases):
        case_dir = out / case.case_id
        row: dict = {"case_id": case.case_id, "inputs": ";".join(str(p) for p in case.inputs)}
        report(progress, number / len(cases), f"{case.case_id} ({number + 1}/{len(cases)})")
        earlier = earlier_summary_values(case_dir) if resume else None
        if earlier is not None:
            rows.append({**row, "status": "skipped (done earlier)", **earlier})
            continue
        start = time.perf_counter()
        try:
            step = subrange(progress, number / len(cases), (number + 1) / len(cases))
            # a redone case is one run: its earlier outputs are set aside until its report is back, and put back
            # if it fails
            with output_folder(case_dir, overwrite=True, inputs=case.inputs):
                if job is not None:
                    from .batch_summary import summary_values

                    values = summary_values(job(case, case_dir))
                else:
                    values = _run_batch_case(task, case, case_dir, models=models, options=options, qc=qc,
                                             progress=step)
            row.update({"status": "ok", **values})
        except Cancelled:
            raise
        except _CASE_ERRORS as error:
            log.error("Case %s failed: %s: %s", case.case_id, type(error).__name__, error)
            log.debug("%s", traceback.format_exc())
            row.update({"status": "failed", "error": f"{type(error).__name__}: {error}"})
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)
        _write_batch_summary(out, rows, kept)  # after every case, so an interrupted batch still has its summary
    report(progress, 1.0, f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} cases done")
    _write_batch_summary(out, rows, kept)
    _warn_of_skipped_cases_without(options, rows)
    return rows


def finished_cases_of_earlier_runs(out: Path, cases: Sequence[BatchCase], *, task: str) -> list[dict]:
    """The rows for ``out``'s summary.csv of cases that an earlier batch of ``task`` into ``out`` finished and that
    this batch does not list (a batch over part of the cohort), their columns read from their reports, so that a
    summary never loses a finished case. Cases whose folder no longer holds a report, or holds another task's, are
    left out (one summary, one task)."""
    import csv

    from .batch_summary import earlier_summary_values

    summary = out / BATCH_SUMMARY_NAME
    if not summary.is_file():
        return []
    listed = {case.case_id for case in cases}
    try:
        with open(summary, encoding="utf-8-sig", newline="") as file:
            earlier = [row for row in csv.DictReader(file) if row.get("case_id")]
    except (OSError, csv.Error, UnicodeDecodeError) as error:
        log.warning("Could not read the earlier %s (%s): it lists only this run's cases now.", summary, error)
        return []
    kept = []
    for row in earlier:
        case_id = row["case_id"]
        if case_id in listed or any(k["case_id"] == case_id for k in kept):
            continue
        try:
            check_case_id(case_id, str(summary))
        except DataError:  # an edited summary must not lead outside the batch folder
            continue
        if _command_of_report(out / case_id) != task:
            continue
        values = earlier_summary_values(out / case_id)
        if values is not None:
            kept.append({"case_id": case_id, "inputs": row.get("inputs", ""), "status": "kept (earlier run)",
                         **values})
    if kept:
        log.info("%s keeps %d finished case(s) of earlier runs that this batch does not list.", summary, len(kept))
    return kept


def _write_batch_summary(out: Path, rows: Sequence[Mapping], kept: Sequence[Mapping]) -> None:
    from .batch_summary import summary_columns

    every = [*rows, *kept]
    write_csv(out / BATCH_SUMMARY_NAME, every, columns=summary_columns(every))


def _warn_of_skipped_cases_without(options, rows: Sequence[Mapping]) -> None:
    """A resumed batch skips the cases an earlier run finished, whatever options that run had: say so where this run
    asks for output those cases lack (``cam --structures``), rather than leave their summary columns silently empty."""
    if not getattr(options, "structures", False):
        return
    lacking = [r["case_id"] for r in rows if r.get("status") == "skipped (done earlier)"
               and not any(str(key).startswith("estimated_") for key in r)]
    if lacking:
        shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
        log.warning("%d case(s) finished by an earlier run without --structures were skipped and have no structures: "
                    "%s. Remove their folders (or rerun with --overwrite, which redoes every case) to add them.",
                    len(lacking), shown)


#: Errors a batch records for its case before going on with the next: any error of one case (a reader's own error
#: type included, e.g. nibabel's ImageFileError); KeyboardInterrupt and SystemExit stop the batch.
_CASE_ERRORS = (Exception,)
_worker_state: dict = {}


def _start_batch_worker(load_models: Callable[[], tuple], threads: int) -> None:
    """Initialiser of a batch worker process: its share of the CPU threads and its own models."""
    import torch

    torch.set_num_threads(threads)
    try:
        _worker_state["models"], _worker_state["qc"] = load_models()
    except Exception as error:  # noqa: BLE001 - reported with every case this worker is given
        _worker_state["error"] = f"{type(error).__name__}: {error}"


def _batch_case_in_worker(task: str, case: BatchCase, case_dir: Path, options) -> tuple[dict, float]:
    """One case in a worker process: its summary columns, or ``{"error": ...}`` for a case that failed as
    :func:`run_batch` records it, and its seconds either way."""
    start = time.perf_counter()
    try:
        if "error" in _worker_state:
            raise ModelError(f"The models did not load in this batch worker: {_worker_state['error']}")
        with output_folder(case_dir, overwrite=True, inputs=case.inputs):  # as run_batch: one run
            values = _run_batch_case(task, case, case_dir, models=_worker_state["models"], options=options,
                                     qc=_worker_state["qc"], progress=None)
    except _CASE_ERRORS as error:
        log.error("Case %s failed: %s: %s", case.case_id, type(error).__name__, error)
        log.debug("%s", traceback.format_exc())
        return {"error": f"{type(error).__name__}: {error}"}, time.perf_counter() - start
    return values, time.perf_counter() - start


def _run_batch_in_workers(cases, out: Path, *, task, options, resume, progress, workers, load_models) -> list[dict]:
    """:func:`run_batch` with ``workers`` processes; rows and summary.csv keep the order of ``cases``."""
    import multiprocessing
    import os
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from .batch_summary import earlier_summary_values

    rows: dict[int, dict] = {}
    pending = {}
    threads = max(1, (os.cpu_count() or 1) // workers)

    kept = finished_cases_of_earlier_runs(out, cases, task=task)

    def write_summary() -> None:
        _write_batch_summary(out, [rows[n] for n in sorted(rows)], kept)

    report(progress, 0.0, f"Starting {workers} workers for {len(cases)} cases")
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_batch_worker, initargs=(load_models, threads)) as pool:
        try:
            for number, case in enumerate(cases):
                row = {"case_id": case.case_id, "inputs": ";".join(str(p) for p in case.inputs)}
                earlier = earlier_summary_values(out / case.case_id) if resume else None
                if earlier is not None:
                    rows[number] = {**row, "status": "skipped (done earlier)", **earlier}
                    continue
                pending[pool.submit(_batch_case_in_worker, task, case, out / case.case_id, options)] = (number, row)
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    number, row = pending.pop(future)
                    try:
                        values, seconds = future.result()
                        if "error" in values:
                            row.update({"status": "failed", "error": values["error"], "seconds": round(seconds, 3)})
                        else:
                            row.update({"status": "ok", **values, "seconds": round(seconds, 3)})
                    except (*_CASE_ERRORS, BrokenProcessPool) as error:  # the worker itself broke: no seconds
                        log.error("Case %s failed: %s", row["case_id"], error)
                        row.update({"status": "failed", "error": f"{type(error).__name__}: {error}"})
                    rows[number] = row
                    write_summary()  # after every case, so an interrupted batch still has its summary
                    report(progress, len(rows) / len(cases),
                           f"{row['case_id']} {row['status']} ({len(rows)}/{len(cases)})")
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    ordered = [rows[n] for n in sorted(rows)]
    report(progress, 1.0, f"{sum(r['status'] == 'ok' for r in ordered)} of {len(ordered)} cases done")
    write_summary()
    _warn_of_skipped_cases_without(options, ordered)
    return ordered


def _run_batch_case(task: str, case: BatchCase, case_dir: Path, *, models, options, qc, progress) -> dict:
    """Run the single-case job of ``task`` on one case into ``case_dir``; its summary columns, read from the
    ``report.json`` it wrote (:func:`~cardiac_ai.batch_summary.summary_values`, as the Slicer batch reads them)."""
    from .batch_summary import summary_values
    from .slicer_results import read_report

    if task == "segment-cine":
        _segment_cine_job(case.inputs[0], case_dir, models=models, options=options, qc=qc, overwrite=True,
                          provenance=None, progress=progress)
    elif task == "function":
        _function_job(*case.inputs, case_dir, models=models, options=options, qc=qc, overwrite=True,
                      provenance=None, progress=progress)
    elif task == "map":
        _analyse_map_job(
            case.inputs[0], case_dir, kind=options.kind, models=models, erosion_mm=options.erosion_mm, levels=None,
            series_uid=options.series_uid, device=options.device, qc=qc, overwrite=True, provenance=None,
            progress=progress,
        )
    elif task == "fibrosis":
        from .fibrosis.pipeline import fibrosis_file

        fibrosis_file(case.inputs[0], case_dir, models=models, spacing_mm=options.spacing_mm,
                      series_uid=options.series_uid, device=options.device, overwrite=True, progress=progress, qc=qc,
                      pixel_size_unknown=options.pixel_size_unknown)
    elif task == "qc":
        qc_file(case.inputs[0], case.inputs[1], case_dir, models=models, device=options.device, config=options.config,
                label_codes=options.label_codes, write_surrogate=options.write_surrogate, overwrite=True,
                progress=progress)
    else:
        cam_file(case.inputs[0], case_dir, models=models, explain=options.explain, method=options.method,
                 use_segmenter=options.use_segmenter, frame=options.frame, series_uid=options.series_uid,
                 device=options.device, overwrite=True,
                 progress=progress, augment=options.augment, pseudo_label_overrides=options.pseudo_label_overrides,
                 structures=options.structures, lv_wall_mm=options.lv_wall_mm,
                 end_diastole=case.inputs[1] if len(case.inputs) > 1 else None)
    return summary_values(read_report(case_dir))


# -- T1 / T2 mapping -----------------------------------------------------------------------------------------------
__all__ += [
    "output_folder",
    "case_folder_as_one_run",
    "load_mapping_models",
    "analyse_map_file",
    "read_mapping_series",
    "fit_map_file",
    "ecv_files",
]

#: Background of a raw mapping series: pixels whose largest signal over the frames is below this fraction of the
#: 99th percentile of that largest signal are not fitted (air); they are 0 in the written maps.
FIT_BACKGROUND_FRACTION = 0.05


@contextlib.contextmanager
def output_folder(out_dir: str | Path, *, overwrite: bool = False, inputs: Sequence[str | Path] = (),
                  command: str | None = None):
    """:func:`~cardiac_ai.io.prepare_output_dir`, and run the job writing into the folder as one run: the folder
    never mixes two runs, and a run that fails or is interrupted loses no earlier result.

    The files written into the folder are recorded (``report.json``, written last, lists them under ``outputs``).
    In a folder an earlier run wrote (``--overwrite``), that run's outputs (its report's ``outputs``, the report
    itself) are moved into a hidden subfolder ``.cardiac_ai-earlier-run-*`` before the job writes, and so is any
    other file a write replaces. A job that finishes (writes its report) deletes that subfolder: the earlier run's
    outputs it did not write again (a QC table after a rerun with ``--no-qc``) are gone. A job that fails, is
    interrupted (any exception, KeyboardInterrupt included) or returns without its report has what it wrote removed
    and the earlier files put back exactly; a folder it created is removed again, so bad input leaves no partial
    output behind (and no folder that a rerun would have to --overwrite). After a hard kill the folder has no
    report.json (it does not look finished) and the earlier files wait in the subfolder (logged when it is made).
    Files that are not the earlier run's outputs and that the job does not write stay untouched.

    Inside another ``output_folder`` of the same folder (a command's, around the job it calls; a batch's, around
    its case) this only checks the folder: the outer one keeps the earlier run. The outer one also holds the folder
    locked (:func:`~cardiac_ai.io.atomic.folder_lock`): a second run into the same folder at the same time is
    refused (OutputError) instead of mixing its files with the first's. With ``command``, a folder holding another
    command's finished output is refused too, ``overwrite`` or not: ``--overwrite`` redoes a run, it does not
    replace another command's results.
    """
    from .io.atomic import folder_lock, recorded_outputs

    out = Path(out_dir)
    existed = os.path.isdir(out)
    folder = prepare_output_dir(out, overwrite=overwrite, inputs=inputs)
    if recorded_outputs(folder) is not None:
        yield folder
        return
    if command is not None:
        check_not_another_commands_output(folder, command)
    try:
        with folder_lock(folder):
            _remove_partial_files(folder)
            with _earlier_run_set_aside(folder):
                yield folder
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):  # not empty (the user added a file meanwhile): it stays
                folder.rmdir()
        raise


def check_batch_folders(cases: Sequence[BatchCase], out_dir: str | Path, *, task: str) -> None:
    """Refuse a batch, before anything is loaded or written, whose cases cannot run in ``out_dir``: an ``out_dir``
    that is a file, lies under a file or cannot be written, an input inside its own case folder, or a case folder
    holding another command's finished output.

    Raises
    ------
    OutputError
        Naming the folder, or up to three such cases.
    """
    from .io.atomic import check_output_location

    out = Path(out_dir)
    check_output_location(out)
    _check_summary_is_a_batch_summary(out / BATCH_SUMMARY_NAME)
    problems = [f"case {case.case_id}: {problem}" for case in cases
                if (problem := _case_folder_problem(case, out / case.case_id, task)) is not None]
    if problems:
        raise OutputError(f"{len(problems)} case(s) cannot run in {out}, and nothing was written: "
                          + " ".join(problems[:3]) + (" ..." if len(problems) > 3 else ""))


def _summary_header(summary: Path) -> list[str]:
    """The column names on the first line of a summary.csv (OSError when it cannot be read)."""
    with open(summary, encoding="utf-8-sig", errors="replace") as file:
        return file.readline().strip().split(",")


def _is_batch_summary(header: list[str]) -> bool:
    from .batch_summary import SUMMARY_LEADING_COLUMNS

    return tuple(header[:3]) == SUMMARY_LEADING_COLUMNS


def _check_summary_is_a_batch_summary(summary: Path) -> None:
    """OutputError if ``summary`` exists and is not a batch's summary (its first columns ``case_id,inputs,status``):
    the batch would replace a file of the user's."""
    if not os.path.lexists(summary):
        return
    try:
        header = _summary_header(summary)
    except OSError as error:
        raise OutputError(f"Cannot read {summary} to check that a batch wrote it: {error}") from error
    if not _is_batch_summary(header):
        raise OutputError(f"{summary} is not a batch summary (its header is {','.join(header[:4])[:80]!r}) and a "
                          "batch would replace it; move it away or give --out another folder.")


def _case_folder_problem(case: BatchCase, case_dir: Path, task: str) -> str | None:
    """Why a batch case must not run in ``case_dir``: an input inside it (a redone case clears the folder), or the
    finished output of another command (e.g. a segment-cine batch's folder given to --task qc as --out)."""
    folder = case_dir.resolve()
    for path in case.inputs:
        if folder == Path(path).resolve() or folder in Path(path).resolve().parents:
            return (f"its input {path} lies in its own output folder {case_dir}, which a batch clears when it redoes "
                    "a case; give --out another folder.")
    if (case_dir / REPORT_NAME).is_file():
        command = _command_of_report(case_dir)
        if command and command != task:
            return f"{case_dir} holds the output of {command!r}, not of {task!r}; give --out another folder."
        return None
    return _foreign_files_problem(case_dir)


def _command_of_report(folder: Path) -> str | None:
    """The command whose report.json ``folder`` holds (None: no report, or one that does not say)."""
    from .io.report import read_json

    if not (folder / REPORT_NAME).is_file():
        return None
    try:
        return (read_json(folder / REPORT_NAME).get("provenance") or {}).get("command") or None
    except (DataError, AttributeError):
        return None


def _command_of_folder(folder: Path) -> str | None:
    """What wrote ``folder``: its report's command, "batch" for a batch's folder (a batch summary.csv, no report of
    its own), None when neither says."""
    command = _command_of_report(folder)
    if command is None and (folder / BATCH_SUMMARY_NAME).is_file():
        with contextlib.suppress(OSError):
            command = "batch" if _is_batch_summary(_summary_header(folder / BATCH_SUMMARY_NAME)) else None
    return command


def check_not_another_commands_output(out_dir: str | Path, command: str) -> None:
    """OutputError when ``out_dir`` holds another command's finished output (a report.json of another command, or
    a batch's summary): ``--overwrite`` redoes a command's own run, it never replaces another command's results.
    For the checks before a command's work (:func:`output_folder` makes it too)."""
    folder = Path(out_dir)
    earlier = _command_of_folder(folder) if folder.is_dir() else None
    if earlier is not None and earlier != command:
        raise OutputError(f"{folder} holds the output of {earlier!r}; `{command}` does not replace another "
                          "command's results, even with --overwrite. Choose another output folder.")


def _foreign_files_problem(case_dir: Path) -> str | None:
    """Why files in a case folder without a report must not be overwritten: no CardiacAI run left them (no lock file
    or set-aside earlier run of one that was killed), so they are someone's own (e.g. their labels.nii.gz)."""
    from .io.atomic import LOCK_NAME

    if not case_dir.is_dir():
        return None
    names = sorted(p.name for p in case_dir.iterdir())
    if any(name == LOCK_NAME or name.startswith(EARLIER_RUN_PREFIX) for name in names):
        return None  # a CardiacAI run into this folder was killed: redoing the case is what resuming means
    visible = [name for name in names if not name.startswith(".")]
    if not visible:
        return None
    shown = ", ".join(visible[:3]) + (f" and {len(visible) - 3} more" if len(visible) > 3 else "")
    return (f"{case_dir} holds files that no CardiacAI run wrote ({shown}; no {REPORT_NAME}), which the batch "
            "would replace; move them away or give --out another folder.")


#: Name prefix of the hidden subfolder that holds an earlier run's outputs while a new run writes
#: (:func:`output_folder`).
EARLIER_RUN_PREFIX = ".cardiac_ai-earlier-run-"


@contextlib.contextmanager
def _earlier_run_set_aside(folder: Path):
    """Run the block as one run writing into the existing ``folder`` (see :func:`output_folder`): the earlier
    run's outputs are set aside in a hidden subfolder first, dropped if the block writes its report, put back
    otherwise. Yields the set of names the block writes."""
    import shutil
    import tempfile

    from .io.atomic import LOCK_NAME, recording_outputs

    for stale in sorted(folder.glob(EARLIER_RUN_PREFIX + "*")):
        log.warning("%s holds the outputs of an earlier run in %s that was stopped before it could put them back "
                    "or delete them: move its files back into %s to keep that result, or delete it.",
                    stale, folder, folder)
    backup = None
    if any(not p.name.startswith(EARLIER_RUN_PREFIX) and p.name != LOCK_NAME for p in folder.iterdir()):
        try:
            backup = Path(tempfile.mkdtemp(prefix=EARLIER_RUN_PREFIX, dir=folder))
            earlier = _earlier_outputs(folder) | {REPORT_NAME}
            for name in [REPORT_NAME, *sorted(earlier - {REPORT_NAME})]:  # the report first: no longer finished
                if (folder / name).is_file():
                    os.replace(folder / name, backup / name)
        except BaseException as error:  # Ctrl-C or SIGTERM while moving, too: nothing may stay hidden
            if backup is not None:
                _put_back(backup, folder)
            if isinstance(error, OSError):
                raise OutputError(f"Cannot set aside the earlier outputs in {folder} before writing: {error}") \
                    from error
            raise
        if any(backup.iterdir()):
            log.info("Moved the earlier run's outputs of %s into %s until this run finishes (they are put back if "
                     "it fails).", folder, backup)
    written: set[str] = set()
    finished = False
    try:
        with recording_outputs(folder, backup=backup) as written:
            yield written
        finished = REPORT_NAME in written  # the job finished (its report is written last)
    finally:
        if finished:
            if backup is not None:
                earlier = _earlier_outputs_in(backup)
                shutil.rmtree(backup, ignore_errors=True)
                for name in sorted(earlier - written):
                    log.info("Removed %s: an output of the earlier run in %s that this run does not make.", name,
                             folder)
        else:
            for name in written:
                with contextlib.suppress(OSError):
                    (folder / name).unlink(missing_ok=True)
            if backup is not None:
                _put_back(backup, folder)


def _remove_partial_files(folder: Path) -> None:
    """Remove the temporary files of writes a killed run left (``.NAME.xxxx.partial.SUFFIX``, see
    :func:`~cardiac_ai.io.atomic.atomic_path`): whoever holds the folder's lock is its only writer, so no other run is
    writing them."""
    for leftover in sorted(folder.glob(".*.partial*")):
        if leftover.is_file():
            with contextlib.suppress(OSError):
                leftover.unlink()
                log.info("Removed %s, a half-written file of an earlier run that was killed.", leftover)


def _earlier_outputs_in(backup: Path) -> set[str]:
    """The earlier run's outputs among the files set aside in ``backup`` (the others are files a write replaced)."""
    return (_earlier_outputs(backup) | {REPORT_NAME}) & {p.name for p in backup.iterdir()}


@contextlib.contextmanager
def case_folder_as_one_run(folder: str | Path):
    """Run the block as one run in a case folder that it owns whole (the headless Slicer batch's, whose files Slicer
    writes itself): the files already there are set aside in a hidden subfolder first, dropped when the block
    finishes, and put back, the block's own new files removed, when it fails or is interrupted. An earlier good
    result therefore survives a failed redo, as in :func:`output_folder`."""
    import shutil
    import tempfile

    from .io.atomic import folder_lock

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):  # as output_folder: no other run writes into the case folder meanwhile
        _remove_partial_files(folder)
        earlier = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
        backup = None
        if earlier:
            backup = Path(tempfile.mkdtemp(prefix=EARLIER_RUN_PREFIX, dir=folder))
            for path in sorted(earlier, key=lambda p: p.name != REPORT_NAME):  # the report first: not finished
                os.replace(path, backup / path.name)
        try:
            yield folder
        except BaseException:
            for path in folder.iterdir():
                if path.is_file() and not path.name.startswith("."):
                    path.unlink(missing_ok=True)
            if backup is not None:
                _put_back(backup, folder)
            raise
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


def _put_back(backup: Path, folder: Path) -> None:
    """Move the files set aside in ``backup`` back into ``folder`` (the report last) and remove ``backup``; what
    cannot be moved stays there, logged."""
    try:
        for item in sorted(backup.iterdir(), key=lambda p: (p.name == REPORT_NAME, p.name)):
            os.replace(item, folder / item.name)
        backup.rmdir()
    except OSError as error:
        log.error("Could not put the earlier outputs of %s back (%s): they are in %s; move them back by hand.",
                  folder, error, backup)


def _earlier_outputs(folder: Path) -> set[str]:
    """The files the run that wrote ``folder/report.json`` made there (its ``outputs``); empty for a report without
    the list (the segmentation reports of versions before it) or none."""
    from .io.report import read_json

    if not (folder / REPORT_NAME).is_file():
        return set()
    try:
        listed = read_json(folder / REPORT_NAME).get("outputs") or []
    except (DataError, AttributeError):  # unreadable, or not a report object
        return set()
    return {name for name in listed if isinstance(name, str) and Path(name).name == name}


def load_mapping_models(models_dirs: Sequence[str | Path], *, device: str, provenance: Provenance):
    """The mapping model from the registry (``models_dirs`` searched first); records device and loading time."""
    from .device import resolve_device
    from .mapping.pipeline import MappingModels
    from .models.registry import ModelRegistry

    torch_device = resolve_device(device)
    provenance.device = str(torch_device)
    with provenance.timed("load_models"):
        return MappingModels.from_registry(ModelRegistry(extra_paths=[Path(p) for p in models_dirs]),
                                           device=torch_device)


def _write_map_outputs(out: Path, analysis, provenance: Provenance, inputs: dict, *, qc: dict | None = None) -> None:
    """``qc``: ``{"qc": entry}`` to add to the report (entry None when QC could not run), or None without QC."""
    from .io.report import write_json
    from .mapping.statistics import bullseye_plot

    qc = qc or {}

    with provenance.timed("write"):
        write_volume(analysis.labels, out / "labels.nii.gz")
        write_json(out / "stats.json", analysis.stats_dict())
        write_json(out / "contours.json", analysis.contours_dict())
        bullseye_plot(analysis.segment_medians(), out / "bullseye.png",
                      title=f"Median myocardial {analysis.quantity} per AHA segment", units="ms")
    write_report(out, provenance=provenance, results={
        **inputs,
        "kind": analysis.kind,
        "labels": "labels.nii.gz: 2 LV myocardium, 3 LV blood pool (drawn from the fitted contours; the RV found by "
                  "the network is used only for the RV insertion points and is not written)",
        "myocardium_median_ms": None if analysis.myocardium is None else analysis.myocardium.median,
        "myocardium_statistics_ms": None if analysis.myocardium is None else analysis.myocardium.to_dict(),
        "lv_blood_pool_median_ms": None if analysis.lv_blood_pool is None else analysis.lv_blood_pool.median,
        "slices_without_myocardium": sum(stats is None for stats in analysis.slices),
        "slice_warnings": {str(k): list(v) for k, v in analysis.slice_warnings.items()},
        **qc,
    })


def analyse_map_file(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    kind: Literal["t1", "t2"],
    models,
    erosion_mm: float = 0.0,
    levels: Sequence[str] | None = None,
    series_uid: str | None = None,
    device: str = "auto",
    qc: QCOptions | None = None,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
):
    """``cardiacai map``: writes labels.nii.gz, stats.json, contours.json, bullseye.png and report.json.

    ``labels.nii.gz`` holds 2 (LV myocardium) and 3 (LV blood pool) drawn from the fitted contours, on the map's
    grid; ``stats.json`` the global, per-slice, per-segment (AHA), septal-ROI and LV blood-pool statistics in ms;
    ``contours.json`` the endo- and epicardial points per slice in LPS mm (and pixels). See
    :func:`cardiac_ai.mapping.analyse_map`. Bad input raises before anything is written (a new output folder is
    removed again).

    With ``qc`` the map's segmentation (the contour labels plus the network's RV, ``labels_with_rv``) is
    quality-checked with the cine-trained QC model on the map itself; ``report.json`` gets ``qc`` marked
    ``"indicative": true`` with a note (see :data:`MAP_QC_NOTE`) and ``qc_slices.csv`` is written.
    """
    return _analyse_map_job(input_path, out_dir, kind=kind, models=models, erosion_mm=erosion_mm, levels=levels,
                            series_uid=series_uid, device=device, qc=qc, overwrite=overwrite, provenance=provenance,
                            progress=progress)[0]


def _analyse_map_job(input_path, out_dir, *, kind, models, erosion_mm, levels, series_uid, device, qc, overwrite,
                     provenance, progress):
    """:func:`analyse_map_file`, returning ``(analysis, [QCResult or None])`` for the batch summary."""
    from .mapping.pipeline import analyse_map

    provenance = provenance or Provenance(command="map")
    provenance.parameters["input"] = str(input_path)
    checks = []
    with output_folder(out_dir, overwrite=overwrite, inputs=[input_path], command="map") as out:
        with provenance.timed("read"):
            volume = read_input(input_path, series_uid=series_uid)
        analysis = analyse_map(volume, kind=kind, models=models, erosion_mm=erosion_mm, levels=levels,
                               device=device, progress=subrange(progress, 0.0, 0.9 if qc is None else 0.8),
                               provenance=provenance)
        qc_keys = None
        if qc is not None:
            checks.append(_file_qc(volume, analysis.labels_with_rv, qc, provenance, subrange(progress, 0.8, 0.9)))
            qc_keys = {"qc": _qc_entry(checks[0], note=MAP_QC_NOTE)}
            if checks[0] is not None:
                write_csv(out / QC_SLICES_NAME, checks[0].slice_table_rows())
        dicom_seg_of_dicom_input(analysis.labels, input_path, out / DICOM_SEG_NAME, series_uid=series_uid,
                                 provenance=provenance)
        _write_map_outputs(out, analysis, provenance, {
            "input": {"path": str(input_path), **volume_entry(volume)},
        }, qc=qc_keys)
    report(progress, 1.0, "Done")
    return analysis, checks


def _dicom_mapping_series(folder: Path, *, kind: str, series_uid: str | None, read_times: bool = True):
    """(t, k, j, i) Volume of a DICOM mapping series (several frames per slice position) and per-slice times (None
    unless ``read_times``: times given otherwise take precedence, and headers without them are then no error)."""
    import pydicom

    from .io.dicom import _read_pixels, _slice_geometry, list_dicom_series  # one DICOM slice reader
    from .mapping.fitting import timings_from_dicom

    infos = list_dicom_series(folder)
    if not infos:
        raise DataError(f"No DICOM image series in {folder}.")
    if series_uid is None and len(infos) > 1:
        listing = "\n".join(f"  - {info.describe()}" for info in infos)
        raise InputError(f"{folder} holds {len(infos)} DICOM series:\n{listing}\nChoose one with --series-uid UID.")
    info = next((i for i in infos if series_uid in (None, i.series_uid)), None)
    if info is None:
        raise InputError(f"Series {series_uid} is not in {folder}.")
    try:
        headers = [pydicom.dcmread(str(f), stop_before_pixels=True) for f in info.files]
    except Exception as e:  # pydicom raises many types for unreadable files
        raise DataError(f"Cannot read the DICOM headers of {folder}: {e}") from e
    try:
        orientation = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
        normal = np.cross(orientation[:3], orientation[3:])
        distances = [float(np.dot([float(v) for v in h.ImagePositionPatient], normal)) for h in headers]
    except (AttributeError, TypeError, ValueError) as e:
        raise InputError(f"{folder}: files lack ImageOrientationPatient or ImagePositionPatient ({e}).") from e
    groups: dict[float, list] = {}
    for header, distance in zip(headers, distances):
        groups.setdefault(round(distance, 2), []).append(header)
    positions = [groups[key] for key in sorted(groups)]
    counts = sorted({len(g) for g in positions})
    if len(counts) > 1:
        raise InputError(
            f"{folder}: slice positions hold different numbers of frames {counts}; every slice needs one frame per "
            "inversion (or T2-preparation) time. Check that all files were exported."
        )
    if counts[0] < 2:
        raise InputError(
            f"{folder} holds one image per slice position: this is a map or a single image, not a raw "
            f"{'MOLLI' if kind == 'molli' else 'T2-prepared'} series (several frames per slice)."
        )
    for group in positions:  # acquisition order within a slice
        group.sort(key=lambda h: (int(h.get("InstanceNumber", 0) or 0), str(h.filename)))
    _, geometry = _slice_geometry(info, [g[0] for g in positions])
    frames = []
    for t in range(counts[0]):
        # every frame must lie on the first one's grid (size, spacing, orientation, position), not only frame 0
        _, frame_geometry = _slice_geometry(info, [g[t] for g in positions])
        differences = geometry.differences(frame_geometry, atol_mm=0.01, atol_direction=1e-3)
        if differences:
            raise InputError(f"{folder}: frame {t} lies on another grid than frame 0 ({'; '.join(differences)}); "
                             "a mapping series needs every frame on one grid.")
        slices = [_read_pixels(group[t].filename) for group in positions]
        shapes = {pixels.shape for pixels in slices} | ({frames[0].shape[1:]} if frames else set())
        if len(shapes) > 1:
            raise InputError(f"{folder}: frame {t} holds images of another size than frame 0; a mapping series "
                             "needs one image size.")
        frames.append(np.stack(slices))
    times = [timings_from_dicom(group, kind=kind) for group in positions] if read_times else None
    return Volume(np.stack(frames), geometry, "tkji"), times


def read_mapping_series(
    path: str | Path, *, kind: Literal["molli", "t2prep"], series_uid: str | None = None, read_times: bool = True
) -> tuple[Volume, list[list[float]] | None]:
    """A raw MOLLI or T2-prepared series as a (t, k, j, i) Volume, with its times when the file holds them.

    A 4D file (NIfTI, NRRD, MHA) is read with ``read_volume(allow_4d=True)``; it holds no times (None). A DICOM
    folder is grouped by slice position (frames within a position in InstanceNumber order) and its times read from
    the headers with :func:`~cardiac_ai.mapping.timings_from_dicom`, one list per slice position (not when
    ``read_times`` is False: the caller has the times from elsewhere, and headers without them are fine).

    Raises
    ------
    InputError
        A 3D image (a map, or one frame), a DICOM folder with one image per position, several series without
        ``series_uid``, positions with different frame counts.
    DataError
        Unreadable files, or DICOM frames without timing.
    """
    source = Path(path)
    if source.is_dir():
        return _dicom_mapping_series(source, kind=kind, series_uid=series_uid, read_times=read_times)
    volume = read_volume(source, allow_4d=True)
    if volume.axes != "tkji":
        raise InputError(
            f"{source} is a 3D image {volume.array.shape}; fit-map needs the raw series with one frame per "
            "inversion (or T2-preparation) time along the 4th axis (x, y, z, t). Is it already a map? Then use "
            "`cardiacai map`."
        )
    return volume, None


def _fit_device(device: str | None):
    """None (NumPy) on the CPU, a torch device when CUDA is asked for or available."""
    if device in (None, "cpu"):
        return None
    from .device import resolve_device

    resolved = resolve_device(device)
    return None if resolved.type == "cpu" else resolved


def fit_map_file(
    series_path: str | Path,
    out_dir: str | Path,
    *,
    kind: Literal["molli", "t2prep"],
    times_ms: Sequence[float] | None = None,
    sidecar: str | Path | None = None,
    t2_model: Literal["mono", "mono_offset"] = "mono",
    series_uid: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    signed: bool = False,
):
    """``cardiacai fit-map``: fit a T1 (MOLLI) or T2 (T2-prepared) map pixel by pixel from the raw series.

    ``signed``: phase-sensitive (PSIR) MOLLI frames, whose early frames are negative (:func:`~cardiac_ai.mapping.
    fit_molli` with ``signed=True``: no polarity search); MOLLI only.

    Writes ``t1_map.nii.gz`` (Look-Locker corrected T1, ms) or ``t2_map.nii.gz`` (ms), ``r2_map.nii.gz``
    (goodness of fit) and ``report.json``. Pixels not fitted (background: largest signal below
    :data:`FIT_BACKGROUND_FRACTION` of its 99th percentile) and failed fits are 0 in the maps (the "not fitted"
    value :func:`~cardiac_ai.mapping.analyse_map` expects) and counted in the report.

    Times, in order of precedence: ``times_ms`` (in frame order), ``sidecar`` (JSON or CSV, see
    :func:`~cardiac_ai.mapping.timings_from_sidecar`), the DICOM headers of a DICOM folder, or a JSON sidecar next
    to a file (``series.nii.gz`` -> ``series.json``). Giving both ``times_ms`` and ``sidecar`` is an error.

    Raises
    ------
    InputError
        Unknown kind or model; a 3D image; missing timing information; a frame count that differs from the number
        of times; the other errors of :func:`~cardiac_ai.mapping.fit_molli` / :func:`~cardiac_ai.mapping.fit_t2`.
    DataError
        Unreadable input or sidecar.
    """
    from .mapping.fitting import fit_molli, fit_t2, timings_from_sidecar

    if kind not in ("molli", "t2prep"):
        raise InputError(f"kind must be 'molli' or 't2prep', got {kind!r}.")
    if t2_model not in ("mono", "mono_offset"):
        raise InputError(f"t2_model must be 'mono' or 'mono_offset', got {t2_model!r}.")
    if times_ms is not None and sidecar is not None:
        raise InputError("Give the times either directly (--times) or in a sidecar file (--sidecar), not both.")
    if signed and kind != "molli":
        raise InputError("--signed applies to phase-sensitive MOLLI series (--kind molli), not to T2-prepared ones.")
    provenance = provenance or Provenance(command="fit-map")
    source = Path(series_path)
    inputs = [series_path] + ([sidecar] if sidecar is not None else [])
    what = "inversion times" if kind == "molli" else "T2-preparation times"
    with output_folder(out_dir, overwrite=overwrite, inputs=inputs, command="fit-map") as out:
        with provenance.timed("read"):
            series, dicom_times = read_mapping_series(source, kind=kind, series_uid=series_uid,
                                                      read_times=times_ms is None and sidecar is None)
        n_frames, n_slices = series.array.shape[:2]
        automatic = None
        if not source.is_dir():
            name = source.name
            for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
                if name.lower().endswith(suffix):
                    candidate = source.with_name(name[: -len(suffix)] + ".json")
                    automatic = candidate if candidate.is_file() else None
                    break
        if times_ms is not None:
            times, origin = [[float(t) for t in times_ms]] * n_slices, "--times"
        elif sidecar is not None:
            times, origin = [timings_from_sidecar(sidecar, kind=kind)] * n_slices, f"sidecar {sidecar}"
        elif dicom_times is not None:
            times, origin = dicom_times, "DICOM headers"
        elif automatic is not None:
            times, origin = [timings_from_sidecar(automatic, kind=kind)] * n_slices, f"sidecar {automatic}"
        else:
            raise InputError(
                f"No timing information for {source}: a {n_frames}-frame series needs its {what} in ms. Pass "
                f"--times T1 T2 ... (one per frame, in frame order) or --sidecar FILE (JSON with "
                f"{'inversion_times_ms' if kind == 'molli' else 'echo_times_ms'}, or a one-column CSV)."
            )
        for slice_times in times:
            if len(slice_times) != n_frames:
                raise InputError(
                    f"{source} has {n_frames} frames but {len(slice_times)} {what} were given ({origin}: "
                    f"{slice_times}). Give one time in ms per frame, in frame order."
                )
        peak = series.array.max(axis=0)
        threshold = FIT_BACKGROUND_FRACTION * float(np.percentile(peak, 99))
        mask = peak >= threshold
        fit_device = _fit_device(device)
        provenance.device = "cpu (numpy)" if fit_device is None else str(fit_device)
        provenance.parameters.update({
            "input": str(series_path), "kind": kind, "times_source": origin, "background_fraction":
            FIT_BACKGROUND_FRACTION, **({"t2_model": t2_model} if kind == "t2prep" else {"signed": signed}),
        })
        fits = []
        with provenance.timed("fit"):
            # one fit for all slices when they share their times, else slice by slice
            groups = [list(range(n_slices))] if all(t == times[0] for t in times) else [[k] for k in range(n_slices)]
            for number, ks in enumerate(groups):
                part = Volume(series.array[:, ks], series.geometry, "tkji")
                step = subrange(progress, 0.05 + 0.85 * number / len(groups), 0.05 + 0.85 * (number + 1) / len(groups))
                if kind == "molli":
                    fits.append((ks, fit_molli(part, times[ks[0]], mask=mask[ks], device=fit_device, progress=step,
                                               signed=signed)))
                else:
                    fits.append((ks, fit_t2(part, times[ks[0]], model=t2_model, mask=mask[ks], device=fit_device,
                                            progress=step)))
        quantity = "t1" if kind == "molli" else "t2"
        value_map = np.zeros(series.array.shape[1:], np.float32)
        r2_map = np.zeros(series.array.shape[1:], np.float32)
        n_fitted = n_failed = 0
        for ks, fit in fits:
            values = fit.t1_ms if kind == "molli" else fit.t2_ms
            value_map[ks] = np.nan_to_num(values, nan=0.0)
            r2_map[ks] = np.nan_to_num(fit.r2, nan=0.0)
            n_fitted += fit.n_fitted_pixels
            n_failed += fit.n_failed_pixels
            provenance.record_logged(fit.provenance.warnings)
        if n_fitted and n_failed == n_fitted:
            raise InputError(
                f"Every one of the {n_fitted} pixels fitted failed (no finite value with R^2 at least the minimum): "
                f"check the {'inversion' if kind == 'molli' else 'echo'} times (ms, one per frame, in frame order) "
                "and that the frames are a raw series, not a map."
            )
        geometry = series.geometry
        with provenance.timed("write"):
            write_volume(Volume(value_map, geometry), out / f"{quantity}_map.nii.gz")
            write_volume(Volume(r2_map, geometry), out / "r2_map.nii.gz")
        fitted = value_map[value_map > 0]
        write_report(out, provenance=provenance, results={
            "input": {"path": str(series_path), "shape_tkji": list(series.array.shape),
                      "geometry": geometry.to_dict()},
            "kind": kind,
            "units": "ms",
            "times_ms": times[0] if len(groups) == 1 else times,
            "times_source": origin,
            "fit": [fit.provenance.parameters for _, fit in fits],
            "n_background_pixels": int(mask.size - mask.sum()),
            "n_fitted_pixels": int(n_fitted),
            "n_failed_pixels": int(n_failed),
            "not_fitted_value": "0 in every map: background (not fitted) and failed fits",
            f"median_{quantity}_ms": float(np.median(fitted)) if fitted.size else None,
        })
    report(progress, 1.0, "Done")
    return [fit for _, fit in fits]


def ecv_files(
    native_path: str | Path,
    post_path: str | Path,
    out_dir: str | Path,
    *,
    models,
    haematocrit: float | None = None,
    erosion_mm: float = 0.0,
    series_uid: str | None = None,
    device: str = "auto",
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
) -> dict:
    """``cardiacai ecv``: extracellular volume from a native and a post-contrast T1 map.

    The native map is segmented (:func:`~cardiac_ai.mapping.analyse_map`) and its contours are used on both maps;
    a pixelwise ECV map is written (``ecv_map.nii.gz``, fraction, 0 outside the myocardium and where a T1 is
    missing). A post-contrast map on another grid (another field of view) is first resampled onto the native grid
    in scanner coordinates (linear, no registration), with a warning; one that covers less than half of the native
    myocardium is refused. ECV
    ``(1 - Hct) * dR1_myo / dR1_blood`` uses the median myocardial and LV blood-pool (eroded 2 mm) T1 of each map;
    without ``haematocrit`` the synthetic haematocrit from native blood T1 (Treibel et al. 2016, 1.5 T).

    Writes ``labels.nii.gz`` (native: 2 myocardium, 3 LV blood pool), ``ecv_map.nii.gz`` (native grid) and
    ``report.json`` (``ecv``: myocardium, septal ROI and AHA segments).

    Raises
    ------
    InputError
        Bad map values (see :func:`~cardiac_ai.mapping.check_map_values`), no myocardium or blood pool found, a
        post-contrast blood T1 not shorter than native, a haematocrit that is not a fraction.
    """
    from .mapping.pipeline import analyse_map, check_map_values
    from .mapping.statistics import (
        extracellular_volume, lv_blood_pool_t1, myocardial_statistics, segment_statistics,
    )

    provenance = provenance or Provenance(command="ecv")
    provenance.parameters.update({"native": str(native_path), "post": str(post_path), "haematocrit": haematocrit})
    if haematocrit is not None and not (np.isfinite(haematocrit) and 0.0 < haematocrit < 1.0):
        hint = (f" It looks like a percentage: pass {haematocrit / 100:.2f}." if 10.0 <= haematocrit <= 100.0
                else "")
        raise InputError(f"haematocrit must be a fraction between 0 and 1, got {haematocrit!r}.{hint}")
    if haematocrit is not None and not 0.15 <= haematocrit <= 0.65:
        provenance.warn(f"A haematocrit of {haematocrit:g} is outside the range seen in patients (0.15-0.65); "
                        "check the value (a fraction: 0.42 for 42 %).", log)
    with output_folder(out_dir, overwrite=overwrite, inputs=[native_path, post_path], command="ecv") as out:
        with provenance.timed("read"):
            native = read_input(native_path, series_uid=series_uid)
            # the same grid stored in another axis order (its header saying so) is reordered, not resampled
            post = align_axes(read_input(post_path, series_uid=series_uid), native.geometry)
        post_clean, _, notes = check_map_values(post.array, kind="t1", post_contrast=True,
                                                what="post-contrast T1 map")
        native_analysis = analyse_map(native, kind="t1", models=models, erosion_mm=erosion_mm, device=device,
                                      progress=subrange(progress, 0.0, 0.45), provenance=provenance)
        for note in notes:
            provenance.warn(note, log)
        if native_analysis.myocardium is None or native_analysis.lv_blood_pool is None:
            raise InputError(
                f"No {'myocardium' if native_analysis.myocardium is None else 'LV blood pool'} was found in the "
                f"native T1 map {native_path}; ECV cannot be computed. See the warnings: "
                + "; ".join(native_analysis.provenance.warnings[-3:])
            )
        same_grid = post.array.shape == native.array.shape and post.geometry.is_close(native.geometry, atol_mm=1e-2)
        spacing_ji = tuple(native.geometry.spacing_kji_mm[1:])
        post_values = np.where(post_clean > 0, post_clean, np.nan).astype(np.float64)
        # the map the analysis measured: values above the physical maximum are not fitted (0), as it reported
        native_clean = check_map_values(native.array, kind="t1")[0]
        native_values = np.where(native_clean > 0, native_clean, np.nan).astype(np.float64)
        labels = native_analysis.labels.array
        if same_grid:
            roi_source = "native contours on both maps (one grid)"
        else:
            # the post-contrast map segments badly on its own (its contrast is not the native one the model
            # learnt); the native contours apply once both maps are on one grid in scanner coordinates
            from .preprocessing import resample_onto

            post_values = resample_onto(post.with_array(post_values), native).array
            covered = float(np.mean(np.isfinite(post_values[labels == 2])))
            if covered < 0.5:
                raise InputError(
                    f"The post-contrast map {post_path} covers only {100 * covered:.0f} % of the myocardium found in "
                    f"the native map {native_path} (different slice positions or fields of view); ECV needs both "
                    "maps of the same slices."
                )
            roi_source = "native contours on both maps (post-contrast map resampled onto the native grid)"
            provenance.warn(
                "The native and post-contrast maps are on different grids: the post-contrast map was resampled "
                f"(linear, scanner coordinates, no registration) onto the native grid, which it covers for "
                f"{100 * covered:.0f} % of the myocardium, and the native contours were used on both.", log)
        for region, name in ((labels == 2, "myocardium"), (labels == 3, "LV blood pool")):
            if region.any() and not np.isfinite(post_values[region]).any():  # 0 in the map: not fitted
                where = "zero (not fitted)" if same_grid else "zero (not fitted) or outside the post-contrast map"
                raise InputError(
                    f"The post-contrast T1 map {post_path} has no T1 value inside the {name} found in the native "
                    f"map {native_path}: all {int(region.sum())} of its pixels there are {where}. ECV needs a "
                    "post-contrast map fitted over the myocardium and the LV blood pool.")
        try:
            post_myocardium = myocardial_statistics(post_values, labels == 2, erosion_mm=erosion_mm,
                                                    spacing_ji_mm=spacing_ji)
            post_blood = lv_blood_pool_t1(post_values, labels, spacing_ji_mm=spacing_ji, erosion_mm=2.0)
        except InputError as error:  # say which map: both are T1 maps
            raise InputError(f"Post-contrast T1 map {post_path}: {error} Its pixels that are 0 (not fitted) count "
                             "as NaN here.") from error
        native_myocardium, native_blood = native_analysis.myocardium, native_analysis.lv_blood_pool
        uncovered = ~np.isfinite(post_values) & np.isin(labels, (2, 3))
        if uncovered.any():
            # both medians over the same pixels: a native median over slices the post-contrast map lacks would pair
            # another part of the heart with the post-contrast one
            paired = np.where(np.isfinite(post_values), native_values, np.nan)
            native_myocardium = myocardial_statistics(paired, labels == 2, erosion_mm=erosion_mm,
                                                      spacing_ji_mm=spacing_ji)
            native_blood = lv_blood_pool_t1(paired, labels, spacing_ji_mm=spacing_ji, erosion_mm=2.0)
            share = float(uncovered.sum()) / float(np.isin(labels, (2, 3)).sum())
            message = (f"The post-contrast map has no value in {100 * share:.0f} % of the native myocardium and LV "
                       "blood pool (not fitted, or outside it): the native medians of the ECV are taken over the "
                       "pixels both maps cover.")
            if share > 0.05:
                provenance.warn(message, log)
            else:
                log.info(message)
        blood_native, blood_post = native_blood.median, post_blood.median
        myocardium = extracellular_volume(native_myocardium.median, post_myocardium.median, blood_native,
                                          blood_post, haematocrit=haematocrit)
        for message in myocardium.warnings:
            provenance.warn(message, log)

        def roi_entry(native_stats, post_stats, **extra):
            value = extracellular_volume(native_stats.median, post_stats.median, blood_native, blood_post,
                                         haematocrit=myocardium.haematocrit)
            return {**extra, "ecv_fraction": value.ecv_fraction, "native_t1_median_ms": native_stats.median,
                    "post_t1_median_ms": post_stats.median, "n_pixels": post_stats.n_pixels}

        septal, segments = [], {}
        with provenance.timed("ecv"):
            for k, stats in sorted(native_analysis.septal.items()):
                post_stats = myocardial_statistics(
                    post_values[k], _septal_mask(native_analysis, k), spacing_ji_mm=spacing_ji)
                if post_stats.n_pixels:
                    septal.append(roi_entry(stats, post_stats, slice_index=k))
            segment_map = native_analysis.segment_map.array
            if segment_map.any():
                post_segments = segment_statistics(post_values, segment_map, erosion_mm=erosion_mm,
                                                   spacing_ji_mm=spacing_ji)
                for segment, stats in native_analysis.segments.items():
                    post_stats = post_segments.get(segment)
                    if post_stats is not None and stats.n_pixels and post_stats.n_pixels:
                        segments[str(segment)] = roi_entry(stats, post_stats)
            ecv_map = extracellular_volume(native_values, post_values, blood_native, blood_post,
                                           haematocrit=myocardium.haematocrit).ecv_fraction
            ecv_map = np.where((labels == 2) & np.isfinite(ecv_map), ecv_map, 0.0).astype(np.float32)
        with provenance.timed("write"):
            write_volume(native_analysis.labels, out / "labels.nii.gz")
            write_volume(Volume(ecv_map, native.geometry), out / "ecv_map.nii.gz")
        results = {
            "ecv": {
                "myocardium": {
                    **myocardium.to_dict(),
                    "native_t1_myocardium_median_ms": native_myocardium.median,
                    "post_t1_myocardium_median_ms": post_myocardium.median,
                    "native_t1_blood_median_ms": blood_native,
                    "post_t1_blood_median_ms": blood_post,
                },
                "septal_roi": septal,
                "segments": segments,
                "formula": "ECV = (1 - Hct) * (1/T1post_myo - 1/T1native_myo) / (1/T1post_blood - 1/T1native_blood), "
                           "medians of each ROI; fraction (0.25 = 25 %)",
                "roi_source": roi_source,
            },
            "native": native_analysis.stats_dict(),
        }
        write_report(out, provenance=provenance, results=results)
    report(progress, 1.0, "Done")
    return results


def _septal_mask(analysis, k: int) -> np.ndarray:
    from .mapping.statistics import septal_roi

    return septal_roi(analysis.labels_with_rv.array[k], geometry=analysis.labels.geometry)


# -- quality control -------------------------------------------------------------------------------------------------
__all__ += ["QC_SLICES_NAME", "MAP_QC_NOTE", "FIBROSIS_QC_NOTE", "QCOptions", "QCFileModels", "load_qc_model",
            "load_qc_regressor", "load_qc_file_models", "qc_options", "qc_file"]

#: Per-slice QC table written beside ``report.json`` when QC ran.
QC_SLICES_NAME = "qc_slices.csv"

#: Why QC scores of T1/T2 maps are indicative only (written into their report's ``qc.note``).
FIBROSIS_QC_NOTE = (
    "indicative only: the QC models were trained on cine image-segmentation pairs and are run here on an LGE stack "
    "(myocardium with scar and MVO folded in, LV blood pool; no RV). The shape prior holds, the image contrast does "
    "not, so the predicted Dice is not calibrated for LGE; use it to find grossly wrong slices, not as a Dice "
    "estimate (EMIDEC test patients: docs/benchmarks.md, LGE fibrosis)."
)

MAP_QC_NOTE = (
    "indicative only: the QC model was trained on cine image-segmentation pairs and is run here on a T1/T2 map. "
    "Its shape prior (RV, myocardium, LV blood pool) holds on maps, but the image contrast differs, so the "
    "predicted Dice is not calibrated for maps; use it to find grossly wrong slices, not as a Dice estimate. "
    "The structures checked are the map's labels (myocardium, LV blood pool) plus the network's RV."
)


@dataclass(frozen=True)
class QCOptions:
    """Quality control of a file job's segmentation (the CLI runs it unless ``--no-qc``).

    Attributes
    ----------
    model : LoadedModel or None
        The ``qc_vae`` model; None when none was found or it could not be loaded (QC is then skipped with a
        provenance warning in each job, and the report's ``qc`` is null).
    config : QCConfig or None
        Threshold and search options; None for the defaults (threshold 0.80).
    searched : str
        The folders the model was looked for in, named in the "QC skipped" warning.
    problem : str or None
        Why a ``qc_vae`` that exists could not be loaded (a corrupt file), reported instead of "not found".
    regressor : LoadedModel or None
        The ``qc_dice_regressor`` when installed: with the default ``QCConfig.predictor`` ("auto") it gives the
        predicted Dice (see :class:`~cardiac_ai.qc.assess.QCConfig`).
    """

    model: object | None = None
    config: object | None = None
    searched: str = ""
    problem: str | None = None
    regressor: object | None = None


def _find_qc_network(name: str, what: str, models_dirs: Sequence[str | Path], *, device: str,
                     provenance: Provenance | None, timing: str):
    """(LoadedModel of the QC network ``name`` or None when none is installed, folders searched); ModelError when
    one exists but cannot be loaded or is another network. ``what`` names it in that error; ``timing`` is the
    provenance timing key of the loading."""
    from .device import resolve_device
    from .models.registry import ModelRegistry

    registry = ModelRegistry(extra_paths=[Path(p) for p in models_dirs])
    where = ", ".join(str(p) for p in registry.search_paths) or "(no models folder exists)"
    if not any(card.name == name for card in registry.list()):
        return None, where
    with (provenance.timed(timing) if provenance is not None else contextlib.nullcontext()):
        loaded = registry.load(name, device=resolve_device(device))
    if loaded.card.network != name:
        raise ModelError(
            f"Model {loaded.card.stem} ({loaded.weights_path}) is a {loaded.card.network!r} network, not the "
            f"'{name}' {what}; retrain it with scripts/train_qc.py."
        )
    return loaded, where


def _find_qc_model(models_dirs: Sequence[str | Path], *, device: str, provenance: Provenance | None):
    """(LoadedModel or None, folders searched); ModelError when a qc_vae exists but cannot be loaded."""
    from .qc.assess import QC_MODEL_NAME

    return _find_qc_network(QC_MODEL_NAME, "VAE that generative QC needs", models_dirs, device=device,
                            provenance=provenance, timing="load_qc_model")


def _find_qc_regressor(models_dirs: Sequence[str | Path], *, device: str, provenance: Provenance | None):
    """The ``qc_dice_regressor`` LoadedModel, or None when none is installed; ModelError when it cannot be loaded."""
    from .qc.assess import QC_REGRESSOR_NAME

    return _find_qc_network(QC_REGRESSOR_NAME, "CNN that QC's Dice regression needs", models_dirs, device=device,
                            provenance=provenance, timing="load_qc_regressor")[0]


def load_qc_regressor(
    models_dirs: Sequence[str | Path] = (), *, device: str = "auto", provenance: Provenance | None = None
):
    """The ``qc_dice_regressor`` model from the registry (``models_dirs`` searched first), or None when none is
    installed (QC then predicts Dice by the latent search alone).

    Raises
    ------
    ModelError
        One exists but cannot be loaded.
    """
    return _find_qc_regressor(models_dirs, device=device, provenance=provenance)


def load_qc_model(
    models_dirs: Sequence[str | Path] = (), *, device: str = "auto", provenance: Provenance | None = None
):
    """The ``qc_vae`` model from the registry (``models_dirs`` searched first), for ``cardiacai qc``.

    Raises
    ------
    ModelError
        No ``qc_vae`` model in any folder (the message lists the folders and says how to train one), or one that
        cannot be loaded.
    InputError
        A ``models_dirs`` folder that does not exist.
    """
    from .qc.assess import QC_MODEL_NAME

    loaded, where = _find_qc_model(models_dirs, device=device, provenance=provenance)
    if loaded is None:
        raise ModelError(
            f"No {QC_MODEL_NAME} model found in {where}; `cardiacai qc` needs the generative QC model. Train it with "
            "scripts/train_qc.py (see README) and pass its folder with --models-dir DIR (or set CARDIACAI_MODELS)."
        )
    if provenance is not None:
        provenance.device = str(loaded.device)
    return loaded


def qc_options(
    models_dirs: Sequence[str | Path] = (),
    *,
    device: str = "auto",
    config=None,
    provenance: Provenance | None = None,
) -> QCOptions:
    """QC for segment-cine, function, batch, map and fibrosis: the ``qc_vae`` model when there is one, else options under
    which each job skips QC with a warning. Never raises for a missing or broken QC model."""
    try:
        loaded, where = _find_qc_model(models_dirs, device=device, provenance=provenance)
    except ModelError as error:
        log.warning("QC model unusable: %s", error)
        return QCOptions(config=config, problem=f"the qc_vae model could not be loaded: {error}")
    regressor = None
    if loaded is not None and getattr(config, "predictor", "auto") != "search":
        try:
            regressor = _find_qc_regressor(models_dirs, device=device, provenance=provenance)
        except ModelError as error:
            log.warning("QC regressor unusable: %s", error)
            if provenance is not None:
                provenance.warn(f"QC: the {error}; the latent search predicts the Dice instead.", log)
    return QCOptions(model=loaded, config=config, searched=where, regressor=regressor)


def _file_qc(volume: Volume, labels: Volume, qc: QCOptions, provenance: Provenance, progress, *,
             judged_structures: tuple[int, ...] | None = None):
    """Run QC for a file job: the QCResult, or None with a provenance warning (never raises for QC reasons).
    ``judged_structures``: the structures the job segments, when not all of RV, myocardium and LV."""
    from .qc.assess import QCConfig, run_qc

    if qc.model is None and qc.problem:
        provenance.warn(f"QC skipped: {qc.problem}", log)
        return None
    config = qc.config if qc.config is not None else QCConfig()
    if judged_structures is not None:
        config = dataclasses.replace(config, judged_structures=judged_structures)
    return run_qc(volume, labels, qc.model, config=config, provenance=provenance, progress=progress,
                  searched=qc.searched, regressor=qc.regressor)


def _qc_entry(check, *, note: str | None = None) -> dict | None:
    """The report's ``qc`` value: the result's dict (marked indicative with ``note``), None when QC did not run."""
    if check is None:
        return None
    entry = check.to_dict()
    if note:
        entry = {"indicative": True, "note": note, **entry}
    return entry


@dataclass
class QCFileModels:
    """What ``cardiacai qc`` runs, loaded once (:func:`load_qc_file_models`; a batch of ``qc`` keeps them for every
    case).

    Attributes
    ----------
    vae, regressor : the ``qc_vae`` model and the ``qc_dice_regressor`` (None: not installed, or not wanted).
    localiser : the ``cine_localiser`` that tells where the heart is (extent check); None: not checked.
    missing : why an installed localiser, or the cine models, could not be loaded, for the report's warnings.
    models_dirs, device : where :meth:`cine` finds the cine baseline, loaded on first use.
    """

    vae: object
    regressor: object | None = None
    localiser: object | None = None
    missing: dict = field(default_factory=dict)
    models_dirs: tuple = ()
    device: str = "auto"
    _cine: list = field(default_factory=list, repr=False)

    def cine(self):
        """The cine baseline models (:class:`~cardiac_ai.regions.pipeline.CineModels`) that draw the structures a
        partial segmentation leaves out, loaded on first use (only partial segmentations need them); None when
        they are not installed (``missing["cine"]`` says why)."""
        if not self._cine:
            from .models.registry import ModelRegistry
            from .regions.pipeline import CineModels

            try:
                self._cine.append(CineModels.from_registry(
                    ModelRegistry(extra_paths=[Path(p) for p in self.models_dirs]), mode="baseline",
                    device=self.device))
            except ModelError as error:
                self.missing["cine"] = str(error)
                self._cine.append(None)
        return self._cine[0]


def load_qc_file_models(models_dirs: Sequence[str | Path] = (), *, device: str = "auto", predictor: str = "auto",
                        provenance: Provenance | None = None) -> QCFileModels:
    """The models of ``cardiacai qc``: the QC models (a missing ``qc_vae`` is a ModelError) and, where installed,
    the cine localiser for the extent check (the cine baseline for the context of partial segmentations follows
    on first use: :meth:`QCFileModels.cine`).

    Raises
    ------
    ModelError
        No usable ``qc_vae``, or a ``qc_dice_regressor`` that exists but cannot be loaded.
    """
    from .models.registry import ModelRegistry

    vae = load_qc_model(models_dirs, device=device, provenance=provenance)
    regressor = None if predictor == "search" else load_qc_regressor(models_dirs, device=device,
                                                                    provenance=provenance)
    registry = ModelRegistry(extra_paths=[Path(p) for p in models_dirs])
    localiser = None
    missing: dict = {}
    if registry.has("cine_localiser"):
        try:
            localiser = registry.load("cine_localiser", device=device)
        except ModelError as error:
            missing["localiser"] = str(error)
    return QCFileModels(vae, regressor, localiser, missing, tuple(str(p) for p in models_dirs), device)


def _read_labels(path: str | Path, label_codes: Mapping[int, int] | None, provenance: Provenance,
                 reference) -> tuple[Volume, Volume, set[int] | None]:
    """The label map to judge (CardiacAI codes), the file as read, and the codes the file names when it names
    segments (``label_codes``' targets, or a ``.seg.nrrd``'s or DICOM SEG's segments); None when it names none (a
    plain label map)."""
    from .io.seg_nrrd import PLAIN_LABEL_MAP_NOTE, read_label_file

    if label_codes is None:
        read = read_label_file(path, reference=reference)
        provenance.record_logged(read.notes)  # segments matched by their label value alone
        if not read.segments and str(path).lower().endswith(".seg.nrrd") and read.labels.array.any():
            provenance.record_logged([f"{path} {PLAIN_LABEL_MAP_NOTE}."])
        return read.labels, read.labels, {segment.code for segment in read.segments} or None
    as_read = read_volume(path)
    labels = as_read.with_array(remap_label_codes(as_read.array, label_codes))
    absent = sorted(set(label_codes) - set(np.unique(as_read.array).astype(np.int64).tolist()))
    if absent:  # a typo, or a structure the other tool did not segment: say so, QC judges the rest
        structures = ", ".join(LABELS[label_codes[value]].display_name for value in absent if label_codes[value])
        provenance.warn(f"The label codes (--label-codes) map values {absent}, which no voxel of {path} has"
                        + (f": {structures} judged missing." if structures else "."), log)
    return labels, as_read, {code for code in label_codes.values() if code}


def _hint_partial_label_map(labels: Volume, path, provenance: Provenance) -> None:
    """A label map of CardiacAI codes that lacks a whole structure is judged as a failed segmentation of it; say how
    to judge only what the tool draws."""
    from .qc import QC_STRUCTURES

    given = np.asarray(labels.array)
    if not given.any():
        return
    absent = [code for code in QC_STRUCTURES if not np.any(np.isin(given, codes_of_structure(code)))]
    if absent and len(absent) < len(QC_STRUCTURES):  # with none drawn there is nothing to judge alone
        values = set(np.unique(given).tolist()) - {0}
        example = " ".join(f"{name}={code}" for name, code in LABEL_CODE_NAMES.items() if code in values)
        provenance.warn(f"{path} has no {', '.join(LABELS[c].display_name for c in absent)} at all: QC judges that "
                        "as a failed segmentation of it. If the tool draws only the rest, pass --label-codes "
                        f"{example} to judge those alone.", log)


def _structures_named(config, named: set[int] | None, provenance: Provenance):
    """QC judges only the structures a label file names, when it names some but not all (a myocardium-only
    mask is not missing its blood pools); scar and MVO are myocardium to QC."""
    from .qc import QC_STRUCTURES

    if named is None or config.judged_structures is not None:
        return config
    named = {LV_MYOCARDIUM if code in (SCAR, MVO) else code for code in named}
    judged = tuple(code for code in QC_STRUCTURES if code in named)
    if not judged and named:
        names = ", ".join(LABELS[code].display_name if code in LABELS else str(code) for code in sorted(named))
        raise InputError(f"QC judges the RV blood pool, LV myocardium and LV blood pool; the label file (or "
                         f"--label-codes) names none of them, only {names}. A whole-heart mask (e.g. cardiacai cam's "
                         "labels) cannot be judged: give a segmentation of those structures.")
    if not judged or len(judged) == len(QC_STRUCTURES):
        return config
    left_out = ", ".join(LABELS[code].display_name for code in QC_STRUCTURES if code not in judged)
    provenance.warn(f"QC judges only {', '.join(LABELS[code].display_name for code in judged)}: the label file "
                    f"(or --label-codes) names no {left_out}.", log)
    return dataclasses.replace(config, judged_structures=judged)


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Only errors from ``logger_name`` while a helper step runs whose warnings are reported otherwise."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _with_drawn_context(image: Volume, labels: Volume, judged: tuple[int, ...], models: QCFileModels, *, device,
                        provenance: Provenance) -> tuple[Volume, bool]:
    """A partial segmentation completed with the structures it leaves out, drawn by the cine models where it has
    background, so that QC sees a whole heart as it was trained to; the drawn structures are not judged.

    Why: given the myocardium alone, QC reads the missing blood pools as a failed segmentation; with blood pools
    drawn by the bundled cine baseline, its predicted myocardium Dice follows the true one about as well as with the
    true blood pools (40 ACDC test volumes, corrupted myocardium: r 0.70 -> 0.84, MAE 0.25 -> 0.16; true pools
    0.85 / 0.16; docs/benchmarks.md). Returns the labels and whether anything was drawn."""
    from .qc import QC_STRUCTURES
    from .regions.pipeline import segment_cine

    given = np.asarray(labels.array)
    present = {code for code in QC_STRUCTURES if np.any(np.isin(given, codes_of_structure(code)))}
    missing = [code for code in QC_STRUCTURES if code not in judged and code not in present]
    if not missing or not present:  # nothing to complete, or nothing to complete it around (an empty segmentation)
        return labels, False
    cine = models.cine()
    try:
        if cine is None:
            raise ModelError(models.missing["cine"])
        with _quiet("cardiac_ai.regions"):  # its "no heart" warnings are about the context, said below
            drawn = segment_cine(image.with_array(np.asarray(image.array, np.float32)), models=cine,
                                 mode="baseline", device=device, provenance=Provenance()).labels.array
    except (ModelError, InputError) as error:  # no cine models, or an image they cannot take
        provenance.warn(f"QC: the structures the segmentation leaves out could not be drawn as context ({error}); "
                        "it is judged without them, which makes its predicted Dice low and less reliable.", log)
        return labels, False
    completed = given.copy()
    segmented = completed.any(axis=(1, 2))  # where the segmentation stops is for the extent check, not the context
    judged_voxels = np.isin(completed, [c for code in QC_STRUCTURES for c in codes_of_structure(code)])
    fill = ~judged_voxels & np.isin(drawn, missing) & segmented[:, None, None]  # over background (and HEART)
    missing_names = ", ".join(LABELS[code].display_name for code in missing)
    if not fill.any():
        provenance.warn(f"QC: the cine baseline found no {missing_names} on the segmented slices to draw as context; "
                        "the segmentation is judged without them, which makes its predicted Dice low and less "
                        "reliable.", log)
        return labels, False
    completed[fill] = drawn[fill]
    provenance.models.extend(use for use in (model.model_use() for model in cine.loaded())
                             if use not in provenance.models)
    provenance.warn(f"QC: {missing_names} drawn by the cine baseline on the segmented slices, as context for the "
                    "judgement (not judged).", log)
    return labels.with_array(completed), True


def qc_file(
    image_path: str | Path,
    labels_path: str | Path,
    out_dir: str | Path,
    *,
    models_dirs: Sequence[str | Path] = (),
    device: str = "auto",
    config=None,
    label_codes: Mapping[int, int] | None = None,
    write_surrogate: bool = False,
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    models: QCFileModels | None = None,
):
    """``cardiacai qc``: predict the Dice of a segmentation without ground truth and flag the slices to review.

    Parameters
    ----------
    image_path : path
        The short-axis image (NIfTI, NRRD, MHA or DICOM folder; one 3D frame).
    labels_path : path
        Its segmentation: a label map file (CardiacAI codes, or others mapped by ``label_codes``), a Slicer
        ``.seg.nrrd`` or a DICOM SEG (any file name), on the image's voxel lattice: the whole grid or a box of it
        (as Slicer saves a segmentation cropped to its contents, or a SEG of the segmented slices), padded with
        background (``input.labels_padded``), in the image's axis order or another (reordered, never resampled:
        ``input.labels_reoriented``).
    out_dir : path
        Output folder; gets ``report.json`` (provenance and ``qc``: per-slice and per-structure predicted Dice,
        flags, threshold, rule checks) and ``qc_slices.csv``; with ``write_surrogate`` also ``surrogate.nii.gz``
        and ``surrogate.seg.nrrd``, the surrogate segmentation on the image's grid.
    models_dirs : paths
        Folders searched first for the ``qc_vae`` model (and the ``qc_dice_regressor``, used when installed).
    device : "auto", "cpu", "cuda" or "cuda:N"
    config : QCConfig, optional
        Threshold, predictor and search options (default threshold 0.80, predictor "auto").
    label_codes : {value in the label file: CardiacAI code}, optional
        Another tool's label values mapped onto CardiacAI's codes before QC (e.g. M&Ms {1: 3, 2: 2, 3: 1};
        :func:`~cardiac_ai.labels.parse_label_codes` reads ``RV=3 MYO=2 LV=1``); every nonzero value in the file
        must be mapped (to 0 to drop it). The file is not changed; the mapping is kept in the report's
        ``provenance.parameters.label_codes``. Not for a ``.seg.nrrd`` with segments, which are matched by name.
        When the file (or ``label_codes``) names fewer structures than RV, myocardium and LV, only those are judged,
        and the others are drawn by the cine baseline as context where the cine models are installed
        (``input.context_drawn`` in the report).
    write_surrogate, overwrite, provenance, progress
        As named.
    models : QCFileModels, optional
        Loaded already (:func:`load_qc_file_models`, e.g. once for a batch); None loads them from ``models_dirs``.

    Returns
    -------
    QCResult

    Raises
    ------
    ModelError
        No ``qc_vae`` model found (unlike the segmentation commands, here QC is the whole job).
    InputError
        Labels not on the image's voxel lattice or reaching beyond the image (the message names the differing
        field), label values outside the label table or not mapped by ``label_codes``, codes outside the table,
        ``label_codes`` with a ``.seg.nrrd`` that names its segments, a 4D image.
    DataError
        Unreadable files.
    OutputError
        A non-empty output folder without ``overwrite``, or an output that would replace an input.
    """
    from .qc.assess import QCConfig, assess_segmentation

    from .io.seg_nrrd import names_its_segments

    config = config if config is not None else QCConfig()
    if label_codes is not None and names_its_segments(labels_path):
        raise InputError(
            f"--label-codes maps the values of a label map file, and {labels_path} is a Slicer segmentation or DICOM "
            "SEG, whose segments are matched to CardiacAI's tissues by ID, terminology or name: rename its segments "
            "(e.g. 'Left ventricle myocardium'), or export them to a labelmap volume and map that."
        )
    provenance = provenance or Provenance(command="qc")
    provenance.parameters.update({"image": str(image_path), "labels": str(labels_path), "qc": config.to_dict()})
    if label_codes is not None:
        provenance.parameters["label_codes"] = {str(value): int(code) for value, code in sorted(label_codes.items())}
    with output_folder(out_dir, overwrite=overwrite, inputs=[image_path, labels_path], command="qc") as out:
        if models is None:
            report(progress, 0.0, "Loading the QC model")
            models = load_qc_file_models(models_dirs, device=device, predictor=config.predictor,
                                         provenance=provenance)
        model, regressor = models.vae, (None if config.predictor == "search" else models.regressor)
        provenance.models.append(model.model_use())
        with provenance.timed("read"):
            image = read_input(image_path)
            labels, labels_as_read, named = _read_labels(labels_path, label_codes, provenance, image.geometry)
            labels = pad_to_reference_grid(labels, image)
        config = _structures_named(config, named, provenance)
        provenance.parameters["qc"] = config.to_dict()
        if named is None and config.judged_structures is None:
            _hint_partial_label_map(labels, labels_path, provenance)
        context_drawn = False
        if config.judged_structures is not None:
            with provenance.timed("context"):
                labels, context_drawn = _with_drawn_context(image, labels, config.judged_structures, models,
                                                            device=device, provenance=provenance)
        padding = _padding_note(labels_as_read, image)
        unsegmented: list[int] = []
        if config.judged_structures is None or LV_MYOCARDIUM in config.judged_structures:
            # the heart's extent is the myocardium's: blood pools alone stop short of the apex by design
            with provenance.timed("extent"):
                unsegmented = _unsegmented_heart_slices(image, labels, models, device=device,
                                                        provenance=provenance)
        with provenance.timed("qc"):
            result = assess_segmentation(image, labels, model, config=config, provenance=provenance,
                                         progress=subrange(progress, 0.05, 0.9), regressor=regressor,
                                         unsegmented_slices=unsegmented)
        if result.predictor in ("regressor", "combined"):
            provenance.models.append(regressor.model_use())
        with provenance.timed("write"):
            write_csv(out / QC_SLICES_NAME, result.slice_table_rows())
            if write_surrogate:
                write_volume(result.surrogate, out / "surrogate.nii.gz")
                write_seg_nrrd(result.surrogate, out / "surrogate.seg.nrrd", reference=image)
        write_report(out, provenance=provenance, results={
            "input": {"image": str(image_path), "labels": str(labels_path), **volume_entry(image),
                      "context_drawn": context_drawn, **padding},
            "qc": result.to_dict(),
        })
    report(progress, 1.0, "Done")
    return result


def _unsegmented_heart_slices(image: Volume, labels: Volume, models: QCFileModels, *, device,
                              provenance) -> list[int]:
    """Slices beyond the segmentation where the cine localiser sees the heart (:mod:`cardiac_ai.qc.extent`); none
    without a usable ``cine_localiser`` (noted) or for an image the localiser cannot take."""
    from .qc.extent import unsegmented_heart_slices
    from .regions.pipeline import localise_heart

    localiser = models.localiser
    if localiser is None:
        if "localiser" in models.missing:
            provenance.warn("QC: the segmentation's extent was not checked against the heart "
                            f"({models.missing['localiser']}).", log)
        else:
            log.info("No cine_localiser model: QC does not check where the segmentation stops against the heart.")
        return []
    try:
        localised = localise_heart(localiser, image.with_array(np.asarray(image.array, np.float32)), device=device)
    except InputError as error:
        provenance.warn(f"QC: the segmentation's extent was not checked against the heart ({error}).", log)
        return []
    if localiser.model_use() not in provenance.models:
        provenance.models.append(localiser.model_use())
    return unsegmented_heart_slices(labels.array, localised.slice_area_mm2)


def _padding_note(labels_as_read: Volume, image: Volume) -> dict:
    """``{"labels_padded": {...}}`` for the report when the labels covered only a box of the image's grid (as Slicer
    saves a segmentation cropped to its contents, or a DICOM SEG of the segmented slices) and were padded with
    background, or had their axes in another order or sense; else empty."""
    aligned = align_axes(labels_as_read, image.geometry)
    notes: dict = {}
    if aligned is not labels_as_read:
        notes["labels_reoriented"] = (
            "The labels' axes were in another order or direction than the image's (another orientation of the same "
            "voxels); they were reordered, not resampled.")
        log.info(notes["labels_reoriented"])
    if aligned.spatial_shape == image.spatial_shape:
        return notes
    offset = image.geometry.lattice_offset_kji(aligned.geometry, aligned.spatial_shape)
    last = tuple(o + n - 1 for o, n in zip(offset, aligned.spatial_shape))
    note = (f"The labels cover voxels (k, j, i) {offset} to {last} of the image's {image.spatial_shape} grid "
            "(a segmentation cropped to its contents, as Slicer saves one, or a DICOM SEG of the segmented "
            "slices); they were padded with background.")
    log.info(note)
    return {**notes, "labels_padded": {"shape_kji": list(aligned.spatial_shape), "offset_kji": list(offset),
                                       "note": note}}


# -- class activation maps (weak-label models) ------------------------------------------------------------------
__all__ += ["load_weak_models", "cam_file"]


def load_weak_models(models_dirs: Sequence[str | Path], *, device: str, provenance: Provenance | None = None):
    """The weak-label models of ``cardiacai cam`` from the registry (``models_dirs`` searched first): the
    ``weak_cam_classifier`` and, when installed, the ``weak_heart_unet``; records device and loading time.

    Raises
    ------
    ModelError
        No ``weak_cam_classifier`` model found (the message says how to train one).
    """
    from .device import resolve_device
    from .models.registry import ModelRegistry
    from .weak.pipeline import WeakModels

    torch_device = resolve_device(device)
    registry = ModelRegistry(extra_paths=[Path(p) for p in models_dirs])
    if provenance is None:
        return WeakModels.from_registry(registry, device=torch_device)
    provenance.device = str(torch_device)
    with provenance.timed("load_models"):
        return WeakModels.from_registry(registry, device=torch_device)


#: What the report says of ``cam --structures`` (docs/benchmarks.md, session 17: 20 held-out ACDC patients).
WEAK_STRUCTURES_CAUTION = (
    "label-free estimate from the whole heart and the image intensity, not a measurement. On 20 held-out ACDC "
    "patients, with the weak U-Net's heart and its LV wall completed (11 mm): per-volume Dice about 0.53 (RV blood "
    "pool), 0.64 (LV myocardium) and 0.74 (LV blood pool); volumes off by -19, +27 and -23 ml on average (mean "
    "absolute errors 49, 48 and 28 ml; without the LV wall, --lv-wall-mm 0, the myocardium's are -5 and 30 ml at a "
    "Dice of 0.57)")
#: Added when the CAM pseudo-label drew the heart (``--pseudo-label`` or no weak U-Net): a far rougher heart.
WEAK_STRUCTURES_PSEUDO_LABEL_CAUTION = (
    "this heart is the CAM pseudo-label's (whole-heart Dice about 0.33 on held-out ACDC patients, against 0.78 for the "
    "weak U-Net with its LV wall completed), so the structures are rougher still")


def _split_weak_heart(volume: Volume, heart_labels: Volume, provenance: Provenance) -> Volume:
    from .weak.structures import HeartSplitConfig, split_heart

    config = HeartSplitConfig()
    provenance.parameters["structures"] = dataclasses.asdict(config)
    with provenance.timed("structures"):
        split = split_heart(volume.array, heart_labels.array > 0, volume.geometry.spacing_kji_mm, config)
    return heart_labels.with_array(split)


def _weak_structures_report(split: Volume, *, heart_from_weak_unet: bool, lv_wall_mm: float,
                            heart_from_end_diastole: bool = False) -> dict:
    from .labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
    from .metrics.clinical import structure_volume_ml
    from .weak.structures import LV_WALL_MM

    spacing = split.geometry.spacing_kji_mm
    if not heart_from_weak_unet:
        caution = WEAK_STRUCTURES_CAUTION + "; " + WEAK_STRUCTURES_PSEUDO_LABEL_CAUTION
    elif lv_wall_mm != LV_WALL_MM:
        caution = (f"{WEAK_STRUCTURES_CAUTION}; these figures are for the default LV wall of {LV_WALL_MM:g} mm, this "
                   f"run added {lv_wall_mm:g} mm")
    else:
        caution = WEAK_STRUCTURES_CAUTION
    if heart_from_end_diastole:
        caution += ("; this heart was carried from the end-diastolic frame (--ed), which the figures above were not "
                    "measured on")
    return {
        "source": "weak.structures.split_heart of the cam labels (no pixel label used)",
        "volumes_ml": {LABELS[code].name: structure_volume_ml(split.array, code, spacing)
                       for code in (RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL)},
        "caution": caution,
    }


def _read_end_diastole(path: str | Path, frame: int | None) -> Volume:
    """``cam --ed``'s frame, its errors saying which input and option they are about (not --frame, INPUT's)."""
    try:
        return read_input(path, frame=frame)
    except InputError as error:
        message = str(error).replace("--frame N", "--ed-frame N").replace(f"--frame {frame}", f"--ed-frame {frame}")
        raise InputError(f"The end-diastolic frame {path} (--ed / --ed-frame): {message}") from error


def cam_file(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    models_dirs: Sequence[str | Path] = (),
    models=None,
    explain: str | None = None,
    method: str | None = None,
    use_segmenter: bool = True,
    frame: int | None = None,
    device: str = "auto",
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    augment: Sequence[str] = (),
    pseudo_label_overrides: dict | None = None,
    structures: bool = False,
    lv_wall_mm: float | None = None,
    end_diastole: str | Path | None = None,
    end_diastole_frame: int | None = None,
    series_uid: str | None = None,
):
    """``cardiacai cam``: class activation map and whole-heart labels from models trained on diagnosis labels only.

    Writes ``cam.nii.gz`` (float in [0, 1], the input's geometry), ``labels.nii.gz`` (6 = heart: the weak U-Net's
    output, or the CAM pseudo-label when ``use_segmenter`` is False or no weak U-Net is installed),
    ``segmentation.seg.nrrd``, ``cam_slices.csv`` (per slice: the class its CAM explains, the class it predicts,
    class probabilities) and ``report.json``. ``explain``: see :func:`~cardiac_ai.weak.pipeline.explain_volume`
    (default: the class predicted for the whole volume, on every slice).

    ``models``: :class:`~cardiac_ai.weak.pipeline.WeakModels` already loaded (:func:`load_weak_models`; a batch
    loads them once); None loads them from ``models_dirs`` and the bundled models onto ``device``. ``augment``,
    ``pseudo_label_overrides`` and ``lv_wall_mm`` (None: its default, 11 mm) are those of
    :func:`~cardiac_ai.weak.pipeline.explain_volume`; the report's ``cam`` section records the views averaged, the
    pseudo-label settings and the LV wall band used.

    ``end_diastole`` (``--ed``): the end-diastolic frame of the same cine series (a file or DICOM folder;
    ``end_diastole_frame``, ``--ed-frame``, picks it from a 4D file, or from ``input_path`` when ``end_diastole`` is
    None): the weak U-Net's heart on it, carried onto the input frame by image registration, makes the labels (see
    :func:`~cardiac_ai.weak.pipeline.explain_volume`: better at end-systole). The report's ``cam`` section says so
    (``heart_from_end_diastole``). ``series_uid`` (``--series-uid``) picks the input's series in a DICOM folder that
    holds several.

    ``structures``: also split the heart into RV blood pool, LV myocardium and LV blood pool
    (:func:`~cardiac_ai.weak.structures.split_heart`: image intensity inside the heart, no pixel label), written as
    ``structures.nii.gz`` and ``structures.seg.nrrd``, with their volumes in the report's ``structures`` section: a
    rough, label-free estimate (held-out ACDC Dice about 0.53 / 0.64 / 0.74; :data:`WEAK_STRUCTURES_CAUTION` gives
    the volume errors), not a measurement.

    Raises
    ------
    ModelError
        No ``weak_cam_classifier`` model found (the message says how to train one).
    InputError, DataError, OutputError
        As the other commands.
    """
    from .weak.pipeline import explain_volume
    from .weak.structures import LV_WALL_MM, check_wall_mm

    wall_asked_for = lv_wall_mm is not None and check_wall_mm(lv_wall_mm) > 0
    lv_wall_mm = LV_WALL_MM if lv_wall_mm is None else check_wall_mm(lv_wall_mm)
    provenance = provenance or Provenance(command="cam")
    diastole_given = end_diastole is not None or end_diastole_frame is not None
    diastole_path = input_path if end_diastole is None else end_diastole
    if end_diastole is not None and not str(end_diastole).strip():
        raise InputError("--ed is empty: give the end-diastolic frame's file or DICOM folder.")
    if diastole_given and Path(diastole_path).resolve() == Path(input_path).resolve() and end_diastole_frame == frame:
        raise InputError("The end-diastolic frame (--ed, --ed-frame) is the input frame itself; give the end-diastolic "
                         "frame of the same series (a 4D file: --frame for the input, --ed-frame for end-diastole).")
    provenance.parameters.update({"input": str(input_path), "explain": explain or "predicted",
                                  **({"frame": frame} if frame is not None else {}),
                                  **({"series_uid": series_uid} if series_uid else {}),
                                  **({"end_diastole": str(diastole_path)} if diastole_given else {}),
                                  **({"end_diastole_frame": end_diastole_frame}
                                     if end_diastole_frame is not None else {})})
    inputs = [input_path, *([end_diastole] if end_diastole is not None else [])]
    with output_folder(out_dir, overwrite=overwrite, inputs=inputs, command="cam") as out:
        if models is None:
            models = load_weak_models(models_dirs, device=device, provenance=provenance)
        else:
            provenance.device = str(models.classifier.device)
        with provenance.timed("read"):
            volume = read_input(input_path, frame=frame, series_uid=series_uid)
            diastole = _read_end_diastole(diastole_path, end_diastole_frame) if diastole_given else None
        with provenance.timed("cam"):
            result = explain_volume(volume, models, explain=explain, method=method, augment=augment,
                                    pseudo_label_overrides=pseudo_label_overrides, use_segmenter=use_segmenter,
                                    lv_wall_mm=lv_wall_mm, end_diastole=diastole,
                                    device=str(models.classifier.device), provenance=provenance,
                                    progress=subrange(progress, 0.05, 0.9))
        split = _split_weak_heart(volume, result.labels, provenance) if structures else None
        heart_from_weak_unet = result.heart_from_weak_unet
        if split is not None and not heart_from_weak_unet:
            provenance.warn(f"--structures: {WEAK_STRUCTURES_PSEUDO_LABEL_CAUTION}.", log)
        if wall_asked_for and not heart_from_weak_unet:
            provenance.warn(f"--lv-wall-mm {lv_wall_mm:g}: not applied; the LV wall is added to the weak U-Net's "
                            "heart only, and this heart is the CAM pseudo-label's.", log)
        rows = [{"k": s["k"], "explained_class": s["explained_class"], "predicted_class": s["predicted_class"],
                 "heart_pixels": s["heart_pixels"],
                 **{f"p_{name}": round(p, 4) for name, p in s["probabilities"].items()}}
                for s in result.to_report()["slices"]]
        with provenance.timed("write"):
            write_volume(result.cam, out / "cam.nii.gz")
            write_volume(result.labels, out / "labels.nii.gz")
            write_seg_nrrd(result.labels, out / "segmentation.seg.nrrd", reference=volume)
            write_csv(out / "cam_slices.csv", rows)
            if split is not None:
                write_volume(split, out / "structures.nii.gz")
                write_seg_nrrd(split, out / "structures.seg.nrrd", reference=volume)
        write_report(out, provenance=provenance, results={
            "input": {"path": str(input_path), **volume_entry(volume)},
            "cam": result.to_report(),
            **({"structures": _weak_structures_report(split, heart_from_weak_unet=heart_from_weak_unet,
                                                          heart_from_end_diastole=result.heart_from_end_diastole,
                                                          lv_wall_mm=result.lv_wall_mm)}
               if split is not None else {}),
        })
    report(progress, 1.0, "Done")
    return result
