"""`nat2 evaluate`: top-1 of an exported subnet on a split of the configured dataset, through
PyTorch, the .pt2 program or onnxruntime."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from postprocess import FILES, ExportError, exit_logits, read_metadata
from postprocess.finetune import at_resolution
from supernets.aep import ensemble_logits
from supernets.data import make_loader

from ..choices import FORMATS, SPLITS
from ..config import Config
from ..rundir import RunDir


def exported(run_dir: RunDir, subnet: str) -> tuple[Path, dict]:
    """The export named `subnet` in the run directory, or the export folder `subnet`, with its metadata."""
    for folder in (Path(subnet), run_dir.export(subnet)):
        meta = read_metadata(folder)
        if meta is not None:
            return folder, meta
    names = ", ".join(run_dir.exports()) or "(none: run `nat2 export` first)"
    raise ExportError(f"no exported subnet {subnet!r} in {run_dir.stage('export')}; expected one of {names} or an "
                      f"export folder holding {', '.join(FILES)}")


@torch.no_grad()
def run(config: Config, run_dir: RunDir, subnet: str, split: str = "val", fmt: str = "torch") -> None:
    """Print the top-1 of an exported subnet on `split` as one JSON line."""
    if fmt not in FORMATS or split not in SPLITS:
        raise ExportError(f"--format {fmt} --split {split}; expected one of {FORMATS} and {SPLITS}")
    folder, meta = exported(run_dir, subnet)
    data = config.data
    if meta["dataset"] != data.name:
        raise ExportError(f"{folder} was trained on {meta['dataset']}, but the config's data.name is {data.name}; "
                          f"expected data.name = {meta['dataset']} (with its data.root)")
    splits = data.load()
    if splits.n_classes != meta["n_classes"]:
        raise ExportError(f"{folder} classifies {meta['n_classes']} classes but {data.name} has {splits.n_classes}")
    logits = exit_logits(folder, fmt)
    if split == "val" and meta.get("finetune", {}).get("best_epoch"):
        print(f"nat2 evaluate: warning: step 2 of fine-tuning trained {meta['subnet']} on the validation images; "
              "its val top-1 is optimistic (use --split test for the final figure)", file=sys.stderr)
    dataset = at_resolution(getattr(splits, split), meta["resolution"])
    correct = total = 0
    for x, y in make_loader(dataset, config.train.eval_batch_size, shuffle=False):
        z = ensemble_logits(logits(x), meta["beta"])
        correct += int((z.argmax(1) == y).sum())
        total += len(y)
    top1 = 100.0 * correct / total
    print(json.dumps({"subnet": meta["subnet"], "folder": str(folder), "format": fmt, "dataset": data.name,
                      "split": split, "images": total, "top1": round(top1, 4),
                      "params": meta["params"], "macs": meta["macs"]}))

