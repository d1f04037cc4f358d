"""docs/results.md and its plots, from the eval.json files of a bench's runs alone."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

from .claims import ABS_TOL, claims, mean_std, metric_values
from .fronts import THRESHOLD_FRACTION, TIME_TOLERANCE
from .plan import ABLATION_EXTRA, ABLATION_REFERENCE, ABLATIONS, GRID_SEEDS, TABLE

TABLE_COLS = [("reward_world_clip", "clip", "{:.3f}"), ("reward_world_judge", "judge", "{:.3f}"),
              ("reward_world_quality", "quality", "{:.2f}"), ("acc_L1", "acc L1", "{:.3f}"),
              ("acc_L2", "acc L2", "{:.3f}"), ("acc_L3", "acc L3", "{:.3f}"), ("acc_L4", "acc L4", "{:.3f}"),
              ("acc_heldout", "acc held-out", "{:.3f}"), ("world_fid", "world-FID", "{:.2f}"),
              ("diversity", "diversity", "{:.3f}"), ("nfe", "NFE", "{:.0f}"), ("ms_per_image", "ms/image", "{:.2f}"),
              ("train_seconds", "train s", "{:.0f}"), ("iterations", "iterations", "{:.0f}")]
ABL_COLS = [("reward_world_clip", "clip", "{:.3f}"), ("reward_world_judge", "judge", "{:.3f}"),
            ("reward_world_quality", "quality", "{:.2f}"), ("acc_mean", "acc L1-L4", "{:.3f}"),
            ("acc_heldout", "acc held-out", "{:.3f}"), ("world_fid", "world-FID", "{:.2f}"),
            ("diversity", "diversity", "{:.3f}"), ("iterations", "iterations", "{:.0f}")]


def load_results(out: Path) -> dict[str, list[dict]]:
    """name -> the eval.json of each finished seed (sorted by seed)."""
    by_name: dict[str, list[dict]] = {}
    for path in sorted((out / "runs").glob("*/eval.json")):
        r = json.loads(path.read_text())
        for entry in [r, *r.get("budgets", [])]:
            entry["acc_mean"] = sum(entry[f"acc_L{lv}"] for lv in (1, 2, 3, 4)) / 4
            entry["acc_L34"] = (entry["acc_L3"] + entry["acc_L4"]) / 2
        if "tracked" not in r and r.get("curve"):  # older eval.json stored it; it is the curve's mean column
            t = r["curve"]["track"]
            r["tracked"] = [[it, acc, fid] for it, acc, fid in
                            zip(t["iteration"], t["acc_mean"], t.get("world_fid", [None] * len(t["iteration"])))
                            if acc is not None]
        r["run_dir"] = str(path.parent)
        by_name.setdefault(r["name"], []).append(r)
    for rows in by_name.values():
        rows.sort(key=lambda r: r["seed"])
    return by_name


def _cell(rows: list[dict], key: str, fmt: str) -> str:
    m, s = mean_std(metric_values(rows, key))
    if math.isnan(m):
        return "n/a"
    return fmt.format(m) + ("" if math.isnan(s) else " ± " + fmt.format(s))


def _table(rows_by_label: list[tuple[str, list[dict]]], cols) -> str:
    head = "| method | n | " + " | ".join(c[1] for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for label, rows in rows_by_label:
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(_cell(rows, k, f) for k, _, f in cols) + " |")
    return "\n".join(lines)


BUDGET_COLS = [("acc_L34", "mean accuracy L3/L4", "{:.3f}"), ("world_fid", "world-FID", "{:.2f}"),
               ("reward_world_judge", "judge reward", "{:.3f}")]


def result_budgets(res: dict[str, list[dict]]) -> list[float]:
    """Every training budget some run was evaluated at, increasing."""
    return sorted({e["budget_s"] for rows in res.values() for r in rows for e in r.get("budgets", [])})


def _budget_cell(rows: list[dict], key: str, fmt: str, budget: float) -> str:
    # The teacher is not trained: its one evaluation stands at every budget.
    entries = [r if r.get("preset") is None else next((e for e in r.get("budgets", []) if e["budget_s"] == budget),
                                                       None) for r in rows]
    return _cell([e for e in entries if e is not None], key, fmt)


def _budget_tables(res: dict[str, list[dict]], budgets: list[float]) -> list[str]:
    """One table per metric of BUDGET_COLS: every method (rows) at every budget (columns)."""
    order = [(name, label) for name, label, _ in TABLE] + [(name, f"{label} [{name}]")
                                                           for _, name, label, _, _ in ABLATIONS]
    lines = []
    for key, title, fmt in BUDGET_COLS:
        lines += [f"### {title}", "", "| method | n | " + " | ".join(f"{b:g} s" for b in budgets) + " |",
                  "|---" * (len(budgets) + 2) + "|"]
        for name, label in order:
            if name in res:
                cells = " | ".join(_budget_cell(res[name], key, fmt, b) for b in budgets)
                lines.append(f"| {label} | {len(res[name])} | {cells} |")
        lines.append("")
    return lines


def write_report(out: Path, docs: Path) -> Path:
    """docs/results.md + PNGs, from out/runs/*/eval.json (and plan.json) alone."""
    res = load_results(out)
    if not res:
        raise ValueError(f"no finished runs in '{out / 'runs'}'; run `rzero bench` first (--out {out})")
    docs.mkdir(parents=True, exist_ok=True)
    plan = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    seed0 = {name: rows[0] for name, rows in res.items()}

    # Plots: curves per method (against training time; iterations for older eval.json), DI
    # diagnostics, grids.
    budgets = result_budgets(res)
    timed = {TABLE_LABEL.get(n, n): seed0[n] for n in seed0 if (seed0[n].get("curve") or {}).get("track")}
    if timed:
        plot_curves(timed, docs / "bench_curves.png", budgets)
    else:
        _plot_tracked({TABLE_LABEL.get(n, n): seed0[n] for n in seed0 if seed0[n].get("tracked")},
                      docs / "bench_curves.png")
    diag = {TABLE_LABEL.get(n, n): seed0[n] for n in ("distar", "dipp1", "dipp4") if seed0.get(n, {}).get("diagnostics")}
    if diag:
        _plot_diagnostics(diag, docs / "bench_diagnostics.png")
    grids = []
    for name, _, _ in TABLE:
        if name in seed0 and (Path(seed0[name]["run_dir"]) / "grid.png").is_file():
            shutil.copyfile(Path(seed0[name]["run_dir"]) / "grid.png", docs / f"bench_grid_{name}.png")
            grids.append(name)

    table_rows = [(label, res[name]) for name, label, _ in TABLE if name in res]
    lines = ["# Benchmark results on the built-in world", "",
             "Produced by `rzero bench` (regenerate with `rzero bench --report`); every number below is read "
             f"from `{out}/runs/<method>_s<seed>/eval.json`. Do not edit by hand.", ""]
    if plan:
        at = f", evaluated at {', '.join(f'{b:g}' for b in budgets)} s" if len(budgets) > 1 else ""
        trained_on = sorted({r.get("device", "cpu") for rows in res.values() for r in rows if r.get("iterations")})
        where = ("one CPU thread" if trained_on in ([], ["cpu"])
                 else f"on {', '.join(d if d != 'cpu' else 'CPU' for d in trained_on)}")
        lines += [f"Settings: {plan.get('seeds')} seed(s) per table row, {plan.get('ablation_seeds')} per ablation, "
                  f"{plan.get('time_budget_s'):g} s of training wall-clock per run{at} ({where}), "
                  f"evaluation on {4 * plan.get('prompts_per_level', 0) + plan.get('heldout_prompts', 0)} prompts "
                  f"(+ {plan.get('diversity_prompts')}x{plan.get('diversity_seeds')} for diversity). "
                  f"Job time summed over all runs (start-up, training, tracking, evaluation): "
                  f"{sum(r.get('job_seconds', 0) for rows in res.values() for r in rows) / 60:.1f} min.", ""]
    lines += ["## Table 1 analogue", "",
              "Mean ± std over seeds (n = seeds). clip / judge / quality: the training rewards on the evaluation "
              "images; acc: held-out inspector all-correct accuracy per prompt level; world-FID against real "
              "renders (lower is better); diversity across seeds; NFE counts CFG twice; train s: training "
              "wall-clock.", "", _table(table_rows, TABLE_COLS), ""]
    if len(budgets) > 1:
        lines += ["## At each training budget", "",
                  "The same evaluation on each run's snapshot after that much training wall-clock (mean ± std "
                  "over seeds; the untrained teacher in every column).", ""] + _budget_tables(res, budgets)
    lines += ["## Claims of SPEC 5", "",
              "Verdicts by the rules in `rzero.apps.bench.claims` and `rzero.apps.bench.fronts` "
              "(docs/bench.md): (2) by Pareto dominance of R0's lambda_w front over DI++'s KL-weight front in "
              "(mean L3/L4 accuracy, world-FID) at the largest shared budget; (4) and (6) by the time to a tracked "
              f"accuracy threshold {THRESHOLD_FRACTION:g} of the way from start to the lower plateau (faster by "
              f"more than {TIME_TOLERANCE:.0%} and one tracking interval); the others by `compare` and "
              "`majority_verdict`: a difference counts when it exceeds both two standard errors and a per-metric "
              f"tolerance ({ABS_TOL}). Without the runs a rule needs, the evidence says which older rule was "
              "used.", ""]
    for c, verdict, ev in claims(res):
        lines.append(f"- **{c}**: **{verdict}** — {ev}")
    lines += ["", "## Ablations (on R0)", ""]
    for group in dict.fromkeys(g for g, *_ in ABLATIONS):
        ref_name, ref_label = ABLATION_REFERENCE[group]
        rows = [(f"{ref_label} [{ref_name}]", res[ref_name])] if ref_name in res else []
        rows += [(f"{label} [{name}]", res[name]) for g, name, label, _, _ in ABLATIONS if g == group and name in res]
        if group in ABLATION_EXTRA and ABLATION_EXTRA[group][0] in res:
            extra_name, extra_label = ABLATION_EXTRA[group]
            rows.append((f"{extra_label} [{extra_name}]", res[extra_name]))
        if rows:
            lines += [f"### {group}", "", _table(rows, ABL_COLS), ""]
    if timed:
        lines += ["## Curves", "", "Tracked held-out accuracy (mean over L3/L4), world-FID and the judge reward "
                  "against training wall-clock, every method on one time axis (seed 0; dotted lines: the "
                  "evaluation budgets). Tracking uses a small fixed prompt set and the reward is one training "
                  "batch (smoothed over 5 logged rows), so these are trends, not results.", "",
                  "![curves](bench_curves.png)", ""]
    else:
        lines += ["## Curves", "", "Tracked held-out accuracy (mean over L1-L4) and world-FID against training "
                  "iterations (seed 0; tracking uses a small fixed prompt set, so it is a trend, not a result).",
                  "", "![curves](bench_curves.png)", ""]
    if diag:
        lines += ["DI*/DI++ diagnostics (SPEC 1.5): log10 gradient norm of the reward and divergence families "
                  "w.r.t. the generator weights, and the cosine of the two parameter gradients.", "",
                  "![diagnostics](bench_diagnostics.png)", ""]
    if grids:
        from ...world.prompts import fixed_prompts

        prompts, _ = fixed_prompts()
        lines += ["## Samples", "", f"Fixed prompts (rows) and {GRID_SEEDS} seeds (columns), seed-0 run of each "
                  "method:", ""] + [f"{i + 1}. {p}" for i, p in enumerate(prompts)] + [""]
        lines += ["| " + " | ".join(TABLE_LABEL[g] for g in grids) + " |", "|---" * len(grids) + "|",
                  "| " + " | ".join(f"![{g}](bench_grid_{g}.png)" for g in grids) + " |", ""]
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    return path


TABLE_LABEL = {name: label for name, label, _ in TABLE}


def _smooth(vals: list[float], width: int = 5) -> list[float]:
    """Trailing mean over `width` values (the first ones over fewer)."""
    return [sum(vals[max(0, i - width + 1): i + 1]) / len(vals[max(0, i - width + 1): i + 1]) for i in range(len(vals))]


def plot_curves(runs: dict[str, dict], path: Path, budgets: list[float] = ()) -> None:
    """All methods on one training-time axis (eval.json "curve"): tracked mean L3/L4 accuracy,
    tracked world-FID (log scale) and the smoothed judge reward; dotted lines at the budgets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fronts import series

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colours = plt.get_cmap("tab20").colors  # more runs than tab10 has colours
    for i, (label, r) in enumerate(runs.items()):
        # Table rows solid, ablations dashed: 20 lines need both colour and style to be told apart.
        style = dict(label=label, color=colours[i % len(colours)], linestyle="--" if label.startswith("abl_") else "-")
        track, train = r["curve"]["track"], r["curve"].get("train", {})
        for ax, pts in ((axes[0], series(track, "acc_L34")), (axes[1], series(track, "world_fid"))):
            ax.plot([t for t, _ in pts], [v for _, v in pts], marker="o", markersize=2, **style)
        reward = series(train, "reward_world_judge")
        axes[2].plot([t for t, _ in reward], _smooth([v for _, v in reward]), marker=".", markersize=2, **style)
    titles = ("tracked accuracy (mean L3/L4)", "tracked world-FID (log scale)", "judge reward (training batches)")
    for ax, title in zip(axes, titles):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("training wall-clock (s)", fontsize=8)
        ax.grid(alpha=0.3)
        for b in budgets:
            ax.axvline(b, color="grey", linestyle=":", linewidth=0.8)
    axes[1].set_yscale("log")  # one-step baselines sit two orders of magnitude above the rest
    axes[2].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_tracked(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colours = plt.get_cmap("tab20").colors  # more runs than tab10 has colours
    for i, (label, r) in enumerate(runs.items()):
        pts = r["tracked"]
        # Table rows solid, ablations dashed: 16 lines need both colour and style to be told apart.
        style = dict(label=label, marker="o", markersize=2, color=colours[i % len(colours)],
                     linestyle="--" if label.startswith("abl_") else "-")
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], **style)
        fid = [(p[0], p[2]) for p in pts if p[2] is not None]
        axes[1].plot([p[0] for p in fid], [p[1] for p in fid], **style)
    for ax, title in zip(axes, ("tracked accuracy (mean L1-L4)", "tracked world-FID (log scale)")):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
    axes[1].set_yscale("log")  # one-step baselines sit two orders of magnitude above the rest
    axes[1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_diagnostics(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for label, r in runs.items():
        d = r["diagnostics"]
        steps = [p[0] for p in d]
        axes[0].plot(steps, [p[1] for p in d], label=f"{label}: reward")
        axes[0].plot(steps, [p[2] for p in d], "--", label=f"{label}: divergence")
        axes[1].plot(steps, [p[3] for p in d], label=label)
    axes[0].set_title("log10 gradient norm per loss family", fontsize=9)
    axes[1].set_title("cosine(reward gradient, divergence gradient)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
