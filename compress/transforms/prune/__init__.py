"""Channel pruning: dependency-aware pruning on torch-pruning (:mod:`.pruner`), lossless dead-channel removal
(:mod:`.dead`), its options (:mod:`.config`), channel importances (:mod:`.importance`), the torch-pruning extensions and guards
(:mod:`.tp_compat`), layer roles (:mod:`.layer_roles`) and the recipe step (:mod:`.step`)."""
from .config import PruneConfig
from .pruner import PruneResult, prune

__all__ = ["PruneConfig", "PruneResult", "prune"]
