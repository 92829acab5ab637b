"""report.json, JSON and CSV writers: strict JSON from numpy values, stable columns, atomic writes."""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from cardiac_ai import __version__
from cardiac_ai.errors import DataError, InputError
from cardiac_ai.geometry import Geometry
from cardiac_ai.io import read_json, to_jsonable, write_csv, write_json, write_report
from cardiac_ai.io import atomic as atomic_module
from cardiac_ai.provenance import ModelUse, Provenance


@dataclass(frozen=True)
class _Volumes:
    lv_edv_ml: float
    per_slice_ml: np.ndarray


def test_write_json_converts_numpy_nan_dataclasses_and_paths(tmp_path):
    data = {
        "count": np.int64(3),
        "dice": np.float32(0.5),
        "flag": np.bool_(True),
        "missing": float("nan"),
        "too_big": np.inf,
        "map": np.array([[1.0, np.nan], [2.5, 3.0]]),
        "volumes": _Volumes(120.0, np.array([10.0, np.nan])),
        "geometry": Geometry((1.0, 2.0, 3.0)),
        "file": Path("out") / "labels.nii.gz",
        "codes": (1, 2),
        7: "int key",
    }
    path = write_json(tmp_path / "data.json", data)

    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: other readers would choke
    back = json.loads(text)
    assert back["count"] == 3 and back["dice"] == 0.5 and back["flag"] is True
    assert back["missing"] is None and back["too_big"] is None
    assert back["map"] == [[1.0, None], [2.5, 3.0]]
    assert back["volumes"] == {"lv_edv_ml": 120.0, "per_slice_ml": [10.0, None]}
    assert back["geometry"]["spacing_mm"] == [1.0, 2.0, 3.0]
    assert back["file"] == str(Path("out") / "labels.nii.gz")
    assert back["codes"] == [1, 2] and back["7"] == "int key"
    assert read_json(path) == back


def test_to_jsonable_refuses_unknown_objects():
    with pytest.raises(InputError, match="object"):
        to_jsonable({"model": object()})


def test_write_report_holds_version_provenance_and_results(tmp_path):
    provenance = Provenance(command="cardiacai segment", models=[ModelUse("cine_unet2d", "1.0")], device="cpu")
    provenance.warn("input resampled to 1.25 mm")

    path = write_report(tmp_path / "out", provenance=provenance, results={"lv_ef_percent": np.float64(61.5)})

    assert path == tmp_path / "out" / "report.json"
    report = read_json(path)
    assert report["cardiac_ai"] == __version__
    assert report["provenance"]["models"] == [{"name": "cine_unet2d", "version": "1.0", "sha256": None}]
    assert report["provenance"]["warnings"] == ["input resampled to 1.25 mm"]
    assert report["lv_ef_percent"] == 61.5
    assert list(report)[:2] == ["cardiac_ai", "provenance"]
    assert report["provenance"]["working_directory"] == os.getcwd()  # what relative input paths are relative to


def test_write_report_refuses_reserved_keys(tmp_path):
    with pytest.raises(InputError, match="reserved"):
        write_report(tmp_path, provenance=Provenance(), results={"provenance": {}})
    assert list(tmp_path.iterdir()) == []


def test_write_csv_uses_first_appearance_column_order_and_blank_missing(tmp_path):
    rows = [
        {"segment": "lv_myocardium", "volume_ml": np.float32(110.5), "mass_g": 116.0},
        {"segment": "scar", "volume_ml": float("nan"), "slices": np.int64(3)},
    ]
    path = write_csv(tmp_path / "table.csv", rows)

    with path.open(newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["segment", "volume_ml", "mass_g", "slices"]
    assert table[1] == ["lv_myocardium", "110.5", "116.0", ""]
    assert table[2] == ["scar", "", "", "3"]
    # the same rows give the same bytes: stable for diffs and tests
    assert write_csv(tmp_path / "again.csv", rows).read_text() == path.read_text()


def test_write_csv_with_columns_refuses_unlisted_keys(tmp_path):
    rows = [{"a": 1, "b": 2}]
    assert write_csv(tmp_path / "t.csv", rows, columns=["b", "a", "c"]).read_text() == "b,a,c\n2,1,\n"
    with pytest.raises(InputError, match=r"\['b'\]"):
        write_csv(tmp_path / "u.csv", rows, columns=["a"])
    assert not (tmp_path / "u.csv").exists()


def test_read_json_missing_or_invalid_file_raises_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_json(tmp_path / "absent.json")
    (tmp_path / "broken.json").write_text('{"a": ')
    with pytest.raises(DataError, match="not valid JSON"):
        read_json(tmp_path / "broken.json")


def test_failed_json_write_keeps_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = write_json(tmp_path / "report.json", {"run": 1})

    def broken_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(atomic_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json(path, {"run": 2})
    assert read_json(path) == {"run": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_unconvertible_value_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="Cannot write a complex to JSON"):
        write_json(tmp_path / "x.json", {"value": 1 + 2j})
    assert list(tmp_path.iterdir()) == []
