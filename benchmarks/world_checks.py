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
- reward knowledge without gradients (`--best-of N`): N draws per L3 / L4 prompt from the web
  teacher; each reward picks its highest-scoring draw, and the inspector grades the pick. A
  reward that picks correct draws well above one draw's rate knows what the teacher gets wrong,
  whatever its gradient does; "any" (some draw is all-correct) is the ceiling of the selection.

    python benchmarks/world_checks.py --ascent-only --assets DIR --out runs/bench/ascent.json
    python benchmarks/world_checks.py --ascent-only --ascent-space noise --ascent-steps 10 30 60
    python benchmarks/world_checks.py --best-of 16 --best-of-n 100 --out runs/bench/best_of.json
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


def _standardize(s: torch.Tensor) -> torch.Tensor:
    """z-scores over the draws (dim 0) of each prompt, so that no reward's scale decides the sum."""
    if len(s) == 1:
        return torch.zeros_like(s)
    return (s - s.mean(0)) / s.std(0).clamp_min(1e-6)


def selection_table(correct: torch.Tensor, fraction: torch.Tensor, scores: dict[str, torch.Tensor]) -> dict:
    """Rows of the selection check from (draws, prompts) tensors: the inspector's all-correct
    (0/1) and attribute fraction of every draw, and each reward's score of it.

    For every prefix size k in 1, 2, 4, ... and the full count (the first k draws of each prompt):
    the accuracy of the draw that each prompt reward scores highest, of R0's composite (its
    rewards z-scored over the prompt's k draws, then summed), the mean over single draws
    ("one_draw") and the share of prompts with an all-correct draw ("any", every pick's ceiling).
    """
    draws = len(correct)
    sizes = sorted({1 << i for i in range(draws.bit_length()) if 1 << i <= draws} | {draws})
    rows = {}
    for k in sizes:
        c, f = correct[:k], fraction[:k]
        row = {"one_draw": float(c.mean()), "any": float(c.amax(0).mean()), "one_draw_fraction": float(f.mean())}
        picks = {name: scores[name][:k].argmax(0) for name in PROMPT_REWARDS}
        picks["composite"] = sum(_standardize(scores[name][:k]) for name in COMPOSITE).argmax(0)
        for name, pick in picks.items():
            row[name] = float(c.gather(0, pick[None]).mean())
            row[f"{name}_fraction"] = float(f.gather(0, pick[None]).mean())
        rows[str(k)] = row
    return rows


@torch.no_grad()
def reward_best_of(draws: int, n: int, seed: int, teacher, asset_dir=None) -> dict:
    """Selection by each reward among `draws` teacher samples per L3 / L4 prompt, graded by the
    inspector (rows: `selection_table`)."""
    from rzero.eval.world_eval import teacher_source
    from rzero.world.evaluators import read_scenes

    inspector = load_world_network("inspector")
    source = teacher_source(teacher)
    names = tuple(dict.fromkeys(PROMPT_REWARDS + COMPOSITE))
    rewards = {name: make_reward(name, asset_dir=asset_dir) for name in names}
    g = torch.Generator().manual_seed(seed)
    out = {"teacher": source.name, "draws": draws, "prompts_per_level": n, "selectors": list(PROMPT_REWARDS)}
    for lv in (3, 4):
        specs = sample_specs(n, lv, g)
        prompts = describe(specs, random_templates(n, g))
        correct, fraction, scores = [], [], {name: [] for name in names}
        for k in range(draws):  # draw k of prompt i is image k * n + i of the source's seeded stream
            images = source.generate(prompts, specs, [k * n + i for i in range(n)]).clamp(-1, 1)
            m = match(specs, read_scenes(inspector, images))
            correct.append(m["all_correct"].float())
            fraction.append(m["fraction"].float())
            for name, r in rewards.items():
                scores[name].append(r(images, prompts))
        out[f"L{lv}"] = selection_table(torch.stack(correct), torch.stack(fraction),
                                        {name: torch.stack(v) for name, v in scores.items()})
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
    ap.add_argument("--best-of", type=int, default=0, metavar="N",
                    help="the selection check instead of the validity checks: N web-teacher draws per L3 / L4 "
                         "prompt, picked by each reward")
    ap.add_argument("--best-of-n", type=int, default=100, help="prompts per level in the selection check")
    ap.add_argument("--best-of-steps", type=int, default=25, help="the web teacher's DDIM steps in it")
    ap.add_argument("--best-of-cfg", type=float, default=7.5, help="the web teacher's CFG scale in it")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.best_of < 0 or args.best_of_n < 1 or args.best_of_steps < 1:
        ap.error("--best-of needs N >= 1 draws (0: off), --best-of-n and --best-of-steps >= 1")
    torch.set_num_threads(args.threads)
    result = {}
    if args.best_of:
        from rzero.config.schema import EvalConfig

        teacher = EvalConfig(teacher="teacher_web", steps=args.best_of_steps, cfg=args.best_of_cfg)
        result["best_of"] = reward_best_of(args.best_of, args.best_of_n, args.seed + 3, teacher,
                                           args.assets or None)
        result["assets"] = args.assets or "package"
    elif not args.ascent_only:
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
