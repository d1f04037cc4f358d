"""LoRA on the denoiser, and the weight regularizer on the LoRA delta (SPEC 1.3).

A LoRA layer adds Delta W = s B A to a frozen weight W0 (A: (r, in), B: (out, r),
s = alpha / r; B starts at zero, so the generator starts exactly at the pretrained network).
R0's regularizer keeps the trained weights near the pretrained ones,

    L_reg = lambda_w * sum_layers ||Delta W||_F^2 = lambda_w * sum ||theta - theta0||^2,

the same quantity as full fine-tuning's regularizer, measured on the merged weights (not on
A and B, whose norms say nothing about the change: A starts random). It is computed from
r x r Gram matrices, ||s B A||_F^2 = s^2 sum((B^T B) * (A A^T)), so it never materializes
an out x in matrix.

Adapters are added with peft through diffusers' `add_adapter`, so the saved LoRA file is the
format `pipe.load_lora_weights` reads. Adapter weights are kept in float32 whatever the
backbone dtype (a bf16 base with fp32 adapters is the usual memory/precision trade).
"""

from __future__ import annotations

import torch

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def apply_lora(denoiser: torch.nn.Module, rank: int, alpha: float = 0.0,
               target_modules: list[str] | tuple[str, ...] = DEFAULT_TARGETS) -> list[torch.nn.Parameter]:
    """Freeze the denoiser and add trainable LoRA adapters; returns the adapter parameters.

    alpha = 0 means alpha = rank (scale 1). target_modules are module-name suffixes as peft reads them.
    """
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    names = [n for n, _ in denoiser.named_modules()]
    targets = list(target_modules)
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        raise ValueError(f"lora.target_modules {unmatched} match no layer of the {type(denoiser).__name__}; "
                         f"use layer names such as {', '.join(DEFAULT_TARGETS)}")
    denoiser.requires_grad_(False)
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha or rank), target_modules=targets,
                        init_lora_weights="gaussian")
    denoiser.add_adapter(config)
    params = []
    for name, p in denoiser.named_parameters():
        if "lora_" in name:
            p.data = p.data.float()
            p.requires_grad_(True)
            params.append(p)
        else:
            p.requires_grad_(False)
    return params


def lora_layers(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every peft LoRA layer inside `module`."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in module.named_modules() if isinstance(m, LoraLayer)]


def trainable_denoiser(denoiser: torch.nn.Module, rank: int = 0, alpha: float = 0.0,
                       target_modules=DEFAULT_TARGETS) -> torch.nn.Module:
    """What a trainer optimizes: the whole denoiser in float32 (rank 0) or its LoRA adapters."""
    if rank > 0:
        apply_lora(denoiser, rank, alpha, target_modules)
    else:
        # Full fine-tuning keeps float32 master weights (AdamW on bf16 weights loses small updates);
        # a bf16 backbone then still saves memory in its frozen parts (VAE, text encoders).
        if any(p.dtype != torch.float32 for p in denoiser.parameters()):
            denoiser.float()
        denoiser.requires_grad_(True)
    return denoiser


def _flat_ab(layer, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    a = layer.lora_A[adapter].weight
    b = layer.lora_B[adapter].weight
    return a.flatten(1), b.flatten(1), float(layer.scaling[adapter])  # (r, in*k*k), (out, r)


def delta_sq_norm(layer, adapter: str = "default") -> torch.Tensor:
    """||s B A||_F^2 of one layer through r x r Gram matrices (differentiable)."""
    a, b, s = _flat_ab(layer, adapter)
    return (s * s) * ((b.t() @ b) * (a @ a.t())).sum()


def delta_weight(layer, adapter: str = "default") -> torch.Tensor:
    """s B A in the shape of the base weight (for merging and tests)."""
    a, b, s = _flat_ab(layer, adapter)
    return (s * (b @ a)).view(layer.get_base_layer().weight.shape)


class LoraDeltaRegularizer(torch.nn.Module):
    """lambda_w * sum ||Delta W||^2 over the LoRA layers of `module`; `forward() -> (loss, metrics)`.

    Same call and metric names as WeightRegularizer (`reg/loss`, `reg/dist` = ||theta - theta0||
    of the merged weights), so a trainer can use either.
    """

    def __init__(self, module: torch.nn.Module, strength: float, adapter: str = "default"):
        super().__init__()
        if strength < 0:
            raise ValueError(f"weight regularization strength must be >= 0, got {strength}")
        self.layers = [m for _, m in lora_layers(module)]  # plain list: not registered as submodules
        if not self.layers:
            raise ValueError("LoraDeltaRegularizer: the module has no LoRA layers; call apply_lora first")
        self.strength = float(strength)
        self.adapter = adapter

    def forward(self, params=None) -> tuple[torch.Tensor, dict[str, float]]:
        sq = sum(delta_sq_norm(m, self.adapter) for m in self.layers)
        return self.strength * sq, {"reg/loss": float(self.strength * sq.detach()), "reg/dist": float(sq.detach().sqrt())}


@torch.no_grad()
def merged_state_dict(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The denoiser's weights with every LoRA delta folded in, under the plain model's names."""
    merged = {}
    deltas = {f"{name}.base_layer.weight": delta_weight(layer) for name, layer in lora_layers(denoiser)}
    for key, value in denoiser.state_dict().items():
        if "lora_" in key:
            continue
        if key in deltas:
            value = (value.float() + deltas[key].float()).to(value.dtype)
        merged[key.replace(".base_layer.", ".")] = value
    return merged
