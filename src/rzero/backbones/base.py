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

from ..diffusion import Schedule, broadcast_to, cfg_combine, ddim_sample, ddim_step, draw_noise, x0_from_output

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
    """Shared behaviour: x0 from the raw output, CFG and DDIM sampling on top of `predict`.

    `final_step` and `clip_x0` are the teacher sampler's two scheduler options, which SD
    backbones read from their scheduler config (diffusers' DDIMScheduler semantics):
    final_step "x0" (set_alpha_to_one=True) or "alpha0" (False: the last step lands on abar_0,
    as SD1.5's config says); clip_x0 = clip_sample_range when clip_sample is on (DDIM's default
    when the key is absent), else None.
    """

    prediction_type = "epsilon"
    schedule: Schedule
    latent_shape: tuple[int, int, int]
    final_step: str = "x0"
    clip_x0: float | None = None

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
        timesteps = self.schedule.sampling_timesteps(steps)
        if self.clip_x0 is None:
            latents = ddim_sample(x0_fn, noise, timesteps, self.schedule, eta=eta, generator=generator,
                                  final=self.final_step)
        else:
            latents = self._ddim_clipped(x0_fn, noise, timesteps, eta, generator)
        return self.decode(latents).clamp(-1, 1)

    def _ddim_clipped(self, x0_fn, noise: torch.Tensor, timesteps: torch.Tensor, eta: float, generator):
        """DDIM with diffusers' clip_sample: the step uses the clipped x0 but the noise direction of
        the unclipped one (DDIMScheduler.step without use_clipped_model_output). ddim_step derives the
        direction from the x0 it is given, so it gets the raw x0 and the clip enters as a_s (x0c - x0)."""
        if eta > 0.0 and generator is None:
            raise ValueError("sampling with eta > 0 needs an explicit torch.Generator")
        timesteps, x = timesteps.to(noise.device), noise
        for i in range(len(timesteps)):
            t = timesteps[i].expand(len(x))
            x0 = x0_fn(x, t)
            t_next = timesteps[i + 1].expand(len(x)) if i + 1 < len(timesteps) else None
            a_next = (self.schedule.alpha(t_next) if t_next is not None
                      else torch.tensor(self.schedule.final_alpha(self.final_step)))
            z = draw_noise(x, generator) if eta > 0.0 else None
            x = ddim_step(x, x0, t, t_next, self.schedule, eta=eta, noise=z, final=self.final_step)
            x = x + broadcast_to(a_next, x) * (x0.clamp(-self.clip_x0, self.clip_x0) - x0)
        return x
