"""Writing outputs so that a crash never leaves a half-written file and never overwrites what it should not."""
from __future__ import annotations

import datetime
import logging
import os
import socket
import sys
import tempfile
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputError

__all__ = ["atomic_path", "write_text_atomic", "prepare_output_dir", "check_output_location", "ensure_not_input",
           "recording_outputs", "recorded_outputs", "folder_lock", "LOCK_NAME"]

log = logging.getLogger(__name__)

#: Hidden file a run holds locked in the folder it writes into (:func:`folder_lock`); left behind (unlocked) only by
#: a run that was killed.
LOCK_NAME = ".cardiac_ai-writing"


@dataclass
class _Recording:
    """The folder a command writes its outputs into, the names written so far, and where a file that a write
    replaces is kept until the command ends (:func:`recording_outputs`)."""

    folder: Path
    names: set[str] = field(default_factory=set)
    backup: Path | None = None
    notes: list[str] = field(default_factory=list)


_RECORDING: ContextVar[_Recording | None] = ContextVar("cardiac_ai_output_recording", default=None)
#: Folders written without a lock (a file system without locks), each with the warning its report carries.
_UNLOCKED: ContextVar[dict[Path, str]] = ContextVar("cardiac_ai_unlocked_folders", default={})


def _full_suffix(path: Path) -> str:
    """``.nii.gz`` for ``labels.nii.gz``, in lower case (``.mha`` for ``SCAN.MHA``): writers such as SimpleITK pick
    the format by a lower-case suffix, and the temporary file is what they write."""
    suffixes = [suffix.lower() for suffix in path.suffixes]
    return "".join(suffixes[-2:]) if len(suffixes) >= 2 and suffixes[-1] in {".gz", ".bz2"} else path.suffix.lower()


def _read_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; set it straight back (once, at import: not per write,
    os.umask(mask)      # where another thread could create a file in between)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path`` in one step.

    On any error the temporary file is removed and ``path`` is left as it was. Inside :func:`recording_outputs` with
    a ``backup`` folder, a file that this write replaces and that the command has not written itself is first moved
    into ``backup``, so that a command that fails can put it back.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # the name is cut so that the temporary name (about 30 characters more) stays within the 255 a folder allows
    handle, temporary = tempfile.mkstemp(
        prefix=f".{target.name.encode('utf-8')[:64].decode('utf-8', 'ignore')}.",
        suffix=f".partial{_full_suffix(target)}", dir=target.parent,
    )
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        # mkstemp makes the file private (0600); a result gets the mode any new file would get (umask), or keeps
        # the mode of the file it replaces
        mode = target.stat().st_mode & 0o7777 if target.exists() else 0o666 & ~_UMASK
        os.chmod(temporary_path, mode)
        recording = _RECORDING.get()
        recorded = recording is not None and target.resolve().parent == recording.folder
        if (recorded and recording.backup is not None and target.name not in recording.names
                and os.path.lexists(target) and not os.path.lexists(recording.backup / target.name)):
            os.replace(target, recording.backup / target.name)
        os.replace(temporary_path, target)
        if recorded:
            recording.names.add(target.name)
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


def check_output_location(out_dir: str | os.PathLike) -> None:
    """Raise OutputError, creating nothing, if ``out_dir`` cannot become an output folder: it is a file, lies under
    a file, or the folder it is (or would be created in) is not writable. For checks before any model loads."""
    out = Path(os.path.abspath(out_dir))
    try:
        existing = next(p for p in (out, *out.parents) if os.path.lexists(p))
        if existing == out and not out.is_dir():
            raise OutputError(f"Output folder {out_dir} exists and is a file. Choose a folder path.")
        if not existing.is_dir():
            raise OutputError(f"Output folder {out_dir} cannot be created: {existing} is a file, not a folder. "
                              "Choose a folder path.")
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"Output folder {out_dir} cannot be used: {error}") from error
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "is" if existing == out else f"would be created in {existing}, which is"
        raise OutputError(f"Output folder {out_dir} {where} not writable. Choose a folder you can write to.")


def _probe_writable(folder: Path) -> None:
    """Write and remove a small temporary file in ``folder`` (``os.access`` does not see read-only mounts of some
    file systems, ACLs or root's rights, which ignore the permission bits)."""
    try:
        handle, probe = tempfile.mkstemp(prefix=".cardiac_ai-write-test-", dir=folder)
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutputError(f"Output folder {folder} is not writable ({error.strerror or error}). Choose a folder "
                          "you can write to.") from error


def prepare_output_dir(
    out_dir: str | os.PathLike,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Create ``out_dir`` for a command's outputs, and check that files can be written into it.

    An existing folder that already holds files is refused unless ``overwrite`` (then files are replaced one by one
    as they are written, atomically; nothing else in the folder is deleted). An output folder that is an input,
    contains an input or lies inside an input folder (a DICOM series folder) is always refused.

    Raises
    ------
    OutputError
        For any of these refusals, and for a folder that cannot be created or written (a path under a file, no
        permission), naming the folder.
    """
    out = Path(out_dir)
    input_paths = [Path(p).resolve() for p in inputs]
    resolved = out.resolve()
    for source in input_paths:
        if resolved == source or resolved in source.parents:
            raise OutputError(
                f"Refusing to use {out} as output folder: it holds the input {source}. Choose an empty folder."
            )
        if source.is_dir() and source in resolved.parents:
            raise OutputError(
                f"Refusing to use {out} as output folder: it lies inside the input folder {source}. Choose a "
                "folder outside it."
            )
    check_output_location(out)
    try:
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            holder = _lock_holder(out)
            if holder is not None:
                raise _held_by(holder, out)
            hidden = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
            left = (f" (among them {', '.join(hidden[:3])}{' ...' if len(hidden) > 3 else ''}: hidden files, such as a "
                    "CardiacAI run stopped by a hard kill leaves behind)") if hidden else ""
            raise OutputError(
                f"Output folder {out} already holds files{left}. Choose an empty or new folder, or pass --overwrite "
                "to replace the files this command writes."
            )
        out.mkdir(parents=True, exist_ok=True)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"Output folder {out} cannot be created or read: {error}") from error
    _probe_writable(out)
    return out


@contextmanager
def recording_outputs(folder: str | os.PathLike, *, backup: str | os.PathLike | None = None) -> Iterator[set[str]]:
    """Record the names of the files written into ``folder`` (through :func:`atomic_path`) while the block runs, so
    that the report can list the command's outputs; a block inside another one for the same folder shares its
    record (and its ``backup``).

    With ``backup`` (an existing folder on the same file system, e.g. a hidden subfolder of ``folder``), a file in
    ``folder`` that a write replaces is moved there first, unless the block wrote it itself or ``backup`` already
    holds that name: the caller can then restore what the block replaced.
    """
    resolved = Path(folder).resolve()
    current = _RECORDING.get()
    if current is not None and current.folder == resolved:
        yield current.names
        return
    token = _RECORDING.set(_Recording(resolved, backup=None if backup is None else Path(backup)))
    try:
        yield _RECORDING.get().names
    finally:
        _RECORDING.reset(token)


def warn_for_report(logger: logging.Logger, message: str) -> None:
    """Log ``message`` as a warning and keep it for the report of the run writing now (:func:`recording_outputs`),
    whose ``provenance.warnings`` then carry it: a reader's doubt about an input (an assumed thickness, a header
    read one of two ways) belongs beside the results it shaped, not only in a log nobody kept."""
    logger.warning(message)
    current = _RECORDING.get()
    if current is not None and message not in current.notes:
        current.notes.append(message)


def recorded_notes(folder: str | os.PathLike) -> list[str]:
    """The warnings :func:`warn_for_report` kept for the run writing into ``folder`` so far (none outside one)."""
    current = _RECORDING.get()
    if current is None or current.folder != Path(folder).resolve():
        return []
    return list(current.notes)


def unguarded_folder_warning(folder: str | os.PathLike) -> str | None:
    """The warning of the enclosing :func:`folder_lock` of ``folder`` when it could not lock it (a file system without
    locks), for the report; None when it holds the lock or none encloses this call."""
    return _UNLOCKED.get().get(Path(folder).resolve())


def recorded_outputs(folder: str | os.PathLike) -> list[str] | None:
    """The names written into ``folder`` so far by the enclosing :func:`recording_outputs`, or None outside one."""
    current = _RECORDING.get()
    if current is None or current.folder != Path(folder).resolve():
        return None
    return sorted(current.names)


def _try_lock(descriptor: int) -> None:
    """Lock the open file without waiting; OSError when another process holds it. The operating system drops the
    lock when its process ends, however it ends, so a killed run never leaves the folder locked."""
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        import msvcrt

        os.lseek(descriptor, 0, os.SEEK_SET)
        msvcrt.locking(descriptor, msvcrt.LK_NBLCK, 1)
    else:
        import fcntl

        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _held_elsewhere(error: OSError) -> bool:
    """Whether a failed lock means another process holds it (not a file system without locks)."""
    import errno

    return isinstance(error, (BlockingIOError, PermissionError)) or error.errno in (
        errno.EAGAIN, errno.EACCES, getattr(errno, "EDEADLK", -1), getattr(errno, "EDEADLOCK", -1))


def _held_by(holder: str, folder) -> OutputError:
    return OutputError(f"Another CardiacAI run ({holder}) is writing into {folder}. Wait until it has finished, or "
                       "choose another output folder.")


def _holder(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip() or "another process"
    except (OSError, UnicodeDecodeError):  # Windows refuses to read a locked byte range
        return "another process"


def _lock_holder(folder: Path) -> str | None:
    """Who holds ``folder``'s lock (its lock file's text), or None when nobody does (no lock file, or one a killed
    run left). Takes and drops the lock at once when it is free."""
    path = folder / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDWR)
    except OSError:
        return None
    try:
        _try_lock(descriptor)
    except OSError as error:
        return _holder(path) if _held_elsewhere(error) else None
    finally:
        os.close(descriptor)  # closing drops a lock taken here
    return None


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[bool]:
    """Hold ``folder``/.cardiac_ai-writing locked while the block writes into ``folder``, so that two runs never write
    into one folder at once (each would take the other's files for its own). Yields True when a lock file was found
    unlocked: a run writing there was killed before it could clean up.

    Raises
    ------
    OutputError
        Another process holds the lock: names it (process id, host, start time).
    """
    path = Path(folder) / LOCK_NAME
    unguarded = None
    for _ in range(5):
        left_by_killed_run = os.path.lexists(path)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        try:
            _try_lock(descriptor)
        except OSError as error:
            if not _held_elsewhere(error):  # a file system without locks (some network shares): run unguarded
                unguarded = (f"Cannot lock {folder} ({error}): two runs into this folder at once would not be "
                             "stopped.")
                log.warning(unguarded)
                break
            os.close(descriptor)
            raise _held_by(_holder(path), folder) from error
        try:
            same_file = os.path.samestat(os.fstat(descriptor), os.stat(path))
        except OSError:  # the holder before us removed it between our open and our lock
            same_file = False
        if same_file:
            break
        os.close(descriptor)
    else:  # pragma: no cover - five races in a row
        raise OutputError(f"Could not lock {folder} for writing: its lock file keeps changing. Try again.")
    unlocked_token = _UNLOCKED.set({**_UNLOCKED.get(), Path(folder).resolve(): unguarded}) if unguarded else None
    try:
        os.ftruncate(descriptor, 0)
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.write(descriptor, f"process {os.getpid()} on {socket.gethostname()}, started {started}".encode())
        yield left_by_killed_run
    finally:
        try:  # removed while still locked: a process that opened it meanwhile sees another file and tries again
            os.unlink(path)
        except OSError:  # Windows cannot remove an open file: close first
            os.close(descriptor)
            descriptor = -1
            with suppress(OSError):
                os.unlink(path)
        if descriptor >= 0:
            os.close(descriptor)
        if unlocked_token is not None:
            _UNLOCKED.reset(unlocked_token)
