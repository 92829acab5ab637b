"""``cardiacai train --task fibrosis``: the LGE fibrosis models trained on your own data (generic layout), registered,
then used by ``cardiacai fibrosis``; its refusals; and the honesty rule (the weak models never see pixel scar)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cardiac_ai.cli import main
from cardiac_ai.geometry import Geometry, Volume
from cardiac_ai.io import write_volume

pytest.importorskip("torch")

#: Tiny networks on a 32 x 32 crop, one epoch each: the whole recipe in seconds on a CPU.
TINY = ["--crop-size", "32", "--width", "4", "--epochs", "1", "--seg-epochs", "1", "--batch-size", "8",
        "--device", "cpu"]
N_SLICES = 4
SCAR_SLICES = (1, 2)
MODELS = ("lge_myocardium", "lge_fibrosis_classifier", "lge_fibrosis_weak")


def _lge_case(scar: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label map) of a 4-slice 48 x 48 LGE stack: a ring myocardium (dark) around a bright blood pool; with
    ``scar``, a bright sector of the ring on SCAR_SLICES, labelled 4 (scar)."""
    rng = np.random.default_rng(seed)
    j, i = np.mgrid[:48, :48] - 23.5
    radius, angle = np.hypot(j, i), np.arctan2(j, i)
    labels = np.zeros((N_SLICES, 48, 48), np.uint8)
    labels[:, radius < 8] = 3
    labels[:, (radius >= 8) & (radius < 12)] = 2
    if scar:
        for k in SCAR_SLICES:
            labels[k][(labels[k] == 2) & (np.abs(angle - 0.5) < 0.8)] = 4
    image = np.select([labels == 3, labels == 2, labels == 4], [0.6, 0.15, 1.0], 0.3).astype(np.float32)
    return image + rng.normal(0, 0.03, image.shape).astype(np.float32), labels


def _write_cohort(root, *, n_patients=6, label_maps=True, rows=None, scar_code=4):
    """images/, labels/ and labels.csv (one 'fibrosis' row per slice) of n_patients cases; even ones have scar.
    ``scar_code`` relabels the scar pixels in labels/ (2: scar drawn as plain myocardium)."""
    (root / "images").mkdir(parents=True)
    geometry = Geometry(spacing_mm=(1.5, 1.5, 8.0))
    lines = ["case_id,slice,fibrosis"]
    for n in range(n_patients):
        case_id, scar = f"lge{n:02d}", n % 2 == 0
        image, labels = _lge_case(scar, seed=n)
        write_volume(Volume(image, geometry), root / "images" / f"{case_id}.nii.gz")
        if label_maps:
            (root / "labels").mkdir(exist_ok=True)
            write_volume(Volume(np.where(labels == 4, scar_code, labels).astype(np.uint8), geometry),
                         root / "labels" / f"{case_id}.nii.gz")
        lines += [f"{case_id},{k},{int(scar and k in SCAR_SLICES)}" for k in range(N_SLICES)]
    (root / "labels.csv").write_text("\n".join(rows if rows is not None else lines) + "\n")
    return root


def _train(root, *extra):
    return main(["train", "--task", "fibrosis", "--data", str(root / "data"), "--out", str(root / "run"), "--quiet",
                 *TINY, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("fibrosis_train")
    _write_cohort(root / "data")
    code = _train(root, "--register-to", str(root / "models"))
    return {"root": root, "code": code}


def test_fibrosis_training_writes_the_run_folder_and_registers_the_pipeline_models(trained):
    assert trained["code"] == 0
    root = trained["root"]
    run = root / "run"
    for name in ("split.json", "data.json", "prepared/train_weak.npz", "prepared/train_myocardium.npz",
                 "predicted/train_myocardium.npz", "pseudo/slice_train.npz", "runs/myocardium/best.pt",
                 "runs/classifier_slice/best.pt", "runs/weak_unet_slice/best.pt"):
        assert (run / name).exists(), name
    split = json.loads((run / "split.json").read_text())
    assert split["validation"] and split["train"]
    assert {p.stem for p in (root / "models").glob("*.json")} == {f"{name}-1.0" for name in MODELS}
    classifier = json.loads((root / "models" / "lge_fibrosis_classifier-1.0.json").read_text())
    assert classifier["inference"]["classifier_input"]["intensity"] == "myocardium_relative"
    weak = json.loads((root / "models" / "lge_fibrosis_weak-1.0.json").read_text())
    assert weak["input_spec"]["crop_size"] == [32, 32] and weak["input_spec"]["in_plane_spacing_mm"] == [1.5, 1.5]
    with np.load(run / "prepared" / "train_weak.npz") as data:  # images and slice labels only: no label map
        assert set(data.files) == {"images_uint8", "patient_ids", "slice_indices", "slice_labels", "stack_labels"}
        assert set(np.unique(data["slice_labels"])) == {0, 1}


def test_the_fibrosis_command_runs_on_the_trained_models(trained, tmp_path):
    root = trained["root"]
    out = tmp_path / "out"
    code = main(["fibrosis", str(root / "data" / "images" / "lge00.nii.gz"), "--out", str(out), "--models-dir",
                 str(root / "models"), "--device", "cpu", "--quiet"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["supervision"] == "weak" and len(report["slice_fibrosis_probability"]) == N_SLICES
    assert {m["name"] for m in report["provenance"]["models"]} >= set(MODELS)


def _rows(fibrosis_of_slice, *, header="case_id,slice,fibrosis", n_patients=6):
    """labels.csv lines with ``fibrosis_of_slice(n, k)`` as the value of case n slice k (None: no row)."""
    lines = [header]
    for n in range(n_patients):
        for k in range(N_SLICES):
            value = fibrosis_of_slice(n, k)
            if value is not None:
                lines.append(f"lge{n:02d},{k},{value}")
    return lines


@pytest.mark.parametrize("cohort, message", [
    ({"label_maps": False}, "No case has a label map"),
    ({"rows": ["case_id,fibrosis"] + [f"lge{n:02d},{n % 2}" for n in range(6)]}, "No slice-level 'fibrosis'"),
    ({"rows": _rows(lambda n, k: 1, header="case_id,slice,scar")}, "No slice-level 'fibrosis'"),
    ({"rows": _rows(lambda n, k: 0)}, "all negative"),
    ({"rows": _rows(lambda n, k: 1)}, "all positive"),
    ({"rows": _rows(lambda n, k: "maybe")}, "must be 0 or 1"),
    ({"rows": ["case_id,slice,fibrosis", "lge00,1,1", "lge01,0,0", "nobody,0,1"]}, "'nobody' has no image"),
    ({"rows": ["case_id,slice,fibrosis", "lge00,1,1", "lge01,0,0", "lge02,9,1"]}, "slices [9]"),
])
def test_fibrosis_training_refuses_bad_data_before_writing_anything(tmp_path, capsys, cohort, message):
    _write_cohort(tmp_path / "data", **cohort)
    models = tmp_path / "models"
    code = _train(tmp_path, "--register-to", str(models))
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "run").exists() and not models.exists()


def test_fibrosis_run_folder_and_registered_models_are_not_replaced_silently(trained, capsys):
    root = trained["root"]
    assert _train(root, "--register-to", str(root / "models")) == 4
    assert "--resume" in capsys.readouterr().err
    assert _train(root, "--register-to", str(root / "models"), "--resume") == 4
    assert "already registered" in capsys.readouterr().err
    assert _train(root, "--resume") == 0  # a finished run resumes at once, on its own split
    assert json.loads((root / "run" / "split.json").read_text())["train"]


def test_options_of_other_tasks_are_refused_for_fibrosis(tmp_path, capsys):
    _write_cohort(tmp_path / "data")
    assert _train(tmp_path, "--prior", "cam") == 2
    assert "do not apply to --task fibrosis" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- weak labels and the honesty rule --------------------------------------------------------------------------------
def _prepared(root, **options):
    from cardiac_ai.datasets import list_generic
    from cardiac_ai.fibrosis.recipe import FibrosisRecipe, prepare_fibrosis_data

    return prepare_fibrosis_data(list_generic(root), "fibrosis", recipe=FibrosisRecipe(crop_size=32), **options)


def test_scar_in_the_label_maps_does_not_change_the_weak_training_data(tmp_path):
    """The weak models' data (images, slice labels) and the myocardium targets are the same whether the label maps
    mark the scar (code 4) or draw it as plain myocardium (code 2): no pixel scar label reaches them."""
    with_scar = _prepared(_write_cohort(tmp_path / "scar", scar_code=4))
    without_scar = _prepared(_write_cohort(tmp_path / "plain", scar_code=2))
    weak, plain = with_scar.weak.to_arrays(), without_scar.weak.to_arrays()
    for name in weak:
        np.testing.assert_array_equal(weak[name], plain[name], err_msg=name)
    np.testing.assert_array_equal(with_scar.myocardium_labels, without_scar.myocardium_labels)
    assert set(np.unique(with_scar.myocardium_labels)) <= {0, 2, 3}


def test_slice_labels_come_from_the_csv_and_from_label_maps_only_when_asked(tmp_path):
    # case 0: slice rows for slices 1 and 3 only; case 1: a whole-case 0 (every slice negative); the rest: no row
    rows = ["case_id,slice,fibrosis", "lge00,1,1", "lge00,3,0", "lge01,,0"]
    root = _write_cohort(tmp_path / "data", rows=rows)
    weak = _prepared(root).weak
    assert [(str(p), int(k), int(v)) for p, k, v in zip(weak.patient_ids, weak.slice_indices, weak.slice_labels)] == [
        ("lge00", 1, 1), ("lge00", 3, 0), *[("lge01", k, 0) for k in range(N_SLICES)]]
    derived = _prepared(root, slice_labels_from_label_maps=True).weak
    assert len(derived) == 6 * N_SLICES
    for p, k, v in zip(derived.patient_ids, derived.slice_indices, derived.slice_labels):
        if p == "lge00" and k in (1, 3):  # the CSV's labels win
            assert v == (k == 1)
        elif p != "lge01":
            assert v == (int(p[-2:]) % 2 == 0 and k in SCAR_SLICES), (p, k)


def test_validation_patients_of_one_kind_only_get_a_warning_that_the_best_epoch_is_no_choice(caplog):
    import logging
    from types import SimpleNamespace

    import numpy as np

    from cardiac_ai.fibrosis.recipe import _check_parts

    class Weak(SimpleNamespace):
        def __len__(self):
            return len(self.slice_labels)

    def part(labels):
        return SimpleNamespace(weak=Weak(slice_labels=np.array(labels)), myocardium_images=np.zeros((2, 4, 4)))

    split = SimpleNamespace(train=["a", "b"], validation=["c"])
    with caplog.at_level(logging.WARNING, logger="cardiac_ai.fibrosis.recipe"):
        _check_parts({"train": part([1, 0, 1]), "validation": part([1, 0])}, split)
        assert not caplog.records
        _check_parts({"train": part([1, 0, 1]), "validation": part([0, 0, 0])}, split)
    assert "no slice with fibrosis (0 positive, 3 negative)" in caplog.text and "--split" in caplog.text


@pytest.mark.parametrize(("value", "expected"), [("1.0", 1), ("0.0", 0), (1.0, 1), ("yes", 1), ("0", 0)])
def test_a_fibrosis_label_written_as_a_float_by_pandas_reads_as_0_or_1(value, expected):
    from cardiac_ai.fibrosis.recipe import _binary

    assert _binary(value, "labels.csv row 2", "fibrosis") == expected


@pytest.mark.parametrize("value", ["0.5", "2", "nan?"])
def test_a_fibrosis_label_other_than_0_or_1_is_refused(value):
    from cardiac_ai.errors import InputError
    from cardiac_ai.fibrosis.recipe import _binary

    with pytest.raises(InputError, match="must be 0 or 1"):
        _binary(value, "labels.csv row 2", "fibrosis")
