"""The out-of-template evaluation split `acc_paraphrase` (world v2).

Prompts for ordinary specs, worded the way no network of the world trains on: other sentence
shapes and reordered clauses, with each attribute word replaced by a synonym ("crimson",
"disc", "plus sign") half of the time (all synonyms, measured, left even the exact-caption
teacher at 0.10: a split everyone fails measures nothing). The rewards,
inspector and exact-caption teacher learn from the prompt grammar (world/prompts.py), the
web-caption teacher from world/captions.py; neither uses a word of `SYNONYMS` below or these
sentence shapes, so the split measures how far a model's prompt-following carries beyond its
training wording.

The split is built once by `build_paraphrase_split()` and frozen in
`assets/paraphrase_prompts.json`: evaluation reads the file, so later changes to this module
cannot silently change the numbers (a test checks the file against its own checksum).
"""

from __future__ import annotations

import torch

from .scene import BACKGROUNDS, COLOURS, LEVELS, SHAPES, SIZES, Specs, sample_specs

SPLIT_FILE = "paraphrase_prompts.json"
SPLIT_SEED = 777

SYNONYMS = {
    "shape": {"circle": "disc", "square": "tile", "triangle": "wedge", "diamond": "lozenge", "cross": "plus sign"},
    "colour": {"red": "crimson", "orange": "tangerine", "yellow": "lemon", "green": "emerald",
               "cyan": "turquoise", "blue": "cobalt", "purple": "violet", "pink": "rose"},
    "size": {"small": "tiny", "large": "big"},
    "slot": ("by the left edge", "dead centre", "by the right edge"),
    "background": {"black": "dark", "grey": "gray", "white": "pale"},
}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


_PLAIN_SLOT = ("on the left", "in the center", "on the right")


def _obj(o: list[int], swap: list[bool]) -> dict[str, str]:
    """Attribute words of one object; `swap[i]` puts the synonym for shape, colour, size, slot."""
    def word(kind: str, plain: str) -> str:
        return SYNONYMS[kind][plain] if swap[("shape", "colour", "size").index(kind)] else plain

    return {"shape": word("shape", SHAPES[o[0]]),
            "colour": word("colour", COLOURS[o[1]]) if o[1] >= 0 else "",
            "size": word("size", SIZES[o[2]]) if o[2] >= 0 else "",
            "slot": (SYNONYMS["slot"] if swap[3] else _PLAIN_SLOT)[o[3]] if o[3] >= 0 else ""}


def paraphrase_one(obj: list[list[int]], n: int, bg: int, level: int, form: int, swap: list[bool]) -> str:
    """One spec in an out-of-template wording; `form` picks the sentence shape (mod 2), `swap`
    (5 flags: shape, colour, size, slot, background) which words are synonyms."""
    form %= 2
    if level < 4:
        w = _obj(obj[0], swap)
        if level == 1:
            return (f"just one {w['shape']}", f"there is {_a(w['shape'])} here")[form]
        if level == 2:
            return (f"{_a(w['shape'])} in {w['colour']}", f"{w['colour']} is the colour of this {w['shape']}")[form]
        return (f"{w['slot']}: {_a(w['shape'])}, {w['size']} and {w['colour']}",
                f"{_a(w['size'])} {w['shape']}, coloured {w['colour']}, placed {w['slot']}")[form]
    objs = [_obj(obj[i], swap) for i in range(n)]
    phrases = [f"{_a(o['size'])} {o['colour']} {o['shape']}" for o in objs]
    back = SYNONYMS["background"][BACKGROUNDS[bg]] if swap[4] else BACKGROUNDS[bg]
    if form == 0:  # backdrop first, objects named from the right
        return f"{back} backdrop; " + ", left of it ".join(reversed(phrases))
    return "first " + ", then ".join(phrases) + f", rightwards, over a {back} backdrop"


def build_paraphrase_split(per_level: int = 50) -> dict:
    """The split as written to the frozen file: specs (plain lists), prompts, levels."""
    g = torch.Generator().manual_seed(SPLIT_SEED)
    specs = Specs.cat([sample_specs(per_level, lv, g) for lv in LEVELS])
    forms = torch.randint(0, 2, (len(specs),), generator=g).tolist()
    swaps = (torch.rand(len(specs), 5, generator=g) < 0.5).tolist()
    obj, n, bg, lv = specs.obj.tolist(), specs.n.tolist(), specs.bg.tolist(), specs.level.tolist()
    prompts = [paraphrase_one(obj[i], n[i], bg[i], lv[i], forms[i], swaps[i]) for i in range(len(specs))]
    return {"seed": SPLIT_SEED, "obj": obj, "n": n, "bg": bg, "level": lv, "prompts": prompts}


def specs_of_split(data: dict) -> Specs:
    return Specs(torch.tensor(data["obj"]), torch.tensor(data["n"]), torch.tensor(data["bg"]),
                 torch.tensor(data["level"]))
