"""Progress reporting and cancellation for long work.

Long functions take ``progress: ProgressCallback | None``: called with (fraction 0..1, short message), the fraction
never decreasing. To cancel, the callback raises :class:`~cardiac_ai.errors.Cancelled`.
"""
from __future__ import annotations

from typing import Callable

__all__ = ["ProgressCallback", "report", "subrange", "PROGRESS_PREFIX", "format_progress_line", "parse_progress_line"]

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
