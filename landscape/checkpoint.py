"""Self-describing checkpoints: atomic save, safe load.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(path, weights_only=True)``: code in a pickle is never executed. It names
its model and data, so an analysis needs no other argument to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from landscape.errors import UserError

FORMAT = "landscape-checkpoint/1"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temp file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a kill mid-write leaves the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous whatever the training memory format (channels_last): one file layout.
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the weights and what they are weights of."""

    state_dict: dict[str, torch.Tensor]
    model: dict[str, Any]  # {"name": ..., "kwargs": {...}}
    data: dict[str, Any]  # {"name": ..., **options}
    epoch: int | None = None
    step: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    kind: str = "iterate"
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "model": self.model,
            "data": self.data,
            "state_dict": self.state_dict,
            "epoch": self.epoch,
            "step": self.step,
            "lr": self.lr,
            "optimizer": self.optimizer,
            "kind": self.kind,
        }


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    *,
    model_spec: dict[str, Any],
    data_spec: dict[str, Any],
    epoch: int,
    step: int,
    lr: float,
    optimizer: str,
    kind: str = "iterate",
) -> None:
    ckpt = Checkpoint(
        state_dict=cpu_state_dict(model),
        model=_jsonable(model_spec),
        data=_jsonable(data_spec),
        epoch=epoch,
        step=step,
        lr=float(lr),
        optimizer=optimizer,
        kind=kind,
    )
    atomic_torch_save(ckpt.to_dict(), path)


def _jsonable(spec: dict[str, Any]) -> dict[str, Any]:
    # Round-trip through JSON: tuples become lists, and anything that would need a
    # pickle to load fails loudly here rather than at weights_only load time.
    return json.loads(json.dumps(spec))


def torch_load_safely(path: str | Path) -> Any:
    """``torch.load(weights_only=True)`` with every failure turned into one clear line."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsafe pickle"
        raise UserError(
            f"{path}: refused to load: the pickle needs code to run ({first[:160]}); "
            "only plain tensors and values are accepted"
        ) from None
    except Exception as exc:  # torch.load fails in many ways on junk (struct.error, EOFError, ...)
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def load_checkpoint(
    path: str | Path,
    *,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Checkpoint:
    """Load a landscape checkpoint, or a plain state_dict when ``model``/``data`` say what it is."""
    obj = torch_load_safely(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return Checkpoint(
            state_dict=obj["state_dict"],
            model=model or obj["model"],
            data=data or obj["data"],
            epoch=obj.get("epoch"),
            step=obj.get("step"),
            lr=obj.get("lr"),
            optimizer=obj.get("optimizer"),
            kind=obj.get("kind", "iterate"),
            path=str(path),
        )
    if isinstance(obj, dict) and isinstance(obj.get("format"), str):
        raise UserError(f"{path}: unsupported checkpoint format {obj['format']!r} (expected {FORMAT})")
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise UserError(f"{path}: neither a landscape checkpoint nor a state_dict of tensors")
    if model is None or data is None:
        raise UserError(
            f"{path}: a plain state_dict does not say what it is; pass --model and --dataset"
        )
    return Checkpoint(state_dict=state, model=model, data=data, path=str(path))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
