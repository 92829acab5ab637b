"""T1/T2 map analysis end to end on phantom-derived mapping cases, with a tiny model trained here in seconds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from cardiac_ai.cli import main
from cardiac_ai.datasets.case import Case
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.io import read_volume, write_volume
from cardiac_ai.mapping import (
    MAP_MODEL_NAME,
    MappingModels,
    analyse_map,
    default_levels,
    make_mapping_case,
)
from cardiac_ai.metrics import dice_per_label
from cardiac_ai.models import ModelCard, ModelRegistry, save_model
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.segmentation import train_segmentation_prepared
from cardiac_ai.training.slices import prepare_slices

SPEC = InputSpec(in_plane_spacing_mm=(2.0, 2.0), crop_size=(96, 96))
UNET = {"out_channels": 4, "channels": (8, 16, 32, 64), "strides": (2, 2, 2), "num_res_units": 1}


def _mapping_case(seed: int, **phantom):
    cine = make_cine_phantom(seed=seed, **phantom)
    return make_mapping_case(cine, seed=seed, disease="none")


def _map_cases(mapping_case):
    """The T1 and T2 maps of one mapping case as training cases (labels: the ground truth)."""
    return [
        Case(f"{mapping_case.patient_id}_{name}", mapping_case.patient_id, volume, mapping_case.labels)
        for name, volume in (("t1", mapping_case.t1_map_ms), ("t2", mapping_case.t2_map_ms))
    ]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A tiny map_myocardium model trained on the T1 and T2 maps of 8 phantom mapping cases."""
    root = tmp_path_factory.mktemp("mapping_models")
    variations = [
        {"group": "NOR"}, {"group": "DCM", "rotation_deg": 20.0}, {"group": "HCM", "center_offset_mm": (10.0, -8.0)},
        {"group": "NOR", "scale": 0.85, "rotation_deg": -15.0}, {"group": "DCM", "center_offset_mm": (-9.0, 6.0)},
        {"group": "HCM", "rotation_deg": 10.0}, {"group": "NOR", "center_offset_mm": (6.0, 9.0)},
        {"group": "NOR", "scale": 1.1},
    ]
    cases = [c for seed, v in enumerate(variations) for c in _map_cases(_mapping_case(100 + seed, **v))]
    train, val = cases[:12], cases[12:]
    config = TrainingConfig(network="unet2d", network_kwargs=UNET, input_spec=SPEC.to_dict(), epochs=30,
                            batch_size=4, learning_rate=1e-2, loss="dice_ce", metric_name="val_dice",
                            metric_mode="max")
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the network's initial weights come from torch's global generator
        _, network, metrics = train_segmentation_prepared(
            prepare_slices(train, SPEC), prepare_slices(val, SPEC), config=config, out_dir=root / "run",
            augmentation=AugmentationConfig.none(), device="cpu",
        )
    assert metrics["dice_lv_myocardium"] > 0.8, metrics  # the tiny model learnt; the tests below use it
    card = ModelCard(name=MAP_MODEL_NAME, version="0.1", task="segmentation", network="unet2d", network_kwargs=UNET,
                     input_spec=SPEC.to_dict(), label_map={0: "background", 1: "rv", 2: "myo", 3: "lv"},
                     training_data="phantom mapping cases")
    save_model(network, card, root / "models")
    return root / "models"


@pytest.fixture(scope="module")
def models(models_dir):
    return MappingModels.from_registry(ModelRegistry(paths=[models_dir]), device="cpu")


@pytest.fixture(scope="module")
def unseen():
    return _mapping_case(7, group="NOR", rotation_deg=12.0, center_offset_mm=(5.0, -5.0))


@pytest.mark.parametrize("kind", ["t1", "t2"])
def test_analyse_map_recovers_the_myocardium_and_its_median(models, unseen, kind):
    volume = unseen.t1_map_ms if kind == "t1" else unseen.t2_map_ms
    result = analyse_map(volume, kind=kind, models=models, device="cpu")
    assert result.labels.geometry == volume.geometry and set(np.unique(result.labels.array)) <= {0, 2, 3}
    dice = dice_per_label(result.labels.array, unseen.labels.array, labels=(2, 3))
    assert dice[2] > 0.7 and dice[3] > 0.8, dice
    truth = np.median(unseen.truth[f"{kind}_myocardium_median_ms"])
    assert result.myocardium is not None and abs(result.myocardium.median - truth) / truth < 0.05
    assert result.levels == ("base", "mid", "apex") and len(result.contours) == 3
    assert all(c.epicardium_lps_mm is not None for c in result.contours)
    assert result.lv_blood_pool.median > 1.3 * result.myocardium.median  # blood: T1 about 1.5x, T2 4x myocardium
    assert set(result.segments) >= set(range(7, 13))  # the mid ring's six segments


@pytest.mark.parametrize("stored", [(False, True, False), (False, True, True), (True, False, False)],
                         ids=["rows-reversed", "turned-180", "transposed"])
def test_a_map_stored_turned_or_mirrored_with_its_header_gets_the_same_contours_and_aha_segments(
        models, unseen, stored):
    from cardiac_ai.geometry import InPlaneTurn

    volume = unseen.t1_map_ms
    turn = InPlaneTurn(*stored)
    other = Volume(np.ascontiguousarray(turn.apply(volume.array)), turn.geometry(volume.geometry,
                                                                                  volume.spatial_shape))
    first, second = (analyse_map(v, kind="t1", models=models, device="cpu") for v in (volume, other))
    for name in ("labels", "labels_with_rv", "segment_map"):  # on the stored grid, the same places
        assert getattr(second, name).geometry == other.geometry
        np.testing.assert_array_equal(turn.undo(getattr(second, name).array), getattr(first, name).array)
    assert set(second.segments) == set(first.segments) and second.segments
    assert {s: v.median for s, v in second.segments.items()} == {s: v.median for s, v in first.segments.items()}
    assert second.septal.keys() == first.septal.keys()
    for a, b in zip(first.contours, second.contours):
        # the same points; a mirror runs them the other way round, so that they stay counter-clockwise as displayed
        expected = a.epicardium_lps_mm[::-1] if turn.is_mirror else a.epicardium_lps_mm
        np.testing.assert_allclose(b.epicardium_lps_mm, expected, atol=1e-9)
        rows, columns = b.epicardium_px[:, 0], b.epicardium_px[:, 1]
        assert np.sum(columns * np.roll(-rows, -1) - np.roll(columns, -1) * -rows) > 0  # counter-clockwise
        k = np.full((len(b.epicardium_px), 1), b.slice_index)  # pixel points on the stored grid
        np.testing.assert_allclose(other.geometry.index_to_lps(np.hstack([k, b.epicardium_px])),
                                   b.epicardium_lps_mm, atol=1e-6)


def test_slice_without_myocardium_gets_an_explicit_warning_and_no_value(models, unseen):
    array = unseen.t1_map_ms.array.copy()
    array[2] = 0.0  # the apical slice was not fitted
    array[2, :4, :4] = 1000.0  # a few stray values so the slice is not all zero
    result = analyse_map(unseen.t1_map_ms.with_array(array), kind="t1", models=models, device="cpu")
    assert result.slices[2] is None and 2 in result.slice_warnings
    assert "no myocardium" in result.slice_warnings[2][0]
    assert any("slice 2" in w for w in result.provenance.warnings)
    stats = result.stats_dict()
    assert stats["slices"][2]["myocardium"] is None and stats["slices"][2]["warnings"]


@pytest.mark.parametrize(
    "change, kind, match",
    [
        (lambda a: a, "t2", "does not look like a T2 map"),
        (lambda a: a / 1000.0, "t1", "seconds"),
        (lambda a: np.where(a > 1400, np.nan, a), "t1", "NaN"),
        (lambda a: a - 100.0, "t1", "negative"),
        (lambda a: a * 10.0, "t1", "exceed 5000 ms"),
        (lambda a: a / 1000.0, "t2", "T2 map in ms.*seconds"),  # a T1 map in seconds called t2: median about 1
        (lambda a: a / 20000.0, "t2", "T2 map in ms.*seconds"),  # a T2 map's scale in seconds
    ],
)
def test_non_physical_or_mislabelled_maps_are_refused(models, unseen, change, kind, match):
    volume = unseen.t1_map_ms.with_array(change(unseen.t1_map_ms.array).astype(np.float32))
    with pytest.raises(InputError, match=match):
        analyse_map(volume, kind=kind, models=models, device="cpu")


def test_a_few_values_above_the_maximum_are_masked_with_a_warning(models, unseen):
    array = unseen.t1_map_ms.array.copy()
    array[0, 0, :5] = 9000.0
    result = analyse_map(unseen.t1_map_ms.with_array(array), kind="t1", models=models, device="cpu")
    assert result.input_summary["n_masked_above_max"] == 5
    assert any("above 5000 ms" in w for w in result.provenance.warnings)


def test_default_levels_split_the_stack_in_thirds():
    assert default_levels(3) == ("base", "mid", "apex")
    assert default_levels(1) == ("mid",)
    assert default_levels(6) == ("base", "base", "mid", "mid", "apex", "apex")


def test_cli_map_writes_the_contract(models_dir, tiny_qc_models, unseen, tmp_path, capsys):
    write_volume(unseen.t1_map_ms, tmp_path / "t1.nii.gz")
    out = tmp_path / "out"
    code = main(["map", str(tmp_path / "t1.nii.gz"), "--kind", "t1", "--out", str(out), "--device", "cpu",
                 "--models-dir", str(models_dir), "--models-dir", str(tiny_qc_models), "--erosion-mm", "2"])
    assert code == 0, capsys.readouterr().err
    written = {p.name for p in out.iterdir()}
    assert written == {"labels.nii.gz", "stats.json", "contours.json", "bullseye.png", "report.json",
                       "qc_slices.csv"}
    labels = sitk.ReadImage(str(out / "labels.nii.gz"))
    assert np.allclose(labels.GetSpacing(), unseen.t1_map_ms.geometry.spacing_mm, atol=1e-4)
    assert set(np.unique(sitk.GetArrayFromImage(labels))) <= {0, 2, 3}
    stats = json.loads((out / "stats.json").read_text())
    assert stats["units"] == "ms" and stats["erosion_mm"] == 2.0 and 800 < stats["myocardium"]["median"] < 1300
    assert {"7", "8", "9", "10", "11", "12"} <= set(stats["segments"]) and stats["septal_roi"]
    contours = json.loads((out / "contours.json").read_text())
    epi = np.asarray(contours["slices"][1]["epicardium"]["points_lps_mm"])
    assert epi.shape[1] == 3 and np.allclose(epi[:, 2], epi[0, 2])  # one slice plane (axial phantom geometry)
    assert (out / "bullseye.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    assert report["provenance"]["models"][0]["name"] == MAP_MODEL_NAME
    assert report["input"]["slices_shown_to_networks"] == "as stored"
    # QC runs by default when QC models are installed, and is marked indicative on maps (trained on cine)
    assert report["qc"]["indicative"] is True and report["qc"]["slices"]


def test_cli_map_refuses_a_contradicting_kind_without_partial_outputs(models_dir, unseen, tmp_path, capsys):
    write_volume(unseen.t1_map_ms, tmp_path / "t1.nii.gz")
    code = main(["map", str(tmp_path / "t1.nii.gz"), "--kind", "t2", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--models-dir", str(models_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "T2 map" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_map_refuses_nan_maps(models_dir, unseen, tmp_path, capsys):
    array = unseen.t1_map_ms.array.copy()
    array[1, 10, 10] = np.nan
    write_volume(unseen.t1_map_ms.with_array(array), tmp_path / "nan.nrrd")  # ITK reads NIfTI NaN as 0
    code = main(["map", str(tmp_path / "nan.nrrd"), "--kind", "t1", "--out", str(tmp_path / "out"),
                 "--models-dir", str(models_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "NaN" in err and not (tmp_path / "out").exists()


def _write_series(volume: Volume, path):
    """A (t, k, j, i) series as a 4D NIfTI (x, y, z, t)."""
    image = sitk.JoinSeries([sitk.GetImageFromArray(frame) for frame in volume.array])
    spacing = volume.geometry.spacing_mm
    image.SetSpacing((*spacing, 1.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def noiseless():
    return make_mapping_case(make_cine_phantom(seed=3), seed=3, disease="none", noise=0.0, misregistration_px=0.0)


def test_cli_fit_map_recovers_t1_from_a_molli_series_with_a_sidecar(noiseless, tmp_path, capsys):
    _write_series(noiseless.molli, tmp_path / "molli.nii.gz")
    (tmp_path / "molli.json").write_text(json.dumps({"inversion_times_ms": list(noiseless.inversion_times_ms)}))
    code = main(["fit-map", str(tmp_path / "molli.nii.gz"), "--kind", "molli", "--out", str(tmp_path / "fit"),
                 "--sidecar", str(tmp_path / "molli.json"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    fitted = read_volume(tmp_path / "fit" / "t1_map.nii.gz").array
    r2 = read_volume(tmp_path / "fit" / "r2_map.nii.gz").array
    myocardium = noiseless.labels.array == 2
    error = np.abs(fitted[myocardium] - noiseless.t1_map_ms.array[myocardium]) / noiseless.t1_map_ms.array[myocardium]
    assert np.median(error) < 0.01 and np.median(r2[myocardium]) > 0.99
    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert report["times_source"].startswith("sidecar") and report["n_fitted_pixels"] > 0


def test_cli_fit_map_reads_t2prep_times_from_the_command_line(noiseless, tmp_path, capsys):
    _write_series(noiseless.t2prep, tmp_path / "t2prep.nii.gz")
    times = [str(t) for t in noiseless.t2prep_times_ms]
    code = main(["fit-map", str(tmp_path / "t2prep.nii.gz"), "--kind", "t2prep", "--out", str(tmp_path / "fit"),
                 "--times", *times, "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    fitted = read_volume(tmp_path / "fit" / "t2_map.nii.gz").array
    myocardium = noiseless.labels.array == 2
    truth = noiseless.t2_map_ms.array[myocardium]
    assert np.median(np.abs(fitted[myocardium] - truth) / truth) < 0.01


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--times", "100", "200", "300"], "8 frames but 3"),
        ([], "No timing information"),
    ],
)
def test_cli_fit_map_refuses_bad_timing_without_partial_outputs(noiseless, tmp_path, capsys, extra, match):
    _write_series(noiseless.molli, tmp_path / "series.nii.gz")
    code = main(["fit-map", str(tmp_path / "series.nii.gz"), "--kind", "molli", "--out", str(tmp_path / "fit"),
                 "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "fit").exists()


def test_cli_fit_map_refuses_a_map_given_as_series(noiseless, tmp_path, capsys):
    write_volume(noiseless.t1_map_ms, tmp_path / "map.nii.gz")
    code = main(["fit-map", str(tmp_path / "map.nii.gz"), "--kind", "molli", "--out", str(tmp_path / "fit"),
                 "--times", "100", "200", "300", "400"])
    assert code == 2 and "3D image" in capsys.readouterr().err


def _post_contrast(mapping_case, *, ecv: float, haematocrit: float) -> np.ndarray:
    """Post-contrast T1 map: R1 rises by dR1 in blood and by ecv / (1 - Hct) * dR1 in myocardium (and elsewhere)."""
    native = mapping_case.t1_map_ms.array.astype(np.float64)
    labels = mapping_case.labels.array
    delta_blood = 1.0 / 350.0 - 1.0 / 1550.0
    delta = np.where(np.isin(labels, (1, 3)), delta_blood, ecv / (1.0 - haematocrit) * delta_blood)
    post = np.where(native > 0, 1.0 / (1.0 / np.maximum(native, 1e-3) + delta), 0.0)
    return post.astype(np.float32)


def test_cli_ecv_with_haematocrit_matches_the_hand_computed_value(models_dir, unseen, tmp_path, capsys):
    write_volume(unseen.t1_map_ms, tmp_path / "native.nii.gz")
    post = _post_contrast(unseen, ecv=0.25, haematocrit=0.42)
    write_volume(unseen.t1_map_ms.with_array(post), tmp_path / "post.nii.gz")
    code = main(["ecv", str(tmp_path / "native.nii.gz"), str(tmp_path / "post.nii.gz"), "--out", str(tmp_path / "e"),
                 "--haematocrit", "0.42", "--device", "cpu", "--models-dir", str(models_dir)])
    assert code == 0, capsys.readouterr().err
    ecv = json.loads((tmp_path / "e" / "report.json").read_text())["ecv"]["myocardium"]
    by_hand = (1 - 0.42) * (1 / ecv["post_t1_myocardium_median_ms"] - 1 / ecv["native_t1_myocardium_median_ms"]) / (
        1 / ecv["post_t1_blood_median_ms"] - 1 / ecv["native_t1_blood_median_ms"])
    assert ecv["ecv_fraction"] == pytest.approx(by_hand, rel=1e-4)
    assert ecv["ecv_fraction"] == pytest.approx(0.25, abs=0.03) and not ecv["synthetic_haematocrit"]
    ecv_map = read_volume(tmp_path / "e" / "ecv_map.nii.gz").array
    labels = read_volume(tmp_path / "e" / "labels.nii.gz").array
    assert np.median(ecv_map[labels == 2]) == pytest.approx(0.25, abs=0.03) and np.all(ecv_map[labels != 2] == 0)
    # the post-contrast map stored turned 180 degrees (its header saying so) is the same grid: reordered, not
    # resampled, and the same ECV
    from cardiac_ai.geometry import InPlaneTurn

    turn = InPlaneTurn(flip_j=True, flip_i=True)
    write_volume(Volume(np.ascontiguousarray(turn.apply(post)), turn.geometry(unseen.t1_map_ms.geometry,
                                                                               post.shape)), tmp_path / "post_t.nii.gz")
    assert main(["ecv", str(tmp_path / "native.nii.gz"), str(tmp_path / "post_t.nii.gz"), "--out",
                 str(tmp_path / "t"), "--haematocrit", "0.42", "--device", "cpu", "--models-dir", str(models_dir),
                 "--quiet"]) == 0
    turned = json.loads((tmp_path / "t" / "report.json").read_text())
    assert turned["ecv"]["myocardium"]["ecv_fraction"] == ecv["ecv_fraction"]
    assert not any("different grids" in w for w in turned["provenance"]["warnings"])


def test_ecv_pairs_the_native_and_post_contrast_medians_over_the_same_slices(models_dir, unseen, tmp_path, capsys):
    import dataclasses

    native = unseen.t1_map_ms.array.astype(np.float64)
    native[0] *= 1.25  # a basal slice with a longer native T1 (and the same ECV)
    wall = np.argwhere(unseen.labels.array[1] == 2)[::3]
    native[1][tuple(wall.T)] = 6000.0  # above the physical maximum: not fitted, left out of every median
    raised = dataclasses.replace(unseen, t1_map_ms=unseen.t1_map_ms.with_array(native.astype(np.float32)))
    post = _post_contrast(raised, ecv=0.25, haematocrit=0.42)
    post[0] = 0.0  # the post-contrast acquisition lacks that slice
    write_volume(raised.t1_map_ms, tmp_path / "native.nii.gz")
    write_volume(raised.t1_map_ms.with_array(post), tmp_path / "post.nii.gz")
    assert main(["ecv", str(tmp_path / "native.nii.gz"), str(tmp_path / "post.nii.gz"), "--out", str(tmp_path / "e"),
                 "--haematocrit", "0.42", "--device", "cpu", "--models-dir", str(models_dir)]) == 0, \
        capsys.readouterr().err
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    myocardium = read_volume(tmp_path / "e" / "labels.nii.gz").array == 2
    myocardium[0] = False  # where both maps have values
    myocardium &= native < 5000
    ecv = report["ecv"]["myocardium"]
    assert ecv["native_t1_myocardium_median_ms"] == pytest.approx(np.median(native[myocardium]), rel=1e-4)
    assert ecv["ecv_fraction"] == pytest.approx(0.25, abs=0.03)  # as with both maps whole (the test above)
    assert any("taken over the pixels both maps cover" in w for w in report["provenance"]["warnings"])


def test_cli_ecv_resamples_a_post_contrast_map_with_another_field_of_view_onto_the_native_grid(
        models_dir, unseen, tmp_path, capsys):
    from cardiac_ai.geometry import Geometry, Volume

    native = unseen.t1_map_ms
    write_volume(native, tmp_path / "native.nii.gz")
    post = _post_contrast(unseen, ecv=0.25, haematocrit=0.42)
    rows, columns = post.shape[1:]
    j0, i0 = rows // 8, columns // 8  # a smaller field of view, shifted: the same slices in scanner coordinates
    geometry = native.geometry
    origin = geometry.index_to_lps(np.array([[0.0, j0, i0]]))[0]
    cropped = Volume(post[:, j0:rows - j0 // 2, i0:columns - i0 // 2].copy(),
                     Geometry(geometry.spacing_mm, tuple(origin), geometry.direction_lps))
    write_volume(cropped, tmp_path / "post_crop.nii.gz")
    common = ["--haematocrit", "0.42", "--device", "cpu", "--models-dir", str(models_dir)]
    assert main(["ecv", str(tmp_path / "native.nii.gz"), str(tmp_path / "post_crop.nii.gz"), "--out",
                 str(tmp_path / "e"), *common]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["ecv"]["myocardium"]["ecv_fraction"] == pytest.approx(0.25, abs=0.03)
    assert "resampled onto the native grid" in report["ecv"]["roi_source"]
    assert any("resampled" in w for w in report["provenance"]["warnings"])
    assert read_volume(tmp_path / "e" / "ecv_map.nii.gz").geometry.is_close(native.geometry)

    far = Geometry(geometry.spacing_mm, tuple(np.asarray(geometry.origin_lps_mm) + [0.0, 0.0, 500.0]),
                   geometry.direction_lps)  # other slices altogether
    write_volume(Volume(post, far), tmp_path / "post_far.nii.gz")
    assert main(["ecv", str(tmp_path / "native.nii.gz"), str(tmp_path / "post_far.nii.gz"), "--out",
                 str(tmp_path / "f"), *common]) == 2
    assert "covers only 0 % of the myocardium" in capsys.readouterr().err and not (tmp_path / "f").exists()


def test_cli_ecv_refuses_a_percentage_haematocrit(models_dir, unseen, tmp_path, capsys):
    write_volume(unseen.t1_map_ms, tmp_path / "native.nii.gz")
    write_volume(unseen.t1_map_ms.with_array(_post_contrast(unseen, ecv=0.25, haematocrit=0.42)),
                 tmp_path / "post.nii.gz")
    code = main(["ecv", str(tmp_path / "native.nii.gz"), str(tmp_path / "post.nii.gz"), "--out", str(tmp_path / "e"),
                 "--haematocrit", "42", "--device", "cpu", "--models-dir", str(models_dir)])
    assert code == 2 and "0.42" in capsys.readouterr().err and not (tmp_path / "e").exists()


def _write_dicom_molli(mapping_case, folder):
    """One file per (inversion time, slice): InversionTime in the header, files named in scrambled order."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    series_uid = generate_uid()
    geometry = mapping_case.molli.geometry
    n_frames, n_slices = mapping_case.molli.array.shape[:2]
    folder.mkdir()
    for t in range(n_frames):
        for k in range(n_slices):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
            ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, meta.MediaStorageSOPInstanceUID, "MR"
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), series_uid, 1
            ds.InstanceNumber = t + 1
            ds.InversionTime = mapping_case.inversion_times_ms[t]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.ImagePositionPatient = [float(v) for v in geometry.index_to_lps(np.array([[k, 0.0, 0.0]]))[0]]
            ds.PixelSpacing = [geometry.spacing_mm[1], geometry.spacing_mm[0]]
            ds.SliceThickness = geometry.spacing_mm[2]
            pixels = np.round(mapping_case.molli.array[t, k]).astype(np.uint16)
            ds.Rows, ds.Columns = pixels.shape
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit, ds.PixelRepresentation = 15, 0
            ds.PixelData = pixels.tobytes()
            ds.save_as(str(folder / f"img{(7 * (t * n_slices + k)) % 97:03d}.dcm"), enforce_file_format=True)


def test_cli_fit_map_reads_inversion_times_from_dicom_headers(noiseless, tmp_path, capsys):
    _write_dicom_molli(noiseless, tmp_path / "dicom")
    code = main(["fit-map", str(tmp_path / "dicom"), "--kind", "molli", "--out", str(tmp_path / "fit"),
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert report["times_source"] == "DICOM headers"
    assert report["times_ms"] == pytest.approx(list(noiseless.inversion_times_ms))
    fitted = read_volume(tmp_path / "fit" / "t1_map.nii.gz")
    assert fitted.geometry.is_close(noiseless.t1_map_ms.geometry, atol_mm=1e-3)
    myocardium = noiseless.labels.array == 2
    truth = noiseless.t1_map_ms.array[myocardium]
    assert np.median(np.abs(fitted.array[myocardium] - truth) / truth) < 0.02  # pixels rounded to integers


def test_cli_fit_map_takes_times_given_for_a_dicom_series_whose_headers_have_none(noiseless, tmp_path, capsys):
    import pydicom

    _write_dicom_molli(noiseless, tmp_path / "dicom")
    for path in (tmp_path / "dicom").iterdir():  # an export that dropped InversionTime (or keeps it in a private tag)
        ds = pydicom.dcmread(str(path))
        del ds.InversionTime
        ds.save_as(str(path))
    times = [str(t) for t in noiseless.inversion_times_ms]
    code = main(["fit-map", str(tmp_path / "dicom"), "--kind", "molli", "--times", *times, "--out",
                 str(tmp_path / "fit"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "fit" / "report.json").read_text())
    assert report["times_source"] == "--times"
    myocardium = noiseless.labels.array == 2
    fitted, truth = read_volume(tmp_path / "fit" / "t1_map.nii.gz").array[myocardium], \
        noiseless.t1_map_ms.array[myocardium]
    assert np.median(np.abs(fitted - truth) / truth) < 0.02
    assert main(["fit-map", str(tmp_path / "dicom"), "--kind", "molli", "--out", str(tmp_path / "none"),
                 "--device", "cpu"]) == 2  # without times anywhere: the header error, as before
    assert "no InversionTime" in capsys.readouterr().err


def test_cli_fit_map_refuses_dicom_frames_off_the_first_frames_grid_and_names_a_corrupt_file(noiseless, tmp_path,
                                                                                               capsys):
    import pydicom

    _write_dicom_molli(noiseless, tmp_path / "shifted")
    for path in sorted((tmp_path / "shifted").iterdir()):  # every slice of frame 3 moved by 4 mm
        ds = pydicom.dcmread(str(path))
        if ds.InstanceNumber == 3:
            ds.ImagePositionPatient = [float(v) + 4.0 * (i == 0) for i, v in enumerate(ds.ImagePositionPatient)]
            ds.save_as(str(path))
    assert main(["fit-map", str(tmp_path / "shifted"), "--kind", "molli", "--out", str(tmp_path / "a"),
                 "--device", "cpu"]) == 2
    assert "frame 2 lies on another grid than frame 0 (origin" in capsys.readouterr().err

    _write_dicom_molli(noiseless, tmp_path / "cut")
    victim = sorted((tmp_path / "cut").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:-500])
    assert main(["fit-map", str(tmp_path / "cut"), "--kind", "molli", "--out", str(tmp_path / "b"),
                 "--device", "cpu"]) == 2
    assert f"Cannot read the pixel data of {victim}" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_bright_organ_far_from_the_heart_does_not_replace_a_small_apical_lv(models, unseen, monkeypatch):
    """At the apex the LV is small; a larger false LV far away (the liver on a T1 map) must not be chosen."""
    from cardiac_ai.mapping import pipeline as mapping_pipeline

    truth = unseen.labels.array
    real_segment = mapping_pipeline._segment_probabilities

    def with_false_lv(map_ms, volume, model, *, device, provenance):
        labels = np.argmax(real_segment(map_ms, volume, model, device=device, provenance=provenance), axis=0)
        apex = labels[-1]
        far = np.zeros_like(apex, dtype=bool)
        far[-30:-2, -30:-2] = True  # a corner blob larger than the apical LV, > 40 mm from the heart
        assert far.sum() > np.isin(truth[-1], (2, 3)).sum()
        apex[far] = 3
        apex[-31, -31:-1] = 2
        return np.moveaxis(np.eye(4, dtype=np.float32)[labels], -1, 0)  # one-hot probabilities

    monkeypatch.setattr(mapping_pipeline, "_segment_probabilities", with_false_lv)
    result = analyse_map(unseen.t1_map_ms, kind="t1", models=models, device="cpu")
    apex = result.labels.array[-1]
    assert not np.isin(apex[-30:-2, -30:-2], (2, 3)).any()
    assert dice_per_label(apex[None], truth[-1][None], labels=(2,))[2] > 0.6


def test_a_heart_far_from_the_centre_of_a_large_view_is_found_then_segmented_in_a_crop(models, unseen, monkeypatch):
    """A view much larger than the model's crop is first searched at twice the model's spacing; the network then
    runs on a crop of its own input size around the LV it found, wherever the heart lies in the view."""
    from cardiac_ai.models import inference

    pad = ((0, 0), (0, 160), (0, 160))  # the heart ends up in the top-left part of a view about twice as large
    big = Volume(np.pad(unseen.t1_map_ms.array, pad), unseen.t1_map_ms.geometry)
    truth = np.pad(unseen.labels.array, pad)
    shapes = []
    real_predict = inference.predict_slices

    def recording(network, images, **kwargs):
        shapes.append(images.shape[-2:])
        return real_predict(network, images, **kwargs)

    monkeypatch.setattr(inference, "predict_slices", recording)
    result = analyse_map(big, kind="t1", models=models, device="cpu")

    spacing = big.geometry.spacing_mm[0]
    coarse_side = 2 * SPEC.in_plane_spacing_mm[0]
    assert shapes[0][0] * coarse_side >= big.array.shape[1] * spacing  # the whole view, at twice the spacing
    assert shapes[-1] == SPEC.crop_size  # then the model's own crop
    dice = dice_per_label(result.labels.array, truth, labels=(2,))[2]
    assert dice > 0.8, dice


def test_cli_fit_map_where_every_pixel_fails_is_an_error_not_an_empty_map(tmp_path, capsys):
    flat = np.full((8, 2, 16, 16), 500.0, np.float32)  # no inversion recovery anywhere
    sitk.WriteImage(sitk.JoinSeries([sitk.GetImageFromArray(frame) for frame in flat]), str(tmp_path / "flat.nii.gz"))
    code = main(["fit-map", str(tmp_path / "flat.nii.gz"), "--kind", "molli", "--times", "100", "180", "260", "1000",
                 "1080", "1800", "1880", "2600", "--out", str(tmp_path / "fit"), "--device", "cpu"])
    assert code == 2 and "Every one of the 512 pixels" in capsys.readouterr().err
    assert not (tmp_path / "fit").exists()


def test_a_myocardium_with_the_blood_pools_value_or_no_spread_is_said_to_maybe_not_lie_on_a_heart():
    from cardiac_ai.mapping.pipeline import implausible_heart_warnings
    from cardiac_ai.mapping.statistics import myocardial_statistics

    rng = np.random.default_rng(0)
    mask = np.ones((1, 8, 8), bool)

    def stats(values):
        return myocardial_statistics(values.reshape(1, 8, 8), mask, spacing_ji_mm=(1.5, 1.5))

    heart_muscle, blood = stats(rng.normal(1000, 40, 64)), stats(rng.normal(1550, 60, 64))
    assert implausible_heart_warnings(heart_muscle, blood, kind="t1") == []
    assert implausible_heart_warnings(heart_muscle, None, kind="t1") == []
    same = implausible_heart_warnings(heart_muscle, stats(rng.normal(1010, 40, 64)), kind="t1")
    assert len(same) == 1 and "nearly the same T1" in same[0]
    flat = implausible_heart_warnings(stats(np.full(64, 1200.0)), blood, kind="t1")
    assert len(flat) == 1 and "nearly all equal" in flat[0]


def test_cli_fit_map_signed_fits_phase_sensitive_molli_that_magnitude_fitting_refuses(tmp_path, capsys):
    from cardiac_ai.geometry import Geometry, Volume

    times = [100.0, 180.0, 260.0, 1000.0, 1080.0, 1900.0, 2900.0, 3900.0]
    a, b, t1 = 1000.0, 1900.0, 1100.0
    t1_star = t1 / (b / a - 1.0)
    signal = a - b * np.exp(-np.asarray(times) / t1_star)  # negative before the null point: PSIR
    frames = np.broadcast_to(signal[:, None, None, None], (8, 1, 12, 12)).astype(np.float32).copy()
    write_volume(Volume(frames, Geometry((1.5, 1.5, 8.0)), "tkji"), tmp_path / "psir.nii.gz")
    args = ["fit-map", str(tmp_path / "psir.nii.gz"), "--kind", "molli", "--times", *map(str, times), "--device",
            "cpu"]
    assert main([*args, "--out", str(tmp_path / "magnitude")]) == 2
    assert "fit-map --signed" in capsys.readouterr().err
    assert main([*args, "--signed", "--out", str(tmp_path / "signed")]) == 0, capsys.readouterr().err
    fitted = read_volume(tmp_path / "signed" / "t1_map.nii.gz").array
    np.testing.assert_allclose(fitted, t1, rtol=0.01)
    assert json.loads((tmp_path / "signed" / "report.json").read_text())["provenance"]["parameters"]["signed"]


def test_the_whole_view_crop_covers_the_slices_as_the_network_sees_them():
    from cardiac_ai.geometry import Geometry, InPlaneTurn
    from cardiac_ai.mapping.pipeline import _whole_view_spec
    from cardiac_ai.preprocessing import preprocess

    tall = np.zeros((2, 256, 96), np.float32)
    tall[:, 100:150, 30:60] = 1000.0
    stored_turn = InPlaneTurn(transpose=True)  # a stack stored transposed, its header saying so
    geometry = stored_turn.geometry(Geometry((1.25, 1.25, 8.0)), (2, 96, 256))
    volume = Volume(tall, geometry)
    spec = _whole_view_spec(SPEC, volume)
    prepared = preprocess(volume, spec, crop_center="image_center")
    kept = prepared.transform.in_plane_turn.undo(prepared.image)  # nothing of the field of view cut off
    assert spec.crop_size[0] * SPEC.in_plane_spacing_mm[0] >= 96 * 1.25
    assert spec.crop_size[1] * SPEC.in_plane_spacing_mm[1] >= 256 * 1.25
    assert kept.shape[1:] == spec.crop_size[::-1]
