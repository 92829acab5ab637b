"""Training checkpoints (``last.pt``, ``best.pt``) and turning the best one into a registry model.

Checkpoints are dicts of tensors and plain values, written atomically with ``torch.save`` and read with
``torch.load(weights_only=True)``: no pickled code. ``format`` marks their layout.
"""
from __future__ import annotations

import datetime
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..errors import ModelError
from ..io.atomic import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "load_checkpoint_weights",
    "capture_rng_state",
    "restore_rng_state",
    "export_best_model",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: str | Path, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` (with ``format`` added) to ``path`` atomically: a crash leaves the previous file intact."""
    import torch

    with atomic_path(path) as temporary:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, temporary)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a ``last.pt``/``best.pt`` written by the trainer (``torch.load(weights_only=True)``, on the CPU).

    Raises
    ------
    ModelError
        If the file is missing, unreadable, or of an unknown checkpoint format (the message names the file).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint {path} not found.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelError(
            f"Cannot read checkpoint {path}: {error}. The file is corrupt or not a CardiacAI checkpoint."
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ModelError(f"{path} has checkpoint format {found!r}; this cardiac_ai reads format {CHECKPOINT_FORMAT}.")
    return checkpoint


def load_checkpoint_weights(network: "nn.Module", path: str | Path) -> dict[str, Any]:
    """Load the ``model`` weights of checkpoint ``path`` into ``network``; returns the whole checkpoint.

    Raises
    ------
    ModelError
        If the checkpoint cannot be read or its tensors do not fit ``network``.
    """
    checkpoint = load_checkpoint(path)
    module = getattr(network, "module", network)
    try:
        module.load_state_dict(checkpoint["model"], strict=True)
    except (RuntimeError, KeyError) as error:
        raise ModelError(f"{path} does not fit the network {type(module).__name__}: {error}") from error
    return checkpoint


def widen_input_channels(state: Mapping[str, "torch.Tensor"], target: Mapping[str, "torch.Tensor"], *,
                         keep_channel: int) -> dict[str, "torch.Tensor"]:
    """A single-channel network's weights ``state`` fitted to ``target`` (the state dict of the same network with
    more input channels): every tensor that reads the input gets zeros for the new channels and its trained weights
    on ``keep_channel``, so the widened network starts out computing exactly what the old one did (the start of a
    2.5D fine-tune, where ``keep_channel`` is the slice itself).

    Raises
    ------
    ModelError
        If a tensor differs in anything but a single input channel (another network, not a narrower input).
    """
    widened = dict(state)
    for key, old in state.items():
        new = target.get(key)
        if new is None or tuple(old.shape) == tuple(new.shape):
            continue
        if old.ndim < 2 or old.shape[1] != 1 or old.shape[0] != new.shape[0] or old.shape[2:] != new.shape[2:] \
                or not 0 <= keep_channel < new.shape[1]:
            raise ModelError(f"{key}: cannot widen weights of shape {tuple(old.shape)} to {tuple(new.shape)} "
                             f"(only a single input channel can be widened, keeping channel {keep_channel}).")
        tensor = old.new_zeros(new.shape)
        tensor[:, keep_channel] = old[:, 0]
        widened[key] = tensor
    return widened


def registry_model_checkpoint(models_folder: str | Path, name: str, path: str | Path) -> Path:
    """Write the registry model ``name`` of ``models_folder`` (its highest version) as a trainer checkpoint: a
    float16 ``model`` state dict, the start of a fine-tune (``initial_weights``; the GPU trainers'
    ``--init-weights``). The checkpoint's ``from`` says which model and version it holds.

    Raises
    ------
    ModelError
        If the folder holds no such model or its weights do not load.
    """
    from ..models import ModelRegistry

    loaded = ModelRegistry(paths=[Path(models_folder)]).load(name, device="cpu")
    state = {k: v.half() if v.is_floating_point() else v for k, v in loaded.network.state_dict().items()}
    log.info("Start checkpoint %s from %s %s (%s)", path, name, loaded.card.version, loaded.weights_path)
    return save_checkpoint(path, {"model": state, "epoch": 0, "from": f"{name} {loaded.card.version}"})


def capture_rng_state(device: "torch.device | None" = None) -> dict[str, Any]:
    """Global torch (and CUDA ``device``), numpy and Python generator states, as checkpoint-safe values."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: Mapping[str, Any], device: "torch.device | None" = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import torch

    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["name"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def export_best_model(
    run_dir: str | Path,
    models_folder: str | Path,
    *,
    name: str,
    version: str,
    task: str,
    label_map: Mapping[int, str],
    training_data: str = "",
    split: Mapping[str, Any] | None = None,
    description: str = "",
    license: str = "",
    checkpoint: str = "best.pt",
    half_precision: bool = True,
    inference: Mapping[str, Any] | None = None,
) -> Path:
    """Turn a training run's ``best.pt`` into a registry model (``<name>-<version>.safetensors`` + card).

    The network and input spec come from the run's ``config.json``, the epoch count from ``last.pt`` (or the
    checkpoint), the validation metric from the checkpoint.

    Parameters
    ----------
    run_dir : path
        The trainer's ``out_dir``.
    models_folder : path
        Where the model files go (e.g. ``Resources/Models`` or a folder in ``CARDIACAI_MODELS``).
    name, version, task, label_map, training_data, split, description, license
        Model card fields (see :class:`~cardiac_ai.models.ModelCard`).
    checkpoint : str
        File in ``run_dir`` to export (``best.pt`` or ``last.pt``).
    half_precision : bool
        Store weights as float16.
    inference : mapping, optional
        Settings inference must reuse (the card's ``inference`` field).

    Returns
    -------
    Path
        The card JSON written.

    Raises
    ------
    ModelError
        If the checkpoint or config is missing or does not fit the network.
    """
    from ..errors import InputError
    from ..models.registry import ModelCard, save_model
    from .config import CONFIG_FILE_NAME, TrainingConfig

    run_dir = Path(run_dir)
    try:
        config = TrainingConfig.load(run_dir / CONFIG_FILE_NAME)
    except InputError as error:
        raise ModelError(f"Cannot export {run_dir}: {error}") from error
    card = ModelCard(
        name=name, version=version, task=task, network=config.network, network_kwargs=dict(config.network_kwargs),
        input_spec=dict(config.input_spec), label_map=dict(label_map), training_data=training_data,
        split=dict(split or {}), date=datetime.date.today().isoformat(), description=description, license=license,
        inference=dict(inference or {}),
    )
    network = card.build_network()
    state = load_checkpoint_weights(network, run_dir / checkpoint)
    last = run_dir / "last.pt"
    epochs = int(load_checkpoint(last)["epoch"]) if last.is_file() else int(state.get("epoch", 0))
    metrics = {state["metric_name"]: float(state["metric"])} if "metric_name" in state else {}
    from dataclasses import replace

    card = replace(card, epochs=epochs, validation_metrics=metrics)
    return save_model(network, card, models_folder, half_precision=half_precision)
