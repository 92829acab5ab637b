"""Patient splits: deterministic, stratified, duplicates together, never one patient in two parts; JSON round trip."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from cardiac_ai.datasets import (
    CaseRef,
    Split,
    default_acdc_split,
    groups_from_refs,
    list_emidec,
    load_split,
    make_patient_split,
    refs_in_part,
    save_split,
)
from cardiac_ai.errors import DataError, InputError

GROUPS = ("NOR", "MINF", "DCM", "HCM", "RV")
PATIENTS = [f"patient{n:03d}" for n in range(1, 101)]
ACDC_LIKE = {p: GROUPS[(int(p[-3:]) - 1) // 20] for p in PATIENTS}


def _assert_partition(split: Split, patients) -> None:
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(patients)


def test_same_seed_gives_same_split_whatever_the_input_order():
    first = make_patient_split(PATIENTS, groups=ACDC_LIKE, seed=3)
    second = make_patient_split(list(reversed(PATIENTS)), groups=ACDC_LIKE, seed=3)
    assert first == second
    assert make_patient_split(PATIENTS, groups=ACDC_LIKE, seed=4).validation != first.validation


@pytest.mark.parametrize("seed", range(5))
def test_split_is_stratified_and_never_puts_a_patient_in_two_parts(seed):
    split = make_patient_split(PATIENTS, groups=ACDC_LIKE, validation_fraction=0.2, test_fraction=0.1, seed=seed)
    _assert_partition(split, PATIENTS)
    validation_groups = Counter(ACDC_LIKE[p] for p in split.validation)
    test_groups = Counter(ACDC_LIKE[p] for p in split.test)
    # 20 patients per group (074 and 076 count as one unit): 4 validation and 2 test each, give or take the pair
    assert all(4 <= validation_groups[g] <= 5 for g in GROUPS), validation_groups
    assert all(1 <= test_groups[g] <= 3 for g in GROUPS), test_groups
    assert 19 <= len(split.validation) <= 21 and 9 <= len(split.test) <= 11


@pytest.mark.parametrize("seed", range(20))
def test_duplicate_pair_stays_in_one_part(seed):
    split = make_patient_split(PATIENTS, groups=ACDC_LIKE, validation_fraction=0.5, seed=seed)
    assert split.part_of("patient074") == split.part_of("patient076")


def test_keep_together_joins_overlapping_tuples():
    ids = [f"p{n}" for n in range(10)]
    for seed in range(10):
        split = make_patient_split(ids, validation_fraction=0.5, seed=seed, keep_together=[("p1", "p2"), ("p2", "p3")])
        assert len({split.part_of(p) for p in ("p1", "p2", "p3")}) == 1


def test_unstratified_split_has_the_requested_size():
    split = make_patient_split([f"c{n}" for n in range(10)], validation_fraction=0.3, seed=1)
    assert len(split.validation) == 3 and len(split.train) == 7 and split.test == () and split.groups == {}


def test_emidec_style_split_is_stratified_by_n_and_p():
    groups = {f"Case_N{n:03d}": "N" for n in range(26)} | {f"Case_P{n:03d}": "P" for n in range(47)}
    split = make_patient_split(list(groups), groups=groups, seed=0)
    counts = Counter(groups[p] for p in split.validation)
    assert counts == {"N": 5, "P": 10}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(patient_ids=[]), "no patient ids"),
        (dict(patient_ids=["a", "b", "a"]), r"repeated patient ids \['a'\]"),
        (dict(patient_ids=["a", "b"], validation_fraction=1.0), r"validation_fraction must be in \[0, 1\)"),
        (dict(patient_ids=["a", "b"], validation_fraction=0.6, test_fraction=0.5), "must be below 1"),
        (dict(patient_ids=["a", "b"], groups={"a": "N"}), r"no group for 1 patients, e.g. \['b'\]"),
        (dict(patient_ids=["a", "b", "c"], validation_fraction=0.6, test_fraction=0.3), "no training patient"),
    ],
)
def test_bad_split_requests_are_refused(kwargs, message):
    with pytest.raises(InputError, match=message):
        make_patient_split(**kwargs)


def test_split_refuses_a_patient_in_two_parts():
    with pytest.raises(InputError, match="'p1' is in both train and validation"):
        Split(train=("p1", "p2"), validation=("p1",))


def test_save_and_load_round_trip(tmp_path):
    split = make_patient_split(PATIENTS, groups=ACDC_LIKE, test_fraction=0.1, seed=7)
    path = save_split(split, tmp_path / "split.json")
    assert load_split(path) == split
    data = json.loads(path.read_text())
    assert data["format"] == "cardiac_ai.split" and data["seed"] == 7 and len(data["train"]) == len(split.train)
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "Cannot read .* as JSON"),
        ('{"train": []}', "not a CardiacAI split file"),
        ('{"format": "cardiac_ai.split", "version": 9}', "split format version 9"),
        ('{"format": "cardiac_ai.split", "version": 1, "train": ["a"], "validation": ["a"], "test": []}',
         "'a' is in both train and validation"),
    ],
)
def test_load_split_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_split(path)


def test_load_split_missing_file(tmp_path):
    with pytest.raises(DataError, match="Split file not found"):
        load_split(tmp_path / "missing.json")


def _ref(case_id: str, patient_id: str, group: str) -> CaseRef:
    return CaseRef(case_id, patient_id, "generic", (Path(f"{case_id}.nii.gz"),), image_labels={"group": group})


def test_refs_in_part_keeps_all_cases_of_a_patient_together():
    refs = [_ref(f"{p}_{phase}", p, ACDC_LIKE[p]) for p in PATIENTS for phase in ("ED", "ES")]
    groups = groups_from_refs(refs)
    assert groups == ACDC_LIKE
    split = make_patient_split(sorted(groups), groups=groups)
    train, validation = refs_in_part(refs, split, "train"), refs_in_part(refs, split, "validation")
    assert len(train) + len(validation) == 200
    assert {r.patient_id for r in train}.isdisjoint({r.patient_id for r in validation})
    with pytest.raises(InputError, match="'stranger' is not in this split"):
        refs_in_part([_ref("x", "stranger", "NOR")], split, "train")


def test_groups_from_refs_refuses_inconsistent_groups():
    with pytest.raises(InputError, match="'p1' has cases with group 'NOR' and 'DCM'"):
        groups_from_refs([_ref("a", "p1", "NOR"), _ref("b", "p1", "DCM")])


@pytest.mark.shared_data
def test_default_acdc_split_is_80_20_stratified_with_074_076_together(acdc_root):
    split = default_acdc_split(acdc_root)
    assert (len(split.train), len(split.validation), len(split.test)) == (80, 20, 0)
    _assert_partition(split, [f"patient{n:03d}" for n in range(1, 101)])
    assert Counter(split.groups[p] for p in split.validation) == {g: 4 for g in GROUPS}
    assert split.part_of("patient074") == split.part_of("patient076")
    assert default_acdc_split(acdc_root) == split


@pytest.mark.shared_data
def test_emidec_patients_split_by_n_and_p(emidec_root):
    refs = list_emidec(emidec_root)
    groups = groups_from_refs(refs)
    split = make_patient_split(sorted(groups), groups=groups, seed=0)
    _assert_partition(split, groups)
    assert set(Counter(groups[p] for p in split.validation)) == {"N", "P"}


def test_removing_an_earlier_run_takes_its_files_only(tmp_path):
    from cardiac_ai.datasets.splits import RUN_DATA_FILE, remove_earlier_run

    work = tmp_path / "run"
    (work / "checkpoints").mkdir(parents=True)
    (work / "checkpoints" / "last.pt").write_text("weights")
    for name in ("split.json", RUN_DATA_FILE, "weak_train.npz", "notes.txt", "weak.txt"):
        (work / name).write_text(name)
    elsewhere = tmp_path / "kept"
    elsewhere.mkdir()
    (elsewhere / "model.pt").write_text("not the run's")
    (work / "run_weak_link").symlink_to(elsewhere, target_is_directory=True)
    remove_earlier_run(work, ("checkpoints", "weak_*.npz", "run_weak_*"))
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt", "weak.txt"]
    assert (elsewhere / "model.pt").read_text() == "not the run's"  # a link is removed, not what it points to
