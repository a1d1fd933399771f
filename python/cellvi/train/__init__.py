"""The trainer shared by every model, and the plan in which a model declares what differs."""
from ._trainer import (ConvergenceWarning, Progress, StopTraining, Trainer, TrainingError, TrainingPlan,
                       as_count, epoch_callback, not_converged, resolve_device, seeded_generator,
                       split_indices)

__all__ = ["ConvergenceWarning", "Progress", "StopTraining", "Trainer", "TrainingError", "TrainingPlan",
           "as_count", "epoch_callback", "not_converged", "resolve_device", "seeded_generator",
           "split_indices"]
