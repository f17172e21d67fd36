"""Where and how a command runs: one vocabulary for devices and precision in every command, and the options
every command shares (data root, seed), each defined once.

* device: ``auto`` (a GPU if there is one), ``cpu``, ``cuda`` or ``cuda:N``, for train, evaluate, inspect and
  embed alike (Lightning's ``accelerator="gpu"`` is accepted as ``cuda``);
* precision: ``fp32``, ``bf16`` or ``fp16`` (Lightning's ``32-true``, ``bf16-mixed``, ``16-mixed`` accepted);
  training also takes ``auto`` (its default): bf16 st-networks on a CPU with native BF16 instructions, fp32 elsewhere.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flowood.errors import FlowoodError
from flowood.options import ConfigError, option
from flowood.outputs import process_alive

__all__ = ["DeviceError", "resolve_device", "lightning_accelerator", "lightning_precision", "check_precision",
           "data_root_option", "seed_option", "device_option", "precision_option", "PRECISIONS", "DEVICE_HELP",
           "PRECISION_HELP", "VALUE_ALIASES_PRECISION", "usable_cpus", "CoreShare", "active_core_share",
           "threads_option", "RunOptions", "cpu_flags", "native_bf16", "training_precision_option", "resolve_precision",
           "NATIVE_BF16_FLAGS"]

DEVICE_HELP = "where to compute: auto (a GPU if there is one), cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
PRECISION_HELP = "fp32, or bf16 / fp16 (mixed precision, for GPUs)"
TRAINING_PRECISION_HELP = ("auto (bf16 st-networks on a CPU with native BF16: AVX-512 BF16 or AMX; fp32 elsewhere, "
                           "GPUs included), fp32, or bf16 / fp16 (mixed precision: st-networks in 16 bits, the rest "
                           "fp32)")
#: CPU flags (Linux /proc/cpuinfo) of native BF16 dot products, where bf16 st-networks train faster than fp32.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
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


def training_precision_option() -> Any:
    """The training precision option: ``auto`` by default (one definition, used by ``flowood train`` and what
    builds on it)."""
    return option("auto", TRAINING_PRECISION_HELP, value_aliases=VALUE_ALIASES_PRECISION)


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU's feature flags (x86 ``flags``, Arm ``Features`` of Linux's /proc/cpuinfo), or None where they cannot
    be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[-1].split())
    return frozenset(flags)


def native_bf16() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX-512 BF16 or AMX), where oneDNN's bf16 convolutions
    and matrix products run faster than fp32. False where the flags cannot be read: without them bf16 is emulated
    and slower than fp32."""
    flags = cpu_flags()
    return flags is not None and any(flag in flags for flag in NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device: str | torch.device = "auto") -> str:
    """A concrete precision for a run: ``auto`` becomes ``bf16`` on a CPU with native BF16 (:func:`native_bf16`)
    and ``fp32`` elsewhere (GPUs too: bf16 there is one ``precision="bf16"`` away, not measured as a default);
    any other name is checked and made canonical as by :func:`check_precision`.

    bf16 here means flowood's mixed precision: the st-networks in bf16, the couplings, log-determinants and prior in
    fp32, so a bf16-trained flow is still an exact density. Measured on a 2-core AMD EPYC with AVX-512 BF16, its
    training steps are 1.1x-2.0x faster and whole runs end within noise of fp32's bits/dim (benchmarks/RESULTS.md,
    "Training at the defaults").
    """
    if str(precision).lower() != "auto":
        return check_precision(precision)
    return "bf16" if _on_cpu(device) and native_bf16() else "fp32"


def _on_cpu(device: str | torch.device) -> bool:
    """Whether a run on ``device`` computes on the CPU (``auto`` without CUDA); a GPU's name is not checked here."""
    if isinstance(device, torch.device):
        return device.type == "cpu"
    name = str(device).strip().lower()
    return name == "cpu" or (name == "auto" and not torch.cuda.is_available())


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
        extra = " (auto is a training precision: `flowood train` resolves it for the machine)" if key == "auto" else ""
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16{extra}")
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


# -- CPU threads: the CPUs this process may use, shared fairly with other flowood processes -----------------------
def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup CPU quota (containers, CI runners), or None without a quota.

    cgroup v2: ``cpu.max`` holds ``"QUOTA PERIOD"`` or ``"max PERIOD"``; cgroup v1: ``cpu/cpu.cfs_quota_us``
    (-1: none) and ``cpu/cpu.cfs_period_us``. A fractional quota (1.5 CPUs) allows its whole part, at least 1.
    """
    try:
        v2 = root / "cpu.max"
        if v2.is_file():
            quota, period = v2.read_text().split()[:2]
            return None if quota == "max" else max(1, int(quota) // int(period))
        quota_file, period_file = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
        if quota_file.is_file() and period_file.is_file():
            quota = int(quota_file.read_text())
            return None if quota <= 0 else max(1, quota // int(period_file.read_text()))
    except (OSError, ValueError):
        return None
    return None


def usable_cpus() -> int:
    """The CPUs this process may compute on: its affinity mask, capped by a cgroup CPU quota; at least 1.

    PyTorch's default thread count is the machine's cores, which oversubscribes a container limited to fewer.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    return max(1, min(cpus, limit) if limit else cpus)


class CoreShare:
    """This process's share of the CPUs, among the flowood processes running on the machine.

    Two trainings with two threads each on two cores wait for each other's threads at every operation, so they
    run much slower than with one thread each. A ``CoreShare`` registers the process (a file named by
    its pid in a folder of the temporary directory), and :meth:`rebalance` sets PyTorch's intra-op threads to
    ``usable_cpus() // (flowood processes alive)``: a process started later makes the earlier ones give up threads
    on their next rebalance (training rebalances every few steps), and they take them back when it ends.

    Args:
        threads: a fixed thread count instead (``--threads``); None shares.
        folder: where processes register (default: ``$TMPDIR/flowood-cores-<uid>``).

    Example:
        >>> with CoreShare(threads=1) as share:
        ...     share.rebalance()
        1
    """

    def __init__(self, threads: int | None = None, folder: str | os.PathLike | None = None) -> None:
        if threads is not None and threads < 1:
            raise ConfigError(f"`threads` must be at least 1, got {threads}")
        self.threads = threads
        uid = os.getuid() if hasattr(os, "getuid") else 0
        self.folder = Path(folder) if folder else Path(tempfile.gettempdir()) / f"flowood-cores-{uid}"
        self.entry = self.folder / str(os.getpid())
        self._previous = torch.get_num_threads()
        self._outer: CoreShare | None = None

    def __enter__(self) -> CoreShare:
        global _ACTIVE
        self._previous = torch.get_num_threads()
        self._outer = _ACTIVE
        if self._outer is not None:  # nested (train() inside the command line's share): one entry per process
            self.threads = self.threads or self._outer.threads
            self.folder, self.entry = self._outer.folder, self._outer.entry
        else:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                self.entry.touch()
            except OSError:
                pass  # no shared folder: the process still gets usable_cpus() threads
        _ACTIVE = self
        self.rebalance()
        return self

    def __exit__(self, *exc: Any) -> None:
        global _ACTIVE
        if self._outer is None:
            self.entry.unlink(missing_ok=True)
        _ACTIVE = self._outer
        torch.set_num_threads(self._previous)

    def processes(self) -> int:
        """flowood processes alive with a share (this one included); entries of dead processes are removed."""
        alive = 1
        try:
            entries = list(self.folder.iterdir())
        except OSError:
            return alive
        for entry in entries:
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            if process_alive(int(entry.name)):
                alive += 1
            else:
                entry.unlink(missing_ok=True)
        return alive

    def rebalance(self) -> int:
        """Set PyTorch's intra-op threads to this process's share; returns it."""
        threads = self.threads or max(1, usable_cpus() // self.processes())
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads


_ACTIVE: CoreShare | None = None


def active_core_share() -> CoreShare | None:
    """The :class:`CoreShare` this process entered, if any (training rebalances it every few steps)."""
    return _ACTIVE


def threads_option() -> Any:
    """The CPU threads option (one definition: :class:`RunOptions`, :class:`CoreShare`'s ``threads``)."""
    return option(None, "CPU threads to compute with (default: the CPUs this process may use, shared with the "
                        "other flowood processes running on the machine)", minimum=1, metavar="N")


@dataclass
class RunOptions:
    """How any command runs, beside its own options, each defined once: the ``overwrite`` and ``progress``
    parameters every entry point of the library takes, and this process's CPU threads (:class:`CoreShare`)."""

    overwrite: bool = option(False, "replace an earlier output of this command at `out` (only the files flowood "
                             "wrote there are removed; never a folder or file of your own)")
    progress: bool = option(True, "show progress bars")
    threads: int | None = threads_option()
