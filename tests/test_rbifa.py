"""RB-IFA: eq. 6 by hand, dominance-degree fronts, canonical fireflies, resume == uninterrupted, the
selector's directions, and the training-free search stage end to end on a tiny space."""
import json
import zlib

import numpy as np
import pytest
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from nat2.app.config import ConfigError, load_config
from nat2.app.rundir import RunDir
from nat2.app.stages.search import training_free_table
from nat2.rbifa import ifa as rbifa
from nat2.rbifa.ifa import (IFASettings, MetricCache, _genetic, _move, column_ranks, front_index, non_dominated,
                            parse_wps, pf_ifa, pseudo_front, rank_score, rb_ifa, rb_scores, rb_select)
from nat2.rbifa.training_free import TrainingFreeMetrics, training_free_search
from nat2.space import SearchSpace
from supernets import Space, Supernet, load_splits
from supernets.arch import BRANCH_KEYS

SPACES = {
    "narrow": SearchSpace(Space(resolutions=(24, 28, 32), widths=(1.0, 1.2))),
    "parallel-ee": SearchSpace(Space(resolutions=(32, 40), widths=(1.0, 1.2), keys=BRANCH_KEYS,
                                     exits=(1, 2, 3, 4, 5))),
}
SMALL = IFASettings(population=6, generations=8, max_chances=2, seed=3)


pytestmark = pytest.mark.usefixtures("one_thread")


def cost_metrics(space, calls=None):
    """Cheap synthetic objectives: perf = (-params, -sum of genes), eff = MACs; every encoding the
    search scores must be canonical."""
    def metrics(X):
        assert space.is_canonical(X).all()
        if calls is not None:
            calls.extend(map(tuple, X))
        params, macs = space.costs(X, 10)
        return np.column_stack([-params, -X.sum(axis=1)]).astype(float), macs[:, None].astype(float)
    return metrics


# -- eq. 6 -----------------------------------------------------------------------------------
def test_rank_score_by_hand():
    perf, eff = np.array([[1.0], [3.0], [2.0]]), np.array([[30.0], [10.0], [20.0]])
    assert rank_score(perf, eff, 1.0).tolist() == [1, 3, 2]
    assert rank_score(perf, eff, 0.0).tolist() == [3, 1, 2]
    assert rank_score(perf, eff, 0.5).tolist() == [2, 2, 2]
    assert rank_score(perf, eff, 0.25).tolist() == [2.5, 1.5, 2]
    two = np.array([[1.0, 5.0], [1.0, 4.0], [2.0, 6.0]])  # ties share the average rank
    assert rank_score(two, eff, 1.0).tolist() == [(1.5 + 2) / 2, (1.5 + 1) / 2, (3 + 3) / 2]


def test_nan_and_inf_rank_last_and_share_their_rank():
    col = np.array([[np.nan], [1.0], [np.inf], [0.0], [-np.inf]])
    assert column_ranks(col)[:, 0].tolist() == [4.0, 2.0, 4.0, 1.0, 4.0]
    assert rank_score(col, np.zeros(5), 1.0).tolist() == [4.0, 2.0, 4.0, 1.0, 4.0]


def test_rank_score_rejects_bad_input():
    with pytest.raises(ValueError, match=r"wp = 1.5; expected a performance weight in \[0, 1\]"):
        rank_score(np.zeros((2, 1)), np.zeros((2, 1)), 1.5)
    with pytest.raises(ValueError, match="expected a performance weight"):
        rank_score(np.zeros((2, 1)), np.zeros((2, 1)), True)
    with pytest.raises(ValueError, match="perf has 2 rows and eff 3"):
        rank_score(np.zeros((2, 1)), np.zeros((3, 1)), 0.5)
    assert parse_wps("0.25, 1") == [0.25, 1.0] and parse_wps(0.5) == [0.5]
    with pytest.raises(ValueError, match="wp"):
        parse_wps([0.5, -0.1])


# -- fronts ----------------------------------------------------------------------------------
@pytest.mark.parametrize("n_obj", [2, 3])
def test_dominance_degree_fronts_agree_with_pymoo(rng, n_obj):
    for trial in range(20):
        F = rng.integers(0, 6, size=(int(rng.integers(1, 40)), n_obj)).astype(float)  # ties and duplicates
        F = np.vstack([F, F[:3]]) if trial % 2 else F
        _, rank = NonDominatedSorting().do(F, return_rank=True)
        assert front_index(F).tolist() == rank.tolist()
    assert non_dominated(np.array([[1.0, 2.0], [2.0, 1.0], [np.nan, 3.0], [2.0, 2.0]])).tolist() == [0, 1]


# -- the firefly operators -------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SPACES))
def test_every_move_and_every_child_is_canonical(name, rng):
    space = SPACES[name]
    s = IFASettings()
    calls = []
    repair = space.repair

    def checked_repair(x):
        out = repair(x)
        calls.append(out)
        return out

    space.repair = checked_repair
    try:
        X = space.sample(rng, 12)
        bright = rng.permutation(12).astype(float)
        moved = _move(space, X, bright, X, bright, s, rng)
        children = _genetic(space, X, bright, 30, s, rng)
    finally:
        del space.repair
    assert len(calls) > 12  # repaired after every single pull
    for out in calls:
        assert space.is_canonical(out).all()
    assert space.is_canonical(moved).all() and space.is_canonical(children).all()
    assert not (moved == X).all()


def test_genetic_iteration_can_pick_the_best(rng):
    """Pool: the max network and seven min networks. A parent is the max network when it enters
    either side of a binary tournament it wins: 1 - (7/8)^2 = 23 % when it is the brightest, 1/64
    when it is the dimmest; uniform crossover passes that share on to the children's genes."""
    space = SPACES["narrow"]
    pool = np.vstack([space.max_encoding] + [space.min_encoding] * 7)
    differ = space.max_encoding != space.min_encoding
    no_mutation = IFASettings(mutation_prob=0.0)
    best_first = _genetic(space, pool, np.arange(8.0), 400, no_mutation, rng)
    best_last = _genetic(space, pool, -np.arange(8.0), 400, no_mutation, rng)
    share = lambda X: (X[:, differ] == space.max_encoding[differ]).mean()  # noqa: E731
    assert 0.15 < share(best_first) < 0.32 and share(best_last) < 0.05


def test_rb_ifa_scores_only_canonical_encodings_once_and_follows_wp():
    space = SPACES["parallel-ee"]
    calls = []
    settings = IFASettings(population=8, generations=12, max_chances=3, seed=0)
    accurate = rb_ifa(space, cost_metrics(space, calls), 1.0, settings)
    assert len(calls) == len(set(calls)) == accurate.n_evaluated
    cheap = rb_ifa(space, cost_metrics(space), 0.0, settings)
    _, macs = space.costs(np.vstack([accurate.best, cheap.best]), 10)
    assert macs[0] > macs[1]
    assert space.is_canonical(accurate.X).all() and accurate.generations == 12


def test_stagnation_triggers_the_genetic_iteration_and_rank_reset():
    space = SPACES["narrow"]
    flat = lambda X: (np.zeros((len(X), 1)), np.zeros((len(X), 1)))  # noqa: E731
    result = rb_ifa(space, flat, 0.5, IFASettings(population=5, generations=6, max_chances=2))
    assert [h["genetic"] for h in result.history] == [False, True] * 3
    assert len(result.X) >= 2  # the reset champion joins the archive of bests


def test_pf_ifa_genetic_iteration_when_the_front_stops_growing():
    """A total order (one checksum for every metric): the front of any population is its single
    best firefly. It grows once (from 0), and the population with it to population + 1; after
    that every generation spends a chance and every max_chances-th runs the genetic iteration."""
    space = SPACES["narrow"]

    def one_best(X):
        value = np.array([[zlib.crc32(x.tobytes())] for x in X], dtype=float)
        return value, value

    result = pf_ifa(space, one_best, IFASettings(population=5, generations=7, max_chances=2))
    assert [h["genetic"] for h in result.history] == [False, False, True, False, True, False, True]
    assert [(h["front_size"], h["population"]) for h in result.history] == [(1, 6)] * 7
    assert len(result.X) == 1


def test_pf_ifa_follows_algorithm_1(tmp_path, monkeypatch):
    """Every generation: brightness is the front index within the current population, the front is
    the non-dominated set of the population after the firefly iteration (nothing carried over from
    earlier ones), the population is `population` + the largest front so far, and chances are
    spent only when the front does not outgrow that largest size, never restored by growth, and
    restored by the genetic iteration they trigger."""
    space, s = SPACES["parallel-ee"], IFASettings(population=6, generations=12, max_chances=2, seed=3)
    cache = MetricCache(cost_metrics(space))
    path = tmp_path / "pf.json"
    objectives = lambda X: np.hstack(cache(X))  # noqa: E731
    moved, bred = [], []

    def move(space_, X, bright, attractors, attractor_bright, *rest):
        assert bright.tolist() == front_index(objectives(X)).tolist() and attractors is X
        moved.append(len(X))
        return real_move(space_, X, bright, attractors, attractor_bright, *rest)

    def genetic(space_, pool, *rest):
        bred.append(pool)
        return real_genetic(space_, pool, *rest)

    def check_front(entry):
        state = json.loads(path.read_text())
        population = bred[-1] if entry["genetic"] else np.array(state["X"])[:moved[-1]]
        front = {tuple(x) for x in state["front"]}
        assert front == {tuple(x) for x in population[front_index(objectives(population)) == 0]}

    real_move, real_genetic = rbifa._move, rbifa._genetic
    monkeypatch.setattr(rbifa, "_move", move)
    monkeypatch.setattr(rbifa, "_genetic", genetic)
    result = pf_ifa(space, cache, s, path, on_generation=check_front)
    largest, chances, grew_without_chances = 0, s.max_chances, False
    for entry in result.history:
        if entry["front_size"] > largest:
            largest, grew_without_chances = entry["front_size"], grew_without_chances or chances < s.max_chances
        else:
            chances -= 1
        genetic = chances == 0
        chances = s.max_chances if genetic else chances
        assert (entry["genetic"], entry["population"], entry["chances"]) == (genetic, s.population + largest, chances)
    assert grew_without_chances and len(bred) >= 2  # the run exercises both rules
    assert {tuple(x) for x in result.X} == {tuple(x) for x in json.loads(path.read_text())["front"]}


def test_metric_cache_scores_each_encoding_once_and_checks_shapes():
    space = SPACES["narrow"]
    calls = []
    cache = MetricCache(cost_metrics(space, calls))
    X = space.sample(np.random.default_rng(1), 5)
    first = cache(np.vstack([X, X[:2]]))
    second = cache(X[::-1])
    assert len(calls) == 5 and np.array_equal(first[0][:5][::-1], second[0])
    bad = MetricCache(lambda X: (np.zeros((len(X), 2)), np.zeros((len(X) + 1, 1))))
    with pytest.raises(ValueError, match="one row per encoding"):
        bad(X)


# -- resume ----------------------------------------------------------------------------------
class Killed(Exception):
    pass


def _kill_at(generation):
    def callback(entry):
        if entry["generation"] == generation:
            raise Killed
    return callback


def _comparable(path):
    state = json.loads(path.read_text())
    for entry in state["history"]:
        entry.pop("seconds")
    return state


@pytest.mark.parametrize("method", ["rbifa", "pfifa"])
def test_resume_equals_uninterrupted(tmp_path, method):
    space = SPACES["parallel-ee"]
    metrics = cost_metrics(space)

    def run(path, **kwargs):
        if method == "rbifa":
            return rb_ifa(space, metrics, 0.5, SMALL, path, **kwargs)
        return pf_ifa(space, metrics, SMALL, path, **kwargs)

    whole = run(tmp_path / "whole.json")
    with pytest.raises(Killed):
        run(tmp_path / "killed.json", on_generation=_kill_at(3))
    assert json.loads((tmp_path / "killed.json").read_text())["generation"] == 3
    resumed = run(tmp_path / "killed.json")
    assert np.array_equal(whole.X, resumed.X) and resumed.generations == SMALL.generations
    assert (whole.best is None and resumed.best is None) or np.array_equal(whole.best, resumed.best)
    assert _comparable(tmp_path / "whole.json") == _comparable(tmp_path / "killed.json")
    unsaved = run(None)
    assert np.array_equal(unsaved.X, whole.X)


def test_resume_refuses_other_settings(tmp_path):
    space = SPACES["narrow"]
    path = tmp_path / "state.json"
    rb_ifa(space, cost_metrics(space), 0.5, SMALL, path)
    with pytest.raises(ValueError, match="wp = 0.5, not 0.7"):
        rb_ifa(space, cost_metrics(space), 0.7, SMALL, path)
    with pytest.raises(ValueError, match="settings"):
        rb_ifa(space, cost_metrics(space), 0.5, IFASettings(population=6, generations=8, seed=4), path)
    longer = rb_ifa(space, cost_metrics(space), 0.5, IFASettings(population=6, generations=10, max_chances=2,
                                                                  seed=3), path)
    assert longer.generations == 10


# -- pseudo front ----------------------------------------------------------------------------
def test_pseudo_front_is_the_non_dominated_union_of_the_bests(tmp_path):
    space = SPACES["narrow"]
    calls = []
    files = RunDir(tmp_path).tfsearch
    found = pseudo_front(space, cost_metrics(space, calls), [0.2, 1.0], SMALL, files.state)
    assert len(calls) == len(set(calls))  # one cache across the Wp grid
    union = {tuple(x) for r in found.runs.values() for x in r.X}
    assert {tuple(x) for x in found.X} <= union
    F = np.hstack([found.perf, found.eff])
    assert len(non_dominated(F)) == len(F)
    assert files.state(0.2).is_file() and files.state(1.0).is_file()


def test_settings_from_config_and_their_errors():
    config = load_config(None, ["rbifa.population=7", "rbifa.gamma=0.3"])
    assert config.rbifa.settings == IFASettings(population=7, gamma=0.3)
    for bad in ("rbifa.population=1", "rbifa.beta0=1.5", "rbifa.alpha=-1", "rbifa.max_chances=0"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            load_config(None, [bad])


# -- the selector ----------------------------------------------------------------------------
RECORDS = [{"id": "a", "val_top1": 90.0, "macs": 50, "params": 5},
           {"id": "b", "val_top1": 95.0, "macs": 90, "params": 9},
           {"id": "c", "val_top1": 80.0, "macs": 10, "params": 1},
           {"id": "d", "val_top1": 85.0, "macs": 30, "params": 3}]


def test_rb_select_follows_the_performance_weight():
    assert rb_select(RECORDS, 1.0) == [1, 0, 3, 2]
    assert rb_select(RECORDS, 0.0) == [2, 3, 0, 1]
    assert rb_select(RECORDS, 0.5, ["val_top1"], ["macs", "params"])[0] in (0, 3)
    archive = [{"top1": r["val_top1"], "params": r["params"]} for r in RECORDS]
    assert rb_select(archive, 1.0, ["top1"], ["params"])[0] == 1
    errors = [{"acc": 100 - r["val_top1"], "macs": r["macs"]} for r in RECORDS]
    assert rb_select(errors, 1.0, ["acc"])[0] == 1
    assert rb_select(RECORDS, 1.0, {"macs": -1}, {"params": 1})[0] == 1


def test_rb_select_ties_and_missing_values():
    tied = [{"val_top1": 90.0, "macs": 20}, {"val_top1": 90.0, "macs": 10}, {"val_top1": None, "macs": 1}]
    assert rb_select(tied, 1.0) == [1, 0, 2]  # equal accuracy: the cheaper first; missing last
    assert rb_scores(tied, 1.0).tolist() == [1.5, 1.5, 3.0]


def test_rb_select_rejects_bad_keys():
    with pytest.raises(ValueError, match="no known direction"):
        rb_select(RECORDS, 0.5, ["energy"])
    with pytest.raises(ValueError, match="record 0 has no 'top1'"):
        rb_select(RECORDS, 0.5, ["top1"])
    with pytest.raises(ValueError, match=r"expected \+1"):
        rb_select(RECORDS, 0.5, {"val_top1": 2})
    with pytest.raises(ValueError, match="expected a number"):
        rb_select([{"val_top1": "high", "macs": 1}], 0.5)
    with pytest.raises(ValueError, match="wp"):
        rb_select(RECORDS, -0.5)


# -- the training-free search -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    splits = load_splits("synthetic", calibration_size=8, n_train=40, n_val=10, n_test=10)
    space = SearchSpace(Space(resolutions=(12, 16), widths=(1.0,), depths=(2, 3)))
    return splits, space


SETTINGS = IFASettings(population=4, generations=2, max_chances=1)


def _scorer(tiny, files, supernets=None, init="fresh", batch_size=6):
    splits, space = tiny
    return TrainingFreeMetrics(space, splits, supernets=supernets, init=init, batch_size=batch_size,
                               calibration_batch=8, cache_path=files.metrics)


def test_training_free_search_writes_its_files_and_resumes(tiny, tmp_path):
    space, files = tiny[1], RunDir(tmp_path).tfsearch
    rows = training_free_search(space, _scorer(tiny, files), SETTINGS, files, "rbifa", [0.0, 1.0], warm_start=True)
    for path in (files.result, files.front_plot, files.metrics, files.warm_start, files.state(0.0), files.state(1.0)):
        assert path.is_file(), path
    result = json.loads(files.result.read_text())
    assert result["chosen"] == rows and [r["wp"] for r in rows] == [0.0, 1.0]
    for row in rows + result["front"]:
        assert set(row) >= {"encoding", "arch", "arch_str", "icd", "synflow", "macs", "params"}
        assert space.is_canonical(np.array(row["encoding"]))
    assert rows[0]["macs"] <= rows[1]["macs"]
    warm = json.loads(files.warm_start.read_text())
    assert [r["encoding"] for r in rows][0] in warm
    scored = files.metrics.read_text()
    again = training_free_search(space, _scorer(tiny, files), SETTINGS, files, "rbifa", [0.0, 1.0], warm_start=True)
    assert again == rows
    assert files.metrics.read_text() == scored  # resumed: nothing scored again
    assert "tf_01" in training_free_table(rows)


def test_training_free_search_with_inherited_weights_and_pfifa(tiny, tmp_path):
    (splits, space), files = tiny, RunDir(tmp_path).tfsearch
    supernet = Supernet(splits.n_classes, 1.0, space=space.space)
    scorer = _scorer(tiny, files, {1.0: supernet}, init="inherited")
    rows = training_free_search(space, scorer, SETTINGS, files, "pfifa", 0.5)
    assert len(rows) == 1 and rows[0]["wp"] == 0.5
    assert files.state(None).is_file() and not files.warm_start.exists()
    with pytest.raises(ValueError, match="needs the trained supernets"):
        _scorer(tiny, files, init="inherited")
    with pytest.raises(ValueError, match="strategy"):
        training_free_search(space, scorer, SETTINGS, files, "nsga2", 0.5)
    with pytest.raises(ValueError, match="batch_size"):
        _scorer(tiny, files, batch_size=1)
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(None, ["rbifa.batch_size=1"])
