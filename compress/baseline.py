"""The original model of a run: loaded from the user's checkpoint, or trained once and cached."""
from __future__ import annotations

import logging

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import parse, to_plain
from .data import DataBundle, DataConfig
from .data.split import SPLIT_VERSION
from .env import cache_root
from .errors import CompressError
from .io import atomic_torch_save
from .models import ModelConfig, build_model, load_checkpoint
from .modes import evaluating

__all__ = ["obtain_baseline", "given_baseline", "baseline_cache_key", "default_cache_dir"]

LOG = logging.getLogger(__name__)

# Data options that change what a trained baseline learns (loader plumbing like workers does not).
_DATA_KEYS = ("source", "root", "resize", "channels", "normalize", "augment", "batch_size", "train_subset",
              "val_size", "image_size", "num_classes", "synthetic_size")
# ... and those that do only when set (absent from keys made before they existed, so those stay valid)
_DATA_KEYS_IF_SET = ("mean", "std")


def default_cache_dir() -> Path:
    """Default root of the baseline cache (baselines live in its ``baselines/``): :func:`compress.env.cache_root`."""
    return cache_root()


def baseline_cache_key(model: ModelConfig, data: DataConfig, train: dict[str, Any], seed: int) -> str:
    """A hash of everything that determines the trained baseline's weights."""
    payload = {
        "model": to_plain(model.spec()),
        "data": {k: to_plain(getattr(data, k)) for k in _DATA_KEYS
                 + tuple(k for k in _DATA_KEYS_IF_SET if getattr(data, k) is not None)},
        "train": to_plain(train),
        "seed": seed,
        "torch": torch.__version__.split("+")[0],
        "format": 1,
        "splits": SPLIT_VERSION,  # a baseline trained on other splits (positional, before v2) is not this one
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


def _check_head(model: nn.Module, data: DataBundle, device: torch.device, where: str) -> None:
    x = torch.zeros(2, *data.input_shape, device=device)
    try:
        with torch.no_grad(), evaluating(model):
            out = model(x)
    except RuntimeError as err:
        raise CompressError(f"{where}: the model cannot take the data's input shape {tuple(data.input_shape)} "
                            f"({str(err).splitlines()[0]}); check data.channels/data.resize or model.in_channels")
    if out.ndim != 2 or out.shape[1] != data.num_classes:
        raise CompressError(f"{where}: the model outputs {tuple(out.shape[1:])} per image but the data has "
                            f"{data.num_classes} classes; set model.kwargs.num_classes: {data.num_classes}")


def given_baseline(model: nn.Module, data: DataBundle, *, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A caller's in-memory trained model as the baseline: a copy on ``device`` (the caller's object is never
    changed), checked against the data's input shape and classes."""
    import copy

    baseline = copy.deepcopy(model).to(device)
    _check_head(baseline, data, device, "model")
    return baseline.eval(), {"source": "in-memory", "class": f"{type(model).__module__}.{type(model).__qualname__}"}


def obtain_baseline(model_cfg: ModelConfig, data_cfg: DataConfig, train_cfg: dict[str, Any], data: DataBundle, *,
                    device: torch.device, seed: int, cache: bool = True, cache_dir: str | None = None,
                    verbose: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Return the trained original model (on ``device``, eval mode) and a description of where it came from.

    With ``model_cfg.checkpoint`` the weights are loaded (the file is never written). Otherwise the model is
    trained with ``compress.training.fit`` and cached under ``cache_dir/baselines/<key>.pt``; a later run with
    the same model, data, training options and seed loads it instead of training.
    """
    from .training import TrainConfig, fit
    from .training.distributed import is_main, barrier

    model = build_model(model_cfg)
    if model_cfg.checkpoint:
        load_checkpoint(model, model_cfg.checkpoint)
        model.to(device)
        _check_head(model, data, device, "model.checkpoint")
        return model.eval(), {"source": "checkpoint", "path": str(model_cfg.checkpoint)}
    model.to(device)
    _check_head(model, data, device, "model")
    train = parse(TrainConfig, train_cfg, path="baseline.train")
    key = baseline_cache_key(model_cfg, data_cfg, train_cfg, seed)
    path = Path(cache_dir or default_cache_dir()) / "baselines" / f"{key}.pt"
    if cache and path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(blob["state_dict"])
            return model.to(device).eval(), {"source": "cache", "path": str(path), "key": key,
                                             "history": blob.get("history")}
        except Exception as err:  # noqa: BLE001 - a broken cache entry is retrained, not fatal
            LOG.warning(f"ignoring unreadable cached baseline {path} ({type(err).__name__}); retraining")
    history = fit(model, data.train, val_loader=data.val, config=train, device=device, seed=seed, verbose=verbose)
    summary = history.summary() if hasattr(history, "summary") else {}
    if cache and is_main():
        atomic_torch_save({"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                           "history": summary, "key": key}, path)
    barrier()
    return model.eval(), {"source": "trained", "path": str(path) if cache else None, "key": key, "history": summary}
