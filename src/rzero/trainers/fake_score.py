"""The fake ("assistant") score network of Diff-Instruct* and DI++ (SPEC 2, 3), written once.

psi starts as a copy of the pretrained denoiser and follows the generator's distribution by
denoising score matching on detached generator samples sg(x0):

    t ~ U[t_min, t_max] (fractions of the schedule), eps ~ N(0, I), x_t = a_t x0 + b_t eps
    L_fake = || net_psi(x_t, t, c') - target(x0, eps) ||^2       (target: eps / v / flow)

with caption dropout (c' = empty prompt with probability cond_drop) so that psi can also
serve unconditional scores. It has its own optimizer and is updated inside the trainer's
step, before the generator's divergence is computed: K_fake updates per generator update,
each on every micro-batch of that update (gradients accumulated over micro-batches, and
averaged over ranks by DDP), so 2 processes equal 1 process that sees both ranks' samples.
psi keeps float32 master weights whatever the backbone's dtype.

Scores are expressed through x0-predictions, which keeps this parameterization-free:
    s(x_t) = (a_t x0_hat - x_t) / b_t^2      =>   s_psi - s_ref = a_t (x0_psi - x0_ref) / b_t^2
"""

from __future__ import annotations

import contextlib
import copy

import torch

from ..diffusion import broadcast_to, output_from_x0_eps
from ..utils.guards import own_optimizer_settings
from .placement import upcast_trainable


def backbone_with(backbone, net: torch.nn.Module):
    """A view of `backbone` whose denoiser (`.unet`) is `net`; text encoder, schedule and VAE are shared.

    Backbones compute everything through `self.unet`, so a shallow copy with its own module
    table gives predict / predict_x0 / guided_x0 of another network at no memory cost.
    """
    view = copy.copy(backbone)
    # copy.copy shares the _modules dict: give the view its own, or `unet` would be replaced in both.
    view._modules = dict(backbone._modules)
    view._modules["unet"] = net
    return view


def frozen_copy(net: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(net).requires_grad_(False).eval()


def sample_timesteps(schedule, n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    """n training times uniform on [lo, hi] (fractions of the range): VP integers, flow floats. (n,)"""
    u = lo + (hi - lo) * torch.rand((n,), generator=g)
    if schedule.kind == "vp":
        return (u * (schedule.num_train_timesteps - 1)).round().long()
    return u.clamp_min(1e-3)  # flow: b_t = t must stay > 0


def drop_captions(cond, uncond, keep: torch.Tensor):
    """Per-sample choice between cond and uncond (keep: (B,) bool); tensors or tuples/dicts of tensors."""
    if isinstance(cond, torch.Tensor):
        return torch.where(keep.view(-1, *([1] * (cond.ndim - 1))), cond, uncond)
    if isinstance(cond, (tuple, list)):
        return type(cond)(drop_captions(c, u, keep) for c, u in zip(cond, uncond))
    if isinstance(cond, dict):
        return {k: drop_captions(cond[k], uncond[k], keep) for k in cond}
    raise TypeError(f"cannot apply caption dropout to a condition of type {type(cond).__name__}")


class DenoisingScoreMatching(torch.nn.Module):
    """psi's training forward as a module, so the distributed wrapper sees it: its parameters
    are psi's, forward(x0, cond, uncond, gen) -> the DSM loss of `FakeScore.denoising_loss`."""

    def __init__(self, fake: "FakeScore"):
        super().__init__()
        self.net = fake.net
        self.__dict__["fake"] = fake  # not a submodule (it is not one)

    def forward(self, x0: torch.Tensor, cond, uncond, gen: torch.Generator) -> torch.Tensor:
        return self.fake.denoising_loss(x0, cond, uncond, gen)


class FakeScore:
    """psi: a trainable copy of the pretrained denoiser with its own AdamW; see the module docstring.

    `state_dict()` / `load_state_dict()` hold the network and its optimizer, so the engine's
    `extra_state()` hook checkpoints and resumes both. `distribute(accelerator)` builds the
    optimizer where the network was placed and, on several processes, the DDP wrapper that
    averages psi's gradients over ranks.
    """

    def __init__(self, backbone, lr: float, betas: tuple[float, float] = (0.9, 0.999), cond_drop: float = 0.1,
                 t_range: tuple[float, float] = (0.02, 0.98)):
        self.net = copy.deepcopy(backbone.unet).requires_grad_(True).train()
        upcast_trainable(self.net)  # float32 master weights (a bf16 backbone stays bf16 elsewhere)
        self.view = backbone_with(backbone, self.net)
        self.trained: torch.nn.Module = DenoisingScoreMatching(self)  # what updates call: DDP's wrapper after distribute
        self.lr, self.betas = lr, betas
        self.optimizer: torch.optim.Optimizer | None = None  # built after placement (see distribute)
        self.cond_drop = cond_drop
        self.t_range = t_range

    def distribute(self, accelerator=None) -> "FakeScore":
        """The optimizer over psi's (placed) weights; with several processes, the DDP wrapper."""
        if accelerator is not None and accelerator.num_processes > 1:
            self.trained = accelerator.prepare_model(DenoisingScoreMatching(self))
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=self.lr, betas=self.betas, weight_decay=0.0)
        return self

    def denoising_loss(self, x0: torch.Tensor, cond, uncond, g: torch.Generator) -> torch.Tensor:
        """DSM loss of psi on clean samples x0 (B, C, h, w), detached inside; a scalar."""
        view = self.view
        x0 = x0.detach()
        b = x0.shape[0]
        t = sample_timesteps(view.schedule, b, *self.t_range, g).to(x0.device)
        eps = torch.randn(x0.shape, generator=g).to(x0.device)
        a_t, b_t = broadcast_to(view.schedule.alpha(t), x0), broadcast_to(view.schedule.sigma(t), x0)
        x_t = a_t * x0 + b_t * eps
        keep = (torch.rand((b,), generator=g) >= self.cond_drop).to(x0.device)
        target = output_from_x0_eps(x0, eps, t, view.schedule, view.prediction_type)
        return (view.predict(x_t, t, drop_captions(cond, uncond, keep)) - target).pow(2).mean()

    def update(self, batches: list[tuple], steps: int = 1) -> float:
        """`steps` optimizer steps, each on the mean DSM loss over `batches`, the micro-batches
        [(x0, cond, uncond, gen)] of one generator update (each gen continues its own stream).
        Returns the mean loss (each taken before its step)."""
        if self.optimizer is None:
            self.distribute()
        n, total = len(batches), 0.0
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            for i, (x0, cond, uncond, gen) in enumerate(batches):
                # DDP: average over ranks once per step, on the last micro-batch's backward.
                sync = i == n - 1 or not hasattr(self.trained, "no_sync")
                with contextlib.nullcontext() if sync else self.trained.no_sync():
                    loss = self.trained(x0, cond, uncond, gen)
                    (loss / n).backward()
                total += float(loss.detach())
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / (steps * n)

    def state_dict(self) -> dict:
        if self.optimizer is None:
            self.distribute()
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.optimizer is None:
            self.distribute()
        self.net.load_state_dict(state["net"])
        with own_optimizer_settings(self.optimizer):  # this run's di.fake_lr, not the saved one
            self.optimizer.load_state_dict(state["optimizer"])


def score_difference(x0_fake: torch.Tensor, x0_ref: torch.Tensor, a_t: torch.Tensor, b_t: torch.Tensor
                     ) -> torch.Tensor:
    """y = s_psi - s_ref from the two x0-predictions at the same x_t: a_t (x0_psi - x0_ref) / b_t^2."""
    return a_t * (x0_fake - x0_ref) / (b_t * b_t)
