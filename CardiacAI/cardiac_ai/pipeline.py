"""File-level jobs shared by the command line, the Slicer modules and batch runs: input file in, output folder out.

Each job reads its input, runs a capability, and writes the public output contract (see README) atomically.
:func:`run_batch` runs a job over a cohort, resumably, so that one failing case never stops the others.
"""
from __future__ import annotations

import csv
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Sequence

from .errors import Cancelled, CardiacAIError, DataError, InputError
from .geometry import Volume
from .io import VOLUME_SUFFIXES, prepare_output_dir, read_volume, write_volume
from .io.report import REPORT_NAME, write_csv, write_report
from .io.seg_nrrd import write_seg_nrrd
from .progress import ProgressCallback, report, subrange
from .provenance import Provenance

__all__ = [
    "CineOptions",
    "read_input",
    "load_cine_models",
    "segment_cine_file",
    "cardiac_function_files",
    "BatchCase",
    "list_batch_cases",
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


def read_input(path: str | Path, *, frame: int | None = None, series_uid: str | None = None) -> Volume:
    """A 3D volume from a file or DICOM folder (``series_uid`` chooses among several series)."""
    if series_uid:
        from .io.dicom import read_dicom_series

        if frame is not None:
            raise InputError("A frame number applies to 4D files, not to DICOM series.")
        return read_dicom_series(Path(path), series_uid=series_uid)
    return read_volume(path, frame=frame)


def load_cine_models(models_dirs: Sequence[str | Path], *, mode: str, device: str, provenance: Provenance):
    """The cine models from the registry (``models_dirs`` searched first); records device and loading time."""
    from .device import resolve_device
    from .models.registry import ModelRegistry
    from .regions.pipeline import CineModels

    torch_device = resolve_device(device)
    provenance.device = str(torch_device)
    with provenance.timed("load_models"):
        return CineModels.from_registry(
            ModelRegistry(extra_paths=[Path(p) for p in models_dirs]), mode=mode, device=torch_device
        )


def _segment(path, models, options: CineOptions, provenance: Provenance, progress):
    from .regions.pipeline import segment_cine

    with provenance.timed("read"):
        volume = read_input(path, frame=options.frame, series_uid=options.series_uid)
    result = segment_cine(
        volume, models=models, mode=options.mode, base_first=options.base_first, postprocess=options.postprocess,
        device=options.device, progress=progress, provenance=provenance,
    )
    return volume, result


def segment_cine_file(
    input_path: str | Path,
    out_dir: str | Path,
    *,
    models,
    options: CineOptions = CineOptions(),
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
):
    """``cardiacai segment-cine``: writes ``labels.nii.gz``, ``segmentation.seg.nrrd`` and ``report.json``."""
    out = prepare_output_dir(out_dir, overwrite=overwrite, inputs=[input_path])
    provenance = provenance or Provenance(command="segment-cine")
    provenance.parameters["input"] = str(input_path)
    volume, result = _segment(input_path, models, options, provenance, subrange(progress, 0.0, 0.95))
    with provenance.timed("write"):
        write_volume(result.labels, out / "labels.nii.gz")
        write_seg_nrrd(result.labels, out / "segmentation.seg.nrrd")
    write_report(out, provenance=provenance, results={
        "input": {"path": str(input_path), "shape_kji": list(volume.array.shape),
                  "geometry": volume.geometry.to_dict()},
        **result.to_report(),
    })
    report(progress, 1.0, "Done")
    return result


def cardiac_function_files(
    ed_path: str | Path,
    es_path: str | Path,
    out_dir: str | Path,
    *,
    models,
    options: CineOptions = CineOptions(),
    overwrite: bool = False,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
):
    """``cardiacai function``: segments ED and ES, writes their labels and ``report.json`` / ``function.csv``."""
    from .metrics import cardiac_function

    out = prepare_output_dir(out_dir, overwrite=overwrite, inputs=[ed_path, es_path])
    provenance = provenance or Provenance(command="function")
    provenance.parameters.update({"ed": str(ed_path), "es": str(es_path)})
    results = {}
    for phase, path, (start, stop) in (("ed", ed_path, (0.0, 0.45)), ("es", es_path, (0.45, 0.9))):
        volume, result = _segment(path, models, options, provenance, subrange(progress, start, stop))
        results[phase] = (volume, result)
        with provenance.timed("write"):
            write_volume(result.labels, out / f"labels_{phase}.nii.gz")
            write_seg_nrrd(result.labels, out / f"segmentation_{phase}.seg.nrrd")
    (ed_volume, ed), (es_volume, es) = results["ed"], results["es"]
    function = cardiac_function(
        ed.labels.array, es.labels.array, ed_volume.geometry.spacing_kji_mm,
        es_spacing_kji_mm=es_volume.geometry.spacing_kji_mm,
    )
    for message in function.warnings:
        provenance.warn(message, log)
    write_csv(out / "function.csv", [{k: v for k, v in function.to_dict().items() if k != "warnings"}])
    write_report(out, provenance=provenance, results={
        "function": function.to_dict(), "ed": ed.to_report(), "es": es.to_report(),
    })
    report(progress, 1.0, "Done")
    return function


# -- batch -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchCase:
    case_id: str
    inputs: tuple[Path, ...]  # one file (segment-cine) or ED and ES (function)


def _is_volume_input(path: Path) -> bool:
    return path.is_dir() or any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


def _case_id(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def list_batch_cases(source: str | Path, *, task: Literal["segment-cine", "function"]) -> list[BatchCase]:
    """Cases from a folder (one volume file or DICOM folder per case; segment-cine only) or a CSV list.

    The CSV has a ``case_id`` column and ``input`` (segment-cine) or ``ed`` and ``es`` (function); relative paths
    are read from the CSV's folder.
    """
    source = Path(source)
    if not source.exists():
        raise DataError(f"Batch input {source} does not exist.")
    if source.is_dir():
        if task != "segment-cine":
            raise InputError("A batch of 'function' needs a CSV with case_id, ed and es columns.")
        cases = [BatchCase(_case_id(p), (p,)) for p in sorted(source.iterdir()) if _is_volume_input(p)]
    else:
        columns = ("input",) if task == "segment-cine" else ("ed", "es")
        with open(source, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("case_id", *columns) if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{source} lacks the column(s) {missing}; found {reader.fieldnames}.")
            cases = [
                BatchCase(row["case_id"].strip(), tuple(source.parent / row[c].strip() for c in columns))
                for row in reader
            ]
    if not cases:
        raise DataError(f"No case found in {source}.")
    duplicates = sorted({c.case_id for c in cases if [d.case_id for d in cases].count(c.case_id) > 1})
    if duplicates:
        raise DataError(f"Case ids must be unique in a batch; repeated: {duplicates}.")
    return cases


def run_batch(
    cases: Sequence[BatchCase],
    out_dir: str | Path,
    *,
    task: Literal["segment-cine", "function"],
    models,
    options: CineOptions = CineOptions(),
    resume: bool = True,
    progress: ProgressCallback | None = None,
    job: Callable | None = None,
) -> list[dict]:
    """Run ``task`` for every case into ``out_dir/<case_id>/`` and write ``out_dir/summary.csv``.

    A case whose folder already holds a ``report.json`` is skipped when ``resume`` (a finished earlier run); a case
    that fails is recorded with its error and the batch goes on. Returns the summary rows.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for number, case in enumerate(cases):
        case_dir = out / case.case_id
        row: dict = {"case_id": case.case_id, "inputs": ";".join(str(p) for p in case.inputs)}
        report(progress, number / len(cases), f"{case.case_id} ({number + 1}/{len(cases)})")
        if resume and (case_dir / REPORT_NAME).exists():
            rows.append({**row, "status": "skipped (done earlier)"})
            continue
        start = time.perf_counter()
        try:
            step = subrange(progress, number / len(cases), (number + 1) / len(cases))
            if job is not None:
                result = job(case, case_dir)
            elif task == "segment-cine":
                result = segment_cine_file(case.inputs[0], case_dir, models=models, options=options,
                                           overwrite=True, progress=step)
            else:
                result = cardiac_function_files(*case.inputs, case_dir, models=models, options=options,
                                                overwrite=True, progress=step)
            row.update({"status": "ok", **_summary_values(result)})
        except Cancelled:
            raise
        except (CardiacAIError, OSError, ValueError, RuntimeError) as error:
            log.error("Case %s failed: %s", case.case_id, error)
            log.debug("%s", traceback.format_exc())
            row.update({"status": "failed", "error": f"{type(error).__name__}: {error}"})
        row["seconds"] = round(time.perf_counter() - start, 3)
        rows.append(row)
        write_csv(out / "summary.csv", rows)  # after every case, so an interrupted batch still has its summary
    report(progress, 1.0, f"{sum(r['status'] == 'ok' for r in rows)} of {len(rows)} cases done")
    write_csv(out / "summary.csv", rows)
    return rows


def _summary_values(result) -> dict:
    if hasattr(result, "volumes_ml"):
        return {**{f"{k}_ml": round(v, 3) for k, v in result.volumes_ml.items()}, "lv_mass_g": round(result.lv_mass_g, 3),
                "warnings": " | ".join(result.provenance.warnings)}
    if hasattr(result, "to_dict"):
        return {k: v for k, v in result.to_dict().items() if k != "warnings"}
    return {}
