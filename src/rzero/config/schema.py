"""Typed configs of rzero's commands (nested dataclasses, validated in __post_init__).

Presets live in `configs/*.yaml`; any field can be overridden on the command line with a
dotted key (`rzero world build configs/world_build.yaml teacher.steps=100`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


@dataclass
class StageConfig:
    """Training schedule of one world network."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3

    def __post_init__(self):
        _positive("steps", self.steps)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)


@dataclass
class TeacherStageConfig(StageConfig):
    """The world teacher: eps-prediction UNet, SD1.5 schedule, caption dropout for CFG."""

    steps: int = 4000
    batch_size: int = 64
    lr: float = 6e-4
    cond_drop: float = 0.1
    ema_decay: float = 0.999
    checkpoint_every: int = 250

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        _positive("checkpoint_every", self.checkpoint_every)


@dataclass
class WorldBuildConfig:
    """`rzero world build`: every network of the built-in world, trained from code."""

    seed: int = 0
    threads: int = 2
    out_dir: str = ""  # empty: the package's own assets folder
    work_dir: str = "world_build"  # prompt-pool cache and resumable teacher state
    pool_size: int = 12000
    inspector: StageConfig = field(default_factory=lambda: StageConfig(steps=2500, batch_size=128, lr=2e-3))
    featnet: StageConfig = field(default_factory=lambda: StageConfig(steps=800, batch_size=128, lr=2e-3))
    clip: StageConfig = field(default_factory=lambda: StageConfig(steps=1200, batch_size=256, lr=1e-3))
    judge: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, batch_size=128, lr=1e-3))
    quality: StageConfig = field(default_factory=lambda: StageConfig(steps=600, batch_size=128, lr=2e-3))
    teacher: TeacherStageConfig = field(default_factory=TeacherStageConfig)

    def __post_init__(self):
        _positive("pool_size", self.pool_size)
        _positive("threads", self.threads)


@dataclass
class EvalConfig:
    """`rzero eval`: the pinned world evaluation protocol."""

    model: str = "teacher"  # "teacher" or "real" (real renders: the evaluators' own ceiling)
    steps: int = 25
    cfg: float = 7.5
    eta: float = 0.0
    prompts_per_level: int = 100
    heldout_prompts: int = 100
    diversity_prompts: int = 24
    diversity_seeds: int = 4
    batch_size: int = 250
    seed: int = 1234
    threads: int = 2

    def __post_init__(self):
        if self.model not in ("teacher", "real"):
            raise ValueError(f"model must be 'teacher' or 'real', got '{self.model}'")
        for name in ("steps", "prompts_per_level", "heldout_prompts", "batch_size", "threads"):
            _positive(name, getattr(self, name))
        if self.diversity_seeds < 2:
            raise ValueError(f"diversity_seeds must be >= 2, got {self.diversity_seeds}")
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
