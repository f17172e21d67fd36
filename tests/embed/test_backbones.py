"""Backbones and their transforms (flowood.embed.backbones): feature extractors return the classifier's input,
names are checked, images are preprocessed as configured."""

from __future__ import annotations

import pytest
import torch

from flowood.embed import Preprocess, build_backbone, feature_extractor, last_linear
from flowood.embed.backbones import backbone_names


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("efficientnet_b0", 1280), ("mobilenet_v3_small", 1024),
                                      ("smallcnn", 64)])
def test_feature_extractor_returns_the_classifier_input(name, dim):
    model = build_backbone(name, num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    features = feature_extractor(model)(x)
    assert features.shape == (2, dim)
    with torch.no_grad():
        torch.testing.assert_close(last_linear(model)[2](features), model(x))  # the head on them gives the logits


def test_backbone_names_and_unknown_name():
    assert "efficientnet_b4" in backbone_names() and "smallcnn" in backbone_names()
    with pytest.raises(ValueError, match="did you mean 'resnet18'"):
        build_backbone("resnet81")


def test_preprocess_channels_resize_crop_normalise():
    images = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    p = Preprocess(channels=3, size=36, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    x = p(images)
    assert x.shape == (2, 3, 32, 32)
    torch.testing.assert_close(x, torch.full_like(x, 2.0))  # (1 - 0.5) / 0.25
    assert Preprocess.from_dict(p.to_dict()) == p
    gray = Preprocess(channels=1, mean=(0.0,), std=(1.0,))(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert gray.shape == (1, 1, 4, 4)
