"""The `nat2` command-line application: the CLI, the typed config, one module per stage, the
pipeline, and `RunDir`, the only code that knows the run directory's folder and file names."""
