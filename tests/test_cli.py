import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from nat2.app.cli import main
from nat2.app.config import Config, ConfigError, TrainSection, defaults_yaml, load_config
from nat2.app.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def test_overrides_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("supernet:\n  parallel: true\n")
    config = load_config(path, ["sample.n=3", "supernet.resolutions=[16, 24]"])
    assert config.supernet.parallel is True
    assert config.sample.n == 3
    assert config.supernet.resolutions == [16, 24]
    assert config.data.name == "digits"


@pytest.mark.parametrize("text, overrides, message", [
    ("supernet:\n  paralel: true\n", [], r"unknown config key 'supernet.paralel'"),
    ("data: 3\n", [], r"'data' must be a mapping"),
    ("a: [\n", [], r"not valid YAML"),
    ("- 1\n", [], r"must hold a mapping"),
    ("sample: {n: 2}\n", ["sample.n"], r"override 'sample.n' must look like key.sub=value"),
    ("sample: {n: 2}\n", ["nope.x=1"], r"unknown config key 'nope'"),
    ("", [], r"c.yaml is empty; expected at least one section"),
])
def test_bad_configs_raise_a_clear_error(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_defaults_file_lists_every_default():
    text = (ROOT / "configs" / "defaults.yaml").read_text()
    assert text == defaults_yaml(), ("configs/defaults.yaml is stale; regenerate it with python -c "
                                     "\"from nat2.app.config import defaults_yaml; print(defaults_yaml(), end='')\"")
    assert load_config(ROOT / "configs" / "defaults.yaml") == Config() == load_config(None)


@pytest.mark.parametrize("override, key", [
    ("data.name=mnist", "data.name"), ("data.calibration_size=0", "data.calibration_size"),
    ("supernet.dense=maybe", "supernet.dense"), ("supernet.depths=[2, 4]", "supernet"),
    ("sample.n=0", "sample.n"), ("run.dir=null", None),
    ("search.candidates=0", "search.candidates"), ("search.adapt.epochs=-1", "search.adapt.epochs"),
    ("search.adapt.lr=fast", "search.adapt.lr"), ("select.method=best", "select.method"),
    ("select.wp=1.5", "select.wp"), ("finetune.variants=[fancy]", "finetune.variants"),
    ("finetune.epochs=0", "finetune.epochs"), ("export.tolerance=-1", "export.tolerance"),
    ("rbifa.init=pretrained", "rbifa.init"), ("rbifa.wp=[2]", "rbifa.wp"), ("rbifa.gamma=-1", "rbifa.gamma"),
    ("train.schedule=cosine", "train.schedule"), ("train.device=tpu", "train.device"),
    ("train.batch_size=0", "batch_size"), ("train.eps=[{name: x, epochs: 0}]", "train.eps"),
    ("train.warmup=[{name: x, epochs: 0}]", "train.warmup"), ("train.source={1.2: a.pt}", "train.source"),
    ("supernet.resolutions=[0]", "supernet.resolutions"), ("search.supernet=5", "search.supernet"),
    ("data.root=[a]", "data.root"), ("search.warm_start=3", "search.warm_start"),
])
def test_run_rejects_a_bad_value_of_any_section_before_it_starts(tmp_path, capsys, override, key):
    """Every section is checked when the config loads: nothing is written for a bad value."""
    run = tmp_path / "run"
    cheap = "train.eps=[]" if key is None else "sample.n=1"     # before `override`: sample.n=0 must win
    code = main(["run", str(ROOT / "configs" / "demo.yaml"), "--set", f"run.dir={run}", "--set", cheap,
                 "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("nat2 run: error: ") and err.count("\n") == 1
    assert (key or "train.eps") in err
    assert not run.exists()


def test_finetune_evaluates_with_the_train_sections_settings():
    config = Config(train=TrainSection(eval_batch_size=64, num_workers=2))
    assert (config.finetune.eval_batch_size, config.finetune.num_workers) == (64, 2)
    assert Config.from_dict(config.to_dict()) == config


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_sample_command_prints_costed_subnets(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: synthetic, calibration_size: 20}\n"
                    "supernet: {resolutions: [16], widths: [1.0], early_exits: true}\nsample: {n: 2}\n")
    assert main(["sample", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line.split() for line in out.splitlines() if line.split()[0] in ("min", "1", "2", "max")]
    assert [line[0] for line in lines] == ["min", "1", "2", "max"]
    assert lines[0][1:6] == ["0", "0", "0", "1", "1"]  # min: exit 1, two k3e3 blocks
    assert "r16 w1 x5" in " ".join(lines[-1])


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: cifar10, root: " + str(tmp_path / "nowhere") + "}\n")
    assert main(["sample", str(path)]) == 2
    assert "CIFAR-10 not found at" in capsys.readouterr().err


TINY = ("data: {{name: synthetic, calibration_size: 16}}\n"
        "supernet: {{resolutions: [12], widths: [1.0, 1.2], early_exits: true}}\n"
        "run: {{dir: {run}}}\n"
        "train:\n  batch_size: 50\n  val_settings: 2\n  schedule: {schedule}\n  source: {source}\n"
        "  eps:\n    - {{name: full, epochs: 1, lr: 0.05, aep: true}}\n"
        "    - {{name: exits, only: early_exits, exits: all, epochs: 1, lr: 0.01, subnets_per_step: 2}}\n"
        "  warmup:\n    - {{name: max, epochs: 1, lr: 0.01, grad_clip: 5.0, aep: true}}\n"
        "    - {{name: uniform, kernels: all, expands: all, depths: all, exits: all, epochs: 1, lr: 0.01}}\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished `nat2 train-supernet` run of two tiny early-exit supernets."""
    root = tmp_path_factory.mktemp("train")
    config = root / "tiny.yaml"
    config.write_text(TINY.format(run=root / "run", schedule="eps", source="null"))
    assert main(["train-supernet", str(config)]) == 0
    return config, RunDir(root / "run")


def test_train_supernet_writes_the_run_directory(trained, capsys):
    _, run = trained
    assert run.config_file.is_file() and run.env_file.is_file()
    assert "phase exits" in run.log_file("train-supernet").read_text()
    for width in (1.0, 1.2):
        for phase in ("full", "exits"):
            for which in ("last", "best"):
                assert run.phase_checkpoint(width, phase, which).is_file()
            assert (run.supernet(width) / phase / "metrics.csv").is_file()
        assert list((run.tensorboard(width) / "exits").glob("events.out.tfevents.*"))
    header, row = (run.supernet(1.2) / "exits" / "metrics.csv").read_text().splitlines()
    assert header == "epoch,lr,train_loss,val_top1,val_min_net_top1,val_max_net_top1,val_full_top1,seconds,val_seconds"
    assert row.startswith("1,")


def test_train_supernet_guards_and_resumes_a_run(trained, capsys):
    config, _ = trained
    assert main(["train-supernet", str(config)]) == 2
    assert "already holds results; pass --resume" in capsys.readouterr().err
    assert main(["train-supernet", str(config), "--resume", "--set", "train.kd_ratio=0.5"]) == 2
    assert "config differs from" in capsys.readouterr().err
    assert main(["train-supernet", str(config), "--resume", "--set", "train.num_workers=0"]) == 0
    assert "supernet ready" in capsys.readouterr().out


def test_warm_up_starts_from_a_source_checkpoint(trained, tmp_path, capsys):
    _, run = trained
    config = tmp_path / "warm.yaml"
    source = {width: str(run.phase_checkpoint(width, "exits")) for width in (1.0, 1.2)}    # width -> checkpoint
    config.write_text(TINY.format(run=tmp_path / "run", schedule="warmup", source=json.dumps(source)))
    assert main(["train-supernet", str(config)]) == 0
    warm = RunDir(tmp_path / "run")
    log = warm.log_file("train-supernet").read_text()
    assert "width 1.2: starting from" in log and "(nat2-supernet format)" in log
    assert warm.phase_checkpoint(1.0, "uniform").is_file()


@pytest.mark.parametrize("override, message", [
    ("train.schedule=fast", "train.schedule = 'fast'; expected one of eps, warmup"),
    ("train.eps=[{name: full, epochs: 1, lr: 0.1, kernels: [9]}]", "has \\[9\\], which the supernet does not have"),
    ("train.teacher_bn=student", "train: teacher_bn = 'student'"),
    ("train.source=/nowhere/{width}.pt", "checkpoint /nowhere/1.0.pt does not exist"),
])
def test_train_supernet_bad_input_exits_2(tmp_path, capsys, override, message):
    config = tmp_path / "c.yaml"
    config.write_text(TINY.format(run=tmp_path / "run", schedule="eps", source="null"))
    assert main(["train-supernet", str(config), "--set", override]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_resume_without_a_run_is_an_error(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(TINY.format(run=tmp_path / "run", schedule="eps", source="null"))
    assert main(["train-supernet", str(config), "--resume"]) == 2
    assert "does not exist; run without --resume" in capsys.readouterr().err


def test_help_version_and_flag_errors_answer_without_loading_torch(capsys):
    probe = "import sys, nat2.app.cli; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and re.fullmatch(r"nat2 \S+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit) as stop:
        main(["select", "runs/x", "--wp", "abc"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err == ("nat2 select: error: argument --wp: invalid float value: 'abc' "
                                            "(see `nat2 select --help`)\n")


def test_yaml_reads_exponents_as_numbers_and_refuses_repeated_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("finetune: {lr: 5e-2}\nsearch:\n  iterations: 2\n")
    config = load_config(path, ["export.tolerance=1E-3"])
    assert config.finetune.lr == 0.05 and config.export.tolerance == 0.001
    path.write_text("search:\n  iterations: 2\n  iterations: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML at line 3, column 3: key 'iterations' appears "
                                          "twice"):
        load_config(path)
