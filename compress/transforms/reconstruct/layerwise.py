"""Layer-wise least-squares reconstruction of a compressed model towards its original, without gradient steps.

For each layer (in the order of its first call), calibration batches stream through both models: the
compressed model's *input* to the layer (already-corrected layers upstream) and the original's *output* of the
layer of the same name are taken at sampled rows (:mod:`.rows`), summed into :class:`.NormalEquations` and
solved in float64; the weights (and an intercept, :mod:`.bias`) are written back before the next layer, so each
layer also corrects the drift its inputs carry. The original is never modified.

The target of a conv is the original conv's output *before* its BatchNorm. The compressed layer's BatchNorm is
the original's (pruned by index, or untouched by a rewrite), so its running statistics already describe the
target distribution and are left as they are; re-estimating them afterwards
(:func:`compress.training.calibrate.calibrate_bn`) is optional (``benchmarks/zero_shot.py`` measures both).

What is fitted and which channels are matched is :mod:`.correspondence`. Layers called more than once per
forward (shared weights), of a different kind in the original, whose pruned channels cannot be recovered, or
whose channel order differs from the original's are skipped with the reason. A layer whose system is
ill-conditioned, or whose fit would not lower its error on the calibration rows, keeps its weights.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass
from itertools import islice
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ...config import options_from
from ...data.batches import batch_inputs
from ...errors import CompressError
from ...measurement.util import model_device
from ...modes import evaluating
from .bias import bias_slots, place_bias
from .capture import call_order, layer_input, layer_output
from .config import ReconstructOptions
from .correspondence import Pairing, identity_plausible, pair_layer
from .normal_equations import NormalEquations
from .rows import LayerRows

__all__ = ["ReconstructRecord", "reconstruct", "FITTED", "KEPT", "SKIPPED"]

LOG = logging.getLogger(__name__)

FITTED, KEPT, SKIPPED = "fitted", "kept", "skipped"


@dataclass(frozen=True)
class ReconstructRecord:
    """What :func:`reconstruct` did to one layer.

    Attributes:
        layer: qualified name in both models.
        fitted: the conv / linear whose weights were fitted (``layer``, or its last layer for a rewrite).
        status: ``"fitted"`` (weights written), ``"kept"`` (solved or tried, weights left) or ``"skipped"``.
        rows: rows (output positions) in the system.
        error_before / error_after: relative L2 error ``||y - y_orig|| / ||y_orig||`` of the layer's output
            (before any BatchNorm) on the sampled calibration rows, with the current / fitted weights and the
            already-reconstructed layers upstream; ``None`` where not measured. Equal when kept.
        bias: where the intercept went: ``"own"``, ``"batchnorm"`` (folded into its running mean) or ``"none"``.
        reason: why the layer was skipped or kept (``None`` when fitted).
    """

    layer: str
    fitted: str
    status: str
    rows: int = 0
    error_before: float | None = None
    error_after: float | None = None
    bias: str = "none"
    reason: str | None = None


def _batches(calib: Any, max_batches: int | None) -> list[torch.Tensor]:
    items = [calib] if isinstance(calib, torch.Tensor) else calib
    batches = [batch_inputs(b, what="reconstruct") for b in islice(items, max_batches)]
    if not batches:
        raise CompressError("reconstruct: calib yielded no batches; expected at least one (B, C, H, W) tensor")
    return batches


def _candidates(model: nn.Module, original: nn.Module, layers: Sequence[str] | None) -> list[str]:
    """Names of the original's convs / linears also present in ``model``, filtered by ``layers`` patterns."""
    present = dict(model.named_modules())
    names = [n for n, m in original.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n in present]
    if layers is None:
        return names
    chosen = []
    for pattern in layers:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise CompressError(f"reconstruct.layers: {pattern!r} matches no conv / linear present in both models "
                                "(use qualified names from original.named_modules(), fnmatch patterns allowed)")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in names if n in chosen]


class _Layer:
    """One layer's pass: the rows of every batch into normal equations, then the solve and the write-back."""

    def __init__(self, model: nn.Module, original: nn.Module, pairing: Pairing, slot: nn.Module | None,
                 options: ReconstructOptions) -> None:
        self.model, self.original, self.pairing, self.slot, self.options = model, original, pairing, slot, options
        self.module = model.get_submodule(pairing.fitted)
        self.reference = original.get_submodule(pairing.layer)
        self.rows = LayerRows(self.module)
        self.equations = NormalEquations(in_features=self.rows.in_features, out_features=self.rows.out_features,
                                         systems=self.rows.groups, device=model_device(model))

    def record(self, status: str, reason: str | None = None, **values: Any) -> ReconstructRecord:
        bias = "none" if self.slot is None else "own" if self.slot is self.module else "batchnorm"
        return ReconstructRecord(self.pairing.layer, self.pairing.fitted, status, self.equations.count,
                                 bias=bias, reason=reason, **values)

    def accumulate(self, batches: list[torch.Tensor], generator: torch.Generator, verbose: bool) -> str | None:
        """Stream the batches; returns why the layer cannot be fitted (``None``: the system is complete)."""
        device, ref_device = model_device(self.model), model_device(self.original)
        for index, x in enumerate(tqdm(batches, desc=f"reconstruct {self.pairing.layer}", leave=False,
                                       disable=not verbose)):
            target = layer_output(self.original, x.to(ref_device), self.reference)
            inputs = layer_input(self.model, x.to(device), self.module)
            total = self.rows.positions(inputs)
            if total * target.shape[1] != target.numel():
                return (f"output positions differ from the original's ({total} rows for a target of shape "
                        f"{tuple(target.shape)})")
            rows = torch.randperm(total, generator=generator)[:self.options.rows_per_batch].sort().values
            xs = self.rows.inputs(inputs, rows.to(inputs.device))
            ys = self.rows.outputs(target, rows.to(target.device), self.pairing.channels).to(xs.device)
            if index == 0 and self.pairing.assumed and not self._same_order(xs, ys):
                return ("its channels are not in the original's order (e.g. a permute absorbed into it); "
                        "pass channels={layer: original indices}")
            self.equations.update(xs, ys)
        return None

    def _same_order(self, xs: torch.Tensor, ys: torch.Tensor) -> bool:
        w, b = self.rows.weight().to(xs.device), self.rows.bias()
        out = xs.double() @ w.transpose(1, 2) + (0 if b is None else b.to(xs.device).unsqueeze(1))
        flat = lambda t: t.transpose(0, 1).reshape(t.shape[1], -1)  # (G, R, O_g) -> (R, O)
        return identity_plausible(flat(out), flat(ys))

    def fit(self) -> ReconstructRecord:
        weight, own = self.rows.weight(), self.rows.bias()
        before = self.equations.relative_error(weight, own)
        solution = self.equations.solve(ridge=self.options.ridge, bias=self.slot is not None, prior=weight,
                                        max_condition=self.options.max_condition)
        if not solution.ok:
            return self.record(KEPT, solution.reason, error_before=before, error_after=before)
        after = self.equations.relative_error(solution.weight, solution.bias)
        if not after < before:
            reason = ("already matches the original on the calibration rows" if before == 0 else
                      f"the fit does not lower the error on the calibration rows ({after:.3g} vs {before:.3g})")
            return self.record(KEPT, reason, error_before=before, error_after=before)
        self.rows.write(solution.weight, solution.bias if self.slot is self.module else None)
        if self.slot is not None and self.slot is not self.module:
            place_bias(self.slot, solution.bias)
        return self.record(FITTED, error_before=before, error_after=after)


def reconstruct(model: nn.Module, original: nn.Module, calib: Any, options: ReconstructOptions | None = None, *,
                layers: Sequence[str] | None = None, channels: Mapping[str, Sequence[int] | torch.Tensor] | None = None,
                verbose: bool = True, **shorthand: Any) -> list[ReconstructRecord]:
    """Fit the convs / linears of ``model`` (in place) so that their outputs match ``original``'s, layer by layer.

    Args:
        model: the compressed model (pruned and/or rewritten from ``original``); modified in place, its
            train/eval flags restored.
        original: the reference model; never modified.
        calib: a batch ``(B, C, H, W)`` or an iterable of batches (tensors or ``(images, labels)``); it is read
            once and kept, then streamed once per layer. Each model gets the batches on its own device.
        options: the solver's :class:`~compress.transforms.reconstruct.config.ReconstructOptions` (``ridge``,
            ``rows_per_batch``, ``max_condition``, ``seed``, ``max_batches``); or give those fields as keywords
            (``**shorthand``: ``reconstruct(m, o, calib, ridge=0.0)``), not both.
        layers: qualified names or fnmatch patterns of the layers to fit (names in ``original``); ``None``: all.
        channels: ``{layer name: original output channel of each current output channel}`` for pruned layers
            whose weights no longer identify them (e.g. ``ChannelOrigins.index`` kept while pruning).
        verbose: one progress bar per layer.

    Returns:
        A :class:`ReconstructRecord` per candidate layer (present in both models), in call order; layers that
        never run come last, skipped.

    Raises:
        CompressError: invalid options, ``layers`` patterns that match nothing, or an empty ``calib``.
    """
    options = options_from(ReconstructOptions, options, shorthand, who="reconstruct")
    names = _candidates(model, original, layers)
    batches = _batches(calib, options.max_batches)
    generator = torch.Generator().manual_seed(options.seed)
    records: dict[str, ReconstructRecord] = {}
    with evaluating(model), evaluating(original), torch.no_grad():
        pairings = {n: pair_layer(model, original, n, channels) for n in names}
        fitted_names = sorted({p.fitted for p in pairings.values()})
        order, counts = call_order(model, batches[0].to(model_device(model)), fitted_names)
        ref_order, ref_counts = call_order(original, batches[0].to(model_device(original)), names)
        runnable = []
        for name in sorted(names, key=lambda n: (order + [pairings[n].fitted]).index(pairings[n].fitted)):
            p = pairings[name]
            calls = (counts[p.fitted], ref_counts[name])
            reason = p.reason or (None if calls == (1, 1) else
                                  f"called {calls[0]} time(s) per forward here and {calls[1]} in the original "
                                  "(fitted only when called once in each)")
            if reason:
                records[name] = ReconstructRecord(name, p.fitted, SKIPPED, reason=reason)
            else:
                runnable.append(p)
        fitted = [model.get_submodule(p.fitted) for p in runnable]
        slots = bias_slots(model, batches[0].to(model_device(model)), fitted)
        for p, module in zip(runnable, fitted):
            layer = _Layer(model, original, p, slots.get(module), options)
            reason = layer.accumulate(batches, generator, verbose)
            records[p.layer] = layer.record(SKIPPED, reason) if reason else layer.fit()
            LOG.info("reconstruct %s: %s", p.layer, records[p.layer])
    return [records[n] for n in sorted(records, key=lambda n: (ref_order + [n]).index(n))]
