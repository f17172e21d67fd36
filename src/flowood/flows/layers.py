"""Glow's invertible layers and the squeeze: ActNorm, the invertible 1x1 convolution, space-to-depth."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from flowood.errors import InputError
from flowood.flows.base import FlowLayer

__all__ = ["ActNorm", "InvertibleConv1x1", "Squeeze", "Standardize", "set_standardization", "squeeze2d", "unsqueeze2d"]


def _loaded_flag(initialized: Tensor) -> bool:
    """The host mirror of a lazy layer's ``initialized`` buffer right after a state is loaded into it: read once
    there (loading copies tensors anyway), so a loaded, trained layer counts as initialised before any forward pass
    (compiled passes and exports need no eager pass first). Meta tensors have no value: not known yet."""
    return not initialized.is_meta and bool(initialized)


class ActNorm(FlowLayer):
    """Per-channel affine map ``y = (x + bias) * exp(log_scale)`` with data-dependent init.

    On its first forward pass the layer sets ``bias`` and ``log_scale`` so that this batch has
    zero mean and unit variance per channel (per feature for vectors). Under
    ``torch.distributed`` the statistics are averaged over all processes, so every replica starts
    from the same parameters. The ``initialized`` buffer is saved with the model, so a loaded
    checkpoint is never re-initialised.

    Args:
        num_channels: channels of image inputs ``[B, C, H, W]`` or features of vectors ``[B, C]``.
        eps: added to the standard deviation at initialisation.

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.

    Example:
        >>> layer = ActNorm(3)
        >>> y, log_det = layer(torch.randn(16, 3, 4, 4) * 5 + 2)
        >>> bool(y.mean(dim=(0, 2, 3)).abs().max() < 1e-4)
        True
    """

    kind = "actnorm"

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))
        # a Python mirror of the buffer once it is known to be True: reading the buffer in every forward would
        # synchronise a GPU with the host once per layer and pass
        self._known_initialized = False

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        return (1, self.num_channels) + (1,) * (x.dim() - 2)

    @property
    def initialization_pending(self) -> bool:
        """True until the layer is known to be initialised (by a forward pass or a loaded state); its next pass may
        initialise it from data."""
        return not self._known_initialized

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters so that ``x`` comes out with zero mean and unit variance."""
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        mean_sq = (x * x).mean(dim=dims)
        if dist.is_available() and dist.is_initialized():
            stats = torch.stack([mean, mean_sq])
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
            mean, mean_sq = stats[0], stats[1]
        std = torch.sqrt(torch.clamp(mean_sq - mean * mean, min=0.0)) + self.eps
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std))
        self.initialized.fill_(True)
        self._known_initialized = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = _loaded_flag(self.initialized)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self._known_initialized:
            if not bool(self.initialized):
                self.initialize(x)
            self._known_initialized = True
        shape = self._shape(x)
        y = (x + self.bias.view(shape)) * torch.exp(self.log_scale.view(shape))
        spatial = x[0, 0].numel()
        log_det = (self.log_scale.sum() * spatial).expand(x.shape[0])
        return y, log_det

    def inverse(self, y: Tensor) -> Tensor:
        shape = self._shape(y)
        return y * torch.exp(-self.log_scale.view(shape)) - self.bias.view(shape)

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}"


class Standardize(FlowLayer):
    """Fixed per-feature standardisation ``y = (x - mean) / std`` with the training set's statistics.

    The original code normalises UCI features with the training class's mean and standard deviation before its
    flows see them (``flow_ssl/data/miniboone.py``, ``hepmass.py``); this layer does the same inside the model,
    so every set scored later (the other class, new data) is measured in the training class's units, and the
    log-likelihood stays that of the raw features (log-determinant ``-sum(log std)``). It has no parameters,
    only buffers saved with the model, so parameter counts stay the original's. Training sets the statistics
    from the whole training set (:func:`set_standardization`); a layer never set takes them from its first batch.

    Args:
        num_features: features D of ``[B, D]`` inputs.

    Example:
        >>> layer = Standardize(2)
        >>> set_standardization(layer, torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
        True
        >>> layer(torch.tensor([[2.0, 30.0]]))[0]
        tensor([[1., 1.]])
    """

    kind = "standardize"

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False

    @property
    def initialization_pending(self) -> bool:
        """True until the statistics are known to be set (by a forward pass, :meth:`set_statistics` or a loaded
        state)."""
        return not self._known_initialized

    @torch.no_grad()
    def set_statistics(self, data: Tensor) -> None:
        """Mean and standard deviation (ddof 0, as numpy's) of ``data`` ``[N, D]``; constant features keep std 1."""
        data = data.to(self.mean.device, torch.float64)
        std = data.std(dim=0, unbiased=False)
        self.mean.copy_(data.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))
        self.initialized.fill_(True)
        self._known_initialized = True

    @torch.no_grad()
    def set_identity(self) -> None:
        """Mean 0 and std 1: for data already standardised outside the model (as the original code does)."""
        self.mean.zero_()
        self.std.fill_(1.0)
        self.initialized.fill_(True)
        self._known_initialized = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = _loaded_flag(self.initialized)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self._known_initialized:
            if not bool(self.initialized):
                self.set_statistics(x)
            self._known_initialized = True
        y = (x - self.mean) / self.std
        return y, (-torch.log(self.std).sum()).expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        return y * self.std + self.mean

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}"


def set_standardization(module: nn.Module, data: Tensor) -> bool:
    """Set every :class:`Standardize` layer in ``module`` from ``data`` (the training set); True if there was one."""
    layers = [m for m in module.modules() if isinstance(m, Standardize)]
    for layer in layers:
        layer.set_statistics(data.reshape(len(data), -1))
    return bool(layers)


class InvertibleConv1x1(FlowLayer):
    """Glow's invertible 1x1 convolution: one learned C x C matrix ``W`` mixes the channels of every pixel.

    Two parametrisations (Kingma & Dhariwal 2018 give both):

    * plain (the default, the paper's code): ``W`` is a free parameter ``weight``, started at a random rotation
      (the Q of a QR decomposition of a Gaussian matrix); ``log |det W|`` by ``slogdet`` and the inverse by a
      matrix inverse, each pass.
    * ``lu=True`` (flowood's option, not the paper's): ``W = P L (U + diag(sign * exp(log_s)))`` with a fixed
      permutation ``P``; ``log |det W| = sum(log_s)`` is free, ``W`` stays invertible by construction, and the
      inverse comes from the triangular factors. Starts from the same kind of random rotation.

    Args:
        num_channels: channels C of ``[B, C, H, W]`` inputs.
        lu: LU-parametrise ``W``.

    References:
        Kingma, Dhariwal. Glow: Generative Flow with Invertible 1x1 Convolutions. NeurIPS 2018.

    Example:
        >>> conv = InvertibleConv1x1(4)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> y, log_det = conv(x)
        >>> torch.allclose(conv.inverse(y), x, atol=1e-5)
        True
    """

    kind = "invconv"

    def __init__(self, num_channels: int, lu: bool = False) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.lu = lu
        w = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        if not lu:
            self.weight = nn.Parameter(w)
            return
        p, lower, upper = torch.linalg.lu(w)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
        self.register_buffer("eye", torch.eye(num_channels))
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return lower, upper

    def matrix(self) -> Tensor:
        """The C x C matrix W."""
        if not self.lu:
            return self.weight
        lower, upper = self._factors()
        return self.permutation @ lower @ upper

    def inverse_matrix(self) -> Tensor:
        """``W^-1`` (from the triangular factors with ``lu``: no general matrix inverse)."""
        if not self.lu:
            return torch.linalg.inv(self.weight)
        lower, upper = self._factors()
        eye = self.eye
        lower_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        upper_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return upper_inv @ lower_inv @ self.permutation.T

    def log_abs_det(self) -> Tensor:
        """``log |det W|``: the log-determinant per pixel."""
        if not self.lu:
            return torch.linalg.slogdet(self.weight)[1]
        return self.log_s.sum()

    def _multiply(self, x: Tensor, w: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ w.T
        if x.is_contiguous():
            # on a [B, C, H, W] tensor a batched matrix product over the C channels is 2-9x faster than a
            # convolution (oneDNN reorders the input); channels-last inputs are the convolution's fast case
            return torch.matmul(w, x.flatten(2)).view(x.shape)
        return F.conv2d(x, w.view(self.num_channels, self.num_channels, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        spatial = x[0, 0].numel()
        log_det = (self.log_abs_det() * spatial).expand(x.shape[0])
        return self._multiply(x, self.matrix()), log_det

    def inverse(self, y: Tensor) -> Tensor:
        return self._multiply(y, self.inverse_matrix())

    def extra_repr(self) -> str:
        return f"num_channels={self.num_channels}, lu={self.lu}"


def squeeze2d(x: Tensor) -> Tensor:
    """Space-to-depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (each 2x2 patch to channels)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: Tensor) -> Tensor:
    """Depth-to-space, the inverse of :func:`squeeze2d`."""
    b, c, h, w = x.shape
    x = x.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class Squeeze(FlowLayer):
    """Space-to-depth as a flow layer: a permutation, so its log-determinant is zero.

    Example:
        >>> y, _ = Squeeze()(torch.randn(1, 1, 4, 4))
        >>> tuple(y.shape)
        (1, 4, 2, 2)
    """

    kind = "squeeze"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise InputError(f"squeeze needs even height and width, got {tuple(x.shape[2:])}")
        return squeeze2d(x), torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)

    def inverse(self, y: Tensor) -> Tensor:
        return unsqueeze2d(y)
