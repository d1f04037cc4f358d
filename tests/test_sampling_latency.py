"""benchmarks/sampling_latency.py: both models timed in one process, the base model named in the record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import sampling_latency  # noqa: E402


@pytest.mark.parametrize("teacher", ["teacher", "teacher_web"])
def test_latency_record_names_the_base_model_and_counts_its_calls(snapshot, tmp_path, monkeypatch, teacher):
    out = tmp_path / "latency.json"
    monkeypatch.setattr(sys, "argv", ["sampling_latency.py", "--checkpoint", str(snapshot), "--teacher", teacher,
                                      "--batch", "2", "--repeats", "1", "--out", str(out)])
    sampling_latency.main()
    result = json.loads(out.read_text())
    assert result["teacher"]["asset"] == teacher
    assert result["teacher"]["nfe"] == 50 and result["generator"]["nfe"] == 4  # 25 steps x CFG pair vs 4 steps
    assert result["teacher"]["ms_per_image"] > 0 and result["generator"]["ms_per_image"] > 0
    # The record rounds ms to 0.01 and the ratio to 0.1 (from the unrounded times).
    ratio = result["teacher"]["ms_per_image"] / result["generator"]["ms_per_image"]
    assert abs(result["speedup"] - ratio) <= 0.051 + 0.01 * ratio


def test_unknown_base_model_is_refused(snapshot, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["sampling_latency.py", "--checkpoint", str(snapshot), "--teacher", "nope"])
    with pytest.raises(SystemExit) as exc:
        sampling_latency.main()
    assert exc.value.code == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
