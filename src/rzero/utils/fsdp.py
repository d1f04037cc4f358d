"""FSDP for the trained denoiser (`parallel: fsdp`), built on torch's per-parameter sharding
(FSDP2, `torch.distributed.fsdp.fully_shard`).

Why FSDP2 and not accelerate's FSDP wrapper: trainers call the backbone's own network (the
generator unrolls it K times), never a wrapper object. `fully_shard` works in place: the
backbone's module itself gathers its weights before each block's forward and reduce-scatters
(averages) the gradients after backward, so the trainers stay unchanged. Parameters become
DTensors sharded along dim 0; the helpers below are the few places that must see whole
tensors (checkpoints, snapshot, EMA files) or build shards from them (resume).

Sharding units: each block of the denoiser (diffusers UNets: down/up blocks and the mid
block; SD3-style transformers: each transformer block), then the root for the rest.
"""

from __future__ import annotations

from typing import Any

import torch

BLOCK_LISTS = ("down_blocks", "up_blocks", "transformer_blocks", "single_transformer_blocks")
BLOCKS = ("mid_block",)


def is_dtensor(t: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def sharding_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The blocks that get their own all-gather, in pre-order (a parent before its children)."""
    units = []
    for name, module in model.named_modules():
        parts = name.split(".")
        if parts[-1] in BLOCKS or (len(parts) > 1 and parts[-2] in BLOCK_LISTS and parts[-1].isdigit()):
            units.append(module)
    return units


def shard_module(model: torch.nn.Module, mixed_precision: str = "no") -> int:
    """Shard `model` in place over all ranks; returns the number of block units."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if mixed_precision in ("bf16", "fp16"):  # compute in low precision, reduce gradients in fp32
        low = torch.bfloat16 if mixed_precision == "bf16" else torch.float16
        policy = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    units = sharding_units(model)
    for unit in reversed(units):  # children first: a unit manages the parameters no inner unit took
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return len(units)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a DTensor: every rank must call it)."""
    return t.full_tensor() if is_dtensor(t) else t


def shard_like(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`whole` cut the way `like` (a DTensor) is sharded; a plain tensor passes through."""
    if not is_dtensor(like):
        return whole
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(whole.to(like.dtype), like.device_mesh, like.placements)


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state_dict with every sharded tensor made whole (a collective).

    The result has the plain single-process layout (states keyed by parameter index), so a
    checkpoint resumes the same way whether it was written by 1 process, DDP or FSDP.
    """
    sd = optimizer.state_dict()
    state = {i: {k: full(v) for k, v in sd["state"][i].items()} for i in sorted(sd["state"])}  # same order on all ranks
    return {"state": state, "param_groups": sd["param_groups"]}


def load_full_optimizer_state(optimizer: torch.optim.Optimizer, sd: dict) -> None:
    """Inverse of full_optimizer_state: every rank passes the same whole state and keeps its shards."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for i, st in sorted(sd.get("state", {}).items()):  # one order on every rank (collectives)
        p = params[int(i)] if 0 <= int(i) < len(params) else None
        state[i] = {k: shard_like(v, p) if p is not None and torch.is_tensor(v) and v.shape == p.shape else v
                    for k, v in st.items()}
    optimizer.load_state_dict({"state": state, "param_groups": sd.get("param_groups", [])})
