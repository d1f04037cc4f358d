"""Losses: reward surrogates live in rewards.composite; regularizers and score divergences here."""
from .implicit_cfg import implicit_cfg_direction
from .regularizers import WeightRegularizer
from .score_divergence import huber_push, inject, kl_push, pseudo_huber, pseudo_huber_grad

__all__ = ["WeightRegularizer", "implicit_cfg_direction", "huber_push", "inject", "kl_push", "pseudo_huber", "pseudo_huber_grad"]
