"""Training configuration: YAML files and flags with the paper's original names.

:class:`TrainConfig` holds the run's options and the flow's architecture as one nested
:class:`~flowood.flows.FlowConfig` (``architecture``). YAML files may give the architecture nested
(``architecture: {flow: Glow, num_blocks: 3}``) or with the original scripts' flat names (``flow: Glow``,
``num_blocks: 3``); the command line takes the flat names. Unknown or mistyped keys are refused with the
closest valid name, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flowood.errors import closest
from flowood.flows import FlowConfig
from flowood.options import ConfigError, from_mapping, option, to_mapping
from flowood.resources import shipped_config, shipped_config_names
from flowood.runtime import data_root_option, device_option, resolve_precision, seed_option, training_precision_option

__all__ = ["TrainConfig", "load_config", "read_yaml", "config_path", "OPTIMIZERS", "LOGGERS"]

OPTIMIZERS = ("Adam", "RMSprop", "AdamW", "SGD")
#: Lightning loggers ``flowood train`` can write to (mlflow and wandb need their packages).
LOGGERS = ("tensorboard", "csv", "mlflow", "wandb")


@dataclass
class TrainConfig:
    """Everything ``flowood train`` needs: the data, the optimisation, the run's safety nets, and the flow's
    architecture. Every field is an option (see :mod:`flowood.options`); ``flowood train --help`` and the
    documentation's CLI reference show each one's help line."""

    dataset: str = option("fashionmnist", "in-distribution data set: a name from `flowood data list`, "
                          "folder:PATH or npz:PATH", metavar="NAME")
    out: str = option("runs/train", "output folder (config, checkpoints, logs)", metavar="DIR")
    data_root: str | None = data_root_option()
    seed: int = seed_option()
    architecture: FlowConfig = option(default_factory=FlowConfig, help="the flow's architecture (its options are "
                                      "given by their own names)", flag=False)
    lr: float = option(1e-3, "learning rate", minimum=0.0)
    batch_size: int = option(64, "training batch size", minimum=1)
    num_epochs: int = option(10, "epochs to train", minimum=1)
    optim: str = option("Adam", "optimizer (SGD with momentum 0.9)", choices=OPTIMIZERS)
    weight_decay: float = option(5e-5, "weight decay of the optimizer", minimum=0.0)
    max_grad_norm: float = option(100.0, "gradients are clipped to this norm", minimum=0.0)
    lr_anneal: bool = option(False, "halve the learning rate after 80% and again after 90% of the epochs")
    max_steps: int | None = option(None, "stop after this many optimizer steps (default: no limit)", minimum=1)
    max_minutes: float | None = option(None, "stop after this many minutes of wall-clock time (default: no limit)",
                                       minimum=0.0)
    max_train_samples: int | None = option(None, "train on a random (seeded) subset of this many samples",
                                           minimum=1)
    max_test_samples: int | None = option(None, "measure test bits/dim on a random subset of this many samples",
                                          minimum=1)
    device: str = device_option()
    devices: int | str = option(1, "devices per node for multi-GPU training: a number, a list such as 0,1, or auto")
    num_nodes: int = option(1, "machines to train on (with --strategy ddp)", minimum=1)
    strategy: str = option("auto", "Lightning's distribution strategy, e.g. ddp")
    precision: str = training_precision_option()
    num_workers: int = option(0, "DataLoader worker processes (data sit in memory; 0 is usually fastest)",
                              minimum=0)
    save_freq: int = option(0, "also keep a checkpoint every this many epochs (last.ckpt is always kept)",
                            minimum=0)
    checkpoint_every_n_steps: int = option(0, "also write last.ckpt every this many steps (0: at epoch ends only)",
                                           minimum=0)
    checkpoint_every_minutes: float = option(2.0, "also write last.ckpt every this many minutes of training, so an "
                                             "interrupted run can be resumed (0: off)", minimum=0.0)
    loggers: list[str] = option(default_factory=lambda: ["tensorboard", "csv"], help="where metrics go: any of "
                                "tensorboard, csv, mlflow, wandb (the last two when installed)", metavar="LOGGER")
    samples_every_n_epochs: int = option(1, "a grid of samples in TensorBoard every this many epochs (0: none)",
                                         minimum=0)
    monitor_ood: str | None = option(None, "an OOD set whose bits/dim and likelihood AUROC are logged at every test "
                                     "pass: the paper's failure as a curve over training", metavar="NAME")
    test_every_n_epochs: int = option(1, "measure test bits/dim every this many epochs", minimum=1)
    aug: bool = option(False, "random horizontal flips of training images (CIFAR-10, CelebA; not digits)")
    channels_last: bool = option(True, "keep convolutions in channels-last memory (the same model, faster on "
                                 "CPUs; float rounding differs from contiguous memory's)")
    compile: bool = option(False, "train through torch.compile (the same model, float rounding may "
                                 "differ; slow first steps)")
    nan_policy: str = option("skip", "on a NaN/Inf or exploding step: skip it, or rollback to the last good state "
                             "with a lower learning rate", choices=("skip", "rollback"))
    nan_tolerance: int = option(10, "bad steps in a row before the run stops", minimum=1)
    nan_lr_factor: float = option(0.5, "learning-rate factor of each rollback, in (0, 1]")
    explode_bpd: float = option(1.0e4, "a training loss above this many bits/dim (an exploding log-determinant) "
                                "counts as a bad step (0: off)", minimum=0.0)
    divergence_bpd: float = option(1.0, "with rollback: a running mean of the loss this many bits/dim above its "
                                   "best counts as a bad step (0: off; not used in negative training)", minimum=0.0)
    rollback_every: int = option(50, "steps between snapshots; a snapshot becomes the state a rollback returns to "
                                 "once this many clean steps followed it", minimum=1)
    ood_dataset: str | None = option(None, "negative training (the paper's Appendix B): a data set whose "
                                     "likelihood is pushed down", metavar="NAME")
    negative_val: float = option(-100000.0, "negative training pushes down only OOD samples whose log-likelihood "
                                 "(nats per image, in the original code's convention: flowood's log_prob plus "
                                 "D log(255/256) for images) is above this (the original: -100000 for CIFAR-10, "
                                 "CelebA, SVHN; -30000 for MNIST, FashionMNIST)")
    recompute_batchnorm: int = option(0, "at the end of training, recompute BatchNorm's running statistics at the "
                                      "final weights over this many training batches (with negative training, "
                                      "in- and out-of-distribution halves as in its steps); 0: keep the running "
                                      "averages, as the original does", minimum=0)
    prior: str = option("Gaussian", "the latent prior (the original's only one)", choices=("Gaussian",))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """From a mapping of options (nested or flat architecture; older spellings accepted)."""
        return from_mapping(cls, values)

    def flow_config(self, input_shape: tuple[int, ...]) -> FlowConfig:
        """The flow's architecture for inputs of ``input_shape``."""
        return dataclasses.replace(self.architecture, input_shape=tuple(input_shape))

    def to_dict(self) -> dict[str, Any]:
        return to_mapping(self)

    def check(self) -> TrainConfig:
        """Refuse values that cannot work, with a message that names the fix."""
        if not 0.0 < float(self.nan_lr_factor) <= 1.0:
            raise ConfigError(f"nan_lr_factor must be in (0, 1], got {self.nan_lr_factor}")
        self.precision = resolve_precision(self.precision, self.device)  # auto: what this machine runs best
        unknown = [name for name in self.loggers if name not in LOGGERS]
        if unknown:
            raise ConfigError(f"unknown logger {unknown[0]!r}{closest(unknown[0], LOGGERS)}; choose from "
                              f"{', '.join(LOGGERS)}")
        if self.lr <= 0 or self.max_grad_norm <= 0:
            raise ConfigError(f"lr and max_grad_norm must be positive, got {self.lr} and {self.max_grad_norm}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}")
        # the architecture's names and sizes, before any data are loaded (the shape is checked later)
        self.architecture.resolved(check_shape=False)
        return self


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (if given), apply ``overrides`` (e.g. flags), check the result.

    Raises:
        ConfigError: unknown keys (with the closest valid name) or values that cannot work.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(read_yaml(path))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return TrainConfig.from_dict(values).check()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's mapping of options, or :class:`ConfigError` saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return loaded


def config_path(name: str | Path) -> Path:
    """A YAML config given as a path, or by the name of a config shipped with flowood (e.g. ``demo``).

    Raises:
        ConfigError: neither a file nor a shipped config; the message lists the shipped ones.
    """
    path = Path(name).expanduser()
    if path.is_file():
        return path
    found = shipped_config(str(name))
    if found is not None:
        return found
    names = shipped_config_names()
    raise ConfigError(f"config {name} is neither a file nor a config shipped with flowood (shipped: "
                      f"{', '.join(names)}){closest(str(name), names)}")
