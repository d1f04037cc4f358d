"""`rzero demo` (`make demo`): the main job on the built-in world.

Trains R0 (configs/world_r0.yaml, or another world R0 preset with `--preset`) from its world
teacher, then evaluates real renders, that teacher (25 DDIM steps, CFG 7.5) and the 4-step R0
generator with the same protocol and writes a Markdown report: image grids at fixed prompts and
seeds, the metrics table and training curves. Training resumes if the run folder already has
checkpoints.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..config import load_config
from ..config.schema import EvalConfig, TrainConfig
from ..eval.plots import plot_curves
from ..eval.report import eval_markdown, save_grid, write_json
from ..eval.world_eval import evaluate_world, generator_source, real_source, render_real, teacher_source
from ..utils.guards import resume_changes
from ..world.prompts import GRID_SEED, fixed_prompts
from ..world.scene import match

PRESET = Path(__file__).resolve().parents[3] / "configs" / "world_r0.yaml"


def _train_config(quick: bool, preset: Path | None) -> TrainConfig:
    overrides = ["iterations=4", "batch_size=4", "track_every=2", "track_prompts=4"] if quick else []
    if preset is not None and preset.is_file():
        cfg = load_config(TrainConfig, preset, overrides)
        if cfg.method != "r0" or cfg.backbone != "world":
            raise ValueError(f"the demo trains R0 on the built-in world; {preset} is method '{cfg.method}' on "
                             f"backbone '{cfg.backbone}' (use configs/world_r0*.yaml, or `rzero train` for it)")
        return cfg
    if preset is not None and preset != PRESET:
        raise FileNotFoundError(f"demo preset {preset} not found (give a world R0 preset, e.g. configs/world_r0_web.yaml)")
    # Installed without the repository's configs/: TrainConfig's defaults mirror world_r0.yaml.
    return load_config(TrainConfig, None, overrides)


def teacher_failures(teacher, r0, out: Path, seeds: int = 4, candidates: int = 12, keep: int = 6) -> list[dict]:
    """Fixed L3/L4 prompts on which the teacher fails at least half of `seeds` draws (inspector);
    writes grid_failures_teacher.png and grid_failures_r0.png (same prompts and seeds, one row
    per prompt) and returns per prompt how many draws each model got right."""
    from ..world.evaluators import read_scenes
    from ..world.loaders import load_world_network

    inspector = load_world_network("inspector")
    prompts, specs = fixed_prompts(per_level=candidates, levels=(3, 4))
    rows = torch.arange(len(prompts)).repeat_interleave(seeds)
    # Image indices past the main grid's, so these draws are not the main grid's.
    idx = list(range(10_000, 10_000 + len(rows)))

    def correct(images, at: torch.Tensor):
        picked = specs.index(rows[at])
        return match(picked, read_scenes(inspector, images))["all_correct"].view(-1, seeds).sum(1)

    everything = torch.arange(len(rows))
    t_images = teacher.generate([prompts[i] for i in rows.tolist()], specs.index(rows), idx)
    t_ok = correct(t_images, everything)
    chosen = [k for k in range(len(prompts)) if int(t_ok[k]) * 2 <= seeds][:keep]
    if not chosen:
        return []
    # R0 only on the chosen prompts, with the same per-image seeds (image index -> noise).
    pick = torch.tensor([k * seeds + s for k in chosen for s in range(seeds)])
    r_images = r0.generate([prompts[i] for i in rows[pick].tolist()], specs.index(rows[pick]),
                           [idx[i] for i in pick.tolist()])
    r_ok = correct(r_images, pick)
    save_grid(t_images[pick], out / "grid_failures_teacher.png", nrow=seeds, upscale=3)
    save_grid(r_images, out / "grid_failures_r0.png", nrow=seeds, upscale=3)
    return [{"prompt": prompts[k], "teacher": int(t_ok[k]), "r0": int(r), "seeds": seeds}
            for k, r in zip(chosen, r_ok.tolist())]


def _failure_section(failures: list[dict]) -> str:
    if not failures:
        return ("\n## Where the teacher fails\n\nThe teacher gets every candidate L3/L4 grid prompt right on at "
                "least half of its draws; nothing to show.\n")
    lines = "\n".join(f"{i + 1}. {f['prompt']} (all correct: teacher {f['teacher']}/{f['seeds']}, "
                       f"R0 {f['r0']}/{f['seeds']})" for i, f in enumerate(failures))
    t = sum(f["teacher"] for f in failures)
    r = sum(f["r0"] for f in failures)
    n = sum(f["seeds"] for f in failures)
    return ("\n## Where the teacher fails (fixed L3/L4 prompts, same seeds; inspector verdicts)\n\n" + lines
            + f"\n\nAll correct on these prompts: teacher {t}/{n}, R0 {r}/{n}.\n\n"
            "| teacher, 25 steps + CFG 7.5 | R0, 4 steps |\n|---|---|\n"
            "| ![teacher](grid_failures_teacher.png) | ![r0](grid_failures_r0.png) |\n")


def run_demo(out: Path, quick: bool = False, preset: Path | None = PRESET) -> Path:
    from ..trainers import R0Trainer

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    # 1) Train R0 (resumes if interrupted).
    train_cfg = _train_config(quick, preset)
    run_dir = out / "r0"
    if (run_dir / "config.yaml").is_file():  # resuming: only the run this preset would train
        changes = resume_changes(load_config(TrainConfig, run_dir / "config.yaml"), train_cfg)
        if changes:
            raise ValueError(f"{run_dir} holds a demo run of another preset ({'; '.join(changes)}); pass another --out")
    R0Trainer(train_cfg, run_dir).fit()
    train_seconds = time.time() - t0

    # 2) Grids at fixed prompts and seeds: real renders, teacher, R0.
    # The teacher R0 started from is the one it is compared with (world v2: teacher_web).
    teacher = train_cfg.backbone_path or "teacher"
    cfg = (EvalConfig(prompts_per_level=8, heldout_prompts=8, diversity_prompts=4, paraphrase_per_level=4, steps=25,
                      teacher=teacher) if quick else EvalConfig(teacher=teacher))
    sources = [real_source(cfg.seed + 1), teacher_source(cfg), generator_source(run_dir, cfg)]
    prompts, specs = fixed_prompts()
    seeds = 4
    grid_prompts = [p for p in prompts for _ in range(seeds)]
    grid_specs = specs.index(torch.arange(len(prompts)).repeat_interleave(seeds))
    idx = list(range(len(grid_prompts)))
    names = {sources[0].name: "real", sources[1].name: "teacher", sources[2].name: "r0"}
    for src in sources:
        images = render_real(grid_specs, GRID_SEED, idx) if src is sources[0] else src.generate(grid_prompts, grid_specs, idx)
        save_grid(images, out / f"grid_{names[src.name]}.png", nrow=seeds, upscale=3)

    # 2b) Where the teacher is wrong: fixed L3/L4 prompts whose teacher images the inspector
    # reads as wrong, teacher and R0 side by side on the same seeds.
    failures = teacher_failures(sources[1], sources[2], out, seeds=seeds)
    (out / "teacher_failures.json").write_text(json.dumps(failures, indent=2) + "\n")

    # 3) The evaluation protocol on each.
    rows = {}
    for src in sources:
        metrics, _ = evaluate_world(src, cfg)
        rows[src.name] = metrics
        write_json(metrics, out / f"eval_{names[src.name]}.json")

    # 4) Training curves.
    plot_curves({"R0": run_dir}, ["reward/world-clip", "reward/world-judge", "reward/world-quality",
                                  "reg/dist", "track/acc_L3", "track/acc_L4", "track/world_fid"],
                out / "curves.png", title="R0 training on the built-in world")

    t, r = rows[sources[1].name], rows[sources[2].name]
    prompt_list = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(prompts))
    preset_name = preset.name if preset is not None and preset.is_file() else "world_r0 defaults"
    report = (
        "# rzero demo: R0 on the built-in world\n\n"
        f"Preset {preset_name}, teacher `{teacher}`. "
        f"Wall-clock {time.time() - t0:.0f} s in all, of which R0 training {train_seconds:.0f} s "
        f"({train_cfg.iterations} iterations of batch {train_cfg.batch_size}). "
        f"{'Quick mode (tiny run and prompt sets). ' if quick else ''}\n\n"
        "## Samples at fixed prompts (one row per prompt, 4 seeds)\n\n" + prompt_list + "\n\n"
        "| real renders | teacher, 25 steps + CFG 7.5 | R0, 4 steps |\n|---|---|---|\n"
        "| ![real](grid_real.png) | ![teacher](grid_teacher.png) | ![r0](grid_r0.png) |\n\n"
        + eval_markdown(rows, title="Metrics").replace("# Metrics", "## Metrics")
        + "\n## R0 vs teacher\n\n"
        + "\n".join(f"- {k}: teacher {t[k]:.3f}, R0 {r[k]:.3f} ({r[k] - t[k]:+.3f})"
                    for k in ("acc_L1", "acc_L2", "acc_L3", "acc_L4", "acc_heldout", "world_fid", "diversity"))
        + f"\n- ms/image: teacher {t['ms_per_image']:.1f} (NFE {t['nfe']}), R0 {r['ms_per_image']:.1f} "
          f"(NFE {r['nfe']})\n" + _failure_section(failures) + "\n## Training curves\n\n![curves](curves.png)\n"
    )
    path = out / "report.md"
    path.write_text(report)
    return path
