"""Distributed correctness of the engine: 2 CPU processes vs 1 process with the same global batch.

    .venv/bin/python benchmarks/distributed_check.py --json benchmarks/results/distributed_check.json
    .venv/bin/python benchmarks/distributed_check.py --parallel fsdp --json benchmarks/results/distributed_check_fsdp.json
    .venv/bin/python benchmarks/distributed_check.py --method distar --json benchmarks/results/distributed_check_distar.json

`--parallel fsdp` runs the two processes with the denoiser sharded (utils/fsdp.py) and
checks them against the same 1-process reference. `--method distar` (or `dipp`) checks
Diff-Instruct* (DI++) on its world preset: the generator, and also the fake score psi, whose
gradients DDP averages too (trainers/fake_score.py), so its weights must match as well.

What "the same global batch" means here: rank r of a 2-process run draws its micro-batch
from the stream seeded `seed * 2 + r` (STYLE 10), so a plain 1-process run sees different
prompts and noise. The reference is therefore a 1-process run with grad_accum=2 whose micro
-batch m is drawn from rank m's stream (`Trainer.step_generator` overridden): it computes the
same gradient, mean over the two micro-batches, as DDP's all-reduce mean. They may differ by
float rounding only (summation order). For scale, the script also reports the distance to a
plain 1-process run at batch 2 x 2 (same size, different samples) and the size of the update.

Checks (all recorded in the JSON):
  * `accelerate launch --cpu --num_processes 2` of the world R0 preset, tiny settings, ends
    (no hang at checkpoint barriers) and both ranks hold identical weights at the end;
  * its final raw weights match the emulated 1-process run within `--tolerance` (max abs), and
    for DI*/DI++ so do both ranks' and the emulation's fake-score weights;
  * a 2-process run stopped at iteration 2 and relaunched resumes on *both* ranks from the
    same checkpoint and ends bitwise equal to the straight 2-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"r0": "world_r0.yaml", "distar": "world_distar.yaml", "dipp": "world_dipp4.yaml"}
SETTINGS = ["batch_size=2", "checkpoint_every=2", "track_every=0", "threads=1", "log_every=1", "sample_every=1000"]
METHOD_SETTINGS = {"r0": [], "distar": ["di.diagnostics_every=2"], "dipp": ["di.diagnostics_every=2"]}


def make_trainer(out: Path, iterations: int, overrides=(), emulate_ranks: int = 0, method: str = "r0"):
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.trainers import TRAINERS
    from rzero.utils.seeding import derived_generator

    cfg = load_config(TrainConfig, ROOT / "configs" / PRESETS[method],
                      [*SETTINGS, *METHOD_SETTINGS[method], f"iterations={iterations}", *overrides])
    base = TRAINERS[cfg.method]

    class Emulated(base):
        """Micro-batch m of iteration i = what rank m of an `emulate_ranks`-process run draws."""

        def step_generator(self, micro):
            return derived_generator(self.cfg.seed * emulate_ranks + micro, "train", self.iteration)

    return (Emulated if emulate_ranks else base)(cfg, out)


def worker(args) -> int:
    """Inside `accelerate launch`: train, then every rank writes its own copy of the weights."""
    import torch

    from rzero.utils.io import atomic_save_safetensors

    torch.set_num_threads(1)
    tr = make_trainer(Path(args.out), args.iterations, [f"parallel={args.parallel}"], method=args.method)
    tr.fit()
    rank = tr.accelerator.process_index
    params = tr.trainable_state()  # whole tensors (gathered from the shards under FSDP)
    atomic_save_safetensors(params, Path(args.out) / f"rank{rank}.safetensors")
    if hasattr(tr, "fake"):  # DI*/DI++: psi must stay the same network on every rank
        atomic_save_safetensors(tr.fake.net.state_dict(), Path(args.out) / f"rank{rank}_fake.safetensors")
    info = {"rank": rank, "num_processes": tr.accelerator.num_processes,
            "distributed_type": str(tr.accelerator.distributed_type), "sharded": tr.sharded}
    (Path(args.out) / f"rank{rank}.json").write_text(json.dumps(info) + "\n")
    tr.release_processes()
    return 0


def launch(out: Path, iterations: int, timeout: float, launcher: str = "torchrun",
           parallel: str = "ddp", method: str = "r0") -> tuple[int, str, float]:
    """Two CPU processes. `accelerate`: the literal `accelerate launch --cpu --num_processes 2`
    (accelerate 1.15 runs ONE process for it on one machine: multi-CPU needs an mpirun
    hostfile); `torchrun`: torch.distributed.run, which is what accelerate uses for multi-GPU,
    with gloo on CPU: the real 2-process check."""
    script = [str(Path(__file__).resolve()), "--worker", "--out", str(out), "--iterations", str(iterations),
              "--parallel", parallel, "--method", method]
    if launcher == "accelerate":
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines",
               "1", "--mixed_precision", "no", "--dynamo_backend", "no", *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", *script]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        return proc.returncode, proc.stdout + proc.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        return 124, f"timed out (a hang?) after {timeout} s\n{e.stdout or ''}{e.stderr or ''}", time.perf_counter() - t0


def load(path: Path) -> dict:
    from rzero.utils.io import load_safetensors

    return load_safetensors(path)


def fake_score(run: Path, step: int) -> dict:
    """psi's weights in the run's checkpoint at `step` (DI*/DI++ keep them in extra.pt)."""
    from rzero.utils.io import torch_load_safe

    return torch_load_safe(run / "checkpoints" / f"step_{step:06d}" / "extra.pt")["fake_score"]["net"]


def distance(a: dict, b: dict) -> dict:
    import torch

    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).flatten() for k in a])
    ref = torch.cat([a[k].flatten() for k in a])
    return {"max_abs": float(diff.abs().max()), "rel_l2": float(diff.norm() / ref.norm()),
            "bitwise_equal": all(torch.equal(a[k], b[k]) for k in a)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--work", default=None, help="default: runs/distributed_check[_fsdp]")
    ap.add_argument("--tolerance", type=float, default=1e-5, help="max abs weight difference allowed")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--parallel", choices=["ddp", "fsdp"], default="ddp", help="how the 2-process runs share the model")
    ap.add_argument("--method", choices=sorted(PRESETS), default="r0", help="which world preset (r0: world_r0.yaml)")
    ap.add_argument("--json", default=None, help="default: benchmarks/results/distributed_check[_fsdp|_METHOD].json")
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    par, method = args.parallel, args.method
    if par == "fsdp" and method != "r0":
        ap.error("parallel=fsdp shards method r0 only (the config refuses DI*/DI++ under FSDP)")
    suffix = ("_fsdp" if par == "fsdp" else "") + ("" if method == "r0" else f"_{method}")
    if args.json is None:
        args.json = f"benchmarks/results/distributed_check{suffix}.json"
    args.work = args.work or f"runs/distributed_check{suffix}"

    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    it = args.iterations
    result: dict = {"preset": PRESETS[method], "settings": [*SETTINGS, *METHOD_SETTINGS[method], f"iterations={it}"],
                    "parallel": par, "tolerance_max_abs": args.tolerance}

    # 0) what the literal accelerate command does (recorded, not the check)
    if par == "ddp" and method == "r0":
        code, log, secs = launch(work / "accelerate_cpu", 1, args.timeout, launcher="accelerate")
        (work / "accelerate_cpu.log").write_text(log)
        ranks = sorted((work / "accelerate_cpu").glob("rank*.json"))
        result["accelerate_launch_cpu_num_processes_2"] = {
            "returncode": code, "processes_started": len(ranks),
            "num_processes_seen": [json.loads(r.read_text())["num_processes"] for r in ranks]}

    # 1) the 2-process run (folder "ddp" whatever --parallel says: the names below refer to it)
    code, log, secs = launch(work / "ddp", it, args.timeout, parallel=par, method=method)
    (work / "ddp.log").write_text(log)
    result["ddp"] = {"returncode": code, "seconds": round(secs, 1)}
    if code != 0:
        print(f"distributed_check: 2-process run failed ({code}); see {work / 'ddp.log'}", file=sys.stderr)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 1
    ddp = load(work / "ddp" / "checkpoints" / f"step_{it:06d}" / "model.safetensors")
    result["sharded"] = [json.loads((work / "ddp" / f"rank{r}.json").read_text())["sharded"] for r in (0, 1)]
    result["ranks_agree"] = distance(load(work / "ddp" / "rank0.safetensors"), load(work / "ddp" / "rank1.safetensors"))

    # 2) the 1-process emulation of the two ranks' micro-batches, and 3) a plain 1-process run
    emu_tr = make_trainer(work / "emulated", it, ["grad_accum=2"], emulate_ranks=2, method=method)
    init = {n: p.detach().clone() for n, p in emu_tr.named_trainable()}
    emu_tr.fit()
    emu = load(work / "emulated" / "checkpoints" / f"step_{it:06d}" / "model.safetensors")
    make_trainer(work / "plain", it, ["grad_accum=2"], method=method).fit()
    plain = load(work / "plain" / "checkpoints" / f"step_{it:06d}" / "model.safetensors")
    result["ddp_vs_emulated"] = distance(ddp, emu)
    result["ddp_vs_plain_1proc_other_samples"] = distance(ddp, plain)
    result["update_size_vs_init"] = distance(ddp, init)
    result["ddp_vs_emulated_ema"] = distance(load(work / "ddp" / "final" / "generator.safetensors"),
                                             load(work / "emulated" / "final" / "generator.safetensors"))
    fake_ok = True
    if method != "r0":  # psi: both ranks hold one network, and it is the emulation's
        result["fake_ranks_agree"] = distance(load(work / "ddp" / "rank0_fake.safetensors"),
                                              load(work / "ddp" / "rank1_fake.safetensors"))
        result["fake_ddp_vs_emulated"] = distance(fake_score(work / "ddp", it), fake_score(work / "emulated", it))
        result["fake_update_size_vs_init"] = distance(fake_score(work / "ddp", it),
                                                      {k: v.detach() for k, v in emu_tr.ref.unet.state_dict().items()})
        fake_ok = (result["fake_ranks_agree"]["bitwise_equal"]
                   and result["fake_ddp_vs_emulated"]["max_abs"] <= args.tolerance)

    # 4) resume on every rank: stop at iteration 2, relaunch to `it`
    half = 2
    code1, log1, _ = launch(work / "ddp_resumed", half, args.timeout, parallel=par, method=method)
    code2, log2, _ = launch(work / "ddp_resumed", it, args.timeout, parallel=par, method=method)
    (work / "ddp_resumed.log").write_text(log1 + log2)
    resumed_lines = re.findall(r"train: resumed from (\S+) at iteration (\d+)", log2)
    resume = {"returncodes": [code1, code2], "resume_lines": resumed_lines,
              "all_ranks_same_checkpoint": len(resumed_lines) == 2 and len(set(resumed_lines)) == 1}
    if code2 == 0:
        resume["vs_straight"] = distance(ddp, load(work / "ddp_resumed" / "checkpoints" / f"step_{it:06d}" /
                                                   "model.safetensors"))
    result["resume"] = resume

    ok = (result["ranks_agree"]["bitwise_equal"] and all(result["sharded"]) == (par == "fsdp")
          and result["ddp_vs_emulated"]["max_abs"] <= args.tolerance and fake_ok
          and resume["all_ranks_same_checkpoint"] and resume.get("vs_straight", {}).get("bitwise_equal", False))
    result["passed"] = bool(ok)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
