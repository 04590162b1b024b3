import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.models import build_model, load_checkpoint


def test_builtin_small_resnet_shapes():
    model = build_model({"name": "compress:small_resnet", "kwargs": {"widths": [8, 16], "blocks": [1, 1]}})
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_torchvision_small_input_and_channels():
    model = build_model({"name": "torchvision:resnet18", "kwargs": {"num_classes": 7}, "small_input": True,
                         "in_channels": 1})
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.in_channels == 1
    assert isinstance(model.maxpool, nn.Identity)
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 7)


def test_user_factory(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch.nn as nn\n"
        "def tiny(num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert build_model({"name": "mynets:tiny", "kwargs": {"num_classes": 5}})(torch.randn(1, 1, 8, 8)).shape == (1, 5)


@pytest.mark.parametrize("name, message", [
    ("torchvision:resnet1800", "torchvision has no model"),
    ("compress:nothing", "unknown built-in"),
    ("no_such_pkg_xyz:make", "cannot import factory"),
])
def test_bad_names(name, message):
    with pytest.raises(CompressError, match=message):
        build_model({"name": name})


def test_bad_kwargs():
    with pytest.raises(CompressError, match="rejected the arguments"):
        build_model({"name": "compress:small_resnet", "kwargs": {"colour": 3}})


def test_checkpoint_for_another_architecture_lists_keys(tmp_path):
    other = build_model({"name": "compress:small_resnet", "kwargs": {"num_classes": 4}})
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    model = build_model({"name": "compress:small_resnet", "kwargs": {"num_classes": 10}})
    with pytest.raises(CompressError) as info:
        load_checkpoint(model, path)
    assert "fc.weight: checkpoint (4, 128) vs model (10, 128)" in str(info.value)
    vgg = build_model({"name": "torchvision:vgg11", "kwargs": {"num_classes": 10}})
    torch.save(vgg.state_dict(), path)
    with pytest.raises(CompressError, match="missing keys: .*conv1.weight"):
        load_checkpoint(model, path)


def test_checkpoint_round_trip_and_read_only(tmp_path):
    import hashlib

    model = build_model({"name": "compress:small_resnet"})
    path = tmp_path / "good.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    fresh = load_checkpoint(build_model({"name": "compress:small_resnet"}), path)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest


def test_whole_module_checkpoint(tmp_path):
    model = build_model({"name": "compress:small_resnet"})
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    fresh = load_checkpoint(build_model({"name": "compress:small_resnet"}), path)
    assert torch.equal(fresh.fc.weight, model.fc.weight)


def test_truncated_and_missing_checkpoint(tmp_path):
    model = build_model({"name": "compress:small_resnet"})
    path = tmp_path / "cut.pt"
    torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CompressError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(model, path)
    with pytest.raises(CompressError, match="no such file"):
        load_checkpoint(model, tmp_path / "missing.pt")


def test_safetensors_checkpoint_is_read_with_safetensors(tmp_path):
    from safetensors.torch import save_file

    model = build_model({"name": "compress:small_resnet"})
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    fresh = load_checkpoint(build_model({"name": "compress:small_resnet"}), path)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    (tmp_path / "cut.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CompressError, match="not a readable safetensors file") as info:
        load_checkpoint(build_model({"name": "compress:small_resnet"}), tmp_path / "cut.safetensors")
    assert "truncated or corrupted" not in str(info.value)  # not misreported as a broken torch.save file
