"""Writing outputs so that a crash never leaves a half-written file and never overwrites what it should not."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputError

__all__ = ["atomic_path", "write_text_atomic", "prepare_output_dir", "ensure_not_input", "recording_outputs",
           "recorded_outputs"]

#: (folder, names written into it so far) while a command writes its outputs (:func:`recording_outputs`).
_RECORDING: ContextVar[tuple[Path, set[str]] | None] = ContextVar("cardiac_ai_output_recording", default=None)


def _full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``labels.nii.gz``; writers such as SimpleITK pick the format by suffix."""
    suffixes = path.suffixes
    return "".join(suffixes[-2:]) if len(suffixes) >= 2 and suffixes[-1] in {".gz", ".bz2"} else path.suffix


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; set it straight back (once, at import: not per write,
    os.umask(mask)      # where another thread could create a file in between)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".partial{_full_suffix(target)}", dir=target.parent
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp makes the file private (0600); a result gets the mode any new file would get (umask), or keeps
        # the mode of the file it replaces
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_UMASK
        os.chmod(temporary_path, mode)
        os.replace(temporary_path, target)
        recording = _RECORDING.get()
        if recording is not None and target.resolve().parent == recording[0]:
            recording[1].add(target.name)
    finally:
        if temporary_path.exists():
            temporary_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def ensure_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Raise OutputError if ``output`` is one of ``inputs`` (or inside an input folder)."""
    out = Path(output).resolve()
    for item in inputs:
        source = Path(item).resolve()
        if out == source or (source.is_dir() and source in out.parents):
            raise OutputError(f"Refusing to write {out}: it is an input ({source}). Choose another output path.")


def prepare_output_dir(
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Create ``out_dir`` for a command's outputs.

    An existing folder that already holds files is refused unless ``overwrite`` (then files are replaced one by one
    as they are written, atomically; nothing else in the folder is deleted). An output folder that is an input, or
    contains an input, is always refused.
    """
    out = Path(out_dir)
    input_paths = [Path(p).resolve() for p in inputs]
    resolved = out.resolve()
    for source in input_paths:
        if resolved == source or resolved in source.parents:
            raise OutputError(
                f"Refusing to use {out} as output folder: it holds the input {source}. Choose an empty folder."
            )
    if out.exists() and not out.is_dir():
        raise OutputError(f"Output folder {out} exists and is a file. Choose a folder path.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(
            f"Output folder {out} already holds files. Choose an empty or new folder, or pass --overwrite "
            "to replace the files this command writes."
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextmanager
def recording_outputs(folder: str | os.PathLike) -> Iterator[set[str]]:
    """Record the names of the files written into ``folder`` (through :func:`atomic_path`) while the block runs, so
    that the report can list the command's outputs; a block inside another one for the same folder shares its
    record."""
    resolved = Path(folder).resolve()
    current = _RECORDING.get()
    if current is not None and current[0] == resolved:
        yield current[1]
        return
    token = _RECORDING.set((resolved, set()))
    try:
        yield _RECORDING.get()[1]
    finally:
        _RECORDING.reset(token)


def recorded_outputs(folder: str | os.PathLike) -> list[str] | None:
    """The names written into ``folder`` so far by the enclosing :func:`recording_outputs`, or None outside one."""
    current = _RECORDING.get()
    if current is None or current[0] != Path(folder).resolve():
        return None
    return sorted(current[1])
