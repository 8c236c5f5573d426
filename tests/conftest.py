import numpy as np
import pytest
import torch


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a busy 2-core machine a descheduled
    OpenMP thread makes every small op wait for it: one thread keeps these tests fast."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory):
    """An uninterrupted `nat2 run` of the tiny config (tests copy it before they change anything)."""
    from nat2.app.cli import main
    from tiny_run import write_config

    root = tmp_path_factory.mktemp("finished")
    assert main(["run", str(write_config(root))]) == 0
    return root / "run"
