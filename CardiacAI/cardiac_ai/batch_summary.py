"""The columns of a batch ``summary.csv`` for one finished case, read from the case's ``report.json``.

One function for both batch front ends, so that their summaries cannot drift apart: ``cardiacai batch``
(:func:`cardiac_ai.pipeline.run_batch`) and the Slicer batch script (``CardiacAI/Scripts/batch_headless.py``), whose
Logic methods run the same commands and return the same report. Everything is read from the report, so a summary
can also be rebuilt later from the case folders.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import CardiacAIError, DataError
from .io.report import REPORT_NAME
from .slicer_results import qc_entries, read_report, report_warnings

__all__ = ["summary_values", "earlier_summary_values", "summary_columns", "SUMMARY_COMMANDS"]

log = logging.getLogger(__name__)

SUMMARY_COMMANDS = ("segment-cine", "function", "map", "fibrosis", "cam", "qc")
"""The commands whose reports :func:`summary_values` reads (``provenance.command``)."""

_MAP_STATISTICS = ("median", "iqr", "mean", "sd")


def summary_values(report: Mapping[str, Any]) -> dict[str, Any]:
    """The key numbers of one case, in column order, from the ``report.json`` of the command that made it.

    Parameters
    ----------
    report : dict
        A report of ``segment-cine``, ``function``, ``map``, ``fibrosis`` or ``cam`` (``provenance.command`` says
        which).

    Returns
    -------
    dict
        The command's numbers (floats rounded to 3 decimals; None where the backend could not compute one):

        * segment-cine: ``<structure>_ml`` per structure, ``lv_mass_g``;
        * function: every measurement of ``function`` (EDV, ESV, SV, EF of both ventricles, LV mass);
        * map: ``myocardium_<kind>_median_ms``, ``_iqr_ms``, ``_mean_ms``, ``_sd_ms``, ``myocardium_pixels``,
          ``lv_blood_pool_<kind>_median_ms``, ``slices_without_myocardium``;
        * fibrosis: ``scar_volume_<unit>``, ``mvo_volume_<unit>``, ``myocardium_volume_<unit>`` (unit mL, or voxels
          when the pixel size is unknown), ``scar_percent_of_myocardium``, ``mvo_percent_of_scar``,
          ``fibrosis_found``, ``max_slice_fibrosis_probability`` (when a classifier ran);
        * cam: ``predicted_class``, ``predicted_probability``, ``p_<class>`` per class, ``heart_volume_ml``,
          ``heart_from_end_diastole`` (an ``ed`` column gave the case's end-diastolic frame), and with
          ``--structures`` ``estimated_<structure>_ml`` per structure of the label-free split;
        * qc: ``qc_mean_dice`` and ``qc_volume_dice_<structure>`` per structure (null where not judged);

        then ``warnings`` (joined with " | ") and, when QC ran, ``qc_min_dice`` (lowest predicted Dice of any slice
        and structure, ED and ES together for function), ``qc_flagged_slices`` (their number) and
        ``qc_needs_review``.

    Raises
    ------
    DataError
        A report of another command, or one that lacks what its command always writes.
    """
    if not isinstance(report, Mapping):
        raise DataError(f"A report must be a JSON object (dict), got {type(report).__name__}.")
    provenance = report.get("provenance")
    command = provenance.get("command") if isinstance(provenance, Mapping) else None
    if command not in SUMMARY_COMMANDS:
        raise DataError(
            f"No batch summary for a report of {command!r}; summaries exist for {', '.join(SUMMARY_COMMANDS)} "
            "(the report's provenance.command)."
        )
    try:
        values = _COMMAND_VALUES[command](report)
    except (KeyError, TypeError, AttributeError) as error:
        raise DataError(
            f"The report of {command!r} lacks what the summary needs ({type(error).__name__}: {error}); it was "
            "written by another CardiacAI version or changed by hand: run the command again."
        ) from error
    warnings = report_warnings(report)
    if command == "cam":
        warnings += [str(w) for w in report["cam"].get("warnings", []) if str(w) not in warnings]
    values["warnings"] = " | ".join(warnings)
    values.update(_qc_values(report))
    return values


def _rounded(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return round(value, 3) if math.isfinite(value) else None


def _cine_values(report: Mapping[str, Any]) -> dict[str, Any]:
    values = {f"{name}_ml": _rounded(volume) for name, volume in report["volumes_ml"].items()}
    values["lv_mass_g"] = _rounded(report["lv_mass_g"])
    return values


def _function_values(report: Mapping[str, Any]) -> dict[str, Any]:
    return {key: _rounded(value) if not isinstance(value, str) else value
            for key, value in report["function"].items() if key != "warnings"}


def _map_values(report: Mapping[str, Any]) -> dict[str, Any]:
    kind = report["kind"]
    myocardium = report["myocardium_statistics_ms"] or {}
    values = {f"myocardium_{kind}_{statistic}_ms": _rounded(myocardium.get(statistic))
              for statistic in _MAP_STATISTICS}
    values["myocardium_pixels"] = int(myocardium.get("n_pixels") or 0)
    values[f"lv_blood_pool_{kind}_median_ms"] = _rounded(report["lv_blood_pool_median_ms"])
    values["slices_without_myocardium"] = int(report["slices_without_myocardium"])
    return values


def _fibrosis_values(report: Mapping[str, Any]) -> dict[str, Any]:
    clinical = report["clinical"]
    unit = str(clinical["volume_unit"])
    values = {f"{name}_{unit}": _rounded(clinical[name]) for name in ("scar_volume", "mvo_volume", "myocardium_volume")}
    values["scar_percent_of_myocardium"] = _rounded(clinical["scar_percent_of_myocardium"])
    values["mvo_percent_of_scar"] = _rounded(clinical["mvo_percent_of_scar"])
    values["fibrosis_found"] = report["fibrosis_found"]
    probabilities = [p for p in report.get("slice_fibrosis_probability") or [] if p is not None]
    if probabilities:
        values["max_slice_fibrosis_probability"] = _rounded(max(probabilities))
    return values


def _cam_values(report: Mapping[str, Any]) -> dict[str, Any]:
    cam = report["cam"]
    prediction = cam["volume_prediction"]
    probabilities = prediction["probabilities"]
    return {"predicted_class": prediction["class"], "predicted_probability": _rounded(probabilities[prediction["class"]]),
            **{f"p_{name}": _rounded(p) for name, p in probabilities.items()},
            "heart_volume_ml": _rounded(cam.get("heart_volume_ml")),
            # cam --ed: the heart is the end-diastolic frame's, carried onto this one
            "heart_from_end_diastole": bool(cam.get("heart_from_end_diastole", False)),
            # cam --structures: the label-free split of the heart (a rough estimate; the report says how rough)
            **{f"estimated_{name}_ml": _rounded(ml)
               for name, ml in report.get("structures", {}).get("volumes_ml", {}).items()}}


def _qc_values(report: Mapping[str, Any]) -> dict[str, Any]:
    """QC columns of ED and ES together (function) or of the one result; none when QC did not run."""
    entries = list(qc_entries(report).values())
    if not entries:
        return {}
    lowest = [float(e["min_slice_dice"]) for e in entries
              if e.get("min_slice_dice") is not None and math.isfinite(float(e["min_slice_dice"]))]
    return {
        "qc_min_dice": round(min(lowest), 4) if lowest else None,
        "qc_flagged_slices": sum(int(e.get("n_flagged_slices") or 0) for e in entries),
        "qc_needs_review": any(bool(e.get("needs_review")) for e in entries),
    }


def _qc_command_values(report: Mapping[str, Any]) -> dict[str, Any]:
    qc = report["qc"]
    return {"qc_mean_dice": _rounded(qc["mean_dice"]),
            **{f"qc_volume_dice_{name}": _rounded(dice) for name, dice in qc["volume_dice"].items()}}


_COMMAND_VALUES = {"segment-cine": _cine_values, "function": _function_values, "map": _map_values,
                   "fibrosis": _fibrosis_values, "cam": _cam_values, "qc": _qc_command_values}


def earlier_summary_values(case_folder: str | os.PathLike) -> dict[str, Any] | None:
    """The summary columns of a case an earlier batch run finished (its ``report.json``, which every command writes
    last), so that a resumed batch's ``summary.csv`` keeps them; None when there is no readable report: the case is
    not finished and runs again."""
    folder = Path(case_folder)
    if not (folder / REPORT_NAME).is_file():
        return None
    try:
        return summary_values(read_report(folder))
    except (CardiacAIError, OSError, ValueError) as error:
        log.warning("Case %s: its earlier report.json is unusable (%s); running it again.", folder.name, error)
        return None


#: The columns every batch summary has, before and after the task's numbers.
SUMMARY_LEADING_COLUMNS = ("case_id", "inputs", "status")
SUMMARY_TRAILING_COLUMNS = ("error", "seconds")


def summary_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The header of a batch ``summary.csv``: case_id, inputs, status, the numbers' columns in the order the rows
    first give them, then error and seconds, whether or not a case failed or ran (a skipped case has no seconds)."""
    fixed = {*SUMMARY_LEADING_COLUMNS, *SUMMARY_TRAILING_COLUMNS}
    values: dict[str, None] = {}
    for row in rows:
        for key in row:
            if key not in fixed:
                values.setdefault(str(key), None)
    return [*SUMMARY_LEADING_COLUMNS, *values, *SUMMARY_TRAILING_COLUMNS]
