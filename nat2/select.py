"""`nat2 select`: which subnets of the search go on to fine-tuning and export.

    knee   the high trade-off points of the final front (search/final.json, `knee: true`)
    front  every member of the final front
    rbifa  the `n` members of the final archive with the best RB-IFA rank score (paper eq. 6) for
           the performance weight `wp`: 1 picks the most accurate, 0 the cheapest

The choice is written to select/selected.json; until fine-tuning has started it can be made
again with another method.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import yaml

from .archive import Archive
from .config import ConfigError
from .jsonio import write_json
from .rbifa import check_wp, rb_scores, rb_select
from .rundir import config_differences, prepare, run_dir_of, setup_logging

METHODS = ("knee", "front", "rbifa")
log = logging.getLogger(__name__)


class SelectionError(ValueError):
    """The search results needed for a selection are missing, or the selection is empty."""


def _read_json(path: Path, needs: str) -> Any:
    if not path.is_file():
        raise SelectionError(f"{path} does not exist; {needs}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SelectionError(f"{path} is not valid JSON ({err}); {needs}") from None


def final_archive(run_dir: Path) -> Archive:
    """The archive after the search's last finished iteration."""
    state = _read_json(run_dir / "search" / "state.json", "run `nat2 search` first")
    return Archive.load(run_dir / "search" / f"iter_{state['iterations_done']}" / "archive.json")


def check_selection(settings: dict[str, Any]) -> tuple[str, float, int]:
    """(method, wp, n) of the config's `select` section, or a ConfigError naming the bad value."""
    method, n = settings["method"], settings["n"]
    if method not in METHODS:
        raise ConfigError(f"select.method = {method!r}; expected one of {', '.join(METHODS)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"select.n = {n!r}; expected a positive integer")
    try:
        return method, check_wp(settings["wp"]), n
    except ValueError as err:
        raise ConfigError(f"select.{err}") from None


def select(run_dir: Path, method: str, wp: float, n: int) -> list[dict[str, Any]]:
    """The chosen subnets as rows of search/final.json (id, encoding, arch, accuracies, costs)."""
    front = _read_json(run_dir / "search" / "final.json", "the search has not finished: run `nat2 search` first")
    if method == "knee":
        rows = [r for r in front if r["knee"]]
    elif method == "front":
        rows = list(front)
    else:
        archive = final_archive(run_dir)
        costs = [o for o in archive.objectives if o != "acc"] or ["macs"]
        ids = {tuple(r["encoding"]): r for r in front}
        scores = rb_scores(archive.records, wp, perf_keys=["top1"], eff_keys=costs)
        rows = []
        for i in rb_select(archive.records, wp, perf_keys=["top1"], eff_keys=costs)[:n]:
            record, score = archive.records[i], float(scores[i])
            row = ids.get(tuple(record["encoding"])) or {
                "id": f"archive_{i:03d}", "encoding": record["encoding"], "val_top1": record["top1"],
                "params": record["params"], "macs": record["macs"]}
            rows.append({**row, "rb_score": score, "wp": wp})
    if not rows:
        raise SelectionError(f"method {method!r} selected no subnet from {run_dir / 'search'}")
    return rows


def cmd_select(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Write select/selected.json; refuses to change a selection that fine-tuning already uses."""
    run_dir = run_dir_of(config, args.config)
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        raise SelectionError(f"{saved} does not exist; select works on the run directory of a finished search")
    finetuned = (run_dir / "finetune").exists() and any((run_dir / "finetune").iterdir())
    diff = config_differences(yaml.safe_load(saved.read_text()), config, ignore=() if finetuned else ("select",))
    if diff:
        raise ConfigError(f"the config differs from {saved} at {', '.join(diff)}"
                          + ("; fine-tuning has started, so the selection is fixed" if finetuned else ""))
    out = run_dir / "select" / "selected.json"
    if out.exists() and not finetuned:
        out.unlink()
    prepare(run_dir, config, "select", resume=finetuned)
    setup_logging(run_dir, "select", True)
    s = config["select"]
    rows = select(run_dir, *check_selection(s))
    if finetuned and out.exists():
        old = [r["id"] for r in json.loads(out.read_text())["subnets"]]
        if old != [r["id"] for r in rows]:
            raise SelectionError(f"fine-tuning in {run_dir / 'finetune'} already uses the selection {old}; start a "
                                 "new run directory to fine-tune another selection")
    write_json(out, {"method": s["method"], "wp": s["wp"], "subnets": rows}, indent=2)
    print(f"{'subnet':<12} {'val top-1':>9} {'params (M)':>10} {'MACs (M)':>9}")
    for r in rows:
        print(f"{r['id']:<12} {r['val_top1']:>9.2f} {r['params'] / 1e6:>10.3f} {r['macs'] / 1e6:>9.2f}")
    print(f"selection ({s['method']}): {out}")
