"""Linear probe: no adapter, only the classifier head trains on the frozen backbone."""

from pipeline.adapters.base import Method

METHOD = Method(
    name="linear",
    inject=lambda model: None,
    merge=lambda model: None,
    defaults={},
    adds_modules=False,
)
