"""Procedural renderer of world scenes (SPEC section 6).

Shapes are drawn from signed distance functions in a canonical 32x32 frame and
anti-aliased with a one-pixel coverage ramp, so any output size (32 px default, 64 px...)
gives the same picture at a different sampling rate. Per object: position jitter, small
rotation, radius and colour jitter, top-lit shading; per image: a lighting gradient and mild
pixel noise. Everything random comes from one `torch.Generator`, so a seed fixes the images.

Output: float32 (N, 3, H, W) in [-1, 1].
"""

from __future__ import annotations

import math

import torch

from .scene import Scenes

FRAME = 32.0  # canonical frame in which positions and radii are expressed
SLOT_X = (6.0, 16.0, 26.0)
SLOT_Y = 16.0
RADIUS = (3.4, 5.6)  # small, large

COLOUR_RGB = torch.tensor(
    [
        [0.90, 0.12, 0.12],  # red
        [0.98, 0.55, 0.05],  # orange
        [0.95, 0.90, 0.10],  # yellow
        [0.10, 0.70, 0.15],  # green
        [0.10, 0.85, 0.90],  # cyan
        [0.12, 0.25, 0.95],  # blue
        [0.55, 0.15, 0.75],  # purple
        [0.98, 0.55, 0.75],  # pink
    ]
)
BACKGROUND_RGB = torch.tensor([[0.04, 0.04, 0.05], [0.45, 0.45, 0.47], [0.93, 0.93, 0.91]])

_SQRT3_2 = math.sqrt(3.0) / 2.0


def _sdf(shape: torch.Tensor, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (frame units, negative inside) of each shape index; (..., H, W)."""
    ax, ay = px.abs(), py.abs()
    circle = torch.sqrt(px**2 + py**2) - r
    square = torch.maximum(ax, ay) - 0.86 * r
    diamond = (ax + ay - 1.18 * r) / math.sqrt(2.0)
    # Equilateral triangle pointing up (image y grows downwards), centroid at the origin.
    tri_r = 1.25 * r  # circumradius
    triangle = torch.maximum(torch.maximum(py, _SQRT3_2 * px - 0.5 * py), -_SQRT3_2 * px - 0.5 * py) - 0.5 * tri_r
    arm, half_w = r, 0.36 * r
    cross = torch.minimum(torch.maximum(ax - arm, ay - half_w), torch.maximum(ax - half_w, ay - arm))
    all_sdf = torch.stack([circle, square, triangle, diamond, cross])  # (5, ..., H, W)
    idx = shape.clamp(min=0)[None, ..., None, None].expand(1, *all_sdf.shape[1:])
    return torch.gather(all_sdf, 0, idx)[0]


def render(scenes: Scenes, g: torch.Generator, size: int = 32, noise: float = 0.025) -> torch.Tensor:
    """Render a batch of scenes to (N, 3, size, size) images in [-1, 1]."""
    n = len(scenes)
    slots = scenes.slots
    present = scenes.present  # (N, 3)
    # Per-object random variation, drawn for every slot so the stream does not depend on
    # which slots are occupied.
    jx = (torch.rand((n, 3), generator=g) * 2 - 1) * 1.0
    jy = (torch.rand((n, 3), generator=g) * 2 - 1) * 4.0
    rot = (torch.rand((n, 3), generator=g) * 2 - 1) * math.radians(10)
    rscale = 0.92 + 0.16 * torch.rand((n, 3), generator=g)
    cjit = (torch.rand((n, 3, 3), generator=g) * 2 - 1) * 0.05
    light = (torch.rand((n, 2), generator=g) * 2 - 1) * 0.12
    bjit = (torch.rand((n, 3), generator=g) * 2 - 1) * 0.03
    pix_noise = torch.randn((n, 3, size, size), generator=g) * noise

    # Pixel centres in frame units; one pixel is FRAME / size units wide.
    unit = FRAME / size
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) * unit  # (S,)
    yy, xx = coords[:, None], coords[None, :]

    bg = BACKGROUND_RGB[scenes.bg] + bjit  # (N, 3)
    img = bg[:, :, None, None].expand(n, 3, size, size).clone()
    shade_x = (xx - FRAME / 2) / (FRAME / 2)
    shade_y = (yy - FRAME / 2) / (FRAME / 2)
    for s in range(3):
        cx = torch.tensor(SLOT_X[s]) + jx[:, s]
        cy = SLOT_Y + jy[:, s]
        radius = torch.tensor(RADIUS)[slots[:, s, 2].clamp(min=0)] * rscale[:, s]
        c, si = torch.cos(rot[:, s]), torch.sin(rot[:, s])
        dx = xx[None] - cx[:, None, None]  # (N, S, S)
        dy = yy[None] - cy[:, None, None]
        px = c[:, None, None] * dx + si[:, None, None] * dy
        py = -si[:, None, None] * dx + c[:, None, None] * dy
        d = _sdf(slots[:, s, 0], px, py, radius[:, None, None])
        alpha = (0.5 - d / unit).clamp(0.0, 1.0) * present[:, s, None, None]  # (N, S, S)
        rgb = (COLOUR_RGB[slots[:, s, 1].clamp(min=0)] + cjit[:, s]).clamp(0, 1)  # (N, 3)
        # Top-lit: brighter near the object's top, darker at the bottom.
        shade = 1.0 - 0.12 * (dy / radius[:, None, None]).clamp(-1, 1)  # (N, S, S)
        col = rgb[:, :, None, None] * shade[:, None]
        img = img * (1 - alpha[:, None]) + col * alpha[:, None]
    gain = 1.0 + light[:, 0, None, None] * shade_x + light[:, 1, None, None] * shade_y  # (N, S, S)
    img = img * gain[:, None] + pix_noise
    return (img.clamp(0, 1) * 2 - 1).float()
