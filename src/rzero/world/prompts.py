"""Prompt grammar of the built-in world: 4 specificity levels, several paraphrases each.

L1 "a circle"; L2 "a red circle"; L3 "a small red circle on the left";
L4 "a small red circle left of a large blue square on a grey background" (2-3 objects,
left-to-right relations, background). Which paraphrase is used is chosen by an index, so a
seeded generator fixes the text.
"""

from __future__ import annotations

import torch

from .scene import BACKGROUNDS, COLOURS, LEVELS, SHAPES, SIZES, Specs, sample_specs

_POSITION = ("on the left", "in the center", "on the right")
_POSITION_ALT = ("at the left", "in the middle", "at the right")


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


L1_TEMPLATES = ("{a_shape}", "a picture of {a_shape}", "one {shape}", "an image showing {a_shape}")
L2_TEMPLATES = ("{a_colour} {shape}", "a picture of {a_colour} {shape}", "{a_shape} that is {colour}",
                "one {colour} {shape}")
L3_TEMPLATES = ("{a_size} {colour} {shape} {pos}", "{pos_cap}, {a_size} {colour} {shape}",
                "{a_colour} {shape}, {size}, {pos2}", "a picture of {a_size} {colour} {shape} {pos}")
L4_TEMPLATES = ("left_of", "right_of", "bg_first", "sequence")

N_TEMPLATES = {1: len(L1_TEMPLATES), 2: len(L2_TEMPLATES), 3: len(L3_TEMPLATES), 4: len(L4_TEMPLATES)}


def _object_phrase(o: list[int]) -> str:
    return f"{SIZES[o[2]]} {COLOURS[o[1]]} {SHAPES[o[0]]}"


def describe_one(obj: list[list[int]], n: int, bg: int, level: int, template: int) -> str:
    """Text of one spec (plain lists, as in `Specs`) with paraphrase number `template`."""
    template %= N_TEMPLATES[level]
    if level < 4:
        o = obj[0]
        shape = SHAPES[o[0]]
        fields = {"shape": shape, "a_shape": _a(shape)}
        if level >= 2:
            colour = COLOURS[o[1]]
            fields.update(colour=colour, a_colour=_a(colour))
        if level == 1:
            return L1_TEMPLATES[template].format(**fields)
        if level == 2:
            return L2_TEMPLATES[template].format(**fields)
        size = SIZES[o[2]]
        fields.update(size=size, a_size=_a(size), pos=_POSITION[o[3]], pos2=_POSITION_ALT[o[3]],
                      pos_cap=_POSITION[o[3]].capitalize())
        return L3_TEMPLATES[template].format(**fields)
    objs = [_a(_object_phrase(obj[i])) for i in range(n)]
    back = f"on {_a(BACKGROUNDS[bg])} background"
    kind = L4_TEMPLATES[template]
    if kind == "left_of":
        return " left of ".join(objs) + " " + back
    if kind == "right_of":
        return " right of ".join(reversed(objs)) + " " + back
    if kind == "bg_first":
        return back.capitalize() + ", " + " to the left of ".join(objs)
    # "sequence"
    body = objs[0] + (", " + objs[1] + " and " + objs[2] if n == 3 else " and " + objs[1])
    return "from left to right: " + body + ", " + back


def describe(specs: Specs, templates: torch.Tensor) -> list[str]:
    """Texts of a batch of specs; `templates` (N,) picks the paraphrase of each."""
    obj, n, bg, lv = specs.obj.tolist(), specs.n.tolist(), specs.bg.tolist(), specs.level.tolist()
    return [describe_one(obj[i], n[i], bg[i], lv[i], int(templates[i])) for i in range(len(specs))]


def random_templates(n: int, g: torch.Generator) -> torch.Tensor:
    """Paraphrase indices; taken modulo each level's template count in `describe_one`."""
    return torch.randint(0, 1 << 16, (n,), generator=g)


GRID_SEED = 2024


def fixed_prompts(per_level: int = 2, levels: tuple[int, ...] = LEVELS) -> tuple[list[str], Specs]:
    """The fixed grid prompts of the demo and the trainers' sample grids: `per_level` per level."""
    g = torch.Generator().manual_seed(GRID_SEED)
    prompts, picked = [], []
    for lv in levels:
        # Draw a pool and keep the first distinct prompts: L1 has few combinations, and a grid
        # showing "a triangle" twice wastes a row.
        pool = sample_specs(16 * per_level, lv, g)
        first: dict[str, int] = {}
        for i, t in enumerate(describe(pool, torch.zeros(len(pool), dtype=torch.long))):
            first.setdefault(t, i)
        if len(first) < per_level:
            raise ValueError(f"level {lv} has fewer than {per_level} distinct grid prompts")
        keep = dict(list(first.items())[:per_level])
        prompts += keep
        picked.append(pool.index(torch.tensor(list(keep.values()))))
    return prompts, Specs.cat(picked)
