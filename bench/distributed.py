"""1 process against N torchrun processes: a loss surface and a training run.

Usage::

    python bench/distributed.py [--grid 11] [--epochs 10] [--rounds 2] [--nproc 2] [--out /tmp/bench-dist]

The embedded default (MNIST-1D, 4000 train / 1000 test, cnn1d), CPU. Each case launches
this file again as a worker, in one process or under ``torchrun --standalone
--nproc_per_node=N``; the worker times, between barriers, ``landscape.analyses.surface`` on a
GxG grid and ``landscape.train.train`` (sgd, ``--epochs``), after a warm-up (a small
surface that every rank takes part in: data, engine and process group ready). "launch" is the wall clock of the whole
worker command, so launch - work = interpreter start, imports, rendezvous, data loading.
Best of ``--rounds`` rounds, cases interleaved; ratios are against "1 process" of the same
table (the best rounds).

Cases (torchrun sets OMP_NUM_THREADS=1 per process when nproc > 1):
  1 process              torch's default intra-op threads (all cores)
  1 process, 1 thread    OMP_NUM_THREADS=1: what one rank of 2 gets
  torchrun N x 1 thread
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TORCHRUN = [str(Path(PY).with_name("torchrun"))] if Path(PY).with_name("torchrun").exists() \
    else [PY, "-m", "torch.distributed.run"]


def worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from landscape import distributed
    from landscape.analyses import AnalysisOptions, surface
    from landscape.train import TrainConfig, train

    distributed.init()
    out, g = args.out, args.grid
    tag = f"w{distributed.world_size()}_{os.environ.get('OMP_NUM_THREADS', 'default')}"
    opts = lambda: AnalysisOptions(device="cpu", overwrite=True)
    # Warm-up on every rank (a chunk each at least): lazy initialization stays out of the timing.
    warm = np.linspace(-0.1, 0.1, 4 * distributed.world_size())
    surface(args.ckpt, out / f"warm_{tag}.h5", warm, np.zeros(1), opts=opts())
    timings = {}
    distributed.barrier()
    t0, c0 = time.perf_counter(), time.process_time()
    surface(args.ckpt, out / f"surface_{tag}.h5", np.linspace(-1, 1, g), np.linspace(-1, 1, g), opts=opts())
    c1 = time.process_time()  # before the barrier: waiting there may spin
    distributed.barrier()
    timings["surface"] = time.perf_counter() - t0
    t0, c2 = time.perf_counter(), time.process_time()
    train(TrainConfig(optimizers=["sgd"], epochs=args.epochs, device="cpu"), out / f"train_{tag}", force=True)
    c3 = time.process_time()
    distributed.barrier()
    timings["train"] = time.perf_counter() - t0
    # CPU seconds of all threads of all ranks: the work done, whatever else runs on the machine.
    timings["surface_cpu"], timings["train_cpu"] = distributed.all_reduce_sum([c1 - c0, c3 - c2])
    if distributed.is_main():
        timings["threads"] = torch.get_num_threads()
        args.result.write_text(json.dumps(timings))


def launch(cmd: list[str], env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        result = Path(fh.name)
    full = cmd + [str(Path(__file__).resolve()), "--worker", "--grid", str(args.grid), "--epochs", str(args.epochs),
                  "--out", str(args.out), "--ckpt", str(args.ckpt), "--result", str(result)]
    t0 = time.perf_counter()
    proc = subprocess.run(full, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(full)}\n{proc.stderr[-3000:]}")
    timings = json.loads(result.read_text())
    result.unlink()
    return {**timings, "launch": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", type=int, default=11)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench-dist"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    args.out.mkdir(parents=True, exist_ok=True)
    args.ckpt = args.out / "run" / "sgd" / "final.pt"
    if not args.ckpt.exists():
        subprocess.run([PY, "-m", "cli.main", "train", "--epochs", "2", "--device", "cpu", "--out",
                        str(args.out / "run"), "--force"], cwd=ROOT, check=True, capture_output=True)
    cases = {"1 process": ([PY], {}), "1 process, 1 thread": ([PY], {"OMP_NUM_THREADS": "1"})}
    for n in range(2, args.nproc + 1):
        cases[f"torchrun {n} x 1 thread"] = (TORCHRUN + ["--standalone", f"--nproc_per_node={n}"], {})
    print(f"cpus: {os.cpu_count()}, load average before: {tuple(round(x, 1) for x in os.getloadavg())}")
    best: dict[str, dict[str, float]] = {}
    for r in range(args.rounds):
        for name, (cmd, env) in cases.items():
            t = launch(cmd, env, args)
            print(f"round {r + 1} {name}: surface {t['surface']:.2f}s ({t['surface_cpu']:.2f} CPU-s), "
                  f"train {t['train']:.2f}s ({t['train_cpu']:.2f} CPU-s), launch {t['launch']:.1f}s", flush=True)
            best[name] = {k: min(v, best.get(name, {}).get(k, float("inf"))) for k, v in t.items()}
    print(f"load average after: {tuple(round(x, 1) for x in os.getloadavg())}")
    g, base = args.grid, best["1 process"]
    print(f"\nsurface {g}x{g} = {g * g} points; train sgd {args.epochs} epochs x 4000 samples (batch 128)")
    print(f"{'case':<24}{'surface s':>10}{'points/s':>10}{'ratio':>7}{'CPU-s':>7}{'train s':>9}{'samples/s':>11}"
          f"{'ratio':>7}{'CPU-s':>7}{'launch s':>10}")
    for name, t in best.items():
        print(f"{name:<24}{t['surface']:>10.2f}{g * g / t['surface']:>10.1f}{base['surface'] / t['surface']:>6.2f}x"
              f"{t['surface_cpu']:>7.1f}{t['train']:>9.2f}{4000 * args.epochs / t['train']:>11.0f}"
              f"{base['train'] / t['train']:>6.2f}x{t['train_cpu']:>7.1f}{t['launch']:>10.1f}")


if __name__ == "__main__":
    main()
