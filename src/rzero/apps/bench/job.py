"""One bench job, run in its own worker process: train a preset (resumable), evaluate it on
the world protocol, save its grid and write eval.json last (which marks it done)."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .plan import CONFIGS, GRID_SEEDS, BenchSettings, Job


def _final_train_rewards(rows: list[dict], last: int = 5) -> dict[str, float]:
    """Mean of the last `last` logged values of every training reward (what the optimizer saw)."""
    out = {}
    keys = sorted({k for r in rows for k in r if k.startswith("reward/")})
    for k in keys:
        vals = [r[k] for r in rows if r.get(k) is not None][-last:]
        if vals:
            out[f"train_{k.replace('/', '_').replace('-', '_')}"] = sum(vals) / len(vals)
    return out


def _tracked_curve(rows: list[dict]) -> list[list[float]]:
    """[[iteration, mean all-correct accuracy over L1..L4, world-FID], ...] from `track/` entries."""
    curve = []
    for r in rows:
        accs = [r.get(f"track/acc_L{lv}") for lv in (1, 2, 3, 4)]
        if all(a is not None for a in accs):
            curve.append([r["step"], sum(accs) / 4, r.get("track/world_fid")])
    return curve


def job_config(j: Job, s: BenchSettings):
    """The TrainConfig a job trains with: its preset, its overrides and the bench's sizes."""
    from ...config import load_config
    from ...config.schema import TrainConfig

    return load_config(TrainConfig, CONFIGS / j.preset, [
        *j.overrides, f"seed={j.seed}", "threads=1", "iterations=1000000",
        f"time_budget_s={s.time_budget_s}", f"track_every={s.track_every}",
        f"track_prompts={s.track_prompts}", f"checkpoint_every={s.checkpoint_every}",
        "sample_every=1000000", "log_every=5"])


def run_job(job: dict, out: str, settings: dict) -> dict:
    """Train (resumable) and evaluate one job; writes eval.json last, which marks it done."""
    import torch

    from ...config.schema import EvalConfig
    from ...eval.report import save_grid, write_json
    from ...eval.world_eval import evaluate_world, generator_source, teacher_source
    from ...generator.load import read_meta
    from ...utils.stats import read_jsonl
    from ...world.prompts import fixed_prompts

    j, s = Job(**job), BenchSettings(**settings)
    run = Path(out) / "runs" / j.run_name
    run.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.time()
    with open(run / "bench.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        ecfg = EvalConfig(**s.eval_overrides(j.seed))
        result = {"name": j.name, "label": j.label, "group": j.group, "seed": j.seed, "preset": j.preset,
                  "overrides": j.overrides}
        if j.preset is None:
            source = teacher_source(ecfg)
            result.update(train_seconds=0.0, iterations=0)
        else:
            if not (run / "train_done.json").is_file():
                from ...trainers import TRAINERS

                cfg = job_config(j, s)
                TRAINERS[cfg.method](cfg, run).fit()
                # Marks training as finished: a resumed engine would otherwise run one more iteration.
                write_json({"finished": time.time()}, run / "train_done.json")
            source = generator_source(run, ecfg)
            meta = read_meta(run / "final")  # the snapshot's checked metadata
            rows = read_jsonl(run / "stats.jsonl")
            result.update(train_seconds=meta["train_seconds"], iterations=meta["iteration"],
                          tracked=_tracked_curve(rows), **_final_train_rewards(rows))
            diag = [[r["step"], r["diag/log10_grad_norm_reward"], r["diag/log10_grad_norm_div"],
                     r["diag/cos_reward_div"]] for r in rows if r.get("diag/cos_reward_div") is not None]
            if diag:
                result["diagnostics"] = diag
        metrics, _ = evaluate_world(source, ecfg)
        result.update(metrics)
        prompts, specs = fixed_prompts()
        grid_prompts = [p for p in prompts for _ in range(GRID_SEEDS)]
        grid_specs = specs.index(torch.arange(len(prompts)).repeat_interleave(GRID_SEEDS))
        save_grid(source.generate(grid_prompts, grid_specs, list(range(len(grid_prompts)))), run / "grid.png",
                  nrow=GRID_SEEDS, upscale=3)
        result["job_seconds"] = round(time.time() - started, 1)
        write_json(result, run / "eval.json")
    return result
