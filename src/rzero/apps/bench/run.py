"""The bench driver: check that `--out` holds this bench's settings and presets, run every
unfinished job in worker processes, then write the report."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from .job import job_config, run_job
from .plan import BenchSettings, Job, make_jobs, plan_text
from .report import write_report


# Settings that only size the plan or the parallelism: a bench may resume with other values.
_PLAN_ONLY = ("jobs", "startup_s", "eval_s", "track_overhead", "teacher_eval_s")
# Settings added after a plan.json was written, with the value every bench before them had.
_BEFORE_THE_SETTING = {"device": "cpu"}


def _check_same_settings(out: Path, s: BenchSettings) -> None:
    """Finished runs are reused by name, so a folder must hold one bench's settings only."""
    path = out / "plan.json"
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    # A setting the folder's plan.json lacks is newer than its runs (e.g. budgets): they differ too,
    # unless every bench before the setting had the value it has now.
    differ = sorted(k for k, v in asdict(s).items()
                    if k not in _PLAN_ONLY and before.get(k, _BEFORE_THE_SETTING.get(k, object())) != v)
    if differ:
        raise ValueError(f"'{out}' holds a bench run with other settings ({', '.join(differ)} differ, e.g. a "
                         f"--quick bench next to a full one); pass another --out or delete '{out}'")


def _check_runs_match_presets(out: Path, jobs: list[Job], s: BenchSettings) -> None:
    """A run started before its preset changed would be reused (or resumed) under the new name."""
    from ...config import load_config
    from ...config.io import to_dict
    from ...config.schema import TrainConfig

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
    from ...utils.io import atomic_write_bytes

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
