"""Metric logging to a JSONL file, the console and (optionally) TensorBoard."""

from __future__ import annotations

import json
import math
import sys
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

__all__ = ["StatsLogger", "read_jsonl"]

_RESERVED = ("step", "time")
_warned_no_tensorboard = False


def _to_number(name: str, value: Any) -> float | int | bool:
    """Plain Python number from a float/int/bool/0-d tensor or numpy scalar."""
    if isinstance(value, (bool, int, float)):
        return value
    if hasattr(value, "numel") and value.numel() != 1:
        raise ValueError(f"metric '{name}' is a tensor with {value.numel()} elements; log a scalar")
    if hasattr(value, "item"):
        return float(value.item())
    raise TypeError(f"metric '{name}' has unsupported type {type(value).__name__}")


def _fmt(value: float | int | bool) -> str:
    if isinstance(value, (bool, int)):
        return str(value)
    if value == 0 or (math.isfinite(value) and 1e-3 <= abs(value) < 1e6):
        return f"{value:.4f}"
    return f"{value:.3e}"  # keeps tiny values such as learning rates readable


class StatsLogger:
    """Appends one JSON object per ``log`` call and echoes a compact console line.

    Non-finite floats are written as ``null`` so every line stays strict JSON.
    TensorBoard is used only when ``tensorboard_dir`` is given and importable.
    """

    def __init__(
        self,
        path_jsonl: str | Path | None,
        console: bool = True,
        tensorboard_dir: str | Path | None = None,
    ) -> None:
        self._file: TextIO | None = None
        if path_jsonl is not None:
            p = Path(path_jsonl)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(p, "a", encoding="utf-8")  # append: resumed runs keep history
        self._console = console
        self._writer: Any = None
        self._closed = False
        if tensorboard_dir is not None:
            self._writer = _open_tensorboard(tensorboard_dir)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record ``metrics`` for ``step`` (tensors become floats) and flush."""
        if self._closed:
            raise RuntimeError("StatsLogger.log called after close()")
        values: dict[str, float | int | bool] = {}
        for name, raw in metrics.items():
            if name in _RESERVED:
                raise ValueError(f"metric name '{name}' is reserved; rename it")
            values[name] = _to_number(name, raw)
        if self._file is not None:
            record: dict[str, Any] = {"step": int(step), "time": time.time()}
            for name, v in values.items():
                finite = not isinstance(v, float) or math.isfinite(v)
                record[name] = v if finite else None
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
            self._file.flush()
        if self._console:
            parts = [f"step {int(step)}"] + [f"{k} {_fmt(v)}" for k, v in values.items()]
            print(" | ".join(parts), file=sys.stdout, flush=True)
        if self._writer is not None:
            for name, v in values.items():
                self._writer.add_scalar(name, float(v), int(step))
            self._writer.flush()

    def close(self) -> None:
        """Close the JSONL file and TensorBoard writer; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._file is not None:
            self._file.close()
        if self._writer is not None:
            self._writer.close()

    def __enter__(self) -> StatsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _open_tensorboard(log_dir: str | Path) -> Any:
    """A SummaryWriter, or None (with one warning per process) if tensorboard is absent."""
    global _warned_no_tensorboard
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        if not _warned_no_tensorboard:
            warnings.warn(
                "tensorboard is not installed; metrics go to the JSONL file only "
                "(pip install tensorboard to enable it)",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_no_tensorboard = True
        return None
    return SummaryWriter(log_dir=str(log_dir))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL metrics file; an incomplete last line (crash mid-write) is skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not valid JSON ({exc.msg})") from exc
    return records
