"""Turn what ``cardiacai`` writes into table rows, warnings and curves, and build the command lines the Slicer
modules run.

The Slicer module runs the backend in a child process and reads its report back; everything it shows (the volume,
slice, function, mapping, ECV, fibrosis, CAM and QC tables, the contour curves, the warnings) comes from the pure
functions here, and every command line it starts is built here, so all of it is tested without Slicer.
This module runs inside Slicer's own process: it imports only the standard library and the light core modules
(``errors``, ``labels``), never the I/O package, SimpleITK or PyTorch.

Rows are dicts whose keys are the column titles, in column order; the unit is in the title or in a "Unit" column.
A value the backend could not compute (NaN, written as ``null`` in strict JSON) is None.

Examples
--------
>>> report = read_report("out")                          # the folder cardiacai segment-cine --out wrote
>>> tables = cine_tables_from_report(report)
>>> tables["volumes"][0]
{'Structure': 'Right ventricle blood pool', 'Measurement': 'Volume', 'Value': 151.2, 'Unit': 'ml'}
>>> for name, kind, values in table_columns(tables["slices"]): ...
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .errors import DataError, InputError
from .labels import (
    HEART,
    LABEL_CODE_NAMES,
    LABELS,
    LV_BLOOD_POOL,
    LV_MYOCARDIUM,
    RV_BLOOD_POOL,
    code_for_segment_name,
)

__all__ = [
    "segment_paint_order",
    "CINE_TABLES",
    "FUNCTION_MEASUREMENTS",
    "read_report",
    "cine_tables_from_report",
    "function_rows_from_report",
    "report_warnings",
    "table_columns",
    "models_from_info_output",
    "training_log_series",
    # backend command lines
    "BackendCall",
    "MAP_KINDS",
    "FIBROSIS_MODELS",
    "CAM_METHODS",
    "CAM_AUGMENTATIONS",
    "CAM_LV_WALL_MM",
    "QC_DEFAULT_THRESHOLD",
    "QC_PREDICTORS",
    "parse_times_ms",
    "times_from_sequence_index",
    "map_call",
    "fit_map_call",
    "ecv_call",
    "fibrosis_call",
    "cam_call",
    "qc_call",
    "partial_structures",
    "qc_options",
    # quality control
    "qc_entries",
    "qc_slice_rows",
    "qc_warnings",
    "segment_label_codes",
    # mapping, ECV, fibrosis, CAM
    "map_tables_from_stats",
    "contour_curves",
    "fit_map_rows",
    "fit_map_outputs",
    "ecv_tables_from_report",
    "fibrosis_tables_from_report",
    "cam_tables_from_report",
    # training
    "TrainingTask",
    "TRAINING_TASKS",
    "EARLIER_RUN_CHOICES",
    "training_command",
    "latest_training_log",
]

#: Keys of :func:`cine_tables_from_report`'s result: structure volumes and LV mass; one row per slice.
CINE_TABLES = ("volumes", "slices")

#: (report key, structure, measurement, unit) of each row of :func:`function_rows_from_report`, in row order.
FUNCTION_MEASUREMENTS = (
    ("lv_edv_ml", "Left ventricle", "End-diastolic volume", "ml"),
    ("lv_esv_ml", "Left ventricle", "End-systolic volume", "ml"),
    ("lv_sv_ml", "Left ventricle", "Stroke volume", "ml"),
    ("lv_ef_percent", "Left ventricle", "Ejection fraction", "%"),
    ("lv_mass_g", "Left ventricle", "Myocardial mass (ED)", "g"),
    ("rv_edv_ml", "Right ventricle", "End-diastolic volume", "ml"),
    ("rv_esv_ml", "Right ventricle", "End-systolic volume", "ml"),
    ("rv_sv_ml", "Right ventricle", "Stroke volume", "ml"),
    ("rv_ef_percent", "Right ventricle", "Ejection fraction", "%"),
)

_CODE_BY_NAME = {tissue.name: code for code, tissue in LABELS.items()}
_RERUN = "Was it written by {command} of this version of cardiac_ai? Run the command again."


def read_report(folder: str | os.PathLike) -> dict[str, Any]:
    """Read ``folder/report.json``, the report every ``cardiacai`` command writes into its output folder.

    Raises
    ------
    DataError
        If the file is missing (the command failed before writing it), is not valid JSON, or is not an object.
    """
    from .io.report import read_json

    path = Path(folder) / "report.json"
    if not path.is_file():
        raise DataError(f"The backend wrote no report: {path} is missing; see the log for its output.")
    report = read_json(path)
    if not isinstance(report, dict):
        raise DataError(f"{path} holds a JSON {type(report).__name__}, expected an object.")
    return report


def _require(report: Any, keys: Sequence[str], where: str, command: str) -> None:
    if not isinstance(report, Mapping):
        raise DataError(f"{where} must be a JSON object (dict), got {type(report).__name__}.")
    missing = [key for key in keys if key not in report]
    if missing:
        raise DataError(
            f"{where} lacks {', '.join(repr(k) for k in missing)} "
            f"(found keys: {', '.join(map(repr, report)) or 'none'}). " + _RERUN.format(command=command)
        )


def _number(value: Any, what: str) -> float | None:
    """A finite float, or None for a value the backend could not compute (null in the report)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(f"{what} should be a number or null, got {value!r}.")
    value = float(value)
    return value if math.isfinite(value) else None


def _structure_order(names: Sequence[str], where: str) -> list[str]:
    unknown = [name for name in names if name not in _CODE_BY_NAME]
    if unknown:
        raise DataError(
            f"{where} names {unknown}, which are not CardiacAI structures (known: {', '.join(_CODE_BY_NAME)})."
        )
    return sorted(names, key=_CODE_BY_NAME.__getitem__)


def cine_tables_from_report(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The rows of the two cine tables: structure volumes with LV mass, and one row per slice.

    Parameters
    ----------
    report : dict
        ``report.json`` of ``cardiacai segment-cine`` (see :func:`read_report`). Needs ``volumes_ml``
        (structure name -> ml), ``lv_mass_g`` and ``slices`` (rows with ``slice``, ``region``, optionally
        ``region_probability``, and ``<structure>_pixels`` for each structure of ``volumes_ml``).

    Returns
    -------
    dict with keys :data:`CINE_TABLES`
        ``"volumes"``: rows {"Structure", "Measurement", "Value", "Unit"}: the volume in ml of each structure in
        label-code order (RV blood pool, LV myocardium, LV blood pool), then the LV myocardial mass in g.
        ``"slices"``: rows {"Slice", "Region", "Region probability", "<structure display name> (pixels)"...}
        sorted by slice index (0-based k, the volume's third axis); the region probability is None where the
        report has none (baseline mode, or no heart found).

    Raises
    ------
    DataError
        If a key is missing or a value has the wrong type; the message names the key.
    """
    _require(report, ("volumes_ml", "lv_mass_g", "slices"), "The cine report", "`cardiacai segment-cine`")
    volumes = report["volumes_ml"]
    if not isinstance(volumes, Mapping) or not volumes:
        raise DataError(f"The cine report's 'volumes_ml' should map structure names to ml, got {volumes!r}.")
    structures = _structure_order(list(volumes), "The cine report's 'volumes_ml'")
    volume_rows = [
        {
            "Structure": LABELS[_CODE_BY_NAME[name]].display_name,
            "Measurement": "Volume",
            "Value": _number(volumes[name], f"volumes_ml[{name!r}]"),
            "Unit": "ml",
        }
        for name in structures
    ]
    volume_rows.append({
        "Structure": LABELS[LV_MYOCARDIUM].display_name,
        "Measurement": "Mass",
        "Value": _number(report["lv_mass_g"], "lv_mass_g"),
        "Unit": "g",
    })

    slices = report["slices"]
    if not isinstance(slices, list):
        raise DataError(f"The cine report's 'slices' should be a list of rows, got {type(slices).__name__}.")
    pixel_keys = [f"{name}_pixels" for name in structures]
    slice_rows = []
    for index, row in enumerate(slices):
        where = f"Row {index} of the cine report's 'slices'"
        _require(row, ("slice", "region", *pixel_keys), where, "`cardiacai segment-cine`")
        if isinstance(row["slice"], bool) or not isinstance(row["slice"], int):
            raise DataError(f"Row {index} of 'slices' has slice {row['slice']!r}; expected a 0-based integer index.")
        table_row = {
            "Slice": row["slice"],
            "Region": str(row["region"]),
            "Region probability": _number(row.get("region_probability"), f"slices[{index}].region_probability"),
        }
        for name, key in zip(structures, pixel_keys):
            count = row[key]
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise DataError(f"Row {index} of 'slices' has {key} {count!r}; expected a pixel count (integer >= 0).")
            table_row[f"{LABELS[_CODE_BY_NAME[name]].display_name} (pixels)"] = count
        slice_rows.append(table_row)
    slice_rows.sort(key=lambda r: r["Slice"])
    return {"volumes": volume_rows, "slices": slice_rows}


def function_rows_from_report(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The rows of the function table from the ``report.json`` of ``cardiacai function``.

    Parameters
    ----------
    report : dict
        Needs ``function`` with every key of :data:`FUNCTION_MEASUREMENTS`.

    Returns
    -------
    list of dict
        Rows {"Structure", "Measurement", "Value", "Unit"} in the order of :data:`FUNCTION_MEASUREMENTS`: left
        ventricle EDV, ESV, SV (ml), EF (%), mass (g), then the right ventricle's EDV, ESV, SV, EF. An ejection
        fraction the backend could not compute (no blood pool at ED) is None.

    Raises
    ------
    DataError
        If ``function`` or one of its measurements is missing, or a value is not a number or null.
    """
    _require(report, ("function",), "The function report", "`cardiacai function`")
    function = report["function"]
    keys = [key for key, *_ in FUNCTION_MEASUREMENTS]
    _require(function, keys, "The function report's 'function'", "`cardiacai function`")
    return [
        {"Structure": structure, "Measurement": measurement, "Value": _number(function[key], key), "Unit": unit}
        for key, structure, measurement, unit in FUNCTION_MEASUREMENTS
    ]


def _no_heart(report: Mapping[str, Any], where: str) -> str | None:
    if report.get("heart_found") is False:
        return (
            f"No heart was found in {where}: the segmentation is empty and every volume is 0. Check that the image "
            "is a short-axis cine stack covering both ventricles."
        )
    return None


def report_warnings(report: Mapping[str, Any]) -> list[str]:
    """What the user must be told about a result: the backend's warnings, and a missing heart.

    Parameters
    ----------
    report : dict
        ``report.json`` of ``segment-cine`` or ``function``. Needs ``provenance.warnings`` (every command writes
        it). ``heart_found`` (cine) and ``ed``/``es`` with ``heart_found`` and ``function.warnings`` (function) are
        used when present.

    Returns
    -------
    list of str
        Each message once, in this order: no heart found (in the image, or in the ED/ES volume), then the
        provenance warnings, then function warnings not already among them. Empty when all is well.

    Raises
    ------
    DataError
        If ``provenance`` or its ``warnings`` list is missing.
    """
    _require(report, ("provenance",), "The report", "a `cardiacai` command")
    provenance = report["provenance"]
    _require(provenance, ("warnings",), "The report's 'provenance'", "a `cardiacai` command")
    if not isinstance(provenance["warnings"], list):
        raise DataError(f"provenance.warnings should be a list of messages, got {provenance['warnings']!r}.")
    messages = [_no_heart(report, "the image")]
    for phase, name in (("ed", "the end-diastolic (ED) volume"), ("es", "the end-systolic (ES) volume")):
        if isinstance(report.get(phase), Mapping):
            messages.append(_no_heart(report[phase], name))
    messages += [str(m) for m in provenance["warnings"]]
    function = report.get("function")
    if isinstance(function, Mapping):
        messages += [str(m) for m in function.get("warnings", [])]
    unique = []
    for message in messages:
        if message and message not in unique:
            unique.append(message)
    return unique


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[Any]]]:
    """Columns of a table given as rows, ready for typed arrays (e.g. a Slicer table node).

    Parameters
    ----------
    rows : sequence of dict
        Every row has the same keys, in the same order; the first row's order is the column order.

    Returns
    -------
    list of (name, kind, values)
        ``kind`` is "int" when every value is an integer, "float" when every value is a number or None (None
        becomes NaN), otherwise "str" (None becomes ""). An empty ``rows`` gives no columns.

    Raises
    ------
    InputError
        If the rows do not all have the same keys.
    """
    if not rows:
        return []
    names = list(rows[0])
    for index, row in enumerate(rows):
        if list(row) != names:
            raise InputError(
                f"Row {index} has the columns {list(row)}; row 0 has {names}. Give every row the same keys."
            )
    columns = []
    for name in names:
        values = [row[name] for row in rows]
        numbers = [v for v in values if v is not None]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            columns.append((name, "int", values))
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            columns.append((name, "float", [math.nan if v is None else float(v) for v in values]))
        else:
            columns.append((name, "str", ["" if v is None else str(v) for v in values]))
    return columns


def models_from_info_output(lines: Sequence[str]) -> list[str]:
    """The registered models ("name version") listed by ``cardiacai info --json``, from its output lines.

    The JSON object is found between the first line that starts with "{" and the last line that is "}", so log
    lines before or after it are ignored.

    Raises
    ------
    DataError
        If the lines hold no JSON object with a "models" list.
    """
    starts = [i for i, line in enumerate(lines) if line.startswith("{")]
    ends = [i for i, line in enumerate(lines) if line.strip() == "}"]
    if not starts or not ends or ends[-1] < starts[0]:
        raise DataError(f"`cardiacai info --json` printed no JSON object; its output was: {list(lines)[:5]}")
    try:
        info = json.loads("\n".join(lines[starts[0]:ends[-1] + 1]))
    except json.JSONDecodeError as e:
        raise DataError(f"`cardiacai info --json` printed invalid JSON ({e.msg}, line {e.lineno}).") from e
    models = info.get("models") if isinstance(info, dict) else None
    if not isinstance(models, list):
        found = list(info) if isinstance(info, dict) else type(info).__name__
        raise DataError(f"`cardiacai info --json` gave no 'models' list (found: {found}).")
    return [str(m) for m in models]


def training_log_series(csv_text: str) -> dict[str, list[float]]:
    """The columns of a training ``log.csv`` as lists of numbers, for a live loss plot.

    ``cardiacai train --out RUN`` rewrites ``RUN/checkpoints/log.csv`` after every epoch (atomically, so a reader
    never sees half a file): a header ``epoch, train_loss, <validation metrics...>, lr, seconds`` and one row per
    finished epoch.

    Parameters
    ----------
    csv_text : str
        The file's text. Empty or blank text (no epoch finished yet) gives ``{}``.

    Returns
    -------
    dict of str to list of float
        Column name -> one value per row, in file order; the dict keeps the column order of the header. An empty
        cell (a metric that was not computed in that epoch) is NaN.

    Raises
    ------
    DataError
        If the header has no ``epoch`` column or a repeated or empty name, a row has more or fewer cells than the
        header, or a cell is not a number; the message names the line and column.

    Examples
    --------
    >>> series = training_log_series(Path("run/checkpoints/log.csv").read_text(encoding="utf-8"))
    >>> series["epoch"], series["train_loss"], series["val_dice"]
    ([0.0, 1.0], [0.9, 0.7], [0.41, nan])
    """
    if not isinstance(csv_text, str):
        raise InputError(f"training_log_series takes the text of log.csv (str), got {type(csv_text).__name__}.")
    rows = [(number, row) for number, row in enumerate(csv.reader(io.StringIO(csv_text)), start=1) if row]
    if not rows:
        return {}
    _, header = rows[0]
    names = [name.strip() for name in header]
    if "epoch" not in names or "" in names or len(set(names)) != len(names):
        raise DataError(
            f"The training log's header {names} needs an 'epoch' column and unique, non-empty column names. Is it "
            "the log.csv that `cardiacai train` writes into <run>/checkpoints?"
        )
    series: dict[str, list[float]] = {name: [] for name in names}
    for number, row in rows[1:]:
        if len(row) != len(names):
            raise DataError(
                f"Line {number} of the training log has {len(row)} cells, the header has {len(names)} ({names})."
            )
        for name, cell in zip(names, row):
            cell = cell.strip()
            try:
                series[name].append(float(cell) if cell else math.nan)
            except ValueError:
                raise DataError(
                    f"Line {number} of the training log has {cell!r} in column {name!r}; expected a number."
                ) from None
    return series



# -- backend command lines ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendCall:
    """One ``cardiacai`` command, ready for :func:`cardiac_ai.subprocess_runner.build_command`.

    Attributes
    ----------
    command : str
        The ``cardiacai`` command, e.g. ``"map"``.
    positional : tuple of str
        Its positional arguments (input files), in order.
    options : dict
        Option name -> value, as ``build_command`` takes them (``{"out": path, "kind": "t1"}``).
    """

    command: str
    positional: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


#: Panel choice -> (``cardiacai map --kind``, ``cardiacai fit-map --kind``).
MAP_KINDS: dict[str, tuple[str, str]] = {"T1": ("t1", "molli"), "T2": ("t2", "t2prep")}
#: ``cardiacai fibrosis --model``: scar model trained on slice labels, on patient labels, or on pixel labels.
FIBROSIS_MODELS = ("weak", "weak_stack", "pixel")
#: ``cardiacai cam --method``; None uses the method the model card names (chosen on validation patients).
CAM_METHODS = ("model", "gradcam", "gradcampp")
#: ``cardiacai cam --cam-augment``: views whose CAMs, mapped back to the slice, are averaged with the slice's own
#: (left-right flip, up-down flip, circular shift; cardiac_ai.weak.cam.AUGMENTATIONS).
CAM_AUGMENTATIONS = ("hflip", "vflip", "shift")
#: ``cardiacai cam --lv-wall-mm`` default: the band (mm) around the LV blood pool added to the weak U-Net's heart
#: (cardiac_ai.weak.structures.LV_WALL_MM).
CAM_LV_WALL_MM = 11.0
#: Default QC flag threshold (predicted Dice), the default of ``cardiacai qc --threshold`` and ``--qc-threshold``.
QC_DEFAULT_THRESHOLD = 0.80
#: Where QC's predicted Dice comes from (``cardiacai qc --predictor``, ``--qc-predictor``; cardiac_ai.qc.QC_PREDICTORS):
#: the CNN regressor when installed ("auto"), the VAE's latent search, or the regressor.
QC_PREDICTORS = ("auto", "search", "regressor", "combined")

_DEVICE_PREFIXES = ("auto", "cpu", "cuda")


def _common_options(out_dir: Any, device: str, models_dir: Any) -> dict[str, Any]:
    if not out_dir or not str(out_dir).strip():
        raise InputError("The backend needs an output folder (--out); got an empty path.")
    if not isinstance(device, str) or not (device in _DEVICE_PREFIXES or
                                           (device.startswith("cuda:") and device[5:].isdigit())):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}.")
    return {"out": os.fspath(out_dir), "device": device,
            "models_dir": None if models_dir is None else os.fspath(models_dir)}


def _path(value: Any, what: str) -> str:
    if value is None or not str(value).strip():
        raise InputError(f"{what} is missing: give the path of the file the Slicer node was written to.")
    return os.fspath(value)


def _map_kind(kind: str, index: int) -> str:
    key = str(kind).upper()
    if key not in MAP_KINDS:
        raise InputError(f"Unknown map kind {kind!r}; choose one of {', '.join(MAP_KINDS)}.")
    return MAP_KINDS[key][index]


def _predictor(value: Any) -> str:
    if value not in QC_PREDICTORS:
        raise InputError(f"Unknown QC predictor {value!r}; choose one of {', '.join(QC_PREDICTORS)}.")
    return str(value)


def qc_options(qc: bool = True, qc_threshold: float = QC_DEFAULT_THRESHOLD, qc_predictor: str = "auto") -> dict:
    """The QC options of a segmenting command (``--no-qc``, ``--qc-threshold``, ``--qc-predictor``), checked.

    Raises
    ------
    InputError
        A threshold outside [0, 1] or an unknown predictor.
    """
    return {"no_qc": not qc, "qc_threshold": _threshold(qc_threshold, "qc_threshold"),
            "qc_predictor": _predictor(qc_predictor)}


def _threshold(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise InputError(f"{what} must be a predicted Dice between 0 and 1, got {value!r}.")
    return float(value)


def parse_times_ms(text: str | None) -> list[float] | None:
    """Inversion or T2-preparation times typed in the panel: ``"100, 180, 260"`` -> ``[100.0, 180.0, 260.0]``.

    Commas, semicolons and spaces separate the numbers. Empty text gives None (times then come from elsewhere).

    Raises
    ------
    InputError
        If an item is not a number, or a time is negative or not finite; the message names the item.
    """
    if text is None or not str(text).strip():
        return None
    items = [item for item in str(text).replace(";", ",").replace(" ", ",").split(",") if item.strip()]
    times = []
    for item in items:
        try:
            value = float(item)
        except ValueError:
            raise InputError(
                f"{item.strip()!r} in the times {text!r} is not a number; type times in ms separated by commas, "
                "e.g. 100, 180, 260."
            ) from None
        if not math.isfinite(value) or value < 0:
            raise InputError(f"Time {item.strip()} ms in {text!r} must be a finite number >= 0.")
        times.append(value)
    return times


def times_from_sequence_index(index_name: str, index_unit: str, values: Sequence[str], *,
                              kind: str) -> list[float] | None:
    """The times of a mapping series stored as a Slicer sequence whose index holds them.

    A sequence built from a MOLLI series with the index "InversionTime" (or a T2-prepared one with "EchoTime" or a
    name containing "prep") holds each frame's time as its index value. Only such an index is trusted: a time or
    frame-number index says nothing about the inversion times.

    Parameters
    ----------
    index_name, index_unit : str
        ``vtkMRMLSequenceNode.GetIndexName()`` and ``GetIndexUnit()``; the unit "s" multiplies by 1000, "ms" or ""
        keeps the values.
    values : sequence of str
        ``GetNthIndexValue(i)`` of every frame, in frame order.
    kind : "T1" or "T2"

    Returns
    -------
    list of float or None
        Times in ms, or None when the index does not hold inversion (T1) or preparation/echo (T2) times or a value
        is not a number.
    """
    fit_kind = _map_kind(kind, 1)
    name = str(index_name or "").lower().replace(" ", "").replace("_", "")
    wanted = ("inversion",) if fit_kind == "molli" else ("echo", "prep")
    if not any(word in name for word in wanted):
        return None
    unit = str(index_unit or "").strip().lower()
    scale = {"": 1.0, "ms": 1.0, "s": 1000.0, "sec": 1000.0}.get(unit)
    if scale is None:
        return None
    try:
        return [float(value) * scale for value in values]
    except (TypeError, ValueError):
        return None


def map_call(map_path: Any, out_dir: Any, *, kind: str, device: str = "auto", models_dir: Any = None,
             qc: bool = True, qc_threshold: float = QC_DEFAULT_THRESHOLD, qc_predictor: str = "auto") -> BackendCall:
    """``cardiacai map MAP --kind t1|t2 --out DIR``: contours, AHA segments and statistics of a T1 or T2 map.

    ``kind`` is "T1" or "T2" (any case). Without ``qc`` the map's segmentation is not quality-checked (``--no-qc``).

    Raises
    ------
    InputError
        Unknown kind, device or QC predictor, an empty path, a threshold outside [0, 1].
    """
    options = {**_common_options(out_dir, device, models_dir), "kind": _map_kind(kind, 0)}
    options.update(qc_options(qc, qc_threshold, qc_predictor))
    return BackendCall("map", (_path(map_path, "The map file"),), options)


def fit_map_call(series_path: Any, out_dir: Any, *, kind: str, times_ms: Sequence[float], device: str = "auto",
                 models_dir: Any = None, signed: bool = False) -> BackendCall:
    """``cardiacai fit-map SERIES --kind molli|t2prep --times ... --out DIR``: a T1 (MOLLI) or T2 map from the raw
    series (a 4D file, frames along the 4th axis).

    ``kind`` "T1" fits MOLLI (Look-Locker corrected), "T2" a T2-prepared series. The times are required: a file
    written from a Slicer node keeps no DICOM header to read them from. ``signed``: phase-sensitive (PSIR) MOLLI
    frames (``--signed``; T1 only).

    Raises
    ------
    InputError
        Unknown kind, fewer than 2 times or a time that is not a finite number >= 0.
    """
    if times_ms is None or len(times_ms) < 2:
        raise InputError(
            f"Fitting a {str(kind).upper()} map needs the {'inversion' if _map_kind(kind, 1) == 'molli' else 'T2-preparation'}"
            f" time of every frame in ms (got {times_ms!r}); type them in the T1/T2 mapping section, in frame order."
        )
    times = []
    for value in times_ms:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise InputError(f"Times must be finite numbers of ms >= 0, got {value!r} in {list(times_ms)}.")
        times.append(float(value))
    options = {**_common_options(out_dir, device, models_dir), "kind": _map_kind(kind, 1), "times": times}
    if signed:
        if options["kind"] != "molli":
            raise InputError("Phase-sensitive (signed) frames apply to T1 (MOLLI) series, not to T2-prepared ones.")
        options["signed"] = True
    return BackendCall("fit-map", (_path(series_path, "The series file"),), options)


def ecv_call(native_path: Any, post_path: Any, out_dir: Any, *, haematocrit: float | None = None,
             device: str = "auto", models_dir: Any = None) -> BackendCall:
    """``cardiacai ecv NATIVE POST --out DIR [--haematocrit H]``: extracellular volume from two T1 maps.

    ``haematocrit`` is a fraction (0.42); None or 0 uses the synthetic haematocrit from native blood T1.

    Raises
    ------
    InputError
        A haematocrit that is not a fraction in (0, 1) (a percentage is named as such).
    """
    options = _common_options(out_dir, device, models_dir)
    if haematocrit not in (None, 0, 0.0):
        if isinstance(haematocrit, bool) or not isinstance(haematocrit, (int, float)) or not 0 < haematocrit < 1:
            hint = (f" It looks like a percentage: use {haematocrit / 100:.2f}."
                    if isinstance(haematocrit, (int, float)) and 1 < haematocrit <= 100 else "")
            raise InputError(f"haematocrit must be a fraction between 0 and 1, got {haematocrit!r}.{hint}")
        options["haematocrit"] = float(haematocrit)
    return BackendCall("ecv", (_path(native_path, "The native T1 map"), _path(post_path, "The post-contrast T1 map")),
                       options)


def fibrosis_call(lge_path: Any, out_dir: Any, *, model: str = "weak", device: str = "auto",
                  models_dir: Any = None, qc: bool = True, qc_threshold: float = QC_DEFAULT_THRESHOLD,
                  qc_predictor: str = "auto", pixel_size_unknown: bool = False,
                  slice_order: str | None = None) -> BackendCall:
    """``cardiacai fibrosis LGE --out DIR --model weak|weak_stack|pixel``: myocardium, scar and MVO of an LGE stack.

    ``pixel_size_unknown`` (``--pixel-size-unknown``) ignores the file's spacing: Slicer gives PNG slices 1 mm
    pixels, which are not the image's; the numbers are then in pixels. ``slice_order`` ("base-first" or
    "apex-first", ``--slice-order``) gives AHA levels by thirds, so that transmurality is tabled per AHA segment.

    Without ``qc`` the myocardium and blood pool are not quality-checked (``--no-qc``; the check is indicative on
    LGE, see ``cardiac_ai.pipeline.FIBROSIS_QC_NOTE``).

    Raises
    ------
    InputError
        Unknown model or QC predictor, a threshold outside [0, 1].
    """
    if model not in FIBROSIS_MODELS:
        raise InputError(f"Unknown fibrosis model {model!r}; choose one of {', '.join(FIBROSIS_MODELS)}.")
    if slice_order not in (None, "", "base-first", "apex-first"):
        raise InputError(f"Unknown slice order {slice_order!r}; choose base-first or apex-first (or none: unknown).")
    return BackendCall("fibrosis", (_path(lge_path, "The LGE file"),),
                       {**_common_options(out_dir, device, models_dir), "model": model,
                        "pixel_size_unknown": bool(pixel_size_unknown), "slice_order": slice_order or None,
                        **qc_options(qc, qc_threshold, qc_predictor)})


def cam_call(image_path: Any, out_dir: Any, *, explain: str | None = None, method: str | None = None,
             pseudo_label: bool = False, device: str = "auto", models_dir: Any = None,
             augment: Sequence[str] | str | None = None, crf_iterations: int | None = None,
             crf_smoothness: Sequence[float] | None = None, crf_appearance: Sequence[float] | None = None,
             otsu_classes: int | None = None, scale_range: Sequence[float] | None = None,
             min_fraction: float | None = None, structures: bool = False,
             lv_wall_mm: float | None = None, end_diastole_path: Any = None) -> BackendCall:
    """``cardiacai cam IMAGE --out DIR [--explain CLASS] [--method M] [--pseudo-label] [--cam-augment VIEW ...]
    [pseudo-label settings] [--structures] [--lv-wall-mm MM] [--ed ED_IMAGE]``.

    ``explain`` None, "" or "predicted" explains the volume's predicted class on every slice ("slice": each slice's
    own; a class name such as "DCM": that class on every slice); ``method`` None, "" or "default" uses the model
    card's method. ``augment`` (``--cam-augment``): views of :data:`CAM_AUGMENTATIONS` whose CAMs are averaged with
    the slice's; None or empty: the plain slice only.

    The pseudo-label settings replace the classifier's model card's and need ``pseudo_label`` (the labels are then
    made from the CAM); None leaves the model card's. Pixels are those of the classifier's crop:
    ``crf_iterations`` (``--crf-iterations``, >= 1), ``crf_smoothness`` (weight >= 0, width in pixels > 0;
    ``--crf-smoothness``), ``crf_appearance`` (weight >= 0, width in pixels > 0, width in grey levels > 0;
    ``--crf-appearance``), ``otsu_classes`` (0: no multi-Otsu step, or >= 2; ``--otsu-classes``), ``scale_range``
    (low, high with 0 <= low < high <= 1; ``--scale-range``), ``min_fraction`` (0 <= F < 1; ``--min-fraction``).

    ``structures`` (``--structures``): also the label-free split of the heart into RV blood pool, LV myocardium and
    LV blood pool (``structures.seg.nrrd``; its volumes join :func:`cam_tables_from_report`'s summary).

    ``lv_wall_mm`` (``--lv-wall-mm``): the band around the LV blood pool added to the weak U-Net's heart; None: the
    backend's default (:data:`CAM_LV_WALL_MM`); 0: none.

    ``end_diastole_path`` (``--ed``): the end-diastolic frame of the same cine series, when IMAGE is another frame:
    the weak U-Net's heart on it, carried onto IMAGE by image registration, makes the labels (better at
    end-systole); None: IMAGE's own heart.

    Raises
    ------
    InputError
        Unknown method or view, a class name with spaces or a leading "-", a pseudo-label setting out of its range
        or given without ``pseudo_label``, an ``lv_wall_mm`` that is not a number from 0 to 30 mm, an empty
        ``end_diastole_path``.
    """
    options = _common_options(out_dir, device, models_dir)
    if end_diastole_path is not None:
        options["ed"] = _path(end_diastole_path, "The end-diastolic frame")
    if explain not in (None, "", "predicted"):
        if not isinstance(explain, str) or explain.startswith("-") or not explain.strip() or " " in explain.strip():
            raise InputError(f"The class to explain must be one class name such as DCM (or 'predicted' or 'slice'), "
                             f"got {explain!r}.")
        options["explain"] = explain.strip()
    if method not in (None, "", "default"):
        if method not in CAM_METHODS:
            raise InputError(f"Unknown CAM method {method!r}; choose one of {', '.join(CAM_METHODS)} or 'default'.")
        options["method"] = method
    options["pseudo_label"] = bool(pseudo_label)
    options["structures"] = bool(structures)
    if lv_wall_mm is not None:
        from .weak.structures import check_wall_mm

        options["lv_wall_mm"] = check_wall_mm(lv_wall_mm)
    views = [augment] if isinstance(augment, str) else list(augment or ())
    unknown = [view for view in views if view not in CAM_AUGMENTATIONS]
    if unknown:
        raise InputError(f"Unknown CAM augmentation {unknown[0]!r}; choose among {', '.join(CAM_AUGMENTATIONS)}.")
    options["cam_augment"] = list(dict.fromkeys(views)) or None
    settings = {"crf_iterations": crf_iterations, "crf_smoothness": crf_smoothness, "crf_appearance": crf_appearance,
                "otsu_classes": otsu_classes, "scale_range": scale_range, "min_fraction": min_fraction}
    given = {name: value for name, value in settings.items() if value is not None}
    if given and not pseudo_label:
        raise InputError(f"{', '.join(given)} set the CAM pseudo-label; they need pseudo_label=True (heart from the "
                         "CAM pseudo-label), without which the weak U-Net makes the labels when installed.")
    from .weak.pseudo_labels import pseudo_label_overrides

    pseudo_label_overrides(**given)  # the backend's own check: InputError before any process starts
    for name, value in given.items():  # plain numbers for the command line (numpy scalars are not)
        whole = name in ("crf_iterations", "otsu_classes")
        options[name] = [float(v) for v in value] if isinstance(value, (list, tuple)) else (
            int(value) if whole else float(value))
    return BackendCall("cam", (_path(image_path, "The image file"),), options)


def partial_structures(codes: Any) -> list[int] | None:
    """The codes of a segmentation node's segments when they leave out one of RV blood pool, myocardium and LV blood
    pool (QC then judges only those: ``qc_call(structures=)``); None when all three are there (QC as usual)."""
    present = {int(code) for code in codes}
    whole = {RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL}
    return None if whole <= present else sorted(present)


def qc_call(image_path: Any, labels_path: Any, out_dir: Any, *, threshold: float = QC_DEFAULT_THRESHOLD,
            write_surrogate: bool = False, device: str = "auto", models_dir: Any = None,
            predictor: str = "auto", structures: Sequence[int] | None = None) -> BackendCall:
    """``cardiacai qc IMAGE LABELS --out DIR --threshold T --predictor P [--write-surrogate] [--label-codes ...]``:
    predicted Dice per slice.

    ``structures``: the CardiacAI codes the label map was written with (a segmentation node's segments), passed as
    ``--label-codes NAME=code`` so that QC judges only those (a node with the myocardium alone is not missing its
    blood pools); None: the label map's values as they are, all structures judged.

    Raises
    ------
    InputError
        A threshold outside [0, 1], an unknown predictor, a structure code that is not CardiacAI's.
    """
    options = {**_common_options(out_dir, device, models_dir), "threshold": _threshold(threshold, "threshold"),
               "write_surrogate": bool(write_surrogate), "predictor": _predictor(predictor)}
    if structures is not None:
        names = {code: name for name, code in LABEL_CODE_NAMES.items() if code}
        unknown = sorted({int(c) for c in structures} - set(names))
        if unknown or not structures:
            raise InputError(f"QC structures must be CardiacAI label codes {sorted(names)}, got {list(structures)}.")
        options["label_codes"] = [f"{names[code]}={code}" for code in sorted({int(c) for c in structures})]
    return BackendCall("qc", (_path(image_path, "The image file"), _path(labels_path, "The label map file")),
                       options)


# -- quality control ----------------------------------------------------------------------------------------------
_QC_PHASES = (("ed", "ED", "the end-diastolic (ED) segmentation"), ("es", "ES", "the end-systolic (ES) segmentation"))


def qc_entries(report: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The QC results of a report, by phase: ``{"": qc}`` (segment-cine, map, qc) or ``{"ED": qc, "ES": qc}``
    (function). A ``qc`` that is null (QC could not run; the reason is a provenance warning) or absent (``--no-qc``,
    or a command without QC) is left out.

    Raises
    ------
    DataError
        If a ``qc`` value is neither an object nor null.
    """
    found: dict[str, dict[str, Any]] = {}
    candidates = [("", report.get("qc") if isinstance(report, Mapping) else None, "qc")]
    for key, phase, _ in _QC_PHASES:
        part = report.get(key) if isinstance(report, Mapping) else None
        if isinstance(part, Mapping):
            candidates.append((phase, part.get("qc"), f"{key}.qc"))
    for phase, entry, where in candidates:
        if entry is None:
            continue
        if not isinstance(entry, Mapping):
            raise DataError(f"The report's {where!r} should be an object or null, got {type(entry).__name__}.")
        found[phase] = dict(entry)
    return found


def _yes_no(value: Any) -> str:
    return "yes" if value else "no"


def qc_slice_rows(qc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table row per slice from a report's ``qc`` (see :func:`qc_entries`).

    Returns
    -------
    list of dict
        Rows {"Slice", "Assessed", "Flagged" ("yes"/"no"), "Lowest predicted Dice", "<structure display name>
        predicted Dice"... (in label-code order), "Rule checks"} sorted by slice; a Dice that was not computed (slice
        not assessed, structure absent) is None.

    Raises
    ------
    DataError
        If ``structures`` or ``slices`` is missing or malformed; the message names the key.
    """
    command = "`cardiacai qc` (or a segmenting command with QC)"
    _require(qc, ("structures", "slices"), "The report's 'qc'", command)
    structures = qc["structures"]
    if not isinstance(structures, Mapping) or not structures:
        raise DataError(f"The report's qc.structures should map structure names to codes, got {structures!r}.")
    names = _structure_order(list(structures), "The report's qc.structures")
    slices = qc["slices"]
    if not isinstance(slices, list):
        raise DataError(f"The report's qc.slices should be a list of rows, got {type(slices).__name__}.")
    rows = []
    for index, entry in enumerate(slices):
        where = f"Row {index} of the report's qc.slices"
        _require(entry, ("slice", "assessed", "flagged", "min_dice", "dice"), where, command)
        if isinstance(entry["slice"], bool) or not isinstance(entry["slice"], int):
            raise DataError(f"{where} has slice {entry['slice']!r}; expected a 0-based integer index.")
        dice = entry["dice"]
        if not isinstance(dice, Mapping):
            raise DataError(f"{where} has dice {dice!r}; expected structure name -> predicted Dice.")
        row = {
            "Slice": entry["slice"],
            "Assessed": _yes_no(entry["assessed"]),
            "Flagged": _yes_no(entry["flagged"]),
            "Lowest predicted Dice": _number(entry["min_dice"], f"qc.slices[{index}].min_dice"),
        }
        for name in names:
            row[f"{LABELS[_CODE_BY_NAME[name]].display_name} predicted Dice"] = _number(
                dice.get(name), f"qc.slices[{index}].dice[{name!r}]")
        row["Rule checks"] = "; ".join(str(r) for r in entry.get("rule_reasons") or []) or "passed"
        rows.append(row)
    rows.sort(key=lambda r: r["Slice"])
    return rows


def qc_warnings(report: Mapping[str, Any]) -> list[str]:
    """A clear warning for each QC result of ``report`` that needs review (flagged slices or failed rule checks).

    Returns
    -------
    list of str
        E.g. "Quality control flagged slices 2, 5 of 10 in the segmentation (predicted Dice below 0.80; lowest
        0.61): review them before using the numbers." Maps' QC is marked indicative. Empty when nothing is flagged or
        QC did not run.
    """
    messages = []
    names = {"": "the segmentation", **{phase: where for _, phase, where in _QC_PHASES}}
    for phase, qc in qc_entries(report).items():
        flagged = [int(k) for k in qc.get("flagged_slices") or []]
        rules = qc.get("rules") if isinstance(qc.get("rules"), Mapping) else {}
        rules_failed = rules.get("passed") is False
        if not flagged and not rules_failed and not qc.get("needs_review"):
            continue
        parts = []
        if flagged:
            threshold = _number(qc.get("dice_threshold"), "qc.dice_threshold")
            lowest = _number(qc.get("min_slice_dice"), "qc.min_slice_dice")
            assessed = qc.get("n_assessed_slices")
            parts.append(
                f"Quality control flagged slice{'s' if len(flagged) > 1 else ''} {', '.join(map(str, flagged))}"
                + (f" of {assessed} assessed" if isinstance(assessed, int) else "") + f" in {names[phase]}"
                + (f" (predicted Dice below {threshold:.2f}" if threshold is not None else " (")
                + (f"; lowest {lowest:.2f})" if lowest is not None else ")")
            )
        if rules_failed:
            reasons = [str(r) for r in rules.get("volume_reasons") or []]
            parts.append(f"{'T' if not parts else 't'}he rule checks of {names[phase]} failed"
                         + (f": {'; '.join(reasons[:3])}" if reasons else ""))
        if not parts:
            parts.append(f"Quality control says {names[phase]} needs review")
        message = "; ".join(parts) + ". Review the flagged slices before using the numbers (see the QC table)."
        if qc.get("indicative"):
            message += " These QC scores are indicative only on T1/T2 maps."
        messages.append(message)
    return messages


def segment_label_codes(names: Sequence[str]) -> dict[str, int]:
    """The CardiacAI label code of each segment name, to write a segmentation node as a label map.

    A name matches a tissue's display name ("Left ventricle myocardium") or machine name ("lv_myocardium"), case
    and ``_``/space aside, or a short alias (RV, Myo, LV, Scar, MVO, Heart).

    Raises
    ------
    InputError
        If a name matches no tissue or two segments give the same code; the message lists the names accepted.
    """
    codes: dict[str, int] = {}
    for name in names:
        code = code_for_segment_name(name)
        if code is None:
            raise InputError(
                f"Segment {name!r} is not a CardiacAI structure. Name the segments "
                f"{', '.join(repr(LABELS[c].display_name) for c in sorted(LABELS))} (or RV, Myo, LV), or import the "
                "label map with the Label map import task."
            )
        if code in codes.values():
            other = next(n for n, c in codes.items() if c == code)
            raise InputError(f"Segments {other!r} and {name!r} are the same structure; keep one of them.")
        codes[str(name)] = code
    return codes


def segment_paint_order(codes: Mapping[str, int]) -> list[str]:
    """The order in which to paint the segments of :func:`segment_label_codes` into one label map, where later ones
    win where segments overlap: the whole heart first (it contains the others, which must stay themselves), then by
    code (scar over myocardium, MVO over scar)."""
    return sorted(codes, key=lambda name: (codes[name] != HEART, codes[name]))


# -- T1/T2 mapping and ECV ----------------------------------------------------------------------------------------
_STAT_COLUMNS = (("median", "Median (ms)"), ("mean", "Mean (ms)"), ("sd", "SD (ms)"), ("q1", "Q1 (ms)"),
                 ("q3", "Q3 (ms)"), ("iqr", "IQR (ms)"))


def _stat_values(stats: Any, where: str) -> dict[str, Any]:
    if stats is None:
        return {**{title: None for _, title in _STAT_COLUMNS}, "Pixels": 0}
    _require(stats, [key for key, _ in _STAT_COLUMNS] + ["n_pixels"], where, "`cardiacai map`")
    values = {title: _number(stats[key], f"{where}.{key}") for key, title in _STAT_COLUMNS}
    values["Pixels"] = int(stats["n_pixels"])
    return values


def map_tables_from_stats(stats: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The three mapping tables from the ``stats.json`` of ``cardiacai map``.

    Returns
    -------
    dict with keys "summary", "slices", "segments"
        ``summary``: {"Region", "Median (ms)", "Mean (ms)", "SD (ms)", "Q1 (ms)", "Q3 (ms)", "IQR (ms)", "Pixels"}
        for the myocardium, the LV blood pool and the septal ROI of each mid slice. ``slices``: {"Slice", "Level",
        the same statistics, "Warnings"}. ``segments``: {"AHA segment", "Name", the same statistics}, segments 1-16
        whose RV insertion points were found. A region without pixels has None statistics and 0 pixels.

    Raises
    ------
    DataError
        If a key is missing or a value has the wrong type.
    """
    _require(stats, ("myocardium", "slices", "segments", "septal_roi", "lv_blood_pool"), "stats.json",
             "`cardiacai map`")
    summary = [{"Region": "Myocardium", **_stat_values(stats["myocardium"], "stats.json myocardium")},
               {"Region": "LV blood pool", **_stat_values(stats["lv_blood_pool"], "stats.json lv_blood_pool")}]
    for index, roi in enumerate(stats["septal_roi"] or []):
        _require(roi, ("slice_index",), f"stats.json septal_roi[{index}]", "`cardiacai map`")
        summary.append({"Region": f"Septal ROI (slice {roi['slice_index']})",
                        **_stat_values(roi, f"stats.json septal_roi[{index}]")})
    slices = []
    for index, entry in enumerate(stats["slices"]):
        _require(entry, ("slice_index", "level", "myocardium"), f"stats.json slices[{index}]", "`cardiacai map`")
        slices.append({"Slice": int(entry["slice_index"]), "Level": str(entry["level"]),
                       **_stat_values(entry["myocardium"], f"stats.json slices[{index}].myocardium"),
                       "Warnings": "; ".join(str(w) for w in entry.get("warnings") or [])})
    segments = stats["segments"]
    if not isinstance(segments, Mapping):
        raise DataError(f"stats.json segments should map AHA segment numbers to statistics, got {segments!r}.")
    segment_rows = []
    for key in sorted(segments, key=int):
        entry = segments[key]
        segment_rows.append({"AHA segment": int(key), "Name": str(entry.get("name", "")),
                             **_stat_values(entry, f"stats.json segments[{key}]")})
    return {"summary": summary, "slices": sorted(slices, key=lambda r: r["Slice"]), "segments": segment_rows}


def contour_curves(contours: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Closed curves (RAS points) from the ``contours.json`` of ``cardiacai map``, for Slicer markups.

    Returns
    -------
    list of dict
        One entry per contour found, slices in order, endocardium before epicardium: {"name": "Slice 3
        endocardium", "slice": 3, "wall": "endocardium" | "epicardium", "points_ras": [[r, a, s], ...]}; RAS is
        the file's LPS with x and y negated. Slices where a contour is missing give no entry for it.

    Raises
    ------
    DataError
        If ``slices`` is missing or a point is not three numbers.
    """
    _require(contours, ("slices",), "contours.json", "`cardiacai map`")
    curves = []
    for index, entry in enumerate(contours["slices"]):
        k = entry.get("slice_index")
        k = index if k is None else int(k)
        for wall in ("endocardium", "epicardium"):
            points = (entry.get(wall) or {}).get("points_lps_mm")
            if not points:
                continue
            ras = []
            for point in points:
                if not isinstance(point, (list, tuple)) or len(point) != 3:
                    raise DataError(f"contours.json slice {k} {wall}: point {point!r} is not (x, y, z) in LPS mm.")
                x, y, z = (float(v) for v in point)
                ras.append([-x, -y, z])
            curves.append({"name": f"Slice {k} {wall}", "slice": k, "wall": wall, "points_ras": ras})
    return curves


def fit_map_outputs(report: Mapping[str, Any]) -> tuple[str, str]:
    """(map file, R^2 file) that ``cardiacai fit-map`` wrote, e.g. ("t1_map.nii.gz", "r2_map.nii.gz")."""
    _require(report, ("kind",), "The fit-map report", "`cardiacai fit-map`")
    quantity = {"molli": "t1", "t2prep": "t2"}.get(report["kind"])
    if quantity is None:
        raise DataError(f"The fit-map report has kind {report['kind']!r}; expected 'molli' or 't2prep'.")
    return f"{quantity}_map.nii.gz", "r2_map.nii.gz"


def fit_map_rows(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows {"Measurement", "Value", "Unit"} of a fit: median T1/T2 of the fitted pixels, pixels fitted, failed and
    background, and the times used (one row, comma-separated)."""
    _require(report, ("kind", "n_fitted_pixels", "n_failed_pixels", "n_background_pixels", "times_ms"),
             "The fit-map report", "`cardiacai fit-map`")
    quantity = fit_map_outputs(report)[0].split("_")[0].upper()
    times = report["times_ms"]
    flat = times if times and not isinstance(times[0], list) else (times[0] if times else [])
    return [
        {"Measurement": f"Median {quantity} of fitted pixels",
         "Value": _number(report.get(f"median_{quantity.lower()}_ms"), "median"), "Unit": "ms"},
        {"Measurement": "Pixels fitted", "Value": float(report["n_fitted_pixels"]), "Unit": "pixels"},
        {"Measurement": "Pixels failed (0 in the map)", "Value": float(report["n_failed_pixels"]), "Unit": "pixels"},
        {"Measurement": "Background pixels (not fitted)", "Value": float(report["n_background_pixels"]),
         "Unit": "pixels"},
        {"Measurement": ("Inversion" if report["kind"] == "molli" else "T2-preparation") + " times",
         "Value": ", ".join(f"{float(t):g}" for t in flat), "Unit": "ms"},
    ]


def ecv_tables_from_report(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The ECV tables from the ``report.json`` of ``cardiacai ecv``.

    Returns
    -------
    dict with keys "summary", "regions"
        ``summary``: {"Measurement", "Value", "Unit"}: myocardial ECV (%), haematocrit (and whether synthetic), the
        four median T1 values (ms). ``regions``: {"Region", "ECV (%)", "Native T1 (ms)", "Post-contrast T1 (ms)",
        "Pixels"} for each septal ROI and AHA segment (same-grid maps only).

    Raises
    ------
    DataError
        If ``ecv`` or its ``myocardium`` values are missing.
    """
    _require(report, ("ecv",), "The ECV report", "`cardiacai ecv`")
    ecv = report["ecv"]
    _require(ecv, ("myocardium",), "The ECV report's 'ecv'", "`cardiacai ecv`")
    myo = ecv["myocardium"]
    _require(myo, ("ecv_fraction", "haematocrit", "synthetic_haematocrit"), "ecv.myocardium", "`cardiacai ecv`")

    def percent(value: Any, what: str) -> float | None:
        number = _number(value, what)
        return None if number is None else 100.0 * number

    summary = [
        {"Measurement": "Myocardial ECV", "Value": percent(myo["ecv_fraction"], "ecv_fraction"), "Unit": "%"},
        {"Measurement": "Haematocrit (synthetic)" if myo["synthetic_haematocrit"] else "Haematocrit (given)",
         "Value": _number(myo["haematocrit"], "haematocrit"), "Unit": "fraction"},
    ]
    for key, title in (("native_t1_myocardium_median_ms", "Native T1, myocardium"),
                       ("post_t1_myocardium_median_ms", "Post-contrast T1, myocardium"),
                       ("native_t1_blood_median_ms", "Native T1, LV blood pool"),
                       ("post_t1_blood_median_ms", "Post-contrast T1, LV blood pool")):
        if key in myo:
            summary.append({"Measurement": title, "Value": _number(myo[key], key), "Unit": "ms"})
    regions = []

    def region(name: str, entry: Any, where: str) -> dict[str, Any]:
        _require(entry, ("ecv_fraction", "native_t1_median_ms", "post_t1_median_ms", "n_pixels"), where,
                 "`cardiacai ecv`")
        return {"Region": name, "ECV (%)": percent(entry["ecv_fraction"], f"{where}.ecv_fraction"),
                "Native T1 (ms)": _number(entry["native_t1_median_ms"], where),
                "Post-contrast T1 (ms)": _number(entry["post_t1_median_ms"], where), "Pixels": int(entry["n_pixels"])}

    for index, entry in enumerate(ecv.get("septal_roi") or []):
        regions.append(region(f"Septal ROI (slice {entry.get('slice_index', index)})", entry,
                              f"ecv.septal_roi[{index}]"))
    segments = ecv.get("segments") or {}
    for key in sorted(segments, key=int):
        regions.append(region(f"AHA segment {int(key)}", segments[key], f"ecv.segments[{key}]"))
    return {"summary": summary, "regions": regions}


# -- LGE fibrosis ---------------------------------------------------------------------------------------------------
def fibrosis_tables_from_report(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The fibrosis tables from the ``report.json`` of ``cardiacai fibrosis``.

    Returns
    -------
    dict with keys "summary", "slices", "segments"
        ``summary``: {"Measurement", "Value", "Unit"}: scar, MVO and myocardial volume (mL, or voxels when the
        pixel size is unknown), scar % of the myocardium, MVO % of the scar. ``slices``: {"Slice", "Level", "Fibrosis
        probability", "Myocardium area", "Scar area", "MVO area", "Area unit", "Scar (%)"}. ``segments``: {"AHA
        segment", "Mean transmurality (%)", "Max transmurality (%)", "Slices"} for slices of known level.

    Raises
    ------
    DataError
        If ``clinical`` or one of its values is missing.
    """
    command = "`cardiacai fibrosis`"
    _require(report, ("clinical",), "The fibrosis report", command)
    clinical = report["clinical"]
    _require(clinical, ("scar_volume", "mvo_volume", "myocardium_volume", "volume_unit",
                        "scar_percent_of_myocardium", "mvo_percent_of_scar", "slices"), "The report's 'clinical'",
             command)
    unit = str(clinical["volume_unit"])
    mvo = "MVO" if clinical.get("mvo_assessed", True) else "MVO (not assessed by this model)"
    summary = [
        {"Measurement": "Scar volume (scar + MVO)", "Value": _number(clinical["scar_volume"], "scar_volume"),
         "Unit": unit},
        {"Measurement": f"{mvo} volume", "Value": _number(clinical["mvo_volume"], "mvo_volume"), "Unit": unit},
        {"Measurement": "Myocardial volume", "Value": _number(clinical["myocardium_volume"], "myocardium_volume"),
         "Unit": unit},
        {"Measurement": "Scar of the myocardium",
         "Value": _number(clinical["scar_percent_of_myocardium"], "scar_percent_of_myocardium"), "Unit": "%"},
        {"Measurement": f"{mvo} of the scar",
         "Value": _number(clinical["mvo_percent_of_scar"], "mvo_percent_of_scar"), "Unit": "%"},
    ]
    probabilities = report.get("slice_fibrosis_probability")
    slices = []
    for index, entry in enumerate(clinical["slices"]):
        where = f"clinical.slices[{index}]"
        _require(entry, ("slice_index", "myocardium_area", "scar_area", "mvo_area", "area_unit", "scar_percent"),
                 where, command)
        k = int(entry["slice_index"])
        probability = probabilities[k] if isinstance(probabilities, list) and k < len(probabilities) else None
        slices.append({
            "Slice": k, "Level": "" if entry.get("level") is None else str(entry["level"]),
            "Fibrosis probability": _number(probability, f"slice_fibrosis_probability[{k}]"),
            "Myocardium area": _number(entry["myocardium_area"], where), "Scar area": _number(entry["scar_area"], where),
            "MVO area": _number(entry["mvo_area"], where), "Area unit": str(entry["area_unit"]),
            "Scar (%)": _number(entry["scar_percent"], f"{where}.scar_percent"),
        })
    segments = []
    aha = clinical.get("aha_segments") or {}
    for key in sorted(aha, key=int):
        entry = aha[key]
        mean, peak = (_number(entry.get(k), f"aha_segments[{key}].{k}")
                      for k in ("mean_transmurality", "max_transmurality"))
        segments.append({"AHA segment": int(key), "Mean transmurality (%)": None if mean is None else 100.0 * mean,
                         "Max transmurality (%)": None if peak is None else 100.0 * peak,
                         "Slices": int(entry.get("n_slices", 0))})
    return {"summary": summary, "slices": sorted(slices, key=lambda r: r["Slice"]), "segments": segments}


# -- class activation maps ------------------------------------------------------------------------------------------
def cam_tables_from_report(report: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The CAM tables from the ``report.json`` of ``cardiacai cam``.

    Returns
    -------
    dict with keys "summary", "slices"
        ``summary``: {"Measurement", "Value"}: the predicted class of the volume, the mean probability of each
        class, the labelled heart's volume in ml, where the labels came from. ``slices``: {"Slice", "Explained class", "Heart pixels", "P(<class>)"...}
        in the classifier's class order.

    Raises
    ------
    DataError
        If ``cam`` or one of its keys is missing.
    """
    command = "`cardiacai cam`"
    _require(report, ("cam",), "The CAM report", command)
    cam = report["cam"]
    _require(cam, ("classes", "volume_prediction", "slices", "label_source"), "The report's 'cam'", command)
    classes = [str(c) for c in cam["classes"]]
    prediction = cam["volume_prediction"]
    _require(prediction, ("class", "probabilities"), "cam.volume_prediction", command)
    summary = [{"Measurement": "Predicted class (volume)", "Value": str(prediction["class"])}]
    for name in classes:
        p = _number(prediction["probabilities"].get(name), f"volume_prediction.probabilities[{name!r}]")
        summary.append({"Measurement": f"Mean probability of {name}", "Value": "" if p is None else f"{p:.3f}"})
    heart_ml = _number(cam.get("heart_volume_ml"), "cam.heart_volume_ml")  # absent in reports before 2026-11-27
    if heart_ml is not None:
        summary.append({"Measurement": "Heart volume (ml)", "Value": f"{heart_ml:.1f}"})
    summary.append({"Measurement": "Labels from", "Value": str(cam["label_source"])})
    for name, ml in report.get("structures", {}).get("volumes_ml", {}).items():  # cam --structures
        value = _number(ml, f"structures.volumes_ml[{name!r}]")
        shown = LABELS[_CODE_BY_NAME[name]].display_name if name in _CODE_BY_NAME else name.replace("_", " ")
        summary.append({"Measurement": f"Estimated {shown} (ml, label-free, rough)",
                        "Value": "" if value is None else f"{value:.1f}"})
    slices = []
    for index, entry in enumerate(cam["slices"]):
        where = f"cam.slices[{index}]"
        _require(entry, ("k", "explained_class", "probabilities", "heart_pixels"), where, command)
        row = {"Slice": int(entry["k"]), "Explained class": str(entry["explained_class"]),
               "Heart pixels": int(entry["heart_pixels"])}
        for name in classes:
            row[f"P({name})"] = _number(entry["probabilities"].get(name), f"{where}.probabilities[{name!r}]")
        slices.append(row)
    return {"summary": summary, "slices": sorted(slices, key=lambda r: r["Slice"])}


# -- training -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingTask:
    """A model (family) this project trains, and the command that trains it.

    Attributes
    ----------
    name : str
        Key of :data:`TRAINING_TASKS`.
    title : str
        What the task trains, for the panel.
    script : str or None
        ``scripts/<script>`` of a source checkout that trains it, or None for ``cardiacai train``.
    epoch_options : tuple of str
        The script options that take the epoch count (every stage gets the same number).
    models : tuple of str
        Registry names of the models it registers (in ``<work>/models`` for scripts).
    layouts : tuple of str
        Data layouts it reads.
    """

    name: str
    title: str
    script: str | None
    epoch_options: tuple[str, ...]
    models: tuple[str, ...]
    layouts: tuple[str, ...]


TRAINING_TASKS: dict[str, TrainingTask] = {task.name: task for task in (
    TrainingTask("segmentation", "Custom segmentation U-Net (cardiacai train)", None, ("epochs",),
                 ("<model name>",), ("auto", "acdc", "emidec", "generic")),
    TrainingTask("cine", "Cine models: localiser, baseline, region classifier, base/middle/apex U-Nets (ACDC)",
                 "train_acdc_cine.py", ("epochs",),
                 ("cine_localiser", "cine_baseline", "cine_region_classifier", "cine_base", "cine_middle",
                  "cine_apex"), ("acdc",)),
    TrainingTask("mapping", "T1/T2 map myocardium network (semi-synthetic maps from ACDC)", "train_mapping.py",
                 ("epochs",), ("map_myocardium",), ("acdc",)),
    TrainingTask("qc", "Segmentation quality control VAE and Dice regressor (ACDC)", "train_qc.py",
                 ("epochs", "regressor_epochs"), ("qc_vae", "qc_dice_regressor"), ("acdc",)),
    TrainingTask("weak", "Weakly supervised CAM classifier and whole-heart U-Net (ACDC diagnoses)",
                 "train_weak_acdc.py", ("epochs", "seg_epochs"), ("weak_cam_classifier", "weak_heart_unet"),
                 ("acdc",)),
    TrainingTask("fibrosis", "LGE myocardium, slice fibrosis classifier and weak scar U-Net from slice labels of "
                 "your data or EMIDEC (cardiacai train --task fibrosis)", None, ("epochs", "seg_epochs"),
                 ("lge_myocardium", "lge_fibrosis_classifier", "lge_fibrosis_weak"), ("auto", "generic", "emidec")),
    TrainingTask("weak-cam", "CAM classifier and whole-heart U-Net from image-level labels of your data "
                 "(cardiacai train --task weak-cam; label maps are never read)", None, ("epochs", "seg_epochs"),
                 ("weak_cam_classifier", "weak_heart_unet"), ("auto", "acdc", "generic")),
)}


#: What a training run does with an earlier run in its output folder: ``cardiacai train`` refuses it, continues it
#: (``--resume``) or starts again (``--overwrite``).
EARLIER_RUN_CHOICES = ("refuse", "resume", "restart")


def training_command(
    task: str,
    *,
    python_executable: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    epochs: int,
    device: str = "auto",
    layout: str = "auto",
    model_name: str = "custom_unet2d",
    model_version: str = "1.0",
    register_to: str | os.PathLike | None = None,
    scripts_dir: str | os.PathLike | None = None,
    label_column: str | None = None,
    sampling_ratio: float | None = None,
    earlier_run: str = "refuse",
) -> list[str]:
    """The command line that trains ``task`` (a key of :data:`TRAINING_TASKS`).

    ``segmentation`` runs ``<python> -m cardiac_ai train ... --progress-lines`` (registered with ``--register-to``);
    the other tasks run ``<python> <scripts_dir>/<script> --data DATA --work OUT --device D ... --progress-lines``
    with ``epochs`` for every stage (their models are registered into ``OUT/models``). Every command ends with
    ``--progress-lines``: the child prints ``PROGRESS <fraction> <message>`` lines (each script stage its share of
    the run, the trainer's epochs inside it), which :func:`cardiac_ai.subprocess_runner.run_with_progress` reads.
    ``model_name`` and ``model_version`` apply to segmentation only. ``weak-cam`` runs ``cardiacai train --task
    weak-cam`` with ``--label-column label_column`` (the labels.csv column of image-level labels; ACDC uses its
    diagnoses when it is None) and ``epochs`` for the classifier and the U-Net alike; it registers its two models
    with ``--register-to``. ``fibrosis`` runs ``cardiacai train --task fibrosis`` (slice labels from the labels.csv
    column ``label_column``, default ``fibrosis``; EMIDEC's from its scar masks) and registers the three LGE models
    with ``--register-to``. ``sampling_ratio`` (segmentation only; None or 1: uniform) adds ``--sampling-ratio``,
    region-aware batch sampling. ``earlier_run`` (one of :data:`EARLIER_RUN_CHOICES`) says what to do with an
    earlier run in ``out``: "refuse" (``cardiacai train`` refuses a non-empty run folder), "resume" (``--resume``:
    continue from its last checkpoint) or "restart" (``--overwrite``: remove its checkpoints and start again). The
    scripts always continue the stages already in their work folder, so for them "restart" is refused: start again
    in an empty folder.

    Raises
    ------
    InputError
        Unknown task, epochs not a positive integer, a layout the task cannot read, a sampling ratio below 1 or for
        another task than segmentation, an unknown ``earlier_run`` or "restart" for a script task, no ``scripts_dir``
        for a script
        task, or the script missing there (the training scripts come with a source checkout, not with the installed
        extension).
    """
    if task not in TRAINING_TASKS:
        raise InputError(f"Unknown training task {task!r}; choose one of {', '.join(TRAINING_TASKS)}.")
    spec = TRAINING_TASKS[task]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs!r}.")
    if layout not in spec.layouts and not (spec.script and layout == "auto"):
        raise InputError(f"The {task} task reads {', '.join(spec.layouts)} data, not the {layout!r} layout.")
    _common_options(out, device, None)
    if sampling_ratio is not None and not sampling_ratio >= 1:
        raise InputError(f"The batch sampling ratio must be 1 (uniform) or more, got {sampling_ratio}.")
    sampled = sampling_ratio is not None and sampling_ratio > 1
    if sampled and task != "segmentation":
        raise InputError(f"Region-aware batch sampling is an option of the segmentation task, not of {task}.")
    if earlier_run not in EARLIER_RUN_CHOICES:
        raise InputError(f"Unknown choice for an earlier run {earlier_run!r}; choose one of "
                         f"{', '.join(EARLIER_RUN_CHOICES)}.")
    if spec.script is not None and earlier_run == "restart":
        raise InputError(f"Training {task} runs scripts/{spec.script}, which continues the stages already in its "
                         "output folder and cannot start them again there: choose an empty output folder to start "
                         "again.")
    python = os.fspath(python_executable)
    if spec.script is None:
        from .subprocess_runner import build_command

        options = {"task": task, "data": os.fspath(data), "layout": layout, "out": os.fspath(out),
                   "epochs": epochs, "device": device,
                   "register_to": None if register_to is None else os.fspath(register_to),
                   "resume": earlier_run == "resume", "overwrite": earlier_run == "restart"}
        if task in ("weak-cam", "fibrosis"):  # fibrosis: label_column None reads the CLI's default, fibrosis
            options.update(seg_epochs=epochs, label_column=label_column or None)
        else:
            options.update(model_name=model_name, model_version=model_version,
                           sampling_ratio=sampling_ratio if sampled else None)
        return build_command("train", [], options, python_executable=python)
    if scripts_dir is None:
        raise InputError(
            f"Training {task} runs scripts/{spec.script} of a CardiacAI source checkout, which the installed "
            "extension does not include; add the checkout's CardiacAI folder to Slicer's module paths."
        )
    script = Path(scripts_dir) / spec.script
    if not script.is_file():
        raise InputError(f"{script} does not exist; training {task} needs the scripts/ folder of a source checkout.")
    command = [python, os.fspath(script), "--data", os.fspath(data), "--work", os.fspath(out), "--device", device]
    for option in spec.epoch_options:
        command += ["--" + option.replace("_", "-"), str(epochs)]
    if task == "fibrosis" and register_to is not None:
        command += ["--models-dir", os.fspath(register_to)]
    return command + ["--progress-lines"]


def latest_training_log(folder: str | os.PathLike) -> Path | None:
    """The most recently written ``log.csv`` under ``folder`` (any depth), or None: a script trains several runs in
    turn, each with its own log, and the live plot follows the one being written."""
    root = Path(folder)
    if not root.is_dir():
        return None
    logs = [p for p in root.rglob("log.csv") if p.is_file()]
    return max(logs, key=lambda p: p.stat().st_mtime_ns) if logs else None
