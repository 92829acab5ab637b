"""Pixelwise T1 (MOLLI) and T2 (T2-prepared) map fitting, and where the inversion or echo times come from.

Both fits are vectorised over pixels in two stages:

1. **Grid search.** The models are linear in their amplitudes once the time constant is fixed, so for every
   candidate time constant on a log-spaced grid the best amplitudes and the residual of every pixel follow in
   closed form from one matrix product (variable projection). For MOLLI this is done for every polarity
   candidate at once.
2. **Refinement.** A few Levenberg-Marquardt iterations on all parameters, for all pixels together.

Arrays are NumPy by default; ``device=`` runs the same code with torch (for example on a GPU).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
from numpy.typing import NDArray

from ..errors import DataError, InputError
from ..geometry import Geometry, Volume
from ..progress import ProgressCallback, report
from ..provenance import Provenance

__all__ = [
    "DEFAULT_MIN_R2",
    "T1_MAX_MS",
    "T2_MAX_MS",
    "T1Fit",
    "T2Fit",
    "fit_molli",
    "fit_t2",
    "timings_from_dicom",
    "timings_from_sidecar",
]

log = logging.getLogger(__name__)

#: Pixels whose fit explains less than this fraction of the signal variance (R^2) are failures: in practice
#: noise-only pixels (air, lung) and pixels corrupted by motion or flow. Tissue at SNR 10 fits MOLLI with
#: R^2 > 0.95, but R^2 alone does not reject every noise-only pixel: fit inside a mask. Override with ``min_r2=``.
DEFAULT_MIN_R2 = 0.7
#: Largest physical T1 in ms; fitted values outside (0, T1_MAX_MS] are failures.
T1_MAX_MS = 5000.0
#: Largest physical T2 in ms; fitted values outside (0, T2_MAX_MS] are failures.
T2_MAX_MS = 1000.0

#: Log-spaced grids of time constants (ms) searched before the refinement.
_T1_STAR_GRID_MS = (50.0, 5000.0, 64)
_T2_GRID_MS = (5.0, 2000.0, 64)
#: Levenberg-Marquardt iterations after the grid search.
_LM_ITERATIONS = 8
#: Grid-search work per chunk, in (pixel, candidate) elements; bounds the memory to about 64 MB.
_CHUNK_ELEMENTS = 1 << 24

#: "T2 prep. duration = 25 ms", "T2prep=55ms", "T2-preparation: 40 ms" in ImageComments.
_T2PREP_COMMENT = re.compile(r"T2[\s_-]*prep[a-z.]*\s*(?:duration|time)?\s*[=:]\s*([-+]?\d+(?:\.\d*)?)\s*ms", re.IGNORECASE)
_SIDECAR_KEYS = {"molli": "inversion_times_ms", "t2prep": "echo_times_ms"}


# -- results ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class T1Fit:
    """Result of :func:`fit_molli`. Every map is (k, j, i) float32, NaN outside the mask and where the fit failed.

    Attributes
    ----------
    t1_ms : Look-Locker corrected T1, ``t1_star_ms * (b / a - 1)``, in ms.
    t1_star_ms : apparent T1* of the three-parameter fit, in ms.
    a, b : amplitudes of ``S(TI) = a - b exp(-TI / T1*)``, in the units of the images.
    r2 : coefficient of determination of the fit on the polarity-restored signal.
    residual_rms : root mean square of the residuals, ``sqrt(RSS / n_ti)``, in the units of the images.
    n_inverted : (k, j, i) int16, how many of the earliest frames had their sign restored; -1 where not fitted.
    geometry : the geometry of the input frames.
    n_fitted_pixels : pixels inside the mask.
    n_failed_pixels : pixels inside the mask whose fit failed or was non-physical (see :func:`fit_molli`).
    provenance : parameters (sorted inversion times, frame order, bounds, device), timings and warnings.
    """

    t1_ms: NDArray[np.float32]
    t1_star_ms: NDArray[np.float32]
    a: NDArray[np.float32]
    b: NDArray[np.float32]
    r2: NDArray[np.float32]
    residual_rms: NDArray[np.float32]
    n_inverted: NDArray[np.int16]
    geometry: Geometry
    n_fitted_pixels: int
    n_failed_pixels: int
    provenance: Provenance


@dataclass(frozen=True)
class T2Fit:
    """Result of :func:`fit_t2`. Every map is (k, j, i) float32, NaN outside the mask and where the fit failed.

    Attributes
    ----------
    t2_ms : T2 in ms.
    s0 : signal at echo time 0, in the units of the images.
    offset : constant offset C of ``model="mono_offset"``; 0 for ``model="mono"`` (NaN where not fitted).
    r2 : coefficient of determination of the fit.
    residual_rms : root mean square of the residuals, ``sqrt(RSS / n_te)``.
    model : "mono" or "mono_offset".
    geometry, n_fitted_pixels, n_failed_pixels, provenance : as in :class:`T1Fit`.
    """

    t2_ms: NDArray[np.float32]
    s0: NDArray[np.float32]
    offset: NDArray[np.float32]
    r2: NDArray[np.float32]
    residual_rms: NDArray[np.float32]
    model: str
    geometry: Geometry
    n_fitted_pixels: int
    n_failed_pixels: int
    provenance: Provenance


# -- array backend: the same kernels run on numpy arrays or torch tensors -----------------------------------
class _Backend:
    """The few operations that differ between numpy and torch (array creation and transfer)."""

    def __init__(self, device: Any) -> None:
        if device is None:
            self.xp: Any = np
            self.device = None
            self.name = "numpy (cpu)"
        else:
            import torch

            from ..device import resolve_device

            self.xp = torch
            self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
            self.name = f"torch ({self.device})"

    def asarray(self, values: Any, dtype: str) -> Any:
        if self.device is None:
            return np.ascontiguousarray(values, dtype=dtype)
        return self.xp.as_tensor(np.ascontiguousarray(values), dtype=getattr(self.xp, dtype), device=self.device)

    def arange(self, n: int) -> Any:
        return np.arange(n) if self.device is None else self.xp.arange(n, device=self.device)

    def to_numpy(self, values: Any) -> np.ndarray:
        return values if self.device is None else values.detach().cpu().numpy()


@np.errstate(all="ignore")  # degenerate pixels (all zero, constant) end up NaN and are counted as failures
def _grid_search(
    bk: _Backend,
    y: Any,
    x: np.ndarray,
    signs: np.ndarray,
    grid: np.ndarray,
    *,
    slope_sign: float,
    n_best: int,
) -> list[tuple[Any, Any, Any, Any, Any]]:
    """Best fits of ``y_p = c + s exp(-x / tau)`` over a grid of tau and polarity candidates, for one chunk.

    ``y`` is (N, n) float32, ``signs`` (P, n) +-1 (candidate p multiplies the data by ``signs[p]``), ``grid``
    (G,) in ms. ``slope_sign`` = +1 keeps only fits with s < 0 (recovery, MOLLI), -1 only s > 0 (decay).
    Returns, for the ``n_best`` best polarity candidates, (p, c, s, rate, signed data) with c, s, rate (N,).
    """
    n = x.size
    n_candidates, n_grid = signs.shape[0], grid.size
    basis = np.exp(-x[None, :] / grid[:, None])  # (G, n)
    centred = basis - basis.mean(axis=1, keepdims=True)
    norm = np.sqrt((centred**2).sum(axis=1))  # (G,)
    weights = (signs[:, None, :] * (centred / norm[:, None])[None]).reshape(n_candidates * n_grid, n).T
    weights_x = bk.asarray(weights, "float32")  # (n, P * G)

    signed_sums = y @ bk.asarray(signs.T, "float32")  # (N, P): sum_t s_pt y_t
    total_ss = (y * y).sum(-1)
    ss_centred = total_ss[:, None] - signed_sums * signed_sums / n  # (N, P)
    # RSS = ss_centred - min(slope_sign * projection, 0)^2 is smallest where slope_sign * projection is.
    projection = (y @ (slope_sign * weights_x)).reshape(-1, n_candidates, n_grid)  # (N, P, G)
    best_grid = projection.argmin(-1)  # (N, P)
    rows = bk.arange(y.shape[0])
    best_projection = projection[rows[:, None], bk.arange(n_candidates)[None, :], best_grid].clip(None, 0.0)
    best_rss = ss_centred - best_projection * best_projection  # (N, P)

    basis_mean = bk.asarray(basis.mean(axis=1), "float32")
    norm_x = bk.asarray(norm, "float32")
    grid_x = bk.asarray(grid, "float32")
    signs_x = bk.asarray(signs, "float32")
    results = []
    for _ in range(min(n_best, n_candidates)):
        p = best_rss.argmin(-1)  # (N,)
        g = best_grid[rows, p]
        slope = slope_sign * best_projection[rows, p] / norm_x[g]  # s of y = c + s e
        offset = signed_sums[rows, p] / n - slope * basis_mean[g]
        results.append((p, offset, slope, 1.0 / grid_x[g], y * signs_x[p]))
        best_rss[rows, p] = float("inf")
    return results


@np.errstate(all="ignore")
def _levenberg_marquardt(
    bk: _Backend, y: Any, x: Any, offset: Any | None, slope: Any, rate: Any, *, n_iter: int
) -> tuple[Any | None, Any, Any, Any]:
    """Refine ``y = offset + slope exp(-rate x)`` per pixel (``offset=None``: no offset term); float64 arrays.

    ``y`` is (N, n), ``x`` (n,), the parameters (N,). Returns (offset, slope, rate, rss). The normal equations
    (2 x 2 or 3 x 3 per pixel) are formed from sums and solved in closed form, with time scaled to max(x) and the
    amplitudes to each pixel's RMS signal for conditioning. Steps that do not lower a pixel's RSS, or make its rate
    non-positive, are rejected for that pixel and its damping raised (Marquardt's scaling by diag(J^T J)).
    """
    xp = bk.xp
    # Work in (n, N) layout: reductions over the first axis of a C-ordered array are much faster in NumPy.
    y = y.T.contiguous() if bk.device is not None else np.ascontiguousarray(y.T)
    x_scale = float(bk.to_numpy(x.max())) if bk.device is not None else float(x.max())
    x = x / x_scale
    y_scale = xp.sqrt((y * y).mean(0)).clip(1e-30, None)
    y = y / y_scale[None, :]
    slope, rate = slope / y_scale, rate * x_scale
    offset = None if offset is None else offset / y_scale
    n = float(y.shape[0])

    def evaluate(off: Any, s: Any, r: Any) -> tuple[Any, Any, Any]:
        e = xp.exp(-r[None, :] * x[:, None])
        residual = y - (s[None, :] * e if off is None else off[None, :] + s[None, :] * e)
        return e, residual, (residual * residual).sum(0)

    damping = xp.full_like(slope, 1e-3)
    e, residual, rss = evaluate(offset, slope, rate)
    for _ in range(n_iter):
        d = -slope[None, :] * x[:, None] * e  # d model / d rate; d model / d slope = e; d model / d offset = 1
        h_ee, h_ed, h_dd = (e * e).sum(0), (e * d).sum(0), (d * d).sum(0)
        g_e, g_d = (e * residual).sum(0), (d * residual).sum(0)
        if offset is None:
            h_ee, h_dd = h_ee * (1 + damping) + 1e-30, h_dd * (1 + damping) + 1e-30
            det = h_ee * h_dd - h_ed * h_ed
            step_s = (h_dd * g_e - h_ed * g_d) / det
            step_r = (h_ee * g_d - h_ed * g_e) / det
            new_offset = None
        else:
            h_11, h_1e, h_1d, g_1 = n * (1 + damping), e.sum(0), d.sum(0), residual.sum(0)
            h_ee, h_dd = h_ee * (1 + damping) + 1e-30, h_dd * (1 + damping) + 1e-30
            c_11 = h_ee * h_dd - h_ed * h_ed
            c_1e = h_1d * h_ed - h_1e * h_dd
            c_1d = h_1e * h_ed - h_1d * h_ee
            c_ee = h_11 * h_dd - h_1d * h_1d
            c_ed = h_1e * h_1d - h_11 * h_ed
            c_dd = h_11 * h_ee - h_1e * h_1e
            det = h_11 * c_11 + h_1e * c_1e + h_1d * c_1d
            new_offset = offset + (c_11 * g_1 + c_1e * g_e + c_1d * g_d) / det
            step_s = (c_1e * g_1 + c_ee * g_e + c_ed * g_d) / det
            step_r = (c_1d * g_1 + c_ed * g_e + c_dd * g_d) / det
        new_slope, new_rate = slope + step_s, rate + step_r
        new_e, new_residual, new_rss = evaluate(new_offset, new_slope, new_rate.clip(1e-9, None))
        accept = (new_rss < rss) & (new_rate > 0) & xp.isfinite(new_rss)
        if offset is not None:
            offset = xp.where(accept, new_offset, offset)
        slope = xp.where(accept, new_slope, slope)
        rate = xp.where(accept, new_rate, rate)
        rss = xp.where(accept, new_rss, rss)
        e = xp.where(accept[None, :], new_e, e)
        residual = xp.where(accept[None, :], new_residual, residual)
        damping = xp.where(accept, damping * 0.1, damping * 10.0).clip(1e-12, 1e12)
    offset = None if offset is None else offset * y_scale
    return offset, slope * y_scale, rate / x_scale, rss * y_scale * y_scale


# -- validation ---------------------------------------------------------------------------------------------
def _check_series(images: Volume, name: str, what: str) -> None:
    if not isinstance(images, Volume):
        raise InputError(
            f"{name} needs a Volume with axes 'tkji' (frames, k, j, i), got {type(images).__name__}. "
            "Wrap the array: Volume(array, geometry, axes='tkji')."
        )
    if images.axes != "tkji":
        raise InputError(
            f"{name} needs a series of {what} frames (Volume with axes 'tkji', shape (n, k, j, i)), got a 3D volume "
            f"of shape {images.array.shape}. Stack the frames along a new first axis and pass axes='tkji'."
        )


#: A series whose longest time is below this (ms) was given in seconds: MOLLI inversion times reach well over a
#: second, T2-prepared echo times tens of ms.
SECONDS_IF_LONGEST_BELOW_MS = {"inversion times": 50.0, "echo times": 5.0}


def _check_times(times: Sequence[float], n_frames: int, *, name: str, what: str, minimum: int, fn: str,
                 allow_zero: bool) -> np.ndarray:
    try:
        values = np.asarray([float(t) for t in times], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{fn}: {name} must be numbers in ms, got {list(times)!r}.") from e
    if values.size != n_frames:
        raise InputError(
            f"{fn} got {n_frames} frames but {values.size} {what} ({name}={values.tolist()}). Pass one time in ms "
            "per frame, in frame order; read them with timings_from_dicom or timings_from_sidecar."
        )
    if n_frames < minimum:
        raise InputError(f"{fn} needs at least {minimum} frames ({what}), got {n_frames}.")
    bad = ~np.isfinite(values) | ((values < 0) if allow_zero else (values <= 0))
    if bad.any():
        rule = "non-negative" if allow_zero else "positive"
        raise InputError(
            f"{fn}: {name} must be finite and {rule} (ms), got {values.tolist()} (bad at positions "
            f"{np.flatnonzero(bad).tolist()}). Check the units (ms, not s) and the DICOM or sidecar timing source."
        )
    longest = float(values.max())
    if longest < SECONDS_IF_LONGEST_BELOW_MS[what]:
        raise InputError(
            f"{fn}: the longest of the {what} is {longest:g} ms, too short for a real series: are {name} in seconds? "
            f"Pass them in ms (multiply by 1000): {[round(v * 1000, 3) for v in values.tolist()]}."
        )
    n_distinct = np.unique(values).size
    if n_distinct < 3:
        raise InputError(
            f"{fn}: {name} has only {n_distinct} distinct values {values.tolist()}; at least 3 are needed."
        )
    return values


def _check_min_r2(min_r2: float, fn: str) -> float:
    try:
        value = float(min_r2)
    except (TypeError, ValueError) as e:
        raise InputError(f"{fn}: min_r2 must be a number (or -inf to keep every fit), got {min_r2!r}.") from e
    if math.isnan(value):
        raise InputError(f"{fn}: min_r2 is NaN; give a number such as {DEFAULT_MIN_R2} or -inf to keep every fit.")
    return value


def _check_mask(mask: Any, shape: tuple[int, ...], fn: str) -> np.ndarray:
    if mask is None:
        return np.ones(shape, dtype=bool)
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise InputError(f"{fn}: mask must have the frames' spatial shape (k, j, i) = {shape}, got {mask.shape}.")
    return mask.astype(bool) if mask.dtype != bool else mask


def _pixels(images: Volume, order: np.ndarray, mask: np.ndarray, fn: str) -> np.ndarray:
    """(N, n) float32 signal of the masked pixels, frames in ``order``."""
    frames = images.array.reshape(images.array.shape[0], -1)[:, mask.ravel()]
    finite = np.isfinite(frames)
    if not finite.all():
        n_bad = int((~finite.all(axis=0)).sum())
        frames_bad = np.flatnonzero(~finite.all(axis=1)).tolist()
        raise InputError(
            f"{fn}: {n_bad} pixels inside the mask have NaN or Inf values (frames {frames_bad}). Replace them or "
            "exclude them with mask=."
        )
    return np.ascontiguousarray(frames[order].T, dtype=np.float32)


def _scatter(values: np.ndarray, mask: np.ndarray, ok: np.ndarray, dtype: Any = np.float32, fill: Any = np.nan):
    out = np.full(mask.shape, fill, dtype=dtype)
    out[mask] = np.where(ok, values, fill).astype(dtype)
    return out


def _r_squared(rss: np.ndarray, ss_total: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 - rss / ss_total


# -- MOLLI ------------------------------------------------------------------------------------------------
def fit_molli(
    images: Volume,
    inversion_times_ms: Sequence[float],
    *,
    mask: NDArray[np.bool_] | None = None,
    signed: bool = False,
    min_r2: float = DEFAULT_MIN_R2,
    device: Any = None,
    progress: ProgressCallback | None = None,
) -> T1Fit:
    """Fit S(TI) = A - B exp(-TI / T1*) pixel by pixel and apply the Look-Locker correction.

    Parameters
    ----------
    images : Volume with axes "tkji"
        MOLLI frames, array (n_ti, k, j, i), magnitude unless ``signed``. Frames may be in acquisition order:
        they are sorted by inversion time together with ``inversion_times_ms``.
    inversion_times_ms : sequence of float, length n_ti
        Effective inversion time of each frame in ms (> 0), in the order of ``images``.
    mask : (k, j, i) bool ndarray, optional
        Pixels to fit (default: all). Pixels outside it are NaN in every map and not counted as failures.
    signed : bool
        True for phase-sensitive (signed) frames: the data are fitted as they are. False (default) for magnitude
        frames, whose polarity is restored (see Notes).
    min_r2 : float
        Pixels with R^2 below this are failures (default :data:`DEFAULT_MIN_R2`); ``-inf`` keeps every fit.
    device : None, str or torch.device
        None (default): NumPy on the CPU. "cpu", "cuda", "cuda:N", "auto" or a ``torch.device``: torch.
    progress : ProgressCallback, optional
        Called with (fraction, message) after each chunk of pixels.

    Returns
    -------
    T1Fit
        ``t1_ms = t1_star_ms * (b / a - 1)``; maps (k, j, i) float32 sharing ``images.geometry``.

    Raises
    ------
    InputError
        If ``images`` is not a (n, k, j, i) series; frames and inversion times differ in number; there are fewer
        than 4 frames or fewer than 3 distinct times; a time is not positive and finite; the mask has the wrong
        shape; a pixel in the mask is NaN or Inf; magnitude frames (``signed=False``) hold negative values.

    Notes
    -----
    *Polarity restoration.* Magnitude images lose the sign of the longitudinal magnetisation before its null.
    With the frames sorted by TI, the first p frames are negated for every p = 0 .. n_ti - 1, each candidate is
    fitted, and the one with the lowest residual is kept (Xue et al., Magn Reson Med 2012;67:1644). The best
    two candidates of the grid search are both refined and the better one kept, which settles the frame nearest
    the null. Fits are constrained to B > 0 (recovering signal).

    *Failures.* A pixel in the mask fails, and is NaN in every map, when a parameter is not finite, A <= 0, T1 is
    outside (0, :data:`T1_MAX_MS`] ms, or R^2 < ``min_r2``. ``n_failed_pixels`` counts them and a WARNING is
    logged. Without a mask, background pixels (noise only) are fitted too; polarity restoration lets a noise curve
    fit well, so many of them pass the R^2 test (about half in ``benchmarks/mapping_fit_speed.py``): read the maps
    inside a mask or contour.

    *Method.* Grid search over 64 log-spaced T1* from 50 to 5000 ms with A, B in closed form for every pixel and
    polarity candidate at once (one matrix product), then 8 Levenberg-Marquardt iterations on (A, B, 1/T1*).
    """
    start = time.perf_counter()
    fn = "fit_molli"
    _check_series(images, fn, "MOLLI")
    n_frames = images.array.shape[0]
    times = _check_times(inversion_times_ms, n_frames, name="inversion_times_ms", what="inversion times",
                         minimum=4, fn=fn, allow_zero=False)
    spatial = images.array.shape[1:]
    mask = _check_mask(mask, spatial, fn)
    min_r2 = _check_min_r2(min_r2, fn)
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    y_all = _pixels(images, order, mask, fn)
    if not signed and y_all.size and float(y_all.min()) < 0:
        raise InputError(
            f"{fn}: the frames hold negative values (min {float(y_all.min()):g}) but signed=False expects magnitude "
            "images. For phase-sensitive (signed) MOLLI frames pass signed=True (fit-map --signed)."
        )
    bk = _Backend(device)
    n_pixels = y_all.shape[0]
    # Candidate p (row) negates the first p frames; a signed series has only the identity.
    frame = np.arange(n_frames)
    signs = np.ones((1, n_frames)) if signed else np.where(frame[None, :] < frame[:, None], -1.0, 1.0)
    grid = np.geomspace(*_T1_STAR_GRID_MS)
    x64 = bk.asarray(sorted_times, "float64")
    n_best = 1 if signed else 2

    a = np.empty(n_pixels, np.float64)
    b = np.empty(n_pixels, np.float64)
    rate = np.empty(n_pixels, np.float64)
    rss = np.empty(n_pixels, np.float64)
    ss_total = np.empty(n_pixels, np.float64)
    n_inverted = np.empty(n_pixels, np.int16)
    chunk = max(1024, _CHUNK_ELEMENTS // (signs.shape[0] * grid.size))
    for first in range(0, n_pixels, chunk):
        part = slice(first, min(first + chunk, n_pixels))
        y = bk.asarray(y_all[part], "float32")
        best = None
        candidates = _grid_search(bk, y, sorted_times, signs, grid, slope_sign=1.0, n_best=n_best)
        for p, offset, slope, r, y_signed in candidates:
            y64 = _f64(bk, y_signed)
            off, s, r, res = _levenberg_marquardt(
                bk, y64, x64, _f64(bk, offset), _f64(bk, slope), _f64(bk, r), n_iter=_LM_ITERATIONS
            )
            centred = y64 - y64.mean(-1)[:, None]
            fit = [bk.to_numpy(v) for v in (p, off, s, r, res, (centred * centred).sum(-1))]
            if best is None:
                best = fit
            else:
                better = fit[4] < best[4]
                best = [np.where(better, new, old) for new, old in zip(fit, best)]
        p, off, s, r, res, sst = best
        n_inverted[part], a[part], b[part], rate[part], rss[part], ss_total[part] = p, off, -s, r, res, sst
        report(progress, part.stop / max(n_pixels, 1), f"MOLLI fit: {part.stop}/{n_pixels} pixels")

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t1_star = 1.0 / rate
        t1 = t1_star * (b / a - 1.0)
        r2 = _r_squared(rss, ss_total)
    finite = np.isfinite(t1) & np.isfinite(t1_star) & np.isfinite(a) & np.isfinite(b) & np.isfinite(r2)
    ok = finite & (a > 0) & (t1 > 0) & (t1 <= T1_MAX_MS) & (r2 >= min_r2)
    n_failed = int(n_pixels - ok.sum())

    provenance = Provenance(
        command=fn,
        parameters={
            "model": "S(TI) = A - B exp(-TI/T1*), T1 = T1* (B/A - 1)",
            "inversion_times_ms": times.tolist(),
            "inversion_times_sorted_ms": sorted_times.tolist(),
            "frame_order": order.tolist(),
            "signed": bool(signed),
            "polarity_restoration": not signed,
            "min_r2": float(min_r2),
            "t1_range_ms": [0.0, T1_MAX_MS],
            "t1_star_grid_ms": list(_T1_STAR_GRID_MS),
            "lm_iterations": _LM_ITERATIONS,
            "n_fitted_pixels": n_pixels,
            "n_failed_pixels": n_failed,
        },
        device=bk.name,
    )
    provenance.timings_s["fit_molli"] = time.perf_counter() - start
    if n_failed:
        provenance.warn(
            f"fit_molli: {n_failed} of {n_pixels} pixels failed (non-physical T1 or R^2 < {min_r2}); they are NaN.",
            log,
        )
    log.info("fit_molli: %d pixels in %.2f s on %s", n_pixels, provenance.timings_s["fit_molli"], bk.name)
    return T1Fit(
        t1_ms=_scatter(t1, mask, ok),
        t1_star_ms=_scatter(t1_star, mask, ok),
        a=_scatter(a, mask, ok),
        b=_scatter(b, mask, ok),
        r2=_scatter(r2, mask, ok),
        residual_rms=_scatter(np.sqrt(np.maximum(rss, 0) / n_frames), mask, ok),
        n_inverted=_scatter(n_inverted, mask, ok, np.int16, -1),
        geometry=images.geometry,
        n_fitted_pixels=n_pixels,
        n_failed_pixels=n_failed,
        provenance=provenance,
    )


def _f64(bk: _Backend, values: Any) -> Any:
    return values.double() if bk.device is not None else values.astype(np.float64)


# -- T2 ---------------------------------------------------------------------------------------------------
def fit_t2(
    images: Volume,
    echo_times_ms: Sequence[float],
    *,
    model: Literal["mono", "mono_offset"] = "mono",
    mask: NDArray[np.bool_] | None = None,
    min_r2: float = DEFAULT_MIN_R2,
    device: Any = None,
    progress: ProgressCallback | None = None,
) -> T2Fit:
    """Fit a mono-exponential T2 decay pixel by pixel.

    Parameters
    ----------
    images : Volume with axes "tkji"
        T2-prepared (or multi-echo) magnitude frames, array (n_te, k, j, i), any frame order.
    echo_times_ms : sequence of float, length n_te
        T2 preparation duration (or echo time) of each frame in ms (>= 0), in the order of ``images``.
    model : "mono" or "mono_offset"
        "mono": S = S0 exp(-TE / T2), needs at least 3 frames. "mono_offset": S = S0 exp(-TE / T2) + C, which
        absorbs a noise floor or a slowly relaxing component, needs at least 4 frames, and echo times that span
        the decay: with T2-prep times up to 55 ms it cannot tell a long T2 (blood) from the offset.
    mask, min_r2, device, progress
        As in :func:`fit_molli`.

    Returns
    -------
    T2Fit
        Maps (k, j, i) float32 sharing ``images.geometry``; ``offset`` is 0 for "mono".

    Raises
    ------
    InputError
        If ``images`` is not a (n, k, j, i) series; frames and echo times differ in number; there are too few
        frames for the model or fewer than 3 distinct times; a time is negative or not finite; the model is
        unknown; the mask has the wrong shape; a pixel in the mask is NaN or Inf or (magnitude images) negative.

    Notes
    -----
    "mono" starts from a log-linear fit weighted by S^2 (which undoes the noise amplification of the logarithm);
    "mono_offset" from a grid search over 64 log-spaced T2 from 5 to 2000 ms with S0 and C in closed form.
    Both are then refined by 8 Levenberg-Marquardt iterations. A pixel in the mask fails, and is NaN in every map,
    when a parameter is not finite, S0 <= 0, T2 is outside (0, :data:`T2_MAX_MS`] ms, or R^2 < ``min_r2``.
    """
    start = time.perf_counter()
    fn = "fit_t2"
    if model not in ("mono", "mono_offset"):
        raise InputError(f"{fn}: model must be 'mono' or 'mono_offset', got {model!r}.")
    _check_series(images, fn, "T2-prepared")
    n_frames = images.array.shape[0]
    minimum = 3 if model == "mono" else 4
    times = _check_times(echo_times_ms, n_frames, name="echo_times_ms", what="echo times", minimum=minimum,
                         fn=f"{fn} (model={model!r})", allow_zero=True)
    spatial = images.array.shape[1:]
    mask = _check_mask(mask, spatial, fn)
    min_r2 = _check_min_r2(min_r2, fn)
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    y_all = _pixels(images, order, mask, fn)
    if y_all.size and float(y_all.min()) < 0:  # a decay fitted through negative values is biased, not failed
        raise InputError(
            f"{fn}: the frames hold negative values (min {float(y_all.min()):g}); T2 fitting expects magnitude "
            "images. Is this a phase, real-part or difference image?"
        )
    bk = _Backend(device)
    n_pixels = y_all.shape[0]
    x64 = bk.asarray(sorted_times, "float64")

    s0 = np.empty(n_pixels, np.float64)
    offset = np.zeros(n_pixels, np.float64)
    rate = np.empty(n_pixels, np.float64)
    rss = np.empty(n_pixels, np.float64)
    ss_total = np.empty(n_pixels, np.float64)
    grid = np.geomspace(*_T2_GRID_MS)
    chunk = max(1024, _CHUNK_ELEMENTS // grid.size)
    for first in range(0, n_pixels, chunk):
        part = slice(first, min(first + chunk, n_pixels))
        y = bk.asarray(y_all[part], "float32")
        y64 = _f64(bk, y)
        if model == "mono":
            s_init, r_init = _log_linear_start(bk, y64, x64)
            off, s, r, res = _levenberg_marquardt(bk, y64, x64, None, s_init, r_init, n_iter=_LM_ITERATIONS)
        else:
            ((_, off0, s_init, r_init, _),) = _grid_search(
                bk, y, sorted_times, np.ones((1, n_frames)), grid, slope_sign=-1.0, n_best=1
            )
            off, s, r, res = _levenberg_marquardt(
                bk, y64, x64, _f64(bk, off0), _f64(bk, s_init), _f64(bk, r_init), n_iter=_LM_ITERATIONS
            )
            offset[part] = bk.to_numpy(off)
        centred = y64 - y64.mean(-1)[:, None]
        s0[part], rate[part], rss[part] = bk.to_numpy(s), bk.to_numpy(r), bk.to_numpy(res)
        ss_total[part] = bk.to_numpy((centred * centred).sum(-1))
        report(progress, part.stop / max(n_pixels, 1), f"T2 fit: {part.stop}/{n_pixels} pixels")

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        t2 = 1.0 / rate
        r2 = _r_squared(rss, ss_total)
    finite = np.isfinite(t2) & np.isfinite(s0) & np.isfinite(offset) & np.isfinite(r2)
    ok = finite & (s0 > 0) & (t2 > 0) & (t2 <= T2_MAX_MS) & (r2 >= min_r2)
    n_failed = int(n_pixels - ok.sum())
    provenance = Provenance(
        command=fn,
        parameters={
            "model": model,
            "equation": "S = S0 exp(-TE/T2)" + (" + C" if model == "mono_offset" else ""),
            "echo_times_ms": times.tolist(),
            "echo_times_sorted_ms": sorted_times.tolist(),
            "frame_order": order.tolist(),
            "min_r2": float(min_r2),
            "t2_range_ms": [0.0, T2_MAX_MS],
            "lm_iterations": _LM_ITERATIONS,
            "n_fitted_pixels": n_pixels,
            "n_failed_pixels": n_failed,
        },
        device=bk.name,
    )
    provenance.timings_s["fit_t2"] = time.perf_counter() - start
    if n_failed:
        provenance.warn(
            f"fit_t2: {n_failed} of {n_pixels} pixels failed (non-physical T2 or R^2 < {min_r2}); they are NaN.", log
        )
    log.info("fit_t2 (%s): %d pixels in %.2f s on %s", model, n_pixels, provenance.timings_s["fit_t2"], bk.name)
    return T2Fit(
        t2_ms=_scatter(t2, mask, ok),
        s0=_scatter(s0, mask, ok),
        offset=_scatter(offset, mask, ok),
        r2=_scatter(r2, mask, ok),
        residual_rms=_scatter(np.sqrt(np.maximum(rss, 0) / n_frames), mask, ok),
        model=model,
        geometry=images.geometry,
        n_fitted_pixels=n_pixels,
        n_failed_pixels=n_failed,
        provenance=provenance,
    )


@np.errstate(all="ignore")
def _log_linear_start(bk: _Backend, y: Any, x: Any) -> tuple[Any, Any]:
    """(S0, 1/T2) from ln S = ln S0 - TE / T2, least squares weighted by S^2; 1/T2 = 1/50 ms where it fails."""
    xp = bk.xp
    positive = y.clip(1e-6, None)
    w = positive * positive
    log_y = xp.log(positive)
    sw, swx, swxx = w.sum(-1), (w * x).sum(-1), (w * x * x).sum(-1)
    swy, swxy = (w * log_y).sum(-1), (w * x * log_y).sum(-1)
    det = sw * swxx - swx * swx
    slope = (sw * swxy - swx * swy) / det
    intercept = (swy - slope * swx) / sw
    usable = xp.isfinite(slope) & (slope < 0)
    rate = xp.where(usable, -slope, 1.0 / 50.0)
    s0 = xp.where(usable & xp.isfinite(intercept), xp.exp(intercept.clip(None, 700.0)), xp.amax(y, -1))
    return s0, rate


# -- timing sources ---------------------------------------------------------------------------------------
def timings_from_dicom(
    sources: Sequence[str | os.PathLike | Any],
    *,
    kind: Literal["molli", "t2prep"] = "molli",
    tag: tuple[int, int] | None = None,
) -> list[float]:
    """Inversion times or T2 preparation durations (ms) of DICOM frames, in the order given.

    Parameters
    ----------
    sources : sequence of paths or ``pydicom.Dataset``
        One per frame, in the order of the frames passed to :func:`fit_molli` or :func:`fit_t2`. Files are read
        without pixel data.
    kind : "molli" or "t2prep"
        "molli" reads InversionTime (0018,0082). "t2prep" reads, in this order: a note such as
        ``T2 prep. duration = 25 ms`` in ImageComments (0020,4000), as some scanners write for T2-prepared
        mapping frames; else EchoTime (0018,0081), but only when it differs between frames (a constant EchoTime is
        the readout's echo time, not the T2 preparation).
    tag : (group, element), optional
        Read this (e.g. private) tag instead, as a number in ms, for every frame. Private T2-prep tags differ
        between vendors and software versions; give the one your scanner uses.

    Returns
    -------
    list of float, one time in ms per source.

    Raises
    ------
    InputError
        If ``sources`` is empty or ``kind`` unknown.
    DataError
        If a file cannot be read, or a frame lacks the timing (the message names the frame, by its file when it has
        one, and the attribute, and says to use :func:`timings_from_sidecar` instead).
    """
    import pydicom

    if kind not in _SIDECAR_KEYS:
        raise InputError(f"timings_from_dicom: kind must be 'molli' or 't2prep', got {kind!r}.")
    sources = list(sources)
    if not sources:
        raise InputError("timings_from_dicom got no files or datasets; pass one per frame.")
    datasets = []
    names = []
    for index, source in enumerate(sources):
        if isinstance(source, pydicom.Dataset):
            datasets.append(source)
            filename = getattr(source, "filename", None)  # a dataset read from a file keeps its path
            names.append(str(filename) if isinstance(filename, (str, os.PathLike)) and str(filename)
                         else f"dataset {index}")
            continue
        try:
            datasets.append(pydicom.dcmread(source, stop_before_pixels=True))
        except Exception as e:  # pydicom raises many types for unreadable files
            raise DataError(f"timings_from_dicom: cannot read {source} as DICOM ({type(e).__name__}: {e}).") from e
        names.append(str(source))

    hint = "Give the times in a sidecar file instead (timings_from_sidecar: JSON or one-column CSV)."
    if tag is not None:
        return [_number(ds, tag, name, f"tag ({tag[0]:04X},{tag[1]:04X})", hint) for ds, name in zip(datasets, names)]
    if kind == "molli":
        label = "InversionTime (0018,0082)"
        return [_number(ds, (0x0018, 0x0082), name, label, hint) for ds, name in zip(datasets, names)]

    from_comments = [_t2prep_from_comments(ds) for ds in datasets]
    if all(value is not None for value in from_comments):
        return [float(value) for value in from_comments]
    echo_times = [_number(ds, (0x0018, 0x0081), name, "EchoTime (0018,0081)", hint, missing=None)
                  for ds, name in zip(datasets, names)]
    if all(value is not None for value in echo_times) and len(set(echo_times)) > 1:
        return [float(value) for value in echo_times]
    missing = [name for name, value in zip(names, from_comments) if value is None]
    raise DataError(
        f"timings_from_dicom: no T2 preparation duration in {len(missing)} of {len(names)} frames (first: "
        f"{missing[0]}): no 'T2 prep ... = N ms' in ImageComments (0020,4000), and EchoTime (0018,0081) "
        f"{'is missing' if None in echo_times else f'is the same in every frame ({echo_times[0]} ms)'}. "
        f"Pass tag=(group, element) of your scanner's private T2-prep tag. {hint}"
    )


def _number(ds: Any, tag: tuple[int, int], name: str, label: str, hint: str, *, missing: Any = "raise") -> Any:
    from pydicom.multival import MultiValue

    element = ds.get(tag)
    value = None if element is None else element.value
    if value in (None, "", b""):
        if missing != "raise":
            return missing
        raise DataError(f"timings_from_dicom: {name} has no {label}. {hint}")
    try:
        number = float(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)
    except (TypeError, ValueError) as e:
        raise DataError(f"timings_from_dicom: {name} has {label} = {value!r}, not a number in ms. {hint}") from e
    if not math.isfinite(number):
        raise DataError(f"timings_from_dicom: {name} has {label} = {number}, not a finite time in ms. {hint}")
    return number


def _t2prep_from_comments(ds: Any) -> float | None:
    match = _T2PREP_COMMENT.search(str(ds.get("ImageComments", "") or ""))
    return float(match.group(1)) if match else None


def timings_from_sidecar(
    path: str | os.PathLike, *, kind: Literal["molli", "t2prep"] | None = None
) -> list[float]:
    """Inversion times or echo (T2 preparation) times in ms from a sidecar file.

    Two formats are read:

    - **JSON** (``.json``): an object with one list of numbers, ``{"inversion_times_ms": [100, 180, ...]}`` for
      MOLLI or ``{"echo_times_ms": [0, 25, 55]}`` for T2-prepared series. Other keys are ignored.
    - **CSV** (``.csv``, ``.txt``): one column, one time in ms per line, in frame order; an optional first line
      that is not a number is a header (e.g. ``inversion_time_ms``); blank lines are skipped.

    Parameters
    ----------
    path : path of the sidecar file.
    kind : "molli" or "t2prep", optional
        Which JSON key to read ("inversion_times_ms" or "echo_times_ms"). None: whichever of the two is present
        (exactly one must be). Ignored for CSV.

    Returns
    -------
    list of float, the times in ms in frame order.

    Raises
    ------
    InputError
        If the suffix is not .json, .csv or .txt, or ``kind`` is unknown.
    DataError
        If the file is missing or unreadable, the key is missing (or both keys are present and ``kind`` is None),
        or a value is not a finite number.
    """
    path = Path(path)
    if kind is not None and kind not in _SIDECAR_KEYS:
        raise InputError(f"timings_from_sidecar: kind must be 'molli', 't2prep' or None, got {kind!r}.")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".csv", ".txt"):
        raise InputError(
            f"timings_from_sidecar: {path.name} is neither JSON (.json) nor a one-column CSV (.csv, .txt)."
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DataError(f"timings_from_sidecar: cannot read {path} ({e}).") from e
    if suffix == ".json":
        return _times_from_json(text, path, kind)
    return _times_from_csv(text, path)


def _times_from_json(text: str, path: Path, kind: str | None) -> list[float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"timings_from_sidecar: {path} is not valid JSON ({e}).") from e
    keys = list(_SIDECAR_KEYS.values())
    if not isinstance(data, dict):
        raise DataError(f"timings_from_sidecar: {path} must hold a JSON object with one of {keys}.")
    if kind is not None:
        key = _SIDECAR_KEYS[kind]
        if key not in data:
            raise DataError(f"timings_from_sidecar: {path} has no {key!r} (found keys {sorted(data)}).")
    else:
        present = [k for k in keys if k in data]
        if len(present) != 1:
            found = "both" if present else "neither"
            raise DataError(
                f"timings_from_sidecar: {path} must hold exactly one of {keys}, found {found}; pass kind= to choose."
            )
        key = present[0]
    values = data[key]
    if not isinstance(values, list) or not values:
        raise DataError(f"timings_from_sidecar: {path}: {key!r} must be a non-empty list of numbers in ms.")
    return [_finite(v, f"{path}: {key}[{i}]") for i, v in enumerate(values)]


def _times_from_csv(text: str, path: Path) -> list[float]:
    lines = enumerate(csv.reader(text.splitlines()), start=1)
    rows = [(number, row) for number, row in lines if any(c.strip() for c in row)]
    values: list[float] = []
    for position, (line, row) in enumerate(rows):
        cells = [c.strip() for c in row if c.strip()]
        if len(cells) != 1:
            raise DataError(
                f"timings_from_sidecar: {path} line {line} has {len(cells)} columns; expected one time in ms."
            )
        try:
            values.append(float(cells[0]))
        except ValueError as e:
            if position == 0:
                continue  # header
            raise DataError(f"timings_from_sidecar: {path} line {line}: {cells[0]!r} is not a number.") from e
        if not math.isfinite(values[-1]):
            raise DataError(f"timings_from_sidecar: {path} line {line}: {cells[0]!r} is not a finite time.")
    if not values:
        raise DataError(f"timings_from_sidecar: {path} holds no times.")
    return values


def _finite(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise DataError(f"timings_from_sidecar: {where} = {value!r} is not a finite number in ms.")
    return float(value)
