"""The Backbone protocol: what every generator/teacher network looks like to rzero.

A backbone hides its parameterization (eps / v / flow), its latent space (VAE or the
world's pixel-unshuffle) and its text encoder. The few-step generator, the samplers and the
trainers are written once against this protocol (STYLE principle 5).

Shapes: latents (B, C, h, w); images (B, 3, H, W) in [-1, 1]; `t` (B,) in the schedule's
own units (VP: integer timesteps; flow: t in [0, 1]).
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol, runtime_checkable

import torch

from ..diffusion import Schedule, cfg_combine, ddim_sample, x0_from_output

Cond = Any  # backbone-specific bundle of prompt features, produced by encode_prompts


@runtime_checkable
class Backbone(Protocol):
    prediction_type: str  # "epsilon" | "v_prediction" | "flow"
    schedule: Schedule
    latent_shape: tuple[int, int, int]  # (C, h, w) of one latent

    def encode_prompts(self, prompts: list[str]) -> Cond: ...

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor: ...

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]: ...


class BackboneBase(torch.nn.Module):
    """Shared behaviour: x0 from the raw output, CFG and DDIM sampling on top of `predict`."""

    prediction_type = "epsilon"
    schedule: Schedule
    latent_shape: tuple[int, int, int]

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond) -> torch.Tensor:
        return x0_from_output(self.predict(x_t, t, cond), x_t, t, self.schedule, self.prediction_type)

    def guided_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: Cond, uncond: Cond, scale: float) -> torch.Tensor:
        """CFG in x0 space (equal to CFG on eps for a fixed x_t); one batched network call."""
        if scale == 1.0:
            return self.predict_x0(x_t, t, cond)
        both = self.predict_x0(torch.cat([x_t, x_t]), torch.cat([t, t]), self.cat_conds(cond, uncond))
        c, u = both.chunk(2)
        return cfg_combine(c, u, scale)

    def cat_conds(self, a: Cond, b: Cond) -> Cond:
        raise NotImplementedError

    def empty_cond(self, n: int) -> Cond:
        return self.encode_prompts([""] * n)

    @torch.no_grad()
    def sample(self, prompts: list[str], noise: torch.Tensor, steps: int = 25, cfg: float = 7.5, eta: float = 0.0,
               generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """Multi-step DDIM with CFG (the teacher's sampler); returns decoded images."""
        cond = self.encode_prompts(prompts)
        uncond = self.empty_cond(len(prompts))
        x0_fn = lambda x, t: self.guided_x0(x, t, cond, uncond, cfg)  # noqa: E731
        latents = ddim_sample(x0_fn, noise, self.schedule.sampling_timesteps(steps), self.schedule, eta=eta,
                              generator=generator)
        return self.decode(latents).clamp(-1, 1)
