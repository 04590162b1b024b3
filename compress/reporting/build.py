"""Assemble the report dictionary (the content of ``report.json``) from a finished or running recipe."""
from __future__ import annotations

import datetime as _dt
import platform
from typing import Any, Sequence

import torch

from ..env import cpu_model, package_version
from ..measurement import Comparison, cost
from ..jsonable import jsonable
from .layers import layer_rows
from .schema import SCHEMA_VERSION, validate

__all__ = ["build_report", "latency_rows", "environment_section", "summary_of", "BASELINE", "COMPRESSED"]

BASELINE, COMPRESSED = "baseline", "compressed"  # model names used in latency comparisons


def environment_section(ctx: Any) -> dict[str, Any]:
    """The run's environment (``ctx.environment``) completed with what the schema requires."""
    env = dict(jsonable(ctx.environment or {}))
    versions = env.get("versions") or {}
    gpu = env.get("gpu")
    if gpu is None and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
    env.update({
        "python": env.get("python") or platform.python_version(),
        "torch": versions.get("torch") or torch.__version__,
        "torchvision": versions.get("torchvision") or package_version("torchvision"),
        "torch_pruning": versions.get("torch-pruning") or package_version("torch-pruning"),
        "cpu": env.get("cpu") or cpu_model(),
        "gpu": gpu,
        "threads": int(env.get("threads") or torch.get_num_threads()),
        "seed": env.get("seed", getattr(ctx, "seed", None)),
        "device": str(env.get("device") or ctx.device),
    })
    return env


def _data_section(ctx: Any) -> dict[str, Any]:
    data = ctx.data
    if hasattr(data, "describe"):
        return jsonable(data.describe())
    return {"source": str(getattr(data, "source", "unknown")), "synthetic": bool(getattr(data, "synthetic", False)),
            "sizes": jsonable(getattr(data, "sizes", {}))}


def summary_of(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{params, macs, top1, top5, agreement}`` from a step's metrics (``None`` where missing)."""
    return {k: jsonable(metrics.get(k)) for k in ("params", "macs", "top1", "top5", "agreement")}


def _steps(records: Sequence[Any]) -> list[dict[str, Any]]:
    return [r.to_plain() for r in records]


def _step_notes(records: Sequence[Any]) -> list[str]:
    """Each step's own notes (:meth:`~compress.records.StepDetails.report_notes`), prefixed with the step's name."""
    return [f"step {r.name}: {line}" for r in records if r.details is not None for line in r.details.report_notes()]


# The per-layer fields of compress.transforms.rewrite.apply.RewriteRecord that the report shows: read by their
# record's own names (tests/reporting/test_parts checks they are RewriteRecord fields).
REWRITE_KEYS = ("kind", "macs_before", "macs_after", "weight_error", "output_error")


def _rewrites(records: Sequence[Any]) -> list[dict[str, Any]]:
    """Per-layer rewrite records of every ``rewrite`` step, tagged with the step name (read by field name: a
    renamed :class:`~compress.transforms.rewrite.apply.RewriteRecord` field fails here, never an empty column)."""
    from ..transforms.rewrite.step import RewriteDetails  # deferred: reporting must not import the transforms

    return [{"step": r.name, "layer": item.layer, **{k: jsonable(getattr(item, k)) for k in REWRITE_KEYS}}
            for r in records if isinstance(r.details, RewriteDetails) for item in r.details.layers]


def _final_metrics(ctx: Any) -> dict[str, Any]:
    """Metrics of the current model: the last record's when it has them, else measured now."""
    if ctx.records and ctx.records[-1].metrics.get("macs") is not None:
        return ctx.records[-1].metrics
    return ctx.measure(ctx.model)


def _baseline_metrics(ctx: Any) -> dict[str, Any]:
    if ctx.records and ctx.records[0].kind == "baseline" and ctx.records[0].metrics:
        return ctx.records[0].metrics
    return ctx.measure(ctx.baseline)


def _reduction(base: dict[str, Any], final: dict[str, Any]) -> dict[str, Any]:
    """Baseline / final ratios (above 1: smaller), ``None`` where a side is missing or zero."""
    out = {}
    for key in ("params", "macs"):
        b, f = base.get(key), final.get(key)
        out[f"{key}_x"] = round(b / f, 4) if b and f else None
    return out


def latency_rows(comparisons: Sequence[Comparison]) -> tuple[list[dict[str, Any]], list[str]]:
    """The report's latency rows, one per (runtime, device, dtype, batch) the compressed model was timed in,
    and one note per runtime skipped (unavailable, unsupported in a setting, failed its check)."""
    rows, notes = [], []
    for comp in comparisons:
        for row in jsonable(comp.rows()):
            if row.get("skipped"):
                note = (f"runtime {row['runtime']} not measured on {row['device']} {row['dtype']}: "
                        f"{row['skipped']}")
                notes += [] if note in notes else [note]
            elif row["model"] == COMPRESSED:
                rows.append(row)
    return rows, notes


def _timing(timed: Comparison | None) -> dict[str, Any] | None:
    """How the per-layer times were taken (device, dtype, batch, runs), or ``None``."""
    if timed is None:
        return None
    info = timed.results[BASELINE].layers.as_dict()
    return {k: info[k] for k in ("device", "dtype", "batch", "runs")}


def build_report(ctx: Any, *, comparisons: Sequence[Comparison] = (), layer_times: Comparison | None = None,
                 artifacts: dict[str, Any] | None = None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The report as a JSON-ready dict that validates against :data:`~compress.reporting.schema.REPORT_SCHEMA`.

    Args:
        ctx: the :class:`~compress.context.RunContext` (records, models, data, environment).
        comparisons: latency comparisons of ``"baseline"`` vs ``"compressed"`` (per runtime, or eager); see
            :func:`latency_rows`.
        layer_times: an eager comparison with per-layer times (``per_layer=True``) for the ``layers`` table;
            ``None``: the first of ``comparisons`` that has them, if any.
        artifacts: the written artifacts' records by file name (:func:`compress.artifacts.write_artifacts`);
            ``model.onnx``'s is also the report's ``onnx`` section.
        notes: lines shown in the report (e.g. "cuda not available").

    Returns:
        The report dictionary (schema version :data:`~compress.reporting.schema.SCHEMA_VERSION`).
    """
    base_metrics, final_metrics = _baseline_metrics(ctx), _final_metrics(ctx)
    base_cost, final_cost = cost(ctx.baseline, ctx.example_inputs), cost(ctx.model, ctx.example_inputs)
    timed = layer_times or next((c for c in comparisons if BASELINE in c.results
                                 and c.results[BASELINE].layers is not None), None)
    rows, skipped = latency_rows(comparisons)
    layers = layer_rows(base_cost, final_cost,
                        ms_before=timed.results[BASELINE].layers if timed else None,
                        ms_after=timed.results[COMPRESSED].layers if timed else None)
    report = {
        "schema_version": SCHEMA_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe_file": getattr(ctx, "recipe_file", None),
        "environment": environment_section(ctx),
        "data": _data_section(ctx),
        "baseline": summary_of(base_metrics),
        "final": summary_of(final_metrics),
        "reduction": _reduction(base_metrics, final_metrics),
        "steps": _steps(ctx.records),
        "runtimes": list(dict.fromkeys(row["runtime"] for row in rows if row.get("runtime"))),
        "latency": rows,
        "layers": layers,
        "layers_timing": _timing(timed),
        "rewrites": _rewrites(ctx.records),
        "serialized_bytes": {"baseline": base_cost.serialized_bytes, "final": final_cost.serialized_bytes},
        "onnx": jsonable((artifacts or {}).get("model.onnx")),
        "artifacts": jsonable(artifacts or {}),
        "plots": [],
        "notes": list(notes) + _step_notes(ctx.records) + skipped,
    }
    validate(report)
    return report
