"""Maximum-likelihood training of a flow: the :class:`Trainer`.

It reads top to bottom: setup (device, seeds, run folder), data (whole datasets as uint8
tensors, on the GPU when they fit), model (built from the config, ActNorm initialized on a
larger first batch), optimizer (:mod:`glowlab.optim`'s Adam, AdamW or Adamax with linear
warmup, gradient clipping and Polyak/EMA weights), then the loop (one step, logging,
evaluation, samples, checkpoints).

The loss is the negative log-likelihood in bits per dimension, logged as three terms::

    loss_bpd = prior_bpd + logdet_bpd + n_bits
    prior_bpd  = -mean(log p_Z(z)) / (D log 2)
    logdet_bpd = -mean(log|det dz/dx|) / (D log 2)

where ``D = C*H*W`` and ``n_bits`` is the dequantization constant ``D log(2**n_bits) / (D
log 2)``; see :func:`glowlab.metrics.bits_per_dim_from_log_prob`. A class-conditional model
adds ``class_weight * cross_entropy`` (nats) to the objective (Glow's ``ycond``).

Robustness: a step whose loss or gradient is not finite is rejected: the weights, the
optimizer state, the EMA and the running statistics that batch normalization updated in its
forward pass keep their values. The decision is taken on the device by
:mod:`glowlab.optim`, so a step reads nothing back to the host; the loop reads the
decisions of the steps since the last check once per log interval (and before any
evaluation, sample grid or checkpoint), logs each rejected step, and after ``nan_patience``
rejections in a row rolls back to its last checkpoint with the learning rate scaled by
``rollback_lr_factor``; after ``max_rollbacks`` rollbacks it stops with
:class:`TrainingError`. A rejected step still counts as a step.

Exact resume: the data order of epoch ``e`` is a permutation seeded by ``(seed, e)``, and a
checkpoint stores the position in it along with every RNG state, so on the CPU a resumed
run's losses equal those of an uninterrupted run.

Fast paths (``train.precision``, ``train.compile``, ``train.channels_last``, and
``train.memory_mode``) change how the steps run, not what they compute: ``bf16`` runs only
the coupling networks in bfloat16 (:func:`glowlab.speed.autocast`), for training,
evaluation and samples alike, while log-determinants and likelihood sums stay in float32.

Several processes: under ``torchrun`` (``WORLD_SIZE`` > 1) every process builds the same
global batch (the same images and dequantization noise as one process would) and trains
on its contiguous share of ``train.batch_size / WORLD_SIZE`` images, inside
DistributedDataParallel; the ActNorm init batch is shared out the same way and its
statistics all-reduced, the logged terms and the finiteness check are averaged over the
processes (so all of them reject a step together), evaluation batches are dealt out and
gathered, and only rank 0 writes logs, samples and checkpoints. With equal seeds the
losses are those of one process with the same global batch, up to rounding.

Example:
    >>> from glowlab.config import apply_overrides, get_preset
    >>> overrides = ["train.steps=2", "train.progress=false"]
    >>> config = apply_overrides(get_preset("glow-digits"), overrides)
    >>> trainer = Trainer(config, out_dir=tempfile.mkdtemp())  # doctest: +SKIP
    >>> result = trainer.fit()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._optional import require
from .checkpoint import (
    CheckpointError,
    build_model_on,
    load_weights,
    read_checkpoint,
    write_checkpoint,
)
from .config import LoopConfig, TrainConfig, save_config
from .distributed import (
    DistributedContext,
    all_reduce_mean,
    barrier,
    broadcast_from_main,
    gather_cat,
    setup_distributed,
    wrap_model,
)
from .errors import GlowlabError
from .images import make_grid, save_png
from .metrics import dequantize, quantize
from .models import FlowModel
from .optim import build_optimizer
from .runlog import RunLog
from .speed import (
    autocast,
    channels_last_input,
    compile_flow_steps,
    keep_freed_memory_for,
    set_tf32,
    to_channels_last,
)
from .transforms.normalization import BatchNormFlow

__all__ = ["EvalResult", "TrainState", "Trainer", "TrainingError", "resolve_device"]


class TrainingError(GlowlabError, RuntimeError):
    """Training cannot continue (for example, the loss stays non-finite after rollbacks)."""


@dataclass
class TrainState:
    """Progress of a run; saved in every checkpoint's manifest."""

    step: int = 0  # training steps taken (a rejected one counts, with no update)
    epoch: int = 0  # current pass over the training set
    position: int = 0  # index of the next batch's first image in this epoch's order
    lr_scale: float = 1.0  # product of the rollback factors applied so far
    rollbacks: int = 0
    rejected: int = 0  # steps rejected for a non-finite loss or gradient, in total
    rejected_in_a_row: int = 0  # the latest steps' run of rejections, as of the last check
    # The log interval under way: the sums of the logged terms over its applied steps, and
    # their number (a resume continues it, so its record is the uninterrupted run's).
    log_sums: list[float] = dataclasses.field(default_factory=list)
    log_count: int = 0
    images_seen: int = 0
    best_bpd: float | None = None
    elapsed_s: float = 0.0  # training wall time, summed over resumes


@dataclass(frozen=True)
class EvalResult:
    """Test bits/dim: mean and standard error over images (each averaged over the draws)."""

    bpd: float
    sem: float
    prior_bpd: float
    logdet_bpd: float
    n_images: int
    draws: int
    accuracy: float | None = None  # class-conditional models: classifier accuracy


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"`` as a device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device cuda was requested but CUDA is not available; use --device cpu")
    return torch.device(name)


# The optimizer hyperparameters that a resume takes from the config, not the checkpoint.
_GROUP_SETTINGS = ("betas", "eps", "weight_decay")


def _order_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


class Trainer:
    """Trains a flow model as :class:`~glowlab.config.TrainConfig` says, in ``out_dir``.

    ``out_dir`` receives ``config.json`` (the resolved config), ``log.jsonl``,
    ``checkpoints/`` (``last`` and ``best``), ``samples/`` and, when TensorBoard is
    installed, ``tensorboard/``. With ``resume=True`` the run continues from
    ``checkpoints/last.json``; its model section, dataset and optimizer must match
    ``config``, and the EMA weights follow ``config.optim.ema_decay``. From its creation
    to the end of :meth:`fit` it holds a lock on ``out_dir/.lock``, so a second run into
    the same folder is refused.
    """

    def __init__(
        self, config: TrainConfig, out_dir: str | os.PathLike[str], resume: bool = False
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer expects a TrainConfig, got {type(config).__name__}")
        # -- setup ---------------------------------------------------------------------
        require("safetensors", "train")  # checkpoints need it: fail now, not at the first save
        self.config = config
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = self.out_dir / "checkpoints"
        last = self.checkpoint_dir / "last.json"
        if resume and not last.is_file():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        if not resume and last.is_file():
            raise _already_a_run(self.out_dir)
        self._claim: IO[str] | None = None  # the lock on the run folder, while the run is on
        device = resolve_device(config.device)
        _check_speed_options(config.train, device)
        self.ctx = _process_context(device)
        self.device = self.ctx.device
        if config.train.batch_size % self.ctx.world_size:
            raise ValueError(
                f"train.batch_size={config.train.batch_size} is the batch over all "
                f"{self.ctx.world_size} processes and must be a multiple of their number"
            )
        if self.ctx.is_main:  # an unusable run folder fails now, not after loading the data
            _check_writable_folder(self.out_dir)
        barrier()  # every process has looked at the run folder before rank 0 writes to it
        self.dtype = {"float32": torch.float32, "float64": torch.float64}[config.train.dtype]
        self.state = TrainState()
        _seed_everything(config.seed)
        self.generator = torch.Generator(self.device).manual_seed(config.seed)

        # -- data ----------------------------------------------------------------------
        from .data import get_dataset  # imported here: only training needs the loaders

        d = config.data
        kwargs = dict(data_dir=d.data_dir, download=d.download, image_size=d.image_size)
        train = get_dataset(d.name, "train", **kwargs)  # type: ignore[arg-type]
        test = get_dataset(d.name, "test", **kwargs)  # type: ignore[arg-type]
        n = len(train) if d.max_train_images is None else min(d.max_train_images, len(train))
        self.train_images, self.train_labels = self._to_device(train.images[:n], train.labels[:n])
        self.test_images, self.test_labels = self._to_device(test.images, test.labels)
        if config.train.batch_size > n:
            raise ValueError(
                f"train.batch_size={config.train.batch_size} is larger than the {n} training images"
            )
        self.image_shape: tuple[int, int, int] = tuple(train.images.shape[1:])  # type: ignore[assignment]
        self.dims = math.prod(self.image_shape)
        self._order: tuple[int, Tensor] | None = None

        # -- model ---------------------------------------------------------------------
        kwargs = config.model_kwargs(self.image_shape)
        try:
            self.model: FlowModel = build_model_on(
                config.model.name, kwargs, self.device, self.dtype
            )
        except TypeError as exc:
            raise ValueError(f"model config: {exc}") from None
        _check_memory_mode(self.model, config.train.memory_mode)
        self.model.set_memory_mode(config.train.memory_mode)
        self.channels_last = _use_channels_last(config.train.channels_last, self.model, self.device)
        if self.channels_last:
            to_channels_last(self.model)
        keep_freed_memory_for(self.device, config.train.keep_freed_memory)
        # The buffers that a training-mode forward pass updates (batch normalization's
        # running statistics): saved before each step and put back when it is rejected.
        # Only these, not every buffer: copying Glow's many constant ones each step would
        # cost a kernel launch apiece.
        self._running_stats = _running_stats(self.model)
        self._saved_stats = [b.clone() for b in self._running_stats]  # reused every step
        # The EMA model and its parameters, with the model's, and its batch-norm buffers:
        # found once per EMA model, not walked every step.
        self._ema_lists: tuple[nn.Module | None, list[Tensor], list[Tensor], list[Tensor]] = (
            None, [], [], []
        )  # fmt: skip
        self.ema: FlowModel | None = None  # created after the ActNorm init
        if self.device.type == "cuda":
            set_tf32(config.train.precision == "tf32")  # fp32 means no TF32 anywhere

        # -- optimizer -----------------------------------------------------------------
        # glowlab's Adam, AdamW and Adamax: torch.optim's rules, but a step can be skipped
        # on the device, so the non-finite guard needs no host synchronisation.
        o = config.optim
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            o.name, self.params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay
        )

        # -- restore and logging -------------------------------------------------------
        notes: list[str] = []
        if resume:  # before writing anything: a checkpoint that does not match leaves OUT as is
            notes = self._restore(last, check_config=True)
        self.log: RunLog | _SilentLog = _SilentLog()
        if self.ctx.is_main:  # one process writes the run folder
            # Claimed before its first write, and checked again once claimed: two runs
            # started at once into one folder both passed the check above.
            self._claim = _claim_run_folder(self.out_dir)
            if not resume and last.is_file():
                self._release_run_folder()
                raise _already_a_run(self.out_dir)
            save_config(config, self.out_dir / "config.json")
            tb = str(self.out_dir / "tensorboard") if config.train.tensorboard else None
            self.log = RunLog(self.out_dir / "log.jsonl", tensorboard_dir=tb)
        if resume:
            for note in notes:
                self.log.event(self.state.step, note)
            self.log.event(self.state.step, f"resumed from {last} at step {self.state.step}")
        else:
            self._initialize()

        # -- fast paths and data parallelism ---------------------------------------------
        # Applied after the ActNorm init and the EMA copy, to each model on its own (a deep
        # copy of a compiled model compiles again; one made under autocast is unpatched).
        self._fast_paths = contextlib.ExitStack()
        if config.train.compile:
            _allow_recompiles(8 * len(self.model.levels))
        for model in (self.model, self.ema):
            if model is None:
                continue
            if config.train.precision == "bf16":
                # For the Trainer's life: per-step patching would defeat compiled code.
                self._fast_paths.enter_context(autocast(model, torch.bfloat16))
            if config.train.compile:
                compile_flow_steps(model, backend=config.train.compile_backend)
        # DistributedDataParallel around model.evaluate; just Evaluate in one process.
        self._train_module = wrap_model(self.model, self.ctx)

    # -- data ----------------------------------------------------------------------------
    def _to_device(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        # Small datasets live on the device so a batch is one indexing op, with no copies.
        if self.device.type == "cuda" and images.numel() < 2**31:
            return images.to(self.device), labels.to(self.device)
        return images, labels

    def _epoch_order(self, epoch: int) -> Tensor:
        """The data order of ``epoch``: a permutation that depends only on the seed and epoch."""
        if self._order is None or self._order[0] != epoch:
            g = torch.Generator().manual_seed(_order_seed(self.config.seed, epoch))
            order = torch.randperm(len(self.train_images), generator=g)
            self._order = (epoch, _to_device_unblocked(order, self.train_images.device))
        return self._order[1]

    def _next_batch(self) -> tuple[Tensor, Tensor | None]:
        """This process's share of the next training batch, dequantized (and its labels).

        Every process draws the augmentation and noise of the whole global batch, so that
        the ranks' shares together are exactly the batch that one process would train on.
        """
        b, n = self.config.train.batch_size, len(self.train_images)
        if self.state.position + b > n:  # drop the last incomplete batch of each epoch
            self.state.epoch, self.state.position = self.state.epoch + 1, 0
        index = self._epoch_order(self.state.epoch)[self.state.position : self.state.position + b]
        self.state.position += b
        images = self._to_batch_device(self.train_images[index])
        x = self._layout(self._share(self._prepare(images, augment=True)))
        if not self.model.conditional:
            return x, None
        return x, self._share(self._to_batch_device(self.train_labels[index]))

    def _to_batch_device(self, batch: Tensor) -> Tensor:
        # A dataset too big for the GPU stays in host memory; its batches are copied over.
        return _to_device_unblocked(batch, self.device)

    def _share(self, batch: Tensor) -> Tensor:
        """This process's contiguous part of a global batch (all of it in one process)."""
        if not self.ctx.distributed:
            return batch
        return torch.tensor_split(batch, self.ctx.world_size)[self.ctx.rank]

    def _layout(self, x: Tensor) -> Tensor:
        return channels_last_input(x) if self.channels_last else x

    def _prepare(self, images: Tensor, augment: bool) -> Tensor:
        d = self.config.data
        if augment and d.random_shift:
            from .data import random_shift

            images = random_shift(images, d.random_shift, generator=self.generator)
        if augment and d.random_flip:
            from .data import random_flip

            images = random_flip(images, generator=self.generator)
        return dequantize(images, d.n_bits, dtype=self.dtype, generator=self.generator)

    # -- model ---------------------------------------------------------------------------
    @torch.no_grad()
    def _initialize(self) -> None:
        """Data-dependent init: one forward pass in train mode on ``init_batch_size`` images."""
        n = min(self.config.train.init_batch_size, len(self.train_images))
        if n < self.ctx.world_size:
            raise ValueError(
                f"the ActNorm init batch ({n} images) must hold at least one image per process "
                f"({self.ctx.world_size}); raise train.init_batch_size"
            )
        g = torch.Generator().manual_seed(_order_seed(self.config.seed, -1))
        index = torch.randperm(len(self.train_images), generator=g)[:n].to(self.train_images.device)
        # Each process takes its share; ActNorm all-reduces the statistics, so the init is
        # that of the whole batch, as in one process.
        x = self._prepare(self.train_images[index].to(self.device), augment=False)
        x = self._layout(self._share(x))
        y = self._share(self.train_labels[index].to(self.device))
        self.model.train()
        with autocast(self.model, enabled=self.config.train.precision == "bf16"):
            self.model.evaluate(x, y if self.model.conditional else None)
        if self.config.optim.ema_decay is not None:
            self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.log.event(
            0, f"initialized {self.model.name} on {n} images", parameters=self.num_parameters
        )
        self.save_checkpoint("last")  # a rollback target before the first step

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    @torch.no_grad()
    def _update_ema(self, applied: Tensor) -> None:
        """Move the average towards the weights, unless the step was rejected (on the device)."""
        if self.ema is None or self.config.optim.ema_decay is None:
            return
        # Short runs start from a faster average: decay grows as (1 + t) / (10 + t).
        t = self.state.step
        decay = min(self.config.optim.ema_decay, (1 + t) / (10 + t))
        weight = applied.to(self.dtype) * (1 - decay)
        if self._ema_lists[0] is not self.ema:
            self._ema_lists = (
                self.ema, list(self.ema.parameters()), list(self.model.parameters()),
                _running_stats(self.ema),
            )  # fmt: skip
        _, ema_params, params, ema_stats = self._ema_lists
        # ema += weight * (p - ema): exact for weight 0; a foreach lerp would read the
        # tensor weight back to the host.
        change = torch._foreach_sub(params, ema_params)
        torch._foreach_mul_(change, weight)
        torch._foreach_add_(ema_params, change)
        # The buffers that training changes (the ActNorm init flags were copied with the
        # model, and the rest are constants).
        if self._running_stats:
            torch._foreach_copy_(ema_stats, self._running_stats)

    # -- optimizer -----------------------------------------------------------------------
    def learning_rate(self, step: int) -> float:
        """Linear warmup to ``optim.lr``, times the rollback scale."""
        warmup = self.config.optim.warmup_steps
        ramp = min(1.0, (step + 1) / warmup) if warmup else 1.0
        return self.config.optim.lr * self.state.lr_scale * ramp

    # -- the loop ------------------------------------------------------------------------
    def loss_terms(self, x: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """The objective and its logged terms (0-dim tensors, bits/dim and nats).

        The forward pass goes through the DistributedDataParallel wrapper when there is one,
        so that the backward pass averages the gradients over the processes.
        """
        out = self._train_module(x, y)
        scale = 1.0 / (self.dims * math.log(2))
        prior = -out.prior_log_prob.mean() * scale
        logdet = -out.logdet.mean() * scale
        bpd = prior + logdet + self.config.data.n_bits
        terms = {"loss": bpd, "loss_bpd": bpd, "prior_bpd": prior, "logdet_bpd": logdet}
        if y is not None:
            ce = self.model.class_loss(out, y).mean()
            terms["class_ce"] = ce
            terms["loss"] = bpd + self.config.train.class_weight * ce
        return terms

    def train_step(self) -> dict[str, Tensor]:
        """One step on the next batch; returns its terms (0-dim device tensors).

        ``terms["applied"]`` says whether the update was applied: it is False when the loss
        or a gradient was not finite, and then the weights, the optimizer state, the batch
        normalization statistics and the EMA keep their values. The decision is taken on
        the device: nothing is read back to the host, so the next step can be queued while
        this one runs. The step counts either way (``state.step``); :meth:`fit` reads the
        decisions back at its log intervals.
        """
        x, y = self._next_batch()
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.state.step)
        self.model.train()
        if self._running_stats:
            torch._foreach_copy_(self._saved_stats, self._running_stats)
        terms = self.loss_terms(x, y)
        self.optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        terms["grad_norm"] = self.optimizer.clip_grad_norm_(self.config.optim.grad_clip)
        terms = {k: v.detach() for k, v in terms.items()}
        finite = torch.isfinite(terms["loss"])  # the optimizer checks the gradients
        if self.ctx.distributed:
            # One all-reduce: the global-batch means of the terms, and whether every process
            # saw a finite loss (the gradients are already averaged, so every process sees
            # the same ones).
            names = list(terms)
            packed = torch.stack([*(terms[k].double() for k in names), finite.double()])
            packed = all_reduce_mean(packed)
            terms = dict(zip(names, packed[:-1].unbind(), strict=True))
            finite = packed[-1] == 1
        applied = self.optimizer.step(valid=finite)
        if self._running_stats:  # the forward pass moved them, towards NaN if rejected
            with torch.no_grad():
                for buffer, saved in zip(self._running_stats, self._saved_stats, strict=True):
                    torch.where(applied, buffer, saved, out=buffer)
        self.state.step += 1
        self.state.images_seen += self.config.train.batch_size
        self._update_ema(applied)
        terms["applied"] = applied
        return terms

    def fit(self) -> dict[str, Any]:
        """Train until ``train.steps``; returns the final test evaluation and paths.

        The run folder is claimed from the Trainer's creation to the end of ``fit`` (or until
        the Trainer is garbage-collected): another Trainer, in this process or another, is
        refused it meanwhile.
        """
        try:
            return self._fit()
        finally:
            self._release_run_folder()

    def _release_run_folder(self) -> None:
        if self._claim is not None:
            self._claim.close()  # closing the file releases its lock
            self._claim = None

    def _fit(self) -> dict[str, Any]:
        c = self.config.train
        bar = self._bar = _progress_bar(c.progress and self.ctx.is_main, c.steps, self.state.step)
        names = ["loss_bpd", "prior_bpd", "logdet_bpd", "grad_norm"]
        if self.model.conditional:
            names.append("class_ce")
        sums, count = self._log_interval(names)
        pending: list[Tensor] = []  # whether each step since the last check was applied
        failures = self.state.rejected_in_a_row
        timed = 0  # applied steps since t_log, for the throughput
        t_log = time.perf_counter()
        t_start, elapsed0 = t_log, self.state.elapsed_s
        try:
            while self.state.step < c.steps:
                terms = self.train_step()
                applied = terms["applied"]
                values = torch.stack([terms[k] for k in names]).to(torch.float64)
                sums += torch.where(applied, values, 0.0)  # a rejected step's terms are NaN
                pending.append(applied)
                step = self.state.step
                if bar is not None:
                    bar.update(1)
                boundary = step == c.steps or any(
                    every and step % every == 0
                    for every in (c.log_every, c.eval_every, c.sample_every, c.checkpoint_every)
                )
                if not boundary:
                    continue
                # The one host synchronisation in a log interval: which steps were applied,
                # and the sums of the applied steps' terms, in one transfer.
                read = torch.cat([torch.stack(pending).to(torch.float64), sums]).tolist()
                flags, term_sums = read[: len(pending)], read[len(pending) :]
                first = step - len(flags) + 1
                pending = []
                run = failures
                for offset, ok in enumerate(flags):
                    if ok:
                        count, timed, failures = count + 1, timed + 1, 0
                        continue
                    failures += 1
                    run = max(run, failures)
                    self.state.rejected += 1
                    self.state.images_seen -= c.batch_size
                    self.log.event(
                        first + offset,
                        f"rejected step {first + offset}: non-finite loss or gradient "
                        f"({failures} in a row); no update",
                        rejected=True,
                    )
                self.state.rejected_in_a_row = failures  # a checkpoint carries the run on
                if run >= c.nan_patience:
                    self._rollback(run)
                    failures, timed = 0, 0
                    sums, count = self._log_interval(names)
                    t_log = time.perf_counter()
                    if bar is not None:  # back to the checkpoint's step
                        bar.n = self.state.step
                        bar.refresh()
                    continue
                if (step % c.log_every == 0 or step == c.steps) and count:
                    now = time.perf_counter()
                    record = {
                        name: total / count for name, total in zip(names, term_sums, strict=True)
                    }
                    record.update(
                        dequant_bpd=float(self.config.data.n_bits),
                        lr=self.learning_rate(step - 1),
                        images_per_s=timed * c.batch_size / max(now - t_log, 1e-9),
                        epoch=self.state.epoch,
                    )
                    self.log.write("train", step, **record)
                    if bar is not None:
                        bar.set_postfix(bpd=f"{record['loss_bpd']:.3f}", lr=f"{record['lr']:.1e}")
                    sums.zero_()
                    count, timed, t_log = 0, 0, now
                self.state.log_sums = term_sums if count else []
                self.state.log_count = count
                self.state.elapsed_s = elapsed0 + time.perf_counter() - t_start
                if c.eval_every and step % c.eval_every == 0 and step < c.steps:
                    self._evaluate_and_log(final=False)
                if c.sample_every and step % c.sample_every == 0 and step < c.steps:
                    self.save_samples(self.out_dir / "samples" / f"step-{step:07d}.png")
                if step % c.checkpoint_every == 0 and step < c.steps:
                    self.save_checkpoint("last")
        finally:
            if bar is not None:
                bar.close()
        # `last` first: an evaluation or a sample grid that fails must not lose the training.
        checkpoint = self.save_checkpoint("last")
        result = self._evaluate_and_log(final=True)
        grid = self.save_samples(self.out_dir / "samples" / f"step-{self.state.step:07d}.png")
        self.log.close()
        return {
            "step": self.state.step,
            "test_bpd": result.bpd,
            "test_bpd_sem": result.sem,
            "evaluation": result,
            "samples": grid,
            "checkpoint": checkpoint,
            "elapsed_s": self.state.elapsed_s,
        }

    def _log_interval(self, names: list[str]) -> tuple[Tensor, int]:
        """The sums of the logged terms and the count of the interval in the state (on the
        device), or an empty interval."""
        sums = torch.zeros(len(names), device=self.device, dtype=torch.float64)
        if self.state.log_count and len(self.state.log_sums) == len(names):
            sums += torch.tensor(self.state.log_sums, dtype=torch.float64).to(self.device)
            return sums, self.state.log_count
        return sums, 0

    def _rollback(self, failures: int) -> None:
        c = self.config.train
        if self.state.rollbacks >= c.max_rollbacks:
            message = (
                f"training diverged: {failures} non-finite steps in a row at step "
                f"{self.state.step} after {self.state.rollbacks} rollbacks; lower optim.lr, set "
                "optim.grad_clip, or raise train.max_rollbacks"
            )
            self.log.event(self.state.step, message, stopped=True)
            raise TrainingError(message)
        lr_scale = self.state.lr_scale * c.rollback_lr_factor
        rollbacks, rejected = self.state.rollbacks + 1, self.state.rejected
        failed_at = self.state.step
        last = self.checkpoint_dir / "last.json"
        notes = self._restore(last, check_config=False)
        self.state.lr_scale, self.state.rollbacks, self.state.rejected = (
            lr_scale,
            rollbacks,
            rejected,
        )
        self.state.rejected_in_a_row = 0  # counted afresh from the checkpoint
        for note in notes:
            self.log.event(self.state.step, note)
        self.log.event(
            self.state.step,
            f"rolled back from step {failed_at} to the checkpoint at step {self.state.step} after "
            f"{failures} non-finite steps; learning rate scaled by {c.rollback_lr_factor} "
            f"to {self.learning_rate(self.state.step):.3g}",
            rollback=True,
            lr_scale=lr_scale,
        )

    # -- evaluation and samples ----------------------------------------------------------
    @property
    def eval_model(self) -> FlowModel:
        """The Polyak/EMA model when the run keeps one, otherwise the trained model."""
        return self.ema if self.ema is not None else self.model

    def evaluate(self, max_images: int | None = None, draws: int | None = None) -> EvalResult:
        """Test bits/dim of :attr:`eval_model` (see :func:`evaluate_bits_per_dim`).

        It runs in the training precision (with ``bf16``, the coupling networks in bfloat16
        and everything else in float32). Under ``torchrun`` every process must call it: the
        test batches are dealt out among them and the results gathered, every process using
        rank 0's batch-norm statistics (those that its checkpoints hold).
        """
        c = self.config.train
        self._share_running_stats()
        return evaluate_bits_per_dim(
            self.eval_model,
            self.test_images,
            self.test_labels if self.model.conditional else None,
            n_bits=self.config.data.n_bits,
            batch_size=c.eval_batch_size,
            max_images=max_images if max_images is not None else c.max_eval_images,
            draws=draws if draws is not None else c.eval_draws,
            seed=self.config.seed,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )

    def _evaluate_and_log(self, final: bool) -> EvalResult:
        result = self.evaluate()
        record = dataclasses.asdict(result)
        record["test_bpd"], record["test_bpd_sem"] = record.pop("bpd"), record.pop("sem")
        self.log.write("eval", self.state.step, ema=self.ema is not None, final=final, **record)
        if self.config.train.progress and self.ctx.is_main and not final:
            # One line per evaluation, readable in a log file where no progress bar is drawn.
            line = f"step {self.state.step}: test bits/dim {result.bpd:.3f} +- {result.sem:.3f}"
            bar = getattr(self, "_bar", None)
            if bar is not None and not bar.disable:
                bar.write(line, file=sys.stderr)
            else:
                print(line, file=sys.stderr)
        if not math.isfinite(result.bpd):
            self.log.event(
                self.state.step,
                f"test bits/dim is {result.bpd} at step {self.state.step}: not finite, so "
                "never the best checkpoint",
                nonfinite_eval=True,
            )
        elif self.config.train.keep_best and (
            self.state.best_bpd is None or result.bpd < self.state.best_bpd
        ):
            self.state.best_bpd = result.bpd
            self.save_checkpoint("best")
        return result

    @torch.no_grad()
    def save_samples(self, path: str | os.PathLike[str]) -> Path:
        """A grid of samples, one row per ``train.sample_temperatures`` entry (by rank 0)."""
        c = self.config.train
        if self.ctx.is_main:
            grid = sample_grid(
                self.eval_model,
                c.sample_temperatures,
                c.samples_per_row,
                self.config.data.n_bits,
                seed=self.config.seed,
            )
            save_png(path, grid)
        barrier()
        return Path(path)

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self, name: str = "last") -> Path:
        """Write ``checkpoints/NAME.json`` and its files (atomically); returns the manifest.

        Under ``torchrun`` every process calls it; rank 0 writes (the processes hold the same
        weights, optimizer state and data position) and the others wait for it.
        """
        path = self.checkpoint_dir / f"{name}.json"
        self._share_running_stats()
        if self.ctx.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "rng": _rng_state(self.generator),
            }
            path = write_checkpoint(
                self.checkpoint_dir / name,
                self.model,
                ema=self.ema,
                train_config=self.config.to_dict(),
                train_state=dataclasses.asdict(self.state),
                state=state,
                tag=f"{self.state.step:08d}",
            )
        barrier()
        return path

    def _share_running_stats(self) -> None:
        """Give every process rank 0's batch-norm statistics, the model's and the EMA's.

        Each process updates them with its own share of the batch, and DistributedDataParallel
        hands rank 0's to the others only at the next forward pass: without this, the
        processes would evaluate statistics that no checkpoint holds (rank 0 writes its own).
        """
        if self.ctx.distributed:
            ema_stats = _running_stats(self.ema) if self.ema is not None else []
            broadcast_from_main([*self._running_stats, *ema_stats])

    def _restore(self, path: Path, check_config: bool) -> list[str]:
        """Load the checkpoint ``path`` into the trainer; returns notes for the log.

        With ``check_config`` (a resume) it first refuses a checkpoint of another model,
        dataset or optimizer, and notes the changed fields that make the resume inexact.
        The EMA weights follow ``optim.ema_decay``, whatever the checkpoint holds.
        """
        checkpoint = read_checkpoint(path, map_location=self.device, with_state=True)
        notes = []
        if check_config:
            notes += self._compare_config(checkpoint.manifest.get("train_config") or {}, path)
        load_weights(self.model, checkpoint.weights, path)
        ema_decay = self.config.optim.ema_decay
        if ema_decay is None:
            if checkpoint.ema is not None:
                notes.append(
                    "optim.ema_decay is null: the checkpoint's EMA weights are dropped; "
                    "evaluation and samples use the trained weights"
                )
            self.ema = None
        else:
            if self.ema is None:
                self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
            if checkpoint.ema is None:
                notes.append(
                    f"optim.ema_decay={ema_decay}: the checkpoint has no EMA weights; the "
                    "average starts from the restored weights"
                )
            ema_weights = checkpoint.ema if checkpoint.ema is not None else checkpoint.weights
            load_weights(self.ema, ema_weights, path)
        assert checkpoint.state is not None
        # load_state_dict puts back the saved groups' hyperparameters too; the config's win
        # (lr is set at every step anyway).
        wanted = [{k: group[k] for k in _GROUP_SETTINGS} for group in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(checkpoint.state["optimizer"])
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"cannot restore the optimizer from {path}: {exc}") from None
        changes: dict[str, str] = {}
        for group, settings in zip(self.optimizer.param_groups, wanted, strict=True):
            for key, value in settings.items():
                saved = tuple(group[key]) if key == "betas" else group[key]
                if saved != value:
                    changes.setdefault(key, f"{saved!r} in the checkpoint, {value!r} now")
            group.update(settings)
        notes += [
            f"resuming with optim.{key}: {change}: the optimizer uses the new value"
            for key, change in changes.items()
        ]
        _set_rng_state(checkpoint.state["rng"], self.generator)
        # `best` may have improved since `path` was written: by this run before a rollback,
        # or by the final evaluation of a finished run, which follows its final `last`.
        best = _lowest(self.state.best_bpd, _saved_best_bpd(self.checkpoint_dir / "best.json"))
        self.state = TrainState(**checkpoint.manifest["train_state"])
        self.state.best_bpd = _lowest(best, self.state.best_bpd)
        self._order = None
        return notes

    def _compare_config(self, saved: dict[str, Any], path: Path) -> list[str]:
        """Refuse to resume another model, dataset or optimizer; note changes to the batches.

        A changed ``optim.name`` would load one optimizer class's state into another (which
        fails only at the first step). A changed batch size, dtype or training-set size
        still trains, but no longer reproduces the uninterrupted run.
        """
        mine = self.config.to_dict()

        def differences(fields: list[str]) -> list[str]:
            found = []
            for field in fields:
                section, key = field.split(".")
                old, new = (saved.get(section) or {}).get(key), mine[section].get(key)
                if old != new:
                    found.append(f"{field}: {old!r} in the checkpoint, {new!r} now")
            return found

        required = [f"model.{key}" for key in mine["model"]]
        required += ["data.name", "data.image_size", "data.n_bits", "optim.name"]
        refused = differences(required)
        if refused:
            raise CheckpointError(f"cannot resume {path}: config differs ({refused[0]})")
        return [
            f"resuming with {change}: training continues, but not exactly as the "
            "uninterrupted run would"
            for change in differences(["train.batch_size", "train.dtype", "data.max_train_images"])
        ]


# -- evaluation and sampling (also used by the eval and sample commands) --------------------
@torch.no_grad()
def evaluate_bits_per_dim(
    model: FlowModel,
    images: Tensor,
    labels: Tensor | None = None,
    n_bits: int = 8,
    batch_size: int = 500,
    max_images: int | None = None,
    draws: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> EvalResult:
    """Bits/dim of uint8 ``images`` under ``model``: mean and standard error over images.

    Each image's bits/dim is averaged over ``draws`` dequantization draws; the standard
    error is ``std / sqrt(N)`` over images. The noise comes from its own generator seeded
    with ``seed``, so repeated evaluations are comparable and do not disturb training.
    For a class-conditional model ``labels`` give ``log p(x | y)``.

    With ``world_size`` > 1 (a running process group, every rank calling with the same
    arguments) batch ``k`` is evaluated by rank ``k % world_size`` and the per-image results
    are gathered. Every rank still draws the noise of every batch, so each image gets the
    same noise as in one process and the result equals the one-process figure.
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    ref = next(iter(model.parameters()))
    device, dtype = ref.device, ref.dtype
    n = len(images) if max_images is None else min(max_images, len(images))
    if tuple(images.shape[1:]) != model.image_shape:
        raise ValueError(
            f"the images are {tuple(images.shape[1:])} but the model expects {model.image_shape}"
        )
    dims = math.prod(model.image_shape)
    scale = 1.0 / (dims * math.log(2))
    generator = torch.Generator(device).manual_seed(seed + 1)
    was_training = model.training
    model.eval()
    # Per image, averaged over the draws: bits/dim, prior term, logdet term, correct labels.
    per_image = torch.zeros(n, 4, dtype=torch.float64, device=device)
    mine = torch.zeros(n, dtype=torch.bool, device=device)
    for _ in range(draws):
        for k, start in enumerate(range(0, n, batch_size)):
            batch = images[start : min(start + batch_size, n)].to(device)
            x = dequantize(batch, n_bits, dtype=dtype, generator=generator)
            if k % world_size != rank:
                continue  # another rank's batch; its noise was drawn to keep the stream
            rows = slice(start, start + len(batch))
            y = labels[rows].to(device) if labels is not None else None
            out = model.evaluate(x, y)
            prior = -out.prior_log_prob.double() * scale
            logdet = -out.logdet.double() * scale
            per_image[rows, 0] += (prior + logdet + n_bits) / draws
            per_image[rows, 1] += prior / draws
            per_image[rows, 2] += logdet / draws
            if out.class_logits is not None and y is not None:
                per_image[rows, 3] += (out.class_logits.argmax(1) == y).double() / draws
            mine[rows] = True
    model.train(was_training)
    if world_size > 1:
        index = mine.nonzero().squeeze(1)
        gathered = gather_cat(torch.cat([index.double().unsqueeze(1), per_image[index]], 1))
        per_image = torch.zeros_like(per_image)
        per_image[gathered[:, 0].long()] = gathered[:, 1:]
    bpd = per_image[:, 0].mean().item()
    sem = (per_image[:, 0].std().item() / math.sqrt(n)) if n > 1 else float("nan")
    conditional = labels is not None and model.conditional
    return EvalResult(
        bpd=bpd,
        sem=sem,
        prior_bpd=per_image[:, 1].mean().item(),
        logdet_bpd=per_image[:, 2].mean().item(),
        n_images=n,
        draws=draws,
        accuracy=per_image[:, 3].mean().item() if conditional else None,
    )


@torch.no_grad()
def sample_grid(
    model: FlowModel,
    temperatures: tuple[float, ...] | list[float],
    per_row: int = 8,
    n_bits: int = 8,
    seed: int = 0,
    min_size: int = 32,
) -> Tensor:
    """A uint8 grid ``(C, H', W')``: one row per temperature, the same latents in each column.

    As in the Glow paper's temperature figures, row ``T`` decodes ``T * eps`` for a fixed
    ``eps``, so the rows show the same samples at increasing temperature. Images smaller
    than ``min_size`` pixels are enlarged (nearest neighbour) so the grid is viewable.
    """
    ref = next(iter(model.parameters()))
    generator = torch.Generator(ref.device).manual_seed(seed + 2)
    was_training = model.training
    model.eval()
    eps = model.sample_latents(per_row, 1.0, generator=generator)
    y = None
    if model.conditional:
        assert model.num_classes is not None
        y = torch.arange(per_row, device=ref.device) % model.num_classes
    rows = [quantize(model.decode([t * e for e in eps], y), n_bits) for t in temperatures]
    model.train(was_training)
    return make_grid(upscale(torch.cat(rows), min_size), nrow=per_row)


def upscale(images: Tensor, min_size: int = 32) -> Tensor:
    """Enlarge small uint8 images by a whole factor (nearest neighbour) to ``min_size`` or more."""
    factor = max(1, math.ceil(min_size / images.shape[-1]))
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


# -- helpers --------------------------------------------------------------------------------
def _check_speed_options(c: LoopConfig, device: torch.device) -> None:
    """Reject fast paths that ``device`` or this torch cannot run (before anything is written;
    the config checks what it alone can)."""
    if c.precision == "tf32" and device.type != "cuda":
        raise ValueError(
            f"train.precision=tf32 needs a CUDA device, but this run is on {device.type}; "
            "use train.precision=fp32 (or bf16) there"
        )
    if c.compile:
        import torch._dynamo  # imported here: only compiled runs need it

        try:
            torch._dynamo.lookup_backend(c.compile_backend)
        except torch._dynamo.exc.InvalidBackend:
            names = ", ".join(sorted({*torch._dynamo.list_backends(), "aot_eager", "eager"}))
            raise ValueError(
                f"train.compile_backend={c.compile_backend!r} is not a torch.compile backend; "
                f"choose one of {names} (all: torch._dynamo.list_backends(exclude_tags=()))"
            ) from None


def _check_memory_mode(model: FlowModel, mode: str) -> None:
    """Reject a memory mode that cannot train ``model`` (before anything is written)."""
    if mode == "invertible" and any(
        isinstance(module, BatchNormFlow) for level in model.levels for module in level.modules()
    ):
        raise ValueError(
            "train.memory_mode=invertible cannot train a model with BatchNormFlow layers (in "
            "training mode they normalise with batch statistics, so their input cannot be "
            "rebuilt from their output); use train.memory_mode=checkpoint, or "
            "model.batch_norm=false"
        )


def _allow_recompiles(limit: int) -> None:
    """Let torch.compile keep ``limit`` versions of each layer's code (process-wide).

    A layer class is compiled once per level (its parameters have other shapes), with and
    without gradients, in training and evaluation mode, and again when the batch size first
    changes: up to 8 versions per level, where dynamo's default stops at 8 in all and falls
    back to eager code for the rest.
    """
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), limit))


def _process_context(device: torch.device) -> DistributedContext:
    """This process's place: under torchrun, join the process group (gloo on the CPU)."""
    ctx = setup_distributed(device=device.type)
    if not ctx.distributed:  # one process: the device as resolved (cuda:1 stays cuda:1)
        return DistributedContext(0, 1, 0, device)
    return ctx


class _SilentLog:
    """The log of the processes other than rank 0: it writes nothing."""

    def write(self, kind: str, step: int, **fields: Any) -> dict[str, Any]:
        return {"kind": kind, "step": step, **fields}

    def event(self, step: int, message: str, **fields: Any) -> dict[str, Any]:
        return self.write("event", step, message=message, **fields)

    def close(self) -> None:
        pass


def _running_stats(model: nn.Module) -> list[Tensor]:
    """The buffers that a training-mode forward pass updates: batch normalization's."""
    return [
        buffer
        for module in model.modules()
        if isinstance(module, BatchNormFlow | _BatchNorm)
        for buffer in module.buffers(recurse=False)
    ]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global generator other code may use
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
        "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
        "python": list(random.getstate()),
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        # Saved with more GPUs than this process sees: the visible ones get their states
        # (without CUDA the saved states are not needed at all).
        visible = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in visible])
    try:
        generator.set_state(state["generator"].cpu())
    except RuntimeError:  # saved on another kind of device: continue with a fresh stream
        generator.manual_seed(int(torch.randint(2**62, (1,)).item()))
    name, keys, pos, has_gauss, cached = state["numpy"]
    numpy_state = (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(numpy_state)  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _already_a_run(folder: Path) -> ValueError:
    return ValueError(
        f"{folder} already holds a run; resume it (--resume) or choose another folder"
    )


def _claim_run_folder(folder: Path) -> IO[str] | None:
    """An exclusive lock on ``folder/.lock``, held until the returned file is closed.

    Raises ValueError when another run holds it. Where there are no advisory locks (no
    ``fcntl``, or a filesystem without them) the folder is not claimed.
    """
    try:
        import fcntl
    except ImportError:
        return None
    handle = open(folder / ".lock", "a")  # held open for the run's life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(
            f"{folder} is in use by another run (a Trainer, in this process or another, holds "
            f"{folder / '.lock'}); wait for it to end or choose another folder"
        ) from None
    except OSError:
        handle.close()
        return None
    return handle


def _check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and check that files can be written in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot write the run folder {folder}: {reason}") from None


def _saved_best_bpd(manifest: Path) -> float | None:
    """The best test bits/dim that a checkpoint manifest records (None when unreadable)."""
    try:
        value = json.loads(manifest.read_text())["train_state"]["best_bpd"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) else None


def _lowest(*values: float | None) -> float | None:
    """The lowest finite value, or None when there is none."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return min(finite) if finite else None


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # optional dependency
        return None
    # disable=None: no bar when stderr is not a terminal (a log file, CI), where its
    # carriage-return updates would pile up; log.jsonl has every figure anyway.
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None)


def _to_device_unblocked(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` on ``device``; a host tensor reaches a GPU by a pinned, non-blocking copy
    (from pageable memory the copy would wait for the GPU to finish its queue)."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _use_channels_last(setting: bool | None, model: nn.Module, device: torch.device) -> bool:
    """``train.channels_last``; null means on the CPU, for models with convolutions.

    On the CPU, oneDNN's convolutions run faster on channels-last tensors (the throughput
    table in docs/benchmarks.md). On CUDA the default stays off until it has been measured.
    """
    if setting is not None:
        return setting
    return device.type == "cpu" and any(p.dim() == 4 for p in model.parameters())
