"""The run directory, the contract between stages and with the user. `RunDir` is the only code
that knows its folder and file names:

    runs/<name>/config.yaml  env.json                   the resolved config; versions, git SHA, devices
    supernet/w<width>/<phase>/{last,best}.pt ...         supernet training, one folder per width and phase
    search/state.json  search/iter_<k>/...  search/{curves.png,final.json,front.png,final_test.jsonl}
    search/adapt/w<width>/                               the adaptation checkpoint
    tfsearch/{metrics.jsonl,state_*.json,result.json,front.png,warm_start.json}
    select/selected.json                                 the subnets that go on
    finetune/<subnet>/<variant>/{step1,step2,result.json,final.pt}
    final/<export>/                                      arch.json, weights, .pt2, ONNX, metadata.json
    latency/<backend>.json  latency/check_<backend>.{json,png}   latency tables and their checks
    logs/<command>.log  logs/tensorboard/w<width>/
"""
from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import yaml

from postprocess import read_metadata

from ..files import FileFormatError, read_json, require_fields, write_json, write_text
from .choices import BACKENDS
from .config import Config, ConfigError, load_config

# Keys that may change between a run and its resume: they do not change the results.
RUNTIME_KEYS = {("train", "num_workers"), ("train", "device"), ("train", "eval_batch_size"),
                *(("latency", k) for k in ("batch", "threads", "warmup", "rounds", "round_ms", "passes", "calibration",
                                            "seed"))}
PACKAGES = ("torch", "torchvision", "timm", "ofa", "pymoo", "lightgbm", "catboost", "scikit-learn", "numpy")
# Stage -> its folder; a stage "has results" when its folder is not empty.
STAGE_FOLDERS = {"supernet": "supernet", "search": "search", "tfsearch": "tfsearch", "select": "select",
                 "finetune": "finetune", "export": "final", "latency": "latency"}


# Stage -> the command (and flags) that writes its files again.
RECOVERY = {"search": ("search", " --resume"), "tfsearch": ("search", " --resume --strategy <its strategy>"),
            "select": ("select", ""), "finetune": ("finetune", " --resume"),
            "latency": ("latency", " --backend <its backend>")}    # a table's file name is its backend
# What later stages read from the selection's rows and from a fine-tuning result.
SELECTED_FIELDS = ("id", "encoding", "val_top1")
RESULT_FIELDS = ("id", "variant", "kept_exits", "kept_beta", "val_top1_before", "val_top1_step1", "best_epoch",
                 "step1_epochs", "test_top1", "params", "macs", "search_val_top1")


class RunDirError(ValueError):
    """A file a stage needs is not in the run directory yet (an earlier stage has not run)."""


def _width(width: float) -> str:
    return f"w{width:.1f}"


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"<folder>/{name}")


@dataclass(frozen=True)
class SearchFolder:
    """The NAT2 search's files (`nat2.search.SearchFiles`)."""

    path: Path
    state, curves, final, front_plot, final_test = map(_file, ("state.json", "curves.png", "final.json", "front.png",
                                                               "final_test.jsonl"))

    def iteration(self, k: int) -> Path:
        return self.path / f"iter_{k}"

    def archive(self, k: int) -> Path:
        return self.iteration(k) / "archive.json"

    def stats(self, k: int) -> Path:
        return self.iteration(k) / "stats.json"

    def pareto(self, k: int) -> Path:
        return self.iteration(k) / "pareto.png"

    def evaluations(self, k: int, kind: str) -> Path:
        return self.iteration(k) / f"{kind}.jsonl"


@dataclass(frozen=True)
class TrainingFreeFolder:
    """The training-free search's files (`nat2.rbifa.TrainingFreeFiles`)."""

    path: Path
    metrics, result, front_plot, warm_start = map(_file, ("metrics.jsonl", "result.json", "front.png",
                                                          "warm_start.json"))

    def state(self, wp: float | None) -> Path:
        return self.path / ("state_pfifa.json" if wp is None else f"state_wp{wp:g}.json")


@dataclass(frozen=True)
class RunDir:
    """One run's folder: where each stage reads what the previous one wrote."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @classmethod
    def of(cls, config: Config, source: str | Path) -> RunDir:
        """`run.dir`, or runs/<name of the config file without extension>."""
        return cls(config.run.dir or Path("runs") / Path(source).stem)

    config_file, env_file = _file("config.yaml"), _file("env.json")

    def log_file(self, command: str) -> Path:
        return self.path / "logs" / f"{command}.log"

    def log_error(self, command: str, message: str) -> None:
        """Append an error to the command's log, when this is a run directory."""
        if self.config_file.is_file():
            path = self.log_file(command)
            path.parent.mkdir(exist_ok=True)
            with path.open("a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} ERROR {message}\n")

    def is_run_config(self, path: Path) -> bool:
        """Whether `path` is the config.yaml of this run directory (passing it means this run)."""
        return path == self.config_file and self.env_file.is_file()

    def recovery(self, path: Path) -> str:
        """How to recover from a damaged file of this run directory: run the stage that writes it
        (for a file of a search iteration, that iteration and the ones after it)."""
        if path.parent.parent == self.stage("search") and path.parent.name.startswith("iter_"):
            return (f"restore it, or delete {path.parent} and the later iterations, then run `nat2 search "
                    f"{self.path} --resume` to run them again")
        for stage, (command, flags) in RECOVERY.items():
            if self.stage(stage) in path.parents:
                flags = flags.replace("<its backend>", path.stem)
                return f"restore it, or delete it and run `nat2 {command} {self.path}{flags}` to write it again"
        return "restore it from a copy"

    def tensorboard(self, width: float) -> Path:
        return self.path / "logs" / "tensorboard" / _width(width)

    def saved_config(self) -> dict[str, Any] | None:
        """The config recorded by the last stage that ran here (a plain mapping), if any, with the
        defaults of keys added to nat2 since it was written (so such a run still resumes)."""
        return load_config(self.config_file).to_dict() if self.config_file.is_file() else None

    def stage(self, name: str) -> Path:
        """The folder of stage `name` (a key of STAGE_FOLDERS)."""
        return self.path / STAGE_FOLDERS[name]

    def has_results(self, name: str) -> bool:
        folder = self.stage(name)
        return folder.is_dir() and any(folder.iterdir())

    def prepare(self, config: Config, stage: str, resume: bool, write: bool = True) -> None:
        """Check that `stage` may start (fresh) or resume here, then record config and environment.

        Starting over a stage that already has results, or resuming with a different config, is an
        error: nothing a previous run wrote is overwritten by accident.
        """
        folder = self.stage(stage)
        if resume:
            if not folder.exists():
                raise ConfigError(f"--resume: {folder} does not exist; run without --resume to start this stage")
            saved = self.saved_config()
            unused = () if "latency" in config.search.objectives else ("latency.backend",)
            diff = [] if saved is None else config_differences(saved, config.to_dict(), ignore=unused)
            if diff:
                raise ConfigError(f"--resume: the config differs from {self.config_file} at {', '.join(diff)}; "
                                  "resume with the run's own config")
        elif self.has_results(stage):
            raise ConfigError(f"{folder} already holds results; pass --resume to continue it, or set run.dir "
                              "to start a new run")
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.config_file, yaml.safe_dump(config.to_dict(), sort_keys=False))
            write_text(self.env_file, json.dumps(environment(), indent=2))

    def supernet(self, width: float) -> Path:
        """The training folder of one width's supernet (a folder per phase inside)."""
        return self.stage("supernet") / _width(width)

    def phase_checkpoint(self, width: float, phase: str, which: str = "best") -> Path:
        """`which` (best or last) checkpoint of a training phase."""
        return self.supernet(width) / phase / f"{which}.pt"

    @property
    def search(self) -> SearchFolder:
        return SearchFolder(self.stage("search"))

    def adapt(self, width: float) -> Path:
        """The adaptation checkpoint folder of one width (one phase spanning all iterations)."""
        return self.stage("search") / "adapt" / _width(width)

    def adapted(self, width: float) -> Path:
        return self.adapt(width) / "last.pt"

    @property
    def tfsearch(self) -> TrainingFreeFolder:
        return TrainingFreeFolder(self.stage("tfsearch"))

    @property
    def selection_file(self) -> Path:
        return self.stage("select") / "selected.json"

    def write_selection(self, method: str, wp: float, rows: list[dict[str, Any]]) -> None:
        write_json(self.selection_file, {"method": method, "wp": wp, "subnets": rows}, indent=2)

    def selection(self) -> list[dict[str, Any]]:
        """The selected subnets (rows of the search's final front)."""
        if not self.selection_file.is_file():
            raise RunDirError(f"{self.selection_file} does not exist; run `nat2 select` first")
        rows = read_json(self.selection_file, ["method", "wp", "subnets"])["subnets"]
        if not isinstance(rows, list) or not rows:
            raise FileFormatError(self.selection_file, f"holds subnets = {rows!r}; expected a non-empty list")
        for i, row in enumerate(rows):
            require_fields(self.selection_file, row, SELECTED_FIELDS, f" in subnet {i + 1}")
        return rows

    def finetune_job(self, subnet: str, variant: str) -> Path:
        return self.stage("finetune") / subnet / variant

    def finetuned_model(self, subnet: str, variant: str) -> Path:
        return self.finetune_job(subnet, variant) / "final.pt"

    def result_file(self, subnet: str, variant: str) -> Path:
        return self.finetune_job(subnet, variant) / "result.json"

    def write_result(self, subnet: str, variant: str, result: dict[str, Any]) -> None:
        write_json(self.result_file(subnet, variant), result, indent=2)

    def result(self, subnet: str, variant: str) -> dict[str, Any] | None:
        """The figures of a finished fine-tuning job, or None while it is not finished."""
        path = self.result_file(subnet, variant)
        return read_json(path, RESULT_FIELDS) if path.is_file() else None

    def latency_table(self, backend: str) -> Path:
        return self.stage("latency") / f"{backend}.json"

    def latency_tables(self) -> dict[str, Path]:
        """Backend -> its latency table, for the tables this run directory holds."""
        return {b: self.latency_table(b) for b in BACKENDS if self.latency_table(b).is_file()}

    def latency_check(self, backend: str, suffix: str) -> Path:
        """The `--check` report (.json) and scatter plot (.png) of a backend's table."""
        return self.stage("latency") / f"check_{backend}{suffix}"

    def export(self, name: str) -> Path:
        return self.stage("export") / name

    def remove_partial_exports(self) -> list[Path]:
        """Delete the temporary folders (`.<name>.<8 random characters>`) of exports killed half-way; returns them."""
        folder = self.stage("export")
        stale = sorted(p for p in folder.glob(".*.*") if p.is_dir() and re.fullmatch(r"\..+\.[a-z0-9_]{8}", p.name)) \
            if folder.is_dir() else []
        for path in stale:
            shutil.rmtree(path)
        return stale

    def exports(self) -> dict[str, dict[str, Any]]:
        """The metadata of every export, by export name (sorted)."""
        folder = self.stage("export")
        found = {p.name: read_metadata(p) for p in sorted(folder.iterdir()) if not p.name.startswith(".")} \
            if folder.is_dir() else {}
        return {name: meta for name, meta in found.items() if meta is not None}


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
