"""The one training loop every method and stage uses."""

from pipeline.train.distributed import is_main
from pipeline.train.loop import evaluate, fit, pick_device, seed_everything

__all__ = ["evaluate", "fit", "is_main", "pick_device", "seed_everything"]
