"""benchmarks/world_checks.py's selection check: each reward picks its best of N teacher draws."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import world_checks  # noqa: E402

# (draws, prompts): prompt 0 is right only in draw 2, prompt 1 in draws 0 and 3, prompt 2 never.
CORRECT = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
KNOWS = CORRECT + 0.01 * torch.arange(4.0)[:, None]  # a reward with the correct draws on top, ties broken


def scores_for(**by_name: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every reward the table reads; the ones not given score every draw alike."""
    names = set(world_checks.PROMPT_REWARDS) | set(world_checks.COMPOSITE)
    return {name: by_name.get(name.replace("-", "_"), torch.zeros_like(CORRECT)) for name in names}


def test_a_reward_that_knows_reaches_any_and_a_blind_one_stays_at_one_draw():
    backwards = -KNOWS  # prefers the wrong draws
    rows = world_checks.selection_table(CORRECT, CORRECT * 0.5, scores_for(world_clip=KNOWS, world_judge=backwards))
    assert list(rows) == ["1", "2", "4"]
    full = rows["4"]
    assert full["any"] == pytest.approx(2 / 3) and full["one_draw"] == pytest.approx(3 / 12)
    assert full["world-clip"] == pytest.approx(2 / 3)  # the ceiling
    assert full["world-judge"] == 0.0
    assert full["world-clip-coarse"] == pytest.approx(1 / 3)  # blind: argmax of ties is draw 0
    assert full["world-clip_fraction"] == pytest.approx(1 / 3)  # the picked draws' fractions (0.5 where right)
    # Prefixes use only the first k draws: at k = 2 prompt 0 has no correct draw yet.
    assert rows["2"]["any"] == pytest.approx(1 / 3) and rows["2"]["world-clip"] == pytest.approx(1 / 3)
    assert rows["1"]["world-judge"] == rows["1"]["one_draw"] == pytest.approx(1 / 3)  # one draw: no choice


def test_the_composite_sums_z_scores_so_no_reward_scale_decides():
    # world-clip and world-judge point at the correct draws by small margins; world-quality points away
    # with a 1000x larger spread. Summed raw, quality would decide; z-scored, two votes beat one.
    loud_wrong = -1000.0 * KNOWS
    rows = world_checks.selection_table(CORRECT, CORRECT, scores_for(world_clip=KNOWS, world_judge=KNOWS,
                                                                     world_quality=loud_wrong))
    assert rows["4"]["composite"] == pytest.approx(2 / 3)


def test_sizes_end_at_the_draw_count_when_it_is_not_a_power_of_two():
    correct = CORRECT[:3]
    rows = world_checks.selection_table(correct, correct, {k: v[:3] for k, v in scores_for().items()})
    assert list(rows) == ["1", "2", "3"]


def test_best_of_runs_end_to_end_on_the_shipped_world(world_assets, tmp_path, monkeypatch):
    out = tmp_path / "best_of.json"
    monkeypatch.setattr(sys, "argv", ["world_checks.py", "--best-of", "2", "--best-of-n", "2", "--best-of-steps", "1",
                                      "--best-of-cfg", "1", "--threads", "1", "--out", str(out)])
    world_checks.main()
    result = json.loads(out.read_text())["best_of"]
    assert result["draws"] == 2 and "teacher_web" in result["teacher"]
    for level in ("L3", "L4"):
        row = result[level]["2"]
        for name in (*world_checks.PROMPT_REWARDS, "composite"):
            assert 0.0 <= row[name] <= row["any"] + 1e-9  # a pick is never better than the ceiling


@pytest.mark.parametrize("bad", [["--best-of", "-1"], ["--best-of", "4", "--best-of-n", "0"],
                                 ["--best-of", "4", "--best-of-steps", "0"]])
def test_bad_selection_sizes_are_refused_in_one_line(monkeypatch, capsys, bad):
    monkeypatch.setattr(sys, "argv", ["world_checks.py", *bad])
    with pytest.raises(SystemExit) as exc:
        world_checks.main()
    assert exc.value.code == 2 and "--best-of needs N >= 1 draws" in capsys.readouterr().err
