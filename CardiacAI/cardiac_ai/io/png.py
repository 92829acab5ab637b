"""Reading greyscale PNG slices as one-slice volumes, and writing 2D masks as PNG.

A PNG stores no pixel size. Unless ``spacing_mm`` is given, pixels are taken as 1 mm with a logged warning, so
every distance computed from such a volume is in pixels.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from .atomic import atomic_path, warn_for_report

__all__ = ["read_png", "write_png"]

log = logging.getLogger(__name__)


def _spacing_ijk(spacing_mm: Sequence[float] | None, source: Path) -> tuple[float, float, float]:
    if spacing_mm is None:
        warn_for_report(log, f"{source}: PNG stores no pixel size; using 1 x 1 x 1 mm, so distances, areas and "
                             "volumes are in pixels. Pass spacing_mm (--spacing on the command line) if you know it.")
        return (1.0, 1.0, 1.0)
    values = tuple(spacing_mm)
    if len(values) == 2:
        values = (*values, 1.0)
    if len(values) != 3:
        raise InputError(f"spacing_mm must be (i, j) or (i, j, k) in mm, got {spacing_mm!r}.")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"The pixel spacing given for {source.name} (--spacing) must be positive mm, got "
                         f"{list(spacing_mm)}.")
    return values


def read_png(
    path: str | os.PathLike,
    *,
    spacing_mm: tuple[float, float] | tuple[float, float, float] | None = None,
) -> Volume:
    """Read an 8- or 16-bit greyscale PNG as a one-slice volume.

    Parameters
    ----------
    path : PNG file.
    spacing_mm : pixel size (i, j) or (i, j, k) in mm; i runs along a row (left to right), j down the image.
        When None, 1 mm is used and a warning is logged.

    Returns
    -------
    Volume
        Array (1, rows, columns) = (k, j, i), dtype uint8 or uint16 as stored (so masks keep their exact codes);
        origin 0, identity direction. An RGB(A) or palette image whose colour channels are all equal becomes
        greyscale (alpha is ignored).

    Raises
    ------
    DataError
        Missing or unreadable file.
    InputError
        A colour image (channels differ), an unsupported pixel mode, or a bad ``spacing_mm``.
    """
    from PIL import Image, UnidentifiedImageError

    source = Path(path)
    if not source.is_file():
        raise DataError(f"PNG file not found: {source}")
    try:
        with Image.open(source) as image:
            image.load()
            mode = original_mode = image.mode
            if mode == "P":
                image = image.convert("RGBA")
                mode = image.mode
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"Cannot read {source} as an image: {e}") from e

    if mode == "1":
        array = array.astype(np.uint8)
    elif mode in ("RGB", "RGBA", "LA"):
        channels = array[..., :3] if mode != "LA" else array[..., :1]
        if not np.all(channels == channels[..., :1]):
            raise InputError(
                f"{source} is a colour image (PIL mode {original_mode} with differing colour channels); CardiacAI "
                "needs greyscale. Convert it first (PIL: Image.open(path).convert('L')); a label mask stored as "
                "palette indices must be re-saved as greyscale codes (Image.fromarray(np.asarray(im), 'L'))."
            )
        array = channels[..., 0]
    elif mode.startswith("I;16"):
        array = array.astype(np.uint16)
    elif mode == "I":
        if array.min() < 0 or array.max() > np.iinfo(np.uint16).max:
            raise InputError(f"{source} holds values outside 0..65535; CardiacAI reads 8- or 16-bit PNG.")
        array = array.astype(np.uint16)
    elif mode != "L":
        raise InputError(f"{source} has PIL mode {mode!r}; CardiacAI reads 8- or 16-bit greyscale PNG.")
    if array.ndim != 2:
        raise InputError(f"{source}: expected a 2D image, got pixel array of shape {array.shape}.")
    geometry = Geometry(spacing_mm=_spacing_ijk(spacing_mm, source))
    return Volume(np.ascontiguousarray(array)[np.newaxis], geometry)


def write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a 2D uint8 or uint16 array (j, i) atomically as a greyscale PNG (e.g. a label mask).

    Parameters
    ----------
    array : (j, i) uint8, uint16 or bool ndarray; a (1, j, i) one-slice array is accepted too.
        Bool is written as 0/1 uint8. Values are written as they are: no scaling.
    path : output file; written through a temporary file, so a failure leaves any old file intact.

    Raises
    ------
    InputError
        If the array is not 2D (or one slice) or has another dtype.
    """
    from PIL import Image

    data = np.asarray(array)
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise InputError(f"write_png needs a 2D (j, i) array, got shape {data.shape}. Write one slice per file.")
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.dtype not in (np.uint8, np.uint16):
        raise InputError(
            f"write_png needs uint8 or uint16 values, got {data.dtype}. Convert explicitly "
            "(e.g. labels.astype(np.uint8), or rescale an image to 0..255)."
        )
    target = Path(path)
    with atomic_path(target) as temporary:
        Image.fromarray(np.ascontiguousarray(data)).save(temporary, format="PNG")
    return target
