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

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from flowood.options import ConfigError
from flowood.variants import Registry

__all__ = ["CouplingMask", "MaskKind", "MASKS", "register_mask", "make_mask", "spatial_mask_kinds"]

#: how a coupling applies a mask: by multiplication, by slicing channels, or on packed half-width tensors.
LAYOUTS = ("masked", "channel", "packed")


@dataclass(frozen=True)
class CouplingMask:
    """A coupling layer's mask for inputs of one sample shape.

    Attributes:
        kind: a name in :data:`MASKS`.
        index: the variant: parity 0/1 for two-way masks, the conditioning quadrant 0-3 for cycle.
        condition: 0/1 tensor of the sample shape: 1 where the st-network sees the input.
        transform: 0/1 tensor of the sample shape: 1 where the layer transforms the input.
        layout: how a coupling applies it, one of ``masked`` (multiplication), ``channel`` (slicing the
            channels) and ``packed`` (half-width tensors); by default its kind's (see :data:`MASKS`).
    """

    kind: str
    index: int
    condition: Tensor
    transform: Tensor
    layout: str | None = None

    def __post_init__(self) -> None:
        if self.layout is None:  # a mask built by hand takes its kind's layout (masked for a kind not registered)
            kind = MASKS.get(self.kind)
            object.__setattr__(self, "layout", kind.layout if kind is not None else "masked")

    @property
    def is_channel_split(self) -> bool:
        """True when the mask is a split of the channels, which couplings implement by slicing."""
        return self.layout == "channel"

    @property
    def is_packed(self) -> bool:
        """True for ``checkerboard_packed``: couplings gather each half into a half-width tensor."""
        return self.layout == "packed"

    def describe(self) -> str:
        """A short human-readable label, e.g. ``"cycle 2->3"``."""
        if self.kind == "cycle":
            return f"cycle {self.index}->{(self.index + 1) % 4}"
        return f"{self.kind} {self.index}"


@dataclass(frozen=True)
class MaskKind:
    """A kind of coupling mask: how to build it and where it works.

    Attributes:
        build: ``(shape, index) -> CouplingMask`` for one sample shape.
        layout: how a coupling applies it (see :class:`CouplingMask`).
        inputs: ``"images"`` (shape ``(C, H, W)``) or ``"vectors"`` (shape ``(D,)``).
        spatial: an image mask over the pixel grid, usable at any scale of a RealNVP (channel masks are not).
    """

    build: Callable[[tuple[int, ...], int], CouplingMask]
    layout: str = "masked"
    inputs: str = "images"
    spatial: bool = True


#: every mask by name (see :func:`register_mask`).
MASKS: Registry[MaskKind] = Registry("mask", "mask")


def register_mask(name: str, *, layout: str = "masked", inputs: str = "images", spatial: bool = True,
                  replace: bool = False) -> Callable:
    """Decorator that adds a mask builder ``(shape, index) -> CouplingMask`` to :data:`MASKS` under ``name``.

    Example:
        >>> @register_mask("left_column")
        ... def left_column(shape, index):
        ...     '''The first column conditions the rest.'''
        ...     cond = torch.zeros(shape)
        ...     cond[..., 0] = 1.0
        ...     return CouplingMask("left_column", index, cond, 1.0 - cond)
        >>> make_mask("left_column", (1, 2, 2)).transform[0].tolist()
        [[0.0, 1.0], [0.0, 1.0]]
        >>> _ = MASKS.unregister("left_column")
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown mask layout {layout!r}; choose one of {', '.join(LAYOUTS)}")

    def add(build: Callable[[tuple[int, ...], int], CouplingMask]) -> Callable:
        MASKS.register(name, MaskKind(build, layout, inputs, spatial), replace=replace)
        return build

    return add


def spatial_mask_kinds() -> tuple[str, ...]:
    """The registered masks over an image's pixel grid (a RealNVP's spatial couplings may use any of them)."""
    return MASKS.names(lambda kind: kind.inputs == "images" and kind.spatial)


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
    """Halves of a feature vector: index 0 transforms the last half."""
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
    """RealNVP's checkerboard: index 0 transforms the pixels with ``i + j`` even."""
    c, h, w = shape
    if kind == "checkerboard_packed" and w % 2:
        raise ConfigError(f"a checkerboard_packed mask needs an even width, got shape {shape}")
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    # index 0 transforms the pixels with i + j even (the top-left one among them), as the original's
    # MaskCheckerboard(reverse_mask=False)
    cond = ((yy + xx) % 2 != index % 2).float().expand(c, h, w).clone()
    return CouplingMask(kind, index % 2, cond, 1.0 - cond)


def _channel_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    """Halves of the channels, by slicing: index 0 transforms the first half."""
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
    """The paper's cycle mask: quadrant q conditions quadrant q + 1 (0 -> 1 -> 2 -> 3 -> 0)."""
    _, h, w = shape
    if h < 2 or w < 2:
        raise ConfigError(f"a cycle mask needs at least 2x2 pixels, got shape {shape}")
    q = index % 4
    return CouplingMask("cycle", q, _quadrant(shape, q), _quadrant(shape, (q + 1) % 4))


def _packed_checkerboard_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    """The checkerboard's pixels, each half gathered into a tensor of half the width (faster; not the paper's)."""
    return _checkerboard_mask(shape, index, "checkerboard_packed")


def _horizontal_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    """Top and bottom halves: index 0 transforms the bottom half."""
    return _half_mask(shape, index, "horizontal")


def _vertical_mask(shape: tuple[int, ...], index: int) -> CouplingMask:
    """Left and right halves: index 0 transforms the right half."""
    return _half_mask(shape, index, "vertical")


# in the order choices are listed: the spatial masks, then the others
register_mask("checkerboard")(_checkerboard_mask)
register_mask("checkerboard_packed", layout="packed")(_packed_checkerboard_mask)
register_mask("horizontal")(_horizontal_mask)
register_mask("vertical")(_vertical_mask)
register_mask("cycle")(_cycle_mask)
register_mask("channel", layout="channel", spatial=False)(_channel_mask)
register_mask("tabular", inputs="vectors", spatial=False)(_tabular_mask)


def make_mask(kind: str, shape: tuple[int, ...], index: int = 0) -> CouplingMask:
    """Build a mask for inputs of one sample shape.

    Args:
        kind: a name in :data:`MASKS`.
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
    entry = MASKS[kind]
    if entry.inputs == "images" and len(shape) != 3:
        raise ConfigError(f"a {kind} mask needs an image shape (C, H, W), got {shape}")
    return replace(entry.build(shape, index), layout=entry.layout)
