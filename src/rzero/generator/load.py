"""Building the backbone a run trains, and loading a trained generator from its snapshot.

A snapshot (`final/` of `rzero train`) is generator.safetensors (the trained weights: the
whole denoiser, or only its LoRA adapters) + generator.json (steps, timesteps, re-noise
mode, and for real-scale backbones the model path, dtype and LoRA settings) + config.yaml.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..utils.io import AssetError, copy_weights_, load_safetensors
from .few_step import FewStepGenerator


def backbone_kwargs(name: str, path: str = "", dtype: str = "float32", gradient_checkpointing: bool = False,
                    asset_dir=None, device=None) -> dict:
    """Constructor arguments of backbone `name` from the config's backbone_* fields."""
    if name == "world":
        if dtype != "float32":
            raise ValueError(f"the world backbone runs in float32; drop backbone_dtype={dtype}")
        return {"asset_dir": asset_dir}
    return {"path": path, "dtype": dtype, "gradient_checkpointing": gradient_checkpointing, "device": device}


def build_backbone(cfg, asset_dir=None, device=None):
    """The backbone a TrainConfig describes (no LoRA yet: trainers add it, see losses/lora.py)."""
    from ..backbones import make_backbone

    return make_backbone(cfg.backbone, **backbone_kwargs(cfg.backbone, cfg.backbone_path, cfg.backbone_dtype,
                                                         cfg.backbone_gradient_checkpointing, asset_dir, device))


def backbone_meta(cfg) -> dict:
    """What a snapshot must record to rebuild the backbone (goes into generator.json)."""
    if cfg.backbone == "world":
        return {}
    path = cfg.backbone_path
    if Path(path).expanduser().exists():  # a local folder: absolute, so the snapshot loads from anywhere
        path = str(Path(path).expanduser().resolve())
    lora = cfg.lora
    return {"backbone_path": path, "backbone_dtype": cfg.backbone_dtype,
            "lora": {"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules)}}


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


def read_meta(snap: Path) -> dict:
    path = snap / "generator.json"
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AssetError(f"'{path}' is not valid JSON ({e})") from e
    steps = meta.get("steps") if isinstance(meta, dict) else None
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise AssetError(f"'{path}' lacks a positive integer 'steps' (the generator's step count); "
                         "the snapshot is damaged: restore generator.json or train again with `rzero train`")
    return meta


def load_generator(path: str | Path, asset_dir=None, device=None, dtype: str | None = None,
                   merge_lora: bool = False) -> tuple[FewStepGenerator, dict]:
    """The generator of a finished run, in eval mode, frozen; returns (generator, metadata).

    dtype overrides the backbone dtype the run used (e.g. "bfloat16" for inference).
    merge_lora folds LoRA adapters into the denoiser's weights (a plain network, as exported).
    """
    from ..backbones import make_backbone
    from ..losses.lora import apply_lora, merged_state_dict

    snap = resolve_snapshot(path)
    meta = read_meta(snap)
    name = meta.get("backbone", "world")
    if name != "world" and not meta.get("backbone_path"):
        raise AssetError(f"'{snap / 'generator.json'}' names backbone '{name}' but no backbone_path")
    kwargs = backbone_kwargs(name, meta.get("backbone_path", ""), dtype or meta.get("backbone_dtype", "float32"),
                             False, asset_dir, device)
    backbone = make_backbone(name, **kwargs)
    denoiser = backbone.unet
    lora = meta.get("lora") or {}
    weights_path = snap / "generator.safetensors"
    weights = load_safetensors(weights_path)
    if lora.get("rank", 0) > 0:
        apply_lora(denoiser, lora["rank"], lora.get("alpha", 0.0), lora.get("target_modules"))
        targets = {n: p for n, p in denoiser.named_parameters() if "lora_" in n}
        copy_weights_(targets, weights, weights_path)
        if merge_lora:  # a plain network of the same config holds the merged weights; nothing reloads
            ref = next(p for n, p in denoiser.named_parameters() if "lora_" not in n)  # a base weight
            plain = type(denoiser).from_config(denoiser.config)
            plain.load_state_dict(merged_state_dict(denoiser))
            backbone.unet = plain.to(ref.device, ref.dtype)
    else:
        copy_weights_(dict(denoiser.named_parameters()), weights, weights_path)
    backbone.eval().requires_grad_(False)
    gen = FewStepGenerator(backbone, int(meta["steps"]), meta.get("timesteps"), meta.get("renoise", "mix"))
    return gen.eval(), meta
