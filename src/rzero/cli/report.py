"""`rzero report RUN_DIR`: a self-contained HTML report of one training run."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("report", help="write a self-contained HTML report of a training run",
                       description="One HTML file (no remote assets) with the run's config, metrics, training "
                                   "curves, sample grids over training, the teacher and the generator side by "
                                   "side at fixed prompts and seeds, and the reward-hacking alarm. Works on a run "
                                   "that is still going or was interrupted.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of `rzero train`")
    p.add_argument("--out", default=None, help="HTML file to write (default RUN_DIR/report.html)")
    p.add_argument("--assets", default=None, help="world asset folder (default: the package's own)")
    p.add_argument("--no-teacher", action="store_true", help="skip sampling the teacher grid")
    p.add_argument("--teacher-steps", type=int, default=25, help="teacher DDIM steps (default 25)")
    p.add_argument("--teacher-cfg", type=float, default=7.5, help="teacher CFG scale (default 7.5)")
    p.add_argument("--max-grids", type=int, default=12, help="most training-time grids shown, evenly spaced "
                   "(default 12)")
    p.set_defaults(handler=run)


def run(args) -> int:
    from .main import check_output_file

    if not 0 < args.teacher_steps <= 1000:
        raise ValueError(f"--teacher-steps must be in 1..1000 (the schedule's timesteps), got {args.teacher_steps}")
    if args.max_grids < 2:
        raise ValueError(f"--max-grids must be >= 2 (the first and the last grid are always shown), got {args.max_grids}")
    check_output_file(args.out, "--out")
    from ..apps.run_report import write_report

    path = write_report(args.run_dir, args.out, asset_dir=args.assets, teacher=not args.no_teacher,
                        teacher_steps=args.teacher_steps, teacher_cfg=args.teacher_cfg, max_grids=args.max_grids)
    print(f"report: written to {path}")
    return 0
