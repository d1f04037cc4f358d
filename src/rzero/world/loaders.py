"""Constructors of the world networks by asset name, cached frozen instances, and the check that
every shipped asset matches its checksum and loads (`rzero world verify`)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from ..utils.io import AssetError
from .assets import ASSET_FILES, WORLD_TEACHERS, default_asset_dir, load_state, read_manifest
from .models import (COARSE_POOL, WorldClip, WorldFeatureNet, WorldInspector, WorldJudge, WorldQuality,
                     WorldSharpness, teacher_unet_config)


def build_network(name: str) -> torch.nn.Module:
    """A randomly initialised network of the asset `name` (architecture only)."""
    if name in WORLD_TEACHERS:
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**teacher_unet_config())
    if name == "clip_coarse":
        return WorldClip(input_pool=COARSE_POOL)
    return {"inspector": WorldInspector, "featnet": WorldFeatureNet, "clip": WorldClip, "judge": WorldJudge,
            "quality": WorldQuality, "sharpness": WorldSharpness}[name]()


@lru_cache(maxsize=None)
def _load_cached(name: str, asset_dir: str | None) -> torch.nn.Module:
    return load_state(build_network(name), name, Path(asset_dir) if asset_dir else None)


def load_world_network(name: str, asset_dir: str | Path | None = None) -> torch.nn.Module:
    """The frozen shipped network `name`; one instance per process (do not modify it)."""
    return _load_cached(name, str(asset_dir) if asset_dir else None)


def verify_world(asset_dir: Path | None = None) -> dict[str, str]:
    """Check every asset's checksum and load it into its network; returns name -> status."""
    d = Path(asset_dir or default_asset_dir())
    manifest = read_manifest(d)
    report = {}
    for name in ASSET_FILES:
        if name not in manifest["assets"]:
            raise AssetError(f"world asset '{name}' is missing from the manifest in {d}; run `rzero world build`")
        load_state(build_network(name), name, d, verify=True)
        report[name] = f"ok ({manifest['assets'][name]['bytes'] / 1e6:.1f} MB)"
    return report
