"""Training configuration: YAML files and flags with the paper's original names.

Every key of a YAML file is a field of :class:`TrainConfig` (the flow's architecture fields
included); unknown or mistyped keys are refused with the closest valid name, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from flowood.flows.config import ConfigError, FlowConfig, closest

__all__ = ["TrainConfig", "load_config", "OPTIMIZERS"]

OPTIMIZERS = ("Adam", "RMSprop", "AdamW", "SGD")
_FLOW_FIELDS = {f.name for f in fields(FlowConfig)} - {"input_shape"}


@dataclass
class TrainConfig:
    """Everything ``flowood train`` needs. Flow architecture fields are those of :class:`FlowConfig`.

    Attributes:
        dataset: in-distribution data set name (see ``flowood data list``).
        data_root: data root (None: ``$FLOWOOD_DATA`` or ``~/.cache/flowood``).
        out: output directory (config, checkpoints, logs).
        lr, batch_size, num_epochs, optim, weight_decay, max_grad_norm, lr_anneal: as in the
            original scripts (``lr_anneal`` halves the learning rate after 80% and 90% of epochs).
        max_steps: stop after this many optimizer steps (None: no limit).
        max_minutes: stop after this much wall-clock time (None: no limit).
        max_train_samples, max_test_samples: use a random subset (seeded) of each split.
        seed: seeds every random number generator.
        devices, num_nodes, accelerator, strategy, precision: passed to Lightning's Trainer. Under
            ``bf16-mixed`` or ``16-mixed`` only the st-networks run in low precision; the bijection and its
            log-determinant stay fp32 (see :mod:`flowood.flows.precision`).
        num_workers: DataLoader worker processes (data sit in memory; 0 is usually fastest).
        save_freq: keep a checkpoint every this many epochs (``last.ckpt`` is always kept).
        aug: random horizontal flips of training images (for CIFAR-10, CelebA; not digits).
        nan_tolerance: consecutive steps with a NaN/Inf loss or gradient before the run stops.
        nan_policy: ``skip`` (leave the weights as they were) or ``rollback`` (return to the last good
            weights and optimizer state and multiply the learning rate by ``nan_lr_factor``).
        nan_lr_factor: learning-rate factor applied at each rollback.
        explode_bpd: a training loss whose magnitude exceeds this many bits/dim (an exploding log-determinant)
            is handled like a NaN/Inf one (0 turns the check off).
        divergence_bpd: with ``rollback``, a training loss whose running mean rises this many bits/dim above
            its best is handled like a NaN/Inf one (0 turns it off; not used in negative training, whose loss
            jumps by design).
        rollback_every: steps between the in-memory snapshots that ``rollback`` returns to (a snapshot becomes
            the state a rollback returns to once ``rollback_every`` clean steps followed it).
        checkpoint_every_n_steps: also write ``last.ckpt`` every this many steps (0: at epoch ends only),
            so a killed run loses at most this many steps.
        channels_last: keep convolutions in channels-last memory format (same numbers, tested; faster
            or as fast on CPU in benchmarks/compare.py; ``--no_channels_last`` turns it off).
        compile: train through ``torch.compile`` (same numbers; slow first steps).
        test_every_n_epochs: evaluate test bits/dim every this many epochs.
        ood_dataset: negative training (the paper's Appendix B): a data set whose likelihood is pushed down.
        negative_val: only OOD samples whose log-likelihood (nats per image) is still above this value are
            pushed down (the original uses -100000 for CIFAR-10, CelebA, SVHN and -30000 for MNIST, FashionMNIST).
    """

    dataset: str = "fashionmnist"
    data_root: str | None = None
    out: str = "runs/train"
    # The flow's options, flat so that YAML keys and flags keep the original scripts' names.
    # They mirror FlowConfig field for field (a test keeps the defaults equal).
    flow: str = "RealNVP"
    num_scales: int = 2
    num_blocks: int = 8
    num_mid_channels: int = 64
    num_coupling_layers_per_scale: int | None = None
    st_type: str | None = None
    mask: str | None = None
    latent_dim: int = 100
    batchnorm: bool = True
    skip: bool = True
    init_zeros: bool = True
    logit_alpha: float = 0.05
    num_coupling_layers: int = 8
    num_hidden_layers: int = 1
    num_hidden_units: int = 256
    actnorm: bool = True
    prior: str = "Gaussian"
    lr: float = 1e-3
    batch_size: int = 64
    num_epochs: int = 10
    optim: str = "Adam"
    weight_decay: float = 5e-5
    max_grad_norm: float = 100.0
    lr_anneal: bool = False
    max_steps: int | None = None
    max_minutes: float | None = None
    max_train_samples: int | None = None
    max_test_samples: int | None = None
    seed: int = 0
    devices: Any = 1
    num_nodes: int = 1
    accelerator: str = "auto"
    strategy: str = "auto"
    precision: str = "32-true"
    num_workers: int = 0
    save_freq: int = 0
    aug: bool = False
    nan_tolerance: int = 10
    nan_policy: str = "skip"
    explode_bpd: float = 1.0e4
    nan_lr_factor: float = 0.5
    divergence_bpd: float = 1.0
    rollback_every: int = 50
    checkpoint_every_n_steps: int = 0
    channels_last: bool = True
    compile: bool = False
    test_every_n_epochs: int = 1
    ood_dataset: str | None = None
    negative_val: float = -100000.0
    extra: dict[str, Any] = field(default_factory=dict)

    def flow_config(self, input_shape: tuple[int, ...]) -> FlowConfig:
        """The flow's architecture for inputs of ``input_shape``."""
        values = {name: getattr(self, name) for name in _FLOW_FIELDS}
        values["input_shape"] = tuple(input_shape)
        return FlowConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not d["extra"]:
            d.pop("extra")
        return d

    def check(self) -> "TrainConfig":
        """Refuse values that cannot work, with a message that names the fix."""
        if self.optim not in OPTIMIZERS:
            raise ConfigError(f"unknown optim {self.optim!r}{closest(self.optim, OPTIMIZERS)}; "
                              f"choose one of {', '.join(OPTIMIZERS)}")
        if self.prior != "Gaussian":
            raise ConfigError(f"prior {self.prior!r} is not supported; flowood uses the original's 'Gaussian' prior")
        if self.nan_policy not in ("skip", "rollback"):
            raise ConfigError(f"nan_policy must be 'skip' or 'rollback', got {self.nan_policy!r}"
                              f"{closest(self.nan_policy, ('skip', 'rollback'))}")
        precision = str(self.precision).lower()
        if precision in ("16-true", "bf16-true") or precision.startswith("transformer-engine"):
            raise ConfigError(f"precision {self.precision!r} would run the whole flow, log-determinants included, in "
                              "16 bits; use bf16-mixed or 16-mixed (st-networks in 16 bits, log-determinants in fp32)")
        if not float(self.divergence_bpd) >= 0.0:
            raise ConfigError(f"divergence_bpd must be >= 0 (0 turns the check off), got {self.divergence_bpd}")
        if not float(self.explode_bpd) >= 0.0:
            raise ConfigError(f"explode_bpd must be >= 0 (0 turns the check off), got {self.explode_bpd}")
        if not 0.0 < float(self.nan_lr_factor) <= 1.0:
            raise ConfigError(f"nan_lr_factor must be in (0, 1], got {self.nan_lr_factor}")
        if not isinstance(self.checkpoint_every_n_steps, int) or self.checkpoint_every_n_steps < 0:
            raise ConfigError(f"checkpoint_every_n_steps must be >= 0, got {self.checkpoint_every_n_steps!r}")
        for name in ("batch_size", "num_epochs", "num_nodes", "nan_tolerance", "test_every_n_epochs",
                     "rollback_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "max_train_samples", "max_test_samples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive integer or null, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"lr must be a positive number, got {self.lr!r}")
        if self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ConfigError("weight_decay must be >= 0 and max_grad_norm > 0")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f"max_minutes must be positive, got {self.max_minutes}")
        if self.save_freq < 0 or self.num_workers < 0:
            raise ConfigError("save_freq and num_workers must be >= 0")
        # the architecture's names and sizes, before any data are loaded (the shape is checked later)
        self.flow_config(FlowConfig().input_shape).resolved(check_shape=False)
        return self


def _coerce(name: str, value: Any, current: Any) -> Any:
    """Turn YAML scalars into the field's type where that is unambiguous (``1e-4`` -> float)."""
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if isinstance(current, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError as err:
            raise ConfigError(f"{name} must be a number, got {value!r}") from err
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (if given), apply ``overrides`` (flags), check the result.

    Raises:
        ConfigError: unknown keys (with the closest valid name) or values that cannot work.
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of option: value")
        values.update(loaded)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(TrainConfig)} - {"extra"}
    defaults = TrainConfig()
    clean = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown option {key!r}{closest(key, known)}")
        clean[key] = _coerce(key, value, getattr(defaults, key))
    return TrainConfig(**clean).check()
