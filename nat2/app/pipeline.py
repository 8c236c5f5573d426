"""`nat2 run`: the whole pipeline, supernet training -> search -> selection -> fine-tuning ->
export, in one run directory. A stage that already holds results is resumed (finished work is
skipped), and a stage followed by one that holds results is done and not opened again, so
running the same command again after a kill continues where it stopped, and after the end only
prints the table.
"""
from __future__ import annotations

import torch.distributed

from .config import Config
from .context import join
from .rundir import RunDir
from .stages import export, finetune, search, select, train_supernet
from .tables import table


def run(config: Config, run_dir: RunDir) -> None:
    """Every stage in order, each started or resumed from what the run directory holds; under
    torchrun, selection and export run on rank 0 only."""
    ctx = join(config)
    stages = (
        ("supernet", "train-supernet", lambda resume: train_supernet.run(config, run_dir, resume), True),
        ("search", "search", lambda resume: search.run(config, run_dir, resume), True),
        ("select", "select", lambda resume: select.run(config, run_dir), False),
        ("finetune", "finetune", lambda resume: finetune.run(config, run_dir, resume), True),
        ("export", "export", lambda resume: export.run(config, run_dir, export.pending(config, run_dir)), False),
    )
    for i, (stage, command, start, every_rank) in enumerate(stages):
        resume = run_dir.has_results(stage)
        done = any(run_dir.has_results(later[0]) for later in stages[i + 1:])
        if ctx.is_main:
            state = "done" if done else "resuming" if resume else "starting"
            print(f"== nat2 {command}: {state} in {run_dir.stage(stage)}", flush=True)
        if not done and (every_rank or ctx.is_main):
            start(resume)
        if ctx.enabled:
            torch.distributed.barrier()
    if ctx.is_main:
        print(summary(run_dir))


def summary(run_dir: RunDir) -> str:
    """The final table of a finished run: exported subnets with their test top-1 and costs."""
    rows = [(m["subnet"], ",".join(map(str, m["exits"])), m["accuracy"]["test_top1"], m["params"] / 1e6,
             m["macs"] / 1e6, m["arch"]) for m in run_dir.exports().values()]
    lines = [table([("subnet", "<16"), ("exits", "<10"), ("test top-1", ">10.2f"), ("params (M)", ">10.3f"),
                    ("MACs (M)", ">9.2f"), ("architecture", "")], rows)]
    lines.append(f"exported models: {run_dir.stage('export')}")
    lines.append(f"Pareto front and knees: {run_dir.search.front_plot}")
    return "\n".join(lines)
