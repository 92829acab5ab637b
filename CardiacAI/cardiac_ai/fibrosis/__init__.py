"""LGE fibrosis (scar) segmentation from weak labels (Klein et al.) and its clinical numbers.

* :mod:`.clinical`: scar size, percentage of myocardium, MVO and transmurality per sector (pure numpy).
* :mod:`.classifier_input`: what the fibrosis classifiers see (myocardium-relative intensity, heart crop).
* :mod:`.inputs`: reading LGE stacks (NIfTI, DICOM, EMIDEC PNG slices) and the models' pixel grid.
* :mod:`.pipeline`: :func:`segment_fibrosis` (array in, :class:`FibrosisResult` out) and :func:`fibrosis_file`
  (``cardiacai fibrosis``).
* :mod:`.training`: the four training steps on EMIDEC (imported on its own; not re-exported here).
* :mod:`.evaluation`: AUROC and Dice as in the paper's tables.
"""
from __future__ import annotations

from .classifier_input import ClassifierInputSettings, classifier_inputs
from .clinical import (
    DEFAULT_ANCHOR_ANGLE_DEG,
    ScarMeasures,
    SectorTransmurality,
    SliceScar,
    scar_measures,
    sector_transmurality,
)
from .evaluation import auroc, binary_dice
from .inputs import (
    EMIDEC_NOMINAL_PIXEL_MM,
    FIBROSIS_SPEC,
    LGEInput,
    read_lge_input,
    with_nominal_pixels,
)
from .pipeline import (
    FIBROSIS_MODEL_NAMES,
    FibrosisModels,
    FibrosisResult,
    fibrosis_file,
    load_fibrosis_models,
    segment_fibrosis,
)

__all__ = [
    "ClassifierInputSettings",
    "DEFAULT_ANCHOR_ANGLE_DEG",
    "EMIDEC_NOMINAL_PIXEL_MM",
    "FIBROSIS_MODEL_NAMES",
    "FIBROSIS_SPEC",
    "FibrosisModels",
    "FibrosisResult",
    "LGEInput",
    "ScarMeasures",
    "SectorTransmurality",
    "SliceScar",
    "auroc",
    "binary_dice",
    "classifier_inputs",
    "fibrosis_file",
    "load_fibrosis_models",
    "read_lge_input",
    "scar_measures",
    "sector_transmurality",
    "segment_fibrosis",
    "with_nominal_pixels",
]
