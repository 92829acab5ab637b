"""Model cards, the weight registry, and saving/loading weights as safetensors.

A model is a file pair in a models folder (or in a subfolder of it)::

    Resources/Models/cine_unet2d-1.0.safetensors    plain state dict (float16 or float32 tensors)
    Resources/Models/cine_unet2d-1.0.json           model card: network, input spec, labels, data, metrics, sha256

The card's ``model_card_schema`` key marks a JSON file as a model card; other JSON files are ignored.
:class:`ModelRegistry` searches, in this order: ``extra_paths`` (the CLI's ``--models-dir``), the folders in the
environment variable ``CARDIACAI_MODELS`` (``os.pathsep``-separated), then the bundled folders (``Resources/Models``
of the source tree, and ``cardiac_ai/Resources/Models`` of an installed package). When the same name and version
exists twice, the first folder wins.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Sequence

from ..errors import InputError, ModelError, OutputError
from ..io.atomic import atomic_path, check_output_location, write_text_atomic
from ..provenance import ModelUse
from .networks import build_network

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "check_models_folder",
    "register_models",
    "MODEL_CARD_SCHEMA",
    "MODELS_ENV_VAR",
    "ModelCard",
    "LoadedModel",
    "ModelRegistry",
    "default_model_dirs",
    "read_card",
    "save_model",
    "load_weights",
    "file_sha256",
]

log = logging.getLogger(__name__)

MODEL_CARD_SCHEMA = 1
"""Newest model card schema this package reads; cards with a higher number need a newer cardiac_ai."""

MODELS_ENV_VAR = "CARDIACAI_MODELS"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_VERSION_RE = re.compile(r"^\d+(\.\d+){0,3}$")
_PRECISIONS = ("float16", "float32")
_REQUIRED = ("name", "version", "task", "network")
_MAX_LISTED_MISMATCHES = 5


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def name_and_version_problems(name: object, version: object) -> list[str]:
    """What is wrong with a model name and version for a card (empty when both are valid): checked by every card,
    and before training, so that a run is not refused only when it registers its model."""
    problems = []
    if not isinstance(name, str) or not _NAME_RE.match(name):
        problems.append(f"name {name!r} must be lower-case letters, digits and '_' (e.g. 'cine_unet2d')")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        problems.append(f"version {version!r} must be dotted numbers such as '1.0' or '1.2.3'")
    return problems


@dataclass(frozen=True)
class ModelCard:
    """What a set of weights is, how to build its network, what it expects and how it was made.

    Saved as ``<name>-<version>.json`` beside ``<name>-<version>.safetensors``.

    Attributes
    ----------
    name : str
        Lower-case identifier, letters, digits and ``_`` (``cine_unet2d``); no ``-``, which separates the version.
    version : str
        Numeric dotted version (``"1"``, ``"1.2"``, ``"1.2.3"``); "latest" compares the numbers, not the text.
    task : str
        What the outputs mean, e.g. ``"segmentation"``, ``"classification"``, ``"regression"``.
    network, network_kwargs
        Passed to :func:`~cardiac_ai.models.networks.build_network`.
    input_spec : dict
        How inputs are prepared (``in_plane_spacing_mm``, ``crop_size``, ``normalisation``, ``channels``), as
        ``cardiac_ai.preprocessing.InputSpec.to_dict()`` writes it; see :meth:`input_spec_object`.
    label_map : dict of int to str
        Output channel or class code -> name (ACDC codes for segmentation).
    training_data, split : str, dict
        Data sets the weights were trained on, and the case split (counts or case lists).
    epochs : int
        Epochs actually trained.
    validation_metrics : dict of str to float
        E.g. ``{"dice_lv_blood_pool": 0.93}``.
    date : str
        ISO date of training.
    sha256 : str
        Hex digest of the weights file; checked at every load. Filled in by :func:`save_model`.
    precision : {"float16", "float32"}
        Dtype of the floating tensors in the file; they are cast to float32 at load.
    description, license : str
        Free text shown to users.
    inference : dict
        Settings that inference must use as training chose them (e.g. a CAM method and pseudo-label parameters
        picked on validation patients); empty for most models.
    schema : int
        Card schema version (``model_card_schema`` in JSON).
    """

    name: str
    version: str
    task: str
    network: str
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    input_spec: dict[str, Any] = field(default_factory=dict)
    label_map: dict[int, str] = field(default_factory=dict)
    training_data: str = ""
    split: dict[str, Any] = field(default_factory=dict)
    epochs: int = 0
    validation_metrics: dict[str, float] = field(default_factory=dict)
    date: str = ""
    sha256: str = ""
    precision: Literal["float16", "float32"] = "float32"
    description: str = ""
    license: str = ""
    inference: dict[str, Any] = field(default_factory=dict)
    schema: int = MODEL_CARD_SCHEMA

    def __post_init__(self) -> None:
        if hasattr(self.input_spec, "to_dict"):  # a preprocessing.InputSpec passed directly
            object.__setattr__(self, "input_spec", self.input_spec.to_dict())
        object.__setattr__(self, "label_map", {int(k): str(v) for k, v in dict(self.label_map).items()})
        problems = name_and_version_problems(self.name, self.version)
        if not isinstance(self.network, str) or not self.network:
            problems.append(f"network {self.network!r} must be a network name")
        if self.precision not in _PRECISIONS:
            problems.append(f"precision {self.precision!r} must be one of {_PRECISIONS}")
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            problems.append(f"sha256 {self.sha256!r} must be 64 lower-case hex digits")
        if not isinstance(self.schema, int) or self.schema < 1:
            problems.append(f"schema {self.schema!r} must be a positive integer")
        elif self.schema > MODEL_CARD_SCHEMA:
            problems.append(
                f"card schema {self.schema} is newer than this cardiac_ai reads ({MODEL_CARD_SCHEMA}); "
                "update the cardiac_ai package / extension"
            )
        for name in ("network_kwargs", "input_spec", "split", "validation_metrics", "inference"):
            if not isinstance(getattr(self, name), Mapping):
                problems.append(f"{name} must be a mapping, got {type(getattr(self, name)).__name__}")
        if problems:
            raise ModelError(f"Invalid model card {self.name}-{self.version}: " + "; ".join(problems) + ".")

    @property
    def stem(self) -> str:
        """``<name>-<version>``: the file name of card and weights without suffix."""
        return f"{self.name}-{self.version}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; label map keys become strings, ``schema`` is written as ``model_card_schema``."""
        data = dataclasses.asdict(self)
        data["model_card_schema"] = data.pop("schema")
        data["label_map"] = {str(k): v for k, v in self.label_map.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelCard":
        """Inverse of :meth:`to_dict`.

        Raises
        ------
        ModelError
            If a required key is missing, a key is unknown, or a value is invalid.
        """
        data = dict(data)
        if "model_card_schema" in data:
            data["schema"] = data.pop("model_card_schema")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ModelError(f"Model card is missing {missing}; found keys {sorted(data)}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(
                f"Model card {data.get('name')}-{data.get('version')} has unknown keys {unknown}; "
                f"known keys are {sorted(known)}. A newer cardiac_ai may be needed."
            )
        return cls(**data)

    def input_spec_object(self) -> Any:
        """The input spec as ``cardiac_ai.preprocessing.InputSpec`` when that module exists, else the plain dict."""
        try:
            from ..preprocessing import InputSpec  # type: ignore[attr-defined]
        except ImportError:
            return dict(self.input_spec)
        return InputSpec.from_dict(self.input_spec)

    def build_network(self) -> "nn.Module":
        """A freshly initialised network of this card's architecture."""
        return build_network(self.network, **self.network_kwargs)


def read_card(path: str | os.PathLike) -> ModelCard:
    """Read a model card JSON file.

    Raises
    ------
    ModelError
        If the file cannot be read or parsed, or is not a valid model card (the message names the file).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"Cannot read model card {path}: {error}") from error
    if not isinstance(data, dict) or "model_card_schema" not in data:
        raise ModelError(f"{path} is not a model card (no 'model_card_schema' key).")
    try:
        return ModelCard.from_dict(data)
    except (ModelError, TypeError) as error:
        raise ModelError(f"{path}: {error}") from error


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class LoadedModel:
    """A network with its weights, in eval mode on ``device``, and the card it came from."""

    network: "nn.Module"
    card: ModelCard
    weights_path: Path
    device: "torch.device"

    def model_use(self) -> ModelUse:
        """Provenance entry (name, version, sha256) for results made with this model."""
        return ModelUse(name=self.card.name, version=self.card.version, sha256=self.card.sha256)


def default_model_dirs() -> list[Path]:
    """Bundled model folders that exist: the source tree's ``Resources/Models``, then a packaged one."""
    package = Path(__file__).resolve().parents[1]  # .../cardiac_ai
    candidates = [package.parents[1] / "Resources" / "Models", package / "Resources" / "Models"]
    return [path for path in candidates if path.is_dir()]


class ModelRegistry:
    """Finds model cards in folders and loads their weights.

    Parameters
    ----------
    paths : sequence of path, optional
        Base folders; default :func:`default_model_dirs`.
    extra_paths : sequence of path
        Folders searched before everything else (the CLI's ``--models-dir``). A folder that does not exist is an
        error: the user named it.
    environ : mapping, optional
        Where to read ``CARDIACAI_MODELS`` (default ``os.environ``); its folders come after ``extra_paths``.

    Raises
    ------
    InputError
        If an ``extra_paths`` folder does not exist.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike] | None = None,
        *,
        extra_paths: Sequence[str | os.PathLike] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        for extra in extra_paths:
            if not Path(extra).is_dir():
                raise InputError(f"Models folder {extra} does not exist or is not a folder (--models-dir).")
        environ = os.environ if environ is None else environ
        from_env = [Path(p) for p in environ.get(MODELS_ENV_VAR, "").split(os.pathsep) if p.strip()]
        for folder in from_env:
            if not folder.is_dir():
                log.warning("%s names %s, which is not a folder; ignoring it.", MODELS_ENV_VAR, folder)
        base = default_model_dirs() if paths is None else [Path(p) for p in paths]
        ordered: list[Path] = []
        for folder in [*map(Path, extra_paths), *from_env, *base]:
            if folder.is_dir() and folder.resolve() not in [p.resolve() for p in ordered]:
                ordered.append(folder)
        self.search_paths: tuple[Path, ...] = tuple(ordered)
        self._cards: dict[tuple[str, str], tuple[ModelCard, Path]] = {}
        self.problems: dict[Path, str] = {}
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folders (after a model was saved into one of them)."""
        self._cards.clear()
        self.problems.clear()
        for folder in self.search_paths:
            for card_path in sorted([*folder.glob("*.json"), *folder.glob("*/*.json")]):
                try:
                    head = json.loads(card_path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as error:
                    self.problems[card_path] = f"unreadable JSON: {error}"
                    continue
                if not isinstance(head, dict) or "model_card_schema" not in head:
                    continue  # some other JSON file (a training config, a report)
                try:
                    card = read_card(card_path)
                except ModelError as error:
                    self.problems[card_path] = str(error)
                    log.warning("Skipping model card %s: %s", card_path, error)
                    continue
                key = (card.name, card.version)
                if key in self._cards:
                    log.debug("%s shadowed by %s", card_path, self._cards[key][1])
                    continue
                self._cards[key] = (card, card_path)

    def list(self) -> list[ModelCard]:
        """Every model found, sorted by name then version (oldest first)."""
        keys = sorted(self._cards, key=lambda k: (k[0], _version_key(k[1])))
        return [self._cards[key][0] for key in keys]

    def _first_folder_versions(self, name: str) -> list[str]:
        """Versions of ``name`` in the first search folder that holds it: a model in a folder searched earlier
        (``--models-dir``, ``CARDIACAI_MODELS``) replaces the bundled one even when its version is lower."""
        for folder in self.search_paths:
            found = [v for (n, v), (_, path) in self._cards.items() if n == name and folder in path.parents]
            if found:
                return sorted(found, key=_version_key)
        return []

    def _find(self, name: str, version: str | None) -> tuple[ModelCard, Path]:
        versions = sorted((v for n, v in self._cards if n == name), key=_version_key)
        if version is None:
            versions = self._first_folder_versions(name) or versions
        where = ", ".join(str(p) for p in self.search_paths) or "(no models folder exists)"
        if not versions:
            known = sorted({n for n, _ in self._cards})
            broken = [f"{path}: {why}" for path, why in self.problems.items() if name in path.name]
            raise ModelError(
                f"No model named {name!r} in {where}. Available: {known or 'none'}. "
                + (f"Unusable cards: {broken}. " if broken else "")
                + f"Reinstall the extension or point {MODELS_ENV_VAR} at the folder that holds {name}-<version>.json."
            )
        chosen = versions[-1] if version is None else version
        if (name, chosen) not in self._cards:
            raise ModelError(f"Model {name!r} has no version {version!r} in {where}; available versions: {versions}.")
        return self._cards[(name, chosen)]

    def has(self, name: str) -> bool:
        """Whether any version of ``name`` was found."""
        return any(n == name for n, _ in self._cards)

    def card(self, name: str, version: str | None = None) -> ModelCard:
        """The card of ``name`` at ``version``, or of its highest version when ``version`` is None.

        Raises
        ------
        ModelError
            If no such model or version exists (the message lists what does and where it looked).
        """
        return self._find(name, version)[0]

    def card_path(self, name: str, version: str | None = None) -> Path:
        """Path of the card JSON that :meth:`card` returns."""
        return self._find(name, version)[1]

    def load(
        self,
        name: str,
        version: str | None = None,
        *,
        device: "str | torch.device | None" = None,
    ) -> LoadedModel:
        """Build the card's network, check and load its weights, and put it in eval mode on ``device``.

        Parameters
        ----------
        name, version
            As :meth:`card`.
        device : str or torch.device, optional
            ``"auto"``/None (CUDA when available), ``"cpu"``, ``"cuda"``, or a ``torch.device``.

        Raises
        ------
        ModelError
            If the weights file is missing, its SHA-256 differs from the card (truncated or corrupt download), it is
            not a readable safetensors file, or its tensors do not match the network (names and shapes listed).
        """
        card, card_path = self._find(name, version)
        return load_weights(card, card_path.with_suffix(".safetensors"), device=device)


def load_weights(
    card: ModelCard,
    weights_path: str | os.PathLike,
    *,
    device: "str | torch.device | None" = None,
) -> LoadedModel:
    """Load ``weights_path`` into ``card``'s network after checking file, checksum and tensor shapes.

    See :meth:`ModelRegistry.load` for the checks; this is it without the search.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..device import resolve_device

    weights_path = Path(weights_path)
    label = f"Model {card.name} {card.version}"
    if not weights_path.is_file():
        raise ModelError(
            f"{label}: weights file {weights_path} not found. Reinstall the extension or point "
            f"{MODELS_ENV_VAR} at the folder that holds {card.stem}.safetensors."
        )
    if card.sha256:
        found = file_sha256(weights_path)
        if found != card.sha256:
            raise ModelError(
                f"{label}: {weights_path} has SHA-256 {found[:12]}..., the card expects {card.sha256[:12]}...: "
                "the file is truncated, corrupt or from another version. Reinstall the extension or replace the file."
            )
    else:
        log.warning("%s: card has no sha256; %s is not verified.", label, weights_path)
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise ModelError(f"{label}: cannot read {weights_path} as safetensors: {error}") from error

    context = card.input_spec.get("slice_context", 0)
    if context and card.network_kwargs.get("in_channels", 1) != card.input_spec.get("channels"):
        raise ModelError(
            f"{label}: the card's input spec gives the network {card.input_spec.get('channels')} channels (the slice "
            f"and {context} neighbouring slice(s) on each side), but its network takes "
            f"{card.network_kwargs.get('in_channels', 1)}: the card does not belong to these weights."
        )
    network = card.build_network()
    expected = network.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} vs network {tuple(value.shape)}"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if items:
                more = f" (+{len(items) - _MAX_LISTED_MISMATCHES} more)" if len(items) > _MAX_LISTED_MISMATCHES else ""
                parts.append(f"{title}: {items[:_MAX_LISTED_MISMATCHES]}{more}")
        raise ModelError(
            f"{label}: tensors in {weights_path} do not match network {card.network} {card.network_kwargs}: "
            + "; ".join(parts)
            + ". The card and weights are from different models; reinstall or retrain."
        )
    state = {
        key: (value.to(expected[key].dtype) if value.is_floating_point() else value) for key, value in state.items()
    }
    network.load_state_dict(state, strict=True)
    torch_device = device if isinstance(device, torch.device) else resolve_device(device)
    network.to(torch_device).eval()
    return LoadedModel(network=network, card=card, weights_path=weights_path, device=torch_device)


def _plain_state_dict(network: "nn.Module", *, half_precision: bool) -> dict[str, "torch.Tensor"]:
    import torch

    module = getattr(network, "module", network)  # unwrap DistributedDataParallel / DataParallel
    state = {}
    for key, value in module.state_dict().items():
        tensor = value.detach().to("cpu")
        if half_precision and tensor.is_floating_point():
            tensor = tensor.to(torch.float16)
        state[key] = tensor.contiguous().clone()
    return state


def save_model(
    network: "nn.Module",
    card: ModelCard,
    folder: str | os.PathLike,
    *,
    half_precision: bool = True,
) -> Path:
    """Write ``<name>-<version>.safetensors`` and its card into ``folder``, each atomically.

    Parameters
    ----------
    network : torch.nn.Module
        Built by ``build_network(card.network, **card.network_kwargs)`` (a DDP wrapper is unwrapped).
    card : ModelCard
        Its ``sha256`` and ``precision`` are filled in here.
    folder : path
        Created if needed. Existing files of the same name and version are replaced.
    half_precision : bool
        Store floating tensors as float16 (half the size; cast back to float32 at load).

    Returns
    -------
    Path
        The card JSON path; read it back with :func:`read_card` or a :class:`ModelRegistry` on ``folder``.

    Raises
    ------
    ModelError
        If the network's tensors do not match a network built from the card.
    """
    from safetensors.torch import save

    state = _plain_state_dict(network, half_precision=half_precision)
    expected = card.build_network().state_dict()
    mismatched = sorted(set(expected) ^ set(state)) or [
        key for key in expected if tuple(expected[key].shape) != tuple(state[key].shape)
    ]
    if mismatched:
        raise ModelError(
            f"save_model: the network does not match card {card.stem} ({card.network} {card.network_kwargs}); "
            f"first differing tensors: {mismatched[:_MAX_LISTED_MISMATCHES]}. Build it with card.build_network()."
        )
    folder = Path(folder)
    weights_path = folder / f"{card.stem}.safetensors"
    with atomic_path(weights_path) as temporary:
        # safetensors writes its header's keys in an order that changes from one process to the next: sorted, the
        # same weights give the same file and sha256, as a seeded run promises
        temporary.write_bytes(_sorted_header(save(state, metadata={"name": card.name, "version": card.version})))
        digest = file_sha256(temporary)
    final = dataclasses.replace(card, sha256=digest, precision="float16" if half_precision else "float32")
    card_path = folder / f"{card.stem}.json"
    write_text_atomic(card_path, json.dumps(final.to_dict(), indent=2, sort_keys=True) + "\n")
    log.info("Saved model %s to %s", card.stem, weights_path)
    return card_path


def _sorted_header(data: bytes) -> bytes:
    """A safetensors file's bytes with its JSON header's keys sorted; the same length (the same keys and values),
    so the tensors' offsets, which count from the header's end, stay right."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    if len(text) > size:  # pragma: no cover - safetensors writes compact JSON, never shorter than this
        return data
    return data[:8] + text.ljust(size, b" ") + data[8 + size:]


_MODEL_FILE_SUFFIXES = (".safetensors", ".json")


def check_models_folder(folder: str | os.PathLike, stems: Sequence[str] = ()) -> None:
    """Refuse, creating nothing, a models folder that cannot receive models: it is a file or lies under one, cannot
    be written, or one of ``stems``' files (``<name>-<version>.safetensors`` / ``.json``) is taken by a folder.

    For the checks before training: a run that could not register its models is refused before it starts.

    Raises
    ------
    OutputError
        Naming the folder or the path in the way.
    """
    try:
        check_output_location(folder)
    except OutputError as error:
        raise OutputError(f"Cannot register models in {folder}: {error}") from error
    for stem in stems:
        for suffix in _MODEL_FILE_SUFFIXES:
            target = Path(folder) / f"{stem}{suffix}"
            if os.path.lexists(target) and not target.is_file():
                raise OutputError(f"Cannot register {stem} in {folder}: {target} exists and is not a file. Move it "
                                  "away or register into another folder.")


def register_models(folder: str | os.PathLike, exports: Mapping[str, Callable[[Path], Path]]) -> tuple[Path, ...]:
    """Register several models in ``folder`` as one step: all of them, or none.

    Each export writes one model (``<stem>.safetensors`` and its card ``<stem>.json``, e.g. through
    :func:`~cardiac_ai.models.registry.save_model` or :func:`~cardiac_ai.training.checkpoint.export_best_model`)
    into the folder it is given, a hidden staging folder inside ``folder`` (two levels down, where a
    :class:`~cardiac_ai.models.registry.ModelRegistry` does not look), and returns its card path. Only when every
    export has succeeded are the files moved into ``folder`` (renames on one file system); a file they replace is
    kept until the last one is in place, and put back if any move fails.

    Parameters
    ----------
    folder : path
        The models folder; created if needed.
    exports : mapping of stem to callable
        ``{"lge_myocardium-1.0": lambda staging: export_best_model(..., staging, ...)}``, in registration order.

    Returns
    -------
    tuple of Path
        The card paths in ``folder``, in the order of ``exports``.

    Raises
    ------
    OutputError
        ``folder`` is a file or lies under one, a target file name is taken by a folder, or the file system refuses
        a write; nothing is then registered and models the call would have replaced are back in place.
    """
    folder = Path(folder)
    check_models_folder(folder, list(exports))
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".cardiac_ai-registering-", dir=folder))
    except OSError as error:
        raise OutputError(f"Cannot register models in {folder}: {error}") from error
    staged, earlier = staging / "models", staging / "replaced"
    placed: list[str] = []
    moved_away: list[str] = []
    restored = True
    try:
        try:
            staged.mkdir()
            earlier.mkdir()
            card_names = [Path(export(staged)).name for export in exports.values()]
            names = sorted((p.name for p in staged.iterdir()), key=lambda n: n.endswith(".json"))  # weights first
            check_models_folder(folder, [Path(n).stem for n in names if n.endswith(".json")])
            for name in names:
                target = folder / name
                if os.path.lexists(target):
                    os.replace(target, earlier / name)
                    moved_away.append(name)
                os.replace(staged / name, target)
                placed.append(name)
        except BaseException:
            restored = _undo_registration(folder, earlier, placed, moved_away)
            raise
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"Cannot register models in {folder}: {error}; nothing was registered"
                          + ("." if restored else f", and the models it replaced wait in {earlier}.")) from error
    finally:
        if restored:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                try:
                    folder.rmdir()  # only if this call made it and nothing was registered: an empty folder
                except OSError:
                    pass
    for name in card_names:
        log.info("Registered %s", folder / name)
    return tuple(folder / name for name in card_names)


def _undo_registration(folder: Path, earlier: Path, placed: list[str], moved_away: list[str]) -> bool:
    """Remove what :func:`register_models` placed and put back what it moved away; False if that failed."""
    try:
        for name in reversed(placed):
            (folder / name).unlink(missing_ok=True)
        for name in reversed(moved_away):
            os.replace(earlier / name, folder / name)
    except OSError as error:
        log.error("Could not undo a failed registration in %s (%s); the replaced models are in %s.", folder, error,
                  earlier)
        return False
    return True
