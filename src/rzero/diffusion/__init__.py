"""Diffusion maths: schedules (VP, rectified flow), parameterization conversions and DDIM sampling.

Depends only on torch; diffusers serves as the golden reference in the tests, never here.
"""

from .samplers import Trajectory, cfg_combine, ddim_sample, ddim_sigma, ddim_step, draw_noise
from .schedules import (
    PREDICTION_TYPES,
    SCHEDULES,
    FlowSchedule,
    Schedule,
    VPSchedule,
    add_noise,
    broadcast_to,
    eps_from_x0,
    make_schedule,
    output_from_x0_eps,
    x0_from_output,
)

__all__ = [
    "PREDICTION_TYPES",
    "SCHEDULES",
    "FlowSchedule",
    "Schedule",
    "Trajectory",
    "VPSchedule",
    "add_noise",
    "broadcast_to",
    "cfg_combine",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "draw_noise",
    "eps_from_x0",
    "make_schedule",
    "output_from_x0_eps",
    "x0_from_output",
]
