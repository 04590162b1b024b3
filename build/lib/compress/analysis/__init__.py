"""Analyzers: per-channel statistics, dead channels and channel correlations of a convnet's ``nn.Conv2d`` layers.

``analyze(model, loader)`` returns an :class:`Analysis`; ``load_analysis(dir)`` restores a saved one. The
recipe step ``analyze`` lives in :mod:`compress.analysis.step`, plots in :mod:`compress.analysis.plots`.
"""
from .collect import analyze
from .dead import DeadChannel
from .result import Analysis, LayerInfo
from .storage import load_analysis

__all__ = ["analyze", "Analysis", "DeadChannel", "LayerInfo", "load_analysis"]
