"""`rzero bench`'s rules on fronts and curves (apps/bench/fronts.py), the curves a job extracts,
and claims (2), (4) and (6) computed from eval.json files built here (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rzero.apps.bench.claims import claims, front_points
from rzero.apps.bench.fronts import (Point, front_dominance, pareto_front, shared_threshold, speed_verdict,
                                     time_to_threshold, time_verdict, tracking_interval)
from rzero.apps.bench.job import job_config, run_curve
from rzero.apps.bench.plan import DIPP_FRONT, R0_FRONT, BenchSettings, make_jobs
from rzero.apps.bench.report import load_results, plot_curves, write_report


def pts(*xy) -> list[Point]:
    return [Point(f"p{i}", acc, fid) for i, (acc, fid) in enumerate(xy)]


# ------------------------------------------------------------------ fronts
def test_pareto_front_keeps_the_undominated_points():
    front = pareto_front(pts((0.9, 40.0), (0.8, 12.0), (0.7, 30.0), (0.6, 9.0), (0.8, 12.0)))
    assert [(p.acc, p.fid) for p in front] == [(0.6, 9.0), (0.8, 12.0), (0.8, 12.0), (0.9, 40.0)]
    assert pareto_front([]) == [] and pareto_front(pts((float("nan"), 1.0))) == []


def test_front_dominance_confirmed_refuted_mixed():
    r0 = pts((0.9, 40.0), (0.85, 20.0), (0.8, 12.0), (0.6, 9.0))
    dipp = pts((0.7, 45.0), (0.6, 25.0), (0.4, 15.0))
    assert front_dominance(r0, dipp) == "confirmed"
    assert front_dominance(dipp, r0) == "refuted"
    # Crossing fronts: DI++ has the lowest FID, R0 the highest accuracy.
    assert front_dominance(pts((0.9, 20.0), (0.8, 15.0)), pts((0.5, 5.0), (0.7, 14.0))) == "mixed"


def test_front_dominance_ties_within_tolerance_and_edge_cases():
    a = pts((0.80, 12.0), (0.60, 9.0))
    # 0.01 accuracy and 3 % FID apart: within the tolerances (0.02, 5 %), a tie, not a win.
    assert front_dominance(a, pts((0.79, 12.3), (0.59, 9.2))) == "mixed"
    assert front_dominance(a, a) == "mixed"
    # One point each: plain dominance of the point.
    assert front_dominance(pts((0.8, 10.0)), pts((0.7, 10.0))) == "confirmed"
    assert front_dominance(pts((0.8, 10.0)), pts((0.8, 20.0))) == "confirmed"
    assert front_dominance(pts((0.8, 20.0)), pts((0.7, 10.0))) == "mixed"
    assert front_dominance([], a) == "mixed" and front_dominance(a, []) == "mixed"
    # A single B point that only ties one A point and loses to another: still dominated.
    assert front_dominance(pts((0.8, 12.0), (0.9, 11.0)), pts((0.81, 12.1))) == "confirmed"


# ------------------------------------------------------------------ curves
def curve(times, accs, fids=None) -> dict:
    return {"train_seconds": list(times), "iteration": list(range(len(times))), "acc_mean": list(accs),
            "world_fid": list(fids) if fids else [10.0] * len(times)}


def test_time_to_threshold_interpolates_first_crossing():
    c = curve([0, 10, 20, 30], [0.2, 0.4, 0.8, 0.5])
    assert time_to_threshold(c, "acc_mean", 0.6) == pytest.approx(15.0)  # halfway from 0.4 to 0.8
    assert time_to_threshold(c, "acc_mean", 0.4) == pytest.approx(10.0)  # reached exactly at a point
    assert time_to_threshold(c, "acc_mean", 0.1) == 0.0  # already there at the start
    assert time_to_threshold(c, "acc_mean", 0.9) is None  # never
    assert time_to_threshold(c, "world_fid", 10.0, lower_is_better=True) == 0.0
    falling = curve([0, 10, 20], [0, 0, 0], fids=[100.0, 60.0, 20.0])
    assert time_to_threshold(falling, "world_fid", 40.0, lower_is_better=True) == pytest.approx(15.0)
    assert time_to_threshold({}, "acc_mean", 0.5) is None
    with_gap = {"train_seconds": [0, 10, 20], "acc_mean": [0.2, None, 0.8]}  # a missing value is skipped
    assert time_to_threshold(with_gap, "acc_mean", 0.5) == pytest.approx(10.0)


def test_shared_threshold_is_crossed_by_every_run():
    fast = curve([0, 10, 20, 30, 40], [0.3, 0.7, 0.8, 0.8, 0.8])
    slow = curve([0, 10, 20, 30, 40], [0.3, 0.4, 0.5, 0.6, 0.7])  # still climbing: a lower plateau
    threshold, start, end = shared_threshold([fast, slow], "acc_mean")
    assert start == pytest.approx(0.3) and end == pytest.approx(0.6)  # mean of slow's last 3
    assert threshold == pytest.approx(0.3 + 0.8 * 0.3)
    assert all(time_to_threshold(c, "acc_mean", threshold) is not None for c in (fast, slow))
    flat = curve([0, 10, 20], [0.3, 0.31, 0.3])
    assert shared_threshold([fast, flat], "acc_mean") is None  # nothing gained: nothing to time
    assert shared_threshold([fast, {}], "acc_mean") is None
    assert tracking_interval([fast, curve([0, 20], [0, 0])]) == 10.0


def test_time_verdict_confirmed_refuted_mixed():
    assert time_verdict([50.0], [100.0], resolution=10.0) == "confirmed"
    assert time_verdict([100.0], [50.0], resolution=10.0) == "refuted"
    assert time_verdict([90.0], [100.0], resolution=5.0) == "mixed"  # 10 % apart: within 20 %
    assert time_verdict([40.0], [60.0], resolution=30.0) == "mixed"  # within one tracking interval
    assert time_verdict([40.0, 60.0], [100.0, 110.0]) == "confirmed"  # seed means
    assert time_verdict([40.0], [None]) == "confirmed" and time_verdict([None], [40.0]) == "refuted"
    assert time_verdict([None], [None]) == "mixed" and time_verdict([], [1.0]) == "refuted"


def test_speed_verdict_on_constructed_curves():
    times = [0, 20, 40, 60, 80, 100, 120]
    fast = curve(times, [0.3, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8])
    slow = curve(times, [0.3, 0.35, 0.45, 0.55, 0.7, 0.8, 0.8])
    assert speed_verdict([fast], [slow])[0] == "confirmed"
    verdict, ev = speed_verdict([slow], [fast])
    assert verdict == "refuted" and "threshold acc_mean" in ev
    noisy = curve(times, [0.3, 0.72, 0.79, 0.81, 0.8, 0.79, 0.8])
    assert speed_verdict([fast], [noisy])[0] == "mixed"  # the same curve up to noise
    flat = curve(times, [0.3] * 7)
    assert speed_verdict([fast], [flat])[0] == "mixed"


# ------------------------------------------------------------------ what a job records
def test_run_curve_from_stats_rows():
    rows = [{"step": 0, "time": 1.0, "train_seconds": 0.0, "track/acc_L1": 0.5, "track/acc_L2": 0.4,
             "track/acc_L3": 0.2, "track/acc_L4": 0.1, "track/world_fid": 30.0},
            {"step": 5, "time": 2.0, "train_seconds": 9.5, "loss": 1.0, "reward/world-judge": 0.3},
            {"step": 10, "time": 3.0, "train_seconds": 19.0, "reward/world-judge": 0.4, "track/acc_L1": 0.7,
             "track/acc_L2": 0.6, "track/acc_L3": 0.4, "track/acc_L4": 0.3, "track/world_fid": 20.0},
            {"step": 12, "time": 4.0, "loss": 1.0}]  # an older row without the clock: left out
    c = run_curve(rows)
    assert c["track"]["train_seconds"] == [0.0, 19.0] and c["track"]["iteration"] == [0, 10]
    assert c["track"]["acc_mean"] == pytest.approx([0.3, 0.5]) and c["track"]["acc_L34"] == pytest.approx([0.15, 0.35])
    assert c["track"]["world_fid"] == [30.0, 20.0]
    assert c["train"] == {"iteration": [5, 10], "train_seconds": [9.5, 19.0], "reward_world_judge": [0.3, 0.4]}


def test_job_asks_the_engine_for_the_budget_snapshots():
    s = BenchSettings.quick()
    job = next(j for j in make_jobs(s, ["r0"]))
    cfg = job_config(job, s)
    assert cfg.snapshot_at_s == [15.0] and cfg.time_budget_s == 30.0
    s.early_budgets_s = []
    assert job_config(job, s).snapshot_at_s == []
    assert set(R0_FRONT) | set(DIPP_FRONT) <= {j.name for j in make_jobs(BenchSettings.full())}


# ------------------------------------------------------------------ claims from eval.json files
def _entry(acc34: float, fid: float, judge: float = 0.6) -> dict:
    e = {"world_fid": fid, "acc_heldout": acc34, "reward_world_judge": judge, "reward_world_clip": 0.5,
         "reward_world_quality": -5.0, "diversity": 1.0, "nfe": 4, "ms_per_image": 1.0}
    for lv in (1, 2, 3, 4):
        e[f"acc_L{lv}"] = acc34
    return e


def _timed(name: str, seed: int, acc34: float, fid: float, accs: list[float], early=(0.8, 1.5)) -> dict:
    """An eval.json of the new kind: per-budget results (60 s: early[0] x acc, early[1] x FID) and curves."""
    times = [20.0 * i for i in range(len(accs))]
    r = {"name": name, "label": name, "group": "table" if not name.startswith("abl_") else "ablation",
         "seed": seed, "preset": f"{name}.yaml", "overrides": [], "train_seconds": 300.0, "iterations": 150,
         "train_reward_world_judge": 0.6, **_entry(acc34, fid),
         "budgets": [{"budget_s": 60.0, "train_seconds": 60.2, "iteration": 30,
                      **_entry(acc34 * early[0], fid * early[1])},
                     {"budget_s": 300.0, "train_seconds": 300.1, "iteration": 150, **_entry(acc34, fid)}],
         "curve": {"track": {**curve(times, accs), "acc_L34": accs},
                   "train": {"iteration": list(range(len(accs))), "train_seconds": times,
                             "reward_world_judge": [0.3 + 0.01 * i for i in range(len(accs))]}}}
    return r


# Tracked accuracy every 20 s; the shared threshold is 0.7 (0.8 of the way from 0.3 to 0.8), which
# FAST reaches at 20 s, MID at 60 s and SLOW at 120 s: each 40 s or more apart, past the 20 s interval.
FAST = [0.3, 0.7, 0.8, 0.8, 0.8, 0.8, 0.8]
MID = [0.3, 0.4, 0.5, 0.7, 0.8, 0.8, 0.8]
SLOW = [0.3, 0.32, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8]
R0_SWEEP = {"abl_reg0": (0.9, 40.0), "abl_reg001": (0.85, 20.0), "r0": (0.8, 12.0), "abl_reg05": (0.6, 9.0)}
DI_SWEEP = {"abl_kl025x": (0.7, 45.0), "dipp4": (0.6, 25.0), "abl_kl4x": (0.4, 15.0)}


def _write(out: Path, runs: dict[str, tuple[float, float, list[float]]], teacher=True) -> Path:
    for name, (acc, fid, accs) in runs.items():
        for seed in range(1 if name.startswith("abl_") else 3):
            d = out / "runs" / f"{name}_s{seed}"
            d.mkdir(parents=True)
            noise = 0.002 * seed
            (d / "eval.json").write_text(json.dumps(_timed(name, seed, acc + noise, fid, [a + noise for a in accs])))
    if teacher:
        d = out / "runs" / "teacher_s0"
        d.mkdir(parents=True)
        t = {"name": "teacher", "label": "teacher", "group": "table", "seed": 0, "preset": None, "overrides": [],
             "train_seconds": 0.0, "iterations": 0, **_entry(0.3, 10.0, judge=0.5)}
        (d / "eval.json").write_text(json.dumps(t))
    return out


def _runs(r0_sweep=R0_SWEEP, di_sweep=DI_SWEEP, r0=MID, r0plus=FAST, nonorm=SLOW):
    runs = {n: (a, f, r0 if n == "r0" else MID) for n, (a, f) in r0_sweep.items()}
    runs.update({n: (a, f, MID) for n, (a, f) in di_sweep.items()})
    runs["r0plus"] = (0.8, 12.0, r0plus)
    runs["abl_nonorm"] = (0.7, 14.0, nonorm)
    return runs


def _verdicts(out: Path) -> dict[str, tuple[str, str]]:
    return {c[:3]: (v, ev) for c, v, ev in claims(load_results(out))}


def test_claims_2_4_6_from_fronts_and_curves(tmp_path):
    v = _verdicts(_write(tmp_path / "a", _runs()))
    assert v["(2)"][0] == "confirmed" and "at 300 s: fronts" in v["(2)"][1] and "at 60 s: confirmed" in v["(2)"][1]
    assert v["(4)"][0] == "confirmed" and "threshold acc_mean" in v["(4)"][1]  # R0 (MID) before no-norm (SLOW)
    assert v["(6)"][0] == "confirmed"  # R0+ (FAST) before R0 (MID)

    # The other way round: DI++'s front above R0's, R0+ and no-norm slower than R0.
    swapped = _runs(r0_sweep={n: DI_SWEEP.get(m, (0.4, 15.0)) for n, m in zip(R0_FRONT, DIPP_FRONT + ["x"])},
                    di_sweep={n: R0_SWEEP[m] for n, m in zip(DIPP_FRONT, R0_FRONT)}, r0plus=SLOW, nonorm=FAST)
    v = _verdicts(_write(tmp_path / "b", swapped))
    assert (v["(2)"][0], v["(4)"][0], v["(6)"][0]) == ("refuted", "refuted", "refuted")

    # Crossing fronts; curves equal up to noise.
    crossing = _runs(di_sweep={"abl_kl025x": (0.5, 5.0), "dipp4": (0.7, 30.0), "abl_kl4x": (0.3, 4.0)},
                     r0plus=MID, nonorm=MID)
    v = _verdicts(_write(tmp_path / "c", crossing))
    assert (v["(2)"][0], v["(4)"][0], v["(6)"][0]) == ("mixed", "mixed", "mixed")


def test_claims_fall_back_when_sweeps_or_curves_are_missing(tmp_path):
    runs = _runs()
    for name in ("abl_reg0", "abl_reg001", "abl_reg05"):
        del runs[name]
    out = _write(tmp_path / "a", runs)
    for path in out.glob("runs/*/eval.json"):  # older eval.json: no curves against time
        r = json.loads(path.read_text())
        r.pop("curve", None)
        r["tracked"] = [[0, 0.3, 10.0], [50, 0.5, 10.0], [100, 0.8 if r["name"] != "abl_nonorm" else 0.5, 10.0]]
        path.write_text(json.dumps(r))
    v = _verdicts(out)
    assert v["(2)"][1].startswith("no fronts (missing: abl_reg0, abl_reg001, abl_reg05)")
    assert v["(4)"][1].startswith("no curves against training time; area rule")
    assert v["(6)"][1].startswith("no curves against training time; iteration rule")


def test_front_points_read_each_budget(tmp_path):
    res = load_results(_write(tmp_path / "a", _runs()))
    final = {p.label: p for p in front_points(res, R0_FRONT)}
    early = {p.label: p for p in front_points(res, R0_FRONT, 60.0)}
    assert final["r0"].acc == pytest.approx(0.802) and final["r0"].fid == pytest.approx(12.0)  # mean of 3 seeds
    assert early["abl_reg0"].acc == pytest.approx(0.72) and early["abl_reg0"].fid == pytest.approx(60.0)
    assert front_points(res, ["missing"]) == []


def test_report_tables_at_each_budget_and_time_curves(tmp_path):
    out = _write(tmp_path / "bench", _runs())
    (out / "plan.json").write_text(json.dumps({**BenchSettings.full().__dict__}))
    text = write_report(out, tmp_path / "docs").read_text()
    assert "## At each training budget" in text and "| method | n | 60 s | 300 s |" in text
    assert "| R0, 4 steps | 3 | 0.642 ± 0.002 | 0.802 ± 0.002 |" in text  # acc L3/L4 at 60 s and at 300 s
    assert "| Teacher, 25 steps + CFG 7.5 | 1 | 0.300 | 0.300 |" in text  # untrained: the same everywhere
    assert "evaluated at 60, 300 s" in text and "against training wall-clock" in text
    assert (tmp_path / "docs" / "bench_curves.png").stat().st_size > 1000


def test_plot_curves_writes_a_png(tmp_path):
    runs = {"R0": _timed("r0", 0, 0.8, 12.0, MID), "abl_nonorm": _timed("abl_nonorm", 0, 0.7, 14.0, SLOW)}
    plot_curves(runs, tmp_path / "curves.png", [60.0, 300.0])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
