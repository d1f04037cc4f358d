"""Building the backbone a run trains, and loading a trained generator from its snapshot.

A snapshot (`final/` of `rzero train`) is generator.safetensors (the trained weights: the
whole denoiser, or only its LoRA adapters) + generator.json (steps, timesteps, re-noise
mode, LoRA settings, the base model: a path and dtype for real-scale backbones, the teacher
asset on the world) + config.yaml.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..config.schema import WORLD_TIMESTEPS
from ..utils.io import AssetError, copy_weights_, load_safetensors, shorten
from ..world.assets import WORLD_TEACHERS
from .few_step import FewStepGenerator


def backbone_kwargs(name: str, path: str = "", dtype: str = "float32", gradient_checkpointing: bool = False,
                    asset_dir=None, device=None) -> dict:
    """Constructor arguments of backbone `name` from the config's backbone_* fields."""
    if name == "world":
        if dtype != "float32":
            raise ValueError(f"the world backbone runs in float32; drop backbone_dtype={dtype}")
        return {"asset_dir": asset_dir, "teacher": path or "teacher"}  # path: which world teacher asset
    return {"path": path, "dtype": dtype, "gradient_checkpointing": gradient_checkpointing, "device": device}


def build_backbone(cfg, asset_dir=None, device=None):
    """The backbone a TrainConfig describes (no LoRA yet: trainers add it, see backbones/lora.py)."""
    from ..backbones import make_backbone

    return make_backbone(cfg.backbone, **backbone_kwargs(cfg.backbone, cfg.backbone_path, cfg.backbone_dtype,
                                                         cfg.backbone_gradient_checkpointing, asset_dir, device))


def backbone_meta(cfg) -> dict:
    """What a snapshot must record to rebuild the backbone (goes into generator.json).

    A LoRA snapshot holds only the adapters, so the loader must rebuild the same base network:
    on the world that is the teacher asset the run started from (`teacher` or `teacher_web`)."""
    lora = cfg.lora
    lora_meta = {"lora": {"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules)}}
    if cfg.backbone == "world":
        return {"backbone_path": cfg.backbone_path or "teacher", **lora_meta}
    path = cfg.backbone_path
    if Path(path).expanduser().exists():  # a local folder: absolute, so the snapshot loads from anywhere
        path = str(Path(path).expanduser().resolve())
    return {"backbone_path": path, "backbone_dtype": cfg.backbone_dtype, **lora_meta}


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


MAX_META_BYTES = 1 << 20  # generator.json is a few hundred bytes; anything this large is not one


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _meta_problem(meta: dict) -> str:
    """What is wrong with a snapshot's metadata (types and ranges), or "" if nothing."""
    steps = meta.get("steps")
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        return "lacks a positive integer 'steps' (the generator's step count)"
    if steps > WORLD_TIMESTEPS:
        return f"'steps' is {steps}, more than the {WORLD_TIMESTEPS} timesteps of any schedule"
    for key in ("backbone", "method", "backbone_path", "renoise"):
        if key in meta and not isinstance(meta[key], str):
            return f"'{key}' is not a string"
    if meta.get("backbone", "world") not in ("world", "sd15", "sd3"):
        return f"'backbone' is {shorten(repr(meta['backbone']), 40)}, not one of world, sd15, sd3"
    if meta.get("backbone", "world") != "world" and not meta.get("backbone_path"):
        return f"names backbone '{meta['backbone']}' but no 'backbone_path'"
    if meta.get("backbone", "world") == "world" and meta.get("backbone_path", "") not in ("", *WORLD_TEACHERS):
        return (f"'backbone_path' is {shorten(repr(meta['backbone_path']), 40)}, not a world teacher "
                f"({', '.join(WORLD_TEACHERS)})")
    if meta.get("renoise", "mix") not in ("mix", "ddim_sigma"):
        return f"'renoise' is {shorten(repr(meta['renoise']), 40)}, not 'mix' or 'ddim_sigma'"
    if "backbone_dtype" in meta and meta["backbone_dtype"] not in ("float32", "bfloat16", "float16"):
        return "'backbone_dtype' is not one of float32, bfloat16, float16"
    eta = meta.get("inference_eta", 0.0)
    if not _number(eta) or not 0 <= eta <= 1:
        return "'inference_eta' is not a number in [0, 1]"
    ts = meta.get("timesteps")
    if ts is not None:
        if not isinstance(ts, list) or not all(_number(t) for t in ts):
            return "'timesteps' is not a list of finite numbers"
        if len(ts) != steps:
            return f"'timesteps' has {len(ts)} entries for {steps} steps"
        if any(not b < a for a, b in zip(ts, ts[1:])):
            return "'timesteps' does not decrease"
    lora = meta.get("lora")
    if lora is not None:
        if not isinstance(lora, dict):
            return "'lora' is not an object"
        rank, alpha, targets = lora.get("rank", 0), lora.get("alpha", 0.0), lora.get("target_modules")
        if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank <= 65536:
            return "'lora.rank' is not an integer in [0, 65536]"
        if not _number(alpha) or alpha < 0:
            return "'lora.alpha' is not a number >= 0"
        if rank > 0 and (not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets)):
            return "'lora.target_modules' is not a list of layer names"
    return ""


def read_meta(snap: Path) -> dict:
    """A snapshot's generator.json, checked for types and ranges (AssetError otherwise)."""
    path = snap / "generator.json"
    fix = "the snapshot is damaged: restore generator.json or train again with `rzero train`"
    if path.is_file() and path.stat().st_size > MAX_META_BYTES:
        raise AssetError(f"'{path}' is larger than {MAX_META_BYTES >> 20} MB, not a snapshot's metadata; {fix}")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise AssetError(f"'{path}' is not valid JSON ({type(e).__name__}); {fix}") from e
    if not isinstance(meta, dict):
        raise AssetError(f"'{path}' holds a JSON {type(meta).__name__}, not an object; {fix}")
    problem = _meta_problem(meta)
    if problem:
        raise AssetError(f"'{path}' {problem}; {fix}")
    return meta


def check_schedule_timesteps(timesteps, schedule, where: str) -> None:
    """Generator timesteps must lie on the backbone's schedule: VP integer steps 0..T-1 (a value
    outside would index past the schedule's tables, or wrap around when negative), flow [0, 1]."""
    high = 1.0 if schedule.kind == "flow" else float(schedule.num_train_timesteps - 1)
    for i, t in enumerate(float(t) for t in timesteps):
        if not 0.0 <= t <= high:
            raise AssetError(f"{where}: timestep {i} is {t:g}, outside the backbone's schedule [0, {high:g}]")


def load_generator(path: str | Path, asset_dir=None, device=None, dtype: str | None = None,
                   merge_lora: bool = False) -> tuple[FewStepGenerator, dict]:
    """The generator of a finished run, in eval mode, frozen; returns (generator, metadata).

    dtype overrides the backbone dtype the run used (e.g. "bfloat16" for inference).
    merge_lora folds LoRA adapters into the denoiser's weights (a plain network, as exported).
    """
    from ..backbones import make_backbone
    from ..backbones.lora import apply_lora, merged_state_dict

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
    where = f"'{snap / 'generator.json'}'"
    if meta["steps"] > backbone.schedule.num_train_timesteps:
        raise AssetError(f"{where}: {meta['steps']} steps exceed the backbone's {backbone.schedule.num_train_timesteps} "
                         "timesteps; the snapshot is damaged")
    gen = FewStepGenerator(backbone, int(meta["steps"]), meta.get("timesteps"), meta.get("renoise", "mix"))
    check_schedule_timesteps(gen.timesteps, backbone.schedule, where)
    return gen.eval(), meta
