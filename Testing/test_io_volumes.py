"""Volume and PNG reading/writing: geometry survives round trips, bad inputs give clear errors, writes are atomic."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from cardiac_ai.errors import DataError, InputError, OutputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import prepare_output_dir, read_png, read_volume, write_png, write_volume
from cardiac_ai.io.atomic import ensure_not_input


def _rotation(axis, angle_deg: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis``."""
    axis = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    angle = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


OBLIQUE = Geometry(
    spacing_mm=(1.25, 0.75, 8.0),
    origin_lps_mm=(-103.5, 42.25, 17.0),
    direction_lps=tuple(_rotation((1.0, -2.0, 0.5), 37.0).ravel()),
)


def _image(shape=(4, 5, 6), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, shape).astype(np.float32)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha"])
def test_oblique_volume_round_trip_keeps_array_and_geometry(tmp_path, suffix):
    volume = Volume(_image(), OBLIQUE)
    path = write_volume(volume, tmp_path / f"oblique{suffix}")

    back = read_volume(path)

    np.testing.assert_array_equal(back.array, volume.array)
    assert back.geometry.is_close(OBLIQUE, atol_mm=1e-4, atol_direction=1e-5), back.geometry
    # the voxel with array index (k, j, i) lies at the same LPS point after the round trip
    kji = np.array([[3, 1, 5], [0, 4, 2]])
    np.testing.assert_allclose(back.geometry.index_to_lps(kji), OBLIQUE.index_to_lps(kji), atol=1e-3)


def test_nifti_ijk_to_ras_matches_hand_computed_matrix_and_nibabel(tmp_path):
    # i -> posterior (LPS +y), j -> left (LPS +x), k -> inferior (LPS -z): a right-handed permutation
    geometry = Geometry((2.0, 3.0, 4.0), (10.0, -20.0, 30.0), (0, 1, 0, 1, 0, 0, 0, 0, -1))
    path = write_volume(Volume(_image(), geometry), tmp_path / "permuted.nii.gz")
    expected_ijk_to_ras = np.array(
        [
            # RAS x = -LPS x = -(3 j + 10)
            [0.0, -3.0, 0.0, -10.0],
            # RAS y = -LPS y = -(2 i - 20)
            [-2.0, 0.0, 0.0, 20.0],
            # RAS z = LPS z = -4 k + 30
            [0.0, 0.0, -4.0, 30.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )

    back = read_volume(path)

    np.testing.assert_allclose(back.geometry.ijk_to_ras_matrix(), expected_ijk_to_ras, atol=1e-5)
    # nibabel's affine is the NIfTI (RAS) voxel-to-world matrix: the same thing, read independently
    np.testing.assert_allclose(nib.load(path).affine, expected_ijk_to_ras, atol=1e-5)
    assert Geometry.from_ijk_to_ras_matrix(expected_ijk_to_ras).is_close(geometry)


def test_missing_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_volume(tmp_path / "absent.nii.gz")


def test_random_bytes_named_nifti_raise_data_error(tmp_path):
    path = tmp_path / "corrupt.nii.gz"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 2000, dtype=np.uint8).tobytes())
    with pytest.raises(DataError, match="corrupt.nii.gz"):
        read_volume(path)


def test_4d_image_without_frame_asks_for_frame(tmp_path):
    series = Volume(_image((3, 2, 4, 5)), OBLIQUE, axes="tkji")
    path = write_volume(series, tmp_path / "cine.nii.gz")

    with pytest.raises(InputError, match="--frame"):
        read_volume(path)
    frame = read_volume(path, frame=1)
    np.testing.assert_array_equal(frame.array, series.array[1])
    assert frame.geometry.is_close(OBLIQUE, atol_direction=1e-5)
    assert read_volume(path, allow_4d=True).axes == "tkji"


@pytest.mark.parametrize("name", ["cine.nii.gz", "cine.nii", "cine.nrrd"])
def test_a_frame_of_a_4d_file_is_its_own_array_on_the_series_grid(tmp_path, name):
    """A frame is read without holding (or keeping alive) the whole series: same voxels and geometry as the
    series' frame, an array of its own, and the frame's number checked against the file."""
    series = Volume(_image((5, 3, 4, 6)), OBLIQUE, axes="tkji")
    path = write_volume(series, tmp_path / name)
    whole = read_volume(path, allow_4d=True)
    for index in (0, 4):
        frame = read_volume(path, frame=index)
        np.testing.assert_array_equal(frame.array, series.array[index])
        assert frame.geometry.is_close(whole.geometry) and frame.geometry.is_close(OBLIQUE, atol_direction=1e-5)
        assert frame.array.base is None or frame.array.base.size == frame.array.size  # not a view into the series
    with pytest.raises(InputError, match="Frame 5 does not exist; the series has 5 frames"):
        read_volume(path, frame=5)
    assert whole.frame(2).array.base is None  # Volume.frame copies too


def test_a_frame_of_a_scaled_int16_nifti_gets_its_scaling_in_float32(tmp_path):
    stored = np.random.default_rng(0).integers(0, 3000, size=(7, 6, 4, 5)).astype(np.int16)  # x, y, z, t
    image = nib.Nifti1Image(stored, np.diag([1.3, 1.4, 8.0, 1.0]))
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "scaled.nii.gz")
    frame = read_volume(tmp_path / "scaled.nii.gz", frame=2)
    assert frame.array.dtype == np.float32
    np.testing.assert_allclose(frame.array, (stored[..., 2] * 0.5 + 10.0).transpose())  # (k, j, i)
    whole = read_volume(tmp_path / "scaled.nii.gz", allow_4d=True)  # ITK's reading of the same file
    np.testing.assert_allclose(frame.array, whole.array[2])
    assert frame.geometry.is_close(whole.geometry)


@pytest.mark.parametrize("name", ["SCAN.MHA", "scan.NII.GZ", "scan.nii.GZ", "scan.Nrrd", "scan.NII",
                                  "x" * 230 + ".nii.gz"])
def test_upper_case_suffixes_and_long_names_are_written_and_read(tmp_path, name):
    """ITK and nibabel know formats by lower-case suffixes only ('SCAN.MHA' was written as an empty file beside
    hidden .mhd/.raw ones); the temporary name of a long file name must stay within a folder's 255 bytes."""
    volume = Volume(_image(), OBLIQUE)
    write_volume(volume, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # nothing left beside it
    again = read_volume(tmp_path / name)
    np.testing.assert_array_equal(again.array, volume.array)
    assert again.geometry.is_close(OBLIQUE, atol_direction=1e-5)


def test_an_upper_case_file_says_whether_it_stores_its_slice_spacing(tmp_path):
    from cardiac_ai.io.volumes import slice_spacing_stored

    write_volume(Volume(_image(), OBLIQUE), tmp_path / "SCAN.MHA")
    assert slice_spacing_stored(tmp_path / "SCAN.MHA")
    sitk.WriteImage(sitk.GetImageFromArray(_image()[0]), str(tmp_path / "flat.mha"))
    (tmp_path / "flat.mha").rename(tmp_path / "FLAT.MHA")
    assert not slice_spacing_stored(tmp_path / "FLAT.MHA")  # 2D: no thickness


def test_a_frame_of_a_nifti_with_a_unit_fourth_axis_is_refused_as_before(tmp_path):
    """nibabel sees (x, y, z, 1) as 4D, ITK as 3D: frame 3 of it does not exist, and frame 0 is no frame either."""
    nib.save(nib.Nifti1Image(np.ones((6, 5, 4, 1), np.float32), np.eye(4)), tmp_path / "unit.nii.gz")
    with pytest.raises(InputError, match="not a 4D series"):
        read_volume(tmp_path / "unit.nii.gz", frame=3)


def test_a_frame_of_a_scaled_float64_nifti_stays_float64_as_itk_reads_it(tmp_path):
    stored = np.random.default_rng(1).normal(size=(5, 4, 3, 2))
    image = nib.Nifti1Image(stored, np.eye(4))
    image.header.set_slope_inter(2.0, 1.0)
    nib.save(image, tmp_path / "scaled64.nii")
    frame = read_volume(tmp_path / "scaled64.nii", frame=1)
    whole = read_volume(tmp_path / "scaled64.nii", allow_4d=True)
    assert frame.array.dtype == whole.array.dtype == np.float64
    np.testing.assert_array_equal(frame.array, whole.array[1])


def test_a_long_non_ascii_name_keeps_its_temporary_name_within_255_bytes(tmp_path):
    name = "\U0001F600" * 62 + ".nii"  # 252 bytes
    write_volume(Volume(_image(), OBLIQUE), tmp_path / name)
    assert read_volume(tmp_path / name).array.shape == _image().shape


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_a_detached_header_format_is_not_written(tmp_path, suffix):
    with pytest.raises(InputError, match="detached header"):
        write_volume(Volume(_image(), OBLIQUE), tmp_path / f"scan{suffix}")
    assert list(tmp_path.iterdir()) == []


def test_frame_of_3d_volume_is_refused(tmp_path):
    path = write_volume(Volume(_image(), OBLIQUE), tmp_path / "still.nrrd")
    with pytest.raises(InputError, match="not a 4D series"):
        read_volume(path, frame=0)


@pytest.mark.parametrize(
    "header",
    [
        {"space": "left-posterior-superior", "space directions": np.diag([1.0, 0.0, 2.0]), "space origin": np.zeros(3)},
        {"spacings": [1.0, 0.0, 2.0]},
    ],
    ids=["space-directions", "spacings"],
)
def test_nrrd_with_zero_spacing_raises_input_error(tmp_path, header):
    path = tmp_path / "flat.nrrd"
    nrrd.write(str(path), np.zeros((4, 5, 6), np.float32), header)
    with pytest.raises(InputError, match="spacing"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])  # ITK reads NIfTI NaN as 0: checked with nibabel
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_voxels_raise_input_error(tmp_path, bad, suffix):
    array = _image()
    array[1, 2, 3] = bad
    path = write_volume(Volume(array, OBLIQUE), tmp_path / f"bad{suffix}")
    with pytest.raises(InputError, match="1 NaN or Inf voxels"):
        read_volume(path)


def test_empty_array_is_refused():
    with pytest.raises(InputError, match="empty"):
        Volume(np.zeros((0, 4, 4), np.float32))


def test_write_volume_with_unknown_suffix_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="suffix"):
        write_volume(Volume(_image(), OBLIQUE), tmp_path / "volume.tiff")
    assert _files(tmp_path) == []


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_volume(Volume(_image(seed=1), OBLIQUE), tmp_path / "labels.nii.gz")
    old_bytes = path.read_bytes()

    def broken_writer(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"half a file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", broken_writer)
    with pytest.raises(OutputError, match="Could not write .*labels.nii.gz: disk full"):
        write_volume(Volume(_image(seed=2), OBLIQUE), path)

    assert path.read_bytes() == old_bytes
    assert _files(tmp_path) == ["labels.nii.gz"]


def test_prepare_output_dir_refuses_non_empty_folder_without_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.csv").write_text("a\n")

    with pytest.raises(OutputError, match="--overwrite"):
        prepare_output_dir(out)
    assert prepare_output_dir(out, overwrite=True) == out
    assert (out / "old.csv").read_text() == "a\n"  # overwrite replaces files as written, deletes nothing
    assert prepare_output_dir(tmp_path / "new" / "nested").is_dir()


def test_prepare_output_dir_refuses_folder_holding_an_input(tmp_path):
    source = tmp_path / "data" / "image.nii.gz"
    source.parent.mkdir()
    source.write_bytes(b"x")

    with pytest.raises(OutputError, match="holds the input"):
        prepare_output_dir(tmp_path / "data", overwrite=True, inputs=[source])
    with pytest.raises(OutputError, match="it is an input"):
        ensure_not_input(source, [source])


# -- PNG -----------------------------------------------------------------------------------------------------


def test_png_8_and_16_bit_read_as_one_slice_with_given_spacing(tmp_path):
    rng = np.random.default_rng(3)
    grey8 = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    grey16 = rng.integers(0, 65536, (7, 9), dtype=np.uint16)
    write_png(grey8, tmp_path / "a.png")
    write_png(grey16, tmp_path / "b.png")

    a = read_png(tmp_path / "a.png", spacing_mm=(0.5, 0.7))
    b = read_volume(tmp_path / "b.png", spacing_mm=(0.5, 0.7, 6.0))

    assert a.array.shape == (1, 7, 9) and a.array.dtype == np.uint8
    np.testing.assert_array_equal(a.array[0], grey8)
    assert a.geometry.spacing_mm == (0.5, 0.7, 1.0)
    assert b.array.dtype == np.uint16
    np.testing.assert_array_equal(b.array[0], grey16)
    assert b.geometry.spacing_mm == (0.5, 0.7, 6.0)


def test_png_without_spacing_warns_that_pixel_size_is_unknown(tmp_path, caplog):
    write_png(np.zeros((4, 4), np.uint8), tmp_path / "mask.png")
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.png"):
        volume = read_png(tmp_path / "mask.png")
    assert volume.geometry.spacing_mm == (1.0, 1.0, 1.0)
    assert "no pixel size" in caplog.text


def test_rgb_png_with_equal_channels_becomes_grey(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(np.stack([grey] * 3, axis=-1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(read_png(tmp_path / "rgb.png", spacing_mm=(1, 1)).array[0], grey)


def test_colour_png_raises_input_error(tmp_path):
    rgb = np.zeros((3, 4, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with pytest.raises(InputError, match="colour image"):
        read_png(tmp_path / "red.png", spacing_mm=(1, 1))


def test_png_zero_spacing_and_corrupt_file_are_refused(tmp_path):
    write_png(np.zeros((4, 4), np.uint8), tmp_path / "ok.png")
    with pytest.raises(InputError, match="spacing given for ok.png .* positive"):
        read_png(tmp_path / "ok.png", spacing_mm=(0.0, 1.0))
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="junk.png"):
        read_volume(tmp_path / "junk.png")


def test_write_png_refuses_float_and_3d_arrays_writing_nothing(tmp_path):
    with pytest.raises(InputError, match="uint8 or uint16"):
        write_png(np.zeros((4, 4), np.float32), tmp_path / "f.png")
    with pytest.raises(InputError, match="2D"):
        write_png(np.zeros((2, 4, 4), np.uint8), tmp_path / "s.png")
    assert _files(tmp_path) == []


# -- real data ------------------------------------------------------------------------------------------------



@pytest.mark.shared_data
def test_acdc_nifti_keeps_pixdim_spacing_without_itk_console_warning(shared_data_dir, capfd):
    path = shared_data_dir / "acdc" / "training" / "patient001" / "patient001_frame01_gt.nii.gz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")

    volume = read_volume(path)

    assert volume.geometry.spacing_mm[2] == pytest.approx(10.0)
    assert volume.geometry.spacing_mm[0] > 1.0  # from pixdim, not the unit-scale sform
    assert "unexpected scales" not in capfd.readouterr().err
    assert sitk.ProcessObject.GetGlobalWarningDisplay()  # restored after reading


@pytest.mark.shared_data
def test_emidec_mask_png_reads_as_uint8_codes_with_unknown_pixel_size(shared_data_dir, caplog):
    masks = sorted((shared_data_dir / "emidec-png" / "dataset" / "trainannot").glob("Case_P*.png"))
    if not masks:
        pytest.skip("no EMIDEC masks in the shared data")
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.io.png"):
        volume = read_volume(masks[0])
    assert volume.array.shape == (1, 256, 256) and volume.array.dtype == np.uint8
    assert set(np.unique(volume.array)) <= {0, 1, 2, 3, 4}
    assert "no pixel size" in caplog.text


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, np.int32])
@pytest.mark.parametrize("shape", [(5, 7, 9), (4, 3, 7, 9), (1, 7, 9), (7, 9)])
def test_nifti_reads_as_simpleitk_reads_it(tmp_path, monkeypatch, shape, dtype):
    """Unscaled NIfTI voxels come from nibabel (one decompression, NaN kept for the check, truncation noticed) and
    the geometry from ITK's header: array, dtype and geometry must be what sitk.ReadImage gives, for 2D,
    single-slice, 3D and 4D files, float and integer."""
    array = np.random.default_rng(len(shape)).normal(100, 30, shape).clip(0, 255).astype(dtype)
    image = sitk.GetImageFromArray(array, isVector=False)
    dimension = image.GetDimension()
    image.SetSpacing(tuple([1.25, 0.75, 8.0, 30.0][:dimension]))
    image.SetOrigin(tuple([-103.5, 42.25, 17.0, 0.0][:dimension]))
    direction = np.eye(dimension)
    rotation = _rotation((1, 2, 3), 25) if dimension >= 3 else _rotation((0, 0, 1), 25)
    direction[:min(dimension, 3), :min(dimension, 3)] = rotation[:min(dimension, 3), :min(dimension, 3)]
    image.SetDirection(tuple(direction.ravel()))
    path = tmp_path / "float.nii.gz"
    sitk.WriteImage(image, str(path))

    expected = sitk.ReadImage(str(path))
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: pytest.fail("NIfTI decompressed twice"))
    volume = read_volume(path, allow_4d=True)
    reference = sitk.GetArrayFromImage(expected)
    assert volume.array.dtype == reference.dtype
    np.testing.assert_array_equal(volume.array.reshape(reference.shape), reference)
    spacing = expected.GetSpacing()
    np.testing.assert_allclose(volume.geometry.spacing_mm[: min(dimension, 3)], spacing[:3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(volume.geometry.origin_lps_mm[: min(dimension, 3)], expected.GetOrigin()[:3], atol=1e-9)
    n = min(dimension, 3)
    np.testing.assert_allclose(volume.geometry.direction_matrix[:n, :n],
                               np.asarray(expected.GetDirection()).reshape(dimension, dimension)[:n, :n], atol=1e-9)


def test_scaled_integer_nifti_still_goes_through_itk_with_its_scaling(tmp_path):
    data = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    image = nib.Nifti1Image(data, np.diag([1.5, 1.5, 8.0, 1.0]))
    image.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "scaled.nii.gz"
    nib.save(image, str(path))
    volume = read_volume(path)
    np.testing.assert_allclose(volume.array, sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    assert float(volume.array.max()) == pytest.approx(59 * 0.5 + 10.0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_truncated_integer_nifti_is_refused_not_filled(tmp_path, suffix):
    """ITK fills the voxels a truncated NIfTI lacks and reads it without complaint; CardiacAI must refuse it."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 900, (6, 32, 32)).astype(np.int16))
    image.SetSpacing((1.5, 1.5, 8.0))
    whole = tmp_path / f"whole{suffix}"
    sitk.WriteImage(image, str(whole))
    cut = tmp_path / f"cut{suffix}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_volume(cut)
    assert read_volume(whole).array.shape == (6, 32, 32)


def test_truncated_metaimage_says_so_rather_than_file_not_found(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((6, 32, 32), np.int16))
    whole = tmp_path / "whole.mha"
    sitk.WriteImage(image, str(whole))
    cut = tmp_path / "cut.mha"
    cut.write_bytes(whole.read_bytes()[:-3000])
    with pytest.raises(DataError, match="truncated") as caught:
        read_volume(cut)
    assert "No such file" not in str(caught.value)


def test_written_files_get_the_usual_file_mode_not_a_private_temporary_ones(tmp_path):
    from cardiac_ai.io.atomic import _UMASK, write_text_atomic

    written = write_text_atomic(tmp_path / "report.json", "{}")
    assert written.stat().st_mode & 0o777 == 0o666 & ~_UMASK
    written.chmod(0o640)
    write_text_atomic(written, "{}")  # a replaced file keeps its mode
    assert written.stat().st_mode & 0o777 == 0o640


def test_a_rerun_with_overwrite_clears_the_earlier_runs_outputs_it_no_longer_makes(tmp_path):
    from cardiac_ai.io.atomic import write_text_atomic
    from cardiac_ai.io.report import write_report
    from cardiac_ai.pipeline import output_folder
    from cardiac_ai.provenance import Provenance

    out = tmp_path / "out"
    with output_folder(out) as folder:
        write_text_atomic(folder / "labels.csv", "1")
        write_text_atomic(folder / "qc_slices.csv", "2")
        write_report(folder, provenance=Provenance(command="x"), results={})
    (out / "notes.txt").write_text("the user's own file")
    with pytest.raises(RuntimeError):  # a rerun that fails removes nothing
        with output_folder(out, overwrite=True) as folder:
            write_text_atomic(folder / "labels.csv", "3")
            raise RuntimeError("failed before its report")
    assert {p.name for p in out.iterdir()} == {"labels.csv", "qc_slices.csv", "report.json", "notes.txt"}
    with output_folder(out, overwrite=True) as folder:  # a rerun that makes no QC table
        write_text_atomic(folder / "labels.csv", "4")
        write_report(folder, provenance=Provenance(command="x"), results={})
    assert {p.name for p in out.iterdir()} == {"labels.csv", "report.json", "notes.txt"}
    assert json.loads((out / "report.json").read_text())["outputs"] == ["labels.csv", "report.json"]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_write_cut_short_by_a_full_disk_fails_and_keeps_the_earlier_file(tmp_path, monkeypatch, suffix):
    # ITK's NIfTI writer only prints "NWAD: wrote only N of M bytes" when the disk is full; the file it leaves reads
    # back with zeros for the missing voxels
    volume = Volume(_image((6, 20, 30)), OBLIQUE)
    target = write_volume(volume, tmp_path / f"labels{suffix}")
    earlier = target.read_bytes()
    real_write = sitk.WriteImage

    def write_then_run_out_of_space(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:1500])

    monkeypatch.setattr(sitk, "WriteImage", write_then_run_out_of_space)
    with pytest.raises(OutputError, match=f"Could not write .*labels{suffix}"):
        write_volume(Volume(_image((6, 20, 30), seed=1), OBLIQUE), target)
    assert target.read_bytes() == earlier
    assert _files(tmp_path) == [target.name]


def test_a_writer_error_names_the_file(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: /src/itkNrrdImageIO.cxx:1\n"
                           "ITK ERROR: NrrdImageIO: Write: Error writing file: File too large")

    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(OutputError, match=r"Could not write .*scan\.nrrd: ITK ERROR: .*File too large"):
        write_volume(Volume(_image(), OBLIQUE), tmp_path / "scan.nrrd")
    assert _files(tmp_path) == []


def test_a_series_stored_as_vector_voxels_reads_as_frames(tmp_path):
    # Slicer's MultiVolume NRRD: each voxel holds every frame ("kinds: vector domain domain domain")
    frames = np.random.default_rng(4).normal(500, 50, (5, 3, 6, 7)).astype(np.float32)  # (t, k, j, i)
    image = sitk.GetImageFromArray(np.moveaxis(frames, 0, -1), isVector=True)
    image.SetSpacing(OBLIQUE.spacing_mm)
    image.SetOrigin(OBLIQUE.origin_lps_mm)
    image.SetDirection(OBLIQUE.direction_lps)
    sitk.WriteImage(image, str(tmp_path / "series.nrrd"))
    series = read_volume(tmp_path / "series.nrrd", allow_4d=True)
    assert series.axes == "tkji" and series.geometry.is_close(OBLIQUE)
    np.testing.assert_array_equal(series.array, frames)
    np.testing.assert_array_equal(read_volume(tmp_path / "series.nrrd", frame=2).array, frames[2])
    with pytest.raises(InputError, match=r"series\.nrrd: .*5 components per pixel.*--frame N"):
        read_volume(tmp_path / "series.nrrd")


@pytest.mark.parametrize("cut", [1, 300])
def test_a_nifti_cut_short_by_fewer_bytes_than_its_header_is_still_caught(tmp_path, monkeypatch, cut):
    real_write = sitk.WriteImage

    def write_then_lose_the_tail(image, path, *args, **kwargs):
        real_write(image, path, *args, **kwargs)
        Path(path).write_bytes(Path(path).read_bytes()[:-cut])

    monkeypatch.setattr(sitk, "WriteImage", write_then_lose_the_tail)
    with pytest.raises(OutputError, match=f"only .* bytes were written"):
        write_volume(Volume(_image((6, 20, 30)), OBLIQUE), tmp_path / "labels.nii", compress=False)
    assert _files(tmp_path) == []


def test_a_4d_nifti_without_a_frame_is_refused_from_its_header_without_reading_its_voxels(tmp_path, monkeypatch):
    from cardiac_ai.io import volumes

    series = np.random.default_rng(5).normal(100, 10, (4, 3, 6, 7)).astype(np.float32)  # (t, k, j, i)
    write_volume(Volume(series, OBLIQUE, "tkji"), tmp_path / "cine.nii.gz")

    def no_voxels(*args, **kwargs):
        raise AssertionError("the voxels were read")

    monkeypatch.setattr(volumes, "_nifti_voxels", no_voxels)
    monkeypatch.setattr(sitk, "ReadImage", no_voxels)
    with pytest.raises(InputError, match=r"cine\.nii\.gz: The image is 4D \(\(7, 6, 3, 4\) = x.*--frame N"):
        read_volume(tmp_path / "cine.nii.gz")
