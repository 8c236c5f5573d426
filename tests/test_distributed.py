"""Two CPU processes over gloo: ranks stay identical, train the same subnets, and draw their own
augmentations and dropout masks."""
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nat2.app.rundir import RunDir
from supernets import ImageSet, Supernet, load_splits
from supernets.checkpoint import load_checkpoint
from supernets.distributed import Dist
from supernets.phases import parse_phases
from supernets.supernet import default_space
from supernets.train import PhaseTrainer, TrainOptions, train_supernet

ROOT = Path(__file__).resolve().parents[1]
TABLE = [{"name": "full", "epochs": 1, "lr": 0.05, "aep": True},
         {"name": "depth", "kernels": "all", "depths": "all", "exits": "all", "epochs": 2, "lr": 0.02,
          "subnets_per_step": 2}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flips(x: torch.Tensor) -> list[bool]:
    """Which images of a batch of `_ramps` were mirrored: their brightness falls left to right."""
    profile = x.mean(dim=(1, 2))
    return (profile[:, -1] < profile[:, 0]).tolist()


def _ramps(splits):
    """Training images that all brighten from left to right (plus noise), so a flip shows."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, 16)[None, None, :, None]
    images = np.clip(ramp + rng.uniform(0, 55, (32, 16, 16, 3)), 0, 255).astype(np.uint8)
    return ImageSet(images, rng.integers(0, 4, 32), splits.train.transform_factory, 16)


def _worker(rank: int, port: int, out: str) -> None:
    """Two phases on 2 ranks with 2 loader workers each; records each step's subnets, flips and
    dropout masks, and the final weights."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        steps, masks = [], []
        original = PhaseTrainer.train_step

        def recording(self, x, y, archs):
            steps.append(([a.to_json() for a in archs], _flips(x)))
            return original(self, x, y, archs)

        def record_mask(module, inputs, output):
            if module.training:   # not the validation's forwards
                masks.append((output == 0) & (inputs[0] != 0))
        PhaseTrainer.train_step = recording
        splits = load_splits("synthetic", resolution=16, calibration_size=8, n_classes=4, size=16, n_train=32,
                             n_val=8, n_test=8)
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        net = Supernet(4, 1.0, dense=True, early_exits=True, space=default_space(False, True, 1.0, (12, 16)))
        for head in net.exits.values():
            head.dropout.register_forward_hook(record_mask)
        phases = parse_phases(TABLE, net.space, parallel=False, early_exits=True)
        train_supernet(net, phases, replace(splits, train=_ramps(splits)), Path(out) / "run",
                       TrainOptions(batch_size=8, val_settings=2, eval_batch_size=8, num_workers=2),
                       Dist(rank, 2, torch.device("cpu")))
        torch.save({"state": net.state_dict(), "archs": [a for a, _ in steps], "flips": [f for _, f in steps],
                    "masks": masks}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One 2-rank gloo training job; its run directory and what each rank recorded."""
    out = tmp_path_factory.mktemp("gloo")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]


def test_two_gloo_ranks_keep_identical_weights_and_subnets(two_ranks):
    out, (r0, r1) = two_ranks
    assert len(r0["archs"]) == 2 * 1 + 2 * 2   # 32 images / (8 x 2 ranks) = 2 steps per epoch
    assert r0["archs"] == r1["archs"]
    assert all(torch.equal(v, r1["state"][k]) for k, v in r0["state"].items())
    saved = load_checkpoint(out / "run" / "depth" / "best.pt")["model"]  # what train_supernet returns
    assert all(torch.equal(v, saved[k]) for k, v in r0["state"].items())


def test_two_gloo_ranks_draw_different_augmentations_and_dropout_masks(two_ranks):
    """The same subnets, but image j of a batch is flipped (or not) and dropped out by each
    rank's own draw, with loader workers too."""
    _, (r0, r1) = two_ranks
    flips = [f for step in r0["flips"] + r1["flips"] for f in step]
    assert 0 < sum(flips) < len(flips)
    assert r0["flips"] != r1["flips"]
    assert len(r0["masks"]) == len(r1["masks"]) > 0
    assert not any(torch.equal(a, b) for a, b in zip(r0["masks"], r1["masks"]))


def test_torchrun_cli_two_processes(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {name: synthetic, calibration_size: 16}\n"
        "supernet: {parallel: true, resolutions: [12, 16], widths: [1.0]}\n"
        f"run: {{dir: {tmp_path / 'run'}}}\n"
        "train:\n  batch_size: 50\n  val_settings: 2\n  device: cpu\n  eps:\n"
        "    - {name: full, epochs: 1, lr: 0.05}\n"
        "    - {name: level, only: parallel, keys: all, epochs: 1, lr: 0.01, subnets_per_step: 2}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "nat2", "train-supernet", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunDir(tmp_path / "run")
    log = run.log_file("train-supernet").read_text()
    assert "2 process(es)" in log and "level epoch 1/1" in log
    state = load_checkpoint(run.phase_checkpoint(1.0, "level", "last"))
    assert state["epoch"] == 1 and len(state["history"]) == 1
