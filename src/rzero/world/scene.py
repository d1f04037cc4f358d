"""Scenes and prompt specifications of the built-in world (SPEC section 6).

A *scene* is what the renderer draws; a *spec* is what a prompt asks for. Both are batched
integer tensors so that sampling, rendering and checking run vectorised.

Scene (ground truth), batch of N:
    slots: (N, 3, 3) int64, per horizontal slot (left, center, right) the object's
           [shape, colour, size] indices, or -1 in every column when the slot is empty.
    bg:    (N,) background index.

Spec (what a prompt constrains), batch of N:
    obj:   (N, 3, 4) int64, the requested objects in left-to-right order, columns
           [shape, colour, size, slot]; -1 = not constrained; rows >= n are all -1.
    n:     (N,) required number of objects (always constrained).
    bg:    (N,) requested background or -1.
    level: (N,) specificity level 1..4 (L1 "a circle" ... L4 relations + background).

Held-out combinations (HELDOUT_PAIRS) are colour/shape pairs that no training scene ever
contains; prompts that need them form the `heldout` evaluation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
COLOURS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
SIZES = ("small", "large")
SLOTS = ("left", "center", "right")
BACKGROUNDS = ("black", "grey", "white")
LEVELS = (1, 2, 3, 4)

# (colour, shape) pairs never seen in training; each colour and shape used at most twice so
# every attribute value stays well represented on its own.
HELDOUT_PAIRS = (
    ("purple", "triangle"),
    ("yellow", "cross"),
    ("red", "diamond"),
    ("cyan", "circle"),
    ("orange", "square"),
    ("green", "triangle"),
)

N_SLOTS = len(SLOTS)
ATTRS = ("shape", "colour", "size", "slot")


def _heldout_mask() -> torch.Tensor:
    """(n_colours, n_shapes) bool, True where the pair is held out."""
    m = torch.zeros(len(COLOURS), len(SHAPES), dtype=torch.bool)
    for c, s in HELDOUT_PAIRS:
        m[COLOURS.index(c), SHAPES.index(s)] = True
    return m


HELDOUT = _heldout_mask()


@dataclass
class Scenes:
    """A batch of ground-truth scenes (see module docstring for shapes)."""

    slots: torch.Tensor  # (N, 3, 3)
    bg: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return self.bg.shape[0]

    @property
    def present(self) -> torch.Tensor:  # (N, 3) bool
        return self.slots[:, :, 0] >= 0

    @property
    def count(self) -> torch.Tensor:  # (N,)
        return self.present.sum(1)

    def ordered_objects(self) -> torch.Tensor:
        """(N, 3, 4) objects in left-to-right order with their slot index; -1 padded."""
        n = len(self)
        out = torch.full((n, N_SLOTS, 4), -1, dtype=torch.long)
        # A stable sort of "absent" flags moves present slots first and keeps their order.
        order = torch.sort((~self.present).long(), dim=1, stable=True).indices  # (N, 3)
        gathered = torch.gather(self.slots, 1, order[:, :, None].expand(-1, -1, 3))
        valid = torch.gather(self.present, 1, order)
        out[:, :, :3] = torch.where(valid[:, :, None], gathered, torch.full_like(gathered, -1))
        out[:, :, 3] = torch.where(valid, order, torch.full_like(order, -1))
        return out

    def index(self, idx) -> "Scenes":
        return Scenes(self.slots[idx], self.bg[idx])

    @staticmethod
    def cat(items: list["Scenes"]) -> "Scenes":
        return Scenes(torch.cat([s.slots for s in items]), torch.cat([s.bg for s in items]))


@dataclass
class Specs:
    """A batch of prompt specifications (see module docstring for shapes)."""

    obj: torch.Tensor  # (N, 3, 4)
    n: torch.Tensor  # (N,)
    bg: torch.Tensor  # (N,)
    level: torch.Tensor  # (N,)

    def __len__(self) -> int:
        return self.n.shape[0]

    def index(self, idx) -> "Specs":
        return Specs(self.obj[idx], self.n[idx], self.bg[idx], self.level[idx])

    @staticmethod
    def cat(items: list["Specs"]) -> "Specs":
        return Specs(*(torch.cat([getattr(s, f) for s in items]) for f in ("obj", "n", "bg", "level")))


def _randint(high: int, shape, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=g)


def _sample_colour_shape(n: int, g: torch.Generator, heldout: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour/shape pairs drawn uniformly from the allowed pairs (training: not held out)."""
    allowed = HELDOUT if heldout else ~HELDOUT
    pairs = allowed.nonzero()  # (P, 2) [colour, shape]
    pick = pairs[_randint(len(pairs), (n,), g)]
    return pick[:, 0], pick[:, 1]


def sample_specs(n: int, level: int, g: torch.Generator, heldout: bool = False) -> Specs:
    """Draw `n` prompt specs at one specificity level.

    `heldout=True` gives single-object specs whose colour/shape pair is held out (levels 2
    and 3 only, since levels 1 does not name a colour and level 4 mixes several objects).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    if heldout and level not in (2, 3):
        raise ValueError("held-out specs exist for levels 2 and 3 only")
    obj = torch.full((n, N_SLOTS, 4), -1, dtype=torch.long)
    bg = torch.full((n,), -1, dtype=torch.long)
    if level < 4:
        count = torch.ones(n, dtype=torch.long)
        colour, shape = _sample_colour_shape(n, g, heldout)
        obj[:, 0, 0] = shape
        if level >= 2:
            obj[:, 0, 1] = colour
        if level >= 3:
            obj[:, 0, 2] = _randint(len(SIZES), (n,), g)
            obj[:, 0, 3] = _randint(N_SLOTS, (n,), g)
    else:
        count = 2 + _randint(2, (n,), g)
        for i in range(N_SLOTS):
            colour, shape = _sample_colour_shape(n, g, heldout=False)
            size = _randint(len(SIZES), (n,), g)
            on = i < count
            obj[:, i, 0] = torch.where(on, shape, -1)
            obj[:, i, 1] = torch.where(on, colour, -1)
            obj[:, i, 2] = torch.where(on, size, -1)
        bg = _randint(len(BACKGROUNDS), (n,), g)
    return Specs(obj, count, bg, torch.full((n,), level, dtype=torch.long))


def sample_training_specs(n: int, g: torch.Generator, level_probs=(0.15, 0.2, 0.25, 0.4)) -> Specs:
    """Mixed-level specs for training the teacher and the rewards (never held out)."""
    levels = torch.multinomial(torch.tensor(level_probs), n, replacement=True, generator=g) + 1
    parts, order = [], []
    for lv in LEVELS:
        idx = (levels == lv).nonzero().flatten()
        if len(idx):
            parts.append(sample_specs(len(idx), lv, g))
            order.append(idx)
    specs = Specs.cat(parts)
    inv = torch.empty(n, dtype=torch.long)
    inv[torch.cat(order)] = torch.arange(n)
    return specs.index(inv)


def complete_specs(specs: Specs, g: torch.Generator) -> Scenes:
    """A random scene satisfying each spec: unconstrained attributes are drawn at random.

    Objects keep their left-to-right order; free slots are a random ordered subset. Free
    colours never form a held-out pair, so only a spec that names one yields one.
    """
    n = len(specs)
    slots = torch.full((n, N_SLOTS, 3), -1, dtype=torch.long)
    occupied = torch.zeros((n, N_SLOTS), dtype=torch.bool)
    keys = torch.rand((n, N_SLOTS), generator=g)
    for i in range(n):
        k = int(specs.n[i])
        fixed_slot = int(specs.obj[i, 0, 3])
        if k == 1 and fixed_slot >= 0:
            chosen = [fixed_slot]
        else:
            chosen = sorted(torch.argsort(keys[i])[:k].tolist())
        for j, s in enumerate(chosen):
            slots[i, s] = specs.obj[i, j, :3]
            occupied[i, s] = True
    shape, colour, size = slots.unbind(-1)
    free_colour, free_shape = _sample_colour_shape(n * N_SLOTS, g, heldout=False)
    need_shape = occupied & (shape < 0)
    shape = torch.where(need_shape, free_shape.view(n, N_SLOTS), shape)
    need_colour = occupied & (colour < 0)
    colour = torch.where(need_colour, free_colour.view(n, N_SLOTS), colour)
    # A free colour next to a constrained shape may form a held-out pair: redraw those.
    bad = need_colour & HELDOUT[colour.clamp(min=0), shape.clamp(min=0)]
    while bad.any():
        colour = torch.where(bad, _randint(len(COLOURS), colour.shape, g), colour)
        bad = need_colour & HELDOUT[colour.clamp(min=0), shape.clamp(min=0)]
    size = torch.where(occupied & (size < 0), _randint(len(SIZES), (n, N_SLOTS), g), size)
    slots = torch.stack([shape, colour, size], -1)
    slots = torch.where(occupied[..., None], slots, torch.full_like(slots, -1))
    bg = torch.where(specs.bg >= 0, specs.bg, _randint(len(BACKGROUNDS), (n,), g))
    return Scenes(slots, bg)


def spec_of_scenes(scenes: Scenes, level: int) -> Specs:
    """The spec that a prompt at `level` would state about each scene (ground-truth caption)."""
    objs = scenes.ordered_objects()  # (N, 3, 4)
    n = len(scenes)
    obj = torch.full_like(objs, -1)
    keep = {1: [0], 2: [0, 1], 3: [0, 1, 2, 3], 4: [0, 1, 2]}[level]
    for c in keep:
        obj[:, :, c] = objs[:, :, c]
    bg = scenes.bg.clone() if level == 4 else torch.full((n,), -1, dtype=torch.long)
    return Specs(obj, scenes.count, bg, torch.full((n,), level, dtype=torch.long))


def match(specs: Specs, scenes: Scenes) -> dict[str, torch.Tensor]:
    """Check scenes (ground truth or an inspector's reading) against specs.

    Objects are aligned in left-to-right order. Returns per-sample tensors:
    `all_correct` (N,) bool; `fraction` (N,) float, the share of constrained attributes met
    (the count is always one of them); and for each attribute name in
    ("shape", "colour", "size", "slot", "count", "background") a pair of (N,) tensors
    `<name>_ok`, `<name>_n`: how many constrained instances were met / asked.
    """
    got = scenes.ordered_objects()  # (N, 3, 4)
    n_req = specs.n
    rows = torch.arange(N_SLOTS)[None, :] < n_req[:, None]  # (N, 3) objects asked for
    out: dict[str, torch.Tensor] = {}
    total_ok = torch.zeros(len(specs))
    total_n = torch.zeros(len(specs))
    for c, name in enumerate(ATTRS):
        asked = rows & (specs.obj[:, :, c] >= 0)
        ok = asked & (got[:, :, c] == specs.obj[:, :, c])
        out[f"{name}_ok"] = ok.sum(1).float()
        out[f"{name}_n"] = asked.sum(1).float()
    out["count_ok"] = (scenes.count == n_req).float()
    out["count_n"] = torch.ones(len(specs))
    asked_bg = specs.bg >= 0
    out["background_ok"] = (asked_bg & (scenes.bg == specs.bg)).float()
    out["background_n"] = asked_bg.float()
    for name in (*ATTRS, "count", "background"):
        total_ok += out[f"{name}_ok"]
        total_n += out[f"{name}_n"]
    out["fraction"] = total_ok / total_n
    out["all_correct"] = total_ok == total_n
    return out
