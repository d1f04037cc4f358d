"""R0's regularization front on the built-in world: lambda_w x training length x seeds.

    python benchmarks/r0_sweep.py --out runs/sweep_r0 [--teacher teacher_web] [--weights 0.5 0.15 0.05 0.015]
        [--lengths 100 200 300] [--seeds 0 1] [--jobs 2] [--preset world_r0]
    python benchmarks/r0_sweep.py --out runs/sweep_r0 --report-only
    python benchmarks/r0_sweep.py --out runs/sweep_r0 --from-tracking [--teacher teacher_web]

Each (lambda_w, seed) trains one run of max(--lengths) iterations with a checkpoint at every
length; the EMA weights of each checkpoint are evaluated with the `rzero eval` protocol
(`--prompts-per-level`, held-out, diversity, acc_paraphrase). Writes `results.json` and the
Pareto plot of mean L3/L4 accuracy against world-FID (`pareto.png`); `--docs` copies both to
benchmarks/results/r0_sweep.json and docs/img/pareto_r0.png. Resumable: finished runs and
evaluations are reused (a folder refuses other sizes).

`--from-tracking` skips the protocol evaluations and builds the same table and plot from
the runs' tracked numbers (`track_every` 50: 24 prompts per level, world-FID over those 96
images) and the teacher evaluated on the same tracking set; cheaper, noisier, and FIDs on
96 images are not comparable with protocol FIDs (results_tracking.json, pareto_tracking.png).

The pick rule (docs/decisions.md): among settings whose seed-mean world-FID is <= 1.2x the
teacher's and diversity >= 0.7x, the highest seed-mean (L3 + L4) / 2; ties go to the larger
lambda_w, then the shorter run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FID_RATIO, DIVERSITY_RATIO = 1.2, 0.7


def run_name(weight: float, seed: int) -> str:
    return f"lw{weight:g}_s{seed}"


def train(args: tuple) -> str:
    preset, out, weight, seed, length, every, threads, teacher = args
    import torch

    from rzero.config import load_config
    from rzero.config.schema import TrainConfig
    from rzero.trainers import R0Trainer

    torch.set_num_threads(threads)
    overrides = [f"regularization.weight={weight}", f"seed={seed}", f"iterations={length}", f"threads={threads}",
                 f"checkpoint_every={every}", "keep_checkpoints=10", "track_every=50"]
    if teacher != "teacher":
        overrides.append(f"backbone_path={teacher}")
    cfg = load_config(TrainConfig, CONFIGS / f"{preset}.yaml", overrides)
    R0Trainer(cfg, out).fit()
    return str(out)


def snapshot_at(run: Path, step: int) -> Path:
    """An inference snapshot of the checkpoint at `step` (its EMA weights, the run's metadata)."""
    snap = run / f"snapshot_{step:06d}"
    if (snap / "generator.json").is_file():
        return snap
    ckpt = run / "checkpoints" / f"step_{step:06d}"
    tmp = run / f".tmp_snapshot_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    shutil.copy(ckpt / "ema.safetensors", tmp / "generator.safetensors")
    meta = json.loads((run / "final" / "generator.json").read_text())
    meta["iteration"] = step
    (tmp / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")
    shutil.copy(run / "final" / "config.yaml", tmp / "config.yaml")
    tmp.rename(snap)
    return snap


def evaluate(results: dict, key: str, source_fn, cfg, res_path: Path) -> dict:
    from rzero.eval.world_eval import evaluate_world

    if key not in results["eval"]:
        results["eval"][key], _ = evaluate_world(source_fn(), cfg)
        res_path.write_text(json.dumps(results, indent=2))
    return results["eval"][key]


def from_tracking(out: Path, weights: list[float], seeds: list[int], lengths: list[int], teacher: str) -> dict:
    """Protocol-shaped results from the runs' tracked rows, and the teacher on the tracking set."""
    from rzero.backbones import WorldBackbone
    from rzero.config.schema import EvalConfig
    from rzero.eval.world_eval import quick_world_eval
    from rzero.utils.seeding import per_image_draws
    from rzero.utils.stats import read_jsonl

    results = {"setup": {"source": "tracking", "per_level": 24, "teacher": teacher}, "eval": {}}
    rows0 = {}
    for w in weights:
        for s in seeds:
            rows = {r["step"]: r for r in read_jsonl(out / run_name(w, s) / "stats.jsonl") if "track/acc_L1" in r}
            rows0 = rows0 or rows
            for step in lengths:
                if step in rows:
                    r = rows[step]
                    m = {k.split("/")[1]: v for k, v in r.items() if k.startswith("track/")}
                    # Training-batch reward means at that step (not the protocol's evaluation-set means).
                    m.update({"reward_" + k.split("/")[1].replace("-", "_"): v for k, v in r.items()
                              if k.startswith("reward/")})
                    results["eval"][f"{w:g}|{s}|{step}"] = m
    cfg = EvalConfig(teacher=teacher)
    backbone = WorldBackbone(teacher=teacher).eval()

    def generate(prompts, specs, idx):
        noise, gens = per_image_draws(backbone.latent_shape, 4321, idx)
        return backbone.sample(prompts, noise, steps=cfg.steps, cfg=cfg.cfg, eta=cfg.eta, generator=gens)

    results["eval"]["teacher"] = quick_world_eval(generate, 24)
    for m in results["eval"].values():  # the table's other columns are not tracked
        m.setdefault("diversity", float("nan"))
    return results


def mean_l34(m: dict) -> float:
    return 0.5 * (m["acc_L3"] + m["acc_L4"])


def summarize(results: dict) -> dict:
    """Seed means per (lambda_w, length) and the pick by the stated rule."""
    t = results["eval"]["teacher"]
    groups: dict[tuple, list[dict]] = {}
    for key, m in results["eval"].items():
        if key == "teacher":
            continue
        w, s, step = key.split("|")
        groups.setdefault((float(w), int(step)), []).append(m)
    rows = []
    for (w, step), ms in sorted(groups.items()):
        avg = {k: sum(m[k] for m in ms) / len(ms) for k in ms[0] if isinstance(ms[0][k], (int, float))}
        rows.append({"weight": w, "length": step, "seeds": len(ms), "mean_L3_L4": mean_l34(avg),
                     "fid_ratio": avg["world_fid"] / t["world_fid"], "diversity_ratio": avg["diversity"] / t["diversity"],
                     **{k: avg[k] for k in ("acc_L1", "acc_L2", "acc_L3", "acc_L4", "acc_heldout", "acc_paraphrase",
                                            "world_fid", "diversity", "reward_world_clip", "reward_world_judge",
                                            "reward_world_quality") if k in avg}})
    ok = [r for r in rows if r["fid_ratio"] <= FID_RATIO and not r["diversity_ratio"] < DIVERSITY_RATIO]  # nan: untracked
    pick = max(ok, key=lambda r: (round(r["mean_L3_L4"], 3), r["weight"], -r["length"])) if ok else None
    return {"rows": rows, "pick": pick, "teacher_mean_L3_L4": mean_l34(t),
            "rule": f"world-FID <= {FID_RATIO}x and diversity >= {DIVERSITY_RATIO}x the teacher's (seed means); "
                    "then the highest mean (L3 + L4) / 2; ties: larger lambda_w, then shorter run"}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(results)
    t = results["eval"]["teacher"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    weights = sorted({r["weight"] for r in summary["rows"]})
    markers = dict(zip(sorted({r["length"] for r in summary["rows"]}), "os^Dv"))
    cmap = plt.get_cmap("viridis")
    for i, w in enumerate(weights):
        rs = sorted((r for r in summary["rows"] if r["weight"] == w), key=lambda r: r["length"])
        colour = cmap(i / max(1, len(weights) - 1))
        ax.plot([r["world_fid"] for r in rs], [r["mean_L3_L4"] for r in rs], "-", color=colour, alpha=0.5)
        for r in rs:
            ax.scatter(r["world_fid"], r["mean_L3_L4"], color=colour, marker=markers[r["length"]], s=40,
                       label=f"lambda_w {w:g}" if r is rs[0] else None)
    for key, m in results["eval"].items():  # single seeds, faint
        if key != "teacher":
            ax.scatter(m["world_fid"], mean_l34(m), color="grey", s=8, alpha=0.4)
    ax.scatter(t["world_fid"], mean_l34(t), color="red", marker="*", s=160, label="teacher (25 steps + CFG)")
    ax.axvline(FID_RATIO * t["world_fid"], color="red", ls=":", lw=1, label=f"{FID_RATIO}x teacher world-FID")
    if summary["pick"]:
        p = summary["pick"]
        ax.scatter(p["world_fid"], p["mean_L3_L4"], facecolors="none", edgecolors="k", s=220, lw=1.5, label="pick")
    for length, mk in markers.items():
        ax.scatter([], [], color="k", marker=mk, label=f"{length} iterations")
    ax.set_xlabel("world-FID (lower is better)")
    ax.set_ylabel("mean all-correct accuracy, L3 and L4")
    setup = results.get("setup", {})
    ax.set_title(f"R0 on the built-in world ({setup.get('preset', 'world_r0')}, {setup.get('teacher', 'teacher')}): "
                 "lambda_w x training length (seed means)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown(results: dict) -> str:
    s = summarize(results)
    t = {k: float("nan") for k in ("acc_heldout", "reward_world_judge", "reward_world_clip")}
    t.update(results["eval"]["teacher"])
    lines = ["| lambda_w | iterations | L3 | L4 | mean L3/L4 | held-out | paraphrase | world-FID (x teacher) | "
             "diversity (x teacher) | judge | clip |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines.append(f"| teacher | 25 DDIM + CFG | {t['acc_L3']:.2f} | {t['acc_L4']:.2f} | {mean_l34(t):.2f} | "
                 f"{t['acc_heldout']:.2f} | {t.get('acc_paraphrase', float('nan')):.2f} | {t['world_fid']:.0f} | "
                 f"{t['diversity']:.1f} | {t['reward_world_judge']:.3f} | {t['reward_world_clip']:.3f} |")
    for r in s["rows"]:
        r = {"acc_heldout": float("nan"), "reward_world_judge": float("nan"), "reward_world_clip": float("nan"), **r}
        lines.append(f"| {r['weight']:g} | {r['length']} | {r['acc_L3']:.2f} | {r['acc_L4']:.2f} | {r['mean_L3_L4']:.2f} "
                     f"| {r['acc_heldout']:.2f} | {r.get('acc_paraphrase', float('nan')):.2f} | {r['world_fid']:.0f} "
                     f"({r['fid_ratio']:.2f}x) | {r['diversity']:.1f} ({r['diversity_ratio']:.2f}x) | "
                     f"{r['reward_world_judge']:.3f} | {r['reward_world_clip']:.3f} |")
    p = s["pick"]
    lines.append("")
    lines.append(f"Rule: {s['rule']}.")
    lines.append("Pick: " + (f"lambda_w {p['weight']:g}, {p['length']} iterations" if p else "none passes the rule"))
    return "\n".join(lines) + "\n"


def main() -> None:
    from rzero.world.assets import WORLD_TEACHERS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/sweep_r0")
    ap.add_argument("--preset", default="world_r0")
    ap.add_argument("--teacher", default="teacher", choices=WORLD_TEACHERS,
                    help="the world base model R0 starts from and is compared with")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.15, 0.05, 0.015])
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 200, 300])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--jobs", type=int, default=2, help="training runs at once (one thread each)")
    ap.add_argument("--prompts-per-level", type=int, default=100)
    ap.add_argument("--teacher-json", default=None, help="reuse a teacher evaluation of the same sizes")
    ap.add_argument("--docs", action="store_true", help="copy the JSON and plot to benchmarks/results and docs/img")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--from-tracking", action="store_true", help="table and plot from the tracked numbers only")
    args = ap.parse_args()
    lengths = sorted(args.lengths)
    if any(n % lengths[0] for n in lengths):
        raise SystemExit("error: every --lengths value must be a multiple of the shortest")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / ("results_tracking.json" if args.from_tracking else "results.json")
    results = json.loads(res_path.read_text()) if res_path.exists() else {"eval": {}}
    if args.from_tracking:
        results = from_tracking(out, args.weights, args.seeds, lengths, args.teacher)
    elif not args.report_only:
        from rzero.config.schema import EvalConfig
        from rzero.eval.world_eval import generator_source, teacher_source

        cfg = EvalConfig(prompts_per_level=args.prompts_per_level, heldout_prompts=args.prompts_per_level,
                         paraphrase_per_level=25, threads=2, teacher=args.teacher)
        setup = {"prompts_per_level": args.prompts_per_level, "paraphrase_per_level": 25, "preset": args.preset,
                 "teacher": args.teacher}
        if results.setdefault("setup", setup) != setup:
            raise SystemExit(f"error: {res_path} was measured with {results['setup']}, not {setup}; use another --out")
        if "teacher" not in results["eval"] and args.teacher_json:
            results["eval"]["teacher"] = json.loads(Path(args.teacher_json).read_text())
        jobs = [(args.preset, out / run_name(w, s), w, s, lengths[-1], lengths[0], 1, args.teacher) for w in args.weights for s in args.seeds
                if not (out / run_name(w, s) / "final" / "generator.json").is_file()]
        if jobs:
            ctx = mp.get_context("spawn")
            with ctx.Pool(args.jobs) as pool:
                for done in pool.imap_unordered(train, jobs):
                    print(f"sweep: trained {done}", flush=True)
        evaluate(results, "teacher", lambda: teacher_source(cfg), cfg, res_path)
        for w in args.weights:
            for s in args.seeds:
                run = out / run_name(w, s)
                for step in lengths:
                    snap = snapshot_at(run, step)
                    evaluate(results, f"{w:g}|{s}|{step}", lambda: generator_source(snap, cfg), cfg, res_path)
    results["summary"] = summarize(results)
    res_path.write_text(json.dumps(results, indent=2))
    suffix = "_tracking" if args.from_tracking else ""
    plot(results, out / f"pareto{suffix}.png")
    (out / f"results{suffix}.md").write_text(markdown(results))
    print(markdown(results))
    if args.docs:
        root = Path(__file__).resolve().parents[1]
        shutil.copy(res_path, root / "benchmarks" / "results" / f"r0_sweep{suffix}.json")
        shutil.copy(out / f"pareto{suffix}.png", root / "docs" / "img" / f"pareto_r0{suffix}.png")


if __name__ == "__main__":
    main()
