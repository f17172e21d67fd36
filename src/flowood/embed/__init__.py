"""Embeddings for flows on features (the paper's Section 8): torchvision backbones or a small CNN,
pretrained, loaded from a file, or trained here on the in-distribution labels.

Example:
    >>> from flowood.embed import SmallCNN, feature_extractor
    >>> feature_extractor(SmallCNN(1, 10, embedding_dim=8))(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 8])
"""

from flowood.embed.backbones import Preprocess, SmallCNN, backbone_names, build_backbone, feature_extractor, last_linear
from flowood.embed.run import EmbedOptions, EmbedResult, embed, embed_images, fit_classifier, load_classifier

__all__ = ["EmbedOptions", "EmbedResult", "Preprocess", "SmallCNN", "backbone_names", "build_backbone", "embed",
           "embed_images", "feature_extractor", "fit_classifier", "last_linear", "load_classifier"]
