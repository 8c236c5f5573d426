"""`nat2 run` end to end on a tiny synthetic config: every file of the run directory, resume after
a kill in each stage, selection methods, evaluation of exports, and bad input."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import nat2.app.stages.export as export_stage
from nat2.app.cli import main
from nat2.app.rundir import RunDir
from nat2.search.evaluate import Evaluator
from postprocess.finetune import Finetuner
from supernets.train import PhaseTrainer

CONFIG = """\
data: {{name: synthetic, calibration_size: 16}}
supernet: {{resolutions: [12, 16], widths: [1.0], early_exits: true}}
run: {{dir: {run}}}
train:
  batch_size: 50
  val_settings: 2
  eps:
    - {{name: full, epochs: 1, lr: 0.05, aep: true}}
    - {{name: all, kernels: all, expands: all, depths: all, exits: all, epochs: 1, lr: 0.01, subnets_per_step: 2}}
search:
  archive_size: 8
  multiplier: 2
  iterations: 1
  candidates: 3
  population: 12
  generations: 3
  knees: 2
  adapt: {{epochs: 1, subnets_per_step: 2}}
select: {{method: knee}}
finetune: {{epochs: 3, patience: 1, batch_size: 50}}
"""
EXPORT_FILES = {"arch.json", "weights.safetensors", "model.pt2", "model.onnx", "metadata.json"}


def _config(root: Path, name: str = "run") -> Path:
    path = root / f"{name}.yaml"
    path.write_text(CONFIG.format(run=root / name))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted `nat2 run`."""
    root = tmp_path_factory.mktemp("pipeline")
    assert main(["run", str(_config(root))]) == 0
    return root / "run"


def _results(path: Path) -> dict:
    """What a run produced, without what legitimately differs between processes (logs, times)."""
    run = RunDir(path)
    out = {"front": json.loads(run.search.final.read_text()),
           "selected": json.loads(run.selection_file.read_text())}
    for job in sorted(run.stage("finetune").glob("*/*")):
        subnet, variant = job.parent.name, job.name
        if (result := run.result(subnet, variant)) is not None:
            out[f"{subnet}/{variant}"] = result
    exports = run.exports()
    assert set(exports) == {p.name for p in run.stage("export").iterdir()}   # every export has its metadata
    for name, meta in exports.items():
        out[name] = (meta["accuracy"], meta["exits"], (run.export(name) / "weights.safetensors").read_bytes())
    return out


def test_run_writes_every_file_of_the_run_directory(reference, capsys):
    run = RunDir(reference)
    logs = [run.log_file(command) for command in ("train-supernet", "search", "finetune", "export")]
    for path in (run.config_file, run.env_file, *logs, run.search.state, run.search.final, run.search.curves,
                 run.selection_file):
        assert path.is_file(), path
    for phase in ("full", "all"):
        for which in ("last", "best"):
            assert run.phase_checkpoint(1.0, phase, which).is_file()
        assert (run.supernet(1.0) / phase / "metrics.csv").is_file()
    for k in (0, 1):
        for path in (run.search.archive(k), run.search.stats(k), run.search.pareto(k)):
            assert path.is_file()
    knees = [r for r in json.loads(run.search.final.read_text()) if r["knee"]]
    selected = json.loads(run.selection_file.read_text())
    assert selected["method"] == "knee" and [r["id"] for r in selected["subnets"]] == [r["id"] for r in knees]
    exports = {p.name for p in run.stage("export").iterdir()}
    expected = set()
    for row in knees:
        assert run.result_file(row["id"], "single").is_file()
        expected.add(row["id"])
        if len(row["arch"]["stages"]) > 1:                # early-exit subnets also get the AEP variant
            expected.add(f"{row['id']}_aep")
    assert exports == expected
    for name in exports:
        folder = run.export(name)
        assert {p.name for p in folder.iterdir()} == EXPORT_FILES
        meta = json.loads((folder / "metadata.json").read_text())
        assert set(meta["accuracy"]) == {"search_val_top1", "val_top1_before", "val_top1_after_step1", "test_top1"}
        assert meta["params"] > 0 and meta["macs"] > 0 and meta["resolution"] in (12, 16)
        assert meta["dataset"] == "synthetic" and len(meta["input"]["mean"]) == 3
        assert max(meta["parity"].values()) <= 1e-4
    capsys.readouterr()
    assert main(["run", str(reference.parent / "run.yaml")]) == 0     # everything done: only the table
    out = capsys.readouterr().out
    assert "resuming" in out and "test top-1" in out and "pareto.png" in out
    assert all(name in out for name in exports)


class _Kill(Exception):
    pass


@pytest.mark.parametrize("stage", ["train-supernet", "search", "finetune", "export"])
def test_run_resumes_after_a_kill_in_each_stage(stage, reference, tmp_path, monkeypatch):
    target, name, limit = {"train-supernet": (PhaseTrainer, "train_step", 3), "search": (Evaluator, "top1", 20),
                           "finetune": (Finetuner, "_epoch", 4), "export": (export_stage, "export_subnet", 1)}[stage]
    original, calls = getattr(target, name), []

    def dying(*args, **kwargs):
        if len(calls) == limit:
            raise _Kill
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(target, name, dying)
    config = _config(tmp_path)
    with pytest.raises(_Kill):
        main(["run", str(config)])
    monkeypatch.setattr(target, name, original)
    assert main(["run", str(config)]) == 0
    assert _results(tmp_path / "run") == _results(reference)


@pytest.fixture
def searched(reference, tmp_path):
    """A copy of the reference run that has finished its search but not fine-tuning."""
    original, run = RunDir(reference), RunDir(tmp_path / "run")
    run.path.mkdir()
    shutil.copy(original.config_file, run.config_file)
    for stage in ("supernet", "search"):
        shutil.copytree(original.stage(stage), run.stage(stage))
    return run.path


def test_select_rbifa_picks_the_most_accurate_at_wp_1_and_the_cheapest_at_wp_0(searched):
    run = RunDir(searched)
    state = json.loads(run.search.state.read_text())
    records = json.loads(run.search.archive(state["iterations_done"]).read_text())["records"]
    top1 = np.array([r["top1"] for r in records])
    params = np.array([r["params"] for r in records])
    for wp, best in ((1.0, top1.max()), (0.0, None)):
        assert main(["select", str(searched), "--method", "rbifa", "--wp", str(wp)]) == 0
        chosen = json.loads(run.selection_file.read_text())["subnets"]
        assert len(chosen) == 1
        if best is None:
            assert chosen[0]["params"] == params.min()
        else:
            assert chosen[0]["val_top1"] == best
    assert main(["select", str(searched), "--method", "front"]) == 0
    chosen = json.loads(run.selection_file.read_text())
    front = json.loads(run.search.final.read_text())
    assert chosen["method"] == "front" and [r["id"] for r in chosen["subnets"]] == [r["id"] for r in front]


def test_a_rejected_selection_leaves_the_run_directory_as_it_was(searched, capsys):
    """A bad value or a damaged front fails before select deletes or writes anything."""
    run = RunDir(searched)
    assert main(["select", str(searched)]) == 0
    front = json.loads(run.search.final.read_text())
    del front[0]["knee"]
    run.search.final.write_text(json.dumps(front))
    files = {p: p.read_bytes() for p in (run.config_file, run.selection_file, run.search.final)}
    capsys.readouterr()
    for args in (["--wp", "1.5"], ["--wp", "nan"], ["--n", "0"], ["--set", "select.method=best"], []):
        assert main(["select", str(searched), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("nat2: error: ") and err.count("\n") == 1
    assert str(run.search.final) in err and "'knee'" in err
    assert {p: p.read_bytes() for p in files} == files


def test_the_selection_is_fixed_once_fine_tuning_has_started(reference, capsys):
    assert main(["select", str(reference), "--method", "front"]) == 2
    assert "fine-tuning has started" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["torch", "pt2", "onnx"])
def test_evaluate_an_export_reproduces_its_fine_tuning_test_score(reference, fmt, capsys):
    run = RunDir(reference)
    name = sorted(p.name for p in run.stage("export").iterdir())[-1]
    meta = run.exports()[name]
    capsys.readouterr()
    assert main(["evaluate", str(reference), "--subnet", name, "--split", "test", "--format", fmt]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top1"] == pytest.approx(meta["accuracy"]["test_top1"], abs=1e-6)
    assert out["images"] == 50 and out["split"] == "test"


def test_bad_input_gets_clear_errors(reference, searched, tmp_path, capsys):
    assert main(["export", str(searched)]) == 2                       # no selection, no fine-tuning
    assert f"{RunDir(searched).selection_file} does not exist" in capsys.readouterr().err
    assert main(["select", str(searched)]) == 0
    assert main(["export", str(searched)]) == 2                       # selected, not fine-tuned
    assert "not fine-tuned yet" in capsys.readouterr().err
    assert main(["export", str(reference), "--subnet", "subnet_99"]) == 2
    assert "no fine-tuned subnet named subnet_99" in capsys.readouterr().err
    assert main(["evaluate", str(reference), "--subnet", "subnet_99"]) == 2
    assert "no exported subnet 'subnet_99'" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.format(run=tmp_path / "bad") + "finetune_typo: {epochs: 3}\n")
    assert main(["run", str(bad)]) == 2
    assert "unknown config key 'finetune_typo'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["finetune", str(tmp_path)]) == 2                     # a folder that is no run directory
    assert f"{tmp_path} is a directory without {RunDir(tmp_path).config_file.name}" in capsys.readouterr().err
    assert main(["run", str(_config(tmp_path, "odd")), "--set", "finetune.optimizer=adam"]) == 2
    assert "finetune.optimizer" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["cifar10", "cifar100", "tinyimagenet"])
def test_presets_are_valid_and_name_the_missing_data(preset, tmp_path, capsys):
    root = Path(__file__).resolve().parents[1]
    assert main(["run", str(root / "configs" / f"{preset}.yaml"), "--set", f"run.dir={tmp_path / 'run'}",
                 "--set", f"data.root={tmp_path / 'nothing'}"]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "expected" in err and str(tmp_path / "nothing") in err
    assert not RunDir(tmp_path / "run").stage("supernet").exists()


def test_search_strategy_rbifa_from_the_command_line(searched, capsys):
    assert main(["search", str(searched), "--strategy", "rbifa", "--wp", "1.5"]) == 2
    assert "expected a performance weight in [0, 1]" in capsys.readouterr().err
    assert main(["search", str(searched), "--strategy", "rbifa", "--wp", "0", "1", "--set", "rbifa.generations=2",
                 "--set", "rbifa.population=4"]) == 0
    files = RunDir(searched).tfsearch
    result = json.loads(files.result.read_text())
    assert result["strategy"] == "rbifa" and [r["wp"] for r in result["chosen"]] == [0.0, 1.0]
    cheap, strong = result["chosen"]
    assert cheap["macs"] <= strong["macs"] and files.front_plot.is_file()
    assert "tf_01" in capsys.readouterr().out
