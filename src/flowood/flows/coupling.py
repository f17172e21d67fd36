"""Affine coupling layers: one base class and one subclass per way of splitting the input.

For the transformed part ``x_b`` of the input, conditioned on the visible part ``x_a``::

    s, t = st_net(x_a)            s = rescale * tanh(raw_s)   (bounded, a learnable scale per channel)
    y_b  = (x_b + t) * exp(s)     log |det J| = sum(s over the transformed part)

This is the form of the paper's code: ``-t`` is the coupling's *prediction* of the masked
pixels, and ``exp(s)`` how confident it is. The likelihood is high whenever ``-t`` predicts
``x_b`` well, in- or out-of-distribution; this is the mechanism the paper dissects.

:class:`AffineCoupling` holds what every coupling shares (the st-network, the rescale, the affine map and its
log-determinant, the masks for inspection); a subclass says only how the input splits and joins, as nflows'
``CouplingTransform`` subclasses do:

* :class:`MaskedCoupling`: spatial masks applied by multiplication (checkerboard, horizontal, vertical, cycle,
  tabular): the st-network sees ``x * condition``; ``s`` and ``t`` act only where ``transform`` is 1.
* :class:`ChannelCoupling`: channel halves, by slicing (the st-network sees only the conditioning channels).
* :class:`PackedCheckerboardCoupling`: the two halves of a checkerboard gathered into half-width tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from flowood.flows.base import FlowLayer, per_sample_sum
from flowood.flows.masks import CouplingMask
from flowood.flows.nets import weight_norm
from flowood.flows.precision import run_st_net

__all__ = ["AffineCoupling", "MaskedCoupling", "ChannelCoupling", "PackedCheckerboardCoupling", "Rescale",
           "COUPLINGS", "make_coupling"]


class Rescale(nn.Module):
    """The learnable per-channel scale of ``tanh(raw_s)``, weight-normalised as in the original code
    (``torch.nn.utils.weight_norm(Rescale(C))``): ``scale = g * v / |v|``, so its size is ``g`` and its sign
    ``v``'s. Both start at 1. Parameters ``weight_g`` and ``weight_v`` of shape ``(C, 1, 1)`` for images,
    ``(D,)`` for vectors.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(shape))
        self.weight_v = nn.Parameter(torch.ones(shape))

    def forward(self) -> Tensor:
        """The scale, of the parameters' shape: ``g * v / |v|`` with the norm over all but the first dimension (of a
        vector, each entry's own absolute value), as :func:`flowood.flows.nets.weight_norm` computes it."""
        return weight_norm(self)


class AffineCoupling(FlowLayer):
    """Affine coupling layer ``y_b = (x_b + t(x_a)) * exp(s(x_a))`` for any :class:`CouplingMask`.

    The base of the couplings: a subclass says how the input splits and joins, one per mask layout (see
    :data:`COUPLINGS`); :func:`make_coupling` builds the one a mask needs. Works on images ``[B, C, H, W]`` and
    on vectors ``[B, D]``.

    Args:
        mask: which part is seen and which is transformed.
        st_net: maps the conditioning input to ``2 x`` the transformed channels (s and t).

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.

    Example:
        >>> from flowood.flows.masks import make_mask
        >>> from flowood.flows.nets import make_st_net
        >>> mask = make_mask("checkerboard", (1, 4, 4))
        >>> layer = make_coupling(mask, make_st_net("resnet", 1, 2, mid_channels=8, num_blocks=1))
        >>> type(layer).__name__
        'MaskedCoupling'
        >>> x = torch.randn(3, 1, 4, 4)
        >>> y, log_det = layer(x)
        >>> torch.allclose(layer.inverse(y), x, atol=1e-5)
        True
    """

    kind = "coupling"
    #: the submodule that computes s and t: any function keeps the coupling exact (INT8 export quantizes only it)
    conditioner = "st_net"

    def __init__(self, mask: CouplingMask, st_net: nn.Module) -> None:
        if type(self) is AffineCoupling:
            raise TypeError("AffineCoupling is the base of the couplings: build one with make_coupling(mask, st_net), "
                            "which picks the subclass the mask's layout needs")
        super().__init__()
        self.mask_kind = mask.kind
        self.mask_index = mask.index
        self.register_buffer("condition", mask.condition.unsqueeze(0), persistent=False)
        self.register_buffer("transform", mask.transform.unsqueeze(0), persistent=False)
        rescale_shape = (self.num_scaled(mask),) + (1,) * (mask.condition.dim() - 1)
        self.rescale = Rescale(rescale_shape)
        self.st_net = st_net

    # -- what a subclass says ---------------------------------------------------------------------------------
    def num_scaled(self, mask: CouplingMask) -> int:
        """Channels (features) of ``s``: the rescale has one weight each."""
        return mask.condition.shape[0]

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """``(conditioning input of the st-network, the part the affine map acts on)``."""
        raise NotImplementedError

    def join(self, x_a: Tensor, y_b: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Inverse of :meth:`split`, with the transformed part replaced by ``y_b``."""
        raise NotImplementedError

    def restrict(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``s`` and ``t`` where they act (masked couplings zero them elsewhere)."""
        return s, t

    def full_size(self, v: Tensor, x: Tensor) -> Tensor:
        """``s`` or ``t`` placed in a tensor of ``x``'s shape (zeros where nothing is transformed)."""
        return v

    # -- shared ------------------------------------------------------------------------------------------------
    def _st(self, x_a: Tensor) -> tuple[Tensor, Tensor]:
        raw = run_st_net(self.st_net, x_a)  # fp32 out, also under mixed precision
        raw_s, t = raw.chunk(2, dim=1)
        # a channel slice of a channels-last tensor is strided, and unary ops on strided tensors take a slow
        # path (tanh 4-5x slower on the CPU); one contiguous copy of the slice is cheaper
        s = self.rescale() * torch.tanh(raw_s.contiguous())
        return self.restrict(s, t)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x_a, x_b = self.split(x)
        s, t = self._st(x_a)
        return self.join(x_a, (x_b + t) * torch.exp(s)), per_sample_sum(s), s, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det, _, _ = self._forward(x)
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        y_a, y_b = self.split(y)
        s, t = self._st(y_a)
        return self.join(y_a, y_b * torch.exp(-s) - t)

    def trace_forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """Forward pass that also returns the input, s, t and the masks as full-size tensors, so every mask
        kind is inspected the same way."""
        y, log_det, s, t = self._forward(x)
        return y, log_det, {"input": x, "s": self.full_size(s, x), "t": self.full_size(t, x),
                            "condition": self.condition.expand_as(x[:1])[0],
                            "transform": self.transform.expand_as(x[:1])[0]}

    def extra_repr(self) -> str:
        return f"mask={self.mask_kind}:{self.mask_index}"


class MaskedCoupling(AffineCoupling):
    """A coupling whose mask multiplies: the st-network sees ``x * condition`` and ``s``, ``t`` are zeroed where
    ``transform`` is 0, so those entries pass through exactly (``(x + 0) * exp(0) = x``). Checkerboard,
    horizontal, vertical and cycle masks on images, and the tabular mask on vectors."""

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x * self.condition, x

    def join(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        return y_b

    def restrict(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return s * self.transform, t * self.transform


class ChannelCoupling(AffineCoupling):
    """A coupling on channel halves, by slicing (RealNVP's channel-wise and Glow's couplings): mask index 0
    transforms the first half of the channels, index 1 the second; the st-network sees only the other half."""

    def __init__(self, mask: CouplingMask, st_net: nn.Module) -> None:
        self.channels = mask.condition.shape[0]
        self.transformed_first = mask.index == 0
        super().__init__(mask, st_net)

    def num_scaled(self, mask: CouplingMask) -> int:
        half = self.channels // 2
        return half if self.transformed_first else self.channels - half

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        half = self.channels // 2
        if self.transformed_first:
            return x[:, half:], x[:, :half]
        return x[:, :half], x[:, half:]

    def join(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        return torch.cat((y_b, x_a), 1) if self.transformed_first else torch.cat((x_a, y_b), 1)

    def full_size(self, v: Tensor, x: Tensor) -> Tensor:
        full = torch.zeros_like(x)
        half = self.channels // 2
        full[:, slice(0, half) if self.transformed_first else slice(half, None)] = v
        return full


class PackedCheckerboardCoupling(AffineCoupling):
    """A checkerboard coupling on half-width tensors: row ``i`` keeps its own pixels of each half, in order,
    so the st-network sees and predicts only those (half the convolution work of :class:`MaskedCoupling`, the
    same pixels; not the paper's model, whose st-networks see the masked full-size image)."""

    def __init__(self, mask: CouplingMask, st_net: nn.Module) -> None:
        super().__init__(mask, st_net)
        # row i's conditioning pixels sit in the even columns when condition[:, i, 0] is 1
        self.register_buffer("condition_in_even_columns", mask.condition[0, :, 0].bool().view(1, 1, -1, 1),
                             persistent=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        pairs = x.reshape(b, c, h, w // 2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        sel = self.condition_in_even_columns
        return torch.where(sel, even, odd), torch.where(sel, odd, even)

    def join(self, x_a: Tensor, y_b: Tensor) -> Tensor:
        sel = self.condition_in_even_columns
        pairs = torch.stack((torch.where(sel, x_a, y_b), torch.where(sel, y_b, x_a)), dim=-1)
        b, c, h, half = x_a.shape
        return pairs.reshape(b, c, h, 2 * half)

    def full_size(self, v: Tensor, x: Tensor) -> Tensor:
        return self.join(torch.zeros_like(v), v)


#: the coupling class of each mask layout (see :class:`flowood.flows.masks.CouplingMask`).
COUPLINGS: dict[str, type[AffineCoupling]] = {"masked": MaskedCoupling, "channel": ChannelCoupling,
                                              "packed": PackedCheckerboardCoupling}


def make_coupling(mask: CouplingMask, st_net: nn.Module) -> AffineCoupling:
    """The affine coupling for ``mask``: the :data:`COUPLINGS` subclass of its layout, around ``st_net``.

    Example:
        >>> from flowood.flows.masks import make_mask
        >>> type(make_coupling(make_mask("channel", (2, 4, 4)), nn.Conv2d(1, 2, 1))).__name__
        'ChannelCoupling'
    """
    return COUPLINGS[mask.layout](mask, st_net)
