"""Pretrained weights by name, from the local caches only (nothing is downloaded here).

``model: {name: torchvision:resnet50, weights: DEFAULT}`` resolves torchvision's weights enum and reads the file
from the torch hub cache (``$TORCH_HOME/hub/checkpoints``); ``timm:NAME`` with ``weights: pretrained`` (or a
pretrained tag such as ``a1_in1k``) reads timm's Hugging Face cache or, with ``weights: /path/to/file``, that
file. When a file is absent the error says which file to put where. A ``num_classes`` other than the weights'
keeps the pretrained body and gives the model a new, randomly initialised classifier (logged).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import CompressError

__all__ = ["torchvision_factory", "timm_factory", "replace_head"]

LOG = logging.getLogger(__name__)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def replace_head(model: nn.Module, num_classes: int, *, where: str) -> nn.Module:
    """Give ``model`` a fresh ``nn.Linear`` classifier with ``num_classes`` outputs (its last Linear layer)."""
    from ..module_tree import set_module

    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise CompressError(f"{where}: num_classes={num_classes} differs from the pretrained weights' classes and "
                            "the model has no nn.Linear classifier to replace; drop num_classes")
    name, old = linears[-1]
    set_module(model, name, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    LOG.warning("%s: pretrained body kept, classifier %r re-initialised for %d classes (was %d)", where, name,
                num_classes, old.out_features)
    return model


def torchvision_factory(ident: str, weights: str | None) -> Callable[..., nn.Module]:
    """A factory for ``torchvision:ident`` with ``weights`` (an enum member name, ``DEFAULT`` or ``None``)."""
    import torchvision

    if weights is None:
        return lambda **kw: torchvision.models.get_model(ident, weights=None, **kw)
    try:
        enum = torchvision.models.get_model_weights(ident)
    except (ValueError, KeyError):
        raise CompressError(f"model.weights: torchvision:{ident} has no pretrained weights") from None
    try:
        chosen = enum.DEFAULT if weights == "DEFAULT" else enum[weights]
    except KeyError:
        names = ", ".join(["DEFAULT", *enum.__members__])
        raise CompressError(f"model.weights: torchvision:{ident} has no weights {weights!r}; expected one of "
                            f"{names}") from None
    path = _hub_checkpoints() / os.path.basename(chosen.url)
    if not path.is_file():
        raise CompressError(f"model.weights: {chosen} is not in the local torch hub cache and nothing can be "
                            f"downloaded here; put the file {path.name} (from {chosen.url}) at {path} "
                            "(or set $TORCH_HOME), or give the weights as model.checkpoint")
    classes = len(chosen.meta.get("categories") or ()) or None

    def build(**kw: Any) -> nn.Module:
        wanted = kw.pop("num_classes", None)
        model = torchvision.models.get_model(ident, weights=chosen, **kw)
        if wanted is not None and wanted != classes:
            replace_head(model, wanted, where=f"torchvision:{ident}")
        return model

    return build


def _timm_cached(cfg: Any) -> str | None:
    """The local file timm would read for ``cfg`` (a pretrained config), or ``None`` when it is not cached."""
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            return None
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return found
        return None
    url = getattr(cfg, "url", None)
    path = _hub_checkpoints() / os.path.basename(url) if url else None
    return str(path) if path is not None and path.is_file() else None


def timm_factory(ident: str, weights: str | None) -> Callable[..., nn.Module]:
    """A factory for ``timm:ident`` with ``weights``: ``None``, ``pretrained``, a pretrained tag or a file path."""
    try:
        import timm
    except ImportError:
        raise CompressError("model.name: timm models need the optional package timm "
                            "(pip install 'convnet-compress[timm]')") from None
    if weights is None:
        return lambda **kw: timm.create_model(ident, pretrained=False, **kw)
    if Path(weights).suffix in (".pth", ".pt", ".bin", ".safetensors") or os.sep in weights:
        if not Path(weights).is_file():
            raise CompressError(f"model.weights: {weights}: no such file")
        file = weights
        name = ident
    else:
        name = ident if weights == "pretrained" else f"{ident.split('.')[0]}.{weights}"
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            raise CompressError(f"model.weights: timm has no pretrained weights {name!r}")
        file = _timm_cached(cfg)
        if file is None:
            where = (f"the Hugging Face cache (huggingface-cli download {cfg.hf_hub_id}, on a machine with "
                     "internet, then copy ~/.cache/huggingface)" if cfg.hf_hub_id else
                     f"{_hub_checkpoints() / os.path.basename(cfg.url or 'weights.pth')} (from {cfg.url})")
            raise CompressError(f"model.weights: timm:{name} is not cached locally and nothing can be downloaded "
                                f"here; put it in {where}, or give a file: weights: /path/to/weights.safetensors")

    def build(**kw: Any) -> nn.Module:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": file}, **kw)

    return build
