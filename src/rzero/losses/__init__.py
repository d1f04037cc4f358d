"""Losses: reward surrogates live in rewards.composite; regularizers here."""
from .regularizers import WeightRegularizer

__all__ = ["WeightRegularizer"]
