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

import copy

import torch

from ..backbones.lora import LoraDeltaRegularizer, trainable_denoiser
from ..losses import WeightRegularizer
from .fake_score import backbone_with, frozen_copy
from .reward_trainer import RewardTrainer


class R0Trainer(RewardTrainer):
    """R0 and R0+ (SPEC 1): the reward loss of the K-step generator plus the weight regularizer."""

    def build(self) -> None:
        cfg = self.cfg
        # Frozen copies first, in the backbone's dtype: the implicit CFG reward's teacher.
        self.cfg_teacher = None
        if cfg.reward.cfg_weight > 0:
            self.cfg_teacher = backbone_with(self.backbone, frozen_copy(self.backbone.unet))
        # Only the denoiser trains (all of it, or LoRA adapters on it); text encoders and VAE stay frozen.
        lora = cfg.lora
        self.denoiser = trainable_denoiser(self.backbone.unet, lora.rank, lora.alpha, lora.target_modules)
        if lora.rank > 0:  # SPEC 1.3: with LoRA the regularizer acts on the LoRA delta
            self.regularizer = LoraDeltaRegularizer(self.denoiser, cfg.regularization.weight)
        else:
            named = [(n, p) for n, p in self.denoiser.named_parameters() if p.requires_grad]
            self.regularizer = WeightRegularizer(named, cfg.regularization.weight)
        self.sharpness = None
        if cfg.r0plus.hires_guidance:  # a private copy: placement moves it, the shared one stays put
            from ..world.loaders import load_world_network

            self.sharpness = copy.deepcopy(load_world_network("sharpness", self.asset_dir)).eval().requires_grad_(False)

    def owned_modules(self) -> dict[str, torch.nn.Module]:
        extra = {"regularizer": self.regularizer, "cfg_teacher": self.cfg_teacher, "sharpness": self.sharpness}
        return {**super().owned_modules(), **{k: m for k, m in extra.items() if m is not None}}

    def hires_direction(self, images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """R0+ guidance: grad_x0 log p(sharp | x_t, t) at the noised generator output (SPEC 1.4)."""
        from ..diffusion import add_noise

        sched = self.backbone.schedule
        x0 = images.detach().requires_grad_(True)
        # Drawn from the step's CPU generator (the same numbers on every device), used on x0's device.
        t = torch.randint(0, self.cfg.r0plus.hires_t_max, (len(x0),), generator=g).to(x0.device)
        x_t = add_noise(x0, torch.randn(x0.shape, generator=g).to(x0.device), t, sched)
        logp = torch.nn.functional.logsigmoid(self.sharpness(x_t, t))
        (grad,) = torch.autograd.grad(logp.sum(), x0)  # chain rule already includes a_t
        return grad

    def cfg_direction(self, x0: torch.Tensor, cond, g: torch.Generator) -> torch.Tensor:
        """Implicit CFG reward (SPEC 1.2): a_t (s(x_t|c) - s(x_t|empty)) of the frozen teacher at noised x0."""
        from ..losses import implicit_cfg_direction
        from .fake_score import sample_timesteps

        rc, teacher = self.cfg.reward, self.cfg_teacher
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
        noise = torch.randn((b, *self.backbone.latent_shape), generator=g).to(self.device)
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
        x0 = self.model(noise, cond, eta, gen=g, stop_at=stop, grad_from=grad_from)  # through DDP's wrapper
        images = self.backbone.decode(x0)  # (B, 3, H, W), nominally [-1, 1]
        # 4) Rewards through the normalized-gradient surrogate.
        extra = {}
        if self.sharpness is not None:
            extra["hires"] = (cfg.r0plus.hires_weight, self.hires_direction(images, g))
        if self.cfg_teacher is not None:  # on the latent x0, where the teacher lives
            extra["cfg"] = (cfg.reward.cfg_weight, self.cfg_direction(x0, cond, g), x0)
        loss_reward, metrics = self.reward.loss(images, prompts, extra)
        # 5) Weight regularization toward the pretrained weights (computed above).
        metrics.update(m_reg)
        if k is not None:
            metrics["r0plus/step"] = float(k)
        return loss_reward + loss_reg, metrics
