"""The Lightning module and data module that train a flow by maximum likelihood."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.strategies import ParallelStrategy
from torch.utils.data import DataLoader

from flowood import __version__
from flowood.data import ArrayDataset, adapt_images, load_dataset
from flowood.errors import DataError
from flowood.flows import build_flow
from flowood.flows.original import original_loglik_offset
from flowood.training.callbacks import NonFiniteLossError
from flowood.training.config import TrainConfig
from flowood.training.optim import make_optimizer, weight_decay_groups
from flowood.training.persistence import EpochPermutationSampler, PassPosition, ResumableDataLoader

__all__ = ["FlowModule", "FlowDataModule", "NonFiniteLossError", "negative_training_loss"]


def negative_training_loss(loglik_in: torch.Tensor, loglik_ood: torch.Tensor, negative_val: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's Appendix B objective, in nats per image.

    ``0.5 * (mean NLL of the in-distribution batch + mean log-likelihood of the OOD samples whose
    log-likelihood is still above negative_val)``, or the in-distribution NLL alone when no OOD sample
    is above it (as the original code does).

    Returns:
        ``(loss, share of OOD samples above negative_val)``.
    """
    nll_in = -loglik_in.mean()
    above = loglik_ood > negative_val
    if bool(above.any()):
        return 0.5 * (nll_in + loglik_ood[above].mean()), above.float().mean()
    return nll_in, above.float().mean()


class FlowDataModule(pl.LightningDataModule):
    """Train and test splits of a registered data set, held in memory.

    Args:
        config: the training configuration (dataset, data_root, batch_size, sample limits, ...).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.config = config
        self.train_set: ArrayDataset | None = None
        self.test_set: ArrayDataset | None = None
        self.ood_set: torch.Tensor | None = None
        self.position = PassPosition()  # batches of the current pass trained on, saved for exact resume

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        c = self.config
        train = load_dataset(c.dataset, "train", c.data_root)
        test = load_dataset(c.dataset, "test", c.data_root)
        for ds in (train, test):
            if len(ds) == 0:
                raise DataError(f"{ds.name}:{ds.split} is empty; check the data set's files")
        self.train_set = train.take(c.max_train_samples, seed=c.seed).check_values(training=True)
        self.test_set = test.take(c.max_test_samples, seed=c.seed).check_values()
        if len(self.train_set) < c.batch_size:
            raise DataError(f"{train.name}:train has {len(self.train_set)} samples, fewer than batch_size "
                             f"{c.batch_size}, so not one full batch could be trained on; lower `batch_size`")
        if c.ood_dataset:
            ood = load_dataset(c.ood_dataset, "train", c.data_root, shape=train.sample_shape)
            if ood.is_image and train.is_image:
                self.ood_set = adapt_images(ood.data, train.sample_shape)
            elif ood.sample_shape == train.sample_shape:
                self.ood_set = ood.data
            else:
                raise DataError(f"ood_dataset {c.ood_dataset} has samples of shape {ood.sample_shape}; the "
                                 f"in-distribution data have {train.sample_shape}")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        self.setup()
        return self.train_set.sample_shape

    def train_dataloader(self) -> DataLoader:
        c = self.config
        # Own generators everywhere: iterating a loader never draws from the global RNG, which the
        # checkpoint saves and restores for the training steps themselves.
        common = dict(batch_size=c.batch_size, drop_last=True, num_workers=c.num_workers,
                      persistent_workers=c.num_workers > 0, generator=torch.Generator().manual_seed(c.seed))
        if self.trainer is not None and isinstance(self.trainer.strategy, ParallelStrategy):
            # Lightning adds a DistributedSampler (and would wrap our sampler in one, even on one device)
            return DataLoader(self.train_set, shuffle=True, **common)
        sampler = EpochPermutationSampler(len(self.train_set), c.seed, c.batch_size, position=self.position)
        return ResumableDataLoader(self.train_set, sampler=sampler, position=self.position, **common)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=max(self.config.batch_size, 256), shuffle=False,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.config.seed))


class FlowModule(pl.LightningModule):
    """Maximum-likelihood training of any flowood flow (and the paper's negative training).

    Logs ``train_bpd`` every step and ``test_bpd`` after each test pass (bits per dimension, the 8-bit
    image's for image data). What a run does around the steps (NaN/Inf handling, invertibility checks,
    random states and data position in checkpoints) lives in the callbacks of
    :mod:`flowood.training.callbacks`, which :func:`~flowood.training.train` attaches.

    Args:
        train_config: the training configuration as a dict (kept in checkpoints).
        input_shape: one sample's shape.
        ood_data: for negative training (the paper's Appendix B), the samples whose likelihood is pushed down.
    """

    def __init__(self, train_config: dict[str, Any], input_shape: tuple[int, ...],
                 ood_data: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = TrainConfig.from_dict(train_config)
        flow_config = self.config.flow_config(input_shape).resolved().to_dict()
        self.save_hyperparameters({"train_config": train_config, "flow_config": flow_config,
                                   "flowood_version": __version__})
        self.flow = build_flow(flow_config)
        if self.config.channels_last or self.config.compile:
            self.flow.optimize(channels_last=self.config.channels_last, compile=self.config.compile)
        self.ood_data = ood_data

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.aug and x.dim() == 4:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x

    def bits_per_dim(self, loss: torch.Tensor) -> torch.Tensor:
        """A training loss (nats per sample) in bits per dimension."""
        return loss / (self.flow.num_dims * math.log(2.0))

    @property
    def negative_threshold(self) -> float:
        """``negative_val`` as a threshold on this flow's ``log_prob``: the option is in the original code's
        convention (``flowood.flows.original.original_loglik_offset``), so that its values (-30000, -100000) mean
        what they mean there."""
        return self.config.negative_val - original_loglik_offset(self.flow)

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """The original's objective: the mean negative log-likelihood in nats per sample; with an OOD set, the
        negative-training objective in the same units. (The units matter: gradient clipping at
        ``max_grad_norm`` and weight decay act on gradients of this loss, as in the original code.)"""
        if self.ood_data is None:
            return -self.flow.log_prob(x, validate=False).mean()
        # one pass over both halves, as the original (BatchNorm statistics, and an ActNorm's first-batch
        # initialisation, see in- and out-of-distribution samples alike)
        idx = torch.randint(0, len(self.ood_data), (x.shape[0],))
        x_ood = self.ood_data[idx].to(x.device)
        both = self.flow.log_prob(torch.cat((x, x_ood.to(x.dtype))), validate=False)
        loglik_in, loglik_ood = both[: x.shape[0]], both[x.shape[0]:]
        loss, share = negative_training_loss(loglik_in, loglik_ood, self.negative_threshold)
        self.log("train_bpd_in", self.bits_per_dim(-loglik_in.mean().detach()), on_step=True, on_epoch=True,
                 batch_size=x.shape[0])
        self.log("train_ood_loglik", loglik_ood.mean().detach(), prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=x.shape[0])
        self.log("train_ood_share_above_negative_val", share, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        loss = self._loss(self._augment(x))
        self.log("train_bpd", self.bits_per_dim(loss.detach()), prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, _ = batch
        # seeded dequantization noise: test bits/dim comparable across epochs, global RNG untouched
        generator = torch.Generator(device=x.device).manual_seed(self.config.seed * 7919 + batch_idx)
        bpd = self.flow.bits_per_dim(x, validate=False, generator=generator)
        self.log("test_bpd", bpd.mean(), prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip each parameter group's gradients to ``max_grad_norm`` separately, as the original code does."""
        if gradient_clip_val:
            for group in optimizer.param_groups:
                torch.nn.utils.clip_grad_norm_(group["params"], gradient_clip_val)

    def configure_optimizers(self) -> Any:
        c = self.config
        groups = weight_decay_groups(self.flow, c.weight_decay)
        opt = make_optimizer(groups, c.optim, lr=c.lr, weight_decay=c.weight_decay)
        if not c.lr_anneal:
            return opt
        milestones = sorted({max(1, math.floor(0.8 * c.num_epochs)), max(1, math.floor(0.9 * c.num_epochs))})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
