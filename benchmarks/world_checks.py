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
- the same on the generator's manifold (`--ascent-space noise`): the ascent moves the initial
  noise of the frozen 4-step web teacher instead of the pixels (kept on the Gaussian's sphere),
  so every image it scores is one the generator can draw. Each prompt reward alone, and R0's
  composite direction (world-clip, world-judge, world-quality, each per-sample normalized).

    python benchmarks/world_checks.py --ascent-only --assets DIR --out runs/bench/ascent.json
    python benchmarks/world_checks.py --ascent-only --ascent-space noise --ascent-steps 10 30 60
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
NOISE_ASCENT_LR = 0.05  # Adam on the unit-variance initial noise
COMPOSITE = ("world-clip", "world-judge", "world-quality")  # R0's preset rewards


def reward_ascent(names: tuple[str, ...], n: int, seed: int, steps: list[int], asset_dir=None,
                  space: str = "pixel") -> dict:
    """Ascent on each reward (and, in noise space, R0's composite) from the 4-step web teacher's
    samples; the inspector's accuracy before and after `steps` (a list of checkpoints)."""
    from rzero.backbones import WorldBackbone
    from rzero.config.schema import EvalConfig
    from rzero.eval.world_eval import per_image_draws, teacher_source
    from rzero.generator.few_step import FewStepGenerator
    from rzero.rewards.composite import CompositeReward
    from rzero.world.evaluators import read_scenes

    inspector = load_world_network("inspector")

    def accuracy(specs, images):
        m = match(specs, read_scenes(inspector, images))
        return {"all_correct": float(m["all_correct"].float().mean()),
                "fraction": float(m["fraction"].mean()),  # share of asked attributes met (L4 asks no slot)
                "slot": float(m["slot_ok"].sum() / m["slot_n"].sum().clamp_min(1))}

    teacher = EvalConfig(teacher="teacher_web", steps=4, cfg=1.0)
    noise_space = space == "noise"
    if noise_space:
        backbone = WorldBackbone(teacher="teacher_web").eval().requires_grad_(False)
        generator = FewStepGenerator(backbone, 4)
    else:
        source = teacher_source(teacher)  # the start images of the committed pixel results
    needed = set(names) | set(COMPOSITE if noise_space else ())
    rewards = {name: make_reward(name, asset_dir=asset_dir) for name in needed}

    def mean_gradient(name):  # one reward: the gradient of its mean, as the pixel check always did
        return lambda x, prompts: torch.autograd.grad(rewards[name](x, prompts).mean(), x)[0]

    # name -> (rewards it reports, direction at detached images x with requires_grad)
    targets = {name: ((name,), mean_gradient(name)) for name in names}
    if noise_space:  # delta 1e-12: the committed numbers were measured with it
        composite = CompositeReward({name: rewards[name] for name in COMPOSITE}, delta=1e-12)
        targets["composite"] = (COMPOSITE, composite.direction)
    g = torch.Generator().manual_seed(seed)
    lr = NOISE_ASCENT_LR if noise_space else ASCENT_LR
    out = {"space": space, "steps": steps, "lr": lr, "images_per_level": n}
    for lv in (3, 4):
        specs = sample_specs(n, lv, g)
        prompts = describe(specs, random_templates(n, g))
        if noise_space:
            cond = backbone.encode_prompts(prompts)
            z0, _ = per_image_draws(backbone.latent_shape, teacher.seed, list(range(n)))  # the source's noise
            radius = z0.flatten(1).norm(dim=1)[:, None, None, None]

            def draw(z):  # deterministic (eta 0): the image is a function of the noise alone
                return backbone.decode(generator(z, cond, 0.0, generator=torch.Generator().manual_seed(0)).x0)

            with torch.no_grad():
                start = draw(z0).clamp(-1, 1)
        else:
            start = source.generate(prompts, specs, list(range(n)))
        out[f"L{lv}_start"] = accuracy(specs, start)
        for target, (parts, direction_at) in targets.items():
            with torch.no_grad():
                before = {f"{name}_before": float(rewards[name](start, prompts).mean()) for name in parts}
            var = (z0 if noise_space else start).clone().requires_grad_(True)
            image = (lambda: draw(var)) if noise_space else (lambda: var)
            opt = torch.optim.Adam([var], lr=lr)
            for step in range(1, max(steps) + 1):
                x = image()
                direction = direction_at(x.detach().requires_grad_(True), prompts)
                opt.zero_grad()
                x.backward(-direction)
                opt.step()
                if noise_space:
                    with torch.no_grad():  # stay on the sphere where Gaussian noise lives
                        var.mul_(radius / var.flatten(1).norm(dim=1)[:, None, None, None])
                if step in steps:
                    with torch.no_grad():
                        end = image().detach().clamp(-1, 1)
                        key = f"L{lv}_{target}" if len(steps) == 1 else f"L{lv}_{target}_{step}"
                        out[key] = {**before,
                                    **{f"{name}_after": float(rewards[name](end, prompts).mean()) for name in parts},
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
    ap.add_argument("--ascent-steps", type=int, nargs="+", default=[100],
                    help="ascent length; several values report each as a checkpoint of one ascent")
    ap.add_argument("--ascent-space", choices=["pixel", "noise"], default="pixel",
                    help="move the pixels, or the initial noise of the frozen 4-step web teacher")
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
                                         sorted(set(args.ascent_steps)), args.assets or None, args.ascent_space)
        result["assets"] = args.assets or "package"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
