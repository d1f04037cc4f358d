"""LoRA (SPEC 1.3): only adapters train, the regularizer acts on the merged delta, snapshots reload."""

from __future__ import annotations

import pytest
import torch

from rzero.backbones import SD15Backbone
from rzero.backbones.lora import (LoraDeltaRegularizer, apply_lora, delta_weight, lora_layers, merged_state_dict,
                                  trainable_denoiser)
from test_sd_backbones import PROMPTS, Redness, noisy, r0_config
from tiny_sd import prompt_file, tiny_sd3, tiny_sd15  # noqa: F401  (pytest fixtures)


def _randomize_b(module, seed=0):
    """Make the adapters non-trivial (B starts at zero, so a fresh LoRA is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in module.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_apply_lora_freezes_base_and_starts_at_identity(tiny_sd15):  # noqa: F811
    b = SD15Backbone(str(tiny_sd15))
    x_t, t = noisy(b)
    cond = b.encode_prompts(PROMPTS)
    with torch.no_grad():
        ref = b.predict(x_t, t, cond)
    params = apply_lora(b.unet, rank=2, alpha=4.0)
    trainable = [n for n, p in b.unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert len(params) == len(trainable) == 2 * len(lora_layers(b.unet))
    assert all(p.dtype == torch.float32 for p in params)
    assert list(b.trainable_parameters()) == params
    with torch.no_grad():
        torch.testing.assert_close(b.predict(x_t, t, cond), ref, rtol=0, atol=0)
    assert all(float(m.scaling["default"]) == 2.0 for _, m in lora_layers(b.unet))  # alpha / rank
    with pytest.raises(ValueError, match=r"\['nope'\] match no layer"):
        apply_lora(SD15Backbone(str(tiny_sd15)).unet, rank=2, target_modules=["to_q", "nope"])


def test_regularizer_is_squared_norm_of_merged_delta(tiny_sd15):  # noqa: F811
    b = SD15Backbone(str(tiny_sd15))
    apply_lora(b.unet, rank=2, alpha=3.0)
    reg = LoraDeltaRegularizer(b.unet, strength=0.5)
    loss0, m0 = reg()
    assert float(loss0.detach()) == 0.0 and m0["reg/dist"] == 0.0  # B = 0: no change yet, although A is random
    _randomize_b(b.unet)
    loss, metrics = reg()
    # Reference: peft's own merged delta of each layer, and the merged weights minus the base weights.
    expected = sum(float(m.get_delta_weight("default").pow(2).sum()) for _, m in lora_layers(b.unet))
    assert float(loss) == pytest.approx(0.5 * expected, rel=1e-5)
    base = SD15Backbone(str(tiny_sd15)).unet.state_dict()
    merged = merged_state_dict(b.unet)
    dist = sum(float((merged[k] - base[k]).pow(2).sum()) for k in base)
    assert metrics["reg/dist"] == pytest.approx(dist ** 0.5, rel=1e-4)
    loss.backward()
    for n, p in b.unet.named_parameters():
        assert (p.grad is not None) == ("lora_" in n), n
    name, layer = lora_layers(b.unet)[0]
    torch.testing.assert_close(delta_weight(layer), layer.get_delta_weight("default"))


def test_trainable_denoiser_keeps_float32_master_weights(tiny_sd15):  # noqa: F811
    b = SD15Backbone(str(tiny_sd15), dtype="bfloat16")
    trainable_denoiser(b.unet, rank=2)
    dtypes = {("lora" if "lora_" in n else "base"): p.dtype for n, p in b.unet.named_parameters()}
    assert dtypes == {"lora": torch.float32, "base": torch.bfloat16}
    full = SD15Backbone(str(tiny_sd15), dtype="bfloat16")
    trainable_denoiser(full.unet, rank=0)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in full.unet.parameters())
    assert full.vae.dtype == torch.bfloat16  # frozen parts keep the memory saving
    x_t, t = noisy(full)
    assert full.predict(x_t, t, full.encode_prompts(PROMPTS)).dtype == torch.float32


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_r0_with_lora_trains_adapters_only_and_reloads(kind, tiny_sd15, tiny_sd3, prompt_file, tmp_path):  # noqa: F811
    from rzero.generator import load_generator
    from rzero.trainers import R0Trainer
    from rzero.utils.io import load_safetensors

    path = tiny_sd15 if kind == "sd15" else tiny_sd3
    cfg = r0_config(path, kind, prompt_file, "lora.rank=4", "lora.alpha=8", "regularization.weight=0.1")
    tr = R0Trainer(cfg, tmp_path, rewards={"redness": Redness().freeze()})
    assert isinstance(tr.regularizer, LoraDeltaRegularizer)
    base_before = {n: p.detach().clone() for n, p in tr.model.named_parameters() if "lora_" not in n}
    final = tr.fit()
    for n, p in tr.model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base_before[n]), n  # the pretrained weights never move
    weights = load_safetensors(final / "generator.safetensors")
    assert weights and all("lora_" in k for k in weights)
    assert any(float(v.abs().max()) > 0 for k, v in weights.items() if "lora_B" in k)  # adapters trained
    import json

    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert stats[0]["reg/dist"] == 0.0 and stats[1]["reg/dist"] > 0  # the delta grows from zero

    gen, meta = load_generator(final)
    assert meta["lora"] == {"rank": 4, "alpha": 8.0, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    noise = torch.randn((2, *gen.backbone.latent_shape), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(0)
    tr.model.eval()
    want = tr.generator.sample(PROMPTS, noise, 0.0, generator=g)
    torch.testing.assert_close(gen.sample(PROMPTS, noise, 0.0, generator=g), want, rtol=0, atol=1e-6)
    merged, _ = load_generator(final, merge_lora=True)
    assert not any("lora_" in n for n, _ in merged.backbone.unet.named_parameters())
    torch.testing.assert_close(merged.sample(PROMPTS, noise, 0.0, generator=g), want, rtol=0, atol=1e-4)


def test_world_lora_snapshot_reloads_on_the_teacher_it_trained_from(world_assets, tmp_path):
    """A world LoRA snapshot holds only the adapters: generator.json must name the base teacher
    and the LoRA settings, or `rzero eval` cannot load it (it failed on unknown lora_ weights) or
    would put the adapters on the wrong teacher."""
    import json

    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.generator import load_generator
    from rzero.trainers import R0Trainer
    from rzero.world.prompts import fixed_prompts
    from test_implicit_cfg import CONFIGS

    targets = ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
    cfg = load_config(TrainConfig, CONFIGS / "world_r0.yaml",
                      ["batch_size=2", "sample_every=1000", "track_every=0", "iterations=2", "checkpoint_every=2",
                       "ema_decay=0", "generator.steps=2", "backbone_path=teacher_web", "lora.rank=2", "optim.lr=1e-2",
                       f"lora.target_modules=[{','.join(targets)}]"])
    tr = R0Trainer(cfg, tmp_path, asset_dir=world_assets)
    final = tr.fit()
    gen, meta = load_generator(final, asset_dir=world_assets)
    assert meta["backbone_path"] == "teacher_web"
    assert meta["lora"] == {"rank": 2, "alpha": 0.0, "target_modules": targets}
    prompts = fixed_prompts()[0][:2]
    noise = torch.randn((2, *gen.backbone.latent_shape), generator=torch.Generator().manual_seed(5))
    tr.model.eval()
    want = tr.generator.sample(prompts, noise, 0.0, generator=torch.Generator().manual_seed(0))
    got = gen.sample(prompts, noise, 0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # The same adapters on the other teacher draw other images: the base teacher matters.
    meta["backbone_path"] = "teacher"
    (final / "generator.json").write_text(json.dumps(meta))
    other, _ = load_generator(final, asset_dir=world_assets)
    assert (other.sample(prompts, noise, 0.0, generator=torch.Generator().manual_seed(0)) - want).abs().max() > 1e-2
