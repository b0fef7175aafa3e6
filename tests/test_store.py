"""HDF5 result store: schema, resume after a kill, identity checks, atomic finish, bad files."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from landscape.errors import UserError
from landscape.store import FORMAT, ResultWriter, load_result, root_attrs

ALPHA = np.linspace(-0.5, 1.5, 9)
SPLITS = ["train", "test"]


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "a.pt"
    path.write_bytes(b"not really a checkpoint, but it has a sha256")
    return path


def attrs_for(ckpt: Path, **over) -> dict:
    attrs = root_attrs("interpolate", ["landscape", "interpolate", str(ckpt), "-o", "x.h5"], [ckpt],
                       {"name": "mnist1d", "num_train": 384}, None, "recompute", 0)
    attrs["alpha_range"] = [-0.5, 1.5]  # an analysis option: part of the identity
    attrs.update(over)
    return attrs


def open_line(path: Path, ckpt: Path, *, analysis: str = "interpolate", alpha=ALPHA, **kw) -> ResultWriter:
    attrs = attrs_for(ckpt, analysis=analysis, **kw.pop("attrs", {}))
    return ResultWriter.create_or_resume(path, analysis=analysis, attrs=attrs, coords={"alpha": alpha},
                                         dims=["alpha"], splits=SPLITS, **kw)


def fake_results(idx: np.ndarray) -> dict:
    """Deterministic metrics for flat indices; point 3 diverges (NaN loss), point 5 is inf."""
    loss = idx * 0.5 + 0.25
    loss = np.where(idx == 3, np.nan, np.where(idx == 5, np.inf, loss))
    acc = idx / 10.0
    return {s: {"loss": loss + k, "accuracy": acc} for k, s in enumerate(SPLITS)}


def write_all(writer: ResultWriter, chunk: int = 2) -> None:
    pending = writer.pending()
    for start in range(0, len(pending), chunk):
        idx = pending[start:start + chunk]
        writer.write(idx, fake_results(idx))


def one_shot(path: Path, ckpt: Path) -> Path:
    writer = open_line(path, ckpt)
    write_all(writer, chunk=4)
    writer.put("distance", np.float64(2.5), {"units": "parameter norm"})
    return writer.finish()


def test_schema_round_trip(tmp_path: Path, ckpt: Path) -> None:
    out = one_shot(tmp_path / "line.h5", ckpt)
    with h5py.File(out, "r") as h5:  # raw layout, as any HDF5 reader sees it
        assert h5.attrs["format"] == FORMAT and h5.attrs["analysis"] == "interpolate"
        assert h5["alpha"].dtype == np.float64 and h5["alpha"].shape == (9,)
        for split in SPLITS:
            for metric in ("loss", "accuracy"):
                ds = h5[f"{split}/{metric}"]
                assert ds.dtype == np.float64 and ds.shape == (9,)
                assert list(ds.attrs["dims"]) == ["alpha"]
        assert h5["done"].dtype == bool and h5["done"][...].all()

    res = load_result(out)
    assert res.path == out and res.complete and res.dims == ["alpha"]
    a = res.attrs
    assert a["format"] == FORMAT and a["analysis"] == "interpolate"
    assert a["checkpoints"] == [str(ckpt)] and len(a["checkpoint_sha256"][0]) == 64
    assert a["dataset"] == {"name": "mnist1d", "num_train": 384}
    assert a["subset"] == -1 and a["bn_mode"] == "recompute" and a["seed"] == 0
    assert a["command"].startswith("landscape interpolate ")
    assert "normalization" not in a and a["alpha_range"] == [-0.5, 1.5]
    assert a["created"][:2] == "20" and isinstance(a["torch_version"], str)
    np.testing.assert_array_equal(res.coords["alpha"], ALPHA)
    expected = fake_results(np.arange(9))
    for split in SPLITS:
        for metric in ("loss", "accuracy"):
            np.testing.assert_array_equal(res.metrics[split][metric], expected[split][metric])
    assert res.extra == {"distance": 2.5}
    assert res.extra_attrs["distance"] == {"units": "parameter norm"}


def test_2d_grid_and_nested_extras(tmp_path: Path, ckpt: Path) -> None:
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 4)
    attrs = attrs_for(ckpt, analysis="surface", normalization={"norm": "filter", "ignore": "biasbn"})
    w = ResultWriter.create_or_resume(tmp_path / "s.h5", analysis="surface", attrs=attrs,
                                      coords={"x": x, "y": y}, dims=["x", "y"], splits=["test"])
    assert w.shape == (3, 4) and list(w.pending()) == list(range(12))
    w.write(np.arange(12), {"test": {"loss": np.arange(12.0), "accuracy": np.ones(12)}})
    w.put("pca/coords", np.ones((5, 2)))
    w.put("labels", ["a", "b"])
    res = load_result(w.finish())
    assert res.metrics["test"]["loss"].shape == (3, 4) and res.metrics["test"]["loss"][1, 0] == 4.0
    assert res.attrs["normalization"] == {"norm": "filter", "ignore": "biasbn"}
    assert res.extra["pca/coords"].shape == (5, 2) and list(res.extra["labels"]) == ["a", "b"]


def test_kill_and_resume_equals_one_shot(tmp_path: Path, ckpt: Path) -> None:
    reference = load_result(one_shot(tmp_path / "ref.h5", ckpt))

    path = tmp_path / "line.h5"
    first = open_line(path, ckpt)
    first.write(np.arange(4), fake_results(np.arange(4)))
    first.put("distance", np.float64(2.5), {"units": "parameter norm"})
    del first  # "killed": never finished, never closed explicitly
    gc.collect()
    assert not path.exists() and Path(f"{path}.partial").exists()

    again = open_line(path, ckpt, attrs={"command": "landscape interpolate (again)"})
    assert not again.complete
    np.testing.assert_array_equal(again.pending(), np.arange(4, 9))
    written = []
    for idx in np.array_split(again.pending(), 2):
        written += list(idx)
        again.write(idx, fake_results(idx))
    assert written == [4, 5, 6, 7, 8]
    again.put("distance", np.float64(2.5), {"units": "parameter norm"})  # equal: a no-op
    res = load_result(again.finish())
    assert not Path(f"{path}.partial").exists()
    for split in SPLITS:
        for metric in ("loss", "accuracy"):
            np.testing.assert_array_equal(res.metrics[split][metric], reference.metrics[split][metric])
    np.testing.assert_array_equal(res.done, reference.done)
    assert res.extra == reference.extra
    assert res.attrs["command"].startswith("landscape interpolate ")  # the original run's


def test_resume_after_real_process_kill(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "line.h5"
    script = textwrap.dedent(f"""
        import os, sys, numpy as np
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import open_line, fake_results
        from pathlib import Path
        w = open_line(Path({str(path)!r}), Path({str(ckpt)!r}))
        w.write(np.arange(3), fake_results(np.arange(3)))
        os._exit(1)  # no cleanup of any kind
    """)
    subprocess.run([sys.executable, "-c", script], check=False, timeout=60)
    assert not path.exists()
    w = open_line(path, ckpt)
    np.testing.assert_array_equal(w.pending(), np.arange(3, 9))
    write_all(w)
    assert load_result(w.finish()).done.all()


def test_other_analysis_is_refused(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "line.h5"
    w = open_line(path, ckpt, analysis="rays")
    w.write([0], fake_results(np.array([0])))  # a computed point: worth keeping
    w.close()
    with pytest.raises(UserError, match=r"line\.h5\.partial was made by analysis 'rays', not 'interpolate'"):
        open_line(path, ckpt)


def test_other_coords_or_options_are_refused(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "line.h5"
    w = open_line(path, ckpt)
    w.write([0], fake_results(np.array([0])))  # a computed point: worth keeping
    w.close()
    with pytest.raises(UserError, match=r"line\.h5\.partial .*coordinate 'alpha' differs"):
        open_line(path, ckpt, alpha=np.linspace(0, 1, 9))
    with pytest.raises(UserError, match=r"line\.h5\.partial .*seed 0 in the file, 1 now"):
        open_line(path, ckpt, attrs={"seed": 1})
    with pytest.raises(UserError, match=r"alpha_range"):
        open_line(path, ckpt, attrs={"alpha_range": [0.0, 1.0]})
    # overwrite discards the mismatching .partial and starts afresh
    w = open_line(path, ckpt, attrs={"seed": 1}, overwrite=True)
    assert len(w.pending()) == 9


def test_nan_and_inf_survive(tmp_path: Path, ckpt: Path) -> None:
    w = open_line(tmp_path / "line.h5", ckpt)
    write_all(w)
    loss = load_result(w.finish()).metrics["train"]["loss"]
    assert np.isnan(loss[3]) and np.isposinf(loss[5]) and np.isfinite(loss[[0, 1, 2, 4, 6, 7, 8]]).all()


def test_finish_is_atomic(tmp_path: Path, ckpt: Path) -> None:
    path = tmp_path / "sub" / "line.h5"
    w = open_line(path, ckpt)
    assert w.partial == Path(f"{path}.partial") and w.partial.exists() and not path.exists()
    write_all(w)
    assert not path.exists()
    with pytest.raises(RuntimeError):  # not before every point is done
        open_line(tmp_path / "other.h5", ckpt).finish()
    assert w.finish() == path
    assert path.exists() and not w.partial.exists()
    assert sorted(p.name for p in path.parent.iterdir()) == ["line.h5"]  # no temp files left


def test_unfinished_points_are_nan(tmp_path: Path, ckpt: Path) -> None:
    w = open_line(tmp_path / "line.h5", ckpt)
    w.write([1], fake_results(np.array([1])))
    res = load_result(w.partial)  # inspecting a killed/running job
    assert not res.complete and list(np.flatnonzero(res.done)) == [1]
    assert np.isnan(res.metrics["test"]["loss"][[0, 2]]).all() and res.metrics["test"]["loss"][1] == 1.75


@pytest.mark.parametrize("kind", ["garbage", "truncated", "no_format"])
def test_bad_files_are_user_errors(tmp_path: Path, ckpt: Path, kind: str) -> None:
    good = one_shot(tmp_path / "good.h5", ckpt)
    path = tmp_path / "line.h5"
    if kind == "garbage":
        path.write_bytes(b"\x00garbage, not HDF5" * 50)
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    else:
        with h5py.File(path, "w") as h5:
            h5["alpha"] = ALPHA
    for call in (lambda: load_result(path), lambda: open_line(path, ckpt)):
        with pytest.raises(UserError) as info:
            call()
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    # A .partial nothing can be resumed from (garbage, truncated) is started over; an HDF5
    # file that is not a landscape result is refused (not ours to delete); overwrite replaces it.
    partial = Path(f"{tmp_path / 'p.h5'}.partial")
    partial.write_bytes(path.read_bytes())
    if kind == "no_format":
        with pytest.raises(UserError, match=r"p\.h5\.partial"):
            open_line(tmp_path / "p.h5", ckpt)
        assert len(open_line(tmp_path / "p.h5", ckpt, overwrite=True).pending()) == 9
    else:
        assert len(open_line(tmp_path / "p.h5", ckpt).pending()) == 9
    with pytest.raises(UserError, match="does not exist"):
        load_result(tmp_path / "missing.h5")


def test_complete_file_same_identity_is_reported(tmp_path: Path, ckpt: Path) -> None:
    path = one_shot(tmp_path / "line.h5", ckpt)
    before = path.read_bytes()
    w = open_line(path, ckpt, attrs={"command": "another spelling", "checkpoints": ["/moved/a.pt"]})
    assert w.complete and len(w.pending()) == 0 and w.finish() == path
    assert path.read_bytes() == before and not w.partial.exists()

    with pytest.raises(UserError, match=r"line\.h5 was made by analysis 'interpolate', not 'rays'"):
        open_line(path, ckpt, analysis="rays")
    w = open_line(path, ckpt, analysis="rays", overwrite=True)  # recompute, replace on finish
    assert not w.complete and len(w.pending()) == 9
    write_all(w)
    assert load_result(w.finish()).attrs["analysis"] == "rays"


def test_put_overwrites_different_content(tmp_path: Path, ckpt: Path) -> None:
    w = open_line(tmp_path / "line.h5", ckpt)
    w.put("distance", [1.0, 2.0])
    w.put("distance", [1.0, 2.0, 3.0])
    with pytest.raises(ValueError):
        w.put("train/extra", [1.0])  # the metric groups belong to the store
    write_all(w)
    np.testing.assert_array_equal(load_result(w.finish()).extra["distance"], [1.0, 2.0, 3.0])


def test_write_validates_before_writing(tmp_path: Path, ckpt: Path) -> None:
    w = open_line(tmp_path / "line.h5", ckpt)
    with pytest.raises(ValueError):
        w.write([0, 1], {"train": {"loss": [1.0], "accuracy": [1.0]}, "test": {"loss": [1.0], "accuracy": [1.0]}})
    with pytest.raises(IndexError):
        w.write([9], fake_results(np.array([9])))
    assert len(w.pending()) == 9
