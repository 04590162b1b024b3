"""Registers the transform recipe steps (``prune``, ``rewrite``, ``drop``, ``reconstruct``) by importing them."""
from .blocks import step as _drop_step  # noqa: F401  (import registers the steps)
from .prune import step as _prune_step  # noqa: F401
from .reconstruct import step as _reconstruct_step  # noqa: F401
from .rewrite import step as _rewrite_step  # noqa: F401

__all__: list[str] = []
