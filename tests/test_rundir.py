"""The run directory's documented layout, written out literally: the one place in the tests that
names its files, so that renaming one breaks a test (every other test asks `RunDir`)."""
from pathlib import Path

from nat2.app.config import Config
from nat2.app.rundir import RunDir


def test_run_directory_paths_are_the_documented_names():
    run = RunDir("r")
    assert RunDir.of(Config(), "configs/tiny.yaml").path == Path("runs/tiny")
    assert run.config_file == Path("r/config.yaml")
    assert run.env_file == Path("r/env.json")
    assert run.log_file("train-supernet") == Path("r/logs/train-supernet.log")
    assert run.tensorboard(1.2) == Path("r/logs/tensorboard/w1.2")
    assert {name: run.stage(name) for name in ("supernet", "search", "tfsearch", "select", "finetune", "export")} \
        == {"supernet": Path("r/supernet"), "search": Path("r/search"), "tfsearch": Path("r/tfsearch"),
            "select": Path("r/select"), "finetune": Path("r/finetune"), "export": Path("r/final")}
    # supernet training
    assert run.supernet(1.0) == Path("r/supernet/w1.0")
    assert run.phase_checkpoint(1.2, "exits") == Path("r/supernet/w1.2/exits/best.pt")
    assert run.phase_checkpoint(1.0, "full", "last") == Path("r/supernet/w1.0/full/last.pt")
    # the NAT2 search
    search = run.search
    assert (search.state, search.curves, search.final, search.final_test) == \
        (Path("r/search/state.json"), Path("r/search/curves.png"), Path("r/search/final.json"),
         Path("r/search/final_test.jsonl"))
    assert search.iteration(3) == Path("r/search/iter_3")
    assert search.archive(3) == Path("r/search/iter_3/archive.json")
    assert search.stats(3) == Path("r/search/iter_3/stats.json")
    assert search.pareto(3) == Path("r/search/iter_3/pareto.png")
    assert search.evaluations(3, "candidates") == Path("r/search/iter_3/candidates.jsonl")
    assert run.adapt(1.0) == Path("r/search/adapt/w1.0")
    assert run.adapted(1.0) == Path("r/search/adapt/w1.0/last.pt")
    # the training-free search
    tf = run.tfsearch
    assert (tf.metrics, tf.result, tf.front_plot, tf.warm_start) == \
        (Path("r/tfsearch/metrics.jsonl"), Path("r/tfsearch/result.json"), Path("r/tfsearch/front.png"),
         Path("r/tfsearch/warm_start.json"))
    assert tf.state(0.5) == Path("r/tfsearch/state_wp0.5.json")
    assert tf.state(None) == Path("r/tfsearch/state_pfifa.json")
    # selection, fine-tuning, exports
    assert run.selection_file == Path("r/select/selected.json")
    assert run.finetune_job("subnet_3", "aep") == Path("r/finetune/subnet_3/aep")
    assert run.finetuned_model("subnet_3", "aep") == Path("r/finetune/subnet_3/aep/final.pt")
    assert run.result_file("subnet_3", "single") == Path("r/finetune/subnet_3/single/result.json")
    assert run.export("subnet_3_aep") == Path("r/final/subnet_3_aep")
