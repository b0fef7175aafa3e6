"""Running under torchrun: one process per device, PyTorch's own distributed engine.

Nothing here does anything unless the process was started by ``torchrun`` (or anything
else that sets the ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` environment of
``init_process_group``'s ``env://``) with a world size above 1. A plain ``python`` or
``landscape`` process, and a ``torchrun --nproc_per_node=1`` one, take exactly the
single-process code paths.

:func:`init` joins the process group: gloo for CPU tensors, and on a machine with CUDA
also nccl for CUDA tensors (backend ``"cpu:gloo,cuda:nccl"``), so small bookkeeping
tensors always travel on the CPU through gloo while DDP's gradients travel through nccl.
Each process binds the GPU of its ``LOCAL_RANK``, so ``--device auto``/``cuda`` means
"my GPU". The key-value store the processes rendezvoused through (the torchrun agent's
TCP store) is kept: :class:`WorkQueue` hands out work from an atomic counter in it, which
is what lets the analyses balance dynamically (a rank asks for the next chunk of points
when it is free, so a slow point holds up only the rank computing it). The sharpness
analysis instead splits the data: each rank sums over its share of the batches and
:func:`all_reduce_tensor` adds the shares up, so every rank holds the same numbers.

Who does what: rank 0 alone touches files (result files, checkpoints, metrics); every
rank computes. :func:`on_main` runs a step on rank 0 and hands its outcome (or its error)
to all ranks, so a mistake on the command line is one error everywhere, not a hang.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from landscape.errors import UserError

T = TypeVar("T")

# Collectives may wait this long for a slow rank (e.g. rank 0 writing a big checkpoint, or a
# chunk of expensive points); torchrun stops every rank when one of them dies, so a dead peer
# does not leave the others waiting this long.
TIMEOUT = timedelta(hours=2)

_store: dist.Store | None = None


def launched() -> bool:
    """Started by torchrun (or an equivalent launcher) with more than one process."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ
    except ValueError:
        return False


def backend() -> str:
    """gloo on the CPU; with CUDA also nccl for CUDA tensors."""
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init() -> bool:
    """Join the process group when launched by torchrun; idempotent. True when distributed.

    A process group the caller initialized already (their own script) is used as it is.
    """
    global _store
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if not launched():
        return False
    if not dist.is_available():
        raise UserError("launched with WORLD_SIZE > 1, but this PyTorch build has no torch.distributed")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA device(s): "
                            "use --nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(local)
    # The same rendezvous init_process_group(init_method="env://") does, keeping the store.
    store, rank_, world = next(dist.rendezvous("env://", timeout=TIMEOUT))
    store.set_timeout(TIMEOUT)
    kwargs: dict[str, Any] = {}
    if torch.cuda.is_available():
        kwargs["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend(), store=store, rank=rank_, world_size=world, timeout=TIMEOUT, **kwargs)
    _store = store
    atexit.register(_shutdown)
    return world > 1


def _shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        # Leave together: a rank that tears gloo down while its peer is still inside a
        # collective aborts the peer ("terminate called without an active exception").
        try:
            dist.barrier()
        except Exception:
            pass
        dist.destroy_process_group()


def is_distributed() -> bool:
    """In a process group of more than one process (after :func:`init`)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Rank 0 (or the only process): the one that writes files."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable objects of our own processes)."""
    if not is_distributed():
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T], share: Callable[[T], Any] = lambda _: None) -> tuple[T | None, Any]:
    """Run ``fn`` on rank 0 only; every rank gets ``(fn(), share(fn()))`` on rank 0, ``(None, share(...))`` elsewhere.

    An exception on rank 0 is raised on every rank (a UserError with its message, so the
    command fails with the same one-line error everywhere instead of leaving the others
    waiting). Not distributed: ``(fn(), share(fn()))``.
    """
    if not is_distributed():
        value = fn()
        return value, share(value)
    value, outcome = None, None
    if is_main():
        try:
            value = fn()
            outcome = ("ok", share(value))
        except UserError as exc:
            broadcast_object(("user-error", str(exc)))
            raise
        except BaseException as exc:
            broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
            raise
    outcome = broadcast_object(outcome)
    if outcome[0] == "user-error":
        raise UserError(outcome[1])
    if outcome[0] == "error":
        raise RuntimeError(f"rank 0 failed: {outcome[1]}")
    return value, outcome[1]


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise float64 sum over ranks (on the CPU, through gloo)."""
    t = torch.tensor(values, dtype=torch.float64)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


_OPS = {"sum": "SUM", "min": "MIN", "max": "MAX"}


def all_reduce_tensor(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``t`` reduced element-wise over ranks (``"sum"``, ``"min"`` or ``"max"``), as a new tensor.

    Every rank gets the same bits (the collective computes the result once and hands it
    out), which is what lets the ranks take the same decisions from it. CPU tensors travel
    through gloo, CUDA tensors through nccl. Not distributed: a copy of ``t``.
    """
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=getattr(dist.ReduceOp, _OPS[op]))
    return out


def shard(n: int) -> slice:
    """This rank's contiguous share of ``range(n)`` (sizes differ by at most one; rank order)."""
    world, r = world_size(), rank()
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return slice(start, start + base + (r < extra))


@torch.no_grad()
def broadcast_state(module: torch.nn.Module, src: int = 0) -> None:
    """Overwrite every rank's buffers (BatchNorm statistics) with those of rank ``src``."""
    if not is_distributed():
        return
    for buf in module.buffers():
        dist.broadcast(buf, src=src)


def wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """``DistributedDataParallel(model)``; the model itself when not distributed."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ----------------------------------------------------------------------------- work queue

def store() -> dist.Store:
    """The key-value store of the process group (the torchrun agent's TCP store)."""
    if _store is not None:
        return _store
    # A process group the caller initialized: its own store.
    from torch.distributed.distributed_c10d import _get_default_store

    return _get_default_store()


class WorkQueue:
    """``n`` numbered jobs handed out one at a time, results collected by rank 0.

    Every rank calls :meth:`take` when it is free and gets the next job number from an
    atomic counter in the store (so fast ranks take more jobs: dynamic balancing); a rank
    other than 0 :meth:`post` s its result bytes under the job's key; rank 0 collects them
    with :meth:`collect` (non-blocking) and :meth:`finish` (waits for the rest). ``token``
    must be unique per queue and the same on every rank (rank 0 makes one and broadcasts it).
    ``kv`` defaults to the process group's store.
    """

    def __init__(self, token: str, n: int, kv: dist.Store | None = None):
        self.prefix, self.n = f"landscape/queue/{token}/", n
        self.store = kv if kv is not None else store()
        self._mine: set[int] = set()
        self._waiting: list[int] = []
        self._seen = 0  # jobs below this number are known to rank 0 as taken

    def take(self) -> int | None:
        k = self.store.add(self.prefix + "next", 1) - 1
        if k >= self.n:
            return None
        self._mine.add(k)
        return k

    def post(self, k: int, data: bytes) -> None:
        self.store.set(f"{self.prefix}{k}", data)

    def collect(self) -> list[tuple[int, bytes]]:
        """(job, result) of the jobs other ranks have finished since the last call."""
        handed = min(self.store.add(self.prefix + "next", 0), self.n)
        self._waiting += [k for k in range(self._seen, handed) if k not in self._mine]
        self._seen = max(self._seen, handed)
        out, still = [], []
        for k in self._waiting:
            key = f"{self.prefix}{k}"
            if self.store.check([key]):
                out.append((k, self.store.get(key)))
                self.store.delete_key(key)
            else:
                still.append(k)
        self._waiting = still
        return out

    def pending(self) -> bool:
        return self._seen < self.n or bool(self._waiting)

    def wait(self, poll: float = 0.01) -> list[tuple[int, bytes]]:
        """Block until at least one more result arrives (or none are outstanding)."""
        while self.pending():
            got = self.collect()
            if got:
                return got
            time.sleep(poll)
        return []
