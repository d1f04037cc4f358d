"""Generic typed config machinery: YAML files + dotted overrides -> validated dataclasses."""

from rzero.config.io import (
    ConfigError,
    apply_overrides,
    format_config,
    from_dict,
    load_config,
    parse_override,
    save_config,
    to_dict,
)

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
