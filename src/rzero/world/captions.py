"""The web captioner: the teacher's training captions, written the way alt-text is (SPEC 6.1).

SD1.5 learned from web alt-text and is weak exactly where reward models are strong (GenEval:
colours 0.76, position 0.04, colour attribution 0.06). The world copies that split: the
rewards and evaluators learn from exact, full descriptions (curated data), while the teacher
learns from captions that

- always name every object's shape (sometimes by a synonym),
- name colour, size, position (single objects) and background only some of the time,
- list several objects in random order and never state a relation ("left of"),
- sometimes put the colours apart from the shapes ("a circle and a square, red and blue"),
  so which colour goes with which shape is not said,
- get a small share of the colours they name wrong,
- and vary the sentence around all that (frames, joiners, counts).

Every draw comes from the `torch.Generator` passed in, so a seeded pool is reproducible. The
rates are `CaptionerConfig` fields; docs/decisions.md records the values and the teacher
they produce. None of the words here is one of the `acc_paraphrase` split's (world/paraphrase.py),
which no network trains on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config.schema import CaptionerConfig
from .data import encode_texts
from .scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scenes, complete_specs, sample_training_specs

# Alt-text words for each shape: the plain name most of the time.
_SHAPE_WORDS = {
    "circle": ("circle", "circle", "circle", "round shape"),
    "square": ("square", "square", "square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "diamond", "rhombus"),
    "cross": ("cross", "cross", "cross shape"),
}
_POSITION_WORDS = (("on the left", "at the left", "left side"),
                   ("in the center", "in the middle", "centered"),
                   ("on the right", "at the right", "right side"))
_NUMBERS = ("one", "two", "three")
_FRAMES = (("", ""), ("", ""), ("a picture of ", ""), ("image of ", ""), ("photo: ", ""),
           ("clip art of ", ""), ("", " - stock illustration"), ("", " icon"), ("simple graphic: ", ""))
_JOINERS = (" and ", ", ", " with ", " and ")


def _pick(options, g: torch.Generator):
    return options[int(torch.randint(0, len(options), (1,), generator=g))]


def _chance(p: float, g: torch.Generator) -> bool:
    return bool(torch.rand(1, generator=g) < p)


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption_one(slots: list[list[int]], bg: int, cfg: CaptionerConfig, g: torch.Generator) -> str:
    """Alt-text of one scene (`slots`: per slot [shape, colour, size] or -1s; `bg`: index)."""
    objects = [(slot, o) for slot, o in enumerate(slots) if o[0] >= 0]
    order = torch.randperm(len(objects), generator=g).tolist()  # listing order says nothing
    objects = [objects[i] for i in order]
    unbound = len(objects) > 1 and _chance(cfg.p_unbound, g)
    nouns, loose_colours = [], []
    for slot, (shape, colour, size) in objects:
        words = [_pick(_SHAPE_WORDS[SHAPES[shape]], g)]
        if _chance(cfg.p_colour, g):
            if _chance(cfg.p_colour_wrong, g):
                colour = (colour + 1 + int(torch.randint(0, len(COLOURS) - 1, (1,), generator=g))) % len(COLOURS)
            if unbound:
                loose_colours.append(COLOURS[colour])
            else:
                words.insert(0, COLOURS[colour])
        if _chance(cfg.p_size, g):
            words.insert(0, SIZES[size])
        phrase = " ".join(words)
        if len(objects) == 1 and _chance(cfg.p_position, g):
            phrase += " " + _pick(_POSITION_WORDS[slot], g)
        nouns.append(phrase)
    if len(nouns) == 1:
        body = _article(nouns[0])
    else:
        joiner = _pick(_JOINERS, g)
        body = joiner.join(_article(n) for n in nouns[:-1]) + (" and " if joiner == ", " else joiner) + _article(nouns[-1])
        if _chance(cfg.p_count, g):
            body = f"{_NUMBERS[len(nouns) - 1]} shapes: " + body
    if loose_colours:
        # Shuffled, so their order does not bind them to the shapes either.
        loose = list(dict.fromkeys(loose_colours[i] for i in torch.randperm(len(loose_colours), generator=g).tolist()))
        body += ", " + " and ".join(loose)
    if _chance(cfg.p_background, g):
        body += _pick((f" on {BACKGROUNDS[bg]}", f", {BACKGROUNDS[bg]} background",
                       f" on a {BACKGROUNDS[bg]} background"), g)
    before, after = _pick(_FRAMES, g)
    return before + body + after


def web_captions(scenes: Scenes, cfg: CaptionerConfig, g: torch.Generator) -> list[str]:
    """Alt-text for a batch of scenes, one draw of the captioner each."""
    slots, bg = scenes.slots.tolist(), scenes.bg.tolist()
    return [caption_one(slots[i], bg[i], cfg, g) for i in range(len(scenes))]


@dataclass
class CaptionPool:
    """Scenes with their web captions and frozen token states: the web-caption teacher's data.

    Each training step re-renders pool scenes (new jitter, same objects) under their captions,
    as the exact-caption teacher re-completes pool specs. States are fp16 to halve memory.
    """

    scenes: Scenes
    captions: list[str]
    states: torch.Tensor  # (size, 32, 384) float16
    mask: torch.Tensor  # (size, 32) bool
    empty_states: torch.Tensor  # (32, 384) float32, the "" prompt for caption dropout
    empty_mask: torch.Tensor  # (32,) bool

    @property
    def size(self) -> int:
        return len(self.captions)

    @staticmethod
    def build(cfg: CaptionerConfig, seed: int, encoder, progress=None) -> "CaptionPool":
        g = torch.Generator().manual_seed(seed)
        scenes = complete_specs(sample_training_specs(cfg.pool_size, g), g)
        captions = web_captions(scenes, cfg, g)
        return CaptionPool(scenes, captions, *encode_texts(encoder, captions, progress))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"slots": self.scenes.slots, "bg": self.scenes.bg, "states": self.states, "mask": self.mask,
                "empty_states": self.empty_states, "empty_mask": self.empty_mask}

    @staticmethod
    def from_tensors(t: dict[str, torch.Tensor], captions: list[str]) -> "CaptionPool":
        return CaptionPool(Scenes(t["slots"], t["bg"]), captions, t["states"], t["mask"], t["empty_states"],
                           t["empty_mask"])

    def text(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.states[idx].float(), self.mask[idx]
