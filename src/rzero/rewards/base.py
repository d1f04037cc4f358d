"""The reward contract (SPEC 1.2, STYLE principle 8).

A reward is a frozen, differentiable module `forward(images, prompts) -> Tensor[B]`, higher
is better. `images` are (B, 3, H, W) in [-1, 1] at the generator's output resolution; the
reward does its own differentiable resize and normalization. Its parameters never require
gradients, but gradients flow through it to the images. Heavy imports happen lazily in the
constructor with a one-line error naming what to install.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Reward(torch.nn.Module):
    """Base class; subclasses set `name`, `uses_prompt` and implement `score`."""

    name: str = "reward"
    input_range = (-1.0, 1.0)
    uses_prompt: bool = True
    resolution: int = 32  # the size `prepare` resizes images to

    def freeze(self) -> "Reward":
        self.eval()
        self.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Reward":
        # Rewards stay in eval mode even inside a model put into training mode.
        return super().train(False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Clamp to the declared range, then differentiable resize (antialiased when shrinking).

        The clamp is what a decoded image goes through before it is shown; without it a
        generator is rewarded for pixel values no real image has (measured: washed-out,
        over-range samples after 300 R0 iterations on the world).
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (B, 3, H, W), got {tuple(images.shape)}")
        images = images.clamp(*self.input_range)
        if images.shape[-1] != self.resolution or images.shape[-2] != self.resolution:
            images = F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear",
                                   antialias=images.shape[-1] > self.resolution, align_corners=False)
        return images

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        if self.uses_prompt and (prompts is None or len(prompts) != images.shape[0]):
            raise ValueError(f"{self.name}: needs one prompt per image, got "
                             f"{None if prompts is None else len(prompts)} for {images.shape[0]} images")
        return self.score(self.prepare(images), list(prompts) if prompts is not None else [])
