"""`nat2 select`: which subnets of the search go on to fine-tuning and export.

    knee   the high trade-off points of the final front (`knee: true` in the search's final front)
    front  every member of the final front
    rbifa  the `n` members of the final archive with the best RB-IFA rank score (paper eq. 6) for
           the performance weight `wp`: 1 picks the most accurate, 0 the cheapest

The choice is recorded in the run directory; until fine-tuning has started it can be made again
with another method.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ...rbifa import rb_scores, rb_select
from ...search import Archive, iterations_done, read_front
from ...search.archive import COSTS
from ...space import encoding_key
from ..config import Config, ConfigError
from ..context import setup_logging
from ..rundir import RunDir, config_differences
from ..tables import cost_columns, table


log = logging.getLogger(__name__)


class SelectionError(ValueError):
    """The search results needed for a selection are missing, or the selection is empty."""


def _exists(path: Path, needs: str) -> None:
    if not path.is_file():
        raise SelectionError(f"{path} does not exist; {needs}")


def final_archive(run_dir: RunDir) -> Archive:
    """The archive after the search's last finished iteration."""
    files = run_dir.search
    _exists(files.state, "run `nat2 search` first")
    return Archive.load(files.archive(iterations_done(files)))


def select(run_dir: RunDir, method: str, wp: float, n: int) -> list[dict[str, Any]]:
    """The chosen subnets as rows of the search's final front (id, encoding, arch, accuracies, costs)."""
    _exists(run_dir.search.final, "the search has not finished: run `nat2 search` first")
    front = read_front(run_dir.search)
    if method == "knee":
        rows = [r for r in front if r["knee"]]
    elif method == "front":
        rows = list(front)
    else:
        archive = final_archive(run_dir)
        costs = [o for o in archive.objectives if o != "acc"] or ["macs"]
        ids = {encoding_key(r["encoding"]): r for r in front}
        scores = rb_scores(archive.records, wp, perf_keys=["top1"], eff_keys=costs)
        rows = []
        for i in rb_select(archive.records, wp, perf_keys=["top1"], eff_keys=costs)[:n]:
            record, score = archive.records[i], float(scores[i])
            row = ids.get(encoding_key(record["encoding"])) or {
                "id": f"archive_{i:03d}", "encoding": record["encoding"], "val_top1": record["top1"],
                **{k: record[k] for k in COSTS if k in record}}
            rows.append({**row, "rb_score": score, "wp": wp})
    if not rows:
        raise SelectionError(f"method {method!r} selected no subnet from {run_dir.stage('search')}")
    return rows


def run(config: Config, run_dir: RunDir) -> None:
    """Record the selection; refuses to change a selection that fine-tuning already uses."""
    saved = run_dir.saved_config()
    if saved is None:
        raise SelectionError(f"{run_dir.config_file} does not exist; select works on the run directory of a "
                             "finished search")
    finetuned = run_dir.has_results("finetune")
    diff = config_differences(saved, config.to_dict(), ignore=() if finetuned else ("select",))
    if diff:
        raise ConfigError(f"the config differs from {run_dir.config_file} at {', '.join(diff)}"
                          + ("; fine-tuning has started, so the selection is fixed" if finetuned else ""))
    s, out = config.select, run_dir.selection_file
    rows = select(run_dir, s.method, s.wp, s.n)           # reads only: a failure leaves everything as it was
    old = run_dir.selection() if finetuned and out.exists() else None
    if old is not None and [r["id"] for r in old] != [r["id"] for r in rows]:
        raise SelectionError(f"fine-tuning in {run_dir.stage('finetune')} already uses the selection "
                             f"{[r['id'] for r in old]}; start a new run directory to fine-tune another selection")
    if out.exists() and not finetuned:
        out.unlink()
    run_dir.prepare(config, "select", resume=finetuned)
    setup_logging(run_dir, "select", True)
    run_dir.write_selection(s.method, s.wp, rows)
    log.info("selection (%s): %s in %s", s.method, ", ".join(r["id"] for r in rows), out)
    columns, costs = cost_columns(rows)
    print(table([("subnet", "<12"), ("val top-1", ">9.2f"), *columns],
                [(r["id"], r["val_top1"], *c) for r, c in zip(rows, costs)]))
