"""Shared plumbing of the real-scale rewards: CLIP-style preprocessing, weight lookup, encoders.

Preprocessing (differentiable versions of the official PIL pipelines, `clip_preprocess`):
    "crop" (CLIP, ImageReward, PickScore, aesthetic: torchvision `Resize(size)` + `CenterCrop`):
        [-1, 1] -> short side to `size`, long side int(size * long / short), bicubic
                -> center crop size x size (offset round(d / 2), or d // 2 for transformers 4.x
                   processors) -> [0, 1] -> (x - mean) / std
    "pad" (HPS v2: open_clip's `ResizeMaxSize`, the `preprocess_val` of hpsv2/img_score.py):
        [-1, 1] -> long side to `size`, short side round(size * short / long), bicubic
                -> pad with black to size x size (left/top get the smaller half) -> normalize
The bicubic resize is PIL's (`pil_bicubic`): torch's antialiased bicubic is PIL's filter
(a = -0.5, support scaled when shrinking), both when shrinking and when enlarging (torch's plain
bicubic, a = -0.75, is a different kernel: 1e-4 off in cosine for images smaller than 224 px),
run as PIL runs it, horizontal then vertical, each pass clipped to the pixel range.

Weight lookup (one rule for every reward, SPEC 4 "every weight from a local path or a hub id"):
    spec given:  an existing file is used as is; an existing folder must hold the expected
                 file name; anything else is taken as a Hugging Face hub id.
    no spec:     the expected file (or hub-id-named folder) in `asset_dir`, then in
                 $RZERO_WEIGHTS_DIR, then the reward's default hub id.
Hub ids are resolved by huggingface_hub, so with HF_HUB_OFFLINE=1 only its local cache is
read; a miss becomes a one-line AssetError naming the file and the ways to supply it.

Encoders: `OpenClipEncoder` (open_clip architecture name + state-dict file, built with
pretrained=None) and `HFClipEncoder` (transformers CLIPModel folder or hub id) expose one
interface: `encode_image(pixels) -> (B, D)`, `encode_text(prompts) -> (B, D)` (unnormalized),
`logit_scale` (already exponentiated), `image_size`, `mean`, `std`.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from ..utils.io import AssetError, load_checked, load_safetensors, torch_load_safe
from .base import Reward

WEIGHTS_ENV = "RZERO_WEIGHTS_DIR"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


RESIZE_MODES = ("crop", "pad")
CROP_OFFSETS = ("round", "floor")


def clip_preprocess(images: torch.Tensor, size: int, mean, std, resize: str = "crop",
                    crop_offset: str = "round") -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, 3, size, size) normalized, differentiable (module docstring).

    resize: "crop" (short side to `size`, center crop) or "pad" (long side to `size`, black
    padding, HPS). crop_offset: "round" (torchvision's CenterCrop: int(round(d / 2))) or
    "floor" (transformers 4.x image processors: d // 2); they differ when d is odd.
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got '{resize}'")
    if crop_offset not in CROP_OFFSETS:
        raise ValueError(f"crop_offset must be one of {CROP_OFFSETS}, got '{crop_offset}'")
    h, w = images.shape[-2:]
    if resize == "crop":
        # torchvision's _compute_resized_output_size: the long side is truncated, not rounded.
        new_h, new_w = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    else:
        scale = size / max(h, w)  # ResizeMaxSize rounds with Python's round (half to even)
        new_h, new_w = round(h * scale), round(w * scale)
    images = pil_bicubic(images, new_h, new_w)
    if resize == "crop":
        offset = (lambda d: int(round(d / 2.0))) if crop_offset == "round" else (lambda d: d // 2)
        top, left = offset(new_h - size), offset(new_w - size)
        images = images[..., top:top + size, left:left + size]
    elif (new_h, new_w) != (size, size):
        # Black (-1 here, 0 in PIL) on both sides; the official transform skips this when the long
        # side is already `size` and then fails on a non-square image: here it is padded too.
        pad_h, pad_w = size - new_h, size - new_w
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-1.0)
    mean = torch.as_tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.as_tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def pil_bicubic(images: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """PIL's bicubic resize of an 8-bit image, differentiably: horizontal pass, then vertical, each
    result clipped to the image range as PIL's uint8 passes clip it (bicubic overshoots at sharp
    edges: unclipped, a 512x768 image with hard edges ends 7/255 away from PIL's pixels)."""
    lo, hi = -1.0, 1.0
    if images.shape[-1] != new_w:
        images = F.interpolate(images, size=(images.shape[-2], new_w), mode="bicubic", align_corners=False,
                               antialias=True).clamp(lo, hi)
    if images.shape[-2] != new_h:
        images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False,
                               antialias=True).clamp(lo, hi)
    return images


def full_precision(device: torch.device | str):
    """Autocast switched off for `device`: the score arithmetic after the encoders (logit scale,
    cosine, heads, normalization) runs in float32 whatever autocast a caller (a bf16 trainer)
    has turned on, as in the official code, which computes it in float32."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda", "xpu", "mps", "hpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, enabled=False)


def default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype must be one of {', '.join(table)}, got '{dtype}'")
    return table[dtype]


_PIP_NAMES = {"open_clip": "open_clip_torch"}


def lazy_import(module: str, what: str):
    """Import a heavy optional dependency, or fail in one line naming what to install.

    Raised as AssetError (a missing piece of the installation), which the CLI prints as one line.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise AssetError(f"{what} needs the package '{module}' ({type(e).__name__}: {e}); "
                         f"install it with `pip install {_PIP_NAMES.get(module, module)}`") from e


def _search_dirs(asset_dir) -> list[Path]:
    dirs = [Path(asset_dir)] if asset_dir else []
    if os.environ.get(WEIGHTS_ENV):
        dirs.append(Path(os.environ[WEIGHTS_ENV]))
    return dirs


def _how(reward: str, option: str) -> str:
    return (f"download it once and pass {option}=PATH to the '{reward}' reward "
            f"(override: reward.options[{reward}].{option}=PATH), or put it in ${WEIGHTS_ENV}")


def resolve_file(reward: str, spec: str | Path | None, filenames: tuple[str, ...], hub_id: str,
                 asset_dir=None, option: str = "path") -> Path:
    """Local path of one weight file (see the module docstring for the lookup order).

    `filenames[0]` is the name on the hub; the others are accepted aliases in local folders.
    """
    if spec is not None:
        p = Path(spec).expanduser()
        if p.is_file():
            return p
        if p.is_dir():
            for name in filenames:
                if (p / name).is_file():
                    return p / name
            raise AssetError(f"{reward}: folder '{p}' holds none of {', '.join(filenames)}; {_how(reward, option)}")
        looks_like_file = p.suffix in (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
        if looks_like_file or str(spec).startswith((".", "/", "~")) or str(spec).count("/") != 1:
            raise AssetError(f"{reward}: weight file '{spec}' not found; {_how(reward, option)}")
        hub_id = str(spec)
    else:
        for d in _search_dirs(asset_dir):
            for name in filenames:
                if (d / name).is_file():
                    return d / name
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(hub_id, filenames[0]))
    except Exception as e:  # offline miss, unknown repo, no network: all end the same way
        raise AssetError(f"{reward}: weight file '{filenames[0]}' of hub id '{hub_id}' is not available "
                         f"({type(e).__name__}); {_how(reward, option)}") from e


def resolve_folder(reward: str, spec: str | Path, asset_dir=None, option: str = "model") -> str:
    """A transformers model folder: `spec` as a local folder, `<search dir>/<hub id>`, or the hub id."""
    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p)
    for d in _search_dirs(asset_dir):
        if (d / str(spec)).is_dir():
            return str(d / str(spec))
    return str(spec)


def from_pretrained(reward: str, cls, spec: str, what: str, option: str, **kwargs):
    """`cls.from_pretrained(spec)` with offline misses turned into a one-line AssetError."""
    try:
        return cls.from_pretrained(spec, **kwargs)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise AssetError(f"{reward}: cannot load the {what} '{spec}' ({first}); {_how(reward, option)}") from e


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors or a weights-only torch pickle; unwraps {'state_dict': ...}."""
    sd = load_safetensors(path) if path.suffix == ".safetensors" else torch_load_safe(path)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise AssetError(f"'{path}' does not hold a state dict of tensors")
    # Checkpoints saved from DistributedDataParallel carry a "module." prefix.
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


# ----------------------------------------------------------------------- encoders


class OpenClipEncoder(torch.nn.Module):
    """open_clip model `arch` (built with pretrained=None) with weights from `weights` (a file)."""

    def __init__(self, arch: str, weights: Path | None):
        super().__init__()
        open_clip = lazy_import("open_clip", "an open_clip reward")
        try:
            self.model = open_clip.create_model(arch, pretrained=None)
        except RuntimeError as e:
            raise ValueError(f"unknown open_clip architecture '{arch}' ({e})") from e
        if weights is not None:
            load_checked(self.model, load_state_dict_file(weights), weights)
        self.logit_scale_fp32 = float(self.model.logit_scale.detach().float().exp())  # before any bf16 cast
        self.tokenizer = open_clip.get_tokenizer(arch)
        cfg = open_clip.get_model_config(arch) or {}
        self.image_size = int(cfg.get("vision_cfg", {}).get("image_size", 224))
        pre = getattr(self.model.visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(pre.get("mean", OPENAI_MEAN))
        self.std = tuple(pre.get("std", OPENAI_STD))

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned scale) in float32, read when the weights were loaded: in bf16 the stored
        scale itself rounds (ln 100 -> 4.59375, exp -> 98.9), 1 % off every PickScore."""
        return torch.tensor(self.logit_scale_fp32, dtype=torch.float32)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        return self.model.encode_text(self.tokenizer(prompts).to(device))


class HFClipEncoder(torch.nn.Module):
    """transformers CLIPModel from a folder or hub id; the tokenizer may come from elsewhere."""

    def __init__(self, reward: str, model: str, tokenizer: str | None = None, asset_dir=None,
                 option: str = "model", tokenizer_option: str = "tokenizer"):
        super().__init__()
        tf = lazy_import("transformers", "a transformers CLIP reward")
        model = resolve_folder(reward, model, asset_dir)
        self.model = from_pretrained(reward, tf.CLIPModel, model, "CLIP model", option)
        self.logit_scale_fp32 = float(self.model.logit_scale.detach().float().exp())  # before any bf16 cast
        tok_src = resolve_folder(reward, tokenizer or model, asset_dir)
        self.tokenizer = from_pretrained(reward, tf.AutoTokenizer, tok_src, "tokenizer", tokenizer_option)
        self.max_length = min(int(getattr(self.tokenizer, "model_max_length", 77) or 77),
                              self.model.config.text_config.max_position_embeddings)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = OPENAI_MEAN, OPENAI_STD
        pre = Path(tok_src) / "preprocessor_config.json"
        if pre.is_file():  # a processor folder may pin other statistics
            cfg = json.loads(pre.read_text())
            self.mean = tuple(cfg.get("image_mean", self.mean))
            self.std = tuple(cfg.get("image_std", self.std))

    @property
    def logit_scale(self) -> torch.Tensor:
        """exp(learned scale) in float32, read when the weights were loaded: in bf16 the stored
        scale itself rounds (ln 100 -> 4.59375, exp -> 98.9), 1 % off every PickScore."""
        return torch.tensor(self.logit_scale_fp32, dtype=torch.float32)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.model.get_image_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        device = self.model.logit_scale.device
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(device)
        out = self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
        return out if isinstance(out, torch.Tensor) else out.pooler_output


def build_clip(reward: str, backend: str, model: str, path: str | None, tokenizer: str | None,
               asset_dir=None) -> torch.nn.Module:
    """A CLIP encoder by backend: "transformers" (model = folder / hub id) or "open_clip"
    (model = architecture name, path = state-dict file, e.g. open_clip_pytorch_model.bin)."""
    if backend == "transformers":
        return HFClipEncoder(reward, model, tokenizer, asset_dir)
    if backend == "open_clip":
        if path is None:
            raise AssetError(f"{reward}: the open_clip backend needs path=FILE (the '{model}' state dict); "
                             f"{_how(reward, 'path')}")
        # path: a file, a folder holding open_clip's usual file names, or a hub id (e.g. laion/CLIP-ViT-L-14-...).
        files = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
        return OpenClipEncoder(model, resolve_file(reward, path, files, str(path), asset_dir))
    raise ValueError(f"{reward}: backend must be 'transformers' or 'open_clip', got '{backend}'")


# ----------------------------------------------------------------------- reward base


class ScaleReward(Reward):
    """A real-scale reward: the official preprocessing, own device and dtype, float32 output.

    Subclasses set `self.resolution`, `self.mean`, `self.std` (and `resize`, `crop_offset`,
    `fp32_modules` as class attributes) and call `self.place(device, dtype)` at the end of their
    constructor. Inputs may live on any device; the score comes back as float32 on the input's
    device, differentiable with respect to the input. Modules named in `fp32_modules` (score
    heads) stay float32 in a bf16 reward, as in the official code.
    """

    mean = OPENAI_MEAN
    std = OPENAI_STD
    resolution = 224
    resize = "crop"  # see clip_preprocess
    crop_offset = "round"
    fp32_modules: tuple[str, ...] = ()

    def place(self, device, dtype) -> None:
        self.device = default_device(device)
        self.dtype = as_dtype(dtype)
        self.to(device=self.device, dtype=self.dtype)
        for name in self.fp32_modules:
            getattr(self, name).float()
        self.freeze()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{self.name}: images must be (B, 3, H, W), got {tuple(images.shape)}")
        # Clamp first (see Reward.prepare); resize in float32, then the reward's own dtype.
        x = images.clamp(*self.input_range).to(device=self.device, dtype=torch.float32)
        with full_precision(self.device):
            x = clip_preprocess(x, self.resolution, self.mean, self.std, self.resize, self.crop_offset)
        return x.to(self.dtype)

    def forward(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        return super().forward(images, prompts).to(device=images.device, dtype=torch.float32)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine of (B, D) and (B, D) -> (B,), in float32."""
    return F.cosine_similarity(a.float(), b.float(), dim=-1)
