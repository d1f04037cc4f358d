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


def _column_name(key: str) -> str:
    """stats.jsonl key -> curve column: 'track/acc_L1' -> 'acc_L1', 'reward/world-clip' -> 'reward_world_clip'."""
    key = key.removeprefix("track/")
    return key.replace("/", "_").replace("-", "_")


def _columns(rows: list[dict], keys: list[str]) -> dict[str, list]:
    table = {"iteration": [r["step"] for r in rows], "train_seconds": [r.get("train_seconds") for r in rows]}
    table.update({_column_name(k): [r.get(k) for r in rows] for k in keys})
    return table


def run_curve(rows: list[dict]) -> dict[str, dict[str, list]]:
    """A run's curves against training wall-clock, as column tables, from its stats.jsonl rows:
    "track": every tracking row (acc_L1..acc_L4, world_fid; acc_mean over L1-L4 and acc_L34 over
    L3/L4 added); "train": every logged row's training rewards (one batch each, so noisy)."""
    track = [r for r in rows if r.get("train_seconds") is not None and r.get("track/acc_L1") is not None]
    table = _columns(track, sorted({k for r in track for k in r if k.startswith("track/")}))
    levels = [table.get(f"acc_L{lv}", [None] * len(track)) for lv in (1, 2, 3, 4)]

    def mean(vals):
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    table["acc_mean"] = [mean(v) for v in zip(*levels)]
    table["acc_L34"] = [mean(v) for v in zip(*levels[2:])]
    train = [r for r in rows if r.get("train_seconds") is not None and any(k.startswith("reward/") for k in r)]
    return {"track": table, "train": _columns(train, sorted({k for r in train for k in r if k.startswith("reward/")}))}


def job_config(j: Job, s: BenchSettings):
    """The TrainConfig a job trains with: its preset, its overrides and the bench's sizes."""
    from ...config import load_config
    from ...config.schema import TrainConfig

    return load_config(TrainConfig, CONFIGS / j.preset, [
        *j.overrides, f"seed={j.seed}", "threads=1", "iterations=1000000", f"device={s.device}",
        f"time_budget_s={s.time_budget_s}", f"track_every={s.track_every}",
        f"track_prompts={s.track_prompts}", f"checkpoint_every={s.checkpoint_every}",
        f"snapshot_at_s=[{', '.join(f'{b:g}' for b in s.budgets()[:-1])}]", "sample_every=1000000", "log_every=5"])


def _evaluate_budgets(run: Path, s: BenchSettings, ecfg) -> list[dict]:
    """The protocol on each budget's snapshot (the last budget's is final/), each result cached in
    eval_at_<s>s.json so that an interrupted job does not evaluate it again."""
    import json

    from ...eval.report import write_json
    from ...eval.world_eval import evaluate_world, generator_source
    from ...generator.load import read_meta
    from ...trainers.engine import snapshot_dir

    out = []
    for b in s.budgets():
        snap = run / "final" if b == s.time_budget_s else snapshot_dir(run, b)
        cached = run / f"eval_at_{b:g}s.json"
        if cached.is_file():
            out.append(json.loads(cached.read_text()))
            continue
        if not (snap / "generator.json").is_file():
            print(f"bench: no snapshot at {b:g} s of training in '{run}'; that budget is left out")
            continue
        meta = read_meta(snap)
        metrics, _ = evaluate_world(generator_source(snap, ecfg), ecfg)
        entry = {"budget_s": b, "train_seconds": meta["train_seconds"], "iteration": meta["iteration"], **metrics}
        write_json(entry, cached)
        out.append(entry)
    return out


def _device_name(device: str) -> str:
    """What trained the run, for the report: "cpu" or the GPU's name."""
    import torch

    return torch.cuda.get_device_name(0) if device == "cuda" else "cpu"


def run_job(job: dict, out: str, settings: dict) -> dict:
    """Train (resumable) and evaluate one job at each budget; writes eval.json last, which marks it
    done. Its top-level metrics are the last budget's; "budgets" lists every budget's."""
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
                  "overrides": j.overrides, "device": _device_name(s.device if j.preset else "cpu")}
        if j.preset is None:
            source = teacher_source(ecfg)
            result.update(train_seconds=0.0, iterations=0)
            result.update(evaluate_world(source, ecfg)[0])
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
                          curve=run_curve(rows), **_final_train_rewards(rows))
            diag = [[r["step"], r["diag/log10_grad_norm_reward"], r["diag/log10_grad_norm_div"],
                     r["diag/cos_reward_div"]] for r in rows if r.get("diag/cos_reward_div") is not None]
            if diag:
                result["diagnostics"] = diag
            result["budgets"] = _evaluate_budgets(run, s, ecfg)
            final = {k: v for k, v in result["budgets"][-1].items() if k not in ("budget_s", "train_seconds",
                                                                                  "iteration")}
            result.update(final)
        prompts, specs = fixed_prompts()
        grid_prompts = [p for p in prompts for _ in range(GRID_SEEDS)]
        grid_specs = specs.index(torch.arange(len(prompts)).repeat_interleave(GRID_SEEDS))
        save_grid(source.generate(grid_prompts, grid_specs, list(range(len(grid_prompts)))), run / "grid.png",
                  nrow=GRID_SEEDS, upscale=3)
        result["job_seconds"] = round(time.time() - started, 1)
        write_json(result, run / "eval.json")
    return result
