"""apply_plan: removes exactly the planned channels, keeps shapes, and is exact when only dead channels go."""
from __future__ import annotations

import copy

import pytest
import torch

from compress.analysis import analyze
from compress.errors import CompressError
from compress.planning import LayerChoice, Plan, PlanOptions, apply_plan, plan

from planning_helpers import tiny_net

DEAD = [1, 4, 6, 9, 11, 20, 27, 30]  # output channels of conv "3" (32 wide) that carry exactly zero


def dead_net() -> torch.nn.Sequential:
    """tiny_net whose conv "3" has 8 dead channels: zero filters, zero BN scale and shift -> ReLU(0) = 0."""
    model = tiny_net()
    with torch.no_grad():
        model[3].weight[DEAD] = 0.0
        model[4].weight[DEAD] = 0.0
        model[4].bias[DEAD] = 0.0
        for bn in (model[1], model[4], model[7], model[10]):  # non-trivial statistics for the other channels
            bn.running_mean.uniform_(-0.1, 0.1)
            bn.running_var.uniform_(0.5, 1.5)
    return model


def test_dead_channel_plan_is_exact(x, tmp_path):
    model = dead_net()
    torch.manual_seed(2)
    calib = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    analysis = analyze(model, calib, verbose=False)
    dead = analysis.dead_channels()["3"]
    assert sorted(c for c, d in dead.items() if d.kind != "apoz") == DEAD  # apoz channels are not free
    # a target one aligned step below the original: the free (dead) channels are the cheapest way there
    p = plan(model, x, PlanOptions(target={"macs": 0.995}, batch=2, forms=("prune",), decrement=0.001,
             measure_latency=False, cache_dir=str(tmp_path)), analysis=analysis, verbose=False)
    assert p.met and len(p.choices) == 1
    choice = p.choices[0]
    assert (choice.layer, choice.width_from, choice.width_to, choice.cost) == ("3", 32, 24, 0.0)
    assert choice.removed == DEAD
    pruned = apply_plan(copy.deepcopy(model), p, x)
    assert pruned[3].out_channels == 24 and pruned[6].in_channels == 24
    batch = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(pruned(batch), model(batch), rtol=1e-5, atol=1e-6)


def test_rewrites_keep_shapes_and_record_forms(x, tmp_path):
    model = tiny_net()
    p = plan(model, x, PlanOptions(target={"macs": 0.5}, batch=2, forms=("grouped", "separable"),
             measure_latency=False, cache_dir=str(tmp_path)), verbose=False)
    assert p.choices and all(c.form in ("grouped", "separable") for c in p.choices)
    rewritten = apply_plan(copy.deepcopy(model), p, x)
    names = dict(rewritten.named_modules())
    for c in p.choices:
        assert not isinstance(names[c.layer], torch.nn.Conv2d) or names[c.layer].groups > 1
    assert rewritten(x).shape == model(x).shape


def test_plan_for_another_model_is_refused(x):
    model = tiny_net()
    wrong = Plan(target={"macs": 0.5}, device="cpu", dtype="float32", batch=1, channels_last=False, align=8,
                 choices=[LayerChoice("3", "prune", 48, 40, ["3"], list(range(8)))])
    with pytest.raises(CompressError, match="apply a plan only to the model it was made for"):
        apply_plan(model, wrong, x)
    missing = Plan(target={"macs": 0.5}, device="cpu", dtype="float32", batch=1, channels_last=False, align=8,
                   choices=[LayerChoice("body.conv", "prune", 32, 24, [], list(range(8)))])
    with pytest.raises(CompressError, match="body.conv"):
        apply_plan(model, missing, x)


class SplitNet(torch.nn.Module):
    """Two convs concatenated, split again and consumed by one conv: both groups map through one torch.split."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = (torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(16, 4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [self.a.out_channels, self.b.out_channels]  # follow the pruned widths
        left, right = torch.split(torch.cat([self.a(x), self.b(x)], 1), sizes, dim=1)
        return self.c(torch.cat([left, right], 1))


def test_two_groups_through_one_split_remove_the_planned_channels():
    # torch-pruning 1.6 leaves the split's offsets stale after the first group: the second then removes the
    # wrong input channels of c (or indexes past its end) unless apply_plan refreshes them (tp_compat.prune_group)
    torch.manual_seed(0)
    model = SplitNet().eval()
    x = torch.randn(2, 3, 4, 4)
    choices = [LayerChoice("a", "prune", 8, 6, ["a", "c"], [0, 1]), LayerChoice("b", "prune", 8, 7, ["b", "c"], [7])]
    p = Plan(target={"macs": 0.9}, device="cpu", dtype="float32", batch=1, channels_last=False, align=1,
             choices=choices)
    pruned = apply_plan(copy.deepcopy(model), p, x[:1])
    assert (pruned.a.out_channels, pruned.b.out_channels, pruned.c.in_channels) == (6, 7, 13)
    kept = [*range(2, 8), *range(8, 15)]  # c's inputs: a's channels 2..7, then b's 0..6
    with torch.no_grad():
        expected = torch.nn.functional.conv2d(torch.cat([model.a(x)[:, 2:], model.b(x)[:, :7]], 1),
                                              model.c.weight[:, kept], model.c.bias)
        torch.testing.assert_close(pruned(x), expected, rtol=1e-5, atol=1e-6)


def test_shufflenet_plan_applies_to_a_working_model(tmp_path):
    import torchvision

    from compress.transforms.prune.tp_compat import swap_shufflenet_blocks

    torch.manual_seed(0)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    swap_shufflenet_blocks(model)  # what prune() does first: the torchvision blocks are not traceable by tp
    x = torch.randn(1, 3, 64, 64)
    p = plan(model, x, PlanOptions(target={"macs": 0.8}, batch=1, forms=("prune",), measure_latency=False,
             cache_dir=str(tmp_path)), verbose=False)
    assert p.met and p.choices
    pruned = apply_plan(copy.deepcopy(model), p, x)
    names = dict(pruned.named_modules())
    for c in p.choices:
        assert names[c.layer].out_channels == c.width_to
    with torch.no_grad():
        out = pruned(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 10) and torch.isfinite(out).all()
