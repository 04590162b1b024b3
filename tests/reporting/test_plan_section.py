"""The report shows each plan step: verdict, measured rounds, notes and one row per change."""
from __future__ import annotations

import copy

import torch

from compress.models import small_resnet
from compress.planning import PlanOptions, plan
from compress.reporting.markdown import render_markdown


def minimal_report(steps: list[dict]) -> dict:
    metrics = {"params": 10, "macs": 100, "top1": 0.9, "top5": 1.0}
    return {"baseline": metrics, "final": dict(metrics, agreement=1.0), "data": {"source": "synthetic", "sizes": {}},
            "latency": [], "layers": [], "steps": steps, "notes": [], "plots": [],
            "environment": {"python": "3", "torch": "t", "torchvision": "v", "torch_pruning": "p", "cpu": "c",
                            "gpu": None, "threads": 1, "device": "cpu", "seed": 0}}


def test_plan_step_is_rendered_with_its_choices():
    torch.manual_seed(0)
    net = small_resnet(widths=(16, 16, 32), blocks=(2, 1, 1)).eval()
    x = torch.randn(1, 1, 16, 16)
    batches = [torch.randn(4, 1, 16, 16)]
    p = plan(copy.deepcopy(net), x, PlanOptions(target={"macs": 0.7}, forms=("prune", "drop"), calib_batches=1,
             batch=2, measure_latency=False), calib=batches, verbose=False)
    step = {"name": "plan", "kind": "plan", "metrics": {}, "details": {**p.as_dict(), "summary": p.summary_lines()}}
    text = render_markdown(minimal_report([step]))
    section = text[text.index("## Plan (plan)"):]
    assert p.choices
    assert f"- {p.verdict}" in section
    assert "| form | layer | change | predicted saving | accuracy cost |" in section
    for c in p.choices:
        row = next(line for line in section.splitlines() if line.startswith(f"| {c.form} | {c.layer} |"))
        change = (f"{c.width_from} -> {c.width_to} channels" if c.form == "prune"
                  else f"block replaced by identity ({len(c.members)} convs)")
        assert change in row and "macs" in row
    assert f"round 1: predicted {p.iterations[0].predicted_ratio:.3f}x" in section


def test_reports_without_plans_have_no_plan_section():
    text = render_markdown(minimal_report([{"name": "prune", "kind": "prune", "metrics": {}, "details": {}}]))
    assert "## Plan" not in text
