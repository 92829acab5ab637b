"""Region-aware short-axis cine segmentation: localise the heart, classify each slice's region, segment each slice
with the model of its region, post-process, and measure.

Models (registry names, all 2D, trained on ACDC):

* ``cine_localiser``: coarse segmentation at 3.5 mm over the whole field of view; gives the heart centre.
* ``cine_baseline``: U-Net for every slice (and the non-cardiac ones in region-aware mode).
* ``cine_region_classifier``: non-cardiac / base / middle / apex per slice, decoded as a monotonic sequence.
* ``cine_base``, ``cine_middle``, ``cine_apex``: region-specific U-Nets.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from ..errors import InputError, ModelError
from ..geometry import Volume
from ..labels import LABELS, LV_BLOOD_POOL, LV_MYOCARDIUM, RV_BLOOD_POOL
from ..metrics.clinical import structure_volume_ml
from ..metrics.regional import CardiacRegion
from ..preprocessing import InputSpec, network_input, preprocess, restore_argmax, restore_probabilities
from ..progress import ProgressCallback, report
from ..provenance import Provenance
from ..qc.rules import lv_surround_fractions

__all__ = [
    "CINE_MODEL_NAMES",
    "CineModels",
    "CineSegmentation",
    "segment_cine",
    "check_short_axis_stack",
    "MIN_HEART_ML",
    "MIN_LV_SURROUND_FRACTION",
    "LocalisedHeart",
    "localise_heart",
]

log = logging.getLogger(__name__)

#: Smallest heart (ml) the localiser's largest region may hold before an image counts as holding no heart. The
#: bundled localiser found 106-1,100 ml in the 200 ACDC ED and ES volumes (adults) and 2-45 ml in images without
#: a heart (noise, a smooth field, ACDC slices with the heart cut out or mirrored away, a corner of the field of
#: view; session 15, docs/benchmarks.md), so 60 ml sits between them; a small child's heart needs a lower value.
MIN_HEART_ML = 60.0
#: Smallest mean share of the LV blood pool's border that the drawn myocardium must cover for a segmentation to be a
#: heart. The bundled models drew 0.83 and more on all 200 ACDC volumes; in images without a heart where the
#: localiser still finds a large region (small crops of the field of view away from the heart: up to 184 ml), 0.51
#: at most (session 15, docs/benchmarks.md). Checked only when ``min_heart_ml`` > 0.
MIN_LV_SURROUND_FRACTION = 0.6

Mode = Literal["region-aware", "baseline"]

CINE_MODEL_NAMES = {
    "localiser": "cine_localiser",
    "baseline": "cine_baseline",
    "classifier": "cine_region_classifier",
    CardiacRegion.BASE: "cine_base",
    CardiacRegion.MIDDLE: "cine_middle",
    CardiacRegion.APEX: "cine_apex",
}

_REGION_NAMES = {int(r): r.name.lower().replace("_", "-") for r in CardiacRegion}

#: In-plane spacing and slice spacing (mm) outside which a stack is refused as not a cine short-axis stack.
IN_PLANE_SPACING_RANGE_MM = (0.3, 4.0)
SLICE_SPACING_RANGE_MM = (2.0, 30.0)
MIN_SLICES = 3
#: Longest pixel side over its shortest: cine pixels are square or nearly (a reduced phase resolution gives up to
#: about 1.5); 8:1 is a broken header, on which the models draw nothing useful.
MAX_IN_PLANE_SPACING_RATIO = 2.5
#: A stack covering less (mm) gets a warning: ACDC's shortest covers 50 mm, an adult ventricle 70-100 mm.
MIN_STACK_COVERAGE_MM = 40.0


@dataclass
class CineModels:
    """The loaded models of the pipeline (``LoadedModel`` from :class:`~cardiac_ai.models.ModelRegistry`)."""

    localiser: object
    baseline: object
    classifier: object | None = None
    region_models: dict[int, object] = field(default_factory=dict)

    @classmethod
    def from_registry(cls, registry, *, mode: Mode = "region-aware", device=None) -> "CineModels":
        """Load what ``mode`` needs; a missing model is a ModelError naming it and saying how to get it."""
        names = CINE_MODEL_NAMES
        try:
            localiser = registry.load(names["localiser"], device=device)
            baseline = registry.load(names["baseline"], device=device)
            if mode == "baseline":
                return cls(localiser, baseline)
            classifier = registry.load(names["classifier"], device=device)
            regions = {int(r): registry.load(names[r], device=device) for r in
                       (CardiacRegion.BASE, CardiacRegion.MIDDLE, CardiacRegion.APEX)}
        except ModelError as e:
            raise ModelError(
                f"{e} Train the cine models with scripts/train_acdc_cine.py (see README) and point --models-dir or "
                "CARDIACAI_MODELS at the folder it registers them in; use --mode baseline if only the localiser and "
                "baseline are available."
            ) from e
        if classifier.card.input_spec.get("slice_context"):
            raise ModelError(f"{names['classifier']} {classifier.card.version} sees neighbouring slices; the region "
                             "classifier must see one slice at a time (it decides which way the stack runs).")
        return cls(localiser, baseline, classifier, regions)

    def loaded(self) -> list:
        """The LoadedModels in use (localiser, baseline, then classifier and region models when region-aware)."""
        models = [self.localiser, self.baseline, self.classifier, *self.region_models.values()]
        return [m for m in models if m is not None]

    def uses(self) -> list:
        return [m.model_use() for m in self.loaded()]


@dataclass(frozen=True)
class CineSegmentation:
    """Result of :func:`segment_cine` on one 3D frame.

    Attributes
    ----------
    labels : (k, j, i) uint8 Volume on the input's geometry; 1 RV blood pool, 2 LV myocardium, 3 LV blood pool.
    slice_regions : (k,) int8, CardiacRegion per slice after monotonic decoding (baseline mode: from the labels).
    slice_region_probabilities : (k, 4) float32 classifier probabilities, or None in baseline mode.
    base_first : whether the base lies at low k (decided by the classifier when not given); None when no heart
        was found and nobody said.
    heart_center_lps_mm : the localiser's heart centre.
    volumes_ml : structure name -> volume in ml (real spacing).
    lv_mass_g : myocardium volume x 1.05 g/ml.
    provenance : models, device, timings, warnings.
    """

    labels: Volume
    slice_regions: np.ndarray
    slice_region_probabilities: np.ndarray | None
    base_first: bool | None
    heart_center_lps_mm: tuple[float, float, float] | None
    volumes_ml: dict[str, float]
    lv_mass_g: float
    mode: str
    provenance: Provenance

    @property
    def heart_found(self) -> bool:
        return bool(np.any(self.labels.array))

    def slice_table(self) -> list[dict]:
        """One row per slice: region, its probability, and pixel counts per structure."""
        rows = []
        for k, region in enumerate(self.slice_regions):
            row = {"slice": k, "region": _REGION_NAMES[int(region)]}
            if self.slice_region_probabilities is not None:
                row["region_probability"] = float(self.slice_region_probabilities[k, int(region)])
            for code in (RV_BLOOD_POOL, LV_MYOCARDIUM, LV_BLOOD_POOL):
                row[f"{LABELS[code].name}_pixels"] = int(np.count_nonzero(self.labels.array[k] == code))
            rows.append(row)
        return rows

    def to_report(self) -> dict:
        return {
            "mode": self.mode,
            "heart_found": self.heart_found,
            "base_first": self.base_first,
            "heart_center_lps_mm": self.heart_center_lps_mm,
            "volumes_ml": self.volumes_ml,
            "lv_mass_g": self.lv_mass_g,
            "slices": self.slice_table(),
        }


#: An input with 2 to this many distinct values, all integers from 0 to _MAX_LABEL_CODE, is a label map, not an image.
_MAX_LABEL_VALUES = 8
_MAX_LABEL_CODE = 10


def check_short_axis_stack(volume: Volume) -> list[str]:
    """Refuse what cannot be a short-axis cine stack; return warnings for what is odd but usable."""
    if volume.axes != "kji":
        raise InputError(
            "segment_cine needs one 3D frame; this is a (t, k, j, i) series. Pick the frame (--frame N), or "
            "segment ED and ES separately."
        )
    n_slices = volume.array.shape[0]
    if n_slices < MIN_SLICES:
        raise InputError(
            f"The volume has {n_slices} slice(s); a short-axis cine stack needs at least {MIN_SLICES} covering the "
            "ventricles from base to apex. Is this a single slice or a long-axis view?"
        )
    spacing_i, spacing_j, spacing_k = volume.geometry.spacing_mm
    low, high = IN_PLANE_SPACING_RANGE_MM
    if not (low <= spacing_i <= high and low <= spacing_j <= high):
        raise InputError(
            f"In-plane spacing {spacing_i:.3g} x {spacing_j:.3g} mm is outside {low}-{high} mm, which cine MRI "
            "does not produce. Check the header's units (mm) or resample the image."
        )
    ratio = max(spacing_i, spacing_j) / min(spacing_i, spacing_j)
    if ratio > MAX_IN_PLANE_SPACING_RATIO:
        raise InputError(
            f"In-plane spacing {spacing_i:.3g} x {spacing_j:.3g} mm: pixels {ratio:.1f} times as long as they are "
            f"wide, which cine MRI does not produce (at most {MAX_IN_PLANE_SPACING_RATIO:g}). Check the header's "
            "spacing or resample the image."
        )
    low, high = SLICE_SPACING_RANGE_MM
    if not low <= spacing_k <= high:
        raise InputError(
            f"Slice spacing {spacing_k:.3g} mm is outside {low}-{high} mm expected of a short-axis stack; "
            "this does not look like a short-axis cine volume (a 3D isotropic scan, or a wrong header)."
        )
    array = np.asarray(volume.array)
    # np.unique sorts or hashes every voxel; an MR image's maximum alone rules out a label map almost always
    values = np.unique(array) if array.max() <= _MAX_LABEL_CODE else np.empty(0)
    if 2 <= values.size <= _MAX_LABEL_VALUES and values.max() <= _MAX_LABEL_CODE and np.all(values == np.round(values)):
        raise InputError(
            f"The image holds only the values {[int(v) for v in values]}: it looks like a label map (a segmentation), "
            "not an MR image. Pass the cine image itself (for ACDC, patientNNN_frameNN.nii.gz, not ..._gt.nii.gz)."
        )
    warnings = []
    if volume.array.shape[1] < 64 or volume.array.shape[2] < 64:
        warnings.append(f"Small image ({volume.array.shape[1]} x {volume.array.shape[2]} pixels); the heart may be cut.")
    coverage = n_slices * spacing_k
    if coverage < MIN_STACK_COVERAGE_MM:
        warnings.append(
            f"The stack covers {coverage:.0f} mm ({n_slices} slices of {spacing_k:.3g} mm), less than the "
            f"{MIN_STACK_COVERAGE_MM:g} mm from base to apex of an adult ventricle: volumes, EF and mass count only "
            "the slices given, and the base and apex regions may be missing."
        )
    return warnings


def _center_detector(center_lps: np.ndarray):
    """A ``preprocess`` crop-centre detector returning the (j, i) index of an LPS point in the resampled grid."""

    def detect(resampled: Volume) -> tuple[float, float]:
        matrix = resampled.geometry.ijk_to_lps_matrix()
        ijk = np.linalg.solve(matrix[:3, :3], center_lps - matrix[:3, 3])
        return float(ijk[1]), float(ijk[0])

    return detect


def _run_model(model, volume: Volume, crop_center, *, device, provenance: Provenance,
               base_first: bool = True) -> np.ndarray:
    """Softmax probabilities (classes, k, j, i) of a segmentation model on the input grid."""
    from ..models.inference import segment_stack

    return segment_stack(model, volume, crop_center=crop_center, device=device, provenance=provenance,
                         base_first=base_first).probabilities


def _prepare_for(model, volume: Volume, center_lps: np.ndarray):
    """``preprocess`` of the volume as the model's card says, cropped around the heart centre."""
    return preprocess(volume, InputSpec.from_dict(model.card.input_spec), crop_center=_center_detector(center_lps))


def _predict_crop(model, images: np.ndarray, *, device, provenance: Provenance, base_first: bool = True,
                  chosen: np.ndarray | None = None) -> np.ndarray:
    """Softmax probabilities (k, classes, cj, ci) of a segmentation model on preprocessed slices (k, cj, ci) of one
    stack, or on its ``chosen`` slices only (a 2.5D model still sees their neighbours)."""
    from ..models.inference import predict_slices

    inputs = network_input(images, InputSpec.from_dict(model.card.input_spec), base_first=base_first)
    probabilities = predict_slices(model.network, inputs if chosen is None else inputs[chosen], device=device,
                                   activation="softmax", provenance=provenance)
    return _learnt_channels_only(probabilities, model.card)


def _learnt_channels_only(probabilities: np.ndarray, card) -> np.ndarray:
    """``probabilities`` with the channels the card's ``label_map`` does not name set to 0 (the rest renormalised):
    a model trained on some structures (a myocardium-only label set) has output channels for codes below the
    highest one that it never learnt, and their noise must not become an RV or a blood pool."""
    named = {int(code) for code in card.label_map}
    unnamed = [channel for channel in range(probabilities.shape[1]) if channel not in named]
    if not named or not unnamed:
        return probabilities
    probabilities = probabilities.copy()
    probabilities[:, unnamed] = 0
    return probabilities / np.maximum(probabilities.sum(axis=1, keepdims=True), np.finfo(probabilities.dtype).tiny)


@dataclass(frozen=True)
class LocalisedHeart:
    """What the localiser finds in a stack: the largest 3D heart region, on the localiser's own coarse grid.

    Attributes
    ----------
    center_lps_mm : (3,) LPS centre of the region, or None when the localiser finds no heart voxel.
    volume_ml : its volume (0 without one).
    slice_area_mm2 : (k,) its area on each slice of the stack (the localiser keeps the slices).
    """

    center_lps_mm: np.ndarray | None
    volume_ml: float
    slice_area_mm2: np.ndarray


def localise_heart(model, volume: Volume, *, device=None, provenance: Provenance | None = None) -> LocalisedHeart:
    """Run the cine localiser (``cine_localiser``) on a (k, j, i) stack: the largest 3D heart region it finds.

    Found on the localiser's coarse grid (no restore to the native grid: a centre, a size and slice areas are all
    that is needed)."""
    prepared = preprocess(volume, InputSpec.from_dict(model.card.input_spec), crop_center="image_center")
    probabilities = _predict_crop(model, prepared.image, device=device, provenance=provenance)
    heart = np.argmax(probabilities, axis=1) > 0
    components, count = ndimage.label(heart)
    geometry = prepared.transform.cropped_geometry
    if count == 0:
        return LocalisedHeart(None, 0.0, np.zeros(heart.shape[0]))
    sizes = ndimage.sum_labels(heart, components, index=np.arange(1, count + 1))
    largest = components == (int(np.argmax(sizes)) + 1)
    center_kji = np.array(ndimage.center_of_mass(largest))
    pixel_mm2 = float(np.prod(geometry.spacing_kji_mm[1:]))
    return LocalisedHeart(
        geometry.index_to_lps(center_kji[np.newaxis])[0],
        float(sizes.max()) * pixel_mm2 * float(geometry.spacing_kji_mm[0]) / 1000.0,
        largest.sum(axis=(1, 2)) * pixel_mm2,
    )


def _classify_regions(model, volume: Volume, center_lps: np.ndarray, *, device, provenance) -> np.ndarray:
    from ..models.inference import predict_slices

    spec = InputSpec.from_dict(model.card.input_spec)
    prepared = preprocess(volume, spec, crop_center=_center_detector(center_lps))
    return predict_slices(
        model.network, prepared.image[:, np.newaxis], device=device, activation="softmax", provenance=provenance
    )


def _regions_from_labels(labels: np.ndarray, base_first: bool, volume: Volume) -> np.ndarray:
    """Regions by the 20/60/20 rule over the slices that hold a post-processed heart."""
    from ..metrics.regional import assign_slice_regions
    from ..regions.postprocess import postprocess_cine_labels

    cleaned = postprocess_cine_labels(labels.astype(np.uint8), spacing_kji_mm=volume.geometry.spacing_kji_mm).labels
    return assign_slice_regions(cleaned, base_first=base_first).astype(np.int8)


def _decode_regions(model, image: Volume, center: np.ndarray, base_first: bool | None, *, device, provenance):
    """Classifier probabilities (k, 4), the most probable monotonic sequence, and the base side it implies."""
    from ..regions.sequence import decode_monotonic_regions

    probabilities = _classify_regions(model, image, center, device=device, provenance=provenance).astype(np.float32)
    if base_first is not None:
        return probabilities, decode_monotonic_regions(probabilities, base_first=base_first), base_first
    forward = decode_monotonic_regions(probabilities, base_first=True)
    backward = decode_monotonic_regions(probabilities, base_first=False)
    if forward.log_likelihood >= backward.log_likelihood:
        return probabilities, forward, True
    return probabilities, backward, False


#: An RV blood pool below this fraction of the LV's, in one frame, is a missed RV (a mirrored image): the lowest
#: ratio of ACDC's 200 ground-truth frames is 0.11 (patient050 at end-systole), of the bundled models' segmentations
#: of them 0.12.
MIN_RV_TO_LV_VOLUME = 0.05


def missed_rv_warning(volumes_ml: dict[str, float]) -> str | None:
    """The warning for a frame whose RV blood pool is far smaller than its LV's (structure name -> ml), or None."""
    rv_ml, lv_ml = volumes_ml[LABELS[RV_BLOOD_POOL].name], volumes_ml[LABELS[LV_BLOOD_POOL].name]
    if not (lv_ml > 0 and rv_ml < MIN_RV_TO_LV_VOLUME * lv_ml):
        return None
    return (f"The RV blood pool ({rv_ml:.1f} ml) is under {100 * MIN_RV_TO_LV_VOLUME:.0f} % of the LV's "
            f"({lv_ml:.1f} ml): the RV was mostly missed (the lowest ratio of the 200 ACDC ground-truth frames is "
            "11 %, at end-systole). Check the QC flags and the image's orientation: an image stored mirrored "
            "without its header saying so loses the RV this way.")


def segment_cine(
    volume: Volume,
    *,
    models: CineModels,
    mode: Mode = "region-aware",
    base_first: bool | None = None,
    postprocess: bool = True,
    slice_regions: np.ndarray | None = None,
    region_source: Literal["classifier", "segmentation"] = "classifier",
    region_combination: Literal["average", "replace"] = "average",
    min_heart_ml: float = MIN_HEART_ML,
    device=None,
    progress: ProgressCallback | None = None,
    provenance: Provenance | None = None,
) -> CineSegmentation:
    """Segment one short-axis cine frame into RV blood pool, LV myocardium and LV blood pool.

    Parameters
    ----------
    volume : Volume (k, j, i), a short-axis stack (at least 3 slices, cine-like spacing).
    models : CineModels, e.g. ``CineModels.from_registry(ModelRegistry(), mode=mode)``.
    mode : "region-aware" (classifier + region-specific models, non-cardiac slices by the baseline) or "baseline".
    base_first : True when the base is at low k (ACDC); None lets the region classifier decide (region-aware mode)
        or assumes True (baseline mode).
    postprocess : keep the largest component per structure, fill blood-pool holes, drop floating structures.
    region_source : "classifier" (the paper: the region classifier's monotonic sequence) or "segmentation" (the
        20/60/20 split of the slices the baseline segments, the definition the regions are trained on; the
        classifier then only decides where the base lies when ``base_first`` is None).
    region_combination : "average" (the mean of the region model's and the baseline's probabilities, a two-model
        ensemble; chosen on the validation patients, docs/benchmarks.md) or "replace" (the paper: a slice's region
        model alone decides; faster).
    slice_regions : (k,) CardiacRegion codes to use instead of the classifier's (region-aware mode), e.g. regions
        known from a reader; the benchmark uses the ground truth's to measure a perfect classifier's upper bound.
    min_heart_ml : the smallest heart the localiser may find (its largest connected region, on its coarse grid);
        below it the image is taken to hold no heart and the segmentation is empty, with a warning; so is a
        segmentation whose myocardium surrounds less than :data:`MIN_LV_SURROUND_FRACTION` of the LV blood pool on
        average (no heart's shape). Default :data:`MIN_HEART_ML`; 0 turns both checks off.

    Returns
    -------
    CineSegmentation
        With no heart found, empty labels and a warning, never an error.

    Raises
    ------
    InputError
        A 4D series, fewer than 3 slices, or spacing no cine short-axis stack has.
    """
    from ..regions.postprocess import postprocess_cine_labels

    provenance = provenance if provenance is not None else Provenance(command="segment-cine")
    provenance.parameters.update({"mode": mode, "postprocess": postprocess, "base_first": base_first,
                                  "region_source": region_source, "region_combination": region_combination})
    if mode not in ("region-aware", "baseline"):
        raise InputError(f"mode must be 'region-aware' or 'baseline', got {mode!r}.")
    if region_source not in ("classifier", "segmentation"):
        raise InputError(f"region_source must be 'classifier' or 'segmentation', got {region_source!r}.")
    if region_combination not in ("replace", "average"):
        raise InputError(f"region_combination must be 'replace' or 'average', got {region_combination!r}.")
    if mode == "region-aware" and (models.classifier is None or len(models.region_models) < 3):
        raise InputError("Region-aware mode needs the region classifier and the base, middle and apex models.")
    for message in check_short_axis_stack(volume):
        provenance.warn(message, log)
    provenance.models = models.uses()
    base_first_given = base_first  # the classifier may decide it below; with no heart, only the caller's word stands
    image = volume.with_array(volume.array.astype(np.float32, copy=False))
    n_slices = image.array.shape[0]

    report(progress, 0.0, "Locating the heart")
    with provenance.timed("localise"):
        localised = localise_heart(models.localiser, image, device=device, provenance=provenance)
    center, heart_ml = localised.center_lps_mm, localised.volume_ml
    provenance.parameters["localised_heart_ml"] = round(heart_ml, 1)
    if center is not None and heart_ml < min_heart_ml:
        provenance.warn(
            f"No heart found in the image: the largest heart-like region the localiser finds holds {heart_ml:.0f} ml, "
            f"less than the {min_heart_ml:g} ml of the smallest heart it accepts (adult hearts in ACDC: 106 ml and "
            "more), so the segmentation is empty. For a smaller (e.g. paediatric) heart lower --min-heart-ml.", log)
        center = None
    elif center is None:
        provenance.warn("No heart found in the image; the segmentation is empty.", log)
    if center is None:
        empty = np.zeros(image.array.shape, np.uint8)
        return CineSegmentation(
            Volume(empty, volume.geometry), np.zeros(n_slices, np.int8), None, base_first, None,
            {LABELS[c].name: 0.0 for c in (1, 2, 3)}, 0.0, mode, provenance,
        )

    region_probabilities = None
    if mode == "region-aware":
        # Classified first: the side of the base it finds orders a 2.5D model's neighbouring slices.
        if slice_regions is not None:
            regions = np.asarray(slice_regions, dtype=np.int8)
            if regions.shape != (n_slices,) or not np.isin(regions, [int(r) for r in CardiacRegion]).all():
                raise InputError(f"slice_regions must hold {n_slices} CardiacRegion codes (0-3), got {regions!r}.")
        else:
            report(progress, 0.2, "Classifying slice regions")
            with provenance.timed("classify"):
                region_probabilities, decoded, base_first = _decode_regions(
                    models.classifier, image, center, base_first, device=device, provenance=provenance
                )
            regions = decoded.regions
            provenance.parameters["slices_changed_by_monotonic_decoding"] = int(np.count_nonzero(decoded.changed))
    stack_base_first = base_first is not False
    report(progress, 0.4, "Segmenting slices")
    with provenance.timed("segment"):
        prepared = _prepare_for(models.baseline, image, center)
        baseline_crop = _predict_crop(models.baseline, prepared.image, device=device, provenance=provenance,
                                      base_first=stack_base_first)
    crop_probabilities, probabilities = baseline_crop, None
    if mode == "region-aware":
        if slice_regions is None:
            if region_source == "segmentation":
                baseline = restore_argmax(np.moveaxis(baseline_crop, 1, 0), prepared.transform)
                regions = _regions_from_labels(baseline, base_first, volume)
        report(progress, 0.5, "Region-specific segmentation")
        # When every region model takes the baseline's input (the bundled ones do), each runs on its own slices of
        # the baseline's crop and one restore serves all: restoring is linear and per slice, so it commutes with
        # the average. A region model with another input spec is combined on the native grid instead.
        baseline_spec = InputSpec.from_dict(models.baseline.card.input_spec)
        same_input = all(baseline_spec.same_preprocessing(InputSpec.from_dict(m.card.input_spec))
                         for m in models.region_models.values())
        combined = baseline_crop.copy() if same_input else restore_probabilities(
            np.moveaxis(baseline_crop, 1, 0), prepared.transform)
        with provenance.timed("segment_regions"):
            for region, model in models.region_models.items():
                chosen = np.flatnonzero(regions == region)
                if chosen.size == 0:
                    continue
                if same_input:
                    region_probs = _predict_crop(model, prepared.image, device=device, provenance=provenance,
                                                 base_first=stack_base_first, chosen=chosen)
                    reference = baseline_crop[chosen]
                    target = (chosen,)
                else:
                    region_probs = _run_model(model, image, _center_detector(center), device=device,
                                              provenance=provenance, base_first=stack_base_first)[:, chosen]
                    reference = combined[:, chosen]
                    target = (slice(None), chosen)
                combined[target] = 0.5 * (reference + region_probs) if region_combination == "average" else region_probs
        crop_probabilities = combined if same_input else None
        probabilities = None if same_input else combined
    with provenance.timed("restore"):
        if crop_probabilities is not None:
            labels = restore_argmax(np.moveaxis(crop_probabilities, 1, 0), prepared.transform)
        else:
            labels = np.argmax(probabilities, axis=0).astype(np.uint8)
    if postprocess:
        report(progress, 0.85, "Post-processing")
        with provenance.timed("postprocess"):
            result = postprocess_cine_labels(labels, spacing_kji_mm=volume.geometry.spacing_kji_mm)
            labels = result.labels
            for note in result.notes:
                log.info("Post-processing: %s", note)
    if base_first is None:
        base_first = True
    if mode == "baseline":
        from ..metrics.regional import assign_slice_regions

        regions = assign_slice_regions(labels, base_first=base_first).astype(np.int8)
    if min_heart_ml > 0 and np.any(labels):
        surround = lv_surround_fractions(labels)
        mean_surround = float(np.nanmean(surround)) if np.isfinite(surround).any() else math.nan
        provenance.parameters["mean_lv_surround_fraction"] = None if math.isnan(mean_surround) else round(
            mean_surround, 3)
        if mean_surround < MIN_LV_SURROUND_FRACTION:
            provenance.warn(
                f"No heart recognised: the myocardium the models drew surrounds only {100 * mean_surround:.0f} % of "
                f"the LV blood pool on average (a heart's: {100 * MIN_LV_SURROUND_FRACTION:.0f} % and more; 83 % "
                "and more in every ACDC volume), as in images without a heart; the segmentation is empty. "
                "--min-heart-ml 0 keeps what the models drew.", log)
            labels = np.zeros_like(labels)
    spacing = volume.geometry.spacing_kji_mm
    volumes = {LABELS[c].name: structure_volume_ml(labels, c, spacing) for c in (1, 2, 3)}
    missed = missed_rv_warning(volumes)
    if missed:
        provenance.warn(missed, log)
    if not np.any(labels):
        if not any(w.startswith("No heart") for w in provenance.warnings):
            provenance.warn("The models found no heart structure in this volume; the segmentation is empty.", log)
        # no heart: no base, middle or apex, and no way along the stack but the caller's word
        regions, region_probabilities, base_first = np.zeros(n_slices, np.int8), None, base_first_given
    report(progress, 1.0, "Done")
    return CineSegmentation(
        Volume(labels, volume.geometry), np.asarray(regions, np.int8), region_probabilities,
        None if base_first is None else bool(base_first),
        tuple(float(v) for v in center), volumes, volumes[LABELS[LV_MYOCARDIUM].name] * 1.05, mode, provenance,
    )
