"""``--progress-lines`` of the training scripts: each stage its share of the run, the trainer's epochs inside it.

The Slicer training module runs the scripts with ``--progress-lines`` (``slicer_results.training_command``) and reads
the ``PROGRESS <fraction> <message>`` lines with ``progress.parse_progress_line`` (in ``subprocess_runner``).
"""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import pytest

from cardiac_ai.datasets import save_split
from cardiac_ai.datasets.splits import Split
from cardiac_ai.progress import StageProgress, parse_progress_line
from cardiac_ai.slicer_results import TRAINING_TASKS, training_command

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _progress(text: str) -> list[tuple[float, str]]:
    """The (fraction, message) of every progress line of ``text``; every line that starts with PROGRESS must parse."""
    lines = [line for line in text.splitlines() if line.startswith("PROGRESS")]
    parsed = [parse_progress_line(line) for line in lines]
    assert None not in parsed, [line for line, p in zip(lines, parsed) if p is None]
    return parsed


def _assert_a_whole_run(progress: list[tuple[float, str]]) -> None:
    fractions = [fraction for fraction, _ in progress]
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions)
    assert all(a <= b for a, b in zip(fractions, fractions[1:])), fractions  # never backwards
    assert fractions[-1] == 1.0


# -- the shared helper -----------------------------------------------------------------------------------------------
def test_stages_share_the_run_by_weight_and_never_go_back():
    out = io.StringIO()
    seen = []
    run = StageProgress({"prepare": 1, "train": 3, "register": 0}, stream=out)
    run.stage("prepare")
    train = run.stage("train", then=lambda f, m: seen.append((f, m)), part=(0.0, 0.5))
    for epoch in range(1, 3):
        train(epoch / 2, f"epoch {epoch}/2")
    train(0.2, "a late report")  # below the last fraction: raised to it, not printed again
    run.stage("train", part=(0.5, 1.0))(1.0, "second network done")
    run.stage("register")
    run.finish()
    progress = _progress(out.getvalue())
    _assert_a_whole_run(progress)
    assert progress == [(0.0, "stage prepare (1/3)"), (0.25, "stage train (2/3)"), (0.4375, "train: epoch 1/2"),
                        (0.625, "train: epoch 2/2"), (1.0, "train: second network done"),
                        (1.0, "stage register (3/3)"), (1.0, "Done")]
    assert seen == [(0.5, "epoch 1/2"), (1.0, "epoch 2/2"), (0.2, "a late report")]  # the script's own logger


def test_a_trainer_reporting_every_batch_prints_a_line_only_when_the_fraction_moves():
    out = io.StringIO()
    run = StageProgress({"train": 1}, stream=out)
    batch = run.stage("train")
    for index in range(30_000):
        batch(index / 30_000, f"batch {index}")
    run.finish()
    assert len(out.getvalue().splitlines()) <= 10_002  # 4 decimals: at most 10,001 fractions, plus "Done"


def test_without_progress_lines_nothing_is_printed_and_the_script_logger_is_unchanged(capsys):
    def logger(fraction, message):
        pass

    run = StageProgress({"prepare": 1, "train": 1}, enabled=False)
    assert run.stage("prepare") is None and run.stage("train", then=logger) is logger
    run.finish()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("weights", "match"),
    [({}, "weight > 0"), ({"a": 0}, "weight > 0"), ({"a": -1}, "finite numbers >= 0"),
     ({"a": float("nan")}, "finite numbers >= 0")],
)
def test_bad_stage_weights_are_refused(weights, match):
    with pytest.raises(ValueError, match=match):
        StageProgress(weights)


def test_an_unknown_stage_or_part_is_refused():
    run = StageProgress({"train": 1})
    with pytest.raises(ValueError, match="Unknown stage 'regions'"):
        run.stage("regions")
    with pytest.raises(ValueError, match="part"):
        run.stage("train", part=(0.5, 0.2))


# -- the scripts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", sorted(t for t, spec in TRAINING_TASKS.items() if spec.script))
def test_the_slicer_module_runs_every_training_script_with_progress_lines(task, tmp_path):
    command = training_command(task, python_executable="python", data=tmp_path, out=tmp_path / "run", epochs=2,
                               scripts_dir=SCRIPTS)
    assert command[-1] == "--progress-lines" and command.count("--progress-lines") == 1
    assert "--progress-lines" in (SCRIPTS / TRAINING_TASKS[task].script).read_text()


def _fibrosis_script():
    path = SCRIPTS / "train_emidec_fibrosis.py"
    spec = importlib.util.spec_from_file_location("train_emidec_fibrosis_progress", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fibrosis_script_without_data_reports_its_stages_up_to_one(tmp_path, capsys):
    """The register stage on an empty work folder needs no data: a run of the script from start to end."""
    split = tmp_path / "split.json"
    save_split(Split(("Case_P001",), ("Case_N002",), ("Case_P003",), groups={"Case_P001": "P", "Case_N002": "N",
                                                                           "Case_P003": "P"}), split)
    script = _fibrosis_script()
    code = script.main(["--data", str(tmp_path / "no_data"), "--work", str(tmp_path / "work"), "--split-file",
                        str(split), "--stage", "register", "--device", "cpu", "--progress-lines"])
    assert code == 0
    progress = _progress(capsys.readouterr().out)
    _assert_a_whole_run(progress)
    assert [m for _, m in progress] == ["stage split (1/2)", "stage register (2/2)", "Done"]


@pytest.mark.shared_data
def test_fibrosis_script_reports_every_stage_and_the_epochs_inside_them(emidec_root, tmp_path, capsys):
    script = _fibrosis_script()
    code = script.main([
        "--data", str(emidec_root), "--work", str(tmp_path / "work"), "--split-file", str(tmp_path / "split.json"),
        "--max-patients", "1", "--tiny", "--crop-size", "64", "--epochs-myocardium", "1", "--epochs-classifier", "1",
        "--epochs-stack", "1", "--epochs-unet", "1", "--batch-size", "8", "--device", "cpu", "--progress-lines",
    ])
    assert code == 0
    progress = _progress(capsys.readouterr().out)
    _assert_a_whole_run(progress)
    messages = [m for _, m in progress]
    started = [m.split()[1] for m in messages if m.startswith("stage ")]
    assert started == list(script.STAGES)  # every stage in order, each once
    for stage in ("myocardium", "classifier_slice", "classifier_stack", "weak_unet", "pixel_unet"):
        assert any(m.startswith(f"{stage}: epoch 1/1") for m in messages), stage  # the trainer's progress
    # the trainer's epoch moves the bar inside its stage: a classifier epoch lies strictly inside its share
    inside = [f for f, m in progress if m.startswith("classifier_slice: epoch")]
    bounds = [f for f, m in progress if m.startswith(("stage classifier_slice", "stage classifier_stack"))]
    assert bounds[0] < inside[0] <= bounds[1]
