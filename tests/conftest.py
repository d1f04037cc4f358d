"""Shared test set-up: offline Hugging Face, two CPU threads, and the world's asset folder.

Tests that need the world's trained networks take the `world_assets` fixture. It points at
the package's own assets (`default_asset_dir()`), or at `$RZERO_TEST_ASSETS` when that is
set (e.g. a tiny untrained asset set built with `rzero world build` for fast development).
A missing manifest fails those tests loudly instead of skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

# Before anything imports transformers / huggingface_hub: never touch the network.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw their examples from a fixed seed, so a run of the suite is reproducible
# (a failure found while developing is pinned as an explicit example or a regression test).
settings.register_profile("rzero", derandomize=True)
settings.load_profile("rzero")

# Two threads, as on the reference machine. RZERO_TEST_THREADS=1 helps when other jobs keep the
# CPU busy: oversubscribed intra-op threads make each small op wait for a time slice.
torch.set_num_threads(int(os.environ.get("RZERO_TEST_THREADS", "2")))

from rzero.world.assets import MANIFEST, default_asset_dir  # noqa: E402


@pytest.fixture(scope="session")
def world_assets() -> Path:
    """Folder holding the world's safetensors and manifest.json (never modified by tests)."""
    path = Path(os.environ.get("RZERO_TEST_ASSETS", default_asset_dir()))
    if not (path / MANIFEST).is_file():
        pytest.fail(
            f"world assets not found: '{path / MANIFEST}' does not exist. Build them with "
            "`rzero world build` (or point RZERO_TEST_ASSETS at a folder holding a built asset set).",
            pytrace=False,
        )
    return path


@pytest.fixture
def snapshot(tmp_path, world_assets) -> Path:
    """A run folder whose final/ holds the world teacher's weights as a 4-step generator."""
    import json

    from rzero.backbones import WorldBackbone
    from rzero.utils.io import atomic_save_safetensors

    snap = tmp_path / "run" / "final"
    snap.mkdir(parents=True)
    unet = WorldBackbone(asset_dir=world_assets).unet
    atomic_save_safetensors(dict(unet.named_parameters()), snap / "generator.safetensors")
    (snap / "generator.json").write_text(json.dumps({"backbone": "world", "steps": 4}))
    return tmp_path / "run"
