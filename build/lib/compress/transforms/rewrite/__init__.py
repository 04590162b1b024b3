"""Rewrites of dense convs into structured forms.

The kind registry (:mod:`.registry`), the model-level applier (:mod:`.apply`), the MACs allocation
(:mod:`.allocate`), input patch statistics (:mod:`.patch_stats`), decompositions (:mod:`.decompose`,
:mod:`.cocluster`), permute folding (:mod:`.absorb`), the recipe step (:mod:`.step`) and one module per kind in
:mod:`.kinds` (importing that package registers them).
"""
from . import kinds  # noqa: F401  (registers the built-in kinds)
from .apply import RewriteRecord, rewrite

__all__ = ["RewriteRecord", "rewrite"]
