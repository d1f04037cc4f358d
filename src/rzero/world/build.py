"""`rzero world build`: train every network of the built-in world from code.

Stages, in order: prompt pool (encoded once, cached in the work dir), inspector, FID feature
net, the three rewards, the sharpness classifier, the teacher. Each stage is seeded (init
and data from generators derived from (seed, stage, step); repeated runs agree up to float
rounding, not bitwise, on CPU), writes its asset atomically, and records its
metrics in the manifest. A stage whose asset and manifest entry match the current config
is skipped, so an interrupted build resumes; the long teacher stage also keeps a resumable
training state in the work dir.
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config.schema import StageConfig, WorldBuildConfig
from ..config import to_dict
from ..utils.io import (atomic_save_safetensors, atomic_write_bytes, load_safetensors, sha256_file, torch_load_safe,
                        torch_save_bytes)
from .assets import ASSET_FILES, MANIFEST, asset_path, default_asset_dir, read_manifest
from .captions import CaptionPool
from .data import PromptPool, render_batch, step_generator
from .degrade import degrade
from .evaluators import inspector_loss, read_scenes
from .loaders import build_network
from .models import (WorldFeatureNet, WorldInspector, WorldJudge, WorldQuality, WorldSharpness,
                     split_attribute_logits, teacher_unet_config)
from .render import render
from .scene import LEVELS, Scenes, Specs, complete_specs, match, sample_specs
from .text import WorldTextEncoder

STAGES = ("inspector", "featnet", "clip", "clip_coarse", "judge", "quality", "sharpness", "teacher", "teacher_web")
TEACHER_STAGES = ("teacher", "teacher_web")


# Settings that say how a stage runs, not what it trains: not part of its config hash.
_RUN_ONLY = ("device", "workers", "checkpoint_every")


def _stage_hash(cfg: WorldBuildConfig, stage: str, exclude: tuple[str, ...] = ()) -> str:
    stage_cfg = {k: v for k, v in to_dict(getattr(cfg, stage)).items() if k not in exclude + _RUN_ONLY}
    # Fields added with world v2 enter only when they differ from the exact-caption recipe, so the
    # shipped teacher's hash (and its "up to date" status) is the one it was built with.
    for key, plain in (("captions", "exact"), ("init", ""), ("reset_cross_attention", False), ("adv_eps", 0.0),
                       ("adv_steps", 1)):
        if stage_cfg.get(key, plain) == plain:
            stage_cfg.pop(key, None)
    d = {"seed": cfg.seed, "stage": stage, "cfg": stage_cfg, "pool": cfg.pool_size}
    if stage in TEACHER_STAGES and stage_cfg.get("captions") == "web":
        d["captioner"] = to_dict(cfg.captioner)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Mild noise, blur and brightness changes so evaluators also read imperfect samples."""
    b = images.shape[0]
    x = images + torch.randn(images.shape, generator=g) * (torch.rand(b, generator=g) * 0.08)[:, None, None, None]
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(b, generator=g) < 0.3).float()[:, None, None, None] * torch.rand(b, 1, 1, 1, generator=g)
    x = x * (1 - mix) + blurred * mix
    x = x * (0.9 + 0.2 * torch.rand(b, 1, 1, 1, generator=g))
    return x.clamp(-1, 1)


def _adversarial(images: torch.Tensor, loss_of: Callable[[torch.Tensor], torch.Tensor], eps: float,
                 steps: int) -> torch.Tensor:
    """Images moved within an L2 ball of radius eps (per image) to raise `loss_of` (PGD)."""
    def per_image_norm(t):
        return t.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]

    delta = torch.zeros_like(images)
    for _ in range(steps):
        delta.requires_grad_(True)
        grad, = torch.autograd.grad(loss_of((images + delta).clamp(-1, 1)), delta)
        delta = delta.detach() + (2.5 * eps / steps) * grad / per_image_norm(grad)
        delta = delta * (eps / per_image_norm(delta)).clamp(max=1.0)
    return (images + delta).clamp(-1, 1).detach()


def _tail_mean(values: list[float], n: int = 50) -> float:
    tail = values[-n:]
    return sum(tail) / len(tail)


def _init(cls: Callable[[], nn.Module], seed: int, stage: str) -> nn.Module:
    """Construct a stage's network from its own seed, whatever ran before in this process."""
    torch.manual_seed(int(step_generator(seed, stage, -1).initial_seed()))
    return cls()


def _train_loop(model: nn.Module, cfg, stage: str, seed: int, loss_fn: Callable[[torch.Generator], tuple]) -> list[float]:
    """Adam with cosine decay for `cfg.steps`; `loss_fn(g)` draws a batch and returns (loss, log)."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    model.train()
    losses = []
    bar = tqdm(range(cfg.steps), desc=f"world build: {stage}", unit="step", dynamic_ncols=True)
    for step in bar:
        loss, log = loss_fn(step_generator(seed, stage, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", **log)
    model.eval()
    return losses


# ---------------------------------------------------------------- stages


def train_inspector(cfg: WorldBuildConfig, pool: PromptPool) -> tuple[nn.Module, dict]:
    model = _init(WorldInspector, cfg.seed, "inspector")
    c = cfg.inspector

    def loss_fn(g):
        scenes, _, images = render_batch(c.batch_size, g)
        return inspector_loss(model(_augment(images, g)), scenes), {}

    losses = _train_loop(model, c, "inspector", cfg.seed, loss_fn)
    metrics = {"final_loss": _tail_mean(losses), **evaluate_inspector_on_renders(model, cfg.seed + 1, 400)}
    return model, metrics


@torch.no_grad()
def evaluate_inspector_on_renders(model: nn.Module, seed: int, n: int) -> dict:
    """All-correct accuracy of the inspector on fresh real renders, per level and held out."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    sets = [(f"L{lv}", sample_specs(n, lv, g)) for lv in LEVELS]
    sets.append(("heldout", Specs.cat([sample_specs(n // 2, 2, g, heldout=True), sample_specs(n // 2, 3, g, heldout=True)])))
    for name, specs in sets:
        images = render(complete_specs(specs, g), g)
        out[f"acc_{name}"] = float(match(specs, read_scenes(model, images))["all_correct"].float().mean())
    return out


def train_featnet(cfg: WorldBuildConfig, pool: PromptPool) -> tuple[nn.Module, dict]:
    model = _init(WorldFeatureNet, cfg.seed, "featnet")
    c = cfg.featnet

    def loss_fn(g):
        scenes, _, images = render_batch(c.batch_size, g)
        x, kind = degrade(images, g)
        attr, deg = model(x)
        return inspector_loss(split_attribute_logits(attr), scenes) + F.cross_entropy(deg, kind), {}

    losses = _train_loop(model, c, "featnet", cfg.seed, loss_fn)
    g = torch.Generator().manual_seed(cfg.seed + 2)
    _, _, images = render_batch(512, g)
    x, kind = degrade(images, g)
    with torch.no_grad():
        acc = float((model(x)[1].argmax(1) == kind).float().mean())
    return model, {"final_loss": _tail_mean(losses), "degradation_acc": acc}


def _pool_batch(pool: PromptPool, n: int, g: torch.Generator):
    idx = torch.randint(0, pool.size, (n,), generator=g)
    specs = pool.specs.index(idx)
    scenes = complete_specs(specs, g)
    return idx, specs, scenes, render(scenes, g)


def train_clip(cfg: WorldBuildConfig, pool: PromptPool, stage: str = "clip") -> tuple[nn.Module, dict]:
    """The world clip, or (stage "clip_coarse") the same recipe on 4x4-pixel cell means."""
    model = _init(lambda: build_network(stage), cfg.seed, stage)
    c = getattr(cfg, stage)

    def loss_fn(g):
        idx, _, _, images = _pool_batch(pool, c.batch_size, g)
        states, mask = pool.text(idx)
        # Identical prompts in a batch are all positives (soft targets), not false negatives.
        prompts = [pool.prompts[i] for i in idx.tolist()]
        ids = {p: k for k, p in enumerate(dict.fromkeys(prompts))}
        key = torch.tensor([ids[p] for p in prompts])
        same = (key[:, None] == key[None, :]).float()
        target = same / same.sum(1, keepdim=True)

        def contrastive(images, txt):
            logits = model.logit_scale.exp().clamp(max=100) * model.embed_images(images) @ txt.T  # (B, B)
            return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

        images = _augment(images, g)
        txt = model.embed_text(states, mask)
        if c.adv_eps > 0:  # the attack moves only the images: the text side is a constant to it
            images = _adversarial(images, lambda x: contrastive(x, txt.detach()), c.adv_eps, c.adv_steps)
        return contrastive(images, txt), {}

    losses = _train_loop(model, c, stage, cfg.seed, loss_fn)
    return model, {"final_loss": _tail_mean(losses), **_ranking_metrics(pool, cfg.seed + 3,
                                                                           lambda im, s, m: model(im, s, m))}


def train_judge(cfg: WorldBuildConfig, pool: PromptPool) -> tuple[nn.Module, dict]:
    model = _init(WorldJudge, cfg.seed, "judge")
    c = cfg.judge

    def regression_loss(g):
        idx, _, scenes, images = _pool_batch(pool, c.batch_size, g)
        # Prompt: its own (35 %), its one-change perturbation (45 %) or a random one (20 %).
        u = torch.rand(c.batch_size, generator=g)
        other = torch.randint(0, 2 * pool.size, (c.batch_size,), generator=g)
        tidx = torch.where(u < 0.35, idx, torch.where(u < 0.8, idx + pool.size, other))
        target = match(pool.specs.index(tidx), scenes)["fraction"]
        states, mask = pool.text(tidx)
        logit = model(_augment(images, g), states, mask)
        return F.binary_cross_entropy_with_logits(logit, target), {}

    def ranking_loss(g):
        idx, _, scenes, images = _pool_batch(pool, c.batch_size, g)
        # Every image against three prompts: its own, its one-change perturbation and a random
        # pool prompt. BCE to the fraction of attributes met, plus a ranking term that asks the
        # own prompt to outscore every prompt the image does not satisfy. Regression alone left
        # the judge nearly blind to one changed attribute (one-change ranking 0.74; single-shape
        # L1 prompts at chance): one wrong shape moves a long prompt's target little.
        memory = model.image_memory(_augment(images, g))
        other = torch.randint(0, 2 * pool.size, (c.batch_size,), generator=g)
        tidx = torch.cat([idx, idx + pool.size, other])
        m = match(pool.specs.index(tidx), Scenes.cat([scenes] * 3))
        states, mask = pool.text(tidx)
        logit = model.score_memory(memory.repeat(3, 1, 1), states, mask)
        bce = F.binary_cross_entropy_with_logits(logit, m["fraction"])
        pos, neg = logit[: c.batch_size].repeat(2), logit[c.batch_size:]
        wrong = (~m["all_correct"][c.batch_size:]).float()
        rank = (F.softplus(neg - pos) * wrong).sum() / wrong.sum().clamp(min=1)
        return bce + rank, {}

    # The regression cycle is cached in the work dir (keyed by its own settings), so changing only
    # the ranking cycle does not retrain it.
    cycle1 = _stage_hash(cfg, "judge", exclude=("rank_steps", "rank_lr"))
    path = Path(cfg.work_dir) / f"judge_cycle1_{cycle1}.safetensors"
    if path.is_file():
        model.load_state_dict(load_safetensors(path))
        print(f"world build: judge regression cycle loaded from {path}")
        losses = []
    else:
        losses = _train_loop(model, c, "judge", cfg.seed, regression_loss)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_safetensors({k: v.detach() for k, v in model.state_dict().items()}, path)
    if c.rank_steps:
        rank_cfg = StageConfig(steps=c.rank_steps, batch_size=c.batch_size, lr=c.rank_lr)
        losses += _train_loop(model, rank_cfg, "judge-ranking", cfg.seed, ranking_loss)
    return model, {"final_loss": _tail_mean(losses),
                   **_ranking_metrics(pool, cfg.seed + 4, lambda im, s, m: torch.sigmoid(model(im, s, m)))}


def train_quality(cfg: WorldBuildConfig, pool: PromptPool) -> tuple[nn.Module, dict]:
    model = _init(WorldQuality, cfg.seed, "quality")
    c = cfg.quality

    def loss_fn(g):
        _, _, images = render_batch(c.batch_size, g)
        x, kind = degrade(images, g)
        return F.binary_cross_entropy_with_logits(model(x), (kind == 0).float()), {}

    losses = _train_loop(model, c, "quality", cfg.seed, loss_fn)
    g = torch.Generator().manual_seed(cfg.seed + 5)
    _, _, images = render_batch(512, g)
    bad, kind = degrade(images, g, p_clean=0.0)
    with torch.no_grad():
        acc = float((model(images) > model(bad)).float().mean())
    return model, {"final_loss": _tail_mean(losses), "rank_real_over_degraded": acc}


def _soften(images: torch.Tensor) -> torch.Tensor:
    """Down-then-up-sampled copy: the "not high-resolution" class of R0+'s guidance."""
    return F.interpolate(F.avg_pool2d(images, 2), scale_factor=2, mode="bilinear", align_corners=False)


def train_sharpness(cfg: WorldBuildConfig, pool: PromptPool) -> tuple[nn.Module, dict]:
    from ..diffusion import VPSchedule, add_noise

    model, c, schedule = _init(WorldSharpness, cfg.seed, "sharpness"), cfg.sharpness, VPSchedule()
    t_max = 600  # above this the two classes are indistinguishable under the noise

    def batch(g, n):
        _, _, images = render_batch(n // 2, g)
        x0 = torch.cat([images, _soften(images)])
        label = torch.cat([torch.ones(n // 2), torch.zeros(n // 2)])
        t = torch.randint(0, t_max, (len(x0),), generator=g)
        return add_noise(x0, torch.randn(x0.shape, generator=g), t, schedule), t, label

    def loss_fn(g):
        x_t, t, label = batch(g, c.batch_size)
        return F.binary_cross_entropy_with_logits(model(x_t, t), label), {}

    losses = _train_loop(model, c, "sharpness", cfg.seed, loss_fn)
    x_t, t, label = batch(torch.Generator().manual_seed(cfg.seed + 6), 1024)
    with torch.no_grad():
        acc = float(((model(x_t, t) > 0).float() == label).float().mean())
    return model, {"final_loss": _tail_mean(losses), "accuracy_t_below_600": acc}


@torch.no_grad()
def _ranking_metrics(pool: PromptPool, seed: int, score) -> dict:
    """How often a matching (image, prompt) pair outscores the same image with a prompt it does
    not satisfy (a random pool prompt, or the one-change perturbation of its own)."""
    g = torch.Generator().manual_seed(seed)
    idx, _, scenes, images = _pool_batch(pool, 512, g)
    other = torch.randint(0, pool.size, (512,), generator=g)
    pert = idx + pool.size
    s_pos = score(images, *pool.text(idx))
    out = {}
    for name, neg in (("random", other), ("one_change", pert)):
        wrong = ~match(pool.specs.index(neg), scenes)["all_correct"]
        s_neg = score(images, *pool.text(neg))
        out[f"rank_match_over_{name}"] = float((s_pos > s_neg)[wrong].float().mean())
    return out


# ---------------------------------------------------------------- teacher


def _teacher_lr(c, step: int) -> float:
    """Warm-up then cosine to 10 % of the peak, once per cycle (first cycle, then the finetune one)."""
    peak, s, n = (c.lr, step, c.steps) if step < c.steps else (c.finetune_lr, step - c.steps, c.finetune_steps)
    return peak * min(1.0, (s + 1) / 200) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / n)))


class _TeacherBatches(torch.utils.data.Dataset):
    """Item i = the teacher's training batch at step `start + i`.

    Each batch is drawn from a generator derived from (seed, step) alone, so the stream is the
    same whether it is rendered in this process or in any number of loader workers.
    """

    def __init__(self, cfg: WorldBuildConfig, stage: str, pool: PromptPool | CaptionPool, start: int, total: int):
        self.cfg, self.stage, self.pool, self.start, self.total = cfg, stage, pool, start, total

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, i: int):
        c, step = getattr(self.cfg, self.stage), self.start + i
        g = step_generator(self.cfg.seed, "teacher", step)  # one stream key for both teachers
        if isinstance(self.pool, CaptionPool):  # web captions: pool scenes re-rendered with fresh jitter
            idx = torch.randint(0, self.pool.size, (c.batch_size,), generator=g)
            images = render(self.pool.scenes.index(idx), g)
        else:
            idx, _, _, images = _pool_batch(self.pool, c.batch_size, g)
        drop = torch.rand(c.batch_size, generator=g) < c.cond_drop
        x0 = F.pixel_unshuffle(images, 2)  # (B, 12, 16, 16)
        t = torch.randint(0, 1000, (c.batch_size,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        # Offset noise: SD1.5's schedule leaks sqrt(abar_999) = 0.068 of the image at the top
        # step, and on 16x16 latents the channel means of pure noise (std 0.06) are as large as
        # that leak. Without this the teacher reads each channel's mean off the starting noise:
        # random background colours and a 2x2 checkerboard (the 12 unshuffled channels).
        eps = eps + c.offset_noise * torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=g)
        return idx, drop, x0, t, eps


def _reset_cross_attention(model: nn.Module, seed: int) -> None:
    """Forget everything the UNet reads from text: fresh key/value projections of every
    cross-attention layer and a zero output projection, so the network starts unconditional
    (its image prior intact) and learns the prompts anew from its own captions."""
    torch.manual_seed(int(step_generator(seed, "teacher-reset", -1).initial_seed()))
    for name, module in model.named_modules():
        if name.endswith("attn2"):
            module.to_k.reset_parameters()
            module.to_v.reset_parameters()
            nn.init.zeros_(module.to_out[0].weight)
            nn.init.zeros_(module.to_out[0].bias)


def train_teacher(cfg: WorldBuildConfig, stage: str, pool: PromptPool | CaptionPool, work_dir: Path,
                  out_dir: Path) -> tuple[nn.Module, dict]:
    """Text-conditional eps-prediction UNet on pixel-unshuffled renders (SD1.5's schedule).

    Caption dropout (`cond_drop`) replaces the prompt by "" so the same network gives the
    unconditional score for CFG. The EMA weights are what ships. `device` and `workers` let the
    same recipe run on a GPU with batches rendered in parallel. `stage` is "teacher" (exact
    captions, the shipped base model) or "teacher_web" (web captions, world v2; SPEC 6.1).
    """
    from diffusers import UNet2DConditionModel

    from ..diffusion import VPSchedule, add_noise

    c = getattr(cfg, stage)
    device = torch.device(c.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed)
    model = UNet2DConditionModel(**teacher_unet_config())
    if c.init:
        model.load_state_dict(load_safetensors(asset_path(c.init, out_dir, verify=True)))
        if c.reset_cross_attention:
            _reset_cross_attention(model, cfg.seed)
    ema = UNet2DConditionModel(**teacher_unet_config()).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    model.to(device)
    ema.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=0.0)
    schedule = VPSchedule()
    state_path = work_dir / f"{stage}_state.pt"
    # Where a run stops does not change its steps: a longer `stop_at` resumes a shorter one's state.
    resume_hash = _stage_hash(cfg, stage, exclude=("stop_at",))
    start, losses = 0, []
    if state_path.exists():
        st = torch_load_safe(state_path)
        if st.get("hash") == resume_hash:
            model.load_state_dict(st["model"])
            ema.load_state_dict(st["ema"])
            if st["opt"]:  # empty at a cycle boundary: the next step starts a fresh optimizer
                opt.load_state_dict(st["opt"])
            start, losses = int(st["step"]), [float(x) for x in st["losses"]]
            print(f"world build: {stage} resumes at step {start}")
    total = c.stop_at or c.steps + c.finetune_steps
    # The prompt states live on the device (one copy, fp16); loader workers only draw indices.
    text_pool = replace(pool, states=pool.states.to(device), mask=pool.mask.to(device),
                        empty_states=pool.empty_states.to(device))
    loader = torch.utils.data.DataLoader(
        _TeacherBatches(cfg, stage, pool, start, total), batch_size=None, shuffle=False, num_workers=c.workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if c.workers else None)
    model.train()
    ema_params, model_params = list(ema.parameters()), list(model.parameters())
    pending: list[torch.Tensor] = []  # per-step losses still on the device (read in groups: fewer syncs)

    def flush():
        losses.extend(torch.stack(pending).tolist())
        pending.clear()

    bar = tqdm(range(start, total), desc=f"world build: {stage}", unit="step", initial=start, total=total,
               dynamic_ncols=True)
    for step, (idx, drop, x0, t, eps) in zip(bar, loader):
        if step == c.steps:
            # Second cycle: continue from the EMA weights with a fresh optimizer (the first cycle's
            # loss was still falling; a restart at a lower peak lr keeps what it learned).
            model.load_state_dict(ema.state_dict())
            opt = torch.optim.AdamW(model.parameters(), lr=c.finetune_lr, weight_decay=0.0)
        idx, drop, x0, t, eps = (v.to(device, non_blocking=True) for v in (idx, drop, x0, t, eps))
        # Padding states are kept (as SD keeps CLIP's padding tokens); no attention mask.
        states = torch.where(drop[:, None, None], text_pool.empty_states, text_pool.text(idx)[0])
        x_t = add_noise(x0, eps, t, schedule)
        pred = model(x_t, t, encoder_hidden_states=states).sample
        loss = F.mse_loss(pred, eps)
        for grp in opt.param_groups:
            grp["lr"] = _teacher_lr(c, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            decay = min(c.ema_decay, (1 + step) / (10 + step))
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        pending.append(loss.detach())
        if step % 20 == 0:
            flush()
            bar.set_postfix(loss=f"{sum(losses[-100:]) / len(losses[-100:]):.4f}")
        if (step + 1) % c.checkpoint_every == 0 and step + 1 < total:
            flush()
            buf = torch_save_bytes({"hash": resume_hash, "model": model.state_dict(),
                                    "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step + 1,
                                    "losses": torch.tensor(losses)})
            atomic_write_bytes(state_path, buf)
    if pending:
        flush()
    curve = [sum(losses[i:i + 100]) / len(losses[i:i + 100]) for i in range(0, len(losses), 100)]
    return ema.cpu().eval(), {"final_loss": _tail_mean(losses, 200), "loss_curve_per_100_steps": curve}


# ---------------------------------------------------------------- driver


def load_or_build_pool(cfg: WorldBuildConfig, work_dir: Path) -> PromptPool:
    path = work_dir / f"prompt_pool_{cfg.pool_size}_{cfg.seed}.safetensors"
    if path.exists():
        tensors = load_safetensors(path)
        prompts = json.loads((path.with_suffix(".json")).read_text())
        return PromptPool.from_tensors(tensors, prompts)
    encoder = WorldTextEncoder()
    bar = tqdm(total=2 * cfg.pool_size, desc="world build: prompt pool", unit="prompt", dynamic_ncols=True)
    pool = PromptPool.build(cfg.pool_size, cfg.seed, encoder, progress=lambda k, n: bar.update(k - bar.n))
    bar.close()
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(pool.prompts).encode())
    atomic_save_safetensors(pool.tensors(), path)
    return pool


def load_or_build_caption_pool(cfg: WorldBuildConfig, work_dir: Path) -> CaptionPool:
    """The web-caption teacher's scenes and captions, encoded once and cached (keyed by the captioner)."""
    key = hashlib.sha256(json.dumps({"seed": cfg.seed, "captioner": to_dict(cfg.captioner)},
                                    sort_keys=True).encode()).hexdigest()[:12]
    path = work_dir / f"caption_pool_{key}.safetensors"
    if path.exists():
        return CaptionPool.from_tensors(load_safetensors(path), json.loads(path.with_suffix(".json").read_text()))
    bar = tqdm(total=cfg.captioner.pool_size, desc="world build: caption pool", unit="caption", dynamic_ncols=True)
    pool = CaptionPool.build(cfg.captioner, cfg.seed + 11, WorldTextEncoder(), progress=lambda k, n: bar.update(k - bar.n))
    bar.close()
    atomic_write_bytes(path.with_suffix(".json"), json.dumps(pool.captions).encode())
    atomic_save_safetensors(pool.tensors(), path)
    return pool


def build_world(cfg: WorldBuildConfig, only: list[str] | None = None, force: bool = False,
                command: str = "rzero world build") -> dict:
    """Run the build stages; returns the manifest written next to the assets."""
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir) if cfg.out_dir else default_asset_dir()
    work = Path(cfg.work_dir)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(out) if (out / MANIFEST).exists() else {"assets": {}}
    commit = _git_commit()
    stages = list(only) if only else list(STAGES)
    for s in stages:
        if s not in STAGES:
            raise ValueError(f"unknown build stage '{s}'; choose from {', '.join(STAGES)}")
    for s in TEACHER_STAGES:
        device = getattr(cfg, s).device
        if s in stages and device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"{s}.device is '{device}' but no CUDA GPU is visible; pass "
                             f"{s}.device=cpu (configs/world_build.yaml is the CPU recipe)")
    pool = None
    for stage in stages:
        h = _stage_hash(cfg, stage)
        path = out / ASSET_FILES[stage]
        entry = manifest["assets"].get(stage, {})
        if not force and path.exists() and entry.get("config_hash") == h and entry.get("sha256") == sha256_file(path):
            print(f"world build: {stage} is up to date ({path.name}), skipping")
            continue
        web = stage in TEACHER_STAGES and getattr(cfg, stage).captions == "web"
        if pool is None and not web:  # the web-caption teacher reads its own caption pool only
            pool = load_or_build_pool(cfg, work)
        t0 = time.time()
        if stage in TEACHER_STAGES:
            data = load_or_build_caption_pool(cfg, work) if web else pool
            model, metrics = train_teacher(cfg, stage, data, work, out)
        else:
            model, metrics = {"inspector": train_inspector, "featnet": train_featnet, "clip": train_clip,
                              "clip_coarse": partial(train_clip, stage="clip_coarse"), "judge": train_judge,
                              "quality": train_quality, "sharpness": train_sharpness}[stage](cfg, pool)
        atomic_save_safetensors(model.state_dict(), path, metadata={"stage": stage, "config_hash": h})
        # Re-read before writing: another build process may have finished a stage meanwhile.
        manifest = read_manifest(out) if (out / MANIFEST).exists() else {"assets": {}}
        manifest["assets"][stage] = {
            "file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            "params": sum(p.numel() for p in model.parameters()), "config_hash": h,
            "train_seconds": round(time.time() - t0, 1), "git_commit": commit, "command": command,
            "metrics": metrics,
        }
        manifest.update({"build_command": command, "git_commit": commit, "config": to_dict(cfg),
                         "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                         "python": sys.version.split()[0], "torch": torch.__version__})
        atomic_write_bytes(out / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        print(f"world build: {stage} done in {time.time() - t0:.0f}s: "
              + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return manifest
