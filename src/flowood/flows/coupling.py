"""The affine coupling layer, driven by a mask and an st-network.

For the transformed part ``x_b`` of the input, conditioned on the visible part ``x_a``::

    s, t = st_net(x_a)            s = rescale * tanh(raw_s)   (bounded, learnable per channel)
    y_b  = (x_b + t) * exp(s)     log |det J| = sum(s over the transformed part)

This is the form of the paper's code: ``-t`` is the coupling's *prediction* of the masked
pixels, and ``exp(s)`` how confident it is. The likelihood is high whenever ``-t`` predicts
``x_b`` well, in- or out-of-distribution; this is the mechanism the paper dissects.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowood.flows.base import FlowLayer, per_sample_sum
from flowood.flows.masks import CouplingMask
from flowood.flows.precision import run_st_net

__all__ = ["AffineCoupling"]


class AffineCoupling(FlowLayer):
    """Affine coupling layer ``y_b = (x_b + t(x_a)) * exp(s(x_a))`` for any :class:`CouplingMask`.

    Channel masks are applied by slicing (the st-network sees only the conditioning channels, as
    in RealNVP and Glow); ``checkerboard_packed`` gathers each half of the checkerboard into a tensor of
    half the width (row ``i`` keeps its own pixels of that half, in order), so the st-network sees and
    predicts only those; all other masks multiply: the st-network sees ``x * condition`` and
    ``s``, ``t`` act only where ``transform`` is 1. Works on images ``[B, C, H, W]`` and on
    vectors ``[B, D]``.

    Args:
        mask: which part is seen and which is transformed.
        st_net: maps the conditioning input to ``2 x`` the transformed channels (s and t).

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.

    Example:
        >>> from flowood.flows.masks import make_mask
        >>> from flowood.flows.nets import make_st_net
        >>> mask = make_mask("checkerboard", (1, 4, 4))
        >>> layer = AffineCoupling(mask, make_st_net("resnet", 1, 2, mid_channels=8, num_blocks=1))
        >>> x = torch.randn(3, 1, 4, 4)
        >>> y, log_det = layer(x)
        >>> torch.allclose(layer.inverse(y), x, atol=1e-5)
        True
    """

    kind = "coupling"

    def __init__(self, mask: CouplingMask, st_net: nn.Module) -> None:
        super().__init__()
        self.mask_kind = mask.kind
        self.mask_index = mask.index
        self.channel_split = mask.is_channel_split
        self.packed = mask.is_packed
        num_channels = mask.condition.shape[0]
        if self.packed:
            # row i's conditioning pixels sit in the even columns when condition[:, i, 0] is 1
            self.register_buffer("condition_in_even_columns",
                                 mask.condition[0, :, 0].bool().view(1, 1, -1, 1), persistent=False)
        self.register_buffer("condition", mask.condition.unsqueeze(0), persistent=False)
        self.register_buffer("transform", mask.transform.unsqueeze(0), persistent=False)
        if self.channel_split:
            self.split = num_channels // 2
            # index 0 transforms the first half, index 1 the second half
            self.transformed_first = mask.index == 0
            num_scaled = self.split if self.transformed_first else num_channels - self.split
        else:
            num_scaled = num_channels
        rescale_shape = (num_scaled,) + (1,) * (mask.condition.dim() - 1)
        self.rescale = nn.Parameter(torch.ones(rescale_shape))
        self.st_net = st_net

    # -- helpers ---------------------------------------------------------------------------
    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(transformed part, conditioning part) for channel masks."""
        if self.transformed_first:
            return x[:, : self.split], x[:, self.split:]
        return x[:, self.split:], x[:, : self.split]

    def _join(self, changed: Tensor, kept: Tensor) -> Tensor:
        return torch.cat((changed, kept), 1) if self.transformed_first else torch.cat((kept, changed), 1)

    def _pack(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning half, transformed half) of a checkerboard, each ``[B, C, H, W/2]``."""
        b, c, h, w = x.shape
        pairs = x.reshape(b, c, h, w // 2, 2)
        even, odd = pairs[..., 0], pairs[..., 1]
        sel = self.condition_in_even_columns
        return torch.where(sel, even, odd), torch.where(sel, odd, even)

    def _unpack(self, kept: Tensor, changed: Tensor) -> Tensor:
        """Inverse of :meth:`_pack`."""
        sel = self.condition_in_even_columns
        pairs = torch.stack((torch.where(sel, kept, changed), torch.where(sel, changed, kept)), dim=-1)
        b, c, h, half = kept.shape
        return pairs.reshape(b, c, h, 2 * half)

    def _st(self, cond_input: Tensor) -> tuple[Tensor, Tensor]:
        raw = run_st_net(self.st_net, cond_input)  # fp32 out, also under mixed precision
        raw_s, t = raw.chunk(2, dim=1)
        # a channel slice of a channels-last tensor is strided, and unary ops on strided tensors take a slow
        # path (tanh 4-5x slower on the CPU); one contiguous copy of the slice is cheaper
        s = self.rescale * torch.tanh(raw_s.contiguous())
        return s, t

    # -- flow API --------------------------------------------------------------------------
    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.channel_split:
            x_b, x_a = self._parts(x)
            s, t = self._st(x_a)
            y = self._join((x_b + t) * torch.exp(s), x_a)
        elif self.packed:
            x_a, x_b = self._pack(x)
            s, t = self._st(x_a)
            y = self._unpack(x_a, (x_b + t) * torch.exp(s))
        else:
            s, t = self._st(x * self.condition)
            s = s * self.transform
            t = t * self.transform
            y = x * (1.0 - self.transform) + (x + t) * torch.exp(s) * self.transform
        return y, per_sample_sum(s), s, t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_det, _, _ = self._forward(x)
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        if self.channel_split:
            y_b, y_a = self._parts(y)
            s, t = self._st(y_a)
            return self._join(y_b * torch.exp(-s) - t, y_a)
        if self.packed:
            y_a, y_b = self._pack(y)
            s, t = self._st(y_a)
            return self._unpack(y_a, y_b * torch.exp(-s) - t)
        s, t = self._st(y * self.condition)
        s = s * self.transform
        t = t * self.transform
        return y * (1.0 - self.transform) + (y * torch.exp(-s) - t) * self.transform

    def trace_forward(self, x: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Forward pass that also returns the input, s, t and the masks as full-size tensors.

        For channel and packed checkerboard masks ``s`` and ``t`` are placed into zero tensors of the
        input's shape, so every mask kind is inspected the same way.
        """
        y, log_det, s, t = self._forward(x)
        if self.channel_split:
            full_s, full_t = torch.zeros_like(x), torch.zeros_like(x)
            target = slice(0, self.split) if self.transformed_first else slice(self.split, None)
            full_s[:, target], full_t[:, target] = s, t
            s, t = full_s, full_t
        elif self.packed:
            s, t = self._unpack(torch.zeros_like(s), s), self._unpack(torch.zeros_like(t), t)
        return y, log_det, {"input": x, "s": s, "t": t,
                            "condition": self.condition.expand_as(x[:1])[0],
                            "transform": self.transform.expand_as(x[:1])[0]}

    def extra_repr(self) -> str:
        return f"mask={self.mask_kind}:{self.mask_index}"
