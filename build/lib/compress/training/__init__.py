"""Training: the one loop for baseline training and fine-tuning with distillation, BN calibration, checkpoints,
and data-parallel helpers. Recipe steps ``finetune`` and ``calibrate`` live in :mod:`compress.training.steps`."""
from .calibrate import calibrate_bn
from .config import Checkpoint, DistillConfig, Teacher, TrainConfig
from .distill import distillation_loss, feature_loss
from .history import TrainHistory
from ..env import seed_everything
from .loop import fit

__all__ = ["fit", "seed_everything", "TrainConfig", "DistillConfig", "Teacher", "Checkpoint", "TrainHistory", "calibrate_bn",
           "distillation_loss", "feature_loss"]
