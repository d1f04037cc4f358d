"""Export a trained generator for stock diffusers: a full pipeline folder, or a LoRA file.

`diffusers` format: a StableDiffusionPipeline / StableDiffusion3Pipeline folder whose
denoiser holds the trained weights (LoRA adapters merged in) and whose scheduler is a stock
diffusers scheduler configured to take exactly the generator's steps at eta = 0:

  sd15  DDIMScheduler with timestep_spacing="trailing" and set_alpha_to_one=True. For K
        steps it visits T-1, T-1-T/K, ... (K = 4: 999, 749, 499, 249), each step goes to the
        next of them, and the last returns its x0 prediction: the generator's recursion with
        eta = 0. Needs K to divide T (checked); a custom grid is refused with the reason.
  sd3   FlowMatchEulerDiscreteScheduler (the model's own config). diffusers' default 4-step
        grid is not the generator's, so the grid is passed per call as `sigmas` (unshifted,
        the scheduler applies the model's shift). An Euler step on the flow is exactly the
        generator's eta = 0 step. The call arguments are written to rzero_export.json.

Both are called without CFG (`guidance_scale=1.0`): the generator never uses CFG (SPEC 1.1).

Eta: stock schedulers are deterministic here. R0's "mix" re-noising with eta > 0 has no
stock equivalent (it would need a different DDIM eta at every step); with renoise
"ddim_sigma", DDIMScheduler's `eta` is the same parameter (same distribution, different
noise draws). The export records the run's inference eta and warns when it is not 0.

`lora` format: pytorch_lora_weights.safetensors in diffusers' naming with the adapter
config as metadata (so `pipe.load_lora_weights(folder)` uses the trained alpha), plus the
stock scheduler's scheduler_config.json, to load with `DDIMScheduler.from_pretrained(folder)`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..generator.load import read_meta, resolve_snapshot
from ..utils.io import AssetError, load_safetensors

FORMATS = ("diffusers", "lora")
SUPPORTED = ("sd15", "sd3")
INFO = "rzero_export.json"


def check_out_apart(checkpoint: str | Path, out: str | Path) -> None:
    """OUT must not be, hold or lie inside the run folder (or snapshot) being exported: --force
    empties OUT, and writing into the run would mix the export with the run's own files."""
    try:
        snap = resolve_snapshot(checkpoint).resolve()
    except AssetError:
        return  # not a snapshot: the export stops with that error before it writes anything
    sources = {Path(checkpoint).resolve(), snap} | ({snap.parent} if snap.name == "final" else set())
    target = Path(out).resolve()
    for src in sources:
        if target == src or src in target.parents or target in src.parents:
            raise ValueError(f"output '{out}' overlaps the run being exported ('{src}'); export into a folder "
                             "outside the run folder (the run is never modified or deleted by an export)")


def _prepare_out(out: str | Path, force: bool) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output '{out}' is a file; give a folder path")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ValueError(f"output folder '{out}' is not empty; choose a new folder or pass --force")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _backbone_name(meta: dict, snap: Path) -> str:
    name = meta.get("backbone", "world")
    if name not in SUPPORTED:
        raise ValueError(f"'{snap}' was trained on backbone '{name}'; export supports {', '.join(SUPPORTED)} "
                         "(the world backbone has no VAE or CLIP, so no diffusers pipeline)")
    return name


def stock_scheduler(name: str, scheduler_config: dict, timesteps: list[float], num_train_timesteps: int):
    """(stock scheduler, pipeline call kwargs) that take the generator's eta = 0 steps."""
    k = len(timesteps)
    if name == "sd15":
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(scheduler_config, timestep_spacing="trailing", set_alpha_to_one=True,
                                          clip_sample=False, thresholding=False)
        sched.set_timesteps(k)
        stride = num_train_timesteps // k  # DDIM always steps from t to t - T // K
        visits = [int(t) for t in sched.timesteps]
        nexts = visits[1:] + [visits[-1] - stride]
        if visits != [int(round(t)) for t in timesteps] or any(b != a - stride for a, b in zip(visits, nexts)) \
                or nexts[-1] >= 0:
            raise ValueError(f"the generator's timesteps {[int(t) for t in timesteps]} are not DDIM's trailing "
                             f"grid for {k} steps ({visits}); export needs the default evenly spaced grid with "
                             f"{k} dividing {num_train_timesteps}")
        return sched, {"num_inference_steps": k, "guidance_scale": 1.0, "eta": 0.0}
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler.from_config(scheduler_config)
    shift = float(sched.config.shift)
    t = torch.tensor(timesteps, dtype=torch.float64)
    unshifted = t / (shift - (shift - 1.0) * t)  # inverse of t -> s t / (1 + (s - 1) t)
    return sched, {"num_inference_steps": k, "guidance_scale": 1.0, "sigmas": [float(s) for s in unshifted]}


def _info(snap: Path, meta: dict, fmt: str, call: dict, scheduler: str, load: dict | None = None) -> dict:
    eta = float(meta.get("inference_eta", 0.0))
    note = ("deterministic: reproduces `rzero sample` (eta = 0) from the same latents" if eta == 0 else
            f"the run's inference eta is {eta}; stock schedulers run eta = 0 here (see rzero/apps/export.py)")
    return {"source": str(snap), "format": fmt, "backbone": meta["backbone"], "base_model": meta.get("backbone_path"),
            "steps": int(meta["steps"]), "timesteps": meta.get("timesteps"), "renoise": meta.get("renoise"),
            "inference_eta": eta, "scheduler": scheduler, "pipeline_load": load or {}, "pipeline_call": call,
            "note": note}


def export_diffusers(checkpoint: str | Path, out: str | Path, dtype: str = "float32", force: bool = False) -> Path:
    """A full diffusers pipeline folder (LoRA merged); returns the folder."""
    from ..generator.load import load_generator

    snap = resolve_snapshot(checkpoint)
    meta = read_meta(snap)
    name = _backbone_name(meta, snap)
    gen, meta = load_generator(snap, device="cpu", dtype=dtype, merge_lora=True)
    bb = gen.backbone
    sched, call = stock_scheduler(name, bb.scheduler_config, [float(t) for t in gen.timesteps],
                                  bb.schedule.num_train_timesteps)
    out = _prepare_out(out, force)
    if name == "sd15":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                                       unet=bb.unet, scheduler=sched, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    else:
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline(transformer=bb.unet, scheduler=sched, vae=bb.vae,
                                        text_encoder=bb.text_encoder, tokenizer=bb.tokenizer,
                                        text_encoder_2=bb.text_encoder_2, tokenizer_2=bb.tokenizer_2,
                                        text_encoder_3=bb.text_encoder_3, tokenizer_3=bb.tokenizer_3)
    pipe.save_pretrained(out, safe_serialization=True)
    # Without T5, diffusers' from_pretrained must be told that the empty slots are meant to be empty.
    load = {"text_encoder_3": None, "tokenizer_3": None} if name == "sd3" and bb.text_encoder_3 is None else {}
    info = _info(snap, meta, "diffusers", call, type(sched).__name__, load)
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return out


def export_lora(checkpoint: str | Path, out: str | Path, force: bool = False) -> Path:
    """pytorch_lora_weights.safetensors (diffusers naming + adapter metadata) and the stock scheduler config."""
    from peft import LoraConfig

    from ..backbones.sd15 import read_scheduler_config

    snap = resolve_snapshot(checkpoint)
    meta = read_meta(snap)
    name = _backbone_name(meta, snap)
    lora = meta.get("lora") or {}
    if lora.get("rank", 0) <= 0:
        raise ValueError(f"'{snap}' was fully fine-tuned (lora.rank = 0): export it with --format diffusers, "
                         "or train with lora.rank > 0 to get a LoRA file")
    weights = load_safetensors(snap / "generator.safetensors")
    if not weights or not all(".lora_A.default." in k or ".lora_B.default." in k for k in weights):
        raise AssetError(f"'{snap / 'generator.safetensors'}' does not hold LoRA adapters only")
    # peft's saved naming drops the adapter name: "...to_q.lora_A.default.weight" -> "...to_q.lora_A.weight".
    tensors = {k.replace(".default.", "."): v.float().contiguous() for k, v in weights.items()}
    config = LoraConfig(r=int(lora["rank"]), lora_alpha=float(lora.get("alpha") or lora["rank"]),
                        target_modules=list(lora["target_modules"]), init_lora_weights="gaussian").to_dict()
    sched_config = read_scheduler_config(meta["backbone_path"])
    sched, call = stock_scheduler(name, sched_config, list(meta["timesteps"]),
                                  int(sched_config.get("num_train_timesteps", 1000)))
    out = _prepare_out(out, force)
    if name == "sd15":
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=tensors, unet_lora_adapter_metadata=config)
    else:
        from diffusers import StableDiffusion3Pipeline

        StableDiffusion3Pipeline.save_lora_weights(out, transformer_lora_layers=tensors,
                                                   transformer_lora_adapter_metadata=config)
    sched.save_pretrained(out)
    (out / INFO).write_text(json.dumps(_info(snap, meta, "lora", call, type(sched).__name__), indent=2) + "\n")
    return out


def export(checkpoint: str | Path, fmt: str, out: str | Path, dtype: str = "float32", force: bool = False) -> Path:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    check_out_apart(checkpoint, out)  # first: nothing is read, loaded or deleted before this holds
    if fmt == "lora":
        return export_lora(checkpoint, out, force)
    return export_diffusers(checkpoint, out, dtype, force)
