"""`nat2 run`: the whole pipeline, supernet training -> search -> selection -> fine-tuning ->
export, in one run directory. A stage that already holds results is resumed (finished work is
skipped), and a stage followed by one that holds results is done and not opened again, so
running the same command again after a kill continues where it stopped, and after the end only
prints the table.
"""
from __future__ import annotations

import torch.distributed

from .config import Config
from .context import join, latency_table
from .rundir import RunDir
from .stages import export, finetune, search, select, train_supernet
from .tables import table


def run(config: Config, run_dir: RunDir) -> None:
    """Every stage in order, each started or resumed from what the run directory holds; under
    torchrun, selection and export run on rank 0 only."""
    ctx = join(config)
    if not run_dir.has_results("select"):
        latency_table(config, run_dir)  # a missing table stops the run now, not after the training
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
    exports = list(run_dir.exports().values())
    measured = [{b for b, v in m.get("latency_ms", {}).items() if "measured" in v} for m in exports]
    backends = sorted(set.intersection(*measured)) if exports else []
    rows = [(m["subnet"], ",".join(map(str, m["exits"])), m["accuracy"]["test_top1"], m["params"] / 1e6,
             m["macs"] / 1e6, *(m["latency_ms"][b]["measured"] for b in backends), m["arch"]) for m in exports]
    lines = [table([("subnet", "<16"), ("exits", "<10"), ("test top-1", ">10.2f"), ("params (M)", ">10.3f"),
                    ("MACs (M)", ">9.2f"), *((f"{b} (ms)", f">{max(9, len(b) + 5)}.3f") for b in backends),
                    ("architecture", "")], rows)]
    lines.append(f"exported models: {run_dir.stage('export')}")
    lines.append(f"Pareto front and knees: {run_dir.search.front_plot}")
    return "\n".join(lines)
