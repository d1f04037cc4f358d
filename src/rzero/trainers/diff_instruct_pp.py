"""DI++: reward plus the integral KL to the teacher's CFG distribution (SPEC 3), 1 or K steps.

The same machinery as Diff-Instruct* (trainers/diff_instruct_star.py: reference score with
CFG, fake score psi trained online, reward term, diagnostics); what differs:

  - the push on x0 is the integral-KL gradient  -w(t) a_t sg(s_psi - s_ref_w)  (no Huber);
  - the generator is R0's K-step sampler (cfg.generator: steps, timesteps, random eta),
    trained through every step; the divergence and the reward act on its final x0 (the
    config refuses DI*'s di.t_init, so the shared generator_timesteps gives that sampler).
"""

from __future__ import annotations

import torch

from ..losses import kl_push
from .diff_instruct_star import DiffInstructStarTrainer


class DiffInstructPPTrainer(DiffInstructStarTrainer):
    def divergence_push(self, y: torch.Tensor, w: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        return kl_push(y, w, a_t)
