"""`rzero world build` on a tiny configuration: determinism, skip-when-up-to-date, manifest, verify."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from rzero.cli.main import main
from rzero.config import load_config
from rzero.config.schema import WorldBuildConfig
import pytest
import torch

from rzero.utils.io import load_safetensors, sha256_file
from rzero.world.build import build_world


# Both teachers tiny; the web-caption one starts from the exact one's asset in the same out dir.
_TINY_TEACHERS = ["teacher.steps=4", "teacher.batch_size=4", "teacher.checkpoint_every=2", "teacher_web.steps=4",
                  "teacher_web.stop_at=0", "teacher_web.batch_size=4", "teacher_web.checkpoint_every=2",
                  "captioner.pool_size=40"]


def _cfg(tmp_path, out):
    # threads=1 as in configs/world_build.yaml.
    return load_config(WorldBuildConfig, None, [f"out_dir={out}", f"work_dir={tmp_path / 'work'}", "pool_size=40",
                                                "threads=1",
                                                "quality.steps=4", "quality.batch_size=16", *_TINY_TEACHERS])


def _build_in_fresh_process(tmp_path, out, work):
    overrides = [f"out_dir={out}", f"work_dir={work}", "pool_size=40", "threads=1", "quality.steps=4",
                 "quality.batch_size=16", *_TINY_TEACHERS]
    proc = subprocess.run([sys.executable, "-m", "rzero.cli.main", "world", "build", *overrides,
                           "--only", "quality", "teacher", "teacher_web"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_build_is_deterministic_and_skips_up_to_date_stages(tmp_path, capsys):
    """Two fresh processes running the same build command write the same assets up to float
    rounding. Not bitwise: measured, identical runs of the quality stage land on one of two
    results differing in the last bits (CPU kernels' summation order is not fixed).
    """
    a, b = tmp_path / "a", tmp_path / "b"
    _build_in_fresh_process(tmp_path, a, tmp_path / "work_a")
    _build_in_fresh_process(tmp_path, b, tmp_path / "work_b")
    for name in ("world_quality.safetensors", "teacher_unet.safetensors", "teacher_web_unet.safetensors"):
        wa, wb = load_safetensors(a / name), load_safetensors(b / name)
        assert wa.keys() == wb.keys()
        for k in wa:
            torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-4, msg=f"{name}:{k}")
    manifest = json.loads((a / "manifest.json").read_text())
    entry = manifest["assets"]["teacher"]
    assert entry["sha256"] == sha256_file(a / "teacher_unet.safetensors")
    assert entry["bytes"] == (a / "teacher_unet.safetensors").stat().st_size
    assert {"build_command", "git_commit", "config"} <= set(manifest)
    assert "final_loss" in entry["metrics"]
    capsys.readouterr()
    build_world(_cfg(tmp_path, a), only=["quality"])
    assert "up to date" in capsys.readouterr().out


def test_changed_stage_config_rebuilds(tmp_path, capsys):
    out = tmp_path / "a"
    build_world(_cfg(tmp_path, out), only=["quality"])
    first = sha256_file(out / "world_quality.safetensors")
    cfg = _cfg(tmp_path, out)
    cfg.quality.steps = 5
    capsys.readouterr()
    build_world(cfg, only=["quality"])
    assert "up to date" not in capsys.readouterr().out
    assert sha256_file(out / "world_quality.safetensors") != first


def test_unknown_stage_is_a_one_line_error(tmp_path, capsys):
    code = main(["world", "build", f"out_dir={tmp_path}", "--only", "nope"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "unknown build stage 'nope'" in err[0]


def test_teacher_batches_do_not_depend_on_loader_workers(tmp_path):
    """The GPU recipe renders teacher batches in loader workers: same stream as in-process,
    and neither the device nor the worker count changes the stage's config hash."""
    from rzero.world.build import _TeacherBatches, _stage_hash, load_or_build_caption_pool, load_or_build_pool

    cfg = _cfg(tmp_path, tmp_path / "a")
    for stage, pool in (("teacher", load_or_build_pool(cfg, tmp_path / "work")),
                        ("teacher_web", load_or_build_caption_pool(cfg, tmp_path / "work"))):
        batches = {}
        for workers in (0, 2):
            loader = torch.utils.data.DataLoader(_TeacherBatches(cfg, stage, pool, 1, 4), batch_size=None,
                                                 num_workers=workers)
            batches[workers] = list(loader)
        assert len(batches[0]) == 3
        for one, two in zip(batches[0], batches[2]):
            for a, b in zip(one, two):
                assert torch.equal(a, b)
    moved = load_config(WorldBuildConfig, None, [f"out_dir={tmp_path}", "pool_size=40", "teacher.steps=4",
                                                 "teacher.batch_size=4", "teacher.device=cuda", "teacher.workers=8"])
    assert _stage_hash(moved, "teacher") == _stage_hash(cfg, "teacher")
    cfg.teacher.lr *= 2
    assert _stage_hash(moved, "teacher") != _stage_hash(cfg, "teacher")


def test_teacher_device_is_checked():
    with pytest.raises(Exception, match="teacher.device must be"):
        load_config(WorldBuildConfig, None, ["teacher.device=tpu"])
    with pytest.raises(Exception, match="teacher.stop_at must be"):
        load_config(WorldBuildConfig, None, ["teacher.steps=10", "teacher.stop_at=11"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_gpu_teacher_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    preset = Path(__file__).resolve().parents[1] / "configs" / "world_build_gpu.yaml"
    rc = main(["world", "build", str(preset), "--only", "teacher", f"work_dir={tmp_path / 'w'}",
               f"out_dir={tmp_path / 'a'}", "pool_size=40", "threads=1", "teacher.batch_size=4"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "no CUDA GPU is visible" in err and "\n" not in err
    assert not (tmp_path / "a" / "teacher_unet.safetensors").exists()


def test_web_teacher_starts_from_the_exact_one_with_fresh_cross_attention(world_assets):
    """`reset_cross_attention`: every weight but the text-reading ones is the init's, and the
    network starts unconditional (the prompt changes nothing), so it learns prompts from its captions."""
    from rzero.world.build import _reset_cross_attention
    from rzero.world.loaders import build_network
    from rzero.world.assets import load_state

    exact = load_state(build_network("teacher"), "teacher", world_assets)
    fresh = build_network("teacher_web")
    fresh.load_state_dict(exact.state_dict())
    _reset_cross_attention(fresh, seed=0)
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, exact.state_dict()[k])}
    assert changed and all(".attn2.to_" in k for k in changed)
    x, t = torch.randn(2, 12, 16, 16), torch.tensor([500, 500])
    a, b = torch.randn(2, 32, 384), torch.randn(2, 32, 384)
    with torch.no_grad():
        assert torch.equal(fresh(x, t, encoder_hidden_states=a).sample, fresh(x, t, encoder_hidden_states=b).sample)
        assert not torch.allclose(exact(x, t, encoder_hidden_states=a).sample, exact(x, t, encoder_hidden_states=b).sample)


def test_adversarial_training_is_off_by_default_and_hash_neutral():
    """adv_eps 0 leaves every shipped stage's config hash as built; the perturbation stays in its
    L2 ball and raises the loss it attacks."""
    from rzero.world.build import _adversarial, _stage_hash

    cfg = load_config(WorldBuildConfig, Path(__file__).resolve().parents[1] / "configs" / "world_build.yaml", [])
    manifest = json.loads((Path(__file__).resolve().parents[1] / "src/rzero/world/assets/manifest.json").read_text())
    assert _stage_hash(cfg, "clip") == manifest["assets"]["clip"]["config_hash"]
    robust = load_config(WorldBuildConfig, None, ["clip.adv_eps=1.0"])
    assert _stage_hash(robust, "clip") != _stage_hash(load_config(WorldBuildConfig, None, []), "clip")
    with pytest.raises(ValueError, match="adv_eps"):
        load_config(WorldBuildConfig, None, ["clip.adv_eps=-1"])

    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=g) * 1.6 - 0.8
    w = torch.randn(3 * 64, generator=g)

    def loss(x):
        return (x.flatten(1) @ w).sum()

    moved = _adversarial(images, loss, eps=0.5, steps=3)
    assert float((moved - images).flatten(1).norm(dim=1).max()) <= 0.5 + 1e-5
    assert float(loss(moved)) > float(loss(images))


def test_coarse_clip_is_blind_below_its_cells_and_shipped_as_built(world_assets):
    """world-clip-coarse scores 4x4-pixel cell means only: a texture with zero mean in every cell
    changes nothing, moving colour to another cell does. Its asset matches the build recipe, and
    adding it left the plain clip's network and hash as shipped."""
    from rzero.rewards import make_reward
    from rzero.world.build import _stage_hash
    from rzero.world.loaders import build_network
    from rzero.world.models import COARSE_POOL

    coarse = make_reward("world-clip-coarse")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g) * 1.6 - 0.8
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0  # zero mean per 2x2, so per 4x4
    textured = images + 0.15 * checker
    prompts = ["a red circle on the left", "two squares", "a blue cross"]
    with torch.no_grad():
        base = coarse(images, prompts)
        assert torch.allclose(coarse(textured, prompts), base, atol=1e-5)
        moved = images.roll(COARSE_POOL * 2, dims=3)  # content shifted by two cells
        assert not torch.allclose(coarse(moved, prompts), base, atol=1e-3)
        # The plain world-clip does see the texture (what makes it hackable).
        plain = make_reward("world-clip")
        assert not torch.allclose(plain(textured, prompts), plain(images, prompts), atol=1e-3)

    cfg = load_config(WorldBuildConfig, Path(__file__).resolve().parents[1] / "configs" / "world_build.yaml", [])
    manifest = json.loads((Path(__file__).resolve().parents[1] / "src/rzero/world/assets/manifest.json").read_text())
    for stage in ("clip", "clip_coarse"):
        assert _stage_hash(cfg, stage) == manifest["assets"][stage]["config_hash"]
    assert sum(p.numel() for p in build_network("clip").parameters()) == manifest["assets"]["clip"]["params"]
