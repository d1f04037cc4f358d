"""`rzero bench`: the world benchmark behind docs/results.md (R0's Table 1 analogue, ablations,
curves, grids, and a verdict on each claim of SPEC 5 computed by explicit rules).

Layout of `--out` (default runs/bench):
    plan.json                   the settings the runs were started with
    runs/<name>_s<seed>/        one `rzero train` run dir per (method, seed) ...
        snapshots/at_<s>s/      ... its snapshot at each earlier training budget (final/ is the last) ...
        eval_at_<s>s.json       ... the protocol at each budget ...
        eval.json               ... and, once finished, every number the report uses (the last
                                budget's metrics, every budget's under "budgets", the curves
                                against training wall-clock under "curve")
        grid.png                fixed prompts x 4 seeds
Every job is skipped when its eval.json exists and resumed from its checkpoints otherwise, so
an interrupted bench continues where it stopped. `--report` rebuilds the Markdown and plots
from the eval.json files alone.

Fairness: every trained method gets the same training wall-clock (`time_budget_s`, carried
across resumes by the engine), one thread per run, the same rewards and the same evaluation
protocol (eval/world_eval.py) on prompt sets seeded by the run's seed.

Modules: plan.py (methods, ablations, settings, time plan), job.py (one job in a worker process),
run.py (the driver), claims.py (the verdict rules), fronts.py (the rules on Pareto fronts and on
time-to-threshold), report.py (docs/results.md and plots).
"""

from .plan import BenchSettings, make_jobs, plan_text
from .report import write_report
from .run import run_bench

__all__ = ["BenchSettings", "make_jobs", "plan_text", "run_bench", "write_report"]
