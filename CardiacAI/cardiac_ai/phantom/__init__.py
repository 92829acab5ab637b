"""Synthetic cardiac MR images with known labels, for tests, tiny training runs and demos."""
from __future__ import annotations

from .cine import PHANTOM_GROUPS, make_cine_phantom, make_cine_phantom_pair, make_phantom_cohort

__all__ = ["PHANTOM_GROUPS", "make_cine_phantom", "make_cine_phantom_pair", "make_phantom_cohort"]
