"""Output folders and batches never lose an earlier result, never mix two runs, and refuse bad paths with the
package's own errors (``pipeline.output_folder``, ``run_batch``, ``list_batch_cases``, ``io.atomic``).

The work itself is faked (jobs that write a few small files through the atomic writers), so these run in seconds.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cardiac_ai import cli, pipeline
from cardiac_ai.cli import main
from cardiac_ai.errors import DataError, InputError, OutputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import prepare_output_dir, write_volume
from cardiac_ai.io.atomic import write_text_atomic
from cardiac_ai.io.report import write_report
from cardiac_ai.pipeline import EARLIER_RUN_PREFIX, BatchCase, list_batch_cases, output_folder, run_batch
from cardiac_ai.provenance import Provenance


def _contents(folder: Path) -> dict[str, str]:
    """Every entry of ``folder`` (hidden ones included): file -> text, folder -> '<dir>'."""
    return {p.name: ("<dir>" if p.is_dir() else p.read_text()) for p in folder.iterdir()}


def _run(folder: Path, files: dict[str, str], *, overwrite: bool = False, command: str = "segment-cine") -> None:
    """A finished run: ``files`` written atomically, then its report."""
    with output_folder(folder, overwrite=overwrite) as out:
        for name, text in files.items():
            write_text_atomic(out / name, text)
        write_report(out, provenance=Provenance(command=command), results={"input": files.get("input", "")})


class _Boom(Exception):
    """An error type none of the package's code knows (as nibabel's ImageFileError)."""


# -- 1. an interrupted --overwrite rerun -------------------------------------------------------------------------
@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError, _Boom])
def test_an_interrupted_overwrite_rerun_gets_the_earlier_run_back_exactly(tmp_path, stop):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "ED labels", "qc_slices.csv": "qc", "input": "ED"})
    (out / "notes.txt").write_text("the user's own file")
    before = _contents(out)
    with pytest.raises(stop), output_folder(out, overwrite=True) as folder:
        write_text_atomic(folder / "labels.nii.gz", "ES labels")
        write_text_atomic(folder / "new_table.csv", "only this run makes it")
        # while the run writes, the folder does not look finished, and the earlier run waits beside it
        assert not (folder / "report.json").exists()
        backups = [p for p in folder.iterdir() if p.name.startswith(EARLIER_RUN_PREFIX)]
        assert len(backups) == 1 and (backups[0] / "report.json").is_file()
        raise stop("interrupted")
    assert _contents(out) == before


def test_a_failed_rerun_gets_back_a_file_it_replaced_that_an_older_report_did_not_list(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "labels.csv").write_text("old labels")
    (out / "report.json").write_text(json.dumps({"provenance": {"command": "segment-cine"}}))  # no "outputs"
    before = _contents(out)
    with pytest.raises(InputError), output_folder(out, overwrite=True) as folder:
        write_text_atomic(folder / "labels.csv", "new labels")
        raise InputError("bad input")
    assert _contents(out) == before


def test_a_finished_rerun_keeps_the_users_files_and_nothing_of_the_earlier_run(tmp_path):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "ED labels", "qc_slices.csv": "qc"})
    (out / "notes.txt").write_text("mine")
    _run(out, {"labels.nii.gz": "ES labels"}, overwrite=True)
    assert _contents(out).keys() == {"labels.nii.gz", "report.json", "notes.txt"}  # no backup left behind
    assert (out / "labels.nii.gz").read_text() == "ES labels" and (out / "notes.txt").read_text() == "mine"


def test_a_run_that_returns_without_its_report_gets_the_earlier_run_back(tmp_path):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "ED labels"})
    before = _contents(out)
    with output_folder(out, overwrite=True) as folder:
        write_text_atomic(folder / "labels.nii.gz", "half a run")
    assert _contents(out) == before


def test_a_backup_left_by_a_hard_kill_is_named_in_a_warning_and_kept(tmp_path, caplog):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "ED labels"})
    stale = out / f"{EARLIER_RUN_PREFIX}killed"
    stale.mkdir()
    (stale / "report.json").write_text("{}")
    with caplog.at_level(logging.WARNING, logger="cardiac_ai"):
        _run(out, {"labels.nii.gz": "ES labels"}, overwrite=True)
    assert str(stale) in caplog.text and (stale / "report.json").is_file()


def _fake_cine_command(monkeypatch, *, interrupt: bool) -> list:
    """segment-cine with its models and work faked: the job writes labels, then (interrupt) is stopped by Ctrl-C."""
    loads: list = []
    monkeypatch.setattr(cli, "_cine_models", lambda args, provenance: loads.append(args.input))

    def segment_cine_file(input_path, out_dir, **kwargs):
        with output_folder(out_dir, overwrite=True, inputs=[input_path]) as out:
            write_text_atomic(out / "labels.nii.gz", f"labels of {Path(input_path).name}")
            if interrupt:
                raise KeyboardInterrupt
            write_report(out, provenance=Provenance(command="segment-cine"), results={"input": str(input_path)})

    monkeypatch.setattr(pipeline, "segment_cine_file", segment_cine_file)
    return loads


def test_cli_overwrite_rerun_interrupted_after_its_labels_keeps_the_earlier_run(tmp_path, monkeypatch, capsys):
    for name in ("ED.nii.gz", "ES.nii.gz"):
        (tmp_path / name).write_text("image")
    out = tmp_path / "o"
    _fake_cine_command(monkeypatch, interrupt=False)
    assert main(["segment-cine", str(tmp_path / "ED.nii.gz"), "--out", str(out), "--no-qc", "--quiet"]) == 0
    before = _contents(out)
    _fake_cine_command(monkeypatch, interrupt=True)
    code = main(["segment-cine", str(tmp_path / "ES.nii.gz"), "--out", str(out), "--no-qc", "--quiet",
                 "--overwrite"])
    assert code == 130 and "interrupted" in capsys.readouterr().err
    assert _contents(out) == before and "ED.nii.gz" in json.loads(before["report.json"])["input"]


# -- 2, 6. batch: a failed redo keeps the earlier result; any error of a case is that case's ------------------------
def _writing_job(fail: dict):
    """A batch job that writes like a command; for the case ids in ``fail`` it writes labels, then raises."""
    def job(case, case_dir):
        with output_folder(case_dir, overwrite=True) as folder:
            write_text_atomic(folder / "labels.csv", f"labels of run {fail.get('run', 1)}")
            if case.case_id in fail:
                raise fail[case.case_id]
            report = {"heart_found": True, "volumes_ml": {"rv_blood_pool": 150.0, "lv_myocardium": 98.0,
                                                          "lv_blood_pool": 120.0}, "lv_mass_g": 102.9}
            write_report(folder, provenance=Provenance(command="segment-cine"), results=report)
        return {"provenance": {"command": "segment-cine", "warnings": []}, **report}
    return job


def _summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


@pytest.mark.parametrize("error", [InputError("not a short-axis stack"), _Boom("truncated file")],
                         ids=["package-error", "foreign-error"])
def test_a_redone_batch_case_that_fails_keeps_its_earlier_result_and_the_summary_says_so(tmp_path, error):
    cases = [BatchCase("p1", (tmp_path / "p1.nii.gz",)), BatchCase("p2", (tmp_path / "p2.nii.gz",))]
    run_batch(cases, tmp_path / "out", task="segment-cine", models=None, job=_writing_job({}))
    before = _contents(tmp_path / "out" / "p1")
    rows = run_batch(cases, tmp_path / "out", task="segment-cine", models=None, resume=False,
                     job=_writing_job({"p1": error, "run": 2}))
    assert _contents(tmp_path / "out" / "p1") == before  # not an empty folder
    summary = _summary(tmp_path / "out")
    assert summary["p1"]["status"] == "failed" and type(error).__name__ in summary["p1"]["error"]
    assert rows[1]["status"] == "ok" and (tmp_path / "out" / "p2" / "labels.csv").read_text() == "labels of run 2"


def test_an_interrupted_batch_keeps_the_earlier_result_of_the_case_it_was_redoing(tmp_path):
    cases = [BatchCase("p1", (tmp_path / "p1.nii.gz",))]
    run_batch(cases, tmp_path / "out", task="segment-cine", models=None, job=_writing_job({}))
    before = _contents(tmp_path / "out" / "p1")
    with pytest.raises(KeyboardInterrupt):
        run_batch(cases, tmp_path / "out", task="segment-cine", models=None, resume=False,
                  job=_writing_job({"p1": KeyboardInterrupt(), "run": 2}))
    assert _contents(tmp_path / "out" / "p1") == before


def test_a_failing_new_case_leaves_no_folder_and_a_foreign_error_does_not_stop_the_batch(tmp_path):
    cases = [BatchCase("bad", (tmp_path / "bad.nii.gz",)), BatchCase("good", (tmp_path / "good.nii.gz",))]
    rows = run_batch(cases, tmp_path / "out", task="segment-cine", models=None,
                     job=_writing_job({"bad": _Boom("not a gzip file")}))
    assert [r["status"] for r in rows] == ["failed", "ok"]
    assert rows[0]["error"] == "_Boom: not a gzip file" and not (tmp_path / "out" / "bad").exists()


def test_a_batch_worker_keeps_the_earlier_result_of_a_case_whose_redo_fails(tmp_path, monkeypatch):
    case_dir = tmp_path / "out" / "p1"
    _run(case_dir, {"labels.csv": "first"})
    before = _contents(case_dir)

    def failing(task, case, folder, **kwargs):
        write_text_atomic(folder / "labels.csv", "second")
        raise _Boom("corrupt")

    monkeypatch.setattr(pipeline, "_run_batch_case", failing)
    monkeypatch.setitem(pipeline._worker_state, "models", None)
    monkeypatch.setitem(pipeline._worker_state, "qc", None)
    values, _ = pipeline._batch_case_in_worker("segment-cine", BatchCase("p1", (tmp_path / "p1.nii.gz",)),
                                               case_dir, None)
    assert values == {"error": "_Boom: corrupt"} and _contents(case_dir) == before


# -- 3, 7. case ids and the files of a batch folder ----------------------------------------------------------------
@pytest.mark.parametrize("case_id", ["../precious", "/tmp/elsewhere", ".", "..", "a/b", "a\\b", "C:x", "summary.csv"])
def test_a_batch_csv_refuses_a_case_id_that_is_a_path(tmp_path, case_id):
    listing = tmp_path / "cases.csv"
    listing.write_text(f"case_id,input\ngood,a.nii.gz\n{case_id},x.nii.gz\n")
    with pytest.raises(DataError, match="line 3.*case id"):
        list_batch_cases(listing, task="segment-cine")


@pytest.mark.parametrize("case_id", ["CON", "nul", "Com1", "lpt9.scan", "a|b", "x<y", "why?", "x*", 'q"t', "dot."])
def test_a_batch_csv_refuses_a_case_id_windows_cannot_name_a_folder_with(tmp_path, case_id):
    listing = tmp_path / "cases.csv"
    listing.write_text(f'case_id,input\ngood,a.nii.gz\n"{case_id.replace(chr(34), chr(34) * 2)}",x.nii.gz\n')
    with pytest.raises(DataError, match="line 3.*cannot name a folder on Windows"):
        list_batch_cases(listing, task="segment-cine")


def test_a_batch_folder_refuses_a_file_whose_name_windows_cannot_make_a_folder_of(tmp_path):
    for name in ("p1.nii.gz", "CON.nii.gz"):
        (tmp_path / name).write_text("image")
    with pytest.raises(DataError, match="CON.nii.gz.*'CON' cannot name a folder on Windows.*case_id,input"):
        list_batch_cases(tmp_path, task="segment-cine")


@pytest.mark.parametrize("case_id, problem", [("tab\there", "control character"), ("x" * 201, "longer than"),
                                              ("COM\u00b9", "device name")])
def test_a_batch_csv_refuses_control_characters_overlong_and_superscript_port_ids(tmp_path, case_id, problem):
    listing = tmp_path / "cases.csv"
    listing.write_text(f"case_id,input\n{case_id},x.nii.gz\n", encoding="utf-8")
    with pytest.raises(DataError, match=problem):
        list_batch_cases(listing, task="segment-cine")


def test_a_batch_refuses_case_ids_that_differ_only_in_case(tmp_path):
    listing = tmp_path / "cases.csv"
    listing.write_text("case_id,input\nP01,a.nii.gz\np01,b.nii.gz\nP02,c.nii.gz\n")
    with pytest.raises(DataError, match="ignoring upper/lower case.*P01 / p01"):
        list_batch_cases(listing, task="segment-cine")


def test_a_batch_csv_keeps_case_ids_that_only_resemble_windows_device_names(tmp_path):
    names = ["console", "com10", "nullable", "patient001.v2", "aux_scan", "patient_é"]
    listing = tmp_path / "cases.csv"
    listing.write_text("case_id,input\n" + "".join(f"{n},{n}.nii.gz\n" for n in names), encoding="utf-8")
    assert [c.case_id for c in list_batch_cases(listing, task="segment-cine")] == names


def test_a_batch_with_a_case_id_leading_out_of_out_touches_nothing(tmp_path, capsys):
    precious = tmp_path / "o" / "precious"
    precious.mkdir(parents=True)
    (precious / "report.json").write_text(json.dumps({"outputs": ["report.json", "data.nii.gz"]}))
    (precious / "data.nii.gz").write_text("precious")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.nii.gz").write_text("image")
    listing = tmp_path / "in" / "cases.csv"
    listing.write_text("case_id,input\n../precious,../in/x.nii.gz\n")
    code = main(["batch", str(listing), "--out", str(tmp_path / "o" / "run"), "--overwrite", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "'../precious'" in err and len(err.strip().splitlines()) == 1
    assert (precious / "data.nii.gz").read_text() == "precious" and not (tmp_path / "o" / "run").exists()


def test_a_batch_folder_skips_hidden_names_with_a_warning(tmp_path, caplog):
    for name in (".nii.gz", "._p1.nii.gz", "p1.nii.gz"):
        (tmp_path / name).write_text("image")
    with caplog.at_level(logging.WARNING, logger="cardiac_ai"):
        cases = list_batch_cases(tmp_path, task="segment-cine")
    assert [c.case_id for c in cases] == ["p1"]
    assert ".nii.gz" in caplog.text and "._p1.nii.gz" in caplog.text


def test_a_fibrosis_batch_folder_names_a_lone_png_it_does_not_take(tmp_path, caplog):
    (tmp_path / "Case_P001").mkdir()
    (tmp_path / "Case_P002.png").write_bytes(b"png")
    with caplog.at_level(logging.WARNING, logger="cardiac_ai"):
        cases = list_batch_cases(tmp_path, task="fibrosis")
    assert [c.case_id for c in cases] == ["Case_P001"] and "Case_P002.png" in caplog.text


# -- 4. prepare_output_dir -----------------------------------------------------------------------------------------
def test_prepare_output_dir_refuses_a_folder_inside_an_input_folder(tmp_path):
    series = tmp_path / "dcm_dir"
    series.mkdir()
    with pytest.raises(OutputError, match="inside the input folder"):
        prepare_output_dir(series / "out", overwrite=True, inputs=[series])
    assert not (series / "out").exists()


def test_prepare_output_dir_refuses_a_path_under_a_file(tmp_path):
    (tmp_path / "some_file.txt").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        prepare_output_dir(tmp_path / "some_file.txt" / "sub")


def test_prepare_output_dir_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    out = tmp_path / "read_only"
    out.mkdir()
    with monkeypatch.context() as patched:  # as a user without the permission sees it
        patched.setattr(os, "access", lambda path, mode: False)
        with pytest.raises(OutputError, match="not writable"):
            prepare_output_dir(out)

    def no_space(*args, **kwargs):  # as root sees a read-only mount: os.access says yes, the write fails
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", no_space)
    with pytest.raises(OutputError, match="not writable"):
        prepare_output_dir(out)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_prepare_output_dir_refuses_a_read_only_folder(tmp_path):
    out = tmp_path / "read_only"
    out.mkdir()
    out.chmod(0o555)
    try:
        with pytest.raises(OutputError, match="not writable"):
            prepare_output_dir(out)
    finally:
        out.chmod(0o755)


@pytest.mark.parametrize("where", ["inside-input", "under-a-file"])
def test_cli_refuses_a_bad_output_folder_before_the_models_load(tmp_path, monkeypatch, capsys, where):
    series = tmp_path / "dcm_dir"
    series.mkdir()
    (tmp_path / "some_file.txt").write_text("x")
    out = series / "out" if where == "inside-input" else tmp_path / "some_file.txt" / "sub"
    loads = _fake_cine_command(monkeypatch, interrupt=False)
    code = main(["segment-cine", str(series), "--out", str(out), "--no-qc", "--quiet"])
    err = capsys.readouterr().err
    assert code == 4 and "output error" in err and len(err.strip().splitlines()) == 1
    assert loads == [] and not (series / "out").exists()


# -- 5. run_batch's own folder and its CSV ------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["a-file", "under-a-file"])
def test_run_batch_refuses_an_out_that_is_or_lies_under_a_file(tmp_path, where):
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if where == "a-file" else tmp_path / "file" / "x"
    with pytest.raises(OutputError, match="file"):
        run_batch([BatchCase("p1", (tmp_path / "p1.nii.gz",))], out, task="segment-cine", models=None,
                  job=_writing_job({}))
    with pytest.raises(OutputError, match="file"):  # the check the command makes before the models load
        pipeline.check_batch_folders([BatchCase("p1", (tmp_path / "p1.nii.gz",))], out, task="segment-cine")


def test_cli_batch_into_a_file_is_an_output_error(tmp_path, capsys):
    (tmp_path / "p1.nii.gz").write_text("image")
    (tmp_path / "o.txt").write_text("x")
    listing = tmp_path / "cases.csv"
    listing.write_text("case_id,input\np1,p1.nii.gz\n")
    code = main(["batch", str(listing), "--out", str(tmp_path / "o.txt"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 4 and "o.txt" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [b"\xff\xfe\x00garbage", b"case_id,input\np1," + b"x" * 200_000 + b"\n"],
                         ids=["not-utf8", "csv-error"])
def test_a_batch_csv_that_cannot_be_read_is_a_data_error_naming_it(tmp_path, capsys, content):
    listing = tmp_path / "bin.csv"
    listing.write_bytes(content)
    with pytest.raises(DataError, match="bin.csv"):
        list_batch_cases(listing, task="segment-cine")
    code = main(["batch", str(listing), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "bin.csv" in err and len(err.strip().splitlines()) == 1


# -- 8. ECV with a post-contrast map that is not fitted in the blood pool ----------------------------------------
def test_ecv_names_the_post_contrast_map_whose_blood_pool_is_zero(tmp_path, monkeypatch):
    from cardiac_ai.mapping import pipeline as mapping_pipeline

    j, i = np.mgrid[:32, :32]
    radius = np.hypot(j - 16, i - 16)
    labels = np.where(radius < 6, 3, np.where(radius < 9, 2, 0)).astype(np.uint8)[None]
    geometry = Geometry((1.5, 1.5, 8.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    native = np.where(labels == 3, 1550.0, np.where(labels == 2, 1000.0, 800.0)).astype(np.float32)
    post = np.where(labels == 3, 0.0, 450.0).astype(np.float32)  # the fit left the blood pool out
    write_volume(Volume(native, geometry), tmp_path / "native.nii.gz")
    write_volume(Volume(post, geometry), tmp_path / "post.nii.gz")
    stats = SimpleNamespace(median=1000.0, n_pixels=10)
    analysis = SimpleNamespace(myocardium=stats, lv_blood_pool=stats, labels=Volume(labels, geometry),
                               provenance=Provenance(command="ecv"), septal={}, segment_map=Volume(labels * 0, geometry))
    monkeypatch.setattr(mapping_pipeline, "analyse_map", lambda *args, **kwargs: analysis)
    with pytest.raises(InputError, match=r"post-contrast T1 map .*post\.nii\.gz.*LV blood pool.*zero \(not fitted\)"):
        pipeline.ecv_files(tmp_path / "native.nii.gz", tmp_path / "post.nii.gz", tmp_path / "e", models=None,
                           haematocrit=0.42, device="cpu")
    assert not (tmp_path / "e").exists()


def test_a_case_folder_run_as_one_run_keeps_the_earlier_result_when_it_fails(tmp_path):
    from cardiac_ai.pipeline import case_folder_as_one_run

    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "report.json").write_text('{"old": true}')
    (folder / "structures.seg.nrrd").write_text("old estimate")
    with pytest.raises(RuntimeError):
        with case_folder_as_one_run(folder):
            assert not (folder / "report.json").exists()  # unfinished while it runs
            (folder / "segmentation.seg.nrrd").write_text("half")
            raise RuntimeError("Slicer could not write")
    assert sorted(p.name for p in folder.iterdir()) == ["report.json", "structures.seg.nrrd"]
    assert (folder / "report.json").read_text() == '{"old": true}'
    with case_folder_as_one_run(folder):
        (folder / "report.json").write_text('{"new": true}')
    assert sorted(p.name for p in folder.iterdir()) == ["report.json"]  # nothing of the earlier run, no backup


# -- two runs at once, SIGTERM, user files in a batch folder (session 22 audit) ----------------------------------
def _hold_folder(out: Path):
    """A second process inside output_folder(out), until its stdin closes."""
    import subprocess
    import sys
    import time

    code = ("import sys; from cardiac_ai.pipeline import output_folder\n"
            f"with output_folder({str(out)!r}, overwrite=True):\n"
            "    print('inside', flush=True); sys.stdin.read()\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "inside"
    time.sleep(0.05)
    return holder


@pytest.mark.skipif(os.name == "nt", reason="the subprocess's stdin handling is POSIX-only here")
def test_a_second_run_into_a_folder_another_run_is_writing_is_refused_and_changes_nothing(tmp_path):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "first run"})
    before = {k: v for k, v in _contents(out).items()}
    holder = _hold_folder(out)
    try:
        with pytest.raises(OutputError, match=rf"Another CardiacAI run \(process {holder.pid} on .*is writing"):
            with output_folder(out, overwrite=True) as folder:
                write_text_atomic(folder / "labels.nii.gz", "second run")
        with pytest.raises(OutputError, match="Another CardiacAI run"):
            run_batch([BatchCase("p1", (tmp_path / "p1.nii.gz",))], out, task="segment-cine", models=None,
                      job=_writing_job({}))
        with pytest.raises(OutputError, match=rf"Another CardiacAI run \(process {holder.pid} on "):
            prepare_output_dir(out)  # without --overwrite too: not taken for a killed run's leftovers
        with pytest.raises(OutputError, match="Another CardiacAI run"), pipeline.case_folder_as_one_run(out):
            raise AssertionError("the headless Slicer batch's case must not start")  # its case folders lock too
    finally:
        holder.communicate("")
    assert holder.returncode == 0
    assert _contents(out) == before  # the holder finished without a report: the first run is back, no lock left


def test_a_lock_left_by_a_killed_run_is_taken_over_and_removed(tmp_path):
    from cardiac_ai.io.atomic import LOCK_NAME, folder_lock

    (tmp_path / LOCK_NAME).write_text("process 1 on elsewhere, started long ago")  # its process is gone: unlocked
    with folder_lock(tmp_path) as left_by_killed_run:
        assert left_by_killed_run
        assert f"process {os.getpid()} on" in (tmp_path / LOCK_NAME).read_text()
    assert not (tmp_path / LOCK_NAME).exists()
    with folder_lock(tmp_path) as left_by_killed_run:
        assert not left_by_killed_run


@pytest.mark.skipif(os.name == "nt", reason="SIGTERM is POSIX")
def test_sigterm_cleans_up_as_ctrl_c_and_exits_143(tmp_path, monkeypatch, capsys):
    import signal

    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "earlier", "input": "ED"})
    before = _contents(out)

    def terminated_while_writing(args, progress):
        with output_folder(args.out, overwrite=True) as folder:
            write_text_atomic(folder / "labels.nii.gz", "half of a new run")
            os.kill(os.getpid(), signal.SIGTERM)
            raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setitem(cli._HANDLERS, "convert", terminated_while_writing)
    handler_before = signal.getsignal(signal.SIGTERM)
    assert main(["convert", str(tmp_path / "in.nii.gz"), "--out", str(out)]) == 143
    assert "terminated (SIGTERM)" in capsys.readouterr().err
    assert _contents(out) == before
    assert signal.getsignal(signal.SIGTERM) == handler_before  # not left installed after the command


def test_ctrl_c_while_the_earlier_outputs_are_set_aside_puts_them_back(tmp_path, monkeypatch):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "earlier", "qc_slices.csv": "qc"})
    before = _contents(out)
    real_replace, calls = os.replace, []

    def replace_then_interrupt(source, target):
        calls.append(source)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(pipeline.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt), output_folder(out, overwrite=True):
        raise AssertionError("the run must not start")
    monkeypatch.undo()
    assert _contents(out) == before


def _nifti(path: Path) -> Path:
    write_volume(Volume(np.zeros((2, 4, 4), np.float32), Geometry(spacing_mm=(1.0, 1.0, 8.0))), path)
    return path


def test_a_batch_refuses_case_folders_and_a_summary_holding_the_users_own_files(tmp_path, capsys):
    source = tmp_path / "cohort"
    source.mkdir()
    _nifti(source / "p1.nii.gz")
    _nifti(source / "p2.nii.gz")
    out = tmp_path / "out"
    (out / "p1").mkdir(parents=True)
    (out / "p1" / "labels.nii.gz").write_text("my manual labels")
    code = main(["batch", str(source), "--task", "segment-cine", "--out", str(out)])
    assert code == 4 and "holds files that no CardiacAI run wrote (labels.nii.gz" in capsys.readouterr().err
    assert (out / "p1" / "labels.nii.gz").read_text() == "my manual labels"
    (out / "p1" / "labels.nii.gz").unlink()
    (out / "summary.csv").write_text("patient,my_manual_EF\np1,55\n")
    assert main(["batch", str(source), "--task", "segment-cine", "--out", str(out), "--overwrite"]) == 4
    assert "is not a batch summary" in capsys.readouterr().err
    assert (out / "summary.csv").read_text() == "patient,my_manual_EF\np1,55\n"
    cases_csv = tmp_path / "csvout" / "summary.csv"  # a cases CSV saved where the batch writes its summary
    cases_csv.parent.mkdir()
    cases_csv.write_text(f"case_id,input\np1,{source / 'p1.nii.gz'}\n")
    assert main(["batch", str(cases_csv), "--task", "segment-cine", "--out", str(cases_csv.parent)]) == 4
    assert cases_csv.read_text().startswith("case_id,input\n")


def test_a_batch_over_part_of_a_cohort_keeps_the_summary_rows_of_the_cases_finished_before(tmp_path):
    everyone = [BatchCase(c, (tmp_path / f"{c}.nii.gz",)) for c in ("p1", "p2", "p3")]
    run_batch(everyone, tmp_path / "out", task="segment-cine", models=None, job=_writing_job({}))
    rows = run_batch(everyone[2:], tmp_path / "out", task="segment-cine", models=None, resume=False,
                     job=_writing_job({"run": 2}))
    assert [r["case_id"] for r in rows] == ["p3"]
    summary = _summary(tmp_path / "out")
    assert list(summary) == ["p3", "p1", "p2"]
    assert summary["p3"]["status"] == "ok" and summary["p1"]["status"] == summary["p2"]["status"] == \
        "kept (earlier run)"
    assert summary["p1"]["inputs"] == str(tmp_path / "p1.nii.gz")
    import shutil

    shutil.rmtree(tmp_path / "out" / "p2")  # a case whose folder is gone is no longer listed
    run_batch(everyone[2:], tmp_path / "out", task="segment-cine", models=None, job=_writing_job({}))
    assert list(_summary(tmp_path / "out")) == ["p3", "p1"]


def test_a_folder_holding_only_what_a_killed_run_left_says_so(tmp_path):
    from cardiac_ai.io.atomic import LOCK_NAME

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / LOCK_NAME).write_text("process 1 on elsewhere")
    with pytest.raises(OutputError, match=r"already holds files \(among them \.cardiac_ai-writing: hidden files"):
        prepare_output_dir(tmp_path / "o")


def test_half_written_files_of_a_killed_run_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "first"})
    (out / ".labels.nii.gz.k3j9x2.partial.nii.gz").write_text("half a file")  # SIGKILL during a write
    (out / "notes.partial.txt").write_text("the user's own file")  # not hidden: not ours
    _run(out, {"labels.nii.gz": "second"}, overwrite=True)
    assert not (out / ".labels.nii.gz.k3j9x2.partial.nii.gz").exists()
    assert (out / "notes.partial.txt").read_text() == "the user's own file"


def test_a_file_system_without_locks_runs_with_a_warning_and_a_held_lock_still_refuses(tmp_path, monkeypatch, caplog):
    import errno

    from cardiac_ai.io import atomic

    def no_locks_here(descriptor):
        raise OSError(errno.ENOLCK, "No locks available")  # some network shares

    monkeypatch.setattr(atomic, "_try_lock", no_locks_here)
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.atomic"):
        _run(tmp_path / "share", {"labels.nii.gz": "written"})
    assert (tmp_path / "share" / "labels.nii.gz").read_text() == "written"
    assert "Cannot lock" in caplog.text and not (tmp_path / "share" / atomic.LOCK_NAME).exists()
    # the report says so too: whoever reads the results later did not see the log
    warnings = json.loads((tmp_path / "share" / "report.json").read_text())["provenance"]["warnings"]
    assert len(warnings) == 1 and warnings[0].startswith(f"Cannot lock {tmp_path / 'share'} (")
    monkeypatch.setattr(atomic, "_try_lock", lambda descriptor: None)
    _run(tmp_path / "local", {"labels.nii.gz": "written"})  # a folder locked as usual: no such warning
    assert json.loads((tmp_path / "local" / "report.json").read_text())["provenance"]["warnings"] == []
    assert atomic.unguarded_folder_warning(tmp_path / "share") is None  # only while the run holds the folder

    def held(descriptor):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(atomic, "_try_lock", held)
    with pytest.raises(OutputError, match="Another CardiacAI run"):
        _run(tmp_path / "share", {"labels.nii.gz": "second"}, overwrite=True)
    assert (tmp_path / "share" / "labels.nii.gz").read_text() == "written"


def test_overwrite_redoes_a_commands_run_but_never_replaces_another_commands_results(tmp_path):
    out = tmp_path / "o"
    _run(out, {"labels.nii.gz": "segment-cine's labels"}, command="segment-cine")
    before = _contents(out)
    with pytest.raises(OutputError, match="holds the output of 'segment-cine'; `function` does not replace"):
        with output_folder(out, overwrite=True, command="function") as folder:
            write_text_atomic(folder / "labels.nii.gz", "function's labels")
    assert _contents(out) == before
    with output_folder(out, overwrite=True, command="segment-cine") as folder:  # a rerun of the same command
        write_text_atomic(folder / "labels.nii.gz", "segment-cine again")
        write_report(folder, provenance=Provenance(command="segment-cine"), results={})
    assert (out / "labels.nii.gz").read_text() == "segment-cine again"


def test_a_batch_folder_counts_as_the_batchs_output_and_its_summary_keeps_only_its_own_task(tmp_path, monkeypatch,
                                                                                            capsys):
    out = tmp_path / "out"
    cases = [BatchCase("p1", (tmp_path / "p1.nii.gz",))]
    run_batch(cases, out, task="segment-cine", models=None, job=_writing_job({}))
    with pytest.raises(OutputError, match="holds the output of 'batch'"):
        with output_folder(out, overwrite=True, command="evaluate"):
            raise AssertionError("evaluate must not replace the batch's summary")
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()

    def evaluated(*args, **kwargs):
        raise AssertionError("evaluate computed its metrics before refusing the folder")

    monkeypatch.setattr("cardiac_ai.evaluation.evaluate_folders", evaluated)
    assert main(["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out", str(out), "--overwrite"]) == 4
    assert "holds the output of 'batch'" in capsys.readouterr().err
    _run(out / "a", {"t1.csv": "a map case"}, command="map")  # another task's finished case in the same folder
    (out / "summary.csv").write_text((out / "summary.csv").read_text() + f"a,{tmp_path / 'a.nii.gz'},ok\n")
    run_batch([BatchCase("p2", (tmp_path / "p2.nii.gz",))], out, task="segment-cine", models=None,
              job=_writing_job({}))
    assert list(_summary(out)) == ["p2", "p1"]  # p1 kept; the map case is no row of a segment-cine summary
