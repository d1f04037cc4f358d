"""The implicit CFG reward of R0 (SPEC 1.2, optional, weight `w_cfg`).

Classifier-free guidance as a reward: by Bayes' rule the CFG direction of a pretrained
text-to-image model is the gradient of an implicit classifier,

    grad_{x_t} log p_t(c | x_t) = s_teacher(x_t | c) - s_teacher(x_t | empty),

so the generator's output x0 is noised to a random t, x_t = a_t x0 + b_t eps, and pushed
along that difference, evaluated by a frozen copy of the pretrained network (the teacher).
Through x_t = a_t x0 + b_t eps the chain rule multiplies by a_t; with scores written through
x0-predictions, s(x_t) = (a_t x0_hat - x_t) / b_t^2, the direction on x0 is

    g_cfg = a_t (s(x_t|c) - s(x_t|empty)) = a_t^2 (x0_hat(x_t|c) - x0_hat(x_t|empty)) / b_t^2

which holds for any parameterization (eps / v / flow) of the teacher. The trainer hands
g_cfg to CompositeReward as one more extra direction on the latent x0, so it is normalized
per sample like every reward (the a_t^2 / b_t^2 factor then only matters in plain-sum mode).

Only torch is imported here; the teacher is any object with the Backbone interface
(`schedule.alpha/sigma`, `predict_x0`, `cat_conds`).
"""

from __future__ import annotations

import torch


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) coefficients -> (B, 1, ..., 1) in x's dtype and device."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def implicit_cfg_direction(teacher, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, cond, uncond
                           ) -> torch.Tensor:
    """g_cfg = a_t (s_teacher(x_t|c) - s_teacher(x_t|empty)) at x_t = a_t x0 + b_t noise.

    x0, noise: (B, C, h, w) latents (x0 is detached here); t: (B,) in the schedule's units,
    with b_t > 0; cond / uncond: the teacher's encoded prompts and empty prompts for B samples.
    Returns (B, C, h, w), the ascent direction of log p_t(c | x_t) with respect to x0.
    """
    sched = teacher.schedule
    a = _per_sample(sched.alpha(t), x0)
    b = _per_sample(sched.sigma(t), x0)
    x_t = a * x0.detach() + b * noise
    # One batched call for both conditions, as CFG sampling does.
    x0_hat = teacher.predict_x0(torch.cat([x_t, x_t]), torch.cat([t, t]), teacher.cat_conds(cond, uncond))
    x0_c, x0_u = x0_hat.chunk(2)
    return (a * a / (b * b)) * (x0_c - x0_u).to(x0.dtype)
