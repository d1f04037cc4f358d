"""benchmarks/throughput.py: the FLOP count, the lever plumbing, the budget and the choice of the
combined configuration, on the tiny models (the GPU numbers come from its --gpu-matrix run)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import throughput as tp  # noqa: E402


def test_flop_count_of_a_linear_layer_is_analytic():
    """y = x W^T, x (3, 8), W (4, 8): forward 2*3*8*4; backward the same twice (dx and dW)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8, requires_grad=True)
    with tp.FlopCount() as counter:
        with counter.phase("forward"):
            y = lin(x)
        with counter.phase("backward"):
            y.sum().backward()
    assert counter.by_phase == {"forward": 2 * 3 * 8 * 4, "backward": 2 * (2 * 3 * 8 * 4)}
    assert counter.total == 576


def test_flop_count_sees_the_cpu_attention_kernel_and_autograd_grad():
    """SDPA on the CPU (not in torch's formulas) counts as its two matmuls, 4 b h s^2 d, and the
    count works inside autograd.grad on a leaf (what FlopCounterMode's module hooks refuse)."""
    b, h, s, d = 2, 3, 16, 8
    q = torch.randn(b, h, s, d, requires_grad=True)
    with tp.FlopCount() as counter:
        out = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        forward = counter.total
        torch.autograd.grad(out.sum(), q)
    assert forward == 4 * b * h * s * s * d
    assert counter.total > forward


def test_peak_table_and_unknown_devices():
    assert tp.peak_for_name("NVIDIA H200") == 989.4
    assert tp.peak_for_name("NVIDIA H100 80GB HBM3") == 989.4
    assert tp.peak_for_name("NVIDIA H100 PCIe") == 756.0
    assert tp.peak_for_name("NVIDIA A100-SXM4-80GB") == 312.0
    assert tp.peak_for_name("Some Future GPU") is None
    assert tp.device_peak(torch.device("cpu"), None)[0] is None
    assert tp.device_peak(torch.device("cpu"), 100.0) == (100.0, "--peak-tflops")


def test_levers_toggle_one_at_a_time_and_cpu_limits_are_recorded():
    base = tp.TrainLevers(batch=8)
    variants = tp.toggles(base, ["batch", "checkpointing", "channels_last", "reward_dtype"], [4, 16], rewards=True)
    assert all(len(v.changed(base)) == 1 for v in variants)
    assert {v.batch for v in variants} == {4, 8, 16}
    assert {v.checkpointing for v in variants} == set(tp.CHECKPOINTING)
    assert tp.toggles(base, ["reward_dtype"], [], rewards=False) == []  # no reward models, nothing to cast
    with pytest.raises(ValueError, match="checkpointing"):
        tp.TrainLevers(batch=1, checkpointing="sometimes")
    with pytest.raises(ValueError, match="unknown lever"):
        tp.parse_levers("batch,warp")
    cpu = torch.device("cpu")
    assert tp.unavailable("cudagraph", cpu, cpu_compile=True) == "skipped: needs CUDA (CUDA graphs)"
    assert tp.unavailable(tp.TrainLevers(batch=1, compile=True), cpu, cpu_compile=False).startswith("skipped")
    assert tp.unavailable(tp.TrainLevers(batch=1, compile=True), cpu, cpu_compile=True) is None
    assert tp.unavailable(tp.TrainLevers(batch=1, fused_adamw=True), cpu, cpu_compile=False) is None


def test_preset_baseline_is_the_preset():
    base, rank, rewards = tp.preset_baseline("sd15", None)
    assert base == tp.TrainLevers(batch=8, checkpointing="call+block", reward_dtype="bf16")
    assert rank == 0 and rewards == ["hps-v2.1", "imagereward", "clip-score", "pickscore", "aesthetic"]


def _rec(limit_ok=True, ips=1.0, mem=40.0, **changes):
    lv = tp.TrainLevers(**{"batch": 8, **changes})
    return {"levers": lv.__dict__.copy(), "images_per_s": ips, "peak_reserved_gib": mem if limit_ok else 120.0}


def test_combine_takes_what_helped_and_fits():
    records = [_rec(ips=5.0, mem=48.0),                                   # baseline
               _rec(ips=9.0, limit_ok=False, checkpointing="none"),        # fastest, but does not fit
               _rec(ips=7.0, mem=60.0, checkpointing="block"),
               _rec(ips=6.0, mem=35.0, checkpointing="call"),
               _rec(ips=5.5, mem=70.0, batch=16),                          # faster per image at 16
               _rec(ips=5.6, mem=48.0, channels_last=True),                # +12 %
               _rec(ips=5.05, mem=48.0, fused_adamw=True),                 # +1 %: noise
               _rec(ips=4.0, mem=56.0, reward_dtype="fp32")]
    combo = tp.combine(tp.TrainLevers(batch=8), records, limit_gib=76.0)
    # batch 16 with "block" would need 60 * 16 / 8 = 120 GiB: the batch stays 8.
    assert combo == tp.TrainLevers(batch=8, checkpointing="block", channels_last=True)
    combo = tp.combine(tp.TrainLevers(batch=8), records, limit_gib=200.0)
    assert combo == tp.TrainLevers(batch=8, checkpointing="none", channels_last=True)


def test_budget_stops_starting_configurations():
    budget = tp.Budget(10.0, time.perf_counter() - 8.0, {"train-compiled": 5.0})
    assert budget.allows("train") == (True, "")  # nothing known about it yet: 0 s expected
    ok, why = budget.allows("train-compiled")
    assert not ok and why.startswith("budget: 8 s used of 10 s")
    budget.record("train", 3.0)
    assert not budget.allows("train")[0]
    assert tp.Budget(None, 0.0, {}).allows("train-compiled") == (True, "")


def test_budget_zero_runs_nothing_and_says_so(tmp_path):
    out = tmp_path / "t.json"
    assert tp.main(["--tiny", "--rewards", "none", "--levers", "fused_adamw,sampling", "--sample-models", "sd15",
                    "--budget-s", "0", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["train"] == [] and res["sample"] == []
    assert len(res["not_run"]) == 2 + len(tp.SAMPLING)  # baseline, fused AdamW, every sampling mode
    assert all(r["reason"].startswith("budget") for r in res["not_run"])


def test_tiny_matrix_with_the_preset_rewards(tmp_path):
    """The --tiny path in-process: five random-weight rewards in the step, counted FLOPs, the CPU's limits."""
    out = tmp_path / "t.json"
    assert tp.main(["--tiny", "--levers", "checkpointing,sampling", "--sample-models", "sd15", "--iters", "1",
                    "--sample-iters", "1", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["peak_bf16_tflops"] is None and "utilization not computed" in res["peak_note"]
    assert set(res["rewards"]["names"]) == {"hps-v2.1", "imagereward", "clip-score", "pickscore", "aesthetic"}
    per_image = res["model_flops_per_image"]["sd15"]
    assert per_image["by_phase"]["rewards"] > 0 and sum(per_image["by_phase"].values()) == per_image["total"]
    train = {r["levers"]["checkpointing"]: r for r in res["train"]}
    assert set(train) == set(tp.CHECKPOINTING) and not any("error" in r for r in res["train"])
    for r in train.values():
        assert r["utilization"] is None and r["train_step_s"] > 0 and r["sample_4step_latency_ms"] > 0
        assert r["model_flops_per_step"] == 2 * per_image["total"]  # every counted op is per image
    # Executed FLOPs: no checkpointing = the useful work; recomputation adds to it; the selective
    # policy keeps every counted op's output, so it recomputes none of them.
    assert train["none"]["flops_per_step"] == train["none"]["model_flops_per_step"]
    assert train["call-selective"]["flops_per_step"] == train["none"]["flops_per_step"]
    assert train["call"]["flops_per_step"] > train["none"]["flops_per_step"]
    assert train["call+block"]["flops_per_step"] > train["call"]["flops_per_step"]
    sample = {r["sampling"]: r for r in res["sample"]}
    assert sample["eager"]["sample_4step_latency_ms"] > 0 and sample["eager"]["flops_per_image"] > 0
    assert sample["cudagraph"]["skipped"] == "skipped: needs CUDA (CUDA graphs)"
    assert sample["compile"]["skipped"].startswith("skipped: torch.compile on the CPU")
    table = tp.markdown_tables(res)  # what docs/performance.md shows
    assert table.count("\n| toggle | checkpointing=") == 4 and "skipped: needs CUDA" in table


def test_network_levers_change_the_networks():
    """channels-last, the attention processor, compile (set up, not run: the CPU build takes minutes)
    and the checkpointing of each generator call."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    bb = tp.make_backbone("sd15", True, torch.device("cpu"), torch.float32, checkpointing=False)
    assert all(isinstance(p, AttnProcessor2_0) for p in bb.unet.attn_processors.values())  # diffusers' default
    tp.apply_network_levers(bb, channels_last=True, attention="plain", compile_mode="default")
    conv = bb.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert all(isinstance(p, AttnProcessor) for p in bb.unet.attn_processors.values())
    assert all(isinstance(p, AttnProcessor) for p in bb.vae.attn_processors.values())
    assert bb.unet._compiled_call_impl is not None and bb.vae.decoder._compiled_call_impl is not None
    assert bb.vae.encoder._compiled_call_impl is None  # only the decoder is in the training step
    assert tp.make_generator(bb, "call").gradient_checkpointing
    assert not tp.make_generator(bb, "block").gradient_checkpointing  # block: inside the networks only
    assert type(tp.make_generator(bb, "call-selective")).__name__ == "SelectiveCheckpointGenerator"


def test_an_error_outside_a_configuration_is_recorded(tmp_path, monkeypatch):
    """A failure before a configuration's own handling (here: counting the model FLOPs) is recorded
    for each configuration, and the matrix still writes its JSON and its tables."""
    def broken(*args, **kwargs):
        raise RuntimeError("no FLOPs today")

    monkeypatch.setattr(tp, "model_flops_per_image", broken)
    out = tmp_path / "t.json"
    assert tp.main(["--tiny", "--rewards", "none", "--levers", "fused_adamw", "--sample-models", "--threads", "1",
                    "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [r["error"] for r in res["train"]] == ["RuntimeError: no FLOPs today"] * 2
    assert "| toggle | fused_adamw=True | 2 | RuntimeError: no FLOPs today |" in tp.markdown_tables(res)
