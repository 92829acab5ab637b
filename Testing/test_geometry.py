from __future__ import annotations

import numpy as np
import pytest

from cardiac_ai import Geometry, InputError, Volume


def _oblique_geometry() -> Geometry:
    angle = np.deg2rad(30)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    )
    return Geometry((1.5, 2.0, 8.0), (10.0, -20.0, 30.0), tuple(rotation.ravel()))


def test_ijk_to_ras_matches_hand_computed_matrix():
    geometry = Geometry((2.0, 3.0, 4.0), (10.0, 20.0, 30.0))
    expected = np.array(
        [[-2.0, 0, 0, -10.0], [0, -3.0, 0, -20.0], [0, 0, 4.0, 30.0], [0, 0, 0, 1.0]]
    )
    np.testing.assert_allclose(geometry.ijk_to_ras_matrix(), expected)


def test_ijk_to_ras_round_trip_keeps_oblique_geometry():
    geometry = _oblique_geometry()
    back = Geometry.from_ijk_to_ras_matrix(geometry.ijk_to_ras_matrix())
    assert back.is_close(geometry, atol_mm=1e-9, atol_direction=1e-12)


def test_index_to_lps_uses_kji_order_and_spacing():
    geometry = _oblique_geometry()
    point = geometry.index_to_lps(np.array([[2, 3, 4]]))[0]  # k=2, j=3, i=4
    expected = np.asarray(geometry.origin_lps_mm) + geometry.direction_matrix @ (np.array([4, 3, 2]) * [1.5, 2.0, 8.0])
    np.testing.assert_allclose(point, expected)


def test_spacing_kji_is_reversed_ijk():
    assert Geometry((1.0, 2.0, 3.0)).spacing_kji_mm == (3.0, 2.0, 1.0)


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, -1.0, 1.0)])
def test_zero_or_negative_spacing_is_refused(spacing):
    with pytest.raises(InputError, match="spacing_mm must be positive"):
        Geometry(spacing)


def test_nan_origin_and_singular_direction_are_refused():
    with pytest.raises(InputError, match="finite"):
        Geometry(origin_lps_mm=(np.nan, 0, 0))
    with pytest.raises(InputError, match="singular"):
        Geometry(direction_lps=(1, 0, 0, 1, 0, 0, 0, 0, 1))


def test_geometry_dict_round_trip():
    geometry = _oblique_geometry()
    assert Geometry.from_dict(geometry.to_dict()) == geometry


def test_volume_checks_dimensionality_and_explains_4d():
    with pytest.raises(InputError, match="frame"):
        Volume(np.zeros((2, 3, 4, 5)))
    with pytest.raises(InputError, match="3D array"):
        Volume(np.zeros((4, 5)))
    with pytest.raises(InputError, match="empty"):
        Volume(np.zeros((0, 4, 5)))
    series = Volume(np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5), axes="tkji")
    assert series.frame(1).array.shape == (3, 4, 5)
    with pytest.raises(InputError, match="3 frames|2 frames"):
        series.frame(5)
