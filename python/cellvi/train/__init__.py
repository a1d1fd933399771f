"""The trainer shared by every model, and the plan in which a model declares what differs."""
from ._trainer import (Trainer, TrainingError, TrainingPlan, as_count, resolve_device, seeded_generator,
                       split_indices)

__all__ = ["Trainer", "TrainingError", "TrainingPlan", "as_count", "resolve_device", "seeded_generator",
           "split_indices"]
