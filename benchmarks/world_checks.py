"""Validity checks of the built-in world's shipped networks (issue acceptance numbers).

    python benchmarks/world_checks.py --out runs/bench/world_checks.json

- inspector all-correct accuracy on fresh real renders, per level and held out;
- reward informativeness: how often each reward ranks a real matching (image, prompt) pair
  above the same image with a prompt it does not satisfy (world-quality: a clean render
  above a degraded copy);
- the renderer's own determinism (same seed, same images).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rzero.rewards import make_reward
from rzero.world.build import evaluate_inspector_on_renders
from rzero.world.degrade import degrade
from rzero.world.loaders import load_world_network
from rzero.world.prompts import describe, random_templates
from rzero.world.render import render
from rzero.world.scene import LEVELS, complete_specs, match, sample_specs


@torch.no_grad()
def reward_ranking(n: int, seed: int) -> dict:
    out = {}
    g = torch.Generator().manual_seed(seed)
    for lv in LEVELS:
        specs = sample_specs(n, lv, g)
        scenes = complete_specs(specs, g)
        images = render(scenes, g)
        prompts = describe(specs, random_templates(n, g))
        # Mismatched prompt: another spec of any level that this image does not satisfy.
        other_specs = sample_specs(n, int(torch.randint(1, 5, (1,), generator=g)), g)
        other = describe(other_specs, random_templates(n, g))
        wrong = ~match(other_specs, scenes)["all_correct"]
        for name in ("world-clip", "world-judge"):
            r = make_reward(name)
            ok = (r(images, prompts) > r(images, other))[wrong]
            out[f"{name}_L{lv}"] = float(ok.float().mean())
    q = make_reward("world-quality")
    specs = sample_specs(4 * n, 4, g)
    images = render(complete_specs(specs, g), g)
    bad, _ = degrade(images, g, p_clean=0.0)
    out["world-quality_real_over_degraded"] = float((q(images) > q(bad)).float().mean())
    for name in ("world-clip", "world-judge"):
        out[f"{name}_all_levels"] = sum(out[f"{name}_L{lv}"] for lv in LEVELS) / len(LEVELS)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images per level")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--out", default="runs/bench/world_checks.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    specs = sample_specs(64, 4, torch.Generator().manual_seed(0))
    scenes = complete_specs(specs, torch.Generator().manual_seed(0))
    result = {
        "inspector_on_real_renders": evaluate_inspector_on_renders(load_world_network("inspector"), args.seed, args.n),
        "reward_ranking": reward_ranking(args.n, args.seed + 1),
        "renderer_deterministic": bool(torch.equal(render(scenes, g1), render(scenes, g2))),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
