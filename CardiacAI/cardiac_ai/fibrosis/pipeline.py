"""LGE fibrosis (scar) segmentation of a short-axis stack: myocardium U-Net, fibrosis U-Net, slice classifier,
clinical numbers; and the file job behind ``cardiacai fibrosis``.

Models (registry names; trained by ``cardiacai train --task fibrosis`` or, all six, by
``scripts/train_emidec_fibrosis.py`` on EMIDEC):

* ``lge_myocardium``: 2D U-Net, LGE image -> background / LV myocardium (2) / LV blood pool (3).
* ``lge_fibrosis_weak``: 2D U-Net trained on CAM pseudo-labels from slice-level labels; LGE image alone -> scar.
  ``lge_fibrosis_weak_stack``: the same from stack-level (patient) labels.
* ``lge_fibrosis_pixel`` (optional): 2D U-Net trained on pixel labels; LGE image + predicted myocardium -> scar, MVO.
* ``lge_fibrosis_classifier`` (optional): ``fibrosis_cam_2d``; LGE image + predicted myocardium -> P(fibrosis) per slice.
* ``lge_fibrosis_stack_classifier`` (optional, used when installed): ``fibrosis_cam_stack``; the same inputs as one
  stack (slice axis last) -> P(fibrosis) of the patient.

Output label codes: 2 LV myocardium, 3 LV blood pool, 4 scar, 5 MVO (only from a model that predicts MVO; the weak
models do not). Scar is kept only inside the predicted myocardium. See :mod:`cardiac_ai.fibrosis.inputs` for the
pixel grid (EMIDEC pixels, image-centre crop) and :mod:`cardiac_ai.fibrosis.clinical` for the numbers.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np

from ..errors import InputError, ModelError
from ..geometry import Volume, short_axis_display_turn
from ..labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, MVO, MYOCARDIUM_CODES, SCAR
from ..progress import ProgressCallback, report, subrange
from ..provenance import Provenance
from .classifier_input import ClassifierInputSettings, classifier_inputs
from .clinical import ScarMeasures, scar_measures
from .inputs import read_lge_input, with_nominal_pixels

if TYPE_CHECKING:
    from ..models.registry import LoadedModel, ModelRegistry

__all__ = [
    "FIBROSIS_MODEL_NAMES",
    "TRAINING_HINT",
    "FibrosisModels",
    "FibrosisResult",
    "segment_fibrosis",
    "load_fibrosis_models",
    "fibrosis_file",
    "qc_inputs",
    "FIBROSIS_CSV",
    "TRANSMURALITY_CSV",
]

log = logging.getLogger(__name__)

Supervision = Literal["weak", "weak_stack", "pixel"]

FIBROSIS_MODEL_NAMES: dict[str, str] = {
    "myocardium": "lge_myocardium",
    "weak": "lge_fibrosis_weak",
    "weak_stack": "lge_fibrosis_weak_stack",
    "pixel": "lge_fibrosis_pixel",
    "classifier": "lge_fibrosis_classifier",
    "stack_classifier": "lge_fibrosis_stack_classifier",
}

TRAINING_HINT = (
    "Train the fibrosis models on your LGE data (label maps and slice-level labels) or EMIDEC with `cardiacai train "
    "--task fibrosis --data DIR --out RUN --register-to MODELS` and point --models-dir (or CARDIACAI_MODELS) at MODELS "
    "(a source checkout's scripts/train_emidec_fibrosis.py also trains the stack-level and pixel models on EMIDEC)."
)

FIBROSIS_CSV = "fibrosis.csv"
TRANSMURALITY_CSV = "transmurality.csv"

_CODE_OF_NAME = {tissue.name: code for code, tissue in LABELS.items()}


@dataclass
class FibrosisModels:
    """The loaded models of :func:`segment_fibrosis` (``LoadedModel`` from :class:`~cardiac_ai.models.ModelRegistry`).

    Attributes
    ----------
    myocardium : ``lge_myocardium``.
    fibrosis : the fibrosis U-Net (``lge_fibrosis_weak``, ``lge_fibrosis_weak_stack`` or ``lge_fibrosis_pixel``).
    classifier : ``lge_fibrosis_classifier`` or None (then no per-slice probability).
    supervision : which fibrosis model this is: "weak", "weak_stack" or "pixel".
    stack_classifier : ``lge_fibrosis_stack_classifier`` or None (then no patient probability).
    """

    myocardium: "LoadedModel"
    fibrosis: "LoadedModel"
    classifier: "LoadedModel | None" = None
    supervision: str = "weak"
    stack_classifier: "LoadedModel | None" = None

    @classmethod
    def from_registry(
        cls,
        registry: "ModelRegistry",
        *,
        model: Supervision = "weak",
        classifier: bool = True,
        device=None,
        provenance: Provenance | None = None,
    ) -> "FibrosisModels":
        """Load the myocardium model, the fibrosis model ``model`` and (when available and ``classifier``) the slice
        and stack classifiers.

        Raises
        ------
        InputError
            For an unknown ``model``.
        ModelError
            When the myocardium or fibrosis model is missing; the message says how to train them. A missing
            classifier is a warning (in ``provenance`` when given): the pipeline then reports no slice
            probabilities. A missing stack classifier is not: it is optional (``cardiacai train --task fibrosis``
            does not train it), and the patient probability is then None.
        """
        if model not in ("weak", "weak_stack", "pixel"):
            raise InputError(f"model must be 'weak', 'weak_stack' or 'pixel', got {model!r}.")
        missing = [FIBROSIS_MODEL_NAMES[key] for key in ("myocardium", model)
                   if not registry.has(FIBROSIS_MODEL_NAMES[key])]
        if missing:  # not bundled (they miss their accuracy targets): reinstalling would not help
            where = ", ".join(str(p) for p in registry.search_paths) or "no models folder"
            raise ModelError(f"No {' or '.join(missing)} model in {where}: the LGE fibrosis models are not bundled "
                             f"with CardiacAI yet. {TRAINING_HINT}")
        try:
            myocardium = registry.load(FIBROSIS_MODEL_NAMES["myocardium"], device=device)
            fibrosis = registry.load(FIBROSIS_MODEL_NAMES[model], device=device)
        except ModelError as e:
            raise ModelError(f"{e} {TRAINING_HINT}") from e
        loaded_classifier = None
        if classifier:
            try:
                loaded_classifier = registry.load(FIBROSIS_MODEL_NAMES["classifier"], device=device)
            except ModelError as e:
                message = (f"No fibrosis classifier ({e}): slice fibrosis probabilities are not reported "
                           "(--no-classifier skips it without this warning).")
                if provenance is not None:
                    provenance.warn(message, log)
                else:
                    log.warning(message)
        stack_name = FIBROSIS_MODEL_NAMES["stack_classifier"]
        loaded_stack = registry.load(stack_name, device=device) if classifier and registry.has(stack_name) else None
        return cls(myocardium, fibrosis, loaded_classifier, model, loaded_stack)

    def uses(self) -> list:
        return [m.model_use() for m in (self.myocardium, self.fibrosis, self.classifier, self.stack_classifier)
                if m is not None]


@dataclass(frozen=True)
class FibrosisResult:
    """Result of :func:`segment_fibrosis`.

    Attributes
    ----------
    labels : (k, j, i) uint8 Volume on the input's grid and geometry: 2 myocardium, 3 LV blood pool, 4 scar, 5 MVO.
    slice_probabilities : (k,) float32 P(fibrosis) per slice from the classifier, or None without one.
    patient_probability : P(fibrosis) of the whole stack from the stack classifier, or None without one.
    measures : clinical numbers (:class:`~cardiac_ai.fibrosis.clinical.ScarMeasures`).
    supervision : which fibrosis model made the scar ("weak", "weak_stack", "pixel").
    spacing_known : whether lengths are in mm (False: pixels, e.g. EMIDEC PNG).
    provenance : models, device, timings, warnings.
    qc : the quality check of the myocardium and blood pool (a ``QCResult``) when :func:`fibrosis_file` ran one.
    """

    labels: Volume
    slice_probabilities: np.ndarray | None
    measures: ScarMeasures
    supervision: str
    spacing_known: bool
    provenance: Provenance
    qc: Any = None
    patient_probability: float | None = None

    @property
    def fibrosis_found(self) -> bool:
        return bool(np.isin(self.labels.array, (SCAR, MVO)).any())

    def slice_rows(self) -> list[dict]:
        """One row per slice: probability, pixel counts, areas, scar percentage and the largest sector transmurality."""
        worst: dict[int, float] = {}
        for sector in self.measures.sectors:
            if sector.n_rays:
                worst[sector.slice_index] = max(worst.get(sector.slice_index, 0.0), sector.max_transmurality)
        rows = []
        for s in self.measures.slices:
            row = {"slice": s.slice_index, "level": s.level}
            if self.slice_probabilities is not None:
                row["fibrosis_probability"] = float(self.slice_probabilities[s.slice_index])
            row.update({
                "myocardium_pixels": s.myocardium_pixels, "scar_pixels": s.scar_pixels, "mvo_pixels": s.mvo_pixels,
                "myocardium_area": s.myocardium_area, "scar_area": s.scar_area, "mvo_area": s.mvo_area,
                "area_unit": s.area_unit, "scar_percent": s.scar_percent,
                "max_transmurality": worst.get(s.slice_index, float("nan")),
            })
            rows.append(row)
        return rows

    def sector_rows(self) -> list[dict]:
        """One row per sector of every slice with myocardium."""
        return [s.to_dict() for s in self.measures.sectors]

    def to_report(self) -> dict:
        """The ``report.json`` body (without input and provenance)."""
        return {
            "supervision": self.supervision,
            "label_codes": {str(c): LABELS[c].name for c in (LV_MYOCARDIUM, LV_BLOOD_POOL, SCAR, MVO)},
            "pixel_size": "mm" if self.spacing_known else "unknown: lengths, areas and volumes are in pixels/voxels",
            "fibrosis_found": self.fibrosis_found,
            "slice_fibrosis_probability": None if self.slice_probabilities is None
            else [float(p) for p in self.slice_probabilities],
            "patient_fibrosis_probability": self.patient_probability,
            "clinical": self.measures.to_dict(),
        }


# -- the computation -------------------------------------------------------------------------------------------------
def _channel_codes(model: "LoadedModel") -> dict[int, int]:
    """Output channel -> CardiacAI code from the card's label map (names of :data:`LABELS`; others -> 0)."""
    codes = {int(channel): _CODE_OF_NAME.get(name, 0) for channel, name in model.card.label_map.items()}
    if not any(codes.values()):
        raise ModelError(
            f"Model {model.card.name} {model.card.version}: its label map {model.card.label_map} names no CardiacAI "
            f"tissue ({sorted(_CODE_OF_NAME)}); the card does not belong to a fibrosis pipeline model."
        )
    return codes


def _prepared(volume: Volume, model: "LoadedModel", cache: dict):
    from ..preprocessing import InputSpec, preprocess

    spec = InputSpec.from_dict(dict(model.card.input_spec))
    key = repr(sorted((k, v) for k, v in spec.to_dict().items() if k != "channels"))  # the grid, not the channels
    if key not in cache:
        cache[key] = preprocess(volume, spec, crop_center="image_center")
    return cache[key]


def _native_codes(probabilities: np.ndarray, prepared, codes: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Argmax codes on the crop grid (k, cj, ci) and on the native grid (k, j, i) of softmax maps (k, C, cj, ci)."""
    from ..preprocessing import restore_probabilities

    lookup = np.array([codes.get(c, 0) for c in range(probabilities.shape[1])], np.uint8)
    crop = lookup[np.argmax(probabilities, axis=1)]
    native = restore_probabilities(np.moveaxis(probabilities, 1, 0), prepared.transform)
    return crop, lookup[np.argmax(native, axis=0)]


def levels_by_thirds(has_myocardium: Sequence[bool], *, base_first: bool) -> list[str | None]:
    """AHA levels of a stack's slices: the slices with myocardium split into basal, mid and apical thirds along
    the stack (base at low k when ``base_first``); None for slices without myocardium."""
    from ..mapping.pipeline import default_levels

    heart = [k for k, present in enumerate(has_myocardium) if present]
    levels: list[str | None] = [None] * len(has_myocardium)
    if heart:
        ordered = default_levels(len(heart))
        for k, level in zip(heart, ordered if base_first else ordered[::-1]):
            levels[k] = level
    return levels


def _warn_if_myocardium_meets_the_crop_edge(myo_crop: np.ndarray, model: "LoadedModel", provenance: Provenance,
                                            margin_px: int = 2) -> None:
    """The models see a fixed square around the image centre; myocardium predicted at its edge means the heart
    is off-centre or larger than that square, and what lies beyond is neither segmented nor measured."""
    myocardium = myo_crop == LV_MYOCARDIUM
    border = np.ones(myocardium.shape[1:], bool)
    border[margin_px:-margin_px, margin_px:-margin_px] = False
    touching = [int(k) for k in np.flatnonzero((myocardium & border).any(axis=(1, 2)))]
    if touching:
        spec = model.card.input_spec_object()
        size = " x ".join(f"{n * d:g}" for n, d in zip(spec.crop_size, spec.in_plane_spacing_mm))
        provenance.warn(
            f"The predicted myocardium reaches the edge of the {size} mm square the models see around the image "
            f"centre on slice(s) {touching}: the heart may be off-centre or larger than that square, and scar beyond "
            "it is not measured. Crop the image around the heart and run again.", log)


def _check_same_grid(prepared_model, prepared_myocardium, model: "LoadedModel", myocardium: "LoadedModel") -> None:
    if prepared_model is not prepared_myocardium:
        raise ModelError(
            f"{model.card.name} {model.card.version} takes the predicted myocardium as input but has another input "
            f"spec than {myocardium.card.name} {myocardium.card.version}; retrain them on one grid."
        )


def _stack_probability(model: "LoadedModel", volume: Volume, myo_crop: np.ndarray, prepared_myocardium,
                       myocardium: "LoadedModel", cache: dict, device) -> float:
    """P(fibrosis) of the whole stack: the slice classifier's inputs (made as the card says) as one stack, slice axis
    last, as :func:`~cardiac_ai.fibrosis.training.train_stack_classifier` trained it."""
    import torch

    from ..device import place_for_inference, resolve_device

    prepared = _prepared(volume, model, cache)
    _check_same_grid(prepared, prepared_myocardium, model, myocardium)
    inputs = classifier_inputs(prepared.image, myo_crop == LV_MYOCARDIUM,
                               ClassifierInputSettings.from_card_inference(model.card.inference))
    target = device if isinstance(device, torch.device) else resolve_device(device)  # as predict_slices
    network = place_for_inference(model.network, target)
    with torch.inference_mode():
        logit = network(torch.from_numpy(inputs.stack()).to(target)).float().cpu().reshape(-1)[0]
    return float(torch.sigmoid(logit))


def _in_channels(model: "LoadedModel") -> int:
    return int(model.card.network_kwargs.get("in_channels", 1))


def segment_fibrosis(
    volume: Volume,
    models: FibrosisModels,
    *,
    spacing_known: bool = True,
    slice_spacing_known: bool | None = None,
    levels: Sequence[str | None] | None = None,
    anchor_angle_deg: float | None = None,
    device=None,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    slice_order: Literal["base-first", "apex-first"] | None = None,
) -> FibrosisResult:
    """Segment LV myocardium, blood pool and scar in an LGE short-axis stack and measure the scar.

    Parameters
    ----------
    volume : Volume (k, j, i)
        LGE magnitude stack, any real dtype, finite; roughly centred on the LV (the crop is at the image centre).
    models : FibrosisModels
        E.g. ``FibrosisModels.from_registry(ModelRegistry(), model="weak")``.
    spacing_known : bool
        False when the pixel size is unknown (EMIDEC PNG): the pixels are taken as EMIDEC pixels (no resampling) and
        every number is in pixels. True: the stack is resampled to the models' grid and numbers are in mm^2 / mL.
    slice_spacing_known : bool, optional
        Whether the geometry's slice spacing is real (volumes in mL); default ``spacing_known``.
    levels : sequence of k {"base", "mid", "apex", None}, optional
        Slice levels, for AHA segment numbers of the transmurality sectors (None: unknown, 6 sectors).
    slice_order : "base-first" or "apex-first", optional
        Instead of ``levels``: where the base lies along k; the slices with predicted myocardium are then split
        into basal, mid and apical thirds (the AHA convention), those without get no level.
    anchor_angle_deg : float, optional
        Screen angle of the anterior RV insertion point on the slices as the short-axis display shows them
        (:func:`~cardiac_ai.geometry.short_axis_display_turn` of the volume's geometry; the stored array when its
        header needs no turn); None assumes the standard view (approximate, see :mod:`cardiac_ai.fibrosis.clinical`).
    device : {"auto", "cpu", "cuda", None}
        Where the networks run.
    provenance : Provenance, optional
        Filled with models, device, parameters, timings and warnings.
    progress : ProgressCallback, optional

    Returns
    -------
    FibrosisResult
        Labels on the input's own grid and geometry. No myocardium found gives empty labels and a warning.

    Raises
    ------
    InputError
        A 4D or empty volume, NaN/Inf voxels, a constant image, or ``levels`` of the wrong length.
    """
    from ..io import check_finite
    from ..models.inference import predict_slices

    provenance = provenance if provenance is not None else Provenance(command="fibrosis")
    if not isinstance(volume, Volume) or volume.axes != "kji":
        raise InputError("segment_fibrosis needs one 3D LGE stack (a Volume with axes 'kji'); pick a frame first.")
    if volume.array.shape[0] < 1 or min(volume.array.shape[1:]) < 8:
        raise InputError(f"The LGE stack {volume.array.shape} is too small; slices of at least 8 x 8 are needed.")
    check_finite(np.asarray(volume.array), "The LGE stack")
    n_slices = volume.array.shape[0]
    if levels is not None and len(levels) != n_slices:
        raise InputError(f"levels must give one level per slice ({n_slices}), got {len(levels)}.")
    if slice_order not in (None, "base-first", "apex-first"):
        raise InputError(f"slice_order must be 'base-first' or 'apex-first', got {slice_order!r}.")
    if slice_order is not None and levels is not None:
        raise InputError("Give the slice levels or the slice order (levels by thirds), not both.")
    slice_spacing_known = spacing_known if slice_spacing_known is None else slice_spacing_known
    provenance.models = models.uses()
    provenance.parameters.update({"supervision": models.supervision, "spacing_known": spacing_known,
                                  "levels": list(levels) if levels is not None else None,
                                  "anchor_angle_deg": anchor_angle_deg})
    image = volume.with_array(np.asarray(volume.array, dtype=np.float32))
    model_volume = image if spacing_known else with_nominal_pixels(image)
    cache: dict = {}

    report(progress, 0.05, "Segmenting the myocardium")
    with provenance.timed("myocardium"):
        prepared = _prepared(model_volume, models.myocardium, cache)
        probabilities = predict_slices(models.myocardium.network, prepared.image[:, np.newaxis], device=device,
                                       activation="softmax", provenance=provenance)
        myo_crop, myo_native = _native_codes(probabilities, prepared, _channel_codes(models.myocardium))
    _warn_if_myocardium_meets_the_crop_edge(myo_crop, models.myocardium, provenance)

    slice_probabilities = None
    if models.classifier is not None:
        report(progress, 0.35, "Classifying slices")
        with provenance.timed("classify"):
            prepared_c = _prepared(model_volume, models.classifier, cache)
            _check_same_grid(prepared_c, prepared, models.classifier, models.myocardium)
            inputs = classifier_inputs(prepared_c.image, myo_crop == LV_MYOCARDIUM,
                                       ClassifierInputSettings.from_card_inference(models.classifier.card.inference))
            slice_probabilities = predict_slices(models.classifier.network, inputs.array, device=device,
                                                 activation="sigmoid", provenance=provenance)[:, 0]
    patient_probability = None
    if models.stack_classifier is not None:
        report(progress, 0.45, "Classifying the stack")
        with provenance.timed("classify_stack"):
            patient_probability = _stack_probability(models.stack_classifier, model_volume, myo_crop, prepared,
                                                     models.myocardium, cache, device)

    report(progress, 0.55, "Segmenting scar")
    with provenance.timed("fibrosis"):
        prepared_f = _prepared(model_volume, models.fibrosis, cache)
        if _in_channels(models.fibrosis) > 1:
            _check_same_grid(prepared_f, prepared, models.fibrosis, models.myocardium)
        channels = [prepared_f.image]
        if _in_channels(models.fibrosis) > 1:
            channels.append((myo_crop == LV_MYOCARDIUM).astype(np.float32))
        fib_probabilities = predict_slices(models.fibrosis.network, np.stack(channels, axis=1).astype(np.float32),
                                           device=device, activation="softmax", provenance=provenance)
        fib_codes = _channel_codes(models.fibrosis)
        _, fib_native = _native_codes(fib_probabilities, prepared_f, fib_codes)

    labels = myo_native.copy()
    inside = myo_native == LV_MYOCARDIUM
    labels[inside & (fib_native == SCAR)] = SCAR
    labels[inside & (fib_native == MVO)] = MVO
    if not inside.any():
        provenance.warn("No LV myocardium found in the stack; the segmentation is empty.", log)
    if slice_order is not None:
        levels = levels_by_thirds(np.isin(labels, MYOCARDIUM_CODES).any(axis=(1, 2)),
                                  base_first=slice_order == "base-first")
        provenance.parameters.update({"slice_order": slice_order, "levels": list(levels)})

    report(progress, 0.85, "Measuring the scar")
    with provenance.timed("measure"):
        # the AHA sectors are screen angles of the short-axis display: measured on the slices as they are shown
        # that way, so that a stack stored turned or mirrored (with a header that says so) gets the same sectors
        turn = short_axis_display_turn(volume.geometry)
        spacing = turn.geometry(volume.geometry, volume.spatial_shape).spacing_kji_mm
        measures = scar_measures(
            np.ascontiguousarray(turn.apply(labels)), pixel_spacing_ji_mm=spacing[1:] if spacing_known else None,
            slice_spacing_mm=spacing[0] if (spacing_known and slice_spacing_known) else None,
            levels=levels, anchor_angle_deg=anchor_angle_deg, mvo_assessed=MVO in fib_codes.values(),
        )
    report(progress, 1.0, "Done")
    return FibrosisResult(Volume(labels, volume.geometry), slice_probabilities, measures, models.supervision,
                          spacing_known, provenance, patient_probability=patient_probability)


# -- the file job ----------------------------------------------------------------------------------------------------
def load_fibrosis_models(
    models_dirs: Sequence[str | os.PathLike],
    *,
    model: Supervision = "weak",
    classifier: bool = True,
    device: str | None = "auto",
    provenance: Provenance | None = None,
) -> FibrosisModels:
    """The fibrosis models from the registry (``models_dirs`` searched first); records device and loading time."""
    from ..device import resolve_device
    from ..models.registry import ModelRegistry

    torch_device = resolve_device(device)
    if provenance is not None:
        provenance.device = str(torch_device)
    registry = ModelRegistry(extra_paths=[Path(p) for p in models_dirs])
    if provenance is None:
        return FibrosisModels.from_registry(registry, model=model, classifier=classifier, device=torch_device)
    with provenance.timed("load_models"):
        return FibrosisModels.from_registry(registry, model=model, classifier=classifier, device=torch_device,
                                            provenance=provenance)


def qc_inputs(image: Volume, labels: np.ndarray, *, spacing_known: bool) -> tuple[Volume, Volume]:
    """What the (cine-trained) QC checks of an LGE result: the image, on EMIDEC's nominal pixels when its pixel size
    is unknown, and the labels with scar and MVO folded into the myocardium (2 myocardium, 3 LV blood pool)."""
    volume = image if spacing_known else with_nominal_pixels(image)
    cine_like = np.where(np.isin(labels, (SCAR, MVO)), LV_MYOCARDIUM, labels).astype(np.uint8)
    return volume, Volume(cine_like, volume.geometry)


def fibrosis_file(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    models: FibrosisModels,
    spacing_mm: Sequence[float] | None = None,
    series_uid: str | None = None,
    levels: Sequence[str | None] | None = None,
    anchor_angle_deg: float | None = None,
    device=None,
    overwrite: bool = False,
    pixel_size_unknown: bool = False,
    slice_order: Literal["base-first", "apex-first"] | None = None,
    provenance: Provenance | None = None,
    progress: ProgressCallback | None = None,
    qc: Any = None,
) -> FibrosisResult:
    """``cardiacai fibrosis``: read an LGE stack, segment and measure the scar, write the output folder.

    Writes ``labels.nii.gz`` (codes 2, 3, 4, 5 on the input's grid), ``segmentation.seg.nrrd`` (Slicer segments with
    names, colours and terminology), ``report.json`` (input, clinical numbers, slice probabilities, the patient's
    ``patient_fibrosis_probability`` from the stack classifier or None without one, provenance),
    ``fibrosis.csv`` (one row per slice) and ``transmurality.csv`` (one row per sector). With ``qc``
    (:func:`cardiac_ai.pipeline.qc_options`, the CLI's default) the myocardium (scar and MVO included) and LV blood
    pool are quality-checked like a cine segmentation: ``report.json["qc"]`` (marked indicative, see
    :data:`cardiac_ai.pipeline.FIBROSIS_QC_NOTE`), ``qc_slices.csv`` and :attr:`FibrosisResult.qc`.

    Parameters
    ----------
    input_path : NIfTI/NRRD/MHA stack, DICOM folder, one PNG slice, or a folder of one patient's
        ``<patient>_sliceNNN.png`` slices (EMIDEC naming).
    out_dir : output folder (new or empty unless ``overwrite``).
    spacing_mm : PNG pixel size (i, j[, k]) in mm; None: unknown, numbers in pixels.
    pixel_size_unknown : ignore the spacing the file states (PNG slices a viewer saved with 1 mm pixels), as
        :func:`read_lge_input`.
    series_uid, levels, slice_order, anchor_angle_deg, device : see :func:`read_lge_input` and
        :func:`segment_fibrosis`.

    Raises
    ------
    DataError, InputError
        Unreadable or unusable input. ``OutputError`` for a refused output folder.
    """
    from ..io import prepare_output_dir, write_volume
    from ..io.report import volume_entry, write_csv, write_report
    from ..io.dicom_seg import DICOM_SEG_NAME, dicom_seg_of_dicom_input
    from ..io.seg_nrrd import write_seg_nrrd

    out = prepare_output_dir(out_dir, overwrite=overwrite, inputs=[input_path])
    provenance = provenance if provenance is not None else Provenance(command="fibrosis")
    provenance.parameters["input"] = str(input_path)
    report(progress, 0.0, "Reading the LGE stack")
    with provenance.timed("read"):
        lge = read_lge_input(input_path, spacing_mm=spacing_mm, series_uid=series_uid,
                             pixel_size_unknown=pixel_size_unknown)
    provenance.parameters["pixel_size_unknown"] = pixel_size_unknown
    if not lge.spacing_known:
        stated = "The pixel size is unknown (the file's spacing is ignored, as asked)" if pixel_size_unknown else \
            "The input stores no pixel size"
        provenance.warn(f"{stated}: EMIDEC pixels are assumed for the models and every length, area and volume is "
                        "in pixels.", log)
    result = segment_fibrosis(
        lge.volume, models, spacing_known=lge.spacing_known, slice_spacing_known=lge.slice_spacing_known,
        levels=levels, anchor_angle_deg=anchor_angle_deg, device=device, provenance=provenance,
        slice_order=slice_order,
        progress=subrange(progress, 0.05, 0.9),
    )
    qc_report = {}
    if qc is not None:
        from ..pipeline import FIBROSIS_QC_NOTE, QC_SLICES_NAME, _file_qc, _qc_entry

        check = _file_qc(*qc_inputs(lge.volume, result.labels.array, spacing_known=lge.spacing_known), qc,
                         provenance, subrange(progress, 0.9, 0.95),
                         judged_structures=(LV_MYOCARDIUM, LV_BLOOD_POOL))  # the LGE models draw no RV
        result = dataclasses.replace(result, qc=check)
        qc_report = {"qc": _qc_entry(check, note=FIBROSIS_QC_NOTE)}
    report(progress, 0.95, "Writing outputs")
    with provenance.timed("write"):
        if result.qc is not None:
            write_csv(out / QC_SLICES_NAME, result.qc.slice_table_rows())
        write_volume(result.labels, out / "labels.nii.gz")
        write_seg_nrrd(result.labels, out / "segmentation.seg.nrrd")
        if not lge.from_png:
            dicom_seg_of_dicom_input(result.labels, input_path, out / DICOM_SEG_NAME, series_uid=series_uid,
                                     provenance=provenance)
        write_csv(out / FIBROSIS_CSV, result.slice_rows())
        write_csv(out / TRANSMURALITY_CSV, result.sector_rows(),
                  columns=["slice_index", "level", "sector", "aha_segment", "mean_transmurality",
                           "max_transmurality", "n_rays", "scar_pixels", "myocardium_pixels"])
        write_report(out, provenance=provenance, results={
            "input": {"path": str(input_path), "source": lge.source, **volume_entry(lge.volume),
                      "spacing_known": lge.spacing_known},
            **result.to_report(),
            **qc_report,
        })
    report(progress, 1.0, "Done")
    return result
