"""`nat2 run`: the whole pipeline, supernet training -> search -> selection -> fine-tuning ->
export, in one run directory. A stage whose folder already holds results is resumed (finished
work is skipped), so running the same command again after a kill continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

import torch.distributed

from supernets.distributed import init_distributed

from .export_command import cmd_export
from .finetune_command import cmd_finetune, finetune_options
from .rundir import run_dir_of
from .search_command import cmd_search, search_settings
from .select import check_selection, cmd_select
from .train import cmd_train_supernet, train_options

Command = Callable[[dict[str, Any], argparse.Namespace], None]
# (run-directory folder, command name, command, runs under torchrun on every rank)
STAGES: tuple[tuple[str, str, Command, bool], ...] = (
    ("supernet", "train-supernet", cmd_train_supernet, True),
    ("search", "search", cmd_search, True),
    ("select", "select", cmd_select, False),
    ("finetune", "finetune", cmd_finetune, True),
    ("final", "export", cmd_export, False),
)
log = logging.getLogger(__name__)


def has_results(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def cmd_run(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Every stage in order, each started or resumed from what the run directory holds."""
    check_config(config)
    device = config["train"]["device"]
    ctx = init_distributed(None if device == "auto" else device)
    run_dir = run_dir_of(config, args.config)
    for folder, name, command, every_rank in STAGES:
        resume = has_results(run_dir / folder)
        if ctx.is_main:
            print(f"== nat2 {name}: {'resuming' if resume else 'starting'} in {run_dir / folder}", flush=True)
        if every_rank or ctx.is_main:
            command(config, argparse.Namespace(**{**vars(args), "resume": resume, "subnet": None}))
        if ctx.enabled:
            torch.distributed.barrier()
    if ctx.is_main:
        print(summary(run_dir))


def check_config(config: dict[str, Any]) -> None:
    """Fail on a bad setting of any stage now, not hours later when that stage starts."""
    train_options(config)
    search_settings(config)
    finetune_options(config)
    check_selection(config["select"])


def summary(run_dir: Path) -> str:
    """The final table of a finished run: exported subnets with their test top-1 and costs."""
    state = json.loads((run_dir / "search" / "state.json").read_text())
    rows = [json.loads(p.read_text()) for p in sorted((run_dir / "final").glob("*/metadata.json"))]
    lines = [f"{'subnet':<16} {'exits':<10} {'test top-1':>10} {'params (M)':>10} {'MACs (M)':>9}  architecture"]
    lines += [f"{m['subnet']:<16} {','.join(map(str, m['exits'])):<10} {m['accuracy']['test_top1']:>10.2f} "
              f"{m['params'] / 1e6:>10.3f} {m['macs'] / 1e6:>9.2f}  {m['arch']}" for m in rows]
    lines.append(f"exported models: {run_dir / 'final'}")
    last = run_dir / "search" / f"iter_{state['iterations_done']}"
    lines.append(f"Pareto front: {last / 'pareto.png'}")
    return "\n".join(lines)
