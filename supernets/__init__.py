"""OFAv2 super-networks: architectures, the supernet, static subnets, costs, data."""
from .arch import Architecture, ArchitectureError, Block, Space
from .bn import recalibrate_bn
from .costs import Cost, arch_cost
from .data import DATASETS, DatasetError, ImageSet, Splits, load_splits, make_loader
from .ofa_compat import CheckpointError, load_ofa_state_dict
from .subnet import Subnet
from .supernet import Supernet, default_space

__all__ = ["DATASETS", "Architecture", "ArchitectureError", "Block", "CheckpointError", "Cost", "DatasetError",
           "ImageSet", "Space", "Splits", "Subnet", "Supernet", "arch_cost", "default_space", "load_ofa_state_dict",
           "load_splits", "make_loader", "recalibrate_bn"]
