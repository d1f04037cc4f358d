"""Tiny random SD1.5-shaped and SD3-shaped diffusers folders, saved in the original layout.

No weights can be downloaded here, so loading code is tested on models of the real classes
with a few thousand random parameters, written with `save_pretrained` exactly where the
real checkpoints keep them (model_index.json, unet/ or transformer/, vae/, text_encoder*/,
tokenizer*/, scheduler/). Images are 16x16 (latents 4x8x8, VAE factor 2).

The CLIP tokenizer is byte-level BPE over a tiny vocabulary written here: the 256 byte
symbols, each also with the end-of-word mark, a handful of merges and the two special tokens.
(transformers 5 ignores keyword options of `CLIPTokenizer(vocab_file=...)`, so the files are
written and loaded with `from_pretrained(folder)`, which honours model_max_length = 77.)

    build_tiny_sd15(folder, prediction_type="epsilon")
    build_tiny_sd3(folder)
    tiny_sd15_components() / tiny_sd3_components()   # in memory, for benchmarks --tiny
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from rzero.rewards.base import Reward

MERGES = ["r e</w>", "i n", "c i", "t h", "th e</w>"]
SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def _byte_symbols() -> list[str]:
    """The printable stand-in of each byte used by byte-level BPE (printables map to themselves)."""
    printable = set(range(33, 127)) | set(range(161, 173)) | set(range(174, 256))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def write_clip_tokenizer(folder: str | Path) -> Path:
    """vocab.json + merges.txt + configs of a tiny CLIP tokenizer (vocab 263, 77 tokens)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = _byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in MERGES] + SPECIAL
    vocab = {tok: i for i, tok in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    special = {"bos_token": SPECIAL[0], "eos_token": SPECIAL[1], "unk_token": SPECIAL[1], "pad_token": SPECIAL[1]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77, **special}))
    return folder


VOCAB_SIZE = 2 * 256 + len(MERGES) + len(SPECIAL)


def tiny_hf_clip_config(tokenizer, image_size: int, patch_size: int, projection_dim: int):
    """A transformers CLIPConfig of one tiny layer per tower around `tokenizer` (eos doubles as pad)."""
    from transformers import CLIPConfig

    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    return CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=eos, pad_token_id=eos,
                         bos_token_id=eos - 1),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=image_size, patch_size=patch_size),
        projection_dim=projection_dim)


def clip_tokenizer(folder: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(write_clip_tokenizer(folder))


def _clip_config(hidden: int = 32, projection: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=77, projection_dim=projection,
                          bos_token_id=VOCAB_SIZE - 2, eos_token_id=VOCAB_SIZE - 1, pad_token_id=VOCAB_SIZE - 1)


def _vae(latent_channels: int, **kw):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                         up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=8, sample_size=16, **kw)


def tiny_sd15_components(tokenizer_dir: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> dict:
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=2, norm_num_groups=8)
    # SD1.5 ships a PNDM scheduler config; rzero reads only its betas and prediction type.
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type=prediction_type, steps_offset=1, skip_prk_steps=True,
                              set_alpha_to_one=False)
    return {"unet": unet, "vae": _vae(4, scaling_factor=0.18215), "text_encoder": CLIPTextModel(_clip_config()),
            "tokenizer": clip_tokenizer(tokenizer_dir), "scheduler": scheduler,
            "scheduler_config": dict(scheduler.config)}


def build_tiny_sd15(folder: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    from diffusers import StableDiffusionPipeline

    folder = Path(folder)
    c = tiny_sd15_components(tempfile.mkdtemp(), prediction_type, seed)
    pipe = StableDiffusionPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                   unet=c["unet"], scheduler=c["scheduler"], safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    # The original layout keeps the tokenizer as vocab.json + merges.txt: overwrite what was saved.
    write_clip_tokenizer(folder / "tokenizer")
    return folder


def tiny_sd3_components(tokenizer_dir: str | Path, seed: int = 0, shift: float = 3.0) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=2,
                                        attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=8)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    tok = clip_tokenizer(tokenizer_dir)
    return {"transformer": transformer, "vae": _vae(4, scaling_factor=1.5, shift_factor=0.1, use_quant_conv=False,
                                                    use_post_quant_conv=False),
            "text_encoder": CLIPTextModelWithProjection(_clip_config()),
            "text_encoder_2": CLIPTextModelWithProjection(_clip_config()),
            "tokenizer": tok, "tokenizer_2": tok, "text_encoder_3": None, "tokenizer_3": None,
            "scheduler": scheduler, "scheduler_config": dict(scheduler.config)}


def build_tiny_sd3(folder: str | Path, seed: int = 0) -> Path:
    from diffusers import StableDiffusion3Pipeline

    folder = Path(folder)
    c = tiny_sd3_components(tempfile.mkdtemp(), seed)
    pipe = StableDiffusion3Pipeline(transformer=c["transformer"], scheduler=c["scheduler"], vae=c["vae"],
                                    text_encoder=c["text_encoder"], tokenizer=c["tokenizer"],
                                    text_encoder_2=c["text_encoder_2"], tokenizer_2=c["tokenizer_2"],
                                    text_encoder_3=None, tokenizer_3=None)
    pipe.save_pretrained(folder, safe_serialization=True)
    write_clip_tokenizer(folder / "tokenizer")
    write_clip_tokenizer(folder / "tokenizer_2")
    return folder


# ------------------------------------------------------------------ pytest fixtures (session-wide)
# Import the fixtures into a test module (`from tiny_sd import tiny_sd15, ...`); the folders are
# built once per test session, whichever modules use them.

import pytest  # noqa: E402

_BUILT: dict[str, Path] = {}


def _cached(name: str, factory, build) -> Path:
    if name not in _BUILT:
        _BUILT[name] = build(factory.mktemp(name))
    return _BUILT[name]


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory) -> Path:
    """Folder of a tiny eps-prediction SD1.5-shaped model (read-only for tests)."""
    return _cached("sd15_eps", tmp_path_factory, build_tiny_sd15)


@pytest.fixture(scope="session")
def tiny_sd15_v(tmp_path_factory) -> Path:
    """Folder of a tiny v-prediction SD2-shaped model."""
    return _cached("sd15_v", tmp_path_factory, lambda f: build_tiny_sd15(f, prediction_type="v_prediction", seed=1))


@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory) -> Path:
    """Folder of a tiny SD3-shaped model (no T5)."""
    return _cached("sd3", tmp_path_factory, build_tiny_sd3)


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    p.write_text("a cat on a sofa\na red house by the sea\n\na bowl of fruit\na portrait of an old man\n")
    return p


class Redness(Reward):
    """Differentiable test reward that reads the pixels: mean red minus the other channels
    (so a wrong image, or no gradient, changes it)."""

    name = "redness"
    uses_prompt = False
    resolution = 16

    def score(self, images, prompts):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def write_fake_lora_run(run_dir: Path, base: Path) -> Path:
    """An sd15 LoRA run (final/ snapshot, stats) over a base folder holding only a scheduler
    config: complete enough for `rzero export --format lora` to reach its writes."""
    from rzero.utils.io import atomic_save_safetensors

    (base / "scheduler").mkdir(parents=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear"}))
    (run_dir / "final").mkdir(parents=True)
    atomic_save_safetensors({"down.to_q.lora_A.default.weight": torch.zeros(4, 8),
                             "down.to_q.lora_B.default.weight": torch.zeros(8, 4)},
                            run_dir / "final" / "generator.safetensors")
    (run_dir / "final" / "generator.json").write_text(json.dumps({
        "method": "r0", "backbone": "sd15", "steps": 4, "timesteps": [999, 749, 499, 249], "renoise": "mix",
        "inference_eta": 0.0, "backbone_path": str(base), "backbone_dtype": "float32",
        "lora": {"rank": 4, "alpha": 4.0, "target_modules": ["to_q"]}}))
    (run_dir / "stats.jsonl").write_text('{"step": 1, "time": 1.0}\n')
    return run_dir
