"""Renderer throughput of the built-in world (target: >= 2,000 images/s on 2 CPU cores).

    python benchmarks/render_speed.py --out runs/bench/render_speed.json

Times scene sampling + rendering separately over several repeats and writes the median.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rzero.world.render import render
from rzero.world.scene import complete_specs, sample_training_specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/bench/render_speed.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    result = {"batch": args.batch, "repeats": args.repeats, "threads": args.threads,
              "machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__}
    t_sample = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scenes = complete_specs(sample_training_specs(args.batch, g), g)
        t_sample.append(time.perf_counter() - t0)
    result["scene_sampling_per_s"] = args.batch / statistics.median(t_sample)
    for size in args.size:
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            render(scenes, g, size=size)
            times.append(time.perf_counter() - t0)
        result[f"render_{size}px_images_per_s"] = args.batch / statistics.median(times)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
