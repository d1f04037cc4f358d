"""`rzero report`: a self-contained HTML page of a real (tiny) training run."""

from __future__ import annotations

import base64
import json
import re
import shutil
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image

from rzero.cli.main import main
from rzero.config import load_config
from rzero.config.schema import TrainConfig
from rzero.utils.stats import read_jsonl

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


@pytest.fixture(scope="module")
def tiny_run(world_assets, tmp_path_factory) -> Path:
    """2 iterations of R0 with tracking, a grid and a checkpoint at every iteration."""
    from rzero.trainers import R0Trainer

    out = tmp_path_factory.mktemp("run") / "r0"
    cfg = load_config(TrainConfig, CONFIGS / "world_r0.yaml",
                      ["iterations=2", "batch_size=2", "track_every=1", "track_prompts=2", "sample_every=1",
                       "checkpoint_every=1", "log_every=1", "threads=1"])
    R0Trainer(cfg, out, asset_dir=world_assets).fit()
    return out


def _pngs(text: str) -> list[Image.Image]:
    images = []
    for b64 in DATA_URI.findall(text):
        img = Image.open(BytesIO(base64.b64decode(b64)))
        img.load()  # raises on a truncated or corrupt PNG
        images.append(img)
    return images


def _assert_self_contained(text: str) -> None:
    # No resource may come from elsewhere: no http(s) or protocol-relative src/href, no
    # external scripts or stylesheets, no CSS url() to a remote place.
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", text, re.I)


def test_report_of_a_finished_run(tiny_run, world_assets, tmp_path, capsys):
    out = tmp_path / "sub" / "report.html"
    rc = main(["report", str(tiny_run), "--out", str(out), "--assets", str(world_assets), "--teacher-steps", "2"])
    assert rc == 0, capsys.readouterr().err
    assert str(out) in capsys.readouterr().out
    text = out.read_text(encoding="utf-8")
    _assert_self_contained(text)

    # The resolved config, verbatim (HTML-escaped).
    assert "track_prompts: 2" in text and "method: r0" in text
    # The metrics: every key logged in stats.jsonl appears, with its last value.
    rows = read_jsonl(tiny_run / "stats.jsonl")
    last_fid = [r["track/world_fid"] for r in rows if "track/world_fid" in r][-1]
    from rzero.apps.run_report import _fmt

    assert "track/world_fid" in text and f"<td>{_fmt(last_fid)}</td>" in text
    assert all(k in text for r in rows for k in r if k not in ("step", "time"))
    assert "finished" in text and "2 of 2" in text

    # Images: the three training grids byte for byte, the two comparison grids, the curves.
    for step in (0, 1, 2):
        grid = (tiny_run / "samples" / f"step_{step:06d}.png").read_bytes()
        assert base64.b64encode(grid).decode() in text
    pngs = _pngs(text)
    assert len(pngs) >= 3 + 2 + 2  # grids over training, teacher + generator, >= 2 curve figures
    assert "teacher: 2 DDIM steps, CFG 7.5" in text and "final snapshot after 2 iterations" in text
    grid_size = Image.open(tiny_run / "samples" / "step_000002.png").size
    assert sum(p.size == grid_size for p in pngs) >= 5  # teacher and generator grids match the run's grids
    # The teacher grid is cached in the run folder and reused.
    assert len(list((tiny_run / "report_cache").glob("teacher_*_s2_cfg7.5_eta*.png"))) == 1
    # No alarm file in a 2-iteration run: the section says so instead of failing.
    assert "Hacking alarm:" in text


def test_report_of_an_interrupted_run_with_alarm(tiny_run, tmp_path):
    """No final/ snapshot, a half-written last stats line, and a fired alarm."""
    from rzero.apps.run_report import write_report

    run = tmp_path / "interrupted"
    run.mkdir()
    shutil.copy(tiny_run / "config.yaml", run / "config.yaml")
    shutil.copytree(tiny_run / "samples", run / "samples")
    stats = (tiny_run / "stats.jsonl").read_text()
    (run / "stats.jsonl").write_text(stats + '{"step": 3, "reward/world-cl')  # killed mid-write
    (run / "eval_generator.json").write_text(json.dumps({"acc_L1": 0.625, "world_fid": 123.5}))
    (run / "hacking_alarm.json").write_text(json.dumps(
        {"patience": 3, "events": [{"iteration": 40, "train_reward": 0.7, "heldout_score": 0.125, "streak": 3}]}))
    path = write_report(run, teacher=False)
    assert path == run / "report.html"
    text = path.read_text(encoding="utf-8")
    _assert_self_contained(text)
    assert "in progress or interrupted" in text
    assert "Hacking alarm: RAISED" in text and "<td>0.125</td>" in text
    assert "<td>0.625</td>" in text and "<td>123.5</td>" in text  # eval_*.json table
    assert "training weights at iteration 2" in text  # generator side falls back to the newest grid
    assert "teacher grid skipped" in text


def test_report_without_alarm_logs_says_not_available(tiny_run, tmp_path):
    from rzero.apps.run_report import build_report

    run = tmp_path / "old"
    run.mkdir()
    (run / "config.yaml").write_text("method: r0\nbackbone: world\n")  # a run from before the alarm
    text = build_report(run, teacher=False)
    assert "Hacking alarm: not available" in text
    assert "Not available: nothing logged yet" in text


@pytest.mark.parametrize("kind", ["missing", "empty_dir", "file"])
def test_bad_run_dir_is_one_line_error(tmp_path, capsys, kind):
    target = tmp_path / "x"
    if kind == "empty_dir":
        target.mkdir()
    elif kind == "file":
        target.write_text("hello")
    rc = main(["report", str(target)])
    err = capsys.readouterr().err
    assert rc != 0
    assert err.count("\n") == 1 and err.startswith("rzero: error:") and "rzero train" in err
    assert not (tmp_path / "x" / "report.html").exists()


def test_bad_options_are_one_line_errors(tiny_run, capsys):
    assert main(["report", str(tiny_run), "--max-grids", "1"]) != 0
    assert "--max-grids" in capsys.readouterr().err
    assert main(["report", str(tiny_run), "--teacher-steps", "0"]) != 0
    assert "--teacher-steps" in capsys.readouterr().err


def test_pick_grids_keeps_first_and_last():
    from rzero.apps.run_report import _pick_grids

    grids = [(i * 100, Path(f"step_{i * 100:06d}.png")) for i in range(31)]
    picked = _pick_grids(grids, 5)
    assert len(picked) == 5 and picked[0] == grids[0] and picked[-1] == grids[-1]
    assert _pick_grids(grids[:3], 5) == grids[:3]
