"""Rewards of the built-in world, trained by `rzero world build` (SPEC section 6).

world-clip    cosine of contrastive image/text embeddings       (CLIP-score analogue)
world-clip-coarse  the same on 4x4-pixel cell means: blind to texture, sees where colour is
world-judge   predicted fraction of the prompt's attributes met (ImageReward/HPS analogue)
world-quality logit of "clean render", prompt-free              (aesthetic analogue)
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Reward


class _WorldReward(Reward):
    asset: str = ""

    def __init__(self, asset_dir: str | Path | None = None):
        super().__init__()
        from ..world.assets import load_state
        from ..world.loaders import build_network

        self.net = load_state(build_network(self.asset), self.asset, Path(asset_dir) if asset_dir else None)
        if self.uses_prompt:
            from ..world.text import shared_text_encoder

            self.text_encoder = shared_text_encoder()
        self.freeze()

    def _text(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text_encoder.encode(prompts, device=device)


class WorldClipReward(_WorldReward):
    name = "world-clip"
    asset = "clip"

    def score(self, images, prompts):
        return self.net(images, *self._text(prompts, images.device))


class WorldClipCoarseReward(WorldClipReward):
    name = "world-clip-coarse"
    asset = "clip_coarse"


class WorldJudgeReward(_WorldReward):
    name = "world-judge"
    asset = "judge"

    def score(self, images, prompts):
        return torch.sigmoid(self.net(images, *self._text(prompts, images.device)))


class WorldQualityReward(_WorldReward):
    name = "world-quality"
    asset = "quality"
    uses_prompt = False

    def score(self, images, prompts):
        return self.net(images)
