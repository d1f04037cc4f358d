"""Real-scale rewards (issue 5) on tiny random models saved in the original checkpoint layouts.

No weights can be downloaded here, so every loading path is exercised with a tiny model of
the same class, written the way the released file is written (HPS: torch pickle of
{'state_dict': open_clip state dict}; ImageReward: plain state dict with BLIP's key names;
aesthetic: `layers.{0,2,4,6,7}` MLP; PickScore / CLIP: transformers folders). Each reward
then passes the shared reward contract, and its score is checked against a direct
computation from the saved tensors.
"""

from __future__ import annotations

import json
import string

import pytest
import torch
import torch.nn.functional as F

from rzero.rewards import REWARDS, make_reward
from rzero.rewards.aesthetic import AestheticHead
from rzero.rewards.clip_common import clip_preprocess
from rzero.rewards.imagereward import IMAGEREWARD_MEAN, IMAGEREWARD_STD, map_original_keys
from rzero.utils.io import AssetError, atomic_save_safetensors
from tiny_sd import tiny_hf_clip_config

from reward_contract import check_reward_contract, world_batch

open_clip = pytest.importorskip("open_clip")
transformers = pytest.importorskip("transformers")

TINY_ARCH = "rzero-tiny-clip"
D = 16  # joint embedding width of the tiny CLIPs


# ------------------------------------------------------------------ tiny models in original layouts


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A registered tiny open_clip architecture and a random model of it."""
    d = tmp_path_factory.mktemp("open_clip_cfg")
    cfg = {"embed_dim": D,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (d / f"{TINY_ARCH}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(d)
    torch.manual_seed(0)
    return open_clip.create_model(TINY_ARCH, pretrained=None).eval()


@pytest.fixture(scope="module")
def hps_file(tiny_open_clip, tmp_path_factory):
    """HPS_v2.1_compressed.pt as released: a torch pickle of {'state_dict': open_clip state dict}."""
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": tiny_open_clip.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def clip_tokenizer_dir(tmp_path_factory):
    """A tiny CLIP BPE tokenizer (printable ASCII, no merges) saved as a transformers folder."""
    d = tmp_path_factory.mktemp("clip_tok")
    chars = [c for c in string.printable if not c.isspace()]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    transformers.CLIPTokenizer.from_pretrained(d, model_max_length=77).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def hf_clip_dir(tmp_path_factory, clip_tokenizer_dir):
    """A tiny transformers CLIPModel folder (with the tokenizer next to it)."""
    d = tmp_path_factory.mktemp("hf_clip")
    tok = transformers.AutoTokenizer.from_pretrained(clip_tokenizer_dir)
    cfg = tiny_hf_clip_config(tok, image_size=32, patch_size=8, projection_dim=D)
    torch.manual_seed(1)
    transformers.CLIPModel(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def aesthetic_file(tmp_path_factory):
    """sac+logos+ava1-l14-linearMSE.pth as released: a state dict `layers.{0,2,4,6,7}.*` (here D-dim input)."""
    torch.manual_seed(2)
    head = AestheticHead(D)
    sd = {k: v for k, v in head.state_dict().items()}
    assert sorted({k.split(".")[1] for k in sd}) == ["0", "2", "4", "6", "7"]
    path = tmp_path_factory.mktemp("aes") / "sac+logos+ava1-l14-linearMSE.pth"
    torch.save(sd, path)
    return path


# BLIP sizes of the tiny ImageReward: vision width 32 (2 blocks), text width 24 (1 layer).
VW, VDEPTH, VHEADS, PATCH, IMG = 32, 2, 2, 8, 32
TW, TLAYERS, THEADS = 24, 1, 2
IR_VISION = dict(hidden_size=VW, intermediate_size=4 * VW, num_hidden_layers=VDEPTH, num_attention_heads=VHEADS,
                 image_size=IMG, patch_size=PATCH)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(string.ascii_lowercase) + \
        ["a", "red", "blue", "green", "circle", "square", "triangle", "on", "the", "left", "right", "of"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(d / "vocab.txt")).save_pretrained(d)
    return d


def ir_text_config(bert_dir) -> dict:
    vocab = len(transformers.BertTokenizer.from_pretrained(bert_dir)) + 2  # + BLIP's [DEC], [ENC]
    return dict(vocab_size=vocab, hidden_size=TW, encoder_hidden_size=VW, intermediate_size=2 * TW,
                num_hidden_layers=TLAYERS, num_attention_heads=THEADS, max_position_embeddings=40)


def original_imagereward_state_dict(vocab: int, seed: int = 3) -> dict[str, torch.Tensor]:
    """Random weights under the key names of the released ImageReward.pt (BLIP's own modules).

    Written from BLIP's layout (timm-style ViT, med.py BERT), independently of our key mapping.
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    n_tok = (IMG // PATCH) ** 2 + 1
    sd = {"blip.visual_encoder.cls_token": r(1, 1, VW), "blip.visual_encoder.pos_embed": r(1, n_tok, VW),
          "blip.visual_encoder.patch_embed.proj.weight": r(VW, 3, PATCH, PATCH),
          "blip.visual_encoder.patch_embed.proj.bias": r(VW),
          "blip.visual_encoder.norm.weight": 1 + r(VW), "blip.visual_encoder.norm.bias": r(VW)}
    for i in range(VDEPTH):
        p = f"blip.visual_encoder.blocks.{i}."
        for n in ("norm1", "norm2"):
            sd[p + n + ".weight"], sd[p + n + ".bias"] = 1 + r(VW), r(VW)
        sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"] = r(3 * VW, VW), r(3 * VW)
        sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"] = r(VW, VW), r(VW)
        sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"] = r(4 * VW, VW), r(4 * VW)
        sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"] = r(VW, 4 * VW), r(VW)
    t = "blip.text_encoder."
    sd[t + "embeddings.word_embeddings.weight"] = r(vocab, TW)
    sd[t + "embeddings.position_embeddings.weight"] = r(40, TW)
    sd[t + "embeddings.position_ids"] = torch.arange(40).unsqueeze(0)  # a buffer in the original
    sd[t + "embeddings.LayerNorm.weight"], sd[t + "embeddings.LayerNorm.bias"] = 1 + r(TW), r(TW)
    for i in range(TLAYERS):
        p = f"{t}encoder.layer.{i}."
        for att, kv_in in (("attention", TW), ("crossattention", VW)):
            sd[p + f"{att}.self.query.weight"], sd[p + f"{att}.self.query.bias"] = r(TW, TW), r(TW)
            for n in ("key", "value"):
                sd[p + f"{att}.self.{n}.weight"], sd[p + f"{att}.self.{n}.bias"] = r(TW, kv_in), r(TW)
            sd[p + f"{att}.output.dense.weight"], sd[p + f"{att}.output.dense.bias"] = r(TW, TW), r(TW)
            sd[p + f"{att}.output.LayerNorm.weight"], sd[p + f"{att}.output.LayerNorm.bias"] = 1 + r(TW), r(TW)
        sd[p + "intermediate.dense.weight"], sd[p + "intermediate.dense.bias"] = r(2 * TW, TW), r(2 * TW)
        sd[p + "output.dense.weight"], sd[p + "output.dense.bias"] = r(TW, 2 * TW), r(TW)
        sd[p + "output.LayerNorm.weight"], sd[p + "output.LayerNorm.bias"] = 1 + r(TW), r(TW)
    # BLIP pre-training heads present in the file but unused for scoring.
    sd["blip.vision_proj.weight"], sd["blip.vision_proj.bias"] = r(256, VW), r(256)
    sd["blip.text_proj.weight"], sd["blip.text_proj.bias"] = r(256, TW), r(256)
    dims = [TW, 1024, 128, 64, 16, 1]
    for idx, (i, o) in zip((0, 2, 4, 6, 7), zip(dims[:-1], dims[1:])):
        sd[f"mlp.layers.{idx}.weight"], sd[f"mlp.layers.{idx}.bias"] = r(o, i) / i ** 0.5, r(o)
    return sd


@pytest.fixture(scope="module")
def imagereward_file(tmp_path_factory, bert_dir):
    path = tmp_path_factory.mktemp("ir") / "ImageReward.pt"
    torch.save(original_imagereward_state_dict(ir_text_config(bert_dir)["vocab_size"]), path)
    return path


# ------------------------------------------------------------------ the rewards on those files


@pytest.fixture(scope="module")
def hps(hps_file):
    return make_reward("hps-v2.1", path=str(hps_file), arch=TINY_ARCH, device="cpu")


@pytest.fixture(scope="module")
def imagereward(imagereward_file, bert_dir):
    return make_reward("imagereward", path=str(imagereward_file), tokenizer=str(bert_dir), device="cpu",
                       vision_config=IR_VISION, text_config=ir_text_config(bert_dir))


@pytest.fixture(scope="module")
def pickscore(hf_clip_dir, clip_tokenizer_dir):
    return make_reward("pickscore", model=str(hf_clip_dir), processor=str(clip_tokenizer_dir), device="cpu")


@pytest.fixture(scope="module")
def clip_score(hf_clip_dir):
    return make_reward("clip-score", model=str(hf_clip_dir), device="cpu")


@pytest.fixture(scope="module")
def aesthetic(hf_clip_dir, aesthetic_file):
    return make_reward("aesthetic", head=str(aesthetic_file), model=str(hf_clip_dir), device="cpu")


SCALE_REWARDS = ["hps", "imagereward", "pickscore", "clip_score", "aesthetic"]


@pytest.mark.parametrize("fixture", SCALE_REWARDS)
def test_scale_reward_contract(fixture, request):
    reward = request.getfixturevalue(fixture)
    assert reward.name in REWARDS and isinstance(reward, REWARDS[reward.name])
    check_reward_contract(reward)
    assert not any(p.requires_grad for p in reward.parameters())


def test_every_scale_reward_is_registered():
    assert {"hps-v2", "hps-v2.1", "imagereward", "pickscore", "clip-score", "aesthetic"} <= set(REWARDS)


# ------------------------------------------------------------------ scores equal the originals' formulas


def _pixels(images, size=32):
    from rzero.rewards.clip_common import OPENAI_MEAN, OPENAI_STD

    return clip_preprocess(images, size, OPENAI_MEAN, OPENAI_STD)


def test_hps_loads_the_checkpoint_and_scores_100_cos(hps, tiny_open_clip):
    for (k, v), (k2, v2) in zip(hps.clip.model.state_dict().items(), tiny_open_clip.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    images, prompts = world_batch()
    with torch.no_grad():
        img = tiny_open_clip.encode_image(_pixels(images), normalize=True)
        txt = tiny_open_clip.encode_text(open_clip.get_tokenizer(TINY_ARCH)(prompts), normalize=True)
    torch.testing.assert_close(hps(images, prompts), 100 * (img * txt).sum(-1), rtol=1e-4, atol=1e-4)


def test_hps_accepts_a_folder_a_safetensors_file_and_the_weights_dir(hps, hps_file, tiny_open_clip, tmp_path,
                                                                      monkeypatch):
    images, prompts = world_batch(seed=1)
    expected = hps(images, prompts)
    from_folder = make_reward("hps-v2.1", path=str(hps_file.parent), arch=TINY_ARCH, device="cpu")
    torch.testing.assert_close(from_folder(images, prompts), expected)
    st = tmp_path / "HPS_v2.1_compressed.safetensors"
    atomic_save_safetensors(tiny_open_clip.state_dict(), st)
    torch.testing.assert_close(make_reward("hps-v2.1", path=str(st), arch=TINY_ARCH, device="cpu")(images, prompts),
                               expected)
    monkeypatch.setenv("RZERO_WEIGHTS_DIR", str(hps_file.parent))
    torch.testing.assert_close(make_reward("hps-v2.1", arch=TINY_ARCH, device="cpu")(images, prompts), expected)


def test_imagereward_key_mapping_and_score(imagereward, imagereward_file):
    """Weights land where BLIP had them, and the score is BLIP's ViT + BERT + MLP, normalized."""
    sd = torch.load(imagereward_file, weights_only=True)
    own = imagereward.state_dict()
    assert torch.equal(own["visual.embeddings.class_embedding"], sd["blip.visual_encoder.cls_token"])
    assert torch.equal(own["visual.encoder.layers.1.self_attn.projection.weight"],
                       sd["blip.visual_encoder.blocks.1.attn.proj.weight"])
    assert torch.equal(own["visual.post_layernorm.bias"], sd["blip.visual_encoder.norm.bias"])
    assert torch.equal(own["text.encoder.layer.0.crossattention.self.key.weight"],
                       sd["blip.text_encoder.encoder.layer.0.crossattention.self.key.weight"])
    assert torch.equal(own["head.layers.7.weight"], sd["mlp.layers.7.weight"])

    # The image tokens equal a direct pre-norm ViT written from BLIP's layout (checks qkv order too).
    images, prompts = world_batch(seed=2)
    x = _pixels(images)
    v = "blip.visual_encoder."
    h = F.conv2d(x, sd[v + "patch_embed.proj.weight"], sd[v + "patch_embed.proj.bias"], stride=PATCH)
    h = torch.cat([sd[v + "cls_token"].expand(len(x), -1, -1), h.flatten(2).transpose(1, 2)], 1)
    h = h + sd[v + "pos_embed"]
    for i in range(VDEPTH):
        p = f"{v}blocks.{i}."
        y = F.layer_norm(h, (VW,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
        q, k, val = F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).chunk(3, dim=-1)
        heads = lambda z: z.unflatten(-1, (VHEADS, VW // VHEADS)).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(heads(q), heads(k), heads(val)).transpose(1, 2).flatten(2)
        h = h + F.linear(a, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(h, (VW,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
        y = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                     sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        h = h + y
    h = F.layer_norm(h, (VW,), sd[v + "norm.weight"], sd[v + "norm.bias"], eps=1e-6)
    with torch.no_grad():
        ours = imagereward.visual(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours, h, rtol=1e-4, atol=1e-4)
        # Score = (MLP(BERT[CLS]) - mean) / std.
        tok = imagereward.tokenizer(prompts, padding="max_length", truncation=True, max_length=35,
                                    return_tensors="pt")
        cls = imagereward.text(input_ids=tok.input_ids, attention_mask=tok.attention_mask, encoder_hidden_states=h,
                               encoder_attention_mask=torch.ones(h.shape[:2], dtype=torch.long)
                               ).last_hidden_state[:, 0]
        raw = cls
        for idx in (0, 2, 4, 6, 7):
            raw = F.linear(raw, sd[f"mlp.layers.{idx}.weight"], sd[f"mlp.layers.{idx}.bias"])
    torch.testing.assert_close(imagereward(images, prompts), (raw[:, 0] - IMAGEREWARD_MEAN) / IMAGEREWARD_STD,
                               rtol=1e-4, atol=1e-4)
    assert tok.input_ids[0, 0] == imagereward.tokenizer.cls_token_id  # [CLS] first, as the original
    assert len(imagereward.tokenizer) == imagereward.text.config.vocab_size  # BERT + [DEC] + [ENC]


def test_imagereward_mapping_reports_unknown_keys():
    sd = {"blip.visual_encoder.blocks.0.attn.qkv.weight": torch.zeros(1), "blip.visual_encoder.mystery": torch.zeros(1),
          "blip.text_proj.weight": torch.zeros(1), "blip.text_encoder.embeddings.position_ids": torch.zeros(1)}
    mapped = map_original_keys(sd)
    assert set(mapped) == {"visual.encoder.layers.0.self_attn.qkv.weight", "unmapped.blip.visual_encoder.mystery"}


def test_imagereward_rejects_a_checkpoint_of_another_layout(tmp_path, bert_dir, imagereward_file):
    sd = torch.load(imagereward_file, weights_only=True)
    del sd["blip.visual_encoder.norm.weight"]
    sd["blip.visual_encoder.extra.weight"] = torch.zeros(1)
    bad = tmp_path / "ImageReward.pt"
    torch.save(sd, bad)
    with pytest.raises(AssetError, match=r"missing visual\.post_layernorm\.weight.*unexpected unmapped"):
        make_reward("imagereward", path=str(bad), tokenizer=str(bert_dir), device="cpu",
                    vision_config=IR_VISION, text_config=ir_text_config(bert_dir))


def test_pickscore_is_logit_scale_times_cosine(pickscore, hf_clip_dir):
    model = transformers.CLIPModel.from_pretrained(hf_clip_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(hf_clip_dir)
    images, prompts = world_batch(seed=3)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=_pixels(images))
        t = tok(prompts, padding="max_length", truncation=True, max_length=77, return_tensors="pt")
        txt = model.get_text_features(input_ids=t.input_ids, attention_mask=t.attention_mask)
        img, txt = [o if isinstance(o, torch.Tensor) else o.pooler_output for o in (img, txt)]
        expected = model.logit_scale.exp() * F.cosine_similarity(img, txt)
    torch.testing.assert_close(pickscore(images, prompts), expected, rtol=1e-4, atol=1e-4)


def test_clip_score_backends_agree_with_100_cos(clip_score, pickscore, hps, hps_file):
    images, prompts = world_batch(seed=4)
    # Same tiny CLIP as PickScore's: CLIP score x100 = PickScore * 100 / logit_scale.
    scale = pickscore.clip.logit_scale.item()
    torch.testing.assert_close(clip_score(images, prompts), pickscore(images, prompts) * 100 / scale,
                               rtol=1e-4, atol=1e-4)
    # The open_clip backend on the HPS file's state dict gives the HPS number (both 100 cos).
    oc = make_reward("clip-score", backend="open_clip", model=TINY_ARCH, path=str(hps_file), device="cpu")
    torch.testing.assert_close(oc(images, prompts), hps(images, prompts))


def test_aesthetic_is_the_mlp_on_unit_clip_embeddings(aesthetic, aesthetic_file, hf_clip_dir):
    model = transformers.CLIPModel.from_pretrained(hf_clip_dir).eval()
    head = AestheticHead(D)
    head.load_state_dict(torch.load(aesthetic_file, weights_only=True))
    images, _ = world_batch(seed=5)
    with torch.no_grad():
        e = model.get_image_features(pixel_values=_pixels(images))
        e = e if isinstance(e, torch.Tensor) else e.pooler_output
        expected = head.eval()(e / e.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(aesthetic(images), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ device, dtype, preprocessing


def test_reward_in_its_own_dtype_returns_float32_with_gradients(hps_file):
    r = make_reward("hps-v2.1", path=str(hps_file), arch=TINY_ARCH, device="cpu", dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in r.parameters())
    x = world_batch()[0].requires_grad_(True)
    out = r(x, world_batch()[1])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.float32 and x.grad.abs().sum() > 0


def test_clip_preprocess_resizes_the_short_side_and_center_crops():
    # A 40x80 image whose left and right quarters are bright: the center crop keeps only the dark middle.
    x = -torch.ones(1, 3, 40, 80)
    x[..., :20], x[..., 60:] = 1.0, 1.0
    out = clip_preprocess(x, 20, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert out.shape == (1, 3, 20, 20)
    torch.testing.assert_close(out[..., 2:-2], -torch.ones(1, 3, 20, 16), atol=1e-5, rtol=0)


# ------------------------------------------------------------------ missing weights: one-line errors


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RZERO_WEIGHTS_DIR", raising=False)
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name,kwargs,expect", [
    ("hps-v2", {}, r"'HPS_v2_compressed\.pt' of hub id 'xswu/HPSv2'.*path=PATH"),
    ("hps-v2.1", {}, r"'HPS_v2\.1_compressed\.pt' of hub id 'xswu/HPSv2'.*path=PATH"),
    ("imagereward", {}, r"'ImageReward\.pt' of hub id 'THUDM/ImageReward'.*path=PATH"),
    ("pickscore", {}, r"'yuvalkirstain/PickScore_v1'.*model=PATH"),
    ("clip-score", {}, r"'openai/clip-vit-large-patch14'.*model=PATH"),
    ("aesthetic", {"model": "__hf_clip__"},
     r"'aesthetic-model\.pth' of hub id 'trl-lib/ddpo-aesthetic-predictor'.*head=PATH"),
    ("hps-v2.1", {"path": "/nonexistent/HPS_v2.1_compressed.pt"}, r"'/nonexistent/HPS_v2\.1_compressed\.pt' not found"),
    ("imagereward", {"path": "weights/ImageReward.pt"}, r"'weights/ImageReward\.pt' not found"),  # not a hub id
])
def test_missing_weight_is_a_one_line_asset_error(name, kwargs, expect, empty_hub_cache, hf_clip_dir):
    kwargs = {k: (str(hf_clip_dir) if v == "__hf_clip__" else v) for k, v in kwargs.items()}
    with pytest.raises(AssetError, match=expect) as info:
        make_reward(name, device="cpu", **kwargs)
    assert "\n" not in str(info.value)
    assert "RZERO_WEIGHTS_DIR" in str(info.value)


def test_corrupt_or_unsafe_checkpoint_is_refused(tmp_path, tiny_open_clip):
    bad = tmp_path / "HPS_v2.1_compressed.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(AssetError, match="weights_only"):
        make_reward("hps-v2.1", path=str(bad), arch=TINY_ARCH, device="cpu")
