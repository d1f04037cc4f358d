"""Backbone adapters and their registry (plain dict, STYLE principle 4)."""

from .base import Backbone, BackboneBase
from .sd3 import SD3Backbone
from .sd15 import SD15Backbone
from .world import WorldBackbone

BACKBONES = {"world": WorldBackbone, "sd15": SD15Backbone, "sd3": SD3Backbone}


def make_backbone(name: str, **kwargs) -> BackboneBase:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "Backbone", "BackboneBase", "SD15Backbone", "SD3Backbone", "WorldBackbone", "make_backbone"]
