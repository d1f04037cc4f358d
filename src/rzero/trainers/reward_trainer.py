"""What every reward-driven trainer shares (R0, R0+, DI*, DI++): all but the loss.

A method subclasses `RewardTrainer`, builds its own networks in `build()` (frozen copies of
the pretrained denoiser first, then `self.denoiser`, the network it trains) and writes
`train_step`. The base owns, in this order:
  1. the backbone, built on the accelerator's device, and the checks of schedule-dependent
     options against its schedule (sd15 reads its schedule from the model folder, so the
     config alone cannot check them);
  2. the generator (`build_generator`: R0's K-step sampler over `generator_timesteps()`) and
     `self.model`, the `TrainableGenerator` the engine optimizes and DDP wraps;
  3. the rewards (one CompositeReward) and the training prompt source;
  4. placement for the engine (`owned_modules`, `trained_modules`, checkpoint names);
  5. the fixed sample grid, held-out tracking and the snapshot's metadata.
"""

from __future__ import annotations

import contextlib
import inspect
from pathlib import Path

import torch

from ..config.schema import TrainConfig, check_timesteps
from ..data.prompts import TRACK_SEED, grid_prompts, prompt_source, tracking_subset
from ..eval.report import save_grid
from ..generator import FewStepGenerator, TrainableGenerator
from ..generator.load import backbone_meta, build_backbone
from ..rewards.composite import CompositeReward
from ..utils.seeding import per_image_draws, randn_per_image
from .engine import Trainer


class RewardTrainer(Trainer):
    """Base of R0 / DI* / DI++ (see the module docstring). `rewards` and `backbone` may be given
    ready-made (tests, benchmarks); by default they are built from the config."""

    denoiser: torch.nn.Module  # the trained network (all of it, or its LoRA adapters), set by build()

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, asset_dir=None, backbone=None, rewards=None):
        super().__init__(cfg, out_dir)
        self.asset_dir = asset_dir
        torch.manual_seed(cfg.seed)
        torch.set_num_threads(cfg.threads)
        self.backbone = backbone if backbone is not None else build_backbone(cfg, asset_dir, self.device)
        self.check_schedule(self.backbone.schedule)
        self.build()
        self.generator = self.build_generator()
        self.model = TrainableGenerator(self.generator, self.denoiser).train()
        self.reward = CompositeReward(rewards if rewards is not None else self.make_rewards(), cfg.reward.weights,
                                      cfg.reward.normalize_grads, cfg.reward.delta)
        self.prompts = prompt_source(cfg.backbone, cfg.prompt_file)
        if cfg.track_every and cfg.track_prompt_file:  # a bad file fails now, not at the first evaluation
            self._tracking_prompts()
        self.setup()

    # ------------------------------------------------------------ what a method provides
    def build(self) -> None:
        """Set `self.denoiser` and the method's own networks."""
        raise NotImplementedError

    def generator_timesteps(self) -> list[float] | None:
        """The generator's timesteps (None: evenly spaced from the top)."""
        return self.cfg.generator.timesteps or None

    # ------------------------------------------------------------ shared construction
    def check_schedule(self, schedule) -> None:
        """Schedule-dependent options against the loaded backbone's schedule (one-line ValueError)."""
        cfg = self.cfg
        high = 1.0 if schedule.kind == "flow" else float(schedule.num_train_timesteps - 1)
        check_timesteps("generator.timesteps", cfg.generator.timesteps, 0.0, high)
        if cfg.method == "distar" and cfg.di.t_init > high:
            raise ValueError(f"di.t_init = {cfg.di.t_init:g} is outside the backbone's schedule [0, {high:g}] "
                             "(< 0: the top timestep)")
        if cfg.r0plus.hires_guidance and (schedule.kind != "vp" or cfg.r0plus.hires_t_max > schedule.num_train_timesteps):
            raise ValueError(f"r0plus.hires_t_max = {cfg.r0plus.hires_t_max} needs a VP schedule with at least that many "
                             f"timesteps; this backbone's is {schedule.kind} with {schedule.num_train_timesteps}")

    def build_generator(self) -> FewStepGenerator:
        gc = self.cfg.generator
        return FewStepGenerator(self.backbone, gc.steps, self.generator_timesteps(), gc.renoise,
                                gc.gradient_checkpointing)

    def make_rewards(self) -> dict:
        """The config's rewards; those that take a device are built on the run's (unless an option says)."""
        from ..rewards import REWARDS, make_reward

        rc, out = self.cfg.reward, {}
        for name in rc.names:
            options = dict(rc.options.get(name, {}))
            if name in REWARDS and "device" in inspect.signature(REWARDS[name]).parameters:
                options.setdefault("device", self.device)
            out[name] = make_reward(name, asset_dir=self.asset_dir, **options)
        return out

    # ------------------------------------------------------------ placement (engine hooks)
    def owned_modules(self) -> dict[str, torch.nn.Module]:
        # The generator holds the backbone (denoiser, VAE, text encoders) and its timestep table.
        return {"model": self._unwrapped(), "generator": self.generator, "reward": self.reward}

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.denoiser}

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        # The denoiser's own names: checkpoints and snapshots load into a plain backbone.
        return [(n, p) for n, p in self.denoiser.named_parameters() if p.requires_grad]

    def fsdp_root(self) -> torch.nn.Module:
        return self.denoiser

    # ------------------------------------------------------------ grid, tracking, snapshot
    @contextlib.contextmanager
    def _eval_mode(self):
        """The model in eval mode for a grid or an evaluation, then back in the mode it was in."""
        was = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was)

    @torch.no_grad()
    def sample_grid(self, path: Path) -> None:
        prompts, seeds = grid_prompts(self.cfg.backbone, self.cfg.prompt_file)
        prompts = [p for p in prompts for _ in range(seeds)]
        noise = randn_per_image(self.backbone.latent_shape, 0, range(len(prompts))).to(self.device)
        with self._eval_mode():
            images = self.generator.sample(prompts, noise, self.cfg.generator.inference_eta,
                                           generator=torch.Generator().manual_seed(0))
        save_grid(images.cpu(), path, nrow=seeds, upscale=max(1, 96 // images.shape[-1]))

    @torch.no_grad()
    def track(self) -> dict[str, float]:
        if self.cfg.backbone != "world":
            return self._track_rewards() if self.cfg.track_prompt_file else {}
        from ..eval.world_eval import quick_world_eval

        def generate(prompts, specs, idx):
            noise = randn_per_image(self.backbone.latent_shape, 4321, idx).to(self.device)
            return self.generator.sample(prompts, noise, self.cfg.generator.inference_eta,
                                         generator=torch.Generator().manual_seed(0)).cpu()  # evaluators: CPU

        with self._eval_mode():
            return quick_world_eval(generate, self.cfg.track_prompts, asset_dir=self.asset_dir)

    @torch.no_grad()
    def _track_rewards(self) -> dict[str, float]:
        """sd15/sd3 curves: each training reward's mean on a fixed, seeded prompt subset, one image
        per prompt with per-image noise (the same images for the same weights, whatever the batch)."""
        prompts = self._tracking_prompts()
        sums = dict.fromkeys(self.reward.rewards, 0.0)
        with self._eval_mode():
            for start in range(0, len(prompts), self.cfg.batch_size):
                idx = range(start, min(start + self.cfg.batch_size, len(prompts)))
                batch = [prompts[i] for i in idx]
                noise, gens = per_image_draws(self.backbone.latent_shape, TRACK_SEED, idx, self.device)
                images = self.generator.sample(batch, noise, self.cfg.generator.inference_eta, generator=gens)
                for name, reward in self.reward.rewards.items():
                    sums[name] += float(reward(images, batch).sum())
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
