"""Choosing the device (`auto` means CUDA when there is one, else the CPU) and the CPU threads."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from landscape.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.split(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"--device {name!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine (use --device auto or cpu)")
    return torch.device(name)


def default_threads(sample_seconds: float = 0.1) -> int:
    """CPU threads for torch that do not oversubscribe the machine.

    The cores this process may use (physical ones: a hyperthread adds little to dense
    kernels), less the cores other processes keep busy right now, measured from
    /proc/stat over ``sample_seconds`` (at least 1). On a shared 2-core machine with one
    other CPU-bound process, two threads ran every analysis about 5x slower than one
    (OpenMP threads wait for each other while one is descheduled).
    """
    # Under torchrun the processes of one machine share its cores (and start together, so
    # they cannot see each other's load yet).
    cores = max(1, _usable_cores() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)))
    busy = _busy_cores(sample_seconds)
    return max(1, min(cores, round(cores - busy)))


def _usable_cores() -> int:
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:  # one entry per physical core: the distinct sibling lists
        siblings = {p.read_text().strip() for p in Path("/sys/devices/system/cpu").glob(
            "cpu[0-9]*/topology/thread_siblings_list")}
    except OSError:
        siblings = set()
    return max(1, min(logical, len(siblings) or logical))


def _busy_cores(seconds: float) -> float:
    """Cores busy with other work: the non-idle share of all CPU time over ``seconds``
    (this process sleeps meanwhile), times the number of CPUs; the load average where
    /proc/stat is missing."""

    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    return (1 - (idle1 - idle0) / elapsed) * (os.cpu_count() or 1)
