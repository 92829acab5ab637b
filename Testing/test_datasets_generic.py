"""Your-own-data reader: images/, labels/ and labels.csv become cases; every layout mistake gets a clear error."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cardiac_ai.datasets import Case, list_generic, load_case
from cardiac_ai.errors import DataError, InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.io import write_volume
from cardiac_ai.phantom import make_cine_phantom

PHANTOM = dict(shape=(48, 48), spacing_mm=(3.0, 3.0, 10.0), n_slices=5)


def _layout(root: Path, *, csv: str | None = None, with_labels=("case01", "case02")) -> Path:
    """images/case01.nii.gz, images/case02.nrrd, images/case03.mha, label maps for ``with_labels``."""
    for index, (case_id, suffix) in enumerate((("case01", ".nii.gz"), ("case02", ".nrrd"), ("case03", ".mha"))):
        case = make_cine_phantom(seed=index, **PHANTOM)
        write_volume(case.image, root / "images" / f"{case_id}{suffix}")
        if case_id in with_labels:
            write_volume(case.labels, root / "labels" / f"{case_id}.nii.gz")
    if csv is not None:
        (root / "labels.csv").write_text(csv)
    return root


def test_generic_layout_round_trips_phantom_cases(tmp_path):
    _layout(tmp_path)
    refs = list_generic(tmp_path)
    assert [r.case_id for r in refs] == ["case01", "case02", "case03"]
    assert [r.has_labels for r in refs] == [True, True, False]
    for index, ref in enumerate(refs):
        expected = make_cine_phantom(seed=index, **PHANTOM)
        case = load_case(ref)
        assert case.image.array.dtype == np.float32
        np.testing.assert_allclose(case.image.array, expected.image.array)
        assert case.image.geometry.is_close(expected.image.geometry)
        if ref.has_labels:
            assert case.labels.array.dtype == np.uint8
            np.testing.assert_array_equal(case.labels.array, expected.labels.array)
        else:
            assert case.labels is None


def test_labels_csv_gives_case_and_slice_labels_and_patients(tmp_path):
    csv = "case_id,patient_id,slice,diagnosis,fibrosis,lvef\ncase01,p1,,DCM,,31.5\ncase01,p1,2,,1,\ncase02,p1,,NOR,0,\n"
    _layout(tmp_path, csv=csv)
    refs = {r.case_id: r for r in list_generic(tmp_path)}
    assert refs["case01"].image_labels == {"diagnosis": "DCM", "lvef": 31.5}
    assert refs["case01"].metadata["slice_labels"] == {2: {"fibrosis": 1}}
    assert refs["case02"].image_labels == {"diagnosis": "NOR", "fibrosis": 0}
    assert refs["case03"].image_labels == {}
    assert refs["case01"].patient_id == refs["case02"].patient_id == "p1"
    assert refs["case03"].patient_id == "case03"
    case = load_case(refs["case01"])
    assert case.image_labels["diagnosis"] == "DCM" and case.metadata["slice_labels"][2] == {"fibrosis": 1}


def test_label_map_without_image_is_refused(tmp_path):
    _layout(tmp_path)
    write_volume(make_cine_phantom(**PHANTOM).labels, tmp_path / "labels" / "case09.nii.gz")
    with pytest.raises(DataError, match=r"Label maps without an image: \['case09\.nii\.gz'\]"):
        list_generic(tmp_path)


def test_label_map_with_other_geometry_names_both_files(tmp_path):
    _layout(tmp_path)
    labels = make_cine_phantom(**PHANTOM).labels
    moved = Volume(labels.array, labels.geometry.with_spacing((2.0, 3.0, 10.0)))
    write_volume(moved, tmp_path / "labels" / "case01.nii.gz")
    with pytest.raises(DataError, match=r"labels/case01\.nii\.gz does not lie on image .*images/case01\.nii\.gz"):
        load_case(list_generic(tmp_path)[0])


def test_label_map_with_other_shape_is_refused(tmp_path):
    _layout(tmp_path)
    labels = make_cine_phantom(**PHANTOM).labels
    write_volume(labels.with_array(labels.array[:3]), tmp_path / "labels" / "case01.nii.gz")
    with pytest.raises(DataError, match=r"shape \(3, 48, 48\) .* but image .* has \(5, 48, 48\)"):
        load_case(list_generic(tmp_path)[0])


def test_label_values_outside_the_table_name_the_file(tmp_path):
    _layout(tmp_path)
    labels = make_cine_phantom(**PHANTOM).labels
    array = labels.array.copy()
    array[2, 10, 10] = 7
    write_volume(labels.with_array(array), tmp_path / "labels" / "case01.nii.gz")
    with pytest.raises(DataError, match=r"labels/case01\.nii\.gz holds label values \[7\]"):
        load_case(list_generic(tmp_path)[0])


def test_csv_row_for_unknown_case_names_line(tmp_path):
    _layout(tmp_path, csv="case_id,diagnosis\ncase01,NOR\ncase07,DCM\n")
    with pytest.raises(DataError, match=r"labels\.csv, line 3: case 'case07' has no image"):
        list_generic(tmp_path)


def test_csv_without_case_id_column_is_refused(tmp_path):
    _layout(tmp_path, csv="id,diagnosis\ncase01,NOR\n")
    with pytest.raises(DataError, match=r"no 'case_id' column \(columns found: \['id', 'diagnosis'\]\)"):
        list_generic(tmp_path)


@pytest.mark.parametrize(
    ("csv", "message"),
    [
        ("case_id,diagnosis\ncase01,NOR\ncase01,DCM\n", r"line 3: case 'case01' has a second whole-case row"),
        ("case_id,slice,fibrosis\ncase01,two,1\n", r"line 2: slice must be a 0-based slice index, found 'two'"),
        ("case_id,patient_id\ncase01,a\ncase01,b\n", r"line 3: case 'case01' has patient_id 'b' here but 'a'"),
    ],
)
def test_csv_mistakes_are_refused_with_the_line(tmp_path, csv, message):
    _layout(tmp_path, csv=csv)
    with pytest.raises(DataError, match=message):
        list_generic(tmp_path)


def test_slice_label_beyond_the_image_is_refused_on_load(tmp_path):
    _layout(tmp_path, csv="case_id,slice,fibrosis\ncase01,9,1\n")
    ref = list_generic(tmp_path)[0]
    with pytest.raises(DataError, match=r"slices \[9\] of case 'case01'.*has 5 slices"):
        load_case(ref)


def test_two_images_with_one_case_id_are_refused(tmp_path):
    _layout(tmp_path)
    write_volume(make_cine_phantom(**PHANTOM).image, tmp_path / "images" / "case01.nrrd")
    with pytest.raises(DataError, match=r"Two files .* give case id 'case01'"):
        list_generic(tmp_path)


def test_folder_without_images_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"has no images/ folder"):
        list_generic(tmp_path)


def test_case_refuses_labels_that_are_not_uint8():
    phantom = make_cine_phantom(**PHANTOM)
    with pytest.raises(InputError, match="labels must be uint8"):
        Case("c", "p", phantom.image, phantom.labels.with_array(phantom.labels.array.astype(np.int16)))


def test_a_slicer_segmentation_cropped_to_its_contents_is_a_label_map_on_its_image(tmp_path):
    from cardiac_ai.io import write_seg_nrrd

    phantom = make_cine_phantom(seed=4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    write_volume(phantom.image, tmp_path / "images" / "case01.nii.gz")
    box = phantom.labels.array[:, 20:80, 15:85]  # cropped as Slicer saves it: origin whole voxels away
    origin = phantom.labels.geometry.index_to_lps(np.array([0, 20, 15]))[0]
    import dataclasses

    cropped = Volume(np.ascontiguousarray(box),
                     dataclasses.replace(phantom.labels.geometry, origin_lps_mm=tuple(origin)))
    write_seg_nrrd(cropped, tmp_path / "labels" / "case01.seg.nrrd")
    (ref,) = list_generic(tmp_path)
    assert ref.case_id == "case01" and ref.has_labels
    case = load_case(ref)
    np.testing.assert_array_equal(case.labels.array, phantom.labels.array)
    assert case.labels.geometry.is_close(case.image.geometry)
