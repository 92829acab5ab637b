"""JSON and CSV outputs: ``report.json`` with provenance, per-segment tables, all written atomically.

Values are made JSON-safe on the way out: numpy scalars and arrays become numbers and lists, NaN and Inf become
``null`` (strict JSON has no NaN), dataclasses become objects, paths become strings.
"""
from __future__ import annotations

import csv
import dataclasses
import enum
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError, InputError
from ..provenance import Provenance
from .atomic import write_text_atomic

__all__ = ["to_jsonable", "write_json", "read_json", "write_report", "write_csv", "volume_entry", "REPORT_NAME"]

#: File name of the report every command writes into its output folder.
REPORT_NAME = "report.json"


def volume_entry(volume) -> dict[str, Any]:
    """A report's record of an input volume: its (k, j, i) shape, geometry, and how its slices were shown to the
    networks (:func:`~cardiac_ai.geometry.short_axis_display_turn`: "as stored", or turned or mirrored back to the
    short-axis display by its header)."""
    from ..geometry import short_axis_display_turn

    return {"shape_kji": list(volume.array.shape), "geometry": volume.geometry.to_dict(),
            "slices_shown_to_networks": short_axis_display_turn(volume.geometry).describe()}


def _float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def to_jsonable(value: Any) -> Any:
    """A copy of ``value`` built only from dict, list, str, int, float, bool and None.

    numpy scalars and arrays -> Python numbers and (nested) lists; NaN/Inf -> None; dataclasses -> dicts;
    Path -> str; Enum -> its value; tuples and sets -> lists (sets sorted); mapping keys -> str.

    Raises
    ------
    InputError
        For a value of another type (the message names the type), rather than writing its repr.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        return _float(float(value))
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return to_jsonable(value.to_dict())
        return {field.name: to_jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(to_jsonable(key)): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(item) for item in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    raise InputError(
        f"Cannot write a {type(value).__name__} to JSON ({value!r:.80}); convert it to numbers, strings, "
        "lists or dicts first."
    )


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, strict JSON (see :func:`to_jsonable`) atomically; returns the path."""
    text = json.dumps(to_jsonable(data), indent=2, allow_nan=False, ensure_ascii=False) + "\n"
    return write_text_atomic(path, text)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; DataError names the file when it is missing or not valid JSON."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"JSON file not found: {source}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"Cannot read {source}: {e}") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{source} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}).") from e


def write_report(out_dir: str | os.PathLike, *, provenance: Provenance, results: Mapping[str, Any]) -> Path:
    """Write ``out_dir/report.json``: ``{"cardiac_ai": version, "provenance": {...}, **results}``, and ``outputs``,
    the files the command wrote into ``out_dir`` (when it writes them inside
    :func:`~cardiac_ai.io.atomic.recording_outputs`, as every command does), this report included.

    Parameters
    ----------
    out_dir : output folder (created if missing; use :func:`~cardiac_ai.io.atomic.prepare_output_dir` first).
    provenance : what produced the results; written with :meth:`Provenance.to_dict`.
    results : JSON-able results (numpy values, dataclasses and paths are converted); keys must not be
        "cardiac_ai" or "provenance".

    Raises
    ------
    InputError
        If ``results`` uses a reserved key or holds a value that cannot be written as JSON.
    """
    from .. import __version__

    reserved = {"cardiac_ai", "provenance"} & set(results)
    if reserved:
        raise InputError(f"results must not use the reserved keys {sorted(reserved)}; rename them.")
    if not isinstance(provenance, Provenance):
        raise InputError(f"provenance must be a Provenance, got {type(provenance).__name__}.")
    from .atomic import recorded_notes, recorded_outputs, unguarded_folder_warning

    provenance_record = provenance.to_dict()
    unguarded = unguarded_folder_warning(out_dir)
    for note in [*recorded_notes(out_dir), *([unguarded] if unguarded else [])]:  # logged by readers, kept here
        if note not in provenance_record["warnings"]:
            provenance_record["warnings"].append(note)
    report = {"cardiac_ai": __version__, "provenance": provenance_record, **results}
    outputs = recorded_outputs(out_dir)
    if outputs is not None:  # what this run wrote, so that a rerun with --overwrite can clear what it no longer makes
        report["outputs"] = sorted({*outputs, REPORT_NAME})
    return write_json(Path(out_dir) / REPORT_NAME, report)


def _csv_cell(value: Any) -> Any:
    value = to_jsonable(value)
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return value


def write_csv(
    path: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
) -> Path:
    """Write rows of a table atomically as CSV with a stable column order.

    Parameters
    ----------
    path : output file.
    rows : one mapping per row; a missing key, None and NaN give an empty cell.
    columns : column order. Default: the keys of the first row in order, then new keys of later rows in the
        order they first appear (so the same rows always give the same header).

    Raises
    ------
    InputError
        If a row holds a key that ``columns`` does not list, or a value that cannot be converted.
    """
    if columns is None:
        order: dict[str, None] = {}
        for row in rows:
            for key in row:
                order.setdefault(str(key), None)
        header = list(order)
    else:
        header = [str(c) for c in columns]
        known = set(header)
        for index, row in enumerate(rows):
            extra = [k for k in row if str(k) not in known]
            if extra:
                raise InputError(f"Row {index} has columns {extra} that are not in columns={header}.")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(header)
    for row in rows:
        by_name = {str(k): v for k, v in row.items()}
        writer.writerow([_csv_cell(by_name.get(column)) for column in header])
    return write_text_atomic(path, buffer.getvalue())
