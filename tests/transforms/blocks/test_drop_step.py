"""The ``drop`` recipe step: strict options, blocks chosen by measured drop error or by name."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.errors import ConfigError, CompressError
from compress.models import small_resnet
from compress.recipe import registry
from compress.transforms.blocks.drop import block_drop_errors
from compress.transforms.blocks.step import DropStep, choose_blocks, drop_step


@pytest.fixture
def _ctx(step_context):
    def make():
        torch.manual_seed(0)
        net = small_resnet(widths=(16, 16, 32), blocks=(3, 1, 1)).eval()
        bn = net.layers[0][1].bn2  # layers.0.1's branch outputs zero: dropping it loses nothing
        nn.init.zeros_(bn.weight)
        nn.init.zeros_(bn.bias)
        calib = [(torch.randn(4, 1, 16, 16), torch.zeros(4, dtype=torch.long)) for _ in range(2)]
        return step_context(net, calib=calib, example_inputs=torch.randn(1, 1, 16, 16), analysis=object())

    return make


def test_step_is_registered():
    assert registry.get_step("drop").config is DropStep


@pytest.mark.parametrize("data, field", [
    ({}, "max_error"),
    ({"blocks": ["layers.0.1"], "max_error": 0.1}, "blocks"),
    ({"max_error": 1.0}, "max_error"),
    ({"max_error": 0.1, "max_blocks": 0}, "max_blocks"),
    ({"max_error": 0.1, "calib_batches": 0}, "calib_batches"),
])
def test_bad_options_name_the_field(data, field):
    with pytest.raises(ConfigError) as err:
        DropStep.from_dict(data, path="steps[0].drop")
    assert err.value.field == f"steps[0].drop.{field}"


def test_choose_blocks_lowest_error_first_within_the_limit():
    errors = {"a": 0.3, "b": 0.01, "c": 0.05, "d": 0.0}
    assert choose_blocks(errors, max_error=0.1, max_blocks=None) == ["d", "b", "c"]
    assert choose_blocks(errors, max_error=0.1, max_blocks=2) == ["d", "b"]
    assert choose_blocks(errors, max_error=0.0, max_blocks=None) == ["d"]


def test_max_error_drops_only_the_silent_block_and_keeps_outputs(_ctx):
    ctx = _ctx()
    reference = copy.deepcopy(ctx.model)
    errors = block_drop_errors(reference, ctx.data.calib)
    details = drop_step(ctx, DropStep.from_dict({"max_error": 1e-9, "calib_batches": 2}))
    assert details.dropped == ["layers.0.1"] and details.errors["layers.0.1"] < 1e-9
    assert details.errors == {n: round(e, 6) for n, e in errors.items()}
    assert isinstance(ctx.model.layers[0][1], nn.Identity) and ctx.analysis is None
    images = ctx.data.calib[0][0]
    with torch.no_grad():
        torch.testing.assert_close(ctx.model(images), reference(images), rtol=1e-5, atol=1e-5)


def test_named_blocks_are_dropped_and_unknown_names_refused(_ctx):
    ctx = _ctx()
    details = drop_step(ctx, DropStep.from_dict({"blocks": ["layers.0.2"]}))
    assert details.dropped == ["layers.0.2"] and isinstance(ctx.model.layers[0][2], nn.Identity)
    with pytest.raises(CompressError, match="layers.1.0"):  # a downsample block: not droppable
        drop_step(_ctx(), DropStep.from_dict({"blocks": ["layers.1.0"]}))


def test_nothing_within_the_budget_leaves_the_model_alone(_ctx):
    ctx = _ctx()
    nn.init.ones_(ctx.model.layers[0][1].bn2.weight)  # no silent block any more
    details = drop_step(ctx, DropStep.from_dict({"max_error": 0.0}))
    assert details.dropped == [] and ctx.analysis is not None
