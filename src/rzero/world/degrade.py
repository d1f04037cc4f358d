"""Image degradations used to train the quality reward and the FID feature net.

Each kind imitates a failure a generator shows: blur (under-fitting), noise (too few steps),
pixelation, over-saturation / colour cast (reward hacking on colour rewards), blotches,
ghosting (repeated objects), banding. Strengths are drawn wide enough to be visible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("clean", "blur", "noise", "pixelate", "saturate", "blotch", "ghost", "banding")


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    k = torch.arange(-3, 4, dtype=x.dtype)
    w = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None] ** 2))
    w = w / w.sum(1, keepdim=True)  # (B, 7)
    b, c, h, ww = x.shape
    y = x.reshape(1, b * c, h, ww)
    wk = w.repeat_interleave(c, 0)
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="replicate"), wk[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="replicate"), wk[:, None, :, None], groups=b * c)
    return y.view(b, c, h, ww)


def degrade(images: torch.Tensor, g: torch.Generator, p_clean: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Degrade a random subset of (B, 3, H, W) images in [-1, 1]; returns (images, kind (B,))."""
    b, _, h, w = images.shape
    kind = torch.randint(1, len(KINDS), (b,), generator=g)
    kind = torch.where(torch.rand(b, generator=g) < p_clean, torch.zeros_like(kind), kind)
    u = torch.rand(b, generator=g)
    x = images
    out = x.clone()
    sel = lambda k: (kind == k)[:, None, None, None]  # noqa: E731

    out = torch.where(sel(1), _blur(x, 0.7 + 1.0 * u), out)
    out = torch.where(sel(2), x + torch.randn(x.shape, generator=g) * (0.12 + 0.25 * u)[:, None, None, None], out)
    f = 2 if h <= 32 else 4
    pix = F.interpolate(F.avg_pool2d(x, f), scale_factor=f, mode="nearest")
    out = torch.where(sel(3), pix, out)
    mean = x.mean(1, keepdim=True)
    cast = (torch.rand((b, 3, 1, 1), generator=g) * 2 - 1) * 0.3
    sat = mean + (x - mean) * (1.8 + u)[:, None, None, None] + cast
    out = torch.where(sel(4), sat, out)
    # Blotches: a few soft random-coloured discs pasted anywhere.
    yy = torch.arange(h, dtype=x.dtype)[:, None]
    xx = torch.arange(w, dtype=x.dtype)[None, :]
    blot = x.clone()
    for _ in range(3):
        cy = torch.rand(b, generator=g) * h
        cx = torch.rand(b, generator=g) * w
        r = (0.06 + 0.08 * torch.rand(b, generator=g)) * h
        d = ((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2).sqrt()
        a = (1 - (d - r[:, None, None]).clamp(0, 2) / 2)[:, None]  # soft edge
        col = torch.rand((b, 3, 1, 1), generator=g) * 2 - 1
        blot = blot * (1 - a) + col * a
    out = torch.where(sel(5), blot, out)
    shift = 3 + int(torch.randint(0, 6, (1,), generator=g))
    ghost = 0.6 * x + 0.4 * torch.roll(x, shifts=shift, dims=3)
    out = torch.where(sel(6), ghost, out)
    levels = 3.0
    band = torch.round((x + 1) / 2 * levels) / levels * 2 - 1
    out = torch.where(sel(7), band, out)
    return out.clamp(-1, 1), kind
