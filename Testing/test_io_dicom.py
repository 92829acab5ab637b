"""DICOM series reading: slices ordered by position, LPS geometry from the headers, clear errors for bad folders."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from cardiac_ai.errors import DataError, InputError
from cardiac_ai.io import list_dicom_series, read_dicom_series, read_volume

ROWS, COLUMNS = 6, 8
PIXEL_SPACING = (0.9, 1.3)  # (row spacing = j, column spacing = i)
SLICE_GAP = 7.5


def _oblique_cosines() -> tuple[np.ndarray, np.ndarray]:
    row = np.array([0.8, 0.6, 0.0])
    column = np.array([-0.36, 0.48, 0.8])
    return row, column  # orthonormal: 0.8 * -0.36 + 0.6 * 0.48 = 0


def _slice_dataset(
    *, series_uid: str, description: str, row, column, position, pixels: np.ndarray, instance: int,
    slope: float = 1.0, intercept: float = 0.0, thickness: float | None = 7.5, series_number: int = 1,
) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Phantom^Test"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = description
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance
    ds.ImageOrientationPatient = [float(v) for v in (*row, *column)]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.PixelSpacing = list(PIXEL_SPACING)
    if thickness is not None:
        ds.SliceThickness = thickness
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _write_series(
    folder: Path, *, row, column, origin, n_slices=5, description="cine SA", seed=0, slope=1.0, intercept=0.0,
    series_number=1, positions=None, tag="s",
) -> tuple[str, np.ndarray]:
    """Write a series in shuffled order with shuffled names and InstanceNumbers; return (uid, stored pixels)."""
    rng = np.random.default_rng(seed)
    uid = generate_uid()
    normal = np.cross(row, column)
    if positions is None:
        positions = [np.asarray(origin) + k * SLICE_GAP * normal for k in range(n_slices)]
    stored = np.stack([np.full((ROWS, COLUMNS), 100 * (k + 1), np.uint16) for k in range(len(positions))])
    stored += rng.integers(0, 50, stored.shape, dtype=np.uint16)
    order = rng.permutation(len(positions))
    names = rng.permutation(len(positions))
    for write_index, k in enumerate(order):
        ds = _slice_dataset(
            series_uid=uid, description=description, row=row, column=column, position=positions[k],
            pixels=stored[k], instance=int(names[write_index]) + 1, slope=slope, intercept=intercept,
            series_number=series_number,
        )
        ds.save_as(folder / f"{tag}{names[write_index]:03d}", enforce_file_format=True)
    return uid, stored


@pytest.fixture
def two_series(tmp_path) -> tuple[Path, dict]:
    """An axial series and an oblique one with rescaling, interleaved in one folder, plus a junk file."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    axial_uid, axial = _write_series(
        folder, row=np.array([1.0, 0, 0]), column=np.array([0, 1.0, 0]), origin=(-50.0, -40.0, 12.0),
        description="axial", seed=1, series_number=3, tag="a",
    )
    row, column = _oblique_cosines()
    oblique_uid, oblique = _write_series(
        folder, row=row, column=column, origin=(10.0, -20.5, 33.0), description="oblique SA", seed=2,
        slope=0.5, intercept=-10.0, series_number=7, tag="b",
    )
    (folder / "README.txt").write_text("exported by a scanner")
    return folder, {"axial": (axial_uid, axial), "oblique": (oblique_uid, oblique)}


def test_list_dicom_series_reports_uids_descriptions_counts_and_orientations(two_series, caplog):
    folder, series = two_series
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.dicom"):
        infos = list_dicom_series(folder)

    assert [i.series_uid for i in infos] == [series["axial"][0], series["oblique"][0]]  # by SeriesNumber
    assert [i.description for i in infos] == ["axial", "oblique SA"]
    assert [i.n_files for i in infos] == [5, 5]
    assert infos[0].orientation == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    np.testing.assert_allclose(infos[1].orientation, np.concatenate(_oblique_cosines()))
    assert "README.txt" in caplog.text  # the junk file was skipped with a warning


def test_oblique_series_reads_in_slice_order_with_lps_geometry(two_series):
    folder, series = two_series
    uid, stored = series["oblique"]
    row, column = _oblique_cosines()
    normal = np.cross(row, column)

    volume = read_dicom_series(folder, series_uid=uid)

    assert volume.array.shape == (5, ROWS, COLUMNS)
    assert volume.array.dtype == np.float32
    np.testing.assert_allclose(volume.array, stored * 0.5 - 10.0)  # ordered by position, rescaled
    geometry = volume.geometry
    np.testing.assert_allclose(geometry.spacing_mm, (PIXEL_SPACING[1], PIXEL_SPACING[0], SLICE_GAP), atol=1e-6)
    np.testing.assert_allclose(geometry.origin_lps_mm, (10.0, -20.5, 33.0), atol=1e-6)
    np.testing.assert_allclose(geometry.direction_matrix, np.column_stack([row, column, normal]), atol=1e-6)
    # voxel (k=4, j=2, i=3) lies at position_k + i * col_spacing * row_cosine + j * row_spacing * column_cosine
    expected = np.array([10.0, -20.5, 33.0]) + 4 * SLICE_GAP * normal + 3 * 1.3 * row + 2 * 0.9 * column
    np.testing.assert_allclose(geometry.index_to_lps([[4, 2, 3]])[0], expected, atol=1e-5)


def test_axial_series_origin_is_first_slice_along_normal(two_series):
    folder, series = two_series
    uid, stored = series["axial"]
    volume = read_dicom_series(folder, series_uid=uid)
    np.testing.assert_array_equal(volume.array, stored.astype(np.float32))
    assert volume.geometry.origin_lps_mm == (-50.0, -40.0, 12.0)
    assert volume.geometry.direction_lps == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def test_several_series_without_series_uid_lists_them(two_series):
    folder, series = two_series
    with pytest.raises(InputError, match="holds 2 DICOM series") as error:
        read_dicom_series(folder)
    message = str(error.value)
    for uid, _ in series.values():
        assert uid in message
    assert "'axial'" in message and "'oblique SA'" in message and "series_uid" in message
    with pytest.raises(InputError, match="--series-uid"):
        read_volume(folder)  # the folder path of the generic reader gives the same advice


def test_unknown_series_uid_lists_the_available_ones(two_series):
    folder, series = two_series
    with pytest.raises(InputError, match=series["axial"][0]):
        read_dicom_series(folder, series_uid="1.2.3.4")


def test_mixed_orientations_within_a_series_are_refused(tmp_path):
    uid, _ = _write_series(tmp_path, row=np.array([1.0, 0, 0]), column=np.array([0, 1.0, 0]), origin=(0, 0, 0))
    row, column = _oblique_cosines()
    odd = _slice_dataset(
        series_uid=uid, description="cine SA", row=row, column=column, position=(0, 0, 100.0),
        pixels=np.zeros((ROWS, COLUMNS), np.uint16), instance=9,
    )
    odd.save_as(tmp_path / "odd", enforce_file_format=True)
    with pytest.raises(InputError, match="mixes 2 slice orientations"):
        read_dicom_series(tmp_path)


def test_duplicate_positions_are_refused(tmp_path):
    positions = [(0, 0, 0.0), (0, 0, 7.5), (0, 0, 7.5), (0, 0, 15.0)]
    _write_series(tmp_path, row=np.array([1.0, 0, 0]), column=np.array([0, 1.0, 0]), origin=None, positions=positions)
    with pytest.raises(InputError, match="repeated slice position"):
        read_dicom_series(tmp_path)


def test_uneven_slice_gaps_are_refused(tmp_path):
    positions = [(0, 0, 0.0), (0, 0, 7.5), (0, 0, 15.0), (0, 0, 30.0)]  # one slice missing
    _write_series(tmp_path, row=np.array([1.0, 0, 0]), column=np.array([0, 1.0, 0]), origin=None, positions=positions)
    with pytest.raises(InputError, match="uneven slice gaps"):
        read_dicom_series(tmp_path)


def test_single_slice_series_uses_slice_thickness(tmp_path):
    ds = _slice_dataset(
        series_uid=generate_uid(), description="one", row=(1, 0, 0), column=(0, 1, 0), position=(1, 2, 3),
        pixels=np.ones((ROWS, COLUMNS), np.uint16), instance=1, thickness=6.0,
    )
    ds.save_as(tmp_path / "only", enforce_file_format=True)
    volume = read_dicom_series(tmp_path)
    assert volume.array.shape == (1, ROWS, COLUMNS)
    assert volume.geometry.spacing_mm == (1.3, 0.9, 6.0)


def test_single_slice_without_thickness_warns_and_uses_1_mm(tmp_path, caplog):
    ds = _slice_dataset(
        series_uid=generate_uid(), description="one", row=(1, 0, 0), column=(0, 1, 0), position=(1, 2, 3),
        pixels=np.ones((ROWS, COLUMNS), np.uint16), instance=1, thickness=None,
    )
    ds.save_as(tmp_path / "only", enforce_file_format=True)
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.dicom"):
        volume = read_dicom_series(tmp_path)
    assert volume.geometry.spacing_mm[2] == 1.0
    assert "SliceThickness" in caplog.text


def test_folder_of_junk_raises_data_error(tmp_path):
    (tmp_path / "a.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises(DataError, match="No readable DICOM image"):
        read_dicom_series(tmp_path)
    with pytest.raises(DataError, match="No readable DICOM image"):
        list_dicom_series(tmp_path)


def test_missing_folder_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_dicom_series(tmp_path / "absent")


def test_written_files_are_valid_dicom(two_series):
    """Guard for the fixture itself: pydicom reads every image file back with its pixels."""
    folder, _ = two_series
    images = [p for p in folder.iterdir() if p.name != "README.txt"]
    assert len(images) == 10
    assert all(pydicom.dcmread(p).pixel_array.shape == (ROWS, COLUMNS) for p in images)


def _blocks(volume):
    labels = np.zeros(volume.array.shape, np.uint8)
    labels[1:4, 1:5, 1:5] = 2  # the images are 6 x 8
    labels[1:4, 2:4, 2:4] = 3
    labels[2, 1:4, 6:8] = 1
    return volume.with_array(labels)


def test_dicom_seg_of_an_oblique_series_refers_to_its_images_slice_by_slice(two_series, tmp_path):
    import highdicom as hd

    from cardiac_ai.io.dicom import series_headers
    from cardiac_ai.io.dicom_seg import write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    labels = _blocks(read_dicom_series(folder, series_uid=uid))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    path = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", series_uid=uid)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the source files are untouched

    seg = hd.seg.segread(str(path))
    names = [s.SegmentLabel for s in seg.SegmentSequence]
    assert names == ["Right ventricle blood pool", "Left ventricle myocardium", "Left ventricle blood pool"]
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "74281007"  # myocardium, SCT
    assert seg.SeriesInstanceUID != uid and seg.StudyInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    order = [h.SOPInstanceUID for h in series_headers(folder, series_uid=uid)[1]]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, combine_segments=True)
    codes = np.array([0, 1, 2, 3])  # segment numbers 1..3 are the codes 1..3 here, all present
    np.testing.assert_array_equal(codes[pixels], labels.array)


def test_dicom_seg_refuses_labels_off_the_series_grid_and_skips_an_empty_one(two_series, tmp_path):
    from cardiac_ai.geometry import Geometry
    from cardiac_ai.io.dicom_seg import write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    labels = _blocks(read_dicom_series(folder, series_uid=uid))
    moved = type(labels)(labels.array, Geometry(labels.geometry.spacing_mm,
                                                tuple(np.asarray(labels.geometry.origin_lps_mm) + 5.0),
                                                labels.geometry.direction_lps))
    with pytest.raises(InputError, match="grid"):
        write_dicom_seg(moved, folder, tmp_path / "a.dcm", series_uid=uid)
    with pytest.raises(InputError, match="grid"):
        write_dicom_seg(labels.with_array(labels.array[1:]), folder, tmp_path / "b.dcm", series_uid=uid)
    assert write_dicom_seg(labels.with_array(np.zeros_like(labels.array)), folder, tmp_path / "c.dcm",
                           series_uid=uid) is None
    assert not any(tmp_path.glob("*.dcm"))


def test_a_dicom_seg_beside_its_series_is_not_read_as_a_second_series(two_series, tmp_path):
    from cardiac_ai.io.dicom_seg import write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    image = read_dicom_series(folder, series_uid=uid)
    write_dicom_seg(_blocks(image), folder, folder / "seg.dcm", series_uid=uid)
    assert [i.series_uid for i in list_dicom_series(folder)] == [series["axial"][0], uid]  # not three series
    np.testing.assert_array_equal(read_dicom_series(folder, series_uid=uid).array, image.array)


def test_one_dicom_file_as_input_gets_a_warning_instead_of_a_seg(two_series, tmp_path):
    from cardiac_ai.io.dicom_seg import dicom_seg_of_dicom_input
    from cardiac_ai.provenance import Provenance

    folder, _ = two_series
    one = tmp_path / "one.dcm"
    one.write_bytes(next(p for p in folder.iterdir() if p.name.startswith("b")).read_bytes())
    provenance = Provenance()
    assert dicom_seg_of_dicom_input(None, one, tmp_path / "seg.dcm", series_uid=None, provenance=provenance) is None
    assert any("one DICOM file" in w for w in provenance.warnings) and not (tmp_path / "seg.dcm").exists()


def test_a_dicom_seg_reads_back_onto_its_series_with_its_codes(two_series, tmp_path):
    from cardiac_ai.geometry import pad_to_reference_grid
    from cardiac_ai.io import read_label_map
    from cardiac_ai.io.dicom_seg import is_dicom_seg, read_dicom_seg, write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    image = read_dicom_series(folder, series_uid=uid)
    labels = _blocks(image)  # slices 1..3 only: the SEG holds three frames
    path = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", series_uid=uid)
    assert is_dicom_seg(path) and not is_dicom_seg(folder / "README.txt") and not is_dicom_seg(tmp_path / "none")
    assert not is_dicom_seg(next(p for p in folder.iterdir() if p.name != "README.txt"))  # an MR image

    read = read_dicom_seg(path)
    assert [(s.code, s.name) for s in read.segments] == [
        (1, "Right ventricle blood pool"), (2, "Left ventricle myocardium"), (3, "Left ventricle blood pool")]
    assert read.labels.array.shape == (3, 6, 8)  # the three segmented slices, stacked as the series is
    np.testing.assert_allclose(read.labels.geometry.direction_matrix, image.geometry.direction_matrix, atol=1e-6)
    placed = pad_to_reference_grid(read.labels, image)
    np.testing.assert_array_equal(placed.array, labels.array)
    assert placed.geometry.is_close(image.geometry)
    np.testing.assert_array_equal(pad_to_reference_grid(read_label_map(path), image).array, labels.array)

    from cardiac_ai.evaluation import evaluate_folders
    from cardiac_ai.io import write_volume

    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    path.rename(tmp_path / "pred" / "case01.dcm")
    write_volume(labels, tmp_path / "truth" / "case01_gt.nii.gz")
    result = evaluate_folders(tmp_path / "pred", tmp_path / "truth", regional_analysis=False)
    assert [row["dice"] for row in result.rows] == [1.0, 1.0, 1.0]


def test_a_dicom_seg_from_another_tool_is_matched_by_label_or_refused(two_series, tmp_path):
    from cardiac_ai.io.dicom_seg import read_dicom_seg, write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    path = write_dicom_seg(_blocks(read_dicom_series(folder, series_uid=uid)), folder, tmp_path / "seg.dcm",
                           series_uid=uid)
    foreign = pydicom.dcmread(path)
    for segment in foreign.SegmentSequence:
        del segment.TrackingID, segment.TrackingUID  # another tool: only its labels and codes tell
    foreign.SegmentSequence[0].SegmentLabel = "RV cavity"  # no CardiacAI name: matched by type and region codes
    foreign.save_as(tmp_path / "foreign.dcm")
    assert [s.code for s in read_dicom_seg(tmp_path / "foreign.dcm").segments] == [1, 2, 3]

    foreign.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue = "15825003"  # aorta
    foreign.save_as(tmp_path / "aorta.dcm")
    with pytest.raises(InputError, match="segment 1 .*'RV cavity'.* matches no CardiacAI structure"):
        read_dicom_seg(tmp_path / "aorta.dcm")
    (tmp_path / "broken.dcm").write_bytes(path.read_bytes()[:2000])
    with pytest.raises(DataError, match="Cannot read"):
        read_dicom_seg(tmp_path / "broken.dcm")


def _foreign_seg(folder, uid, masks_by_name, path, *, kind="BINARY", drop_spacing=False, slices=None):
    """A DICOM SEG as another tool writes it (highdicom; no CardiacAI tracking IDs): one segment per named mask
    (frames, rows, columns), of ``kind`` BINARY, FRACTIONAL or LABELMAP; ``slices``: made from those source images
    only (in the series' order)."""
    import copy

    import highdicom as hd
    from pydicom.sr.codedict import codes

    from cardiac_ai.io.dicom import series_headers
    from cardiac_ai.io.dicom_seg import _COPIED_TYPE_2, _coded
    from cardiac_ai.labels import LABELS, code_for_segment_name

    headers = [copy.deepcopy(h) for h in series_headers(folder, series_uid=uid)[1]]
    if slices is not None:
        headers = [headers[k] for k in slices]
        masks_by_name = {name: mask[list(slices)] for name, mask in masks_by_name.items()}
    for header in headers:
        for name in _COPIED_TYPE_2:
            if name not in header:
                setattr(header, name, "")
    algorithm = hd.AlgorithmIdentificationSequence(name="OtherTool", version="1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = []
    for number, name in enumerate(masks_by_name, start=1):
        row = LABELS[code_for_segment_name(name)]
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=_coded(row.category),
            segmented_property_type=_coded(row.type), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_coded(row.anatomic_region)] if row.anatomic_region is not None else None))
    stacked = np.stack(list(masks_by_name.values()), axis=-1)
    if kind == "LABELMAP":
        pixels = np.zeros(stacked.shape[:3], np.uint8)
        for number in range(stacked.shape[-1]):
            pixels[stacked[..., number] > 0] = number + 1
    else:
        pixels = stacked.astype(np.float32 if kind == "FRACTIONAL" else np.uint8)
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=pixels, segmentation_type=getattr(hd.seg.SegmentationTypeValues, kind),
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=5, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="Other", manufacturer_model_name="Other", software_versions="1",
        device_serial_number="1")
    if drop_spacing:
        for group in seg.SharedFunctionalGroupsSequence:
            for measures in group.get("PixelMeasuresSequence", []):
                if "SpacingBetweenSlices" in measures:
                    del measures.SpacingBetweenSlices
    seg.save_as(str(path))
    return path


def test_another_tool_s_dicom_seg_overlapping_fractional_or_label_map_reads_right(two_series, tmp_path):
    from cardiac_ai.geometry import pad_to_reference_grid
    from cardiac_ai.io.dicom_seg import read_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    image = read_dicom_series(folder, series_uid=uid)
    labels = _blocks(image).array
    masks = {"RV": labels == 1, "Myo": labels == 2, "LV": labels == 3}

    def placed(path):
        return pad_to_reference_grid(read_dicom_seg(path, reference=image.geometry).labels, image).array

    # a whole-heart segment over its parts never wins the overlap
    heart = _foreign_seg(folder, uid, {**masks, "Heart": labels > 0}, tmp_path / "heart.dcm")
    np.testing.assert_array_equal(placed(heart), labels)
    # fractional: the voxels of probability >= 0.5
    soft = {name: np.where(mask, 0.6, np.where(np.roll(mask, 1, axis=2), 0.3, 0.0)) for name, mask in masks.items()}
    np.testing.assert_array_equal(placed(_foreign_seg(folder, uid, soft, tmp_path / "soft.dcm", kind="FRACTIONAL")),
                                  labels)
    # a label map SEG (segment 0 is its background)
    np.testing.assert_array_equal(placed(_foreign_seg(folder, uid, masks, tmp_path / "lm.dcm", kind="LABELMAP")),
                                  labels)
    # one segmented slice, without the spacing between slices: placed on its plane with the image's thickness
    one = {name: np.where(np.arange(len(mask))[:, None, None] == 2, mask, False) for name, mask in masks.items()}
    single = _foreign_seg(folder, uid, one, tmp_path / "one.dcm", drop_spacing=True)
    expected = np.where(np.arange(len(labels))[:, None, None] == 2, labels, 0)
    np.testing.assert_array_equal(placed(single), expected)
    # every other slice segmented, the SEG made from those images alone: highdicom stacks them at twice the spacing
    gapped = {name: np.where(np.isin(np.arange(len(mask)), (1, 3))[:, None, None], mask, False)
              for name, mask in masks.items()}
    expected = np.where(np.isin(np.arange(len(labels)), (1, 3))[:, None, None], labels, 0)
    for drop in (False, True):
        path = _foreign_seg(folder, uid, gapped, tmp_path / f"gap{drop}.dcm", slices=(1, 3), drop_spacing=drop)
        np.testing.assert_array_equal(placed(path), expected)


def test_evaluate_against_a_dicom_seg_truth_keeps_base_and_apex(two_series, tmp_path):
    from cardiac_ai.evaluation import evaluate_folders
    from cardiac_ai.io import write_volume
    from cardiac_ai.io.dicom_seg import write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    image = read_dicom_series(folder, series_uid=uid)
    truth = _blocks(image)
    prediction = truth.array.copy()
    prediction[1] = 0  # the first labelled slice missed: the base (k low) is worse than the apex
    for name in ("pred", "truth_nifti", "truth_seg"):
        (tmp_path / name).mkdir()
    write_volume(truth.with_array(prediction), tmp_path / "pred" / "case01.nii.gz")
    write_volume(truth, tmp_path / "truth_nifti" / "case01_gt.nii.gz")
    write_dicom_seg(truth, folder, tmp_path / "truth_seg" / "case01_gt.dcm", series_uid=uid)
    regional = {name: evaluate_folders(tmp_path / "pred", tmp_path / name).regional
                for name in ("truth_nifti", "truth_seg")}
    assert repr(regional["truth_seg"]) == repr(regional["truth_nifti"]) and regional["truth_nifti"]  # NaN alike
    lv = next(row for row in regional["truth_seg"] if row["structure"] == "lv_myocardium")
    assert lv["base_mean"] < lv["apex_mean"]  # the missed slice is the base's
    # one segmentation in several formats (as segment-cine writes it): the volume file is read, not an error
    write_dicom_seg(truth, folder, tmp_path / "pred" / "case01.dcm", series_uid=uid)
    again = evaluate_folders(tmp_path / "pred", tmp_path / "truth_nifti")
    assert repr(again.regional) == repr(regional["truth_nifti"])


def test_evaluate_against_another_tool_s_one_slice_seg_truth(two_series, tmp_path):
    from cardiac_ai.evaluation import evaluate_folders
    from cardiac_ai.io import write_volume

    folder, series = two_series
    uid = series["oblique"][0]
    image = read_dicom_series(folder, series_uid=uid)
    labels = np.where(np.arange(5)[:, None, None] == 2, _blocks(image).array, 0).astype(np.uint8)
    (tmp_path / "pred").mkdir()
    (tmp_path / "truth").mkdir()
    write_volume(image.with_array(labels), tmp_path / "pred" / "case01.nii.gz")
    masks = {"RV": labels == 1, "Myo": labels == 2, "LV": labels == 3}
    _foreign_seg(folder, uid, masks, tmp_path / "truth" / "case01_gt.dcm", slices=(2,))  # a 1 mm "spacing"
    result = evaluate_folders(tmp_path / "pred", tmp_path / "truth", regional_analysis=False)
    assert [row["dice"] for row in result.rows] == [1.0, 1.0, 1.0]


# -- what scanners and PACS send (session 22 audit) ----------------------------------------------------------------
def _rewrite(folder: Path, change) -> None:
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path, enforce_file_format=True)


def _oblique_series_in(folder: Path, **options) -> tuple[str, np.ndarray]:
    """:func:`_write_series` of an oblique series into a new ``folder``."""
    folder.mkdir()
    row, column = _oblique_cosines()
    return _write_series(folder, row=row, column=column, **options)


def test_a_monochrome1_series_is_read_with_bright_and_dark_the_right_way_round(tmp_path):
    folder = tmp_path / "mono1"
    _oblique_series_in(folder, origin=(0.0, 0.0, 0.0), seed=3)
    plain = read_dicom_series(folder).array
    _rewrite(folder, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    inverted = read_dicom_series(folder).array
    np.testing.assert_allclose(inverted, plain.max() + plain.min() - plain)
    assert np.corrcoef(inverted.ravel(), plain.ravel())[0, 1] < -0.99
    _rewrite(folder, lambda ds: setattr(ds, "PhotometricInterpretation",
                                        "MONOCHROME2" if ds.InstanceNumber == 1 else "MONOCHROME1"))
    with pytest.raises(InputError, match="mixes MONOCHROME1 and MONOCHROME2"):
        read_dicom_series(folder)


def test_a_jpeg_lossless_series_is_decoded_with_its_rescaling(tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "jpeg"
    _oblique_series_in(folder, origin=(5.0, 1.0, -3.0), seed=4, slope=2.0, intercept=-100.0)
    plain = read_dicom_series(folder)
    scratch = tmp_path / "scratch.dcm"

    def compress(ds):
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("GDCMImageIO")
        writer.SetFileName(str(scratch))
        writer.SetUseCompression(True)
        writer.SetCompressor("JPEG")  # GDCM's JPEG is lossless process 14
        writer.Execute(sitk.GetImageFromArray(ds.pixel_array.astype(np.uint16)))
        compressed = pydicom.dcmread(scratch)
        ds.file_meta.TransferSyntaxUID = compressed.file_meta.TransferSyntaxUID
        ds.PixelData = compressed.PixelData
        ds["PixelData"].VR = "OB"

    _rewrite(folder, compress)
    first = pydicom.dcmread(next(folder.iterdir()))
    assert first.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    try:
        first.pixel_array
        pytest.skip("pydicom decodes JPEG Lossless here (a decoder plug-in is installed): no fallback to test")
    except Exception:  # noqa: BLE001 - the situation the fallback is for
        pass
    volume = read_dicom_series(folder)
    np.testing.assert_array_equal(volume.array, plain.array)
    assert volume.geometry.is_close(plain.geometry)
    # compressed MONOCHROME1 (SimpleITK's reader shows it as MONOCHROME2 itself): inverted once, not twice
    _rewrite(folder, lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME1"))
    inverted = read_dicom_series(folder).array
    assert np.corrcoef(inverted.ravel(), plain.array.ravel())[0, 1] < -0.99


def test_rounded_headers_give_the_grid_itk_and_highdicom_give(tmp_path):
    import SimpleITK as sitk

    folder = tmp_path / "rounded"
    folder.mkdir()
    row = np.array([0.8, 0.6, 0.0])
    column = np.array([-0.36, 0.48, 0.8])
    normal = np.cross(row, column)
    positions = [np.round(np.array([10.0, -20.0, 30.0]) + k * 10.0 * normal, 1) for k in range(9)]
    _write_series(folder, row=np.round(row + [3e-4, 0, 0], 3), column=np.round(column, 3), origin=None,
                  positions=positions, seed=5)
    volume = read_dicom_series(folder)
    assert volume.geometry.spacing_kji_mm[0] == pytest.approx(10.0, abs=0.02)  # not the median gap, 9.96
    direction = np.asarray(volume.geometry.direction_matrix)
    np.testing.assert_allclose(direction.T @ direction, np.eye(3), atol=1e-12)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    itk = reader.Execute()
    np.testing.assert_allclose(volume.geometry.spacing_mm, itk.GetSpacing(), atol=2e-3)
    np.testing.assert_allclose(np.asarray(volume.geometry.direction_lps), itk.GetDirection(), atol=1e-4)


def test_a_multi_frame_file_in_a_folder_is_named_as_such_and_resource_forks_are_skipped(tmp_path, two_series):
    folder, series = two_series
    source = next(p for p in folder.iterdir() if p.name.startswith("b"))
    (folder / "._b001").write_bytes(b"\0\5\26\7" + b"\0" * 80)  # macOS resource fork beside a file on a USB disk
    assert read_dicom_series(folder, series_uid=series["oblique"][0]).array.shape[0] == 5
    multi = tmp_path / "multi"
    multi.mkdir()
    ds = pydicom.dcmread(source)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    del ds.ImagePositionPatient  # as in an Enhanced MR file: positions are per frame, in functional groups
    ds.save_as(multi / "enhanced.dcm", enforce_file_format=True)
    with pytest.raises(InputError, match="multi-frame DICOM file .*Give the file itself"):
        read_dicom_series(multi)


def test_a_dicomdir_given_as_the_input_reads_the_series_of_its_folder(tmp_path):
    folder = tmp_path / "cd"
    _oblique_series_in(folder, origin=(1.0, 2.0, 3.0), seed=6)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory: the index of a CD
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    index = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    index.DirectoryRecordSequence = []
    index.save_as(folder / "DICOMDIR", enforce_file_format=True)
    np.testing.assert_array_equal(read_volume(folder / "DICOMDIR").array, read_volume(folder).array)


def _cine_series(folder: Path, *, phases: int = 3, positions: int = 4) -> tuple[str, np.ndarray]:
    """Every phase of every slice position in one series (as GE and older Philips scanners export cine), written in
    shuffled order; returns the uid and the stored pixels (phase, k, j, i)."""
    rng = np.random.default_rng(7)
    uid = generate_uid()
    row, column = _oblique_cosines()
    normal = np.cross(row, column)
    stored = rng.integers(0, 1000, (phases, positions, ROWS, COLUMNS)).astype(np.uint16)
    jobs = [(t, k) for t in range(phases) for k in range(positions)]
    for number, index in enumerate(rng.permutation(len(jobs))):
        t, k = jobs[index]
        ds = _slice_dataset(series_uid=uid, description="cine retro", row=row, column=column,
                            position=np.array([4.0, -3.0, 20.0]) + k * SLICE_GAP * normal, pixels=stored[t, k],
                            instance=number + 1)
        ds.TriggerTime = 45.5 * t
        ds.save_as(folder / f"IM{number:04d}", enforce_file_format=True)
    return uid, stored


def test_a_cine_series_of_every_phase_is_read_one_phase_at_a_time(tmp_path):
    from cardiac_ai.io.dicom_seg import read_dicom_seg, write_dicom_seg

    folder = tmp_path / "cine"
    folder.mkdir()
    uid, stored = _cine_series(folder)
    with pytest.raises(InputError, match=r"cine series: 4 slice positions with 3 phases each.*\(0 to 2.*--frame N in "
                                         r"segment-cine.*convert DIR --frame N"):
        read_dicom_series(folder)
    for phase in range(3):
        np.testing.assert_array_equal(read_volume(folder, frame=phase).array, stored[phase].astype(np.float32))
    with pytest.raises(InputError, match="outside the 3 phases"):
        read_dicom_series(folder, frame=3)
    labels = read_volume(folder, frame=2)
    labels = labels.with_array(np.zeros(labels.array.shape, np.uint8))
    labels.array[1:3, 2:4, 2:5] = 3
    seg = write_dicom_seg(labels, folder.parent / "cine", tmp_path / "seg.dcm", frame=2)
    phase_two = {str(pydicom.dcmread(p).SOPInstanceUID) for p in folder.iterdir()
                 if float(pydicom.dcmread(p).TriggerTime) == 91.0}
    referenced = {str(item.ReferencedSOPInstanceUID) for item in pydicom.dcmread(seg).ReferencedSeriesSequence[0]
                  .ReferencedInstanceSequence}
    assert referenced <= phase_two and len(referenced) == 4
    assert read_dicom_seg(seg).labels.array.sum() == labels.array.sum()


def test_frame_is_refused_for_a_plain_series_and_second_copies_of_an_image_are_skipped(tmp_path, two_series):
    folder, series = two_series
    with pytest.raises(InputError, match="holds one image per slice position"):
        read_dicom_series(folder, series_uid=series["axial"][0], frame=0)
    copy = next(p for p in folder.iterdir() if p.name.startswith("a"))
    (folder / "copy_of_a").write_bytes(copy.read_bytes())  # the same image twice in an export
    np.testing.assert_array_equal(read_dicom_series(folder, series_uid=series["axial"][0]).array,
                                  series["axial"][1].astype(np.float32))


def test_convert_writes_a_dicom_seg_as_a_label_map_on_its_frames_lattice(two_series, tmp_path, capsys):
    from cardiac_ai.cli import main
    from cardiac_ai.geometry import pad_to_reference_grid
    from cardiac_ai.io.dicom_seg import write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    image = read_dicom_series(folder, series_uid=uid)
    labels = _blocks(image)
    seg = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", series_uid=uid)
    assert main(["convert", str(seg), "--out", str(tmp_path / "labels.nii.gz")]) == 0, capsys.readouterr().err
    converted = read_volume(tmp_path / "labels.nii.gz")
    assert set(np.unique(converted.array)) <= {0, 1, 2, 3}  # codes, not one 0/255 mask per segment and frame
    np.testing.assert_array_equal(pad_to_reference_grid(converted, image).array, labels.array)


def test_files_skipped_in_a_series_folder_are_reported_once_for_the_read_and_its_seg(two_series, tmp_path, caplog):
    from cardiac_ai.io.dicom_seg import write_dicom_seg

    folder, series = two_series
    uid = series["oblique"][0]
    with caplog.at_level(logging.INFO, logger="cardiac_ai.io.dicom"):
        image = read_dicom_series(folder, series_uid=uid)
        write_dicom_seg(_blocks(image), folder, tmp_path / "seg.dcm", series_uid=uid)
    skipped = [r for r in caplog.records if "Skipping" in r.getMessage() and r.levelno >= logging.INFO]
    assert len(skipped) == 1 and "README.txt" in skipped[0].getMessage()


def test_a_seg_grid_off_by_header_rounding_only_is_put_on_its_images_lattice():
    from cardiac_ai.geometry import Geometry
    from cardiac_ai.io.dicom_seg import _onto_reference_lattice, _same_grid_to_header_precision

    row, column = _oblique_cosines()
    reference = Geometry((1.5625, 1.5625, 10.0), (-120.0, -95.0, 60.0), tuple(
        np.column_stack([row, column, np.cross(row, column)]).ravel()))
    rounded = np.asarray(reference.direction_lps) + np.array([4e-4, -3e-4, 0, 2e-4, 0, -4e-4, 0, 3e-4, 1e-4])
    slice_one = reference.index_to_lps(np.array([[1.0, 0.03, -0.02]]))[0]  # k = 1, a few hundredths off in-plane
    seg = Geometry((1.5626, 1.5630, 10.0037), tuple(slice_one), tuple(rounded))
    assert _same_grid_to_header_precision(seg, reference)
    snapped = _onto_reference_lattice(seg, reference)
    assert reference.lattice_offset_kji(snapped, (3, 6, 8)) == (1, 0, 0)
    assert reference.lattice_offset_kji(seg, (3, 6, 8)) is None  # as highdicom's grid came, before
    half = Geometry(seg.spacing_mm, tuple(reference.index_to_lps(np.array([[1.0, 0.5, 0.0]]))[0]), seg.direction_lps)
    assert reference.lattice_offset_kji(_onto_reference_lattice(half, reference), (3, 6, 8)) is None  # not hidden
    assert not _same_grid_to_header_precision(Geometry((1.6, 1.5625, 10.0), seg.origin_lps_mm, seg.direction_lps),
                                              reference)
