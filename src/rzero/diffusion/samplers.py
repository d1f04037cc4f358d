"""DDIM sampling in a/b notation, for VP and rectified-flow schedules alike.

Notation
--------
x_t = a_t x0 + b_t eps. One step from time t to the next (less noisy) time s, given x0_hat:
    eps_hat = (x_t - a_t x0_hat) / b_t
    x_s     = a_s x0_hat + sqrt(b_s^2 - sigma^2) eps_hat + sigma z,        z ~ N(0, I)
    sigma   = eta * (b_s / b_t) * sqrt(b_t^2 - (a_t / a_s)^2 b_s^2)          (derivation at `ddim_sigma`)
eta = 0 is deterministic DDIM; for flow it is exactly the Euler step x_s = x_t + (s - t) v.
eta = 1 is the ancestral (DDPM) posterior.
The end of sampling is the point "after" the last timestep: a = 1, b = 0 (clean x0, `final="x0"`)
or, for VP, abar_0 (`final="alpha0"`, diffusers' set_alpha_to_one=False as in SD1.5's config).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from .schedules import Schedule, TimeLike, _check_final, broadcast_to

__all__ = ["cfg_combine", "ddim_sigma", "ddim_step", "ddim_sample", "draw_noise", "Trajectory"]


def draw_noise(like: Tensor, generator: Union[torch.Generator, Sequence[torch.Generator]]) -> Tensor:
    """N(0, I) shaped like `like`, from one generator or from one generator per sample.

    A list of per-sample generators makes each sample's noise independent of the batch it
    is in (evaluation protocol: results must not depend on batch size).
    """
    if isinstance(generator, torch.Generator):
        return torch.randn(like.shape, generator=generator, device=generator.device, dtype=like.dtype).to(like.device)
    if len(generator) != like.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {like.shape[0]}")
    return torch.stack([torch.randn(like.shape[1:], generator=g, device=g.device, dtype=like.dtype)
                        for g in generator]).to(like.device)


def cfg_combine(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond).

    Works on any parameterization that is affine in eps for fixed x_t: x0 = (x_t - b eps) / a, so
    guiding x0 predictions gives the same x0 as guiding eps predictions and converting afterwards
    (the affine offset x_t / a cancels in cond - uncond and the weights sum to 1).
    """
    return uncond + scale * (cond - uncond)


def _next_ab(
    t_next: Optional[TimeLike], x: Tensor, schedule: Schedule, final: str
) -> tuple[Tensor, Tensor]:
    # t_next=None means the endpoint after the last timestep, whose (a, b) the schedule defines.
    if t_next is None:
        _check_final(final)
        a = torch.tensor(schedule.final_alpha(final), dtype=torch.float32)
        b = torch.tensor(schedule.final_sigma(final), dtype=torch.float32)
    else:
        tn = torch.as_tensor(t_next, device=x.device)
        a, b = schedule.alpha(tn), schedule.sigma(tn)
    return broadcast_to(a, x), broadcast_to(b, x)


def ddim_sigma(
    t: TimeLike,
    t_next: Optional[TimeLike],
    schedule: Schedule,
    eta: float = 0.0,
    final: str = "x0",
) -> Tensor:
    """Standard deviation of the fresh noise in a DDIM step from t to t_next (float32, t's shape).

    Derivation. Let s = t_next < t. The Markov forward kernel between the two marginals is
        q(x_t | x_s) = N(r x_s, v I),   r = a_t / a_s,   v = b_t^2 - r^2 b_s^2,
    and Bayes with q(x_s | x0) = N(a_s x0, b_s^2 I) gives the posterior variance
        Var[x_s | x_t, x0] = b_s^2 v / (r^2 b_s^2 + v) = (b_s^2 / b_t^2) (b_t^2 - (a_t/a_s)^2 b_s^2).
    DDIM scales its standard deviation by eta. For VP (a^2 = abar, b^2 = 1 - abar) this is
        ((1 - abar_s)/(1 - abar_t)) (1 - abar_t - (abar_t/abar_s)(1 - abar_s))
      = ((1 - abar_s)/(1 - abar_t)) (1 - abar_t/abar_s),
    i.e. exactly diffusers' DDIMScheduler._get_variance. At the clean endpoint b_s = 0 so sigma = 0.
    """
    t = torch.as_tensor(t)
    a_t, b_t = schedule.alpha(t), schedule.sigma(t)
    if t_next is None:
        _check_final(final)
        a_s = torch.full_like(a_t, schedule.final_alpha(final))
        b_s = torch.full_like(b_t, schedule.final_sigma(final))
    else:
        tn = torch.as_tensor(t_next, device=t.device)
        a_s, b_s = schedule.alpha(tn), schedule.sigma(tn)
    # clamp: v is >= 0 whenever the SNR decreases from s to t, but rounding can make it -1e-9.
    v = (b_t * b_t - (a_t / a_s) ** 2 * (b_s * b_s)).clamp_min(0.0)
    return eta * (b_s / b_t) * v.sqrt()


def ddim_step(
    x_t: Tensor,
    x0: Tensor,
    t: TimeLike,
    t_next: Optional[TimeLike],
    schedule: Schedule,
    eta: float = 0.0,
    noise: Optional[Tensor] = None,
    final: str = "x0",
) -> Tensor:
    """One DDIM step x_t -> x_{t_next} given the clean estimate x0 (B, C, H, W).

    t, t_next: scalars or (B,) tensors; t_next=None steps to the endpoint chosen by `final`.
    noise: the z of the stochastic part, required when eta > 0 (draw it with an explicit generator).
    """
    a_t = broadcast_to(schedule.alpha(torch.as_tensor(t, device=x_t.device)), x_t)
    b_t = broadcast_to(schedule.sigma(torch.as_tensor(t, device=x_t.device)), x_t)
    a_s, b_s = _next_ab(t_next, x_t, schedule, final)
    eps = (x_t - a_t * x0) / b_t  # (B, C, H, W)
    if eta == 0.0:
        return a_s * x0 + b_s * eps
    if noise is None:
        raise ValueError("ddim_step with eta > 0 needs `noise` (draw it from an explicit torch.Generator)")
    sig = broadcast_to(
        ddim_sigma(torch.as_tensor(t, device=x_t.device), t_next, schedule, eta=eta, final=final), x_t
    )
    # b_s^2 - sig^2 >= 0 for eta <= 1; clamp guards rounding (and eta > 1, which is not DDIM any more).
    direction = (b_s * b_s - sig * sig).clamp_min(0.0).sqrt()
    return a_s * x0 + direction * eps + sig * noise


class Trajectory(NamedTuple):
    """Everything a sampling run visited: xs[i] is the input at timesteps[i] (xs[-1] is the result)."""

    xs: list[Tensor]  # len(timesteps) + 1 tensors (B, C, H, W)
    x0s: list[Tensor]  # len(timesteps) x0 predictions (B, C, H, W)
    timesteps: Tensor  # (n,)


def ddim_sample(
    x0_fn: Callable[[Tensor, Tensor], Tensor],
    noise: Tensor,
    timesteps: Tensor,
    schedule: Schedule,
    eta: float = 0.0,
    generator: Union[torch.Generator, Sequence[torch.Generator], None] = None,
    return_trajectory: bool = False,
    final: str = "x0",
) -> Union[Tensor, tuple[Tensor, Trajectory]]:
    """Run DDIM over decreasing `timesteps` and return the final sample (B, C, H, W).

    x0_fn(x_t, t_batch) -> x0 with t_batch of shape (B,), in schedule time (use schedule.model_time
    inside x0_fn for the network). Sampling starts from x = noise at the top timestep, as SD does
    (exact for flow at t = 1; for VP the top timestep is treated as pure noise). After the last
    timestep it steps to the endpoint given by `final`: "x0" returns the last x0 prediction itself
    (diffusers DDIM with set_alpha_to_one=True), "alpha0" ends at abar_0 like SD1.5's config
    (set_alpha_to_one=False). With eta > 0 one fresh N(0, I) is drawn per step, on the generator's
    device, in step order; `generator` (one, or a list with one per sample) is then required. Fully differentiable: no in-place updates
    and no no_grad, so gradients reach x0_fn's parameters and `noise`.
    """
    if timesteps.ndim != 1 or timesteps.numel() == 0:
        raise ValueError("timesteps must be a non-empty 1-D tensor")
    if eta > 0.0 and generator is None:
        raise ValueError("ddim_sample with eta > 0 needs an explicit torch.Generator")
    timesteps = timesteps.to(noise.device)
    B = noise.shape[0]
    x = noise  # (B, C, H, W)
    xs: list[Tensor] = [x]
    x0s: list[Tensor] = []
    n = timesteps.shape[0]
    for i in range(n):
        t = timesteps[i]
        t_batch = t.expand(B)  # (B,)
        x0 = x0_fn(x, t_batch)  # (B, C, H, W)
        t_next = timesteps[i + 1].expand(B) if i + 1 < n else None
        z = None
        if eta > 0.0:
            z = draw_noise(x, generator)
        x = ddim_step(x, x0, t_batch, t_next, schedule, eta=eta, noise=z, final=final)
        xs.append(x)
        x0s.append(x0)
    if return_trajectory:
        return x, Trajectory(xs=xs, x0s=x0s, timesteps=timesteps)
    return x
