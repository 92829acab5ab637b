"""Clinical LGE numbers on synthetic rings with known scar: areas, percentages, MVO, transmurality per sector."""
from __future__ import annotations

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.fibrosis.clinical import (
    DEFAULT_ANCHOR_ANGLE_DEG,
    scar_measures,
    sector_transmurality,
)

SIZE = 96
CENTRE = (48.0, 48.0)
INNER, OUTER = 20.0, 30.0


def _polar(shape=(SIZE, SIZE), centre=CENTRE):
    rows, cols = np.indices(shape)
    d_row, d_col = rows - centre[0], cols - centre[1]
    radius = np.hypot(d_row, d_col)
    angle = np.mod(np.degrees(np.arctan2(-d_row, d_col)), 360.0)  # screen angle: 0 right, 90 up
    return radius, angle


def _ring() -> np.ndarray:
    radius, _ = _polar()
    labels = np.zeros((SIZE, SIZE), np.uint8)
    labels[radius < INNER] = 3
    labels[(radius >= INNER) & (radius < OUTER)] = 2
    return labels


def _sector_angles(sector: int) -> tuple[float, float]:
    """Screen angles (start, end) of six-sector ``sector`` with the default anchor, septum counter-clockwise."""
    phi_start = {2: 0, 3: 60, 4: 120, 5: 180, 6: 240, 1: 300}[sector]
    return DEFAULT_ANCHOR_ANGLE_DEG + phi_start, DEFAULT_ANCHOR_ANGLE_DEG + phi_start + 60


def _in_angles(angle, start, end, margin=0.0):
    return np.mod(angle - (start + margin), 360.0) < (end - start - 2 * margin)


def _ring_with_scar(sector: int, depth_fraction: float, *, mvo: bool = False) -> np.ndarray:
    labels = _ring()
    radius, angle = _polar()
    start, end = _sector_angles(sector)
    depth = INNER + depth_fraction * (OUTER - INNER)
    scar = (radius >= INNER) & (radius < depth) & _in_angles(angle, start, end, margin=2.0)
    labels[scar] = 4
    if mvo:
        labels[scar & (radius < INNER + 2)] = 5
    return labels


def test_half_transmural_scar_in_one_sector_gives_half_there_and_zero_elsewhere():
    labels = _ring_with_scar(sector=4, depth_fraction=0.5)
    sectors = {s.sector: s for s in sector_transmurality(labels)}
    assert sorted(sectors) == [1, 2, 3, 4, 5, 6]
    assert sectors[4].mean_transmurality == pytest.approx(0.5, abs=0.08)
    assert sectors[4].max_transmurality == pytest.approx(0.5, abs=0.1)
    for other in (1, 2, 3, 5, 6):
        assert sectors[other].mean_transmurality == 0.0
        assert sectors[other].scar_pixels == 0
    assert all(s.aha_segment is None for s in sectors.values())


def test_full_transmural_scar_gives_one_and_level_numbers_aha_segments():
    labels = _ring_with_scar(sector=2, depth_fraction=1.0)
    sectors = {s.aha_segment: s for s in sector_transmurality(labels, level="mid")}
    assert sorted(sectors) == [7, 8, 9, 10, 11, 12]
    assert sectors[8].max_transmurality == pytest.approx(1.0, abs=0.02)  # mid anteroseptal
    assert sectors[8].mean_transmurality > 0.9  # the scar leaves 2 deg free at each sector edge
    assert sectors[7].mean_transmurality == 0.0


def test_apical_slice_has_four_sectors_and_segments_13_to_16():
    labels = _ring_with_scar(sector=4, depth_fraction=1.0)  # screen 240-300 deg: inferior, within apical 15
    sectors = {s.aha_segment: s for s in sector_transmurality(labels, level="apex")}
    assert sorted(sectors) == [13, 14, 15, 16]
    assert sectors[15].mean_transmurality > 0.5
    assert sectors[13].mean_transmurality == 0.0


def test_explicit_anchor_moves_the_scar_to_another_sector():
    labels = _ring_with_scar(sector=4, depth_fraction=1.0)
    # Anchor rotated by +60 deg: the scar now lies one sector earlier (sector 3).
    sectors = {s.sector: s for s in sector_transmurality(labels, anchor_angle_deg=DEFAULT_ANCHOR_ANGLE_DEG + 60)}
    assert sectors[3].mean_transmurality > 0.9
    assert sectors[4].mean_transmurality == 0.0


def test_percentages_and_mvo_share_match_pixel_counts():
    slice_ = _ring_with_scar(sector=4, depth_fraction=1.0, mvo=True)
    labels = np.stack([slice_, _ring()])
    result = scar_measures(labels)
    myocardium = np.isin(labels, (2, 4, 5)).sum()
    scar = np.isin(labels, (4, 5)).sum()
    mvo = (labels == 5).sum()
    assert result.volume_unit == "voxels" and result.area_unit == "pixels"
    assert result.scar_volume == scar and result.myocardium_volume == myocardium
    assert result.scar_percent_of_myocardium == pytest.approx(100 * scar / myocardium)
    assert result.mvo_percent_of_scar == pytest.approx(100 * mvo / scar)
    assert result.slices[1].scar_percent == 0.0
    assert 10 < result.slices[0].scar_percent < 20  # one of six sectors, a little less for the margins
    assert any("pixels" in note for note in result.notes)
    assert result.anchor["source"] == "assumed"


def test_known_spacing_gives_mm2_and_ml():
    labels = _ring_with_scar(sector=1, depth_fraction=1.0)[np.newaxis].repeat(3, axis=0)
    pixels = scar_measures(labels)
    physical = scar_measures(labels, pixel_spacing_ji_mm=(1.5, 2.0), slice_spacing_mm=8.0)
    assert physical.area_unit == "mm2" and physical.volume_unit == "mL"
    assert physical.slices[0].scar_area == pytest.approx(pixels.slices[0].scar_area * 3.0)
    assert physical.scar_volume == pytest.approx(pixels.scar_volume * 1.5 * 2.0 * 8.0 / 1000.0)
    in_plane_only = scar_measures(labels, pixel_spacing_ji_mm=(1.5, 2.0))
    assert in_plane_only.area_unit == "mm2" and in_plane_only.volume_unit == "voxels"


def test_slice_without_myocardium_has_no_sectors_and_nan_percentage():
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[0] = _ring()[32:64, 32:64] * 0
    result = scar_measures(labels)
    assert result.sectors == ()
    assert np.isnan(result.scar_percent_of_myocardium)


def test_report_dict_holds_segments_when_levels_are_known():
    labels = np.stack([_ring_with_scar(sector=4, depth_fraction=0.5), _ring()])
    report = scar_measures(labels, levels=["mid", "apex"]).to_dict()
    assert set(report["aha_segments"]) == {str(s) for s in range(7, 17)}
    assert report["aha_segments"]["10"]["mean_transmurality"] == pytest.approx(0.5, abs=0.08)


def test_unknown_codes_are_refused():
    with pytest.raises(InputError, match="codes"):
        scar_measures(np.full((1, 8, 8), 9, np.uint8))


def test_levels_of_wrong_length_are_refused():
    with pytest.raises(InputError, match="one level per slice"):
        scar_measures(np.zeros((2, 8, 8), np.uint8), levels=["mid"])


def test_unknown_level_is_refused():
    with pytest.raises(InputError, match="level"):
        sector_transmurality(_ring(), level="middle")


def test_float_labels_are_refused():
    with pytest.raises(InputError, match="integer"):
        scar_measures(np.zeros((1, 8, 8), np.float32))
