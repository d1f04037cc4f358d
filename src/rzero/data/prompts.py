"""Training prompt sources: R0 trains from prompts alone, no images.

The world draws prompts from its grammar. Real-scale backbones (sd15, sd3) read a UTF-8
prompt file, one prompt per line (e.g. the HPS v2 training prompts, or your own), and draw
uniformly from it with the iteration's generator, so a resumed run sees the same prompts.
Sample grids use fixed prompts: the world's grid prompts, or the file's first lines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

PromptSource = Callable[[int, torch.Generator], list[str]]

GRID_PROMPTS = 4  # fixed prompts of a real-scale sample grid (each at GRID_SEEDS seeds)
GRID_SEEDS = 2


def world_prompts(n: int, g: torch.Generator) -> list[str]:
    """Mixed-level prompts of the world grammar, never using held-out colour/shape pairs."""
    from ..world.prompts import describe, random_templates
    from ..world.scene import sample_training_specs

    specs = sample_training_specs(n, g)
    return describe(specs, random_templates(n, g))


def read_prompts(path: str | Path, label: str = "prompt_file") -> list[str]:
    """Non-empty, stripped lines of a UTF-8 prompt file; one-line errors for the ways this fails
    (`label` names the option in them). Used by training (prompt_file) and the CLI (--prompt-file)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ValueError(f"{label} '{path}' is a folder; give a text file with one prompt per line")
    if not p.exists():
        raise ValueError(f"{label} '{path}' not found; give a UTF-8 text file with one prompt per line")
    if not p.is_file():  # a device (/dev/zero) or a pipe: could be endless
        raise ValueError(f"{label} '{path}' is not a regular file; give a text file")
    if p.stat().st_size > 50_000_000:
        raise ValueError(f"{label} '{path}' is larger than 50 MB; split it")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{label} '{path}' is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from e
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"{label} '{path}' has no prompts; write one prompt per line")
    return prompts


class FilePrompts:
    """Uniform draws (with replacement) from a fixed prompt list: `source(n, g) -> n prompts`."""

    def __init__(self, prompts: list[str]):
        if not prompts:
            raise ValueError("FilePrompts needs at least one prompt")
        self.prompts = list(prompts)

    def __call__(self, n: int, g: torch.Generator) -> list[str]:
        idx = torch.randint(0, len(self.prompts), (n,), generator=g)
        return [self.prompts[i] for i in idx.tolist()]


def prompt_source(backbone: str, prompt_file: str = "") -> PromptSource:
    """The world's grammar, or draws from `prompt_file` (required for every other backbone)."""
    if prompt_file:
        return FilePrompts(read_prompts(prompt_file))
    if backbone == "world":
        return world_prompts
    raise ValueError(f"backbone '{backbone}' has no built-in prompts; set prompt_file to a text file with one "
                     "training prompt per line")


def grid_prompts(backbone: str, prompt_file: str = "") -> tuple[list[str], int]:
    """(prompts, seeds per prompt) of the fixed sample grid shown during training."""
    if backbone == "world" and not prompt_file:
        from ..world.prompts import fixed_prompts

        return fixed_prompts()[0], 4
    return read_prompts(prompt_file)[:GRID_PROMPTS], GRID_SEEDS


TRACK_SEED = 4321  # the tracking subset and its noise: fixed, so curves of different runs compare


def tracking_subset(path: str | Path, size: int) -> list[str]:
    """A fixed, seeded subset of `size` prompts of a prompt file, in file order (SPEC 4: the
    subset used for training curves); the whole file when it is smaller."""
    prompts = read_prompts(path, "track_prompt_file")
    if size >= len(prompts):
        return prompts
    keep = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(TRACK_SEED))[:size]
    return [prompts[i] for i in sorted(keep.tolist())]
