"""Region-aware cine segmentation end to end on the phantom, with tiny models trained here in seconds."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import slicerio

from cardiac_ai.cli import main
from cardiac_ai.errors import InputError, ModelError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.metrics import dice_per_label
from cardiac_ai.metrics.regional import CardiacRegion
from cardiac_ai.models import ModelCard, ModelRegistry, save_model
from cardiac_ai.phantom import make_cine_phantom, make_phantom_cohort
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.regions.pipeline import CINE_MODEL_NAMES, CineModels, segment_cine
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.classification import train_classifier_prepared
from cardiac_ai.training.segmentation import train_segmentation_prepared
from cardiac_ai.training.slices import prepare_slices

LOCALISER = InputSpec(in_plane_spacing_mm=(4.5, 4.5), crop_size=(32, 32))
SEGMENTER = InputSpec(in_plane_spacing_mm=(3.0, 3.0), crop_size=(32, 32))
UNET = {"out_channels": 4, "channels": (8, 16, 32), "strides": (2, 2), "num_res_units": 1}


def _card(name, network, kwargs, spec, task="segmentation"):
    return ModelCard(name=name, version="0.1", task=task, network=network, network_kwargs=kwargs,
                     input_spec=spec.to_dict(), label_map={0: "background", 1: "rv", 2: "myo", 3: "lv"},
                     training_data="phantom")


@pytest.fixture(scope="module")
def cine_models_dir(tmp_path_factory):
    """Localiser, baseline, classifier and region models trained on phantoms (region models share the baseline's
    weights: the test checks the routing, not that they differ)."""
    root = tmp_path_factory.mktemp("cine_models")
    cohort = make_phantom_cohort(6, seed=5, phases=("ED", "ES"))
    train, val = cohort[:10], cohort[10:]
    none = AugmentationConfig.none()

    def seg_config(spec):
        return TrainingConfig(network="unet2d", network_kwargs=UNET, input_spec=spec.to_dict(), epochs=10,
                              batch_size=8, learning_rate=1e-2, metric_name="val_dice", metric_mode="max")

    _, localiser, _ = train_segmentation_prepared(
        prepare_slices(train, LOCALISER, crop_center="image_center"),
        prepare_slices(val, LOCALISER, crop_center="image_center"),
        config=seg_config(LOCALISER), out_dir=root / "run_loc", augmentation=none, device="cpu")
    save_model(localiser, _card(CINE_MODEL_NAMES["localiser"], "unet2d", UNET, LOCALISER), root)
    train_slices, val_slices = prepare_slices(train, SEGMENTER), prepare_slices(val, SEGMENTER)
    _, baseline, _ = train_segmentation_prepared(
        train_slices, val_slices, config=seg_config(SEGMENTER), out_dir=root / "run_seg", augmentation=none,
        device="cpu")
    for key in ("baseline", CardiacRegion.BASE, CardiacRegion.MIDDLE, CardiacRegion.APEX):
        save_model(baseline, _card(CINE_MODEL_NAMES[key], "unet2d", UNET, SEGMENTER), root)
    classifier_kwargs = {"in_channels": 1, "out_channels": 4, "features": 16}
    config = TrainingConfig(network="tiny_cnn2d", network_kwargs=classifier_kwargs, input_spec=SEGMENTER.to_dict(),
                            epochs=15, batch_size=8, learning_rate=1e-2, loss="ce",
                            metric_name="val_balanced_accuracy", metric_mode="max")
    _, classifier, _ = train_classifier_prepared(
        train_slices, val_slices, train_targets=train_slices.regions, val_targets=val_slices.regions, n_classes=4,
        config=config, out_dir=root / "run_cls", augmentation=none, device="cpu")
    save_model(classifier, _card(CINE_MODEL_NAMES["classifier"], "tiny_cnn2d", classifier_kwargs, SEGMENTER,
                                 task="classification"), root)
    return root


@pytest.fixture(scope="module")
def cine_models(cine_models_dir):
    return CineModels.from_registry(ModelRegistry(paths=[cine_models_dir]), device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["baseline", "region-aware"])
def test_segments_an_unseen_phantom_in_place(cine_models, mode):
    case = make_cine_phantom(seed=42, center_offset_mm=(12.0, -9.0), rotation_deg=15.0)
    result = segment_cine(case.image, models=cine_models, mode=mode, base_first=True, device="cpu")
    assert result.labels.geometry == case.image.geometry and result.labels.array.dtype == np.uint8
    dices = dice_per_label(result.labels.array, case.labels.array)
    assert dices[3] > 0.8 and dices[1] > 0.6, dices
    assert result.volumes_ml == pytest.approx(_volumes_ml_of(result.labels))
    assert result.lv_mass_g == pytest.approx(1.05 * result.volumes_ml["lv_myocardium"]) and result.lv_mass_g > 0
    assert len(result.slice_table()) == case.image.array.shape[0]
    assert {"localise", "segment"} <= set(result.provenance.timings_s)


@pytest.mark.slow
def test_region_aware_mode_orders_regions_base_to_apex(cine_models):
    case = make_cine_phantom(seed=43)
    result = segment_cine(case.image, models=cine_models, mode="region-aware", device="cpu")
    cardiac = result.slice_regions[result.slice_regions != CardiacRegion.NON_CARDIAC]
    assert np.all(np.diff(cardiac) >= 0), result.slice_regions  # monotonic base -> middle -> apex
    assert result.slice_region_probabilities.shape == (case.image.array.shape[0], 4)
    assert result.base_first  # the phantom's base is at low k; the classifier must find it


def test_image_without_heart_gives_empty_labels_and_a_warning(cine_models):
    rng = np.random.default_rng(0)
    volume = Volume(rng.normal(100, 5, (6, 64, 64)).astype(np.float32), Geometry((1.5, 1.5, 8.0)))
    result = segment_cine(volume, models=cine_models, mode="baseline", device="cpu")
    assert result.labels.array.shape == volume.array.shape
    assert not result.heart_found and not result.labels.array.any()
    assert result.base_first is None and result.to_report()["base_first"] is None
    assert any("No heart found" in w for w in result.provenance.warnings)
    told = segment_cine(volume, models=cine_models, mode="baseline", device="cpu", base_first=False)
    assert told.base_first is False  # what the caller said stands


def test_models_that_draw_nothing_leave_no_regions_and_no_stack_direction(cine_models, monkeypatch):
    """The localiser finds a heart but the segmentation comes back empty: no base, middle or apex is reported."""
    import cardiac_ai.regions.pipeline as regions_pipeline

    case = make_cine_phantom(seed=42)
    monkeypatch.setattr(regions_pipeline, "restore_argmax",
                        lambda probabilities, transform: np.zeros(case.image.array.shape, np.uint8))
    result = segment_cine(case.image, models=cine_models, mode="region-aware", device="cpu", min_heart_ml=0)
    assert not result.heart_found and result.base_first is None
    assert (result.slice_regions == CardiacRegion.NON_CARDIAC).all() and result.slice_region_probabilities is None
    report = result.to_report()
    assert report["base_first"] is None and all("region_probability" not in row for row in report["slices"])
    assert any("found no heart structure" in w for w in result.provenance.warnings)


def test_a_heart_smaller_than_min_heart_ml_counts_as_none(cine_models):
    case = make_cine_phantom(seed=42)
    found = segment_cine(case.image, models=cine_models, mode="baseline", device="cpu", min_heart_ml=0)
    heart_ml = found.provenance.parameters["localised_heart_ml"]
    assert found.heart_found and heart_ml > 0
    refused = segment_cine(case.image, models=cine_models, mode="baseline", device="cpu",
                           min_heart_ml=heart_ml + 1)
    assert not refused.heart_found and not refused.labels.array.any()
    assert refused.labels.geometry == case.image.geometry and refused.volumes_ml["lv_blood_pool"] == 0
    [warning] = [w for w in refused.provenance.warnings if "No heart found" in w]
    assert f"{heart_ml:.0f} ml" in warning and "--min-heart-ml" in warning


@pytest.mark.parametrize(
    "array, spacing, match",
    [
        (np.zeros((1, 64, 64)), (1.5, 1.5, 8.0), "at least 3"),
        (np.zeros((8, 64, 64)), (0.01, 0.01, 8.0), "In-plane spacing"),
        (np.zeros((8, 64, 64)), (1.5, 1.5, 0.5), "Slice spacing"),
        (np.zeros((8, 64, 64)), (0.5, 3.9, 8.0), "times as long as they are wide"),
    ],
)
def test_not_short_axis_like_input_is_refused(cine_models, array, spacing, match):
    with pytest.raises(InputError, match=match):
        segment_cine(Volume(array.astype(np.float32), Geometry(spacing)), models=cine_models, device="cpu")


def test_a_stack_too_short_for_a_ventricle_is_segmented_with_a_warning():
    from cardiac_ai.regions.pipeline import check_short_axis_stack

    image = np.random.default_rng(0).normal(100, 5, (3, 64, 64)).astype(np.float32)
    [warning] = check_short_axis_stack(Volume(image, Geometry((1.5, 1.5, 10.0))))
    assert "covers 30 mm" in warning
    assert check_short_axis_stack(Volume(np.concatenate([image, image]), Geometry((1.5, 1.5, 10.0)))) == []
    assert check_short_axis_stack(Volume(image, Geometry((1.25, 1.5, 20.0)))) == []  # rectangular pixels are fine


def test_a_label_map_given_as_the_image_is_refused_but_a_real_image_is_not(cine_models):
    phantom = make_cine_phantom(n_slices=6, seed=2)
    with pytest.raises(InputError, match="looks like a label map"):
        segment_cine(phantom.labels.with_array(phantom.labels.array.astype(np.float32)), models=cine_models,
                     device="cpu")
    assert segment_cine(phantom.image, models=cine_models, mode="baseline", device="cpu").labels.array.any()


def test_missing_model_names_the_model(tmp_path):
    with pytest.raises(ModelError, match="cine_localiser"):
        CineModels.from_registry(ModelRegistry(paths=[tmp_path]), device="cpu")


@pytest.mark.slow
def test_cli_segment_cine_and_function_write_the_contract(cine_models_dir, tmp_path, capsys):
    ed, es = make_cine_phantom(seed=7, phase="ED"), make_cine_phantom(seed=7, phase="ES")
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    write_volume(es.image, tmp_path / "es.nii.gz")
    code = main(["segment-cine", str(tmp_path / "ed.nii.gz"), "--out", str(tmp_path / "seg"), "--device", "cpu",
                 "--models-dir", str(cine_models_dir), "--base", "first"])
    assert code == 0, capsys.readouterr().err
    labels = read_volume(tmp_path / "seg" / "labels.nii.gz")
    assert labels.geometry.is_close(ed.image.geometry) and labels.array.max() <= 3
    segmentation = slicerio.read_segmentation(str(tmp_path / "seg" / "segmentation.seg.nrrd"))
    assert {s["name"] for s in segmentation["segments"]} >= {"Left ventricle blood pool", "Left ventricle myocardium"}
    report = json.loads((tmp_path / "seg" / "report.json").read_text())
    # the report's numbers are the written labels' voxels times the image's voxel size (1.5 x 1.5 x 8 mm), by label
    assert report["volumes_ml"] == pytest.approx(_volumes_ml_of(labels)) and report["volumes_ml"]["lv_blood_pool"] > 0
    assert report["lv_mass_g"] == pytest.approx(1.05 * report["volumes_ml"]["lv_myocardium"])
    assert len(report["slices"]) == ed.image.array.shape[0]
    assert report["input"]["slices_shown_to_networks"] == "as stored"  # the phantom's identity header
    assert {"load_models", "read", "write"} <= set(report["provenance"]["timings_s"])
    assert {m["name"] for m in report["provenance"]["models"]} >= {"cine_baseline", "cine_region_classifier"}

    code = main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "es.nii.gz"), "--out",
                 str(tmp_path / "fn"), "--device", "cpu", "--models-dir", str(cine_models_dir), "--mode", "baseline"])
    assert code == 0, capsys.readouterr().err
    function_report = json.loads((tmp_path / "fn" / "report.json").read_text())
    function = function_report["function"]
    assert function["lv_edv_ml"] > function["lv_esv_ml"] > 0 and 0 < function["lv_ef_percent"] < 100
    assert function_report["ed"]["input"]["slices_shown_to_networks"] == "as stored"
    assert function_report["es"]["input"]["geometry"] == es.image.geometry.to_dict()
    at_ed = _volumes_ml_of(read_volume(tmp_path / "fn" / "labels_ed.nii.gz"))
    at_es = _volumes_ml_of(read_volume(tmp_path / "fn" / "labels_es.nii.gz"))
    expected = {"lv_edv_ml": at_ed["lv_blood_pool"], "lv_esv_ml": at_es["lv_blood_pool"],
                "rv_edv_ml": at_ed["rv_blood_pool"], "rv_esv_ml": at_es["rv_blood_pool"],
                "lv_sv_ml": at_ed["lv_blood_pool"] - at_es["lv_blood_pool"],
                "lv_ef_percent": 100 * (1 - at_es["lv_blood_pool"] / at_ed["lv_blood_pool"]),
                "lv_mass_g": 1.05 * at_ed["lv_myocardium"]}
    assert {key: function[key] for key in expected} == pytest.approx(expected)
    with open(tmp_path / "fn" / "function.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert {key: float(row[key]) for key in expected} == pytest.approx(expected, rel=1e-3)


def _volumes_ml_of(labels) -> dict[str, float]:
    """Each structure's voxel count times the voxel volume: what report.json must say, computed without the package."""
    voxel_ml = float(np.prod(labels.geometry.spacing_mm)) / 1000.0
    codes = {"rv_blood_pool": 1, "lv_myocardium": 2, "lv_blood_pool": 3}
    return {name: int(np.count_nonzero(labels.array == code)) * voxel_ml for name, code in codes.items()}


def _write_dicom_series(volume, folder):
    """One MR image file per slice of ``volume`` (its geometry in the headers), as a scanner exports a series."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir()
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    direction = volume.geometry.direction_matrix
    for k, pixels in enumerate(np.asarray(volume.array)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
        ds.PatientName, ds.PatientID = "Phantom^Cine", "P1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageOrientationPatient = [float(v) for v in (*direction[:, 0], *direction[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in volume.geometry.index_to_lps(np.array([[k, 0.0, 0.0]]))[0]]
        ds.PixelSpacing = [volume.geometry.spacing_mm[1], volume.geometry.spacing_mm[0]]
        ds.SliceThickness = volume.geometry.spacing_mm[2]
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 0
        ds.PixelData = np.clip(np.round(pixels), 0, 65535).astype(np.uint16).tobytes()
        ds.save_as(str(folder / f"IM{k:03d}.dcm"), enforce_file_format=True)


def test_segment_cine_of_a_dicom_series_also_writes_a_dicom_seg_of_it(cine_models_dir, tmp_path):
    import highdicom as hd

    from cardiac_ai.io.dicom import series_headers

    ed = make_cine_phantom(seed=7, phase="ED")
    image = ed.image.with_array(np.clip(ed.image.array, 0, None) * 1000.0)
    _write_dicom_series(image, tmp_path / "dicom")
    assert main(["segment-cine", str(tmp_path / "dicom"), "--out", str(tmp_path / "seg"), "--device", "cpu",
                 "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc", "--quiet"]) == 0
    labels = read_volume(tmp_path / "seg" / "labels.nii.gz").array
    seg = hd.seg.segread(str(tmp_path / "seg" / "segmentation.dcm"))
    numbers = {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence}
    order = [h.SOPInstanceUID for h in series_headers(tmp_path / "dicom")[1]]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, combine_segments=True)
    codes = {name: code for code, name in ((1, "Right ventricle blood pool"), (2, "Left ventricle myocardium"),
                                            (3, "Left ventricle blood pool"))}
    restored = np.zeros_like(labels)
    for number, name in numbers.items():
        restored[pixels == number] = codes[name]
    np.testing.assert_array_equal(restored, labels)
    report = json.loads((tmp_path / "seg" / "report.json").read_text())
    assert "segmentation.dcm" in report["outputs"]


def test_qc_reads_a_dicom_seg_as_the_labels_it_holds(cine_models_dir, tiny_qc_models, tmp_path):
    """Another tool's (here our own) DICOM SEG of a DICOM series is judged like the label map it encodes."""
    ed = make_cine_phantom(seed=7, phase="ED")
    _write_dicom_series(ed.image.with_array(np.clip(ed.image.array, 0, None) * 1000.0), tmp_path / "dicom")
    assert main(["segment-cine", str(tmp_path / "dicom"), "--out", str(tmp_path / "seg"), "--device", "cpu",
                 "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc", "--quiet"]) == 0
    (tmp_path / "seg" / "segmentation.dcm").rename(tmp_path / "SEG0001")  # DICOM files often have no suffix
    qc = {}
    for name, labels in (("nifti", tmp_path / "seg" / "labels.nii.gz"), ("seg", tmp_path / "SEG0001")):
        assert main(["qc", str(tmp_path / "dicom"), str(labels), "--out", str(tmp_path / f"qc_{name}"), "--device", "cpu",
                     "--models-dir", str(tiny_qc_models), "--predictor", "search", "--quiet"]) == 0
        qc[name] = json.loads((tmp_path / f"qc_{name}" / "report.json").read_text())
    assert qc["seg"]["qc"]["slices"] == qc["nifti"]["qc"]["slices"]
    assert qc["seg"]["qc"]["volume_dice"] == qc["nifti"]["qc"]["volume_dice"]
    assert "labels_reoriented" in qc["seg"]["input"] or "labels_padded" in qc["seg"]["input"]


def test_function_refuses_one_file_for_both_phases_and_warns_about_pairs_that_cannot_be_one_series(
        cine_models_dir, tmp_path, capsys):
    ed, es = make_cine_phantom(seed=7, phase="ED"), make_cine_phantom(seed=7, phase="ES")
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    common = ["--device", "cpu", "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc"]
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "ed.nii.gz"), "--out",
                 str(tmp_path / "same"), *common]) == 2
    assert "ED and ES are the same file" in capsys.readouterr().err and not (tmp_path / "same").exists()

    write_volume(ed.image, tmp_path / "ed_copy.nii.gz")  # the same frame under another name
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "ed_copy.nii.gz"), "--out",
                 str(tmp_path / "twice"), *common]) == 0
    warnings = json.loads((tmp_path / "twice" / "report.json").read_text())["provenance"]["warnings"]
    assert any("identical voxel for voxel" in w for w in warnings)

    other = Geometry((es.image.geometry.spacing_mm[0] * 1.2, *es.image.geometry.spacing_mm[1:]),
                     es.image.geometry.origin_lps_mm, es.image.geometry.direction_lps)
    write_volume(Volume(es.image.array, other), tmp_path / "es_other.nii.gz")
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "es_other.nii.gz"), "--out",
                 str(tmp_path / "grids"), *common, "--quiet"]) == 0
    assert capsys.readouterr().err.count("RuntimeWarning") == 0  # notes go to the report and the log, not raw
    report = json.loads((tmp_path / "grids" / "report.json").read_text())
    assert any("different grids" in w and "spacing" in w for w in report["provenance"]["warnings"])


def test_function_takes_ed_and_es_from_one_4d_file_by_their_frames(cine_models_dir, tmp_path, capsys):
    ed, es = make_cine_phantom(seed=7, phase="ED"), make_cine_phantom(seed=7, phase="ES")
    cine = Volume(np.stack([ed.image.array, es.image.array]), ed.image.geometry, axes="tkji")
    write_volume(cine, tmp_path / "cine.nii.gz")
    path = str(tmp_path / "cine.nii.gz")
    common = ["--device", "cpu", "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc",
              "--min-heart-ml", "0"]
    assert main(["function", path, path, "--out", str(tmp_path / "same"), *common, "--frame", "0"]) == 2
    assert "--ed-frame N --es-frame M" in capsys.readouterr().err and not (tmp_path / "same").exists()
    assert main(["function", path, path, "--out", str(tmp_path / "frames"), "--ed-frame", "0", "--es-frame", "1",
                 *common]) == 0
    report = json.loads((tmp_path / "frames" / "report.json").read_text())
    assert (report["provenance"]["parameters"]["ed_frame"], report["provenance"]["parameters"]["es_frame"]) == (0, 1)
    assert not any("identical voxel" in w for w in report["provenance"]["warnings"])
    separate = tmp_path / "separate"
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    write_volume(es.image, tmp_path / "es.nii.gz")
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "es.nii.gz"), "--out", str(separate),
                 *common]) == 0
    assert (read_volume(separate / "labels_es.nii.gz").array == read_volume(
        tmp_path / "frames" / "labels_es.nii.gz").array).all()  # the frame read is the ES frame
    capsys.readouterr()


def test_function_with_a_bad_es_leaves_no_ed_output_behind(cine_models_dir, tmp_path, capsys):
    ed = make_cine_phantom(seed=7, phase="ED")
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    two_slices = Volume(ed.image.array[:2], ed.image.geometry)
    write_volume(two_slices, tmp_path / "es.nii.gz")
    common = ["--device", "cpu", "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc"]
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "es.nii.gz"), "--out",
                 str(tmp_path / "new"), *common]) == 2
    assert not (tmp_path / "new").exists()  # a rerun needs no --overwrite
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "labels_ed.nii.gz").write_bytes(b"an earlier run's file")
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "es.nii.gz"), "--out",
                 str(tmp_path / "kept"), "--overwrite", *common]) == 2
    assert (tmp_path / "kept" / "labels_ed.nii.gz").read_bytes() == b"an earlier run's file"
    capsys.readouterr()


@pytest.mark.slow
def test_known_slice_regions_override_the_classifier(cine_models):
    case = make_cine_phantom(seed=44)
    regions = np.full(case.image.array.shape[0], int(CardiacRegion.MIDDLE), np.int8)
    result = segment_cine(case.image, models=cine_models, mode="region-aware", slice_regions=regions,
                          base_first=True, device="cpu")
    assert result.slice_region_probabilities is None
    np.testing.assert_array_equal(result.slice_regions, regions)
    with pytest.raises(InputError, match="slice_regions"):
        segment_cine(case.image, models=cine_models, mode="region-aware", slice_regions=regions[:-1], device="cpu")


@pytest.mark.slow
def test_batch_goes_on_after_a_failing_case_and_resumes(cine_models_dir, tmp_path, capsys):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for seed in (1, 2):
        write_volume(make_cine_phantom(seed=seed).image, cohort / f"case{seed}.nii.gz")
    (cohort / "broken.nii.gz").write_bytes(b"not an image")
    argv = ["batch", str(cohort), "--out", str(tmp_path / "out"), "--device", "cpu", "--mode", "baseline",
            "--models-dir", str(cine_models_dir)]
    assert main(argv) == 5
    summary = (tmp_path / "out" / "summary.csv").read_text().splitlines()
    statuses = {line.split(",")[0]: line for line in summary[1:]}
    assert "failed" in statuses["broken"] and ",ok," in statuses["case1"] and ",ok," in statuses["case2"]
    assert (tmp_path / "out" / "case1" / "segmentation.seg.nrrd").exists()
    assert main(argv) == 5  # the broken case still fails; the others are not redone
    rerun = (tmp_path / "out" / "summary.csv").read_text()
    assert rerun.count("skipped") == 2


@pytest.mark.slow
def test_regions_from_segmentation_follow_the_20_60_20_rule(cine_models):
    from cardiac_ai.metrics.regional import assign_slice_regions

    case = make_cine_phantom(seed=45, n_slices=10)
    result = segment_cine(case.image, models=cine_models, mode="region-aware", region_source="segmentation",
                          base_first=True, device="cpu")
    expected = assign_slice_regions(result.labels.array, base_first=True)
    cardiac = expected != CardiacRegion.NON_CARDIAC
    np.testing.assert_array_equal(result.slice_regions[cardiac], expected[cardiac])
    with pytest.raises(InputError, match="region_source"):
        segment_cine(case.image, models=cine_models, region_source="atlas", device="cpu")


class _Undecided(__import__("torch").nn.Module):
    """A segmentation network with no opinion: equal logits for every class."""

    def forward(self, x):
        import torch

        return torch.zeros(x.shape[0], 4, *x.shape[2:], dtype=x.dtype, device=x.device)


@pytest.mark.slow
@pytest.mark.parametrize("region_input", ["baseline's crop", "own crop"])
def test_region_models_replace_or_are_averaged_with_the_baseline(cine_models, region_input):
    """Region models that take the baseline's input run on its crop (one restore); others on their own crop,
    combined on the native grid: both routes replace or average the same way."""
    from dataclasses import replace

    def card_of(model):
        if region_input == "baseline's crop":
            return model.card
        return replace(model.card, input_spec=InputSpec(in_plane_spacing_mm=(2.5, 2.5), crop_size=(40, 40)).to_dict())

    undecided = {region: replace(model, network=_Undecided(), card=card_of(model))
                 for region, model in cine_models.region_models.items()}
    models = replace(cine_models, region_models=undecided)
    case = make_cine_phantom(seed=46, n_slices=8)
    regions = np.full(case.image.array.shape[0], int(CardiacRegion.MIDDLE), np.int8)
    common = dict(models=models, mode="region-aware", slice_regions=regions, base_first=True, postprocess=False,
                  device="cpu")
    baseline = segment_cine(case.image, models=cine_models, mode="baseline", base_first=True, postprocess=False,
                            device="cpu").labels.array
    assert baseline.any()
    replaced = segment_cine(case.image, region_combination="replace", **common)
    averaged = segment_cine(case.image, region_combination="average", **common)
    assert not replaced.labels.array.any()  # the undecided model alone labels nothing
    np.testing.assert_array_equal(averaged.labels.array, baseline)  # averaged, the baseline decides
    assert averaged.provenance.parameters["region_combination"] == "average"
    with pytest.raises(InputError, match="region_combination"):
        segment_cine(case.image, region_combination="vote", **common)


def _with_neighbour_weights(cine_models):
    """The cine models with a 2.5D baseline and region models: the phantom baseline widened to see the slices on
    each side, with weights on the neighbour towards the base only, so that the order of the neighbours shows."""
    from dataclasses import replace


    from cardiac_ai.models.networks import build_network
    from cardiac_ai.training.checkpoint import widen_input_channels

    card = cine_models.baseline.card
    kwargs = dict(card.network_kwargs, in_channels=3)
    spec = InputSpec.from_dict(card.input_spec).with_slice_context(1)
    single = cine_models.baseline.network.state_dict()
    wide = build_network(card.network, **kwargs).eval()
    state = widen_input_channels(single, wide.state_dict(), keep_channel=1)
    for key, tensor in state.items():
        if tensor.shape != single[key].shape:
            tensor[:, 0] = -2.0 * tensor[:, 1]
    wide.load_state_dict(state)
    two_five_d = replace(cine_models.baseline, network=wide,
                         card=replace(card, network_kwargs=kwargs, input_spec=spec.to_dict()))
    return replace(cine_models, baseline=two_five_d, region_models={r: two_five_d for r in cine_models.region_models})


@pytest.mark.slow
def test_a_2_5d_model_sees_its_neighbours_base_side_first_whichever_way_the_stack_runs(cine_models):
    models = _with_neighbour_weights(cine_models)
    case = make_cine_phantom(seed=48, n_slices=8)
    regions = np.array([0, 1, 1, 2, 2, 2, 3, 3], np.int8)
    common = dict(mode="region-aware", postprocess=False, device="cpu")
    forward = segment_cine(case.image, models=models, slice_regions=regions, base_first=True, **common)
    single = segment_cine(case.image, models=cine_models, slice_regions=regions, base_first=True, **common)
    assert forward.provenance.parameters["base_first"] is True
    assert not np.array_equal(forward.labels.array, single.labels.array)  # the neighbours count
    reversed_image = case.image.with_array(np.ascontiguousarray(case.image.array[::-1]))
    backward = segment_cine(reversed_image, models=models, slice_regions=regions[::-1], base_first=False, **common)
    np.testing.assert_array_equal(backward.labels.array[::-1], forward.labels.array)


def test_a_region_classifier_that_sees_neighbouring_slices_is_refused(cine_models_dir, tmp_path):
    import shutil
    from dataclasses import replace

    from cardiac_ai.models import build_network

    for path in cine_models_dir.glob("*-0.1.*"):
        shutil.copy(path, tmp_path / path.name)
    card = ModelRegistry(paths=[tmp_path]).card(CINE_MODEL_NAMES["classifier"])
    kwargs = dict(card.network_kwargs, in_channels=3)
    spec = InputSpec.from_dict(card.input_spec).with_slice_context(1)
    save_model(build_network(card.network, **kwargs),
               replace(card, version="0.2", network_kwargs=kwargs, input_spec=spec.to_dict(), sha256=None), tmp_path)
    with pytest.raises(ModelError, match="one slice at a time"):
        CineModels.from_registry(ModelRegistry(paths=[tmp_path]), device="cpu")


@pytest.mark.slow
def test_batch_workers_give_the_same_cases_and_summary_as_one_process(cine_models_dir, tmp_path):
    """`cardiacai batch --workers 2`: each worker process loads the models; rows keep the cases' order; a broken
    case fails alone; a rerun skips what is done."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    for seed in (1, 2, 3):
        write_volume(make_cine_phantom(seed=seed).image, cohort / f"case{seed}.nii.gz")
    (cohort / "broken.nii.gz").write_bytes(b"not an image")
    common = [str(cohort), "--device", "cpu", "--mode", "baseline", "--models-dir", str(cine_models_dir), "--no-qc"]
    assert main(["batch", *common, "--out", str(tmp_path / "one")]) == 5
    assert main(["batch", *common, "--out", str(tmp_path / "two"), "--workers", "2"]) == 5

    def rows(folder):
        import csv

        with open(folder / "summary.csv", newline="") as handle:
            return list(csv.DictReader(handle))

    one, two = rows(tmp_path / "one"), rows(tmp_path / "two")
    assert [r["case_id"] for r in two] == [r["case_id"] for r in one] == ["broken", "case1", "case2", "case3"]
    assert two[0]["status"] == "failed" and "broken" in two[0]["inputs"]
    assert two[0]["error"] == one[0]["error"] and float(two[0]["seconds"]) >= 0  # a failed case is timed too
    for a, b in zip(one[1:], two[1:]):
        assert b["status"] == "ok" and float(b["seconds"]) > 0
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for case in ("case1", "case2", "case3"):
        np.testing.assert_array_equal(read_volume(tmp_path / "one" / case / "labels.nii.gz").array,
                                      read_volume(tmp_path / "two" / case / "labels.nii.gz").array)
    assert main(["batch", *common, "--out", str(tmp_path / "two"), "--workers", "2"]) == 5
    assert [r["status"] for r in rows(tmp_path / "two")] == ["failed"] + ["skipped (done earlier)"] * 3
    assert main(["batch", *common, "--out", str(tmp_path / "three"), "--workers", "0"]) == 2  # EXIT_INPUT


def test_run_batch_refuses_workers_it_cannot_start(tmp_path):
    from cardiac_ai.pipeline import run_batch

    with pytest.raises(InputError, match="workers"):
        run_batch([], tmp_path, task="segment-cine", models=None, workers=0)
    with pytest.raises(InputError, match="load_models"):
        run_batch([], tmp_path, task="segment-cine", models=None, workers=2)


def test_the_localiser_centre_from_its_own_grid_is_where_the_native_grid_puts_it(cine_models):
    """The heart centre is taken on the localiser's coarse grid (no restore to the native grid); it must land
    within a coarse pixel of the centre of the restored labels, in LPS millimetres."""
    from scipy import ndimage

    from cardiac_ai.regions import pipeline as regions_pipeline

    case = make_cine_phantom(seed=47)
    image = case.image.with_array(case.image.array.astype(np.float32))
    localised = regions_pipeline.localise_heart(cine_models.localiser, image, device="cpu")
    centre, heart_ml = localised.center_lps_mm, localised.volume_ml
    native = regions_pipeline._run_model(cine_models.localiser, image, "image_center", device="cpu", provenance=None)
    heart = np.argmax(native, axis=0) > 0
    components, count = ndimage.label(heart)
    largest = components == 1 + int(np.argmax(ndimage.sum_labels(heart, components, range(1, count + 1))))
    expected = image.geometry.index_to_lps(np.array(ndimage.center_of_mass(largest))[np.newaxis])[0]
    assert np.linalg.norm(centre - expected) < LOCALISER.in_plane_spacing_mm[0]
    native_ml = largest.sum() * np.prod(image.geometry.spacing_mm) / 1000
    assert heart_ml == pytest.approx(native_ml, rel=0.15)  # the size, too, is the native grid's
    native_areas = largest.sum(axis=(1, 2)) * np.prod(image.geometry.spacing_mm[:2])
    np.testing.assert_allclose(localised.slice_area_mm2, native_areas, rtol=0.2, atol=50)
    true_centre = image.geometry.index_to_lps(np.array(ndimage.center_of_mass(case.labels.array > 0))[np.newaxis])[0]
    assert np.linalg.norm(centre[:2] - true_centre[:2]) < 10.0  # in-plane, on the phantom's heart


def test_channels_a_model_never_learnt_cannot_become_structures():
    from types import SimpleNamespace

    from cardiac_ai.regions.pipeline import _learnt_channels_only

    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(4), size=(2, 5, 5)).transpose(0, 3, 1, 2).astype(np.float32)
    probabilities[:, 1] += 2.0  # the untrained RV channel's noise would win everywhere
    myocardium_only = SimpleNamespace(label_map={0: "background", 2: "lv_myocardium"})
    kept = _learnt_channels_only(probabilities, myocardium_only)
    assert set(np.unique(kept.argmax(axis=1))) <= {0, 2}
    np.testing.assert_allclose(kept.sum(axis=1), 1.0, rtol=1e-5)
    every = SimpleNamespace(label_map={0: "background", 1: "rv", 2: "myo", 3: "lv"})
    assert _learnt_channels_only(probabilities, every) is probabilities


def test_function_takes_ed_and_es_as_two_series_of_one_dicom_folder(cine_models_dir, tmp_path, capsys):
    import pydicom

    both = tmp_path / "both"
    both.mkdir()
    uids = {}
    for phase in ("ED", "ES"):
        image = make_cine_phantom(seed=7, phase=phase).image
        _write_dicom_series(image.with_array(np.clip(image.array, 0, None) * 1000.0), tmp_path / phase)
        for path in sorted((tmp_path / phase).iterdir()):
            uids[phase] = pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID
            path.rename(both / f"{phase}_{path.name}")
    common = ["--device", "cpu", "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc", "--quiet"]
    folder = str(both)
    # without a choice of series the one folder is refused, before anything is read
    assert main(["function", folder, folder, "--out", str(tmp_path / "same"), *common]) == 2
    refusal = capsys.readouterr().err
    assert "--ed-series-uid and --es-series-uid" in refusal and not (tmp_path / "same").exists()
    assert "It holds 2 series" in refusal and uids["ED"] in refusal and uids["ES"] in refusal  # the UIDs to choose
    assert main(["function", folder, folder, "--out", str(tmp_path / "fn"), "--ed-series-uid", uids["ED"],
                 "--es-series-uid", uids["ES"], *common]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "fn" / "report.json").read_text())
    assert (report["provenance"]["parameters"]["ed_series_uid"],
            report["provenance"]["parameters"]["es_series_uid"]) == (uids["ED"], uids["ES"])
    assert report["function"]["lv_edv_ml"] > report["function"]["lv_esv_ml"] > 0
    for phase in ("ed", "es"):  # each phase's labels and DICOM SEG belong to its own series
        seg = pydicom.dcmread(tmp_path / "fn" / f"segmentation_{phase}.dcm", stop_before_pixels=True)
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uids[phase.upper()]
    capsys.readouterr()


def test_function_from_label_maps_measures_them_without_segmenting(tmp_path, capsys):
    from cardiac_ai.io.seg_nrrd import write_seg_nrrd

    ed, es = make_cine_phantom(seed=7, phase="ED"), make_cine_phantom(seed=7, phase="ES")
    write_volume(ed.labels, tmp_path / "ed_gt.nii.gz")
    write_seg_nrrd(es.labels, tmp_path / "es_gt.seg.nrrd")  # another format: read by its segment names
    out = tmp_path / "fn"
    assert main(["function", str(tmp_path / "ed_gt.nii.gz"), str(tmp_path / "es_gt.seg.nrrd"), "--from-labels",
                 "--out", str(out), "--models-dir", str(tmp_path / "no_models_needed")]) == 0
    report = json.loads((out / "report.json").read_text())
    at_ed, at_es = _volumes_ml_of(ed.labels), _volumes_ml_of(es.labels)
    expected = {"lv_edv_ml": at_ed["lv_blood_pool"], "lv_esv_ml": at_es["lv_blood_pool"],
                "rv_edv_ml": at_ed["rv_blood_pool"], "rv_esv_ml": at_es["rv_blood_pool"],
                "lv_ef_percent": 100 * (1 - at_es["lv_blood_pool"] / at_ed["lv_blood_pool"]),
                "lv_mass_g": 1.05 * at_ed["lv_myocardium"]}
    assert {key: report["function"][key] for key in expected} == pytest.approx(expected)
    assert report["provenance"]["parameters"]["from_labels"] is True and report["provenance"]["models"] == []
    assert {p.name for p in out.iterdir()} == {"function.csv", "report.json"}
    assert "LV EDV" in capsys.readouterr().out
    # another tool's values: LV=1 and RV=3 swapped back by --label-codes
    swapped = {}
    for phase, phantom in (("ed", ed), ("es", es)):
        array = phantom.labels.array.astype(np.int64)
        swapped[phase] = tmp_path / f"{phase}_other.nii.gz"
        write_volume(phantom.labels.with_array(np.select([array == 1, array == 3], [3, 1], array).astype(np.uint8)),
                     swapped[phase])
    assert main(["function", str(swapped["ed"]), str(swapped["es"]), "--from-labels", "--label-codes", "LV=1",
                 "MYO=2", "RV=3", "--out", str(tmp_path / "other"), "--quiet"]) == 0
    other = json.loads((tmp_path / "other" / "report.json").read_text())["function"]
    assert {key: other[key] for key in expected} == pytest.approx(expected)
    # what does not apply is refused before anything is written
    for extra in (["--frame", "0"], ["--ed-series-uid", "1.2"]):
        assert main(["function", str(swapped["ed"]), str(swapped["es"]), "--from-labels", "--out",
                     str(tmp_path / "refused"), *extra]) == 2
    assert main(["function", str(swapped["ed"]), str(swapped["es"]), "--label-codes", "LV=1", "--out",
                 str(tmp_path / "refused")]) == 2
    assert main(["function", str(swapped["ed"]), str(swapped["ed"]), "--from-labels", "--out",
                 str(tmp_path / "refused")]) == 2
    assert not (tmp_path / "refused").exists()
    capsys.readouterr()


def test_function_of_ed_and_es_stored_in_different_axis_orders_sees_one_grid(cine_models_dir, tmp_path):
    from cardiac_ai.geometry import InPlaneTurn

    ed, es = make_cine_phantom(seed=7, phase="ED"), make_cine_phantom(seed=7, phase="ES")
    turn = InPlaneTurn(flip_j=True, flip_i=True)  # the ES frame stored turned 180 degrees, its header saying so
    write_volume(ed.image, tmp_path / "ed.nii.gz")
    write_volume(Volume(np.ascontiguousarray(turn.apply(es.image.array)),
                        turn.geometry(es.image.geometry, es.image.spatial_shape)), tmp_path / "es.nii.gz")
    write_volume(Volume(np.ascontiguousarray(turn.apply(ed.image.array)),
                        turn.geometry(ed.image.geometry, ed.image.spatial_shape)), tmp_path / "ed_turned.nii.gz")
    common = ["--device", "cpu", "--models-dir", str(cine_models_dir), "--mode", "baseline", "--no-qc", "--quiet"]
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "es.nii.gz"), "--out",
                 str(tmp_path / "mixed"), *common]) == 0
    warnings = json.loads((tmp_path / "mixed" / "report.json").read_text())["provenance"]["warnings"]
    assert not any("different grids" in w for w in warnings)
    # the same frame twice, stored two ways: called what it is
    assert main(["function", str(tmp_path / "ed.nii.gz"), str(tmp_path / "ed_turned.nii.gz"), "--out",
                 str(tmp_path / "twice"), *common]) == 0
    warnings = json.loads((tmp_path / "twice" / "report.json").read_text())["provenance"]["warnings"]
    assert any("identical voxel for voxel" in w for w in warnings)


def test_a_frame_whose_rv_is_far_smaller_than_its_lv_is_called_a_missed_rv():
    from cardiac_ai.regions.pipeline import missed_rv_warning

    volumes = {"rv_blood_pool": 0.7, "lv_myocardium": 186.5, "lv_blood_pool": 299.7}  # patient001 ED mirrored
    assert "RV was mostly missed" in missed_rv_warning(volumes) and "mirrored" in missed_rv_warning(volumes)
    assert missed_rv_warning({**volumes, "rv_blood_pool": 0.0}) is not None
    # ACDC's lowest true ratio (patient050 at end-systole, 0.11) and an empty segmentation: nothing to say
    assert missed_rv_warning({**volumes, "rv_blood_pool": 0.11 * 299.7}) is None
    assert missed_rv_warning({"rv_blood_pool": 0.0, "lv_myocardium": 0.0, "lv_blood_pool": 0.0}) is None
