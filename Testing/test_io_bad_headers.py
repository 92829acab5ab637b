"""Broken or incomplete files are refused by the readers with the package's own errors, naming the file.

A truncated NIfTI that ITK half reads, a NIfTI voxel size of 0 that ITK reads as 1 mm, a 2D file that stores no
slice thickness, a corrupt file among a DICOM series' slices, a MOLLI frame without its inversion time.
"""
from __future__ import annotations

import json
import logging
import struct
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from test_io_dicom import _slice_dataset, _write_series

from cardiac_ai.cli import main
from cardiac_ai.errors import DataError, InputError
from cardiac_ai.io import list_dicom_series, read_dicom_series, read_volume
from cardiac_ai.io.volumes import slice_spacing_stored

AXIAL = {"row": np.array([1.0, 0.0, 0.0]), "column": np.array([0.0, 1.0, 0.0]), "origin": (-50.0, -40.0, 12.0)}


def _stack(shape=(6, 32, 32), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 900, shape).astype(np.int16)


# -- NIfTI that nibabel cannot read ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n_bytes", [200, 400])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_cut_inside_or_just_after_its_header_is_a_data_error_naming_the_file(tmp_path, suffix, n_bytes):
    """ITK opens the first 200 bytes of a .nii.gz (filling the rest); nibabel's error must not escape."""
    image = sitk.GetImageFromArray(_stack())
    image.SetSpacing((1.5, 1.5, 8.0))
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(image, str(whole))
    cut = tmp_path / f"t{suffix}"
    cut.write_bytes(whole.read_bytes()[:n_bytes])
    with pytest.raises(DataError, match=r"t\.nii(\.gz)? (cannot be read as NIfTI.*truncated or corrupt|is truncated)"):
        read_volume(cut)


def test_nifti_named_gz_but_not_compressed_is_refused_with_what_to_do(tmp_path):
    plain = tmp_path / "plain.nii"
    nib.save(nib.Nifti1Image(_stack(), np.diag([1.5, 1.5, 8.0, 1.0])), str(plain))
    misnamed = tmp_path / "misnamed.nii.gz"
    misnamed.write_bytes(plain.read_bytes())
    with pytest.raises(DataError, match="misnamed.nii.gz .*not gzip-compressed. Rename it to .nii"):
        read_volume(misnamed)


def test_random_bytes_named_nii_are_unreadable_not_a_bad_voxel_size(tmp_path):
    path = tmp_path / "noise.nii"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"noise\.nii cannot be read as NIfTI: no NIfTI header"):
        read_volume(path)


def test_nifti_with_a_header_extension_and_a_big_endian_one_still_read(tmp_path):
    image = nib.Nifti1Image(_stack((8, 8, 3)), np.diag([2.0, 2.0, 5.0, 1.0]))
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"x" * 700))
    nib.save(image, str(tmp_path / "ext.nii.gz"))
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    nib.save(nib.Nifti1Image(_stack((8, 8, 3)), np.diag([2.0, 2.0, 5.0, 1.0]), header=header), str(tmp_path / "be.nii"))
    for name in ("ext.nii.gz", "be.nii"):
        assert read_volume(tmp_path / name).geometry.spacing_mm == pytest.approx((2.0, 2.0, 5.0))


def test_cli_truncated_nifti_is_a_one_line_error_not_an_unexpected_one(tmp_path, capsys):
    whole = tmp_path / "whole.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_stack()), str(whole))
    cut = tmp_path / "t.nii.gz"
    cut.write_bytes(whole.read_bytes()[:200])
    assert main(["segment-cine", str(cut), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cannot be read as NIfTI" in err and "t.nii.gz" in err
    assert "unexpected error" not in err and not (tmp_path / "o").exists()


# -- NIfTI voxel sizes ITK would mend -------------------------------------------------------------------------------
def _nifti_with_pixdim(path: Path, axis: int, value: float, *, qform_code: int, sform_code: int) -> Path:
    """A .nii whose stored pixdim[axis] is ``value``, patched into the bytes nibabel wrote (float32 at 76 + 4 axis)."""
    image = nib.Nifti1Image(_stack((32, 32, 6)), np.diag([1.5, 1.5, 8.0, 1.0]))
    image.header.set_qform(image.affine, code=qform_code)
    image.header.set_sform(image.affine, code=sform_code)
    nib.save(image, str(path))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 76 + 4 * axis, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("codes", [(1, 1), (0, 0)], ids=["qform-sform", "no-qform-sform"])
@pytest.mark.parametrize("value", [0.0, -2.0, float("nan")])
@pytest.mark.parametrize("axis", [1, 2, 3])
def test_nifti_zero_negative_or_nan_pixdim_is_refused_naming_the_file_and_axis(tmp_path, axis, value, codes):
    path = _nifti_with_pixdim(tmp_path / "bad.nii", axis, value, qform_code=codes[0], sform_code=codes[1])
    with pytest.raises(InputError, match=rf"bad\.nii has pixdim\[{axis}\] = {value:g} .*positive size in mm"):
        read_volume(path)


def test_nifti_pixdim_check_leaves_good_files_and_the_unused_axes_of_a_2d_file_alone(tmp_path):
    good = _nifti_with_pixdim(tmp_path / "good.nii", 3, 8.0, qform_code=1, sform_code=1)
    assert read_volume(good).geometry.spacing_mm == pytest.approx((1.5, 1.5, 8.0))
    flat = nib.Nifti1Image(_stack((32, 24)), np.diag([1.5, 1.25, 1.0, 1.0]))
    flat.header["pixdim"][3:] = 0.0  # beyond dim[0] = 2: unused
    nib.save(flat, str(tmp_path / "flat.nii"))
    assert read_volume(tmp_path / "flat.nii").geometry.spacing_mm[:2] == pytest.approx((1.5, 1.25))


def test_metaimage_with_zero_spacing_is_refused_as_the_nifti_is(tmp_path):
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(_stack()), str(path))
    path.write_bytes(path.read_bytes().replace(b"ElementSpacing = 1 1 1", b"ElementSpacing = 1 1 0"))
    with pytest.raises(InputError, match="flat.mha has zero or invalid voxel spacing"):
        read_volume(path)


# -- 2D files: no slice thickness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", ".nrrd"])
def test_2d_file_warns_that_its_1_mm_slice_thickness_is_assumed(tmp_path, suffix, caplog):
    image = sitk.GetImageFromArray(_stack((32, 40)))
    image.SetSpacing((1.4, 1.4))
    path = tmp_path / f"slice{suffix}"
    sitk.WriteImage(image, str(path))
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.volumes"):
        volume = read_volume(path)
    assert volume.array.shape == (1, 32, 40)
    assert volume.geometry.spacing_mm == pytest.approx((1.4, 1.4, 1.0))  # the stand-in, as before
    assert f"slice{suffix} is a 2D image: it stores no slice thickness" in caplog.text
    assert not slice_spacing_stored(path)


def test_one_slice_3d_file_keeps_its_thickness_without_a_warning(tmp_path, caplog):
    image = sitk.GetImageFromArray(_stack((1, 32, 40)))
    image.SetSpacing((1.4, 1.4, 10.0))
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(image, str(path))
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.volumes"):
        assert read_volume(path).geometry.spacing_mm[2] == pytest.approx(10.0)
    assert "2D image" not in caplog.text
    assert slice_spacing_stored(path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "slice.png")
    assert not slice_spacing_stored(tmp_path / "slice.png")
    with pytest.raises(DataError, match="not found"):
        slice_spacing_stored(tmp_path / "absent.nii.gz")


# -- DICOM folders with files that cannot be read --------------------------------------------------------------------
def _series(folder: Path, n_slices: int = 6) -> list[Path]:
    """A series written into ``folder``; its files in slice order (along the normal)."""
    folder.mkdir()
    _write_series(folder, n_slices=n_slices, **AXIAL)
    return sorted(folder.iterdir(), key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))


def _corrupt_from(path: Path, offset: int = 300, seed: int = 0) -> None:
    data = bytearray(path.read_bytes())
    data[offset:] = np.random.default_rng(seed).integers(0, 256, len(data) - offset, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


@pytest.mark.filterwarnings("ignore:Expected explicit VR")  # pydicom reading the garbage
@pytest.mark.parametrize("which", [0, -1], ids=["first", "last"])
def test_corrupt_first_or_last_slice_fails_the_read_naming_the_file(tmp_path, which):
    """Without it the series reads as one slice shorter, which no gap check can notice."""
    files = _series(tmp_path / "dicom")
    _corrupt_from(files[which])
    for read in (read_dicom_series, list_dicom_series, read_volume):
        with pytest.raises(DataError, match=rf"cannot be read: {files[which]} \(.*truncated or corrupt.*remove"):
            read(tmp_path / "dicom")


def test_unreadable_files_are_named_up_to_three_and_counted(tmp_path):
    files = _series(tmp_path / "dicom")
    for seed, path in enumerate(files[:4]):
        _corrupt_from(path, offset=140, seed=seed)  # inside the file meta: pydicom raises or reads garbage
    (tmp_path / "dicom" / "IM000099").write_bytes(b"")  # an interrupted copy
    with pytest.raises(DataError, match=r"5 file\(s\) that look like DICOM cannot be read: .*; and 2 more\.") as caught:
        read_dicom_series(tmp_path / "dicom")
    assert sum(str(p) in str(caught.value) for p in [*files[:4], tmp_path / "dicom" / "IM000099"]) == 3


def test_text_hidden_and_other_files_are_skipped_with_a_warning(tmp_path, caplog):
    _series(tmp_path / "dicom")
    (tmp_path / "dicom" / "README").write_text("Exported by the scanner.\n")
    (tmp_path / "dicom" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1" + bytes(200))
    (tmp_path / "dicom" / "notes.txt").write_bytes(bytes(50))
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.dicom"):
        assert read_dicom_series(tmp_path / "dicom").array.shape[0] == 6
    for name in ("README", ".DS_Store", "notes.txt"):
        assert f"{name}: not a DICOM file (no 'DICM' marker at byte 128)" in caplog.text
    assert "SeriesInstanceUID" not in caplog.text


def test_a_dicomdir_is_skipped_as_what_it_is(tmp_path, caplog):
    _series(tmp_path / "dicom")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dicomdir = FileDataset("", {}, file_meta=meta, preamble=b"\0" * 128)
    dicomdir.FileSetID = "CARDIAC"
    dicomdir.DirectoryRecordSequence = []
    dicomdir.save_as(tmp_path / "dicom" / "DICOMDIR", enforce_file_format=True)
    with caplog.at_level(logging.INFO, logger="cardiac_ai.io.dicom"):
        assert read_dicom_series(tmp_path / "dicom").array.shape[0] == 6
    assert "DICOMDIR: a DICOMDIR (the index of a DICOM medium), not an image" in caplog.text


def test_a_non_image_object_is_skipped_but_an_image_without_rows_is_refused(tmp_path):
    files = _series(tmp_path / "dicom")
    raw = pydicom.dcmread(files[0])
    raw.SOPClassUID = raw.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66"  # Raw Data Storage
    raw.SOPInstanceUID = raw.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(raw, keyword)
    raw.save_as(tmp_path / "dicom" / "raw.dcm")
    assert read_dicom_series(tmp_path / "dicom").array.shape[0] == 6
    cut = pydicom.dcmread(files[-1])
    for keyword in ("Rows", "Columns", "PixelData"):
        delattr(cut, keyword)
    cut.save_as(files[-1])
    with pytest.raises(DataError, match=rf"{files[-1]} \(an image whose header has no Rows/Columns"):
        read_dicom_series(tmp_path / "dicom")


def test_a_folder_of_only_unreadable_files_names_them(tmp_path):
    (tmp_path / "a.dcm").write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match=r"No readable DICOM image .*cannot be read: .*a\.dcm \(not a DICOM file"):
        read_dicom_series(tmp_path)


@pytest.mark.filterwarnings("ignore:Expected explicit VR")
def test_a_single_readable_slice_beside_a_corrupt_one_is_not_read_alone(tmp_path):
    ds = _slice_dataset(series_uid=generate_uid(), description="one", row=(1, 0, 0), column=(0, 1, 0),
                        position=(0, 0, 0), pixels=np.ones((6, 8), np.uint16), instance=1)
    ds.save_as(tmp_path / "IM1", enforce_file_format=True)
    ds.save_as(tmp_path / "IM2", enforce_file_format=True)
    _corrupt_from(tmp_path / "IM2")
    with pytest.raises(DataError, match="IM2"):
        read_dicom_series(tmp_path)


# -- fit-map: a frame without its inversion time is named by its file ------------------------------------------------
def test_fit_map_names_the_file_that_lacks_an_inversion_time(tmp_path, capsys):
    folder = tmp_path / "molli"
    folder.mkdir()
    uid = generate_uid()
    missing = None
    for k in range(2):
        for t, ti in enumerate((100.0, 180.0, 260.0, 1000.0)):
            ds = _slice_dataset(series_uid=uid, description="MOLLI", row=(1, 0, 0), column=(0, 1, 0),
                                position=(0, 0, 8.0 * k), pixels=np.full((6, 8), 100 + t, np.uint16),
                                instance=t + 1)
            path = folder / f"IM{k}{t}"
            if (k, t) == (1, 2):
                missing = path
            else:
                ds.InversionTime = ti
            ds.save_as(path, enforce_file_format=True)
    assert main(["fit-map", str(folder), "--kind", "molli", "--out", str(tmp_path / "fit"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"{missing} has no InversionTime (0018,0082)" in err
    assert "dataset 2" not in err


def test_an_exports_empty_lockfile_is_no_unreadable_image(tmp_path, caplog):
    """Scanner and CD exports put an empty LOCKFILE (and a VERSION file) beside the images."""
    _series(tmp_path / "dicom")
    (tmp_path / "dicom" / "LOCKFILE").write_bytes(b"")
    (tmp_path / "dicom" / "VERSION").write_bytes(b"\x00\x01")
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.dicom"):
        assert read_dicom_series(tmp_path / "dicom").array.shape[0] == 6
    assert "LOCKFILE" in caplog.text  # skipped, and said


def test_dicom_folder_states_its_slice_spacing_unless_one_slice_lacks_thickness(tmp_path):
    _series(tmp_path / "stack", n_slices=3)
    assert slice_spacing_stored(tmp_path / "stack")  # positions give the spacing
    for name, thickness in (("bare", None), ("thick", 6.0)):
        folder = tmp_path / name
        folder.mkdir()
        _slice_dataset(series_uid=generate_uid(), description="one", row=(1, 0, 0), column=(0, 1, 0),
                       position=(0, 0, 0), pixels=np.ones((6, 8), np.uint16), instance=1,
                       thickness=thickness).save_as(folder / "only", enforce_file_format=True)
    assert not slice_spacing_stored(tmp_path / "bare")
    assert slice_spacing_stored(tmp_path / "thick")
    _series(tmp_path / "two", n_slices=2)
    _write_series(tmp_path / "two", n_slices=2, seed=1, tag="t", **AXIAL)
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        slice_spacing_stored(tmp_path / "two")


# -- valid files whose encoding other readers take differently (the encodings audit, session 23) --------------------
def _ramp(shape=(4, 12, 10)) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)  # (k, j, i)


def test_a_complex_image_is_refused_except_by_a_format_conversion(tmp_path):
    from cardiac_ai.cli import main

    magnitude = _ramp() + 1
    complex_image = (magnitude * np.exp(1j * 0.3)).astype(np.complex64)
    nib.save(nib.Nifti1Image(complex_image.transpose(), np.diag([1.5, 1.5, 8.0, 1.0])), tmp_path / "c.nii.gz")
    with pytest.raises(InputError, match="complex values.*magnitude"):
        read_volume(tmp_path / "c.nii.gz")
    kept = read_volume(tmp_path / "c.nii.gz", allow_complex=True)
    assert np.iscomplexobj(kept.array) and np.allclose(np.abs(kept.array), magnitude, rtol=1e-5)
    assert main(["convert", str(tmp_path / "c.nii.gz"), "--out", str(tmp_path / "c.nrrd")]) == 0


def test_a_direction_matrix_holding_the_voxel_size_is_read_as_unit_axes_and_a_sheared_one_is_refused(tmp_path,
                                                                                                   caplog):
    image = sitk.GetImageFromArray(_ramp())
    image.SetSpacing((1.0, 1.0, 1.0))
    image.SetDirection((1.5625, 0, 0, 0, 1.5625, 0, 0, 0, 10.0))  # MetaImage TransformMatrix with the voxel size
    sitk.WriteImage(image, str(tmp_path / "scaled.mha"))
    with caplog.at_level(logging.WARNING):
        volume = read_volume(tmp_path / "scaled.mha")
    assert volume.geometry.spacing_mm == pytest.approx((1.5625, 1.5625, 10.0))
    np.testing.assert_allclose(volume.geometry.direction_matrix, np.eye(3))
    assert "axes of length" in caplog.text
    image.SetDirection((1.0, 0.3, 0, 0, 1.0, 0, 0, 0, 1.0))  # sheared
    sitk.WriteImage(image, str(tmp_path / "sheared.mha"))
    with pytest.raises(InputError, match="sheared"):
        read_volume(tmp_path / "sheared.mha")


def test_a_nifti_whose_qform_and_sform_disagree_is_read_as_itk_reads_it_with_a_warning_in_the_report(tmp_path):
    from cardiac_ai.io.report import write_report
    from cardiac_ai.pipeline import output_folder
    from cardiac_ai.provenance import Provenance

    header = nib.Nifti1Header()
    qform = np.diag([-1.5, -1.5, 8.0, 1.0])
    qform[:3, 3] = (10.0, 20.0, -30.0)
    sform = qform.copy()
    sform[:3, 3] += (7.0, -7.0, 0.0)
    image = nib.Nifti1Image(_ramp().transpose(), None, header)
    image.set_qform(qform, code=1)
    image.set_sform(sform, code=2)
    nib.save(image, tmp_path / "both.nii.gz")
    with output_folder(tmp_path / "out") as out:
        volume = read_volume(tmp_path / "both.nii.gz")
        write_report(out, provenance=Provenance(command="convert"), results={})
    assert volume.geometry.origin_lps_mm == pytest.approx((-10.0, -20.0, -30.0))  # the qform, as ITK and Slicer
    warnings = json.loads((tmp_path / "out" / "report.json").read_text())["provenance"]["warnings"]
    assert len(warnings) == 1 and "used the qform" in warnings[0] and "9.9 mm" in warnings[0]
    image.set_sform(qform, code=2)  # agreeing transforms: nothing to say
    nib.save(image, tmp_path / "agree.nii.gz")
    with output_folder(tmp_path / "out2") as out:
        read_volume(tmp_path / "agree.nii.gz")
        write_report(out, provenance=Provenance(command="convert"), results={})
    assert json.loads((tmp_path / "out2" / "report.json").read_text())["provenance"]["warnings"] == []


def test_a_2d_nifti_keeps_the_oblique_placement_its_header_states(tmp_path):
    angle = np.radians(30)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]]) \
        @ np.diag([1.25, 1.5, 6.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    pixels = _ramp((1, 12, 10))[0]
    nib.save(nib.Nifti1Image(pixels.transpose(), affine), tmp_path / "slice.nii.gz")
    volume = read_volume(tmp_path / "slice.nii.gz")
    assert volume.array.shape == (1, 12, 10)
    centre = np.array([5.0, 7.0, 0.0, 1.0])  # (i, j, k)
    expected_lps = (affine @ centre)[:3] * (-1, -1, 1)
    np.testing.assert_allclose(volume.geometry.index_to_lps(np.array([[0, 7, 5]]))[0], expected_lps, atol=1e-4)
    assert volume.geometry.spacing_mm == pytest.approx((1.25, 1.5, 1.0))  # a 2D image's stand-in thickness


def test_a_nifti_2_file_is_read_as_its_nifti_1_twin(tmp_path):
    acdc_like = nib.Nifti1Header()
    acdc_like.set_data_dtype(np.int16)
    affine = np.diag([-1.7, -1.7, 9.0, 1.0])
    affine[:3, 3] = (5.0, -3.0, 12.0)
    data = (_ramp() * 3).astype(np.int16).transpose()
    one = nib.Nifti1Image(data, affine, acdc_like)
    one.set_qform(affine, code=1)
    nib.save(one, tmp_path / "one.nii.gz")
    two = nib.Nifti2Image(data, affine, nib.Nifti2Header.from_header(one.header))
    nib.save(two, tmp_path / "two.nii.gz")
    first, second = read_volume(tmp_path / "one.nii.gz"), read_volume(tmp_path / "two.nii.gz")
    np.testing.assert_array_equal(second.array, first.array)
    assert second.geometry.is_close(first.geometry, atol_mm=1e-5)
    nib.save(nib.Nifti2Image(np.stack([data, data + 1], axis=-1), affine, two.header), tmp_path / "two4d.nii.gz")
    np.testing.assert_array_equal(read_volume(tmp_path / "two4d.nii.gz", frame=1).array, first.array + 1)


@pytest.mark.parametrize(("units", "factor"), [('"m" "m" "m"', 1000.0), ('"um" "um" "um"', 0.001),
                                               ('"mm" "mm" "mm"', 1.0)])
def test_nrrd_space_units_are_converted_to_millimetres(tmp_path, units, factor):
    header = {"type": "float", "dimension": 3, "space": "left-posterior-superior", "encoding": "raw",
              "space directions": np.diag([1.5, 1.5, 8.0]) / factor, "space origin": np.array([1.0, 2.0, 3.0]) / factor,
              "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "raw.nrrd"), _ramp().transpose(), header)
    text = (tmp_path / "raw.nrrd").read_bytes()
    head, _, body = text.partition(b"\n\n")
    (tmp_path / "units.nrrd").write_bytes(head + f"\nspace units: {units}".encode() + b"\n\n" + body)
    volume = read_volume(tmp_path / "units.nrrd")
    assert volume.geometry.spacing_mm == pytest.approx((1.5, 1.5, 8.0))
    assert volume.geometry.origin_lps_mm == pytest.approx((1.0, 2.0, 3.0))
    (tmp_path / "odd.nrrd").write_bytes(head + b'\nspace units: "parsec" "parsec" "parsec"\n\n' + body)
    with pytest.raises(InputError, match="space units"):
        read_volume(tmp_path / "odd.nrrd")


def test_a_negative_pixdim_is_refused_for_the_mirror_itk_would_make(tmp_path):
    image = nib.Nifti1Image(_ramp().transpose(), np.diag([1.5, 1.5, 8.0, 1.0]))
    image.header["pixdim"][1] = -1.5
    nib.save(image, tmp_path / "negative.nii")
    with pytest.raises(InputError, match="mirror that axis"):
        read_volume(tmp_path / "negative.nii")


@pytest.mark.parametrize(("qform_code", "sform_code"), [(0, 0), (1, 0), (0, 2), (1, 1), (1, 2), (2, 1), (2, 4)])
def test_nifti_2_and_2d_nifti_are_placed_as_itk_places_their_3d_nifti_1_twin(tmp_path, qform_code, sform_code):
    rotation = np.array([[0.6, -0.8, 0.0], [0.8, 0.6, 0.0], [0.0, 0.0, 1.0]])
    qform = np.eye(4)
    qform[:3, :3], qform[:3, 3] = rotation @ np.diag([1.5, 1.2, 8.0]), (10.0, -20.0, 30.0)
    sform = np.eye(4)
    sform[:3, :3], sform[:3, 3] = np.diag([1.5, 1.2, 8.0]), (5.0, 6.0, 7.0)

    def saved(image_class, data, name):
        image = image_class(data, None)
        image.header.set_zooms((1.5, 1.2, 8.0)[:data.ndim])
        image.set_qform(qform, code=qform_code)
        image.set_sform(sform, code=sform_code)
        nib.save(image, tmp_path / name)
        return tmp_path / name

    volume = _ramp((3, 5, 6)).transpose()  # (i, j, k) for nibabel
    twin = read_volume(saved(nib.Nifti1Image, volume, "one.nii.gz"))  # 3D NIfTI-1: read by ITK
    two = read_volume(saved(nib.Nifti2Image, volume, "two.nii.gz"))
    assert two.geometry.is_close(twin.geometry, atol_mm=1e-4)
    flat = read_volume(saved(nib.Nifti1Image, volume[:, :, 0], "flat.nii.gz"))  # 2D: its first slice's placement
    np.testing.assert_allclose(flat.geometry.index_to_lps(np.array([[0, 4, 5]])),
                               twin.geometry.index_to_lps(np.array([[0, 4, 5]])), atol=1e-4)
