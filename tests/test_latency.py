"""Latency tables: measuring, resuming, refusing foreign tables, predicting as the sum of parts
(vectorised and one by one), the check against whole subnets, the objective in a search, and the
measured latency in export metadata."""
import json
import shutil

import numpy as np
import pytest
import yaml

import nat2.latency as latency_module
from nat2.app.cli import main
from nat2.app.config import load_config
from nat2.app.rundir import RunDir
from nat2.app.stages.select import select
from nat2.latency import LatencyTable, agreement, calibrate, identity
from supernets import Architecture, Space
from supernets.latency import (LatencyError, Meter, Timing, add_key, block_key, dense_adds, head_key, parts,
                               stem_key)
from tiny_run import write_config

FAST = ["--set", "latency.warmup=1", "--set", "latency.rounds=2", "--set", "latency.round_ms=0.2",
        "--set", "latency.passes=2", "--set", "latency.calibration=3"]
DENSE = "supernet: {resolutions: [12, 16], widths: [1.0], early_exits: true, dense: true, parallel: true}\n"


def _tiny(root, extra=""):
    """The tiny config with dense skips and parallel blocks (every kind of part)."""
    path = write_config(root)
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("supernet:"))
                    + "\n" + DENSE + extra)
    return path


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A run directory with a torch-cpu table of the dense, parallel tiny space and its check."""
    root = tmp_path_factory.mktemp("latency")
    assert main(["latency", str(_tiny(root)), "--check", "6", *FAST]) == 0
    return RunDir(root / "run")


def test_the_table_holds_every_part_and_reads_back_equal(measured, tmp_path):
    path = measured.latency_table("torch-cpu")
    table = LatencyTable.read(path)
    assert table.missing() == [] and table.calibration["scale"] > 0
    assert set(table.times) == {p.key for p in parts(table.space, True, 10)}
    assert all(len(t) == 2 and min(t) > 0 for t in table.times.values())
    assert table.device["backend"] == "torch-cpu" and table.device["threads"] == 1
    table.write(tmp_path / "copy.json")
    again = LatencyTable.read(tmp_path / "copy.json")
    assert (again.identity, again.device, again.times, again.calibration) == \
        (table.identity, table.device, table.times, table.calibration)


def _space(measured):
    return load_config(measured.config_file).supernet.search_space()


def test_a_prediction_is_the_scaled_sum_of_its_parts(measured):
    table = LatencyTable.read(measured.latency_table("torch-cpu"))
    space = _space(measured)
    for x in space.sample(np.random.default_rng(1), 20):
        arch = space.decode(x)
        w, r = arch.width, arch.resolution
        parts_ = [stem_key(w, r), head_key(w, r, arch.exit)]
        for s, b, block in arch.blocks():
            parts_ += [block_key(w, r, s, b, block)] + [add_key(w, r, s)] * dense_adds(b)
        scale, offset = table.calibration["scale"], table.calibration["offset_ms"]
        assert sorted(table.arch_parts(arch)) == sorted(parts_)
        assert table.predict_arch(arch) == pytest.approx(sum(max(0, scale * table.ms(k) + offset) for k in parts_))
        if arch.exit > 1:
            heads = sum(max(0, scale * table.ms(head_key(w, r, e)) + offset) for e in range(1, arch.exit))
            assert table.predict_arch(arch, "all") == pytest.approx(table.predict_arch(arch) + heads)


def test_the_vectorised_prediction_equals_the_one_by_one_sum(measured):
    table = LatencyTable.read(measured.latency_table("torch-cpu"))
    space = _space(measured)
    X = np.concatenate([space.sample(np.random.default_rng(2), 200), [space.min_encoding, space.max_encoding]])
    one_by_one = [table.predict_arch(space.decode(x)) for x in X]
    assert np.allclose(table.predict(space, X), one_by_one, rtol=1e-12)
    assert len(set(np.round(one_by_one, 9))) > 150


def test_check_reports_predicted_against_measured(measured):
    report = json.loads(measured.latency_check("torch-cpu", ".json").read_text())
    assert report["n"] == 6 == len(report["subnets"]) and report["backend"] == "torch-cpu"
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in report["subnets"])
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in report["subnets"]]
    assert report["mape"] == pytest.approx(np.mean(errors)) and -1 <= report["spearman"] <= 1
    assert measured.latency_check("torch-cpu", ".png").stat().st_size > 10_000


def _copy(measured, tmp_path):
    shutil.copytree(measured.path, tmp_path / "run")
    run = RunDir(tmp_path / "run")
    config = run.config_file.read_text().replace(str(measured.path), str(run.path))
    run.config_file.write_text(config)
    return run


def test_a_killed_build_resumes_and_keeps_what_it_measured(measured, tmp_path, monkeypatch, capsys):
    run = _copy(measured, tmp_path)
    path = run.latency_table("torch-cpu")
    old = json.loads(path.read_text())
    kept = dict(list(old["parts"].items())[:latency_module.CHUNK])
    path.write_text(json.dumps({**old, "parts": kept, "calibration": None}))
    timed = []
    real = Meter.time
    monkeypatch.setattr(Meter, "time", lambda self, call: timed.append(1) or real(self, call))
    assert main(["latency", str(run.path), *FAST]) == 0
    table = LatencyTable.read(path)
    assert table.missing() == [] and table.calibration is not None
    assert all(table.times[k] == v for k, v in kept.items())
    n_parts = len(old["parts"]) - len(kept)
    assert len(timed) == 2 * (n_parts + 3)               # two passes of the missing parts and the calibration
    assert f"{len(old['parts'])} parts ({n_parts} timed now" in capsys.readouterr().out


@pytest.mark.parametrize("change, args, named", [
    ({"supernet": {"resolutions": [12]}}, [], ("space.resolutions", "another run or space")),
    ({"supernet": {"dense": False}}, [], ("dense True (here: False)",)),
    ({}, ["--threads", "2"], ("timing.threads 1 (here: 2)", "its own settings")),
    ({"device": "an edge board"}, [], ("another machine", "device.cpu 'an edge board'")),
])
def test_a_table_for_another_setting_is_refused_with_the_difference(measured, tmp_path, capsys, change, args, named):
    """The run's config changed under its table (or the table came from another device)."""
    run = _copy(measured, tmp_path)
    if "device" in change:
        data = json.loads(run.latency_table("torch-cpu").read_text())
        data["device"]["cpu"] = change.pop("device")
        run.latency_table("torch-cpu").write_text(json.dumps(data))
    config = yaml.safe_load(run.config_file.read_text())
    for section, values in change.items():
        config[section].update(values)
    run.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    before = run.latency_table("torch-cpu").read_bytes()
    assert main(["latency", str(run.path), *FAST, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "torch-cpu.json" in err and all(text in err for text in named) and "move it away" in err, err
    assert run.latency_table("torch-cpu").read_bytes() == before


def test_a_search_refuses_a_table_of_another_space_or_backend(measured, tmp_path):
    from nat2.app.context import run_table

    run = _copy(measured, tmp_path)
    shutil.copy(run.latency_table("torch-cpu"), run.latency_table("onnxruntime"))
    config = load_config(run.config_file)
    with pytest.raises(LatencyError, match="backend 'torch-cpu' \\(here: 'onnxruntime'\\).*nat2 latency"):
        run_table(config, run, "onnxruntime", 10)
    with pytest.raises(LatencyError, match="n_classes 10 \\(here: 100\\)"):
        run_table(config, run, "torch-cpu", 100)
    other = load_config(run.config_file, ["supernet.kernels=[3, 5]"])
    with pytest.raises(LatencyError, match="space.kernels"):
        run_table(other, run, "torch-cpu", 10)
    assert run_table(config, run, "torch-cpu", 10).missing() == []


def test_an_incomplete_table_is_refused(measured, tmp_path):
    table = LatencyTable.read(measured.latency_table("torch-cpu"))
    table.times.popitem()
    with pytest.raises(LatencyError, match="incomplete: 1 of .* parts and the calibration .* again"):
        table.check(identity("torch-cpu", table.space, True, 10), "t.json")
    table.calibration = None
    table.times = LatencyTable.read(measured.latency_table("torch-cpu")).times
    with pytest.raises(LatencyError, match="incomplete: the calibration still"):
        table.check(identity("torch-cpu", table.space, True, 10), "t.json")


def test_calibration_recovers_a_known_scale_and_per_part_offset():
    rng = np.random.default_rng(0)
    alone = [list(rng.uniform(0.01, 0.5, n)) for n in rng.integers(4, 25, 20)]
    whole = [1.2 * sum(t) - 0.01 * len(t) for t in alone]
    c = calibrate(alone, whole)
    assert c["scale"] == pytest.approx(1.2) and c["offset_ms"] == pytest.approx(-0.01) and c["subnets"] == 20
    same = calibrate([[0.1, 0.2]] * 3, [0.45] * 3)                 # one subnet three times: the ratio alone
    assert same["scale"] == pytest.approx(1.5) and same["offset_ms"] == 0


def test_the_dense_add_is_timed_on_the_whole_batch():
    space = Space(resolutions=(12,), widths=(1.0,), kernels=(3,), expands=(3,))
    add = next(p for p in parts(space, True, 10, batch=4) if p.key.startswith("add"))
    assert add.build().skip.shape == (4, *add.shape)


def test_agreement_writes_no_nan_where_a_rank_correlation_is_undefined():
    assert agreement([1.0], [1.1], [5])["spearman"] is None
    assert agreement([1.0, 2.0, 3.0], [1.1, 1.9, 3.2], [5, 5, 5]) == pytest.approx(
        {"n": 3, "mape": np.mean([0.1 / 1.1, 0.1 / 1.9, 0.2 / 3.2]), "max_ape": 0.1 / 1.1, "spearman": 1.0,
         "macs_spearman": None})


def test_latency_refuses_torchrun_and_a_config_of_another_space(measured, tmp_path, monkeypatch, capsys):
    run = _copy(measured, tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["latency", str(run.path)]) == 2
    assert "without torchrun" in capsys.readouterr().err
    monkeypatch.delenv("WORLD_SIZE")
    config = yaml.safe_load(run.config_file.read_text())
    config["supernet"]["resolutions"] = [12]
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(config))
    assert main(["latency", str(tmp_path / "other.yaml")]) == 2
    assert "supernet.resolutions" in capsys.readouterr().err.splitlines()[-1]


def test_onnxruntime_times_the_exported_parts():
    meter = Meter("onnxruntime", Timing(warmup=1, rounds=2, round_ms=0.2))
    space = Space(resolutions=(12,), widths=(1.0,), kernels=(3,), expands=(3,))
    part = next(p for p in parts(space, False, 10) if p.key.startswith("block"))
    assert meter.time(meter.prepare(part.build(), part.shape)) > 0
    assert meter.describe()["onnxruntime"]


def _finished_copy(finished_run, tmp_path, *stages):
    """A copy of the finished tiny run without the folders of `stages`, with a fast torch-cpu table."""
    run = _copy(RunDir(finished_run), tmp_path)
    for stage in stages:
        shutil.rmtree(run.stage(stage))
    assert main(["latency", str(run.path), *FAST]) == 0
    return run


def test_the_latency_objective_runs_the_pipeline_end_to_end(finished_run, tmp_path, capsys):
    run = _finished_copy(finished_run, tmp_path, "search", "select", "finetune", "export")
    config = yaml.safe_load(run.config_file.read_text())
    config["search"]["objectives"] = ["acc", "latency"]
    run.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(run.path)]) == 0
    out = capsys.readouterr().out
    table = LatencyTable.read(run.latency_table("torch-cpu"))
    space = load_config(run.config_file).supernet.search_space()
    archive = json.loads(run.search.archive(1).read_text())
    assert archive["objectives"] == ["acc", "latency"]
    for record in archive["records"]:
        assert record["latency"] == pytest.approx(table.predict_arch(space.decode(np.array(record["encoding"]))))
    front = json.loads(run.search.final.read_text())
    assert front and all(r["latency"] > 0 for r in front)
    assert out.count("latency (ms)") == 2                      # the search's and the selection's tables
    exports = run.exports()
    assert exports and all(m["latency_ms"]["torch-cpu"]["measured"] > 0 for m in exports.values())
    assert "torch-cpu (ms)" in out.splitlines()[-3 - len(exports)]      # the final table's header
    fastest = select(run, "rbifa", 0.0, 1)[0]                  # wp 0: the cheapest by the search's cost, latency
    assert fastest["latency"] == min(r["latency"] for r in archive["records"])
    table.calibration["scale"] *= 1.5                          # another table now: a resume must not mix the two
    table.write(run.latency_table("torch-cpu"))
    assert main(["search", str(run.path), "--resume"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert "another torch-cpu latency table" in err and "scale" in err


def test_check_and_export_time_the_exports(finished_run, tmp_path, capsys):
    run = _finished_copy(finished_run, tmp_path)
    assert main(["latency", str(run.path), "--check", "2", *FAST]) == 0
    report = json.loads(run.latency_check("torch-cpu", ".json").read_text())
    exports = [r for r in report["subnets"] if r.get("export")]
    assert sorted(r["name"] for r in exports) == sorted(run.exports()) and len(report["subnets"]) == 2 + len(exports)
    name = sorted(run.exports())[0]
    shutil.rmtree(run.export(name))
    assert main(["export", str(run.path)]) == 0
    latency = run.exports()[name]["latency_ms"]["torch-cpu"]
    assert latency["measured"] > 0 and latency["batch"] == 1 and latency["threads"] == 1
    table = LatencyTable.read(run.latency_table("torch-cpu"))
    arch = Architecture.from_dict(json.loads((run.export(name) / "arch.json").read_text())["arch"])
    assert latency["predicted"] == pytest.approx(table.predict_arch(arch, run.exports()[name]["exits"]))
    table.device["cpu"] = "an edge board"                   # a table copied from the device: predicted only
    table.write(run.latency_table("torch-cpu"))
    shutil.copy(run.latency_table("torch-cpu"), run.stage("latency") / "torch-cpu-old.json")   # ignored
    shutil.rmtree(run.export(name))
    assert main(["export", str(run.path)]) == 0
    latency = run.exports()[name]["latency_ms"]["torch-cpu"]
    assert "measured" not in latency and latency["device"]["cpu"] == "an edge board"
    del table.times[table.keys[0]]                          # incomplete: a warning, and no latency
    table.write(run.latency_table("torch-cpu"))
    shutil.rmtree(run.export(name))
    assert main(["export", str(run.path)]) == 0
    assert run.exports()[name]["latency_ms"] == {} and "incomplete" in capsys.readouterr().err


def test_a_run_from_before_the_latency_section_still_resumes(finished_run, tmp_path):
    run = _copy(RunDir(finished_run), tmp_path)
    config = yaml.safe_load(run.config_file.read_text())
    del config["latency"]
    run.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["search", str(run.path), "--resume", "--set", "latency.backend=onnxruntime"]) == 0
