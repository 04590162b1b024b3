"""Registers the transform recipe steps (``prune``, ``rewrite``) by importing their modules."""
from . import prune_step, rewrite_step  # noqa: F401  (import registers the steps)

__all__: list[str] = []
