"""ACDC reader: Info.cfg parsing, fast listing, lazy loading with the pixdim spacing, clear errors on broken copies."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from cardiac_ai.datasets import Case, CaseRef, list_acdc, load_case, parse_info_cfg
from cardiac_ai.errors import DataError, InputError
from cardiac_ai.geometry import Volume
from cardiac_ai.io import write_volume
from cardiac_ai.phantom import make_cine_phantom

INFO = "ED: 1\nES: 5\nGroup: HCM\nHeight: 170.0\nNbFrame: 20\nWeight: 70.0\n"


def _write_patient(root: Path, name: str = "patient001", info: str = INFO, *, labels_spacing=None, label_value=None):
    """A small ACDC-like patient built from the phantom (frames 1 and 5)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text(info)
    for frame, phase in ((1, "ED"), (5, "ES")):
        case = make_cine_phantom(phase=phase, shape=(64, 64), spacing_mm=(2.0, 2.0, 10.0), n_slices=5, seed=1)
        image = case.image.with_array((case.image.array * 1000).astype(np.int16))
        labels = case.labels
        if label_value is not None:
            array = labels.array.copy()
            array[0, 0, 0] = label_value
            labels = labels.with_array(array)
        if labels_spacing is not None:
            labels = Volume(labels.array, labels.geometry.with_spacing(labels_spacing))
        write_volume(image, folder / f"{name}_frame{frame:02d}.nii.gz")
        write_volume(labels, folder / f"{name}_frame{frame:02d}_gt.nii.gz")
    return folder


# -- Info.cfg ---------------------------------------------------------------------------------------------------


def test_parse_info_cfg_reads_every_key(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_text("ED: 4\nES: 11\nGroup: RV\nHeight: 150\nNbFrame: 12\nWeight: 66.0\n")
    info = parse_info_cfg(path)
    assert (info.ed_frame, info.es_frame, info.group, info.n_frames) == (4, 11, "RV", 12)
    assert (info.height_cm, info.weight_kg) == (150.0, 66.0)


def test_parse_info_cfg_without_group_names_file_and_key(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_text(INFO.replace("Group: HCM\n", ""))
    with pytest.raises(DataError, match=r"Info\.cfg lacks Group"):
        parse_info_cfg(path)


def test_parse_info_cfg_unknown_group_names_line(tmp_path):
    path = tmp_path / "Info.cfg"
    path.write_text(INFO.replace("HCM", "XYZ"))
    with pytest.raises(DataError, match=r"line 3: unknown Group 'XYZ'.*NOR, MINF, DCM, HCM, RV"):
        parse_info_cfg(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (INFO.replace("ED: 1", "ED: one"), r"line 1: ED must be a number, found 'one'"),
        (INFO.replace("ED: 1", "ED 1"), r"line 1: expected 'Key: value'"),
        (INFO + "ES: 6\n", r"line 7: key 'ES' repeats"),
        (INFO.replace("ES: 5", "ES: 25"), r"ES frame 25 is outside 1..NbFrame \(20\)"),
    ],
)
def test_parse_info_cfg_malformed_lines_are_refused(tmp_path, text, message):
    path = tmp_path / "Info.cfg"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        parse_info_cfg(path)


def test_parse_info_cfg_missing_file(tmp_path):
    with pytest.raises(DataError, match="Info.cfg not found"):
        parse_info_cfg(tmp_path / "Info.cfg")


# -- listing and loading on a small copy -----------------------------------------------------------------------


def test_list_acdc_lists_ed_and_es_with_group_and_frames(tmp_path):
    _write_patient(tmp_path, "patient001")
    _write_patient(tmp_path, "patient002", INFO.replace("HCM", "NOR"))
    (tmp_path / "MANDATORY_CITATION.md").write_text("cite")
    refs = list_acdc(tmp_path)
    assert [r.case_id for r in refs] == ["patient001_ED", "patient001_ES", "patient002_ED", "patient002_ES"]
    assert refs[1].metadata["frame"] == 5 and refs[1].metadata["phase"] == "ES"
    assert refs[2].image_labels == {"group": "NOR"}
    assert refs[1].image_paths[0].name == "patient001_frame05.nii.gz"
    assert refs[1].label_paths[0].name == "patient001_frame05_gt.nii.gz"


def test_load_case_reads_float_image_and_uint8_labels_on_the_same_geometry(tmp_path):
    _write_patient(tmp_path)
    case = load_case(list_acdc(tmp_path)[0])
    assert isinstance(case, Case)
    assert case.image.array.dtype == np.float32 and case.labels.array.dtype == np.uint8
    assert case.image.geometry.spacing_mm == (2.0, 2.0, 10.0)
    assert case.labels.geometry.is_close(case.image.geometry)
    assert set(np.unique(case.labels.array)) == {0, 1, 2, 3}


def test_label_map_with_other_spacing_names_both_files(tmp_path):
    _write_patient(tmp_path, labels_spacing=(2.0, 2.0, 5.0))
    ref = list_acdc(tmp_path)[0]
    with pytest.raises(DataError, match=r"patient001_frame01_gt\.nii\.gz.*patient001_frame01\.nii\.gz.*spacing"):
        load_case(ref)


def test_label_value_outside_acdc_codes_names_the_file(tmp_path):
    _write_patient(tmp_path, label_value=7)
    with pytest.raises(DataError, match=r"patient001_frame01_gt\.nii\.gz holds label values \[7\]"):
        load_case(list_acdc(tmp_path)[0])


def test_missing_frame_file_is_named(tmp_path):
    folder = _write_patient(tmp_path)
    (folder / "patient001_frame05.nii.gz").unlink()
    with pytest.raises(DataError, match=r"ES frame 5 .* no image .*patient001_frame05\.nii\.gz"):
        list_acdc(tmp_path)


def test_missing_label_file_is_refused_unless_allowed(tmp_path):
    folder = _write_patient(tmp_path)
    (folder / "patient001_frame05_gt.nii.gz").unlink()
    with pytest.raises(DataError, match="require_labels=False"):
        list_acdc(tmp_path)
    refs = list_acdc(tmp_path, require_labels=False)
    assert refs[0].has_labels and not refs[1].has_labels
    assert load_case(refs[1]).labels is None


def test_list_acdc_on_parent_folder_suggests_training(tmp_path):
    _write_patient(tmp_path / "training")
    with pytest.raises(DataError, match=r"No patientNNN folders.*Did you mean .*training"):
        list_acdc(tmp_path)


def test_list_acdc_refuses_unknown_phase(tmp_path):
    with pytest.raises(InputError, match="phases"):
        list_acdc(tmp_path, phases=("MID",))


# -- the real data set ----------------------------------------------------------------------------------------


@pytest.mark.shared_data
def test_patient001_info_is_ed1_es12_dcm(acdc_root):
    info = parse_info_cfg(acdc_root / "patient001" / "Info.cfg")
    assert (info.ed_frame, info.es_frame, info.group) == (1, 12, "DCM")
    assert (info.height_cm, info.weight_kg, info.n_frames) == (184.0, 95.0, 30)


@pytest.mark.shared_data
def test_list_acdc_finds_100_patients_in_two_phases_without_reading_volumes(acdc_root, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("list_acdc must not read volumes")

    monkeypatch.setattr(sitk, "ReadImage", refuse)
    refs = list_acdc(acdc_root)
    assert len(refs) == 200 and all(isinstance(r, CaseRef) for r in refs)
    assert len({r.patient_id for r in refs}) == 100
    assert Counter(r.metadata["phase"] for r in refs) == {"ED": 100, "ES": 100}
    assert Counter(r.image_labels["group"] for r in refs if r.metadata["phase"] == "ED") == {
        "NOR": 20, "MINF": 20, "DCM": 20, "HCM": 20, "RV": 20,
    }


@pytest.mark.shared_data
def test_patient001_volumes_keep_pixdim_spacing_and_label_geometry(acdc_root):
    refs = [r for r in list_acdc(acdc_root) if r.patient_id == "patient001"]
    for ref in refs:
        case = load_case(ref)
        assert case.image.geometry.spacing_mm == pytest.approx((1.5625, 1.5625, 10.0))
        assert case.labels.geometry.is_close(case.image.geometry)
        assert case.labels.array.shape == case.image.array.shape == (10, 256, 216)
        assert set(np.unique(case.labels.array)) == {0, 1, 2, 3}
        assert case.image_labels == {"group": "DCM"}
        assert case.metadata["slice_order"] == "base_to_apex"
