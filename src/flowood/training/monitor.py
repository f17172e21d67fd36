"""What a user watches while a flow trains: Lightning callbacks that log to every configured logger.

* :class:`TrainingMonitor`: the gradient norm every logged step; at every test pass, the test bits/dim of each
  scale's latents on a fixed batch, a grid of samples (every ``samples_every_n_epochs`` epochs, to TensorBoard),
  and, with an OOD set to monitor, that set's bits/dim and the likelihood's AUROC against the test set: the
  paper's failure as a curve over training.
* :class:`TimeLimitBar`: with a time limit, the progress bar counts minutes toward it instead of steps toward the
  end of an epoch the run will never reach.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

__all__ = ["TrainingMonitor", "TimeLimitBar"]


class TrainingMonitor(Callback):
    """Logs what shows how training goes (see the module docstring).

    Args:
        test_batch: a fixed batch of in-distribution test inputs (as the data set holds them).
        ood_batch: a fixed batch of the monitored OOD set in the model's shape, or None.
        ood_name: the OOD set's name (for the metric names).
        samples_every_n_epochs: epochs between sample grids (0: none).
        seed: seeds the dequantization noise and the samples, so curves are comparable across epochs.
    """

    def __init__(self, test_batch: Tensor, ood_batch: Tensor | None = None, ood_name: str = "ood",
                 samples_every_n_epochs: int = 1, seed: int = 0) -> None:
        self.test_batch = test_batch
        self.ood_batch = ood_batch
        self.ood_name = ood_name
        self.samples_every_n_epochs = samples_every_n_epochs
        self.seed = seed

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True)
            pl_module.log("grad_norm", norm, on_step=True, on_epoch=False, batch_size=1)

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        flow = pl_module.flow
        device = pl_module.device
        generator = torch.Generator().manual_seed(self.seed)
        x = self.test_batch.to(device)
        if flow.num_scales > 1:
            for i, bpd in enumerate(_scale_bits_per_dim(flow, x, generator)):
                pl_module.log(f"test_bpd_scale{i}", bpd, on_epoch=True, sync_dist=True, batch_size=len(x))
        if self.ood_batch is not None:
            self._log_ood(pl_module, flow, x, device)
        epoch = trainer.current_epoch
        if self.samples_every_n_epochs and flow.discrete and epoch % self.samples_every_n_epochs == 0:
            _log_samples(trainer, flow, self.seed, epoch)

    def _log_ood(self, pl_module: pl.LightningModule, flow: Any, x: Tensor, device: torch.device) -> None:
        from sklearn.metrics import roc_auc_score

        generator = torch.Generator(device=device).manual_seed(self.seed)
        test = flow.bits_per_dim(x, validate=False, generator=generator).float().cpu().numpy()
        ood = flow.bits_per_dim(self.ood_batch.to(device), validate=False, generator=generator).float().cpu().numpy()
        finite = np.isfinite(test).all() and np.isfinite(ood).all()
        auroc = roc_auc_score(np.r_[np.zeros(len(test)), np.ones(len(ood))], np.r_[test, ood]) if finite else np.nan
        pl_module.log(f"ood_bpd_{self.ood_name}", float(ood.mean()), on_epoch=True, batch_size=len(ood))
        pl_module.log(f"ood_auroc_{self.ood_name}", float(auroc), prog_bar=True, on_epoch=True, batch_size=len(ood))


def _scale_bits_per_dim(flow: Any, x: Tensor, generator: torch.Generator) -> list[float]:
    """Mean negative log-density of each scale's latents under the prior, in bits per latent dimension."""
    latents = flow.latents_by_scale(x, noise="uniform", generator=generator)
    out = []
    for z in latents:
        dims = z[0].numel()
        out.append(float((-flow.prior.log_prob(z.float()) / (dims * math.log(2.0))).mean()))
    return out


def _log_samples(trainer: pl.Trainer, flow: Any, seed: int, epoch: int) -> None:
    import torchvision

    tensorboard = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
    if tensorboard is None or not trainer.is_global_zero:
        return
    was_training = flow.training
    flow.eval()
    try:
        samples = flow.sample(16, temperature=0.75, generator=torch.Generator().manual_seed(seed + epoch))
    finally:
        flow.train(was_training)
    grid = torchvision.utils.make_grid(samples.float().cpu(), nrow=8, padding=2, pad_value=1.0)
    tensorboard.experiment.add_image("samples_t0.75", grid, global_step=trainer.global_step)


class TimeLimitBar(TQDMProgressBar):
    """Lightning's progress bar, counting minutes toward ``max_minutes`` (a time-limited run ends by time, so an
    epoch's step count and ETA would say nothing about when it stops)."""

    def __init__(self, max_minutes: float, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.max_minutes = max_minutes
        self._start: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = time.monotonic()

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        super().on_train_epoch_start(trainer)
        bar = self.train_progress_bar
        bar.reset(total=round(self.max_minutes * 60))
        bar.unit = "s"
        bar.set_description(f"training for {self.max_minutes:g} min")
        bar.bar_format = "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._start is None or (batch_idx + 1) % self.refresh_rate:
            return
        bar = self.train_progress_bar
        bar.n = min(time.monotonic() - self._start, bar.total)
        bar.set_postfix({"step": trainer.global_step, **self.get_metrics(trainer, pl_module)}, refresh=True)
