"""Parameter-efficient ViT adaptation, merged into plain ViTs and deployed."""


class PipelineError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""
