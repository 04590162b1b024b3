"""A rewrite kind defined only in this file works everywhere a kind is read: ``rewrite()``, a recipe, ``plan()``.

``center_tap`` replaces an odd KxK conv by a 1x1 conv made of its centre tap (times ``scale``), with the padding
reduced so the output grid is unchanged. It is exact when the dense kernel is zero off the centre, which the
tests use to check numerics to float tolerance. Nothing outside this file knows the kind: it is one config, one
options class and one handler, registered by a fixture and unregistered afterwards.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from compress.config import check, parse
from compress.errors import CompressError
from compress.planning import PlanOptions, apply_plan, plan
from compress.recipe.schema import load_recipe
from compress.run import main
from compress.transforms import rewrite
from compress.transforms.rewrite.registry import (KindOptions, RewriteConfig, conv_problem, kinds, planner_kinds,
                                                  register_handler, unregister)
from compress.transforms.rewrite.step import RewriteStep

TOL = 1e-5  # float32 relative tolerance of an exact rewrite


@dataclasses.dataclass(frozen=True)
class CenterTapOptions(KindOptions):
    scale: float = 1.0

    def validate(self) -> None:
        check(isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool) and self.scale > 0,
              "scale", "a number > 0", self.scale)


@dataclasses.dataclass(frozen=True)
class CenterTapConfig(RewriteConfig):
    kind = "center_tap"
    Options = CenterTapOptions
    planner_values = (1,)
    example_options = {"scale": 1.0}

    scale: float = 1.0

    @classmethod
    def eligibility(cls, conv: nn.Conv2d) -> str | None:
        reason = conv_problem(conv)
        if reason is None:
            (kh, kw), (ph, pw), (dh, dw) = conv.kernel_size, conv.padding, conv.dilation
            if kh != kw or kh % 2 == 0 or kh < 3:
                reason = f"kernel {kh}x{kw} is not square, odd and at least 3x3"
            elif ph < dh * (kh // 2) or pw < dw * (kw // 2):
                reason = "padding too small to keep the output grid"
        return reason

    @classmethod
    def form_options(cls, value: int | float, in_channels: int) -> dict:
        return {}

    def effective_weight(self, conv: nn.Conv2d, new: nn.Module) -> torch.Tensor:
        dense = torch.zeros_like(conv.weight)
        c = conv.kernel_size[0] // 2
        dense[:, :, c, c] = new.weight.detach()[:, :, 0, 0]
        return dense


def _center_tap(conv: nn.Conv2d, config: CenterTapConfig) -> nn.Conv2d:
    c = conv.kernel_size[0] // 2
    new = nn.Conv2d(conv.in_channels, conv.out_channels, 1, stride=conv.stride, groups=conv.groups,
                    padding=tuple(p - d * c for p, d in zip(conv.padding, conv.dilation)),
                    bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, :, c:c + 1, c:c + 1] * config.scale)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


@pytest.fixture
def center_tap():
    register_handler(CenterTapConfig)(_center_tap)
    yield CenterTapConfig
    unregister(CenterTapConfig)
    assert "center_tap" not in kinds()


def _center_only(net: nn.Module) -> nn.Module:
    """Zero every KxK conv off its centre tap, so ``center_tap`` can represent the net exactly."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1:
                c = m.kernel_size[0] // 2
                keep = torch.zeros_like(m.weight)
                keep[:, :, c, c] = 1
                m.weight.mul_(keep)
    return net


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, stride=2),
                         nn.ReLU(), nn.Conv2d(32, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(32, 10)).eval()


def test_registered_kind_is_listed_and_parsed(center_tap):
    assert "center_tap" in kinds() and "center_tap" in planner_kinds()
    assert center_tap.option_names() == ("scale",)
    assert center_tap.parse_options({"scale": 2}).scale == 2
    with pytest.raises(CompressError, match="rewrite kind 'center_tap': scale: expected a number > 0"):
        center_tap.parse_options({"scale": -1})
    with pytest.raises(CompressError, match="center_tap"):
        center_tap.parse_options({"groups": 2})


def test_rewrite_is_exact_on_a_centre_only_net(center_tap):
    net = _center_only(_net())
    reference = copy.deepcopy(net)
    x = torch.randn(4, 3, 16, 16)
    records = rewrite(net, "center_tap", example_inputs=x[:1], min_channels=3)
    done = {r.layer for r in records if r.skipped is None}
    assert done == {"0", "2", "4"}
    assert all(isinstance(net[int(n)], nn.Conv2d) and net[int(n)].kernel_size == (1, 1) for n in done)
    assert all(r.macs_after < r.macs_before for r in records)
    assert all(r.weight_error == pytest.approx(0, abs=1e-6) for r in records)
    with torch.no_grad():
        want, got = reference(x), net(x)
    assert (got - want).norm() / want.norm() < TOL


def test_rewrite_error_is_the_dropped_taps(center_tap):
    net = _net()
    conv = copy.deepcopy(net[2])
    (record,) = rewrite(net, "center_tap", layers=["2"], example_inputs=torch.randn(1, 3, 16, 16))
    kept = conv.weight[:, :, 1, 1].norm()
    assert record.weight_error == pytest.approx(((conv.weight.norm() ** 2 - kept ** 2).sqrt()
                                                 / conv.weight.norm()).item(), rel=1e-4)


def test_recipe_step_parses_the_kind_options(center_tap):
    step = parse(RewriteStep, {"kind": "center_tap", "scale": 0.5, "layers": ["4"]})
    assert step.kind_options().scale == 0.5 and step.layers == ("4",)
    with pytest.raises(Exception, match="scale"):
        parse(RewriteStep, {"kind": "center_tap", "scale": "big"})
    with pytest.raises(Exception, match="center_tap"):
        parse(RewriteStep, {"kind": "center_tap", "T": 2})


def test_recipe_runs_the_kind_end_to_end(center_tap, tmp_path, isolated_cache):
    from compress.models import build_model

    model = {"name": "compress:small_resnet", "kwargs": {"num_classes": 4, "in_channels": 3, "widths": [8, 16],
                                                         "blocks": [1, 1]}}
    torch.manual_seed(0)
    ckpt = tmp_path / "weights.pt"
    torch.save(_center_only(build_model(model)).state_dict(), ckpt)
    data = {"seed": 0, "model": {**model, "checkpoint": str(ckpt)},
            "data": {"source": "synthetic", "image_size": 12, "num_classes": 4, "synthetic_size": 64,
                     "val_size": 0, "calib_size": 32, "batch_size": 16},
            "steps": [{"rewrite": {"kind": "center_tap", "scale": 1.0, "min_channels": 8}},
                      {"report": {"latency": False}}]}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data, sort_keys=False))
    recipe = str(recipe)
    load_recipe(recipe)  # parses with the plug-in kind
    out = tmp_path / "out"
    assert main([recipe, "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    (step,) = [s for s in report["steps"] if s["kind"] == "rewrite"]
    rows = [r for r in report["rewrites"] if r["kind"] == "center_tap" and r.get("skipped") is None]
    assert rows and all(r["weight_error"] == pytest.approx(0, abs=1e-6) for r in rows), report["rewrites"]
    assert step["metrics"]["macs"] < report["baseline"]["macs"]


def test_plan_uses_the_kind_as_a_form(center_tap, tmp_path):
    net = _center_only(_net())
    x = torch.randn(1, 3, 16, 16)
    p = plan(net, x, PlanOptions(target={"macs": 0.5}, batch=2, forms=("center_tap",), measure_latency=False,
             cache_dir=str(tmp_path)), verbose=False)
    assert p.choices and all(c.form == "center_tap" for c in p.choices)
    reference = copy.deepcopy(net)
    apply_plan(net, p, x)
    assert any(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in net.modules())
    xs = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        want, got = reference(xs), net(xs)
    assert (got - want).norm() / want.norm() < TOL


def test_unregistered_kind_is_refused_with_the_known_kinds():
    with pytest.raises(CompressError, match="unknown rewrite kind 'center_tap'; expected one of .*grouped"):
        rewrite(_net(), "center_tap")
