"""The tiny synthetic config that `nat2 run` finishes in about a minute: the pipeline tests and
the bad-input corpus both start from it."""
from pathlib import Path

# Data, supernet, run directory and a two-phase training, shared with test_search.py's configs.
BASE = """\
data: {{name: synthetic, calibration_size: 16}}
supernet: {{resolutions: [12, 16], widths: [1.0], early_exits: true}}
run: {{dir: {run}}}
train:
  batch_size: 50
  val_settings: 2
  eps:
    - {{name: full, epochs: 1, lr: 0.05, aep: true}}
    - {{name: all, kernels: all, expands: all, depths: all, exits: all, epochs: 1, lr: 0.01, subnets_per_step: 2}}
"""
CONFIG = BASE + """\
search:
  archive_size: 8
  multiplier: 2
  iterations: 1
  candidates: 3
  population: 12
  generations: 3
  knees: 2
  adapt: {{epochs: 1, subnets_per_step: 2}}
select: {{method: knee}}
finetune: {{epochs: 3, patience: 1, batch_size: 50}}
"""


def write_config(root: Path, name: str = "run", extra: str = "") -> Path:
    """root/<name>.yaml: the tiny config with run.dir root/<name>, and `extra` YAML appended."""
    path = root / f"{name}.yaml"
    path.write_text(CONFIG.format(run=root / name) + extra)
    return path
