"""`nat2 finetune`: two-step fine-tuning of the selected subnets, from the adapted supernets.

    finetune/<subnet>/<variant>/step1/{last.pt,best.pt}   step 1 (train, validate, early stop)
    finetune/<subnet>/<variant>/step2/last.pt             step 2 (train + validation, e epochs)
    finetune/<subnet>/<variant>/result.json               figures (test top-1 measured once)
    finetune/<subnet>/<variant>/final.pt                  the final weights and Subnet config

A variant is `single` (the subnet as found, one exit) or `aep` (an early-exit subnet with every
exit up to its own, AEP loss and ensemble). Under torchrun the jobs are shared out over ranks.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from postprocess.finetune import FinetuneOptions, two_step
from supernets import Subnet, arch_cost, recalibrate_bn
from supernets.checkpoint import atomic_save, load_checkpoint
from supernets.evaluation import EvalData

from .config import ConfigError
from .jsonio import write_json
from .search_command import load_adapted, trained_supernets
from .select import SelectionError
from .stage import open_stage

VARIANTS = ("single", "aep")
log = logging.getLogger(__name__)


def finetune_options(config: dict[str, Any]) -> FinetuneOptions:
    fields = {f.name for f in dataclasses.fields(FinetuneOptions)}
    values = {k: v for k, v in config["finetune"].items() if k in fields}
    values.update({k: config["train"][k] for k in ("eval_batch_size", "num_workers", "eval_cache_mb")})
    try:
        return FinetuneOptions(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None


def selected(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "select" / "selected.json"
    if not path.is_file():
        raise SelectionError(f"{path} does not exist; run `nat2 select` first")
    return json.loads(path.read_text())["subnets"]


def jobs(config: dict[str, Any], rows: list[dict[str, Any]], space: Any) -> list[tuple[dict[str, Any], str]]:
    """(subnet row, variant) pairs: `aep` only for early-exit subnets with more than one exit."""
    variants = config["finetune"]["variants"]
    if not variants or any(v not in VARIANTS for v in variants):
        raise ConfigError(f"finetune.variants = {variants!r}; expected a non-empty list of {', '.join(VARIANTS)}")
    out = []
    for row in rows:
        arch = space.decode(np.array(row["encoding"]))
        for v in variants:
            if v == "single" or (space.early_exits and arch.exit > 1):
                out.append((row, v))
    return out


def result_path(run_dir: Path, row: dict[str, Any], variant: str) -> Path:
    return run_dir / "finetune" / row["id"] / variant / "result.json"


def cmd_finetune(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Fine-tune every (selected subnet, variant) that has no result yet; print the results."""
    options = finetune_options(config)
    ctx, run_dir, splits, space = open_stage(config, args, "finetune", "finetune")
    todo = jobs(config, selected(run_dir), space)
    mine = [job for i, job in enumerate(todo) if i % ctx.world_size == ctx.rank
            and not result_path(run_dir, *job).exists()]
    if mine:
        supernets = trained_supernets(config, run_dir, splits.n_classes, space, ctx.device)
        load_adapted(run_dir, supernets)
    data = EvalData(splits, ctx.device, budget_mb=config["train"]["eval_cache_mb"],
                    num_workers=config["train"]["num_workers"])
    for row, variant in mine:
        arch = space.decode(np.array(row["encoding"]))
        exits = "all" if variant == "aep" else None
        supernet = supernets[arch.width]

        def build() -> nn.Module:
            subnet = supernet.extract(arch, exits)
            recalibrate_bn(subnet, data.batches("calibration", arch.resolution, config["train"]["calibration_batch"]))
            return subnet

        out = result_path(run_dir, row, variant).parent
        log.info("fine-tuning %s (%s): %s", row["id"], variant, arch)
        result, model = two_step(build, splits, arch.resolution, options, out, ctx.device,
                                 prune=variant == "aep" and config["finetune"]["prune"])
        cost = arch_cost(model.arch, splits.n_classes, list(model.exit_list))
        result.update(id=row["id"], variant=variant, encoding=row["encoding"], arch=model.arch.to_dict(),
                      arch_str=str(model.arch), search_val_top1=row["val_top1"], params=cost.params, macs=cost.macs)
        atomic_save({"config": model.config, "model": model.state_dict()}, out / "final.pt")
        write_json(out / "result.json", result, indent=2)
    if ctx.enabled:
        torch.distributed.barrier()
    if ctx.is_main:
        results = [json.loads(result_path(run_dir, *job).read_text()) for job in todo]
        print(format_results(results))


def format_results(results: list[dict[str, Any]]) -> str:
    lines = [f"{'subnet':<12} {'variant':<7} {'exits':<10} {'val before':>10} {'val step 1':>10} {'epochs':>6} "
             f"{'test top-1':>10} {'params (M)':>10} {'MACs (M)':>9}"]
    lines += [f"{r['id']:<12} {r['variant']:<7} {','.join(map(str, r['kept_exits'])):<10} "
              f"{r['val_top1_before']:>10.2f} {r['val_top1_step1']:>10.2f} {r['best_epoch']:>6} "
              f"{r['test_top1']:>10.2f} {r['params'] / 1e6:>10.3f} {r['macs'] / 1e6:>9.2f}" for r in results]
    return "\n".join(lines)


def load_final(run_dir: Path, row: dict[str, Any], variant: str) -> Subnet:
    """The fine-tuned model of a job (CPU, eval mode)."""
    state = load_checkpoint(result_path(run_dir, row, variant).parent / "final.pt")
    model = Subnet(**state["config"])
    model.load_state_dict(state["model"])
    return model.eval()
