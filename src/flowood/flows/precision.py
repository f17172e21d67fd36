"""Mixed precision for flows: st-networks in bf16/fp16, the bijection and its log-determinant in fp32.

Nearly all of a coupling flow's arithmetic is in its st-networks, which only have to be good predictors; the
bijection around them (``(x + t) * exp(s)``, the 1x1 convolutions, ActNorm) and the log-determinant that the
likelihood sums over thousands of dimensions have to be exact. So a flow under mixed precision runs each
st-network under ``torch.autocast`` and casts its output back to fp32 before ``s`` and ``t`` are used; every
other operation runs with autocast turned off. The inverse recomputes ``s`` and ``t`` from the same unchanged
half, so invertibility is as exact as in fp32.

A flow picks the st-networks' precision from :meth:`FlowModel.mixed_precision <flowood.flows.FlowModel.mixed_precision>`
or, if that is unset, from an enclosing ``torch.autocast`` (Lightning's ``precision="bf16-mixed"`` or
``"16-mixed"``, or the user's own), which it narrows to the st-networks in the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import Tensor, nn

from flowood.options import ConfigError

__all__ = ["flow_precision", "run_st_net", "parse_precision", "PRECISIONS"]

#: accepted names for :func:`parse_precision`.
PRECISIONS = {"fp32": None, "32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16,
              "fp16": torch.float16, "16": torch.float16, "16-mixed": torch.float16}

# (device type, dtype) for st-networks while a flow pass is running under mixed precision.
_ST_AUTOCAST: ContextVar[tuple[str, torch.dtype] | None] = ContextVar("flowood_st_autocast", default=None)


def parse_precision(precision: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"``/``"fp16"``/``"fp32"`` (or Lightning's names, or a dtype) -> the st-networks' dtype, None for fp32."""
    if precision is None or precision == torch.float32:
        return None
    if isinstance(precision, torch.dtype):
        if precision not in (torch.bfloat16, torch.float16):
            raise ConfigError(f"mixed precision runs st-networks in bfloat16 or float16, got {precision}")
        return precision
    key = str(precision).strip().lower()
    if key not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
    return PRECISIONS[key]


@contextlib.contextmanager
def flow_precision(x: Tensor, dtype: torch.dtype | None) -> Iterator[None]:
    """The scope of one pass through a flow on ``x``.

    If ``dtype`` is None and an autocast is active for ``x``'s device, its dtype is used. Inside the scope
    autocast is off, except in :func:`run_st_net`. Without a dtype and without autocast this does nothing.
    """
    device_type = x.device.type
    if dtype is None and torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    if dtype is None:
        yield
        return
    token = _ST_AUTOCAST.set((device_type, dtype))
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        _ST_AUTOCAST.reset(token)


def run_st_net(net: nn.Module, x: Tensor) -> Tensor:
    """Apply an st-network at the current flow pass's precision; the result comes back in ``x``'s dtype."""
    setting = _ST_AUTOCAST.get()
    if setting is None:
        return net(x)
    device_type, dtype = setting
    with torch.autocast(device_type, dtype=dtype):
        out = net(x)
    return out.to(x.dtype)
