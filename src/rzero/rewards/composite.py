"""Weighted multi-reward objective with per-sample, per-reward gradient normalization (SPEC 1.2).

    g = sum_i w_i * grad_x r_i(x, c) / (||grad_x r_i(x, c)||_2 + delta)        (per sample)
    L_reward = 0.5 * ||x - sg(x + g)||^2 / numel        =>  dL/dx = -g / numel

The direction g is built under no_grad from each reward's own input gradient, then injected
with the detached surrogate, so every reward pushes equally hard whatever its scale (the
reason R0 needs no per-reward weight tuning). `normalize_grads=False` gives the plain
`-sum_i w_i mean(r_i)` loss instead.
"""

from __future__ import annotations

import torch

from .base import Reward


class CompositeReward(torch.nn.Module):
    """`loss(images, prompts) -> (loss, metrics)` over several frozen rewards.

    images: (B, 3, H, W) in [-1, 1], part of the generator's graph. Extra guidance terms
    (R0+'s high-resolution classifier, the implicit CFG reward) can be passed to `loss` as
    precomputed (B, ...) gradient directions in image space: they are normalized the same way.
    """

    def __init__(self, rewards: dict[str, Reward], weights: dict[str, float] | None = None,
                 normalize_grads: bool = True, delta: float = 1e-8):
        super().__init__()
        if not rewards:
            raise ValueError("at least one reward is needed")
        self.rewards = torch.nn.ModuleDict({k.replace("-", "_"): r for k, r in rewards.items()})
        self.names = list(rewards)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in rewards}
        self.normalize_grads = normalize_grads
        self.delta = delta

    def _score(self, name: str, images: torch.Tensor, prompts: list[str], metrics: dict[str, float]) -> torch.Tensor:
        """Reward `name` on the images (B,), logging its mean and std."""
        r = self.rewards[name.replace("-", "_")](images, prompts)  # ModuleDict keys cannot hold "-"
        metrics[f"reward/{name}"] = float(r.detach().mean())
        metrics[f"reward_std/{name}"] = float(r.detach().std()) if r.numel() > 1 else 0.0
        return r

    def _per_sample_norm(self, g: torch.Tensor) -> torch.Tensor:
        return g.flatten(1).norm(dim=1).view(-1, *([1] * (g.ndim - 1)))

    def loss(self, images: torch.Tensor, prompts: list[str],
             extra_directions: dict[str, tuple[float, torch.Tensor]] | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        metrics: dict[str, float] = {}
        if not self.normalize_grads:
            total = images.new_zeros(())
            for name in self.names:
                total = total - self.weights[name] * self._score(name, images, prompts, metrics).mean()
            return total, metrics

        # 1) Each reward's gradient at a detached copy of the images, normalized per sample.
        x = images.detach().requires_grad_(True)
        direction = torch.zeros_like(x)
        for name in self.names:
            (grad,) = torch.autograd.grad(self._score(name, x, prompts, metrics).sum(), x)
            norm = self._per_sample_norm(grad)
            direction += self.weights[name] * grad / (norm + self.delta)
            metrics[f"grad_norm/{name}"] = float(norm.mean())
        for name, (w, grad) in (extra_directions or {}).items():
            norm = self._per_sample_norm(grad)
            direction += w * grad / (norm + self.delta)
            metrics[f"grad_norm/{name}"] = float(norm.mean())
        # 2) Inject it: the surrogate's gradient w.r.t. images is exactly -direction / numel.
        target = (images + direction).detach()
        loss = 0.5 * (images - target).pow(2).sum() / images.numel()
        return loss, metrics

    @torch.no_grad()
    def scores(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {name: self._score(name, images, prompts, {}) for name in self.names}
