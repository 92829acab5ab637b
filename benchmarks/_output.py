"""What every benchmark script does with its tables: print them, and write them to --report when given."""
from __future__ import annotations

from pathlib import Path


def emit_report(lines: list[str], report_path: str | None) -> str:
    text = "\n".join(lines)
    print(text)
    if report_path:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_path).write_text(text + "\n")
    return text
