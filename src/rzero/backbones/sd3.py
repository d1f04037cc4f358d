"""Stable Diffusion 3 / 3.5 backbone: rectified flow with SD3's time shift (SPEC 0, 1.1).

Parts (diffusers layout): transformer/ (SD3Transformer2DModel, the trained denoiser),
vae/ (AutoencoderKL with scaling and shift factors, frozen), text_encoder/ + tokenizer/
(CLIP-L), text_encoder_2/ + tokenizer_2/ (CLIP-G), optional text_encoder_3/ + tokenizer_3/
(T5-XXL; without it the T5 tokens are zeros, as diffusers does), scheduler/ (its `shift`).

Notation (SPEC 0): x_t = (1 - t) x0 + t eps, t in [0, 1]; the transformer receives 1000 t
and predicts the flow v = eps - x0, so x0 = x_t - t v. The few-step grid is shifted with
the scheduler's shift: t -> s t / (1 + (s - 1) t) (SD3-Medium: s = 3).

Conditioning, as StableDiffusion3Pipeline builds it:
    clip  = cat(CLIP-L penultimate states, CLIP-G penultimate states)   (B, 77, 768 + 1280)
    embeds = cat(pad(clip, to T5 width), T5 states)                     (B, 77 + 256, 4096)
    pooled = cat(CLIP-L text_embeds, CLIP-G text_embeds)                (B, 2048)
Latents (B, 16, h, w), h = H / 8; decode(z) = VAE(z / scaling + shift).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import FlowSchedule
from ..utils.io import AssetError
from .sd15 import (SD15Backbone, _size, check_model_path, default_device, freeze, load_error, load_part, parse_dtype,
                   place)


def flow_schedule_from_config(config: dict) -> FlowSchedule:
    if config.get("use_dynamic_shifting", False):
        raise ValueError("scheduler configs with use_dynamic_shifting (resolution-dependent shift) are not "
                         "supported by the sd3 backbone; SD3 / SD3.5 use a fixed shift")
    return FlowSchedule(shift=float(config.get("shift", 1.0)),
                        num_train_timesteps=int(config.get("num_train_timesteps", 1000)))


def read_flow_scheduler_config(path: str) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    try:
        return dict(FlowMatchEulerDiscreteScheduler.load_config(path, subfolder="scheduler"))
    except Exception as e:
        raise load_error("scheduler/scheduler_config.json", path, e) from e


class SD3Backbone(SD15Backbone):
    """SD3 / SD3.5 as a Backbone: MMDiT on VAE latents, flow prediction, CLIP-L/G (+ T5).

    Shares SD15Backbone's plumbing (dtype at the network boundary, gradient checkpointing,
    LoRA-aware `trainable_parameters`); only the parts that differ are written here.
    components: {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2",
    "tokenizer_2", "text_encoder_3" (may be None), "tokenizer_3", "scheduler_config"}.
    """

    prediction_type = "flow"

    def __init__(self, path: str | None = None, *, dtype: str | torch.dtype = "float32",
                 device: str | torch.device | None = None, gradient_checkpointing: bool = False,
                 components: dict | None = None, max_sequence_length: int = 256, use_t5: bool = True,
                 asset_dir=None):
        torch.nn.Module.__init__(self)
        self.path = None if components is not None else check_model_path(path, "sd3")
        self.dtype_ = parse_dtype(dtype)
        self.device_ = default_device(device)
        if components is None:
            from diffusers import AutoencoderKL, SD3Transformer2DModel
            from transformers import CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel, T5TokenizerFast

            p, dt = self.path, self.dtype_
            components = {"scheduler_config": read_flow_scheduler_config(p),
                          "tokenizer": load_part(CLIPTokenizer, p, "tokenizer"),
                          "tokenizer_2": load_part(CLIPTokenizer, p, "tokenizer_2"),
                          "text_encoder": load_part(CLIPTextModelWithProjection, p, "text_encoder", dt),
                          "text_encoder_2": load_part(CLIPTextModelWithProjection, p, "text_encoder_2", dt),
                          "vae": load_part(AutoencoderKL, p, "vae", dt),
                          "transformer": load_part(SD3Transformer2DModel, p, "transformer", dt)}
            if use_t5:  # optional: SD3 runs (slightly worse) without the 4.7 B-parameter T5
                components["text_encoder_3"] = load_part(T5EncoderModel, p, "text_encoder_3", dt, optional=True)
                components["tokenizer_3"] = load_part(T5TokenizerFast, p, "tokenizer_3", optional=True)
        self.scheduler_config = dict(components["scheduler_config"])
        self.schedule = flow_schedule_from_config(self.scheduler_config)
        self.tokenizer, self.tokenizer_2 = components["tokenizer"], components["tokenizer_2"]
        self.tokenizer_3 = components.get("tokenizer_3")
        self.unet = place(components["transformer"], self.device_, self.dtype_)
        self.vae = place(components["vae"], self.device_, self.dtype_)
        self.text_encoder = place(components["text_encoder"], self.device_, self.dtype_)
        self.text_encoder_2 = place(components["text_encoder_2"], self.device_, self.dtype_)
        te3 = components.get("text_encoder_3")
        self.text_encoder_3 = place(te3, self.device_, self.dtype_) if te3 is not None and use_t5 else None
        if self.text_encoder_3 is not None and self.tokenizer_3 is None:
            raise AssetError("the T5 text encoder (text_encoder_3/) came without its tokenizer_3/")
        for m in (self.vae, self.text_encoder, self.text_encoder_2, self.text_encoder_3):
            freeze(m)
        self.unet.eval()
        self.max_sequence_length = int(max_sequence_length)
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.shift_factor = float(self.vae.config.shift_factor or 0.0)
        h, w = _size(self.transformer.config.sample_size)
        self.latent_shape = (int(self.transformer.config.in_channels), h, w)
        self.set_gradient_checkpointing(gradient_checkpointing)

    @property
    def transformer(self) -> torch.nn.Module:
        """The MMDiT. It is registered as `unet`, the name trainers use for every backbone's denoiser
        (so that a view with another denoiser, trainers/fake_score.backbone_with, works here too)."""
        return self.unet

    # ------------------------------------------------------------------ protocol
    def _clip(self, tokenizer, encoder, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out = encoder(self._tokenize(tokenizer, prompts), output_hidden_states=True)
        return out.hidden_states[-2], out[0]  # penultimate states (B, 77, D), projected pooled (B, P)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(token states (B, 77 + L_t5, D_joint), pooled (B, P)); see the module docstring."""
        states_l, pooled_l = self._clip(self.tokenizer, self.text_encoder, prompts)
        states_g, pooled_g = self._clip(self.tokenizer_2, self.text_encoder_2, prompts)
        clip = torch.cat([states_l, states_g], dim=-1)
        if self.text_encoder_3 is None:
            t5 = clip.new_zeros((len(prompts), self.max_sequence_length, self.transformer.config.joint_attention_dim))
        else:
            t5 = self.text_encoder_3(self._tokenize(self.tokenizer_3, prompts, self.max_sequence_length))[0]
        # diffusers pads (or, for widths above T5's, cuts) the CLIP states to the T5 width.
        clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat([pooled_l, pooled_g], dim=-1)

    def cat_conds(self, a, b):
        return torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        states, pooled = cond
        dt = self._compute_dtype()
        out = self.unet(hidden_states=x_t.to(dt), timestep=self.schedule.model_time(t).to(x_t.device, torch.float32),
                               encoder_hidden_states=states.to(dt), pooled_projections=pooled.to(dt)).sample
        return out.to(x_t.dtype)  # flow v = eps - x0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """VAE decode: images (B, 3, 8h, 8w), nominally [-1, 1], float32."""
        z = (latents / self.scaling_factor + self.shift_factor).to(self.vae.dtype)
        return self.vae.decode(z).sample.float()

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        z = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean.float()
        return (z - self.shift_factor) * self.scaling_factor
