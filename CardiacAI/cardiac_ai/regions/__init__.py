"""Region-aware short-axis cine segmentation (LV blood pool, LV myocardium, RV blood pool).

A slice-region classifier (non-cardiac / base / middle / apex), decoded as a monotonic sequence along the stack,
routes each slice to a region-specific U-Net; non-cardiac slices go to the baseline U-Net.
"""
from __future__ import annotations

from .pipeline import (
    CINE_MODEL_NAMES,
    CineModels,
    CineSegmentation,
    LocalisedHeart,
    check_short_axis_stack,
    localise_heart,
    segment_cine,
)
from .postprocess import PostprocessResult, postprocess_cine_labels
from .sequence import DecodedRegions, decode_monotonic_regions, region_positions

__all__ = [
    "CINE_MODEL_NAMES",
    "CineModels",
    "CineSegmentation",
    "DecodedRegions",
    "LocalisedHeart",
    "PostprocessResult",
    "check_short_axis_stack",
    "decode_monotonic_regions",
    "localise_heart",
    "postprocess_cine_labels",
    "region_positions",
    "segment_cine",
]
