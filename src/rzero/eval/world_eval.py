"""`rzero eval` on the built-in world: the pinned protocol of the issue tracker and SPEC 6.

Prompt sets are fixed by `seed`: `prompts_per_level` specs per level L1..L4 plus
`heldout_prompts` single-object prompts whose colour/shape pair was never trained on.
Every image has its own noise, derived from (seed, image index), so numbers do not depend
on the batch size.

Metrics: held-out inspector all-correct accuracy per level (`acc_L1`..`acc_L4`,
`acc_heldout`) and per attribute; world-FID of all evaluated images against real renders of
the same prompts; diversity (mean pairwise feature distance across seeds of one prompt);
the mean of every world reward; NFE (network evaluations per image; CFG counts double);
ms per image.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config.schema import EvalConfig
from ..rewards import make_reward
from ..utils.seeding import image_seed, per_image_draws
from ..world.evaluators import read_scenes
from ..world.loaders import load_world_network
from ..world.paraphrase import SPLIT_FILE, specs_of_split
from ..world.prompts import describe
from ..world.render import render
from ..world.scene import LEVELS, Specs, complete_specs, match, sample_specs
from .metrics import frechet_distance, seed_diversity

ATTRIBUTE_NAMES = ("shape", "colour", "size", "slot", "count", "background")
WORLD_REWARDS = ("world-clip", "world-judge", "world-quality")


@dataclass
class PromptSet:
    """The fixed evaluation prompts: specs, texts and the split each belongs to."""

    specs: Specs
    prompts: list[str]
    split: list[str]  # "L1".."L4" or "heldout"


def eval_prompt_set(cfg: EvalConfig) -> PromptSet:
    g = torch.Generator().manual_seed(cfg.seed)
    parts, split = [], []
    for lv in LEVELS:
        parts.append(sample_specs(cfg.prompts_per_level, lv, g))
        split += [f"L{lv}"] * cfg.prompts_per_level
    h = cfg.heldout_prompts
    parts += [sample_specs(h - h // 2, 2, g, heldout=True), sample_specs(h // 2, 3, g, heldout=True)]
    split += ["heldout"] * h
    specs = Specs.cat(parts)
    templates = torch.randint(0, 1 << 16, (len(specs),), generator=g)
    return PromptSet(specs, describe(specs, templates), split)


def paraphrase_split(per_level: int) -> tuple[Specs, list[str]]:
    """The first `per_level` prompts of each level of the frozen `acc_paraphrase` split."""
    import json

    from ..world.assets import default_asset_dir

    data = json.loads((default_asset_dir() / SPLIT_FILE).read_text())
    specs = specs_of_split(data)
    keep = [i for lv in LEVELS for i in (specs.level == lv).nonzero().flatten()[:per_level].tolist()]
    return specs.index(torch.tensor(keep)), [data["prompts"][i] for i in keep]


def render_real(specs: Specs, base_seed: int, indices: list[int]) -> torch.Tensor:
    """Real renders, one generator per image: a scene satisfying the spec, then its picture."""
    out = []
    for k, i in enumerate(indices):
        g = torch.Generator().manual_seed(image_seed(base_seed, i))
        one = specs.index(slice(k, k + 1))
        out.append(render(complete_specs(one, g), g))
    return torch.cat(out)


# A generate function maps (prompts, specs, image indices) -> (N, 3, 32, 32) images in [-1, 1].
GenerateFn = Callable[[list[str], Specs, list[int]], torch.Tensor]


@dataclass
class ImageSource:
    name: str
    nfe: int
    generate: GenerateFn


def real_source(seed: int) -> ImageSource:
    return ImageSource("real renders", 0, lambda prompts, specs, idx: render_real(specs, seed, idx))


def teacher_source(cfg: EvalConfig, asset_dir=None) -> ImageSource:
    from ..backbones import WorldBackbone

    backbone = WorldBackbone(asset_dir=asset_dir, teacher=cfg.teacher).eval()

    def generate(prompts, specs, idx):
        noise, gens = per_image_draws(backbone.latent_shape, cfg.seed, idx)
        return backbone.sample(prompts, noise, steps=cfg.steps, cfg=cfg.cfg, eta=cfg.eta, generator=gens)

    nfe = cfg.steps * (2 if cfg.cfg != 1.0 else 1)
    name = "teacher" if cfg.teacher == "teacher" else f"{cfg.teacher} teacher"
    return ImageSource(f"{name} ({cfg.steps} DDIM steps, CFG {cfg.cfg}, eta {cfg.eta:g})", nfe, generate)


def _generate_all(source: ImageSource, prompts: list[str], specs: Specs, indices: list[int], batch: int,
                  desc: str) -> tuple[torch.Tensor, float]:
    images, seconds = [], 0.0
    bar = tqdm(total=len(prompts), desc=desc, unit="img", dynamic_ncols=True)
    for s in range(0, len(prompts), batch):
        t0 = time.perf_counter()
        images.append(source.generate(prompts[s:s + batch], specs.index(slice(s, s + batch)), indices[s:s + batch]))
        seconds += time.perf_counter() - t0
        bar.update(len(images[-1]))
    bar.close()
    return torch.cat(images).clamp(-1, 1), seconds


def _accuracy_by_split(all_correct: torch.Tensor, split: list[str], names: list[str]) -> dict[str, float]:
    """`acc_<name>`: all-correct rate over the images of each split."""
    out = {}
    for name in names:
        sel = torch.tensor([s == name for s in split])
        out[f"acc_{name}"] = float(all_correct[sel].float().mean())
    return out


def _fid_against_real(featnet, images: torch.Tensor, specs: Specs, seed: int, indices: list[int]) -> float:
    """World-FID of `images` against real renders of the same specs (a different render seed)."""
    reference = render_real(specs, seed + 7919, indices)
    feats = torch.cat([featnet.features(images[i:i + 512]) for i in range(0, len(images), 512)])
    ref_feats = torch.cat([featnet.features(reference[i:i + 512]) for i in range(0, len(reference), 512)])
    return frechet_distance(feats, ref_feats)


@torch.no_grad()
def evaluate_world(source: ImageSource, cfg: EvalConfig, asset_dir=None) -> tuple[dict, dict]:
    """Run the protocol; returns (flat metrics for JSON, extra details for the report)."""
    torch.set_num_threads(cfg.threads)
    # Load every evaluator first: a missing asset must fail before minutes of sampling.
    inspector = load_world_network("inspector", asset_dir)
    featnet = load_world_network("featnet", asset_dir)
    rewards = {name: make_reward(name, asset_dir=asset_dir) for name in WORLD_REWARDS}
    ps = eval_prompt_set(cfg)
    n = len(ps.prompts)
    indices = list(range(n))
    images, seconds = _generate_all(source, ps.prompts, ps.specs, indices, cfg.batch_size, f"eval: {source.name}")

    # Inspector accuracy per split and per attribute.
    m = match(ps.specs, read_scenes(inspector, images))
    split = ps.split
    out = _accuracy_by_split(m["all_correct"], split, [f"L{lv}" for lv in LEVELS] + ["heldout"])
    for a in ATTRIBUTE_NAMES:
        asked = m[f"{a}_n"].sum()
        out[f"attr_acc_{a}"] = float(m[f"{a}_ok"].sum() / asked) if asked > 0 else float("nan")

    # World-FID against real renders of the same prompts (a different render seed).
    out["world_fid"] = _fid_against_real(featnet, images, ps.specs, cfg.seed, indices)

    # Diversity: several seeds of the same prompts, spread over all levels.
    k, s = cfg.diversity_prompts, cfg.diversity_seeds
    pick = torch.linspace(0, n - 1, k).round().long().tolist() if k > 0 else []
    if pick:
        d_prompts = [ps.prompts[i] for i in pick for _ in range(s)]
        d_specs = ps.specs.index(torch.tensor([i for i in pick for _ in range(s)]))
        d_idx = [10 * n + j for j in range(len(d_prompts))]
        d_images, _ = _generate_all(source, d_prompts, d_specs, d_idx, cfg.batch_size, "eval: diversity")
        d_feats = featnet.features(d_images).view(k, s, -1)
        out["diversity"] = seed_diversity(d_feats)
    else:
        out["diversity"] = float("nan")

    # Out-of-template wordings (world/paraphrase.py): the same kind of specs, words no network trains on.
    if cfg.paraphrase_per_level:
        p_specs, p_prompts = paraphrase_split(cfg.paraphrase_per_level)
        p_idx = [20 * n + j for j in range(len(p_prompts))]
        p_images, _ = _generate_all(source, p_prompts, p_specs, p_idx, cfg.batch_size, "eval: paraphrase")
        p_ok = match(p_specs, read_scenes(inspector, p_images))["all_correct"]
        out["acc_paraphrase"] = float(p_ok.float().mean())
        p_split = [f"paraphrase_L{lv}" for lv in p_specs.level.tolist()]
        out.update(_accuracy_by_split(p_ok, p_split, [f"paraphrase_L{lv}" for lv in LEVELS]))

    # Mean of every world reward on the evaluated images.
    for name, r in rewards.items():
        vals = torch.cat([r(images[i:i + 512], ps.prompts[i:i + 512]) for i in range(0, n, 512)])
        out[f"reward_{name.replace('-', '_')}"] = float(vals.mean())

    out["nfe"] = source.nfe
    out["ms_per_image"] = 1000.0 * seconds / n
    out["num_images"] = n
    details = {"source": source.name, "images": images, "prompts": ps.prompts, "split": split}
    return out, details


def generator_source(checkpoint, cfg: EvalConfig, asset_dir=None, eta: float | None = None) -> ImageSource:
    """A trained few-step generator (`rzero train` output) at its inference eta, or at `eta`."""
    from ..generator import load_generator

    gen, meta = load_generator(checkpoint, asset_dir)
    own = float(meta.get("inference_eta", 0.0))
    label = f"{gen.steps} steps" if eta is None or eta == own else f"{gen.steps} steps, eta {eta:g}"
    name = f"{meta.get('method', 'generator').upper()} ({label})"
    eta = own if eta is None else float(eta)

    def generate(prompts, specs, idx):
        noise, gens = per_image_draws(gen.backbone.latent_shape, cfg.seed, idx)
        return gen.sample(prompts, noise, eta, generator=gens)

    return ImageSource(name, gen.steps, generate)


@torch.no_grad()
def quick_world_eval(generate: GenerateFn, per_level: int = 32, seed: int = 4321, asset_dir=None) -> dict[str, float]:
    """A small, fixed version of the protocol for tracking during training.

    Inspector all-correct accuracy per level on `per_level` prompts each, and world-FID of
    those images against real renders (noisy at this size: a trend, not a result).
    """
    cfg = EvalConfig(prompts_per_level=per_level, heldout_prompts=2, seed=seed)
    ps = eval_prompt_set(cfg)
    keep = [i for i, sp in enumerate(ps.split) if sp != "heldout"]
    specs = ps.specs.index(torch.tensor(keep))
    prompts = [ps.prompts[i] for i in keep]
    images = generate(prompts, specs, keep).clamp(-1, 1)
    m = match(specs, read_scenes(load_world_network("inspector", asset_dir), images))
    out = _accuracy_by_split(m["all_correct"], [ps.split[i] for i in keep], [f"L{lv}" for lv in LEVELS])
    out["world_fid"] = _fid_against_real(load_world_network("featnet", asset_dir), images, specs, seed, keep)
    return out
