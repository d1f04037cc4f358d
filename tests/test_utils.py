"""Tests for rzero.utils: seeding, atomic I/O and metric logging."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import pytest
import torch

from rzero.utils import stats as stats_mod
from rzero.utils.io import (
    AssetError,
    atomic_save_safetensors,
    atomic_write_bytes,
    load_safetensors,
    sha256_file,
    torch_load_safe,
)
from rzero.utils.seeding import (
    image_generators,
    image_seed,
    make_generator,
    randn_per_image,
)
from rzero.utils.stats import StatsLogger, read_jsonl

# ------------------------------------------------------------------ seeding


def test_make_generator_reproducible() -> None:
    a = torch.randn(5, generator=make_generator(11))
    b = torch.randn(5, generator=make_generator(11))
    c = torch.randn(5, generator=make_generator(12))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_image_seed_stable_and_63_bit() -> None:
    # Pinned value: must never change across Python versions or processes.
    digest = hashlib.sha256(b"rzero-image:0:0").digest()
    assert image_seed(0, 0) == int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)
    seeds = {image_seed(b, i) for b in range(3) for i in range(50)}
    assert len(seeds) == 150
    assert all(0 <= s < 2**63 for s in seeds)
    assert image_seed(1, 2) != image_seed(2, 1)


def test_image_generators_match_image_seed() -> None:
    gens = image_generators(9, [4, 7])
    assert [g.initial_seed() for g in gens] == [image_seed(9, 4), image_seed(9, 7)]


def test_randn_per_image_independent_of_batch_composition() -> None:
    full = randn_per_image((2, 3), 42, list(range(6)))
    assert full.shape == (6, 2, 3)
    # Same image indices, split differently and reordered, give the same rows.
    part_a = randn_per_image((2, 3), 42, [0, 1, 2])
    part_b = randn_per_image((2, 3), 42, [5, 3, 4])
    assert torch.equal(part_a, full[:3])
    assert torch.equal(part_b, full[[5, 3, 4]])
    single = randn_per_image((2, 3), 42, [4])
    assert torch.equal(single[0], full[4])
    # Different images and different base seeds get different noise.
    assert not torch.equal(full[0], full[1])
    assert not torch.equal(randn_per_image((2, 3), 43, [0])[0], full[0])


def test_randn_per_image_dtype_and_empty() -> None:
    half = randn_per_image((4,), 1, [0, 1], dtype=torch.float16)
    full = randn_per_image((4,), 1, [0, 1])
    assert half.dtype == torch.float16
    assert torch.equal(half, full.to(torch.float16))
    empty = randn_per_image((4,), 1, [])
    assert empty.shape == (0, 4)


# ------------------------------------------------------------------ io


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "nested" / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_safetensors_round_trip(tmp_path: Path) -> None:
    tensors = {
        "w": torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # non-contiguous
        "b": torch.tensor([1, 2], dtype=torch.int64),
    }
    path = tmp_path / "a.safetensors"
    atomic_save_safetensors(tensors, path, metadata={"version": "1"})
    loaded = load_safetensors(path)
    assert set(loaded) == {"w", "b"}
    assert torch.equal(loaded["w"], tensors["w"])
    assert torch.equal(loaded["b"], tensors["b"])
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_load_safetensors_missing(tmp_path: Path) -> None:
    with pytest.raises(AssetError) as exc:
        load_safetensors(tmp_path / "none.safetensors")
    msg = str(exc.value)
    assert "\n" not in msg and "not found" in msg and "rzero world build" in msg


def test_load_safetensors_truncated(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    atomic_save_safetensors({"x": torch.ones(64)}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(AssetError) as exc:
        load_safetensors(path)
    msg = str(exc.value)
    assert "\n" not in msg and "corrupt or truncated" in msg and str(path) in msg


def test_load_safetensors_garbage(tmp_path: Path) -> None:
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x00\x01garbage")
    with pytest.raises(AssetError, match="corrupt or truncated"):
        load_safetensors(path)


class _Payload:
    """A custom class: unpickling it needs arbitrary code, which must be refused."""

    def __init__(self) -> None:
        self.x = 1


def test_torch_load_safe_accepts_tensors(tmp_path: Path) -> None:
    path = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(3), "n": 2}, path)
    out = torch_load_safe(path)
    assert torch.equal(out["w"], torch.ones(3)) and out["n"] == 2


def test_torch_load_safe_refuses_custom_objects(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"obj": _Payload()}, path)
    with pytest.raises(AssetError) as exc:
        torch_load_safe(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith(f"refusing to load '{path}': not loadable with weights_only=True")
    assert "_Payload" in msg  # names the rejected class, not torch's whole essay


def test_torch_load_safe_missing(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match="not found"):
        torch_load_safe(tmp_path / "none.pt")


# ------------------------------------------------------------------ stats


def test_stats_logger_writes_jsonl_and_console(tmp_path: Path, capsys) -> None:
    path = tmp_path / "logs" / "m.jsonl"
    with StatsLogger(path) as log:
        log.log(120, {"loss": torch.tensor(0.12341), "reward_clip": 0.56})
        log.log(121, {"loss": float("nan"), "lr": 1e-5, "n": 3})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "step 120 | loss 0.1234 | reward_clip 0.5600"
    assert out[1] == "step 121 | loss nan | lr 1.000e-05 | n 3"
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    # Strict JSON: NaN is not allowed by the standard.
    first = json.loads(lines[0], parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    second = json.loads(lines[1], parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert first["step"] == 120 and math.isclose(first["loss"], 0.12341, rel_tol=1e-6)
    assert isinstance(first["time"], float)
    assert second["loss"] is None and second["n"] == 3
    assert read_jsonl(path) == [first, second]


def test_stats_logger_appends_and_no_console(tmp_path: Path, capsys) -> None:
    path = tmp_path / "m.jsonl"
    for step in (1, 2):
        with StatsLogger(path, console=False) as log:
            log.log(step, {"a": 1.0})
    assert capsys.readouterr().out == ""
    assert [r["step"] for r in read_jsonl(path)] == [1, 2]


def test_stats_logger_rejects_bad_metrics(tmp_path: Path) -> None:
    with StatsLogger(None, console=False) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.log(0, {"step": 1.0})
        with pytest.raises(ValueError, match="2 elements"):
            log.log(0, {"v": torch.ones(2)})
    with pytest.raises(RuntimeError):
        log.log(1, {"a": 1.0})


def test_read_jsonl_skips_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    assert read_jsonl(path) == [{"step": 1}, {"step": 2}]
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_missing_tensorboard_warns_once(tmp_path: Path, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):  # type: ignore[no-untyped-def]
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(stats_mod, "_warned_no_tensorboard", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            with StatsLogger(None, console=False, tensorboard_dir=tmp_path / "tb") as log:
                log.log(0, {"a": 1.0})
    assert sum("tensorboard" in str(w.message) for w in caught) == 1
