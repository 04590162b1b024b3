"""Markdown sections of ``benchmarks/RESULTS.md``, rendered from the JSON the benchmark scripts write.

Every function takes the data as measured (``None`` when a section has no results yet) and says so plainly
instead of inventing a figure; comparisons are computed from figures measured in the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common import context_lines, fmt, md_table

__all__ = ["quality_section", "recovery_section", "coverage_section", "full_coverage_lines", "overhead_section",
           "efficiency_section", "parse_latency_table", "zero_shot_markdown", "zero_shot_section", "ZERO_SHOT_TARGETS"]

_METHOD_TEXT = {
    "tp": "(a) torch-pruning MagnitudePruner (L2, uniform) + plain fine-tune",
    "prune": "(b) compress prune + BN calibration + distillation",
    "rewrite": "(c) compress rewrite + BN calibration + distillation",
}


def _pct(x: float | None) -> str:
    return fmt(None if x is None else 100 * x, ".2f") + ("" if x is None else "%")


def _pts(x: float | None, ref: float | None) -> str:
    return "—" if x is None or ref is None else f"{100 * (x - ref):+.2f}"


def _script_header(run: dict[str, Any], description: str) -> list[str]:
    """Context lines of a script's run, a bullet describing its output, and its error tail if it failed."""
    lines = [*context_lines(run["context"], seconds=run["seconds"]), f"- {description}", ""]
    if run["status"] != "ok":
        lines += [f"**FAILED ({run['status']})**:", "", "```", run["stderr"][-1500:], "```", ""]
    return lines


def _failed(title: str, run: dict[str, Any] | None) -> list[str]:
    """Lines saying a rerun failed (or that the figures shown are from an earlier run)."""
    if run is None:
        return [f"_{title} was not rerun by this invocation; the figures below are from the run they name._", ""]
    if run["status"] == "ok":
        return []
    tail = "\n".join(run["stderr"].splitlines()[-8:])
    return [f"**This run of the section FAILED ({run['status']} after {run['seconds']:.0f} s).** "
            "Figures below, if any, are from an earlier run (see its date). Last error lines:", "", "```", tail,
            "```", ""]


# ---------------------------------------------------------------- section 1: quality

def _knob(row: dict[str, Any]) -> str:
    t = row["transform"]
    if row["method"] == "tp":
        return f"ratio {t['pruning_ratio']}"
    if row["method"] == "prune":
        return f"{t['importance']}, ratio {fmt(t.get('ratio'), '.3f')}"
    if "macs_target" in t:
        knob = f"data-aware, macs_target {t['macs_target']}"
    elif "T" in t:
        knob = f"data-aware, T {t['T']} (cheapest)"
    elif "max_error" in t:
        knob = f"max_error {t['max_error']}"
    else:
        knob = f"groups auto, energy >= {t.get('energy_threshold')}"
    met = "" if t.get("budget_met", True) else ", BUDGET NOT MET"
    return f"{t['kind']} {knob}, {t['rewritten']} convs{met}"


def _latency_cells(lat: dict[str, Any], name: str, batch: str) -> list[str]:
    """``median ± IQR``, speed-up (medians), ``min``, speed-up (minima) of one variant at one batch size."""
    e = lat["models"].get(name, {}).get(batch)
    if e is None:
        return ["—"] * 4
    return [f"{e['median_ms']:.3f} ± {e['iqr_ms']:.3f}", _speed(e["speedup"]), f"{e['min_ms']:.3f}",
            _speed(e["speedup_min"])]


def _speed(x: float) -> str:
    return f"{x:.2f}x" if x >= 1 else f"{x:.2f}x (SLOWER)"


def _latency_table(m: dict[str, Any]) -> list[str]:
    lat = m["latency"]
    names = ["baseline", *(f"{r['method']}@{r['budget']:g}" for r in m["rows"])]
    rows = [[n, *_latency_cells(lat, n, "1"), *_latency_cells(lat, n, "64")] for n in names]
    header = ["variant", "b=1 median ms ± IQR", "speed-up", "b=1 min ms", "speed-up (min)", "b=64 median ms ± IQR",
              "speed-up", "b=64 min ms", "speed-up (min)"]
    return [md_table(header, rows)]


def _model_table(m: dict[str, Any]) -> list[str]:
    base = m["baseline"]
    staged = _pct(base.get("top1_stage_test", base["top1"]))
    rows = [["baseline", "—", staged, staged, "—", _pct(base["top1"]), "—", f"{base['params']:,}",
             f"{base['macs'] / 1e6:.2f}M (1.00)"]]
    for r in m["rows"]:
        rows.append([f"{r['budget']:.0%} {r['method']}", _knob(r), _pct(r["top1_transform"]),
                     _pct(r.get("top1_calibrated")), "distill" if r["distill"] else "labels",
                     _pct(r["top1_finetuned"]), _pts(r["top1_finetuned"], base["top1"]), f"{r['params']:,}",
                     f"{r['macs'] / 1e6:.2f}M ({r['macs'] / base['macs']:.2f})"])
    n = m.get("stage_test_images", 10000)
    on = "" if n >= 10000 else f" ({n:,} test imgs)"
    header = ["budget / method", "settings", f"top-1 after transform{on}", f"after BN calib{on}", "fine-tune loss",
              "after fine-tune (10,000 test imgs)", "Δ vs baseline (pts)", "params", "MACs (fraction)"]
    return [md_table(header, rows)]


def _verdicts(m: dict[str, Any]) -> list[str]:
    """Who wins at each budget, in accuracy and in measured latency, stated both ways."""
    lines = []
    lat = m["latency"]["models"]
    for budget in sorted({r["budget"] for r in m["rows"]}, reverse=True):
        by = {r["method"]: r for r in m["rows"] if r["budget"] == budget}
        tp = by.get("tp")
        for method in ("prune", "rewrite"):
            r = by.get(method)
            if r is None or tp is None:
                continue
            gain = 100 * (r["top1_finetuned"] - tp["top1_finetuned"])
            word = "WINS" if gain > 0 else "LOSES"
            speed = []
            for b in ("1", "64"):
                ours, theirs = lat[f"{method}@{budget:g}"][b], lat[f"tp@{budget:g}"][b]
                speed.append(f"b={b}: {_vs(ours['median_ms'], theirs['median_ms'])} (medians), "
                             f"{_vs(ours['min_ms'], theirs['min_ms'])} (minima)")
            lines.append(f"- {budget:.0%} MACs, {method} vs tp: {word} on accuracy by {abs(gain):.2f} pts "
                         f"({_pct(r['top1_finetuned'])} vs {_pct(tp['top1_finetuned'])}); CPU latency "
                         + "; ".join(speed) + ".")
    return lines


def _vs(ours: float, theirs: float) -> str:
    word = "faster" if ours < theirs else "SLOWER"
    return f"{word} than tp's output by {max(ours, theirs) / min(ours, theirs):.2f}x"


def _probe(p: dict[str, Any] | None) -> str:
    if not p:
        return "- importance for (b): fixed (no probe)."
    scores = ", ".join(f"{k} {_pct(v)}" for k, v in p["val_top1_after_calibration"].items())
    return (f"- importance for (b), chosen on the val split ({p.get('val_images', 5000):,} held-out training images, "
            f"never test) after pruning to {p['budget']:.0%} MACs + BN calibration: {scores} -> **{p['chosen']}**.")


_METHODS_TEXT = [
    "- methods: (a) `tp` = torch-pruning `MagnitudePruner` (L2, uniform ratio bisected to the budget) + plain "
    "fine-tune (label loss only); (b) `prune` = `compress.prune` to the MACs target with the importance named "
    "below + BN calibration + distillation fine-tune; (c) `rewrite` = `compress.rewrite` (for the ResNet: "
    "separable, data-aware, its `macs_target` allocating T per layer on the calibration split; for the "
    "MobileNet, whose 3x3 convs are already depthwise: grouped `auto`, its energy threshold bisected to the "
    "budget) + BN calibration + distillation fine-tune.",
]


def quality_section(docs: list[dict[str, Any]], run: dict[str, Any] | None, *, rerun: list[str]) -> str:
    """Section 1 from the per-model documents of ``benchmarks/quality.py``.

    ``rerun``: models this invocation measured; the others are shown as saved, marked with their own date.
    """
    lines = ["## 1. Quality at equal MACs budget (Fashion-MNIST baselines)", "", *_METHODS_TEXT, ""]
    lines += _failed("Section 1", run if rerun else None)
    if not docs:
        return "\n".join(lines + ["No results yet: run `python benchmarks/quality.py --quick`.", ""])
    for q in docs:
        for m in q["models"]:
            lines += _quality_model(q, m, fresh=m["model"] in rerun)
    return "\n".join(lines)


def _quality_model(q: dict[str, Any], m: dict[str, Any], *, fresh: bool) -> list[str]:
    b, o, ft = m["baseline"], m["baseline_origin"], m["finetune"]
    lines = [f"### {m['model']} — baseline top-1 {_pct(b['top1'])}, {b['params']:,} params, "
             f"{b['macs'] / 1e6:.2f}M MACs", ""]
    if not fresh:
        lines += ["_Not rerun by this invocation: measured by the command and on the date below._", ""]
    lines += context_lines(q, seconds=q.get("seconds"))
    lines += [
        f"- mode: {'quick' if q.get('quick') else 'full'}; baseline `{m['spec']['name']}` {m['spec'].get('kwargs')}, "
        f"{o['source']} (cache key {o['key']}; trained {fmt(o.get('epochs'), '')} epochs on the full train split in "
        f"{fmt(o.get('train_seconds'), '.0f')} s, once, then cached)",
        f"- fine-tune (identical for every method): {ft.get('images'):,} training images (fixed random subset, "
        f"seed {ft.get('seed')}), {ft.get('epochs')} epoch(s), SGD lr {ft.get('lr')} cosine, batch "
        f"{ft.get('batch_size')}; (a) label loss only, (b)/(c) distillation from the baseline (alpha 0.7, T 4).",
        f"- top-1 on the Fashion-MNIST test set: after the fine-tune always all 10,000 images; after the transform "
        f"and after BN calibration {_stage_note(m)}. BN calibration: the calibration split (1,024 training "
        "images, 8 batches of 128); (a) has no calibration stage by design.",
        f"- CPU latency: `compare_latency`, all variants and the baseline interleaved in one process, "
        f"{_lat_settings(m)}; evaluation/training used {q.get('eval_threads')} threads. Medians and minima "
        "are both shown: on this shared, loaded 2-core machine a ~1 ms forward often waits for a core, which "
        "inflates medians (see the IQR); minima are closer to the uncontended compute time.",
        "- MACs: compress's counter (`compress.measurement.cost`); budgets were met with torch-pruning's counter "
        "(the fraction column differs slightly: BN/ReLU/pool MACs).",
        _probe(m.get("importance_probe")), ""]
    lines += _model_table(m) + ["", "CPU latency of the fine-tuned variants (same process, interleaved):", ""]
    return lines + _latency_table(m) + [""] + _verdicts(m) + [""]


def _stage_note(m: dict[str, Any]) -> str:
    n = m.get("stage_test_images", 10000)
    if n >= 10000:
        return "also on all 10,000"
    return (f"on the first {n:,} test images only (to keep the run short; the baseline row shows its accuracy "
            "on the same images for comparison)")


def _lat_settings(m: dict[str, Any]) -> str:
    s = m["latency"]["settings"]
    return f"{s['device']} {s['dtype']}, {s['threads']} thread(s), {s['runs']} runs, warm-up {s['warmup']}"


# ---------------------------------------------------------------- section 5: recovery (issues 5 and 6)

def _recovery_lines(name: str, title: str, r: dict[str, Any] | None, rerun: bool) -> list[str]:
    lines = [f"### {title}", ""]
    if r is None:
        return lines + [f"Not measured yet: `python benchmarks/recovery.py --recipes {name}`.", ""]
    if r.get("status") != "ok":
        return lines + [f"The last run FAILED ({r.get('status')}): {r.get('stderr', '')[-400:]}", ""]
    when = "in this invocation" if rerun else "in an earlier run (not rerun by this invocation)"
    ft = r["finetune"]
    lines += context_lines(r, seconds=r.get("seconds"))
    lines += [f"- measured {when}; details and the report's tables: `benchmarks/results/{name}.md`",
              f"- baseline top-1 **{_pct(r['baseline_top1'])}**; before any fine-tuning (after BN calibration) "
              f"**{_pct(r['top1_before_finetune'])}**; after the distillation fine-tune **{_pct(r['final_top1'])}**",
              f"- change vs baseline: **{-r['drop_points']:+.2f} points** (target: a drop of at most "
              f"{r['target_points']}): "
              f"**{'MET' if r['met'] else 'NOT MET'}** with {ft.get('epochs')} fine-tune epoch(s) on "
              f"{r['train_size']:,} training images ({fmt(ft.get('seconds'), '.0f')} s of fine-tuning)",
              f"- MACs {r['macs_fraction']:.2f} of the baseline, params {r['params_fraction']:.2f}"]
    for lat in r["latency"]:
        lines.append(f"- whole model, {lat['device']} batch {lat['batch']} ({lat['threads']} thread(s)): "
                     f"{lat['baseline_ms']:.3f} ms -> {lat['compressed_ms']:.3f} ms: {lat['verdict']}")
    lines += ["", md_table(["step", "top-1", "MACs", "params"],
                           [[s["step"], _pct(s["top1"]), f"{s['macs']:,}", f"{s['params']:,}"] for s in r["steps"]]),
              ""]
    if r.get("rewritten_layers"):
        t = r.get("layers_timing") or {}
        rows = [[x["name"], f"{x['macs_before']:,}", f"{x['macs_after']:,}", fmt(x["ms_before"], ".4f"),
                 fmt(x["ms_after"], ".4f"), _faster(x["ms_before"], x["ms_after"])] for x in r["rewritten_layers"]]
        lines += [f"Per-layer CPU latency of each rewritten layer next to the dense one ({t.get('device')} "
                  f"{t.get('dtype')}, batch {t.get('batch')}, {t.get('runs')} runs, forward hooks):", "",
                  md_table(["layer", "MACs dense", "MACs separable", "ms dense", "ms separable", "verdict"], rows), ""]
    return lines


def _faster(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "—"
    return f"faster {a / b:.2f}x" if a >= b else f"SLOWER {b / a:.2f}x"


def recovery_section(rec: dict[str, dict[str, Any] | None], *, rerun: bool) -> str:
    lines = ["## 2. Measured recovery on the Fashion-MNIST ResNet-style baseline (issues 6 and 5)", ""]
    lines += _recovery_lines("prune50_fmnist", "Issue 6: prune to 50% MACs + BN calibration + distillation "
                             "(`recipes/prune50_fmnist.yaml`)", rec.get("prune50_fmnist"), rerun)
    lines += _recovery_lines("separable_fmnist", "Issue 5: 3x3 convs -> separable (data-aware, T per layer to a MACs target) + BN "
                             "calibration + distillation (`recipes/separable_fmnist.yaml`)",
                             rec.get("separable_fmnist"), rerun)
    return "\n".join(lines)


# ---------------------------------------------------------------- section 3: coverage

def _cell(stage: dict[str, Any] | None) -> str:
    if not stage:
        return "—"
    status = stage.get("status")
    if status == "ok":
        if "macs_before" in stage:
            return f"ok ({stage['macs_after'] / stage['macs_before']:.2f} MACs)"
        if "rewritten" in stage:
            if stage["rewritten"]:
                return f"ok ({stage['rewritten']})"
            return "declined" if stage.get("declined") else "n/a"
        return "ok"
    if status == "error":
        return "**ERROR**"
    return f"**{status}**"


def _scope(layers: int | str) -> str:
    return "all of them" if layers == "all" else f"the {layers} smallest of each kind, to keep the sweep quick"


def full_coverage_lines(full: dict[str, Any] | None) -> list[str]:
    """The totals of the full sweep (every torchvision classifier and the seeded timm sample,
    ``benchmarks/results/coverage_full/coverage.json``), with its own context; empty without one."""
    if full is None:
        return []
    from coverage import totals  # deferred: imports compress' rewrite registry

    lines = ["### Full sweep: every torchvision classifier and one timm convnet per family", ""]
    lines += context_lines(full, seconds=full.get("seconds"))
    if full.get("partial"):
        lines.append(f"- sweep state: {full['partial']}")
    lines += ["- table, every failure and skipped group: `benchmarks/results/coverage_full/coverage.md`", "",
              "Totals:", "", *totals(full), ""]
    return lines


def coverage_section(c: dict[str, Any] | None, run: dict[str, Any] | None, *, rerun: bool,
                     full: dict[str, Any] | None = None) -> str:
    lines = ["## 3. Coverage: torchvision classification models", ""]
    lines += _failed("Section 3", run if rerun else None)
    lines += full_coverage_lines(full)
    if full is not None:
        lines += ["### The quick sweep (re-run by `benchmarks/run.py`)", ""]
    if c is None:
        return "\n".join(lines + ["No results yet: run `python benchmarks/coverage.py --quick`.", ""])
    lines += context_lines(c, seconds=c.get("seconds"))
    scope = "a representative subset of" if c.get("quick") else "every model of"
    lines += [f"- scope: {scope} `torchvision.models.list_models(module=torchvision.models)`, random weights, "
              "10 classes, each model in its own subprocess "
              f"(timeout {c['timeout_s']:g} s); skipped only when estimated above {c['memory_gib']:g} GiB.",
              f"- per model: analyze (1 batch of 2 images), prune at channel ratio {c['ratio']} (l2, with the "
              "analysis), and each rewrite kind "
              + ", ".join(f"{k} {v}" if v else k for k, v in c["kinds"].items())
              + f" on the eligible convs ({_scope(c['layers_per_kind'])}); "
              "a forward pass must give finite (2, 10) logits.",
              "- cells: `ok (n)` = n convs rewritten and the forward check passed; `n/a` = no eligible conv "
              "(e.g. dilated needs K >= 5; separable needs a dense KxK); `declined` = eligible convs exist but the "
              "rewrite declined every one it tried (reasons listed below); prune shows MACs after/before.", ""]
    kinds = tuple(c["kinds"])  # the kinds the run measured (the registry's at the time), in its order
    rows, failures, skipped, declined = [], [], [], []
    for r in c["rows"]:
        if r.get("status", "").startswith("skipped"):
            skipped.append(f"{r['name']} ({r['status']})")
            continue
        rows.append([r["name"], r.get("input", ""), _cell(r.get("analyze")), _cell(r.get("prune")),
                     *(_cell(r.get(k)) for k in kinds), fmt(r.get("seconds"), ".0f")])
        for stage in ("analyze", "prune", *kinds):
            s = r.get(stage) or {}
            if s.get("status") not in ("ok", None):
                failures.append(f"- {r['name']} / {stage}: {s.get('error', s.get('status'))}")
            elif s.get("declined") and not s.get("rewritten"):
                declined.append(f"- {r['name']} / {stage}: " + "; ".join(s["declined"]))
    ok = sum(all((r.get(s) or {}).get("status") == "ok" for s in ("analyze", "prune", *kinds)) for r in c["rows"]
             if not r.get("status", "").startswith("skipped"))
    lines += [md_table(["model", "px", "analyze", "prune 0.3", *kinds, "s"], rows), "",
              f"**{ok}/{len(rows)} models passed every stage.** Skipped (memory): {', '.join(skipped) or 'none'}.", ""]
    lines += (["Failures, stated plainly:", ""] + failures if failures else ["No failures."]) + [""]
    if declined:
        lines += ["Declined (the rewrite's own rules, not errors):", "", *declined, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- section 4: analysis overhead

def overhead_section(run: dict[str, Any] | None) -> str:
    lines = ["## 4. Analysis overhead vs plain inference, and peak memory vs calibration batches", ""]
    if run is None:
        return "\n".join(lines + ["Not rerun by this invocation (`--skip overhead`).", ""])
    lines += _script_header(run, "`benchmarks/analysis_overhead.py` (owned by the analysis engineer) prints the "
                            "table below; `ratio` = analyze seconds / plain inference seconds over the same N "
                            "batches; peak RSS read in a fresh process per N (flat across N = streaming "
                            "statistics, no stored activations).")
    lines += ["```", run["stdout"].strip(), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- section 5: latency efficiency

def parse_latency_table(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Rows of a ``gpu_latency.py`` Markdown table and its title line (``# ...``)."""
    title = next((ln.lstrip("# ").strip() for ln in text.splitlines() if ln.startswith("# ")), "")
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 7 or cells[0] in ("model", "---") or cells[0].startswith("-"):
            continue
        try:
            rows.append({"model": cells[0], "variant": cells[1], "macs_g": float(cells[2]),
                         "mac_reduction": float(cells[3].rstrip("x")), "ms": float(cells[4]),
                         "speedup": float(cells[5].rstrip("x")), "verdict": cells[6]})
        except ValueError:
            rows.append({"model": cells[0], "variant": cells[1], "error": cells[6]})
    return title, rows


def _efficiency_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for r in rows:
        if "error" in r:
            out.append([r["model"], r["variant"], "—", "—", "—", r["error"]])
        elif r["variant"] != "original":
            out.append([r["model"], r["variant"], f"{r['mac_reduction']:.2f}x", f"{r['speedup']:.2f}x",
                        f"{r['speedup'] / r['mac_reduction']:.2f}", r["verdict"]])
    return out


def _quality_efficiency(m: dict[str, Any]) -> list[str]:
    rows = []
    base, lat = m["baseline"]["macs"], m["latency"]["models"]
    for r in m["rows"]:
        name = f"{r['method']}@{r['budget']:g}"
        red = base / r["macs"]
        cells = [m["model"], f"{r['budget']:.0%} {r['method']}", f"{red:.2f}x"]
        for b in ("1", "64"):
            sp, sp_min = lat[name][b]["speedup"], lat[name][b]["speedup_min"]
            cells += [_speed(sp), f"{sp / red:.2f}", f"{sp_min / red:.2f}"]
        rows.append(cells)
    header = ["model", "variant", "MAC reduction", "speed-up b=1 (medians)", "efficiency b=1",
              "efficiency b=1 (minima)", "speed-up b=64 (medians)", "efficiency b=64", "efficiency b=64 (minima)"]
    return [md_table(header, rows)]


def efficiency_section(docs: list[dict[str, Any]], run: dict[str, Any] | None, gpu_table: Path) -> str:
    lines = ["## 5. Latency efficiency: measured speed-up / MAC reduction", "",
             "1.00 would mean time falls exactly as fast as MACs; below 1, fewer MACs buy less time; a speed-up "
             "below 1.00x means the compressed model is SLOWER than the original.", ""]
    for q in docs:
        for m in q["models"]:
            lines += [f"### CPU, {m['model']} of section 1 ({_lat_settings(m)}; measured {q['date']})", ""]
            lines += _quality_efficiency(m) + [""]
    if run is not None:
        lines += ["### CPU, torchvision models at reduced resolution (`benchmarks/gpu_latency.py` run on this CPU)",
                  ""]
        lines += _script_header(run, "same variants as the H200 table below (torch-pruning MagnitudePruner 50% "
                                "channels, round_to 8; compress separable T=2 on 3x3 convs with >= 64 channels), "
                                "channels_last, float32, OMP_NUM_THREADS=1 (1 thread), random weights.")
        title, rows = parse_latency_table(run["stdout"])
        lines += [f"Script header: {title}", "", md_table(["model", "variant", "MAC reduction", "speed-up",
                                                          "efficiency", "verdict"], _efficiency_rows(rows)), ""]
    if gpu_table.is_file():
        title, rows = parse_latency_table(gpu_table.read_text())
        lines += ["### GPU: NVIDIA H200 (committed table, measured in an earlier run by `benchmarks/gpu_session.sh`)",
                  "", f"- source: `benchmarks/results/gpu/gpu_latency.md` ({title}); not rerun here (no GPU on "
                  "this machine). Efficiency computed from its columns.", "",
                  md_table(["model", "variant", "MAC reduction", "speed-up", "efficiency", "verdict"],
                           _efficiency_rows(rows)), ""]
        slow = [r for r in rows if "speedup" in r and r["speedup"] < 1 and r["variant"] != "original"]
        if slow:
            lines += ["Where we lose on the H200: " + "; ".join(
                f"{r['model']} {r['variant']} is SLOWER by {1 / r['speedup']:.2f}x despite {r['mac_reduction']:.2f}x "
                "fewer MACs" for r in slow) + ". Depthwise + pointwise pairs are memory-bound on a GPU: fewer MACs, "
                "more kernel launches and bytes moved.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- section 6: zero-shot recovery

# issue 17's bars: (model, fnmatch pattern of the transforms) -> top-1 the best row with no gradient step must reach
ZERO_SHOT_TARGETS: dict[tuple[str, str], float] = {
    ("small_resnet", "prune to 0.50 MACs*"): 0.885,
    ("small_resnet", "prune to 0.25 MACs*"): 0.80,
    ("small_mobilenet_v2", "prune to 0.50 MACs*"): 0.80,
    ("small_resnet", "latency plan of plan_cpu.yaml, batch 64"): 0.80,
    ("small_resnet", "latency plan of plan_cpu.yaml, batch 1"): 0.80,
}


def _layer_errors(details: dict[str, Any]) -> str:
    if not details:
        return "—"
    if not details["fitted"]:
        return f"0/{details['layers']} fitted"
    return (f"{details['mean_error_before']:.3f} -> {details['mean_error_after']:.3f} "
            f"({details['fitted']}/{details['layers']} fitted)")


def _tuned_cell(tuned: dict[str, Any] | None) -> str:
    return "—" if tuned is None else f"{_pct(tuned['top1'])} ({tuned['seconds']:.0f} s)"


def _zero_shot_targets(key: str, rows: list[dict[str, Any]]) -> list[str]:
    """One line per bar of :data:`ZERO_SHOT_TARGETS` for model ``key``: the best matching row, MET or NOT MET."""
    import fnmatch

    lines = []
    for (model, pattern), bar in ZERO_SHOT_TARGETS.items():
        group = [r for r in rows if fnmatch.fnmatchcase(r["transform"], pattern) and r["recovery"] != "none"]
        if model != key:
            continue
        if not group:
            lines.append(f"- `{pattern}` (bar {_pct(bar)}): not measured by this run")
            continue
        best = max(group, key=lambda r: r["top1"])
        lines.append(f"- `{pattern}`: best with no gradient step {_pct(best['top1'])} ({best['transform']}, "
                     f"{best['recovery']}) against the bar of {_pct(bar)}: "
                     f"**{'MET' if best['top1'] >= bar else 'NOT MET'}**")
    return lines


def zero_shot_markdown(doc: dict[str, Any], *, level: int = 1) -> str:
    """Every model's zero-shot table of ``benchmarks/results/zero_shot.json`` (``benchmarks/zero_shot.py``)."""
    h = "#" * level
    lines = [f"{h} Zero-shot recovery after pruning or rewriting: BN re-calibration vs least-squares "
             "reconstruction", "",
             "Top-1 with no gradient step after the transform, then (last columns) after a distillation fine-tune "
             "of that model for the stated epochs, each its own run; seconds: the recovery's own (the fine-tune's "
             "in its cell). Layer errors: mean relative output error of the fitted layers on the sampled "
             "calibration rows, before -> after their fit.", ""]
    for key, m in doc["models"].items():
        epochs = [str(e) for e in m["finetune"]["epochs"]]
        lines += [f"{h}# {key}: baseline top-1 {_pct(m['baseline_top1'])} ({m['baseline']})", "",
                  *context_lines(m["context"], seconds=m.get("seconds")),
                  f"- data: Fashion-MNIST, top-1 on {m['test_images']} test images; {m['calib_images']} calibration "
                  f"images (train split, held in); fine-tunes on {m['finetune']['train_images']:,} training images, "
                  f"lr {m['finetune']['lr']}; {m['threads']} thread(s)", ""]
        plans = [r for r in m["rows"] if r["recovery"] == "none" and "verdict" in r["facts"]]
        lines += [f"- {r['transform']}: {r['facts']['verdict']}" for r in plans]
        lines += ["", *_zero_shot_targets(key, m["rows"]), ""]
        header = ["transform", "recovery", "top-1", "MACs after", "seconds", "layer error before -> after",
                  *(f"fine-tuned {e} epoch{'s' if e != '1' else ''}" for e in epochs)]
        rows = [[r["transform"], r["recovery"], _pct(r["top1"]), f"{r['macs']:.3f}",
                 f"{r['seconds']:.1f}" if r["seconds"] else "—", _layer_errors(r["reconstruction"]),
                 *(_tuned_cell(r["finetune"].get(e)) for e in epochs)] for r in m["rows"]]
        lines += [md_table(header, rows), ""]
        if m["unchanged"]:
            lines += [f"Not in the table (the transform changed no layer): {'; '.join(m['unchanged'])}.", ""]
        lines += [*m["notes"], ""] if m["notes"] else []
    return "\n".join(lines)


def zero_shot_section(doc: dict[str, Any] | None, run: dict[str, Any] | None) -> str:
    """Section 6 of RESULTS.md from the stored rows (each model names the run that measured it)."""
    lines = ["## 6. Zero-shot recovery: accuracy with no gradient step after pruning, plans and rewrites "
             "(issue 17)", "", *_failed("The zero-shot benchmark", run)]
    if doc is None:
        return "\n".join(lines + ["Not measured yet: `python benchmarks/zero_shot.py`.", ""])
    body = zero_shot_markdown(doc, level=2).split("\n", 2)[2]  # this section's own title replaces the first line
    return "\n".join(lines + [body])
