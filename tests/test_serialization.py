"""save -> load restores pruned / rewritten architectures and weights exactly, without pickling classes."""
from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from torch import nn

from compress.errors import CompressError
from compress.serialization import export, load, save
from compress.transforms.modules import ChannelPermute, ChannelShuffle
from compress.transforms.prune.pruner import prune


def _torchvision(spec: dict) -> nn.Module:
    return torchvision.models.get_model(spec["name"].split(":", 1)[1], weights=None, **spec["kwargs"])


def _spec(name: str) -> dict:
    return {"name": f"torchvision:{name}", "kwargs": {"num_classes": 10}}


def _round_trip(model: nn.Module, spec: dict, path, factory=_torchvision) -> nn.Module:
    model.eval()
    save(model, path, spec=spec, factory=factory, extra={"note": "test"})
    payload = torch.load(path, weights_only=True)  # no classes pickled
    assert payload["extra"] == {"note": "test"} and payload["spec"] == spec
    loaded = load(path, factory=factory).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert [(k, v.shape) for k, v in loaded.state_dict().items()] == [(k, v.shape) for k, v in
                                                                     model.state_dict().items()]
    return loaded


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x0_5"])
def test_pruned_torchvision_models_round_trip(name, tmp_path):
    model = _torchvision(_spec(name))
    prune(model, torch.randn(1, 3, 32, 32), ratio=0.3)
    _round_trip(model, _spec(name), tmp_path / f"{name}.pt")


def test_rewrite_like_sequentials_round_trip(tmp_path):
    model = _torchvision(_spec("resnet18"))
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(0))
    # what the rewrites produce: nn.Sequential of convs and channel shuffles / permutations in place of a conv
    model.layer1[0].conv2 = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=4, bias=False), ChannelShuffle(4),
                                          nn.Conv2d(64, 64, 1, groups=4, bias=False))
    model.layer2[0].conv1 = nn.Sequential(nn.Conv2d(64, 128, 3, stride=2, padding=1, groups=2, bias=False),
                                          ChannelPermute(perm))
    del model.layer4[1].relu  # a removed module is restored as removed ...
    model.layer4[1].relu = nn.ReLU()  # ... and a re-added one keeps its place in the description
    loaded = _round_trip(model, _spec("resnet18"), tmp_path / "rewritten.pt")
    assert torch.equal(loaded.layer2[0].conv1[1].perm, perm)


class Scaled(nn.Module):
    """A conv whose output is scaled by a parameter the model owns directly (like ConvNeXt's layer_scale)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 16, 3, padding=1), nn.Linear(16, 10)
        self.scale = nn.Parameter(torch.rand(16, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((self.conv(x) * self.scale).mean(dim=(2, 3)))


def test_direct_parameters_are_resized(tmp_path):
    model = Scaled()
    prune(model, torch.randn(1, 3, 32, 32), ratio=0.25)
    assert model.scale.shape == (12, 1, 1)
    _round_trip(model, {"name": "tests:Scaled", "kwargs": {}}, tmp_path / "scaled.pt", factory=lambda spec: Scaled())
    assert torch.load(tmp_path / "scaled.pt", weights_only=True)["direct"] == {"scale": [12, 1, 1]}


def test_default_factory_is_build_model(tmp_path):
    pytest.importorskip("compress.models")
    model = _torchvision(_spec("resnet18"))
    prune(model, torch.randn(1, 3, 32, 32), ratio=0.5)
    save(model.eval(), tmp_path / "m.pt", spec=_spec("resnet18"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load(tmp_path / "m.pt")(x), model(x))


def test_without_spec_the_module_is_pickled_with_a_warning(tmp_path):
    model = Scaled().eval()
    with pytest.warns(UserWarning, match="pickling the whole module"):
        save(model, tmp_path / "p.pt")
    with pytest.warns(UserWarning, match="weights_only=False"):
        loaded = load(tmp_path / "p.pt")
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


class Custom(nn.Module):
    """A user module compress has no description for."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_unknown_changed_module_falls_back_to_pickle(tmp_path):
    model = Scaled().eval()
    model.conv = nn.Sequential(copy.deepcopy(model.conv), Custom())
    with pytest.warns(UserWarning, match="cannot describe changed module conv.1"):
        save(model, tmp_path / "c.pt", spec={"name": "x:y", "kwargs": {}}, factory=lambda spec: Scaled())
    assert "pickled" in torch.load(tmp_path / "c.pt", weights_only=False)


def test_bad_files_raise_compress_error(tmp_path):
    with pytest.raises(CompressError, match="no such file"):
        load(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(CompressError, match="not a compress model file"):
        load(tmp_path / "foreign.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CompressError, match="not a readable model file"), pytest.warns(UserWarning):
        load(tmp_path / "garbage.pt")


def test_export_writes_a_loadable_program(tmp_path):
    model = _torchvision(_spec("shufflenet_v2_x0_5"))  # pruned: splits sized by attributes, permutes
    x = torch.randn(1, 3, 32, 32)
    prune(model, x, ratio=0.3)
    model.train()
    written = export(model, x, tmp_path / "model.pt2")
    assert model.training  # mode restored
    program = torch.export.load(written["torch_export"])
    with torch.no_grad():
        assert torch.allclose(program.module()(x), model.eval()(x), atol=1e-5)


def test_exported_program_has_a_dynamic_batch(tmp_path):
    model = _torchvision(_spec("resnet18")).eval()
    x = torch.randn(1, 3, 32, 32)
    written = export(model, x, tmp_path / "model.pt2")
    program = torch.export.load(written["torch_export"]).module()
    with torch.no_grad():
        for batch in (1, 3, 8):  # the program was traced once; every batch size runs and matches eager
            xb = torch.randn(batch, 3, 32, 32)
            torch.testing.assert_close(program(xb), model(xb), rtol=1e-4, atol=1e-5)
