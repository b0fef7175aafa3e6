"""Engine throughput against the loss-landscape reference way of evaluating, in one process.

The baseline is how tomgoldstein/loss-landscape scores a point (``plot_surface.py`` ->
``net_plotter.set_states`` -> ``evaluation.eval_loss``), re-implemented here faithfully:

* per point ``model.load_state_dict(state)`` then ``model.eval()``;
* a ``torch.utils.data.DataLoader`` pass (batch 128, no shuffle) over a map-style Dataset;
  for images a CIFAR10-style Dataset (``Image.fromarray`` on uint8 HWC arrays) with the
  torchvision pipeline ``Compose([ToTensor(), Normalize(mean, std)])`` applied per sample,
  as their ``cifar10/dataloader.py`` does; for MNIST-1D a TensorDataset;
* ``CrossEntropyLoss`` (batch mean) accumulated as ``loss.item() * batch_size``, accuracy from
  ``outputs.max(1)``, under ``torch.no_grad()``.

It is given the points precomputed (its own ``set_states`` would also deep-copy the state and
add the directions per point), and ``--baseline-workers 0`` by default: on a 2-core machine
DataLoader workers only compete with the compute threads (their default is 2).

Cases (same points and data for both; losses asserted equal to 1e-4 (relative above 1), accuracies
to 1e-4 or one sample per point (an argmax near-tie may flip when float sums are reordered); a
failed check is printed and makes the exit status 1 after the summary):
  cnn1d on MNIST-1D (4000 train / 1000 test): 41-point interpolation, 11x11 surface
  resnet20 on CIFAR-shaped random uint8 images (2048 train / 1024 test), bn=keep:
    41-point interpolation, 11x11 surface; plus bn=recompute (ours only, checked against
    update_bn + evaluate on two points) on the interpolation.
``--full`` makes the surfaces 21x21. ``--resnet56-51x51`` (for a GPU machine): resnet56 on
50k train + 10k test CIFAR-shaped samples, a 51x51 surface for ours and the baseline timed on
its first ``--baseline-points`` points (its points/s extrapolated; equality on those points).

Also ours-only rows with ``bf16=True`` (their deviation from float32 is reported, not asserted).
On CUDA both engine strategies (loop, vmap) get a row.

Reported: points/s (wall clock), the ratio ours/baseline, the same ratio in process CPU time,
and achieved GFLOP/s (forward FLOPs from ``torch.utils.flop_counter``; the BN recompute pass
counted too) as a fraction of a 2048x2048 float32 matmul measured in the same run (best of
the runs before and after the cases). Baseline and ours alternate over ``--blocks`` blocks of
the points so both see the same machine; setup (model, loaders / Engine) is included.

    .venv/bin/python bench/engine.py [--full] [--threads 1] [--device cuda] [--resnet56-51x51] [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.data import Dataset, Split, load_dataset  # noqa: E402
from landscape.engine import Engine, StateLayout  # noqa: E402
from landscape.evaluate import evaluate  # noqa: E402
from landscape.models import build_model  # noqa: E402

TOL = 1e-4
FAILURES: list[str] = []


def check(ok: bool, message: str) -> None:
    if not ok:
        FAILURES.append(message)
        print(f"    CHECK FAILED: {message}", flush=True)


# --------------------------------------------------------------------------- timing helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Peak:
    """Best 2048x2048 float32 matmul rate seen, in wall-clock and in process-CPU GFLOP/s.

    Measured at the start, before every case and at the end: on a shared machine a single
    measurement can land in a busy moment. The CPU-time rate is the robust one under load
    (with one thread it is the rate of the core while we had it)."""

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


PEAK: Peak | None = None


def forward_flops_per_sample(spec: dict, x: torch.Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model = build_model(spec["name"], **spec["kwargs"]).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x[:4].cpu())
    return counter.get_total_flops() / 4


# --------------------------------------------------------------------------- points


def init_point(spec: dict, seed: int) -> tuple[StateLayout, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(spec["name"], **spec["kwargs"])
    layout = StateLayout(model.state_dict(), model)
    return layout, layout.flatten(model.state_dict())


def filter_normalized_direction(layout: StateLayout, base: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Li et al. 2018 filter normalization on "weight" entries; zero on bias/bn/buffers."""
    d = torch.zeros_like(base)
    for e in layout.entries:
        if e.role != "weight":
            continue
        w = base[e.slice].view(e.shape[0], -1)
        r = torch.randn(w.shape, generator=gen)
        r = r * (w.norm(dim=1, keepdim=True) / (r.norm(dim=1, keepdim=True) + 1e-10))
        d[e.slice] = r.reshape(-1)
    return d


def interpolation_points(a: torch.Tensor, b: torch.Tensor, n: int = 41) -> torch.Tensor:
    alphas = torch.linspace(-0.5, 1.5, n)
    return (1 - alphas)[:, None] * a[None] + alphas[:, None] * b[None]


def surface_points(layout: StateLayout, base: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    dx = filter_normalized_direction(layout, base, gen)
    dy = filter_normalized_direction(layout, base, gen)
    xs = torch.linspace(-1, 1, n)
    gx, gy = torch.meshgrid(xs, xs, indexing="ij")  # row-major over (x, y)
    return base[None] + gx.reshape(-1, 1) * dx[None] + gy.reshape(-1, 1) * dy[None]


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
    """loss-landscape's evaluation.eval_loss (CrossEntropyLoss branch)."""
    correct = 0
    total_loss = 0.0
    total = 0
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
            loss = criterion(outputs, targets)
            total_loss += loss.item() * batch_size
            _, predicted = torch.max(outputs.data, 1)
            correct += predicted.eq(targets).sum().item()
    return total_loss / total, 100.0 * correct / total


class Clock:
    """Wall and process-CPU seconds, accumulated over several timed blocks."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu = device, 0.0, 0.0

    def __enter__(self):
        sync(self.device)
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.wall += time.perf_counter() - self._w
        self.cpu += time.process_time() - self._c


class Baseline:
    """Per point: load_state_dict, eval, a DataLoader pass per split (loss-landscape's crunch loop)."""

    def __init__(self, spec: dict, layout: StateLayout, datasets: dict, device: torch.device, workers: int):
        self.layout, self.device = layout, device
        self.net = build_model(spec["name"], **spec["kwargs"]).to(device)
        self.criterion = nn.CrossEntropyLoss()
        self.loaders = {s: DataLoader(ds, batch_size=128, shuffle=False, num_workers=workers)
                        for s, ds in datasets.items()}

    def run(self, points: torch.Tensor) -> dict:
        out = {s: {"loss": np.zeros(len(points)), "accuracy": np.zeros(len(points))} for s in self.loaders}
        for i, p in enumerate(points):
            state = {**self.layout.unflatten(p), **self.layout.integer_state}
            self.net.load_state_dict(state)
            self.net.eval()
            for s, loader in self.loaders.items():
                loss, acc = eval_loss(self.net, self.criterion, loader, self.device.type == "cuda")
                out[s]["loss"][i] = loss
                out[s]["accuracy"][i] = acc / 100.0
        return out


def data_path_cpu(datasets: dict, device: torch.device, workers: int, repeats: int = 2) -> float:
    """CPU seconds of the baseline's data path alone for one point (DataLoader + transforms, both splits)."""
    best = math.inf
    for _ in range(repeats):
        clock = Clock(device)
        with clock:
            for ds in datasets.values():
                for inputs, targets in DataLoader(ds, batch_size=128, shuffle=False, num_workers=workers):
                    if device.type == "cuda":
                        inputs, targets = inputs.cuda(), targets.cuda()
        best = min(best, clock.cpu)
    return best


def concat(parts: list[dict]) -> dict:
    return {s: {m: np.concatenate([p[s][m] for p in parts]) for m in parts[0][s]} for s in parts[0]}


def interleaved(spec: dict, layout: StateLayout, data: Dataset, base_sets: dict, points: torch.Tensor,
                device: torch.device, workers: int, base_points: int | None, blocks: int,
                **engine_kwargs) -> tuple[dict, Clock, dict, Clock, Engine]:
    """Time the baseline and ours on the same points, alternating blocks of points so that both
    see the same machine (other processes on a shared machine come and go). Setup included."""
    bclock, oclock = Clock(device), Clock(device)
    with bclock:
        baseline = Baseline(spec, layout, base_sets, device, workers)
    with oclock:
        engine = Engine(spec, data, device=device, **engine_kwargs)
    nb = len(points) if base_points is None else min(base_points, len(points))
    base_parts, ours_parts = [], []
    edges = np.linspace(0, len(points), min(blocks, len(points)) + 1).astype(int)
    for lo, hi in zip(edges[:-1], edges[1:]):
        if lo < nb:
            with bclock:
                base_parts.append(baseline.run(points[lo : min(hi, nb)]))
        with oclock:
            ours_parts.append(engine.evaluate(points[lo:hi]))
        print(f"    .. {hi}/{len(points)} points: baseline {bclock.wall:.0f} s, ours {oclock.wall:.0f} s", flush=True)
    return concat(base_parts), bclock, concat(ours_parts), oclock, engine


def max_diff(a: dict, b: dict, n: int | None = None) -> tuple[float, float]:
    dl = da = 0.0
    for s in a:
        la, lb = a[s]["loss"][:n], b[s]["loss"][:n]
        both_nan = np.isnan(la) & np.isnan(lb)
        dl = max(dl, float(np.max(np.where(both_nan, 0.0, np.abs(la - lb) / np.maximum(1.0, np.abs(lb))))))
        da = max(da, float(np.max(np.abs(a[s]["accuracy"][:n] - b[s]["accuracy"][:n]))))
    return dl, da


# --------------------------------------------------------------------------- cases


@dataclass
class Row:
    case: str
    points: int
    samples: int  # per point, scored
    ours_s: float
    base_s: float | None  # None: ours only
    ours_cpu: float
    base_cpu: float | None
    flops_per_point: float
    strategy: str
    note: str = ""
    base_points: int | None = None  # baseline timed on fewer points (extrapolated)
    diff: tuple[float, float] | None = None
    extra: dict = field(default_factory=dict)

    @property
    def ours_rate(self) -> float:
        return self.points / self.ours_s

    @property
    def base_rate(self) -> float | None:
        if self.base_s is None:
            return None
        return (self.base_points or self.points) / self.base_s

    @property
    def ratio(self) -> float | None:
        return None if self.base_rate is None else self.ours_rate / self.base_rate

    @property
    def cpu_ratio(self) -> float | None:
        """Baseline CPU-seconds per point over ours (robust to other processes' load)."""
        if self.base_cpu is None:
            return None
        return (self.base_cpu / (self.base_points or self.points)) / (self.ours_cpu / self.points)


def compare(rows: list[Row], name: str, spec: dict, data: Dataset, base_sets: dict, layout: StateLayout,
            points: torch.Tensor, device: torch.device, flops: float, args, base_points: int | None = None,
            **engine_kwargs) -> dict:
    """Baseline vs ours on ``points`` (asserted equal); appends rows, returns ours' results."""
    print(f"  {name}: {len(points)} points ...", flush=True)
    if PEAK is not None:
        PEAK.measure()
    strategies = [engine_kwargs.pop("strategy", "auto")]
    if device.type == "cuda" and strategies == ["auto"]:
        strategies = ["loop", "vmap"]
    for strategy in strategies:
        base, bclock, ours, oclock, engine = interleaved(
            spec, layout, data, base_sets, points, device, args.baseline_workers, base_points, args.blocks,
            strategy=strategy, **engine_kwargs)
        n = len(base[next(iter(base))]["loss"])
        dl, da = max_diff(ours, base, n)
        samples = sum(engine.sizes.values())
        one_sample = 1.0 / min(engine.sizes.values())
        check(dl <= TOL and (da <= TOL or da <= one_sample * 1.0001),
              f"{name}: ours and the baseline differ: loss {dl:.2e}, accuracy {da:.2e}")
        label = name if len(strategies) == 1 else f"{name} [{strategy}]"
        rows.append(Row(label, len(points), samples, oclock.wall, bclock.wall, oclock.cpu, bclock.cpu,
                        flops * samples, engine.strategy, base_points=n if n < len(points) else None,
                        diff=(dl, da)))
        r = rows[-1]
        r.extra["data_share"] = data_path_cpu(base_sets, device, args.baseline_workers) / (bclock.cpu / n)
        print(f"    baseline data path (DataLoader + transforms): {r.extra['data_share']:.0%} of its CPU time")
        print(f"    baseline {r.base_rate:8.2f} pts/s   ours ({engine.strategy}) {r.ours_rate:8.2f} pts/s   "
              f"ratio {r.ratio:5.2f}x (CPU time {r.cpu_ratio:5.2f}x)   max rel dloss {dl:.1e}  max dacc {da:.1e}",
              flush=True)
    return ours


def bf16_row(rows: list[Row], name: str, spec: dict, data: Dataset, points: torch.Tensor, device: torch.device,
             flops: float, fp32: dict, **engine_kwargs) -> None:
    """Ours with bf16=True (not comparable to 1e-4: its deviation from float32 is reported)."""
    print(f"  {name} (bf16=True, ours only) ...", flush=True)
    clock = Clock(device)
    with clock:
        engine = Engine(spec, data, device=device, bf16=True, **engine_kwargs)
        ours = engine.evaluate(points)
    dl, da = max_diff(ours, fp32)
    samples = sum(engine.sizes.values())
    rows.append(Row(f"{name} (bf16)", len(points), samples, clock.wall, None, clock.cpu, None, flops * samples,
                    engine.strategy, note=f"ours only; vs float32: {dl:.1e} / {da:.1e}"))
    print(f"    ours {rows[-1].ours_rate:8.2f} pts/s   vs float32: max rel dloss {dl:.1e}  max dacc {da:.1e}",
          flush=True)


def cnn1d_case(rows: list[Row], args, device: torch.device) -> None:
    data = load_dataset("mnist1d", device=device, num_train=4000, num_test=1000)
    spec = {"name": "cnn1d", "kwargs": {"num_classes": 10, "input_shape": list(data.input_shape)}}
    base_sets = {s: TensorDataset(getattr(data, s).x.cpu(), getattr(data, s).y.cpu()) for s in ("train", "test")}
    layout, a = init_point(spec, 0)
    _, b = init_point(spec, 1)
    flops = forward_flops_per_sample(spec, data.train.x)
    n_interp, n_surf = (9, 3) if args.quick else (41, args.surface)
    print(f"cnn1d on mnist1d (4000/1000), {flops / 1e6:.2f} MFLOP/sample", flush=True)
    pts = interpolation_points(a, b, n_interp)
    fp32 = compare(rows, f"cnn1d interpolation {n_interp}", spec, data, base_sets, layout, pts, device, flops, args)
    if args.bf16:
        bf16_row(rows, f"cnn1d interpolation {n_interp}", spec, data, pts, device, flops, fp32)
    compare(rows, f"cnn1d surface {n_surf}x{n_surf}", spec, data, base_sets, layout,
            surface_points(layout, a, n_surf), device, flops, args)


def cifar_like(n_train: int, n_test: int, device: torch.device, seed: int = 0):
    """uint8 HWC images (as torchvision's CIFAR10.data) and the same data as a landscape Dataset."""
    rng = np.random.default_rng(seed)
    # Smooth-ish random images (a low-frequency pattern plus noise), real uint8 pixels.
    def images(n: int) -> np.ndarray:
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


def resnet_case(rows: list[Row], args, device: torch.device, name: str, n_train: int, n_test: int,
                n_surf: int, interp: bool, base_points: int | None) -> None:
    data, base_sets = cifar_like(n_train, n_test, device)
    spec = {"name": name, "kwargs": {"num_classes": 10, "input_shape": [3, 32, 32]}}
    layout, a = init_point(spec, 0)
    _, b = init_point(spec, 1)
    flops = forward_flops_per_sample(spec, data.train.x)
    bs = args.batch_size
    print(f"{name} on CIFAR-shaped uint8 images ({n_train}/{n_test}), {flops / 1e6:.1f} MFLOP/sample, "
          f"engine batch_size {bs}", flush=True)
    if interp:
        n_interp = 9 if args.quick else 41
        pts = interpolation_points(a, b, n_interp)
        fp32 = compare(rows, f"{name} interpolation {n_interp} (bn=keep)", spec, data, base_sets, layout, pts,
                       device, flops, args, bn="keep", batch_size=bs)
        if args.bf16:
            bf16_row(rows, f"{name} interpolation {n_interp} (bn=keep)", spec, data, pts, device, flops, fp32,
                     bn="keep", batch_size=bs)
        # bn=recompute: ours only (the reference code has no BN recompute); checked on two points.
        print(f"  {name} interpolation {n_interp} (bn=recompute, ours only) ...", flush=True)
        clock = Clock(device)
        with clock:
            engine = Engine(spec, data, device=device, bn="recompute", batch_size=bs)
            ours = engine.evaluate(pts)
        for i in (0, n_interp // 2):
            model = build_model(spec["name"], **spec["kwargs"]).to(device)
            model.load_state_dict({**layout.unflatten(pts[i].to(device)), **layout.integer_state})
            update_bn([data.train.x[j : j + bs] for j in range(0, len(data.train), bs)], model)
            for s in ("train", "test"):
                loss, acc = evaluate(model, getattr(data, s).x, getattr(data, s).y, 256)
                check(abs(ours[s]["loss"][i] - loss) <= TOL * max(1, abs(loss))
                      and abs(ours[s]["accuracy"][i] - acc) <= max(TOL, 1.0001 / engine.sizes[s]),
                      f"{name} bn=recompute point {i} {s}: ours {ours[s]['loss'][i]} / {ours[s]['accuracy'][i]}, "
                      f"update_bn+evaluate {loss} / {acc}")
        samples = sum(engine.sizes.values())
        rows.append(Row(f"{name} interpolation {n_interp} (bn=recompute)", n_interp, samples, clock.wall, None,
                        clock.cpu, None, flops * (samples + n_train), engine.strategy,
                        note="ours only; = update_bn+evaluate (2 pts)"))
        print(f"    ours {rows[-1].ours_rate:8.2f} pts/s", flush=True)
    n = 3 if args.quick else n_surf
    compare(rows, f"{name} surface {n}x{n} (bn=keep)", spec, data, base_sets, layout, surface_points(layout, a, n),
            device, flops, args, base_points=base_points, bn="keep", batch_size=bs)


# --------------------------------------------------------------------------- main


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(rows: list[Row], peak: Peak, device: torch.device) -> None:
    from rich.console import Console
    from rich.table import Table

    use_cpu = device.type == "cpu"
    ref = peak.cpu if use_cpu else peak.wall
    table = Table(title=f"engine vs loss-landscape reference ({device}, {torch.get_num_threads()} threads; "
                        f"matmul 2048^2 fp32: {peak.wall:.0f} GFLOP/s wall, {peak.cpu:.0f} GFLOP per CPU-s)")
    for col in ("case", "pts", "samples/pt", "baseline pts/s", "ours pts/s", "ratio", "CPU-time ratio",
                "ours GFLOP/s", "of matmul" + (" (CPU time)" if use_cpu else ""), "baseline GFLOP/s",
                "baseline data path", "strategy",
                "max rel dloss / dacc"):
        table.add_column(col, justify="left" if col in ("case", "strategy") else "right")
    for r in rows:
        gf = r.flops_per_point * r.ours_rate / 1e9
        frac = (r.flops_per_point * r.points / r.ours_cpu / 1e9 if use_cpu else gf) / ref
        bgf = "" if r.base_rate is None else f"{r.flops_per_point * r.base_rate / 1e9:.1f}"
        base_rate = "" if r.base_rate is None else f"{r.base_rate:.2f}" + (
            f" ({r.base_points} pts)" if r.base_points else "")
        table.add_row(r.case, str(r.points), str(r.samples), base_rate, f"{r.ours_rate:.2f}",
                      "" if r.ratio is None else f"{r.ratio:.2f}x",
                      "" if r.cpu_ratio is None else f"{r.cpu_ratio:.2f}x", f"{gf:.1f}", f"{frac:.0%}", bgf,
                      f"{r.extra['data_share']:.0%}" if "data_share" in r.extra else "",
                      r.strategy, r.note if r.diff is None else f"{r.diff[0]:.1e} / {r.diff[1]:.1e}")
    Console(width=240).print(table)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--full", action="store_true", help="21x21 surfaces instead of 11x11")
    ap.add_argument("--resnet56-51x51", dest="resnet56", action="store_true",
                    help="resnet56, 50k+10k CIFAR-shaped samples, 51x51 surface (for a GPU machine)")
    ap.add_argument("--baseline-points", type=int, default=8,
                    help="with --resnet56-51x51: points the baseline is timed on (extrapolated)")
    ap.add_argument("--baseline-workers", type=int, default=0, help="DataLoader workers of the baseline")
    ap.add_argument("--batch-size", type=int, default=512,
                    help="engine batch_size for the ResNet cases (the BN recompute batches; default 512 as "
                         "landscape.evaluate.recompute_bn)")
    ap.add_argument("--blocks", type=int, default=8,
                    help="baseline and ours alternate over this many blocks of points (fair on a shared machine)")
    ap.add_argument("--no-bf16", dest="bf16", action="store_false",
                    help="skip the ours-only bf16=True rows (their deviation from float32 is reported)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads (default: torch's choice, one per core). On a machine shared "
                         "with other jobs, 1 thread avoids the stalls of a parallel region waiting for a "
                         "descheduled thread; the CPU-time ratio is then the robust number")
    ap.add_argument("--skip-cnn1d", action="store_true")
    ap.add_argument("--skip-resnet", action="store_true")
    ap.add_argument("--quick", action="store_true", help="few points, to check the script runs")
    args = ap.parse_args(argv)
    args.surface = 21 if args.full else 11
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available on this machine")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: torch {torch.__version__}, {os.cpu_count()} CPUs "
          f"({machine()}), {torch.get_num_threads()} threads, device {device}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    global PEAK
    peak = PEAK = Peak(device)
    peak.measure(7)
    print(f"matmul 2048x2048 float32: {peak.wall:.1f} GFLOP/s ({peak.cpu:.1f} GFLOP per CPU-s)", flush=True)
    rows: list[Row] = []
    t0 = time.perf_counter()
    if args.resnet56:
        resnet_case(rows, args, device, "resnet56", 50_000, 10_000, 51, interp=False,
                    base_points=args.baseline_points)
    else:
        if not args.skip_cnn1d:
            cnn1d_case(rows, args, device)
        if not args.skip_resnet:
            resnet_case(rows, args, device, "resnet20", 2048, 1024, args.surface, interp=True, base_points=None)
    peak.measure(7)
    print(f"matmul 2048x2048 float32, best seen: {peak.wall:.1f} GFLOP/s ({peak.cpu:.1f} GFLOP per CPU-s); "
          f"total {time.perf_counter() - t0:.0f} s")
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print()
    for r in rows:
        if r.ratio is not None:
            print(f"ratio {r.case}: {r.ratio:.2f}x ({r.ours_rate:.2f} vs {r.base_rate:.2f} points/s; "
                  f"CPU-time ratio {r.cpu_ratio:.2f}x)")
    summary(rows, peak, device)
    if FAILURES:
        print(f"{len(FAILURES)} check(s) failed:\n  " + "\n  ".join(FAILURES))
        sys.exit(1)


if __name__ == "__main__":
    main()
