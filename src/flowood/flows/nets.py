"""st-networks: the networks inside coupling layers that predict the scale s and shift t.

Every network maps the conditioning input to ``out_channels`` channels (``2 x`` the transformed
channels: s and t). The last layer starts at zero (``init_zeros``), so each coupling begins as
the identity, which makes deep flows train stably.

Types (``st_type``, the original code's names):
    ``resnet``: RealNVP's ResNet (Dinh et al. 2017) with skip connections.
    ``convnet``: Glow's three-layer convolutional network (Kingma & Dhariwal 2018).
    ``highway``: the highway network the paper's code uses for Glow.
    ``autoencoder``: the paper's bottleneck st-network: convolutional encoder, a fully connected
    bottleneck of ``latent_dim`` units, decoder. Smaller ``latent_dim`` limits what a coupling can
    predict (Kirichenko et al. 2020, Section 6).
    ``resnet_ae``: RealNVP's ResNet with a fully connected ``latent_dim`` bottleneck halfway.
    ``mlp``: a multilayer perceptron for vectors (tabular flows).

Activations are applied in place wherever their input is a fresh output that nothing else needs (a
convolution's, a linear layer's, BatchNorm's): the same numbers, one full pass over the largest tensors fewer,
which on a CPU whose memory bandwidth is the limit saves about a third of each activation's time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowood.options import ConfigError

__all__ = ["ResNetST", "ConvNetST", "HighwayST", "BottleneckST", "ResNetBottleneckST", "MLPST",
           "make_st_net", "ST_TYPES", "IMAGE_ST_TYPES"]

IMAGE_ST_TYPES = ("resnet", "convnet", "highway", "autoencoder", "resnet_ae")
ST_TYPES = IMAGE_ST_TYPES + ("mlp",)


def _zero_init(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def _maybe_zero(layer: nn.Module, init_zeros: bool) -> nn.Module:
    return _zero_init(layer) if init_zeros else layer


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, batchnorm: bool) -> None:
        super().__init__()
        self.batchnorm = batchnorm
        self.in_norm = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.in_conv = nn.Conv2d(channels, channels, 3, padding=1, bias=not batchnorm)
        self.out_norm = nn.BatchNorm2d(channels) if batchnorm else nn.Identity()
        self.out_conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.in_conv(F.relu(self.in_norm(x), inplace=self.batchnorm))  # in place only on a fresh BN output
        h = self.out_conv(F.relu(self.out_norm(h), inplace=True))
        return x + h


class ResNetST(nn.Module):
    """RealNVP's ResNet st-network.

    The input is normalised, concatenated with its negation (so ReLU keeps both signs), passed
    through ``num_blocks`` residual blocks whose outputs are also summed through 1x1 skip
    convolutions, and mapped to ``out_channels`` by a 1x1 convolution.

    Args:
        in_channels: channels of the conditioning input.
        out_channels: channels to predict (2 x transformed channels).
        mid_channels: width of the hidden layers.
        num_blocks: residual blocks.
        batchnorm: use BatchNorm (the original's default; ``--no_batchnorm`` turns it off).
        skip: sum 1x1 skip connections from every block (the original's default).
        init_zeros: start the output layer at zero.
        bottleneck: if set, ``(latent_dim, (H, W))``: a fully connected bottleneck of
            ``latent_dim`` units after half of the blocks (the ``resnet_ae`` st-network).

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64, num_blocks: int = 8,
                 batchnorm: bool = True, skip: bool = True, init_zeros: bool = True,
                 bottleneck: tuple[int, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.batchnorm = batchnorm
        self.in_norm = nn.BatchNorm2d(in_channels) if batchnorm else nn.Identity()
        self.in_conv = nn.Conv2d(2 * in_channels, mid_channels, 3, padding=1)
        self.blocks = nn.ModuleList(_ResidualBlock(mid_channels, batchnorm) for _ in range(num_blocks))
        self.skip = skip and bottleneck is None
        if self.skip:
            self.in_skip = nn.Conv2d(mid_channels, mid_channels, 1)
            self.skips = nn.ModuleList(nn.Conv2d(mid_channels, mid_channels, 1) for _ in range(num_blocks))
        self.bottleneck = None
        if bottleneck is not None:
            latent_dim, (h, w) = bottleneck
            features = mid_channels * h * w
            self.bottleneck = nn.Sequential(nn.Flatten(), nn.Linear(features, latent_dim),
                                            nn.Linear(latent_dim, features),
                                            nn.Unflatten(1, (mid_channels, h, w)))
            self.bottleneck_after = max(num_blocks // 2, 1) - 1 if num_blocks else -1
        self.out_norm = nn.BatchNorm2d(mid_channels) if batchnorm else nn.Identity()
        self.out_conv = _maybe_zero(nn.Conv2d(mid_channels, out_channels, 1), init_zeros)

    def forward(self, x: Tensor) -> Tensor:
        x = self.in_norm(x)
        x = self.in_conv(F.relu(torch.cat((x, -x), dim=1), inplace=True))
        if self.bottleneck is not None and self.bottleneck_after < 0:
            x = self.bottleneck(x)
        x_skip = self.in_skip(x) if self.skip else None
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.skip:
                x_skip = x_skip + self.skips[i](x)
            if self.bottleneck is not None and i == self.bottleneck_after:
                x = self.bottleneck(x)
        if self.skip:
            x = x_skip
        return self.out_conv(F.relu(self.out_norm(x), inplace=self.batchnorm))


class ResNetBottleneckST(ResNetST):
    """RealNVP's ResNet with a fully connected ``latent_dim`` bottleneck after half of its blocks.

    Args:
        in_channels, out_channels, mid_channels, num_blocks, batchnorm, init_zeros: as :class:`ResNetST`.
        spatial: the input's ``(H, W)``, needed for the fully connected bottleneck.
        latent_dim: bottleneck size l.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], latent_dim: int = 100,
                 mid_channels: int = 64, num_blocks: int = 8, batchnorm: bool = True,
                 init_zeros: bool = True) -> None:
        super().__init__(in_channels, out_channels, mid_channels, num_blocks, batchnorm, skip=False,
                         init_zeros=init_zeros, bottleneck=(latent_dim, tuple(spatial)))


class ConvNetST(nn.Module):
    """Glow's st-network: 3x3 conv, ``num_blocks - 1`` 1x1 convs, zero-initialised 3x3 output conv.

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 512, num_blocks: int = 2,
                 init_zeros: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, mid_channels, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(max(num_blocks - 1, 0)):
            layers += [nn.Conv2d(mid_channels, mid_channels, 1), nn.ReLU(inplace=True)]
        layers.append(_maybe_zero(nn.Conv2d(mid_channels, out_channels, 3, padding=1), init_zeros))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _HighwayLayer(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_h = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv_gate = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.conv_gate(x))
        return F.relu(self.conv_h(x), inplace=True) * gate + x * (1.0 - gate)


class HighwayST(nn.Module):
    """Highway st-network: input conv, ``num_blocks`` gated highway layers, zero-initialised 1x1 output.

    References:
        Srivastava, Greff, Schmidhuber. Highway Networks. 2015. Used for Glow in Kirichenko et al. 2020.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 64, num_blocks: int = 3,
                 init_zeros: bool = True) -> None:
        super().__init__()
        self.in_conv = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.layers = nn.Sequential(*(_HighwayLayer(mid_channels) for _ in range(num_blocks)))
        self.out_conv = _maybe_zero(nn.Conv2d(mid_channels, out_channels, 1), init_zeros)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_conv(self.layers(F.relu(self.in_conv(x), inplace=True)))


class BottleneckST(nn.Module):
    """The paper's bottleneck ("autoencoder") st-network, whose capacity is limited by ``latent_dim``.

    A convolutional encoder halves the resolution (stride-2 convolutions, doubling the width up
    to ``2 * mid_channels``) until it is at most 4x4, a fully connected layer maps to
    ``latent_dim`` units and one maps back, and a mirrored decoder upsamples to the input size,
    ending in a zero-initialised 3x3 convolution. Everything the layer predicts passes through
    ``latent_dim`` numbers, so it cannot copy local pixel detail from its input.

    Args:
        in_channels, out_channels: as for every st-network.
        spatial: the input's ``(H, W)``.
        latent_dim: bottleneck size l (the paper sweeps it; smaller means better OOD detection).
        mid_channels: width of the first convolution.
        init_zeros: start the output layer at zero.

    References:
        Kirichenko, Izmailov, Wilson. Why Normalizing Flows Fail to Detect Out-of-Distribution
        Data. NeurIPS 2020, Section 6.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial: tuple[int, int], latent_dim: int = 100,
                 mid_channels: int = 32, init_zeros: bool = True) -> None:
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


class MLPST(nn.Module):
    """Multilayer perceptron st-network for vectors, as in the original's tabular RealNVP.

    Args:
        in_features: features of the conditioning input.
        out_features: features to predict (2 x transformed features).
        hidden_units: width of each hidden layer.
        num_hidden_layers: hidden layers after the first (the original's ``--num_hidden_layers``).
        init_zeros: start the output layer at zero.
    """

    def __init__(self, in_features: int, out_features: int, hidden_units: int = 256, num_hidden_layers: int = 1,
                 init_zeros: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_features, hidden_units), nn.ReLU(inplace=True)]
        for _ in range(num_hidden_layers):
            layers += [nn.Linear(hidden_units, hidden_units), nn.ReLU(inplace=True)]
        layers.append(_maybe_zero(nn.Linear(hidden_units, out_features), init_zeros))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def make_st_net(st_type: str, in_channels: int, out_channels: int, spatial: tuple[int, ...] = (),
                mid_channels: int = 64, num_blocks: int = 8, latent_dim: int = 100, batchnorm: bool = True,
                skip: bool = True, init_zeros: bool = True) -> nn.Module:
    """Build an st-network by its original name (see the module docstring for the types).

    Args:
        st_type: one of :data:`ST_TYPES`.
        in_channels: channels (features for ``mlp``) of the conditioning input.
        out_channels: channels to predict: 2 x the transformed channels.
        spatial: ``(H, W)`` of the input; needed by the bottleneck networks.
        mid_channels: hidden width (hidden units for ``mlp``).
        num_blocks: residual/highway blocks, conv layers for ``convnet``, hidden layers for ``mlp``.
        latent_dim: bottleneck size for ``autoencoder`` and ``resnet_ae``.
        batchnorm: BatchNorm in ``resnet`` and ``resnet_ae``.
        skip: skip connections in ``resnet``.
        init_zeros: zero-initialise the output layer.
    """
    if st_type == "resnet":
        return ResNetST(in_channels, out_channels, mid_channels, num_blocks, batchnorm, skip, init_zeros)
    if st_type == "resnet_ae":
        return ResNetBottleneckST(in_channels, out_channels, tuple(spatial), latent_dim, mid_channels, num_blocks,
                                  batchnorm, init_zeros)
    if st_type == "convnet":
        return ConvNetST(in_channels, out_channels, mid_channels, num_blocks, init_zeros)
    if st_type == "highway":
        return HighwayST(in_channels, out_channels, mid_channels, num_blocks, init_zeros)
    if st_type == "autoencoder":
        return BottleneckST(in_channels, out_channels, tuple(spatial), latent_dim, mid_channels, init_zeros)
    if st_type == "mlp":
        return MLPST(in_channels, out_channels, mid_channels, num_blocks, init_zeros)
    raise ConfigError(f"unknown st_type {st_type!r}; choose one of {', '.join(ST_TYPES)}")
