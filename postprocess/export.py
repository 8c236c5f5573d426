"""Export of a fine-tuned subnet: a folder a user can ship without this project's search code.

    <subnet>/arch.json           Subnet config: `Subnet(**config)` rebuilds the module
    <subnet>/weights.safetensors its state dict
    <subnet>/model.pt2           torch.export program (dynamic batch)
    <subnet>/model.onnx          ONNX graph from the dynamo exporter (dynamic batch)
    <subnet>/metadata.json       accuracy, params, MACs, resolution, exits, data, normalisation, parity

An early-exit model returns every active exit's logits (outputs `exit<i>`); its prediction is the
beta-weighted sum recorded in the metadata. Each export is checked: the rebuilt module, the .pt2
program and onnxruntime must agree with the in-memory model within a tolerance. The folder is
written under a temporary name and renamed into place, so it is either complete or absent.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from supernets.aep import as_exits
from supernets.subnet import Subnet

FILES = ("arch.json", "weights.safetensors", "model.pt2", "model.onnx", "metadata.json")
# What a reader of metadata.json may count on (the exporter's caller adds more).
METADATA_FIELDS = ("subnet", "arch", "resolution", "exits", "beta", "params", "macs", "accuracy", "dataset",
                   "n_classes", "input", "outputs")


class ExportError(RuntimeError):
    """An export is missing, incomplete or does not reproduce the model it came from."""


def load_subnet(folder: str | Path) -> Subnet:
    """Rebuild an exported subnet (eval mode) from arch.json + weights.safetensors."""
    folder = Path(folder)
    for name in ("arch.json", "weights.safetensors"):
        if not (folder / name).is_file():
            raise ExportError(f"{folder / name} does not exist; expected a folder written by `nat2 export` "
                              f"holding {', '.join(FILES)}")
    model = _loaded(folder / "arch.json", lambda path: Subnet(**json.loads(path.read_text())))
    _loaded(folder / "weights.safetensors", lambda path: model.load_state_dict(load_file(path)))
    return model.eval()


def _loaded(path: Path, load: Callable[[Path], Any]) -> Any:
    """`load(path)`, any failure (each format's library raises its own kinds) as an ExportError naming the file."""
    try:
        return load(path)
    except Exception as err:
        problem = " ".join(str(err).split())[:300]
        raise ExportError(f"{path} cannot be loaded ({type(err).__name__}: {problem}); export the subnet again") \
            from None


def read_metadata(folder: str | Path) -> dict[str, Any] | None:
    """The metadata of the export in `folder`, or None when `folder` holds no export."""
    path = Path(folder) / "metadata.json"
    if not path.is_file():
        return None
    meta = _loaded(path, lambda p: json.loads(p.read_text()))
    missing = [key for key in METADATA_FIELDS if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise ExportError(f"{path} lacks {', '.join(map(repr, missing))}; export the subnet again")
    return meta


def exit_logits(folder: str | Path, fmt: str = "torch") -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """A function image batch -> per-exit logits through one format of an export: "torch" (the
    rebuilt module), "pt2" (the exported program) or "onnx" (onnxruntime on the CPU)."""
    folder = Path(folder)
    if fmt == "onnx":
        session = _loaded(folder / "model.onnx",
                          lambda path: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]))
        name = session.get_inputs()[0].name
        return lambda x: [torch.from_numpy(z) for z in session.run(None, {name: x.numpy()})]
    model = load_subnet(folder) if fmt == "torch" else _loaded(folder / "model.pt2", _program)
    return lambda x: list(as_exits(model(x)))


def _program(path: Path) -> nn.Module:
    """The module of a .pt2 program; torch.export's own traceback of a damaged file is not logged
    (the ExportError names the file)."""
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return torch.export.load(path).module()
    finally:
        logger.setLevel(level)


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    if len(a) != len(b) or any(p.shape != q.shape for p, q in zip(a, b)):
        return float("inf")
    return max(float(np.abs(p - q).max()) for p, q in zip(a, b))


def export_subnet(model: Subnet, folder: str | Path, metadata: dict[str, Any], *, tolerance: float = 1e-4,
                  check_batch: int = 4, seed: int = 0) -> dict[str, float]:
    """Write the five files of an export to `folder` and check them; returns the parity figures
    (max abs difference of each format's logits from the in-memory model's)."""
    folder = Path(folder)
    model = model.cpu().eval()
    resolution = model.arch.resolution
    x = torch.randn(check_batch, 3, resolution, resolution, generator=torch.Generator().manual_seed(seed))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        (tmp / "arch.json").write_text(json.dumps(model.config, indent=2))
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "weights.safetensors")
        batch = torch.export.Dim("batch", min=1, max=4096)
        program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
        torch.export.save(program, tmp / "model.pt2")
        names = [f"exit{e}" for e in model.exit_list]
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
            torch.onnx.export(model, (x,), tmp / "model.onnx", dynamo=True, dynamic_shapes=({0: batch},),
                              input_names=["image"], output_names=names, external_data=False, verbose=False)
        parity = check_export(model, tmp, x[:max(1, check_batch // 2)])
        bad = {k: v for k, v in parity.items() if not v <= tolerance}
        if bad:
            raise ExportError(f"export of {folder.name} does not reproduce the model: max abs differences {bad} "
                              f"exceed {tolerance}")
        (tmp / "metadata.json").write_text(json.dumps({**metadata, "outputs": names, "parity": parity}, indent=2))
        for path in tmp.iterdir():
            path.chmod(0o644)
        tmp.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return parity


def check_export(model: nn.Module, folder: Path, x: torch.Tensor) -> dict[str, float]:
    """Max abs difference from `model` of the rebuilt module, the .pt2 program and onnxruntime,
    on a batch size other than the one traced (the batch axis must be dynamic)."""
    with torch.no_grad():
        reference = [z.cpu().numpy() for z in as_exits(model(x))]
        return {key: _max_diff(reference, [z.numpy() for z in exit_logits(folder, fmt)(x)])
                for key, fmt in (("rebuilt", "torch"), ("pt2", "pt2"), ("onnx", "onnx"))}
