#!/usr/bin/env python
"""Training throughput of landscape's trainer against a reference PyTorch training loop.

Run from the repository root::

    .venv/bin/python bench/train_throughput.py                 # full run, wall clock (~10 min on 2 cores)
    .venv/bin/python bench/train_throughput.py --clock cpu     # same, thread CPU time, 1 thread
    .venv/bin/python bench/train_throughput.py --quick         # smoke run (1-3 minutes)
    .venv/bin/python bench/train_throughput.py --device cuda --results bench/RESULTS.md

On a shared machine prefer ``--clock cpu``: it times this thread's CPU time with one
intra-op thread, which other processes cannot inflate, whereas a 2-thread run on 2 cores
next to another busy process stalls 5-20x at every parallel region (seen here).

What is measured (every comparison interleaved in one process: each round runs every
variant once, in a rotating order, and the best of the rounds counts, so load from other
processes on a shared machine hits both sides alike):

1. Samples/s of the trainer's step loop against the loop of the SWA / SAM reference
   repositories: a per-sample ``torch.utils.data.Dataset`` (CIFAR-style PIL images through
   ``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``;
   MNIST-1D as a ``TensorDataset``) read by a ``DataLoader`` (batch 128, shuffle,
   ``num_workers`` 0 and 2; the faster one is "the baseline"), ``model.train()``, SGD with
   momentum, ``loss.item()``/``correct.item()`` accounting per step as in the SWA repo.
   Same model, same initial weights, same data, same number of steps (whole epochs).
   "ours (step loop)" is the body of ``landscape.train.train_optimizer``'s inner loop with
   the trainer's own pieces (``batch_indices``, ``augment``, ``set_lr``, ``train_step``,
   data resident on the device); "ours (train())" times ``landscape.train.train()``
   itself, per steady-state epoch, which also runs its default evaluation (the whole test
   split and a fixed train subset of the same size; bench/train_epoch.py has the whole-epoch
   comparison against the reference repositories' loops)
   and writes two checkpoints every epoch (work the reference loop does not do).
2. SAM and ASAM step cost over the SGD step cost (``train_step`` on the same batches).
3. Averaging overhead: the step loop with ``AveragedModel.update_parameters`` after every
   step (asgd ``--avg-every step``) or once per epoch, against plain SGD; plus the cost of
   one ``update_parameters`` call measured on its own.
4. Diagnosis variants of the trainer's step (not what the trainer does today):
   channels_last, bf16 autocast, both, SGD ``foreach=True``, batch 256, one intra-op
   thread, ``torch.compile``; a foreach SAM (bit-identical to ``landscape.optim.SAM``)
   and a foreach-lerp per-step averager. Printed with a torch.profiler breakdown.

``--results FILE`` appends the summary as a markdown section to FILE (creating it with a
``# Benchmark results`` header when missing).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import landscape.train as lt  # noqa: E402
from landscape.data import Dataset, Split, augment, batch_indices, load_dataset  # noqa: E402
from landscape.device import resolve_device  # noqa: E402
from landscape.evaluate import evaluate, recompute_bn  # noqa: E402
from landscape.models import build_model  # noqa: E402
from landscape.optim import SAM, uniform_average  # noqa: E402

BATCH = 128


# --------------------------------------------------------------------------- timing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# The clock every measurement reads: wall time (default), or with --clock cpu the CPU time
# of the calling thread (time.thread_time, with one intra-op thread so that all of a step's
# work runs on this thread): CPU time does not grow while another process holds the core,
# so it measures the work itself on a shared machine.
NOW = time.perf_counter


class Clock:
    """Per-step lap times of one run. On CUDA (asynchronous) only the whole run is timed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.laps: list[float] = []

    def start(self) -> None:
        sync(self.device)
        self.t = self.t0 = NOW()

    def lap(self) -> None:
        if self.device.type != "cuda":
            now = NOW()
            self.laps.append(now - self.t)
            self.t = now

    def stop(self) -> list[float]:
        sync(self.device)
        now = NOW()
        if self.device.type == "cuda" or not self.laps:
            return [now - self.t0]
        self.laps[-1] += now - self.t  # whatever ran after the last lap (end-of-epoch reads)
        return self.laps


# "composite": the sum over step positions of each position's fastest lap across rounds.
# On a shared 2-core machine another process can stall a 2-thread run 10-20x for seconds;
# the composite keeps each step's uncontended time even when no round was clean throughout.
# "total": the fastest whole run. Set from --estimator.
ESTIMATOR = "composite"


@dataclass
class Timing:
    """Lap times of every round of one variant; ``units`` = samples (or steps) per run."""

    laps: list[list[float]] = field(default_factory=list)
    units: int = 0

    @property
    def times(self) -> list[float]:  # whole-run seconds, one per round
        return [sum(r) for r in self.laps]

    @property
    def composite(self) -> float:
        if len({len(r) for r in self.laps}) != 1:
            return min(self.times)
        return sum(min(col) for col in zip(*self.laps))

    @property
    def best(self) -> float:
        return self.composite if ESTIMATOR == "composite" else min(self.times)

    @property
    def rate(self) -> float:  # units per second at the best round
        return self.units / self.best

    def spread(self) -> str:
        t = sorted(self.times)
        return (f"composite {self.composite:.3f}s, fastest run {t[0]:.3f}s, median run {t[len(t) // 2]:.3f}s, "
                f"{len(t)} rounds")


Runner = Callable[[], tuple[list[float], int]]  # does its own (untimed) setup; returns (laps, units)


def interleaved(variants: dict[str, Runner], rounds: int, warmup: bool = True) -> dict[str, Timing]:
    """Run every variant once per round, rotating the order each round; keep every time."""
    names = list(variants)
    out = {n: Timing() for n in names}
    if warmup:
        for n in names:
            variants[n]()
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for n in order:
            gc.collect()
            laps, units = variants[n]()
            out[n].laps.append(laps)
            out[n].units = units
    return out


def paired_ratios(num: Timing, den: Timing) -> list[float]:
    """Per-round whole-run ratios num/den (the two ran back to back in each round)."""
    return [a / b for a, b in zip(num.times, den.times)]


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    key: str  # "cnn1d/mnist1d"
    model: str
    data: Dataset  # the trainer's view: normalized tensors on the device
    reference_dataset: torch.utils.data.Dataset  # the reference's view: per-sample, CPU
    init_state: dict[str, torch.Tensor]
    epochs: int  # epochs per timed run of the step loops
    rounds: int

    def build(self, device: torch.device) -> nn.Module:
        m = build_model(self.model, num_classes=self.data.num_classes, input_shape=list(self.data.input_shape))
        m.load_state_dict(self.init_state)
        return m.to(device)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.data.train) / BATCH)


class CifarLike(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's storage and ``__getitem__``: uint8 HWC numpy + int targets."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: Callable | None) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        img, target = self.data[index], self.targets[index]
        img = Image.fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def mnist1d_case(device: torch.device, quick: bool) -> Case:
    data = load_dataset("mnist1d", device=device)  # 4000 train / 1000 test, the default
    ref = torch.utils.data.TensorDataset(data.train.x.cpu().clone(), data.train.y.cpu().clone())
    torch.manual_seed(0)
    m = build_model("cnn1d", num_classes=data.num_classes, input_shape=list(data.input_shape))
    return Case("cnn1d/mnist1d", "cnn1d", data, ref, copy.deepcopy(m.state_dict()),
                epochs=1 if quick else 3, rounds=3 if quick else 5)


def cifar_case(device: torch.device, quick: bool) -> Case:
    import torchvision.transforms as T

    n_train, n_test = (256, 128) if quick else (1024, 256)
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_train + n_test).astype(np.int64)
    nchw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))
    mean = tuple(float(v) for v in (nchw[:n_train].double() / 255).mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in (nchw[:n_train].double() / 255).std(dim=(0, 2, 3)))

    def to_float(x: torch.Tensor) -> torch.Tensor:  # as landscape.data._to_float
        x = x.to(device).float().div_(255)
        return x.sub_(torch.tensor(mean, device=device).view(1, 3, 1, 1)).div_(
            torch.tensor(std, device=device).view(1, 3, 1, 1))

    y = torch.from_numpy(labels)
    data = Dataset(
        "cifar10-synthetic",
        Split(to_float(nchw[:n_train]), y[:n_train].to(device)),
        Split(to_float(nchw[n_train:]), y[n_train:].to(device)),
        10, (3, 32, 32), "crop+flip",
        {"name": "cifar10-synthetic", "num_train": n_train, "num_test": n_test, "augment": "crop+flip"},
        mean, std,
    )
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    ref = CifarLike(hwc[:n_train], [int(v) for v in labels[:n_train]], transform)
    torch.manual_seed(0)
    m = build_model("resnet20", num_classes=10, input_shape=[3, 32, 32])
    return Case("resnet20/cifar-shaped", "resnet20", data, ref, copy.deepcopy(m.state_dict()),
                epochs=1, rounds=2 if quick else 3)


# --------------------------------------------------------------------------- the two loops


def trainer_config(**overrides: Any) -> lt.TrainConfig:
    kw: dict[str, Any] = dict(epochs=1, batch_size=BATCH, lr=0.1, momentum=0.9, weight_decay=5e-4)
    kw.update(overrides)
    return lt.TrainConfig(**kw).resolved()


def ours_runner(
    case: Case,
    device: torch.device,
    name: str = "sgd",
    *,
    average: str | None = None,  # None | "step" | "epoch"
    batch_size: int = BATCH,
    memory_format: torch.memory_format | None = None,
    autocast: torch.dtype | None = None,
    compiled: nn.Module | None = None,
    base_model: nn.Module | None = None,
    threads: int | None = None,
    epochs: int | None = None,
    optimizer_variant: str | None = None,
    averager: str | None = None,  # None (uniform_average, the trainer's) | "foreach" | "lerp"
) -> Runner:
    """The per-step body of ``landscape.train.train_optimizer``, for ``epochs`` whole epochs.

    Kept line for line with the trainer (schedule, set_lr, idx.to, augment, train_step,
    on-device loss/correct accumulation read once per epoch, the averaging hook); the
    keyword options are diagnosis variants the trainer does not have.
    """
    cfg = trainer_config(batch_size=batch_size)
    n_epochs = epochs or case.epochs

    def run() -> tuple[float, int]:
        data = case.data
        if base_model is not None:  # a torch.compile'd module shares this one's parameters
            base_model.load_state_dict(case.init_state)
            model: nn.Module = base_model
        else:
            model = case.build(device)
        if memory_format is not None:
            model = model.to(memory_format=memory_format)
        optimizer = make_variant_optimizer(name, model, cfg, optimizer_variant)
        forward_model = compiled if compiled is not None else model
        schedule = lt.lr_schedule(name, cfg)
        averaged = None
        if average:
            from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn

            averaged = {None: lambda: uniform_average(model),
                        "foreach": lambda: AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn()),
                        "lerp": lambda: LerpAverage(model)}[averager]()
        data_rng = torch.Generator().manual_seed(0)
        steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
        ctx = torch.autocast(device.type, dtype=autocast) if autocast is not None else contextlib.nullcontext()
        old_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        samples = 0
        clock = Clock(device)
        try:
            clock.start()
            for epoch in range(1, n_epochs + 1):
                forward_model.train()
                loss_sum = torch.zeros((), dtype=torch.float64, device=device)
                correct = torch.zeros((), dtype=torch.int64, device=device)
                for i, idx in enumerate(batch_indices(len(data.train), cfg.batch_size, data_rng, shuffle=True)):
                    lr = schedule.lr_at(epoch - 1, i, steps_per_epoch)
                    lt.set_lr(optimizer, lr)
                    idx = idx.to(device)
                    x = augment(data.train.x[idx], data.augmentation, data_rng)
                    if memory_format is not None:
                        x = x.contiguous(memory_format=memory_format)
                    with ctx:
                        loss, hits = lt.train_step(name, forward_model, optimizer, x, data.train.y[idx])
                    loss_sum += loss.double() * len(idx)
                    correct += hits
                    if averaged is not None and average == "step":
                        averaged.update_parameters(model)
                    samples += len(idx)
                    clock.lap()
                if averaged is not None and average == "epoch":
                    averaged.update_parameters(model)
                _ = (loss_sum.item() / len(data.train), correct.item() / len(data.train))
            return clock.stop(), samples
        finally:
            torch.set_num_threads(old_threads)

    return run


def reference_loader(case: Case, device: torch.device, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        case.reference_dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
    )


def reference_runner(case: Case, device: torch.device, workers: int, *, compiled: nn.Module | None = None,
                     base_model: nn.Module | None = None) -> Runner:
    """The SWA repository's ``train_epoch`` (utils.py), SGD with momentum, for whole epochs."""
    loader = reference_loader(case, device, workers)  # built once, as the reference scripts do

    def run() -> tuple[float, int]:
        if base_model is not None:
            base_model.load_state_dict(case.init_state)
            model: nn.Module = base_model
        else:
            model = case.build(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        criterion = nn.CrossEntropyLoss()
        net = compiled if compiled is not None else model
        samples = 0
        clock = Clock(device)
        clock.start()
        for _ in range(case.epochs):
            loss_sum, correct = 0.0, 0
            net.train()
            for inputs, target in loader:
                inputs = inputs.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                output = net(inputs)
                loss = criterion(output, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * inputs.size(0)
                correct += output.argmax(1).eq(target).sum().item()
                samples += inputs.size(0)
                clock.lap()
        return clock.stop(), samples

    return run


def loader_only_runner(case: Case, device: torch.device, workers: int) -> Runner:
    """Just the reference's data pipeline: one epoch of batches moved to the device."""
    loader = reference_loader(case, device, workers)

    def run() -> tuple[float, int]:
        samples = 0
        clock = Clock(device)
        clock.start()
        for inputs, target in loader:
            inputs, target = inputs.to(device), target.to(device)
            samples += inputs.size(0)
            clock.lap()
        return clock.stop(), samples

    return run


def ours_data_only_runner(case: Case, device: torch.device) -> Runner:
    """Just the trainer's data path for one epoch: batch_indices, index, augment."""

    def run() -> tuple[float, int]:
        rng = torch.Generator().manual_seed(0)
        samples = 0
        clock = Clock(device)
        clock.start()
        for idx in batch_indices(len(case.data.train), BATCH, rng, shuffle=True):
            idx = idx.to(device)
            x = augment(case.data.train.x[idx], case.data.augmentation, rng)
            _ = case.data.train.y[idx]
            samples += len(idx)
            clock.lap()
        del x
        return clock.stop(), samples

    return run


# --------------------------------------------------------------------------- train() itself


@contextlib.contextmanager
def patched_loader(case: Case):
    """Make ``landscape.train.train`` load ``case.data`` (the synthetic CIFAR has no files)."""
    original = lt.load_dataset
    if case.model == "cnn1d":
        yield "mnist1d"
        return
    lt.load_dataset = lambda name, data_dir=None, device="cpu", **options: case.data.to(device)
    try:
        yield "cifar10"
    finally:
        lt.load_dataset = original


def train_runner(case: Case, device: torch.device, tmp: Path, epochs: int, **cfg_overrides: Any) -> Runner:
    """``landscape.train.train()`` for ``epochs`` epochs; returns the best steady-state epoch.

    Epoch k's time is between the progress events "epoch k-1 done" and "epoch k done"
    (epoch 1 is skipped: it carries the setup). Also records the end-of-epoch part
    (evaluation, averaged-model BN recompute, checkpoints) in ``last_tail``.
    """
    tails: list[float] = []

    def run() -> tuple[float, int]:
        events: list[tuple[str, float]] = []

        def hook(info: dict[str, Any]) -> None:
            now = NOW()
            if "epoch_done" in info:
                events.append(("done", now))
            elif info.get("batch") == info.get("batches"):
                events.append(("last_batch", now))

        with patched_loader(case) as dataset:
            cfg = lt.TrainConfig(dataset=dataset, model=case.model, epochs=epochs, batch_size=BATCH,
                                 device=str(device), seed=0, **cfg_overrides)
            lt.train(cfg, Path(tempfile.mkdtemp(prefix="run-", dir=tmp)), force=True, progress=hook)
        sync(device)
        done = [t for kind, t in events if kind == "done"]
        last = [t for kind, t in events if kind == "last_batch"]
        epoch_times = [b - a for a, b in zip(done, done[1:])]
        tails.append(min(d - lb for d, lb in zip(done[1:], last[1:])))
        run.last_tail = tails[-1]  # type: ignore[attr-defined]
        return [min(epoch_times)], len(case.data.train)

    run.tails = tails  # type: ignore[attr-defined]
    return run


# --------------------------------------------------------------------------- step-cost runners


def step_batches(case: Case, device: torch.device, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    rng = torch.Generator().manual_seed(1)
    out = []
    for idx in batch_indices(len(case.data.train), BATCH, rng, shuffle=True, drop_last=True)[:n]:
        idx = idx.to(device)
        out.append((augment(case.data.train.x[idx], case.data.augmentation, rng), case.data.train.y[idx]))
    return out


class ForeachSAM(SAM):
    """Diagnosis variant (not in the trainer): SAM/ASAM's first/second step with ``torch._foreach_*``.

    Same math as ``landscape.optim.SAM`` for one param group (what ``make_optimizer``
    builds): one fused kernel per operation over all tensors instead of a Python loop of
    per-tensor ops, a persistent copy buffer for ``w`` (``_foreach_copy_``), and the
    scale ``rho / (||T g|| + 1e-12)`` kept as a 0-dim tensor (no host sync). Filter-wise
    ASAM is left to the parent class.
    """

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        group = self.param_groups[0]
        if len(self.param_groups) != 1 or group["filterwise"]:
            return super().first_step(zero_grad)
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        grads = [p.grad for p in params]
        if group["adaptive"]:
            t = torch._foreach_abs(params)
            torch._foreach_add_(t, group["eta"])
            tg = torch._foreach_mul(t, grads)
            norm = torch.stack(torch._foreach_norm(tg)).norm()
            eps = torch._foreach_mul(torch._foreach_mul(t, t), grads)  # T^2 g, in SAM's order
        else:
            norm = torch.stack(torch._foreach_norm(grads)).norm()
            eps = grads
        self._saved = getattr(self, "_saved", None)
        if self._saved is None or len(self._saved[0]) != len(params) or any(
                a is not b for a, b in zip(self._saved[0], params)):
            self._saved = (params, [torch.empty_like(p) for p in params])
        torch._foreach_copy_(self._saved[1], params)
        scale = group["rho"] / (norm + 1e-12)
        torch._foreach_add_(params, torch._foreach_mul(eps, scale))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        group = self.param_groups[0]
        if len(self.param_groups) != 1 or group["filterwise"] or getattr(self, "_saved", None) is None:
            return super().second_step(zero_grad)
        torch._foreach_copy_(self._saved[0], self._saved[1])
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()


class LerpAverage(torch.optim.swa_utils.AveragedModel):
    """Diagnosis variant (not in the trainer): ``uniform_average`` with a cheap per-step update.

    Same state as ``AveragedModel`` (``module``, ``n_averaged``; parameters averaged,
    buffers copied), but ``update_parameters`` caches the two parameter/buffer lists on
    the first call and then does one ``torch._foreach_lerp_(avg, params, 1/(n+1))`` and one
    ``torch._foreach_copy_`` for the buffers, counting in a Python int (no device sync).
    The weight ``1/(n+1)`` is torch's own CUDA path (``get_swa_multi_avg_fn``); on the CPU
    torch computes ``a + (x - a) / (n + 1)`` instead, so results differ in the last bits.
    """

    def update_parameters(self, model: nn.Module) -> None:  # type: ignore[override]
        cache = getattr(self, "_lerp_cache", None)
        if cache is None or cache[0] is not model:
            self._lerp_cache = cache = (
                model,
                [p.detach() for p in self.module.parameters()], [p.detach() for p in model.parameters()],
                [b for b in self.module.buffers()], [b for b in model.buffers()],
                int(self.n_averaged),
            )
        _, avg, cur, avg_b, cur_b, n = cache
        with torch.no_grad():
            if n == 0:
                torch._foreach_copy_(avg, cur)
            else:
                torch._foreach_lerp_(avg, cur, 1.0 / (n + 1))
            if avg_b:
                torch._foreach_copy_(avg_b, cur_b)
        self._lerp_cache = cache[:5] + (n + 1,)
        self.n_averaged.fill_(n + 1)


def make_variant_optimizer(name: str, model: nn.Module, cfg: lt.TrainConfig, variant: str | None) -> torch.optim.Optimizer:
    """``make_optimizer``, or a diagnosis variant of it: "foreach" = SGD (and SAM's base SGD) with
    ``foreach=True`` (torch picks the per-tensor loop on CPU by default), "foreach-sam" =
    that plus :class:`ForeachSAM`."""
    if variant == "foreach-sam" and name in ("sam", "asam"):
        kw = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        opt: torch.optim.Optimizer = ForeachSAM(
            model.parameters(), torch.optim.SGD, rho=cfg.rho or (0.05 if name == "sam" else 0.5),
            adaptive=name == "asam", eta=cfg.asam_eta, filterwise=cfg.asam_filterwise, **kw)
    else:
        opt = lt.make_optimizer(name, model, cfg)
    if variant in ("foreach", "foreach-sam"):
        for g in opt.param_groups:
            g["foreach"] = True
    return opt


def step_runner(case: Case, device: torch.device, name: str, batches: list, variant: str | None = None) -> Runner:
    """``train_step`` alone (the optimizer's whole cost) over pre-augmented batches."""
    cfg = trainer_config()

    def run() -> tuple[float, int]:
        model = case.build(device)
        optimizer = make_variant_optimizer(name, model, cfg, variant)
        model.train()
        clock = Clock(device)
        clock.start()
        for x, y in batches:
            lt.train_step(name, model, optimizer, x, y)
            clock.lap()
        return clock.stop(), len(batches)

    return run


def update_only_runner(case: Case, device: torch.device, n: int, foreach: bool | str = False) -> Runner:
    """``AveragedModel.update_parameters`` alone, ``n`` calls (weights moved between calls).

    ``foreach``: the variant ``AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn())``,
    which takes torch's in-place ``_foreach_lerp_`` path on every device; without it torch
    uses that path only on CUDA/XPU and falls back to one allocating op chain per tensor.
    ``foreach="direct"``: the floor, one ``torch._foreach_lerp_`` over cached parameter lists
    with a Python-int count (what a hand-written per-step averager in the trainer would do).
    """
    from torch.optim.swa_utils import AveragedModel, get_swa_multi_avg_fn

    def run_direct() -> tuple[list[float], int]:
        model = case.build(device)
        params = list(model.parameters())
        avg = [p.detach().clone() for p in params]
        count = 1
        laps = []
        for _ in range(n):
            with torch.no_grad():
                for p in params:
                    p.mul_(1.0001)
            sync(device)
            t0 = NOW()
            with torch.no_grad():
                torch._foreach_lerp_(avg, params, 1.0 / (count + 1))
            count += 1
            sync(device)
            laps.append(NOW() - t0)
        return laps, n

    if foreach == "direct":
        return run_direct

    def run() -> tuple[float, int]:
        model = case.build(device)
        averaged = (AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn()) if foreach
                    else uniform_average(model))
        averaged.update_parameters(model)  # the first call copies; the steady state is the mean
        params = list(model.parameters())
        laps = []
        for _ in range(n):
            with torch.no_grad():
                for p in params:
                    p.mul_(1.0001)
            sync(device)
            t0 = NOW()
            averaged.update_parameters(model)
            sync(device)
            laps.append(NOW() - t0)
        return laps, n

    return run


# --------------------------------------------------------------------------- reporting


@dataclass
class Row:
    case: str
    what: str
    ours: str
    baseline: str
    ratio: str
    goal: str
    met: str  # "yes" / "NO" / "info"


ROWS: list[Row] = []
NOTES: list[str] = []


def say(text: str = "") -> None:
    print(text, flush=True)


def fmt_rate(samples_per_s: float) -> str:
    return f"{samples_per_s:,.0f} samples/s"


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms/step"


def machine_info() -> dict[str, str]:
    try:
        model = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in model.splitlines() if ln.startswith("Model name")), "?")
    except OSError:
        model = platform.processor() or "?"
    return {
        "date": subprocess.run(["date"], capture_output=True, text=True, check=False).stdout.strip(),
        "cpu": f"{model}, {os.cpu_count()} cores (torch intra-op threads: {torch.get_num_threads()})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "load_start": f"{os.getloadavg()[0]:.1f}",
    }


# --------------------------------------------------------------------------- sections


def bench_throughput(case: Case, device: torch.device) -> dict[str, Timing]:
    say(f"\n== {case.key}: trainer step loop vs reference DataLoader loop "
        f"({len(case.data.train)} samples x {case.epochs} epoch(s) = {case.steps_per_epoch * case.epochs} steps "
        f"per run, best of {case.rounds} interleaved rounds)")
    runners = {"ours": ours_runner(case, device), "ref_w0": reference_runner(case, device, 0)}
    if NOW is time.perf_counter:  # worker processes' time is not this thread's CPU time
        runners["ref_w2"] = reference_runner(case, device, 2)
    t = interleaved(runners, case.rounds)
    for k, v in t.items():
        say(f"  {k:8s} {fmt_rate(v.rate):>22s}   ({v.spread()})")
    best_ref = min((k for k in t if k.startswith("ref")), key=lambda k: t[k].best)
    ratio = t[best_ref].best / t["ours"].best
    per_round = paired_ratios(t[best_ref], t["ours"])
    say(f"  ratio ours / reference (best baseline = num_workers={best_ref[-1]}): {ratio:.2f}x "
        f"(per-round {', '.join(f'{r:.2f}' for r in per_round)}; goal >= 2x on CPU)")
    ROWS.append(Row(case.key, "step loop, samples/s", fmt_rate(t["ours"].rate),
                    f"{fmt_rate(t[best_ref].rate)} (DataLoader, workers={best_ref[-1]})",
                    f"{ratio:.2f}x", ">= 2x", "yes" if ratio >= 2 else "NO"))
    other = "ref_w2" if best_ref == "ref_w0" else "ref_w0"
    if other in t:
        ROWS.append(Row(case.key, f"  (other baseline: workers={other[-1]})", "", fmt_rate(t[other].rate),
                        f"{t[other].best / t['ours'].best:.2f}x", "", "info"))
    return t


def bench_data_only(case: Case, device: torch.device, step_loop: dict[str, Timing]) -> None:
    t = interleaved({
        "ours_data": ours_data_only_runner(case, device),
        "ref_data_w0": loader_only_runner(case, device, 0),
    }, max(case.rounds, 3))
    ours_epoch = step_loop["ours"].best / case.epochs
    ref_epoch = step_loop["ref_w0"].best / case.epochs
    ref_data = t["ref_data_w0"].best
    ours_data = t["ours_data"].best
    share = ref_data / ref_epoch
    # If the reference's compute were as fast as ours and only its data path differed:
    bound = ref_epoch / max(ref_epoch - ref_data + ours_data, 1e-9)
    say(f"  data path alone, one epoch: reference DataLoader (workers=0) {ref_data * 1e3:.1f} ms "
        f"= {share:.0%} of its training epoch; ours {ours_data * 1e3:.1f} ms "
        f"({ours_data / ours_epoch:.1%} of ours)")
    say(f"  => replacing the reference's data path by ours alone can give at most {bound:.2f}x")
    NOTES.append(f"{case.key}: the reference's DataLoader+transforms take {share:.0%} of its epoch "
                 f"({ref_data * 1e3:.0f} ms of {ref_epoch * 1e3:.0f} ms); the trainer's on-device data path "
                 f"takes {ours_data * 1e3:.1f} ms. Swapping the data path alone is worth at most {bound:.2f}x.")
    ROWS.append(Row(case.key, "data path only, ms/epoch", f"{ours_data * 1e3:.1f} ms", f"{ref_data * 1e3:.1f} ms",
                    f"{ref_data / ours_data:.1f}x", "", "info"))


def bench_train_epoch(case: Case, device: torch.device, ref: Timing, tmp: Path, quick: bool) -> None:
    epochs = 2 if (quick or case.model != "cnn1d") else 3
    rounds = 2 if (quick or case.model != "cnn1d") else 3
    say(f"\n== {case.key}: landscape.train.train() per steady-state epoch ({epochs} epochs per call, "
        f"best of {rounds}; includes the default evaluation and 2 checkpoints per epoch)")
    runner = train_runner(case, device, tmp, epochs)
    ref_runner = reference_runner(case, device, 0)
    # One reference epoch per round, interleaved with train().
    t = interleaved({"train()": runner, "ref_w0": ref_runner}, rounds, warmup=False)
    tr = t["train()"]
    ref_epoch = t["ref_w0"].best / case.epochs
    tail = min(runner.tails)  # type: ignore[attr-defined]
    ratio = ref_epoch / tr.best
    say(f"  train(): {tr.best:.3f} s/epoch = {fmt_rate(tr.rate)}; of which end-of-epoch eval + checkpoints "
        f"{tail:.3f} s ({tail / tr.best:.0%})")
    say(f"  reference loop: {ref_epoch:.3f} s/epoch (training only); ratio {ratio:.2f}x "
        f"({ref_epoch / (tr.best - tail):.2f}x on the training part of the epoch)")
    ROWS.append(Row(case.key, "train() per epoch, samples/s (incl. eval+ckpt)", fmt_rate(tr.rate),
                    f"{fmt_rate(len(case.data.train) / ref_epoch)} (ref loop, workers=0)", f"{ratio:.2f}x", ">= 2x",
                    "yes" if ratio >= 2 else "NO"))


def bench_sam(case: Case, device: torch.device, quick: bool) -> None:
    n = (8 if quick else 32) if case.model == "cnn1d" else (2 if quick else 4)
    rounds = case.rounds
    batches = step_batches(case, device, n)
    say(f"\n== {case.key}: SAM / ASAM step cost vs SGD (train_step on {len(batches)} fixed batches, best of {rounds})")
    runners = {k: step_runner(case, device, k, batches) for k in ("sgd", "sam", "asam")}
    runners.update({f"{k} foreach": step_runner(case, device, k, batches, "foreach-sam") for k in ("sgd", "sam", "asam")})
    t = interleaved(runners, rounds)
    sgd = t["sgd"].best / t["sgd"].units
    for k in ("sam", "asam"):
        cost = t[k].best / t[k].units
        ratio = cost / sgd
        say(f"  {k}: {fmt_ms(cost)} vs sgd {fmt_ms(sgd)} -> {ratio:.2f}x (goal <= 2.1x)")
        ROWS.append(Row(case.key, f"{k.upper()} step / SGD step", fmt_ms(cost), fmt_ms(sgd), f"{ratio:.2f}x",
                        "<= 2.1x", "yes" if ratio <= 2.1 else "NO"))
    fe_sgd = t["sgd foreach"].best / t["sgd foreach"].units
    say(f"  variant, not in the trainer: SGD foreach=True {fmt_ms(fe_sgd)} ({sgd / fe_sgd:.2f}x the SGD step as is)")
    for k in ("sam", "asam"):
        cost = t[f"{k} foreach"].best / t[f"{k} foreach"].units
        say(f"  variant, not in the trainer: {k} with foreach first/second step + foreach SGD: {fmt_ms(cost)} -> "
            f"{cost / fe_sgd:.2f}x the foreach SGD step, {cost / sgd:.2f}x the SGD step as is "
            f"({(t[k].best / t[k].units) / cost:.2f}x faster than {k} as is)")
        ROWS.append(Row(case.key, f"  variant: {k.upper()} foreach / SGD as is (foreach SGD)", fmt_ms(cost), fmt_ms(sgd),
                        f"{cost / sgd:.2f}x ({cost / fe_sgd:.2f}x)", "<= 2.1x", "info"))


def bench_averaging(case: Case, device: torch.device, quick: bool) -> None:
    rounds = case.rounds + (1 if case.model == "cnn1d" else 0)
    say(f"\n== {case.key}: averaging overhead (step loop, asgd vs sgd, best of {rounds})")
    t = interleaved({
        "sgd": ours_runner(case, device, "sgd"),
        "asgd_step": ours_runner(case, device, "asgd", average="step"),
        "asgd_epoch": ours_runner(case, device, "asgd", average="epoch"),
        "asgd_step_foreach": ours_runner(case, device, "asgd", average="step", averager="foreach"),
        "asgd_step_lerp": ours_runner(case, device, "asgd", average="step", averager="lerp"),
    }, rounds)
    n_upd = 20 if quick else 100
    if case.model != "cnn1d":
        n_upd = 5 if quick else 20
    u = interleaved({"update": update_only_runner(case, device, n_upd),
                     "update_foreach": update_only_runner(case, device, n_upd, foreach=True),
                     "lerp_direct": update_only_runner(case, device, n_upd, foreach="direct")}, 3)
    upd_direct = u["lerp_direct"].best / u["lerp_direct"].units
    step_cost = t["sgd"].best / (case.steps_per_epoch * case.epochs)
    upd = u["update"].best / u["update"].units
    upd_fe = u["update_foreach"].best / u["update_foreach"].units
    for k, label in (("asgd_step", "per step"), ("asgd_epoch", "per epoch")):
        over = t[k].best / t["sgd"].best - 1
        pr = [r - 1 for r in paired_ratios(t[k], t["sgd"])]
        say(f"  asgd averaging {label}: {over:+.1%} vs sgd (per-round {', '.join(f'{r:+.1%}' for r in pr)}; goal <= 3%)")
        isolated = upd / step_cost if k == "asgd_step" else upd / (step_cost * case.steps_per_epoch)
        say(f"    isolated: one update_parameters = {upd * 1e3:.3f} ms = {isolated:.2%} of "
            f"{'a step' if k == 'asgd_step' else 'an epoch of steps'}")
        # The two loops differ only by the update_parameters calls, so the isolated cost is the
        # precise number; the loop difference is the same thing seen through the machine's noise.
        ROWS.append(Row(case.key, f"asgd averaging {label}: overhead (loop; isolated)",
                        f"{fmt_rate(t[k].rate)}", f"{fmt_rate(t['sgd'].rate)} (sgd)",
                        f"{over:+.1%} ; {isolated:+.2%}", "<= 3%",
                        "NO" if isolated > 0.03 else ("yes" if over <= 0.03 else "yes (isolated)")))
        if k == "asgd_step":
            say(f"    with multi_avg_fn=get_swa_multi_avg_fn() (foreach lerp): {upd_fe * 1e3:.3f} ms = "
                f"{upd_fe / step_cost:.2%} of a step ({upd / upd_fe:.1f}x faster)")
            ROWS.append(Row(case.key, "  update_parameters: foreach-lerp variant", f"{upd_fe * 1e3:.3f} ms",
                            f"{upd * 1e3:.3f} ms (as is)", f"{upd_fe / step_cost:+.2%} of a step", "<= 3%", "info"))
            say(f"    floor, one torch._foreach_lerp_ over cached lists: {upd_direct * 1e3:.3f} ms = "
                f"{upd_direct / step_cost:.2%} of a step")
            ROWS.append(Row(case.key, "  averaging floor: one _foreach_lerp_ per step", f"{upd_direct * 1e3:.3f} ms",
                            f"{upd * 1e3:.3f} ms (as is)", f"{upd_direct / step_cost:+.2%} of a step", "<= 3%",
                            "info"))
            for v, label2 in (("asgd_step_foreach", "AveragedModel(multi_avg_fn=get_swa_multi_avg_fn())"),
                              ("asgd_step_lerp", "LerpAverage (cached lists, one _foreach_lerp_)")):
                o = t[v].best / t["sgd"].best - 1
                say(f"    variant in the loop, {label2}: {o:+.1%} vs sgd "
                    f"(per-round {', '.join(f'{r - 1:+.1%}' for r in paired_ratios(t[v], t['sgd']))})")
                ROWS.append(Row(case.key, f"  variant: per-step averaging with {v.split('_')[-1]}",
                                fmt_rate(t[v].rate), f"{fmt_rate(t['sgd'].rate)} (sgd)", f"{o:+.1%}", "<= 3%",
                                "info"))


def bench_end_of_epoch_averaging(case: Case, device: torch.device) -> None:
    """What an averaged run adds once per epoch in train(): BN recompute + 2 evaluations of the average."""
    model = case.build(device)
    averaged = uniform_average(model)
    averaged.update_parameters(model)
    avg = averaged.module
    best = math.inf
    for _ in range(3):
        sync(device)
        t0 = NOW()
        recompute_bn(avg, case.data.train.x)
        evaluate(avg, case.data.train.x, case.data.train.y, 1024)
        evaluate(avg, case.data.test.x, case.data.test.y, 1024)
        sync(device)
        best = min(best, NOW() - t0)
    say(f"  averaged run, once per epoch in train(): BN recompute + train/test evaluation of the average = "
        f"{best:.3f} s (a feature, not overhead of the averaging itself)")
    NOTES.append(f"{case.key}: an averaged run (asgd/swa/--average) also spends {best:.3f} s per epoch in train() "
                 "recomputing the average's BatchNorm statistics and scoring it on both splits.")


def bench_variants(case: Case, device: torch.device, ref: Timing, ours: Timing, compile_: bool, quick: bool) -> None:
    """Trainer-step variants the trainer does not implement; each vs the trainer as it is."""
    rounds = 2 if quick or case.model != "cnn1d" else 3
    variants: dict[str, Runner] = {"as is": ours_runner(case, device)}
    if case.model != "cnn1d":
        variants["channels_last"] = ours_runner(case, device, memory_format=torch.channels_last)
        if device.type == "cuda" or torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX"):
            variants["bf16 autocast"] = ours_runner(case, device, autocast=torch.bfloat16)
            variants["cl + bf16"] = ours_runner(case, device, autocast=torch.bfloat16,
                                                memory_format=torch.channels_last)
    variants["SGD foreach"] = ours_runner(case, device, optimizer_variant="foreach")
    variants["batch 256"] = ours_runner(case, device, batch_size=256)
    if device.type == "cpu" and torch.get_num_threads() > 1:
        variants["1 thread"] = ours_runner(case, device, threads=1)
    say(f"\n== {case.key}: diagnosis variants of the trainer's step loop (best of {rounds}; not in the trainer)")
    t = interleaved(variants, rounds)
    for k, v in t.items():
        rel = t["as is"].best / v.best
        say(f"  {k:14s} {fmt_rate(v.rate):>22s}  {rel:.2f}x the trainer as is; "
            f"{v.rate / ref.rate:.2f}x the reference")
        if k != "as is":
            ROWS.append(Row(case.key, f"variant: {k}", fmt_rate(v.rate), fmt_rate(ref.rate),
                            f"{v.rate / ref.rate:.2f}x ({rel:.2f}x as-is)", "", "info"))
    if compile_:
        bench_compile(case, device, ref, rounds)


def bench_compile(case: Case, device: torch.device, ref: Timing, rounds: int) -> None:
    say(f"  torch.compile(model) (default inductor mode), same step loop ...")
    base = case.build(device)
    compiled = torch.compile(base)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ours_runner(case, device, compiled=compiled, base_model=base, epochs=1)()  # compiles fwd + bwd
    except Exception as exc:  # no compiler, unsupported platform, ...
        say(f"    torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        NOTES.append(f"{case.key}: torch.compile failed here ({type(exc).__name__}).")
        return
    compile_s = time.perf_counter() - t0
    t = interleaved({
        "as is": ours_runner(case, device),
        "compiled": ours_runner(case, device, compiled=compiled, base_model=base),
        "ref_w0 compiled": reference_runner(case, device, 0, compiled=compiled, base_model=base),
        "ref_w0": reference_runner(case, device, 0),
    }, rounds, warmup=False)
    rel = t["as is"].best / t["compiled"].best
    vs_ref = t["ref_w0"].best / t["compiled"].best
    ref_c = t["ref_w0 compiled"].best / t["compiled"].best
    say(f"    first epoch incl. compilation: {compile_s:.1f} s")
    say(f"    compiled: {fmt_rate(t['compiled'].rate)} = {rel:.2f}x the trainer as is, {vs_ref:.2f}x the reference "
        f"(reference loop with the same compiled model: {fmt_rate(t['ref_w0 compiled'].rate)}, ours {ref_c:.2f}x it)")
    ROWS.append(Row(case.key, "variant: torch.compile", fmt_rate(t["compiled"].rate), fmt_rate(t["ref_w0"].rate),
                    f"{vs_ref:.2f}x ({rel:.2f}x as-is)", "", "info"))
    ROWS.append(Row(case.key, "  reference + torch.compile too", fmt_rate(t["compiled"].rate),
                    fmt_rate(t["ref_w0 compiled"].rate), f"{ref_c:.2f}x", "", "info"))
    NOTES.append(f"{case.key}: torch.compile costs {compile_s:.0f} s of compilation on the first epoch.")


def profile_step(case: Case, device: torch.device) -> None:
    """Where a trainer step's time goes (torch.profiler, a few steps)."""
    from torch.profiler import ProfilerActivity, profile

    model = case.build(device)
    cfg = trainer_config()
    opt = lt.make_optimizer("sgd", model, cfg)
    rng = torch.Generator().manual_seed(0)
    n = 4 if case.model != "cnn1d" else 16
    idxs: list[torch.Tensor] = []
    while len(idxs) < n + 2:
        idxs += batch_indices(len(case.data.train), BATCH, rng, shuffle=True, drop_last=True)

    def step(idx: torch.Tensor) -> None:
        idx = idx.to(device)
        x = augment(case.data.train.x[idx], case.data.augmentation, rng)
        lt.train_step("sgd", model, opt, x, case.data.train.y[idx])

    for idx in idxs[:2]:
        step(idx)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for idx in idxs[2:2 + n]:
            step(idx)
        sync(device)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    groups = {
        "conv forward": ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution",
                         "aten::cudnn_convolution", "aten::conv1d", "aten::conv2d", "aten::_nnpack_spatial_convolution",
                         "aten::slow_conv2d_forward", "aten::thnn_conv2d"),
        "conv backward": ("aten::convolution_backward", "ConvolutionBackward0"),
        "batch norm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::batch_norm",
                       "aten::_batch_norm_impl_index", "NativeBatchNormBackward0", "aten::_native_batch_norm_legit",
                       "aten::_native_batch_norm_legit_functional"),
        "relu (+bwd)": ("aten::relu", "aten::clamp_min", "aten::threshold_backward", "ReluBackward0", "aten::relu_"),
        "linear/addmm (+bwd)": ("aten::addmm", "aten::mm", "aten::linear", "AddmmBackward0", "aten::t"),
        "optimizer step + zero_grad": ("Optimizer.step#SGD.step", "Optimizer.zero_grad#SGD.zero_grad",
                                       "aten::_foreach_add_", "aten::_foreach_mul_", "aten::_foreach_add",
                                       "aten::_foreach_lerp_"),
        "data: index + augment": ("aten::index", "aten::gather", "aten::constant_pad_nd", "aten::randint",
                                  "aten::rand", "aten::randperm", "aten::where", "aten::flip"),
    }
    shares: dict[str, float] = {}
    for e in events:
        for g, names in groups.items():
            if e.key in names:
                shares[g] = shares.get(g, 0.0) + e.self_cpu_time_total
                break
        else:
            shares["other (autograd, copies, small ops)"] = shares.get("other (autograd, copies, small ops)", 0.0) + e.self_cpu_time_total
    say(f"\n== {case.key}: torch.profiler, {n} trainer steps (self CPU time by category)")
    text = ", ".join(f"{g} {v / total:.0%}" for g, v in sorted(shares.items(), key=lambda kv: -kv[1]))
    say("  " + text)
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
    say("  top ops: " + ", ".join(f"{e.key} {e.self_cpu_time_total / total:.0%}" for e in top))
    NOTES.append(f"{case.key} profile (self CPU time of {n} trainer steps): {text}.")


# --------------------------------------------------------------------------- main


def render(rows: list[Row], info: dict[str, str], command: str, device: torch.device) -> str:
    lines = [
        f"### Run `{command}`",
        "",
        f"- date: {info['date']}",
        f"- machine: {info['cpu']}; device: {device}; load average (1 min) at start {info['load_start']}, "
        f"at end {os.getloadavg()[0]:.1f} (other engineers' jobs share the 2 cores)",
        f"- torch {info['torch']}, Python {info['python']}",
        f"- command: `{command}`",
        "- method: every comparison interleaved in one process (each round runs every variant once, rotating "
        f"order); clock `{'thread CPU time, 1 intra-op thread' if NOW is time.thread_time else 'wall'}`; "
        f"estimator `{ESTIMATOR}` ("
        + ("per step position the fastest lap across rounds, summed over the run: keeps each step's "
           "uncontended time when other processes stall some rounds" if ESTIMATOR == "composite"
           else "the fastest whole run") + "); ratio = baseline time / ours time for throughput, "
        "ours / baseline cost for SAM and averaging.",
        "",
        "| case | measurement | ours | baseline | ratio | goal | met? |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r.case} | {r.what.strip()} | {r.ours} | {r.baseline} | {r.ratio} | {r.goal} | {r.met} |")
    if NOTES:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in NOTES]
    return "\n".join(lines) + "\n"


def print_table(rows: list[Row]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        for r in rows:
            say(" | ".join((r.case, r.what, r.ours, r.baseline, r.ratio, r.goal, r.met)))
        return
    table = Table(title="Training throughput summary", show_lines=False)
    for col in ("case", "measurement", "ours", "baseline", "ratio", "goal", "met?"):
        table.add_column(col, overflow="fold")
    for r in rows:
        style = {"yes": "green", "NO": "bold red"}.get(r.met, "dim")
        table.add_row(r.case, r.what, r.ours, r.baseline, r.ratio, r.goal, f"[{style}]{r.met}[/]")
    Console(width=200).print(table)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="smaller data, fewer rounds, no torch.compile")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant (compilation ~1-2 min on 2 cores)")
    ap.add_argument("--cases", default="cnn1d,resnet20", help="comma-separated subset of cnn1d,resnet20")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch intra-op threads for everything (default: torch's default, one per core)")
    ap.add_argument("--estimator", choices=("composite", "total"), default="composite",
                    help="composite: per step position the fastest lap across rounds, summed (default); "
                         "total: the fastest whole run")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: wall-clock time (default); cpu: this thread's CPU time with one intra-op "
                         "thread, robust to other processes on a shared machine (CPU device only; the "
                         "num_workers=2 baseline is then left out)")
    ap.add_argument("--results", type=Path, default=None, help="append the markdown section to this file")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    global ESTIMATOR, NOW
    ESTIMATOR = args.estimator
    if args.clock == "cpu":
        if args.threads not in (None, 1):
            ap.error("--clock cpu measures one thread: use --threads 1 or leave it out")
        torch.set_num_threads(1)
        NOW = time.thread_time

    command = " ".join([".venv/bin/python", "bench/train_throughput.py"] + [shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])])
    device = resolve_device(args.device)
    if args.clock == "cpu" and device.type != "cpu":
        ap.error("--clock cpu needs --device cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the reference repositories do
    info = machine_info()
    say(f"{info['date']} | {info['cpu']} | torch {info['torch']} | device {device}")
    compile_ = not (args.quick or args.no_compile)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="landscape-bench-") as tmp:
        for which in wanted:
            case = mnist1d_case(device, args.quick) if which == "cnn1d" else cifar_case(device, args.quick)
            loop = bench_throughput(case, device)
            bench_data_only(case, device, loop)
            best_ref = min((v for k, v in loop.items() if k.startswith("ref")), key=lambda v: v.best)
            bench_train_epoch(case, device, best_ref, Path(tmp), args.quick)
            bench_sam(case, device, args.quick)
            bench_averaging(case, device, args.quick)
            bench_end_of_epoch_averaging(case, device)
            ratio = best_ref.best / loop["ours"].best
            if ratio < 2 or case.model != "cnn1d":
                profile_step(case, device)
                bench_variants(case, device, best_ref, loop["ours"], compile_, args.quick)
    say(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s\n")
    say("ratios: step loop / train() = baseline time / ours (higher is better); SAM = SAM / SGD step; "
        "averaging = extra time vs sgd")
    print_table(ROWS)
    section = render(ROWS, info, command, device)
    if args.results:
        path = args.results
        text = path.read_text() if path.exists() else ""
        with open(path, "a") as fh:
            if not text.strip():
                fh.write("# Benchmark results\n")
            if "## Training throughput" not in text:
                fh.write("\n## Training throughput\n")
            fh.write("\n" + section)
        say(f"appended to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
