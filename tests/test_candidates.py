import itertools

import numpy as np
import pytest
from test_archive import N_CLASSES, SPACES, FakePredictor, evaluator

import nat2.search.candidates as candidates
from nat2.search.archive import hypervolume, initial_archive, reference_point
from nat2.search.candidates import EncodingRepair, SurrogateProblem, choose_candidates, generate, select_subset

OBJECTIVES = [("acc", "params", "macs"), ("acc", "macs"), ("acc",)]


def archive_of(name: str, objectives, size: int = 30):
    space = SPACES[name]
    return initial_archive(space, evaluator(space), size, multiplier=3, objectives=objectives, seed=0)


@pytest.fixture
def problems(monkeypatch) -> list[SurrogateProblem]:
    """Every SurrogateProblem that `generate` builds, to inspect what the search scored."""
    made = []

    class Recording(SurrogateProblem):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(candidates, "SurrogateProblem", Recording)
    return made


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("objectives", OBJECTIVES)
def test_every_scored_individual_is_a_canonical_vector(name, objectives, problems):
    space = SPACES[name]
    archive = archive_of(name, objectives)
    X, F = generate(space, FakePredictor(space.n_var), archive, objectives, N_CLASSES, pop_size=40, n_gen=8, seed=0)
    (problem,) = problems
    scored = np.concatenate(problem.evaluated)
    assert len(scored) > 40 * 5  # the initial population and the offspring of several generations
    assert space.is_canonical(scored).all()
    assert X.shape == (40, space.n_var) and F.shape == (40, len(objectives))
    assert space.is_canonical(X).all() and len({tuple(x) for x in X.tolist()}) == len(X)


def test_encoding_repair_canonicalises_real_valued_genotypes():
    space = SPACES["parallel-ee"]
    X = np.random.default_rng(0).uniform(space.xl - 0.4, space.xu + 0.4, (50, space.n_var))
    repaired = EncodingRepair(space)._do(None, X)
    assert space.is_canonical(repaired).all()


def test_surrogate_objectives_are_named_and_costs_exact():
    space = SPACES["parallel-ee"]
    predictor = FakePredictor(space.n_var)
    X = space.sample(np.random.default_rng(0), 20)
    out = {}
    SurrogateProblem(space, predictor, ("macs", "acc"), N_CLASSES)._evaluate(X, out)
    params, macs = space.costs(X, N_CLASSES)
    assert np.array_equal(out["F"][:, 0], macs) and np.allclose(out["F"][:, 1], predictor.predict(X))


def test_initial_population_holds_the_archive_front():
    space = SPACES["narrow"]
    archive = archive_of("narrow", ("acc", "macs"))
    X0 = candidates.initial_population(space, archive, 40, np.random.default_rng(0))
    rows = {tuple(x) for x in X0.tolist()}
    assert len(rows) == len(X0) == 40
    assert {tuple(r["encoding"]) for r in archive.front()} <= rows


def test_generate_is_deterministic_with_a_seed():
    space = SPACES["parallel-ee"]
    archive = archive_of("parallel-ee", ("acc", "macs"))
    predictor = FakePredictor(space.n_var)
    run = lambda seed: generate(space, predictor, archive, ("acc", "macs"), N_CLASSES, pop_size=30, n_gen=5, seed=seed)
    (X1, F1), (X2, F2), (X3, _) = run(0), run(0), run(1)
    assert np.array_equal(X1, X2) and np.array_equal(F1, F2)
    assert not np.array_equal(X1, X3)


class LinearPredictor:
    """Error linear in the genes, 80 % for the smallest genes down to 20 % for the largest: every
    step towards lower error costs parameters, so the front is a real trade-off."""

    def __init__(self, space) -> None:
        self.space, self.w = space, np.random.default_rng(1).uniform(0.5, 1.5, space.n_var)

    def predict(self, X: np.ndarray) -> np.ndarray:
        share = (np.asarray(X) - self.space.xl) @ self.w / ((self.space.xu - self.space.xl) @ self.w)
        return 80.0 - 60.0 * share


def test_nsga2_improves_the_predicted_front_over_its_initial_population(problems):
    space, objectives = SPACES["parallel-ee"], ("acc", "params")
    _, F = generate(space, LinearPredictor(space), archive_of("parallel-ee", objectives), objectives, N_CLASSES,
                    pop_size=40, n_gen=10, seed=0)
    (problem,) = problems
    initial = {}
    problem._evaluate(problem.evaluated[0], initial)  # the first batch scored: the initial population
    assert len(initial["F"]) == 40
    ref, ideal = reference_point(initial["F"])  # fixed by the start, as the search fixes it
    assert hypervolume(F, ref, ideal) > hypervolume(initial["F"], ref, ideal) + 0.1


@pytest.mark.parametrize("objectives", OBJECTIVES[:2])
def test_choose_candidates_returns_k_distinct_new_encodings(objectives):
    space = SPACES["parallel-ee"]
    archive = archive_of("parallel-ee", objectives)
    X, F = generate(space, FakePredictor(space.n_var), archive, objectives, N_CLASSES, pop_size=60, n_gen=5, seed=0)
    # duplicates and archive members among the candidates must never be chosen
    X, F = np.concatenate([X, X[:10], archive.X[:10]]), np.concatenate([F, F[:10], F[:10]])
    chosen = choose_candidates(X, F, archive, objectives, 8, seed=0)
    assert chosen.shape == (8, space.n_var)
    assert len({tuple(x) for x in chosen.tolist()}) == 8
    assert not any(archive.contains(x) for x in chosen)
    assert np.array_equal(chosen, choose_candidates(X, F, archive, objectives, 8, seed=0))


def test_pure_accuracy_search_chooses_the_lowest_predicted_errors():
    space = SPACES["narrow"]
    archive = archive_of("narrow", ("acc",))
    X = space.sample(np.random.default_rng(3), 60)
    X = X[[not archive.contains(x) for x in X]]
    F = np.random.default_rng(4).permutation(len(X)).astype(float)[:, None]
    chosen = choose_candidates(np.concatenate([archive.X[:5], X]), np.concatenate([[[-1.0]] * 5, F]),
                               archive, ["acc"], 6, seed=0)
    assert np.array_equal(chosen, X[np.argsort(F[:, 0])[:6]])


def test_select_subset_fills_the_gaps_of_the_front():
    front = np.array([[0.0], [1.0]])
    cands = np.linspace(0, 1, 21)[1:-1, None]
    assert cands[select_subset(cands, front, 1, seed=0), 0].tolist() == [0.5]
    chosen = cands[select_subset(cands, front, 3, seed=0), 0]
    assert np.allclose(chosen, [0.25, 0.5, 0.75])


def test_select_subset_uses_the_worst_cost_axis():
    front = np.array([[0.0, 0.0], [1.0, 1.0]])
    cands = np.array([[0.5, 0.05], [0.5, 0.5], [0.05, 0.5], [0.95, 0.95]])
    assert select_subset(cands, front, 1, seed=0).tolist() == [1]


def test_select_subset_is_deterministic_and_exact():
    rng = np.random.default_rng(0)
    cands, front = rng.random((80, 2)), rng.random((15, 2))
    a, b = select_subset(cands, front, 25, seed=5), select_subset(cands, front, 25, seed=5)
    assert np.array_equal(a, b) and len(set(a.tolist())) == 25
    assert select_subset(cands[:20], front, 25, seed=0).tolist() == list(range(20))


def cover(cands: np.ndarray, front: np.ndarray, chosen: tuple[int, ...]) -> tuple[float, float]:
    """(largest gap on the worst axis, sum of squared gaps over the axes) of the sorted front and
    chosen values, normalised by the range of all candidates and the front on each axis."""
    both = np.concatenate([cands, front])
    values = (np.concatenate([front, cands[list(chosen)]]) - both.min(0)) / np.ptp(both, axis=0)
    gaps = np.diff(np.sort(values, axis=0), axis=0)
    return float(gaps.max()), float((gaps ** 2).sum())


@pytest.mark.parametrize("case", ["a gap no candidate can close", "random costs"])
def test_select_subset_finds_the_brute_force_optimum(case):
    if case == "a gap no candidate can close":  # 0.5 .. 1: every subset ties on the largest gap
        front, cands = np.array([[0.0], [0.1], [0.5], [1.0]]), np.random.default_rng(0).uniform(0, 0.5, (16, 1))
    else:
        rng = np.random.default_rng(5)
        cands, front = rng.random((16, 2)), rng.random((6, 2))
    scores = {chosen: cover(cands, front, chosen) for chosen in itertools.combinations(range(16), 3)}
    best = min(scores, key=scores.get)
    assert sorted(scores.values())[1] > scores[best]  # the optimum is unique
    for seed in (0, 1):
        assert tuple(select_subset(cands, front, 3, seed=seed).tolist()) == best
