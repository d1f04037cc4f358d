"""Shipped world assets: file names, manifest, checksum verification and loading."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..utils.io import AssetError, load_safetensors, sha256_file

MANIFEST = "manifest.json"
ASSET_FILES = {
    "inspector": "inspector.safetensors",
    "featnet": "featnet.safetensors",
    "clip": "world_clip.safetensors",
    "clip_coarse": "world_clip_coarse.safetensors",  # world-clip on 4x4-pixel cell means (world v2)
    "judge": "world_judge.safetensors",
    "quality": "world_quality.safetensors",
    "teacher": "teacher_unet.safetensors",  # the shipped base model, trained on exact captions
    "teacher_web": "teacher_web_unet.safetensors",  # world v2 candidate: trained on web captions (SPEC 6.1)
    "sharpness": "sharpness.safetensors",
}
# The world's base models, selectable as a world run's `backbone_path` and `rzero eval teacher=...`.
WORLD_TEACHERS = ("teacher", "teacher_web")


def default_asset_dir() -> Path:
    return Path(__file__).parent / "assets"


def read_manifest(asset_dir: Path | None = None) -> dict:
    path = Path(asset_dir or default_asset_dir()) / MANIFEST
    if not path.is_file():
        raise AssetError(f"world manifest '{path}' not found; run `rzero world build` (or reinstall rzero)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AssetError(f"world manifest '{path}' is not valid JSON ({e}); run `rzero world build`") from e


def asset_path(name: str, asset_dir: Path | None = None, verify: bool = False) -> Path:
    """Path of one asset; with `verify`, its sha256 is checked against the manifest."""
    if name not in ASSET_FILES:
        raise AssetError(f"unknown world asset '{name}'; known: {', '.join(ASSET_FILES)}")
    d = Path(asset_dir or default_asset_dir())
    path = d / ASSET_FILES[name]
    if not path.is_file():
        raise AssetError(f"world asset '{path}' not found; run `rzero world build --only {name}`")
    if verify:
        entry = read_manifest(d)["assets"].get(name)
        if entry is None:
            raise AssetError(f"world asset '{name}' is missing from the manifest; run `rzero world build --only {name}`")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise AssetError(f"checksum mismatch for '{path}' (sha256 {digest[:12]}..., manifest "
                             f"{entry['sha256'][:12]}...); rebuild with `rzero world build --only {name} --force`")
    return path


def load_state(model: torch.nn.Module, name: str, asset_dir: Path | None = None, verify: bool = False) -> torch.nn.Module:
    """Load an asset's weights into `model` (strict), frozen and in eval mode."""
    path = asset_path(name, asset_dir, verify)
    state = load_safetensors(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise AssetError(f"weights in '{path}' do not fit the {name} network ({detail}); "
                         f"rebuild with `rzero world build --only {name} --force`") from e
    return model.eval().requires_grad_(False)
