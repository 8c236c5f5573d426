"""One module per stage of the pipeline, each with one `run(...)`. No stage imports another;
only the CLI and the pipeline import stages."""
