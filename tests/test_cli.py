"""The `rzero` command line: exit codes, one-line errors, dry runs, verify and sample.

Most cases call `rzero.cli.main.main` in-process; a few run `python -m rzero.cli.main` to
check the real exit status and that stderr holds exactly one `rzero: error:` line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from rzero.cli.main import build_parser, main
from rzero.world.assets import ASSET_FILES, MANIFEST


def command_paths(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every (sub)command of the parser, found by walking argparse's subparsers."""
    import argparse

    parser = parser or build_parser()
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, prefix + (name,))
    return paths


SUBCOMMANDS = command_paths()


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """main(argv) in-process -> (exit code, stdout, stderr); argparse's SystemExit included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rzero.cli.main", *map(str, argv)], capture_output=True,
                          text=True, env=env, timeout=300)


def one_error_line(err: str, *fragments: str) -> str:
    """stderr is exactly one `rzero: error:` line containing every fragment."""
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one stderr line, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("rzero: error: "), line
    for f in fragments:
        assert f in line, (f, line)
    return line


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def assets_untouched(world_assets):
    """No command in this module, failing or not, may modify the asset folder."""
    before = digests(world_assets)
    yield
    assert digests(world_assets) == before


@pytest.fixture
def assets_copy(world_assets, tmp_path) -> Path:
    dst = tmp_path / "assets"
    shutil.copytree(world_assets, dst)
    return dst


# ---------------------------------------------------------------------------- help, usage


@pytest.mark.parametrize("sub", SUBCOMMANDS, ids=lambda s: " ".join(s) or "rzero")
def test_help_of_every_subcommand(capsys, sub):
    code, out, err = run(capsys, *sub, "--help")
    assert code == 0
    assert out.startswith("usage: rzero") and not err


def test_every_subcommand_is_covered():
    assert {("world",), ("world", "build"), ("world", "verify"), ("eval",), ("sample",), ("demo",)} <= set(SUBCOMMANDS)


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("rzero ")


def test_no_command_exits_2(capsys):
    code, out, _ = run(capsys)
    assert code == 2 and "usage: rzero" in out
    proc = run_subprocess()
    assert proc.returncode == 2


def test_world_without_subcommand(capsys):
    code, _, err = run(capsys, "world")
    assert code == 2
    one_error_line(err, "build or verify")


# ------------------------------------------------------------------------- configs


def test_eval_dry_run_prints_yaml(capsys):
    code, out, err = run(capsys, "eval", "--dry-run")
    assert code == 0 and not err
    cfg = yaml.safe_load(out)
    assert cfg["steps"] == 25 and cfg["model"] == "teacher"
    code, out, _ = run(capsys, "eval", "--dry-run", "steps=4", "--cfg", "3")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["steps"] == 4 and cfg["cfg"] == 3.0


def test_world_build_dry_run_override(capsys):
    code, out, err = run(capsys, "world", "build", "--dry-run", "teacher.steps=5")
    assert code == 0 and not err
    cfg = yaml.safe_load(out)
    assert cfg["teacher"]["steps"] == 5
    assert cfg["inspector"]["steps"] != 5  # only the named stage changed


def test_world_build_dry_run_preset_file(capsys, tmp_path):
    preset = tmp_path / "build.yaml"
    preset.write_text("pool_size: 64\nteacher:\n  steps: 7\n")
    code, out, _ = run(capsys, "world", "build", str(preset), "teacher.steps=9", "--dry-run")
    assert code == 0
    cfg = yaml.safe_load(out)
    assert cfg["pool_size"] == 64 and cfg["teacher"]["steps"] == 9


def test_unknown_field_suggests(capsys):
    code, _, err = run(capsys, "eval", "--dry-run", "stepz=4")
    assert code == 2
    one_error_line(err, "stepz", "did you mean 'steps'")
    code, _, err = run(capsys, "world", "build", "--dry-run", "teacher.stepz=5")
    assert code == 2
    one_error_line(err, "did you mean 'teacher.steps'")


def test_unknown_field_subprocess():
    proc = run_subprocess("world", "build", "--dry-run", "teacher.stepz=5")
    assert proc.returncode == 2
    assert proc.stdout == ""
    one_error_line(proc.stderr, "did you mean 'teacher.steps'")


@pytest.mark.parametrize("override, fragment", [
    ("steps=abc", "expects int"),
    ("cfg=[1, 2]", "expects float"),
    ("steps=0", "steps must be > 0"),
    ("model=nope", "model must be 'teacher' or 'real'"),
    ("diversity_seeds=1", "diversity_seeds"),
])
def test_bad_values_exit_2(capsys, override, fragment):
    code, out, err = run(capsys, "eval", "--dry-run", override)
    assert code == 2 and out == ""
    one_error_line(err, fragment)


def test_eval_model_nope_without_dry_run(capsys):
    code, out, err = run(capsys, "eval", "model=nope")
    assert code == 2 and out == ""
    one_error_line(err, "model must be")


def test_missing_preset_file(capsys, tmp_path):
    missing = tmp_path / "nope" / "preset.yaml"
    code, _, err = run(capsys, "eval", str(missing), "--dry-run")
    assert code == 2
    one_error_line(err, "not found")
    code, _, err = run(capsys, "world", "build", str(missing), "--dry-run")
    assert code == 2
    one_error_line(err, "not found")


def test_malformed_yaml_preset(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\nmodel: real\n")
    code, _, err = run(capsys, "eval", str(bad), "--dry-run")
    assert code == 2
    one_error_line(err, "not valid YAML", "line")
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n- 2\n")
    code, _, err = run(capsys, "eval", str(notmap), "--dry-run")
    assert code == 2
    one_error_line(err, "mapping")
    binary = tmp_path / "bin.yaml"
    binary.write_bytes(b"steps: \xff\xfe\n")
    code, _, err = run(capsys, "eval", str(binary), "--dry-run")
    assert code == 2
    one_error_line(err, "UTF-8")


# --------------------------------------------------------------------------- world verify


def test_verify_ok(capsys, world_assets):
    code, out, err = run(capsys, "world", "verify", "--assets", world_assets)
    assert code == 0, err
    assert "all assets match" in out
    for name in ASSET_FILES:
        assert name in out


def flip_bytes(path: Path, n: int = 4) -> None:
    data = bytearray(path.read_bytes())
    for i in range(1, n + 1):
        data[-i * 97] ^= 0xFF  # inside the tensor data, so the file still parses
    path.write_bytes(bytes(data))


def test_verify_checksum_mismatch(capsys, assets_copy):
    flip_bytes(assets_copy / ASSET_FILES["judge"])
    before = digests(assets_copy)
    code, _, err = run(capsys, "world", "verify", "--assets", assets_copy)
    assert code == 1
    one_error_line(err, "checksum mismatch", ASSET_FILES["judge"])
    assert digests(assets_copy) == before  # verify never "repairs" or rewrites anything


def test_verify_checksum_mismatch_subprocess(assets_copy):
    flip_bytes(assets_copy / ASSET_FILES["inspector"])
    before = digests(assets_copy)
    proc = run_subprocess("world", "verify", "--assets", assets_copy)
    assert proc.returncode == 1
    one_error_line(proc.stderr, "checksum mismatch", ASSET_FILES["inspector"])
    assert digests(assets_copy) == before


def test_verify_missing_file(capsys, assets_copy):
    (assets_copy / ASSET_FILES["featnet"]).unlink()
    code, _, err = run(capsys, "world", "verify", "--assets", assets_copy)
    assert code == 1
    one_error_line(err, "not found", ASSET_FILES["featnet"])


def test_verify_missing_or_broken_manifest(capsys, assets_copy, tmp_path):
    code, _, err = run(capsys, "world", "verify", "--assets", tmp_path / "empty")
    assert code == 1
    one_error_line(err, "not found", MANIFEST)
    (assets_copy / MANIFEST).write_text("{not json")
    code, _, err = run(capsys, "world", "verify", "--assets", assets_copy)
    assert code == 1
    one_error_line(err, "not valid JSON")


# -------------------------------------------------------------------------------- sample


def test_sample_writes_png(capsys, world_assets, tmp_path):
    from PIL import Image

    out = tmp_path / "tmp" / "x.png"
    code, stdout, err = run(capsys, "sample", "--prompt", "a red circle", "--steps", "2", "--out", out,
                            "--assets", world_assets)
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as img:
        assert img.mode == "RGB" and img.width >= 32 and img.height >= 32
    assert "1 images written" in stdout


def test_sample_images_do_not_depend_on_batching(capsys, world_assets, tmp_path, monkeypatch):
    """Per-image noise and generators: 3 prompts in batches of 2 give the same grid as one batch."""
    import numpy as np
    from PIL import Image

    import rzero.cli.main as cli_main

    grids = []
    for batch in (64, 2):
        monkeypatch.setattr(cli_main, "SAMPLE_BATCH", batch)
        out = tmp_path / f"b{batch}.png"
        code, _, err = run(capsys, "sample", "--prompt", "a red circle", "--prompt", "a blue square",
                           "--prompt", "one green cross", "--steps", "2", "--out", out, "--assets", world_assets)
        assert code == 0, err
        with Image.open(out) as img:
            grids.append(np.asarray(img, dtype=np.int16))
    assert grids[0].shape == grids[1].shape
    assert np.abs(grids[0] - grids[1]).max() <= 1  # batch size may change float rounding, not the image
    assert grids[0].std() > 0


@pytest.mark.parametrize("kind", ["empty", "blank-lines", "non-utf8", "missing", "directory"])
def test_sample_bad_prompt_file(capsys, tmp_path, world_assets, kind):
    path = tmp_path / "prompts.txt"
    fragment = {"empty": "no prompts", "blank-lines": "no prompts", "non-utf8": "not UTF-8",
                "missing": "not found", "directory": "is a folder"}[kind]
    if kind == "empty":
        path.write_text("")
    elif kind == "blank-lines":
        path.write_text("\n   \n\t\n")
    elif kind == "non-utf8":
        path.write_bytes("a red circle\n".encode() + b"\xff\xfe a blue square\n")
    elif kind == "directory":
        path.mkdir()
    out = tmp_path / "x.png"
    code, _, err = run(capsys, "sample", "--prompt-file", path, "--steps", "1", "--out", out,
                       "--assets", world_assets)
    assert code not in (0, None)
    one_error_line(err, fragment)
    assert not out.exists()


def test_sample_missing_prompt_file_subprocess(tmp_path):
    proc = run_subprocess("sample", "--prompt-file", tmp_path / "missing.txt", "--out", tmp_path / "x.png")
    assert proc.returncode == 1
    one_error_line(proc.stderr, "not found")


@pytest.mark.parametrize("args, fragment", [
    ([], "at least one --prompt"),
    (["--prompt", "  "], "empty prompt"),
    (["--prompt", "a red circle", "--steps", "0"], "must be positive"),
    (["--prompt", "a red circle", "--eta", "2"], "--eta"),
])
def test_sample_bad_arguments(capsys, tmp_path, args, fragment):
    code, _, err = run(capsys, "sample", *args, "--out", tmp_path / "x.png")
    assert code == 2
    one_error_line(err, fragment)


def test_sample_with_corrupt_teacher_fails_cleanly(capsys, assets_copy, tmp_path):
    """A truncated teacher file is reported in one line, not as a traceback."""
    teacher = assets_copy / ASSET_FILES["teacher"]
    teacher.write_bytes(teacher.read_bytes()[:1000])
    code, _, err = run(capsys, "sample", "--prompt", "a red circle", "--steps", "1", "--out", tmp_path / "x.png",
                       "--assets", assets_copy)
    assert code == 1
    one_error_line(err, ASSET_FILES["teacher"])


def test_sample_unwritable_output_is_one_line(capsys, world_assets, tmp_path):
    """An --out whose parent is a file is a user error: one line, exit 1, no traceback."""
    (tmp_path / "afile").write_text("")
    code, _, err = run(capsys, "sample", "--prompt", "a red circle", "--steps", "1", "--out",
                       tmp_path / "afile" / "x.png", "--assets", world_assets)
    assert code == 1
    one_error_line(err, "afile")


def test_sample_late_error_subprocess(world_assets, tmp_path):
    """An error after the networks are loaded (corrupt generator weights): one stderr line."""
    snap = tmp_path / "run" / "final"
    snap.mkdir(parents=True)
    (snap / "generator.json").write_text('{"steps": 4, "backbone": "world"}')
    (snap / "generator.safetensors").write_bytes(b"\x00garbage" * 10)
    proc = run_subprocess("sample", "--checkpoint", tmp_path / "run", "--prompt", "a red circle",
                          "--out", tmp_path / "x.png", "--assets", world_assets)
    assert proc.returncode == 1
    one_error_line(proc.stderr, "corrupt")
    assert not (tmp_path / "x.png").exists()


def test_sample_output_extension_checked_before_work(tmp_path):
    proc = run_subprocess("sample", "--prompt", "a red circle", "--out", tmp_path / "x.txt")
    assert proc.returncode == 2
    one_error_line(proc.stderr, ".png")


# ---------------------------------------------------------------------------------- eval


def test_eval_real_end_to_end(capsys, world_assets, tmp_path):
    js, md = tmp_path / "m.json", tmp_path / "r" / "report.md"
    code, out, err = run(capsys, "eval", "--model", "real", "prompts_per_level=2", "heldout_prompts=2",
                         "diversity_prompts=2", "diversity_seeds=2", f"threads={torch.get_num_threads()}",
                         "--json", js, "--out", md, "--assets", world_assets)
    assert code == 0, err
    metrics = json.loads(js.read_text())
    assert metrics["num_images"] == 10 and "acc_L1" in metrics and "world_fid" in metrics
    assert md.read_text().strip()


def test_eval_checkpoint_eta_override(capsys, world_assets, snapshot, tmp_path):
    """`--eta` samples a generator at another re-noise eta than its snapshot's, and says so in the report."""
    (snapshot / "final" / "generator.json").write_text(json.dumps({"backbone": "world", "steps": 4,
                                                                   "inference_eta": 1.0}))
    small = ["prompts_per_level=2", "heldout_prompts=2", "diversity_prompts=2", "diversity_seeds=2",
             f"threads={torch.get_num_threads()}", "--assets", world_assets]
    fids = {}
    for eta in (None, 0.0):
        js, md = tmp_path / f"{eta}.json", tmp_path / f"{eta}.md"
        flags = [] if eta is None else ["--eta", str(eta)]
        code, _, err = run(capsys, "eval", "--checkpoint", snapshot, *flags, "--json", js, "--out", md, *small)
        assert code == 0, err
        fids[eta] = json.loads(js.read_text())["world_fid"]
        assert ("eta 0)" in md.read_text()) == (eta is not None)
    assert fids[None] != fids[0.0]  # eta 1 (the snapshot's) and eta 0 draw different images
    code, _, err = run(capsys, "eval", "--checkpoint", snapshot, "--eta", "1.5", *small)
    assert code == 1
    one_error_line(err, "--eta")


def test_eval_json_path_is_a_directory(capsys, world_assets, tmp_path):
    code, _, err = run(capsys, "eval", "model=real", "prompts_per_level=1", "heldout_prompts=2",
                       "diversity_prompts=0", f"threads={torch.get_num_threads()}", "--json", tmp_path,
                       "--assets", world_assets)
    assert code == 1
    one_error_line(err, str(tmp_path))
