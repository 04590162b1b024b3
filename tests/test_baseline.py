"""Baseline: trained once and cached (keyed by model/data/training/seed), or loaded from a checkpoint."""
import torch

from compress.baseline import baseline_cache_key, obtain_baseline
from compress.data import DataConfig, build_data
from compress.models import ModelConfig

MODEL = ModelConfig(name="compress:small_resnet", kwargs={"widths": [4, 8], "blocks": [1, 1], "in_channels": 3})
DATA = DataConfig(source="synthetic", synthetic_size=64, image_size=8, val_size=8, batch_size=16)
TRAIN = {"epochs": 1, "lr": 0.05}


def test_cache_reuse_returns_the_same_weights(isolated_cache):
    data = build_data(DATA, seed=0)
    cpu = torch.device("cpu")
    first, origin1 = obtain_baseline(MODEL, DATA, TRAIN, data, device=cpu, seed=0, verbose=False)
    assert origin1["source"] == "trained"
    assert (isolated_cache / "baselines" / f"{origin1['key']}.pt").is_file()
    second, origin2 = obtain_baseline(MODEL, DATA, TRAIN, data, device=cpu, seed=0, verbose=False)
    assert origin2["source"] == "cache" and origin2["key"] == origin1["key"]
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)


def test_cache_key_changes_with_what_matters():
    base = baseline_cache_key(MODEL, DATA, TRAIN, 0)
    assert baseline_cache_key(MODEL, DATA, TRAIN, 1) != base
    assert baseline_cache_key(MODEL, DATA, {"epochs": 2, "lr": 0.05}, 0) != base
    assert baseline_cache_key(MODEL, DataConfig(source="synthetic", synthetic_size=65, image_size=8, val_size=8,
                                                batch_size=16), TRAIN, 0) != base
    # loader plumbing does not change the trained weights
    assert baseline_cache_key(MODEL, DataConfig(source="synthetic", synthetic_size=64, image_size=8, val_size=8,
                                                batch_size=16, workers=2, eval_batch_size=7), TRAIN, 0) == base
    # custom normalisation statistics change the weights; without them the key is the one made before they existed
    import dataclasses
    assert baseline_cache_key(MODEL, dataclasses.replace(DATA, mean=[0.3], std=[0.4]), TRAIN, 0) != base


def test_checkpoint_is_loaded_not_trained(tmp_path, isolated_cache):
    from compress.models import build_model

    data = build_data(DATA, seed=0)
    model = build_model(MODEL)
    path = tmp_path / "mine.pt"
    torch.save(model.state_dict(), path)
    cfg = ModelConfig(name=MODEL.name, kwargs=MODEL.kwargs, checkpoint=str(path))
    loaded, origin = obtain_baseline(cfg, DATA, TRAIN, data, device=torch.device("cpu"), seed=0, verbose=False)
    assert origin["source"] == "checkpoint"
    assert torch.equal(loaded.fc.weight, model.fc.weight)
    assert not (isolated_cache / "baselines").exists()
