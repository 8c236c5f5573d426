"""Post-processing of found subnets: two-step fine-tuning and export. Imports supernets only."""
from .export import FILES, ExportError, exit_logits, export_subnet, load_subnet, read_metadata
from .finetune import FinetuneError, FinetuneOptions, load_finetuned, save_finetuned, two_step

__all__ = ["FILES", "ExportError", "FinetuneError", "FinetuneOptions", "exit_logits", "export_subnet",
           "load_finetuned", "load_subnet", "read_metadata", "save_finetuned", "two_step"]
