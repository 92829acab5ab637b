"""Weak-label segmentation: class activation maps of image-level classifiers, and pseudo-labels made from them.

Used for ACDC cine (diagnosis labels: :func:`class_activation_maps` of a registry classifier) and EMIDEC LGE
fibrosis (slice or stack labels: :func:`model_cam` of ``fibrosis_cam_2d`` / ``fibrosis_cam_stack``, then
:func:`pseudo_labels`, the recipe of the weakly-supervised fibrosis paper); :func:`split_heart` divides a whole
heart into RV blood pool, myocardium and LV blood pool from the image alone, :func:`complete_lv_wall` adds the
LV wall a whole-heart mask cut, and :func:`carry_mask_between_frames` carries a heart from the end-diastolic frame to
another frame by registering the images.
"""
from __future__ import annotations

from .cam import AUGMENTATIONS, CAM_METHODS, cam_for_class, class_activation_maps, model_cam
from .pseudo_labels import PseudoLabelConfig, cam_to_pseudo_label, motion_prior, pseudo_labels
from .propagation import carry_mask_between_frames
from .structures import LV_WALL_MM, HeartSplitConfig, complete_lv_wall, split_heart

__all__ = [
    "AUGMENTATIONS",
    "CAM_METHODS",
    "cam_for_class",
    "class_activation_maps",
    "model_cam",
    "PseudoLabelConfig",
    "cam_to_pseudo_label",
    "pseudo_labels",
    "motion_prior",
    "HeartSplitConfig",
    "split_heart",
    "LV_WALL_MM",
    "complete_lv_wall",
    "carry_mask_between_frames",
]
