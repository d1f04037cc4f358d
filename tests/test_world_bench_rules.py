"""The coded rules of benchmarks/r0_world.py (roles, targets, R0+ convergence) and
benchmarks/r0_sweep.py (the preset pick), fed constructed results (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import r0_sweep  # noqa: E402
import r0_world  # noqa: E402


def row(step, l3, l4):
    return {"step": step, "track/acc_L3": l3, "track/acc_L4": l4}


def test_roles_come_from_the_preset_names():
    assert r0_world.by_role(["world_r0_web", "world_r0plus_web", "world_r0_noreg"]) == {
        "r0": "world_r0_web", "r0plus": "world_r0plus_web", "noreg": "world_r0_noreg"}
    assert r0_world.by_role(["world_r0plus"]) == {"r0plus": "world_r0plus"}


def test_convergence_on_the_mean_of_l3_and_l4():
    rows = [{"step": 0, "loss": 1.0}, row(0, 0.2, 0.0), row(50, 0.3, 0.0), row(100, 0.4, 0.1)]
    assert r0_world.tracked(rows[0], "mean_L3_L4") is None
    assert r0_world.first_reaching(rows, "mean_L3_L4", 0.15) == 50  # (0.3 + 0) / 2 reaches 0.15
    assert r0_world.first_reaching(rows, "mean_L3_L4", 0.25) == 100
    assert r0_world.first_reaching(rows, "mean_L3_L4", 0.3) is None  # never: no ratio
    assert r0_world.first_reaching(rows, "track/acc_L4", 0.1) == 100  # the shipped teacher's criterion


def _results(teacher, r0, conv=None):
    t = {"acc_L3": 0.2, "acc_L4": 0.0, "acc_heldout": 0.6, "acc_paraphrase": 0.3, "world_fid": 100.0,
         "diversity": 30.0, "ms_per_image": 500.0, "nfe": 50}
    res = {"eval": {"teacher": t, "world_r0_web": {**t, **r0, "nfe": 4}}, "roles": {"r0": "world_r0_web"},
           "eval_setup": {"prompts_per_level": 100, "heldout_prompts": 100, "diversity_prompts": 24, "teacher": teacher}}
    if conv:
        res["convergence"] = conv
    return res


def test_report_states_the_web_teachers_targets():
    md = r0_world.report(_results("teacher_web", {"acc_L3": 0.45, "acc_L4": 0.1, "acc_heldout": 0.5,
                                                  "world_fid": 110.0, "diversity": 24.0, "ms_per_image": 10.0},
                                  {"metric": "mean_L3_L4", "r0_final": 0.275, "r0_iterations": 600,
                                   "r0plus_first_iteration": None, "ratio": None,
                                   "curves": {"world_r0_web": [[0, 0.1], [600, 0.275]]}}))
    assert "+25.0 points; target +20" in md and "+10.0 points; target +20" in md
    assert "acc_heldout: R0 0.500 vs teacher 0.600 (target: not lower)" in md
    assert "1.10 (target <= 1.2)" in md and "0.80 (target >= 0.70)" in md
    assert "tracked mean_L3_L4 (0.275) at iteration None of R0's 600 (ratio never" in md


def test_report_keeps_the_shipped_teachers_targets_and_old_folders():
    """Folders written before roles and the metric key were recorded (benchmarks/results/r0_world.json)."""
    res = _results("teacher", {"acc_L3": 0.3, "acc_L4": 0.0, "world_fid": 160.0, "diversity": 30.0,
                               "ms_per_image": 10.0},
                   {"r0_final_acc_L4": 0.71, "r0_iterations": 300, "r0plus_first_iteration": 0, "ratio": 0.0})
    res["eval"]["world_r0"] = res["eval"].pop("world_r0_web")
    del res["roles"], res["eval_setup"]["teacher"]
    md = r0_world.report(res)
    assert "+10.0 points; target +10" in md and "1.60 (target <= 1.5)" in md and "not lower" not in md
    assert "tracked acc_L4 (0.710) at iteration 0 of R0's 300 (ratio 0.0" in md


def test_sweep_pick_rule():
    """Out by world-FID or diversity, then the best mean L3/L4; ties to the larger lambda_w, the shorter run."""
    t = {"acc_L3": 0.2, "acc_L4": 0.0, "world_fid": 100.0, "diversity": 30.0}

    def m(l3, fid, div=30.0):
        return {"acc_L3": l3, "acc_L4": 0.0, "world_fid": fid, "diversity": div}

    res = {"eval": {"teacher": t,
                    "0|0|600": m(0.5, 130.0), "0|1|600": m(0.5, 130.0),  # best accuracy, FID 1.3x: out
                    "0|0|300": m(0.4, 100.0, 20.0), "0|1|300": m(0.4, 100.0, 20.0),  # diversity 0.67x: out
                    "0.1|0|600": m(0.3, 110.0), "0.1|1|600": m(0.3, 110.0),
                    "0.1|0|300": m(0.3, 100.0), "0.1|1|300": m(0.3, 100.0),
                    "0.01|0|300": m(0.3, 90.0), "0.01|1|300": m(0.3, 90.0)}}
    pick = r0_sweep.summarize(res)["pick"]
    assert (pick["weight"], pick["length"]) == (0.1, 300)
    res["eval"]["0.01|1|300"] = m(0.4, 90.0)  # now strictly better
    assert r0_sweep.summarize(res)["pick"]["weight"] == 0.01
    res["eval"] = {"teacher": t, "0|0|600": m(0.5, 130.0)}
    assert r0_sweep.summarize(res)["pick"] is None
