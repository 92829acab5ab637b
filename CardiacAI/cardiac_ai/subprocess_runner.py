"""Run ``cardiacai`` in a child process, with progress, live output and cancellation.

The Slicer modules never compute in Slicer's own process: they write inputs to files, run
``PythonSlicer -m cardiac_ai <command> ... --progress-lines`` and read the results back, as SlicerTotalSegmentator and
SlicerMONAIAuto3DSeg do. This module is the part of that which does not need Slicer, so it is tested here with a plain
Python. The child prints ``PROGRESS <fraction> <message>`` lines on stdout
(:func:`cardiac_ai.progress.format_progress_line`) and, on failure, exits non-zero with a one-line error on stderr.

All callbacks run in the calling thread (Slicer's GUI thread), never in a reader thread: the pipes are drained by
two daemon threads into a queue and the caller's loop takes lines from it, calling ``should_cancel`` at least every
``poll_interval_s``. A Slicer caller makes ``should_cancel`` process GUI events, which keeps the window responsive and
lets a Cancel button be pressed while the child runs.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence, Union

from .errors import Cancelled, CardiacAIError, InputError
from .progress import parse_progress_line

__all__ = ["CompletedRun", "CommandError", "build_command", "run_with_progress"]

log = logging.getLogger(__name__)

# typing.Union: written when Slicer 5.8 (Python 3.9) was supported; 3.10 and later (Slicer 5.10: 3.12) take either.
OptionValue = Union[str, int, float, bool, os.PathLike, Sequence[Union[str, int, float, os.PathLike]], None]

#: Seconds the child gets to exit after SIGTERM before its whole process group is killed.
_TERMINATE_GRACE_S = 2.0


@dataclass(frozen=True)
class CompletedRun:
    """What a finished child process left behind.

    Attributes
    ----------
    returncode : int
        The child's exit status (0 here, since non-zero raises :class:`CommandError`).
    output_lines : list of str
        Every stdout and stderr line that was not a progress line, in arrival order, without line ends.
    error_line : str or None
        The last non-empty stderr line (``cardiacai`` writes its one-line error there), or None.
    """

    returncode: int
    output_lines: list[str] = field(default_factory=list)
    error_line: str | None = None


class CommandError(CardiacAIError):
    """The child exited with a non-zero status. ``str(error)`` is its last stderr line.

    Attributes: ``returncode``, ``command`` (list of str), ``output_lines`` and ``error_line`` as in
    :class:`CompletedRun`.
    """

    def __init__(
        self, message: str, *, returncode: int, command: Sequence[str], output_lines: list[str], error_line: str | None
    ) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.command = list(command)
        self.output_lines = output_lines
        self.error_line = error_line


def build_command(
    subcommand: str,
    positional: Sequence[str | os.PathLike] = (),
    options: Mapping[str, OptionValue] | None = None,
    *,
    python_executable: str | os.PathLike,
) -> list[str]:
    """The argument list that runs ``cardiacai <subcommand>`` as ``<python> -m cardiac_ai ...``.

    Parameters
    ----------
    subcommand : str
        A ``cardiacai`` command such as ``"demo"`` or ``"convert"``.
    positional : sequence of str or path
        Positional arguments, in order, after the command.
    options : mapping of str to value, optional
        ``{"out": path}`` becomes ``--out path`` (``--out=-x`` for a value starting with ``-``, and a positional
        ``-x`` becomes ``./-x``); underscores in names become dashes (``models_dir`` ->
        ``--models-dir``). ``True`` gives a bare flag, ``False`` and ``None`` are left out, a list or tuple gives
        the flag followed by each item (``{"spacing": [1, 1]}`` -> ``--spacing 1 1``). Options keep their order.
    python_executable : str or path
        The interpreter: ``PythonSlicer`` inside Slicer, ``sys.executable`` elsewhere.

    Returns
    -------
    list of str
        ``[python, "-m", "cardiac_ai", subcommand, *positional, *options, "--progress-lines"]``; the progress flag
        is always added, exactly once.

    Raises
    ------
    InputError
        If the command or an option name is empty or starts with ``-``, or a value is not a str, number, bool,
        path or a list of those.
    """
    if not isinstance(subcommand, str) or not subcommand or subcommand.startswith("-"):
        raise InputError(f"build_command needs a cardiacai command name such as 'demo', got {subcommand!r}.")
    if not str(python_executable):
        raise InputError("build_command got an empty python_executable; pass PythonSlicer's path or sys.executable.")
    command = [os.fspath(python_executable), "-m", "cardiac_ai", subcommand]
    for item in positional:
        text = os.fspath(item) if isinstance(item, os.PathLike) else str(item)
        # a relative path such as '-case.nii.gz' would be read as an option: './-case.nii.gz' is the same file
        command.append(os.path.join(os.curdir, text) if text.startswith("-") else text)
    for name, value in (options or {}).items():
        if not isinstance(name, str) or not name or name.startswith("-"):
            raise InputError(f"Option names are plain words such as 'out' (no leading dashes), got {name!r}.")
        flag = "--" + name.replace("_", "-")
        if flag == "--progress-lines" or value is None or value is False:
            continue
        if value is True:
            command.append(flag)
        elif isinstance(value, (list, tuple)):
            command.append(flag)
            command += [_option_text(name, item) for item in value]
        else:
            text = _option_text(name, value)
            # '--out -x' would read '-x' as an option; '--out=-x' cannot (negative numbers too: '--lv-wall-mm=-1')
            command += [f"{flag}={text}"] if text.startswith("-") else [flag, text]
    command.append("--progress-lines")
    return command


def _option_text(name: str, value: object) -> str:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise InputError(
        f"Option {name!r} got {value!r} of type {type(value).__name__}; "
        "pass a str, number, path, True/False/None, or a list of str, numbers or paths."
    )


def run_with_progress(
    command: Sequence[str],
    *,
    on_progress: Callable[[float, str], None] | None = None,
    on_output: Callable[[str], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    cwd: str | os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    poll_interval_s: float = 0.1,
) -> CompletedRun:
    """Run ``command``, report its progress lines and output as they come, and stop it on request.

    Parameters
    ----------
    command : sequence of str
        The program and its arguments, e.g. from :func:`build_command`. Never run through a shell.
    on_progress : callable (fraction, message), optional
        Called for each ``PROGRESS <fraction> <message>`` line of stdout.
    on_output : callable (line), optional
        Called for every other stdout or stderr line, without its line end.
    should_cancel : callable () -> bool, optional
        Called after each line and at least every ``poll_interval_s`` seconds; returning True kills the child
        and all its descendants and raises :class:`~cardiac_ai.errors.Cancelled`.
    cwd : str or path, optional
        Working folder of the child. ``python -m`` puts it first on ``sys.path``, so the Slicer modules pass the
        folder that holds the ``cardiac_ai`` package.
    env : mapping, optional
        The child's environment (default: this process's). ``PYTHONUNBUFFERED=1`` and ``PYTHONIOENCODING=utf-8``
        are added so that lines arrive as they are printed and decode the same on every platform.
    poll_interval_s : float
        Longest wait between two calls of ``should_cancel``, in seconds.

    Returns
    -------
    CompletedRun
        Exit status 0, the non-progress output lines and the last stderr line.

    Raises
    ------
    CommandError
        If the child exits with a non-zero status; the message is its last stderr line.
    Cancelled
        If ``should_cancel`` returned True, or a callback raised Cancelled; the child's process tree is gone.
    InputError
        If ``command`` is empty or ``poll_interval_s`` is not positive.
    CardiacAIError
        If the program cannot be started (not found, not executable).

    Notes
    -----
    The child starts in a new session (POSIX) or process group (Windows, with no console window), so that cancelling
    reaches the processes it started too: SIGTERM to the group, then SIGKILL after a short grace period on POSIX;
    ``taskkill /T /F`` on Windows. Any exception raised by a callback also stops the child before it propagates.
    """
    if not command:
        raise InputError("run_with_progress got an empty command; pass the program and its arguments.")
    if not poll_interval_s > 0:
        raise InputError(f"poll_interval_s must be > 0 seconds, got {poll_interval_s}.")
    command = [os.fspath(part) for part in command]
    child_env = dict(os.environ if env is None else env)
    child_env["PYTHONUNBUFFERED"] = "1"
    child_env["PYTHONIOENCODING"] = "utf-8"

    platform_kwargs: dict = {}
    if os.name == "nt":
        platform_kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
    else:
        platform_kwargs["start_new_session"] = True

    log.debug("Running %s", command)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            cwd=None if cwd is None else os.fspath(cwd),
            env=child_env,
            **platform_kwargs,
        )
    except OSError as e:
        raise CardiacAIError(
            f"Cannot start {command[0]!r}: {e}. Check that the program exists and is executable."
        ) from e

    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    readers = [
        threading.Thread(target=_pump, args=(process.stdout, "stdout", lines), daemon=True),
        threading.Thread(target=_pump, args=(process.stderr, "stderr", lines), daemon=True),
    ]
    for reader in readers:
        reader.start()

    output_lines: list[str] = []
    error_line: str | None = None
    open_streams = 2
    finished = False
    try:
        while open_streams:
            try:
                stream, line = lines.get(timeout=poll_interval_s)
            except queue.Empty:
                stream, line = "", ""
            if stream and line is None:
                open_streams -= 1
            elif stream:
                parsed = parse_progress_line(line) if stream == "stdout" else None
                if parsed is not None:
                    if on_progress is not None:
                        on_progress(*parsed)
                else:
                    output_lines.append(line)
                    if stream == "stderr" and line.strip():
                        error_line = line.strip()
                    if on_output is not None:
                        on_output(line)
            if open_streams and should_cancel is not None and should_cancel():
                raise Cancelled(f"Cancelled: {_describe(command)} was stopped on request.")
        # Both pipes are closed: the child has exited (or closed them); wait for its status, still cancellable.
        while process.poll() is None:
            if should_cancel is not None and should_cancel():
                raise Cancelled(f"Cancelled: {_describe(command)} was stopped on request.")
            time.sleep(min(poll_interval_s, 0.05))
        finished = True
    finally:
        if not finished:
            _kill_tree(process)
        for reader in readers:
            reader.join(timeout=1.0)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()

    returncode = process.returncode
    if returncode != 0:
        message = error_line or (
            f"{_describe(command)} exited with status {returncode} and wrote no error message; "
            "see its output above for the cause."
        )
        raise CommandError(
            message, returncode=returncode, command=command, output_lines=output_lines, error_line=error_line
        )
    return CompletedRun(returncode=returncode, output_lines=output_lines, error_line=error_line)


def _pump(pipe, stream: str, lines: queue.Queue) -> None:
    """Copy lines of one pipe into the queue, then a (stream, None) end marker."""
    try:
        for line in pipe:
            lines.put((stream, line.rstrip("\r\n")))
    except (OSError, ValueError):  # pipe closed under us while cancelling
        pass
    finally:
        lines.put((stream, None))


def _kill_tree(process: subprocess.Popen) -> None:
    """Stop the child and every process in its session / process group; wait until the child is reaped."""
    if os.name == "nt":
        if process.poll() is None:
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(process.pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                creationflags=subprocess.CREATE_NO_WINDOW,
                check=False,
            )
            try:
                process.wait(timeout=_TERMINATE_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
        process.wait()
        return
    group = process.pid  # start_new_session=True made the child the leader of its own process group
    _signal_group(group, signal.SIGTERM)
    try:
        process.wait(timeout=_TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    # Descendants may outlive the leader or ignore SIGTERM: kill whatever is left of the group.
    _signal_group(group, signal.SIGKILL)
    process.wait()


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):  # group already gone
        pass


def _describe(command: Sequence[str]) -> str:
    """``cardiacai demo`` for ``[python, -m, cardiac_ai, demo, ...]``, else the program name."""
    if len(command) >= 4 and command[1:3] == ["-m", "cardiac_ai"]:
        return f"cardiacai {command[3]}"
    return os.path.basename(command[0])
