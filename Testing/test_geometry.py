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


def _box_geometry(grid: Geometry, start_kji, *, shift_voxels_kji=(0.0, 0.0, 0.0)) -> Geometry:
    """``grid`` with its origin moved to voxel ``start_kji`` (plus a fraction of a voxel): a cropped array's."""
    origin = grid.index_to_lps(np.add(start_kji, shift_voxels_kji))[0]
    return Geometry(grid.spacing_mm, tuple(origin), grid.direction_lps)


def test_lattice_offset_finds_whole_voxel_shifts_and_nothing_else():
    from dataclasses import replace

    grid = _oblique_geometry()
    shape = (3, 5, 7)
    assert grid.lattice_offset_kji(grid, shape) == (0, 0, 0)
    assert grid.lattice_offset_kji(_box_geometry(grid, (2, 4, 6)), shape) == (2, 4, 6)
    assert grid.lattice_offset_kji(_box_geometry(grid, (-1, 4, 6)), shape) == (-1, 4, 6)  # the lattice is unbounded
    assert grid.lattice_offset_kji(_box_geometry(grid, (2, 4, 6), shift_voxels_kji=(0, 5e-4, 0)), shape) == (2, 4, 6)
    # DICOM positions rounded to 0.01 mm: a SEG read back by highdicom is a few thousandths of a voxel off
    assert grid.lattice_offset_kji(_box_geometry(grid, (2, 4, 6), shift_voxels_kji=(0, 6e-3, 0)), shape) == (2, 4, 6)
    assert grid.lattice_offset_kji(_box_geometry(grid, (2, 4, 6), shift_voxels_kji=(0, 0.03, 0)), shape) is None
    assert grid.lattice_offset_kji(_box_geometry(grid, (2, 4, 6), shift_voxels_kji=(0, 0, 0.3)), shape) is None
    assert grid.lattice_offset_kji(grid.with_spacing((1.5, 2.0, 8.1)), shape) is None
    assert grid.lattice_offset_kji(grid.with_spacing((1.5, 2.0, 8.1)), (1, 5, 7)) is None  # one thinner slice
    assert grid.lattice_offset_kji(grid.with_spacing((1.5, 1.0, 8.0)), shape) is None  # every other row: not a box
    flipped = replace(grid, direction_lps=tuple((grid.direction_matrix @ np.diag([1.0, -1.0, 1.0])).ravel()))
    assert grid.lattice_offset_kji(flipped, shape) is None


def test_pad_to_reference_grid_places_a_cropped_volume_and_refuses_the_rest():
    from cardiac_ai.geometry import pad_to_reference_grid

    image = Volume(np.zeros((6, 10, 12), np.float32), _oblique_geometry())
    box = np.arange(1, 2 * 3 * 4 + 1, dtype=np.uint8).reshape(2, 3, 4)
    cropped = Volume(box, _box_geometry(image.geometry, (3, 5, 7)))
    padded = pad_to_reference_grid(cropped, image)
    assert padded.spatial_shape == image.spatial_shape and padded.geometry == image.geometry
    assert padded.array.dtype == np.uint8 and padded.array.sum() == box.sum()
    np.testing.assert_array_equal(padded.array[3:5, 5:8, 7:11], box)
    # its voxels stay where they were in patient space
    np.testing.assert_allclose(padded.geometry.index_to_lps([[3, 5, 7]]), cropped.geometry.index_to_lps([[0, 0, 0]]),
                               atol=1e-9)
    whole = Volume(np.ones((6, 10, 12), np.uint8), image.geometry)
    assert pad_to_reference_grid(whole, image).array is whole.array

    with pytest.raises(InputError, match=r"reach beyond the image.*\(3, 5, 9\) to \(4, 7, 12\).*origin_lps_mm"):
        pad_to_reference_grid(Volume(box, _box_geometry(image.geometry, (3, 5, 9))), image)
    with pytest.raises(InputError, match=r"reach beyond the image.*\(-1, 0, 0\)"):
        pad_to_reference_grid(Volume(box, _box_geometry(image.geometry, (-1, 0, 0))), image)
    with pytest.raises(InputError, match=r"voxel lattice: origin_lps_mm .*\(3\.0, 5\.0, 7\.5\) voxels"):
        pad_to_reference_grid(Volume(box, _box_geometry(image.geometry, (3, 5, 7), shift_voxels_kji=(0, 0, 0.5))),
                              image)
    with pytest.raises(InputError, match=r"voxel lattice: spacing_mm \(1\.5, 2\.0, 4\.0\) vs the image's"):
        pad_to_reference_grid(Volume(box, image.geometry.with_spacing((1.5, 2.0, 4.0))), image)


def test_align_axes_reorders_an_other_orientation_of_the_same_lattice_exactly():
    from cardiac_ai.geometry import align_axes, pad_to_reference_grid

    grid = _oblique_geometry()
    rng = np.random.default_rng(0)
    array = rng.integers(0, 4, (5, 6, 8)).astype(np.uint8)
    volume = Volume(array, grid)
    # the same voxels with i and j exchanged and k reversed (another tool's orientation)
    direction = grid.direction_matrix
    other_direction = np.stack([direction[:, 1], direction[:, 0], -direction[:, 2]], axis=1)
    other_origin = grid.index_to_lps([[4, 0, 0]])[0]
    other = Volume(np.ascontiguousarray(np.transpose(array, (0, 2, 1))[::-1]),
                   Geometry((grid.spacing_mm[1], grid.spacing_mm[0], grid.spacing_mm[2]), tuple(other_origin),
                            tuple(other_direction.ravel())))
    k, j, i = 1, 2, 3  # one voxel, same LPS point in both
    np.testing.assert_allclose(grid.index_to_lps([[k, j, i]]), other.geometry.index_to_lps([[4 - k, i, j]]))

    aligned = align_axes(other, grid)
    np.testing.assert_array_equal(aligned.array, array)
    assert aligned.geometry.is_close(grid)
    np.testing.assert_array_equal(pad_to_reference_grid(other, volume).array, array)
    # a box of it, reversed, is placed too
    box = Volume(np.ascontiguousarray(other.array[1:3]), Geometry(other.geometry.spacing_mm, tuple(
        other.geometry.index_to_lps([[1, 0, 0]])[0]), other.geometry.direction_lps))
    placed = pad_to_reference_grid(box, volume)
    np.testing.assert_array_equal(placed.array[2:4], array[2:4])
    assert not placed.array[[0, 1, 4]].any()

    assert align_axes(volume, grid) is volume  # already aligned: untouched
    rotation = np.array([[np.cos(0.3), -np.sin(0.3), 0.0], [np.sin(0.3), np.cos(0.3), 0.0], [0.0, 0.0, 1.0]])
    turned = Volume(array, Geometry(grid.spacing_mm, grid.origin_lps_mm, tuple((direction @ rotation).ravel())))
    assert align_axes(turned, grid) is turned  # other axes altogether: left for the lattice check to refuse
    with pytest.raises(InputError, match="voxel lattice"):
        pad_to_reference_grid(turned, volume)


# -- the short-axis display turn -----------------------------------------------------------------------------------
_ALL_TURNS = [(t, fj, fi) for t in (False, True) for fj in (False, True) for fi in (False, True)]


def _short_axis_direction(rotation_deg: float) -> tuple[float, ...]:
    """A short-axis plane (normal along the apex-to-base axis, towards right, posterior and superior) shown as
    radiology shows it (viewed from the apex), its columns ``rotation_deg`` from the patient's left."""
    normal = np.array([-1.0, 1.0, 1.0]) / np.sqrt(3)
    left = np.array([1.0, 0.0, 0.0]) - normal * (-1 / np.sqrt(3))
    left /= np.linalg.norm(left)
    down = np.cross(normal, left)  # viewed from the apex: column x row points from the apex to the base
    angle = np.radians(rotation_deg)
    column = np.cos(angle) * left + np.sin(angle) * down
    row = np.cross(normal, column)
    return tuple(np.column_stack([column, row, normal]).ravel())


@pytest.mark.parametrize("direction", [(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), _short_axis_direction(0.0),
                                       _short_axis_direction(30.0), _short_axis_direction(-40.0)],
                         ids=["identity", "short-axis", "short-axis-30", "short-axis-minus-40"])
@pytest.mark.parametrize("stored", _ALL_TURNS)
def test_every_stored_turn_or_mirror_of_a_displayed_stack_is_turned_back_exactly(direction, stored):
    from cardiac_ai.geometry import InPlaneTurn, short_axis_display_turn

    geometry = Geometry((1.2, 1.5, 8.0), (10.0, -20.0, 30.0), direction)
    assert short_axis_display_turn(geometry).is_identity  # shown as the networks learnt: left as it is
    array = np.random.default_rng(0).random((2, 5, 7))
    turn = InPlaneTurn(*stored)
    stored_geometry = turn.geometry(geometry, array.shape)
    stored_array = turn.apply(array)
    np.testing.assert_array_equal(turn.undo(stored_array), array)
    for index in ((0, 0, 0), (1, 4, 6), (1, 2, 3)):  # every voxel keeps its place in the patient
        where = np.argwhere(stored_array == array[index])[0]
        np.testing.assert_allclose(stored_geometry.index_to_lps(where), geometry.index_to_lps(np.array(index)),
                                   atol=1e-9)
        # points found on a turned array (contour pixels) map back onto the array it was turned from
        back_points = turn.undo_points(np.array([where[1:]], float), array.shape)
        assert tuple(back_points[0]) == tuple(index[1:])
    back = short_axis_display_turn(stored_geometry)
    np.testing.assert_array_equal(back.apply(stored_array), array)
    assert back.geometry(stored_geometry, stored_array.shape).is_close(geometry, atol_mm=1e-9)
    assert back.is_mirror == turn.is_mirror


def test_the_display_turn_brings_the_columns_within_45_degrees_of_the_left_and_never_mirrors_a_long_axis_slice():
    from cardiac_ai.geometry import InPlaneTurn, short_axis_display_turn

    assert short_axis_display_turn(Geometry(direction_lps=_short_axis_direction(44.0))).is_identity
    for stored, expected in ((46.0, -44.0), (120.0, 30.0), (-100.0, -10.0), (180.0, 0.0)):
        geometry = Geometry(direction_lps=_short_axis_direction(stored))
        turn = short_axis_display_turn(geometry)
        assert isinstance(turn, InPlaneTurn) and not turn.is_mirror
        shown = turn.geometry(geometry, (1, 4, 4)).direction_matrix
        np.testing.assert_allclose(shown, np.reshape(_short_axis_direction(expected), (3, 3)), atol=1e-9)
    # a plane containing the apex-to-base axis says nothing about handedness: never mirrored, only turned
    normal = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    column = np.array([-1.0, 1.0, 0.0]) / np.sqrt(2)
    for sign in (1.0, -1.0):
        row = sign * np.cross(normal, column)
        turn = short_axis_display_turn(Geometry(direction_lps=tuple(np.column_stack([column, row, normal]).ravel())))
        assert not turn.is_mirror


@pytest.mark.parametrize("cosine", [np.sqrt(0.5), 0.707107], ids=["exact", "dicom-rounded"])
def test_a_tie_at_45_degrees_gets_one_display_whatever_the_storage(cosine):
    from cardiac_ai.geometry import InPlaneTurn, short_axis_display_turn

    direction = (cosine, -cosine, 0.0, cosine, cosine, 0.0, 0.0, 0.0, 1.0)  # columns 45 degrees from the left
    geometry = Geometry((1.0, 1.0, 8.0), (0.0, 0.0, 0.0), direction)
    shown = []
    for stored in _ALL_TURNS:
        stored_geometry = InPlaneTurn(*stored).geometry(geometry, (1, 6, 6))
        shown.append(short_axis_display_turn(stored_geometry).geometry(stored_geometry, (1, 6, 6)))
    assert all(g.is_close(shown[0], atol_mm=1e-9) for g in shown)
