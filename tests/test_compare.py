"""`landscape compare`: the table against numpy/scipy on the runs' own metrics.jsonl files,
shared initializations, resuming only what is missing, the budget rule, bad input."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from landscape import compare as cmp
from landscape.errors import UserError
from landscape.store import load_result
from landscape.train import TrainConfig

CFG = TrainConfig(optimizers=["sgd", "asgd", "sam"], data_options={"num_train": 384, "num_test": 256},
                  model_options={"channels": 8}, epochs=2, lr=0.2, device="cpu")
SWEEP = "rho=0.02,0.1"


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "cmp"
    result = cmp.compare(CFG, out, seeds=2, sweep=SWEEP)
    return out, result


def _last(path: Path) -> dict:
    return json.loads(path.read_text().strip().splitlines()[-1])


def _decode(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def test_layout_rows_and_baselines(done):
    out, result = done
    assert [(r.seed, r.cell, r.optimizers) for r in result.plan.runs] == [
        (0, "", ["sgd", "asgd"]), (0, "rho=0.02", ["sam"]), (0, "rho=0.1", ["sam"]),
        (1, "", ["sgd", "asgd"]), (1, "rho=0.02", ["sam"]), (1, "rho=0.1", ["sam"])]
    assert (out / "seed_1" / "rho=0.1" / "sam" / "final.pt").is_file()
    t = result.table
    assert list(zip(t.optimizer, t.cell, t.model)) == [
        ("sgd", "", "last"), ("asgd", "", "last"), ("asgd", "", "averaged"),
        ("sam", "rho=0.02", "last"), ("sam", "rho=0.1", "last")]
    assert t.baseline_row == [0, 0, 0, 0, 0]  # rho does not change sgd: one unswept sgd per seed
    assert len(result.trained) == 6 and not result.skipped


def test_table_equals_numpy_scipy_on_the_metrics_files(done):
    out, result = done
    seeds = [0, 1]
    where = {("sgd", ""): "", ("asgd", ""): "", ("sam", "rho=0.02"): "rho=0.02", ("sam", "rho=0.1"): "rho=0.1"}
    rows = [("sgd", "", "last"), ("asgd", "", "last"), ("asgd", "", "averaged"),
            ("sam", "rho=0.02", "last"), ("sam", "rho=0.1", "last")]

    def per_seed(opt, cell, model, key):
        prefix = "averaged_" if model == "averaged" else ""
        return np.array([_last(out / f"seed_{s}" / where[(opt, cell)] / opt / "metrics.jsonl")[prefix + key]
                         for s in seeds], dtype=np.float64)

    h5 = load_result(out / "compare.h5")
    assert h5.attrs["analysis"] == "compare" and h5.attrs["format"] == "landscape-result/1"
    assert h5.attrs["seeds"] == seeds and h5.dims == ["row", "seed"] and h5.done.all()
    assert _decode(h5.coords["optimizer"]) == [r[0] for r in rows]
    assert _decode(h5.coords["model"]) == [r[2] for r in rows]
    csv_rows = (out / "compare.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    for key, store in (("test_acc", ("test", "accuracy")), ("test_loss", ("test", "loss"))):
        base = per_seed("sgd", "", "last", key)
        for i, row in enumerate(rows):
            v = per_seed(*row, key)
            d = v - base
            n = len(v)
            mean, std = v.mean(), np.std(v, ddof=1)
            sem = stats.sem(d)
            if sem > 0:
                lo, hi = stats.t.interval(0.95, n - 1, loc=d.mean(), scale=sem)
            else:  # asgd's last iterate *is* sgd's (same init, same batches): zero-width interval
                lo = hi = d.mean()
            np.testing.assert_array_equal(h5.metrics[store[0]][store[1]][i], v)  # stored as read
            got = {k: float(h5.extra[f"stats/{key}/{k}"][i]) for k in
                   ("mean", "std", "diff_mean", "diff_ci_low", "diff_ci_high")}
            assert got["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-15)
            assert got["std"] == pytest.approx(std, rel=1e-12, abs=1e-15)
            assert got["diff_mean"] == pytest.approx(d.mean(), rel=1e-12, abs=1e-15)
            assert got["diff_ci_low"] == pytest.approx(lo, rel=1e-9, abs=1e-15)
            assert got["diff_ci_high"] == pytest.approx(hi, rel=1e-9, abs=1e-15)
            np.testing.assert_allclose(h5.extra[f"paired/{key}"][i], d, rtol=0, atol=0)
            line = dict(zip(header, csv_rows[1 + i].split(",")))
            assert float(line[f"{key}_mean"]) == got["mean"] and float(line[f"{key}_diff_ci_high"]) == got["diff_ci_high"]
    # sam differs from sgd somewhere, or the test would prove little
    assert np.any(h5.extra["paired/test_loss"][3] != 0)


def test_paired_seeds_share_their_initialization(done):
    out, _ = done

    def init(*parts):
        return torch.load(out.joinpath(*parts, "checkpoints", "epoch_0000.pt"), weights_only=True)["state_dict"]

    for seed in (0, 1):
        s = f"seed_{seed}"
        ref = init(s, "sgd")
        for other in (init(s, "asgd"), init(s, "rho=0.02", "sam"), init(s, "rho=0.1", "sam")):
            assert ref.keys() == other.keys()
            assert all(torch.equal(ref[k], other[k]) for k in ref)
    a, b = init("seed_0", "sgd"), init("seed_1", "sgd")
    assert not all(torch.equal(a[k], b[k]) for k in a)


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_resume_completes_only_missing_runs(done, tmp_path):
    src, first = done
    out = tmp_path / "cmp"
    shutil.copytree(src, out)
    before = _mtimes(out)
    shutil.rmtree(out / "seed_1" / "rho=0.1")  # a whole run lost
    (out / "seed_0" / "rho=0.02" / "sam" / "final.pt").unlink()  # killed just before the last save
    events = []
    result = cmp.compare(CFG, out, seeds=2, sweep=SWEEP, on_event=events.append)
    assert [(r.seed, r.cell) for r in result.trained] == [(0, "rho=0.02"), (1, "rho=0.1")]
    assert len(result.skipped) == 4 and [e["event"] for e in events].count("skip") == 4
    after = _mtimes(out)
    # Rewritten: the lost run; in the resumed run final.pt, config.json and metrics.jsonl
    # (the trainer rewrites both on --resume, with the same content); the results.
    redone = ("seed_1/rho=0.1/", "seed_0/rho=0.02/sam/final.pt", "seed_0/rho=0.02/config.json",
              "seed_0/rho=0.02/sam/metrics.jsonl", "compare.")
    untouched = [k for k in before if not k.startswith(redone)]
    assert len(untouched) > 20 and all(after[k] == before[k] for k in untouched), \
        [k for k in untouched if after[k] != before[k]]
    # the resumed run trained nothing again: its epoch checkpoints are the old files
    assert any(k.startswith("seed_0/rho=0.02/sam/checkpoints/") for k in untouched)
    metrics = "seed_0/rho=0.02/sam/metrics.jsonl"
    assert (out / metrics).read_text() == (src / metrics).read_text()
    # and the table is the same, bit for bit (CPU training is deterministic)
    for m in cmp.METRICS:
        np.testing.assert_array_equal(result.table.values[m], first.table.values[m])


def test_changed_settings_are_refused_before_anything_is_written(done, tmp_path):
    src, _ = done
    out = tmp_path / "cmp"
    shutil.copytree(src, out)
    plan_before = (out / "compare.json").read_text()
    with pytest.raises(UserError, match="other settings.*epochs"):
        cmp.compare(replace(CFG, epochs=3), out, seeds=2, sweep=SWEEP)
    assert (out / "compare.json").read_text() == plan_before


def test_report_shows_the_comparison(done, tmp_path):
    from landscape import plots

    out, _ = done
    page = plots.report(out, tmp_path / "r.html").read_text()
    assert "<h2>Comparison</h2>" in page and "rho=0.02" in page and "95% CI" in page
    assert "could not draw" not in page


def test_lr_sweep_pairs_within_the_cell_and_validates_each_value(tmp_path):
    plan = cmp.make_plan(replace(CFG, optimizers=["sgd", "swa"]), tmp_path, seeds=3,
                         sweep=cmp.parse_sweep("lr=0.05,0.2"))
    cells = [(r.optimizer, r.cell, r.model) for r in plan.rows]
    assert cells == [("sgd", "lr=0.05", "last"), ("sgd", "lr=0.2", "last"), ("swa", "lr=0.05", "last"),
                     ("swa", "lr=0.05", "averaged"), ("swa", "lr=0.2", "last"), ("swa", "lr=0.2", "averaged")]
    assert [r.baseline for r in plan.rows] == [0, 1, 0, 0, 1, 1]
    assert [r.directory.relative_to(tmp_path).as_posix() for r in plan.runs[:2]] == \
        ["seed_0/lr=0.05", "seed_0/lr=0.2"]
    assert plan.runs[1].config.phases == "1:0.2,1:0.002"  # default phases follow the swept lr
    with pytest.raises(UserError, match="--sweep lr=-1"):
        cmp.make_plan(CFG, tmp_path, seeds=2, sweep=cmp.parse_sweep("lr=0.1,-1"))
    assert not any(tmp_path.iterdir())  # planning trains and writes nothing


@pytest.mark.parametrize("sweep,message", [
    ("eta=0.1,0.2", "cannot sweep 'eta'"),
    ("lr", "expected key=v1,v2"),
    ("=0.1", "expected key=v1,v2"),
    ("lr=0.1,,0.2", "'' is not a number"),
    ("lr=0.1,abc", "'abc' is not a number"),
    ("batch_size=64,1.5", "'1.5' is not an integer"),
    ("lr=0.1,0.1", "given twice"),
    ("lr=nan", "not a finite number"),
])
def test_bad_sweep_is_a_user_error(sweep, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        cmp.parse_sweep(sweep)


@pytest.mark.parametrize("kwargs,message", [
    (dict(seeds=0), "--seeds must be an integer >= 1"),
    (dict(seeds=-2), "--seeds must be an integer >= 1"),
    (dict(baseline="lookahead"), "--baseline lookahead: not among"),
    (dict(sweep="gamma0=0.8,0.9"), "changes none of the optimizers"),
    (dict(sweep="gamma0=0.8,1.5", config=replace(CFG, optimizers=["sgd", "phase"])), "--gamma0 must be in"),
    (dict(sweep="lr=0.1,0.2", config=replace(CFG, phases="1:0.1,1:0.01")), "--phases"),
    (dict(config=replace(CFG, optimizers=["sgd", "adamw"])), "unknown optimizer"),
    (dict(budget=-5), "--budget must be a positive"),
    (dict(budget=100, config=replace(CFG, phases="1:0.1,1:0.01")), "--budget chooses the number of epochs"),
])
def test_bad_input_is_a_user_error(tmp_path, kwargs, message):
    config = kwargs.pop("config", CFG)
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        cmp.compare(config, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out" / "seed_0").exists()


def test_out_that_is_not_a_compare_directory_is_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a compare directory"):
        cmp.compare(CFG, tmp_path, seeds=1, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


class FakeClock:
    """perf_counter that advances one second per call: the probe's start, its two epoch ends
    for each optimizer, and its end."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        self.now += 1.0
        return self.now


def test_budget_rule_and_reuse(tmp_path, monkeypatch):
    monkeypatch.setattr(cmp, "time", FakeClock())
    cfg = replace(CFG, optimizers=["sgd"])
    events = []
    # probe: start t=1, epoch ends t=2, 3, end t=4 -> probe 3 s, 1 s per epoch, startup 3 - 2 = 1 s.
    # 2 runs: 3 + 2 x 1 + E x 2 <= 11  ->  E = 3
    result = cmp.compare(cfg, tmp_path / "b", seeds=2, budget=11, on_event=events.append)
    assert result.budget["epochs"] == 3 and result.table.epochs == 3
    assert result.budget["seconds_per_epoch"] == {"sgd": 1.0} and result.budget["startup_seconds_per_run"] == 1.0
    assert [e["event"] for e in events][:2] == ["probe", "budget"]
    assert not (tmp_path / "b" / ".budget-probe").exists()
    assert len(_last(tmp_path / "b" / "seed_1" / "sgd" / "metrics.jsonl")) and \
        _last(tmp_path / "b" / "seed_1" / "sgd" / "metrics.jsonl")["epoch"] == 3
    events.clear()
    again = cmp.compare(cfg, tmp_path / "b", seeds=2, budget=11, on_event=events.append)
    assert events[0] == {"event": "budget", "reused": True, **result.budget}  # no second probe
    assert again.table.epochs == 3 and len(again.skipped) == 2
    with pytest.raises(UserError, match="--budget 5: one epoch"):
        cmp.compare(cfg, tmp_path / "c", seeds=2, budget=5)


def test_sharpness_column_through_the_hook(done, tmp_path, monkeypatch):
    src, _ = done
    out = tmp_path / "cmp"
    shutil.copytree(src, out)
    calls = []

    def fake_top_eigenvalue(checkpoint, *, split, subset, device, seed):
        calls.append(Path(checkpoint))
        return float(len(str(checkpoint)))  # any deterministic number per file

    monkeypatch.setattr(cmp, "SHARPNESS", fake_top_eigenvalue)
    assert cmp.compare(CFG, out, seeds=2, sweep=SWEEP).table.sharpness is None  # opt-in
    t = cmp.compare(CFG, out, seeds=2, sweep=SWEEP, sharpness=True).table
    assert len(calls) == 5 * 2 and t.sharpness.shape == (5, 2)
    expected = np.array([[len(str(out / f"seed_{s}" / cell / opt / ckpt)) for s in (0, 1)]
                         for opt, cell, ckpt in (("sgd", "", "final.pt"), ("asgd", "", "final.pt"),
                                                 ("asgd", "", "averaged.pt"), ("sam", "rho=0.02", "final.pt"),
                                                 ("sam", "rho=0.1", "final.pt"))], dtype=float)
    np.testing.assert_array_equal(t.sharpness, expected)
    np.testing.assert_allclose(t.stats["sharpness"]["std"], expected.std(axis=1, ddof=1))
    h5 = load_result(out / "compare.h5")
    assert "sharpness" in h5.extra and "stats/sharpness/mean" in h5.extra
    calls.clear()
    cmp.compare(CFG, out, seeds=2, sweep=SWEEP, sharpness=True)
    assert calls == []  # cached by checkpoint sha256 in OUT/sharpness.json
    monkeypatch.setattr(cmp, "SHARPNESS", None)  # the Hessian code not installed
    with pytest.raises(UserError, match="--sharpness needs the Hessian code"):
        cmp.compare(CFG, out, seeds=2, sweep=SWEEP, sharpness=True)


@pytest.mark.skipif(cmp.SHARPNESS is None, reason="landscape.hessian / analyses.sharpness not installed")
def test_sharpness_column_from_the_hessian_analysis(tmp_path):
    t = cmp.compare(replace(CFG, optimizers=["swa"]), tmp_path / "s", seeds=1, sharpness=True,
                    sharpness_subset=128).table
    assert t.sharpness.shape == (2, 1) and np.all(np.isfinite(t.sharpness))
    eig = load_result(tmp_path / "s" / "seed_0" / "swa" / "sharpness_averaged.h5").extra["eigenvalues"]
    assert t.sharpness[1, 0] == float(np.asarray(eig).ravel()[0])


# ---------------------------------------------------------------- the command line


def landscape(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    """`landscape ARGS` in this process through cli.main.main (one-line errors, exit codes);
    registers the command when cli/main.py does not (yet)."""
    import cli.main as main
    from cli import compare as cli_compare

    if not any(getattr(c, "name", None) == "compare" for c in main.app.registered_commands):
        cli_compare.register(main.app)
    monkeypatch.setattr(sys, "argv", ["landscape", *args])
    monkeypatch.setenv("COLUMNS", "200")
    capsys.readouterr()
    try:
        main.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_json_and_table(tmp_path, capsys, monkeypatch):
    small = ["--data-option", "num_train=256", "--data-option", "num_test=128", "--model-option", "channels=8",
             "--device", "cpu", "--epochs", "1", "--seeds", "2", "--out", str(tmp_path / "c")]
    code, out, err = landscape(capsys, monkeypatch, "compare", "--optimizer", "sgd", "--optimizer", "swa", *small,
                               "--json")
    assert code == 0, err
    payload = json.loads(out)
    assert payload["epochs"] == 1 and payload["seeds"] == [0, 1] and payload["baseline"] == "sgd"
    assert [(r["optimizer"], r["model"]) for r in payload["rows"]] == [("sgd", "last"), ("swa", "last"),
                                                                       ("swa", "averaged")]
    assert "t(0.975, n-1)" in payload["ci"]
    swa = payload["rows"][2]
    assert swa["diff_test_acc"]["per_seed"] == pytest.approx(
        [a - b for a, b in zip(swa["test_acc"]["per_seed"], payload["rows"][0]["test_acc"]["per_seed"])])
    code, out, err = landscape(capsys, monkeypatch, "compare", "--optimizer", "sgd", "--optimizer", "swa", *small)
    assert code == 0, err
    assert "done, kept" in out and "Δ acc vs sgd" in out and "95% CI" in out


@pytest.mark.parametrize("args,fragment", [
    (["--sweep", "lr0.1"], "expected key=v1,v2"),
    (["--sweep", "beta=1,2"], "cannot sweep 'beta'"),
    (["--seeds", "0"], "--seeds must be"),
    (["--budget", "60", "--epochs", "3"], "not both"),
    (["--optimizer", "sgd", "--sweep", "rho=0.1,0.2"], "changes none of the optimizers"),
    (["--threads", "0"], "--threads must be >= 1"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, monkeypatch, args, fragment):
    code, _, err = landscape(capsys, monkeypatch, "compare", "--out", str(tmp_path / "c"), *args)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and fragment in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "c" / "seed_0").exists()
