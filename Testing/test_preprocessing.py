"""Tests for cardiac_ai.preprocessing: the one pre-processing of training and inference and its inverse."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io.volumes import volume_to_sitk
from cardiac_ai.phantom import make_cine_phantom
from cardiac_ai.preprocessing import (
    InputSpec,
    PreprocessTransform,
    preprocess,
    restore_argmax,
    restore_labels,
    restore_probabilities,
)

OBLIQUE = tuple(Rotation.from_euler("xyz", [20.0, -35.0, 50.0], degrees=True).as_matrix().ravel())


def _phantom(
    shape_kji: tuple[int, int, int] = (3, 96, 80),
    spacing_mm: tuple[float, float, float] = (1.8, 1.4, 8.0),
    *,
    lv_center_mm: tuple[float, float] = (70.0, 60.0),
    direction: tuple[float, ...] = OBLIQUE,
    origin: tuple[float, float, float] = (-40.5, 12.25, 77.0),
) -> tuple[Volume, Volume]:
    """Short-axis stack with an LV ring (myocardium 2 around blood pool 3) and an RV pool (1) to its left."""
    n_k, n_j, n_i = shape_kji
    spacing_i, spacing_j, _ = spacing_mm
    y, x = np.meshgrid(np.arange(n_j) * spacing_j, np.arange(n_i) * spacing_i, indexing="ij")
    center_y, center_x = lv_center_mm
    labels = np.zeros(shape_kji, dtype=np.uint8)
    lv_radius = np.hypot(y - center_y, x - center_x)
    labels[:, (np.hypot(y - center_y, x - (center_x - 32.0)) < 14.0) & (lv_radius >= 24.0)] = 1
    labels[:, lv_radius < 24.0] = 2
    labels[:, lv_radius < 17.0] = 3
    rng = np.random.default_rng(0)
    intensity = np.array([20.0, 200.0, 60.0, 220.0], dtype=np.float32)
    image = intensity[labels] + rng.normal(0.0, 5.0, shape_kji).astype(np.float32)
    geometry = Geometry(spacing_mm, origin, direction)
    return Volume(image.astype(np.float32), geometry), Volume(labels, geometry)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _bbox_center(mask: np.ndarray) -> tuple[float, float]:
    rows = np.flatnonzero(mask.any(axis=(0, 2)))
    columns = np.flatnonzero(mask.any(axis=(0, 1)))
    return ((rows[0] + rows[-1]) / 2.0, (columns[0] + columns[-1]) / 2.0)


# -- round trips ---------------------------------------------------------------------------------------------------


def test_restore_labels_inverts_preprocess_on_oblique_anisotropic_stack():
    image, labels = _phantom()
    sample = preprocess(image, InputSpec(in_plane_spacing_mm=(1.25, 1.25), crop_size=(128, 128)), labels=labels)
    assert sample.image.shape == (3, 128, 128) and sample.image.dtype == np.float32
    assert sample.labels.shape == (3, 128, 128) and sample.labels.dtype == np.uint8
    assert sample.transform.was_resampled

    restored = restore_labels(sample.labels, sample.transform)

    assert restored.geometry == image.geometry
    assert restored.array.shape == labels.array.shape and restored.array.dtype == np.uint8
    for code in (1, 2, 3):
        assert _dice(restored.array == code, labels.array == code) > 0.95, code


def test_restore_labels_inverts_preprocess_on_the_cine_phantom():
    case = make_cine_phantom(
        n_slices=5, shape=(80, 96), spacing_mm=(1.4, 1.8, 8.0), origin_lps_mm=(-40.5, 12.25, 77.0),
        direction_lps=OBLIQUE,
    )
    sample = preprocess(case.image, InputSpec(crop_size=(112, 112)), labels=case.labels)

    restored = restore_labels(sample.labels, sample.transform)

    assert restored.geometry == case.image.geometry and restored.array.shape == case.labels.array.shape
    for code in (1, 2, 3):
        assert _dice(restored.array == code, case.labels.array == code) > 0.95, code


@pytest.mark.shared_data
def test_restore_labels_inverts_preprocess_on_an_acdc_frame(acdc_root):
    from cardiac_ai.io.volumes import read_volume

    folder = acdc_root / "patient001"
    image = read_volume(folder / "patient001_frame01.nii.gz")
    labels = read_volume(folder / "patient001_frame01_gt.nii.gz")
    labels = labels.with_array(labels.array.astype(np.uint8))
    sample = preprocess(image, InputSpec(crop_size=(160, 160)), labels=labels)

    restored = restore_labels(sample.labels, sample.transform)

    assert restored.geometry == image.geometry and restored.array.shape == image.spatial_shape
    for code in (1, 2, 3):
        assert _dice(restored.array == code, labels.array == code) > 0.95, code


def test_preprocessed_grid_lies_where_its_geometry_says():
    image, labels = _phantom()
    sample = preprocess(image, InputSpec(in_plane_spacing_mm=(1.1, 1.6), crop_size=(96, 80)), labels=labels)
    reference = volume_to_sitk(Volume(np.zeros(sample.labels.shape, np.uint8), sample.geometry))

    in_physical_space = sitk.GetArrayFromImage(
        sitk.Resample(volume_to_sitk(labels), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )

    for code in (1, 2, 3):
        assert _dice(in_physical_space == code, sample.labels == code) > 0.95, code


def test_restore_is_exact_when_spacing_already_matches():
    image, labels = _phantom((2, 60, 70), (1.25, 1.25, 10.0))
    sample = preprocess(image, InputSpec(in_plane_spacing_mm=(1.25, 1.25), crop_size=(64, 64)), labels=labels)

    assert not sample.transform.was_resampled
    restored = restore_labels(sample.labels, sample.transform)
    np.testing.assert_array_equal(restored.array, labels.array)
    assert restored.geometry == labels.geometry


def test_restore_probabilities_gives_native_shape_and_background_outside_crop():
    image, labels = _phantom()
    spec = InputSpec(in_plane_spacing_mm=(1.25, 1.25), crop_size=(48, 48))
    sample = preprocess(image, spec, labels=labels)
    one_hot = np.stack([sample.labels == code for code in range(4)]).astype(np.float32)

    probabilities = restore_probabilities(one_hot, sample.transform)

    assert probabilities.shape == (4, *image.spatial_shape) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert probabilities[0, :, 0, 0].tolist() == [1.0] * 3  # a corner far outside the 48 x 48 crop
    zeros = restore_probabilities(one_hot, sample.transform, background_channel=None)
    assert zeros[:, :, 0, 0].max() == 0.0


def test_transform_survives_a_json_round_trip():
    image, labels = _phantom()
    sample = preprocess(image, InputSpec(), labels=labels)

    again = PreprocessTransform.from_dict(json.loads(json.dumps(sample.transform.to_dict())))

    assert again == sample.transform
    np.testing.assert_array_equal(
        restore_labels(sample.labels, again).array, restore_labels(sample.labels, sample.transform).array
    )


def test_input_spec_survives_a_json_round_trip_and_rejects_unknown_keys():
    spec = InputSpec(in_plane_spacing_mm=(1.5, 1.25), crop_size=(160, 144), normalization="zscore", channels=2)
    assert InputSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(InputError, match="Unknown input spec keys"):
        InputSpec.from_dict({"crop": [128, 128]})


# -- crop centre and padding ---------------------------------------------------------------------------------------


def test_labels_crop_center_puts_the_heart_in_the_middle():
    image, labels = _phantom((2, 140, 120), (1.25, 1.25, 8.0), lv_center_mm=(40.0, 110.0))
    sample = preprocess(image, InputSpec(crop_size=(96, 96)), labels=labels)

    center_j, center_i = _bbox_center(sample.labels > 0)
    assert abs(center_j - 47.5) <= 1.0 and abs(center_i - 47.5) <= 1.0


def test_image_center_is_the_default_without_labels():
    image, _ = _phantom((1, 100, 100), (1.25, 1.25, 8.0))
    sample = preprocess(image, InputSpec(crop_size=(64, 64)))
    assert sample.transform.crop_offset_ji == (18, 18)


def test_detector_gets_the_resampled_image_and_chooses_the_centre():
    image, _ = _phantom()
    seen = {}

    def detector(resampled: Volume) -> tuple[float, float]:
        seen["shape"], seen["spacing"] = resampled.spatial_shape, resampled.geometry.spacing_mm
        return (40.0, 50.0)

    sample = preprocess(image, InputSpec(in_plane_spacing_mm=(1.25, 1.25), crop_size=(32, 32)), crop_center=detector)

    assert seen["shape"] == sample.transform.resampled_shape
    assert seen["spacing"][:2] == (1.25, 1.25)
    offset_j, offset_i = sample.transform.crop_offset_ji
    assert abs(offset_j + 15.5 - 40.0) <= 0.5 and abs(offset_i + 15.5 - 50.0) <= 0.5


def test_small_image_is_padded_with_its_minimum_and_background_labels():
    image, labels = _phantom((1, 40, 36), (1.25, 1.25, 8.0), lv_center_mm=(25.0, 22.0))
    sample = preprocess(image, InputSpec(crop_size=(64, 64)), crop_center="image_center", labels=labels)

    offset_j, offset_i = sample.transform.crop_offset_ji
    assert offset_j < 0 and offset_i < 0
    assert np.all(sample.image[:, : -offset_j] == 0.0) and np.all(sample.labels[:, : -offset_j] == 0)
    restored = restore_labels(sample.labels, sample.transform)
    np.testing.assert_array_equal(restored.array, labels.array)


# -- intensities ---------------------------------------------------------------------------------------------------


def test_percentile_normalisation_maps_into_unit_range():
    image, _ = _phantom((1, 64, 64), (1.25, 1.25, 8.0))
    sample = preprocess(image, InputSpec(crop_size=(64, 64), percentiles=(1.0, 99.0)))
    low, high = np.percentile(image.array, [1.0, 99.0])
    assert sample.image.min() == 0.0 and sample.image.max() == 1.0
    assert sample.transform.intensity_stats == pytest.approx((low, high))


def test_zscore_normalisation_has_zero_mean_unit_std_over_the_whole_image():
    image, _ = _phantom((1, 64, 64), (1.25, 1.25, 8.0))
    sample = preprocess(image, InputSpec(crop_size=(64, 64), normalization="zscore"))
    assert abs(float(sample.image.mean())) < 1e-4 and abs(float(sample.image.std()) - 1.0) < 1e-4


def test_constant_image_raises():
    volume = Volume(np.full((2, 32, 32), 7.0, np.float32))
    with pytest.raises(InputError, match="constant"):
        preprocess(volume, InputSpec(in_plane_spacing_mm=(1.0, 1.0), crop_size=(32, 32)))
    with pytest.raises(InputError, match="constant"):
        preprocess(volume, InputSpec(in_plane_spacing_mm=(1.0, 1.0), crop_size=(32, 32), normalization="zscore"))


def test_image_whose_percentiles_coincide_raises():
    array = np.zeros((1, 32, 32), np.float32)
    array[0, 0, 0] = 5.0
    with pytest.raises(InputError, match="percentiles are both"):
        preprocess(Volume(array), InputSpec(in_plane_spacing_mm=(1.0, 1.0), crop_size=(32, 32)))


# -- validation ----------------------------------------------------------------------------------------------------


def test_4d_series_raises_with_per_frame_hint():
    series = Volume(np.ones((2, 1, 8, 8), np.float32), axes="tkji")
    with pytest.raises(InputError, match=r"frame\(t\)"):
        preprocess(series, InputSpec())


def test_nan_voxels_raise():
    image, _ = _phantom()
    array = image.array.copy()
    array[0, 1, 1] = np.nan
    with pytest.raises(InputError, match="1 NaN or Inf"):
        preprocess(image.with_array(array), InputSpec())


def test_labels_on_another_grid_raise():
    image, labels = _phantom()
    with pytest.raises(InputError, match="labels shape"):
        preprocess(image, InputSpec(), labels=Volume(labels.array[:, :-1], labels.geometry))
    moved = Geometry(labels.geometry.spacing_mm, (0.0, 0.0, 0.0), labels.geometry.direction_lps)
    with pytest.raises(InputError, match="labels geometry"):
        preprocess(image, InputSpec(), labels=Volume(labels.array, moved))


def test_labels_that_are_not_label_codes_raise():
    image, labels = _phantom()
    with pytest.raises(InputError, match="whole numbers"):
        preprocess(image, InputSpec(), labels=labels.with_array(labels.array + 0.5))
    with pytest.raises(InputError, match="0..255"):
        preprocess(image, InputSpec(), labels=labels.with_array(labels.array.astype(np.int16) - 1))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"crop_size": (2048, 128)}, "between 1 and 1024"),
        ({"crop_size": (128.5, 128)}, "two integers"),
        ({"in_plane_spacing_mm": (0.0, 1.25)}, "positive finite"),
        ({"percentiles": (99.0, 1.0)}, "low < high"),
        ({"normalization": "minmax"}, "normalization must be one of"),
        ({"channels": 0}, "channels must be a positive integer"),
    ],
)
def test_invalid_input_spec_raises(kwargs, match):
    with pytest.raises(InputError, match=match):
        InputSpec(**kwargs)


@pytest.mark.parametrize("spacing_mm", [(0.00125, 0.00125, 0.008), (1250.0, 1250.0, 8000.0)])
def test_spacing_in_the_wrong_unit_raises(spacing_mm):
    image = Volume(np.arange(64, dtype=np.float32).reshape(1, 8, 8), Geometry(spacing_mm))
    with pytest.raises(InputError, match="spacing is in mm"):
        preprocess(image, InputSpec())


def test_bad_crop_centres_raise():
    image, labels = _phantom()
    with pytest.raises(InputError, match="entirely outside"):
        preprocess(image, InputSpec(crop_size=(32, 32)), crop_center=(500.0, 10.0))
    with pytest.raises(InputError, match="needs labels"):
        preprocess(image, InputSpec(), crop_center="labels")
    with pytest.raises(InputError, match="no foreground"):
        preprocess(image, InputSpec(), labels=labels.with_array(np.zeros_like(labels.array)))
    with pytest.raises(InputError, match="detector"):
        preprocess(image, InputSpec(), crop_center=lambda volume: (np.nan, 3.0))
    with pytest.raises(InputError, match="crop_center must be"):
        preprocess(image, InputSpec(), crop_center="heart")


def test_restore_with_wrong_shapes_raises():
    image, labels = _phantom()
    sample = preprocess(image, InputSpec(crop_size=(32, 32)), labels=labels)
    with pytest.raises(InputError, match="pred_labels must have the preprocessed shape"):
        restore_labels(sample.labels[:, :-1], sample.transform)
    with pytest.raises(InputError, match=r"\(c, k, cj, ci\)"):
        restore_probabilities(sample.image, sample.transform)
    with pytest.raises(InputError, match="background_channel 3 does not exist"):
        restore_probabilities(sample.image[np.newaxis], sample.transform, background_channel=3)


def _itk_linear(array, spacing, new_spacing, new_size_ji, new_origin, origin):
    """ITK's linear interpolator with nearest-neighbour extrapolation, slice by slice: the reference."""
    is_vector = array.ndim == 4
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    image.SetSpacing((*map(float, spacing), 1.0))
    image.SetOrigin((*map(float, origin), 0.0))
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize((int(new_size_ji[1]), int(new_size_ji[0]), int(array.shape[0])))
    resampler.SetOutputSpacing((*map(float, new_spacing), 1.0))
    resampler.SetOutputOrigin((*map(float, new_origin), 0.0))
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetUseNearestNeighborExtrapolator(True)
    out = sitk.GetArrayFromImage(resampler.Execute(image))
    return out[..., np.newaxis] if is_vector and out.ndim == 3 else out


def test_restore_interpolates_only_near_the_crop_yet_equals_restoring_the_whole_uncropped_grid():
    """Restoring reads the crop window only; the reference pads the crop to the whole resampled grid with each
    channel's fill and lets ITK interpolate all of it. Crops inside, across and beyond the image edges, oblique
    directions; restore_argmax equals the argmax of the restored probabilities."""
    from cardiac_ai.preprocessing import _crop_or_pad, restore_argmax

    rng = np.random.default_rng(11)
    checked = 0
    for trial in range(40):
        shape = (int(rng.integers(1, 4)), int(rng.integers(12, 70)), int(rng.integers(12, 70)))
        spacing = (float(rng.uniform(0.6, 2.5)), float(rng.uniform(0.6, 2.5)), 8.0)
        direction = OBLIQUE if trial % 2 else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
        geometry = Geometry(spacing, tuple(rng.uniform(-50, 50, 3)), direction)
        image = Volume(rng.random(shape).astype(np.float32), geometry)
        crop = int(rng.integers(6, 60))
        spec = InputSpec(in_plane_spacing_mm=(float(rng.uniform(0.7, 3.0)),) * 2, crop_size=(crop, crop))
        center = (float(rng.uniform(-10, shape[1] + 10)), float(rng.uniform(-10, shape[2] + 10)))
        try:
            sample = preprocess(image, spec, crop_center=lambda resampled, c=center: c)
        except InputError:  # a crop entirely outside the image is refused
            continue
        transform = sample.transform
        probabilities = rng.random((4, *transform.cropped_shape)).astype(np.float32)
        probabilities /= probabilities.sum(axis=0)

        restored = restore_probabilities(probabilities, transform)

        size = transform.resampled_shape[1:]
        uncropped = np.stack([
            _crop_or_pad(probabilities[c], (-transform.crop_offset_ji[0], -transform.crop_offset_ji[1]), size,
                         fill=1.0 if c == 0 else 0.0) for c in range(4)], axis=-1)
        # an oblique stack is resampled turned to the short-axis display (here it is), and turned back after
        native, resampled = transform.display_geometry, transform.resampled_geometry
        shift = np.linalg.solve(native.direction_matrix,
                                np.asarray(resampled.origin_lps_mm) - np.asarray(native.origin_lps_mm))
        reference = _itk_linear(uncropped, resampled.spacing_mm[:2], native.spacing_mm[:2],
                                transform.display_shape[1:], (0.0, 0.0), shift[:2])
        reference = transform.in_plane_turn.undo(np.moveaxis(reference, -1, 0))
        assert restored.shape == (4, *shape)
        np.testing.assert_allclose(restored, reference, atol=1e-5)
        np.testing.assert_array_equal(restore_argmax(probabilities, transform), np.argmax(restored, axis=0))
        checked += transform.was_resampled
    assert checked >= 20


def test_separable_linear_resampling_matches_itks_interpolator_inside_and_outside_the_image():
    """_resample_slices interpolates in NumPy (separable); ITK's linear interpolator with nearest-neighbour
    extrapolation is the reference it replaced, for images and many-channel probability maps alike."""
    from cardiac_ai.preprocessing import _resample_slices

    itk = _itk_linear
    rng = np.random.default_rng(3)
    for _ in range(60):
        channels = int(rng.integers(0, 5))
        shape = (int(rng.integers(1, 4)), *rng.integers(2, 40, 2))
        array = rng.random((*shape, channels) if channels else shape).astype(np.float32)
        settings = (rng.uniform(0.5, 3, 2), rng.uniform(0.5, 3, 2), rng.integers(1, 60, 2), rng.uniform(-20, 20, 2))
        origin = rng.uniform(-5, 5, 2)
        ours = _resample_slices(array, *settings, "linear", origin_ij=origin)
        assert ours.shape == itk(array, *settings, origin).shape and ours.dtype == array.dtype
        np.testing.assert_allclose(ours, itk(array, *settings, origin), atol=1e-5)


@pytest.mark.parametrize("stored", [(t, fj, fi) for t in (False, True) for fj in (False, True) for fi in (False, True)])
def test_a_stack_stored_turned_or_mirrored_with_its_header_reaches_the_network_as_the_displayed_stack(stored):
    """A NIfTI reoriented by nibabel or MONAI keeps the anatomy and says so in its header: the network sees the
    same slices, and the restored labels lie on the stored grid in the same places."""
    from cardiac_ai.geometry import InPlaneTurn

    image, labels = _phantom(direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    spec = InputSpec(in_plane_spacing_mm=(1.5, 1.5), crop_size=(64, 64))
    reference = preprocess(image, spec, labels=labels)
    turn = InPlaneTurn(*stored)
    stored_geometry = turn.geometry(image.geometry, image.spatial_shape)
    stored_image = Volume(np.ascontiguousarray(turn.apply(image.array)), stored_geometry)
    stored_labels = Volume(np.ascontiguousarray(turn.apply(labels.array)), stored_geometry)
    sample = preprocess(stored_image, spec, labels=stored_labels)
    assert sample.transform.in_plane_turn.undo(np.zeros((1, 3, 5))).shape == turn.apply(np.zeros((1, 3, 5))).shape
    np.testing.assert_array_equal(sample.image, reference.image)
    np.testing.assert_array_equal(sample.labels, reference.labels)
    restored = restore_labels(sample.labels, sample.transform)
    assert restored.geometry == stored_geometry and restored.array.shape == stored_image.array.shape
    np.testing.assert_array_equal(turn.undo(restored.array), restore_labels(reference.labels,
                                                                            reference.transform).array)
    probabilities = np.stack([sample.labels == c for c in range(4)]).astype(np.float32)
    np.testing.assert_array_equal(restore_argmax(probabilities, sample.transform), restored.array)
    again = PreprocessTransform.from_dict(json.loads(json.dumps(sample.transform.to_dict())))
    assert again == sample.transform
