"""The small file tools of the run directory. Atomic writes (written beside the target and renamed
over it, so a kill leaves the old or the new version, never half a file) and JSONL caches (records
appended one line each as they come, read back by encoding, so a killed evaluation resumes)."""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from supernets.checkpoint import atomic_write

from .space import encoding_key


def write_text(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, data: Any, indent: int | None = 1) -> None:
    write_text(path, json.dumps(data, indent=indent))


def append_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Append one JSON line per record (a kill can tear only the last line, which `read_jsonl` skips)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def read_jsonl(path: Path) -> dict[tuple[int, ...], dict[str, Any]]:
    """Records of a JSONL cache by encoding key; a torn last line (killed while writing) is ignored."""
    records: dict[tuple[int, ...], dict[str, Any]] = {}
    if not path.exists():
        return records
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not JSON; delete the file to evaluate again") from None
        records[encoding_key(record["encoding"])] = record
    return records
