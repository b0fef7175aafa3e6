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
import logging
import math
import platform
import shutil
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import landscape
from landscape import distributed, files
from landscape.checkpoint import (
    atomic_torch_save,
    atomic_write_text,
    save_checkpoint,
    torch_load_safely,
)
from landscape.data import Dataset, augment, batch_indices, load_dataset
from landscape.device import resolve_device
from landscape.errors import UserError
from landscape.factories import is_user_factory
from landscape.evaluate import evaluate, recompute_bn
from landscape import models
from landscape.models import build_model
from landscape.optim import (
    SAM,
    Lookahead,
    LRSchedule,
    bias_corrected_ema,
    copy_average_into,
    frozen_bn_stats,
    phase_gamma,
    uniform_average,
)
from landscape.optim import schedules

log = logging.getLogger("landscape")
OPTIMIZERS = ("sgd", "asgd", "swa", "phase", "sam", "asam", "lookahead")
AVERAGING = ("asgd", "swa", "phase")  # always produce averaged.pt
DEFAULT_MODEL = {"mnist1d": "cnn1d"}  # image datasets default to resnet20


@dataclass
class TrainConfig:
    """Everything that decides a run. Stored resolved in RUN/config.json."""

    optimizers: list[str] = field(default_factory=lambda: ["sgd"])
    dataset: str = "mnist1d"
    data_options: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "phases"  # phases | cosine | constant
    phases: str | None = None  # "80:0.1,40:0.01,40:0.001"; None = 50%/25%/25% at lr, lr/10, lr/100
    # averaged SGD (Nitanda et al.) and --average on any other optimizer
    average: bool = False
    avg_start: int | None = None  # first epoch averaged; None = epochs // 2 + 1
    avg_every: str = "epoch"  # epoch | step
    # SWA (Izmailov et al.)
    swa_start: int | None = None  # None = 75% of epochs
    swa_lr: float | None = None  # None = lr / 2
    swa_cycle: int = 0  # 0 = constant SWA LR, averaged every epoch; c > 0 = cyclic, averaged per cycle
    swa_lr_max: float | None = None  # top of each cycle; None = lr
    # phase-wise aggregation (Kobayashi)
    gamma0: float = 0.9
    phase_momentum: str = "keep"  # keep | reset the momentum buffer when a phase starts from the average
    # SAM / ASAM
    rho: float | None = None  # None = 0.05 (SAM) or 0.5 (ASAM)
    asam_eta: float = 0.01
    asam_filterwise: bool = False
    # Lookahead
    lookahead_k: int = 5
    lookahead_alpha: float = 0.5
    save_every_steps: int = 0
    seed: int = 0
    device: str = "auto"
    eval_batch_size: int = 1024
    # Opt-in speed (bench/RESULTS.md): 2-D conv nets in channels_last memory format (same
    # numbers up to float32 summation order), and the training forward passes under bfloat16
    # autocast (different numerics; evaluation stays float32).
    channels_last: bool = False
    bf16: bool = False

    def resolved(self) -> "TrainConfig":
        """Fill the defaults that depend on other fields, and validate."""
        cfg = TrainConfig(**asdict(self))
        for name, value in asdict(cfg).items():  # inf/NaN pass every "> 0" check, then train to NaN
            _check(not isinstance(value, float) or math.isfinite(value),
                   f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if not cfg.optimizers:
            cfg.optimizers = ["sgd"]
        for name in cfg.optimizers:
            if name not in OPTIMIZERS:
                raise UserError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
        if len(set(cfg.optimizers)) != len(cfg.optimizers):
            raise UserError("each --optimizer may be given once")
        _check(cfg.epochs >= 1, f"--epochs must be >= 1, got {cfg.epochs}")
        _check(cfg.batch_size >= 1, f"--batch-size must be >= 1, got {cfg.batch_size}")
        _check(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr must be a positive number, got {cfg.lr}")
        _check(0 <= cfg.momentum < 1, f"--momentum must be in [0, 1), got {cfg.momentum}")
        _check(cfg.weight_decay >= 0, f"--weight-decay must be >= 0, got {cfg.weight_decay}")
        _check(cfg.schedule in ("phases", "cosine", "constant"),
               f"--schedule must be phases, cosine or constant, got {cfg.schedule!r}")
        _check(cfg.avg_every in ("epoch", "step"), f"--avg-every must be epoch or step, got {cfg.avg_every!r}")
        _check(cfg.phase_momentum in ("keep", "reset"),
               f"--phase-momentum must be keep or reset, got {cfg.phase_momentum!r}")
        _check(0 < cfg.gamma0 < 1, f"--gamma0 must be in (0, 1), got {cfg.gamma0}")
        _check(cfg.save_every_steps >= 0, "--save-every-steps must be >= 0")
        _check(cfg.lookahead_k >= 1 and 0 < cfg.lookahead_alpha <= 1,
               "--lookahead-k must be >= 1 and --lookahead-alpha in (0, 1]")
        if cfg.model is None:
            _check(not is_user_factory(cfg.dataset), f"--dataset {cfg.dataset}: your own data needs --model "
                                                     "(a built-in name, torchvision:NAME or package.module:factory)")
            cfg.model = DEFAULT_MODEL.get(cfg.dataset, "resnet20")
        if cfg.phases is None:
            first, second = max(1, cfg.epochs // 2), max(0, cfg.epochs // 4)
            parts = [(first, cfg.lr), (second, cfg.lr / 10), (cfg.epochs - first - second, cfg.lr / 100)]
            cfg.phases = ",".join(f"{t}:{lr:g}" for t, lr in parts if t > 0)
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
        for name in cfg.optimizers:
            lr_schedule(name, cfg)  # the schedules check their own settings: before anything is written
        return cfg


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def model_spec(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    return models.model_spec(cfg.model, cfg.model_options, data.num_classes, data.input_shape)


def lr_schedule(name: str, cfg: TrainConfig) -> LRSchedule:
    if cfg.schedule == "phases":
        base = schedules.phases(schedules.parse_phases(cfg.phases))
    elif cfg.schedule == "cosine":
        base = schedules.cosine(cfg.lr, cfg.epochs)
    else:
        base = schedules.constant(cfg.lr)
    if name != "swa":
        return base
    return schedules.swa(
        base, swa_start=cfg.swa_start - 1, swa_lr=cfg.swa_lr,
        cycle=cfg.swa_cycle, cycle_lr_max=cfg.swa_lr_max,
    )


def make_optimizer(name: str, model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    sgd_kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    params = model.parameters()
    if name == "sam":
        return SAM(params, torch.optim.SGD, rho=cfg.rho or 0.05, **sgd_kwargs)
    if name == "asam":
        return SAM(params, torch.optim.SGD, rho=cfg.rho or 0.5, adaptive=True, eta=cfg.asam_eta,
                   filterwise=cfg.asam_filterwise, **sgd_kwargs)
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


LOCK = ".lock"  # RUN/.lock: held by the process training the run (see landscape.files.Lock)


def check_run_dir(out: Path, *, resume: bool, force: bool, lock: files.Lock | None = None) -> bool:
    """Refuse what is refused before any work: --out a file, or a run already there without
    --resume/--force, or not writable; then take ``lock`` (a second process training the same
    run is refused). Nothing is deleted here. Returns whether a run is already there."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    existing = out.exists() and any(p.name != LOCK for p in out.iterdir())
    if existing and not (resume or force):
        raise RunExists(f"--out {out}: a run is already there; add --resume to continue it or --force to replace it")
    make_writable_dir(out)
    if lock is not None and not lock.held:
        lock.acquire()
    return existing


def prepare_run_dir(out: Path, optimizers: list[str], *, resume: bool, force: bool,
                    lock: files.Lock | None = None) -> None:
    """Refuse to overwrite a run by accident; --force replaces it, --resume continues it."""
    existing = check_run_dir(out, resume=resume, force=force, lock=lock)
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
    lock = files.Lock(out / LOCK, f"run directory {out}")

    def prepare() -> None:
        prepare_run_dir(out, cfg.optimizers, resume=resume, force=force, lock=lock)
        if resume and config_path.exists():
            # Settings added after the run was made take their defaults.
            previous = {**asdict(TrainConfig()), **json.loads(config_path.read_text())["config"]}
            if previous != json.loads(json.dumps(asdict(cfg))):
                changed = sorted(k for k in previous if previous[k] != asdict(cfg).get(k))
                raise UserError(f"--resume with different settings than the run in {out} ({', '.join(changed)})")

    # Under torchrun (DistributedDataParallel) rank 0 alone touches the run directory; an
    # error there is the same one-line error on every rank.
    distributed.init()
    distributed.on_main(lambda: check_run_dir(out, resume=resume, force=force, lock=lock))  # refusals first
    try:
        return _train(cfg, out, prepare, resume=resume, progress=progress)
    finally:
        lock.release()  # (a killed process releases it too)


def _train(cfg: TrainConfig, out: Path, prepare: Callable[[], None], *, resume: bool,
           progress: ProgressHook | None) -> list[OptimizerResult]:
    config_path = out / "config.json"
    if not distributed.is_main():
        progress = None
    device = resolve_device(cfg.device)
    # Data and model are checked before anything is written or replaced (prepare()).
    data = load_dataset(cfg.dataset, data_dir=cfg.data_dir, device=device, **cfg.data_options)
    if distributed.is_distributed():
        world, tail = distributed.world_size(), len(data.train) % cfg.batch_size or cfg.batch_size
        _check(min(cfg.batch_size, tail) >= world,
               f"--batch-size {cfg.batch_size} on {len(data.train)} samples leaves a batch of {tail}, "
               f"fewer than the {world} processes; every process needs a share of every batch")
    spec = model_spec(cfg, data)
    torch.manual_seed(cfg.seed)
    init_state = build_model(spec["name"], **spec["kwargs"]).state_dict()
    distributed.on_main(prepare)
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
             **_optimizer_settings(name, cfg)}, indent=2))
        save.checkpoint(model, "checkpoints/epoch_0000.pt", epoch=0, step=0, lr=schedule.lr_at(0, 0, steps_per_epoch))
    # Under torchrun: DistributedDataParallel; every rank computes its share of every global
    # batch, and all of them hold the same weights (and optimizer state) after each step.
    net = distributed.wrap_ddp(model)

    last: dict[str, Any] = {}
    if main and metrics_path.exists():
        last = (read_metrics(metrics_path) or [{}])[-1]
    warned = not all(math.isfinite(v) for k, v in last.items() if k.endswith("loss") and isinstance(v, float))
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
                save.checkpoint(model, f"checkpoints/step_{step:07d}.pt", epoch=epoch, step=step, lr=lr)
            if progress:
                progress({"optimizer": name, "epoch": epoch, "epochs": cfg.epochs, "batch": i + 1,
                          "batches": steps_per_epoch, "loss": loss, "lr": lr})

        if averaged is not None and _averages_this_epoch(name, cfg, epoch):
            averaged.update_parameters(model)
        if name == "phase" and epoch in phase_ends:
            # Algorithm 1, line 10: the next phase starts from the bias-corrected average.
            copy_average_into(averaged, model)
            recompute_bn(model, data.train.x)
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
        line["train_loss"], line["train_acc"] = _score(model, data.train.x, data.train.y, cfg.eval_batch_size)
        line["test_loss"], line["test_acc"] = _score(model, data.test.x, data.test.y, cfg.eval_batch_size)
        if averaged is not None and getattr(averaged, "n_averaged", torch.tensor(0)).item() > 0:
            avg_model = averaged.module
            # Every rank holds the same average (the same iterates) and recomputes its
            # BatchNorm statistics over the whole train split: the same numbers everywhere.
            recompute_bn(avg_model, data.train.x)
            distributed.broadcast_state(avg_model)  # and bit-identical, whatever the kernels do
            line["averaged_train_loss"], line["averaged_train_acc"] = _score(
                avg_model, data.train.x, data.train.y, cfg.eval_batch_size)
            line["averaged_test_loss"], line["averaged_test_acc"] = _score(
                avg_model, data.test.x, data.test.y, cfg.eval_batch_size)
            line["averaged_models"] = int(averaged.n_averaged.item())
        if main:
            save.checkpoint(model, f"checkpoints/epoch_{epoch:04d}.pt", epoch=epoch, step=step, lr=lr)
            if averaged is not None and "averaged_models" in line:
                save.checkpoint(averaged.module, "averaged.pt", epoch=epoch, step=step, lr=lr, kind="averaged")
            files.append_line(metrics_path, json.dumps(line))
            atomic_torch_save({
                "epoch": epoch, "step": step,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "averaged": averaged.state_dict() if averaged is not None else None,
                "data_rng": data_rng.get_state(),
            }, resume_path)
        last = line
        bad = [k for k in ("train_loss", "train_loss_running") if not math.isfinite(line[k])]
        if bad and not warned:
            warned = True  # once per run: every later epoch is NaN too
            log.warning("%s diverged in epoch %d (%s %s); the run goes on, but its numbers are NaN/inf from here: "
                        "a smaller --lr usually helps", name, epoch, bad[0].replace("_", " "), line[bad[0]])
        if progress:
            progress({"optimizer": name, "epoch_done": epoch, "epochs": cfg.epochs, "metrics": line})

    if main:
        save.checkpoint(model, "final.pt", epoch=cfg.epochs, step=step, lr=last.get("lr", cfg.lr))
    return OptimizerResult(name=name, final=last, directory=run)


def _score(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """``evaluate`` over the whole split; under torchrun each rank scores its shard and the
    sums are added up (float64), so every rank gets the whole split's numbers."""
    if not distributed.is_distributed():
        return evaluate(model, x, y, batch_size)
    part = distributed.shard(len(x))
    n = part.stop - part.start
    loss, acc = evaluate(model, x[part], y[part], batch_size) if n else (0.0, 0.0)
    loss_sum, correct = distributed.all_reduce_sum([loss * n, round(acc * n) if math.isfinite(acc) else math.nan])
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
        settings.update(eta=cfg.asam_eta, filterwise=cfg.asam_filterwise)
    if name == "lookahead":
        settings.update(k=cfg.lookahead_k, alpha=cfg.lookahead_alpha)
    return settings


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl``. A torn last line -- a kill or a full disk during its
    write -- is expected and left out; any other line that does not parse is damage."""
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    rows = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            if n == len(lines):  # no newline after it: the torn end of an interrupted write
                break
            raise UserError(f"{path}:{n}: damaged line (not a JSON object with an epoch)")
        rows.append(row)
    return rows


def finished_epochs(out: str | Path) -> dict[str, int]:
    """The last finished epoch of every optimizer of a run (0 when none), from ``metrics.jsonl``."""
    done = {}
    for name in OPTIMIZERS:
        path = Path(out) / name / "metrics.jsonl"
        if path.parent.is_dir():
            try:
                rows = read_metrics(path) if path.exists() else []
            except (OSError, UserError):
                rows = []
            done[name] = max((r["epoch"] for r in rows), default=0)
    return done


def _truncate_metrics(path: Path, last_epoch: int) -> None:
    """Keep the lines of epochs up to ``last_epoch`` (those resume.pt has), dropping a torn one."""
    if not path.exists():
        return
    kept = [row for row in read_metrics(path) if row["epoch"] <= last_epoch]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))


class _Saver:
    def __init__(self, run: Path, model_spec: dict, data_spec: dict, optimizer: str):
        self.run, self.model_spec, self.data_spec, self.optimizer = run, model_spec, data_spec, optimizer

    def checkpoint(self, model, relpath: str, *, epoch: int, step: int, lr: float, kind: str = "iterate") -> None:
        save_checkpoint(self.run / relpath, model, model_spec=self.model_spec, data_spec=self.data_spec,
                        epoch=epoch, step=step, lr=lr, optimizer=self.optimizer, kind=kind)
