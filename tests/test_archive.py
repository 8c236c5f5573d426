import json

import numpy as np
import pytest
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from nat2.search.archive import (Archive, ArchiveError, hypervolume, initial_archive, objective_matrix, reference_point,
                          survive)
from nat2.app.config import load_config
from nat2.app.rundir import RunDir
from nat2.search.loop import warm_start_encodings
from nat2.space import SearchSpace

SPACES = {
    "narrow": load_config(None).supernet.search_space(),
    "parallel-ee": load_config(None, ["supernet.parallel=true", "supernet.early_exits=true",
                                 "supernet.resolutions=[32, 40]"]).supernet.search_space(),
}
N_CLASSES = 10


class FakePredictor:
    """A deterministic, smooth stand-in for the accuracy surrogate: error falls with bigger genes."""

    def __init__(self, n_var: int) -> None:
        self.w = np.random.default_rng(1).uniform(0.5, 1.5, n_var)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return 60.0 - 40.0 * np.tanh(np.asarray(X, dtype=float) @ self.w / 200.0)


def evaluator(space: SearchSpace, calls: list | None = None):
    """`evaluate(X) -> records` as the search calls it: fake top-1, exact costs."""
    predictor = FakePredictor(space.n_var)

    def evaluate(X: np.ndarray) -> list[dict]:
        if calls is not None:
            calls.append(np.array(X))
        params, macs = space.costs(X, N_CLASSES)
        return [dict(encoding=x.tolist(), top1=100.0 - e, params=p, macs=m, iteration=0)
                for x, e, p, m in zip(X, predictor.predict(X), params, macs)]
    return evaluate


def make_archive(name: str = "narrow", size: int = 30, objectives=("acc", "params", "macs")) -> Archive:
    space = SPACES[name]
    return initial_archive(space, evaluator(space), size, multiplier=4, objectives=objectives, seed=0)


def record(encoding, top1, params, macs, iteration=0) -> dict:
    return dict(encoding=list(encoding), top1=top1, params=params, macs=macs, iteration=iteration)


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("objectives", [("acc", "params", "macs"), ("acc", "macs"), ("acc",)])
def test_initial_archive_keeps_min_and_max_and_has_the_size(name, objectives):
    space, calls = SPACES[name], []
    archive = initial_archive(space, evaluator(space, calls), 30, 4, objectives, seed=0)
    (X,) = calls
    assert len(X) == len({tuple(x) for x in X.tolist()}) >= 115  # 4 * 30, up to rare duplicate samples
    assert space.is_canonical(X).all()
    assert len(archive) == 30 and archive.objectives == objectives
    assert len({tuple(x) for x in archive.X.tolist()}) == 30
    for extreme in (space.min_encoding, space.max_encoding):
        assert archive.contains(extreme)


def test_initial_archive_is_deterministic():
    a, b = make_archive(), make_archive()
    assert np.array_equal(a.X, b.X)


def crowding_distance(F: np.ndarray) -> np.ndarray:
    """NSGA-II's crowding distance, written out: per objective, the normalised distance between a
    member's two neighbours in sorted order; the ends of every objective are infinitely far."""
    distance = np.zeros(len(F))
    for column in F.T:
        order = np.argsort(column, kind="stable")
        distance[order[[0, -1]]] = np.inf
        distance[order[1:-1]] += (column[order[2:]] - column[order[:-2]]) / np.ptp(column)
    return distance


def nsga2_best(F: np.ndarray, n: int) -> set[int]:
    """The n best rows by non-dominated rank, then crowding distance in the front that is cut."""
    kept: list[int] = []
    for front in NonDominatedSorting().do(F):
        need = n - len(kept)
        if len(front) > need:
            distance = crowding_distance(F[front])
            order = np.argsort(-distance, kind="stable")
            assert distance[order[need - 1]] > distance[order[need]]  # no tie decides the cut
            front = front[order[:need]]
        kept += front.tolist()
        if len(kept) == n:
            return set(kept)


def test_initial_archive_keeps_the_nsga2_best_of_the_sample_plus_min_and_max():
    space, calls = SPACES["narrow"], []
    archive = initial_archive(space, evaluator(space, calls), 30, 4, ("acc", "params"), seed=3)
    (X,) = calls
    records = evaluator(space)(X)
    extremes = {tuple(space.min_encoding), tuple(space.max_encoding)}
    rest = [r for r in records if tuple(r["encoding"]) not in extremes]
    best = nsga2_best(objective_matrix(rest, ("acc", "params")), 28)
    expected = {tuple(rest[i]["encoding"]) for i in best} | extremes
    assert {tuple(r["encoding"]) for r in archive.records} == expected
    assert len(rest) == len(records) - 2


@pytest.mark.parametrize("n_obj", [1, 2, 3])
def test_survival_keeps_every_front_member_when_the_front_fits(n_obj):
    rng = np.random.default_rng(n_obj)
    F = rng.random((200, n_obj))
    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    n = len(front) + 20
    kept = survive(F, n, seed=0)
    assert len(kept) == len(set(kept.tolist())) == n
    assert set(front.tolist()) <= set(kept.tolist())
    assert np.array_equal(kept, survive(F, n, seed=0))


@pytest.mark.parametrize("n_obj", [2, 3])
def test_survival_takes_only_front_members_when_the_front_is_larger(n_obj):
    angle = np.linspace(0, np.pi / 2, 60)
    on_front = np.column_stack([np.cos(angle), np.sin(angle), np.zeros(60)])[:, :n_obj] if n_obj == 2 else \
        np.random.default_rng(0).dirichlet(np.ones(3), 60)
    F = np.concatenate([on_front, on_front + 1.0])  # the second half is dominated
    kept = survive(F, 40, seed=3)
    assert len(kept) == 40 and kept.max() < 60


def test_survival_with_three_objectives_spreads_along_the_front():
    F = np.random.default_rng(0).dirichlet(np.ones(3), 300)  # all on one simplex: one front
    kept = survive(F, 30, seed=0)
    assert len(kept) == 30
    assert np.all(F[kept].max(axis=0) > 0.8)  # every corner of the front keeps a member (reference directions)


def test_objective_matrix_follows_the_names():
    recs = [record([0], 75.0, 10, 100), record([1], 60.0, 5, 300)]
    assert objective_matrix(recs, ["macs", "acc"]).tolist() == [[100, 25], [300, 40]]
    with pytest.raises(ValueError, match="objectives"):
        objective_matrix(recs, ["energy"])


def test_a_latency_archive_needs_latency_in_every_record():
    archive = Archive(4, ["acc", "latency"])
    with pytest.raises(ArchiveError, match="latency"):
        archive.add([record([0], 75.0, 10, 100)])
    with pytest.raises(ArchiveError, match="latency"):
        archive.add([dict(record([0], 75.0, 10, 100), latency=-1.0)])
    archive.add([dict(record([0], 75.0, 10, 100), latency=2.5), dict(record([1], 60.0, 5, 300), latency=1.5)])
    assert archive.F.tolist() == [[25.0, 2.5], [40.0, 1.5]]


def test_add_skips_duplicate_encodings():
    archive = make_archive()
    first = archive.records[0]
    added = archive.add([dict(first, top1=99.0), record(first["encoding"], 1.0, 1, 1)])
    assert added == [] and len(archive) == 30 and archive.records[0]["top1"] == first["top1"]
    fresh = next(x for x in SPACES["narrow"].sample(np.random.default_rng(7), 10) if not archive.contains(x))
    new = dict(record([], 50.0, 1, 1), encoding=fresh)
    assert archive.add([new, new]) == [dict(new, encoding=new["encoding"].tolist())]
    assert len(archive) == 31 and archive.contains(new["encoding"])


def test_shrink_keeps_the_pinned_encodings_even_when_dominated():
    recs = [record([i, 0], 50.0 + i, 100 - i, 100 - i) for i in range(10)]
    worst = record([99, 0], 1.0, 10**6, 10**6)
    archive = Archive(4, ("acc", "params", "macs"), pinned=[[99, 0]])
    archive.add(recs + [worst])
    archive.shrink()
    assert len(archive) == 4 and archive.contains([99, 0])


def _dominates(a: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.all(a <= B, axis=1) & np.any(a < B, axis=1)


def test_front_is_the_non_dominated_set():
    archive = make_archive(objectives=("acc", "params"))
    front = archive.front()
    in_front = np.array([any(r is f for f in front) for r in archive.records])
    F = archive.F
    assert 0 < in_front.sum() < len(archive)
    for f in F[in_front]:
        assert not np.any(_dominates(F, f[None]))  # nothing in the archive dominates a front member
    for f in F[~in_front]:
        assert np.any([_dominates(g, f[None])[0] for g in F[in_front]])  # every other record is dominated


def test_save_load_round_trip(tmp_path):
    archive = make_archive("parallel-ee")
    path = RunDir(tmp_path).search.archive(0)
    archive.save(path)
    archive.save(path)  # overwriting goes through a temp file and leaves nothing else behind
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    loaded = Archive.load(path, space=SPACES["parallel-ee"])
    assert loaded.to_json() == archive.to_json()
    assert np.array_equal(loaded.X, archive.X) and np.array_equal(loaded.F, archive.F)
    assert loaded.pinned == archive.pinned and loaded.size == archive.size


def _corrupt(data: dict, what: str) -> str:
    if what == "not json":
        return "{'records': ["
    if what == "missing field":
        del data["records"][3]["top1"]
    elif what == "encoding length":
        data["records"][2]["encoding"] = data["records"][2]["encoding"][:-1]
    elif what == "bad top1":
        data["records"][0]["top1"] = "high"
    elif what == "duplicate":
        data["records"][1] = dict(data["records"][0])
    elif what == "no records":
        del data["records"]
    elif what == "unknown objective":
        data["objectives"] = ["acc", "latency"]
    return json.dumps(data)


@pytest.mark.parametrize("what, message", [
    ("not json", "not valid JSON"), ("missing field", r"record 3: missing field\(s\) \['top1'\]"),
    ("encoding length", r"record 2: encoding has shape \(22,\); expected \(23,\)"),
    ("bad top1", "record 0: 'top1' must be a percentage"), ("duplicate", "repeat an encoding"),
    ("no records", r"missing field\(s\) \['records'\]"), ("unknown objective", "latency"),
])
def test_corrupt_archive_file_is_a_clear_error(tmp_path, what, message):
    path = tmp_path / "archive.json"
    path.write_text(_corrupt(make_archive("parallel-ee").to_json(), what))
    with pytest.raises(ArchiveError, match=message) as err:
        Archive.load(path, space=SPACES["parallel-ee"])
    assert str(path) in str(err.value)


def test_missing_archive_file_is_a_clear_error(tmp_path):
    with pytest.raises(ArchiveError, match="cannot be read"):
        Archive.load(tmp_path / "nope.json")


# -- hypervolume -------------------------------------------------------------------------------
def test_hypervolume_uses_the_stored_reference_point():
    rng = np.random.default_rng(0)
    F0 = rng.random((50, 2))
    ref, ideal = reference_point(F0, margin=0.1)
    assert np.allclose(ideal, F0.min(axis=0)) and np.allclose(ref, F0.max(axis=0) * 1.1 - 0.1 * F0.min(axis=0))
    hv = hypervolume(F0, ref, ideal)
    assert 0 < hv < 1 and hypervolume(F0.copy(), ref, ideal) == hv
    front = F0[NonDominatedSorting().do(F0, only_non_dominated_front=True)]
    dominated = front + rng.uniform(0.01, 0.1, front.shape)
    assert hypervolume(np.concatenate([F0, dominated]), ref, ideal) == pytest.approx(hv, abs=1e-12)
    better = F0.min(axis=0) - 0.05  # beyond the ideal: still counted against the fixed box
    assert hypervolume(np.concatenate([F0, [better]]), ref, ideal) > hv
    # the reference point does not move with the set: a smaller set is compared in the same box
    assert hypervolume(front[:1], ref, ideal) < hv


def test_archive_hypervolume_never_decreases_when_points_are_added():
    space = SPACES["parallel-ee"]
    evaluate = evaluator(space)  # fixed accuracies: a record's top-1 never changes
    archive = initial_archive(space, evaluate, 40, 4, ("acc", "macs"), seed=0)
    ref, ideal = reference_point(archive.F)
    rng = np.random.default_rng(1)
    last = hypervolume(archive.F, ref, ideal)
    for _ in range(5):
        archive.add(evaluate(space.sample(rng, 20)))
        assert hypervolume(archive.F, ref, ideal) >= last - 1e-12
        assert len(archive.front()) < archive.size - 2  # the front fits, so survival keeps all of it
        archive.shrink()
        hv = hypervolume(archive.F, ref, ideal)
        assert hv >= last - 1e-12
        last = hv


def test_initial_archive_evaluates_the_warm_start_encodings_first():
    space, calls = SPACES["parallel-ee"], []
    warm = space.sample(np.random.default_rng(7), 5)
    initial_archive(space, evaluator(space, calls), 30, 4, ("acc", "params"), seed=0, warm_start=warm)
    (X,) = calls
    assert len(X) <= 120 and np.array_equal(X[2:7], warm)


def test_a_bad_warm_start_file_is_named(tmp_path):
    assert warm_start_encodings(None) is None
    path = tmp_path / "warm.json"
    for text, match in (("not json", "cannot read"), ("[]", "non-empty"), ("[[1, 2], [3]]", "one length")):
        path.write_text(text)
        with pytest.raises(ArchiveError, match=match):
            warm_start_encodings(str(path))
    path.write_text("[[1, 2], [3, 4]]")
    assert warm_start_encodings(str(path)).tolist() == [[1, 2], [3, 4]]
