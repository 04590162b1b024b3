"""compress.hooks: probe() runs once in eval mode without autograd and always removes its hooks."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.hooks import forward_hooks, probe


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()


def test_probe_sees_shapes_and_leaves_the_model_as_it_was():
    model = _model()
    before = copy.deepcopy(model.state_dict())
    seen = []
    out = probe(model, [(model[0], lambda m, args, o: seen.append((tuple(args[0].shape), tuple(o.shape))))],
                torch.randn(2, 3, 8, 8))
    assert seen == [((2, 3, 8, 8), (2, 4, 6, 6))] and not out.requires_grad
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():  # BN running statistics untouched: the forward ran in eval mode
        assert torch.equal(v, before[k]), k
    assert not model[0]._forward_hooks


def test_hooks_are_removed_on_error():
    model = _model()

    def fail(m, args, out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        probe(model, [(model[0], fail)], torch.randn(1, 3, 8, 8))
    assert not model[0]._forward_hooks and model.training
    with pytest.raises(ValueError):
        with forward_hooks([(model[1], lambda m, a, o: None)]):
            assert len(model[1]._forward_hooks) == 1
            raise ValueError
    assert not model[1]._forward_hooks
