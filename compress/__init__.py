"""compress: make trained PyTorch convnets smaller and measurably faster.

The public API is imported lazily so that ``import compress`` stays cheap::

    import compress
    analysis = compress.analyze(model, calib_loader)
    result = compress.prune(model, example_inputs, macs_target=0.5, analysis=analysis)
    records = compress.rewrite(model, "separable", T=4)
    compress.calibrate_bn(model, calib_loader)
    print(compress.cost(model, example_inputs).macs, compress.latency(model, example_inputs))
    compress.save(model, "model.pt", spec={"name": "torchvision:resnet18", "kwargs": {"num_classes": 10}})
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    # analysis
    "analyze": "compress.analysis",
    "Analysis": "compress.analysis",
    "DeadChannel": "compress.analysis",
    "load_analysis": "compress.analysis",
    # transforms
    "prune": "compress.transforms",
    "rewrite": "compress.transforms",
    "reconstruct": "compress.transforms",
    "to_grouped": "compress.transforms",
    "to_separable": "compress.transforms",
    "to_shuffled": "compress.transforms",
    "to_dilated": "compress.transforms",
    "to_bottleneck": "compress.transforms",
    "drop_blocks": "compress.transforms",
    "block_drop_errors": "compress.transforms",
    "fold_batchnorm": "compress.transforms",
    # latency-aware planning
    "plan": "compress.planning",
    "PlanOptions": "compress.planning",
    "PruneConfig": "compress.transforms.prune",
    "LayerSelection": "compress.transforms.rewrite.selection",
    "apply_plan": "compress.planning",
    # training
    "fit": "compress.training",
    "calibrate_bn": "compress.training",
    "TrainConfig": "compress.training",
    "DistillConfig": "compress.training",
    "Teacher": "compress.training",
    "Checkpoint": "compress.training",
    # measurement
    "cost": "compress.measurement",
    "latency": "compress.measurement",
    "compare_latency": "compress.measurement",
    "TimingOptions": "compress.measurement.latency",
    "evaluate": "compress.measurement",
    # saving
    "save": "compress.serialization",
    "load": "compress.serialization",
    "export": "compress.serialization",
    # building blocks of a run
    "build_model": "compress.models",
    "load_checkpoint": "compress.models",
    "build_data": "compress.data",
    "DataConfig": "compress.data",
    "load_recipe": "compress.recipe.schema",
    "run_recipe": "compress.runner",
    "CompressError": "compress.errors",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'compress' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
