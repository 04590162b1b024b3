"""Pretrained weights by name, offline: read from the local caches, or a clear error naming the file to put where.

The cached files here are written by the tests themselves (random weights at the path torchvision / timm read),
so the tests check the loading path exactly without any download.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from compress.errors import CompressError
from compress.models import ModelConfig, build_model
from compress.serialization import load, save


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _cache_resnet18(checkpoints: Path) -> dict[str, torch.Tensor]:
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / os.path.basename(weights.url))
    return state


def test_torchvision_weights_missing_names_the_file_and_place(torch_home):
    with pytest.raises(CompressError, match=r"put the file resnet18-f37072fd\.pth .* at .*hub/checkpoints"):
        build_model({"name": "torchvision:resnet18", "weights": "DEFAULT"})


def test_torchvision_weights_in_kwargs_load_from_the_hub_cache(torch_home):
    state = _cache_resnet18(torch_home)
    spec = ModelConfig(name="torchvision:resnet18", kwargs={"weights": "DEFAULT"})  # the "multiple values" case
    assert spec.weights == "DEFAULT" and "weights" not in spec.kwargs
    model = build_model(spec)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_other_num_classes_keeps_the_body_and_reinitialises_the_head(torch_home, tmp_path, monkeypatch):
    state = _cache_resnet18(torch_home)
    model = build_model({"name": "torchvision:resnet18", "weights": "IMAGENET1K_V1", "kwargs": {"num_classes": 7}})
    assert model.fc.out_features == 7
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    # a saved model reloads without the weights cache (the architecture is rebuilt bare, the state restored)
    path = save(model, tmp_path / "model.pt", spec=ModelConfig(name="torchvision:resnet18", weights="DEFAULT",
                                                                kwargs={"num_classes": 7}))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    again = load(path)
    assert torch.equal(again.fc.weight, model.fc.weight)


def test_unknown_weights_name_lists_the_choices():
    with pytest.raises(CompressError, match="no weights 'IMAGENET9K'; expected one of DEFAULT, IMAGENET1K_V1"):
        build_model({"name": "torchvision:resnet18", "weights": "IMAGENET9K"})
    with pytest.raises(CompressError, match="named weights exist for torchvision: and timm:"):
        build_model({"name": "compress:small_resnet", "weights": "DEFAULT"})


timm = pytest.importorskip("timm")


def test_timm_weights_missing_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CompressError, match="timm:resnet18 is not cached locally .* weights: /path/to"):
        build_model({"name": "timm:resnet18", "weights": "pretrained"})


def test_timm_weights_from_a_file(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    save_file(reference.state_dict(), str(tmp_path / "r18.safetensors"))
    model = build_model({"name": "timm:resnet18", "weights": str(tmp_path / "r18.safetensors")})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-5)
