"""The Lightning module and data module that train a flow by maximum likelihood."""

from __future__ import annotations

import copy
import math
import random
from typing import Any

import numpy as np

import lightning.pytorch as pl
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from flowood import __version__
from flowood.data import ArrayDataset, adapt_images, load_dataset
from flowood.flows import ActNorm, build_flow
from flowood.training.config import TrainConfig
from flowood.training.optim import make_optimizer
from flowood.training.persistence import EpochPermutationSampler, ResumableDataLoader

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


class NonFiniteLossError(RuntimeError):
    """Training produced NaN/Inf losses for too many consecutive steps."""


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

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        c = self.config
        train = load_dataset(c.dataset, "train", c.data_root)
        test = load_dataset(c.dataset, "test", c.data_root)
        for ds in (train, test):
            if len(ds) == 0:
                raise ValueError(f"{ds.name}:{ds.split} is empty; check the data set's files")
        self.train_set = train.take(c.max_train_samples, seed=c.seed)
        self.test_set = test.take(c.max_test_samples, seed=c.seed)
        if len(self.train_set) < c.batch_size:
            raise ValueError(f"{train.name}:train has {len(self.train_set)} samples, fewer than batch_size "
                             f"{c.batch_size}, so not one full batch could be trained on; lower --batch_size")
        if c.ood_dataset:
            ood = load_dataset(c.ood_dataset, "train", c.data_root, shape=train.sample_shape)
            if ood.is_image and train.is_image:
                self.ood_set = adapt_images(ood.data, train.sample_shape)
            elif ood.sample_shape == train.sample_shape:
                self.ood_set = ood.data
            else:
                raise ValueError(f"--ood_dataset {c.ood_dataset} has samples of shape {ood.sample_shape}; the "
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
        if self.trainer is not None and self.trainer.world_size > 1:
            return DataLoader(self.train_set, shuffle=True, **common)  # Lightning adds a DistributedSampler
        sampler = EpochPermutationSampler(len(self.train_set), c.seed, c.batch_size)
        loader = ResumableDataLoader(self.train_set, sampler=sampler, **common)
        module = self.trainer.lightning_module if self.trainer is not None else None
        if isinstance(module, FlowModule):
            module.sampler = sampler
            loader.batches_done = module.batches_done
        return loader

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=max(self.config.batch_size, 256), shuffle=False,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0,
                          generator=torch.Generator().manual_seed(self.config.seed))


class FlowModule(pl.LightningModule):
    """Maximum-likelihood training of any flowood flow.

    Logs ``train_bpd`` every step and ``test_bpd`` after each test pass (bits per dimension,
    the 8-bit image's for image data). A step whose loss or gradients are NaN/Inf (an exploding
    log-determinant, a singular 1x1 convolution) changes nothing: with ``nan_policy="skip"`` it is
    skipped, with ``"rollback"`` the weights and optimizer go back to the last good state (kept every
    ``rollback_every`` steps) and the learning rate is multiplied by ``nan_lr_factor``. Either way it is
    logged, the same on every process under DDP, and after ``nan_tolerance`` consecutive ones the run
    stops with :class:`NonFiniteLossError`, keeping the checkpoints written so far.

    Checkpoints also hold the random-number states and the position in the epoch's data order, so a
    resumed run continues exactly as the uninterrupted one, and the invertibility error of the model
    on a fixed batch (``check_batch``), measured when the checkpoint is written.

    Args:
        train_config: the training configuration as a dict (kept in checkpoints).
        input_shape: one sample's shape.
    """

    def __init__(self, train_config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.config = TrainConfig(**train_config)
        flow_config = self.config.flow_config(input_shape).resolved().to_dict()
        self.save_hyperparameters({"train_config": train_config, "flow_config": flow_config,
                                   "flowood_version": __version__})
        self.flow = build_flow(flow_config)
        if self.config.channels_last or self.config.compile:
            self.flow.optimize(channels_last=self.config.channels_last, compile=self.config.compile)
        self.nonfinite_streak = 0
        self.skipped_steps = 0
        self.rollbacks = 0
        self.ood_data: torch.Tensor | None = None  # set by train() for negative training
        self.check_batch: torch.Tensor | None = None  # set by train(): inputs for the invertibility check
        self.invertibility_error: float | None = None
        self.sampler: EpochPermutationSampler | None = None  # set by the data module (single process)
        self._pass_id = -1
        self._batches_in_pass = 0  # batches of the sampler's current pass trained on (skipped ones included)
        self._restored_rng: dict[str, Any] | None = None
        self._good_state: tuple[dict[str, Any], dict[str, Any]] | None = None

    def batches_done(self) -> int:
        """Batches of the sampler's current pass already trained on (saved as the data position)."""
        return self._batches_in_pass

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.aug and x.dim() == 4:
            flip = torch.rand(x.shape[0], device=x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        return x

    def _loss(self, x: torch.Tensor) -> torch.Tensor:
        """Mean bits/dim; with an OOD set, the negative-training objective in the same units."""
        if self.ood_data is None:
            return self.flow.bits_per_dim(x, validate=False).mean()
        if any(isinstance(m, ActNorm) and not bool(m.initialized) for m in self.flow.modules()):
            with torch.no_grad():  # data-dependent init from in-distribution data only
                self.flow.log_prob(x, validate=False)
        idx = torch.randint(0, len(self.ood_data), (x.shape[0],))
        x_ood = self.ood_data[idx].to(x.device)
        both = self.flow.log_prob(torch.cat((x, x_ood.to(x.dtype))), validate=False)
        loglik_in, loglik_ood = both[: x.shape[0]], both[x.shape[0]:]
        loss, share = negative_training_loss(loglik_in, loglik_ood, self.config.negative_val)
        scale = self.flow.num_dims * math.log(2.0)
        self.log("train_bpd_in", -loglik_in.mean().detach() / scale, on_step=True, on_epoch=True, batch_size=x.shape[0])
        self.log("train_ood_loglik", loglik_ood.mean().detach(), prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=x.shape[0])
        self.log("train_ood_share_above_negative_val", share, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss / scale

    def _all_finite(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value).all().float().reshape(1)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return finite.item() == 1.0

    def _nonfinite(self, what: str) -> None:
        """Count a NaN/Inf step, skip it or roll back, and stop when it keeps happening."""
        self.nonfinite_streak += 1
        self.skipped_steps += 1
        action = "skipped"
        if self.config.nan_policy == "rollback" and self._good_state is not None:
            flow_state, optim_state = self._good_state
            optimizer = self.optimizers(use_pl_optimizer=False)
            lrs = [group["lr"] for group in optimizer.param_groups]
            self.flow.load_state_dict(flow_state)
            optimizer.load_state_dict(copy.deepcopy(optim_state))
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr * self.config.nan_lr_factor
            self.rollbacks += 1
            action = f"rolled back to the last good state, learning rate now {optimizer.param_groups[0]['lr']:.3g}"
        self.log("nonfinite_steps", float(self.skipped_steps), on_step=True, on_epoch=False, batch_size=1)
        self.print(f"warning: non-finite {what} at step {self.global_step}; {action} "
                   f"({self.nonfinite_streak}/{self.config.nan_tolerance} in a row)")
        if self.nonfinite_streak >= self.config.nan_tolerance:
            raise NonFiniteLossError(
                f"training diverged: the {what} was NaN/Inf for {self.nonfinite_streak} consecutive steps (at step "
                f"{self.global_step}). Lower --lr (now {self.config.lr}) or --max_grad_norm "
                f"(now {self.config.max_grad_norm}), or use --nan_policy rollback; then --resume from the last "
                "checkpoint")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        x, _ = batch
        if self.sampler is not None and self.sampler.pass_id != self._pass_id:
            self._pass_id, self._batches_in_pass = self.sampler.pass_id, 0
        self._batches_in_pass += 1
        loss = self._loss(self._augment(x))
        if not self._all_finite(loss):
            self._nonfinite("loss")
            return None
        bound = self.config.explode_bpd
        if bound and not self._all_finite(torch.where(loss.detach().abs() > bound, torch.nan, 1.0)):
            self._nonfinite(f"loss (an exploding log-determinant: |loss| above explode_bpd = {bound:g} bits/dim)")
            return None
        self.log("train_bpd", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=x.shape[0])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.flow.parameters() if p.grad is not None]
        if not grads:
            return
        # one L1 norm over all gradients (foreach: a few kernels, not one per parameter tensor); non-finite if any is
        if self._all_finite(torch.nn.utils.get_total_norm(grads, norm_type=1.0, foreach=True)):
            self.nonfinite_streak = 0
            return
        for p in self.flow.parameters():
            p.grad = None  # the optimizer then leaves every parameter as it is
        self._nonfinite("gradient")

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.config.rollback_every
        if self.config.nan_policy == "rollback" and self.nonfinite_streak == 0 and (
                self._good_state is None or self.global_step % every == 0):
            optimizer = self.optimizers(use_pl_optimizer=False)
            self._good_state = ({k: v.detach().clone() for k, v in self.flow.state_dict().items()},
                                copy.deepcopy(optimizer.state_dict()))

    def on_train_start(self) -> None:
        if self._restored_rng is not None:  # applied last, so nothing between restore and training draws from it
            state = self._restored_rng
            torch.set_rng_state(state["torch"])
            if torch.cuda.is_available() and state.get("cuda") is not None:
                torch.cuda.set_rng_state_all(state["cuda"])
            n = state["numpy"]
            np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                                 float(n["gauss"])))
            version, internal, gauss = state["python"]
            random.setstate((version, tuple(internal), gauss))
            self._restored_rng = None



    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, _ = batch
        # seeded dequantization noise: test bits/dim comparable across epochs, global RNG untouched
        generator = torch.Generator(device=x.device).manual_seed(self.config.seed * 7919 + batch_idx)
        bpd = self.flow.bits_per_dim(x, validate=False, generator=generator)
        self.log("test_bpd", bpd.mean(), prog_bar=True, on_epoch=True, sync_dist=True, batch_size=x.shape[0])

    def configure_optimizers(self) -> Any:
        c = self.config
        opt = make_optimizer(self.flow.parameters(), c.optim, lr=c.lr, weight_decay=c.weight_decay)
        if not c.lr_anneal:
            return opt
        milestones = sorted({max(1, math.floor(0.8 * c.num_epochs)), max(1, math.floor(0.9 * c.num_epochs))})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    @torch.no_grad()
    def check_invertibility(self) -> float | None:
        """Largest ``|inverse(forward(x)) - x|`` on the fixed check batch (None without one)."""
        if self.check_batch is None:
            return None
        was_training = self.flow.training
        self.flow.eval()
        try:
            x = self.check_batch.to(self.device)
            xc = self.flow._continuous(x, "center", None) if self.flow.discrete else x.to(torch.float32)
            z, _ = self.flow(xc)
            error = float((self.flow.inverse(z) - xc).abs().max())
        finally:
            self.flow.train(was_training)
        return error if math.isfinite(error) else float("inf")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        error = self.check_invertibility()
        if error is not None:
            self.invertibility_error = error
            checkpoint["flowood_invertibility_error"] = error
            if error > 1e-3:
                self.print(f"warning: at step {self.global_step} inverse(forward(x)) differs from x by {error:.3g} "
                           "on the check batch: the model is close to non-invertible")
        checkpoint["flowood_skipped_steps"] = self.skipped_steps
        checkpoint["flowood_rollbacks"] = self.rollbacks
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        # plain types and tensors only, so the checkpoint loads with torch.load(weights_only=True)
        checkpoint["flowood_rng"] = {"torch": torch.get_rng_state(),
                                     "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                                               "has_gauss": int(has_gauss), "gauss": float(gauss)},
                                     "python": list(random.getstate()),
                                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.skipped_steps = int(checkpoint.get("flowood_skipped_steps", 0))
        self.rollbacks = int(checkpoint.get("flowood_rollbacks", 0))
        self._restored_rng = checkpoint.get("flowood_rng")
