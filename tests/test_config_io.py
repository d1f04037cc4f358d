"""Tests for the generic dataclass config machinery in rzero.config."""

from __future__ import annotations

import json
import keyword
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rzero.config import (
    ConfigError,
    apply_overrides,
    format_config,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    kind: Literal["adam", "sgd"] = "adam"

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Train:
    batch_size: int = 4
    use_ema: bool = False
    name: str = "run"
    milestones: list[int] = field(default_factory=lambda: [10, 20])
    resume: Optional[str] = None
    weights: dict[str, float] = field(default_factory=dict)


@dataclass
class Root:
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)
    extra: Optional[Optim] = None
    seed: int = 0


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------ from_dict


def test_defaults_when_empty() -> None:
    assert from_dict(Root, {}) == Root()


def test_nested_values_and_coercion() -> None:
    cfg = from_dict(
        Root,
        {
            "optim": {"lr": 2, "betas": [0.5, 0.6], "kind": "sgd"},
            "train": {"milestones": [1, 2, 3], "weights": {"clip": 1, "hps": 0.5}},
            "seed": 7,
        },
    )
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.5, 0.6)
    assert cfg.optim.kind == "sgd"
    assert cfg.train.milestones == [1, 2, 3]
    assert cfg.train.weights == {"clip": 1.0, "hps": 0.5}
    assert cfg.train.batch_size == 4  # untouched default
    assert cfg.seed == 7


def test_unknown_key_suggests_close_match() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"optim": {"lrr": 0.1}})
    assert one_line(exc) == "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"


def test_unknown_key_without_match_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"zzzz": 1})
    msg = one_line(exc)
    assert "'zzzz'" in msg and "optim" in msg and "train" in msg


def test_str_for_int_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"train": {"batch_size": "abc"}})
    assert "config key 'train.batch_size' expects int, got 'abc'" in one_line(exc)


def test_int_for_bool_rejected() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"train": {"use_ema": 1}})
    msg = one_line(exc)
    assert "'train.use_ema' expects bool" in msg and "true or false" in msg


def test_bool_for_int_and_float_rejected() -> None:
    with pytest.raises(ConfigError, match="'train.batch_size' expects int, got True"):
        from_dict(Root, {"train": {"batch_size": True}})
    with pytest.raises(ConfigError, match="'optim.lr' expects float, got False"):
        from_dict(Root, {"optim": {"lr": False}})


def test_int_accepts_whole_float_only() -> None:
    assert from_dict(Root, {"seed": 3e5}).seed == 300000
    with pytest.raises(ConfigError, match="'seed' expects int"):
        from_dict(Root, {"seed": 1.5})


def test_str_field_rejects_number_with_quote_hint() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"train": {"name": 1}})
    assert "quote" in one_line(exc)


def test_literal_violation() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"optim": {"kind": "adamw"}})
    msg = one_line(exc)
    assert "'optim.kind' expects one of 'adam', 'sgd', got 'adamw'" in msg
    assert "did you mean 'adam'" in msg


def test_optional_accepts_none_and_value_and_rejects_wrong_type() -> None:
    assert from_dict(Root, {"train": {"resume": None}}).train.resume is None
    assert from_dict(Root, {"train": {"resume": "ckpt.pt"}}).train.resume == "ckpt.pt"
    with pytest.raises(ConfigError, match="'train.resume' expects str or None, got 3"):
        from_dict(Root, {"train": {"resume": 3}})


def test_optional_nested_dataclass_reports_inner_key() -> None:
    assert from_dict(Root, {"extra": {"lr": 0.5}}).extra == Optim(lr=0.5)
    with pytest.raises(ConfigError, match=r"unknown config key 'extra\.lrr'"):
        from_dict(Root, {"extra": {"lrr": 0.5}})


def test_list_and_tuple_item_errors_name_index() -> None:
    with pytest.raises(ConfigError, match=r"'train\.milestones\[1\]' expects int"):
        from_dict(Root, {"train": {"milestones": [1, "x"]}})
    with pytest.raises(ConfigError, match=r"'optim\.betas' expects tuple\[float, \.\.\.\]"):
        from_dict(Root, {"optim": {"betas": 0.9}})


def test_dict_values_checked() -> None:
    with pytest.raises(ConfigError, match=r"'train\.weights\.clip' expects float"):
        from_dict(Root, {"train": {"weights": {"clip": "high"}}})


def test_nested_must_be_mapping() -> None:
    with pytest.raises(ConfigError, match="'optim' expects a mapping"):
        from_dict(Root, {"optim": 3})


def test_post_init_error_wrapped_with_prefix() -> None:
    with pytest.raises(ConfigError) as exc:
        from_dict(Root, {"optim": {"lr": -1}})
    assert one_line(exc) == "invalid config 'optim': lr must be > 0, got -1.0"
    assert isinstance(exc.value.__cause__, ValueError)


def test_post_init_multiline_message_becomes_one_line() -> None:
    @dataclass
    class Picky:
        x: int = 0

        def __post_init__(self) -> None:
            if self.x:
                raise ValueError("bad x\nset x to 0")

    with pytest.raises(ConfigError) as exc:
        from_dict(Picky, {"x": 1})
    assert one_line(exc) == "invalid config: bad x set x to 0"


def test_missing_required_key() -> None:
    @dataclass
    class Needs:
        path: str

    with pytest.raises(ConfigError, match="missing required config key 'path'"):
        from_dict(Needs, {})


def test_round_trip_to_dict_from_dict() -> None:
    cfg = from_dict(
        Root,
        {
            "optim": {"lr": 3e-4, "betas": [0.1, 0.2, 0.3]},
            "train": {"resume": "x", "weights": {"a": 2.5}, "use_ema": True},
            "extra": {"kind": "sgd"},
        },
    )
    plain = to_dict(cfg)
    assert plain["optim"]["betas"] == [0.1, 0.2, 0.3]  # tuples become lists
    # Must be plain YAML: safe_dump refuses anything exotic.
    assert yaml.safe_load(yaml.safe_dump(plain)) == plain
    assert from_dict(Root, plain) == cfg


# ------------------------------------------------------------------ overrides


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("optim.lr=1e-4", "optim.lr", 1e-4),
        ("optim.lr=3e5", "optim.lr", 3e5),
        ("optim.lr=-2.5E+3", "optim.lr", -2500.0),
        ("optim.lr=0.5", "optim.lr", 0.5),
        ("seed=12", "seed", 12),
        ("train.use_ema=true", "train.use_ema", True),
        ("train.resume=null", "train.resume", None),
        ("train.name=", "train.name", ""),
        ("train.name='001'", "train.name", "001"),
        ("train.name=a=b", "train.name", "a=b"),
        ("train.milestones=[1, 2e3]", "train.milestones", [1, 2000.0]),
    ],
)
def test_parse_override(text: str, key: str, value: object) -> None:
    got_key, got = parse_override(text)
    assert got_key == key
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", ["\x85", " \x85", "x\x85y", "a\u2028b", "p\u2029"])
def test_format_config_round_trips_yaml_line_breaks(text: str) -> None:
    """NEL / LS / PS fold to spaces in plain and single-quoted YAML scalars (found by hypothesis)."""
    assert yaml.safe_load(format_config({"s": text})) == {"s": text}


def test_bracketed_key_reaches_a_name_with_dots() -> None:
    """Reward names such as hps-v2.1 hold a dot; brackets keep them one key part."""
    from rzero.config import load_config
    from rzero.config.schema import TrainConfig

    cfg = load_config(TrainConfig, None, ["reward.names=[hps-v2.1]", "reward.options[hps-v2.1].path=/w/hps.pt",
                                          "reward.options[hps-v2.1].dtype=bfloat16"])
    assert cfg.reward.options == {"hps-v2.1": {"path": "/w/hps.pt", "dtype": "bfloat16"}}
    for bad in ("reward.options[].path=1", "reward.options[a]b=1", "reward..x=1", "reward.[a]=1"):
        with pytest.raises(ConfigError, match="brackets"):
            parse_override(bad)


def test_parse_override_errors() -> None:
    with pytest.raises(ConfigError) as exc:
        parse_override("optim.lr")
    assert "no '='" in one_line(exc)
    with pytest.raises(ConfigError, match="invalid key"):
        parse_override("optim..lr=1")
    with pytest.raises(ConfigError, match="unparsable value"):
        parse_override("train.name=[1, 2")


def test_apply_overrides_creates_and_does_not_mutate() -> None:
    raw = {"optim": {"lr": 0.1}}
    out = apply_overrides(raw, ["optim.kind=sgd", "train.batch_size=8", "optim.lr=1e-4"])
    assert raw == {"optim": {"lr": 0.1}}
    assert out == {"optim": {"lr": 1e-4, "kind": "sgd"}, "train": {"batch_size": 8}}
    cfg = from_dict(Root, out)
    assert cfg.optim.lr == 1e-4 and cfg.train.batch_size == 8


def test_override_of_unknown_key_caught_by_from_dict() -> None:
    data = apply_overrides({}, ["optim.lrr=1e-4"])
    with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
        from_dict(Root, data)


def test_override_into_none_and_through_scalar() -> None:
    assert apply_overrides({"extra": None}, ["extra.lr=2"]) == {"extra": {"lr": 2}}
    with pytest.raises(ConfigError, match="'seed' holds 0, not a mapping"):
        apply_overrides({"seed": 0}, ["seed.x=1"])


# ------------------------------------------------------------------ files


def test_load_config_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-4\ntrain:\n  batch_size: 2\n", encoding="utf-8")
    cfg = load_config(Root, path, ["train.batch_size=16"])
    assert cfg.optim.lr == 1e-4  # a YAML 1.1 loader alone would read the string '1e-4'
    assert cfg.train.batch_size == 16


def test_load_config_none_uses_defaults() -> None:
    assert load_config(Root, None) == Root()
    assert load_config(Root, None, ["seed=5"]).seed == 5


def test_load_config_empty_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert load_config(Root, path) == Root()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc:
        load_config(Root, path)
    msg = one_line(exc)
    assert str(path) in msg and "not found" in msg


def test_malformed_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  lr: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(Root, path)
    msg = one_line(exc)
    assert str(path) in msg and "not valid YAML" in msg and "line" in msg


def test_duplicate_key_rejected(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("seed: 1\nseed: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(Root, path)


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("train:\n  name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as exc:
        load_config(Root, path)
    msg = one_line(exc)
    assert str(path) in msg and "UTF-8" in msg and "0xe9" in msg


def test_top_level_list(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_config(Root, path)
    msg = one_line(exc)
    assert str(path) in msg and "mapping" in msg and "list" in msg


def test_save_and_reload(tmp_path: Path) -> None:
    cfg = from_dict(Root, {"optim": {"lr": 1e-10}, "train": {"name": "true", "resume": "r"}})
    path = tmp_path / "sub" / "saved.yaml"
    save_config(cfg, path)
    assert load_config(Root, path) == cfg
    assert [p.name for p in path.parent.iterdir()] == ["saved.yaml"]  # no temp files left


def test_format_config_keeps_field_order() -> None:
    text = format_config(Root())
    assert text.index("optim:") < text.index("train:") < text.index("seed:")
    assert yaml.safe_load(text) == to_dict(Root())


# ------------------------------------------------------------------ properties

_ident = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True).filter(
    lambda s: not keyword.iskeyword(s)
)
_text = st.text(st.characters(blacklist_categories=("Cs",), max_codepoint=0xFFFF), max_size=20)
_scalar = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.booleans(),
    _text,
)


def _fmt(value: object) -> str:
    """Render a value as override text; strings are JSON-quoted (valid YAML too)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


@settings(max_examples=50, deadline=None)
@given(keys=st.lists(_ident, min_size=1, max_size=4), value=_scalar)
def test_property_override_sets_value_at_dotted_key(keys: list[str], value: object) -> None:
    data = apply_overrides({}, [".".join(keys) + "=" + _fmt(value)])
    node: object = data
    for k in keys:
        assert isinstance(node, dict)
        node = node[k]
    assert node == value and type(node) is type(value)


@dataclass
class Leaf:
    i: int = 0
    f: float = 0.0
    b: bool = False
    s: str = ""


@dataclass
class Tree:
    leaf: Leaf = field(default_factory=Leaf)


@settings(max_examples=50, deadline=None)
@given(
    i=st.integers(-(2**40), 2**40),
    f=st.floats(allow_nan=False, allow_infinity=False, width=64),
    b=st.booleans(),
    s=_text,
)
def test_property_overrides_round_trip_through_dataclass(
    i: int, f: float, b: bool, s: str
) -> None:
    overrides = [f"leaf.i={_fmt(i)}", f"leaf.f={_fmt(f)}", f"leaf.b={_fmt(b)}", f"leaf.s={_fmt(s)}"]
    cfg = from_dict(Tree, apply_overrides({}, overrides))
    assert cfg.leaf == Leaf(i=i, f=f, b=b, s=s)
    assert from_dict(Tree, to_dict(cfg)) == cfg
    assert from_dict(Tree, yaml.safe_load(format_config(cfg))) == cfg
