"""Synthetic cine phantom: the anatomy it promises (per slice, ED vs ES, groups), determinism and speed."""
from __future__ import annotations

import time

import numpy as np
import pytest
from cardiac_ai.datasets import Case
from cardiac_ai.errors import InputError
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL, check_label_values
from cardiac_ai.phantom import make_cine_phantom, make_cine_phantom_pair, make_phantom_cohort
from scipy import ndimage


def _ring_closed(labels_slice: np.ndarray) -> bool:
    """True when every pixel touching the LV cavity (8-neighbourhood) is myocardium."""
    cavity = labels_slice == LV_BLOOD_POOL
    rim = ndimage.binary_dilation(cavity, structure=np.ones((3, 3))) & ~cavity
    return bool(cavity.any()) and bool(np.all(labels_slice[rim] == LV_MYOCARDIUM))


def _mean_wall_mm(labels_slice: np.ndarray, pixel_mm: float) -> float:
    cavity = np.count_nonzero(labels_slice == LV_BLOOD_POOL)
    outer = cavity + np.count_nonzero(labels_slice == LV_MYOCARDIUM)
    return (np.sqrt(outer / np.pi) - np.sqrt(cavity / np.pi)) * pixel_mm


def test_default_phantom_has_the_designed_labels_per_slice():
    case = make_cine_phantom()
    assert isinstance(case, Case)
    labels = case.labels.array
    assert labels.shape == case.image.array.shape == (8, 96, 96) and labels.dtype == np.uint8
    present = [set(np.unique(labels[k]).tolist()) - {0} for k in range(8)]
    assert present == [set(), {1, 2, 3}, {1, 2, 3}, {1, 2, 3}, {1, 2, 3}, {2, 3}, {2}, set()]
    check_label_values(labels)
    assert case.labels.geometry == case.image.geometry
    assert case.image.geometry.spacing_mm == (1.5, 1.5, 8.0)
    assert case.metadata["heart_slices"] == (1, 6) and case.metadata["slice_order"] == "base_to_apex"


def test_myocardium_surrounds_the_lv_on_mid_slices_and_opens_at_the_base():
    labels = make_cine_phantom().labels.array
    assert all(_ring_closed(labels[k]) for k in (2, 3, 4, 5))
    assert not _ring_closed(labels[1])
    assert not ndimage.binary_fill_holes(labels[1] == LV_MYOCARDIUM)[labels[1] == LV_BLOOD_POOL].all()


def test_rv_lies_beside_the_septum_on_the_left():
    labels = make_cine_phantom().labels.array[3]
    rv_i = np.nonzero(labels == RV_BLOOD_POOL)[1].mean()
    lv_i = np.nonzero(labels == LV_BLOOD_POOL)[1].mean()
    assert rv_i < lv_i
    touching = ndimage.binary_dilation(labels == RV_BLOOD_POOL) & (labels == LV_MYOCARDIUM)
    assert touching.any()


def test_lv_cavity_shrinks_toward_the_apex():
    labels = make_cine_phantom().labels.array
    areas = [np.count_nonzero(labels[k] == LV_BLOOD_POOL) for k in range(1, 7)]
    assert areas == sorted(areas, reverse=True) and areas[-1] == 0


@pytest.mark.parametrize("group", ["NOR", "DCM", "HCM"])
def test_es_has_smaller_cavity_and_thicker_wall_than_ed(group):
    ed, es = make_cine_phantom_pair(group=group)
    assert np.count_nonzero(es.labels.array == LV_BLOOD_POOL) < np.count_nonzero(ed.labels.array == LV_BLOOD_POOL)
    assert _mean_wall_mm(es.labels.array[3], 1.5) > _mean_wall_mm(ed.labels.array[3], 1.5) + 0.2
    assert np.count_nonzero(es.labels.array == RV_BLOOD_POOL) < np.count_nonzero(ed.labels.array == RV_BLOOD_POOL)
    assert (ed.metadata["phase"], es.metadata["phase"]) == ("ED", "ES")
    assert ed.patient_id == es.patient_id and ed.case_id != es.case_id


def test_groups_differ_as_named():
    groups = ("NOR", "DCM", "HCM")
    volumes = {g: np.count_nonzero(make_cine_phantom(group=g).labels.array == LV_BLOOD_POOL) for g in groups}
    assert volumes["HCM"] < volumes["NOR"] < volumes["DCM"]
    walls = {g: _mean_wall_mm(make_cine_phantom(group=g).labels.array[3], 1.5) for g in groups}
    assert walls["DCM"] < walls["NOR"] < walls["HCM"]


def test_blood_is_bright_and_myocardium_dark():
    case = make_cine_phantom()
    image, labels = case.image.array, case.labels.array
    assert image.dtype == np.float32 and np.isfinite(image).all() and image.min() >= 0
    blood = np.median(image[labels == LV_BLOOD_POOL])
    myocardium = np.median(image[labels == LV_MYOCARDIUM])
    background = np.median(image[labels == 0])
    assert blood > 2 * myocardium and blood > 1.5 * background


def test_same_seed_gives_the_same_phantom_and_other_seeds_other_noise():
    first, second, other = make_cine_phantom(seed=5), make_cine_phantom(seed=5), make_cine_phantom(seed=6)
    np.testing.assert_array_equal(first.image.array, second.image.array)
    np.testing.assert_array_equal(first.labels.array, other.labels.array)  # anatomy depends on options only
    assert not np.array_equal(first.image.array, other.image.array)


def test_noise_and_bias_can_be_switched_off():
    case = make_cine_phantom(noise=0.0, bias_field=False)
    mid = case.image.array[3][case.labels.array[3] == LV_BLOOD_POOL]
    assert np.median(mid) == pytest.approx(0.85, abs=0.01)


def test_rotation_moves_the_rv_around_the_lv():
    def rv_angle(case: Case) -> float:
        labels = case.labels.array[3]
        rv = np.argwhere(labels == RV_BLOOD_POOL).mean(axis=0)
        lv = np.argwhere(labels == LV_BLOOD_POOL).mean(axis=0)
        return float(np.degrees(np.arctan2(rv[0] - lv[0], rv[1] - lv[1])))

    turned = (rv_angle(make_cine_phantom(rotation_deg=30.0)) - rv_angle(make_cine_phantom()) + 180.0) % 360.0 - 180.0
    assert abs(abs(turned) - 30.0) < 5.0


def test_geometry_options_are_used():
    direction = (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
    case = make_cine_phantom(origin_lps_mm=(10.0, -5.0, 3.0), direction_lps=direction, n_slices=6, shape=(64, 80),
                             spacing_mm=(2.0, 2.0, 10.0))
    assert case.image.array.shape == (6, 64, 80)
    assert case.image.geometry.origin_lps_mm == (10.0, -5.0, 3.0)
    assert case.labels.geometry.direction_lps == direction


def test_default_phantom_is_fast():
    make_cine_phantom()
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        make_cine_phantom()
        timings.append(time.perf_counter() - start)
    assert min(timings) < 0.05 * 4  # 50 ms target; slack for a shared CI machine


def test_cohort_varies_position_and_size_and_cycles_groups():
    cohort = make_phantom_cohort(4, seed=1)
    assert len(cohort) == 8
    assert [c.case_id for c in cohort[:2]] == ["phantom000_ED", "phantom000_ES"]
    assert [c.image_labels["group"] for c in cohort[::2]] == ["NOR", "DCM", "HCM", "NOR"]
    centres = {tuple(np.round(ndimage.center_of_mass(c.labels.array == LV_BLOOD_POOL), 1)) for c in cohort[::2]}
    assert len(centres) == 4
    again = make_phantom_cohort(4, seed=1)
    assert all(np.array_equal(a.image.array, b.image.array) for a, b in zip(cohort, again, strict=True))
    assert len(make_phantom_cohort(2, phases=("ED",))) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(phase="MID"), "phase must be 'ED' or 'ES'"),
        (dict(group="XYZ"), "group must be one of"),
        (dict(n_slices=4), "leaves 2 heart slices"),
        (dict(shape=(16, 96)), "at least 32 pixels"),
        (dict(shape=(40, 40), spacing_mm=(1.0, 1.0, 8.0)), "does not fit in"),
        (dict(noise=-0.1), "noise must be in"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        make_cine_phantom(**kwargs)


def test_cohort_needs_patients():
    with pytest.raises(InputError, match="n >= 1"):
        make_phantom_cohort(0)
