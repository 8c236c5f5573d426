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
