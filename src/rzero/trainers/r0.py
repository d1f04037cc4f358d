"""R0: regularized reward maximization of a K-step generator (SPEC 1; R0+ switches of 1.4).

One iteration, top to bottom:
  1. prompts and noise from this iteration's generator (only prompts: no training images);
  2. eta ~ U[eta_min, eta_max] per trajectory (or per step);
  3. run the K-step generator with gradients through every step (R0+ intermediate
     supervision: stop at a random step k, earlier steps without gradient);
  4. decode and score with every reward; inject the normalized composite direction;
  5. add the weight regularizer lambda_w ||theta - theta0||^2.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config.schema import TrainConfig
from ..eval.report import save_grid
from ..generator import FewStepGenerator
from ..generator.load import backbone_meta, build_backbone
from ..losses import WeightRegularizer
from ..losses.lora import LoraDeltaRegularizer, trainable_denoiser
from ..rewards import make_reward
from ..rewards.composite import CompositeReward
from ..utils.seeding import per_image_draws, randn_per_image
from .engine import Trainer
from .prompts import grid_prompts, prompt_source, tracking_subset


class R0Trainer(Trainer):
    def __init__(self, cfg: TrainConfig, out_dir: str | Path, asset_dir=None, backbone=None, rewards=None):
        super().__init__(cfg, out_dir)
        self.asset_dir = asset_dir
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        self.backbone = backbone if backbone is not None else build_backbone(cfg, asset_dir)
        # Only the denoiser trains (all of it, or LoRA adapters on it); text encoders and VAE stay frozen.
        lora = cfg.lora
        self.model = trainable_denoiser(self.backbone.unet, lora.rank, lora.alpha, lora.target_modules).train()
        gc = cfg.generator
        self.generator = FewStepGenerator(self.backbone, gc.steps, gc.timesteps or None, gc.renoise,
                                          gc.gradient_checkpointing)
        if rewards is None:
            rewards = {name: make_reward(name, asset_dir=asset_dir, **cfg.reward.options.get(name, {}))
                       for name in cfg.reward.names}
        self.reward = CompositeReward(rewards, cfg.reward.weights, cfg.reward.normalize_grads, cfg.reward.delta)
        self.cfg_teacher = None
        if cfg.reward.cfg_weight > 0:  # implicit CFG reward: a frozen copy of the still-pretrained denoiser
            from .fake_score import backbone_with, frozen_copy

            self.cfg_teacher = backbone_with(self.backbone, frozen_copy(self.backbone.unet))
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if lora.rank > 0:  # SPEC 1.3: with LoRA the regularizer acts on the LoRA delta
            self.regularizer = LoraDeltaRegularizer(self.model, cfg.regularization.weight)
        else:
            self.regularizer = WeightRegularizer(named, cfg.regularization.weight)
        self.prompts = prompt_source(cfg.backbone, cfg.prompt_file)
        if cfg.track_every and cfg.track_prompt_file:  # a bad file fails now, not at the first evaluation
            self._tracking_prompts()
        self.sharpness = None
        if cfg.r0plus.hires_guidance:
            from ..world.loaders import load_world_network

            self.sharpness = load_world_network("sharpness", asset_dir)
        self.setup()

    def hires_direction(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """R0+ guidance: grad_x0 log p(sharp | x_t, t) at the noised generator output (SPEC 1.4)."""
        from ..diffusion import add_noise

        sched = self.backbone.schedule
        x0 = images.detach().requires_grad_(True)
        t = torch.randint(0, self.cfg.r0plus.hires_t_max, (len(x0),), generator=g)
        x_t = add_noise(x0, torch.randn(x0.shape, generator=g), t, sched)
        logp = torch.nn.functional.logsigmoid(self.sharpness(x_t, t))
        (grad,) = torch.autograd.grad(logp.sum(), x0)  # chain rule already includes a_t
        return grad

    def cfg_direction(self, x0: torch.Tensor, cond, g: torch.Generator) -> torch.Tensor:
        """Implicit CFG reward (SPEC 1.2): a_t (s(x_t|c) - s(x_t|empty)) of the frozen teacher at noised x0."""
        from ..losses import implicit_cfg_direction
        from .fake_score import sample_timesteps

        rc, teacher = self.cfg.reward, self.cfg_teacher
        teacher.unet.to(x0.device)  # no-op after the first call
        t = sample_timesteps(teacher.schedule, len(x0), rc.cfg_t_min, rc.cfg_t_max, g).to(x0.device)
        noise = torch.randn(x0.shape, generator=g).to(x0.device)
        return implicit_cfg_direction(teacher, x0, t, noise, cond, teacher.empty_cond(len(x0)))

    def train_step(self, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cfg, gc = self.cfg, self.cfg.generator
        b = cfg.batch_size
        # Weight regularization first: under FSDP the parameters are the sharded ones only
        # until the forward pass gathers them (the engine reshards before every iteration).
        params = [p for p in self.model.parameters() if p.requires_grad]
        loss_reg, m_reg = self.regularizer(params)
        # 1) Prompts and noise.
        prompts = self.prompts(b, g)
        cond = self.backbone.encode_prompts(prompts)
        device = next(self.model.parameters()).device
        noise = torch.randn((b, *self.backbone.latent_shape), generator=g).to(device)
        # 2) Random eta keeps the generator a sampler of the image manifold (SPEC 1.1).
        eta = self.generator.sample_eta(b, gc.eta_min, gc.eta_max, gc.eta_per_step, g)
        # 3) Unrolled K-step generation (R0+: stop at a random intermediate step).
        stop = grad_from = k = None
        if cfg.r0plus.intermediate_supervision:
            k = int(torch.randint(cfg.r0plus.intermediate_first_step, gc.steps + 1, (1,), generator=g))
            # "step": reward x0_k itself (SPEC 1.4). "final": reward the final output with the
            # gradient cut before step k (truncated backpropagation through the sampler).
            stop = k if cfg.r0plus.intermediate_target == "step" else None
            grad_from = k
        out = self.generator(noise, cond, eta, generator=g, stop_at=stop, grad_from=grad_from)
        images = self.backbone.decode(out.x0)  # (B, 3, H, W), nominally [-1, 1]
        # 4) Rewards through the normalized-gradient surrogate.
        extra = {}
        if self.sharpness is not None:
            extra["hires"] = (cfg.r0plus.hires_weight, self.hires_direction(images, g))
        if self.cfg_teacher is not None:  # on the latent x0, where the teacher lives
            extra["cfg"] = (cfg.reward.cfg_weight, self.cfg_direction(out.x0, cond, g), out.x0)
        loss_reward, metrics = self.reward.loss(images, prompts, extra)
        # 5) Weight regularization toward the pretrained weights (computed above).
        metrics.update(m_reg)
        if k is not None:
            metrics["r0plus/step"] = float(k)
        return loss_reward + loss_reg, metrics

    @torch.no_grad()
    def sample_grid(self, path: Path) -> None:
        prompts, seeds = grid_prompts(self.cfg.backbone, self.cfg.prompt_file)
        prompts = [p for p in prompts for _ in range(seeds)]
        device = next(self.model.parameters()).device
        noise = randn_per_image(self.backbone.latent_shape, 0, range(len(prompts))).to(device)
        was = self.model.training
        self.model.eval()
        images = self.generator.sample(prompts, noise, self.cfg.generator.inference_eta,
                                       generator=torch.Generator().manual_seed(0))
        self.model.train(was)
        save_grid(images, path, nrow=seeds, upscale=max(1, 96 // images.shape[-1]))

    @torch.no_grad()
    def track(self) -> dict[str, float]:
        if self.cfg.backbone != "world":
            return self._track_rewards() if self.cfg.track_prompt_file else {}
        from ..eval.world_eval import quick_world_eval

        def generate(prompts, specs, idx):
            noise = randn_per_image(self.backbone.latent_shape, 4321, idx)
            return self.generator.sample(prompts, noise, self.cfg.generator.inference_eta,
                                         generator=torch.Generator().manual_seed(0))

        was = self.model.training
        self.model.eval()
        out = quick_world_eval(generate, self.cfg.track_prompts, asset_dir=self.asset_dir)
        self.model.train(was)
        return out

    @torch.no_grad()
    def _track_rewards(self) -> dict[str, float]:
        """sd15/sd3 curves: each training reward's mean on a fixed, seeded prompt subset, one image
        per prompt with per-image noise (the same images for the same weights, whatever the batch)."""
        from .prompts import TRACK_SEED

        prompts = self._tracking_prompts()
        device = next(self.model.parameters()).device
        was = self.model.training
        self.model.eval()
        sums = dict.fromkeys(self.reward.rewards, 0.0)
        for start in range(0, len(prompts), self.cfg.batch_size):
            idx = range(start, min(start + self.cfg.batch_size, len(prompts)))
            batch = [prompts[i] for i in idx]
            noise, gens = per_image_draws(self.backbone.latent_shape, TRACK_SEED, idx, device)
            images = self.generator.sample(batch, noise, self.cfg.generator.inference_eta, generator=gens)
            for name, reward in self.reward.rewards.items():
                sums[name] += float(reward(images, batch).sum())
        self.model.train(was)
        return {f"reward_{name}": total / len(prompts) for name, total in sums.items()}

    def _tracking_prompts(self) -> list[str]:
        """The fixed tracking subset, read from its file once per run."""
        if getattr(self, "_track_subset", None) is None:
            self._track_subset = tracking_subset(self.cfg.track_prompt_file, self.cfg.track_prompts)
        return self._track_subset

    def snapshot_meta(self) -> dict:
        gc = self.cfg.generator
        return {"steps": gc.steps, "timesteps": [float(t) for t in self.generator.timesteps],
                "renoise": gc.renoise, "inference_eta": gc.inference_eta, **backbone_meta(self.cfg)}
