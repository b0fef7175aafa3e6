"""The trainer's opt-in speed flags, ``--channels-last`` and ``--bf16``, against its default.

One ``landscape.train.train_step`` (SGD, momentum, weight decay) on a batch of 128, exactly
as ``train_optimizer`` calls it, for each combination of the flags; the default (NCHW,
float32) is the baseline, measured in the same process. Rounds are interleaved (every
variant once per round, in rotating order) and the best per-step time of the rounds is
kept, so a busy neighbour slows all variants alike. Cases: resnet20 on CIFAR-shaped
random images and cnn1d on MNIST-1D-shaped random signals (channels_last applies to 2-D
convolutions only, so cnn1d has the bf16 rows only).

    .venv/bin/python bench/train_flags.py [--rounds 4] [--steps 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from landscape.models import build_model  # noqa: E402
from landscape.train import TrainConfig, make_optimizer, train_step  # noqa: E402

CASES = {  # name: (model, input shape, flag combinations)
    "resnet20 / 32x32x3": ("resnet20", [3, 32, 32], [(False, False), (True, False), (False, True), (True, True)]),
    "cnn1d / 1x40": ("cnn1d", [1, 40], [(False, False), (False, True)]),
}


def step_time(model_name: str, shape: list[int], channels_last: bool, bf16: bool, device: torch.device,
              steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=10, input_shape=shape).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = make_optimizer("sgd", model, TrainConfig(lr=0.05))
    x = torch.randn(128, *shape, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)
    train_step("sgd", model, optimizer, x, y, bf16=bf16)  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        train_step("sgd", model, optimizer, x, y, bf16=bf16)
    sync(device)
    return (time.perf_counter() - start) / steps


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    console = Console()
    console.print(f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                  f"{torch.get_num_threads()} threads, device {device}")
    best: dict[tuple[str, bool, bool], float] = {}
    for r in range(args.rounds):
        for name, (model, shape, flags) in CASES.items():
            order = flags[r % len(flags):] + flags[: r % len(flags)]
            for cl, bf16 in order:
                t = step_time(model, shape, cl, bf16, device, args.steps)
                best[name, cl, bf16] = min(best.get((name, cl, bf16), float("inf")), t)
        console.print(f"round {r + 1}/{args.rounds} done")

    table = Table(title=f"train_step, batch 128, SGD ({device}): flags vs the default, best of {args.rounds} rounds")
    for col in ("case", "flags", "ms / step", "default ms / step", "ratio"):
        table.add_column(col, justify="left" if col in ("case", "flags") else "right")
    for name, (_, _, flags) in CASES.items():
        base = best[name, False, False]
        for cl, bf16 in flags[1:]:
            label = " ".join(f for f, on in (("--channels-last", cl), ("--bf16", bf16)) if on)
            t = best[name, cl, bf16]
            console.print(f"ratio {name} {label}: {base / t:.2f}x ({1000 * t:.1f} vs {1000 * base:.1f} ms/step)")
            table.add_row(name, label, f"{1000 * t:.1f}", f"{1000 * base:.1f}", f"{base / t:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
