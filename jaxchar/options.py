"""Options defined once: a dataclass field carries an option's default, help and allowed values,
and both the absl flags and the frozen config are built from it (`define_flags`, `from_flags`).
"""

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from typing import Any

from absl import flags

from jaxchar.errors import UserError

# Flags defined here belong to the entry point that asks for them (its --helpshort lists them).
flags.disclaim_key_flags()


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
           flag: str | None = None, parse: Callable[[Any], Any] | None = None,
           repeatable: bool = False, old_names: tuple[str, ...] = ()) -> Any:
  """A dataclass field that is also a command-line flag.

  choices: the allowed values (an enum flag, and checked by `check_choices`); flag: the flag's
  name when it differs from the field's; parse: turns the flag's value into the field's;
  repeatable: a tuple of strings given as --flag=a --flag=b (each may hold commas); old_names:
  earlier names that still set it (flagfiles keep working), with a note saying the new one."""
  return dataclasses.field(default=default, metadata={
      "help": help, "choices": choices, "flag": flag or None, "parse": parse,
      "repeatable": repeatable, "old_names": old_names})


def option_fields(cls: type) -> list[dataclasses.Field]:
  """The fields of dataclass `cls` that are options."""
  return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def flag_name(field: dataclasses.Field) -> str:
  return field.metadata["flag"] or field.name


def _value_type(cls: type, field: dataclasses.Field) -> type:
  """bool, int, float, str or tuple, from the field's annotation (`X | None` counts as X)."""
  hint = typing.get_type_hints(cls)[field.name]
  if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
    hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
  return typing.get_origin(hint) or hint


def define_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines one absl flag per option field of `cls`, with its default and help."""
  for field in option_fields(cls):
    name, default, help_text = flag_name(field), field.default, field.metadata["help"]
    kind = _value_type(cls, field)
    if field.metadata.get("repeatable"):
      flags.DEFINE_multi_string(name, list(default), help_text, flag_values=flag_values)
    elif field.metadata["choices"]:
      flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text,
                        flag_values=flag_values)
    elif kind is bool:
      flags.DEFINE_bool(name, default, help_text, flag_values=flag_values)
    elif kind is int:
      flags.DEFINE_integer(name, default, help_text, flag_values=flag_values)
    elif kind is float:
      flags.DEFINE_float(name, default, help_text, flag_values=flag_values)
    elif kind in (tuple, list):
      flags.DEFINE_list(name, [str(v) for v in default], help_text, flag_values=flag_values)
    elif kind is str:
      flags.DEFINE_string(name, default, help_text, flag_values=flag_values)
    else:
      raise TypeError(f"option {cls.__name__}.{field.name} has unsupported type {kind}")
    for old in field.metadata.get("old_names", ()):
      flags.DEFINE_alias(old, name, flag_values=flag_values)


def from_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> Any:
  """An instance of `cls` with every option field taken from the parsed flags."""
  values = {}
  for field in option_fields(cls):
    for old in field.metadata.get("old_names", ()):
      if flag_values[old].present:
        print(f"note: --{old} is now called --{flag_name(field)}; read --{old}="
              f"{flag_values[old].value} as --{flag_name(field)}={flag_values[old].value}. "
              "Rename it in your flagfile or command.", file=sys.stderr, flush=True)
    value = flag_values[flag_name(field)].value
    if field.metadata["parse"] is not None:
      value = field.metadata["parse"](value)
    elif isinstance(value, list):
      value = tuple(value)
    values[field.name] = value
  return cls(**values)


def check_choices(config: Any) -> None:
  """Raises UserError for an option whose value is not one of its choices."""
  for field in option_fields(type(config)):
    allowed = field.metadata["choices"]
    if allowed and getattr(config, field.name) not in allowed:
      raise UserError(f"--{flag_name(field)}={getattr(config, field.name)} must be one of "
                      f"{', '.join(allowed)}.")
