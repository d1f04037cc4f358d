"""Hostile inputs through the CLI: each ends as one `rzero: error:` line and a non-zero exit,
executes nothing it was handed, and leaves what was written before byte for byte.

Complements tests/test_cli.py (which covers eval/world-build presets, verify, and the basic
prompt-file errors) with `train` configs, resume from damaged or malicious checkpoints, and
snapshot loading. Training-side cases run the real `rzero train` path with the registry's
"r0" trainer swapped for the toy trainer of tests/test_reliability.py, so no world assets
are needed and each case takes well under a second.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

import rzero.trainers as trainers
from rzero.utils.io import atomic_save_safetensors
from test_cli import run
from test_reliability import ToyTrainer

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOY = ["threads=1", "track_every=0", "sample_every=1000", "log_every=1", "checkpoint_every=1", "ema_decay=0.5"]


def one_line_error(code, err: str, *fragments: str) -> str:
    """Non-zero exit and exactly one stderr line, `rzero: error: ...`, holding every fragment."""
    assert code not in (0, None), code
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{err}"
    assert lines[0].startswith("rzero: error: "), lines[0]
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and folder under `root` with its sha256 (folders: 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def toy_registry(monkeypatch):
    """`rzero train` builds the toy trainer instead of R0 (same CLI and engine path)."""

    class Toy(ToyTrainer):
        def __init__(self, cfg, out, asset_dir=None):
            super().__init__(cfg, out)

    monkeypatch.setitem(trainers.TRAINERS, "r0", Toy)


@pytest.fixture
def previous_run(tmp_path, toy_registry, capsys) -> Path:
    """A finished toy run (3 iterations, last 2 checkpoints kept): the thing not to lose."""
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--out", out, "iterations=3", *TOY)
    assert code == 0, err
    return out


def train_fails(capsys, run_dir: Path, *argv, fragments=()) -> str:
    """`rzero train ... --out run_dir` must fail in one line and leave run_dir unchanged."""
    before = tree_digest(run_dir)
    code, _, err = run(capsys, "train", *argv, "--out", run_dir)
    line = one_line_error(code, err, *fragments)
    assert tree_digest(run_dir) == before
    return line


# ------------------------------------------------------------------ configs


def test_malformed_yaml(capsys, tmp_path, previous_run):
    bad = tmp_path / "bad.yaml"
    bad.write_text("iterations: [1, 2\nbatch_size: 4\n")
    train_fails(capsys, previous_run, bad, fragments=("not valid YAML", "line"))


def test_yaml_python_tag_is_not_executed(capsys, tmp_path, previous_run):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.yaml"
    bad.write_text(f"iterations: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    train_fails(capsys, previous_run, bad, fragments=("not valid YAML",))
    assert not marker.exists()


def test_yaml_top_level_scalar(capsys, tmp_path, previous_run):
    bad = tmp_path / "scalar.yaml"
    bad.write_text("42\n")
    train_fails(capsys, previous_run, bad, fragments=("mapping",))


def test_config_path_is_a_folder(capsys, tmp_path, previous_run):
    folder = tmp_path / "dir.yaml"
    folder.mkdir()
    train_fails(capsys, previous_run, folder, fragments=("directory",))


def test_empty_yaml_means_defaults(capsys, tmp_path):
    """Not an error, by decision: an empty preset is the defaults (docs/reliability.md)."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    code, out, err = run(capsys, "train", empty, "--dry-run")
    assert code == 0 and "iterations: 300" in out and not err


def test_unknown_key_in_preset(capsys, tmp_path, previous_run):
    bad = tmp_path / "typo.yaml"
    bad.write_text("iteratons: 5\n")
    train_fails(capsys, previous_run, bad, fragments=("unknown config key 'iteratons'", "did you mean 'iterations'"))


def test_unknown_nested_override(capsys, previous_run):
    train_fails(capsys, previous_run, "optim.lrr=1", fragments=("optim.lrr", "optim.lr"))


@pytest.mark.parametrize("override, fragment", [
    ("batch_size=abc", "batch_size"),
    ("generator.steps=[4]", "generator.steps"),
    ("reward.names=world-clip", "reward.names"),
    ("ema_decay=true", "ema_decay"),
    ("optim=3", "optim"),
])
def test_wrong_types(capsys, previous_run, override, fragment):
    train_fails(capsys, previous_run, override, fragments=(fragment,))


@pytest.mark.parametrize("override", ["batch_size=0", "iterations=-5", "grad_accum=0", "keep_checkpoints=0",
                                      "checkpoint_every=0", "generator.steps=0", "max_consecutive_skips=0",
                                      "alarm_patience=-1", "optim.lr=0", "threads=-2"])
def test_zero_or_negative_sizes(capsys, previous_run, override):
    train_fails(capsys, previous_run, override, fragments=(override.split("=")[0].split(".")[-1],))


@pytest.mark.parametrize("override", ["optim.lr=.nan", "optim.lr=.inf", "time_budget_s=.nan", "ema_decay=-.inf"])
def test_non_finite_numbers(capsys, previous_run, override):
    train_fails(capsys, previous_run, override, fragments=("finite",))


@pytest.mark.parametrize("override, fragment", [("method=nope", "method"), ("backbone=nope", "nope")])
def test_unknown_method_or_backbone(capsys, previous_run, override, fragment):
    train_fails(capsys, previous_run, override, fragments=(fragment,))


def test_unknown_reward_name(capsys, tmp_path, world_assets):
    """Caught when the trainer builds its rewards, before anything is written."""
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", CONFIGS / "world_r0.yaml", "--out", out, "--assets", world_assets,
                       "reward.names=[world-clip, nope]", "threads=1")
    one_line_error(code, err, "unknown reward 'nope'")
    assert not out.exists()


# ------------------------------------------------------------------ argparse


@pytest.mark.parametrize("argv, fragment", [
    (["sample", "--seed", "abc", "--prompt", "x", "--out", "x.png"], "invalid int value"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["nope"], "invalid choice"),
    (["sample", "--prompt"], "expected one argument"),
])
def test_usage_errors_are_one_line(capsys, argv, fragment):
    code, _, err = run(capsys, *argv)
    assert code == 2
    one_line_error(code, err, fragment, "--help")


# ------------------------------------------------------------------ prompt files and prompts


def test_huge_prompt_file(capsys, tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as f:
        f.truncate(60_000_000)  # sparse: the size check must come before reading
    code, _, err = run(capsys, "sample", "--prompt-file", big, "--out", tmp_path / "x.png")
    one_line_error(code, err, "larger than 50 MB")
    assert not (tmp_path / "x.png").exists()


def test_prompt_file_that_is_a_device(capsys, tmp_path):
    code, _, err = run(capsys, "sample", "--prompt-file", "/dev/zero", "--out", tmp_path / "x.png")
    one_line_error(code, err, "not a regular file")


def test_utf16_prompt_file(capsys, tmp_path):
    f = tmp_path / "utf16.txt"
    f.write_text("a red circle\n", encoding="utf-16")
    code, _, err = run(capsys, "sample", "--prompt-file", f, "--out", tmp_path / "x.png")
    one_line_error(code, err, "not UTF-8")


def test_non_utf8_prompt_argument(capsys, tmp_path):
    """Non-UTF-8 argv bytes reach Python as lone surrogates (surrogateescape)."""
    prompt = b"a red \xff circle".decode("utf-8", "surrogateescape")
    code, _, err = run(capsys, "sample", "--prompt", prompt, "--out", tmp_path / "x.png")
    one_line_error(code, err, "not valid UTF-8")
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------ snapshots (`sample --checkpoint`)


def sample_fails(capsys, run_dir: Path, world_assets, *fragments) -> None:
    before = tree_digest(run_dir)
    out = run_dir.parent / "x.png"
    code, _, err = run(capsys, "sample", "--checkpoint", run_dir, "--prompt", "a red circle", "--out", out,
                       "--assets", world_assets)
    one_line_error(code, err, *fragments)
    assert tree_digest(run_dir) == before and not out.exists()


def test_snapshot_missing(capsys, tmp_path, world_assets):
    code, _, err = run(capsys, "sample", "--checkpoint", tmp_path / "nope", "--prompt", "x", "--out",
                       tmp_path / "x.png", "--assets", world_assets)
    one_line_error(code, err, "not found")


def test_snapshot_truncated(capsys, snapshot, world_assets):
    w = snapshot / "final" / "generator.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    sample_fails(capsys, snapshot, world_assets, "corrupt or truncated")


def test_snapshot_wrong_shape(capsys, snapshot, world_assets):
    w = snapshot / "final" / "generator.safetensors"
    from rzero.utils.io import load_safetensors

    tensors = load_safetensors(w)
    name = next(k for k, v in tensors.items() if v.ndim == 4)
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 2)
    atomic_save_safetensors(tensors, w)
    sample_fails(capsys, snapshot, world_assets, "shape", name)


def test_snapshot_metadata_not_json(capsys, snapshot, world_assets):
    (snapshot / "final" / "generator.json").write_bytes(b"\x00\xff not json")
    sample_fails(capsys, snapshot, world_assets, "generator.json")


def test_snapshot_pickle_instead_of_safetensors(capsys, tmp_path, snapshot, world_assets):
    marker = tmp_path / "pwned"
    torch.save({"w": _Payload(marker)}, snapshot / "final" / "generator.safetensors")
    sample_fails(capsys, snapshot, world_assets, "corrupt")
    assert not marker.exists()


def test_snapshot_metadata_missing_steps(capsys, snapshot, world_assets):
    (snapshot / "final" / "generator.json").write_text('{"backbone": "world"}')
    sample_fails(capsys, snapshot, world_assets, "steps")


# ------------------------------------------------------------------ checkpoints (`train` resume)


class _Payload:
    """Unpickling this calls open(marker, 'w'): creates the marker file (the 'exploit')."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def _reseal(ckpt: Path) -> None:
    """Recompute state.json's sha256 list, as an attacker who edits a checkpoint would."""
    state = json.loads((ckpt / "state.json").read_text())
    state["files"] = {n: hashlib.sha256((ckpt / n).read_bytes()).hexdigest() for n in state["files"]}
    (ckpt / "state.json").write_text(json.dumps(state))


def test_payload_is_live(tmp_path):
    """The crafted pickle really runs code when loaded without weights_only (so the tests below can fail)."""
    marker = tmp_path / "live"
    pickle.loads(pickle.dumps({"x": _Payload(marker)}))  # what unrestricted torch.load would do with it
    assert marker.exists()


def test_pickle_bearing_optimizer_state_refused(capsys, tmp_path, previous_run):
    for name in ("step_000002", "step_000003"):
        ckpt = previous_run / "checkpoints" / name
        torch.save({"state": _Payload(tmp_path / "pwned")}, ckpt / "optimizer.pt")
        _reseal(ckpt)
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("refusing to load", "weights_only"))
    assert not (tmp_path / "pwned").exists()


def test_pickle_bearing_newest_falls_back_to_older(capsys, tmp_path, previous_run):
    ckpt = previous_run / "checkpoints" / "step_000003"
    torch.save({"state": _Payload(tmp_path / "pwned")}, ckpt / "optimizer.pt")
    _reseal(ckpt)
    code, out, err = run(capsys, "train", "--out", previous_run, "iterations=4", *TOY)
    assert code == 0, err
    assert "resumed from" in out and "step_000002" in out and "skipped checkpoint" in err
    assert not (tmp_path / "pwned").exists()
    assert (previous_run / "checkpoints" / "corrupt_step_000003" / "optimizer.pt").is_file()  # kept as evidence


def test_unsealed_tampering_caught_by_checksum(capsys, tmp_path, previous_run):
    for name in ("step_000002", "step_000003"):
        torch.save({"state": _Payload(tmp_path / "pwned")}, previous_run / "checkpoints" / name / "optimizer.pt")
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("sha256",))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("damage", ["truncated-weights", "truncated-state", "missing-state", "empty-folder"])
def test_damaged_only_checkpoints(capsys, previous_run, damage):
    for name in ("step_000002", "step_000003"):
        ckpt = previous_run / "checkpoints" / name
        if damage == "truncated-weights":
            w = ckpt / "model.safetensors"
            w.write_bytes(w.read_bytes()[:40])
        elif damage == "truncated-state":
            s = ckpt / "state.json"
            s.write_bytes(s.read_bytes()[:25])
        else:
            for f in ckpt.iterdir():
                if damage == "empty-folder" or f.name == "state.json":
                    f.unlink()
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("unusable", "no older complete checkpoint"))


def test_checkpoint_weights_of_wrong_shape(capsys, previous_run):
    for name in ("step_000002", "step_000003"):
        ckpt = previous_run / "checkpoints" / name
        atomic_save_safetensors({"weight": torch.zeros(1, 5), "bias": torch.zeros(1)}, ckpt / "model.safetensors")
        _reseal(ckpt)
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("shape", "(1, 5)"))


def test_out_is_an_existing_file(capsys, tmp_path, toy_registry):
    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    code, _, err = run(capsys, "train", "--out", f, "iterations=2", *TOY)
    one_line_error(code, err, str(f))
    assert f.read_text() == "keep me"

