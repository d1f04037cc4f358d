"""Training data of the built-in world: rendered batches and a pre-encoded prompt pool.

Rendering is cheap (~10k images/s) so images are drawn fresh every step; encoding prompts
is not (~3 ms each on 2 cores), so the prompt texts of a fixed pool of specs are encoded
once. Every step draws from the pool and renders a *new* scene that satisfies the chosen
spec, so unconstrained attributes and jitter still vary from step to step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .prompts import describe, random_templates
from .render import render
from .scene import (BACKGROUNDS, COLOURS, N_SLOTS, SHAPES, SIZES, Scenes, Specs, complete_specs,
                    sample_training_specs)
from ..utils.seeding import derived_generator as step_generator  # noqa: F401 (re-export)
from .text import WorldTextEncoder


def render_batch(n: int, g: torch.Generator, size: int = 32) -> tuple[Scenes, Specs, torch.Tensor]:
    """Mixed-level training specs, a scene satisfying each, and its render."""
    specs = sample_training_specs(n, g)
    scenes = complete_specs(specs, g)
    return scenes, specs, render(scenes, g, size=size)


def perturb_specs(specs: Specs, g: torch.Generator) -> Specs:
    """Change one thing each spec asks for: an attribute, the background, the order or the count.

    Used to make near-miss prompts for the judge, so it learns to score each attribute
    rather than the overall gist. Swapping two identical objects leaves a spec unchanged
    (about 1 in 2,000 training specs); that is harmless because the judge's target is
    computed from the spec actually shown (`match`), so such a pair is simply a positive.
    """
    obj, n, bg = specs.obj.clone(), specs.n.clone(), specs.bg.clone()
    sizes = {0: len(SHAPES), 1: len(COLOURS), 2: len(SIZES), 3: N_SLOTS}
    for i in range(len(specs)):
        k = int(n[i])
        ops = [c for c in range(4) if obj[i, 0, c] >= 0]
        if bg[i] >= 0:
            ops += ["bg", "swap", "count"]
        op = ops[int(torch.randint(0, len(ops), (1,), generator=g))]
        if op == "bg":
            bg[i] = (bg[i] + 1 + torch.randint(0, len(BACKGROUNDS) - 1, (1,), generator=g)) % len(BACKGROUNDS)
        elif op == "swap":
            a, b = torch.randperm(k, generator=g)[:2].tolist()
            obj[i, [a, b]] = obj[i, [b, a]]
        elif op == "count":
            if k == 3:
                drop = int(torch.randint(0, 3, (1,), generator=g))
                keep = [j for j in range(3) if j != drop]
                obj[i, :2] = obj[i, keep].clone()
                obj[i, 2] = -1
                n[i] = 2
            else:
                obj[i, 2] = torch.stack([torch.randint(0, sizes[c], (1,), generator=g)[0] for c in range(3)] +
                                        [torch.tensor(-1)])
                n[i] = 3
        else:
            j = int(torch.randint(0, k, (1,), generator=g))
            obj[i, j, op] = (obj[i, j, op] + 1 + torch.randint(0, sizes[op] - 1, (1,), generator=g)) % sizes[op]
    return Specs(obj, n, bg, specs.level.clone())


def encode_texts(encoder: WorldTextEncoder, texts: list[str], progress=None):
    """Token states of `texts` in chunks (fp16) and of the empty prompt: (states, mask, empty_states, empty_mask)."""
    states, masks = [], []
    for start in range(0, len(texts), 512):
        s, m = encoder.encode(texts[start:start + 512])
        states.append(s.half())
        masks.append(m)
        if progress is not None:
            progress(min(start + 512, len(texts)), len(texts))
    empty_s, empty_m = encoder.encode([""])
    return torch.cat(states), torch.cat(masks), empty_s[0], empty_m[0]


@dataclass
class PromptPool:
    """Specs with their prompt texts and frozen token states (fp16 to halve memory).

    Entry i < size is a training spec; entry size + i is a one-change perturbation of it.
    """

    specs: Specs
    prompts: list[str]
    states: torch.Tensor  # (2 * size, 32, 384) float16
    mask: torch.Tensor  # (2 * size, 32) bool
    empty_states: torch.Tensor  # (32, 384) float32, the "" prompt for caption dropout
    empty_mask: torch.Tensor  # (32,) bool

    @property
    def size(self) -> int:
        return len(self.prompts) // 2

    @staticmethod
    def build(size: int, seed: int, encoder: WorldTextEncoder, progress=None) -> "PromptPool":
        g = torch.Generator().manual_seed(seed)
        base = sample_training_specs(size, g)
        specs = Specs.cat([base, perturb_specs(base, g)])
        prompts = describe(specs, random_templates(len(specs), g))
        return PromptPool(specs, prompts, *encode_texts(encoder, prompts, progress))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"obj": self.specs.obj, "n": self.specs.n, "bg": self.specs.bg, "level": self.specs.level,
                "states": self.states, "mask": self.mask, "empty_states": self.empty_states,
                "empty_mask": self.empty_mask}

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor], prompts: list[str]) -> "PromptPool":
        return PromptPool(Specs(t["obj"], t["n"], t["bg"], t["level"]), prompts, t["states"], t["mask"],
                          t["empty_states"], t["empty_mask"])

    def text(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states[idx].float(), self.mask[idx]
