"""Score divergences of Diff-Instruct* and DI++ (SPEC 2, 3): the maths, nothing else.

Notation: y = s_psi(x_t) - s_ref_w(x_t, c), the difference between the fake ("assistant")
score of the generator's distribution and the teacher's CFG score, per sample (B, ...).

    pseudo-Huber   d(y)  = sqrt(||y||^2 + C^2) - C            (per sample)
                   d'(y) = y / sqrt(||y||^2 + C^2)             (||d'(y)|| < 1)
    DI* push on x0:   -w(t) a_t C d'(y)
    DI++ push on x0:  -w(t) a_t y                              (integral KL, no Huber)

The DI* push is scaled by C (a constant factor, i.e. a rescaled divergence C d(y)) so that
for ||y|| << C it equals the DI++ push: the same w(t) then serves both, and pseudo-Huber
only caps the per-sample push at norm w a_t C where the score difference is large.

A push is injected like R0's rewards: L = 0.5 ||x0 - sg(x0 + push)||^2 / numel, whose
gradient w.r.t. x0 is exactly -push / numel (descending moves x0 along +push).
Only torch is imported here.
"""

from __future__ import annotations

import torch


def _sq_norm(y: torch.Tensor) -> torch.Tensor:
    """Per-sample squared L2 norm, kept broadcastable: (B, ...) -> (B, 1, ..., 1)."""
    return y.flatten(1).pow(2).sum(1).view(-1, *([1] * (y.ndim - 1)))


def pseudo_huber(y: torch.Tensor, c: float) -> torch.Tensor:
    """d(y) = sqrt(||y||^2 + c^2) - c per sample: (B, ...) -> (B,). c > 0."""
    if c <= 0:
        raise ValueError(f"pseudo-Huber constant c must be > 0, got {c}")
    return (_sq_norm(y) + c * c).sqrt().flatten() - c


def pseudo_huber_grad(y: torch.Tensor, c: float) -> torch.Tensor:
    """d'(y) = y / sqrt(||y||^2 + c^2), the gradient of `pseudo_huber` w.r.t. y: (B, ...)."""
    if c <= 0:
        raise ValueError(f"pseudo-Huber constant c must be > 0, got {c}")
    return y / (_sq_norm(y) + c * c).sqrt()


def huber_push(y: torch.Tensor, weight: torch.Tensor, a_t: torch.Tensor, c: float) -> torch.Tensor:
    """DI* push on x0: -w(t) a_t C d'(y). weight, a_t broadcastable to y (B, 1, 1, 1)."""
    return -weight * a_t * c * pseudo_huber_grad(y, c)


def kl_push(y: torch.Tensor, weight: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """DI++ push on x0 (gradient of the integral KL): -w(t) a_t y."""
    return -weight * a_t * y


def inject(x: torch.Tensor, push: torch.Tensor) -> torch.Tensor:
    """Surrogate 0.5 ||x - sg(x + push)||^2 / numel, with d/dx = -push / numel exactly."""
    target = (x + push).detach()
    return 0.5 * (x - target).pow(2).sum() / x.numel()
