"""`nat2 export` (final/<subnet>/ for every fine-tuned subnet) and `nat2 evaluate` (an exported
subnet on a split of the configured dataset, through PyTorch, the .pt2 program or onnxruntime).

A single-exit result goes to final/<subnet>/, an AEP result to final/<subnet>_aep/.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable

import onnxruntime
import torch

from postprocess.export import FILES, ExportError, export_subnet, load_subnet
from postprocess.finetune import at_resolution
from supernets import load_splits
from supernets.aep import as_exits, ensemble_logits
from supernets.data import make_loader

from .factory import build_space
from .finetune_command import jobs, load_final, result_path, selected
from .rundir import prepare, run_dir_of, setup_logging

FORMATS = ("torch", "pt2", "onnx")
SPLITS = ("val", "test")
log = logging.getLogger(__name__)


def export_name(row: dict[str, Any], variant: str) -> str:
    return row["id"] if variant == "single" else f"{row['id']}_{variant}"


def cmd_export(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Export every fine-tuned subnet (or those named by --subnet) to final/<name>/."""
    run_dir = run_dir_of(config, args.config)
    space = build_space(config)
    todo = jobs(config, selected(run_dir), space)
    names = {export_name(row, v): (row, v) for row, v in todo}
    wanted = args.subnet or list(names)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ExportError(f"no fine-tuned subnet named {', '.join(unknown)} in {run_dir}; expected one of "
                          f"{', '.join(names)}")
    missing = [n for n in wanted if not result_path(run_dir, *names[n]).exists()]
    if missing:
        raise ExportError(f"{', '.join(missing)} not fine-tuned yet in {run_dir / 'finetune'}; run `nat2 finetune` "
                          "to finish them first")
    prepare(run_dir, config, "final", resume=(run_dir / "final").exists())
    setup_logging(run_dir, "export", True)
    data = config["data"]
    splits = load_splits(data["name"], data["root"], seed=data["seed"], calibration_size=data["calibration_size"])
    for name in wanted:
        row, variant = names[name]
        result = json.loads(result_path(run_dir, row, variant).read_text())
        model = load_final(run_dir, row, variant)
        metadata = {
            "subnet": name, "variant": variant, "encoding": row["encoding"], "arch": str(model.arch),
            "resolution": model.arch.resolution, "width": model.arch.width, "exits": list(model.exit_list),
            "beta": result["kept_beta"], "prediction": "argmax of sum_i beta_i * exit_i logits",
            "params": result["params"], "macs": result["macs"],
            "accuracy": {"search_val_top1": result["search_val_top1"], "val_top1_before": result["val_top1_before"],
                         "val_top1_after_step1": result["val_top1_step1"], "test_top1": result["test_top1"]},
            "finetune": {"best_epoch": result["best_epoch"], "step1_epochs": result["step1_epochs"],
                         **config["finetune"]},
            "dataset": data["name"], "n_classes": splits.n_classes,
            "input": {"layout": "NCHW RGB float32", "size": [model.arch.resolution] * 2,
                      "scale": "pixel / 255", "mean": list(splits.mean), "std": list(splits.std)},
        }
        parity = export_subnet(model, run_dir / "final" / name, metadata, tolerance=config["export"]["tolerance"])
        log.info("exported %s to %s (max abs differences %s)", name, run_dir / "final" / name, parity)
        print(f"{name}: {run_dir / 'final' / name} (test top-1 {result['test_top1']:.2f}, parity "
              + ", ".join(f"{k} {v:.1e}" for k, v in parity.items()) + ")")


def exported(run_dir: Path, subnet: str) -> Path:
    """final/<subnet> of `run_dir`, or `subnet` itself when it is an export folder."""
    for folder in (Path(subnet), run_dir / "final" / subnet):
        if (folder / "metadata.json").is_file():
            return folder
    available = sorted(p.name for p in (run_dir / "final").glob("*") if (p / "metadata.json").is_file())
    raise ExportError(f"no exported subnet {subnet!r} in {run_dir / 'final'}; expected one of "
                      f"{', '.join(available) or '(none: run `nat2 export` first)'} or an export folder holding "
                      f"{', '.join(FILES)}")


def runner(folder: Path, fmt: str) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A function image batch -> per-exit logits through the chosen format of an export."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(z) for z in session.run(None, {name: x.numpy()})]
    model = load_subnet(folder) if fmt == "torch" else torch.export.load(folder / "model.pt2").module()
    return lambda x: list(as_exits(model(x)))


@torch.no_grad()
def cmd_evaluate(config: dict[str, Any], args: argparse.Namespace) -> None:
    """Top-1 of an exported subnet on a split of the configured dataset."""
    if args.format not in FORMATS or args.split not in SPLITS:
        raise ExportError(f"--format {args.format} --split {args.split}; expected one of {FORMATS} and {SPLITS}")
    run_dir = run_dir_of(config, args.config)
    folder = exported(run_dir, args.subnet)
    meta = json.loads((folder / "metadata.json").read_text())
    data = config["data"]
    splits = load_splits(data["name"], data["root"], seed=data["seed"], calibration_size=data["calibration_size"])
    if splits.n_classes != meta["n_classes"]:
        raise ExportError(f"{folder} classifies {meta['n_classes']} classes but {data['name']} has {splits.n_classes}")
    run = runner(folder, args.format)
    dataset = at_resolution(getattr(splits, args.split), meta["resolution"])
    correct = total = 0
    for x, y in make_loader(dataset, config["train"]["eval_batch_size"], shuffle=False):
        z = ensemble_logits(run(x), meta["beta"])
        correct += int((z.argmax(1) == y).sum())
        total += len(y)
    top1 = 100.0 * correct / total
    print(json.dumps({"subnet": meta["subnet"], "folder": str(folder), "format": args.format, "dataset": data["name"],
                      "split": args.split, "images": total, "top1": round(top1, 4),
                      "params": meta["params"], "macs": meta["macs"]}))
