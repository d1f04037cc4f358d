"""Guards of a training run folder that the engine and the CLI call (docs/reliability.md).

Kept apart from the engine so each guard is a small function with its own tests:

* `lock_run_folder`: an advisory lock, so two `rzero train` never write one folder at once;
* `checkpoint_state_problem`: the schema of a checkpoint's state.json (types and ranges);
* `truncate_stats`: stats rows of iterations that will run again are dropped on every resume;
* `finite_values`, `guarded_optimizer_step`: the non-finite guard's checks on reward values
  and on the weights an optimizer step produced;
* `resume_changes`: what a resumed run's config changes against the saved one.
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .io import AssetError, atomic_write_bytes, shorten

__all__ = ["checkpoint_state_problem", "finite_values", "guarded_optimizer_step", "lock_run_folder",
           "read_stats_rows", "resume_changes", "truncate_stats", "unlock_run_folder"]


# ---------------------------------------------------------------- lock


def lock_run_folder(path: str | Path) -> int | None:
    """Take the run folder's exclusive advisory lock (flock on the folder itself: no lock file
    is created, and the kernel releases it when the process dies, even by SIGKILL).

    Returns the descriptor to pass to `unlock_run_folder`; None where flock is unavailable.
    A folder already locked by another process is a one-line AssetError.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise AssetError(f"run folder '{shorten(str(path), 200)}' is in use by another `rzero train` (it holds the "
                         "folder's lock); wait for it to finish or stop it, or pass another --out") from None
    return fd


def unlock_run_folder(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor releases the flock


# ---------------------------------------------------------------- checkpoint state.json


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def checkpoint_state_problem(state: Any) -> str:
    """What makes a parsed state.json unusable for resume (a few words), or "" if nothing.

    Every field resume reads is checked for its type and range here, so a state.json that is
    valid JSON but wrong (a null, a string, a negative count) is an unusable checkpoint like a
    truncated one, never a traceback halfway through loading.
    """
    if not isinstance(state, dict):
        return "state.json is not a JSON object"
    if not _int(state.get("iteration")) or state["iteration"] < 0:
        return "state.json has no integer 'iteration' >= 0"
    for key in ("skipped_steps", "consecutive_skips"):
        if key in state and (not _int(state[key]) or state[key] < 0):
            return f"state.json '{key}' is not an integer >= 0"
    if "train_seconds" in state and (not _num(state["train_seconds"]) or state["train_seconds"] < 0):
        return "state.json 'train_seconds' is not a number >= 0"
    acc = state.get("alarm_accumulator")
    if acc is not None and not (isinstance(acc, list) and len(acc) == 2 and _num(acc[0]) and _int(acc[1])):
        return "state.json 'alarm_accumulator' is not [number, integer]"
    alarm = state.get("alarm")
    if alarm is not None:
        if not isinstance(alarm, dict):
            return "state.json 'alarm' is not an object"
        prev = alarm.get("previous")
        if prev is not None and not (isinstance(prev, list) and len(prev) == 2 and all(_num(v) for v in prev)):
            return "state.json 'alarm.previous' is not a pair of numbers"
        if not _int(alarm.get("streak", 0)) or not isinstance(alarm.get("events", []), list):
            return "state.json 'alarm' has a non-integer 'streak' or non-list 'events'"
    files = state.get("files")
    if files is not None:
        if not isinstance(files, dict):
            return "state.json 'files' is not a mapping"
        for name, digest in files.items():
            if "/" in name or "\\" in name or name in ("", ".", ".."):
                return f"state.json lists a file outside the checkpoint ({shorten(name, 60)})"
            if digest is not None and not isinstance(digest, str):
                return f"state.json's sha256 of {shorten(name, 60)} is not a string"
    return ""


# ---------------------------------------------------------------- stats.jsonl


def read_stats_rows(path: str | Path) -> list[dict]:
    """stats.jsonl rows, each checked to be an object with an integer 'step' (a half-written
    last line is skipped); anything else is a one-line ValueError naming the line."""
    from .stats import read_jsonl

    rows = read_jsonl(path)
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not _int(row.get("step")):
            raise ValueError(f"'{path}': row {number} is not a JSON object with an integer 'step'; fix or delete "
                             "that line (stats.jsonl is the run's log; training does not need it to resume)")
    return rows


def truncate_stats(path: str | Path, keep_through: int | None) -> None:
    """Keep only the rows of iterations <= keep_through (None: no row) and drop a cut last line.

    Called on every resume: rows logged after the resumed checkpoint belong to iterations that
    run again, and a run that restarts from scratch (killed before its first checkpoint)
    logs everything again, its step-0 evaluation included.
    """
    p = Path(path)
    if not p.is_file():
        return
    rows = read_stats_rows(p)
    keep = [r for r in rows if keep_through is not None and r["step"] <= keep_through]
    raw = p.read_bytes()
    if len(keep) != len(rows) or (raw and not raw.endswith(b"\n")):
        text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in keep)
        atomic_write_bytes(p, text.encode())


# ---------------------------------------------------------------- non-finite guard


def finite_values(metrics: dict[str, Any]) -> bool:
    """False if a reward value or the loss among a step's metrics is NaN or infinite.

    A reward can be NaN while its gradient is finite (the composite reward's normalized
    gradient surrogate does not carry the value), so the loss alone does not show it.
    """
    for k, v in metrics.items():
        if k == "loss" or k.startswith("reward/"):
            try:
                if not math.isfinite(float(v)):
                    return False
            except (TypeError, ValueError):
                return False
    return True


def guarded_optimizer_step(optimizer, params) -> bool:
    """optimizer.step(); False if it overflowed: the step raised an overflow (a learning rate
    beyond float range) or left a non-finite weight. The weights are then unusable; the caller
    stops without saving them."""
    import torch

    try:
        optimizer.step()
    except RuntimeError as e:
        if "overflow" not in str(e):
            raise
        return False
    with torch.no_grad():
        flags = [torch.isfinite(p).all() for p in params]
        return bool(torch.stack(flags).all()) if flags else True


# ---------------------------------------------------------------- resume: config changes

@contextmanager
def own_optimizer_settings(optimizer):
    """Around the loading of a checkpoint's optimizer state: keep the hyperparameters this
    optimizer was built with (lr, betas, weight decay... from the resumed run's config), take
    only the moments from the checkpoint.

    `load_state_dict` brings back the saved param groups, settings included, so without this a
    setting changed for the resumed run (`optim.lr=5e-5` on a run trained at 1e-4) would be
    ignored without a word; resuming may change such fields freely (`resume_changes`).
    """
    own = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    yield
    for group, settings in zip(optimizer.param_groups, own):
        group.update(settings)


# Fields that decide what the checkpoint's tensors are or mean: changing one on resume makes a
# different run out of an existing one (new method, other model, other generator shape).
STRUCTURAL = ("method", "backbone", "backbone_path", "generator.steps", "generator.timesteps", "generator.renoise",
              "lora.rank", "lora.alpha", "lora.target_modules")


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def resume_changes(saved, new) -> list[str]:
    """'key: old -> new' for each STRUCTURAL field that differs between two TrainConfigs."""
    out = []
    for key in STRUCTURAL:
        a, b = _get(saved, key), _get(new, key)
        if a != b:
            out.append(f"{key}: {shorten(repr(a), 40)} -> {shorten(repr(b), 40)}")
    return out
