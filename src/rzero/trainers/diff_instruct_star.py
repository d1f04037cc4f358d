"""Diff-Instruct*: reward plus a pseudo-Huber score divergence, one-step generator (SPEC 2).

Three copies of the pretrained denoiser: the generator (trained), the reference s_ref
(frozen, queried with CFG alpha_cfg) and the fake score psi (trained online on the
generator's samples, trainers/fake_score.py).

One iteration, top to bottom:
  1. prompts and noise from this iteration's generator;
  2. x0 = G(z, c): one network call at t_init (DI++ subclasses run K steps);
  3. psi follows the generator: K_fake denoising-score-matching updates on sg(x0) (with
     grad_accum > 1, on every micro-batch's x0 before the first divergence: see
     `begin_iteration`);
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

import torch

from ..backbones.lora import trainable_denoiser
from ..diffusion import broadcast_to
from ..losses import huber_push, inject, pseudo_huber
from .fake_score import FakeScore, backbone_with, frozen_copy, sample_timesteps, score_difference
from .reward_trainer import RewardTrainer


class DiffInstructStarTrainer(RewardTrainer):
    """DI* on any backbone; DI++ (trainers/diff_instruct_pp.py) changes `divergence_push` only."""

    def build(self) -> None:
        cfg, di = self.cfg, self.cfg.di
        # Copies before any training, in the backbone's dtype: the reference stays the pretrained
        # network; psi starts from it (and keeps float32 master weights, like the generator).
        self.ref = backbone_with(self.backbone, frozen_copy(self.backbone.unet))
        self.fake = FakeScore(self.backbone, di.fake_lr, (cfg.optim.beta1, cfg.optim.beta2), di.cond_drop,
                              (di.t_min, di.t_max))
        self.denoiser = trainable_denoiser(self.backbone.unet)
        self._uncond: dict[int, object] = {}
        self._fake_done: tuple[float, list[torch.Tensor]] | None = None

    def generator_timesteps(self) -> list[float] | None:
        """DI*: one network call at t_init (default: the top timestep)."""
        t_init = self.cfg.di.t_init
        return [t_init] if t_init >= 0 else super().generator_timesteps()

    def setup(self) -> None:
        super().setup()
        self.fake.distribute(self.accelerator)  # after placement: psi's optimizer and DDP wrapper

    def owned_modules(self) -> dict[str, torch.nn.Module]:
        return {**super().owned_modules(), "ref": self.ref.unet, "fake_score": self.fake.net}

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {**super().trained_modules(), "fake_score": self.fake.net}

    def place(self, device) -> None:
        super().place(device)
        self._uncond.clear()  # cached features of the empty prompt live on the old device

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

    def push_at(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor,
                cond, uncond, grad_ref: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The detached push on x0 (B, C, h, w) from x_t = a_t x0 + b_t eps at t, with y = s_psi - s_ref_w
        and the reference's guided x0-prediction (with gradient only if `grad_ref`: the "sim" path).
        Also what benchmarks/distar_push.py measures, so the two cannot drift apart."""
        with torch.no_grad():
            x0_fake = self.fake.view.predict_x0(x_t.detach(), t, cond)
        with torch.set_grad_enabled(grad_ref and torch.is_grad_enabled()):
            x0_ref = self.ref.guided_x0(x_t, t, cond, uncond, self.cfg.di.alpha_cfg)  # CFG inside s_ref_w
        y = score_difference(x0_fake, x0_ref.detach(), a_t, b_t)  # s_psi - s_ref_w, (B, C, h, w)
        w = self.weighting(x0.detach(), x0_ref.detach(), a_t, b_t)
        return self.divergence_push(y, w, a_t).detach(), y, x0_ref

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
        push, y, x0_ref = self.push_at(x0, x_t, t, a_t, b_t, cond, uncond, grad_ref=sim)
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

    def sample(self, g: torch.Generator, grad: bool = True) -> tuple[list[str], object, object, torch.Tensor]:
        """Steps 1-2: prompts, their features, the empty prompt's, and x0 = G(z, c) (B, C, h, w)."""
        gc, b = self.cfg.generator, self.cfg.batch_size
        prompts = self.prompts(b, g)
        cond = self.backbone.encode_prompts(prompts)
        uncond = self.empty_cond(b)
        noise = torch.randn((b, *self.backbone.latent_shape), generator=g).to(self.device)
        eta = self.generator.sample_eta(b, gc.eta_min, gc.eta_max, gc.eta_per_step, g)  # K-step DI++
        if grad:  # through DDP's wrapper: the trained forward pass
            return prompts, cond, uncond, self.model(noise, cond, eta, gen=g)
        with torch.no_grad():
            return prompts, cond, uncond, self.generator(noise, cond, eta, generator=g).x0

    def begin_iteration(self) -> None:
        """With grad_accum > 1: psi's K_fake updates on every micro-batch's x0 first.

        What 2 ranks do with one micro-batch each (psi steps once on both ranks' samples, then
        each rank judges its own): the micro-batches' x0 are drawn without gradient, psi steps
        on all of them, and each micro-batch's train_step draws its x0 again (same stream, same
        values; one extra generator forward per micro-batch) and continues its stream where
        psi's draws left it.
        """
        self._fake_done = None
        if self.cfg.grad_accum == 1:
            return
        batches = []
        for micro in range(self.cfg.grad_accum):
            g = self.step_generator(micro)
            _, cond, uncond, x0 = self.sample(g, grad=False)
            batches.append((x0, cond, uncond, g))
        loss = self.fake.update(batches, self.cfg.di.fake_updates)
        self._fake_done = (loss, [g.get_state() for *_, g in batches])

    def train_step(self, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, di = self.cfg, self.cfg.di
        # 1-2) Prompts, noise (and eta, for K-step DI++); the generator's sample, with gradient.
        prompts, cond, uncond, x0 = self.sample(g)
        # 3) psi tracks the current generator before it judges it.
        if self._fake_done is None:
            fake_loss = self.fake.update([(x0, cond, uncond, g)], di.fake_updates)
        else:  # updated by begin_iteration; continue this micro-batch's stream after psi's draws
            fake_loss, states = self._fake_done
            g.set_state(states[self.micro])
        metrics = {"fake/loss": fake_loss}
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
