"""The report's human-readable sections, built once from the report dict and rendered as Markdown or HTML."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import fmt
from .schema import BEFORE_RECONSTRUCTION
from ..measurement.latency import BURST_MS

__all__ = ["Section", "sections", "verdict_lines", "slower_lines"]


@dataclass
class Section:
    """A titled block: free text lines, then an optional table."""

    title: str
    lines: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _smaller(before: int | None, after: int | None) -> str:
    return f"{before / after:.2f}x smaller" if before is not None and after else "-"


def _points(before: float | None, after: float | None) -> str:
    return "-" if before is None or after is None else f"{100 * (after - before):+.2f} pts"


def _summary(r: dict[str, Any]) -> Section:
    b, f = r["baseline"], r["final"]
    size = r.get("serialized_bytes") or {}
    rows = [["params", fmt.count(b["params"]), fmt.count(f["params"]), _smaller(b["params"], f["params"])],
            ["MACs / sample", fmt.count(b["macs"]), fmt.count(f["macs"]), _smaller(b["macs"], f["macs"])],
            ["top-1", fmt.pct(b["top1"]), fmt.pct(f["top1"]), _points(b["top1"], f["top1"])],
            ["top-5", fmt.pct(b["top5"]), fmt.pct(f["top5"]), _points(b["top5"], f["top5"])],
            ["agreement with baseline", "100.00%", fmt.pct(f.get("agreement")), "-"],
            ["checkpoint bytes", fmt.count(size.get("baseline")), fmt.count(size.get("final")),
             _smaller(size.get("baseline"), size.get("final"))]]
    data = r["data"]
    lines = [f"Data: `{data.get('source')}`" + (" (SYNTHETIC random data: accuracies mean nothing)"
                                                 if data.get("synthetic") else "") + f", sizes {data.get('sizes')}."]
    return Section("Summary", lines + verdict_lines(r), ["", "baseline", "final", "change"], rows)


def _steps(r: dict[str, Any]) -> Section:
    rows = []
    for s in r["steps"]:
        m = s["metrics"]
        before = (s.get("details") or {}).get(BEFORE_RECONSTRUCTION)
        if before is not None:  # same structure as after it: params and MACs are the step's
            rows.append([f"{s['name']} (before reconstruction)", s["kind"], fmt.pct(before), "-", "-",
                         fmt.count(m.get("params")), fmt.count(m.get("macs")), "-"])
        rows.append([s["name"], s["kind"], fmt.pct(m.get("top1")), fmt.pct(m.get("top5")), fmt.pct(m.get("agreement")),
                     fmt.count(m.get("params")), fmt.count(m.get("macs")), fmt.num(m.get("seconds"))])
    lines = [] if rows else ["No steps recorded."]
    if any((s.get("details") or {}).get(BEFORE_RECONSTRUCTION) is not None for s in r["steps"]):
        lines.append("A step that ran least-squares reconstruction has a row with its top-1 before it; its own "
                     "row is measured after it.")
    return Section("Steps (accuracy after each)", lines,
                   ["step", "kind", "top-1", "top-5", "agreement", "params", "MACs", "seconds"], rows)


def _where(row: dict[str, Any]) -> str:
    """``"onnxruntime cpu float32 BN-folded batch 64"``: the runtime and setting a latency row was timed in."""
    layout = (" channels_last" if row["channels_last"] else "") + (" BN-folded" if row.get("bn_folded") else "")
    return f"{row.get('runtime') or 'torch'} {row['device']} {row['dtype']}{layout} batch {row['batch']}"


def verdict_lines(r: dict[str, Any]) -> list[str]:
    """One line per latency row: ``"onnxruntime cpu float32 BN-folded batch 1: faster by 1.83x (measured on
    cpu)"``."""
    return [f"{_where(row)}: {row['verdict']}" for row in r["latency"]]


def slower_lines(r: dict[str, Any]) -> list[str]:
    """One loud line per runtime setting where the compressed model was measured SLOWER than the baseline."""
    return [f"SLOWER in {_where(row)}: the compressed model takes {row['compressed_ms'] / row['baseline_ms']:.2f}x "
            f"the baseline's time ({row['verdict']})" for row in r["latency"] if row["verdict"].startswith("SLOWER")]


def _latency(r: dict[str, Any]) -> Section:
    rows = [[row.get("runtime") or "torch", row.get("version") or "-", row["device"], row["dtype"], str(row["batch"]),
             "yes" if row["channels_last"] else "no", str(row.get("threads", "-")),
             f"{fmt.ms(row['baseline_ms'])} ± {fmt.ms(row['baseline_iqr_ms'])}",
             f"{fmt.ms(row['compressed_ms'])} ± {fmt.ms(row['compressed_iqr_ms'])}", fmt.ratio(row["ratio"]),
             row["verdict"], row.get("vs_torch") or "-"] for row in r["latency"]]
    lines = ["Median ms per batch ± interquartile range; models timed interleaved in one process, one runtime "
             "after another (a runtime's thread pool spin-waits after its calls and would take the next one's "
             "cores); speed-up = baseline / compressed within one runtime; 'vs eager torch' compares the "
             "compressed model in that runtime with itself in eager PyTorch (timed in another block). Every "
             "sample is warm (as a model serving requests runs): per round one untimed call, then one timed call, "
             f"or for calls under {BURST_MS:g} ms the mean of a burst of consecutive calls."] if rows else \
        ["Latency was not measured."]
    lines += [f"**{line}**" for line in slower_lines(r)]
    if any(row.get("bn_folded") for row in r["latency"]):
        lines.append("Timed in deploy form: BatchNorms folded into their convs in BOTH models.")
    return Section("Latency", lines, ["runtime", "version", "device", "dtype", "batch", "channels_last", "threads",
                                      "baseline ms", "compressed ms", "speed-up", "verdict", "vs eager torch"], rows)


def _onnx(r: dict[str, Any]) -> Section | None:
    o = r.get("onnx")
    if not o:
        return None
    status = "within" if o["within_tolerance"] else "OUTSIDE"
    return Section("ONNX export", [
        f"`{o['file']}`: input `{o['input']}` {o['input_shape']} (dynamic batch), output `{o['output']}`; "
        f"BatchNorms folded: {'yes' if o['bn_folded'] else 'no'}.",
        f"Checked with onnxruntime {o['onnxruntime']} at batch {', '.join(map(str, o['checked_batches']))}: relative "
        f"max error {o['max_rel_error']:.2e} against the eager model ({status} the tolerance {o['tolerance']:g})."])


def _delta(before: float | None, after: float | None) -> str:
    return "-" if before is None or after is None else f"{after - before:+.3f}"


def _layers(r: dict[str, Any]) -> Section:
    rows = [[x["name"], x.get("type") or "-", fmt.count(x["macs_before"]), fmt.count(x["macs_after"]),
             fmt.count(x["params_before"]), fmt.count(x["params_after"]), fmt.ms(x["ms_before"]),
             fmt.ms(x["ms_after"]), _delta(x["ms_before"], x["ms_after"])]
            for x in r["layers"] if x["macs_before"] or x["macs_after"] or x["params_before"] or x["params_after"]]
    timing = r.get("layers_timing")
    lines = [f"Per-layer ms measured with hooks on {timing['device']} {timing['dtype']} batch {timing['batch']} "
             f"({timing['runs']} runs, medians; hook overhead included)."] if timing else \
        ["Per-layer latency was not measured."]
    return Section("Per layer (before -> after)", lines, ["layer", "type", "MACs before", "MACs after",
                                                          "params before", "params after", "ms before",
                                                          "ms after", "Δ ms"], rows)


def _rewrites(r: dict[str, Any]) -> Section | None:
    if not r.get("rewrites"):
        return None
    rows = [[x["step"], x["layer"], x.get("kind") or "-", fmt.count(x.get("macs_before")),
             fmt.count(x.get("macs_after")), fmt.num(x.get("weight_error")), fmt.num(x.get("output_error"))]
            for x in r["rewrites"]]
    return Section("Layer rewrites", [], ["step", "layer", "kind", "MACs before", "MACs after",
                                          "rel. weight error", "output error"], rows)


def _change(choice: dict[str, Any]) -> str:
    if choice["form"] == "prune":
        return f"{choice['width_from']} -> {choice['width_to']} channels"
    if choice["form"] == "drop":
        return f"block replaced by identity ({len(choice.get('members') or [])} convs)"
    return ", ".join(f"{k}={v}" for k, v in (choice.get("params") or {}).items()) or "-"


def _plans(r: dict[str, Any]) -> list[Section]:
    """One section per ``plan`` step: its verdict (a slower model is said so), measured rounds and choices."""
    out = []
    for s in r["steps"]:
        d = s.get("details") or {}
        if s["kind"] != "plan" or "verdict" not in d:
            continue
        lines = [d["verdict"]]
        lines += [f"round {it['index']}: predicted {it['predicted_ratio']:.3f}x, measured {it['measured_ratio']:.3f}x"
                  f"{' (met)' if it['met'] else ''}" for it in d.get("iterations", [])]
        lines += list(d.get("notes", []))
        rows = [[c["form"], c["layer"], _change(c), f"{fmt.num(c['predicted_saved'])} {c['unit']}", fmt.num(c["cost"])]
                for c in d.get("choices", [])]
        out.append(Section(f"Plan ({s['name']})", lines, ["form", "layer", "change", "predicted saving",
                                                          "accuracy cost"], rows))
    return out


def _environment(r: dict[str, Any]) -> Section:
    e = r["environment"]
    lines = [f"python {e['python']}, torch {e['torch']}, torchvision {e['torchvision']}, "
             f"torch-pruning {e['torch_pruning']}",
             f"cpu: {e['cpu']}; gpu: {e['gpu'] or 'none'}; threads {e['threads']}; device {e['device']}; "
             f"seed {e['seed']}"]
    return Section("Environment", lines)


def sections(report: dict[str, Any]) -> list[Section]:
    """Summary, steps, latency, per-layer, plans, rewrites and the ONNX file (when present), notes,
    environment."""
    out = [_summary(report), _steps(report), _latency(report), _layers(report), *_plans(report)]
    out += [s for s in (_rewrites(report), _onnx(report)) if s is not None]
    if report["notes"]:
        out.append(Section("Notes", list(report["notes"])))
    out.append(_environment(report))
    return out
