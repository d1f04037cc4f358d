"""The sd15 (eps and v) and sd3 backbones against the Backbone contract, on tiny random models
saved in the diffusers layout (tests/tiny_sd.py), and 2-iteration R0 smoke runs on both."""

from __future__ import annotations

import json

import pytest
import torch

from rzero.backbones import BACKBONES, Backbone, SD3Backbone, SD15Backbone, make_backbone
from rzero.diffusion import Schedule, ddim_sample, x0_from_output
from rzero.utils.io import AssetError
from tiny_sd import Redness, prompt_file, tiny_sd3, tiny_sd15, tiny_sd15_v  # noqa: F401  (pytest fixtures)

PROMPTS = ["a red circle", "a cat on a sofa"]
KINDS = ["sd15", "sd15_v", "sd3"]


@pytest.fixture(scope="module")
def paths(tiny_sd15, tiny_sd15_v, tiny_sd3):  # noqa: F811
    return {"sd15": tiny_sd15, "sd15_v": tiny_sd15_v, "sd3": tiny_sd3}


def _make(paths, kind, **kw):
    return make_backbone("sd3" if kind == "sd3" else "sd15", path=str(paths[kind]), **kw)


@pytest.fixture(scope="module", params=KINDS)
def case(request, paths):
    """(kind, backbone in eval mode): shared by the read-only contract checks."""
    return request.param, _make(paths, request.param).eval()


def noisy(b, n: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n, *b.latent_shape), generator=g)
    if b.schedule.kind == "vp":
        t = torch.randint(0, b.schedule.num_train_timesteps, (n,), generator=g)
    else:
        t = torch.rand((n,), generator=g).clamp(0.05, 0.95)
    eps = torch.randn(x0.shape, generator=g)
    a, s = b.schedule.alpha(t).view(-1, 1, 1, 1), b.schedule.sigma(t).view(-1, 1, 1, 1)
    return a * x0 + s * eps, t


# ---------------------------------------------------------------------------------- contract


def test_protocol_and_registry(case):
    kind, b = case
    assert isinstance(b, Backbone) and isinstance(b.schedule, Schedule)
    assert b.prediction_type == {"sd15": "epsilon", "sd15_v": "v_prediction", "sd3": "flow"}[kind]
    assert b.latent_shape == (4, 8, 8) and b.image_size == (16, 16)
    assert BACKBONES["sd15"] is SD15Backbone and BACKBONES["sd3"] is SD3Backbone


def test_schedule_read_from_scheduler_config(case, paths):
    kind, b = case
    if kind == "sd3":
        from diffusers import FlowMatchEulerDiscreteScheduler

        ref = FlowMatchEulerDiscreteScheduler.from_pretrained(paths[kind], subfolder="scheduler")
        assert b.schedule.shift == ref.config.shift == 3.0
        # The generator's top step is the shifted grid point: shift(0.75) = 3 * 0.75 / (1 + 2 * 0.75) = 0.9.
        assert b.schedule.evenly_spaced_timesteps(4).tolist() == pytest.approx([1.0, 0.9, 0.75, 0.5])
    else:
        from diffusers import DDPMScheduler

        ref = DDPMScheduler.from_pretrained(paths[kind], subfolder="scheduler")
        torch.testing.assert_close(b.schedule.alphas_cumprod, ref.alphas_cumprod, rtol=1e-5, atol=1e-6)


def test_encode_prompts_matches_stock_pipeline(case, paths):
    """Token states equal what StableDiffusion(3)Pipeline.encode_prompt feeds the denoiser."""
    kind, b = case
    cond = b.encode_prompts(PROMPTS + [""])
    if kind == "sd3":
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(paths[kind], text_encoder_3=None, tokenizer_3=None)
        pe, _, pooled, _ = pipe.encode_prompt(PROMPTS, PROMPTS, PROMPTS, do_classifier_free_guidance=False)
        states, pool = cond
        assert states.shape == (3, 77 + 256, 64) and pool.shape == (3, 64)
        torch.testing.assert_close(states[:2], pe)
        torch.testing.assert_close(pool[:2], pooled)
        assert torch.equal(states[:2], b.encode_prompts(PROMPTS)[0])
        assert not states.requires_grad and not pool.requires_grad
    else:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(paths[kind], safety_checker=None)
        pe, _ = pipe.encode_prompt(PROMPTS, "cpu", 1, False)
        assert cond.shape == (3, 77, 32) and cond.dtype == torch.float32 and not cond.requires_grad
        torch.testing.assert_close(cond[:2], pe)
        assert torch.equal(cond[:2], b.encode_prompts(PROMPTS))
    e1, e2 = b.empty_cond(2), b.encode_prompts(["", ""])
    for x, y in zip(e1 if kind == "sd3" else [e1], e2 if kind == "sd3" else [e2]):
        assert torch.equal(x, y)


@torch.no_grad()
def test_predict_and_predict_x0(case):
    kind, b = case
    x_t, t = noisy(b)
    cond = b.encode_prompts(PROMPTS)
    out = b.predict(x_t, t, cond)
    assert out.shape == x_t.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    x0 = b.predict_x0(x_t, t, cond)
    torch.testing.assert_close(x0, x0_from_output(out, x_t, t, b.schedule, b.prediction_type))
    # Each parameterization written out (SPEC 0).
    if kind == "sd3":
        expected = x_t - t.view(-1, 1, 1, 1) * out
    else:
        abar = b.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
        if kind == "sd15":
            expected = (x_t - (1 - abar).sqrt() * out) / abar.sqrt()
        else:
            expected = abar.sqrt() * x_t - (1 - abar).sqrt() * out
    torch.testing.assert_close(x0, expected, rtol=1e-4, atol=1e-4)
    # CFG: scale 1 is the conditional prediction; other scales extrapolate from the unconditional.
    uncond = b.empty_cond(2)
    torch.testing.assert_close(b.guided_x0(x_t, t, cond, uncond, 1.0), x0)
    x0_u = b.predict_x0(x_t, t, uncond)
    torch.testing.assert_close(b.guided_x0(x_t, t, cond, uncond, 3.0), x0_u + 3.0 * (x0 - x0_u), rtol=1e-4,
                               atol=1e-4)


def test_decode_uses_vae_scaling_and_shift(case):
    kind, b = case
    z = torch.randn((2, *b.latent_shape), generator=torch.Generator().manual_seed(1))
    img = b.decode(z)
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    shift = b.vae.config.shift_factor if kind == "sd3" else 0.0
    with torch.no_grad():
        ref = b.vae.decode(z / b.vae.config.scaling_factor + shift).sample
    torch.testing.assert_close(img.detach(), ref)
    assert not torch.equal(img.detach(), b.vae.decode(z).sample.detach())  # the scaling is not a no-op


def test_sample_shape_range_determinism(case):
    kind, b = case
    noise = torch.randn((2, *b.latent_shape), generator=torch.Generator().manual_seed(0))
    a = b.sample(PROMPTS, noise, steps=2, cfg=2.0)
    assert a.shape == (2, 3, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b.sample(PROMPTS, noise.clone(), steps=2, cfg=2.0))
    assert not torch.equal(a, b.sample(PROMPTS, noise + 1.0, steps=2, cfg=2.0))


def test_eta_zero_generator_is_ddim(case):
    from rzero.generator import FewStepGenerator

    kind, b = case
    gen = FewStepGenerator(b, steps=4)
    noise = torch.randn((2, *b.latent_shape), generator=torch.Generator().manual_seed(0))
    cond = b.encode_prompts(PROMPTS)
    with torch.no_grad():
        ours = gen(noise, cond, 0.0, generator=torch.Generator()).x0
        ref = ddim_sample(lambda x, t: b.predict_x0(x, t, cond), noise, gen.timesteps, b.schedule, final="x0")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_denoiser_only(paths, kind):
    b = _make(paths, kind)
    params = list(b.trainable_parameters())
    assert params and all(any(p is q for q in b.unet.parameters()) for p in params)
    b.unet.requires_grad_(True)
    x_t, t = noisy(b, seed=3)
    loss = b.decode(b.predict_x0(x_t, t, b.encode_prompts(PROMPTS))).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    frozen = [b.vae, b.text_encoder] + ([b.text_encoder_2] if kind == "sd3" else [])
    for m in frozen:
        assert all(not p.requires_grad and p.grad is None for p in m.parameters())


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_gradient_checkpointing_switch_keeps_gradients(paths, kind):
    grads = []
    for on in (False, True):
        b = _make(paths, kind, gradient_checkpointing=on)
        assert b.unet.is_gradient_checkpointing == on and b.gradient_checkpointing == on
        b.unet.train().requires_grad_(True)
        x_t, t = noisy(b, seed=4)
        b.decode(b.predict_x0(x_t, t, b.encode_prompts(PROMPTS))).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in b.unet.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_bf16_networks_with_float32_sampler_state(paths, kind):
    b = _make(paths, kind, dtype="bfloat16")
    assert b.unet.dtype == b.vae.dtype == b.text_encoder.dtype == torch.bfloat16
    x_t, t = noisy(b)
    with torch.no_grad():
        out = b.predict(x_t, t, b.encode_prompts(PROMPTS))
        ref = _make(paths, kind).predict(x_t, t, _make(paths, kind).encode_prompts(PROMPTS))
        img = b.decode(x_t)
    assert out.dtype == img.dtype == torch.float32
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 rounding only


# ------------------------------------------------------------------------------- errors


def test_missing_local_folder_is_one_line_asset_error(tmp_path):
    missing = tmp_path / "nope" / "sd15"
    with pytest.raises(AssetError, match=r"model folder '.*nope/sd15' not found.*backbone_path") as e:
        SD15Backbone(str(missing))
    assert "\n" not in str(e.value)
    with pytest.raises(AssetError, match="not a diffusers model folder"):
        SD3Backbone(str(tmp_path))
    with pytest.raises(AssetError, match="needs a model"):
        SD15Backbone(None)


def test_uncached_hub_id_offline_is_asset_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AssetError, match=r"rzero-test/not-a-model.*HF_HUB_OFFLINE=1") as e:
        SD15Backbone("rzero-test/not-a-model")
    assert "\n" not in str(e.value)


def test_incomplete_folder_names_missing_part(paths, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(paths["sd15"], broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(AssetError, match="no vae/ folder"):
        SD15Backbone(str(broken))
    cfg = json.loads((broken / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = "sample"
    (broken / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    shutil.copytree(paths["sd15"] / "vae", broken / "vae")
    with pytest.raises(ValueError, match="prediction_type 'sample' is not supported"):
        SD15Backbone(str(broken))


# ------------------------------------------------------------------------------ R0 smoke runs


def r0_config(path, kind, prompt_file, *extra):  # noqa: F811
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig

    return load_config(TrainConfig, None, [f"backbone={kind}", f"backbone_path={path}", f"prompt_file={prompt_file}",
                                           "iterations=2", "batch_size=2", "log_every=1", "sample_every=2",
                                           "checkpoint_every=2", "track_every=0", "threads=1", "ema_decay=0",
                                           "reward.names=[redness]", "optim.lr=0.02", *extra])


@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_r0_smoke_run(paths, kind, prompt_file, tmp_path):  # noqa: F811
    from rzero.generator import load_generator
    from rzero.trainers import R0Trainer

    tr = R0Trainer(r0_config(paths[kind], kind, prompt_file), tmp_path, rewards={"redness": Redness().freeze()})
    before = {n: p.detach().clone() for n, p in tr.backbone.unet.named_parameters()}
    frozen_before = [p.detach().clone() for p in tr.backbone.vae.parameters()]
    final = tr.fit()
    stats = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [s["step"] for s in stats] == [1, 2]
    assert all("reward/redness" in s and s["grad_norm/redness"] > 0 for s in stats)
    assert (tmp_path / "samples" / "step_000002.png").is_file()
    changed = sum(not torch.equal(before[n], p) for n, p in tr.backbone.unet.named_parameters())
    assert changed > 0.5 * len(before)  # the reward gradient reached the denoiser
    assert all(torch.equal(a, p) for a, p in zip(frozen_before, tr.backbone.vae.parameters()))
    gen, meta = load_generator(final)
    assert meta["backbone"] == kind and meta["lora"]["rank"] == 0 and meta["iteration"] == 2
    for n, p in gen.backbone.unet.named_parameters():
        torch.testing.assert_close(p, dict(tr.backbone.unet.named_parameters())[n].detach())


def test_training_prompts_come_from_the_prompt_file(prompt_file):  # noqa: F811
    from rzero.data.prompts import grid_prompts, prompt_source

    src = prompt_source("sd15", str(prompt_file))
    lines = [ln.strip() for ln in prompt_file.read_text().splitlines() if ln.strip()]
    drawn = src(64, torch.Generator().manual_seed(0))
    assert set(drawn) == set(lines)  # every prompt drawn (64 draws of 4), nothing else, no blank line
    assert drawn == src(64, torch.Generator().manual_seed(0))
    assert grid_prompts("sd3", str(prompt_file)) == (lines[:4], 2)
    with pytest.raises(ValueError, match="has no built-in prompts; set prompt_file"):
        prompt_source("sd15", "")
    with pytest.raises(ValueError, match="not found"):
        prompt_source("sd15", str(prompt_file) + ".missing")


def test_config_requires_path_and_prompts_for_sd():
    from rzero.config import ConfigError, load_config
    from rzero.config.schema import TrainConfig

    with pytest.raises(ConfigError, match="needs backbone_path"):
        load_config(TrainConfig, None, ["backbone=sd15", "prompt_file=p.txt"])
    with pytest.raises(ConfigError, match="needs prompt_file"):
        load_config(TrainConfig, None, ["backbone=sd3", "backbone_path=x/y"])
    with pytest.raises(ConfigError, match="backbone_dtype"):
        load_config(TrainConfig, None, ["backbone_dtype=int8"])


@pytest.mark.parametrize("preset", ["sd15_r0", "sd15_r0plus", "sd3_r0"])
def test_real_scale_presets_validate(preset, capsys):
    from pathlib import Path

    from rzero.cli.main import main

    path = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"
    assert main(["train", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"backbone: {'sd3' if preset.startswith('sd3') else 'sd15'}" in out and "hps-v2.1" in out


def test_sd3_preset_lora_targets_exist_in_the_sd3_transformer(tiny_sd3):  # noqa: F811
    from pathlib import Path

    from rzero.backbones.lora import apply_lora, lora_layers
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig

    cfg = load_config(TrainConfig, Path(__file__).resolve().parents[1] / "configs" / "sd3_r0.yaml", [])
    b = SD3Backbone(str(tiny_sd3))
    apply_lora(b.unet, 2, cfg.lora.alpha, cfg.lora.target_modules)
    suffixes = {n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0" for n, _ in lora_layers(b.unet)}
    assert suffixes == set(cfg.lora.target_modules)


def test_sd_tracking_scores_a_fixed_prompt_subset(paths, prompt_file, tmp_path):  # noqa: F811
    """SPEC 4's training curves: every training reward on a fixed, seeded prompt subset; the same
    numbers whatever the batch size, logged as track/reward_<name>."""
    from rzero.config import ConfigError
    from rzero.trainers import R0Trainer
    from rzero.data.prompts import tracking_subset

    lines = [ln.strip() for ln in prompt_file.read_text().splitlines() if ln.strip()]
    subset = tracking_subset(prompt_file, 3)
    assert subset == tracking_subset(prompt_file, 3) and len(subset) == 3
    assert subset == [p for p in lines if p in subset]  # file order
    assert tracking_subset(prompt_file, 100) == lines
    values = []
    for batch in (2, 3):
        cfg = r0_config(paths["sd15"], "sd15", prompt_file, "track_every=1", f"track_prompt_file={prompt_file}",
                        "track_prompts=3", f"batch_size={batch}", "iterations=1")
        tr = R0Trainer(cfg, tmp_path / f"b{batch}", rewards={"redness": Redness().freeze()})
        values.append(tr.track()["reward_redness"])
        if batch == 2:
            tr.fit()
            rows = [json.loads(line) for line in (tmp_path / "b2" / "stats.jsonl").read_text().splitlines()]
            assert [r["step"] for r in rows if "track/reward_redness" in r] == [0, 1]
    assert values[0] == pytest.approx(values[1], abs=1e-5)
    with pytest.raises(ConfigError, match="track_prompt_file is for sd15/sd3"):
        from rzero.config import load_config
        from rzero.config.schema import TrainConfig

        load_config(TrainConfig, None, [f"track_prompt_file={prompt_file}"])
    with pytest.raises(ValueError, match="track_prompt_file .* not found"):
        R0Trainer(r0_config(paths["sd15"], "sd15", prompt_file, "track_every=1",
                            f"track_prompt_file={prompt_file}.missing"), tmp_path / "bad",
                  rewards={"redness": Redness().freeze()})
