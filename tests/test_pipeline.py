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
from tiny_run import write_config

EXPORT_FILES = {"arch.json", "weights.safetensors", "model.pt2", "model.onnx", "metadata.json"}


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


def test_run_writes_every_file_of_the_run_directory(finished_run, capsys):
    run = RunDir(finished_run)
    logs = [run.log_file(command) for command in ("train-supernet", "search", "finetune", "export")]
    for path in (run.config_file, run.env_file, *logs, run.search.state, run.search.final, run.search.curves,
                 run.search.front_plot, run.selection_file):
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
    assert main(["run", str(finished_run.parent / "run.yaml")]) == 0     # everything done: only the table
    out = capsys.readouterr().out
    assert "resuming" in out and "test top-1" in out and "front.png" in out
    assert all(name in out for name in exports)


class _Kill(Exception):
    pass


@pytest.mark.parametrize("stage", ["train-supernet", "search", "finetune", "export"])
def test_run_resumes_after_a_kill_in_each_stage(stage, finished_run, tmp_path, monkeypatch):
    target, name, limit = {"train-supernet": (PhaseTrainer, "train_step", 3), "search": (Evaluator, "top1", 20),
                           "finetune": (Finetuner, "_epoch", 4), "export": (export_stage, "export_subnet", 1)}[stage]
    original, calls = getattr(target, name), []

    def dying(*args, **kwargs):
        if len(calls) == limit:
            raise _Kill
        calls.append(1)
        return original(*args, **kwargs)
    monkeypatch.setattr(target, name, dying)
    config = write_config(tmp_path)
    with pytest.raises(_Kill):
        main(["run", str(config)])
    monkeypatch.setattr(target, name, original)
    assert main(["run", str(config)]) == 0
    assert _results(tmp_path / "run") == _results(finished_run)


@pytest.fixture
def searched(finished_run, tmp_path):
    """A copy of the finished run that has finished its search but not fine-tuning."""
    original, run = RunDir(finished_run), RunDir(tmp_path / "run")
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
        assert err.startswith("nat2 select: error: ") and err.count("\n") == 1
    assert str(run.search.final) in err and "'knee'" in err
    assert {p: p.read_bytes() for p in files} == files


def test_the_selection_is_fixed_once_fine_tuning_has_started(finished_run, capsys):
    assert main(["select", str(finished_run), "--method", "front"]) == 2
    assert "fine-tuning has started" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["torch", "pt2", "onnx"])
def test_evaluate_an_export_reproduces_its_fine_tuning_test_score(finished_run, fmt, capsys):
    run = RunDir(finished_run)
    name = sorted(p.name for p in run.stage("export").iterdir())[-1]
    meta = run.exports()[name]
    capsys.readouterr()
    assert main(["evaluate", str(finished_run), "--subnet", name, "--split", "test", "--format", fmt]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["top1"] == pytest.approx(meta["accuracy"]["test_top1"], abs=1e-6)
    assert out["images"] == 50 and out["split"] == "test"


def test_bad_input_gets_clear_errors(finished_run, searched, tmp_path, capsys):
    assert main(["export", str(searched)]) == 2                       # no selection, no fine-tuning
    assert f"{RunDir(searched).selection_file} does not exist" in capsys.readouterr().err
    assert main(["select", str(searched)]) == 0
    assert main(["export", str(searched)]) == 2                       # selected, not fine-tuned
    assert "not fine-tuned yet" in capsys.readouterr().err
    assert main(["export", str(finished_run), "--subnet", "subnet_99"]) == 2
    assert "no fine-tuned subnet named subnet_99" in capsys.readouterr().err
    assert main(["evaluate", str(finished_run), "--subnet", "subnet_99"]) == 2
    assert "no exported subnet 'subnet_99'" in capsys.readouterr().err
    bad = write_config(tmp_path, "bad", "finetune_typo: {epochs: 3}\n")
    assert main(["run", str(bad)]) == 2
    assert "unknown config key 'finetune_typo'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    assert main(["finetune", str(tmp_path)]) == 2                     # a folder that is no run directory
    assert f"{tmp_path} is a directory without {RunDir(tmp_path).config_file.name}" in capsys.readouterr().err
    assert main(["run", str(write_config(tmp_path, "odd")), "--set", "finetune.optimizer=adam"]) == 2
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


def test_a_finished_run_only_prints_its_table(finished_run, tmp_path, capsys, monkeypatch):
    """Run again, a finished run opens no earlier stage (its supernet checkpoints may even be
    unreadable), re-exports nothing and removes what a killed export left; its own config.yaml
    means that run, and the run.dir it records keeps pointing at it."""
    run = RunDir(tmp_path / "run")
    shutil.copytree(finished_run, run.path)
    for which in ("last", "best"):
        run.phase_checkpoint(1.0, "all", which).write_bytes(b"damaged")
    exports = {p: p.read_bytes() for p in run.stage("export").rglob("*") if p.is_file()}
    stale = run.export(".subnet_00.k1ll3d_x")             # killed while writing its metadata.json
    stale.mkdir()
    (stale / "metadata.json").write_text('{"subnet": "subn')
    capsys.readouterr()
    assert main(["run", str(run.config_file)]) == 0
    out = capsys.readouterr().out
    for command in ("train-supernet", "search", "select", "finetune"):
        assert f"== nat2 {command}: done in" in out
    assert "test top-1" in out and not stale.exists()
    assert {p: p.read_bytes() for p in run.stage("export").rglob("*") if p.is_file()} == exports
    assert RunDir(tmp_path / "run").saved_config()["run"]["dir"] == str(run.path)
    saved = run.config_file.read_bytes()
    monkeypatch.chdir(tmp_path)
    assert main(["select", "run", "--method", "front"]) == 2   # fine-tuning has started: an error, logged
    assert run.config_file.read_bytes() == saved             # run.dir stays absolute
    assert "fine-tuning has started" in run.log_file("select").read_text()


def test_evaluate_on_validation_warns_that_step_2_trained_on_it(finished_run, capsys):
    name = sorted(RunDir(finished_run).exports())[0]
    capsys.readouterr()
    assert main(["evaluate", str(finished_run), "--subnet", name]) == 0
    assert f"step 2 of fine-tuning trained {name} on the validation images" in capsys.readouterr().err
