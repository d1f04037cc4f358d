"""Typed configs of rzero's commands (nested dataclasses, validated in __post_init__).

Presets live in `configs/*.yaml`; any field can be overridden on the command line with a
dotted key (`rzero world build configs/world_build.yaml teacher.steps=100`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def _positive(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


# Upper bounds on sizes that are allocated up front: past these a config is a typo, and the run
# would only end in an out-of-memory abort (libgomp aborts the process for absurd thread counts).
MAX_THREADS = 1024
MAX_BATCH = 4096  # images per micro-batch of one process (training, evaluation)
MAX_SEED = 2**32 - 1
# The world backbone's noise schedule: VPSchedule() with integer timesteps 0..999.
WORLD_TIMESTEPS = 1000


def _at_most(name: str, value: float, limit: float, why: str = "") -> None:
    if value > limit:
        raise ValueError(f"{name} must be <= {limit}, got {value}{why}")


def _seed(name: str, value: int) -> None:
    if not 0 <= value <= MAX_SEED:
        raise ValueError(f"{name} must be in [0, 2**32 - 1], got {value}")


def _threads(name: str, value: int) -> None:
    _positive(name, value)
    _at_most(name, value, MAX_THREADS, " (torch CPU threads; more than any machine has)")


def timestep_range(backbone: str) -> tuple[float, float] | None:
    """Valid generator timesteps of a backbone known without loading it: (low, high), or None.

    world: its VP schedule's integer timesteps; sd3: rectified-flow times in [0, 1]. sd15 reads
    its schedule from the model folder, so its range is checked when the model is loaded.
    """
    if backbone == "world":
        return 0.0, float(WORLD_TIMESTEPS - 1)
    if backbone == "sd3":
        return 0.0, 1.0
    return None


def check_timesteps(key: str, timesteps, low: float, high: float) -> None:
    """Every timestep in [low, high] and strictly decreasing (the generator runs from noise down)."""
    for i, t in enumerate(timesteps):
        if not low <= t <= high:
            where = f"[{low:g}, {high:g}]" if high != float("inf") else f">= {low:g}"
            raise ValueError(f"{key}[{i}] = {t} is outside the backbone's schedule ({where})")
    for i in range(1, len(timesteps)):
        if not timesteps[i] < timesteps[i - 1]:
            raise ValueError(f"{key} must decrease (noise first), got {list(timesteps)}")


@dataclass
class StageConfig:
    """Training schedule of one world network."""

    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3

    def __post_init__(self):
        _positive("steps", self.steps)
        _positive("batch_size", self.batch_size)
        _at_most("batch_size", self.batch_size, 65536)
        _positive("lr", self.lr)


@dataclass
class ClipStageConfig(StageConfig):
    """The world clip, optionally with L2 adversarial training: each batch's images are first
    pushed by `adv_steps` normalized-gradient steps to raise the loss, within an L2 ball of
    radius `adv_eps` (images in [-1, 1]). 0: off, the shipped recipe. Meant to give the reward
    gradients that change what an image shows; measured, not yet (docs/decisions.md, "World v2")."""

    adv_eps: float = 0.0
    adv_steps: int = 1

    def __post_init__(self):
        super().__post_init__()
        if not 0 <= self.adv_eps <= 100:
            raise ValueError(f"adv_eps must be in [0, 100], got {self.adv_eps}")
        _positive("adv_steps", self.adv_steps)
        _at_most("adv_steps", self.adv_steps, 100)


@dataclass
class JudgeStageConfig(StageConfig):
    """The world judge: `steps` of attribute-fraction regression, then `rank_steps` more with a
    ranking term (the own prompt above prompts the image does not satisfy) at `rank_lr`."""

    rank_steps: int = 0
    rank_lr: float = 3e-4

    def __post_init__(self):
        super().__post_init__()
        if self.rank_steps < 0 or self.rank_lr <= 0:
            raise ValueError(f"need rank_steps >= 0 and rank_lr > 0, got {self.rank_steps}, {self.rank_lr}")


@dataclass
class TeacherStageConfig(StageConfig):
    """The world teacher: eps-prediction UNet, SD1.5 schedule, caption dropout for CFG."""

    steps: int = 4000
    batch_size: int = 64
    lr: float = 6e-4
    cond_drop: float = 0.1
    offset_noise: float = 0.1  # per-channel constant added to eps; see docs/decisions.md
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    # Second cosine cycle: restart from the EMA weights with a fresh optimizer at this peak lr
    # (0 steps: off). Lets a longer teacher be built on top of the first cycle's result.
    finetune_steps: int = 0
    finetune_lr: float = 2e-4
    # Stop after this many steps (0: run the whole schedule) and ship the EMA weights there. The
    # learning-rate schedule stays the one of `steps` + `finetune_steps`: a budget cut, not a
    # shorter recipe (the shipped GPU teacher, configs/world_build_gpu.yaml).
    stop_at: int = 0
    # Where the teacher trains ("cpu", "cuda", "cuda:1"...) and how many loader processes
    # render its batches. Neither changes the recipe (each batch is a function of seed and
    # step), so neither enters the stage's config hash.
    device: str = "cpu"
    workers: int = 0
    # What the captions are: "exact" (the prompt grammar's full descriptions, as the rewards see)
    # or "web" (world/captions.py: alt-text-like, SPEC 6.1; `captioner` sets its rates).
    captions: str = "exact"
    # Start from another teacher asset's weights ("teacher") instead of a fresh network;
    # with `reset_cross_attention` the text-reading layers start over, so everything the result
    # knows about prompts comes from its own captions while the image prior is kept.
    init: str = ""
    reset_cross_attention: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.captions not in ("exact", "web"):
            raise ValueError(f"captions must be 'exact' or 'web', got '{self.captions}'")
        if self.init not in ("", "teacher"):
            raise ValueError(f"init must be '' (a fresh network) or 'teacher', got '{self.init}'")
        if self.reset_cross_attention and not self.init:
            raise ValueError("reset_cross_attention needs init (a fresh network has nothing to reset)")
        if self.finetune_steps < 0 or self.finetune_lr <= 0:
            raise ValueError(f"need finetune_steps >= 0 and finetune_lr > 0, got {self.finetune_steps}, "
                             f"{self.finetune_lr}")
        if not 0 <= self.stop_at <= self.steps + self.finetune_steps:
            raise ValueError(f"teacher.stop_at must be in [0, steps + finetune_steps], got {self.stop_at}")
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0 < self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.offset_noise < 0:
            raise ValueError(f"offset_noise must be >= 0, got {self.offset_noise}")
        _positive("checkpoint_every", self.checkpoint_every)
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"teacher.device must be 'cpu' or 'cuda[:N]', got '{self.device}'")
        if self.workers < 0:
            raise ValueError(f"teacher.workers must be >= 0, got {self.workers}")


@dataclass
class CaptionerConfig:
    """Rates of the web captioner (world/captions.py): how often alt-text names each attribute.

    Shapes are always named. Calibrated so that the teacher draws clean single objects but often
    misses positions, bindings and relations (docs/decisions.md, "World v2").
    """

    pool_size: int = 30000  # captioned scenes, encoded once and cached in the build's work dir
    p_colour: float = 0.6  # an object's colour is named
    p_colour_wrong: float = 0.1  # a named colour is another one
    p_size: float = 0.2
    p_position: float = 0.05  # single objects only; relations between objects are never stated
    p_background: float = 0.2
    p_unbound: float = 0.5  # several objects: colours listed apart from the shapes
    p_count: float = 0.3  # several objects: "two shapes: ..."

    def __post_init__(self):
        _positive("captioner.pool_size", self.pool_size)
        for name in ("p_colour", "p_colour_wrong", "p_size", "p_position", "p_background", "p_unbound", "p_count"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"captioner.{name} must be in [0, 1], got {value}")


@dataclass
class WorldBuildConfig:
    """`rzero world build`: every network of the built-in world, trained from code."""

    seed: int = 0
    threads: int = 2
    out_dir: str = ""  # empty: the package's own assets folder
    work_dir: str = "world_build"  # prompt-pool cache and resumable teacher state
    pool_size: int = 12000
    inspector: StageConfig = field(default_factory=lambda: StageConfig(steps=2000, batch_size=128, lr=2e-3))
    featnet: StageConfig = field(default_factory=lambda: StageConfig(steps=800, batch_size=128, lr=2e-3))
    clip: ClipStageConfig = field(default_factory=lambda: ClipStageConfig(steps=1200, batch_size=256, lr=1e-3))
    # The same recipe for `world-clip-coarse`, which sees 4x4-pixel cell means (docs/decisions.md, World v2).
    clip_coarse: ClipStageConfig = field(default_factory=lambda: ClipStageConfig(steps=1200, batch_size=256,
                                                                                 lr=1e-3))
    judge: JudgeStageConfig = field(default_factory=lambda: JudgeStageConfig(steps=4000, batch_size=128, lr=1e-3))
    quality: StageConfig = field(default_factory=lambda: StageConfig(steps=600, batch_size=128, lr=2e-3))
    sharpness: StageConfig = field(default_factory=lambda: StageConfig(steps=600, batch_size=128, lr=2e-3))
    # The shipped teacher (exact captions) and the world v2 candidate built on top of it (web captions).
    teacher: TeacherStageConfig = field(default_factory=lambda: TeacherStageConfig(steps=3500))
    teacher_web: TeacherStageConfig = field(default_factory=lambda: TeacherStageConfig(
        steps=3000, lr=3e-4, captions="web", init="teacher", reset_cross_attention=True))
    captioner: CaptionerConfig = field(default_factory=CaptionerConfig)

    def __post_init__(self):
        _positive("pool_size", self.pool_size)
        _threads("threads", self.threads)
        _seed("seed", self.seed)


@dataclass
class ScaleEvalConfig:
    """`rzero eval` of SD-class models (SPEC 4, rzero/eval/scale_eval.py, docs/scale.md).

    Used for a `--checkpoint` whose backbone is sd15/sd3, or for `model=base` (the pretrained
    model itself, sampled with DDIM + CFG at EvalConfig's steps/cfg and this `eta`).
    """

    backbone: str = ""  # model=base only: "sd15" | "sd3"
    backbone_path: str = ""  # model=base only: diffusers folder or hub id
    backbone_dtype: str = "float32"
    device: str = ""  # "" = cuda if available, else cpu
    eta: float = 0.0  # model=base: DDIM eta (0 = deterministic DDIM, the usual SD setting)
    hps_prompts: str = ""  # folder of HPS v2 benchmark style files (anime.txt, concept-art.txt, ...)
    prompt_files: list[str] = field(default_factory=list)  # more UTF-8 prompt files, one prompt a line
    coco_captions: str = ""  # UTF-8 file, one caption a line (COCO-2014 val 5k)
    coco_images: str = ""  # folder of the reference images (sorted by name; the first N are used)
    inception: str = ""  # pt_inception-2015-12-05-6726825d.pth (local path only)
    rewards: list[str] = field(default_factory=list)  # reward registry names
    reward_options: dict[str, dict] = field(default_factory=dict)  # e.g. {"hps-v2.1": {"path": ...}}
    batch_size: int = 8
    max_prompts: int = 0  # 0 = every prompt; N = the first N of each file (smoke runs only)

    def __post_init__(self):
        if self.backbone not in ("", "sd15", "sd3"):
            raise ValueError(f"backbone must be 'sd15' or 'sd3', got '{self.backbone}'")
        _positive("batch_size", self.batch_size)
        _at_most("batch_size", self.batch_size, MAX_BATCH)
        if self.max_prompts < 0:
            raise ValueError(f"max_prompts must be >= 0, got {self.max_prompts}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")
        if bool(self.coco_captions) != bool(self.coco_images):
            raise ValueError("COCO FID needs both coco_captions=FILE and coco_images=FOLDER")
        unknown = sorted(set(self.reward_options) - set(self.rewards))
        if unknown:
            raise ValueError(f"reward_options given for rewards not in rewards: {', '.join(unknown)}")


@dataclass
class EvalConfig:
    """`rzero eval`: the pinned world evaluation protocol, or SPEC 4's for SD models (`scale`)."""

    model: str = "teacher"  # "teacher" or "real" (real renders: the evaluators' own ceiling); "base": scale
    teacher: str = "teacher"  # which world teacher `model=teacher` samples: "teacher" or "teacher_web" (world v2)
    steps: int = 25
    cfg: float = 7.5
    # DDIM's eta for the teacher: its best setting on the world, measured (docs/decisions.md).
    # The shipped GPU teacher: eta 0 gives the same accuracy as eta 1 and world-FID 126 vs 281.
    eta: float = 0.0
    prompts_per_level: int = 100
    heldout_prompts: int = 100
    diversity_prompts: int = 24
    diversity_seeds: int = 4
    # acc_paraphrase: the first N of each level's 50 frozen out-of-template prompts (world/paraphrase.py); 0: off
    paraphrase_per_level: int = 50
    batch_size: int = 250
    seed: int = 1234
    threads: int = 2
    scale: ScaleEvalConfig = field(default_factory=ScaleEvalConfig)

    def __post_init__(self):
        if self.model not in ("teacher", "real", "base"):
            raise ValueError(f"model must be 'teacher' or 'real' (or 'base' with scale.backbone for an SD model), "
                             f"got '{self.model}'")
        if self.teacher not in ("teacher", "teacher_web"):
            raise ValueError(f"teacher must be 'teacher' or 'teacher_web' (the world's base models), got '{self.teacher}'")
        if self.model == "base" and not (self.scale.backbone and self.scale.backbone_path):
            raise ValueError("model=base evaluates a pretrained SD model: pass scale.backbone=sd15|sd3 and "
                             "scale.backbone_path=FOLDER_OR_HUB_ID")
        for name in ("steps", "prompts_per_level", "heldout_prompts", "batch_size", "threads"):
            _positive(name, getattr(self, name))
        _threads("threads", self.threads)
        _at_most("batch_size", self.batch_size, MAX_BATCH)
        _seed("seed", self.seed)
        if not 0 <= self.paraphrase_per_level <= 50:
            raise ValueError(f"paraphrase_per_level must be in [0, 50] (the frozen split's size), got "
                             f"{self.paraphrase_per_level}")
        if self.diversity_seeds < 2:
            raise ValueError(f"diversity_seeds must be >= 2, got {self.diversity_seeds}")
        if self.cfg < 0:
            raise ValueError(f"cfg must be >= 0, got {self.cfg}")
        if not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be in [0, 1], got {self.eta}")


# ---------------------------------------------------------------- training (R0, R0+)


@dataclass
class GeneratorConfig:
    """The K-step generator (SPEC 1.1)."""

    steps: int = 4
    timesteps: list[float] = field(default_factory=list)  # empty: evenly spaced from the top
    renoise: str = "mix"  # "mix" | "ddim_sigma"
    eta_min: float = 0.0
    eta_max: float = 1.0
    eta_per_step: bool = False  # False: one eta per trajectory
    inference_eta: float = 1.0  # picked by measurement on the world (docs/decisions.md)
    gradient_checkpointing: bool = False

    def __post_init__(self):
        _positive("steps", self.steps)
        _at_most("steps", self.steps, WORLD_TIMESTEPS, " (a few-step generator; the schedules have 1000 timesteps)")
        if self.renoise not in ("mix", "ddim_sigma"):
            raise ValueError(f"renoise must be 'mix' or 'ddim_sigma', got '{self.renoise}'")
        if not 0 <= self.eta_min <= self.eta_max <= 1:
            raise ValueError(f"need 0 <= eta_min <= eta_max <= 1, got {self.eta_min}, {self.eta_max}")
        if not 0 <= self.inference_eta <= 1:
            raise ValueError(f"inference_eta must be in [0, 1], got {self.inference_eta}")
        if self.timesteps and len(self.timesteps) != self.steps:
            raise ValueError(f"{len(self.timesteps)} timesteps given for {self.steps} steps")
        check_timesteps("timesteps", self.timesteps, 0.0, float("inf"))  # the upper end: TrainConfig


@dataclass
class RewardConfig:
    """Weighted rewards with per-reward gradient normalization (SPEC 1.2)."""

    names: list[str] = field(default_factory=lambda: ["world-clip", "world-judge", "world-quality"])
    weights: dict[str, float] = field(default_factory=dict)  # missing names weigh 1.0
    normalize_grads: bool = True
    delta: float = 1e-8
    # Constructor options per reward, e.g. {"hps-v2.1": {"path": "/weights/HPS_v2.1_compressed.pt"}}
    # (docs/rewards.md lists each reward's options).
    options: dict[str, dict] = field(default_factory=dict)
    # Implicit CFG reward (SPEC 1.2): push along s_teacher(x_t|c) - s_teacher(x_t|empty) of a frozen
    # copy of the pretrained network, at t ~ U[cfg_t_min, cfg_t_max] (fractions of the schedule).
    cfg_weight: float = 0.0  # w_cfg; 0 disables it (and no teacher copy is made)
    cfg_t_min: float = 0.02
    cfg_t_max: float = 0.98

    def __post_init__(self):
        if not self.names:
            raise ValueError("names must list at least one reward")
        unknown = sorted(set(self.weights) - set(self.names))
        if unknown:
            raise ValueError(f"weights given for rewards not in names: {', '.join(unknown)}")
        unknown = sorted(set(self.options) - set(self.names))
        if unknown:
            raise ValueError(f"options given for rewards not in names: {', '.join(unknown)}")
        if self.cfg_weight < 0:
            raise ValueError(f"cfg_weight must be >= 0, got {self.cfg_weight}")
        if not 0 <= self.cfg_t_min < self.cfg_t_max <= 1:
            raise ValueError(f"need 0 <= cfg_t_min < cfg_t_max <= 1, got {self.cfg_t_min}, {self.cfg_t_max}")


@dataclass
class RegularizationConfig:
    """Weight regularization toward the initial weights (SPEC 1.3)."""

    weight: float = 0.15  # lambda_w; 0 disables it (world sweep: docs/decisions.md)

    def __post_init__(self):
        if self.weight < 0:
            raise ValueError(f"weight must be >= 0, got {self.weight}")


@dataclass
class R0PlusConfig:
    """R0+ switches (SPEC 1.4)."""

    intermediate_supervision: bool = False
    # k ~ U{first_step..K}; SPEC 1.4 draws from 1. Larger values leave out the one-step
    # predictions from pure noise (see docs/decisions.md for what they do on the world).
    intermediate_first_step: int = 1
    # "step": the reward scores x0_k (SPEC 1.4); "final": the reward scores the final output and
    # gradients flow only through steps k..K (docs/decisions.md compares them).
    intermediate_target: str = "final"
    hires_guidance: bool = False
    hires_weight: float = 1.0
    hires_t_max: int = 600  # noise levels (VP timesteps) at which the classifier is queried

    def __post_init__(self):
        _positive("intermediate_first_step", self.intermediate_first_step)
        if self.intermediate_target not in ("step", "final"):
            raise ValueError(f"intermediate_target must be 'step' or 'final', got '{self.intermediate_target}'")
        if self.hires_weight < 0:
            raise ValueError(f"hires_weight must be >= 0, got {self.hires_weight}")
        _positive("hires_t_max", self.hires_t_max)
        _at_most("hires_t_max", self.hires_t_max, WORLD_TIMESTEPS,
                 " (timesteps of the world schedule that the sharpness classifier is queried at)")


@dataclass
class DIConfig:
    """Diff-Instruct* / DI++ (SPEC 2, 3): reward plus a score divergence to the teacher."""

    alpha_rew: float = 100.0  # reward weight (the paper's best DI* setting)
    alpha_cfg: float = 7.5  # CFG scale inside the teacher's score s_ref_w
    huber_c: float = 0.1  # pseudo-Huber C = huber_c * sqrt(dim of x0) (DI* only)
    t_init: float = -1.0  # DI*: the one-step generator's timestep; < 0: the top timestep
    fake_updates: int = 1  # fake-score updates per generator update (K_fake)
    fake_lr: float = 1e-4
    cond_drop: float = 0.1  # caption dropout of the fake score's training
    t_min: float = 0.02  # t ~ U[t_min, t_max], fractions of the schedule's range
    t_max: float = 0.98
    gradient_path: str = "detached"  # "detached" (DMD-style) | "sim" (through the teacher, DI* only)
    weighting: str = "dmd"  # w(t): "dmd" | "snr" | "uniform"
    diagnostics_every: int = 10  # 0: off; else per-family gradient norms and cosine every N iterations

    def __post_init__(self):
        for name in ("alpha_rew", "alpha_cfg"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("fake_lr", "huber_c", "fake_updates"):
            _positive(name, getattr(self, name))
        if not 0 <= self.cond_drop < 1:
            raise ValueError(f"cond_drop must be in [0, 1), got {self.cond_drop}")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise ValueError(f"need 0 <= t_min < t_max <= 1, got {self.t_min}, {self.t_max}")
        if self.gradient_path not in ("detached", "sim"):
            raise ValueError(f"gradient_path must be 'detached' or 'sim', got '{self.gradient_path}'")
        if self.weighting not in ("dmd", "snr", "uniform"):
            raise ValueError(f"weighting must be 'dmd', 'snr' or 'uniform', got '{self.weighting}'")
        if self.diagnostics_every < 0:
            raise ValueError(f"diagnostics_every must be >= 0, got {self.diagnostics_every}")


@dataclass
class LoraConfig:
    """LoRA on the denoiser instead of full fine-tuning (SPEC 1.3; the regularizer acts on the LoRA delta)."""

    rank: int = 0  # 0: off (full fine-tuning)
    alpha: float = 0.0  # LoRA scale = alpha / rank; 0 means alpha = rank
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])

    def __post_init__(self):
        if self.rank < 0 or self.alpha < 0:
            raise ValueError(f"need lora.rank >= 0 and lora.alpha >= 0, got {self.rank}, {self.alpha}")
        if self.rank > 0 and not self.target_modules:
            raise ValueError("lora.target_modules is empty; name the layers to adapt, e.g. [to_q, to_k, to_v, to_out.0]")


@dataclass
class OptimConfig:
    lr: float = 5e-5
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.0
    grad_clip: float = 1.0

    def __post_init__(self):
        _positive("lr", self.lr)
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 disables clipping), got {self.grad_clip}")


@dataclass
class TrainConfig:
    """`rzero train`: one preset describes a whole run."""

    method: str = "r0"
    backbone: str = "world"
    seed: int = 0
    threads: int = 2
    iterations: int = 300
    batch_size: int = 32
    grad_accum: int = 1
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate)
    # Multi-process training: "ddp" replicates the denoiser on every rank; "fsdp" shards it
    # (utils/fsdp.py; R0 with full fine-tuning). One process ignores it.
    parallel: str = "ddp"
    # Where training runs: "auto" = the launcher's GPU (cuda:$LOCAL_RANK) when torch sees one, else
    # the CPU; "cpu" forces the CPU; "cuda" requires a GPU. Every module a trainer owns goes there.
    device: str = "auto"
    ema_decay: float = 0.95  # 0 disables the EMA
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    sample_every: int = 100
    track_every: int = 50  # 0: off; else quick held-out evaluation (world) every N iterations
    track_prompts: int = 24  # world: prompts per level; sd15/sd3: size of the fixed subset of track_prompt_file
    # sd15/sd3 tracking (SPEC 4's training curves): a prompt file (e.g. the HPS v2 benchmark
    # prompts) of which a fixed, seeded subset of track_prompts is scored by every training reward.
    track_prompt_file: str = ""
    time_budget_s: float = 0.0  # > 0: stop (checkpoint + snapshot) once training has used this much wall-clock
    # Training wall-clock seconds (increasing) at which to also write an inference snapshot,
    # snapshots/at_<s>s/: `rzero bench` evaluates each run at several budgets from these.
    snapshot_at_s: list[float] = field(default_factory=list)
    max_consecutive_skips: int = 5  # steps with a non-finite loss/gradient are skipped; stop after this many in a row
    alarm_patience: int = 3  # reward-hacking alarm: train reward up, held-out score down N evals in a row; 0 off
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    r0plus: R0PlusConfig = field(default_factory=R0PlusConfig)
    di: DIConfig = field(default_factory=DIConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    # Real-scale backbones (sd15, sd3): a diffusers folder or hub id, the dtype of its networks
    # (trainable weights stay float32), activation checkpointing inside the denoiser and VAE, and
    # the training prompts (a UTF-8 file, one prompt per line; the world has its own grammar).
    backbone_path: str = ""
    backbone_dtype: str = "float32"  # "float32" | "bfloat16" | "float16"
    backbone_gradient_checkpointing: bool = False
    prompt_file: str = ""
    lora: LoraConfig = field(default_factory=LoraConfig)

    def __post_init__(self):
        if self.method not in ("r0", "distar", "dipp"):
            raise ValueError(f"method must be 'r0', 'distar' or 'dipp', got '{self.method}'")
        if self.backbone not in ("world", "sd15", "sd3"):  # backbones.BACKBONES (not imported: torch)
            raise ValueError(f"backbone must be 'world', 'sd15' or 'sd3', got '{self.backbone}'")
        if self.method == "distar" and self.generator.steps != 1:
            raise ValueError(f"method 'distar' is one-step: set generator.steps=1 (got {self.generator.steps}); "
                             "its timestep is di.t_init")
        if self.method == "dipp" and self.di.gradient_path != "detached":
            raise ValueError("di.gradient_path 'sim' is a DI* option; DI++'s KL gradient uses detached networks "
                             "(set di.gradient_path=detached)")
        for name in ("iterations", "batch_size", "grad_accum", "threads", "log_every", "checkpoint_every",
                     "keep_checkpoints", "sample_every"):
            _positive(name, getattr(self, name))
        _positive("max_consecutive_skips", self.max_consecutive_skips)
        _threads("threads", self.threads)
        _seed("seed", self.seed)
        _at_most("batch_size", self.batch_size, MAX_BATCH, " (per process; use grad_accum for larger batches)")
        _positive("track_prompts", self.track_prompts)
        span = timestep_range(self.backbone)
        if span is not None:
            check_timesteps("generator.timesteps", self.generator.timesteps, *span)
            if self.method == "distar" and self.di.t_init >= 0 and not self.di.t_init <= span[1]:
                raise ValueError(f"di.t_init = {self.di.t_init} is outside the backbone's schedule "
                                 f"[{span[0]:g}, {span[1]:g}] (< 0: the top timestep)")
        if self.alarm_patience < 0:
            raise ValueError(f"alarm_patience must be >= 0 (0 disables the alarm), got {self.alarm_patience}")
        if self.r0plus.intermediate_first_step > self.generator.steps:
            raise ValueError(f"r0plus.intermediate_first_step ({self.r0plus.intermediate_first_step}) must be <= "
                             f"generator.steps ({self.generator.steps})")
        if self.time_budget_s < 0:
            raise ValueError(f"time_budget_s must be >= 0 (0: no limit), got {self.time_budget_s}")
        if any(not t > 0 for t in self.snapshot_at_s) or any(
                not b > a for a, b in zip(self.snapshot_at_s, self.snapshot_at_s[1:])):
            raise ValueError(f"snapshot_at_s must be increasing seconds > 0, got {list(self.snapshot_at_s)}")
        if self.track_every < 0:
            raise ValueError(f"track_every must be >= 0, got {self.track_every}")
        if self.backbone_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"backbone_dtype must be 'float32', 'bfloat16' or 'float16', got '{self.backbone_dtype}'")
        if self.backbone == "world" and self.backbone_path not in ("", "teacher", "teacher_web"):
            raise ValueError(f"the world backbone's backbone_path names its teacher asset: '' (the shipped "
                             f"teacher) or 'teacher_web', got '{self.backbone_path}'")
        if self.backbone != "world" and not self.backbone_path:
            raise ValueError(f"backbone '{self.backbone}' needs backbone_path (a diffusers folder or hub id)")
        if self.backbone != "world" and not self.prompt_file:
            raise ValueError(f"backbone '{self.backbone}' needs prompt_file (training prompts, one per line)")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got '{self.mixed_precision}'")
        if self.track_prompt_file and self.backbone == "world":
            raise ValueError("track_prompt_file is for sd15/sd3 runs; the world tracks with its own prompt sets "
                             "(drop track_prompt_file)")
        if self.parallel not in ("ddp", "fsdp"):
            raise ValueError(f"parallel must be 'ddp' or 'fsdp', got '{self.parallel}'")
        if self.parallel == "fsdp" and (self.method != "r0" or self.lora.rank > 0):
            raise ValueError("parallel=fsdp shards full fine-tuning of method r0 only; set lora.rank=0 and "
                             "method=r0, or use parallel=ddp")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got '{self.device}' (under a launcher each "
                             "process takes its own GPU)")
        # Options that only make sense on one backbone or one method.
        if self.r0plus.hires_guidance and self.backbone != "world":
            raise ValueError(f"r0plus.hires_guidance uses the world's 32 px sharpness classifier on VP timesteps; "
                             f"it cannot guide backbone '{self.backbone}' (set r0plus.hires_guidance=false)")
        if self.method in ("distar", "dipp"):
            if self.lora.rank > 0:
                raise ValueError("DI*/DI++ train the full denoiser; LoRA is not supported for them yet (set lora.rank=0)")
            if self.mixed_precision == "fp16":
                raise ValueError("DI*/DI++ train the fake score without a loss scaler, so fp16 gradients can underflow; "
                                 "use mixed_precision=bf16 (or no)")
        if self.method == "dipp" and self.di.t_init >= 0:
            raise ValueError("di.t_init is the one-step DI* generator's timestep; DI++ runs generator.timesteps "
                             "(drop di.t_init or set generator.timesteps)")
