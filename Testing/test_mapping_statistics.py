"""Myocardial map statistics, AHA segments, septal ROI, blood pool, ECV and the bullseye plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Geometry
from cardiac_ai.mapping.statistics import (
    AHA_SEGMENT_NAMES,
    RVInsertion,
    aha_segments,
    bullseye_plot,
    extracellular_volume,
    find_rv_insertion,
    lv_blood_pool_t1,
    myocardial_statistics,
    segment_statistics,
    septal_roi,
    synthetic_haematocrit,
)
from PIL import Image

CENTRE = (40.3, 41.6)


def _screen_angle(rows, cols, centre=CENTRE) -> np.ndarray:
    return np.mod(np.degrees(np.arctan2(-(np.asarray(rows) - centre[0]), np.asarray(cols) - centre[1])), 360)


def _heart(shape=(84, 84), centre=CENTRE, rv_from_deg=120.0, rv_to_deg=240.0) -> np.ndarray:
    """LV ring (blood pool r < 10, myocardium to 16) with an RV crescent hugging it between two screen angles."""
    rows, cols = np.indices(shape)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    angle = _screen_angle(rows, cols, centre)
    labels = np.zeros(shape, np.uint8)
    labels[distance <= 16] = 2
    labels[distance < 10] = 3
    labels[(distance > 16) & (distance <= 24) & (angle >= rv_from_deg) & (angle <= rv_to_deg)] = 1
    return labels


# -- global statistics -------------------------------------------------------------------------------------------
def test_myocardial_statistics_match_numpy_and_exclude_nan():
    rng = np.random.default_rng(0)
    t1 = rng.normal(1000.0, 40.0, size=(32, 32))
    mask = np.zeros((32, 32), bool)
    mask[8:24, 6:26] = True
    t1[10, 10] = np.nan
    t1[12, 12] = np.inf
    stats = myocardial_statistics(t1, mask)
    values = t1[mask & np.isfinite(t1)]
    assert stats.n_pixels == values.size == mask.sum() - 2 and stats.n_nan == 2
    assert stats.mean == pytest.approx(values.mean())
    assert stats.sd == pytest.approx(values.std(ddof=1))
    assert stats.median == pytest.approx(np.median(values))
    assert stats.q1 == pytest.approx(np.percentile(values, 25))
    assert stats.q3 == pytest.approx(np.percentile(values, 75))
    assert stats.iqr == pytest.approx(stats.q3 - stats.q1)
    assert (stats.p5, stats.p95) == pytest.approx(tuple(np.percentile(values, [5, 95])))
    assert stats.units == "ms" and any("non-finite" in w for w in stats.warnings)
    assert stats.to_dict()["n_nan"] == 2


def test_myocardial_statistics_pool_the_slices_of_a_stack():
    t2 = np.stack([np.full((10, 10), 50.0), np.full((10, 10), 60.0)])
    mask = np.zeros_like(t2, bool)
    mask[0, :2, :5] = True  # 10 pixels of 50 ms
    mask[1, :3, :10] = True  # 30 pixels of 60 ms
    stats = myocardial_statistics(t2, mask)
    assert stats.n_pixels == 40 and stats.mean == pytest.approx(57.5) and stats.median == 60.0


def test_erosion_shrinks_the_ring_as_a_disk_footprint_does():
    labels = _heart()
    ring = labels == 2
    t1 = np.full(ring.shape, 1000.0)
    plain = myocardial_statistics(t1, ring)
    one_px = myocardial_statistics(t1, ring, erosion_mm=1.5, spacing_ji_mm=(1.5, 1.5))
    # A 1-pixel disk is the 4-neighbour cross: a pixel stays if it and its 4 neighbours are in the ring.
    cross = ring & np.roll(ring, 1, 0) & np.roll(ring, -1, 0) & np.roll(ring, 1, 1) & np.roll(ring, -1, 1)
    assert one_px.n_pixels == cross.sum() < plain.n_pixels
    two_px = myocardial_statistics(t1, ring, erosion_mm=3.0, spacing_ji_mm=(1.5, 1.5))
    assert two_px.n_pixels < one_px.n_pixels
    assert one_px.erosion_mm == 1.5


def test_erosion_below_one_pixel_warns_and_keeps_the_mask():
    ring = _heart() == 2
    stats = myocardial_statistics(np.ones(ring.shape), ring, erosion_mm=1.0, spacing_ji_mm=(1.6, 1.6))
    assert stats.n_pixels == ring.sum()
    assert any("smaller than one pixel" in w for w in stats.warnings)


def test_erosion_to_nothing_raises_instead_of_returning_nan():
    ring = _heart() == 2  # 6 pixels thick
    with pytest.raises(InputError, match="leaves no pixel"):
        myocardial_statistics(np.ones(ring.shape), ring, erosion_mm=8.0, spacing_ji_mm=(1.0, 1.0))


@pytest.mark.parametrize(
    ("t1", "mask", "kwargs", "match"),
    [
        (np.ones((8, 8)), np.zeros((8, 8), bool), {}, "empty"),
        (np.full((8, 8), np.nan), np.ones((8, 8), bool), {}, "NaN"),
        (np.ones((8, 8)), np.ones((8, 9), bool), {}, "shape"),
        (np.ones((8, 8)), np.full((8, 8), 2), {}, "boolean"),
        (np.ones((8, 8)), np.ones((8, 8), bool), {"erosion_mm": 2.0}, "spacing_ji_mm"),
        (np.ones((8, 8)), np.ones((8, 8), bool), {"erosion_mm": -1.0, "spacing_ji_mm": (1, 1)}, "erosion_mm"),
    ],
)
def test_myocardial_statistics_rejects_bad_input(t1, mask, kwargs, match):
    with pytest.raises(InputError, match=match):
        myocardial_statistics(t1, mask, **kwargs)


# -- RV insertion and AHA segments -------------------------------------------------------------------------------
def test_rv_insertion_points_are_the_ends_of_the_rv_contact():
    insertion = find_rv_insertion(_heart())
    anterior = _screen_angle(*insertion.anterior_px)
    inferior = _screen_angle(*insertion.inferior_px)
    assert anterior == pytest.approx(120.0, abs=5.0)  # top-left on screen
    assert inferior == pytest.approx(240.0, abs=5.0)  # bottom-left
    assert insertion.septal_arc_deg == pytest.approx(120.0, abs=8.0)
    assert insertion.septum_counter_clockwise


@pytest.mark.parametrize(("level", "segments"), [("base", range(1, 7)), ("mid", range(7, 13))])
def test_aha_segments_follow_the_documented_convention(level, segments):
    labels = _heart()
    segment_map = aha_segments(labels, level=level)
    assert segment_map.dtype == np.int8
    assert set(np.unique(segment_map)) == {0, *segments}
    assert np.array_equal(segment_map > 0, labels == 2)
    n_ring = np.count_nonzero(labels == 2)
    # Anterior insertion at 120 deg: anterior (1/7) centred at 90 deg (screen top), then counter-clockwise.
    for n, segment in enumerate(segments):
        rows, cols = np.nonzero(segment_map == segment)
        expected_centre = (90.0 + 60.0 * n) % 360
        centre = _screen_angle(rows.mean(), cols.mean())
        assert abs((centre - expected_centre + 180) % 360 - 180) < 6.0, (segment, centre)
        assert rows.size == pytest.approx(n_ring / 6, rel=0.12)


def test_apical_segments_are_four_quadrants_centred_on_the_mid_septum():
    labels = _heart()
    segment_map = aha_segments(labels, level="apex")
    assert set(np.unique(segment_map)) == {0, 13, 14, 15, 16}
    for segment, expected_centre in ((13, 90.0), (14, 180.0), (15, 270.0), (16, 0.0)):
        rows, cols = np.nonzero(segment_map == segment)
        centre = _screen_angle(rows.mean(), cols.mean())
        assert abs((centre - expected_centre + 180) % 360 - 180) < 6.0, (segment, centre)
        assert rows.size == pytest.approx(np.count_nonzero(labels == 2) / 4, rel=0.1)


def test_mirrored_image_with_geometry_gives_mirrored_segments():
    labels = _heart(shape=(84, 84), centre=(40.3, 41.5))
    standard = aha_segments(labels, level="mid", geometry=Geometry())
    # Column axis now points to the patient's right (-L): the RV appears on the screen's right.
    mirrored_geometry = Geometry(direction_lps=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    mirrored = aha_segments(labels[:, ::-1], level="mid", geometry=mirrored_geometry)
    agreement = np.mean(mirrored[:, ::-1][labels == 2] == standard[labels == 2])
    assert agreement > 0.97
    insertion = find_rv_insertion(labels[:, ::-1], geometry=mirrored_geometry)
    assert not insertion.septum_counter_clockwise and insertion.anterior_px[0] < insertion.inferior_px[0]


def test_aha_segments_accept_explicit_insertion_points():
    labels = _heart()
    detected = find_rv_insertion(labels)
    explicit = aha_segments(labels, level="mid", rv_insertion=(detected.anterior_px, detected.inferior_px))
    assert np.array_equal(explicit, aha_segments(labels, level="mid", rv_insertion=detected))
    no_rv = np.where(labels == 1, 0, labels).astype(np.uint8)
    assert np.array_equal(explicit, aha_segments(no_rv, level="mid", rv_insertion=detected))


def test_aha_segments_need_an_rv_touching_the_myocardium():
    labels = _heart()
    with pytest.raises(InputError, match="no RV blood pool"):
        aha_segments(np.where(labels == 1, 0, labels).astype(np.uint8), level="mid")
    far = np.zeros_like(labels)
    far[labels == 2] = 2
    far[:4, :4] = 1
    with pytest.raises(InputError, match="does not touch"):
        aha_segments(far, level="base")
    with pytest.raises(InputError, match="level"):
        aha_segments(labels, level="apical")
    with pytest.raises(InputError, match="no LV myocardium"):
        aha_segments(np.zeros((10, 10), np.uint8), level="mid")


def test_segment_statistics_summarise_each_segment():
    labels = _heart()
    segment_map = aha_segments(labels, level="mid")
    t1 = np.where(segment_map > 0, 900.0 + 10.0 * segment_map, np.nan)
    t1[segment_map == 10] = np.nan  # inferior segment not fitted
    stats = segment_statistics(t1, segment_map)
    assert sorted(stats) == list(range(7, 13))
    for segment in (7, 8, 9, 11, 12):
        assert stats[segment].median == pytest.approx(900.0 + 10.0 * segment)
        assert stats[segment].n_pixels == np.count_nonzero(segment_map == segment)
    assert stats[10].n_pixels == 0 and math.isnan(stats[10].mean)
    assert any("mid inferior" in w for w in stats[10].warnings)
    eroded = segment_statistics(t1, segment_map, erosion_mm=1.0, spacing_ji_mm=(1.0, 1.0))
    assert eroded[7].n_pixels < stats[7].n_pixels


def test_segment_statistics_reject_bad_segment_maps():
    with pytest.raises(InputError, match="1-16"):
        segment_statistics(np.ones((4, 4)), np.full((4, 4), 17, np.int8))
    with pytest.raises(InputError, match="no segment"):
        segment_statistics(np.ones((4, 4)), np.zeros((4, 4), np.int8))


def test_bullseye_plot_writes_a_png(tmp_path):
    values = {segment: 950.0 + 5 * segment for segment in AHA_SEGMENT_NAMES}
    values[15] = math.nan
    del values[16]
    path = bullseye_plot(values, tmp_path / "figures" / "bullseye.png", title="Native T1", vmin=900, vmax=1100)
    assert path.is_file()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 300 and image.size[1] >= 300
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_bullseye_plot_rejects_unknown_segments(tmp_path):
    with pytest.raises(InputError, match="1-16"):
        bullseye_plot({17: 1000.0}, tmp_path / "b.png")
    with pytest.raises(InputError, match="vmin < vmax"):
        bullseye_plot({1: 1000.0}, tmp_path / "b.png", vmin=1100, vmax=900)


# -- ROIs -------------------------------------------------------------------------------------------------------
def test_septal_roi_lies_between_the_insertion_points_away_from_the_borders():
    labels = _heart()
    roi = septal_roi(labels, margin_deg=10.0)
    assert roi.any() and np.all(labels[roi] == 2)
    rows, cols = np.nonzero(roi)
    angles = _screen_angle(rows, cols)
    assert angles.min() >= 125.0 and angles.max() <= 235.0  # 120-240 deg septum less 10 deg margins (+/- pixels)
    touching_blood = (labels == 3) | (labels == 1) | (labels == 0)
    neighbours = np.roll(touching_blood, 1, 0) | np.roll(touching_blood, -1, 0)
    neighbours |= np.roll(touching_blood, 1, 1) | np.roll(touching_blood, -1, 1)
    assert not np.any(roi & neighbours)  # eroded by one pixel at both borders


def test_lv_blood_pool_t1_erosion_removes_partial_volume():
    labels = _heart()
    t1 = np.where(labels == 3, 1600.0, 1000.0)
    border = (labels == 3) & ~(
        np.roll(labels == 3, 1, 0)
        & np.roll(labels == 3, -1, 0)
        & np.roll(labels == 3, 1, 1)
        & np.roll(labels == 3, -1, 1)
    )
    t1[border] = 1300.0  # partial volume with the myocardium
    eroded = lv_blood_pool_t1(t1, labels, spacing_ji_mm=(1.5, 1.5), erosion_mm=2.0)
    assert eroded.median == 1600.0 and eroded.p5 == 1600.0
    raw = lv_blood_pool_t1(t1, labels, spacing_ji_mm=(1.5, 1.5), erosion_mm=0.0)
    assert raw.p5 == 1300.0 and raw.n_pixels > eroded.n_pixels
    with pytest.raises(InputError, match="no LV blood pool"):
        lv_blood_pool_t1(t1, np.zeros_like(labels), spacing_ji_mm=(1.5, 1.5))


# -- ECV --------------------------------------------------------------------------------------------------------
def test_ecv_matches_the_hand_computed_value():
    # dR1 myo = 1/450 - 1/1000 = 0.00122222; dR1 blood = 1/300 - 1/1600 = 0.00270833; ratio 0.451282
    result = extracellular_volume(1000.0, 450.0, 1600.0, 300.0, haematocrit=0.45)
    assert result.ecv_fraction == pytest.approx(0.55 * 0.451282, rel=1e-5)
    assert result.haematocrit == 0.45 and not result.synthetic_haematocrit


def test_synthetic_haematocrit_follows_treibel_formula():
    assert synthetic_haematocrit(1600.0) == pytest.approx(866.0 / 1600.0 - 0.1232)  # 0.41805
    assert synthetic_haematocrit(1600.0) == pytest.approx(0.41805)
    result = extracellular_volume(1000.0, 450.0, 1600.0, 300.0)
    assert result.synthetic_haematocrit and result.haematocrit == pytest.approx(0.41805)
    assert result.ecv_fraction == pytest.approx((1 - 0.41805) * 0.451282, rel=1e-5)
    assert any("Synthetic haematocrit" in w for w in result.warnings)
    with pytest.raises(InputError, match="1.5 T"):
        extracellular_volume(1000.0, 450.0, 1600.0, 300.0, field_strength_t=3.0)


def test_pixelwise_ecv_map_marks_unusable_pixels():
    native = np.full((4, 5), 1000.0)
    post = np.full((4, 5), 450.0)
    native[0, 0] = np.nan
    post[1, 1] = 0.0
    result = extracellular_volume(native, post, 1600.0, 300.0, haematocrit=0.45)
    ecv = result.ecv_fraction
    assert ecv.shape == (4, 5) and ecv.dtype == np.float32
    assert math.isnan(ecv[0, 0]) and math.isnan(ecv[1, 1]) and result.n_invalid_pixels == 2
    np.testing.assert_allclose(ecv[2:], 0.55 * 0.451282, rtol=1e-5)
    assert result.to_dict()["n_pixels"] == 18


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((1000.0, 450.0, 300.0, 1600.0), {"haematocrit": 0.45}, "swapped"),
        ((1000.0, 450.0, 1600.0, 300.0), {"haematocrit": 45.0}, "percentage"),
        ((1000.0, -1.0, 1600.0, 300.0), {"haematocrit": 0.45}, "post_t1_myo"),
        ((np.ones((2, 2)), np.ones((3, 2)), 1600.0, 300.0), {"haematocrit": 0.45}, "shape"),
        ((1000.0, 450.0, np.nan, 300.0), {}, "native_t1_blood"),
    ],
)
def test_ecv_rejects_bad_input(args, kwargs, match):
    with pytest.raises(InputError, match=match):
        extracellular_volume(*args, **kwargs)


def test_synthetic_haematocrit_rejects_a_non_t1_value():
    with pytest.raises(InputError, match="outside 0-1"):
        synthetic_haematocrit(100.0)  # 8.5: not a blood T1 in ms


def test_rv_insertion_record_is_json_ready():
    record = find_rv_insertion(_heart()).to_dict()
    assert set(record) == {"anterior_px", "inferior_px", "centre_px", "septal_arc_deg", "septum_counter_clockwise"}
    assert isinstance(RVInsertion((0.0, 0.0), (1.0, 1.0), (0.5, 0.5), 90.0, True).to_dict()["septal_arc_deg"], float)
