"""Reliability of the training engine (docs/reliability.md): crash-safe checkpoints and resume,
SIGTERM/SIGINT, non-finite steps, the reward-hacking alarm, fsync of atomic writes.

Everything runs on a toy trainer (a 4->1 linear regression) so the engine is tested without
world assets; a few cases run it in a subprocess through the real `rzero train` CLI path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rzero.config.schema import TrainConfig
from rzero.trainers.alarm import RewardHackingAlarm
from rzero.trainers.engine import NonFiniteError, Trainer, TrainingInterrupted
from rzero.utils.io import AssetError, load_safetensors

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"


class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


class ToyTrainer(Trainer):
    """Linear regression on per-step random data; knobs to inject NaN/inf and fake tracking."""

    def __init__(self, cfg, out, asset_dir=None, nan_at=(), inf_grad_at=(), sleep=0.0, tracker=None):
        super().__init__(cfg, out)
        torch.manual_seed(cfg.seed)
        # Like the reward trainers (whose model is the generator, trainers/reward_trainer.py),
        # train_step runs its forward pass through self.model: DDP's wrapper after setup().
        self.model = torch.nn.Linear(4, 1)
        self.nan_at, self.inf_grad_at, self.sleep, self.tracker = set(nan_at), set(inf_grad_at), sleep, tracker
        self.setup()

    def train_step(self, g):
        if self.sleep:
            time.sleep(self.sleep)
        x = torch.randn(8, 4, generator=g)
        pred = self.model(x)
        if self.iteration in self.inf_grad_at:
            pred = _InfGrad.apply(pred)
        loss = (pred - x.sum(1, keepdim=True)).pow(2).mean()
        if self.iteration in self.nan_at:
            loss = loss * float("nan")
        # The fake training reward rises every iteration (for the alarm tests).
        return loss, {"reward/toy": float(self.iteration)}

    def track(self):
        return self.tracker(self.iteration) if self.tracker else {}


def toy_cfg(**kw) -> TrainConfig:
    base = dict(iterations=6, batch_size=2, checkpoint_every=1, keep_checkpoints=2, track_every=0, log_every=1,
                sample_every=1000, threads=1, ema_decay=0.5, alarm_patience=0)
    base.update(kw)
    return TrainConfig(**base)


def weights(path: Path) -> dict:
    return load_safetensors(path)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def straight_final(tmp_path: Path, **kw) -> dict:
    out = tmp_path / "straight"
    ToyTrainer(toy_cfg(**kw), out).fit()
    return weights(out / "final" / "generator.safetensors")


# ------------------------------------------------------------------ atomic writes


def test_atomic_write_fsyncs_file_and_directory(tmp_path, monkeypatch):
    from rzero.utils import io

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(io.os, "fsync", spy)
    target = tmp_path / "sub" / "x.bin"
    io.atomic_write_bytes(target, b"abc")
    assert target.read_bytes() == b"abc"
    # the temporary file (renamed afterwards) and then the folder holding the rename
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / "sub" / ".x.bin."))
    assert synced[1] == str(tmp_path / "sub")


def test_remove_tree_leaves_nothing_under_its_name(tmp_path):
    from rzero.utils.io import remove_tree

    d = tmp_path / "step_000001"
    (d / "inner").mkdir(parents=True)
    (d / "inner" / "f").write_text("x")
    remove_tree(d)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ checkpoints and resume


def test_checkpoint_lists_sha256_and_keeps_newest_n(tmp_path):
    tr = ToyTrainer(toy_cfg(iterations=5, keep_checkpoints=3), tmp_path)
    tr.fit()
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step_000003", "step_000004", "step_000005"]
    state = json.loads((ckpts[-1] / "state.json").read_text())
    assert state["iteration"] == 5 and state["format"] == 2
    assert set(state["files"]) == {"model.safetensors", "ema.safetensors", "optimizer.pt"}
    assert Trainer.verify_checkpoint(ckpts[-1]) == (state, "")


def test_resume_equals_straight_run(tmp_path):
    ref = straight_final(tmp_path)
    out = tmp_path / "resumed"
    ToyTrainer(toy_cfg(iterations=3), out).fit()
    ToyTrainer(toy_cfg(), out).fit()
    assert_same(weights(out / "final" / "generator.safetensors"), ref)
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_steps_with_the_new_config_optimizer_settings(tmp_path):
    """A resumed run takes its lr, betas and weight decay from the config it is resumed with (the
    checkpoint's optimizer state would otherwise bring the old ones back), and steps with them."""
    from rzero.config.schema import OptimConfig

    out = tmp_path / "resumed"
    ToyTrainer(toy_cfg(iterations=3), out).fit()
    new = OptimConfig(lr=1e-3, beta1=0.8, beta2=0.99, weight_decay=0.01)
    tr = ToyTrainer(toy_cfg(optim=new), out)
    tr.fit()
    assert tr.iteration == 6
    for group in tr.optimizer.param_groups:
        assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.8, 0.99), 0.01)
    # Adam's moments were restored, not reset: the resumed optimizer kept counting from step 3.
    step = next(iter(tr.optimizer.state.values()))["step"]
    assert int(step) == 6
    # And it stepped with the new lr: the same resume at the old lr ends elsewhere.
    old = tmp_path / "old_lr"
    ToyTrainer(toy_cfg(iterations=3), old).fit()
    ToyTrainer(toy_cfg(), old).fit()
    a, b = weights(out / "final" / "generator.safetensors"), weights(old / "final" / "generator.safetensors")
    assert any(not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "delete-state", "garbage-state", "delete-optimizer"])
def test_resume_skips_damaged_newest_checkpoint(tmp_path, capsys, damage):
    ref = straight_final(tmp_path)
    out = tmp_path / "run"
    ToyTrainer(toy_cfg(iterations=4), out).fit()
    newest = out / "checkpoints" / "step_000004"
    model = newest / "model.safetensors"
    if damage == "flip-byte":
        data = bytearray(model.read_bytes())
        data[-3] ^= 0xFF  # inside the tensor data: still a parsable file, caught by sha256
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:50])
    elif damage == "delete-state":
        (newest / "state.json").unlink()
    elif damage == "garbage-state":
        (newest / "state.json").write_bytes(b"\xff{not json")
    else:
        (newest / "optimizer.pt").unlink()
    capsys.readouterr()
    tr = ToyTrainer(toy_cfg(), out)
    tr.fit()
    err = capsys.readouterr().err
    assert "skipped checkpoint" in err and "step_000004" in err
    assert (out / "checkpoints" / "corrupt_step_000004").is_dir()  # set aside, not deleted
    assert_same(weights(out / "final" / "generator.safetensors"), ref)


def test_corrupt_only_checkpoint_is_a_one_line_error(tmp_path):
    out = tmp_path / "run"
    ToyTrainer(toy_cfg(iterations=2, keep_checkpoints=1), out).fit()
    (out / "checkpoints" / "step_000002" / "model.safetensors").write_bytes(b"garbage")
    before = (out / "checkpoints" / "step_000002" / "model.safetensors").read_bytes()
    with pytest.raises(AssetError) as e:
        ToyTrainer(toy_cfg(), out).fit()
    msg = str(e.value)
    assert "\n" not in msg and "step_000002" in msg and "no older complete checkpoint" in msg
    assert (out / "checkpoints" / "step_000002" / "model.safetensors").read_bytes() == before


def test_leftover_temporary_folders_are_ignored_and_cleaned(tmp_path):
    ref = straight_final(tmp_path)
    out = tmp_path / "run"
    ToyTrainer(toy_cfg(iterations=3), out).fit()
    # What a SIGKILL in the middle of a save or a rotation leaves behind.
    tmp = out / "checkpoints" / ".tmp_step_000004"
    tmp.mkdir()
    (tmp / "model.safetensors").write_bytes(b"half")
    (out / "checkpoints" / ".trash_step_000001").mkdir()
    with open(out / "stats.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a stats line cut mid-write
    ToyTrainer(toy_cfg(), out).fit()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_000005", "step_000006"]
    assert_same(weights(out / "final" / "generator.safetensors"), ref)
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------ non-finite steps


def test_nan_loss_skips_the_step(tmp_path):
    out = tmp_path / "run"
    tr = ToyTrainer(toy_cfg(iterations=3, checkpoint_every=10), out, nan_at={1})  # iteration index 1 = step 2
    before = {}

    def capture(self=tr):
        before.update({n: p.detach().clone() for n, p in tr._unwrapped().named_parameters()})
        before.update({f"ema.{n}": v.clone() for n, v in tr.ema.items()})

    orig = tr._iteration

    def wrapped():
        if tr.iteration == 1:
            capture()
        result = orig()
        if tr.iteration == 1:  # after the NaN step: no optimizer step, no EMA update
            for n, p in tr._unwrapped().named_parameters():
                assert torch.equal(p.detach(), before[n]), n
        return result

    tr._iteration = wrapped
    tr.fit()
    for n, v in tr.ema.items():
        assert torch.isfinite(v).all()
    rows = [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in rows] == [0, 1, 1]
    assert rows[1]["loss"] is None  # NaN is written as null
    meta = json.loads((out / "final" / "generator.json").read_text())
    assert meta["skipped_steps"] == 1


def test_inf_gradient_with_finite_loss_skips_the_step(tmp_path, capsys):
    out = tmp_path / "run"
    tr = ToyTrainer(toy_cfg(iterations=2, checkpoint_every=10), out, inf_grad_at={0})
    w0 = tr._unwrapped().weight.detach().clone()
    after_first = []
    orig = tr._iteration

    def wrapped():
        result = orig()
        after_first.append(tr._unwrapped().weight.detach().clone())
        return result

    tr._iteration = wrapped
    tr.fit()
    assert torch.equal(after_first[0], w0) and not torch.equal(after_first[1], w0)
    assert tr.skipped_steps == 1 and tr.consecutive_skips == 0
    assert "iteration 1 skipped" in capsys.readouterr().err


def test_consecutive_nonfinite_steps_stop_and_keep_last_good_checkpoint(tmp_path):
    good = tmp_path / "good"
    ToyTrainer(toy_cfg(iterations=3), good).fit()
    out = tmp_path / "run"
    tr = ToyTrainer(toy_cfg(iterations=10, max_consecutive_skips=3), out, nan_at=set(range(3, 10)))
    with pytest.raises(NonFiniteError) as e:
        tr.fit()
    msg = str(e.value)
    assert "\n" not in msg and "3 consecutive" in msg and "max_consecutive_skips" in msg
    assert tr.iteration == 6  # steps 4 and 5 skipped and checkpointed; step 6 is the third skip
    newest = out / "checkpoints" / "step_000005"
    assert str(newest) in msg
    assert not (out / "checkpoints" / "step_000006").exists() and not (out / "final").exists()
    assert_same(weights(newest / "model.safetensors"), weights(good / "checkpoints" / "step_000003" / "model.safetensors"))


def test_nonfinite_stop_via_cli_is_one_line(tmp_path, capsys):
    import rzero.trainers as trainers
    from rzero.cli.main import main

    class NaNToy(ToyTrainer):
        def __init__(self, cfg, out, asset_dir=None):
            super().__init__(cfg, out, nan_at=set(range(100)))

    saved = trainers.TRAINERS["r0"]
    trainers.TRAINERS["r0"] = NaNToy
    try:
        code = main(["train", "--out", str(tmp_path / "run"), "iterations=5", "max_consecutive_skips=2", "threads=1",
                     "track_every=0", "sample_every=1000"])
    finally:
        trainers.TRAINERS["r0"] = saved
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rzero: error")]
    assert code == 1 and len(err) == 1 and "2 consecutive" in err[0]


# ------------------------------------------------------------------ signals and SIGKILL (subprocesses)

# Runs the toy trainer through the real CLI (`rzero train`), the trainer registry patched.
_SCRIPT = """
import sys, time
sys.path[:0] = [{here!r}, {src!r}]
import torch; torch.set_num_threads(1)
from test_reliability import ToyTrainer
import rzero.trainers as trainers
from rzero.cli.main import main

class Slow(ToyTrainer):
    def __init__(self, cfg, out, asset_dir=None):
        super().__init__(cfg, out, sleep={sleep})

trainers.TRAINERS["r0"] = Slow
sys.exit(main(["train", "--out", sys.argv[1], *sys.argv[2:]]))
"""


def _toy_cli(tmp_path: Path, out: Path, sleep: float, *overrides: str) -> subprocess.Popen:
    script = tmp_path / "toy_cli.py"
    script.write_text(_SCRIPT.format(here=str(HERE), src=str(SRC), sleep=sleep))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    args = ["threads=1", "track_every=0", "sample_every=1000", "log_every=1", "ema_decay=0.5", *overrides]
    return subprocess.Popen([sys.executable, str(script), str(out), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _wait_for_steps(out: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    stats = out / "stats.jsonl"
    end = time.time() + timeout
    while time.time() < end:
        if stats.is_file() and len(stats.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("training did not start in time")


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_checkpoints_and_exits_cleanly(tmp_path, signum, code):
    out = tmp_path / "run"
    proc = _toy_cli(tmp_path, out, 0.05, "iterations=100000", "checkpoint_every=100000")
    _wait_for_steps(out, 3, proc)
    sent = time.time()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert time.time() - sent < 60
    assert proc.returncode == code, err
    errors = [line for line in err.splitlines() if line.startswith("rzero: error:")]
    assert len(errors) == 1 and signal.Signals(signum).name in errors[0] and "resume" in errors[0]
    ckpts = [p for p in (out / "checkpoints").iterdir()]
    assert len(ckpts) == 1 and Trainer.verify_checkpoint(ckpts[0])[0] is not None
    stopped_at = json.loads((ckpts[0] / "state.json").read_text())["iteration"]
    assert str(stopped_at) in errors[0] and stopped_at >= 3
    # Resuming continues from exactly there.
    tr = ToyTrainer(toy_cfg(iterations=stopped_at + 1, ema_decay=0.5), out)
    tr.fit()
    assert tr.iteration == stopped_at + 1


def test_sigkill_then_resume_equals_straight_run(tmp_path):
    """The fast version of benchmarks/crash_resume.py: 2 SIGKILLs at set points, then resume."""
    ref = straight_final(tmp_path, iterations=30)
    out = tmp_path / "run"
    for n in (4, 15):
        proc = _toy_cli(tmp_path, out, 0.01, "iterations=30", "checkpoint_every=1")
        _wait_for_steps(out, n, proc)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    proc = _toy_cli(tmp_path, out, 0.0, "iterations=30", "checkpoint_every=1")
    stdout, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "resumed from" in stdout
    assert_same(weights(out / "final" / "generator.safetensors"), ref)
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))


# ------------------------------------------------------------------ reward-hacking alarm


@pytest.mark.parametrize("train, heldout, patience, fires_at", [
    ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 3, [3, 4]),        # diverging throughout: fires from the 4th pair
    ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], 1, [1, 2, 3, 4]),
    ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 1, []),            # both improve: healthy
    ([5, 4, 3, 2, 1], [5, 4, 3, 2, 1], 1, []),            # both fall: not hacking, just bad
    ([1, 2, 3, 2, 3, 4, 5], [9, 8, 7, 8, 7, 6, 5], 3, [6]),  # a recovery resets the streak
    ([1, 2, 2, 3, 4], [9, 8, 7, 6, 5], 2, [4]),           # a flat reward is not "rising"
    ([1, 2, float("nan"), 3, 4, 5], [9, 8, 7, 6, 5, 4], 2, [5]),  # NaN resets, no trend across it
])
def test_alarm_detector_on_synthetic_sequences(train, heldout, patience, fires_at):
    alarm = RewardHackingAlarm(patience)
    fired = [i for i, (t, h) in enumerate(zip(train, heldout)) if alarm.update(i, t, h)]
    assert fired == fires_at
    assert [e["iteration"] for e in alarm.events] == fires_at


def test_alarm_state_round_trip_and_validation():
    a = RewardHackingAlarm(2)
    for i, (t, h) in enumerate([(1, 5), (2, 4), (3, 3)]):
        a.update(i, t, h)
    b = RewardHackingAlarm(2)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.update(3, 4, 2) and a.update(3, 4, 2) and b.state_dict() == a.state_dict()
    with pytest.raises(ValueError):
        RewardHackingAlarm(0)


def test_alarm_through_the_engine_marks_the_run(tmp_path, capsys):
    out = tmp_path / "run"
    # Held-out accuracy falls at every evaluation while the toy's training reward rises.
    tr = ToyTrainer(toy_cfg(iterations=8, track_every=2, alarm_patience=2, checkpoint_every=4), out,
                    tracker=lambda it: {"acc_L1": 1.0 - 0.1 * it, "acc_L2": 0.5})
    tr.fit()
    err = capsys.readouterr().err
    assert "reward-hacking alarm at iteration 6" in err
    report = json.loads((out / "hacking_alarm.json").read_text())
    assert [e["iteration"] for e in report["events"]] == [6, 8]
    rows = {r["step"]: r for r in map(json.loads, (out / "stats.jsonl").read_text().splitlines())}
    assert [rows[s].get("alarm/hacking") for s in (0, 2, 4, 6, 8)] == [None, 0.0, 0.0, 1.0, 1.0]
    state = json.loads((out / "checkpoints" / "step_000008" / "state.json").read_text())
    assert state["hacking_alarm"] is True
    assert json.loads((out / "checkpoints" / "step_000004" / "state.json").read_text())["hacking_alarm"] is False
    meta = json.loads((out / "final" / "generator.json").read_text())
    assert [e["iteration"] for e in meta["hacking_alarm"]] == [6, 8]


def test_alarm_silent_when_heldout_improves(tmp_path):
    out = tmp_path / "run"
    tr = ToyTrainer(toy_cfg(iterations=8, track_every=2, alarm_patience=1, checkpoint_every=8), out,
                    tracker=lambda it: {"acc_L1": 0.1 * it})
    tr.fit()
    assert not (out / "hacking_alarm.json").exists()
    assert "hacking_alarm" not in json.loads((out / "final" / "generator.json").read_text())


def test_alarm_resume_fires_like_a_straight_run(tmp_path):
    tracker = lambda it: {"acc_L1": 1.0 - 0.1 * it}  # noqa: E731
    cfg = toy_cfg(iterations=8, track_every=2, alarm_patience=2, checkpoint_every=1, keep_checkpoints=10)
    a = tmp_path / "a"
    ToyTrainer(cfg, a, tracker=tracker).fit()
    # b: a crash after step 5 (mid-interval: the reward accumulator is part of the state).
    b = tmp_path / "b"
    shutil.copytree(a / "checkpoints" / "step_000005", b / "checkpoints" / "step_000005")
    ToyTrainer(cfg, b, tracker=tracker).fit()
    assert json.loads((a / "hacking_alarm.json").read_text()) == json.loads((b / "hacking_alarm.json").read_text())


def test_training_interrupted_message_and_code(tmp_path):
    e = TrainingInterrupted(signal.SIGTERM, 7, tmp_path / "step_000007")
    assert e.exit_code == 143 and "SIGTERM" in str(e) and "iteration 7" in str(e) and "\n" not in str(e)
    assert isinstance(e, KeyboardInterrupt)


# ------------------------------------------------------------------ distributed (2 CPU processes)

_DDP_SCRIPT = """
import json, sys
sys.path[:0] = [{here!r}, {src!r}]
import torch; torch.set_num_threads(1)
from test_reliability import ToyTrainer, toy_cfg
out, parallel, iterations = sys.argv[1], sys.argv[2], int(sys.argv[3])
tr = ToyTrainer(toy_cfg(iterations=iterations, checkpoint_every=2, parallel=parallel), out)
tr.fit()
w = {{n: p.tolist() for n, p in tr.trainable_state().items()}}
with open(f"{{out}}/rank{{tr.accelerator.process_index}}.json", "w") as f:
    json.dump({{"n": tr.accelerator.num_processes, "sharded": tr.sharded, "w": w}}, f)
tr.release_processes()
assert not torch.distributed.is_initialized()
# Under FSDP on gloo, about 1 launch in 30 here still aborts during interpreter teardown after
# everything above has run (SIGABRT, "terminate called without an active exception", a thread
# inside torch); the test is about the weights, so the process leaves before that teardown.
sys.stdout.flush(); sys.stderr.flush()
import os; os._exit(0)
"""


def _torchrun(script: Path, out: Path, parallel: str, iterations: int, port: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(port), str(script), str(out), parallel, str(iterations)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "rank0.json").read_text()), json.loads((out / "rank1.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("parallel, port", [("ddp", 29541), ("fsdp", 29543)])
def test_two_processes_match_one_process_with_both_ranks_batches(tmp_path, parallel, port):
    """torchrun, 2 CPU processes (gloo) == 1 process accumulating rank 0's and rank 1's micro-batches,
    with the model replicated (ddp) or sharded (fsdp; the toy's 1x4 weight leaves rank 1 an empty
    shard), and a 2-process run resumed at iteration 2 equals the straight one.
    (The world-preset version is benchmarks/distributed_check.py.)"""
    from rzero.utils.seeding import derived_generator

    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT.format(here=str(HERE), src=str(SRC)))
    ranks = _torchrun(script, tmp_path / "ddp", parallel, 4, port)
    assert ranks[0]["n"] == 2 and ranks[0]["w"] == ranks[1]["w"]
    assert ranks[0]["sharded"] == (parallel == "fsdp")

    class Emulated(ToyTrainer):
        def step_generator(self, micro):
            return derived_generator(self.cfg.seed * 2 + micro, "train", self.iteration)

    emu = Emulated(toy_cfg(iterations=4, checkpoint_every=2, grad_accum=2), tmp_path / "emu")
    emu.fit()
    got = {n: p.detach().tolist() for n, p in emu._unwrapped().named_parameters()}
    for n, v in got.items():
        assert torch.allclose(torch.tensor(v), torch.tensor(ranks[0]["w"][n]), atol=1e-6, rtol=0), n

    _torchrun(script, tmp_path / "resumed", parallel, 2, port)
    resumed = _torchrun(script, tmp_path / "resumed", parallel, 4, port)
    assert resumed[0]["w"] == ranks[0]["w"]


def test_fsdp_units_are_the_denoiser_blocks():
    """FSDP shards per block: a diffusers UNet's down/up/mid blocks (and the transformer blocks
    inside them), never the root's own small layers; children come after their parents."""
    from diffusers import UNet2DConditionModel

    from rzero.utils.fsdp import sharding_units
    from rzero.world.models import teacher_unet_config

    unet = UNet2DConditionModel(**teacher_unet_config())
    names = {id(m): n for n, m in unet.named_modules()}
    units = [names[id(m)] for m in sharding_units(unet)]
    assert {"down_blocks.0", "down_blocks.2", "up_blocks.0", "up_blocks.2", "mid_block"} <= set(units)
    assert "down_blocks.1.attentions.0.transformer_blocks.0" in units
    assert units.index("down_blocks.1") < units.index("down_blocks.1.attentions.0.transformer_blocks.0")
    assert not any(u in ("", "conv_in", "time_embedding") for u in units)


# ------------------------------------------------------------------ issue 16: guards of the run folder


class _NaNReward(ToyTrainer):
    """A reward whose value is NaN while the loss and its gradient stay finite."""

    def train_step(self, g):
        loss, m = super().train_step(g)
        return loss, {**m, "reward/toy": float("nan")}


def test_nan_reward_value_with_finite_gradient_is_skipped(tmp_path, capsys):
    """Before: trained to the end with no warning (only the loss and the gradient were checked)."""
    tr = _NaNReward(toy_cfg(iterations=6, max_consecutive_skips=3), tmp_path / "run")
    w0 = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    with pytest.raises(NonFiniteError, match="3 consecutive"):
        tr.fit()
    assert "skipped" in capsys.readouterr().err
    for n, p in tr.model.named_parameters():
        assert torch.equal(p.detach(), w0[n]), n  # no update from a step whose reward was NaN


def test_optimizer_overflow_stops_without_saving(tmp_path):
    """A learning rate that overflows inside AdamW's step (past the loss/gradient checks)."""
    out = tmp_path / "run"
    from rzero.config.schema import OptimConfig

    tr = ToyTrainer(toy_cfg(iterations=4, optim=OptimConfig(lr=1e300, grad_clip=0.0)), out)
    with pytest.raises(NonFiniteError, match="overflowed"):
        tr.fit()
    assert not (out / "final").exists() and not (out / "checkpoints").exists()


def test_kill_before_first_checkpoint_leaves_each_step_once(tmp_path):
    """Before: a SIGKILL before the first checkpoint left rows that the restart logged again."""
    out = tmp_path / "run"
    proc = _toy_cli(tmp_path, out, 0.05, "iterations=100000", "checkpoint_every=100000", "track_every=100000")
    _wait_for_steps(out, 4, proc)
    proc.kill()
    proc.communicate(timeout=60)
    assert not (out / "checkpoints").exists()
    ToyTrainer(toy_cfg(iterations=3, checkpoint_every=100, track_every=100), out).fit()
    steps = [json.loads(line)["step"] for line in (out / "stats.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_second_train_on_a_live_run_folder_is_refused(tmp_path, capsys, monkeypatch):
    """Before: two `rzero train` on one folder ran at once and interleaved stats.jsonl."""
    import rzero.trainers as trainers
    from rzero.cli.main import main

    out = tmp_path / "run"
    proc = _toy_cli(tmp_path, out, 0.05, "iterations=100000", "checkpoint_every=100000")
    try:
        _wait_for_steps(out, 2, proc)
        monkeypatch.setitem(trainers.TRAINERS, "r0", lambda cfg, out, asset_dir=None: ToyTrainer(cfg, out))
        before = (out / "stats.jsonl").read_text().count("\n")
        code = main(["train", "--out", str(out), "iterations=2", "threads=1", "track_every=0", "sample_every=1000",
                     "log_every=1", "ema_decay=0.5"])
        err = capsys.readouterr().err
        assert code == 1 and "in use by another" in err, err
        assert not (out / "checkpoints").exists() and (out / "stats.jsonl").read_text().count("\n") >= before
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    # SIGKILL released the lock with the process: the folder can be resumed now.
    code = main(["train", "--out", str(out), "iterations=2", "threads=1", "track_every=0", "sample_every=1000",
                 "log_every=1", "ema_decay=0.5"])
    assert code == 0, capsys.readouterr().err


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "stats.jsonl").read_text().splitlines()]


def test_time_budget_snapshots_and_train_seconds_rows(tmp_path):
    """`rzero bench` evaluates each run at several budgets: a snapshot when the training clock
    first reaches each `snapshot_at_s`, a tracking row there, and the clock in every row."""
    from rzero.trainers.engine import snapshot_dir

    out = tmp_path / "run"
    cfg = toy_cfg(iterations=1000, time_budget_s=0.45, snapshot_at_s=[0.12, 0.3], track_every=1000,
                  checkpoint_every=1, keep_checkpoints=1000)
    ToyTrainer(cfg, out, sleep=0.04, tracker=lambda it: {"acc_L1": 0.01 * it}).fit()
    rows = _rows(out)
    clock = [r["train_seconds"] for r in rows]
    assert clock[0] == 0.0 and clock == sorted(clock) and clock[-1] >= 0.45
    tracked = [r["step"] for r in rows if "track/acc_L1" in r]
    for budget in (0.12, 0.3):
        meta = json.loads((snapshot_dir(out, budget) / "generator.json").read_text())
        first = next(r for r in rows if r["train_seconds"] >= budget)  # the iteration that reached it
        assert meta["iteration"] == first["step"] and meta["train_seconds"] >= budget
        assert first["step"] in tracked
        assert (snapshot_dir(out, budget) / "generator.safetensors").is_file()
    assert tracked[0] == 0 and tracked[-1] == rows[-1]["step"] and len(tracked) == 4  # start, 2 budgets, end

    # A resume past the first budget does not redo its snapshot, and still takes the second.
    first_at = json.loads((snapshot_dir(out, 0.12) / "generator.json").read_text())["iteration"]
    resumed = tmp_path / "resumed"
    step = f"step_{first_at:06d}"
    shutil.copytree(out / "checkpoints" / step, resumed / "checkpoints" / step)
    ToyTrainer(cfg, resumed, sleep=0.04).fit()
    assert not snapshot_dir(resumed, 0.12).exists() and (snapshot_dir(resumed, 0.3) / "generator.json").is_file()


def test_budgets_decide_on_the_clock_the_rows_show(tmp_path, monkeypatch):
    """A budget the clock reaches only once rounded (3 x 0.0399996 s = 0.1199988 s, shown as 0.12)
    is snapshotted at the iteration whose row first shows it, and the time budget stops there too.
    A fake clock that only the toy's "sleep" advances makes the case exact (the test above could
    land on it by chance, and did: the snapshot came one iteration after the row)."""
    from rzero.trainers.engine import snapshot_dir

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    out = tmp_path / "run"
    cfg = toy_cfg(iterations=100, time_budget_s=0.2, snapshot_at_s=[0.12], checkpoint_every=1000)
    ToyTrainer(cfg, out, sleep=0.0399996).fit()
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert next(r for r in rows if r["train_seconds"] >= 0.12)["step"] == 3
    meta = json.loads((snapshot_dir(out, 0.12) / "generator.json").read_text())
    assert meta["iteration"] == 3 and meta["train_seconds"] == 0.12
    assert rows[-1]["train_seconds"] == 0.2  # 5 x 0.0399996 = 0.199998: the budget ends iteration 5


@pytest.mark.parametrize("bad", [[0.0], [2.0, 1.0], [1.0, 1.0]])
def test_snapshot_budgets_must_increase(bad):
    with pytest.raises(ValueError, match="snapshot_at_s"):
        toy_cfg(snapshot_at_s=bad)
