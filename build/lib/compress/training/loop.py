"""The one training loop: baseline training and fine-tuning (optionally distilling from a teacher).

Determinism: every RNG is seeded from ``seed`` (``seed + rank`` for per-rank randomness such as dropout), and
the data order of epoch ``e`` depends only on ``(seed, e)``: a :class:`DistributedSampler` gets ``set_epoch``
and a loader ``generator`` is re-seeded at each epoch start. Resuming restores the RNG state captured at the
start of the interrupted epoch, replays (skips) the batches already consumed, then restores the RNG state at
the checkpoint, so an interrupted + resumed run ends with bit-identical weights on the same hardware.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from ..config import to_plain
from ..env import seed_everything
from ..errors import CompressError
from . import distributed as D
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Checkpoint, DistillConfig, Teacher, TrainConfig
from .distill import FeatureDistiller, distillation_loss
from .evaluate import autocast, top1_accuracy
from .history import TrainHistory
from .optim import build_optimizer, build_scheduler
from .signals import StopRequest

__all__ = ["fit"]

# Config fields that do not change the trajectory; a resumed run may differ in them.
_RESUME_FREE = ("checkpoint_every", "log_every")


def _epoch_seed(seed: int, epoch: int) -> int:
    # Mix so that (seed, epoch) pairs do not collide as seed + epoch would.
    return (seed * 1_000_003 + epoch) % 2**63


class _Trainer:
    """State of one :func:`fit` call; methods are the phases of the loop."""

    def __init__(self, model: nn.Module, loader: DataLoader, config: TrainConfig, device: torch.device,
                 teacher: nn.Module | None, distill: DistillConfig | None, seed: int) -> None:
        self.model, self.config, self.device, self.seed = model, config, device, seed
        self.loader = D.distributed_loader(loader, seed=seed)
        self.per_epoch = len(self.loader)
        if self.per_epoch == 0:
            raise CompressError("training data: the train loader yields no batches (expected at least one)")
        self.total = config.steps if config.steps is not None else math.ceil(config.epochs * self.per_epoch)
        self.cuda = device.type == "cuda"
        self.channels_last = config.channels_last and self.cuda
        self.teacher = teacher
        self.distill = distill if teacher is not None else None
        self.features: FeatureDistiller | None = None
        self.world, self.rank = D.world_size(), D.rank()
        self.history = TrainHistory()
        self.step = self.epoch = self.batch = 0
        self.epoch_sums = [0.0, 0.0, 0.0]  # loss * count, correct, count over the current epoch (all ranks)
        self.bad_epochs = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.epoch_rng: dict[str, Any] | None = None
        self.resume_rng: dict[str, Any] | None = None
        self.started, self.prior_seconds = time.perf_counter(), 0.0
        self.checkpoint_path: Path | None = None
        self.saved_step: int | None = None  # step of the last checkpoint written (the last good state)

    def elapsed(self) -> float:
        """Training seconds so far, including the sessions before a resume."""
        return self.prior_seconds + time.perf_counter() - self.started

    # ----------------------------------------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Seed, prepare models, feature adapters, optimizer and schedule, then wrap in DDP."""
        seed_everything(self.seed)
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.teacher is not None:
            self.teacher.to(self.device)
            self.teacher_was_training = self.teacher.training
            self.teacher.eval()
        if self.distill is not None and self.distill.features:
            self._setup_features()
        seed_everything(self.seed + self.rank)  # per-rank randomness (dropout) must differ between ranks
        params = list(self.model.parameters()) + (list(self.features.adapters.parameters()) if self.features else [])
        self.optimizer = build_optimizer(params, self.config)
        self.scheduler = build_scheduler(self.optimizer, self.config, total_steps=self.total,
                                         steps_per_epoch=self.per_epoch)

    def _setup_features(self) -> None:
        self.features = FeatureDistiller(self.model, self.teacher, self.distill.features)
        images, _ = next(iter(self.loader))
        with torch.no_grad(), autocast(self.device, self.config.amp):
            was_training = self.model.training
            self.model.eval()
            self.model(self._images(images))
            self.model.train(was_training)
            self.teacher(self._images(images))
        self.features.setup(self.device)
        self.features.clear()
        D.broadcast_module(self.features.adapters)

    def _images(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    # ------------------------------------------------------------------------------------------- checkpoint
    def _trajectory_config(self) -> dict[str, Any]:
        plain = to_plain(self.config)
        return {k: v for k, v in plain.items() if k not in _RESUME_FREE} | {
            "distill": to_plain(self.distill), "seed": self.seed, "world_size": self.world,
            "total_steps": self.total, "steps_per_epoch": self.per_epoch}

    def save(self, path: Path | None, *, finished: bool = False) -> None:
        """Write a checkpoint (rank 0) holding everything needed to continue bit-identically.

        Raises :class:`CompressError` instead of writing when a weight is NaN/Inf, so the file on disk stays
        the last good state.
        """
        bad = self._nonfinite_tensor()
        if bad is not None:
            raise self._diverged(None, parameter=bad)
        if path is None:
            return
        self.history.seconds = self.elapsed()
        rngs = D.all_gather_object({"rng": rng_state(self.loader.generator), "epoch_rng": self.epoch_rng})
        if self.rank == 0:
            save_checkpoint(path, {
                "model": D.unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "adapters": self.features.adapters.state_dict() if self.features else {},
                "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch},
                "epoch_sums": list(self.epoch_sums), "bad_epochs": self.bad_epochs, "best_state": self.best_state,
                "rngs": rngs, "history": self.history.to_dict(), "config": self._trajectory_config(),
                "finished": finished})
        self.saved_step = self.step
        D.barrier()

    def load(self, path: Path) -> bool:
        """Restore a checkpoint; returns whether it marks a finished run."""
        ckpt = load_checkpoint(path)
        mine, theirs = self._trajectory_config(), ckpt["config"]
        diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if diff:
            raise CompressError(f"checkpoint {path}: written with different training settings ({diff[0]}: "
                                f"{theirs.get(diff[0])!r} there, {mine.get(diff[0])!r} now); expected the same "
                                "settings, or delete the checkpoint / set resume to false")
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.features:
                self.features.adapters.load_state_dict(ckpt["adapters"])
        except RuntimeError as err:
            raise CompressError(f"checkpoint {path}: does not fit the model ({str(err).splitlines()[0]}); "
                                "expected a checkpoint of the same architecture") from err
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        pos = ckpt["position"]
        self.step, self.epoch, self.batch = pos["step"], pos["epoch"], pos["batch"]
        self.epoch_sums, self.bad_epochs, self.best_state = ckpt["epoch_sums"], ckpt["bad_epochs"], ckpt["best_state"]
        self.history = TrainHistory.from_dict(ckpt["history"])
        self.history.resumed_from_step = self.step
        self.saved_step = self.step
        self.prior_seconds, self.started = self.history.seconds, time.perf_counter()
        rngs = ckpt["rngs"][self.rank]
        self.epoch_rng, self.resume_rng = rngs["epoch_rng"], rngs["rng"]
        return bool(ckpt["finished"])

    # ------------------------------------------------------------------------------------------------ steps
    def loss(self, logits: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Label loss, or distillation (+ feature) loss when a teacher is given. Shapes: logits ``(B, K)``."""
        if self.distill is None:
            return F.cross_entropy(logits.float(), labels, label_smoothing=self.config.label_smoothing)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        loss = distillation_loss(logits, teacher_logits, labels, alpha=self.distill.alpha,
                                 temperature=self.distill.temperature, label_smoothing=self.config.label_smoothing)
        if self.features is not None:
            loss = loss + self.distill.feature_weight * self.features.loss()
        return loss

    def train_step(self, ddp: nn.Module, images: torch.Tensor, labels: torch.Tensor, stop: bool) -> bool:
        """One optimizer step; returns whether any rank asked to stop. Raises on a non-finite loss."""
        images, labels = self._images(images), labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.config.amp):
            logits = ddp(images)
            classes = logits.shape[-1]
            # Out-of-range labels are counted, not trusted: cross-entropy would fail on one rank only (a hang
            # under DDP) or, on CUDA, with a device-side assert. Clamped labels keep every rank in step.
            invalid = ((labels < 0) | (labels >= classes)).sum().float()
            loss = self.loss(logits, labels.clamp(0, classes - 1), images)
        # One small all-reduce (and one host sync) per step: global loss/accuracy for the history, agreement on
        # divergence, bad labels and a stop request, before the step can corrupt the weights.
        stats = torch.stack([loss.detach().float(), (logits.argmax(1) == labels).sum().float(),
                             torch.tensor(float(labels.numel()), device=self.device),
                             torch.tensor(float(stop), device=self.device), invalid])
        loss_sum, correct, count, stops, bad_labels = D.all_reduce_sum(stats).tolist()
        if bad_labels:
            raise self._bad_labels(labels, classes, int(bad_labels))
        if not math.isfinite(loss_sum):
            raise self._diverged(loss_sum, images=images)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_adapter_grads()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.config.grad_clip)
        self.history.step_lr.append(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        mean_loss = loss_sum / self.world
        self.history.step_loss.append(mean_loss)
        self.epoch_sums = [self.epoch_sums[0] + mean_loss * count, self.epoch_sums[1] + correct,
                           self.epoch_sums[2] + count]
        self.step, self.batch = self.step + 1, self.batch + 1
        self.history.steps = self.step
        self.history.seconds = self.elapsed()
        return stops > 0

    def _sync_adapter_grads(self) -> None:
        # Adapters live outside the DDP wrapper, so average their gradients by hand.
        if self.features is None or self.world == 1:
            return
        for p in self.features.adapters.parameters():
            if p.grad is not None:
                D.all_reduce_sum(p.grad).div_(self.world)

    def _nonfinite_tensor(self) -> str | None:
        """Name of the first parameter or buffer (BN statistics) holding NaN/Inf; one host sync if all finite."""
        named = [(n, t) for n, t in D.unwrap(self.model).state_dict().items() if t.is_floating_point()]
        if not named:
            return None
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
        return None if bool(finite.all()) else named[int((~finite).nonzero()[0])][0]

    def _diverged(self, loss: float | None, *, parameter: str | None = None,
                  images: torch.Tensor | None = None) -> CompressError:
        """The error for a non-finite loss (``loss``) or non-finite weights (``parameter``)."""
        bad = parameter or self._nonfinite_tensor()
        if bad:
            where = f"{bad!r} holds non-finite values"
        elif images is not None and not bool(torch.isfinite(images).all()):
            where = "the batch's images hold NaN/Inf (check the data)"
        else:
            where = "all parameters are finite"
        if loss is not None:
            what = f"loss is {loss} at step {self.step + 1}"
        else:
            what = f"weights became non-finite after step {self.step}"
        if self.saved_step is not None:
            kept = f"the checkpoint {self.checkpoint_path} (step {self.saved_step}) is the last good state, kept"
        else:
            kept = "no checkpoint was written in this run"
        return CompressError(f"training diverged: {what} (epoch {self.epoch}); {where}; "
                             f"{kept}. Expected a finite loss: try a lower lr, warmup_epochs or grad_clip")

    def _bad_labels(self, labels: torch.Tensor, classes: int, count: int) -> CompressError:
        wrong = labels[(labels < 0) | (labels >= classes)]
        example = f" (e.g. {int(wrong[0])})" if wrong.numel() else ""
        return CompressError(f"training data: {count} labels at step {self.step + 1} are outside the model's "
                             f"{classes} outputs 0..{classes - 1}{example}; expected labels below {classes}: set "
                             "model.kwargs.num_classes to the data's number of classes, or fix the labels")

    # ----------------------------------------------------------------------------------------------- epochs
    def batches(self):
        """This epoch's remaining batches, in the order fixed by ``(seed, epoch)``; replays a resumed epoch."""
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(self.epoch)
        if self.loader.generator is not None:
            self.loader.generator.manual_seed(_epoch_seed(self.seed, self.epoch))
        if self.resume_rng is None:
            self.epoch_rng = rng_state()
        else:
            set_rng_state(self.epoch_rng)
        it = iter(self.loader) if self.batch < self.per_epoch else iter(())
        for _ in range(self.batch):
            next(it, None)  # replays the consumed batches (and any RNG their transforms draw)
        if self.resume_rng is not None:
            set_rng_state(self.resume_rng, self.loader.generator)
            self.resume_rng = None
        return it

    def end_epoch(self, val_loader: DataLoader | None) -> bool:
        """Record the epoch; evaluate on val; returns whether early stopping triggers."""
        D.broadcast_module(D.unwrap(self.model))  # BN running stats differ per rank; use rank 0's everywhere
        total_loss, correct, count = self.epoch_sums
        val = None
        if val_loader is not None:
            val = top1_accuracy(D.unwrap(self.model), val_loader, device=self.device, amp=self.config.amp,
                                channels_last=self.channels_last)
        self.history.epochs.append({"epoch": self.epoch, "steps": self.batch, "loss": total_loss / max(count, 1),
                                    "train_acc": correct / max(count, 1), "val_acc": val,
                                    "lr": self.history.step_lr[-1] if self.history.step_lr else None})
        self.epoch, self.batch, self.epoch_sums = self.epoch + 1, 0, [0.0, 0.0, 0.0]
        return self._early_stop(val)

    def _early_stop(self, val: float | None) -> bool:
        if val is None:
            return False
        h = self.history
        if h.best_val_acc is None or val > h.best_val_acc:
            h.best_val_acc, h.best_epoch, self.bad_epochs = val, self.epoch - 1, 0
            if self.config.early_stop_patience is not None:
                self.best_state = {k: v.detach().cpu().clone() for k, v in D.unwrap(self.model).state_dict().items()}
            return False
        self.bad_epochs += 1
        return self.config.early_stop_patience is not None and self.bad_epochs >= self.config.early_stop_patience

    def finish(self, stopped_early: bool) -> None:
        """Restore the best weights after early stopping."""
        if stopped_early and self.best_state is not None:
            D.unwrap(self.model).load_state_dict(self.best_state)
            self.history.stopped_early = True

    def close(self, was_training: bool) -> None:
        """Undo the temporary changes to the models (hooks, modes, memory format), also after errors."""
        if self.features is not None:
            self.features.close()
        if self.teacher is not None and hasattr(self, "teacher_was_training"):
            self.teacher.train(self.teacher_was_training)
        if self.channels_last:
            self.model.to(memory_format=torch.contiguous_format)
        self.model.train(was_training)


def _run(t: _Trainer, ddp: nn.Module, val_loader: DataLoader | None, checkpoint_path: Path | None,
         on_step: Callable[[int], None] | None, stop: StopRequest, bar: tqdm) -> bool:
    """Train until the step budget is spent or early stopping; returns whether it stopped early."""
    every = t.config.checkpoint_every
    while t.step < t.total:
        for images, labels in t.batches():
            stopping = t.train_step(ddp, images, labels, stop.requested)
            bar.update(1)
            if t.step % t.config.log_every == 0 or t.step == t.total:
                bar.set_postfix(loss=f"{t.history.step_loss[-1]:.4f}",
                                acc=f"{t.epoch_sums[1] / max(t.epoch_sums[2], 1):.3f}",
                                lr=f"{t.history.step_lr[-1]:.2e}", refresh=False)
            if stopping:
                t.save(checkpoint_path)
                raise KeyboardInterrupt(f"training stopped by a signal at step {t.step}; checkpoint: "
                                        f"{checkpoint_path}")
            if every and t.step % every == 0 and t.step < t.total:
                t.save(checkpoint_path)
            if on_step is not None:
                on_step(t.step)
            if t.step >= t.total:
                break
        if t.end_epoch(val_loader):
            return True
    return False


def fit(model: nn.Module, train_loader: DataLoader, *, val_loader: DataLoader | None = None,
        config: TrainConfig, device: torch.device | str, teacher: Teacher | None = None,
        checkpoint: Checkpoint | None = None, seed: int = 0, on_step: Callable[[int], None] | None = None,
        verbose: bool = True) -> TrainHistory:
    """Train ``model`` in place with SGD/AdamW, optionally distilling from a teacher.

    Args:
        model: maps images ``(B, C, H, W)`` to logits ``(B, K)``; trained in place, moved to ``device``
            (a DDP wrapper is unwrapped; under torchrun it is re-wrapped for the duration of the call).
        train_loader: yields ``(images float32 (B, C, H, W), labels int64 (B,))``. Under torchrun it is
            rebuilt with a :class:`DistributedSampler` and per-rank batch ``batch_size / world_size``.
        val_loader: evaluated (top-1) at the end of each epoch for the best epoch and early stopping.
        config: optimisation settings (validated here too).
        device: where to train.
        teacher: the frozen model distilled from and the settings (:class:`Teacher`); ``None`` trains on
            labels only.
        checkpoint: where to checkpoint and whether to resume (:class:`Checkpoint`); ``None``: no checkpoint.
        seed: seeds all RNGs and the data order.
        on_step: called with the step number after each optimizer step (progress hooks; tests inject faults).
        verbose: show a progress bar (rank 0 only).

    Returns:
        The :class:`TrainHistory`.

    Raises:
        CompressError: empty data, labels outside the model's outputs, non-finite loss or weights (names the
            step and a non-finite parameter; the checkpoint on disk stays the last good state), or a
            checkpoint that does not match the model or the settings.
        KeyboardInterrupt: after SIGINT/SIGTERM, once the checkpoint is written.
    """
    config.validate()
    distill = None
    if teacher is not None:
        distill = teacher.config
        distill.validate()
        teacher = D.unwrap(teacher.model)
    model, device = D.unwrap(model), torch.device(device)
    path = Path(checkpoint.path) if checkpoint is not None else None
    resume = checkpoint is not None and checkpoint.resume
    t = _Trainer(model, train_loader, config, device, teacher, distill, seed)
    t.checkpoint_path = path
    was_training = model.training
    bar = tqdm(total=t.total, desc="train", leave=False, disable=not verbose or t.rank != 0)
    try:
        t.setup()
        if resume and path is not None and path.exists() and t.load(path):
            return t.history  # the checkpoint holds a finished run: nothing left to do
        bar.update(t.step)
        model.train()
        ddp = D.wrap_ddp(model, device)
        with StopRequest() as stop:
            stopped_early = _run(t, ddp, val_loader, path, on_step, stop, bar)
        t.finish(stopped_early)
        t.save(path, finished=True)
    finally:
        bar.close()
        t.close(was_training)
    return t.history
