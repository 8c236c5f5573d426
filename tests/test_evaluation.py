"""Evaluation data prepared once per resolution: same counts as streaming, built once, the
validation budget of supernet training, bf16 / channels_last evaluation on the CPU."""
import numpy as np
import pytest
import torch

from supernets import ImageSet, Supernet, default_space, load_splits
from supernets.evaluation import EvalData, count_correct, split_transform, subnet_top1
from supernets.phases import parse_phases
from supernets.train import TrainOptions, train_supernet, validation_subset
import supernets.train as train_module

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def splits():
    return load_splits("synthetic", resolution=16, seed=0, calibration_size=24, n_classes=4, size=16, n_train=64,
                       n_val=40, n_test=16)


@pytest.fixture(scope="module")
def supernet():
    torch.manual_seed(0)
    net = Supernet(4, 1.0, dense=True, parallel=True, early_exits=True,
                   space=default_space(True, True, 1.0, (12, 16, 20)))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net


def test_cached_batches_equal_streamed_ones_bit_for_bit(splits):
    cached, streamed = EvalData(splits, CPU), EvalData(splits, CPU, budget_mb=0)
    for split in ("calibration", "val"):
        for r in (12, 20):
            positions = [5, 0, 7, 3]
            for (a, ya), (b, yb) in zip(cached.batches(split, r, 8, positions), streamed.batches(split, r, 8, positions)):
                assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(ya, yb)
            assert torch.equal(torch.cat([x for x, _ in cached.batches(split, r, 16)]),
                               torch.cat([x for x, _ in streamed.batches(split, r, 7)]))
    assert cached.nbytes == (24 + 40) * (3 * (12 * 12 + 20 * 20) + 2 * 8)   # uint8 images, int64 labels
    assert cached.cache[("val", 12)].images.dtype == torch.uint8 and streamed.nbytes == 0


def test_cached_top1_counts_equal_streaming_for_several_subnets(splits, supernet, rng):
    cached, streamed = EvalData(splits, CPU), EvalData(splits, CPU, budget_mb=0)
    for arch in supernet.space.sample(rng, 5):
        for exits, beta in ((None, None), ("all", [1 / arch.exit] * arch.exit)):
            a = subnet_top1(supernet, arch, cached, exits=exits, beta=beta, batch_size=16, calibration_batch=10)
            b = subnet_top1(supernet, arch, streamed, exits=exits, beta=beta, batch_size=16, calibration_batch=10)
            assert a == b and a[1] == len(splits.val)


def test_each_image_is_prepared_once_per_resolution(splits, supernet, rng, monkeypatch):
    decoded = []
    original = ImageSet._image

    def counting(self, j):
        decoded.append(j)
        return original(self, j)
    monkeypatch.setattr(ImageSet, "_image", counting)
    data = EvalData(splits, CPU)
    archs = supernet.space.sample(rng, 6)
    for arch in archs:
        subnet_top1(supernet, arch, data, batch_size=16, calibration_batch=10)
    resolutions = {a.resolution for a in archs}
    assert len(resolutions) > 1
    assert len(decoded) == len(resolutions) * (len(splits.calibration) + len(splits.val))
    assert set(data.cache) == {(s, r) for s in ("calibration", "val") for r in resolutions}


def test_the_budget_streams_what_does_not_fit(splits, caplog):
    one = len(splits.val) * (3 * 16 * 16 + 8) / 2 ** 20
    data = EvalData(splits, CPU, budget_mb=one * 1.6)
    with caplog.at_level("INFO"):
        list(data.batches("val", 16, 8))
        list(data.batches("val", 12, 8))   # 12 px fits beside 16 px
        list(data.batches("calibration", 20, 8))   # does not fit any more
    assert data.cache[("val", 16)] is not None and data.cache[("val", 12)] is not None
    assert data.cache[("calibration", 20)] is None
    assert "calibration at 20 px streamed" in caplog.text and "MB on cpu" in caplog.text


def test_the_test_split_is_never_cached(splits):
    data = EvalData(splits, CPU)
    assert len(list(data.batches("test", 16, 8))) == 2 and data.cache == {}


def test_transforms_without_a_float_step_are_streamed():
    assert split_transform(lambda image: image) is None


def test_bf16_channels_last_evaluation_runs_on_the_cpu(splits, supernet):
    data = EvalData(splits, CPU)
    subnet = supernet.extract(supernet.space.max_arch())
    seen = []
    subnet.register_forward_hook(lambda m, i, o: seen.append(
        (i[0].is_contiguous(memory_format=torch.channels_last), o.dtype)) and None)
    correct, total = count_correct(subnet, data.batches("val", 20, 16), bf16=True, channels_last=True)
    assert total == len(splits.val) and 0 <= correct <= total
    assert seen == [(True, torch.bfloat16)] * 3
    count_correct(subnet, data.batches("val", 20, 16))
    assert seen[3:] == [(False, torch.float32)] * 3


# -- the validation budget of supernet training ---------------------------------------------------
def test_validation_subset_is_fixed_and_disjoint_from_calibration(splits):
    options = TrainOptions(val_images=10, seed=3)
    subset = validation_subset(len(splits.val), options)
    assert len(subset) == 10 and np.array_equal(subset, validation_subset(len(splits.val), options))
    assert len(set(subset.tolist())) == 10 and subset.max() < len(splits.val)
    assert not set(splits.val.indices[subset]) & set(splits.calibration.indices)
    assert validation_subset(len(splits.val), TrainOptions()) is None
    assert validation_subset(len(splits.val), TrainOptions(val_images=1000)) is None
    with pytest.raises(ValueError, match="val_images = 0"):
        TrainOptions(val_images=0)


def test_training_validates_the_subset_and_the_last_epoch_in_full(splits, supernet, tmp_path, monkeypatch):
    scored = []
    original = train_module.subnet_top1

    def spy(*args, positions=None, **kwargs):
        scored.append(len(positions))
        return original(*args, positions=positions, **kwargs)
    monkeypatch.setattr(train_module, "subnet_top1", spy)
    net = Supernet(4, 1.0, space=default_space(False, False, 1.0, (16,)))
    phases = parse_phases([{"name": "kernel", "kernels": "all", "epochs": 3, "lr": 0.01}], net.space, parallel=False,
                          early_exits=False)
    options = TrainOptions(batch_size=32, val_settings=2, eval_batch_size=16, val_images=10)
    train_supernet(net, phases, splits, tmp_path, options)
    assert scored == [10, 10] * 3 + [40, 40]   # 2 settings per epoch, then the full set once more
    rows = (tmp_path / "kernel" / "metrics.csv").read_text().splitlines()
    assert rows[0].split(",")[-3:] == ["val_full_top1", "seconds", "val_seconds"]
    assert rows[1].split(",")[-3] == "" and rows[3].split(",")[-3] != ""
