"""Turn the ``report.json`` of ``cardiacai segment-cine`` and ``cardiacai function`` into table rows and warnings.

The Slicer module runs the backend in a child process and reads its report back; everything it shows (the volume,
slice and function tables, the warnings) comes from the pure functions here, so they are tested without Slicer.
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
from typing import Any, Mapping, Sequence

from .errors import DataError, InputError
from .labels import LABELS, LV_MYOCARDIUM

__all__ = [
    "CINE_TABLES",
    "FUNCTION_MEASUREMENTS",
    "read_report",
    "cine_tables_from_report",
    "function_rows_from_report",
    "report_warnings",
    "table_columns",
    "models_from_info_output",
    "training_log_series",
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

