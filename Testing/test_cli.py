"""The ``cardiacai`` command line as a batch user runs it: outputs, exit codes, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import slicerio
import SimpleITK as sitk

from cardiac_ai.cli import main
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.progress import parse_progress_line


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_info_json_reports_versions_and_device(capsys):
    code, out, _ = _run(capsys, "info", "--json", "--device", "cpu")
    info = json.loads(out)
    assert code == 0
    assert info["device"] == "cpu" and info["cardiac_ai"] and info["torch"]
    assert isinstance(info["models"], list)
    assert "unet2d" in info["networks"]  # what `train --network` takes


def test_info_names_a_model_card_it_cannot_use(tmp_path, capsys):
    (tmp_path / "lge_myocardium-1.0.json").write_text("{not json")
    code, out, _ = _run(capsys, "info", "--json", "--models-dir", str(tmp_path))
    assert code == 0 and any("lge_myocardium-1.0.json" in c for c in json.loads(out)["unusable_model_cards"])


def test_demo_writes_outputs_that_slicerio_reads_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, _ = _run(capsys, "demo", "--out", str(out), "--progress-lines")
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"image.nii.gz", "labels.nii.gz", "segmentation.seg.nrrd", "report.json"}
    fractions = [parse_progress_line(line)[0] for line in stdout.splitlines() if parse_progress_line(line)]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)

    segmentation = slicerio.read_segmentation(str(out / "segmentation.seg.nrrd"))
    names = {s["name"] for s in segmentation["segments"]}
    assert names == {"Right ventricle blood pool", "Left ventricle myocardium", "Left ventricle blood pool"}
    labels = read_volume(out / "labels.nii.gz")
    np.testing.assert_allclose(segmentation["ijkToLPS"], labels.geometry.ijk_to_lps_matrix(), atol=1e-6)
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["command"] == "demo" and report["round_trip_checks"]
    assert report["outputs"] == ["image.nii.gz", "labels.nii.gz", "report.json", "segmentation.seg.nrrd"]

    before = (out / "labels.nii.gz").read_bytes()
    code, _, err = _run(capsys, "demo", "--out", str(out))
    assert code == 4 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (out / "labels.nii.gz").read_bytes() == before
    (out / "stray.txt").write_text("mine")  # not the demo's: a rerun with --overwrite leaves it
    (out / "report.json").write_text("{}")  # so that a rerun that wrote nothing would show
    code, _, err = _run(capsys, "demo", "--out", str(out), "--overwrite")
    assert code == 0, err
    assert (out / "labels.nii.gz").read_bytes() == before and (out / "stray.txt").read_text() == "mine"
    assert json.loads((out / "report.json").read_text())["round_trip_checks"] == report["round_trip_checks"]
    assert sorted(p.name for p in out.iterdir()) == [*report["outputs"][:3], "segmentation.seg.nrrd", "stray.txt"]


def test_convert_4d_without_frame_is_a_one_line_error_and_writes_nothing(tmp_path, capsys):
    series = sitk.JoinSeries([sitk.Image([8, 8, 3], sitk.sitkFloat32)] * 2)
    source = tmp_path / "cine4d.nii.gz"
    sitk.WriteImage(series, str(source))
    target = tmp_path / "out.nii.gz"
    code, _, err = _run(capsys, "convert", str(source), "--out", str(target))
    assert code == 2 and "--frame" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()
    code, _, _ = _run(capsys, "convert", str(source), "--out", str(target), "--frame", "1")
    assert code == 0 and read_volume(target).array.shape == (3, 8, 8)


def test_convert_labels_to_seg_nrrd_keeps_geometry(tmp_path, capsys):
    geometry = Geometry((1.4, 1.6, 8.0), (5.0, -3.0, 12.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    labels = np.zeros((3, 10, 12), np.uint8)
    labels[1, 2:5, 3:7] = 2
    write_volume(Volume(labels, geometry), tmp_path / "labels.nii.gz")
    code, _, _ = _run(capsys, "convert", str(tmp_path / "labels.nii.gz"), "--out", str(tmp_path / "s.seg.nrrd"))
    assert code == 0
    image = sitk.ReadImage(str(tmp_path / "s.seg.nrrd"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    assert np.allclose(image.GetSpacing(), geometry.spacing_mm)
    assert np.allclose(image.GetOrigin(), geometry.origin_lps_mm)
    assert np.allclose(image.GetDirection(), geometry.direction_lps)
    segmentation = slicerio.read_segmentation(str(tmp_path / "s.seg.nrrd"))  # as Slicer reads it
    np.testing.assert_allclose(segmentation["ijkToLPS"], geometry.ijk_to_lps_matrix(), atol=1e-6)


def test_convert_reads_a_slicer_segmentation_by_its_segment_names_not_slicers_label_values(tmp_path, capsys):
    geometry = Geometry((1.4, 1.6, 8.0), (5.0, -3.0, 12.0))
    labels = np.zeros((3, 10, 12), np.uint8)
    labels[1, 2:5, 3:7] = 3  # LV blood pool
    labels[1, 6:8, 3:7] = 1  # RV blood pool
    segmentation = slicerio.create_segmentation(labels.T.shape, geometry.ijk_to_lps_matrix())
    segmentation["voxels"] = np.ascontiguousarray(np.select([labels == 3, labels == 1], [1, 2], 0).astype(np.uint8).T)
    segmentation["segments"] = [  # the LV drawn first: Slicer numbers it 1
        {"id": "Segment_1", "name": "Left ventricle blood pool", "labelValue": 1, "layer": 0, "color": [1, 0, 0]},
        {"id": "Segment_2", "name": "Right ventricle blood pool", "labelValue": 2, "layer": 0, "color": [0, 0, 1]}]
    slicerio.write_segmentation(str(tmp_path / "drawn.seg.nrrd"), segmentation)
    for target in ("codes.nii.gz", "again.seg.nrrd"):
        code, _, err = _run(capsys, "convert", str(tmp_path / "drawn.seg.nrrd"), "--out", str(tmp_path / target))
        assert code == 0, err
    np.testing.assert_array_equal(read_volume(tmp_path / "codes.nii.gz").array, labels)
    from cardiac_ai.io import read_label_map

    np.testing.assert_array_equal(read_label_map(tmp_path / "again.seg.nrrd").array, labels)
    segmentation["segments"][1]["labelValue"] = 0  # what a hand-edited file can say: every background voxel
    slicerio.write_segmentation(str(tmp_path / "zero.seg.nrrd"), segmentation)
    code, _, err = _run(capsys, "convert", str(tmp_path / "zero.seg.nrrd"), "--out", str(tmp_path / "z.nii.gz"))
    assert code == 2 and "has label value 0" in err and not (tmp_path / "z.nii.gz").exists()


def test_a_path_the_console_cannot_encode_does_not_fail_a_finished_command(tmp_path):
    """Windows gives a pipe or file cp1252: the 'Wrote ...' line of a CJK path is escaped, the command succeeds."""
    import os
    import subprocess
    import sys

    source = write_volume(Volume(np.ones((2, 4, 4), np.float32)), tmp_path / "患者.nii.gz")
    out = tmp_path / "结果" / "x.nrrd"
    run = subprocess.run([sys.executable, "-m", "cardiac_ai", "convert", str(source), "--out", str(out)],
                         env={**os.environ, "PYTHONIOENCODING": "cp1252"}, capture_output=True, timeout=120)
    assert run.returncode == 0, run.stderr.decode("cp1252", "replace")
    assert out.exists() and b"\\u7ed3\\u679c" in run.stderr  # the folder name, escaped


def test_convert_refuses_a_detached_header_output_before_reading_the_input(tmp_path, capsys):
    code, _, err = _run(capsys, "convert", str(tmp_path / "absent.nii.gz"), "--out", str(tmp_path / "x.mhd"))
    assert code == 2 and "detached header (.mhd)" in err and "absent" not in err  # the input was never opened
    assert list(tmp_path.iterdir()) == []


def test_convert_refuses_to_overwrite_its_input(tmp_path, capsys):
    source = tmp_path / "image.nii.gz"
    write_volume(Volume(np.ones((2, 4, 4), np.float32)), source)
    code, _, err = _run(capsys, "convert", str(source), "--out", str(source), "--overwrite")
    assert code == 4 and "input" in err
    assert read_volume(source).array.sum() == 32


def test_convert_refuses_a_folder_as_output_and_spacing_for_a_format_with_a_header(tmp_path, capsys):
    source = tmp_path / "image.nii.gz"
    write_volume(Volume(np.ones((2, 4, 4), np.float32), Geometry((1.5, 1.5, 8.0))), source)
    (tmp_path / "out.nii.gz").mkdir()
    code, _, err = _run(capsys, "convert", str(source), "--out", str(tmp_path / "out.nii.gz"), "--overwrite")
    assert code == 4 and "is a folder" in err and (tmp_path / "out.nii.gz").is_dir()
    code, _, err = _run(capsys, "convert", str(source), "--out", str(tmp_path / "o.nrrd"), "--spacing", "3", "3")
    assert code == 2 and "PNG input only" in err and not (tmp_path / "o.nrrd").exists()


def test_negative_seed_or_frame_is_an_argument_error(tmp_path, capsys):
    for argv in (["demo", "--out", str(tmp_path / "d"), "--seed", "-5"],
                 ["convert", "x.nii.gz", "--out", str(tmp_path / "o.nii.gz"), "--frame", "-1"]):
        with pytest.raises(SystemExit) as stopped:
            main(argv)
        assert stopped.value.code == 2 and "must be 0 or more" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_missing_input_is_a_one_line_error(tmp_path, capsys):
    code, _, err = _run(capsys, "convert", str(tmp_path / "nope.nii.gz"), "--out", str(tmp_path / "o.nii.gz"))
    assert code == 2 and "not found" in err and len(err.strip().splitlines()) == 1


def test_evaluate_reports_one_voxel_shift_in_millimetres(tmp_path, capsys):
    truth = np.zeros((2, 20, 20), np.uint8)
    truth[:, 5:15, 5:15] = 3
    geometry = Geometry((1.25, 1.25, 10.0))
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    write_volume(Volume(truth, geometry), tmp_path / "truth" / "case01_gt.nii.gz")
    write_volume(Volume(np.roll(truth, 1, axis=2), geometry), tmp_path / "pred" / "case01.nii.gz")
    code, out, _ = _run(
        capsys, "evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out", str(tmp_path / "m"),
        "--labels", "3",
    )
    assert code == 0 and "lv_blood_pool" in out
    row = (tmp_path / "m" / "metrics.csv").read_text().splitlines()[1].split(",")
    assert row[0] == "case01" and float(row[3]) == pytest.approx(0.9) and float(row[5]) == pytest.approx(1.25)


def test_an_evaluate_rerun_that_fails_while_writing_keeps_the_earlier_tables(tmp_path, capsys, monkeypatch):
    truth = np.zeros((2, 20, 20), np.uint8)
    truth[:, 5:15, 5:15] = 3
    geometry = Geometry((1.25, 1.25, 10.0))
    for folder in ("pred", "truth"):
        (tmp_path / folder).mkdir()
    write_volume(Volume(truth, geometry), tmp_path / "truth" / "case01_gt.nii.gz")
    write_volume(Volume(np.roll(truth, 1, axis=2), geometry), tmp_path / "pred" / "case01.nii.gz")
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out", str(tmp_path / "m")]
    assert _run(capsys, *args)[0] == 0
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["provenance"]["command"] == "evaluate"
    assert sorted(report["outputs"]) == ["metrics.csv", "report.json", "summary.csv"]
    earlier = {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
    write_volume(Volume(truth, geometry), tmp_path / "pred" / "case01.nii.gz")  # a better prediction this time
    from cardiac_ai.io import report as report_io

    real_write_csv = report_io.write_csv

    def write_then_fail(path, *rows, **kwargs):
        if Path(path).name == "summary.csv":
            raise OSError("disk full")
        return real_write_csv(path, *rows, **kwargs)

    monkeypatch.setattr(report_io, "write_csv", write_then_fail)
    assert _run(capsys, *args, "--overwrite")[0] != 0
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()} == earlier  # metrics.csv is the earlier one


def test_evaluate_reads_slicer_segmentations_cropped_to_their_contents(tmp_path, capsys):
    """A Slicer .seg.nrrd: segments matched by name (whatever their label values) and saved cropped to the heart."""
    import slicerio

    truth = np.zeros((3, 20, 20), np.uint8)
    truth[:, 5:15, 5:15] = 2
    truth[:, 8:12, 8:12] = 3
    geometry = Geometry((1.25, 1.25, 10.0), (10.0, -4.0, 2.5))
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    write_volume(Volume(truth, geometry), tmp_path / "truth" / "case01_gt.nii.gz")
    box = truth[:, 4:16, 4:16]  # cropped with one voxel of margin, origin moved by whole voxels
    origin = geometry.index_to_lps(np.array([0, 4, 4]))[0]
    segmentation = slicerio.create_segmentation(box.T.shape, Geometry(
        geometry.spacing_mm, tuple(origin), geometry.direction_lps).ijk_to_lps_matrix())
    voxels = np.where(box == 3, 1, np.where(box == 2, 2, 0)).astype(np.uint8)  # Slicer's own label values
    segmentation["voxels"] = np.ascontiguousarray(voxels.T)
    segmentation["segments"] = [
        {"id": "Segment_1", "name": "Left ventricle blood pool", "labelValue": 1, "layer": 0, "color": [1, 0, 0]},
        {"id": "Segment_2", "name": "Left ventricle myocardium", "labelValue": 2, "layer": 0, "color": [0, 1, 0]}]
    slicerio.write_segmentation(str(tmp_path / "pred" / "case01.seg.nrrd"), segmentation)
    code, out, err = _run(capsys, "evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out",
                          str(tmp_path / "m"), "--labels", "2", "3")
    assert code == 0, err
    rows = (tmp_path / "m" / "metrics.csv").read_text().splitlines()[1:]
    assert [float(row.split(",")[3]) for row in rows] == [1.0, 1.0]  # Dice of both structures

    # the truth cropped too, to another box that neither holds nor lies inside the prediction's
    truth_box = truth[:, 5:15, 3:15]
    truth_origin = geometry.index_to_lps(np.array([0, 5, 3]))[0]
    (tmp_path / "truth" / "case01_gt.nii.gz").unlink()
    write_volume(Volume(np.ascontiguousarray(truth_box), Geometry(geometry.spacing_mm, tuple(truth_origin),
                                                                  geometry.direction_lps)),
                 tmp_path / "truth" / "case01_gt.nii.gz")
    code, out, err = _run(capsys, "evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out",
                          str(tmp_path / "m2"), "--labels", "2", "3")
    assert code == 0, err
    rows = (tmp_path / "m2" / "metrics.csv").read_text().splitlines()[1:]
    assert [float(row.split(",")[3]) for row in rows] == [1.0, 1.0]


def test_python_dash_m_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "cardiac_ai", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and "cardiac_ai" in done.stdout


def _generic_cohort(data, *, empty_labels: bool = False):
    """Four phantom cases in the generic layout (images/, labels/); label maps all background when asked."""
    from cardiac_ai.phantom import make_phantom_cohort

    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for case in make_phantom_cohort(4, seed=2, phases=("ED",)):
        write_volume(case.image, data / "images" / f"{case.case_id}.nii.gz")
        labels = case.labels.with_array(np.zeros_like(case.labels.array)) if empty_labels else case.labels
        write_volume(labels, data / "labels" / f"{case.case_id}.nii.gz")
    return data


def test_train_generic_layout_registers_a_model_that_info_lists(tmp_path, capsys):
    data = _generic_cohort(tmp_path / "cohort")
    code, out, err = _run(
        capsys, "train", "--data", str(data), "--layout", "generic", "--out", str(tmp_path / "run"), "--epochs", "2",
        "--crop-size", "32", "--spacing", "3", "--register-to", str(tmp_path / "models"), "--model-name", "my_unet",
    )
    assert code == 0, err
    assert (tmp_path / "run" / "split.json").exists() and (tmp_path / "run" / "checkpoints" / "log.csv").exists()
    code, out, _ = _run(capsys, "info", "--json", "--models-dir", str(tmp_path / "models"))
    assert "my_unet 1.0" in json.loads(out)["models"]
    code, _, err = _run(capsys, "train", "--data", str(data), "--layout", "generic", "--out", str(tmp_path / "run"))
    assert code == 4 and "--resume" in err

    common = ["train", "--data", str(data), "--layout", "generic", "--epochs", "2", "--crop-size", "32", "--spacing",
              "3"]
    split_before = (tmp_path / "run" / "split.json").read_text()
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "run"), "--resume", "--seed", "7", "--epochs", "3")
    assert code == 2 and "different config" in err  # refused: the run's split is untouched
    assert (tmp_path / "run" / "split.json").read_text() == split_before
    other = _generic_cohort(tmp_path / "other", empty_labels=True)
    code, _, err = _run(capsys, "train", "--data", str(other), "--layout", "generic", "--epochs", "2", "--crop-size",
                        "32", "--spacing", "3", "--out", str(tmp_path / "run"), "--resume")
    assert code == 2 and "started on other data" in err
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "run2"), "--register-to", str(tmp_path / "models"),
                        "--model-name", "my_unet")
    assert code == 4 and "already registered" in err and not (tmp_path / "run2").exists()
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "run"), "--overwrite", "--seed", "3")
    assert code == 0, err  # --overwrite starts the run again
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "odd"), "--crop-size", "40")
    assert code == 2 and "divisible by 16" in err and not (tmp_path / "odd").exists()
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "fresh"), "--resume")
    assert code == 0, err  # nothing to resume: a new run


def test_train_with_region_aware_batch_sampling_records_it_on_the_run_and_the_card(tmp_path, capsys):
    data = _generic_cohort(tmp_path / "cohort")
    common = ["train", "--data", str(data), "--layout", "generic", "--epochs", "1", "--crop-size", "32", "--spacing",
              "3"]
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "run"), "--sampling-ratio", "4",
                        "--register-to", str(tmp_path / "models"), "--model-name", "sampled_unet")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "checkpoints" / "config.json").read_text())["position_sampling_ratio"] == 4
    card = json.loads((tmp_path / "models" / "sampled_unet-1.0.json").read_text())
    assert "region-aware batch sampling" in card["description"] and "4 times" in card["description"]
    for bad in ("0.5", "inf", "four"):
        with pytest.raises(SystemExit) as exit_info:
            _run(capsys, *common, "--out", str(tmp_path / "bad"), "--sampling-ratio", bad)
        assert exit_info.value.code == 2 and "--sampling-ratio" in capsys.readouterr().err
    code, _, err = _run(capsys, "train", "--task", "weak-cam", "--data", str(data), "--out", str(tmp_path / "weak"),
                        "--label-column", "group", "--sampling-ratio", "4")
    assert code == 2 and "--task segmentation" in err and not (tmp_path / "weak").exists()
    assert not (tmp_path / "bad").exists()


def test_train_refuses_label_maps_without_any_label_before_writing(tmp_path, capsys):
    data = _generic_cohort(tmp_path / "cohort", empty_labels=True)
    code, _, err = _run(capsys, "train", "--data", str(data), "--layout", "generic", "--out", str(tmp_path / "run"),
                        "--epochs", "1", "--crop-size", "32", "--spacing", "3")
    assert code == 2 and "holds a label" in err and not (tmp_path / "run").exists()


def test_evaluate_writes_the_regional_table_for_stacks(tmp_path, capsys):
    truth = make_cine_phantom_labels()
    geometry = Geometry((1.5, 1.5, 8.0))
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    write_volume(Volume(truth, geometry), tmp_path / "truth" / "p1_gt.nii.gz")
    write_volume(Volume(np.roll(truth, 1, axis=2), geometry), tmp_path / "pred" / "p1.nii.gz")
    code, out, _ = _run(capsys, "evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out",
                        str(tmp_path / "m"))
    assert code == 0 and "Base" in out and "Apex" in out
    header = (tmp_path / "m" / "regional.csv").read_text().splitlines()[0]
    assert "base_mean" in header and "p_apex_vs_middle" in header


def make_cine_phantom_labels() -> np.ndarray:
    from cardiac_ai.phantom import make_cine_phantom

    return make_cine_phantom(seed=0, n_slices=10).labels.array


def test_evaluate_scores_another_tools_label_values_with_label_codes(tmp_path, capsys):
    truth = np.zeros((2, 20, 20), np.uint8)
    truth[:, 5:15, 5:15] = 2
    truth[:, 8:12, 8:12] = 3
    truth[:, 5:15, 15:18] = 1
    geometry = Geometry((1.25, 1.25, 10.0))
    for folder in ("pred", "truth"):
        (tmp_path / folder).mkdir()
    write_volume(Volume(truth, geometry), tmp_path / "truth" / "case01_gt.nii.gz")
    mms = np.select([truth == 3, truth == 2, truth == 1], [1, 2, 3], 0).astype(np.uint8)  # nnU-Net on M&Ms: 1 LV
    write_volume(Volume(mms, geometry), tmp_path / "pred" / "case01.nii.gz")
    args = ["evaluate", str(tmp_path / "pred"), str(tmp_path / "truth"), "--out", str(tmp_path / "m")]
    code, out, err = _run(capsys, *args, "--label-codes", "LV=1", "MYO=2", "RV=3")
    assert code == 0, err
    rows = (tmp_path / "m" / "metrics.csv").read_text().splitlines()[1:]
    assert [float(row.split(",")[3]) for row in rows] == [1.0, 1.0, 1.0]
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["provenance"]["parameters"]["label_codes"] == ["LV=1", "MYO=2", "RV=3"]
    write_volume(Volume((mms * 10).astype(np.uint8), geometry), tmp_path / "pred" / "case01.nii.gz")
    code, _, err = _run(capsys, *args, "--overwrite", "--label-codes", "LV=1", "MYO=2", "RV=3")
    assert code == 2 and "[10, 20, 30]" in err and "case01.nii.gz" in err, err  # values the codes do not map
