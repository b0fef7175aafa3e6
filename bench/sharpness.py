"""Sharpness benchmark: top-5 eigenvalues + trace against PyHessian, and the HVP kinds.

Every ratio is against a baseline measured in the same process run, the sides interleaved
(round r runs them in order, round r+1 in reverse), each reported as min and median over the
rounds, with the thread count and the load average (start and end of every round) printed,
since the machine may be shared.

1. **top-5 + trace, cnn1d on MNIST-1D** (issue #16 goal 2; ``--samples``, default 1000 and
   200 samples of the train split): ``landscape.analyses.sharpness`` end to end (checkpoint,
   data, engine, Lanczos top-5 with tol 1e-4, Hutch++ trace with 30 products, the HDF5 file;
   ``--hvp auto`` with its choice cached, as every run after the first; the first run, which
   measures, is reported on its own) against two re-implementations of PyHessian (Yao et al.
   2020, ``pyhessian/hessian.py``) written from its code paths, both ``eigenvalues(top_n=5)``
   (power iteration, ``maxIter`` 100, ``tol`` 1e-3 on the relative change of the Rayleigh
   quotient, Gram-Schmidt deflation) then ``trace()`` (Hutchinson, Rademacher, ``maxIter`` 100,
   stop when the running mean changes by less than ``tol`` 1e-3 relative):

   * **full-batch mode** (``hessian(model, criterion, data=(x, y))``): the forward pass and
     ``loss.backward(create_graph=True)`` once, then every product is
     ``autograd.grad(grads, params, grad_outputs=v, retain_graph=True)``;
   * **data-loader mode** (``hessian(..., dataloader=...)``, batches of ``--loader-batch``,
     200 as in PyHessian's example): per product and per batch a forward pass,
     ``backward(create_graph=True)`` and ``autograd.grad(grads, params, v)``, weighted by the
     batch size.

   The model is a cnn1d trained here for ``--epochs`` epochs (SGD, the trainer's defaults),
   the data the analysis's own ``--subset`` (the same samples for every side). Also
   reported: HVPs per side, our eigenvalues against PyHessian's, and with ``--reference``
   both against our Lanczos at tol 1e-8 (untimed).

2. **HVP cost as a multiple of one gradient** (``--hvp-cost``): ``Objective`` on cnn1d /
   MNIST-1D (``--hvp-samples``), every kind, best of interleaved rounds, and the one
   ``"auto"`` keeps.

3. **top-5 on resnet20, CIFAR-shaped** (``--resnet20``, minutes): our Lanczos against the
   data-loader mode (batches of 128), as in the 2026-11-22 runs of bench/RESULTS.md.

    .venv/bin/python bench/sharpness.py [--samples 1000,200] [--rounds 3] [--threads N] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# PyHessian's loss.backward(create_graph=True) warns about a parameter<->grad reference cycle;
# the baselines clear .grad afterwards, as the warning asks.
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
warnings.filterwarnings("ignore", category=FutureWarning)

import importlib  # noqa: E402

from landscape.analyses.common import AnalysisOptions  # noqa: E402
from landscape.analyses.sharpness import SharpnessOptions, hvp_batch_size  # noqa: E402
from landscape.checkpoint import load_checkpoint  # noqa: E402
from landscape.data import load_dataset  # noqa: E402
from landscape.hessian import HVP_METHODS, Objective, lanczos  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.store import load_result  # noqa: E402

# The module (the package attribute of the same name is the function).
sharpness_module = importlib.import_module("landscape.analyses.sharpness")

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
KINDS = [m for m in HVP_METHODS if m != "auto"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


# --------------------------------------------------------------------------- PyHessian, re-implemented


class PyHessianStyle:
    """``pyhessian.hessian`` written again from its code: vectors are lists of per-parameter
    tensors, power iteration with Gram-Schmidt deflation, Hutchinson with a running-mean stop.

    ``batches`` of one element is the full-batch mode (``data=``): the gradient graph is built
    here, once, and every product goes back through it (``retain_graph=True``). Several is the
    data-loader mode (``dataloader=``): every product rebuilds each batch's graph.
    """

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], *, full_batch: bool):
        self.model = model.eval()
        self.criterion = nn.CrossEntropyLoss()
        self.batches = batches
        self.full_batch = full_batch
        self.hvps = 0
        self.iterations: list[int] = []  # power iterations per eigenvalue
        if full_batch:
            (inputs, targets), = batches
            loss = self.criterion(self.model(inputs), targets)
            loss.backward(create_graph=True)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # p.grad + 0.: a tensor of the graph, not the .grad slot itself
        self.grads = [0.0 if p.grad is None else p.grad + 0.0 for p in self.params]

    @staticmethod
    def group_product(xs, ys):
        return sum(torch.sum(x * y) for x, y in zip(xs, ys))

    def normalization(self, v):
        s = float(torch.sqrt(self.group_product(v, v)).cpu())
        return [vi / (s + 1e-6) for vi in v]

    def orthnormal(self, w, v_list):
        for v in v_list:
            w = [wi - self.group_product(w, v) * vi for wi, vi in zip(w, v)]
        return self.normalization(w)

    def hv(self, v):
        """``(v^T H v, H v)``, H over all the data."""
        self.hvps += 1
        if self.full_batch:
            hv = torch.autograd.grad(self.grads, self.params, grad_outputs=v, only_inputs=True, retain_graph=True)
            return float(self.group_product(hv, v).cpu()), hv
        num_data = 0
        thv = [torch.zeros_like(p) for p in self.params]
        for inputs, targets in self.batches:
            self.model.zero_grad()
            n = inputs.size(0)
            loss = self.criterion(self.model(inputs), targets)
            loss.backward(create_graph=True)
            grads = [0.0 if p.grad is None else p.grad + 0.0 for p in self.params]
            self.model.zero_grad()
            hv = torch.autograd.grad(grads, self.params, grad_outputs=v, only_inputs=True, retain_graph=False)
            thv = [t + h * float(n) + 0.0 for t, h in zip(thv, hv)]
            num_data += float(n)
        thv = [t / float(num_data) for t in thv]
        return float(self.group_product(thv, v).cpu()), thv

    def eigenvalues(self, max_iter: int = 100, tol: float = 1e-3, top_n: int = 5) -> list[float]:
        eigenvalues, eigenvectors = [], []
        while len(eigenvalues) < top_n:
            eigenvalue = None
            v = self.normalization([torch.randn(p.size(), device=p.device) for p in self.params])
            start = self.hvps
            for _ in range(max_iter):
                v = self.orthnormal(v, eigenvectors)
                self.model.zero_grad()
                tmp, hv = self.hv(v)
                v = self.normalization(hv)
                if eigenvalue is None:
                    eigenvalue = tmp
                elif abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
                    break
                else:
                    eigenvalue = tmp
            eigenvalues.append(eigenvalue)
            eigenvectors.append(v)
            self.iterations.append(self.hvps - start)
        return eigenvalues

    def trace(self, max_iter: int = 100, tol: float = 1e-3) -> list[float]:
        samples: list[float] = []
        trace = 0.0
        for _ in range(max_iter):
            self.model.zero_grad()
            v = [torch.randint_like(p, high=2) for p in self.params]
            for vi in v:
                vi[vi == 0] = -1
            _, hv = self.hv(v)
            samples.append(float(self.group_product(hv, v).cpu()))
            if abs(np.mean(samples) - trace) / (abs(trace) + 1e-6) < tol:
                return samples
            trace = float(np.mean(samples))
        return samples

    def release(self) -> None:
        for p in self.params:  # leave the model as found (backward(create_graph) filled .grad)
            p.grad = None
        self.grads = []


# --------------------------------------------------------------------------- case 1: top-5 + trace


@dataclass
class Side:
    name: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    hvps: int = 0
    eigenvalues: np.ndarray | None = None
    trace: float = math.nan
    trace_stderr: float = math.nan
    note: str = ""

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)


@dataclass
class TopKCase:
    samples: int
    sides: dict[str, Side]
    cold_s: float
    cold_note: str
    reference: np.ndarray | None
    loads: list[str]


def train_checkpoint(root: Path, epochs: int, seed: int, device: torch.device) -> Path:
    from landscape.train import TrainConfig, train

    train(TrainConfig(epochs=epochs, seed=seed, device=device.type), root / "run")
    return root / "run" / "sgd" / "final.pt"


def pyhessian_side(ckpt: Path, x: torch.Tensor, y: torch.Tensor, full_batch: bool, loader_batch: int,
                   seed: int, side: Side) -> None:
    c = load_checkpoint(ckpt)
    model = build_model(c.model["name"], **c.model["kwargs"])
    model.load_state_dict(c.state_dict)
    model.to(x.device)
    batches = [(x, y)] if full_batch else [(x[i : i + loader_batch], y[i : i + loader_batch])
                                           for i in range(0, len(x), loader_batch)]
    torch.manual_seed(seed)  # PyHessian draws from the global generator: the same work every round
    sync(x.device)
    t, c0 = time.perf_counter(), time.process_time()
    base = PyHessianStyle(model, batches, full_batch=full_batch)
    eig = base.eigenvalues(top_n=5)
    tr = base.trace()
    sync(x.device)
    wall, cpu = time.perf_counter() - t, time.process_time() - c0
    base.release()
    side.add(wall, cpu)
    side.hvps = base.hvps
    side.eigenvalues = np.sort(np.asarray(eig))[::-1]
    side.trace = float(np.mean(tr))
    side.note = f"power iterations {base.iterations}, Hutchinson {len(tr)}"


def ours_side(ckpt: Path, n: int, out: Path, device: torch.device, side: Side | None) -> tuple[float, dict]:
    so = SharpnessOptions(top_k=5, trace=True, sam=False)
    opts = AnalysisOptions(splits=("train",), subset=n, device=device.type, overwrite=True)
    sync(device)
    t, c0 = time.perf_counter(), time.process_time()
    sharpness_module.sharpness(ckpt, out, so, opts)
    sync(device)
    wall, cpu = time.perf_counter() - t, time.process_time() - c0
    r = load_result(out)
    info = r.extra["info"]
    info = json.loads(info.decode() if isinstance(info, bytes) else info)
    if side is not None:
        side.add(wall, cpu)
        steps = int(r.extra_attrs["eigenvalues"]["steps"])
        side.hvps = steps + int(r.extra_attrs["trace"]["matvecs"])
        side.eigenvalues = np.asarray(r.extra["eigenvalues"], dtype=np.float64)
        side.trace, side.trace_stderr = float(r.extra["trace"]), float(r.extra["trace_stderr"])
        side.note = (f"Lanczos {steps}, Hutch++ {int(r.extra_attrs['trace']['matvecs'])}; hvp {info['hvp_method']} "
                     f"({info.get('hvp_choice')}), batch {info['hvp_batch']}")
    return wall, info


def top_k_case(ckpt: Path, out: Path, n: int, rounds: int, loader_batch: int, seed: int, reference: bool,
               device: torch.device, console: Console) -> TopKCase:
    c = load_checkpoint(ckpt)
    data = load_dataset(**c.data, device=device)
    sub = data.train.subset(n, 0)  # what --subset n selects (AnalysisOptions.seed 0)
    x, y = sub.x.float(), sub.y
    # The first run of a workload measures the HVP kinds and caches the choice: time it on its
    # own, in a fresh cache, then every timed round is a later run.
    cold_s, info = ours_side(ckpt, n, out, device, None)
    timings = ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in info["hvp_timings_s"].items())
    cold_note = f"measured {info['hvp_method']} ({timings})"
    console.print(f"  {n} samples, first run (measures the HVP kinds): {cold_s:.2f} s, {cold_note}")
    sides = {"ours": Side("ours: sharpness top-5 + trace"),
             "full": Side("PyHessian full-batch mode (graph built once, retain_graph)"),
             "loader": Side(f"PyHessian data-loader mode (batches of {loader_batch})")}
    runs = {"ours": lambda: ours_side(ckpt, n, out, device, sides["ours"]),
            "full": lambda: pyhessian_side(ckpt, x, y, True, loader_batch, seed, sides["full"]),
            "loader": lambda: pyhessian_side(ckpt, x, y, False, loader_batch, seed, sides["loader"])}
    loads = []
    for r in range(rounds):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        before = load()
        for name in order:
            runs[name]()
        loads.append(f"{before} -> {load()}")
        console.print(f"  round {r + 1}: " + ", ".join(f"{name} {sides[name].wall[-1]:.2f} s" for name in runs)
                      + f" (load {loads[-1]})")
    ref = None
    if reference:  # untimed: the yardstick for both sides' eigenvalues
        c = load_checkpoint(ckpt)
        model = build_model(c.model["name"], **c.model["kwargs"])
        model.load_state_dict(c.state_dict)
        model.to(device)
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
        obj, w, _ = Objective.for_model(model, params, {}, x, y, batch_size=len(x), hvp_method="retained-graph")
        ref = np.sort(lanczos(obj.operator(w), 5, tol=1e-8, max_steps=200).eigenvalues)[::-1]
    return TopKCase(n, sides, cold_s, cold_note, ref, loads)


# --------------------------------------------------------------------------- case 2: HVP cost


@dataclass
class HvpCost:
    case: str
    samples: int
    batch: int
    grad_s: float
    times: dict[str, float]  # seconds per HVP of each kind
    auto: str


def prepared_model(name: str, kwargs: dict, x: torch.Tensor, seed: int, device: torch.device) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(name, **kwargs).to(device)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        loader = [x[i : i + 256] for i in range(0, len(x), 256)]
        update_bn(loader, model)
    return model.eval()


def objective(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int,
              method: str = "auto") -> tuple[Objective, torch.Tensor]:
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    constants = {k: v.detach().clone() for k, v in model.named_buffers()}
    obj, w, _ = Objective.for_model(model, params, constants, x, y, batch_size=batch, hvp_method=method)
    return obj, w


def hvp_cost(case: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             repeats: int) -> HvpCost:
    batch = hvp_batch_size(model, x, 2048, device)
    obj, w = objective(model, x, y, batch)
    v = torch.randn(w.shape, generator=torch.Generator().manual_seed(5)).to(w)
    obj.hvp(w, v)  # "auto" measures here (no cache: an Objective made directly has none)
    auto = obj.method
    kinds = [m for m in KINDS if obj.single_batch or m != "retained-graph"]  # the kept graph needs one batch
    forced = {m: Objective(obj.fn, obj.batches, hvp_method=m) for m in kinds}
    runs = {"grad": lambda: obj.value_and_grad(w)}
    runs.update({m: (lambda f=f: f.hvp(w, v)) for m, f in forced.items()})
    best = {name: math.inf for name in runs}
    for fn in runs.values():  # warm-up (builds the kept graph once)
        fn()
    for _ in range(repeats):  # interleaved rounds, best of each: the load drifts between rounds
        for name, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return HvpCost(case, len(x), batch, best.pop("grad"), best, auto)


# --------------------------------------------------------------------------- case 3: resnet20


def cifar_like(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8).float() / 255
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    y = torch.randint(0, 10, (n,), generator=gen)
    return ((x - mean) / std).to(device), y.to(device)


def resnet20_top_k(n: int, device: torch.device, seed: int) -> dict:
    x, y = cifar_like(n, seed + 1, device)
    model = prepared_model("resnet20", {"num_classes": 10, "input_shape": [3, 32, 32]}, x, seed, device)
    obj, w = objective(model, x, y, hvp_batch_size(model, x, 2048, device))
    t = time.perf_counter()
    res = lanczos(obj.operator(w), 5, tol=1e-4, generator=torch.Generator().manual_seed(seed))
    ours_s = time.perf_counter() - t
    base = PyHessianStyle(model, [(x[i : i + 128], y[i : i + 128]) for i in range(0, n, 128)], full_batch=False)
    torch.manual_seed(seed)
    t = time.perf_counter()
    values = base.eigenvalues(top_n=5)
    base_s = time.perf_counter() - t
    base.release()
    return {"ours_s": ours_s, "ours_hvps": obj.hvp_count, "ours": np.sort(res.eigenvalues)[::-1], "method": obj.method,
            "base_s": base_s, "base_hvps": base.hvps, "base": np.sort(values)[::-1]}


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", default="1000,200", help="MNIST-1D train samples, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per sample count")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of the cnn1d checkpoint")
    parser.add_argument("--loader-batch", type=int, default=200, help="PyHessian data-loader batch (its example: 200)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--reference", action="store_true", help="our Lanczos at tol 1e-8 as the yardstick (untimed)")
    parser.add_argument("--hvp-cost", action="store_true", help="also the HVP cost per kind (cnn1d)")
    parser.add_argument("--hvp-samples", type=int, default=1000)
    parser.add_argument("--resnet20", type=int, default=0, metavar="N",
                        help="also top-5 on resnet20 with N CIFAR-shaped images against the data-loader mode")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    console = Console(width=160)
    cpu = platform.processor() or platform.machine()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs (nproc), "
                  f"{cpu}, python {platform.python_version()}, load average {load()} (1/5/15 min)")

    with tempfile.TemporaryDirectory(prefix="bench-sharpness-") as tmp_dir:
        tmp = Path(tmp_dir)
        # The analysis caches its HVP choice under the user cache dir: a fresh one here, so
        # that the first run below measures, whatever this machine cached before.
        sharpness_module.cache_root = lambda: tmp / "cache"
        console.print(f"training the cnn1d checkpoint ({args.epochs} epochs) ...")
        ckpt = train_checkpoint(tmp, args.epochs, args.seed, device)
        cases = []
        for n in [int(s) for s in args.samples.split(",") if s]:
            console.print(f"top-5 + trace, cnn1d, {n} MNIST-1D samples, {args.rounds} interleaved rounds")
            cases.append(top_k_case(ckpt, tmp / f"sharpness_{n}.h5", n, args.rounds, args.loader_batch, args.seed,
                                    args.reference, device, console))

    costs = []
    if args.hvp_cost:
        data = load_dataset("mnist1d", device=device)
        x, y = data.train.x[: args.hvp_samples], data.train.y[: args.hvp_samples]
        m1 = prepared_model("cnn1d", {"num_classes": 10, "input_shape": [1, 40]}, x, args.seed, device)
        costs.append(hvp_cost("cnn1d / MNIST-1D", m1, x, y, device, args.rounds))
    resnet = resnet20_top_k(args.resnet20, device, args.seed) if args.resnet20 else None

    table = Table(title=f"bench/sharpness.py: {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
                        f"load {load()} at the end")
    for col in ("measurement", "wall min", "wall median", "CPU-s median", "HVPs", "baseline / ours (min, median)",
                "goal"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    for case in cases:
        ours = case.sides["ours"]
        for key, side in case.sides.items():
            goal = ""
            if key == "full":
                goal = ">= 2x" if case.samples >= 1000 else ">= 1x"
            ratio = "" if key == "ours" else (f"{min(side.wall) / min(ours.wall):.2f}x, "
                                              f"{statistics.median(side.wall) / statistics.median(ours.wall):.2f}x")
            table.add_row(f"{case.samples} samples: {side.name}", f"{min(side.wall):.2f} s",
                          f"{statistics.median(side.wall):.2f} s", f"{statistics.median(side.cpu):.2f}", str(side.hvps),
                          ratio, goal)
        table.add_row(f"{case.samples} samples: ours, first run (measures HVP kinds)", f"{case.cold_s:.2f} s", "", "",
                      "", f"{min(case.sides['full'].wall) / case.cold_s:.2f}x vs full-batch", "")
    console.print(table)
    for case in cases:
        console.print(f"[bold]{case.samples} samples[/bold] (load per round: {'; '.join(case.loads)})")
        console.print(f"  first run: {case.cold_note}")
        for side in case.sides.values():
            bar = f" +- {side.trace_stderr:.2g}" if math.isfinite(side.trace_stderr) else ""
            console.print(f"  {side.name}: lambda = {np.array2string(side.eigenvalues, precision=5)}, trace "
                          f"{side.trace:.4g}{bar}; {side.note}")
            if case.reference is not None:
                err = np.abs(side.eigenvalues - case.reference) / np.abs(case.reference)
                console.print("    relative error vs Lanczos tol 1e-8: " + ", ".join(f"{e:.1e}" for e in err))
        if case.reference is not None:
            console.print(f"  reference lambda = {np.array2string(case.reference, precision=6)}")
    for c in costs:
        console.print(f"HVP / gradient, {c.case}, {c.samples} samples (batch {c.batch}, grad {c.grad_s * 1e3:.1f} ms): "
                      + ", ".join(f"{m} {t * 1e3:.1f} ms ({t / c.grad_s:.2f}x)" for m, t in c.times.items())
                      + f"; auto keeps {c.auto}")
    if resnet:
        console.print(f"resnet20 top-5, {args.resnet20} images, against PyHessian's data-loader mode (batches of 128): "
                      f"ours {resnet['ours_s']:.1f} s / {resnet['ours_hvps']} HVPs ({resnet['method']}), baseline "
                      f"{resnet['base_s']:.1f} s / {resnet['base_hvps']} HVPs, "
                      f"ratio {resnet['base_s'] / resnet['ours_s']:.2f}x; "
                      f"ours {resnet['ours']}, baseline {resnet['base']}")


if __name__ == "__main__":
    main()
