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
import os
import pickle
from pathlib import Path

import pytest
import torch

import rzero.trainers as trainers
from rzero.utils.io import atomic_save_safetensors
from test_cli import run
from test_reliability import ToyTrainer
from tiny_sd import write_fake_lora_run

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
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link to " + os.readlink(p)
        elif p.is_dir():
            out[str(p.relative_to(root))] = "dir"
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root))] = "special"  # a pipe or device: never opened
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



# ================================================================== round two (issue 16)
# Each test below failed on main before issue 16: a traceback, a hang, an exit 0 on invalid
# input, or a file changed outside (or deleted inside) the run folder.

import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def cli_subprocess(*argv, timeout: float = 60, memory_gb: int = 4) -> subprocess.CompletedProcess:
    """`rzero ...` in a child process with a memory cap and a timeout (a hang or a runaway read
    fails the test instead of the machine)."""

    def limit():
        cap = memory_gb << 30
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-m", "rzero.cli.main", *map(str, argv)], capture_output=True, text=True,
                          env=env, timeout=timeout, preexec_fn=limit)


def fake_run(root: Path) -> Path:
    """A run folder as `rzero train` leaves it mid-way: config.yaml, stats.jsonl, one sample grid."""
    from rzero.config import save_config
    from rzero.config.schema import TrainConfig
    from rzero.eval.report import save_grid

    run_dir = root / "run"
    (run_dir / "samples").mkdir(parents=True)
    save_config(TrainConfig(iterations=4), run_dir / "config.yaml")
    (run_dir / "stats.jsonl").write_text('{"step": 1, "time": 1.0, "loss": 0.5}\n')
    save_grid(torch.zeros(4, 3, 8, 8), run_dir / "samples" / "step_000000.png")
    return run_dir


# ------------------------------------------------------------------ links inside run folders


def test_report_refuses_a_sample_that_links_out_of_the_run(capsys, tmp_path):
    """The report would embed the linked file (a private key, say) into an HTML meant to be shared."""
    run_dir = fake_run(tmp_path)
    secret = tmp_path / "id_rsa"
    secret.write_bytes(b"SECRET-KEY-MATERIAL " * 10)
    (run_dir / "samples" / "step_000002.png").symlink_to(secret)
    code, _, err = run(capsys, "report", run_dir, "--no-teacher")
    one_line_error(code, err, "step_000002.png", "leaves the run folder")
    assert not (run_dir / "report.html").exists()


def test_report_refuses_a_link_to_dev_zero(tmp_path):
    """Before: read /dev/zero until memory ran out (here: a MemoryError traceback under a 4 GB cap)."""
    run_dir = fake_run(tmp_path)
    (run_dir / "samples" / "step_000002.png").symlink_to("/dev/zero")
    proc = cli_subprocess("report", run_dir, "--no-teacher")
    one_line_error(proc.returncode, proc.stderr, "step_000002.png", "leaves the run folder")


@pytest.mark.parametrize("what", ["stats.jsonl", "final", "checkpoints"])
def test_resume_refuses_links_out_of_the_run(capsys, tmp_path, previous_run, what):
    """Before: a resumed run appended its stats and wrote its snapshot/checkpoints through the link."""
    elsewhere = tmp_path / "elsewhere"
    target = previous_run / what
    os.replace(target, elsewhere)  # the real file/folder now lives outside; the run links to it
    target.symlink_to(elsewhere, target_is_directory=elsewhere.is_dir())
    outside = tree_digest(tmp_path / "elsewhere") if elsewhere.is_dir() else elsewhere.read_bytes()
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=(what, "leaves the run folder"))
    assert (tree_digest(elsewhere) if elsewhere.is_dir() else elsewhere.read_bytes()) == outside


def test_resume_refuses_a_fifo_in_the_run(capsys, previous_run):
    os.mkfifo(previous_run / "samples.fifo")
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("samples.fifo", "pipe"))


# ------------------------------------------------------------------ numbers out of range


@pytest.mark.parametrize("override, fragment", [
    ("generator.timesteps=[2000, 1500, 1000, 500]", "generator.timesteps[0]"),  # before: IndexError
    ("generator.timesteps=[999, 500, -1, -500]", "timesteps[2]"),  # before: wrapped around, exit 0
    ("generator.timesteps=[100, 200, 300, 400]", "decrease"),
    ("r0plus.hires_t_max=5000", "hires_t_max"),
    ("threads=100000000", "threads"),  # before: libgomp aborted the process
    ("batch_size=1000000000", "batch_size"),  # before: MemoryError traceback
    ("seed=100000000000000000000000", "seed"),  # before: "Overflow when unpacking long long", no key
    ("generator.steps=5000", "steps"),
])
def test_numbers_out_of_range(capsys, override, fragment):
    code, _, err = run(capsys, "train", "--dry-run", override)
    one_line_error(code, err, fragment)


def test_distar_t_init_out_of_range(capsys):
    code, _, err = run(capsys, "train", "--dry-run", "method=distar", "generator.steps=1", "di.t_init=1000")
    one_line_error(code, err, "di.t_init")


def test_world_schedule_constant_matches_the_backbone(world_assets):
    from rzero.backbones import WorldBackbone
    from rzero.config.schema import WORLD_TIMESTEPS

    assert WorldBackbone(asset_dir=world_assets).schedule.num_train_timesteps == WORLD_TIMESTEPS


@pytest.mark.parametrize("meta, fragment", [
    ({"steps": 4, "timesteps": [2000, 1500, 1000, 500]}, "outside the backbone's schedule"),  # before: IndexError
    ({"steps": 4, "timesteps": [999, 500, 0, -250]}, "outside the backbone's schedule"),  # before: wrapped, exit 0
    ({"steps": 4, "timesteps": [999, 500]}, "2 entries for 4 steps"),
    ({"steps": 4, "timesteps": "999"}, "timesteps"),
    ({"steps": 4, "inference_eta": 7}, "inference_eta"),  # before: sampled with eta 7, exit 0
    ({"steps": 4, "lora": 5}, "lora"),
    ({"steps": 4, "backbone_path": "teacher_v9"}, "not a world teacher"),  # a world base that is no asset
    ({"steps": 4000000}, "steps"),
])
def test_snapshot_metadata_out_of_range(capsys, snapshot, world_assets, meta, fragment):
    (snapshot / "final" / "generator.json").write_text(json.dumps({"backbone": "world", **meta}))
    sample_fails(capsys, snapshot, world_assets, fragment)


def test_learning_rate_that_overflows_the_optimizer(capsys, tmp_path, toy_registry):
    """Before: a RuntimeError traceback from inside AdamW's step, past the non-finite guard."""
    out = tmp_path / "run"
    code, _, err = run(capsys, "train", "--out", out, "iterations=3", "optim.lr=1e300", "optim.grad_clip=0", *TOY)
    progress = ("train r0:", "\r")  # training had started: its progress bar shares stderr
    one_line_error(code, "\n".join(x for x in err.splitlines() if not x.startswith(progress)), "overflowed", "optim.lr")
    assert not (out / "final").exists()


# ------------------------------------------------------------------ state files: valid JSON, wrong types


def test_stats_row_that_is_a_list(capsys, previous_run):
    """Before: AttributeError traceback while truncating stats.jsonl on resume."""
    stats = previous_run / "stats.jsonl"
    stats.write_text('[1, 2, 3]\n' + stats.read_text())
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("row 1", "integer 'step'"))


@pytest.mark.parametrize("field, value", [("train_seconds", None), ("skipped_steps", "3"), ("iteration", -4),
                                          ("alarm_accumulator", [None, 1]), ("alarm", 7),
                                          ("files", {"../../etc/passwd": None})])
def test_state_json_with_wrong_types(capsys, previous_run, field, value):
    """Before: TypeError tracebacks (float(None), ...) halfway through resume."""
    for name in ("step_000002", "step_000003"):
        state_path = previous_run / "checkpoints" / name / "state.json"
        state = json.loads(state_path.read_text())
        state[field] = value
        state_path.write_text(json.dumps(state))
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("unusable", "state.json"))


def test_state_json_null_in_newest_falls_back_to_older(capsys, previous_run):
    state_path = previous_run / "checkpoints" / "step_000003" / "state.json"
    state = json.loads(state_path.read_text())
    state["consecutive_skips"] = None
    state_path.write_text(json.dumps(state))
    code, out, err = run(capsys, "train", "--out", previous_run, "iterations=4", *TOY)
    assert code == 0, err
    assert "step_000002" in out and "skipped checkpoint" in err


@pytest.mark.parametrize("manifest", ['{"assets": 5}', '[1, 2]', '{"assets": {"inspector": 5}}'])
def test_world_manifest_with_wrong_types(capsys, tmp_path, world_assets, manifest):
    """Before: TypeError / AttributeError tracebacks from the world's asset code."""
    import shutil

    folder = tmp_path / "assets"
    folder.mkdir()
    shutil.copy(world_assets / "inspector.safetensors", folder)  # so the check reaches the manifest entry
    (folder / "manifest.json").write_text(manifest)
    code, _, err = run(capsys, "world", "verify", "--assets", folder)
    one_line_error(code, err, "manifest", "rzero world build")


def test_unknown_reward_option(capsys):
    """Before: accepted by the config, then a TypeError traceback inside the reward's constructor."""
    code, _, err = run(capsys, "train", "--dry-run", "reward.options[world-clip].foo=1")
    one_line_error(code, err, "reward.options[world-clip].foo", "not an option")


# ------------------------------------------------------------------ YAML alias expansion


def test_yaml_alias_refused(capsys, tmp_path):
    cfg = tmp_path / "alias.yaml"
    cfg.write_text("iterations: &n 5\nlog_every: *n\n")
    code, _, err = run(capsys, "train", cfg, "--dry-run")
    one_line_error(code, err, "alias", "line 2")


def test_billion_laughs_config_answers_at_once(tmp_path):
    """Under 1 KB of YAML standing for 9**9 strings: before, --dry-run never answered."""
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    cfg = tmp_path / "laughs.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    assert cfg.stat().st_size < 1024
    proc = cli_subprocess("train", cfg, "--dry-run", timeout=60)
    one_line_error(proc.returncode, proc.stderr, "alias")


def test_deeply_nested_override_is_one_line(capsys):
    code, _, err = run(capsys, "train", "--dry-run", "iterations=" + "[" * 5000)
    one_line_error(code, err, "iterations", "nested")


# ------------------------------------------------------------------ destructive commands


def fake_lora_snapshot(tmp_path: Path) -> Path:
    return write_fake_lora_run(tmp_path / "run", tmp_path / "base")


@pytest.mark.parametrize("into", ["run", "run/final", "."])
def test_export_never_touches_the_run(capsys, tmp_path, into):
    """Before: `rzero export RUN --format lora RUN --force` deleted the run it exported."""
    run_dir = fake_lora_snapshot(tmp_path)
    before = tree_digest(run_dir)
    code, _, err = run(capsys, "export", run_dir, "--format", "lora", tmp_path / into, "--force")
    one_line_error(code, err, "overlaps the run")
    assert tree_digest(run_dir) == before


def test_resume_with_another_generator_shape_is_refused(capsys, previous_run):
    """Before: resumed silently and overwrote config.yaml with the new shape."""
    line = train_fails(capsys, previous_run, "iterations=5", "generator.steps=2", *TOY,
                       fragments=("generator.steps: 4 -> 2", "--allow-config-change"))
    assert "method" not in line and "iterations" not in line  # only the changed structural key is named


def test_resume_with_another_method_is_refused(capsys, previous_run):
    train_fails(capsys, previous_run, "method=distar", "generator.steps=1", *TOY,
                fragments=("method: 'r0' -> 'distar'", "--allow-config-change"))


def test_resume_with_more_iterations_needs_no_flag_and_the_flag_allows_a_change(capsys, previous_run):
    code, _, err = run(capsys, "train", "--out", previous_run, "iterations=4", *TOY)
    assert code == 0, err
    code, _, err = run(capsys, "train", "--out", previous_run, "iterations=5", "generator.steps=2",
                       "--allow-config-change", *TOY)
    assert code == 0, err
    assert "steps: 2" in (previous_run / "config.yaml").read_text()


def test_train_refuses_a_run_folder_another_train_holds(capsys, previous_run):
    """Before: two `rzero train` on one folder ran at once and interleaved stats.jsonl."""
    import fcntl

    fd = os.open(previous_run, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running `rzero train` holds
        train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("in use by another", "--out"))
    finally:
        os.close(fd)
    code, _, err = run(capsys, "train", "--out", previous_run, "iterations=4", *TOY)
    assert code == 0, err  # released with the descriptor


# ------------------------------------------------------------------ serve: Host header


def test_serve_refuses_a_foreign_host_header(monkeypatch, capsys):
    """Before: any Host was answered, /api/info included (the local checkpoint path): DNS rebinding."""
    import socket

    import uvicorn
    from fastapi.testclient import TestClient

    import rzero.apps.serve as serve

    class Models:
        generator, meta, checkpoint = None, {}, "/home/me/secret-run"

        def __init__(self, checkpoint=None, asset_dir=None):
            pass

        def info(self):
            return {"checkpoint": self.checkpoint}

    served = {}
    monkeypatch.setattr(serve, "DemoModels", Models)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for extra in ([], ["--allow-host", "demo.lan"]):
        code, _, err = run(capsys, "serve", "--port", port, *extra)
        assert code == 0, err
        app = served["app"]
        assert TestClient(app, base_url=f"http://127.0.0.1:{port}").get("/api/info").status_code == 200
        assert TestClient(app, base_url=f"http://localhost:{port}").get("/api/info").status_code == 200
        bad = TestClient(app, base_url=f"http://attacker.example:{port}").get("/api/info")
        assert bad.status_code == 400 and "secret-run" not in bad.text and "--allow-host" in bad.json()["error"]
        lan = TestClient(app, base_url=f"http://demo.lan:{port}").get("/api/info").status_code
        assert lan == (200 if extra else 400)


# ------------------------------------------------------------------ error lines


def test_error_line_cuts_a_huge_value(capsys):
    """Before: the error line echoed the whole 100 KB value."""
    code, _, err = run(capsys, "train", "--dry-run", "method=" + "x" * 100_000)
    line = one_line_error(code, err, "method")
    assert len(line) < 1200


def test_unknown_reward_name_in_dry_run(capsys):
    """Before: --dry-run printed the config; the name failed only once training built its rewards."""
    code, _, err = run(capsys, "train", "--dry-run", "reward.names=[world-clip, world-judgee]")
    one_line_error(code, err, "reward.names[1]", "did you mean 'world-judge'")


def test_report_teacher_steps_out_of_range(capsys, tmp_path):
    """Before: accepted, and the teacher grid silently became "not available" (exit 0)."""
    code, _, err = run(capsys, "report", fake_run(tmp_path), "--teacher-steps", "1000000000")
    one_line_error(code, err, "--teacher-steps")


@pytest.mark.parametrize("argv, fragment", [
    (["serve", "--threads", "100000000", "--port", "1"], "--threads"),  # before: libgomp aborted the process
    (["sample", "--prompt", "x", "--num-per-prompt", "100000000", "--out", "x.png"], "--num-per-prompt"),
])
def test_absurd_sizes_on_the_command_line(tmp_path, argv, fragment):
    """Before: an abort (threads) or a run that never ends (10**8 images); in a child with a memory cap."""
    proc = cli_subprocess(*[str(tmp_path / a) if a == "x.png" else a for a in argv], timeout=120)
    one_line_error(proc.returncode, proc.stderr, fragment)


@pytest.mark.parametrize("payload", [[1, 2], {"state": 5, "param_groups": "x"}, torch.zeros(3)])
def test_resealed_optimizer_state_of_the_wrong_structure(capsys, previous_run, payload):
    """Loadable with weights_only=True and sealed with its sha256, but not an optimizer state.
    Before: TypeError / AttributeError tracebacks from inside the optimizer's load_state_dict."""
    for name in ("step_000002", "step_000003"):
        ckpt = previous_run / "checkpoints" / name
        torch.save(payload, ckpt / "optimizer.pt")
        _reseal(ckpt)
    train_fails(capsys, previous_run, "iterations=5", *TOY, fragments=("unusable", "does not fit"))


def test_unknown_backbone_with_a_path_in_dry_run(capsys):
    """Before: with backbone_path and prompt_file set, any backbone name passed --dry-run (found by the fuzzer)."""
    code, _, err = run(capsys, "train", "--dry-run", "backbone=sd4", "backbone_path=/m", "prompt_file=/p.txt")
    one_line_error(code, err, "backbone must be", "'sd4'")
