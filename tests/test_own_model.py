"""Your own model, checkpoints and data: every analysis from the command line and from Python.

A plain PyTorch script (tests/userproject/train_plain.py, which never imports landscape)
trains the user's CNN on MNIST-1D it made itself and a torchvision resnet18 on tiny
synthetic images, and saves the weights in the formats people have. The numbers landscape
reports are checked against plain torch evaluations of the same weights.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.errors import UserError
from landscape.store import load_result

PROJECT = Path(__file__).parent / "userproject"
FORMATS = {  # file -> what landscape must say it did to read it
    "lightning.ckpt": "stripped the key prefix 'model.'",
    "ddp.pt": "stripped the key prefix 'module.'",
    "compiled.pt": "stripped the key prefix '_orig_mod.'",
    "keyed.pt": "state_dict under key 'model_state_dict'",
    "averaged.pt": "dropped AveragedModel's 'n_averaged'",
}


def landscape(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1"}, timeout=600)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess, fragment: str) -> str:
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The user's project folder after their own training script ran in it."""
    where = tmp_path_factory.mktemp("project")
    for name in ("mymodels.py", "mydata.py", "train_plain.py"):
        shutil.copy(PROJECT / name, where / name)
    ok(subprocess.run([sys.executable, "train_plain.py", "out"], cwd=where, capture_output=True, text=True,
                      env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600))
    return where


@pytest.fixture(scope="module")
def user_modules(project):
    """The user's modules importable in this process too (for the Python API and the references)."""
    sys.path.insert(0, str(project))
    import mydata
    import mymodels

    yield mymodels, mydata
    sys.path.remove(str(project))
    for name in ("mydata", "mymodels"):
        sys.modules.pop(name, None)


def own(project: Path) -> list[str]:
    return ["--model", "mymodels:net", "--dataset", "mydata:splits", "--data-option",
            f"path={project / 'out' / 'mnist1d_user.npz'}", "--device", "cpu"]


def reference_loss(model: torch.nn.Module, state: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Plain torch: the per-sample mean cross-entropy and accuracy of ``state`` with its stored BN statistics."""
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits.double(), y)), float((logits.argmax(1) == y).double().mean())


# ---------------------------------------------------------------- checkpoint formats, command line


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_scores_like_plain_torch(project, user_modules, name):
    mymodels, mydata = user_modules
    out = project / "out"
    result = ok(landscape("interpolate", out / "plain.pt", out / name, *own(project), "--range", "0:1:2",
                          "--bn", "keep", "-o", out / f"line_{name}.h5", cwd=project))
    assert FORMATS[name] in result.stderr  # says on stderr what it did
    line = load_result(out / f"line_{name}.h5")
    (_, _), (xt, yt) = mydata.splits(str(out / "mnist1d_user.npz"))
    plain = torch.load(out / "plain.pt", weights_only=True)
    loss0, acc0 = reference_loss(mymodels.net(), plain, xt, yt)
    assert line.metrics["test"]["loss"][0] == pytest.approx(loss0, rel=1e-5)
    assert line.metrics["test"]["accuracy"][0] == pytest.approx(acc0)
    if name == "averaged.pt":  # AveragedModel's average, not the last iterate
        averaged = torch.load(out / name, weights_only=True)
        state = {k.removeprefix("module."): v for k, v in averaged.items() if k != "n_averaged"}
        loss1, _ = reference_loss(mymodels.net(), state, xt, yt)
    else:
        loss1 = loss0  # the same weights, saved another way
    assert line.metrics["test"]["loss"][1] == pytest.approx(loss1, rel=1e-5)


def test_bn_recompute_matches_swa_utils_update_bn(project, user_modules):
    mymodels, mydata = user_modules
    out = project / "out"
    ok(landscape("interpolate", out / "plain.pt", out / "ema.pt", *own(project), "--range", "0:1:2", "--split",
                 "test", "--bn-batch", "1000000", "-o", out / "recompute.h5", cwd=project))
    (x, _), (xt, yt) = mydata.splits(str(out / "mnist1d_user.npz"))
    model = mymodels.net()
    model.load_state_dict(torch.load(out / "plain.pt", weights_only=True))
    # One group of the whole train split (--bn-batch above): update_bn's statistics exactly.
    torch.optim.swa_utils.update_bn([(x,)], model)
    loss, _ = reference_loss(model, model.state_dict(), xt, yt)
    assert load_result(out / "recompute.h5").metrics["test"]["loss"][0] == pytest.approx(loss, rel=1e-5)


def test_refusals_are_one_line(project):
    out = project / "out"
    line = one_line_error(landscape("interpolate", out / "plain.pt", out / "whole_model.pt", *own(project),
                                    cwd=project), "it holds pickled Python objects (mymodels.Net)")
    assert "torch.save(model.state_dict()" in line and "\x1b" not in line
    line = one_line_error(landscape("interpolate", out / "plain.pt", out / "wide.pt", *own(project), cwd=project),
                          "does not fit the model")
    assert "'features.0.weight' is (24, 1, 5), the model's (16, 1, 5)" in line
    one_line_error(landscape("interpolate", out / "plain.pt", out / "ddp.pt", cwd=project), "give --model")
    # a model for images on 1-D signals: refused before any point is scored
    one_line_error(landscape("interpolate", out / "plain.pt", out / "ddp.pt", *own(project)[2:], "--model",
                             "mymodels:ImageNet", cwd=project), "does not fit")
    one_line_error(landscape("interpolate", out / "plain.pt", out / "keyed.pt", *own(project), "--state-key",
                             "nothing", cwd=project), "no key 'nothing'")


def test_checkpoint_that_names_code_is_never_run(project, tmp_path):
    """A .pt that passes weights_only loading but names os:system as its model (or data) factory."""
    marker = tmp_path / "marker"
    state = torch.load(project / "out" / "plain.pt", weights_only=True)
    for what, spec in (("model", {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}),
                       ("data", {"name": "os:system", "command": f"touch {marker}"})):
        evil = tmp_path / f"evil_{what}.pt"
        good = {"name": "mnist1d", "num_train": 256, "num_test": 128}
        torch.save({"format": "landscape-checkpoint/1", "state_dict": state, "epoch": 1, "step": 1, "lr": 0.1,
                    "optimizer": "sgd", "kind": "iterate",
                    "model": spec if what == "model" else {"name": "cnn1d", "kwargs": {}},
                    "data": spec if what == "data" else good}, evil)
        copies = [shutil.copy(evil, tmp_path / f"evil_{what}_{i}.pt") for i in range(2)]
        for args in (["interpolate", evil, evil], ["surface", evil, "--grid", "2"], ["sharpness", evil],
                     ["rays", evil], ["trajectory", evil, *copies], ["wrap", evil, "-o", tmp_path / "w.pt"]):
            one_line_error(landscape(*args, "--device", "cpu", cwd=tmp_path), "not built in")
    assert not marker.exists()


# ---------------------------------------------------------------- every analysis, command line


def test_every_analysis_from_the_command_line(project):
    out, res = project / "out", project / "results"
    res.mkdir(exist_ok=True)
    run = [
        ["rays", out / "plain.pt", out / "averaged.pt", "--rays", "2", "--distance", "0:1:3", "-o", res / "rays.h5"],
        ["surface", out / "plain.pt", "--grid", "3", "-o", res / "surface.h5"],
        ["surface", out / "ckpt_5.pt", "--through", out / "plain.pt", out / "ema.pt", "--grid", "3",
         "-o", res / "plane.h5"],
        ["segments", "out/ckpt_*.pt", "--points", "3", "-o", res / "segments.h5"],
        ["twopoint", out / "ckpt_20.pt", out / "ckpt_5.pt", out / "ckpt_10.pt", "-o", res / "twopoint.h5"],
        ["trajectory", out / "ckpt_10.pt", out / "ckpt_5.pt", out / "ckpt_20.pt", out / "ckpt_15.pt",
         "-o", res / "trajectory.h5"],
        ["sharpness", out / "plain.pt", "--top-k", "2", "--no-sam", "-o", res / "sharpness.h5"],
    ]
    for args in run:
        ok(landscape(*args, *own(project), "--subset", "128", cwd=project))
    natural = [str(out / f"ckpt_{e}.pt") for e in (5, 10, 15, 20)]  # ckpt_5 before ckpt_10
    assert load_result(res / "trajectory.h5").attrs["checkpoints"] == natural
    assert load_result(res / "segments.h5").attrs["epoch_units"] == "position in natural file-name order"
    two = load_result(res / "twopoint.h5")
    given = [str(out / f"ckpt_{e}.pt") for e in (20, 10, 5)]  # the last is the reference, nearest first
    assert two.attrs["checkpoints"] == given and list(two.coords["interval"]) == [0, 1, 2]
    eig = load_result(res / "sharpness.h5").extra["eigenvalues"]
    assert np.all(np.isfinite(eig)) and eig[0] >= eig[1]
    # a folder of result files, no run in it
    ok(landscape("report", res, "-o", res / "report.html", cwd=project))
    page = (res / "report.html").read_text()
    assert all(name in page for name in ("rays.h5", "trajectory.h5", "sharpness.h5"))


def test_train_with_own_model_and_data(project):
    result = ok(landscape("train", *own(project), "--epochs", "1", "--batch-size", "100", "-o", project / "run",
                          "--json", cwd=project))
    assert json.loads(result.stdout)["sgd"]["epoch"] == 1
    # its checkpoints name the user's factories: reading them needs the user to say so again
    final = project / "run" / "sgd" / "final.pt"
    one_line_error(landscape("sharpness", final, "--device", "cpu", cwd=project), "give --model mymodels:net")
    ok(landscape("interpolate", final, project / "out" / "plain.pt", *own(project), "--points", "2", "--range",
                 "0:1", "-o", project / "results" / "run_line.h5", cwd=project))


def test_wrap_writes_a_self_describing_checkpoint(project, user_modules, tmp_path):
    out = project / "out"
    ok(landscape("wrap", out / "lightning.ckpt", *own(project), "-o", tmp_path / "wrapped.pt", cwd=project))
    saved = torch.load(tmp_path / "wrapped.pt", weights_only=True)
    assert saved["format"] == "landscape-checkpoint/1" and saved["model"]["name"] == "mymodels:net"
    assert saved["epoch"] == 4  # Lightning's epoch is kept
    plain = torch.load(out / "plain.pt", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in plain.items())
    # built-in names need no flags at all
    torch.save({f"module.{k}": v for k, v in _cnn1d_state().items()}, tmp_path / "builtin.pt")
    ok(landscape("wrap", tmp_path / "builtin.pt", "--model", "cnn1d", "--dataset", "mnist1d", "--data-option",
                 "num_train=256", "--data-option", "num_test=128", "-o", tmp_path / "b.pt", cwd=tmp_path))
    ok(landscape("interpolate", tmp_path / "b.pt", tmp_path / "b.pt", "--points", "2", "--range", "0:1",
                 "--device", "cpu", "-o", tmp_path / "b.h5", cwd=tmp_path))


def _cnn1d_state() -> dict:
    from landscape.models import build_model

    torch.manual_seed(0)
    return build_model("cnn1d", num_classes=10, input_shape=[1, 40]).state_dict()


# ---------------------------------------------------------------- Python API


def test_python_api_on_a_module_and_loaders(project, user_modules, tmp_path):
    import landscape.api as ls
    from landscape.plots import figure

    mymodels, mydata = user_modules
    out = project / "out"
    (x, y), (xt, yt) = mydata.splits(str(out / "mnist1d_user.npz"))
    loaders = tuple(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(a, b), batch_size=100)
                    for a, b in ((x, y), (xt, yt)))
    model = mymodels.net()
    plain = torch.load(out / "plain.pt", weights_only=True)
    averaged = torch.load(out / "averaged.pt", weights_only=True)  # module.* keys: fitted as on the CLI
    line = ls.interpolate(model, plain, averaged, loaders, alphas=[0.0, 0.5, 1.0], bn="keep", device="cpu")
    assert line.analysis == "interpolate" and line.complete
    loss0, _ = reference_loss(mymodels.net(), plain, xt, yt)
    assert line.metrics["test"]["loss"][0] == pytest.approx(loss0, rel=1e-5)
    assert any("n_averaged" in note for note in line.attrs["checkpoint_notes"])
    assert figure(line).data  # landscape.plots draws it

    model.load_state_dict(plain)  # the model's own weights are the default point
    ray = ls.rays(model, [plain, str(out / "ema.pt")], ((x, y), (xt, yt)), distances=[0, 0.5],
                  n_rays=2, subset=200, device="cpu")
    assert ray.metrics["train"]["loss"].shape == (2, 2, 2)
    plane = ls.surface(model, None, ((x, y), (xt, yt)), grid=2, subset=200, device="cpu",
                       out=tmp_path / "plane.h5")
    assert load_result(tmp_path / "plane.h5").metrics["test"]["loss"].shape == (2, 2)
    assert figure(plane).data
    sharp = ls.sharpness(model, None, ((x, y), (xt, yt)), subset=200, top_k=2, sam=False, device="cpu")
    assert sharp.extra["eigenvalues"][0] > 0
    traj = ls.trajectory(model, [torch.load(out / f"ckpt_{e}.pt", weights_only=True) for e in (5, 10, 15, 20)],
                         ((x, y), (xt, yt)), subset=200, device="cpu")
    assert traj.extra["pca/coords"].shape == (4, 2)
    ok(landscape("plot", tmp_path / "plane.h5", "-o", tmp_path / "plane.html", cwd=tmp_path))


def test_python_api_refuses_bad_data(user_modules):
    import landscape.api as ls

    mymodels, _ = user_modules
    model = mymodels.net()
    x = torch.randn(8, 1, 40)
    with pytest.raises(UserError, match="integer class indices"):
        ls.interpolate(model, model, model, ((x, torch.rand(8)), (x, torch.rand(8))), device="cpu")
    with pytest.raises(UserError, match="does not fit"):
        ls.interpolate(model, model, model, ((torch.randn(8, 3, 40), torch.zeros(8, dtype=torch.long)),) * 2,
                       device="cpu")


# ---------------------------------------------------------------- torchvision resnet18


@pytest.fixture(scope="module")
def resnet(project) -> Path:
    ok(subprocess.run([sys.executable, "train_plain.py", "out", "--resnet"], cwd=project, capture_output=True,
                      text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600))
    return project / "out"


@pytest.mark.slow
def test_torchvision_resnet18_every_analysis(project, user_modules, resnet, tmp_path):
    import torchvision

    import landscape.api as ls

    _, mydata = user_modules
    own_r18 = ["--model", "torchvision:resnet18", "--model-option", "num_classes=10", "--dataset", "mydata:images",
               "--device", "cpu"]
    a, mid, b = resnet / "r18_init.pt", resnet / "r18_step1.pt", resnet / "r18_ddp.pt"
    result = ok(landscape("interpolate", a, b, *own_r18, "--range", "0:1:2", "--bn", "keep", "-o",
                          tmp_path / "line.h5", cwd=project))
    assert "stripped the key prefix 'module.'" in result.stderr
    train, test = mydata.images()
    xt, yt = torch.stack([test[i][0] for i in range(len(test))]), torch.tensor([test[i][1] for i in range(len(test))])
    state = {k.removeprefix("module."): v for k, v in torch.load(b, weights_only=True).items()}
    loss1, _ = reference_loss(torchvision.models.resnet18(num_classes=10), state, xt, yt)
    assert load_result(tmp_path / "line.h5").metrics["test"]["loss"][1] == pytest.approx(loss1, rel=1e-4)
    for args in (["rays", b, "--rays", "1", "--distance", "0:1:2"], ["surface", b, "--grid", "2"],
                 ["sharpness", b, "--top-k", "1", "--no-sam", "--lanczos-steps", "3", "--hvp", "double-backward"],
                 ["trajectory", a, mid, b], ["segments", a, mid, b, "--points", "2"], ["twopoint", a, mid, b]):
        ok(landscape(*args, *own_r18, "-o", tmp_path / f"{args[0]}.h5", cwd=project))
    model = torchvision.models.resnet18(num_classes=10)
    r = ls.interpolate(model, torch.load(a, weights_only=True), str(b), (train, test), alphas=[0.0, 1.0],
                       device="cpu")
    assert np.isfinite(r.metrics["test"]["loss"]).all()
    s = ls.sharpness(model, str(b), (train, test), top_k=1, sam=False, lanczos_steps=3, hvp="double-backward",
                     device="cpu")
    assert np.isfinite(s.extra["eigenvalues"]).all()
