"""Reading LGE inputs for the fibrosis models, and the pixel grid those models work on.

The fibrosis models are trained on EMIDEC slices exported as 256 x 256 PNG without a pixel size (the heart is at the
image centre; the EMIDEC challenge paper gives 1.25 to 2 mm pixels). The models therefore work on a *nominal* grid
of :data:`EMIDEC_NOMINAL_PIXEL_MM` per pixel, a central 128 x 128 crop at the PNG's own resolution
(:data:`FIBROSIS_SPEC`):

* an input whose pixel size is unknown (PNG) is taken to have EMIDEC's pixels: no resampling, and every clinical
  number is reported in pixels;
* an input with a known spacing (NIfTI, NRRD, DICOM, or PNG with ``spacing_mm``) is resampled to the nominal pixel
  size, and clinical numbers are in mm^2 and mL.

The crop is centred on the image centre, as in EMIDEC; other inputs should be roughly centred on the LV.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from ..preprocessing import InputSpec

__all__ = [
    "EMIDEC_NOMINAL_PIXEL_MM",
    "FIBROSIS_SPEC",
    "LGEInput",
    "with_nominal_pixels",
    "read_lge_input",
]

log = logging.getLogger(__name__)

#: Pixel size (mm) assumed for EMIDEC PNG pixels, whose true size the export dropped (1.25-2 mm in the challenge).
EMIDEC_NOMINAL_PIXEL_MM = 1.5
#: The fibrosis models' input: EMIDEC's own pixels, a 128 x 128 crop at the image centre, percentile-normalised.
FIBROSIS_SPEC = InputSpec(
    in_plane_spacing_mm=(EMIDEC_NOMINAL_PIXEL_MM, EMIDEC_NOMINAL_PIXEL_MM), crop_size=(128, 128)
)

_SLICE_PNG = re.compile(r"^(?P<patient>.+)_slice(?P<slice>\d+)\.png$", re.IGNORECASE)


@dataclass(frozen=True)
class LGEInput:
    """An LGE stack as read, and whether its pixel size is known.

    Attributes
    ----------
    volume : Volume (k, j, i), the input's own array and geometry (spacing 1 x 1 x 1 when unknown).
    spacing_known : in-plane pixel size known; False for PNG input without ``spacing_mm`` (lengths in pixels).
    slice_spacing_known : slice spacing known (volumes in mL); False for PNG input without a third spacing value, for a
        2D file and for a one-slice DICOM series without SliceThickness (its one slice was given 1 mm).
    source : what was read (file, folder, or number of PNG slices).
    from_png : read from PNG slices (no DICOM series for a DICOM SEG to refer to).
    """

    volume: Volume
    spacing_known: bool
    slice_spacing_known: bool
    source: str
    from_png: bool = False


def with_nominal_pixels(volume: Volume) -> Volume:
    """The same array with in-plane spacing :data:`EMIDEC_NOMINAL_PIXEL_MM` (for inputs whose pixel size is unknown).

    Origin, direction and slice spacing are kept, so label maps computed on it map back index for index.
    """
    geometry = volume.geometry
    spacing = (EMIDEC_NOMINAL_PIXEL_MM, EMIDEC_NOMINAL_PIXEL_MM, geometry.spacing_mm[2])
    return volume.with_array(volume.array) if geometry.spacing_mm == spacing else Volume(
        volume.array, Geometry(spacing, geometry.origin_lps_mm, geometry.direction_lps), volume.axes
    )


def _png_stack(paths: Sequence[Path], spacing_mm: Sequence[float] | None) -> Volume:
    from ..io import read_volume

    slices = [read_volume(path, spacing_mm=spacing_mm if spacing_mm is not None else (1.0, 1.0, 1.0)).array[0]
              for path in paths]
    shapes = sorted({s.shape for s in slices})
    if len(shapes) > 1:
        raise InputError(f"The PNG slices differ in size {shapes}; a stack needs slices of one size.")
    spacing = (1.0, 1.0, 1.0) if spacing_mm is None else tuple(spacing_mm) + ((1.0,) if len(spacing_mm) == 2 else ())
    return Volume(np.stack(slices).astype(np.float32), Geometry(spacing_mm=spacing))  # type: ignore[arg-type]


def _has_slice_spacing(spacing_mm: Sequence[float] | None) -> bool:
    return spacing_mm is not None and len(tuple(spacing_mm)) == 3


def _png_folder(folder: Path) -> list[Path]:
    """Slice PNGs of one patient in slice order, or [] when the folder holds no PNG."""
    pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    if not pngs:
        return []
    matches = [(_SLICE_PNG.match(p.name), p) for p in pngs]
    unnamed = [p.name for m, p in matches if m is None]
    if unnamed:
        raise InputError(
            f"{folder} holds PNG files not named <patient>_slice<NNN>.png (e.g. {unnamed[0]}); put one patient's "
            "slices, named like EMIDEC's Case_P001_slice000.png, in a folder, or pass a NIfTI/NRRD stack."
        )
    patients = sorted({m["patient"] for m, _ in matches})
    if len(patients) > 1:
        raise InputError(
            f"{folder} holds slices of {len(patients)} patients ({', '.join(patients[:4])}...); the fibrosis command "
            "takes one patient's stack. Put each patient's slices in its own folder."
        )
    return [p for _, p in sorted(matches, key=lambda mp: int(mp[0]["slice"]))]


def read_lge_input(
    path: str | os.PathLike,
    *,
    spacing_mm: Sequence[float] | None = None,
    series_uid: str | None = None,
    pixel_size_unknown: bool = False,
) -> LGEInput:
    """Read an LGE short-axis stack: NIfTI/NRRD/MHA file, DICOM folder, one PNG slice, or a folder of PNG slices.

    Parameters
    ----------
    path : file or folder. A folder of ``<patient>_sliceNNN.png`` files (one patient, EMIDEC naming) becomes a stack
        in slice-number order; any other folder is read as a DICOM series.
    spacing_mm : (i, j) or (i, j, k) pixel size in mm for PNG input; None: unknown (results in pixels).
    series_uid : DICOM SeriesInstanceUID when the folder holds several series.
    pixel_size_unknown : ignore the spacing the file states (e.g. PNG slices a viewer loaded with its default 1 mm
        pixels and saved as NRRD): EMIDEC's pixel is assumed for the models and the numbers are in pixels.

    Returns
    -------
    LGEInput

    Raises
    ------
    DataError
        A missing or unreadable file or folder.
    InputError
        A 4D image, PNG slices of several patients or of different sizes, or a spacing given for a non-PNG input
        or together with ``pixel_size_unknown``.
    """
    if pixel_size_unknown and spacing_mm is not None:
        raise InputError("Give the pixel size (spacing_mm) or say it is unknown (pixel_size_unknown), not both.")
    lge = _read_lge_input(path, spacing_mm=spacing_mm, series_uid=series_uid)
    if pixel_size_unknown:
        return dataclasses.replace(lge, spacing_known=False, slice_spacing_known=False)
    return lge


def _read_lge_input(path, *, spacing_mm, series_uid) -> LGEInput:
    from ..io import read_volume
    from ..io.volumes import check_finite, slice_spacing_stored

    source = Path(path)
    if not source.exists():
        raise DataError(f"Input {source} does not exist; give an LGE NIfTI/NRRD file, DICOM folder or PNG slice(s).")
    if spacing_mm is not None and len(tuple(spacing_mm)) not in (2, 3):
        raise InputError(f"spacing_mm must be (i, j) or (i, j, k) in mm, got {spacing_mm!r}.")
    if source.is_dir():
        pngs = _png_folder(source)
        if pngs:
            volume = _png_stack(pngs, spacing_mm)
            return LGEInput(volume, spacing_mm is not None, _has_slice_spacing(spacing_mm),
                            f"{len(pngs)} PNG slices in {source}", from_png=True)
        if spacing_mm is not None:
            raise InputError("spacing_mm applies to PNG input only; DICOM folders carry their spacing.")
        from ..io.dicom import read_dicom_series_and_headers, slice_thickness_stated

        volume, headers = read_dicom_series_and_headers(source, series_uid=series_uid or None)
        check_finite(volume.array, str(source))
        # one slice without SliceThickness was given 1 mm: its scar is an area, not a volume in mL
        return LGEInput(volume.with_array(volume.array.astype(np.float32)), True, slice_thickness_stated(headers),
                        str(source))
    if source.suffix.lower() == ".png":
        volume = _png_stack([source], spacing_mm)
        return LGEInput(volume, spacing_mm is not None, _has_slice_spacing(spacing_mm), str(source), from_png=True)
    if spacing_mm is not None:
        raise InputError("spacing_mm applies to PNG input only; NIfTI, NRRD and MHA files carry their spacing.")
    volume = read_volume(source)
    if volume.axes != "kji":
        raise InputError(f"{source} is a 4D series; the fibrosis command needs one 3D LGE stack.")
    # a 2D file states no slice thickness: its scar is an area, not a volume in mL
    return LGEInput(volume.with_array(volume.array.astype(np.float32)), True, slice_spacing_stored(source),
                    str(source))
