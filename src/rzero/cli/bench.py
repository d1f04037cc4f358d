"""`rzero bench`: the world benchmark (R0's Table 1 analogue, ablations, claims) -> docs/results.md."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the world benchmark (all methods, equal wall-clock, ablations) and write docs/results.md",
        description="Train every method of R0's Table 1 analogue and the ablations for the same wall-clock, "
                    "evaluate them with the world protocol and write docs/results.md with plots and a verdict on "
                    "each claim. Resumable: finished runs are skipped, unfinished ones resume from checkpoints.")
    p.add_argument("--quick", action="store_true", help="the 10-minute version: 1 seed, short budgets, small eval")
    p.add_argument("--out", default=None,
                   help="folder of the runs and their JSON (default runs/bench; with --quick runs/bench_quick)")
    p.add_argument("--docs", default="docs", help="where results.md and its PNGs go (default docs)")
    p.add_argument("--jobs", type=int, default=None, help="parallel runs, one CPU thread each (default 2)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per table row (default 3; quick 1)")
    p.add_argument("--time-budget", type=float, default=None, help="training seconds per run (default 300; quick 30)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="where runs train (default cpu; the default budgets are CPU budgets, pass a longer "
                        "--time-budget on a GPU); the report names the device")
    p.add_argument("--only", nargs="+", metavar="METHOD", help="run only these methods (e.g. teacher r0 dipp4)")
    p.add_argument("--report", action="store_true", help="only rebuild results.md and the plots from the saved JSON")
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, budget, estimated time) and exit")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..apps.bench import BenchSettings, make_jobs, plan_text, run_bench, write_report

    out = Path(args.out or ("runs/bench_quick" if args.quick else "runs/bench"))
    docs = Path(args.docs)
    if args.report:
        path = write_report(out, docs)
        print(f"bench: report written to {path}")
        return 0
    s = BenchSettings.quick() if args.quick else BenchSettings.full()
    for flag, key in (("jobs", "jobs"), ("seeds", "seeds"), ("time_budget", "time_budget_s")):
        value = getattr(args, flag)
        if value is not None:
            if value <= 0:
                raise ValueError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
            setattr(s, key, type(getattr(s, key))(value))
    if args.device is not None:
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError("--device cuda: no CUDA GPU is visible to torch; run on a GPU machine or "
                                 "drop --device")
        s.device = args.device
    if args.dry_run:
        print(plan_text(make_jobs(s, args.only), s)[0])
        return 0
    path = run_bench(out, s, only=args.only, docs=docs)
    print(f"bench: report written to {path}")
    return 0
