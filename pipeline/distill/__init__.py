"""Teacher-student distillation drivers, each ending in a student the pipeline can merge."""

from pipeline.distill import idat, kd, wecolora

DRIVERS = {"idat": idat.run, "wecolora": wecolora.run, "kd": kd.run}

__all__ = ["DRIVERS"]
