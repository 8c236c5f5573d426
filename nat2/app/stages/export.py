"""`nat2 export`: every fine-tuned subnet (or those named) as a standalone export: architecture,
weights, the .pt2 program, ONNX and metadata, each checked against the fine-tuned model. The
metadata records the latency predicted and measured on every backend the run has a table for."""
from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

from postprocess import ExportError, export_subnet, load_finetuned
from supernets import Subnet
from supernets.latency import LatencyError, Meter

from ...files import FileFormatError
from ...latency import LatencyTable, measure_subnets
from ..config import Config
from ..context import export_name, finetune_jobs, run_table, setup_logging
from ..rundir import RunDir

log = logging.getLogger(__name__)


def _jobs(config: Config, run_dir: RunDir) -> dict[str, tuple[dict, str]]:
    """Export name -> (selected row, variant) of every fine-tuning job."""
    space = config.supernet.search_space()
    return {export_name(row, v): (row, v) for row, v in finetune_jobs(config, run_dir.selection(), space)}


def pending(config: Config, run_dir: RunDir) -> list[str]:
    """The fine-tuning jobs that have no export yet."""
    done = run_dir.exports()
    return [name for name in _jobs(config, run_dir) if name not in done]


def run(config: Config, run_dir: RunDir, subnets: Sequence[str] | None = None) -> None:
    """Export every fine-tuned subnet, or those in `subnets`; removes what exports killed half-way left."""
    names = _jobs(config, run_dir)
    wanted = list(names) if subnets is None else list(subnets)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ExportError(f"no fine-tuned subnet named {', '.join(unknown)} in {run_dir.path}; expected one of "
                          f"{', '.join(names)}")
    missing = [n for n in wanted if run_dir.result(names[n][0]["id"], names[n][1]) is None]
    if missing:
        raise ExportError(f"{', '.join(missing)} not fine-tuned yet in {run_dir.stage('finetune')}; run "
                          "`nat2 finetune` to finish them first")
    run_dir.prepare(config, "export", resume=run_dir.stage("export").exists())
    setup_logging(run_dir, "export", True)
    for path in run_dir.remove_partial_exports():
        log.info("removed %s, left by an export that was stopped half-way", path)
    if not wanted:
        return
    data = config.data
    splits = data.load()
    tables = _tables(config, run_dir, splits.n_classes)
    for name in wanted:
        row, variant = names[name]
        result = run_dir.result(row["id"], variant)
        model = load_finetuned(run_dir.finetuned_model(row["id"], variant))
        metadata = {
            "subnet": name, "variant": variant, "encoding": row["encoding"], "arch": str(model.arch),
            "resolution": model.arch.resolution, "width": model.arch.width, "exits": list(model.exit_list),
            "beta": result["kept_beta"], "prediction": "argmax of sum_i beta_i * exit_i logits",
            "params": result["params"], "macs": result["macs"],
            "accuracy": {"search_val_top1": result["search_val_top1"], "val_top1_before": result["val_top1_before"],
                         "val_top1_after_step1": result["val_top1_step1"], "test_top1": result["test_top1"]},
            "finetune": {"best_epoch": result["best_epoch"], "step1_epochs": result["step1_epochs"],
                         **config.to_dict()["finetune"]},
            "dataset": data.name, "n_classes": splits.n_classes,
            "input": {"layout": "NCHW RGB float32", "size": [model.arch.resolution] * 2,
                      "scale": "pixel / 255", "mean": list(splits.mean), "std": list(splits.std)},
            "latency_ms": {backend: _latency(model, table, meter) for backend, (table, meter) in tables.items()},
        }
        folder = run_dir.export(name)
        parity = export_subnet(model, folder, metadata, tolerance=config.export.tolerance)
        log.info("exported %s to %s (max abs differences %s)", name, folder, parity)
        print(f"{name}: {folder} (test top-1 {result['test_top1']:.2f}, parity "
              + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()) + ")")


def _tables(config: Config, run_dir: RunDir, n_classes: int) -> dict[str, tuple[LatencyTable, Meter | None]]:
    """The run's usable latency tables, each with a meter when its backend runs here and the table
    was measured on this machine (a table copied from another device predicts, it cannot be
    compared with timings taken here)."""
    out: dict[str, tuple[LatencyTable, Meter | None]] = {}
    for backend, path in run_dir.latency_tables().items():
        try:
            table = run_table(config, run_dir, backend, n_classes)
            meter = Meter(backend, table.timing)
        except (LatencyError, FileFormatError) as err:
            log.warning("the exports' latency on %s is not recorded: %s", backend, err)
            continue
        if meter.describe() != table.device:
            log.info("%s was measured on another machine: the exports' latency on it is predicted, not measured", path)
            meter = None
        out[backend] = table, meter
    return out


def _latency(model: Subnet, table: LatencyTable, meter: Meter | None) -> dict[str, Any]:
    record = {"predicted": table.predict_arch(model.arch, model.exit_list), "batch": table.timing.batch,
              "threads": table.timing.threads, "device": table.device}
    if meter is not None:
        record["measured"] = measure_subnets(meter, [(copy.deepcopy(model), model.arch.resolution)])[0]
    return record
