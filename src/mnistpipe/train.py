"""Training: the whole split lives on the device, normalized once; batches are
slices of a seeded permutation; nothing goes to the host until an epoch ends.

Every epoch leaves a resume checkpoint (model, optimizer, RNG states, history and a
fingerprint of config + data); a killed run continues from it and ends with exactly
the weights an uninterrupted run would have. The last epoch leaves one too, so a run
killed after it (another seed's training, writing the outputs) trains nothing again; the
stage deletes them once its outputs are written. A checkpoint whose fingerprint differs
is never used.

A loss that is not finite after an epoch stops the run with a UserError, before that
epoch's checkpoint or any output is written. It is checked where the epoch's numbers
reach the host anyway, so the loop keeps no per-step host sync.

Under torchrun (train.processes > 1) the same loop runs in every process with
DistributedDataParallel: each rank trains on its share of every global batch, DDP
averages the gradients, and rank 0 alone logs and writes. That is one process's
optimization up to rounding (BatchNorm, in the CNN, normalizes each rank's share by
its own statistics). One process runs without DDP: the plain loop, bit for bit.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .atomic import save_torch
from .checkpoint import load_file
from .data.prepared import Meta, Split, normalize
from .device import synchronize
from .distributed import gather, is_main, rank_and_world, rank_seed, shard
from .errors import UserError
from .evaluate import loss_and_accuracy, predict_logits
from .models import ModelSpec, build_model
from .params import AugmentConfig, Params, TrainConfig, as_dict

RESUME_FORMAT = "mnistpipe-resume/2"  # 2: the CUDA RNG state is the training GPU's alone


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float


# Called with each trained epoch's record and its seconds (a live view of the curves).
EpochHook = Callable[[EpochRecord, float], None]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochRecord]
    seconds_per_epoch: list[float] = field(default_factory=list)
    resumed_from_epoch: int = 0
    val_logits: torch.Tensor | None = None  # the final model's, from the last epoch's validation


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD with the fused implementation (one kernel updates every parameter, which is
    faster), or foreach where this torch/device lacks it."""
    if config.optimizer == "adam":
        cls, options = torch.optim.Adam, {"lr": config.lr, "weight_decay": config.weight_decay}
    else:
        cls, options = torch.optim.SGD, {"lr": config.lr, "momentum": config.momentum,
                                         "weight_decay": config.weight_decay}
    try:
        return cls(model.parameters(), fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return cls(model.parameters(), foreach=True, **options)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, n_train: int):
    """OneCycle (warm up to train.lr, then anneal), stepped per batch; None for a constant rate."""
    if config.schedule == "constant":
        return None
    steps = config.epochs * math.ceil(n_train / config.batch_size)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)


def make_augment(config: AugmentConfig, background: float, generator: torch.Generator):
    """A batch transform: a random affine map per image (shift, rotation, scale), on the device."""
    if not config.enabled:
        return None

    def augment(x: torch.Tensor, rows: slice | None = None, batch: int | None = None) -> torch.Tensor:
        """`x`: rows `rows` of a `batch`-row global batch (a rank's share; by default all of it).
        Draws are made for the whole batch, so the generator advances alike in every rank and
        a row's transform does not depend on the number of processes."""
        n, (h, w) = len(x), x.shape[-2:]
        batch, rows = (n, slice(0, n)) if batch is None else (batch, rows)
        u = lambda: (torch.rand(batch, device=x.device, generator=generator) * 2 - 1)[rows]  # noqa: E731
        angle, scale = u() * math.radians(config.rotate), 1 + u() * config.scale
        tx, ty = u() * (2 * config.shift / w), u() * (2 * config.shift / h)  # grid units: [-1, 1]
        if n == 0:  # a rank's empty share of a tiny last batch; the draws kept its generator in step
            return x
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        # Resample around the background value, so uncovered corners stay background.
        return F.grid_sample(x - background, grid, align_corners=False) + background

    return augment


def _batch_losses(logits: torch.Tensor, yb: torch.Tensor, n_global: int, world: int,
                  label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to minimize, the rank's summed loss over its rows) for one batch's share."""
    if world == 1:
        loss = F.cross_entropy(logits, yb, label_smoothing=label_smoothing)
        return loss, loss.detach() * len(yb)
    # DDP averages the ranks' gradients; scaling each rank's summed loss by world/n_global
    # makes that average the global batch's mean gradient, even where shares are uneven.
    batch_loss = F.cross_entropy(logits, yb, reduction="sum", label_smoothing=label_smoothing)
    return batch_loss * (world / n_global), batch_loss


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor,
                y: torch.Tensor, batch_size: int, generator: torch.Generator,
                schedule=None, augment=None, label_smoothing: float = 0.0) -> tuple[float, float]:
    """One pass over (x, y) in seeded random order; returns mean loss (the smoothed loss
    it minimizes, with label_smoothing) and accuracy.

    Under DDP (`model` wrapped in it) every rank draws the same permutation, cuts the same
    global batches of `batch_size` rows, and trains on its `shard` of each; the loss and
    accuracy returned are the whole epoch's, over every rank's rows."""
    rank, world = rank_and_world()
    model.train()
    order = torch.randperm(len(y), device=x.device, generator=generator)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, len(y), batch_size):
        idx = order[start:start + batch_size]
        rows = shard(len(idx), rank, world)  # a single process: all of them
        xb, yb = x.index_select(0, idx[rows]), y.index_select(0, idx[rows])  # half the cost of x[idx]
        if augment is not None:
            xb = augment(xb, rows, len(idx))
        logits = model(xb)
        loss, batch_loss = _batch_losses(logits, yb, len(idx), world, label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        with torch.no_grad():  # accumulate on the device: no host sync per step
            loss_sum += batch_loss
            correct += (logits.argmax(1) == yb).sum()
    if world > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    return float(loss_sum) / len(y), int(correct) / len(y)


def data_digest(files: list[Path]) -> str:
    """SHA-256 over the prepared data files (read once per stage, shared by every seed's run)."""
    h = hashlib.sha256()
    for path in files:
        h.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return h.hexdigest()


def run_fingerprint(params: Params, spec: ModelSpec, data_sha: str, device: torch.device) -> str:
    """Identity of a training run: everything that changes its result (`data_sha`: data_digest)."""
    config = {"seed": params.seed, "numerics": params.numerics, "train": as_dict(params.train), "spec": spec.to_dict(),
              "device": device.type, "data": data_sha}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


@dataclass
class Resume:
    """Where a run keeps its per-epoch checkpoint, and the run's fingerprint, which a
    checkpoint must carry to be resumed from."""
    path: Path
    fingerprint: str


@dataclass
class TrainingState:
    """What a run updates, together, so it can be saved and restored as one (the loop that
    updates it is run_training)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # an LR scheduler, or None
    generator: torch.Generator  # batch order and augmentation

    def save(self, resume: Resume, epoch: int, history: list[EpochRecord]) -> None:
        """Every rank calls this; rank 0 writes, with every rank's RNG states."""
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        if self.generator.device.type == "cuda":  # dropout's stream: the training GPU's alone, restored
            rng["cuda"] = torch.cuda.get_rng_state(self.generator.device)  # to whichever GPU a resumed run leases
        rank, world = rank_and_world()
        ckpt = {
            "format": RESUME_FORMAT, "fingerprint": resume.fingerprint, "epoch": epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict() if self.schedule is not None else None,
            "rng": rng, "history": [asdict(r) for r in history],
        }
        if world > 1:  # the ranks' dropout streams differ (see build_state)
            ckpt["rank_rng"] = gather(rng)
        if rank == 0:
            save_torch(resume.path, ckpt)

    def restore(self, ckpt: dict[str, Any]) -> tuple[int, list[EpochRecord]]:
        """Load a checkpoint saved by `save`; returns (its epoch, its history)."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(ckpt["schedule"])
        rng = ckpt["rank_rng"][rank_and_world()[0]] if "rank_rng" in ckpt else ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        if "cuda" in rng and self.generator.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.generator.device)
        return ckpt["epoch"], [EpochRecord(**row) for row in ckpt["history"]]


def load_resume(resume: Resume, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The checkpoint at resume.path if it belongs to this exact run, else None."""
    if not resume.path.exists():
        return None
    try:
        ckpt = load_file(resume.path, "resume checkpoint")
    except UserError as exc:  # unreadable: never fatal, training just starts fresh
        log(f"ignoring resume checkpoint: {exc}; starting fresh")
        return None
    if ckpt.get("format") != RESUME_FORMAT or ckpt.get("fingerprint") != resume.fingerprint:
        log(f"{resume.path} is from a different config or data; starting fresh")
        return None
    return ckpt


def build_state(params: Params, spec: ModelSpec, n_train: int, device: torch.device) -> TrainingState:
    """The model (initialized from params.seed), its optimizer and schedule, and the
    generator of batch order and augmentation (also from params.seed)."""
    torch.manual_seed(params.seed)
    model = build_model(spec).to(device)
    if spec.arch == "cnn" and (device.type != "cpu" or torch.backends.mkldnn.enabled):
        # NHWC suits cuDNN and oneDNN; portable numerics keeps NCHW, the layout its kernels are defined in.
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, params.train)
    rank = rank_and_world()[0]
    if rank > 0:
        # Dropout draws from the global generator: without a stream of its own, every rank
        # would drop the same units in its share. Rank 0 keeps the single process's stream.
        torch.manual_seed(rank_seed(params.seed, rank))
    return TrainingState(model, optimizer, make_schedule(optimizer, params.train, n_train),
                   torch.Generator(device=device).manual_seed(params.seed))


def _check_processes(expected: int) -> int:
    """The number of running processes, which must be what params.yaml asks for."""
    world = rank_and_world()[1]
    if world != expected:
        raise UserError(f"params.yaml: train.processes is {expected}, but {world} process(es) "
                        f"are running; set train.processes: {world}, or run `python stages/train.py`, "
                        "which starts torchrun itself")
    return world


# The rates at which each optimizer usually trains these networks, for the divergence message.
USUAL_LR = {"adam": (0.0001, 0.003), "sgd": (0.01, 0.1)}


def check_finite(params: Params, epoch: int, train_loss: float, val_loss: float) -> None:
    """UserError if an epoch's training or validation loss is NaN or infinite: the run diverged."""
    for what, loss in (("training", train_loss), ("validation", val_loss)):
        if math.isfinite(loss):
            continue
        config = params.train
        low, high = USUAL_LR[config.optimizer]
        rate = (f"{config.lr:g} is high for {config.optimizer}, which usually trains at {low:g} to {high:g}"
                if config.lr > high else f"{config.lr:g} now; try a tenth of it")
        peak = ", the peak of the onecycle schedule" if config.schedule == "onecycle" else ""
        raise UserError(f"train: the {what} loss is {'NaN' if math.isnan(loss) else 'infinite'} after epoch "
                        f"{epoch} (seed {params.seed}): the run diverged; lower train.lr in params.yaml "
                        f"({rate}{peak}) and run again")


def _restore(state: TrainingState, resume: Resume | None, epochs: int,
             log: Callable[[str], None]) -> tuple[int, list[EpochRecord]]:
    """(epochs done, their history): from this run's checkpoint if one is there, else (0, [])."""
    ckpt = load_resume(resume, log) if resume is not None else None
    if ckpt is None:
        return 0, []
    epoch, history = state.restore(ckpt)
    done = ": every epoch is done, nothing to train" if epoch >= epochs else ""
    log(f"resuming from {resume.path} after epoch {epoch}{done}")
    return epoch, history


def run_training(params: Params, spec: ModelSpec, meta: Meta, train: Split, val: Split,
                 device: torch.device, resume: Resume | None = None, on_epoch: EpochHook = lambda r, s: None,
                 log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> TrainResult:
    """Train `spec` on `train`, validating on `val` after every epoch; with `resume`,
    continue from that run's checkpoint and leave one after every epoch (the caller deletes it
    once its outputs are written); `on_epoch(record, seconds)` after each trained epoch, in
    every rank. A non-finite loss raises UserError (check_finite). Under torchrun every rank
    calls this alike; rank 0 alone logs and writes checkpoints."""
    config = params.train
    world = _check_processes(config.processes)
    if not is_main():
        log = lambda line: None  # noqa: E731  (rank 0 speaks for all)
    state = build_state(params, spec, len(train), device)
    augment = make_augment(config.augment, -meta.mean / meta.std, state.generator)
    x_train, y_train = normalize(train.images, meta.mean, meta.std, device), train.labels.to(device)
    x_val, y_val = normalize(val.images, meta.mean, meta.std, device), val.labels.to(device)
    start_epoch, history = _restore(state, resume, config.epochs, log)
    # DDP starts by copying rank 0's weights to every rank, then averages the gradients in backward.
    net = state.model if world == 1 else nn.parallel.DistributedDataParallel(
        state.model, device_ids=[device.index] if device.type == "cuda" else None)

    seconds = []
    for epoch in range(start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = train_epoch(net, state.optimizer, x_train, y_train, config.batch_size,
                                            state.generator, state.schedule, augment, config.label_smoothing)
        val_logits = predict_logits(state.model, x_val, params.evaluate.batch_size)
        val_loss, val_acc = loss_and_accuracy(val_logits, y_val)
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
        check_finite(params, epoch, train_loss, val_loss)
        history.append(EpochRecord(epoch, *(round(v, 6) for v in (train_loss, train_acc, val_loss, val_acc))))
        log(f"epoch {epoch:3d}/{config.epochs}  train loss {train_loss:.4f} acc {train_acc:.4f}  "
            f"val loss {val_loss:.4f} acc {val_acc:.4f}  {seconds[-1]:.2f}s")
        on_epoch(history[-1], seconds[-1])
        if resume is not None:
            state.save(resume, epoch, history)
    if not seconds:  # every epoch was done before: the restored weights give the same logits
        val_logits = predict_logits(state.model, x_val, params.evaluate.batch_size)
    return TrainResult(state.model, history, seconds, start_epoch, val_logits)
