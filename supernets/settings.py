"""Checks of settings dataclasses, so that every config section words a bad value alike:
"<section>.<name> = <value>; expected ...". The lowest layer, so every package's settings use it."""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Range = tuple[float, float]


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and not math.isnan(value)


def check_fields(settings: Any, section: str = "", *, integers: Mapping[str, int] = {},
                 numbers: Mapping[str, Range] = {}, positive: Sequence[str] = (),
                 fractions: Sequence[str] = (), choices: Mapping[str, Sequence[Any]] = {},
                 flags: Sequence[str] = (), paths: Sequence[str] = (), nullable: Sequence[str] = ()) -> None:
    """ValueError naming the first bad field: `integers` name -> least value, `numbers` name ->
    (low, high) inclusive, `positive` numbers > 0, `fractions` in [0, 1), `choices` name ->
    allowed values, `flags` booleans, `paths` strings; a field in `nullable` may also be None."""
    prefix = f"{section}." if section else ""

    def check(name: str, ok: Callable[[Any], bool], expected: str) -> None:
        value = getattr(settings, name)
        if not (name in nullable and value is None) and not ok(value):
            null = " or null" if name in nullable else ""
            raise ValueError(f"{prefix}{name} = {value!r}; expected {expected}{null}")

    for name, low in integers.items():
        check(name, lambda v: _is_int(v) and v >= low, "a positive integer" if low == 1 else f"an integer >= {low}")
    for name, (low, high) in numbers.items():
        expected = f"a number in [{low:g}, {high:g}]" if math.isfinite(high) else f"a number >= {low:g}"
        check(name, lambda v: _is_number(v) and low <= v <= high, expected)
    for name in positive:
        check(name, lambda v: _is_number(v) and 0 < v < math.inf, "a positive number")
    for name in fractions:
        check(name, lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)")
    for name, allowed in choices.items():
        check(name, lambda v: v in allowed, f"one of {', '.join(map(str, allowed))}")
    for name in flags:
        check(name, lambda v: isinstance(v, bool), "true or false")
    for name in paths:
        check(name, lambda v: isinstance(v, str), "a path")
