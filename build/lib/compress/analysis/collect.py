"""``analyze``: run a model over data and collect per-channel statistics of every ``nn.Conv2d``.

Two phases. (1) :func:`~compress.analysis.trace.trace_chains` runs one sample to learn, for each conv, which
module call (conv, its BatchNorm or its activation) holds the channel's final value. (2) Over the batches,
one forward hook per such module feeds that call's output into the conv's
:class:`~compress.analysis.accumulate.ChannelAccumulator`. Calls are matched by their ordinal within a forward
pass, which is why the first phase counts every call of every leaf module.
"""
from __future__ import annotations

import contextlib
from collections import Counter
from itertools import islice
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm import tqdm

from ..data.batches import batch_count, batch_inputs
from ..errors import CompressError
from ..measurement.util import model_device
from ..modes import evaluating
from .accumulate import ChannelAccumulator
from .finite import check_finite_statistics, check_finite_weights
from .result import Analysis, LayerInfo
from .trace import Chain, trace_chains

__all__ = ["analyze"]

_NONNEGATIVE = ("ReLU", "ReLU6")  # activation modules whose outputs are never negative


class _Collector:
    """Forward hooks that route each conv's final activation into its accumulator."""

    def __init__(self, model: nn.Module, convs: dict[str, nn.Conv2d], chains: list[Chain], *,
                 device: torch.device, max_channels: int) -> None:
        self.keys = {(c.point, c.ordinal): c.conv for c in chains}
        self.first: dict[str, Chain] = {}
        for chain in chains:
            self.first.setdefault(chain.conv, chain)
        # ReLU/ReLU6 outputs are >= 0 in every call: lets the accumulator skip |x|
        nonneg = {name: all(c.activation in _NONNEGATIVE for c in chains if c.conv == name)
                  for name in self.first}
        self.accs = {name: ChannelAccumulator(conv.out_channels, device=device, nonnegative=nonneg[name],
                                              full_covariance=conv.out_channels <= max_channels)
                     for name, conv in convs.items() if name in self.first}
        self.calls: Counter[str] = Counter()
        modules = dict(model.named_modules())
        self.handles = [modules[p].register_forward_hook(self._hook(p))
                        for p in dict.fromkeys(c.point for c in chains)]

    def _hook(self, name: str) -> Callable[[nn.Module, tuple, Any], None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            ordinal = self.calls[name]
            self.calls[name] += 1
            conv = self.keys.get((name, ordinal))
            if conv is not None:
                self.accs[conv].update(output)
        return hook

    def forward(self, model: nn.Module, x: torch.Tensor) -> None:
        self.calls.clear()
        model(x)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@contextlib.contextmanager
def _placed(model: nn.Module, device: torch.device | None) -> Iterator[torch.device]:
    """Run on ``device`` (default: where the model is), moving the model there and back if needed."""
    home = model_device(model, single=True)
    target = torch.device(device) if device is not None else (home or torch.device("cpu"))
    move = home is not None and home != target
    if move:
        model.to(target)
    try:
        yield target
    finally:
        if move:
            model.to(home)


def _run(model: nn.Module, loader: Iterable, convs: dict[str, nn.Conv2d], *, max_batches: int | None,
         device: torch.device, verbose: bool, max_channels: int) -> tuple[_Collector, int, int]:
    collector, batches, images = None, 0, 0
    bar = tqdm(total=batch_count(loader, max_batches), desc="analyze", unit="batch", leave=False, disable=not verbose)
    try:
        for batch in islice(loader, max_batches):
            x = batch_inputs(batch, what="analysis").to(device)
            if collector is None:
                chains = trace_chains(model, x[:1])
                collector = _Collector(model, convs, chains, device=device, max_channels=max_channels)
            with torch.no_grad():
                collector.forward(model, x)
            batches, images = batches + 1, images + x.shape[0]
            bar.update()
    finally:
        bar.close()
        if collector is not None:
            collector.remove()
    if collector is None:
        raise CompressError("analysis: the loader yielded no batches; expected at least one")
    return collector, batches, images


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _all_reduce_counts(batches: int, images: int, device: torch.device) -> tuple[int, int]:
    t = torch.tensor([batches, images], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return int(t[0].item()), int(t[1].item())


def _add_weight_stats(stats: dict[str, torch.Tensor], conv: nn.Conv2d, bn: nn.Module | None) -> None:
    """Filter L1/L2 norms ``(C,)`` of ``conv`` and ``|gamma|`` of its BatchNorm, float64 on the CPU."""
    # Norms in the weights' own precision (an all-zero filter still gives exactly 0), then float64.
    w = conv.weight.detach().flatten(1)
    for key, order in (("weight_l1", 1), ("weight_l2", 2)):
        stats[key] = torch.linalg.vector_norm(w, order, dim=1).to("cpu", torch.float64)
    if bn is not None and getattr(bn, "weight", None) is not None:
        stats["gamma"] = bn.weight.detach().to("cpu", torch.float64).abs()


def _build(model: nn.Module, convs: dict[str, nn.Conv2d], collector: _Collector, batches: int,
           images: int) -> Analysis:
    modules = dict(model.named_modules())
    info, stats, cov, notes = {}, {}, {}, []
    for name, conv in convs.items():
        if name not in collector.first:
            notes.append(f"{name}: never called on the data; left out")
            continue
        chain, acc = collector.first[name], collector.accs[name]
        info[name] = LayerInfo(chain.point, chain.bn, chain.activation, conv.out_channels, acc.n)
        stats[name] = acc.result()
        cov[name] = stats[name].pop("cov", None)
        _add_weight_stats(stats[name], conv, modules[chain.bn] if chain.bn else None)
        if not acc.full_covariance:
            notes.append(f"{name}: {conv.out_channels} channels exceed max_channels_for_correlation; "
                         "correlation matrix skipped")
    check_finite_statistics(info, stats)
    repeated = sorted(c for c, k in Counter(collector.keys.values()).items() if k > 1)
    notes += [f"{name}: called several times per forward; statistics pool all calls" for name in repeated]
    return Analysis(info=info, stats=stats, cov=cov, batches=batches, images=images, notes=notes)


def analyze(model: nn.Module, loader: Iterable, *, max_batches: int | None = None,
            device: torch.device | str | None = None, verbose: bool = True,
            max_channels_for_correlation: int = 2048) -> Analysis:
    """Collect per-channel statistics of every ``nn.Conv2d`` (grouped and depthwise included).

    Statistics are taken where each channel's value is final: after the BatchNorm and activation *modules*
    that directly follow the conv (functional activations such as ``F.relu`` are not seen; the point then
    stays at the BatchNorm). See :mod:`compress.analysis.trace`.

    Args:
        model: the network; run in eval mode under ``torch.no_grad``; its modes (per submodule), device and
            weights are unchanged afterwards, and all hooks are removed, also on error.
        loader: yields input batches ``(B, C, H, W)`` or ``(inputs, targets)`` pairs.
        max_batches: stop after this many batches (``None``: the whole loader).
        device: where to run (default: the model's device); the model is moved there and back if needed.
        verbose: show a tqdm progress bar over batches.
        max_channels_for_correlation: layers wider than this keep only per-channel variances (the ``(C, C)``
            float64 matrix costs ``8*C^2`` bytes and a ``C^2*B*H*W`` matmul per batch).

    Returns:
        An :class:`Analysis`. Under an initialised ``torch.distributed`` process group, sums are all-reduced so
        every rank returns the same statistics (every rank must see at least one batch).

    Raises:
        CompressError: no conv in the model, an empty loader, bad batches or bad arguments; NaN/Inf in a
            weight (named) or in a layer's activations (the first such layer is named).
    """
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise CompressError(f"analysis: max_batches must be None or an integer >= 1, got {max_batches!r}")
    if not isinstance(max_channels_for_correlation, int) or max_channels_for_correlation < 1:
        raise CompressError("analysis: max_channels_for_correlation must be an integer >= 1, "
                            f"got {max_channels_for_correlation!r}")
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    if not convs:
        raise CompressError(f"analysis: {type(model).__name__} has no nn.Conv2d layer to analyze")
    check_finite_weights(model)
    with _placed(model, device) as target, evaluating(model):
        collector, batches, images = _run(model, loader, convs, max_batches=max_batches, device=target,
                                          verbose=verbose, max_channels=max_channels_for_correlation)
        if _distributed():
            for name in collector.accs:  # same order on every rank: named_modules order
                collector.accs[name].all_reduce()
            batches, images = _all_reduce_counts(batches, images, target)
        return _build(model, convs, collector, batches, images)
