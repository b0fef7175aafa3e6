"""The parameter space of a model, and loss/accuracy at many points of it, fast.

A *point* is one flat float32 vector over every floating-point entry of the model's
``state_dict`` (parameters and floating buffers such as BatchNorm running statistics), in
``state_dict`` order. Integer buffers (``num_batches_tracked``) are never part of a point:
they are never interpolated or perturbed. :class:`StateLayout` maps between state dicts and
points; :class:`Engine` scores points.

How the engine is fast:

* The data is already device resident (``landscape.data``): batches are tensor slices, there
  is no DataLoader and no per-sample Python, and the batches are large (``batch_size``).
* ``"loop"`` strategy: the model is built once and every floating tensor of it is turned
  into a view of one flat buffer, so loading a point is a single ``copy_`` (one memcpy), not
  ``load_state_dict``. Scoring runs under ``torch.inference_mode``.
* ``"vmap"`` strategy: ``torch.func.functional_call`` + ``torch.func.vmap`` evaluate a chunk
  of points in one batched forward (the chunk sized from ``memory_budget_gb``). With BN
  recompute it is two batched passes per chunk: one in which every BatchNorm layer
  normalizes with batch statistics and hands out its per-point statistics, then the eval-mode
  scoring with those statistics written into each point's running-statistics entries.
* ``"auto"`` picks per device, see :func:`choose_strategy` for the rule and the numbers
  behind it.
* BatchNorm recompute (``landscape.batchnorm`` has the exact definition): one training-mode
  forward over the train split in groups of ``bn_batch`` (128) samples, which is also the
  cache-sized batch on the CPU; each layer's statistics come out of the BatchNorm kernel
  itself (``torch.native_batch_norm`` returns the batch mean and inverse std), so no extra
  pass over the activations, no ``update_bn`` bookkeeping, nothing written into the model
  but the final statistics.
* CPU convolutions: 2-D conv nets run in ``channels_last`` (1.3-1.6x faster than NCHW for
  ResNet-20 in oneDNN; the conv weights are then refreshed by a strided copy per point), and
  the scoring batch is capped so one layer's output stays cache sized (ResNet-20: 128; see
  ``Engine._score_batch_size``). Measured and *not* kept: folding BatchNorm into the
  convolutions for the scoring pass (no gain: 0.375 s vs 0.345 s per 512 ResNet-20 images in
  channels_last, oneDNN already fuses it cheaply), oneDNN tensors (``torch.utils.mkldnn``:
  no gain), ``torch.compile`` (1.25x on ResNet-20 but ~25 s of compilation per process and a
  recompile per batch shape), running ``nn.Conv1d`` as a channels_last 2-D convolution
  (cnn1d: 42.9 vs 42.7 ms per point, no gain), 1 thread instead of 2 (2x slower on an idle
  machine).

Every number is the same kind as ``landscape.evaluate.evaluate``: per-sample mean
cross-entropy and accuracy over the whole split (or a fixed seeded subset), accumulated in
float64. BatchNorm statistics come from the train split (whole, or its own ``bn_samples``
subset), never from the scoring subset. NaN/inf are returned as they are; a diverged point
never stops the others.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape import batchnorm
from landscape.batchnorm import BN_BATCH
from landscape.data import Dataset, Split
from landscape.errors import UserError
from landscape.models import build_model

__all__ = ["BN_MODES", "ROLES", "STRATEGIES", "Engine", "Entry", "StateLayout", "choose_strategy"]

ROLES: tuple[str, ...] = ("weight", "bias", "bn", "buffer")
BN_MODES: tuple[str, ...] = ("recompute", "keep")
STRATEGIES: tuple[str, ...] = ("auto", "loop", "vmap")
SPLITS: tuple[str, ...] = ("train", "test")

# Modules whose affine parameters are "bn" (normalization) entries.
_NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class Entry:
    """One floating ``state_dict`` entry: where it lives in a point and what it is."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int
    role: str  # "weight" | "bias" | "bn" | "buffer"
    dtype: torch.dtype = field(default=torch.float32, compare=False)

    @property
    def slice(self) -> slice:
        return slice(self.offset, self.offset + self.numel)


def _roles_from_model(state_dict: Mapping[str, Tensor], model: nn.Module) -> dict[str, str]:
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    norm_prefixes = {name for name, m in model.named_modules(remove_duplicate=False) if isinstance(m, _NORM_TYPES)}
    roles = {}
    for name, value in state_dict.items():
        prefix = name.rpartition(".")[0]
        if name not in params:
            roles[name] = "buffer"
        elif prefix in norm_prefixes:
            roles[name] = "bn"
        elif value.dim() > 1:
            roles[name] = "weight"
        else:
            roles[name] = "bias"
    return roles


def _roles_from_names(state_dict: Mapping[str, Tensor]) -> dict[str, str]:
    """Roles without the module: a prefix owning running statistics is a norm layer.

    (LayerNorm/GroupNorm parameters then read as "bias"; pass the model to get them right.)
    """
    stats = ("running_mean", "running_var")
    norm_prefixes = {name.rpartition(".")[0] for name in state_dict if name.rpartition(".")[2] in stats}
    roles = {}
    for name, value in state_dict.items():
        prefix, _, attr = name.rpartition(".")
        if attr in stats:
            roles[name] = "buffer"
        elif prefix in norm_prefixes:
            roles[name] = "bn"
        elif value.dim() > 1:
            roles[name] = "weight"
        else:
            roles[name] = "bias"
    return roles


class StateLayout:
    """Where each floating ``state_dict`` entry sits in a flat point vector.

    Roles: ``"weight"`` a parameter with dim > 1 (a filter is a slice along dim 0);
    ``"bias"`` any other parameter outside a normalization layer; ``"bn"`` parameters of
    BatchNorm/LayerNorm/GroupNorm(/InstanceNorm/RMSNorm) modules; ``"buffer"`` floating
    buffers (running statistics). Without ``model`` roles are inferred from the names.
    """

    def __init__(self, state_dict: Mapping[str, Tensor], model: nn.Module | None = None):
        if not isinstance(state_dict, Mapping):
            raise UserError(f"expected a state_dict (a mapping of names to tensors), got {type(state_dict).__name__}")
        for name, value in state_dict.items():
            if not isinstance(value, Tensor):
                raise UserError(f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor")
        roles = _roles_from_model(state_dict, model) if model is not None else _roles_from_names(state_dict)
        self.entries: list[Entry] = []
        self.integer_state: dict[str, Tensor] = {}
        offset = 0
        for name, value in state_dict.items():
            if value.is_floating_point():
                entry = Entry(name, tuple(value.shape), offset, value.numel(), roles[name], value.dtype)
                self.entries.append(entry)
                offset += entry.numel
            else:
                self.integer_state[name] = value.detach().clone()
        self.dim: int = offset
        self._by_name = {e.name: e for e in self.entries}

    def __repr__(self) -> str:
        counts = {r: sum(e.numel for e in self.entries if e.role == r) for r in ROLES}
        return f"StateLayout(dim={self.dim}, entries={len(self.entries)}, " + ", ".join(
            f"{r}={n}" for r, n in counts.items()) + ")"

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Entry:
        return self._by_name[name]

    def check(self, state_dict: Mapping[str, Tensor], what: str = "state_dict") -> None:
        """UserError unless ``state_dict`` has exactly this layout's floating entries and shapes.

        Integer buffers may be present or absent (they are not part of a point).
        """
        if not isinstance(state_dict, Mapping):
            raise UserError(f"{what}: expected a state_dict (a mapping of names to tensors), "
                            f"got {type(state_dict).__name__}")
        missing = [e.name for e in self.entries if e.name not in state_dict]
        unexpected = [k for k in state_dict if k not in self._by_name and k not in self.integer_state]
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} entries ({_first(missing)})")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected entries ({_first(unexpected)})")
            raise UserError(f"{what} does not fit the model: {'; '.join(parts)}; "
                            "is it a checkpoint of another architecture?")
        wrong = []
        for e in self.entries:
            value = state_dict[e.name]
            if not isinstance(value, Tensor):
                raise UserError(f"{what}: entry {e.name!r} is a {type(value).__name__}, not a tensor")
            if value.is_complex() or value.dtype == torch.bool:
                raise UserError(f"{what}: entry {e.name!r} has dtype {value.dtype}, the model expects a "
                                "floating-point tensor")
            if tuple(value.shape) != e.shape:
                wrong.append(f"{e.name!r} is {tuple(value.shape)}, the model's {e.shape}")
        if wrong:
            shown = "; ".join(wrong[:3]) + (f"; and {len(wrong) - 3} more" if len(wrong) > 3 else "")
            raise UserError(f"{what} does not fit the model: {len(wrong)} shape{'s' if len(wrong) > 1 else ''} "
                            f"differ ({shown}); is it a checkpoint of another architecture or width?")

    def flatten(self, state_dict: Mapping[str, Tensor]) -> Tensor:
        """(dim,) float32 point of ``state_dict``, on the device of its tensors."""
        self.check(state_dict)
        if not self.entries:
            return torch.zeros(0, dtype=torch.float32)
        device = state_dict[self.entries[0].name].device
        return torch.cat([state_dict[e.name].detach().reshape(-1).to(device=device, dtype=torch.float32)
                          for e in self.entries])

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Floating entries of the point ``vec`` (views into it where the model's dtype is float32)."""
        vec = self._vector(vec)
        out = {}
        for e in self.entries:
            value = vec[e.slice].view(e.shape)
            out[e.name] = value if e.dtype == vec.dtype else value.to(e.dtype)
        return out

    def mask(self, *roles: str) -> Tensor:
        """bool (dim,): True where the entry's role is one of ``roles``."""
        bad = [r for r in roles if r not in ROLES]
        if bad:
            raise ValueError(f"unknown role(s) {bad}; roles are {', '.join(ROLES)}")
        out = torch.zeros(self.dim, dtype=torch.bool)
        for e in self.entries:
            if e.role in roles:
                out[e.slice] = True
        return out

    def _vector(self, vec: Any) -> Tensor:
        vec = torch.as_tensor(vec)
        if vec.dim() != 1 or vec.shape[0] != self.dim:
            raise UserError(f"a point of this model has {self.dim} entries, got a tensor of shape {tuple(vec.shape)}")
        return vec


def _first(names: Sequence[str], k: int = 3) -> str:
    shown = ", ".join(repr(n) for n in names[:k])
    return shown + (", ..." if len(names) > k else "")


# --------------------------------------------------------------------------- strategy rule


def choose_strategy(device: torch.device, recompute_bn: bool, model: nn.Module | None = None) -> str:
    """The ``"auto"`` rule: ``"vmap"`` on CUDA, ``"loop"`` on the CPU (with or without BN recompute).

    * CUDA: ``"vmap"`` (many small forwards become one large batched kernel per layer, which
      is what keeps a GPU busy on small models; with BN recompute the groups of ``bn_batch``
      samples become K x 128-sample batches). Not measured (no GPU on the development
      machine); ``bench/engine.py --device cuda`` times both.
    * CPU: ``"loop"``, measured (table below): vmap never won. It turns a convolution with
      per-point weights into a grouped convolution, which the CPU kernels run 1.5-4x slower
      than K ordinary ones, and for MLPs the batched matmuls gain nothing over K large GEMMs
      that already use both cores.

    Points/s on MNIST-1D (4000 + 1000 samples per point), bn="keep", 2-core AMD EPYC (Zen 4),
    torch 2.14, 2 threads, best of 3 rounds (``/tmp`` micro-benchmark on a shared machine):

    ==================  ===========  ==========================================
    model               loop         vmap (chunk K x batch B)
    ==================  ===========  ==========================================
    cnn1d (43k params)  43.6 (B2048) 31.7 (K4 B512), 21.8 (K8 B512), 15.1 (K2 B5000)
    mlp 256-256         161 (B2048)  128 (K8 B512), 122 (K4 B512), 68 (K114 B2048)
    mlp 100-100         409 (B2048)  395 (K256 B512), 358 (K256 B2048)
    ==================  ===========  ==========================================

    With BN recompute (2026-11-30, same machine, 1 thread, load 4-7, CPU seconds per point,
    median of 3 interleaved rounds; ``/tmp`` micro-benchmark): cnn1d+BN on MNIST-1D (4000 +
    1000 samples, 4000 for the BN pass) loop 0.31, vmap 0.55 (chunk 53); resnet20 on 512 +
    256 CIFAR-shaped images loop 2.58, vmap 9.46 (chunk 15). Equal to 2e-7.
    """
    if device.type == "cuda":
        return "vmap"
    return "loop"


_CPU_CACHE_BYTES = 8 * 2**20


# --------------------------------------------------------------------------- engine


Results = dict[str, dict[str, np.ndarray]]


class Engine:
    """Loss and accuracy of one architecture at many parameter points.

    ``model`` is a checkpoint's ``{"name", "kwargs"}`` or an ``nn.Module`` (copied; its own
    weights are never touched); ``data`` a loaded Dataset (moved to ``device`` if it is
    elsewhere). ``subset`` takes the same fixed seeded subset (``Split.subset(n, seed)``, n
    capped at the split's size) of every split. ``bn``: ``"recompute"`` recomputes BatchNorm
    statistics at every point from the whole train split, or from a fixed seeded subset of
    ``bn_samples`` train samples (``Split.subset(bn_samples, seed)``), in either case
    independent of ``subset``, in groups of ``bn_batch`` samples, with the exact pooled
    definition of :mod:`landscape.batchnorm`; ``"keep"`` uses the point's own buffers.
    ``batch_size`` caps the scoring batches (it never changes a number). ``bf16`` runs the
    forward passes under bfloat16 autocast (the loss is still computed in float32 and summed
    in float64).
    """

    def __init__(
        self,
        model: Mapping[str, Any] | nn.Module,
        data: Dataset,
        *,
        splits: Sequence[str] = SPLITS,
        subset: int | None = None,
        seed: int = 0,
        bn: str = "recompute",
        bn_samples: int | None = None,
        bn_batch: int = BN_BATCH,
        batch_size: int = 2048,
        device: Any = "cpu",
        strategy: str = "auto",
        bf16: bool = False,
        memory_budget_gb: float = 2.0,
    ):
        if isinstance(model, nn.Module):
            self._template: nn.Module | None = copy.deepcopy(model).cpu()
            self.model_spec = {"name": f"{type(model).__module__}.{type(model).__qualname__}", "kwargs": {}}
        else:
            self._template = None
            self.model_spec = _check_model_spec(model)
        self.device = _device(device)
        if bn not in BN_MODES:
            raise UserError(f"bn mode must be one of {', '.join(BN_MODES)}, got {bn!r}")
        if strategy not in STRATEGIES:
            raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise UserError(f"batch size must be a positive integer, got {batch_size!r}")
        if isinstance(bn_batch, bool) or not isinstance(bn_batch, (int, np.integer)) or bn_batch < 2:
            raise UserError(f"BatchNorm batch (bn_batch) must be an integer >= 2, got {bn_batch!r}")
        if bn_samples is not None:
            if isinstance(bn_samples, bool) or not isinstance(bn_samples, (int, np.integer)) or bn_samples < 2:
                raise UserError(f"bn_samples must be an integer >= 2 (train samples for the BatchNorm pass), "
                                f"got {bn_samples!r}")
            if bn != "recompute":
                raise UserError("bn_samples chooses the samples BatchNorm statistics are recomputed from; "
                                "it needs bn 'recompute'")
        if isinstance(memory_budget_gb, bool) or not isinstance(memory_budget_gb, (int, float)) \
                or not memory_budget_gb > 0:
            raise UserError(f"memory budget must be a positive number of GB, got {memory_budget_gb!r}")
        if isinstance(splits, str):
            splits = [s.strip() for s in splits.split(",") if s.strip()]
        splits = list(splits)
        bad = [s for s in splits if s not in SPLITS]
        if not splits or bad or len(set(splits)) != len(splits):
            raise UserError(f"splits must be distinct names among {', '.join(SPLITS)}, got {splits!r}")
        if not isinstance(data, Dataset):
            raise TypeError(f"data must be a landscape.data.Dataset, got {type(data).__name__}")
        self.splits = splits
        if subset is not None and (isinstance(subset, bool) or not isinstance(subset, (int, np.integer))
                                   or subset < 1):
            raise UserError(f"subset must be a positive number of samples, got {subset!r}")
        self.subset = None if subset is None else int(subset)
        self.seed = seed
        self.bn = bn
        self.batch_size = int(batch_size)
        self.bn_batch = int(bn_batch)
        self.bf16 = bool(bf16)
        self.memory_budget_gb = float(memory_budget_gb)

        self.model = self.new_model().eval().requires_grad_(False)
        self.layout = StateLayout(self.model.state_dict(), self.model)
        self._bns = batchnorm.batchnorms(self.model)
        self.recompute = bn == "recompute" and bool(self._bns)

        # Data: the chosen splits (their subsets), plus the train split for BN recompute.
        def prepare(split: Split) -> Split:
            if split.x.device != self.device:
                split = split.to(self.device)
            if self.subset is not None:
                split = split.subset(min(self.subset, len(split)), seed)
            return split

        self._data: dict[str, Split] = {s: prepare(getattr(data, s)) for s in splits}
        # BatchNorm statistics: the whole train split, or its own bn_samples subset (never the
        # scoring subset: --subset says which samples are scored, not what BN is fitted to).
        self._bn_data: Split | None = None
        self.bn_samples: int | None = None  # None: the whole train split
        if self.recompute:
            train = data.train if data.train.x.device == self.device else data.train.to(self.device)
            if bn_samples is not None and bn_samples < len(train):
                train = train.subset(int(bn_samples), seed)
                self.bn_samples = len(train)
            self._bn_data = train
            self._bn_groups = batchnorm.group_bounds(len(train), self.bn_batch)
            self._bn_entries = self._bn_slices()
        self.sizes = {s: len(v) for s, v in self._data.items()}
        self.full_sizes = {"train": len(data.train), "test": len(data.test)}  # before any subset
        self.num_classes = data.num_classes
        self.data_spec = dict(data.spec)
        self._check_fit(data)

        # CPU 2-D convolutions run ~1.3-1.6x faster in channels_last (measured, see the module doc).
        self.channels_last = self.device.type == "cpu" and any(
            isinstance(m, nn.Conv2d) for m in self.model.modules())
        # Loop strategy: all floating tensors of the model become views of one flat buffer.
        self._flat = torch.zeros(self.layout.dim, dtype=torch.float32, device=self.device)
        self._copies: list[tuple[Tensor, slice]] = []  # entries that cannot be views
        self._bind_flat()

        self._act_bytes, self._max_layer_bytes = self._activation_bytes_per_sample()
        self.score_batch = self._score_batch_size()
        if strategy == "auto":
            strategy = choose_strategy(self.device, self.recompute, self.model)
            if strategy == "vmap" and not self._vmap_works():
                strategy = "loop"
        elif strategy == "vmap" and not self._vmap_works(raise_error=True):
            strategy = "loop"  # not reached: raise_error raises
        self.strategy = strategy
        self.vmap_chunk = self._vmap_chunk_size()

    # ------------------------------------------------------------------ setup helpers

    def _autocast(self):
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _check_fit(self, data: Dataset) -> None:
        """A tiny forward pass: the model must take this data and give (N, num_classes) logits."""
        split = next(iter(self._data.values()))
        x = split.x[:2]
        try:
            with torch.inference_mode(), self._autocast():
                out = self.model(x)
        except Exception as exc:  # shape errors from deep inside the model
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"model {self.model_spec['name']!r} does not fit dataset {data.name!r} "
                            f"(inputs {tuple(split.x.shape[1:])}): {msg[:200]}") from None
        classes_fit = isinstance(out, Tensor) and out.dim() == 2 and (
            out.shape[1] == data.num_classes if data.exact_classes else out.shape[1] >= data.num_classes)
        if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != len(x) or not classes_fit:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            want = f"(N, {data.num_classes})" if data.exact_classes else \
                f"(N, C) with C >= {data.num_classes} (its labels go up to {data.num_classes - 1})"
            raise UserError(f"model {self.model_spec['name']!r} gives outputs {shape} on dataset {data.name!r}; "
                            f"expected logits {want}")

    def _bind_flat(self) -> None:
        """Point every floating model tensor at its slice of ``self._flat`` (copying the current values)."""
        owners: dict[int, list[Entry]] = {}
        tensors: dict[str, tuple[nn.Module, str, Tensor]] = {}
        for e in self.layout.entries:
            prefix, _, attr = e.name.rpartition(".")
            module = self.model.get_submodule(prefix) if prefix else self.model
            if attr in module._parameters:
                tensor = module._parameters[attr]
            elif attr in module._buffers:
                tensor = module._buffers[attr]
            else:  # state_dict extras (get_extra_state) are not tensors we can bind
                raise UserError(f"cannot locate state entry {e.name!r} in model {self.model_spec['name']!r}")
            tensors[e.name] = (module, attr, tensor)
            owners.setdefault(id(tensor), []).append(e)
        with torch.no_grad():
            for e in self.layout.entries:
                self._flat[e.slice].copy_(tensors[e.name][2].reshape(-1))
            for group in owners.values():
                # Tied tensors appear under several names; load_state_dict copies them in order,
                # so the last name's values win. Bind the tensor to the last one.
                e = group[-1]
                module, attr, tensor = tensors[e.name]
                if self.channels_last and tensor.dim() == 4:
                    # A channels_last weight is a permutation of the point's (O, I, kh, kw) order:
                    # it cannot be a view, so it is refreshed by one strided copy per point.
                    copy = tensor.detach().contiguous(memory_format=torch.channels_last)
                    if attr in module._parameters:
                        tensor.data = copy
                    else:
                        module._buffers[attr] = copy
                    self._copies.append((copy, e.slice))
                    continue
                if tensor.dtype != torch.float32:
                    self._copies.append((tensor, e.slice))
                    continue
                view = self._flat[e.slice].view(e.shape)
                if attr in module._parameters:
                    tensor.data = view
                else:
                    module._buffers[attr] = view

    def _activation_bytes_per_sample(self) -> tuple[int, int]:
        """(sum, max) over module outputs for one sample, in float32 bytes."""
        total = largest = 0

        def hook(_m, _inp, out):
            nonlocal total, largest
            if isinstance(out, Tensor):
                total += out.numel()
                largest = max(largest, out.numel())

        handles = [m.register_forward_hook(hook) for m in self.model.modules()]
        try:
            with torch.inference_mode():
                self.model(next(iter(self._data.values())).x[:1])
        finally:
            for h in handles:
                h.remove()
        sample = math.prod(next(iter(self._data.values())).x.shape[1:])
        return 4 * max(total + sample, 1), 4 * max(largest, sample, 1)

    def _score_batch_size(self) -> int:
        """Batch of the scoring passes (eval mode: the batch does not change the numbers).

        On CUDA: ``batch_size``. On CPU, large batches spill the caches: ResNet-20 ran 2x
        slower per image at 512 than at 32-128 (channels_last), while MNIST-1D's cnn1d was
        flat from 512 to 2048. Rule: the largest layer output of a batch should fit ~8 MiB
        (the L2+L3 share of a core), at least 32 samples, at most ``batch_size``
        (ResNet-20 on 32x32: 128; MNIST-1D cnn1d: 1724; small MLPs: ``batch_size``).
        """
        if self.device.type != "cpu":
            return self.batch_size
        return int(min(self.batch_size, max(32, _CPU_CACHE_BYTES // self._max_layer_bytes)))

    def _vmap_chunk_size(self) -> int:
        """Points per vmap call, so that K points x one batch fit ``memory_budget_gb``.

        Under inference_mode a forward holds a few layer outputs at a time, not all of them:
        per point and sample, min(sum of all outputs, 4 x the largest output) bytes, plus the
        point's own (batched) parameters.
        """
        batch = min(self.batch_size, max(len(s) for s in self._data.values()))
        if self.recompute:  # the BatchNorm pass runs one group of up to bn_batch samples per call
            batch = max(batch, max(stop - start for start, stop in self._bn_groups))
        budget = self.memory_budget_gb * 2**30
        per_point = batch * min(self._act_bytes, 4 * self._max_layer_bytes) + 8 * self.layout.dim
        return int(max(1, min(256, budget // per_point)))

    def _vmap_works(self, raise_error: bool = False) -> bool:
        split = next(iter(self._data.values()))
        points = self._flat.detach().clone().unsqueeze(0).repeat(2, 1)
        try:
            with torch.inference_mode():
                self._vmap_logits(points, split.x[:2])
                if self.recompute:
                    self._vmap_recompute(points, [(0, 2)])
            return True
        except Exception as exc:
            if raise_error:
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise UserError(f"model {self.model_spec['name']!r} cannot be evaluated with the vmap "
                                f"strategy ({msg[:200]}); use strategy 'loop' or 'auto'") from None
            return False

    # ------------------------------------------------------------------ public API

    def new_model(self) -> nn.Module:
        """A fresh model of this architecture on the engine's device (for autograd work: sharpness)."""
        if self._template is not None:
            return copy.deepcopy(self._template).to(self.device)
        model = build_model(self.model_spec["name"], **self.model_spec["kwargs"])
        if not isinstance(model, nn.Module):  # build_model checks user factories; be safe
            raise UserError(f"model {self.model_spec['name']!r} is not a torch.nn.Module")
        return model.to(self.device)

    def flatten(self, state_dict: Mapping[str, Tensor]) -> Tensor:
        """The point of a checkpoint's state_dict (UserError if it does not fit this model)."""
        return self.layout.flatten(state_dict)

    def split_data(self, split: str) -> Split:
        """The samples the engine scores for ``split`` (the seeded subset when ``subset`` is set)."""
        if split not in self._data:
            raise UserError(f"split {split!r} is not evaluated by this engine (splits: {', '.join(self.splits)})")
        return self._data[split]

    def scored_state(self, point: Tensor) -> dict[str, Tensor]:
        """The full state_dict that is scored at ``point``: with bn="recompute" its BatchNorm
        statistics are the recomputed ones. Fresh contiguous tensors on the engine's device
        (usable with autograd; integer buffers included)."""
        point = self._points(point)
        if len(point) != 1:
            raise UserError(f"scored_state takes one point, got {len(point)}")
        with torch.inference_mode():
            self._load(point[0].to(self.device))
            if self.recompute:
                self._recompute_bn()
        with torch.no_grad():
            return {k: v.detach().clone().contiguous() for k, v in self.model.state_dict().items()}

    def evaluate(self, points: Tensor) -> Results:
        """Loss and accuracy at every point: ``{split: {"loss": (P,), "accuracy": (P,)}}`` float64."""
        points = self._points(points)
        out = {s: {"loss": np.full(len(points), np.nan), "accuracy": np.full(len(points), np.nan)}
               for s in self.splits}
        for idx, res in self.evaluate_chunks(points):
            for s in self.splits:
                for metric in ("loss", "accuracy"):
                    out[s][metric][idx] = res[s][metric]
        return out

    def evaluate_chunks(self, points: Tensor, chunk: int | None = None) -> Iterator[tuple[np.ndarray, Results]]:
        """Yield ``(indices, results)`` for successive chunks of ``points``.

        The default chunk is the vmap chunk for the vmap strategy and 1 point on the CPU loop
        (16 on CUDA, where results are only synchronized once per chunk).
        """
        points = self._points(points)
        if chunk is None:
            chunk = self.vmap_chunk if self.strategy == "vmap" else (1 if self.device.type == "cpu" else 16)
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise UserError(f"chunk must be a positive integer, got {chunk!r}")
        for start in range(0, len(points), int(chunk)):
            idx = np.arange(start, min(start + int(chunk), len(points)))
            yield idx, self._evaluate_block(points[start : start + int(chunk)])

    # ------------------------------------------------------------------ evaluation

    def _points(self, points: Any) -> Tensor:
        points = torch.as_tensor(points)
        if points.dim() == 1:
            points = points.unsqueeze(0)
        if points.dim() != 2 or points.shape[1] != self.layout.dim:
            raise UserError(f"points of model {self.model_spec['name']!r} have {self.layout.dim} entries; "
                            f"got a tensor of shape {tuple(points.shape)} (another architecture?)")
        return points if points.dtype == torch.float32 else points.float()

    @torch.inference_mode()
    def _evaluate_block(self, points: Tensor) -> Results:
        n = len(points)
        sums = {s: (torch.zeros(n, dtype=torch.float64, device=self.device),
                    torch.zeros(n, dtype=torch.int64, device=self.device)) for s in self.splits}
        if self.strategy == "vmap":
            for start in range(0, n, self.vmap_chunk):
                block = points[start : start + self.vmap_chunk].to(self.device)
                if self.recompute:
                    block = self._vmap_recompute(block)
                for s, split in self._data.items():
                    loss, correct = self._vmap_score(block, split)
                    sums[s][0][start : start + len(block)] = loss
                    sums[s][1][start : start + len(block)] = correct
        else:
            points = points.to(self.device)
            for i in range(n):
                self._load(points[i])
                if self.recompute:
                    self._recompute_bn()
                for s, split in self._data.items():
                    loss, correct = self._score(split)
                    sums[s][0][i] = loss
                    sums[s][1][i] = correct
        out: Results = {}
        for s, (loss, correct) in sums.items():
            size = self.sizes[s]
            acc = correct.cpu().numpy().astype(np.float64) / size
            acc[acc < 0] = np.nan  # a diverged point (non-finite logits) has no accuracy
            out[s] = {"loss": loss.cpu().numpy() / size, "accuracy": acc}
        return out

    def _load(self, point: Tensor) -> None:
        self._flat.copy_(point)
        for tensor, sl in self._copies:
            tensor.copy_(self._flat[sl].view(tensor.shape))

    def _batches(self, split: Split, batch_size: int, channels_last: bool = True) -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, len(split), batch_size):
            x = split.x[start : start + batch_size]
            if channels_last and self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, split.y[start : start + batch_size]

    def _score(self, split: Split) -> tuple[Tensor, Tensor]:
        loss = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        undefined = torch.zeros((), dtype=torch.bool, device=self.device)
        for x, y in self._batches(split, self.score_batch):
            with self._autocast():
                logits = self.model(x)
            logits = logits.float()
            loss += F.cross_entropy(logits, y, reduction="none").double().sum()
            correct += (logits.argmax(dim=1) == y).sum()
            undefined |= ~torch.isfinite(logits).all()  # argmax of NaN/inf logits is no prediction
        return loss, torch.where(undefined, -1, correct)  # -1: accuracy NaN (see _evaluate_block)

    def _bn_slices(self) -> list[tuple[slice, slice]]:
        """Where each recomputed BatchNorm layer's running mean and variance sit in a point."""
        names = {id(m): name for name, m in self.model.named_modules()}
        out = []
        for m in self._bns:
            prefix = f"{names[id(m)]}." if names[id(m)] else ""
            out.append((self.layout[prefix + "running_mean"].slice, self.layout[prefix + "running_var"].slice))
        return out

    def _channels_last_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def _recompute_bn(self) -> None:
        """The BatchNorm statistics of the loaded point (``landscape.batchnorm``), written into
        the model's running buffers: one training-mode pass, one group of ``bn_batch`` samples
        per forward (on the CPU that is also about the cache-sized batch, see bench/RESULTS.md)."""
        assert self._bn_data is not None
        with self._autocast():
            batchnorm.recompute_statistics(self.model, self._bn_data.x, self.bn_batch, modules=self._bns,
                                           prepare=self._channels_last_input)

    # ------------------------------------------------------------------ vmap

    def _vmap_params(self, points: Tensor) -> dict[str, Tensor]:
        k = len(points)
        params = {}
        for e in self.layout.entries:
            value = points[:, e.slice].view(k, *e.shape)
            params[e.name] = value if e.dtype == torch.float32 else value.to(e.dtype)
        return params

    def _vmap_logits(self, points: Tensor, x: Tensor) -> Tensor:
        def one(p: dict[str, Tensor], inputs: Tensor) -> Tensor:
            return torch.func.functional_call(self.model, p, (inputs,))

        with self._autocast():
            return torch.func.vmap(one, in_dims=(0, None))(self._vmap_params(points), x)

    def _vmap_recompute(self, points: Tensor, groups: Sequence[tuple[int, int]] | None = None) -> Tensor:
        """``points`` with each one's own recomputed BatchNorm statistics in its running entries.

        The same definition as the loop (``landscape.batchnorm``), batched over points: per
        group one vmapped training-mode forward, whose BatchNorm layers return their per-point
        batch statistics as outputs of the vmapped function (they cannot leave it any other
        way); the groups are pooled per point in float64.
        """
        assert self._bn_data is not None
        params = self._vmap_params(points)
        pool = batchnorm.Pool(len(self._bns))
        with batchnorm.train_mode_statistics(self._bns) as collected:
            layers: list[tuple[int, int]] = []

            def one(p: dict[str, Tensor], inputs: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
                collected.clear()
                torch.func.functional_call(self.model, p, (inputs,))
                layers[:] = [(layer, n) for layer, n, _, _ in collected]
                stats = (tuple(c[2] for c in collected), tuple(c[3] for c in collected))
                collected.clear()
                return stats

            vmapped = torch.func.vmap(one, in_dims=(0, None))
            for start, stop in self._bn_groups if groups is None else groups:
                with self._autocast():
                    means, variances = vmapped(params, self._bn_data.x[start:stop])
                for (layer, n), mean, var in zip(layers, means, variances):
                    pool.add(layer, n, mean, var)
        out = points.clone()
        for i, (mean_slice, var_slice) in enumerate(self._bn_entries):
            stats = pool.result(i)
            if stats is None:
                out[:, mean_slice] = 0.0
                out[:, var_slice] = 1.0
            else:
                out[:, mean_slice] = stats[0].to(out.dtype)
                out[:, var_slice] = stats[1].to(out.dtype)
        return out

    def _vmap_score(self, points: Tensor, split: Split) -> tuple[Tensor, Tensor]:
        k = len(points)
        loss = torch.zeros(k, dtype=torch.float64, device=self.device)
        correct = torch.zeros(k, dtype=torch.int64, device=self.device)
        undefined = torch.zeros(k, dtype=torch.bool, device=self.device)
        for x, y in self._batches(split, self.batch_size, channels_last=False):
            logits = self._vmap_logits(points, x).float()  # (K, B, C)
            ce = F.cross_entropy(logits.flatten(0, 1), y.repeat(k), reduction="none").view(k, -1)
            loss += ce.double().sum(dim=1)
            correct += (logits.argmax(dim=2) == y).sum(dim=1)
            undefined |= ~torch.isfinite(logits).flatten(1).all(dim=1)
        return loss, torch.where(undefined, -1, correct)


# --------------------------------------------------------------------------- small helpers


def _check_model_spec(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
        raise UserError(f"model spec must be a dict with 'name' (and 'kwargs'), got {spec!r}")
    kwargs = spec.get("kwargs", {}) or {}
    if not isinstance(kwargs, Mapping):
        raise UserError(f"model spec 'kwargs' must be a dict, got {kwargs!r}")
    return {"name": spec["name"], "kwargs": dict(kwargs)}


def _device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from landscape.device import resolve_device

    return resolve_device(str(device))
