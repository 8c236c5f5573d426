import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from supernets import Architecture, Block, Space, arch_cost
from supernets.arch import BRANCH_KEYS
from nat2.space import EncodingError, SearchSpace

SPACES = {
    "narrow": SearchSpace(Space(resolutions=(24, 28, 32), widths=(1.0, 1.2))),
    "parallel": SearchSpace(Space(resolutions=(24, 28, 32), widths=(1.0, 1.2), keys=BRANCH_KEYS)),
    "narrow-ee": SearchSpace(Space(resolutions=(32,), widths=(1.0, 1.2), exits=(1, 2, 3, 4, 5))),
    "parallel-ee": SearchSpace(Space(resolutions=(32, 40), widths=(1.0, 1.2), keys=BRANCH_KEYS,
                                     exits=(1, 2, 3, 4, 5))),
}


def vectors(space: SearchSpace, real: bool = False):
    """Arbitrary in-bounds vectors (integers, or reals as search operators may produce)."""
    elements = [st.floats(lo - 0.49, hi + 0.49) if real else st.integers(lo, hi)
                for lo, hi in zip(space.xl.tolist(), space.xu.tolist())]
    return st.tuples(*elements).map(np.array)


@pytest.mark.parametrize("name", SPACES)
def test_layout_and_bounds(name):
    sp = SPACES[name]
    assert sp.n_var == (23 if "ee" in name else 22)
    assert sp.xu[sp.n_head:].max() == (63 if "parallel" in name else 9)
    assert sp.xl[sp.n_head:].tolist() == [1, 1, 0, 0] * 5


def test_nat_original_gene_mapping():
    sp = SPACES["narrow"]
    genes = {1: (3, 3), 2: (5, 3), 3: (7, 3), 4: (3, 4), 9: (7, 6)}
    for g, (k, e) in genes.items():
        arch = sp.decode([0, 0] + [g, g, 0, 0] * 5)
        assert (arch.stages[0][0].kernel, arch.stages[0][0].expand) == (k, e)


def test_parallel_gene_mapping_uses_popcount_grouped_keys():
    sp = SPACES["parallel"]
    assert sp.key_order == (1, 2, 4, 3, 5, 6, 7)
    assert sp.decode([0, 0] + [19, 63, 0, 0] * 5).stages[0] == (Block(3, 3, 4), Block(7, 6, 7))
    assert sp.decode([0, 0] + [10, 1, 0, 0] * 5).stages[0] == (Block(3, 3, 2), Block(3, 3, 1))


@pytest.mark.parametrize("name", SPACES)
def test_round_trip_on_canonical_vectors(name):
    sp = SPACES[name]

    @settings(max_examples=150, deadline=None)
    @given(vectors(sp))
    def check(x):
        canonical = sp.repair(x)
        assert np.array_equal(sp.encode(sp.decode(canonical)), canonical)
        assert sp.decode(x) == sp.decode(canonical)  # decoding a raw vector equals decoding its repair

    check()


@pytest.mark.parametrize("name", SPACES)
def test_repair_is_idempotent_valid_and_within_bounds(name):
    sp = SPACES[name]

    @settings(max_examples=150, deadline=None)
    @given(vectors(sp, real=True))
    def check(x):
        y = sp.repair(x)
        assert y.dtype == np.int64
        assert np.all((y >= sp.xl) & (y <= sp.xu))
        assert np.array_equal(sp.repair(y), y)
        assert sp.is_canonical(y)
        sp.space.check(sp.decode(y))

    check()


@pytest.mark.parametrize("name", SPACES)
def test_decoding_is_never_random(name):
    sp = SPACES[name]
    x = np.random.default_rng(1).integers(sp.xl, sp.xu + 1, size=(50, sp.n_var))
    first = [sp.decode(v) for v in x]
    np.random.seed(123)
    assert first == [sp.decode(v) for v in x]


def test_hole_in_a_stage_is_compacted_not_randomised():
    sp = SPACES["narrow"]
    x = np.array([0, 0] + [5, 1, 0, 9] + [1, 1, 0, 0] * 4)
    assert sp.repair(x)[2:6].tolist() == [5, 1, 9, 0]
    assert sp.decode(x).depths[0] == 3


def test_canonical_form_fixes_genes_that_do_not_change_the_network():
    sp = SPACES["parallel-ee"]
    x = np.array([0, 0, 1] + [63, 60, 0, 0] + [5, 7, 9, 0] + [33] * 12)  # exit 2, stages 3..5 irrelevant
    y = sp.repair(x)
    assert y[3 + 8:].tolist() == [1, 1, 0, 0] * 3
    key3 = 1 + 9 * 3  # key 3 (no MBConv): k, e fixed to their first values
    assert sp.repair(np.array([0, 0, 4] + [key3 + 8, key3 + 4, 0, 0] + [19, 19, 0, 0] * 4))[3:5].tolist() == [key3] * 2


@pytest.mark.parametrize("bad, message", [
    ([0] * 21, r"shape \(21,\).*expected \(22,\)"),
    ([0, 0] + [1, 1, 0, 0] * 4 + [1, 12, 0, 0], r"gene 19: stage 5 block 2 = 12 is out of range 1..9"),
    ([0, 0] + [0, 1, 0, 0] + [1, 1, 0, 0] * 4, r"gene 2: stage 1 block 1 = 0 is out of range 1..9"),
    ([3, 0] + [1, 1, 0, 0] * 5, r"gene 0: R \(resolution index\) = 3 is out of range 0..2"),
    ([0, 0.5] + [1, 1, 0, 0] * 5, r"gene 1: W \(width index\) = 0.5 is not an integer"),
    (["a"] * 22, r"expected integers"),
])
def test_bad_encodings_raise_a_clear_error(bad, message):
    with pytest.raises(EncodingError, match=message):
        SPACES["narrow"].decode(bad)


def test_min_and_max_encodings():
    sp = SPACES["parallel-ee"]
    assert sp.decode(sp.max_encoding) == sp.space.max_arch()
    assert sp.decode(sp.min_encoding) == sp.space.min_arch()
    assert sp.max_encoding[3:].tolist() == [63] * 20


def test_sampler_depth_frequencies_are_exactly_uniform(rng):
    sp = SPACES["parallel"]
    n = 3001
    x = sp.sample(rng, n)
    depths = np.count_nonzero(x[:, 2:].reshape(n, 5, 4), axis=2)
    for s in range(5):
        counts = np.bincount(depths[:, s], minlength=5)[2:]
        assert counts.max() - counts.min() <= 1, counts
    popcount = np.array([0] + [bin(sp.key_order[(g - 1) // 9]).count("1") for g in range(1, 64)])
    branches = popcount[x[:, 2:].reshape(n, 5, 4)]
    for s in range(5):  # the first two positions are always active: exactly balanced
        for b in (0, 1):
            counts = np.bincount(branches[:, s, b], minlength=4)[1:]
            assert counts.max() - counts.min() <= 1, counts
    active = branches[branches > 0]
    assert stats.chisquare(np.bincount(active)[1:]).pvalue > 1e-3


def test_sampler_choices_are_uniform_within_statistical_bounds(rng):
    sp = SPACES["parallel-ee"]
    archs = sp.space.sample(rng, 4000)
    exits = np.bincount([a.exit for a in archs])[1:]
    assert exits.max() - exits.min() <= 1
    blocks = [b for a in archs for _, _, b in a.blocks()]
    mb = [b for b in blocks if b.has_mbconv]
    for values, k in [([b.kernel for b in mb], 3), ([b.expand for b in mb], 3),
                      ([b.key for b in blocks if bin(b.key).count("1") == 2], 3),
                      ([a.resolution for a in archs], 2), ([a.width for a in archs], 2)]:
        _, counts = np.unique(values, return_counts=True)
        assert len(counts) == k
        assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_sampled_encodings_are_canonical_and_deterministic():
    sp = SPACES["parallel-ee"]
    a = sp.sample(np.random.default_rng(7), 200)
    assert np.array_equal(a, sp.sample(np.random.default_rng(7), 200))
    assert sp.is_canonical(a).all()


@pytest.mark.parametrize("name", SPACES)
def test_vectorised_costs_equal_arch_costs(name, rng):
    sp = SPACES[name]
    x = np.vstack([sp.sample(rng, 30), sp.min_encoding, sp.max_encoding])
    params, macs = sp.costs(x, 10)
    for v, p, m in zip(x, params, macs):
        cost = arch_cost(sp.decode(v), 10)
        assert (cost.params, cost.macs) == (p, m)


def test_space_rejects_non_consecutive_depths():
    with pytest.raises(EncodingError, match="consecutive"):
        SearchSpace(Space(depths=(2, 4)))


def test_encode_rejects_architectures_outside_the_space():
    arch = Architecture(64, 1.0, [[Block(3, 3)] * 2] * 5)
    with pytest.raises(ValueError, match=r"resolution = 64 .*\(24, 28, 32\)"):
        SPACES["narrow"].encode(arch)
