"""The short version of benchmarks/fuzz_cli.py (issue 16): a fixed mix of three dozen seeded cases
over every family (mutated presets and overrides, resumes and reports of mutated run folders,
mutated snapshots, exports into the run, web requests with hostile Host headers and bodies),
each run through the real command in a forked child. The long run (>= 2,000 cases) writes
benchmarks/results/fuzz_cli.json; docs/reliability.md has its numbers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_short_fuzz_finds_nothing(tmp_path):
    out = tmp_path / "fuzz.json"
    # A fresh interpreter: the fuzzer forks after its imports, which is only safe in a process
    # that never ran a multi-threaded torch op (this one has).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fuzz_cli.py"), "--quick", "--cases", "36",
                           "--seed", "1", "--root", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["cases"] == 36
    assert set(summary["per_family"]) == {"config", "overrides", "resume", "report", "snapshot", "export", "web"}
    problems = {k: v for k, v in summary["totals"].items() if v and k != "rejected_valid"}
    assert not problems, json.dumps(summary["examples"], indent=1)[:6000]
    assert summary["totals"]["rejected_valid"] == 0, json.dumps(summary["examples"], indent=1)[:6000]
    assert proc.returncode == 0
