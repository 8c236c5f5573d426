"""The bad-input corpus: each kind of wrong input a user can give nat2 (flags, config files and
values, data sets, and every file of a run directory a stage reads) ends in exit code 2 and one
line naming the file or key, and leaves every file written before byte-identical."""
import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from nat2.app.cli import main
from nat2.app.config import load_config
from nat2.app.rundir import RunDir
from nat2.latency import LatencyTable, identity
from supernets.latency import Timing, parts
from test_data import _dump, _jpeg, _write_cifar10
from tiny_run import write_config

Setup = Callable[[RunDir, Path], None]


@dataclass(frozen=True)
class Case:
    """`args` may hold {run} (a copy of the finished tiny run), {tmp} (the case's folder), {export}
    (the copy's first export) and {subnet} (its first fine-tuned subnet); `expect`: what the message
    names; `absent`: what it must not say."""

    args: tuple[str, ...]
    expect: tuple[str, ...]
    setup: Setup | None = None
    absent: tuple[str, ...] = ()


def _first(folder: Path) -> str:
    return sorted(p.name for p in folder.iterdir())[0]


def _export(run: RunDir) -> Path:
    return run.export(_first(run.stage("export")))


def _job(run: RunDir) -> tuple[str, str]:
    return _first(run.stage("finetune")), "single"


def _write(path_of: Callable[[RunDir], Path], data: str | bytes) -> Setup:
    def setup(run: RunDir, tmp: Path) -> None:
        path = path_of(run)
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return setup


def _edit_json(path_of: Callable[[RunDir], Path], change: Callable) -> Setup:
    def setup(run: RunDir, tmp: Path) -> None:
        path = path_of(run)
        data = json.loads(path.read_text())
        path.write_text(json.dumps(change(data)))
    return setup


def _without(*stages: str, then: Setup | None = None) -> Setup:
    """Remove the folders of `stages` from the copy (as if they had not run), then `then`."""
    def setup(run: RunDir, tmp: Path) -> None:
        for stage in stages:
            shutil.rmtree(run.stage(stage))
        if then is not None:
            then(run, tmp)
    return setup


def _config(text: str | bytes) -> Setup:
    """{tmp}/c.yaml holding `text` (a str is formatted with tmp)."""
    def setup(run: RunDir, tmp: Path) -> None:
        path = tmp / "c.yaml"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text.format(tmp=tmp))
    return setup


def _tiny(extra: str = "") -> Setup:
    """{tmp}/c.yaml: the tiny config (run.dir {tmp}/c) with `extra` appended."""
    def setup(run: RunDir, tmp: Path) -> None:
        write_config(tmp, "c", extra)
    return setup


def _cifar(change: Callable[[Path], None]) -> Setup:
    """CIFAR-10 files in the official format under {tmp}/cifar, then `change(folder)`."""
    def setup(run: RunDir, tmp: Path) -> None:
        _write_cifar10(tmp / "cifar", np.random.default_rng(0))
        change(tmp / "cifar" / "cifar-10-batches-py")
    return setup


def _batch(drop: str = "", labels: int = 20, data: bytes | None = None) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        if data is not None:
            (folder / "data_batch_2").write_bytes(data)
            return
        entry = {"data": np.zeros((20, 3072), np.uint8), "labels": [0] * labels}
        entry.pop(drop, None)
        _dump(folder / "data_batch_2", entry)
    return change


def _image_folder(broken: str = "", test: bool = True) -> Setup:
    """{tmp}/images/{train,test}/<class>/*.png, one image of train/b replaced by `broken` bytes."""
    def setup(run: RunDir, tmp: Path) -> None:
        rng = np.random.default_rng(0)
        for split in ("train", "test") if test else ("train",):
            for label in ("a", "b"):
                folder = tmp / "images" / split / label
                folder.mkdir(parents=True)
                for i in range(12):
                    _jpeg(folder / f"{i}.png", rng)
        if broken:
            (tmp / "images" / "train" / "b" / "3.png").write_bytes(broken.encode())
    return setup


def _table(resolutions: tuple[int, ...] = (12, 16), text: str | None = None, change: Callable = lambda d: d) -> Setup:
    """latency/torch-cpu.json of the run: `text`, or a complete table (of made-up times) measured
    for the tiny space with `resolutions`, its JSON passed through `change`."""
    def setup(run: RunDir, tmp: Path) -> None:
        path = run.latency_table("torch-cpu")
        path.parent.mkdir(exist_ok=True)
        if text is not None:
            path.write_text(text)
            return
        space = dataclasses.replace(load_config(run.config_file).supernet.search_space().space, resolutions=resolutions)
        times = {p.key: [0.1, 0.1, 0.1] for p in parts(space, False, 10)}
        LatencyTable(identity("torch-cpu", space, False, 10, Timing()), {"backend": "torch-cpu"}, times,
                     {"scale": 1.0, "offset_ms": 0.0}).write(path)
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return setup


LATENCY = ("--set", "search.objectives=[acc, latency]")
CIFAR = "run: {{dir: {tmp}/c}}\ndata: {{name: cifar10, root: {tmp}/cifar}}\nsupernet: {{widths: [1.0]}}\n"
FOLDER = "run: {{dir: {tmp}/c}}\ndata: {{name: imagefolder, root: {tmp}/images}}\nsupernet: {{widths: [1.0]}}\n"
RUN, CFG = "{run}", "{tmp}/c.yaml"
STATE, FINAL = (lambda r: r.search.state), (lambda r: r.search.final)
SELECTED = lambda r: r.selection_file                                                      # noqa: E731
RESULT = lambda r: r.result_file(*_job(r))                                                 # noqa: E731
METADATA, ARCH = (lambda r: _export(r) / "metadata.json"), (lambda r: _export(r) / "arch.json")
NOT_JSON = "{not json"

CASES = {
    # the command line
    "unknown-command": Case(("frobnicate", RUN), ("frobnicate",)),
    "no-config-argument": Case(("select",), ("CONFIG_OR_RUN_DIR",)),
    "wp-not-a-number": Case(("select", RUN, "--wp", "abc"), ("--wp", "abc")),
    "evaluate-without-subnet": Case(("evaluate", RUN), ("--subnet",)),
    "unknown-split": Case(("evaluate", RUN, "--subnet", "x", "--split", "train"), ("--split", "train")),
    "unknown-strategy": Case(("search", RUN, "--strategy", "greedy"), ("--strategy", "greedy")),
    "unknown-flag": Case(("select", RUN, "--knees", "3"), ("--knees",)),
    "set-without-value": Case(("select", RUN, "--set", "select.wp"), ("select.wp", "key.sub=value")),
    "set-unknown-key": Case(("select", RUN, "--set", "select.nope=1"), ("select.nope",)),
    "set-unparsable-value": Case(("select", RUN, "--set", "select.wp=[1,"), ("select.wp",)),
    "set-section-to-a-value": Case(("select", RUN, "--set", "select=3"), ("'select'", "mapping")),
    "set-inside-a-value": Case(("select", RUN, "--set", "select.wp.x=1"), ("select.wp",)),
    "select-wp-above-1": Case(("select", RUN, "--wp", "1.5"), ("select.wp",)),
    "select-wp-nan": Case(("select", RUN, "--wp", "nan"), ("select.wp",)),
    "select-n-0": Case(("select", RUN, "--n", "0"), ("select.n",)),
    "select-unknown-method": Case(("select", RUN, "--set", "select.method=best"), ("select.method",)),
    "missing-config-file": Case(("run", "{tmp}/nope.yaml"), ("nope.yaml", "does not exist")),
    "folder-without-config": Case(("finetune", "{tmp}"), ("config.yaml",)),
    # config files
    "empty-config": Case(("run", CFG), ("c.yaml", "empty"), _config("")),
    "comments-only-config": Case(("run", CFG), ("c.yaml", "empty"), _config("# nothing yet\n\n# still nothing\n")),
    "binary-config": Case(("run", CFG), ("c.yaml", "text"), _config(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")),
    "invalid-yaml": Case(("run", CFG), ("c.yaml", "YAML"), _config("search: [\n")),
    "config-is-a-list": Case(("run", CFG), ("c.yaml", "mapping"), _config("- search\n")),
    "duplicate-key": Case(("run", CFG), ("c.yaml", "'search'", "twice"),
                          _config("search: {{iterations: 2}}\nselect: {{n: 1}}\nsearch: {{iterations: 3}}\n")),
    "unknown-section": Case(("run", CFG), ("finetune_typo",), _tiny("finetune_typo: {epochs: 3}\n")),
    "unknown-nested-key": Case(("run", CFG), ("export.tolerence",), _tiny("export: {tolerence: 0.1}\n")),
    "unknown-dataset": Case(("run", CFG, "--set", "data.name=mnist"), ("data.name", "mnist"), _tiny()),
    "calibration-size-0": Case(("run", CFG, "--set", "data.calibration_size=0"), ("data.calibration_size",),
                               _tiny()),
    "tolerance-a-string": Case(("run", CFG), ("export.tolerance",), _tiny("export: {tolerance: small}\n")),
    "unknown-variant": Case(("run", CFG, "--set", "finetune.variants=[fancy]"), ("finetune.variants",), _tiny()),
    "unknown-objective": Case(("run", CFG, "--set", "search.objectives=[acc, speed]"), ("speed",), _tiny()),
    "unknown-predictor": Case(("run", CFG, "--set", "search.predictor=xgboost"), ("xgboost",), _tiny()),
    "no-resolutions": Case(("run", CFG, "--set", "supernet.resolutions=[]"), ("supernet.resolutions",), _tiny()),
    "unknown-phase-key": Case(("run", CFG, "--set", "train.eps=[{{name: full, epochs: 1, lr: 0.1, kernel: 3}}]"),
                              ("train.eps", "kernel"), _tiny()),
    "rbifa-wp-above-1": Case(("run", CFG), ("rbifa.wp",), _tiny("rbifa: {wp: [2]}\n")),
    "sample-n-text": Case(("sample", CFG), ("sample.n",), _tiny("sample: {n: many}\n")),
    "batch-larger-than-data": Case(("run", CFG, "--set", "train.batch_size=5000"), ("train.batch_size", "5000"),
                                   _tiny()),
    "warm-up-source-missing": Case(("train-supernet", CFG, "--set", "train.schedule=warmup", "--set",
                                    "train.source={tmp}/none_{{width}}.pt"), ("none_1.0.pt",), _tiny()),
    "search-supernet-missing": Case(("search", CFG, "--set", "search.supernet={tmp}/none.pt"), ("none.pt",),
                                    _tiny()),
    "cifar-root-missing": Case(("run", CFG), ("CIFAR-10", "not found"), _config(CIFAR)),
    # data sets
    "cifar-batch-without-labels": Case(("sample", CFG), ("data_batch_2", "'labels'"),
                                       lambda r, t: (_config(CIFAR)(r, t), _cifar(_batch(drop="labels"))(r, t))),
    "cifar-labels-count": Case(("sample", CFG), ("data_batch_2", "19 labels", "20 images"),
                               lambda r, t: (_config(CIFAR)(r, t), _cifar(_batch(labels=19))(r, t))),
    "cifar-batch-not-pickle": Case(("sample", CFG), ("data_batch_2",),
                                   lambda r, t: (_config(CIFAR)(r, t), _cifar(_batch(data=b"garbage"))(r, t))),
    "image-folder-unreadable-image": Case(("sample", CFG), ("3.png",),
                                          lambda r, t: (_config(FOLDER)(r, t), _image_folder("not a png")(r, t))),
    "image-folder-without-test": Case(("sample", CFG), ("test",),
                                      lambda r, t: (_config(FOLDER)(r, t), _image_folder(test=False)(r, t))),
    # the files of a run directory
    "run-config-not-yaml": Case(("select", RUN), ("config.yaml",), _write(lambda r: r.config_file, "search: [\n")),
    "run-config-empty": Case(("select", RUN), ("config.yaml", "empty"), _write(lambda r: r.config_file, "")),
    "state-not-json": Case(("search", RUN, "--resume"), ("state.json",), _write(STATE, NOT_JSON)),
    "state-without-iterations": Case(("search", RUN, "--resume"), ("state.json", "iterations_done"),
                                     _edit_json(STATE, lambda d: {k: v for k, v in d.items()
                                                                  if k != "iterations_done"})),
    "archive-not-json": Case(("search", RUN, "--resume"), ("archive.json",),
                             _write(lambda r: r.search.archive(1), NOT_JSON)),
    "archive-without-records": Case(("search", RUN, "--resume"), ("archive.json", "nat2-archive"),
                                    _edit_json(lambda r: r.search.archive(1), lambda d: {})),
    "evaluation-cache-torn": Case(("search", RUN, "--resume"), ("candidates.jsonl", "line 1", "iter_1 and the later"),
                                  lambda r, t: (r.search.archive(1).unlink(),
                                                r.search.evaluations(1, "candidates").write_text(
                                                    "{torn\n" + r.search.evaluations(1, "candidates").read_text()))),
    "final-not-json": Case(("select", RUN), ("final.json",), _without("finetune", "export", "select",
                                                                      then=_write(FINAL, NOT_JSON))),
    "final-a-mapping": Case(("select", RUN), ("final.json", "expected a non-empty list"),
                            _without("finetune", "export", "select", then=_write(FINAL, "{}"))),
    "final-row-without-knee": Case(("select", RUN), ("final.json", "'knee'"),
                                   _without("finetune", "export", "select", then=_edit_json(
                                       FINAL, lambda d: [{k: v for k, v in row.items() if k != "knee"} for row in d]))),
    "selection-not-json": Case(("finetune", RUN, "--resume"), ("selected.json",), _write(SELECTED, NOT_JSON)),
    "selection-without-subnets": Case(("finetune", RUN, "--resume"), ("selected.json", "subnets"),
                                      _edit_json(SELECTED, lambda d: {"method": d["method"]})),
    "selection-row-without-encoding": Case(("finetune", RUN, "--resume"), ("selected.json", "encoding"),
                                           _edit_json(SELECTED, lambda d: {**d, "subnets": [
                                               {k: v for k, v in row.items() if k != "encoding"}
                                               for row in d["subnets"]]})),
    "result-not-json": Case(("export", RUN), ("result.json",), _without("export", then=_write(RESULT, NOT_JSON))),
    "result-without-field": Case(("export", RUN), ("result.json",),
                                 _without("export", then=_edit_json(RESULT, lambda d: {"subnet": 1}))),
    "result-read-by-run": Case(("run", RUN), ("result.json",), _without("export", then=_write(RESULT, NOT_JSON))),
    "finetuned-model-corrupt": Case(("export", RUN), ("final.pt",),
                                    _without("export", then=_write(lambda r: r.finetuned_model(*_job(r)),
                                                                   b"\x00garbage"))),
    "supernet-checkpoint-corrupt": Case(("search", RUN), ("best.pt",),
                                        _without("search", "select", "finetune", "export",
                                                 then=_write(lambda r: r.phase_checkpoint(1.0, "all"), b"bad"))),
    "adapted-checkpoint-corrupt": Case(("finetune", RUN), ("last.pt",),
                                       _without("finetune", "export", then=_write(lambda r: r.adapted(1.0), b"bad"))),
    "metadata-not-json": Case(("evaluate", RUN, "--subnet", "{export}"), ("metadata.json",),
                              _write(METADATA, NOT_JSON)),
    "metadata-without-input": Case(("evaluate", RUN, "--subnet", "{export}"), ("metadata.json", "input"),
                                   _edit_json(METADATA, lambda d: {k: v for k, v in d.items() if k != "input"})),
    "arch-not-json": Case(("evaluate", RUN, "--subnet", "{export}"), ("arch.json",), _write(ARCH, NOT_JSON)),
    "arch-wrong-fields": Case(("evaluate", RUN, "--subnet", "{export}"), ("arch.json",),
                              _edit_json(ARCH, lambda d: {**d, "kernels": "seven"})),
    "weights-corrupt": Case(("evaluate", RUN, "--subnet", "{export}"), ("weights.safetensors",),
                            _write(lambda r: _export(r) / "weights.safetensors", b"\x10\x00garbage")),
    "weights-missing": Case(("evaluate", RUN, "--subnet", "{export}"), ("weights.safetensors",),
                            lambda r, t: (_export(r) / "weights.safetensors").unlink()),
    "pt2-corrupt": Case(("evaluate", RUN, "--subnet", "{export}", "--format", "pt2"), ("model.pt2",),
                        _write(lambda r: _export(r) / "model.pt2", b"garbage")),
    "onnx-corrupt": Case(("evaluate", RUN, "--subnet", "{export}", "--format", "onnx"), ("model.onnx",),
                         _write(lambda r: _export(r) / "model.onnx", b"garbage")),
    "evaluate-other-dataset": Case(("evaluate", RUN, "--subnet", "{export}", "--set", "data.name=digits"),
                                   ("synthetic", "digits")),
    # latency tables
    "latency-unknown-backend": Case(("latency", RUN, "--backend", "tpu"), ("--backend", "tpu")),
    "latency-check-0": Case(("latency", RUN, "--check", "0"), ("--check", "0")),
    "latency-threads-0": Case(("latency", RUN, "--set", "latency.threads=0"), ("latency.threads",)),
    "latency-unknown-backend-in-config": Case(("latency", RUN, "--set", "latency.backend=tpu"), ("latency.backend",)),
    "latency-table-not-json": Case(("latency", RUN), ("torch-cpu.json", "nat2 latency", "--backend torch-cpu"),
                                   _table(text=NOT_JSON)),
    "latency-table-without-parts": Case(("latency", RUN), ("torch-cpu.json", "'parts'"), _table(text="{}")),
    "latency-table-of-another-space": Case(("latency", RUN), ("torch-cpu.json", "space.resolutions"),
                                           _table((16,))),
    "latency-table-space-not-a-mapping": Case(("latency", RUN), ("torch-cpu.json", "'space'"),
                                              _table(change=lambda d: {**d, "space": 3})),
    "latency-table-timing-not-numbers": Case(("latency", RUN), ("torch-cpu.json", "'timing'"),
                                             _table(change=lambda d: {**d, "timing": {**d["timing"], "passes": "3"}})),
    "latency-config-of-another-space": Case(("latency", "{tmp}/run.yaml", "--set", "supernet.resolutions=[12]"),
                                            ("config.yaml", "supernet.resolutions"),
                                            lambda r, t: write_config(t, "run")),
    "search-latency-without-table": Case(("search", RUN, *LATENCY), ("torch-cpu.json", "nat2 latency"),
                                         _without("search", "select", "finetune", "export")),
    "search-latency-table-of-another-space": Case(("search", RUN, *LATENCY), ("torch-cpu.json", "space.resolutions"),
                                                  _without("search", "select", "finetune", "export",
                                                           then=_table((16,)))),
    "run-latency-without-table": Case(("run", CFG, *LATENCY), ("torch-cpu.json", "nat2 latency"), _tiny()),
    "non-finite-loss": Case(("train-supernet", CFG, "--set", "train.eps=[{{name: full, epochs: 1, lr: 1.0e+12}}]"),
                            ("non-finite",), _tiny(), absent=("last.pt",)),
}
if not torch.cuda.is_available():
    CASES["cuda-without-gpu"] = Case(("run", CFG, "--set", "train.device=cuda"), ("train.device", "cuda"), _tiny())
    CASES["latency-cuda-without-gpu"] = Case(("latency", RUN, "--backend", "torch-cuda"), ("torch-cuda", "GPU"))


def _copy(finished: Path, to: Path) -> RunDir:
    """A copy of the finished run that records its own folder as run.dir, as if it had run there."""
    shutil.copytree(finished, to)
    run = RunDir(to)
    config = yaml.safe_load(run.config_file.read_text())
    config["run"]["dir"] = str(to)
    run.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return run


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_ends_in_one_clear_line_and_loses_nothing(name, finished_run, tmp_path, capsys):
    case = CASES[name]
    run = _copy(finished_run, tmp_path / "run")
    if case.setup is not None:
        case.setup(run, tmp_path)
    before = _files(tmp_path)
    names = {"run": run.path, "tmp": tmp_path}
    if run.stage("export").is_dir():
        names |= {"export": _export(run).name, "subnet": _job(run)[0]}
    capsys.readouterr()
    try:
        code = main([arg.format(**names) for arg in case.args])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()             # log lines, warnings and progress bars may come before the error
    assert lines[-1].startswith("nat2") and sum(": error: " in line for line in lines) == 1, err
    assert "Traceback" not in err and all(text in lines[-1] for text in case.expect), err
    assert not any(text in lines[-1] for text in case.absent), err
    if RUN in case.args and not lines[-1].endswith("--help`)"):      # flag errors stop before the run directory
        assert lines[-1] in run.log_file(case.args[0]).read_text()
    after = _files(tmp_path)
    for path, data in before.items():
        if "logs" in path.relative_to(tmp_path).parts:
            assert after[path].startswith(data), path
        elif path.name != "env.json":    # the environment of the latest command
            assert after.get(path) == data, path


def test_the_recovery_a_message_names_writes_the_file_again(finished_run, tmp_path, capsys):
    """For a damaged search state or front: delete it and resume the search, as the message says."""
    run = _copy(finished_run, tmp_path / "run")
    originals = {path: json.loads(path.read_text()) for path in (run.search.state, run.search.final)}
    run.search.state.write_text(NOT_JSON)
    assert main(["search", str(run.path), "--resume"]) == 2
    assert f"delete it and run `nat2 search {run.path} --resume`" in capsys.readouterr().err
    for path in originals:
        path.unlink()
    assert main(["search", str(run.path), "--resume"]) == 0
    assert {path: json.loads(path.read_text()) for path in originals} == originals
