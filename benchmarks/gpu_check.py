"""A few iterations of every training preset on one GPU: placement, precision, weights that move.

    python benchmarks/gpu_check.py                        # CUDA, bf16 mixed precision (sized for <= 8 min)
    python benchmarks/gpu_check.py --device cpu --tiny    # the same checks on the CPU (a smoke run of the script)

Every preset in configs/ that trains (world_*, sd15_*, sd3_*; not the world builds) runs with
`device=<--device> mixed_precision=bf16` (`--precision no`: float32 compute, a quicker CPU
run) and its own backbone_dtype (bf16 for the SD presets):
the world presets on the shipped world assets, for real; the sd15/sd3 presets on the tiny
random models of tests/tiny_sd.py (no real weights here) with a stand-in differentiable reward
(tiny_sd.Redness) in place of HPS, ImageReward, ... Each run does a few iterations including
gradient accumulation, one sample grid and, on the world, one held-out tracking evaluation.
Checks, per preset, written to JSON (default runs/bench/gpu_check[_cpu].json):

  * every tensor reachable from the trainer (trainers/placement.reachable_tensors: trained and
    frozen networks, rewards, regularizer, EMA, classifiers, fake score), and the optimizers'
    state, is on the device, before and after training;
  * every trained network (generator, fake score) holds float32 master weights;
  * losses are finite and the weights move: the share of generator (and fake-score) weight
    elements that changed is at least --min-moved.

Exit status 0 when every preset passes. Until it has run on a GPU, README and docs/scale.md
say so.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tiny_sd: the tiny test models and their stand-in reward

PROMPTS = "a cat on a sofa\na red house by the sea\na bowl of fruit\na portrait of an old man\n"


def presets() -> list[Path]:
    return sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.stem.startswith("world_build"))


def settings(preset: Path, device: str, tiny: bool, folders: dict, precision: str = "bf16") -> list[str]:
    """Overrides of one preset: device and precision, a few iterations, one grid, one evaluation."""
    iters = 2 if tiny else 3
    ov = [f"device={device}", f"mixed_precision={precision}", f"iterations={iters}", f"checkpoint_every={iters}",
          f"sample_every={iters}", "log_every=1", "threads=2", "di.diagnostics_every=1", "alarm_patience=0"]
    if preset.stem.startswith("world"):
        ov += ["batch_size=2", "grad_accum=2", f"track_every={iters}", "track_prompts=2"] if tiny else \
              ["grad_accum=2", f"track_every={iters}", "track_prompts=8"]
    else:
        kind = "sd3" if preset.stem.startswith("sd3") else "sd15"
        ov += [f"backbone_path={folders[kind]}", f"prompt_file={folders['prompts']}", "batch_size=2", "grad_accum=2",
               "track_every=0"]
    return ov


def moved(before: dict, now: dict) -> float:
    """Share of weight elements that changed."""
    changed = sum(int((now[n].detach() != v).sum()) for n, v in before.items())
    return changed / max(1, sum(v.numel() for v in before.values()))


def optimizer_tensors(tr) -> list[tuple[str, torch.Tensor]]:
    opts = {"optimizer": tr.optimizer}
    if hasattr(tr, "fake"):
        opts["fake_optimizer"] = tr.fake.optimizer
    return [(f"{name}.state", t) for name, opt in opts.items() for st in opt.state_dict()["state"].values()
            for t in st.values() if torch.is_tensor(t) and t.ndim > 0]


def run_preset(preset: Path, device: str, tiny: bool, folders: dict, work: Path, min_moved: float,
               precision: str = "bf16") -> dict:
    from tiny_sd import Redness

    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.trainers import TRAINERS
    from rzero.trainers.placement import misplaced, not_fp32, reachable_tensors, same_device
    from rzero.utils.stats import read_jsonl

    ov = settings(preset, device, tiny, folders, precision)
    cfg = load_config(TrainConfig, preset, ov)
    out = {"preset": preset.name, "method": cfg.method, "backbone": cfg.backbone, "backbone_dtype": cfg.backbone_dtype,
           "mixed_precision": cfg.mixed_precision, "lora_rank": cfg.lora.rank, "overrides": ov}
    t0 = time.perf_counter()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    rewards = None if cfg.backbone == "world" else {"redness": Redness().freeze()}
    tr = TRAINERS[cfg.method](cfg, work / preset.stem, rewards=rewards)
    dev = tr.device

    def off(pairs):
        return [f"{p} ({t.device})" for p, t in pairs if not same_device(t.device, dev)]

    out["device"] = str(dev)
    problems = off(reachable_tensors(tr)) + misplaced(tr.owned_modules(), dev)
    out["not_fp32"] = not_fp32(tr.trained_modules())
    gen0 = {n: p.detach().clone() for n, p in tr.named_trainable()}
    fake0 = {n: p.detach().clone() for n, p in tr.fake.net.named_parameters()} if hasattr(tr, "fake") else None
    tr.fit()
    problems += off(reachable_tensors(tr)) + off(optimizer_tensors(tr))
    out["misplaced"] = sorted(set(problems))[:20]
    out["moved_generator"] = round(moved(gen0, dict(tr.named_trainable())), 4)
    if fake0 is not None:
        out["moved_fake_score"] = round(moved(fake0, dict(tr.fake.net.named_parameters())), 4)
    rows = read_jsonl(tr.out / "stats.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    out["losses"] = losses
    out["tracked"] = sorted({k for r in rows for k in r if k.startswith("track/")})[:6]
    out["seconds"] = round(time.perf_counter() - t0, 1)
    if device == "cuda":
        out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    failures = []
    if out["misplaced"]:
        failures.append(f"{len(problems)} tensors off {dev}")
    if out["not_fp32"]:
        failures.append("trained weights not float32")
    if len(losses) != cfg.iterations or not all(math.isfinite(v) for v in losses):
        failures.append("missing or non-finite losses")
    if out["moved_generator"] < min_moved or out.get("moved_fake_score", 1.0) < min_moved:
        failures.append(f"weights moved less than {min_moved}")
    if cfg.backbone == "world" and not out["tracked"]:
        failures.append("no tracking row")
    if not (tr.out / "samples" / f"step_{cfg.iterations:06d}.png").is_file():
        failures.append("no sample grid")
    out["failures"] = failures
    out["passed"] = not failures
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--tiny", action="store_true", help="smaller batches and 2 iterations (for a CPU smoke run)")
    ap.add_argument("--only", nargs="+", default=None, metavar="PRESET", help="preset stems, e.g. world_r0 sd15_distar")
    ap.add_argument("--min-moved", type=float, default=0.5, help="least share of weight elements that must change")
    ap.add_argument("--precision", choices=["bf16", "no"], default="bf16",
                    help="mixed_precision of every run (bf16 autocast is slow on most CPUs; 'no' for a quick CPU run)")
    ap.add_argument("--work", default=None, help="run folders (default: a temporary folder, removed)")
    ap.add_argument("--json", default=None, help="default: runs/bench/gpu_check.json (cpu: gpu_check_cpu.json)")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no GPU; run it on a GPU machine, or use --device cpu --tiny")
    from tiny_sd import build_tiny_sd3, build_tiny_sd15

    chosen = [p for p in presets() if args.only is None or p.stem in args.only]
    if not chosen:
        ap.error(f"--only matches no preset; choose from {', '.join(p.stem for p in presets())}")
    json_path = Path(args.json or ROOT / "runs" / "bench" / f"gpu_check{'_cpu' if args.device == 'cpu' else ''}.json")
    results, started = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        work = Path(args.work) if args.work else scratch / "runs"
        (scratch / "prompts.txt").write_text(PROMPTS)
        folders = {"prompts": scratch / "prompts.txt"}
        if any(not p.stem.startswith("world") for p in chosen):
            folders["sd15"] = build_tiny_sd15(scratch / "tiny_sd15")
            folders["sd3"] = build_tiny_sd3(scratch / "tiny_sd3")
        for preset in chosen:
            try:
                r = run_preset(preset, args.device, args.tiny, folders, work, args.min_moved, args.precision)
            except Exception as e:  # record and go on: one broken preset must not hide the others
                r = {"preset": preset.name, "passed": False, "failures": [f"{type(e).__name__}: {e}"[:500]]}
            print(json.dumps({k: r.get(k) for k in ("preset", "passed", "seconds", "moved_generator",
                                                    "moved_fake_score", "failures")}), flush=True)
            results.append(r)
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({platform.machine()})"
    report = {"device": device_name, "torch": torch.__version__, "tiny": args.tiny, "precision": args.precision,
              "min_moved": args.min_moved,
              "seconds": round(time.perf_counter() - started, 1), "passed": all(r["passed"] for r in results),
              "presets": results}
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {sum(r['passed'] for r in results)}/{len(results)} presets passed in {report['seconds']} s; "
          f"{json_path}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
