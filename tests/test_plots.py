"""Figures and pages: every analysis kind drawn from a small synthetic result file.

The files are written with the store's own writer, with NaN and inf points inside, so the
tests check what users will see: gaps (``null``) where values are not finite, never zeros;
exact values in hover; captions; self-contained HTML; and, in headless Chromium, pages
that draw every figure without a console error (screenshots land in the test's tmp dir).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest

from landscape import plots
from landscape.errors import UserError
from landscape.store import ResultWriter, load_result
from tests import browser

CHROMIUM = browser.find_chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary on PATH (make test installs the Debian 'chromium' package; "
           "or set LANDSCAPE_CHROMIUM)")

KINDS = ("interpolate", "rays", "surface", "segments", "twopoint", "trajectory", "sharpness")
DRAWN = KINDS + ("compare",)  # compare.h5 covers whole splits: not in the per-kind caption test


# ============================================================================ synthetic results

def _attrs(analysis: str, checkpoints: list[str], **more) -> dict:
    return {
        "analysis": analysis,
        "command": f"landscape {analysis} " + " ".join(checkpoints),
        "checkpoints": checkpoints,
        "checkpoint_sha256": ["0" * 64] * len(checkpoints),
        "dataset": {"name": "mnist1d", "num_train": 384, "num_test": 256},
        "subset": 128,
        "bn_mode": "recompute",
        "seed": 0,
        "landscape_version": "0.1.0",
        "torch_version": "2.x",
        **more,
    }


def _write(path: Path, analysis: str, checkpoints: list[str], coords: dict, dims: list[str],
           metrics: dict[str, dict[str, np.ndarray]], extra: dict | None = None, finish: bool = True,
           **attrs) -> Path:
    splits = list(metrics)
    names = sorted({m for split in metrics.values() for m in split}) or []
    writer = ResultWriter.create_or_resume(path, analysis=analysis, attrs=_attrs(analysis, checkpoints, **attrs),
                                           coords=coords, dims=dims, splits=splits,
                                           metrics=names if splits else ())
    if splits:
        idx = np.arange(writer.size)
        if not finish:
            idx = idx[: writer.size // 2]
        writer.write(idx, {s: {m: np.asarray(v, dtype=np.float64).ravel()[idx] for m, v in ms.items()}
                           for s, ms in metrics.items()})
    for name, value in (extra or {}).items():
        value, value_attrs = value if isinstance(value, tuple) else (value, None)
        writer.put(name, value, value_attrs)
    if not finish:
        writer.close()
        return Path(f"{path}.partial")
    return writer.finish()


def _loss_acc(loss: np.ndarray) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore", over="ignore"):
        acc = np.clip(1.0 - 0.3 * np.tanh(loss), 0.0, 1.0)
    acc = np.where(np.isfinite(loss), acc, loss)  # a diverged point has no accuracy either
    return {"loss": loss, "accuracy": acc}


def make_interpolate(tmp: Path, finish: bool = True) -> Path:
    alpha = np.linspace(-0.5, 1.5, 21)
    train = 0.2 + (alpha - 0.6) ** 2
    test = 0.35 + 0.8 * (alpha - 0.5) ** 2
    train[0] = np.inf   # diverged
    train[3] = np.nan
    test[20] = -np.inf
    return _write(tmp / "interpolate.h5", "interpolate", ["runs/x/sgd/final.pt", "runs/x/swa/averaged.pt"],
                  {"alpha": alpha}, ["alpha"], {"train": _loss_acc(train), "test": _loss_acc(test)},
                  {"distance": (np.float64(12.3456), {"units": "Euclidean norm of B - A"})}, finish=finish)


def make_rays(tmp: Path) -> Path:
    d = np.linspace(0, 1, 11)
    rng = np.random.default_rng(0)
    curv = rng.uniform(1, 3, size=(2, 4, 1)) * np.array([1.0, 2.5])[:, None, None]
    loss = 0.1 + curv * d ** 2
    loss[0, 1, 7] = np.inf
    loss[1, 2, 10] = np.nan
    test = loss + 0.2
    return _write(tmp / "rays.h5", "rays", ["r/swa/averaged.pt", "r/sgd/final.pt"],
                  {"checkpoint": np.arange(2), "ray": np.arange(4), "distance": d},
                  ["checkpoint", "ray", "distance"], {"train": _loss_acc(loss), "test": _loss_acc(test)},
                  normalization="filter", ignore="biasbn", units="filter-normalized")


def make_surface(tmp: Path) -> Path:
    x = np.linspace(-1.0, 1.5, 9)   # non-square on purpose
    y = np.linspace(-0.5, 1.0, 7)
    gx, gy = np.meshgrid(x, y)
    loss = 0.05 + gx ** 2 + 2 * (gy - 0.2) ** 2
    loss[2, 3] = np.nan
    loss[6, 8] = np.inf
    return _write(tmp / "surface.h5", "surface", ["r/sgd/final.pt", "r/swa/averaged.pt", "r/sgd/epoch_0001.pt"],
                  {"x": x, "y": y}, ["y", "x"], {"train": _loss_acc(loss), "test": _loss_acc(loss * 1.3 + 0.1)},
                  {"models/coords": np.array([[0.0, 0.0], [1.0, 0.0], [0.3, 0.8]]),
                   "models/names": np.array(["r/sgd/final.pt", "r/swa/averaged.pt", "r/sgd/checkpoints/epoch_0001.pt"],
                                            dtype=object),
                   "trajectory/coords": np.array([[0.3, 0.8], [0.5, 0.4], [0.8, 0.2], [1.0, 0.0]])},
                  normalization="gram-schmidt", units="parameter distance")


def make_segments(tmp: Path) -> Path:
    alpha = np.linspace(0, 1, 11)
    epochs = np.array([1, 20, 40, 60, 80])
    seg = np.arange(4)[:, None]
    loss = 2.0 / (1 + seg + alpha) + 0.1 * np.sin(np.pi * alpha)
    loss[1, 5] = np.inf
    loss[2, 6] = np.nan
    return _write(tmp / "segments.h5", "segments", [f"r/sgd/checkpoints/epoch_{e:04d}.pt" for e in epochs],
                  {"epoch": epochs, "segment": np.arange(4), "alpha": alpha}, ["segment", "alpha"],
                  {"train": _loss_acc(loss), "test": _loss_acc(loss + 0.3)})


def make_twopoint(tmp: Path) -> Path:
    per_epoch = 10
    intervals = np.array([0, 1, 2, 5, 10, 20, 50, 100, 200])
    loss = 0.5 - 0.1 * np.log1p(intervals) + 0.02 * (intervals / 100) ** 2
    loss[3] = np.nan
    loss[6] = np.inf
    gran = ["ref"] + ["step" if k < per_epoch else "epoch" for k in intervals[1:]]
    return _write(tmp / "twopoint.h5", "twopoint", ["r/sgd/checkpoints/epoch_0020.pt"] * len(intervals),
                  {"interval": intervals}, ["interval"], {"train": _loss_acc(loss), "test": _loss_acc(loss + 0.2)},
                  {"interval_epochs": (intervals / per_epoch, {"units": "epochs"}),
                   "granularity": np.array(gran, dtype=object)},
                  ref_epoch=20, steps_per_epoch=per_epoch, interval_units="mini-batch steps")


def make_trajectory(tmp: Path) -> Path:
    T = 13
    epochs = np.arange(T)
    t = epochs / (T - 1)
    coords = np.stack([np.cos(3 * t) * (1 - t), np.sin(3 * t) * (1 - t)], 1) * 5
    coords[5] = np.nan
    d1 = np.r_[np.nan, np.linalg.norm(np.diff(coords, axis=0), axis=1)]
    d2 = np.r_[np.nan, np.nan, np.linalg.norm(coords[2:] - coords[:-2], axis=1)]
    lr = np.where(epochs <= 8, 0.1, 0.01)
    sx, sy = np.linspace(-3, 6, 11), np.linspace(-2, 4, 9)
    gx, gy = np.meshgrid(sx, sy)
    surf = 0.05 + 0.1 * (gx ** 2 + gy ** 2)
    surf[0, 0] = np.inf
    loss = 2.0 * np.exp(-epochs / 4) + 0.05
    loss[7] = np.nan
    return _write(tmp / "trajectory.h5", "trajectory", [f"r/sgd/checkpoints/epoch_{e:04d}.pt" for e in epochs],
                  {"epoch": epochs}, ["epoch"], {"train": _loss_acc(loss), "test": _loss_acc(loss + 0.2)},
                  {"pca/coords": coords, "pca/explained_variance_ratio": np.array([0.62, 0.21]),
                   "pca/residual": np.abs(np.sin(epochs)), "timedelay/d1": d1, "timedelay/d2": d2, "lr": lr,
                   "surface/x": sx, "surface/y": sy, "surface/train/loss": surf,
                   "surface/train/accuracy": np.full_like(surf, 0.9)},
                  layer="fc", center="mean")


def make_sharpness(tmp: Path) -> Path:
    eig = np.array([35.0, 21.0, np.nan, 8.5, np.inf])
    grid = np.linspace(-5, 40, 60)
    dens = np.exp(-0.5 * (grid / 3) ** 2) + 0.01 * np.exp(-0.5 * ((grid - 30) / 2) ** 2)
    dens[10] = np.nan
    return _write(tmp / "sharpness.h5", "sharpness", ["r/sgd/final.pt"], {}, [], {},
                  {"eigenvalues": eig, "trace": np.float64(123.4), "density/grid": grid, "density/values": dens},
                  lr=0.1)


def make_compare(tmp: Path, *, sharpness: bool = True, optimizers: tuple[str, ...] = ("sgd", "asgd", "sam")) -> Path:
    """A real compare.h5, through landscape.compare's own make_plan / make_table / write_result,
    from hand-written final metrics.jsonl lines and stand-in checkpoint files instead of
    training: 3 seeds, asgd with its averaged model, sam's seed 1 test accuracy NaN, and
    (with ``sharpness``) the eigenvalues from a stand-in for the Hessian code."""
    from landscape import compare as cmp
    from landscape.train import TrainConfig

    out = tmp / f"compare-{'-'.join(optimizers)}{'-sharp' if sharpness else ''}"
    data = {"name": "mnist1d", "num_train": 384, "num_test": 256}
    plan = cmp.make_plan(TrainConfig(optimizers=list(optimizers), data_options=data, epochs=2, device="cpu"),
                         out, seeds=3)
    rng = np.random.default_rng(7)
    for run in plan.runs:
        run.directory.mkdir(parents=True)
        (run.directory / "config.json").write_text(json.dumps({"data": data}))
        for opt in run.optimizers:
            line = {"epoch": 2, "lr": 0.001}
            for prefix in ("", "averaged_"):
                for key in cmp.METRICS:
                    line[prefix + key] = (0.8 + 0.1 * rng.random()) if "acc" in key else (0.3 + 0.2 * rng.random())
            if opt == "sam" and run.seed == 1:
                line["test_acc"] = float("nan")
            (run.directory / opt).mkdir()
            (run.directory / opt / "metrics.jsonl").write_text(json.dumps(line) + "\n")
            for name in ("final.pt", "averaged.pt"):
                (run.directory / opt / name).write_text(f"{run.seed} {opt} {name}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmp, "SHARPNESS", lambda checkpoint, **kw: 20.0 + 3 * rng.random())
        table = cmp.make_table(plan, sharpness=sharpness)
    return cmp.write_result(plan, table, "landscape compare " + " ".join(f"--optimizer {o}" for o in optimizers)
                            + " --seeds 3 --epochs 2")


MAKERS = {"interpolate": make_interpolate, "rays": make_rays, "surface": make_surface,
          "segments": make_segments, "twopoint": make_twopoint, "trajectory": make_trajectory,
          "sharpness": make_sharpness, "compare": make_compare}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("results")
    return {kind: make(tmp) for kind, make in MAKERS.items()}


def _data(fig: go.Figure) -> list[dict]:
    """The traces as the browser receives them (plotly's own JSON encoding)."""
    return json.loads(fig.to_json())["data"]


def _trace(fig: go.Figure, **match) -> dict:
    found = [t for t in _data(fig) if all(t.get(k) == v for k, v in match.items())]
    assert found, f"no trace with {match}"
    return found[0]


# ============================================================================ figures

@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_title_axes_and_caption(results, kind):
    fig = plots.figure(load_result(results[kind]))
    layout = fig.layout
    assert layout.title.text
    cap = layout.meta["caption"]
    assert f"landscape {kind}" in cap                       # the command
    assert "mnist1d" in cap and "num_train=384" in cap      # the data
    assert "128 samples per split" in cap                   # the subset
    assert "recompute" in cap                               # the BN mode
    assert "checkpoints" in cap
    assert any(a.text == cap for a in layout.annotations)   # drawn on the figure too
    titled = [ax for name, ax in layout.to_plotly_json().items() if re.fullmatch(r"[xy]axis\d*", name)
              and ax.get("title", {}).get("text")]
    assert len(titled) >= 2
    json.loads(fig.to_json())  # serializable, no numpy leftovers


def test_figure_accepts_a_path_and_rejects_unknown_analyses(results, tmp_path):
    assert plots.figure(results["interpolate"]).layout.title.text
    bogus = _write(tmp_path / "bogus.h5", "mystery", ["a.pt"], {"alpha": np.arange(3.0)}, ["alpha"],
                   {"train": _loss_acc(np.ones(3))})
    with pytest.raises(UserError, match="mystery"):
        plots.figure(load_result(bogus))


def test_interpolate_gaps_endpoints_and_exact_hover(results):
    r = load_result(results["interpolate"])
    fig = plots.figure(r)
    train = _trace(fig, name="train", xaxis="x")
    assert train["y"][0] is None and train["y"][3] is None   # inf and NaN: gaps ...
    assert all(v is not None for i, v in enumerate(train["y"]) if i not in (0, 3))
    assert 0 not in (train["y"][0], train["y"][3])            # ... never zeros
    test_err = _trace(fig, name="test", xaxis="x2")
    assert test_err["y"][20] is None
    # Hover carries the exact stored value.
    k = 7
    assert train["customdata"][k][1] == repr(float(r.metrics["train"]["loss"][k]))
    # Diverged points are marked, with the non-finite value in the hover.
    diverged = [t for t in _data(fig) if t.get("name") == "diverged (inf/NaN)"]
    hovers = [c[0] for t in diverged for c in t["customdata"]]
    assert "+inf" in hovers and "NaN" in hovers and "-inf" in hovers
    # Endpoints named after their checkpoints; the distance in the axis title.
    names = {t.get("name") for t in _data(fig)}
    assert "A = sgd/final.pt" in names and "B = swa/averaged.pt" in names
    assert "12.35" in fig.layout.xaxis.title.text
    # A log-scale toggle for both panels.
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.args[0] for b in buttons] == [{"yaxis.type": "linear", "yaxis2.type": "linear"},
                                            {"yaxis.type": "log", "yaxis2.type": "log"}]


def test_rays_lines_bands_and_gaps(results):
    fig = plots.figure(load_result(results["rays"]))
    data = _data(fig)
    means = [t for t in data if t.get("name") in ("swa/averaged.pt", "sgd/final.pt") and t["xaxis"] == "x"]
    assert len(means) == 2 and {t["line"]["color"] for t in means} == {plots.PALETTE[0], plots.PALETTE[1]}
    rays = _trace(fig, name="swa/averaged.pt rays", xaxis="x")
    # 4 rays of 11 points, each followed by a separator gap.
    assert len(rays["y"]) == 4 * 12
    assert rays["y"][1 * 12 + 7] is None          # the inf point of ray 1
    assert rays["y"][1 * 12 + 6] is not None
    band = [t for t in data if t.get("fill") == "tonexty"]
    assert len(band) == 2 * 4                      # per checkpoint, per panel
    assert "filter-normalized" in fig.layout.xaxis3.title.text


def test_surface_contour_3d_switch_and_models(results):
    fig = plots.figure(load_result(results["surface"]))
    contour = _trace(fig, type="contour", name="train loss")
    z = contour["z"]
    assert len(z) == 7 and len(z[0]) == 9          # (ny, nx), non-square
    assert z[2][3] is None and z[6][8] is None      # NaN and inf are gaps
    assert z[0][0] == pytest.approx(math.log10(0.05 + 1 + 2 * 0.7 ** 2))
    assert contour["customdata"][0][0][2] == repr(0.05 + 1 + 2 * (-0.5 - 0.2) ** 2)
    surfaces = [t for t in _data(fig) if t["type"] == "surface"]
    assert len(surfaces) == 3 and all(t["visible"] is False for t in surfaces)  # train, test loss; test error
    labels = [b.label for b in fig.layout.updatemenus[0].buttons]
    assert labels == ["contour", "3-D surface"]
    vis_3d = fig.layout.updatemenus[0].buttons[1].args[0]["visible"]
    assert [fig.data[i].type for i, v in enumerate(vis_3d) if v].count("surface") == 3
    models = _trace(fig, name="models", xaxis="x")
    assert models["text"] == ["sgd/final.pt", "swa/averaged.pt", "sgd/epoch_0001.pt"]
    assert _trace(fig, name="trajectory", xaxis="x")["x"][-1] == 1.0
    assert fig.layout.yaxis.scaleanchor == "x"      # metric plane: equal units


def test_segments_concatenated_with_anchor_labels(results):
    fig = plots.figure(load_result(results["segments"]))
    train = _trace(fig, name="train", xaxis="x")
    xs = [x for x in train["x"] if x is not None]
    assert xs[0] == 0 and xs[-1] == 4
    assert train["y"][1 * 12 + 5] is None and train["y"][2 * 12 + 6] is None
    assert list(fig.layout.xaxis.ticktext) == [f"θ<sub>{e}</sub>" for e in (1, 20, 40, 60, 80)]


def test_twopoint_log_axis_in_epochs(results):
    fig = plots.figure(load_result(results["twopoint"]))
    train = _trace(fig, name="train", xaxis="x")
    assert train["x"] == [0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]   # interval 0 (the reference) is a line
    assert train["y"][2] is None and train["y"][5] is None
    assert fig.layout.xaxis.type == "log" and "epochs" in fig.layout.xaxis.title.text
    assert any(t.get("name", "").endswith("alone") for t in _data(fig))


def test_trajectory_pca_phases_timedelay(results):
    fig = plots.figure(load_result(results["trajectory"]))
    path = _trace(fig, name="trajectory")
    assert path["x"][5] is None and path["x"][4] is not None
    assert "62.0% of variance" in fig.layout.xaxis.title.text and "21.0%" in fig.layout.yaxis.title.text
    phases = _trace(fig, name="LR phase starts")
    assert phases["text"] == ["lr → 0.01"]
    td = _trace(fig, name="time delay")
    assert td["x"][0] is None and td["y"][1] is None
    contour = _trace(fig, type="contour")
    assert contour["z"][0][0] is None


def test_sharpness_spectrum_and_stability_line(results):
    fig = plots.figure(load_result(results["sharpness"]))
    eig = _trace(fig, name="eigenvalues")
    assert eig["y"][:3] == [35.0, 21.0, 8.5] and eig["y"][3:] == [None, None]
    assert any("2/lr = 20" in (a.text or "") for a in fig.layout.annotations)
    assert _trace(fig, name="density")["y"][10] is None
    assert "trace = 123.4" in fig.layout.title.subtitle.text


def test_compare_forest_plot_seeds_ci_paired_and_gaps(results):
    import h5py
    from scipy import stats

    path = results["compare"]
    with h5py.File(path, "r") as h5:   # the file itself, independently of landscape.store
        acc, loss = h5["test/accuracy"][()], h5["test/loss"][()]
        sharp = h5["sharpness"][()]
        mean = {m: h5[f"stats/{m}/mean"][()] for m in ("test_acc", "test_loss", "sharpness")}
        std = {m: h5[f"stats/{m}/std"][()] for m in ("test_acc", "test_loss", "sharpness")}
        diff = {k: h5[f"stats/test_acc/diff_{k}"][()] for k in ("mean", "ci_low", "ci_high")}
        paired = h5["paired/test_acc"][()]
        base = h5["baseline_row"][()]
        rows = [(o.decode(), m.decode()) for o, m in zip(h5["optimizer"][()], h5["model"][()])]
    assert rows == [("sgd", "last"), ("asgd", "last"), ("asgd", "averaged"), ("sam", "last")]
    assert acc.shape == (4, 3) and list(base) == [0, 0, 0, 0] and np.isnan(acc[3, 1])
    fig = plots.figure(load_result(path))
    data = _data(fig)
    # 5 panels (accuracy, Δ accuracy, loss, Δ loss, sharpness) x (3 seeds + mean), and the
    # NaN seed marked as such in the accuracy and Δ accuracy panels.
    assert len(data) == 5 * (3 + 1) + 2
    assert sum(t.get("name") == "seed 0" for t in data) == 5
    diverged = [t for t in data if t.get("name") == plots.DIVERGED_NAME]
    assert [t["xaxis"] for t in diverged] == ["x", "x2"] and diverged[0]["customdata"][0][0] == "NaN"

    # Every seed is a dot at the stored value, with that value exactly in the hover.
    seed2 = _trace(fig, name="seed 2", xaxis="x")
    assert seed2["x"] == pytest.approx(100 * acc[:, 2])
    assert [c[1] for c in seed2["customdata"]] == [repr(float(v)) for v in acc[:, 2]]
    assert _trace(fig, name="seed 0", xaxis="x3")["x"] == pytest.approx(loss[:, 0])
    assert _trace(fig, name="seed 1", xaxis="x5")["x"] == pytest.approx(sharp[:, 1])
    # The NaN seed is a gap, never a zero; so is the mean it makes NaN; its loss is drawn.
    seed1 = _trace(fig, name="seed 1", xaxis="x")
    assert seed1["x"][3] is None and all(v is not None for v in seed1["x"][:3])
    assert seed1["customdata"][3][1] == "NaN"
    assert _trace(fig, name="seed 1", xaxis="x3")["x"][3] == pytest.approx(loss[3, 1])

    # Means with their CI as error bars: Student t over the 3 seeds ...
    ci = [t for t in data if t.get("legendgroup") == "mean"]
    assert len(ci) == 5 and all(t["error_x"].get("visible", True) for t in ci)
    t975 = stats.t.ppf(0.975, 2)
    acc_ci = ci[0]
    assert acc_ci["x"][:3] == pytest.approx(100 * mean["test_acc"][:3]) and acc_ci["x"][3] is None
    assert acc_ci["error_x"]["array"][:3] == pytest.approx(100 * t975 * std["test_acc"][:3] / math.sqrt(3))
    assert acc_ci["error_x"]["arrayminus"][:3] == acc_ci["error_x"]["array"][:3]
    loss_ci = _trace(fig, legendgroup="mean", xaxis="x3")
    assert loss_ci["error_x"]["array"] == pytest.approx(t975 * std["test_loss"] / math.sqrt(3))
    sharp_ci = _trace(fig, legendgroup="mean", xaxis="x5")
    assert sharp_ci["x"] == pytest.approx(mean["sharpness"])
    # ... and the paired differences with the stored CI, the baseline row itself left out.
    d_ci = _trace(fig, legendgroup="mean", xaxis="x2")
    assert d_ci["x"][0] is None and d_ci["x"][1:3] == pytest.approx(100 * diff["mean"][1:3])
    assert d_ci["error_x"]["array"][1:3] == pytest.approx(100 * (diff["ci_high"] - diff["mean"])[1:3])
    assert d_ci["error_x"]["arrayminus"][1:3] == pytest.approx(100 * (diff["mean"] - diff["ci_low"])[1:3])
    d_seed = _trace(fig, name="seed 0", xaxis="x2")
    assert d_seed["x"][0] is None and d_seed["x"][1:] == pytest.approx(100 * paired[1:, 0])

    # The baseline row is named and shaded in every panel; rows read top to bottom.
    assert "baseline" in fig.layout.yaxis.ticktext[0] and "baseline" not in fig.layout.yaxis.ticktext[1]
    assert list(fig.layout.yaxis.ticktext[1:]) == ["asgd", "asgd (averaged)", "sam"]
    assert fig.layout.yaxis.range[0] > fig.layout.yaxis.range[1]
    assert sum(s.type == "rect" for s in fig.layout.shapes) == 5
    assert "percentage points" in fig.layout.xaxis2.title.text and "%" in fig.layout.xaxis.title.text
    cap = fig.layout.meta["caption"]
    assert "landscape compare" in cap and "whole splits" in cap and "ddof=1" in cap and "Lanczos" in cap
    assert "3 seeds" in fig.layout.title.subtitle.text and "2 epochs" in fig.layout.title.subtitle.text


@pytest.mark.parametrize("sharpness, optimizers, panels", [
    (False, ("sgd", "asgd", "sam"), 4),      # no --sharpness: no eigenvalue panel
    (False, ("asgd", "sam"), 2),             # no sgd, so no baseline: no paired panels
])
def test_compare_panels_follow_the_file(tmp_path, sharpness, optimizers, panels):
    fig = plots.figure(load_result(make_compare(tmp_path, sharpness=sharpness, optimizers=optimizers)))
    data = _data(fig)
    axes = {t["xaxis"] for t in data}
    assert axes == {"x" if i == 1 else f"x{i}" for i in range(1, panels + 1)}
    diverged = sum(t.get("name") == plots.DIVERGED_NAME for t in data)
    assert len(data) == panels * (3 + 1) + diverged and diverged == (2 if panels == 4 else 1)
    assert all("baseline" not in t for t in fig.layout.yaxis.ticktext) == (panels == 2)


def test_plot_and_report_of_a_compare_directory(results, tmp_path):
    page = plots.plot_result(results["compare"], tmp_path / "compare.html").read_text()
    _assert_self_contained(page)
    assert "<title>compare: compare.h5</title>" in page
    report = plots.report(results["compare"].parent, tmp_path / "report.html").read_text()
    _assert_self_contained(report)
    assert "<h2>Comparison</h2>" in report and '<table class="summary">' in report
    assert "figure-1" in report and "Optimizer comparison over seeds" in report
    assert report.index('<table class="summary">') < report.index("figure-1")
    assert "could not draw" not in report


def test_partial_result_is_drawn_and_says_so(tmp_path):
    partial = make_interpolate(tmp_path, finish=False)
    fig = plots.figure(load_result(partial))
    assert "unfinished" in fig.layout.meta["caption"]
    y = _trace(fig, name="train", xaxis="x")["y"]
    assert y[-1] is None                             # not computed: a gap without a diverged marker


# ============================================================================ HTML

def _assert_self_contained(text: str) -> None:
    assert not re.search(r"<script\b[^>]*\bsrc\s*=", text, re.I), "external script"
    assert not re.search(r"<link\b[^>]*\bhref\s*=\s*[\"']?https?:", text, re.I), "external stylesheet"
    # Outside the scripts (plotly.js itself mentions URLs it never fetches here) no URL at all;
    # the browser test checks that the page requests nothing from the network.
    markup = re.sub(r"<script\b.*?</script>", "", text, flags=re.S | re.I)
    assert not re.search(r"https?://", markup), re.search(r".{60}https?://.{60}", markup)
    assert text.count("window.PlotlyConfig") == 1     # plotly.js embedded exactly once


def test_plot_result_writes_self_contained_html_beside_the_file(results):
    out = plots.plot_result(results["interpolate"])
    assert out == results["interpolate"].with_suffix(".html") and out.exists()
    text = out.read_text()
    _assert_self_contained(text)
    assert "<title>interpolate: interpolate.h5</title>" in text
    assert "null" in text


def test_write_html_one_plotlyjs_many_figures_atomic(results, tmp_path):
    figs = [plots.figure(load_result(results[k])) for k in ("interpolate", "rays")]
    out = plots.write_html([figs[0], "<p id='between'>between</p>", figs[1]], tmp_path / "page.html", "Two",
                           caption_html="<b>hello</b>")
    text = out.read_text()
    _assert_self_contained(text)
    assert text.index("figure-1") < text.index("id='between'") < text.index("figure-2")
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]   # no temp file left behind


def test_save_png_without_kaleido_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kaleido", None)   # import kaleido -> ImportError
    fig = go.Figure(go.Scatter(x=[0, 1], y=[1, 2]))
    with pytest.raises(UserError, match="kaleido"):
        plots.save_png(fig, tmp_path / "x.png")


# ============================================================================ run directory

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from landscape.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run") / "run"
    train(TrainConfig(data_options={"num_train": 384, "num_test": 256}, batch_size=64, epochs=2, device="cpu",
                      optimizers=["sgd", "swa"], swa_start=2), run)
    (run / "analyses").mkdir()
    make_interpolate(run / "analyses")
    make_sharpness(run / "sgd")
    return run


def test_metrics_figure_of_a_run(run_dir):
    fig = plots.metrics_figure(run_dir)
    names = {t.name for t in fig.data}
    assert {"sgd", "swa", "swa (averaged)"} <= names
    dashed = [t for t in fig.data if t.name == "swa (averaged)"]
    assert dashed and all(t.line.dash == "dash" for t in dashed)
    assert fig.layout.yaxis5.type == "log"          # the LR panel
    with pytest.raises(UserError):
        plots.metrics_figure(run_dir / "nothing-here")


def test_report_of_a_run(run_dir):
    out = plots.report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text()
    _assert_self_contained(text)
    assert text.index("analyses/interpolate.h5") < text.index("sgd/sharpness.h5")
    assert '<table class="summary">' in text
    swa_row = re.search(r"<tr><td>swa</td>(.*?)</tr>", text).group(1)
    assert swa_row.count("%") >= 3                   # final, averaged and best test accuracy
    sgd_row = re.search(r"<tr><td>sgd</td>(.*?)</tr>", text).group(1)
    assert "—" in sgd_row                            # sgd has no averaged model


# ============================================================================ in a browser

SWITCH_BUTTONS = """
(async () => {
  for (const gd of document.querySelectorAll('.js-plotly-plot')) {
    const menus = gd.layout.updatemenus || [];
    for (const menu of menus) {
      const b = (menu.buttons || []).find(b => b.label === '3-D surface' || b.label === 'log scale');
      if (b) await Plotly[b.method](gd, ...b.args);
    }
  }
  return true;
})()
"""


def _nulls(fig: go.Figure) -> int:
    """None entries of every trace's x, y and z arrays (nested for grids)."""
    def count(v) -> int:
        if v is None:
            return 1
        return sum(count(u) for u in v) if isinstance(v, list) else 0
    return sum(count(t.get(k)) for t in _data(fig) for k in ("x", "y", "z") if isinstance(t.get(k), list))


@needs_chromium
def test_pages_render_in_chromium(results, run_dir, tmp_path):
    pages = {kind: plots.plot_result(results[kind], tmp_path / f"{kind}.html") for kind in DRAWN}
    figs = {kind: plots.figure(load_result(results[kind])) for kind in DRAWN}
    report = plots.report(run_dir, tmp_path / "report.html")
    with browser.Browser() as b:
        for kind, page_path in pages.items():
            # The interpolation page is also switched to its log scale (a button of the page).
            page = b.load(page_path, tmp_path / f"{kind}.png",
                          script=SWITCH_BUTTONS if kind == "interpolate" else None)
            assert page.console_errors == [], (kind, page.console_errors)
            assert page.external_requests == [], (kind, page.external_requests)
            assert page.plotly_version and len(page.divs) == 1
            div = page.divs[0]
            assert div["container"] and div["main_svg"] >= 1, (kind, div)
            assert div["traces"] == len(figs[kind].data), (kind, div)
            assert div["svg_traces"] >= 1 and div["height"] > 400, (kind, div)
            # NaN/inf arrive in the browser as null (gaps), as many as the figure holds.
            assert div["nulls"] == _nulls(figs[kind]) > 0, (kind, div)
            assert page.screenshot.stat().st_size > 20_000
        # The 3-D view of the surface draws with WebGL, without errors.
        page = b.load(pages["surface"], tmp_path / "surface-3d.png", script=SWITCH_BUTTONS)
        assert page.console_errors == []
        assert page.divs[0]["gl_scenes"] == 3 and page.divs[0]["visible"] == 3 + 2 * 3
        # The report: metrics figure + one figure per result file.
        page = b.load(report, tmp_path / "report.png", expect_divs=3)
        assert page.console_errors == [] and page.external_requests == []
        assert len(page.divs) == 3 and all(d["main_svg"] >= 1 for d in page.divs)
        assert page.title.startswith("landscape report")
        # A compare directory's report: the table and the figure.
        page = b.load(plots.report(results["compare"].parent, tmp_path / "compare-report.html"),
                      tmp_path / "compare-report.png", expect_divs=1)
        assert page.console_errors == [] and page.external_requests == []
        assert len(page.divs) == 1 and page.divs[0]["traces"] == len(figs["compare"].data)


# ============================================================================ what the report says

def test_takeaways_state_the_files_numbers(results):
    """Titles say what is shown and the one-line takeaways carry numbers derived here from the
    synthetic files' closed forms (not from the code that writes the line)."""
    from landscape.plots.summaries import describe

    def said(kind: str) -> tuple[str, str]:
        return describe(load_result(results[kind]))

    title, text = said("interpolate")
    assert title == "Loss and error on the line from sgd/final.pt to swa/averaged.pt"
    # test = 0.35 + 0.8 (a - 0.5)^2: 0.55 at both ends, minimum 0.35 at a = 0.5; error = 30 tanh(loss) %
    error_at_ends = 100 * 0.3 * math.tanh(0.55)
    assert (f"test loss 0.55 at sgd/final.pt (α = 0) and 0.55 at swa/averaged.pt (α = 1), test error "
            f"{error_at_ends:.2f}% and {error_at_ends:.2f}%") in text
    assert "lowest test loss 0.35 near α = 0.50" in text and "1 point(s) diverged" in text

    title, text = said("surface")
    assert title == "Loss on the plane through sgd/final.pt, swa/averaged.pt, sgd/epoch_0001.pt"
    # train = 0.05 + x^2 + 2 (y - 0.2)^2 on the grid: lowest at the grid point (-0.0625, 0.25)
    low = 0.05 + 0.0625 ** 2 + 2 * 0.05 ** 2
    assert f"lowest train loss {low:.4g} at (x, y) = (-0.0625, 0.25), nearest sgd/final.pt " \
           f"({math.hypot(0.0625, 0.25):.3g} away)" in text

    title, text = said("twopoint")
    assert title.startswith("Loss of the average (θ_ref + θ_ref−k)/2 against the interval k")
    # test = 0.7 - 0.1 ln(1 + k) + 0.02 (k/100)^2, k = 5 and 50 not finite: lowest at k = 200
    best = 0.7 - 0.1 * math.log(201) + 0.08
    assert f"test loss 0.7 at the reference; the average over k = 200 mini-batch steps is lowest, {best:.4g}" in text

    title, text = said("trajectory")
    assert title == "Training trajectory of sgd on its first two principal components"
    assert "62.0% and 21.0%" in text and f"train loss 2.05 at epoch 0, {2 * math.exp(-3) + 0.05:.4g} at epoch 12" in text

    title, text = said("sharpness")
    assert title == "Hessian spectrum of sgd/final.pt"
    assert text == ("λ_max 35 (2 of the 5 eigenvalues diverged), trace 123.4; "
                    "the gradient-descent stability limit 2/lr is 20.")

    title, text = said("segments")
    # 2/(1 + s + a) + 0.1 sin(pi a) falls all the way to a = 1 on every segment
    assert title.startswith("Loss on the segments") and "lowest strictly inside 0 of 4 segments" in text

    title, text = said("rays")
    assert title == "Loss along 4 random rays from swa/averaged.pt, sgd/final.pt"
    r = load_result(results["rays"])
    curvature = np.random.default_rng(0).uniform(1, 3, size=(2, 4, 1)) * np.array([1.0, 2.5])[:, None, None]
    widths = re.findall(r"([0-9.]+) from (?:swa|sgd)", text)
    for width, c in zip(widths, curvature.mean(axis=(1, 2))):  # the mean rise c d^2 reaches 0.1 at sqrt(0.1 / c)
        assert abs(float(width) - math.sqrt(0.1 / c)) < 0.01, (text, r.path)

    title, text = said("compare")
    assert title == "Optimizer comparison over 3 seeds: sgd, asgd, sam" and "highest mean test accuracy" in text


def test_report_sections_are_titled_by_what_they_show(run_dir):
    text = plots.report(run_dir).read_text()
    assert "<h2>Loss and error on the line from sgd/final.pt to swa/averaged.pt" in text
    assert '<span class="file">analyses/interpolate.h5</span>' in text
    assert '<p class="takeaway">test loss 0.55 at sgd/final.pt' in text
    assert "<h2>Hessian spectrum of sgd/final.pt" in text


def test_training_curves_label_every_epoch_axis_and_zoom_the_accuracy(run_dir):
    fig = plots.metrics_figure(run_dir)
    for axis in ("xaxis", "xaxis2", "xaxis3", "xaxis4", "xaxis5"):
        assert fig.layout[axis].title.text == "epoch" and fig.layout[axis].showticklabels is not False
    rows = [json.loads(line) for line in (run_dir / "swa" / "metrics.jsonl").read_text().splitlines()]
    rows += [json.loads(line) for line in (run_dir / "sgd" / "metrics.jsonl").read_text().splitlines()]
    late = [100 * row[k] for row in rows for k in ("test_acc", "averaged_test_acc") if k in row and row["epoch"] >= 2]
    lo, hi = fig.layout.yaxis4.range  # the test accuracy panel: the last third of 2 epochs is epoch 2
    assert lo < min(late) and max(late) < hi and hi - lo < max(late) - min(late) + 2


def test_surface_through_models_shows_test_error(results):
    fig = plots.figure(results["surface"])
    contours = [t for t in fig.data if t.type == "contour"]
    assert [t.name for t in contours] == ["train loss", "test loss", "test error (%)"]
    r = load_result(results["surface"])
    error = 100 * (1 - np.asarray(r.metrics["test"]["accuracy"], dtype=float))
    drawn = np.array([[np.nan if v is None else v for v in row] for row in contours[2].z])
    np.testing.assert_allclose(drawn, np.where(np.isfinite(error), error, np.nan), equal_nan=True)
