"""The allocator setting (flowood.allocator): freed blocks stay in the heap for reuse, and the command line tunes
the allocator unless told not to."""

from __future__ import annotations

import pytest

_FREED_BLOCK_PROBE = """
import ctypes
import torch
from flowood.allocator import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
applied = tune_allocator()
block = torch.empty(12 << 20)  # 48 MiB: above glibc's largest default mmap threshold (32 MiB)
block.fill_(1.0)
del block
print(int(applied), mallinfo2().fordblks)
"""


def _free_heap_bytes_after_freeing_a_block(env_value):
    import os
    import subprocess
    import sys
    env = dict(os.environ, FLOWOOD_MALLOC_TUNING=env_value)
    out = subprocess.run([sys.executable, "-c", _FREED_BLOCK_PROBE], capture_output=True, text=True, env=env,
                         check=True).stdout.split()
    return bool(int(out[0])), int(out[1])


def test_allocator_tuning_keeps_freed_blocks_for_reuse():
    import ctypes
    import platform
    import sys
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc" or \
            not hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2"):
        pytest.skip("the allocator tuning applies to Linux with glibc (>= 2.33 for this probe) only")
    applied, kept = _free_heap_bytes_after_freeing_a_block("1")
    not_applied, kept_by_default = _free_heap_bytes_after_freeing_a_block("0")
    assert applied and not not_applied
    assert kept >= 48 << 20           # the freed block stays in the heap, ready for the next step
    assert kept_by_default < 48 << 20  # glibc's default: unmapped, faulted in again next time


def test_cli_tunes_the_allocator_unless_told_not_to(monkeypatch, capsys):
    from flowood import allocator
    from flowood.cli.main import main
    calls = []
    monkeypatch.setattr(allocator, "tune_allocator", lambda enabled=None: calls.append(enabled) or True)
    assert main(["data", "list"]) == 0
    assert calls == [None]
    assert allocator._disabled_by_env() is False
    monkeypatch.setenv("FLOWOOD_MALLOC_TUNING", "0")
    assert allocator._disabled_by_env() is True
