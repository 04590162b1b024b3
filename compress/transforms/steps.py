"""Registers the transform recipe steps (``prune``, ``rewrite``, ``drop``) by importing their modules."""
from . import drop_step, prune_step, rewrite_step  # noqa: F401  (import registers the steps)

__all__: list[str] = []
