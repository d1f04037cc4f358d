"""Shared training plumbing, written once: accelerate, accumulation, clipping, EMA,
full-state checkpoints with resume, inference snapshots, stats and sample grids.

A method (trainers/r0.py, ...) subclasses `Trainer` and implements `train_step`, which
returns `(loss, metrics)` for one micro-batch drawn from its own per-step generator.

Run directory layout:
    config.yaml                 resolved config
    stats.jsonl                 one line per logged iteration
    samples/step_000100.png     grids at fixed prompts and seeds
    checkpoints/step_000100/    full resumable state: model, ema, optimizer, counters
    final/                      inference snapshot: generator.safetensors + generator.json + config.yaml
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import save_config
from ..config.schema import TrainConfig
from ..utils.io import (AssetError, atomic_save_safetensors, atomic_write_bytes, copy_weights_, load_safetensors,
                        torch_load_safe, torch_save_bytes)
from ..utils.seeding import derived_generator
from ..utils.stats import StatsLogger


class Trainer:
    """Base class; subclasses set `self.model` (the trainable module) before calling `setup()`."""

    model: torch.nn.Module

    def __init__(self, cfg: TrainConfig, out_dir: str | Path):
        self.cfg = cfg
        self.out = Path(out_dir)
        self.iteration = 0
        self.train_seconds = 0.0  # wall-clock spent in training iterations, carried across resumes

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

    def track(self) -> dict[str, float]:
        """Optional: held-out metrics of the current weights, logged with a `track/` prefix."""
        return {}

    # ------------------------------------------------------------ plumbing
    def setup(self) -> None:
        from accelerate import Accelerator

        cfg = self.cfg
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                                       cpu=not torch.cuda.is_available())
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2),
                                           weight_decay=cfg.optim.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.ema = None
        if cfg.ema_decay > 0:
            self.ema = {n: p.detach().clone() for n, p in self._unwrapped().named_parameters() if p.requires_grad}

    def _unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        for n, p in self._unwrapped().named_parameters():
            if n in self.ema:
                self.ema[n].lerp_(p.detach(), 1 - self.cfg.ema_decay)

    def _rank_seed(self) -> int:
        a = self.accelerator
        return self.cfg.seed * a.num_processes + a.process_index

    def fit(self) -> Path:
        cfg, acc = self.cfg, self.accelerator
        self.out.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            save_config(cfg, self.out / "config.yaml")
        self.maybe_resume()
        logger = StatsLogger(self.out / "stats.jsonl" if acc.is_main_process else None,
                             console=False)
        bar = tqdm(total=cfg.iterations, initial=self.iteration, desc=f"train {cfg.method}", unit="it",
                   dynamic_ncols=True, disable=not acc.is_main_process)
        if self.iteration == 0 and acc.is_main_process:
            self.sample_grid(self.out / "samples" / "step_000000.png")
            if cfg.track_every:
                logger.log(0, {f"track/{k}": v for k, v in self.track().items()})
        while self.iteration < cfg.iterations:
            started = time.perf_counter()
            metrics: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                g = derived_generator(self._rank_seed(), "train", self.iteration * cfg.grad_accum + micro)
                with acc.accumulate(self.model):
                    loss, m = self.train_step(g)
                    acc.backward(loss)
                    if acc.sync_gradients:
                        # Returns the pre-clipping total norm; an infinite bound only measures it.
                        max_norm = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else float("inf")
                        m["grad_norm/params"] = float(acc.clip_grad_norm_(self.model.parameters(), max_norm))
                    self.optimizer.step()
                    self.optimizer.zero_grad(set_to_none=True)
                for k, v in m.items():
                    metrics[k] = metrics.get(k, 0.0) + v / cfg.grad_accum
                metrics["loss"] = metrics.get("loss", 0.0) + float(loss.detach()) / cfg.grad_accum
            self._update_ema()
            self.iteration += 1
            self.train_seconds += time.perf_counter() - started
            bar.update(1)
            # A wall-clock budget (equal-time comparisons in `rzero bench`) ends the run like the
            # last iteration does. Tracking time is not counted: it is evaluation, not training.
            out_of_time = 0 < cfg.time_budget_s <= self.train_seconds
            last = self.iteration == cfg.iterations or out_of_time
            tracking = cfg.track_every > 0 and (self.iteration % cfg.track_every == 0 or last)
            if tracking and acc.is_main_process:
                metrics.update({f"track/{k}": v for k, v in self.track().items()})
            if tracking or self.iteration % cfg.log_every == 0 or last:
                logger.log(self.iteration, metrics)
                bar.set_postfix({k.split("/")[-1][:10]: f"{v:.3g}" for k, v in list(metrics.items())[:4]})
            if acc.is_main_process and self.iteration % cfg.sample_every == 0:
                self.sample_grid(self.out / "samples" / f"step_{self.iteration:06d}.png")
            if self.iteration % cfg.checkpoint_every == 0 or last:
                self.save_checkpoint()
            if out_of_time:
                print(f"train: time budget of {cfg.time_budget_s:g} s used up at iteration {self.iteration}")
                break
        bar.close()
        logger.close()
        return self.save_snapshot()

    # ------------------------------------------------------------ checkpoints
    def _ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def save_checkpoint(self) -> None:
        """Full state into a temporary folder, then one atomic rename; keep the newest N."""
        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            final = self._ckpt_dir() / f"step_{self.iteration:06d}"
            tmp = self._ckpt_dir() / f".tmp_step_{self.iteration:06d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            model = self._unwrapped()
            atomic_save_safetensors({n: p for n, p in model.named_parameters() if p.requires_grad},
                                    tmp / "model.safetensors")
            if self.ema is not None:
                atomic_save_safetensors(self.ema, tmp / "ema.safetensors")
            atomic_write_bytes(tmp / "optimizer.pt", torch_save_bytes(self.optimizer.state_dict()))
            extra = self.extra_state()
            if extra:
                atomic_write_bytes(tmp / "extra.pt", torch_save_bytes({k: v.state_dict() for k, v in extra.items()}))
            atomic_write_bytes(tmp / "state.json", json.dumps({"iteration": self.iteration, "train_seconds": self.train_seconds}).encode())
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            kept = sorted(p for p in self._ckpt_dir().glob("step_*") if p.is_dir())
            for old in kept[: -self.cfg.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()

    def maybe_resume(self) -> None:
        ckpts = sorted(p for p in self._ckpt_dir().glob("step_*") if (p / "state.json").is_file())
        if not ckpts:
            return
        last = ckpts[-1]
        try:
            state = json.loads((last / "state.json").read_text())
            trainable = {n: p for n, p in self._unwrapped().named_parameters() if p.requires_grad}
            copy_weights_(trainable, load_safetensors(last / "model.safetensors"), last / "model.safetensors")
            if self.ema is not None and (last / "ema.safetensors").is_file():
                self.ema = load_safetensors(last / "ema.safetensors")
            self.optimizer.load_state_dict(torch_load_safe(last / "optimizer.pt"))
            extra = self.extra_state()
            if extra:
                saved = torch_load_safe(last / "extra.pt")
                for k, v in extra.items():
                    v.load_state_dict(saved[k])
        except (json.JSONDecodeError, KeyError) as e:
            raise AssetError(f"checkpoint '{last}' is corrupt ({e}); delete it to resume from the previous one") from e
        self.iteration = int(state["iteration"])
        self.train_seconds = float(state.get("train_seconds", 0.0))
        print(f"train: resumed from {last} at iteration {self.iteration}")

    def save_snapshot(self) -> Path:
        """Inference snapshot: EMA weights (or the raw ones) + what is needed to sample."""
        final = self.out / "final"
        if self.accelerator.is_main_process:
            final.mkdir(parents=True, exist_ok=True)
            model = self._unwrapped()
            weights = self.ema if self.ema is not None else {n: p for n, p in model.named_parameters() if p.requires_grad}
            atomic_save_safetensors(weights, final / "generator.safetensors")
            meta = {"method": self.cfg.method, "backbone": self.cfg.backbone, "iteration": self.iteration,
                    "train_seconds": round(self.train_seconds, 3),
                    **self.snapshot_meta()}
            atomic_write_bytes(final / "generator.json", (json.dumps(meta, indent=2) + "\n").encode())
            save_config(self.cfg, final / "config.yaml")
        return final
