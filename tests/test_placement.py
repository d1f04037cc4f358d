"""Placement and precision (trainers/placement.py): every tensor a trainer holds is on the
accelerator's device, trained networks keep float32 master weights, noise follows the data.

There is no GPU here, so placement is proven with the "meta" device: `Trainer.place` must move
every tensor reachable from the trainer (`reachable_tensors` walks its attributes instead of
asking the trainer what it owns), and the steps that draw noise must run on meta inputs,
which fails on any tensor left on the CPU. benchmarks/gpu_check.py runs every preset on a
real GPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rzero.config import ConfigError, load_config
from rzero.config.schema import TrainConfig
from rzero.trainers import TRAINERS
from rzero.trainers.placement import make_accelerator, misplaced, not_fp32, reachable_tensors, same_device
from tiny_sd import Redness, prompt_file, tiny_sd3, tiny_sd15  # noqa: F401  (pytest fixtures)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["batch_size=2", "log_every=1", "sample_every=1000", "track_every=0", "threads=2"]
META = torch.device("meta")


def _trainer(preset, out, overrides=(), **kw):
    cfg = load_config(TrainConfig, CONFIGS / preset, [*TINY, *overrides])
    return TRAINERS[cfg.method](cfg, out, **kw)


def _off(tensors, device) -> list[str]:
    return [f"{p} ({t.device})" for p, t in tensors if not same_device(t.device, device)]


WORLD = [("world_r0plus.yaml", ["reward.cfg_weight=1.0"]), ("world_distar.yaml", []), ("world_dipp4.yaml", []),
         ("world_r0.yaml", ["lora.rank=2"])]


@pytest.mark.parametrize("preset,overrides", WORLD, ids=[p for p, _ in WORLD])
def test_every_tensor_follows_the_engine_device_and_trained_weights_are_fp32(world_assets, tmp_path, preset,
                                                                             overrides):
    """R0+ (sharpness classifier, implicit-CFG teacher, regularizer), DI*, DI++ and R0 with LoRA:
    after setup everything is on engine.device; place(meta) then moves every reachable tensor."""
    tr = _trainer(preset, tmp_path, ["iterations=1", *overrides], asset_dir=world_assets)
    tensors = reachable_tensors(tr)
    assert _off(tensors, tr.device) == [] and misplaced(tr.owned_modules(), tr.device) == []
    assert not_fp32(tr.trained_modules()) == []
    assert all(t.dtype == torch.float32 for t in tr.ema.values())
    names = " ".join(p for p, _ in tensors)
    expected = {"world_r0plus.yaml": ("sharpness", "cfg_teacher", "regularizer.theta0_0", "reward.rewards"),
                "world_distar.yaml": ("ref", "fake.net", "reward.rewards"),
                "world_dipp4.yaml": ("ref", "fake.net"), "world_r0.yaml": ("lora_A",)}[preset]
    assert all(e in names for e in expected), expected  # the walk saw the method's own networks
    tr.place(META)
    assert _off(reachable_tensors(tr), META) == []


def test_noise_is_drawn_where_the_data_is(world_assets, tmp_path):
    """The R0+ and implicit-CFG directions, the generator and psi's loss run on meta inputs: a
    draw left on the CPU would meet a meta tensor and raise."""
    r0 = _trainer("world_r0plus.yaml", tmp_path / "r0", ["iterations=1", "reward.cfg_weight=1.0"],
                  asset_dir=world_assets)
    cond = r0.backbone.encode_prompts(["a red circle", "a blue square"])
    r0.place(META)
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(2, 3, 32, 32, device=META)
    assert r0.hires_direction(images, g).device == META
    x0 = torch.zeros(2, *r0.backbone.latent_shape, device=META)
    assert r0.cfg_direction(x0, cond.to(META), g).device == META
    assert r0.model(x0, cond.to(META), torch.full((2,), 0.5), gen=g).device == META

    di = _trainer("world_dipp4.yaml", tmp_path / "di", ["iterations=1"], asset_dir=world_assets)
    cond, uncond = di.backbone.encode_prompts(["a red circle", "one cross"]), di.empty_cond(2)
    di.place(META)
    assert di.fake.denoising_loss(x0, cond.to(META), uncond.to(META), g).device == META


def test_sd_bf16_presets_keep_fp32_master_weights_and_frozen_parts_in_bf16(tiny_sd15, prompt_file, tmp_path):  # noqa: F811
    ov = [f"backbone_path={tiny_sd15}", f"prompt_file={prompt_file}", "iterations=1"]
    r0 = _trainer("sd15_r0.yaml", tmp_path / "r0", ov, rewards={"redness": Redness().freeze()})
    assert r0.cfg.backbone_dtype == "bfloat16" and not_fp32(r0.trained_modules()) == []
    assert r0.backbone.vae.dtype == torch.bfloat16 and r0.regularizer.theta0_0.dtype == torch.float32
    di = _trainer("sd15_distar.yaml", tmp_path / "di", ov, rewards={"redness": Redness().freeze()})
    assert not_fp32(di.trained_modules()) == [] and set(di.trained_modules()) == {"denoiser", "fake_score"}
    assert next(di.ref.unet.parameters()).dtype == torch.bfloat16  # the frozen reference saves memory
    for tr in (r0, di):
        assert _off(reachable_tensors(tr), tr.device) == []
        tr.place(META)
        assert _off(reachable_tensors(tr), META) == []


def test_distar_bf16_preset_trains_without_a_dtype_override(tiny_sd15, prompt_file, tmp_path):  # noqa: F811
    """configs/sd15_distar.yaml as shipped (bf16 weights, bf16 mixed precision, lr 1e-6) on the
    tiny SD1.5: the generator's and psi's weights move. Stepped in bf16 they would not: at lr
    1e-6 nearly every update is below a bf16 weight's rounding step."""
    cfg = load_config(TrainConfig, CONFIGS / "sd15_distar.yaml", [
        f"backbone_path={tiny_sd15}", f"prompt_file={prompt_file}", "iterations=2", "batch_size=2", "grad_accum=1",
        "sample_every=1000", "threads=2", "di.diagnostics_every=1", "checkpoint_every=2", "log_every=1"])
    assert (cfg.backbone_dtype, cfg.mixed_precision, cfg.optim.lr) == ("bfloat16", "bf16", 1e-6)
    tr = TRAINERS["distar"](cfg, tmp_path, rewards={"redness": Redness().freeze()})
    gen0 = {n: p.detach().clone() for n, p in tr.named_trainable()}
    fake0 = {n: p.detach().clone() for n, p in tr.fake.net.named_parameters()}
    tr.fit()

    def moved(before, now) -> float:  # fraction of weight elements that changed
        changed = sum(int((now[n] != v).sum()) for n, v in before.items())
        return changed / sum(v.numel() for v in before.values())

    assert moved(gen0, dict(tr.named_trainable())) > 0.5
    assert moved(fake0, dict(tr.fake.net.named_parameters())) > 0.5
    # What bf16 weights would have kept of the same update: almost nothing.
    now = dict(tr.named_trainable())
    kept = sum(int((now[n].bfloat16() != v.bfloat16()).sum()) for n, v in gen0.items())
    assert kept / sum(v.numel() for v in gen0.values()) < 0.2
    from rzero.utils.stats import read_jsonl

    rows = read_jsonl(tmp_path / "stats.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["fake/loss"]) for r in rows)


# ------------------------------------------------------------------ the device switch


def test_device_switch_forces_the_cpu_even_with_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    acc = make_accelerator(TrainConfig(device="cpu"))
    assert acc.device.type == "cpu"


def test_device_cuda_without_a_gpu_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device=cuda but torch sees no GPU; use device=auto") as e:
        make_accelerator(TrainConfig(device="cuda"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="device must be 'auto', 'cpu' or 'cuda'"):
        load_config(TrainConfig, CONFIGS / "world_r0.yaml", ["device=tpu"])


def test_one_process_switches_precision_between_runs():
    """accelerate refuses a second precision in one process; the engine resets it (tests and
    `rzero bench` train several runs in a row)."""
    assert make_accelerator(TrainConfig(mixed_precision="bf16", device="cpu")).mixed_precision == "bf16"
    assert make_accelerator(TrainConfig(mixed_precision="no", device="cpu")).mixed_precision == "no"


# ------------------------------------------------------------------ schedule-aware validation


@pytest.mark.parametrize("preset,overrides,match", [
    ("sd15_r0plus.yaml", ["r0plus.hires_guidance=true"], "hires_guidance .* cannot guide backbone 'sd15'"),
    ("sd3_r0.yaml", ["r0plus.hires_guidance=true"], "cannot guide backbone 'sd3'"),
    ("world_r0plus.yaml", ["r0plus.hires_t_max=1001"], "hires_t_max must be <= 1000"),
    ("world_distar.yaml", ["di.t_init=1000"], r"di.t_init = 1000.0 is outside the backbone's schedule \[0, 999\]"),
    ("sd15_distar.yaml", ["backbone=sd3", "di.t_init=399"], r"outside the backbone's schedule \[0, 1\]"),
    ("world_dipp.yaml", ["di.t_init=399"], "di.t_init is the one-step DI\\* generator's timestep"),
    ("world_distar.yaml", ["lora.rank=4"], "LoRA is not supported"),
    ("world_distar.yaml", ["mixed_precision=fp16"], "use mixed_precision=bf16"),
    ("world_r0.yaml", ["generator.timesteps=[1200, 749, 499, 249]"], r"timesteps\[0\] = 1200.0 is outside the backbone's schedule"),
])
def test_options_of_another_backbone_or_method_are_refused_in_one_line(preset, overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_config(TrainConfig, CONFIGS / preset, ["prompt_file=p.txt", *overrides])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("overrides,match", [
    (["di.t_init=1500"], r"di.t_init = 1500 is outside the backbone's schedule \[0, 999\]"),
    (["generator.steps=1", "generator.timesteps=[1000]"], r"timesteps\[0\] = 1000.0 is outside"),
])
def test_sd15_schedule_is_checked_when_the_model_is_loaded(tiny_sd15, prompt_file, tmp_path, overrides, match):  # noqa: F811
    """sd15 reads its schedule from the model folder: its ranges are checked by the trainer."""
    ov = [f"backbone_path={tiny_sd15}", f"prompt_file={prompt_file}", "iterations=1", *overrides]
    with pytest.raises(ValueError, match=match) as e:
        _trainer("sd15_distar.yaml", tmp_path, ov, rewards={"redness": Redness().freeze()})
    assert "\n" not in str(e.value)
