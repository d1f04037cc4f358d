"""Training prompt sources: R0 trains from prompts alone, no images."""

from __future__ import annotations

from typing import Callable

import torch

PromptSource = Callable[[int, torch.Generator], list[str]]


def world_prompts(n: int, g: torch.Generator) -> list[str]:
    """Mixed-level prompts of the world grammar, never using held-out colour/shape pairs."""
    from ..world.prompts import describe, random_templates
    from ..world.scene import sample_training_specs

    specs = sample_training_specs(n, g)
    return describe(specs, random_templates(n, g))


def prompt_source(backbone: str) -> PromptSource:
    if backbone == "world":
        return world_prompts
    raise ValueError(f"no training prompt source for backbone '{backbone}'")
