"""The machinery under :mod:`adaptreid.config`: finding a preset, reading YAML with ``_base_``
inheritance, dotted overrides, and checking one value against its field's type (a
``Literal[...]`` field's value against its choices, with the closest one named).

Nothing here knows the config's sections; :mod:`adaptreid.config` builds the typed objects.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

__all__ = ["PACKAGE_CONFIG_DIR", "resolve_config_path"]

PACKAGE_CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def resolve_config_path(path: str | Path) -> Path:
    """A config path as given, or else relative to the shipped ``configs/`` folder."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = PACKAGE_CONFIG_DIR / p
    if shipped.is_file():
        return shipped
    hint = ""
    if PACKAGE_CONFIG_DIR.is_dir():
        names = sorted(
            str(f.relative_to(PACKAGE_CONFIG_DIR)) for f in PACKAGE_CONFIG_DIR.rglob("*.yaml")
        )
        close = difflib.get_close_matches(str(path), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else f" Presets: {', '.join(names)}"
    raise ConfigError(f"config file {str(path)!r} not found.{hint}")


def _load_yaml_tree(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ inheritance loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: dict[str, Any] = {}
    for base in bases:
        merged = _deep_merge(merged, _load_yaml_tree(path.parent / base, seen + (path,)))
    return _deep_merge(merged, data)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.sub=value")
    key, text = item.split("=", 1)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        nxt = d.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {key!r}: {p!r} is a value, not a section")
        d = nxt
    d[parts[-1]] = value


def _check_value(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _check_value(key, a, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        return [_check_value(f"{key}[{i}]", inner, v) for i, v in enumerate(value)]
    if origin is Literal:
        return _check_choice(key, typing.get_args(tp), value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads 3.5e-4 as a string (no dot before 'e')
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    return value


def _check_choice(key: str, choices: tuple[Any, ...], value: Any) -> Any:
    """``value`` if it is one of ``choices`` (a string matching one but for its case gives that
    one), else an error naming the key, the value, the valid values and the closest one."""
    lower = {str(c).lower(): c for c in choices}
    if value in choices or (isinstance(value, str) and value.lower() in lower):
        return lower[str(value).lower()]
    valid = ", ".join(repr(c) for c in choices)
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"config key {key!r} must be one of {valid}; got {value!r}.{hint}")
