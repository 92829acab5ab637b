"""Segmentation metrics in physical units: overlap, surface distances, regional analysis, clinical indices.

Pure numpy/scipy functions over (k, j, i) label maps or masks plus the voxel spacing in (k, j, i) order
(``Geometry.spacing_kji_mm``). Conventions for empty masks are stated in each module:

* :mod:`.overlap` -- Dice, Jaccard; both masks empty -> NaN ("not applicable"), one empty -> 0.
* :mod:`.surface` -- Hausdorff, HD95, mean surface distance in mm (MONAI's definitions); both empty -> NaN,
  one empty -> inf.
* :mod:`.regional` -- base / middle / apex analysis (20/60/20 % of the labelled slices), Dice profiles, t-tests.
* :mod:`.clinical` -- ventricular volumes, ejection fractions, LV mass.
* :mod:`.tables` -- per-case evaluation rows, summaries and Markdown tables.
"""
from __future__ import annotations

from .classification import auroc, weighted_f1
from .clinical import MYOCARDIAL_DENSITY_G_PER_ML, CardiacFunction, cardiac_function, structure_volume_ml
from .overlap import dice, dice_per_label, dice_per_slice, jaccard, jaccard_per_label, jaccard_per_slice
from .regional import (
    CardiacRegion,
    TTest,
    assign_slice_regions,
    compare_regions,
    dice_profile,
    format_region_comparison,
    paired_t_test,
    regional_dice,
    welch_t_test,
)
from .surface import hausdorff_mm, hd95_mm, mean_surface_distance_mm
from .tables import CASE_COLUMNS, evaluate_cases, format_markdown_table, summarize_rows

__all__ = [
    "auroc",
    "weighted_f1",
    "CASE_COLUMNS",
    "MYOCARDIAL_DENSITY_G_PER_ML",
    "CardiacFunction",
    "CardiacRegion",
    "TTest",
    "assign_slice_regions",
    "cardiac_function",
    "compare_regions",
    "dice",
    "dice_per_label",
    "dice_per_slice",
    "dice_profile",
    "evaluate_cases",
    "format_markdown_table",
    "format_region_comparison",
    "hausdorff_mm",
    "hd95_mm",
    "jaccard",
    "jaccard_per_label",
    "jaccard_per_slice",
    "mean_surface_distance_mm",
    "paired_t_test",
    "regional_dice",
    "structure_volume_ml",
    "summarize_rows",
    "welch_t_test",
]
