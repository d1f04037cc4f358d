"""The reward contract (SPEC 1.2, defined once in reward_contract.py), checked on every world reward
and on a user-written one."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rzero.rewards import REWARDS, Reward, make_reward

from reward_contract import check_reward_contract, world_batch


# The world's rewards; the real-scale ones run the same contract in test_scale_rewards.py on tiny models.
@pytest.fixture(scope="module", params=sorted(n for n in REWARDS if n.startswith("world-")))
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
