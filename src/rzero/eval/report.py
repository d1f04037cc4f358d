"""Markdown rendering of evaluation results and image grids."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ..utils.io import atomic_write_bytes


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8, upscale: int = 2) -> None:
    """Save (N, 3, H, W) images in [-1, 1] as one PNG grid (nearest-neighbour upscaled)."""
    from PIL import Image

    n, _, h, w = images.shape
    ncol = min(nrow, n)
    rows = math.ceil(n / ncol)
    pad = 2
    canvas = torch.ones(3, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = \
            (images[i].float().cpu().clamp(-1, 1) + 1) / 2
    arr = (canvas.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    img = Image.fromarray(arr)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "n/a"
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def metrics_table(rows: dict[str, dict]) -> str:
    """Markdown table: one row per model, the protocol's columns."""
    cols = ["acc_L1", "acc_L2", "acc_L3", "acc_L4", "acc_heldout", "world_fid", "diversity",
            "reward_world_clip", "reward_world_judge", "reward_world_quality", "nfe", "ms_per_image"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(c, float('nan'))) for c in cols) + " |")
    return "\n".join(lines)


def attribute_table(rows: dict[str, dict]) -> str:
    cols = ["shape", "colour", "size", "slot", "count", "background"]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(f"attr_acc_{c}", float('nan'))) for c in cols) + " |")
    return "\n".join(lines)


def eval_markdown(rows: dict[str, dict], title: str = "World evaluation") -> str:
    return (f"# {title}\n\nAll-correct inspector accuracy per level (0-1), world-FID against real renders of "
            "the same prompts (lower is better), diversity across seeds (feature distance), mean rewards, "
            "network evaluations per image (CFG counts twice) and wall-clock ms per image.\n\n"
            + metrics_table(rows) + "\n\nPer-attribute inspector accuracy (all levels together):\n\n"
            + attribute_table(rows) + "\n")


def write_json(metrics: dict, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(metrics, indent=2, sort_keys=True) + "\n").encode())
