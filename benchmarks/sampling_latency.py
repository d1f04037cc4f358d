"""Sampling latency: a trained few-step generator vs the teacher (25 DDIM steps + CFG 7.5).

    python benchmarks/sampling_latency.py --checkpoint runs/bench_r0/world_r0 --out runs/bench/latency.json
    python benchmarks/sampling_latency.py --checkpoint RUN --teacher teacher_web --out OUT.json   # world v2

Both run in this one process, one after the other, on the same prompts and batch size, after
a warm-up batch each, so the ratio is not skewed by other load that comes and goes (the
`ms_per_image` of `rzero eval` is measured inside a longer job and is noisier).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rzero.backbones import make_backbone
from rzero.config.schema import EvalConfig
from rzero.generator.load import load_generator
from rzero.utils.seeding import randn_per_image
from rzero.world.assets import WORLD_TEACHERS
from rzero.world.prompts import fixed_prompts


def _ms_per_image(fn, prompts: list[str], noise: torch.Tensor, repeats: int) -> float:
    fn(prompts, noise)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(prompts, noise)
        times.append(time.perf_counter() - t0)
    return 1000 * min(times) / len(prompts)  # best of N: the least disturbed by other load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True, help="run folder of `rzero train` (or its final/)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--teacher", default="teacher", choices=WORLD_TEACHERS,
                    help="the world base model to time (same network class, so the same cost; named for the record)")
    ap.add_argument("--out", default="runs/bench/latency.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    prompts, _ = fixed_prompts()
    prompts = (prompts * args.batch)[: args.batch]
    cfg = EvalConfig()
    teacher = make_backbone("world", teacher=args.teacher).eval()
    gen, meta = load_generator(args.checkpoint)
    noise = randn_per_image(teacher.latent_shape, 0, range(len(prompts)))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        t_ms = _ms_per_image(lambda p, z: teacher.sample(p, z, cfg.steps, cfg.cfg, cfg.eta, generator=g),
                             prompts, noise, args.repeats)
        g_ms = _ms_per_image(lambda p, z: gen.sample(p, z, float(meta.get("inference_eta", 0.0)), generator=g),
                             prompts, noise, args.repeats)
    result = {"teacher": {"asset": args.teacher, "steps": cfg.steps, "cfg": cfg.cfg, "eta": cfg.eta, "nfe": 2 * cfg.steps,
                          "ms_per_image": round(t_ms, 2)},
              "generator": {"checkpoint": str(args.checkpoint), "steps": gen.steps, "nfe": gen.steps,
                            "ms_per_image": round(g_ms, 2)},
              "speedup": round(t_ms / g_ms, 1), "batch": args.batch, "threads": args.threads,
              "repeats": args.repeats}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
