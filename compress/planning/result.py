"""What a plan decided and what was measured: per-layer choices, predicted and measured ratios, the verdict."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LayerChoice", "Iteration", "Plan"]


@dataclass
class LayerChoice:
    """One change the plan makes.

    Attributes:
        layer: for ``form == "prune"`` the group's root module (torch-pruning root); for ``"drop"`` the residual
            block replaced by the identity; else the rewritten conv.
        form: ``"prune"``, ``"drop"`` or a rewrite kind (``"grouped"``, ``"separable"``, ``"shuffle"``,
            ``"bottleneck"``).
        width_from / width_to: channel count of the group before/after (rewrites: the conv's output width;
            drops: the block's input channels before pruning, both).
        members: convs whose channels change with the group (producers, depthwise, consumers); a dropped
            block's convs.
        removed: root-numbered channels removed (pruning only), ascending.
        params: the rewrite's keyword options for :func:`compress.transforms.rewrite.apply.rewrite`.
        predicted_saved: predicted saving in :attr:`unit` credited to this change during the search.
        unit: ``"ms"``, ``"macs"`` or ``"params"``.
        cost: predicted accuracy cost (fraction of one layer's output energy lost; see
            :mod:`compress.planning.costs`).
    """

    layer: str
    form: str
    width_from: int
    width_to: int
    members: list[str] = field(default_factory=list)
    removed: list[int] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    predicted_saved: float = 0.0
    unit: str = "ms"
    cost: float = 0.0

    @property
    def predicted_ms_saved(self) -> float | None:
        return self.predicted_saved if self.unit == "ms" else None


@dataclass
class Iteration:
    """One plan-apply-measure round of the closed loop."""

    index: int
    predicted_target: float
    predicted_ratio: float
    measured_ratio: float
    met: bool
    changes: int


@dataclass
class Plan:
    """A latency/MACs/parameter plan for one model on one device.

    Attributes:
        target: ``{"latency" | "macs" | "params": fraction of the original}``.
        device / dtype / batch / channels_last / align: the conditions planned and measured for.
        runtime: where latency was measured (the table's entries and the closed loop's models):
            :mod:`compress.measurement.runtimes` name.
        choices: the changes, pruning first then rewrites (the order :func:`apply_plan` performs them).
        predicted_ratio: predicted planned/original for the target's quantity.
        measured_ratio: measured planned/original for it (latency: medians of one interleaved run).
        latency: the end-to-end latency comparison row (baseline/planned ms, IQRs, speed-up, verdict) or ``None``.
        macs_ratio / params_ratio: measured planned/original MACs and parameters.
        iterations: the closed-loop rounds.
        met: whether ``measured_ratio <= target + tolerance``.
        verdict: one line saying what was reached, never hiding a slow-down (``"SLOWER by 1.2x on cpu"``).
        notes: groups or layers left alone and why, table reuse, permutes left unabsorbed.
        table: latency-table bookkeeping (cache file, entries measured and reused) or ``None``.
    """

    target: dict[str, float]
    device: str
    dtype: str
    batch: int
    channels_last: bool
    align: int
    runtime: str = "torch"
    choices: list[LayerChoice] = field(default_factory=list)
    predicted_ratio: float = 1.0
    measured_ratio: float = 1.0
    latency: dict[str, Any] | None = None
    macs_ratio: float = 1.0
    params_ratio: float = 1.0
    iterations: list[Iteration] = field(default_factory=list)
    met: bool = False
    verdict: str = ""
    tolerance: float = 0.0
    notes: list[str] = field(default_factory=list)
    table: dict[str, Any] | None = None

    @property
    def metric(self) -> str:
        return next(iter(self.target))

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (the recipe step's details)."""
        out = asdict(self)
        out["choices"] = [{k: v for k, v in c.items() if not (k == "removed" and len(v) > 64)}
                          | ({"removed_count": len(c["removed"])} if c["form"] == "prune" else {})
                          for c in out["choices"]]
        return out

    def summary_lines(self) -> list[str]:
        """Human-readable lines: the verdict, then one line per choice."""
        lines = [self.verdict]
        for c in self.choices:
            what = (f"{c.width_from}->{c.width_to} ch" if c.form == "prune"
                    else f"{len(c.members)} convs" if c.form == "drop"
                    else ", ".join(f"{k}={v}" for k, v in c.params.items()))
            lines.append(f"  {c.form:<10} {c.layer:<32} {what:<16} saves {c.predicted_saved:.4g} {c.unit} "
                         f"(predicted), cost {c.cost:.4f}")
        return lines
