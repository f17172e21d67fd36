"""The cross-cutting behaviours of a training run, each a Lightning callback with one job.

* :class:`NonFiniteGuard`: steps whose loss or gradients are NaN/Inf, explode, or (with rollbacks) whose loss
  diverges, change nothing; they are skipped, or the run rolls back to a checked good state with a lower
  learning rate; the run stops after ``nan_tolerance`` such steps in a row.
* :class:`InvertibilityCheck`: ``|inverse(forward(x)) - x|`` on a fixed batch at every checkpoint.
* :class:`RandomState`: every random-number generator's state in checkpoints, restored on resume.
* :class:`TrainedBatches`: how far into its current pass over the data the run has trained, so a resumed run
  continues mid-epoch with the very next batch.
* :class:`RecordLogs`: the run folder's manifest names the files Lightning's loggers write.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback

from flowood.errors import FlowoodError
from flowood.outputs import OutputFolder
from flowood.runtime import active_core_share
from flowood.training.persistence import PassPosition

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "InvertibilityCheck", "RandomState", "TrainedBatches",
           "RecordLogs", "ShareCores", "RecomputeBatchNorm",
           "recompute_running_statistics"]

#: the BatchNorm layers whose running statistics :class:`RecomputeBatchNorm` recomputes
BATCHNORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


class NonFiniteLossError(FlowoodError, RuntimeError):
    """Training produced NaN/Inf (or exploding, or diverging) steps too many times in a row."""


def _agreed(flag: bool, device: torch.device) -> bool:
    """``flag`` on every process (all must agree, or DDP ranks would diverge); True only if true on all."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value.item() == 1.0


State = tuple[dict[str, Any], dict[str, Any], float | None]


class NonFiniteGuard(Callback):
    """Keeps NaN/Inf, exploding and diverging steps from changing the model.

    A step is bad when its loss is NaN/Inf, when ``|loss|`` exceeds ``explode_bpd`` bits/dim (an exploding
    log-determinant), when any gradient is NaN/Inf, or (with ``policy="rollback"`` and ``divergence_bpd > 0``)
    when the loss's running mean has risen ``divergence_bpd`` above its best. A bad step's gradients are
    dropped, so the optimizer leaves every weight as it was. With ``policy="rollback"`` the weights, ActNorm
    state and optimizer moments then return to the last *good* state and the learning rate is multiplied by
    ``lr_factor``. A snapshot becomes the good state only after ``rollback_every`` clean steps followed it (a
    state taken just before a divergence is often finite but already damaged); when rolling back to it keeps
    failing, the run returns to the state it started from. After ``tolerance`` bad steps in a row the run stops
    with :class:`NonFiniteLossError`. Decisions are the same on every DDP process.

    Args:
        policy: ``"skip"`` or ``"rollback"``.
        tolerance: consecutive bad steps before the run stops.
        lr_factor: learning-rate factor of each rollback.
        explode_bpd: bound on ``|loss|`` in bits/dim (0: no bound).
        rollback_every: steps between snapshots.
        divergence_bpd: rise of the loss's running mean above its best that counts as divergence (0: off).
        config_hint: the options to suggest in the final error, e.g. ``"`lr` (now 0.001)"``.

    Attributes:
        skipped: bad steps so far. rollbacks: rollbacks so far.
    """

    def __init__(self, policy: str = "skip", tolerance: int = 10, lr_factor: float = 0.5, explode_bpd: float = 1e4,
                 rollback_every: int = 50, divergence_bpd: float = 0.0, config_hint: str = "") -> None:
        self.policy, self.tolerance, self.lr_factor = policy, tolerance, lr_factor
        self.explode_bpd, self.rollback_every, self.divergence_bpd = explode_bpd, rollback_every, divergence_bpd
        self.config_hint = config_hint
        self.skipped = 0
        self.rollbacks = 0
        self.streak = 0
        self._bad_loss: str | None = None
        self._mean: float | None = None  # running mean of the training loss (bits/dim)
        self._best: float | None = None
        self._since_rollback = 0
        self._start: State | None = None
        self._good: State | None = None
        self._candidate: State | None = None  # good once rollback_every clean steps followed it
        self._clean_since_snapshot = False
        self._failed_rollbacks = 0  # rollbacks since the good state last moved forward

    # -- the checks ---------------------------------------------------------------------------------------------
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        value = loss.detach().float()
        if hasattr(pl_module, "bits_per_dim"):  # the thresholds are in bits/dim, the loss in nats per sample
            value = pl_module.bits_per_dim(value)
        self._bad_loss = None
        if not _agreed(bool(torch.isfinite(value).all()), value.device):
            self._bad_loss = "NaN/Inf loss"
            return
        if self.explode_bpd and not _agreed(bool(value.abs() <= self.explode_bpd), value.device):
            self._bad_loss = (f"exploding loss (an exploding log-determinant: |loss| above `explode_bpd` = "
                              f"{self.explode_bpd:g} bits/dim)")
            return
        self._bad_loss = self._divergence(float(value))

    def _divergence(self, loss: float) -> str | None:
        """With rollbacks: a running mean this far above its best means the run is diverging."""
        self._mean = loss if self._mean is None else 0.9 * self._mean + 0.1 * loss
        self._since_rollback += 1
        if self._best is None or self._mean < self._best:
            self._best = self._mean
        if (self.policy == "rollback" and self.divergence_bpd > 0 and self._since_rollback > self.rollback_every
                and self._mean > self._best + self.divergence_bpd):
            return (f"diverging loss (its running mean rose to {self._mean:.2f} bits/dim, more than "
                    f"`divergence_bpd` = {self.divergence_bpd:g} above its best {self._best:.2f})")
        return None

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        what = self._bad_loss
        if what is None and grads:
            # one L1 norm over all gradients (a few kernels, not one per tensor): non-finite if any gradient is
            norm = torch.nn.utils.get_total_norm(grads, norm_type=1.0, foreach=True)
            if not _agreed(bool(torch.isfinite(norm)), norm.device):
                what = "NaN/Inf gradient"
        if what is None:
            self.streak = 0
            return
        for p in pl_module.parameters():
            p.grad = None  # the optimizer then leaves every parameter as it is
        self._bad_step(trainer, pl_module, optimizer, what)

    def _bad_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer,
                  what: str) -> None:
        self.streak += 1
        self.skipped += 1
        self._clean_since_snapshot = False
        action = "skipped"
        if self.policy == "rollback" and self._good is not None:
            action = self._roll_back(pl_module, optimizer)
        pl_module.log("nonfinite_steps", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)
        pl_module.print(f"warning: {what} at step {trainer.global_step}; {action} "
                        f"({self.streak}/{self.tolerance} in a row)")
        if self.streak >= self.tolerance:
            raise NonFiniteLossError(
                f"training diverged: {self.streak} consecutive steps had a {what} (at step {trainer.global_step}). "
                f"Lower {self.config_hint or '`lr`'}, or use `nan_policy='rollback'`; {_restart_hint(trainer)}")

    # -- rollbacks ----------------------------------------------------------------------------------------------
    def _snapshot(self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> State | None:
        """Weights (ActNorm state included) and optimizer state, copied, if every value is finite; else None."""
        weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        optim_state = copy.deepcopy(optimizer.state_dict())
        tensors = list(weights.values()) + [v for s in optim_state["state"].values() for v in s.values()
                                            if isinstance(v, torch.Tensor)]
        floats = [t for t in tensors if torch.is_floating_point(t)]
        if floats and not bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
            return None
        return weights, optim_state, self._mean

    def _roll_back(self, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer) -> str:
        self._failed_rollbacks += 1
        use_start = self._failed_rollbacks > 2 and self._start is not None
        weights, optim_state, mean = self._start if use_start else self._good
        lrs = [group["lr"] for group in optimizer.param_groups]
        pl_module.load_state_dict(weights)
        optimizer.load_state_dict(copy.deepcopy(optim_state))
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr * self.lr_factor
        if use_start:
            self._good = self._start
        # the running mean and its best start again from the state returned to
        self._candidate, self._mean, self._best, self._since_rollback = None, mean, mean, 0
        self.rollbacks += 1
        where = "the state training started from" if use_start else "the last good state"
        return f"rolled back to {where}, learning rate now {optimizer.param_groups[0]['lr']:.3g}"

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.policy == "rollback":  # the initial weights, or a resumed checkpoint: the first good state
            self._start = self._good = self._snapshot(pl_module, trainer.optimizers[0])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.policy != "rollback" or self.streak or trainer.global_step % self.rollback_every:
            return
        if self._candidate is not None and self._clean_since_snapshot:
            self._good, self._failed_rollbacks = self._candidate, 0
        self._candidate = self._snapshot(pl_module, trainer.optimizers[0])
        self._clean_since_snapshot = True

    # -- checkpoints --------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        checkpoint["flowood_skipped_steps"] = self.skipped
        checkpoint["flowood_rollbacks"] = self.rollbacks

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.skipped = int(checkpoint.get("flowood_skipped_steps", 0))
        self.rollbacks = int(checkpoint.get("flowood_rollbacks", 0))


def _restart_hint(trainer: pl.Trainer) -> str:
    """Where to continue from: the last checkpoint if one was written, else a fresh start."""
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    last = Path(folder) / "last.ckpt" if folder else None
    if last is not None and last.is_file():
        return f"then resume from {last} (written at an earlier step)"
    return "no checkpoint was written before this, so start the run again"


class InvertibilityCheck(Callback):
    """Measures ``max |inverse(forward(x)) - x|`` on a fixed batch whenever a checkpoint is written, keeps it in
    the checkpoint, and warns above ``warn_above``: a model drifting towards non-invertibility shows early.

    Args:
        batch: the inputs, as the data set holds them (uint8 images or float vectors).
        warn_above: the error above which a warning is printed.

    Attributes:
        error: the last measured error (None before the first checkpoint).
    """

    def __init__(self, batch: torch.Tensor, warn_above: float = 1e-3) -> None:
        self.batch = batch
        self.warn_above = warn_above
        self.error: float | None = None

    @torch.no_grad()
    def measure(self, flow: Any) -> float:
        was_training = flow.training
        flow.eval()
        try:
            x = self.batch.to(next(flow.parameters()).device)
            xc = flow.dequantize(x, noise="center") if flow.discrete else x.to(torch.float32)
            z, _ = flow(xc)
            error = float((flow.inverse(z) - xc).abs().max())
        finally:
            flow.train(was_training)
        return error if math.isfinite(error) else float("inf")

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.error = self.measure(pl_module.flow)
        checkpoint["flowood_invertibility_error"] = self.error
        if self.error > self.warn_above:
            pl_module.print(f"warning: at step {trainer.global_step} inverse(forward(x)) differs from x by "
                            f"{self.error:.3g} on the check batch: the model is close to non-invertible")


class ShareCores(Callback):
    """Every ``every`` training steps on a CPU, re-divide the CPUs among the flowood processes running on the
    machine (:class:`flowood.runtime.CoreShare`): a training started later makes this one give up threads, and
    it takes them back when the other ends. Two trainings then share two cores instead of fighting over them."""

    def __init__(self, every: int = 25) -> None:
        self.every = every

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        share = active_core_share()
        if share is not None and trainer.global_step % self.every == 0 and pl_module.device.type == "cpu":
            share.rebalance()


class RandomState(Callback):
    """Saves the torch, CUDA, numpy and Python random states in every checkpoint and restores them when a run
    resumes, as the last thing before training starts (so nothing in between draws from them): a resumed run
    then draws exactly the numbers (dequantization noise, augmentation) the uninterrupted one would have."""

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only, so the checkpoint loads with torch.load(weights_only=True)
        checkpoint["flowood_rng"] = {"torch": torch.get_rng_state(),
                                     "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                               "has_gauss": int(has_gauss), "gauss": float(gauss)},
                                     "python": list(random.getstate()),
                                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._restored = checkpoint.get("flowood_rng")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored is None:
            return
        state, self._restored = self._restored, None
        torch.set_rng_state(state["torch"])
        if torch.cuda.is_available() and state.get("cuda") is not None:
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                             float(n["gauss"])))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))


class TrainedBatches(Callback):
    """Counts the batches trained on (bad steps included) into a :class:`PassPosition`."""

    def __init__(self, position: PassPosition) -> None:
        self.position = position

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.position.count()


class RecordLogs(Callback):
    """Names the files Lightning's loggers write under ``logs/`` in the run folder's manifest, so that
    ``overwrite`` can remove them later (checkpoints are named by the checkpoint IO itself)."""

    def __init__(self, folder: OutputFolder) -> None:
        self.folder = folder

    def _record(self, *args: Any) -> None:
        self.folder.record_tree("logs")

    on_train_start = on_fit_end = on_validation_end = _record

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self._record()


class RecomputeBatchNorm(Callback):
    """At the end of training, replace every BatchNorm's running statistics with their average over ``batches``
    training batches at the final weights.

    Evaluation normalises with the running statistics, an exponential average over batches seen while the weights
    were still changing; after a short or unstable training they can be far from the statistics the final weights
    produce, and the evaluated density is then not the trained one. Negative training shows it most: its batches
    hold in- and out-of-distribution samples together, and with stale statistics a flow that separates the two in
    training may not at evaluation (``docs/results/negative_training.md``). The recomputed statistics are a
    cumulative average over batches built as the training steps build them (``batch_size`` in-distribution samples,
    plus as many OOD samples with negative training), without augmentation, drawn with their own generator so the
    run's random state is untouched; the same technique as SWA's ``torch.optim.swa_utils.update_bn``.

    Args:
        batches: training batches to average over.
        train: the training inputs. ood: the OOD inputs of negative training, or None.
        batch_size: in-distribution samples per batch. seed: seeds the batches and the dequantization noise.
    """

    def __init__(self, batches: int, train: torch.Tensor, ood: torch.Tensor | None, batch_size: int,
                 seed: int) -> None:
        self.batches, self.train, self.ood, self.batch_size, self.seed = batches, train, ood, batch_size, seed

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.batches < 1:
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 17)

        def run_batches() -> None:
            for _ in range(self.batches):
                x = self.train[torch.randint(0, len(self.train), (self.batch_size,), generator=generator)]
                if self.ood is not None:
                    picked = torch.randint(0, len(self.ood), (self.batch_size,), generator=generator)
                    x = torch.cat((x, self.ood[picked].to(x.dtype)))
                pl_module.flow.log_prob(x.to(pl_module.device), generator=_device_generator(generator, pl_module),
                                        validate=False)

        recompute_running_statistics(pl_module, run_batches)


def recompute_running_statistics(module: torch.nn.Module, run_batches: Callable[[], Any]) -> None:
    """Reset the running statistics of every BatchNorm in ``module`` and average them, cumulatively, over the
    batches ``run_batches`` passes through it (in training mode, without gradients); BatchNorm's momentum and the
    module's mode are restored afterwards. Nothing happens without BatchNorm layers."""
    layers = [m for m in module.modules() if isinstance(m, BATCHNORMS)]
    if not layers:
        return
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # cumulative average
    was_training = module.training
    module.train()
    with torch.no_grad():
        run_batches()
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    module.train(was_training)


def _device_generator(generator: torch.Generator, module: pl.LightningModule) -> torch.Generator:
    """A generator on the module's device, seeded from ``generator`` (dequantization noise is drawn there)."""
    if module.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.Generator(device=module.device).manual_seed(seed)
