"""Layer-wise least-squares reconstruction after a transform, without gradient steps: streaming normal
equations (:mod:`.normal_equations`), rows of a conv / linear (:mod:`.rows`), which layer matches which original
channels (:mod:`.correspondence`), capturing a layer's tensors (:mod:`.capture`), where intercepts go
(:mod:`.bias`), options (:mod:`.config`) and the model-level pass (:mod:`.layerwise`)."""
from .config import ReconstructOptions
from .layerwise import ReconstructRecord, reconstruct
from .normal_equations import NormalEquations, Solution

__all__ = ["NormalEquations", "ReconstructOptions", "ReconstructRecord", "Solution", "reconstruct"]
