"""Transforms: functions from a module (plus parameters) to a module, and model-level appliers.

Rewrites (``to_grouped``, ``to_separable``, ``to_shuffled``, ``to_dilated``, ``to_bottleneck``, ``rewrite``) and
dependency-aware channel pruning (``prune``) built on torch-pruning.
"""
# Imported eagerly: the functions ``rewrite`` and ``prune`` share their modules' names, and a lazy attribute
# would be shadowed by the submodule once it is imported.
from .bottleneck import to_bottleneck
from .dilated import to_dilated
from .drop_block import block_drop_errors, drop_block, drop_blocks, droppable_blocks
from .fold_bn import fold_batchnorm
from .grouped import to_grouped
from .modules import ChannelPermute, ChannelShuffle
from .prune import prune
from .rewrite import RewriteRecord, rewrite
from .separable import to_separable
from .shuffle import to_shuffled

__all__ = ["ChannelPermute", "ChannelShuffle", "RewriteRecord", "block_drop_errors", "drop_block", "drop_blocks",
           "droppable_blocks", "fold_batchnorm", "prune", "rewrite", "to_bottleneck", "to_dilated", "to_grouped",
           "to_separable", "to_shuffled"]
