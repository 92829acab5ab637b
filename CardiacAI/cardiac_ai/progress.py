"""Progress reporting and cancellation for long work.

Long functions take ``progress: ProgressCallback | None``: called with (fraction 0..1, short message), the fraction
never decreasing. To cancel, the callback raises :class:`~cardiac_ai.errors.Cancelled`.
"""
from __future__ import annotations

import math
import sys
from typing import Callable, Mapping, TextIO

__all__ = [
    "ProgressCallback", "report", "subrange", "PROGRESS_PREFIX", "format_progress_line", "parse_progress_line",
    "PROGRESS_LINES_HELP", "StageProgress",
]

#: Machine-readable progress lines (``cardiacai ... --progress-lines``) start with this word.
PROGRESS_PREFIX = "PROGRESS"

ProgressCallback = Callable[[float, str], None]


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Call ``progress`` if given, with the fraction clipped to [0, 1]."""
    if progress is not None:
        progress(min(1.0, max(0.0, float(fraction))), message)


def subrange(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    """A callback that maps a sub-task's 0..1 onto [start, stop] of ``progress``, for nested stages."""
    if progress is None:
        return None
    if not 0.0 <= start <= stop <= 1.0:
        raise ValueError(f"subrange needs 0 <= start <= stop <= 1, got {start}, {stop}.")

    def nested(fraction: float, message: str) -> None:
        report(progress, start + (stop - start) * min(1.0, max(0.0, fraction)), message)

    return nested


def format_progress_line(fraction: float, message: str) -> str:
    """``PROGRESS <fraction> <message>``: one line, fraction with 4 decimals, message without line breaks."""
    clean = " ".join(str(message).split())
    return f"{PROGRESS_PREFIX} {min(1.0, max(0.0, float(fraction))):.4f} {clean}".rstrip()


def parse_progress_line(line: str) -> tuple[float, str] | None:
    """(fraction, message) from a progress line, or None for any other output line."""
    parts = line.strip().split(" ", 2)
    if len(parts) < 2 or parts[0] != PROGRESS_PREFIX:
        return None
    try:
        fraction = float(parts[1])
    except ValueError:
        return None
    if not 0.0 <= fraction <= 1.0:
        return None
    return fraction, parts[2] if len(parts) == 3 else ""


#: Help of the ``--progress-lines`` flag of the command line and the training scripts.
PROGRESS_LINES_HELP = "print 'PROGRESS <fraction> <message>' lines on stdout"


class StageProgress:
    """Progress of a run made of stages done one after another (a training script), as ``PROGRESS`` lines.

    Each stage gets a share of the whole run in proportion to its weight (a rough cost: epochs times seconds per
    epoch, say); :meth:`stage` starts a stage and returns the callback for the stage's own 0..1 progress (a
    trainer's epochs and batches), mapped onto that share. :meth:`finish` reports 1.0.

    With ``enabled`` (the script's ``--progress-lines``) every report is printed as ``PROGRESS <fraction>
    <message>`` (:func:`format_progress_line`), the lines the Slicer modules read: the fractions printed never
    decrease (a report below the last one is raised to it), and a report whose fraction prints as the last one did
    is left out unless it starts a stage or finishes the run (a trainer reports every batch). Disabled, nothing is
    printed and the callbacks only pass the reports on to ``then``.

    Parameters
    ----------
    weights : mapping of stage name to weight
        The stages that will run, in their order, each with a finite weight >= 0 (0: no share, e.g. exporting
        models); at least one weight > 0.
    enabled : bool
        Print the lines.
    stream : text stream, optional
        Where the lines go; default ``sys.stdout`` at the time of printing.

    Examples
    --------
    >>> run = StageProgress({"prepare": 1, "train": 9}, enabled=args.progress_lines)  # doctest: +SKIP
    >>> run.stage("prepare"); prepare()  # doctest: +SKIP
    >>> train(..., progress=run.stage("train", then=print_epochs))  # doctest: +SKIP
    >>> run.finish()  # doctest: +SKIP
    """

    def __init__(self, weights: Mapping[str, float], *, enabled: bool = True, stream: TextIO | None = None) -> None:
        weights = dict(weights)
        bad = {name: w for name, w in weights.items()
               if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0}
        if bad:
            raise ValueError(f"Stage weights must be finite numbers >= 0, got {bad}.")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"StageProgress needs at least one stage with a weight > 0, got {weights}.")
        self.enabled = enabled
        self._stream = stream
        self._ranges: dict[str, tuple[float, float]] = {}
        done = 0.0
        for name, weight in weights.items():
            self._ranges[name] = (done / total, (done + weight) / total)
            done += weight
        self._current: str | None = None
        self._last_fraction = 0.0
        self._last_printed: str | None = None

    @property
    def stages(self) -> tuple[str, ...]:
        """The stage names, in order."""
        return tuple(self._ranges)

    def stage(
        self, name: str, then: ProgressCallback | None = None, *, part: tuple[float, float] = (0.0, 1.0)
    ) -> ProgressCallback | None:
        """Report the start of stage ``name`` (once) and return the callback of its own progress (0..1, message).

        ``part``: the part of the stage this callback covers, for a stage that trains several networks in turn
        (``(0, 0.5)`` for the first of two). ``then`` (the script's own logger, say) gets every report unchanged as
        well. Disabled, this returns ``then`` itself.

        Raises
        ------
        ValueError
            A stage not given to the constructor, or ``part`` not within [0, 1] in order.
        """
        if name not in self._ranges:
            raise ValueError(f"Unknown stage {name!r}; this run has the stages {list(self._ranges)}.")
        if not 0.0 <= part[0] <= part[1] <= 1.0:
            raise ValueError(f"part must be (start, stop) with 0 <= start <= stop <= 1, got {part}.")
        if not self.enabled:
            return then
        start, stop = self._ranges[name]
        low, high = start + (stop - start) * part[0], start + (stop - start) * part[1]
        if name != self._current:
            self._current = name
            self._print(low, f"stage {name} ({self.stages.index(name) + 1}/{len(self._ranges)})", always=True)

        def stage_progress(fraction: float, message: str) -> None:
            self._print(low + (high - low) * min(1.0, max(0.0, float(fraction))), f"{name}: {message}")
            if then is not None:
                then(fraction, message)

        return stage_progress

    def finish(self, message: str = "Done") -> None:
        """Report the end of the run: fraction 1.0."""
        if self.enabled:
            self._print(1.0, message, always=True)

    def _print(self, fraction: float, message: str, *, always: bool = False) -> None:
        fraction = max(self._last_fraction, min(1.0, max(0.0, fraction)))
        line = format_progress_line(fraction, message)
        printed = line.split(" ", 2)[1]
        self._last_fraction = fraction
        if always or printed != self._last_printed:
            print(line, file=self._stream if self._stream is not None else sys.stdout, flush=True)
            self._last_printed = printed
