"""Trainers: one algorithm per file on a shared engine, and their registry."""

from .engine import Trainer
from .r0 import R0Trainer

TRAINERS = {"r0": R0Trainer}

__all__ = ["TRAINERS", "R0Trainer", "Trainer"]
