"""Reading scenes back from images with the held-out inspector, and its training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .scene import Scenes


def inspector_loss(logits: dict[str, torch.Tensor], scenes: Scenes) -> torch.Tensor:
    """Presence BCE per slot, attribute cross-entropies on occupied slots, background CE."""
    present = scenes.present
    loss = F.binary_cross_entropy_with_logits(logits["presence"], present.float())
    for col, name in enumerate(("shape", "colour", "size")):
        target = scenes.slots[:, :, col]
        loss = loss + F.cross_entropy(logits[name][present], target[present])
    return loss + F.cross_entropy(logits["background"], scenes.bg)


def decode_scenes(logits: dict[str, torch.Tensor]) -> Scenes:
    """Argmax reading of the logit dict as a batch of scenes."""
    present = logits["presence"] > 0
    attrs = torch.stack([logits[k].argmax(-1) for k in ("shape", "colour", "size")], -1)  # (B, 3, 3)
    slots = torch.where(present[..., None], attrs, torch.full_like(attrs, -1))
    return Scenes(slots.cpu(), logits["background"].argmax(-1).cpu())


@torch.no_grad()
def read_scenes(inspector: torch.nn.Module, images: torch.Tensor, batch_size: int = 512) -> Scenes:
    """What the inspector sees in (N, 3, 32, 32) images in [-1, 1]."""
    was_training = inspector.training
    inspector.eval()
    parts = [decode_scenes(inspector(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    inspector.train(was_training)
    return Scenes.cat(parts)

