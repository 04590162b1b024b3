"""Dense KxK conv -> grouped conv that keeps the most weight energy on its block diagonal.

A grouped conv with ``g`` groups can only connect output group ``a`` to input group ``a``. Before dropping the
off-diagonal blocks we reorder output and input channels (``out_perm``, ``in_perm``) so the kept blocks hold as
much of ``sum(W**2)`` as possible (see :mod:`compress.transforms.rewrite.cocluster`). The kept blocks are copied from the
dense weight unchanged, which is the least-squares best grouped weight for that ordering, so the relative weight
error is ``sqrt(1 - kept_energy)``.

The orderings are realised as :class:`~compress.transforms.modules.ChannelPermute` modules around the grouped
conv; the model-level applier later folds them into neighbouring layers where that is exact
(:mod:`compress.transforms.rewrite.absorb`).
"""
from __future__ import annotations

import dataclasses
from collections import OrderedDict
from typing import Any, Sequence

import torch
from torch import nn

from ....config import check
from ....errors import CompressError
from ..cocluster import balanced_coclusters, kept_energy, labels_from_perm, perms_from_labels
from ...modules import ChannelPermute
from ..registry import KindOptions, RewriteConfig, apply_config, conv_problem, register_handler

__all__ = ["GroupedConfig", "GroupedOptions", "to_grouped", "channel_energy", "choose_groups",
           "grouped_effective_weight", "EXACT_GROUPING_MAX_CHANNELS"]

PermPair = tuple[Sequence[int] | torch.Tensor | None, Sequence[int] | torch.Tensor | None]

# Co-clustering wider convs takes seconds per candidate; beyond this the planner prices a grouped form by the
# contiguous-block grouping (a lower bound on the energy the grouped rewrite keeps).
EXACT_GROUPING_MAX_CHANNELS = 256


@dataclasses.dataclass(frozen=True)
class GroupedOptions(KindOptions):
    """Options of the grouped rewrite.

    Attributes:
        groups: an integer >= 1 (1: an exact no-op), or ``"auto"``: the largest count keeping ``energy_threshold`` of the energy.
        energy_threshold: with ``groups: auto``, the minimum fraction of weight energy kept, in ``(0, 1]``.
    """

    groups: int | str = "auto"
    energy_threshold: float = 0.9

    def validate(self) -> None:
        check(self.groups == "auto" or (isinstance(self.groups, int) and not isinstance(self.groups, bool)
                                        and self.groups >= 1), "groups", "an integer >= 1 or 'auto'", self.groups)
        check(0.0 < self.energy_threshold <= 1.0, "energy_threshold", "a number in (0, 1]", self.energy_threshold)


@dataclasses.dataclass(frozen=True)
class GroupedConfig(RewriteConfig):
    """A grouped rewrite of one conv.

    Attributes:
        groups: number of groups ``g >= 1``; must divide both channel counts.
        out_perm: output channel order (grouped channel ``j`` is dense channel ``out_perm[j]``); ``None``:
            chosen by the energy heuristic.
        in_perm: input channel order, likewise.
    """

    kind = "grouped"
    Options = GroupedOptions
    planner_values = (2, 4, 8)
    example_options = {"groups": 2}
    reads_producer = True

    groups: int = 2
    out_perm: tuple[int, ...] | None = None
    in_perm: tuple[int, ...] | None = None

    def validate(self) -> None:
        check(isinstance(self.groups, int) and self.groups >= 1, "groups", "an integer >= 1", self.groups)
        for field in ("out_perm", "in_perm"):
            perm = getattr(self, field)
            check(perm is None or sorted(perm) == list(range(len(perm))), field, "a permutation of 0..C-1",
                  "<not a permutation>")

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        return conv_problem(conv, dense=True)

    def check_layer(self, conv: nn.Conv2d) -> None:
        super().check_layer(conv)
        n, m = conv.out_channels, conv.in_channels
        if n % self.groups or m % self.groups:
            raise CompressError(f"grouped rewrite: groups={self.groups} must divide in_channels={m} and "
                                f"out_channels={n}")
        for perm, size, what in ((self.out_perm, n, "out_perm"), (self.in_perm, m, "in_perm")):
            if perm is not None and len(perm) != size:
                raise CompressError(f"grouped rewrite: {what} has {len(perm)} entries, expected {size}")

    @classmethod
    def plan(cls, conv: nn.Conv2d, *, name: str = "", analysis: Any = None, producer: str | None = None,
             groups: int | str = "auto", energy_threshold: float = 0.9) -> "GroupedConfig":
        """Resolve ``groups`` (an int or ``"auto"``) and the channel orders for ``conv``.

        ``"auto"``: the largest ``g`` dividing both channel counts whose kept energy is at least
        ``energy_threshold``; :class:`CompressError` when even ``g = 2`` keeps less. With an analysis
        (:class:`compress.analysis.Analysis`), the output order groups ``conv``'s correlated output channels
        (``analysis.group_permutation(name, g)``) and the input order those of ``producer``, the conv whose
        outputs are ``conv``'s inputs; a side the analysis does not cover gets the energy heuristic.
        """
        cls.check_options(groups=groups, energy_threshold=energy_threshold)
        if groups == "auto":
            groups = choose_groups(conv, energy_threshold, analysis=analysis, name=name, producer=producer)
        probe = cls(groups=groups)
        probe.check_layer(conv)
        out_perm, in_perm = _orders(conv, groups, _suggested(analysis, conv, groups, name, producer))
        return cls(groups=groups, out_perm=tuple(out_perm.tolist()), in_perm=tuple(in_perm.tolist()))

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        return grouped_effective_weight(new)

    @classmethod
    def form_options(cls, value: int | float, in_channels: int) -> dict[str, Any]:
        return {"groups": int(value)}

    @classmethod
    def form_fits(cls, shape: Any, value: int | float) -> bool:
        return shape.out_channels % value == 0 and shape.in_channels % value == 0

    @classmethod
    def form_macs(cls, shape: Any, value: int | float) -> int:
        k2 = shape.kernel[0] * shape.kernel[1]
        return shape.out_positions() * k2 * shape.in_channels * shape.out_channels // int(value)

    @classmethod
    def form_params(cls, shape: Any, value: int | float) -> int:
        k2 = shape.kernel[0] * shape.kernel[1]
        return k2 * shape.in_channels * shape.out_channels // int(value) + (shape.out_channels if shape.bias else 0)

    @classmethod
    def form_module(cls, shape: Any, value: int | float, *, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> nn.Module:
        """``permute_in -> grouped conv -> permute_out`` as :func:`to_grouped` lays it out, with random orders.

        The permutes are folded into neighbours only where that is exact, which fails next to another grouped
        conv, so timing them is the honest default (a fold that succeeds only makes the plan faster).
        """
        conv = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, stride=shape.stride,
                         padding=shape.padding, dilation=shape.dilation, groups=int(value), bias=shape.bias,
                         device=device, dtype=dtype)
        return nn.Sequential(OrderedDict([("permute_in", ChannelPermute(torch.randperm(shape.in_channels))),
                                          ("conv", conv),
                                          ("permute_out", ChannelPermute(torch.randperm(shape.out_channels)))])
                             ).to(device)

    @classmethod
    def form_error2(cls, conv: nn.Conv2d, value: int | float, *, moments: torch.Tensor | None = None) -> float:
        """``1 - kept energy`` of the grouping (co-clustered up to :data:`EXACT_GROUPING_MAX_CHANNELS` channels,
        contiguous blocks beyond: a lower bound on what the rewrite keeps)."""
        groups = int(value)
        if max(conv.in_channels, conv.out_channels) <= EXACT_GROUPING_MAX_CHANNELS:
            kept = cls.plan(conv, groups=groups).describe(conv)["energy_kept"]
        else:
            n, m = conv.out_channels, conv.in_channels
            rows, cols = torch.arange(n) // (n // groups), torch.arange(m) // (m // groups)
            kept = kept_energy(channel_energy(conv), rows, cols)
        return max(0.0, 1.0 - float(kept))

    def describe(self, conv: nn.Conv2d) -> dict[str, Any]:
        energy = channel_energy(conv)
        rows = labels_from_perm(torch.as_tensor(self.out_perm), self.groups) if self.out_perm else None
        cols = labels_from_perm(torch.as_tensor(self.in_perm), self.groups) if self.in_perm else None
        kept = None if rows is None or cols is None else round(kept_energy(energy, rows, cols), 6)
        return {"groups": self.groups, "energy_kept": kept}


def channel_energy(conv: nn.Conv2d) -> torch.Tensor:
    """Weight energy between channels: ``(N, M)`` float64, ``sum over the kernel of W[o, i]**2``."""
    return conv.weight.detach().double().pow(2).sum((2, 3)).cpu()


def choose_groups(conv: nn.Conv2d, energy_threshold: float, *, analysis: Any = None, name: str = "",
                  producer: str | None = None) -> int:
    """Largest ``g >= 2`` dividing both channel counts whose grouping keeps ``>= energy_threshold`` of the energy.

    Candidates are tried in increasing order and the search stops at the first that fails: kept energy can
    only fall as groups get smaller, up to the heuristic's slack. Orders as in :meth:`GroupedConfig.plan`.
    """
    energy = channel_energy(conv)
    n, m = energy.shape
    best = 0
    for g in (d for d in range(2, min(n, m) + 1) if n % d == 0 and m % d == 0):
        out_perm, in_perm = _orders(conv, g, _suggested(analysis, conv, g, name, producer), energy=energy)
        if kept_energy(energy, labels_from_perm(out_perm, g), labels_from_perm(in_perm, g)) < energy_threshold:
            break
        best = g
    if best == 0:
        raise CompressError(f"no group count >= 2 keeps {energy_threshold:.0%} of the weight energy")
    return best


def _orders(conv: nn.Conv2d, groups: int, suggested: PermPair,
            energy: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Channel orders ``(out_perm, in_perm)``: the suggested ones (two independent suggestions get their groups
    matched by energy), a missing side completed by the heuristic."""
    energy = channel_energy(conv) if energy is None else energy
    out_perm, in_perm = suggested
    rows = labels_from_perm(out_perm, groups) if out_perm is not None else None
    cols = labels_from_perm(in_perm, groups) if in_perm is not None else None
    rows, cols = balanced_coclusters(energy, groups, rows=rows, cols=cols)
    found_out, found_in = perms_from_labels(rows, cols)
    return _arranged(out_perm, rows, found_out), _arranged(in_perm, cols, found_in)


def _arranged(suggested: torch.Tensor | None, labels: torch.Tensor, found: torch.Tensor) -> torch.Tensor:
    """The suggested order with its groups moved to their final labels (the order within each group kept)."""
    return found if suggested is None else suggested[torch.argsort(labels[suggested], stable=True)]


def _suggested(analysis: Any, conv: nn.Conv2d, groups: int, name: str,
               producer: str | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(out_perm, in_perm)`` from the analysis' correlation partitions of ``name`` and ``producer``, or ``None``s."""
    return (_partition_order(analysis, name, groups, conv.out_channels),
            _partition_order(analysis, producer, groups, conv.in_channels))


def _partition_order(analysis: Any, layer: str | None, groups: int, channels: int) -> torch.Tensor | None:
    """``analysis.group_permutation(layer, groups)`` ``(C,)`` when the analysis has ``layer``'s correlations."""
    if analysis is None or not layer or layer not in analysis.info or not analysis.has_correlation(layer):
        return None
    measured = analysis.info[layer].channels
    if measured != channels:
        raise CompressError(f"grouped rewrite: the analysis has {measured} channels for {layer!r}, the model "
                            f"{channels}; re-run 'analyze' after changing the model")
    return analysis.group_permutation(layer, groups)


def to_grouped(conv: nn.Conv2d, groups: int, *, perm: PermPair | None = None) -> nn.Module:
    """Replace a dense conv by a grouped conv with ``groups`` groups, keeping the most weight energy.

    Args:
        conv: dense ``nn.Conv2d`` (``groups == 1``), weight ``(N, M, kh, kw)``.
        groups: ``g``, dividing ``M`` and ``N``.
        perm: ``(out_perm, in_perm)`` channel orders; either may be ``None`` (then chosen by the energy
            heuristic). Grouped output channel ``j`` computes dense channel ``out_perm[j]``.

    Returns:
        ``nn.Sequential`` with children ``permute_in`` (``ChannelPermute(in_perm)``, omitted when the identity),
        ``conv`` (grouped ``Conv2d(M, N, groups=g)``, same stride/padding/dilation/bias) and ``permute_out``
        (restores the dense output order, omitted when the identity). Input ``(B, M, H, W)`` -> output
        ``(B, N, H', W')`` like ``conv``.
    """
    out_perm, in_perm = (None, None) if perm is None else perm
    if out_perm is None or in_perm is None:
        GroupedConfig(groups=groups).check_layer(conv)
        rows = None if out_perm is None else labels_from_perm(torch.as_tensor(out_perm), groups)
        cols = None if in_perm is None else labels_from_perm(torch.as_tensor(in_perm), groups)
        out_perm, in_perm = perms_from_labels(*balanced_coclusters(channel_energy(conv), groups, rows=rows,
                                                                   cols=cols))
    config = GroupedConfig(groups=groups, out_perm=tuple(torch.as_tensor(out_perm).tolist()),
                           in_perm=tuple(torch.as_tensor(in_perm).tolist()))
    return apply_config(conv, config)


@register_handler(GroupedConfig)
def _grouped(conv: nn.Conv2d, config: GroupedConfig) -> nn.Module:
    g = config.groups
    n, m = conv.out_channels, conv.in_channels
    out_perm = torch.as_tensor(config.out_perm if config.out_perm else range(n), device=conv.weight.device)
    in_perm = torch.as_tensor(config.in_perm if config.in_perm else range(m), device=conv.weight.device)
    w = conv.weight.detach()[out_perm][:, in_perm]  # (N, M, kh, kw) in grouped order
    blocks = w.reshape(g, n // g, g, m // g, *w.shape[2:])
    diag = torch.stack([blocks[a, :, a] for a in range(g)])  # (g, N/g, M/g, kh, kw)
    new = nn.Conv2d(m, n, conv.kernel_size, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                    groups=g, bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(diag.reshape(n, m // g, *w.shape[2:]))
        if conv.bias is not None:
            new.bias.copy_(conv.bias.detach()[out_perm])
    parts: list[tuple[str, nn.Module]] = []
    if not torch.equal(in_perm.cpu(), torch.arange(m)):
        parts.append(("permute_in", ChannelPermute(in_perm.cpu()).to(conv.weight.device)))
    parts.append(("conv", new))
    if not torch.equal(out_perm.cpu(), torch.arange(n)):
        parts.append(("permute_out", ChannelPermute(torch.argsort(out_perm.cpu())).to(conv.weight.device)))
    return nn.Sequential(OrderedDict(parts))


def grouped_effective_weight(module: nn.Module) -> torch.Tensor:
    """The dense weight ``(N, M, kh, kw)`` computed by a :func:`to_grouped` result (permutes included)."""
    conv = module.conv if isinstance(module, nn.Sequential) else module
    g, n = conv.groups, conv.out_channels
    m = conv.in_channels
    in_perm = module.permute_in.perm if hasattr(module, "permute_in") else torch.arange(m)
    out_perm = (torch.argsort(module.permute_out.perm) if hasattr(module, "permute_out") else torch.arange(n))
    dense = conv.weight.new_zeros(n, m, *conv.weight.shape[2:])
    w = conv.weight.detach().reshape(g, n // g, m // g, *conv.weight.shape[2:])
    for a in range(g):
        rows = out_perm[a * (n // g):(a + 1) * (n // g)].to(dense.device)
        cols = in_perm[a * (m // g):(a + 1) * (m // g)].to(dense.device)
        dense[rows[:, None], cols[None, :]] = w[a]
    return dense
