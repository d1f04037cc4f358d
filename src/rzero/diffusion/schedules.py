"""Noise schedules and the conversions between network outputs, x0 and eps.

Notation
--------
Forward process:   x_t = a_t * x0 + b_t * eps,        eps ~ N(0, I)

VP (SD1.5 family):  a_t = sqrt(abar_t), b_t = sqrt(1 - abar_t), integer t in {0, ..., T-1},
                    abar_t = prod_{s<=t} (1 - beta_s); the network receives t itself.
Rectified flow:     a_t = 1 - t, b_t = t, continuous t in [0, 1] (SD3); the network receives t * T.
Shift (flow):       t -> shift * t / (1 + (shift - 1) * t), which moves mass towards high noise.

Network parameterizations (prediction_type) and how x0 is recovered for a fixed x_t:
    "epsilon"       out = eps                 x0 = (x_t - b out) / a
    "v_prediction"  out = a eps - b x0        x0 = (a x_t - b out) / (a^2 + b^2)   (= a x_t - b out for VP)
    "flow"          out = eps - x0            x0 = (x_t - b out) / (a + b)         (= x_t - t out for flow)

All functions are pure and differentiable; schedules hold only constant tables.
"""

from __future__ import annotations

import math
from typing import Optional, Protocol, Union, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "Schedule",
    "VPSchedule",
    "FlowSchedule",
    "SCHEDULES",
    "make_schedule",
    "PREDICTION_TYPES",
    "x0_from_output",
    "eps_from_x0",
    "output_from_x0_eps",
    "add_noise",
    "broadcast_to",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "flow")
FINAL_MODES = ("x0", "alpha0")

TimeLike = Union[Tensor, float, int]


@runtime_checkable
class Schedule(Protocol):
    """What samplers and losses need from a schedule (both VPSchedule and FlowSchedule satisfy it)."""

    kind: str
    num_train_timesteps: int

    def alpha(self, t: Tensor) -> Tensor: ...

    def sigma(self, t: Tensor) -> Tensor: ...

    def model_time(self, t: Tensor) -> Tensor: ...

    def sampling_timesteps(self, n: int) -> Tensor: ...

    def evenly_spaced_timesteps(self, k: int) -> Tensor: ...

    def sample_train_t(
        self, n: int, generator: Optional[torch.Generator] = None, device: Optional[torch.device] = None
    ) -> Tensor: ...

    def final_alpha(self, final: str = "x0") -> float: ...

    def final_sigma(self, final: str = "x0") -> float: ...


def _check_final(final: str) -> None:
    if final not in FINAL_MODES:
        raise ValueError(f"final must be one of {FINAL_MODES}, got {final!r}")


def _rng_device(generator: Optional[torch.Generator], device: Optional[torch.device | str]) -> torch.device:
    # Draw on the generator's own device so that one seed gives the same numbers whatever `device` is.
    if generator is not None:
        return generator.device
    return torch.device(device) if device is not None else torch.device("cpu")


# --------------------------------------------------------------------------------------------------
# VP schedule (DDPM / DDIM, Stable Diffusion 1.5)
# --------------------------------------------------------------------------------------------------


class VPSchedule:
    """Variance-preserving schedule with integer timesteps 0..T-1 (a_t^2 + b_t^2 = 1).

    Endpoint convention: the last DDIM step goes to the clean sample, i.e. a = 1, b = 0, and the
    sampler returns the final x0 prediction (`final="x0"`, diffusers' `set_alpha_to_one=True`).
    SD1.5's scheduler config uses `set_alpha_to_one=False`, which ends at abar_0 = 0.99915 instead;
    `final="alpha0"` reproduces that exactly (see `final_alpha`).
    """

    kind = "vp"

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        beta_schedule: str = "scaled_linear",
        steps_offset: int = 1,
    ) -> None:
        T = int(num_train_timesteps)
        if T < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {T}")
        # float64 for the tables: the cumulative product over 1000 factors loses ~1e-6 relative in float32.
        if beta_schedule == "scaled_linear":
            betas = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=torch.float64) ** 2
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        else:
            raise ValueError(f"unknown beta_schedule {beta_schedule!r} (expected 'scaled_linear' or 'linear')")
        abar = torch.cumprod(1.0 - betas, dim=0)  # (T,)

        self.num_train_timesteps = T
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.beta_schedule = beta_schedule
        # SD1.5's DDIM config uses steps_offset=1 with "leading" spacing (timesteps 961, ..., 1 for 25 steps).
        self.steps_offset = int(steps_offset)
        self.alphas_cumprod: Tensor = abar.to(torch.float32)  # (T,)
        # 1 - abar in float64 before the cast: near t = 0 the float32 subtraction would cancel digits.
        self._alpha_table: Tensor = abar.sqrt().to(torch.float32)  # (T,)
        self._sigma_table: Tensor = (1.0 - abar).sqrt().to(torch.float32)  # (T,)
        self._alpha0 = float(abar[0].sqrt())
        self._sigma0 = float((1.0 - abar[0]).sqrt())

    def __repr__(self) -> str:
        return (
            f"VPSchedule(num_train_timesteps={self.num_train_timesteps}, beta_start={self.beta_start}, "
            f"beta_end={self.beta_end}, beta_schedule={self.beta_schedule!r}, steps_offset={self.steps_offset})"
        )

    def _index(self, t: TimeLike) -> Tensor:
        t = torch.as_tensor(t)
        # Float timesteps may carry integer values with rounding noise (e.g. 960.99997); round, don't floor.
        if t.is_floating_point():
            t = torch.round(t)
        return t.long()

    def alpha(self, t: TimeLike) -> Tensor:
        """a_t = sqrt(abar_t), float32 with t's shape and device."""
        idx = self._index(t)
        return self._alpha_table.to(idx.device)[idx]

    def sigma(self, t: TimeLike) -> Tensor:
        """b_t = sqrt(1 - abar_t), float32 with t's shape and device."""
        idx = self._index(t)
        return self._sigma_table.to(idx.device)[idx]

    def model_time(self, t: Tensor) -> Tensor:
        """What the UNet receives: the integer timestep itself."""
        return t

    def sampling_timesteps(self, n: int) -> Tensor:
        """Decreasing DDIM timesteps, "leading" spacing + steps_offset (25 -> 961, 921, ..., 1)."""
        T = self.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"n must be in [1, {T}], got {n}")
        step = T // n
        # The next timestep in this list is always t - T//n, which is exactly diffusers' prev_timestep.
        return (torch.arange(n - 1, -1, -1, dtype=torch.long) * step) + self.steps_offset  # (n,)

    def evenly_spaced_timesteps(self, k: int) -> Tensor:
        """Few-step generator grid from the top: t_i = T - 1 - i * (T // k) (k=4 -> 999, 749, 499, 249)."""
        T = self.num_train_timesteps
        if not 1 <= k <= T:
            raise ValueError(f"k must be in [1, {T}], got {k}")
        return (T - 1) - torch.arange(k, dtype=torch.long) * (T // k)  # (k,)

    def sample_train_t(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
    ) -> Tensor:
        """n training timesteps uniform on {0, ..., T-1}."""
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator, device=_rng_device(generator, device))
        return t.to(device) if device is not None else t  # (n,)

    def final_alpha(self, final: str = "x0") -> float:
        """a at the end of sampling: 1 for "x0" (clean sample), sqrt(abar_0) for "alpha0" (SD1.5 config)."""
        _check_final(final)
        return 1.0 if final == "x0" else self._alpha0

    def final_sigma(self, final: str = "x0") -> float:
        """b at the end of sampling: 0 for "x0", sqrt(1 - abar_0) for "alpha0"."""
        _check_final(final)
        return 0.0 if final == "x0" else self._sigma0


# --------------------------------------------------------------------------------------------------
# Rectified flow schedule (Stable Diffusion 3)
# --------------------------------------------------------------------------------------------------


class FlowSchedule:
    """Rectified-flow schedule a_t = 1 - t, b_t = t on continuous t in [0, 1], with SD3's time shift.

    The endpoint of sampling is t = 0, i.e. the clean sample; both `final` modes mean the same here
    (diffusers' FlowMatchEulerDiscreteScheduler also ends at sigma = 0).
    """

    kind = "flow"

    def __init__(self, shift: float = 1.0, num_train_timesteps: int = 1000, weighting: str = "uniform") -> None:
        if shift <= 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        if weighting not in ("uniform", "logit_normal"):
            raise ValueError(f"weighting must be 'uniform' or 'logit_normal', got {weighting!r}")
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.weighting = weighting

    def __repr__(self) -> str:
        return (
            f"FlowSchedule(shift={self.shift}, num_train_timesteps={self.num_train_timesteps}, "
            f"weighting={self.weighting!r})"
        )

    def apply_shift(self, t: Tensor) -> Tensor:
        """t -> shift t / (1 + (shift - 1) t); fixes 0 and 1, shift > 1 pushes towards noise."""
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def _as_float(self, t: TimeLike) -> Tensor:
        t = torch.as_tensor(t)
        return t.to(torch.float32)

    def alpha(self, t: TimeLike) -> Tensor:
        """a_t = 1 - t, float32 with t's shape."""
        return 1.0 - self._as_float(t)

    def sigma(self, t: TimeLike) -> Tensor:
        """b_t = t, float32 with t's shape."""
        return self._as_float(t)

    def model_time(self, t: Tensor) -> Tensor:
        """What the SD3 transformer receives: t * T (diffusers' `timesteps = sigmas * 1000`)."""
        return t * self.num_train_timesteps

    def sampling_timesteps(self, n: int) -> Tensor:
        """Decreasing sampling t's = diffusers FlowMatchEulerDiscreteScheduler.set_timesteps(n).sigmas[:-1].

        diffusers builds linspace(1, sigma_min, n) where sigma_min is the *already shifted* smallest
        training sigma shift(1/T), and then applies the shift again; we reproduce that quirk so the
        grids coincide. The trailing t = 0 (clean sample) is left out: the sampler adds it.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        T = self.num_train_timesteps
        # diffusers computes the training sigmas in float32 and reads sigma_min back from them.
        s_min = float(self.apply_shift(torch.tensor(1.0 / T, dtype=torch.float32)))
        s = torch.linspace(1.0, s_min, n, dtype=torch.float64)  # (n,)
        return self.apply_shift(s).to(torch.float32)

    def evenly_spaced_timesteps(self, k: int) -> Tensor:
        """Few-step grid from the top, 1 - i/k (k=4 -> 1, 0.75, 0.5, 0.25), then shifted."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        s = 1.0 - torch.arange(k, dtype=torch.float64) / k  # (k,)
        return self.apply_shift(s).to(torch.float32)

    def sample_train_t(
        self,
        n: int,
        generator: Optional[torch.Generator] = None,
        device: Optional[torch.device | str] = None,
        weighting: Optional[str] = None,
    ) -> Tensor:
        """n training times in (0, 1]: uniform or logit-normal (SD3), then shifted.

        Uniform draws use 1 - U[0, 1) so that t = 0 (no noise, b = 0) is never drawn.
        """
        weighting = self.weighting if weighting is None else weighting
        dev = _rng_device(generator, device)
        if weighting == "uniform":
            t = 1.0 - torch.rand((n,), generator=generator, device=dev)
        elif weighting == "logit_normal":
            t = torch.sigmoid(torch.randn((n,), generator=generator, device=dev))
        else:
            raise ValueError(f"weighting must be 'uniform' or 'logit_normal', got {weighting!r}")
        t = self.apply_shift(t)  # (n,)
        return t.to(device) if device is not None else t

    def final_alpha(self, final: str = "x0") -> float:
        """a at t = 0: always 1 (flow sampling ends at the clean sample)."""
        _check_final(final)
        return 1.0

    def final_sigma(self, final: str = "x0") -> float:
        """b at t = 0: always 0."""
        _check_final(final)
        return 0.0


SCHEDULES: dict[str, type] = {"vp": VPSchedule, "flow": FlowSchedule}


def make_schedule(kind: str, **kwargs) -> Union[VPSchedule, FlowSchedule]:
    """Build a schedule from its registry name ("vp" or "flow")."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {sorted(SCHEDULES)}")
    return SCHEDULES[kind](**kwargs)


# --------------------------------------------------------------------------------------------------
# Conversions (pure functions)
# --------------------------------------------------------------------------------------------------


def broadcast_to(v: Tensor, x: Tensor) -> Tensor:
    """Reshape per-sample coefficients v (B,) or () to broadcast against x (B, C, H, W), in x's dtype."""
    v = v.to(device=x.device, dtype=x.dtype if x.is_floating_point() else v.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))  # (B, 1, 1, 1) or ()


def _ab(t: TimeLike, x: Tensor, schedule: Schedule) -> tuple[Tensor, Tensor]:
    t = torch.as_tensor(t, device=x.device)
    return broadcast_to(schedule.alpha(t), x), broadcast_to(schedule.sigma(t), x)


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def add_noise(x0: Tensor, eps: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
    """x_t = a_t x0 + b_t eps."""
    a, b = _ab(t, x0, schedule)
    return a * x0 + b * eps  # (B, C, H, W)


def x0_from_output(
    output: Tensor, x_t: Tensor, t: TimeLike, schedule: Schedule, prediction_type: str
) -> Tensor:
    """Clean-sample estimate from a network output of the given parameterization."""
    _check_prediction_type(prediction_type)
    a, b = _ab(t, x_t, schedule)
    if prediction_type == "epsilon":
        return (x_t - b * output) / a
    if prediction_type == "v_prediction":
        # a x_t - b v = (a^2 + b^2) x0; the denominator is 1 for VP but not for flow.
        return (a * x_t - b * output) / (a * a + b * b)
    # "flow": x_t - b (eps - x0) = (a + b) x0; the denominator is 1 for rectified flow.
    return (x_t - b * output) / (a + b)


def eps_from_x0(x0: Tensor, x_t: Tensor, t: TimeLike, schedule: Schedule) -> Tensor:
    """Noise implied by x0 for fixed x_t: eps = (x_t - a x0) / b (undefined at b = 0)."""
    a, b = _ab(t, x_t, schedule)
    return (x_t - a * x0) / b


def output_from_x0_eps(
    x0: Tensor, eps: Tensor, t: TimeLike, schedule: Schedule, prediction_type: str
) -> Tensor:
    """The regression target of each parameterization (inverse of `x0_from_output`)."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        a, b = _ab(t, x0, schedule)
        return a * eps - b * x0
    return eps - x0
