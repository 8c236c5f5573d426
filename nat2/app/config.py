"""The config: typed sections with their defaults, checked once when the config loads.

A config is the defaults (the section classes below and the settings classes of the library
they extend), updated by a YAML file and by `--set key.sub=value` overrides. Unknown keys and
bad values are `ConfigError`s naming the key, before any stage starts. `Config.to_dict()` is
what a run directory records in config.yaml.
"""
from __future__ import annotations

import dataclasses
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Hashable
from typing import Any, ClassVar

import yaml

from postprocess import FinetuneOptions
from supernets import DATASETS, Space, Splits, Supernet, load_splits
from supernets.latency import Timing
from supernets.phases import Phase, PhaseError, parse_phases
from supernets.settings import check_fields
from supernets.train import TrainOptions

from ..rbifa import IFASettings, check_wp, parse_wps
from ..rbifa.training_free import INITS
from ..search import AdaptSettings, SearchSettings
from ..space import SearchSpace
from .choices import BACKENDS, METHODS

SCHEDULES = ("eps", "warmup")
DEVICES = ("auto", "cpu", "cuda")
VARIANTS = ("single", "aep")

# Extended Progressive Shrinking (the OFAv2 paper's phases); lr for a batch of 64. The full
# network trains every exit with the AEP loss (DESC weights by default, the NAT2 paper's choice for
# the max networks).
EPS_PHASES: tuple[dict[str, Any], ...] = (
    {"name": "full", "epochs": 180, "lr": 0.08, "dropout": 0.2, "aep": True},
    {"name": "kernel", "kernels": "all", "epochs": 120, "warmup_epochs": 5, "lr": 0.03},
    {"name": "level1", "only": "parallel", "keys": [3, 5, 6, 7], "epochs": 25, "lr": 2.5e-3, "subnets_per_step": 2},
    {"name": "level2", "only": "parallel", "keys": "all", "epochs": 120, "warmup_epochs": 5, "lr": 7.5e-3,
     "subnets_per_step": 2},
    {"name": "exit1", "only": "early_exits", "exits": [4, 5], "epochs": 25, "lr": 1.875e-3, "subnets_per_step": 2},
    {"name": "exit2", "only": "early_exits", "exits": [3, 4, 5], "epochs": 60, "warmup_epochs": 5, "lr": 3.75e-3,
     "subnets_per_step": 2},
    {"name": "exit3", "only": "early_exits", "exits": [2, 3, 4, 5], "epochs": 90, "warmup_epochs": 5,
     "lr": 7.5e-3, "subnets_per_step": 2},
    {"name": "exit4", "only": "early_exits", "exits": "all", "epochs": 120, "warmup_epochs": 5, "lr": 0.015,
     "subnets_per_step": 2},
    {"name": "depth1", "depths": [3, 4], "epochs": 25, "lr": 2.5e-3, "subnets_per_step": 2},
    {"name": "depth2", "depths": "all", "epochs": 120, "warmup_epochs": 5, "lr": 7.5e-3, "subnets_per_step": 2},
    {"name": "expand1", "expands": [4, 6], "epochs": 25, "lr": 2.5e-3, "subnets_per_step": 4, "sort_channels": True},
    {"name": "expand2", "expands": "all", "epochs": 120, "warmup_epochs": 5, "lr": 7.5e-3, "subnets_per_step": 4,
     "sort_channels": True},
)
# The NAT2 warm-up on a target dataset (the NAT2 paper): the max network, then the whole space
# with uniform sampling and KD from it. The epoch counts are our choice.
WARMUP_PHASES: tuple[dict[str, Any], ...] = (
    {"name": "max", "epochs": 25, "warmup_epochs": 5, "lr": 7.5e-3, "weight_decay": 3.0e-4, "grad_clip": 5.0,
     "aep": True},
    {"name": "uniform", "kernels": "all", "expands": "all", "depths": "all", "keys": "all", "exits": "all",
     "epochs": 100, "warmup_epochs": 5, "lr": 7.5e-3, "weight_decay": 3.0e-4, "grad_clip": 5.0,
     "subnets_per_step": 4},
)


class ConfigError(ValueError):
    """A config file or override is malformed, names an unknown key or holds a bad value."""


def _values(items: Any, section: str, name: str, kind: type) -> None:
    if not isinstance(items, list) or not items or any(isinstance(v, bool) or not isinstance(v, kind) or v <= 0
                                                       for v in items):
        raise ValueError(f"{section}.{name} = {items!r}; expected a non-empty list of positive "
                         f"{'integers' if kind is int else 'numbers'}")


@dataclass(frozen=True)
class DataSettings:
    """The data set (`name`: digits, cifar10, cifar100, tinyimagenet, imagefolder or synthetic;
    `root`: the folder of the on-disk ones) and its seeded splits."""

    name: str = "digits"
    root: str | None = None
    seed: int = 0
    calibration_size: int = 1000

    def __post_init__(self) -> None:
        check_fields(self, "data", integers={"calibration_size": 1, "seed": 0}, choices={"name": DATASETS},
                     paths=("root",), nullable=("root",))

    def load(self) -> Splits:
        return load_splits(self.name, self.root, seed=self.seed, calibration_size=self.calibration_size)


@dataclass(frozen=True)
class SupernetSettings:
    """The OFAv2 variant (dense skips, parallel blocks, early exits) and its elastic values; one
    supernet is trained per width."""

    dense: bool = False
    parallel: bool = False
    early_exits: bool = False
    resolutions: list[int] = field(default_factory=lambda: [32])
    widths: list[float] = field(default_factory=lambda: [1.0, 1.2])
    kernels: list[int] = field(default_factory=lambda: [3, 5, 7])
    expands: list[int] = field(default_factory=lambda: [3, 4, 6])
    depths: list[int] = field(default_factory=lambda: [2, 3, 4])
    dropout: float = 0.1
    bn_momentum: float = 0.1
    bn_eps: float = 1.0e-5

    def __post_init__(self) -> None:
        check_fields(self, "supernet", flags=("dense", "parallel", "early_exits"), numbers={"dropout": (0, 1)},
                     positive=("bn_momentum", "bn_eps"))
        for name in ("resolutions", "kernels", "expands", "depths"):
            _values(getattr(self, name), "supernet", name, int)
        _values(self.widths, "supernet", "widths", (int, float))
        self.search_space()

    def search_space(self) -> SearchSpace:
        """The integer encoding of this supernet family (the W gene chooses among the widths)."""
        return SearchSpace(Space(
            resolutions=tuple(self.resolutions), widths=tuple(float(w) for w in self.widths),
            kernels=tuple(self.kernels), expands=tuple(self.expands), depths=tuple(self.depths),
            keys=(1, 2, 3, 4, 5, 6, 7) if self.parallel else (4,),
            exits=(1, 2, 3, 4, 5) if self.early_exits else (5,)))

    def build(self, space: SearchSpace, n_classes: int) -> dict[float, Supernet]:
        """One freshly initialised supernet per width multiplier."""
        return {w: Supernet(n_classes, w, dense=self.dense, parallel=self.parallel, early_exits=self.early_exits,
                            space=dataclasses.replace(space.space, widths=(w,)), dropout=self.dropout,
                            bn_momentum=self.bn_momentum, bn_eps=self.bn_eps)
                for w in space.space.widths}


@dataclass(frozen=True)
class SampleSettings:
    """`nat2 sample`: how many random subnets to print, and the calibration batch."""

    n: int = 8
    seed: int = 0
    batch_size: int = 100

    def __post_init__(self) -> None:
        check_fields(self, "sample", integers={"n": 1, "batch_size": 1, "seed": 0})


@dataclass(frozen=True)
class RunSettings:
    """`dir`: the run directory (null: runs/<config file name>)."""

    dir: str | None = None

    def __post_init__(self) -> None:
        check_fields(self, "run", paths=("dir",), nullable=("dir",))


@dataclass(frozen=True)
class SearchSection(SearchSettings):
    """The NAT2 search: objectives, archive size and initial sample (multiplier x size), iterations,
    K candidates, NSGA-II on the predictor, knees. `supernet`: a checkpoint per width (may contain
    {width}; null: this run's last training phase's best.pt). `warm_start`: a JSON list of
    encodings (e.g. the training-free search's warm start) evaluated in the initial archive sample.
    `adapt`: supernet adaptation between iterations (`epochs` 0 turns it off; `smoothing` > 0 keeps
    values the archive's better half lacks reachable)."""

    supernet: str | None = None
    adapt: AdaptSettings = field(default_factory=AdaptSettings)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, "search", paths=("supernet", "warm_start"), nullable=("supernet", "warm_start"))
        if isinstance(self.adapt, dict):
            object.__setattr__(self, "adapt", _section(AdaptSettings, self.adapt, "search.adapt"))


@dataclass(frozen=True)
class SelectSettings:
    """Which subnets of the search go on: knee, front, or rbifa (the `n` best by RB-IFA's rank
    score for the performance weight `wp`)."""

    method: str = "knee"
    wp: float = 0.5
    n: int = 1

    def __post_init__(self) -> None:
        check_fields(self, "select", integers={"n": 1}, choices={"method": METHODS})
        try:
            check_wp(self.wp)
        except ValueError as err:
            raise ValueError(f"select.{err}") from None


@dataclass(frozen=True)
class FinetuneSection(FinetuneOptions):
    """Two-step fine-tuning; `epochs` is step 1's maximum and the schedule's length. `variants`:
    single (the subnet as found) and, for early-exit subnets, aep. The evaluation settings come
    from the train section."""

    FROM_TRAIN: ClassVar[tuple[str, ...]] = ("eval_batch_size", "num_workers", "eval_cache_mb")
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    prune: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.variants, list) or not self.variants or any(v not in VARIANTS for v in self.variants):
            raise ValueError(f"finetune.variants = {self.variants!r}; expected a non-empty list of "
                             f"{', '.join(VARIANTS)}")
        check_fields(self, "finetune", flags=("prune",))


@dataclass(frozen=True)
class ExportSettings:
    """`tolerance`: the largest absolute logit difference allowed between the fine-tuned model and
    each exported format."""

    tolerance: float = 1.0e-4

    def __post_init__(self) -> None:
        check_fields(self, "export", positive=("tolerance",))


@dataclass(frozen=True)
class LatencySection(Timing):
    """`nat2 latency`: the backend (torch-cpu, torch-cuda, onnxruntime) whose table of
    latency/<backend>.json the `latency` objective reads, and how each part is timed: batch,
    CPU threads, warm-up calls, rounds of at least `round_ms` (the median is kept), interleaved
    passes (the median is kept), and the random subnets timed whole to calibrate the sum of parts
    (`calibration`). `seed` draws the random subnets of `--check`."""

    backend: str = "torch-cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        integers = {"batch": 1, "threads": 1, "warmup": 0, "rounds": 1, "passes": 1, "calibration": 1, "seed": 0}
        check_fields(self, "latency", integers=integers, positive=("round_ms",), choices={"backend": BACKENDS})

    def timing(self, batch: int | None = None, threads: int | None = None) -> Timing:
        """The timing settings, with the command line's batch and threads where given."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(Timing)}
        return Timing(**{**values, **{k: v for k, v in (("batch", batch), ("threads", threads)) if v is not None}})


@dataclass(frozen=True)
class RbifaSection(IFASettings):
    """RB-IFA: the performance weight(s) Wp of the rank score, the Improved FireFly Algorithm's
    settings, the ICD image batch, the subnet weights (inherited from the supernets or a fresh
    init) and whether the training-free search writes a warm start for NAT2."""

    wp: list[float] = field(default_factory=lambda: [0.5])
    batch_size: int = 64
    init: str = "inherited"
    warm_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            parse_wps(self.wp)
        except ValueError as err:
            raise ValueError(f"rbifa.{err}") from None
        check_fields(self, "rbifa", integers={"batch_size": 2}, choices={"init": INITS}, flags=("warm_start",))

    @property
    def settings(self) -> IFASettings:
        """The algorithm's own settings (without this section's extra keys)."""
        return IFASettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(IFASettings)})


@dataclass(frozen=True)
class TrainSection(TrainOptions):
    """Supernet training. `schedule`: eps (the phase table `eps`, from scratch) or warmup (the NAT2
    warm-up `warmup`, from `source`: null, a checkpoint path that may contain {width}, or a
    mapping width -> path). `device`: auto, cpu or cuda. `bf16`: forwards under bfloat16
    autocast, losses in fp32. Evaluation reads images prepared once per resolution, up to
    `eval_cache_mb` (null: no limit, 0: stream); `eval_bf16` null means bf16 on CUDA only;
    `val_images` validation images are scored per grid setting after every `val_every` epochs
    (null: all), and the last epoch of a phase is always scored on all of them."""

    schedule: str = "eps"
    source: str | dict[float, str] | None = None
    device: str = "auto"
    eps: list[dict[str, Any]] = field(default_factory=lambda: [dict(row) for row in EPS_PHASES])
    warmup: list[dict[str, Any]] = field(default_factory=lambda: [dict(row) for row in WARMUP_PHASES])

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fields(self, "train", choices={"schedule": SCHEDULES, "device": DEVICES})
        if self.source is not None and not isinstance(self.source, (str, dict)):
            raise ValueError(f"train.source = {self.source!r}; expected null, a path or a mapping width -> path")

    @property
    def options(self) -> TrainOptions:
        """The training options of the library (without this section's extra keys)."""
        return TrainOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainOptions)})

    def phases(self, supernet: Supernet) -> list[Phase]:
        """The schedule's phase table resolved against `supernet`'s space."""
        return parse_phases(getattr(self, self.schedule), supernet.space, parallel=supernet.parallel,
                            early_exits=supernet.early_exits)

    def source_path(self, width: float) -> Path | None:
        """The checkpoint the warm-up of `width` starts from."""
        if self.source is None:
            return None
        if isinstance(self.source, dict):
            match = [v for k, v in self.source.items() if float(k) == width]
            if not match:
                raise ConfigError(f"train.source has no entry for width {width}; expected keys {sorted(self.source)}")
            return Path(match[0])
        return Path(self.source.format(width=width))


def _section(cls: type, values: dict[str, Any], where: str, **derived: Any) -> Any:
    try:
        return cls(**values, **derived)
    except (TypeError, ValueError) as err:
        message = str(err)
        raise ConfigError(message if message.startswith(where) else f"{where}: {message}") from None


def _plain(section: Any) -> dict[str, Any]:
    hidden = getattr(section, "FROM_TRAIN", ())
    out = {}
    for f in dataclasses.fields(section):
        if f.name in hidden:
            continue
        value = getattr(section, f.name)
        out[f.name] = _plain(value) if dataclasses.is_dataclass(value) else \
            list(value) if isinstance(value, tuple) else value
    return out


@dataclass(frozen=True)
class Config:
    """Every section of a config, each checked on construction."""

    data: DataSettings = field(default_factory=DataSettings)
    supernet: SupernetSettings = field(default_factory=SupernetSettings)
    sample: SampleSettings = field(default_factory=SampleSettings)
    run: RunSettings = field(default_factory=RunSettings)
    search: SearchSection = field(default_factory=SearchSection)
    select: SelectSettings = field(default_factory=SelectSettings)
    finetune: FinetuneSection = field(default_factory=FinetuneSection)
    export: ExportSettings = field(default_factory=ExportSettings)
    rbifa: RbifaSection = field(default_factory=RbifaSection)
    latency: LatencySection = field(default_factory=LatencySection)
    train: TrainSection = field(default_factory=TrainSection)

    def __post_init__(self) -> None:
        """Fine-tuning evaluates as training does; both phase tables must fit the supernet, and a
        per-width warm-up source must name every width."""
        object.__setattr__(self, "finetune", dataclasses.replace(
            self.finetune, **{k: getattr(self.train, k) for k in FinetuneSection.FROM_TRAIN}))
        sn = self.supernet
        for table in ("eps", "warmup"):
            try:
                parse_phases(getattr(self.train, table), sn.search_space().space, parallel=sn.parallel,
                             early_exits=sn.early_exits)
            except PhaseError as err:
                raise ConfigError(f"train.{table}: {err}") from None
        for width in sn.widths:
            self.train.source_path(float(width))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """A config from a complete nested mapping (`to_dict`'s shape); ConfigError on any bad value."""
        return cls(**{name: _section(kind, data[name], name) for name, kind in SECTIONS.items()})

    def to_dict(self) -> dict[str, Any]:
        """The nested mapping a run directory records (lists, numbers, strings; no hidden fields)."""
        return {name: _plain(getattr(self, name)) for name in SECTIONS}

    def with_run_dir(self, path: str | Path) -> Config:
        return dataclasses.replace(self, run=RunSettings(dir=str(path)))


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}


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


def defaults_yaml() -> str:
    """The text of configs/defaults.yaml: every key with its default, each section headed by the
    docstring of its class (a test keeps the file equal to this)."""
    lines = ["# Every config key with its default, generated from nat2.app.config.defaults_yaml()."]
    for name, data in Config().to_dict().items():
        lines += ["", *(f"# {line}" for line in textwrap.wrap(" ".join(SECTIONS[name].__doc__.split()), 98,
                                                                          break_on_hyphens=False))]
        lines.append(yaml.safe_dump({name: data}, sort_keys=False, width=120, default_flow_style=None).rstrip())
    return "\n".join(lines) + "\n"


class _Loader(yaml.SafeLoader):
    """YAML that reads 5e-2 as a number (YAML 1.1 wants 5.0e-2) and refuses a key written twice
    (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":    # `<<: *base` may be overridden, by design
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue                                    # the base class reports an unhashable key
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                              list("-+0123456789"))


def _yaml(text: str, where: str) -> Any:
    """The YAML `text` of `where` (a file or an override); ConfigError in one line when malformed."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{where} is not valid YAML{at}: {getattr(err, 'problem', None) or err}") from None


def read_yaml(path: Path) -> Any:
    """The YAML in the file `path` (ConfigError in one line when it is not text or not YAML)."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not a text file; expected YAML (see configs/)") from None
    return _yaml(text, f"config file {path}")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Defaults updated by the YAML file at `path` and by `key.sub=value` overrides, checked. A
    file that sets nothing is refused: a run of every default is hours of work nobody asked for."""
    data = Config().to_dict()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = read_yaml(path)
        if loaded is None or loaded == {}:
            raise ConfigError(f"config file {path} is empty; expected at least one section, e.g. data: {{name: "
                              f"digits}} (configs/defaults.yaml lists every key)")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping; got {type(loaded).__name__}")
        _merge(data, loaded, "")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        update: Any = _yaml(text, f"override {item!r}")
        for part in reversed(key.split(".")):
            update = {part: update}
        _merge(data, update, "")
    return Config.from_dict(data)
