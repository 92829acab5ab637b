"""Quality control of segmentations without ground truth (generative VAE + latent search, CNN Dice regression) and
rule checks."""
from __future__ import annotations

from .assess import (
    COMBINATION_TERMS,
    DEFAULT_DICE_THRESHOLD,
    QC_MODEL_NAME,
    QC_PREDICTORS,
    QC_REGRESSOR_NAME,
    QCConfig,
    QCResult,
    assess_segmentation,
    regressed_dice,
    regressor_combination,
    regressor_rotations,
    run_qc,
)
from .corruptions import add_noise_to_image, dilate_labels, drop_slices, erode_labels, punch_holes, shift_labels
from .rules import RuleReport, check_rules
from .search import (
    QC_CROP_SIZE,
    QC_SPACING_MM,
    QC_STRUCTURES,
    SearchResult,
    encoder_only_dice,
    latent_search,
    predicted_dice,
    qc_input,
)
from .vae import SegmentationVAE, reconstruction_loss, vae_loss

__all__ = [
    "QCConfig",
    "QCResult",
    "assess_segmentation",
    "run_qc",
    "regressed_dice",
    "regressor_combination",
    "regressor_rotations",
    "COMBINATION_TERMS",
    "QC_MODEL_NAME",
    "QC_REGRESSOR_NAME",
    "QC_PREDICTORS",
    "DEFAULT_DICE_THRESHOLD",
    "SegmentationVAE",
    "vae_loss",
    "reconstruction_loss",
    "SearchResult",
    "latent_search",
    "predicted_dice",
    "encoder_only_dice",
    "qc_input",
    "QC_STRUCTURES",
    "QC_SPACING_MM",
    "QC_CROP_SIZE",
    "RuleReport",
    "check_rules",
    "shift_labels",
    "erode_labels",
    "dilate_labels",
    "punch_holes",
    "drop_slices",
    "add_noise_to_image",
]
