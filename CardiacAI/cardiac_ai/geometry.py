"""Image geometry and the array-plus-geometry type that every public function takes.

Arrays are numpy in (k, j, i) order (slice, row, column), as ``SimpleITK.GetArrayFromImage`` and
``slicer.util.arrayFromVolume`` return them. Geometry is ITK's: spacing in (i, j, k) order, origin and
direction in LPS. Slicer's IJKToRAS matrix is the same mapping with x and y negated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "Geometry",
    "Volume",
    "LPS_TO_RAS",
    "InPlaneTurn",
    "NO_TURN",
    "short_axis_display_turn",
    "align_axes",
    "pad_to_reference_grid",
]

#: Multiplying an LPS point by this gives RAS (and vice versa).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])

_IDENTITY_DIRECTION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _as_float_tuple(values: Sequence[float], length: int, name: str) -> tuple[float, ...]:
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be {length} numbers, got {values!r}.") from e
    if len(result) != length:
        raise InputError(f"{name} must have {length} values, got {len(result)}: {values!r}.")
    if not all(math.isfinite(v) for v in result):
        raise InputError(f"{name} must be finite, got {result}.")
    return result


def _rounded(values: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 4) for v in values)


#: How far (in voxels) two geometries' voxel centres may be apart and still count as one lattice. DICOM stores
#: positions as decimal strings, often to 0.01 mm: two readers of one series (this package's, highdicom's for a SEG
#: written on it) then differ by a few thousandths of a voxel at the far slices.
LATTICE_ATOL_VOXEL = 1e-2


@dataclass(frozen=True)
class Geometry:
    """Where a (k, j, i) voxel array lies in patient space.

    Parameters
    ----------
    spacing_mm : (3,) floats in (i, j, k) order, as ITK; every value > 0.
    origin_lps_mm : (3,) floats, position of voxel (0, 0, 0)'s centre in LPS.
    direction_lps : 9 floats, row-major 3 x 3 matrix whose *columns* are the i, j, k axis directions in LPS,
        as ``SimpleITK.Image.GetDirection()``.
    """

    spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_lps: tuple[float, ...] = _IDENTITY_DIRECTION

    def __post_init__(self) -> None:
        spacing = _as_float_tuple(self.spacing_mm, 3, "spacing_mm")
        if any(s <= 0 for s in spacing):
            raise InputError(
                f"spacing_mm must be positive in every axis, got {spacing}. "
                "The file's header lacks a valid voxel size; set the spacing explicitly."
            )
        object.__setattr__(self, "spacing_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", _as_float_tuple(self.origin_lps_mm, 3, "origin_lps_mm"))
        direction = _as_float_tuple(self.direction_lps, 9, "direction_lps")
        matrix = np.asarray(direction).reshape(3, 3)
        if abs(np.linalg.det(matrix)) < 1e-6:
            raise InputError(f"direction_lps is singular: {direction}. Each axis needs its own direction.")
        object.__setattr__(self, "direction_lps", direction)

    # -- derived views -------------------------------------------------------------------------------------
    @property
    def spacing_kji_mm(self) -> tuple[float, float, float]:
        """Spacing in array-axis order (k, j, i)."""
        i, j, k = self.spacing_mm
        return (k, j, i)

    @property
    def direction_matrix(self) -> np.ndarray:
        """(3, 3) float64 matrix whose columns are the i, j, k directions in LPS."""
        return np.asarray(self.direction_lps, dtype=np.float64).reshape(3, 3)

    def ijk_to_lps_matrix(self) -> np.ndarray:
        """(4, 4) homogeneous matrix mapping (i, j, k, 1) voxel indices to LPS millimetres."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.direction_matrix @ np.diag(self.spacing_mm)
        matrix[:3, 3] = self.origin_lps_mm
        return matrix

    def ijk_to_ras_matrix(self) -> np.ndarray:
        """(4, 4) Slicer IJKToRAS matrix (``vtkMRMLVolumeNode.GetIJKToRASMatrix``)."""
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        return flip @ self.ijk_to_lps_matrix()

    @classmethod
    def from_ijk_to_ras_matrix(cls, matrix: np.ndarray | Sequence[Sequence[float]]) -> "Geometry":
        """Geometry from a Slicer IJKToRAS 4 x 4 matrix (spacing = column norms)."""
        ijk_to_ras = np.asarray(matrix, dtype=np.float64)
        if ijk_to_ras.shape != (4, 4):
            raise InputError(f"IJKToRAS must be a 4 x 4 matrix, got shape {ijk_to_ras.shape}.")
        ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ijk_to_ras
        scaled = ijk_to_lps[:3, :3]
        spacing = np.linalg.norm(scaled, axis=0)
        if np.any(spacing <= 0):
            raise InputError(f"IJKToRAS has a zero-length axis: {ijk_to_ras.tolist()}.")
        direction = scaled / spacing
        return cls(tuple(spacing), tuple(ijk_to_lps[:3, 3]), tuple(direction.ravel()))

    def index_to_lps(self, kji: np.ndarray) -> np.ndarray:
        """Map (N, 3) array indices in (k, j, i) order to (N, 3) LPS points in mm."""
        kji = np.atleast_2d(np.asarray(kji, dtype=np.float64))
        ijk = kji[:, ::-1]
        return ijk @ (self.direction_matrix @ np.diag(self.spacing_mm)).T + np.asarray(self.origin_lps_mm)

    def with_spacing(self, spacing_mm: Sequence[float]) -> "Geometry":
        return replace(self, spacing_mm=tuple(spacing_mm))

    def is_close(self, other: "Geometry", *, atol_mm: float = 1e-4, atol_direction: float = 1e-5) -> bool:
        """True when both geometries place every voxel at the same point (within tolerances)."""
        return not self.differences(other, atol_mm=atol_mm, atol_direction=atol_direction)

    def differences(self, other: "Geometry", *, atol_mm: float = 1e-4, atol_direction: float = 1e-5) -> list[str]:
        """What differs between the two geometries beyond the tolerances, in words for an error message (spacing,
        origin, direction with both values); empty when :meth:`is_close`."""
        found = []
        if not np.allclose(self.spacing_mm, other.spacing_mm, atol=atol_mm):
            found.append(f"spacing {_rounded(self.spacing_mm)} vs {_rounded(other.spacing_mm)} mm")
        if not np.allclose(self.origin_lps_mm, other.origin_lps_mm, atol=atol_mm):
            found.append(f"origin {_rounded(self.origin_lps_mm)} vs {_rounded(other.origin_lps_mm)} mm (LPS)")
        if not np.allclose(self.direction_lps, other.direction_lps, atol=atol_direction):
            found.append(f"direction {_rounded(self.direction_lps)} vs {_rounded(other.direction_lps)}")
        return found

    def lattice_offset_kji(
        self, other: "Geometry", other_shape_kji: Sequence[int], *, atol_voxel: float = LATTICE_ATOL_VOXEL
    ) -> tuple[int, int, int] | None:
        """Where an array of shape ``other_shape_kji`` with geometry ``other`` lies on this geometry's voxel lattice.

        Returns the (k, j, i) index here of its voxel (0, 0, 0) when every one of its voxel centres is within
        ``atol_voxel`` voxel of a voxel centre here (same spacing and direction, origin a whole number of voxels
        away), else None. The lattice has no extent: the offset may be negative or lie beyond any array.
        """
        to_here = np.linalg.inv(self.ijk_to_lps_matrix()) @ other.ijk_to_lps_matrix()
        offset_ijk = np.rint(to_here[:3, 3])
        # The mismatch is affine in the index, so the box's corners bound it; an axis of one voxel still spans one
        # voxel, so that a single slice of another thickness is not taken for a slice of this lattice.
        span_ijk = np.maximum(np.asarray(other_shape_kji, dtype=np.float64)[::-1] - 1.0, 1.0)
        corners = np.array([[i, j, k] for i in (0.0, span_ijk[0]) for j in (0.0, span_ijk[1])
                            for k in (0.0, span_ijk[2])])
        mismatch = corners @ (to_here[:3, :3] - np.eye(3)).T + (to_here[:3, 3] - offset_ijk)
        if np.max(np.abs(mismatch)) > atol_voxel:
            return None
        return tuple(int(v) for v in offset_ijk[::-1])  # type: ignore[return-value]

    def to_dict(self) -> dict:
        return {
            "spacing_mm": list(self.spacing_mm),
            "origin_lps_mm": list(self.origin_lps_mm),
            "direction_lps": list(self.direction_lps),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Geometry":
        return cls(tuple(data["spacing_mm"]), tuple(data["origin_lps_mm"]), tuple(data["direction_lps"]))


Axes = Literal["kji", "tkji"]


@dataclass(frozen=True)
class Volume:
    """A numpy array with the geometry of its spatial axes.

    ``array`` is (k, j, i), or (t, k, j, i) when ``axes == "tkji"`` (cine frames, inversion or echo times).
    The array is not copied; functions that change it return a new Volume.
    """

    array: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    axes: Axes = "kji"

    def __post_init__(self) -> None:
        if not isinstance(self.array, np.ndarray):
            raise InputError(f"Volume.array must be a numpy array, got {type(self.array).__name__}.")
        if not isinstance(self.geometry, Geometry):
            raise InputError(f"Volume.geometry must be a Geometry, got {type(self.geometry).__name__}.")
        expected = {"kji": 3, "tkji": 4}.get(self.axes)
        if expected is None:
            raise InputError(f"axes must be 'kji' or 'tkji', got {self.axes!r}.")
        if self.array.ndim != expected:
            hint = (
                " For a 4D series pick one frame (e.g. --frame N) or pass axes='tkji'."
                if self.array.ndim == 4
                else ""
            )
            raise InputError(
                f"Volume with axes {self.axes!r} needs a {expected}D array, got shape {self.array.shape}.{hint}"
            )
        if self.array.size == 0:
            raise InputError(f"Volume array is empty (shape {self.array.shape}).")

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """(k, j, i) size."""
        return tuple(self.array.shape[-3:])  # type: ignore[return-value]

    def with_array(self, array: np.ndarray, axes: Axes | None = None) -> "Volume":
        """Same geometry, new array (e.g. a label map predicted from this image)."""
        return Volume(array, self.geometry, axes or ("kji" if array.ndim == 3 else "tkji"))

    def frame(self, index: int) -> "Volume":
        """One frame of a (t, k, j, i) series as a (k, j, i) volume (its own copy of the voxels)."""
        if self.axes != "tkji":
            raise InputError("frame() needs a (t, k, j, i) series; this volume is already 3D.")
        n_frames = self.array.shape[0]
        if not 0 <= index < n_frames:  # no negative indices: a frame number is what the user reads off the scanner
            raise InputError(f"Frame {index} does not exist; the series has {n_frames} frames (0..{n_frames - 1}).")
        # a copy, not a view: the whole series (hundreds of MB) can then be freed while the frame is in use
        return Volume(np.array(self.array[index]), self.geometry, "kji")


@dataclass(frozen=True)
class InPlaneTurn:
    """How the rows and columns of a (..., j, i) array are reordered in-plane (transposed, then reversed), without
    resampling: every voxel keeps its LPS position, and :meth:`undo` gives the stored array back exactly."""

    transpose: bool = False
    flip_j: bool = False
    flip_i: bool = False

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_j or self.flip_i)

    @property
    def is_mirror(self) -> bool:
        """True when the turn reverses the slices' handedness (a mirror, not a rotation)."""
        return (self.transpose + self.flip_j + self.flip_i) % 2 == 1

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array as the turn shows it (a view where numpy allows)."""
        out = np.swapaxes(array, -1, -2) if self.transpose else array
        if self.flip_j:
            out = out[..., ::-1, :]
        if self.flip_i:
            out = out[..., ::-1]
        return out

    def undo(self, array: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`apply`: a turned array back in the stored order."""
        out = array[..., ::-1] if self.flip_i else array
        if self.flip_j:
            out = out[..., ::-1, :]
        return np.swapaxes(out, -1, -2) if self.transpose else out

    def undo_points(self, points_ji: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """(N, 2) fractional (row, column) positions on the turned array -> the same points on the stored array,
        whose shape (..., j, i) is ``shape``."""
        points = np.asarray(points_ji, dtype=np.float64)
        rows, columns = self.shape(shape)[-2:]
        row = rows - 1 - points[:, 0] if self.flip_j else points[:, 0]
        column = columns - 1 - points[:, 1] if self.flip_i else points[:, 1]
        return np.column_stack([column, row] if self.transpose else [row, column])

    def shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The turned array's shape (the last two axes swapped by a transpose)."""
        shape = tuple(int(n) for n in shape)
        return (*shape[:-2], shape[-1], shape[-2]) if self.transpose else shape

    def geometry(self, geometry: Geometry, shape_kji: Sequence[int]) -> Geometry:
        """The geometry of the turned (k, j, i) array: the same voxels in the same LPS places."""
        if self.is_identity:
            return geometry
        _, n_j, n_i = (int(n) for n in shape_kji)
        axes = np.asarray(geometry.direction_matrix, dtype=np.float64)
        spacing = geometry.spacing_mm
        # stored axis (0: i, 1: j) that becomes the turned i and j axes
        source_i, source_j = (1, 0) if self.transpose else (0, 1)
        size = {0: n_i, 1: n_j}
        first = np.zeros(3)  # stored (i, j, k) index of the turned array's first voxel
        if self.flip_i:
            first[source_i] = size[source_i] - 1
        if self.flip_j:
            first[source_j] = size[source_j] - 1
        direction = np.column_stack([axes[:, source_i] * (-1.0 if self.flip_i else 1.0),
                                     axes[:, source_j] * (-1.0 if self.flip_j else 1.0), axes[:, 2]])
        origin = (geometry.ijk_to_lps_matrix() @ np.append(first, 1.0))[:3]
        return Geometry((spacing[source_i], spacing[source_j], spacing[2]), tuple(float(v) for v in origin),
                        tuple(float(v) for v in direction.ravel()))

    def describe(self) -> str:
        """In words, for logs and reports."""
        if self.is_identity:
            return "as stored"
        degrees = {(False, False, False): 0, (False, True, True): 180, (True, True, False): 90,
                   (True, False, True): 270}
        key = (self.transpose, self.flip_j, self.flip_i)
        if key in degrees:
            return f"turned {degrees[key]} degrees in-plane"
        return "mirrored in-plane" + ("" if key in ((False, False, True), (False, True, False)) else " and turned")

    def to_dict(self) -> dict:
        return {"transpose": self.transpose, "flip_j": self.flip_j, "flip_i": self.flip_i}

    @classmethod
    def from_dict(cls, data: dict | None) -> "InPlaneTurn":
        unknown = sorted(set(data or {}) - {"transpose", "flip_j", "flip_i"})
        if unknown:
            raise InputError(f"Unknown in-plane turn keys {unknown}; expected transpose, flip_j, flip_i.")
        return cls(**{key: bool(value) for key, value in (data or {}).items()})


NO_TURN = InPlaneTurn()

#: Directions in LPS that every supine or prone patient's heart shares, whatever the scanner's planning: the
#: patient's left, and roughly from the apex to the base (towards right, posterior and superior).
_PATIENT_LEFT_LPS = np.array([1.0, 0.0, 0.0])
_APEX_TO_BASE_LPS = np.array([-1.0, 1.0, 1.0]) / math.sqrt(3.0)
#: The columns point as far to the patient's left as they can; between equals, as far posterior, then superior.
_TIE_BREAKERS_LPS = (_PATIENT_LEFT_LPS, np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, 1.0]))
#: Below this |cos| between the slices' viewing direction and the apex-to-base direction, a stack's handedness says
#: nothing about the anatomy (slices along the long axis): it is kept as stored.
_MIN_HANDEDNESS_COS = 0.2


def short_axis_display_turn(geometry: Geometry) -> InPlaneTurn:
    """The in-plane turn that shows a stack's slices the way the CardiacAI networks learnt short-axis images: viewed
    from the apex (as radiology displays a short-axis slice), the columns (i) running towards the patient's left.

    Only the direction cosines decide: a stack stored rotated or mirrored but with a correct header (a NIfTI
    reoriented by nibabel's ``as_closest_canonical`` or MONAI's ``Orientation``, a file flipped by a converter) is
    turned back, and a stack already shown that way (the ACDC and EMIDEC files, whose headers hold the identity, and
    short-axis DICOM as scanners store it) is left as it is. A header that lies about the orientation cannot be
    caught here. Every storage order of the same short-axis slices gets the same display (the columns within 45
    degrees of the patient's left), so the networks' results do not depend on it. A plane along the apex-to-base
    axis (a long-axis view, whose handedness says nothing about the anatomy) is turned but never mirrored, so its
    mirrored storages stay mirrored.
    """
    axes = geometry.direction_matrix
    stored_i, stored_j = axes[:, 0], axes[:, 1]
    stored_view = float(np.cross(stored_i, stored_j) @ _APEX_TO_BASE_LPS)
    candidates = []
    for transpose in (False, True):
        for flip_j in (False, True):
            for flip_i in (False, True):
                turn = InPlaneTurn(transpose, flip_j, flip_i)
                column, row = (stored_j, stored_i) if transpose else (stored_i, stored_j)
                column, row = -column if flip_i else column, -row if flip_j else row
                viewed_from_apex = float(np.cross(column, row) @ _APEX_TO_BASE_LPS) > 0
                if abs(stored_view) < _MIN_HANDEDNESS_COS:
                    allowed = not turn.is_mirror
                else:
                    allowed = viewed_from_apex
                if allowed:
                    # ties (columns 45 degrees either side of the left, as DICOM's 0.707107 writes them) are broken
                    # by physical directions, never by the storage order: the same slices get the same display
                    key = tuple(round(float(column @ axis), 6) for axis in _TIE_BREAKERS_LPS)
                    candidates.append((key, turn))
    return max(candidates, key=lambda candidate: candidate[0])[1]


def align_axes(volume: Volume, reference: Geometry, *, atol_direction: float = 1e-4) -> Volume:
    """``volume`` with its axes in the order and sense of ``reference``'s, when they are the same axes permuted or
    reversed (a label map saved in another orientation, a DICOM SEG stacked the other way): the array is transposed
    and flipped, never resampled, and every voxel keeps its LPS position. Otherwise ``volume`` is returned as is.
    """
    if volume.axes != "kji":
        return volume
    mapping = reference.direction_matrix.T @ volume.geometry.direction_matrix  # (reference axis, own axis)
    permutation = np.argmax(np.abs(mapping), axis=1)  # own axis (i, j, k order) for each reference axis
    signs = np.sign(mapping[np.arange(3), permutation])
    expected = np.zeros((3, 3))
    expected[np.arange(3), permutation] = signs
    if sorted(permutation.tolist()) != [0, 1, 2] or not np.allclose(mapping, expected, atol=atol_direction):
        return volume
    if np.array_equal(permutation, [0, 1, 2]) and np.all(signs > 0):
        return volume
    array_ijk = np.transpose(volume.array, (2, 1, 0))
    reordered = np.transpose(array_ijk, tuple(int(a) for a in permutation))
    reversed_axes = tuple(int(b) for b in np.flatnonzero(signs < 0))
    if reversed_axes:
        reordered = np.flip(reordered, axis=reversed_axes)
    first_voxel_ijk = np.zeros(3)
    for b in reversed_axes:
        first_voxel_ijk[permutation[b]] = array_ijk.shape[permutation[b]] - 1
    origin = (volume.geometry.ijk_to_lps_matrix() @ np.append(first_voxel_ijk, 1.0))[:3]
    spacing = tuple(float(volume.geometry.spacing_mm[a]) for a in permutation)
    geometry = Geometry(spacing, tuple(float(v) for v in origin), reference.direction_lps)
    return Volume(np.ascontiguousarray(np.transpose(reordered, (2, 1, 0))), geometry)


def pad_to_reference_grid(
    volume: Volume, reference: Volume, *, fill: float = 0, atol_voxel: float = LATTICE_ATOL_VOXEL, what: str = "labels",
    reference_name: str = "image",
) -> Volume:
    """``volume`` on ``reference``'s grid: a (k, j, i) volume whose voxels lie on the reference's voxel lattice and
    cover the whole grid or a box inside it, padded with ``fill`` to the reference's shape.

    This is what 3D Slicer writes when it saves a segmentation cropped to its contents (``.seg.nrrd``): the
    image's spacing and direction, an origin whole voxels away, a smaller extent. Axes in another order or sense
    (the same lattice saved in another orientation) are reordered first (:func:`align_axes`). Nothing is
    resampled.

    Parameters
    ----------
    volume : Volume, axes "kji"
        The array to place (e.g. a label map); not modified.
    reference : Volume
        Gives the grid: its geometry and its spatial shape (a (t, k, j, i) reference gives its frames' grid).
    fill : value of the voxels ``volume`` does not cover (0: background).
    atol_voxel : how far, in voxels, a voxel centre of ``volume`` may be from the reference's nearest one.
    what, reference_name : how the error messages name the two (e.g. "labels", "image").

    Returns
    -------
    Volume with the reference's shape and geometry and ``volume``'s dtype (sharing ``volume``'s array when it
    already had the reference's shape). Whether it was padded: its shape differs from ``volume.spatial_shape``.

    Raises
    ------
    InputError
        ``volume`` is not 3D; its voxels are not on the reference's lattice (other spacing or direction, or an
        origin a fraction of a voxel away: the message names the differing fields); or it reaches beyond the
        reference's grid.
    """
    if not isinstance(volume, Volume) or volume.axes != "kji":
        raise InputError(f"The {what} must be one 3D (k, j, i) cardiac_ai Volume.")
    grid, grid_shape = reference.geometry, reference.spatial_shape
    volume = align_axes(volume, grid)
    shape = volume.spatial_shape
    offset = grid.lattice_offset_kji(volume.geometry, shape, atol_voxel=atol_voxel)
    if offset is None:
        raise InputError(
            f"The {what} do not lie on the {reference_name}'s voxel lattice: "
            + "; ".join(_lattice_differences(volume.geometry, grid, reference_name)) + f". Resample the {what} "
            f"onto the {reference_name}'s grid (in Slicer: export the segmentation to a labelmap with the "
            f"{reference_name} as reference geometry)."
        )
    end = tuple(o + n for o, n in zip(offset, shape))
    if any(o < 0 for o in offset) or any(e > n for e, n in zip(end, grid_shape)):
        last = tuple(e - 1 for e in end)
        raise InputError(
            f"The {what} lie on the {reference_name}'s voxel lattice but reach beyond the {reference_name}: they "
            f"cover its voxels (k, j, i) {offset} to {last}, and the {reference_name} has {grid_shape} "
            f"(origin_lps_mm {_rounded(volume.geometry.origin_lps_mm)} vs the {reference_name}'s "
            f"{_rounded(grid.origin_lps_mm)}). They may cover part of the {reference_name} (the rest is taken as "
            f"background), not more: crop them to the {reference_name} or resample them onto its grid."
        )
    if shape == grid_shape:
        return Volume(volume.array, grid)
    padded = np.full(grid_shape, fill, dtype=volume.array.dtype)
    padded[tuple(slice(o, e) for o, e in zip(offset, end))] = volume.array
    return Volume(padded, grid)


def _lattice_differences(found: Geometry, expected: Geometry, reference_name: str) -> list[str]:
    """Why ``found`` is off ``expected``'s lattice, field by field, for an error message."""
    differences = [
        f"{name} {_rounded(getattr(found, name))} vs the {reference_name}'s {_rounded(getattr(expected, name))}"
        for name, same in (
            ("spacing_mm", np.allclose(found.spacing_mm, expected.spacing_mm, rtol=1e-5, atol=0.0)),
            ("direction_lps", np.allclose(found.direction_lps, expected.direction_lps, atol=1e-5)),
        )
        if not same
    ]
    if not differences:  # same axes: the origin is a fraction of a voxel off
        to_expected = np.linalg.inv(expected.ijk_to_lps_matrix()) @ found.ijk_to_lps_matrix()
        offset_kji = tuple(round(float(v), 3) for v in to_expected[:3, 3][::-1])
        differences.append(
            f"origin_lps_mm {_rounded(found.origin_lps_mm)} vs the {reference_name}'s "
            f"{_rounded(expected.origin_lps_mm)}, {offset_kji} voxels (k, j, i) away: not a whole number"
        )
    return differences
