"""`rzero demo` (`make demo`): the main job on the built-in world.

Until the R0 trainer lands, the demo shows the starting point R0 improves on: the shipped
teacher sampled with 25 DDIM steps and CFG 7.5 at fixed prompts and seeds, next to real
renders, and the world protocol's metrics for both.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .config.schema import EvalConfig
from .eval.report import eval_markdown, save_grid, write_json
from .eval.world_eval import evaluate_world, real_source, render_real, teacher_source
from .world.prompts import describe
from .world.scene import LEVELS, Specs, sample_specs

GRID_SEED = 2024


def fixed_prompts(per_level: int = 2) -> tuple[list[str], Specs]:
    g = torch.Generator().manual_seed(GRID_SEED)
    specs = Specs.cat([sample_specs(per_level, lv, g) for lv in LEVELS])
    return describe(specs, torch.zeros(len(specs), dtype=torch.long)), specs


def run_demo(out: Path, quick: bool = False) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cfg = EvalConfig(prompts_per_level=20, heldout_prompts=20, diversity_prompts=8) if quick else EvalConfig()
    teacher = teacher_source(cfg)
    prompts, specs = fixed_prompts()
    seeds = 4
    grid_prompts = [p for p in prompts for _ in range(seeds)]
    grid_specs = specs.index(torch.arange(len(prompts)).repeat_interleave(seeds))
    idx = list(range(len(grid_prompts)))
    save_grid(teacher.generate(grid_prompts, grid_specs, idx), out / "teacher_grid.png", nrow=seeds, upscale=3)
    save_grid(render_real(grid_specs, GRID_SEED, idx), out / "real_grid.png", nrow=seeds, upscale=3)

    rows = {}
    for source in (real_source(cfg.seed + 1), teacher):
        metrics, _ = evaluate_world(source, cfg)
        rows[source.name] = metrics
        write_json(metrics, out / ("eval_real.json" if source.nfe == 0 else "eval_teacher.json"))

    prompt_list = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(prompts))
    report = (
        "# rzero demo: the built-in world\n\n"
        f"Wall-clock: {time.time() - t0:.0f} s. Teacher: 25 DDIM steps, CFG 7.5. "
        f"{'Quick prompt set. ' if quick else ''}The R0 few-step generator is not built yet; this report "
        "shows the baseline it will be measured against.\n\n"
        "## Samples at fixed prompts (one row per prompt, 4 seeds)\n\n" + prompt_list + "\n\n"
        "| teacher | real renders |\n|---|---|\n| ![teacher](teacher_grid.png) | ![real](real_grid.png) |\n\n"
        + eval_markdown(rows, title="Metrics").replace("# Metrics", "## Metrics")
    )
    path = out / "report.md"
    path.write_text(report)
    return path
