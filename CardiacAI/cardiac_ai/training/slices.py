"""2D training samples from short-axis stacks: preprocess every case once, keep compact slices, serve tensors.

The same :func:`cardiac_ai.preprocessing.preprocess` runs here and at inference, so a model sees identical
resampling, cropping and normalisation in both. Prepared slices can be saved as one compact ``.npz`` (images
quantised to uint8 over the normalised [0, 1] range) for training on another machine.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..datasets.case import Case
from ..errors import DataError, InputError
from ..metrics.regional import assign_slice_regions
from ..preprocessing import CropCenter, InputSpec, network_input, preprocess
from ..progress import ProgressCallback, report
from ..regions.sequence import region_positions

__all__ = ["PreparedSlices", "prepare_slices", "save_prepared", "load_prepared", "SliceDataset", "slice_context_images"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedSlices:
    """N preprocessed slices of many cases, with where each slice lies in its stack.

    Attributes
    ----------
    images : (N, cj, ci) float32, normalised (percentile: within [0, 1]).
    labels : (N, cj, ci) uint8 CardiacAI codes, or None when the cases had no label maps.
    case_ids : (N,) str.
    slice_indices : (N,) int, k of the slice in its stack.
    positions : (N,) float32, normalised position base (0) to apex (1) among the labelled slices; NaN outside.
    regions : (N,) int8, :class:`~cardiac_ai.metrics.regional.CardiacRegion` from the labels (0 without labels).
    spec : the InputSpec used.
    """

    images: np.ndarray
    labels: np.ndarray | None
    case_ids: np.ndarray
    slice_indices: np.ndarray
    positions: np.ndarray
    regions: np.ndarray
    spec: InputSpec

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def with_slice_context(self, context: int, *, base_first: bool = True) -> "PreparedSlices":
        """The same slices with ``context`` neighbours on each side as channels (images (N, 1 + 2 context, cj, ci)),
        for a 2.5D model. Call it before :meth:`subset`: a slice at a region's edge keeps its neighbours."""
        if self.images.ndim != 3:
            raise InputError("with_slice_context needs single-slice images (N, cj, ci); these already have channels.")
        spec = self.spec.with_slice_context(context)
        images = slice_context_images(self.images, self.case_ids, self.slice_indices, spec, base_first=base_first)
        return dataclasses.replace(self, images=images, spec=spec)

    def subset(self, mask: np.ndarray) -> "PreparedSlices":
        """The slices where ``mask`` (N,) is True (e.g. one region, or labelled slices only)."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (len(self),):
            raise InputError(f"subset mask must have shape ({len(self)},), got {mask.shape}.")
        return PreparedSlices(
            self.images[mask],
            None if self.labels is None else self.labels[mask],
            self.case_ids[mask],
            self.slice_indices[mask],
            self.positions[mask],
            self.regions[mask],
            self.spec,
        )


def prepare_slices(
    cases: Iterable[Case],
    spec: InputSpec,
    *,
    crop_center: CropCenter | Callable[[Case], CropCenter] = "labels",
    require_labels: bool = True,
    progress: ProgressCallback | None = None,
) -> PreparedSlices:
    """Preprocess every case and stack its slices.

    Parameters
    ----------
    cases : Case objects (3D stacks; ACDC base at low k).
    spec : the model's InputSpec.
    crop_center : "labels" (training of fully supervised models), "image_center", a (j, i) centre, a detector,
        or a callable ``case -> any of these`` (for per-case choices). Weak models must not use "labels".
    require_labels : raise InputError for a case without a label map.
    """
    case_list = list(cases)
    if not case_list:
        raise InputError("prepare_slices got no cases.")
    images, labels, case_ids, slice_indices, positions, regions = [], [], [], [], [], []
    any_labels = False
    for number, case in enumerate(case_list):
        report(progress, number / len(case_list), f"Preprocessing {case.case_id}")
        if case.labels is None and require_labels:
            raise InputError(f"Case {case.case_id} has no label map; training this model needs one per case.")
        center = crop_center(case) if callable(crop_center) and not isinstance(crop_center, str) else crop_center
        if center == "labels" and case.labels is None:
            center = "image_center"
        try:
            prepared = preprocess(case.image, spec, labels=case.labels, crop_center=center)
        except InputError as error:  # "the image is constant": say which of the cohort's cases
            source = case.metadata.get("image_path")
            raise InputError(f"Case {case.case_id}{f' ({source})' if source else ''}: {error}") from error
        n_slices = prepared.image.shape[0]
        images.append(prepared.image.astype(np.float32))
        if prepared.labels is not None:
            any_labels = True
            case_regions = assign_slice_regions(case.labels.array).astype(np.int8)
            labels.append(prepared.labels)
        else:
            case_regions = np.zeros(n_slices, np.int8)
            labels.append(np.zeros(prepared.image.shape, np.uint8))
        regions.append(case_regions)
        positions.append(region_positions(case_regions))
        case_ids.append(np.full(n_slices, case.case_id, dtype=object))
        slice_indices.append(np.arange(n_slices))
    report(progress, 1.0, f"Preprocessed {len(case_list)} cases")
    return PreparedSlices(
        np.concatenate(images),
        np.concatenate(labels) if any_labels else None,
        np.concatenate(case_ids).astype(str),
        np.concatenate(slice_indices),
        np.concatenate(positions),
        np.concatenate(regions),
        spec,
    )


def slice_context_images(images: np.ndarray, case_ids: np.ndarray, slice_indices: np.ndarray, spec: InputSpec, *,
                         base_first: bool = True) -> np.ndarray:
    """Each prepared slice ``images`` (N, cj, ci) with its neighbours in its own stack as channels
    (N, 1 + 2 * spec.slice_context, cj, ci), as :func:`~cardiac_ai.preprocessing.network_input` gives them at
    inference; a neighbour missing from the stack is zeros. Keeps the dtype (uint8 crops stay uint8)."""
    images = np.asarray(images)
    case_ids, slice_indices = np.asarray(case_ids), np.asarray(slice_indices, dtype=np.int64)
    if images.ndim != 3 or case_ids.shape != (len(images),) or slice_indices.shape != (len(images),):
        raise InputError(f"slice_context_images needs (N, cj, ci) images with N case ids and slice indices; got "
                         f"{images.shape}, {case_ids.shape}, {slice_indices.shape}.")
    out = np.zeros((len(images), spec.channels, *images.shape[1:]), images.dtype)
    for case_id in np.unique(case_ids):
        rows = np.flatnonzero(case_ids == case_id)
        k = slice_indices[rows]
        if len(np.unique(k)) != len(k) or k.min() < 0:
            raise InputError(f"Case {case_id} has repeated or negative slice indices; cannot find its neighbours.")
        stack = np.zeros((int(k.max()) + 1, *images.shape[1:]), images.dtype)
        stack[k] = images[rows]
        out[rows] = network_input(stack, spec, base_first=base_first)[k]
    return out


def save_prepared(prepared: PreparedSlices, path: str | os.PathLike) -> Path:
    """Write prepared slices as one compressed ``.npz`` with uint8 images (for carrying to a GPU machine)."""
    import json

    from ..io.atomic import atomic_path

    if prepared.spec.normalization != "percentile":
        raise InputError("save_prepared quantises images to uint8 and needs percentile normalisation ([0, 1]).")
    quantised = np.round(np.clip(prepared.images, 0.0, 1.0) * 255).astype(np.uint8)
    arrays = {
        "images_uint8": quantised,
        "case_ids": prepared.case_ids.astype(str),
        "slice_indices": prepared.slice_indices,
        "positions": prepared.positions,
        "regions": prepared.regions,
        "spec_json": np.array(json.dumps(prepared.spec.to_dict())),
    }
    if prepared.labels is not None:
        arrays["labels"] = prepared.labels
    target = Path(path)
    if target.suffix != ".npz":
        raise InputError(f"Prepared slices are saved as .npz, got {target.name}.")
    with atomic_path(target) as temporary:
        with open(temporary, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    return target


def load_prepared(path: str | os.PathLike) -> PreparedSlices:
    import json

    source = Path(path)
    try:
        with np.load(source, allow_pickle=False) as data:
            spec = InputSpec.from_dict(json.loads(str(data["spec_json"])))
            return PreparedSlices(
                data["images_uint8"].astype(np.float32) / 255.0,
                data["labels"] if "labels" in data else None,
                data["case_ids"],
                data["slice_indices"],
                data["positions"],
                data["regions"],
                spec,
            )
    except (OSError, KeyError, ValueError) as e:
        raise DataError(f"Cannot read prepared slices from {source}: {e}") from e


class SliceDataset:
    """Map-style torch dataset of prepared slices: ``{"image": (1, cj, ci), "label": (1, cj, ci), "position"}``.

    ``augmentation`` (e.g. :func:`~cardiac_ai.training.augmentation.build_augmentation`) is applied per item.
    ``label_fn`` turns the (cj, ci) label map into the training target (default: the map itself); classifiers pass
    a function of the slice index instead through ``target_fn``.
    """

    def __init__(
        self,
        prepared: PreparedSlices,
        *,
        augmentation: Callable[[dict], dict] | None = None,
        label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        target_fn: Callable[[int], int | float | np.ndarray] | None = None,
    ) -> None:
        if len(prepared) == 0:
            raise InputError("SliceDataset got no slices.")
        if prepared.labels is None and target_fn is None:
            raise InputError("SliceDataset needs label maps or a target_fn.")
        self.prepared = prepared
        self.augmentation = augmentation
        self.label_fn = label_fn
        self.target_fn = target_fn

    def __len__(self) -> int:
        return len(self.prepared)

    @property
    def positions(self) -> np.ndarray:
        """Each slice's base (0) to apex (1) position, NaN outside the labelled heart (what position sampling
        reads)."""
        return self.prepared.positions

    def __getitem__(self, index: int) -> dict:
        import torch

        image = self.prepared.images[index]
        sample: dict = {"image": (image if image.ndim == 3 else image[np.newaxis]).astype(np.float32)}
        if self.prepared.labels is not None and self.target_fn is None:
            label = self.prepared.labels[index]
            if self.label_fn is not None:
                label = self.label_fn(label)
            sample["label"] = label[np.newaxis]
        if self.augmentation is not None:
            sample = self.augmentation(sample)
        out = {"image": torch.as_tensor(np.ascontiguousarray(sample["image"]), dtype=torch.float32)}
        if "label" in sample:
            out["label"] = torch.as_tensor(np.ascontiguousarray(sample["label"]).astype(np.int64))
        if self.target_fn is not None:
            out["label"] = torch.as_tensor(self.target_fn(index))
        out["position"] = torch.tensor(float(self.prepared.positions[index]))
        return out


def case_split(prepared: PreparedSlices, case_ids: Sequence[str]) -> np.ndarray:
    """Boolean mask of the slices whose case is in ``case_ids``."""
    return np.isin(prepared.case_ids, np.asarray(list(case_ids), dtype=str))
