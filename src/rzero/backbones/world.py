"""The built-in world's backbone: the shipped teacher UNet on pixel-unshuffled 32x32 images.

Latents are the exact 2x2 pixel-unshuffle of the image, (B, 12, 16, 16), so `decode` is a
pixel-shuffle (differentiable, no VAE error). Prompts are MiniLM token states (B, 32, 384).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from ..diffusion import VPSchedule
from .base import BackboneBase


class WorldBackbone(BackboneBase):
    """eps-prediction UNet2DConditionModel, SD1.5's scaled-linear 1000-step schedule."""

    prediction_type = "epsilon"
    latent_shape = (12, 16, 16)

    def __init__(self, unet: torch.nn.Module | None = None, asset_dir: str | Path | None = None,
                 teacher: str = "teacher"):
        super().__init__()
        from ..world.assets import load_state
        from ..world.loaders import build_network
        from ..world.text import shared_text_encoder

        # A private copy: trainers modify these weights, the cached evaluator copies stay intact.
        # `teacher` names the base model's asset ("teacher", or the web-caption "teacher_web").
        self.unet = unet if unet is not None else load_state(build_network(teacher), teacher,
                                                             Path(asset_dir) if asset_dir else None)
        self.text_encoder = shared_text_encoder()
        self.schedule = VPSchedule()

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        device = next(self.unet.parameters()).device
        states, _ = self.text_encoder.encode(list(prompts), device=device)
        return states  # (B, 32, 384); padding states kept, as in training

    def cat_conds(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b])

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x_t, t, encoder_hidden_states=cond).sample

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(latents, 2)  # not clamped: rewards need gradients everywhere

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(images, 2)

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        return self.unet.parameters()
