"""Deterministic seeding that does not depend on batch size, rank count or device."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import torch

__all__ = ["derived_generator", "image_generators", "image_seed", "make_generator", "per_image_draws",
           "randn_per_image"]

_MASK63 = (1 << 63) - 1


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def image_seed(base_seed: int, index: int) -> int:
    """Stable 63-bit seed for image ``index`` of a run seeded with ``base_seed``.

    Uses SHA-256 rather than ``hash()``, which is salted per process for str and
    differs across Python versions, so seeds agree across runs and machines.
    """
    digest = hashlib.sha256(f"rzero-image:{int(base_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & _MASK63


def image_generators(
    base_seed: int, indices: Iterable[int], device: str | torch.device = "cpu"
) -> list[torch.Generator]:
    """One generator per image index, each seeded with :func:`image_seed`."""
    return [make_generator(image_seed(base_seed, i), device) for i in indices]


def randn_per_image(
    shape_per_image: Sequence[int],
    base_seed: int,
    indices: Sequence[int],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise of shape ``(len(indices), *shape_per_image)``.

    Row ``k`` depends only on ``(base_seed, indices[k])``, so an image gets the same
    noise whatever batch it lands in. Draws happen on CPU in float32 and are then
    moved/cast, so the values are also identical across devices and dtypes.
    """
    shape = tuple(int(s) for s in shape_per_image)
    gens = image_generators(base_seed, indices, "cpu")
    if not gens:
        return torch.empty((0, *shape), device=device, dtype=dtype)
    draws = [torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]
    return torch.stack(draws).to(device=device, dtype=dtype)


def per_image_draws(
    shape_per_image: Sequence[int], base_seed: int, indices: Iterable[int], device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, list[torch.Generator]]:
    """(start noise, re-noising generators) for images ``indices`` of a sampling run.

    The noise comes from ``base_seed`` and each image's later draws (eta > 0) from its own
    generator seeded with ``base_seed + 1``, so an image depends on (seed, index) only: not on
    the batch it lands in. Every sampler of the project (eval, sample, tracking) uses this.
    """
    indices = list(indices)
    return randn_per_image(shape_per_image, base_seed, indices, device), image_generators(base_seed + 1, indices)


def derived_generator(seed: int, tag: str, step: int) -> torch.Generator:
    """A CPU generator determined by (seed, tag, step) alone.

    Training loops draw each step's data and noise from it, so resuming at step k redraws
    exactly what a straight run drew, with no RNG state to save.
    """
    h = 1469598103934665603  # FNV-1a over the parts
    for part in (seed, step, *tag.encode()):
        h = ((h ^ int(part)) * 1099511628211) % (1 << 63)
    return torch.Generator().manual_seed(h)
