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
from nat2.latency import LatencyTable, identity
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
    assert table.missing() == [] and 0.5 < table.scale < 2
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
        assert table.predict_arch(arch) == pytest.approx(table.scale * sum(table.ms(k) for k in parts_))
        if arch.exit > 1:
            heads = sum(table.ms(head_key(w, r, e)) for e in range(1, arch.exit))
            assert table.predict_arch(arch, "all") == pytest.approx(table.predict_arch(arch) + table.scale * heads)


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


@pytest.mark.parametrize("change, named", [
    ({"supernet.resolutions": "[12]"}, "space.resolutions"),
    ({"supernet.dense": "false"}, "dense"),
    ({"latency.threads": "2"}, "timing.threads"),
])
def test_a_table_for_another_setting_is_refused_with_the_difference(measured, tmp_path, capsys, change, named):
    run = _copy(measured, tmp_path)
    before = run.latency_table("torch-cpu").read_bytes()
    sets = [a for k, v in change.items() for a in ("--set", f"{k}={v}")]
    assert main(["latency", str(run.path), *FAST, *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "torch-cpu.json" in err and named in err and "delete" in err
    assert run.latency_table("torch-cpu").read_bytes() == before


def test_a_search_refuses_a_table_of_another_space_or_backend(measured, tmp_path):
    from nat2.app.context import run_table

    config = load_config(measured.config_file)
    path = measured.latency_table("torch-cpu")
    with pytest.raises(LatencyError, match="backend 'torch-cpu' \\(here: 'onnxruntime'\\)"):
        run_table(config, path, "onnxruntime", 10)
    with pytest.raises(LatencyError, match="n_classes 10 \\(here: 100\\)"):
        run_table(config, path, "torch-cpu", 100)
    other = load_config(measured.config_file, ["supernet.kernels=[3, 5]"])
    with pytest.raises(LatencyError, match="space.kernels"):
        run_table(other, path, "torch-cpu", 10)
    assert run_table(config, path, "torch-cpu", 10).missing() == []


def test_an_incomplete_table_is_refused(measured, tmp_path):
    table = LatencyTable.read(measured.latency_table("torch-cpu"))
    table.times.popitem()
    with pytest.raises(LatencyError, match="incomplete: 1 of"):
        table.check(identity("torch-cpu", table.space, True, 10), "t.json")


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
