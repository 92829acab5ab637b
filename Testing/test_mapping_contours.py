"""Contour fitting of the mapping paper's Figure 4 on synthetic slices with known circles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Geometry
from cardiac_ai.mapping.contours import (
    STEPS,
    TABLE8_STAGES,
    contour_hausdorff_mm,
    contour_step_hausdorff,
    contours_to_mask,
    fit_myocardial_contours,
)

CENTRE = (40.3, 41.6)  # off the pixel grid, so the digitisation is not symmetric


def _ring(shape=(80, 80), centre=CENTRE, r_in=10.0, r_out=16.0, gap_deg: float | None = None) -> np.ndarray:
    """LV blood pool (3) inside r_in, myocardium (2) from r_in to r_out; optional wedge (screen angle 0) removed."""
    rows, cols = np.indices(shape)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    labels = np.zeros(shape, np.uint8)
    labels[distance <= r_out] = 2
    labels[distance < r_in] = 3
    if gap_deg is not None:
        angle = np.degrees(np.arctan2(-(rows - centre[0]), cols - centre[1]))
        labels[np.abs(angle) < gap_deg / 2] = 0
    return labels


def _circle(radius: float, centre=CENTRE, n: int = 720) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([centre[0] + radius * np.sin(t), centre[1] + radius * np.cos(t)])


def test_fit_recovers_known_ring_within_one_pixel():
    spacing = (1.25, 1.25)
    contours = fit_myocardial_contours(_ring(), spacing_ji_mm=spacing)
    assert contours.ok and contours.reason is None
    assert contour_hausdorff_mm(contours.endocardium_px, _circle(10.0), spacing) <= 1.0 * spacing[0]
    assert contour_hausdorff_mm(contours.epicardium_px, _circle(16.0), spacing) <= 1.0 * spacing[0]


def test_bspline_output_is_closed_periodic_smooth_and_counter_clockwise():
    contours = fit_myocardial_contours(_ring(), spacing_ji_mm=(1.0, 1.0), n_points=120)
    for points in (contours.endocardium_px, contours.epicardium_px):
        assert points.shape == (120, 2)
        steps = np.diff(points, axis=0, append=points[:1])  # includes the wrap-around step
        lengths = np.linalg.norm(steps, axis=1)
        assert lengths.min() > 0.5 * lengths.mean() and lengths.max() < 1.5 * lengths.mean()
        headings = np.arctan2(-steps[:, 0], steps[:, 1])  # screen angles, row axis flipped
        turns = np.angle(np.exp(1j * (np.roll(headings, -1) - headings)))  # wrapped to (-pi, pi]
        assert np.sum(turns) == pytest.approx(2 * np.pi)  # one counter-clockwise turn on screen
        assert np.degrees(np.abs(turns)).max() < 4 * 360 / 120  # no kink anywhere, the seam included
    assert contours.endocardium_steps.bspline_applied


def test_teh_chin_alone_gives_dominant_points_only():
    contours = fit_myocardial_contours(_ring(), spacing_ji_mm=(1.0, 1.0), steps=("teh_chin",), upsample=1)
    n_border = int(np.count_nonzero(_ring() == 3)) ** 0.5 * 4  # far fewer points than border pixels
    assert 8 <= len(contours.endocardium_px) < n_border
    assert not contours.endocardium_steps.bspline_applied
    assert np.allclose(contours.endocardium_px, np.round(contours.endocardium_px))  # pixel centres


def test_subpixel_tracing_follows_the_boundary_between_pixel_centres():
    """A disc of the pixels whose centres lie within r: the sub-pixel trace runs between inside and outside centres,
    about r from the centre, where the staircase tracing runs through the border pixels' centres (about r - 0.5)."""
    radius = 10.0
    labels = _ring(r_in=radius)
    staircase = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), steps=(), upsample=1)  # every border point
    subpixel = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), steps=(), upsample=4)
    distance = {name: np.hypot(*(c.endocardium_px - np.asarray(CENTRE)).T).mean()
                for name, c in (("staircase", staircase), ("subpixel", subpixel))}
    assert distance["staircase"] == pytest.approx(radius - 0.4, abs=0.15)
    assert distance["subpixel"] == pytest.approx(radius, abs=0.15)
    assert not np.allclose(subpixel.endocardium_px, np.round(subpixel.endocardium_px))
    with pytest.raises(InputError, match="upsample"):
        fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), upsample=0)


def _ramp(radius: float, shape=(80, 80), centre=CENTRE) -> np.ndarray:
    """A probability that falls linearly from 1 to 0 over two pixels and crosses 0.5 exactly at ``radius``."""
    rows, cols = np.indices(shape)
    return np.clip(0.5 + (radius - np.hypot(rows - centre[0], cols - centre[1])) / 2, 0.0, 1.0)


def test_probabilities_move_the_subpixel_boundary_to_their_half_level():
    """The labels alone put the boundary halfway between inside and outside pixel centres, a staircase around the
    circle; the probabilities put it where they cross 0.5 (here circles of 10.4 and 16.45 px), and no pixel changes
    side. Both traces lie about half a fine pixel (0.5 / upsample = 0.125 px) inside, where findContours runs."""
    true_endo, true_epi = 10.4, 16.45
    labels = _ring(r_in=true_endo, r_out=true_epi)
    probabilities = np.stack([_ramp(true_endo), _ramp(true_epi)])
    plain = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), steps=())
    soft = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), steps=(), probabilities=probabilities)
    for attribute, radius in (("endocardium_px", true_endo), ("epicardium_px", true_epi)):
        radii = {name: np.hypot(*(getattr(c, attribute) - np.asarray(CENTRE)).T)
                 for name, c in (("plain", plain), ("soft", soft))}
        assert abs(radii["soft"].mean() - radius) < 0.15
        assert radii["soft"].std() < radii["plain"].std() / 2  # on the circle, not on the staircase
    assert np.array_equal(contours_to_mask(soft.endocardium_px, labels.shape), labels == 3)


def test_probabilities_equal_to_the_labels_change_nothing_and_bad_ones_are_refused():
    labels = _ring()
    as_labels = np.stack([labels == 3, labels >= 2]).astype(np.float32)
    plain = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0))
    same = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), probabilities=as_labels)
    np.testing.assert_allclose(same.epicardium_px, plain.epicardium_px)
    with pytest.raises(InputError, match="probabilities must be"):
        fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), probabilities=as_labels[0])
    as_labels[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), probabilities=as_labels)


def test_convex_hull_closes_c_shaped_endocardium():
    labels = _ring(gap_deg=60.0)
    full = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0))
    no_hull = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), steps=("teh_chin", "filter", "bspline"))
    assert full.endocardium_steps.convex_hull_applied
    assert full.endocardium_steps.hull_area_fraction > 0.08
    assert not no_hull.endocardium_steps.convex_hull_applied
    # Open: the mouth reaches the centre (5 px from the circle); closed: only the chord's sagitta remains.
    assert contour_hausdorff_mm(no_hull.endocardium_px, _circle(10.0), (1.0, 1.0)) > 4.0
    assert contour_hausdorff_mm(full.endocardium_px, _circle(10.0), (1.0, 1.0)) < 2.0


def test_convex_hull_step_is_skipped_for_a_closed_ring():
    contours = fit_myocardial_contours(_ring(), spacing_ji_mm=(1.0, 1.0))
    assert not contours.endocardium_steps.convex_hull_applied
    assert contours.endocardium_steps.hull_area_fraction < 0.08
    assert not contours.epicardium_steps.convex_hull_applied


def _ring_with_distractors() -> np.ndarray:
    labels = _ring(shape=(96, 96))
    labels[85:93, 10:70] = 3  # elongated (7.5:1) and larger than the true blood pool
    labels[5:9, 80:84] = 3  # small round island
    return labels


def test_filter_discards_elongated_and_smaller_regions():
    labels = _ring_with_distractors()
    filtered = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0))
    assert filtered.endocardium_steps.n_candidates == 3
    assert filtered.endocardium_steps.n_elongated_discarded == 1
    assert filtered.endocardium_steps.n_smaller_discarded == 1
    assert filtered.extra_endocardium_px == ()
    assert contour_hausdorff_mm(filtered.endocardium_px, _circle(10.0), (1.0, 1.0)) <= 1.0
    assert contour_hausdorff_mm(filtered.epicardium_px, _circle(16.0), (1.0, 1.0)) <= 1.0

    unfiltered = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0), steps=("teh_chin", "bspline"))
    assert len(unfiltered.extra_endocardium_px) == 2
    centre = unfiltered.endocardium_px.mean(axis=0)
    assert centre[0] > 80  # without filtering the largest region, the elongated bar, wins


def test_only_elongated_regions_give_none_with_reason():
    labels = np.zeros((40, 60), np.uint8)
    labels[10:14, 5:55] = 2
    contours = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0))
    assert contours.epicardium_px is None and "elongated" in contours.reason
    assert contours.endocardium_px is None and "no LV blood pool" in contours.reason


def test_elongation_is_judged_in_millimetres():
    labels = np.zeros((40, 60), np.uint8)
    labels[10:18, 10:42] = 2  # 32 x 8 pixels: 4:1 in pixels, 1.6:1 with 0.5 x 2 mm pixels
    assert fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0)).epicardium_px is None
    assert fit_myocardial_contours(labels, spacing_ji_mm=(2.0, 0.5)).epicardium_px is not None


def test_slice_without_myocardium_gives_none_contours_and_a_reason():
    labels = np.zeros((32, 32), np.uint8)
    labels[5:15, 5:15] = 1  # RV only
    contours = fit_myocardial_contours(labels, spacing_ji_mm=(1.5, 1.5))
    assert not contours.ok
    assert contours.endocardium_px is None and contours.epicardium_px is None
    assert "no LV myocardium" in contours.reason
    record = json.loads(json.dumps(contours.to_dict()))
    assert record["ok"] is False and record["endocardium"]["points_px"] is None


def test_lps_points_use_the_stack_geometry():
    angle = math.radians(30)
    direction = (math.cos(angle), -math.sin(angle), 0.0, math.sin(angle), math.cos(angle), 0.0, 0.0, 0.0, 1.0)
    geometry = Geometry(spacing_mm=(1.4, 1.6, 8.0), origin_lps_mm=(-100.0, 20.0, 35.0), direction_lps=direction)
    contours = fit_myocardial_contours(_ring(), geometry=geometry, slice_index=3)
    assert contours.spacing_ji_mm == (1.6, 1.4)
    for pixels, lps in (
        (contours.endocardium_px, contours.endocardium_lps_mm),
        (contours.epicardium_px, contours.epicardium_lps_mm),
    ):
        kji = np.column_stack([np.full(len(pixels), 3.0), pixels])
        np.testing.assert_allclose(lps, geometry.index_to_lps(kji), atol=1e-9)
    record = json.loads(json.dumps(contours.to_dict()))
    assert len(record["epicardium"]["points_lps_mm"][0]) == 3 and record["slice_index"] == 3


def test_contours_to_mask_gives_the_region_back():
    labels = _ring()
    contours = fit_myocardial_contours(labels, spacing_ji_mm=(1.0, 1.0))
    for contour, region in ((contours.endocardium_px, labels == 3), (contours.epicardium_px, labels >= 2)):
        mask = contours_to_mask(contour, labels.shape)
        assert mask.dtype == bool and mask.shape == labels.shape
        dice = 2 * np.count_nonzero(mask & region) / (np.count_nonzero(mask) + np.count_nonzero(region))
        assert dice > 0.95


def test_contour_hausdorff_is_in_millimetres_and_measures_the_curves():
    square = np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0], [10.0, 0.0]])
    dense = np.vstack([np.column_stack([np.zeros(50), np.linspace(0, 10, 50)]), square[1:]])
    assert contour_hausdorff_mm(square, dense, (1.0, 1.0)) < 0.06  # vertices differ, the curves do not
    assert contour_hausdorff_mm(_circle(10.0), _circle(12.0), (2.0, 2.0)) == pytest.approx(4.0, abs=0.01)
    shifted = square + np.array([1.0, 0.0])  # one row down
    assert contour_hausdorff_mm(square, shifted, (2.0, 0.5)) == pytest.approx(2.0)
    assert contour_hausdorff_mm([square, square + [30.0, 0.0]], square, (1.0, 1.0)) == pytest.approx(30.0)


def test_contour_step_hausdorff_reports_table8_stages_and_filtering_helps():
    truth = _ring(shape=(96, 96))
    prediction = _ring_with_distractors()
    result = contour_step_hausdorff(prediction, truth, (1.5, 1.5))
    assert list(result) == [name for name, _ in TABLE8_STAGES]
    assert set(result["teh_chin"]) == {"endocardium", "epicardium"}
    assert result["+bspline"]["endocardium"] > 30.0  # the bar counts while candidates are not filtered
    assert result["+filter"]["endocardium"] < 1.5
    assert result["+convex_hull"]["epicardium"] < 1.5


def test_contour_step_hausdorff_is_nan_without_a_prediction():
    empty = np.zeros((96, 96), np.uint8)
    result = contour_step_hausdorff(empty, _ring(shape=(96, 96)), (1.0, 1.0))
    assert all(math.isnan(v) for stage in result.values() for v in stage.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels2d": np.zeros((2, 8, 8), np.uint8), "spacing_ji_mm": (1, 1)}, "one 2D slice"),
        ({"labels2d": np.full((8, 8), 9, np.uint8), "spacing_ji_mm": (1, 1)}, "not in the label table"),
        ({"labels2d": np.zeros((8, 8), np.uint8)}, "spacing_ji_mm"),
        ({"labels2d": np.zeros((8, 8), np.uint8), "spacing_ji_mm": (1, 1), "steps": ("teh_chin", "snake")}, "snake"),
        ({"labels2d": np.zeros((8, 8), np.uint8), "spacing_ji_mm": (1, 0)}, "positive"),
        ({"labels2d": np.zeros((8, 8), np.uint8), "geometry": Geometry()}, "together"),
        (
            {"labels2d": np.zeros((8, 8), np.uint8), "geometry": Geometry(), "slice_index": 0, "spacing_ji_mm": (2, 2)},
            "disagrees",
        ),
        ({"labels2d": np.zeros((8, 8), np.uint8), "spacing_ji_mm": (1, 1), "hull_threshold": 1.5}, "hull_threshold"),
    ],
)
def test_fit_rejects_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        fit_myocardial_contours(**kwargs)


def test_contours_to_mask_rejects_a_non_polygon():
    with pytest.raises(InputError, match="at least 3 points"):
        contours_to_mask(np.zeros((2, 2)), (8, 8))
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        contours_to_mask(np.zeros((5, 3)), (8, 8))


def test_steps_constant_lists_the_pipeline_in_order():
    assert STEPS == ("teh_chin", "filter", "convex_hull", "bspline")
    assert TABLE8_STAGES[-1][1] == STEPS
