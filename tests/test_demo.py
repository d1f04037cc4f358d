"""The demo's "where the teacher fails" section: which prompts it picks and what it counts; its
`--preset` choice (a world R0 preset; the report's teacher is the preset's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rzero.apps.demo import _failure_section, _train_config, run_demo, teacher_failures
from rzero.config import save_config
from rzero.eval.world_eval import ImageSource, real_source
from rzero.world.render import render
from rzero.world.scene import complete_specs


def _blank_source() -> ImageSource:
    # Backgrounds only: every L3/L4 prompt asks for at least one object, so every draw is wrong.
    def generate(prompts, specs, idx):
        scenes = complete_specs(specs, torch.Generator().manual_seed(0))
        scenes.slots[:] = -1
        return render(scenes, torch.Generator().manual_seed(0))

    return ImageSource("blank", 1, generate)


def test_teacher_failures_keeps_only_prompts_the_teacher_gets_wrong(tmp_path):
    failures = teacher_failures(_blank_source(), real_source(5), tmp_path, seeds=2, candidates=3, keep=4)
    assert len(failures) == 4
    assert all(f["teacher"] == 0 and f["r0"] == 2 and f["seeds"] == 2 for f in failures)
    assert (tmp_path / "grid_failures_teacher.png").is_file() and (tmp_path / "grid_failures_r0.png").is_file()
    text = _failure_section(failures)
    assert "teacher 0/8, R0 8/8" in text
    json.dumps(failures)


def test_teacher_failures_is_empty_when_the_teacher_is_right(tmp_path):
    assert teacher_failures(real_source(5), _blank_source(), tmp_path, seeds=2, candidates=3) == []
    assert not (tmp_path / "grid_failures_teacher.png").exists()
    assert "nothing to show" in _failure_section([])


CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_demo_preset_names_the_teacher_and_refuses_other_methods(tmp_path):
    assert _train_config(True, CONFIGS / "world_r0_web.yaml").backbone_path == "teacher_web"
    assert _train_config(True, CONFIGS / "world_r0.yaml").backbone_path == ""  # the shipped teacher
    assert _train_config(True, CONFIGS / "world_r0_web.yaml").iterations == 4  # --quick still shrinks it
    with pytest.raises(ValueError, match="method 'distar'"):
        _train_config(True, CONFIGS / "world_distar.yaml")
    with pytest.raises(FileNotFoundError, match="not found"):
        _train_config(True, tmp_path / "nope.yaml")


def test_demo_refuses_to_resume_another_presets_run(tmp_path):
    """A demo folder trained with world_r0 is not continued as world_r0_web (LoRA, another teacher)."""
    (tmp_path / "r0").mkdir()
    save_config(_train_config(True, CONFIGS / "world_r0.yaml"), tmp_path / "r0" / "config.yaml")
    before = (tmp_path / "r0" / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="another preset .*backbone_path.*pass another --out"):
        run_demo(tmp_path, quick=True, preset=CONFIGS / "world_r0_web.yaml")
    assert (tmp_path / "r0" / "config.yaml").read_bytes() == before and sorted(tmp_path.iterdir()) == [tmp_path / "r0"]
