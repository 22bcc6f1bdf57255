"""One definition per hyperparameter: help text, default and range, on the dataclass field.

The engine's frozen config dataclasses declare each field with :func:`param`; their
``__post_init__`` calls :func:`check_params`, which is the one place a value is checked
against its range or its ``Literal`` choices. The CLI derives its flags from the same fields
(:func:`add_flag`), and the API's request models, which may not import the engine, are checked
against them by ``tests/worker/test_configs.py``.
"""

from __future__ import annotations

import argparse
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from worker.engine.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric hyperparameter: ``gt``/``ge`` below, ``lt``/``le`` above."""

    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None

    def contains(self, value: float) -> bool:
        return not (
            (self.gt is not None and not value > self.gt)
            or (self.ge is not None and not value >= self.ge)
            or (self.lt is not None and not value < self.lt)
            or (self.le is not None and not value <= self.le)
        )

    def describe(self) -> str:
        """``in [0, 1)``, ``at least 1``, ``positive``..."""
        low = ("(", self.gt) if self.gt is not None else ("[", self.ge)
        high = (")", self.lt) if self.lt is not None else ("]", self.le)
        if low[1] is not None and high[1] is not None:
            return f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
        if low[1] is not None:
            if low[1] == 0:
                return "positive" if low[0] == "(" else "non-negative"
            return f"{'greater than' if low[0] == '(' else 'at least'} {_num(low[1])}"
        if high[1] is not None:
            return f"{'less than' if high[0] == ')' else 'at most'} {_num(high[1])}"
        return "any number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(gt=0)
NON_NEGATIVE = Range(ge=0)
AT_LEAST_ONE = Range(ge=1)
FRACTION = Range(gt=0, le=1)
"""A share of something: (0, 1]."""


def param(
    help: str, default: Any, range: Range | None = None, choices: tuple[str, ...] | None = None
) -> Any:
    """A dataclass field with its help text, range and choices in ``metadata``. Choices default
    to the field's ``Literal`` type; give them for a ``str`` field whose choices a registry
    holds."""
    return field(default=default, metadata={"help": help, "range": range, "choices": choices})


def _field(cls: type, name: str) -> Field[Any]:
    for f in fields(cls):
        if f.name == name:
            return f
    raise KeyError(name)


def help_of(cls: type, name: str) -> str:
    return str(_field(cls, name).metadata.get("help", ""))


def default_of(cls: type, name: str) -> Any:
    f = _field(cls, name)
    return None if f.default is MISSING else f.default


def range_of(cls: type, name: str, ranges: Mapping[str, Range] | None = None) -> Range | None:
    """The field's range: its metadata's, else ``ranges[name]`` (a class whose field list
    carries no ranges yet declares them beside it)."""
    declared = _field(cls, name).metadata.get("range")
    if declared is not None:
        return declared  # type: ignore[no-any-return]
    return (ranges or {}).get(name)


def choices_of(cls: type, name: str) -> tuple[str, ...] | None:
    """The string choices of a field: its metadata's, else its ``Literal[...]`` (or
    ``Literal[...] | None``) type's."""
    declared = _field(cls, name).metadata.get("choices")
    if declared is not None:
        return tuple(declared)
    hint = typing.get_type_hints(cls)[name]
    for arm in (hint, *typing.get_args(hint)):
        if typing.get_origin(arm) is typing.Literal:
            return tuple(str(a) for a in typing.get_args(arm))
    return None


def check_params(config: Any, ranges: Mapping[str, Range] | None = None) -> None:
    """Every field of ``config`` within its range and choices; else one ``ConfigError`` that
    lists each problem and names the first field."""
    cls = type(config)
    problems: list[tuple[str, str]] = []
    for f in fields(cls):
        value = getattr(config, f.name)
        if value is None:
            continue
        choices = choices_of(cls, f.name)
        if choices is not None and value not in choices:
            problems.append((f.name, f"must be one of {', '.join(choices)}, got {value!r}"))
            continue
        bounds = range_of(cls, f.name, ranges)
        if bounds is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append((f.name, f"must be a number, got {value!r}"))
        elif not bounds.contains(value):
            problems.append((f.name, f"must be {bounds.describe()}, got {value}"))
    if problems:
        raise ConfigError(
            "; ".join(f"{name} {text}" for name, text in problems), field=problems[0][0]
        )


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    name: str,
    *,
    flag: str | None = None,
    default: Any = MISSING,
) -> None:
    """``--name-with-dashes`` for field ``name`` of ``cls``: its type, choices, default and help
    from the field (``default`` overrides the field's, e.g. ``None`` for "the engine's own")."""
    f = _field(cls, name)
    value = default_of(cls, name) if default is MISSING else default
    choices = choices_of(cls, name)
    # argparse %-formats help strings: a literal % ("1% of the pool") must be doubled.
    kwargs: dict[str, Any] = {"default": value, "help": help_of(cls, name).replace("%", "%%")}
    if choices is not None:
        kwargs["choices"] = choices
    else:
        kwargs["type"] = _parser_of(typing.get_type_hints(cls)[f.name])
    parser.add_argument(flag or "--" + name.replace("_", "-"), dest=name, **kwargs)


def _parser_of(hint: Any) -> Any:
    arms = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    if len(arms) != 1 or arms[0] not in (int, float, str):
        raise TypeError(f"no command-line parser for a field of type {hint!r}")
    return arms[0]
