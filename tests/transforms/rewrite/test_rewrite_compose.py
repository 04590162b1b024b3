"""Rewrites compose with pruning: every kind's result prunes with ``compress.prune`` and analyzes again.

Pruning goes through compress' own torch-pruning extensions (:mod:`compress.transforms.prune.tp_compat`): channels
prune through shuffles and permutes by index mapping, and channels where that would unbalance a grouped conv are
locked (:func:`compress.transforms.prune.layer_roles.locked_layers`). The tests check that the pruned models run,
shrink, keep every grouped conv's groups whole, and that ``compress.analyze`` sees the pruned widths.
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import compress
from compress.transforms import ChannelPermute, rewrite

X = torch.randn(1, 3, 32, 32)
LAYERS = ["conv1", "layer1.*", "layer2.0.*"]
# kind, options, extra rewrite() arguments, and what must be among the rewritten records' params
CASES = {
    "grouped": ("grouped", {"groups": 2}, {}, {"groups": 2}),
    "separable": ("separable", {"T": 2}, {}, {"T": 2}),
    "shuffle-1x1": ("shuffle", {"groups": 4}, {"kernel_sizes": (1,)}, {"form": "pointwise"}),
    "shuffle-unit": ("shuffle", {"groups": 4}, {"kernel_sizes": (3,)}, {"form": "unit"}),
    "dilated": ("dilated", {}, {}, {}),
    "bottleneck": ("bottleneck", {"rank_ratio": 0.5}, {}, {}),
}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _loader() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two random batches ``(images (2, 3, 32, 32), labels (2,))``."""
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(2, 3, 32, 32, generator=gen), torch.zeros(2, dtype=torch.long)) for _ in range(2)]


def _rewritten(kind: str, options: dict, extra: dict) -> tuple[nn.Module, list]:
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    records = rewrite(model, kind, include=LAYERS, example_inputs=X, min_channels=3, **options, **extra)
    return model, [r for r in records if r.skipped is None]


def _groups_whole(model: nn.Module) -> bool:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return all(c.in_channels % c.groups == 0 and c.out_channels % c.groups == 0 for c in convs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_resnet18_prunes_and_analyzes_after_each_rewrite(case):
    kind, options, extra, expected = CASES[case]
    model, done = _rewritten(kind, options, extra)
    assert done and all(any(r.params.get(k) == v for r in done) for k, v in expected.items())
    before = _params(model)
    result = compress.prune(model, X, ratio=0.3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert _params(model) < 0.8 * before and result.macs_after < result.macs_before
    assert _groups_whole(model)
    analysis = compress.analyze(model, _loader(), verbose=False)
    widths = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert analysis.layers and {n: analysis.info[n].channels for n in analysis.layers} == \
        {n: widths[n] for n in analysis.layers}
    assert set(analysis.layers) == set(widths)  # every conv of the rewritten, pruned model runs and is measured


def test_permutes_next_to_grouped_convs_stay_whole_while_the_rest_prunes():
    model, _ = _rewritten("grouped", {"groups": 2}, {})
    permutes = [m for m in model.modules() if isinstance(m, ChannelPermute)]
    assert permutes  # the residual stream reaches two grouped convs: some permutes must stay
    sizes = [m.perm.numel() for m in permutes]
    result = compress.prune(model, X, ratio=0.3)
    assert [m.perm.numel() for m in permutes] == sizes
    assert "layer1.0.conv2.conv" in result.ignored and model.layer3[0].conv1.out_channels < 256


def test_shuffle_units_in_mobilenet_prune_around_locked_shuffles():
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval()
    rewrite(model, "shuffle", include=["features.2.conv.0.0", "features.3.conv.2"], example_inputs=X, groups=4,
            allow_growth=True)
    units = [m for m in model.modules() if isinstance(m, nn.Sequential) and hasattr(m, "shuffle")]
    assert len(units) == 2
    widths = [(u.reduce.out_channels, u.expand.in_channels) for u in units]
    compress.prune(model, X, ratio=0.3)
    assert model(X).shape == (1, 10)
    assert [(u.reduce.out_channels, u.expand.in_channels) for u in units] == widths  # shuffle -> grouped: locked
    assert _groups_whole(model)
    assert any(u.expand.out_channels < 24 for u in units)  # outputs behind the shuffle were still pruned
