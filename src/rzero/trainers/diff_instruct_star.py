"""Diff-Instruct*: reward plus a pseudo-Huber score divergence, one-step generator (SPEC 2).

Three copies of the pretrained denoiser: the generator (trained), the reference s_ref
(frozen, queried with CFG alpha_cfg) and the fake score psi (trained online on the
generator's samples, trainers/fake_score.py).

One iteration, top to bottom:
  1. prompts and noise from this iteration's generator;
  2. x0 = G(z, c): one network call at t_init (DI++ subclasses run K steps);
  3. psi follows the generator: K_fake denoising-score-matching updates on sg(x0);
  4. divergence: t ~ U[t_min, t_max], x_t = a_t x0 + b_t eps, y = s_psi - s_ref_w, and the
     push -w(t) a_t C d'(y) on x0 (pseudo-Huber), injected with the detached surrogate
     (DMD-style; option "sim" adds the path through the teacher network, see below);
  5. reward: alpha_rew times R0's composite reward loss (normalized or plain sum);
  6. every `diagnostics_every` iterations: gradient norm of each family w.r.t. the generator
     weights and their cosine (SPEC 1.5; two extra backward passes).

Weighting w(t): "snr" w = b^2/a^2, so the KL push is -(x0_psi - x0_ref) in x0 units;
"dmd" additionally divides by mean|x0 - x0_ref_w| per sample (DMD's normaliser);
"uniform" w = 1 (score units; very large at small t).

gradient_path "sim": the loss -w b_t^2 sg(C d'(y)) . (s_ref_w(x_t) - grad log q(x_t | x0)),
differentiated through x0, x_t and the frozen teacher (our reading of SIM, with b_t^2 moved
into the weighting so that its direct term equals the detached push). No public code
exists to check it against.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..config.schema import TrainConfig
from ..diffusion import broadcast_to
from ..generator import FewStepGenerator
from ..generator.load import build_backbone
from ..losses import huber_push, inject, pseudo_huber
from ..rewards import make_reward
from ..rewards.composite import CompositeReward
from .engine import Trainer
from .fake_score import FakeScore, backbone_with, frozen_copy, sample_timesteps, score_difference
from .prompts import prompt_source
from .r0 import R0Trainer


class DiffInstructStarTrainer(Trainer):
    """DI* on any backbone; `divergence_push` and `build_generator` are what DI++ changes."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, asset_dir=None, backbone=None, rewards=None):
        super().__init__(cfg, out_dir)
        self.asset_dir = asset_dir
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        di = cfg.di
        if cfg.lora.rank > 0:
            raise ValueError("DI*/DI++ train the full denoiser; LoRA is not supported for them yet (set lora.rank=0)")
        self.backbone = backbone if backbone is not None else build_backbone(cfg, asset_dir)
        # Copies before any training: the reference stays the pretrained network, psi starts from it.
        self.ref = backbone_with(self.backbone, frozen_copy(self.backbone.unet))
        self.fake = FakeScore(self.backbone, di.fake_lr, (cfg.optim.beta1, cfg.optim.beta2), di.cond_drop,
                              (di.t_min, di.t_max))
        self.model = self.backbone.unet.requires_grad_(True).train()
        self.generator = self.build_generator()
        if rewards is None:
            rewards = {name: make_reward(name, asset_dir=asset_dir, **cfg.reward.options.get(name, {}))
                       for name in cfg.reward.names}
        self.reward = CompositeReward(rewards, cfg.reward.weights, cfg.reward.normalize_grads, cfg.reward.delta)
        self.prompts = prompt_source(cfg.backbone, cfg.prompt_file)
        self._uncond: dict[int, object] = {}
        self.setup()
        device = next(self._unwrapped().parameters()).device
        self.ref.unet.to(device)
        self.fake.to(device)

    def build_generator(self) -> FewStepGenerator:
        """DI*: one network call at t_init (default: the top timestep)."""
        gc, t_init = self.cfg.generator, self.cfg.di.t_init
        return FewStepGenerator(self.backbone, 1, [t_init] if t_init >= 0 else None, gc.renoise,
                                gc.gradient_checkpointing)

    def divergence_push(self, y: torch.Tensor, w: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        """DI*: -w a_t C d'(y) with C = huber_c sqrt(dim)."""
        return huber_push(y, w, a_t, self._huber_c(y))

    def _huber_c(self, y: torch.Tensor) -> float:
        # Scaled with the dimension (as in iCT's pseudo-Huber) so one huber_c fits every resolution.
        return self.cfg.di.huber_c * math.sqrt(y[0].numel())

    def extra_state(self) -> dict:
        return {"fake_score": self.fake}

    def empty_cond(self, b: int):
        if b not in self._uncond:  # the empty prompt's features never change: encode once per batch size
            with torch.no_grad():
                self._uncond[b] = self.backbone.empty_cond(b)
        return self._uncond[b]

    # ------------------------------------------------------------ the step
    def weighting(self, x0: torch.Tensor, x0_ref: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor) -> torch.Tensor:
        """w(t) per sample, (B, 1, 1, 1); see the module docstring."""
        kind = self.cfg.di.weighting
        if kind == "uniform":
            return torch.ones_like(a_t)
        w = (b_t * b_t) / (a_t * a_t)
        if kind == "dmd":
            w = w / (x0 - x0_ref).abs().flatten(1).mean(1).clamp_min(1e-6).view_as(w)
        return w

    def divergence_loss(self, x0: torch.Tensor, cond, uncond, g: torch.Generator
                        ) -> tuple[torch.Tensor, dict[str, float]]:
        di = self.cfg.di
        sched = self.backbone.schedule
        b = x0.shape[0]
        t = sample_timesteps(sched, b, di.t_min, di.t_max, g).to(x0.device)
        eps = torch.randn(x0.shape, generator=g).to(x0.device)
        a_t, b_t = broadcast_to(sched.alpha(t), x0), broadcast_to(sched.sigma(t), x0)
        sim = di.gradient_path == "sim"
        x_t = a_t * (x0 if sim else x0.detach()) + b_t * eps
        with torch.no_grad():
            x0_fake = self.fake.view.predict_x0(x_t.detach(), t, cond)
        with torch.set_grad_enabled(sim and torch.is_grad_enabled()):
            x0_ref = self.ref.guided_x0(x_t, t, cond, uncond, di.alpha_cfg)  # CFG inside s_ref_w
        y = score_difference(x0_fake, x0_ref.detach(), a_t, b_t)  # s_psi - s_ref_w, (B, C, h, w)
        w = self.weighting(x0.detach(), x0_ref.detach(), a_t, b_t)
        push = self.divergence_push(y, w, a_t).detach()
        if sim:
            # -w b^2 u . (s_ref(x_t) - grad log q(x_t|x0)) = -w u . a (x0_ref(x_t) - x0), u = -push / (w a).
            loss = (push * (x0_ref - x0)).sum() / x0.numel()
        else:
            loss = inject(x0, push)
        metrics = {"div/y_norm": float(y.flatten(1).norm(dim=1).mean()),
                   "div/push_norm": float(push.flatten(1).norm(dim=1).mean()),
                   "div/t_mean": float(t.float().mean())}
        if self.cfg.method == "distar":
            metrics["div/huber"] = float(pseudo_huber(y, self._huber_c(y)).mean())
        return loss, metrics

    def gradient_diagnostics(self, loss_reward: torch.Tensor, loss_div: torch.Tensor) -> dict[str, float]:
        """SPEC 1.5: log10 gradient norm of each loss family w.r.t. the generator, and their cosine."""
        params = [p for p in self.model.parameters() if p.requires_grad]

        def flat_grad(loss):
            grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
            return torch.cat([(gr if gr is not None else torch.zeros_like(p)).flatten() for gr, p in zip(grads, params)])

        g_r, g_d = flat_grad(loss_reward), flat_grad(loss_div)
        n_r, n_d = g_r.norm(), g_d.norm()
        return {"diag/log10_grad_norm_reward": float(torch.log10(n_r.clamp_min(1e-30))),
                "diag/log10_grad_norm_div": float(torch.log10(n_d.clamp_min(1e-30))),
                "diag/cos_reward_div": float((g_r @ g_d) / (n_r * n_d).clamp_min(1e-30))}

    def train_step(self, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, gc, di = self.cfg, self.cfg.generator, self.cfg.di
        b = cfg.batch_size
        # 1) Prompts and noise (and eta, for K-step DI++).
        prompts = self.prompts(b, g)
        cond = self.backbone.encode_prompts(prompts)
        uncond = self.empty_cond(b)
        device = next(self.model.parameters()).device
        noise = torch.randn((b, *self.backbone.latent_shape), generator=g).to(device)
        eta = self.generator.sample_eta(b, gc.eta_min, gc.eta_max, gc.eta_per_step, g)
        # 2) The generator's sample, with gradient.
        x0 = self.generator(noise, cond, eta, generator=g).x0
        # 3) psi tracks the current generator before it judges it.
        metrics = {"fake/loss": self.fake.update(x0, cond, uncond, g, di.fake_updates)}
        # 4) Score divergence to the teacher's CFG score.
        loss_div, m_div = self.divergence_loss(x0, cond, uncond, g)
        metrics.update(m_div)
        # 5) Reward term (R0's composite: normalized per reward, or the plain weighted sum).
        loss_rew, m_rew = self.reward.loss(self.backbone.decode(x0), prompts)
        loss_rew = di.alpha_rew * loss_rew
        metrics.update(m_rew)
        # 6) Diagnostics of the two families (costs two extra backward passes).
        # On the iterations the engine logs as step N * diagnostics_every (it counts from 1).
        if di.diagnostics_every and (self.iteration + 1) % di.diagnostics_every == 0:
            metrics.update(self.gradient_diagnostics(loss_rew, loss_div))
        return loss_rew + loss_div, metrics

    # Inference-side behaviour is R0's: the same generator object, grid, tracking and snapshot metadata.
    sample_grid = R0Trainer.sample_grid
    track = R0Trainer.track
    _track_rewards = R0Trainer._track_rewards
    _tracking_prompts = R0Trainer._tracking_prompts
    snapshot_meta = R0Trainer.snapshot_meta
