"""Semi-synthetic T1/T2 mapping cases from labelled cine anatomy (phantom, and ACDC patient001 where present)."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from cardiac_ai.datasets import Split, list_acdc, load_case, save_split
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.mapping.synthetic import (
    MAPPING_LEVELS,
    MappingCase,
    build_mapping_dataset,
    load_mapping_case,
    make_mapping_case,
    molli_inversion_times_ms,
    save_mapping_case,
)
from cardiac_ai.phantom import make_cine_phantom
from scipy import ndimage

MYOCARDIUM, LV_BLOOD = 2, 3
HEALTHY_T1_TISSUE_MS = (950.0, 1050.0)  # docs/mapping-synthetic-data.md, myocardium, MOLLI 1.5 T
HEALTHY_T1_MAP_MS = (950.0, 1110.0)  # the same on the map, where partial volume with blood raises the median


@pytest.fixture(scope="module")
def phantom():
    return make_cine_phantom(seed=3, shape=(80, 80), noise=0.02)


@pytest.fixture(scope="module")
def clean(phantom) -> MappingCase:
    return make_mapping_case(phantom, seed=5, disease="none", noise=0.0, misregistration_px=0.0)


def _myocardial_medians(volume: Volume, labels: np.ndarray) -> list[float]:
    return [float(np.median(volume.array[k][labels[k] == MYOCARDIUM])) for k in range(labels.shape[0])]


def _check_basic_shape(case: MappingCase) -> None:
    n_slices, n_j, n_i = case.t1_map_ms.array.shape
    assert n_slices == 3 and case.truth["levels"] == list(MAPPING_LEVELS)
    assert case.molli.array.shape == (8, 3, n_j, n_i) and case.molli.axes == "tkji"
    assert case.t2prep.array.shape == (len(case.t2prep_times_ms), 3, n_j, n_i)
    assert len(case.inversion_times_ms) == 8 and list(case.inversion_times_ms) == sorted(case.inversion_times_ms)
    assert case.t1_map_ms.array.dtype == np.float32 and case.labels.array.dtype == np.uint8
    assert set(np.unique(case.labels.array)) <= {0, 1, 2, 3}
    assert all((case.labels.array[k] == MYOCARDIUM).any() for k in range(3))
    spacing_i, spacing_j, spacing_k = case.t1_map_ms.geometry.spacing_mm
    assert spacing_i == spacing_j and 1.4 <= spacing_i <= 1.9 and spacing_k == 8.0
    source = case.truth["source_slices"]
    assert source == sorted(source) and len(set(source)) == 3  # base, mid, apex in cine order


def test_phantom_case_has_three_levels_labels_and_mapping_resolution(clean):
    _check_basic_shape(clean)
    assert clean.truth["disease"]["kind"] == "none" and not clean.disease_mask.array.any()


def test_myocardial_t1_median_is_in_literature_range_and_matches_truth(clean):
    labels = clean.labels.array
    t1 = _myocardial_medians(clean.t1_map_ms, labels)
    t2 = _myocardial_medians(clean.t2_map_ms, labels)
    assert t1 == clean.truth["t1_myocardium_median_ms"]  # noise 0: the map is the truth
    assert t2 == clean.truth["t2_myocardium_median_ms"]
    assert all(HEALTHY_T1_MAP_MS[0] <= v <= HEALTHY_T1_MAP_MS[1] for v in t1)
    assert all(HEALTHY_T1_TISSUE_MS[0] <= v <= HEALTHY_T1_TISSUE_MS[1]
               for v in clean.truth["t1_myocardium_tissue_median_ms"])
    assert all(45.0 <= v <= 55.0 for v in clean.truth["t2_myocardium_tissue_median_ms"])


def test_noisy_maps_keep_blood_above_myocardium_and_medians_near_truth(phantom):
    case = make_mapping_case(phantom, seed=5, disease="none")
    labels = case.labels.array
    for k in range(3):
        myo, blood = labels[k] == MYOCARDIUM, labels[k] == LV_BLOOD
        if not blood.any():
            continue
        assert np.median(case.t1_map_ms.array[k][blood]) > np.median(case.t1_map_ms.array[k][myo]) + 300
        assert np.median(case.t2_map_ms.array[k][blood]) > 2 * np.median(case.t2_map_ms.array[k][myo])
    t1 = np.array(_myocardial_medians(case.t1_map_ms, labels))
    assert np.allclose(t1, case.truth["t1_myocardium_median_ms"], rtol=0.03)
    assert np.all(case.t1_map_ms.array >= 0) and np.all(case.t1_map_ms.array < 5000)


def test_diffuse_disease_raises_myocardial_t1_against_none_for_the_same_seed(phantom, clean):
    diffuse = make_mapping_case(phantom, seed=5, disease="diffuse", noise=0.0, misregistration_px=0.0)
    change = diffuse.truth["disease"]["t1_change_percent"]
    assert 5.0 <= change <= 20.0
    before = np.array(clean.truth["t1_myocardium_tissue_median_ms"])
    after = np.array(diffuse.truth["t1_myocardium_tissue_median_ms"])
    assert np.allclose(after / before - 1, change / 100, atol=0.002)
    assert all(np.array(diffuse.truth["t1_myocardium_median_ms"]) > np.array(clean.truth["t1_myocardium_median_ms"]))
    heart = ndimage.binary_dilation(clean.labels.array > 0, iterations=5, structure=np.ones((1, 3, 3)))
    away = np.abs(diffuse.t1_map_ms.array - clean.t1_map_ms.array)[~heart]
    assert away.max() < 0.5  # only the heart changes (a trace of the adjacent slices' myocardium aside)


def test_focal_disease_changes_only_a_sector_of_the_affected_levels(phantom, clean):
    focal = make_mapping_case(phantom, seed=5, disease="focal", noise=0.0, misregistration_px=0.0)
    info = focal.truth["disease"]
    assert info["kind"] == "focal" and 60.0 <= info["sector_width_deg"] <= 120.0
    labels = focal.labels.array
    difference = focal.t1_map_ms.array - clean.t1_map_ms.array
    for k, level in enumerate(MAPPING_LEVELS):
        changed = np.abs(difference[k]) > 1.0
        if level not in info["levels"]:
            assert not changed.any()
            continue
        myocardium = labels[k] == MYOCARDIUM
        assert changed.any() and changed[myocardium].mean() < 0.5
        cy, cx = np.argwhere(np.isin(labels[k], (MYOCARDIUM, LV_BLOOD))).mean(axis=0)
        jj, ii = np.nonzero(changed)
        angle = np.degrees(np.arctan2(jj - cy, ii - cx))
        off_centre = np.abs((angle - info["sector_centre_image_deg"] + 180.0) % 360.0 - 180.0)
        assert off_centre.max() <= info["sector_width_deg"] / 2 + 25.0  # blur and partial volume spread a little
        assert (focal.disease_mask.array[k].astype(bool) <= myocardium).all() and focal.disease_mask.array[k].any()


def test_molli_and_t2prep_series_follow_their_models_at_noiseless_pixels(clean):
    labels = clean.labels.array
    k = 1
    jj, ii = np.argwhere(labels[k] == MYOCARDIUM)[len(np.argwhere(labels[k] == MYOCARDIUM)) // 2]
    t1 = float(clean.t1_map_ms.array[k, jj, ii])
    ratio = clean.truth["look_locker_ratio"]
    times = np.asarray(clean.inversion_times_ms)
    shape = np.abs(1.0 - ratio * np.exp(-times / (t1 / (ratio - 1.0))))
    signal = clean.molli.array[:, k, jj, ii].astype(np.float64)
    amplitude = signal @ shape / (shape @ shape)
    assert amplitude > 0
    np.testing.assert_allclose(signal, amplitude * shape, rtol=2e-3, atol=1e-3 * amplitude)
    # polarity: magnitude falls to a null in the middle inversion times, then recovers
    null = int(np.argmin(signal))
    assert 0 < null < len(times) - 1
    assert signal[0] > signal[null] and signal[-1] > signal[null]

    t2 = float(clean.t2_map_ms.array[k, jj, ii])
    echoes = np.asarray(clean.t2prep_times_ms)
    t2_signal = clean.t2prep.array[:, k, jj, ii].astype(np.float64)
    np.testing.assert_allclose(t2_signal, t2_signal[0] * np.exp(-echoes / t2), rtol=2e-3)


def test_same_seed_gives_identical_case_and_another_seed_differs(phantom):
    first = make_mapping_case(phantom, seed=11)
    second = make_mapping_case(phantom, seed=11)
    other = make_mapping_case(phantom, seed=12)
    for name in ("t1_map_ms", "t2_map_ms", "molli", "t2prep", "labels"):
        assert np.array_equal(getattr(first, name).array, getattr(second, name).array)
    assert first.truth == second.truth
    assert not np.array_equal(first.t1_map_ms.array, other.t1_map_ms.array) or first.truth != other.truth


def test_npz_round_trip_is_exact(tmp_path, phantom):
    case = make_mapping_case(phantom, seed=2, disease="focal")
    loaded = load_mapping_case(save_mapping_case(case, tmp_path / "case.npz"))
    for name in ("t1_map_ms", "t2_map_ms", "molli", "t2prep", "labels", "disease_mask"):
        original, read = getattr(case, name), getattr(loaded, name)
        assert read.array.dtype == original.array.dtype and np.array_equal(read.array, original.array), name
        assert read.geometry == original.geometry and read.axes == original.axes
    assert loaded.inversion_times_ms == case.inversion_times_ms
    assert loaded.t2prep_times_ms == case.t2prep_times_ms
    assert loaded.truth == case.truth and loaded.patient_id == case.patient_id


def test_spacing_and_echo_times_follow_the_options(phantom):
    case = make_mapping_case(phantom, seed=0, in_plane_spacing_mm=1.6, echo_times_ms=(0.0, 25.0, 40.0, 55.0))
    assert case.t1_map_ms.geometry.spacing_mm[:2] == (1.6, 1.6)
    assert case.t2prep.array.shape[0] == 4
    assert molli_inversion_times_ms(1000.0, 110.0) == (110.0, 190.0, 1110.0, 1190.0, 2110.0, 2190.0, 3110.0, 4110.0)


def test_case_without_labels_is_refused(phantom):
    with pytest.raises(InputError, match="no labels"):
        make_mapping_case(replace(phantom, labels=None))


def test_case_with_fewer_than_three_myocardial_slices_is_refused(phantom):
    labels = phantom.labels.array.copy()
    keep = np.flatnonzero((labels == MYOCARDIUM).any(axis=(1, 2)))[:2]
    labels[[k for k in range(labels.shape[0]) if k not in keep]] = 0
    with pytest.raises(InputError, match="at least 3"):
        make_mapping_case(replace(phantom, labels=phantom.labels.with_array(labels)))


def test_unknown_disease_is_refused(phantom):
    with pytest.raises(InputError, match="disease must be"):
        make_mapping_case(phantom, disease="amyloid")  # type: ignore[arg-type]


@pytest.mark.shared_data
def test_acdc_patient001_gives_a_plausible_mapping_case(acdc_root):
    ref = next(r for r in list_acdc(acdc_root, phases=("ED",)) if r.patient_id == "patient001")
    case = make_mapping_case(load_case(ref), seed=0, disease="none", noise=0.0, misregistration_px=0.0)
    _check_basic_shape(case)
    labels = case.labels.array
    assert _myocardial_medians(case.t1_map_ms, labels) == case.truth["t1_myocardium_median_ms"]
    assert all(HEALTHY_T1_MAP_MS[0] <= v <= HEALTHY_T1_MAP_MS[1] for v in case.truth["t1_myocardium_median_ms"])
    for k in range(3):
        blood = labels[k] == LV_BLOOD
        myo = labels[k] == MYOCARDIUM
        assert np.median(case.t1_map_ms.array[k][blood]) > np.median(case.t1_map_ms.array[k][myo])
        assert np.median(case.t2_map_ms.array[k][blood]) > np.median(case.t2_map_ms.array[k][myo])
    # field of view kept: the map covers the cine's extent within one pixel
    cine = load_case(ref).image
    extent_cine = np.array(cine.array.shape[1:]) * np.array(cine.geometry.spacing_kji_mm[1:])
    extent_map = np.array(labels.shape[1:]) * case.t1_map_ms.geometry.spacing_mm[0]
    assert np.all(np.abs(extent_map - extent_cine) <= case.t1_map_ms.geometry.spacing_mm[0])


@pytest.mark.shared_data
def test_build_mapping_dataset_writes_cases_and_index_per_split_part(acdc_root, tmp_path):
    split_file = save_split(Split(train=("patient001",), validation=("patient002",)), tmp_path / "split.json")
    calls: list[float] = []
    index_path = build_mapping_dataset(
        acdc_root, tmp_path / "out", split_file=split_file, parts=("train", "validation"), seed=1,
        progress=lambda fraction, message: calls.append(fraction),
    )
    index = json.loads(index_path.read_text())
    assert [(c["patient_id"], c["part"]) for c in index["cases"]] == [("patient001", "train"),
                                                                        ("patient002", "validation")]
    assert calls == sorted(calls) and calls[-1] == 1.0
    for entry in index["cases"]:
        case = load_mapping_case(index_path.parent / entry["file"])
        assert case.patient_id == entry["patient_id"]
        assert case.truth["t1_myocardium_median_ms"] == entry["t1_myocardium_median_ms"]
        assert not math.isnan(case.truth["t1_myocardium_median_ms"][1])
    again = make_mapping_case(load_case(list_acdc(acdc_root, phases=("ED",))[0]), seed=1)
    assert np.array_equal(again.t1_map_ms.array, load_mapping_case(index_path.parent / "train/patient001.npz")
                          .t1_map_ms.array)
