"""The claim rules of SPEC 5: explicit, so that a verdict can be traced to the numbers. A
difference counts when it exceeds both two standard errors and a per-metric tolerance. Claim (2)
is judged on fronts and claims (4) and (6) on curves (fronts.py) when the runs for them exist;
otherwise on the single-point rules here, with a note saying so."""

from __future__ import annotations

import math

from .fronts import ACC_TOL, FID_REL_TOL, Point, front_dominance, pareto_front, speed_verdict
from .plan import DIPP_FRONT, R0_FRONT


def metric_values(rows: list[dict], key: str) -> list[float]:
    """`key` of every row that has it (one value per seed), NaNs left out."""
    return [float(r[key]) for r in rows if r.get(key) is not None and not math.isnan(float(r[key]))]


def mean_std(vals: list[float]) -> tuple[float, float]:
    """(mean, sample standard deviation); NaN where there are too few values."""
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


# Smallest difference that counts, per metric, on top of two standard errors.
ABS_TOL = {"acc": ACC_TOL, "reward": 0.01, "world_fid": FID_REL_TOL, "diversity": 0.05, "auc": 0.02}


def _tolerance(key: str, ref: float) -> float:
    if key in ("world_fid", "diversity"):
        return ABS_TOL[key] * abs(ref)  # relative: 5 %
    if key.startswith("reward") or key.startswith("train_reward"):
        return ABS_TOL["reward"] * max(abs(ref), 1.0)
    return ABS_TOL["auc"] if key.startswith("auc") else ABS_TOL["acc"]


LOWER_IS_BETTER = {"world_fid"}


def compare(a: list[float], b: list[float], key: str) -> int:
    """+1 if a is better than b on `key`, -1 if worse, 0 if the gap is within max(2 SE, tolerance)."""
    if not a or not b:
        return 0
    ma, sa = mean_std(a)
    mb, sb = mean_std(b)
    se = math.sqrt((0 if math.isnan(sa) else sa * sa / len(a)) + (0 if math.isnan(sb) else sb * sb / len(b)))
    diff = (ma - mb) * (-1 if key in LOWER_IS_BETTER else 1)
    margin = max(2 * se, _tolerance(key, mb))
    return 1 if diff > margin else -1 if diff < -margin else 0


def majority_verdict(signs: list[int]) -> str:
    """confirmed: no metric worse and at least half better; refuted: none better, at least half worse."""
    wins, losses, n = signs.count(1), signs.count(-1), len(signs)
    if n and losses == 0 and wins >= n / 2:
        return "confirmed"
    if n and wins == 0 and losses >= n / 2:
        return "refuted"
    return "mixed"


def _fmt_cmp(name_a, a_rows, name_b, b_rows, key) -> tuple[int, str]:
    a, b = metric_values(a_rows, key), metric_values(b_rows, key)
    sign = compare(a, b, key)
    ma, mb = mean_std(a)[0], mean_std(b)[0]
    mark = {1: ">", -1: "<", 0: "~"}[sign] if key not in LOWER_IS_BETTER else {1: "<", -1: ">", 0: "~"}[sign]
    return sign, f"{key} {name_a} {ma:.3f} {mark} {name_b} {mb:.3f}"


def _auc(rows: list[dict]) -> list[float]:
    """Per seed: mean tracked accuracy over the tracked points (area under the curve / length)."""
    out = []
    for r in rows:
        pts = [p[1] for p in r.get("tracked", [])]
        if pts:
            out.append(sum(pts) / len(pts))
    return out


def claims(res: dict[str, list[dict]]) -> list[tuple[str, str, str]]:
    """(claim, verdict, evidence) for the six claims of SPEC 5, by the rules above."""
    out = []

    def cmp_set(a, b, keys):
        parts = [_fmt_cmp(a, res.get(a, []), b, res.get(b, []), k) for k in keys]
        return [p[0] for p in parts], "; ".join(p[1] for p in parts)

    def have(*names):
        return all(res.get(n) for n in names)

    missing = "not run (missing: {})"
    # (1) R0 4 steps beats the 25-step base on preference (judge) and alignment (clip) rewards.
    c = "(1) a 4-step R0 beats the 25-step base on preference and alignment rewards"
    if have("r0", "teacher"):
        signs, ev = cmp_set("r0", "teacher", ["reward_world_judge", "reward_world_clip"])
        out.append((c, majority_verdict(signs), ev))
    else:
        out.append((c, "mixed", missing.format("r0/teacher")))
    # (2) R0 beats DI++ at equal steps (4): R0's lambda_w front against DI++'s KL-weight front.
    c = "(2) R0 beats distillation-plus-reward (DI++) at equal steps"
    r0_runs, di_runs = [n for n in R0_FRONT if res.get(n)], [n for n in DIPP_FRONT if res.get(n)]
    if have("r0", "dipp4") and len(r0_runs) >= 2 and len(di_runs) >= 2:
        out.append((c, *_front_verdict(res, r0_runs, di_runs)))
    elif have("r0", "dipp4"):
        signs, ev = cmp_set("r0", "dipp4", ["reward_world_judge", "reward_world_clip", "acc_mean", "acc_heldout",
                                            "world_fid"])
        lacking = ", ".join(n for n in R0_FRONT + DIPP_FRONT if not res.get(n))
        out.append((c, majority_verdict(signs), f"no fronts (missing: {lacking}); single-point rule: {ev}"))
    else:
        out.append((c, "mixed", missing.format("r0/dipp4")))
    # (3) Without regularization the training rewards hold or rise while held-out metrics fall.
    c = "(3) without regularization, rewards get hacked while held-out metrics fall"
    if have("r0", "r0_noreg"):
        rkeys = sorted(k for k in res["r0"][0] if k.startswith("train_reward_"))
        tr_signs, tr_ev = cmp_set("r0_noreg", "r0", rkeys)
        ho_signs, ho_ev = cmp_set("r0_noreg", "r0", ["acc_mean", "acc_heldout", "world_fid", "diversity"])
        hacked = tr_signs.count(-1) == 0  # training rewards not lower than with regularization
        worse = ho_signs.count(-1) >= 1 and ho_signs.count(1) == 0
        verdict = "confirmed" if hacked and worse else "refuted" if ho_signs.count(-1) == 0 else "mixed"
        out.append((c, verdict, f"training: {tr_ev}; held-out: {ho_ev}"))
    else:
        out.append((c, "mixed", missing.format("r0/r0_noreg")))
    # (4) Normalized gradients train faster: time to a shared tracked-accuracy threshold.
    c = "(4) normalized gradients train faster"
    if have("r0", "abl_nonorm") and _time_curves(res["r0"]) and _time_curves(res["abl_nonorm"]):
        out.append((c, *speed_verdict(_time_curves(res["r0"]), _time_curves(res["abl_nonorm"]))))
    elif have("r0", "abl_nonorm"):  # older eval.json: curves against iterations only
        a, b = _auc(res["r0"]), _auc(res["abl_nonorm"])
        s_auc = compare(a, b, "auc")
        signs, ev = cmp_set("r0", "abl_nonorm", ["acc_mean", "reward_world_judge"])
        ev = (f"no curves against training time; area rule: auc(tracked acc) r0 {mean_std(a)[0]:.3f} vs "
              f"abl_nonorm {mean_std(b)[0]:.3f} ({s_auc:+d}); {ev}")
        out.append((c, majority_verdict([s_auc, *signs]), ev))
    else:
        out.append((c, "mixed", missing.format("r0/abl_nonorm")))
    # (5) More rewards give better images: 3 vs 1 reward on held-out metrics.
    c = "(5) more rewards give better images"
    if have("r0", "abl_rew1"):
        signs, ev = cmp_set("r0", "abl_rew1", ["acc_mean", "acc_heldout", "world_fid", "reward_world_quality"])
        if have("abl_rew2"):
            ev += "; 2 rewards: " + cmp_set("abl_rew2", "abl_rew1", ["acc_mean", "world_fid"])[1]
        out.append((c, majority_verdict(signs), ev))
    else:
        out.append((c, "mixed", missing.format("r0/abl_rew1")))
    # (6) R0+ converges faster: time to a shared tracked-accuracy threshold.
    c = "(6) R0+ converges faster"
    if have("r0", "r0plus") and _time_curves(res["r0"]) and _time_curves(res["r0plus"]):
        out.append((c, *speed_verdict(_time_curves(res["r0plus"]), _time_curves(res["r0"]))))
    elif have("r0", "r0plus"):  # older eval.json: curves against iterations only
        verdict, ev = _convergence_verdict(res["r0"], res["r0plus"])
        out.append((c, verdict, f"no curves against training time; iteration rule: {ev}"))
    else:
        out.append((c, "mixed", missing.format("r0/r0plus")))
    return out


def _convergence_verdict(r0_rows: list[dict], plus_rows: list[dict]) -> tuple[str, str]:
    """R0+'s first iteration reaching R0's final tracked accuracy, over R0's last iteration:
    <= 0.7 confirmed, never reached or >= 1 refuted, otherwise mixed. If R0 never improved on
    its starting accuracy there is nothing to converge to: mixed."""
    curves = [r["tracked"] for r in r0_rows if r.get("tracked")]
    plus = [r["tracked"] for r in plus_rows if r.get("tracked")]
    if not curves or not plus:
        return "mixed", "no tracked curves"
    target = mean_std([c[-1][1] for c in curves])[0]
    start = mean_std([c[0][1] for c in curves])[0]
    r0_iters = mean_std([c[-1][0] for c in curves])[0]
    if target <= start + ABS_TOL["acc"]:
        return "mixed", f"R0's tracked accuracy did not improve ({start:.3f} -> {target:.3f}); nothing to converge to"
    firsts = [next((p[0] for p in c if p[1] >= target), None) for c in plus]
    reached = [f for f in firsts if f is not None]
    ev = f"target acc {target:.3f} (R0 final at iteration {r0_iters:.0f}); R0+ first reaches it at {firsts}"
    if len(reached) < len(firsts):
        return "refuted", ev
    ratio = (sum(reached) / len(reached)) / r0_iters
    ev += f" (ratio {ratio:.2f})"
    return ("confirmed" if ratio <= 0.7 else "refuted" if ratio >= 1.0 else "mixed"), ev


def _time_curves(rows: list[dict]) -> list[dict]:
    """Each seed's tracking curve against training seconds (eval.json "curve"), where it has one."""
    return [r["curve"]["track"] for r in rows if (r.get("curve") or {}).get("track", {}).get("train_seconds")]


def _at_budget(r: dict, budget: float | None) -> dict | None:
    """A run's metrics at `budget` training seconds (None: its final ones, the top level)."""
    if budget is None:
        return r
    return next((e for e in r.get("budgets", []) if e.get("budget_s") == budget), None)


def front_points(res: dict[str, list[dict]], names: list[str], budget: float | None = None) -> list[Point]:
    """One point per run name: the seed means of mean L3/L4 accuracy and world-FID at `budget`."""
    points = []
    for n in names:
        rows = [e for e in (_at_budget(r, budget) for r in res.get(n, [])) if e is not None]
        acc = [(e["acc_L3"] + e["acc_L4"]) / 2 for e in rows
               if e.get("acc_L3") is not None and e.get("acc_L4") is not None]
        fid = metric_values(rows, "world_fid")
        if acc and fid:
            points.append(Point(n, mean_std(acc)[0], mean_std(fid)[0]))
    return points


def _front_verdict(res: dict[str, list[dict]], a_names: list[str], b_names: list[str]) -> tuple[str, str]:
    """front_dominance of A's sweep over B's at the largest budget every run of both has (their
    final metrics if some run has no per-budget results); the other budgets as evidence."""
    rows = [r for n in a_names + b_names for r in res[n]]
    shared = set.intersection(*({e.get("budget_s") for e in r.get("budgets", [])} for r in rows)) - {None}
    budgets = sorted(shared) or [None]
    parts, verdict = [], "mixed"
    for budget in reversed(budgets):  # the verdict's budget first
        a, b = front_points(res, a_names, budget), front_points(res, b_names, budget)
        verdict_here = front_dominance(a, b)
        where = "final" if budget is None else f"{budget:g} s"
        if not parts:
            verdict = verdict_here
            parts.append(f"at {where}: fronts (acc L3/L4, world-FID) {_fmt_front(a)} vs {_fmt_front(b)}: "
                         f"{verdict_here}")
        else:
            parts.append(f"at {where}: {verdict_here}")
    return verdict, "; ".join(parts)


def _fmt_front(points: list[Point]) -> str:
    return ", ".join(f"{p.label} ({p.acc:.3f}, {p.fid:.1f})" for p in pareto_front(points))
