"""Issue 15: the SD1.5 teacher sampler and FID equal the official code paths.

- Sampler: `SD15Backbone.sample` against diffusers' own DDIMScheduler built from the same
  scheduler config (the pipeline's loop: CFG on eps, `scheduler.step`), for the config as
  shipped (set_alpha_to_one=False) and with clip_sample on and off.
- FID: rzero's features in mode "clean" against clean-fid's clean mode, written here from
  clean-fid's code (GaParmar/clean-fid: cleanfid/resize.py `make_resizer("PIL", False,
  "bicubic", (299, 299))`, cleanfid/inception_torchscript.py `InceptionV3W.forward` input
  scaling, cleanfid/fid.py `frechet_distance` with scipy's sqrtm), since the package needs a
  download of its TorchScript Inception. The network is the same random FIDInception3 on both
  sides; what is compared is everything around it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rzero.backbones.sd15 import SD15Backbone, sampler_options_from_config
from rzero.eval.inception import FID_MODE, FIDInception3, inception_features
from rzero.eval.metrics import frechet_distance
from tiny_sd import tiny_sd15_components

PROMPTS = ["a red circle", "a cat on a sofa"]


# ---------------------------------------------------------------------------------- SD1.5 sampler


def diffusers_ddim(b: SD15Backbone, config: dict, noise, steps: int, cfg: float) -> torch.Tensor:
    """StableDiffusionPipeline's denoising loop with DDIMScheduler.from_config(config), eta = 0."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(steps)
    cond = torch.cat([b.encode_prompts(PROMPTS), b.empty_cond(len(PROMPTS))])
    x = noise * sched.init_noise_sigma
    for t in sched.timesteps:
        eps_c, eps_u = b.unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
        x = sched.step(eps_u + cfg * (eps_c - eps_u), t, x).prev_sample
    return b.decode(x).clamp(-1, 1)


@pytest.mark.parametrize("overrides,final,clip", [
    ({}, "alpha0", 1.0),  # the tiny PNDM config: set_alpha_to_one=False, no clip_sample key (DDIM: on)
    ({"clip_sample": False}, "alpha0", None),  # SD1.5's real scheduler_config.json
    ({"clip_sample": True, "clip_sample_range": 2.0, "set_alpha_to_one": True}, "x0", 2.0),
])
def test_sd15_sample_equals_diffusers_ddim_from_the_scheduler_config(tmp_path, overrides, final, clip):
    comps = tiny_sd15_components(tmp_path)
    comps["scheduler_config"] = {**comps["scheduler_config"], **overrides}
    b = SD15Backbone(components=comps, device="cpu").eval()
    assert (b.final_step, b.clip_x0) == (final, clip)
    noise = torch.randn((2, *b.latent_shape), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = b.sample(PROMPTS, noise, steps=4, cfg=3.0)
        ref = diffusers_ddim(b, comps["scheduler_config"], noise, steps=4, cfg=3.0)
    print(f"\nFIDELITY sd15-sample  {str(overrides):<60} max|diff| {float((ours - ref).abs().max()):.2e} (images in [-1, 1])")
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    # The old sampler (no clip, clean-x0 final step) is measurably different here.
    b.final_step, b.clip_x0 = "x0", None
    with torch.no_grad():
        old = b.sample(PROMPTS, noise, steps=4, cfg=3.0)
    if (final, clip) != ("x0", None):
        assert (old - ref).abs().max() > 1e-3


def test_sampler_options_follow_ddim_defaults():
    assert sampler_options_from_config({}) == ("x0", 1.0)
    assert sampler_options_from_config({"set_alpha_to_one": False, "clip_sample": False}) == ("alpha0", None)
    with pytest.raises(ValueError, match="thresholding"):
        sampler_options_from_config({"thresholding": True})


# ---------------------------------------------------------------------------------- FID, clean mode


def cleanfid_resize(img: np.ndarray) -> np.ndarray:
    """clean-fid's clean-mode resizer on one (H, W, 3) uint8 image -> (299, 299, 3) float32."""
    from PIL import Image

    chans = []
    for c in range(3):
        ch = Image.fromarray(img[:, :, c].astype(np.float32), mode="F").resize((299, 299), resample=Image.BICUBIC)
        chans.append(np.asarray(ch).clip(0, 255).reshape(299, 299, 1))
    return np.concatenate(chans, axis=2).astype(np.float32)


def cleanfid_features(net: torch.nn.Module, imgs: np.ndarray) -> torch.Tensor:
    """clean-fid's batch path: resize each image, (B, 3, 299, 299) in [0, 255], then (x - 128) / 128."""
    batch = torch.stack([torch.from_numpy(cleanfid_resize(i).transpose(2, 0, 1).copy()) for i in imgs])
    return net((batch - 128) / 128).double()


def cleanfid_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """cleanfid/fid.py: statistics with np.mean / np.cov(rowvar=False), distance with scipy's sqrtm."""
    linalg = pytest.importorskip("scipy.linalg")
    mu1, s1, mu2, s2 = a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))  # clean-fid passes disp=False (deprecated in scipy 1.17), same value
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.fixture(scope="module")
def inception():
    torch.manual_seed(0)
    net = FIDInception3()
    for m in net.modules():  # keep activations O(1) through the random layers
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net.eval()


def test_fid_features_equal_clean_fid_clean_mode(inception):
    assert FID_MODE == "clean"
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)  # non-square, enlarged to 299
    ours = inception_features(inception, imgs)
    with torch.no_grad():
        ref = cleanfid_features(inception, imgs)
        old = inception(torch.stack([torch.from_numpy(cleanfid_resize(i).transpose(2, 0, 1).copy())
                                     for i in imgs]) / 127.5 - 1).double()  # pytorch-fid's scaling
    rel = lambda a: float((a - ref).norm() / ref.norm())  # noqa: E731
    print(f"\nFIDELITY fid-features clean mode relative |diff| {rel(ours):.2e}; old scaling {rel(old):.2e}")
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)
    assert rel(old) > 1e-4
    with pytest.raises(ValueError, match="clean"):
        inception_features(inception, imgs, mode="legacy_pytorch")


def test_frechet_distance_equals_clean_fid():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(200, 24))
    b = rng.normal(size=(150, 24)) @ rng.normal(size=(24, 24)) * 0.5 + 0.3
    ours = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    print(f"\nFIDELITY frechet  ours {ours:.10f} clean-fid {cleanfid_frechet(a, b):.10f}")
    assert ours == pytest.approx(cleanfid_frechet(a, b), rel=1e-9, abs=1e-9)
