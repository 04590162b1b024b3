"""Transforms, in three stacks: channel pruning (:mod:`.prune`), rewrites of dense convs (:mod:`.rewrite`, one
module per kind in :mod:`.rewrite.kinds`) and whole-block transforms (:mod:`.blocks`: drop, fold BN).

Rewrites (``to_grouped``, ``to_separable``, ``to_shuffled``, ``to_dilated``, ``to_bottleneck``, ``rewrite``) and
dependency-aware channel pruning (``prune``) built on torch-pruning; layer-wise least-squares
reconstruction towards the original (``reconstruct``, :mod:`.reconstruct`).
"""
# Imported eagerly: the functions ``rewrite`` and ``prune`` share their modules' names, and a lazy attribute
# would be shadowed by the submodule once it is imported.
from .blocks import block_drop_errors, drop_block, drop_blocks, droppable_blocks, fold_batchnorm
from .modules import ChannelPermute, ChannelShuffle
from .prune import prune
from .reconstruct import ReconstructRecord, reconstruct
from .rewrite import RewriteRecord, rewrite
from .rewrite.kinds.bottleneck import to_bottleneck
from .rewrite.kinds.dilated import to_dilated
from .rewrite.kinds.grouped import to_grouped
from .rewrite.kinds.separable import to_separable
from .rewrite.kinds.shuffle import to_shuffled

__all__ = ["ChannelPermute", "ChannelShuffle", "ReconstructRecord", "RewriteRecord", "block_drop_errors", "drop_block",
           "drop_blocks", "droppable_blocks", "fold_batchnorm", "prune", "reconstruct", "rewrite", "to_bottleneck",
           "to_dilated", "to_grouped", "to_separable", "to_shuffled"]
