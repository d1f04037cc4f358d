"""Shared training plumbing, written once: accelerate, accumulation, clipping, EMA,
full-state checkpoints with resume, inference snapshots, stats and sample grids, and the
reliability guards of docs/reliability.md (crash-safe checkpoints, SIGTERM/SIGINT,
non-finite steps, the reward-hacking alarm).

A method (trainers/r0.py, ...) subclasses `Trainer` and implements `train_step`, which
returns `(loss, metrics)` for one micro-batch drawn from its own per-step generator.

Run directory layout:
    config.yaml                 resolved config
    stats.jsonl                 one line per logged iteration
    samples/step_000100.png     grids at fixed prompts and seeds
    checkpoints/step_000100/    full resumable state: model, ema, optimizer, counters;
                                state.json (written last) lists every file's sha256
    checkpoints/corrupt_step_*  checkpoints that failed verification, set aside on resume
    hacking_alarm.json          only when the reward-hacking alarm fired
    final/                      inference snapshot: generator.safetensors + generator.json + config.yaml
    snapshots/at_<s>s/          the same, when training time first reached s (`snapshot_at_s`)

Every logged row carries `train_seconds`, the training wall-clock so far (iterations only,
carried across resumes): the time axis of `rzero bench`'s curves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import save_config
from ..config.schema import TrainConfig
from ..utils.fsdp import full, full_optimizer_state, load_full_optimizer_state, shard_like, shard_module
from ..utils.guards import (checkpoint_state_problem, finite_values, guarded_optimizer_step, lock_run_folder,
                            own_optimizer_settings, truncate_stats, unlock_run_folder)
from ..utils.io import (AssetError, atomic_save_safetensors, atomic_write_bytes, check_run_tree, copy_weights_,
                        fsync_dir, load_safetensors, remove_tree, sha256_file, torch_load_safe, torch_save_bytes)
from ..utils.seeding import derived_generator
from ..utils.stats import StatsLogger
from .alarm import RewardHackingAlarm

CHECKPOINT_FORMAT = 2  # 2: state.json lists files with sha256; 1 (no "files"): accepted on resume


def snapshot_dir(run_dir: Path, seconds: float) -> Path:
    """Where the snapshot taken at `seconds` of training wall-clock (`snapshot_at_s`) goes."""
    return Path(run_dir) / "snapshots" / f"at_{seconds:g}s"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM/SIGINT during `fit`: the current iteration finished and a checkpoint was saved.

    A KeyboardInterrupt so that generic `except Exception` handlers do not swallow it;
    `exit_code` is the shell convention 128 + signal number (130 SIGINT, 143 SIGTERM).
    """

    def __init__(self, signum: int, iteration: int, checkpoint: Path):
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} at iteration {iteration}; checkpoint saved in '{checkpoint}'; "
                         "run the same command again to resume")
        self.exit_code = 128 + signum


class NonFiniteError(ValueError):
    """Too many consecutive steps with a non-finite loss or gradient (one-line message)."""


class Trainer:
    """Base class; subclasses build their networks on `self.device`, set `self.model` and call `setup()`.

    `self.model` is the module the optimizer steps and the distributed wrapper (DDP) sees: a
    train_step must run its trainable forward pass through it, once per micro-batch, or DDP's
    gradient hooks stay unarmed and the ranks drift apart. Placement and precision belong to
    the engine (trainers/placement.py): `setup()` moves everything `owned_modules()` names to
    the accelerator's device and keeps `trained_modules()` in float32.
    """

    model: torch.nn.Module
    sharded = False  # set by setup(): the model is FSDP-sharded over several processes
    micro = 0  # index of the micro-batch being computed (set by the engine before each train_step)

    def __init__(self, cfg: TrainConfig, out_dir: str | Path):
        from .placement import make_accelerator

        self.cfg = cfg
        self.out = Path(out_dir)
        # First: the device is known before any network is built (trainers build on it).
        self.accelerator = make_accelerator(cfg)
        self.device = self.accelerator.device
        self.iteration = 0
        self.train_seconds = 0.0  # wall-clock spent in training iterations, carried across resumes
        self.skipped_steps = 0  # iterations whose update was skipped (non-finite loss/gradient)
        self.consecutive_skips = 0
        patience = getattr(cfg, "alarm_patience", 0)
        self.alarm = RewardHackingAlarm(patience) if patience > 0 else None
        self._alarm_sum, self._alarm_count = 0.0, 0  # training reward since the last evaluation
        self._signal: int | None = None

    # ------------------------------------------------------------ to implement
    def train_step(self, g: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def sample_grid(self, path: Path) -> None:
        """Optional: write a grid at fixed prompts and seeds."""

    def snapshot_meta(self) -> dict:
        return {}

    def extra_state(self) -> dict:
        """Optional: more objects with state_dict()/load_state_dict() that a full checkpoint must
        hold (e.g. DI*'s fake score network and its optimizer), by name."""
        return {}

    def begin_iteration(self) -> None:
        """Optional: work that must see every micro-batch of an iteration before the first
        backward (DI*'s fake-score update); runs before the micro-batch loop."""

    def owned_modules(self) -> dict[str, torch.nn.Module]:
        """Every module this trainer holds tensors in, by name: what `place` moves. Subclasses
        add theirs (frozen copies, rewards, classifiers); the EMA is placed separately."""
        return {"model": self._unwrapped()}

    def trained_modules(self) -> dict[str, torch.nn.Module]:
        """The networks an optimizer steps: their trainable weights are float32 master weights."""
        return {"model": self._unwrapped()}

    def named_trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The generator's trainable weights under the names checkpoints, snapshots and the EMA
        use. Default: the model's own names; reward trainers name them after the denoiser."""
        return [(n, p) for n, p in self._unwrapped().named_parameters() if p.requires_grad]

    def fsdp_root(self) -> torch.nn.Module:
        """The network `parallel: fsdp` shards in place (its blocks become FSDP units)."""
        return self.model

    def track(self) -> dict[str, float]:
        """Optional: held-out metrics of the current weights, logged with a `track/` prefix."""
        return {}

    def train_reward(self, metrics: dict[str, float]) -> float | None:
        """The training reward of one iteration, for the reward-hacking alarm.

        Default: the mean of the `reward/<name>` metrics (CompositeReward's per-reward means);
        None when there are none (the alarm then stays silent).
        """
        values = [v for k, v in metrics.items() if k.startswith("reward/")]
        return sum(values) / len(values) if values else None

    def heldout_score(self, tracked: dict[str, float]) -> float | None:
        """Held-out score (higher is better) from `track()`'s output, for the alarm.

        Default: `heldout_score` if the trainer reports one (e.g. a held-out reward at scale),
        else the mean of the world's per-level inspector accuracies `acc_*`; None if neither.
        """
        if "heldout_score" in tracked:
            return float(tracked["heldout_score"])
        acc = [v for k, v in tracked.items() if k.startswith("acc_")]
        return sum(acc) / len(acc) if acc else None

    def step_generator(self, micro: int) -> torch.Generator:
        """The generator of micro-batch `micro` of the current iteration (per rank, per step).

        Depends only on (seed, rank, iteration, micro), which is what makes resume bitwise
        equal to a straight run. Overridable (benchmarks/distributed_check.py emulates two
        ranks' streams in one process with it).
        """
        return derived_generator(self._rank_seed(), "train", self.iteration * self.cfg.grad_accum + micro)

    # ------------------------------------------------------------ plumbing
    def setup(self) -> None:
        """Place, upcast, shard, build the optimizer and hand the model to the distributed wrapper."""
        from .placement import upcast_trainable

        cfg, acc = self.cfg, self.accelerator
        self.place(self.device)  # before the optimizer and DDP see the weights
        for module in self.trained_modules().values():
            upcast_trainable(module)
        self.sharded = cfg.parallel == "fsdp" and acc.num_processes > 1
        if self.sharded:  # in place, before the optimizer sees the (now sharded) parameters
            shard_module(self.fsdp_root(), cfg.mixed_precision)
        params = [p for _, p in self.named_trainable()]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                           weight_decay=cfg.optim.weight_decay)
        if self.sharded:  # FSDP averages gradients itself (reduce-scatter); accelerate only wraps the optimizer
            self.optimizer = acc.prepare(self.optimizer)
        else:
            # Under DDP `self.model` becomes the wrapper: its construction broadcasts rank 0's
            # weights, and its gradient hooks average every rank's gradients during backward.
            self.model, self.optimizer = acc.prepare(self.model, self.optimizer)
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = {n: p.detach().clone() for n, p in self.named_trainable()}

    def place(self, device: torch.device | str) -> None:
        """Move every owned module (and the EMA) to `device`. `setup()` calls it with the
        accelerator's device; afterwards only tests call it (DDP is bound to its device)."""
        from .placement import move_module

        device = torch.device(device)
        for module in self.owned_modules().values():
            move_module(module, device)
        if getattr(self, "ema", None) is not None:
            self.ema = {n: t.to(device) for n, t in self.ema.items()}

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Whole trainable weights by name (under FSDP a collective: call it on every rank)."""
        return {n: full(p.detach()) for n, p in self.named_trainable()}

    def _ema_state(self) -> dict[str, torch.Tensor] | None:
        return None if self.ema is None else {n: full(t) for n, t in self.ema.items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        for n, p in self.named_trainable():
            self.ema[n].lerp_(p.detach(), 1 - self.cfg.ema_decay)

    def _rank_seed(self) -> int:
        a = self.accelerator
        return self.cfg.seed * a.num_processes + a.process_index

    def _any_rank(self, flag: bool) -> bool:
        """True if `flag` is true on any process: every rank must take the same branch
        (skip a step, stop) or the next collective hangs."""
        if self.accelerator.num_processes == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def release_processes(self) -> None:
        """End of a launched run (torchrun / accelerate launch): destroy the process group, as
        torch asks of every launched process; left to interpreter teardown, its threads can
        abort a finished run (SIGABRT, "terminate called without an active exception"), which
        the launcher reports as a failure. FSDP on gloo still did so now and then after this
        (docs/reliability.md, "Process exit"). Collectives, FSDP's gathering of full weights
        included, no longer work afterwards. A single process has nothing to release."""
        if self.accelerator.num_processes > 1:
            self.accelerator.end_training()

    # ------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict:
        """SIGTERM/SIGINT only set a flag: the loop finishes the iteration, checkpoints and
        raises TrainingInterrupted. The first signal restores the previous handlers, so a
        second Ctrl-C interrupts at once (checkpoint writes are atomic either way)."""
        if threading.current_thread() is not threading.main_thread():
            return {}  # signal handlers can only be set from the main thread
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum, frame):
            self._signal = signum
            for s, h in previous.items():
                signal.signal(s, h)
            if self.accelerator.is_main_process:
                print(f"train: {signal.Signals(signum).name} received; finishing iteration {self.iteration + 1}, "
                      "then checkpointing and stopping", file=sys.stderr, flush=True)

        for s in previous:
            signal.signal(s, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict) -> None:
        for s, h in previous.items():
            signal.signal(s, h)

    # ------------------------------------------------------------ training loop
    def fit(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        # One writer per run folder (rank 0 holds the lock), and nothing in it that links outside.
        lock = lock_run_folder(self.out) if acc.is_main_process else None
        try:
            check_run_tree(self.out)
            self.maybe_resume()  # first: a failed resume must leave the run folder as it was
            if acc.is_main_process:
                save_config(cfg, self.out / "config.yaml")
            previous_handlers = self._install_signal_handlers()
            try:
                self._loop()
            finally:
                self._restore_signal_handlers(previous_handlers)
            return self.save_snapshot()
        finally:
            unlock_run_folder(lock)

    def _loop(self) -> None:
        cfg, acc = self.cfg, self.accelerator
        logger = StatsLogger(self.out / "stats.jsonl" if acc.is_main_process else None, console=False)
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"train {cfg.method}", unit="it",
                   dynamic_ncols=True, disable=not acc.is_main_process)
        try:
            # Budgets already passed were snapshotted before the checkpoint this run resumed from.
            self._snapshots_taken = sum(t <= self._clock() for t in cfg.snapshot_at_s)
            if self.iteration == 0:
                self._sample_grid(self.out / "samples" / "step_000000.png")
                tracked = self._track() if cfg.track_every else None
                if tracked is not None:
                    logger.log(0, {**{f"track/{k}": v for k, v in tracked.items()}, "train_seconds": 0.0})
            while self.iteration < cfg.iterations:
                started = time.perf_counter()
                metrics, stepped = self._iteration()
                self._after_step(stepped, metrics)
                self.iteration += 1
                self.train_seconds += time.perf_counter() - started
                metrics["train_seconds"] = self._clock()
                bar.update(1)
                if self.consecutive_skips >= cfg.max_consecutive_skips:
                    logger.log(self.iteration, metrics)
                    raise NonFiniteError(
                        f"{self.consecutive_skips} consecutive iterations (up to {self.iteration}) had a non-finite "
                        f"loss or gradient; stopped without saving; the last good checkpoint is "
                        f"'{self._newest_checkpoint()}'; lower optim.lr, check the rewards, or raise "
                        "max_consecutive_skips")
                if self._any_rank(self._signal is not None):
                    # Stop first, evaluate never: the signal sender is waiting (60 s budget).
                    logger.log(self.iteration, metrics)
                    self.save_checkpoint()
                    signum = self._signal if self._signal is not None else signal.SIGTERM
                    raise TrainingInterrupted(signum, self.iteration, self._newest_checkpoint())
                # A wall-clock budget (equal-time comparisons in `rzero bench`) ends the run like the
                # last iteration does. Tracking time is not counted: it is evaluation, not training.
                out_of_time = cfg.time_budget_s > 0 and self._any_rank(cfg.time_budget_s <= self._clock())
                last = self.iteration == cfg.iterations or out_of_time
                due = self._due_snapshots()
                # A tracking row at each snapshot too: the curve then has a point at every budget.
                tracking = cfg.track_every > 0 and (self.iteration % cfg.track_every == 0 or last or bool(due))
                tracked = self._track() if tracking else None
                if tracked is not None:
                    metrics.update({f"track/{k}": v for k, v in tracked.items()})
                    metrics.update(self._check_alarm(tracked))
                if tracking or self.iteration % cfg.log_every == 0 or last:
                    logger.log(self.iteration, metrics)
                    bar.set_postfix({k.split("/")[-1][:10]: f"{v:.3g}" for k, v in list(metrics.items())[:4]})
                if self.iteration % cfg.sample_every == 0:
                    self._sample_grid(self.out / "samples" / f"step_{self.iteration:06d}.png")
                for seconds in due:  # before the checkpoint: a resume past it never has to redo one
                    self.save_snapshot(snapshot_dir(self.out, seconds))
                if self.iteration % cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint()
                if out_of_time:
                    print(f"train: time budget of {cfg.time_budget_s:g} s used up at iteration {self.iteration}")
                    break
        finally:
            bar.close()
            logger.close()

    def _clock(self) -> float:
        """The training clock as rows and snapshots show it: seconds, rounded to the millisecond. The
        time budget and the snapshots decide on this value too, so the first row at or past a budget
        is the iteration that took its snapshot (deciding on the unrounded sum put it one later)."""
        return round(self.train_seconds, 3)

    def _due_snapshots(self) -> list[float]:
        """The `snapshot_at_s` budgets this iteration reached, in order. Rank 0's clock decides (the
        ranks' clocks differ a little; under FSDP a snapshot is a collective every rank must join)."""
        due, budgets = [], self.cfg.snapshot_at_s
        while self._snapshots_taken < len(budgets) and self._any_rank(
                self.accelerator.is_main_process and budgets[self._snapshots_taken] <= self._clock()):
            due.append(budgets[self._snapshots_taken])
            self._snapshots_taken += 1
        return due

    # Sampling and tracking run on the main process only, except under FSDP: there every forward
    # pass is a collective (each block gathers its weights), so all ranks render and only the
    # main process keeps the result.
    def _sample_grid(self, path: Path) -> None:
        if self.accelerator.is_main_process:
            self.sample_grid(path)
        elif self.sharded:
            with tempfile.TemporaryDirectory() as scratch:
                self.sample_grid(Path(scratch) / path.name)

    def _track(self) -> dict[str, float] | None:
        if self.accelerator.is_main_process:
            return self.track()
        if self.sharded:
            self.track()
        return None

    def _iteration(self) -> tuple[dict[str, float], bool]:
        """One optimizer iteration over `grad_accum` micro-batches; returns (metrics, stepped).

        A non-finite loss (any micro-batch, any rank) or gradient norm skips the optimizer
        step. backward() still runs on every rank so DDP's gradient all-reduce stays in step.
        """
        cfg, acc = self.cfg, self.accelerator
        metrics: dict[str, float] = {}
        finite, stepped = True, False
        if self.sharded:  # register the sharded parameters again (a forward leaves the root gathered)
            self.fsdp_root().reshard()
        with acc.autocast():
            self.begin_iteration()
        for micro in range(cfg.grad_accum):
            g = self.step_generator(micro)
            self.micro = micro
            with acc.accumulate(self.model):
                with acc.autocast():  # mixed_precision: bf16/fp16 compute on the fp32 master weights
                    loss, m = self.train_step(g)
                finite = finite and bool(torch.isfinite(loss.detach()).all()) and finite_values(m)  # NaN rewards too
                acc.backward(loss)
                if acc.sync_gradients:
                    # Returns the pre-clipping total norm; an infinite bound only measures it.
                    max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                    m["grad_norm/params"] = self._clip_gradients(max_norm)
                    finite = finite and math.isfinite(m["grad_norm/params"])
                    if not self._any_rank(not finite):
                        params = [p for p in self.model.parameters() if p.requires_grad]
                        if self._any_rank(not guarded_optimizer_step(self.optimizer, params)):
                            raise NonFiniteError(
                                f"the optimizer step of iteration {self.iteration + 1} overflowed (non-finite weights "
                                f"with optim.lr={cfg.optim.lr:g}); stopped without saving; the last good checkpoint "
                                f"is '{self._newest_checkpoint()}'; lower optim.lr")
                        stepped = True
                    self.optimizer.zero_grad(set_to_none=True)
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
            metrics["loss"] = metrics.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
        return metrics, stepped

    def _clip_gradients(self, max_norm: float) -> float:
        """Clip the total gradient norm; returns the norm before clipping."""
        if not self.sharded:
            return float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        params = [p for p in self.model.parameters() if p.requires_grad]
        return float(full(torch.nn.utils.clip_grad_norm_(params, max_norm)))  # sharded grads: a global norm

    def _after_step(self, stepped: bool, metrics: dict[str, float]) -> None:
        """EMA and the skip counters; the skipped iteration's metrics are not fed to the alarm."""
        if stepped:
            self._update_ema()
            self.consecutive_skips = 0
            reward = self.train_reward(metrics)
            if reward is not None and math.isfinite(reward):
                self._alarm_sum += reward
                self._alarm_count += 1
        else:
            self.skipped_steps += 1
            self.consecutive_skips += 1
            if self.accelerator.is_main_process:
                print(f"train: warning: iteration {self.iteration + 1} skipped (non-finite loss or gradient; "
                      f"{self.consecutive_skips} in a row, {self.skipped_steps} in total)", file=sys.stderr, flush=True)
        metrics["skipped_steps"] = self.skipped_steps

    def _check_alarm(self, tracked: dict[str, float]) -> dict[str, float]:
        """Feed the alarm one (train reward since last evaluation, held-out score) pair."""
        if self.alarm is None:
            return {}
        heldout = self.heldout_score(tracked)
        train = self._alarm_sum / self._alarm_count if self._alarm_count else None
        self._alarm_sum, self._alarm_count = 0.0, 0
        if heldout is None or train is None:
            return {}
        fired = self.alarm.update(self.iteration, train, heldout)
        if fired:
            print(f"train: WARNING reward-hacking alarm at iteration {self.iteration}: the training reward rose "
                  f"while the held-out score fell for {self.alarm.streak} evaluations in a row "
                  f"(train {train:.4g}, held-out {heldout:.4g}); see {self.out / 'hacking_alarm.json'}",
                  file=sys.stderr, flush=True)
            report = {"patience": self.alarm.patience, "events": self.alarm.events}
            atomic_write_bytes(self.out / "hacking_alarm.json", (json.dumps(report, indent=2) + "\n").encode())
        return {"alarm/hacking": float(fired), "alarm/streak": float(self.alarm.streak)}

    # ------------------------------------------------------------ checkpoints
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def _checkpoints(self) -> list[Path]:
        """Checkpoint folders `step_<digits>`, oldest first (temporary and set-aside ones excluded)."""
        found = [p for p in self._ckpt_dir().glob("step_*") if p.is_dir() and p.name[5:].isdigit()]
        return sorted(found, key=lambda p: int(p.name[5:]))

    def _newest_checkpoint(self) -> Path | str:
        ckpts = self._checkpoints()
        return ckpts[-1] if ckpts else "(none)"

    def _counters(self) -> dict:
        return {"iteration": self.iteration, "train_seconds": self.train_seconds,
                "skipped_steps": self.skipped_steps, "consecutive_skips": self.consecutive_skips,
                "alarm": self.alarm.state_dict() if self.alarm is not None else None,
                "alarm_accumulator": [self._alarm_sum, self._alarm_count],
                "hacking_alarm": bool(self.alarm is not None and self.alarm.fired)}

    def save_checkpoint(self) -> None:
        """Full state into a temporary folder, then one atomic rename; keep the newest N.

        Every file is written with fsync; state.json goes last and lists each file's sha256,
        so a folder named `step_*` is complete by construction and verifiable on resume.
        Rank 0 writes; every rank waits at a barrier before and after.
        """
        acc = self.accelerator
        acc.wait_for_everyone()
        # Whole tensors first: under FSDP gathering them is a collective every rank joins.
        weights, ema = self.trainable_state(), self._ema_state()
        if self.sharded:
            optim_state = full_optimizer_state(self.optimizer.optimizer)
        else:
            optim_state = self.optimizer.state_dict()
        if acc.is_main_process:
            final = self._ckpt_dir() / f"step_{self.iteration:06d}"
            tmp = self._ckpt_dir() / f".tmp_step_{self.iteration:06d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            atomic_save_safetensors(weights, tmp / "model.safetensors")
            if ema is not None:
                atomic_save_safetensors(ema, tmp / "ema.safetensors")
            atomic_write_bytes(tmp / "optimizer.pt", torch_save_bytes(optim_state))
            extra = self.extra_state()
            if extra:
                atomic_write_bytes(tmp / "extra.pt", torch_save_bytes({k: v.state_dict() for k, v in extra.items()}))
            files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            state = {"format": CHECKPOINT_FORMAT, **self._counters(), "files": files}
            atomic_write_bytes(tmp / "state.json", (json.dumps(state, indent=1) + "\n").encode())
            remove_tree(final)  # only when re-saving the same step; never half-deleted under its name
            os.replace(tmp, final)
            fsync_dir(self._ckpt_dir())
            for old in self._checkpoints()[: -self.cfg.keep_checkpoints]:
                remove_tree(old)
        acc.wait_for_everyone()

    @staticmethod
    def verify_checkpoint(path: Path) -> tuple[dict | None, str]:
        """(state, "") if `path` is a complete checkpoint, else (None, the reason in a few words)."""
        try:
            state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None, "no state.json (incomplete)"
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            return None, f"state.json is not valid JSON ({e.__class__.__name__})"
        except OSError as e:
            return None, f"state.json cannot be read ({e.strerror})"
        problem = checkpoint_state_problem(state)  # types and ranges of every field resume reads
        if problem:
            return None, problem
        files = state.get("files")
        if files is None:  # format 1 (before sha256 lists): check presence only
            files = {"model.safetensors": None, "optimizer.pt": None}
        if not isinstance(files, dict):
            return None, "state.json 'files' is not a mapping"
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                return None, f"{name} is missing"
            if digest is not None and sha256_file(f) != digest:
                return None, f"{name} does not match its sha256 (truncated or modified)"
        return state, ""

    def maybe_resume(self) -> None:
        """Resume from the newest complete checkpoint, if any.

        Policy (docs/reliability.md): a newest checkpoint that fails verification is skipped
        with a warning and set aside as `corrupt_step_*` only if an older complete one exists;
        if none is usable the run stops with a one-line AssetError (never silently restarts
        from scratch over a corrupt checkpoint). Every rank verifies the same files, so every
        rank resumes from the same checkpoint.
        """
        acc = self.accelerator
        ckpts = self._checkpoints()
        if not ckpts:
            if acc.is_main_process:  # a restart from scratch logs every row again (step 0 included)
                truncate_stats(self.out / "stats.jsonl", None)
            return
        skipped: list[tuple[Path, str]] = []
        chosen, state = None, None
        for cand in reversed(ckpts):
            state, reason = self.verify_checkpoint(cand)
            if state is None:
                skipped.append((cand, reason))
                continue
            try:
                self._load_checkpoint(cand)
            except AssetError as e:
                skipped.append((cand, str(e)))
                continue
            chosen = cand
            break
        if chosen is None:
            newest, reason = skipped[0]
            raise AssetError(f"checkpoint '{newest}' is unusable ({reason}) and no older complete checkpoint exists; "
                             f"move '{self._ckpt_dir()}' away to start over")
        acc.wait_for_everyone()  # every rank has read its files before rank 0 renames anything
        if acc.is_main_process:
            for bad, reason in skipped:
                aside = bad.with_name(f"corrupt_{bad.name}")
                remove_tree(aside)
                os.replace(bad, aside)
                print(f"train: warning: skipped checkpoint '{bad}' ({reason}); moved to '{aside}'",
                      file=sys.stderr, flush=True)
            for leftover in [*self._ckpt_dir().glob(".tmp_step_*"), *self._ckpt_dir().glob(".trash_*")]:
                shutil.rmtree(leftover, ignore_errors=True)  # from a crash mid-save / mid-rotation
        self.iteration = int(state["iteration"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.consecutive_skips = int(state.get("consecutive_skips", 0))
        if self.alarm is not None and state.get("alarm"):
            self.alarm.load_state_dict(state["alarm"])
        self._alarm_sum, self._alarm_count = state.get("alarm_accumulator") or (0.0, 0)
        if acc.is_main_process:
            self._truncate_stats()
        acc.wait_for_everyone()
        print(f"train: resumed from {chosen} at iteration {self.iteration}")

    def _load_checkpoint(self, path: Path) -> None:
        """Load every piece of a verified checkpoint (weights, EMA, optimizer, extra state)."""
        trainable = dict(self.named_trainable())
        # Checked against whole-tensor shapes, then cut into this rank's shards (FSDP) or copied.
        whole = {n: torch.empty(p.shape, dtype=p.dtype) for n, p in trainable.items()} if self.sharded else trainable
        copy_weights_(whole, load_safetensors(path / "model.safetensors"), path / "model.safetensors")
        if self.sharded:
            with torch.no_grad():
                for n, p in trainable.items():
                    p.copy_(shard_like(whole[n], p))
        if self.ema is not None and (path / "ema.safetensors").is_file():
            ema = {n: torch.empty(p.shape, dtype=p.dtype) for n, p in trainable.items()}
            copy_weights_(ema, load_safetensors(path / "ema.safetensors"), path / "ema.safetensors")
            # In the model's parameter order: a file's key order is not the same in every process,
            # and under FSDP each shard_like is a collective that all ranks must issue alike.
            # Read on the CPU, kept where the weights are.
            self.ema = {n: shard_like(ema[n].to(p.device), p) for n, p in trainable.items()}
        try:
            with own_optimizer_settings(self.optimizer):
                if self.sharded:
                    load_full_optimizer_state(self.optimizer.optimizer, torch_load_safe(path / "optimizer.pt"))
                else:
                    self.optimizer.load_state_dict(torch_load_safe(path / "optimizer.pt"))
            extra = self.extra_state()
            if extra:
                saved = torch_load_safe(path / "extra.pt")
                for k, v in extra.items():
                    v.load_state_dict(saved[k])
        except (KeyError, ValueError, RuntimeError, TypeError, IndexError, AttributeError) as e:  # wrong structure
            if isinstance(e, AssetError):
                raise
            raise AssetError(f"'{path}' does not fit this run's optimizer/state ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from e

    def _truncate_stats(self) -> None:
        """Drop stats rows logged after the resumed checkpoint: those iterations run again."""
        truncate_stats(self.out / "stats.jsonl", self.iteration)

    def save_snapshot(self, final: Path | None = None) -> Path:
        """Inference snapshot in `final` (default out/final): EMA weights (or the raw ones) + what is
        needed to sample."""
        final = self.out / "final" if final is None else final
        ema = self._ema_state()
        weights = ema if ema is not None else self.trainable_state()  # collectives under FSDP
        if self.accelerator.is_main_process:
            final.mkdir(parents=True, exist_ok=True)
            atomic_save_safetensors(weights, final / "generator.safetensors")
            meta = {"method": self.cfg.method, "backbone": self.cfg.backbone, "iteration": self.iteration,
                    "train_seconds": self._clock(), "skipped_steps": self.skipped_steps,
                    **self.snapshot_meta()}
            if self.alarm is not None and self.alarm.fired:
                meta["hacking_alarm"] = self.alarm.events
            atomic_write_bytes(final / "generator.json", (json.dumps(meta, indent=2) + "\n").encode())
            save_config(self.cfg, final / "config.yaml")
        return final
