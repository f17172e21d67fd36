"""The paper as runnable experiments: ``configs/paper/*.yaml``, ``flowood reproduce``, results pages."""

from flowood.reproduce.experiments import Check, Experiment, load_experiments
from flowood.reproduce.runner import ReproduceResult, reproduce

__all__ = ["Check", "Experiment", "ReproduceResult", "load_experiments", "reproduce"]
