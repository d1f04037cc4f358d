"""Losses: reward surrogates live in rewards.composite; regularizers here."""
from .implicit_cfg import implicit_cfg_direction
from .regularizers import WeightRegularizer

__all__ = ["WeightRegularizer", "implicit_cfg_direction"]
