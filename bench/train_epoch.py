#!/usr/bin/env python
"""Whole training epochs: ``landscape.train.train()`` against the reference repositories' loops.

Run from the repository root::

    .venv/bin/python bench/train_epoch.py --clock cpu            # numbers of record on a shared machine
    .venv/bin/python bench/train_epoch.py                        # wall clock, torch's default threads
    .venv/bin/python bench/train_epoch.py --quick                # smoke run

One epoch of ``train()`` is everything it does per epoch with its *default* evaluation:
the training steps, scoring the test split and the fixed train subset
(``eval_train_samples``, default: as many samples as the test split), writing
``epoch_NNNN.pt``, ``resume.pt`` and the metrics line. It is timed between two
"epoch done" progress events, so start-up (data, model, epoch 0) is left out, as is the
last epoch (it scores the whole train split and writes final.pt; reported separately).

Baselines, each re-implemented here from the repository's code and run in this process:

- ``ref sgd``: the SWA repository's ``train_epoch`` (timgaripov/swa utils.py): a per-sample
  ``Dataset`` (CIFAR: PIL images through RandomCrop(32, 4), RandomHorizontalFlip,
  ToTensor, Normalize; MNIST-1D: a TensorDataset) read by a ``DataLoader`` (batch 128,
  shuffle, ``num_workers=0``), SGD with momentum, ``.item()`` accounting per step. Training
  only: the work the trainer's epoch is measured against for the >= 1.0x goal.
- ``ref sgd + test``: the same plus one pass over the test split through its own
  ``DataLoader`` (ToTensor, Normalize), as davda54/sam's and SamsungLabs/ASAM's train.py
  do after every epoch.
- ``davda54 sam`` / ``davda54 asam``: davda54/sam example/train.py's loop: the same
  DataLoader, forward + ``loss.mean().backward()`` with BatchNorm running statistics on,
  ``first_step(zero_grad=True)``, BatchNorm momentum set to 0 (its ``disable_running_stats``),
  forward + backward at w + e(w), ``second_step(zero_grad=True)``, per-step accounting
  (``loss.cpu()``, ``correct.cpu()``), label smoothing 0.1; then its test pass. Its SAM
  class (first/second step, per-parameter ``old_p`` copies, ``p.data = old_p``) is
  re-implemented below. Mode of each row: ``sam`` = ``adaptive=False`` (rho 0.05) against
  landscape's ``--optimizer sam``; ``asam`` = ``adaptive=True`` (element-wise
  ``|w| * g``, rho 2.0, the example's defaults) against landscape's ``--optimizer asam``
  (``|w| + eta``); the two ASAM variants cost the same operations.

Every comparison is interleaved: each round runs every side once, in rotating order, and
each side keeps all its per-epoch times; the table gives min and median per epoch and the
ratios min/min and median/median (baseline time / ours: > 1 means landscape is faster).
The thread count and the load average (start and end) are printed. On a shared machine
use ``--clock cpu``: CPU time of this thread with one intra-op thread, which other
processes cannot inflate (DataLoader ``num_workers=0``, so the baseline's data work is on
this thread too).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
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
from landscape.data import Dataset, Split, load_dataset  # noqa: E402
from landscape.models import build_model  # noqa: E402

BATCH = 128
NOW = time.perf_counter  # or time.thread_time with --clock cpu


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    key: str
    model: str
    data: Dataset  # the trainer's view (normalized tensors)
    ref_train: torch.utils.data.Dataset  # the reference's per-sample views
    ref_test: torch.utils.data.Dataset
    init_state: dict[str, torch.Tensor]
    epochs: int  # epochs per train() call (the first and the last are not steady state)

    def build(self) -> nn.Module:
        m = build_model(self.model, num_classes=self.data.num_classes, input_shape=list(self.data.input_shape))
        m.load_state_dict(self.init_state)
        return m


class CifarLike(torch.utils.data.Dataset):
    """torchvision.datasets.CIFAR10's storage and ``__getitem__``: uint8 HWC + int targets, PIL per sample."""

    def __init__(self, data: np.ndarray, targets: list[int], transform: Callable) -> None:
        self.data, self.targets, self.transform = data, targets, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def mnist1d_case(quick: bool) -> Case:
    data = load_dataset("mnist1d")  # 4000 train / 1000 test, the embedded default
    ref_train = torch.utils.data.TensorDataset(data.train.x.clone(), data.train.y.clone())
    ref_test = torch.utils.data.TensorDataset(data.test.x.clone(), data.test.y.clone())
    torch.manual_seed(0)
    m = build_model("cnn1d", num_classes=data.num_classes, input_shape=list(data.input_shape))
    return Case("cnn1d/mnist1d", "cnn1d", data, ref_train, ref_test, copy.deepcopy(m.state_dict()),
                epochs=3 if quick else 5)


def cifar_case(quick: bool) -> Case:
    import torchvision.transforms as T

    n_train, n_test = (256, 64) if quick else (1024, 256)
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, size=(n_train + n_test, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n_train + n_test).astype(np.int64)
    nchw = torch.from_numpy(np.ascontiguousarray(hwc.transpose(0, 3, 1, 2)))
    mean = tuple(float(v) for v in (nchw[:n_train].double() / 255).mean(dim=(0, 2, 3)))
    std = tuple(float(v) for v in (nchw[:n_train].double() / 255).std(dim=(0, 2, 3)))

    def to_float(x: torch.Tensor) -> torch.Tensor:  # as landscape.data does for CIFAR
        x = x.float().div_(255)
        return x.sub_(torch.tensor(mean).view(1, 3, 1, 1)).div_(torch.tensor(std).view(1, 3, 1, 1))

    y = torch.from_numpy(labels)
    data = Dataset("cifar10-synthetic", Split(to_float(nchw[:n_train]), y[:n_train]),
                   Split(to_float(nchw[n_train:]), y[n_train:]), 10, (3, 32, 32), "crop+flip",
                   {"name": "cifar10-synthetic", "num_train": n_train, "num_test": n_test, "augment": "crop+flip"},
                   mean, std)
    train_tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    test_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    ref_train = CifarLike(hwc[:n_train], [int(v) for v in labels[:n_train]], train_tf)
    ref_test = CifarLike(hwc[n_train:], [int(v) for v in labels[n_train:]], test_tf)
    torch.manual_seed(0)
    m = build_model("resnet20", num_classes=10, input_shape=[3, 32, 32])
    return Case("resnet20/cifar-shaped", "resnet20", data, ref_train, ref_test, copy.deepcopy(m.state_dict()),
                epochs=3)


# --------------------------------------------------------------------------- landscape's side


class _patched_data:
    """``landscape.train.train`` loads ``case.data`` (the synthetic CIFAR has no files)."""

    def __init__(self, case: Case) -> None:
        self.case = case

    def __enter__(self) -> str:
        if self.case.model == "cnn1d":
            return "mnist1d"
        self.original = lt.load_dataset
        lt.load_dataset = lambda name, data_dir=None, device="cpu", **options: self.case.data.to(device)
        return "cifar10"

    def __exit__(self, *exc: Any) -> None:
        if self.case.model != "cnn1d":
            lt.load_dataset = self.original


Runner = Callable[[], tuple[list[float], dict[str, float]]]  # per-epoch times, extras


def train_runner(case: Case, tmp: Path, optimizer: str, **options: Any) -> Runner:
    """``train()`` for ``case.epochs`` epochs with its defaults; the steady-state epoch times."""

    def run() -> tuple[list[float], dict[str, float]]:
        done: list[float] = []

        def hook(info: dict[str, Any]) -> None:
            if "epoch_done" in info:
                done.append(NOW())

        with _patched_data(case) as dataset:
            cfg = lt.TrainConfig(dataset=dataset, model=case.model, optimizers=[optimizer], epochs=case.epochs,
                                 batch_size=BATCH, device="cpu", seed=0, lr=0.1, **options)
            lt.train(cfg, Path(tempfile.mkdtemp(prefix="run-", dir=tmp)), force=True, progress=hook)
        epochs = [b - a for a, b in zip(done, done[1:])]  # epoch 2 .. last
        return epochs[:-1], {"last": epochs[-1]}

    return run


# --------------------------------------------------------------------------- the references


class RepoSAM(torch.optim.Optimizer):
    """davda54/sam's SAM optimizer, re-implemented from its description for the baseline.

    first_step: e(w) = rho * (w^2 if adaptive else 1) * g / ||(|w| if adaptive else 1) * g||
    (one norm over all parameters), a clone of every w kept in the state, w += e(w);
    second_step: w's storage swapped back to the clone, then the base optimizer's step.
    """

    def __init__(self, params: Any, base: type[torch.optim.Optimizer], rho: float, adaptive: bool, **kw: Any):
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **kw))
        self.base = base(self.param_groups, **kw)
        self.param_groups = self.base.param_groups

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        norms = [((torch.abs(p) if g["adaptive"] else 1.0) * p.grad).norm(p=2)
                 for g in self.param_groups for p in g["params"] if p.grad is not None]
        grad_norm = torch.norm(torch.stack(norms), p=2)
        for g in self.param_groups:
            scale = g["rho"] / (grad_norm + 1e-12)
            for p in g["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_((torch.pow(p, 2) if g["adaptive"] else 1.0) * p.grad * scale.to(p))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base.step()
        if zero_grad:
            self.zero_grad()


def _bn_momentum(model: nn.Module, off: bool) -> None:
    """davda54's disable_running_stats / enable_running_stats: BatchNorm momentum 0 on the
    second pass (buffers unchanged), restored for the first."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if off:
                m.backup_momentum = m.momentum
                m.momentum = 0
            elif hasattr(m, "backup_momentum"):
                m.momentum = m.backup_momentum


def _loader(ds: torch.utils.data.Dataset, shuffle: bool) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=shuffle, num_workers=0,
                                       generator=torch.Generator().manual_seed(0) if shuffle else None)


def _test_pass(model: nn.Module, loader: torch.utils.data.DataLoader, smoothing: float) -> None:
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for inputs, targets in loader:
            out = model(inputs)
            loss_sum += F.cross_entropy(out, targets, reduction="sum", label_smoothing=smoothing).item()
            correct += (out.argmax(1) == targets).sum().item()


def reference_runner(case: Case, mode: str, epochs: int) -> Runner:
    """mode: "sgd" (SWA repo's train_epoch), "sgd+test", "sam", "asam" (davda54 loop + its test pass)."""
    train_loader, test_loader = _loader(case.ref_train, True), _loader(case.ref_test, False)

    def run() -> tuple[list[float], dict[str, float]]:
        model = case.build()
        if mode.startswith("sgd"):
            opt: Any = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        else:
            opt = RepoSAM(model.parameters(), torch.optim.SGD, rho=0.05 if mode == "sam" else 2.0,
                          adaptive=mode == "asam", lr=0.1, momentum=0.9, weight_decay=5e-4)
        times = []
        for _ in range(epochs):
            t0 = NOW()
            model.train()
            if mode.startswith("sgd"):  # timgaripov/swa utils.train_epoch
                loss_sum, correct = 0.0, 0
                for inputs, target in train_loader:
                    output = model(inputs)
                    loss = F.cross_entropy(output, target)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    loss_sum += loss.item() * inputs.size(0)
                    correct += output.argmax(1).eq(target).sum().item()
                if mode == "sgd+test":
                    _test_pass(model, test_loader, 0.0)
            else:  # davda54/sam example/train.py
                for inputs, targets in train_loader:
                    _bn_momentum(model, off=False)
                    predictions = model(inputs)
                    loss = F.cross_entropy(predictions, targets, reduction="none", label_smoothing=0.1)
                    loss.mean().backward()
                    opt.first_step(zero_grad=True)
                    _bn_momentum(model, off=True)
                    F.cross_entropy(model(inputs), targets, reduction="none", label_smoothing=0.1).mean().backward()
                    opt.second_step(zero_grad=True)
                    with torch.no_grad():
                        correct = torch.argmax(predictions.data, 1) == targets
                        _ = (loss.cpu(), correct.cpu())
                _test_pass(model, test_loader, 0.1)
            times.append(NOW() - t0)
        return times, {}

    return run


# --------------------------------------------------------------------------- running and reporting


def interleaved(sides: dict[str, Runner], rounds: int) -> dict[str, list[float]]:
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    extras: dict[str, list[float]] = {}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for n in order:
            times, extra = sides[n]()
            out[n] += times
            for key, v in extra.items():
                extras.setdefault(f"{n} [{key}]", []).append(v)
        say(f"  round {r + 1}/{rounds} done (load {os.getloadavg()[0]:.1f})")
    out.update(extras)
    return out


def say(text: str = "") -> None:
    print(text, flush=True)


@dataclass
class Row:
    case: str
    ours: str
    baseline: str
    ours_min: float
    ours_med: float
    base_min: float
    base_med: float
    goal: str

    @property
    def ratio_min(self) -> float:
        return self.base_min / self.ours_min

    @property
    def ratio_med(self) -> float:
        return self.base_med / self.ours_med


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller CIFAR-shaped set, fewer epochs and rounds")
    ap.add_argument("--cases", default="cnn1d,resnet20")
    ap.add_argument("--rounds", type=int, default=None, help="default: 4 (cnn1d), 3 (resnet20); 2 with --quick")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time with one intra-op thread (robust on a shared machine)")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (wall clock only)")
    ap.add_argument("--no-sam", action="store_true", help="only the SGD epochs")
    args = ap.parse_args(argv)
    global NOW
    if args.clock == "cpu":
        torch.set_num_threads(1)
        NOW = time.thread_time
    elif args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    say(f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} | nproc {os.cpu_count()} | torch "
        f"{torch.__version__} | intra-op threads {torch.get_num_threads()} | clock "
        f"{'thread CPU time' if args.clock == 'cpu' else 'wall'} | load average {load0[0]:.2f} {load0[1]:.2f} "
        f"{load0[2]:.2f} | {platform.processor() or platform.machine()}")
    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="landscape-epoch-") as tmp:
        for which in [c.strip() for c in args.cases.split(",") if c.strip()]:
            case = mnist1d_case(args.quick) if which == "cnn1d" else cifar_case(args.quick)
            rounds = args.rounds or (2 if args.quick else (4 if case.model == "cnn1d" else 3))
            ref_epochs = case.epochs - 2  # as many as train() gives steady-state epochs
            sides: dict[str, Runner] = {
                "train() sgd": train_runner(case, Path(tmp), "sgd"),
                "ref sgd": reference_runner(case, "sgd", ref_epochs),
                "ref sgd + test": reference_runner(case, "sgd+test", ref_epochs),
            }
            if case.model != "cnn1d":  # the opt-in flag (float32, other summation order), for information
                sides["train() sgd --channels-last"] = train_runner(case, Path(tmp), "sgd", channels_last=True)
            if not args.no_sam:
                sides.update({
                    "train() sam": train_runner(case, Path(tmp), "sam"),
                    "davda54 sam": reference_runner(case, "sam", ref_epochs),
                    "train() asam": train_runner(case, Path(tmp), "asam"),
                    "davda54 asam": reference_runner(case, "asam", ref_epochs),
                })
            say(f"\n== {case.key}: {len(case.data.train)} train / {len(case.data.test)} test samples, batch {BATCH}; "
                f"train() {case.epochs} epochs a call ({case.epochs - 2} steady-state), {rounds} interleaved rounds")
            t = interleaved(sides, rounds)
            for name, times in t.items():
                say(f"  {name:22s} min {min(times):8.3f} s  median {statistics.median(times):8.3f} s  "
                    f"({len(times)} epochs)")
            pairs = [("train() sgd", "ref sgd", ">= 1.0x"), ("train() sgd", "ref sgd + test", ">= 1.0x")]
            if case.model != "cnn1d":
                pairs += [("train() sgd --channels-last", "ref sgd", "")]
            if not args.no_sam:
                pairs += [("train() sam", "davda54 sam", ""), ("train() asam", "davda54 asam", "")]
            for ours, base, goal in pairs:
                row = Row(case.key, ours, base, min(t[ours]), statistics.median(t[ours]), min(t[base]),
                          statistics.median(t[base]), goal)
                rows.append(row)
                say(f"  ratio {base} / {ours}: min {row.ratio_min:.2f}x, median {row.ratio_med:.2f}x")
            last = t.get("train() sgd [last]")
            if last:
                notes.append(f"{case.key}: train()'s last epoch (whole train split scored, final.pt) took "
                             f"{min(last):.3f} s (min) against {min(t['train() sgd']):.3f} s for a steady-state one.")
    load1 = os.getloadavg()
    say(f"\nload average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    say("\nSummary (per-epoch seconds; ratio = baseline / landscape, > 1 = landscape faster)\n")
    header = ("| case | landscape | baseline | landscape min / median s | baseline min / median s | ratio (min) "
              "| ratio (median) | goal |")
    say(header)
    say("|---|---|---|---|---|---|---|---|")
    for r in rows:
        met = "" if not r.goal else (" (met)" if r.ratio_min >= 1.0 and r.ratio_med >= 1.0 else " (NOT met)")
        say(f"| {r.case} | {r.ours} | {r.baseline} | {r.ours_min:.3f} / {r.ours_med:.3f} | {r.base_min:.3f} / "
            f"{r.base_med:.3f} | {r.ratio_min:.2f}x | {r.ratio_med:.2f}x | {r.goal}{met} |")
    for n in notes:
        say(f"- {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
