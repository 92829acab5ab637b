"""Carrying a heart mask from the end-diastolic frame to another frame by registering the two images."""
from __future__ import annotations

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.metrics.overlap import dice
from cardiac_ai.phantom.cine import make_phantom_cohort
from cardiac_ai.weak.propagation import carry_mask_between_frames

SPACING = (8.0, 1.5, 1.5)


def _discs(radii_px: list[float], shape=(2, 64, 64), centre=(32.0, 30.0)) -> np.ndarray:
    """A bright disc per slice on a dark background (radius per slice), like a blood pool in a cine frame."""
    j, i = np.mgrid[: shape[1], : shape[2]]
    inside = np.stack([(j - centre[0]) ** 2 + (i - centre[1]) ** 2 <= r ** 2 for r in radii_px])
    return np.where(inside, 200.0, 20.0)


def test_a_mask_follows_the_structure_that_shrinks_between_frames():
    source, target = _discs([14, 12]), _discs([9, 8])
    mask = source > 100
    carried = carry_mask_between_frames(mask, source, target, SPACING)
    truth = target > 100
    assert carried.dtype == bool and carried.shape == mask.shape
    assert dice(carried, truth) > dice(mask, truth) + 0.1  # it moved with the image, towards the smaller disc
    assert dice(carried, truth) > 0.7


def test_the_same_frame_leaves_the_mask_as_it_is_and_an_empty_mask_stays_empty():
    image = _discs([12, 10])
    mask = image > 100
    assert dice(carry_mask_between_frames(mask, image, image, SPACING), mask) > 0.98
    empty = np.zeros_like(mask)
    assert not carry_mask_between_frames(empty, image, _discs([8, 8]), SPACING).any()
    # a slice without mask is not registered and stays empty; the other still moves
    partial = mask.copy()
    partial[1] = False
    carried = carry_mask_between_frames(partial, image, _discs([8, 8]), SPACING)
    assert not carried[1].any() and carried[0].any()


def test_on_phantom_frames_the_ed_heart_carried_to_es_fits_es_better_than_the_ed_heart_itself():
    ed, es = make_phantom_cohort(1, phases=("ED", "ES"), n_slices=5, shape=(64, 64), spacing_mm=(2.5, 2.5, 8.0))
    heart_ed, heart_es = ed.labels.array > 0, es.labels.array > 0
    carried = carry_mask_between_frames(heart_ed, ed.image.array, es.image.array, ed.image.geometry.spacing_kji_mm)
    assert dice(carried, heart_es) > dice(heart_ed, heart_es)


def test_intensity_scale_does_not_matter_and_inputs_are_not_modified():
    source, target = _discs([14, 12]), _discs([9, 8])
    mask = source > 100
    copies = [a.copy() for a in (mask, source, target)]
    plain = carry_mask_between_frames(mask, source, target, SPACING)
    assert all(np.array_equal(a, b) for a, b in zip((mask, source, target), copies))
    scaled = carry_mask_between_frames(mask, source * 7.0 + 100.0, target * 0.01, SPACING)
    assert dice(plain, scaled) > 0.97
    constant = carry_mask_between_frames(mask, source, np.full_like(target, 5.0), SPACING)  # nothing to follow
    assert dice(constant, mask) > 0.9


@pytest.mark.parametrize("change, message", [
    (lambda m, s, t, sp: (m[:1], s, t, sp), "3D"),
    (lambda m, s, t, sp: (m[0], s[0], t[0], sp), "3D"),
    (lambda m, s, t, sp: (m, np.where(s > 100, np.nan, s), t, sp), "NaN or Inf"),
    (lambda m, s, t, sp: (m, s, t.astype(complex), sp), "real numbers"),
    (lambda m, s, t, sp: (m, s, t, (8.0, 0.0, 1.5)), "positive spacings"),
    (lambda m, s, t, sp: (m, s, t, (8.0, 1.5)), "positive spacings"),
])
def test_bad_inputs_are_refused_with_a_clear_error(change, message):
    source, target = _discs([14, 12]), _discs([9, 8])
    with pytest.raises(InputError, match=message):
        carry_mask_between_frames(*change(source > 100, source, target, SPACING))


@pytest.mark.parametrize("options", [{"iterations": 0}, {"iterations": 2.5}, {"iterations": True},
                                     {"smoothing_mm": 0}, {"smoothing_mm": float("nan")}, {"smoothing_mm": "2"}])
def test_bad_settings_are_refused(options):
    source = _discs([14, 12])
    with pytest.raises(InputError, match="iterations|smoothing_mm"):
        carry_mask_between_frames(source > 100, source, source, SPACING, **options)


def test_the_smoothing_width_is_in_mm_whatever_the_pixel_size():
    source, target = _discs([14, 12]), _discs([9, 8])
    mask = source > 100
    fine = carry_mask_between_frames(mask, source, target, (8.0, 1.25, 1.25), smoothing_mm=2.5)
    coarse = carry_mask_between_frames(mask, source, target, (8.0, 2.5, 2.5), smoothing_mm=5.0)  # 2 pixels both
    assert np.array_equal(fine, coarse)
    wider = carry_mask_between_frames(mask, source, target, (8.0, 2.5, 2.5), smoothing_mm=2.5)  # 1 pixel
    assert not np.array_equal(fine, wider)


def test_fine_pixels_are_registered_on_a_coarser_grid_and_the_mask_stays_on_its_own(monkeypatch):
    """Cine exported at 0.6 mm: the demons work on 1.5 mm pixels (6 times fewer), the mask is carried on the
    0.6 mm grid, and it still follows the image as well as at 1.5 mm."""
    import SimpleITK as sitk

    from cardiac_ai.weak import propagation

    sizes = []
    execute = sitk.FastSymmetricForcesDemonsRegistrationFilter.Execute

    def recording(self, fixed, moving, *rest):
        sizes.append((fixed.GetSize(), fixed.GetSpacing()))
        return execute(self, fixed, moving, *rest)

    monkeypatch.setattr(sitk.FastSymmetricForcesDemonsRegistrationFilter, "Execute", recording)
    scale = 1.5 / 0.6
    source = _discs([14 * scale, 12 * scale], shape=(2, 160, 160), centre=(80.0, 75.0))
    target = _discs([9 * scale, 8 * scale], shape=(2, 160, 160), centre=(80.0, 75.0))
    carried = carry_mask_between_frames(source > 100, source, target, (8.0, 0.6, 0.6))
    assert carried.shape == source.shape
    assert dice(carried, target > 100) > dice(source > 100, target > 100) + 0.1 and dice(carried, target > 100) > 0.7
    assert sizes and all(spacing == (propagation.REGISTRATION_PIXEL_MM,) * 2 for _, spacing in sizes)
    sizes.clear()
    carry_mask_between_frames(_discs([14, 12]) > 100, _discs([14, 12]), _discs([9, 8]), SPACING)
    assert sizes and all(spacing == (1.5, 1.5) for _, spacing in sizes)  # 1.5 mm pixels: registered as they are
