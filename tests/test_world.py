"""Tests of the built-in world's code: scenes and specs, renderer, prompt grammar, degradations.

None of these need trained assets; they pin the properties every world network relies on.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from rzero.world.data import perturb_specs, render_batch, step_generator
from rzero.world.degrade import KINDS, degrade
from rzero.world.prompts import N_TEMPLATES, describe, describe_one, random_templates
from rzero.world.render import render
from rzero.world.scene import (BACKGROUNDS, COLOURS, HELDOUT, HELDOUT_PAIRS, LEVELS, N_SLOTS, SHAPES, SIZES,
                               Scenes, Specs, complete_specs, match, sample_specs, sample_training_specs,
                               spec_of_scenes)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def mixed_scenes(n: int, seed: int) -> Scenes:
    """Scenes of every level (complete_specs of training specs)."""
    g = gen(seed)
    return complete_specs(sample_training_specs(n, g), g)


def random_scenes(n: int, seed: int) -> Scenes:
    """Arbitrary scenes (1-3 objects in any slots, any attributes), not via specs."""
    g = gen(seed)
    present = torch.rand((n, N_SLOTS), generator=g) < 0.6
    present[torch.arange(n), torch.randint(0, N_SLOTS, (n,), generator=g)] = True
    attrs = torch.stack([torch.randint(0, len(SHAPES), (n, N_SLOTS), generator=g),
                         torch.randint(0, len(COLOURS), (n, N_SLOTS), generator=g),
                         torch.randint(0, len(SIZES), (n, N_SLOTS), generator=g)], -1)
    slots = torch.where(present[..., None], attrs, torch.full_like(attrs, -1))
    return Scenes(slots, torch.randint(0, len(BACKGROUNDS), (n,), generator=g))


def has_heldout_pair(shape: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """(N, K) shape/colour indices (-1 = none) -> (N,) whether any pair is held out."""
    valid = (shape >= 0) & (colour >= 0)
    return (valid & HELDOUT[colour.clamp(min=0), shape.clamp(min=0)]).any(1)


def f32(x: float) -> float:
    """`x` rounded to float32, the dtype of match()'s fractions."""
    return torch.tensor(x, dtype=torch.float32).item()


def spec(objects, n=None, bg=-1, level=4) -> Specs:
    """One hand-written spec: objects as [shape, colour, size, slot] with names or -1."""
    rows = []
    for o in objects:
        shape, colour, size, slot = (list(o) + [-1] * 4)[:4]
        rows.append([SHAPES.index(shape) if isinstance(shape, str) else shape,
                     COLOURS.index(colour) if isinstance(colour, str) else colour,
                     SIZES.index(size) if isinstance(size, str) else size,
                     ("left", "center", "right").index(slot) if isinstance(slot, str) else slot])
    rows += [[-1] * 4] * (N_SLOTS - len(rows))
    bg = BACKGROUNDS.index(bg) if isinstance(bg, str) else bg
    return Specs(torch.tensor([rows]), torch.tensor([len(objects) if n is None else n]), torch.tensor([bg]),
                 torch.tensor([level]))


def scene(left=None, center=None, right=None, bg="grey") -> Scenes:
    """One hand-written scene: each slot None or (shape, colour, size) names."""
    rows = [[-1, -1, -1] if o is None else [SHAPES.index(o[0]), COLOURS.index(o[1]), SIZES.index(o[2])]
            for o in (left, center, right)]
    return Scenes(torch.tensor([rows]), torch.tensor([BACKGROUNDS.index(bg)]))


# ----------------------------------------------------------------------------- renderer


@pytest.mark.parametrize("size", [32, 64])
def test_render_shape_dtype_range(size):
    scenes = mixed_scenes(8, 0)
    img = render(scenes, gen(1), size=size)
    assert img.shape == (8, 3, size, size)
    assert img.dtype == torch.float32
    assert torch.isfinite(img).all()
    assert img.min() >= -1 and img.max() <= 1
    # Not a constant picture: objects and the background differ.
    assert img.flatten(1).std(1).min() > 0.01


def test_render_same_seed_is_bitwise_equal_and_other_seed_differs():
    scenes = mixed_scenes(12, 3)
    a = render(scenes, gen(7))
    b = render(scenes, gen(7))
    c = render(scenes, gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Every image changes with the seed (jitter and pixel noise), not just some of them.
    assert ((a - c).abs().flatten(1).amax(1) > 0).all()


def test_render_without_noise_is_still_deterministic():
    scenes = mixed_scenes(4, 5)
    assert torch.equal(render(scenes, gen(1), noise=0.0), render(scenes, gen(1), noise=0.0))


def test_render_64_downsampled_resembles_32():
    """Both sizes sample the same picture (same scene, same generator seed)."""
    scenes = mixed_scenes(12, 11)
    small = render(scenes, gen(4), size=32)
    big = render(scenes, gen(4), size=64)
    diff = (F.avg_pool2d(big, 2) - small).abs().flatten(1).mean(1)
    assert diff.max() < 0.15, diff
    # ... and much closer than the picture of a different scene.
    other = render(mixed_scenes(12, 12), gen(4), size=32)
    assert diff.mean() < 0.5 * (other - small).abs().mean()


def test_render_background_colour():
    """An empty-ish corner pixel takes the background's brightness order: black < grey < white."""
    scenes = Scenes(torch.full((3, N_SLOTS, 3), -1, dtype=torch.long), torch.arange(3))
    img = render(scenes, gen(0), noise=0.0)
    corner = img[:, :, :3, :3].mean((1, 2, 3))
    assert corner[0] < corner[1] < corner[2]


# ---------------------------------------------------------------------- specs and scenes


@pytest.mark.parametrize("level", LEVELS)
def test_complete_specs_satisfies_specs(level):
    g = gen(100 + level)
    specs = sample_specs(500, level, g)
    m = match(specs, complete_specs(specs, g))
    assert m["all_correct"].all()
    assert (m["fraction"] == 1).all()


@pytest.mark.parametrize("level", [2, 3])
def test_complete_heldout_specs_satisfies_and_contains_heldout_pair(level):
    g = gen(200 + level)
    specs = sample_specs(500, level, g, heldout=True)
    assert has_heldout_pair(specs.obj[:, :, 0], specs.obj[:, :, 1]).all()
    scenes = complete_specs(specs, g)
    assert match(specs, scenes)["all_correct"].all()
    assert has_heldout_pair(scenes.slots[:, :, 0], scenes.slots[:, :, 1]).all()


@pytest.mark.parametrize("level", [1, 4])
def test_heldout_specs_only_for_levels_2_and_3(level):
    with pytest.raises(ValueError, match="levels 2 and 3"):
        sample_specs(2, level, gen(0), heldout=True)


def test_bad_level_raises():
    with pytest.raises(ValueError, match="level must be one of"):
        sample_specs(2, 5, gen(0))


def test_training_specs_and_scenes_never_contain_heldout_pairs():
    g = gen(42)
    specs = sample_training_specs(4000, g)
    assert set(specs.level.unique().tolist()) == set(LEVELS)
    assert not has_heldout_pair(specs.obj[:, :, 0], specs.obj[:, :, 1]).any()
    scenes = complete_specs(specs, g)
    assert not has_heldout_pair(scenes.slots[:, :, 0], scenes.slots[:, :, 1]).any()
    assert match(specs, scenes)["all_correct"].all()
    # render_batch (the training data path) is held-out free as well.
    batch_scenes, batch_specs, images = render_batch(256, gen(43))
    assert images.shape == (256, 3, 32, 32)
    assert not has_heldout_pair(batch_scenes.slots[:, :, 0], batch_scenes.slots[:, :, 1]).any()
    assert match(batch_specs, batch_scenes)["all_correct"].all()


def test_complete_specs_free_colour_never_makes_heldout_pair():
    """L1 specs name only the shape; the free colour must not complete a held-out pair."""
    g = gen(7)
    shapes = torch.tensor([SHAPES.index(s) for _, s in HELDOUT_PAIRS] * 300)
    obj = torch.full((len(shapes), N_SLOTS, 4), -1, dtype=torch.long)
    obj[:, 0, 0] = shapes
    n = len(shapes)
    specs = Specs(obj, torch.ones(n, dtype=torch.long), torch.full((n,), -1), torch.ones(n, dtype=torch.long))
    scenes = complete_specs(specs, g)
    assert match(specs, scenes)["all_correct"].all()
    assert not has_heldout_pair(scenes.slots[:, :, 0], scenes.slots[:, :, 1]).any()


def test_heldout_pairs_are_consistent():
    assert HELDOUT.sum() == len(HELDOUT_PAIRS)
    for c, s in HELDOUT_PAIRS:
        assert HELDOUT[COLOURS.index(c), SHAPES.index(s)]


@pytest.mark.parametrize("level", LEVELS)
def test_spec_of_scenes_matches_own_scene(level):
    for scenes in (mixed_scenes(300, level), random_scenes(300, 50 + level)):
        specs = spec_of_scenes(scenes, level)
        assert (specs.level == level).all()
        assert torch.equal(specs.n, scenes.count)
        assert match(specs, scenes)["all_correct"].all()


@pytest.mark.parametrize("level", LEVELS)
def test_spec_of_scenes_constrains_the_level_attributes(level):
    specs = spec_of_scenes(random_scenes(50, level), level)
    rows = torch.arange(N_SLOTS)[None] < specs.n[:, None]
    constrained = {1: (0,), 2: (0, 1), 3: (0, 1, 2, 3), 4: (0, 1, 2)}[level]
    for c in range(4):
        col = specs.obj[:, :, c]
        if c in constrained:
            assert (col[rows] >= 0).all()
        else:
            assert (col == -1).all()
    assert ((specs.bg >= 0) == (level == 4)).all()


def test_perturb_specs_breaks_the_original_scene_except_identical_swaps():
    """A one-change perturbation is not satisfied by a scene of the original spec, except when
    it swapped two identical objects (documented: such pairs are positives for the judge)."""
    g = gen(0)
    specs = sample_training_specs(4000, g)
    scenes = complete_specs(specs, g)
    perturbed = perturb_specs(specs, g)
    m = match(perturbed, scenes)
    noop = (m["fraction"] >= 1).nonzero().flatten().tolist()
    for i in noop:
        assert torch.equal(perturbed.obj[i], specs.obj[i]) and specs.level[i] == 4, i
    assert len(noop) <= 8  # about 1 in 2,000


def test_perturb_specs_swap_of_identical_objects_is_a_positive():
    s = spec([("circle", "red", "small"), ("circle", "red", "small")], bg="grey")
    sc = scene(left=("circle", "red", "small"), right=("circle", "red", "small"), bg="grey")
    outcomes = []
    for seed in range(40):
        p = perturb_specs(s, gen(seed))
        f = match(p, sc)["fraction"].item()
        if f == 1.0:
            assert torch.equal(p.obj, s.obj) and torch.equal(p.n, s.n) and torch.equal(p.bg, s.bg)
        outcomes.append(f)
    assert min(outcomes) < 1  # the other kinds of change do break it


@pytest.mark.parametrize("level", LEVELS)
def test_perturb_specs_per_level(level):
    g = gen(300 + level)
    specs = sample_specs(300, level, g)
    scenes = complete_specs(specs, g)
    perturbed = perturb_specs(specs, g)
    assert torch.equal(perturbed.level, specs.level)
    m = match(perturbed, scenes)
    if level < 4:
        # Exactly one attribute of the single object changes, so exactly one check fails.
        changed = (perturbed.obj != specs.obj).sum((1, 2))
        assert (changed == 1).all()
        assert torch.equal(perturbed.n, specs.n) and torch.equal(perturbed.bg, specs.bg)
        asked = sum(m[f"{a}_n"] for a in ("shape", "colour", "size", "slot", "count", "background"))
        assert torch.equal(m["fraction"], (asked - 1) / asked)
    else:
        # Something changed in every L4 spec (objects, count or background); that it breaks
        # the original scene is checked by the two tests above.
        differs = (perturbed.obj != specs.obj).flatten(1).any(1) | (perturbed.n != specs.n) | (perturbed.bg != specs.bg)
        same_objects = (specs.obj[:, 0] == specs.obj[:, 1]).all(1) | (specs.obj[:, 1] == specs.obj[:, 2]).all(1) | (
            (specs.obj[:, 0] == specs.obj[:, 2]).all(1) & (specs.n == 3))
        assert (differs | same_objects).all()


# ------------------------------------------------------------------------------ match()


def test_match_relation_order():
    s = spec([("circle", "red"), ("square", "blue")])  # "a red circle left of a blue square"
    right = scene(left=("circle", "red", "small"), right=("square", "blue", "large"))
    swapped = scene(left=("square", "blue", "large"), right=("circle", "red", "small"))
    ok = match(s, right)
    assert ok["all_correct"].item() and ok["fraction"].item() == 1.0
    bad = match(s, swapped)
    assert not bad["all_correct"].item()
    # 2 shapes + 2 colours + count asked; only the count is met.
    assert bad["fraction"].item() == f32(1 / 5)
    assert bad["shape_ok"].item() == 0 and bad["shape_n"].item() == 2
    assert bad["colour_ok"].item() == 0 and bad["colour_n"].item() == 2
    assert bad["count_ok"].item() == 1


def test_match_relation_ignores_empty_slots_between_objects():
    s = spec([("circle", "red"), ("square", "blue")])
    gap = scene(left=("circle", "red", "small"), center=None, right=("square", "blue", "small"))
    adjacent = scene(center=("circle", "red", "small"), right=("square", "blue", "small"))
    assert match(s, gap)["all_correct"].item()
    assert match(s, adjacent)["all_correct"].item()


def test_match_count_mismatch_fails():
    s = spec([("circle", "red"), ("square", "blue")])
    extra = scene(left=("circle", "red", "small"), center=("square", "blue", "small"),
                  right=("cross", "green", "large"))
    m = match(s, extra)
    assert not m["all_correct"].item()
    assert m["count_ok"].item() == 0 and m["count_n"].item() == 1
    assert m["fraction"].item() == f32(4 / 5)
    missing = scene(left=("circle", "red", "small"))
    m = match(s, missing)
    assert not m["all_correct"].item()
    assert m["count_ok"].item() == 0
    # The first object is there, the second is not.
    assert m["shape_ok"].item() == 1 and m["colour_ok"].item() == 1
    assert m["fraction"].item() == f32(2 / 5)


def test_match_fraction_exact_small_case():
    # L3: "a small red circle on the left"; scene: a large red circle on the left.
    s = spec([("circle", "red", "small", "left")], level=3)
    m = match(s, scene(left=("circle", "red", "large")))
    assert m["fraction"].item() == f32(4 / 5)
    assert (m["size_ok"].item(), m["size_n"].item()) == (0, 1)
    assert (m["slot_ok"].item(), m["slot_n"].item()) == (1, 1)
    assert (m["background_ok"].item(), m["background_n"].item()) == (0, 0)
    # Wrong slot as well.
    m = match(s, scene(center=("circle", "red", "large")))
    assert m["fraction"].item() == f32(3 / 5)
    # L4 with a background: 2 objects x 3 attributes + count + background = 8 asked.
    s4 = spec([("circle", "red", "small"), ("square", "blue", "large")], bg="white")
    m = match(s4, scene(left=("circle", "red", "small"), right=("square", "green", "large"), bg="black"))
    assert m["fraction"].item() == f32(6 / 8)
    assert (m["background_ok"].item(), m["background_n"].item()) == (0, 1)
    # L1: only shape and count.
    s1 = spec([("triangle",)], level=1)
    assert match(s1, scene(right=("triangle", "pink", "large")))["all_correct"].item()
    assert match(s1, scene(right=("diamond", "pink", "large")))["fraction"].item() == f32(0.5)


def test_match_is_batched_row_by_row():
    scenes = random_scenes(64, 3)
    specs = spec_of_scenes(scenes, 4)
    full = match(specs, scenes.index(torch.arange(63, -1, -1)))
    for i in (0, 17, 63):
        one = match(specs.index(slice(i, i + 1)), scenes.index(slice(63 - i, 64 - i)))
        for key, value in one.items():
            assert torch.equal(full[key][i:i + 1], value), key


# ------------------------------------------------------------------------------ prompts


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


SLOT_WORDS = {0: ("left",), 1: ("center", "middle"), 2: ("right",)}


def test_describe_level_words():
    s1 = spec([("diamond",)], level=1)
    s2 = spec([("square", "orange")], level=2)
    s3 = spec([("triangle", "green", "large", "right")], level=3)
    s4 = spec([("cross", "orange", "small"), ("circle", "blue", "large"), ("square", "pink", "small")],
              bg="white")
    for t in range(4):
        text = describe(s1, torch.tensor([t]))[0]
        assert "diamond" in words(text)
        assert not set(words(text)) & set(COLOURS + SIZES + BACKGROUNDS)
        text = describe(s2, torch.tensor([t]))[0]
        assert {"square", "orange"} <= set(words(text))
        assert not set(words(text)) & set(SIZES + BACKGROUNDS)
        text = describe(s3, torch.tensor([t]))[0]
        assert {"triangle", "green", "large", "right"} <= set(words(text))
        text = describe(s4, torch.tensor([t]))[0]
        assert {"cross", "orange", "small", "circle", "blue", "large", "square", "pink", "white",
                "background"} <= set(words(text))


def test_describe_articles():
    s2 = spec([("square", "orange")], level=2)
    assert describe(s2, torch.tensor([0]))[0] == "an orange square"
    assert describe(spec([("square", "red")], level=2), torch.tensor([0]))[0] == "a red square"
    assert describe(spec([("circle",)], level=1), torch.tensor([0]))[0] == "a circle"
    text = describe(spec([("circle", "orange", "small", "left")], level=3), torch.tensor([2]))[0]
    assert text.startswith("an orange circle")
    text = describe(spec([("cross", "orange", "small"), ("circle", "blue", "large")], bg="grey"),
                    torch.tensor([0]))[0]
    assert text == "a small orange cross left of a large blue circle on a grey background"
    assert " a an " not in text and " an a " not in text


@pytest.mark.parametrize("level", LEVELS)
def test_every_template_index_works(level):
    g = gen(level)
    specs = sample_specs(40, level, g)
    seen = set()
    for t in list(range(N_TEMPLATES[level])) + [N_TEMPLATES[level] * 7 + 1, (1 << 16) - 1]:
        texts = describe(specs, torch.full((len(specs),), t))
        for i, text in enumerate(texts):
            assert isinstance(text, str) and text.strip() == text and text
            for j in range(int(specs.n[i])):
                o = specs.obj[i, j].tolist()
                assert SHAPES[o[0]] in words(text)
                if level >= 2:
                    assert COLOURS[o[1]] in words(text)
                if level >= 3:
                    assert SIZES[o[2]] in words(text)
                if level == 3:
                    assert set(SLOT_WORDS[o[3]]) & set(words(text))
            if level == 4:
                assert BACKGROUNDS[int(specs.bg[i])] in words(text)
        seen.add(texts[0])
    # Different template indices give different paraphrases.
    assert len(seen) == N_TEMPLATES[level]


def test_level4_text_keeps_left_to_right_order():
    s = spec([("cross", "orange", "small"), ("circle", "blue", "large")], bg="black")
    first, second = "small orange cross", "large blue circle"
    for t in range(N_TEMPLATES[4]):
        text = describe(s, torch.tensor([t]))[0]
        a, b = text.index(first), text.index(second)
        if " right of " in text:
            assert b < a  # "B right of A"
        else:
            assert a < b


def test_random_templates_are_seeded():
    a = random_templates(20, gen(3))
    assert torch.equal(a, random_templates(20, gen(3)))
    assert a.shape == (20,) and (a >= 0).all()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), level=st.sampled_from(LEVELS), template=st.integers(0, 1 << 16),
       heldout=st.booleans())
def test_describe_property(seed, level, template, heldout):
    heldout = heldout and level in (2, 3)
    specs = sample_specs(3, level, gen(seed), heldout=heldout)
    texts = describe(specs, torch.full((3,), template))
    for i, text in enumerate(texts):
        assert isinstance(text, str) and text.strip()
        w = set(words(text))
        asked_shapes = {SHAPES[s] for s in specs.obj[i, :, 0].tolist() if s >= 0}
        # Every shape word the text mentions is one of SHAPES and one the spec asks for.
        assert w & set(SHAPES) == asked_shapes
        asked_colours = {COLOURS[c] for c in specs.obj[i, :, 1].tolist() if c >= 0}
        assert w & set(COLOURS) == asked_colours
        assert describe_one(specs.obj[i].tolist(), int(specs.n[i]), int(specs.bg[i]), level, template) == text


# -------------------------------------------------------------------------- degradations


@pytest.mark.parametrize("size", [32, 64])
def test_degrade_shape_range_and_clean_unchanged(size):
    images = render(mixed_scenes(24, 9), gen(1), size=size)
    out, kind = degrade(images, gen(2))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert kind.shape == (24,) and kind.dtype == torch.long
    assert ((kind >= 0) & (kind < len(KINDS))).all()
    assert out.min() >= -1 and out.max() <= 1 and torch.isfinite(out).all()
    clean = kind == 0
    assert clean.any() and (~clean).any()
    assert torch.equal(out[clean], images[clean])
    # Every degraded image actually changed.
    assert ((out - images).abs().flatten(1).amax(1)[~clean] > 0).all()


def test_degrade_p_clean_extremes_and_determinism():
    images = render(mixed_scenes(48, 10), gen(1))
    out, kind = degrade(images, gen(3), p_clean=0.0)
    assert (kind != 0).all()
    assert set(kind.tolist()) == set(range(1, len(KINDS)))  # all 7 kinds show up in 48 draws
    assert ((out - images).abs().flatten(1).amax(1) > 0).all()
    images, out = images[:16], None
    out, kind = degrade(images, gen(3), p_clean=1.0)
    assert (kind == 0).all() and torch.equal(out, images)
    a, ka = degrade(images, gen(5))
    b, kb = degrade(images, gen(5))
    assert torch.equal(a, b) and torch.equal(ka, kb)


def test_degrade_keeps_gradient():
    images = render(mixed_scenes(8, 11), gen(1)).requires_grad_(True)
    out, _ = degrade(images, gen(3), p_clean=0.0)
    out.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()


# ------------------------------------------------------------------------ step generator


def draw(g: torch.Generator) -> torch.Tensor:
    return torch.rand(16, generator=g)


def test_step_generator_streams():
    a = draw(step_generator(0, "teacher", 10))
    assert torch.equal(a, draw(step_generator(0, "teacher", 10)))
    assert not torch.equal(a, draw(step_generator(0, "teacher", 11)))
    assert not torch.equal(a, draw(step_generator(0, "clip", 10)))
    assert not torch.equal(a, draw(step_generator(1, "teacher", 10)))
    # Seed and step are not interchangeable.
    assert not torch.equal(draw(step_generator(1, "judge", 2)), draw(step_generator(2, "judge", 1)))


def test_step_generator_steps_are_distinct():
    firsts = {tuple(draw(step_generator(0, "judge", s)).tolist()) for s in range(500)}
    assert len(firsts) == 500
