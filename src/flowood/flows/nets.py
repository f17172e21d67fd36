"""st-networks: the networks inside coupling layers that predict the scale s and shift t.

Every network maps the conditioning input to ``out_channels`` channels (``2 x`` the transformed
channels: s and t). The types carry the original code's names (Kirichenko et al. 2020,
``flow_ssl``), and each of them is that code's network: the same layers, shapes, parameter count and
initialisation, so a paper-scale config builds the paper's model. flowood's own variants have names of
their own.

The original's networks (``st_type``):
    ``resnet``: RealNVP's ResNet (Dinh et al. 2017) with weight-normalised convolutions, skip connections and,
    for checkerboard masks, the input doubled after its BatchNorm.
    ``resnet_ae``: the same ResNet without skips and with a fully connected ``latent_dim`` bottleneck halfway.
    ``convnet``: weight-normalised 3x3 convolutions without activations (the original's ``ConvNetCoupling``).
    ``glow_convnet``: Glow's three-layer network (Kingma & Dhariwal 2018): 3x3 conv, ReLU, 1x1 conv, ReLU,
    zero-initialised 3x3 conv.
    ``highway``: the highway network the paper's Glow uses.
    ``autoencoder``: the paper's bottleneck st-network (Section 7): 4x4 convolutions of widths 32/64/64/128, a
    linear ``latent_dim`` bottleneck, a transposed-convolution decoder.
    ``mlp``: the tabular RealNVP's perceptron.

flowood's own:
    ``conv_bottleneck``: a bottleneck network for any image size: stride-2 3x3 convolutions down to at most 4x4,
    a ``latent_dim`` bottleneck, an upsampling decoder with a zero-initialised output (not the paper's).

``weight_norm=False`` gives ``resnet``, ``resnet_ae`` and ``convnet`` plain convolutions instead of
weight-normalised ones (not the paper's). Activations are applied in place wherever their input is a fresh
output that nothing else needs: the same numbers, one full pass over the largest tensors fewer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.weight_norm import WeightNorm

from flowood.options import ConfigError
from flowood.variants import Registry, declared_parameters

__all__ = ["WeightNormConv2d", "ResNetST", "ResNetBottleneckST", "ConvNetST", "GlowConvNetST", "HighwayST",
           "AutoencoderST", "ConvBottleneckST", "MLPST", "ST_NETWORKS", "register_st_net", "make_st_net",
           "st_net_options", "image_st_types"]

#: every st-network by name (see :func:`register_st_net`); a network's class attribute ``inputs`` says whether it
#: conditions on images ``(B, C, H, W)`` or vectors ``(B, D)``.
ST_NETWORKS: Registry[type[nn.Module]] = Registry("st-network", "st_type")


def register_st_net(name: str, *, replace: bool = False) -> Any:
    """Class decorator that adds an st-network to :data:`ST_NETWORKS` under ``name``.

    The class takes ``(in_channels, out_channels, ...)`` positionally, then the keyword parameters it needs among
    those a flow passes (see :func:`st_net_options`). Once registered, ``FlowConfig(st_type=name)`` builds it in an
    image flow. A class attribute ``inputs = "vectors"`` marks a network on vectors instead (the tabular RealNVP's
    ``mlp``), which image flows do not offer.

    Example:
        >>> @register_st_net("tiny_conv")
        ... class TinyConvST(nn.Conv2d):
        ...     '''One 3x3 convolution.'''
        ...     def __init__(self, in_channels, out_channels, init_zeros=False):
        ...         super().__init__(in_channels, out_channels, 3, padding=1)
        >>> make_st_net("tiny_conv", 2, 4)
        TinyConvST(2, 4, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
        >>> _ = ST_NETWORKS.unregister("tiny_conv")
    """
    return ST_NETWORKS.register(name, replace=replace)


#: torch.nn.utils.weight_norm's computation (the original code's), reached through its public class
_WEIGHT_NORM = WeightNorm("weight", 0)


def weight_norm(layer: nn.Module) -> Tensor:
    """A layer's weight ``g * v / ||v||`` from its parameters ``weight_g`` and ``weight_v``, the norm over every
    dimension but the first, computed as the original code's ``torch.nn.utils.weight_norm`` computes it: with
    PyTorch's ``_weight_norm`` kernel.

    The written-out product is the same function, but not the same arithmetic: on a CPU with AVX-512, a RealNVP
    trained 200 steps side by side with the original code (the same weights, batches and noise, 6 seeds) gave MNIST
    AUROCs 0.0097 lower and test bits/dim 0.070 higher in 6 of 6 seeds with the written-out form, and matched with the
    kernel (docs/results/side_by_side_training.md). Under ``torch.export`` (ONNX export), and for vectors, the form is
    written out: the exporter's decomposition of ``_weight_norm`` takes the norm of a whole vector.
    """
    v, g = layer.weight_v, layer.weight_g
    if v.dim() > 1 and not torch.compiler.is_exporting():
        w = _WEIGHT_NORM.compute_weight(layer)  # PyTorch's _weight_norm(v, g, 0)
        if v.dim() == 4 and not v.is_contiguous() and v.is_contiguous(memory_format=torch.channels_last):
            w = w.contiguous(memory_format=torch.channels_last)  # the kernel returns contiguous memory
        return w
    norm = torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape((-1,) + (1,) * (v.dim() - 1))
    return v * (g / norm)


class WeightNormConv2d(nn.Module):
    """A convolution with weight normalisation: ``weight = g * v / ||v||``, one norm per output channel.

    Parameters ``weight_g`` (shape ``(out, 1, 1, 1)``) and ``weight_v`` (the convolution's weight shape), as
    ``torch.nn.utils.weight_norm(nn.Conv2d(...))`` names them in the original code. It starts from PyTorch's
    default convolution initialisation (``g = ||v||``), so the effective weight is the plain convolution's.

    Args:
        in_channels, out_channels, kernel_size, padding: as :class:`torch.nn.Conv2d`.
        bias: learn an additive bias.

    References:
        Salimans, Kingma. Weight Normalization. NeurIPS 2016.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        self.padding = padding
        self.bias = conv.bias
        self.weight_g = nn.Parameter(torch.linalg.vector_norm(conv.weight.detach(), dim=(1, 2, 3), keepdim=True))
        self.weight_v = nn.Parameter(conv.weight.detach().clone())

    @property
    def in_channels(self) -> int:
        return self.weight_v.shape[1]

    @property
    def out_channels(self) -> int:
        return self.weight_v.shape[0]

    @property
    def weight(self) -> Tensor:
        """The effective convolution weight ``g * v / ||v||`` (:func:`weight_norm`)."""
        return weight_norm(self)

    def zero_(self) -> WeightNormConv2d:
        """Make the output exactly zero (``g = 0``, bias 0): the layer starts at zero and still learns."""
        with torch.no_grad():
            self.weight_g.zero_()
            if self.bias is not None:
                self.bias.zero_()
        return self

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        k = self.weight_v.shape[-1]
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={k}, padding={self.padding}, "
                f"bias={self.bias is not None}")


def _conv(cin: int, cout: int, kernel: int, padding: int = 0, bias: bool = True,
          weight_norm: bool = True) -> nn.Module:
    if weight_norm:
        return WeightNormConv2d(cin, cout, kernel, padding, bias)
    return nn.Conv2d(cin, cout, kernel, padding=padding, bias=bias)


def _zero(layer: nn.Module) -> nn.Module:
    """Zero a layer's output: weight-normalised ones through ``g``, others through weight and bias."""
    if isinstance(layer, WeightNormConv2d):
        return layer.zero_()
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _maybe_zero(layer: nn.Module, init_zeros: bool) -> nn.Module:
    return _zero(layer) if init_zeros else layer


def _normal(layer: nn.Conv2d, std: float = 0.05) -> nn.Conv2d:
    """Glow's initialisation of hidden convolutions: weights N(0, std^2), zero bias."""
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)
    return layer


class _ResidualBlock(nn.Module):
    """BatchNorm, ReLU, 3x3 conv without bias, BatchNorm, ReLU, 3x3 conv; plus the input."""

    def __init__(self, channels: int, batchnorm: bool, weight_norm: bool) -> None:
        super().__init__()
        self.batchnorm = batchnorm
        self.in_norm = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.in_conv = _conv(channels, channels, 3, 1, bias=False, weight_norm=weight_norm)
        self.out_norm = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.out_conv = _conv(channels, channels, 3, 1, weight_norm=weight_norm)

    def forward(self, x: Tensor) -> Tensor:
        h = self.in_conv(F.relu(self.in_norm(x), inplace=self.batchnorm))  # in place only on a fresh BN output
        h = self.out_conv(F.relu(self.out_norm(h), inplace=True))
        return x + h


@register_st_net("resnet")
class ResNetST(nn.Module):
    """RealNVP's ResNet st-network, the original's ``ResNet``.

    The input is normalised (and doubled, for checkerboard masks, whose input is half zeros), concatenated with
    its negation (so ReLU keeps both signs), passed through a 3x3 convolution and ``num_blocks`` residual
    blocks whose outputs are summed through 1x1 skip convolutions, and mapped to ``out_channels`` by a 1x1
    convolution. Every convolution is weight-normalised.

    Args:
        in_channels: channels of the conditioning input.
        out_channels: channels to predict (2 x transformed channels).
        mid_channels: width of the hidden layers.
        num_blocks: residual blocks.
        batchnorm: use BatchNorm (the original's default; ``--no_batchnorm`` turns it off).
        skip: sum 1x1 skip connections from every block (the original's default).
        init_zeros: start the output layer at zero.
        double_after_norm: double the input after its BatchNorm (the original does for checkerboard masks).
        weight_norm: weight-normalised convolutions (the original's); False: plain ones.

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64, num_blocks: int = 8,
                 batchnorm: bool = True, skip: bool = True, init_zeros: bool = False,
                 double_after_norm: bool = False, weight_norm: bool = True) -> None:
        super().__init__()
        self.batchnorm = batchnorm
        self.double_after_norm = double_after_norm and batchnorm  # (the original doubles only after a BatchNorm)
        self.in_norm = nn.BatchNorm2d(in_channels) if batchnorm else nn.Identity()
        self.in_conv = _conv(2 * in_channels, mid_channels, 3, 1, weight_norm=weight_norm)
        self.blocks = nn.ModuleList(_ResidualBlock(mid_channels, batchnorm, weight_norm) for _ in range(num_blocks))
        self.skip = skip
        if skip:
            self.in_skip = _conv(mid_channels, mid_channels, 1, weight_norm=weight_norm)
            self.skips = nn.ModuleList(_conv(mid_channels, mid_channels, 1, weight_norm=weight_norm)
                                       for _ in range(num_blocks))
        self.out_norm = nn.BatchNorm2d(mid_channels) if batchnorm else nn.Identity()
        self.out_conv = _maybe_zero(_conv(mid_channels, out_channels, 1, weight_norm=weight_norm), init_zeros)

    def stem(self, x: Tensor) -> Tensor:
        """Input normalisation, ``(x, -x)``, ReLU and the first convolution."""
        x = self.in_norm(x)
        if self.double_after_norm:
            x = 2.0 * x
        return self.in_conv(F.relu(torch.cat((x, -x), dim=1), inplace=True))

    def head(self, x: Tensor) -> Tensor:
        """Output normalisation, ReLU and the 1x1 output convolution."""
        return self.out_conv(F.relu(self.out_norm(x), inplace=self.batchnorm))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x_skip = self.in_skip(x) if self.skip else None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.skip:
                x_skip = x_skip + self.skips[i](x)
        return self.head(x_skip if self.skip else x)


@register_st_net("resnet_ae")
class ResNetBottleneckST(ResNetST):
    """The ResNet without skips and with a fully connected bottleneck after block ``num_blocks // 2``, the
    original's ``ResNetAE``: the activations are flattened, mapped to ``latent_dim`` numbers and back by two
    linear layers.

    Args:
        in_channels, out_channels, mid_channels, num_blocks: as :class:`ResNetST`.
        spatial: the input's ``(H, W)``, needed for the fully connected bottleneck.
        latent_dim: bottleneck size l.
        **resnet: :class:`ResNetST`'s ``batchnorm``, ``init_zeros``, ``double_after_norm`` and ``weight_norm``.

    Raises:
        ConfigError: ``num_blocks < 2`` (the bottleneck sits after block ``num_blocks // 2``; the original builds
            it but never applies it then).
    """

    #: the :class:`ResNetST` option this network fixes (it has no skip connections).
    fixed_options = ("skip",)

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], latent_dim: int = 100,
                 mid_channels: int = 64, num_blocks: int = 8, **resnet: Any) -> None:
        if num_blocks < 2:
            raise ConfigError(f"the resnet_ae st-network needs num_blocks >= 2 (its bottleneck follows block "
                              f"num_blocks // 2), got {num_blocks}")
        super().__init__(in_channels, out_channels, mid_channels, num_blocks, skip=False, **resnet)
        h, w = spatial
        self.features = (mid_channels, h, w)
        self.bottleneck = nn.Sequential(nn.Linear(mid_channels * h * w, latent_dim),
                                        nn.Linear(latent_dim, mid_channels * h * w))
        self.bottleneck_after = num_blocks // 2 - 1

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.bottleneck_after:
                x = self.bottleneck(x.flatten(1)).view(-1, *self.features)
        return self.head(x)


@register_st_net("convnet")
class ConvNetST(nn.Module):
    """The original's ``convnet``: a weight-normalised 3x3 convolution, ``num_blocks`` more, and a 1x1 output
    convolution, with no activation between them (as in the original code: a linear network).

    Args:
        in_channels, out_channels, mid_channels, num_blocks, init_zeros, weight_norm: as :class:`ResNetST`.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64, num_blocks: int = 8,
                 init_zeros: bool = False, weight_norm: bool = True) -> None:
        super().__init__()
        layers = [_conv(in_channels, mid_channels, 3, 1, weight_norm=weight_norm)]
        layers += [_conv(mid_channels, mid_channels, 3, 1, weight_norm=weight_norm) for _ in range(num_blocks)]
        layers.append(_maybe_zero(_conv(mid_channels, out_channels, 1, weight_norm=weight_norm), init_zeros))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


@register_st_net("glow_convnet")
class GlowConvNetST(nn.Sequential):
    """Glow's st-network: 3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 output conv. Hidden weights start N(0, 0.05^2)
    with zero biases and the output layer at zero, as in Glow; its depth is fixed (``num_blocks`` is not used).

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 512) -> None:
        super().__init__(_normal(nn.Conv2d(in_channels, mid_channels, 3, padding=1)), nn.ReLU(inplace=True),
                         _normal(nn.Conv2d(mid_channels, mid_channels, 1)), nn.ReLU(inplace=True),
                         _zero(nn.Conv2d(mid_channels, out_channels, 3, padding=1)))


class _HighwayLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_h = _normal(nn.Conv2d(channels, channels, 3, padding=1))
        self.conv_t = _normal(nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.conv_t(x))
        return self.conv_h(x) * gate + x * (1.0 - gate)


@register_st_net("highway")
class HighwayST(nn.Module):
    """The highway st-network of the paper's Glow: a 3x3 convolution, ``num_blocks`` highway layers
    ``h(x) * gate + x * (1 - gate)`` with ``gate = sigmoid(t(x))`` (3x3 convolutions ``h`` and ``t``, no other
    activation), and a zero-initialised 1x1 output convolution. Hidden weights start N(0, 0.05^2), biases at 0.

    References:
        Srivastava, Greff, Schmidhuber. Highway Networks. 2015. Used for Glow in Kirichenko et al. 2020.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64, num_blocks: int = 3) -> None:
        super().__init__()
        self.in_conv = _normal(nn.Conv2d(in_channels, mid_channels, 3, padding=1))
        self.layers = nn.Sequential(*(_HighwayLayer(mid_channels) for _ in range(num_blocks)))
        self.out_conv = _zero(nn.Conv2d(mid_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.out_conv(self.layers(self.in_conv(x)))


#: the paper's bottleneck network: encoder widths and kernel size (every padding 0).
_AE_WIDTHS, _AE_KERNEL = (32, 64, 64, 128), 4


def _autoencoder_sizes(size: int) -> list[int] | None:
    """Side lengths through the encoder for an input side ``size`` (strides 1, 1, s, s with s = size // 14), or
    None when the transposed-convolution decoder cannot restore ``size`` exactly."""
    stride = size // 14
    if stride < 1:
        return None
    sizes = [size]
    for s in (1, 1, stride, stride):
        sizes.append((sizes[-1] - _AE_KERNEL) // s + 1)
    if sizes[-1] < 1:
        return None
    back = sizes[-1]
    for s in (stride, stride, 1, 1):
        back = (back - 1) * s + _AE_KERNEL
    return sizes if back == size else None


@register_st_net("autoencoder")
class AutoencoderST(nn.Module):
    """The paper's bottleneck st-network (the original's ``AE``), whose capacity ``latent_dim`` limits.

    Encoder: four 4x4 convolutions without padding, widths 32, 64, 64, 128, strides 1, 1, s, s with
    ``s = side // 14``, each followed by LeakyReLU; then ``Linear(features, latent_dim)`` and
    ``Linear(latent_dim, features)`` with no activation between them; decoder: transposed convolutions back to
    64, 64, 32 (LeakyReLU after each) and to ``out_channels`` (no activation). Default PyTorch initialisation.
    Everything the layer predicts passes through ``latent_dim`` numbers, so it cannot copy local pixel detail
    from its input (Section 7 of the paper).

    Args:
        in_channels, out_channels: as for every st-network.
        spatial: the input's ``(H, W)``; the original supports sides where the decoder restores the size
            exactly (14 to 27, 28, 32, 36, 40, ...).
        latent_dim: bottleneck size l (the paper sweeps it; smaller means better OOD detection).

    Raises:
        ConfigError: for sides the network cannot reproduce.

    References:
        Kirichenko, Izmailov, Wilson. Why Normalizing Flows Fail to Detect Out-of-Distribution
        Data. NeurIPS 2020, Section 7.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], latent_dim: int = 100) -> None:
        super().__init__()
        per_axis = [_autoencoder_sizes(int(side)) for side in spatial]
        if any(sizes is None for sizes in per_axis):
            raise ConfigError(f"the autoencoder st-network (the paper's) cannot work on {spatial[0]}x{spatial[1]} "
                              "inputs: its decoder restores sides 14-28, 32, 36 or 40 exactly (it sees the image at "
                              "every scale of the flow). Use fewer num_scales, or st_type conv_bottleneck")
        stride = tuple(int(side) // 14 for side in spatial)
        widths = (in_channels,) + _AE_WIDTHS
        self.encoder = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], _AE_KERNEL, stride=stride if i >= 2 else 1),
                          nn.LeakyReLU(inplace=True)) for i in range(4)))
        self.latent_shape = (_AE_WIDTHS[-1], per_axis[0][-1], per_axis[1][-1])
        features = math.prod(self.latent_shape)
        self.fc_z = nn.Linear(features, latent_dim)
        self.decoder_input = nn.Linear(latent_dim, features)
        back = _AE_WIDTHS[::-1] + (out_channels,)
        self.decoder = nn.Sequential(*(
            nn.Sequential(nn.ConvTranspose2d(back[i], back[i + 1], _AE_KERNEL, stride=stride if i < 2 else 1),
                          *([nn.LeakyReLU(inplace=True)] if i < 3 else [])) for i in range(4)))

    def forward(self, x: Tensor) -> Tensor:
        code = self.fc_z(self.encoder(x).flatten(1))
        return self.decoder(self.decoder_input(code).view(-1, *self.latent_shape))


@register_st_net("conv_bottleneck")
class ConvBottleneckST(nn.Module):
    """flowood's bottleneck st-network for any image size (not the paper's: see :class:`AutoencoderST`).

    A convolutional encoder halves the resolution (stride-2 3x3 convolutions, doubling the width up to
    ``2 * mid_channels``) until it is at most 4x4, a fully connected layer maps to ``latent_dim`` units and
    one maps back, and a mirrored decoder upsamples to the input size, ending in a 3x3 convolution.

    Args:
        in_channels, out_channels: as for every st-network.
        spatial: the input's ``(H, W)``.
        latent_dim: bottleneck size l.
        mid_channels: width of the first convolution.
        init_zeros: start the output layer at zero.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], latent_dim: int = 100,
                 mid_channels: int = 32, init_zeros: bool = False) -> None:
        super().__init__()
        h, w = spatial
        widths, sizes = [mid_channels], [(h, w)]
        encoder: list[nn.Module] = [nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.LeakyReLU(inplace=True)]
        while max(sizes[-1]) > 4:
            c_next = min(2 * widths[-1], 2 * mid_channels)
            encoder += [nn.Conv2d(widths[-1], c_next, 3, stride=2, padding=1), nn.LeakyReLU(inplace=True)]
            sizes.append((math.ceil(sizes[-1][0] / 2), math.ceil(sizes[-1][1] / 2)))
            widths.append(c_next)
        features = widths[-1] * sizes[-1][0] * sizes[-1][1]
        encoder += [nn.Flatten(), nn.Linear(features, latent_dim)]
        decoder: list[nn.Module] = [nn.Linear(latent_dim, features), nn.LeakyReLU(inplace=True),
                                    nn.Unflatten(1, (widths[-1],) + sizes[-1])]
        for i in range(len(sizes) - 1, 0, -1):
            decoder += [nn.Upsample(size=sizes[i - 1], mode="nearest"),
                        nn.Conv2d(widths[i], widths[i - 1], 3, padding=1), nn.LeakyReLU(inplace=True)]
        decoder.append(_maybe_zero(nn.Conv2d(widths[0], out_channels, 3, padding=1), init_zeros))
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


@register_st_net("mlp")
class MLPST(nn.Module):
    """The tabular RealNVP's perceptron: ``Linear``, ReLU, (Dropout 0.5), ``num_hidden_layers`` x (``Linear``,
    ReLU), ``Linear`` to the output.

    Args:
        in_features: features of the conditioning input.
        out_features: features to predict (2 x transformed features).
        hidden_units: width of each hidden layer.
        num_hidden_layers: hidden layers after the first (the original's ``--num_hidden_layers``).
        init_zeros: start the output layer at zero.
        dropout: dropout with rate 0.5 after the first hidden layer (the original's ``--dropout``).
    """

    inputs = "vectors"

    def __init__(self, in_features: int, out_features: int, hidden_units: int = 256, num_hidden_layers: int = 1,
                 init_zeros: bool = False, dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, hidden_units), nn.ReLU(inplace=True)]
        if dropout:
            layers.append(nn.Dropout(0.5))
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(hidden_units, hidden_units), nn.ReLU(inplace=True)]
        layers.append(_maybe_zero(nn.Linear(hidden_units, out_features), init_zeros))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def image_st_types() -> tuple[str, ...]:
    """The registered st-networks that condition on images (``inputs`` is ``"images"``, the default)."""
    return ST_NETWORKS.names(lambda cls: getattr(cls, "inputs", "images") == "images")


def make_st_net(st_type: str, in_channels: int, out_channels: int, **options: Any) -> nn.Module:
    """Build an st-network by name (see :data:`ST_NETWORKS`).

    Args:
        st_type: a name in :data:`ST_NETWORKS`.
        in_channels: channels (features, for vector networks) of the conditioning input.
        out_channels: channels to predict: 2 x the transformed channels.
        **options: the keyword parameters the network's class declares (its docstring lists them).

    Raises:
        ConfigError: an unknown name, or an option the network does not take.
    """
    cls = ST_NETWORKS[st_type]
    declared = declared_parameters(cls, skip=2)
    unknown = sorted(set(options) - set(declared))
    if unknown:
        raise ConfigError(f"the {st_type} st-network does not take {', '.join(unknown)}; it takes "
                          f"{', '.join(declared) or 'no options'}")
    return cls(in_channels, out_channels, **options)


def st_net_options(st_type: str, available: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``available`` that the named st-network declares.

    A flow offers every network the same values (``spatial``, ``mid_channels``, ``num_blocks``, ``latent_dim``,
    ``batchnorm``, ``skip``, ``init_zeros``, ``double_after_norm``, ``weight_norm``, ...) and each takes the ones
    its constructor names, as nflows and zuko pass a variant its own keyword arguments.
    """
    declared = declared_parameters(ST_NETWORKS[st_type], skip=2)
    return {name: value for name, value in available.items() if name in declared}
