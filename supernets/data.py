"""Datasets for the search: train / validation / test / BN-calibration splits at any resolution.

Subnets are evaluated at their own resolution, so an `ImageSet` keeps raw images and builds its
transform per resolution: `dataset[(i, r)]` lets a batch sampler pick each step's resolution,
`dataset[(i, r, seed)]` also the augmentation seed. Validation is held out of the official training
set (the test split is touched only at the end); the calibration subset is drawn from the training
split, so it never overlaps validation. Nothing is downloaded: a missing or malformed dataset
raises `DatasetError` naming the path and the expected layout."""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.transforms import v2

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet", "imagefolder", "synthetic")

Stats = tuple[float, float, float]
Transform = Callable[[Image.Image], torch.Tensor]
TransformFactory = Callable[[int], Transform]

CIFAR_VAL_FRACTION = 0.10
TINY_VAL_FRACTION = 0.15
DIGITS_TEST_FRACTION, DIGITS_VAL_FRACTION = 0.20, 0.15
TINY_EVAL_CROP = 0.875

TINY_STATS = ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
FOLDER_LAYOUT = ("expected train/<class>/<image> and test/<class>/<image> with the same class folders (jpg, png, "
                 "... as torchvision's ImageFolder reads them); validation is held out of train/")
TINY_LAYOUT = ("expected wnids.txt, train/<wnid>/images/*.JPEG for every wnid, val/images/*.JPEG and "
               "val/val_annotations.txt (tab-separated: file name, wnid, 4 box ints)")


class DatasetError(FileNotFoundError):
    """A dataset is missing or malformed; the message names the path and the expected layout."""


class ImageSet(Dataset):
    """Images (uint8 N x H x W x 3 array or file paths) seen through an index view and a transform;
    subsets share the raw storage, so the splits of one training pool cost no copies."""

    def __init__(self, images: np.ndarray | Sequence[str], labels: np.ndarray, transform_factory: TransformFactory,
                 resolution: int = 32, indices: np.ndarray | None = None) -> None:
        self.images = images
        self.all_labels = np.asarray(labels, dtype=np.int64)
        self.indices = np.arange(len(self.all_labels)) if indices is None else np.asarray(indices, dtype=np.int64)
        self.transform_factory, self.resolution = transform_factory, resolution
        self._transforms: dict[int, Transform] = {}

    @property
    def labels(self) -> np.ndarray:
        return self.all_labels[self.indices]

    def subset(self, positions: np.ndarray, transform_factory: TransformFactory | None = None) -> ImageSet:
        """The images at `positions` of this view (same class, shared storage), optionally with other transforms."""
        return type(self)(self.images, self.all_labels, transform_factory or self.transform_factory,
                        self.resolution, self.indices[np.asarray(positions, dtype=np.int64)])

    def transform(self, resolution: int) -> Transform:
        """The transform at `resolution`, built once: AutoAugment and friends are not free to build."""
        if resolution not in self._transforms:
            self._transforms[resolution] = self.transform_factory(resolution)
        return self._transforms[resolution]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int | tuple[int, int] | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        """`dataset[i]`, `dataset[(i, resolution)]`, or `dataset[(i, resolution, seed)]`: the last
        draws the random transforms from `seed` alone (not from the process's generator)."""
        index, resolution, *seed = item if isinstance(item, tuple) else (item, self.resolution)
        transform, (image, label) = self.transform(resolution), self.raw(index)
        if not seed:
            return transform(image), label
        generator = torch.default_generator  # its own manual_seed: torch.manual_seed costs 50x more
        state = generator.get_state()
        generator.manual_seed(seed[0])
        try:
            return transform(image), label
        finally:
            generator.set_state(state)

    def raw(self, index: int) -> tuple[Image.Image, int]:
        """The untransformed image at `index` of this view and its label (for callers that apply
        part of a transform themselves, as the evaluation cache does)."""
        j = self.indices[index]
        return self._image(j), int(self.all_labels[j])

    def _image(self, j: int) -> Image.Image:
        if isinstance(self.images, np.ndarray):
            return Image.fromarray(self.images[j])
        try:
            with Image.open(self.images[j]) as image:
                return image.convert("RGB")
        except OSError as err:
            raise DatasetError(f"cannot read image {self.images[j]} ({err}); replace or remove it") from None


@dataclass(frozen=True)
class Splits:
    """The four views of one dataset; `calibration` is a fixed train subset with eval transforms."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    calibration: ImageSet
    n_classes: int
    mean: Stats
    std: Stats


class _Parts(NamedTuple):
    pool: ImageSet
    train_idx: np.ndarray
    val_idx: np.ndarray
    test: ImageSet
    train_factory: TransformFactory
    n_classes: int
    mean: Stats
    std: Stats


def load_splits(name: str, root: str | Path | None = None, *, resolution: int = 32, seed: int = 0,
                calibration_size: int = 1000, **synthetic_kwargs: int) -> Splits:
    """Load dataset `name` from `root` (the datasets read from disk) into seeded splits;
    `synthetic_kwargs` (n_classes, size, n_train, n_val, n_test) apply to "synthetic" only."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if synthetic_kwargs and name != "synthetic":
        raise TypeError(f"{', '.join(sorted(synthetic_kwargs))}: only the synthetic dataset takes these options")
    _require_positive(resolution=resolution, calibration_size=calibration_size)
    if name == "synthetic":
        parts = _synthetic(resolution, seed, **synthetic_kwargs)
    elif name == "digits":
        parts = _digits(resolution, seed)
    else:
        read = {"tinyimagenet": _tinyimagenet, "imagefolder": _imagefolder}.get(name, partial(_cifar, name))
        parts = read(_require_root(name, root), resolution, seed)
    return _assemble(parts, seed, calibration_size)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A loader whose order (and worker seeds) depend on `seed` only, so that runs repeat."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))


def _assemble(parts: _Parts, seed: int, calibration_size: int) -> Splits:
    n_calibration = min(calibration_size, len(parts.train_idx))
    calibration = np.sort(np.random.default_rng(seed).choice(parts.train_idx, n_calibration, replace=False))
    return Splits(train=parts.pool.subset(parts.train_idx, parts.train_factory), val=parts.pool.subset(parts.val_idx),
                  test=parts.test, calibration=parts.pool.subset(calibration), n_classes=parts.n_classes,
                  mean=parts.mean, std=parts.std)


def _require_positive(**values: int) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} = {value!r}; expected a positive integer")


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        layout = _CIFAR[name].layout if name in _CIFAR else TINY_LAYOUT if name == "tinyimagenet" else FOLDER_LAYOUT
        raise DatasetError(f"{name} needs a root: the folder that holds the extracted dataset ({layout})")
    return Path(root).expanduser().resolve()


def _holdout(indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split `indices` into (kept, held out), stratified by label so every class is validated."""
    kept, held = train_test_split(indices, test_size=round(fraction * len(indices)), stratify=labels[indices],
                                  random_state=seed)
    return np.sort(kept), np.sort(held)


def _with_holdout(train: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray], n_classes: int,
                  stats: tuple[Stats, Stats], transforms: tuple[Callable[..., Transform], Callable[..., Transform]],
                  val_fraction: float, resolution: int, seed: int) -> _Parts:
    """A dataset with its own (images, labels) test set: validation is held out of train.
    `transforms` are the (eval, train) factories, called with (mean, std, resolution)."""
    (mean, std), (make_eval, make_train) = stats, transforms
    eval_factory = partial(make_eval, mean, std)
    train_idx, val_idx = _holdout(np.arange(len(train[1])), train[1], val_fraction, seed)
    return _Parts(ImageSet(*train, eval_factory, resolution), train_idx, val_idx,
                  ImageSet(*test, eval_factory, resolution), partial(make_train, mean, std), n_classes, mean, std)


def _channel_stats(images: np.ndarray) -> tuple[Stats, Stats]:
    """Per-channel mean and std of uint8 images scaled to [0, 1]."""
    scaled = images.reshape(-1, 3) / 255.0
    mean, std = scaled.mean(axis=0), scaled.std(axis=0)
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def _finish(mean: Stats, std: Stats) -> list[Any]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std), v2.ToPureTensor()]


def _resize_eval(mean: Stats, std: Stats, r: int) -> Transform:
    return v2.Compose([v2.Resize((r, r)), *_finish(mean, std)])


def _flip_train(mean: Stats, std: Stats, r: int) -> Transform:
    return v2.Compose([v2.RandomHorizontalFlip(), v2.Resize((r, r)), *_finish(mean, std)])


def _cifar_train(mean: Stats, std: Stats, r: int) -> Transform:
    return v2.Compose([v2.RandomHorizontalFlip(), v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10), v2.Resize((r, r)),
                       *_finish(mean, std)])


def _digits_train(mean: Stats, std: Stats, r: int) -> Transform:
    """Resize and shift only: digits are not mirror-symmetric, so no flip."""
    return v2.Compose([v2.Resize((r, r)), v2.RandomAffine(degrees=0, translate=(0.1, 0.1)), *_finish(mean, std)])


def _tiny_train(mean: Stats, std: Stats, r: int) -> Transform:
    return v2.Compose([v2.RandomResizedCrop(r, scale=(0.85, 1.0)), v2.RandomHorizontalFlip(), *_finish(mean, std)])


def _tiny_eval(mean: Stats, std: Stats, r: int) -> Transform:
    return v2.Compose([v2.Resize(int(r / TINY_EVAL_CROP)), v2.CenterCrop(r), *_finish(mean, std)])


def _digits(resolution: int, seed: int) -> _Parts:
    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.repeat(grey[..., None], 3, axis=-1)
    labels = digits.target.astype(np.int64)
    rest, test_idx = _holdout(np.arange(len(labels)), labels, DIGITS_TEST_FRACTION, seed)
    train_idx, val_idx = _holdout(rest, labels, DIGITS_VAL_FRACTION, seed)
    mean, std = _channel_stats(images[train_idx])
    pool = ImageSet(images, labels, partial(_resize_eval, mean, std), resolution)
    return _Parts(pool, train_idx, val_idx, pool.subset(test_idx), partial(_digits_train, mean, std),
                  len(digits.target_names), mean, std)


def _synthetic(resolution: int, seed: int, *, n_classes: int = 10, size: int = 16, n_train: int = 200,
               n_val: int = 50, n_test: int = 50) -> _Parts:
    """Per-class mirror-symmetric pixel patterns plus noise: learnable, and flips keep the label."""
    _require_positive(n_classes=n_classes, size=size, n_train=n_train, n_val=n_val, n_test=n_test)
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(0, 255, (n_classes, size, size, 3))
    patterns = (patterns + patterns[:, :, ::-1]) / 2

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % n_classes)
        noisy = patterns[labels] + rng.normal(0, 40, (n, size, size, 3))
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8), labels

    pool_images, pool_labels = draw(n_train + n_val)
    test_images, test_labels = draw(n_test)
    mean, std = _channel_stats(pool_images[:n_train])
    eval_factory = partial(_resize_eval, mean, std)
    return _Parts(ImageSet(pool_images, pool_labels, eval_factory, resolution), np.arange(n_train),
                  np.arange(n_train, n_train + n_val), ImageSet(test_images, test_labels, eval_factory, resolution),
                  partial(_flip_train, mean, std), n_classes, mean, std)


class _ExistenceCheck:
    """torchvision's md5 check, which accepts only the official archives (not the small files the tests
    write in the same format), replaced by a check that the files exist; `_cifar` checked the layout."""

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)


class _CIFAR10(_ExistenceCheck, CIFAR10):
    meta = {**CIFAR10.meta, "md5": None}


class _CIFAR100(_ExistenceCheck, CIFAR100):
    meta = {**CIFAR100.meta, "md5": None}


class _CifarInfo(NamedTuple):
    title: str
    dataset: type[CIFAR10]
    labels: str
    mean: Stats
    std: Stats
    layout: str


_CIFAR = {
    "cifar10": _CifarInfo("CIFAR-10", _CIFAR10, "labels", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                          "expected cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta (python "
                          "pickle format of the official cifar-10-python.tar.gz, extracted)"),
    "cifar100": _CifarInfo("CIFAR-100", _CIFAR100, "fine_labels", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                           "expected cifar-100-python/ with train, test and meta (python pickle format of the "
                           "official cifar-100-python.tar.gz, extracted)"),
}


def _cifar(name: str, root: Path, resolution: int, seed: int) -> _Parts:
    info = _CIFAR[name]
    folder = root / info.dataset.base_folder
    files = [entry[0] for entry in info.dataset.train_list + info.dataset.test_list] + [info.dataset.meta["filename"]]
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise DatasetError(f"{info.title} not found at {folder}: missing {', '.join(missing)}; {info.layout}")
    try:
        train, test = info.dataset(str(root), train=True), info.dataset(str(root), train=False)
        problem = None if len(train.data) == len(train.targets) and len(test.data) == len(test.targets) else \
            "image and label counts differ"
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, AttributeError, ImportError,
            IndexError) as err:
        problem = repr(err)
    if problem is not None:
        for file in files[:-1]:
            _check_cifar_batch(folder / file, info)
        raise DatasetError(f"{info.title} at {folder} is malformed ({problem}); {info.layout}")
    n_classes = len(train.classes)
    train_labels, test_labels = np.asarray(train.targets), np.asarray(test.targets)
    for labels in (train_labels, test_labels):
        if labels.min() < 0 or labels.max() >= n_classes:
            raise DatasetError(f"{info.title} at {folder} is malformed: labels outside 0..{n_classes - 1}; "
                               f"{info.layout}")
    return _with_holdout((train.data, train_labels), (test.data, test_labels), n_classes, (info.mean, info.std),
                         (_resize_eval, _cifar_train), CIFAR_VAL_FRACTION, resolution, seed)


def _check_cifar_batch(path: Path, info: _CifarInfo) -> None:
    """DatasetError naming `path` if it is not one batch of `info`'s pickle format."""
    try:
        with path.open("rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as err:
        raise DatasetError(f"{info.title} file {path} is not a CIFAR pickle ({err}); {info.layout}") from None
    missing = [key for key in ("data", info.labels) if not isinstance(entry, dict) or key not in entry]
    if missing:
        raise DatasetError(f"{info.title} file {path} lacks {' and '.join(map(repr, missing))}; {info.layout}")
    if len(entry["data"]) != len(entry[info.labels]):
        raise DatasetError(f"{info.title} file {path} holds {len(entry['data'])} images but "
                           f"{len(entry[info.labels])} labels; {info.layout}")


def _tiny_root(root: Path) -> Path:
    """`root` itself, or the `tiny-imagenet-200` folder the official zip extracts to inside it."""
    nested = root / "tiny-imagenet-200"
    return nested if not (root / "wnids.txt").is_file() and (nested / "wnids.txt").is_file() else root


def _tiny_error(path: Path, problem: str) -> DatasetError:
    return DatasetError(f"Tiny ImageNet {problem} at {path}; {TINY_LAYOUT}")


def _tiny_train_files(root: Path, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    paths: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        files = sorted(folder.glob("*.JPEG")) if folder.is_dir() else []
        if not files:
            raise _tiny_error(folder, "training images not found")
        paths += [str(file) for file in files]
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def _tiny_val_files(root: Path, wnids: list[str]) -> tuple[list[str], np.ndarray]:
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _tiny_error(annotations, "validation annotations not found")
    class_of = {wnid: label for label, wnid in enumerate(wnids)}
    paths: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in class_of:
            raise _tiny_error(annotations, f"line {number} names no wnid of wnids.txt ({line!r})")
        image = root / "val" / "images" / fields[0]
        if not image.is_file():
            raise _tiny_error(image, f"image of annotation line {number} not found")
        paths.append(str(image))
        labels.append(class_of[fields[1]])
    if not paths:
        raise _tiny_error(annotations, "validation annotations are empty")
    return paths, np.asarray(labels, dtype=np.int64)


def _tinyimagenet(root: Path, resolution: int, seed: int) -> _Parts:
    root = _tiny_root(root)
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise _tiny_error(wnids_file, "class list not found")
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    if not wnids:
        raise _tiny_error(wnids_file, "class list is empty")
    return _with_holdout(_tiny_train_files(root, wnids), _tiny_val_files(root, wnids), len(wnids), TINY_STATS,
                         (_tiny_eval, _tiny_train), TINY_VAL_FRACTION, resolution, seed)


def _folder_files(folder: Path, classes: list[str] | None) -> tuple[list[str], np.ndarray, list[str]]:
    """Image paths and labels of `folder`/<class>/*, classes sorted (or the given ones)."""
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} not found; {FOLDER_LAYOUT}")
    try:
        found, to_index = find_classes(str(folder))
        samples = make_dataset(str(folder), to_index, extensions=IMG_EXTENSIONS)
    except (FileNotFoundError, OSError) as err:
        raise DatasetError(f"image folder {folder}: {err}; {FOLDER_LAYOUT}") from None
    if classes is not None and found != classes:
        raise DatasetError(f"{folder} has classes {found[:5]}...; expected the class folders of train/: "
                           f"{classes[:5]}... ({len(classes)} in all)")
    return [path for path, _ in samples], np.asarray([label for _, label in samples], dtype=np.int64), found


def _imagefolder(root: Path, resolution: int, seed: int) -> _Parts:
    """A user's own images; normalised with ImageNet statistics, augmented like Tiny ImageNet."""
    train_paths, train_labels, classes = _folder_files(root / "train", None)
    test_paths, test_labels, _ = _folder_files(root / "test", classes)
    return _with_holdout((train_paths, train_labels), (test_paths, test_labels), len(classes), IMAGENET_STATS,
                         (_tiny_eval, _tiny_train), TINY_VAL_FRACTION, resolution, seed)
