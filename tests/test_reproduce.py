"""`landscape reproduce`: the verdict rule on hand-made intervals, the flatness measures on
hand-made curves, label noise, the budget rule on a hand-made timing, and the whole chain
at smoke scale (files, report, resuming after a kill). Outcomes are never asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from landscape import reproduce as rp
from landscape.data import load_dataset, noisy_labels
from landscape.errors import UserError
from landscape.plots.flatness import line_minimum, ray_width

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the rule

@pytest.mark.parametrize("low, high, sign, expected", [
    (0.1, 0.9, +1, "reproduced"), (-0.9, -0.1, +1, "not reproduced"), (-0.1, 0.9, +1, "inconclusive"),
    (-0.9, -0.1, -1, "reproduced"), (0.1, 0.9, -1, "not reproduced"), (-0.5, 0.5, -1, "inconclusive"),
    (0.0, 0.5, +1, "inconclusive"),  # touching 0 is not "entirely on one side"
    (math.nan, 1.0, +1, "inconclusive"), (0.0, 0.0, +1, "inconclusive"),
])
def test_verdict_rule(low, high, sign, expected):
    assert rp.verdict(low, high, sign) == expected


def test_verdict_needs_a_sign():
    with pytest.raises(ValueError):
        rp.verdict(0.1, 0.2, 0)


def test_claim_verdict_combines_effects():
    assert rp.claim_verdict(["reproduced", "reproduced"]) == "reproduced"
    assert rp.claim_verdict(["not reproduced"] * 3) == "not reproduced"
    assert rp.claim_verdict(["reproduced", "inconclusive", "not reproduced"]) == "partly reproduced (1 of 3)"
    assert rp.claim_verdict(["inconclusive", "not reproduced"]) == "inconclusive"
    assert rp.claim_verdict([]) == "inconclusive"


def test_paired_interval_is_student_t():
    x = np.array([0.3, 0.9, 0.2, 0.5, 0.7])
    ci = rp.paired_interval(x)
    half = stats.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
    assert ci["n"] == 5 and ci["mean"] == pytest.approx(x.mean())
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((x.mean() - half, x.mean() + half))
    one = rp.paired_interval([np.nan, 1.0])  # a diverged seed is dropped, and one seed has no interval
    assert one["n"] == 1 and math.isnan(one["ci_low"])


def test_evaluate_on_hand_made_measurements():
    """Every effect's number comes from the measurements it names: fake tables, flatness, stability."""

    class Noisy:
        optimizer = ["sgd", "sgd", "phase", "lookahead", "sam", "asam"]
        model = ["last", "averaged", "last", "last", "last", "last"]
        cell = [""] * 6
        values = {"test_acc": np.array([[0.80, 0.81, 0.82], [0.81, 0.82, 0.83], [0.80, 0.81, 0.82],
                                        [0.80, 0.81, 0.82], [0.90, 0.91, 0.92], [0.80, 0.81, 0.825]])}

    class Clean:
        optimizer, model, cell = ["sgd", "swa", "swa"], ["last", "last", "averaged"], [""] * 3
        values = {"test_acc": np.array([[0.80, 0.81, 0.82], [0.7] * 3, [0.79, 0.80, 0.81]])}

    m = rp.Measured(tables={rp.NOISY: Noisy(), rp.CLEAN: Clean()}, flatness={rp.CLEAN: [
        {"lambda_max_a": 5.0 + s, "lambda_max_b": 4.0 + s, "trace_a": 50.0, "trace_b": 40.0 + s,
         "width_a": 0.5, "width_b": 0.6 + 0.01 * s, "width_euclid_a": 5.0, "width_euclid_b": 4.8 - 0.01 * s,
         "alpha_min": 0.8 + 0.01 * s} for s in range(3)]},
        stability={rp.NOISY: [{"lr": [0.1, 0.01, 0.001], "lambda_max": [10.0 + s, 30.0, 3000.0 - s]}
                              for s in range(3)]})
    rows, claims = rp.evaluate(list(rp.CLAIM_ORDER), m)
    by = {r["effect"]: r for r in rows}
    assert by["asgd_vs_sgd"]["mean"] == pytest.approx(1.0) and by["asgd_vs_sgd"]["verdict"] == "reproduced"
    assert by["asgd_vs_sam"]["verdict"] == "not reproduced"  # -9 points every seed
    assert by["phase_vs_sgd"]["verdict"] == "inconclusive"  # exactly 0 every seed
    assert by["swa_vs_sgd"]["verdict"] == "not reproduced"
    assert by["swa_lambda_max"]["mean"] == pytest.approx(-1.0) and by["swa_lambda_max"]["verdict"] == "reproduced"
    assert by["swa_trace"]["verdict"] == "reproduced" and by["swa_width"]["verdict"] == "reproduced"
    assert by["swa_width_euclid"]["verdict"] == "not reproduced"
    assert by["swa_line_minimum"]["mean"] == pytest.approx(0.31)
    assert by["asam_vs_sgd"]["per_seed"] == pytest.approx([0.0, 0.0, 0.5])
    assert by["lambda_below_2_over_lr[phase 1]"]["per_seed"] == pytest.approx([-10.0, -9.0, -8.0])
    assert by["lambda_below_2_over_lr[phase 3]"]["verdict"] == "not reproduced"  # 3000 - s > 2000
    assert by["lambda_rises[phase 1->2]"]["verdict"] == "reproduced"
    assert [c["claim"] for c in claims] == list(rp.CLAIM_ORDER)
    assert claims[2]["verdict"] == "partly reproduced (4 of 6)"
    assert set(rp.CSV_FIELDS) <= set(rows[0]) | {"per_seed"}


def test_every_claim_names_known_settings_and_optimizers():
    for claim in rp.CLAIMS.values():
        assert claim.effects and all(e.sign in (1, -1) and e.published for e in claim.effects)
        for name in claim.settings:
            assert name in rp.SETTINGS
    assert rp.parse_claims("all") == list(rp.CLAIM_ORDER)
    assert rp.parse_claims(["sam,swa"]) == ["swa", "sam"]  # canonical order, duplicates merged
    with pytest.raises(UserError, match="unknown claim 'flat'"):
        rp.parse_claims(["flat"])


# ---------------------------------------------------------------- flatness measures

def test_ray_width_on_hand_made_curves():
    d = np.linspace(0, 1, 11)
    rays = np.stack([0.2 + d**2, 0.2 + 0.5 * d**2])  # mean rise 0.75 d^2: crosses 0.1 at d = 0.365
    w, censored = ray_width(d, rays, 0.1)
    assert not censored and w == pytest.approx(0.3 + (0.1 - 0.0675) / (0.12 - 0.0675) * 0.1)
    assert ray_width(d, 0.01 * d[None, :], 0.1) == (1.0, True)  # never rises enough: censored at the end
    diverged = np.stack([0.2 + 0 * d, 0.2 + 0 * d])
    diverged[1, 4:] = np.nan
    assert ray_width(d, diverged, 0.1) == (pytest.approx(0.4), False)  # NaN counts as risen, never as flat


def test_line_minimum_refines_the_grid():
    a = np.linspace(-0.2, 1.2, 15)
    assert line_minimum(a, (a - 0.73) ** 2) == pytest.approx(0.73)
    assert line_minimum(a, a) == pytest.approx(-0.2)  # at the edge: the grid point
    assert math.isnan(line_minimum(a, np.full_like(a, np.nan)))


# ---------------------------------------------------------------- label noise

def test_label_noise_is_exact_seeded_and_train_only(tmp_path, monkeypatch):
    monkeypatch.setenv("LANDSCAPE_CACHE_DIR", str(tmp_path))
    clean = load_dataset("mnist1d", num_train=400, num_test=100)
    noisy = load_dataset("mnist1d", num_train=400, num_test=100, label_noise=0.25)
    again = load_dataset("mnist1d", num_train=400, num_test=100, label_noise=0.25)
    flipped = (clean.train.y != noisy.train.y)
    assert int(flipped.sum()) == 100  # exactly the fraction, each to another class
    assert (noisy.train.y == again.train.y).all() and (noisy.train.x == clean.train.x).all()
    assert (noisy.test.y == clean.test.y).all()
    assert noisy.spec["label_noise"] == 0.25 and "label_noise" not in clean.spec
    y = np.arange(1000) % 10
    assert (noisy_labels(y, 0.5, 1, 10) != noisy_labels(y, 0.5, 2, 10)).any()  # the data seed decides
    for bad in (1.0, -0.1, "x", True):
        with pytest.raises(UserError, match="label_noise"):
            load_dataset("mnist1d", num_train=40, num_test=10, label_noise=bad)


# ---------------------------------------------------------------- the plan and the budget

def _timing() -> dict:
    # A hand-made machine: every setting's model costs the same.
    from landscape.reproduce import _cost_key, _train_config

    models = {}
    for s in rp.SETTINGS.values():
        cfg = _train_config(s, 1.0, False, "cpu").resolved()
        models[_cost_key(cfg)] = {"step": 0.01, "forward_per_sample": 1e-5, "load": 1.0,
                                  "train": cfg.data_options["num_train"], "test": cfg.data_options["num_test"]}
    return {"startup": 10.0, "models": models}


def test_budget_drops_seeds_then_epochs(tmp_path):
    timing = _timing()
    full = rp.make_plan("all", tmp_path, timing=timing, device="cpu")
    assert full.seeds == rp.SEEDS and full.epoch_scale == 1 and full.budget is None
    assert full.predicted_seconds == pytest.approx(10 + sum(p.predicted_seconds for p in full.settings))
    roomy = rp.make_plan("all", tmp_path, timing=timing, budget=full.predicted_seconds + 1, device="cpu")
    assert roomy.seeds == rp.SEEDS and roomy.epoch_scale == 1
    fewer = rp.make_plan("all", tmp_path, timing=timing, budget=full.predicted_seconds * 0.7, device="cpu")
    assert rp.MIN_SEEDS <= fewer.seeds < rp.SEEDS and fewer.epoch_scale == 1
    assert fewer.predicted_seconds <= full.predicted_seconds * 0.7
    short = rp.make_plan("all", tmp_path, timing=timing, budget=full.predicted_seconds * 0.45, device="cpu")
    assert short.seeds == rp.MIN_SEEDS and rp.MIN_EPOCH_SCALE <= short.epoch_scale < 1
    assert all(p.config.epochs < p.setting.config["epochs"] for p in short.settings)
    assert "seeds" in short.budget["rule"]
    with pytest.raises(UserError, match="--budget 5: even 3 seeds"):
        rp.make_plan("all", tmp_path, timing=timing, budget=5, device="cpu")
    with pytest.raises(UserError, match="not both"):
        rp.make_plan("all", tmp_path, timing=timing, budget=100, seeds=3, device="cpu")


def test_scaled_settings_keep_their_epoch_fractions():
    from landscape.reproduce import Setting, _train_config

    s = Setting("x", "x", ("sgd", "swa"), {"epochs": 40, "swa_start": 21, "avg_start": 11})
    cfg = _train_config(s, 0.5, False, "cpu")
    assert (cfg.epochs, cfg.swa_start, cfg.avg_start) == (20, 10, 6)  # the same fractions of the run
    assert cfg.resolved().phases == "10:0.1,5:0.01,5:0.001"  # default phases scale by themselves


# ---------------------------------------------------------------- the whole chain, smoke scale

@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    import os

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("LANDSCAPE_CACHE_DIR")
    os.environ["LANDSCAPE_CACHE_DIR"] = str(cache)
    out = tmp_path_factory.mktemp("rep") / "rep"
    events: list[dict] = []
    plan = rp.plan_for(["swa", "stability"], out, quick=True, device="cpu")
    result = rp.reproduce(plan, on_event=events.append)
    yield out, plan, result, events
    if old is None:
        os.environ.pop("LANDSCAPE_CACHE_DIR", None)
    else:
        os.environ["LANDSCAPE_CACHE_DIR"] = old


def test_smoke_run_writes_every_file(smoke):
    out, plan, result, events = smoke
    assert [p.setting.name for p in plan.settings] == [rp.CLEAN, rp.NOISY]
    for name in ("claims.json", "claims.csv", "report.html", "reproduce.json", "clean/compare.h5", "noisy/compare.h5",
                 "clean/flatness/seed_0/rays.h5", "clean/flatness/seed_0/rays_euclid.h5",
                 "clean/flatness/seed_1/line.h5", "clean/flatness/seed_1/sharpness_b.h5",
                 "noisy/stability/seed_1/phase_3.h5"):
        assert (out / name).is_file(), name
    doc = json.loads((out / "claims.json").read_text())
    assert doc["rule"] == rp.RULE and doc["wall_seconds"] > 0
    assert [e["effect"] for e in doc["effects"]] == [e.key for c in ("swa", "stability") for e in rp.CLAIMS[c].effects]
    assert all(e["verdict"] in rp.VERDICTS and e["n"] == 2 for e in doc["effects"])
    assert len(doc["flatness"][rp.CLEAN]) == 2 and {"lambda_max_a", "width_b", "width_euclid_a", "alpha_min"} <= set(
        doc["flatness"][rp.CLEAN][0])
    st = doc["stability"][rp.NOISY][0]  # the quick run's 4 epochs: phases 2, 1, 1 at lr, lr/10, lr/100
    assert st["epoch"] == [2, 3, 4] and st["lr"] == pytest.approx([0.1, 0.01, 0.001])
    csv_lines = (out / "claims.csv").read_text().splitlines()
    assert csv_lines[0].split(",")[:3] == ["claim", "effect", "measures"] and len(csv_lines) == len(doc["effects"]) + 1
    html = (out / "report.html").read_text()
    first_table = html[html.index("<table"):html.index("</table>")]  # the verdicts come first
    assert "SWA beats SGD" in first_table and "published" in first_table and "reproduced" in first_table
    assert "smoke run" in html
    kinds = [e["event"] for e in events]
    assert kinds[0] == "setting" and "flatness" in kinds and "stability" in kinds and kinds[-1] == "report"


def test_smoke_run_resumes_after_a_kill(smoke, tmp_path):
    out, plan, first, _ = smoke
    # A run killed during the flatness analyses: a missing result file, a stale table.
    (out / "clean" / "flatness" / "seed_1" / "rays.h5").unlink()
    (out / "claims.json").unlink()
    events: list[dict] = []
    again = rp.reproduce(rp.plan_for(["swa", "stability"], out, quick=True, device="cpu"), on_event=events.append)
    trained = [e for e in events if e["event"] == "compare" and e["compare_event"] == "run"]
    assert not trained  # every training run was kept
    redone = [(e["seed"], e["analysis"]) for e in events if e["event"] == "flatness"]
    assert (1, "rays") in redone and (out / "clean" / "flatness" / "seed_1" / "rays.h5").is_file()
    assert [e["per_seed"] for e in again.effects] == [e["per_seed"] for e in first.effects]
    state = json.loads((out / "reproduce.json").read_text())
    assert len(state["sessions"]) == 2 and state["total_seconds"] >= first.total_seconds


def test_the_flatness_table_reads_the_files(smoke):
    from landscape.plots.flatness import collect, section

    out = smoke[0]
    f = collect(out / "clean" / "flatness" / "seed_0")
    assert [s.name for s in f.solutions] == ["sgd/final.pt", "swa/averaged.pt"] and f.norms == ["filter", "none"]
    assert all(np.isfinite([s.lambda_max, s.trace, s.sam, s.width("filter"), s.width("none")]).all()
               for s in f.solutions)
    items = section(out / "clean" / "flatness" / "seed_0")
    assert items[0] == "<h2>Flatness of the solutions</h2>" and "What the figures show" in items[-1]


def test_cli_plan_json_and_one_line_errors(tmp_path):
    env = {"PYTHONPATH": str(ROOT), "LANDSCAPE_CACHE_DIR": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"}
    run = lambda *a: subprocess.run([sys.executable, "-m", "cli.main", "reproduce", *a],  # noqa: E731
                                    capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    bad = run("flatness", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "unknown claim 'flatness'" in bad.stderr
    plan = run("stability", "--quick", "--plan", "--json", "--threads", "1", "--out", str(tmp_path / "p"))
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["plan"]["claims"] == ["stability"] and "expected run time" in plan.stderr
    assert not (tmp_path / "p").exists()  # --plan trains nothing
    helped = run("--help")
    assert "Examples" in helped.stdout and "landscape reproduce all" in helped.stdout
