"""Registers the transform recipe steps (``prune``, ``rewrite``, ``drop``) by importing their modules."""
from .blocks import step as _drop_step  # noqa: F401  (import registers the steps)
from .prune import step as _prune_step  # noqa: F401
from .rewrite import step as _rewrite_step  # noqa: F401

__all__: list[str] = []
