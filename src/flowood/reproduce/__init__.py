"""The paper as runnable experiments: the shipped ``configs/paper/*.yaml``, ``flowood reproduce`` (once or with
several seeds), results pages with the paper's numbers beside ours."""

from flowood.reproduce.experiments import Check, Experiment, PaperNumber, load_experiments
from flowood.reproduce.runner import ReproduceOptions, ReproduceResult, reproduce

__all__ = ["Check", "Experiment", "PaperNumber", "ReproduceOptions", "ReproduceResult", "load_experiments",
           "reproduce"]
