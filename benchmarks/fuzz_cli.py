"""Seeded fuzzer of the `rzero` command line, its run folders, snapshots and web demo (issue 16).

    nice -n 19 .venv/bin/python benchmarks/fuzz_cli.py --cases 2000 --seed 0 \\
        --json benchmarks/results/fuzz_cli.json

Each case mutates one input and runs the real command on it: `rzero train` (`--dry-run` on
mutated presets and overrides; tiny real runs; resumes of mutated run folders), `rzero report`,
`rzero sample --checkpoint` on mutated snapshots, `rzero export` into hostile places, and HTTP
requests to the `rzero serve` app (the app `rzero serve` runs: `guard_host(create_app(models))`).
Commands run in-process, in a child forked from this process after the imports (so a case costs
the command, not Python's start-up), under a memory cap and a timeout.

What is counted, per family and in total:

    tracebacks      an exception escaped the command, or a traceback was printed (5xx for the web)
    crashes         the child died from a signal it did not ask for (abort, out-of-memory kill)
    hangs           the case outlived its timeout (the child is killed)
    silent_accepts  exit 0 (web: 2xx) on an input known to be invalid
    bad_error_lines a failing exit without exactly one `rzero: error:` line on stderr
    outside_changes a file outside the case's own folder changed (link targets, the shared base
                    run and snapshot, the asset copy), or a new file appeared outside it
    run_damaged     a command that must not write into its input folder (report, sample, export)
                    changed it
    stats_duplicates a successful resume left a step twice (or out of order) in stats.jsonl
    code_executed   a marker file that a YAML tag in the input would create exists afterwards
    rejected_valid  a non-zero exit on an input known to be valid (the fuzzer's own sanity check)

Inputs are known to be invalid (the mutation guarantees it), known to be valid, or neither
(random byte flips, truncations): the last kind only counts tracebacks, crashes, hangs and files
changed. `--quick` is the short version that `tests/test_fuzz.py` runs in `make test`.

This process never runs torch with more than one thread: a child forked after a multi-threaded
OpenMP region deadlocks (GNU libgomp is not fork-safe).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import shutil
import signal
import stat
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # tiny_sd: the fake LoRA run the export cases write into
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ["TQDM_DISABLE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)  # see the module docstring: no OpenMP pool before fork

from rzero.cli.main import main as rzero_main  # noqa: E402
from tiny_sd import write_fake_lora_run  # noqa: E402


def _preload() -> None:
    """Import what the commands import lazily, once, here: every forked case then starts warm."""
    import matplotlib

    matplotlib.use("Agg")
    import accelerate  # noqa: F401
    import fastapi.testclient  # noqa: F401
    import matplotlib.pyplot  # noqa: F401
    import PIL.Image  # noqa: F401

    import rzero.backbones  # noqa: F401
    import rzero.cli.bench  # noqa: F401
    import rzero.cli.export  # noqa: F401
    import rzero.cli.report  # noqa: F401
    import rzero.cli.serve  # noqa: F401
    import rzero.eval.report  # noqa: F401
    import rzero.apps.export  # noqa: F401
    import rzero.generator.load  # noqa: F401
    import rzero.rewards  # noqa: F401
    import rzero.apps.run_report  # noqa: F401
    import rzero.apps.serve  # noqa: F401
    import rzero.trainers  # noqa: F401
    import rzero.world.loaders  # noqa: F401

CONFIGS = ROOT / "configs"
TINY = ["batch_size=1", "threads=1", "track_every=0", "sample_every=1000", "log_every=1", "checkpoint_every=1",
        "keep_checkpoints=2"]
MEMORY_CAP = 8 << 30  # bytes of address space per case
COUNTERS = ("tracebacks", "crashes", "hangs", "silent_accepts", "bad_error_lines", "outside_changes", "run_damaged",
            "stats_duplicates", "code_executed", "rejected_valid")
FAILURES = COUNTERS[:-1]  # rejected_valid is informational


@dataclass
class Case:
    family: str
    note: str
    invalid: bool | None  # True: must fail; False: must succeed; None: no oracle (no crash is all)
    argv: list[str] = field(default_factory=list)
    run: Callable[[], Any] | None = None  # instead of argv: a function run in the child (web)
    timeout: float = 90.0
    readonly: Path | None = None  # a folder the command must leave byte for byte
    stats: Path | None = None  # a run folder whose stats.jsonl must hold each step once after success
    lock: Path | None = None  # hold this folder's flock while the case runs (a concurrent `rzero train`)
    marker: Path | None = None  # must not exist afterwards (code from the input would create it)
    readonly_ignore: tuple[str, ...] = ()  # paths inside `readonly` the command may write (a cache)


# ---------------------------------------------------------------- the shared, watched inputs


class Shared:
    """Inputs built once per fuzz run and never written by a case (watched for changes)."""

    def __init__(self, root: Path):
        self.root = root
        self.dir = root / "shared"
        self.assets = self.dir / "assets"
        self.sentinel = self.dir / "outside"  # what hostile links point at
        self.base_run = self.dir / "base_run"
        self.lora_run = self.dir / "lora_run"
        self.models = None  # DemoModels for the web family, loaded on first use

    def build(self) -> None:
        from rzero.world.assets import default_asset_dir

        self.dir.mkdir(parents=True)
        shutil.copytree(default_asset_dir(), self.assets)  # frozen: other work may rebuild the package's
        self.sentinel.mkdir()
        (self.sentinel / "secret.txt").write_text("PRIVATE: must never be read into a report or written\n")
        (self.sentinel / "notes.jsonl").write_text('{"step": 1, "time": 0.0}\n')
        (self.sentinel / "dir").mkdir()
        (self.sentinel / "dir" / "keep.bin").write_bytes(os.urandom(64))
        # The base run: the world R0 preset at tiny settings, two checkpoints and a snapshot.
        code, err = _fork_call(lambda: rzero_main(["train", str(CONFIGS / "world_r0.yaml"), "--out", str(self.base_run),
                                                   "--assets", str(self.assets), "iterations=2", *TINY]), 900)
        if code != 0:
            raise SystemExit(f"fuzz: building the base run failed ({code}):\n{err[-3000:]}")
        write_fake_lora_run(self.lora_run, self.dir / "lora_base")

    def signature(self) -> dict[str, tuple]:
        """(size, mtime, mode, link target) of everything under shared/ and the fuzz root's top level."""
        sig = {}
        for dirpath, dirnames, filenames in os.walk(self.dir):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                sig[p] = (st.st_size, st.st_mtime_ns, st.st_mode, os.readlink(p) if stat.S_ISLNK(st.st_mode) else "")
        sig["<top>"] = tuple(sorted(os.listdir(self.root)))
        return sig


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run folder: weights hard-linked (the engine only ever replaces them), the rest
    copied (stats.jsonl is appended to in place)."""

    def copy(s, d):
        if s.endswith((".safetensors", ".pt")):
            os.link(s, d)
        else:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    return dst


def own_copy(path: Path) -> None:
    """Break a hard link before mutating a file in place."""
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def tree_digest(root: Path, ignore: tuple[str, ...] = ()) -> dict[str, str]:
    import hashlib

    out = {}
    if not root.exists():
        return {"<missing>": ""}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if key.startswith(ignore) if ignore else False:
            continue
        if p.is_symlink():
            out[key] = "link:" + os.readlink(p)
        elif p.is_dir():
            out[key] = "dir"
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[key] = "special"
    return out


# ---------------------------------------------------------------- running one case in a child


def _limit_child(cpu_seconds: float) -> None:
    import faulthandler

    for limit, value in ((resource.RLIMIT_AS, MEMORY_CAP), (resource.RLIMIT_CPU, int(cpu_seconds))):
        try:
            resource.setrlimit(limit, (value, value + 5))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks for a stack before a kill


def _fork_call(fn: Callable[[], Any], timeout: float, cwd: Path | None = None,
               out_dir: Path | None = None) -> tuple[Any, str]:
    """Run fn() in a forked child; returns (result, stderr text). The result is the return value
    (an exit code), ("traceback", text), ("signal", n) or ("hang", seconds, how).

    A hang is either busy (the child used `timeout` seconds of CPU: RLIMIT_CPU ends it with
    SIGXCPU) or blocked (it outlived a wall-clock limit of 4 x timeout + 120 s without using its
    CPU allowance: a deadlock or a wait). CPU time, not wall time, is what counts as "too long",
    so a busy shared machine slows the cases down without turning them into hangs. The child
    dumps its Python stack to its stderr before a wall-clock kill."""
    import tempfile

    logs = out_dir or Path(tempfile.mkdtemp(prefix="fuzz_"))
    err_path, out_path = logs / "stderr.txt", logs / "stdout.txt"
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            _limit_child(timeout)
            if cwd is not None:
                os.chdir(cwd)
            fo = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fe = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fo, 1)
            os.dup2(fe, 2)
            try:
                result: Any = fn()
            except SystemExit as e:
                result = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - what the fuzzer is looking for
                result = ["traceback", traceback.format_exc()]
            sys.stdout.flush()
            sys.stderr.flush()
            os.write(w, json.dumps(result, default=str).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks, deadline, timed_out = [], time.time() + 4 * timeout + 120, False
    while True:
        left = deadline - time.time()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([r], [], [], min(left, 1.0))
        if ready:
            data = os.read(r, 1 << 16)
            if not data:
                break
            chunks.append(data)
    os.close(r)
    if timed_out:
        os.kill(pid, signal.SIGUSR1)
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    err = err_path.read_text(errors="replace") if err_path.exists() else ""
    cpu = round(usage.ru_utime + usage.ru_stime, 1)
    if timed_out:
        return ["hang", cpu, "blocked"], err
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        return ["hang", cpu, "busy"], err
    if os.WIFSIGNALED(status) or not chunks:
        return ["signal", os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1], err
    return json.loads(b"".join(chunks)), err


# ---------------------------------------------------------------- judging a case


_NOISE = ("train:", "\r", "report:", "sample:", "export:", "eval:", "serve:", "world ")


def _error_lines_ok(err: str) -> bool:
    """Exactly one `rzero: error:` line, and nothing else but progress/status lines."""
    lines = [x for x in err.splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("rzero: error: ")]
    others = [x for x in lines if not x.startswith("rzero: error: ") and not x.startswith(_NOISE)
              and "warn" not in x.lower() and "%|" not in x]
    return len(errors) == 1 and not others and len(errors[0]) <= 1200


def _stats_once(run_dir: Path) -> bool:
    p = run_dir / "stats.jsonl"
    if not p.is_file():
        return True
    steps = [json.loads(x)["step"] for x in p.read_text().splitlines() if x.strip()]
    return steps == sorted(set(steps))


def judge(case: Case, result: Any, err: str) -> dict[str, bool]:
    flags = dict.fromkeys(COUNTERS, False)
    if isinstance(result, list) and result and result[0] == "hang":
        flags["hangs"] = True
        return flags
    if isinstance(result, list) and result and result[0] == "signal":
        flags["crashes"] = True
        return flags
    if isinstance(result, list) and result and result[0] == "traceback":
        flags["tracebacks"] = True
        return flags
    if "Traceback (most recent call last)" in err:
        flags["tracebacks"] = True
    if case.run is not None:  # web: result is {"status": int, ...}
        status = result.get("status", 0) if isinstance(result, dict) else 0
        if status >= 500:
            flags["tracebacks"] = True
        elif case.invalid is True and status < 400:
            flags["silent_accepts"] = True
        elif case.invalid is False and status >= 400:
            flags["rejected_valid"] = True
        return flags
    code = result
    if code == 0:
        if case.invalid is True:
            flags["silent_accepts"] = True
        if case.stats is not None and not _stats_once(case.stats):
            flags["stats_duplicates"] = True
    else:
        if not _error_lines_ok(err):
            flags["bad_error_lines"] = True
        if case.invalid is False:
            flags["rejected_valid"] = True
    return flags


# ---------------------------------------------------------------- mutations


TRAIN_PRESETS = ["world_r0.yaml", "world_r0plus.yaml", "world_r0_noreg.yaml", "world_distar.yaml", "world_dipp.yaml",
                 "world_dipp4.yaml", "sd15_r0.yaml", "sd3_r0.yaml", "sd15_distar.yaml", "sd15_r0plus.yaml"]

# Values that are invalid for a key whatever the rest of the config says.
BAD_VALUES: dict[str, list[str]] = {
    "batch_size": ["0", "-3", "1000000000", "abc", "[1]", "2.5"],
    "iterations": ["0", "-1", "true", "{a: 1}"],
    "grad_accum": ["0", "-2"],
    "threads": ["0", "1000000", "-1"],
    "seed": ["-1", "1099511627776", "1e40", "seed"],
    "log_every": ["0"], "checkpoint_every": ["0"], "keep_checkpoints": ["0"], "sample_every": ["-5"],
    "track_every": ["-1"], "track_prompts": ["0"], "time_budget_s": ["-1", ".nan", ".inf"],
    "max_consecutive_skips": ["0"], "alarm_patience": ["-1"], "ema_decay": ["1", "-0.1", ".inf", "1.5"],
    "method": ["nope", "R0", "1"], "backbone": ["nope", "World"], "mixed_precision": ["fp8"], "parallel": ["tp"],
    "backbone_dtype": ["int8"],
    "generator.steps": ["0", "5000", "-4"],
    "generator.timesteps": ["[2000, 1500, 1000, 500]", "[999, 500, -1, -500]", "[1, 2, 3, 4]", "[999, 999, 1, 0]",
                            "[.nan, 3, 2, 1]"],
    "generator.eta_min": ["-0.1", "2"], "generator.eta_max": ["1.5"], "generator.inference_eta": ["-1", "1.5"],
    "generator.renoise": ["linear"], "generator.eta_per_step": ["maybe"],
    "reward.names": ["[]", "[nope]", "world-clip"], "reward.delta": [".nan"], "reward.cfg_weight": ["-1"],
    "reward.cfg_t_min": ["1"], "reward.weights": ["{nope: 1}"], "reward.options": ["{nope: {}}", "[1]"],
    "reward.options[world-clip].foo": ["1"], "reward.options[world-judge].asset_dir": ["x"],
    "regularization.weight": ["-1", ".nan"],
    "r0plus.hires_t_max": ["0", "5000"], "r0plus.intermediate_first_step": ["0", "10"],
    "r0plus.intermediate_target": ["middle"], "r0plus.hires_weight": ["-1"],
    "di.fake_updates": ["0"], "di.t_min": ["-0.1"], "di.weighting": ["x"], "di.gradient_path": ["nope"],
    "optim.lr": ["0", "-1", ".nan", "lr"], "optim.grad_clip": ["-1"],
    "lora.rank": ["-1"], "lora.target_modules": ["5"],
    "iteratons": ["5"], "optim.lrr": ["1"], "generator.stepz": ["4"], "reward.name": ["[world-clip]"],
}
# Values that are valid for a key on its own (the rest of the config may still conflict).
FREE_VALUES: dict[str, list[str]] = {
    "iterations": ["1", "7", "300000"], "batch_size": ["1", "64", "4096"], "seed": ["0", "4294967295", "17"],
    "threads": ["1", "3", "1024"], "log_every": ["1", "1000000"], "ema_decay": ["0", "0.999"],
    "generator.eta_max": ["0.3", "1"], "generator.inference_eta": ["0", "0.5"], "optim.lr": ["1e-3", "1e-12"],
    "generator.timesteps": ["[999, 749, 499, 249]", "[]"], "reward.weights": ["{world-clip: 2}"],
    "r0plus.hires_t_max": ["1", "1000"], "track_prompts": ["1", "50"], "time_budget_s": ["0", "3.5"],
}
JUNK = ["", "=", "==", "a.b", "x=1=2", ".a=1", "a..b=1", "a[b=1", "[x]=1", "é=1", "a b=1", "\x00=1", "-=1",
        "a=" + "x" * 5000, "reward.options[=1", "optim.lr=" + "[" * 300, "k=&a 1", "k=*a", "k=!!python/none ''",
        "k={a: [b, {c: [d]}]}", "k='unterminated", "iterations=1e999", "iterations=" + "9" * 5000]


def _set(data: dict, dotted: str, value: Any) -> None:
    from rzero.config.io import split_key

    parts = split_key(dotted) or [dotted]
    node = data
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def config_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    """A preset's YAML, mutated, through `rzero train CONFIG --dry-run`."""
    import yaml

    preset = rng.choice(TRAIN_PRESETS + ["world_build.yaml", "world_build.yaml"])
    text = (CONFIGS / preset).read_text()
    command = ["world", "build"] if preset.startswith("world_build") else ["train"]
    kind = rng.choice(["bad_value", "unknown_key", "alias", "laughs", "python_tag", "nesting", "top_scalar",
                       "duplicate", "not_utf8", "utf16", "bytes_flip", "truncate", "drop_line", "swap_lines",
                       "huge_value", "valid_edit", "empty", "binary"])
    invalid: bool | None = True
    data = yaml.safe_load(text) or {}
    if kind == "bad_value" and command == ["train"]:
        key = rng.choice(list(BAD_VALUES))
        _set(data, key, yaml.safe_load(rng.choice(BAD_VALUES[key])) if not key.endswith("timesteps") else
             yaml.safe_load(rng.choice(BAD_VALUES[key])))
        out = yaml.safe_dump(data).encode()
        note = f"{key}={BAD_VALUES[key]}"
    elif kind in ("bad_value", "unknown_key"):
        _set(data, rng.choice(["iteratons", "generatr.steps", "optim.lrr", "teacher.stepz", "x"]), 1)
        out, note = yaml.safe_dump(data).encode(), "unknown key"
    elif kind == "alias":
        out, note = (text + "\nanchor_a: &a 5\nanchor_b: *a\n").encode(), "alias"
    elif kind == "laughs":
        lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for prev, name in zip("abcdefgh", "bcdefghi"):
            lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
        out, note = ("\n".join(lines) + "\n").encode(), "billion laughs"
    elif kind == "python_tag":
        marker = cdir / "pwned"
        out, note = f"iterations: !!python/object/apply:builtins.open ['{marker}', 'w']\n".encode(), "python tag"
    elif kind == "nesting":
        out, note = ("iterations: " + "[" * 2000 + "]" * 2000 + "\n").encode(), "deep nesting"
    elif kind == "top_scalar":
        out, note = rng.choice([b"42\n", b"- a\n- b\n", b"'text'\n", b"null\n"]), "top-level scalar"
        invalid = out != b"null\n"  # null is an empty config: all defaults (by decision)
    elif kind == "duplicate":
        first = next(line for line in text.splitlines() if line and not line.startswith(("#", " ")))
        out, note = (text + "\n" + first + "\n").encode(), "duplicate key"
    elif kind == "not_utf8":
        out, note = text.encode() + b"\n# \xff\xfe\n", "not UTF-8"
    elif kind == "utf16":
        out, note = text.encode("utf-16"), "UTF-16"
    elif kind == "binary":
        out, note = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4000))), "random bytes"
        invalid = None
    elif kind == "huge_value":
        key = rng.choice(["method", "reward.names", "prompt_file", "backbone"])
        _set(data, key, "x" * rng.choice([1000, 100_000]))
        out, note = yaml.safe_dump(data).encode(), f"huge {key}"
        invalid = True if key != "prompt_file" else None
    elif kind == "empty":
        out, note, invalid = b"", "empty file", (None if command == ["world", "build"] else False)
    elif kind == "valid_edit" and command == ["train"]:
        key = rng.choice(list(FREE_VALUES))
        _set(data, key, yaml.safe_load(rng.choice(FREE_VALUES[key])))
        out, note, invalid = yaml.safe_dump(data).encode(), f"valid {key}", None
    else:  # random damage: validity unknown
        raw = bytearray(text.encode())
        lines = text.splitlines(keepends=True)
        if kind == "bytes_flip" or kind == "valid_edit":
            for _ in range(rng.randint(1, 5)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
            out = bytes(raw)
        elif kind == "truncate":
            out = bytes(raw[: rng.randrange(len(raw))])
        elif kind == "drop_line":
            lines.pop(rng.randrange(len(lines)))
            out = "".join(lines).encode()
        else:
            i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
            out = "".join(lines).encode()
        note, invalid = kind, None
    cfg = cdir / f"mutated_{preset}"
    cfg.write_bytes(out)
    argv = [*command, str(cfg), "--dry-run"]
    if preset.startswith("sd") and invalid is False:
        invalid = None
    return Case("config", f"{preset}: {note}", invalid, argv=argv, timeout=60, marker=cdir / "pwned")


def override_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    """Dotted overrides (and argv junk) through `rzero train/eval/world build --dry-run`."""
    roll = rng.random()
    if roll < 0.45:
        key = rng.choice(list(BAD_VALUES))
        return Case("overrides", f"bad {key}", True,
                    argv=["train", "--dry-run", f"{key}={rng.choice(BAD_VALUES[key])}"], timeout=60)
    if roll < 0.65:
        key = rng.choice(list(FREE_VALUES))
        return Case("overrides", f"free {key}", False,
                    argv=["train", "--dry-run", f"{key}={rng.choice(FREE_VALUES[key])}"], timeout=60)
    if roll < 0.85:
        junk = rng.choice(JUNK)
        return Case("overrides", f"junk {junk[:30]!r}", None, argv=["train", "--dry-run", junk], timeout=60)
    argvs = [
        (["eval", "--dry-run", "steps=0"], True), (["eval", "--dry-run", "--eta", "2"], True),
        (["eval", "--dry-run", "scale.reward_options={hps-v2: {nope: 1}}", "scale.rewards=[hps-v2]"], True),
        (["eval", "--dry-run", "threads=100000"], True), (["eval", "--dry-run", "batch_size=1000000"], True),
        (["world", "build", "--dry-run", "threads=0"], True), (["world", "build", "--dry-run", "seed=-4"], True),
        (["world", "build", "--dry-run", "inspector.batch_size=100000000"], True),
        (["train", "--dry-run", "--bogus"], True), (["nope"], True), (["train", "--out"], True),
        (["sample", "--checkpoint", str(shared.base_run), "--prompt", "x", "--out", str(cdir / "x.png"),
          "--num-per-prompt", "0", "--assets", str(shared.assets)], True),
        (["sample", "--prompt", "", "--out", str(cdir / "x.png")], True),
        (["serve", "--port", "70000"], True), (["serve", "--threads", "0"], True),
        (["serve", "--threads", "100000000"], True),
        (["report", str(shared.base_run), "--teacher-steps", "1000000000"], True),
        (["sample", "--prompt", "x", "--num-per-prompt", "100000000", "--out", str(cdir / "x.png")], True),
        (["report", str(shared.base_run), "--max-grids", "1"], True),
        (["report", str(shared.base_run), "--teacher-steps", "0"], True),
        (["train", "--dry-run", "iterations=5", "iterations=6"], False), (["eval", "--dry-run"], False),
    ]
    argv, invalid = rng.choice(argvs)
    return Case("overrides", " ".join(argv)[:60], invalid, argv=argv, timeout=60)


SAFE_TRAIN = ["seed=3", "generator.eta_max=0.3", "r0plus.intermediate_supervision=true", "regularization.weight=0",
              "ema_decay=0", "grad_accum=2", "generator.timesteps=[999, 700, 400, 100]", "reward.cfg_weight=0.5",
              "r0plus.hires_guidance=true", "generator.renoise=ddim_sigma", "optim.grad_clip=0",
              "reward.weights={world-clip: 2.0}", "generator.eta_per_step=true", "alarm_patience=0"]


def train_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    """A real tiny training run in a fresh folder: valid settings, or one known-bad number."""
    out = cdir / "run"
    extra = rng.sample(SAFE_TRAIN, rng.randint(0, 2))
    invalid: bool | None = False
    if rng.random() < 0.4:
        bad = rng.choice(["optim.lr=1e300", "generator.timesteps=[2000, 1500, 1000, 500]", "r0plus.hires_t_max=5000",
                          "generator.timesteps=[999, 500, 0, -250]", "threads=100000", "batch_size=100000000",
                          "reward.options[world-clip].bogus=1", "seed=100000000000000000000"])
        extra.append(bad)
        invalid = True
    argv = ["train", str(CONFIGS / "world_r0.yaml"), "--out", str(out), "--assets", str(shared.assets),
            "iterations=2", *TINY, *extra]
    return Case("train", " ".join(extra) or "plain", invalid, argv=argv, timeout=400, stats=out)


def _link_out(run_dir: Path, shared: Shared, rng: random.Random) -> str:
    rel = rng.choice(["stats.jsonl", "config.yaml", "final", "checkpoints", "samples/step_000000.png",
                      "final/generator.json", "checkpoints/step_000002/state.json"])
    target = run_dir / rel
    dest = rng.choice([shared.sentinel / "secret.txt", shared.sentinel / "notes.jsonl", shared.sentinel / "dir",
                       Path("/dev/zero"), shared.sentinel / "missing_target"])
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    else:
        target.unlink()
    target.symlink_to(dest)
    return f"{rel} -> {dest}"


def _state(ckpt: Path, rng: random.Random) -> str:
    p = ckpt / "state.json"
    state = json.loads(p.read_text())
    field_, value = rng.choice([("iteration", None), ("iteration", "2"), ("iteration", -1), ("train_seconds", None),
                                ("train_seconds", "x"), ("skipped_steps", -3), ("consecutive_skips", [1]),
                                ("alarm_accumulator", {"a": 1}), ("alarm", "on"), ("files", 5),
                                ("files", {"../../outside/secret.txt": None}), ("files", {"model.safetensors": 3})])
    state[field_] = value
    p.write_text(json.dumps(state))
    return f"{ckpt.name}/state.json {field_}={value!r}"


def _damage_file(p: Path, rng: random.Random) -> str:
    own_copy(p)
    data = bytearray(p.read_bytes())
    how = rng.choice(["truncate", "flip", "empty", "garbage"])
    if how == "truncate":
        data = data[: rng.randrange(max(1, len(data)))]
    elif how == "flip":
        for _ in range(8):
            data[rng.randrange(len(data))] ^= 0xFF
    elif how == "empty":
        data = bytearray()
    else:
        data = bytearray(os.urandom(256))
    p.write_bytes(bytes(data))
    return f"{p.parent.name}/{p.name} {how}"


def mutate_run(run_dir: Path, shared: Shared, rng: random.Random, command: str) -> tuple[str, bool | None, list[str]]:
    """One mutation of a copied run folder: (note, invalid for `command`, extra argv)."""
    ck = run_dir / "checkpoints"
    kind = rng.choice(["none", "link_out", "link_out", "link_inside", "fifo", "damage_newest", "damage_all",
                       "state_newest", "state_all", "stats_row", "stats_cut", "stats_empty", "config_method",
                       "config_garbage", "config_unknown", "chmod", "no_final", "no_checkpoints", "lock",
                       "shape_change", "shape_change_allowed", "state_huge"])
    if command == "report" and kind in ("lock", "shape_change", "shape_change_allowed"):
        kind = "none"
    extra: list[str] = []
    if kind == "none":
        return "unchanged", False, extra
    if kind == "link_out":
        return _link_out(run_dir, shared, rng), True, extra
    if kind == "link_inside":
        p = run_dir / "samples" / "step_000000.png"
        p.unlink()
        p.symlink_to(Path("..") / "final" / "generator.json")
        return "sample grid links inside the run", (None if command == "report" else False), extra
    if kind == "fifo":
        os.mkfifo(run_dir / rng.choice(["samples/step_000007.png", "eval_x.json", "checkpoints/pipe"]))
        return "fifo in the run", True, extra
    if kind == "damage_newest":
        name = rng.choice(["model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"])
        return _damage_file(ck / "step_000002" / name, rng), (None if command == "report" else False), extra
    if kind == "damage_all":
        name = rng.choice(["model.safetensors", "optimizer.pt", "state.json"])
        notes = [_damage_file(ck / s / name, rng) for s in ("step_000001", "step_000002")]
        return "; ".join(notes), (None if command == "report" else True), extra
    if kind == "state_newest":
        return _state(ck / "step_000002", rng), (None if command == "report" else False), extra
    if kind == "state_all":
        seed = rng.random()
        notes = [_state(ck / s, random.Random(seed)) for s in ("step_000001", "step_000002")]
        return "; ".join(notes), (None if command == "report" else True), extra
    if kind == "state_huge":
        p = ck / "step_000002" / "state.json"
        p.write_text("[" * 100_000 + "]" * 100_000)
        return "state.json nested 100k deep", (None if command == "report" else False), extra
    if kind == "stats_row":
        row = rng.choice(["[1, 2]", '"text"', "null", '{"step": "3"}', '{"time": 1}', "7", '{"step": 1e400}'])
        p = run_dir / "stats.jsonl"
        p.write_text(row + "\n" + p.read_text())
        return f"stats row {row}", (None if command == "report" else True), extra
    if kind == "stats_cut":
        p = run_dir / "stats.jsonl"
        p.write_bytes(p.read_bytes()[:-7])
        return "stats.jsonl cut mid-line", (None if command == "report" else False), extra
    if kind == "stats_empty":
        (run_dir / "stats.jsonl").write_text("")
        return "stats.jsonl empty", (None if command == "report" else False), extra
    if kind == "config_method":
        p = run_dir / "config.yaml"
        p.write_text(p.read_text().replace("method: r0", "method: dipp"))
        return "saved config has another method", (None if command == "report" else True), extra
    if kind == "config_garbage":
        (run_dir / "config.yaml").write_bytes(rng.choice([b"\xff\xfe garbage", b"- 1\n- 2\n", b"a: [1\n",
                                                         b"a: &x 1\nb: *x\n"]))
        return "config.yaml garbage", (None if command == "report" else True), extra
    if kind == "config_unknown":
        p = run_dir / "config.yaml"
        p.write_text(p.read_text() + "\nfuture_key: 1\n")
        return "config.yaml with an unknown key", (None if command == "report" else True), extra
    if kind == "chmod":
        target = rng.choice([ck / "step_000002" / "model.safetensors", run_dir / "stats.jsonl", ck])
        if target.is_file():
            own_copy(target)
        target.chmod(rng.choice([0o000, 0o200, 0o444]))
        return f"chmod {target.name}", None, extra
    if kind == "no_final":
        shutil.rmtree(run_dir / "final")
        return "final/ removed", False, extra
    if kind == "no_checkpoints":
        shutil.rmtree(ck)
        return "checkpoints/ removed (a kill before the first checkpoint)", False, extra
    if kind == "lock":
        return "another train holds the folder", True, ["<lock>"]
    if kind == "shape_change":
        return "resume with generator.steps=2", True, ["generator.steps=2"]
    return "resume with generator.steps=2 --allow-config-change", False, ["generator.steps=2",
                                                                          "--allow-config-change"]


def resume_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    run_dir = copy_run(shared.base_run, cdir / "run")
    note, invalid, extra = mutate_run(run_dir, shared, rng, "train")
    lock = None
    if "<lock>" in extra:
        extra.remove("<lock>")
        lock = run_dir
    argv = ["train", str(CONFIGS / "world_r0.yaml"), "--out", str(run_dir), "--assets", str(shared.assets),
            "iterations=3", *TINY, *extra]
    return Case("resume", note, invalid, argv=argv, timeout=400, stats=run_dir, lock=lock)


def report_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    run_dir = copy_run(shared.base_run, cdir / "run")
    note, invalid, _ = mutate_run(run_dir, shared, rng, "report")
    if rng.random() < 0.5 and (run_dir / "final").is_dir() and not (run_dir / "final").is_symlink() \
            and "final" not in note:  # removing final/ would remove the mutation itself
        shutil.rmtree(run_dir / "final")  # a live run: the report shows its newest grid (no sampling)
        note += "; live run (no final/)"
    if rng.random() < 0.3:  # also JSON files the report reads, with wrong types
        extra = rng.choice([("final/generator.json", '{"steps": "4"}'), ("final/generator.json", "[1]"),
                            ("hacking_alarm.json", '{"events": 5}'), ("hacking_alarm.json", '{"patience": "x"}'),
                            ("eval_x.json", '{"a": {"b": 1}}'), ("eval_y.json", "[" * 50_000)])
        p = run_dir / extra[0]
        if p.is_file() and not p.is_symlink():
            own_copy(p)
        if not p.is_symlink() and p.parent.is_dir() and not p.parent.is_symlink():
            p.write_text(extra[1])
            note += f"; {extra[0]} = {extra[1][:20]}"
    argv = ["report", str(run_dir), "--out", str(cdir / "report.html"), "--assets", str(shared.assets),
            "--no-teacher"]
    if rng.random() < 0.05:
        argv = argv[:-1] + ["--teacher-steps", "2"]
    return Case("report", note, invalid, argv=argv, timeout=300, readonly=run_dir, readonly_ignore=("report_cache",))


SNAPSHOT_META = [
    ({"steps": 4, "timesteps": [2000, 1500, 1000, 500]}, True), ({"steps": 4, "timesteps": [999, 500, 0, -250]}, True),
    ({"steps": 4, "timesteps": [999, 500]}, True), ({"steps": 4, "timesteps": "x"}, True),
    ({"steps": 4, "timesteps": [999, 999, 500, 1]}, True), ({"steps": 0}, True), ({"steps": "4"}, True),
    ({"steps": 10**9}, True), ({"steps": 4, "inference_eta": 7}, True), ({"steps": 4, "inference_eta": None}, True),
    ({"steps": 4, "renoise": "linear"}, True), ({"steps": 4, "backbone": 5}, True), ({"steps": 4, "lora": 5}, True),
    ({"steps": 4, "lora": {"rank": "x"}}, True), ({"steps": 4, "backbone": "sd15"}, True),
    ({"steps": 4, "timesteps": [999, 749, 499, 249]}, False), ({"steps": 2}, None), ({"steps": 4}, False),
    ({"steps": 4, "timesteps": [999, 700, 300, 1]}, False), ({"steps": 4, "extra": {"a": [1, 2]}}, False),
]


def snapshot_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    snap = cdir / "run"
    (snap / "final").mkdir(parents=True)
    for name in ("generator.safetensors", "generator.json", "config.yaml"):
        os.link(shared.base_run / "final" / name, snap / "final" / name) if name.endswith("safetensors") else \
            shutil.copy2(shared.base_run / "final" / name, snap / "final" / name)
    kind = rng.choice(["meta", "meta", "weights", "link", "missing", "args", "none"])
    invalid: bool | None
    meta_path, weights = snap / "final" / "generator.json", snap / "final" / "generator.safetensors"
    if kind == "meta":
        meta, invalid = rng.choice(SNAPSHOT_META)
        meta_path.write_text(json.dumps({"method": "r0", "backbone": "world", **meta}))
        note = json.dumps(meta)[:60]
    elif kind == "weights":
        note, invalid = _damage_file(weights, rng), True
        if " flip" in note:
            invalid = None  # flipped bytes may land inside a tensor: a different, still loadable file
    elif kind == "link":
        target = rng.choice([weights, meta_path])
        target.unlink()
        dest = rng.choice([Path("/dev/zero"), shared.sentinel / "secret.txt", Path("/nonexistent")])
        target.symlink_to(dest)
        note, invalid = f"{target.name} -> {dest}", True
    elif kind == "missing":
        rng.choice([weights, meta_path]).unlink()
        note, invalid = "a snapshot file missing", True
    else:
        note, invalid = "unchanged", False
    argv = ["sample", "--checkpoint", str(snap), "--prompt", "a red circle", "--out", str(cdir / "x.png"),
            "--assets", str(shared.assets)]
    if kind == "args":
        bad = rng.choice([["--eta", "2"], ["--steps", "3"], ["--num-per-prompt", "0"], ["--steps", "-1"],
                          ["--seed", "-1"], ["--eta", "nan"], ["--prompt-file", "/dev/zero"], ["--out", str(cdir)]])
        if bad[0] == "--out":
            argv[argv.index("--out") + 1] = bad[1]
        else:
            argv += bad
        note = " ".join(bad)
        invalid = None if bad == ["--seed", "-1"] else True  # a negative seed is just another seed
    return Case("snapshot", note, invalid, argv=argv, timeout=200, readonly=snap)


def export_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    run_dir = copy_run(shared.lora_run, cdir / "run")
    into, invalid = rng.choice([("run", True), ("run/final", True), (".", True), ("run/final/..", True),
                                ("run/sub/dir", True), ("link_to_run", True), ("elsewhere", None)])
    if into == "link_to_run":
        (cdir / "link_to_run").symlink_to(run_dir)
    argv = ["export", str(run_dir if rng.random() < 0.5 else run_dir / "final"), "--format", "lora",
            str(cdir / into)]
    if rng.random() < 0.7:
        argv.append("--force")
    return Case("export", f"into {into}", invalid, argv=argv, timeout=120, readonly=run_dir)


# ---------------------------------------------------------------- web


def _web_models(shared: Shared):
    if shared.models is None:
        from rzero.apps.serve import DemoModels

        shared.models = DemoModels(shared.base_run, shared.assets)
    return shared.models


def web_case(rng: random.Random, cdir: Path, shared: Shared) -> Case:
    models = _web_models(shared)
    host_kind = rng.choice(["own", "own", "own", "localhost", "ip", "foreign", "foreign_port", "empty", "long",
                            "allowed_name"])
    host = {"own": "127.0.0.1:7860", "localhost": "localhost:7860", "ip": "[::1]:7860", "foreign": "evil.example",
            "foreign_port": "rebind.attacker.example:7860", "empty": "", "long": "a" * 5000 + ".example",
            "allowed_name": "demo.lan:7860"}[host_kind]
    host_bad = host_kind in ("foreign", "foreign_port", "empty", "long")
    good = {"prompt": "a red circle", "seed": 1, "steps": 2, "cfg": 2.0, "num_images": 1, "upscale": 1}
    body_kind = rng.choice(["good", "good", "wrong_type", "extra", "range", "huge_prompt", "bad_json", "deep",
                            "not_utf8", "empty_prompt", "array", "models"])
    method, path = "POST", "/api/generate"
    body_invalid = True
    if body_kind == "good":
        body, body_invalid = json.dumps(good).encode(), False
    elif body_kind == "wrong_type":
        k = rng.choice(list(good))
        body = json.dumps({**good, k: rng.choice([[1], {"a": 1}, "x" if k != "prompt" else 5, None])}).encode()
    elif body_kind == "extra":
        body = json.dumps({**good, "promt": "x"}).encode()
    elif body_kind == "range":
        k, v = rng.choice([("steps", 0), ("steps", 10**6), ("num_images", 1000), ("seed", -1), ("seed", 2**70),
                           ("cfg", -1), ("eta", 2), ("upscale", 100), ("teacher_eta", float("inf"))])
        body = json.dumps({**good, k: v}).encode() if v != float("inf") else \
            json.dumps(good)[:-1].encode() + b', "teacher_eta": Infinity}'
    elif body_kind == "huge_prompt":
        body = json.dumps({**good, "prompt": "x" * rng.choice([501, 1_000_000])}).encode()
    elif body_kind == "bad_json":
        body = rng.choice([b"{", b"prompt=x", b"", b'{"prompt": "a" "b"}'])
    elif body_kind == "deep":
        body = b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    elif body_kind == "not_utf8":
        body = b'{"prompt": "\xff\xfe"}'
    elif body_kind == "empty_prompt":
        body = json.dumps({**good, "prompt": "   "}).encode()
    elif body_kind == "array":
        body = json.dumps([good]).encode()
    else:
        body = json.dumps({**good, "models": rng.choice([[], ["nope"], "teacher"])}).encode()
    if rng.random() < 0.15:
        method, path = rng.choice([("GET", "/api/info"), ("GET", "/"), ("GET", "/healthz"), ("GET", "/nope"),
                                   ("DELETE", "/api/generate"), ("GET", "/api/generate"), ("GET", "/" + "a" * 10000),
                                   ("GET", "/../../etc/passwd"), ("PUT", "/api/info")])
        body_invalid = path not in ("/api/info", "/", "/healthz") or method != "GET"
        body = b""
    invalid = True if host_bad else body_invalid
    allow = ["demo.lan"] if host_kind == "allowed_name" or rng.random() < 0.2 else []
    if host_kind == "allowed_name" and not allow:
        invalid = True

    def request():
        from fastapi.testclient import TestClient

        from rzero.cli.serve import guard_host
        from rzero.apps.serve import create_app

        client = TestClient(guard_host(create_app(models), "127.0.0.1", allow), base_url="http://127.0.0.1:7860")
        headers = {"content-type": "application/json", "host": host}
        r = client.request(method, path, content=body, headers=headers)
        text = r.text
        return {"status": r.status_code, "body": text[:200]}

    note = f"host={host_kind} {method} {path[:20]} body={body_kind}"
    return Case("web", note, invalid, run=request, timeout=120)


FAMILIES: dict[str, Callable[[random.Random, Path, Shared], Case]] = {
    "config": config_case, "overrides": override_case, "train": train_case, "resume": resume_case,
    "report": report_case, "snapshot": snapshot_case, "export": export_case, "web": web_case}
WEIGHTS = {"config": 20, "overrides": 20, "train": 4, "resume": 18, "report": 10, "snapshot": 12, "export": 5,
           "web": 11}
QUICK = ["config", "overrides"] * 7 + ["resume", "export", "snapshot", "web", "config", "overrides", "report",
                                       "snapshot", "web", "resume", "config", "overrides", "export", "web", "config",
                                       "overrides", "snapshot", "web", "config", "overrides", "web", "config"]


# ---------------------------------------------------------------- driver


def run_fuzz(cases: int, seed: int, root: Path, quick: bool = False, keep_failures: int = 20,
             log: Callable[[str], None] = print) -> dict:
    rng = random.Random(seed)
    started = time.time()
    root.mkdir(parents=True, exist_ok=True)
    _preload()
    shared = Shared(root)
    shared.build()
    log(f"fuzz: imports and the base run took {time.time() - started:.1f} s")
    families = QUICK if quick else None
    totals = dict.fromkeys(COUNTERS, 0)
    per_family: dict[str, dict[str, int]] = {}
    examples: list[dict] = []
    kept = 0
    for i in range(cases):
        family = families[i % len(families)] if families else rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        cdir = root / "cases" / f"{i:05d}"
        cdir.mkdir(parents=True)
        case_rng = random.Random(f"{seed}:{i}")
        case = FAMILIES[family](case_rng, cdir, shared)
        before = shared.signature()
        readonly = tree_digest(case.readonly, case.readonly_ignore) if case.readonly is not None else None
        lock_fd = None
        if case.lock is not None:
            import fcntl

            lock_fd = os.open(case.lock, os.O_RDONLY)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        t0 = time.time()
        fn = case.run if case.run is not None else (lambda argv=case.argv: rzero_main(argv))
        try:
            result, err = _fork_call(fn, case.timeout, cwd=cdir, out_dir=cdir)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        seconds = time.time() - t0
        flags = judge(case, result, err)
        if shared.signature() != before:
            flags["outside_changes"] = True
        if readonly is not None and tree_digest(case.readonly, case.readonly_ignore) != readonly:
            flags["run_damaged"] = True
        if case.marker is not None and case.marker.exists():
            flags["code_executed"] = True
        fam = per_family.setdefault(family, {"cases": 0, **dict.fromkeys(COUNTERS, 0), "seconds": 0.0})
        fam["cases"] += 1
        fam["seconds"] = round(fam["seconds"] + seconds, 1)
        bad = [k for k in FAILURES if flags[k]]
        for k, v in flags.items():
            fam[k] += int(v)
            totals[k] += int(v)
        if bad or flags["rejected_valid"]:
            examples.append({"case": i, "family": family, "note": case.note, "problems": bad or ["rejected_valid"],
                             "argv": [a[:200] for a in case.argv], "result": str(result)[:2000],
                             "stderr_tail": err[-1500:]})
        if bad and kept < keep_failures:
            kept += 1  # left on disk for inspection
        else:
            _remove(cdir)
        status = ",".join(bad) if bad else ("rejected-valid" if flags["rejected_valid"] else "ok")
        log(f"[{i + 1}/{cases}] {family:9s} {seconds:6.1f}s {status:16s} {case.note[:90]}")
        if shared.signature() != before:  # a changed shared input would taint every later case
            raise SystemExit(f"fuzz: case {i} changed the shared inputs; stopping (see {cdir})")
    summary = {
        "command": " ".join(["benchmarks/fuzz_cli.py", "--cases", str(cases), "--seed", str(seed)]
                            + (["--quick"] if quick else [])),
        "seed": seed, "cases": cases, "wall_seconds": round(time.time() - started, 1),
        "totals": totals, "failures": sum(totals[k] for k in FAILURES), "per_family": per_family,
        "examples": examples[:60],
        "machine": {"cpus": os.cpu_count(), "torch_threads_per_case": 1, "memory_cap_gb": MEMORY_CAP >> 30},
    }
    return summary


def _remove(path: Path) -> None:
    for dirpath, dirnames, _ in os.walk(path):  # chmod 000 folders must be readable to be deleted
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="the short version: a fixed mix of cheap families")
    ap.add_argument("--root", default=None, help="work folder (default: a new temporary folder, removed at the end)")
    ap.add_argument("--json", default=None, help="write the counts here")
    args = ap.parse_args(argv)
    import tempfile

    root = Path(args.root) if args.root else Path(tempfile.mkdtemp(prefix="rzero_fuzz_"))
    try:
        summary = run_fuzz(args.cases, args.seed, root / "work", quick=args.quick,
                           log=lambda line: print(line, flush=True))
    finally:
        if not args.root:
            _remove(root)
    print(json.dumps({k: summary[k] for k in ("cases", "wall_seconds", "totals", "failures")}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if summary["failures"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
