"""In-memory data sets: decoded once, indexed fast, so data loading never starves training."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from flowood.errors import DataError

__all__ = ["ArrayDataset", "HUGE_VALUE"]

#: vectors with a value this large overflow in the float32 arithmetic of a flow (its squares exceed 3.4e38 soon).
HUGE_VALUE = 1e15


@dataclass(eq=False)
class ArrayDataset(Dataset):
    """A data set held as one tensor: 8-bit images ``[N, C, H, W]`` (uint8) or vectors ``[N, D]`` (float32).

    Items are ``(sample, label)`` pairs; the label is -1 where a set has none. Images stay uint8
    until they reach the model (4x less memory and host-to-device traffic than float).

    Attributes:
        data: the samples.
        labels: int64 labels ``[N]`` or None.
        name: registry name, e.g. ``"fashionmnist"``.
        split: ``"train"`` or ``"test"``.
        source: where the samples came from (a path or a package), recorded in metrics.
    """

    data: Tensor
    labels: Tensor | None = None
    name: str = ""
    split: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if self.labels is not None and len(self.labels) != len(self.data):
            raise DataError(f"{self.name}: {len(self.data)} samples but {len(self.labels)} labels")

    @property
    def is_image(self) -> bool:
        return self.data.dim() == 4

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        label = int(self.labels[index]) if self.labels is not None else -1
        return self.data[index], label

    def take(self, n: int | None, seed: int = 0) -> "ArrayDataset":
        """At most ``n`` samples, chosen at random with ``seed`` (all of them if ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise DataError(f"asked for {n} samples of {self.name}; give a positive number")
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return self.select(idx)

    def select(self, index: Tensor | slice | list[int]) -> "ArrayDataset":
        """The samples at ``index`` as a new data set."""
        labels = self.labels[index] if self.labels is not None else None
        return ArrayDataset(self.data[index], labels, self.name, self.split, self.source)

    def check_values(self, training: bool = False) -> "ArrayDataset":
        """Refuse vectors a flow cannot model, naming the set and the feature: values so large that float32
        arithmetic overflows, and (for a training set) features with the same value in every sample, to
        which a flow gives unbounded density. Images (uint8) always pass.

        Raises:
            DataError: with the set, the feature and what to do.
        """
        if self.is_image or not torch.is_floating_point(self.data) or len(self) == 0:
            return self
        where = f"{self.name}:{self.split}"
        peak, feature = self.data.abs().max(dim=0)[0].max(dim=0)
        if float(peak) > HUGE_VALUE:
            raise DataError(f"{where}: feature {int(feature)} has values as large as {float(peak):.3g}; a flow "
                            "computes in float32, where such values overflow. Rescale the features (e.g. "
                            "standardise each one) before training or scoring")
        if training and len(self) > 1:
            constant = (self.data == self.data[0]).all(dim=0).nonzero().flatten().tolist()
            if constant:
                shown = ", ".join(str(j) for j in constant[:5]) + (", ..." if len(constant) > 5 else "")
                raise DataError(f"{where}: {len(constant)} feature(s) ({shown}) have the same value in every sample; "
                                "a flow gives such a feature unbounded density, so the loss diverges. Drop them (or "
                                "add a little noise) before training")
        return self

    def describe(self) -> str:
        return f"{self.name}:{self.split} ({len(self)} samples of shape {self.sample_shape}, from {self.source})"
