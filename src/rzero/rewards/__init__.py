"""Reward models and their registry (plain dict, STYLE principle 4)."""

from .aesthetic import AestheticReward
from .base import Reward
from .clip_score import ClipScoreReward
from .hps import HPSReward, HPSv21Reward
from .imagereward import ImageRewardReward
from .pickscore import PickScoreReward
from .world import WorldClipCoarseReward, WorldClipReward, WorldJudgeReward, WorldQualityReward

REWARDS: dict[str, type[Reward]] = {
    "world-clip": WorldClipReward,
    "world-clip-coarse": WorldClipCoarseReward,
    "world-judge": WorldJudgeReward,
    "world-quality": WorldQualityReward,
    # Real-scale rewards (docs/rewards.md): weights from a local path or a hub id, loaded lazily.
    "hps-v2": HPSReward,
    "hps-v2.1": HPSv21Reward,
    "imagereward": ImageRewardReward,
    "pickscore": PickScoreReward,
    "clip-score": ClipScoreReward,
    "aesthetic": AestheticReward,
}


def make_reward(name: str, **kwargs) -> Reward:
    if name not in REWARDS:
        raise ValueError(f"unknown reward '{name}'; choose from {', '.join(sorted(REWARDS))}")
    return REWARDS[name](**kwargs)


__all__ = ["REWARDS", "AestheticReward", "ClipScoreReward", "HPSReward", "HPSv21Reward", "ImageRewardReward",
           "PickScoreReward", "Reward", "WorldClipCoarseReward", "WorldClipReward", "WorldJudgeReward",
           "WorldQualityReward", "make_reward"]
