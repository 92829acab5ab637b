"""LGE fibrosis pipeline end to end: known-output networks, tiny registered models, the CLI, and a tiny training run."""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cardiac_ai.cli import main
from cardiac_ai.errors import InputError
from cardiac_ai.fibrosis import FibrosisModels, read_lge_input, segment_fibrosis
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import write_png, write_volume
from cardiac_ai.preprocessing import InputSpec

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
CROP = 32
SPEC = InputSpec(in_plane_spacing_mm=(1.5, 1.5), crop_size=(CROP, CROP))


# -- networks with known outputs -------------------------------------------------------------------------------------
class _RingNet(torch.nn.Module):
    """Myocardium 'model': ring of radius 6-10 px around the crop centre (channel 2), blood pool inside (3)."""

    def forward(self, x):
        n, _, h, w = x.shape
        rows, cols = torch.meshgrid(torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij")
        radius = torch.hypot(rows, cols)
        logits = torch.zeros(n, 4, h, w)
        logits[:, 0] = 5.0 * (radius >= 10).float()
        logits[:, 2] = 5.0 * ((radius >= 6) & (radius < 10)).float()
        logits[:, 3] = 5.0 * (radius < 6).float()
        return logits


class _RightHalfNet(torch.nn.Module):
    """Scar 'model': scar (channel 1) on the right half of the crop, also far outside the ring."""

    def forward(self, x):
        n, _, h, w = x.shape
        logits = torch.zeros(n, 2, h, w)
        logits[:, 1, :, w // 2:] = 5.0
        return logits


class _ConstantClassifier(torch.nn.Module):
    def forward(self, x):
        return torch.full((x.shape[0], 1), 2.0)


def _loaded(network, name, label_map, in_channels=1):
    from cardiac_ai.models.registry import LoadedModel, ModelCard

    card = ModelCard(name=name, version="1.0", task="segmentation", network="tiny_unet2d",
                     network_kwargs={"in_channels": in_channels}, input_spec=SPEC.to_dict(), label_map=label_map)
    return LoadedModel(network=network, card=card, weights_path=Path("none"), device=torch.device("cpu"))


def _known_models(classifier=True) -> FibrosisModels:
    return FibrosisModels(
        myocardium=_loaded(_RingNet(), "lge_myocardium", {0: "background", 2: "lv_myocardium", 3: "lv_blood_pool"}),
        fibrosis=_loaded(_RightHalfNet(), "lge_fibrosis_weak", {0: "background", 1: "scar"}),
        classifier=_loaded(_ConstantClassifier(), "lge_fibrosis_classifier", {0: "fibrosis"}, 2) if classifier
        else None,
    )


def _stack(n_slices=3, size=48, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n_slices, size, size)).astype(np.float32)


def test_scar_is_kept_only_inside_the_predicted_myocardium():
    volume = Volume(_stack(), Geometry(spacing_mm=(1.0, 1.0, 1.0)))
    result = segment_fibrosis(volume, _known_models(), spacing_known=False)
    labels = result.labels.array
    offset = (48 - CROP) // 2
    rows, cols = np.indices((48, 48))
    radius = np.hypot(rows - offset - (CROP - 1) / 2, cols - offset - (CROP - 1) / 2)
    ring = (radius >= 6) & (radius < 10)
    right = cols - offset >= CROP // 2
    for k in range(3):
        assert set(np.unique(labels[k][ring & right])) == {4}
        assert set(np.unique(labels[k][ring & ~right])) == {2}
        assert not np.any(labels[k][~ring] == 4)  # the scar net's output outside the ring is dropped
        assert set(np.unique(labels[k][radius < 6])) == {3}
    assert result.fibrosis_found
    scar, healthy = np.count_nonzero(labels == 4), np.count_nonzero(labels == 2)
    assert result.measures.scar_percent_of_myocardium == pytest.approx(100 * scar / (scar + healthy))
    assert 40 < result.measures.scar_percent_of_myocardium < 60  # the right half of a ring
    assert result.measures.volume_unit == "voxels"
    np.testing.assert_allclose(result.slice_probabilities, 1 / (1 + np.exp(-2.0)), rtol=1e-5)
    # the weak model has no MVO class: MVO is "not assessed", never a measured zero
    clinical = result.to_report()["clinical"]
    assert clinical["mvo_assessed"] is False and np.isnan(clinical["mvo_volume"])
    assert np.isnan(clinical["mvo_percent_of_scar"]) and all(s["mvo_pixels"] is None for s in clinical["slices"])
    assert any("MVO not assessed" in note for note in clinical["notes"])
    assert not result.provenance.warnings  # the heart lies well inside the crop


class _RecordingClassifier(torch.nn.Module):
    """Classifier 'model' that keeps its inputs and gives the logit ``logit``."""

    def __init__(self, logit: float):
        super().__init__()
        self.logit, self.inputs = logit, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return torch.full((x.shape[0], 1), self.logit)


def test_the_stack_classifier_gets_the_slice_classifiers_inputs_as_one_stack_and_gives_the_patient_probability():
    from cardiac_ai.fibrosis.classifier_input import ClassifierInputSettings

    slice_net, stack_net = _RecordingClassifier(2.0), _RecordingClassifier(-1.0)
    settings = {"classifier_input": ClassifierInputSettings(heart_crop=24).to_dict()}
    models = _known_models()
    models.classifier = dataclasses.replace(_loaded(slice_net, "lge_fibrosis_classifier", {0: "fibrosis"}, 2),
                                            card=dataclasses.replace(models.classifier.card, inference=settings))
    stack_card = dataclasses.replace(models.classifier.card, name="lge_fibrosis_stack_classifier", inference=settings)
    models.stack_classifier = dataclasses.replace(models.classifier, network=stack_net, card=stack_card)
    result = segment_fibrosis(Volume(_stack(n_slices=3), Geometry(spacing_mm=(1.0, 1.0, 1.0))), models,
                              spacing_known=False)
    [slices], [stack] = slice_net.inputs, stack_net.inputs
    assert slices.shape == (3, 2, 24, 24) and stack.shape == (1, 2, 24, 24, 3)  # slice axis last
    torch.testing.assert_close(stack[0].permute(3, 0, 1, 2), slices)
    assert result.patient_probability == pytest.approx(1 / (1 + np.exp(1.0)))
    assert result.to_report()["patient_fibrosis_probability"] == pytest.approx(1 / (1 + np.exp(1.0)))
    assert "lge_fibrosis_stack_classifier" in {m.name for m in result.provenance.models}
    assert segment_fibrosis(Volume(_stack(), Geometry(spacing_mm=(1.0, 1.0, 1.0))), _known_models(),
                            spacing_known=False).to_report()["patient_fibrosis_probability"] is None


class _EdgeRingNet(_RingNet):
    """Myocardium 'model' whose ring reaches the crop's edge on every slice (an off-centre or very large heart)."""

    def forward(self, x):
        logits = super().forward(x)
        logits[:, 2, :, -1] = 50.0
        return logits


def test_myocardium_at_the_edge_of_the_models_view_is_reported():
    models = _known_models()
    models.myocardium = _loaded(_EdgeRingNet(), "lge_myocardium",
                                {0: "background", 2: "lv_myocardium", 3: "lv_blood_pool"})
    result = segment_fibrosis(Volume(_stack(), Geometry(spacing_mm=(1.0, 1.0, 1.0))), models, spacing_known=False)
    [warning] = result.provenance.warnings
    assert "edge of the 48 x 48 mm square" in warning and "[0, 1, 2]" in warning


def test_known_spacing_is_resampled_back_onto_the_input_geometry_and_reported_in_ml():
    geometry = Geometry(spacing_mm=(1.25, 1.25, 8.0), origin_lps_mm=(10.0, -5.0, 3.0),
                        direction_lps=(0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    volume = Volume(_stack(n_slices=2, size=50), geometry)
    result = segment_fibrosis(volume, _known_models(classifier=False), levels=["mid", "apex"])
    assert result.labels.array.shape == volume.array.shape
    assert result.labels.geometry == geometry
    assert result.slice_probabilities is None
    assert result.measures.volume_unit == "mL" and result.measures.area_unit == "mm2"
    assert np.isin(result.labels.array, (4,)).any()
    assert {s.aha_segment for s in result.measures.sectors} == set(range(7, 17))
    report = result.to_report()
    assert report["pixel_size"] == "mm" and report["slice_fibrosis_probability"] is None


def test_slice_order_gives_aha_levels_by_thirds_of_the_slices_with_myocardium():
    from cardiac_ai.fibrosis.pipeline import levels_by_thirds

    has = [False, True, True, True, True, True, True, False]
    assert levels_by_thirds(has, base_first=True) == [None, "base", "base", "mid", "mid", "apex", "apex", None]
    assert levels_by_thirds(has, base_first=False) == [None, "apex", "apex", "mid", "mid", "base", "base", None]
    volume = Volume(_stack(n_slices=3, size=50), Geometry(spacing_mm=(1.25, 1.25, 8.0)))
    result = segment_fibrosis(volume, _known_models(classifier=False), slice_order="apex-first")
    assert [s.level for s in result.measures.slices] == ["apex", "mid", "base"]
    assert result.to_report()["clinical"]["aha_segments"]  # transmurality per AHA segment is filled
    with pytest.raises(InputError, match="not both"):
        segment_fibrosis(volume, _known_models(), slice_order="base-first", levels=["base", "mid", "apex"])


def test_a_4d_volume_is_refused():
    volume = Volume(np.zeros((2, 2, 16, 16), np.float32), Geometry(spacing_mm=(1.0, 1.0, 1.0)), axes="tkji")
    with pytest.raises(InputError, match="3D"):
        segment_fibrosis(volume, _known_models())


def test_levels_of_the_wrong_length_are_refused():
    volume = Volume(_stack(), Geometry(spacing_mm=(1.0, 1.0, 1.0)))
    with pytest.raises(InputError, match="one level per slice"):
        segment_fibrosis(volume, _known_models(), levels=["mid"])


# -- inputs -----------------------------------------------------------------------------------------------------------
def _png_folder(folder: Path, patient="Case_P001", n=3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stack = _stack(n_slices=n).astype(np.uint8)
    for k in (2, 0, 1)[:n] if n == 3 else range(n):
        write_png(stack[k], folder / f"{patient}_slice{k:03d}.png")
    return folder


def test_png_folder_is_read_in_slice_order_with_unknown_spacing(tmp_path):
    folder = _png_folder(tmp_path / "case")
    lge = read_lge_input(folder)
    assert lge.volume.array.shape == (3, 48, 48) and not lge.spacing_known
    np.testing.assert_array_equal(lge.volume.array, _stack().astype(np.uint8).astype(np.float32))


def test_png_folder_with_two_patients_is_refused(tmp_path):
    folder = _png_folder(tmp_path / "case")
    write_png(np.zeros((48, 48), np.uint8), folder / "Case_N002_slice000.png")
    with pytest.raises(InputError, match="2 patients"):
        read_lge_input(folder)


# -- tiny registered models, file job and CLI -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    from cardiac_ai.models.registry import ModelCard, save_model

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    specs = [
        ("lge_myocardium", "tiny_unet2d", {"in_channels": 1, "out_channels": 4},
         {0: "background", 2: "lv_myocardium", 3: "lv_blood_pool"}),
        ("lge_fibrosis_weak", "tiny_unet2d", {"in_channels": 1, "out_channels": 2}, {0: "background", 1: "scar"}),
        ("lge_fibrosis_pixel", "tiny_unet2d", {"in_channels": 2, "out_channels": 3},
         {0: "background", 1: "scar", 2: "microvascular_obstruction"}),
        ("lge_fibrosis_classifier", "fibrosis_cam_2d",
         {"features": [4, 4, 4, 4], "blocks_per_stage": [1, 1, 1, 1]}, {0: "fibrosis"}),
    ]
    for name, network, kwargs, label_map in specs:
        card = ModelCard(name=name, version="1.0", task="segmentation", network=network, network_kwargs=kwargs,
                         input_spec=SPEC.to_dict(), label_map=label_map)
        built = card.build_network()
        save_model(built, card, folder)
    # the stack classifier as scripts/train_emidec_fibrosis.py starts it: the slice classifier inflated to 3x3x1
    from cardiac_ai.models.weak_networks import inflate_2d_to_stack

    stack_card = dataclasses.replace(card, name="lge_fibrosis_stack_classifier", network="fibrosis_cam_stack")
    save_model(inflate_2d_to_stack(built), stack_card, folder)  # built: the slice classifier, saved last
    return folder


def _nifti(tmp_path: Path) -> tuple[Path, Geometry]:
    geometry = Geometry(spacing_mm=(1.4, 1.4, 8.0), origin_lps_mm=(-20.0, 7.0, 1.5))
    path = tmp_path / "lge.nii.gz"
    write_volume(Volume(_stack(n_slices=4, size=40), geometry), path)
    return path, geometry


def _run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_writes_every_output_on_the_input_grid(tmp_path, models_dir, capsys):
    path, geometry = _nifti(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "fibrosis", str(path), "--out", str(out), "--models-dir", str(models_dir),
                             "--device", "cpu", "--levels", "base", "mid", "mid", "apex")
    assert code == 0, err
    assert {p.name for p in out.iterdir()} >= {"labels.nii.gz", "segmentation.seg.nrrd", "report.json",
                                               "fibrosis.csv", "transmurality.csv"}
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert labels.GetSize() == (40, 40, 4)
    np.testing.assert_allclose(labels.GetSpacing(), geometry.spacing_mm)
    np.testing.assert_allclose(labels.GetOrigin(), geometry.origin_lps_mm)
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 2, 3, 4}
    report = json.loads((out / "report.json").read_text())
    assert report["supervision"] == "weak" and len(report["slice_fibrosis_probability"]) == 4
    assert report["clinical"]["volume_unit"] == "mL"
    # QC runs by default with the bundled QC models, marked indicative (they were trained on cine).
    assert {m["name"] for m in report["provenance"]["models"]} == {
        "lge_myocardium", "lge_fibrosis_weak", "lge_fibrosis_classifier", "lge_fibrosis_stack_classifier", "qc_vae",
        "qc_dice_regressor"}
    assert 0.0 < report["patient_fibrosis_probability"] < 1.0  # the registered stack classifier ran
    assert report["qc"]["indicative"] and "LGE" in report["qc"]["note"]
    assert len(report["qc"]["slices"]) == 4 and (out / "qc_slices.csv").is_file()
    assert len((out / "fibrosis.csv").read_text().splitlines()) == 5
    assert "Wrote" in stdout and "QC" in stdout
    assert report["clinical"]["mvo_volume"] is None and "MVO not assessed" in stdout
    # the LGE models draw no RV: QC judges the myocardium and the LV blood pool only
    assert report["qc"]["volume_dice"]["rv_blood_pool"] is None
    assert report["qc"]["volume_dice"]["lv_myocardium"] is not None
    assert "Right ventricle" not in json.dumps(report["qc"]["rules"])


def test_cli_reads_a_png_folder_and_reports_pixels(tmp_path, models_dir, capsys):
    folder = _png_folder(tmp_path / "case")
    out = tmp_path / "out"
    code, _, err = _run(capsys, "fibrosis", str(folder), "--out", str(out), "--models-dir", str(models_dir),
                        "--device", "cpu", "--model", "pixel", "--no-classifier", "--no-qc")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["clinical"]["area_unit"] == "pixels" and report["supervision"] == "pixel"
    assert "qc" not in report and not (out / "qc_slices.csv").exists()
    assert report["slice_fibrosis_probability"] is None and report["patient_fibrosis_probability"] is None
    assert "lge_fibrosis_stack_classifier" not in {m["name"] for m in report["provenance"]["models"]}
    assert any("no pixel size" in w for w in report["provenance"]["warnings"])
    assert report["clinical"]["mvo_assessed"] is True  # the pixel model has an MVO class
    assert not any("classifier" in w for w in report["provenance"]["warnings"])  # skipped on purpose


def test_cli_ignores_a_stated_spacing_when_the_pixel_size_is_unknown(tmp_path, models_dir, capsys):
    """PNG slices loaded into Slicer get 1 mm pixels; saved as NRRD they would be measured in false mm."""
    path = tmp_path / "from_png.nrrd"
    write_volume(Volume(_stack(n_slices=3, size=40), Geometry(spacing_mm=(1.0, 1.0, 1.0))), path)
    common = ["fibrosis", str(path), "--models-dir", str(models_dir), "--device", "cpu", "--no-qc"]
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "mm"))
    assert code == 0, err
    assert json.loads((tmp_path / "mm" / "report.json").read_text())["clinical"]["volume_unit"] == "mL"
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "px"), "--pixel-size-unknown")
    assert code == 0, err
    report = json.loads((tmp_path / "px" / "report.json").read_text())
    assert report["clinical"]["volume_unit"] == "voxels" and report["clinical"]["area_unit"] == "pixels"
    assert any("ignored, as asked" in w for w in report["provenance"]["warnings"])
    assert sitk.ReadImage(str(tmp_path / "px" / "labels.nii.gz")).GetSpacing() == (1.0, 1.0, 1.0)  # input grid
    code, _, err = _run(capsys, *common, "--out", str(tmp_path / "both"), "--pixel-size-unknown", "--spacing", "1", "1")
    assert code == 2 and "not both" in err


def test_cli_says_when_no_classifier_gives_slice_probabilities(tmp_path, models_dir, capsys):
    import shutil

    partial = tmp_path / "models"
    partial.mkdir()
    for name in ("lge_myocardium", "lge_fibrosis_weak"):
        for path in models_dir.glob(f"{name}-*"):
            shutil.copy(path, partial)
    path, _ = _nifti(tmp_path)
    code, _, err = _run(capsys, "fibrosis", str(path), "--out", str(tmp_path / "out"), "--models-dir", str(partial),
                        "--device", "cpu", "--no-qc")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["slice_fibrosis_probability"] is None
    assert any("No fibrosis classifier" in w and "--no-classifier" in w for w in report["provenance"]["warnings"])
    assert report["patient_fibrosis_probability"] is None  # no stack classifier either, and that is no warning
    assert not any("stack" in w for w in report["provenance"]["warnings"])


def test_cli_missing_model_exits_3_and_says_how_to_train(tmp_path, capsys):
    path, _ = _nifti(tmp_path)
    empty = tmp_path / "no_models"
    empty.mkdir()
    code, _, err = _run(capsys, "fibrosis", str(path), "--out", str(tmp_path / "out"), "--models-dir", str(empty),
                        "--model", "weak_stack")
    assert code == 3 and "train_emidec_fibrosis.py" in err
    assert not (tmp_path / "out").exists()


def test_cli_bad_input_exits_2(tmp_path, models_dir, capsys):
    bad = tmp_path / "not_an_image.nii.gz"
    bad.write_text("hello")
    code, _, err = _run(capsys, "fibrosis", str(bad), "--out", str(tmp_path / "out"), "--models-dir",
                        str(models_dir), "--device", "cpu")
    assert code == 2 and "error" in err
    code, _, _ = _run(capsys, "fibrosis", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o2"),
                      "--models-dir", str(models_dir))
    assert code == 2


def test_cli_refuses_a_full_output_folder_without_overwrite(tmp_path, models_dir, capsys):
    path, _ = _nifti(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = _run(capsys, "fibrosis", str(path), "--out", str(out), "--models-dir", str(models_dir))
    assert code == 4 and "overwrite" in err


# -- the training script on real data ---------------------------------------------------------------------------------
@pytest.mark.shared_data
def test_training_script_runs_every_stage_on_a_few_emidec_patients(emidec_root, tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import train_emidec_fibrosis as script
    finally:
        sys.path.pop(0)
    work = tmp_path / "work"
    code = script.main([
        "--data", str(emidec_root), "--work", str(work), "--split-file", str(tmp_path / "split.json"),
        "--max-patients", "1", "--tiny", "--crop-size", "64", "--epochs-myocardium", "1", "--epochs-classifier", "1",
        "--epochs-stack", "1", "--epochs-unet", "1", "--batch-size", "8", "--device", "cpu",
    ])
    assert code == 0
    split = json.loads((tmp_path / "split.json").read_text())
    val_folder = {p.name.split("_slice")[0] for p in (emidec_root / "dataset" / "val").glob("*.png")}
    assert val_folder <= set(split["test"]) and any(p.startswith("Case_P") for p in split["test"])
    names = {p.stem for p in (work / "models").glob("*.json")}
    assert names == {f"{n}-1.0" for n in ("lge_myocardium", "lge_fibrosis_classifier", "lge_fibrosis_stack_classifier",
                                          "lge_fibrosis_weak", "lge_fibrosis_weak_stack", "lge_fibrosis_pixel")}
    # The classifiers' cards carry the input settings they were trained with (the script's defaults).
    for name in ("lge_fibrosis_classifier", "lge_fibrosis_stack_classifier"):
        card = json.loads((work / "models" / f"{name}-1.0.json").read_text())
        assert card["inference"]["classifier_input"] == {
            "intensity": "myocardium_relative", "mask_dilation_px": 6, "heart_crop": 96}
    # Honesty: the weak data file holds no pixel label map.
    with np.load(work / "prepared" / "train_weak.npz") as weak:
        assert set(weak.files) == {"images_uint8", "patient_ids", "slice_indices", "slice_labels", "stack_labels"}
    with np.load(work / "prepared" / "train_myocardium.npz") as myocardium:
        assert set(np.unique(myocardium["labels"])) <= {0, 2, 3}


def test_the_stack_classifier_weights_positive_patients_by_negatives_over_positives(tmp_path, monkeypatch):
    """3 negative patients and 1 positive (of 2 slices each): BCE pos_weight 3 in the loss and the validation BCE."""
    import math

    import cardiac_ai.fibrosis.training as fibrosis_training
    from cardiac_ai.fibrosis.training import FibrosisSlices, train_stack_classifier
    from cardiac_ai.training import TrainingConfig

    def slices(patient_labels):
        n = 2 * len(patient_labels)
        stack_labels = np.repeat(np.asarray(patient_labels, np.int8), 2)
        return FibrosisSlices(np.random.default_rng(0).random((n, 16, 16)).astype(np.float32),
                              np.repeat([f"P{p}" for p in range(len(patient_labels))], 2), np.tile([0, 1], n // 2),
                              stack_labels.copy(), stack_labels)

    fitted = {}

    def recording_fit(config, network, train_set, val_set, **kwargs):
        fitted.update(kwargs)
        return None, network

    monkeypatch.setattr(fibrosis_training, "_fit", recording_fit)
    train, val = slices([0, 1, 0, 0]), slices([1, 0])
    myocardium = np.zeros((8, 16, 16), np.uint8)
    myocardium[:, 4:12, 4:12] = 1
    config = TrainingConfig(network="fibrosis_cam_stack",
                            network_kwargs={"features": [4, 4, 4, 4], "blocks_per_stage": [1, 1, 1, 1]},
                            epochs=1, batch_size=1, loss="bce", seed=0)
    train_stack_classifier(train, myocardium, val, myocardium[:4], config=config, out_dir=tmp_path, device="cpu")
    zero_logit = torch.zeros(1, 1)
    loss = fitted["loss_fn"]
    assert float(loss(zero_logit, torch.ones(1))) == pytest.approx(3 * math.log(2))  # a positive counts 3 times
    assert float(loss(zero_logit, torch.zeros(1))) == pytest.approx(math.log(2))
    batches = [{"image": torch.zeros(1, 1), "label": torch.tensor([label])} for label in (1.0, 0.0)]
    metrics = fitted["metric_fn"](lambda image: torch.zeros(image.shape[0], 1), batches, "cpu")
    assert metrics["val_bce"] == pytest.approx((3 + 1) / 2 * math.log(2))


def test_a_2d_file_states_no_slice_thickness_so_its_scar_is_no_volume(tmp_path):
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(_stack(n_slices=1, size=40)[0].astype(np.float32))
    image.SetSpacing((1.4, 1.4))
    sitk.WriteImage(image, str(tmp_path / "lge_2d.nii.gz"))
    two_d = read_lge_input(tmp_path / "lge_2d.nii.gz")
    assert two_d.spacing_known and not two_d.slice_spacing_known  # 1.4 mm pixels, but no thickness: no ml
    write_volume(Volume(_stack(n_slices=1, size=40), Geometry(spacing_mm=(1.4, 1.4, 8.0))), tmp_path / "lge_3d.nrrd")
    assert read_lge_input(tmp_path / "lge_3d.nrrd").slice_spacing_known  # a one-slice 3D file keeps its thickness


@pytest.mark.parametrize("thickness, known", [(None, False), (0.0, False), (8.0, True)])
def test_a_one_slice_dicom_series_without_slice_thickness_gives_no_scar_volume(tmp_path, thickness, known, caplog):
    from pydicom.uid import generate_uid
    from test_io_dicom import _slice_dataset

    folder = tmp_path / "lge"
    folder.mkdir()
    uids = {}
    for name, description in (("lge", "LGE"), ("other", "cine")):  # two series: the LGE one is chosen by its uid
        uids[name] = generate_uid()
        _slice_dataset(series_uid=uids[name], description=description, row=(1, 0, 0), column=(0, 1, 0),
                       position=(0, 0, 0), pixels=np.ones((40, 40), np.uint16), instance=1, series_number=len(uids),
                       thickness=thickness if name == "lge" else 6.0).save_as(folder / f"{name}.dcm",
                                                                               enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.dicom"):
        lge = read_lge_input(folder, series_uid=uids["lge"])
    assert lge.volume.array.shape == (1, 40, 40)
    assert lge.spacing_known and lge.slice_spacing_known is known
    assert caplog.text.count("without SliceThickness") == (0 if known else 1)  # the headers are read once
    assert read_lge_input(folder, series_uid=uids["other"]).slice_spacing_known


@pytest.mark.parametrize("stored", [dict(flip_j=True), dict(flip_j=True, flip_i=True), dict(transpose=True)],
                         ids=["rows-reversed", "turned-180", "transposed"])
def test_a_stack_stored_turned_or_mirrored_with_its_header_gets_the_same_scar_and_aha_sectors(stored):
    from cardiac_ai.geometry import InPlaneTurn

    geometry = Geometry(spacing_mm=(1.25, 1.25, 8.0), origin_lps_mm=(10.0, -5.0, 3.0))
    volume = Volume(_stack(n_slices=3, size=50), geometry)
    turn = InPlaneTurn(**stored)  # the same anatomy in another storage order, the header saying so
    other = Volume(np.ascontiguousarray(turn.apply(volume.array)), turn.geometry(geometry, volume.spatial_shape))
    results = [segment_fibrosis(v, _known_models(classifier=False), slice_order="base-first")
               for v in (volume, other)]
    assert results[1].labels.geometry == other.geometry  # written on the input's own grid
    np.testing.assert_array_equal(turn.undo(results[1].labels.array), results[0].labels.array)
    sectors = [[(s.slice_index, s.aha_segment, s.scar_pixels, s.myocardium_pixels) for s in r.measures.sectors]
               for r in results]
    assert sectors[0] == sectors[1] and any(s[2] for s in sectors[0])  # scar in the same AHA segments
