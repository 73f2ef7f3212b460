"""Validate an ml_collections ConfigDict once into frozen, typed dataclasses.

Config files hold every default; this module only checks them. An unknown key, a missing key
or a value of the wrong type is an error that names the dotted key (`config.rl.beta`), raised
before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A configuration value that cannot be used; the message names the dotted key."""


def _label(class_name: str) -> str:
  """'KLEstimator' -> 'KL estimator': a class name as the words an error message uses."""
  words = re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]+$|[A-Z][a-z0-9]*", class_name)
  return " ".join(w if w.isupper() and len(w) > 1 else w.lower() for w in words)


class Choice(enum.Enum):
  """An enum whose members a config names by value ('k3', 'dr_grpo').

  `parse` is the one place such a string becomes a member; its error names the kind (the
  class name in words) and lists every accepted string. A subclass may accept other names
  for its members by overriding `aliases`.
  """

  @classmethod
  def aliases(cls) -> dict[str, Any]:
    return {}

  @classmethod
  def parse(cls, name: str) -> Any:
    alias = cls.aliases()
    if name in alias:
      return alias[name]
    try:
      return cls(name)
    except ValueError as e:
      raise ValueError(f"{_label(cls.__name__)} {name!r}; expected one of"
                       f" {[m.value for m in cls] + sorted(alias)}") from e


def _as_mapping(cd: Any) -> Mapping[str, Any]:
  if hasattr(cd, "to_dict"):
    return cd.to_dict()
  if isinstance(cd, Mapping):
    return cd
  raise ConfigError(f"expected a ConfigDict or mapping, got {type(cd).__name__}")


def _check_value(value: Any, hint: Any, key: str) -> Any:
  origin = typing.get_origin(hint)
  if hint is Any:
    return value
  if origin in (typing.Union, types.UnionType):
    errors = []
    for arm in typing.get_args(hint):
      if arm is type(None):
        if value is None:
          return None
        continue
      try:
        return _check_value(value, arm, key)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{key}: {value!r} matches none of {hint}")
  if origin is typing.Literal:
    if value not in typing.get_args(hint):
      raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(hint))}")
    return value
  if origin in (tuple, list):
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"{key}: expected a sequence, got {type(value).__name__} {value!r}")
    args = typing.get_args(hint)
    item = args[0] if args else Any
    return tuple(_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value))
  if origin in (dict, Mapping) or hint in (dict, Mapping):
    if not isinstance(value, Mapping):
      raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return dict(value)
  if dataclasses.is_dataclass(hint):
    return build(hint, value, key)
  if hint is float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    return float(value)
  if hint is int:
    if isinstance(value, bool) or not isinstance(value, int):
      raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    return value
  if hint is bool:
    if not isinstance(value, bool):
      raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
    return value
  if hint is str:
    if not isinstance(value, str):
      raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    return value
  return value


def require_at_least_one(section: Any, names: Sequence[str], key: str) -> None:
  """ConfigError naming `key.name` for the first of `names` whose value is below 1."""
  for name in names:
    if getattr(section, name) < 1:
      raise ConfigError(f"{key}.{name}: must be >= 1, got {getattr(section, name)}")


def build(cls: type[T], cd: Any, key: str = "config") -> T:
  """Builds dataclass `cls` from a ConfigDict section, checking keys and types.

  Args:
    cls: a dataclass whose fields name every allowed key.
    cd: the ConfigDict (or mapping) section.
    key: dotted path of the section, for messages.

  Returns:
    An instance of `cls`; `cd` itself when it already is one (a section validated earlier).

  Raises:
    ConfigError: unknown key, missing key or wrong type, naming the dotted key.
  """
  if isinstance(cd, cls):
    return cd
  values = _as_mapping(cd)
  hints = typing.get_type_hints(cls)
  names = [f.name for f in dataclasses.fields(cls) if f.init]
  unknown = sorted(set(values) - set(names))
  if unknown:
    raise ConfigError(f"{key}.{unknown[0]}: unknown key (known keys of {key}:"
                      f" {', '.join(sorted(names))})")
  kwargs = {}
  for f in dataclasses.fields(cls):
    if not f.init:
      continue
    if f.name not in values:
      has_default = (f.default is not dataclasses.MISSING
                     or f.default_factory is not dataclasses.MISSING)
      if has_default:
        continue
      raise ConfigError(f"{key}.{f.name}: missing required key")
    kwargs[f.name] = _check_value(values[f.name], hints[f.name], f"{key}.{f.name}")
  try:
    return cls(**kwargs)
  except ConfigError:
    raise
  except (TypeError, ValueError) as e:
    raise ConfigError(f"{key}: {e}") from e
