"""The reward contract (SPEC 1.2), checked on every registered reward and on a user-written one.

`check_reward_contract` is the single definition of the contract: a frozen, differentiable
module `forward(images, prompts) -> Tensor[B]` that resizes its own input, never trains
and lets gradients reach the images.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rzero.rewards import REWARDS, Reward, make_reward
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


@pytest.fixture(scope="module", params=sorted(REWARDS))
def world_reward(request, world_assets) -> Reward:
    return make_reward(request.param, asset_dir=world_assets)


def test_registered_reward_contract(world_reward):
    assert world_reward.name in REWARDS
    assert isinstance(world_reward, REWARDS[world_reward.name])
    check_reward_contract(world_reward)


def test_registered_reward_loads_from_str_path(world_assets):
    a = make_reward("world-quality", asset_dir=str(world_assets))
    b = make_reward("world-quality", asset_dir=world_assets)
    images, _ = world_batch()
    assert torch.equal(a(images), b(images))


def test_make_reward_unknown_name():
    with pytest.raises(ValueError, match="unknown reward 'nope'; choose from"):
        make_reward("nope")


def test_world_judge_is_a_probability(world_assets):
    images, prompts = world_batch(seed=3)
    r = make_reward("world-judge", asset_dir=world_assets)(images, prompts)
    assert ((r >= 0) & (r <= 1)).all()


def test_world_clip_is_a_cosine(world_assets):
    images, prompts = world_batch(seed=4)
    r = make_reward("world-clip", asset_dir=world_assets)(images, prompts)
    assert (r.abs() <= 1 + 1e-5).all()


# ------------------------------------------------------------------ a user-written reward


class BrightnessReward(Reward):
    """Mean luma: the smallest useful reward a user could write (prompt-free)."""

    name = "brightness"
    uses_prompt = False

    def __init__(self):
        super().__init__()
        self.luma = nn.Parameter(torch.tensor([0.299, 0.587, 0.114]))
        self.freeze()

    def score(self, images, prompts):
        return torch.einsum("bchw,c->b", images, self.luma) / (images.shape[-1] * images.shape[-2])


class PromptLengthBrightnessReward(BrightnessReward):
    """The same, but prompt-conditioned: brighter is better for longer prompts."""

    name = "prompt-brightness"
    uses_prompt = True

    def score(self, images, prompts):
        weight = torch.tensor([math.log1p(len(p)) for p in prompts], device=images.device)
        return weight * super().score(images, prompts)


@pytest.mark.parametrize("cls", [BrightnessReward, PromptLengthBrightnessReward])
def test_user_reward_contract(cls):
    check_reward_contract(cls())


def test_contract_catches_a_broken_reward():
    """The contract helper is not vacuous: a reward with trainable weights fails it."""

    class Trainable(BrightnessReward):
        def __init__(self):
            super().__init__()
            self.luma.requires_grad_(True)

    with pytest.raises(AssertionError, match="require grad"):
        check_reward_contract(Trainable())


def test_rewards_clamp_to_their_input_range(world_assets):
    """Over-range pixels score like their clamped values and get no gradient (no reward for them)."""
    from rzero.rewards import make_reward

    r = make_reward("world-quality", asset_dir=world_assets)
    x = (torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2).requires_grad_(True)
    torch.testing.assert_close(r(x), r(x.detach().clamp(-1, 1)))
    r(x).sum().backward()
    assert (x.grad[x.detach().abs() > 1] == 0).all()
