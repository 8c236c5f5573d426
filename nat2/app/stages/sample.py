"""`nat2 sample`: subnets drawn with the NAT2 sampler from fresh supernets, with their costs."""
from __future__ import annotations

import sys

import numpy as np
from tqdm import tqdm

from supernets import make_loader, recalibrate_bn

from ..config import Config
from ..tables import table


def run(config: Config) -> None:
    """Build the supernets, sample subnets, extract each, recalibrate its BN on the calibration
    images and print its architecture, params and MACs (the min and max networks first and last)."""
    space = config.supernet.search_space()
    data, sn = config.data, config.supernet
    splits = data.load()
    supernets = sn.build(space, splits.n_classes)
    rng = np.random.default_rng(config.sample.seed)
    x = np.vstack([space.min_encoding, space.sample(rng, config.sample.n), space.max_encoding])
    params, macs = space.costs(x, splits.n_classes)
    print(f"{data.name}: {splits.n_classes} classes, {len(splits.train)} train / {len(splits.val)} val / "
          f"{len(splits.test)} test images; variant "
          + "".join(k[0].upper() for k in ("dense", "parallel") if getattr(sn, k)) + ("EE" if sn.early_exits else ""))
    rows = []
    labels = ["min", *map(str, range(1, config.sample.n + 1)), "max"]
    progress = tqdm(list(zip(labels, x, params, macs)), desc="extract + BN recalibration",
                    disable=not sys.stderr.isatty())
    for label, enc, p, m in progress:
        arch = space.decode(enc)
        subnet = supernets[arch.width].extract(arch).eval()
        splits.calibration.resolution = arch.resolution
        recalibrate_bn(subnet, make_loader(splits.calibration, config.sample.batch_size, shuffle=False))
        rows.append((label, " ".join(map(str, enc)), p / 1e6, m / 1e6, str(arch)))
    print(table([("subnet", "<6"), ("encoding", "<70"), ("params (M)", ">10.3f"), ("MACs (M)", ">9.2f"), ("architecture", "")], rows))
