"""Measuring models: static cost (params, MACs), accuracy, and wall-clock latency (eager or per runtime,
:mod:`.runtimes`)."""
from __future__ import annotations

from .cost import Cost, LayerCost, cost
from .evaluate import Evaluation, evaluate
from .latency import (Comparison, LatencyResult, LatencySettings, RuntimeKey, RuntimeTiming, compare_latency, latency,
                      verdict)
from .layer_latency import LayerLatency, layer_latency
from .timing import Stats

__all__ = ["Cost", "LayerCost", "cost", "Evaluation", "evaluate", "Comparison", "LatencyResult",
           "LatencySettings", "RuntimeKey", "RuntimeTiming", "compare_latency", "latency", "verdict", "LayerLatency",
           "layer_latency", "Stats"]
