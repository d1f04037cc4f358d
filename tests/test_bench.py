"""`rzero bench`: plan, claim rules and the report, on synthetic eval.json files (no training here)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from rzero.apps.bench.claims import _convergence_verdict, claims, compare, majority_verdict
from rzero.apps.bench.plan import ABLATIONS, TABLE, BenchSettings, make_jobs, plan_text
from rzero.apps.bench.report import load_results, write_report
from rzero.cli.main import main


def test_plan_counts_runs_and_fits_the_budgets():
    full, quick = BenchSettings.full(), BenchSettings.quick()
    jobs = make_jobs(full)
    assert len(jobs) == full.seeds * len(TABLE) + full.ablation_seeds * len(ABLATIONS)
    assert len({j.run_name for j in jobs}) == len(jobs)
    assert sum(j.preset is None for j in jobs) == full.seeds  # the teacher is only evaluated
    text, wall = plan_text(jobs, full)
    assert "29 training runs" in text and "3 evaluations" in text and wall <= 120 * 60
    assert plan_text(make_jobs(quick), quick)[1] <= 10 * 60
    assert full.budgets() == [60.0, 150.0, 300.0] and quick.budgets() == [15.0, 30.0]
    assert BenchSettings(time_budget_s=100.0).budgets() == [60.0, 100.0]  # budgets past the last are dropped
    assert full.seeds >= 3
    with pytest.raises(ValueError, match="unknown method"):
        make_jobs(full, ["nope"])


def test_compare_uses_standard_errors_and_tolerances():
    assert compare([0.5, 0.52, 0.51], [0.3, 0.31, 0.29], "acc_L4") == 1
    assert compare([0.3, 0.31, 0.29], [0.5, 0.52, 0.51], "acc_L4") == -1
    assert compare([0.5, 0.1, 0.9], [0.4, 0.45, 0.5], "acc_L4") == 0  # noisy: within 2 SE
    assert compare([0.50], [0.49], "acc_L4") == 0  # within the 0.02 tolerance
    assert compare([10.0], [20.0], "world_fid") == 1  # lower FID is better
    assert compare([], [1.0], "acc_L4") == 0


def test_majority_verdict():
    assert majority_verdict([1, 1, 0]) == "confirmed"
    assert majority_verdict([1, -1, 1]) == "mixed"
    assert majority_verdict([-1, 0]) == "refuted"
    assert majority_verdict([0, 0]) == "mixed"


def test_convergence_rule():
    r0 = [{"tracked": [[0, 0.1, 5.0], [50, 0.3, 4.0], [100, 0.5, 3.0]]}]
    fast = [{"tracked": [[0, 0.1, 5.0], [50, 0.6, 3.0]]}]
    slow = [{"tracked": [[0, 0.1, 5.0], [50, 0.2, 3.0], [100, 0.4, 3.0]]}]
    assert _convergence_verdict(r0, fast)[0] == "confirmed"
    assert _convergence_verdict(r0, slow)[0] == "refuted"
    flat = [{"tracked": [[0, 0.1, 5.0], [100, 0.1, 5.0]]}]
    assert _convergence_verdict(flat, fast)[0] == "mixed"


def _fake_result(name, seed, acc, fid, judge, group="table", tracked_slope=0.001):
    r = {"name": name, "label": name, "group": group, "seed": seed, "preset": None, "overrides": [],
         "train_seconds": 10.0, "iterations": 100, "nfe": 4, "ms_per_image": 1.0, "diversity": 1.0,
         "world_fid": fid, "acc_heldout": acc, "reward_world_clip": 0.5, "reward_world_judge": judge,
         "reward_world_quality": -5.0, "train_reward_world_judge": judge,
         "tracked": [[s, 0.1 + tracked_slope * s, fid] for s in (0, 50, 100)],
         "diagnostics": [[0, -0.5, 0.2, 0.1], [10, -0.4, 0.1, 0.05]]}
    for lv in (1, 2, 3, 4):
        r[f"acc_L{lv}"] = acc
    return r


def _write_runs(out: Path, spec: dict[str, tuple[float, float, float]], seeds=3):
    for name, (acc, fid, judge) in spec.items():
        for seed in range(seeds if not name.startswith("abl_") else 1):
            d = out / "runs" / f"{name}_s{seed}"
            d.mkdir(parents=True)
            noise = 0.002 * seed
            (d / "eval.json").write_text(json.dumps(_fake_result(name, seed, acc + noise, fid, judge + noise,
                                                                 tracked_slope=0.004 if name == "r0plus" else 0.002)))


def test_report_from_json_and_claim_verdicts(tmp_path):
    spec = {"teacher": (0.3, 10.0, 0.5), "r0": (0.5, 12.0, 0.7), "r0plus": (0.55, 12.0, 0.72),
            "distar": (0.2, 30.0, 0.6), "dipp1": (0.2, 30.0, 0.6), "dipp4": (0.3, 25.0, 0.6),
            "r0_noreg": (0.2, 40.0, 0.9), "abl_nonorm": (0.3, 14.0, 0.6), "abl_rew1": (0.4, 20.0, 0.8)}
    _write_runs(tmp_path / "bench", spec)
    res = load_results(tmp_path / "bench")
    assert len(res["r0"]) == 3 and res["r0"][0]["acc_mean"] == pytest.approx(0.5)
    verdicts = {c[:3]: v for c, v, _ in claims(res)}
    assert verdicts == {"(1)": "confirmed", "(2)": "confirmed", "(3)": "confirmed", "(4)": "confirmed",
                        "(5)": "confirmed", "(6)": "confirmed"}
    # Flip R0 below DI++: claim 2 must turn.
    spec["dipp4"] = (0.8, 5.0, 0.9)
    _write_runs(tmp_path / "bench2", spec)
    assert dict((c[:3], v) for c, v, _ in claims(load_results(tmp_path / "bench2")))["(2)"] == "refuted"

    path = write_report(tmp_path / "bench", tmp_path / "docs")
    text = path.read_text()
    assert "## Table 1 analogue" in text and "| R0, 4 steps | 3 |" in text
    assert "0.502 ± 0.002" in text  # mean ± std over the three seeds of R0's acc_L1
    assert text.count("**confirmed**") == 6
    assert (tmp_path / "docs" / "bench_curves.png").stat().st_size > 1000
    assert (tmp_path / "docs" / "bench_diagnostics.png").is_file()


def test_cli_report_without_runs_is_one_line_error(tmp_path, capsys):
    rc = main(["bench", "--report", "--out", str(tmp_path / "none"), "--docs", str(tmp_path / "docs")])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("rzero: error: no finished runs") and "\n" not in err


def test_cli_dry_run_prints_plan(capsys):
    assert main(["bench", "--quick", "--dry-run", "--time-budget", "7", "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "7 s training" in out and "over 1 parallel job" in out
    assert main(["bench", "--dry-run", "--jobs", "0"]) != 0


def test_a_quick_bench_refuses_a_full_bench_folder(tmp_path, capsys):
    """Finished runs are reused by name: a --quick bench in a full bench's folder would report the
    full runs as quick ones (it did, once), so the folder's plan.json must match."""
    out = tmp_path / "bench"
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(asdict(BenchSettings.full())))
    before = (out / "plan.json").read_text()
    rc = main(["bench", "--quick", "--out", str(out), "--only", "teacher", "--docs", str(tmp_path / "docs")])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert "holds a bench run with other settings" in err and "\n" not in err
    assert (out / "plan.json").read_text() == before  # nothing overwritten


def test_a_run_trained_with_an_older_preset_is_refused(tmp_path, capsys):
    """Runs are reused by name: after a preset changes, an old run must not pass as a new one."""
    from rzero.apps.bench.job import job_config
    from rzero.apps.bench.run import _check_runs_match_presets
    from rzero.config.io import save_config

    s = BenchSettings.quick()
    job = next(j for j in make_jobs(s, ["r0"]) if j.seed == 0)
    out = tmp_path / "bench"
    run = out / "runs" / job.run_name
    run.mkdir(parents=True)
    (out / "plan.json").write_text(json.dumps(asdict(s)))
    cfg = job_config(job, s)
    save_config(cfg, run / "config.yaml")
    _check_runs_match_presets(out, [job], s)  # the same config: reusable
    cfg.generator.eta_max = 0.123  # what an older preset would have saved
    save_config(cfg, run / "config.yaml")
    before = (run / "config.yaml").read_text()
    rc = main(["bench", "--quick", "--out", str(out), "--only", "r0", "--docs", str(tmp_path / "docs")])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert "trained with another config" in err and "generator.eta_max" in err and "\n" not in err
    assert (run / "config.yaml").read_text() == before and not (tmp_path / "docs").exists()


def test_device_reaches_the_runs_and_the_report(tmp_path, capsys, monkeypatch):
    """--device: the runs' TrainConfig trains there, an unavailable GPU is a one-line error before
    anything is written, a CPU bench folder from before the setting stays reusable, and the report
    names what trained the runs."""
    import torch

    from rzero.apps.bench.job import job_config
    from rzero.apps.bench.run import _check_same_settings

    s = BenchSettings.quick()
    job = next(j for j in make_jobs(s, ["r0"]))
    assert job_config(job, s).device == "cpu"
    s.device = "cuda"
    assert job_config(job, s).device == "cuda"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "bench"
    rc = main(["bench", "--quick", "--device", "cuda", "--out", str(out), "--docs", str(tmp_path / "docs")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "--device cuda: no CUDA GPU" in err and "\n" not in err and not out.exists()

    old = asdict(BenchSettings.quick())
    del old["device"]  # a plan.json written before the setting existed: those benches ran on the CPU
    out.mkdir()
    (out / "plan.json").write_text(json.dumps(old))
    _check_same_settings(out, BenchSettings.quick())
    gpu = BenchSettings.quick()
    gpu.device = "cuda"
    with pytest.raises(ValueError, match="device"):
        _check_same_settings(out, gpu)

    spec = {"teacher": (0.3, 10.0, 0.5), "r0": (0.5, 12.0, 0.7)}
    _write_runs(tmp_path / "b", spec, seeds=1)
    (tmp_path / "b" / "plan.json").write_text(json.dumps(asdict(BenchSettings.quick())))
    assert "(one CPU thread)" in write_report(tmp_path / "b", tmp_path / "d1").read_text()
    for run in (tmp_path / "b" / "runs").iterdir():
        r = json.loads((run / "eval.json").read_text())
        (run / "eval.json").write_text(json.dumps({**r, "device": "NVIDIA H200"}))
    assert "(on NVIDIA H200)" in write_report(tmp_path / "b", tmp_path / "d2").read_text()
