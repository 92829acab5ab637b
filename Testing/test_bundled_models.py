"""The weights that ship in Resources/Models: size budget, valid cards, and real accuracy on a held-out patient."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cardiac_ai.cli import main
from cardiac_ai.io import read_volume
from cardiac_ai.metrics.overlap import dice
from cardiac_ai.models.registry import ModelRegistry

MODELS_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Models"
SIZE_BUDGET_BYTES = 80 * 1024 * 1024


def bundled_cards() -> list[dict]:
    return [card for card in (json.loads(p.read_text()) for p in sorted(MODELS_DIR.glob("*.json")))
            if "model_card_schema" in card]


def test_bundled_models_fit_the_size_budget():
    total = sum(p.stat().st_size for p in MODELS_DIR.rglob("*") if p.is_file())
    assert total <= SIZE_BUDGET_BYTES, f"Resources/Models holds {total / 2**20:.1f} MiB, over the 80 MB budget"


def test_every_bundled_model_loads_with_its_checksum_and_is_half_precision():
    registry = ModelRegistry(extra_paths=[MODELS_DIR])
    for card in bundled_cards():
        assert card["precision"] == "float16", card["name"]
        loaded = registry.load(card["name"], device="cpu")
        assert loaded.card.version == card["version"]
        assert sum(p.numel() for p in loaded.network.parameters()) > 0


def test_bundled_models_never_saw_a_test_patient():
    """Every card names the project's ACDC split; its parts are disjoint; the patients this file's accuracy tests
    call held-out are test patients (and the one called validation is a validation patient)."""
    project = json.loads((MODELS_DIR.parents[1] / "Resources" / "Splits" / "acdc_cine_split.json").read_text())
    assert {"patient003", "patient005"} <= set(project["test"]) and "patient023" in project["validation"]
    cards = bundled_cards()
    assert cards, "no bundled model card found"
    for card in cards:
        split = card.get("split")
        assert isinstance(split, dict), f"{card['name']}: no split on its card"
        parts = {part: set(split[part]) for part in ("train", "validation", "test")}
        assert not parts["train"] & parts["test"] and not parts["validation"] & parts["test"], card["name"]
        assert not parts["train"] & parts["validation"], card["name"]
        assert all(parts[part] == set(project[part]) for part in parts), card["name"]


@pytest.mark.shared_data
def test_segment_cine_with_bundled_models_is_accurate_on_a_held_out_patient(acdc_root, tmp_path):
    if not list(MODELS_DIR.glob("cine_baseline-*.safetensors")):
        pytest.skip("the cine models are not bundled in this checkout")
    patient = acdc_root / "patient003"  # a test patient of Resources/Splits/acdc_cine_split.json
    image = patient / "patient003_frame01.nii.gz"
    out = tmp_path / "out"
    assert main(["segment-cine", str(image), "--out", str(out), "--device", "cpu"]) == 0
    labels = read_volume(out / "labels.nii.gz")
    truth = read_volume(patient / "patient003_frame01_gt.nii.gz")
    assert labels.geometry.is_close(truth.geometry)
    scores = [dice(labels.array == code, truth.array == code) for code in (1, 2, 3)]
    assert np.mean(scores) > 0.90, scores
    if list(MODELS_DIR.glob("qc_dice_regressor-*.safetensors")):  # QC ran by default, with the bundled models
        qc = json.loads((out / "report.json").read_text())["qc"]
        assert qc["predictor"] == "combined" and qc["search"]["encoder_only"], qc["search"]  # no search: the encoder
        assert qc["mean_dice"] > 0.8, qc["volume_dice"]


@pytest.mark.shared_data
def test_segment_cine_with_bundled_models_finds_no_heart_where_it_was_cut_out(acdc_root, tmp_path):
    """The issue's no-heart case: an empty but valid result with a warning, not an invented heart."""
    if not list(MODELS_DIR.glob("cine_localiser-*.safetensors")):
        pytest.skip("the cine models are not bundled in this checkout")
    from cardiac_ai.io import write_volume

    patient = acdc_root / "patient003"
    image = read_volume(patient / "patient003_frame01.nii.gz")
    truth = read_volume(patient / "patient003_frame01_gt.nii.gz").array
    rows = np.flatnonzero(truth.any(axis=(0, 2)))
    cut = image.array.copy()
    cut[:, max(rows[0] - 10, 0): rows[-1] + 11, :] = 0  # the heart's rows, with a margin, blacked out
    write_volume(image.with_array(cut), tmp_path / "no_heart.nii.gz")
    out = tmp_path / "out"
    assert main(["segment-cine", str(tmp_path / "no_heart.nii.gz"), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["heart_found"] is False and not read_volume(out / "labels.nii.gz").array.any()
    assert report["base_first"] is None  # no heart, so no base to place
    assert any("No heart found" in w for w in report["provenance"]["warnings"])

    # a corner of the field of view away from the heart, where the localiser still finds 184 ml of "heart": the
    # myocardium drawn there does not surround the blood pool as a heart's does
    patient = acdc_root / "patient029"
    image = read_volume(patient / "patient029_frame01.nii.gz")
    corner = image.array[:, :64, :64] if read_volume(patient / "patient029_frame01_gt.nii.gz").array[
        :, :64, :64].sum() == 0 else image.array[:, -64:, -64:]
    write_volume(image.with_array(np.ascontiguousarray(corner)), tmp_path / "corner.nii.gz")
    assert main(["segment-cine", str(tmp_path / "corner.nii.gz"), "--out", str(tmp_path / "corner"), "--device",
                 "cpu", "--no-qc"]) == 0
    report = json.loads((tmp_path / "corner" / "report.json").read_text())
    assert report["heart_found"] is False and report["base_first"] is None
    assert {row["region"] for row in report["slices"]} == {"non-cardiac"}
    assert any(w.startswith("No heart") for w in report["provenance"]["warnings"])


@pytest.mark.shared_data
def test_bundled_qc_scores_a_shifted_segmentation_lower_than_the_truth(acdc_root, tmp_path):
    if not list(MODELS_DIR.glob("qc_dice_regressor-*.safetensors")):
        pytest.skip("the QC models are not bundled in this checkout")
    from cardiac_ai.io import write_volume
    from cardiac_ai.qc import shift_labels

    patient = acdc_root / "patient005"  # a test patient of Resources/Splits/acdc_cine_split.json
    image, truth_path = patient / "patient005_frame01.nii.gz", patient / "patient005_frame01_gt.nii.gz"
    truth = read_volume(truth_path)
    write_volume(truth.with_array(shift_labels(truth.array, 6.0, seed=0)), tmp_path / "shifted.nii.gz")
    mean_dice = {}
    for name, labels in (("truth", truth_path), ("shifted", tmp_path / "shifted.nii.gz")):
        assert main(["qc", str(image), str(labels), "--out", str(tmp_path / name), "--device", "cpu"]) == 0
        qc = json.loads((tmp_path / name / "report.json").read_text())["qc"]
        assert qc["predictor"] == "combined"  # the search runs for the surrogate, and the bundled card combines
        mean_dice[name] = qc["mean_dice"]
    true_shifted = np.mean([dice(read_volume(tmp_path / "shifted.nii.gz").array == c, truth.array == c)
                            for c in (1, 2, 3)])
    assert mean_dice["truth"] > 0.8 and mean_dice["shifted"] < mean_dice["truth"] - 0.15, (mean_dice, true_shifted)


@pytest.mark.shared_data
def test_bundled_map_model_finds_the_myocardium_of_a_validation_patient(acdc_root):
    if not list(MODELS_DIR.glob("map_myocardium-*.safetensors")):
        pytest.skip("the mapping model is not bundled in this checkout")
    from cardiac_ai.datasets import list_acdc, load_case
    from cardiac_ai.mapping import MappingModels, analyse_map, make_mapping_case

    ref = next(r for r in list_acdc(acdc_root, phases=("ED",)) if r.patient_id == "patient023")  # validation
    case = make_mapping_case(load_case(ref), seed=0)
    models = MappingModels.from_registry(ModelRegistry(extra_paths=[MODELS_DIR]), device="cpu")
    result = analyse_map(case.t1_map_ms, kind="t1", models=models, device="cpu")
    scores = [dice(result.labels.array[k] == 2, case.labels.array[k] == 2) for k in range(3)]
    assert min(scores) > 0.8, scores


@pytest.mark.shared_data
def test_bundled_qc_flags_a_segmentation_that_stops_before_the_heart(acdc_root, tmp_path):
    if not list(MODELS_DIR.glob("cine_localiser-*.safetensors")) or not list(MODELS_DIR.glob("qc_vae-*")):
        pytest.skip("the cine localiser or the QC models are not bundled in this checkout")
    from cardiac_ai.io import write_volume

    patient = acdc_root / "patient003"
    truth = read_volume(patient / "patient003_frame01_gt.nii.gz")
    truncated = truth.array.copy()
    truncated[:2] = 0  # the two most basal slices left out
    write_volume(truth.with_array(truncated), tmp_path / "truncated.nii.gz")
    image = str(patient / "patient003_frame01.nii.gz")
    for labels, out in ((patient / "patient003_frame01_gt.nii.gz", "truth"), (tmp_path / "truncated.nii.gz", "cut")):
        assert main(["qc", image, str(labels), "--out", str(tmp_path / out), "--device", "cpu"]) == 0
    truth_qc = json.loads((tmp_path / "truth" / "report.json").read_text())["qc"]
    cut_qc = json.loads((tmp_path / "cut" / "report.json").read_text())["qc"]
    assert not any("stops before" in r for r in truth_qc["rules"]["volume_reasons"])
    assert cut_qc["needs_review"] and {0, 1} <= set(cut_qc["flagged_slices"])
    assert any("stops before" in r for r in cut_qc["rules"]["volume_reasons"])
