"""Hostile and careless use (issue #12): every class of problem, tried where it can strike.

Each test names the item of the issue it covers. They assert facts derived independently
of the code under test: the tags an HTML parser finds in a page, what a browser would show
after decoding character references, file mode bits against the umask, exit codes and
stderr line counts of real processes, what a second process can lock.

Full-disk and read-only tests mount a tiny tmpfs (root and a permitted ``mount`` needed; they
are skipped, saying why, where that is not possible) and always unmount it again.
"""

from __future__ import annotations

import errno
import html
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import fields
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from landscape import files, plots
from landscape.analyses import AnalysisOptions, interpolate, rays, surface
from landscape.analyses.sharpness import SharpnessOptions, sharpness
from landscape.checkpoint import Checkpoint, atomic_torch_save, load_checkpoint, resolve_specs
from landscape.errors import UserError
from landscape.store import ResultWriter, load_result
from landscape.train import TrainConfig, train
from tests.test_plots import MAKERS

pytestmark = pytest.mark.usefixtures("single_thread")

DATA = {"num_train": 256, "num_test": 128}
SMALL = ["--data-option", "num_train=256", "--data-option", "num_test=128", "--device", "cpu"]
OPTS = dict(subset=64, device="cpu", batch_size=256)


# ============================================================================ helpers

def landscape(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=timeout)


def _interruptible() -> None:
    # A suite started in the background (`make test &`) inherits SIGINT ignored, as the shell
    # sets it for background jobs, and Python keeps an ignored SIGINT ignored: the child gets
    # the handler a terminal's Ctrl-C would meet.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"},
                            preexec_fn=_interruptible)


def one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """The run failed with exactly one line on stderr (no traceback, no segfault)."""
    assert result.returncode > 0, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _finished(run: Path) -> dict[str, int]:
    """The last epoch of every optimizer of a run, read from its metrics.jsonl here."""
    return {d.name: max((json.loads(ln)["epoch"] for ln in (d / "metrics.jsonl").read_text().splitlines()), default=0)
            for d in sorted(run.iterdir()) if (d / "metrics.jsonl").is_file()}


def wait_for(condition, timeout: float = 240, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextmanager
def tmpfs(path: Path, size: str, readonly: bool = False) -> Iterator[Path]:
    """A tiny file system of its own at ``path`` (full disk and read-only tests); always unmounted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave: int = 0) -> None:
    """Fill the file system of ``folder`` up to ``leave`` free bytes."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave
    with open(folder / "filler", "wb") as fh:
        try:
            fh.write(b"\0" * max(free, 0))
        except OSError:
            pass


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A tiny trained run: RUN/sgd with epochs 0..2."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    train(TrainConfig(optimizers=["sgd"], epochs=2, data_options=DATA, device="cpu"), out)
    return out


@pytest.fixture(scope="module")
def diverged(run: Path) -> Path:
    """A checkpoint of the same model with NaN weights: a run that diverged."""
    ckpt = load_checkpoint(run / "sgd" / "final.pt")
    path = run.parent / "diverged.pt"
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    atomic_torch_save(Checkpoint(state, ckpt.model, ckpt.data, epoch=3, step=6, lr=0.1, optimizer="sgd").to_dict(),
                      path)
    return path


# ============================================================================ 1. escaping


def PAY(place: str) -> str:
    """A payload that would be live markup, a plotly.js template and a character reference if
    inserted unescaped; slash-free, so that it survives in file and folder names."""
    return f"<img src=x onerror=alert('{place}')>&amp;%{{fullData.name}}\"'"


BOOKKEEPING = {"analysis", "format", "dims", "coords", "splits", "metrics", "json_attrs"}


def _hostile_value(value: Any, place: str) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        return value + PAY(place)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return np.array([_hostile_value(v, place) for v in value.ravel().tolist()],
                        dtype=h5py.string_dtype()).reshape(value.shape)
    return value


def make_hostile(good: Path, path: Path) -> Path:
    """A copy of the result ``good`` in which every string a file can carry holds a payload:
    root and dataset attributes (JSON ones inside, keys too), string datasets, split names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(good, path)
    with h5py.File(path, "a") as h5:
        json_keys = [v.decode() if isinstance(v, bytes) else v for v in h5.attrs.get("json_attrs", [])]
        for key in list(h5.attrs):
            if key in BOOKKEEPING:
                continue
            value = h5.attrs[key]
            if key in json_keys:
                obj = json.loads(value)
                if isinstance(obj, dict):
                    obj = {k: v + PAY(key) if isinstance(v, str) else v for k, v in obj.items()}
                    obj[PAY(f"{key}-key")] = PAY(f"{key}-value")
                h5.attrs[key] = json.dumps(obj)
            else:
                h5.attrs[key] = _hostile_value(value, key)
        h5.attrs["notes"] = PAY("notes")
        datasets: list[str] = []
        h5.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
        for name in datasets:
            ds = h5[name]
            place = name.replace("/", "-")  # payloads stay slash-free
            for key in list(ds.attrs):
                if key != "dims":
                    ds.attrs[key] = _hostile_value(ds.attrs[key], f"{place}@{key}")
            if h5py.check_string_dtype(ds.dtype) is not None:
                value = _hostile_value(ds.asstr()[()], place)
                del h5[name]
                h5.create_dataset(name, data=value)
        splits = [s.decode() if isinstance(s, bytes) else s for s in h5.attrs["splits"]]
        # (compare.h5 is a table of test metrics: another split name makes it malformed, a UserError)
        renamed = splits if h5.attrs["analysis"] == "compare" else [s + PAY("split") for s in splits]
        for old, new in zip(splits, renamed):
            h5.move(old, new)
        h5.attrs["splits"] = np.array(renamed, dtype=h5py.string_dtype())
        if h5.attrs["analysis"] == "sharpness":  # the per-module panel: module names come from the model
            h5["by_layer/names"] = np.array(["conv" + PAY("module"), "fc"], dtype=h5py.string_dtype())
            h5["by_layer/numel"] = np.array([10, 20])
            h5["by_layer/lambda_max"] = np.array([3.0, 1.0])
    return path


def _strings(obj: Any) -> Iterator[str]:
    """Every string in a figure's JSON (keys too)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def shown(text: str) -> str:
    """What a browser or plotly.js shows of an HTML text: references decoded, no line breaks
    or white space (wrapping may break a long line anywhere)."""
    text = re.sub(r"<br>(&nbsp;)*", "", text)
    return re.sub(r"\s+", "", html.unescape(text))


def literal(text: str) -> str:
    """``text`` as it must be shown: exactly, white space aside."""
    return re.sub(r"\s+", "", text)


def assert_inert(texts: list[str], where: str) -> None:
    """No payload is live: no raw tag, no plotly template."""
    for text in texts:
        assert "<img" not in text, f"{where}: live markup in {text[:300]!r}"
        assert "%{fullData" not in text, f"{where}: live plotly template in {text[:300]!r}"


class Tags(HTMLParser):
    """Start tags and visible text of a page (script and style content are not text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []
        self._in: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))
        if tag in ("script", "style"):
            self._in.append(tag)

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if not self._in:
            self.text.append(data)


def page_facts(path: Path) -> Tags:
    parser = Tags()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def assert_page_is_ours(path: Path, figures: int) -> Tags:
    """Only our tags: no <img>, no event-handler attribute, and exactly the scripts plotly
    writes for ``figures`` figures (counted on a page of our own with one empty figure)."""
    page = page_facts(path)
    names = [t for t, _ in page.tags]
    assert "img" not in names, "an <img> tag that is not ours"
    assert not [a for _, attrs in page.tags for a, _ in attrs if a.lower().startswith("on")], "event handler"
    reference = plots.write_html([go.Figure()], path.parent / "reference.html", "reference")
    per_first = [t for t, _ in page_facts(reference).tags].count("script")
    assert names.count("script") == per_first + figures - 1, "a <script> that is not ours"
    return page


# Places whose text each figure shows (the payload must then be visible, literally, once).
SHOWN = {
    "interpolate": ["command", "checkpoints", "dataset", "split"],
    "rays": ["command", "checkpoints", "dataset", "split"],
    "surface": ["command", "dataset", "split", "models-names"],
    "segments": ["command", "dataset", "split"],
    "twopoint": ["command", "dataset", "split"],
    "trajectory": ["command", "dataset", "split"],
    "sharpness": ["command", "dataset", "module"],
    "compare": ["command", "optimizer", "baseline"],
}


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory) -> dict[str, Path]:
    """Every kind of result, made hostile, each under a hostile file and folder name."""
    tmp = tmp_path_factory.mktemp("results")
    good = {kind: make(tmp) for kind, make in MAKERS.items()}
    folder = tmp / ("dir" + PAY("folder"))
    return {kind: make_hostile(path, folder / (kind + PAY("file") + ".h5")) for kind, path in good.items()}


@pytest.mark.parametrize("kind", list(MAKERS))
def test_item1_every_file_string_is_escaped_in_every_figure(hostile_results, kind, tmp_path):
    path = hostile_results[kind]
    fig = plots.figure(load_result(path))
    texts = list(_strings(fig.to_plotly_json()))
    assert_inert(texts, f"{kind} figure")
    visible = shown("\n".join(texts))
    for place in SHOWN[kind] + ["file"]:
        assert literal(PAY(place)) in visible, f"{kind}: the {place} text is not shown literally"
    # The page around it: the title names the file, escaped; nothing else is live.
    out = plots.plot_result(path, tmp_path / "page.html")
    page = assert_page_is_ours(out, figures=1)
    assert literal(PAY("file")) in literal("".join(page.text))  # (the parser decoded the references)


def hostile_run(root: Path, results: dict[str, Path]) -> Path:
    """A run directory whose every file-derived string is hostile: folder names, config.json
    values, metrics.jsonl keys and values (plus a torn last line), result files inside."""
    run = root / ("run" + PAY("rundir"))
    opt = run / ("sgd" + PAY("optdir"))
    opt.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({
        "config": {"dataset": PAY("cfg-dataset"), "model": PAY("cfg-model"), "optimizers": [PAY("cfg-opt"), {"x": 1}],
                   "epochs": PAY("cfg-epochs"), "seed": [PAY("cfg-seed")]},
        "device": PAY("device")}))
    lines = [{"epoch": 1, "lr": 0.1, "train_loss": 1.0, "test_loss": 1.2, "train_acc": 0.5, "test_acc": 0.4,
              PAY("key"): PAY("keyvalue")},
             {"epoch": PAY("epoch"), "lr": PAY("lr"), "train_loss": PAY("loss"), "test_loss": [1],
              "train_acc": {"a": 1}, "test_acc": 0.45, "averaged_test_acc": PAY("avg")}]
    (opt / "metrics.jsonl").write_text("".join(json.dumps(ln) + "\n" for ln in lines) + '{"epoch": 3, "tra')
    sub = run / ("results" + PAY("subdir"))
    sub.mkdir()
    for kind, path in results.items():
        if kind != "compare":
            shutil.copy(path, sub / path.name)
    (sub / (PAY("broken") + ".h5")).write_bytes(b"not HDF5 " + PAY("content").encode())
    return run


def test_item1_report_escapes_run_folders_configs_metrics_and_errors(hostile_results, tmp_path):
    run = hostile_run(tmp_path, hostile_results)
    fig = plots.metrics_figure(run)
    texts = list(_strings(fig.to_plotly_json()))
    assert_inert(texts, "metrics figure")
    assert literal(PAY("optdir")) in shown("\n".join(texts))  # the legend names the optimizer folder

    out = plots.report(run, tmp_path / "report.html")
    html_text = out.read_text(encoding="utf-8")
    figures = html_text.count('<div class="figure">')
    assert figures == 1 + len(hostile_results) - 1  # training curves + every result file but compare
    page = assert_page_is_ours(out, figures)
    visible = literal("".join(page.text))  # (the parser decoded the references)
    for place in ("rundir", "optdir", "epoch", "subdir", "file", "broken", "cfg-dataset", "cfg-model", "device"):
        assert literal(PAY(place)) in visible, f"the {place} text is not shown literally"


# ============================================================================ 2. HDF5 features that read other files


SECRET = np.array([271828.182, 314159.265, 161803.398])


def craft(kind: str, good: Path, folder: Path) -> Path:
    """``good`` (an interpolate result) with one feature that makes HDF5 read elsewhere."""
    folder.mkdir(parents=True, exist_ok=True)
    secret_bin = folder / "secret.bin"
    secret_bin.write_bytes(np.resize(SECRET, 21).astype("<f8").tobytes())
    other = folder / "other.h5"
    with h5py.File(other, "w") as h5:
        h5["d"] = np.resize(SECRET, 21)
    path = folder / f"{kind}.h5"
    shutil.copy(good, path)
    with h5py.File(path, "a") as h5:
        n = len(h5["alpha"])
        if kind == "external-storage":
            del h5["alpha"]
            h5.create_dataset("alpha", shape=(n,), dtype="<f8", external=[(str(secret_bin), 0, 8 * n)])
        elif kind == "external-link":
            del h5["train/loss"]
            h5["train/loss"] = h5py.ExternalLink(str(other), "/d")
        elif kind == "virtual":
            del h5["test/loss"]
            layout = h5py.VirtualLayout(shape=(n,), dtype="f8")
            layout[:] = h5py.VirtualSource(str(other), "d", shape=(n,))
            h5.create_virtual_dataset("test/loss", layout, fillvalue=np.nan)
        elif kind == "soft-link":
            h5["alpha_target"] = h5["alpha"][()]
            del h5["alpha"]
            h5["alpha"] = h5py.SoftLink("/alpha_target")
        elif kind == "filter-plugin":
            h5.create_dataset("distance_plugin", shape=(4,), dtype="f8", compression=32015, allow_unknown_filter=True)
    return path


HDF5_FEATURES = ["external-storage", "external-link", "virtual", "soft-link", "filter-plugin"]


@pytest.mark.parametrize("kind", HDF5_FEATURES)
def test_item2_results_that_read_other_files_are_refused(kind, tmp_path):
    good = MAKERS["interpolate"](tmp_path)
    path = craft(kind, good, tmp_path / "crafted")
    with pytest.raises(UserError, match="refused") as info:
        load_result(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(UserError, match="refused"):
        plots.plot_result(path, tmp_path / "out.html")
    assert not (tmp_path / "out.html").exists()
    # A crafted .partial is refused the same way when resuming, and never deleted.
    with h5py.File(good) as h5:
        attrs = {k: v for k, v in load_result(good).attrs.items() if k not in ("analysis",)}
        alpha = h5["alpha"][()]
    target = tmp_path / "resume.h5"
    shutil.copy(path, f"{target}.partial")
    with pytest.raises(UserError, match="refused"):
        ResultWriter.create_or_resume(target, analysis="interpolate", attrs=attrs, coords={"alpha": alpha},
                                      dims=["alpha"], splits=["train", "test"])
    assert Path(f"{target}.partial").exists()


def test_item2_plot_of_an_external_storage_file_is_one_line_and_leaks_nothing(tmp_path):
    path = craft("external-storage", MAKERS["interpolate"](tmp_path), tmp_path / "crafted")
    result = landscape("plot", str(path), "-o", str(tmp_path / "leak.html"))
    one_line_error(result, "external file")
    assert not (tmp_path / "leak.html").exists()
    assert "271828" not in result.stdout + result.stderr


# ============================================================================ 3. user text printed literally


@pytest.mark.parametrize("value", ["1:-1:0", "a:b:c"])
def test_item3_option_values_are_not_emoji(run, value):
    result = landscape("surface", str(run / "sgd" / "final.pt"), "--x", value)
    one_line_error(result, f"'{value}'")


def test_item3_paths_with_markup_and_emoji_codes_are_printed_literally(tmp_path):
    missing = tmp_path / "[/bold] :smile: [v2].h5"
    one_line_error(landscape("plot", str(missing)), str(missing))
    good = MAKERS["interpolate"](tmp_path)
    out = tmp_path / ":thumbs_up: line [v2] [bold].html"
    result = landscape("plot", str(good), "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout and out.exists()


def test_item3_consoles_print_markup_and_emoji_codes_literally():
    from cli.common import console, err_console, error_line, say

    text = "[/bold] [v2] :smile: :-1: a[b]c"
    for con in (console, err_console):
        with con.capture() as cap:
            con.print(text)
            say("x: ", text, to=con)
            con.print(error_line(text))
        assert cap.get().splitlines() == [text, f"x: {text}", f"error: {text}"]


# ============================================================================ 4. one line, not a traceback


def test_item4_read_only_outputs_are_one_line_before_any_compute(run, tmp_path, monkeypatch):
    good = MAKERS["interpolate"](tmp_path)
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        with pytest.raises(UserError, match="read-only"):
            plots.plot_result(good, ro / "p.html")
        with pytest.raises(UserError, match="read-only"):
            plots.report(run, ro / "r.html")
        from landscape.engine import Engine
        monkeypatch.setattr(Engine, "evaluate", lambda *a, **k: pytest.fail("computed before checking the output"))
        with pytest.raises(UserError, match="read-only"):
            surface(run / "sgd" / "final.pt", ro / "s.h5", np.linspace(-1, 1, 3), np.linspace(-1, 1, 3),
                    opts=AnalysisOptions(**OPTS))
        with pytest.raises(UserError, match="(?i)read-only"):
            train(TrainConfig(optimizers=["sgd"], epochs=1, data_options=DATA, device="cpu"), ro / "run")


def test_item4_outputs_that_are_directories(run, tmp_path, monkeypatch):
    good = MAKERS["interpolate"](tmp_path)
    adir = tmp_path / "adir.h5"
    adir.mkdir()
    with pytest.raises(UserError, match="directory"):
        plots.plot_result(good, adir)
    with pytest.raises(UserError, match="directory"):
        plots.report(run, adir)
    from landscape.engine import Engine
    monkeypatch.setattr(Engine, "evaluate", lambda *a, **k: pytest.fail("computed before checking the output"))
    with pytest.raises(UserError, match="directory"):
        surface(run / "sgd" / "final.pt", adir, np.linspace(-1, 1, 3), np.linspace(-1, 1, 3),
                opts=AnalysisOptions(**OPTS, overwrite=True))
    assert adir.is_dir() and not list(adir.iterdir())


def test_item4_cli_plot_onto_a_directory_is_one_line(tmp_path):
    good = MAKERS["interpolate"](tmp_path)
    one_line_error(landscape("plot", str(good), "-o", str(tmp_path)), "directory")


def test_item4_a_huge_grid_is_refused_before_allocating(run):
    result = landscape("surface", str(run / "sgd" / "final.pt"), "--x", "-1:1:100000", "--y", "-1:1:100000",
                       *SMALL, timeout=120)
    one_line_error(result, "10,000,000,000 points")


def test_item4_sharpness_of_a_diverged_checkpoint_is_one_line(diverged, tmp_path):
    with pytest.raises(UserError, match="diverged"):
        sharpness(diverged, tmp_path / "s.h5", SharpnessOptions(top_k=1, lanczos_steps=4, sam=False),
                  AnalysisOptions(splits=("train",), **OPTS))


def test_item4_sharpness_along_a_line_into_divergence_stores_nan(run, diverged, tmp_path):
    line = interpolate(run / "sgd" / "final.pt", diverged, tmp_path / "line.h5", np.array([0.0, 1.0]),
                       AnalysisOptions(**OPTS))
    out = sharpness(None, tmp_path / "along.h5", SharpnessOptions(top_k=1, lanczos_steps=6, sam=False,
                                                                  along=str(line)),
                    AnalysisOptions(splits=("train",), **OPTS))
    lam = load_result(out).metrics["train"]["lambda_max"]
    assert math.isfinite(lam[0]) and math.isnan(lam[1])  # alpha = 0 is the good model itself


def _stop_after_first_epoch(event: dict) -> None:
    if event.get("epoch_done") == 1:
        raise KeyboardInterrupt  # as Ctrl-C would, right after epoch 1 was saved


def test_item4_resume_drops_a_torn_last_metrics_line(tmp_path):
    cfg = TrainConfig(optimizers=["sgd"], epochs=2, data_options=DATA, device="cpu")
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, progress=_stop_after_first_epoch)
    metrics = out / "sgd" / "metrics.jsonl"
    with open(metrics, "a") as fh:  # killed while writing epoch 2's line
        fh.write('{"epoch": 2, "step": 4, "lr": 0.1, "train_lo')
    train(cfg, out, resume=True)
    lines = metrics.read_text().splitlines()
    assert [json.loads(ln)["epoch"] for ln in lines] == [1, 2] and metrics.read_text().endswith("\n")


# ============================================================================ 5. full disk


def test_item5_atomic_writes_on_a_full_disk_keep_the_old_file_and_say_so(tmp_path, monkeypatch):
    target = tmp_path / "config.json"
    target.write_text("old")

    def full(_tmp: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(UserError, match=r"no space left on device writing .*config\.json"):
        files.atomic_write(target, full)
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    # torch.save's own failure on a full disk is a RuntimeError; checkpoints are written as plain bytes.
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: full(self))
    with pytest.raises(UserError, match="no space left on device writing .*a.pt"):
        atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "a.pt")


def test_item5_full_disk_train_is_one_line_and_resumes_after_space_is_freed(tmp_path):
    with tmpfs(tmp_path / "disk", "400k") as disk:
        args = ["train", *SMALL, "--epochs", "2", "--out", str(disk / "run")]
        one_line_error(landscape(*args), "no space left on device writing")
        subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
        result = landscape(*args, "--resume")
        assert result.returncode == 0, result.stderr
        assert _finished(disk / "run") == {"sgd": 2}
        assert not [p for p in (disk / "run").rglob("*.tmp")]


def test_item5_full_disk_surface_and_plot_are_one_line(run, tmp_path):
    good = MAKERS["interpolate"](tmp_path)
    with tmpfs(tmp_path / "disk", "64k") as disk:
        fill(disk, leave=8 << 10)
        result = landscape("surface", str(run / "sgd" / "final.pt"), *SMALL, "--subset", "32", "--grid", "41",
                           "-o", str(disk / "s.h5"))
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])  # not a segfault (-11/139)
        one_line_error(result, "no space left on device writing")
        assert not (disk / "s.h5").exists()
        one_line_error(landscape("plot", str(good), "-o", str(disk / "p.html")), "no space left on device writing")
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]  # nothing half-written left


# ============================================================================ 6. Ctrl-C


@contextmanager
def running(*args: str) -> Iterator[subprocess.Popen]:
    """A `landscape` process that never outlives the test, whatever happens in it."""
    proc = start(*args)
    try:
        yield proc
    finally:
        if proc.returncode is None:  # not yet reaped by the test
            proc.kill()  # SIGKILL: no cleanup at all, as a crash
            proc.communicate()


def _interrupt(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_item6_ctrl_c_during_train_says_what_was_kept_and_how_to_resume(tmp_path):
    out = tmp_path / "run"
    metrics = out / "sgd" / "metrics.jsonl"
    with running("train", *SMALL, "--epochs", "500", "--out", str(out)) as proc:
        wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 1 or proc.poll() is not None,
                 what="the first epoch")
        code, err = _interrupt(proc)
    assert code == 130
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "sgd epochs 1-" in lines[0] and "--resume" in lines[0], err
    assert not (out / ".lock").exists()


def test_item6_ctrl_c_during_an_analysis_says_what_was_kept(run, tmp_path):
    out = tmp_path / "s.h5"
    with running("surface", str(run / "sgd" / "final.pt"), *SMALL, "--grid", "301", "-o", str(out)) as proc:
        wait_for(lambda: Path(f"{out}.partial").exists() or proc.poll() is not None, what="the .partial file")
        time.sleep(1)
        code, err = _interrupt(proc)
    assert code == 130
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{out}.partial" in lines[0] and "same command" in lines[0], err


# ============================================================================ 7. never two writers


def test_item7_a_second_trainer_of_the_same_run_is_refused_and_a_killed_one_strands_nothing(tmp_path):
    out = tmp_path / "run"
    metrics = out / "sgd" / "metrics.jsonl"
    with running("train", *SMALL, "--epochs", "500", "--out", str(out)) as first:
        wait_for(lambda: metrics.exists() and metrics.stat().st_size > 0 or first.poll() is not None,
                 what="the first trainer's first epoch")
        assert first.poll() is None
        with pytest.raises(UserError, match="in use by another landscape process"):
            train(TrainConfig(optimizers=["sgd"], epochs=500, data_options=DATA, device="cpu"), out, resume=True)
        one_line_error(landscape("train", *SMALL, "--epochs", "500", "--out", str(out), "--force"), "in use")
        assert (out / "sgd" / "checkpoints" / "epoch_0000.pt").exists()  # --force deleted nothing
    # `running` killed it with SIGKILL: no cleanup at all.
    with files.Lock(out / ".lock", "the run"):  # the kernel released it with the process
        pass


def test_item7_a_second_writer_of_the_same_result_is_refused(tmp_path):
    kwargs = dict(analysis="interpolate", attrs={"seed": 0}, coords={"alpha": np.linspace(0, 1, 3)},
                  dims=["alpha"], splits=["train"])
    first = ResultWriter.create_or_resume(tmp_path / "r.h5", **kwargs)
    with pytest.raises(UserError, match="in use by another landscape process"):
        ResultWriter.create_or_resume(tmp_path / "r.h5", **kwargs)
    first.close()
    ResultWriter.create_or_resume(tmp_path / "r.h5", **kwargs).close()


# ============================================================================ 8. refused commands leave nothing behind


FLOAT_OPTIONS = [f.name for f in fields(TrainConfig) if "float" in str(f.type)]


@pytest.mark.parametrize("name", FLOAT_OPTIONS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_item8_non_finite_training_options_are_refused(name, value):
    with pytest.raises(UserError, match=f"--{name.replace('_', '-')}"):
        TrainConfig(optimizers=["sgd", "swa", "sam"], **{name: value}).resolved()


def test_item8_a_refused_train_writes_nothing_and_the_corrected_one_runs(run, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(UserError, match="--swa-lr"):
        train(TrainConfig(optimizers=["swa"], epochs=1, swa_lr=math.inf, data_options=DATA, device="cpu"), out)
    with pytest.raises(UserError, match="nosuchdata"):
        train(TrainConfig(optimizers=["sgd"], epochs=1, dataset="nosuchdata", device="cpu"), out)
    assert not out.exists() or not list(out.iterdir())
    train(TrainConfig(optimizers=["swa"], epochs=1, swa_lr=0.05, data_options=DATA, device="cpu"), out)
    assert _finished(out) == {"swa": 1}
    # A typo with --force never costs the run it would replace.
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    with pytest.raises(UserError, match="nosuchmodel"):
        train(TrainConfig(optimizers=["sgd"], epochs=2, model="nosuchmodel", data_options=DATA, device="cpu"), run,
              force=True)
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before


def test_item8_an_analysis_that_failed_before_computing_does_not_block_the_corrected_one(run, tmp_path):
    out = tmp_path / "rays.h5"
    args = (run / "sgd" / "final.pt",), out, np.linspace(0, 1, 3), 2
    with pytest.raises(UserError, match="bogus"):
        rays(*args, norm="bogus", opts=AnalysisOptions(**OPTS))
    rays(*args, norm="filter", opts=AnalysisOptions(**OPTS))  # no --force needed: nothing was computed
    assert load_result(out).done.all()


def test_item8_sharpness_of_a_checkpoint_with_lr_0(run, tmp_path):
    ckpt = load_checkpoint(run / "sgd" / "final.pt")
    ckpt.lr = 0.0  # the end of a cosine schedule
    path = tmp_path / "lr0.pt"
    atomic_torch_save(ckpt.to_dict(), path)
    sopts = dict(top_k=1, lanczos_steps=4, sam=False)
    result = load_result(sharpness(path, tmp_path / "a.h5", SharpnessOptions(**sopts),
                                   AnalysisOptions(splits=("train",), **OPTS)))
    assert "stability/gd_limit" not in result.extra and len(result.extra["eigenvalues"]) == 1
    result = load_result(sharpness(path, tmp_path / "b.h5", SharpnessOptions(**sopts, lr=0.1),
                                   AnalysisOptions(splits=("train",), **OPTS)))
    assert result.extra["stability/gd_limit"] == pytest.approx(20.0)


# ============================================================================ 9. messages that mislead


def test_item9_a_truncated_result_is_not_open_in_another_process(tmp_path):
    good = MAKERS["interpolate"](tmp_path)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UserError) as info:
        load_result(cut)
    assert "another process" not in str(info.value) and "not a readable HDF5 file" in str(info.value)


def test_item9_checkpoints_of_one_model_with_and_without_kwargs(tmp_path):
    def ckpt(model: dict) -> Checkpoint:
        return Checkpoint({}, model, {"name": "mnist1d"}, path=str(tmp_path / f"{len(str(model))}.pt"))

    spec, _ = resolve_specs([ckpt({"name": "cnn1d"}), ckpt({"name": "cnn1d", "kwargs": {}})])
    assert spec == {"name": "cnn1d", "kwargs": {}}
    with pytest.raises(UserError) as info:
        resolve_specs([ckpt({"name": "cnn1d"}), ckpt({"name": "cnn1d", "kwargs": {"width": 8}})])
    first, second = re.search(r"\((.*) and (.*)\); give", str(info.value)).groups()
    assert first != second and "width=8" in second


# ============================================================================ 10. numbers


def test_item10_line_points_have_exact_endpoints():
    from landscape.analyses.interpolate import line_points

    a, b = torch.tensor([1.0, 2.0]), torch.tensor([float("nan"), float("inf")])
    points = line_points(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(points[0], a)  # A itself, not 1 * A + 0 * NaN
    assert torch.isnan(points[2, 0]) and torch.isinf(points[2, 1]) and not torch.isfinite(points[1]).any()


def test_item10_interpolating_into_divergence_keeps_the_good_end_and_accuracy_is_nan(run, diverged, tmp_path):
    good = run / "sgd" / "final.pt"
    out = interpolate(good, diverged, tmp_path / "line.h5", np.array([0.0, 0.5, 1.0]),
                      AnalysisOptions(bn="keep", **{**OPTS, "subset": None}))
    test = load_result(out).metrics["test"]
    # Independently: the good model's own test loss and accuracy, in plain torch.
    from landscape.data import load_dataset
    from landscape.models import build_model
    ckpt = load_checkpoint(good)
    model = build_model(ckpt.model["name"], **ckpt.model["kwargs"]).eval()
    model.load_state_dict(ckpt.state_dict)
    data = load_dataset(ckpt.data["name"], **{k: v for k, v in ckpt.data.items() if k != "name"})
    with torch.no_grad():
        logits = model(data.test.x).double()
    loss = torch.nn.functional.cross_entropy(logits, data.test.y).item()
    acc = (logits.argmax(1) == data.test.y).double().mean().item()
    assert test["loss"][0] == pytest.approx(loss, rel=1e-5) and test["accuracy"][0] == pytest.approx(acc)
    assert np.isnan(test["loss"][1:]).all() and np.isnan(test["accuracy"][1:]).all()


def test_item10_a_diverging_run_warns_and_json_has_no_nan_tokens(tmp_path):
    result = landscape("train", *SMALL, "--epochs", "1", "--lr", "1e6", "--json", "--out", str(tmp_path / "r"))
    assert result.returncode == 0, result.stderr

    def no_constants(token: str) -> None:
        raise AssertionError(f"{token} is not JSON")

    payload = json.loads(result.stdout, parse_constant=no_constants)
    assert payload["sgd"]["test_loss"] is None
    assert "diverged" in result.stderr and "null" in result.stderr


# ============================================================================ 11. permissions


@pytest.mark.parametrize("mask", [0o027, 0o002])
def test_item11_every_file_gets_the_umask_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "run"
        train(TrainConfig(optimizers=["sgd"], epochs=1, data_options=DATA, device="cpu"), out)
        result = interpolate(out / "sgd" / "final.pt", out / "sgd" / "checkpoints" / "epoch_0000.pt",
                             out / "line.h5", np.array([0.0, 1.0]), AnalysisOptions(**OPTS))
        plots.plot_result(result, out / "line.html")
        plots.report(out)
    finally:
        os.umask(old)
    made = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in made} >= {"config.json", "metrics.jsonl", "epoch_0000.pt", "final.pt", "resume.pt",
                                      "line.h5", "line.html", "report.html"}
    wrong = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in made
             if p.stat().st_mode & 0o777 != 0o666 & ~mask}
    assert not wrong, f"not {oct(0o666 & ~mask)}: {wrong}"
