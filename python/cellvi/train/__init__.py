"""The trainer shared by every model."""
from ._trainer import Trainer, TrainingError, as_count, resolve_device, seeded_generator, split_indices

__all__ = ["Trainer", "TrainingError", "as_count", "resolve_device", "seeded_generator", "split_indices"]
