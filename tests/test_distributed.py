"""Two CPU processes over gloo: ranks stay identical and train the same subnets."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from supernets import Supernet, load_splits
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


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        archs = []
        original = PhaseTrainer.step_archs

        def recording(self, step, resolution):
            archs.append(original(self, step, resolution))
            return archs[-1]
        PhaseTrainer.step_archs = recording
        splits = load_splits("synthetic", resolution=16, calibration_size=8, n_classes=4, size=16, n_train=32,
                             n_val=8, n_test=8)
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        net = Supernet(4, 1.0, dense=True, early_exits=True, space=default_space(False, True, 1.0, (12, 16)))
        phases = parse_phases(TABLE, net.space, parallel=False, early_exits=True)
        train_supernet(net, phases, splits, Path(out) / "run", TrainOptions(batch_size=8, val_settings=2,
                                                                               eval_batch_size=8),
                       Dist(rank, 2, torch.device("cpu")))
        torch.save({"state": net.state_dict(), "archs": [[a.to_json() for a in step] for step in archs]},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_keep_identical_weights_and_subnets(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert len(r0["archs"]) == 2 * 1 + 2 * 2   # 32 images / (8 x 2 ranks) = 2 steps per epoch
    assert r0["archs"] == r1["archs"]
    assert all(torch.equal(v, r1["state"][k]) for k, v in r0["state"].items())
    saved = load_checkpoint(tmp_path / "run" / "depth" / "best.pt")["model"]  # what train_supernet returns
    assert all(torch.equal(v, saved[k]) for k, v in r0["state"].items())


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
    log = (tmp_path / "run" / "logs" / "train-supernet.log").read_text()
    assert "2 process(es)" in log and "level epoch 1/1" in log
    state = load_checkpoint(tmp_path / "run" / "supernet" / "w1.0" / "level" / "last.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
