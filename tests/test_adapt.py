"""Supernet adaptation: the sampler is fitted on the archive's better half by survival and is exit-aware."""
from types import SimpleNamespace

import numpy as np
import pytest
from test_archive import SPACES, make_archive, record

import nat2.search.adaptation as adapt_module
from nat2.search.adaptation import AdaptSettings, ArchiveSampler, adapt, better_half
from nat2.search.archive import survive
from nat2.search.distribution import ArchiveDistribution
from supernets.arch import BLOCKS_PER_STAGE, N_STAGES
from supernets.train import TrainOptions

SPACE = SPACES["parallel-ee"]


def exits_and_depths(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(exit stage, depth of every stage) per canonical row."""
    genes = X[:, SPACE.n_head:].reshape(-1, N_STAGES, BLOCKS_PER_STAGE)
    return np.asarray(SPACE.space.exits)[X[:, 2]], (genes > 0).sum(axis=2)


def joint(X: np.ndarray) -> np.ndarray:
    """P(exit = e, depth of stage s = d) for the stages s the exit reaches (zero elsewhere)."""
    exits, depths = exits_and_depths(X)
    table = np.zeros((N_STAGES + 1, N_STAGES, BLOCKS_PER_STAGE + 1))
    for e, row in zip(exits, depths):
        table[e, np.arange(e), row[:e]] += 1
    return table / len(X)


@pytest.fixture(scope="module")
def fitted_rows() -> np.ndarray:
    """Archive-like rows where the exit and the depths depend on each other: every exit-5 row has a
    depth-4 stage 5, every exit-3 row a depth-2 stage 1."""
    X = SPACE.sample(np.random.default_rng(0), 1500)
    exits, depths = exits_and_depths(X)
    keep = ((exits != 5) | (depths[:, 4] == 4)) & ((exits != 3) | (depths[:, 0] == 2))
    return X[keep][:300]


def test_sampler_reproduces_the_exit_depth_joint_of_its_rows(fitted_rows):
    samples = ArchiveDistribution(SPACE, fitted_rows).sample(np.random.default_rng(1), 20000)
    assert SPACE.is_canonical(samples).all()
    assert np.abs(joint(samples) - joint(fitted_rows)).max() < 0.015
    exits, depths = exits_and_depths(samples)
    assert (exits == 5).sum() > 1000 and (depths[exits == 5, 4] == 4).all()
    assert (exits == 3).sum() > 1000 and (depths[exits == 3, 0] == 2).all()


def test_sampler_decodes_subnets_of_its_width_and_the_batch_resolution(fitted_rows):
    sampler = ArchiveSampler(SPACE, ArchiveDistribution(SPACE, fitted_rows), 1.2)
    archs = sampler(np.random.default_rng(0), 40, 50)
    assert len(archs) == 50 and {(a.resolution, a.width) for a in archs} == {(40, 1.2)}
    for a in archs:
        SPACE.space.check(a)
    assert np.isclose(sampler.resolution_weights().sum(), 1.0) and (sampler.resolution_weights() > 0).all()


@pytest.mark.parametrize("smoothing", [0.0, 1.0])
def test_smoothing_keeps_values_the_rows_lack_reachable(smoothing):
    seen = SPACE.max_encoding  # exit 5, every stage depth 4, one block choice everywhere
    samples = ArchiveDistribution(SPACE, seen[None], smoothing).sample(np.random.default_rng(0), 2000)
    exits, depths = exits_and_depths(samples)
    blocks = samples[:, SPACE.n_head:][samples[:, SPACE.n_head:] > 0]
    unseen = [(exits != 5).mean(), (depths != 4).mean(), (blocks != seen[-1]).mean()]
    if smoothing:
        assert min(unseen) > 0.1
    else:
        not_width = [0, *range(2, SPACE.n_var)]  # the sampler sets the width itself
        assert max(unseen) == 0.0 and (samples[:, not_width] == seen[not_width]).all()


def records_with_a_cheap_front(n_obj: int) -> tuple[list[dict], set[int]]:
    """20 records: a front of 6 (cheap = inaccurate) and a second front of 4, both below the top-1
    of the 10 dominated expensive records. Returns (records, indices of the two fronts)."""
    rows = [(p, 40 + 8 * p) for p in range(1, 7)] + [(p + 0.5, 39 + 8 * p) for p in range(3, 7)]
    rows += [(p + 0.7, 38 + 8 * p) for p in range(3, 7)] + [(p + 0.9, 37 + 8 * p) for p in range(3, 7)]
    rows += [(p + 0.95, 36 + 8 * p) for p in (5, 6)]
    records = [record([i], top1, params, 2 * params if n_obj == 3 else 0) for i, (params, top1) in enumerate(rows)]
    return records, set(range(10))


@pytest.mark.parametrize("objectives", [("acc", "params"), ("acc", "params", "macs")])
def test_better_half_is_the_first_two_fronts_not_the_most_accurate(objectives):
    records, fronts = records_with_a_cheap_front(len(objectives))
    half = {int(x[0]) for x in better_half(records, objectives)}
    assert half == fronts
    most_accurate = set(np.argsort([-r["top1"] for r in records])[:10].tolist())
    assert not most_accurate >= {0, 1, 2}  # top-1 alone would leave out the cheap front members


def test_better_half_cutting_one_front_keeps_its_ends_by_crowding():
    """10 records on one front (top-1 rises with params): the half is decided by crowding alone,
    which keeps both ends of the front, the cheapest and the most accurate."""
    records = [record([i], 50 + 4 * i + (i % 3), 1 + i, 0) for i in range(10)]
    half = {int(x[0]) for x in better_half(records, ("acc", "params"))}
    assert len(half) == 5 and {0, 9} <= half


def test_adapt_fits_the_sampler_on_the_survivors_of_the_archive(monkeypatch, tmp_path):
    archive = make_archive("parallel-ee", size=30, objectives=("acc", "params"))
    fitted, samplers = [], []

    class Recording(ArchiveDistribution):
        def __init__(self, space, X, smoothing=0.0):
            super().__init__(space, X, smoothing)
            fitted.append(np.array(X))

    class FakeTrainer:
        def __init__(self, *args, arch_sampler, **kwargs):
            samplers.append(arch_sampler)

        def run(self, until):
            pass

    monkeypatch.setattr(adapt_module, "ArchiveDistribution", Recording)
    monkeypatch.setattr(adapt_module, "PhaseTrainer", FakeTrainer)
    supernets = {w: SimpleNamespace(space=SPACE.space, dropout=0.1) for w in SPACE.space.widths}
    adapt(supernets, {w: None for w in supernets}, SPACE, archive, None, TrainOptions(),
          AdaptSettings(), 1, 2, {w: tmp_path / str(w) for w in supernets})
    (X,) = fitted
    expected = archive.X[survive(archive.F, 15)]
    assert {tuple(x) for x in X.tolist()} == {tuple(x) for x in expected.tolist()}
    assert len(samplers) == 2 and all(s.distribution is samplers[0].distribution for s in samplers)
    by_top1 = archive.X[np.argsort([-r["top1"] for r in archive.records])[:15]]
    assert {tuple(x) for x in by_top1.tolist()} != {tuple(x) for x in expected.tolist()}
