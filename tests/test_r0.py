"""R0 / R0+: generator maths, the gradient surrogate, gradient flow, resume and preset smoke runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rzero.config import load_config
from rzero.config.schema import TrainConfig
from rzero.diffusion import ddim_sample
from rzero.rewards.base import Reward
from rzero.rewards.composite import CompositeReward
from rzero.utils.io import load_safetensors

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = ["batch_size=2", "log_every=1", "sample_every=1000", "track_every=0", "threads=2"]


class Brightness(Reward):
    """Prompt-free toy reward: mean brightness of the red channel (a real function of the image)."""

    name = "brightness"
    uses_prompt = False

    def score(self, images, prompts):
        return images[:, 0].mean((1, 2))


class Contrast(Reward):
    name = "contrast"
    uses_prompt = False

    def score(self, images, prompts):
        return 10.0 * images.flatten(1).std(1)


@pytest.fixture(scope="module")
def backbone(world_assets):
    from rzero.backbones import WorldBackbone

    return WorldBackbone(asset_dir=world_assets).eval()


def test_eta_zero_reproduces_ddim(backbone):
    from rzero.generator import FewStepGenerator

    gen = FewStepGenerator(backbone, steps=4)
    assert gen.timesteps.tolist() == [999, 749, 499, 249]
    noise = torch.randn((3, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    cond = backbone.encode_prompts(["a red circle", "a blue square", "one cross"])
    with torch.no_grad():
        ours = gen(noise, cond, eta=0.0, generator=torch.Generator().manual_seed(1)).x0
        ref = ddim_sample(lambda x, t: backbone.predict_x0(x, t, cond), noise, gen.timesteps, backbone.schedule,
                          eta=0.0, final="x0")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_eta_one_renoises_fully(backbone):
    """With eta = 1 (mix mode) the re-noised state forgets eps_k: different xi -> different output."""
    from rzero.generator import FewStepGenerator

    gen = FewStepGenerator(backbone, steps=2)
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    cond = backbone.encode_prompts(["a red circle"] * 2)
    with torch.no_grad():
        a = gen(noise, cond, 1.0, generator=torch.Generator().manual_seed(1)).x0
        b = gen(noise, cond, 1.0, generator=torch.Generator().manual_seed(2)).x0
        c = gen(noise, cond, 0.0, generator=torch.Generator().manual_seed(1)).x0
        d = gen(noise, cond, 0.0, generator=torch.Generator().manual_seed(2)).x0
    assert not torch.allclose(a, b)
    torch.testing.assert_close(c, d, rtol=0, atol=0)


@pytest.mark.parametrize("grad_from", [None, 1, 2, 3])
def test_grad_from_runs_earlier_steps_without_gradient(backbone, grad_from, monkeypatch):
    """R0+ truncation: network calls before step k run without autograd, later ones with it,
    and cutting the chain does not change the output's value."""
    from rzero.generator import FewStepGenerator

    gen = FewStepGenerator(backbone, steps=3)
    cond = backbone.encode_prompts(["a red circle", "a blue square"])
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = gen(noise, cond, 0.5, generator=torch.Generator().manual_seed(1)).x0
    calls = []
    predict = backbone.predict_x0

    def spy(x, t, c):
        out = predict(x, t, c)
        calls.append(out.requires_grad)
        return out

    monkeypatch.setattr(backbone, "predict_x0", spy)
    flags = [p.requires_grad for p in backbone.unet.parameters()]
    backbone.unet.requires_grad_(True)
    try:
        out = gen(noise, cond, 0.5, generator=torch.Generator().manual_seed(1), grad_from=grad_from).x0
    finally:
        for p, f in zip(backbone.unet.parameters(), flags):
            p.requires_grad_(f)
    first = 1 if grad_from is None else grad_from
    assert calls == [k >= first for k in (1, 2, 3)]
    torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="grad_from"):
        gen(noise, cond, 0.5, stop_at=2, grad_from=3)


def test_surrogate_gradient_equals_injected_direction():
    torch.manual_seed(0)
    rewards = {"brightness": Brightness().freeze(), "contrast": Contrast().freeze()}
    weights = {"brightness": 1.0, "contrast": 0.5}
    comp = CompositeReward(rewards, weights, normalize_grads=True, delta=1e-8)
    images = (torch.rand(4, 3, 8, 8) * 1.8 - 0.9).requires_grad_(True)
    loss, metrics = comp.loss(images, [""] * 4)
    (got,) = torch.autograd.grad(loss, images)
    expected = torch.zeros_like(images)
    for name, r in rewards.items():
        x = images.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(r(x, None).sum(), x)
        expected += weights[name] * g / (g.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-8)
    torch.testing.assert_close(got, -expected / images.numel(), rtol=1e-5, atol=1e-9)
    assert set(metrics) >= {"reward/brightness", "grad_norm/contrast"}


def test_unnormalized_option_is_plain_weighted_sum():
    comp = CompositeReward({"brightness": Brightness().freeze()}, {"brightness": 2.0}, normalize_grads=False)
    images = (torch.rand(4, 3, 8, 8) * 1.8 - 0.9).requires_grad_(True)
    loss, _ = comp.loss(images, [""] * 4)
    torch.testing.assert_close(loss, -2.0 * images[:, 0].mean((1, 2)).mean())


def _trainer(world_assets, out, overrides, preset="world_r0.yaml"):
    from rzero.trainers import R0Trainer

    cfg = load_config(TrainConfig, CONFIGS / preset, [*TINY, *overrides])
    return R0Trainer(cfg, out, asset_dir=world_assets)


def test_reward_gradient_reaches_trainable_weights_only(world_assets, tmp_path):
    tr = _trainer(world_assets, tmp_path, ["iterations=1"])
    loss, _ = tr.train_step(torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in tr.model.parameters()]
    assert all(g is not None for g in grads)
    nonzero = sum(int(g.abs().sum() > 0) for g in grads)
    assert nonzero > 0.9 * len(grads)
    for r in tr.reward.rewards.values():
        assert all(p.grad is None and not p.requires_grad for p in r.parameters())
    assert all(p.grad is None for p in tr.backbone.text_encoder.model.parameters())


def test_resume_equals_straight_run_bitwise(world_assets, tmp_path):
    straight = _trainer(world_assets, tmp_path / "a", ["iterations=4", "checkpoint_every=2"])
    straight.fit()
    first = _trainer(world_assets, tmp_path / "b", ["iterations=2", "checkpoint_every=2"])
    first.fit()
    resumed = _trainer(world_assets, tmp_path / "b", ["iterations=4", "checkpoint_every=2"])
    assert resumed.iteration == 0  # resume happens inside fit()
    resumed.fit()
    a = load_safetensors(tmp_path / "a" / "final" / "generator.safetensors")
    b = load_safetensors(tmp_path / "b" / "final" / "generator.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("world_r0*.yaml")))
def test_preset_smoke(world_assets, tmp_path, preset):
    tr = _trainer(world_assets, tmp_path, ["iterations=2", "checkpoint_every=1"], preset)
    final = tr.fit()
    from rzero.generator import load_generator

    gen, meta = load_generator(final, world_assets)
    assert meta["iteration"] == 2
    lines = (tmp_path / "stats.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert len(list((tmp_path / "checkpoints").glob("step_*"))) <= tr.cfg.keep_checkpoints


def test_tracking_logs_heldout_metrics(world_assets, tmp_path):
    tr = _trainer(world_assets, tmp_path, ["iterations=2", "track_every=2", "track_prompts=2", "log_every=5"])
    tr.fit()
    from rzero.utils.stats import read_jsonl

    rows = read_jsonl(tmp_path / "stats.jsonl")
    assert [r["step"] for r in rows] == [0, 2]
    for r in rows:
        assert 0.0 <= r["track/acc_L4"] <= 1.0 and r["track/world_fid"] >= 0
