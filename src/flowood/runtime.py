"""Where and how a command runs: one vocabulary for devices and precision in every command, and the options
every command shares (data root, seed), each defined once.

* device: ``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``, for train, evaluate, inspect and
  embed alike (Lightning's ``accelerator="gpu"`` is accepted as ``cuda``);
* precision: ``fp32``, ``bf16`` or ``fp16`` (Lightning's ``32-true``, ``bf16-mixed``, ``16-mixed`` accepted).
"""

from __future__ import annotations

from typing import Any

import torch

from flowood.errors import FlowoodError
from flowood.options import ConfigError, option

__all__ = ["DeviceError", "resolve_device", "lightning_accelerator", "lightning_precision", "check_precision",
           "data_root_option", "seed_option", "device_option", "precision_option", "PRECISIONS", "DEVICE_HELP",
           "PRECISION_HELP", "VALUE_ALIASES_PRECISION"]

DEVICE_HELP = "where to compute: auto (a GPU if there is one), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = "fp32, or bf16 / fp16 (mixed precision, for GPUs)"
#: Lightning's names of the same precisions.
VALUE_ALIASES_PRECISION = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "16-mixed": "fp16", "16": "fp16"}
_LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


class DeviceError(FlowoodError, ValueError):
    """A device that this machine does not have, or a name that is not a device."""


def data_root_option() -> Any:
    """The data root option (one definition, used by every command that reads data)."""
    return option(None, "data root (default: $FLOWOOD_DATA or ~/.cache/flowood)", metavar="DIR")


def seed_option() -> Any:
    """The seed option (one definition, used by every command)."""
    return option(0, "seed of every random number generator: the same seed gives the same numbers")


def device_option() -> Any:
    """The device option (one definition, used by every command that computes)."""
    return option("auto", DEVICE_HELP, aliases=("accelerator",), value_aliases={"gpu": "cuda"})


def precision_option() -> Any:
    """The precision option (one definition, used by every command that computes)."""
    return option("fp32", PRECISION_HELP, value_aliases=VALUE_ALIASES_PRECISION)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU if there is one, else the CPU; ``"cuda[:N]"`` only where CUDA is available.

    Raises:
        DeviceError: CUDA asked for where there is none, or a name that is not a device.
    """
    device = str(device).strip().lower()
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "gpu":
        device = "cuda"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} requested but CUDA is not available here; use `device='cpu'`")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from err


def check_precision(precision: str) -> str:
    """The canonical precision name, or :class:`ConfigError` naming the valid ones."""
    key = VALUE_ALIASES_PRECISION.get(str(precision).lower(), str(precision).lower())
    if key in ("16-true", "bf16-true") or key.startswith("transformer-engine"):
        raise ConfigError(f"precision {precision!r} would run the whole flow, log-determinants included, in 16 "
                          "bits; use bf16 or fp16 (Lightning's bf16-mixed / 16-mixed: st-networks in 16 bits, "
                          "log-determinants in fp32)")
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    return key


def lightning_precision(precision: str) -> str:
    """flowood's precision name as Lightning's Trainer takes it."""
    return _LIGHTNING_PRECISION[check_precision(precision)]


def lightning_accelerator(device: str, devices: Any) -> tuple[str, Any]:
    """``(accelerator, devices)`` for Lightning's Trainer from flowood's ``device`` and ``devices``."""
    device = str(device).lower()
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    if device == "auto":
        return "auto", devices
    if device == "cpu":
        return "cpu", devices
    resolve_device(device)  # refuses cuda where there is none
    index = device.partition(":")[2]
    return "gpu", [int(index)] if index else devices
