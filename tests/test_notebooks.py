"""The notebooks in notebooks/ run top to bottom and are stored without outputs.

Each notebook is executed with nbclient in a fresh kernel of *this* interpreter, with
``LANDSCAPE_NOTEBOOK_SCALE=small`` (tiny sizes) and every file written under the test's
tmp_path (``LANDSCAPE_NOTEBOOK_DIR``, the kernel's working directory, Jupyter/IPython
runtime folders). The MNIST-1D cache is shared by the module's notebooks so the data are
generated once.
"""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_explore_results.ipynb", "03_reproduce_figures.ipynb",
         "04_your_own_model.ipynb"]
PLOTLY_MIME = "application/vnd.plotly.v1+json"
# Figures each notebook shows with fig.show(), counted in its executed outputs.
MIN_FIGURES = {"01_quickstart.ipynb": 2, "02_explore_results.ipynb": 3, "03_reproduce_figures.ipynb": 6,
               "04_your_own_model.ipynb": 4}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("landscape-cache")


@pytest.fixture
def kernel_env(tmp_path, monkeypatch, shared_cache) -> Path:
    """A python3 kernelspec that runs this very interpreter (where landscape and ipykernel are
    installed, whatever kernelspecs the user has), and a sandboxed environment."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (landscape tests)",
        "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))  # searched before user/system dirs
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("MPLBACKEND", "agg")
    # One intra-op thread: the tiny models gain nothing from more, and on a busy machine
    # (the test suite beside other work) oversubscribed threads make them several times slower.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("LANDSCAPE_NOTEBOOK_SCALE", "small")
    monkeypatch.setenv("LANDSCAPE_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(shared_cache))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return cwd


def execute(name: str, cwd: Path):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    return nb


def figure_outputs(nb) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
            if out.get("output_type") in ("display_data", "execute_result")
            and PLOTLY_MIME in out.get("data", {})]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, kernel_env, tmp_path):
    try:
        nb = execute(name, kernel_env)
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{name} failed:\n{exc}")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not [o for o in cell.outputs if o.output_type == "error"], cell.source
    figures = figure_outputs(nb)
    assert len(figures) >= MIN_FIGURES[name], f"{name}: {len(figures)} Plotly figures shown"
    for out in figures:
        fig = out["data"][PLOTLY_MIME]
        assert fig.get("data"), f"{name}: a figure without traces"
    # Every figure also carries a PNG (GitHub and nbconvert HTML show no Plotly JSON); the
    # PNG needs kaleido and a Chromium, which `make test` installs.
    if shutil.which("chromium") or shutil.which("chromium-browser"):
        pngs = [out for out in figures if "image/png" in out["data"]]
        assert len(pngs) == len(figures), f"{name}: {len(pngs)} of {len(figures)} figures carry a PNG"
        assert all(base64.b64decode(out["data"]["image/png"])[:8] == b"\x89PNG\r\n\x1a\n" for out in pngs)
    work = tmp_path / "work"
    assert any(work.rglob("*.h5")), "no result file written under LANDSCAPE_NOTEBOOK_DIR"
    assert not list(kernel_env.iterdir()), "a notebook wrote into its working directory"
    if name == "01_quickstart.ipynb":
        assert (work / "01_quickstart" / "interpolate.html").stat().st_size > 100_000  # plotly.js embedded
        assert (work / "01_quickstart" / "run" / "report.html").exists()
    if name == "04_your_own_model.ipynb":  # plain state_dicts in, result files out
        mine = work / "04_your_own_model"
        assert all((mine / f).exists() for f in ("sgd.pt", "swa.pt", "line.h5", "rays.h5", "plane.h5"))
    if name == "03_reproduce_figures.ipynb":
        run = work / "03_reproduce_figures" / "run"
        for stem in ("swa_fig5_interpolate", "swa_fig4_rays", "phasewise_fig1_trajectory", "phasewise_fig2_segments",
                     "phasewise_fig3_twopoint"):
            assert (run / f"{stem}.h5").exists(), stem
        assert (run / "report.html").exists()


@pytest.mark.parametrize("name", NAMES)
def test_notebook_stored_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for cell in code:
        assert cell.outputs == [], f"{name}: stored with outputs in\n{cell.source[:200]}"
        assert cell.execution_count is None, f"{name}: stored with an execution count"
    sources = "\n".join(c.source for c in code)
    assert "LANDSCAPE_NOTEBOOK_SCALE" in sources and "LANDSCAPE_NOTEBOOK_DIR" in sources
