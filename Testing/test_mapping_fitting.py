"""Pixelwise MOLLI T1 and T2 fitting, and reading inversion / echo times from DICOM and sidecars."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.optimize import curve_fit

from cardiac_ai.errors import DataError, InputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.mapping.fitting import (
    T1_MAX_MS,
    fit_molli,
    fit_t2,
    timings_from_dicom,
    timings_from_sidecar,
)

#: MOLLI 5(3)3 at 60 bpm in acquisition order: first inversion 100 ms + n RR, second inversion 180 ms + n RR.
MOLLI_TIS_MS = [100.0, 1100.0, 2100.0, 3100.0, 4100.0, 180.0, 1180.0, 2180.0]
#: T2 preparation durations of the paper's T2-prepared bSSFP (TE 0, 25, 55 ms).
T2PREP_TES_MS = [0.0, 25.0, 55.0]
#: A longer echo train, needed to separate a slow decay from a constant offset.
MULTI_ECHO_TES_MS = [0.0, 15.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 360.0]
GEOMETRY = Geometry((1.5, 1.5, 8.0), (10.0, -20.0, 30.0))


def _molli_signal(t1_ms: float, a: float = 400.0, b_over_a: float = 1.9) -> np.ndarray:
    """Signed S(TI) = A - B exp(-TI / T1*) with T1* = T1 / (B/A - 1), at MOLLI_TIS_MS, (n_ti,)."""
    t1_star = t1_ms / (b_over_a - 1.0)
    return a - a * b_over_a * np.exp(-np.asarray(MOLLI_TIS_MS) / t1_star)


def _magnitude(signal: np.ndarray, shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Rician magnitude of a (n,) signal broadcast over ``shape``: (n, *shape) float32."""
    clean = signal.reshape((-1,) + (1,) * len(shape)) * np.ones((1,) + shape)
    noisy = clean + rng.normal(0.0, sigma, clean.shape) + 1j * rng.normal(0.0, sigma, clean.shape)
    return np.abs(noisy).astype(np.float32)


def _molli_series(rng: np.random.Generator, sigma: float = 6.0) -> Volume:
    """(8, 1, 20, 20) magnitude MOLLI frames: columns 0-9 myocardium (T1 1000 ms), 10-19 blood (T1 1500 ms)."""
    myocardium = _magnitude(_molli_signal(1000.0), (1, 20, 10), sigma, rng)
    blood = _magnitude(_molli_signal(1500.0, a=600.0), (1, 20, 10), sigma, rng)
    return Volume(np.concatenate([myocardium, blood], axis=-1), GEOMETRY, "tkji")


def _relative_error(values: np.ndarray, truth: float) -> float:
    return abs(float(np.nanmedian(values)) - truth) / truth


# -- MOLLI ------------------------------------------------------------------------------------------------
def test_fit_molli_recovers_myocardium_and_blood_t1_within_2_percent():
    fit = fit_molli(_molli_series(np.random.default_rng(1)), MOLLI_TIS_MS)

    assert _relative_error(fit.t1_ms[..., :10], 1000.0) < 0.02
    assert _relative_error(fit.t1_ms[..., 10:], 1500.0) < 0.02
    assert _relative_error(fit.t1_star_ms[..., :10], 1000.0 / 0.9) < 0.02
    assert _relative_error(fit.b[..., :10] / fit.a[..., :10], 1.9) < 0.02
    assert fit.n_failed_pixels == 0 and fit.n_fitted_pixels == 400
    assert np.nanmin(fit.r2) > 0.95
    assert fit.t1_ms.shape == (1, 20, 20) and fit.t1_ms.dtype == np.float32
    assert fit.geometry == GEOMETRY
    # Frames before the null (TI 100, 180 ms and, for myocardium, ~700 ms null: 2 frames) are restored.
    assert np.median(fit.n_inverted[..., :10]) == 2


def test_fit_molli_polarity_restoration_is_what_makes_t1_right():
    series = _molli_series(np.random.default_rng(2))
    order = np.argsort(MOLLI_TIS_MS)
    times = np.asarray(MOLLI_TIS_MS)[order]
    curve = series.array[order, 0, 0, :10].mean(axis=-1)  # mean magnitude curve of the myocardium

    def model(ti, a, b, t1_star):
        return a - b * np.exp(-ti / t1_star)

    (a, b, t1_star), _ = curve_fit(model, times, curve, p0=(400.0, 760.0, 1100.0), maxfev=20000)
    naive_t1 = t1_star * (b / a - 1.0)
    fit = fit_molli(series, MOLLI_TIS_MS)

    assert abs(naive_t1 - 1000.0) / 1000.0 > 0.10  # fitting magnitudes as they are is badly wrong
    assert _relative_error(fit.t1_ms[..., :10], 1000.0) < 0.02


def test_fit_molli_unsorted_inversion_times_give_the_same_maps_as_sorted():
    series = _molli_series(np.random.default_rng(3))
    order = np.argsort(MOLLI_TIS_MS)
    sorted_series = series.with_array(series.array[order], axes="tkji")

    unsorted_fit = fit_molli(series, MOLLI_TIS_MS)
    sorted_fit = fit_molli(sorted_series, np.asarray(MOLLI_TIS_MS)[order])

    np.testing.assert_allclose(unsorted_fit.t1_ms, sorted_fit.t1_ms, rtol=1e-5)
    assert unsorted_fit.provenance.parameters["frame_order"] == order.tolist()


def test_fit_molli_signed_frames_are_fitted_without_polarity_restoration():
    rng = np.random.default_rng(4)
    signal = _molli_signal(1200.0)[:, None, None, None] * np.ones((1, 1, 10, 10))
    signed = (signal + rng.normal(0.0, 4.0, signal.shape)).astype(np.float32)

    fit = fit_molli(Volume(signed, GEOMETRY, "tkji"), MOLLI_TIS_MS, signed=True)

    assert _relative_error(fit.t1_ms, 1200.0) < 0.02
    assert np.all(fit.n_inverted == 0)


def test_fit_molli_masked_pixels_are_nan_and_not_counted_as_failures():
    series = _molli_series(np.random.default_rng(5))
    mask = np.zeros((1, 20, 20), dtype=bool)
    mask[0, 5:15, 2:8] = True

    fit = fit_molli(series, MOLLI_TIS_MS, mask=mask)

    for field in ("t1_ms", "t1_star_ms", "a", "b", "r2", "residual_rms"):
        values = getattr(fit, field)
        assert np.isnan(values[~mask]).all() and np.isfinite(values[mask]).all(), field
    assert np.all(fit.n_inverted[~mask] == -1)
    assert fit.n_fitted_pixels == 60 and fit.n_failed_pixels == 0


def test_fit_molli_low_r2_and_nonphysical_pixels_are_nan_and_counted():
    rng = np.random.default_rng(6)
    series = _molli_series(rng).array.copy()
    series[:, 0, :4, :] = np.abs(rng.normal(0.0, 6.0, (8, 4, 20)))  # air: noise only, mostly low R^2
    series[:, 0, 4, :] = _magnitude(_molli_signal(8000.0), (20,), 0.5, rng)  # T1 8000 ms > T1_MAX_MS
    volume = Volume(series, GEOMETRY, "tkji")

    fit = fit_molli(volume, MOLLI_TIS_MS, min_r2=0.7)
    unfiltered = fit_molli(volume, MOLLI_TIS_MS, min_r2=-np.inf)

    expected_nan = ~np.isfinite(unfiltered.t1_ms) | (unfiltered.r2 < 0.7)
    np.testing.assert_array_equal(np.isnan(fit.t1_ms), expected_nan)
    assert expected_nan[0, :4].sum() > 20  # the rule catches noise-only pixels
    assert np.isnan(fit.t1_ms[0, 4]).all() and np.isnan(unfiltered.t1_ms[0, 4]).all() and T1_MAX_MS < 8000.0
    assert np.isfinite(fit.t1_ms[0, 5:]).all()
    assert fit.n_failed_pixels == int(expected_nan.sum())
    assert any("failed" in w for w in fit.provenance.warnings)


def test_fit_molli_torch_cpu_matches_numpy_and_reports_progress():
    series = _molli_series(np.random.default_rng(7))
    calls: list[float] = []

    numpy_fit = fit_molli(series, MOLLI_TIS_MS, progress=lambda fraction, message: calls.append(fraction))
    torch_fit = fit_molli(series, MOLLI_TIS_MS, device="cpu")

    np.testing.assert_allclose(torch_fit.t1_ms, numpy_fit.t1_ms, rtol=1e-3)
    assert "torch" in torch_fit.provenance.device and "numpy" in numpy_fit.provenance.device
    assert calls and calls[-1] == 1.0 and calls == sorted(calls)


@pytest.mark.parametrize(
    ("images", "times", "message"),
    [
        (np.ones((8, 1, 4, 4)), MOLLI_TIS_MS[:7], "8 frames but 7 inversion times"),
        (np.ones((3, 1, 4, 4)), MOLLI_TIS_MS[:3], "at least 4 frames"),
        (np.ones((8, 1, 4, 4)), [0.0] + MOLLI_TIS_MS[1:], "finite and positive"),
        (np.ones((8, 1, 4, 4)), [float("nan")] + MOLLI_TIS_MS[1:], "finite and positive"),
        (np.ones((8, 1, 4, 4)), [100.0, 100.0, 200.0, 200.0] * 2, "only 2 distinct"),
        (np.ones((8, 1, 4, 4)), [t / 1000 for t in MOLLI_TIS_MS], "in seconds"),
        (np.full((8, 1, 4, 4), np.nan), MOLLI_TIS_MS, "NaN or Inf"),
        (-np.ones((8, 1, 4, 4)), MOLLI_TIS_MS, "signed=True"),
    ],
)
def test_fit_molli_rejects_bad_series_and_times(images, times, message):
    with pytest.raises(InputError, match=message):
        fit_molli(Volume(images.astype(np.float32), GEOMETRY, "tkji"), times)


def test_fit_molli_rejects_a_3d_volume_and_a_wrong_mask():
    with pytest.raises(InputError, match="3D volume"):
        fit_molli(Volume(np.ones((8, 4, 4), np.float32), GEOMETRY), MOLLI_TIS_MS)
    with pytest.raises(InputError, match="mask must have"):
        fit_molli(Volume(np.ones((8, 1, 4, 4), np.float32), GEOMETRY, "tkji"), MOLLI_TIS_MS, mask=np.ones((4, 4)))


def test_fit_molli_and_fit_t2_reject_a_nan_r2_threshold():
    with pytest.raises(InputError, match="min_r2 is NaN"):
        fit_molli(_molli_series(np.random.default_rng(0)), MOLLI_TIS_MS, min_r2=float("nan"))
    with pytest.raises(InputError, match="min_r2 must be a number"):
        fit_t2(Volume(np.ones((3, 1, 2, 2), np.float32), GEOMETRY, "tkji"), T2PREP_TES_MS, min_r2="high")


def test_fit_molli_ignores_nan_outside_the_mask():
    series = _molli_series(np.random.default_rng(8)).array.copy()
    series[:, 0, 0, 0] = np.nan
    mask = np.ones((1, 20, 20), dtype=bool)
    mask[0, 0, 0] = False

    fit = fit_molli(Volume(series, GEOMETRY, "tkji"), MOLLI_TIS_MS, mask=mask)

    assert np.isnan(fit.t1_ms[0, 0, 0]) and fit.n_failed_pixels == 0


# -- T2 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("t2_ms", [45.0, 250.0])
@pytest.mark.parametrize(
    ("model", "echo_times", "offset"), [("mono", T2PREP_TES_MS, 0.0), ("mono_offset", MULTI_ECHO_TES_MS, 40.0)]
)
def test_fit_t2_recovers_t2_within_2_percent(t2_ms, model, echo_times, offset):
    rng = np.random.default_rng(int(t2_ms))
    signal = 500.0 * np.exp(-np.asarray(echo_times) / t2_ms) + offset
    order = np.random.default_rng(0).permutation(len(echo_times))  # frames in any order
    images = _magnitude(signal[order], (1, 16, 16), 4.0, rng)

    fit = fit_t2(Volume(images, GEOMETRY, "tkji"), np.asarray(echo_times)[order], model=model)

    assert _relative_error(fit.t2_ms, t2_ms) < 0.02
    assert _relative_error(fit.s0, 500.0) < 0.03
    assert fit.n_failed_pixels == 0 and fit.model == model
    if model == "mono":
        assert np.all(fit.offset == 0.0)
    else:
        assert abs(float(np.nanmedian(fit.offset)) - offset) < 4.0


def test_fit_t2_constant_signal_is_nonphysical_and_masked_pixels_are_nan():
    rng = np.random.default_rng(9)
    images = _magnitude(500.0 * np.exp(-np.asarray(T2PREP_TES_MS) / 50.0), (1, 6, 6), 2.0, rng)
    images[:, 0, 0, :] = 300.0  # no decay: T2 infinite, outside (0, 1000] ms
    mask = np.ones((1, 6, 6), dtype=bool)
    mask[0, 5, 5] = False

    fit = fit_t2(Volume(images, GEOMETRY, "tkji"), T2PREP_TES_MS, mask=mask)

    assert np.isnan(fit.t2_ms[0, 0]).all() and np.isnan(fit.t2_ms[0, 5, 5])
    assert fit.n_failed_pixels == 6 and fit.n_fitted_pixels == 35


@pytest.mark.parametrize(
    ("n_frames", "times", "model", "message"),
    [
        (2, [0.0, 25.0], "mono", "at least 3 frames"),
        (3, T2PREP_TES_MS, "mono_offset", "at least 4 frames"),
        (3, [0.0, 25.0], "mono", "3 frames but 2 echo times"),
        (3, [-5.0, 25.0, 55.0], "mono", "finite and non-negative"),
        (3, [0.0, 0.025, 0.055], "mono", "in seconds"),
        (3, T2PREP_TES_MS, "biexponential", "model must be"),
    ],
)
def test_fit_t2_rejects_bad_series_and_times(n_frames, times, model, message):
    with pytest.raises(InputError, match=message):
        fit_t2(Volume(np.ones((n_frames, 1, 4, 4), np.float32), GEOMETRY, "tkji"), times, model=model)


def test_fit_t2_refuses_negative_frames_instead_of_fitting_a_biased_decay():
    rng = np.random.default_rng(3)
    images = _magnitude(500.0 * np.exp(-np.asarray(T2PREP_TES_MS) / 50.0), (1, 4, 4), 2.0, rng)
    images[-1, 0, 1, 1] = -20.0  # a real-part or background-subtracted frame
    with pytest.raises(InputError, match="negative values .*magnitude images"):
        fit_t2(Volume(images, GEOMETRY, "tkji"), T2PREP_TES_MS)
    mask = np.ones((1, 4, 4), dtype=bool)
    mask[0, 1, 1] = False  # outside the mask the value is not fitted, so not refused
    assert fit_t2(Volume(images, GEOMETRY, "tkji"), T2PREP_TES_MS, mask=mask).n_fitted_pixels == 15


def test_fit_t2_rejects_a_3d_volume():
    with pytest.raises(InputError, match="3D volume"):
        fit_t2(Volume(np.ones((3, 4, 4), np.float32), GEOMETRY), T2PREP_TES_MS)


# -- timing sources -----------------------------------------------------------------------------------------
def test_timings_from_sidecar_reads_json_and_one_column_csv(tmp_path):
    (tmp_path / "molli.json").write_text(json.dumps({"inversion_times_ms": MOLLI_TIS_MS, "note": "5(3)3"}))
    (tmp_path / "t2.csv").write_text("echo_time_ms\n0\n25\n\n55.5\n")
    (tmp_path / "plain.txt").write_text("100\n180\n")

    assert timings_from_sidecar(tmp_path / "molli.json") == MOLLI_TIS_MS
    assert timings_from_sidecar(tmp_path / "molli.json", kind="molli") == MOLLI_TIS_MS
    assert timings_from_sidecar(tmp_path / "t2.csv") == [0.0, 25.0, 55.5]
    assert timings_from_sidecar(tmp_path / "plain.txt") == [100.0, 180.0]


def test_timings_from_sidecar_rejects_bad_files(tmp_path):
    (tmp_path / "both.json").write_text(json.dumps({"inversion_times_ms": [1], "echo_times_ms": [2]}))
    (tmp_path / "t2.json").write_text(json.dumps({"echo_times_ms": [0, "x"]}))
    (tmp_path / "bad.csv").write_text("100\nabc\n")
    (tmp_path / "wide.csv").write_text("100,200\n")

    with pytest.raises(DataError, match="exactly one of"):
        timings_from_sidecar(tmp_path / "both.json")
    with pytest.raises(DataError, match="has no 'inversion_times_ms'"):
        timings_from_sidecar(tmp_path / "t2.json", kind="molli")
    with pytest.raises(DataError, match="not a finite number"):
        timings_from_sidecar(tmp_path / "t2.json")
    with pytest.raises(DataError, match="line 2"):
        timings_from_sidecar(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="2 columns"):
        timings_from_sidecar(tmp_path / "wide.csv")
    with pytest.raises(DataError, match="cannot read"):
        timings_from_sidecar(tmp_path / "missing.json")
    with pytest.raises(InputError, match="neither JSON"):
        timings_from_sidecar(tmp_path / "times.xml")


def _write_dicom(path: Path, **attributes) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    for key, value in attributes.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_timings_from_dicom_reads_inversion_times_in_file_order(tmp_path):
    files = [_write_dicom(tmp_path / f"{n}.dcm", InversionTime=ti) for n, ti in enumerate(MOLLI_TIS_MS)]

    assert timings_from_dicom(files) == MOLLI_TIS_MS
    assert timings_from_dicom([pydicom.dcmread(f) for f in files[:2]]) == MOLLI_TIS_MS[:2]


def test_timings_from_dicom_reads_t2prep_from_comments_echo_time_or_a_private_tag(tmp_path):
    comments = [_write_dicom(tmp_path / f"c{te}.dcm", ImageComments=f"T2 prep. duration = {te} ms", EchoTime=1.1)
                for te in (0, 25, 55)]
    echoes = [_write_dicom(tmp_path / f"e{te}.dcm", EchoTime=te) for te in (0, 25, 55)]
    private = []
    for te in (0, 30, 60):
        ds = pydicom.Dataset()
        ds.add_new((0x0019, 0x0010), "LO", "ACME")
        ds.add_new((0x0019, 0x1001), "DS", str(te))
        private.append(ds)

    assert timings_from_dicom(comments, kind="t2prep") == [0.0, 25.0, 55.0]
    assert timings_from_dicom(echoes, kind="t2prep") == [0.0, 25.0, 55.0]
    assert timings_from_dicom(private, kind="t2prep", tag=(0x0019, 0x1001)) == [0.0, 30.0, 60.0]


def test_timings_from_dicom_missing_timing_is_a_data_error(tmp_path):
    no_ti = [_write_dicom(tmp_path / "a.dcm", InversionTime=100), _write_dicom(tmp_path / "b.dcm")]
    readout_only = [_write_dicom(tmp_path / f"r{n}.dcm", EchoTime=1.1) for n in range(3)]
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")

    with pytest.raises(DataError, match=r"b.dcm has no InversionTime \(0018,0082\).*sidecar"):
        timings_from_dicom(no_ti)
    with pytest.raises(DataError, match="same in every frame"):
        timings_from_dicom(readout_only, kind="t2prep")
    with pytest.raises(DataError, match="cannot read"):
        timings_from_dicom([tmp_path / "junk.dcm"])
    with pytest.raises(InputError, match="no files"):
        timings_from_dicom([])


# -- the vectorised fits reach the same optimum as scipy's one-pixel-at-a-time curve_fit ----------------------
def test_fit_molli_matches_scipy_curve_fit_over_all_polarity_candidates():
    rng = np.random.default_rng(10)
    series = _magnitude(_molli_signal(1100.0), (1, 1, 12), 10.0, rng)
    order = np.argsort(MOLLI_TIS_MS)
    times = np.asarray(MOLLI_TIS_MS)[order]

    def model(ti, a, b, t1_star):
        return a - b * np.exp(-ti / t1_star)

    reference = []
    for curve in series[order, 0, 0].T.astype(np.float64):
        fits = []
        for p in range(len(times)):
            signed = np.where(np.arange(len(times)) < p, -curve, curve)
            try:
                params, _ = curve_fit(model, times, signed, p0=(400.0, 760.0, 1200.0), maxfev=5000)
            except RuntimeError:
                continue
            fits.append((float(((signed - model(times, *params)) ** 2).sum()), params))
        _, (a, b, t1_star) = min(fits, key=lambda fit: fit[0])
        reference.append(t1_star * (b / a - 1.0))

    fit = fit_molli(Volume(series, GEOMETRY, "tkji"), MOLLI_TIS_MS)

    np.testing.assert_allclose(fit.t1_ms[0, 0], reference, rtol=1e-3)


def test_fit_t2_offset_matches_scipy_curve_fit():
    rng = np.random.default_rng(11)
    echo_times = np.asarray(MULTI_ECHO_TES_MS)
    images = _magnitude(320.0 * np.exp(-echo_times / 45.0), (1, 1, 12), 8.0, rng)
    reference = [
        curve_fit(lambda te, s0, t2, c: s0 * np.exp(-te / t2) + c, echo_times, curve, p0=(300.0, 50.0, 0.0))[0][1]
        for curve in images[:, 0, 0].T.astype(np.float64)
    ]

    fit = fit_t2(Volume(images, GEOMETRY, "tkji"), echo_times, model="mono_offset")

    np.testing.assert_allclose(fit.t2_ms[0, 0], reference, rtol=1e-3)
