"""Console tables: one column format, used by every command that prints results."""
from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

_SPEC = re.compile(r"([<>^]?)(\d*)(.*)")


def table(columns: Sequence[tuple[str, str]], rows: Iterable[Sequence[Any]]) -> str:
    """`columns` are (header, format spec) such as ("val top-1", ">9.2f"); the header is aligned
    like its values. A column without a width is free text, set off by two spaces."""
    def line(cells: Sequence[str]) -> str:
        return "".join(("" if i == 0 else " " if _SPEC.match(spec).group(2) else "  ") + cell
                       for i, ((_, spec), cell) in enumerate(zip(columns, cells)))

    heads = [f"{header:{''.join(_SPEC.match(spec).groups()[:2])}}" for header, spec in columns]
    body = [line([f"{value:{spec}}" for value, (_, spec) in zip(row, columns)]) for row in rows]
    return "\n".join([line(heads), *body])


def cost_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[tuple[str, str]], list[tuple[float, ...]]]:
    """The cost columns of search and selection rows: params, MACs and, when every row has it, the
    latency predicted from the run's table."""
    latency = bool(rows) and all("latency" in r for r in rows)
    columns = [("params (M)", ">10.3f"), ("MACs (M)", ">9.2f")] + ([("latency (ms)", ">12.3f")] if latency else [])
    return columns, [(r["params"] / 1e6, r["macs"] / 1e6, *((r["latency"],) if latency else ())) for r in rows]
