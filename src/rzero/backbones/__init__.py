"""Backbone adapters and their registry (plain dict, STYLE principle 4)."""

from .base import Backbone, BackboneBase
from .world import WorldBackbone

BACKBONES = {"world": WorldBackbone}


def make_backbone(name: str, **kwargs) -> BackboneBase:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone '{name}'; choose from {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](**kwargs)


__all__ = ["BACKBONES", "Backbone", "BackboneBase", "WorldBackbone", "make_backbone"]
