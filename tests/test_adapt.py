"""Supernet adaptation: the sampler is fitted on the archive's better half by survival."""
from types import SimpleNamespace

import numpy as np
import pytest
from test_archive import SPACES, make_archive, record

import nat2.adapt as adapt_module
from nat2.adapt import adapt, better_half, gene_distribution
from nat2.archive import survive
from nat2.config import DEFAULTS
from supernets.train import TrainOptions

SPACE = SPACES["parallel-ee"]


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


def test_adapt_fits_the_sampler_on_the_survivors_of_the_archive(monkeypatch, tmp_path):
    archive = make_archive("parallel-ee", size=30, objectives=("acc", "params"))
    fitted, samplers = [], []

    def recording(space, X, smoothing=0.0):
        fitted.append(np.array(X))
        return gene_distribution(space, X, smoothing)

    class FakeTrainer:
        def __init__(self, *args, arch_sampler, **kwargs):
            samplers.append(arch_sampler)

        def run(self, until):
            pass

    monkeypatch.setattr(adapt_module, "gene_distribution", recording)
    monkeypatch.setattr(adapt_module, "PhaseTrainer", FakeTrainer)
    supernets = {w: SimpleNamespace(space=SPACE.space, dropout=0.1) for w in SPACE.space.widths}
    adapt(supernets, {w: None for w in supernets}, SPACE, archive, None, TrainOptions(),
          DEFAULTS["search"]["adapt"], 1, 2, tmp_path)
    (X,) = fitted
    expected = archive.X[survive(archive.F, 15)]
    assert {tuple(x) for x in X.tolist()} == {tuple(x) for x in expected.tolist()}
    assert len(samplers) == 2
    by_top1 = archive.X[np.argsort([-r["top1"] for r in archive.records])[:15]]
    assert {tuple(x) for x in by_top1.tolist()} != {tuple(x) for x in expected.tolist()}
