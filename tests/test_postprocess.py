"""Two-step fine-tuning (epochs, early stopping, test-split isolation, AEP pruning) and export
(files, parity of the rebuilt module, .pt2 and ONNX graphs, atomic folders)."""
import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

import postprocess.finetune as finetune
from postprocess import ExportError, FinetuneOptions, export_subnet, load_subnet, two_step
from postprocess.finetune import Finetuner, best_epoch, keep_exits, prune_exits, scores
from supernets import Supernet, default_space, load_splits
from supernets.data import ImageSet
from supernets.evaluation import EvalData

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    return Supernet(10, 1.0, dense=True, parallel=True, early_exits=True,
                    space=default_space(True, True, 1.0, (16,))).eval()


@pytest.fixture(scope="module")
def arch(supernet):
    return next(a for a in supernet.space.sample(np.random.default_rng(3), 50) if a.exit >= 3)


def _spied_splits(events):
    splits = load_splits("synthetic", calibration_size=16, n_train=60, n_val=20, n_test=20)
    test = splits.test

    class TestSpy(type(test)):
        def __getitem__(self, item):
            events.append(("test", item[0] if isinstance(item, tuple) else item))
            return super().__getitem__(item)
    spy = TestSpy(test.images, test.all_labels, test.transform_factory, test.resolution, test.indices)
    return dataclasses.replace(splits, test=spy)


def test_step_two_trains_exactly_e_epochs_and_reads_the_test_split_once_at_the_end(supernet, arch, tmp_path,
                                                                                  monkeypatch):
    events = []
    splits = _spied_splits(events)
    original = Finetuner._epoch

    def counted(self, epoch):
        events.append((self.dir.name, epoch))
        return original(self, epoch)
    monkeypatch.setattr(Finetuner, "_epoch", counted)
    options = FinetuneOptions(epochs=6, patience=1, batch_size=20, lr=1e-2)
    result, model = two_step(lambda: supernet.extract(arch), splits, arch.resolution, options, tmp_path,
                             torch.device("cpu"))
    step1 = [e for tag, e in events if tag == "step1"]
    step2 = [e for tag, e in events if tag == "step2"]
    history = torch.load(tmp_path / "step1" / "last.pt", weights_only=True)["history"]
    assert result["best_epoch"] == best_epoch(history)
    assert 1 <= result["best_epoch"] < len(step1) < options.epochs  # e, step 1's length and the maximum all differ
    assert step2 == list(range(result["best_epoch"])) and result["step2_epochs"] == result["best_epoch"]
    tests = [i for i, (tag, _) in enumerate(events) if tag == "test"]
    assert tests and min(tests) > max(i for i, (tag, _) in enumerate(events) if tag == "step2")
    assert sorted(item for tag, item in events if tag == "test") == list(range(len(splits.test)))
    assert 0 <= result["test_top1"] <= 100 and result["exits"] == [arch.exit]


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_step_two_starts_again_from_the_supernet_weights_not_from_step_one(supernet, arch, tmp_path, monkeypatch):
    starts: dict[str, dict[str, torch.Tensor]] = {}
    original = Finetuner._epoch

    def recorded(self, epoch):
        starts.setdefault(self.dir.name, {k: v.clone() for k, v in self.model.state_dict().items()})
        return original(self, epoch)
    monkeypatch.setattr(Finetuner, "_epoch", recorded)
    splits = load_splits("synthetic", calibration_size=16, n_train=40, n_val=20, n_test=20)
    options = FinetuneOptions(epochs=2, patience=2, batch_size=20, lr=1e-2)
    two_step(lambda: supernet.extract(arch), splits, arch.resolution, options, tmp_path, torch.device("cpu"))
    extracted = supernet.extract(arch).state_dict()
    step1_best = torch.load(tmp_path / "step1" / "best.pt", weights_only=True)["model"]
    step1_last = torch.load(tmp_path / "step1" / "last.pt", weights_only=True)["model"]
    assert not _same_weights(step1_best, extracted) and not _same_weights(step1_last, extracted)
    assert _same_weights(starts["step1"], extracted)
    assert _same_weights(starts["step2"], extracted)


def test_step_two_trains_on_every_train_and_validation_image_with_training_augmentation(supernet, arch, tmp_path,
                                                                                       monkeypatch):
    splits = load_splits("synthetic", calibration_size=16, n_train=40, n_val=20, n_test=20)
    pool = splits.train.images              # train and validation views share it; test has its own
    draws: dict[str, list[tuple[int | None, object]]] = defaultdict(list)   # step -> (pool index, transforms)
    running: list[str] = []
    original_epoch, original_item = Finetuner._epoch, ImageSet.__getitem__

    def epoch(self, e):
        running.append(self.dir.name)
        try:
            return original_epoch(self, e)
        finally:
            running.pop()

    def item(self, index):
        if running:
            position = index[0] if isinstance(index, tuple) else index
            image = int(self.indices[position]) if self.images is pool else None
            draws[running[-1]].append((image, self.transform_factory))
        return original_item(self, index)
    monkeypatch.setattr(Finetuner, "_epoch", epoch)
    monkeypatch.setattr(ImageSet, "__getitem__", item)
    options = FinetuneOptions(epochs=2, patience=2, batch_size=20, lr=1e-3)
    result, _ = two_step(lambda: supernet.extract(arch), splits, arch.resolution, options, tmp_path,
                         torch.device("cpu"))
    train, val = splits.train.indices.tolist(), splits.val.indices.tolist()
    assert Counter(image for image, _ in draws["step1"]) == Counter(train * result["step1_epochs"])
    assert Counter(image for image, _ in draws["step2"]) == Counter((train + val) * result["step2_epochs"])
    assert splits.val.transform_factory is not splits.train.transform_factory
    assert all(factory is splits.train.transform_factory for _, factory in draws["step1"] + draws["step2"])


def test_early_stopping_follows_validation_loss_and_the_best_epoch_validation_top1(tmp_path):
    trainer = Finetuner.__new__(Finetuner)
    trainer.validation, trainer.options = object(), FinetuneOptions(patience=3)
    rows = [{"val_loss": loss, "val_top1": top1} for loss, top1 in
            [(2.0, 10), (1.0, 30), (1.5, 50), (1.2, 50), (1.1, 20)]]
    assert not trainer.stopped(rows[:4])
    assert trainer.stopped(rows)          # no lower loss in the 3 epochs after epoch 2
    assert best_epoch(rows) == 3          # best top-1, the earliest of the tie
    trainer.validation = None             # step 2 never stops early
    assert not trainer.stopped(rows)


def test_resumed_fine_tuning_equals_uninterrupted(supernet, arch, tmp_path, monkeypatch):
    splits = load_splits("synthetic", calibration_size=16, n_train=60, n_val=20, n_test=20)
    options = FinetuneOptions(epochs=4, patience=4, batch_size=20, lr=1e-3)
    reference, _ = two_step(lambda: supernet.extract(arch), splits, arch.resolution, options, tmp_path / "a",
                            torch.device("cpu"))
    original, calls = Finetuner._epoch, []

    def dying(self, epoch):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(epoch)
        return original(self, epoch)
    monkeypatch.setattr(Finetuner, "_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        two_step(lambda: supernet.extract(arch), splits, arch.resolution, options, tmp_path / "b", torch.device("cpu"))
    monkeypatch.setattr(Finetuner, "_epoch", original)
    resumed, _ = two_step(lambda: supernet.extract(arch), splits, arch.resolution, options, tmp_path / "b",
                          torch.device("cpu"))
    assert resumed == reference
    a = torch.load(tmp_path / "a" / "step2" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "step2" / "last.pt", weights_only=True)["model"]
    assert _same_weights(a, b)


def test_a_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(supernet, arch, tmp_path, monkeypatch):
    splits = load_splits("synthetic", calibration_size=16, n_train=40, n_val=20, n_test=20)
    options = FinetuneOptions(epochs=3, batch_size=20)
    data = EvalData(splits, torch.device("cpu"))
    trainer = Finetuner(supernet.extract(arch), splits.train, arch.resolution, options, tmp_path, torch.device("cpu"),
                        lambda: data.batches("val", arch.resolution, 20))
    trainer.run(1)
    saved = (tmp_path / "last.pt").read_bytes()
    monkeypatch.setattr(finetune, "aep_loss", lambda *a, **k: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(finetune.FinetuneError, match="non-finite loss"):
        trainer.run(3)
    assert (tmp_path / "last.pt").read_bytes() == saved


def test_prune_exits_picks_the_most_accurate_subset_and_prefers_cheaper_ties():
    labels = torch.tensor([0, 1, 2, 3])
    right = torch.nn.functional.one_hot(labels, 4).float() * 5
    wrong = torch.nn.functional.one_hot((labels + 1) % 4, 4).float() * 5
    # exit 1 always wrong, exits 2 and 3 right: {2} is as accurate as {2, 3} and cheaper
    kept, beta, top1 = prune_exits(torch.stack([wrong, right, right]), labels, [1 / 3] * 3, [1, 2, 3])
    assert kept == [2] and beta == [1.0] and top1 == 100.0
    # exits 1 and 2 are each half right and wrong together; exit 3 alone is right
    half1 = torch.stack([right[0], right[1], wrong[2], wrong[3]])
    half2 = torch.stack([wrong[0], wrong[1], right[2], right[3]]) * 0.9
    assert scores(torch.stack([half1, half2]), labels, [0.5, 0.5])["top1"] == 50.0
    kept, beta, top1 = prune_exits(torch.stack([half1, half2, right * 3]), labels, [0.2, 0.3, 0.5], [1, 2, 3])
    assert kept == [3] and beta == [1.0] and top1 == 100.0


def test_keep_exits_cuts_the_network_after_the_last_kept_exit(supernet, arch):
    full = supernet.extract(arch, "all").eval()
    pruned = keep_exits(full, [1, 2]).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        a, b = full(x), pruned(x)
    assert pruned.arch.exit == 2 and len(b) == 2
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in full.parameters())


@pytest.mark.parametrize("exits", [None, "all"])
def test_exported_graphs_and_rebuilt_module_agree_with_the_subnet(supernet, arch, exits, tmp_path):
    model = supernet.extract(arch, exits).eval()
    parity = export_subnet(model, tmp_path / "s", {"note": "test"})
    folder = tmp_path / "s"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["arch.json", "weights.safetensors", "model.pt2", "model.onnx", "metadata.json"])
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["note"] == "test" and meta["outputs"] == [f"exit{e}" for e in model.exit_list]
    assert set(parity) == {"rebuilt", "pt2", "onnx"}
    x = torch.randn(5, 3, 16, 16)          # a batch size the export was not traced with
    with torch.no_grad():
        ref = [z.numpy() for z in (model(x) if exits else (model(x),))]
        rebuilt = load_subnet(folder)(x)
        program = torch.export.load(folder / "model.pt2").module()(x)
    rebuilt, program = (r if isinstance(r, tuple) else (r,) for r in (rebuilt, program))
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"image": x.numpy()})
    assert len(onnx) == len(ref) == len(rebuilt) == len(program) == len(model.exit_list)
    for r, a, b, c in zip(ref, rebuilt, program, onnx):
        assert np.abs(r - a.numpy()).max() <= 1e-4
        assert np.abs(r - b.numpy()).max() <= 1e-4
        assert np.abs(r - c).max() <= 1e-4


def test_a_failed_export_leaves_the_previous_folder_untouched(supernet, arch, tmp_path):
    model = supernet.extract(arch).eval()
    export_subnet(model, tmp_path / "s", {"version": 1})
    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(ExportError, match="does not reproduce"):
        export_subnet(model, tmp_path / "s", {"version": 2}, tolerance=-1.0)
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_load_subnet_needs_neither_nat2_nor_the_supernet(supernet, arch, tmp_path):
    export_subnet(supernet.extract(arch).eval(), tmp_path / "s", {})
    code = ("import sys; from postprocess import load_subnet; import torch; m = load_subnet(sys.argv[1]); "
            "m(torch.zeros(1, 3, 16, 16)); bad = [n for n in sys.modules if n.split('.')[0] == 'nat2']; "
            "assert not bad, bad; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s")], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_load_subnet_names_a_missing_file(tmp_path):
    with pytest.raises(ExportError, match="weights.safetensors"):
        (tmp_path / "arch.json").write_text("{}")
        load_subnet(tmp_path)


def test_two_step_with_pruning_returns_the_cut_model_of_the_kept_exits(supernet, arch, tmp_path):
    splits = load_splits("synthetic", calibration_size=16, n_train=40, n_val=20, n_test=20)
    options = FinetuneOptions(epochs=2, patience=2, batch_size=20, lr=1e-3)
    result, model = two_step(lambda: supernet.extract(arch, "all"), splits, arch.resolution, options, tmp_path,
                             torch.device("cpu"), prune=True)
    kept = result["kept_exits"]
    assert result["exits"] == list(range(1, arch.exit + 1)) and set(kept) <= set(result["exits"])
    assert list(model.exit_list) == kept and model.arch.exit == max(kept)
    assert sum(result["kept_beta"]) == pytest.approx(1.0) and len(result["kept_beta"]) == len(kept)
