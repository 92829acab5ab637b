"""Slicer .seg.nrrd writing and reading: names, colours, terminology, and voxels at the right LPS points."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from slicerio.segmentation import terminology_entry_to_string

from cardiac_ai.errors import DataError, InputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import read_seg_nrrd, read_volume, volume_to_sitk, write_seg_nrrd, write_volume
from cardiac_ai.labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL, SCAR, segment_terminology_string

# k, j, i sizes all differ, so a missing or wrong transpose changes the shape or moves voxels
SHAPE_KJI = (5, 6, 7)
SCAR_VOXEL_KJI = (3, 1, 4)


def _oblique_geometry() -> Geometry:
    angle = np.deg2rad(25.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]]
    ) @ np.array([[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]])
    return Geometry((1.4, 0.9, 8.0), (-61.0, 14.5, 102.25), tuple(rotation.ravel()))


def _labels() -> np.ndarray:
    labels = np.zeros(SHAPE_KJI, np.uint8)
    labels[1:4, 2:5, 1:3] = RV_BLOOD_POOL
    labels[0:5, 3:6, 4:7] = LV_MYOCARDIUM
    labels[1:4, 4, 5] = LV_BLOOD_POOL
    labels[SCAR_VOXEL_KJI] = SCAR
    return labels


@pytest.fixture
def nifti_labels(tmp_path) -> Path:
    return write_volume(Volume(_labels(), _oblique_geometry()), tmp_path / "labels.nii.gz")


def test_seg_nrrd_from_nifti_has_names_colours_and_terminology_in_slicerio(tmp_path, nifti_labels):
    volume = read_volume(nifti_labels)
    path = write_seg_nrrd(volume, tmp_path / "labels.seg.nrrd")

    segmentation = slicerio.read_segmentation(str(path))

    present = [RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL, SCAR]  # MVO is absent: no segment for it
    segments = segmentation["segments"]
    assert [s["id"] for s in segments] == [LABELS[c].name for c in present]
    assert slicerio.segment_names(segmentation) == [LABELS[c].display_name for c in present]
    for segment, code in zip(segments, present):
        assert segment["labelValue"] == code
        assert segment["layer"] == 0
        np.testing.assert_allclose(segment["color"], LABELS[code].color_rgb, atol=1e-6)
        assert terminology_entry_to_string(segment["terminology"]) == segment_terminology_string(LABELS[code])
    assert segmentation["voxels"].dtype == np.uint8


def test_seg_nrrd_voxels_lie_at_the_same_lps_points(tmp_path, nifti_labels):
    volume = read_volume(nifti_labels)
    path = write_seg_nrrd(volume, tmp_path / "labels.seg.nrrd")

    segmentation = slicerio.read_segmentation(str(path))
    voxels = segmentation["voxels"]  # slicerio: (i, j, k)

    k, j, i = SCAR_VOXEL_KJI
    assert voxels.shape == SHAPE_KJI[::-1]
    assert voxels[i, j, k] == SCAR
    assert np.count_nonzero(voxels == SCAR) == 1
    lps_slicerio = (np.asarray(segmentation["ijkToLPS"]) @ np.array([i, j, k, 1.0]))[:3]
    lps_volume = volume.geometry.index_to_lps([SCAR_VOXEL_KJI])[0]
    np.testing.assert_allclose(lps_slicerio, lps_volume, atol=1e-4)
    assert not np.allclose(lps_volume, volume.geometry.origin_lps_mm)  # a point that tests the mapping
    # every label, not only the scar voxel
    np.testing.assert_array_equal(voxels.transpose(2, 1, 0), _labels())


def test_seg_nrrd_reads_back_identically_with_simpleitk(tmp_path, nifti_labels):
    volume = read_volume(nifti_labels)
    path = write_seg_nrrd(volume, tmp_path / "labels.seg.nrrd")

    image = sitk.ReadImage(str(path))

    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), _labels())
    np.testing.assert_allclose(image.GetSpacing(), volume.geometry.spacing_mm, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), volume.geometry.origin_lps_mm, atol=1e-5)
    np.testing.assert_allclose(image.GetDirection(), volume.geometry.direction_lps, atol=1e-5)


def test_read_seg_nrrd_round_trip_keeps_codes_geometry_and_segments(tmp_path):
    volume = Volume(_labels(), _oblique_geometry())
    path = write_seg_nrrd(volume, tmp_path / "labels.seg.nrrd", reference=volume)

    result = read_seg_nrrd(path)

    assert result.labels.array.dtype == np.uint8
    np.testing.assert_array_equal(result.labels.array, volume.array)
    assert result.labels.geometry.is_close(volume.geometry)
    assert [s.code for s in result.segments] == [RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL, SCAR]
    assert result.segments[1].name == LABELS[LV_MYOCARDIUM].display_name
    assert result.segments[1].segment_id == "lv_myocardium"
    assert result.segments[3].terminology == segment_terminology_string(LABELS[SCAR])


def test_empty_label_map_writes_a_valid_file_with_no_segments(tmp_path):
    volume = Volume(np.zeros(SHAPE_KJI, np.uint8), _oblique_geometry())
    path = write_seg_nrrd(volume, tmp_path / "empty.seg.nrrd")

    assert slicerio.read_segmentation(str(path))["segments"] == []
    result = read_seg_nrrd(path)
    assert result.segments == []
    assert not result.labels.array.any()
    assert result.labels.geometry.is_close(volume.geometry)


def _slicer_style_file(tmp_path: Path) -> Path:
    """A segmentation as a Slicer user might save it: overlapping segments (two layers), own IDs and names."""
    geometry = _oblique_geometry()
    shape_ijk = SHAPE_KJI[::-1]
    segmentation = slicerio.create_segmentation(shape_ijk, geometry.ijk_to_lps_matrix())
    myocardium = np.zeros(shape_ijk, bool)
    myocardium[1:5, 1:4, 0:2] = True
    scar = np.zeros(shape_ijk, bool)
    scar[2, 2, 1] = True  # inside the myocardium: overlaps, so slicerio puts it in a second layer
    pool = np.zeros(shape_ijk, bool)
    pool[6, 5, 4] = True
    slicerio.add_segment(segmentation, myocardium, {"id": "Segment_1", "name": "left ventricle MYOCARDIUM"})
    slicerio.add_segment(
        segmentation, scar,
        {"id": "Segment_2", "name": "enhancement", "terminology": {
            "contextName": "x", "category": ["SCT", "49755003", "Morphologically Altered Structure"],
            "type": ["SCT", "12402003", "Scar"], "anatomicContextName": "y", "anatomicRegion": ["SCT", "80891009", "Heart"],
        }},
    )
    slicerio.add_segment(segmentation, pool, {"id": "Segment_3", "name": "unnamed"})  # label value 2 -> fallback
    path = tmp_path / "slicer.seg.nrrd"
    slicerio.write_segmentation(str(path), segmentation)
    assert segmentation["voxels"].ndim == 4
    return path


def test_read_seg_nrrd_maps_slicer_segments_by_name_terminology_then_label_value(tmp_path, caplog):
    path = _slicer_style_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.seg_nrrd"):
        result = read_seg_nrrd(path)

    assert [s.code for s in result.segments] == [LV_MYOCARDIUM, SCAR, LV_MYOCARDIUM]
    labels = result.labels.array  # (k, j, i)
    assert labels[1, 2, 2] == SCAR  # the higher code wins where segments overlap
    assert labels[1, 1, 1] == LV_MYOCARDIUM
    assert labels[4, 5, 6] == LV_MYOCARDIUM  # "unnamed" fell back to its label value 2
    assert "overlaps" in caplog.text and "label value 2" in caplog.text
    # the fallback is kept for the report (QC's and evaluate's warnings), not only logged
    assert len(result.notes) == 1 and "'unnamed'" in result.notes[0] and "label value 2" in result.notes[0]


def test_read_seg_nrrd_refuses_segment_it_cannot_map(tmp_path):
    geometry = Geometry()
    segmentation = slicerio.create_segmentation((3, 3, 3), geometry.ijk_to_lps_matrix())
    mask = np.zeros((3, 3, 3), bool)
    mask[1, 1, 1] = True
    for index in range(9):
        slicerio.add_segment(segmentation, mask if index == 8 else np.zeros_like(mask), {"name": f"organ {index}"})
    slicerio.write_segmentation(str(tmp_path / "liver.seg.nrrd"), segmentation)
    first_unknown = max(LABELS) + 1  # segment "organ N" has label value N + 1
    with pytest.raises(InputError, match=f"organ {first_unknown - 1}.*label value {first_unknown}"):
        read_seg_nrrd(tmp_path / "liver.seg.nrrd")


def test_read_seg_nrrd_missing_or_corrupt_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_seg_nrrd(tmp_path / "absent.seg.nrrd")
    (tmp_path / "junk.seg.nrrd").write_bytes(b"\x00\x01 not nrrd")
    with pytest.raises(DataError, match="junk.seg.nrrd"):
        read_seg_nrrd(tmp_path / "junk.seg.nrrd")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (_labels().astype(np.float32), "integer codes"),
        (np.where(_labels() == SCAR, 9, _labels()).astype(np.uint8), r"\[9\]"),
    ],
    ids=["float", "unknown-code"],
)
def test_bad_label_maps_raise_and_write_nothing(tmp_path, array, match):
    with pytest.raises(InputError, match=match):
        write_seg_nrrd(Volume(array, _oblique_geometry()), tmp_path / "bad.seg.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_4d_labels_and_mismatched_reference_are_refused(tmp_path):
    series = Volume(np.zeros((2, *SHAPE_KJI), np.uint8), _oblique_geometry(), axes="tkji")
    with pytest.raises(InputError, match="frame"):
        write_seg_nrrd(series, tmp_path / "cine.seg.nrrd")
    labels = Volume(_labels(), _oblique_geometry())
    shifted = Geometry((1.4, 0.9, 8.0), (0.0, 0.0, 0.0), _oblique_geometry().direction_lps)
    with pytest.raises(InputError, match="resample"):
        write_seg_nrrd(labels, tmp_path / "a.seg.nrrd", reference=shifted)
    with pytest.raises(InputError, match="shape"):
        write_seg_nrrd(labels, tmp_path / "b.seg.nrrd", reference=Volume(np.zeros((5, 6, 8)), _oblique_geometry()))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_seg_nrrd(Volume(_labels(), _oblique_geometry()), tmp_path / "labels.seg.nrrd")
    old_bytes = path.read_bytes()

    def broken(file, segmentation, *args, **kwargs):
        Path(file).write_bytes(b"NRRD0004\ntruncated")
        raise OSError("disk full")

    monkeypatch.setattr(slicerio, "write_segmentation", broken)
    with pytest.raises(OSError, match="disk full"):
        write_seg_nrrd(Volume(np.zeros(SHAPE_KJI, np.uint8), _oblique_geometry()), path)
    assert path.read_bytes() == old_bytes
    assert [p.name for p in tmp_path.iterdir()] == ["labels.seg.nrrd"]



@pytest.mark.shared_data
def test_acdc_ground_truth_converts_to_seg_nrrd_with_true_spacing(shared_data_dir, tmp_path):
    path = shared_data_dir / "acdc" / "training" / "patient001" / "patient001_frame01_gt.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    labels = read_volume(path)
    out = write_seg_nrrd(labels, tmp_path / "patient001.seg.nrrd")

    image = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels.array)
    np.testing.assert_allclose(image.GetSpacing(), labels.geometry.spacing_mm, atol=1e-5)
    assert [s["id"] for s in slicerio.read_segmentation(str(out))["segments"]] == [
        "rv_blood_pool", "lv_myocardium", "lv_blood_pool",
    ]


def test_a_label_map_saved_under_a_seg_nrrd_name_is_read_by_its_values_not_emptied(tmp_path, caplog):
    from cardiac_ai.io import read_label_map, seg_nrrd_has_segments

    labels = Volume(_labels(), _oblique_geometry())
    # e.g. SimpleITK.WriteImage(labels, "x.seg.nrrd"): voxels, no Segment0_ fields (write_volume refuses the name)
    sitk.WriteImage(volume_to_sitk(labels), str(tmp_path / "plain.seg.nrrd"))
    assert not seg_nrrd_has_segments(tmp_path / "plain.seg.nrrd")
    with caplog.at_level(logging.WARNING):
        read = read_seg_nrrd(tmp_path / "plain.seg.nrrd")
    np.testing.assert_array_equal(read.labels.array, labels.array)
    assert read.segments == [] and read.labels.geometry.is_close(labels.geometry)
    assert "no segment metadata" in caplog.text
    np.testing.assert_array_equal(read_label_map(tmp_path / "plain.seg.nrrd").array, labels.array)

    write_seg_nrrd(labels, tmp_path / "slicer.seg.nrrd")
    assert seg_nrrd_has_segments(tmp_path / "slicer.seg.nrrd")
    np.testing.assert_array_equal(read_label_map(tmp_path / "slicer.seg.nrrd").array, labels.array)

    outside = labels.array.copy()
    outside[0, 0, 0] = 200
    sitk.WriteImage(volume_to_sitk(labels.with_array(outside)), str(tmp_path / "outside.seg.nrrd"))
    with pytest.raises(InputError, match="200"):
        read_seg_nrrd(tmp_path / "outside.seg.nrrd")
    write_volume(labels.with_array(outside), tmp_path / "outside.nii.gz")
    with pytest.raises(InputError, match="200"):
        read_label_map(tmp_path / "outside.nii.gz")


def test_short_segment_names_are_read_as_slicer_users_type_them(tmp_path):
    """A segment named "Myo" that Slicer numbered 1 is the myocardium, not label value 1's RV blood pool."""
    geometry = _oblique_geometry()
    segmentation = slicerio.create_segmentation(SHAPE_KJI[::-1], geometry.ijk_to_lps_matrix())
    mask = np.zeros(SHAPE_KJI[::-1], np.uint8)
    mask[1:3, 2:4, 1:4] = 1
    segmentation["voxels"] = mask
    segmentation["segments"] = [{"id": "Segment_1", "name": "Myo", "labelValue": 1, "layer": 0,
                                 "color": [1, 0, 0]}]
    slicerio.write_segmentation(str(tmp_path / "myo.seg.nrrd"), segmentation)
    read = read_seg_nrrd(tmp_path / "myo.seg.nrrd")
    assert [s.code for s in read.segments] == [LV_MYOCARDIUM]
    assert set(np.unique(read.labels.array)) == {0, LV_MYOCARDIUM}



def test_a_whole_heart_segment_never_wins_over_the_structures_it_holds(tmp_path):
    geometry = _oblique_geometry()
    segmentation = slicerio.create_segmentation(SHAPE_KJI[::-1], geometry.ijk_to_lps_matrix())
    layers = np.zeros((2, *SHAPE_KJI[::-1]), np.uint8)
    layers[0, 1:3, 2:4, 1:4] = 1  # myocardium
    layers[1, 0:4, 1:5, 0:5] = 1  # the heart around it, on a layer of its own
    segmentation["voxels"] = layers
    segmentation["segments"] = [
        {"id": "Segment_1", "name": "Myo", "labelValue": 1, "layer": 0, "color": [1, 0, 0]},
        {"id": "Segment_2", "name": "Heart", "labelValue": 1, "layer": 1, "color": [0, 1, 0]}]
    slicerio.write_segmentation(str(tmp_path / "heart.seg.nrrd"), segmentation)
    labels = read_seg_nrrd(tmp_path / "heart.seg.nrrd").labels.array  # (k, j, i)
    np.testing.assert_array_equal(labels == LV_MYOCARDIUM, layers[0].transpose(2, 1, 0) == 1)
    assert np.count_nonzero(labels == 6) == np.count_nonzero(layers[1] & ~layers[0])
