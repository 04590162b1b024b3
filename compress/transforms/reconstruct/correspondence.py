"""Which layer of the compressed model is fitted to which output channels of the original.

A layer is fitted to the original's layer of the same qualified name (a plain ``nn.Conv2d`` / ``nn.Linear``
there). In the compressed model that name holds

* the same kind of layer, or
* a rewrite's ``nn.Sequential`` whose last conv / linear produces its output, possibly through trailing
  :class:`~compress.transforms.modules.ChannelPermute` modules (separable, bottleneck, grouped rewrites) or the
  ``nn.Identity`` an absorbed permute leaves: that last layer is fitted, its channels mapped through the permutes.

Each output channel of the name is then matched to an original channel (the "origins"), first of these that
applies:

1. ``channels[name]`` given by the caller (e.g. ``ChannelOrigins.index`` kept while pruning);
2. the weights: a pruned (or permute-absorbed) layer whose weight is, exactly, rows and input columns of the
   original's (``W = W_orig[kept_out][:, kept_in]``) gives ``kept_out``;
3. the same width: channel ``i`` is original channel ``i`` -- an assumption the caller checks on data
   (:func:`identity_plausible`), since an absorbed permute reorders channels without changing the width.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from ..modules import ChannelPermute

__all__ = ["Pairing", "pair_layer", "match_rows", "identity_plausible"]

_LINEAR = (nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class Pairing:
    """How one layer of the compressed model is fitted (or why not).

    Attributes:
        layer: the qualified name in both models.
        fitted: the qualified name of the conv / linear whose weights are fitted (``layer`` or inside it).
        channels: ``(O,)`` the original output channel for each output channel of ``fitted``; ``None`` when
            ``reason`` is set.
        assumed: the channels were assumed from equal widths (to be checked on data) rather than known.
        reason: why the layer is not fitted (``None``: it is).
    """

    layer: str
    fitted: str
    channels: torch.Tensor | None = None
    assumed: bool = False
    reason: str | None = None


def _width(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def _tail(module: nn.Module) -> tuple[str, torch.Tensor | None] | None:
    """``(child name, source)`` of a Sequential ending in a conv / linear and permutes: compound output channel
    ``j`` is the child's channel ``source[j]``; ``None`` for any other module."""
    if not isinstance(module, nn.Sequential):
        return None
    children = list(module.named_children())
    source = None
    while children and isinstance(children[-1][1], (ChannelPermute, nn.Identity)):  # Identity: an absorbed permute
        last = children.pop()[1]
        if isinstance(last, ChannelPermute):
            source = last.perm.cpu() if source is None else source[last.perm.cpu()]  # out[:, j] = x[:, perm[j]]
    if not children or type(children[-1][1]) not in _LINEAR:
        return None
    return children[-1][0], source


def match_rows(weight: torch.Tensor, reference: torch.Tensor) -> torch.Tensor | None:
    """``kept_out`` with ``weight == reference[kept_out][:, kept_in]`` exactly for some ``kept_in``, or ``None``.

    Args:
        weight: ``(O, I, ...)`` the compressed layer's weight.
        reference: ``(O_ref, I_ref, ...)`` the original's, same trailing kernel shape.
    """
    if weight.dim() != reference.dim() or weight.shape[2:] != reference.shape[2:]:
        return None
    w, ref = weight.detach().cpu(), reference.detach().cpu()
    if w.shape[0] > ref.shape[0] or w.shape[1] > ref.shape[1]:
        return None
    slices: dict[bytes, list[tuple[int, int]]] = {}
    for k in range(ref.shape[0]):
        for i in range(ref.shape[1]):
            slices.setdefault(ref[k, i].contiguous().numpy().tobytes(), []).append((k, i))

    def votes(j: int | None, i: int | None) -> Counter:
        found: Counter = Counter()
        cells = [(j, c) for c in range(w.shape[1])] if i is None else [(r, i) for r in range(w.shape[0])]
        for r, c in cells:
            for k, i_ref in slices.get(w[r, c].contiguous().numpy().tobytes(), ()):
                found[k if i is None else i_ref] += 1
        return found

    kept_out, kept_in = [], []
    for j in range(w.shape[0]):
        best = votes(j, None).most_common(1)
        if not best:
            return None
        kept_out.append(best[0][0])
    for c in range(w.shape[1]):
        best = votes(None, c).most_common(1)
        if not best:
            return None
        kept_in.append(best[0][0])
    out, cols = torch.tensor(kept_out), torch.tensor(kept_in)
    if len(set(kept_out)) != len(kept_out) or not torch.equal(ref[out][:, cols], w):
        return None
    return out


def pair_layer(model: nn.Module, original: nn.Module, name: str,
               channels: Mapping[str, Sequence[int] | torch.Tensor] | None = None) -> Pairing:
    """The :class:`Pairing` of the module ``name`` of ``model`` with the original's layer of that name."""
    ref = original.get_submodule(name)
    module = model.get_submodule(name)
    if type(ref) not in _LINEAR:
        return Pairing(name, name, reason=f"the original's {type(ref).__name__} is not a plain Conv2d or Linear")
    fitted, source = name, None
    if type(module) not in _LINEAR:
        tail = _tail(module)
        if tail is None:
            return Pairing(name, name, reason=f"a {type(module).__name__} whose output is not one conv / linear's")
        fitted, source = f"{name}.{tail[0]}", tail[1]
        module = model.get_submodule(fitted)
    if type(module) is not type(ref):
        return Pairing(name, fitted, reason=f"a {type(module).__name__} where the original has a {type(ref).__name__}")
    width = _width(module)
    given = (channels or {}).get(name)
    assumed = False
    if given is not None:
        origin = torch.as_tensor(given, dtype=torch.long).cpu()
        if origin.numel() != width or (origin.numel() and (origin.min() < 0 or origin.max() >= _width(ref))):
            return Pairing(name, fitted, reason=f"channels[{name!r}] has {origin.numel()} indices for {width} "
                                                f"outputs (each in 0..{_width(ref) - 1})")
    else:
        origin = match_rows(module.weight, ref.weight) if fitted == name else None
        if origin is None and width == _width(ref):
            origin, assumed = torch.arange(width), True
        if origin is None:
            return Pairing(name, fitted, reason=f"{width} of the original's {_width(ref)} outputs, and which ones "
                                                "cannot be recovered (weights changed since pruning); pass channels=")
    if source is not None:  # compound output j = fitted channel source[j]: fitted channel i = output argsort[i]
        origin = origin[torch.argsort(source)]
    return Pairing(name, fitted, origin, assumed)


def identity_plausible(output: torch.Tensor, target: torch.Tensor, *, threshold: float = 0.5) -> bool:
    """Whether channel ``i`` of ``output`` best matches channel ``i`` of ``target`` for most channels.

    Channel order differing from the original's (an absorbed permute) leaves almost no channel on its own
    index; an approximation (a rewrite, pruned inputs) keeps most. Channels without variance are not counted.

    Args:
        output: ``(R, O)`` the compressed layer's output rows.
        target: ``(R, O)`` the original's rows, in the assumed order.
        threshold: the fraction of channels that must match on their own index.
    """
    a = output.double() - output.double().mean(0)
    b = target.double() - target.double().mean(0)
    na, nb = a.norm(dim=0), b.norm(dim=0)
    live = (na > 0) & (nb > 0)
    if not bool(live.any()):
        return True
    corr = (a / na.clamp_min(1e-300)).T @ (b / nb.clamp_min(1e-300))  # (O, O)
    corr[:, ~live] = -2.0
    hits = corr.argmax(1) == torch.arange(corr.shape[0], device=corr.device)
    return float(hits[live].double().mean()) >= threshold
