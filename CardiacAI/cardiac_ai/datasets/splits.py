"""Patient-level train / validation / test splits: deterministic, stratified, and never splitting a patient.

A split lists patient ids, not cases: all frames or slices of one patient fall in the same part. Known duplicates
(ACDC's patient074 and patient076 hold identical images) are kept together too. Splits are saved as JSON next to a
trained model, so the same patients can be held out again.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal, Mapping, Sequence

import numpy as np

from ..errors import DataError, InputError
from ..io import write_text_atomic
from .case import CaseRef

__all__ = [
    "ACDC_DUPLICATES",
    "Split",
    "SplitPart",
    "make_patient_split",
    "default_acdc_split",
    "groups_from_refs",
    "refs_in_part",
    "save_split",
    "load_split",
    "keep_run_split",
    "check_run_data",
    "keep_run_data",
    "remove_earlier_run",
]

log = logging.getLogger(__name__)

SplitPart = Literal["train", "validation", "test"]
_PARTS: tuple[SplitPart, ...] = ("train", "validation", "test")

#: ACDC patients that hold identical images; a split must keep each tuple in one part.
ACDC_DUPLICATES: tuple[tuple[str, ...], ...] = (("patient074", "patient076"),)

_FORMAT = "cardiac_ai.split"
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class Split:
    """Which patients train, validate and test a model.

    Parameters
    ----------
    train, validation, test : sorted patient ids; no id is in two parts.
    seed : the seed the split was drawn with.
    groups : patient id -> stratification group (empty when the split was not stratified).
    """

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...] = ()
    seed: int = 0
    groups: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for part in _PARTS:
            ids = tuple(str(p) for p in getattr(self, part))
            object.__setattr__(self, part, ids)
            for patient_id in ids:
                if patient_id in seen:
                    raise InputError(
                        f"Patient {patient_id!r} is in both {seen[patient_id]} and {part}; a split must put each "
                        "patient in one part."
                    )
                seen[patient_id] = part

    @property
    def patient_ids(self) -> tuple[str, ...]:
        """Every patient of the split, sorted."""
        return tuple(sorted((*self.train, *self.validation, *self.test)))

    def part_of(self, patient_id: str) -> SplitPart:
        """The part holding ``patient_id``; InputError when the split does not know the patient."""
        for part in _PARTS:
            if patient_id in getattr(self, part):
                return part
        raise InputError(
            f"Patient {patient_id!r} is not in this split ({len(self.patient_ids)} patients); the split was made "
            "for another patient list. Make a new split for this data."
        )

    def to_dict(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "seed": self.seed,
            "train": list(self.train),
            "validation": list(self.validation),
            "test": list(self.test),
            "groups": dict(sorted(self.groups.items())),
        }


def _apportion(counts: Mapping[str, int], taken: Mapping[str, int], fraction: float, total: int) -> dict[str, int]:
    """Per-group counts near ``count * fraction`` summing to ``round(total * fraction)`` (largest remainder),
    never more than a group has left after ``taken``."""
    left = {g: counts[g] - taken[g] for g in counts}
    target = min(round(total * fraction), sum(left.values()))
    exact = {g: counts[g] * fraction for g in counts}
    result = {g: min(int(np.floor(exact[g])), left[g]) for g in counts}
    for group in sorted(counts, key=lambda g: (-(exact[g] - np.floor(exact[g])), g)):
        if sum(result.values()) >= target:
            break
        if result[group] < left[group]:
            result[group] += 1
    for group in sorted(counts):  # when capping left the total short, fill from any group with room
        while sum(result.values()) < target and result[group] < left[group]:
            result[group] += 1
    return result


def _units(patient_ids: Sequence[str], keep_together: Iterable[Sequence[str]]) -> list[tuple[str, ...]]:
    """Patients joined into units that must share a part (union of overlapping keep_together tuples)."""
    parent = {p: p for p in patient_ids}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    for members in keep_together:
        present = [m for m in members if m in parent]
        for other in present[1:]:
            parent[find(other)] = find(present[0])
    units: dict[str, list[str]] = defaultdict(list)
    for p in patient_ids:
        units[find(p)].append(p)
    return sorted(tuple(sorted(u)) for u in units.values())


def make_patient_split(
    patient_ids: Iterable[str],
    *,
    groups: Mapping[str, str] | None = None,
    validation_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    keep_together: Iterable[Sequence[str]] = ACDC_DUPLICATES,
) -> Split:
    """Split patients into train, validation and test parts.

    Parameters
    ----------
    patient_ids : unique patient ids (order does not matter: the same set and seed give the same split).
    groups : patient id -> group (e.g. ACDC's NOR/MINF/DCM/HCM/RV, EMIDEC's N/P); each group is split in the same
        proportions. None: not stratified.
    validation_fraction, test_fraction : share of patients in each part, each in [0, 1), together below 1. Counts are
        rounded per group so that the totals are ``round(n * fraction)`` (units of kept-together patients count as
        one, so totals may differ by the size of such a unit).
    seed : seed of the shuffle within each group.
    keep_together : tuples of patients that must share a part (duplicates, or several scans of one person); ids
        not in ``patient_ids`` are ignored. A unit takes the group of its first member.

    Returns
    -------
    Split
        Sorted id tuples; ``groups`` holds the groups used.

    Raises
    ------
    InputError
        No patients, repeated ids, fractions out of range, ``groups`` lacking some patients, or no patient left
        for training. An empty validation or test part (too few patients for the fraction) logs a warning.
    """
    ids = [str(p) for p in patient_ids]
    if not ids:
        raise InputError("make_patient_split got no patient ids.")
    repeated = sorted({p for p in ids if ids.count(p) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise InputError(
            f"make_patient_split got repeated patient ids {repeated[:5]}; pass each patient once "
            "(use CaseRef.patient_id, not one id per frame or slice)."
        )
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {value}.")
    if validation_fraction + test_fraction >= 1.0:
        raise InputError(
            f"validation_fraction + test_fraction must be below 1 to leave training patients, got "
            f"{validation_fraction} + {test_fraction}."
        )
    ids.sort()
    if groups is not None:
        missing = [p for p in ids if p not in groups]
        if missing:
            raise InputError(
                f"groups has no group for {len(missing)} patients, e.g. {missing[:5]}; give every patient a group "
                "or pass groups=None."
            )
        group_of = {p: str(groups[p]) for p in ids}
    else:
        group_of = {p: "" for p in ids}

    units = _units(ids, keep_together)
    by_group: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for unit in units:
        by_group[group_of[unit[0]]].append(unit)
    counts = {g: len(u) for g, u in by_group.items()}
    n_test = _apportion(counts, {g: 0 for g in counts}, test_fraction, len(units))
    n_validation = _apportion(counts, n_test, validation_fraction, len(units))

    rng = np.random.default_rng(seed)
    parts: dict[str, list[str]] = {part: [] for part in _PARTS}
    for group in sorted(by_group):
        group_units = by_group[group]
        order = rng.permutation(len(group_units))
        shuffled = [group_units[i] for i in order]
        cut_test, cut_validation = n_test[group], n_test[group] + n_validation[group]
        for position, unit in enumerate(shuffled):
            part = "test" if position < cut_test else "validation" if position < cut_validation else "train"
            parts[part].extend(unit)
    split = Split(
        train=tuple(sorted(parts["train"])),
        validation=tuple(sorted(parts["validation"])),
        test=tuple(sorted(parts["test"])),
        seed=seed,
        groups={p: g for p, g in group_of.items()} if groups is not None else {},
    )
    if not split.train:
        raise InputError(
            f"make_patient_split leaves no training patient: {len(ids)} patients with validation_fraction "
            f"{validation_fraction} and test_fraction {test_fraction}. Lower the fractions or add patients."
        )
    for part, fraction in (("validation", validation_fraction), ("test", test_fraction)):
        if fraction > 0 and not getattr(split, part):
            log.warning("The %s part is empty: %d patients x %s rounds to 0.", part, len(ids), fraction)
    log.info(
        "Split %d patients: %d train, %d validation, %d test (seed %d%s)",
        len(ids), len(split.train), len(split.validation), len(split.test), seed,
        ", stratified" if groups is not None else "",
    )
    return split


def groups_from_refs(refs: Iterable[CaseRef], *, key: str = "group") -> dict[str, str]:
    """Patient id -> ``image_labels[key]`` of its cases, for stratifying a split.

    Raises
    ------
    InputError
        A case lacking ``key``, or two cases of one patient with different values.
    """
    groups: dict[str, str] = {}
    for ref in refs:
        if key not in ref.image_labels:
            raise InputError(
                f"Case {ref.case_id!r} has no image label {key!r} (it has {sorted(ref.image_labels)}); "
                "choose another key or split without groups."
            )
        value = str(ref.image_labels[key])
        if groups.setdefault(ref.patient_id, value) != value:
            raise InputError(
                f"Patient {ref.patient_id!r} has cases with {key} {groups[ref.patient_id]!r} and {value!r}; "
                "a stratification group must be the same for all of a patient's cases."
            )
    return groups


def refs_in_part(refs: Iterable[CaseRef], split: Split, part: SplitPart) -> list[CaseRef]:
    """The cases whose patient is in ``part`` of ``split``, in their original order.

    Raises
    ------
    InputError
        An unknown part, or a case whose patient the split does not list.
    """
    if part not in _PARTS:
        raise InputError(f"part must be one of {_PARTS}, got {part!r}.")
    members = set(getattr(split, part))
    chosen = []
    for ref in refs:
        if ref.patient_id in members:
            chosen.append(ref)
        else:
            split.part_of(ref.patient_id)  # raises for patients the split does not know
    return chosen


def default_acdc_split(root_or_refs: str | os.PathLike | Sequence[CaseRef]) -> Split:
    """The split CardiacAI uses for ACDC: 80 train / 20 validation, stratified by group, seed 0, 074 with 076.

    Parameters
    ----------
    root_or_refs : ACDC's ``training`` folder, or CaseRefs from :func:`~cardiac_ai.datasets.acdc.list_acdc`.

    Returns
    -------
    Split
        On the 100 training patients: 16 per group in train, 4 per group in validation, no test part.
    """
    if isinstance(root_or_refs, (str, os.PathLike)):
        from .acdc import list_acdc

        refs = list_acdc(root_or_refs, phases=("ED",))
    else:
        refs = list(root_or_refs)
    groups = groups_from_refs(refs, key="group")
    return make_patient_split(
        sorted(groups), groups=groups, validation_fraction=0.2, test_fraction=0.0, seed=0,
        keep_together=ACDC_DUPLICATES,
    )


def save_split(split: Split, path: str | os.PathLike) -> Path:
    """Write ``split`` as JSON (atomically: a crash leaves any old file intact). Returns the path."""
    return write_text_atomic(path, json.dumps(split.to_dict(), indent=2) + "\n")


def keep_run_split(split: Split, path: str | os.PathLike, *, resume: bool) -> Split:
    """The split of a training run folder: written at ``path`` when the run starts; when it resumes, the one
    written then, which ``split`` must equal (the same patients in each part).

    Raises
    ------
    InputError
        Resuming with another split than the run started with (another ``--seed`` or ``--split``).
    """
    if resume and Path(path).is_file():
        saved = load_split(path)
        if (saved.train, saved.validation, saved.test) != (split.train, split.validation, split.test):
            raise InputError(f"Cannot resume the run of {Path(path).parent}: it was started with another split of "
                             f"the patients ({path}); resume with the seed and --split it was started with.")
        return saved
    save_split(split, path)
    return split


#: What a training run was started on, in its run folder, checked when it resumes.
RUN_DATA_FILE = "data.json"


def _run_data(refs, label_column: str | None) -> dict:
    """Case ids, image and label-map file names and sizes, and the image-level label a run learns."""
    def files(paths):
        return [[p.name, p.stat().st_size if p.exists() else None] for p in paths]

    return {"label_column": label_column, "cases": {
        r.case_id: {"images": files(r.image_paths), "label_maps": files(r.label_paths),
                    "label": None if label_column is None else str(r.image_labels.get(label_column))}
        for r in sorted(refs, key=lambda r: r.case_id)}}


def check_run_data(refs, folder: str | os.PathLike, *, resume: bool, label_column: str | None = None) -> None:
    """Refuse to resume the run of ``folder`` on other data than it started with (cached preparations and the
    split would silently belong to the old data); a run from before the record passes.

    Raises
    ------
    InputError
        Other cases, files or labels than the run's ``data.json`` records.
    """
    path = Path(folder) / RUN_DATA_FILE
    if not resume or not path.is_file():
        return
    earlier, data = json.loads(path.read_text(encoding="utf-8")), _run_data(refs, label_column)
    if earlier == data:
        return
    if earlier.get("label_column") != data["label_column"]:
        why = f"label column {earlier.get('label_column')!r} -> {data['label_column']!r}"
    else:
        old, new = earlier.get("cases", {}), data["cases"]
        changed = sorted(set(old) ^ set(new)) + sorted(c for c in set(old) & set(new) if old[c] != new[c])
        why = f"{len(changed)} case(s) differ in their images, label maps or labels, e.g. {changed[0]}"
    raise InputError(f"Cannot resume {Path(folder)}: it was started on other data ({why}). Resume with the data it "
                     "was started on, or start a new run in an empty folder.")


def keep_run_data(refs, folder: str | os.PathLike, *, label_column: str | None = None) -> None:
    """Record what the run of ``folder`` trains on (once: a resumed run keeps its record)."""
    path = Path(folder) / RUN_DATA_FILE
    if not path.is_file():
        write_text_atomic(path, json.dumps(_run_data(refs, label_column), indent=1) + "\n")


def remove_earlier_run(folder: str | os.PathLike, patterns: Sequence[str]) -> None:
    """Remove what a training recipe wrote into its run ``folder`` (each glob pattern of ``patterns``, files and
    folders, plus its split and :data:`RUN_DATA_FILE`) before starting again there: nothing else of the folder, so
    a user's own files beside the run stay."""
    import shutil

    work = Path(folder)
    for pattern in (*patterns, "split.json", RUN_DATA_FILE):
        for target in sorted(work.glob(pattern)):
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    log.info("Removed the earlier run's files from %s (overwrite).", work)


def load_split(path: str | os.PathLike) -> Split:
    """Read a split written by :func:`save_split`.

    Raises
    ------
    DataError
        Missing or unreadable file, not a CardiacAI split, missing parts, or a patient in two parts.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"Split file not found: {source}")
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"Cannot read {source} as JSON: {e}") from e
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise DataError(f"{source} is not a CardiacAI split file (no \"format\": \"{_FORMAT}\").")
    if data.get("version") != _FORMAT_VERSION:
        raise DataError(
            f"{source} is split format version {data.get('version')}; this CardiacAI reads version "
            f"{_FORMAT_VERSION}. Update CardiacAI or make the split again."
        )
    try:
        parts = {part: tuple(data[part]) for part in _PARTS}
        seed = int(data.get("seed", 0))
        groups = {str(k): str(v) for k, v in dict(data.get("groups", {})).items()}
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{source} lacks or garbles a split part ({e}); it needs train, validation, test.") from e
    try:
        return Split(parts["train"], parts["validation"], parts["test"], seed=seed, groups=groups)
    except InputError as e:
        raise DataError(f"{source}: {e}") from e
