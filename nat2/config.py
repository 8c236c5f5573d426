"""YAML configs: defaults, a user file, `--set key=value` overrides; unknown keys are errors."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

DEFAULTS: dict[str, Any] = {
    "data": {"name": "digits", "root": None, "seed": 0, "calibration_size": 1000},
    "supernet": {
        "dense": False, "parallel": False, "early_exits": False,
        "resolutions": [32], "widths": [1.0, 1.2],
        "kernels": [3, 5, 7], "expands": [3, 4, 6], "depths": [2, 3, 4],
        "dropout": 0.1, "bn_momentum": 0.1, "bn_eps": 1.0e-5,
    },
    "sample": {"n": 8, "seed": 0, "batch_size": 100},
    "run": {"dir": None},
    # The NAT2 search (archive, predictor, NSGA-II, adaptation); `supernet` defaults to this run's
    # train-supernet result: supernet/w<width>/<last phase>/best.pt. `warm_start`: a JSON list of
    # encodings (e.g. tfsearch/warm_start.json) evaluated in the initial archive sample.
    # `adapt.smoothing`: pseudo-counts per value of every factor of the distribution adaptation
    # samples from (the exit, a stage's depth given the exit, a block's choice), fitted on the
    # archive's better half by survival; > 0 keeps values that half lacks reachable.
    "search": {
        "objectives": ["acc", "params"], "supernet": None, "archive_size": 300, "multiplier": 10,
        "iterations": 30, "candidates": 25, "population": 100, "generations": 20, "predictor": "lgb",
        "knees": 3, "seed": 0, "warm_start": None,
        "adapt": {"epochs": 5, "lr": 7.5e-3, "subnets_per_step": 4, "weight_decay": 3.0e-4, "grad_clip": 5.0,
                  "smoothing": 0.0},
    },
    # Which subnets of the search go on (nat2/select.py): knee, front or rbifa (the `n` best by
    # RB-IFA's rank score for the performance weight `wp`).
    "select": {"method": "knee", "wp": 0.5, "n": 1},
    # Two-step fine-tuning (README, "Fine-tuning"); `epochs` is step 1's maximum and the
    # schedule's length. `variants`: single (the subnet as found) and, for early-exit subnets, aep.
    "finetune": {
        "epochs": 150, "patience": 30, "lr": 1.0e-4, "weight_decay": 5.0e-4, "optimizer": "adamw", "momentum": 0.9,
        "batch_size": 64, "label_smoothing": 0.0, "aep_scheme": "unif", "variants": ["single", "aep"],
        "prune": False, "seed": 0,
    },
    "export": {"tolerance": 1.0e-4},
    # RB-IFA (the rank-based Improved FireFly Algorithm): the performance weight(s) Wp of eq. 6, the Improved FireFly
    # Algorithm's defaults, the ICD image batch, the subnet weights (inherited from the supernets
    # or a fresh init) and whether the training-free search writes a warm start for NAT2.
    "rbifa": {
        "wp": [0.5], "population": 20, "generations": 100, "alpha": 0.5, "beta0": 0.95, "gamma": 0.15,
        "max_chances": 5, "mutation_prob": 1.0, "seed": 0, "batch_size": 64, "init": "inherited",
        "warm_start": False,
    },
    "train": {
        "schedule": "eps", "source": None, "device": "auto",
        "batch_size": 64, "reference_batch": 64, "eval_batch_size": 256, "calibration_batch": 100,
        "num_workers": 0,
        # Evaluation (supernet validation, search, fine-tuning validation) reads images prepared
        # once per resolution and kept on the device, up to `eval_cache_mb` (null: no limit, 0:
        # stream every time). `eval_bf16`: bf16 autocast for evaluation (null: on CUDA only).
        # `val_images`: validation images scored per grid setting after each `val_every` epochs
        # (a fixed subset; null: all); the last epoch of a phase is always scored on all of them.
        "eval_cache_mb": 2048, "eval_bf16": None, "val_images": None,
        "momentum": 0.9, "nesterov": True, "weight_decay": 3.0e-5, "label_smoothing": 0.1, "grad_clip": None,
        "kd_ratio": 1.0, "kd_temperature": 1.0, "teacher_bn": "eval", "aep_scheme": "desc",
        "bf16": False, "seed": 0, "val_every": 1, "val_settings": 32,
        # `bf16`: the forwards under bfloat16 autocast (CUDA or CPU), the losses in fp32.
        # Extended Progressive Shrinking (the OFAv2 paper's phases); lr for a batch of 64.
        # `aep: true` trains every exit with the AEP loss (DESC weights by default, the NAT2
        # paper's choice for the max networks) and validates each grid setting through the
        # beta-weighted ensemble of its exits; best.pt is the epoch with the best mean ensemble
        # top-1 over the grid, the kind of signal the next phase's teacher (the max network's
        # ensemble, ENS-KD) gives.
        "eps": [
            {"name": "full", "epochs": 180, "lr": 0.08, "dropout": 0.2, "aep": True},
            {"name": "kernel", "kernels": "all", "epochs": 120, "warmup_epochs": 5, "lr": 0.03},
            {"name": "level1", "only": "parallel", "keys": [3, 5, 6, 7], "epochs": 25, "lr": 2.5e-3,
             "subnets_per_step": 2},
            {"name": "level2", "only": "parallel", "keys": "all", "epochs": 120, "warmup_epochs": 5, "lr": 7.5e-3,
             "subnets_per_step": 2},
            {"name": "exit1", "only": "early_exits", "exits": [4, 5], "epochs": 25, "lr": 1.875e-3,
             "subnets_per_step": 2},
            {"name": "exit2", "only": "early_exits", "exits": [3, 4, 5], "epochs": 60, "warmup_epochs": 5,
             "lr": 3.75e-3, "subnets_per_step": 2},
            {"name": "exit3", "only": "early_exits", "exits": [2, 3, 4, 5], "epochs": 90, "warmup_epochs": 5,
             "lr": 7.5e-3, "subnets_per_step": 2},
            {"name": "exit4", "only": "early_exits", "exits": "all", "epochs": 120, "warmup_epochs": 5, "lr": 0.015,
             "subnets_per_step": 2},
            {"name": "depth1", "depths": [3, 4], "epochs": 25, "lr": 2.5e-3, "subnets_per_step": 2},
            {"name": "depth2", "depths": "all", "epochs": 120, "warmup_epochs": 5, "lr": 7.5e-3, "subnets_per_step": 2},
            {"name": "expand1", "expands": [4, 6], "epochs": 25, "lr": 2.5e-3, "subnets_per_step": 4,
             "sort_channels": True},
            {"name": "expand2", "expands": "all", "epochs": 120, "warmup_epochs": 5, "lr": 7.5e-3,
             "subnets_per_step": 4, "sort_channels": True},
        ],
        # NAT2 warm-up on a target dataset (the NAT2 paper): the max network, then the
        # whole space with uniform sampling and KD from it. Epoch counts are our choice.
        "warmup": [
            {"name": "max", "epochs": 25, "warmup_epochs": 5, "lr": 7.5e-3, "weight_decay": 3.0e-4,
             "grad_clip": 5.0, "aep": True},
            {"name": "uniform", "kernels": "all", "expands": "all", "depths": "all", "keys": "all", "exits": "all",
             "epochs": 100, "warmup_epochs": 5, "lr": 7.5e-3, "weight_decay": 3.0e-4, "grad_clip": 5.0,
             "subnets_per_step": 4},
        ],
    },
}


class ConfigError(ValueError):
    """A config file or override is malformed or names an unknown key."""


def _merge(base: dict[str, Any], update: dict[str, Any], where: str) -> None:
    for key, value in update.items():
        path = f"{where}{key}"
        if key not in base:
            raise ConfigError(f"unknown config key {path!r}; expected one of "
                              f"{sorted(f'{where}{k}' for k in base)}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} must be a mapping; got {value!r}")
            _merge(base[key], value, f"{path}.")
        else:
            base[key] = value


def load_config(path: str | Path | None, overrides: list[str] = ()) -> dict[str, Any]:
    """Defaults updated by the YAML file at `path` and by `key.sub=value` overrides."""
    config = copy.deepcopy(DEFAULTS)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping; got {type(data).__name__}")
        _merge(config, data, "")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        update: dict[str, Any] = yaml.safe_load(text)
        for part in reversed(key.split(".")):
            update = {part: update}
        _merge(config, update, "")
    return config
