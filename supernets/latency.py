"""Latency of a subnet's parts and of whole subnets, measured on this machine.

A subnet's forward is a chain of parts: the stem (with the fixed first block), the active blocks,
the dense-skip adds and the exit heads. Each part of a space is timed alone on its own input shape,
so that a subnet's latency can be predicted as the sum of its parts (`nat2 latency` writes these
timings as a table). Within a stage, the later positions share channels, stride and input size, so
one timing per block configuration stands for all three of them.

Backends: `torch-cpu` and `torch-cuda` run the static modules eagerly in inference mode;
`onnxruntime` exports each module with the dynamo exporter and runs it on the CPU provider.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import platform
import statistics
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Callable, Iterator, NamedTuple

import torch
from torch import nn

from .arch import MBCONV, Block, Space
from .costs import stage_input_sizes
from .layers import Body, Plan
from .subnet import static_block

BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime")


class LatencyError(ValueError):
    """A latency backend cannot run here, or a latency table does not fit what it is used for."""


def block_name(block: Block) -> str:
    """k<kernel>e<expand>a<key>; blocks without an MBConv branch have no kernel or expand: a<key>."""
    return f"k{block.kernel}e{block.expand}a{block.key}" if block.key & MBCONV else f"a{block.key}"


def stem_key(width: float, resolution: int) -> str:
    return f"stem w{width:g} r{resolution}"


def block_key(width: float, resolution: int, stage: int, index: int, block: Block) -> str:
    """Stage and index are 0-based; the key names stage s+1 and the first or a later position."""
    return f"block w{width:g} r{resolution} s{stage + 1} {'first' if index == 0 else 'later'} {block_name(block)}"


def add_key(width: float, resolution: int, stage: int) -> str:
    """One dense-skip add of stage s+1 (block k of a stage adds k-2 earlier outputs)."""
    return f"add w{width:g} r{resolution} s{stage + 1}"


def head_key(width: float, resolution: int, exit_: int) -> str:
    return f"head w{width:g} r{resolution} x{exit_}"


def dense_adds(index: int) -> int:
    """The adds after the block at 0-based `index` of a dense stage: the outputs two or more back."""
    return max(0, index - 1)


def space_blocks(space: Space) -> list[Block]:
    """Every block configuration of a space; blocks without an MBConv branch once per key."""
    return [Block(k, e, a) for a in space.keys for k in (space.kernels if a & MBCONV else space.kernels[:1])
            for e in (space.expands if a & MBCONV else space.expands[:1])]


class Part(NamedTuple):
    key: str
    build: Callable[[], nn.Module]
    shape: tuple[int, int, int]  # the input's channels, height, width


class _Fixed(Body):
    """The stem, first block and exit heads of one width, built as a subnet builds them."""

    def __init__(self, width: float, exits: tuple[int, ...], n_classes: int) -> None:
        super().__init__()
        self.build_fixed(Plan(width), n_classes, exits, 0.0)


class _Stem(nn.Module):
    def __init__(self, fixed: _Fixed) -> None:
        super().__init__()
        self.stem, self.first_block = fixed.stem, fixed.first_block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.first_block(self.stem(x))


class _Add(nn.Module):
    def __init__(self, shape: tuple[int, int, int], batch: int) -> None:
        super().__init__()
        self.register_buffer("skip", torch.randn(batch, *shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.skip


def parts(space: Space, dense: bool, n_classes: int, batch: int = 1) -> Iterator[Part]:
    """Every part of the subnets of `space`, in a fixed order; modules are built when asked for
    (the dense-skip add's second operand for `batch` images)."""
    max_depth, max_exit = max(space.depths), max(space.exits)
    for width in space.widths:
        plan = Plan(width)
        for r in space.resolutions:
            sizes = stage_input_sizes(r)
            yield Part(stem_key(width, r), lambda w=width: _Stem(_Fixed(w, (), n_classes)), (3, r, r))
            for s in range(max_exit):
                for b in range(min(2, max_depth)):
                    pos, size = plan.position(s, b), sizes[s] if b == 0 else sizes[s + 1]
                    for block in space_blocks(space):
                        yield Part(block_key(width, r, s, b, block), lambda p=pos, k=block: static_block(p, k),
                                   (pos.in_channels, size, size))
                shape = (plan.stage_channels(s), sizes[s + 1], sizes[s + 1])
                if dense and dense_adds(max_depth - 1):
                    yield Part(add_key(width, r, s), lambda c=shape: _Add(c, batch), shape)
                if s + 1 in space.exits:
                    yield Part(head_key(width, r, s + 1),
                               lambda w=width, x=s + 1: _Fixed(w, (x,), n_classes).exits[str(x)], shape)


@dataclass(frozen=True)
class Timing:
    """How a module is timed: `batch` images, `threads` CPU threads, `warmup` calls first, then
    `rounds` timed rounds of as many calls as fill `round_ms` (so short parts are not lost in the
    timer's resolution); the median round gives the time of one call. Everything is timed in
    `passes` interleaved passes and the median pass is kept, so a burst of other work on the
    machine spoils one pass of a few parts, not a part. Parts timed alone keep their weights in
    cache, whole networks do not: `calibration` random subnets are also timed whole to calibrate
    the sum of parts (`nat2.latency.calibrate`)."""

    batch: int = 1
    threads: int = 1
    warmup: int = 5
    rounds: int = 7
    round_ms: float = 2.0
    passes: int = 3
    calibration: int = 20


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()
    except OSError:
        return platform.processor() or platform.machine()


class Meter:
    """Times modules on one backend of this machine."""

    def __init__(self, backend: str, timing: Timing = Timing()) -> None:
        if backend not in BACKENDS:
            raise LatencyError(f"backend {backend!r} is unknown; expected one of {', '.join(BACKENDS)}")
        if backend == "torch-cuda" and not torch.cuda.is_available():
            raise LatencyError("backend torch-cuda needs a CUDA GPU, and torch finds none on this machine; expected "
                               "torch-cpu or onnxruntime here")
        self.backend, self.timing = backend, timing
        self.device = torch.device("cuda" if backend == "torch-cuda" else "cpu")

    def describe(self) -> dict[str, Any]:
        """The machine and libraries the timings belong to."""
        info: dict[str, Any] = {"backend": self.backend, "machine": platform.machine(), "system": platform.system(),
                                "cpu": _cpu_name(), "torch": torch.__version__}
        if self.backend == "torch-cuda":
            info.update(gpu=torch.cuda.get_device_name(self.device), cuda=torch.version.cuda)
        else:
            info["threads"] = self.timing.threads
        if self.backend == "onnxruntime":
            info["onnxruntime"] = metadata.version("onnxruntime")
        return info

    def prepare(self, module: nn.Module, shape: tuple[int, ...]) -> Callable[[], Any]:
        """A call that runs one forward of `module` on a random batch of `shape` images."""
        x = torch.randn(self.timing.batch, *shape)
        module = module.eval()
        if self.backend != "onnxruntime":
            module, x = module.to(self.device), x.to(self.device)
            return lambda: module(x)
        import onnxruntime

        logging.getLogger("onnxscript").setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():  # the exporter prints its progress
            program = torch.onnx.export(module, (x,), None, dynamo=True, verbose=False)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = self.timing.threads, 1
        session = onnxruntime.InferenceSession(program.model_proto.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        return lambda: session.run(None, feed)

    def time(self, call: Callable[[], Any]) -> float:
        """Milliseconds of one call: the median of the timed rounds."""
        t = self.timing
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        threads = torch.get_num_threads()
        if self.backend == "torch-cpu":
            torch.set_num_threads(t.threads)
        try:
            return self._time(call, sync)
        finally:
            torch.set_num_threads(threads)

    def _time(self, call: Callable[[], Any], sync: Callable[[], None]) -> float:
        t = self.timing
        with torch.inference_mode():
            for _ in range(t.warmup):
                call()
            sync()
            start = time.perf_counter()
            call()
            sync()
            once = time.perf_counter() - start
            n = max(1, math.ceil(t.round_ms / 1e3 / max(once, 1e-7)))
            rounds = []
            for _ in range(t.rounds):
                start = time.perf_counter()
                for _ in range(n):
                    call()
                sync()
                rounds.append((time.perf_counter() - start) / n)
        return 1e3 * statistics.median(rounds)
