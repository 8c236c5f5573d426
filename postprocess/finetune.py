"""Two-step fine-tuning of a found subnet (the NAT2 paper's post-processing), with no test-set leak.

Step 1 trains on the training split and validates every epoch: it stops early when the
validation loss has not improved for `patience` epochs and remembers the epoch e with the best
validation top-1. Step 2 starts again from the supernet's weights and trains on train +
validation for exactly e epochs of the same per-epoch schedule; only then is the test split
scored, once. Early-exit subnets can be fine-tuned as AEP models: every exit up to theirs is
attached, trained with the AEP loss and predicted with the beta-weighted ensemble.
Both steps checkpoint every epoch and continue after a kill with the same result.
"""
from __future__ import annotations

import itertools
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.utils.data import ConcatDataset, Dataset
from tqdm import tqdm

from supernets.aep import SCHEMES, aep_loss, aep_weights, as_exits, ensemble_logits
from supernets.arch import Architecture
from supernets.checkpoint import atomic_save, load_checkpoint
from supernets.data import ImageSet, Splits, make_loader
from supernets.evaluation import EvalData
from supernets.settings import check_fields
from supernets.subnet import Subnet

log = logging.getLogger(__name__)
OPTIMIZERS = ("adamw", "sgd")
Validation = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


class FinetuneError(RuntimeError):
    """Fine-tuning cannot go on (a non-finite loss); the last good checkpoint is kept."""


@dataclass(frozen=True)
class FinetuneOptions:
    """`epochs` is both step 1's maximum and the length of the cosine schedule (per epoch), so
    step 2's e epochs follow step 1's learning rates exactly."""

    epochs: int = 150
    patience: int = 30
    lr: float = 1e-4
    weight_decay: float = 5e-4
    optimizer: str = "adamw"
    momentum: float = 0.9
    batch_size: int = 64
    eval_batch_size: int = 256
    label_smoothing: float = 0.0
    aep_scheme: str = "unif"
    seed: int = 0
    num_workers: int = 0
    eval_cache_mb: float | None = 2048

    def __post_init__(self) -> None:
        check_fields(self, "finetune", integers={"seed": 0, "num_workers": 0}
                     | dict.fromkeys(("epochs", "patience", "batch_size", "eval_batch_size"), 1),
                     numbers={"weight_decay": (0, math.inf), "momentum": (0, 1), "eval_cache_mb": (0, math.inf)},
                     positive=("lr",), fractions=("label_smoothing",), nullable=("eval_cache_mb",),
                     choices={"optimizer": OPTIMIZERS, "aep_scheme": SCHEMES})


def at_resolution(dataset: Dataset, resolution: int) -> Dataset:
    """A view of an ImageSet (or a concatenation of them) that yields images at `resolution`."""
    if isinstance(dataset, ConcatDataset):
        return ConcatDataset([at_resolution(d, resolution) for d in dataset.datasets])
    if not isinstance(dataset, ImageSet):
        raise TypeError(f"expected an ImageSet or ConcatDataset of them; got {type(dataset).__name__}")
    view = dataset.subset(range(len(dataset)))
    view.resolution = resolution
    return view


def train_and_val(splits: Splits) -> Dataset:
    """Step 2's training data: the training split plus the validation images, both augmented."""
    val = splits.val.subset(range(len(splits.val)), transform_factory=splits.train.transform_factory)
    return ConcatDataset([splits.train, val])


def n_exits(model: nn.Module) -> int:
    return len(model.exit_list) if isinstance(model, Subnet) else 1


@torch.no_grad()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
            beta: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-exit logits of shape exits x N x classes, labels) of `model` in eval mode."""
    was_training = model.training
    model.eval()
    outs, labels = [], []
    for x, y in batches:
        outs.append(torch.stack(as_exits(model(x))))
        labels.append(y)
    model.train(was_training)
    if len(beta) != outs[0].shape[0]:
        raise ValueError(f"{outs[0].shape[0]} exits but {len(beta)} beta weights")
    return torch.cat(outs, 1).cpu(), torch.cat(labels).cpu()


def scores(logits: torch.Tensor, labels: torch.Tensor, beta: Sequence[float]) -> dict[str, float]:
    """Top-1 (%) and cross-entropy of the beta-weighted ensemble of per-exit `logits`."""
    z = ensemble_logits(tuple(logits), beta)
    return {"top1": 100.0 * (z.argmax(1) == labels).double().mean().item(),
            "loss": F.cross_entropy(z, labels).item()}


def prune_exits(logits: torch.Tensor, labels: torch.Tensor, beta: Sequence[float],
                exits: Sequence[int]) -> tuple[list[int], list[float], float]:
    """AEP pruning: the subset of exits whose renormalised ensemble is most accurate on these
    (validation) images; ties go to the cheaper subset (earlier last exit, then fewer exits).
    Returns (kept exits, their beta, top-1)."""
    best: tuple[float, int, int] | None = None
    chosen: tuple[list[int], list[float], float] = ([], [], 0.0)
    for r in range(1, len(exits) + 1):
        for subset in itertools.combinations(range(len(exits)), r):
            weights = [beta[i] for i in subset]
            weights = [w / sum(weights) for w in weights]
            top1 = scores(logits[list(subset)], labels, weights)["top1"]
            key = (-top1, exits[subset[-1]], len(subset))
            if best is None or key < best:
                best, chosen = key, ([exits[i] for i in subset], weights, top1)
    return chosen


def keep_exits(model: Subnet, kept: Sequence[int]) -> Subnet:
    """The subnet cut after the last kept exit, with only the kept exit heads (AEP pruning)."""
    arch = model.arch
    cut = Architecture(arch.resolution, arch.width, arch.stages[:max(kept)])
    pruned = Subnet(**{**model.config, "arch": cut.to_dict(), "exits": list(kept)})
    missing = pruned.load_state_dict(model.state_dict(), strict=False).missing_keys
    if missing:
        raise FinetuneError(f"pruned subnet misses weights {missing[:3]}...")
    return pruned.to(next(model.parameters()).device)


class Finetuner:
    """One fine-tuning step of one model: epochs of training, optional validation, checkpoints.

    `validation` None trains blind for exactly `epochs` (step 2); otherwise it gives the validation
    batches, whose loss and top-1 are logged every epoch and drive early stopping (step 1).
    """

    def __init__(self, model: nn.Module, train: Dataset, resolution: int, options: FinetuneOptions,
                 out_dir: Path, device: torch.device, validation: Validation | None = None, name: str = "") -> None:
        self.model, self.options, self.dir, self.device = model.to(device), options, out_dir, device
        self.resolution, self.validation, self.name = resolution, validation, name or out_dir.name
        self.train = at_resolution(train, resolution)
        self.alpha, self.beta = aep_weights(options.aep_scheme, n_exits(model))
        self.optimizer = create_optimizer_v2(
            model, options.optimizer if options.optimizer == "adamw" else "momentum", lr=options.lr,
            weight_decay=options.weight_decay, **({"momentum": options.momentum} if options.optimizer == "sgd" else {}))
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=options.epochs, lr_min=options.lr * 1e-3,
                                           t_in_epochs=True)

    def _resume(self) -> tuple[int, list[dict[str, Any]]]:
        path = self.dir / "last.pt"
        if not path.exists():
            return 0, []
        state = load_checkpoint(path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        log.info("%s: continuing from %s after epoch %d", self.name, path, state["epoch"])
        return state["epoch"], state["history"]

    def _epoch(self, epoch: int) -> float:
        o = self.options
        torch.manual_seed(o.seed * 100_003 + epoch)
        self.model.train()
        loader = make_loader(self.train, o.batch_size, shuffle=True, seed=o.seed * 100_003 + epoch,
                             num_workers=o.num_workers, drop_last=len(self.train) > o.batch_size)
        total, n = 0.0, 0
        for x, y in loader:
            x, y = x.to(self.device), y.to(self.device)
            loss = aep_loss(self.model(x), y, self.alpha, o.label_smoothing)
            if not torch.isfinite(loss):
                last = self.dir / "last.pt"
                kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint was written yet"
                raise FinetuneError(f"{self.name}: non-finite loss {loss.item()} in epoch {epoch + 1}; {kept}. "
                                    "Lower finetune.lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total, n = total + loss.item(), n + 1
        return total / max(n, 1)

    def stopped(self, history: list[dict[str, Any]]) -> bool:
        """Early stopping: the validation loss has not improved in the last `patience` epochs."""
        if self.validation is None or not history:
            return False
        losses = [row["val_loss"] for row in history]
        return len(losses) - 1 - losses.index(min(losses)) >= self.options.patience

    def run(self, epochs: int) -> list[dict[str, Any]]:
        """Train up to `epochs` epochs (fewer if step 1 stops early); returns the history."""
        start, history = self._resume()
        self.dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(range(start, epochs), desc=self.name, leave=False, disable=not sys.stderr.isatty())
        for epoch in bar:
            if self.stopped(history):
                break
            t0 = time.time()
            self.scheduler.step(epoch)
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            row["train_loss"] = self._epoch(epoch)
            if self.validation is not None:
                val = scores(*predict(self.model, self.validation(), self.beta), self.beta)
                row.update(val_loss=val["loss"], val_top1=val["top1"])
                if not math.isfinite(val["loss"]):
                    raise FinetuneError(f"{self.name}: validation loss is {val['loss']} after epoch {epoch + 1}")
                if val["top1"] > max((r["val_top1"] for r in history), default=-1.0):
                    atomic_save({"epoch": epoch + 1, "model": self.model.state_dict()}, self.dir / "best.pt")
            row["seconds"] = time.time() - t0
            history = history + [row]
            atomic_save({"epoch": epoch + 1, "history": history, "model": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict()}, self.dir / "last.pt")
            bar.set_postfix({k: f"{v:.3f}" for k, v in row.items() if k in ("train_loss", "val_loss", "val_top1")})
            log.info("%s epoch %d: %s", self.name, epoch + 1,
                     ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "seconds")))
        return history


def best_epoch(history: list[dict[str, Any]]) -> int:
    """The epoch (1-based) with the best validation top-1; the earliest on ties."""
    if not history:
        raise FinetuneError("step 1 has no epochs to choose from")
    top1 = [row["val_top1"] for row in history]
    return top1.index(max(top1)) + 1


def two_step(build: Callable[[], nn.Module], splits: Splits, resolution: int, options: FinetuneOptions,
             out_dir: Path, device: torch.device, prune: bool = False,
             on_test: Callable[[], None] | None = None) -> tuple[dict[str, Any], nn.Module]:
    """Step 1 (train, validate, early stop, best epoch e), step 2 (a fresh `build()` trained on
    train + validation for exactly e epochs), then one test evaluation of the final model.
    Returns (figures, final model); `on_test` is called just before the test split is read."""
    before = build().to(device)
    alpha, beta = aep_weights(options.aep_scheme, n_exits(before))
    exits = list(before.exit_list) if isinstance(before, Subnet) else [1]
    data = EvalData(splits, device, budget_mb=options.eval_cache_mb, num_workers=options.num_workers)

    def validation() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return data.batches("val", resolution, options.eval_batch_size)
    val_before = scores(*predict(before, validation(), beta), beta)
    label = f"{out_dir.parent.name}/{out_dir.name}"
    step1 = Finetuner(before, splits.train, resolution, options, out_dir / "step1", device, validation,
                      name=f"{label} step 1")
    history = step1.run(options.epochs)
    e = best_epoch(history)
    kept, kept_beta = exits, beta
    if prune and len(exits) > 1:
        step1.model.load_state_dict(load_checkpoint(out_dir / "step1" / "best.pt")["model"])
        kept, kept_beta, _ = prune_exits(*predict(step1.model, validation(), beta), beta, exits)
    step2 = Finetuner(build(), train_and_val(splits), resolution, options, out_dir / "step2", device,
                      name=f"{label} step 2")
    trained = step2.run(e)
    if len(trained) != e:
        raise FinetuneError(f"step 2 ran {len(trained)} epochs; expected exactly {e}")
    if on_test is not None:
        on_test()
    model = keep_exits(step2.model, kept) if kept != exits else step2.model
    test = scores(*predict(model, data.batches("test", resolution, options.eval_batch_size), kept_beta), kept_beta)
    result = {"exits": exits, "alpha": alpha, "beta": beta, "kept_exits": kept, "kept_beta": kept_beta,
              "val_top1_before": val_before["top1"], "best_epoch": e, "step1_epochs": len(history),
              "val_top1_step1": history[e - 1]["val_top1"], "step2_epochs": len(trained), "test_top1": test["top1"]}
    return result, model


def save_finetuned(model: Subnet, path: str | Path) -> None:
    """The fine-tuned model as its Subnet config and weights (what `load_finetuned` rebuilds)."""
    atomic_save({"config": model.config, "model": model.state_dict()}, path)


def load_finetuned(path: str | Path) -> Subnet:
    """A model written by `save_finetuned` (CPU, eval mode)."""
    state = load_checkpoint(path)
    model = Subnet(**state["config"])
    model.load_state_dict(state["model"])
    return model.eval()
