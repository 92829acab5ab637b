"""Train every cine model of the region-aware pipeline on one GPU, from the compact crops of ``train_acdc_cine.py``.

Usage (the GPU machine needs torch, numpy and MONAI only; nothing of CardiacAI's I/O stack)::

    python scripts/train_acdc_cine.py --stage prepare --work work_data/cine         # here: crops + sampling weights
    python scripts/train_cine_gpu.py --data work_data/cine --out OUT --budget 420   # there: trains, writes OUT/*.pt
    python scripts/train_acdc_cine.py --stage import-gpu --gpu-results OUT --work work_data/cine   # here: register

Four jobs run as parallel processes on the one GPU (small 2D networks leave most of an H100 idle in one process):

=============  ===================================================================================================
``main``       baseline U-Net, then base / middle / apex models fine-tuned from it       -> main_a.pt, main_b.pt
``sampler4``   the baseline trained with quadratic non-uniform batch sampling, ratio 4   -> sampler4.pt
``sampler20``  the same with ratio 20                                                     -> sampler20.pt
``aux``        localiser U-Net (3.5 mm, whole field of view) and DenseNet121 region classifier -> aux.pt
``fold0``..    cross-validation baselines (not run by default): the baseline trained without one fifth of the
``fold4``      training patients (every fifth in sorted order, from the k-th), so that each training patient has a
               model that never saw it; their segmentations are the QC regressor's realistic training pairs
               (``train_qc.py --cine-fold-models``)                                        -> fold<k>.pt
=============  ===================================================================================================

Augmentation runs on the GPU, per batch: random affine (rotation, isotropic and anisotropic scale, translation),
smooth elastic displacement, gamma, multiplicative bias field, contrast and Gaussian noise. Every job has a fixed
number of epochs (cosine schedule) and a wall-clock deadline: a job that reaches the deadline stops, keeps its best
validated weights and records ``stopped_early`` and the epochs it did, so what the cards say is what happened.
Each ``.pt`` holds, per model: float16 state dict, network name and kwargs, input spec, epochs planned and done,
the best validation metric, its epoch, the validation history, seconds and slices per second.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BACKEND = str(Path(__file__).resolve().parents[1] / "CardiacAI")
if BACKEND not in sys.path:  # a bare GPU machine has the checkout, not an installed cardiac_ai
    sys.path.insert(0, BACKEND)

SEGMENTATION_KWARGS = {"out_channels": 4, "channels": [24, 48, 96, 192, 384], "strides": [2, 2, 2, 2],
                       "num_res_units": 2}
LOCALISER_KWARGS = {"out_channels": 4, "channels": [16, 32, 64, 128], "strides": [2, 2, 2], "num_res_units": 1}
CLASSIFIER_KWARGS = {"in_channels": 1, "out_channels": 4}
REGION_FINE_TUNE = (("base", 1, 150), ("middle", 2, 50), ("apex", 3, 150))  # name, region code, epochs
JOBS = ("main", "sampler4", "sampler20", "aux")
N_FOLDS = 5
FOLD_JOBS = tuple(f"fold{k}" for k in range(N_FOLDS))


def build(name: str, kwargs: dict) -> torch.nn.Module:
    from cardiac_ai.models.networks import build_network  # torch + MONAI only

    return build_network(name, **kwargs)


# -- data -------------------------------------------------------------------------------------------------------------
def load_part(path: Path, device: torch.device, limit: int | None = None, slice_context: int = 0) -> dict:
    """A prepared part on the device; ``limit`` keeps every k-th slice so that about that many remain (smoke runs).
    ``slice_context`` > 0 gives each slice its neighbours in its stack as channels (a 2.5D model's input)."""
    from cardiac_ai.preprocessing import InputSpec
    from cardiac_ai.training.slices import slice_context_images

    with np.load(path, allow_pickle=False) as data:
        spec = InputSpec.from_dict(json.loads(str(data["spec_json"])))
        images = data["images_uint8"][:, np.newaxis]  # uint8 (N, 1, H, W)
        if slice_context:
            spec = spec.with_slice_context(slice_context)
            images = slice_context_images(data["images_uint8"], data["case_ids"], data["slice_indices"], spec)
        keep = slice(None) if not limit else slice(None, None, max(1, len(data["regions"]) // limit))
        part = {
            "images": torch.from_numpy(images[keep]).to(device),
            "labels": (torch.from_numpy(data["labels"][keep].astype(np.int64)).to(device) if "labels" in data
                       else None),
            "regions": torch.from_numpy(data["regions"][keep].astype(np.int64)).to(device),
            "patients": np.array([str(c).split("_")[0] for c in data["case_ids"][keep]]),
            "spec": spec.to_dict(),
        }
    return part


def held_out_patients(patients: np.ndarray, fold: int, n_folds: int = N_FOLDS) -> list[str]:
    """The training patients cross-validation fold ``fold`` leaves out: every ``n_folds``-th of the sorted patients,
    from the ``fold``-th."""
    return sorted(set(patients.tolist()))[fold::n_folds]


def as_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 255.0


# -- augmentation on the GPU ------------------------------------------------------------------------------------------
def augment(images: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator, *,
            rotate_deg: float, scale: float, translate_px: float, elastic_px: float, intensity: bool):
    """Same random spatial transform for images (bilinear) and label maps (nearest); intensity on images only."""
    from cardiac_ai.training.batch_augmentation import random_gamma, random_sampling_grid

    n, _, h, w = images.shape
    device = images.device

    def uniform(low, high, *shape):
        return low + (high - low) * torch.rand(*shape, generator=generator, device=device)

    grid = random_sampling_grid(n, (h, w), generator, rotate_deg=rotate_deg, scale=scale, anisotropy=scale / 2,
                                translate_px=translate_px, elastic_px=elastic_px, device=device)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    out_labels = None
    if labels is not None:
        out_labels = F.grid_sample(labels[:, None].float(), grid, mode="nearest", padding_mode="zeros",
                                   align_corners=False)[:, 0].long()
    if intensity:
        out = random_gamma(out, generator, 1.5)
        bias = F.interpolate(torch.randn(n, 1, 3, 3, generator=generator, device=device) * 0.15, size=(h, w),
                             mode="bicubic", align_corners=False)
        out = out * torch.exp(bias) * uniform(0.8, 1.2, n, 1, 1, 1)
        noise_sd = uniform(0, 0.05, n, 1, 1, 1) * (torch.rand(n, 1, 1, 1, generator=generator, device=device) < 0.5)
        out = out + noise_sd * torch.randn(out.shape, generator=generator, device=device)
    return out, out_labels


# -- training ---------------------------------------------------------------------------------------------------------
def mean_foreground_dice(model, images, labels, batch: int = 128) -> tuple[float, list[float]]:
    """Dice per label (1..3) over all validation pixels, and their mean (as the CPU trainer's ``val_dice``)."""
    intersection = torch.zeros(4, device=images.device)
    total = torch.zeros(4, device=images.device)
    model.eval()
    with torch.no_grad(), autocast(images.device):
        for start in range(0, images.shape[0], batch):
            predicted = model(as_float(images[start:start + batch])).argmax(1)
            truth = labels[start:start + batch]
            for c in range(1, 4):
                intersection[c] += ((predicted == c) & (truth == c)).sum()
                total[c] += (predicted == c).sum() + (truth == c).sum()
    model.train()
    dices = [float(2 * intersection[c] / total[c]) if total[c] > 0 else float("nan") for c in range(1, 4)]
    finite = [d for d in dices if math.isfinite(d)]
    return (float(np.mean(finite)) if finite else 0.0), dices


def balanced_accuracy(model, images, targets, n_classes: int = 4, batch: int = 256) -> tuple[float, list[float]]:
    model.eval()
    predictions = []
    with torch.no_grad(), autocast(images.device):
        for start in range(0, images.shape[0], batch):
            predictions.append(model(as_float(images[start:start + batch])).argmax(1))
    model.train()
    predicted = torch.cat(predictions)
    recalls = [float((predicted[targets == c] == c).float().mean()) for c in range(n_classes) if (targets == c).any()]
    return float(np.mean(recalls)), recalls


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def train_model(*, network: str, kwargs: dict, train: dict, val: dict, task: str, epochs: int, batch_size: int,
                learning_rate: float, seed: int, deadline: float, augmentation: dict, log, tag: str,
                sampling_weights: np.ndarray | None = None, initial_state: dict | None = None,
                val_every: int = 5, loss_name: str = "dice_ce", fit_to_deadline: bool = False) -> dict:
    """One model: AdamW + cosine over the planned steps, best validated weights kept (float16 on the CPU).

    ``loss_name`` (segmentation): ``"dice_ce"`` (MONAI DiceCELoss) or ``"jaccard"`` (DiceLoss(jaccard=True), the
    mapping paper's loss). ``fit_to_deadline``: after the third epoch, fewer epochs are planned when the measured
    pace cannot finish them before ``deadline``, so that the cosine schedule still ends at zero (a deadline that cuts
    a schedule short leaves the learning rate high)."""
    device = train["images"].device
    torch.manual_seed(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    model = build(network, kwargs).to(device)
    if initial_state is not None:
        model.load_state_dict({k: v.float() for k, v in initial_state.items()})
    n = train["images"].shape[0]
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    epochs_requested = epochs
    plan = {"total_steps": epochs * steps_per_epoch}
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, plan["total_steps"]) / plan["total_steps"])))
    if task == "segmentation":
        from monai.losses import DiceCELoss, DiceLoss

        if loss_name not in ("dice_ce", "jaccard"):
            raise ValueError(f"loss_name must be 'dice_ce' or 'jaccard', got {loss_name!r}")
        loss_fn = (DiceCELoss(to_onehot_y=True, softmax=True) if loss_name == "dice_ce"
                   else DiceLoss(to_onehot_y=True, softmax=True, jaccard=True))
        targets_all = train["labels"]
    else:
        targets_all = train["regions"]
        counts = torch.bincount(targets_all, minlength=4).float().clamp(min=1)
        class_weights = (counts.sum() / (4 * counts)).to(device)
        loss_fn = torch.nn.CrossEntropyLoss(weight=class_weights, label_smoothing=0.1)
    weights = None if sampling_weights is None else torch.as_tensor(sampling_weights, dtype=torch.float64,
                                                                        device=device)
    best = {"metric": -1.0, "epoch": 0, "state": None}
    history = []
    started = time.time()
    seen = 0
    stopped_early = False
    epochs_done = 0
    epoch_ends = []
    epoch = 0
    while epoch < epochs:
        epoch += 1
        if weights is None:
            order = torch.randperm(n, generator=generator, device=device)
        else:
            order = torch.multinomial(weights, steps_per_epoch * batch_size, replacement=True, generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size:(step + 1) * batch_size]
            images, labels = augment(as_float(train["images"][index]),
                                     train["labels"][index] if task == "segmentation" else None, generator,
                                     **augmentation)
            with autocast(device):
                logits = model(images)
                loss = loss_fn(logits.float(), labels[:, None] if task == "segmentation" else targets_all[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            seen += index.numel()
        epochs_done = epoch
        epoch_ends.append(time.time())
        if fit_to_deadline and epoch == 3 and epochs > 3:
            pace = (epoch_ends[2] - epoch_ends[0]) / 2 * (1 + 0.5 / val_every)  # the first epoch warms up
            affordable = 3 + int(0.95 * (deadline - time.time()) / max(pace, 1e-6))
            if affordable < epochs:
                log(f"{tag}: {pace:.2f} s per epoch; {affordable} of {epochs} epochs fit before the deadline")
                epochs = max(4, affordable)
                plan["total_steps"] = epochs * steps_per_epoch
        if epoch % val_every == 0 or epoch == epochs or time.time() > deadline:
            if task == "segmentation":
                metric, parts = mean_foreground_dice(model, val["images"], val["labels"])
            else:
                metric, parts = balanced_accuracy(model, val["images"], val["regions"])
            history.append({"epoch": epoch, "loss": float(loss.detach()), "metric": metric, "parts": parts,
                            "seconds": round(time.time() - started, 1)})
            if metric > best["metric"]:
                best = {"metric": metric, "epoch": epoch,
                        "state": {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}}
            log(f"{tag} epoch {epoch}/{epochs} loss {float(loss.detach()):.4f} metric {metric:.4f} "
                f"best {best['metric']:.4f}@{best['epoch']} {seen / (time.time() - started):.0f} slices/s")
        if time.time() > deadline:
            stopped_early = True
            log(f"{tag}: deadline reached after epoch {epoch}; keeping the best validated weights")
            break
    seconds = time.time() - started
    return {
        "network": network, "network_kwargs": kwargs, "input_spec": train["spec"], "task": task,
        "epochs": epochs, "epochs_requested": epochs_requested, "epochs_done": epochs_done,
        "stopped_early": stopped_early, "batch_size": batch_size,
        "learning_rate": learning_rate, "seed": seed, "augmentation": augmentation,
        "metric_name": "val_dice" if task == "segmentation" else "val_balanced_accuracy",
        "metric": best["metric"], "best_epoch": best["epoch"], "state": best["state"], "history": history,
        "seconds": round(seconds, 1), "slices_per_second": round(seen / max(seconds, 1e-9), 1),
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "sampling": "uniform" if sampling_weights is None else "quadratic",
        "loss": loss_name if task == "segmentation" else "ce",
    }


#: The device tool brings back files of at most 16 MB: larger weights travel as shards beside their results file.
MAX_FILE_BYTES = 15_000_000


def save_results(models: dict, target: Path, max_bytes: int = MAX_FILE_BYTES) -> list[Path]:
    """Write ``{model key: result}`` to ``target`` atomically; a state dict over ``max_bytes`` goes to shard files
    ``<target>.shard<N>`` (each under ``max_bytes``, named in the result's ``state_shards``). Returns every file."""
    models = {key: dict(result) for key, result in models.items()}
    written = []
    for key, result in models.items():
        state = result.get("state")
        if not state or sum(v.numel() * v.element_size() for v in state.values()) <= max_bytes:
            continue
        shards, current, size = [], {}, 0
        for name, tensor in state.items():
            if current and size + tensor.numel() * tensor.element_size() > max_bytes:
                shards.append(current)
                current, size = {}, 0
            current[name] = tensor
            size += tensor.numel() * tensor.element_size()
        shards.append(current)
        result["state"], result["state_shards"] = None, []
        for shard in shards:
            shard_path = target.with_name(f"{target.name}.shard{len(written) + 1}")
            torch.save({key: shard}, str(shard_path) + ".part")
            os.replace(str(shard_path) + ".part", shard_path)
            written.append(shard_path)
            result["state_shards"].append(shard_path.name)
    torch.save(models, str(target) + ".part")
    os.replace(str(target) + ".part", target)
    return [target, *written]


def load_results(path: Path) -> dict:
    """The results :func:`save_results` wrote, with sharded state dicts joined again."""
    models = torch.load(path, map_location="cpu", weights_only=True)
    for key, result in models.items():
        if result.get("state_shards"):
            state = {}
            for shard in result.pop("state_shards"):
                state.update(torch.load(path.with_name(shard), map_location="cpu", weights_only=True)[key])
            result["state"] = state
    return models


def subset(part: dict, mask: torch.Tensor) -> dict:
    chosen = mask.cpu().numpy()
    return {k: (v[mask] if isinstance(v, torch.Tensor) else v[chosen] if isinstance(v, np.ndarray) else v)
            for k, v in part.items()}


SEGMENTATION_AUGMENTATION = {"rotate_deg": 25.0, "scale": 0.15, "translate_px": 16.0, "elastic_px": 3.0,
                             "intensity": True}


def run_job(job: str, args) -> None:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    deadline = args.started + args.budget
    data = Path(args.data)
    out = Path(args.out)
    epochs = args.epochs

    def log(message: str) -> None:
        print(f"{time.time() - args.started:7.1f}s [{job}] {message}", flush=True)

    def save(name: str, models: dict) -> None:
        for path in save_results(models, out / name):
            log(f"wrote {path.name} ({path.stat().st_size / 1e6:.1f} MB)")

    if job in ("main", "sampler4", "sampler20"):
        train = load_part(data / "cine_train.npz", device, args.limit, args.slice_context)
        val = load_part(data / "cine_val.npz", device, args.limit, args.slice_context)
        sampling = None
        if job != "main":
            with np.load(data / "sampling_weights.npz") as w:
                sampling = w[f"ratio{job.removeprefix('sampler')}"]
            if args.limit:
                sampling = sampling[::max(1, len(sampling) // args.limit)]
        kwargs = dict(SEGMENTATION_KWARGS, in_channels=train["spec"]["channels"])
        common = dict(network="unet2d", kwargs=kwargs, task="segmentation", batch_size=args.batch_size,
                      augmentation=SEGMENTATION_AUGMENTATION, log=log)
        start = torch.load(args.init_weights, map_location=device) if args.init_weights else {}
        initial = start.get("model")
        if initial is not None and args.slice_context:
            from cardiac_ai.training.checkpoint import widen_input_channels

            initial = widen_input_channels(initial, build("unet2d", kwargs).state_dict(),
                                           keep_channel=args.slice_context)
        baseline = train_model(train=train, val=val, epochs=epochs, learning_rate=args.learning_rate or 2e-3, seed=0,
                               deadline=deadline, sampling_weights=sampling, tag="baseline" if job == "main" else job,
                               initial_state=initial, fit_to_deadline=args.fit_to_deadline, **common)
        if args.init_weights:
            baseline["started_from"] = start.get("from", Path(args.init_weights).name)
        if job != "main":
            save(f"{job}.pt", {f"cine_baseline_{job}": baseline})
            return
        save("main_a.pt", {"cine_baseline": baseline})
        regional = {}
        for name, code, region_epochs in REGION_FINE_TUNE:
            region_epochs = max(1, round(region_epochs * args.fine_tune_scale))
            regional[f"cine_{name}"] = train_model(
                train=subset(train, train["regions"] == code), val=subset(val, val["regions"] == code),
                epochs=region_epochs, learning_rate=5e-4, seed=0, deadline=deadline + args.fine_tune_grace,
                initial_state=baseline["state"], tag=name, **common)
        save("main_a.pt", {"cine_baseline": baseline, "cine_base": regional["cine_base"]})
        save("main_b.pt", {"cine_middle": regional["cine_middle"], "cine_apex": regional["cine_apex"]})
    elif job in FOLD_JOBS:
        train = load_part(data / "cine_train.npz", device, args.limit, args.slice_context)
        val = load_part(data / "cine_val.npz", device, args.limit, args.slice_context)
        held_out = held_out_patients(train["patients"], FOLD_JOBS.index(job))
        if not held_out:
            raise SystemExit(f"{job}: {len(set(train['patients']))} training patients are fewer than {N_FOLDS} folds")
        kept = torch.from_numpy(~np.isin(train["patients"], held_out)).to(device)
        log(f"leaving out {len(held_out)} training patients: {', '.join(held_out)}")
        kwargs = dict(SEGMENTATION_KWARGS, in_channels=train["spec"]["channels"])
        baseline = train_model(network="unet2d", kwargs=kwargs, train=subset(train, kept), val=val,
                               task="segmentation", epochs=epochs, batch_size=args.batch_size,
                               learning_rate=args.learning_rate or 2e-3, seed=0, deadline=deadline,
                               augmentation=SEGMENTATION_AUGMENTATION, log=log, tag=job,
                               fit_to_deadline=args.fit_to_deadline)
        baseline["held_out_patients"] = held_out
        save(f"{job}.pt", {"cine_baseline": baseline})
    elif job == "aux":
        loc_train = load_part(data / "localiser_train.npz", device, args.limit)
        loc_val = load_part(data / "localiser_val.npz", device, args.limit)
        localiser = train_model(
            network="unet2d", kwargs=LOCALISER_KWARGS, train=loc_train, val=loc_val, task="segmentation",
            epochs=max(1, epochs // 2), batch_size=args.batch_size, learning_rate=2e-3, seed=0, deadline=deadline,
            augmentation={"rotate_deg": 20.0, "scale": 0.15, "translate_px": 10.0, "elastic_px": 0.0,
                          "intensity": True}, log=log, tag="localiser")
        save("aux.pt", {"cine_localiser": localiser})
        cls_train = load_part(data / "classifier_train.npz", device, args.limit)
        cls_val = load_part(data / "classifier_val.npz", device, args.limit)
        classifier = train_model(
            network="densenet121_2d", kwargs=CLASSIFIER_KWARGS, train=cls_train, val=cls_val, task="classification",
            epochs=max(1, epochs // 2), batch_size=args.batch_size, learning_rate=1e-3, seed=0,
            deadline=deadline + args.fine_tune_grace,
            augmentation={"rotate_deg": 20.0, "scale": 0.1, "translate_px": 5.0, "elastic_px": 0.0,
                          "intensity": True}, log=log, tag="classifier")
        save("aux.pt", {"cine_localiser": localiser, "cine_region_classifier": classifier})
    else:
        raise SystemExit(f"unknown job {job!r}; jobs: {', '.join((*JOBS, *FOLD_JOBS))}")


def run_parallel_jobs(script: str, argv, args, jobs, run_job) -> int:
    """With ``--job``, run that job here; otherwise start ``script`` once per job of ``args.jobs``, all sharing
    one clock (``--started``) for their deadlines, and wait. Exit status 1 when a job failed."""
    args.started = args.started or time.time()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.job:
        run_job(args.job, args)
        return 0
    print(f"torch {torch.__version__}, cuda {torch.cuda.is_available()}, "
          f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'}", flush=True)
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--jobs" and a not in jobs]
    processes = {job: subprocess.Popen([sys.executable, script, *forwarded, "--job", job,
                                        "--started", str(args.started)]) for job in args.jobs}
    failed = [job for job, process in processes.items() if process.wait() != 0]
    print(f"done in {time.time() - args.started:.0f} s; failed jobs: {failed or 'none'}", flush=True)
    return 1 if failed else 0


def job_parser(doc: str, *, data: str, jobs, budget: float, optional_jobs=()) -> argparse.ArgumentParser:
    """The options every GPU trainer of scripts/ shares (its own are added by the caller); ``optional_jobs`` run only
    when named in ``--jobs``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", default=data, help="folder of the prepared .npz crops")
    parser.add_argument("--out", required=True, help="folder for the .pt results")
    parser.add_argument("--jobs", nargs="+", default=list(jobs), choices=[*jobs, *optional_jobs])
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--budget", type=float, default=budget, help="seconds until every job stops")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="about this many slices per part (smoke runs)")
    parser.add_argument("--started", type=float, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = job_parser(__doc__, data="work_data/cine", jobs=JOBS, budget=420.0, optional_jobs=FOLD_JOBS)
    parser.add_argument("--epochs", type=int, default=250, help="baseline epochs (localiser, classifier: half)")
    parser.add_argument("--fine-tune-scale", type=float, default=1.0, help="scales the region models' epochs")
    parser.add_argument("--init-weights", help="checkpoint ({'model': state dict}) the baselines start from instead of "
                                               "random weights (train_acdc_cine.py --stage prepare --init-from)")
    parser.add_argument("--learning-rate", type=float, help="baseline learning rate (default 2e-3)")
    parser.add_argument("--fit-to-deadline", action="store_true",
                        help="plan fewer baseline epochs when the measured pace cannot finish them by --budget")
    parser.add_argument("--slice-context", type=int, default=0,
                        help="segmentation models (main, samplers) see this many neighbouring slices on each side "
                             "as extra channels (2.5D); with --init-weights a single-slice start is widened, the "
                             "new channels starting at zero")
    parser.add_argument("--fine-tune-grace", type=float, default=60.0,
                        help="extra seconds the region models and the classifier may use after --budget")
    return run_parallel_jobs(__file__, argv, parser.parse_args(argv), (*JOBS, *FOLD_JOBS), run_job)


if __name__ == "__main__":
    raise SystemExit(main())
