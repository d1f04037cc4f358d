"""Trainers: one algorithm per file on a shared engine, and their registry."""

from .engine import Trainer
from .diff_instruct_pp import DiffInstructPPTrainer
from .diff_instruct_star import DiffInstructStarTrainer
from .r0 import R0Trainer

TRAINERS = {"r0": R0Trainer, "distar": DiffInstructStarTrainer, "dipp": DiffInstructPPTrainer}

__all__ = ["TRAINERS", "DiffInstructPPTrainer", "DiffInstructStarTrainer", "R0Trainer", "Trainer"]
