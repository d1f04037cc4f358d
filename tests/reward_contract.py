"""The reward contract (SPEC 1.2), shared by every reward's tests.

`check_reward_contract` is the single definition of the contract: a frozen, differentiable
module `forward(images, prompts) -> Tensor[B]` that resizes its own input, never trains
and lets gradients reach the images. It lives in this plain module (not a test file) so
that several test files can import it without pytest collecting tests twice.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rzero.rewards import Reward
from rzero.world.prompts import describe, random_templates
from rzero.world.render import render
from rzero.world.scene import complete_specs, sample_training_specs

B = 4


def world_batch(n: int = B, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Rendered images in [-1, 1] and the prompts they satisfy."""
    g = torch.Generator().manual_seed(seed)
    specs = sample_training_specs(n, g)
    images = render(complete_specs(specs, g), g, size=size)
    return images, describe(specs, random_templates(n, g))


def check_reward_contract(reward: Reward) -> None:
    """Every property SPEC 1.2 asks of a reward; raises AssertionError naming the broken one."""
    name = reward.name
    images, prompts = world_batch()

    # Shape, dtype, finiteness.
    out = reward(images, prompts)
    assert isinstance(out, torch.Tensor), name
    assert out.shape == (B,), f"{name}: output shape {tuple(out.shape)}, expected ({B},)"
    assert out.dtype.is_floating_point, f"{name}: output dtype {out.dtype}"
    assert torch.isfinite(out).all(), f"{name}: non-finite rewards {out}"

    # Frozen: no parameter requires grad, and the module is in eval mode.
    trainable = [n for n, p in reward.named_parameters() if p.requires_grad]
    assert not trainable, f"{name}: parameters require grad: {trainable[:5]}"
    assert not reward.training and not any(m.training for m in reward.modules()), f"{name}: not in eval mode"

    # Deterministic.
    assert torch.equal(out, reward(images, prompts)), f"{name}: two calls differ"

    # Gradients flow to the images (at the reward's own size and at a larger one).
    for size in (32, 64):
        x = (world_batch(size=size)[0] if size != 32 else images).clone().requires_grad_(True)
        r = reward(x, prompts)
        assert r.shape == (B,) and torch.isfinite(r).all(), f"{name}: bad output at {size}px"
        assert r.requires_grad, f"{name}: output at {size}px is detached from the images"
        r.sum().backward()
        assert x.grad is not None, f"{name}: no gradient reaches {size}px images"
        assert torch.isfinite(x.grad).all(), f"{name}: non-finite image gradient at {size}px"
        assert x.grad.abs().sum() > 0, f"{name}: zero image gradient at {size}px"
    assert all(p.grad is None for p in reward.parameters()), f"{name}: parameters received gradients"

    # A non-square or odd-sized input is resized too.
    odd = nn.functional.interpolate(images, size=(40, 48), mode="nearest")
    assert reward(odd, prompts).shape == (B,)

    # Wrong number of prompts, or a non-image input.
    if reward.uses_prompt:
        for bad in (prompts[:-1], prompts + prompts[:1], [], None):
            with pytest.raises(ValueError, match="prompt"):
                reward(images, bad)
    else:
        assert torch.equal(reward(images, None), out), f"{name}: prompt-free reward depends on prompts"
        assert torch.equal(reward(images, ["something else"] * B), out)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(images[:, :1], prompts)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        reward(images[0], prompts[:3])  # (3, 32, 32): three "images" of the wrong rank

    # Stays in eval mode when asked to train, also as a submodule of a training model.
    reward.train()
    assert not reward.training and not any(m.training for m in reward.modules()), f"{name}: .train() worked"
    parent = nn.ModuleDict({"reward": reward, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not any(m.training for m in reward.modules()), f"{name}: trained through its parent"
    assert torch.equal(reward(images, prompts), out), f"{name}: output changed after .train()"
