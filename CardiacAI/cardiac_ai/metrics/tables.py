"""Metric tables: one row per case and structure, summaries per structure, and Markdown rendering.

Rows are plain dicts (column name -> value) so they go straight to ``csv.DictWriter``, ``json`` or pandas.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..geometry import Volume
from .overlap import DEFAULT_LABELS, _as_labels, _check_labels_arg, _ratio, _structure_name
from .surface import _surface_summary

__all__ = ["CASE_COLUMNS", "evaluate_cases", "summarize_rows", "format_markdown_table"]

log = logging.getLogger(__name__)

#: Columns of :func:`evaluate_cases` rows, in order.
CASE_COLUMNS: tuple[str, ...] = (
    "case_id",
    "label",
    "structure",
    "dice",
    "jaccard",
    "hausdorff_mm",
    "hd95_mm",
    "msd_mm",
    "true_ml",
    "pred_ml",
)

_METRIC_COLUMNS = ("dice", "jaccard", "hausdorff_mm", "hd95_mm", "msd_mm", "true_ml", "pred_ml")


def _check_case(case_id: object, pred: object, true: object) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    for name, volume in (("prediction", pred), ("reference", true)):
        if not isinstance(volume, Volume):
            raise InputError(
                f"Case {case_id!r}: the {name} must be a cardiac_ai Volume (array plus geometry), got "
                f"{type(volume).__name__}; surface distances need the real voxel spacing."
            )
        if volume.axes != "kji":
            raise InputError(
                f"Case {case_id!r}: the {name} is a (t, k, j, i) series; pass one frame (Volume.frame(index))."
            )
    assert isinstance(pred, Volume) and isinstance(true, Volume)
    if pred.array.shape != true.array.shape:
        raise InputError(
            f"Case {case_id!r}: prediction has shape {pred.array.shape} but reference has {true.array.shape}; "
            "resample the prediction onto the reference grid first."
        )
    differences = pred.geometry.differences(true.geometry)
    if differences:
        raise InputError(
            f"Case {case_id!r}: prediction and reference geometries differ ({'; '.join(differences)}); "
            "resample the prediction onto the reference grid first."
        )
    pred_array = _as_labels(pred.array, f"case {case_id!r} prediction")
    true_array = _as_labels(true.array, f"case {case_id!r} reference")
    return pred_array, true_array, true.geometry.spacing_kji_mm


def evaluate_cases(
    cases: Iterable[tuple[str, Volume, Volume]],
    labels: Sequence[int] = DEFAULT_LABELS,
    *,
    percentile: float = 95.0,
) -> list[dict[str, object]]:
    """Overlap, surface distances and volumes per case and structure, each case with its own voxel spacing.

    Parameters
    ----------
    cases : iterable of (case_id, pred, true)
        ``pred`` and ``true`` are (k, j, i) label-map :class:`Volume` objects on the same grid
        (``Geometry.is_close``); ``case_id`` is any printable name.
    labels : sequence of int
        Structures to score, default 1 RV blood pool, 2 LV myocardium, 3 LV blood pool.
    percentile : float in (0, 100]
        Percentile of the robust Hausdorff column ``hd95_mm`` (default 95).

    Returns
    -------
    list of dict
        One row per case and label with :data:`CASE_COLUMNS`: ``dice`` and ``jaccard`` (0..1, NaN when the structure
        is absent from both maps), ``hausdorff_mm``, ``hd95_mm``, ``msd_mm`` (3D, mm; NaN when both absent, inf when
        one is), ``true_ml`` and ``pred_ml`` (structure volumes). Conventions: :mod:`cardiac_ai.metrics.overlap`
        and :mod:`cardiac_ai.metrics.surface`.

    Raises
    ------
    InputError
        If an item is not a (case_id, Volume, Volume) triple, the two volumes differ in shape or geometry,
        ``labels`` is invalid or ``percentile`` is outside (0, 100].
    """
    codes = _check_labels_arg(labels)
    if not (0.0 < float(percentile) <= 100.0):
        raise InputError(f"percentile must be in (0, 100], got {percentile}.")
    rows: list[dict[str, object]] = []
    for index, item in enumerate(cases):
        try:
            case_id, pred, true = item
        except (TypeError, ValueError) as e:
            raise InputError(f"Item {index} of cases must be (case_id, pred Volume, true Volume).") from e
        pred_array, true_array, spacing = _check_case(case_id, pred, true)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        for code in codes:
            p = pred_array == code
            t = true_array == code
            n_pred, n_true = int(np.count_nonzero(p)), int(np.count_nonzero(t))
            intersection = int(np.count_nonzero(p & t))
            hausdorff, robust, mean_distance = _surface_summary(p, t, spacing, float(percentile))
            rows.append(
                {
                    "case_id": case_id,
                    "label": code,
                    "structure": _structure_name(code),
                    "dice": float(_ratio(intersection, n_pred + n_true, jaccard=False, empty_value=math.nan)),
                    "jaccard": float(_ratio(intersection, n_pred + n_true, jaccard=True, empty_value=math.nan)),
                    "hausdorff_mm": hausdorff,
                    "hd95_mm": robust,
                    "msd_mm": mean_distance,
                    "true_ml": n_true * voxel_ml,
                    "pred_ml": n_pred * voxel_ml,
                }
            )
        log.debug("evaluated case %s", case_id)
    return rows


def summarize_rows(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str] = _METRIC_COLUMNS,
    *,
    group_by: str = "structure",
) -> list[dict[str, object]]:
    """Mean and SD of metric columns per group (e.g. per structure) over finite values.

    NaN (not applicable) and inf (structure missing from one map) are left out of mean and SD and counted, so a
    summary never hides them: each column ``c`` gives ``c_mean``, ``c_sd`` (ddof=1; NaN with fewer than 2 values),
    ``c_n`` (finite values used) and ``c_n_not_finite``.

    Parameters
    ----------
    rows : sequence of dict
        E.g. from :func:`evaluate_cases`.
    columns : sequence of str
        Numeric columns to summarise.
    group_by : str
        Column whose values define the groups, in order of first appearance.

    Returns
    -------
    list of dict
        One row per group: ``{group_by: value, "n_rows": ..., "<c>_mean": ..., ...}``.

    Raises
    ------
    InputError
        If a row lacks ``group_by`` or one of ``columns``, or a value is not a number.
    """
    groups: dict[object, list[Mapping[str, object]]] = {}
    for index, row in enumerate(rows):
        missing = [key for key in (group_by, *columns) if key not in row]
        if missing:
            raise InputError(f"Row {index} has no column(s) {missing}; it has {list(row)}.")
        groups.setdefault(row[group_by], []).append(row)
    summary = []
    for group, members in groups.items():
        out: dict[str, object] = {group_by: group, "n_rows": len(members)}
        for column in columns:
            try:
                values = np.array([float(m[column]) for m in members], dtype=np.float64)  # type: ignore[arg-type]
            except (TypeError, ValueError) as e:
                raise InputError(f"Column {column!r} holds a non-numeric value in group {group!r}.") from e
            finite = values[np.isfinite(values)]
            out[f"{column}_mean"] = float(finite.mean()) if finite.size else math.nan
            out[f"{column}_sd"] = float(finite.std(ddof=1)) if finite.size >= 2 else math.nan
            out[f"{column}_n"] = int(finite.size)
            out[f"{column}_n_not_finite"] = int(values.size - finite.size)
        summary.append(out)
    return summary


def _format_cell(value: object, digits: int) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        return f"{number:.{digits}f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_markdown_table(
    rows: Sequence[Mapping[str, object]],
    columns: Sequence[str] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    digits: int = 3,
) -> str:
    """Render rows as a GitHub-flavoured Markdown table.

    Parameters
    ----------
    rows : sequence of dict
        Table rows; a missing key gives an empty cell.
    columns : sequence of str, optional
        Columns in order (default: the keys of the first row).
    headers : dict, optional
        Column name -> header text (default: the column name).
    digits : int
        Decimals for floats. NaN is written ``n/a``, infinity ``inf``; ``|`` in text is escaped.

    Returns
    -------
    str
        Header line, separator line and one line per row, ending with a newline.

    Raises
    ------
    InputError
        If there are no columns (no ``columns`` and no rows) or ``digits`` is negative.
    """
    if columns is None:
        if not rows:
            raise InputError("format_markdown_table got no rows and no columns; pass columns= for an empty table.")
        columns = list(rows[0].keys())
    columns = list(columns)
    if not columns:
        raise InputError("format_markdown_table needs at least one column.")
    if digits < 0:
        raise InputError(f"digits must be >= 0, got {digits}.")
    names = [(headers or {}).get(column, column) for column in columns]
    lines = [
        "| " + " | ".join(_format_cell(name, digits) for name in names) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_format_cell(row.get(column), digits) for column in columns) + " |")
    return "\n".join(lines) + "\n"
