"""`nat2 run`: the whole pipeline, supernet training -> search -> selection -> fine-tuning ->
export, in one run directory. A stage that already holds results is resumed (finished work is
skipped), so running the same command again after a kill continues where it stopped.
"""
from __future__ import annotations

import torch.distributed

from ..search import iterations_done
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
        ("export", "export", lambda resume: export.run(config, run_dir), False),
    )
    for stage, command, start, every_rank in stages:
        resume = run_dir.has_results(stage)
        if ctx.is_main:
            print(f"== nat2 {command}: {'resuming' if resume else 'starting'} in {run_dir.stage(stage)}", flush=True)
        if every_rank or ctx.is_main:
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
    lines.append(f"Pareto front: {run_dir.search.pareto(iterations_done(run_dir.search))}")
    return "\n".join(lines)
