"""The world backbone against the Backbone protocol, and the pinned world evaluation protocol."""

from __future__ import annotations

import math

import pytest
import torch

from rzero.backbones import BACKBONES, Backbone, WorldBackbone, make_backbone
from rzero.config.schema import EvalConfig
from rzero.diffusion import Schedule, add_noise, x0_from_output
from rzero.eval.metrics import frechet_distance, seed_diversity
from rzero.eval.world_eval import (ATTRIBUTE_NAMES, eval_prompt_set, evaluate_world, real_source, render_real,
                                   teacher_source)
from rzero.utils.seeding import randn_per_image
from rzero.world.render import render
from rzero.world.scene import complete_specs, match, sample_training_specs

PROMPTS = ["a red circle", "a small blue square on the left"]


@pytest.fixture(scope="module")
def backbone(world_assets) -> WorldBackbone:
    return WorldBackbone(asset_dir=world_assets).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return render(complete_specs(sample_training_specs(n, g), g), g)


def noisy(backbone, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = backbone.encode_images(images(n, seed))
    t = torch.randint(0, backbone.schedule.num_train_timesteps, (n,), generator=g)
    return add_noise(x0, torch.randn(x0.shape, generator=g), t, backbone.schedule), t


# -------------------------------------------------------------------------------- backbone


def test_world_backbone_satisfies_protocol(backbone):
    assert isinstance(backbone, Backbone)
    assert isinstance(backbone.schedule, Schedule)
    assert backbone.prediction_type == "epsilon"
    assert backbone.latent_shape == (12, 16, 16)
    assert BACKBONES["world"] is WorldBackbone
    with pytest.raises(ValueError, match="unknown backbone 'nope'"):
        make_backbone("nope")


def test_encode_prompts_shape(backbone):
    cond = backbone.encode_prompts(PROMPTS + [""])
    assert cond.shape == (3, 32, 384) and cond.dtype == torch.float32
    assert torch.isfinite(cond).all() and not cond.requires_grad
    assert torch.equal(cond[:2], backbone.encode_prompts(PROMPTS))  # cached or not, the same
    assert torch.equal(backbone.empty_cond(2), backbone.encode_prompts(["", ""]))


@torch.no_grad()
def test_predict_and_predict_x0(backbone):
    x_t, t = noisy(backbone, 2)
    assert x_t.shape == (2, 12, 16, 16)
    cond = backbone.encode_prompts(PROMPTS)
    out = backbone.predict(x_t, t, cond)
    assert out.shape == x_t.shape and torch.isfinite(out).all()
    x0 = backbone.predict_x0(x_t, t, cond)
    assert x0.shape == x_t.shape
    torch.testing.assert_close(x0, x0_from_output(out, x_t, t, backbone.schedule, "epsilon"))
    # eps parameterization written out: x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar).
    abar = backbone.schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    torch.testing.assert_close(x0, (x_t - (1 - abar).sqrt() * out) / abar.sqrt(), rtol=1e-4, atol=1e-4)
    # CFG at scale 1 is the conditional prediction; at other scales it extrapolates from uncond.
    uncond = backbone.empty_cond(2)
    torch.testing.assert_close(backbone.guided_x0(x_t, t, cond, uncond, 1.0), x0)
    x0_u = backbone.predict_x0(x_t, t, uncond)
    torch.testing.assert_close(backbone.guided_x0(x_t, t, cond, uncond, 3.0), x0_u + 3.0 * (x0 - x0_u),
                               rtol=1e-4, atol=1e-4)


def test_latents_are_exact_pixel_unshuffle(backbone):
    x = images(3, seed=5)
    z = backbone.encode_images(x)
    assert z.shape == (3, 12, 16, 16)
    assert torch.equal(backbone.decode(z), x)
    # decode is not clamped: out-of-range latents pass through (rewards need the gradient).
    assert torch.equal(backbone.decode(2 * z), 2 * x)


def test_sample_shape_range_determinism(backbone):
    noise = randn_per_image(backbone.latent_shape, 0, range(2))
    a = backbone.sample(PROMPTS, noise, steps=2)
    assert a.shape == (2, 3, 32, 32)
    assert torch.isfinite(a).all() and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, backbone.sample(PROMPTS, noise.clone(), steps=2))
    b = backbone.sample(PROMPTS, randn_per_image(backbone.latent_shape, 1, range(2)), steps=2)
    assert not torch.equal(a, b)


def test_gradients_reach_unet_not_text_encoder(world_assets):
    b = WorldBackbone(asset_dir=world_assets)  # a private copy: its grads must not leak into the fixture
    params = list(b.trainable_parameters())
    assert params and all(any(p is q for q in b.unet.parameters()) for p in params)
    for p in params:
        p.requires_grad_(True)
    x_t, t = noisy(b, 2, seed=3)
    x0 = b.predict_x0(x_t, t, b.encode_prompts(PROMPTS))
    loss = b.decode(x0).square().mean()
    loss.backward()
    grads = [p.grad for p in params]
    assert all(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    text_params = list(b.text_encoder.model.parameters())
    assert text_params and all(not p.requires_grad and p.grad is None for p in text_params)


# ---------------------------------------------------------------------------- evaluation

REQUIRED = ("acc_L1", "acc_L2", "acc_L3", "acc_L4", "acc_heldout", "world_fid", "diversity", "nfe",
            "ms_per_image", "reward_world_clip", "reward_world_judge", "reward_world_quality")


def tiny_eval(**kw) -> EvalConfig:
    # threads: keep the test session's setting (evaluate_world calls torch.set_num_threads).
    base = dict(prompts_per_level=4, heldout_prompts=4, diversity_prompts=2, diversity_seeds=2, steps=2,
                threads=torch.get_num_threads())
    return EvalConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def real_metrics(world_assets) -> dict:
    cfg = tiny_eval(batch_size=3)
    metrics, details = evaluate_world(real_source(cfg.seed + 1), cfg, world_assets)
    assert details["images"].shape == (20, 3, 32, 32)
    assert len(details["prompts"]) == len(details["split"]) == 20
    return metrics


def test_eval_required_keys_and_finite(real_metrics):
    missing = [k for k in REQUIRED if k not in real_metrics]
    assert not missing, missing
    for k in REQUIRED:
        assert isinstance(real_metrics[k], (int, float)), k
        assert math.isfinite(real_metrics[k]), (k, real_metrics[k])
    for lv in ("L1", "L2", "L3", "L4", "heldout"):
        assert 0 <= real_metrics[f"acc_{lv}"] <= 1
    for a in ATTRIBUTE_NAMES:
        assert f"attr_acc_{a}" in real_metrics
    assert real_metrics["nfe"] == 0 and real_metrics["num_images"] == 20
    assert real_metrics["world_fid"] >= -1e-6 and real_metrics["diversity"] >= 0


def test_eval_is_independent_of_batch_size(real_metrics, world_assets):
    cfg = tiny_eval(batch_size=50)
    other, _ = evaluate_world(real_source(cfg.seed + 1), cfg, world_assets)
    for k, v in real_metrics.items():
        if k == "ms_per_image":
            continue
        if isinstance(v, float) and math.isnan(v):
            assert math.isnan(other[k]), k
        else:
            assert other[k] == v, (k, v, other[k])


def test_eval_prompt_set_is_fixed_by_seed():
    a, b, c = eval_prompt_set(tiny_eval()), eval_prompt_set(tiny_eval()), eval_prompt_set(tiny_eval(seed=1))
    assert a.prompts == b.prompts and a.prompts != c.prompts
    assert a.split == ["L1"] * 4 + ["L2"] * 4 + ["L3"] * 4 + ["L4"] * 4 + ["heldout"] * 4


def test_render_real_is_per_image_and_satisfies_specs():
    ps = eval_prompt_set(tiny_eval())
    idx = list(range(len(ps.prompts)))
    full = render_real(ps.specs, 9, idx)
    part = render_real(ps.specs.index(slice(5, 8)), 9, idx[5:8])
    assert torch.equal(full[5:8], part)


def test_teacher_eval_with_eta_is_independent_of_batch_size(world_assets):
    """Per-image seeding must hold for the stochastic sampler (eta > 0) too."""
    cfg = tiny_eval(eta=1.0, cfg=1.0)
    source = teacher_source(cfg, world_assets)
    ps = eval_prompt_set(cfg)
    prompts, specs, idx = ps.prompts[:4], ps.specs.index(slice(0, 4)), [0, 1, 2, 3]
    whole = source.generate(prompts, specs, idx)
    halves = torch.cat([source.generate(prompts[:2], specs.index(slice(0, 2)), idx[:2]),
                        source.generate(prompts[2:], specs.index(slice(2, 4)), idx[2:])])
    # Batched convolutions are not bitwise batch-invariant on CPU; allow float rounding only.
    err = (whole - halves).abs().flatten(1).amax(1)
    assert (err < 1e-4).all(), f"max |difference| per image {err.tolist()}: images depend on their batch"


# ------------------------------------------------------------------------------ metrics


def gaussian(n: int, d: int, seed: int) -> torch.Tensor:
    return torch.randn((n, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_frechet_identical_sets_is_zero():
    a = gaussian(500, 8, 0)
    assert abs(frechet_distance(a, a)) < 1e-6
    assert abs(frechet_distance(a.float(), a.float().clone())) < 1e-4


@pytest.mark.parametrize("d", [0.5, 2.0, 5.0])
def test_frechet_mean_shift(d):
    a = gaussian(2000, 8, 1)
    shift = torch.zeros(8, dtype=torch.float64)
    shift[3] = d
    # Same samples shifted: covariances agree exactly, the distance is |shift|^2.
    assert frechet_distance(a, a + shift) == pytest.approx(d * d, rel=1e-6, abs=1e-6)
    # Independent Gaussian samples: d^2 up to sampling error.
    b = gaussian(2000, 8, 2) + shift
    assert frechet_distance(a, b) == pytest.approx(d * d, abs=0.1)


def test_frechet_is_symmetric_and_scales_with_covariance():
    a, b = gaussian(800, 6, 3), 1.5 * gaussian(800, 6, 4) + 0.3
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    # N(0, I) vs N(0, s^2 I) in D dims: D (1 - s)^2.
    c = 2.0 * gaussian(4000, 6, 5)
    assert frechet_distance(gaussian(4000, 6, 6), c) == pytest.approx(6 * (1 - 2.0) ** 2, rel=0.15)


def test_seed_diversity():
    f = torch.zeros(3, 2, 4)
    assert seed_diversity(f) == 0
    f[:, 1, 0] = 2.0
    assert seed_diversity(f) == pytest.approx(2.0)


def test_inspector_reads_real_renders_consistently(world_assets):
    """match() on the inspector's reading is a well-formed per-image result (any accuracy)."""
    from rzero.world.evaluators import read_scenes
    from rzero.world.loaders import load_world_network

    ps = eval_prompt_set(tiny_eval())
    imgs = render_real(ps.specs, 3, list(range(len(ps.prompts))))
    inspector = load_world_network("inspector", world_assets)
    a = read_scenes(inspector, imgs)
    b = read_scenes(inspector, imgs, batch_size=3)
    assert torch.equal(a.slots, b.slots) and torch.equal(a.bg, b.bg)
    assert not inspector.training
    m = match(ps.specs, a)
    assert m["fraction"].shape == (20,) and ((m["fraction"] >= 0) & (m["fraction"] <= 1)).all()
