"""Whole-block transforms: identity-shortcut residual blocks dropped (:mod:`.drop`), BatchNorms folded into
convs (:mod:`.fold_bn`), and the ``drop`` recipe step (:mod:`.step`)."""
from .drop import block_drop_errors, drop_block, drop_blocks, droppable_blocks
from .fold_bn import fold_batchnorm

__all__ = ["block_drop_errors", "drop_block", "drop_blocks", "droppable_blocks", "fold_batchnorm"]
