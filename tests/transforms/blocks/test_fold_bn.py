"""fold_batchnorm: eval-mode outputs unchanged (1e-5 relative), BatchNorms gone, the model itself untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compress.transforms import fold_batchnorm, rewrite
from compress.transforms.blocks.fold_bn import unfolded_batchnorms

RTOL = 1e-5


def randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a wrong fold cannot pass as an identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def small_resnet() -> nn.Module:
    from compress.models import build_model

    torch.manual_seed(0)
    return randomise_bn(build_model({"name": "compress:small_resnet", "kwargs": {"widths": [16, 32, 64]}}))


def check_fold(model: nn.Module, x: torch.Tensor) -> nn.Module:
    reference = copy.deepcopy(model).eval()
    before = copy.deepcopy(model.state_dict())
    folded = fold_batchnorm(model, example_inputs=x)
    with torch.inference_mode():
        want, got = reference(x), folded(x)
    scale = want.abs().max()
    assert (got - want).abs().max() <= RTOL * scale
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is not touched
    assert not folded.training
    return folded


def test_small_resnet_folds_every_batchnorm():
    model = small_resnet()
    folded = check_fold(model, torch.randn(4, 1, 28, 28))
    assert unfolded_batchnorms(model) == 9 and unfolded_batchnorms(folded) == 0
    # a folded conv carries the BN's shift as its bias
    convs = [m for m in folded.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 9 and all(c.bias is not None for c in convs)


def test_torchvision_resnet18_folds():
    import torchvision

    torch.manual_seed(0)
    model = randomise_bn(torchvision.models.resnet18(weights=None, num_classes=10))
    folded = check_fold(model, torch.randn(2, 3, 32, 32))
    assert unfolded_batchnorms(folded) == 0


def test_separable_rewrite_folds_into_its_pointwise_conv():
    model = small_resnet()
    x = torch.randn(1, 1, 28, 28)
    rewrite(model, "separable", T=1, example_inputs=x, verbose=False)
    model.eval()
    folded = check_fold(model, torch.randn(4, 1, 28, 28))
    assert unfolded_batchnorms(folded) == 0
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in folded.modules())  # depthwise convs remain


class Untraceable(nn.Module):
    """Data-dependent control flow (fx cannot trace it) around a conv/BN pair and a conv shared with a BN."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.side, self.side_bn = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        if y.sum() > -1e30:  # data-dependent branch
            s = self.side(y)
            y = self.side_bn(s) + s  # side's output also feeds the add: folding side_bn would be wrong
        return y


def test_untraceable_model_falls_back_and_stays_exact():
    torch.manual_seed(0)
    model = randomise_bn(Untraceable())
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batchnorm(model, example_inputs=x)
    with torch.inference_mode():
        assert (folded(x) - model(x)).abs().max() <= RTOL * model(x).abs().max()
    # the exact pair is folded; the one whose conv output also feeds the add is not (never a wrong model)
    assert unfolded_batchnorms(folded) == 1
    assert unfolded_batchnorms(fold_batchnorm(model)) == 2  # no example input: left unfolded, not guessed


@pytest.mark.parametrize("training", [True, False])
def test_mode_of_the_original_is_kept(training):
    model = small_resnet().train(training)
    fold_batchnorm(model)
    assert model.training == training
