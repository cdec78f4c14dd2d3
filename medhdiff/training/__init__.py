"""Training of the hierarchical model: configs, datasets, checkpoints, the loop."""

from medhdiff.training.config import DataConfig, DetectConfig, OptimConfig, TrainConfig, load_config
from medhdiff.training.run import run_training

__all__ = ["DataConfig", "DetectConfig", "OptimConfig", "TrainConfig", "load_config", "run_training"]
