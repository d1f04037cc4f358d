"""Crash-safe file writes and defensive loading of tensor assets.

torch and safetensors are imported inside the functions so that light users of this
module (config saving, the CLI's argument parsing) do not pay torch's import time.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "AssetError",
    "atomic_save_safetensors",
    "check_run_tree",
    "atomic_write_bytes",
    "fsync_dir",
    "load_checked",
    "load_safetensors",
    "remove_tree",
    "run_file",
    "sha256_file",
    "shorten",
    "shorten_line",
    "torch_load_safe",
]


class AssetError(RuntimeError):
    """A missing, corrupt or unsafe asset file; the message is a single line."""


def _brief(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception message, shortened, for one-line error reports."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(text: str, limit: int = 60) -> str:
    """``text`` cut to at most ``limit`` characters (head + "..." + tail) for error lines."""
    if len(text) <= limit:
        return text
    head = (limit - 3) * 2 // 3
    return text[:head] + "..." + text[len(text) - (limit - 3 - head):]


def shorten_line(message: str, token_limit: int = 80, limit: int = 1000) -> str:
    """One error line: whitespace collapsed, each overlong token (an echoed value, a path) cut
    in its middle, and the whole line cut in its middle if still longer than ``limit``, so the
    problem (the start) and the fix (the end) both stay visible."""
    words = [shorten(w, token_limit) for w in message.split()]
    return shorten(" ".join(words), limit)


def _within(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def run_file(root: str | Path, path: str | Path, kind: str = "file") -> Path:
    """``path`` if it is safe to read or write as part of run folder ``root``, else AssetError.

    Safe means: resolving every symbolic link on the way ends inside ``root`` (a link may point
    elsewhere in the run folder, never out of it), and an existing target is a regular file
    (``kind="file"``) or a folder (``kind="dir"``), never a device, pipe or socket. A missing
    target is fine (it will be created). ``path`` may be relative to ``root``.
    """
    import stat

    base = Path(root).resolve()
    p = Path(path) if Path(path).is_absolute() else Path(root) / path
    real = p.resolve()
    if not _within(base, real):
        raise AssetError(f"'{shorten(str(p), 200)}' is a link that leaves the run folder '{shorten(str(root), 200)}' "
                         f"(it points to '{shorten(str(real), 200)}'); remove the link or copy the file into the "
                         "run folder")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return p
    except OSError as exc:
        raise AssetError(f"'{shorten(str(p), 200)}' cannot be inspected ({exc.strerror}); check its permissions") \
            from None
    ok = stat.S_ISDIR(mode) if kind == "dir" else stat.S_ISREG(mode)
    if not ok:
        what = "a folder" if kind == "dir" else "a regular file"
        raise AssetError(f"'{shorten(str(p), 200)}' in run folder '{shorten(str(root), 200)}' is not {what}; "
                         "move it away")
    return p


def check_run_tree(root: str | Path, max_entries: int = 200_000) -> None:
    """Refuse a run folder holding a link that leads out of it, or a device, pipe or socket.

    Called before a command reads a run folder into a report or writes into it (a resumed run
    appends to stats.jsonl and rewrites checkpoints, snapshot and samples): a file there that
    is a link to somewhere else would otherwise be read (and embedded) or written through.
    Links are not followed while walking; each one is resolved and must stay inside ``root``.
    """
    import stat

    top = Path(root)
    if not top.exists():
        return
    base = top.resolve()
    seen = 0
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            seen += 1
            if seen > max_entries:
                raise AssetError(f"run folder '{shorten(str(top), 200)}' holds more than {max_entries} entries; "
                                 "this is not a run folder of `rzero train`")
            p = Path(dirpath) / name
            try:
                mode = os.lstat(p).st_mode
            except FileNotFoundError:
                continue  # removed meanwhile (a live run rotating its checkpoints)
            if stat.S_ISLNK(mode):
                run_file(top, p, kind="dir" if p.is_dir() else "file")
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise AssetError(f"'{shorten(str(p), 200)}' in run folder '{shorten(str(top), 200)}' is a device, "
                                 "pipe or socket, not a file; move it away")


def fsync_dir(directory: str | Path) -> None:
    """fsync a directory so that renames/creations inside it survive a power loss."""
    _fsync_dir(Path(directory))


def remove_tree(path: str | Path) -> None:
    """Delete a folder so that no half-deleted copy is ever left under its name.

    It is first renamed to a hidden `.trash_<name>` sibling (atomic), then deleted: a crash
    mid-way leaves only the trash folder, which callers clean up on their next start.
    """
    import shutil

    p = Path(path)
    if not p.exists():
        return
    trash = p.with_name(f".trash_{p.name}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(p, trash)
    _fsync_dir(p.parent)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old or the new file.

    The bytes go to a temporary file in the same directory (same filesystem, so the
    rename is atomic), are fsynced, then renamed over ``path``. Parent directories
    are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def atomic_save_safetensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Serialise ``tensors`` (moved to CPU, made contiguous) to a safetensors file atomically."""
    from safetensors.torch import save

    if metadata is not None and not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise TypeError("safetensors metadata must map str to str")
    # safetensors rejects non-contiguous and device tensors; normalise instead of failing.
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    atomic_write_bytes(path, save(plain, metadata=metadata))


def _missing(path: Path) -> AssetError:
    return AssetError(
        f"asset file '{path}' not found; run `rzero world build` or pass the right path"
    )


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file onto the CPU, raising AssetError on failure."""
    from safetensors.torch import load

    p = Path(path)
    if not p.is_file():
        raise _missing(p)
    try:
        # Read the bytes instead of memory-mapping: a truncated file then fails here,
        # not later with a bus error when a tensor is touched.
        return load(p.read_bytes())
    except Exception as exc:  # safetensors raises several unrelated types
        raise AssetError(f"asset file '{p}' is corrupt or truncated ({_brief(exc)})") from exc


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 digest of a file, read in chunks so large files use little memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_load_safe(path: str | Path) -> Any:
    """``torch.load`` restricted to tensors and plain containers (``weights_only=True``).

    Anything that would need arbitrary unpickling (custom classes, code) is refused
    with an AssetError instead of being executed.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise _missing(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = _unpickle_reason(exc)
        raise AssetError(
            f"refusing to load '{p}': not loadable with weights_only=True ({reason})"
        ) from exc


def _unpickle_reason(exc: BaseException) -> str:
    """The useful clause of torch's long weights_only error (e.g. the rejected global)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # torch embeds ANSI bold codes
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return _brief(exc)
    paragraph = text.split(marker, 1)[1].strip().split("\n\n", 1)[0]
    reason = " ".join(paragraph.split()).split(". ", 1)[0].rstrip(".")
    return reason if len(reason) <= 160 else reason[:157] + "..."


def torch_save_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory, so the bytes can be written with :func:`atomic_write_bytes`."""
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def copy_weights_(targets: dict[str, Any], weights: dict[str, Any], source: str | Path) -> None:
    """Copy every tensor of ``weights`` into the same-named tensor of ``targets`` (in place).

    Names and shapes must match exactly both ways; any mismatch is a one-line AssetError
    naming ``source``, raised before anything is copied.
    """
    import torch

    unknown = sorted(set(weights) - set(targets))
    if unknown:
        raise AssetError(f"'{source}' has weights the model does not know (e.g. {unknown[0]})")
    missing = sorted(set(targets) - set(weights))
    if missing:
        raise AssetError(f"'{source}' lacks {len(missing)} tensors the model needs (e.g. {missing[0]})")
    for name, value in weights.items():
        if value.shape != targets[name].shape:
            raise AssetError(f"'{source}': tensor {name} has shape {tuple(value.shape)}, "
                             f"the model expects {tuple(targets[name].shape)}")
    with torch.no_grad():
        for name, value in weights.items():
            targets[name].copy_(value)


def load_checked(module: torch.nn.Module, state: dict[str, Any], source: str | Path,
                 ignore: tuple[str, ...] = ()) -> list[str]:
    """Load a released checkpoint's state dict into ``module``, as tolerant as the official loaders.

    Released reward and FID checkpoints carry keys the scoring network does not use (BLIP's
    pre-training heads, an Inception's aux head, buffers of newer library versions); the
    official code loads with ``strict=False``. Here unexpected keys are skipped and reported in
    one logged line, while a missing key or a wrong shape is still a one-line AssetError (a file
    of another architecture must not load half-way). Keys starting with a prefix in ``ignore``
    are dropped silently. Returns the skipped (unexpected) keys.
    """
    import logging

    state = {k: v for k, v in state.items() if not any(k.startswith(i) for i in ignore)}
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" ... ({len(keys)} in all)" if len(keys) > 3 else "")

    if missing or shape:
        parts = [f"{n} {few(ks)}" for n, ks in (("missing", missing), ("unexpected", unexpected),
                                                 ("wrong shape", shape)) if ks]
        raise AssetError(f"'{source}' does not match the expected architecture ({'; '.join(parts)})")
    if unexpected:
        logging.getLogger("rzero").warning("'%s': skipped %d key(s) the model does not use: %s",
                                           source, len(unexpected), few(unexpected))
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return unexpected
