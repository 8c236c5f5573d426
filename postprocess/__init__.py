"""Post-processing of found subnets: two-step fine-tuning and export. Imports supernets only."""
from .export import ExportError, export_subnet, load_subnet
from .finetune import FinetuneError, FinetuneOptions, two_step

__all__ = ["ExportError", "FinetuneError", "FinetuneOptions", "export_subnet", "load_subnet", "two_step"]
