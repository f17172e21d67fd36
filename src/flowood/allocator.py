"""Keep freed memory inside the process, so CPU training and scoring stop paying for page faults.

A flow allocates activations of the same large sizes at every step. With its default settings glibc's
``malloc`` hands blocks above ``M_MMAP_THRESHOLD`` (at most 32 MiB) back to the operating system when they are
freed and trims the top of the heap once ``M_TRIM_THRESHOLD`` is free, so the next step's tensors are faulted
in again page by page. Measured on the 2-core development machine (``benchmarks/RESULTS.md``), this costs more
than the arithmetic: scoring a batch of 1,024 images runs about 3x faster once freed memory is kept, for
flowood and for the peer libraries alike, and a training step of RealNVP on 1x28x28 batches of 64 goes from
14,000-40,000 minor page faults to under 500.

:func:`tune_allocator` raises both thresholds with ``mallopt`` (Linux with glibc only; elsewhere it does
nothing). The price: the process keeps its peak memory instead of returning some of it between steps. The
``flowood`` command line calls it at start; set ``FLOWOOD_MALLOC_TUNING=0`` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

__all__ = ["tune_allocator", "ENV_VAR"]

#: environment variable that turns the tuning off when set to 0, false, no or off.
ENV_VAR = "FLOWOOD_MALLOC_TUNING"

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_BYTES = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap; the heap is trimmed above 1 GiB free


def _disabled_by_env() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off")


def tune_allocator(enabled: bool | None = None) -> bool:
    """Make glibc keep freed blocks for reuse instead of returning them to the OS.

    Args:
        enabled: True applies the tuning, False does nothing; None (the default) applies it unless the
            environment variable ``FLOWOOD_MALLOC_TUNING`` is 0/false/no/off.

    Returns:
        True when the thresholds were changed (Linux with glibc), False otherwise. Affects the whole process
        from then on (blocks freed later), and worker processes forked after it.

    Example:
        >>> isinstance(tune_allocator(enabled=False), bool)
        True
    """
    if enabled is None:
        enabled = not _disabled_by_env()
    if not enabled or not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
