"""Weighted multi-reward objective with per-sample, per-reward gradient normalization (SPEC 1.2).

    g = sum_i w_i * grad_x r_i(x, c) / (||grad_x r_i(x, c)||_2 + delta)        (per sample)
    L_reward = 0.5 * ||x - sg(x + g)||^2 / numel        =>  dL/dx = -g / numel

The direction g is built under no_grad from each reward's own input gradient, then injected
with the detached surrogate, so every reward pushes equally hard whatever its scale (the
reason R0 needs no per-reward weight tuning). `normalize_grads=False` gives the plain
`-sum_i w_i mean(r_i)` loss instead.

Extra directions (R0+'s high-resolution guidance, the implicit CFG reward) arrive as
precomputed gradients of implicit rewards, `name -> (w, grad)` on the images or
`name -> (w, grad, at)` on another tensor `at` of the generator's graph (e.g. the latent x0).
With normalization they are normalized per sample like the rewards; in plain-sum mode they
enter unnormalized with the plain loss's scale, `dL/d(at) = -w grad / B`, exactly as if
`-w mean(r_extra)` were added to the loss. Both modes inject them with the same surrogate.
"""

from __future__ import annotations

import torch

from .base import Reward


def _module_key(name: str) -> str:
    """ModuleDict keys cannot hold "." (and we avoid "-"): "hps-v2.1" -> "hps_v2_1"."""
    return name.replace("-", "_").replace(".", "_")


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
        self.rewards = torch.nn.ModuleDict({_module_key(k): r for k, r in rewards.items()})
        self.names = list(rewards)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in rewards}
        self.normalize_grads = normalize_grads
        self.delta = delta

    def _score(self, name: str, images: torch.Tensor, prompts: list[str], metrics: dict[str, float]) -> torch.Tensor:
        """Reward `name` on the images (B,), logging its mean and std."""
        r = self.rewards[_module_key(name)](images, prompts)
        metrics[f"reward/{name}"] = float(r.detach().mean())
        metrics[f"reward_std/{name}"] = float(r.detach().std()) if r.numel() > 1 else 0.0
        return r

    def _per_sample_norm(self, g: torch.Tensor) -> torch.Tensor:
        return g.flatten(1).norm(dim=1).view(-1, *([1] * (g.ndim - 1)))

    def loss(self, images: torch.Tensor, prompts: list[str],
             extra_directions: dict[str, tuple] | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """(loss, metrics); `extra_directions`: name -> (w, grad) or (w, grad, at), see the module docstring."""
        metrics: dict[str, float] = {}
        extras = [self._unpack_extra(name, images, entry) for name, entry in (extra_directions or {}).items()]
        if not self.normalize_grads:
            total = images.new_zeros(())
            for name in self.names:
                total = total - self.weights[name] * self._score(name, images, prompts, metrics).mean()
            # Extra terms are gradients of implicit rewards: raw, at the plain loss's 1/B scale.
            for name, w, grad, at in extras:
                metrics[f"grad_norm/{name}"] = float(self._per_sample_norm(grad).mean())
                total = total + self._inject(at, w * grad, len(at))
            return total, metrics

        # 1) Each reward's gradient at a detached copy of the images, normalized per sample.
        direction = self.direction(images, prompts, metrics)
        # 2) Extra directions, normalized the same way. Those on the images join g; those on
        #    another tensor (latents) get their own surrogate with the images' 1/numel, so that
        #    a unit-norm push weighs the same in either space.
        loss = images.new_zeros(())
        for name, w, grad, at in extras:
            norm = self._per_sample_norm(grad)
            metrics[f"grad_norm/{name}"] = float(norm.mean())
            if at is images:
                direction += w * grad / (norm + self.delta)
            else:
                loss = loss + self._inject(at, w * grad / (norm + self.delta), images.numel())
        # 3) Inject g: the surrogate's gradient w.r.t. images is exactly -g / numel.
        return loss + self._inject(images, direction, images.numel()), metrics

    def direction(self, images: torch.Tensor, prompts: list[str],
                  metrics: dict[str, float] | None = None) -> torch.Tensor:
        """g of the module docstring at `images` (taken detached): each reward's gradient,
        normalized per sample, weighted and summed. `metrics` collects the rewards' means and
        gradient norms. Also the direction the world's reward ascent check follows."""
        metrics = {} if metrics is None else metrics
        x = images.detach().requires_grad_(True)
        direction = torch.zeros_like(x)
        for name in self.names:
            (grad,) = torch.autograd.grad(self._score(name, x, prompts, metrics).sum(), x)
            norm = self._per_sample_norm(grad)
            direction += self.weights[name] * grad / (norm + self.delta)
            metrics[f"grad_norm/{name}"] = float(norm.mean())
        return direction

    @staticmethod
    def _inject(at: torch.Tensor, push: torch.Tensor, denom: int) -> torch.Tensor:
        """0.5 ||at - sg(at + push)||^2 / denom, whose gradient w.r.t. `at` is exactly -push / denom."""
        target = (at + push.to(at.dtype)).detach()
        return 0.5 * (at - target).pow(2).sum() / denom

    @staticmethod
    def _unpack_extra(name: str, images: torch.Tensor, entry) -> tuple[str, float, torch.Tensor, torch.Tensor]:
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(f"extra direction '{name}' must be (weight, grad) or (weight, grad, tensor)")
        w, grad, at = (*entry, images) if len(entry) == 2 else entry
        if grad.shape != at.shape:
            raise ValueError(f"extra direction '{name}': gradient shape {tuple(grad.shape)} differs from its "
                             f"tensor's {tuple(at.shape)}")
        return name, float(w), grad.detach(), at

    @torch.no_grad()
    def scores(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {name: self._score(name, images, prompts, {}) for name in self.names}
