"""EMIDEC PNG reader: slices grouped into patients, masks mapped to CardiacAI codes, weak labels match the masks."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cardiac_ai.datasets import (
    EMIDEC_LABEL_MAP,
    list_emidec,
    list_emidec_slices,
    load_case,
    map_emidec_labels,
)
from cardiac_ai.errors import DataError
from cardiac_ai.io import write_png
from cardiac_ai.labels import LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, SCAR, check_label_values


def _ring_mask(scar: bool, mvo: bool = False, size: int = 32) -> np.ndarray:
    """EMIDEC-coded mask: cavity 1 inside a myocardial ring 2, optional infarct 3 with no-reflow 4."""
    j, i = np.mgrid[:size, :size]
    r = np.hypot(j - size / 2, i - size / 2)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[r < 10] = 2
    mask[r < 6] = 1
    if scar:
        mask[(r >= 6) & (r < 10) & (i > size / 2)] = 3
    if mvo:
        mask[(r >= 7) & (r < 9) & (i > size / 2 + 3)] = 4
    return mask


def _write_slice(root: Path, split: str, name: str, mask: np.ndarray | None) -> None:
    image = np.random.default_rng(len(name)).integers(0, 255, mask.shape if mask is not None else (32, 32))
    write_png(image.astype(np.uint8), root / split / name)
    if mask is not None:
        write_png(mask, root / f"{split}annot" / name)


def _small_dataset(root: Path) -> Path:
    dataset = root / "dataset"
    _write_slice(dataset, "train", "Case_P001_slice010.png", _ring_mask(scar=False))
    _write_slice(dataset, "train", "Case_P001_slice002.png", _ring_mask(scar=True, mvo=True))
    _write_slice(dataset, "train", "Case_N002_slice000.png", _ring_mask(scar=False))
    _write_slice(dataset, "val", "Case_P003_slice000.png", _ring_mask(scar=True))
    return dataset


def test_map_emidec_labels_follows_the_table():
    mapped = map_emidec_labels(np.array([[0, 1, 2, 3, 4]], dtype=np.uint8))
    assert mapped.tolist() == [[0, LV_BLOOD_POOL, LV_MYOCARDIUM, SCAR, MVO]]
    assert mapped.dtype == np.uint8
    assert EMIDEC_LABEL_MAP[3] == SCAR


def test_map_emidec_labels_refuses_unknown_values():
    with pytest.raises(DataError, match=r"mask.png holds mask values \[7\]"):
        map_emidec_labels(np.array([0, 7]), source="mask.png")


def test_slices_are_grouped_into_patient_stacks_in_slice_number_order(tmp_path):
    _small_dataset(tmp_path)
    refs = list_emidec(tmp_path)  # the parent of dataset/ is accepted
    assert [r.patient_id for r in refs] == ["Case_N002", "Case_P001", "Case_P003"]
    p001 = refs[1]
    assert p001.image_labels == {"group": "P", "fibrosis": 1}
    assert p001.metadata["slice_numbers"] == [2, 10] and p001.metadata["split"] == "train"
    assert refs[2].metadata["split"] == "val"
    case = load_case(p001)
    assert case.image.array.shape == (2, 32, 32) and case.image.array.dtype == np.float32
    assert case.image.geometry.spacing_mm == (1.0, 1.0, 1.0)
    assert case.metadata["pixel_size"] == "pixel size unknown (EMIDEC PNG export)"
    assert set(np.unique(case.labels.array[0])) == {0, LV_MYOCARDIUM, LV_BLOOD_POOL, SCAR, MVO}
    assert case.metadata["slice_labels"] == {0: {"fibrosis": 1}, 1: {"fibrosis": 0}}
    check_label_values(case.labels.array)


def test_slice_listing_sets_fibrosis_from_the_mask(tmp_path):
    dataset = _small_dataset(tmp_path)
    refs = list_emidec_slices(dataset)
    labels = {r.case_id: r.image_labels["fibrosis"] for r in refs}
    assert labels == {
        "Case_N002_slice000": 0, "Case_P001_slice002": 1, "Case_P001_slice010": 0, "Case_P003_slice000": 1,
    }
    case = load_case(refs[1])
    assert case.image.array.shape == (1, 32, 32)
    assert case.image_labels["fibrosis"] == 1 and case.metadata["patient_group"] == "P"


def test_p_patient_without_scar_logs_a_warning(tmp_path, caplog):
    dataset = tmp_path / "dataset"
    _write_slice(dataset, "train", "Case_P005_slice000.png", _ring_mask(scar=False))
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.datasets.emidec"):
        list_emidec_slices(dataset)
    assert "Case_P005 is named P (infarct) but no slice" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.datasets.emidec"):
        load_case(list_emidec(dataset)[0])
    assert "Case_P005" in caplog.text


def test_mask_value_outside_emidec_codes_names_the_file(tmp_path):
    dataset = tmp_path / "dataset"
    mask = _ring_mask(scar=False)
    mask[0, 0] = 7
    _write_slice(dataset, "train", "Case_N001_slice000.png", mask)
    with pytest.raises(DataError, match=r"trainannot/Case_N001_slice000\.png holds mask values \[7\]"):
        list_emidec_slices(dataset)


def test_image_without_mask_is_refused(tmp_path):
    dataset = _small_dataset(tmp_path)
    (dataset / "trainannot" / "Case_N002_slice000.png").unlink()
    with pytest.raises(DataError, match=r"Case_N002_slice000\.png has no mask"):
        list_emidec(dataset)


def test_odd_file_name_is_refused(tmp_path):
    dataset = _small_dataset(tmp_path)
    _write_slice(dataset, "train", "patient1.png", _ring_mask(scar=False))
    with pytest.raises(DataError, match=r"patient1\.png: expected a name like Case_P001_slice000\.png"):
        list_emidec(dataset)


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        list_emidec(tmp_path / "nowhere")


@pytest.mark.shared_data
def test_emidec_lists_train_and_val_patients_with_n_and_p(emidec_root):
    refs = list_emidec(emidec_root)
    assert Counter(r.metadata["split"] for r in refs) == {"train": 60, "val": 13}
    groups = Counter(r.image_labels["group"] for r in refs)
    assert set(groups) == {"N", "P"} and sum(groups.values()) == 73
    assert all(r.patient_id.startswith(f"Case_{r.image_labels['group']}") for r in refs)


@pytest.mark.shared_data
def test_emidec_slice_labels_are_consistent_with_masks_and_names(emidec_root, caplog):
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.datasets.emidec"):
        slices = list_emidec_slices(emidec_root)
    assert len(slices) == 522
    assert "is named" not in caplog.text  # every P patient has scar, no N patient has any
    positive_patients = {r.patient_id for r in slices if r.image_labels["fibrosis"] == 1}
    assert all(p.startswith("Case_P") for p in positive_patients)
    stack_ref = next(r for r in list_emidec(emidec_root) if r.patient_id == "Case_P001")
    stack = load_case(stack_ref)
    from_slices = [r.image_labels["fibrosis"] for r in slices if r.patient_id == "Case_P001"]
    from_masks = [int(np.isin(stack.labels.array[k], (SCAR, MVO)).any()) for k in range(stack.labels.array.shape[0])]
    assert from_slices == from_masks == [v["fibrosis"] for v in stack.metadata["slice_labels"].values()]
    assert stack.image.array.shape[1:] == (256, 256)
    check_label_values(stack.labels.array)


def test_explicitly_requested_split_must_exist(tmp_path):
    dataset = tmp_path / "dataset"
    _write_slice(dataset, "train", "Case_N001_slice000.png", _ring_mask(scar=False))
    assert [r.metadata["split"] for r in list_emidec(dataset)] == ["train"]
    with pytest.raises(DataError, match=r"dataset/val not found.*splits=None"):
        list_emidec(dataset, splits=("train", "val"))


def test_segmentation_training_on_emidec_pngs_takes_emidecs_nominal_pixel_size(tmp_path, capsys, monkeypatch):
    from cardiac_ai import cli
    from cardiac_ai.training import segmentation

    dataset = _small_dataset(tmp_path)
    _write_slice(dataset, "train", "Case_N004_slice000.png", _ring_mask(scar=False))
    seen = {}

    def record(train_cases, val_cases, **kwargs):
        seen["spacing"] = {case.image.geometry.spacing_mm[:2] for case in [*train_cases, *val_cases]}
        seen["labels"] = {case.labels.geometry.spacing_mm[:2] for case in [*train_cases, *val_cases]}
        raise KeyboardInterrupt  # the data are what this test is about, not the training

    monkeypatch.setattr(segmentation, "train_segmentation", record)
    code = cli.main(["train", "--data", str(tmp_path), "--layout", "emidec", "--out", str(tmp_path / "run"),
                     "--network", "tiny_unet2d", "--epochs", "1", "--crop-size", "16", "--device", "cpu"])
    assert code == 130
    assert seen["spacing"] == seen["labels"] == {(1.5, 1.5)}
    assert "taken as 1.5 mm pixels" in capsys.readouterr().err
