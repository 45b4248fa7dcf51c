"""Training of the Deep Photo Enhancer: two-way / one-way GAN and the supervised variant."""

from dpe_core.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint
from dpe_core.training.config import DataConfig, TrainConfig
from dpe_core.training.loop import TrainResult, build_data, evaluate, export_model, train
from dpe_core.training.steps import GANStep, OneWayGANStep, SupervisedStep, TwoWayGANStep, build_step

__all__ = [
    "CheckpointError",
    "DataConfig",
    "GANStep",
    "OneWayGANStep",
    "SupervisedStep",
    "TrainConfig",
    "TrainResult",
    "TwoWayGANStep",
    "build_data",
    "build_step",
    "evaluate",
    "export_model",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
