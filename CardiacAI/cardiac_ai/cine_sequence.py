"""A cine sequence (one 3D short-axis frame per cardiac phase) through ``cardiacai batch``: the frame files, the
LV/RV volume curve read back from the batch, and the choice of the end-diastolic and end-systolic frames.

The Slicer module writes every frame of a ``vtkMRMLSequenceNode`` to ``FOLDER/frame_0000.nrrd``, ... (names from
:func:`frame_case_id`), runs ``cardiacai batch FOLDER --task segment-cine --out OUT`` once (the models load once for
all frames), then reads ``OUT/summary.csv`` and each frame's ``OUT/<case_id>/report.json`` with
:func:`read_cine_batch`. :func:`choose_ed_es_frames` picks ED and ES from the LV blood-pool curve and
:func:`volume_curve_rows` makes the curve table.

Frames are numbered from 0 in sequence order (``vtkMRMLSequenceNode.GetNthDataNode(frame)``), as ``--frame`` of
the command line. This module runs inside Slicer's own process: standard library and ``errors`` only.

Examples
--------
>>> frames = read_cine_batch("out", n_frames=25)           # the folder cardiacai batch --out wrote
>>> choice = choose_ed_es_frames([f.lv_blood_pool_ml for f in frames], heart_found=[f.heart_found for f in frames])
>>> choice.ed_frame, choice.es_frame, choice.warnings
(0, 9, ())
>>> rows = volume_curve_rows(frames, index_values=["0", "33.3", ...], index_title="time (ms)", choice=choice)
"""
from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError, InputError

__all__ = [
    "BATCH_FAILURES_EXIT_CODE",
    "BATCH_TASK",
    "CURVE_COLUMNS",
    "FRAME_SUFFIX",
    "CineFrameVolumes",
    "EdEsFrames",
    "check_frame_numbers",
    "choose_ed_es_frames",
    "frame_case_id",
    "frame_from_case_id",
    "frame_warnings",
    "read_cine_batch",
    "sequence_index_title",
    "volume_curve_rows",
]

#: The ``cardiacai batch --task`` that segments every frame.
BATCH_TASK = "segment-cine"
#: Exit status of ``cardiacai batch`` when some cases failed (cardiac_ai.cli.EXIT_BATCH_FAILURES; a test checks
#: that they agree). The summary still holds the frames that worked.
BATCH_FAILURES_EXIT_CODE = 5
#: File type of the frame files; ``cardiacai batch`` takes a folder of volume files, one per case.
FRAME_SUFFIX = ".nrrd"
#: Volume columns of the curve table: (title, CineFrameVolumes attribute, summary.csv column).
CURVE_COLUMNS = (
    ("LV blood pool (ml)", "lv_blood_pool_ml", "lv_blood_pool_ml"),
    ("RV blood pool (ml)", "rv_blood_pool_ml", "rv_blood_pool_ml"),
    ("LV myocardium (ml)", "lv_myocardium_ml", "lv_myocardium_ml"),
)

_CASE_ID = re.compile(r"^frame_(\d+)$")


def frame_case_id(frame: int) -> str:
    """``"frame_0007"`` for frame 7: the file name (plus FRAME_SUFFIX) and case id of a frame in the batch.

    Zero-padded so that the batch, which takes the files of a folder in name order, runs them in frame order.
    """
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise InputError(f"A frame number is an integer >= 0, got {frame!r}.")
    return f"frame_{frame:04d}"


def frame_from_case_id(case_id: str) -> int:
    """The frame number of a case id written by :func:`frame_case_id` (``"frame_0007"`` -> 7)."""
    match = _CASE_ID.match(str(case_id))
    if match is None:
        raise DataError(f"Case {case_id!r} of the batch is not a cine frame (expected frame_NNNN).")
    return int(match.group(1))


def check_frame_numbers(n_frames: int, ed_frame: int | None = None, es_frame: int | None = None) -> None:
    """Refuse ED/ES frame numbers outside ``0 .. n_frames - 1`` or equal to each other (None = choose it).

    Raises
    ------
    InputError
        A number that is not an integer, out of range, or ED and ES given as the same frame.
    """
    for phase, frame in (("ED", ed_frame), ("ES", es_frame)):
        if frame is None:
            continue
        if isinstance(frame, bool) or not isinstance(frame, int) or not 0 <= frame < n_frames:
            raise InputError(
                f"The {phase} frame must be a frame number from 0 to {n_frames - 1} (the sequence has {n_frames} "
                f"frames), got {frame!r}."
            )
    if ed_frame is not None and ed_frame == es_frame:
        raise InputError(f"ED and ES are both frame {ed_frame}; choose two different frames (or leave one automatic).")


@dataclass(frozen=True)
class CineFrameVolumes:
    """What the batch found in one frame.

    Attributes
    ----------
    frame : 0-based frame number.
    status : "ok", "failed" (the frame's error is in ``error``) or "missing" (not in the summary: the batch stopped).
    lv_blood_pool_ml, rv_blood_pool_ml, lv_myocardium_ml : structure volumes in ml; None when not segmented.
    heart_found : the frame's ``report.json`` ``heart_found``; None when there is no report.
    error : the batch's error message of a failed frame, else None.
    """

    frame: int
    status: str
    lv_blood_pool_ml: float | None = None
    rv_blood_pool_ml: float | None = None
    lv_myocardium_ml: float | None = None
    heart_found: bool | None = None
    error: str | None = None


def _number(text: Any) -> float | None:
    """A summary.csv cell as a float; an empty cell (None or NaN when written) gives None."""
    if text is None or str(text).strip() == "":
        return None
    try:
        value = float(text)
    except ValueError as e:
        raise DataError(f"summary.csv holds {text!r} where a volume in ml was expected.") from e
    return value if math.isfinite(value) else None


def read_cine_batch(out_dir: Any, n_frames: int) -> list[CineFrameVolumes]:
    """The volumes of every frame from what ``cardiacai batch --task segment-cine --out out_dir`` wrote.

    Reads ``out_dir/summary.csv`` (columns ``case_id``, ``status``, ``<structure>_ml``, ``error``; one row per
    case named by :func:`frame_case_id`) and, for ``heart_found``, each successful frame's
    ``out_dir/<case_id>/report.json``.

    Parameters
    ----------
    out_dir : the batch's ``--out`` folder.
    n_frames : frames written to the batch's input folder; a frame absent from the summary gets status "missing".

    Returns
    -------
    list of CineFrameVolumes
        One per frame, in frame order (``result[k].frame == k``).

    Raises
    ------
    DataError
        No summary.csv (the batch stopped before the first frame), a case that is not a frame or is out of range,
        or a volume cell that is not a number.
    """
    out = Path(out_dir)
    summary = out / "summary.csv"
    if not summary.is_file():
        raise DataError(f"The batch wrote no summary: {summary} is missing; see the log for its output.")
    with open(summary, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    frames: dict[int, CineFrameVolumes] = {}
    for row in rows:
        frame = frame_from_case_id(row.get("case_id", ""))
        if not 0 <= frame < n_frames:
            raise DataError(f"summary.csv lists frame {frame}; the sequence has {n_frames} frames (0-{n_frames - 1}).")
        status = str(row.get("status") or "")
        if status == "failed":
            frames[frame] = CineFrameVolumes(frame, "failed", error=str(row.get("error") or "unknown error"))
            continue
        report_path = out / row["case_id"] / "report.json"
        heart_found = None
        if report_path.is_file():
            try:
                heart_found = json.loads(report_path.read_text(encoding="utf-8")).get("heart_found")
            except (ValueError, AttributeError) as e:
                raise DataError(f"{report_path} is not a readable report: {e}") from e
        frames[frame] = CineFrameVolumes(
            frame, "ok", **{attribute: _number(row.get(column)) for _, attribute, column in CURVE_COLUMNS},
            heart_found=None if heart_found is None else bool(heart_found),
        )
    return [frames.get(k, CineFrameVolumes(k, "missing")) for k in range(n_frames)]


def _frame_list(frames: Sequence[int]) -> str:
    return ", ".join(str(k) for k in frames)


def frame_warnings(frames: Sequence[CineFrameVolumes]) -> list[str]:
    """What the user must know about the batch: frames that failed (with the first error), are missing, or in
    which no heart was found. Empty when every frame was segmented with a heart."""
    warnings = []
    failed = [f for f in frames if f.status == "failed"]
    if failed:
        warnings.append(f"Frame(s) {_frame_list(f.frame for f in failed)} could not be segmented (first error: "
                        f"{failed[0].error}); they are left out of the volume curve.")
    missing = [f.frame for f in frames if f.status == "missing"]
    if missing:
        warnings.append(f"Frame(s) {_frame_list(missing)} are missing from the batch summary (the batch stopped "
                        "early); they are left out of the volume curve.")
    no_heart = [f.frame for f in frames if f.status == "ok" and f.heart_found is False]
    if no_heart:
        warnings.append(f"No heart was found in frame(s) {_frame_list(no_heart)}; their volumes are not used to "
                        "choose ED and ES.")
    return warnings


@dataclass(frozen=True)
class EdEsFrames:
    """The end-diastolic and end-systolic frames of a cine sequence.

    Attributes
    ----------
    ed_frame, es_frame : 0-based frame numbers.
    ed_chosen, es_chosen : True when the frame was chosen from the curve, False when it was given.
    usable_frames : frames with a finite, positive LV blood-pool volume and a heart found.
    skipped_frames : the other frames.
    warnings : e.g. a given frame without an LV blood-pool volume.
    """

    ed_frame: int
    es_frame: int
    ed_chosen: bool
    es_chosen: bool
    usable_frames: tuple[int, ...]
    skipped_frames: tuple[int, ...]
    warnings: tuple[str, ...] = ()


def _usable(volume: Any, heart: Any) -> bool:
    if heart is False or volume is None or isinstance(volume, bool):
        return False
    try:
        value = float(volume)
    except (TypeError, ValueError):
        return False
    return math.isfinite(value) and value > 0.0


def choose_ed_es_frames(
    lv_blood_pool_ml: Sequence[float | None],
    *,
    heart_found: Sequence[bool | None] | None = None,
    ed_frame: int | None = None,
    es_frame: int | None = None,
) -> EdEsFrames:
    """End diastole = the frame with the largest LV blood-pool volume; end systole = the frame with the smallest.

    This is the volumetric definition used when the ECG trigger is not trusted (ED is the fullest, ES the
    emptiest left ventricle of the cycle); it matches the ACDC convention for normal rhythm. On a tie the first
    frame (lowest number) wins, for ED and ES alike.

    Frames whose volume is missing (None), NaN, infinite or not positive, or in which no heart was found
    (``heart_found[k] is False``), are skipped: a frame where segmentation failed must not become ES because its
    volume reads 0. A frame given as ``ed_frame`` or ``es_frame`` is kept as given (a warning says so when it is
    not usable) and the other phase is chosen among the remaining usable frames.

    Parameters
    ----------
    lv_blood_pool_ml : (n_frames,) LV blood-pool volume of each frame in ml, in frame order.
    heart_found : (n_frames,) per frame; None treats every frame as having a heart.
    ed_frame, es_frame : frame numbers to use instead of choosing; None chooses.

    Returns
    -------
    EdEsFrames

    Raises
    ------
    InputError
        Fewer than 2 usable frames when both phases are chosen (fewer than 1 besides the given frame when one is
        given); a flat curve (ED and ES would be the same frame); a bad ``ed_frame`` / ``es_frame``; or
        ``heart_found`` of another length.
    """
    volumes = list(lv_blood_pool_ml)
    n_frames = len(volumes)
    hearts = list(heart_found) if heart_found is not None else [None] * n_frames
    if len(hearts) != n_frames:
        raise InputError(f"heart_found has {len(hearts)} values for {n_frames} frames; give one per frame.")
    check_frame_numbers(n_frames, ed_frame, es_frame)
    usable = [k for k in range(n_frames) if _usable(volumes[k], hearts[k])]
    skipped = tuple(k for k in range(n_frames) if k not in usable)
    warnings = [f"The given {phase} frame {frame} has no LV blood-pool volume (segmentation failed or no heart "
                "found); check it." for phase, frame in (("ED", ed_frame), ("ES", es_frame))
                if frame is not None and frame not in usable]
    if ed_frame is None and es_frame is None and len(usable) < 2:
        raise InputError(
            f"ED and ES are chosen from the LV blood-pool volume of each frame, but only {len(usable)} of "
            f"{n_frames} frame(s) have one (skipped: no volume, segmentation failed or no heart found in frame(s) "
            f"{_frame_list(skipped) or '-'}). Check the sequence and the cine models, or give the ED and ES frames."
        )
    ed, es = ed_frame, es_frame
    if ed is None:
        candidates = [k for k in usable if k != es]
        if not candidates:
            raise InputError(f"No frame besides ES frame {es} has an LV blood-pool volume to choose ED from; give "
                             "the ED frame.")
        ed = max(candidates, key=lambda k: (float(volumes[k]), -k))  # largest; on a tie the first frame
    if es is None:
        candidates = [k for k in usable if k != ed]
        if not candidates:
            raise InputError(f"No frame besides ED frame {ed} has an LV blood-pool volume to choose ES from; give "
                             "the ES frame.")
        es = min(candidates, key=lambda k: (float(volumes[k]), k))  # smallest; on a tie the first frame
        if ed_frame is None and float(volumes[ed]) == float(volumes[es]):
            raise InputError(
                f"The LV blood-pool volume is the same ({float(volumes[ed]):.3g} ml) in every usable frame, so ED "
                "and ES cannot be told apart; check that the sequence is a cine over the cardiac cycle, or give "
                "the ED and ES frames."
            )
    return EdEsFrames(ed_frame=ed, es_frame=es, ed_chosen=ed_frame is None, es_chosen=es_frame is None,
                      usable_frames=tuple(usable), skipped_frames=skipped, warnings=tuple(warnings))


def sequence_index_title(index_name: str, index_unit: str = "") -> str:
    """Column title of a sequence's index: ``"time (ms)"`` from GetIndexName() "time" and GetIndexUnit() "ms";
    "Index" when the sequence has no index name."""
    name = str(index_name or "").strip() or "Index"
    unit = str(index_unit or "").strip()
    return f"{name} ({unit})" if unit else name


def _index_column(values: Sequence[Any]) -> list[Any]:
    """Index values as numbers when every one is a number (a numeric table column), else as given (text)."""
    try:
        numbers = [float(v) for v in values]
    except (TypeError, ValueError):
        return [str(v) for v in values]
    return numbers if all(math.isfinite(v) for v in numbers) else [str(v) for v in values]


def volume_curve_rows(
    frames: Sequence[CineFrameVolumes],
    index_values: Sequence[Any],
    *,
    index_title: str = "Index",
    choice: EdEsFrames | None = None,
) -> list[dict]:
    """Rows of the volume curve table, one per frame.

    Parameters
    ----------
    frames : from :func:`read_cine_batch`, in frame order.
    index_values : the sequence's index value of each frame (``GetNthIndexValue(k)``); numbers when all parse.
    index_title : title of the index column (:func:`sequence_index_title`).
    choice : marks the ED and ES frames in the "Phase" column.

    Returns
    -------
    list of dict
        Keys "Frame" (0-based), ``index_title``, "LV blood pool (ml)", "RV blood pool (ml)", "LV myocardium (ml)"
        (None where the frame was not segmented), "Phase" ("ED", "ES" or "") and "Note" ("failed: <error>",
        "missing", "no heart found" or "").

    Raises
    ------
    InputError
        ``index_values`` of another length than ``frames``, or an index title that is also a volume column.
    """
    if len(index_values) != len(frames):
        raise InputError(f"{len(index_values)} index values for {len(frames)} frames; give one per frame.")
    reserved = {"Frame", "Phase", "Note", *(title for title, _, _ in CURVE_COLUMNS)}
    if index_title in reserved:
        index_title = f"Sequence {index_title}"
    phases = {}
    if choice is not None:
        phases = {choice.ed_frame: "ED", choice.es_frame: "ES"}
    rows = []
    for frame, index_value in zip(frames, _index_column(index_values)):
        if frame.status == "failed":
            note = f"failed: {frame.error}"
        elif frame.status == "missing":
            note = "missing"
        elif frame.heart_found is False:
            note = "no heart found"
        else:
            note = ""
        rows.append({
            "Frame": frame.frame,
            index_title: index_value,
            **{title: getattr(frame, attribute) for title, attribute, _ in CURVE_COLUMNS},
            "Phase": phases.get(frame.frame, ""),
            "Note": note,
        })
    return rows
