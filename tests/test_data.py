import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset

from supernets.data import DATASETS, DatasetError, ImageSet, load_splits, make_loader


def _dump(path, entry):
    """Pickle with str keys: the official files are Python 2 pickles whose keys load as str under
    the latin1 decoding torchvision uses (a Python 3 pickle of b"data" would load as bytes)."""
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)


def _cifar_rows(rng, n):
    """n images in the official row layout: 1024 red, 1024 green, 1024 blue values, row-major."""
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8)


def _write_cifar10(root, rng, per_batch=20, n_test=30):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for b in range(1, 6):
        data, targets = _cifar_rows(rng, per_batch), [int(v) for v in np.arange(per_batch) % 10]
        _dump(folder / f"data_batch_{b}", {"data": data, "labels": targets, "batch_label": f"batch {b}"})
        rows.append(data)
        labels += targets
    test_rows, test_labels = _cifar_rows(rng, n_test), [int(v) for v in rng.integers(0, 10, n_test)]
    _dump(folder / "test_batch", {"data": test_rows, "labels": test_labels})
    _dump(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return np.concatenate(rows), np.asarray(labels), test_rows, np.asarray(test_labels)


def _write_cifar100(root, rng, n_train=1000, n_test=30):
    """1000 train images: a stratified 10 % validation split needs at least one image per class."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    fine = np.arange(n_train) % 100
    _dump(folder / "train", {"data": _cifar_rows(rng, n_train), "fine_labels": [int(v) for v in fine],
                             "coarse_labels": [int(v) for v in fine // 5]})
    test_fine = rng.integers(0, 100, n_test)
    _dump(folder / "test", {"data": _cifar_rows(rng, n_test), "fine_labels": [int(v) for v in test_fine],
                            "coarse_labels": [int(v) for v in test_fine // 5]})
    _dump(folder / "meta", {"fine_label_names": [f"f{i}" for i in range(100)],
                            "coarse_label_names": [f"c{i}" for i in range(20)]})
    return fine, test_fine


WNIDS = ["n03000000", "n01000000", "n02000000"]  # sorted: n01 -> 0, n02 -> 1, n03 -> 2


def _jpeg(path, rng):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)


def _write_tiny(root, rng, per_class=20):
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for wnid in WNIDS:
        folder = root / "train" / wnid / "images"
        folder.mkdir(parents=True)
        for i in range(per_class):
            _jpeg(folder / f"{wnid}_{i}.JPEG", rng)
    (root / "val" / "images").mkdir(parents=True)
    annotations = []
    for i in range(6):
        _jpeg(root / "val" / "images" / f"val_{i}.JPEG", rng)
        annotations.append(f"val_{i}.JPEG\t{WNIDS[i % 3]}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return [sorted(WNIDS).index(WNIDS[i % 3]) for i in range(6)]


def _assert_sample(dataset, r):
    """Shape at the set's resolution, and at resolution r through the (i, r) form."""
    x, y = dataset[0]
    res = dataset.resolution
    assert x.shape == (3, res, res) and x.dtype == torch.float32 and isinstance(y, int)
    x2, y2 = dataset[(0, r)]
    assert x2.shape == (3, r, r) and y2 == y


def _assert_disjoint_splits(s):
    assert not set(s.train.indices) & set(s.val.indices)
    assert set(s.calibration.indices) <= set(s.train.indices)
    assert s.train.images is s.val.images is s.calibration.images


@pytest.fixture
def cifar10_root(tmp_path, rng):
    return tmp_path, _write_cifar10(tmp_path, rng)


def test_cifar10_splits(cifar10_root):
    root, (rows, labels, test_rows, test_labels) = cifar10_root
    s = load_splits("cifar10", root, resolution=24, seed=1, calibration_size=50)
    assert (len(s.train), len(s.val), len(s.test), len(s.calibration)) == (90, 10, 30, 50)
    assert s.n_classes == 10 and s.mean == (0.4914, 0.4822, 0.4465)
    _assert_disjoint_splits(s)
    assert sorted(np.bincount(s.val.labels, minlength=10)) == [1] * 10
    np.testing.assert_array_equal(s.train.labels, labels[s.train.indices])
    np.testing.assert_array_equal(s.test.labels, test_labels)
    np.testing.assert_array_equal(s.test.images[3], test_rows[3].reshape(3, 32, 32).transpose(1, 2, 0))
    np.testing.assert_array_equal(s.train.images[7], rows[7].reshape(3, 32, 32).transpose(1, 2, 0))
    for dataset in (s.train, s.val, s.test, s.calibration):
        _assert_sample(dataset, 40)


def test_cifar_calibration_is_eval_transformed_and_capped(cifar10_root):
    s = load_splits("cifar10", cifar10_root[0], calibration_size=1000)
    assert len(s.calibration) == len(s.train) == 90
    assert torch.equal(s.calibration[5][0], s.calibration[5][0])


def test_cifar100_splits(tmp_path, rng):
    fine, test_fine = _write_cifar100(tmp_path, rng)
    s = load_splits("cifar100", tmp_path, resolution=32)
    assert (len(s.train), len(s.val), len(s.test), s.n_classes) == (900, 100, 30, 100)
    assert s.mean == (0.5071, 0.4865, 0.4409)
    _assert_disjoint_splits(s)
    np.testing.assert_array_equal(s.val.labels, fine[s.val.indices])
    assert np.all(np.bincount(s.val.labels, minlength=100) == 1)
    np.testing.assert_array_equal(s.test.labels, test_fine)
    _assert_sample(s.test, 20)


def test_tinyimagenet_splits(tmp_path, rng):
    val_labels = _write_tiny(tmp_path, rng)
    s = load_splits("tinyimagenet", tmp_path, resolution=32, seed=2)
    assert (len(s.train), len(s.val), len(s.test), s.n_classes) == (51, 9, 6, 3)
    _assert_disjoint_splits(s)
    assert sorted(np.bincount(s.val.labels)) == [3, 3, 3]
    assert [p.split("/")[-1] for p in s.test.images] == [f"val_{i}.JPEG" for i in range(6)]
    np.testing.assert_array_equal(s.test.labels, val_labels)
    for i in s.train.indices[:5]:
        assert f"/train/{sorted(WNIDS)[s.train.all_labels[i]]}/images/" in s.train.images[i]
    _assert_sample(s.train, 48)
    _assert_sample(s.test, 40)


def test_tinyimagenet_accepts_parent_of_extracted_folder(tmp_path, rng):
    _write_tiny(tmp_path / "tiny-imagenet-200", rng, per_class=7)
    assert len(load_splits("tinyimagenet", tmp_path).test) == 6


def test_digits_splits_stratified_and_deterministic():
    s = load_splits("digits", resolution=16, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (1222, 216, 359)
    assert len(set(s.train.indices) | set(s.val.indices) | set(s.test.indices)) == 1797
    _assert_disjoint_splits(s)
    assert not set(s.test.indices) & (set(s.train.indices) | set(s.val.indices))
    totals = np.bincount(s.test.all_labels)
    assert np.all(np.abs(np.bincount(s.test.labels, minlength=10) - 0.2 * totals) <= 1)
    assert np.allclose(s.mean, s.train.images[s.train.indices].reshape(-1, 3).mean(0) / 255)
    _assert_sample(s.val, 8)
    again, other = load_splits("digits", resolution=16, seed=0), load_splits("digits", resolution=16, seed=1)
    np.testing.assert_array_equal(again.val.indices, s.val.indices)
    np.testing.assert_array_equal(again.calibration.indices, s.calibration.indices)
    assert not np.array_equal(other.val.indices, s.val.indices)


def test_synthetic_is_deterministic_and_learnable():
    s = load_splits("synthetic", resolution=16, seed=3, n_classes=4, n_train=80, n_val=20, n_test=40)
    assert (len(s.train), len(s.val), len(s.test), s.n_classes) == (80, 20, 40, 4)
    _assert_disjoint_splits(s)
    np.testing.assert_array_equal(load_splits("synthetic", seed=3, n_classes=4, n_train=80, n_val=20,
                                              n_test=40).test.images, s.test.images)
    train = s.train.images[s.train.indices].astype(float)
    centroids = np.stack([train[s.train.labels == c].mean(0) for c in range(4)])
    distances = ((s.test.images.astype(float)[:, None] - centroids[None]) ** 2).sum(axis=(2, 3, 4))
    assert (distances.argmin(1) == s.test.labels).mean() > 0.9


def test_resolution_attribute_and_transform_cache():
    s = load_splits("synthetic", resolution=16)
    s.val.resolution = 20
    assert s.val[0][0].shape == (3, 20, 20)
    assert s.val.transform(20) is s.val.transform(20)


def test_missing_root_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetError, match=re.escape(str(missing / "cifar-10-batches-py")) + ".*data_batch_1"):
        load_splits("cifar10", missing)


def test_cifar_without_test_batch(cifar10_root):
    root = cifar10_root[0]
    (root / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(root / "cifar-10-batches-py")) + ": missing test_batch"):
        load_splits("cifar10", root)


def test_cifar_malformed_pickle(cifar10_root):
    root = cifar10_root[0]
    _dump(root / "cifar-10-batches-py" / "data_batch_2", {b"data": np.zeros((2, 3072), np.uint8)})
    with pytest.raises(DatasetError, match=r"malformed.*cifar-10-python\.tar\.gz"):
        load_splits("cifar10", root)


def test_tiny_annotation_with_unknown_wnid(tmp_path, rng):
    _write_tiny(tmp_path, rng, per_class=4)
    annotations = tmp_path / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(DatasetError, match=re.escape(str(annotations)) + ".*wnids.txt.*train/<wnid>/images"):
        load_splits("tinyimagenet", tmp_path)


def test_tiny_annotation_with_missing_image(tmp_path, rng):
    _write_tiny(tmp_path, rng, per_class=4)
    image = tmp_path / "val" / "images" / "val_2.JPEG"
    image.unlink()
    with pytest.raises(DatasetError, match=re.escape(str(image))):
        load_splits("tinyimagenet", tmp_path)


def test_tiny_missing_class_folder(tmp_path, rng):
    _write_tiny(tmp_path, rng, per_class=4)
    (tmp_path / "wnids.txt").write_text("\n".join(WNIDS + ["n04000000"]))
    with pytest.raises(DatasetError, match=re.escape(str(tmp_path / "train" / "n04000000" / "images"))):
        load_splits("tinyimagenet", tmp_path)


def test_unknown_name_and_missing_root():
    with pytest.raises(ValueError, match="imagenet21k.*" + ", ".join(DATASETS)):
        load_splits("imagenet21k")
    with pytest.raises(DatasetError, match="cifar100 needs a root"):
        load_splits("cifar100")
    with pytest.raises(TypeError, match="n_train"):
        load_splits("digits", n_train=5)


def test_make_loader_order_is_seeded():
    data = TensorDataset(torch.arange(100))

    def order(seed):
        return torch.cat([b[0] for b in make_loader(data, 16, shuffle=True, seed=seed)]).tolist()

    assert order(7) == order(7) != order(8)
    assert sorted(order(7)) == list(range(100))


def test_make_loader_batches_image_sets():
    s = load_splits("synthetic", resolution=16)
    x, y = next(iter(make_loader(s.train, 8, shuffle=True)))
    assert x.shape == (8, 3, 16, 16) and y.dtype == torch.int64
    assert isinstance(s.train, ImageSet)


def _write_folder(root, rng, classes, per_class, ext="png"):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(root / c / f"{i}.{ext}")


def test_imagefolder_splits(tmp_path, rng):
    _write_folder(tmp_path / "train", rng, ["cat", "dog", "eel"], 10)
    _write_folder(tmp_path / "test", rng, ["cat", "dog", "eel"], 2, ext="jpg")
    s = load_splits("imagefolder", tmp_path, resolution=16, seed=0)
    assert (len(s.train), len(s.val), len(s.test), s.n_classes) == (26, 4, 6, 3)
    _assert_disjoint_splits(s)
    np.testing.assert_array_equal(s.test.labels, [0, 0, 1, 1, 2, 2])
    assert all(f"/train/{['cat', 'dog', 'eel'][label]}/" in s.train.images[i]
               for i, label in zip(s.train.indices, s.train.labels))
    _assert_sample(s.train, 16)
    _assert_sample(s.test, 16)


def test_imagefolder_errors_name_the_layout(tmp_path, rng):
    with pytest.raises(DatasetError, match="needs a root"):
        load_splits("imagefolder")
    with pytest.raises(DatasetError, match="train/<class>/<image>"):
        load_splits("imagefolder", tmp_path)
    _write_folder(tmp_path / "train", rng, ["cat", "dog"], 5)
    _write_folder(tmp_path / "test", rng, ["cat", "fox"], 1)
    with pytest.raises(DatasetError, match="expected the class folders of train/"):
        load_splits("imagefolder", tmp_path)
