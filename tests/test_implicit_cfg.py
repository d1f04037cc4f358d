"""The implicit CFG reward (SPEC 1.2) and CompositeReward's extra directions (issue 3 leftovers)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rzero.config import load_config
from rzero.config.schema import RewardConfig, TrainConfig
from rzero.diffusion import FlowSchedule, VPSchedule
from rzero.losses import implicit_cfg_direction
from rzero.rewards.base import Reward
from rzero.rewards.composite import CompositeReward

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


class GaussianTeacher:
    """An exact 'pretrained model' for data x0 ~ N(mu_c, s0^2 I): its posterior mean is known in closed form.

    p_t(x_t | c) = N(a mu_c, (a^2 s0^2 + b^2) I), so s(x_t|c) = -(x_t - a mu_c) / (a^2 s0^2 + b^2) and
    E[x0 | x_t, c] = mu_c + a s0^2 (x_t - a mu_c) / (a^2 s0^2 + b^2). The condition is mu_c itself.
    """

    def __init__(self, schedule, s0: float = 0.7):
        self.schedule, self.s0 = schedule, s0

    def _ab(self, t, x):
        a, b = self.schedule.alpha(t), self.schedule.sigma(t)
        return a.view(-1, 1, 1, 1).to(x.dtype), b.view(-1, 1, 1, 1).to(x.dtype)

    def predict_x0(self, x_t, t, mu):
        a, b = self._ab(t, x_t)
        return mu + a * self.s0 ** 2 * (x_t - a * mu) / (a * a * self.s0 ** 2 + b * b)

    def score(self, x_t, t, mu):
        a, b = self._ab(t, x_t)
        return -(x_t - a * mu) / (a * a * self.s0 ** 2 + b * b)

    def cat_conds(self, a, b):
        return torch.cat([a, b])


@pytest.mark.parametrize("schedule,t", [(VPSchedule(), torch.tensor([20, 300, 700, 990])),
                                        (FlowSchedule(shift=3.0), torch.tensor([0.05, 0.3, 0.6, 0.95]))])
def test_direction_is_a_t_times_the_cfg_score_difference(schedule, t):
    g = torch.Generator().manual_seed(0)
    teacher = GaussianTeacher(schedule)
    # float64: at small t the 1 / b_t^2 factor magnifies float32 rounding of the x0 difference.
    x0, noise, mu_c = (torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
    mu_u = torch.zeros_like(mu_c)
    got = implicit_cfg_direction(teacher, x0, t, noise, mu_c, mu_u)
    a, b = teacher._ab(t, x0)
    x_t = a * x0 + b * noise
    expected = a * (teacher.score(x_t, t, mu_c) - teacher.score(x_t, t, mu_u))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Closed form: a^2 (mu_c - mu_u) / (a^2 s0^2 + b^2), independent of x0 and the noise.
    torch.testing.assert_close(got, a * a * (mu_c - mu_u) / (a * a * 0.49 + b * b), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def backbone(world_assets):
    from rzero.backbones import WorldBackbone

    return WorldBackbone(asset_dir=world_assets).eval()


def test_direction_matches_the_world_teachers_eps_scores(backbone):
    """On the world's eps-prediction teacher: a_t (s_c - s_u) with s = -eps_hat / b_t."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, *backbone.latent_shape, generator=g) * 0.5
    noise = torch.randn(3, *backbone.latent_shape, generator=g)
    t = torch.tensor([50, 400, 900])
    cond, uncond = backbone.encode_prompts(["a red circle", "a blue square on the left", "a cross"]), \
        backbone.empty_cond(3)
    with torch.no_grad():
        got = implicit_cfg_direction(backbone, x0, t, noise, cond, uncond)
        a = backbone.schedule.alpha(t).view(-1, 1, 1, 1)
        b = backbone.schedule.sigma(t).view(-1, 1, 1, 1)
        x_t = a * x0 + b * noise
        eps_c, eps_u = backbone.predict(x_t, t, cond), backbone.predict(x_t, t, uncond)
    torch.testing.assert_close(got, a * (-eps_c / b + eps_u / b), rtol=1e-3, atol=1e-4)
    assert got.abs().sum() > 0


def test_config_fields_are_validated():
    assert RewardConfig().cfg_weight == 0.0
    with pytest.raises(ValueError, match="cfg_weight"):
        RewardConfig(cfg_weight=-1.0)
    with pytest.raises(ValueError, match="cfg_t_min"):
        RewardConfig(cfg_t_min=0.5, cfg_t_max=0.4)
    with pytest.raises(ValueError, match="options given for rewards not in names: nope"):
        RewardConfig(options={"nope": {}})


def test_world_r0_run_with_implicit_cfg(world_assets, tmp_path):
    from rzero.trainers import R0Trainer

    cfg = load_config(TrainConfig, CONFIGS / "world_r0.yaml",
                      ["batch_size=2", "log_every=1", "sample_every=1000", "track_every=0", "iterations=2",
                       "checkpoint_every=2", "generator.steps=2", "reward.cfg_weight=1.0", "reward.cfg_t_max=0.9"])
    tr = R0Trainer(cfg, tmp_path, asset_dir=world_assets)
    teacher = tr.cfg_teacher
    assert teacher is not None and teacher.unet is not tr.backbone.unet
    assert teacher.text_encoder is tr.backbone.text_encoder  # shared, not copied
    before = {k: v.clone() for k, v in teacher.unet.state_dict().items()}
    tr.fit()
    from rzero.utils.stats import read_jsonl

    rows = read_jsonl(tmp_path / "stats.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(r["grad_norm/cfg"] > 0 for r in rows)
    # The teacher stays the pretrained network while the generator moves.
    assert not any(p.requires_grad for p in teacher.unet.parameters())
    for k, v in teacher.unet.state_dict().items():
        assert torch.equal(v, before[k]), k
    moved = any(not torch.equal(p, before[n]) for n, p in tr.denoiser.named_parameters())
    assert moved


def test_no_teacher_copy_without_cfg_weight(world_assets, tmp_path):
    from rzero.trainers import R0Trainer

    cfg = load_config(TrainConfig, CONFIGS / "world_r0.yaml", ["batch_size=2", "track_every=0", "iterations=1"])
    assert R0Trainer(cfg, tmp_path, asset_dir=world_assets).cfg_teacher is None


# ------------------------------------------------------------------ CompositeReward: extra directions


class Brightness(Reward):
    name = "brightness"
    uses_prompt = False

    def score(self, images, prompts):
        return images[:, 0].mean((1, 2))


def _images(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, 8, 8, generator=g) * 1.8 - 0.9).requires_grad_(True)


def test_plain_sum_mode_keeps_extra_directions():
    """Regression: normalize_grads=False used to drop extra directions (R0+ hires guidance) silently."""
    comp = CompositeReward({"brightness": Brightness().freeze()}, {"brightness": 2.0}, normalize_grads=False)
    images = _images()
    extra = torch.randn(images.shape, generator=torch.Generator().manual_seed(1))
    loss, metrics = comp.loss(images, [""] * 4, {"hires": (0.5, extra)})
    loss.backward()
    b = len(images)
    grad_brightness = torch.zeros_like(images)
    grad_brightness[:, 0] = 1.0 / 64  # d mean(red) / d pixel
    # As if -2 mean(r) - 0.5 mean(r_extra) with grad r_extra = extra: dL/dx = -(2 grad_r + 0.5 extra) / B.
    torch.testing.assert_close(images.grad, -(2.0 * grad_brightness + 0.5 * extra) / b)
    assert metrics["grad_norm/hires"] > 0


def test_normalized_extra_direction_on_latents():
    """(w, grad, at): a direction on another tensor (the latent x0) is normalized and injected there."""
    comp = CompositeReward({"brightness": Brightness().freeze()}, normalize_grads=True, delta=0.0)
    latents = torch.randn(2, 12, 4, 4, generator=torch.Generator().manual_seed(2), requires_grad=True)
    images = F.pixel_shuffle(latents, 2)  # (2, 3, 8, 8), as the world backbone decodes
    g = torch.randn(latents.shape, generator=torch.Generator().manual_seed(3))
    loss, _ = comp.loss(images, ["", ""], {"cfg": (3.0, g, latents)})
    loss.backward()
    n = images.numel()
    x = images.detach().requires_grad_(True)
    (gr,) = torch.autograd.grad(Brightness()(x).sum(), x)
    r_dir = F.pixel_unshuffle(gr / gr.flatten(1).norm(dim=1).view(-1, 1, 1, 1), 2)
    c_dir = 3.0 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    torch.testing.assert_close(latents.grad, -(r_dir + c_dir) / n)


def test_extra_direction_of_the_wrong_shape_is_refused():
    comp = CompositeReward({"brightness": Brightness().freeze()})
    images = _images()
    with pytest.raises(ValueError, match="extra direction 'hires': gradient shape"):
        comp.loss(images, [""] * 4, {"hires": (1.0, torch.zeros(4, 3, 4, 4))})


def test_reward_names_with_dots_are_accepted():
    comp = CompositeReward({"hps-v2.1": Brightness().freeze()})
    _, metrics = comp.loss(_images(), [""] * 4)
    assert "reward/hps-v2.1" in metrics
