"""OFAv2 super-networks: architectures, the supernet, static subnets, costs, data."""
from .arch import Architecture, ArchitectureError, Block, Space
from .bn import recalibrate_bn
from .costs import Cost, arch_cost
from .ofa_compat import CheckpointError, load_ofa_state_dict
from .subnet import Subnet
from .supernet import Supernet, default_space

__all__ = ["Architecture", "ArchitectureError", "Block", "CheckpointError", "Cost", "Space", "Subnet",
           "Supernet", "arch_cost", "default_space", "load_ofa_state_dict", "recalibrate_bn"]
