"""R0 claims on the built-in world: R0 vs teacher, R0+ convergence, reward hacking without regularization.

    python benchmarks/r0_world.py --out runs/bench_r0 [--iterations 300] [--presets world_r0 world_r0plus world_r0_noreg]
        [--seed N] [--track-prompts 100] [--prompts-per-level 300 --diversity-prompts 96]

    python benchmarks/r0_world.py --out runs/bench_r0_web --teacher teacher_web --presets world_r0_web world_r0plus_web

For each preset: train with held-out tracking every `--track-every` iterations (resumable),
then run the full `rzero eval` protocol on the final snapshot. The teacher (25 DDIM steps,
CFG 7.5) is evaluated once. Writes `results.json` (every number) and `results.md`
(regenerated from the JSON) into --out.

A preset's role comes from its name: `*r0plus*` is R0+, `*noreg*` the no-regularization control,
any other the R0 that the claims compare with the teacher. The targets are those of the teacher's
issue: the shipped teacher's (L3/L4 +10 points, world-FID <= 1.5x) or, with `--teacher teacher_web`,
issue 20's (+20 points, <= 1.2x, held-out and acc_paraphrase not below the teacher's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rzero.config import load_config
from rzero.config.schema import EvalConfig, TrainConfig
from rzero.eval.plots import plot_curves
from rzero.eval.report import eval_markdown
from rzero.eval.world_eval import evaluate_world, generator_source, teacher_source
from rzero.trainers import R0Trainer
from rzero.utils.stats import read_jsonl
from rzero.world.assets import WORLD_TEACHERS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


# Targets per base model: the shipped teacher's (its R0 issue) and the web teacher's (issue 20).
# `converge`: the tracked number R0+ must reach (R0's final value) in <= 70 % of R0's iterations.
TARGETS = {"teacher": {"points": 10, "fid_ratio": 1.5, "diversity_ratio": 0.7, "no_lower": (),
                       "converge": "track/acc_L4"},
           "teacher_web": {"points": 20, "fid_ratio": 1.2, "diversity_ratio": 0.7,
                           "no_lower": ("acc_heldout", "acc_paraphrase"), "converge": "mean_L3_L4"}}


def role(preset: str) -> str:
    return "r0plus" if "r0plus" in preset else "noreg" if "noreg" in preset else "r0"


def by_role(presets: list[str]) -> dict[str, str]:
    """The first preset of each role."""
    roles: dict[str, str] = {}
    for p in presets:
        roles.setdefault(role(p), p)
    return roles


def tracked(row: dict, key: str) -> float | None:
    """A tracked number of one stats row; "mean_L3_L4" is the mean of L3 and L4 all-correct accuracy."""
    if key != "mean_L3_L4":
        return row.get(key)
    if row.get("track/acc_L3") is None or row.get("track/acc_L4") is None:
        return None
    return 0.5 * (row["track/acc_L3"] + row["track/acc_L4"])


def first_reaching(rows: list[dict], key: str, target: float) -> int | None:
    for r in rows:
        value = tracked(r, key)
        if value is not None and value >= target:
            return int(r["step"])
    return None


def report(results: dict) -> str:
    lines = [eval_markdown(results["eval"], title="R0 on the built-in world")]
    setup = results.get("eval_setup")
    if setup:
        lines.append(f"Evaluation: {setup['prompts_per_level']} prompts per level and held-out, diversity over "
                     f"{setup['diversity_prompts']} prompts x 4 seeds.\n")
    lines.append("## Claims\n")
    ev = results["eval"]
    t = ev.get("teacher")
    roles = results.get("roles", {"r0": "world_r0"})
    r0 = ev.get(roles.get("r0", ""))
    goal = TARGETS[(results.get("eval_setup") or {}).get("teacher", "teacher")]
    if t and r0:
        for k in ("acc_L3", "acc_L4"):
            lines.append(f"- {k}: R0 {r0[k]:.3f} vs teacher {t[k]:.3f} ({100 * (r0[k] - t[k]):+.1f} points; "
                         f"target +{goal['points']})")
        for k in goal["no_lower"]:
            lines.append(f"- {k}: R0 {r0[k]:.3f} vs teacher {t[k]:.3f} (target: not lower)")
        lines.append(f"- world-FID ratio R0/teacher: {r0['world_fid'] / t['world_fid']:.2f} "
                     f"(target <= {goal['fid_ratio']})")
        lines.append(f"- diversity ratio R0/teacher: {r0['diversity'] / t['diversity']:.2f} "
                     f"(target >= {goal['diversity_ratio']:.2f})")
        lines.append(f"- ms/image: R0 {r0['ms_per_image']:.1f} (NFE {r0['nfe']}) vs teacher "
                     f"{t['ms_per_image']:.1f} (NFE {t['nfe']})")
    conv = results.get("convergence")
    if conv:
        metric = conv.get("metric", "track/acc_L4").removeprefix("track/")  # older folders: L4, unrecorded
        final = conv.get("r0_final", conv.get("r0_final_acc_L4"))
        lines.append(f"- R0+ reaches R0's final tracked {metric} ({final:.3f}) at iteration "
                     f"{conv['r0plus_first_iteration']} of R0's {conv['r0_iterations']} "
                     f"(ratio {conv['ratio'] if conv['ratio'] is not None else 'never'}; target <= 0.70)")
        for name, curve in conv.get("curves", {}).items():  # the noise the check above lives with
            lines.append(f"  - tracked {metric}, {name}: " + ", ".join(f"{a:.2f}@{step}" for step, a in curve))
    hack = results.get("hacking")
    if hack:
        lines.append(f"- no regularization: training rewards {hack['reward_change']}, tracked L4 accuracy "
                     f"{hack['acc_L4_first']:.3f} -> {hack['acc_L4_last']:.3f}, world-FID "
                     f"{hack['fid_first']:.2f} -> {hack['fid_last']:.2f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_r0")
    ap.add_argument("--presets", nargs="+", default=["world_r0", "world_r0plus", "world_r0_noreg"])
    ap.add_argument("--iterations", type=int, default=None, help="override every preset's iterations")
    ap.add_argument("--track-every", type=int, default=25)
    ap.add_argument("--track-prompts", type=int, default=None,
                    help="tracking prompts per level (presets: 24; more makes the R0+ convergence claim less noisy)")
    ap.add_argument("--threads", type=int, default=None, help="override every preset's threads")
    ap.add_argument("--seed", type=int, default=None, help="override every preset's training seed")
    ap.add_argument("--prompts-per-level", type=int, default=None,
                    help="evaluation prompts per level and held-out (protocol: 100)")
    ap.add_argument("--diversity-prompts", type=int, default=None,
                    help="evaluation prompts for diversity, 4 seeds each (protocol: 24; the ratio to the teacher "
                         "moves by several points between draws at 24)")
    ap.add_argument("--teacher-json", default=None,
                    help="reuse a teacher evaluation (`rzero eval --model teacher --json`) of the same protocol")
    ap.add_argument("--teacher", default="teacher", choices=WORLD_TEACHERS,
                    help="the world base model: R0 starts from it and is compared with it (world v2: teacher_web)")
    ap.add_argument("--report-only", action="store_true", help="rebuild results.md from results.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {"eval": {}}
    if not args.report_only:
        sizes = {"prompts_per_level": args.prompts_per_level, "heldout_prompts": args.prompts_per_level,
                 "diversity_prompts": args.diversity_prompts}
        cfg = EvalConfig(**{k: v for k, v in sizes.items() if v is not None}, teacher=args.teacher)
        setup = {k: getattr(cfg, k) for k in sizes}
        if args.teacher != "teacher":  # older folders (the shipped teacher) lack the key
            setup["teacher"] = args.teacher
        if results.setdefault("eval_setup", setup) != setup:
            raise SystemExit(f"error: {res_path} was measured with {results['eval_setup']}, not {setup}; "
                             "use another --out or the same sizes")
        if "teacher" not in results["eval"] and args.teacher_json:
            results["eval"]["teacher"] = json.loads(Path(args.teacher_json).read_text())
        if "teacher" not in results["eval"]:
            results["eval"]["teacher"], _ = evaluate_world(teacher_source(cfg), cfg)
            res_path.write_text(json.dumps(results, indent=2))
        for preset in args.presets:
            overrides = [f"track_every={args.track_every}"]
            if args.teacher != "teacher":
                overrides.append(f"backbone_path={args.teacher}")
            if args.iterations:
                overrides.append(f"iterations={args.iterations}")
            if args.threads:
                overrides.append(f"threads={args.threads}")
            if args.seed is not None:
                overrides.append(f"seed={args.seed}")
            if args.track_prompts:
                overrides.append(f"track_prompts={args.track_prompts}")
            tcfg = load_config(TrainConfig, CONFIGS / f"{preset}.yaml", overrides)
            R0Trainer(tcfg, out / preset).fit()
            if preset not in results["eval"]:
                results["eval"][preset], _ = evaluate_world(generator_source(out / preset, cfg), cfg)
                res_path.write_text(json.dumps(results, indent=2))
        runs = {p: out / p for p in args.presets}
        tracks = {p: read_jsonl(out / p / "stats.jsonl") for p in args.presets}
        roles = results["roles"] = by_role(args.presets)
        if "r0" in roles and "r0plus" in roles:
            key = TARGETS[args.teacher]["converge"]
            curves = {p: [[r["step"], v] for r in tracks[p] if (v := tracked(r, key)) is not None]
                      for p in (roles["r0"], roles["r0plus"])}
            r0_iterations, target = curves[roles["r0"]][-1]
            it = first_reaching(tracks[roles["r0plus"]], key, target)
            results["convergence"] = {"metric": key, "r0_final": target, "r0_iterations": r0_iterations,
                                      "r0plus_first_iteration": it,
                                      "ratio": None if it is None else round(it / r0_iterations, 3),
                                      "curves": curves}
        if "noreg" in roles:
            rows = [r for r in tracks[roles["noreg"]] if "track/acc_L4" in r]
            rew = [r for r in tracks[roles["noreg"]] if "reward/world-judge" in r]
            results["hacking"] = {
                "acc_L4_first": rows[0]["track/acc_L4"], "acc_L4_last": rows[-1]["track/acc_L4"],
                "fid_first": rows[0]["track/world_fid"], "fid_last": rows[-1]["track/world_fid"],
                "reward_change": ", ".join(f"{k.split('/')[1]} {rew[0][k]:.3f} -> {rew[-1][k]:.3f}"
                                           for k in rew[0] if k.startswith("reward/")),
            }
        plot_curves(runs, ["track/acc_L3", "track/acc_L4", "track/world_fid", "reward/world-judge",
                           "reward/world-clip", "reward/world-quality"], out / "curves.png")
        res_path.write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(report(results))
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
