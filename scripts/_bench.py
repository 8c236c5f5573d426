"""The benchmarks' timer (scripts/ is on sys.path when a script runs)."""
from __future__ import annotations

import time
from typing import Any, Callable


def timed(fn: Callable[..., Any], *args: Any, sync: Callable[[], None] = lambda: None) -> tuple[float, Any]:
    """Seconds `fn(*args)` takes and what it returns; `sync` (torch.cuda.synchronize on a GPU) runs
    before and after, so that the time covers the kernels `fn` queues, not just their launch."""
    sync()
    start = time.perf_counter()
    out = fn(*args)
    sync()
    return time.perf_counter() - start, out
