"""Scoring encodings with the supernets' shared weights: validation top-1, params, MACs (and latency
from a latency table, when given). Results are
appended to a JSONL file as they come, so a killed evaluation of thousands of subnets resumes where
it stopped. Under torchrun, rank r scores rows r, r + world, ...; rank 0 writes."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch.distributed as dist
from tqdm import tqdm

from supernets import Supernet, Splits
from supernets.distributed import Dist
from supernets.evaluation import EvalData, subnet_top1

from .archive import Record
from ..files import append_jsonl, read_jsonl
from ..latency import LatencyTable
from ..space import SearchSpace, encoding_key

log = logging.getLogger(__name__)


class Evaluator:
    """Validation (or, for the final report only, test) top-1 of encodings after BN recalibration.
    The images are prepared once per resolution (`EvalData`, within `cache_mb`) and reused for every
    subnet; on CUDA the forwards run in bf16 autocast and channels_last unless `bf16` says otherwise."""

    def __init__(self, space: SearchSpace, supernets: dict[float, Supernet], splits: Splits, n_classes: int, *,
                 ctx: Dist = Dist(), batch_size: int = 256, calibration_batch: int = 100, num_workers: int = 0,
                 cache_mb: float | None = 2048, bf16: bool | None = None, latency: LatencyTable | None = None) -> None:
        self.space, self.supernets, self.splits, self.n_classes = space, supernets, splits, n_classes
        self.latency = latency
        self.ctx, self.batch_size, self.calibration_batch = ctx, batch_size, calibration_batch
        self.data = EvalData(splits, ctx.device, budget_mb=cache_mb, num_workers=num_workers)
        cuda = ctx.device.type == "cuda"
        self.bf16, self.channels_last = cuda if bf16 is None else bf16, cuda

    def top1(self, encoding: Sequence[int], split: str = "val") -> float:
        """Top-1 (%) of one encoding on `split` ("val", or "test" for the final report)."""
        arch = self.space.decode(np.asarray(encoding))
        correct, total = subnet_top1(self.supernets[arch.width], arch, self.data, split, batch_size=self.batch_size,
                                     calibration_batch=self.calibration_batch, bf16=self.bf16,
                                     channels_last=self.channels_last)
        return 100.0 * correct / total

    def evaluate(self, X: np.ndarray, iteration: int, cache: Path | None = None, desc: str = "evaluate",
                 split: str = "val", extra: Sequence[dict[str, Any]] | None = None) -> list[Record]:
        """Records (encoding, top1, params, MACs, [latency,] iteration) for the rows of `X`, in order. Rows already
        in `cache` (JSONL) are not scored again, new ones are appended to it; `extra` adds fields per row."""
        X = np.asarray(X, dtype=np.int64).reshape(-1, self.space.n_var)
        extras = extra if extra is not None else [{}] * len(X)
        done = read_jsonl(cache) if cache is not None else {}
        todo = [i for i, x in enumerate(X) if encoding_key(x) not in done]
        params, macs = self.space.costs(X, self.n_classes) if len(X) else (np.zeros(0), np.zeros(0))
        latency = {"latency": self.latency.predict(self.space, X)} if self.latency is not None and len(X) else {}
        world, rank = self.ctx.world_size, self.ctx.rank
        bar = tqdm(total=len(todo), desc=desc, leave=False, disable=not (self.ctx.is_main and sys.stderr.isatty()))
        for start in range(0, len(todo), world):
            chunk = todo[start:start + world]
            mine = {i: self.top1(X[i], split) for i in chunk[rank:rank + 1]}
            gathered: list[dict[int, float]] = [mine]
            if self.ctx.enabled:
                gathered = [{} for _ in range(world)]
                dist.all_gather_object(gathered, mine)
            new = {i: {"encoding": [int(g) for g in X[i]], "top1": top1, "params": int(params[i]), "macs": int(macs[i]),
                       **{k: float(v[i]) for k, v in latency.items()}, "iteration": iteration, **extras[i]}
                   for part in gathered for i, top1 in part.items()}
            done.update((encoding_key(X[i]), record) for i, record in new.items())
            if cache is not None and self.ctx.is_main:
                append_jsonl(cache, new.values())
            bar.update(len(chunk))
        bar.close()
        return [{**done[encoding_key(x)], "iteration": iteration, **extras[i]} for i, x in enumerate(X)]
