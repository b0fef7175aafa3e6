"""Tests for landscape.data: mnist1d generation + cache, torchvision formats, augmentation, batching."""

from __future__ import annotations

import hashlib
import json
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets as tvd

import landscape.data as data
from landscape.data import DATASET_NAMES, Split, augment, batch_indices, load_dataset
from landscape.errors import UserError

# --------------------------------------------------------------------------- helpers


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(d))
    return d


class _Py2Str(bytes):
    """A Python 2 ``str``: pickled with the (SHORT_)BINSTRING opcodes, as the real CIFAR files are."""


class _Py2Pickler(pickle._Pickler):
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2str(self, obj):
        raw = bytes(obj)
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


def _write_py2_pickle(path: Path, obj: dict) -> None:
    """Write a dict the way the CIFAR python-version files are: a protocol-2 pickle with py2 str keys."""
    conv = {_Py2Str(k.encode()): v for k, v in obj.items()}
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(conv)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _make_cifar10(root: Path, monkeypatch, per_batch=3, n_test=4, seed=0):
    """Tiny CIFAR-10 in the real layout; patches torchvision's expected md5s to the tiny files'."""
    rng = np.random.default_rng(seed)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        x = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, per_batch)]
        _write_py2_pickle(base / f"data_batch_{i}", {
            "batch_label": _Py2Str(f"training batch {i} of 5".encode()), "labels": y, "data": x,
            "filenames": [_Py2Str(f"img{i}_{j}.png".encode()) for j in range(per_batch)]})
        train_x.append(x)
        train_y += y
    test_x = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_y = [int(v) for v in rng.integers(0, 10, n_test)]
    _write_py2_pickle(base / "test_batch", {"batch_label": _Py2Str(b"testing batch 1 of 1"),
                                            "labels": test_y, "data": test_x, "filenames": []})
    names = [_Py2Str(n.encode()) for n in ("airplane", "automobile", "bird", "cat", "deer",
                                            "dog", "frog", "horse", "ship", "truck")]
    _write_py2_pickle(base / "batches.meta", {"num_cases_per_batch": per_batch, "label_names": names,
                                              "num_vis": 3072})
    if monkeypatch is not None:
        monkeypatch.setattr(tvd.CIFAR10, "train_list",
                            [[f"data_batch_{i}", _md5(base / f"data_batch_{i}")] for i in range(1, 6)])
        monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(base / "test_batch")]])
        monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": _md5(base / "batches.meta")})
    return np.concatenate(train_x), np.array(train_y), test_x, np.array(test_y)


# --------------------------------------------------------------------------- mnist1d


def test_mnist1d_shapes_dtypes_and_standardization(cache_dir):
    ds = load_dataset("mnist1d", num_train=300, num_test=120)
    assert ds.name == "mnist1d" and ds.num_classes == 10 and ds.augmentation == "none"
    assert ds.train.x.shape == (300, 1, 40) and ds.test.x.shape == (120, 1, 40)
    assert ds.input_shape == (1, 40)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.test.x.dtype == torch.float32 and ds.test.y.dtype == torch.int64
    assert len(ds.train) == 300 and len(ds.test) == 120
    assert ds.train.x.device.type == "cpu"
    assert abs(ds.train.x.mean().item()) < 1e-5
    assert abs(ds.train.x.std(unbiased=False).item() - 1) < 1e-5
    assert set(ds.train.y.tolist()) == set(range(10))
    assert ds.spec == {"name": "mnist1d", "num_train": 300, "num_test": 120, "seed": 42, "augment": "none"}
    assert json.loads(json.dumps(ds.spec)) == ds.spec
    # spec reproduces the dataset
    again = load_dataset(**ds.spec)
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.y, ds.test.y)
    # de-normalization stats are exposed
    assert len(ds.mean) == 1 and len(ds.std) == 1


def test_mnist1d_defaults_match_the_standard_split(cache_dir):
    """Defaults: 4000/1000, seed 42, exactly mnist1d's own make_dataset(get_dataset_args()) split."""
    from mnist1d.data import get_dataset_args, make_dataset

    ds = load_dataset()
    assert ds.name == "mnist1d" and len(ds.train) == 4000 and len(ds.test) == 1000
    assert ds.spec == {"name": "mnist1d", "num_train": 4000, "num_test": 1000, "seed": 42, "augment": "none"}
    ref = make_dataset(get_dataset_args())
    raw_train = ds.train.x[:, 0].double() * ds.std[0] + ds.mean[0]
    np.testing.assert_allclose(raw_train.numpy(), ref["x"], atol=1e-5)
    assert np.array_equal(ds.train.y.numpy(), ref["y"])
    assert np.array_equal(ds.test.y.numpy(), ref["y_test"])


def test_mnist1d_cache_written_then_read(cache_dir, monkeypatch):
    ds = load_dataset("mnist1d", num_train=100, num_test=50, seed=7)
    path = data.mnist1d_cache_path(100, 50, 7)
    assert path.is_file() and path.suffix == ".npz"
    assert path.parent == cache_dir / "mnist1d"
    assert not [p for p in path.parent.iterdir() if p.suffix == ".tmp"]  # temp file replaced

    def boom(*a, **k):
        raise AssertionError("regenerated although the cache exists")

    monkeypatch.setattr(data, "_generate_mnist1d", boom)
    again = load_dataset("mnist1d", num_train=100, num_test=50, seed=7)
    for a, b in ((ds.train.x, again.train.x), (ds.train.y, again.train.y),
                 (ds.test.x, again.test.x), (ds.test.y, again.test.y)):
        assert torch.equal(a, b)


def test_mnist1d_corrupt_cache_is_regenerated(cache_dir):
    ds = load_dataset("mnist1d", num_train=50, num_test=20)
    path = data.mnist1d_cache_path(50, 20, 42)
    path.write_bytes(b"not an npz")
    with pytest.warns(UserWarning, match="regenerating"):
        again = load_dataset("mnist1d", num_train=50, num_test=20)
    assert torch.equal(ds.train.x, again.train.x)
    np.load(path)  # rewritten as a valid file


def test_mnist1d_generation_deterministic_and_seed_dependent(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(tmp_path / "a"))
    a = load_dataset("mnist1d", num_train=100, num_test=30, seed=3)
    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(tmp_path / "b"))  # fresh cache: generated again
    b = load_dataset("mnist1d", num_train=100, num_test=30, seed=3)
    c = load_dataset("mnist1d", num_train=100, num_test=30, seed=4)
    assert (tmp_path / "a" / "mnist1d").is_dir() and (tmp_path / "b" / "mnist1d").is_dir()
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_mnist1d_sizes_not_multiple_of_ten(cache_dir):
    ds = load_dataset("mnist1d", num_train=33, num_test=7)
    assert len(ds.train) == 33 and len(ds.test) == 7


def test_mnist1d_leaves_global_rngs_alone(cache_dir):
    np.random.seed(123)
    random.seed(123)
    expect_np, expect_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    load_dataset("mnist1d", num_train=20, num_test=10, seed=5)
    assert np.random.rand() == expect_np and random.random() == expect_py


@pytest.mark.parametrize("options, match", [
    ({"num_train": 0}, "num_train"),
    ({"num_test": -1}, "num_test"),
    ({"num_train": "100"}, "integer"),
    ({"num_train": 1.5}, "integer"),
    ({"seed": -1}, "seed"),
    ({"augment": "crop"}, "augment"),
    ({"bogus": 1}, "bogus"),
])
def test_mnist1d_bad_options(cache_dir, options, match):
    with pytest.raises(UserError, match=match):
        load_dataset("mnist1d", **options)


def test_unknown_dataset_name():
    with pytest.raises(UserError, match="unknown dataset 'cifar11'.*cifar10"):
        load_dataset("cifar11")
    assert DATASET_NAMES[0] == "mnist1d" and "fashion-mnist" in DATASET_NAMES


def test_bad_device(cache_dir):
    with pytest.raises(UserError, match="device"):
        load_dataset("mnist1d", device="nonsense", num_train=10, num_test=10)


def test_dataset_to_device(cache_dir):
    ds = load_dataset("mnist1d", num_train=20, num_test=10)
    moved = ds.to("cpu")
    assert moved.train.x.device.type == "cpu" and moved.spec == ds.spec and moved.name == ds.name


# --------------------------------------------------------------------------- torchvision formats


def test_cifar10_real_format_round_trip(tmp_path, monkeypatch):
    tx, ty, vx, vy = _make_cifar10(tmp_path, monkeypatch)
    # the files really are in the CIFAR layout: b'data' / b'labels' keys when read as in the CIFAR docs
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (3, 3072) and b"labels" in raw

    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.num_classes == 10 and ds.augmentation == "crop+flip" and ds.input_shape == (3, 32, 32)
    assert ds.train.x.shape == (15, 3, 32, 32) and ds.test.x.shape == (4, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert ds.train.y.tolist() == ty.tolist() and ds.test.y.tolist() == vy.tolist()
    assert ds.spec == {"name": "cifar10", "augment": "crop+flip"}
    # per-channel stats computed from the train split
    chans = tx.reshape(-1, 3, 1024) / 255.0
    np.testing.assert_allclose(ds.mean, chans.mean(axis=(0, 2)), rtol=1e-9)
    np.testing.assert_allclose(ds.std, chans.std(axis=(0, 2)), rtol=1e-9)
    assert abs(ds.train.x.mean(dim=(0, 2, 3))).max() < 1e-4
    # a known pixel round-trips: row n of the file holds R(1024) G(1024) B(1024), each row-major 32x32
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    restored = torch.round((ds.train.x.double() * std + mean) * 255).to(torch.uint8)
    n, c, h, w = 7, 2, 5, 30
    assert restored[n, c, h, w].item() == tx[n, c * 1024 + h * 32 + w]
    assert torch.equal(restored, torch.from_numpy(tx.reshape(-1, 3, 32, 32)))
    restored_test = torch.round((ds.test.x.double() * std + mean) * 255).to(torch.uint8)
    assert torch.equal(restored_test, torch.from_numpy(vx.reshape(-1, 3, 32, 32)))


def test_cifar10_augment_override_and_bad_value(tmp_path, monkeypatch):
    _make_cifar10(tmp_path, monkeypatch)
    ds = load_dataset("cifar10", data_dir=str(tmp_path), augment="none")
    assert ds.augmentation == "none" and ds.spec["augment"] == "none"
    with pytest.raises(UserError, match="augment"):
        load_dataset("cifar10", data_dir=tmp_path, augment="rotate")
    with pytest.raises(UserError, match="num_train"):
        load_dataset("cifar10", data_dir=tmp_path, num_train=10)


def test_cifar10_corrupted_file(tmp_path, monkeypatch):
    _make_cifar10(tmp_path, monkeypatch=None)  # real md5s expected: the tiny files fail the check
    with pytest.raises(UserError, match="corrupted"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar100_real_format(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    base.mkdir()
    tx = rng.integers(0, 256, (6, 3072), dtype=np.uint8)
    ty = [0, 99, 42, 7, 99, 1]
    vx = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
    vy = [98, 3]
    for fname, x, y in (("train", tx, ty), ("test", vx, vy)):
        _write_py2_pickle(base / fname, {"filenames": [], "batch_label": _Py2Str(b"x"), "fine_labels": y,
                                         "coarse_labels": [v // 5 for v in y], "data": x})
    _write_py2_pickle(base / "meta", {"fine_label_names": [_Py2Str(f"c{i}".encode()) for i in range(100)],
                                      "coarse_label_names": [_Py2Str(f"s{i}".encode()) for i in range(20)]})
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", _md5(base / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", _md5(base / "test")]])
    monkeypatch.setattr(tvd.CIFAR100, "meta", {**tvd.CIFAR100.meta, "md5": _md5(base / "meta")})

    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.augmentation == "crop+flip"
    assert ds.train.y.tolist() == ty and ds.test.y.tolist() == vy
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    restored = torch.round((ds.test.x.double() * std + mean) * 255).to(torch.uint8)
    assert restored[1, 1, 31, 0].item() == vx[1, 1024 + 31 * 32 + 0]
    assert torch.equal(restored, torch.from_numpy(vx.reshape(-1, 3, 32, 32)))


def test_svhn_real_format(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    arrays = {}
    for split, n in (("train", 5), ("test", 3)):
        X = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as in the .mat files
        y = np.array([[10], [1], [9], [10], [5]][:n], dtype=np.uint8)  # 10 means digit 0
        path = tmp_path / f"{split}_32x32.mat"
        scipy.io.savemat(path, {"X": X, "y": y})
        url, fname, _ = tvd.SVHN.split_list[split]
        monkeypatch.setitem(tvd.SVHN.split_list, split, [url, fname, _md5(path)])
        arrays[split] = (X, y)

    ds = load_dataset("svhn", data_dir=tmp_path)
    assert ds.num_classes == 10 and ds.augmentation == "crop" and ds.input_shape == (3, 32, 32)
    assert ds.train.y.tolist() == [0, 1, 9, 0, 5] and ds.test.y.tolist() == [0, 1, 9]
    mean = torch.tensor(ds.mean).view(1, 3, 1, 1)
    std = torch.tensor(ds.std).view(1, 3, 1, 1)
    restored = torch.round((ds.train.x.double() * std + mean) * 255).to(torch.uint8)
    X = arrays["train"][0]
    n, c, h, w = 3, 1, 4, 20
    assert restored[n, c, h, w].item() == X[h, w, c, n]
    assert torch.equal(restored, torch.from_numpy(X.transpose(3, 2, 0, 1).copy()))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    magic = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim)  # 0x08 = unsigned byte
    dims = struct.pack(">" + "I" * arr.ndim, *arr.shape)
    path.write_bytes(magic + dims + arr.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_mnist_family_idx_format(tmp_path, name, folder):
    rng = np.random.default_rng(3)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    tx = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    ty = np.array([0, 1, 2, 3, 9, 5], dtype=np.uint8)
    vx = rng.integers(0, 256, (4, 28, 28), dtype=np.uint8)
    vy = np.array([7, 8, 9, 0], dtype=np.uint8)
    _write_idx(raw / "train-images-idx3-ubyte", tx)
    _write_idx(raw / "train-labels-idx1-ubyte", ty)
    _write_idx(raw / "t10k-images-idx3-ubyte", vx)
    _write_idx(raw / "t10k-labels-idx1-ubyte", vy)

    ds = load_dataset(name, data_dir=tmp_path)
    assert ds.name == name and ds.num_classes == 10 and ds.augmentation == "none"
    assert ds.input_shape == (1, 28, 28) and ds.train.x.shape == (6, 1, 28, 28)
    assert ds.train.y.tolist() == ty.tolist() and ds.test.y.tolist() == vy.tolist()
    assert len(ds.mean) == 1 and abs(ds.mean[0] - tx.mean() / 255) < 1e-9
    restored = torch.round((ds.test.x.double() * ds.std[0] + ds.mean[0]) * 255).to(torch.uint8)
    assert restored[2, 0, 13, 27].item() == vx[2, 13, 27]
    assert torch.equal(restored[:, 0], torch.from_numpy(vx))
    assert load_dataset(name, data_dir=tmp_path, augment="crop").augmentation == "crop"


@pytest.mark.parametrize("name, expected", [
    ("cifar10", "cifar-10-batches-py"),
    ("cifar100", "cifar-100-python"),
    ("svhn", "train_32x32.mat"),
    ("mnist", "MNIST"),
    ("fashion-mnist", "FashionMNIST"),
])
def test_missing_image_dataset_says_where_and_how(tmp_path, name, expected):
    with pytest.raises(UserError) as err:
        load_dataset(name, data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and expected in msg and "download=True" in msg and "\n" not in msg


def test_missing_data_dir_directory(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(UserError, match="does not exist") as err:
        load_dataset("cifar10", data_dir=missing)
    assert str(missing) in str(err.value)


def test_data_dir_pointing_inside_the_dataset_folder(tmp_path, monkeypatch):
    _make_cifar10(tmp_path, monkeypatch)
    with pytest.raises(UserError, match="contains cifar-10-batches-py, not cifar-10-batches-py itself"):
        load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py")


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist", "fashion-mnist"])
def test_no_data_dir(name):
    with pytest.raises(UserError, match="--data-dir"):
        load_dataset(name)


# --------------------------------------------------------------------------- augmentation


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _find_offsets(x: torch.Tensor, out: torch.Tensor):
    """For each sample, the unique (dy, dx, flipped) with out == crop of the 4-px zero-padded x."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    crops = padded.unfold(2, h, 1).unfold(3, w, 1)  # (N, C, 9, 9, H, W)
    crops = crops.permute(0, 2, 3, 1, 4, 5)  # (N, 9, 9, C, H, W)
    found = []
    for i in range(n):
        plain = (crops[i] == out[i]).flatten(2).all(-1).nonzero().tolist()
        flipped = (crops[i] == out[i].flip(-1)).flatten(2).all(-1).nonzero().tolist()
        matches = [(dy, dx, False) for dy, dx in plain] + [(dy, dx, True) for dy, dx in flipped]
        assert len(matches) == 1, f"sample {i}: {len(matches)} matching crops"
        found.append(matches[0])
    return found


def test_augment_none_is_identity():
    x = torch.randn(4, 3, 8, 8)
    g = _gen(0)
    state = g.get_state()
    assert augment(x, "none", g) is x
    assert torch.equal(g.get_state(), state)  # draws nothing


def test_augment_crop_is_a_shifted_zero_padded_copy():
    x = torch.randn(8, 3, 32, 32)
    out = augment(x, "crop", _gen(1))
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    offsets = _find_offsets(x, out)
    assert all(not flipped for _, _, flipped in offsets)
    assert all(0 <= dy <= 8 and 0 <= dx <= 8 for dy, dx, _ in offsets)  # shift in [-4, 4]^2
    assert len({(dy, dx) for dy, dx, _ in offsets}) > 1  # per-sample offsets


def test_augment_crop_covers_all_offsets_and_flip_half():
    x = torch.randn(300, 1, 6, 6)
    offsets = _find_offsets(x, augment(x, "crop+flip", _gen(2)))
    assert {dy for dy, _, _ in offsets} == set(range(9))
    assert {dx for _, dx, _ in offsets} == set(range(9))
    flips = sum(f for _, _, f in offsets)
    assert 110 <= flips <= 190  # p = 0.5; mean 150, sd ~8.7
    crop_only = _find_offsets(x, augment(x, "crop", _gen(2)))
    assert not any(f for _, _, f in crop_only)


def test_augment_seeded_and_device_preserving():
    x = torch.randn(16, 3, 12, 12)
    a = augment(x, "crop+flip", _gen(5))
    b = augment(x, "crop+flip", _gen(5))
    c = augment(x, "crop+flip", _gen(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # a tensor on another device: the index tensors follow x (the meta device needs no GPU)
    m = augment(x.to("meta"), "crop+flip", _gen(5))
    assert m.device.type == "meta" and m.shape == x.shape
    if torch.cuda.is_available():
        g = augment(x.cuda(), "crop+flip", _gen(5))
        assert g.device.type == "cuda" and torch.equal(g.cpu(), a)


def test_augment_rejects_bad_input():
    with pytest.raises(UserError, match="unknown augmentation"):
        augment(torch.zeros(2, 1, 4, 4), "rotate", _gen(0))
    with pytest.raises(UserError, match="image batches"):
        augment(torch.zeros(2, 1, 40), "crop", _gen(0))


def test_augment_generator_state_advances():
    x = torch.randn(4, 3, 8, 8)
    g = _gen(9)
    first = augment(x, "crop+flip", g)
    second = augment(x, "crop+flip", g)
    assert not torch.equal(first, second)
    g2 = _gen(9)
    augment(x, "crop+flip", g2)
    assert torch.equal(augment(x, "crop+flip", g2), second)  # resume from a saved state reproduces


# --------------------------------------------------------------------------- batching and subsets


def test_batch_indices_cover_each_index_once():
    batches = batch_indices(103, 10, _gen(0))
    assert [len(b) for b in batches] == [10] * 10 + [3]
    allidx = torch.cat(batches)
    assert allidx.dtype == torch.int64 and sorted(allidx.tolist()) == list(range(103))
    assert allidx.tolist() != list(range(103))  # shuffled


def test_batch_indices_deterministic_and_drop_last():
    a = batch_indices(50, 8, _gen(3))
    b = batch_indices(50, 8, _gen(3))
    c = batch_indices(50, 8, _gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    d = batch_indices(50, 8, _gen(3), drop_last=True)
    assert [len(x) for x in d] == [8] * 6
    assert all(torch.equal(x, y) for x, y in zip(a, d))
    assert batch_indices(48, 8, _gen(3), drop_last=True)[-1].numel() == 8
    assert batch_indices(5, 8, _gen(3), drop_last=True) == []
    plain = batch_indices(10, 4, None, shuffle=False)
    assert [x.tolist() for x in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(UserError, match="batch size"):
        batch_indices(10, 0, _gen(0))


def test_split_subset():
    s = Split(torch.arange(100, dtype=torch.float32).view(100, 1, 1), torch.arange(100) % 10)
    a = s.subset(30, seed=1)
    b = s.subset(30, seed=1)
    c = s.subset(30, seed=2)
    assert len(a) == 30 and torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    idx = a.x.view(-1).long()
    assert idx.tolist() == sorted(set(idx.tolist()))  # sorted, no repeats
    assert torch.equal(a.y, idx % 10)  # x and y stay paired
    expect = torch.randperm(100, generator=_gen(1))[:30].sort().values
    assert torch.equal(idx, expect)
    assert len(s.subset(100, seed=0)) == 100
    with pytest.raises(UserError, match="subset size"):
        s.subset(101, seed=0)
    with pytest.raises(UserError, match="subset size"):
        s.subset(0, seed=0)
