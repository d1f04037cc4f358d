"""What a bench runs: the methods of the table, the ablations, the sizes (`BenchSettings`) and
the time plan printed before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[4] / "configs"
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

# Ablations: (group, name, label, preset, overrides). All but the last group vary R0
# (world_r0.yaml) and are read against the table's R0 run (3 rewards, normalized, random eta, the
# preset's lambda_w 0.15, no R0+ parts); the "kl" group varies DI++ 4 steps (world_dipp4.yaml),
# whose loss is alpha_rew * reward + KL: a KL weight of 1/alpha_rew relative to the reward.
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
    ("kl", "abl_kl4x", "DI++ 4 steps, KL weight x4 (alpha_rew 5)", "world_dipp4.yaml", ["di.alpha_rew=5.0"]),
    ("kl", "abl_kl025x", "DI++ 4 steps, KL weight x1/4 (alpha_rew 80)", "world_dipp4.yaml", ["di.alpha_rew=80.0"]),
]
ABLATION_REFERENCE = {"rewards": ("r0", "3 rewards"), "normalization": ("r0", "normalized gradients"),
                      "eta": ("r0", "random eta in [0, 1]"), "regularization": ("r0", "lambda_w = 0.15 (preset)"),
                      "r0plus": ("r0", "neither (R0)"), "kl": ("dipp4", "DI++ 4 steps, alpha_rew = 20 (preset)")}
ABLATION_EXTRA = {"r0plus": ("r0plus", "both (R0+)"), "regularization": ("r0_noreg", "lambda_w = 0, fixed eta")}

# Claim (2)'s fronts: each method's sweep of its regularizer's weight, at equal steps (4).
R0_FRONT = ["abl_reg0", "abl_reg001", "r0", "abl_reg05"]  # lambda_w 0, 0.01, 0.15 (preset), 0.5
DIPP_FRONT = ["abl_kl025x", "dipp4", "abl_kl4x"]  # KL weight x1/4, x1 (preset), x4


@dataclass
class BenchSettings:
    """Sizes of one bench; `full()` and `quick()` are the two presets (see docs/bench.md)."""

    seeds: int = 3
    ablation_seeds: int = 1
    time_budget_s: float = 300.0  # training wall-clock per run: the last budget
    # Earlier budgets (training seconds) at which every run is evaluated too, from snapshots the
    # engine takes on the way (`snapshot_at_s`); those >= time_budget_s are dropped.
    early_budgets_s: list[float] = field(default_factory=lambda: [60.0, 150.0])
    jobs: int = 2
    # Where runs train ("cpu" or "cuda"); evaluation follows the trainer's placement rules. The
    # budgets above are CPU budgets: on a GPU pass longer ones (--time-budget) to use it.
    device: str = "cpu"
    track_every: int = 20
    track_prompts: int = 12
    checkpoint_every: int = 50
    prompts_per_level: int = 100
    heldout_prompts: int = 100
    diversity_prompts: int = 24
    diversity_seeds: int = 4
    # Costs on the reference 2-core machine, one thread per job (for the plan only), fitted to the
    # November 2026 bench: a 200 s run's job took ~230 s with one evaluation and ~6 trackings,
    # and the quick bench 355 s with 2 jobs. startup_s: interpreter, imports and networks;
    # eval_s: one protocol evaluation (+ grid); track_overhead: tracking, per training second.
    startup_s: float = 10.0
    eval_s: float = 20.0
    track_overhead: float = 0.05
    teacher_eval_s: float = 150.0

    @classmethod
    def full(cls) -> "BenchSettings":
        return cls()

    @classmethod
    def quick(cls) -> "BenchSettings":
        return cls(seeds=1, ablation_seeds=1, time_budget_s=30.0, early_budgets_s=[15.0], track_every=5,
                   track_prompts=4, checkpoint_every=20, prompts_per_level=12, heldout_prompts=12,
                   diversity_prompts=6, diversity_seeds=2, eval_s=4.0, teacher_eval_s=35.0)

    def budgets(self) -> list[float]:
        """Every budget a run is evaluated at, increasing; the last is `time_budget_s`."""
        return sorted({b for b in self.early_budgets_s if b < self.time_budget_s}) + [self.time_budget_s]

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
    budgets = s.budgets()
    per_run = s.startup_s + s.time_budget_s * (1 + s.track_overhead) + len(budgets) * s.eval_s
    total_job_s = len(trained) * per_run + len(teacher) * (s.startup_s + s.teacher_eval_s)
    wall = total_job_s / s.jobs
    lines = [
        f"bench plan: {len(trained)} training runs x ({s.time_budget_s:g} s training + ~{s.startup_s:g} s start-up "
        f"+ ~{s.track_overhead:.0%} tracking + {len(budgets)} evaluations x ~{s.eval_s:g} s, at "
        f"{', '.join(f'{b:g}' for b in budgets)} s of training) + {len(teacher)} teacher evaluations x "
        f"~{s.teacher_eval_s + s.startup_s:g} s",
        f"            = {total_job_s / 60:.1f} job-minutes over {s.jobs} parallel job(s), one thread each: "
        f"about {wall / 60:.1f} minutes wall-clock (checkpoints add a little)",
        f"            table: {s.seeds} seed(s) x {len(TABLE)} rows; ablations: {s.ablation_seeds} seed(s) x "
        f"{len(ABLATIONS)} runs; eval: {4 * s.prompts_per_level + s.heldout_prompts} prompts + "
        f"{s.diversity_prompts}x{s.diversity_seeds} for diversity",
    ]
    return "\n".join(lines), wall
