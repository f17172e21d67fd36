"""Feature extractors for flows on embeddings (the paper's Section 8): any torchvision
classification model, or flowood's small CNN, and the input transform that goes with each.

The embedding of an image is the input of the backbone's last linear layer (its classifier), as
the paper takes EfficientNet's 1792-dimensional penultimate features.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowood.errors import DataError, InputError, closest
from flowood.options import ConfigError

__all__ = ["SmallCNN", "Preprocess", "backbone_names", "build_backbone", "last_linear", "replace_head",
           "feature_extractor", "pretrained_weights"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """A small CNN classifier that trains in a minute or two on a CPU.

    Three conv stages (32, 64, 128 channels, BatchNorm, ReLU, 2x2 pooling), global average pooling,
    a linear layer to ``embedding_dim`` *without* an activation (so embeddings are continuous, with
    no point mass at zero that a flow could exploit), and the linear classifier.

    Example:
        >>> net = SmallCNN(1, 10, embedding_dim=16)
        >>> net(torch.rand(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, embedding_dim: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in (32, 64, 128):
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2, ceil_mode=True)]
            channels = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding = nn.Linear(128, embedding_dim)
        self.classifier = nn.Linear(embedding_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.embedding(self.features(x)))


@dataclass
class Preprocess:
    """uint8 images ``[N, C, H, W]`` -> the float tensor a backbone takes; saved with the embeddings.

    Attributes:
        channels: channels the backbone takes (gray images are repeated to 3, colour ones turned gray for 1).
        size: resize the shorter side to this, then centre-crop ``crop`` (None: keep the size).
        crop: centre crop after resizing (None: ``size``).
        mean, std: per-channel normalisation of values in [0, 1].
        interpolation: ``bilinear`` or ``bicubic``.
    """

    channels: int = 3
    size: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    def __call__(self, images: Tensor) -> Tensor:
        x = images.float() / 255.0
        if x.shape[1] != self.channels:
            if self.channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif self.channels == 1 and x.shape[1] == 3:
                x = (x * torch.tensor((0.299, 0.587, 0.114), device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
            else:
                raise InputError(f"cannot feed {x.shape[1]}-channel images to a backbone that takes {self.channels}")
        if self.size is not None:
            h, w = x.shape[2:]
            scale = self.size / min(h, w)
            new = (max(1, round(h * scale)), max(1, round(w * scale)))
            if new != (h, w):
                x = F.interpolate(x, size=new, mode=self.interpolation, antialias=True, align_corners=False)
            crop = self.crop or self.size
            top, left = (x.shape[2] - crop) // 2, (x.shape[3] - crop) // 2
            x = x[:, :, top:top + crop, left:left + crop]
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        d = dict(d)
        d["mean"], d["std"] = tuple(d["mean"]), tuple(d["std"])
        return cls(**d)


def backbone_names() -> list[str]:
    """``smallcnn`` and every torchvision classification model (``resnet18``, ``efficientnet_b4``, ...)."""
    import torchvision
    return ["smallcnn"] + sorted(torchvision.models.list_models(module=torchvision.models))


def _check_name(name: str) -> None:
    names = backbone_names()
    if name not in names:
        raise ConfigError(f"unknown backbone {name!r}{closest(name, names)}; use smallcnn or a torchvision "
                         f"classification model such as resnet18 or efficientnet_b4")


def pretrained_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum for ``--weights DEFAULT`` (or a name such as ``IMAGENET1K_V1``)."""
    import torchvision
    enum = torchvision.models.get_model_weights(name)
    try:
        return enum.DEFAULT if weights.upper() == "DEFAULT" else enum[weights]
    except KeyError:
        raise ConfigError(f"{name} has no weights {weights!r}; choose DEFAULT or one of "
                         f"{', '.join(w.name for w in enum)}") from None


def build_backbone(name: str, num_classes: int | None = None, in_channels: int = 3, weights: Any = None,
                   embedding_dim: int = 64) -> nn.Module:
    """A classifier by name. ``weights`` is a torchvision weights enum (downloaded by torchvision) or
    None; with ``num_classes`` the classifier head is replaced by a fresh one of that size."""
    _check_name(name)
    if name == "smallcnn":
        return SmallCNN(in_channels, num_classes or 10, embedding_dim)
    import torchvision
    if weights is not None:
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except OSError as err:  # URLError is an OSError
            raise DataError(f"could not download {name} weights {weights.name} ({err}); without internet, train a "
                            "classifier here with `train_classifier=True`, or pass a weights file as `weights`"
                            ) from err
        if num_classes is not None and last_linear(model)[2].out_features != num_classes:
            replace_head(model, num_classes)
        return model
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000, **kwargs)


def last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """``(parent, attribute, layer)`` of the model's last linear layer: its classifier."""
    name = None
    for module_name, module in model.named_modules():  # pre-order: the head comes last
        if isinstance(module, nn.Linear):
            name = module_name
    if name is None:
        raise ConfigError(f"{type(model).__name__} has no linear classifier layer to take features before")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, attr, getattr(parent, attr)


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Give the model a fresh classifier with ``num_classes`` outputs."""
    parent, attr, layer = last_linear(model)
    setattr(parent, attr, nn.Linear(layer.in_features, num_classes))


def feature_extractor(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that returns the input of its classifier (the embedding), in eval mode."""
    extractor = copy.deepcopy(model)
    parent, attr, _ = last_linear(extractor)
    setattr(parent, attr, nn.Identity())
    return extractor.eval()
