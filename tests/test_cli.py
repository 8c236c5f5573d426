import pytest

from nat2.cli import main
from nat2.config import ConfigError, load_config


def test_overrides_and_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("supernet:\n  parallel: true\n")
    config = load_config(path, ["sample.n=3", "supernet.resolutions=[16, 24]"])
    assert config["supernet"]["parallel"] is True
    assert config["sample"]["n"] == 3
    assert config["supernet"]["resolutions"] == [16, 24]
    assert config["data"]["name"] == "digits"


@pytest.mark.parametrize("text, overrides, message", [
    ("supernet:\n  paralel: true\n", [], r"unknown config key 'supernet.paralel'"),
    ("data: 3\n", [], r"'data' must be a mapping"),
    ("a: [\n", [], r"not valid YAML"),
    ("- 1\n", [], r"must hold a mapping"),
    ("", ["sample.n"], r"override 'sample.n' must look like key.sub=value"),
    ("", ["nope.x=1"], r"unknown config key 'nope'"),
])
def test_bad_configs_raise_a_clear_error(tmp_path, text, overrides, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path, overrides)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_sample_command_prints_costed_subnets(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: synthetic, calibration_size: 20}\n"
                    "supernet: {resolutions: [16], widths: [1.0], early_exits: true}\nsample: {n: 2}\n")
    assert main(["sample", str(path)]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line[:1].isdigit()]
    assert len(lines) == 4  # min, two samples, max
    assert lines[0].split()[:5] == ["0", "0", "0", "1", "1"]  # min: exit 1, two k3e3 blocks
    assert "r16 w1 x5" in lines[-1]


def test_user_errors_exit_2_with_a_message(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {name: cifar10, root: " + str(tmp_path / "nowhere") + "}\n")
    assert main(["sample", str(path)]) == 2
    assert "CIFAR-10 not found at" in capsys.readouterr().err
