"""Checkpoints of plain tensors and primitives, written atomically (a run killed while writing
keeps its previous checkpoint), read with clear errors."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

import torch

from .ofa_compat import CheckpointError, load_ofa_state_dict
from .supernet import Supernet

FORMAT = "nat2-supernet"


@contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """A file opened beside `path` and renamed over it once the block ends, so a kill leaves the
    old version or the new one, never half a file (also used for the run directory's JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save through `atomic_write`."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on CPU with `weights_only=True`; a missing or unreadable file raises
    CheckpointError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a damaged file fails anywhere in the unpickler, with any kind of error
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); "
                              "expected a file written by torch.save (nat2 or ofa format)") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}; expected a mapping")
    return state


def supernet_meta(supernet: Supernet) -> dict[str, Any]:
    return {"n_classes": supernet.n_classes, "width": supernet.width, "dense": supernet.dense,
            "parallel": supernet.parallel, "early_exits": supernet.early_exits}


def check_meta(path: Path, state: dict[str, Any], supernet: Supernet, *, classes: bool = True) -> None:
    """Raise CheckpointError when `state` was written for another kind of supernet."""
    if state.get("format") != FORMAT or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} is not a nat2 supernet checkpoint (no format={FORMAT!r} and model)")
    want = supernet_meta(supernet)
    have = state.get("supernet", {})
    diff = {k: (have.get(k), want[k]) for k in want if (classes or k != "n_classes") and have.get(k) != want[k]}
    if diff:
        raise CheckpointError(f"checkpoint {path} was written for another supernet: "
                              + ", ".join(f"{k} = {a!r} (expected {b!r})" for k, (a, b) in diff.items()))


def load_source(supernet: Supernet, path: str | Path) -> str:
    """Start `supernet` from a source checkpoint (nat2 or `ofa` OFAMobileNetV3 format); returns the
    format recognised. Classifiers of another class count stay freshly initialised (new dataset)."""
    path = Path(path)
    state = load_checkpoint(path)
    if state.get("format") == FORMAT:
        check_meta(path, state, supernet, classes=False)
        ours = supernet.state_dict()
        model = {k: v for k, v in state["model"].items() if not (".classifier." in k and ours.get(k) is not None
                                                                  and ours[k].shape != v.shape)}
        missing, unexpected = supernet.load_state_dict(model, strict=False)
        missing = [k for k in missing if ".classifier." not in k]
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} does not fit this supernet: missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}")
        return FORMAT
    model = state.get("state_dict", state)
    if not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"checkpoint {path} is neither a nat2 checkpoint nor an ofa state dict "
                              "(expected tensors, or a mapping with 'state_dict')")
    model = {k: v for k, v in model.items() if not (k.startswith("classifier.") and v.shape[0] != supernet.n_classes)}
    load_ofa_state_dict(supernet, model)
    return "ofa"
