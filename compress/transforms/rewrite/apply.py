"""Model-level applier: rewrite selected dense convs of a model in place and report what each rewrite did.

:func:`rewrite` picks the convs (name patterns, channel and kernel filters, the kind's own eligibility), plans a
concrete config for each (budgets and ``"auto"`` resolved per layer), builds the replacement with the kind's
registered handler and swaps it in with :func:`compress.transforms.rewrite.registry.replace_modules`. Every selected
layer gets a :class:`RewriteRecord`: cost by formula, relative weight-reconstruction error, and, given
``example_inputs``, the relative error of the replacement's output on the layer's real input.

Data-aware kinds (separable) also read ``calib``: each selected conv's input patch moments are measured on it
(:mod:`compress.transforms.rewrite.patch_stats`) and handed to the kind's planner. A ``macs_target`` is resolved here,
for the whole model at once: every layer's choices (cost, error) go to :func:`compress.transforms.rewrite.allocate.allocate`
and each layer is then planned with the parameters allotted to it.

Errors are per layer and measured in isolation: each conv's input is captured from one forward of the model
*before* any replacement, so one layer's error does not include the drift caused by earlier rewrites.
"""
from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...errors import CompressError
from ...hooks import probe
from ...modes import evaluating
from .absorb import absorb_permutes
from .allocate import Option, allocate
from .decompose import relative_error
from ..prune.layer_roles import direct_producer
from ..modules import ChannelPermute
from .patch_stats import capture_patch_moments
from .registry import (KindOptions, RewriteConfig, apply_config, config_for_kind, config_for_options,
                       replace_modules)
from .selection import LayerSelection, split_options
from ..prune.tp_compat import build_graph
from ..prune.where import describe_error, module_names

__all__ = ["RewriteRecord", "LayerSelection", "rewrite", "conv_macs", "FORWARD_FAILS"]

FORWARD_FAILS = "the model's forward fails"  # how a replacement rolled back by the forward check is skipped


@dataclass
class RewriteRecord:
    """What the rewrite did to one layer (JSON-friendly via ``dataclasses.asdict``).

    Attributes:
        layer: qualified module name.
        kind: rewrite kind (``"grouped"``, ``"separable"``, ``"shuffle"``, ``"dilated"``, ``"bottleneck"``).
        params: the concrete parameters used (e.g. ``{"T": 2}``, ``{"groups": 4, "energy_kept": 0.93}``).
        macs_before / macs_after: per-sample multiply-accumulates of the conv(s) by formula
            (``H'·W'·K²·Cin·Cout/groups`` per conv, bias adds not counted); ``None`` without example inputs.
        params_before / params_after: parameter counts of the dense conv and its replacement.
        weight_error: ``||W_effective - W|| / ||W||`` of the dense weight the replacement computes.
        output_error: relative L2 error of the replacement's output vs the dense conv's on the conv's input
            captured from ``example_inputs``; ``None`` without example inputs.
        skipped: why the layer was left unchanged (``None`` when rewritten).
        details: extra facts, e.g. ``{"permutes": {"permute_in": "absorbed"}}`` for grouped rewrites.
    """

    layer: str
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    macs_before: int | None = None
    macs_after: int | None = None
    params_before: int | None = None
    params_after: int | None = None
    weight_error: float | None = None
    output_error: float | None = None
    skipped: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def rewrite(model: nn.Module, kind: str | KindOptions, *, select: LayerSelection | None = None, analysis: Any = None,
            example_inputs: torch.Tensor | None = None, calib: Any = None, absorb: bool = True,
            allow_growth: bool = False, verbose: bool = False, **options: Any) -> list[RewriteRecord]:
    """Rewrite eligible ``nn.Conv2d`` layers of ``model`` (in place) into the form ``kind``.

    Which convs: a :class:`~compress.transforms.rewrite.selection.LayerSelection` (exact ``layers``,
    ``include`` / ``exclude`` patterns, ``min_channels``, ``kernel_sizes``), given as ``select`` or as keyword
    shorthand among ``options``; each candidate must also meet the kind's own requirements (dense for
    grouped/separable/shuffle/bottleneck, square odd ``K >= 5`` for dilated). Explicitly named candidates that
    fail get a record with ``skipped``; with no selection, only eligible layers and conv subclasses (unknown
    custom types, never modified) are reported.

    Args:
        model: the model, modified in place.
        kind: a registered kind (:func:`~compress.transforms.rewrite.registry.kinds`): ``"grouped"``,
            ``"separable"``, ``"shuffle"``, ``"dilated"``, ``"bottleneck"`` or one a plug-in registered; or the
            kind's validated options object (e.g. ``SeparableOptions(T=2)``), which names the kind itself.
        select: the convs considered (default: every conv with at least 16 input and output channels).
        analysis: a :class:`compress.analysis.Analysis` of this model; grouped rewrites order output channels by
            the layer's correlation partition and, given ``example_inputs``, input channels by the partition of
            the conv producing them (see :meth:`compress.transforms.rewrite.kinds.grouped.GroupedConfig.plan`).
        example_inputs: one input batch ``(B, C, H, W)`` on the model's device; enables MACs, output errors,
            producer lookup and folding of channel permutes into neighbouring layers.
        calib: calibration data for data-aware kinds (separable): a batch ``(B, C, H, W)`` or an iterable of
            batches (tensors or ``(images, labels)``) on the model's device. Each conv's input patch moments are
            measured on it and the factorisation, ``max_error`` and ``macs_target`` then use the expected output
            error instead of the weight error. ``None``: data-free.
        absorb: fold grouped rewrites' ``ChannelPermute`` modules into neighbours where exact (needs
            ``example_inputs``; see :mod:`compress.transforms.rewrite.absorb`).
        allow_growth: also apply rewrites whose replacement has more parameters (or, measured on
            ``example_inputs``, more MACs) than the dense conv, e.g. a bottleneck of rank M/2 on a narrow 1x1;
            by default such layers are skipped with the reason (their record keeps the measured figures).
        verbose: show a progress bar.
        **options: the :class:`LayerSelection` fields as shorthand (``layers=["conv1"]``, ``min_channels=3``;
            not together with ``select``), and the kind's options, the fields of its ``Options`` class (e.g.
            :class:`~compress.transforms.rewrite.kinds.separable.SeparableOptions`), parsed strictly: grouped
            ``groups`` (int or ``"auto"``), ``energy_threshold``; separable ``T``, ``max_error`` or
            ``macs_target`` (the whole model's MACs after the rewrite as a fraction of before, in ``(0, 1]``;
            allocated across layers at the least summed squared relative error, see
            :mod:`compress.transforms.rewrite.allocate`; needs ``example_inputs``; kinds with a
            ``budget_options``); shuffle ``groups``, ``width``; dilated ``dilation``; bottleneck ``rank``,
            ``rank_ratio`` or ``max_error``.

    Returns:
        One :class:`RewriteRecord` per reported layer, in module order.

    Raises:
        CompressError: unknown kind or option, a name in ``layers`` or a pattern in ``include`` that matches
            nothing, a ``macs_target`` without ``example_inputs`` or below the cheapest rewrite.
    """
    given = kind if isinstance(kind, KindOptions) else None
    config_cls = config_for_options(given) if given is not None else config_for_kind(kind)
    kind = config_cls.kind
    select, kind_options = split_options(config_cls, options, select, given)
    params = kind_options.kwargs()
    macs_target = params.pop("macs_target", None)
    if macs_target is not None and example_inputs is None:
        raise CompressError("rewrite: macs_target needs example_inputs (to count MACs)")
    records, eligible = _candidates(model, kind, config_cls, select)
    inputs = _capture_inputs(model, eligible, example_inputs)
    wants_producer = analysis is not None and config_cls.reads_producer
    producers = _producers(model, eligible, example_inputs) if wants_producer else {}
    wants_moments = calib is not None and config_cls.reads_inputs and bool(eligible)
    moments = capture_patch_moments(model, eligible, calib, verbose=verbose) if wants_moments else {}
    if macs_target is not None and config_cls.reads_inputs and not moments:
        # weight error cannot rank layers against each other (measured: -6.6 points at 0.5 of the MACs on the
        # Fashion-MNIST small ResNet, benchmarks/results/separable_budget.md)
        warnings.warn(f"rewrite {kind}: macs_target without calibration data allocates T by weight error only; "
                      "pass calib= (recipe: calib_batches > 0) for a data-aware allocation", stacklevel=2)
    planned = (_allocate_target(model, eligible, config_cls, macs_target, example_inputs, inputs, moments)
               if macs_target is not None else None)
    new_modules: dict[str, nn.Module] = {}
    for name, conv in tqdm(eligible.items(), desc=f"rewrite {kind}", leave=False, disable=not verbose):
        context = {"producer": producers.get(name)} if config_cls.reads_producer else {}
        if config_cls.reads_inputs:
            context["moments"] = moments.get(name)
        layer_params = params
        if planned is not None:
            if planned[name].value is None:
                records[name] = RewriteRecord(layer=name, kind=kind, skipped="kept dense by the macs_target "
                                              f"allocation ({macs_target} of the model's MACs)")
                continue
            layer_params = dict(planned[name].value)
        records[name], new = _rewrite_one(name, kind, conv, config_cls, analysis, inputs.get(name), allow_growth,
                                          {**layer_params, **context})
        if planned is not None:
            records[name].details["allocation"] = {"macs_target": macs_target,
                                                   "predicted_error": round(planned[name].error ** 0.5, 6)}
        if new is not None:
            new_modules[name] = new
    replace_modules(model, lambda n, m: new_modules[n], lambda n, m: n in new_modules)
    if example_inputs is not None and new_modules:
        _keep_runnable(model, example_inputs, eligible, new_modules, records)
    if absorb and example_inputs is not None:
        _absorb(model, example_inputs, new_modules, records, verbose)
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(records.values(), key=lambda r: order.get(r.layer, len(order)))


def _candidates(model: nn.Module, kind: str, config_cls: type[RewriteConfig],
                select: LayerSelection) -> tuple[dict[str, RewriteRecord], dict[str, nn.Conv2d]]:
    """Split the selection into eligible convs and skip records (explicit names, unknown conv types)."""
    uses = Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    shared = {key for key, count in uses.items() if count > 1}
    records: dict[str, RewriteRecord] = {}
    eligible: dict[str, nn.Conv2d] = {}
    for name, module, explicit in select.candidates(model):
        reason = select.problem(name, module, config_cls, shared)
        if reason is None:
            eligible[name] = module
        elif explicit or (isinstance(module, nn.Conv2d) and type(module) is not nn.Conv2d):
            records[name] = RewriteRecord(layer=name, kind=kind, skipped=reason)
    return records, eligible


def _rewrite_one(name: str, kind: str, conv: nn.Conv2d, config_cls: type[RewriteConfig], analysis: Any,
                 x: torch.Tensor | None, allow_growth: bool,
                 params: dict[str, Any]) -> tuple[RewriteRecord, nn.Module | None]:
    """Plan and build one replacement (``params``: the kind's options and plan context); its record and the
    module (``None`` when skipped)."""
    try:
        config = config_cls.plan(conv, name=name, analysis=analysis, **params)
        new = apply_config(conv, config)
    except CompressError as err:
        return RewriteRecord(layer=name, kind=kind, skipped=str(err)), None
    record = _record(name, kind, conv, config, new, x)
    growth = _growth(record)
    if growth and not allow_growth:
        record.skipped = f"the rewrite would grow the layer ({growth})"
        return record, None
    return record, new


def _allocate_target(model: nn.Module, convs: dict[str, nn.Conv2d], config_cls: type[RewriteConfig],
                     macs_target: float, example_inputs: torch.Tensor, inputs: dict[str, torch.Tensor],
                     moments: dict[str, torch.Tensor]) -> dict[str, Option]:
    """Per-layer options meeting ``macs_target`` (a fraction of the whole model's MACs) at least total error.

    Uniform assignments (the same parameters in every layer that can take them, the rest dense) seed the
    search, so the result is never worse in total error than any uniform choice within the budget.
    """
    from ...measurement.cost import cost  # deferred: measurement is not needed by the other rewrite paths

    before = cost(model, example_inputs).macs
    options: dict[str, list[Option]] = {}
    for name, conv in convs.items():
        k2 = conv.kernel_size[0] * conv.kernel_size[1]
        positions = conv_macs(conv, inputs[name]) // (k2 * conv.in_channels * conv.out_channels)
        options[name] = config_cls.budget_options(conv, positions=positions, moments=moments.get(name))
    dense = sum(max(o.macs for o in opts) for opts in options.values())
    budget = macs_target * before - (before - dense)  # MACs left for the rewritten layers
    values = [o.value for opts in options.values() for o in opts if o.value is not None]
    keep = {n: next(o for o in opts if o.value is None) for n, opts in options.items()}
    seeds = [{n: next((o for o in opts if o.value == v), keep[n]) for n, opts in options.items()}
             for i, v in enumerate(values) if v not in values[:i]]
    try:
        return allocate(options, budget, seeds=seeds)
    except CompressError as err:
        cheapest = before - dense + sum(min(o.macs for o in opts) for opts in options.values())
        raise CompressError(f"rewrite: macs_target={macs_target} is below the cheapest {config_cls.kind} rewrite "
                            f"of the selected layers ({cheapest / before:.3f} of the model's MACs)") from err


def _producers(model: nn.Module, convs: dict[str, nn.Conv2d], example_inputs: torch.Tensor | None) -> dict[str, str]:
    """For each conv, the qualified name of the conv whose output channels are its inputs (where there is one)."""
    if example_inputs is None or not convs:
        return {}
    try:
        graph = build_graph(model, example_inputs)
    except Exception:  # noqa: BLE001  the lookup is optional: a model tp cannot trace keeps the weight heuristic
        return {}
    names = {m: n for n, m in model.named_modules()}
    found = {name: direct_producer(graph, conv) for name, conv in convs.items()}
    return {name: names[p] for name, p in found.items() if p in names}


def _capture_inputs(model: nn.Module, convs: dict[str, nn.Conv2d],
                    example_inputs: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Each conv's input on its first call during one eval-mode forward of ``example_inputs``."""
    if example_inputs is None or not convs:
        return {}
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def store(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            seen.setdefault(name, args[0].detach())
        return store

    probe(model, [(conv, hook(name)) for name, conv in convs.items()], example_inputs)
    return seen


def conv_macs(module: nn.Module, x: torch.Tensor) -> int:
    """Per-sample MACs of every conv in ``module`` run on ``x`` (``H'·W'·kh·kw·Cin·Cout/groups`` per call).

    Args:
        module: a conv or a container of convs (other layers count zero).
        x: an input batch ``(B, C, H, W)``; only the first sample is run.
    """
    total = 0

    def count(conv: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = conv.kernel_size
        total += out.shape[2] * out.shape[3] * kh * kw * conv.in_channels // conv.groups * conv.out_channels

    probe(module, [(m, count) for m in module.modules() if isinstance(m, nn.Conv2d)], x[:1])
    return total


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _record(name: str, kind: str, conv: nn.Conv2d, config: RewriteConfig, new: nn.Module,
            x: torch.Tensor | None) -> RewriteRecord:
    with torch.no_grad():
        weight_error = relative_error(config.effective_weight(conv, new), conv.weight)
        output_error = relative_error(new(x), conv(x)) if x is not None else None
    return RewriteRecord(
        layer=name, kind=kind, params=config.describe(conv),
        macs_before=conv_macs(conv, x) if x is not None else None,
        macs_after=conv_macs(new, x) if x is not None else None,
        params_before=_params(conv), params_after=_params(new),
        weight_error=round(weight_error, 8), output_error=None if output_error is None else round(output_error, 8))


def _growth(record: RewriteRecord) -> str | None:
    """How the replacement is larger than the dense conv (parameters, or MACs when measured), if it is."""
    grew = [f"{what} {before} -> {after}" for what, before, after in (
        ("parameters", record.params_before, record.params_after), ("MACs", record.macs_before, record.macs_after))
        if before is not None and after is not None and after > before]
    return ", ".join(grew) or None


def _forward_failure(model: nn.Module, x: torch.Tensor) -> str | None:
    """Why one eval-mode forward of ``model`` on ``x`` fails, or ``None`` when it runs."""
    try:
        with torch.no_grad(), evaluating(model):
            model(x)
    except Exception as err:  # noqa: BLE001 - the user's own forward: whatever it raises is the reason
        return describe_error(err, module_names(model))
    return None


def _keep_runnable(model: nn.Module, x: torch.Tensor, originals: dict[str, nn.Conv2d],
                   new_modules: dict[str, nn.Module], records: dict[str, RewriteRecord]) -> None:
    """Roll back the replacements the model's own forward cannot run with (``new_modules`` and ``records``
    updated in place).

    A model may read a conv's attributes in its forward (timm's EdgeNeXt positional encoding reads
    ``token_projection.weight.device``), which no replacement module has. When the rewritten model's forward
    fails, each replacement is tried alone in the dense model; those that fail are put back to the dense conv and
    skipped with the error. Costs one forward when nothing fails, one per rewritten layer when something does.
    """
    if _forward_failure(model, x) is None:
        return
    keep = lambda n, m: n in new_modules  # noqa: E731
    replace_modules(model, lambda n, m: originals[n], keep)
    for name in list(new_modules):
        replace_modules(model, lambda n, m: new_modules[n], lambda n, m: n == name)
        failure = _forward_failure(model, x)
        replace_modules(model, lambda n, m: originals[n], lambda n, m: n == name)
        if failure is not None:
            del new_modules[name]
            records[name].skipped = f"{FORWARD_FAILS} with this layer replaced: {failure}"
    replace_modules(model, lambda n, m: new_modules[n], keep)
    failure = _forward_failure(model, x)
    if failure is not None:  # each one runs alone, not all together
        replace_modules(model, lambda n, m: originals[n], keep)
        for name in new_modules:
            records[name].skipped = f"{FORWARD_FAILS} with the rewritten layers together: {failure}"
        new_modules.clear()


def _absorb(model: nn.Module, example_inputs: torch.Tensor, new_modules: dict[str, nn.Module],
            records: dict[str, RewriteRecord], verbose: bool) -> None:
    """Fold the new modules' permutes into neighbours and note the outcome in their records."""
    owners = {f"{layer}.{child}": (layer, child) for layer, new in new_modules.items()
              for child, m in new.named_children() if isinstance(m, ChannelPermute)}
    if not owners:
        return
    for permute, status in absorb_permutes(model, example_inputs, verbose=verbose).items():
        if permute in owners:
            layer, child = owners[permute]
            records[layer].details.setdefault("permutes", {})[child] = status
