"""Crash safety of `rzero train`: SIGKILL at random moments, resume, compare to a straight run.

    .venv/bin/python benchmarks/crash_resume.py --trials 10 --json benchmarks/results/crash_resume.json

1. One straight run of the world R0 preset at tiny settings (12 iterations, batch 4, a
   checkpoint every iteration, no tracking, 1 thread); its time per iteration sets the kill jitter.
2. Each trial starts the same command in its own folder and kills it with SIGKILL at a
   random point (`--kills` times per trial): after a random number k of logged iterations
   (k uniform in 0..iterations-1, counted in stats.jsonl, so start-up time under CPU load
   does not bunch the kills before the first checkpoint) plus a uniform fraction of one
   iteration's time, which lands kills inside steps and inside checkpoint writes alike.
   Then the command runs once more to completion.
3. The trial passes if that last run exits 0 and its final generator weights (and the last
   checkpoint's raw weights) are bitwise equal to the straight run's, and stats.jsonl holds
   each logged step exactly once.

Bitwise equality is expected on CPU: every step's randomness is derived from (seed, rank,
iteration) and the full optimizer/EMA state is restored (tests/test_r0.py proves resume at
step k equals a straight run). The result JSON records every kill: when, which checkpoints
were on disk, and whether a temporary (half-written) checkpoint folder was left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["iterations=12", "batch_size=4", "checkpoint_every=1", "track_every=0", "threads=1",
            "log_every=1", "sample_every=1000"]


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "rzero.cli.main", "train", str(ROOT / "configs" / "world_r0.yaml"), "--out", str(out),
            *SETTINGS]


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def run_to_end(out: Path, log) -> tuple[int, float]:
    t0 = time.perf_counter()
    proc = subprocess.run(command(out), env=env(), stdout=log, stderr=subprocess.STDOUT, timeout=1800)
    return proc.returncode, time.perf_counter() - t0


def logged_rows(out: Path) -> int:
    stats = out / "stats.jsonl"
    return len(stats.read_bytes().splitlines()) if stats.is_file() else 0


def kill_at(out: Path, after_rows: int, delay: float, log) -> dict:
    """Start the command; SIGKILL it `delay` s after stats.jsonl reaches `after_rows` rows
    (rows already there from earlier runs count); describe what was left on disk."""
    proc = subprocess.Popen(command(out), env=env(), stdout=log, stderr=subprocess.STDOUT)
    while proc.poll() is None and logged_rows(out) < after_rows:
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay)
        finished = True
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        finished = False
    ckpt = out / "checkpoints"
    names = sorted(p.name for p in ckpt.iterdir()) if ckpt.is_dir() else []
    return {"after_rows": after_rows, "delay_s": round(delay, 3), "finished_before_kill": finished, "returncode": proc.returncode,
            "left_on_disk": names, "half_written_left": any(n.startswith((".tmp_", ".trash_")) for n in names),
            "steps_complete": [n for n in names if n.startswith("step_") and (ckpt / n / "state.json").is_file()]}


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


def compare(a: Path, b: Path) -> tuple[bool, float]:
    import torch

    ta, tb = tensors(a), tensors(b)
    if ta.keys() != tb.keys():
        return False, float("inf")
    diff = max(float((ta[k] - tb[k]).abs().max()) for k in ta)
    return all(torch.equal(ta[k], tb[k]) for k in ta), diff


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kills", type=int, default=2, help="SIGKILLs per trial before the final resume")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--work", default="runs/crash_resume", help="scratch folder (deleted first)")
    ap.add_argument("--json", default="benchmarks/results/crash_resume.json")
    args = ap.parse_args()

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = random.Random(args.seed)  # benchmark harness only; training code never uses `random`
    with open(work / "straight.log", "w") as log:
        code, straight_s = run_to_end(work / "straight", log)
    if code != 0:
        print(f"crash_resume: the straight run failed (exit {code}); see {work / 'straight.log'}", file=sys.stderr)
        return 1
    ref_final = work / "straight" / "final" / "generator.safetensors"
    ref_ckpt = work / "straight" / "checkpoints" / "step_000012" / "model.safetensors"
    times = [json.loads(line)["time"] for line in (work / "straight" / "stats.jsonl").read_text().splitlines()]
    per_iter = (times[-1] - times[0]) / max(len(times) - 1, 1)
    print(f"straight run: {straight_s:.1f} s, {per_iter:.2f} s per iteration")

    trials = []
    for i in range(args.trials):
        out = work / f"trial_{i:02d}"
        t0 = time.perf_counter()
        with open(work / f"trial_{i:02d}.log", "w") as log:
            kills = [kill_at(out, rng.randrange(12), rng.uniform(0.0, per_iter), log) for _ in range(args.kills)]
            code, _ = run_to_end(out, log)
        trial = {"trial": i, "kills": kills, "final_returncode": code, "wall_s": round(time.perf_counter() - t0, 1)}
        if code == 0:
            trial["final_bitwise_equal"], trial["final_max_abs_diff"] = compare(ref_final, out / "final" / "generator.safetensors")
            trial["checkpoint_bitwise_equal"], _ = compare(ref_ckpt, out / "checkpoints" / "step_000012" / "model.safetensors")
            steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
            trial["stats_steps_once_each"] = steps == list(range(1, 13))
        trial["passed"] = bool(code == 0 and trial.get("final_bitwise_equal") and trial.get("checkpoint_bitwise_equal")
                               and trial.get("stats_steps_once_each"))
        trials.append(trial)
        print(f"trial {i}: kills after {[(k['after_rows'], k['delay_s']) for k in kills]} (rows, s), left {[k['steps_complete'][-1:] for k in kills]}, "
              f"half-written {[k['half_written_left'] for k in kills]} -> {'PASS' if trial['passed'] else 'FAIL'}",
              flush=True)

    all_kills = [k for t in trials for k in t["kills"]]
    summary = {
        "trials": len(trials), "passed": sum(t["passed"] for t in trials),
        "kills": len(all_kills), "kills_that_hit_a_running_process": sum(not k["finished_before_kill"] for k in all_kills),
        "kills_before_first_checkpoint": sum(not k["steps_complete"] for k in all_kills),
        "kills_leaving_half_written_folder": sum(k["half_written_left"] for k in all_kills),
        "max_abs_diff": max((t.get("final_max_abs_diff", float("inf")) for t in trials), default=None),
        "straight_run_s": round(straight_s, 1), "seconds_per_iteration": round(per_iter, 3), "settings": SETTINGS,
    }
    result = {"summary": summary, "trials": trials}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0 if summary["passed"] == summary["trials"] else 1


if __name__ == "__main__":
    sys.exit(main())
