"""Diff-Instruct* and DI++: divergence maths, the fake score, diagnostics, smoke runs and resume."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from rzero.config import ConfigError, load_config
from rzero.config.schema import TrainConfig
from rzero.losses import huber_push, inject, kl_push, pseudo_huber, pseudo_huber_grad
from rzero.utils.io import load_safetensors, torch_load_safe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
sys.path.insert(0, str(CONFIGS.parent / "benchmarks"))
import distar_push  # noqa: E402  (benchmarks/distar_push.py; imports rzero only inside main)

TINY = ["batch_size=2", "log_every=1", "sample_every=1000", "track_every=0", "threads=2", "di.diagnostics_every=1"]


# ------------------------------------------------------------------ maths (torch only)


def test_pseudo_huber_gradient_matches_autograd():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([0.01, 1.0, 30.0]).view(3, 1, 1, 1)
    y.requires_grad_(True)
    c = 0.7
    (auto,) = torch.autograd.grad(pseudo_huber(y, c).sum(), y)
    torch.testing.assert_close(pseudo_huber_grad(y.detach(), c), auto, rtol=1e-12, atol=1e-14)
    # Values: d(0) = 0, and d(y) ~ ||y|| - c far from the origin.
    assert float(pseudo_huber(torch.zeros(1, 5), c)) == 0.0
    big = pseudo_huber(y.detach()[2:], c)
    assert abs(float(big) - (float(y.detach()[2].norm()) - c)) < 0.02


def test_huber_push_is_kl_push_near_zero_and_capped_far_away():
    y = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    w, a = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), 0.5)
    c = 1.0
    small = 1e-4 * y
    torch.testing.assert_close(huber_push(small, w, a, c), kl_push(small, w, a), rtol=1e-5, atol=0)
    far = huber_push(1e4 * y, w, a, c)
    torch.testing.assert_close(far.flatten(1).norm(dim=1), torch.full((2,), 2.0 * 0.5 * c), rtol=1e-6, atol=0)


def test_inject_gradient_is_minus_push_over_numel():
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    push = torch.randn(2, 3, 4, 4)
    (grad,) = torch.autograd.grad(inject(x, push), x)
    torch.testing.assert_close(grad, -push / x.numel())


def test_config_rejects_multistep_distar_and_sim_dipp():
    with pytest.raises(ConfigError, match="generator.steps=1"):
        load_config(TrainConfig, CONFIGS / "world_distar.yaml", ["generator.steps=4"])
    with pytest.raises(ConfigError, match="gradient_path"):
        load_config(TrainConfig, CONFIGS / "world_dipp.yaml", ["di.gradient_path=sim"])
    with pytest.raises(ConfigError, match="weighting"):
        load_config(TrainConfig, CONFIGS / "world_dipp.yaml", ["di.weighting=nope"])


# ------------------------------------------------------------------ the fake score


@pytest.fixture(scope="module")
def backbone(world_assets):
    from rzero.backbones import WorldBackbone

    return WorldBackbone(asset_dir=world_assets).eval()


def test_fake_score_update_lowers_its_denoising_loss(backbone):
    from rzero.trainers.fake_score import FakeScore

    # A fixed batch of what psi really sees: one-step samples of the pretrained network (blurry,
    # off the teacher's data manifold, so the copied teacher does not fit them yet).
    cond = backbone.encode_prompts(["a red circle", "a blue square", "two crosses", "a green diamond"])
    uncond = backbone.empty_cond(4)
    noise = torch.randn((4, *backbone.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0 = backbone.predict_x0(noise, torch.full((4,), 999), cond)
    fake = FakeScore(backbone, lr=3e-4, cond_drop=0.0, t_range=(0.2, 0.8))

    def loss_at_fixed_noise():
        with torch.no_grad():
            return float(fake.denoising_loss(x0, cond, uncond, torch.Generator().manual_seed(123)))

    before = loss_at_fixed_noise()
    fake.update([(x0, cond, uncond, torch.Generator().manual_seed(5))], steps=8)
    after = loss_at_fixed_noise()
    assert after < 0.9 * before, (before, after)
    # psi is a copy: the backbone's own denoiser kept its weights.
    assert fake.net is not backbone.unet
    assert any(not torch.equal(p, q) for p, q in zip(fake.net.parameters(), backbone.unet.parameters()))


def test_backbone_view_does_not_replace_the_original_network(backbone):
    from rzero.trainers.fake_score import backbone_with, frozen_copy

    other = frozen_copy(backbone.unet)
    view = backbone_with(backbone, other)
    assert view.unet is other and backbone.unet is not other
    assert view.text_encoder is backbone.text_encoder


# ------------------------------------------------------------------ trainers


def _trainer(world_assets, out, preset, overrides=()):
    from rzero.trainers import TRAINERS

    cfg = load_config(TrainConfig, CONFIGS / preset, [*TINY, *overrides])
    return TRAINERS[cfg.method](cfg, out, asset_dir=world_assets)


@pytest.mark.parametrize("preset,steps", [("world_distar.yaml", 1), ("world_dipp.yaml", 1), ("world_dipp4.yaml", 4)])
def test_smoke_two_steps_logs_diagnostics_and_loads(world_assets, tmp_path, preset, steps):
    # Diagnostics every 2 iterations must land on the logged step 2 (the engine counts from 1).
    tr = _trainer(world_assets, tmp_path, preset, ["iterations=2", "di.diagnostics_every=2"])
    final = tr.fit()
    from rzero.generator import load_generator
    from rzero.utils.stats import read_jsonl

    gen, meta = load_generator(final, world_assets)
    assert gen.steps == steps == meta["steps"] and meta["iteration"] == 2
    assert meta["method"] == tr.cfg.method
    rows = read_jsonl(tmp_path / "stats.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    diag = ("diag/log10_grad_norm_reward", "diag/log10_grad_norm_div", "diag/cos_reward_div")
    assert not any(k in rows[0] for k in diag)
    for r in rows:
        for k in (*diag, "fake/loss", "div/push_norm", "reward/world-judge")[0 if r["step"] == 2 else 3:]:
            assert r.get(k) is not None and math.isfinite(r[k]), (k, r.get(k))
    assert -1.0 <= rows[1]["diag/cos_reward_div"] <= 1.0
    assert ("div/huber" in rows[0]) == (tr.cfg.method == "distar")


def test_generator_gradient_reaches_trainable_weights_only(world_assets, tmp_path):
    tr = _trainer(world_assets, tmp_path, "world_distar.yaml", ["iterations=1", "di.gradient_path=sim"])
    loss, _ = tr.train_step(torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in tr.model.parameters()]
    assert sum(int(g is not None and g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)
    assert all(p.grad is None for p in tr.ref.unet.parameters())  # the reference is frozen
    assert all(p.grad is None for p in tr.fake.net.parameters())  # psi's grads are cleared after its own step


def test_fake_score_steps_once_per_generator_update_over_all_micro_batches(world_assets, tmp_path):
    """K_fake updates per generator update (SPEC 2), whatever grad_accum: with 2 micro-batches psi
    steps once per iteration on both, and each micro-batch's train_step sees the x0 psi saw."""
    tr = _trainer(world_assets, tmp_path, "world_distar.yaml",
                  ["iterations=2", "grad_accum=2", "batch_size=1", "di.fake_updates=2", "di.diagnostics_every=0"])
    seen = []
    update = tr.fake.update

    def spy(batches, steps):
        seen.append([x0.clone() for x0, *_ in batches])
        return update(batches, steps)

    tr.fake.update = spy
    sample = tr.sample
    drawn = []

    def spy_sample(g, grad=True):
        out = sample(g, grad)
        if grad:
            drawn.append(out[3].detach().clone())
        return out

    tr.sample = spy_sample
    tr.fit()
    assert [len(b) for b in seen] == [2, 2]  # one update call per iteration, on both micro-batches
    for it in range(2):  # train_step redraws the very x0 psi was trained on
        for micro in range(2):
            assert torch.equal(drawn[2 * it + micro], seen[it][micro])
    steps = {int(st["step"]) for st in tr.fake.optimizer.state_dict()["state"].values()}
    assert steps == {2 * 2}  # iterations x fake_updates, not x grad_accum


def test_distar_t_init_option(world_assets, tmp_path):
    tr = _trainer(world_assets, tmp_path, "world_distar.yaml", ["iterations=1", "di.t_init=399"])
    assert tr.generator.timesteps.tolist() == [399.0]
    assert tr.snapshot_meta()["timesteps"] == [399.0]


def test_resume_restores_fake_score_and_equals_straight_run(world_assets, tmp_path):
    ov = ["checkpoint_every=1", "keep_checkpoints=1", "di.diagnostics_every=0"]
    straight = _trainer(world_assets, tmp_path / "a", "world_distar.yaml", ["iterations=2", *ov])
    straight.fit()
    _trainer(world_assets, tmp_path / "b", "world_distar.yaml", ["iterations=1", *ov]).fit()
    _trainer(world_assets, tmp_path / "b", "world_distar.yaml", ["iterations=2", *ov]).fit()
    a = load_safetensors(tmp_path / "a" / "final" / "generator.safetensors")
    b = load_safetensors(tmp_path / "b" / "final" / "generator.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    fa = torch_load_safe(tmp_path / "a" / "checkpoints" / "step_000002" / "extra.pt")["fake_score"]
    fb = torch_load_safe(tmp_path / "b" / "checkpoints" / "step_000002" / "extra.pt")["fake_score"]
    for k in fa["net"]:
        assert torch.equal(fa["net"][k], fb["net"][k]), k
    # psi really moved away from the teacher: the checkpoint holds a trained network, not a copy.
    teacher = straight.ref.unet.state_dict()
    assert any(not torch.equal(fa["net"][k], teacher[k]) for k in fa["net"])



def test_resume_gives_the_fake_score_the_new_fake_lr(world_assets, tmp_path):
    ov = ["checkpoint_every=1", "keep_checkpoints=1", "di.diagnostics_every=0"]
    _trainer(world_assets, tmp_path, "world_distar.yaml", ["iterations=1", *ov]).fit()
    tr = _trainer(world_assets, tmp_path, "world_distar.yaml", ["iterations=2", "di.fake_lr=3e-5", "optim.lr=7e-6", *ov])
    tr.fit()
    assert [g["lr"] for g in tr.fake.optimizer.param_groups] == [3e-5]
    assert {g["lr"] for g in tr.optimizer.param_groups} == {7e-6}


def test_distar_push_benchmark_reads_a_run_and_leaves_it_untouched(world_assets, tmp_path):
    """benchmarks/distar_push.py (docs/decisions.md cites it): one row per timestep of its grid,
    a push that exists, the reference's x0-prediction further from the sample at high noise than
    at low noise, the JSON equal to what it returns, and the run's own folder unchanged."""
    run = tmp_path / "run"
    _trainer(world_assets, run, "world_distar.yaml", ["iterations=1", "checkpoint_every=1", "di.t_init=399"]).fit()
    before = {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")}
    out = distar_push.main([str(run), "--batch", "4", "--draws", "2", "--assets", str(world_assets),
                            "--json", str(tmp_path / "push.json")])
    assert [r["t"] for r in out["per_t"]] == list(distar_push.GRID)
    for r in out["per_t"]:
        assert math.isfinite(r["push_norm"]) and r["push_norm"] > 0, r
        assert -1.0 <= r["cos_toward_teacher_sample"] <= 1.0, r
    assert out["per_t"][-1]["ref_x0_rms_from_x0"] > out["per_t"][0]["ref_x0_rms_from_x0"]
    assert json.loads((tmp_path / "push.json").read_text()) == out
    assert {p.relative_to(run): p.stat().st_mtime_ns for p in run.rglob("*")} == before
    with pytest.raises(SystemExit, match="no checkpoints"):
        distar_push.main([str(tmp_path / "empty")])

# ------------------------------------------------------------------ real-scale backbones (tiny random SD folders)

from tiny_sd import prompt_file, tiny_sd3, tiny_sd15  # noqa: E402,F401  (pytest fixtures)


@pytest.mark.slow  # three copies of each tiny SD network; ~1 min idle, far more on a loaded machine
@pytest.mark.parametrize("kind", ["sd15", "sd3"])
def test_distar_preset_runs_on_tiny_sd(kind, tiny_sd15, tiny_sd3, prompt_file, tmp_path):  # noqa: F811
    from rzero.generator import load_generator
    from rzero.rewards.base import Reward
    from rzero.trainers import TRAINERS

    class Redness(Reward):
        name = "redness"
        uses_prompt = False

        def score(self, images, prompts):
            return images[:, 0].mean((1, 2))

    path = {"sd15": tiny_sd15, "sd3": tiny_sd3}[kind]
    # The preset's own precision (bf16 weights, bf16 mixed precision): no dtype override.
    cfg = load_config(TrainConfig, CONFIGS / "sd15_distar.yaml", [
        f"backbone={kind}", f"backbone_path={path}", f"prompt_file={prompt_file}", "iterations=2", "batch_size=2",
        "grad_accum=2", "sample_every=1000", "threads=2", "di.diagnostics_every=1", "log_every=1"])
    tr = TRAINERS["distar"](cfg, tmp_path, rewards={"redness": Redness().freeze()})
    final = tr.fit()
    from rzero.utils.stats import read_jsonl

    rows = read_jsonl(tmp_path / "stats.jsonl")
    assert all(math.isfinite(r["diag/cos_reward_div"]) and r["fake/loss"] > 0 for r in rows)
    gen, meta = load_generator(final)
    assert meta["backbone"] == kind and gen.steps == 1 and meta["method"] == "distar"


# ------------------------------------------------------------------ 2 CPU processes (DDP over generator and psi)

_DDP_SCRIPT = """
import json, sys
sys.path[:0] = [{src!r}]
import torch; torch.set_num_threads(1)
from pathlib import Path
from rzero.config import load_config
from rzero.config.schema import TrainConfig
from rzero.trainers import TRAINERS
from rzero.utils.io import atomic_save_safetensors
out = Path(sys.argv[1])
cfg = load_config(TrainConfig, {preset!r}, {overrides!r})
tr = TRAINERS[cfg.method](cfg, out, asset_dir={assets!r})
tr.fit()
r = tr.accelerator.process_index
atomic_save_safetensors(tr.trainable_state(), out / f"gen{{r}}.safetensors")
atomic_save_safetensors(tr.fake.net.state_dict(), out / f"fake{{r}}.safetensors")
(out / f"rank{{r}}.json").write_text(json.dumps({{"n": tr.accelerator.num_processes}}))
tr.release_processes()
"""


@pytest.mark.slow  # two processes that each load the world; ~2 min on 2 idle cores
def test_two_processes_equal_one_process_with_both_ranks_batches_fake_score_included(world_assets, tmp_path):
    """torchrun, 2 CPU processes (gloo): DDP averages the generator's and psi's gradients, so the
    run equals 1 process accumulating rank 0's and rank 1's micro-batches (psi stepping once on
    both), generator and fake score alike. (Longer version: distributed_check.py --method distar.)"""
    import json
    import os
    import subprocess
    import sys

    from rzero.trainers import DiffInstructStarTrainer
    from rzero.utils.seeding import derived_generator

    overrides = [*TINY, "iterations=2", "batch_size=1", "checkpoint_every=2", "threads=1"]
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(src=str(Path(__file__).resolve().parents[1] / "src"),
                                         preset=str(CONFIGS / "world_distar.yaml"), overrides=overrides,
                                         assets=str(world_assets)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                           "29545", str(script), str(tmp_path / "ddp")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ddp" / "rank0.json").read_text())["n"] == 2
    ranks = [(load_safetensors(tmp_path / "ddp" / f"gen{r}.safetensors"),
              load_safetensors(tmp_path / "ddp" / f"fake{r}.safetensors")) for r in (0, 1)]

    class Emulated(DiffInstructStarTrainer):
        def step_generator(self, micro):
            return derived_generator(self.cfg.seed * 2 + micro, "train", self.iteration)

    cfg = load_config(TrainConfig, CONFIGS / "world_distar.yaml", [*overrides, "grad_accum=2"])
    emu = Emulated(cfg, tmp_path / "emu", asset_dir=world_assets)
    gen0 = {n: p.detach().clone() for n, p in emu.named_trainable()}
    emu.fit()
    want = (emu.trainable_state(), emu.fake.net.state_dict())
    for got in ranks:
        for have, expect in zip(got, want):
            assert have.keys() == expect.keys()
            for k in expect:
                torch.testing.assert_close(have[k], expect[k], rtol=0, atol=1e-6, msg=k)
    assert any(not torch.equal(want[0][k], v) for k, v in gen0.items())  # the generator did move
