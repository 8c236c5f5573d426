"""`nat2 search` end to end on a tiny trained supernet: files, resume, test-split isolation."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pymoo.mcdm.high_tradeoff import HighTradeoffPoints

import nat2.app.config as config_module
from nat2.app.cli import main
from nat2.app.rundir import RunDir
from nat2.search.evaluate import Evaluator
from nat2.search.loop import Search, SearchSettings, high_tradeoff_points, tradeoffs
from supernets.train import PhaseTrainer
from tiny_run import BASE

ROOT = Path(__file__).resolve().parents[1]

CONFIG = BASE + """\
search:
  supernet: {supernet}
  archive_size: 8
  multiplier: 2
  iterations: 2
  candidates: 3
  population: 12
  generations: 3
  adapt: {{epochs: 1, subnets_per_step: 2}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    config = root / "train.yaml"
    config.write_text(CONFIG.format(run=root / "train", supernet="null"))
    assert main(["train-supernet", str(config)]) == 0
    return RunDir(root / "train").phase_checkpoint(1.0, "all")     # the only width


def _config(tmp_path, supernet, name="run", extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(run=tmp_path / name, supernet=supernet) + extra)
    return path


@pytest.fixture(scope="module")
def reference(trained, tmp_path_factory):
    """An uninterrupted search."""
    root = tmp_path_factory.mktemp("reference")
    assert main(["search", str(_config(root, trained))]) == 0
    return RunDir(root / "run").search


def test_search_writes_every_iteration(reference):
    state = json.loads(reference.state.read_text())
    assert state["objectives"] == ["acc", "params"] and state["iterations_done"] == 2
    hv = []
    for k in range(3):
        for path in (reference.archive(k), reference.stats(k), reference.pareto(k)):
            assert path.is_file()
        stats = json.loads(reference.stats(k).read_text())
        hv.append(stats["hypervolume"])
        archive = json.loads(reference.archive(k).read_text())
        encodings = [tuple(r["encoding"]) for r in archive["records"]]
        assert len(encodings) == 8 == len(set(encodings))
        if k:
            assert set(stats["predictor"]) == {"kendall_tau", "spearman_rho", "rmse"}
            assert stats["n_candidates"] == 3
    assert reference.curves.is_file()
    rows = json.loads(reference.final.read_text())
    assert rows and all(0 <= r["test_top1"] <= 100 for r in rows) and any(r["knee"] for r in rows)


class _Kill(Exception):
    pass


@pytest.mark.parametrize("where", ["candidates", "adaptation"])
def test_resume_after_a_kill_equals_the_uninterrupted_search(where, trained, reference, tmp_path, monkeypatch):
    calls = []
    if where == "candidates":   # during iteration 1's candidate evaluation (16 initial evaluations first)
        original, target, limit = Evaluator.top1, Evaluator, 17
    else:                       # during iteration 2's adaptation (iteration 1 trains 4 steps)
        original, target, limit = PhaseTrainer.train_step, PhaseTrainer, 5
    name = "top1" if where == "candidates" else "train_step"

    def dying(self, *args, **kwargs):
        if len(calls) == limit:
            raise _Kill
        calls.append(1)
        return original(self, *args, **kwargs)
    monkeypatch.setattr(target, name, dying)
    config = _config(tmp_path, trained)
    with pytest.raises(_Kill):
        main(["search", str(config)])
    monkeypatch.setattr(target, name, original)
    assert main(["search", str(config), "--resume"]) == 0
    ours = RunDir(tmp_path / "run").search
    for k in range(3):
        assert json.loads(ours.archive(k).read_text()) == json.loads(reference.archive(k).read_text())
    assert json.loads(ours.final.read_text()) == json.loads(reference.final.read_text())


def test_the_test_split_is_read_only_by_the_final_report(trained, tmp_path, monkeypatch):
    events = []
    real_load = config_module.load_splits

    def spied(*args, **kwargs):
        splits = real_load(*args, **kwargs)
        test = splits.test

        class Spy(type(test)):
            def __getitem__(self, item):
                events.append("test")
                return super().__getitem__(item)
        spy = Spy(test.images, test.all_labels, test.transform_factory, test.resolution, test.indices)
        return dataclasses.replace(splits, test=spy)
    monkeypatch.setattr(config_module, "load_splits", spied)
    final = Search.final

    def marked(self, archive):
        events.append("final")
        return final(self, archive)
    monkeypatch.setattr(Search, "final", marked)
    assert main(["search", str(_config(tmp_path, trained)), "--set", "search.iterations=1"]) == 0
    assert "test" in events and events.index("test") > events.index("final")


@pytest.mark.parametrize("override, message", [
    ("search.objectives=acc,flops", "must be distinct names from"),
    ("search.objectives=params", "expected 'acc' among them"),
    ("search.archive_size=2", "search.archive_size = 2"),
    ("search.supernet=/nowhere/w{width}.pt", "no supernet checkpoint at /nowhere/w1.0.pt"),
])
def test_search_bad_input_exits_2(trained, tmp_path, capsys, override, message):
    assert main(["search", str(_config(tmp_path, trained)), "--set", override]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_archive_on_resume_is_a_clear_error(trained, reference, tmp_path, capsys):
    ours = RunDir(tmp_path / "run").search
    shutil.copytree(reference.path, ours.path)
    ours.archive(1).write_text('{"format": "nat2-archive"}')
    assert main(["search", str(_config(tmp_path, trained)), "--resume"]) == 2
    assert str(ours.archive(1)) in capsys.readouterr().err


def test_torchrun_shards_evaluation_over_two_ranks(trained, reference, tmp_path):
    """Rank r scores rows r, r + 2, ...: the initial archive equals the single-process one."""
    config = _config(tmp_path, trained)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "nat2", "search", str(config), "--set", "search.iterations=1"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = RunDir(tmp_path / "run").search
    assert json.loads(ours.archive(0).read_text()) == json.loads(reference.archive(0).read_text())
    assert ours.archive(1).is_file()
    assert ours.final.is_file()


def bumped_front() -> list[dict]:
    """61 members on a straight error-for-params line (index = cost order), four of them pushed
    towards the ideal point, deeper at higher cost: the deeper the bump, the higher its trade-off."""
    cost, error = np.linspace(0, 1, 61), 1 - np.linspace(0, 1, 61)
    error[[12, 24, 36, 48]] -= [0.05, 0.06, 0.07, 0.08]
    return [dict(encoding=[i], top1=100 - 10 * e, params=1e6 * (1 + c), macs=2e6 * (1 + c), iteration=0)
            for i, (e, c) in enumerate(zip(error, cost))]


@pytest.mark.parametrize("n, knees", [(1, [48]), (2, [36, 48]), (3, [24, 36, 48])])
def test_knees_are_the_highest_tradeoff_points(tmp_path, n, knees):
    search = Search(None, None, SearchSettings(knees=n), 10, tmp_path)
    assert search.knees(bumped_front()) == knees


def test_knees_fill_up_along_the_cost_when_pymoo_finds_too_few(tmp_path):
    front = [dict(r, top1=100 - 10 * (1 - i / 60) + (0.8 if i == 48 else 0)) for i, r in enumerate(bumped_front())]
    assert Search(None, None, SearchSettings(knees=3), 10, tmp_path).knees(front) == [0, 30, 48]


@pytest.mark.parametrize("n_obj", [2, 3])
def test_high_tradeoff_points_are_pymoos_ordered_by_tradeoff(n_obj):
    rng, found_some = np.random.default_rng(n_obj), False
    for _ in range(10):
        F = rng.dirichlet(np.ones(n_obj), 40) ** rng.uniform(0.3, 3)  # fronts of varied curvature
        F = (F - F.min(0)) / np.ptp(F, axis=0)
        ours, theirs = high_tradeoff_points(F), HighTradeoffPoints().do(F)
        assert set(ours.tolist()) == (set() if theirs is None else set(np.atleast_1d(theirs).tolist()))
        assert np.all(np.diff(tradeoffs(F)[ours]) <= 0)
        found_some |= len(ours) > 1
    assert found_some
