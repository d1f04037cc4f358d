"""R0 training speed, FLOP utilization, peak memory and 4-step sampling latency at real SD sizes
(random weights), with the speed levers each measured on and off.

    python benchmarks/throughput.py --gpu-matrix --json benchmarks/results/throughput_h200_matrix.json
                                                      # the GPU run: the whole matrix in <= 8 min
    python benchmarks/throughput.py --tiny --levers all --threads 1 --json runs/bench/throughput_tiny.json
                                                      # the same matrix on the tiny models, CPU (~2 min)
    python benchmarks/throughput.py --levers none     # GPU: only the preset's own configuration

One training iteration is the R0 step of trainers/r0.py: encode prompts, draw eta ~ U[0, 1],
unroll the 4-step generator with gradients through every step, VAE-decode, run every reward of
the preset (configs/sd15_r0.yaml: HPS v2.1, ImageReward, CLIP score, PickScore, aesthetic) forward
and backward to the images, build the normalized direction and inject it through the surrogate,
add the weight regularizer, backward, clip, AdamW. The rewards are the real reward classes on
random weights at their real sizes (benchmarks/random_rewards.py); `--rewards none` puts a cheap
image statistic in their place (the earlier measurement).

FLOPs: torch.utils.flop_counter's formulas (those of FlopCounterMode) count the matmuls,
convolutions and attention of one eager step, forward and backward (FlopCount below: FlopCounterMode
itself fails inside the rewards' autograd.grad, and misses the CPU's attention kernel).
`model_flops_per_step` is the useful work: counted once at batch 1 without checkpointing and scaled
by the batch (every counted op is per image), so recomputation does not count as work.
`flops_per_step` is what this configuration executes (recomputation included). utilization = model
FLOPs / step time / the device's dense bf16 peak (PEAK_BF16_TFLOPS, or --peak-tflops);
`hardware_utilization` uses the executed FLOPs. On a CPU or an unknown GPU the peak is unknown and
utilization is null.

Levers (`--levers all` or a comma list; each toggled alone against the baseline, the preset's own
settings, then the helpful ones combined; they run in the order of LEVERS):
  batch            the per-GPU batch, halved and doubled
  checkpointing    none | call (each network call of the generator, as `generator.gradient_checkpointing`)
                   | block (inside the denoiser and VAE decoder, `backbone_gradient_checkpointing`)
                   | call+block (both: the presets) | call-selective (per call, matmul / convolution /
                   attention outputs kept, the cheap ops recomputed: torch's selective checkpointing)
  channels_last    denoiser and VAE in channels-last memory format
  compile          torch.compile of the denoiser and of the VAE decoder
  attention        sdpa (diffusers' default, torch picks flash / memory-efficient kernels) | plain (bmm + softmax)
  fused_adamw      torch.optim.AdamW(fused=True) instead of the default (foreach) implementation
  reward_dtype     bf16 (the presets; score heads stay fp32) | fp32
  sampling         4-step sampling at batch 1: eager | cudagraph (torch.compile with CUDA graphs,
                   mode="reduce-overhead") | compile (without graphs). Every eager training configuration
                   also times eager sampling with its own levers (channels-last, attention).
A lever that cannot run on this device is recorded as skipped with the reason, never faked.

Time budget: --budget-s stops starting configurations once the time used plus the expected time of
the next one (the longest of its kind so far, or a default) passes the budget; what did not run is
listed under `not_run`. The JSON is rewritten after every configuration, so a killed run keeps
what it measured. Networks have the real architectures (diffusers / transformers classes with the
published configs) and random weights; no download. SD3 runs without T5 (zeros, as diffusers does
without text_encoder_3). Networks in bf16 under bf16 autocast on a GPU (trained weights fp32), fp32
on a CPU. Results go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_sd: the tiny test models and the offline CLIP tokenizer
sys.path.insert(0, str(ROOT / "benchmarks"))  # random_rewards

PRESETS = {"sd15": ROOT / "configs" / "sd15_r0.yaml", "sd3": ROOT / "configs" / "sd3_r0.yaml"}
# Dense bf16 tensor-core peak (no sparsity), TFLOP/s, from the vendors' data sheets; the first entry
# whose key is in the device name wins (so "H100 PCIe" before "H100").
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.4), ("H100", 989.4),
                    ("A100", 312.0), ("L40S", 362.0))
GIB = 2**30
FIT_80GB_GIB = 76.0  # what an 80 GB card leaves for tensors: 74.5 GiB nominal minus a margin, see --memory-limit-gib

# In the order they run: what likely matters most first, so that a tight budget cuts the least.
LEVERS = ("checkpointing", "batch", "sampling", "compile", "channels_last", "fused_adamw", "attention", "reward_dtype")
CHECKPOINTING = ("none", "call", "block", "call+block", "call-selective")
SAMPLING = ("eager", "cudagraph", "compile")
# Expected wall time when no configuration of a kind has run yet, per trained image (training) or per
# configuration (sampling), in seconds on one H200: guesses from the November 2026 step times, with
# the compile times the least certain. Measured costs replace them as the run goes.
DEFAULT_COST_S = {"train": 2.5, "train-compiled": 20.0, "sample": 10.0, "sample-compiled": 60.0}


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


# ------------------------------------------------------------------ the levers


@dataclass(frozen=True)
class TrainLevers:
    """One training configuration; the defaults are the presets' settings."""

    batch: int
    checkpointing: str = "call+block"
    channels_last: bool = False
    compile: bool = False
    attention: str = "sdpa"
    fused_adamw: bool = False
    reward_dtype: str = "bf16"

    def __post_init__(self):
        if self.checkpointing not in CHECKPOINTING:
            raise ValueError(f"checkpointing must be one of {CHECKPOINTING}, got '{self.checkpointing}'")
        if self.attention not in ("sdpa", "plain"):
            raise ValueError(f"attention must be 'sdpa' or 'plain', got '{self.attention}'")
        if self.reward_dtype not in ("bf16", "fp32"):
            raise ValueError(f"reward_dtype must be 'bf16' or 'fp32', got '{self.reward_dtype}'")

    def changed(self, base: "TrainLevers") -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if getattr(base, k) != v}


def toggles(base: TrainLevers, levers: list[str], batches: list[int], rewards: bool) -> list[TrainLevers]:
    """Each lever moved away from the baseline alone (the sampling lever is not a training one)."""
    out = []
    for lever in levers:
        if lever == "batch":
            out += [replace(base, batch=b) for b in batches if b != base.batch]
        elif lever == "checkpointing":
            out += [replace(base, checkpointing=c) for c in CHECKPOINTING if c != base.checkpointing]
        elif lever == "attention":
            out.append(replace(base, attention="plain" if base.attention == "sdpa" else "sdpa"))
        elif lever == "reward_dtype":
            if rewards:
                out.append(replace(base, reward_dtype="fp32" if base.reward_dtype == "bf16" else "bf16"))
        elif lever in ("channels_last", "compile", "fused_adamw"):
            out.append(replace(base, **{lever: not getattr(base, lever)}))
    return out


def unavailable(lv: TrainLevers | str, device: torch.device, cpu_compile: bool) -> str | None:
    """Why a configuration cannot run here (None: it can)."""
    compiled = lv in ("compile", "cudagraph") if isinstance(lv, str) else lv.compile
    if lv == "cudagraph" and device.type != "cuda":
        return "skipped: needs CUDA (CUDA graphs)"
    if compiled and device.type == "cpu" and not cpu_compile:
        return ("skipped: torch.compile on the CPU builds C++ kernels for minutes even for the tiny models "
                "(5 min for the tiny UNet + decoder on this 2-core machine; --cpu-compile runs it); measured on CUDA")
    return None


def selective_checkpoint_context():
    """torch's selective activation checkpointing: keep the outputs of the expensive ops (matmuls,
    convolutions, attention), recompute the cheap ones (norms, activations, adds) in backward."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    aten = torch.ops.aten
    keep = [aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.convolution.default,
            aten._scaled_dot_product_flash_attention.default, aten._scaled_dot_product_efficient_attention.default,
            aten._scaled_dot_product_cudnn_attention.default,
            aten._scaled_dot_product_flash_attention_for_cpu.default]
    return create_selective_checkpoint_contexts(keep)


def make_generator(bb, checkpointing: str):
    """The 4-step generator with the checkpointing of `checkpointing` around each network call."""
    from torch.utils.checkpoint import checkpoint

    from rzero.generator import FewStepGenerator

    class SelectiveCheckpointGenerator(FewStepGenerator):
        def _x0(self, x, t, cond):
            if torch.is_grad_enabled():
                return checkpoint(self.backbone.predict_x0, x, t, cond, use_reentrant=False,
                                  context_fn=selective_checkpoint_context)
            return self.backbone.predict_x0(x, t, cond)

    if checkpointing == "call-selective":
        return SelectiveCheckpointGenerator(bb, 4)
    return FewStepGenerator(bb, 4, gradient_checkpointing=checkpointing in ("call", "call+block"))


def apply_network_levers(bb, channels_last: bool, attention: str, compile_mode: str | None) -> None:
    """Memory format, attention processor and compilation of the denoiser and the VAE, in place."""
    if channels_last:
        bb.unet.to(memory_format=torch.channels_last)
        bb.vae.to(memory_format=torch.channels_last)
    if attention == "plain":
        from diffusers.models.attention_processor import AttnProcessor

        if type(bb.unet).__name__ != "UNet2DConditionModel":
            raise ValueError("attention=plain: diffusers has no non-SDPA processor for SD3's joint attention")
        bb.unet.set_attn_processor(AttnProcessor())
        bb.vae.set_attn_processor(AttnProcessor())
    if compile_mode is not None:
        # In place (Module.compile): the backbone, LoRA and the optimizer keep the same module objects.
        kw = {} if compile_mode == "default" else {"mode": compile_mode}
        bb.unet.compile(**kw)
        bb.vae.decoder.compile(**kw)


# ------------------------------------------------------------------ measuring


class Brightness(torch.nn.Module):
    """Stand-in reward for `--rewards none`: a differentiable image statistic."""

    def forward(self, images, prompts=None):
        return images.mean((1, 2, 3)) - images.std((1, 2, 3))


class FlopCount(TorchDispatchMode):
    """FLOPs of the matmuls, convolutions and attention dispatched while active, by phase.

    The formulas are torch.utils.flop_counter's (those FlopCounterMode uses), plus the CPU's fused
    attention kernel, which they do not cover. FlopCounterMode itself cannot be used: it tracks
    modules with backward hooks, and those fail inside the rewards' autograd.grad on a leaf.
    """

    def __init__(self):
        super().__init__()
        from torch.utils.flop_counter import flop_registry, sdpa_backward_flop_count, sdpa_flop_count, shape_wrapper

        aten = torch.ops.aten
        self.formulas = {**flop_registry,
                         aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(
                             lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v)),
                         aten._scaled_dot_product_flash_attention_for_cpu_backward: shape_wrapper(
                             lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v))}
        self.by_phase: dict[str, int] = {}
        self.current = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = self.formulas.get(func._overloadpacket)
        if formula is not None:
            self.by_phase[self.current] = self.by_phase.get(self.current, 0) + int(formula(*args, **kwargs,
                                                                                          out_val=out))
        return out

    @contextlib.contextmanager
    def phase(self, name: str):
        previous, self.current = self.current, name
        try:
            yield
        finally:
            self.current = previous

    @property
    def total(self) -> int:
        return sum(self.by_phase.values())


def phase_of(counter: FlopCount | None):
    return counter.phase if counter is not None else (lambda name: contextlib.nullcontext())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def memory_fields(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / GIB, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GIB, 2)}
    # Linux reports KiB; the process's peak so far (libraries included), not this configuration's alone.
    return {"peak_rss_process_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}


def median_time(fn, device: torch.device, iters: int, before=None) -> tuple[float, list[float]]:
    times = []
    for _ in range(iters):
        if before is not None:
            before()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def autocast_for(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@dataclass
class Bench:
    """What every configuration shares: device, sizes, the rewards (built once), the counts so far."""

    tiny: bool
    device: torch.device
    dtype: torch.dtype
    iters: int
    sample_iters: int
    rewards: dict | None  # name -> reward module, or None for the stand-in statistic
    cpu_compile: bool = False
    peak_tflops: float | None = None
    memory_limit_gib: float = FIT_80GB_GIB

    def set_reward_dtype(self, reward_dtype: str) -> None:
        dt = torch.bfloat16 if reward_dtype == "bf16" else torch.float32
        for r in (self.rewards or {}).values():
            if r.dtype != dt:
                r.place(self.device, dt)  # re-casts, keeps the score heads fp32, refreezes

    def composite(self):
        from rzero.rewards.composite import CompositeReward

        return CompositeReward(self.rewards if self.rewards else {"stand-in": Brightness()}, normalize_grads=True)


def build_train(bench: Bench, model: str, lv: TrainLevers, lora_rank: int):
    """(step function, backbone, generator, trained module) for one configuration."""
    from rzero.backbones.lora import LoraDeltaRegularizer, trainable_denoiser
    from rzero.losses import WeightRegularizer

    bench.set_reward_dtype(lv.reward_dtype)
    bb = make_backbone(model, bench.tiny, bench.device, bench.dtype, lv.checkpointing in ("block", "call+block"))
    net = trainable_denoiser(bb.unet, lora_rank).train()
    apply_network_levers(bb, lv.channels_last, lv.attention, None)
    gen = make_generator(bb, lv.checkpointing)
    params = [p for p in net.parameters() if p.requires_grad]
    reg = LoraDeltaRegularizer(net, 1e-3) if lora_rank else WeightRegularizer(
        [(n, p) for n, p in net.named_parameters() if p.requires_grad], 1e-3)
    opt = torch.optim.AdamW(params, lr=1e-6, fused=True) if lv.fused_adamw else torch.optim.AdamW(params, lr=1e-6)
    reward = bench.composite()
    prompts = ["a photo of a cat on a sofa, warm light"] * lv.batch
    g = torch.Generator().manual_seed(0)
    device = bench.device

    def step(counter: FlopCount | None = None):
        phase = phase_of(counter)  # FLOPs by phase when counted
        with autocast_for(device, bench.dtype):
            with phase("text_encoder"):
                cond = bb.encode_prompts(prompts)
            noise = torch.randn((lv.batch, *bb.latent_shape), generator=g).to(device)
            eta = gen.sample_eta(lv.batch, 0.0, 1.0, False, g)
            with phase("generator_forward"):
                x0 = gen(noise, cond, eta, generator=g).x0
            with phase("decoder_forward"):
                images = bb.decode(x0)
            with phase("rewards"):  # each reward's forward and its backward to the images
                loss, _ = reward.loss(images, prompts)
            loss = loss + reg(params)[0]
        with phase("backward"):  # decoder and generator (recomputation included)
            loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, bb, gen, net


def model_flops_per_image(bench: Bench, model: str, base: TrainLevers, lora_rank: int) -> dict:
    """The useful FLOPs of one trained image: one eager step at batch 1 without checkpointing."""
    lv = replace(base, batch=1, checkpointing="none", compile=False)
    step, *_ = build_train(bench, model, lv, lora_rank)
    with FlopCount() as counter:
        step(counter)
    out = {"total": counter.total, "by_phase": counter.by_phase}
    del step, _
    reset_memory(bench.device)
    return out


def sample_latency_ms(gen, device, dtype, iters: int, before=None) -> float:
    prompts = ["a photo of a cat on a sofa, warm light"]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((1, *gen.backbone.latent_shape), generator=g).to(device)

    def once():
        gen.sample(prompts, noise, 0.0, generator=g)

    with torch.no_grad(), autocast_for(device, dtype):
        med, _ = median_time(once, device, iters, before)
    return round(1000 * med, 2)


def run_train(bench: Bench, model: str, lv: TrainLevers, lora_rank: int, per_image: dict) -> dict:
    """One training configuration: executed FLOPs (eager step), median step time, memory, latency."""
    device = bench.device
    rec = {"model": model, "resolution": None, "levers": dataclasses.asdict(lv),
           "lora_rank": lora_rank, "batch": lv.batch}
    reason = unavailable(lv, device, bench.cpu_compile)
    if reason:
        return {**rec, "skipped": reason}
    reset_memory(device)
    step = bb = gen = net = None
    try:
        step, bb, gen, net = build_train(bench, model, lv, lora_rank)
        rec["resolution"] = bb.image_size[0]
        rec["trainable_params_m"] = round(sum(p.numel() for p in net.parameters() if p.requires_grad) / 1e6, 3)
        with FlopCount() as counter:  # also the eager warm-up (allocator, kernels)
            step(counter)
        rec["flops_per_step"] = counter.total
        if lv.compile:  # (the counted eager step is the other configurations' warm-up)
            apply_network_levers(bb, False, "sdpa", "default")
            for _ in range(2):  # compilation, then the first call after it
                step()
        if device.type == "cuda":  # the peak of the timed steps (the weights and optimizer state stay counted)
            torch.cuda.reset_peak_memory_stats(device)
        med, times = median_time(step, device, bench.iters)
        model_flops = per_image["total"] * lv.batch
        rec.update(train_step_s=round(med, 4), train_step_s_all=[round(t, 4) for t in times],
                   images_per_s=round(lv.batch / med, 3), model_flops_per_step=model_flops,
                   model_tflops_per_s=float(f"{model_flops / med / 1e12:.4g}"),
                   **utilization(model_flops, rec, med, bench),
                   **memory_fields(device))
        if "peak_reserved_gib" in rec:
            rec["fits_memory_limit"] = rec["peak_reserved_gib"] <= bench.memory_limit_gib
        if not lv.compile:  # a compiled denoiser would recompile for batch 1: see the sampling section
            net.eval()
            rec["sample_4step_latency_ms"] = sample_latency_ms(gen, device, bench.dtype, 3)
    except torch.cuda.OutOfMemoryError:
        rec["error"] = "out of memory"
    except Exception as e:  # recorded, the matrix goes on
        rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    finally:
        del step, bb, gen, net
        if lv.compile:
            torch._dynamo.reset()
        reset_memory(device)
    return rec


def utilization(model_flops: int, rec: dict, step_s: float, bench: Bench) -> dict:
    if bench.peak_tflops is None:
        return {"utilization": None, "hardware_utilization": None}
    peak = bench.peak_tflops * 1e12
    return {"utilization": round(model_flops / step_s / peak, 4),
            "hardware_utilization": round(rec["flops_per_step"] / step_s / peak, 4)}


def run_sample(bench: Bench, model: str, mode: str) -> dict:
    """4-step sampling latency at batch 1 (prompt encoding and VAE decode included)."""
    device = bench.device
    rec = {"model": model, "resolution": None, "sampling": mode}
    reason = unavailable(mode, device, bench.cpu_compile)
    if reason:
        return {**rec, "skipped": reason}
    from rzero.generator import FewStepGenerator

    reset_memory(device)
    bb = gen = None
    try:
        bb = make_backbone(model, bench.tiny, device, bench.dtype, False)
        rec["resolution"] = bb.image_size[0]
        gen = FewStepGenerator(bb, 4).eval()
        noise = torch.randn((1, *bb.latent_shape), generator=torch.Generator().manual_seed(1)).to(device)
        with torch.no_grad(), autocast_for(device, bench.dtype), FlopCount() as counter:
            gen.sample(["a photo of a cat on a sofa, warm light"], noise, 0.0,
                       generator=torch.Generator().manual_seed(1))
        rec["flops_per_image"] = counter.total
        before = None
        if mode in ("compile", "cudagraph"):
            apply_network_levers(bb, False, "sdpa", "default" if mode == "compile" else "reduce-overhead")
            if mode == "cudagraph":
                before = torch.compiler.cudagraph_mark_step_begin
            sample_latency_ms(gen, device, bench.dtype, 3, before)  # compile, record the graphs
        ms = sample_latency_ms(gen, device, bench.dtype, bench.sample_iters, before)
        rec.update(sample_4step_latency_ms=ms, images_per_s=round(1000 / ms, 2), **memory_fields(device))
        if bench.peak_tflops is not None:
            rec["utilization"] = round(rec["flops_per_image"] / (ms / 1000) / (bench.peak_tflops * 1e12), 4)
    except torch.cuda.OutOfMemoryError:
        rec["error"] = "out of memory"
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"
    finally:
        del bb, gen
        if mode in ("compile", "cudagraph"):
            torch._dynamo.reset()
        reset_memory(device)
    return rec


# ------------------------------------------------------------------ choosing, budget


def eligible(rec: dict, limit_gib: float) -> bool:
    if "images_per_s" not in rec:
        return False
    return rec.get("peak_reserved_gib") is None or rec["peak_reserved_gib"] <= limit_gib


def combine(base: TrainLevers, records: list[dict], limit_gib: float, min_gain: float = 0.02) -> TrainLevers:
    """The helpful levers together: the fastest checkpointing and batch that fit, and every other
    lever whose toggle alone raised images/s by more than `min_gain` (and still fit)."""
    def single(lever):
        return [r for r in records
                if set(TrainLevers(**r["levers"]).changed(base)) == {lever} and eligible(r, limit_gib)]

    base_rec = next((r for r in records if TrainLevers(**r["levers"]) == base), None)
    base_ips = base_rec["images_per_s"] if base_rec and "images_per_s" in base_rec else None
    if base_ips is None:
        return base
    choice = {}
    ckpt = max(single("checkpointing") + [base_rec], key=lambda r: r["images_per_s"])
    choice["checkpointing"] = ckpt["levers"]["checkpointing"]
    batch = max(single("batch") + [base_rec], key=lambda r: r["images_per_s"])
    b = batch["levers"]["batch"]
    mem = ckpt.get("peak_reserved_gib")
    # A larger batch with another checkpointing was not measured: allow it if memory, scaled by the batch, fits.
    if b <= base.batch or mem is None or mem * b / base.batch <= limit_gib:
        choice["batch"] = b
    for lever in ("channels_last", "compile", "attention", "fused_adamw", "reward_dtype"):
        better = [r for r in single(lever) if r["images_per_s"] > base_ips * (1 + min_gain)]
        if better:
            choice[lever] = better[0]["levers"][lever]
    return replace(base, **choice)


class Budget:
    """Stops starting configurations once elapsed + expected cost passes `seconds` (None: no limit)."""

    def __init__(self, seconds: float | None, start: float, defaults: dict[str, float]):
        self.seconds, self.start, self.costs, self.defaults = seconds, start, {}, defaults
        self.simulated: float | None = None  # --plan: a clock that advances by the expected costs

    def elapsed(self) -> float:
        return self.simulated if self.simulated is not None else time.perf_counter() - self.start

    def expected(self, kind: str, images: int = 1) -> float:
        """Seconds: the costliest configuration of this kind so far per image, times `images`."""
        return images * self.costs.get(kind, self.defaults.get(kind, 0.0))

    def allows(self, kind: str, images: int = 1) -> tuple[bool, str]:
        if self.seconds is None:
            return True, ""
        need = self.expected(kind, images)
        used = self.elapsed()
        if used + need > self.seconds:
            return False, f"budget: {used:.0f} s used of {self.seconds:.0f} s, about {need:.0f} s needed"
        return True, ""

    def record(self, kind: str, wall_s: float, images: int = 1) -> None:
        self.costs[kind] = max(self.costs.get(kind, 0.0), wall_s / images)


# ------------------------------------------------------------------ the run


def device_peak(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, f"{device.type}: no bf16 peak known, utilization not computed"
    name = torch.cuda.get_device_name(device)
    tflops = peak_for_name(name)
    if tflops is None:
        return None, f"unknown GPU '{name}': pass --peak-tflops for utilization"
    return tflops, f"dense bf16 peak of '{name}' (PEAK_BF16_TFLOPS)"


def peak_for_name(name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def parse_levers(text: str) -> list[str]:
    if text == "all":
        return list(LEVERS)
    if text == "none":
        return []
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in LEVERS]
    if bad:
        raise ValueError(f"unknown lever(s) {bad}; choose from {', '.join(LEVERS)}, 'all' or 'none'")
    return [n for n in LEVERS if n in names]  # LEVERS order: the order they run in


def preset_baseline(model: str, batch: int | None) -> tuple[TrainLevers, int, list[str]]:
    """(baseline levers, LoRA rank, reward names) of the model's training preset."""
    import yaml

    cfg = yaml.safe_load(PRESETS[model].read_text())
    gen_ckpt = bool(cfg.get("generator", {}).get("gradient_checkpointing", False))
    bb_ckpt = bool(cfg.get("backbone_gradient_checkpointing", False))
    ckpt = {(False, False): "none", (True, False): "call", (False, True): "block", (True, True): "call+block"}
    dtypes = {str(o.get("dtype", "float32")) for o in cfg["reward"].get("options", {}).values()}
    base = TrainLevers(batch=batch or int(cfg["batch_size"]), checkpointing=ckpt[gen_ckpt, bb_ckpt],
                       reward_dtype="bf16" if dtypes == {"bfloat16"} else "fp32")
    return base, int(cfg.get("lora", {}).get("rank", 0)), list(cfg["reward"]["names"])


class Matrix:
    """Runs configurations under the budget and rewrites the JSON after each one."""

    def __init__(self, bench: Bench, budget: Budget, out: dict, path: Path, levers: list[str], start: float):
        self.bench, self.budget, self.out, self.path, self.levers, self.start = bench, budget, out, path, levers, start

    def save(self) -> None:
        if self.budget.simulated is not None:  # --plan writes nothing
            return
        self.out["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.out, indent=2) + "\n")

    def run(self, section: str, kind: str, what: dict, fn) -> dict | None:
        """fn() -> record, unless the budget says no (then `what` goes to not_run); with --plan
        only listed, at the time the expected costs say it would start."""
        images = what.get("levers", {}).get("batch", 1) if isinstance(what.get("levers"), dict) else 1
        ok, why = self.budget.allows(kind, images)
        if not ok:
            self.out["not_run"].append({**what, "reason": why})
            print(json.dumps(self.out["not_run"][-1]), flush=True)
            self.save()
            return None
        if self.budget.simulated is not None:
            self.out.setdefault("plan", []).append({**what, "kind": kind, "starts_at_s": self.budget.simulated})
            print(json.dumps(self.out["plan"][-1]), flush=True)
            self.budget.simulated += self.budget.expected(kind, images)
            return None
        t0 = time.perf_counter()
        try:
            rec = fn()
        except Exception as e:  # outside a configuration's own handling (building the rewards, counting)
            rec = {**what, "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            reset_memory(self.bench.device)
        rec["wall_s"] = round(time.perf_counter() - t0, 1)
        if "skipped" not in rec:
            self.budget.record(kind, rec["wall_s"], images)
        print(json.dumps(rec), flush=True)
        self.out[section].append(rec)
        self.save()
        return rec

    def sampling(self, model: str, modes) -> None:
        for mode in modes:
            kind = "sample-compiled" if mode in ("compile", "cudagraph") else "sample"
            self.run("sample", kind, {"model": model, "sampling": mode}, lambda: run_sample(self.bench, model, mode))

    def training(self, model: str, base: TrainLevers, rank: int, reward_names: list[str] | None,
                 batches: list[int], sample_models: list[str]) -> None:
        """Baseline, then each lever alone in LEVERS order (the sampling modes where the sampling lever
        stands), the combination, and last the sampling mode least likely to win (compile without graphs)."""
        bench, out = self.bench, self.out
        out.setdefault("baseline", {})[model] = dataclasses.asdict(base)
        flops = out.setdefault("model_flops_per_image", {})

        def per_image():  # rewards built and FLOPs counted when the first configuration runs
            if reward_names and bench.rewards is None:
                from random_rewards import preset_rewards

                t0 = time.perf_counter()
                bench.rewards = preset_rewards(reward_names, bench.tiny, bench.device, "bfloat16")
                size = "tiny" if bench.tiny else "real size"
                out["rewards"] = {"names": reward_names, "weights": f"random, {size}",
                                  "params_m": {n: round(sum(p.numel() for p in r.parameters()) / 1e6, 1)
                                               for n, r in bench.rewards.items()},
                                  "build_s": round(time.perf_counter() - t0, 1)}
            if model not in flops:
                flops[model] = model_flops_per_image(bench, model, base, rank)
            return flops[model]

        def train(lv: TrainLevers, role: str) -> None:
            def measure():
                return {**run_train(bench, model, lv, rank, per_image()), "role": role, "changed": lv.changed(base)}

            self.run("train", "train-compiled" if lv.compile else "train",
                     {"model": model, "levers": dataclasses.asdict(lv), "role": role, "changed": lv.changed(base)},
                     measure)

        train(base, "baseline")
        for lever in self.levers:
            if lever == "sampling":
                for m in sample_models:
                    self.sampling(m, [mode for mode in SAMPLING if mode != "compile"])
            else:
                for lv in toggles(base, [lever], batches, bool(reward_names)):
                    train(lv, "toggle")
        measured = [r for r in out["train"] if r["model"] == model]
        combo = combine(base, measured, bench.memory_limit_gib)
        if self.budget.simulated is not None:  # --plan: the combination depends on the measurements
            self.run("train", "train", {"model": model, "role": "combination", "levers": "chosen then"}, None)
        elif combo != base and all(TrainLevers(**r["levers"]) != combo for r in measured):
            train(combo, "combination")
        fits = [r for r in out["train"] if r["model"] == model and eligible(r, bench.memory_limit_gib)]
        if fits:
            best = max(fits, key=lambda r: r["images_per_s"])
            out.setdefault("best", {})[model] = {k: best.get(k) for k in (
                "levers", "images_per_s", "train_step_s", "utilization", "peak_reserved_gib")}
        for m in sample_models:
            self.sampling(m, ["compile"] if "sampling" in self.levers else ["eager"])


def markdown_tables(res: dict) -> str:
    """The training and sampling tables of docs/performance.md from a result JSON."""
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    def memory(r):
        return num(r.get("peak_memory_gib"), ".1f") + " / " + num(r.get("peak_reserved_gib"), ".1f") \
            if "peak_memory_gib" in r else "-"

    lines = ["| role | changed from the baseline | batch | step (s) | images/s | model TFLOP/step | utilization "
             "| executed / model FLOPs | peak memory GiB (alloc / reserved) | 4-step eager sample (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["train"]:
        changed = ", ".join(f"{k}={v}" for k, v in r.get("changed", {}).items()) or "(preset)"
        if "images_per_s" not in r:
            lines.append(f"| {r.get('role', '')} | {changed} | {r['levers']['batch']} "
                         f"| {r.get('error') or r.get('skipped')} | | | | | | |")
            continue
        util = "-" if r["utilization"] is None else f"{100 * r['utilization']:.1f} %"
        lines.append(f"| {r['role']} | {changed} | {r['batch']} | {r['train_step_s']:.3f} | {r['images_per_s']:.2f} "
                     f"| {r['model_flops_per_step'] / 1e12:.3g} | {util} "
                     f"| {r['flops_per_step'] / r['model_flops_per_step']:.2f} | {memory(r)} "
                     f"| {num(r.get('sample_4step_latency_ms'), '.1f')} |")
    lines += ["", "| model | sampling | 4-step latency, batch 1 (ms) | TFLOP/image | peak memory GiB |",
              "|---|---|---|---|---|"]
    for r in res["sample"]:
        if "sample_4step_latency_ms" not in r:
            lines.append(f"| {r['model']} | {r['sampling']} | {r.get('error') or r.get('skipped')} | | |")
            continue
        lines.append(f"| {r['model']} {r['resolution']} px | {r['sampling']} | {r['sample_4step_latency_ms']:.1f} "
                     f"| {r['flops_per_image'] / 1e12:.3g} | {memory(r)} |")
    for r in res.get("not_run", []):
        lines.append(f"\nnot run: {json.dumps({k: v for k, v in r.items() if k != 'reason'})} ({r['reason']})")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gpu-matrix", action="store_true",
                   help="the prepared GPU run: sd15 training levers + sd15/sd3 sampling, --budget-s 440")
    p.add_argument("--tiny", action="store_true", help="tiny test models on the CPU (a smoke run)")
    p.add_argument("--models", nargs="+", default=["sd15"], choices=["sd15", "sd3"], help="trained models")
    p.add_argument("--sample-models", nargs="*", default=None, choices=["sd15", "sd3"],
                   help="models whose 4-step sampling is timed (default: sd15 sd3)")
    p.add_argument("--levers", default="none", help=f"'all', 'none' or a comma list of {', '.join(LEVERS)}")
    p.add_argument("--rewards", default="preset", choices=["preset", "none"],
                   help="the preset's reward models (random weights) inside the step, or a stand-in statistic")
    p.add_argument("--batch", type=int, default=None, help="baseline batch (default: the preset's; 2 with --tiny)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch lever values (default: half, double)")
    p.add_argument("--lora-rank", type=int, default=None, help="default: the preset's (tiny sd3: 4)")
    p.add_argument("--iters", type=int, default=None, help="timed training steps (default 3)")
    p.add_argument("--sample-iters", type=int, default=None, help="timed samples (default 3 tiny, 10 full)")
    p.add_argument("--budget-s", type=float, default=None, help="stop starting configurations after this")
    p.add_argument("--memory-limit-gib", type=float, default=FIT_80GB_GIB,
                   help="peak reserved memory a chosen configuration may use (default: fits an 80 GB card)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device (default: table)")
    p.add_argument("--cpu-compile", action="store_true", help="run the compile lever on the CPU too (slow)")
    p.add_argument("--device", default=None, help="default: cuda if available (full sizes need it), else cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(ROOT / "runs" / "bench" / "throughput.json"))
    p.add_argument("--table", metavar="JSON", help="print the markdown tables of a result file and exit")
    p.add_argument("--plan", action="store_true",
                   help="list the configurations in order with their expected start times (default costs); run none")
    args = p.parse_args(argv)
    if args.table:
        print(markdown_tables(json.loads(Path(args.table).read_text())))
        return 0
    start = time.perf_counter()
    if args.gpu_matrix:
        args.models, args.levers = ["sd15"], "all"
        args.budget_s = 440.0 if args.budget_s is None else args.budget_s
    try:
        levers = parse_levers(args.levers)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not args.tiny and device.type != "cuda" and not args.plan:
        p.error("full-size runs need a GPU; use --tiny on CPU")
    sample_models = ["sd15", "sd3"] if args.sample_models is None else args.sample_models
    peak, peak_note = device_peak(device, args.peak_tflops)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU ({platform.processor() or platform.machine()}, {args.threads} threads)"
    out = {"mode": "tiny" if args.tiny else "full", "device": name, "torch": torch.__version__,
           "peak_bf16_tflops": peak, "peak_note": peak_note, "levers": levers, "budget_s": args.budget_s,
           "memory_limit_gib": args.memory_limit_gib if device.type == "cuda" else None,
           "what": "R0 iteration (4 steps, eta ~ U[0,1], backward through every step) with the preset's rewards "
                   "on random weights" if args.rewards == "preset" else
                   "R0 iteration without reward models (stand-in image statistic)",
           "train": [], "sample": [], "not_run": []}
    bench = Bench(args.tiny, device, torch.bfloat16 if device.type == "cuda" else torch.float32,
                  args.iters or 3, args.sample_iters or (3 if args.tiny else 10), None,
                  args.cpu_compile, peak, args.memory_limit_gib)
    budget = Budget(args.budget_s, start, {} if args.tiny else DEFAULT_COST_S)
    if args.plan:
        budget.simulated = 0.0
    matrix = Matrix(bench, budget, out, Path(args.json), levers, start)
    for model in args.models:
        base, rank, reward_names = preset_baseline(model, args.batch or (2 if args.tiny else None))
        rank = args.lora_rank if args.lora_rank is not None else (4 if args.tiny and rank else rank)
        batches = args.batches or [max(1, base.batch // 2), base.batch * 2]
        matrix.training(model, base, rank, reward_names if args.rewards == "preset" else None, batches, sample_models)
        sample_models = []  # the sampling runs once, inside the first model's matrix
    for m in sample_models:  # no model trained
        matrix.sampling(m, SAMPLING if "sampling" in levers else ["eager"])
    matrix.save()
    if args.plan:
        print(f"throughput: plan of {len(out.get('plan', []))} configurations, expected {budget.simulated:.0f} s "
              f"of the budget ({args.budget_s} s); {len(out['not_run'])} would not start")
    else:
        print(f"throughput: written to {args.json} ({out['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
