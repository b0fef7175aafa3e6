"""The trainer: data + model + optimizer -> a run directory of checkpoints and metrics.

One call trains every requested optimizer from the same initialization and on the same
data order, so their solutions can be compared point by point. Read `train_optimizer`
top to bottom: it is the whole training loop.

Run directory (DESIGN.md)::

    RUN/config.json
    RUN/<optimizer>/config.json, metrics.jsonl, final.pt, averaged.pt
    RUN/<optimizer>/checkpoints/epoch_0000.pt ... step_0000123.pt
    RUN/<optimizer>/resume.pt        full state after the last finished epoch
"""

from __future__ import annotations

import json
import math
import platform
import shutil
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import update_bn

import landscape
from landscape import distributed
from landscape.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    save_checkpoint,
    torch_load_safely,
)
from landscape.data import Dataset, augment, batch_indices, load_dataset
from landscape.device import resolve_device
from landscape.errors import UserError
from landscape.evaluate import evaluate, has_batchnorm
from landscape.factories import is_user_factory
from landscape import models
from landscape.models import build_model
from landscape.optim import (
    ASAM_SCOPES,
    SAM,
    Lookahead,
    LRSchedule,
    asam_param_groups,
    bias_corrected_ema,
    copy_average_into,
    frozen_bn_stats,
    phase_gamma,
    uniform_average,
)
from landscape.optim import schedules

OPTIMIZERS = ("sgd", "asgd", "swa", "phase", "sam", "asam", "lookahead")
AVERAGING = ("asgd", "swa", "phase")  # always produce averaged.pt
DEFAULT_MODEL = {"mnist1d": "cnn1d"}  # image datasets default to resnet20
SCHEDULES = ("phases", "cosine", "constant", "linear")
BN_DATA = ("plain", "augmented")


# The settings a paper preset may fill, and what each is when neither the user nor a preset
# gives it (field default None = "not given"). Explicit values always win over a preset.
LANDSCAPE_DEFAULTS: dict[str, Any] = {
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "schedule": "phases",
    "avg_every": "epoch",
    "asam_eta": 0.01,
    "asam_scope": "all",
    "gamma0": 0.9,
    "lookahead_k": 5,
    "lookahead_alpha": 0.5,
    "bn_data": "plain",
}

Setting = Any  # a value, or a function of the config (its epochs, lr) giving one


@dataclass(frozen=True)
class Preset:
    """One paper's recipe: the optimizer it proposes and the settings its code fixes."""

    optimizer: str
    paper: str
    source: str  # where the values were read
    values: dict[str, Setting]


PRESETS: dict[str, Preset] = {
    # anitan0925/averaged_sgd main.py: SGD without momentum, weight decay 5e-3, cosine
    # (CosineAnnealingLR to 0), AveragedModel.update_parameters after every step from
    # epoch 300 of 400 (0-based), BatchNorm of the average from the augmented train loader.
    "nitanda2024": Preset("asgd", "Nitanda, Kikuchi, Maeda, Wu, AISTATS 2024", "anitan0925/averaged_sgd main.py", {
        "momentum": 0.0, "nesterov": False, "weight_decay": 5e-3, "schedule": "cosine",
        "avg_every": "step", "avg_start": lambda c: int(0.75 * c.epochs) + 1, "bn_data": "augmented",
    }),
    # The paper, Sec. 3: momentum 0.9, weight decay 5e-4 (ResNet/WRN/DenseNet), phases
    # 80/40/40 epochs at 0.1/0.01/0.001 (the default phases scaled to --epochs), gamma0 0.9,
    # Lookahead k = 5 (alpha 0.5, Lookahead's own default) as its baseline, BatchNorm
    # recalibrated after averaging "as in [13, 6]" (the SWA code: the augmented train loader).
    "kobayashi2024": Preset("phase", "Kobayashi, phase-wise parameter aggregation", "the paper, Sec. 2-3", {
        "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "schedule": "phases",
        "phases": lambda c: _default_phases(c.epochs, c.lr), "gamma0": 0.9,
        "lookahead_k": 5, "lookahead_alpha": 0.5, "bn_data": "augmented",
    }),
    # timgaripov/swa train.py with the README's WideResNet28x10 / VGG16 commands: momentum
    # 0.9, weight decay 5e-4, swa_lr = lr / 2 (0.05 at lr 0.1), SWA from epoch 161 of 300,
    # its schedule (lr for the first half of swa_start, linear to swa_lr by 90% of it),
    # averaging every epoch, bn_update over the augmented train loader.
    "izmailov2018": Preset("swa", "Izmailov et al., UAI 2018", "timgaripov/swa train.py + README", {
        "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "schedule": "linear",
        "swa_start": lambda c: int(c.epochs * 160 / 300) + 1, "swa_lr": lambda c: c.lr / 2,
        "bn_data": "augmented",
    }),
    # google-research/sam (the paper's code) defaults: rho 0.05, SGD with Nesterov momentum
    # 0.9, cosine schedule, weight decay 1e-3 (an L2 term in its loss; landscape applies it
    # in the base optimizer at w, see README "Paper settings vs landscape defaults").
    "foret2021": Preset("sam", "Foret et al., ICLR 2021", "google-research/sam flax_training.py", {
        "rho": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3, "schedule": "cosine",
    }),
    # SamsungLabs/ASAM example_cifar.py + README (CIFAR-10 command): rho 0.5, eta 0.0 (the
    # script's default; the ASAM class's own default is 0.01), T only on parameters named
    # *weight*, SGD momentum 0.9, weight decay 5e-4, cosine (CosineAnnealingLR to 0).
    "kwon2021": Preset("asam", "Kwon et al., ICML 2021", "SamsungLabs/ASAM asam.py + example_cifar.py", {
        "rho": 0.5, "asam_eta": 0.0, "asam_scope": "weights",
        "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4, "schedule": "cosine",
    }),
}


def _default_phases(epochs: int, lr: float) -> str:
    """50% / 25% / 25% of the epochs at lr, lr/10, lr/100: Kobayashi's 80/40/40 shape."""
    first, second = max(1, epochs // 2), max(0, epochs // 4)
    parts = [(first, lr), (second, lr / 10), (epochs - first - second, lr / 100)]
    return ",".join(f"{t}:{x:g}" for t, x in parts if t > 0)


@dataclass
class TrainConfig:
    """Everything that decides a run. Stored resolved in RUN/config.json.

    A field whose default is None is "not given": ``resolved()`` fills it from ``preset``
    (if the preset fixes it) or from landscape's own default (``LANDSCAPE_DEFAULTS`` and
    the rules below). A value the user gives always wins over the preset.
    """

    optimizers: list[str] = field(default_factory=list)  # empty: the preset's optimizer, else ["sgd"]
    dataset: str = "mnist1d"
    data_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float | None = None  # 0.9
    nesterov: bool | None = None  # False
    weight_decay: float | None = None  # 5e-4
    schedule: str | None = None  # phases | cosine | constant | linear (the SWA paper's); phases
    phases: str | None = None  # "80:0.1,40:0.01,40:0.001"; None = 50%/25%/25% at lr, lr/10, lr/100
    # A paper's recipe (PRESETS): fills the settings that paper fixes, unless given.
    preset: str | None = None
    preset_applied: dict[str, Any] = field(default_factory=dict)  # filled by resolved(): what the preset set
    # averaged SGD (Nitanda et al.) and --average on any other optimizer
    average: bool = False
    avg_start: int | None = None  # first epoch averaged; None = epochs // 2 + 1
    avg_every: str | None = None  # epoch | step; epoch
    # SWA (Izmailov et al.)
    swa_start: int | None = None  # None = 75% of epochs
    swa_lr: float | None = None  # None = lr / 2
    swa_cycle: int = 0  # 0 = constant SWA LR, averaged every epoch; c > 0 = cyclic, averaged per cycle
    swa_lr_max: float | None = None  # top of each cycle; None = lr
    # phase-wise aggregation (Kobayashi)
    gamma0: float | None = None  # 0.9
    phase_momentum: str = "keep"  # keep | reset the momentum buffer when a phase starts from the average
    # SAM / ASAM
    rho: float | None = None  # None = 0.05 (SAM) or 0.5 (ASAM)
    asam_eta: float | None = None  # 0.01
    asam_filterwise: bool = False
    asam_scope: str | None = None  # all | weights (official ASAM code: T = 1 for non-"weight" params); all
    # Lookahead
    lookahead_k: int | None = None  # 5
    lookahead_alpha: float | None = None  # 0.5
    # BatchNorm statistics of averaged models (and of a phase's start from its average):
    # "plain" = one pass over the un-augmented train split (what the analyses' --bn recompute
    # uses, so averaged.pt scores the same there); "augmented" = the same pass through the
    # training augmentation, as the SWA and averaged-SGD codes do with their train loader.
    bn_data: str | None = None  # plain
    # Evaluation after each epoch. The test split is scored whole every epoch (each epoch
    # writes epoch_NNNN.pt, which the analyses read); the train split every eval_every
    # epochs on a fixed seeded subset of eval_train_samples samples (None: as many as the
    # test split has; 0: the whole split), and whole at the last epoch.
    eval_every: int = 1
    eval_train_samples: int | None = None
    save_every_steps: int = 0
    seed: int = 0
    device: str = "auto"
    # Scoring batch; None: 128 on the CPU, where big batches fall out of cache (resnet20 scores
    # 1.8x faster per sample at 128 than at 1024, cnn1d 1.4x), 1024 on accelerators.
    eval_batch_size: int | None = None
    # Opt-in speed (bench/RESULTS.md): 2-D conv nets in channels_last memory format (same
    # numbers up to float32 summation order), and the training forward passes under bfloat16
    # autocast (different numerics; evaluation stays float32).
    channels_last: bool = False
    bf16: bool = False

    def resolved(self) -> "TrainConfig":
        """Fill the defaults that depend on other fields or on the preset, and validate.

        Idempotent: resolving a resolved config changes nothing.
        """
        cfg = TrainConfig(**asdict(self))
        preset = None
        if cfg.preset is not None:
            if cfg.preset not in PRESETS:
                raise UserError(f"unknown preset {cfg.preset!r}; choose from {', '.join(PRESETS)}")
            preset = PRESETS[cfg.preset]
        elif cfg.preset_applied:
            raise UserError("preset_applied is filled by resolved() from --preset; give --preset instead")
        if not cfg.optimizers:
            cfg.optimizers = [preset.optimizer] if preset else ["sgd"]
        for name in cfg.optimizers:
            if name not in OPTIMIZERS:
                raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
        if len(set(cfg.optimizers)) != len(cfg.optimizers):
            raise UserError("each --optimizer may be given once")
        _check(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
        _check(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be a positive number, got {cfg.lr}")
        if preset is not None:
            applied = dict(cfg.preset_applied)
            for key, value in preset.values.items():
                if getattr(cfg, key) is None:
                    value = value(cfg) if callable(value) else value
                    setattr(cfg, key, value)
                    applied[key] = value
            cfg.preset_applied = applied
        for key, value in LANDSCAPE_DEFAULTS.items():
            if getattr(cfg, key) is None:
                setattr(cfg, key, value)
        _check(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
        _check(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
        _check(not (cfg.nesterov and cfg.momentum == 0), "--nesterov needs a momentum > 0")
        _check(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
        _check(cfg.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
        _check(cfg.avg_every in ("epoch", "step"), f"--avg-every must be epoch or step, got {cfg.avg_every!r}")
        _check(cfg.phase_momentum in ("keep", "reset"),
               f"--phase-momentum must be keep or reset, got {cfg.phase_momentum!r}")
        _check(0 < cfg.gamma0 < 1, f"--gamma0 must be in (0, 1), got {cfg.gamma0}")
        _check(cfg.save_every_steps >= 0, "--save-every-steps must be >= 0")
        _check(isinstance(cfg.lookahead_k, int) and cfg.lookahead_k >= 1 and 0 < cfg.lookahead_alpha <= 1,
               "--lookahead-k must be >= 1 and --lookahead-alpha in (0, 1]")
        _check(cfg.asam_scope in ASAM_SCOPES, f"--asam-scope must be one of {', '.join(ASAM_SCOPES)}, "
                                              f"got {cfg.asam_scope!r}")
        _check(cfg.bn_data in BN_DATA, f"--bn-data must be one of {', '.join(BN_DATA)}, got {cfg.bn_data!r}")
        _check(isinstance(cfg.eval_every, int) and cfg.eval_every >= 1,
               f"--eval-every must be an integer >= 1, got {cfg.eval_every!r}")
        _check(cfg.eval_train_samples is None or (isinstance(cfg.eval_train_samples, int)
                                                  and cfg.eval_train_samples >= 0),
               f"--eval-train-samples must be an integer >= 0 (0 = the whole train split), "
               f"got {cfg.eval_train_samples!r}")
        _check(cfg.eval_batch_size is None or cfg.eval_batch_size >= 1,
               f"--eval-batch-size must be >= 1, got {cfg.eval_batch_size}")
        if cfg.model is None:
            _check(not is_user_factory(cfg.dataset), f"--dataset {cfg.dataset}: your own data needs --model "
                                                     "(a built-in name, torchvision:NAME or package.module:factory)")
            cfg.model = DEFAULT_MODEL.get(cfg.dataset, "resnet20")
        if cfg.phases is None:
            cfg.phases = _default_phases(cfg.epochs, cfg.lr)
        if cfg.schedule == "phases":
            try:
                total = sum(t for t, _ in schedules.parse_phases(cfg.phases))
            except UserError as exc:
                raise UserError(f"--phases: {exc}") from None
            _check(total == cfg.epochs,
                   f"--phases covers {total} epochs but --epochs is {cfg.epochs}; make them agree")
        if "phase" in cfg.optimizers:
            _check(cfg.schedule == "phases", "the phase optimizer needs --schedule phases (it averages per LR phase)")
        if cfg.avg_start is None:
            cfg.avg_start = cfg.epochs // 2 + 1
        _check(1 <= cfg.avg_start <= cfg.epochs, f"--avg-start must be in [1, {cfg.epochs}], got {cfg.avg_start}")
        if cfg.swa_start is None:
            cfg.swa_start = max(1, int(round(0.75 * cfg.epochs)))
        _check(1 <= cfg.swa_start <= cfg.epochs, f"--swa-start must be in [1, {cfg.epochs}], got {cfg.swa_start}")
        if cfg.swa_lr is None:
            cfg.swa_lr = cfg.lr / 2
        _check(cfg.swa_lr > 0, "--swa-lr must be > 0")
        _check(cfg.swa_cycle >= 0, "--swa-cycle must be >= 0")
        if cfg.swa_lr_max is None:
            cfg.swa_lr_max = cfg.lr
        _check(cfg.rho is None or cfg.rho > 0, f"--rho must be > 0, got {cfg.rho}")
        _check(cfg.asam_eta >= 0, "--asam-eta must be >= 0")
        return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def model_spec(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    return models.model_spec(cfg.model, cfg.model_options, data.num_classes, data.input_shape)


def lr_schedule(name: str, cfg: TrainConfig) -> LRSchedule:
    cfg = cfg.resolved()
    if cfg.schedule == "phases":
        base = schedules.phases(schedules.parse_phases(cfg.phases))
    elif cfg.schedule == "cosine":
        base = schedules.cosine(cfg.lr, cfg.epochs)
    elif cfg.schedule == "linear":
        # The SWA code's schedule: for an SWA run it reaches swa_lr at 90% of swa_start; its
        # SGD baseline decays to lr/100 at 90% of the epochs.
        base = (schedules.linear(cfg.lr, cfg.swa_lr, cfg.swa_start) if name == "swa"
                else schedules.linear(cfg.lr, cfg.lr / 100, cfg.epochs))
    else:
        base = schedules.constant(cfg.lr)
    if name != "swa":
        return base
    return schedules.swa(
        base, swa_start=cfg.swa_start - 1, swa_lr=cfg.swa_lr,
        cycle=cfg.swa_cycle, cycle_lr_max=cfg.swa_lr_max,
    )


def make_optimizer(name: str, model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    cfg = cfg.resolved()
    sgd_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    params = model.parameters()
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=cfg.rho or 0.05, **sgd_kwargs)
    if name == "asam":
        return SAM(asam_param_groups(model, cfg.asam_scope), torch.optim.SGD, rho=cfg.rho or 0.5, adaptive=True,
                   eta=cfg.asam_eta, filterwise=cfg.asam_filterwise, **sgd_kwargs)
    sgd = torch.optim.SGD(params, **sgd_kwargs)
    if name == "lookahead":
        return Lookahead(sgd, k=cfg.lookahead_k, alpha=cfg.lookahead_alpha)
    return sgd


def averages(name: str, cfg: TrainConfig) -> bool:
    return name in AVERAGING or cfg.average


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_step(
    name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
    *, global_batch: int | None = None, bf16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update; returns (loss, correct count) at the pre-step weights.

    Under DistributedDataParallel ``x, y`` are this rank's share of a global batch of
    ``global_batch`` samples; DDP averages the ranks' gradients, so each rank's mean loss
    is weighted by its share (a no-op when the shares are equal) and the update is the one
    of the whole global batch. SAM/ASAM take the first (ascent) gradient inside
    ``no_sync()``: each rank perturbs by its own shard's gradient (m-sharpness, m = the
    per-rank batch), and the second gradient, at w + eps, is averaged over all ranks.
    ``bf16``: the forward passes run under bfloat16 autocast; the loss is taken in float32.
    """
    autocast = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    optimizer.zero_grad(set_to_none=True)
    sam = isinstance(optimizer, SAM)
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    weight = 1.0
    if ddp and global_batch is not None and len(y) * distributed.world_size() != global_batch:
        weight = len(y) * distributed.world_size() / global_batch
    with model.no_sync() if sam and ddp else nullcontext():
        with autocast():
            logits = model(x)
        loss = F.cross_entropy(logits.float() if bf16 else logits, y)
        (loss * weight if weight != 1.0 else loss).backward()
    if sam:
        # Second gradient on the same batch at w + eps. BatchNorm running statistics
        # were updated by the first pass at w and must not move again.
        def closure() -> torch.Tensor:
            with frozen_bn_stats(model), autocast():
                out = model(x)
                perturbed = F.cross_entropy(out.float() if bf16 else out, y)
            (perturbed * weight if weight != 1.0 else perturbed).backward()
            return perturbed

        optimizer.step(closure)
    else:
        optimizer.step()
    return loss.detach(), (logits.argmax(1) == y).sum()


class RunExists(UserError):
    pass


def prepare_run_dir(out: Path, optimizers: list[str], *, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run by accident; --force replaces it, --resume continues it."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    existing = out.exists() and any(out.iterdir())
    if existing and not (resume or force):
        raise RunExists(f"--out {out}: a run is already there; add --resume to continue it or --force to replace it")
    if force and not resume and existing:
        if not (out / "config.json").exists():
            raise UserError(f"--out {out}: not empty and not a landscape run; refusing to delete it")
        for name in OPTIMIZERS:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / "config.json").unlink(missing_ok=True)
    make_writable_dir(out)


def make_writable_dir(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any work is done."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: not writable ({exc.strerror or exc})") from None


@dataclass
class OptimizerResult:
    name: str
    final: dict[str, Any]  # last metrics line
    directory: Path


ProgressHook = Callable[[dict[str, Any]], None]


def train(
    cfg: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    progress: ProgressHook | None = None,
) -> list[OptimizerResult]:
    """Train every optimizer in ``cfg`` into run directory ``out``."""
    cfg = cfg.resolved()
    out = Path(out)
    config_path = out / "config.json"

    def prepare() -> None:
        prepare_run_dir(out, cfg.optimizers, resume=resume, force=force)
        if resume and config_path.exists():
            # Settings added after the run was made take the values their defaults resolve
            # to for that run's other settings (resolving a resolved config is a no-op).
            stored = json.loads(config_path.read_text())["config"]
            known = {f.name for f in fields(TrainConfig)}
            try:
                previous = asdict(TrainConfig(**{k: v for k, v in stored.items() if k in known}).resolved())
            except (UserError, TypeError) as exc:
                raise UserError(f"--resume: the run in {out} has settings this version cannot read ({exc})") from None
            # The scoring batch size changes how a run is measured, not what is trained.
            previous = {**json.loads(json.dumps(previous)), "eval_batch_size": cfg.eval_batch_size}
            if previous != json.loads(json.dumps(asdict(cfg))):
                changed = sorted(k for k in previous if previous[k] != asdict(cfg).get(k))
                raise UserError(f"--resume with different settings than the run in {out} ({', '.join(changed)})")

    # Under torchrun (DistributedDataParallel) rank 0 alone touches the run directory; an
    # error there is the same one-line error on every rank.
    distributed.init()
    distributed.on_main(prepare)
    if not distributed.is_main():
        progress = None
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, device=device, **cfg.data_options)
    if distributed.is_distributed():
        world, tail = distributed.world_size(), len(data.train) % cfg.batch_size or cfg.batch_size
        _check(min(cfg.batch_size, tail) >= world,
               f"--batch-size {cfg.batch_size} on {len(data.train)} samples leaves a batch of {tail}, "
               f"fewer than the {world} processes; every process needs a share of every batch")
    spec = model_spec(cfg, data)
    torch.manual_seed(cfg.seed)
    init_state = build_model(spec["name"], **spec["kwargs"]).state_dict()
    if distributed.is_main():
        run_info = {
            "config": asdict(cfg),
            "seed": cfg.seed,
            "device": str(device),
            "model": spec,
            "data": data.spec,
            "versions": {"landscape": landscape.__version__, "torch": torch.__version__,
                         "python": platform.python_version()},
        }
        if cfg.preset is not None:
            p = PRESETS[cfg.preset]
            run_info["preset"] = {"name": cfg.preset, "paper": p.paper, "source": p.source,
                                  "optimizer": p.optimizer, "set": cfg.preset_applied}
        if distributed.is_distributed():
            run_info["distributed"] = {"world_size": distributed.world_size(), "backend": distributed.backend()}
        atomic_write_text(config_path, json.dumps(run_info, indent=2))
    results = [
        train_optimizer(name, cfg, data, spec, init_state, out / name, device=device, resume=resume,
                        progress=progress)
        for name in cfg.optimizers
    ]
    distributed.barrier()  # every rank returns once rank 0 has written everything
    return results


def train_optimizer(
    name: str,
    cfg: TrainConfig,
    data: Dataset,
    spec: dict[str, Any],
    init_state: dict[str, torch.Tensor],
    run: Path,
    *,
    device: torch.device,
    resume: bool = False,
    progress: ProgressHook | None = None,
) -> OptimizerResult:
    """Train one optimizer from ``init_state``; the loop of the whole project."""
    model = build_model(spec["name"], **spec["kwargs"]).to(device)
    model.load_state_dict(init_state)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)  # 4-D weights only; checkpoints are saved contiguous
    optimizer = make_optimizer(name, model, cfg)
    # What is saved as "the iterate" and scored in metrics.jsonl: the parameters, except for
    # Lookahead, whose output is its slow weights (the fast ones live only in resume.pt).
    iterate = optimizer.slow_weights if isinstance(optimizer, Lookahead) else nullcontext
    schedule = lr_schedule(name, cfg)
    averaged = None
    if name == "phase":
        phase_lengths = [t for t, _ in schedules.parse_phases(cfg.phases)]
        phase_ends = list(schedules.phases(schedules.parse_phases(cfg.phases)).phase_boundaries())
    if averages(name, cfg) and name != "phase":
        averaged = uniform_average(model)
    # One generator drives the data order and the augmentation: the same stream for every
    # optimizer, so all runs see the same batches in the same order.
    data_rng = torch.Generator().manual_seed(cfg.seed)
    eval_bs = cfg.eval_batch_size or (128 if device.type == "cpu" else 1024)
    train_eval = train_eval_indices(cfg, len(data.train), len(data.test))
    train_eval_x, train_eval_y = ((data.train.x, data.train.y) if train_eval is None else
                                  (data.train.x[train_eval.to(device)], data.train.y[train_eval.to(device)]))
    save = _Saver(run, spec, data.spec, name)
    metrics_path = run / "metrics.jsonl"
    steps_per_epoch = math.ceil(len(data.train) / cfg.batch_size)
    start_epoch, step = 1, 0
    resume_path = run / "resume.pt"
    main, sharded = distributed.is_main(), distributed.is_distributed()
    if resume and resume_path.exists():
        state = torch_load_safely(resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        data_rng.set_state(state["data_rng"])
        if state.get("averaged") is not None:
            averaged = _averaged_for(name, model, cfg, state["epoch"] + 1, phase_lengths if name == "phase" else None,
                                     phase_ends if name == "phase" else None)
            averaged.load_state_dict(state["averaged"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        if main:
            _truncate_metrics(metrics_path, state["epoch"])
    elif main:
        run.mkdir(parents=True, exist_ok=True)
        metrics_path.unlink(missing_ok=True)
        atomic_write_text(run / "config.json", json.dumps(
            {"optimizer": name, "model": spec, "data": data.spec, "schedule": schedule.describe(),
             **_optimizer_settings(name, cfg),
             "evaluation": _evaluation_record(cfg, train_eval, len(data.train), len(data.test), eval_bs)},
            indent=2))
        with iterate():
            save.checkpoint(model, "checkpoints/epoch_0000.pt", epoch=0, step=0,
                            lr=schedule.lr_at(0, 0, steps_per_epoch))
    # Under torchrun: DistributedDataParallel; every rank computes its share of every global
    # batch, and all of them hold the same weights (and optimizer state) after each step.
    net = distributed.wrap_ddp(model)

    last: dict[str, Any] = {}
    if main and metrics_path.exists() and metrics_path.read_text().strip():
        last = json.loads(metrics_path.read_text().strip().splitlines()[-1])
    for epoch in range(start_epoch, cfg.epochs + 1):
        torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout: reproducible and resumable per epoch
        if name == "phase" and (averaged is None or epoch - 1 in phase_ends):
            averaged = _averaged_for(name, model, cfg, epoch, phase_lengths, phase_ends)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for i, idx in enumerate(batch_indices(len(data.train), cfg.batch_size, data_rng, shuffle=True)):
            lr = schedule.lr_at(epoch - 1, i, steps_per_epoch)
            set_lr(optimizer, lr)
            idx = idx.to(device)
            x = augment(data.train.x[idx], data.augmentation, data_rng)
            if cfg.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if sharded:  # augment the global batch (same random stream on every rank), take my share
                part = distributed.shard(len(idx))
                loss, hits = train_step(name, net, optimizer, x[part], data.train.y[idx[part]],
                                        global_batch=len(idx), bf16=cfg.bf16)
                loss_sum += loss.double() * (part.stop - part.start)
            else:
                loss, hits = train_step(name, model, optimizer, x, data.train.y[idx], bf16=cfg.bf16)
                loss_sum += loss.double() * len(idx)
            correct += hits
            step += 1
            if averaged is not None and name != "phase" and cfg.avg_every == "step" and epoch >= _avg_start(name, cfg):
                averaged.update_parameters(model)
            if main and cfg.save_every_steps and step % cfg.save_every_steps == 0:
                with iterate():
                    save.checkpoint(model, f"checkpoints/step_{step:07d}.pt", epoch=epoch, step=step, lr=lr)
            if progress:
                progress({"optimizer": name, "epoch": epoch, "epochs": cfg.epochs, "batch": i + 1,
                          "batches": steps_per_epoch, "loss": loss, "lr": lr})

        if averaged is not None and _averages_this_epoch(name, cfg, epoch):
            averaged.update_parameters(model)
        if name == "phase" and epoch in phase_ends:
            # Algorithm 1, line 10: the next phase starts from the bias-corrected average.
            copy_average_into(averaged, model)
            _recompute_bn(model, data, cfg, epoch, purpose=1)
            if cfg.phase_momentum == "reset":
                optimizer.state.clear()
        if sharded:
            # Every rank's BatchNorm statistics saw only its own shards; rank 0's are the
            # ones DDP hands to all ranks at the next forward, so score and save those.
            distributed.broadcast_state(model)
            loss_total, correct_total = distributed.all_reduce_sum([loss_sum.item(), correct.item()])
        else:
            loss_total, correct_total = loss_sum.item(), correct.item()

        line = {"epoch": epoch, "step": step, "lr": lr,
                "train_loss_running": loss_total / len(data.train),
                "train_acc_running": correct_total / len(data.train)}
        # The train split every eval_every epochs (on the fixed subset) and whole at the last
        # epoch; the test split whole every epoch, since every epoch writes a checkpoint.
        last_epoch = epoch == cfg.epochs
        score_train = last_epoch or epoch % cfg.eval_every == 0
        ex, ey = (data.train.x, data.train.y) if last_epoch else (train_eval_x, train_eval_y)
        with iterate():
            if score_train:
                line["train_loss"], line["train_acc"] = _score(model, ex, ey, eval_bs)
                line["train_scored"] = len(ex)
            line["test_loss"], line["test_acc"] = _score(model, data.test.x, data.test.y, eval_bs)
            line["test_scored"] = len(data.test)
            if main:
                save.checkpoint(model, f"checkpoints/epoch_{epoch:04d}.pt", epoch=epoch, step=step, lr=lr)
        if score_train and averaged is not None and getattr(averaged, "n_averaged", torch.tensor(0)).item() > 0:
            avg_model = averaged.module
            # Every rank holds the same average (the same iterates) and recomputes its
            # BatchNorm statistics from the same data: the same numbers everywhere.
            _recompute_bn(avg_model, data, cfg, epoch, purpose=0)
            distributed.broadcast_state(avg_model)  # and bit-identical, whatever the kernels do
            line["averaged_train_loss"], line["averaged_train_acc"] = _score(avg_model, ex, ey, eval_bs)
            line["averaged_test_loss"], line["averaged_test_acc"] = _score(
                avg_model, data.test.x, data.test.y, eval_bs)
            line["averaged_models"] = int(averaged.n_averaged.item())
        if main:
            if averaged is not None and "averaged_models" in line:
                save.checkpoint(averaged.module, "averaged.pt", epoch=epoch, step=step, lr=lr, kind="averaged")
            with open(metrics_path, "a") as fh:
                fh.write(json.dumps(line) + "\n")
            atomic_torch_save({
                "epoch": epoch, "step": step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "averaged": averaged.state_dict() if averaged is not None else None,
                "data_rng": data_rng.get_state(),
            }, resume_path)
        last = line
        if progress:
            progress({"optimizer": name, "epoch_done": epoch, "epochs": cfg.epochs, "metrics": line})

    if main:
        with iterate():
            save.checkpoint(model, "final.pt", epoch=cfg.epochs, step=step, lr=last.get("lr", cfg.lr))
    return OptimizerResult(name=name, final=last, directory=run)


# Salts of the generators derived from --seed (the data order uses the seed itself, dropout
# seed * 100_003 + epoch): distinct streams, so none of them shifts another.
_EVAL_SUBSET_SALT = 0x5EED_0E7A
_BN_SALT = 0x5EED_0B17


def train_eval_indices(cfg: TrainConfig, n_train: int, n_test: int) -> torch.Tensor | None:
    """The fixed train-split subset scored after each epoch (sorted indices), or None for the
    whole split. Drawn from its own generator seeded by --seed alone, so every optimizer of
    a run, and a resumed run, score the same samples; nothing of it needs saving."""
    n = n_test if cfg.eval_train_samples is None else cfg.eval_train_samples
    if n == 0 or n >= n_train:
        return None
    gen = torch.Generator().manual_seed(cfg.seed + _EVAL_SUBSET_SALT)
    return torch.randperm(n_train, generator=gen)[:n].sort().values


def _evaluation_record(cfg: TrainConfig, subset: torch.Tensor | None, n_train: int, n_test: int,
                       batch_size: int) -> dict[str, Any]:
    return {
        "batch_size": batch_size,
        "test": f"the whole test split ({n_test} samples) after every epoch",
        "train": (f"every {cfg.eval_every} epoch(s) and at the last epoch; the last epoch on the whole split "
                  f"({n_train} samples), other epochs on "
                  + ("the whole split" if subset is None else
                     f"a fixed subset of {len(subset)} samples (train_eval_indices: torch.randperm(n_train, "
                     f"generator seeded with seed + {_EVAL_SUBSET_SALT:#x})[:n], sorted)")),
        "eval_every": cfg.eval_every,
        "train_samples": n_train if subset is None else len(subset),
        "train_indices": None if subset is None else subset.tolist(),
        "metrics_keys": "train_scored / test_scored: samples behind train_* / test_* (and averaged_*) of each line",
    }


def _bn_batches(data: Dataset, cfg: TrainConfig, epoch: int, purpose: int,
                batch_size: int = 512) -> Iterator[torch.Tensor]:
    """The inputs a BatchNorm recompute sees: the train split in order, in batches of 512;
    with ``bn_data="augmented"`` through the training augmentation, drawn from a generator
    derived from (seed, epoch, purpose) alone, so the pass is reproducible, the same on
    every rank, independent of how many passes came before, and needs no resume state."""
    x = data.train.x
    if cfg.bn_data == "plain" or data.augmentation == "none":
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size]
        return
    gen = torch.Generator().manual_seed(bn_seed(cfg.seed, epoch, purpose))
    for start in range(0, len(x), batch_size):
        yield augment(x[start:start + batch_size], data.augmentation, gen)


def bn_seed(seed: int, epoch: int, purpose: int) -> int:
    """Seed of the augmented BatchNorm pass after ``epoch``; ``purpose`` 0 = the averaged
    model's statistics, 1 = the phase-wise start of the next phase."""
    return (seed * 1_000_003 + epoch) * 4 + purpose + _BN_SALT


def _recompute_bn(model: torch.nn.Module, data: Dataset, cfg: TrainConfig, epoch: int, purpose: int) -> None:
    if has_batchnorm(model):
        update_bn(_bn_batches(data, cfg, epoch, purpose), model)


def _score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """``evaluate`` over the whole split; under torchrun each rank scores its shard and the
    sums are added up (float64), so every rank gets the whole split's numbers."""
    if not distributed.is_distributed():
        return evaluate(model, x, y, batch_size)
    part = distributed.shard(len(x))
    n = part.stop - part.start
    loss, acc = evaluate(model, x[part], y[part], batch_size) if n else (0.0, 0.0)
    loss_sum, correct = distributed.all_reduce_sum([loss * n, round(acc * n)])
    return loss_sum / len(x), correct / len(x)


def _avg_start(name: str, cfg: TrainConfig) -> int:
    return cfg.swa_start if name == "swa" else cfg.avg_start


def _averages_this_epoch(name: str, cfg: TrainConfig, epoch: int) -> bool:
    if name == "phase":
        return True  # one EMA update per epoch (Algorithm 1, line 8)
    if epoch < _avg_start(name, cfg):
        return False
    if name == "swa":
        return cfg.swa_cycle == 0 or (epoch - cfg.swa_start + 1) % cfg.swa_cycle == 0
    return cfg.avg_every == "epoch"


def _averaged_for(name, model, cfg, epoch, phase_lengths, phase_ends):
    if name != "phase":
        return uniform_average(model)
    # The phase that contains `epoch`: its length T sets gamma = gamma0^(80/T).
    phase = sum(1 for end in phase_ends if end < epoch)
    return bias_corrected_ema(model, phase_gamma(phase_lengths[phase], cfg.gamma0))


def _optimizer_settings(name: str, cfg: TrainConfig) -> dict[str, Any]:
    settings: dict[str, Any] = {"lr": cfg.lr, "momentum": cfg.momentum, "nesterov": cfg.nesterov,
                                "weight_decay": cfg.weight_decay, "batch_size": cfg.batch_size,
                                "epochs": cfg.epochs, "seed": cfg.seed}
    if averages(name, cfg) and name not in ("swa", "phase"):
        settings.update(avg_start=cfg.avg_start, avg_every=cfg.avg_every)
    if name == "swa":
        settings.update(swa_start=cfg.swa_start, swa_lr=cfg.swa_lr, swa_cycle=cfg.swa_cycle,
                        swa_lr_max=cfg.swa_lr_max)
    if name == "phase":
        settings.update(gamma0=cfg.gamma0, phase_momentum=cfg.phase_momentum)
    if name in ("sam", "asam"):
        settings.update(rho=cfg.rho or (0.05 if name == "sam" else 0.5), weight_decay_at="w (base optimizer)")
    if name == "asam":
        settings.update(eta=cfg.asam_eta, filterwise=cfg.asam_filterwise, scope=cfg.asam_scope,
                        rescaled=("every parameter" if cfg.asam_scope == "all" else
                                  "parameters whose name contains 'weight' (T = 1 for the others)"))
    if name == "lookahead":
        settings.update(k=cfg.lookahead_k, alpha=cfg.lookahead_alpha,
                        iterate="slow weights: epoch_*.pt, step_*.pt, final.pt and metrics.jsonl hold the slow "
                                "weights (BatchNorm buffers as tracked by the fast weights); the fast weights "
                                "are only in resume.pt")
    if averages(name, cfg):
        settings.update(bn_data=cfg.bn_data)
    if cfg.preset is not None:
        settings.update(preset=cfg.preset, preset_applied=cfg.preset_applied)
    return settings


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    if not path.exists():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= last_epoch]
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


class _Saver:
    def __init__(self, run: Path, model_spec: dict, data_spec: dict, optimizer: str):
        self.run, self.model_spec, self.data_spec, self.optimizer = run, model_spec, data_spec, optimizer

    def checkpoint(self, model, relpath: str, *, epoch: int, step: int, lr: float, kind: str = "iterate") -> None:
        save_checkpoint(self.run / relpath, model, model_spec=self.model_spec, data_spec=self.data_spec,
                        epoch=epoch, step=step, lr=lr, optimizer=self.optimizer, kind=kind)
