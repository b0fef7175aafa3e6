"""Sharpness benchmark: HVP cost, and top-5 Hessian eigenvalues against a PyHessian-style loop.

Two measurements, each against a baseline measured in the same process, interleaved:

1. **HVP cost as a multiple of one gradient** (goal <= 2.5x): ``landscape.hessian.Objective``
   on resnet20 / CIFAR-shaped data and on cnn1d / MNIST-1D (4000 samples): wall time of
   ``value_and_grad`` against ``hvp`` with each product (reverse-over-forward
   ``grad-of-jvp``, forward-over-reverse ``jvp-of-grad``, double backward), best of R
   interleaved rounds, and which one ``"auto"`` keeps.

2. **Top-5 eigenvalues** on resnet20 with a CIFAR-shaped random subset (2048 images by
   default): ours (Lanczos with full reorthogonalization, ``tol`` 1e-4 on the Ritz
   residuals, HVPs batched by memory, ``"auto"`` product) against a faithful
   re-implementation of PyHessian's ``hessian.eigenvalues`` (Yao et al. 2020,
   ``pyhessian/hessian.py``): power iteration, ``maxIter=100``, stop when the relative change
   of the Rayleigh quotient is below ``tol`` (their default 1e-3), deflation by
   Gram-Schmidt against the eigenvectors found so far, and ``dataloader_hv_product``: one
   batch at a time, ``loss.backward(create_graph=True)`` then ``autograd.grad(grads, params,
   grad_outputs=v)``, weighted by batch size. Reported: the eigenvalues of both, their
   largest relative difference (goal 1e-3), HVPs used, and the wall-time ratio (goal >= 3x).

Both see the same model (seeded init, BatchNorm statistics recomputed on the data with
``update_bn``, then eval mode) and the same data (seeded uint8 images normalized with the
CIFAR-10 channel statistics, random labels).

    .venv/bin/python bench/sharpness.py [--quick] [--device cuda] [--samples N]

``--quick``: 64 images for the eigenvalues and 128 for the HVP cost, for a 2-core CPU.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.optim.swa_utils import update_bn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# PyHessian's loss.backward(create_graph=True) warns about a parameter<->grad reference cycle;
# the baseline clears .grad afterwards, as the warning asks.
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

from landscape.analyses.sharpness import hvp_batch_size  # noqa: E402
from landscape.data import load_dataset  # noqa: E402
from landscape.hessian import Objective, lanczos  # noqa: E402
from landscape.models import build_model  # noqa: E402

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cifar_like(n: int, seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8).float() / 255
    mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    y = torch.randint(0, 10, (n,), generator=gen)
    return ((x - mean) / std).to(device), y.to(device)


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


# --------------------------------------------------------------------------- PyHessian-style baseline


class PyHessianStyle:
    """``pyhessian.hessian`` (full_dataset mode) re-implemented: list-of-tensors vectors,
    double backward one batch at a time, power iteration with Gram-Schmidt deflation."""

    def __init__(self, model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]):
        self.model = model.eval()
        self.criterion = nn.CrossEntropyLoss()
        self.batches = batches
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.hvps = 0
        self.iterations: list[int] = []  # power iterations per eigenvalue

    @staticmethod
    def group_product(xs, ys):
        return sum(torch.sum(x * y) for x, y in zip(xs, ys))

    def normalization(self, v):
        s = torch.sqrt(self.group_product(v, v)).cpu().item()
        return [vi / (s + 1e-6) for vi in v]

    def orthnormal(self, w, v_list):
        for v in v_list:
            w = [wi - self.group_product(w, v) * vi for wi, vi in zip(w, v)]  # group_add(w, v, -dot)
        return self.normalization(w)

    def dataloader_hv_product(self, v):
        device = self.params[0].device
        num_data = 0
        thv = [torch.zeros(p.size(), device=device) for p in self.params]
        for inputs, targets in self.batches:
            self.model.zero_grad()
            n = inputs.size(0)
            outputs = self.model(inputs)
            loss = self.criterion(outputs, targets)
            loss.backward(create_graph=True)
            grads = [0.0 if p.grad is None else p.grad + 0.0 for p in self.params]
            self.model.zero_grad()
            hv = torch.autograd.grad(grads, self.params, grad_outputs=v, only_inputs=True, retain_graph=False)
            thv = [t + h * float(n) + 0.0 for t, h in zip(thv, hv)]
            num_data += float(n)
        thv = [t / float(num_data) for t in thv]
        self.hvps += 1
        return self.group_product(thv, v).cpu().item(), thv

    def eigenvalues(self, max_iter: int = 100, tol: float = 1e-3, top_n: int = 5, seed: int = 0):
        torch.manual_seed(seed)
        eigenvalues, eigenvectors = [], []
        while len(eigenvalues) < top_n:
            eigenvalue = None
            v = self.normalization([torch.randn(p.size(), device=p.device) for p in self.params])
            start = self.hvps
            for _ in range(max_iter):
                v = self.orthnormal(v, eigenvectors)
                self.model.zero_grad()
                tmp, hv = self.dataloader_hv_product(v)
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
            print(f"  baseline eigenvalue {len(eigenvalues)}: {eigenvalue:.6g} after {self.iterations[-1]} "
                  "power iterations", flush=True)
        for p in self.params:  # leave the model as found (backward(create_graph) filled .grad)
            p.grad = None
        return eigenvalues


# --------------------------------------------------------------------------- cases


METHODS = ("grad-of-jvp", "jvp-of-grad", "double-backward")


@dataclass
class HvpCost:
    case: str
    samples: int
    batch: int
    grad_s: float
    times: dict[str, float]  # seconds per HVP of each kind
    auto: str


def hvp_cost(case: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
             repeats: int) -> HvpCost:
    batch = hvp_batch_size(model, x, 2048, device)
    obj, w = objective(model, x, y, batch)
    v = torch.randn(w.shape, generator=torch.Generator().manual_seed(5)).to(w)
    obj.hvp(w, v)  # "auto" measures here
    auto = obj.method
    forced = {m: Objective(obj.fn, obj.batches, hvp_method=m) for m in METHODS}
    runs = {"grad": lambda: obj.value_and_grad(w)}
    runs.update({m: (lambda m=m: forced[m].hvp(w, v)) for m in METHODS})
    best = {name: math.inf for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    # Interleaved rounds, best of each: on a shared machine the load drifts between rounds.
    for _ in range(repeats):
        for name, fn in runs.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - t)
    return HvpCost(case, len(x), batch, best.pop("grad"), best, auto)


@dataclass
class TopK:
    samples: int
    ours: np.ndarray
    ours_s: float
    ours_hvps: int
    ours_method: str
    ours_batch: int
    base: np.ndarray
    base_s: float
    base_hvps: int
    base_batch: int
    base_tol: float
    base_iterations: list[int]
    reference: np.ndarray | None = None  # our Lanczos to a much tighter tolerance
    reference_hvps: int = 0

    @property
    def rel_diff(self) -> float:
        return float(np.max(np.abs(self.ours - self.base) / np.abs(self.base)))

    def error(self, values: np.ndarray) -> float:
        assert self.reference is not None
        return float(np.max(np.abs(values - self.reference) / np.abs(self.reference)))


def top_k(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device, k: int, tol: float,
          base_tol: float, base_batch: int, base_iter: int, seed: int, reference: bool) -> TopK:
    batch = hvp_batch_size(model, x, 2048, device)
    obj, w = objective(model, x, y, batch)
    sync(device)
    t = time.perf_counter()
    res = lanczos(obj.operator(w), k, tol=tol, generator=torch.Generator().manual_seed(seed))
    sync(device)
    ours_s = time.perf_counter() - t
    ours_hvps = obj.hvp_count
    print(f"  ours: {np.sort(res.eigenvalues)[::-1]} in {ours_s:.1f} s, {ours_hvps} HVPs", flush=True)
    ref, ref_hvps = None, 0
    if reference:  # not timed: the accuracy yardstick for both
        before = obj.hvp_count
        tight = lanczos(obj.operator(w), k, tol=1e-7, max_steps=150, generator=torch.Generator().manual_seed(seed + 1))
        ref, ref_hvps = np.sort(tight.eigenvalues)[::-1], obj.hvp_count - before
        print(f"  reference (tol 1e-7): {ref}, {ref_hvps} HVPs", flush=True)

    base = PyHessianStyle(model, [(x[i : i + base_batch], y[i : i + base_batch])
                                  for i in range(0, len(x), base_batch)])
    sync(device)
    t = time.perf_counter()
    values = base.eigenvalues(max_iter=base_iter, tol=base_tol, top_n=k, seed=seed)
    sync(device)
    base_s = time.perf_counter() - t
    return TopK(len(x), np.sort(res.eigenvalues)[::-1], ours_s, ours_hvps, obj.method, batch,
                np.sort(np.asarray(values))[::-1], base_s, base.hvps, base_batch, base_tol, base.iterations,
                ref, ref_hvps)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 images for the eigenvalues, 128 for the HVP cost")
    parser.add_argument("--samples", type=int, default=None, help="images for the top-5 comparison (default 2048)")
    parser.add_argument("--hvp-samples", type=int, default=None, help="images for the HVP cost (default 2048)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--tol", type=float, default=1e-4, help="our Lanczos tolerance")
    parser.add_argument("--baseline-tol", type=float, default=1e-3, help="PyHessian's tol (their default 1e-3)")
    parser.add_argument("--baseline-batch", type=int, default=128, help="PyHessian's data-loader batch")
    parser.add_argument("--baseline-max-iter", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-cnn1d", action="store_true")
    parser.add_argument("--skip-hvp-cost", action="store_true", help="only the top-k comparison")
    parser.add_argument("--skip-top-k", action="store_true", help="only the HVP cost")
    parser.add_argument("--reference", action="store_true",
                        help="also run our Lanczos to tol 1e-7 (untimed) and report both methods' errors against it")
    args = parser.parse_args()
    device = torch.device(args.device)
    n_top = args.samples or (64 if args.quick else 2048)
    n_hvp = args.hvp_samples or (128 if args.quick else 2048)
    console = Console(width=150)
    cpu = platform.processor() or platform.machine()
    console.print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, {cpu}, "
                  f"python {platform.python_version()}")

    costs = []
    spec = ("resnet20", {"num_classes": 10, "input_shape": [3, 32, 32]})
    if not args.skip_hvp_cost:
        x, y = cifar_like(n_hvp, args.seed, device)
        model = prepared_model(*spec, x, args.seed, device)
        costs.append(hvp_cost("resnet20 / CIFAR-shaped", model, x, y, device, args.repeats))
        console.print(f"HVP cost {costs[-1]}")
    if not args.skip_cnn1d and not args.skip_hvp_cost:
        data = load_dataset("mnist1d", device=device)
        m1 = prepared_model("cnn1d", {"num_classes": 10, "input_shape": [1, 40]}, data.train.x, args.seed, device)
        costs.append(hvp_cost("cnn1d / MNIST-1D", m1, data.train.x, data.train.y, device, args.repeats))
        console.print(f"HVP cost {costs[-1]}")

    top = None
    if not args.skip_top_k:
        x, y = cifar_like(n_top, args.seed + 1, device)
        model = prepared_model(*spec, x, args.seed, device)
        top = top_k(model, x, y, device, args.top_k, args.tol, args.baseline_tol, args.baseline_batch,
                    args.baseline_max_iter, args.seed, args.reference)
        console.print(f"ours      {top.ours}  {top.ours_s:.1f} s, {top.ours_hvps} HVPs ({top.ours_method}, batch "
                      f"{top.ours_batch})")
        console.print(f"PyHessian {top.base}  {top.base_s:.1f} s, {top.base_hvps} HVPs (double backward, batch "
                      f"{top.base_batch}, tol {top.base_tol:g})")

    for c in costs:
        others = ", ".join(f"{m} {t / c.grad_s:.2f}x" for m, t in c.times.items())
        console.print(f"ratio HVP/grad {c.case} ({c.samples} samples): auto={c.auto} "
                      f"{c.times[c.auto] / c.grad_s:.2f}x ({others}) goal <= 2.5x")
    if top is not None:
        console.print(f"ratio top-{args.top_k} wall time PyHessian/ours: {top.base_s / top.ours_s:.2f}x (goal >= 3x); "
                      f"max relative eigenvalue difference {top.rel_diff:.2e} (goal <= 1e-3)")
    if top is not None and top.reference is not None:
        console.print(f"max relative error vs the tol-1e-7 reference: ours {top.error(top.ours):.2e}, "
                      f"baseline {top.error(top.base):.2e}")

    table = Table(title=f"bench/sharpness.py ({'quick' if args.quick else 'full'}, {device})")
    for col in ("measurement", "ours", "baseline", "ratio", "goal"):
        table.add_column(col, justify="left" if col == "measurement" else "right")
    for c in costs:
        chosen = c.times[c.auto]
        table.add_row(f"HVP / gradient, {c.case}, {c.samples} samples (batch {c.batch})",
                      f"{chosen:.3f} s ({c.auto})", f"grad {c.grad_s:.3f} s", f"{chosen / c.grad_s:.2f}x", "<= 2.5x")
        for m, t in c.times.items():
            if m != c.auto:
                table.add_row(f"  (other product: {m})", f"{t:.3f} s", "", f"{t / c.grad_s:.2f}x", "")
    if top is not None:
        _top_rows(table, top, args.top_k)
    console.print(table)


def _top_rows(table: Table, top: TopK, k: int) -> None:
    table.add_row(f"top-{k} eigenvalues, resnet20, {top.samples} CIFAR-shaped images",
                  f"{top.ours_s:.1f} s, {top.ours_hvps} HVPs", f"{top.base_s:.1f} s, {top.base_hvps} HVPs",
                  f"{top.base_s / top.ours_s:.2f}x", ">= 3x")
    table.add_row("  max relative eigenvalue difference", f"{top.rel_diff:.1e}", "", "", "<= 1e-3")
    if top.reference is not None:
        table.add_row(f"  max relative error vs Lanczos tol 1e-7 ({top.reference_hvps} HVPs)",
                      f"{top.error(top.ours):.1e}", f"{top.error(top.base):.1e}", "", "")
    table.add_row("  baseline power iterations per eigenvalue", "", ", ".join(map(str, top.base_iterations)),
                  "", f"tol {top.base_tol:g}")
    table.add_row("  lambda_1 .. lambda_k (ours)", ", ".join(f"{v:.5g}" for v in top.ours), "", "", "")
    table.add_row("  lambda_1 .. lambda_k (baseline)", ", ".join(f"{v:.5g}" for v in top.base), "", "", "")


if __name__ == "__main__":
    main()
