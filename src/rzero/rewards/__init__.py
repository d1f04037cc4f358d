"""Reward models and their registry (plain dict, STYLE principle 4)."""

from .base import Reward
from .world import WorldClipReward, WorldJudgeReward, WorldQualityReward

REWARDS: dict[str, type[Reward]] = {
    "world-clip": WorldClipReward,
    "world-judge": WorldJudgeReward,
    "world-quality": WorldQualityReward,
}


def make_reward(name: str, **kwargs) -> Reward:
    if name not in REWARDS:
        raise ValueError(f"unknown reward '{name}'; choose from {', '.join(sorted(REWARDS))}")
    return REWARDS[name](**kwargs)


__all__ = ["REWARDS", "Reward", "WorldClipReward", "WorldJudgeReward", "WorldQualityReward", "make_reward"]
