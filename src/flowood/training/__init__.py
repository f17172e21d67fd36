"""Training flows with Lightning: configuration, the Lightning module, and the ``train`` entry point."""

from flowood.training.callbacks import NonFiniteLossError
from flowood.training.config import OPTIMIZERS, TrainConfig, load_config
from flowood.training.module import FlowDataModule, FlowModule, negative_training_loss
from flowood.training.optim import make_optimizer
from flowood.training.run import OutputExistsError, TrainResult, train

__all__ = ["FlowDataModule", "FlowModule", "NonFiniteLossError", "OPTIMIZERS", "OutputExistsError", "TrainConfig",
           "TrainResult", "load_config", "make_optimizer", "negative_training_loss", "train"]
