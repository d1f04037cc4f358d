"""The few-step generator of R0 (SPEC 1.1): the pretrained network run as a K-step sampler.

Notation (x_t = a_t x0 + b_t eps; timesteps tau_1 > ... > tau_K):

    x = z                                   # pure noise at tau_1
    for k in 1..K:
        x0_k = predict_x0(x, tau_k, c)      # backbone, any parameterization
        if k < K:
            eps_k = (x - a(tau_k) x0_k) / b(tau_k)
            x = a(tau_{k+1}) x0_k + b(tau_{k+1}) (sqrt(1 - eta^2) eps_k + eta xi)   # renoise="mix"
    return x0_K

renoise="ddim_sigma" instead uses DDIM's posterior noise scaled by eta
(x = a' x0 + sqrt(b'^2 - sigma^2) eps + sigma xi). eta = 0 is deterministic DDIM in both
modes. No CFG: guidance enters only through the rewards. All randomness comes from an
explicit torch.Generator; the whole loop is differentiable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from ..diffusion import broadcast_to, ddim_sigma, draw_noise


@dataclass
class GeneratorOutput:
    x0: torch.Tensor  # (B, C, h, w) latents of the returned step
    trajectory: list[torch.Tensor] | None = None  # x0_1 .. x0_k when asked for


class FewStepGenerator(torch.nn.Module):
    """K-step generator over any Backbone (its weights are what R0 trains)."""

    def __init__(self, backbone, steps: int = 4, timesteps: list[float] | None = None, renoise: str = "mix",
                 gradient_checkpointing: bool = False):
        super().__init__()
        if renoise not in ("mix", "ddim_sigma"):
            raise ValueError(f"renoise must be 'mix' or 'ddim_sigma', got '{renoise}'")
        self.backbone = backbone
        ts = torch.as_tensor(timesteps) if timesteps else backbone.schedule.evenly_spaced_timesteps(steps)
        if len(ts) != steps:
            raise ValueError(f"{len(ts)} timesteps given for {steps} steps")
        if not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(f"timesteps must decrease, got {ts.tolist()}")
        self.register_buffer("timesteps", ts, persistent=False)
        self.steps = steps
        self.renoise = renoise
        self.gradient_checkpointing = gradient_checkpointing

    def _x0(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self.backbone.predict_x0, x, t, cond, use_reentrant=False)
        return self.backbone.predict_x0(x, t, cond)

    def forward(self, noise: torch.Tensor, cond, eta: torch.Tensor | float = 0.0,
                generator: torch.Generator | list[torch.Generator] | None = None, stop_at: int | None = None,
                grad_from: int | None = None, return_trajectory: bool = False) -> GeneratorOutput:
        """Run the sampler.

        noise: (B, C, h, w). eta: a float, (B,) per trajectory, or (K-1, B) per step.
        generator: one torch.Generator, or one per sample (batch-independent results).
        stop_at: return x0 of step `stop_at` (1-based; R0+ intermediate supervision).
        grad_from: run steps 1..grad_from-1 without gradient (1-based; R0+ draws it at random).
        """
        b = noise.shape[0]
        stop = self.steps if stop_at is None else stop_at
        if not 1 <= stop <= self.steps:
            raise ValueError(f"stop_at must be in 1..{self.steps}, got {stop_at}")
        eta = torch.as_tensor(eta, dtype=noise.dtype, device=noise.device)
        if eta.ndim == 0:
            eta = eta.expand(b)
        if eta.ndim == 1:
            eta = eta[None].expand(max(self.steps - 1, 1), b)  # (K-1, B)
        sched = self.backbone.schedule
        x = noise
        traj = []
        if grad_from is not None and not 1 <= grad_from <= stop:
            raise ValueError(f"grad_from must be in 1..{stop}, got {grad_from}")
        first_grad = 0 if grad_from is None else grad_from - 1
        for k in range(stop):
            t = self.timesteps[k].expand(b).to(noise.device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and k >= first_grad):
                x0 = self._x0(x, t, cond)
            if return_trajectory:
                traj.append(x0)
            if k == stop - 1:
                break
            t_next = self.timesteps[k + 1].expand(b).to(noise.device)
            a, s = broadcast_to(sched.alpha(t), x), broadcast_to(sched.sigma(t), x)
            a_n, s_n = broadcast_to(sched.alpha(t_next), x), broadcast_to(sched.sigma(t_next), x)
            eps = (x - a * x0) / s
            xi = draw_noise(x, generator)
            e = broadcast_to(eta[k], x)
            if self.renoise == "mix":
                x = a_n * x0 + s_n * ((1 - e * e).clamp_min(0).sqrt() * eps + e * xi)
            else:
                sigma = broadcast_to(ddim_sigma(t, t_next, sched, eta=1.0), x) * e
                x = a_n * x0 + (s_n * s_n - sigma * sigma).clamp_min(0).sqrt() * eps + sigma * xi
        return GeneratorOutput(x0, traj if return_trajectory else None)

    @torch.no_grad()
    def sample(self, prompts: list[str], noise: torch.Tensor, eta: float = 0.0,
               generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """Inference: prompts + noise -> decoded images (B, 3, H, W) clamped to [-1, 1]."""
        x0 = self(noise, self.backbone.encode_prompts(prompts), eta, generator=generator).x0
        return self.backbone.decode(x0).clamp(-1, 1)

    def sample_eta(self, b: int, eta_min: float, eta_max: float, per_step: bool,
                   generator: torch.Generator | None = None) -> torch.Tensor:
        """Training eta ~ U[eta_min, eta_max]: (B,) per trajectory or (K-1, B) per step."""
        shape = (max(self.steps - 1, 1), b) if per_step else (b,)
        return eta_min + (eta_max - eta_min) * torch.rand(shape, generator=generator)


class TrainableGenerator(torch.nn.Module):
    """The generator as a trainer optimizes it, and as the distributed wrapper (DDP) sees it.

    Its one registered child is the trained denoiser, so its parameters are exactly the ones
    the optimizer steps and DDP averages (the backbone's frozen VAE and text encoders stay
    out); its forward is the generator's whole unrolled sampler, so one training forward is
    one call through the wrapper. That call is what arms DDP's gradient hooks for the
    backward pass: calling the denoiser K times outside it leaves the ranks unsynchronized.

    forward(noise (B, C, h, w), cond, eta, gen, stop_at, grad_from) -> x0 (B, C, h, w),
    with the arguments of `FewStepGenerator.forward` (`gen`: its torch.Generator(s)).
    """

    def __init__(self, generator: FewStepGenerator, denoiser: torch.nn.Module):
        super().__init__()
        self.denoiser = denoiser
        self.__dict__["generator"] = generator  # not a submodule: the backbone is not trained

    def forward(self, noise: torch.Tensor, cond, eta: torch.Tensor | float = 0.0,
                gen: torch.Generator | list[torch.Generator] | None = None, stop_at: int | None = None,
                grad_from: int | None = None) -> torch.Tensor:
        return self.generator(noise, cond, eta, generator=gen, stop_at=stop_at, grad_from=grad_from).x0
