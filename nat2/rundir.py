"""The run directory: resolved config, environment record, logs; the contract between stages.

    runs/<name>/config.yaml  env.json  logs/  supernet/  search/  final/
"""
from __future__ import annotations

import json
import logging
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from .config import ConfigError
from .jsonio import write_text

# Keys that may change between a run and its resume: they do not change the results.
RUNTIME_KEYS = {("train", "num_workers"), ("train", "device"), ("train", "eval_batch_size")}
PACKAGES = ("torch", "torchvision", "timm", "ofa", "pymoo", "lightgbm", "catboost", "scikit-learn", "numpy")


def run_dir_of(config: dict[str, Any], config_path: str | Path) -> Path:
    """`run.dir`, or runs/<config file name without extension>."""
    return Path(config["run"]["dir"] or Path("runs") / Path(config_path).stem)


def config_differences(old: Any, new: Any, where: str = "", ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ, except runtime keys, `run` and the sections in `ignore`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{where}.{key}" if where else str(key)
            if tuple(path.split(".")) in RUNTIME_KEYS or key == "run" or path in ignore:
                continue
            out += config_differences(old.get(key), new.get(key), path, ignore)
        return out
    return [] if old == new else [where]


def prepare(run_dir: Path, config: dict[str, Any], stage: str, resume: bool, write: bool = True) -> None:
    """Check that `stage` may start (fresh) or resume in `run_dir`, then record config and env.

    Starting over a stage that already has results, or resuming with a different config, is an
    error: nothing a previous run wrote is overwritten by accident.
    """
    saved = run_dir / "config.yaml"
    stage_dir = run_dir / stage
    if resume:
        if not stage_dir.exists():
            raise ConfigError(f"--resume: {stage_dir} does not exist; run without --resume to start this stage")
        if saved.exists():
            diff = config_differences(yaml.safe_load(saved.read_text()), config)
            if diff:
                raise ConfigError(f"--resume: the config differs from {saved} at {', '.join(diff)}; "
                                  "resume with the run's own config")
    elif stage_dir.exists() and any(stage_dir.iterdir()):
        raise ConfigError(f"{stage_dir} already holds results; pass --resume to continue it, or set run.dir "
                          "to start a new run")
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_text(saved, yaml.safe_dump(config, sort_keys=False))
        write_text(run_dir / "env.json", json.dumps(environment(), indent=2))


def environment() -> dict[str, Any]:
    """Versions, git SHA of this source tree, devices: what a reader needs to repeat a run."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_sha": sha, "cuda_devices": devices, "cpu_threads": torch.get_num_threads(),
            "argv": sys.argv}


def setup_logging(run_dir: Path, command: str, is_main: bool) -> None:
    """INFO to the console and to logs/<command>.log on rank 0; warnings only on other ranks."""
    root = logging.getLogger()
    root.setLevel(logging.INFO if is_main else logging.WARNING)
    for handler in list(root.handlers):
        if getattr(handler, "_nat2", False):
            root.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if is_main:
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "logs" / f"{command}.log"))
    for chatty in ("onnxscript", "onnx_ir"):  # the ONNX exporter logs every optimisation pass
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for handler in handlers:
        handler.setFormatter(fmt)
        handler._nat2 = True
        root.addHandler(handler)
