"""R0 training throughput, peak memory and 4-step sampling latency at real SD sizes (random weights).

    python benchmarks/throughput.py                 # GPU: SD1.5 @ 512 px and SD3-Medium @ 1024 px
    python benchmarks/throughput.py --tiny          # CPU smoke run on the tiny test models (< 1 min)
    python benchmarks/throughput.py --models sd15 --batch 4 --json runs/bench/throughput_sd15.json

What one training iteration is here: the R0 step of trainers/r0.py without the reward models,
i.e. encode prompts, draw eta, unroll the 4-step generator with gradients through every
step, VAE-decode, inject a normalized reward direction through the surrogate (a cheap
differentiable image statistic stands in for HPS/ImageReward/...), add the weight (or LoRA
delta) regularizer, backward, clip, AdamW step. Reward-model cost comes on top and depends on
which rewards you use. Each configuration runs with and without gradient checkpointing
(inside the denoiser and VAE decoder, plus per-network-call checkpointing in the generator).

Networks have the real architectures (diffusers/transformers classes with the published
configs) and random weights; no download. SD3 runs without T5 (zeros, as diffusers does
without text_encoder_3). Defaults follow the presets: SD1.5 full fine-tuning, SD3 LoRA rank 64,
networks in bf16 on GPU (trainable weights fp32), fp32 on CPU.
Writes JSON (default runs/bench/throughput.json); numbers go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_sd: the tiny test models and the offline CLIP tokenizer

SIZES = {"sd15": 512, "sd3": 1024}


# ------------------------------------------------------------------ networks at the published sizes


def full_sd15_components(tok_dir: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tiny_sd import VOCAB_SIZE, clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD1.5's UNet
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=4,
                        sample_size=512, scaling_factor=0.18215)
    # CLIP ViT-L/14 text tower; its vocabulary size does not change the cost, the tiny tokenizer's ids fit.
    text = CLIPTextModel(CLIPTextConfig(vocab_size=max(VOCAB_SIZE, 49408), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    sched = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "prediction_type": "epsilon",
             "num_train_timesteps": 1000}
    return {"unet": unet, "vae": vae, "text_encoder": text, "tokenizer": clip_tokenizer(tok_dir),
            "scheduler_config": sched}


def full_sd3_components(tok_dir: str) -> dict:
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from tiny_sd import clip_tokenizer
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    transformer = SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24,
                                        attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                                        caption_projection_dim=1536, pooled_projection_dim=2048, pos_embed_max_size=192)
    vae = AutoencoderKL(block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=2, latent_channels=16,
                        sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
                        use_post_quant_conv=False)
    clip_l = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                        num_hidden_layers=12, num_attention_heads=12,
                                                        max_position_embeddings=77, projection_dim=768))
    clip_g = CLIPTextModelWithProjection(CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                                                        num_hidden_layers=32, num_attention_heads=20,
                                                        max_position_embeddings=77, projection_dim=1280,
                                                        hidden_act="gelu"))
    tok = clip_tokenizer(tok_dir)
    return {"transformer": transformer, "vae": vae, "text_encoder": clip_l, "text_encoder_2": clip_g,
            "tokenizer": tok, "tokenizer_2": tok, "text_encoder_3": None, "tokenizer_3": None,
            "scheduler_config": {"shift": 3.0, "num_train_timesteps": 1000}}


def make_backbone(model: str, tiny: bool, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    from rzero.backbones import SD3Backbone, SD15Backbone
    from tiny_sd import tiny_sd3_components, tiny_sd15_components

    tok = tempfile.mkdtemp()
    with torch.device(device):  # initialize the random weights where they will run (much faster on GPU)
        if model == "sd15":
            comps = tiny_sd15_components(tok) if tiny else full_sd15_components(tok)
        else:
            comps = tiny_sd3_components(tok) if tiny else full_sd3_components(tok)
    cls = SD15Backbone if model == "sd15" else SD3Backbone
    return cls(components=comps, dtype=dtype, device=device, gradient_checkpointing=checkpointing)


# ------------------------------------------------------------------ one R0 iteration


class Brightness(torch.nn.Module):
    """Stand-in reward: a differentiable image statistic (the real rewards' cost is not measured)."""

    def forward(self, images, prompts=None):
        return images.mean((1, 2, 3)) - images.std((1, 2, 3))


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS (Linux: KiB)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_config(model: str, tiny: bool, device: torch.device, dtype: torch.dtype, batch: int, checkpointing: bool,
               lora_rank: int, iters: int) -> dict:
    from rzero.backbones.lora import LoraDeltaRegularizer, trainable_denoiser
    from rzero.generator import FewStepGenerator
    from rzero.losses import WeightRegularizer
    from rzero.rewards.composite import CompositeReward

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    bb = make_backbone(model, tiny, device, dtype, checkpointing)
    net = trainable_denoiser(bb.unet, lora_rank).train()
    gen = FewStepGenerator(bb, 4, gradient_checkpointing=checkpointing)
    params = [p for p in net.parameters() if p.requires_grad]
    reg = LoraDeltaRegularizer(net, 1e-3) if lora_rank else WeightRegularizer(
        [(n, p) for n, p in net.named_parameters() if p.requires_grad], 1e-3)
    opt = torch.optim.AdamW(params, lr=1e-6)
    reward = CompositeReward({"stand-in": Brightness()})
    prompts = ["a photo of a cat on a sofa, warm light"] * batch
    g = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type,
                                                                                                      enabled=False)

    def step():
        with autocast:
            cond = bb.encode_prompts(prompts)
            noise = torch.randn((batch, *bb.latent_shape), generator=g).to(device)
            eta = gen.sample_eta(batch, 0.0, 1.0, False, g)
            images = bb.decode(gen(noise, cond, eta, generator=g).x0)
            loss, _ = reward.loss(images, prompts)
            loss = loss + reg(params)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    result = {"model": model, "resolution": bb.image_size[0], "batch": batch, "gradient_checkpointing": checkpointing,
              "dtype": str(dtype).replace("torch.", ""), "lora_rank": lora_rank,
              "denoiser_params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 2),
              "trainable_params_m": round(sum(p.numel() for p in params) / 1e6, 3)}
    try:
        step()  # warm-up (allocator, kernels)
        times = []
        for _ in range(iters):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        result.update(train_step_s=round(med, 4), train_images_per_s=round(batch / med, 3),
                      peak_memory_mb=round(peak_memory_mb(device), 1))
        net.eval()
        one = torch.randn((1, *bb.latent_shape), generator=g).to(device)
        lat = []
        with torch.no_grad(), autocast:
            for i in range(iters + 1):
                sync(device)
                t0 = time.perf_counter()
                gen.sample(prompts[:1], one, 0.0, generator=g)
                sync(device)
                if i:  # the first call is warm-up
                    lat.append(time.perf_counter() - t0)
        result["sample_4step_latency_ms"] = round(1000 * statistics.median(lat), 1)
    except torch.cuda.OutOfMemoryError:
        result["oom"] = True
    finally:
        del bb, net, gen, opt, params, reg
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny test models on CPU (a smoke run, < 1 min)")
    p.add_argument("--models", nargs="+", default=["sd15", "sd3"], choices=["sd15", "sd3"])
    p.add_argument("--batch", type=int, default=None, help="per-step batch (default: 2 tiny, 4 sd15, 1 sd3)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 3 tiny, 5 full)")
    p.add_argument("--lora-rank", type=int, default=None, help="default: 0 (full) for sd15, 64 for sd3, 4 tiny sd3")
    p.add_argument("--device", default=None, help="default: cuda if available (full sizes need it), else cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "runs" / "bench" / "throughput.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.tiny and device.type != "cuda":
        p.error("full-size runs need a GPU; use --tiny on CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    iters = args.iters or (3 if args.tiny else 5)
    results = []
    for model in args.models:
        batch = args.batch or (2 if args.tiny else {"sd15": 4, "sd3": 1}[model])
        rank = args.lora_rank if args.lora_rank is not None else (0 if model == "sd15" else (4 if args.tiny else 64))
        for checkpointing in (False, True):
            t0 = time.perf_counter()
            r = run_config(model, args.tiny, device, dtype, batch, checkpointing, rank, iters)
            r["wall_s"] = round(time.perf_counter() - t0, 1)
            print(json.dumps(r))
            results.append(r)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    out = {"mode": "tiny" if args.tiny else "full", "device": name, "torch": torch.__version__,
           "what": "R0 iteration without reward models (stand-in image statistic), 4 steps, eta ~ U[0,1]",
           "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"throughput: written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
