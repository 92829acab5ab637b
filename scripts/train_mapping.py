"""Train the myocardium segmentation model for T1 and T2 maps (``map_myocardium``) on semi-synthetic ACDC maps.

Usage:
    python scripts/train_mapping.py --data ../shared/data/acdc/training --work work_data/mapping [--stage all]
    python scripts/train_mapping.py --epochs 1 --raw-epochs 1 --limit 3 --work /tmp/mapping_check   # quick check

Stages (each skips what is already on disk, so a run can be resumed):

``dataset``   one semi-synthetic mapping case per ACDC patient (ED frame; base, mid, apex slices; T1 and T2 maps,
              raw MOLLI and T2-prepared series) with :func:`cardiac_ai.mapping.build_mapping_dataset`, on the cine
              models' split ``Resources/Splits/acdc_cine_split.json`` (no test patient is trained on).
``prepare``   2D slices, resampled to 1.5 mm and cropped to 128 x 128 (192 mm). The paper used 224 x 224 (about
              358 mm at 1.6 mm); 128 at 1.5 mm still holds the whole heart and costs a third of the computation,
              which matters on a CPU. Training crops are centred on the labels plus a random shift of up to 20 px
              (30 mm), so the network also sees off-centre hearts and plain chest (inference runs on the whole field of
              view, see :mod:`cardiac_ai.mapping.pipeline`); validation crops are centred on the labels. Images:
              the T1 and T2 maps (``maps_*.npz``) and, for the first phase, also every raw MOLLI and T2-prepared
              frame (``raw_*.npz``), as the paper did.
``flexible``  the paper's architecture: MONAI ``FlexibleUNet`` with a ResNet encoder (``--backbone``, default
              resnet10, 6.0 M parameters, 12 MB in float16: the paper's ResNet-50 (about 33 M) would not fit the
              bundled-model size budget and trains four times slower on a CPU; resnet18 and resnet34 are the other
              choices) and a light decoder, **initialised at random**: no ImageNet weights can be downloaded here.
              Jaccard loss. Phase 1 on raw frames + maps (``--raw-epochs``), phase 2 fine-tunes on the maps only
              (``--epochs``).
``unet``      a plain MONAI U-Net trained the same way, for the paper's Table 6 comparison.
``register``  exports the best checkpoints: ``map_myocardium`` 1.0 (FlexibleUNet) into ``WORK/models`` and the
              U-Net under the same name into ``WORK/models_unet`` (compare them with
              ``benchmarks/mapping_segmentation.py --models ... --compare-models ...``).
``import-gpu`` the results of ``train_mapping_gpu.py`` (``--gpu-results OUT``): each candidate becomes a run folder
              ``WORK/run_gpu_<job>`` and a registry folder ``WORK/models_gpu_<job>`` (``map_myocardium``,
              ``--version``), to be compared on the validation patients with ``benchmarks/mapping_segmentation.py``.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from cardiac_ai.datasets import list_acdc, load_case, load_split, refs_in_part
from cardiac_ai.datasets.case import Case
from cardiac_ai.io import read_json
from cardiac_ai.mapping import build_mapping_dataset, load_mapping_case, make_mapping_case, save_mapping_case
from cardiac_ai.preprocessing import InputSpec
from cardiac_ai.progress import PROGRESS_LINES_HELP, StageProgress
from cardiac_ai.training import TrainingConfig
from cardiac_ai.training.augmentation import AugmentationConfig
from cardiac_ai.training.segmentation import train_segmentation_prepared
from cardiac_ai.training.slices import PreparedSlices, load_prepared, prepare_slices, save_prepared

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the GPU trainer beside this script, also when imported
from train_mapping_gpu import flexible_kwargs

SPLIT_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Splits" / "acdc_cine_split.json"
MAP_SPEC = InputSpec(in_plane_spacing_mm=(1.5, 1.5), crop_size=(128, 128))
MAX_SHIFT_MM = 30.0
AUGMENTATION = AugmentationConfig(translate_prob=0.5, translate_range_px=8.0)
LABEL_MAP = {0: "background", 1: "rv_blood_pool", 2: "lv_myocardium", 3: "lv_blood_pool"}
TRAINING_DATA = ("Semi-synthetic T1 and T2 maps (cardiac_ai.mapping.build_mapping_dataset, seed 0) on the ED anatomy of "
                 "the ACDC training patients of the split; phase 1 also on the raw MOLLI and T2-prepared frames")
NETWORKS = {
    "flexible": ("flexible_unet", flexible_kwargs),
    "unet": ("unet2d", lambda backbone: {"out_channels": 4, "channels": (16, 32, 64, 128, 256),
                                         "strides": (2, 2, 2, 2), "num_res_units": 2}),
}


def dataset(args, work: Path) -> Path:
    """The mapping data set's folder (built when missing); with --limit only the first N patients per part."""
    folder = work / ("dataset" if args.limit is None else f"dataset_first{args.limit}")
    if (folder / "index.json").exists() or (args.limit is not None and any(folder.glob("*/*.npz"))):
        return folder
    if args.limit is None:
        build_mapping_dataset(args.data, folder, split_file=SPLIT_FILE, seed=0)
        return folder
    split = load_split(SPLIT_FILE)
    refs = list_acdc(args.data, phases=("ED",))
    for part in ("train", "validation"):
        for ref in refs_in_part(refs, split, part)[: args.limit]:
            save_mapping_case(make_mapping_case(load_case(ref), seed=0), folder / part / f"{ref.patient_id}.npz")
    return folder


def mapping_cases(folder: Path, part: str):
    files = sorted((folder / part).glob("*.npz"))
    if (folder / "index.json").exists():
        index = read_json(folder / "index.json")
        files = [folder / entry["file"] for entry in index["cases"] if entry["part"] == part]
    return [load_mapping_case(f) for f in files]


def as_cases(mapping_case, *, raw: bool) -> list[Case]:
    """Training cases of one mapping case: its T1 and T2 maps, or every raw MOLLI and T2-prepared frame."""
    labels, pid = mapping_case.labels, mapping_case.patient_id
    if not raw:
        return [Case(f"{pid}_t1", pid, mapping_case.t1_map_ms, labels),
                Case(f"{pid}_t2", pid, mapping_case.t2_map_ms, labels)]
    cases = []
    for name, series in (("molli", mapping_case.molli), ("t2prep", mapping_case.t2prep)):
        for t in range(series.array.shape[0]):
            cases.append(Case(f"{pid}_{name}{t}", pid, series.frame(t), labels))
    return cases


def use_map_spec(spacing_mm: float, crop_px: int) -> None:
    """Prepare and train at another in-plane spacing and crop (``--spacing-mm``, ``--crop-px``) than 1.5 mm / 128."""
    global MAP_SPEC
    MAP_SPEC = InputSpec(in_plane_spacing_mm=(spacing_mm, spacing_mm), crop_size=(crop_px, crop_px))


def shifted_centre(case: Case):
    """Labels' bounding-box centre plus a random shift of up to MAX_SHIFT_MM (fixed per case id), as (j, i) indices
    of the resampled grid (which keeps the centre of the field of view, as ``preprocess`` does)."""
    rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
    labels = case.labels.array
    rows = np.flatnonzero(labels.any(axis=(0, 2)))
    cols = np.flatnonzero(labels.any(axis=(0, 1)))
    spacing_i, spacing_j, _ = case.image.geometry.spacing_mm
    centre = []
    for index, n, old, new in ((rows, labels.shape[1], spacing_j, MAP_SPEC.in_plane_spacing_mm[1]),
                               (cols, labels.shape[2], spacing_i, MAP_SPEC.in_plane_spacing_mm[0])):
        m = max(1, int(round(n * old / new)))
        first_mm = ((n - 1) * old - (m - 1) * new) / 2.0
        centre.append(((index[0] + index[-1]) / 2.0 * old - first_mm) / new)
    max_shift_px = MAX_SHIFT_MM / MAP_SPEC.in_plane_spacing_mm[0]
    shift = rng.uniform(-max_shift_px, max_shift_px, 2)
    return (centre[0] + shift[0], centre[1] + shift[1])


def prepared(work: Path, name: str, cases, crop_center):
    path = work / f"{name}.npz"
    if not path.exists():
        save_prepared(prepare_slices(cases, MAP_SPEC, crop_center=crop_center), path)
    return load_prepared(path)  # train on exactly what a GPU run would read


def _initial_checkpoint(models_folder: str, target: Path) -> Path:
    """The map_myocardium weights of a registry folder as a trainer checkpoint (``initial_weights`` reads those)."""
    from cardiac_ai.training.checkpoint import registry_model_checkpoint

    print(f"phase 2 starts from the map_myocardium of {models_folder}", flush=True)
    return registry_model_checkpoint(models_folder, "map_myocardium", target)


def config(network: str, kwargs: dict, epochs: int, learning_rate: float) -> TrainingConfig:
    return TrainingConfig(network=network, network_kwargs=kwargs, input_spec=MAP_SPEC.to_dict(), epochs=epochs,
                          batch_size=16, learning_rate=learning_rate, loss="jaccard", metric_name="val_dice",
                          metric_mode="max", seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/acdc/training")
    parser.add_argument("--work", default="work_data/mapping")
    parser.add_argument("--stage", default="all",
                        choices=["dataset", "prepare", "flexible", "unet", "register", "import-gpu", "all"])
    parser.add_argument("--epochs", type=int, default=50, help="phase 2: epochs on the maps only")
    parser.add_argument("--raw-epochs", type=int, default=6, help="phase 1: epochs on raw frames + maps (0: skip)")
    parser.add_argument("--backbone", default="resnet10", choices=["resnet10", "resnet18", "resnet34"])
    parser.add_argument("--limit", type=int, help="only the first N training and validation patients (a check)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--progress-lines", action="store_true", help=PROGRESS_LINES_HELP)
    parser.add_argument("--init-from", metavar="FOLDER",
                        help="start phase 2 from the map_myocardium model in this registry folder (e.g. "
                             "Resources/Models: fine-tune the bundled model) instead of phase 1 or random weights")
    parser.add_argument("--learning-rate", type=float, help="phase 2 learning rate (default 5e-4 after phase 1 or "
                                                            "--init-from, else 1e-3)")
    parser.add_argument("--version", default="1.0", help="version of the registered models")
    parser.add_argument("--gpu-results", help="folder of train_mapping_gpu.py's .pt files (stage import-gpu)")
    parser.add_argument("--spacing-mm", type=float, default=1.5, help="in-plane spacing of the crops (prepare)")
    parser.add_argument("--crop-px", type=int, default=128, help="crop size in pixels (prepare)")
    parser.add_argument("--maps-only", action="store_true",
                        help="prepare the maps only, not the raw frames of phase 1 (a model fine-tuned from "
                             "--init-from needs no phase 1)")
    parser.add_argument("--augmentation", choices=["translate", "full"], default="translate",
                        help="translate: shifts only (the 1.0 model); full: also rotation, zoom, elastic, gamma, "
                             "bias field, noise, blur (cardiac_ai.training.augmentation defaults)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    use_map_spec(args.spacing_mm, args.crop_px)
    if args.maps_only and args.raw_epochs > 0 and not args.init_from and args.stage in ("flexible", "unet", "all"):
        parser.error("--maps-only leaves out phase 1's raw frames: pass --raw-epochs 0 or --init-from")
    prefix = "" if args.limit is None else f"first{args.limit}_"
    if args.stage == "import-gpu":
        if not args.gpu_results:
            parser.error("--stage import-gpu needs --gpu-results")
        import_gpu_candidates(Path(args.gpu_results), work, args.version, init_from=args.init_from)
        return
    stage_progress = StageProgress(stage_weights(args), enabled=args.progress_lines)

    stage_progress.stage("dataset")
    folder = dataset(args, work)
    print(f"mapping data set: {folder}", flush=True)
    if args.stage == "dataset":
        stage_progress.finish()
        return
    stage_progress.stage("prepare")
    names = ["maps_train", "maps_val"] + ([] if args.maps_only else ["raw_train"])
    if all((work / f"{prefix}{n}.npz").exists() for n in names):
        train_cases = val_cases = []
    else:
        train_cases, val_cases = mapping_cases(folder, "train"), mapping_cases(folder, "validation")
    maps_train = prepared(work, f"{prefix}maps_train", [c for m in train_cases for c in as_cases(m, raw=False)],
                          shifted_centre)
    maps_val = prepared(work, f"{prefix}maps_val", [c for m in val_cases for c in as_cases(m, raw=False)], "labels")
    raw_train = None if args.maps_only else prepared(
        work, f"{prefix}raw_train", [c for m in train_cases for c in as_cases(m, raw=True)], shifted_centre)
    print({"maps_train": len(maps_train), "maps_val": len(maps_val),
           "raw_train": 0 if raw_train is None else len(raw_train)}, flush=True)
    if args.stage == "prepare":
        if args.init_from:  # the start of a GPU fine-tune (train_mapping_gpu.py --init-weights)
            _initial_checkpoint(args.init_from, work / f"{prefix}init.pt")
        stage_progress.finish()
        return

    def progress(fraction, message):
        if message.startswith("Epoch") or "finished" in message:
            print(f"{time.strftime('%H:%M:%S')} {fraction:.3f} {message}", flush=True)

    for stage in ("flexible", "unet"):
        if args.stage not in (stage, "all"):
            continue
        network, kwargs = NETWORKS[stage][0], NETWORKS[stage][1](args.backbone)
        raw_share = RAW_EPOCH_COST * args.raw_epochs / max(training_cost(args), 1e-9)  # phase 1's part of the stage
        initial = _initial_checkpoint(args.init_from, work / f"{prefix}init_{stage}.pt") if args.init_from else None
        augmentation = AUGMENTATION if args.augmentation == "translate" else AugmentationConfig(
            translate_prob=0.5, translate_range_px=8.0)
        if args.raw_epochs > 0 and initial is None:
            run = work / f"{prefix}run_{stage}_raw"
            both = PreparedSlices(
                np.concatenate([raw_train.images, maps_train.images]),
                np.concatenate([raw_train.labels, maps_train.labels]),
                np.concatenate([raw_train.case_ids, maps_train.case_ids]),
                np.concatenate([raw_train.slice_indices, maps_train.slice_indices]),
                np.concatenate([raw_train.positions, maps_train.positions]),
                np.concatenate([raw_train.regions, maps_train.regions]),
                MAP_SPEC,
            )
            _, _, metrics = train_segmentation_prepared(
                both, maps_val, config=config(network, kwargs, args.raw_epochs, 1e-3), out_dir=run,
                augmentation=AUGMENTATION, device=args.device,
                progress=stage_progress.stage(stage, then=progress, part=(0.0, raw_share)),
                resume=(run / "last.pt").exists(),
            )
            print(f"{stage} phase 1 (raw frames + maps)", metrics, flush=True)
            initial = run / "best.pt"
        run = work / f"{prefix}run_{stage}"
        _, _, metrics = train_segmentation_prepared(
            maps_train, maps_val,
            config=config(network, kwargs, args.epochs, args.learning_rate or (5e-4 if initial else 1e-3)),
            out_dir=run, augmentation=augmentation, device=args.device,
            progress=stage_progress.stage(stage, then=progress, part=(raw_share, 1.0)),
            initial_weights=None if (run / "last.pt").exists() else initial, resume=(run / "last.pt").exists(),
        )
        print(f"{stage} phase 2 (maps)", metrics, flush=True)

    if args.stage in ("register", "all"):
        stage_progress.stage("register")
        register(work, prefix, args)
    stage_progress.finish()


#: Cost of one phase-1 epoch (raw MOLLI and T2-prepared frames + maps) in phase-2 epochs (maps only): a mapping case
#: holds about 12 raw frames for its 2 maps.
RAW_EPOCH_COST = 7.0


def training_cost(args) -> float:
    """Cost of one network's training (phase 1 and phase 2) in phase-2 epochs."""
    return RAW_EPOCH_COST * args.raw_epochs + args.epochs


def stage_weights(args) -> dict[str, float]:
    """Rough cost of each stage that runs, in phase-2 epochs, for the progress lines (--progress-lines)."""
    costs = {"dataset": 5.0, "prepare": 5.0, "flexible": training_cost(args), "unet": training_cost(args),
             "register": 0.1}
    running = {"dataset": ["dataset"], "prepare": ["dataset", "prepare"],
               "all": list(costs)}.get(args.stage, ["dataset", "prepare", args.stage])
    return {stage: costs[stage] for stage in running}


def import_gpu_candidates(results: Path, work: Path, version: str, *, init_from: str | None = None) -> None:
    """Register every candidate of train_mapping_gpu.py as ``WORK/models_gpu_<job>/map_myocardium``; ``init_from``:
    the registry folder whose map_myocardium the candidates were fine-tuned from (``--init-weights``)."""
    import json

    from cardiac_ai.training.checkpoint import export_best_model
    from train_acdc_cine import import_gpu_results

    jobs = sorted(p.stem.removeprefix("map_") for p in results.glob("map_*.pt"))
    if not jobs:
        raise SystemExit(f"No map_*.pt in {results}.")
    import_gpu_results(results, work, runs={f"map_myocardium_{job}": f"run_gpu_{job}" for job in jobs})
    for job in jobs:
        run = work / f"run_gpu_{job}"
        h = json.loads((run / "history.json").read_text())
        phase1 = h.get("phase1")
        first = (f"phase 1 (raw MOLLI and T2-prepared frames + maps) {phase1['epochs_done']} epochs, best validation "
                 f"Dice {phase1['metric']:.4f} at epoch {phase1['best_epoch']}; then " if phase1 else "")
        if init_from:
            spec = InputSpec.from_dict(h["input_spec"])
            first = (f"no phase 1: initialised from map_myocardium {_model_version(init_from)} ({init_from}) and "
                     f"fine-tuned at {spec.in_plane_spacing_mm[0]:g} mm, {spec.crop_size[0]} px crops; ")
        description = (
            f"FlexibleUNet ({h['network_kwargs']['backbone']} encoder, random initialisation: no ImageNet weights "
            f"available), Jaccard loss: LV myocardium, LV and RV blood pool on T1 and T2 maps. Trained on one "
            f"{h['device']} by scripts/train_mapping_gpu.py (seed {h['seed']}, batch {h['batch_size']}, AdamW, cosine, "
            f"bf16, GPU augmentation: affine, elastic, gamma, bias field, contrast, noise): {first}phase 2 (maps) "
            f"{h['epochs_done']} of {h['epochs_requested']} epochs requested, lr {h['learning_rate']}, best validation "
            f"Dice {h['metric']:.4f} at epoch {h['best_epoch']}; {h['seconds'] + (phase1 or {}).get('seconds', 0):.0f} s.")
        card = export_best_model(
            run, work / f"models_gpu_{job}", name="map_myocardium", version=version, task="segmentation",
            label_map=LABEL_MAP, training_data=TRAINING_DATA, split=_split_summary(), description=description,
            license="CC BY-NC-SA 4.0 (ACDC data terms)",
        )
        print(f"registered {card}", flush=True)


def _model_version(models_folder: str) -> str:
    """Version of the map_myocardium model that ModelRegistry would load from a folder (the highest)."""
    from cardiac_ai.models import ModelRegistry

    return ModelRegistry(paths=[Path(models_folder)]).card("map_myocardium").version


def _split_summary() -> dict:
    split = load_split(SPLIT_FILE)
    return {"file": "Resources/Splits/acdc_cine_split.json", "train": list(split.train),
            "validation": list(split.validation), "test": list(split.test)}


def register(work: Path, prefix: str, args) -> None:
    """Export the best checkpoints as registry models (float16 weights and a model card)."""
    from cardiac_ai.training.checkpoint import export_best_model

    split_summary = _split_summary()
    data = TRAINING_DATA
    for stage, folder, description in (
        ("flexible", "models", f"FlexibleUNet ({args.backbone} encoder, random initialisation: no ImageNet weights "
                               "available), Jaccard loss: LV myocardium, LV and RV blood pool on T1 and T2 maps."),
        ("unet", "models_unet", "Plain U-Net baseline (paper's Table 6 comparison), Jaccard loss, same data."),
    ):
        run = work / f"{prefix}run_{stage}"
        if (run / "best.pt").exists():
            if stage == "flexible" and args.init_from:
                description += (f" Phase 2 continued from the map_myocardium model of {args.init_from} for "
                                f"{args.epochs} epochs (lr {args.learning_rate}, {args.augmentation} augmentation).")
            card = export_best_model(
                run, work / folder, name="map_myocardium", version=args.version, task="segmentation",
                label_map=LABEL_MAP, training_data=data, split=split_summary, description=description,
                license="CC BY-NC-SA 4.0 (ACDC data terms)",
            )
            print(f"registered {card}", flush=True)


if __name__ == "__main__":
    main()
