"""Normalizing flows in pure PyTorch: layers, masks, st-networks, RealNVP, Glow, tabular RealNVP, MAF.

No Lightning, no I/O: ``from flowood.flows import Glow`` pulls in torch and nothing heavy.

Example:
    >>> from flowood.flows import RealNVP
    >>> flow = RealNVP((1, 8, 8), num_blocks=1, num_mid_channels=8)
    >>> flow.bits_per_dim(torch.rand(4, 1, 8, 8)).shape
    torch.Size([4])
"""

from flowood.flows.architectures import MAF, Glow, RealNVP, RealNVPTabular, RegisteredFlow, build_flow, register_flow
from flowood.flows.autoregressive import MADE, MaskedAffineAutoregressive, ReversePermutation
from flowood.flows.base import FlowLayer, LayerRecord
from flowood.flows.config import FLOW_ALIASES, FLOWS, ConfigError, FlowConfig
from flowood.flows.coupling import (
    AffineCoupling,
    ChannelCoupling,
    MaskedCoupling,
    PackedCheckerboardCoupling,
    make_coupling,
)
from flowood.flows.layers import ActNorm, InvertibleConv1x1, Squeeze
from flowood.flows.masks import MASKS, CouplingMask, make_mask, register_mask
from flowood.flows.model import FlowModel, FlowTrace, Split, StandardNormal
from flowood.flows.nets import ST_NETWORKS, make_st_net, register_st_net
from flowood.flows.preprocessing import LogitTransform, dequantize, quantize

__all__ = [
    "ActNorm", "AffineCoupling", "ChannelCoupling", "ConfigError", "CouplingMask", "FLOWS", "FLOW_ALIASES",
    "FlowConfig", "FlowLayer", "FlowModel", "FlowTrace", "Glow", "InvertibleConv1x1", "LayerRecord", "LogitTransform",
    "MADE", "MAF", "MASKS", "MaskedAffineAutoregressive", "MaskedCoupling", "PackedCheckerboardCoupling",
    "ReversePermutation", "RealNVP", "RealNVPTabular", "RegisteredFlow", "ST_NETWORKS", "Split", "Squeeze",
    "StandardNormal", "build_flow", "dequantize", "make_coupling", "make_mask", "make_st_net", "quantize",
    "register_flow", "register_mask", "register_st_net",
]
