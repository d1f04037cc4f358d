"""Stable Diffusion 1.x / 2.x backbone: any diffusers folder or hub id (SPEC 0, 1.1).

Parts (diffusers layout): unet/ (UNet2DConditionModel, the trained denoiser), vae/
(AutoencoderKL, frozen), text_encoder/ + tokenizer/ (CLIP, frozen), scheduler/ (only its
config is read: the beta table and the parameterization).

Notation (SPEC 0): x_t = a_t x0 + b_t eps with a_t = sqrt(abar_t), b_t = sqrt(1 - abar_t),
integer t in {0..T-1}; the UNet predicts eps ("epsilon", SD1.x, SD2-base) or
v = a eps - b x0 ("v_prediction", SD2 768 px), as the scheduler config says.

Shapes: latents (B, 4, h, w) with h = H / 8 for the real VAE; cond (B, 77, D) CLIP token
states (D = 768 SD1.x, 1024 SD2); images (B, 3, H, W) in [-1, 1], not clamped by `decode`
(rewards need the gradient everywhere).

Precision: every network is cast to `dtype`; the sampler state (latents, eta, noise) stays
float32 and is cast at the network boundary, so a bf16 backbone does not round the
few-step recursion. A trainer may later upcast the trainable weights (see backbones/lora.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import torch

from ..diffusion import VPSchedule
from ..utils.io import AssetError, _brief
from .base import BackboneBase

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choose from {', '.join(DTYPES)}")
    return DTYPES[dtype]


def default_device(device: str | torch.device | None) -> torch.device:
    """The given device, else this process's GPU (LOCAL_RANK under accelerate/torchrun), else the CPU.

    Backbones are built before the trainer's Accelerator exists, so the launcher's LOCAL_RANK is
    read here: otherwise every rank would put its frozen networks on GPU 0.
    """
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def check_model_path(path: str | os.PathLike | None, kind: str) -> str:
    """A local diffusers folder or a hub id; a missing local folder is a one-line AssetError."""
    if path is None or str(path).strip() == "":
        raise AssetError(f"backbone '{kind}' needs a model: set backbone_path to a diffusers folder or hub id")
    text = str(path)
    p = Path(text).expanduser()
    if p.exists():
        if not p.is_dir() or not (p / "model_index.json").is_file():
            raise AssetError(f"'{p}' is not a diffusers model folder (no model_index.json); pass the folder that "
                             f"holds model_index.json, unet/ (or transformer/), vae/ and the text encoder(s)")
        return str(p)
    # "owner/name" is a hub id; anything else (absolute, ./, several slashes) was meant as a folder.
    looks_like_hub_id = text.count("/") == 1 and not text.startswith((".", "/", "~")) and os.sep == "/"
    if not looks_like_hub_id:
        raise AssetError(f"model folder '{p}' not found; download the diffusers folder (e.g. `hf download "
                         f"<hub id> --local-dir {p}`) or set backbone_path to a hub id")
    return text


def load_part(cls, path: str, subfolder: str, dtype: torch.dtype | None = None, optional: bool = False):
    """`cls.from_pretrained(path, subfolder=...)` with one-line errors; None for a missing optional part."""
    local = Path(path).expanduser()
    if local.is_dir() and not (local / subfolder).is_dir():
        if optional:
            return None
        raise AssetError(f"'{local}' has no {subfolder}/ folder; a complete diffusers folder is needed")
    kwargs: dict[str, Any] = {"subfolder": subfolder}
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    try:
        return cls.from_pretrained(path, **kwargs)
    except Exception as e:  # hub, file and format errors come in many types; all mean "cannot load"
        if optional and not local.is_dir():
            return None
        raise load_error(f"{subfolder}/", path, e) from e


def load_error(what: str, path: str, e: Exception) -> AssetError:
    """One line: what failed, why, and how to supply the model."""
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    if Path(path).expanduser().is_dir():
        how = "check that the folder is a complete diffusers model"
    elif offline:
        how = ("a hub id must be in the local Hugging Face cache when HF_HUB_OFFLINE=1: download it once where "
               "there is network, or set backbone_path to a local diffusers folder")
    else:
        how = "check the hub id (and your access to it), or set backbone_path to a local diffusers folder"
    return AssetError(f"cannot load {what} of '{path}' ({_brief(e)}); {how}")


def read_scheduler_config(path: str) -> dict:
    from diffusers import DDIMScheduler

    local = Path(path).expanduser()
    if local.is_dir() and not (local / "scheduler" / "scheduler_config.json").is_file():
        raise AssetError(f"'{local}' has no scheduler/scheduler_config.json; the noise schedule is read from it")
    try:
        return dict(DDIMScheduler.load_config(path, subfolder="scheduler"))
    except Exception as e:
        raise load_error("scheduler/scheduler_config.json", path, e) from e


def vp_schedule_from_config(config: dict) -> tuple[VPSchedule, str]:
    """The VP schedule and prediction type a diffusers scheduler config describes."""
    if config.get("trained_betas") is not None:
        raise ValueError("scheduler configs with explicit trained_betas are not supported; use a "
                         "linear or scaled_linear beta schedule")
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError("rescale_betas_zero_snr is not supported (a_t = 0 at the top step makes "
                         "eps-prediction undefined)")
    pred = config.get("prediction_type", "epsilon")
    if pred not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type '{pred}' is not supported; SD backbones predict epsilon or v_prediction")
    schedule = VPSchedule(num_train_timesteps=config.get("num_train_timesteps", 1000),
                          beta_start=config.get("beta_start", 0.00085), beta_end=config.get("beta_end", 0.012),
                          beta_schedule=config.get("beta_schedule", "scaled_linear"),
                          steps_offset=config.get("steps_offset", 1))
    return schedule, pred


def sampler_options_from_config(config: dict) -> tuple[str, float | None]:
    """(final_step, clip_x0) of the teacher's DDIM sampler, read like diffusers' DDIMScheduler reads
    the config: set_alpha_to_one (default True) -> "x0" / "alpha0"; clip_sample (default True) ->
    clip_sample_range (default 1.0) or None. SD1.5 and SD2.x configs say False to both."""
    if config.get("thresholding", False):
        raise ValueError("scheduler configs with thresholding (dynamic thresholding) are not supported")
    final = "x0" if config.get("set_alpha_to_one", True) else "alpha0"
    clip = float(config.get("clip_sample_range", 1.0)) if config.get("clip_sample", True) else None
    return final, clip


def _size(sample_size) -> tuple[int, int]:
    return (sample_size, sample_size) if isinstance(sample_size, int) else tuple(sample_size)


def place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to device; cast only when needed (diffusers warns about `.to(dtype)` on loaded models)."""
    module.to(device)
    if any(p.dtype != dtype for p in module.parameters() if p.is_floating_point()):
        module.to(dtype)
    return module


def freeze(module: torch.nn.Module | None) -> None:
    if module is not None:
        module.eval().requires_grad_(False)


class SD15Backbone(BackboneBase):
    """SD1.x/2.x as a Backbone: CLIP-conditioned UNet on VAE latents, eps or v prediction.

    path: a diffusers folder or hub id. components: instead of a path, ready modules
    {"unet", "vae", "text_encoder", "tokenizer", "scheduler_config"} (benchmarks build
    random-weight networks of the real size this way). asset_dir is accepted and unused
    (the world backbone's argument), so `make_backbone(name, asset_dir=...)` works for all.
    """

    denoiser_name = "unet"

    def __init__(self, path: str | None = None, *, dtype: str | torch.dtype = "float32",
                 device: str | torch.device | None = None, gradient_checkpointing: bool = False,
                 components: dict | None = None, asset_dir=None):
        super().__init__()
        self.path = None if components is not None else check_model_path(path, "sd15")
        self.dtype_ = parse_dtype(dtype)
        self.device_ = default_device(device)
        if components is None:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer

            components = {"scheduler_config": read_scheduler_config(self.path),
                          "tokenizer": load_part(CLIPTokenizer, self.path, "tokenizer"),
                          "text_encoder": load_part(CLIPTextModel, self.path, "text_encoder", self.dtype_),
                          "vae": load_part(AutoencoderKL, self.path, "vae", self.dtype_),
                          "unet": load_part(UNet2DConditionModel, self.path, "unet", self.dtype_)}
        self.scheduler_config = dict(components["scheduler_config"])
        self.schedule, self.prediction_type = vp_schedule_from_config(self.scheduler_config)
        self.final_step, self.clip_x0 = sampler_options_from_config(self.scheduler_config)
        self.tokenizer = components["tokenizer"]
        self.unet = place(components["unet"], self.device_, self.dtype_)
        self.vae = place(components["vae"], self.device_, self.dtype_)
        self.text_encoder = place(components["text_encoder"], self.device_, self.dtype_)
        freeze(self.vae)
        freeze(self.text_encoder)
        self.unet.eval()
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        h, w = _size(self.unet.config.sample_size)
        self.latent_shape = (int(self.unet.config.in_channels), h, w)
        self.set_gradient_checkpointing(gradient_checkpointing)

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.device_

    @property
    def image_size(self) -> tuple[int, int]:
        return self.latent_shape[1] * self.vae_scale, self.latent_shape[2] * self.vae_scale

    def denoiser(self) -> torch.nn.Module:
        return getattr(self, self.denoiser_name)

    def set_gradient_checkpointing(self, on: bool) -> None:
        """Recompute activations inside the denoiser and the VAE decoder in the backward pass."""
        for m in (self.denoiser(), self.vae):
            if on:
                m.enable_gradient_checkpointing()
            else:
                m.disable_gradient_checkpointing()
        self.gradient_checkpointing = bool(on)

    def _compute_dtype(self) -> torch.dtype:
        # The first weight is the input convolution / patch embedding: never a LoRA adapter, and it
        # follows a trainer's upcast of a fully trained denoiser.
        return next(self.denoiser().parameters()).dtype

    def _tokenize(self, tokenizer, prompts: list[str], max_length: int | None = None) -> torch.Tensor:
        ids = tokenizer(list(prompts), padding="max_length", max_length=max_length or tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        return ids.to(self.device_)  # (B, L)

    # ------------------------------------------------------------------ protocol
    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Last-layer CLIP token states, as StableDiffusionPipeline feeds the UNet: (B, 77, D)."""
        return self.text_encoder(self._tokenize(self.tokenizer, prompts))[0]

    def cat_conds(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b])

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        dt = self._compute_dtype()
        out = self.unet(x_t.to(dt), self.schedule.model_time(t).to(x_t.device), encoder_hidden_states=cond.to(dt)).sample
        return out.to(x_t.dtype)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode of latents (B, 4, h, w) -> images (B, 3, 8h, 8w), nominally [-1, 1], float32."""
        z = (latents / self.scaling_factor).to(self.vae.dtype)
        return self.vae.decode(z).sample.float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (posterior mean)."""
        return self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean.float() * self.scaling_factor

    def trainable_parameters(self) -> Iterable[torch.nn.Parameter]:
        """The denoiser's weights, or only its LoRA adapters once `apply_lora` added some."""
        named = list(self.denoiser().named_parameters())
        lora = [p for n, p in named if "lora_" in n]
        return lora if lora else [p for _, p in named]

    @torch.no_grad()
    def sample(self, prompts, noise, steps=25, cfg=7.5, eta=0.0, generator=None):
        return super().sample(prompts, noise.to(self.device_), steps, cfg, eta, generator)
