"""Weight regularization toward the pretrained weights (SPEC 1.3).

    L_reg = lambda_w * sum_p ||theta_p - theta0_p||^2

theta0 is a frozen copy taken when training starts (for LoRA the regularized "delta" is the
adapter weights themselves, whose initial value is zero).
"""

from __future__ import annotations

import torch

from ..utils.fsdp import is_dtensor, shard_like


class WeightRegularizer(torch.nn.Module):
    """Keeps frozen copies of the initial trainable weights; `forward(params) -> (loss, metrics)`."""

    def __init__(self, named_params: list[tuple[str, torch.nn.Parameter]], strength: float):
        super().__init__()
        if strength < 0:
            raise ValueError(f"weight regularization strength must be >= 0, got {strength}")
        self.strength = float(strength)
        self.names = [n for n, _ in named_params]
        # Buffers (not parameters): saved with the trainer state, never optimized.
        for i, (_, p) in enumerate(named_params):
            self.register_buffer(f"theta0_{i}", p.detach().clone())

    def forward(self, params: list[torch.nn.Parameter]) -> tuple[torch.Tensor, dict[str, float]]:
        sq = None
        for i, p in enumerate(params):
            t0 = getattr(self, f"theta0_{i}")
            if is_dtensor(p) and not is_dtensor(t0):  # FSDP: cut theta0 like p once, drop the whole copy
                t0 = shard_like(t0, p.detach())
                setattr(self, f"theta0_{i}", t0)
            term = (p - t0).pow(2).sum()
            sq = term if sq is None else sq + term
        if sq is None:
            raise ValueError("weight regularization got no parameters: nothing is trainable")
        if is_dtensor(sq):  # FSDP: each rank summed its shards; one all-reduce gives the total
            sq = sq.full_tensor()
        return self.strength * sq, {"reg/loss": float(self.strength * sq.detach()), "reg/dist": float(sq.detach().sqrt())}

