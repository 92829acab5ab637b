"""The fibrosis classifiers' inputs: myocardium-relative intensity, the mask band and the heart crop."""
from __future__ import annotations

import numpy as np
import pytest
from cardiac_ai.errors import InputError
from cardiac_ai.fibrosis import ClassifierInputSettings, classifier_inputs
from cardiac_ai.fibrosis.classifier_input import SETTINGS_FILE, myocardium_relative_intensity

RELATIVE = ClassifierInputSettings(intensity="myocardium_relative", mask_dilation_px=3, heart_crop=32)


def _ring_slice(shape=(64, 64), centre=(30, 36), radii=(6, 10), myocardium=0.2, blood=0.6, seed=0):
    """An LGE-like slice: dark myocardial ring around bright blood, noisy background, and the ring's mask."""
    rows, cols = np.indices(shape)
    distance = np.hypot(rows - centre[0], cols - centre[1])
    ring = (distance >= radii[0]) & (distance < radii[1])
    image = np.random.default_rng(seed).uniform(0.3, 0.5, shape).astype(np.float32)
    image[distance < radii[0]] = blood
    image[ring] = myocardium
    return image, ring


def test_default_settings_give_image_and_mask_on_the_whole_grid():
    image, ring = _ring_slice()
    inputs = classifier_inputs(image[None], ring[None])
    assert inputs.array.shape == (1, 2, 64, 64)
    np.testing.assert_array_equal(inputs.array[0, 0], image)
    np.testing.assert_array_equal(inputs.array[0, 1], ring.astype(np.float32))
    cam = np.random.default_rng(1).normal(size=(1, 64, 64)).astype(np.float32)
    np.testing.assert_array_equal(inputs.to_grid(cam), cam)


def test_relative_intensity_ignores_the_slice_brightness_and_reads_scar_against_myocardium():
    image, ring = _ring_slice()
    scarred = image.copy()
    scar = ring & (np.indices(image.shape)[1] > 40)
    scarred[scar] = 0.8  # four times the myocardium
    relative = myocardium_relative_intensity(np.stack([scarred, 0.5 * scarred]), np.stack([ring, ring]))
    np.testing.assert_allclose(relative[0], relative[1], atol=1e-6)
    # The median of the myocardium maps to log2(1) = 0 on [-2, 4], i.e. 1/3; scar at 4x to log2(4) = 2, i.e. 2/3.
    assert abs(np.median(relative[0][ring & ~scar]) - 1 / 3) < 1e-6
    assert abs(np.median(relative[0][scar]) - 2 / 3) < 1e-6


def test_a_slice_without_myocardium_uses_its_own_intensity_percentile():
    image, _ = _ring_slice()
    relative = myocardium_relative_intensity(image[None], np.zeros((1, *image.shape), bool))
    assert np.isfinite(relative).all() and 0.0 <= relative.min() and relative.max() <= 1.0
    inputs = classifier_inputs(image[None], np.zeros((1, *image.shape), bool), RELATIVE)
    assert inputs.array.shape == (1, 2, 32, 32) and inputs.array[0, 1].sum() == 0


def test_heart_crop_centres_the_myocardium_and_maps_back_to_the_grid():
    first, ring1 = _ring_slice(shape=(80, 80), centre=(40, 46), radii=(8, 14))
    second, ring2 = _ring_slice(shape=(80, 80), centre=(34, 30), radii=(12, 20), seed=3)
    inputs = classifier_inputs(np.stack([first, second]), np.stack([ring1, ring2]), RELATIVE)
    assert inputs.array.shape == (2, 2, 32, 32)
    for n in range(2):
        mask = inputs.array[n, 1] > 0.5
        rows, cols = np.nonzero(mask)
        # Both hearts fill the same part of the crop (1 / 1.5 of it), whatever their size on the grid.
        assert abs((rows.max() - rows.min() + 1) - 32 / 1.5) <= 2
        assert abs((rows.min() + rows.max()) / 2 - 15.5) <= 1 and abs((cols.min() + cols.max()) / 2 - 15.5) <= 1
    back = inputs.to_grid(inputs.array[:, 1]) > 0.5
    for restored, ring in zip(back, (ring1, ring2)):
        assert 2 * (restored & ring).sum() / (restored.sum() + ring.sum()) > 0.9
    assert not back[0][:, :20].any()  # outside the first heart's square the map is 0


def test_mask_band_zeroes_the_image_away_from_the_myocardium():
    image, ring = _ring_slice()
    settings = ClassifierInputSettings(intensity="image", mask_dilation_px=2)
    channel = classifier_inputs(image[None], ring[None], settings).array[0, 0]
    assert channel[0, 0] == 0.0 and channel[ring].min() > 0.0


@pytest.mark.parametrize("kwargs", [{"intensity": "zscore"}, {"mask_dilation_px": -1}, {"heart_crop": 4},
                                    {"heart_crop": True}])
def test_bad_settings_are_refused(kwargs):
    (name,) = kwargs
    with pytest.raises(InputError, match=name):  # the message names the setting that is wrong
        ClassifierInputSettings(**kwargs)


def test_settings_round_trip_through_a_run_folder_and_a_card(tmp_path):
    assert ClassifierInputSettings.load(tmp_path) == ClassifierInputSettings()  # runs made before the settings
    RELATIVE.save(tmp_path)
    assert (tmp_path / SETTINGS_FILE).is_file()
    assert ClassifierInputSettings.load(tmp_path) == RELATIVE
    assert ClassifierInputSettings.from_card_inference({"classifier_input": RELATIVE.to_dict()}) == RELATIVE
    assert ClassifierInputSettings.from_card_inference({}) == ClassifierInputSettings()
    with pytest.raises(InputError, match="Unknown classifier input settings"):
        ClassifierInputSettings.from_dict({"intensity": "image", "colour": "red"})


def test_bad_arrays_are_refused():
    image, ring = _ring_slice()
    with pytest.raises(InputError, match="n, j, i"):
        classifier_inputs(image, ring)
    broken = image.copy()
    broken[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        classifier_inputs(broken[None], ring[None])
    with pytest.raises(InputError, match="shape"):
        classifier_inputs(image[None], ring[None], RELATIVE).to_grid(np.zeros((1, 8, 8)))
