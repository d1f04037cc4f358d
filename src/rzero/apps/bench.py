"""`rzero bench`: the world benchmark behind docs/results.md (R0's Table 1 analogue, ablations,
curves, grids, and a verdict on each claim of SPEC 5 computed by explicit rules).

Layout of `--out` (default runs/bench):
    plan.json                   the settings the runs were started with
    runs/<name>_s<seed>/        one `rzero train` run dir per (method, seed) ...
        eval.json               ... and, once finished, every number the report uses
        grid.png                fixed prompts x 4 seeds
Every job is skipped when its eval.json exists and resumed from its checkpoints otherwise, so
an interrupted bench continues where it stopped. `--report` rebuilds the Markdown and plots
from the eval.json files alone.

Fairness: every trained method gets the same training wall-clock (`time_budget_s`, carried
across resumes by the engine), one thread per run, the same rewards and the same evaluation
protocol (eval/world_eval.py) on prompt sets seeded by the run's seed.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[3] / "configs"
EVAL_SEED = 1234
GRID_SEEDS = 4


@dataclass
class Job:
    """One row-seed: train `preset` + `overrides` (or nothing, for the teacher), then evaluate it."""

    name: str  # the method's key, e.g. "r0", "dipp4", "abl_rew1"
    label: str
    group: str  # "table" or an ablation group
    preset: str | None  # None: the pretrained teacher, evaluation only
    overrides: list[str] = field(default_factory=list)
    seed: int = 0

    @property
    def run_name(self) -> str:
        return f"{self.name}_s{self.seed}"


# Table 1 analogue: (name, label, preset). The teacher row has no preset.
TABLE = [
    ("teacher", "Teacher, 25 steps + CFG 7.5", None),
    ("r0", "R0, 4 steps", "world_r0.yaml"),
    ("r0plus", "R0+, 4 steps", "world_r0plus.yaml"),
    ("distar", "DI*, 1 step", "world_distar.yaml"),
    ("dipp1", "DI++, 1 step", "world_dipp.yaml"),
    ("dipp4", "DI++, 4 steps", "world_dipp4.yaml"),
    ("r0_noreg", "R0 without regularization", "world_r0_noreg.yaml"),
]

# Ablations on R0 (world_r0.yaml): (group, name, label, preset, overrides). Each group's
# reference row is the table's R0 run (3 rewards, normalized, random eta, the preset's lambda_w 0.15, no R0+ parts).
ABLATIONS = [
    ("rewards", "abl_rew1", "1 reward (judge)", "world_r0.yaml", ["reward.names=[world-judge]"]),
    ("rewards", "abl_rew2", "2 rewards (clip, judge)", "world_r0.yaml", ["reward.names=[world-clip, world-judge]"]),
    ("normalization", "abl_nonorm", "plain sum of rewards", "world_r0.yaml", ["reward.normalize_grads=false"]),
    ("eta", "abl_fixeta", "fixed eta = 0", "world_r0.yaml", ["generator.eta_max=0.0"]),
    ("regularization", "abl_reg0", "lambda_w = 0", "world_r0.yaml", ["regularization.weight=0.0"]),
    ("regularization", "abl_reg001", "lambda_w = 0.01", "world_r0.yaml", ["regularization.weight=0.01"]),
    ("regularization", "abl_reg05", "lambda_w = 0.5", "world_r0.yaml", ["regularization.weight=0.5"]),
    ("r0plus", "abl_is", "intermediate supervision only", "world_r0.yaml",
     ["r0plus.intermediate_supervision=true"]),
    ("r0plus", "abl_hg", "high-resolution guidance only", "world_r0.yaml",
     ["r0plus.hires_guidance=true", "r0plus.hires_weight=0.5"]),
]
ABLATION_REFERENCE = {"rewards": ("r0", "3 rewards"), "normalization": ("r0", "normalized gradients"),
                      "eta": ("r0", "random eta in [0, 1]"), "regularization": ("r0", "lambda_w = 0.15 (preset)"),
                      "r0plus": ("r0", "neither (R0)")}
ABLATION_EXTRA = {"r0plus": ("r0plus", "both (R0+)"), "regularization": ("r0_noreg", "lambda_w = 0, fixed eta")}


@dataclass
class BenchSettings:
    """Sizes of one bench; `full()` and `quick()` are the two presets (see docs/bench.md)."""

    seeds: int = 3
    ablation_seeds: int = 1
    time_budget_s: float = 200.0  # training wall-clock per run
    jobs: int = 2
    track_every: int = 20
    track_prompts: int = 12
    checkpoint_every: int = 50
    prompts_per_level: int = 100
    heldout_prompts: int = 100
    diversity_prompts: int = 24
    diversity_seeds: int = 4
    # Measured costs on the reference 2-core machine, one thread per job (for the plan only).
    startup_s: float = 25.0
    eval_s: float = 40.0
    teacher_eval_s: float = 150.0

    @classmethod
    def full(cls) -> "BenchSettings":
        return cls()

    @classmethod
    def quick(cls) -> "BenchSettings":
        return cls(seeds=1, ablation_seeds=1, time_budget_s=30.0, track_every=5, track_prompts=4,
                   checkpoint_every=20, prompts_per_level=12, heldout_prompts=12, diversity_prompts=6,
                   diversity_seeds=2, eval_s=8.0, teacher_eval_s=35.0)

    def eval_overrides(self, seed: int) -> dict:
        return dict(seed=EVAL_SEED + seed, threads=1, prompts_per_level=self.prompts_per_level,
                    heldout_prompts=self.heldout_prompts, diversity_prompts=self.diversity_prompts,
                    diversity_seeds=self.diversity_seeds, batch_size=100,
                    paraphrase_per_level=0)  # not in the bench's tables (yet); keeps its measured eval costs


def make_jobs(s: BenchSettings, only: list[str] | None = None) -> list[Job]:
    """Seed-major order, so that an interrupted bench already has whole seeds of the table."""
    jobs = []
    for seed in range(s.seeds):
        jobs += [Job(name, label, "table", preset, [], seed) for name, label, preset in TABLE]
    for seed in range(s.ablation_seeds):
        jobs += [Job(name, label, group, preset, list(ov), seed) for group, name, label, preset, ov in ABLATIONS]
    if only:
        unknown = sorted(set(only) - {j.name for j in jobs})
        if unknown:
            raise ValueError(f"--only: unknown method(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(dict.fromkeys(j.name for j in jobs))}")
        jobs = [j for j in jobs if j.name in only]
    return jobs


def plan_text(jobs: list[Job], s: BenchSettings) -> tuple[str, float]:
    """The time budget, counted explicitly: (text, estimated wall-clock seconds)."""
    trained = [j for j in jobs if j.preset]
    teacher = [j for j in jobs if not j.preset]
    per_run = s.startup_s + s.time_budget_s + s.eval_s
    total_job_s = len(trained) * per_run + len(teacher) * (s.startup_s + s.teacher_eval_s)
    wall = total_job_s / s.jobs
    lines = [
        f"bench plan: {len(trained)} training runs x ({s.time_budget_s:g} s training + ~{s.startup_s:g} s start-up "
        f"+ ~{s.eval_s:g} s evaluation) + {len(teacher)} teacher evaluations x ~{s.teacher_eval_s + s.startup_s:g} s",
        f"            = {total_job_s / 60:.1f} job-minutes over {s.jobs} parallel job(s), one thread each: "
        f"about {wall / 60:.1f} minutes wall-clock (tracking and checkpoints add a little)",
        f"            table: {s.seeds} seed(s) x {len(TABLE)} rows; ablations: {s.ablation_seeds} seed(s) x "
        f"{len(ABLATIONS)} runs; eval: {4 * s.prompts_per_level + s.heldout_prompts} prompts + "
        f"{s.diversity_prompts}x{s.diversity_seeds} for diversity",
    ]
    return "\n".join(lines), wall


# ---------------------------------------------------------------- one job (runs in a worker process)


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
    from ..config import load_config
    from ..config.schema import TrainConfig

    return load_config(TrainConfig, CONFIGS / j.preset, [
        *j.overrides, f"seed={j.seed}", "threads=1", "iterations=1000000",
        f"time_budget_s={s.time_budget_s}", f"track_every={s.track_every}",
        f"track_prompts={s.track_prompts}", f"checkpoint_every={s.checkpoint_every}",
        "sample_every=1000000", "log_every=5"])


def run_job(job: dict, out: str, settings: dict) -> dict:
    """Train (resumable) and evaluate one job; writes eval.json last, which marks it done."""
    import torch

    from ..config.schema import EvalConfig
    from ..eval.report import save_grid, write_json
    from ..eval.world_eval import evaluate_world, generator_source, teacher_source
    from ..generator.load import read_meta
    from ..utils.stats import read_jsonl
    from ..world.prompts import fixed_prompts

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
                from ..trainers import TRAINERS

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


# ---------------------------------------------------------------- the driver


# Settings that only size the plan or the parallelism: a bench may resume with other values.
_PLAN_ONLY = ("jobs", "startup_s", "eval_s", "teacher_eval_s")


def _check_same_settings(out: Path, s: BenchSettings) -> None:
    """Finished runs are reused by name, so a folder must hold one bench's settings only."""
    path = out / "plan.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    differ = sorted(k for k, v in asdict(s).items() if k not in _PLAN_ONLY and k in before and before[k] != v)
    if differ:
        raise ValueError(f"'{out}' holds a bench run with other settings ({', '.join(differ)} differ, e.g. a "
                         f"--quick bench next to a full one); pass another --out or delete '{out}'")


def _check_runs_match_presets(out: Path, jobs: list[Job], s: BenchSettings) -> None:
    """A run started before its preset changed would be reused (or resumed) under the new name."""
    from ..config import load_config
    from ..config.io import to_dict
    from ..config.schema import TrainConfig

    for j in jobs:
        saved = out / "runs" / j.run_name / "config.yaml"
        if j.preset is None or not saved.is_file():
            continue
        now, then = job_config(j, s), load_config(TrainConfig, saved)
        differ = _differing_keys(to_dict(now), to_dict(then))
        if differ:
            raise ValueError(f"'{saved.parent}' was trained with another config than configs/{j.preset} gives now "
                             f"({', '.join(differ[:4])} differ); delete that run folder to re-run it, or pass "
                             "another --out")


def _differing_keys(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b))
                for k in _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def run_bench(out: Path, s: BenchSettings, only: list[str] | None = None, docs: Path | None = None,
              log=print) -> Path:
    """Run every unfinished job (in `s.jobs` worker processes), then write the report."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    out.mkdir(parents=True, exist_ok=True)
    jobs = make_jobs(s, only)
    text, _ = plan_text(jobs, s)
    log(text)
    from ..utils.io import atomic_write_bytes

    _check_same_settings(out, s)
    _check_runs_match_presets(out, jobs, s)
    atomic_write_bytes(out / "plan.json", (json.dumps(asdict(s), indent=2) + "\n").encode())
    todo = [j for j in jobs if not (out / "runs" / j.run_name / "eval.json").is_file()]
    log(f"bench: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished; running {len(todo)}")
    started = time.time()
    if todo:
        # spawn: fresh interpreters, one per job (max_tasks_per_child), so no torch state is shared.
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=s.jobs, mp_context=ctx, max_tasks_per_child=1) as pool:
            futures = {pool.submit(run_job, asdict(j), str(out), asdict(s)): j for j in todo}
            try:
                from tqdm.auto import tqdm

                # Job-level bar with ETA; each finished job also gets its own log line.
                done = _completed(futures, as_completed, log, out, started, len(todo))
                for _ in tqdm(done, total=len(todo), desc="bench", unit="job", dynamic_ncols=True):
                    pass
            except KeyboardInterrupt:
                # Ctrl-C reaches the workers too (same process group); drop the queued jobs. A rerun resumes.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    log(f"bench: jobs took {time.time() - started:.0f} s wall-clock")
    return write_report(out, docs if docs is not None else Path("docs"))


def _completed(futures, as_completed, log, out, started, total):
    """Report each finished job as it completes; a failed job is logged, not raised."""
    for k, fut in enumerate(as_completed(futures), 1):
        j = futures[fut]
        try:
            r = fut.result()
        except Exception as e:  # one failed job must not lose the others' results
            log(f"[{k}/{total}] {j.run_name}: FAILED ({type(e).__name__}: {e}); "
                f"see {out / 'runs' / j.run_name / 'bench.log'}")
            continue
        log(f"[{k}/{total}] {j.run_name}: {r['iterations']} iterations, job {r['job_seconds']:.0f} s, "
            f"acc_L4 {r['acc_L4']:.3f}, world-FID {r['world_fid']:.2f} (elapsed {time.time() - started:.0f} s)")
        yield r


# ---------------------------------------------------------------- the report (from eval.json files only)

TABLE_COLS = [("reward_world_clip", "clip", "{:.3f}"), ("reward_world_judge", "judge", "{:.3f}"),
              ("reward_world_quality", "quality", "{:.2f}"), ("acc_L1", "acc L1", "{:.3f}"),
              ("acc_L2", "acc L2", "{:.3f}"), ("acc_L3", "acc L3", "{:.3f}"), ("acc_L4", "acc L4", "{:.3f}"),
              ("acc_heldout", "acc held-out", "{:.3f}"), ("world_fid", "world-FID", "{:.2f}"),
              ("diversity", "diversity", "{:.3f}"), ("nfe", "NFE", "{:.0f}"), ("ms_per_image", "ms/image", "{:.2f}"),
              ("train_seconds", "train s", "{:.0f}"), ("iterations", "iterations", "{:.0f}")]
ABL_COLS = [("reward_world_clip", "clip", "{:.3f}"), ("reward_world_judge", "judge", "{:.3f}"),
            ("reward_world_quality", "quality", "{:.2f}"), ("acc_mean", "acc L1-L4", "{:.3f}"),
            ("acc_heldout", "acc held-out", "{:.3f}"), ("world_fid", "world-FID", "{:.2f}"),
            ("diversity", "diversity", "{:.3f}"), ("iterations", "iterations", "{:.0f}")]


def load_results(out: Path) -> dict[str, list[dict]]:
    """name -> the eval.json of each finished seed (sorted by seed)."""
    by_name: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*/eval.json")):
        r = json.loads(path.read_text())
        r["acc_mean"] = sum(r[f"acc_L{lv}"] for lv in (1, 2, 3, 4)) / 4
        r["run_dir"] = str(path.parent)
        by_name.setdefault(r["name"], []).append(r)
    for rows in by_name.values():
        rows.sort(key=lambda r: r["seed"])
    return by_name


def _values(rows: list[dict], key: str) -> list[float]:
    return [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]


def _mean_std(vals: list[float]) -> tuple[float, float]:
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def _cell(rows: list[dict], key: str, fmt: str) -> str:
    m, s = _mean_std(_values(rows, key))
    if math.isnan(m):
        return "n/a"
    return fmt.format(m) + ("" if math.isnan(s) else " ± " + fmt.format(s))


def _table(rows_by_label: list[tuple[str, list[dict]]], cols) -> str:
    head = "| method | n | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for label, rows in rows_by_label:
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(_cell(rows, k, f) for k, _, f in cols) + " |")
    return "\n".join(lines)


# ---- claim rules (explicit, so that a verdict can be traced to the numbers)

# Smallest difference that counts, per metric, on top of two standard errors.
ABS_TOL = {"acc": 0.02, "reward": 0.01, "world_fid": 0.05, "diversity": 0.05, "auc": 0.02}


def _tolerance(key: str, ref: float) -> float:
    if key in ("world_fid", "diversity"):
        return ABS_TOL[key] * abs(ref)  # relative: 5 %
    if key.startswith("reward") or key.startswith("train_reward"):
        return ABS_TOL["reward"] * max(abs(ref), 1.0)
    return ABS_TOL["auc"] if key.startswith("auc") else ABS_TOL["acc"]


LOWER_IS_BETTER = {"world_fid"}


def compare(a: list[float], b: list[float], key: str) -> int:
    """+1 if a is better than b on `key`, -1 if worse, 0 if the gap is within max(2 SE, tolerance)."""
    if not a or not b:
        return 0
    ma, sa = _mean_std(a)
    mb, sb = _mean_std(b)
    se = math.sqrt((0 if math.isnan(sa) else sa * sa / len(a)) + (0 if math.isnan(sb) else sb * sb / len(b)))
    diff = (ma - mb) * (-1 if key in LOWER_IS_BETTER else 1)
    margin = max(2 * se, _tolerance(key, mb))
    return 1 if diff > margin else -1 if diff < -margin else 0


def majority_verdict(signs: list[int]) -> str:
    """confirmed: no metric worse and at least half better; refuted: none better, at least half worse."""
    wins, losses, n = signs.count(1), signs.count(-1), len(signs)
    if n and losses == 0 and wins >= n / 2:
        return "confirmed"
    if n and wins == 0 and losses >= n / 2:
        return "refuted"
    return "mixed"


def _fmt_cmp(name_a, a_rows, name_b, b_rows, key) -> tuple[int, str]:
    a, b = _values(a_rows, key), _values(b_rows, key)
    sign = compare(a, b, key)
    ma, mb = _mean_std(a)[0], _mean_std(b)[0]
    mark = {1: ">", -1: "<", 0: "~"}[sign] if key not in LOWER_IS_BETTER else {1: "<", -1: ">", 0: "~"}[sign]
    return sign, f"{key} {name_a} {ma:.3f} {mark} {name_b} {mb:.3f}"


def _auc(rows: list[dict]) -> list[float]:
    """Per seed: mean tracked accuracy over the tracked points (area under the curve / length)."""
    out = []
    for r in rows:
        pts = [p[1] for p in r.get("tracked", [])]
        if pts:
            out.append(sum(pts) / len(pts))
    return out


def claims(res: dict[str, list[dict]]) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the six claims of SPEC 5, by the rules above."""
    out = []

    def cmp_set(a, b, keys):
        parts = [_fmt_cmp(a, res.get(a, []), b, res.get(b, []), k) for k in keys]
        return [p[0] for p in parts], "; ".join(p[1] for p in parts)

    def have(*names):
        return all(res.get(n) for n in names)

    missing = "not run (missing: {})"
    # (1) R0 4 steps beats the 25-step base on preference (judge) and alignment (clip) rewards.
    c = "(1) a 4-step R0 beats the 25-step base on preference and alignment rewards"
    if have("r0", "teacher"):
        signs, ev = cmp_set("r0", "teacher", ["reward_world_judge", "reward_world_clip"])
        out.append((c, majority_verdict(signs), ev))
    else:
        out.append((c, "mixed", missing.format("r0/teacher")))
    # (2) R0 beats DI++ at equal steps (4).
    c = "(2) R0 beats distillation-plus-reward (DI++) at equal steps"
    if have("r0", "dipp4"):
        signs, ev = cmp_set("r0", "dipp4", ["reward_world_judge", "reward_world_clip", "acc_mean", "acc_heldout",
                                            "world_fid"])
        out.append((c, majority_verdict(signs), ev))
    else:
        out.append((c, "mixed", missing.format("r0/dipp4")))
    # (3) Without regularization the training rewards hold or rise while held-out metrics fall.
    c = "(3) without regularization, rewards get hacked while held-out metrics fall"
    if have("r0", "r0_noreg"):
        rkeys = sorted(k for k in res["r0"][0] if k.startswith("train_reward_"))
        tr_signs, tr_ev = cmp_set("r0_noreg", "r0", rkeys)
        ho_signs, ho_ev = cmp_set("r0_noreg", "r0", ["acc_mean", "acc_heldout", "world_fid", "diversity"])
        hacked = tr_signs.count(-1) == 0  # training rewards not lower than with regularization
        worse = ho_signs.count(-1) >= 1 and ho_signs.count(1) == 0
        verdict = "confirmed" if hacked and worse else "refuted" if ho_signs.count(-1) == 0 else "mixed"
        out.append((c, verdict, f"training: {tr_ev}; held-out: {ho_ev}"))
    else:
        out.append((c, "mixed", missing.format("r0/r0_noreg")))
    # (4) Normalized gradients train faster: area under the tracked accuracy curve, final metrics.
    c = "(4) normalized gradients train faster"
    if have("r0", "abl_nonorm"):
        a, b = _auc(res["r0"]), _auc(res["abl_nonorm"])
        s_auc = compare(a, b, "auc")
        signs, ev = cmp_set("r0", "abl_nonorm", ["acc_mean", "reward_world_judge"])
        ev = f"auc(tracked acc) r0 {_mean_std(a)[0]:.3f} vs abl_nonorm {_mean_std(b)[0]:.3f} ({s_auc:+d}); {ev}"
        out.append((c, majority_verdict([s_auc, *signs]), ev))
    else:
        out.append((c, "mixed", missing.format("r0/abl_nonorm")))
    # (5) More rewards give better images: 3 vs 1 reward on held-out metrics.
    c = "(5) more rewards give better images"
    if have("r0", "abl_rew1"):
        signs, ev = cmp_set("r0", "abl_rew1", ["acc_mean", "acc_heldout", "world_fid", "reward_world_quality"])
        if have("abl_rew2"):
            ev += "; 2 rewards: " + cmp_set("abl_rew2", "abl_rew1", ["acc_mean", "world_fid"])[1]
        out.append((c, majority_verdict(signs), ev))
    else:
        out.append((c, "mixed", missing.format("r0/abl_rew1")))
    # (6) R0+ converges faster: iterations to reach R0's final tracked accuracy.
    c = "(6) R0+ converges faster"
    if have("r0", "r0plus"):
        out.append((c, *_convergence_verdict(res["r0"], res["r0plus"])))
    else:
        out.append((c, "mixed", missing.format("r0/r0plus")))
    return out


def _convergence_verdict(r0_rows: list[dict], plus_rows: list[dict]) -> tuple[str, str]:
    """R0+'s first iteration reaching R0's final tracked accuracy, over R0's last iteration:
    <= 0.7 confirmed, never reached or >= 1 refuted, otherwise mixed. If R0 never improved on
    its starting accuracy there is nothing to converge to: mixed."""
    curves = [r["tracked"] for r in r0_rows if r.get("tracked")]
    plus = [r["tracked"] for r in plus_rows if r.get("tracked")]
    if not curves or not plus:
        return "mixed", "no tracked curves"
    target = _mean_std([c[-1][1] for c in curves])[0]
    start = _mean_std([c[0][1] for c in curves])[0]
    r0_iters = _mean_std([c[-1][0] for c in curves])[0]
    if target <= start + ABS_TOL["acc"]:
        return "mixed", f"R0's tracked accuracy did not improve ({start:.3f} -> {target:.3f}); nothing to converge to"
    firsts = [next((p[0] for p in c if p[1] >= target), None) for c in plus]
    reached = [f for f in firsts if f is not None]
    ev = f"target acc {target:.3f} (R0 final at iteration {r0_iters:.0f}); R0+ first reaches it at {firsts}"
    if len(reached) < len(firsts):
        return "refuted", ev
    ratio = (sum(reached) / len(reached)) / r0_iters
    ev += f" (ratio {ratio:.2f})"
    return ("confirmed" if ratio <= 0.7 else "refuted" if ratio >= 1.0 else "mixed"), ev


def write_report(out: Path, docs: Path) -> Path:
    """docs/results.md + PNGs, from out/runs/*/eval.json (and plan.json) alone."""
    res = load_results(out)
    if not res:
        raise ValueError(f"no finished runs in '{out / 'runs'}'; run `rzero bench` first (--out {out})")
    docs.mkdir(parents=True, exist_ok=True)
    plan = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    seed0 = {name: rows[0] for name, rows in res.items()}

    # Plots: tracked accuracy / FID per method, DI diagnostics, grids.
    _plot_tracked({TABLE_LABEL.get(n, n): seed0[n] for n in seed0 if seed0[n].get("tracked")},
                  docs / "bench_curves.png")
    diag = {TABLE_LABEL.get(n, n): seed0[n] for n in ("distar", "dipp1", "dipp4") if seed0.get(n, {}).get("diagnostics")}
    if diag:
        _plot_diagnostics(diag, docs / "bench_diagnostics.png")
    grids = []
    for name, _, _ in TABLE:
        if name in seed0 and (Path(seed0[name]["run_dir"]) / "grid.png").is_file():
            shutil.copyfile(Path(seed0[name]["run_dir"]) / "grid.png", docs / f"bench_grid_{name}.png")
            grids.append(name)

    table_rows = [(label, res[name]) for name, label, _ in TABLE if name in res]
    lines = ["# Benchmark results on the built-in world", "",
             "Produced by `rzero bench` (regenerate with `rzero bench --report`); every number below is read "
             f"from `{out}/runs/<method>_s<seed>/eval.json`. Do not edit by hand.", ""]
    if plan:
        lines += [f"Settings: {plan.get('seeds')} seed(s) per table row, {plan.get('ablation_seeds')} per ablation, "
                  f"{plan.get('time_budget_s'):g} s of training wall-clock per run (one CPU thread), "
                  f"evaluation on {4 * plan.get('prompts_per_level', 0) + plan.get('heldout_prompts', 0)} prompts "
                  f"(+ {plan.get('diversity_prompts')}x{plan.get('diversity_seeds')} for diversity). "
                  f"Job time summed over all runs (start-up, training, tracking, evaluation): "
                  f"{sum(r.get('job_seconds', 0) for rows in res.values() for r in rows) / 60:.1f} min.", ""]
    lines += ["## Table 1 analogue", "",
              "Mean ± std over seeds (n = seeds). clip / judge / quality: the training rewards on the evaluation "
              "images; acc: held-out inspector all-correct accuracy per prompt level; world-FID against real "
              "renders (lower is better); diversity across seeds; NFE counts CFG twice; train s: training "
              "wall-clock.", "", _table(table_rows, TABLE_COLS), ""]
    lines += ["## Claims of SPEC 5", "",
              "Verdicts by the rules in `rzero.apps.bench` (`compare`, `majority_verdict`, `_convergence_verdict`): "
              "a difference counts when it exceeds both two standard errors and a per-metric tolerance "
              f"({ABS_TOL}).", ""]
    for c, verdict, ev in claims(res):
        lines.append(f"- **{c}**: **{verdict}** — {ev}")
    lines += ["", "## Ablations (on R0)", ""]
    for group in dict.fromkeys(g for g, *_ in ABLATIONS):
        ref_name, ref_label = ABLATION_REFERENCE[group]
        rows = [(f"{ref_label} [{ref_name}]", res[ref_name])] if ref_name in res else []
        rows += [(f"{label} [{name}]", res[name]) for g, name, label, _, _ in ABLATIONS if g == group and name in res]
        if group in ABLATION_EXTRA and ABLATION_EXTRA[group][0] in res:
            extra_name, extra_label = ABLATION_EXTRA[group]
            rows.append((f"{extra_label} [{extra_name}]", res[extra_name]))
        if rows:
            lines += [f"### {group}", "", _table(rows, ABL_COLS), ""]
    lines += ["## Curves", "", "Tracked held-out accuracy (mean over L1-L4) and world-FID against training "
              "iterations (seed 0; tracking uses a small fixed prompt set, so it is a trend, not a result).", "",
              "![curves](bench_curves.png)", ""]
    if diag:
        lines += ["DI*/DI++ diagnostics (SPEC 1.5): log10 gradient norm of the reward and divergence families "
                  "w.r.t. the generator weights, and the cosine of the two parameter gradients.", "",
                  "![diagnostics](bench_diagnostics.png)", ""]
    if grids:
        from ..world.prompts import fixed_prompts

        prompts, _ = fixed_prompts()
        lines += ["## Samples", "", f"Fixed prompts (rows) and {GRID_SEEDS} seeds (columns), seed-0 run of each "
                  "method:", ""] + [f"{i + 1}. {p}" for i, p in enumerate(prompts)] + [""]
        lines += ["| " + " | ".join(TABLE_LABEL[g] for g in grids) + " |", "|---" * len(grids) + "|",
                  "| " + " | ".join(f"![{g}](bench_grid_{g}.png)" for g in grids) + " |", ""]
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    return path


TABLE_LABEL = {name: label for name, label, _ in TABLE}


def _plot_tracked(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab20").colors  # more runs than tab10 has colours
    for i, (label, r) in enumerate(runs.items()):
        pts = r["tracked"]
        # Table rows solid, ablations dashed: 16 lines need both colour and style to be told apart.
        style = dict(label=label, marker="o", markersize=2, color=colours[i % len(colours)],
                     linestyle="--" if label.startswith("abl_") else "-")
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], **style)
        fid = [(p[0], p[2]) for p in pts if p[2] is not None]
        axes[1].plot([p[0] for p in fid], [p[1] for p in fid], **style)
    for ax, title in zip(axes, ("tracked accuracy (mean L1-L4)", "tracked world-FID (log scale)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # one-step baselines sit two orders of magnitude above the rest
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_diagnostics(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, r in runs.items():
        d = r["diagnostics"]
        steps = [p[0] for p in d]
        axes[0].plot(steps, [p[1] for p in d], label=f"{label}: reward")
        axes[0].plot(steps, [p[2] for p in d], "--", label=f"{label}: divergence")
        axes[1].plot(steps, [p[3] for p in d], label=label)
    axes[0].set_title("log10 gradient norm per loss family", fontsize=9)
    axes[1].set_title("cosine(reward gradient, divergence gradient)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
