"""Coupling masks: which part of the input a coupling layer sees and which part it transforms.

A mask is a pair of 0/1 tensors over one sample's shape: ``condition`` (what the st-network
sees) and ``transform`` (what the layer changes). For the classic masks one is the complement
of the other; the paper's cycle mask (Kirichenko et al. 2020, Section 6) conditions on one
quadrant and transforms the next, leaving the other two untouched, so information needs four
layers to come back around and consecutive layers cannot co-adapt.

Kinds:
    ``checkerboard`` (RealNVP), ``checkerboard_packed`` (the same pixels, but the coupling gathers each half
    into a tensor of half the width, so its st-network convolves half as many pixels: faster, as in
    normflows; a different st-network geometry, so not the paper's model), ``channel`` (first/second half
    of the channels), ``horizontal`` (top/bottom half), ``vertical`` (left/right half), ``cycle`` (quadrant
    q -> q + 1) and ``tabular`` (first/second half of a feature vector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from flowood.options import ConfigError

__all__ = ["CouplingMask", "make_mask", "MASK_KINDS", "SPATIAL_MASK_KINDS"]

#: masks over the spatial grid of an image, usable at any scale.
SPATIAL_MASK_KINDS = ("checkerboard", "checkerboard_packed", "horizontal", "vertical", "cycle")
MASK_KINDS = SPATIAL_MASK_KINDS + ("channel", "tabular")


@dataclass(frozen=True)
class CouplingMask:
    """A coupling layer's mask for inputs of one sample shape.

    Attributes:
        kind: one of :data:`MASK_KINDS`.
        index: the variant: parity 0/1 for two-way masks, the conditioning quadrant 0-3 for cycle.
        condition: 0/1 tensor of the sample shape: 1 where the st-network sees the input.
        transform: 0/1 tensor of the sample shape: 1 where the layer transforms the input.
    """

    kind: str
    index: int
    condition: Tensor
    transform: Tensor

    @property
    def is_channel_split(self) -> bool:
        """True when the mask is a split of the channels, which couplings implement by slicing."""
        return self.kind == "channel"

    @property
    def is_packed(self) -> bool:
        """True for ``checkerboard_packed``: couplings gather each half into a half-width tensor."""
        return self.kind == "checkerboard_packed"

    def describe(self) -> str:
        """A short human-readable label, e.g. ``"cycle 2->3"``."""
        if self.kind == "cycle":
            return f"cycle {self.index}->{(self.index + 1) % 4}"
        return f"{self.kind} {self.index}"


def _quadrant(shape: tuple[int, ...], q: int) -> Tensor:
    """Quadrants numbered clockwise from the top left: 0 TL, 1 TR, 2 BR, 3 BL."""
    _, h, w = shape
    m = torch.zeros(shape)
    hs, ws = h // 2, w // 2
    rows, cols = {0: (slice(0, hs), slice(0, ws)), 1: (slice(0, hs), slice(ws, w)),
                  2: (slice(hs, h), slice(ws, w)), 3: (slice(hs, h), slice(0, ws))}[q]
    m[:, rows, cols] = 1.0
    return m


def _tabular_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    if len(shape) != 1 or shape[0] < 2:
        raise ConfigError(f"a tabular mask needs a vector of at least 2 features, got shape {shape}")
    d = shape[0]
    cond = torch.zeros(shape)
    if index % 2 == 0:
        cond[: d // 2] = 1.0
    else:
        cond[d // 2:] = 1.0
    return CouplingMask("tabular", index % 2, cond, 1.0 - cond)


def _checkerboard_mask(shape: tuple[int, ...], index: int, kind: str = "checkerboard") -> CouplingMask:
    c, h, w = shape
    if kind == "checkerboard_packed" and w % 2:
        raise ConfigError(f"a checkerboard_packed mask needs an even width, got shape {shape}")
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # index 0 transforms the pixels with i + j even (the top-left one among them), as the original's
    # MaskCheckerboard(reverse_mask=False)
    cond = ((yy + xx) % 2 != index % 2).float().expand(c, h, w).clone()
    return CouplingMask(kind, index % 2, cond, 1.0 - cond)


def _channel_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    c = shape[0]
    if c < 2:
        raise ConfigError(f"a channel mask needs at least 2 channels, got {c}; squeeze first")
    cond = torch.zeros(shape)
    if index % 2 == 0:
        cond[c // 2:] = 1.0  # transform the first half, condition on the second
    else:
        cond[: c // 2] = 1.0
    return CouplingMask("channel", index % 2, cond, 1.0 - cond)


def _half_mask(shape: tuple[int, ...], index: int, kind: str) -> CouplingMask:
    """``horizontal`` (top / bottom halves) or ``vertical`` (left / right halves)."""
    _, h, w = shape
    size = h if kind == "horizontal" else w
    if size < 2:
        raise ConfigError(f"a {kind} mask needs at least 2 pixels along its axis, got shape {shape}")
    cond = torch.zeros(shape)
    part = slice(0, size // 2) if index % 2 == 0 else slice(size // 2, size)
    if kind == "horizontal":
        cond[:, part, :] = 1.0
    else:
        cond[:, :, part] = 1.0
    return CouplingMask(kind, index % 2, cond, 1.0 - cond)


def _cycle_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    _, h, w = shape
    if h < 2 or w < 2:
        raise ConfigError(f"a cycle mask needs at least 2x2 pixels, got shape {shape}")
    q = index % 4
    return CouplingMask("cycle", q, _quadrant(shape, q), _quadrant(shape, (q + 1) % 4))


_IMAGE_MASKS = {
    "checkerboard": _checkerboard_mask,
    "checkerboard_packed": lambda shape, index: _checkerboard_mask(shape, index, "checkerboard_packed"),
    "channel": _channel_mask,
    "horizontal": lambda shape, index: _half_mask(shape, index, "horizontal"),
    "vertical": lambda shape, index: _half_mask(shape, index, "vertical"),
    "cycle": _cycle_mask,
}


def make_mask(kind: str, shape: tuple[int, ...], index: int = 0) -> CouplingMask:
    """Build a mask for inputs of one sample shape.

    Args:
        kind: one of :data:`MASK_KINDS`.
        shape: ``(C, H, W)`` for images, ``(D,)`` for ``tabular``.
        index: which variant; two-way masks use ``index % 2``, the cycle mask ``index % 4``
            (the layer transforms quadrant ``index + 1`` conditioned on quadrant ``index``). Index 0 is the
            original's first mask: checkerboard transforms the pixels with ``i + j`` even, horizontal the bottom
            half, vertical the right half, channel the first half of the channels, tabular the last half
            of the features.

    Returns:
        The :class:`CouplingMask`.

    Example:
        >>> m = make_mask("checkerboard", (1, 2, 2))
        >>> m.condition[0].tolist(), m.transform[0].tolist()
        ([[0.0, 1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])
    """
    shape = tuple(int(s) for s in shape)
    if kind == "tabular":
        return _tabular_mask(shape, index)
    if kind not in _IMAGE_MASKS:
        raise ConfigError(f"unknown mask {kind!r}; choose one of {', '.join(MASK_KINDS)}")
    if len(shape) != 3:
        raise ConfigError(f"a {kind} mask needs an image shape (C, H, W), got {shape}")
    return _IMAGE_MASKS[kind](shape, index)
