"""Coverage: does every torchvision classification model survive analyze, prune and each rewrite kind?

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (random weights, 10 classes),
and with ``--timm`` one timm convnet per family (:func:`timm_picks`, a seeded rule), a fresh subprocess with a
time limit (a hang or crash costs one row, not the sweep):

1. ``analyze`` on one batch of 2 images (64 px; 224 px where the model needs it: ViT / Swin / MaxViT);
2. ``prune`` a copy at channel ratio 0.3 (l2 importance, with the analysis), then a forward check; the row
   keeps the MACs reached and the groups the guard skipped (torch-pruning failed on them);
3. ``onnx``: the pruned copy exported to ONNX (torch's dynamo exporter, ``optimize=False``), run with
   onnxruntime, compared with eager PyTorch;
4. each rewrite kind on its own fresh copy — grouped (2 groups), separable (T=2), shuffle (2 groups), dilated
   (default dilation, only K >= 5 convs are eligible), bottleneck (rank ratio 0.5) — then a forward check
   (``--layers N``: only the N smallest eligible convs of each kind; ``--no-rewrites``: none);
5. ``tp_alone``: torch-pruning 1.6 by itself (``BasePruner``, L2 magnitude, ratio 0.3, the classifier
   ignored), then a forward check: what compress' guard adds. Last, since tp may hang (the child's timeout).

A forward check passes when the output has shape ``(2, 10)`` and is finite. A kind with no eligible conv is
``n/a``. Models estimated to need more than ``--memory-gib`` are skipped and named.

    python benchmarks/coverage.py --quick        # 11 representative models
    python benchmarks/coverage.py                # every torchvision classification model
    python benchmarks/coverage.py --models resnet18 timm:mixnet_s --no-rewrites --out coverage_tp.json

Writes ``benchmarks/results/coverage.json`` (``--out``) and ``coverage.md`` next to it (analyze, prune, ONNX,
torch-pruning alone), and prints one JSON line (the same data) last.
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, command_line, context, ensure_path, fmt, run_isolated  # noqa: E402

ensure_path()
from compress.transforms.rewrite.registry import config_for_kind, kinds  # noqa: E402

__all__ = ["merge_rows", "totals", "MAX_MACS", "STAGE_LIMIT_S", "QUICK", "KINDS", "TIMM_SEED", "timm_picks", "build",
           "model_kwargs", "input_size", "estimated_gib",
           "check_model", "markdown", "main"]

QUICK = ["resnet18", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "regnet_x_400mf", "shufflenet_v2_x0_5",
         "squeezenet1_0", "densenet121", "convnext_tiny", "googlenet", "vgg11_bn"]
# Every registered rewrite kind, with the options its config declares as representative.
KINDS: dict[str, dict[str, Any]] = {kind: config_for_kind(kind).example_options for kind in kinds()}
FIXED_224 = ("vit_", "maxvit_", "swin_")  # position embeddings / window sizes tied to 224 px
PEAK_FACTOR = 6  # original + pruned/rewritten copy + tp's graph and counting copy, in units of fp32 params
RATIO = 0.3
MIN_CHANNELS = 16  # the rewrite applier's default
TRIES = 3  # --layers N: batches of the N smallest eligible convs tried until one is rewritten
TIMM = "timm:"  # model-name prefix: a timm model instead of a torchvision one
TIMM_SEED = 19
# timm families that are not convnets (attention / MLP / hybrids), left out of --timm by name prefix
NOT_CONVNETS = ("beit", "botnet", "cait", "coat", "convit", "convmixer", "crossvit", "davit", "deit", "efficientformer",
                "efficientvit", "eva", "fastvit", "flexivit", "focalnet", "gcvit", "halonet", "hgnet", "hiera",
                "levit", "maxvit", "maxxvit", "mixer", "mobilevit", "mvit", "nest", "pit", "pvt", "resmlp",
                "sebotnet", "sequencer", "swin", "tiny_vit", "tnt", "twins", "vit", "volo", "vovnet", "xcit", "gmlp",
                "lambda", "coatnet", "lamhalo", "haloregnet", "cvt", "samvit", "aimv2", "naflex", "mambaout",
                "rdnet", "starnet", "fasternet", "shvit", "csatv2", "test_", "caformer", "convformer", "deepseek",
                "gemma", "qwen", "efficientvim", "gmixer", "iformer", "lowformer", "nextvit", "poolformer",
                "swiftformer", "visformer", "sam2", "halo2botnet", "sehalonet")
ONNX_RTOL = 1e-3  # relative max error of onnxruntime vs eager accepted as a match (the onnx stage passes)
NUMERICS_RTOL = 1e-4  # issue 16: the numerics column says whether onnxruntime matched eager this closely


def model_kwargs(name: str) -> dict[str, Any]:
    """Builder arguments: random weights, 10 classes, no auxiliary heads."""
    extra = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    return {"weights": None, "num_classes": 10, **extra}


def timm_family(name: str) -> str:
    """A timm model's family: its name up to the first digit or ``_`` (``mixnet_s`` -> ``mixnet``)."""
    out = []
    for ch in name:
        if ch.isdigit() or ch == "_":
            break
        out.append(ch)
    return "".join(out) or name


def timm_picks(seed: int = TIMM_SEED) -> list[str]:
    """One timm convnet per family: ``random.Random(seed).choice`` over each family's sorted names.

    Families in :data:`NOT_CONVNETS` (by prefix) are left out; names come back prefixed with ``timm:``.
    """
    import timm

    families: dict[str, list[str]] = {}
    for name in timm.list_models():
        if not name.startswith(NOT_CONVNETS):
            families.setdefault(timm_family(name), []).append(name)
    rng = random.Random(seed)
    return [TIMM + rng.choice(sorted(names)) for _, names in sorted(families.items())]


def _no_zero_layers(model: nn.Module) -> nn.Module:
    """Give every conv / linear whose weight its initialiser left all zero (torchvision's ViT head) small random
    weights: a zero layer makes the output constant, and every numerics check against it vacuous. Models on the
    meta device (:func:`input_size`'s shape check) hold no values and are left as they are."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not m.weight.is_meta and not m.weight.any():
                m.weight.copy_(0.02 * torch.randn(m.weight.shape, generator=generator))
    return model


def build(name: str) -> nn.Module:
    """The model for a row name (``timm:`` prefix: timm, else torchvision), random weights (none left all zero:
    :func:`_no_zero_layers`), 10 classes, eval."""
    if name.startswith(TIMM):
        import timm

        return _no_zero_layers(timm.create_model(name[len(TIMM):], pretrained=False, num_classes=10).eval())
    import torchvision

    return _no_zero_layers(torchvision.models.get_model(name, **model_kwargs(name)).eval())


def input_size(name: str, default: int = 64) -> int:
    """Input side in px: 224 where the architecture fixes it, at least 96 for Inception v3; for a timm model
    that does not run at ``default`` px (a shape check, tried on the meta device), its pretrained config's."""
    if name.startswith(FIXED_224):
        return 224
    if name.startswith(TIMM):
        try:
            with torch.device("meta"):
                model = build(name)
                model(torch.empty(1, 3, default, default))
        except Exception:  # e.g. BAT / bottleneck-attention blocks assert their feature-map size
            cfg = getattr(build(name), "pretrained_cfg", None) or {}
            return int(cfg.get("input_size", (3, 224, 224))[-1])
    return max(default, 96) if name == "inception_v3" else default


def estimated_gib(name: str) -> float:
    """Peak memory estimate from the parameter count (counted on the meta device when the builder allows)."""
    try:
        with torch.device("meta"):
            model = build(name)
    except (NotImplementedError, RuntimeError):  # builders that compute widths from tensor data
        model = build(name)
    return PEAK_FACTOR * 4 * sum(p.numel() for p in model.parameters()) / 2**30


def _forward_ok(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        out = model.eval()(x)
    if tuple(out.shape) != (x.shape[0], 10):
        raise RuntimeError(f"output shape {tuple(out.shape)}, expected ({x.shape[0]}, 10)")
    if not torch.isfinite(out).all():
        raise RuntimeError("non-finite output")


def _attempt(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        row = {"status": "ok", **fn()}
    except Exception as err:  # noqa: BLE001 - every failure is a table cell, the sweep goes on
        first = str(err).splitlines()[0][:160] if str(err) else ""
        row = {"status": "error", "error": f"{type(err).__name__}: {first}", "trace": traceback.format_exc(limit=-4)}
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def _prune(model: nn.Module, x: torch.Tensor, analysis: Any, holder: dict[str, Any]) -> dict[str, Any]:
    from compress.transforms.prune.pruner import prune

    twin = copy.deepcopy(model)
    result = prune(twin, x[:1], ratio=RATIO, importance="l2", analysis=analysis)
    _forward_ok(twin, x)
    holder["pruned"] = twin
    mib = result.peak_increase_bytes / 2**20 if result.peak_increase_bytes is not None else None
    return {"macs_before": result.macs_before, "macs_after": result.macs_after, "dead_channels_removed":
            result.dead.channels_removed, "skipped_groups": len(result.skipped),
            "skipped": [f"{s.root}: {s.reason[:120]}" for s in result.skipped[:3]],
            "prune_seconds": result.seconds, "peak_increase_mib": round(mib, 1) if mib is not None else None}


def _onnx(model: nn.Module | None, x: torch.Tensor) -> dict[str, Any]:
    """Export ``model`` (the pruned copy) to ONNX, run it with onnxruntime and compare with eager PyTorch."""
    import onnxruntime

    if model is None:
        raise RuntimeError("no pruned model (the prune stage failed)")
    buffer = io.BytesIO()
    # the dynamo exporter without onnxscript's graph optimiser, which onnxruntime repeats at session creation:
    # it took 60 of Swin-V2-T's 84 export seconds (torch 2.14, loaded 2-core machine)
    torch.onnx.export(model, (x[:1],), buffer, dynamo=True, optimize=False)
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x[:1].numpy()})[0])
    with torch.no_grad():
        want = model(x[:1])
    error = float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)
    if not error <= ONNX_RTOL:
        raise RuntimeError(f"onnxruntime differs from eager: relative max error {error:.2e} > {ONNX_RTOL:g}")
    return {"bytes": len(buffer.getvalue()), "relative_error": float(f"{error:.2e}")}


def _tp_alone(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """torch-pruning by itself at the same ratio (the classifier, any layer with 10 outputs, ignored)."""
    import torch_pruning as tp

    twin = copy.deepcopy(model)
    heads = [m for m in twin.modules() if getattr(m, "out_features", getattr(m, "out_channels", 0)) == 10]
    macs0, _ = tp.utils.count_ops_and_params(twin, x[:1])
    pruner = tp.pruner.BasePruner(twin, x[:1], importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=RATIO, ignored_layers=heads)
    pruner.step()
    _forward_ok(twin, x)
    macs1, _ = tp.utils.count_ops_and_params(twin, x[:1])
    return {"macs_fraction": round(macs1 / macs0, 4)}


def _eligible(model: nn.Module, kind: str) -> list[str]:
    """Names of plain convs the kind can rewrite (the applier's own rules, at its default ``min_channels``)."""
    rules = config_for_kind(kind)
    return [n for n, m in model.named_modules() if type(m) is nn.Conv2d and min(m.in_channels, m.out_channels)
            >= MIN_CHANNELS and rules.eligibility(m) is None]


def _batches(model: nn.Module, names: list[str], limit: int | None) -> list[list[str] | None]:
    """Candidate layer lists to try, smallest convs first: ``[None]`` (all) without a limit, else up to
    :data:`TRIES` lists of ``limit`` names each, in model order.

    Small layers keep a quick sweep quick (the shuffle rewrite's CP decomposition grows fast with width) while
    still exercising every kind's planning, module swap, permutation folding and forward pass on the model. The
    smallest layers are the likeliest to be declined (a rewrite that would grow them is skipped), hence the
    next batch when a whole batch is declined.
    """
    if limit is None or len(names) <= limit:
        return [None]
    order = sorted(names, key=lambda n: (model.get_submodule(n).weight.numel(), names.index(n)))
    chunks = [set(order[i:i + limit]) for i in range(0, min(len(order), TRIES * limit), limit)]
    return [[n for n in names if n in chunk] for chunk in chunks]


def _rewrite(model: nn.Module, x: torch.Tensor, kind: str, analysis: Any, limit: int | None) -> dict[str, Any]:
    from compress.transforms.rewrite.apply import rewrite

    declined: list[str] = []
    for picked in _batches(model, _eligible(model, kind), limit):
        twin = copy.deepcopy(model)
        records = rewrite(twin, kind, layers=picked, example_inputs=x[:1], analysis=analysis,
                          min_channels=MIN_CHANNELS, **KINDS[kind])
        done = [r for r in records if r.skipped is None]
        declined += sorted({r.skipped for r in records if r.skipped})
        if done:
            _forward_ok(twin, x)
            errs = [r.output_error for r in done if r.output_error is not None]
            return {"rewritten": len(done), "skipped": len(records) - len(done),
                    "layers": "all" if picked is None else len(picked), "declined": declined[:3],
                    "max_layer_output_error": round(max(errs), 4) if errs else None}
    return {"rewritten": 0, "declined": declined[:3]}


def check_model(name: str, size: int, *, limit: int | None = None, rewrites: bool = True) -> dict[str, Any]:
    """Analyze, prune, export and rewrite one model in this process, then prune it with torch-pruning alone; one
    row of results.

    Each stage's result is also printed as a JSON line as soon as it is known, so a parent that kills a hung
    child still has the stages that finished. ``limit``: rewrite only ``limit`` eligible convs per kind, the
    smallest (see :func:`_batches`); ``rewrites=False``: no rewrite stages.
    """
    from compress.analysis import analyze

    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(2, 3, size, size)
    row: dict[str, Any] = {"name": name, "input": size}
    holder: dict[str, Any] = {}

    def run_analysis() -> dict[str, Any]:
        holder["analysis"] = analyze(model, [x], max_batches=1, verbose=False)
        return {"layers": len(holder["analysis"].layers)}

    stages: dict[str, Callable[[], dict[str, Any]]] = {
        "analyze": run_analysis, "prune": lambda: _prune(model, x, holder.get("analysis"), holder),
        "onnx": lambda: _onnx(holder.pop("pruned", None), x),
        **{kind: (lambda kind=kind: _rewrite(model, x, kind, holder.get("analysis"), limit))
           for kind in (KINDS if rewrites else ())},
        "tp_alone": lambda: _tp_alone(model, x)}
    for stage, fn in stages.items():
        row[stage] = _attempt(fn)
        print(json.dumps({"partial": stage, **row}), flush=True)
    return row


def _sweep(names: list[str], args: argparse.Namespace,
           saved: Callable[[list[dict[str, Any]]], None] = lambda rows: None) -> list[dict[str, Any]]:
    """One row per model, each checked in its own subprocess; ``saved(rows so far)`` after each model (a long
    sweep that is stopped keeps what it measured)."""
    from tqdm import tqdm

    rows: list[dict[str, Any]] = []
    for name in tqdm(names, desc="coverage", leave=False, disable=not args.verbose):
        saved(rows)
        need = estimated_gib(name)
        if need > args.memory_gib:
            rows.append({"name": name, "status": f"skipped: needs ~{need:.0f} GiB > {args.memory_gib:g} GiB"})
            continue
        size = input_size(name, args.size)
        child = [__file__, "--child", name, "--size", str(size), "--threads", str(args.threads)]
        child += (["--layers", str(args.layers)] if args.layers else []) + ([] if args.rewrites else ["--no-rewrites"])
        done = run_isolated(child, timeout=args.timeout)
        if done.data is not None:  # complete row, or the stages finished before a timeout / crash
            row = {k: v for k, v in done.data.items() if k != "partial"}
            for stage in _stages(args.rewrites):
                row.setdefault(stage, {"status": done.status if done.status != "ok" else "missing"})
            rows.append({**row, "status": "ran" if done.status == "ok" else done.status,
                         "seconds": round(done.seconds, 1)})
        else:
            rows.append({"name": name, "input": size, "status": f"{done.status}: {done.stderr.splitlines()[-1:]}",
                         "seconds": round(done.seconds, 1)})
    return rows


def _stages(rewrites: bool) -> tuple[str, ...]:
    return ("analyze", "prune", "onnx", *(KINDS if rewrites else ()), "tp_alone")


def _md_cell(stage: dict[str, Any] | None) -> str:
    if not stage:
        return "—"
    if stage.get("status") != "ok":
        return f"**{stage.get('error', stage.get('status'))}**".replace("|", "/")
    if "macs_before" in stage:
        skipped = stage.get("skipped_groups")
        return f"ok ({stage['macs_after'] / stage['macs_before']:.2f} MACs, {skipped} groups skipped)"
    if "macs_fraction" in stage:
        return f"ok ({stage['macs_fraction']:.2f} MACs)"
    if "relative_error" in stage:
        return f"ok (err {stage['relative_error']:.0e})"
    if "rewritten" in stage:  # a forward check ran when something was rewritten
        if stage["rewritten"]:
            return f"ok ({stage['rewritten']})"
        return "declined" if stage.get("declined") else "n/a"
    return "ok"


def _numerics_cell(stage: dict[str, Any] | None) -> str:
    """Whether onnxruntime matched eager PyTorch within :data:`NUMERICS_RTOL` (relative max error)."""
    if not stage or stage.get("status") != "ok" or "relative_error" not in stage:
        return "—"
    err = stage["relative_error"]
    return f"yes ({err:.0e})" if err <= NUMERICS_RTOL else f"**NO ({err:.0e})**"


MAX_MACS = 0.8  # issue 19: at ratio 0.3 a model should reach at most this fraction of its MACs, or say why not


STAGE_LIMIT_S = 120.0  # issue 19: no model takes longer than this in any stage


def _why(prune: dict[str, Any]) -> str:
    """Why a pruned model kept more than :data:`MAX_MACS` of its MACs: the groups left unpruned and the first
    reason (the rest of the model pruned at the ratio)."""
    skipped = prune.get("skipped_groups") or 0
    if not skipped:
        return "no group was skipped: the groups torch-pruning builds cover only this share of the MACs"
    first = (prune.get("skipped") or ["?"])[0]
    return f"{skipped} group{'s' if skipped != 1 else ''} left unpruned, the first {first[:150]}"


def _passed(stage: dict[str, Any] | None) -> bool:
    return bool(stage) and stage.get("status") in ("ok", "n/a")


def totals(out: dict[str, Any]) -> list[str]:
    """Markdown lines: per stage, how many of the models that ran passed; MACs reached; compress vs tp alone."""
    ran = [r for r in out["rows"] if not r.get("status", "").startswith("skipped")]
    skipped = [r["name"] for r in out["rows"] if r.get("status", "").startswith("skipped")]
    stages = [s for s in ("analyze", "prune", "onnx", *out.get("kinds", {}), "tp_alone") if any(s in r for r in ran)]
    lines = [f"- models: {len(out['rows'])}; ran {len(ran)}; skipped for memory {len(skipped)}"
             + (f" ({', '.join(skipped)})" if skipped else "")]
    for s in stages:
        ok = [r for r in ran if _passed(r.get(s))]
        lines.append(f"- {s}: {len(ok)}/{len(ran)} passed" + ("" if len(ok) == len(ran) else
                     f"; failed: {', '.join(r['name'] for r in ran if not _passed(r.get(s)))}"))
    exported = [r for r in ran if _passed(r.get("onnx"))]
    close = [r["name"] for r in exported if r["onnx"].get("relative_error", 1.0) <= NUMERICS_RTOL]
    lines.append(f"- onnxruntime within {NUMERICS_RTOL:g} relative of eager: {len(close)}/{len(exported)} exported"
                 + ("" if len(close) == len(exported) else "; above it: " + ", ".join(
                     f"{r['name']} ({r['onnx']['relative_error']:.0e})" for r in exported if r["name"] not in close)))
    fractions = {r["name"]: r["prune"]["macs_after"] / r["prune"]["macs_before"] for r in ran
                 if (r.get("prune") or {}).get("status") == "ok" and r["prune"].get("macs_before")}
    reached = [n for n, f in fractions.items() if f <= MAX_MACS]
    lines.append(f"- prune 0.3 reaches <= {MAX_MACS} of the MACs: {len(reached)}/{len(ran)}"
                 + ("; above it, with why:" if len(reached) < len(fractions) else ""))
    rows = {r["name"]: r for r in ran}
    lines += [f"  - {n} ({f:.2f}): {_why(rows[n]['prune'])}" for n, f in fractions.items() if f > MAX_MACS]
    slow = [(stage, r["name"], r[stage]["seconds"]) for r in ran for stage in stages
            if stage != "tp_alone" and isinstance(r.get(stage), dict) and r[stage].get("seconds") is not None]
    if slow:
        stage, name, worst = max(slow, key=lambda item: item[2])
        over = [f"{n} {st} ({sec:.0f} s)" for st, n, sec in slow if sec > STAGE_LIMIT_S]
        lines.append(f"- slowest compress stage: {worst:.0f} s ({name}, {stage}); over {STAGE_LIMIT_S:g} s: "
                     + (", ".join(over) if over else "none") + " (tp alone not counted: it has no budget)")
    beyond = [r["name"] for r in ran if (r.get("prune") or {}).get("status") == "ok" and not _passed(r.get("tp_alone"))]
    lines.append(f"- compress prunes where torch-pruning alone fails: {len(beyond)}"
                 + (f" ({', '.join(beyond)})" if beyond else ""))
    return lines


def markdown(out: dict[str, Any]) -> str:
    """The coverage table (analyze, prune, ONNX, torch-pruning alone) and every failure, as Markdown."""
    from common import context_lines, md_table

    lines = ["# Coverage: analyze, guarded prune, ONNX export, torch-pruning alone", ""]
    lines += context_lines(out, seconds=out.get("seconds"))
    lines += [f"- prune at channel ratio {out['ratio']} (l2); `n groups skipped` = groups torch-pruning failed on "
              "(rolled back by compress' guard); onnx export = the pruned model exported and run in onnxruntime "
              f"(relative max error vs eager at most {ONNX_RTOL:g}); ORT <= {NUMERICS_RTOL:g} = that error within "
              f"{NUMERICS_RTOL:g}; "
              "tp alone = torch-pruning's BasePruner at the same ratio; each model in its own subprocess "
              f"(timeout {out['timeout_s']:g} s).", ""]
    if out.get("partial"):
        lines += [f"- sweep state: {out['partial']} (models not listed were not reached)", ""]
    lines += ["Totals:", "", *totals(out), ""]
    kinds = [k for k in out.get("kinds", {}) if any(k in r for r in out["rows"])]
    rows, notes = [], []
    for r in out["rows"]:
        if r.get("status", "").startswith("skipped"):
            notes.append(f"- {r['name']}: {r['status']}")
            continue
        rows.append([r["name"], r.get("input", ""), *(_md_cell(r.get(s)) for s in ("analyze", "prune", "onnx")),
                     _numerics_cell(r.get("onnx")), *(_md_cell(r.get(s)) for s in (*kinds, "tp_alone")),
                     fmt(r.get("seconds"), ".0f")])
        for root_reason in (r.get("prune") or {}).get("skipped", []):
            notes.append(f"- {r['name']} / skipped group {root_reason}")
    lines += [md_table(["model", "px", "analyze", "prune 0.3", "onnx export", f"ORT <= {NUMERICS_RTOL:g}", *kinds,
                        "tp alone", "s"], rows), ""]
    return "\n".join(lines + (["Notes (first skipped groups per model, skipped models):", "", *notes, ""] if notes
                              else []))


def merge_rows(path: Path, rerun: dict[str, Any]) -> dict[str, Any]:
    """Replace ``path``'s rows of the models in ``rerun`` (append new ones); its command records the rerun."""
    from compress.io import atomic_write_json, atomic_write_text

    sweep = json.loads(path.read_text())
    fresh = {r["name"]: r for r in rerun["rows"]}
    rows = [fresh.pop(r["name"], r) for r in sweep["rows"]]
    sweep["rows"] = rows + list(fresh.values())
    sweep["command"] += f" ; rows rerun {rerun['date']}: {rerun['command']}"
    atomic_write_json(path, sweep)
    atomic_write_text(path.with_name("coverage.md"), markdown(sweep))
    return sweep


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    p.add_argument("--models", nargs="+", help="model names, timm ones prefixed 'timm:' (overrides --quick)")
    p.add_argument("--timm", action="store_true", help=f"add one timm convnet per family (seed {TIMM_SEED})")
    p.add_argument("--no-rewrites", dest="rewrites", action="store_false", help="skip the rewrite stages")
    p.add_argument("--size", type=int, default=64, help="input px (224 for ViT/Swin/MaxViT regardless)")
    p.add_argument("--memory-gib", type=float, default=24.0, help="skip models estimated to need more")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per model before it counts as hung")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each model's subprocess")
    p.add_argument("--layers", type=int, default=None,
                   help="rewrite only this many eligible convs per kind, the smallest (default: all; --quick: 2)")
    p.add_argument("--out", default=str(RESULTS / "coverage.json"))
    p.add_argument("--merge-into", metavar="JSON",
                   help="also put these rows into that earlier sweep (replacing its rows of the same models; its "
                        "command line then names this rerun) and rewrite its coverage.md")
    p.add_argument("--render", metavar="JSON", help="only rewrite the coverage.md next to this sweep's JSON")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: check one model, print its JSON row
    args = p.parse_args(argv)
    if args.quick:
        args.layers = args.layers or 2
        args.timeout = min(args.timeout, 120.0)
    return args


def main(argv: list[str] | None = None) -> int:
    import torchvision

    from compress.io import atomic_write_json

    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    if args.child:
        torch.set_num_threads(args.threads)
        print(json.dumps(check_model(args.child, args.size, limit=args.layers, rewrites=args.rewrites)))
        return 0
    if args.render:
        Path(args.render).with_name("coverage.md").write_text(markdown(json.loads(Path(args.render).read_text())))
        return 0
    names = args.models or (QUICK if args.quick else torchvision.models.list_models(module=torchvision.models))
    names = list(names) + (timm_picks() if args.timm else [])
    out = {"section": "coverage", "quick": args.quick and not args.models,
           **context(command_line("benchmarks/coverage.py", argv)), "ratio": RATIO, "kinds": KINDS,
           "timeout_s": args.timeout, "memory_gib": args.memory_gib, "layers_per_kind": args.layers or "all"}
    began = time.perf_counter()
    def saved(rows: list[dict[str, Any]]) -> None:
        atomic_write_json(Path(args.out), {**out, "rows": rows, "partial": f"{len(rows)} of {len(names)} models"})

    out["rows"] = _sweep(names, args, saved)
    out["seconds"] = round(time.perf_counter() - began, 1)
    atomic_write_json(Path(args.out), out)
    Path(args.out).with_name("coverage.md").write_text(markdown(out))
    if args.merge_into:
        merge_rows(Path(args.merge_into), out)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
