"""Behaviour of cardiac_ai.subprocess_runner with real child processes (tiny ``python -c`` scripts)."""
from __future__ import annotations

import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cardiac_ai.errors import Cancelled, CardiacAIError, InputError
from cardiac_ai.progress import format_progress_line
from cardiac_ai.subprocess_runner import (
    CommandError,
    CompletedRun,
    build_command,
    run_with_progress,
)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _is_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its new parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")
    return True


# -- build_command -------------------------------------------------------------------------------------------------
def test_build_command_orders_positionals_options_and_adds_progress_flag_once(tmp_path):
    command = build_command(
        "convert",
        [tmp_path / "in.nrrd"],
        {"out": tmp_path / "out.seg.nrrd", "overwrite": True, "frame": 0, "series_uid": None, "debug": False,
         "spacing": [1.5, 1.5], "progress_lines": True},
        python_executable="/opt/Slicer/bin/PythonSlicer",
    )
    assert command == [
        "/opt/Slicer/bin/PythonSlicer", "-m", "cardiac_ai", "convert", str(tmp_path / "in.nrrd"),
        "--out", str(tmp_path / "out.seg.nrrd"), "--overwrite", "--frame", "0", "--spacing", "1.5", "1.5",
        "--progress-lines",
    ]


def test_build_command_rejects_dashed_names_and_odd_values():
    with pytest.raises(InputError, match="command name"):
        build_command("--demo", python_executable=sys.executable)
    with pytest.raises(InputError, match="no leading dashes"):
        build_command("demo", options={"--out": "x"}, python_executable=sys.executable)
    with pytest.raises(InputError, match="'out' got"):
        build_command("demo", options={"out": {"a": 1}}, python_executable=sys.executable)


def test_values_and_positionals_starting_with_a_dash_stay_values(tmp_path):
    """A file named '-case.nii.gz' or an output folder '-out' is a path, not an option, in the built command."""
    from cardiac_ai.cli import build_parser

    command = build_command("cam", ["-es.nii.gz"], {"out": "-out", "lv_wall_mm": -1, "ed": "-ed.nii.gz"},
                            python_executable=sys.executable)
    assert command[4:] == [os.path.join(".", "-es.nii.gz"), "--out=-out", "--lv-wall-mm=-1", "--ed=-ed.nii.gz",
                           "--progress-lines"]
    parsed = build_parser().parse_args(command[3:])
    assert (parsed.input, parsed.out, parsed.ed, parsed.lv_wall_mm) == (os.path.join(".", "-es.nii.gz"), "-out",
                                                                        "-ed.nii.gz", -1.0)


def test_built_command_runs_the_real_cli_and_reports_its_error_line(tmp_path):
    # A missing input for `convert` must come back as the real CLI's one-line error, not as a traceback.
    command = build_command("convert", [tmp_path / "missing.nrrd"], {"out": tmp_path / "o.nrrd"},
                            python_executable=sys.executable)
    with pytest.raises(CommandError) as caught:
        run_with_progress(command, cwd=Path(__file__).resolve().parents[1] / "CardiacAI")
    assert caught.value.returncode != 0
    assert str(caught.value).startswith("cardiacai")
    assert "missing.nrrd" in str(caught.value)


# -- progress and output --------------------------------------------------------------------------------------------
def test_run_with_progress_reports_progress_lines_and_other_output_separately():
    script = f"""
        import sys
        print({format_progress_line(0.0, "Reading")!r}, flush=True)
        print("plain stdout line", flush=True)
        print("a warning on stderr", file=sys.stderr, flush=True)
        print({format_progress_line(0.5, "Half way there")!r}, flush=True)
        print("PROGRESS 7 not a fraction", flush=True)
        print({format_progress_line(1.0, "Done")!r}, flush=True)
    """
    progress, output = [], []
    result = run_with_progress(_python(script), on_progress=lambda f, m: progress.append((f, m)),
                               on_output=output.append)
    assert isinstance(result, CompletedRun)
    assert result.returncode == 0
    assert progress == [(0.0, "Reading"), (0.5, "Half way there"), (1.0, "Done")]
    assert set(output) == {"plain stdout line", "a warning on stderr", "PROGRESS 7 not a fraction"}
    assert sorted(result.output_lines) == sorted(output)
    assert result.error_line == "a warning on stderr"


def test_callbacks_run_in_the_calling_thread():
    import threading

    threads = set()
    script = f"print({format_progress_line(0.2, 'x')!r}); print('y')"
    run_with_progress(_python(script), on_progress=lambda f, m: threads.add(threading.get_ident()),
                      on_output=lambda line: threads.add(threading.get_ident()),
                      should_cancel=lambda: threads.add(threading.get_ident()) or False)
    assert threads == {threading.get_ident()}


def test_run_with_progress_passes_cwd_and_env():
    script = "import os; print(os.getcwd()); print(os.environ['CARDIACAI_TEST_VALUE'])"
    env = dict(os.environ, CARDIACAI_TEST_VALUE="42")
    cwd = Path(__file__).resolve().parent
    result = run_with_progress(_python(script), cwd=cwd, env=env)
    assert result.output_lines == [str(cwd), "42"]


# -- failure ------------------------------------------------------------------------------------------------------
def test_nonzero_exit_raises_command_error_with_last_stderr_line():
    script = """
        import sys
        print("working", flush=True)
        print("Traceback-free detail", file=sys.stderr)
        print("cardiacai: error: input.nrrd not found", file=sys.stderr)
        sys.exit(2)
    """
    with pytest.raises(CardiacAIError, match=r"^cardiacai: error: input\.nrrd not found$") as caught:
        run_with_progress(_python(script))
    error = caught.value
    assert isinstance(error, CommandError)
    assert error.returncode == 2
    assert error.error_line == "cardiacai: error: input.nrrd not found"
    assert "working" in error.output_lines


def test_nonzero_exit_without_stderr_names_the_status():
    with pytest.raises(CommandError, match="status 3"):
        run_with_progress(_python("import sys; sys.exit(3)"))


def test_missing_program_raises_cardiacai_error(tmp_path):
    with pytest.raises(CardiacAIError, match="Cannot start"):
        run_with_progress([str(tmp_path / "no-such-program")])


def test_empty_command_and_bad_poll_interval_are_rejected():
    with pytest.raises(InputError, match="empty command"):
        run_with_progress([])
    with pytest.raises(InputError, match="poll_interval_s"):
        run_with_progress(_python("pass"), poll_interval_s=0)


# -- cancellation -------------------------------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="checks process liveness through POSIX signals and /proc")
def test_cancel_kills_child_and_grandchild_quickly_and_raises_cancelled():
    script = """
        import subprocess, sys, time
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print("grandchild", grandchild.pid, flush=True)
        time.sleep(60)
    """
    pids: list[int] = []

    def remember(line: str) -> None:
        if line.startswith("grandchild "):
            pids.append(int(line.split()[1]))

    start = time.monotonic()
    with pytest.raises(Cancelled, match="stopped on request"):
        run_with_progress(_python(script), on_output=remember, should_cancel=lambda: bool(pids), poll_interval_s=0.05)
    assert time.monotonic() - start < 10
    assert len(pids) == 1
    deadline = time.monotonic() + 5
    while _is_alive(pids[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _is_alive(pids[0])


def test_cancel_is_polled_while_the_child_is_silent():
    calls = []

    def cancel_after_a_few_polls() -> bool:
        calls.append(time.monotonic())
        return len(calls) >= 3

    start = time.monotonic()
    with pytest.raises(Cancelled):
        run_with_progress(_python("import time; time.sleep(60)"), should_cancel=cancel_after_a_few_polls,
                          poll_interval_s=0.05)
    assert time.monotonic() - start < 10


def test_cancelled_raised_by_progress_callback_stops_the_child():
    script = f"""
        import time
        print({format_progress_line(0.1, "started")!r}, flush=True)
        time.sleep(60)
    """

    def stop(fraction: float, message: str) -> None:
        raise Cancelled("user pressed cancel")

    start = time.monotonic()
    with pytest.raises(Cancelled, match="user pressed cancel"):
        run_with_progress(_python(script), on_progress=stop)
    assert time.monotonic() - start < 10
