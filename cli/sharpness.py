"""`landscape sharpness`: Hessian spectrum, trace, density, gradient noise and stability."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from cli.common import PointProgress, analysis_interrupted, analysis_options, bold, console, err_console, \
    on_interrupt, print_json, say
from cli.options import Evaluation, ModelAndData, Runtime, grouped
from landscape.errors import UserError

EPILOG = (
    "Examples:\n\n"
    "  landscape sharpness runs/x/sgd/final.pt --trace --density\n\n"
    "  landscape sharpness runs/x/swa/averaged.pt --noise --subset 1000 --smallest\n\n"
    "  landscape sharpness --along line.h5 --trace   (lambda_max and trace at every alpha of an interpolation)\n\n"
    "  landscape sharpness runs/x/sgd/final.pt --by-layer --trace --json\n\n"
    "  landscape sharpness model.pt --model mymodels:net --dataset mydata:splits --subset 1000"
)


@dataclasses.dataclass
class HessianEvaluation(Evaluation):
    """The common evaluation options, with the defaults of a Hessian of one split's loss."""

    split: Annotated[str, typer.Option("--split", help="The split whose loss is differentiated: train or test")] = \
        "train"
    batch_size: Annotated[int, typer.Option(
        help="Samples per batch (capped by memory for Hessian-vector products)")] = 2048
    seed: Annotated[int, typer.Option(help="Seed of the random probes and of --subset")] = 0


def register(app: typer.Typer) -> None:
    """Add the ``sharpness`` command to ``app``."""

    @app.command(epilog=EPILOG)
    @grouped
    def sharpness(
        checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint to measure (not needed with --along)")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Result file (.h5); default beside the checkpoint: sharpness_<name>.h5")] = None,
        top_k: Annotated[int, typer.Option(help="Number of top Hessian eigenvalues (Lanczos)")] = 5,
        smallest: Annotated[bool, typer.Option("--smallest", help="Also the k algebraically smallest eigenvalues (negative curvature)")] = False,
        lanczos_steps: Annotated[Optional[int], typer.Option(help="Most Lanczos steps (default max(40, 4k+20))")] = None,
        tol: Annotated[float, typer.Option(help="Lanczos stops when every wanted Ritz residual is below tol x |lambda_max|")] = 1e-4,
        trace: Annotated[bool, typer.Option("--trace", help="Estimate the Hessian trace, with a standard error")] = False,
        trace_method: Annotated[str, typer.Option(help="hutchpp (Hutch++), hutchinson (Rademacher) or both")] = "hutchpp",
        trace_probes: Annotated[int, typer.Option(help="Hutchinson probes / Hutch++ matvec budget")] = 30,
        density: Annotated[bool, typer.Option("--density", help="Spectral density by stochastic Lanczos quadrature")] = False,
        density_runs: Annotated[int, typer.Option(help="SLQ runs (random start vectors)")] = 4,
        density_steps: Annotated[int, typer.Option(help="Lanczos steps per SLQ run")] = 60,
        density_points: Annotated[int, typer.Option(help="Grid points of the density")] = 1000,
        density_sigma: Annotated[float, typer.Option(help="Gaussian broadening as a fraction of the spectrum width")] = 0.01,
        noise: Annotated[bool, typer.Option("--noise", help="Gradient noise: tr Sigma, tr(H Sigma) and the SGD stability condition (Wu et al. 2018)")] = False,
        noise_samples: Annotated[int, typer.Option(help="Samples for tr(H Sigma) (one HVP each; 0 = all, exact)")] = 64,
        stability_samples: Annotated[int, typer.Option(help="Samples for the per-sample Hessian covariance of the SGD condition (0 = all)")] = 256,
        batch_size_train: Annotated[Optional[int], typer.Option(help="SGD batch size, when the checkpoint's run config does not record it")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Learning rate, when the checkpoint does not record it")] = None,
        sam: Annotated[bool, typer.Option("--sam/--no-sam", help="SAM sharpness max_{|e|<=rho} L(w+e) - L(w)")] = True,
        rho: Annotated[float, typer.Option(help="SAM radius")] = 0.05,
        sam_steps: Annotated[int, typer.Option(help="Projected ascent steps after the first-order SAM perturbation")] = 5,
        by_layer: Annotated[bool, typer.Option("--by-layer", help="Top eigenvalue (and with --trace the trace) of each module's Hessian block")] = False,
        layer_steps: Annotated[int, typer.Option(help="Lanczos steps per layer")] = 20,
        along: Annotated[Optional[Path], typer.Option(help="An interpolate result: the quantities at every alpha of its line")] = None,
        hvp: Annotated[str, typer.Option(help="Hessian-vector products: auto (the fastest, measured once per model, device and batch shape and cached), grad-of-jvp, jvp-of-grad, double-backward or retained-graph (the gradient graph built once; one batch only)")] = "auto",
        source: ModelAndData = ModelAndData(),
        evaluation: HessianEvaluation = HessianEvaluation(),
        runtime: Runtime = Runtime(),
    ) -> None:
        """Hessian top eigenvalues, trace, spectral density, gradient noise; lambda_max against 2/lr."""
        from landscape.analyses.sharpness import SharpnessOptions, sharpness as run, summarize

        if checkpoint is None and along is None:
            raise UserError("give a checkpoint, or --along line.h5 (see landscape sharpness --help)")
        if checkpoint is not None and along is not None:
            raise UserError("give either a checkpoint or --along line.h5, not both")
        sopts = SharpnessOptions(
            top_k=top_k, smallest=smallest, lanczos_steps=lanczos_steps, tol=tol, trace=trace,
            trace_method=trace_method, trace_probes=trace_probes, density=density, density_runs=density_runs,
            density_steps=density_steps, density_points=density_points, density_sigma=density_sigma, noise=noise,
            noise_samples=noise_samples or None, stability_samples=stability_samples or None,
            batch_size_train=batch_size_train, lr=lr, sam=sam, rho=rho, sam_steps=sam_steps, by_layer=by_layer,
            layer_steps=layer_steps, along=str(along) if along else None, hvp=hvp)
        if out is None:
            out = default_output(checkpoint, along)
        display = err_console if evaluation.as_json else console
        unit = "points" if along else "Hessian-vector products"
        on_interrupt(analysis_interrupted)
        with PointProgress("sharpness", display, unit) as progress:
            path = run(checkpoint, out, sopts, analysis_options(source, evaluation, runtime, progress))
        summary = summarize(path)
        if evaluation.as_json:
            print_json(summary)
            return
        console.print(summary_table(summary))
        say("result: ", bold(path), f"  (draw it with: landscape plot {shlex.quote(str(path))})")


def default_output(checkpoint: Path | None, along: Path | None) -> Path:
    if along is not None:
        return along.with_name(f"sharpness_along_{along.stem}.h5")
    assert checkpoint is not None
    return checkpoint.with_name(f"sharpness_{checkpoint.stem}.h5")


def _f(value: Any, digits: int = 5) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pm(d: dict[str, Any] | None) -> str:
    if not d or d.get("value") is None:
        return "-"
    err = d.get("stderr")
    return _f(d["value"]) + (f" ± {_f(err, 2)}" if err is not None else "")


def summary_table(s: dict[str, Any]) -> Table:
    """The rich table of a :func:`landscape.analyses.sharpness.summarize` digest."""
    if "along" in s:
        return _along_table(s)
    table = Table(title=f"landscape sharpness -> {s['file']}  ({s.get('split')} loss)")
    table.add_column("quantity", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_column("note")
    add = table.add_row
    add("loss / accuracy", f"{_f(s.get('loss'))} / {_f(s.get('accuracy'), 4)}", "")
    add("‖∇L‖", _f(s.get("grad_norm")), "")
    for i, v in enumerate(s.get("eigenvalues", []), start=1):
        note = ""
        if i == 1 and "lanczos" in s:
            lz = s["lanczos"]
            note = f"Lanczos, {lz.get('steps')} steps" + ("" if lz.get("converged") else f", not converged to tol {lz.get('tol')}")
        add(f"λ{i}", _f(v), note)
    for i, v in enumerate(s.get("eigenvalues_smallest", []), start=1):
        add(f"λ_min{'' if i == 1 else f'+{i - 1}'}", _f(v), "negative curvature" if v is not None and v < 0 else "")
    if "trace" in s:
        add("trace", _pm(s["trace"]), s["trace"].get("method") or "")
    if "trace_hutchinson" in s:
        add("trace (Hutchinson)", _pm(s["trace_hutchinson"]), "")
    if "density" in s:
        d = s["density"]
        add("density", f"{d['points']} points", f"[{_f(d['range'][0])}, {_f(d['range'][1])}], ∫ = {_f(d['integral'], 6)}")
    lr = s.get("lr")
    stab = s.get("stability", {})
    if "gd_limit" in stab:
        g = stab["gd_limit"]
        add("2/lr", _f(g["value"]), f"lr = {_f(lr)}: GD {g.get('verdict')}")
    elif lr is None:
        add("2/lr", "-", "no lr in the checkpoint (give --lr)")
    if "heavy_ball_limit" in stab:
        h = stab["heavy_ball_limit"]
        add("(2+2β)/lr", _f(h["value"]), f"momentum β = {_f(s.get('momentum'))}: heavy ball {h.get('verdict')}")
    if "nesterov_limit" in stab:
        h = stab["nesterov_limit"]
        add("(2+2β)/(lr(1+2β))", _f(h["value"]), f"Nesterov, β = {_f(s.get('momentum'))}: {h.get('verdict')}")
    if "sam" in s:
        m = s["sam"]
        add("SAM sharpness", _f(m.get("ascent")), f"rho = {_f(m.get('rho'))}; first order {_f(m.get('first_order'))}")
    if "noise" in s:
        n = s["noise"]
        add("tr Σ", _f(n.get("trace_sigma")), "per-sample gradient covariance, 1/n")
        add("tr(HΣ)", _pm({"value": n.get("trace_h_sigma"), "stderr": n.get("trace_h_sigma_stderr")}),
            f"{n.get('samples')} samples")
        if n.get("alignment") is not None:
            add("alignment", _f(n["alignment"]), "tr(HΣ) / (tr H · tr Σ / d); 1 = isotropic noise")
        if n.get("smoothing") is not None:
            add("(lr²/2) tr(HΣ_B)", _f(n["smoothing"]), f"smoothing term, batch {s.get('train_batch_size')}")
    if "sgd_lambda_max" in stab:
        g = stab["sgd_lambda_max"]
        add("SGD λmax(A)", _f(g["value"]), f"Wu et al. 2018, ≤ 1 is stable: {g.get('verdict')}")
        add("non-uniformity s", _f(stab.get("nonuniformity")), f"limit {_f(stab.get('nonuniformity_limit'))}")
    elif "noise" in s:
        add("SGD condition", "-", "needs lr and the training batch size (--batch-size-train)")
    for layer in s.get("by_layer", []):
        note = f"{layer['numel']} params" + (f", trace {_f(layer.get('trace'))}" if layer.get("trace") is not None else "")
        add(f"  {layer['module']}", _f(layer["lambda_max"]), note)
    return table


def _along_table(s: dict[str, Any]) -> Table:
    table = Table(title=f"landscape sharpness --along -> {s['file']}")
    metrics = [m for m in ("loss", "lambda_max", "lambda_min", "trace", "sam_ascent", "trace_h_sigma",
                           "sgd_lambda_max") if m in s["along"]]
    table.add_column("alpha", justify="right")
    for m in metrics:
        table.add_column(m, justify="right")
    for i, a in enumerate(s["alpha"]):
        table.add_row(f"{a:g}", *[_f(s["along"][m][i]) for m in metrics])
    if s.get("gd_limit") is not None:
        table.caption = f"2/lr = {_f(s['gd_limit'])} (lr = {_f(s.get('lr'))})"
    return table
