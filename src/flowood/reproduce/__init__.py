"""The paper as runnable experiments: the shipped ``configs/paper/*.yaml``, ``flowood reproduce``, results pages."""

from flowood.reproduce.experiments import Check, Experiment, load_experiments
from flowood.reproduce.runner import ReproduceOptions, ReproduceResult, reproduce

__all__ = ["Check", "Experiment", "ReproduceOptions", "ReproduceResult", "load_experiments", "reproduce"]
