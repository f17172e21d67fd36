"""Data sets by name, offline sources, in-memory arrays and shape adaptors.

Example:
    >>> from flowood.data import load_dataset
    >>> ds = load_dataset("digits", "test")
    >>> ds.data.dtype, ds.sample_shape
    (torch.uint8, (1, 8, 8))
"""

from flowood.data.adapt import adapt_images, fit_to_shape
from flowood.data.arrays import ArrayDataset
from flowood.data.prefixes import PREFIXES, DataName, PrefixSource, parse_name, register_prefix
from flowood.data.registry import (
                                   DATASETS,
                                   DatasetNotFoundError,
                                   UnknownDatasetError,
                                   canonical_name,
                                   data_root,
                                   dataset_inputs,
                                   dataset_names,
                                   fetch_dataset,
                                   load_dataset,
)
from flowood.data.sources import DataWarning

__all__ = ["ArrayDataset", "DATASETS", "DataName", "DataWarning", "DatasetNotFoundError", "PREFIXES", "PrefixSource",
           "UnknownDatasetError", "adapt_images", "canonical_name", "fit_to_shape", "data_root", "dataset_inputs",
           "dataset_names", "fetch_dataset", "load_dataset", "parse_name", "register_prefix"]
