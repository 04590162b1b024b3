"""Save / load compressed models without the recipe and without pickling classes.

A pruned or rewritten model is the original architecture with some modules resized or replaced. :func:`save`
stores, in one file that ``torch.load(weights_only=True)`` reads:

* ``spec``: how to rebuild the original (``{"name": "torchvision:resnet18", "kwargs": {...}}`` for
  :func:`compress.models.build_model`, or whatever a custom ``factory`` accepts);
* ``modules``: a description (type from a whitelist + constructor arguments, children recursively) of every
  module whose type or arguments differ from the rebuilt original, and ``None`` for removed ones;
* ``direct``: new shapes of parameters / buffers owned directly by other modules (e.g. ConvNeXt's
  ``layer_scale`` after pruning);
* ``state_dict`` and ``extra``.

:func:`load` rebuilds the original, replaces the described modules (all through :func:`set_module`), resizes the
direct tensors and loads the state dict strictly. Without a spec, or when a changed module's type is not in the
whitelist, the whole module is pickled instead, with a warning. :func:`export` writes a ``torch.export``
program (and ONNX when ``onnx`` is installed) for deployment; :func:`onnx_bytes` is its ONNX export alone.
"""
from __future__ import annotations

import importlib
import io
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .errors import CompressError
from .io import atomic_torch_save, atomic_write_bytes
from .module_tree import set_module
from .modes import evaluating
from .transforms.modules import ChannelPermute, ChannelShuffle
from .transforms.prune.tp_compat import ShuffleV2Block

__all__ = ["FORMAT", "save", "load", "export", "export_program", "onnx_bytes", "describe", "build"]

FORMAT = "compress.model/1"

_INPLACE = ("inplace",)
_NORM_ARGS = ("normalized_shape", "eps", "elementwise_affine", "bias")
_BN_ARGS = ("num_features", "eps", "momentum", "affine", "track_running_stats")


def _name(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# whitelisted type -> constructor arguments, read back from attributes of the same name (exceptions in
# _ARG_READERS). Keyed by "module:qualname" so describing needs no import (torchvision's LayerNorm2d).
_ARGS: dict[str, tuple[str, ...]] = {
    _name(nn.Conv2d): ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias",
                       "padding_mode"),
    _name(nn.Linear): ("in_features", "out_features", "bias"),
    _name(nn.BatchNorm1d): _BN_ARGS,
    _name(nn.BatchNorm2d): _BN_ARGS,
    _name(nn.LayerNorm): _NORM_ARGS,
    "torchvision.models.convnext:LayerNorm2d": _NORM_ARGS,
    _name(nn.GroupNorm): ("num_groups", "num_channels", "eps", "affine"),
    _name(nn.PReLU): ("num_parameters",),
    _name(nn.Identity): (),
    _name(nn.Sequential): (),
    _name(nn.ReLU): _INPLACE,
    _name(nn.ReLU6): _INPLACE,
    _name(nn.SiLU): _INPLACE,
    _name(nn.Hardswish): _INPLACE,
    _name(nn.Hardsigmoid): _INPLACE,
    _name(nn.Sigmoid): (),
    _name(nn.GELU): ("approximate",),
    _name(nn.Dropout): ("p", "inplace"),
    _name(nn.Flatten): ("start_dim", "end_dim"),
    _name(nn.MaxPool2d): ("kernel_size", "stride", "padding", "dilation", "return_indices", "ceil_mode"),
    _name(nn.AvgPool2d): ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override"),
    _name(nn.AdaptiveAvgPool2d): ("output_size",),
    _name(ChannelShuffle): ("groups",),
    _name(ChannelPermute): ("channels",),
    _name(ShuffleV2Block): ("stride",),
}
_ARG_READERS: dict[str, Callable[[nn.Module], Any]] = {
    "bias": lambda m: getattr(m, "bias", None) is not None,
    "channels": lambda m: int(m.perm.numel()),
    "num_parameters": lambda m: int(m.weight.numel()),
}
_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {
    _name(ChannelPermute): lambda args: ChannelPermute(list(range(args["channels"]))),  # state dict restores perm
}


def _class(type_name: str) -> type:
    """The whitelisted class called ``type_name`` (imported on demand)."""
    module, _, qualname = type_name.partition(":")
    return getattr(importlib.import_module(module), qualname)


class _Undescribable(Exception):
    """A changed module's type is not in the whitelist."""


def _args(module: nn.Module) -> dict[str, Any]:
    reader = lambda name: _ARG_READERS[name](module) if name in _ARG_READERS else getattr(module, name)  # noqa: E731
    return {name: reader(name) for name in _ARGS[_name(type(module))]}


def describe(module: nn.Module, path: str = "") -> dict[str, Any]:
    """Plain-data description ``{"type", "args", "children"}`` of ``module`` and its children.

    Raises:
        _Undescribable: a module (or child) type is not in the whitelist.
    """
    if _name(type(module)) not in _ARGS:
        raise _Undescribable(f"{path or '<root>'}: {_name(type(module))}")
    children = [[name, describe(child, f"{path}.{name}" if path else name)]
                for name, child in module.named_children()]
    return {"type": _name(type(module)), "args": _args(module), "children": children}


def build(description: Mapping[str, Any]) -> nn.Module:
    """Construct the module a :func:`describe` result describes (random weights)."""
    kind = description["type"]
    if kind not in _ARGS:
        raise CompressError(f"load: module type {kind!r} is not one compress can rebuild "
                            f"(known: {', '.join(sorted(_ARGS))})")
    args = dict(description["args"])
    module = _BUILDERS[kind](args) if kind in _BUILDERS else _class(kind)(**args)
    for name, child in description["children"]:
        set_module(module, name, build(child))
    return module


def _changed(old: nn.Module, new: nn.Module) -> bool:
    if type(old) is not type(new):
        return True
    if _name(type(new)) in _ARGS and _args(old) != _args(new):
        return True
    return isinstance(new, nn.Sequential) and list(old._modules) != list(new._modules)


def _diff_modules(old: nn.Module, new: nn.Module, prefix: str = "") -> dict[str, Any]:
    """``{path: description or None}`` for every module of ``new`` that differs from ``old``."""
    out: dict[str, Any] = {}
    for name, child in new._modules.items():
        path = prefix + name
        before = old._modules.get(name)
        if child is None or before is None or _changed(before, child):
            out[path] = None if child is None else describe(child, path)
        else:
            out.update(_diff_modules(before, child, path + "."))
    out.update({prefix + name: None for name in old._modules if name not in new._modules})
    return out


def _diff_direct(old: nn.Module, new: nn.Module, replaced: Mapping[str, Any]) -> dict[str, list[int]]:
    """New shapes of parameters / buffers of modules that are not replaced (e.g. ConvNeXt ``layer_scale``)."""
    out = {}
    for path, module in new.named_modules():
        if any(path == r or path.startswith(r + ".") for r in replaced):
            continue
        before = old.get_submodule(path)
        for name, tensor in [*module._parameters.items(), *module._buffers.items()]:
            ref = before._parameters.get(name, before._buffers.get(name))
            if tensor is not None and ref is not None and tensor.shape != ref.shape:
                out[f"{path}.{name}" if path else name] = list(tensor.shape)
    return out


def _rebuild(spec: Mapping[str, Any], factory: Callable[[dict], nn.Module] | None) -> nn.Module:
    if factory is not None:
        return factory(dict(spec))
    from .models import build_model

    # the saved state holds every weight: rebuild the bare architecture (pretrained weights need no cache here)
    return build_model({**dict(spec), "weights": None})


def _plain_spec(spec: Any) -> dict[str, Any]:
    return dict(spec.spec()) if hasattr(spec, "spec") else dict(spec)


def save(model: nn.Module, path: str | Path, *, spec: Any = None, extra: Mapping[str, Any] | None = None,
         factory: Callable[[dict], nn.Module] | None = None) -> Path:
    """Write ``model`` (architecture changes + weights) to ``path`` atomically.

    Args:
        model: the (pruned / rewritten) model.
        path: destination file.
        spec: how to rebuild the original architecture: a ``{"name", "kwargs", ...}`` dict or a
            :class:`compress.models.ModelConfig`. ``None`` pickles the whole module (with a warning).
        extra: plain data stored alongside (metrics, recipe name, ...).
        factory: builds the original from ``spec`` instead of :func:`compress.models.build_model`.

    Returns:
        The path written.
    """
    extra = dict(extra or {})
    if spec is None:
        warnings.warn("save: no model spec given; pickling the whole module (loading needs the same code and "
                      "torch.load(weights_only=False))", stacklevel=2)
        return atomic_torch_save({"format": FORMAT, "pickled": model, "extra": extra}, path)
    spec = _plain_spec(spec)
    original = _rebuild(spec, factory)
    if type(original) is not type(model):
        raise CompressError(f"save: spec builds a {type(original).__name__}, but the model is a {type(model).__name__}")
    try:
        modules = _diff_modules(original, model)
    except _Undescribable as err:
        warnings.warn(f"save: cannot describe changed module {err}; pickling the whole module", stacklevel=2)
        return atomic_torch_save({"format": FORMAT, "pickled": model, "extra": extra}, path)
    payload = {"format": FORMAT, "spec": spec, "modules": modules, "direct": _diff_direct(original, model, modules),
               "state_dict": model.state_dict(), "training": model.training, "extra": extra}
    return atomic_torch_save(payload, path)


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    if not path.is_file():
        raise CompressError(f"load: {path}: no such file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - a pickled module (saved without spec) needs the full unpickler
        warnings.warn(f"load: {path} holds a pickled module; loading it with weights_only=False", stacklevel=3)
        try:
            payload = torch.load(path, map_location=map_location, weights_only=False)
        except Exception as err:  # noqa: BLE001 - torch raises many kinds for bad files
            raise CompressError(f"load: {path}: not a readable model file ({type(err).__name__}: {err})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CompressError(f"load: {path}: not a compress model file (expected format {FORMAT!r})")
    return payload


def load(path: str | Path, *, map_location: Any = "cpu",
         factory: Callable[[dict], nn.Module] | None = None) -> nn.Module:
    """Rebuild the model :func:`save` wrote: architecture changes applied, weights loaded strictly, same mode.

    Args:
        path: a file written by :func:`save`.
        map_location: where tensors (and the returned model) go.
        factory: builds the original from the stored spec instead of :func:`compress.models.build_model`.

    Raises:
        CompressError: missing / foreign file, unknown module type, or weights that do not fit.
    """
    path = Path(path)
    payload = _read(path, map_location)
    if "pickled" in payload:
        return payload["pickled"]
    model = _rebuild(payload["spec"], factory)
    for where in sorted(payload["modules"], key=lambda p: p.count(".")):
        description = payload["modules"][where]
        set_module(model, where, None if description is None else build(description))
    state = payload["state_dict"]
    for key, shape in payload["direct"].items():
        owner_path, _, name = key.rpartition(".")
        owner = model.get_submodule(owner_path) if owner_path else model
        fresh = torch.empty(shape, dtype=state[key].dtype)
        if name in owner._parameters:
            owner.register_parameter(name, nn.Parameter(fresh, requires_grad=owner._parameters[name].requires_grad))
        else:
            owner.register_buffer(name, fresh)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CompressError(f"load: {path}: weights do not fit the rebuilt model ({err})") from None
    model.train(payload.get("training", False))
    return model.to(map_location) if isinstance(map_location, (str, torch.device)) else model


EXPORT_BATCHES = (1, 8)  # batch sizes an exported program is checked at against eager PyTorch
EXPORT_RTOL = 1e-4  # largest relative max error accepted between the exported program and eager


def export(model: nn.Module, example_inputs: torch.Tensor, path: str | Path) -> dict[str, Path]:
    """Export ``model`` for deployment: ``torch.export`` program at ``path`` (``.pt2``), ONNX next to it if possible.

    The batch dimension is dynamic in both: the program is traced on a batch of 2 (torch.export specialises a
    size-1 dimension) and checked against eager PyTorch at batch sizes :data:`EXPORT_BATCHES`.

    Args:
        model: the model (exported in eval mode; its mode is restored).
        example_inputs: one input batch ``(B, C, H, W)``; only its first sample's shape and values are used.
        path: destination of the ``torch.export`` archive.

    Returns:
        ``{"torch_export": path}`` plus ``"onnx"`` when the ``onnx`` package is importable and export succeeded.

    Raises:
        CompressError: the exported program cannot run at another batch size, or its outputs differ from eager by
            more than :data:`EXPORT_RTOL` (relative to the largest output).
    """
    path = Path(path)
    export_program(model, example_inputs, path)
    written = {"torch_export": path}
    with evaluating(model):
        written.update(_export_onnx(model, example_inputs, path.with_suffix(".onnx")))
    return written


def export_program(model: nn.Module, example_inputs: torch.Tensor, path: str | Path) -> float:
    """Write ``model`` as a ``torch.export`` program (``.pt2``, dynamic batch) and return its measured error.

    Loading needs only torch: ``torch.export.load(path).module()(x)``, ``x`` of shape ``(B, C, H, W)``.

    Returns:
        The largest relative max error against eager PyTorch over the batch sizes :data:`EXPORT_BATCHES`.

    Raises:
        CompressError: the program cannot run at another batch size, or differs by more than :data:`EXPORT_RTOL`.
    """
    sample = example_inputs[:1]
    with evaluating(model):
        with torch.no_grad():
            program = torch.export.export(model, (_traced_on(sample),), dynamic_shapes=_dynamic_batch())
        error = _check_batches(program.module(), model, sample)
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        atomic_write_bytes(Path(path), buffer.getvalue())
    return error


def _dynamic_batch() -> tuple[dict[int, Any]]:
    """``dynamic_shapes`` of one input whose dimension 0 (the batch) is free (a fresh ``Dim`` each export)."""
    return ({0: torch.export.Dim("batch", min=1)},)


def _traced_on(sample: torch.Tensor) -> torch.Tensor:
    """``sample`` ``(1, C, H, W)`` repeated to a batch of 2: torch.export specialises a size-1 dimension."""
    return sample.expand(2, *sample.shape[1:]).clone()


def onnx_bytes(model: nn.Module, example_inputs: torch.Tensor) -> bytes:
    """``model`` as a serialized ONNX model with a dynamic batch axis (torch.onnx's ``torch.export`` exporter).

    The graph has one input ``input`` ``(batch, C, H, W)`` and one output ``output`` ``(batch, ...)``; it is
    traced on a batch of 2 built from the first sample of ``example_inputs`` ``(B, C, H, W)``. ``model`` is
    exported as it is (put it in eval mode first) and not modified.

    A lone ``nn.Conv2d`` with zero, integer padding is written directly as the one ``Conv`` node the exporter
    would emit (opset 20, same input and output names and dynamic batch): the exporter takes about half a
    second a model, and the planner's latency table turns hundreds of single convs into runtime sessions (each
    checked against eager PyTorch, so this path is verified like the exporter's).

    Raises:
        Whatever the exporter raises for a model it cannot export (callers decide how to report it).
    """
    if type(model) is nn.Conv2d and model.padding_mode == "zeros" and isinstance(model.padding, tuple):
        return _conv_onnx(model, tuple(example_inputs.shape[1:]))
    with torch.no_grad():
        program = torch.onnx.export(model, (_traced_on(example_inputs[:1]),), None, dynamo=True,
                                    dynamic_shapes=_dynamic_batch(), input_names=["input"],
                                    output_names=["output"], verbose=False)
    return program.model_proto.SerializeToString()


ONNX_OPSET, ONNX_IR_VERSION = 20, 10  # what torch.onnx's exporter writes with this torch


def _conv_onnx(conv: nn.Conv2d, chw: tuple[int, ...]) -> bytes:
    """One ``Conv`` node computing ``conv`` on ``input`` ``(batch, C, H, W)`` float32 -> ``output``."""
    from onnx import TensorProto, helper, numpy_helper

    def array(t: torch.Tensor, name: str) -> Any:
        return numpy_helper.from_array(t.detach().to("cpu", torch.float32).contiguous().numpy(), name)

    initializers = [array(conv.weight, "weight")] + ([array(conv.bias, "bias")] if conv.bias is not None else [])
    node = helper.make_node("Conv", ["input"] + [t.name for t in initializers], ["output"],
                            kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                            pads=list(conv.padding) * 2, dilations=list(conv.dilation), group=conv.groups)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["batch", *chw])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT,
                                                             ["batch", conv.out_channels, None, None])],
                              initializer=initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    proto.ir_version = ONNX_IR_VERSION
    return proto.SerializeToString()


def _check_batches(exported: nn.Module, model: nn.Module, sample: torch.Tensor) -> float:
    """The largest relative error of ``exported`` against ``model`` over EXPORT_BATCHES (:class:`CompressError`
    when it does not run at one or differs by more than EXPORT_RTOL)."""
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for size in EXPORT_BATCHES:
        x = sample + 0.1 * torch.randn(size, *sample.shape[1:], generator=generator).to(sample)
        with torch.no_grad():
            try:
                got = exported(x)
            except Exception as err:  # noqa: BLE001 - a guard failure is a refusal to run at this batch size
                raise CompressError(f"export: the exported program does not run at batch {size} "
                                    f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
            want = model(x)
        error = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
        if error > EXPORT_RTOL:
            raise CompressError(f"export: the exported program differs from eager PyTorch at batch {size}: "
                                f"relative max error {error:.2e} > {EXPORT_RTOL:g}")
        worst = max(worst, error)
    return worst


def _export_onnx(model: nn.Module, example_inputs: torch.Tensor, path: Path) -> dict[str, Path]:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {}
    try:
        data = onnx_bytes(model, example_inputs)
    except Exception as err:  # noqa: BLE001 - ONNX is optional; the torch.export archive is already written
        warnings.warn(f"export: ONNX export failed ({type(err).__name__}: {err}); wrote only {path.stem}.pt2",
                      stacklevel=3)
        return {}
    return {"onnx": atomic_write_bytes(path, data)}
