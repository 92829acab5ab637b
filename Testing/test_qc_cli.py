"""``cardiacai qc`` and the QC step of segment-cine, batch and map, as a user runs them: outputs, exit codes."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from cardiac_ai.cli import build_parser, main
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.io.seg_nrrd import write_seg_nrrd
from cardiac_ai.models import registry as registry_module
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.progress import parse_progress_line
from cardiac_ai.qc import DEFAULT_DICE_THRESHOLD

BUNDLED = Path(__file__).resolve().parents[1] / "Resources" / "Models"
CINE_STEMS = tuple(sorted(card.stem for name in ("cine_localiser", "cine_baseline")
                          for card in BUNDLED.glob(f"{name}-*.json")))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(autouse=True)
def only_the_given_model_folders(monkeypatch):
    """No bundled folder and no CARDIACAI_MODELS: each test sees exactly the --models-dir folders it passes."""
    monkeypatch.setattr(registry_module, "default_model_dirs", list)
    monkeypatch.delenv("CARDIACAI_MODELS", raising=False)


@pytest.fixture(scope="module")
def cine_models(tmp_path_factory):
    """The bundled cine localiser and baseline (links), without anything else from Resources/Models."""
    if len(CINE_STEMS) != 2:
        pytest.skip(f"bundled cine models not found in {BUNDLED}")
    folder = tmp_path_factory.mktemp("cine_models")
    for stem in CINE_STEMS:
        for suffix in (".json", ".safetensors"):
            (folder / f"{stem}{suffix}").symlink_to(BUNDLED / f"{stem}{suffix}")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory, cine_phantom):
    folder = tmp_path_factory.mktemp("qc_inputs")
    case = cine_phantom  # heart on slices 1..6
    write_volume(case.image, folder / "image.nii.gz")
    write_volume(case.labels, folder / "labels.nii.gz")
    return {"dir": folder, "image": folder / "image.nii.gz", "labels": folder / "labels.nii.gz", "case": case}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text())


def test_qc_writes_report_table_and_surrogate_on_the_image_grid(files, tiny_qc_models, tmp_path, capsys):
    out = tmp_path / "qc"
    code, stdout, err = _run(capsys, "qc", files["image"], files["labels"], "--out", out, "--models", tiny_qc_models,
                             "--write-surrogate", "--device", "cpu")
    assert code == 0, err
    assert "slices flagged" in stdout
    report = _report(out)
    qc = report["qc"]
    assert qc["dice_threshold"] == 0.8 and len(qc["slices"]) == 8 and qc["n_assessed_slices"] == 6
    assert report["provenance"]["command"] == "qc" and report["provenance"]["models"][0]["name"] == "qc_vae"
    assert sorted(report["outputs"]) == ["qc_slices.csv", "report.json", "surrogate.nii.gz", "surrogate.seg.nrrd"]
    with open(out / "qc_slices.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["slice"]) for r in rows] == list(range(8)) and rows[0]["dice_lv_myocardium"] == ""
    assert [r["flagged"] == "True" for r in rows] == [s["flagged"] for s in qc["slices"]]

    image = sitk.ReadImage(str(files["image"]))
    surrogate = sitk.ReadImage(str(out / "surrogate.nii.gz"))
    assert surrogate.GetSize() == image.GetSize()
    np.testing.assert_allclose(surrogate.GetSpacing(), image.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(surrogate.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(surrogate.GetDirection(), image.GetDirection(), atol=1e-6)
    segmentation = slicerio.read_segmentation(str(out / "surrogate.seg.nrrd"))
    np.testing.assert_allclose(segmentation["ijkToLPS"], files["case"].image.geometry.ijk_to_lps_matrix(), atol=1e-4)


def test_threshold_decides_the_flags_and_progress_lines_rise(files, tiny_qc_models, tmp_path, capsys):
    assert build_parser().parse_args(["qc", "a", "b", "--out", "c"]).threshold == DEFAULT_DICE_THRESHOLD
    code, stdout, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "t0",
                             "--models-dir", tiny_qc_models, "--threshold", "0", "--progress-lines")
    assert code == 0, err
    assert _report(tmp_path / "t0")["qc"]["flagged_slices"] == []
    fractions = [parse_progress_line(line)[0] for line in stdout.splitlines() if line.startswith("PROGRESS")]
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "t1",
                        "--models-dir", tiny_qc_models, "--threshold", "1")
    assert code == 0, err
    assert _report(tmp_path / "t1")["qc"]["flagged_slices"] == [1, 2, 3, 4, 5, 6]  # every assessed slice
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "t2",
                        "--models-dir", tiny_qc_models, "--threshold", "1.5")
    assert code == 2 and "dice_threshold" in err


def test_labels_on_another_grid_exit_2_naming_the_field_and_leave_no_folder(files, tiny_qc_models, tmp_path, capsys):
    case = files["case"]
    moved = Geometry(case.labels.geometry.spacing_mm, (0.0, 12.0, 0.0), case.labels.geometry.direction_lps)
    write_volume(Volume(case.labels.array, moved), tmp_path / "moved.nii.gz")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "moved.nii.gz", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("cardiacai: error:") and "origin_lps_mm" in last
    assert not (tmp_path / "out").exists()


def test_a_slicer_segmentation_file_is_read_as_labels(files, tiny_qc_models, tmp_path, capsys):
    write_seg_nrrd(files["case"].labels, tmp_path / "labels.seg.nrrd")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "labels.seg.nrrd", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models)
    assert code == 0, err
    assert _report(tmp_path / "out")["qc"]["n_assessed_slices"] == 6


def test_labels_outside_the_table_exit_2(files, tiny_qc_models, tmp_path, capsys):
    bad = files["case"].labels.array.copy()
    bad[4, 5, 5] = 17
    write_volume(files["case"].labels.with_array(bad), tmp_path / "bad.nii.gz")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "bad.nii.gz", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models)
    assert code == 2 and "[17]" in err and "label table" in err


def test_qc_without_a_model_exits_3_saying_how_to_get_one(files, tmp_path, capsys):
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "out",
                        "--models-dir", tmp_path)
    assert code == 3 and "No qc_vae model found" in err and "train_qc.py" in err
    assert not (tmp_path / "out").exists()


def test_empty_segmentation_is_flagged_not_a_crash(files, tiny_qc_models, tmp_path, capsys):
    write_volume(files["case"].labels.with_array(np.zeros_like(files["case"].labels.array)), tmp_path / "e.nii.gz")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "e.nii.gz", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models)
    assert code == 0, err
    qc = _report(tmp_path / "out")["qc"]
    assert qc["empty_segmentation"] and qc["flagged_slices"] == list(range(8)) and qc["min_slice_dice"] == 0.0
    assert any("empty" in w for w in qc["warnings"])


def test_segment_cine_without_a_qc_model_still_succeeds_with_a_warning(files, cine_models, tmp_path, capsys):
    out = tmp_path / "seg"
    code, stdout, err = _run(capsys, "segment-cine", files["image"], "--out", out, "--models-dir", cine_models,
                             "--mode", "baseline", "--base", "first", "--device", "cpu")
    assert code == 0, err
    report = _report(out)
    assert report["qc"] is None and (out / "labels.nii.gz").exists() and not (out / "qc_slices.csv").exists()
    assert any(w.startswith("QC skipped: no qc_vae model found") for w in report["provenance"]["warnings"])
    assert "QC skipped" in stdout


def test_segment_cine_reports_qc_and_no_qc_leaves_no_key(files, cine_models, tiny_qc_models, tmp_path, capsys):
    common = ["--models-dir", cine_models, "--models-dir", tiny_qc_models, "--mode", "baseline", "--base", "first",
              "--device", "cpu"]
    code, _, err = _run(capsys, "segment-cine", files["image"], "--out", tmp_path / "qc", *common,
                        "--qc-threshold", "0.5")
    assert code == 0, err
    report = _report(tmp_path / "qc")
    qc = report["qc"]
    assert qc["dice_threshold"] == 0.5 and len(qc["slices"]) == 8 and "flagged_slices" in qc
    assert {m["name"] for m in report["provenance"]["models"]} == {"cine_localiser", "cine_baseline", "qc_vae"}
    assert (tmp_path / "qc" / "qc_slices.csv").exists()

    code, _, err = _run(capsys, "segment-cine", files["image"], "--out", tmp_path / "off", *common, "--no-qc")
    assert code == 0, err
    report = _report(tmp_path / "off")
    assert "qc" not in report and not (tmp_path / "off" / "qc_slices.csv").exists()
    assert not any("QC" in w for w in report["provenance"]["warnings"])


def test_batch_summary_gets_the_qc_columns(files, cine_models, tiny_qc_models, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for seed in (1, 2):
        write_volume(make_cine_phantom(n_slices=6, seed=seed).image, cohort / f"case{seed}.nii.gz")
    code, _, err = _run(capsys, "batch", cohort, "--out", tmp_path / "out", "--models-dir", cine_models,
                        "--models-dir", tiny_qc_models, "--mode", "baseline", "--base", "first", "--device", "cpu")
    assert code == 0, err
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["case_id"] for r in rows] == ["case1", "case2"]
    for row in rows:
        assert 0.0 <= float(row["qc_min_dice"]) <= 1.0 and int(row["qc_flagged_slices"]) >= 0


def test_map_qc_is_marked_indicative(tiny_qc_models, save_untrained_map_model, tmp_path, capsys):
    from cardiac_ai.mapping import make_mapping_case

    save_untrained_map_model(tmp_path / "map_models")  # untrained: tests the plumbing only
    write_volume(make_mapping_case(make_cine_phantom(seed=3), seed=3, disease="none").t1_map_ms,
                 tmp_path / "t1.nii.gz")
    code, stdout, err = _run(capsys, "map", tmp_path / "t1.nii.gz", "--kind", "t1", "--out", tmp_path / "out",
                             "--models-dir", tmp_path / "map_models", "--models-dir", tiny_qc_models, "--device", "cpu")
    assert code == 0, err
    report = _report(tmp_path / "out")
    assert report["qc"]["indicative"] is True and "cine" in report["qc"]["note"]
    assert "qc_slices.csv" in report["outputs"] and (tmp_path / "out" / "qc_slices.csv").exists()
    assert "(indicative)" in stdout


def test_qc_uses_an_installed_regressor_unless_told_to_search(files, tiny_qc_models, tiny_qc_regressor_models,
                                                              tmp_path, capsys):
    from cardiac_ai import cli
    from cardiac_ai.qc import QC_PREDICTORS

    assert cli._QC_PREDICTORS == QC_PREDICTORS
    both = ["--models-dir", tiny_qc_models, "--models-dir", tiny_qc_regressor_models, "--device", "cpu"]
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "auto", *both)
    assert code == 0, err
    report = _report(tmp_path / "auto")
    assert report["qc"]["predictor"] == "regressor" and "search_dice" in report["qc"]["slices"][3]
    assert report["qc"]["search"]["ran"]  # `cardiacai qc` keeps the search's second opinion
    assert [m["name"] for m in report["provenance"]["models"]] == ["qc_vae", "qc_dice_regressor"]
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "search", *both,
                        "--predictor", "search")
    assert code == 0, err
    report = _report(tmp_path / "search")
    assert report["qc"]["predictor"] == "search" and [m["name"] for m in report["provenance"]["models"]] == ["qc_vae"]
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "none",
                        "--models-dir", tiny_qc_models, "--predictor", "regressor")
    assert code == 3 and "qc_dice_regressor" in err and not (tmp_path / "none").exists()


def test_qc_takes_the_segmenting_commands_spelling_of_its_options():
    from cardiac_ai.cli import build_parser

    parser = build_parser()
    short = parser.parse_args(["qc", "i.nii.gz", "l.nii.gz", "--out", "o", "--threshold", "0.6",
                               "--predictor", "search"])
    long = parser.parse_args(["qc", "i.nii.gz", "l.nii.gz", "--out", "o", "--qc-threshold", "0.6",
                              "--qc-predictor", "search"])
    assert (long.threshold, long.predictor) == (short.threshold, short.predictor) == (0.6, "search")


def test_segment_cine_qc_uses_the_regressor(files, cine_models, tiny_qc_models, tiny_qc_regressor_models, tmp_path,
                                            capsys):
    code, _, err = _run(capsys, "segment-cine", files["image"], "--out", tmp_path / "seg", "--models-dir", cine_models,
                        "--models-dir", tiny_qc_models, "--models-dir", tiny_qc_regressor_models, "--mode",
                        "baseline", "--base", "first", "--device", "cpu")
    assert code == 0, err
    report = _report(tmp_path / "seg")
    assert report["qc"]["predictor"] == "regressor" and report["provenance"]["parameters"]["qc"]["predictor"] == "auto"
    assert report["qc"]["search"] == {"ran": False}  # no surrogate is written, so the search is skipped
    assert {m["name"] for m in report["provenance"]["models"]} >= {"qc_vae", "qc_dice_regressor"}


def _qc_slices(capsys, image, labels, out, models, *options) -> list[dict]:
    code, _, err = _run(capsys, "qc", image, labels, "--out", out, "--models-dir", models, "--device", "cpu",
                        "--predictor", "search", *options)
    assert code == 0, err
    return _report(out)["qc"]["slices"]


def test_label_codes_map_another_tools_codes_without_changing_the_file(files, tiny_qc_models, tmp_path, capsys):
    labels = files["case"].labels
    mms = np.array([0, 3, 2, 1], dtype=np.uint8)[labels.array]  # M&Ms: 1 LV, 2 myocardium, 3 RV
    write_volume(labels.with_array(mms), tmp_path / "mms.nii.gz")
    written = (tmp_path / "mms.nii.gz").read_bytes()
    expected = _qc_slices(capsys, files["image"], files["labels"], tmp_path / "cardiacai", tiny_qc_models)

    mapped = _qc_slices(capsys, files["image"], tmp_path / "mms.nii.gz", tmp_path / "mapped", tiny_qc_models,
                        "--label-codes", "LV=1", "MYO=2", "RV=3")
    assert mapped == expected and (tmp_path / "mms.nii.gz").read_bytes() == written
    assert _report(tmp_path / "mapped")["provenance"]["parameters"]["label_codes"] == {"1": 3, "2": 2, "3": 1}

    mask = np.where(labels.array == 2, 255, 0).astype(np.uint8)  # a binary myocardium mask
    write_volume(labels.with_array(mask), tmp_path / "mask.nii.gz")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "mask.nii.gz", "--out", tmp_path / "unmapped",
                        "--models-dir", tiny_qc_models)
    assert code == 2 and "[255]" in err and "--label-codes" in err and not (tmp_path / "unmapped").exists()
    _qc_slices(capsys, files["image"], tmp_path / "mask.nii.gz", tmp_path / "mask", tiny_qc_models,
               "--label-codes", "MYO=255", "LV=3")
    report = _report(tmp_path / "mask")
    assert report["qc"]["n_assessed_slices"] == 6
    assert any("map values [3]" in w for w in report["provenance"]["warnings"])  # LV=3: no such voxel


@pytest.mark.parametrize("codes, message", [
    (["RV3"], "not NAME=VALUE"),
    (["AORTA=4"], "unknown structure 'AORTA'"),
    (["RV=1", "LV=1"], "value 1 is given for two structures"),
    (["RV=1", "MYO=2"], "values [3] that the label codes (--label-codes) do not map"),
])
def test_malformed_or_incomplete_label_codes_exit_2(files, tiny_qc_models, tmp_path, capsys, codes, message):
    code, _, err = _run(capsys, "qc", files["image"], files["labels"], "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models, "--label-codes", *codes)
    assert code == 2 and message in err and not (tmp_path / "out").exists()


def test_label_codes_are_refused_for_a_slicer_segmentation(files, tiny_qc_models, tmp_path, capsys):
    write_seg_nrrd(files["case"].labels, tmp_path / "labels.seg.nrrd")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "labels.seg.nrrd", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models, "--label-codes", "LV=1", "MYO=2", "RV=3")
    assert code == 2 and "Slicer segmentation" in err and not (tmp_path / "out").exists()


def test_a_myocardium_mask_is_judged_alone_with_blood_pools_drawn_as_context(
        files, cine_models, tiny_qc_models, tiny_qc_regressor_models, tmp_path, capsys):
    labels = files["case"].labels
    write_volume(labels.with_array(np.where(labels.array == 2, 255, 0).astype(np.uint8)), tmp_path / "myo.nii.gz")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "myo.nii.gz", "--out", tmp_path / "qc",
                        "--models-dir", tiny_qc_models, "--models-dir", tiny_qc_regressor_models, "--models-dir",
                        cine_models, "--device", "cpu", "--label-codes", "MYO=255")
    assert code == 0, err
    report = _report(tmp_path / "qc")
    qc, warnings = report["qc"], report["provenance"]["warnings"]
    assert qc["volume_dice"]["rv_blood_pool"] is None and qc["volume_dice"]["lv_blood_pool"] is None
    assert qc["volume_dice"]["lv_myocardium"] is not None and qc["n_assessed_slices"] == 6
    assert qc["rules"]["volume_reasons"] == [] and not any("surrounds" in reason for row in qc["slices"]
                                                            for reason in row.get("rule_reasons", []))
    assert report["input"]["context_drawn"] is True
    searched = [row["search_dice"] for row in qc["slices"] if row["assessed"]]
    assert searched and all(d["rv_blood_pool"] is None and d["lv_myocardium"] is not None for d in searched)
    assert any(w.startswith("QC judges only Left ventricle myocardium") for w in warnings)
    assert any("drawn by the cine baseline" in w for w in warnings)
    names = [m["name"] for m in report["provenance"]["models"]]
    assert "cine_baseline" in names and len(names) == len(set(names))

    # a HEART code (another tool's whole-heart label) over the blood pools is no obstacle to the context
    heart = np.where(labels.array == 2, 2, np.where(labels.array > 0, 6, 0)).astype(np.uint8)
    write_volume(labels.with_array(heart), tmp_path / "myo_heart.nii.gz")
    for name, codes in (("bg", ["MYO=2", "BG=6"]), ("heart", ["MYO=2", "HEART=6"])):
        _qc_slices(capsys, files["image"], tmp_path / "myo_heart.nii.gz", tmp_path / name, tiny_qc_models,
                   "--models-dir", cine_models, "--label-codes", *codes)
    assert _report(tmp_path / "heart")["input"]["context_drawn"] is True
    assert _report(tmp_path / "heart")["qc"]["slices"] == _report(tmp_path / "bg")["qc"]["slices"]

    # a plain map of CardiacAI codes with the myocardium alone: judged as drawn, with the hint how to judge it alone
    write_volume(labels.with_array(np.where(labels.array == 2, 2, 0).astype(np.uint8)), tmp_path / "myo2.nii.gz")
    _qc_slices(capsys, files["image"], tmp_path / "myo2.nii.gz", tmp_path / "plain", tiny_qc_models)
    assert any("--label-codes MYO=2 to judge those alone" in w
               for w in _report(tmp_path / "plain")["provenance"]["warnings"])
    volume_dice = _report(tmp_path / "plain")["qc"]["volume_dice"]  # judged, drawn nowhere: 0, not "not judged"
    assert volume_dice["rv_blood_pool"] == 0.0 and volume_dice["lv_blood_pool"] == 0.0
    scarred = np.where(labels.array == 2, 2, 0).astype(np.uint8)
    scarred[np.nonzero(scarred)[0][0], np.nonzero(scarred)[1][0], np.nonzero(scarred)[2][0]] = 4
    write_volume(labels.with_array(scarred), tmp_path / "myo_scar.nii.gz")
    _qc_slices(capsys, files["image"], tmp_path / "myo_scar.nii.gz", tmp_path / "scar", tiny_qc_models)
    assert any("--label-codes MYO=2 SCAR=4 to judge" in w  # every value the file holds, so the hint works as given
               for w in _report(tmp_path / "scar")["provenance"]["warnings"])

    # the RV alone stops short of the apex by design: the heart's extent is not held against it
    rv_only = np.where(labels.array == 1, 1, 0).astype(np.uint8)
    rv_only[rv_only.any(axis=(1, 2)).nonzero()[0][-2:]] = 0  # the RV's two last slices, as at a real apex
    write_volume(labels.with_array(rv_only), tmp_path / "rv.nii.gz")
    _qc_slices(capsys, files["image"], tmp_path / "rv.nii.gz", tmp_path / "rv", tiny_qc_models,
               "--models-dir", cine_models, "--label-codes", "RV=1")
    report = _report(tmp_path / "rv")
    assert not any("stops before the heart" in w for w in report["provenance"]["warnings"])
    assert report["qc"]["volume_dice"]["lv_myocardium"] is None

    # a whole segmentation gets no context, and no cine baseline run
    _qc_slices(capsys, files["image"], files["labels"], tmp_path / "whole", tiny_qc_models, "--models-dir",
               cine_models)
    report = _report(tmp_path / "whole")
    assert report["input"]["context_drawn"] is False and not any("context" in w for w in
                                                                 report["provenance"]["warnings"])

    # where the cine models see no heart, nothing is drawn, and the report says so
    noise = np.random.default_rng(0).normal(100, 5, labels.array.shape).astype(np.float32)
    write_volume(files["case"].image.with_array(noise), tmp_path / "noise.nii.gz")
    _qc_slices(capsys, tmp_path / "noise.nii.gz", tmp_path / "myo.nii.gz", tmp_path / "noise", tiny_qc_models,
               "--models-dir", cine_models, "--label-codes", "MYO=255")
    report = _report(tmp_path / "noise")
    assert report["input"]["context_drawn"] is False
    assert any("found no Right ventricle blood pool" in w for w in report["provenance"]["warnings"])
    assert not any("drawn by the cine baseline" in w for w in report["provenance"]["warnings"])

    # without the cine models: judged alone all the same, and the report says what is missing
    _qc_slices(capsys, files["image"], tmp_path / "myo.nii.gz", tmp_path / "alone", tiny_qc_models,
               "--label-codes", "MYO=255")
    report = _report(tmp_path / "alone")
    assert report["input"]["context_drawn"] is False and report["qc"]["volume_dice"]["rv_blood_pool"] is None
    assert any("could not be drawn as context" in w for w in report["provenance"]["warnings"])


def test_a_label_map_saved_as_seg_nrrd_without_segments_is_read_by_its_values(files, tiny_qc_models, tmp_path,
                                                                              capsys):
    plain = tmp_path / "plain.seg.nrrd"  # e.g. SimpleITK.WriteImage(labels, "x.seg.nrrd"): no Segment0_ fields
    sitk.WriteImage(sitk.ReadImage(str(files["labels"])), str(plain))
    expected = _qc_slices(capsys, files["image"], files["labels"], tmp_path / "nifti", tiny_qc_models)
    assert _qc_slices(capsys, files["image"], plain, tmp_path / "plain", tiny_qc_models) == expected
    assert any("no segment metadata" in w for w in _report(tmp_path / "plain")["provenance"]["warnings"])

    labels = files["case"].labels
    sitk.WriteImage(sitk.ReadImage(str(files["labels"])) * 0 + sitk.Cast(
        sitk.ReadImage(str(files["labels"])) == 2, sitk.sitkUInt8) * 255, str(tmp_path / "mask.seg.nrrd"))
    assert (sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "mask.seg.nrrd"))) == 255).sum() == np.count_nonzero(
        labels.array == 2)
    _qc_slices(capsys, files["image"], tmp_path / "mask.seg.nrrd", tmp_path / "mask", tiny_qc_models,
               "--label-codes", "MYO=255")  # its values are a label map's, so they can be mapped
    assert _report(tmp_path / "mask")["qc"]["volume_dice"]["lv_blood_pool"] is None


def test_batch_qc_checks_a_cohort_of_segmentations_from_a_csv(files, tiny_qc_models, tmp_path, capsys):
    from cardiac_ai.qc import shift_labels

    labels = files["case"].labels
    mms = np.array([0, 3, 2, 1], dtype=np.uint8)  # another tool's codes: 1 LV, 2 myocardium, 3 RV
    write_volume(labels.with_array(mms[labels.array]), tmp_path / "whole.nii.gz")
    write_volume(labels.with_array(mms[shift_labels(labels.array, 4.0, seed=0)]), tmp_path / "shifted.nii.gz")
    (tmp_path / "cases.csv").write_text(
        "case_id,image,labels\n"
        f"whole,{files['image']},{tmp_path / 'whole.nii.gz'}\n"
        f"shifted,{files['image']},shifted.nii.gz\n"  # relative to the CSV's folder
        f"missing,{files['image']},nowhere.nii.gz\n")
    common = ["--models-dir", tiny_qc_models, "--device", "cpu", "--qc-predictor", "search"]
    codes = ["--label-codes", "LV=1", "MYO=2", "RV=3"]
    code, stdout, _ = _run(capsys, "batch", tmp_path / "cases.csv", "--task", "qc", "--out", tmp_path / "out",
                           *common, "--qc-threshold", "0.5", *codes)
    assert code == 5 and "2 done" in stdout and "1 failed" in stdout  # the missing labels: that case alone
    with open(tmp_path / "out" / "summary.csv", newline="") as handle:
        rows = {row["case_id"]: row for row in csv.DictReader(handle)}
    assert rows["missing"]["status"] == "failed" and "nowhere.nii.gz" in rows["missing"]["error"]
    for case in ("whole", "shifted"):
        row, report = rows[case], _report(tmp_path / "out" / case)
        assert row["status"] == "ok" and report["provenance"]["command"] == "qc"
        assert float(row["qc_mean_dice"]) == pytest.approx(report["qc"]["mean_dice"], abs=1e-3)
        assert int(row["qc_flagged_slices"]) == report["qc"]["n_flagged_slices"]
        assert report["qc"]["dice_threshold"] == 0.5
        # one single-case job each: the same slices as `cardiacai qc` of that case
        expected = _qc_slices(capsys, files["image"], report["input"]["labels"], tmp_path / f"single_{case}",
                              tiny_qc_models, "--threshold", "0.5", *codes)
        assert report["qc"]["slices"] == expected
        assert float(row["qc_volume_dice_lv_myocardium"]) == pytest.approx(
            report["qc"]["volume_dice"]["lv_myocardium"], abs=1e-3)
    code, _, err = _run(capsys, "batch", tmp_path / "cases.csv", "--task", "qc", "--out", tmp_path / "no",
                        *common, "--no-qc")
    assert code == 2 and "quality control is the task itself" in err
    code, _, err = _run(capsys, "batch", files["dir"], "--task", "qc", "--out", tmp_path / "folder", *common)
    assert code == 2 and "case_id, image and labels" in err
    (tmp_path / "holes.csv").write_text(f"case_id,image,labels\n\nwhole,{files['image']},\nshort,{files['image']}\n")
    code, _, err = _run(capsys, "batch", tmp_path / "holes.csv", "--task", "qc", "--out", tmp_path / "holes", *common)
    assert code == 2 and "line 3: no labels given" in err and not (tmp_path / "holes").exists()  # the file's line
    code, _, err = _run(capsys, "batch", tmp_path / "cases.csv", "--task", "segment-cine", "--out",
                        tmp_path / "seg", *common, "--label-codes", "MYO=2")
    assert code == 2 and "--label-codes applies to --task qc" in err


def test_batch_qc_never_touches_another_batch_s_folder(files, cine_models, tiny_qc_models, tmp_path, capsys):
    """QC of what a segment-cine batch made, with the same --out: refused per case, nothing deleted."""
    (tmp_path / "in").mkdir()
    write_volume(files["case"].image, tmp_path / "in" / "p001.nii.gz")
    common = ["--device", "cpu", "--models-dir", tiny_qc_models, "--models-dir", cine_models]
    code, _, err = _run(capsys, "batch", tmp_path / "in", "--task", "segment-cine", "--out", tmp_path / "out",
                        "--mode", "baseline", "--no-qc", *common)
    assert code == 0, err
    made = sorted(p.name for p in (tmp_path / "out" / "p001").iterdir())
    labels = tmp_path / "out" / "p001" / "labels.nii.gz"
    write_volume(read_volume(labels), tmp_path / "copy.nii.gz")
    (tmp_path / "inside.csv").write_text(f"case_id,image,labels\np001,{tmp_path / 'in' / 'p001.nii.gz'},{labels}\n")
    (tmp_path / "other.csv").write_text(
        f"case_id,image,labels\np001,{tmp_path / 'in' / 'p001.nii.gz'},{tmp_path / 'copy.nii.gz'}\n")
    summary = (tmp_path / "out" / "summary.csv").read_bytes()
    for csv_name, message in (("inside.csv", "lies in its own output folder"),
                              ("other.csv", "holds the output of 'segment-cine', not of 'qc'")):
        for overwrite in ([], ["--overwrite"]):
            code, _, err = _run(capsys, "batch", tmp_path / csv_name, "--task", "qc", "--out", tmp_path / "out",
                                *common, *overwrite)
            assert code == 4 and message in err and "nothing was written" in err
            assert sorted(p.name for p in (tmp_path / "out" / "p001").iterdir()) == made  # nothing deleted
            assert (tmp_path / "out" / "summary.csv").read_bytes() == summary  # the other batch's summary too


@pytest.fixture(scope="module")
def oblique_files(tmp_path_factory, cine_phantom):
    """The phantom on an oblique grid (origin and direction not the defaults), image and full labels."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1.0]])
    geometry = Geometry(cine_phantom.image.geometry.spacing_mm, (-40.0, 25.5, 12.0), tuple(rotation.ravel()))
    folder = tmp_path_factory.mktemp("oblique")
    image, labels = Volume(cine_phantom.image.array, geometry), Volume(cine_phantom.labels.array, geometry)
    write_volume(image, folder / "image.nii.gz")
    write_volume(labels, folder / "labels.nii.gz")
    return {"image": folder / "image.nii.gz", "labels": folder / "labels.nii.gz", "labels_volume": labels}


def _cropped(labels: Volume, start_kji, stop_kji, *, shift_voxels_kji=(0.0, 0.0, 0.0)) -> Volume:
    """``labels[start:stop]`` with the origin of its first voxel, as Slicer saves a segmentation cropped to its
    contents (plus ``shift_voxels_kji`` of a voxel, to leave the lattice)."""
    box = tuple(slice(a, b) for a, b in zip(start_kji, stop_kji))
    origin = labels.geometry.index_to_lps(np.add(start_kji, shift_voxels_kji))[0]
    return Volume(np.ascontiguousarray(labels.array[box]),
                  Geometry(labels.geometry.spacing_mm, tuple(origin), labels.geometry.direction_lps))


@pytest.mark.parametrize("suffix", [".seg.nrrd", ".nii.gz"])
def test_labels_cropped_to_a_box_of_the_image_grid_are_padded(oblique_files, tiny_qc_models, tmp_path, capsys, suffix):
    labels = oblique_files["labels_volume"]
    cropped = _cropped(labels, (1, 20, 18), (7, 75, 77))  # the heart: slices 1..6, rows 23..72, columns 20..74
    path = tmp_path / f"cropped{suffix}"
    (write_seg_nrrd if suffix == ".seg.nrrd" else write_volume)(cropped, path)
    expected = _qc_slices(capsys, oblique_files["image"], oblique_files["labels"], tmp_path / "full", tiny_qc_models)
    padded = _qc_slices(capsys, oblique_files["image"], path, tmp_path / "padded", tiny_qc_models,
                        "--write-surrogate")
    assert padded == expected
    report = _report(tmp_path / "padded")
    assert report["input"]["labels_padded"]["offset_kji"] == [1, 20, 18]
    assert report["input"]["labels_padded"]["shape_kji"] == [6, 55, 59] and "padded" in report["input"][
        "labels_padded"]["note"]
    assert "labels_padded" not in _report(tmp_path / "full")["input"]
    surrogate = sitk.ReadImage(str(tmp_path / "padded" / "surrogate.nii.gz"))
    image = sitk.ReadImage(str(oblique_files["image"]))
    assert surrogate.GetSize() == image.GetSize()
    np.testing.assert_allclose(surrogate.GetOrigin(), image.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(surrogate.GetDirection(), image.GetDirection(), atol=1e-6)


@pytest.mark.parametrize("start, stop, shift, message", [
    ((1, 20, 18), (7, 75, 77), (0.0, 0.4, 0.0), "not a whole number"),  # between the image's voxels
    ((1, 20, 18), (7, 75, 77), (3.0, 0.0, 0.0), "reach beyond the image"),  # slices 4..9 of 8
    ((1, 20, 18), (7, 75, 77), (0.0, -21.0, 0.0), "reach beyond the image"),  # starts above row 0
])
def test_labels_off_the_image_lattice_or_beyond_it_exit_2(oblique_files, tiny_qc_models, tmp_path, capsys, start,
                                                          stop, shift, message):
    write_seg_nrrd(_cropped(oblique_files["labels_volume"], start, stop, shift_voxels_kji=shift),
                   tmp_path / "labels.seg.nrrd")
    code, _, err = _run(capsys, "qc", oblique_files["image"], tmp_path / "labels.seg.nrrd", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models)
    assert code == 2 and message in err and "origin_lps_mm" in err and not (tmp_path / "out").exists()


def test_labels_with_another_spacing_exit_2_naming_it(oblique_files, tiny_qc_models, tmp_path, capsys):
    cropped = _cropped(oblique_files["labels_volume"], (1, 20, 18), (7, 75, 77))
    write_volume(Volume(cropped.array, cropped.geometry.with_spacing((1.5, 1.5, 10.0))), tmp_path / "l.nii.gz")
    code, _, err = _run(capsys, "qc", oblique_files["image"], tmp_path / "l.nii.gz", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models)
    assert code == 2 and "voxel lattice: spacing_mm (1.5, 1.5, 10.0)" in err


def test_qc_refuses_a_whole_heart_mask_it_cannot_judge(files, tiny_qc_models, tmp_path, capsys):
    labels = files["case"].labels
    write_volume(labels.with_array(np.where(labels.array > 0, 6, 0).astype(np.uint8)), tmp_path / "heart.nii.gz")
    code, _, err = _run(capsys, "qc", files["image"], tmp_path / "heart.nii.gz", "--out", tmp_path / "out",
                        "--models-dir", tiny_qc_models, "--device", "cpu", "--label-codes", "HEART=6")
    assert code == 2 and "names none of them" in err and "whole-heart mask" in err
    assert not (tmp_path / "out").exists()
