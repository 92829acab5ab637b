"""Provenance carried by every result: what produced it, where, how long each stage took, what went wrong."""
from __future__ import annotations

import logging
import os
import platform
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

__all__ = ["ModelUse", "Provenance"]


@dataclass(frozen=True)
class ModelUse:
    name: str
    version: str
    sha256: str | None = None


@dataclass
class Provenance:
    """Mutable while a pipeline runs, then stored in a frozen result and written to ``report.json``."""

    command: str = ""
    models: list[ModelUse] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    timings_s: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str, logger: logging.Logger | None = None) -> None:
        """Record a fallback or oddity: logged at WARNING and kept for the report."""
        (logger or logging.getLogger("cardiac_ai")).warning(message)
        self.warnings.append(message)

    def record_logged(self, messages: list[str]) -> None:
        """Keep warnings that were logged already (by a step with its own Provenance) for the report, once."""
        self.warnings.extend(messages)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[stage] = self.timings_s.get(stage, 0.0) + time.perf_counter() - start

    def to_dict(self) -> dict[str, Any]:
        from . import __version__

        data = asdict(self)
        data["package"] = {"name": "cardiac_ai", "version": __version__}
        data["platform"] = {"python": platform.python_version(), "system": platform.platform()}
        try:  # the paths in ``parameters`` are as given: relative ones are relative to this folder
            data["working_directory"] = os.getcwd()
        except OSError:  # the folder was removed while the command ran
            data["working_directory"] = None
        try:
            import torch

            data["platform"]["torch"] = torch.__version__
        except ImportError:  # pragma: no cover - torch is a hard dependency, but report() must never fail
            pass
        return data
