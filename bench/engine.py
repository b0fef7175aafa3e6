"""Engine throughput against loss-landscape's real per-point code path, in one process.

The baseline is how tomgoldstein/loss-landscape scores a point (``plot_surface.py: crunch``),
re-implemented here from its code path (not copied):

* directions live in an HDF5 file, one dataset per tensor, read lazily: every point reads
  them, scales them in numpy (``direction * step``, float64 coordinates) and turns them into
  a tensor (``torch.Tensor``);
* ``--dir_type weights`` (their 2-D surfaces, ``net_plotter.set_weights``): every
  *parameter* becomes ``p.data = w + change``; BatchNorm running statistics stay those of
  the checkpoint (stale: they never recompute them);
* ``--dir_type states`` (their 1-D interpolations, ``net_plotter.set_states``): a deep copy
  of the base state_dict, ``change`` added to every entry (running statistics interpolated
  linearly, not recomputed), ``load_state_dict``;
* ``evaluation.eval_loss``: ``model.eval()``, ``torch.no_grad()``, a
  ``torch.utils.data.DataLoader`` pass (their ``--batch_size`` default 128, no shuffle)
  over a map-style Dataset, ``CrossEntropyLoss`` (batch mean) accumulated as
  ``loss.item() * batch_size`` and correct counts from ``outputs.max(1)``. For images a
  CIFAR10-style Dataset (uint8 HWC array -> PIL image -> ``ToTensor`` -> ``Normalize``); for
  MNIST-1D a TensorDataset.

Their ``plot_surface.py`` scores the train split only (the test line is commented out); here
both sides score both splits, the same work. Their loaders use 2 workers; on a 2-core
machine workers only compete with the compute threads, so ``--baseline-workers 0`` is the
default (the faster choice for them here).

Sides (interleaved block by block, the order rotated every block, one untimed warm-up point
each; setup is not in the per-point times):

* ``loss-landscape``: the baseline above (BatchNorm statistics stale);
* ``ours keep``: ``Engine(bn="keep")``: the same numbers as the baseline (asserted, 1e-4);
* ``ours recompute``: ``Engine(bn="recompute")``, the default of every command: BatchNorm
  statistics recomputed at every point from the whole train split (``landscape.batchnorm``;
  checked against an independent float64 computation of the definition on two points);
  ``--bn-batches 128,2048`` adds a side per group size (2048 = the old engine's BN batch).

Cases: cnn1d on MNIST-1D (4000 train / 1000 test; no BatchNorm): 41-point interpolation,
11x11 surface. resnet20 on CIFAR-shaped uint8 images (2048 train / 1024 test):
``--resnet-interp`` points of interpolation, a ``--resnet-surface`` squared surface.
``--resnet56-51x51`` (for a GPU machine): resnet56 on 50k + 10k CIFAR-shaped samples, a 51x51
surface for ours, the baseline timed on its first ``--baseline-points`` points.
On CUDA every "ours" side runs with both strategies (loop, vmap); ``--vmap`` does so on the CPU.

Reported per side: per-point wall and CPU seconds, min and median over blocks; per pair the
ratio of the medians, the ratio of the minima and the median of per-block ratios (both sides
saw the same moment of a shared machine). Also achieved GFLOP/s (forward FLOPs from
``torch.utils.flop_counter``; the BN pass counted) against a 2048x2048 float32 matmul
measured in the same run, and the baseline's data-path share. ``--profile`` prints where
one resnet20 point's time goes (torch.profiler), BN pass and scoring separately.

    .venv/bin/python bench/engine.py [--quick] [--skip-cnn1d] [--skip-resnet] [--threads N]
        [--device cuda] [--resnet56-51x51] [--bn-batches 128,2048] [--vmap] [--profile]
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.batchnorm import group_bounds  # noqa: E402
from landscape.data import Dataset, Split, load_dataset  # noqa: E402
from landscape.engine import Engine, StateLayout  # noqa: E402
from landscape.evaluate import evaluate  # noqa: E402
from landscape.models import build_model  # noqa: E402

TOL = 1e-4
FAILURES: list[str] = []
Results = dict[str, dict[str, np.ndarray]]


def check(ok: bool, message: str) -> None:
    if not ok:
        FAILURES.append(message)
        print(f"    CHECK FAILED: {message}", flush=True)


def load_line() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Best 2048x2048 float32 matmul rate seen, in wall-clock and in process-CPU GFLOP/s
    (measured at the start, before every case and at the end: one measurement can land in a
    busy moment of a shared machine)."""

    def __init__(self, device: torch.device, n: int = 2048):
        self.device, self.n, self.wall, self.cpu = device, n, 0.0, 0.0

    def measure(self, repeats: int = 5) -> None:
        a = torch.randn(self.n, self.n, device=self.device)
        b = torch.randn(self.n, self.n, device=self.device)
        for _ in range(2):
            a @ b
        sync(self.device)
        flops = 2 * self.n**3
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            a @ b
            sync(self.device)
            w, c = time.perf_counter() - w, time.process_time() - c
            self.wall = max(self.wall, flops / w / 1e9)
            if c > 0:
                self.cpu = max(self.cpu, flops / c / 1e9)


def forward_flops_per_sample(spec: dict, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec["name"], **spec["kwargs"]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:4].cpu())
    return counter.get_total_flops() / 4


# --------------------------------------------------------------------------- points


def init_model(spec: dict, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(spec["name"], **spec["kwargs"])


def filter_normalized_direction(layout: StateLayout, base: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Li et al. 2018 filter normalization on "weight" entries; zero on biases, BN parameters
    and buffers (their ``--xignore biasbn``: every tensor with dim <= 1 is left alone)."""
    d = torch.zeros_like(base)
    for e in layout.entries:
        if e.role != "weight":
            continue
        w = base[e.slice].view(e.shape[0], -1)
        r = torch.randn(w.shape, generator=gen)
        r = r * (w.norm(dim=1, keepdim=True) / (r.norm(dim=1, keepdim=True) + 1e-10))
        d[e.slice] = r.reshape(-1)
    return d


@dataclass
class Grid:
    """Points as the baseline sees them (coordinates along directions from a base) and as
    the engine does (flat vectors)."""

    kind: str  # "weights" (surface) or "states" (interpolation)
    base: dict[str, torch.Tensor]  # the base model's state_dict
    directions: list[torch.Tensor]  # flat, in the engine's layout
    coords: np.ndarray  # (P, len(directions)), float64 as their np.linspace
    points: torch.Tensor  # (P, dim) float32

    def __len__(self) -> int:
        return len(self.coords)


def surface_grid(spec: dict, n: int, seed: int = 0) -> Grid:
    model = init_model(spec, seed)
    layout = StateLayout(model.state_dict(), model)
    base = layout.flatten(model.state_dict())
    gen = torch.Generator().manual_seed(seed)
    dx = filter_normalized_direction(layout, base, gen)
    dy = filter_normalized_direction(layout, base, gen)
    xs = np.linspace(-1, 1, n)
    coords = np.array([(x, y) for x in xs for y in xs])
    c = torch.from_numpy(coords).float()
    points = base[None] + c[:, :1] * dx[None] + c[:, 1:] * dy[None]
    return Grid("weights", model.state_dict(), [dx, dy], coords, points)


def interpolation_grid(spec: dict, n: int) -> Grid:
    a, b = init_model(spec, 0), init_model(spec, 1)
    layout = StateLayout(a.state_dict(), a)
    pa, pb = layout.flatten(a.state_dict()), layout.flatten(b.state_dict())
    alphas = np.linspace(-0.5, 1.5, n)
    d = pb - pa
    points = pa[None] + torch.from_numpy(alphas).float()[:, None] * d[None]
    return Grid("states", a.state_dict(), [d], alphas[:, None], points)


# --------------------------------------------------------------------------- the baseline


class CifarLike(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10.__getitem__: uint8 HWC array -> PIL -> transform."""

    def __init__(self, data: np.ndarray, targets: np.ndarray, transform):
        self.data, self.targets, self.transform = data, [int(t) for t in targets], transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def eval_loss(net: nn.Module, criterion, loader, use_cuda: bool) -> tuple[float, float]:
    """Their evaluation.eval_loss, cross-entropy branch: batch-mean loss times batch size."""
    correct, total_loss, total = 0, 0.0, 0
    if use_cuda:
        net.cuda()
    net.eval()
    with torch.no_grad():
        for inputs, targets in loader:
            batch_size = inputs.size(0)
            total += batch_size
            if use_cuda:
                inputs, targets = inputs.cuda(), targets.cuda()
            outputs = net(inputs)
            total_loss += criterion(outputs, targets).item() * batch_size
            _, predicted = torch.max(outputs.data, 1)
            correct += predicted.eq(targets).sum().item()
    return total_loss / total, 100.0 * correct / total


class LossLandscape:
    """Per point: their set_weights / set_states from an HDF5 direction file, then eval_loss
    over a DataLoader per split. BatchNorm statistics are never recomputed."""

    def __init__(self, spec: dict, grid: Grid, datasets: dict, device: torch.device, workers: int, tmp: Path):
        self.device, self.grid = device, grid
        # As their crunch: the model is built on the CPU and eval_loss moves it to the GPU at
        # every point (net.cuda()); get_weights' references stay the CPU tensors.
        self.net = build_model(spec["name"], **spec["kwargs"])
        self.net.load_state_dict(grid.base)
        layout = StateLayout(grid.base, self.net)
        # Their direction file: one dataset per tensor (parameters for "weights", every
        # state_dict entry for "states"), float32 as written from torch.
        if grid.kind == "weights":
            names = [n for n, _ in self.net.named_parameters()]
            self.w = [p.data for p in self.net.parameters()]  # get_weights: references
        else:
            names = list(grid.base)
            self.states = copy.deepcopy(self.net.state_dict())
        self.file = h5py.File(tmp / f"directions_{id(self)}.h5", "w")
        for k, d in enumerate(grid.directions):
            full = layout.unflatten(d)
            group = self.file.create_group(f"{'xy'[k]}direction")
            for i, name in enumerate(names):
                value = full[name] if name in full else torch.zeros_like(grid.base[name])
                group.create_dataset(str(i), data=value.cpu().numpy())
        self.file.flush()
        self.directions = [[self.file[f"{'xy'[k]}direction"][str(i)] for i in range(len(names))]
                           for k in range(len(grid.directions))]  # lazy h5py datasets, as read_list
        self.criterion = nn.CrossEntropyLoss()
        self.loaders = {s: DataLoader(ds, batch_size=128, shuffle=False, num_workers=workers)
                        for s, ds in datasets.items()}

    def _changes(self, step: np.ndarray) -> list[np.ndarray]:
        # d * step on a lazily read HDF5 dataset: numpy reads it and scales it (float64 step).
        if len(self.directions) == 2:
            return [d0[()] * step[0] + d1[()] * step[1] for d0, d1 in zip(*self.directions)]
        return [d[()] * step[0] for d in self.directions[0]]

    def set_point(self, step: np.ndarray) -> None:
        changes = self._changes(step)
        if self.grid.kind == "weights":
            for p, w, d in zip(self.net.parameters(), self.w, changes):
                p.data = w + torch.Tensor(d).type(type(w))
        else:
            new_states = copy.deepcopy(self.states)
            for (_, v), d in zip(new_states.items(), changes):
                v.add_(torch.tensor(d).type(v.type()))
            self.net.load_state_dict(new_states)

    def run(self, idx: np.ndarray) -> Results:
        out = {s: {"loss": np.zeros(len(idx)), "accuracy": np.zeros(len(idx))} for s in self.loaders}
        for j, i in enumerate(idx):
            self.set_point(self.grid.coords[i])
            for s, loader in self.loaders.items():
                loss, acc = eval_loss(self.net, self.criterion, loader, self.device.type == "cuda")
                out[s]["loss"][j], out[s]["accuracy"][j] = loss, acc / 100.0
        return out


def data_path_cpu(datasets: dict, device: torch.device, workers: int, repeats: int = 2) -> float:
    """CPU seconds of the baseline's data path alone for one point (DataLoader + transforms, both splits)."""
    best = math.inf
    for _ in range(repeats):
        c = time.process_time()
        for ds in datasets.values():
            for inputs, targets in DataLoader(ds, batch_size=128, shuffle=False, num_workers=workers):
                if device.type == "cuda":
                    inputs, targets = inputs.cuda(), targets.cuda()
        best = min(best, time.process_time() - c)
    return best


# --------------------------------------------------------------------------- interleaving


@dataclass
class Side:
    name: str
    run: Callable[[np.ndarray], Results]
    flops_per_point: float
    strategy: str = ""
    wall: list[float] = field(default_factory=list)  # per-point seconds, one entry per block
    cpu: list[float] = field(default_factory=list)
    results: list[tuple[np.ndarray, Results]] = field(default_factory=list)

    def merged(self, n: int) -> Results:
        out: Results = {}
        for idx, res in self.results:
            for s, metrics in res.items():
                for m, v in metrics.items():
                    out.setdefault(s, {}).setdefault(m, np.full(n, np.nan))[idx] = v
        return out


def interleave(sides: list[Side], n_points: int, block: int, device: torch.device,
               limits: dict[str, int] | None = None) -> None:
    """Blocks of ``block`` points; within a block every side runs in turn, the order rotated
    from block to block. ``limits`` caps a side's points (the rest are skipped for it)."""
    limits = limits or {}
    for side in sides:  # warm-up: oneDNN primitive caches, allocator, DataLoader start
        side.run(np.array([0]))
    starts = list(range(0, n_points, block))
    for b, start in enumerate(starts):
        idx = np.arange(start, min(start + block, n_points))
        order = sides[b % len(sides):] + sides[: b % len(sides)]
        for side in order:
            use = idx[idx < limits.get(side.name, n_points)]
            if not len(use):
                continue
            sync(device)
            w, c = time.perf_counter(), time.process_time()
            res = side.run(use)
            sync(device)
            side.wall.append((time.perf_counter() - w) / len(use))
            side.cpu.append((time.process_time() - c) / len(use))
            side.results.append((use, res))
        line = "  ".join(f"{s.name} {s.wall[-1]:.3f}" for s in sides if s.wall)
        print(f"    block {b + 1}/{len(starts)} (s/pt wall): {line}", flush=True)


def max_diff(a: Results, b: Results, n: int) -> tuple[float, float]:
    dl = da = 0.0
    for s in a:
        la, lb = a[s]["loss"][:n], b[s]["loss"][:n]
        both_nan = np.isnan(la) & np.isnan(lb)
        dl = max(dl, float(np.max(np.where(both_nan, 0.0, np.abs(la - lb) / np.maximum(1.0, np.abs(lb))))))
        da = max(da, float(np.max(np.abs(a[s]["accuracy"][:n] - b[s]["accuracy"][:n]))))
    return dl, da


# --------------------------------------------------------------------------- independent BN reference


def pooled_bn_reference(spec: dict, state: dict, data: Dataset, bn_batch: int, device: torch.device) -> Results:
    """The BN definition written plainly: BatchNorm's own train-mode forward on the documented
    groups, each layer's input caught by a hook and reduced in float64; then plain evaluate."""
    model = build_model(spec["name"], **spec["kwargs"]).to(device)
    model.load_state_dict(state)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    sums = [None] * len(bns)

    def hook(i):
        def catch(_m, inp):
            x = inp[0].detach().double().transpose(0, 1).reshape(inp[0].shape[1], -1)
            s = (x.shape[1], x.sum(1), (x * x).sum(1))
            sums[i] = s if sums[i] is None else tuple(a + b for a, b in zip(sums[i], s))
        return catch

    hooks = [m.register_forward_pre_hook(hook(i)) for i, m in enumerate(bns)]
    model.eval()
    for m in bns:
        m.train()
    with torch.no_grad():
        for a, b in group_bounds(len(data.train), bn_batch):
            model(data.train.x[a:b])
    for h in hooks:
        h.remove()
    model.eval()
    with torch.no_grad():
        for m, (n, s1, s2) in zip(bns, sums):
            mean = s1 / n
            m.running_mean.copy_(mean)
            m.running_var.copy_((s2 - n * mean * mean) / (n - 1))
    out: Results = {}
    for s in ("train", "test"):
        split = getattr(data, s)
        loss, acc = evaluate(model, split.x, split.y, 256)
        out[s] = {"loss": np.array([loss]), "accuracy": np.array([acc])}
    return out


# --------------------------------------------------------------------------- cases


@dataclass
class Row:
    case: str
    side: str
    other: str  # the side it is compared with
    points: int
    ratio_median: float  # other's median s/pt over this side's (> 1: this side faster)
    ratio_min: float
    ratio_blocks: float  # median over blocks of the per-block ratio
    cpu_ratio_median: float
    wall_min: float
    wall_median: float
    cpu_median: float
    other_wall_median: float
    gflops: float  # this side, wall
    of_peak: float  # this side's CPU-time GFLOP rate / the matmul's (CPU) or wall / wall (CUDA)
    note: str = ""


ROWS: list[Row] = []
PEAK: Peak | None = None


def compare_pair(case: str, a: Side, b: Side, note: str = "") -> Row:
    """Row for side ``a`` against side ``b`` (ratios > 1: ``a`` is faster)."""
    blocks = [wb / wa for wa, wb in zip(a.wall, b.wall)] if len(a.wall) == len(b.wall) else [math.nan]
    med = lambda v: float(np.median(v))  # noqa: E731
    assert PEAK is not None
    use_cpu = PEAK.device.type == "cpu"
    gf = a.flops_per_point / med(a.wall) / 1e9
    of = (a.flops_per_point / min(a.cpu) / 1e9 / PEAK.cpu) if use_cpu else gf / PEAK.wall
    row = Row(case, a.name, b.name, sum(len(i) for i, _ in a.results), med(b.wall) / med(a.wall),
              min(b.wall) / min(a.wall), med(blocks), med(b.cpu) / med(a.cpu), min(a.wall), med(a.wall),
              med(a.cpu), med(b.wall), gf, of, note)
    ROWS.append(row)
    print(f"    {a.name} vs {b.name}: {row.ratio_median:.2f}x (median s/pt {row.wall_median:.3f} vs "
          f"{row.other_wall_median:.3f}; min {row.ratio_min:.2f}x; per block {row.ratio_blocks:.2f}x; "
          f"CPU time {row.cpu_ratio_median:.2f}x)", flush=True)
    return row


def ours_side(name: str, spec: dict, data: Dataset, device: torch.device, grid: Grid, flops: float,
              **kwargs) -> tuple[Side, Engine]:
    engine = Engine(spec, data, device=device, **kwargs)
    points = grid.points.to(device)
    return Side(name, lambda idx: engine.evaluate(points[torch.from_numpy(idx).to(device)]), flops,
                engine.strategy), engine


def run_case(case: str, spec: dict, data: Dataset, base_sets: dict, grid: Grid, device: torch.device, args,
             flops: float, bn: bool, block: int, base_points: int | None = None) -> None:
    """The baseline and our sides on ``grid`` (interleaved), checks and rows."""
    print(f"  {case}: {len(grid)} points ({load_line()})", flush=True)
    if PEAK is not None:
        PEAK.measure()
    samples = len(data.train) + len(data.test)
    strategies = ["loop", "vmap"] if device.type == "cuda" or args.vmap else ["auto"]
    with tempfile.TemporaryDirectory() as tmp:
        baseline = LossLandscape(spec, grid, base_sets, device, args.baseline_workers, Path(tmp))
        sides = [Side("loss-landscape", baseline.run, flops * samples)]
        for strategy in strategies:
            tag = "" if strategy == "auto" else f" [{strategy}]"
            side, _ = ours_side(f"ours keep{tag}", spec, data, device, grid, flops * samples,
                                                    bn="keep", strategy=strategy, batch_size=args.batch_size)
            sides.append(side)
            if bn:
                for bb in args.bn_batches:
                    label = f"ours recompute{tag}" + ("" if bb == 128 else f" bn_batch={bb}")
                    side, _ = ours_side(label, spec, data, device, grid,
                                                     flops * (samples + len(data.train)), bn="recompute",
                                                     bn_batch=bb, strategy=strategy, batch_size=args.batch_size)
                    sides.append(side)
        limits = {"loss-landscape": base_points} if base_points else None
        interleave(sides, len(grid), block, device, limits)
        baseline.file.close()
    n_base = base_points or len(grid)
    base = sides[0].merged(len(grid))
    share = data_path_cpu(base_sets, device, args.baseline_workers) / float(np.median(sides[0].cpu))
    print(f"    baseline data path (DataLoader + transforms): {share:.0%} of its CPU time per point")
    for side in sides[1:]:
        ours = side.merged(len(grid))
        if " keep" in side.name:
            dl, da = max_diff(ours, base, n_base)
            one_sample = 1.0 / min(len(data.train), len(data.test))
            check(dl <= TOL and (da <= TOL or da <= one_sample * 1.0001),
                  f"{case}: {side.name} and the baseline differ: loss {dl:.2e}, accuracy {da:.2e}")
            compare_pair(case, side, sides[0], f"= baseline to {dl:.0e} (loss); data path {share:.0%} of baseline")
        else:
            bb = int(side.name.split("bn_batch=")[1]) if "bn_batch=" in side.name else 128
            layout = StateLayout(grid.base, build_model(spec["name"], **spec["kwargs"]))
            worst = 0.0
            for i in (0, len(grid) // 2):
                state = {**layout.unflatten(grid.points[i].to(device)), **layout.integer_state}
                ref = pooled_bn_reference(spec, state, data, bb, device)
                for s in ("train", "test"):
                    worst = max(worst, abs(ours[s]["loss"][i] - ref[s]["loss"][0]) / max(1.0, abs(ref[s]["loss"][0])))
            check(worst <= TOL, f"{case}: {side.name} differs from the float64 BN reference by {worst:.1e}")
            keep = next(s for s in sides if s.name == side.name.replace("recompute", "keep").split(" bn_batch")[0])
            compare_pair(case, side, sides[0], f"BN recomputed (= float64 reference to {worst:.0e}); "
                                               "baseline keeps stale BN")
            row = compare_pair(case, side, keep, "cost of BN recompute: the goal is <= 2.0x keep's time")
            row.note += f" -> recompute/keep = {1 / row.ratio_median:.2f}x (median), {1 / row.ratio_min:.2f}x (min)"


def cnn1d_case(args, device: torch.device) -> None:
    data = load_dataset("mnist1d", device=device, num_train=4000, num_test=1000)
    spec = {"name": "cnn1d", "kwargs": {"num_classes": 10, "input_shape": list(data.input_shape)}}
    base_sets = {s: TensorDataset(getattr(data, s).x.cpu(), getattr(data, s).y.cpu()) for s in ("train", "test")}
    flops = forward_flops_per_sample(spec, data.train.x)
    n_interp, n_surf = (9, 3) if args.quick else (41, 11)
    print(f"cnn1d on mnist1d (4000/1000), {flops / 1e6:.2f} MFLOP/sample", flush=True)
    run_case(f"cnn1d interpolation {n_interp}", spec, data, base_sets, interpolation_grid(spec, n_interp), device,
             args, flops, bn=False, block=4)
    run_case(f"cnn1d surface {n_surf}x{n_surf}", spec, data, base_sets, surface_grid(spec, n_surf), device, args,
             flops, bn=False, block=8)


def cifar_like(n_train: int, n_test: int, device: torch.device, seed: int = 0):
    """uint8 HWC images (as torchvision's CIFAR10.data) and the same data as a landscape Dataset."""
    rng = np.random.default_rng(seed)

    def images(n: int) -> np.ndarray:  # a low-frequency pattern plus noise, real uint8 pixels
        low = rng.normal(128, 40, (n, 4, 4, 3))
        up = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2) + rng.normal(0, 25, (n, 32, 32, 3))
        return np.clip(up, 0, 255).astype(np.uint8)

    xtr, xte = images(n_train), images(n_test)
    ytr, yte = rng.integers(0, 10, n_train), rng.integers(0, 10, n_test)
    mean = tuple(float(v) for v in (xtr.reshape(-1, 3).astype(np.float64).mean(0) / 255))
    std = tuple(float(v) for v in (xtr.reshape(-1, 3).astype(np.float64).std(0) / 255))
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    base_sets = {"train": CifarLike(xtr, ytr, transform), "test": CifarLike(xte, yte, transform)}
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        # ToTensor (HWC uint8 -> CHW float /255) then Normalize, batched: the same float32 ops.
        t = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().float().div_(255).sub_(m).div_(s)
        return Split(t.to(device), torch.from_numpy(y.astype(np.int64)).to(device))

    data = Dataset("cifar-like", split(xtr, ytr), split(xte, yte), 10, (3, 32, 32), "none",
                   {"name": "cifar-like"}, mean, std)
    return data, base_sets


def resnet_case(args, device: torch.device, name: str, n_train: int, n_test: int, n_surf: int, n_interp: int,
                base_points: int | None) -> None:
    data, base_sets = cifar_like(n_train, n_test, device)
    spec = {"name": name, "kwargs": {"num_classes": 10, "input_shape": [3, 32, 32]}}
    flops = forward_flops_per_sample(spec, data.train.x)
    print(f"{name} on CIFAR-shaped uint8 images ({n_train}/{n_test}), {flops / 1e6:.1f} MFLOP/sample, "
          f"engine batch_size {args.batch_size}", flush=True)
    if n_interp:
        run_case(f"{name} interpolation {n_interp}", spec, data, base_sets, interpolation_grid(spec, n_interp), device,
                 args, flops, bn=True, block=1, base_points=base_points)
    if n_surf:
        run_case(f"{name} surface {n_surf}x{n_surf}", spec, data, base_sets, surface_grid(spec, n_surf), device, args,
                 flops, bn=True, block=1, base_points=base_points)
    if args.profile:
        profile_point(spec, data, device, surface_grid(spec, 2).points[1])


def profile_point(spec: dict, data: Dataset, device: torch.device, point: torch.Tensor, top: int = 12) -> None:
    """Where one point's time goes with bn="recompute": the BN pass and the scoring pass."""
    from torch.profiler import ProfilerActivity, profile

    engine = Engine(spec, data, device=device, bn="recompute")
    engine.evaluate(point)  # warm-up
    point = point.to(device)
    for what, fn in (("BN pass over the train split", lambda: engine._recompute_bn()),
                     ("scoring (train + test)", lambda: [engine._score(s) for s in engine._data.values()])):
        with torch.inference_mode():
            engine._load(point)
            if what.startswith("scoring"):
                engine._recompute_bn()
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                fn()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        print(f"  profile, {what}: {total / 1e6:.2f} s self CPU time (all threads' ops, one point)")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
            print(f"    {e.key:45s} {e.self_cpu_time_total / 1e6:7.3f} s  {e.self_cpu_time_total / total:6.1%}  "
                  f"calls {e.count}")


# --------------------------------------------------------------------------- main


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(peak: Peak, device: torch.device) -> None:
    from rich.console import Console
    from rich.table import Table

    unit = "of matmul (CPU time)" if device.type == "cpu" else "of matmul"
    table = Table(title=f"engine vs loss-landscape ({device}, {torch.get_num_threads()} threads; matmul 2048^2 fp32: "
                        f"{peak.wall:.0f} GFLOP/s wall, {peak.cpu:.0f} GFLOP per CPU-s). Ratios > 1: the side "
                        "is faster than the one it is compared with.")
    for col in ("case", "side", "vs", "pts", "s/pt median", "s/pt min", "vs s/pt median", "ratio (medians)",
                "ratio (minima)", "ratio (per block, median)", "CPU-time ratio", "GFLOP/s", unit, "note"):
        table.add_column(col, justify="left" if col in ("case", "side", "vs", "note") else "right")
    for r in ROWS:
        table.add_row(r.case, r.side, r.other, str(r.points), f"{r.wall_median:.3f}", f"{r.wall_min:.3f}",
                      f"{r.other_wall_median:.3f}", f"{r.ratio_median:.2f}x", f"{r.ratio_min:.2f}x",
                      f"{r.ratio_blocks:.2f}x", f"{r.cpu_ratio_median:.2f}x", f"{r.gflops:.1f}", f"{r.of_peak:.0%}",
                      r.note)
    Console(width=300).print(table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--resnet56-51x51", dest="resnet56", action="store_true",
                    help="resnet56, 50k+10k CIFAR-shaped samples, 51x51 surface (for a GPU machine)")
    ap.add_argument("--baseline-points", type=int, default=8,
                    help="with --resnet56-51x51: points the baseline is timed on")
    ap.add_argument("--baseline-workers", type=int, default=0, help="DataLoader workers of the baseline")
    ap.add_argument("--batch-size", type=int, default=2048, help="engine batch_size (the scoring cap)")
    ap.add_argument("--bn-batches", default="128",
                    help="comma-separated bn_batch values, one 'ours recompute' side each (128 = the default)")
    ap.add_argument("--resnet-interp", type=int, default=9, help="points of the resnet20 interpolation (0: skip)")
    ap.add_argument("--resnet-surface", type=int, default=5, help="side of the resnet20 surface (0: skip)")
    ap.add_argument("--vmap", action="store_true", help="on the CPU also time the vmap strategy")
    ap.add_argument("--profile", action="store_true", help="profile one resnet20 point with bn=recompute")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice, one per core)")
    ap.add_argument("--skip-cnn1d", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--quick", action="store_true", help="few points, to check the script runs")
    args = ap.parse_args(argv)
    args.bn_batches = [int(v) for v in args.bn_batches.split(",") if v.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.resnet_interp, args.resnet_surface = min(args.resnet_interp, 3), min(args.resnet_surface, 2)

    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: torch {torch.__version__}, nproc {os.cpu_count()} "
          f"({machine()}), {torch.get_num_threads()} torch threads, device {device}")
    print(f"uptime: {load_line()}")
    global PEAK
    peak = PEAK = Peak(device)
    peak.measure(7)
    print(f"matmul 2048x2048 float32: {peak.wall:.1f} GFLOP/s ({peak.cpu:.1f} GFLOP per CPU-s)", flush=True)
    t0 = time.perf_counter()
    if args.resnet56:
        resnet_case(args, device, "resnet56", 50_000, 10_000, 51, 0, args.baseline_points)
    else:
        if not args.skip_cnn1d:
            cnn1d_case(args, device)
        if not args.skip_resnet:
            resnet_case(args, device, "resnet20", 2048, 1024, args.resnet_surface, args.resnet_interp, None)
    peak.measure(7)
    print(f"matmul 2048x2048 float32, best seen: {peak.wall:.1f} GFLOP/s ({peak.cpu:.1f} GFLOP per CPU-s); "
          f"total {time.perf_counter() - t0:.0f} s")
    print(f"uptime at the end: {load_line()}")
    print()
    summary(peak, device)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed:\n  " + "\n  ".join(FAILURES))
        sys.exit(1)


if __name__ == "__main__":
    main()
