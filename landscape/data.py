"""Datasets resident on the device as tensors, and seeded on-device augmentation.

Every dataset is loaded once into two :class:`Split` objects whose ``x`` is float32,
normalized and already on the target device, so training and landscape evaluation are
plain tensor indexing (``split.x[idx]``) with no DataLoader and no per-sample Python.

* ``mnist1d`` (the default) is generated offline with ``mnist1d.data.make_dataset`` and
  cached as ``.npz`` under ``platformdirs.user_cache_dir("landscape")/mnist1d/`` (or
  ``$LANDSCAPE_CACHE_DIR/mnist1d/``). It never downloads anything.
* ``cifar10``, ``cifar100``, ``svhn``, ``mnist`` and ``fashion-mnist`` are read by
  ``torchvision.datasets`` from ``data_dir`` with ``download=False``.
* ``package.module:factory`` is your own data: ``factory(**options)`` returns ``(train,
  test)``, each ``(x, y)`` tensors (or arrays) or a ``torch.utils.data.Dataset`` /
  ``DataLoader`` of ``(x, y)`` items. It is imported only when you name it, and the data
  are taken as they are: never normalised, reshaped or augmented (:func:`as_dataset`, which
  notebooks call directly with their own tensors or loaders).

Randomness (augmentation offsets and flips, epoch shuffles, subsets) is always drawn from
CPU ``torch.Generator`` objects, so results are identical on every device and the
generator state is trivial to save for resume.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.metadata
import inspect
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from landscape.errors import UserError
from landscape.factories import import_factory, is_user_factory

__all__ = [
    "AUGMENTATIONS",
    "DATASET_NAMES",
    "Dataset",
    "Split",
    "as_dataset",
    "augment",
    "batch_indices",
    "load_dataset",
    "noisy_labels",
]

DATASET_NAMES: list[str] = ["mnist1d", "cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"]
AUGMENTATIONS: tuple[str, ...] = ("none", "crop", "crop+flip")
CROP_PADDING = 4

# Bump when the cached mnist1d array layout changes; part of the cache key.
_MNIST1D_CACHE_VERSION = 1


# --------------------------------------------------------------------------- containers


@dataclass
class Split:
    """One split held as tensors: ``x`` (float32 normalized for the built-ins, as given for
    your own data), ``y`` int64 class indices, both on one device."""

    x: torch.Tensor  # (N, C, L) for 1-D signals, (N, C, H, W) for images; any shape for your data
    y: torch.Tensor  # (N,)

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"Split: x has {self.x.shape[0]} samples but y has {self.y.shape[0]}")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def device(self) -> torch.device:
        return self.x.device

    def to(self, device: Any) -> Split:
        dev = _as_device(device)
        return Split(self.x.to(dev), self.y.to(dev))

    def subset(self, n: int, seed: int) -> Split:
        """A fixed subset of ``n`` samples: ``randperm(len, Generator(seed))[:n]``, sorted.

        The same (n, seed) always selects the same samples, on any device.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
            raise UserError(f"subset size must be an integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise UserError(f"subset seed must be an integer, got {seed!r}")
        n = int(n)
        if n < 1 or n > len(self):
            raise UserError(f"subset size must be between 1 and {len(self)} (the split's size), got {n}")
        gen = torch.Generator().manual_seed(int(seed))
        idx = torch.randperm(len(self), generator=gen)[:n].sort().values.to(self.x.device)
        return Split(self.x[idx], self.y[idx])


@dataclass
class Dataset:
    """A loaded dataset. ``spec`` (plus ``data_dir``/``device``) reproduces it via ``load_dataset(**spec)``."""

    name: str
    train: Split
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]  # per-sample shape, e.g. (1, 40) or (3, 32, 32)
    augmentation: str  # "none" | "crop" | "crop+flip"
    spec: dict  # {"name": ..., **options}; JSON-able; stored in checkpoints
    # Per-channel statistics used to normalize x = (raw - mean) / std, in raw units
    # (pixel/255 for images, the generator's units for mnist1d). Undo with x * std + mean.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    # False when num_classes was inferred from the labels (your own data): a model may then
    # have more outputs than the largest label needs.
    exact_classes: bool = True

    @property
    def device(self) -> torch.device:
        return self.train.x.device

    def to(self, device: Any) -> Dataset:
        dev = _as_device(device)
        return dataclasses.replace(self, train=self.train.to(dev), test=self.test.to(dev))


# --------------------------------------------------------------------------- public loader


def load_dataset(
    name: str = "mnist1d",
    data_dir: str | Path | None = None,
    device: Any = "cpu",
    **options: Any,
) -> Dataset:
    """Load a dataset by name onto ``device``.

    Options: ``mnist1d`` takes ``num_train`` (4000), ``num_test`` (1000), ``seed`` (42),
    ``label_noise`` (0: a fraction of the *train* labels replaced by another class, see
    :func:`noisy_labels`) and ``augment`` ("none" only). The image datasets take ``augment`` (None = the dataset's
    default: "crop+flip" for CIFAR, "crop" for SVHN, "none" for MNIST/Fashion-MNIST).
    ``data_dir`` is required for the image datasets and ignored by mnist1d.
    """
    dev = _as_device(device)
    if is_user_factory(name):
        return _load_user_data(name, dev, **options)
    canonical = _canonical_name(name)
    if canonical == "mnist1d":
        return _load_mnist1d(dev, **options)
    return _load_image_dataset(canonical, data_dir, dev, **options)


def _canonical_name(name: Any) -> str:
    if not isinstance(name, str):
        raise UserError(f"dataset name must be a string, got {name!r}")
    key = name.strip().lower().replace("_", "-")
    aliases = {"fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
               "cifar-100": "cifar100", "mnist-1d": "mnist1d"}
    key = aliases.get(key, key)
    if key not in DATASET_NAMES:
        close = difflib.get_close_matches(key, DATASET_NAMES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UserError(f"unknown dataset {name!r}{hint}; choose one of: {', '.join(DATASET_NAMES)}, "
                        "or your own package.module:factory")
    return key


def _as_device(device: Any) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {device!r}; use e.g. 'cpu', 'cuda' or 'cuda:0'") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(dev)!r} requested but CUDA is not available on this machine")
    return dev


def _check_options(dataset: str, options: dict, allowed: dict) -> dict:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for dataset "
            f"{dataset!r}; valid options: {', '.join(allowed) if allowed else '(none)'}"
        )
    return {**allowed, **options}


def _int_option(dataset: str, key: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"option {key} for {dataset} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise UserError(f"option {key} for {dataset} must be {bound}, got {value}")
    return value


def _augment_option(dataset: str, value: Any, default: str, allowed: tuple[str, ...] = AUGMENTATIONS) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        if allowed == ("none",):
            raise UserError(f"{dataset} supports only augment='none' (crop and flip need images), got {value!r}")
        raise UserError(f"option augment for {dataset} must be one of {', '.join(allowed)}, got {value!r}")
    return value


# --------------------------------------------------------------------------- mnist1d


def cache_root() -> Path:
    """Cache root: ``$LANDSCAPE_CACHE_DIR`` if set, else ``platformdirs.user_cache_dir("landscape")``."""
    env = os.environ.get("LANDSCAPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("landscape"))


def _mnist1d_version() -> str:
    try:
        return importlib.metadata.version("mnist1d")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def mnist1d_cache_path(num_train: int, num_test: int, seed: int) -> Path:
    key = f"train{num_train}-test{num_test}-seed{seed}-mnist1d{_mnist1d_version()}-v{_MNIST1D_CACHE_VERSION}"
    return cache_root() / "mnist1d" / f"{key}.npz"


def _generate_mnist1d(num_train: int, num_test: int, seed: int) -> dict[str, np.ndarray]:
    """Generate mnist1d with the package's default args (never its download path).

    ``make_dataset`` draws ``num_samples // 10`` samples per class, shuffles and then cuts
    at ``int(num_samples * train_split)``. We ask for ``num_train + num_test`` rounded up
    to a multiple of 10 and cut ourselves (exact, no float rounding): for the defaults
    (4000 + 1000, seed 42) this is exactly mnist1d's standard 4000/1000 split. It seeds
    numpy's and Python's *global* RNGs; we restore both afterwards.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise UserError(f"the mnist1d package is needed to generate mnist1d ({exc}); pip install mnist1d") from None

    total = num_train + num_test
    args = get_dataset_args()
    args.num_samples = -(-total // 10) * 10
    args.train_split = 1.0
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        raw = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    xs = np.asarray(raw["x"], dtype=np.float32)
    ys = np.asarray(raw["y"], dtype=np.int64)
    return {
        "x_train": xs[:num_train], "y_train": ys[:num_train],
        "x_test": xs[num_train:total], "y_test": ys[num_train:total],
    }


def _read_mnist1d_cache(path: Path, num_train: int, num_test: int) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except FileNotFoundError:
        return None
    except Exception as exc:  # corrupt / truncated / foreign file: regenerate
        warnings.warn(f"ignoring unreadable mnist1d cache {path} ({exc}); regenerating", stacklevel=3)
        return None
    if arrays["x_train"].shape != (num_train, 40) or arrays["x_test"].shape != (num_test, 40):
        warnings.warn(f"ignoring mnist1d cache {path} with unexpected shapes; regenerating", stacklevel=3)
        return None
    return arrays


def _write_atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        warnings.warn(f"cannot write mnist1d cache in {path.parent} ({exc}); continuing without cache", stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            warnings.warn(f"cannot write mnist1d cache {path} ({exc}); continuing without cache", stacklevel=3)
            return
        raise


_LABEL_NOISE_SALT = 0x1ABE1  # the noise draw is its own stream, apart from the data generator's


def noisy_labels(y: np.ndarray, fraction: float, seed: int, num_classes: int) -> np.ndarray:
    """``y`` with exactly ``round(fraction * len(y))`` labels replaced by a *different* class.

    Which labels and their new classes come from a numpy generator seeded by the data seed
    alone, so a noisy split is the same in every run, analysis and process that loads it
    (the train loss the analyses measure is the one training saw). Test labels are never
    touched: flat-minima methods are claimed to resist label noise, so the noise must be
    in the data they fit and not in the data they are scored on.
    """
    rng = np.random.default_rng([seed, _LABEL_NOISE_SALT])
    y = np.asarray(y, dtype=np.int64).copy()
    flip = rng.permutation(len(y))[: int(round(fraction * len(y)))]
    # A shift by 1..C-1 (mod C) is a uniformly drawn class other than the true one.
    y[flip] = (y[flip] + rng.integers(1, num_classes, size=len(flip))) % num_classes
    return y


def _load_mnist1d(device: torch.device, **options: Any) -> Dataset:
    opts = _check_options("mnist1d", options, {"num_train": 4000, "num_test": 1000, "seed": 42, "label_noise": 0,
                                               "augment": None})
    num_train = _int_option("mnist1d", "num_train", opts["num_train"], 1)
    num_test = _int_option("mnist1d", "num_test", opts["num_test"], 1)
    seed = _int_option("mnist1d", "seed", opts["seed"], 0, 2**32 - 1)
    noise = opts["label_noise"]
    if isinstance(noise, bool) or not isinstance(noise, (int, float, np.integer, np.floating)) \
            or not 0 <= float(noise) < 1:
        raise UserError(f"option label_noise for mnist1d must be a fraction in [0, 1), got {noise!r}")
    noise = float(noise)
    aug = _augment_option("mnist1d", opts["augment"], "none", allowed=("none",))

    path = mnist1d_cache_path(num_train, num_test, seed)
    arrays = _read_mnist1d_cache(path, num_train, num_test)
    if arrays is None:
        arrays = _generate_mnist1d(num_train, num_test, seed)
        _write_atomic_npz(path, arrays)

    x_train = arrays["x_train"].astype(np.float64)
    mean = float(x_train.mean())
    std = float(x_train.std()) or 1.0

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        xs = ((x.astype(np.float64) - mean) / std).astype(np.float32)[:, None, :]  # (N, 1, 40)
        return Split(torch.from_numpy(xs).to(device), torch.from_numpy(y.astype(np.int64)).to(device))

    y_train = noisy_labels(arrays["y_train"], noise, seed, 10) if noise else arrays["y_train"]
    train = split(arrays["x_train"], y_train)
    test = split(arrays["x_test"], arrays["y_test"])
    spec = {"name": "mnist1d", "num_train": num_train, "num_test": num_test, "seed": seed, "augment": aug}
    if noise:  # only when used, so the spec of every clean run stays what it always was
        spec["label_noise"] = noise
    return Dataset("mnist1d", train, test, 10, tuple(train.x.shape[1:]), aug, spec, (mean,), (std,))


# --------------------------------------------------------------------------- torchvision images


@dataclass(frozen=True)
class _ImageInfo:
    display: str
    cls: str  # torchvision.datasets class name
    num_classes: int
    augment: str  # default augmentation
    folder: str  # sub-folder of data_dir torchvision reads from ("" = data_dir itself)
    files: tuple[str, ...]  # files torchvision needs, relative to data_dir/folder
    download: str  # how to get it, with {root} for the directory


_MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_IMAGES: dict[str, _ImageInfo] = {
    "cifar10": _ImageInfo(
        "CIFAR-10", "CIFAR10", 10, "crop+flip", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
        "torchvision.datasets.CIFAR10({root!r}, download=True)"),
    "cifar100": _ImageInfo(
        "CIFAR-100", "CIFAR100", 100, "crop+flip", "cifar-100-python", ("train", "test", "meta"),
        "torchvision.datasets.CIFAR100({root!r}, download=True)"),
    "svhn": _ImageInfo(
        "SVHN", "SVHN", 10, "crop", "", ("train_32x32.mat", "test_32x32.mat"),
        "torchvision.datasets.SVHN({root!r}, split='train', download=True) and split='test'"),
    "mnist": _ImageInfo(
        "MNIST", "MNIST", 10, "none", os.path.join("MNIST", "raw"), _MNIST_RAW,
        "torchvision.datasets.MNIST({root!r}, download=True)"),
    "fashion-mnist": _ImageInfo(
        "Fashion-MNIST", "FashionMNIST", 10, "none", os.path.join("FashionMNIST", "raw"), _MNIST_RAW,
        "torchvision.datasets.FashionMNIST({root!r}, download=True)"),
}


def _image_error(info: _ImageInfo, root: Path, problem: str, detail: str = "") -> UserError:
    where = root / info.folder if info.folder else root
    if info.folder:
        expected = f"{where} with {', '.join(info.files)}"
    else:
        expected = ", ".join(str(where / f) for f in info.files)
    hint = ""
    top = info.folder.split(os.sep)[0] if info.folder else ""
    if top and (root.name == top or (root / info.files[0]).is_file()):
        hint = f"; --data-dir must be the directory that contains {top}, not {top} itself"
    how = info.download.format(root=str(root))
    return UserError(
        f"{info.display} {problem} in {root}{': ' + detail if detail else ''} (expected {expected}){hint}; "
        f"download it with {how} (on a machine with internet if this one has none, "
        f"then copy the files into {root})"
    )


def _read_torchvision(info: _ImageInfo, root: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read both splits through torchvision: uint8 (N, C, H, W) images and int64 labels."""
    if not root.is_dir():
        raise _image_error(info, root, "not found", "the directory does not exist")
    base = root / info.folder if info.folder else root
    missing = [f for f in info.files if not (base / f).is_file()]
    legacy_mnist = info.cls in ("MNIST", "FashionMNIST") and all(
        (root / info.cls / "processed" / f).is_file() for f in ("training.pt", "test.pt")
    )
    if missing and not legacy_mnist:
        raise _image_error(info, root, "not found", f"missing {base / missing[0]}")

    import torchvision.datasets as tvd

    cls = getattr(tvd, info.cls)
    out = []
    for train in (True, False):
        kwargs = {"split": "train" if train else "test"} if info.cls == "SVHN" else {"train": train}
        try:
            ds = cls(str(root), download=False, **kwargs)
        except RuntimeError as exc:
            if "corrupted" in str(exc) or "not found" in str(exc).lower():
                raise _image_error(info, root, "is corrupted or incomplete", "torchvision's md5 check failed") from None
            raise UserError(f"could not read {info.display} from {root}: {exc}") from None
        except Exception as exc:
            raise UserError(f"could not read {info.display} from {root}: {type(exc).__name__}: {exc}") from None
        if info.cls == "SVHN":
            x = np.ascontiguousarray(ds.data)  # (N, C, H, W) already
            y = np.asarray(ds.labels, dtype=np.int64).reshape(-1)  # torchvision maps 10 -> 0
        elif info.cls in ("CIFAR10", "CIFAR100"):
            x = np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2))  # NHWC -> NCHW
            y = np.asarray(ds.targets, dtype=np.int64).reshape(-1)
        else:  # MNIST-style: uint8 tensor (N, H, W)
            x = np.asarray(ds.data)[:, None, :, :]
            y = np.asarray(ds.targets, dtype=np.int64).reshape(-1)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] != y.shape[0]:
            raise UserError(f"{info.display} in {root} has unexpected contents: images {x.dtype} {x.shape}, "
                            f"{y.shape[0]} labels")
        if y.size and (y.min() < 0 or y.max() >= info.num_classes):
            raise UserError(f"{info.display} in {root} has labels outside 0..{info.num_classes - 1}")
        out += [x, y]
    return out[0], out[1], out[2], out[3]


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std (population) of uint8 images, in [0, 1] units, via histograms."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        total = counts.sum()
        m = float((counts * values).sum() / total)
        var = float((counts * (values - m) ** 2).sum() / total)
        means.append(m / 255.0)
        stds.append((var ** 0.5) / 255.0 or 1.0)
    return tuple(means), tuple(stds)


def _to_float(x_u8: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Move uint8 (4x smaller), then convert and normalize in place on the device.
    x = x_u8.to(device).to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _load_image_dataset(name: str, data_dir: str | Path | None, device: torch.device, **options: Any) -> Dataset:
    info = _IMAGES[name]
    opts = _check_options(name, options, {"augment": None})
    aug = _augment_option(name, opts["augment"], info.augment)
    if data_dir is None or (isinstance(data_dir, str) and not data_dir.strip()):
        raise UserError(
            f"{name} is read from disk: pass --data-dir (data_dir=...) pointing at the directory that holds "
            f"{info.folder or ', '.join(info.files)}"
        )
    root = Path(data_dir).expanduser()
    xtr, ytr, xte, yte = _read_torchvision(info, root)
    xtr_t, xte_t = torch.from_numpy(xtr), torch.from_numpy(xte)
    mean, std = _channel_stats(xtr_t)
    train = Split(_to_float(xtr_t, mean, std, device), torch.from_numpy(ytr).to(device))
    test = Split(_to_float(xte_t, mean, std, device), torch.from_numpy(yte).to(device))
    spec = {"name": name, "augment": aug}
    return Dataset(name, train, test, info.num_classes, tuple(train.x.shape[1:]), aug, spec, mean, std)


# --------------------------------------------------------------------------- your own data


def _load_user_data(name: str, device: torch.device, **options: Any) -> Dataset:
    factory = import_factory(name, "dataset")
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise UserError(f"bad options for dataset {name!r}: {exc}") from None
    except ValueError:  # no signature to check (some builtins): let the call decide
        pass
    splits = factory(**options)
    if not isinstance(splits, (tuple, list)) or len(splits) != 2:
        raise UserError(f"dataset factory {name!r} returned {type(splits).__name__}; it must return (train, test), "
                        "each (x, y) tensors or a Dataset of (x, y) items")
    spec = {"name": name, **options}
    return as_dataset(splits[0], splits[1], name=name, device=device, spec=spec)


def as_dataset(train: Any, test: Any, *, name: str = "user data", num_classes: int | None = None,
               device: Any = "cpu", spec: dict | None = None) -> Dataset:
    """Your own data as a device-resident :class:`Dataset`, taken as it is (no normalisation,
    reshaping or augmentation; floating inputs are held in float32, the precision points are
    evaluated in, and integer inputs such as token ids stay integers).

    ``train`` and ``test`` are each ``(x, y)`` (tensors or numpy arrays), a
    ``torch.utils.data.Dataset`` of ``(x, y)`` items or a ``DataLoader`` yielding ``(x, y)``
    batches (read once, in its order: a shuffling or augmenting loader gives one fixed draw).
    ``y`` holds integer class indices; ``num_classes`` defaults to the largest label + 1.
    """
    dev = _as_device(device)
    splits = {}
    for which, value in (("train", train), ("test", test)):
        splits[which] = _as_split(value, f"{name} {which}").to(dev)
    labels = int(max(int(s.y.max()) for s in splits.values())) + 1
    given = num_classes is not None
    if num_classes is None:
        num_classes = labels
    elif labels > num_classes:
        raise UserError(f"{name}: labels go up to {labels - 1}, more than num_classes={num_classes} allows")
    if splits["train"].x.shape[1:] != splits["test"].x.shape[1:]:
        raise UserError(f"{name}: train samples have shape {tuple(splits['train'].x.shape[1:])}, test samples "
                        f"{tuple(splits['test'].x.shape[1:])}")
    if spec is None:  # data handed over in Python: its digest identifies it in result files
        spec = {"name": name, "sha256": _digest(splits["train"], splits["test"])}
    return Dataset(name, splits["train"], splits["test"], int(num_classes), tuple(splits["train"].x.shape[1:]),
                   "none", dict(spec), exact_classes=given)


def _digest(*splits: Split) -> str:
    digest = hashlib.sha256()
    for split in splits:
        for t in (split.x, split.y):
            t = t.detach().to("cpu").contiguous()
            digest.update(f"{t.dtype}:{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _as_split(value: Any, what: str) -> Split:
    if isinstance(value, Split):
        x, y = value.x, value.y
    elif isinstance(value, (tuple, list)) and len(value) == 2 and not isinstance(value[0], (tuple, list)):
        x, y = (_tensor(v, what) for v in value)
    elif isinstance(value, (torch.utils.data.Dataset, torch.utils.data.DataLoader)):
        x, y = _collect(value, what)
    else:
        raise UserError(f"{what}: expected (x, y) tensors, a torch Dataset of (x, y) items or a DataLoader, "
                        f"got {type(value).__name__}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or y.is_complex():
        raise UserError(f"{what}: labels must be a 1-D tensor of integer class indices (landscape scores "
                        f"cross-entropy), got {y.dtype} of shape {tuple(y.shape)}")
    if len(y) == 0:
        raise UserError(f"{what} is empty")
    if len(x) != len(y):
        raise UserError(f"{what}: {len(x)} inputs but {len(y)} labels")
    if x.is_floating_point() and x.dtype != torch.float32:
        x = x.float()  # the precision every point is evaluated in; values are not changed otherwise
    if int(y.min()) < 0:
        raise UserError(f"{what}: negative labels ({int(y.min())}); labels are class indices 0..C-1")
    return Split(x, y.to(torch.int64))


def _tensor(value: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{what}: cannot make a tensor of {type(value).__name__} ({exc})") from None


def _collect(source: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x, y) of a Dataset (batched by the default collate) or a DataLoader, concatenated."""
    loader = source if isinstance(source, torch.utils.data.DataLoader) else \
        torch.utils.data.DataLoader(source, batch_size=1024, shuffle=False, num_workers=0)
    xs, ys = [], []
    try:
        for batch in loader:
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise UserError(f"{what}: items must be (x, y) pairs, got {type(batch).__name__}"
                                + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
            xs.append(_tensor(batch[0], what))
            ys.append(_tensor(batch[1], what).reshape(-1))
    except UserError:
        raise
    except Exception as exc:  # collate errors on PIL images, strings, ragged shapes
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what}: cannot read its (x, y) items as tensors ({first[:200]}); return tensors, "
                        "e.g. with transforms.ToTensor()") from None
    if not xs:
        raise UserError(f"{what} is empty")
    try:
        return torch.cat(xs), torch.cat(ys)
    except RuntimeError as exc:
        raise UserError(f"{what}: samples of different shapes ({exc})") from None


# --------------------------------------------------------------------------- augmentation & batching


def _check_generator(generator: Any) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"expected a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError("use a CPU torch.Generator (results then match across devices); got one on "
                         f"{generator.device}")
    return generator


def augment(x: torch.Tensor, kind: str, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch on its own device, with randomness drawn from a CPU generator.

    ``"none"`` returns ``x`` itself and draws nothing. ``"crop"`` zero-pads each image by
    4 pixels and crops back to H x W at a per-sample offset (uniform in [0, 8]^2 of the
    padded image, i.e. a shift in [-4, 4]^2). ``"crop+flip"`` also flips each image
    horizontally with probability 0.5. Draw order: row offsets, column offsets, then flips
    (all ``(N,)`` tensors), so a given generator state always gives the same result.
    """
    if kind == "none":
        return x
    if kind not in AUGMENTATIONS:
        raise UserError(f"unknown augmentation {kind!r}; choose one of: {', '.join(AUGMENTATIONS)}")
    if x.ndim != 4:
        raise UserError(f"augmentation {kind!r} needs image batches (N, C, H, W), got shape {tuple(x.shape)}")
    gen = _check_generator(generator)
    n, c, h, w = x.shape
    p = CROP_PADDING
    dy = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * p + 1, (n,), generator=gen)
    rows = dy[:, None] + torch.arange(h)[None, :]  # (N, H) rows of the padded image
    cols = dx[:, None] + torch.arange(w)[None, :]  # (N, W)
    if kind == "crop+flip":
        flip = torch.rand(n, generator=gen) < 0.5
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows, cols = rows.to(x.device), cols.to(x.device)
    padded = F.pad(x, (p, p, p, p))  # (N, C, H+2p, W+2p), zeros
    out = padded.gather(2, rows[:, None, :, None].expand(n, c, h, w + 2 * p))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    shuffle: bool = True,
    drop_last: bool = False,
) -> list[torch.Tensor]:
    """One epoch of index batches (CPU int64), a random permutation when ``shuffle``.

    Use as ``split.x[idx]``. With ``drop_last`` a final batch smaller than ``batch_size``
    is dropped. Without ``shuffle`` the generator is not touched (and may be None).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
    n, batch_size = int(n), int(batch_size)
    if shuffle:
        order = torch.randperm(n, generator=_check_generator(generator))
    else:
        order = torch.arange(n)
    batches = list(order.split(batch_size))
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches.pop()
    return batches
