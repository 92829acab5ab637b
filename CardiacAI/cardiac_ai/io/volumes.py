"""Reading and writing image volumes (NIfTI, NRRD, MHA/MHD) through SimpleITK, with checks on what comes in.

The one place where SimpleITK images become :class:`~cardiac_ai.geometry.Volume` and back.
"""
from __future__ import annotations

import contextlib
import logging
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DataError, InputError, OutputError
from ..geometry import Geometry, Volume
from .atomic import atomic_path, warn_for_report
from .formats import VOLUME_SUFFIXES

__all__ = [
    "VOLUME_SUFFIXES",
    "read_volume",
    "write_volume",
    "check_not_detached_header",
    "volume_from_sitk",
    "volume_to_sitk",
    "check_finite",
    "slice_spacing_stored",
]

log = logging.getLogger(__name__)



def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(VOLUME_SUFFIXES + (".seg.nrrd", ".png", ".dcm"), key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def volume_from_sitk(image: sitk.Image, *, allow_4d: bool = False, allow_complex: bool = False) -> Volume:
    """A :class:`Volume` from a SimpleITK image (array copied; 2D images become one slice).

    A 2D image has no slice thickness; its one slice gets 1 mm, so a volume computed from it is its area in mm2
    times 1 mm. :func:`read_volume` logs a warning for such a file and :func:`slice_spacing_stored` tells it apart.

    A 4D image (x, y, z, t) becomes a (t, k, j, i) series when ``allow_4d``; otherwise InputError. So does a 3D image
    of several components per voxel (the frames of Slicer's MultiVolume NRRD), and a complex-valued image unless
    ``allow_complex`` (a network would read its real part only).

    A direction matrix whose axes are perpendicular but not of unit length (a MetaImage ``TransformMatrix`` holding
    the voxel size) is read as unit axes times that size, with a warning; sheared axes are refused: the spacing
    would no longer be the voxel size, and every length, area and volume would be wrong.
    """
    dimension = image.GetDimension()
    array = sitk.GetArrayFromImage(image)
    if np.iscomplexobj(array) and not allow_complex:
        raise InputError(
            "The image holds complex values (a complex-valued reconstruction); CardiacAI analyses real images and "
            "would read the real part only. Give the magnitude image (the absolute value of each voxel), as scanners "
            "export it."
        )
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        if allow_4d and dimension == 3:  # frames stored as the components of each voxel (Slicer's MultiVolume NRRD)
            return Volume(np.ascontiguousarray(np.moveaxis(array, -1, 0)),
                          Geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection()), axes="tkji")
        raise InputError(
            f"Image has {components} components per pixel (a colour or vector image); CardiacAI needs a greyscale "
            "image. A series whose frames are stored as components (Slicer's MultiVolume NRRD) is read frame by "
            "frame: give --frame N, or give it to fit-map as a whole."
        )
    if dimension == 2:
        # A 2D file stores no slice thickness: 1 mm stands in for it (read_volume warns; see slice_spacing_stored).
        spacing = (*image.GetSpacing(), 1.0)
        origin = (*image.GetOrigin(), 0.0)
        d = image.GetDirection()
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
        return Volume(array[np.newaxis], _unit_axes_geometry(spacing, origin, direction))
    if dimension == 3:
        return Volume(array, _unit_axes_geometry(image.GetSpacing(), image.GetOrigin(), image.GetDirection()))
    if dimension == 4:
        if not allow_4d:
            raise InputError(_four_d_refusal(image.GetSize()))
        spacing = image.GetSpacing()[:3]
        origin = image.GetOrigin()[:3]
        d = np.asarray(image.GetDirection()).reshape(4, 4)[:3, :3]
        return Volume(array, _unit_axes_geometry(spacing, origin, tuple(d.ravel())), axes="tkji")
    raise InputError(f"Images of dimension {dimension} are not supported (need 2D, 3D or 4D).")


#: How far a direction axis's length may be from 1, and the cosine between two axes from 0, before the matrix is
#: not a rotation: DICOM and NIfTI headers store directions to about 6 decimals.
_UNIT_AXIS_TOLERANCE = 1e-4
_PERPENDICULAR_TOLERANCE = 1e-3


def _unit_axes_geometry(spacing, origin, direction) -> Geometry:
    """Geometry with unit direction axes: lengths other than 1 (perpendicular axes) move into the spacing."""
    axes = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    lengths = np.linalg.norm(axes, axis=0)
    if np.allclose(lengths, 1.0, atol=_UNIT_AXIS_TOLERANCE) and _perpendicular(axes / lengths):
        return Geometry(spacing, origin, direction)
    if not np.all(lengths > 0) or not _perpendicular(axes / np.where(lengths > 0, lengths, 1.0)):
        raise InputError(
            f"The image's direction matrix {np.round(axes, 4).tolist()} has sheared (not perpendicular) axes: "
            "its spacing is then not the voxel size, and lengths, areas and volumes would be wrong. Resample the "
            "image onto a grid with perpendicular axes (e.g. with 3D Slicer's Resample Scalar Volume)."
        )
    true_spacing = tuple(float(s * n) for s, n in zip(spacing, lengths))
    warn_for_report(log, f"The image's direction matrix holds axes of length {np.round(lengths, 4).tolist()} (e.g. a "
                         f"MetaImage TransformMatrix with the voxel size in it): read as unit axes, the voxel size "
                         f"{np.round(true_spacing, 4).tolist()} mm instead of the stated spacing "
                         f"{[round(float(v), 4) for v in spacing]}.")
    return Geometry(true_spacing, origin, tuple((axes / lengths).ravel()))


def _perpendicular(unit_axes: np.ndarray) -> bool:
    cosines = unit_axes.T @ unit_axes - np.eye(3)
    return bool(np.max(np.abs(cosines)) <= _PERPENDICULAR_TOLERANCE)


def _four_d_refusal(size_xyzt) -> str:
    return (f"The image is 4D ({tuple(int(n) for n in size_xyzt)} = x, y, z, t) but a 3D volume is needed. Pick one "
            "frame: --frame N (0-based) in segment-cine, cam and batch, --ed-frame N --es-frame M in function; for "
            "the other commands convert the frame first with `cardiacai convert INPUT --frame N --out "
            "frame.nii.gz`.")


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """A SimpleITK image with the volume's array and geometry (a 4D series gets a unit time axis)."""
    if volume.axes == "tkji":
        image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array), isVector=False)
        direction = np.eye(4)
        direction[:3, :3] = volume.geometry.direction_matrix
        image.SetSpacing((*volume.geometry.spacing_mm, 1.0))
        image.SetOrigin((*volume.geometry.origin_lps_mm, 0.0))
        image.SetDirection(tuple(direction.ravel()))
        return image
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array), isVector=False)
    image.SetSpacing(volume.geometry.spacing_mm)
    image.SetOrigin(volume.geometry.origin_lps_mm)
    image.SetDirection(volume.geometry.direction_lps)
    return image


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise InputError if a float array holds NaN or Inf, saying how many voxels."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InputError(
                f"{what} holds {bad} NaN or Inf voxels out of {array.size}. "
                "Fix or mask them (e.g. replace with 0) before running CardiacAI."
            )


_NIFTI_VOXEL_TYPES = tuple(np.dtype(t) for t in (
    np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64, np.float32, np.float64))


def _unreadable_nifti(path: Path, error: Exception) -> DataError:
    with open(path, "rb") as file:
        gzipped = file.read(2) == b"\x1f\x8b"
    if path.name.lower().endswith(".gz") and not gzipped:
        return DataError(
            f"{path} cannot be read as NIfTI: it is named .nii.gz but is not gzip-compressed. "
            "Rename it to .nii (or compress it with gzip)."
        )
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DataError(
        f"{path} cannot be read as NIfTI: {reason}. The file is truncated or corrupt; copy or export the image again."
    )


def _load_nifti(path: Path):
    """The file opened by nibabel (voxels not yet read) once its stored header has a valid voxel size.

    The header is checked as stored: nibabel mends some fields as it loads (pixdim 0 becomes 1), as ITK does. ITK
    also opens files nibabel cannot (a header cut short, which it fills with defaults; a plain file named .nii.gz);
    such a file cannot be checked, so it is refused rather than read on ITK's guesses.

    Raises
    ------
    DataError
        nibabel cannot read the file.
    InputError
        A voxel size in the header is zero, negative or NaN.
    """
    import nibabel
    from nibabel.openers import ImageOpener

    try:
        with ImageOpener(str(path)) as file:
            block = file.read(540)  # a NIfTI-2 header's size; a NIfTI-1 header is the first 348 bytes
        n2 = 540 in (int.from_bytes(block[:4], "little"), int.from_bytes(block[:4], "big"))
        header_class = nibabel.Nifti2Header if n2 else nibabel.Nifti1Header
        if len(block) < header_class.sizeof_hdr:
            raise EOFError(f"the file holds {len(block)} bytes of its {header_class.sizeof_hdr}-byte header")
        header = header_class(block[: header_class.sizeof_hdr], check=False)
        magic = header["magic"].item()
        if magic not in (header_class.single_magic, header_class.pair_magic):
            raise ValueError(f"no NIfTI header (magic {magic!r}, sizeof_hdr {int(header['sizeof_hdr'])})")
    except Exception as error:  # nibabel and gzip raise many types (EOFError, OSError, ValueError)
        raise _unreadable_nifti(path, error) from error
    _check_nifti_spacing(header, path)
    try:
        return nibabel.load(str(path))
    except Exception as error:  # as above (ImageFileError, HeaderDataError, ...)
        raise _unreadable_nifti(path, error) from error


#: What each of pixdim[1], [2], [3] is, in this package's axis names.
_PIXDIM_AXES = {1: "i, x: along a row", 2: "j, y: down the columns", 3: "k, z: the slice spacing"}


def _check_nifti_spacing(header, path: Path) -> None:
    """InputError when the stored header's voxel size (pixdim[1..3] of the spatial axes) is zero, negative or NaN.

    ITK reads such a header as 1 mm (printing only "setting 0 dims to 1"), so every length, area and volume from
    the image would be wrong: refused as a MetaImage or NRRD with zero spacing is.
    """
    n_spatial = int(min(max(int(header["dim"][0]), 1), 3))
    pixdim = np.asarray(header["pixdim"], dtype=np.float64)
    for axis in range(1, n_spatial + 1):
        value = float(pixdim[axis])
        if not (np.isfinite(value) and value > 0):
            consequence = ("would take its absolute value and mirror that axis, placing the image wrongly"
                           if value < 0 else "would read it as 1 mm, making every length, area and volume wrong")
            raise InputError(
                f"{path} has pixdim[{axis}] = {value:g} in its NIfTI header (voxel size along {_PIXDIM_AXES[axis]}); "
                f"it must be a positive size in mm (all: {pixdim[1:n_spatial + 1].tolist()}). ITK {consequence}. "
                "Fix the header or resave the image with its real voxel size."
            )


def _nifti_voxels(image, path: Path, *, unscaled: bool = False) -> np.ndarray:
    """The voxels nibabel reads (``unscaled``: as stored, without scl_slope / scl_inter), or DataError: ITK's NIfTI
    reader fills a truncated file's missing voxels silently."""
    try:
        return np.asanyarray(image.dataobj.get_unscaled() if unscaled else image.dataobj)
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise DataError(
            f"{path} is truncated or corrupt: its header promises more voxel data than the file holds "
            f"({str(error).strip().splitlines()[0]}). Copy or export the image again."
        ) from error


def _check_nifti_finite(image, path: Path) -> None:
    """The voxels of a NIfTI that ITK read (a scaled one): complete, and no NaN (ITK's reader turns NaN into 0).
    The stored voxels are checked, unscaled: a NaN stays NaN, and integer voxels need no float64 copy."""
    voxels = _nifti_voxels(image, path, unscaled=True)
    if voxels.dtype.kind == "f":
        check_finite(voxels, str(path))


def _read_nifti(image, path: Path, frame: int | None = None) -> tuple[sitk.Image | None, bool]:
    """A scalar NIfTI without intensity scaling (``image``: nibabel's), decompressed once: the voxels from nibabel
    (which keeps NaN, so they can be refused, and notices a truncated file, which ITK fills) and the geometry from
    ITK's reading of the header (what ``sitk.ReadImage`` would give). None for any other NIfTI (scaled, unless one
    frame of a 4D file is asked for; multi-component; a layout the two readers see differently): those go through
    ``sitk.ReadImage``.

    With ``frame`` and a 4D file, only that frame is read (a 3D image): a cine of hundreds of MB is never held
    whole, nor copied. The second value says whether the frame was taken so.

    Raises
    ------
    DataError
        The header reads but the voxel data is incomplete.
    InputError
        ``frame`` is not a frame of the 4D file.
    """
    dtype = image.get_data_dtype()
    scaled = image.dataobj.slope not in (1.0, None) or image.dataobj.inter not in (0.0, None)
    if dtype not in _NIFTI_VOXEL_TYPES or (scaled and frame is None):
        return None, False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except Exception:  # noqa: BLE001 - as above: ITK's reader says what is wrong
        return None, False
    size = reader.GetSize()
    if reader.GetNumberOfComponents() != 1 or not 2 <= len(size) <= 4:
        return None, False
    if frame is not None and len(size) == 4 and len(image.shape) == 4 and tuple(image.shape) == tuple(size):
        return _read_nifti_frame(image, path, reader, frame, scaled=scaled), True
    if scaled:
        return None, False
    data = _nifti_voxels(image, path)
    if data.dtype != dtype or int(np.prod(data.shape)) != int(np.prod(size)) \
            or tuple(n for n in data.shape if n != 1) != tuple(n for n in size if n != 1):
        return None, False
    if dtype.kind == "f":
        check_finite(data, str(path))
    # NIfTI stores x fastest, as ITK's buffer: the array in ITK's (..., y, x) index order is the file's, reversed.
    array = np.ascontiguousarray(data.reshape(size, order="F").transpose())
    result = sitk.GetImageFromArray(array, isVector=False)
    result.SetSpacing(reader.GetSpacing())
    result.SetOrigin(reader.GetOrigin())
    result.SetDirection(reader.GetDirection())
    return result, False


def _read_nifti_frame(image, path: Path, reader: sitk.ImageFileReader, frame: int, *, scaled: bool) -> sitk.Image:
    """Frame ``frame`` of a 4D scalar NIfTI whose voxel layout nibabel and ITK agree on, as a 3D image with the
    spatial part of the 4D geometry (as :func:`volume_from_sitk` takes it). A ``scaled`` file's frame gets its
    scl_slope / scl_inter applied, in float32 (float64 for float64 voxels) as ITK's reader gives it."""
    size = reader.GetSize()
    if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not 0 <= frame < size[3]:
        raise InputError(f"Frame {frame} does not exist; the series has {size[3]} frames (0..{size[3] - 1}).")
    try:
        data = np.asanyarray(image.dataobj[..., int(frame)])
    except (OSError, EOFError, ValueError, zlib.error) as error:
        raise DataError(
            f"{path} is truncated or corrupt: frame {frame} lies beyond the voxel data the file holds "
            f"({str(error).strip().splitlines()[0]}). Copy or export the image again."
        ) from error
    if scaled:  # as ITK's reader: float64 stays float64, everything else becomes float32
        data = data.astype(np.float64 if image.get_data_dtype() == np.float64 else np.float32)
    if data.dtype.kind == "f":
        check_finite(data, str(path))
    result = sitk.GetImageFromArray(np.ascontiguousarray(data.transpose()), isVector=False)
    result.SetSpacing(reader.GetSpacing()[:3])
    result.SetOrigin(reader.GetOrigin()[:3])
    result.SetDirection(tuple(np.asarray(reader.GetDirection()).reshape(4, 4)[:3, :3].ravel()))
    return result


#: Formats held in one file, which ITK and nibabel recognise by a lower-case suffix only ('scan.MHA', 'a.nii.GZ').
_ONE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".mha")


def _needs_lowercase_alias(source: Path) -> bool:
    return source.is_file() and _suffix(source) in _ONE_FILE_SUFFIXES and not source.name.endswith(_suffix(source))


@contextlib.contextmanager
def _lowercase_alias(source: Path):
    """A link (or copy) of ``source`` named with its suffix in lower case, for ITK and nibabel, which know formats by
    lower-case suffixes only (Windows tools write 'SCAN.MHA'); errors raised inside name ``source``."""
    import shutil
    import tempfile

    from ..errors import CardiacAIError

    with tempfile.TemporaryDirectory(prefix="cardiac_ai_read_") as folder:
        alias = Path(folder) / f"image{_suffix(source)}"
        try:
            os.symlink(source.resolve(), alias)
        except OSError:  # no symlinks (Windows without the privilege): a copy
            shutil.copyfile(source, alias)
        try:
            yield alias
        except CardiacAIError as error:
            raise type(error)(str(error).replace(str(alias), str(source))) from error


def _read_under_lowercase_suffix(source: Path, **options) -> Volume:
    """:func:`read_volume` of a file whose suffix is not in lower case, through :func:`_lowercase_alias`."""
    with _lowercase_alias(source) as alias:
        return read_volume(alias, **options)


def read_volume(
    path: str | os.PathLike,
    *,
    frame: int | None = None,
    allow_4d: bool = False,
    spacing_mm: tuple[float, float] | tuple[float, float, float] | None = None,
    allow_complex: bool = False,
) -> Volume:
    """Read a NIfTI (1 or 2), NRRD, MHA/MHD, PNG file or a DICOM series folder as a :class:`Volume`.

    Parameters
    ----------
    path : file or DICOM folder.
    frame : 0-based frame of a 4D series to return as a 3D volume.
    allow_4d : return a 4D file as a (t, k, j, i) series instead of raising.
    spacing_mm : pixel spacing to assign where the file stores none (PNG); (i, j) or (i, j, k) in mm.
    allow_complex : return a complex-valued image as it is (format conversion) instead of refusing it.

    Header readings that could place or scale the image differently from other tools are warned about (and kept for
    the report of the run reading it): a NIfTI whose qform and sform disagree, an NRRD in other ``space units`` than
    mm (converted), a direction matrix holding the voxel size. A 2D NIfTI keeps the 3D placement its header states.

    Returns
    -------
    Volume
        A 2D file becomes one slice 1 mm thick, with a logged warning: it stores no slice thickness (see
        :func:`slice_spacing_stored`).

    Raises
    ------
    DataError
        Missing, unreadable or corrupt file (a NIfTI that nibabel cannot read completely, whatever ITK makes of it).
    InputError
        4D without ``frame``/``allow_4d``, zero, negative or NaN spacing (a NIfTI's raw pixdim, which ITK would read
        as 1 mm), NaN/Inf voxels, empty image.
    """
    source = Path(path)
    if not source.exists():
        raise DataError(f"Input not found: {source}")
    if _needs_lowercase_alias(source):
        return _read_under_lowercase_suffix(source, frame=frame, allow_4d=allow_4d, spacing_mm=spacing_mm,
                                            allow_complex=allow_complex)
    nifti = _suffix(source) in (".nii", ".nii.gz")
    nifti_image = None
    read_by_nibabel = framed = False  # framed: the NIfTI reader took the frame out of a 4D file itself
    if source.is_file() and source.name.upper() == "DICOMDIR":  # the index of a DICOM medium: its folder's series
        log.info("%s is a DICOMDIR: reading the DICOM series in its folder %s.", source, source.parent)
        source = source.parent
    if source.is_dir():
        from .dicom import read_dicom_series

        volume = read_dicom_series(source, frame=frame)
        framed = frame is not None  # a cine series' phase, chosen by the reader
    elif _suffix(source) == ".png":
        from .png import read_png

        volume = read_png(source, spacing_mm=spacing_mm)
    else:
        if nifti:
            nifti_image = _load_nifti(source)
            if frame is None and not allow_4d and len(nifti_image.shape) == 4 and nifti_image.shape[3] > 1:
                # refused from the header: a cine of hundreds of MB is not decompressed only to be refused
                raise InputError(f"{source}: {_four_d_refusal(nifti_image.shape)}")
        # ITK prints header quirks straight to the console (ACDC: "unexpected scales in sform"); silence it here only.
        show_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            if nifti_image is not None and nifti_image.header.sizeof_hdr == 540:  # NIfTI-2
                image, read_by_nibabel = _nifti2_as_sitk(nifti_image, source), True  # ITK reads NIfTI-1 only
            else:
                image, framed = _read_nifti(nifti_image, source, frame) if nifti_image is not None else (None, False)
                read_by_nibabel = image is not None
            if image is None:
                image = sitk.ReadImage(str(source))
        except RuntimeError as e:
            message = str(e).lower()
            if "zero-valued spacing" in message or ("spacing" in message and "invalid" in message):
                raise InputError(
                    f"{source} has zero or invalid voxel spacing in its header; ITK cannot place its voxels. "
                    "Fix the header or resave the image with its real voxel size."
                ) from e
            reason = str(e).strip().splitlines()[-1]
            if "no such file or directory" in reason.lower():  # MetaIO's words for data it could not read
                reason = "the voxel data is truncated, corrupt or (for .mhd) its data file is missing"
            raise DataError(f"Cannot read {source} as an image: {reason}") from e
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(show_warnings)
        if any(s <= 0 for s in image.GetSpacing()):
            raise InputError(
                f"{source} has zero or negative spacing {image.GetSpacing()}; the header is broken. "
                "Fix the header or resave the image with its real voxel size."
            )
        if _suffix(source) in (".nrrd", ".nhdr"):
            image = _in_millimetres(image, source)
        if image.GetDimension() == 2:
            warn_for_report(log, f"{source} is a 2D image: it stores no slice thickness, so 1 mm is assumed and a "
                                 "volume in ml computed from it is its area in mm2 times 1 mm. For volumes in ml save "
                                 "the slice as a 3D file with its real slice thickness.")
        try:
            volume = volume_from_sitk(image, allow_4d=allow_4d or frame is not None, allow_complex=allow_complex)
        except InputError as error:  # a 4D or vector image: say which file (of a cohort, or the labels, not the image)
            raise InputError(f"{source}: {error}") from error
        if nifti_image is not None:
            if image.GetDimension() == 2:
                volume = Volume(volume.array, _nifti_2d_placement(nifti_image, volume.geometry))
            _warn_if_qform_and_sform_disagree(nifti_image, volume.geometry, source)
    if frame is not None and not framed:
        if volume.axes != "tkji":
            raise InputError(f"--frame {frame} was given but {source} is not a 4D series.")
        volume = volume.frame(frame)
    check_finite(volume.array, str(source))
    if nifti_image is not None and not read_by_nibabel:
        _check_nifti_finite(nifti_image, source)
    if volume.array.size == 0:
        raise InputError(f"{source} holds an empty image.")
    return volume


def _nifti_transform(header) -> np.ndarray:
    """The voxel-to-RAS transform ITK (5.4, as in 3D Slicer) takes from a NIfTI header: the sform when its code is 1
    (scanner, what dcm2niix writes) or the qform is not set, with the voxel size of pixdim (ITK's reading of ACDC's
    unit-scale sforms); else the qform; with neither, the identity direction (in LPS) at the origin."""
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if qform_code <= 0 and sform_code <= 0:
        spacing = np.where(pixdim > 0, pixdim, 1.0)
        return np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS identity, as RAS
    if not (sform_code > 0 and (qform_code <= 0 or sform_code == 1)):
        return np.asarray(header.get_qform(), dtype=np.float64)
    transform = np.asarray(header.get_sform(), dtype=np.float64)
    lengths = np.linalg.norm(transform[:3, :3], axis=0)
    for axis in range(3):
        if lengths[axis] > 0 and pixdim[axis] > 0 and not np.isclose(lengths[axis], pixdim[axis], rtol=1e-3):
            transform[:3, axis] *= pixdim[axis] / lengths[axis]
    return transform


def _nifti2_as_sitk(image, path: Path) -> sitk.Image:
    """A NIfTI-2 file (which ITK cannot read) as the image ITK would make of it: nibabel's voxels (scaled), placed
    by :func:`_nifti_transform` as spacing, origin and direction in LPS."""
    data = _nifti_voxels(image, path)
    if data.ndim not in (2, 3, 4):
        raise InputError(f"{path} is a {data.ndim}D NIfTI-2 image; CardiacAI reads 2D, 3D and 4D images.")
    if data.dtype.kind == "f":
        check_finite(data, str(path))
    geometry = Geometry.from_ijk_to_ras_matrix(_nifti_transform(image.header))
    array = np.ascontiguousarray(np.asarray(data).transpose())  # (x, y, z[, t]) -> ITK's ([t,] z, y, x)
    result = sitk.GetImageFromArray(array, isVector=False)
    n_extra = data.ndim - 3
    if n_extra < 0:  # 2D: the in-plane part; the placement is restored by _nifti_2d_placement
        result.SetSpacing(geometry.spacing_mm[:2])
        return result
    direction = np.eye(3 + n_extra)
    direction[:3, :3] = geometry.direction_matrix
    result.SetSpacing((*geometry.spacing_mm, *([1.0] * n_extra)))
    result.SetOrigin((*geometry.origin_lps_mm, *([0.0] * n_extra)))
    result.SetDirection(tuple(direction.ravel()))
    return result


def _nifti_2d_placement(image, geometry: Geometry) -> Geometry:
    """The 3D placement a 2D NIfTI's header states (ITK reads a 2D file in its own plane at z = 0, axis-aligned),
    with the 1 mm stand-in thickness of a 2D image."""
    placed = Geometry.from_ijk_to_ras_matrix(_nifti_transform(image.header))
    if not np.allclose(placed.spacing_mm[:2], geometry.spacing_mm[:2], rtol=1e-4):
        return geometry  # the two readers disagree about the pixel size: keep ITK's, as for any other file
    return Geometry((*geometry.spacing_mm[:2], 1.0), placed.origin_lps_mm, placed.direction_lps)


def _warn_if_qform_and_sform_disagree(image, geometry: Geometry, path: Path) -> None:
    """A NIfTI with both a qform and an sform (codes above 0) that place its voxels differently: which one this
    package used (ITK's choice, as 3D Slicer) and how far the other tool family (nibabel, FSL, MONAI: the sform)
    would put the image and its results."""
    header = image.header
    if int(header["qform_code"]) <= 0 or int(header["sform_code"]) <= 0:
        return
    transforms = {"qform": header.get_qform(), "sform": header.get_sform()}
    shape = np.asarray(image.shape[:3] if len(image.shape) >= 3 else (*image.shape[:2], 1))
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    placed = {name: corners @ np.asarray(matrix).T for name, matrix in transforms.items()}
    apart = float(np.max(np.linalg.norm(placed["qform"][:, :3] - placed["sform"][:, :3], axis=1)))
    if apart <= 0.01:
        return
    used_ras = geometry.ijk_to_ras_matrix()
    used = min(transforms, key=lambda name: float(np.max(np.abs(corners @ used_ras.T - placed[name]))))
    if used == "sform":
        others = "tools that read the qform"
    else:
        others = "nibabel, FSL and MONAI, which read the sform,"
    warn_for_report(log, f"{path}: its NIfTI qform and sform place the image up to {apart:.1f} mm apart. CardiacAI, "
                         f"like ITK and 3D Slicer, used the {used}; in {others} this image and CardiacAI's results "
                         f"on it lie up to {apart:.1f} mm from where they lie here. Fix the header (set both to the "
                         "right transform) if that matters.")


#: Length units of an NRRD's ``space units`` and their size in mm.
_NRRD_UNITS_MM = {"mm": 1.0, "millimeter": 1.0, "millimetre": 1.0, "m": 1000.0, "meter": 1000.0, "metre": 1000.0,
                  "cm": 10.0, "um": 0.001, "µm": 0.001, "micron": 0.001, "micrometer": 0.001, "micrometre": 0.001}


def _nrrd_space_units(path: Path) -> list[str] | None:
    """The ``space units`` of an NRRD header (detached or not), or None when it states none."""
    import re

    try:
        with open(path, "rb") as file:
            head = file.read(65536)
    except OSError:
        return None
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1").strip()
        if not line:  # the blank line ends the header
            break
        if line.lower().startswith("space units:"):
            return re.findall(r'"([^"]*)"', line.split(":", 1)[1])
    return None


def _in_millimetres(image: sitk.Image, path: Path) -> sitk.Image:
    """``image`` with its spacing and origin in mm when its NRRD header states other ``space units`` (ITK ignores
    them); InputError for a unit that is not a length this package knows."""
    units = _nrrd_space_units(path)
    if not units or all(unit.strip().lower() in ("mm", "") for unit in units):
        return image
    factors = {_NRRD_UNITS_MM.get(unit.strip().lower()) for unit in units if unit.strip()}
    if None in factors or len(factors) != 1:
        raise InputError(f"{path} states its space units as {units}; CardiacAI reads lengths in mm (also m, cm and "
                         "um, converted). Resave the image in mm.")
    factor = factors.pop()
    dimension = min(image.GetDimension(), 3)
    image.SetSpacing(tuple(v * factor if a < dimension else v for a, v in enumerate(image.GetSpacing())))
    image.SetOrigin(tuple(v * factor if a < dimension else v for a, v in enumerate(image.GetOrigin())))
    warn_for_report(log, f"{path} states its space units as {units}: spacing and origin converted to mm "
                         f"(x {factor:g}).")
    return image


def slice_spacing_stored(path: str | os.PathLike, *, series_uid: str | None = None) -> bool:
    """Whether the image file or DICOM folder at ``path`` states its slice spacing, so that volumes from it can be
    in ml.

    False for a PNG, for a 2D NIfTI, NRRD or MetaImage and for a DICOM series of one slice without a positive
    SliceThickness: :func:`read_volume` and :func:`~cardiac_ai.io.read_dicom_series` give that one slice 1 mm, a
    stand-in, so a volume computed from it is an area in mm2 times 1 mm. True for 3D and 4D files (a one-slice 3D
    file keeps its slice thickness) and for DICOM series of several slices (their positions give the spacing).
    Only headers are read; ``series_uid`` chooses the series of a folder holding several. A folder is read as a DICOM
    series (as :func:`read_volume` reads it), not as PNG slices.

    Raises
    ------
    DataError
        A missing file or one whose header ITK cannot read; a DICOM folder as
        :func:`~cardiac_ai.io.read_dicom_series` would refuse it.
    InputError
        As :func:`~cardiac_ai.io.read_dicom_series` (e.g. several series and no ``series_uid``).
    """
    source = Path(path)
    if not source.exists():
        raise DataError(f"Input not found: {source}")
    if source.is_dir():
        from .dicom import series_headers, slice_thickness_stated

        return slice_thickness_stated(series_headers(source, series_uid=series_uid or None)[1])
    if _suffix(source) == ".png":
        return False
    if _needs_lowercase_alias(source):
        with _lowercase_alias(source) as alias:
            return slice_spacing_stored(alias)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(source))
    show_warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader.ReadImageInformation()
    except RuntimeError as e:
        raise DataError(f"Cannot read the header of {source}: {str(e).strip().splitlines()[-1]}") from e
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(show_warnings)
    return reader.GetDimension() >= 3


def check_not_detached_header(path: str | os.PathLike) -> None:
    """InputError for an output path ending .mhd or .nhdr: a detached header names its data file, which an atomic
    write would leave under its temporary name. Commands call it before reading a large input; write_volume too."""
    suffix = _suffix(Path(path))
    if suffix in (".mhd", ".nhdr"):
        raise InputError(f"Cannot write {path}: a detached header ({suffix}) and its data file cannot be written as "
                         "one file; choose .mha (for .mhd), .nrrd (for .nhdr) or .nii.gz.")


def write_volume(volume: Volume, path: str | os.PathLike, *, compress: bool = True) -> Path:
    """Write ``volume`` atomically to NIfTI, NRRD or MHA (chosen by suffix) with its exact geometry."""
    target = Path(path)
    if _suffix(target) not in VOLUME_SUFFIXES:
        raise InputError(f"Cannot write {target}: choose a suffix from {VOLUME_SUFFIXES}.")
    check_not_detached_header(target)
    image = volume_to_sitk(volume)
    with atomic_path(target) as temporary:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=compress)
        except RuntimeError as error:  # ITK's writers report a full disk or a size limit as RuntimeError
            raise OutputError(f"Could not write {target}: {_first_line(error)}") from error
        if _suffix(target) in (".nii", ".nii.gz"):
            _check_nifti_written(temporary, target)
    return target


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return next((line for line in lines if "rror" in line and not line.startswith("/")), lines[-1] if lines else "")


def _check_nifti_written(written: Path, target: Path) -> None:
    """OutputError unless ``written`` holds its whole header and voxels. ITK's NIfTI writer only prints an error
    when the disk fills up or a file-size limit is reached, and leaves a file cut short that ITK reads back without
    complaint (the missing voxels as zeros), so the file is measured before it replaces anything."""
    import gzip

    import nibabel

    try:
        image = nibabel.load(str(written))
        header = image.header  # its vox_offset reads 0 once loaded: the offset is the data object's
        expected = int(image.dataobj.offset) + int(np.prod(header.get_data_shape(), dtype=np.int64)) * int(
            header.get_data_dtype().itemsize)
        if written.name.lower().endswith(".gz"):
            with open(written, "rb") as file:  # a gzip member ends with its uncompressed size modulo 2**32
                file.seek(-4, os.SEEK_END)
                stored = int.from_bytes(file.read(4), "little")
            if stored != expected % 2**32:  # confirm by reading it all (several gzip members end otherwise)
                with gzip.open(written, "rb") as stream:
                    size = sum(len(chunk) for chunk in iter(lambda: stream.read(1 << 24), b""))
            else:
                size = expected
        else:
            size = written.stat().st_size
    except (OSError, EOFError, ValueError, zlib.error, nibabel.filebasedimages.ImageFileError) as error:
        raise OutputError(f"Could not write {target}: the file written is unreadable ({error}); is the disk full?") \
            from error
    if size < expected:
        raise OutputError(f"Could not write {target}: only {size} of its {expected} bytes were written (disk full, "
                          "or a file-size limit); nothing was replaced.")
