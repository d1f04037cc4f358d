"""Loading a trained few-step generator from a run directory or its `final/` snapshot."""

from __future__ import annotations

import json
from pathlib import Path


from ..utils.io import AssetError, copy_weights_, load_safetensors
from .few_step import FewStepGenerator


def resolve_snapshot(path: str | Path) -> Path:
    """Accept a run directory (uses its final/) or a snapshot folder itself."""
    p = Path(path)
    for cand in (p, p / "final"):
        if (cand / "generator.safetensors").is_file() and (cand / "generator.json").is_file():
            return cand
    if not p.exists():
        raise AssetError(f"checkpoint '{p}' not found; pass the --out folder of `rzero train`")
    raise AssetError(f"'{p}' holds no generator snapshot (generator.safetensors + generator.json); "
                     "pass a finished run folder of `rzero train` or its final/ subfolder")


def load_generator(path: str | Path, asset_dir=None) -> tuple[FewStepGenerator, dict]:
    """The generator of a finished run, in eval mode, frozen; returns (generator, metadata)."""
    from ..backbones import make_backbone

    snap = resolve_snapshot(path)
    try:
        meta = json.loads((snap / "generator.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AssetError(f"'{snap / 'generator.json'}' is not valid JSON ({e})") from e
    backbone = make_backbone(meta.get("backbone", "world"), asset_dir=asset_dir)
    path = snap / "generator.safetensors"
    copy_weights_(dict(backbone.unet.named_parameters()), load_safetensors(path), path)
    backbone.eval().requires_grad_(False)
    gen = FewStepGenerator(backbone, int(meta["steps"]), meta.get("timesteps"), meta.get("renoise", "mix"))
    return gen.eval(), meta
