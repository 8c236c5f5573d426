"""Checks of settings dataclasses, so that every config section words a bad value alike:
"<section>.<name> = <value>; expected ...". The lowest layer, so every package's settings use it."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

Range = tuple[float, float]


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.number)) and not math.isnan(value)


def check_fields(settings: Any, section: str = "", *, integers: Mapping[str, int] = {},
                 numbers: Mapping[str, Range] = {}, positive: Sequence[str] = (),
                 fractions: Sequence[str] = (), choices: Mapping[str, Sequence[Any]] = {},
                 flags: Sequence[str] = (), nullable: Sequence[str] = ()) -> None:
    """ValueError naming the first bad field: `integers` name -> least value, `numbers` name ->
    (low, high) inclusive, `positive` numbers > 0, `fractions` in [0, 1), `choices` name ->
    allowed values, `flags` booleans; a field in `nullable` may also be None."""
    prefix = f"{section}." if section else ""

    def bad(name: str, expected: str) -> ValueError:
        null = " or null" if name in nullable else ""
        return ValueError(f"{prefix}{name} = {getattr(settings, name)!r}; expected {expected}{null}")

    def given(name: str) -> bool:
        return not (name in nullable and getattr(settings, name) is None)

    for name, low in integers.items():
        value = getattr(settings, name)
        if given(name) and not (_is_int(value) and value >= low):
            raise bad(name, "a positive integer" if low == 1 else f"an integer >= {low}")
    for name, (low, high) in numbers.items():
        value = getattr(settings, name)
        if given(name) and not (_is_number(value) and low <= value <= high):
            raise bad(name, f"a number in [{low:g}, {high:g}]" if math.isfinite(high) else f"a number >= {low:g}")
    for name in positive:
        value = getattr(settings, name)
        if given(name) and not (_is_number(value) and 0 < value < math.inf):
            raise bad(name, "a positive number")
    for name in fractions:
        value = getattr(settings, name)
        if given(name) and not (_is_number(value) and 0 <= value < 1):
            raise bad(name, "a number in [0, 1)")
    for name, allowed in choices.items():
        if given(name) and getattr(settings, name) not in allowed:
            raise bad(name, f"one of {', '.join(map(str, allowed))}")
    for name in flags:
        if given(name) and not isinstance(getattr(settings, name), bool):
            raise bad(name, "true or false")
