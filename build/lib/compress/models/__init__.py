"""Models: build from a spec string, adapt to small inputs, load user checkpoints with clear errors."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import CompressError
from ..module_tree import set_module
from .config import ModelConfig
from .small import small_mobilenet_v2, small_resnet
from .weights import timm_factory, torchvision_factory

__all__ = ["ModelConfig", "build_model", "load_checkpoint", "small_resnet", "small_mobilenet_v2", "BUILTINS"]

BUILTINS: dict[str, Callable[..., nn.Module]] = {
    "small_resnet": small_resnet,
    "small_mobilenet_v2": small_mobilenet_v2,
}


def _factory(name: str, weights: str | None = None) -> Callable[..., nn.Module]:
    kind, _, ident = name.partition(":")
    if weights is not None and kind not in ("torchvision", "timm"):
        raise CompressError(f"model.weights: named weights exist for torchvision: and timm: models, not {name!r}; "
                            "give trained weights as model.checkpoint")
    if kind == "compress":
        if ident not in BUILTINS:
            raise CompressError(f"model.name: unknown built-in {ident!r}; expected one of {sorted(BUILTINS)}")
        return BUILTINS[ident]
    if kind == "torchvision":
        import torchvision

        if ident not in torchvision.models.list_models():
            raise CompressError(f"model.name: torchvision has no model {ident!r} "
                                "(see torchvision.models.list_models())")
        return torchvision_factory(ident, weights)
    if kind == "timm":
        return timm_factory(ident, weights)
    try:
        module = importlib.import_module(kind)
        return getattr(module, ident)
    except (ImportError, AttributeError) as err:
        raise CompressError(f"model.name: cannot import factory {name!r} ({err}); expected "
                            "'package.module:function' importable from the current directory or PYTHONPATH") from None


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise CompressError("model: no Conv2d layer found; compress works on convolutional networks")


def _adapt_stem(model: nn.Module, *, small_input: bool, in_channels: int | None) -> None:
    name, conv = _first_conv(model)
    if small_input:
        # 28–32 px images lose all resolution to a 7x7/2 stem plus max-pool; keep it at full size.
        kernel = 3 if conv.kernel_size[0] > 3 else conv.kernel_size[0]
        new = nn.Conv2d(in_channels or conv.in_channels, conv.out_channels, kernel, stride=1, padding=kernel // 2,
                        bias=conv.bias is not None)
        set_module(model, name, new)
        if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            model.maxpool = nn.Identity()
    elif in_channels is not None and in_channels != conv.in_channels:
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                        dilation=conv.dilation, groups=1, bias=conv.bias is not None)
        set_module(model, name, new)


def build_model(spec: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build the architecture described by ``spec`` (random weights; see :func:`load_checkpoint`).

    Args:
        spec: a :class:`ModelConfig` or its :meth:`ModelConfig.spec` dict.
    """
    if not isinstance(spec, ModelConfig):
        spec = ModelConfig(**{k: v for k, v in dict(spec).items() if k != "checkpoint"})
    try:
        model = _factory(spec.name, spec.weights)(**spec.kwargs)
    except TypeError as err:
        raise CompressError(f"model.kwargs: {spec.name} rejected the arguments {dict(spec.kwargs)} ({err})") from None
    if not isinstance(model, nn.Module):
        raise CompressError(f"model.name: {spec.name} returned {type(model).__name__}, expected a torch.nn.Module")
    _adapt_stem(model, small_input=spec.small_input, in_channels=spec.in_channels)
    return model


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A ``.safetensors`` state dict (read with the safetensors library, never ``torch.load``)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CompressError(f"model.checkpoint: {path}: reading .safetensors needs the safetensors package "
                            "(pip install safetensors)") from None
    try:
        return load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for bad headers
        raise CompressError(f"model.checkpoint: {path}: not a readable safetensors file "
                            f"({type(err).__name__}: {err})") from None


def _read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise CompressError(f"model.checkpoint: {path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err_safe:  # noqa: BLE001 - torch raises many kinds for bad files
        try:  # whole pickled modules need weights_only=False; only for files the user chose to load
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001
            raise CompressError(f"model.checkpoint: {path}: not a readable PyTorch checkpoint "
                                f"(truncated or corrupted? {type(err).__name__}: {err}; "
                                f"safe load said: {type(err_safe).__name__})") from None


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        odd = next((k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))), None)
        if obj and odd is None:
            if all(k.startswith("module.") for k in obj):  # saved from a DataParallel/DDP wrapper
                return {k.removeprefix("module."): v for k, v in obj.items()}
            return dict(obj)
        got = "an empty mapping" if not obj else f"a mapping whose entry {odd!r} is not a tensor"
        raise CompressError(f"model.checkpoint: {path}: expected a state_dict (name -> tensor) or a whole "
                            f"nn.Module, got {got}")
    raise CompressError(f"model.checkpoint: {path}: expected a state_dict (name -> tensor) or a whole nn.Module, "
                        f"got {type(obj).__name__}")


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load weights from ``path`` into ``model`` strictly; the file is only read, never modified.

    Raises:
        CompressError: unreadable file, missing/unexpected keys or shape mismatches (all listed), NaN/Inf values.
    """
    path = Path(path)
    state = _extract_state_dict(_read_checkpoint(path), path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"model.checkpoint: {path} does not fit the model (another architecture or class count?)"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items) - 8} more)" if len(items) > 8 else "")
                lines.append(f"  {title}: {shown}")
        raise CompressError("\n".join(lines))
    _check_finite(state, path)
    model.load_state_dict(state)
    return model


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN/Inf: every later step would only propagate them."""
    bad = [f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values)" for k, v in state.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        shown = ", ".join(bad[:8]) + (f", ... ({len(bad) - 8} more)" if len(bad) > 8 else "")
        raise CompressError(f"model.checkpoint: {path}: non-finite (NaN/Inf) values in {shown}; expected finite "
                            "trained weights (was training diverging when it was saved?)")
