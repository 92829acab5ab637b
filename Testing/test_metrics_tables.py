"""Per-case evaluation rows (each case with its own spacing), summaries and Markdown tables."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cardiac_ai.errors import InputError
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.metrics import (
    CASE_COLUMNS,
    evaluate_cases,
    format_markdown_table,
    hausdorff_mm,
    hd95_mm,
    mean_surface_distance_mm,
    summarize_rows,
)


def _case(spacing_ijk_mm: tuple[float, float, float]) -> tuple[Volume, Volume]:
    """LV blood pool box, prediction moved one column (i); RV only in the reference."""
    true = np.zeros((3, 10, 10), dtype=np.uint8)
    true[:, 2:6, 2:6] = 3
    true[:, 7:9, 7:9] = 1
    pred = np.zeros_like(true)
    pred[:, 2:6, 3:7] = 3
    geometry = Geometry(spacing_mm=spacing_ijk_mm)
    return Volume(pred, geometry), Volume(true, geometry)


def test_evaluate_cases_uses_each_cases_own_spacing():
    rows = evaluate_cases(
        [("fine", *_case((1.0, 1.0, 10.0))), ("coarse", *_case((2.0, 1.0, 10.0)))], labels=(1, 2, 3)
    )
    assert len(rows) == 6
    assert all(tuple(row) == CASE_COLUMNS for row in rows)
    lv = {row["case_id"]: row for row in rows if row["label"] == 3}
    assert lv["fine"]["hausdorff_mm"] == pytest.approx(1.0)  # one column of 1 mm
    assert lv["coarse"]["hausdorff_mm"] == pytest.approx(2.0)  # one column of 2 mm
    assert lv["fine"]["dice"] == pytest.approx(2 * 36 / 96)  # 3 x 4 x 3 shared of 48 + 48 voxels
    assert lv["fine"]["jaccard"] == pytest.approx(36 / 60)
    assert lv["coarse"]["true_ml"] == pytest.approx(48 * 2.0 * 1.0 * 10.0 / 1000)
    rv = next(row for row in rows if row["case_id"] == "fine" and row["label"] == 1)
    assert rv["dice"] == 0.0 and rv["hausdorff_mm"] == math.inf and rv["pred_ml"] == 0.0
    myo = next(row for row in rows if row["case_id"] == "fine" and row["label"] == 2)
    assert math.isnan(myo["dice"]) and math.isnan(myo["msd_mm"])
    assert myo["structure"] == "lv_myocardium"


def test_evaluate_cases_hd95_and_mean_distance_columns_are_their_own_metrics():
    """A prediction equal to the truth but for one stray voxel 15 columns away: the Hausdorff distance is the stray
    voxel's, HD95 and the mean surface distance barely see it; each column equals the public function's value."""
    true = np.zeros((1, 12, 30), dtype=np.uint8)
    true[0, 2:10, 2:10] = 3
    pred = true.copy()
    pred[0, 5, 24] = 3
    geometry = Geometry(spacing_mm=(1.5, 1.0, 8.0))
    (row,) = evaluate_cases([("stray", Volume(pred, geometry), Volume(true, geometry))], labels=(3,))
    spacing_kji = (8.0, 1.0, 1.5)
    assert row["hausdorff_mm"] == pytest.approx(15 * 1.5)  # column 24 to the box's last column, 9
    assert row["hausdorff_mm"] == pytest.approx(hausdorff_mm(pred == 3, true == 3, spacing_kji))
    assert row["hd95_mm"] == pytest.approx(hd95_mm(pred == 3, true == 3, spacing_kji))
    assert row["msd_mm"] == pytest.approx(mean_surface_distance_mm(pred == 3, true == 3, spacing_kji))
    assert row["hd95_mm"] < row["hausdorff_mm"] / 2 and 0 < row["msd_mm"] < row["hd95_mm"] + 1.5


def test_evaluate_cases_rejects_mismatched_geometry():
    pred, true = _case((1.0, 1.0, 10.0))
    shifted = Volume(pred.array, Geometry(spacing_mm=(1.0, 1.0, 10.0), origin_lps_mm=(0.0, 0.0, 5.0)))
    with pytest.raises(InputError, match="'case7'.*geometries differ"):
        evaluate_cases([("case7", shifted, true)])


def test_evaluate_cases_rejects_mismatched_shapes():
    pred, true = _case((1.0, 1.0, 10.0))
    with pytest.raises(InputError, match=r"shape \(2, 10, 10\).*resample"):
        evaluate_cases([("c", Volume(pred.array[:2], pred.geometry), true)])


def test_evaluate_cases_needs_volumes_not_bare_arrays():
    pred, true = _case((1.0, 1.0, 10.0))
    with pytest.raises(InputError, match="must be a cardiac_ai Volume"):
        evaluate_cases([("c", pred.array, true)])
    with pytest.raises(InputError, match=r"\(case_id, pred Volume, true Volume\)"):
        evaluate_cases([(pred, true)])


def test_summarize_rows_averages_finite_values_and_counts_the_rest():
    rows = [
        {"structure": "lv", "hd95_mm": 2.0},
        {"structure": "lv", "hd95_mm": 4.0},
        {"structure": "lv", "hd95_mm": math.inf},
        {"structure": "rv", "hd95_mm": math.nan},
    ]
    summary = summarize_rows(rows, ["hd95_mm"])
    assert [row["structure"] for row in summary] == ["lv", "rv"]
    assert summary[0]["hd95_mm_mean"] == 3.0
    assert summary[0]["hd95_mm_sd"] == pytest.approx(math.sqrt(2.0))
    assert summary[0]["hd95_mm_n"] == 2 and summary[0]["hd95_mm_n_not_finite"] == 1
    assert math.isnan(summary[1]["hd95_mm_mean"]) and summary[1]["n_rows"] == 1


def test_summarize_rows_names_a_missing_column():
    with pytest.raises(InputError, match=r"no column\(s\) \['dice'\]"):
        summarize_rows([{"structure": "lv"}], ["dice"])


def test_markdown_table_formats_numbers_nan_inf_and_pipes():
    rows = [{"case": "a|b", "n": 3, "dice": 0.91234, "hd": math.inf}, {"case": "c", "n": 1, "dice": math.nan}]
    text = format_markdown_table(rows, ["case", "n", "dice", "hd"], headers={"hd": "HD (mm)"}, digits=2)
    assert text == (
        "| case | n | dice | HD (mm) |\n"
        "| --- | --- | --- | --- |\n"
        "| a\\|b | 3 | 0.91 | inf |\n"
        "| c | 1 | n/a |  |\n"
    )


def test_markdown_table_defaults_to_the_first_rows_keys_and_needs_columns():
    assert format_markdown_table([{"x": 1}]).splitlines()[0] == "| x |"
    with pytest.raises(InputError, match="no rows and no columns"):
        format_markdown_table([])
