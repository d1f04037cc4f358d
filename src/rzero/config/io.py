"""Typed loading, validation, overriding and saving of nested dataclass configs.

Everything here is generic over any ``@dataclass`` tree: the schema lives elsewhere.
All user-facing failures raise :class:`ConfigError` with a single-line message that
names the dotted key and says how to fix it.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import enum
import functools
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rzero.utils.io import atomic_write_bytes, shorten, shorten_line

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "apply_overrides",
    "format_config",
    "from_dict",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
]


class ConfigError(ValueError):
    """A user-fixable configuration problem; the message is always a single, bounded line."""

    def __init__(self, message: str) -> None:
        # One line (the CLI's error format), and no echo of a huge value: long tokens are cut.
        super().__init__(shorten_line(message))


# --------------------------------------------------------------------------- YAML

# YAML 1.1 (PyYAML) only reads floats with a dot, so ``1e-4`` would load as a str.
# Learning rates are written exactly like that, so we teach the loader those forms.
_EXP_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` as a float and rejects duplicate mapping keys and aliases.

    Aliases (``*name``, and so ``<<: *name`` merges) are refused outright: nested aliases
    expand exponentially (a config of a few hundred bytes can stand for billions of nodes,
    the "billion laughs"), and no rzero config needs them.
    """

    MAX_DEPTH = 64  # nesting levels; deeper input would exhaust Python's recursion limit

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"alias *{shorten(str(event.anchor), 40)} is not allowed in an rzero config "
                "(write the value out in full)", event.start_mark)
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > self.MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {self.MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        # PyYAML silently keeps the last duplicate key, which hides typos in configs.
        self.flatten_mapping(node)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable keys are reported by the base implementation
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXP_FLOAT, list("-+0123456789."))


def _yaml_load(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader derives from SafeLoader
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise yaml.YAMLError(shorten(str(exc).split(";")[0], 120)) from None


def load_yaml_text(text: str) -> Any:
    """Parse YAML text the way configs are parsed (safe, no aliases, bounded nesting).

    For YAML that did not come from the user directly (a run folder's config.yaml): raises
    ``yaml.YAMLError`` on anything the config loader refuses.
    """
    return _yaml_load(text)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One-line description of a YAML error, with line/column where PyYAML knows them."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return str(problem)


# ------------------------------------------------------------------- type checks


def _show(value: Any) -> str:
    if isinstance(value, (list, dict)) and len(value) > 20:
        return f"a {type(value).__name__} of {len(value)} items"  # repr of a huge container is slow
    return shorten(repr(value), 60)


def _type_name(tp: Any) -> str:
    """Human-readable name of a type annotation for error messages."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is Literal:
        return "one of " + ", ".join(_show(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(tp, "__name__", str(tp))


def _wrong_type(key: str, tp: Any, value: Any) -> ConfigError:
    expected = _type_name(tp)
    arms = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (Union, types.UnionType) and len(arms) == 1:
        tp = arms[0]  # pick the hint for X in Optional[X]
    if tp is bool:
        hint = "write true or false"
    elif tp in (int, float) and isinstance(value, bool):
        hint = "write a number, not true/false"
    elif tp is str and value is not None and not isinstance(value, (list, dict)):
        hint = "quote the value to keep it a string"
    else:
        hint = "fix it in the config file or pass an override like key=VALUE"
    return ConfigError(
        f"config key '{key}' expects {expected}, got {_show(value)} "
        f"({type(value).__name__}); {hint}"
    )


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in canonical form."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _wrong_type(key, tp, value)
        return from_dict(tp, value, prefix=key)

    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:
            # Optional[X]: for containers X's own error names the precise nested key;
            # for scalars say that None is allowed too.
            try:
                return _coerce(arms[0], value, key)
            except ConfigError:
                if value is None or isinstance(value, (Mapping, list, tuple)):
                    raise
                raise _wrong_type(key, tp, value) from None
        for arm in arms:
            try:
                return _coerce(arm, value, key)
            except ConfigError:
                continue
        raise _wrong_type(key, tp, value)

    if origin is Literal:
        # Compare type too, otherwise True would match the choice 1.
        if any(type(value) is type(c) and value == c for c in args):
            return value
        close = ""
        if isinstance(value, str):
            strs = [c for c in args if isinstance(c, str)]
            match = difflib.get_close_matches(value, strs, n=1)
            if match:
                close = f" (did you mean {match[0]!r}?)"
        raise ConfigError(
            f"config key '{key}' expects {_type_name(tp)}, got {_show(value)}{close}"
        )

    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _wrong_type(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # ``steps=3e5`` parses as a float; accept it when it is a whole number.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _wrong_type(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if value != value or value in (float("inf"), float("-inf")):
                # `lr=.nan` would pass every `x > 0` check below and poison training.
                raise ConfigError(f"config key '{key}' expects a finite number, got {value}")
            return float(value)
        raise _wrong_type(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _wrong_type(key, tp, value)

    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(key, tp, value)
        if not args:
            return list(value) if (origin or tp) is list else tuple(value)
        if origin is list:
            return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(
                f"config key '{key}' expects a list of exactly {len(args)} items "
                f"({_type_name(tp)}), got {len(value)} items"
            )
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))

    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _wrong_type(key, tp, value)
        if not args:
            return dict(value)
        key_tp, val_tp = args
        out = {}
        for k, v in value.items():
            sub = _join(key, str(k))
            out[_coerce(key_tp, k, sub + " (key)")] = _coerce(val_tp, v, sub)
        return out

    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(_show(m.value) for m in tp)
            raise ConfigError(
                f"config key '{key}' expects one of {choices}, got {_show(value)}"
            ) from None
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _wrong_type(key, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _wrong_type(key, tp, value)
    raise TypeError(f"unsupported annotation {tp!r} for config key '{key}'")


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of the init fields of ``cls`` (handles string annotations)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


# ---------------------------------------------------------------- dict <-> object


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a plain nested mapping, validating every key and type.

    Missing keys take the dataclass defaults; ``prefix`` is the dotted path of ``cls``
    inside the whole config and is only used in error messages. ValueErrors raised by
    the dataclass's ``__post_init__`` are re-raised as :class:`ConfigError`.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        where = f"config key '{prefix}'" if prefix else "the config"
        raise ConfigError(
            f"{where} must be a mapping of keys ({cls.__name__}), got {_show(data)}"
        )
    ftypes = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for raw_key, value in data.items():
        name = str(raw_key)
        if name not in ftypes:
            match = difflib.get_close_matches(name, list(ftypes), n=1)
            if match:
                fix = f"did you mean '{_join(prefix, match[0])}'?"
            else:
                fix = "valid keys: " + ", ".join(sorted(ftypes))
            raise ConfigError(f"unknown config key '{_join(prefix, name)}' ({fix})")
        kwargs[name] = _coerce(ftypes[name], value, _join(prefix, name))
    for f in dataclasses.fields(cls):
        if f.init and _required(f) and f.name not in kwargs:
            key = _join(prefix, f.name)
            raise ConfigError(
                f"missing required config key '{key}'; set it in the config file "
                f"or pass {key}=VALUE"
            )
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as exc:
        where = f"invalid config '{prefix}'" if prefix else "invalid config"
        raise ConfigError(f"{where}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Convert a dataclass tree to plain YAML-safe types (tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {
            f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init
        }
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return to_dict(obj.value)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot convert {type(obj).__name__} value {_show(obj)} to a config value")


# ------------------------------------------------------------------- overrides

_KEY_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
# A key is dotted names; a name holding dots (a reward such as "hps-v2.1") goes in brackets:
# reward.options[hps-v2.1].path=/weights/HPS_v2.1_compressed.pt
_KEY_TOKEN = re.compile(r"\[([^\[\]]+)\]|(\.?)([^.\[\]]+)")


def split_key(key: str) -> list[str] | None:
    """``a.b[c.d].e`` -> ``["a", "b", "c.d", "e"]``; None when the key is malformed."""
    parts, pos = [], 0
    while pos < len(key):
        m = _KEY_TOKEN.match(key, pos)
        if m is None:
            return None
        bracketed, dot, plain = m.groups()
        if plain is not None and (bool(dot) != (pos > 0) or not _KEY_PART.match(plain)):
            return None  # a plain name needs a dot before it, except the first one
        parts.append(bracketed.strip() if bracketed is not None else plain)
        pos = m.end()
    return parts if parts and all(parts) else None


def parse_override(s: str) -> tuple[str, Any]:
    """Split ``a.b.c=value`` into the dotted key and the YAML-parsed value.

    ``1e-4``-style numbers become floats, an empty value becomes ``""`` and a quoted
    value (``name='001'``) stays a string.
    """
    if "=" not in s:
        raise ConfigError(f"override {_show(s)} has no '='; write it as dotted.key=VALUE")
    key, text = s.split("=", 1)
    key = key.strip()
    if not split_key(key):
        raise ConfigError(
            f"override {_show(s)} has an invalid key {_show(key)}; write it as dotted.key=VALUE "
            "(a name with dots goes in brackets: reward.options[hps-v2.1].path=...)"
        )
    if text.strip() == "":
        return key, ""
    try:
        value = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"override '{key}' has an unparsable value {_show(text)} ({_yaml_problem(exc)}); "
            "quote it to pass a string"
        ) from None
    return key, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a deep copy of raw config ``data`` with ``key=value`` overrides applied.

    Missing intermediate mappings are created, so misspelt keys survive until
    :func:`from_dict` reports them with a suggestion.
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        key, value = parse_override(item)
        parts = split_key(key)
        node = out
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                # A null sub-config (Optional) is replaced by a fresh mapping to fill in.
                child = node[part] = {}
            elif not isinstance(child, dict):
                parent = ".".join(parts[: depth + 1])
                raise ConfigError(
                    f"override '{key}' cannot be applied: '{parent}' holds "
                    f"{_show(child)}, not a mapping; override '{parent}' itself instead"
                )
            node = child
        node[parts[-1]] = value
    return out


# ------------------------------------------------------------------- files


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found; check the path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{path}' is a directory; pass a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"config file '{path}' cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM written by some editors
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{path}' is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at "
            f"offset {exc.start}); re-save it as UTF-8"
        ) from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file '{path}' is not valid YAML ({_yaml_problem(exc)}); fix the syntax"
        ) from None
    if data is None:
        return {}  # an empty file means "all defaults"
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{path}' must hold a mapping of keys at the top level, "
            f"got {type(data).__name__}"
        )
    return data


def load_config(
    cls: type[T], path_or_none: str | Path | None, overrides: Iterable[str] = ()
) -> T:
    """Read a YAML config file (or start from defaults when None), apply overrides, validate."""
    data = {} if path_or_none is None else _read_yaml_mapping(Path(path_or_none))
    return from_dict(cls, apply_overrides(data, overrides))


class _ConfigDumper(yaml.SafeDumper):
    """SafeDumper whose strings survive a round trip: YAML folds the line breaks NEL, LS and PS
    inside plain or single-quoted scalars, so strings holding them are double-quoted (escaped)."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_ConfigDumper.add_representer(str, _represent_str)


def format_config(obj: Any) -> str:
    """Render a config (dataclass or mapping) as YAML text in field order."""
    return yaml.dump(
        to_dict(obj), Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def save_config(obj: Any, path: str | Path) -> None:
    """Write ``obj`` as YAML to ``path`` atomically (readers never see a partial file)."""
    atomic_write_bytes(path, format_config(obj).encode("utf-8"))
