"""Errors inside torch-pruning name the layer: tp_errors over build_graph, locate over graph nodes."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms.prune.tp_compat import build_graph
from compress.transforms.prune.where import locate, module_names, tp_errors, traceback_frames


class Faulty(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("planted tracing failure")


def test_a_failure_while_tracing_names_the_layer_keeps_the_message_and_leaves_no_hooks():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Faulty()))
    with pytest.raises(CompressError, match=r"^building torch-pruning's dependency graph failed at module '1\.1' "
                                            r"in forward .*: ValueError: planted tracing failure; torch-pruning 1.6"
                       ) as info:
        build_graph(model, torch.randn(1, 3, 8, 8))
    assert isinstance(info.value.__cause__, ValueError)
    assert all(not m._forward_hooks for m in model.modules())


def test_a_functional_node_is_named_after_the_nearest_layer():
    class Add(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            return self.a(x) + self.b(x)

    model = Add()
    graph = build_graph(model, torch.randn(1, 3, 4, 4))
    add = next(n for n in graph.module2node.values() if not isinstance(n.module, nn.Conv2d))

    def fails_on(node):
        raise RuntimeError(f"planted failure on {node}")

    try:
        fails_on(add)
    except RuntimeError as err:
        where = locate(traceback_frames(err.__traceback__), module_names(model))
    assert where.function == "fails_on" and where.module in {"a", "b"}
    assert where.describe().startswith(f"at module {where.module!r} in fails_on (")


def test_compress_errors_and_interrupts_pass_unchanged():
    with pytest.raises(CompressError, match="^mine$"):
        with tp_errors(nn.Linear(1, 1), "doing"):
            raise CompressError("mine")
    with pytest.raises(KeyboardInterrupt):
        with tp_errors(nn.Linear(1, 1), "doing"):
            raise KeyboardInterrupt
