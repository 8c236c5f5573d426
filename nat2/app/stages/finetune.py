"""`nat2 finetune`: two-step fine-tuning of the selected subnets, from the adapted supernets.

For every (selected subnet, variant) job: step 1 (train, validate, early stop), step 2 (train +
validation for e epochs), then the figures (test top-1 measured once) and the final weights. A
variant is `single` (the subnet as found, one exit) or `aep` (an early-exit subnet with every
exit up to its own, AEP loss and ensemble). Under torchrun the jobs are shared out over ranks.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from postprocess import save_finetuned, two_step
from supernets import arch_cost, recalibrate_bn
from supernets.evaluation import EvalData

from ..config import Config
from ..context import finetune_jobs, open_stage, trained_supernets
from ..rundir import RunDir
from ..tables import table

log = logging.getLogger(__name__)


def run(config: Config, run_dir: RunDir, resume: bool = False) -> None:
    """Fine-tune every (selected subnet, variant) that has no result yet; print the results."""
    options, tr = config.finetune, config.train
    stage = open_stage(config, run_dir, "finetune", "finetune", resume)
    ctx, splits, space = stage.ctx, stage.splits, stage.space
    todo = finetune_jobs(config, run_dir.selection(), space)
    mine = [(row, v) for i, (row, v) in enumerate(todo) if i % ctx.world_size == ctx.rank
            and not run_dir.result_file(row["id"], v).exists()]
    if mine:
        supernets = trained_supernets(config, run_dir, stage)
    data = EvalData(splits, ctx.device, budget_mb=tr.eval_cache_mb, num_workers=tr.num_workers)
    for row, variant in mine:
        arch = space.decode(np.array(row["encoding"]))
        exits = "all" if variant == "aep" else None
        supernet = supernets[arch.width]

        def build() -> nn.Module:
            subnet = supernet.extract(arch, exits)
            recalibrate_bn(subnet, data.batches("calibration", arch.resolution, tr.calibration_batch))
            return subnet

        log.info("fine-tuning %s (%s): %s", row["id"], variant, arch)
        result, model = two_step(build, splits, arch.resolution, options, run_dir.finetune_job(row["id"], variant),
                                 ctx.device, prune=variant == "aep" and options.prune)
        cost = arch_cost(model.arch, splits.n_classes, list(model.exit_list))
        result.update(id=row["id"], variant=variant, encoding=row["encoding"], arch=model.arch.to_dict(),
                      arch_str=str(model.arch), search_val_top1=row["val_top1"], params=cost.params, macs=cost.macs)
        save_finetuned(model, run_dir.finetuned_model(row["id"], variant))
        run_dir.write_result(row["id"], variant, result)
    if ctx.enabled:
        torch.distributed.barrier()
    if ctx.is_main:
        results = [run_dir.result(row["id"], v) for row, v in todo]
        print(table([("subnet", "<12"), ("variant", "<7"), ("exits", "<10"), ("val before", ">10.2f"),
                     ("val step 1", ">10.2f"), ("epochs", ">6"), ("test top-1", ">10.2f"), ("params (M)", ">10.3f"),
                     ("MACs (M)", ">9.2f")],
                    [(r["id"], r["variant"], ",".join(map(str, r["kept_exits"])), r["val_top1_before"],
                      r["val_top1_step1"], r["best_epoch"], r["test_top1"], r["params"] / 1e6, r["macs"] / 1e6)
                     for r in results]))
