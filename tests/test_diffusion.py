"""Golden tests for rzero.diffusion against diffusers' DDIM and flow-matching Euler schedulers.

diffusers is imported here only, as the reference; the library itself depends on torch alone.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rzero.diffusion import (
    SCHEDULES,
    FlowSchedule,
    VPSchedule,
    add_noise,
    cfg_combine,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    eps_from_x0,
    make_schedule,
    output_from_x0_eps,
    x0_from_output,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler  # noqa: E402

SHAPE = (2, 4, 8, 8)  # (B, C, H, W)


def fake_model(x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
    """Analytic stand-in for a network: smooth in x, depends on the time it is given."""
    model_t = torch.as_tensor(model_t, dtype=torch.float32, device=x.device)
    t = model_t.reshape(model_t.shape + (1,) * (x.ndim - model_t.ndim))
    return 0.3 * torch.tanh(x) + 0.01 * t / 1000.0


def sd15_ddim(prediction_type: str, set_alpha_to_one: bool) -> DDIMScheduler:
    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=set_alpha_to_one,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=prediction_type,
    )


# --------------------------------------------------------------------------------------------------
# Schedules
# --------------------------------------------------------------------------------------------------


def test_vp_alphas_cumprod_match_diffusers() -> None:
    ours = VPSchedule().alphas_cumprod
    ref = sd15_ddim("epsilon", False).alphas_cumprod
    assert ours.dtype == torch.float32 and ours.device.type == "cpu"
    # ours is accumulated in float64, diffusers in float32: ~1e-6 relative apart.
    torch.testing.assert_close(ours, ref, rtol=2e-6, atol=0.0)


def test_vp_linear_betas_match_diffusers() -> None:
    ref = DDIMScheduler(beta_schedule="linear", beta_start=0.0001, beta_end=0.02).alphas_cumprod
    ours = VPSchedule(beta_start=0.0001, beta_end=0.02, beta_schedule="linear").alphas_cumprod
    torch.testing.assert_close(ours, ref, rtol=5e-6, atol=0.0)


def test_vp_sampling_timesteps_match_diffusers() -> None:
    for n in (25, 50, 7):
        ref = sd15_ddim("epsilon", False)
        ref.set_timesteps(n)
        ours = VPSchedule().sampling_timesteps(n)
        assert ours.dtype == torch.long
        assert torch.equal(ours, ref.timesteps)
    ts = VPSchedule().sampling_timesteps(25)
    assert ts[0].item() == 961 and ts[1].item() == 921 and ts[-1].item() == 1


def test_vp_golden_alpha_sigma() -> None:
    s = VPSchedule()
    t = torch.tensor([0, 499, 999])
    torch.testing.assert_close(s.alpha(t), torch.tensor([0.999575, 0.526944, 0.0682649]), rtol=1e-5, atol=0)
    torch.testing.assert_close(s.sigma(t), torch.tensor([0.0291548, 0.849900, 0.997667]), rtol=1e-5, atol=0)
    # Float timesteps holding integer values index the same entries; shape is preserved.
    torch.testing.assert_close(s.alpha(t.float().reshape(3, 1)), s.alpha(t).reshape(3, 1))
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(3))
    assert torch.equal(s.model_time(t), t)


def test_evenly_spaced_timesteps() -> None:
    assert VPSchedule().evenly_spaced_timesteps(4).tolist() == [999, 749, 499, 249]
    torch.testing.assert_close(FlowSchedule().evenly_spaced_timesteps(4), torch.tensor([1.0, 0.75, 0.5, 0.25]))
    s = torch.tensor([1.0, 0.75, 0.5, 0.25])
    torch.testing.assert_close(FlowSchedule(shift=3.0).evenly_spaced_timesteps(4), 3 * s / (1 + 2 * s))


def test_flow_sampling_timesteps_match_diffusers() -> None:
    for shift, n in ((3.0, 28), (1.0, 10)):
        ref = FlowMatchEulerDiscreteScheduler(shift=shift)
        ref.set_timesteps(n)
        ours = FlowSchedule(shift=shift).sampling_timesteps(n)
        torch.testing.assert_close(ours, ref.sigmas[:-1], rtol=0, atol=1e-7)
        torch.testing.assert_close(FlowSchedule(shift=shift).model_time(ours), ref.timesteps, rtol=1e-6, atol=1e-4)


def test_sample_train_t() -> None:
    vp = VPSchedule()
    t = vp.sample_train_t(4096, torch.Generator().manual_seed(0), "cpu")
    assert t.dtype == torch.long and t.shape == (4096,)
    assert t.min() >= 0 and t.max() <= 999 and t.max() > 950 and t.min() < 50
    assert torch.equal(t, vp.sample_train_t(4096, torch.Generator().manual_seed(0), "cpu"))
    for weighting in ("uniform", "logit_normal"):
        fl = FlowSchedule(shift=3.0, weighting=weighting)
        u = fl.sample_train_t(4096, torch.Generator().manual_seed(0), "cpu")
        assert u.dtype == torch.float32 and (u > 0).all() and (u <= 1).all()
        # shift 3 pushes mass towards noise: the median moves above 1/2.
        assert u.median() > 0.6
    with pytest.raises(ValueError):
        FlowSchedule().sample_train_t(2, weighting="beta")


def test_registry() -> None:
    assert SCHEDULES["vp"] is VPSchedule and SCHEDULES["flow"] is FlowSchedule
    assert make_schedule("flow", shift=3.0).shift == 3.0
    assert make_schedule("vp").kind == "vp"
    with pytest.raises(ValueError, match="unknown schedule kind"):
        make_schedule("edm")


# --------------------------------------------------------------------------------------------------
# Conversions
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vp", "flow"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "flow"])
def test_conversions_round_trip(kind: str, prediction_type: str) -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(SHAPE, generator=g)
    eps = torch.randn(SHAPE, generator=g)
    if kind == "vp":
        schedule = VPSchedule()
        t = torch.tensor([37, 812])  # (B,)
    else:
        schedule = FlowSchedule(shift=3.0)
        t = torch.tensor([0.13, 0.91])
    x_t = add_noise(x0, eps, t, schedule)
    out = output_from_x0_eps(x0, eps, t, schedule, prediction_type)
    torch.testing.assert_close(x0_from_output(out, x_t, t, schedule, prediction_type), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(eps_from_x0(x0, x_t, t, schedule), eps, rtol=1e-4, atol=1e-4)


def test_conversions_closed_forms() -> None:
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(SHAPE, generator=g), torch.randn(SHAPE, generator=g)
    fl = FlowSchedule()
    t = torch.tensor([0.3, 0.8])
    tb = t.reshape(2, 1, 1, 1)
    torch.testing.assert_close(add_noise(x0, eps, t, fl), (1 - tb) * x0 + tb * eps)
    assert torch.equal(output_from_x0_eps(x0, eps, t, fl, "flow"), eps - x0)
    v = torch.randn(SHAPE, generator=g)
    x_t = torch.randn(SHAPE, generator=g)
    torch.testing.assert_close(x0_from_output(v, x_t, t, fl, "flow"), x_t - tb * v)
    vp = VPSchedule()
    tv = torch.tensor([100, 700])
    a, b = vp.alpha(tv).reshape(2, 1, 1, 1), vp.sigma(tv).reshape(2, 1, 1, 1)
    torch.testing.assert_close(x0_from_output(v, x_t, tv, vp, "v_prediction"), a * x_t - b * v)
    torch.testing.assert_close(x0_from_output(v, x_t, tv, vp, "epsilon"), (x_t - b * v) / a)
    with pytest.raises(ValueError):
        x0_from_output(v, x_t, tv, vp, "sample")


def test_cfg_on_x0_equals_cfg_on_eps() -> None:
    g = torch.Generator().manual_seed(3)
    x_t, e_c, e_u = (torch.randn(SHAPE, generator=g) for _ in range(3))
    vp, t = VPSchedule(), torch.tensor([500, 900])
    via_eps = x0_from_output(cfg_combine(e_c, e_u, 7.5), x_t, t, vp, "epsilon")
    via_x0 = cfg_combine(x0_from_output(e_c, x_t, t, vp, "epsilon"), x0_from_output(e_u, x_t, t, vp, "epsilon"), 7.5)
    torch.testing.assert_close(via_x0, via_eps, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------------
# DDIM against diffusers
# --------------------------------------------------------------------------------------------------


def test_ddim_sigma_matches_diffusers_variance() -> None:
    ref = sd15_ddim("epsilon", False)
    ref.set_timesteps(25)
    vp = VPSchedule()
    for t, prev in ((961, 921), (481, 441), (41, 1), (999, 749), (249, 0)):
        want = 0.7 * ref._get_variance(t, prev) ** 0.5
        got = ddim_sigma(torch.tensor(t), torch.tensor(prev), vp, eta=0.7)
        torch.testing.assert_close(got, want.to(torch.float32), rtol=2e-5, atol=1e-7)
    # The SD1.5 endpoint (set_alpha_to_one=False) and the clean endpoint (sigma = 0).
    want = 0.7 * ref._get_variance(1, -39) ** 0.5
    torch.testing.assert_close(ddim_sigma(torch.tensor(1), None, vp, 0.7, final="alpha0"), want, rtol=2e-5, atol=1e-7)
    assert ddim_sigma(torch.tensor(1), None, vp, 0.7, final="x0").item() == 0.0


def _diffusers_ddim_trajectory(noise, prediction_type, set_alpha_to_one, eta=0.0, noise_gen=None):
    ref = sd15_ddim(prediction_type, set_alpha_to_one)
    ref.set_timesteps(25)
    x = noise.clone()
    xs = [x]
    for t in ref.timesteps:
        out = fake_model(x, t)
        z = torch.randn(x.shape, generator=noise_gen) if eta > 0 else None
        x = ref.step(out, int(t), x, eta=eta, variance_noise=z).prev_sample
        xs.append(x)
    return xs


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.8])
def test_ddim_trajectory_matches_diffusers(prediction_type: str, set_alpha_to_one: bool, eta: float) -> None:
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(4))
    seed = 5
    want = _diffusers_ddim_trajectory(
        noise, prediction_type, set_alpha_to_one, eta, torch.Generator().manual_seed(seed)
    )
    vp = VPSchedule()

    def x0_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0_from_output(fake_model(x, vp.model_time(t)), x, t, vp, prediction_type)

    final = "x0" if set_alpha_to_one else "alpha0"
    gen = torch.Generator().manual_seed(seed) if eta > 0 else None
    x, traj = ddim_sample(
        x0_fn, noise, vp.sampling_timesteps(25), vp, eta=eta, generator=gen, return_trajectory=True, final=final
    )
    assert len(traj.xs) == len(want) == 26 and len(traj.x0s) == 25
    for i, (ours, ref) in enumerate(zip(traj.xs, want)):
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {i}: {m}")
    assert torch.equal(x, traj.xs[-1])
    if set_alpha_to_one:
        # Clean endpoint: the result is the last x0 prediction itself.
        assert torch.equal(x, traj.x0s[-1])


def test_ddim_step_injected_noise_matches_diffusers() -> None:
    g = torch.Generator().manual_seed(6)
    x, eps_hat, z = (torch.randn(SHAPE, generator=g) for _ in range(3))
    ref = sd15_ddim("epsilon", False)
    ref.set_timesteps(25)
    want = ref.step(eps_hat, 481, x, eta=1.0, variance_noise=z).prev_sample
    vp = VPSchedule()
    t = torch.full((2,), 481)
    x0 = x0_from_output(eps_hat, x, t, vp, "epsilon")
    got = ddim_step(x, x0, t, torch.full((2,), 441), vp, eta=1.0, noise=z)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        ddim_step(x, x0, t, t - 40, vp, eta=1.0)


def test_flow_eta0_is_diffusers_euler() -> None:
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7))
    ref = FlowMatchEulerDiscreteScheduler(shift=3.0)
    ref.set_timesteps(10)
    x = noise.clone()
    want = [x]
    for t in ref.timesteps:
        x = ref.step(fake_model(x, t), t, x).prev_sample
        want.append(x)

    fl = FlowSchedule(shift=3.0)

    def x0_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0_from_output(fake_model(x, fl.model_time(t)), x, t, fl, "flow")

    _, traj = ddim_sample(x0_fn, noise, fl.sampling_timesteps(10), fl, return_trajectory=True)
    for i, (ours, r) in enumerate(zip(traj.xs, want)):
        torch.testing.assert_close(ours, r, rtol=1e-5, atol=1e-5, msg=lambda m: f"step {i}: {m}")


def test_flow_stochastic_step_is_valid_posterior() -> None:
    # With x0 exact and x_t = a_t x0 + b_t eps, a stochastic step lands on the marginal at s:
    # mean a_s x0 and per-pixel variance b_s^2 over (eps, z).
    fl = FlowSchedule()
    g = torch.Generator().manual_seed(8)
    n = 200_000
    x0 = torch.full((n,), 0.5)
    eps, z = torch.randn(n, generator=g), torch.randn(n, generator=g)
    t, s = torch.tensor(0.8), torch.tensor(0.3)
    x_t = add_noise(x0, eps, t, fl)
    x_s = ddim_step(x_t, x0, t, s, fl, eta=1.0, noise=z)
    assert abs(x_s.mean().item() - 0.7 * 0.5) < 0.01
    assert abs(x_s.var().item() - 0.3**2) < 0.005


# --------------------------------------------------------------------------------------------------
# Differentiability
# --------------------------------------------------------------------------------------------------


class _TinyNet(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.lin = nn.Linear(channels + 1, channels)

    def forward(self, x: torch.Tensor, model_t: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        tt = (model_t.float() / 1000.0).reshape(B, 1, 1, 1).expand(B, 1, H, W)  # (B, 1, H, W)
        h = torch.cat([x, tt], dim=1).permute(0, 2, 3, 1)  # (B, H, W, C+1)
        return self.lin(h).permute(0, 3, 1, 2)  # (B, C, H, W)


@pytest.mark.parametrize(
    "kind,prediction_type,eta", [("vp", "epsilon", 0.0), ("vp", "v_prediction", 1.0), ("flow", "flow", 0.5)]
)
def test_gradient_flows_through_sampling(kind: str, prediction_type: str, eta: float) -> None:
    torch.manual_seed(0)
    net = _TinyNet(SHAPE[1])
    schedule = make_schedule(kind)
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), requires_grad=True)

    def x0_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return x0_from_output(net(x, schedule.model_time(t)), x, t, schedule, prediction_type)

    gen = torch.Generator().manual_seed(10)
    x = ddim_sample(x0_fn, noise, schedule.evenly_spaced_timesteps(4), schedule, eta=eta, generator=gen)
    x.square().mean().backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert noise.grad is not None and torch.isfinite(noise.grad).all()


def test_eta_requires_generator() -> None:
    vp = VPSchedule()
    with pytest.raises(ValueError, match="Generator"):
        ddim_sample(lambda x, t: x, torch.zeros(SHAPE), vp.evenly_spaced_timesteps(2), vp, eta=1.0)
