"""Self-describing checkpoints: atomic save, safe load.

A checkpoint is a plain dict of tensors, strings and numbers, so it loads with
``torch.load(path, weights_only=True)``: code in a pickle is never executed. It names
its model and data, so an analysis needs no other argument to rebuild it.

Foreign checkpoints (plain state_dicts, dicts holding one, prefixed keys) load too; what
they are weights of comes from the user (:func:`resolve_specs`), and their keys are fitted
to the model (:func:`fit_state_dict`).
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from landscape import files
from landscape.errors import UserError
from landscape.factories import is_user_factory

FORMAT = "landscape-checkpoint/1"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` for a temp file beside ``path``, then rename it into place.

    A reader never sees a half-written file, and a kill mid-write leaves the old one. The
    file gets the umask's permissions; a failed write is one line naming ``path``
    (see :mod:`landscape.files`).
    """
    files.atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> None:
    files.atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    # Serialized in memory first: torch's zip writer reports a full disk as a RuntimeError
    # ("enforce fail at inline_container.cc"), a plain write as the OSError it is.
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    files.atomic_write_bytes(path, buffer.getbuffer())


def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    # Contiguous whatever the training memory format (channels_last): one file layout.
    return {k: v.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)
            for k, v in model.state_dict().items()}


@dataclass
class Checkpoint:
    """A loaded checkpoint: the weights and what they are weights of."""

    state_dict: dict[str, torch.Tensor]
    model: dict[str, Any] | None  # {"name": ..., "kwargs": {...}}; None: a foreign file that does not say
    data: dict[str, Any] | None  # {"name": ..., **options}; None likewise
    epoch: int | None = None
    step: int | None = None
    lr: float | None = None
    optimizer: str | None = None
    kind: str = "iterate"
    path: str | None = None
    notes: list[str] = field(default_factory=list)  # how a foreign file's weights were found and fitted

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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Where checkpoints of other tools keep their state_dict, most usual first.
STATE_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "ema", "model_ema",
              "ema_state_dict", "state", "weights", "params")
SAVE_HINT = "save the weights instead: torch.save(model.state_dict(), PATH)"


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
        text = _ANSI.sub("", str(exc))
        found = re.search(r"GLOBAL ([\w.]+)", text) or re.search(r"global '?([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        raise UserError(
            f"{path}: refused: it holds pickled Python objects{what}, i.e. code, which is never run; "
            f"{SAVE_HINT} (or, only if you trust the file: torch.save(torch.load(PATH, weights_only=False)"
            ".state_dict(), NEW))"
        ) from None
    except Exception as exc:  # torch.load fails in many ways on junk (struct.error, EOFError, ...)
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None


def load_checkpoint(path: str | Path, *, state_key: str | None = None) -> Checkpoint:
    """Read a checkpoint: landscape's own, or a foreign one (a plain state_dict, a dict holding one
    under a usual key such as ``state_dict``/``model``/``ema``, or ``state_key``).

    Nothing is imported: a foreign file has ``model``/``data`` None, to be said by the user
    (:func:`resolve_specs`); its key prefixes are fitted to the model later (:func:`fit_state_dict`).
    """
    obj = torch_load_safely(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        if not isinstance(obj.get("state_dict"), dict):
            raise UserError(f"{path}: damaged landscape checkpoint (no state_dict)")
        return Checkpoint(
            state_dict=obj["state_dict"],
            model=_spec(obj.get("model"), path, "model"),
            data=_spec(obj.get("data"), path, "data"),
            epoch=_int(obj.get("epoch")),
            step=_int(obj.get("step")),
            lr=obj.get("lr") if isinstance(obj.get("lr"), (int, float)) else None,
            optimizer=obj.get("optimizer") if isinstance(obj.get("optimizer"), str) else None,
            kind=obj.get("kind") if obj.get("kind") in ("iterate", "averaged") else "iterate",
            path=str(path),
        )
    if isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"].startswith("landscape"):
        raise UserError(f"{path}: unsupported checkpoint format {obj['format']!r} (expected {FORMAT})")
    state, where = _find_state_dict(obj, path, state_key)
    container = obj if where else {}
    return Checkpoint(state_dict=state, model=None, data=None, path=str(path),
                      epoch=_int(container.get("epoch")),
                      step=_int(container.get("global_step", container.get("step"))),
                      notes=[where] if where else [])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _spec(value: Any, path: str | Path, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise UserError(f"{path}: damaged landscape checkpoint (its {what} entry has no name)")
    if what == "model" and not isinstance(value.get("kwargs", {}), dict):
        raise UserError(f"{path}: damaged landscape checkpoint (model kwargs is not a dict)")
    return value


def _is_state(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def _find_state_dict(obj: Any, path: str | Path, state_key: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The state_dict in a foreign checkpoint, and where it was found ('' when the file is one)."""
    if state_key is not None:
        if not isinstance(obj, dict) or state_key not in obj:
            keys = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"{path}: no key {state_key!r} (it holds {keys})")
        if not _is_state(obj[state_key]):
            raise UserError(f"{path}: {state_key!r} is not a state_dict of tensors")
        return obj[state_key], f"state_dict under key {state_key!r}"
    if _is_state(obj):
        return obj, ""
    if isinstance(obj, dict):
        found = [k for k in STATE_KEYS if _is_state(obj.get(k))]
        if found:
            others = f" (also found {', '.join(map(repr, found[1:]))}: choose with --state-key)" if found[1:] else ""
            return obj[found[0]], f"state_dict under key {found[0]!r}{others}"
        keys = ", ".join(map(repr, list(obj)[:8]))
        raise UserError(f"{path}: no state_dict of tensors in it (keys {keys}); name the key with --state-key, "
                        f"or {SAVE_HINT}")
    raise UserError(f"{path}: holds a {type(obj).__name__}, not a state_dict; {SAVE_HINT}")


def fit_state_dict(ckpt: Checkpoint, expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``ckpt``'s tensors under the model's own names.

    A prefix (``module.`` of DataParallel/DDP/AveragedModel, ``_orig_mod.`` of torch.compile,
    ``model.`` of Lightning, or any other) is stripped only when the keys then match the
    model's exactly; AveragedModel's ``n_averaged`` counter is dropped. Integer buffers
    (``num_batches_tracked``) may be absent. What was done is added to ``ckpt.notes``. When no
    prefix fits, the state is returned as it is, for the model's layout check to name the
    mismatching keys.
    """
    state = ckpt.state_dict
    names = set(expected)
    needed = {k for k, v in expected.items() if v.is_floating_point()}

    def fits(keys: set[str]) -> bool:
        return needed <= keys <= names

    if fits(set(state)):
        return state
    for prefix in _prefixes(state):
        rest = [k for k in state if not k.startswith(prefix)]
        dropped = rest if prefix == "module." and rest == ["n_averaged"] else []  # swa_utils.AveragedModel
        stripped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if (not rest or dropped) and fits(set(stripped)):
            ckpt.notes.append(f"stripped the key prefix {prefix!r}"
                              + (" and dropped AveragedModel's 'n_averaged'" if dropped else ""))
            return stripped
    return state  # as it is: the engine's layout check names the first mismatching keys


def _prefixes(state: Mapping[str, Any]) -> list[str]:
    """Candidate prefixes: the first one to three dotted parts of the keys, longest first."""
    keys = [k for k in state if k != "n_averaged"]
    if not keys:
        return []
    parts = keys[0].split(".")
    return [".".join(parts[:i]) + "." for i in range(min(3, len(parts) - 1), 0, -1)]


def resolve_specs(ckpts: list[Checkpoint], *, model: str | None = None, model_options: Mapping[str, Any] | None = None,
                  dataset: str | None = None, data_options: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (model, data) specs ``ckpts`` are scored with: what the user gave, else what the files say.

    Given a name, the user's options are laid over the file's when the file names the same
    model or data (so ``--model mymod:net`` vouches for a checkpoint of mymod:net and keeps
    its options); given only options, they are laid over the file's. A factory
    (``package.module:factory``) that only a file names is refused, never imported: reading a
    file does not run code.
    """
    stored = [c for c in ckpts if c.model is not None]
    model_spec = _choose(stored, "model", model, dict(model_options or {}),
                         lambda c: {"name": c.model["name"], "kwargs": dict(c.model.get("kwargs") or {})},
                         lambda name, opts: {"name": name, "kwargs": opts},
                         lambda spec, opts: {"name": spec["name"], "kwargs": {**spec["kwargs"], **opts}})
    data_spec = _choose(stored, "dataset", dataset, dict(data_options or {}), lambda c: dict(c.data),
                        lambda name, opts: {"name": name, **opts},
                        lambda spec, opts: {**spec, **opts})
    return model_spec, data_spec


def _choose(stored: list[Checkpoint], what: str, given: str | None, options: dict[str, Any],
            read: Callable[[Checkpoint], dict[str, Any]], new: Callable[[str, dict], dict[str, Any]],
            merge: Callable[[dict, dict], dict[str, Any]]) -> dict[str, Any]:
    flag = "--model" if what == "model" else "--dataset"
    specs = [read(c) for c in stored]
    if given is not None:
        same = [s for s in specs if s["name"] == given]
        return merge(same[0], options) if same and all(s == same[0] for s in same) else new(given, options)
    if not specs:
        raise UserError(f"a plain state_dict does not say what {what} it is for; give {flag} "
                        f"({'and --dataset' if what == 'model' else 'as well as --model'})")
    for c, s in zip(stored[1:], specs[1:]):
        if s != specs[0]:
            raise UserError(f"{stored[0].path} and {c.path} name different {what}s ({_describe(specs[0])} and "
                            f"{_describe(s)}); give {flag} to score them with one")
    spec = merge(specs[0], options)
    if is_user_factory(spec["name"]):
        raise UserError(f"{stored[0].path} names the {what} factory {spec['name']!r}, which is not built in, so it "
                        f"was not imported (reading a file never runs code); if you trust it, give "
                        f"{flag} {spec['name']}")
    return spec


def _describe(spec: Mapping[str, Any]) -> str:
    options = spec.get("kwargs", {k: v for k, v in spec.items() if k != "name"})
    shown = ", ".join(f"{k}={v!r}" for k, v in sorted(options.items()))
    return f"{spec['name']}({shown})"


def checkpoint_digest(ckpt: Checkpoint) -> str:
    """sha256 of the checkpoint's file, or of its tensors when it was handed over in Python."""
    if ckpt.path and Path(ckpt.path).is_file():
        return file_sha256(ckpt.path)
    return state_sha256(ckpt.state_dict)


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of a state_dict's tensors, in key order."""
    digest = hashlib.sha256()
    for name, value in state.items():
        t = value.detach().to("cpu").contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
