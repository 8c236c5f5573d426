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


class FileFormatError(ValueError):
    """A file that a stage reads is damaged: not JSON, or without the fields its reader needs."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path} {problem}")


def read_json(path: str | Path, fields: Iterable[str] = ()) -> Any:
    """The JSON in `path`; a mapping must hold `fields` (FileFormatError naming the file otherwise)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise FileFormatError(path, f"cannot be read ({err.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FileFormatError(path, f"is not valid JSON ({err})") from None
    require_fields(path, data, fields)
    return data


def require_fields(path: str | Path, record: Any, fields: Iterable[str], where: str = "") -> None:
    """FileFormatError unless `record` (read from `path`, at `where` in it) is a mapping holding `fields`."""
    fields = list(fields)
    if not fields:
        return
    if not isinstance(record, dict):
        raise FileFormatError(path, f"holds {type(record).__name__}{where}; expected a mapping with {', '.join(fields)}")
    missing = [f for f in fields if f not in record]
    if missing:
        raise FileFormatError(path, f"lacks {', '.join(map(repr, missing))}{where}")


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
            raise FileFormatError(path, f"line {i + 1} is not JSON") from None
        require_fields(path, record, ["encoding"], f" at line {i + 1}")
        records[encoding_key(record["encoding"])] = record
    return records
