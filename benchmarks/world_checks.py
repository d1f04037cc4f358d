"""Validity checks of the built-in world's shipped networks (issue acceptance numbers).

    python benchmarks/world_checks.py --out runs/bench/world_checks.json

- inspector all-correct accuracy on fresh real renders, per level and held out;
- reward informativeness: how often each reward ranks a real matching (image, prompt) pair
  above the same image with a prompt it does not satisfy (world-quality: a clean render
  above a degraded copy);
- the renderer's own determinism (same seed, same images);
- gradient alignment (`--ascent`): pixel-space gradient ascent on each prompt reward, started
  from the web-caption teacher's 4-step samples of L3 and L4 prompts, with the inspector's
  all-correct and slot accuracy before and after. A reward whose ascent raises its own value
  but not the inspector's accuracy is hackable by construction: R0 follows its gradient.

    python benchmarks/world_checks.py --ascent-only --assets DIR --out runs/bench/ascent.json
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


PROMPT_REWARDS = ("world-clip", "world-clip-coarse", "world-judge")


@torch.no_grad()
def reward_ranking(n: int, seed: int) -> dict:
    out = {}
    rewards = {name: make_reward(name) for name in PROMPT_REWARDS}  # built once, not per level
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
        for name, r in rewards.items():
            ok = (r(images, prompts) > r(images, other))[wrong]
            out[f"{name}_L{lv}"] = float(ok.float().mean())
    q = make_reward("world-quality")
    specs = sample_specs(4 * n, 4, g)
    images = render(complete_specs(specs, g), g)
    bad, _ = degrade(images, g, p_clean=0.0)
    out["world-quality_real_over_degraded"] = float((q(images) > q(bad)).float().mean())
    for name in PROMPT_REWARDS:
        out[f"{name}_all_levels"] = sum(out[f"{name}_L{lv}"] for lv in LEVELS) / len(LEVELS)
    return out


ASCENT_LR = 0.02  # Adam on pixels in [-1, 1]


def reward_ascent(names: tuple[str, ...], n: int, seed: int, steps: int, asset_dir=None) -> dict:
    """Pixel ascent on each reward from the 4-step web teacher's samples; inspector before/after."""
    from rzero.config.schema import EvalConfig
    from rzero.eval.world_eval import teacher_source
    from rzero.world.evaluators import read_scenes

    inspector = load_world_network("inspector")

    def accuracy(specs, images):
        m = match(specs, read_scenes(inspector, images))
        return {"all_correct": float(m["all_correct"].float().mean()),
                "fraction": float(m["fraction"].mean()),  # share of asked attributes met (L4 asks no slot)
                "slot": float(m["slot_ok"].sum() / m["slot_n"].sum().clamp_min(1))}

    g = torch.Generator().manual_seed(seed)
    source = teacher_source(EvalConfig(teacher="teacher_web", steps=4, cfg=1.0))
    rewards = {name: make_reward(name, asset_dir=asset_dir) for name in names}
    out = {"steps": steps, "lr": ASCENT_LR, "images_per_level": n}
    for lv in (3, 4):
        specs = sample_specs(n, lv, g)
        prompts = describe(specs, random_templates(n, g))
        start = source.generate(prompts, specs, list(range(n)))
        out[f"L{lv}_start"] = accuracy(specs, start)
        for name, reward in rewards.items():
            x = start.clone().requires_grad_(True)
            opt = torch.optim.Adam([x], lr=ASCENT_LR)
            for _ in range(steps):
                loss = -reward(x, prompts).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                end = x.detach().clamp(-1, 1)
                out[f"L{lv}_{name}"] = {"reward_before": float(reward(start, prompts).mean()),
                                        "reward_after": float(reward(end, prompts).mean()),
                                        **accuracy(specs, end)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="images per level")
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--out", default="runs/bench/world_checks.json")
    ap.add_argument("--ascent", action="store_true", help="also run the gradient-alignment check")
    ap.add_argument("--ascent-only", action="store_true", help="run only the gradient-alignment check")
    ap.add_argument("--ascent-n", type=int, default=64, help="images per level in the ascent check")
    ap.add_argument("--ascent-steps", type=int, default=100)
    ap.add_argument("--assets", default="", help="world asset folder for the rewards (default: the package's)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    result = {}
    if not args.ascent_only:
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        specs = sample_specs(64, 4, torch.Generator().manual_seed(0))
        scenes = complete_specs(specs, torch.Generator().manual_seed(0))
        result = {
            "inspector_on_real_renders": evaluate_inspector_on_renders(load_world_network("inspector"), args.seed,
                                                                       args.n),
            "reward_ranking": reward_ranking(args.n, args.seed + 1),
            "renderer_deterministic": bool(torch.equal(render(scenes, g1), render(scenes, g2))),
        }
    if args.ascent or args.ascent_only:
        result["ascent"] = reward_ascent(PROMPT_REWARDS, args.ascent_n, args.seed + 2,
                                         args.ascent_steps, args.assets or None)
        result["assets"] = args.assets or "package"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
