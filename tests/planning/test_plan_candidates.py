"""Candidate widths and rewrite forms: alignment rules, and cost formulas checked against the real rewrites."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from compress.errors import CompressError
from compress.planning import Form, aligned_widths, default_align
from compress.planning.candidates import rewrite_forms
from compress.planning.shapes import capture_shapes
from compress.transforms.rewrite.apply import conv_macs


@settings(max_examples=60, deadline=None)
@given(channels=st.integers(1, 600), align=st.sampled_from([1, 4, 8, 16, 32]),
       min_keep=st.floats(0.05, 1.0), max_widths=st.integers(1, 12))
def test_aligned_widths_rules(channels, align, min_keep, max_widths):
    widths = aligned_widths(channels, align=align, min_keep=min_keep, max_widths=max_widths)
    assert len(widths) <= max_widths
    assert widths == sorted(set(widths), reverse=True)
    for w in widths:
        assert w % align == 0 and w < channels and w >= min_keep * channels - 1e-9


def test_aligned_widths_examples():
    assert aligned_widths(64, align=8, min_keep=0.25) == [56, 48, 40, 32, 24, 16]
    # a coarser grid doubles the step and keeps to its multiples (16s, not odd multiples of 8)
    assert aligned_widths(64, align=8, min_keep=0.25, max_widths=3) == [48, 32, 16]
    assert aligned_widths(128, align=8, min_keep=0.25, max_widths=8) == [112, 96, 80, 64, 48, 32]
    assert aligned_widths(512, align=32, min_keep=0.5, max_widths=8) == [480, 448, 416, 384, 352, 320, 288, 256]
    assert aligned_widths(24, align=32) == []  # nothing aligned below 24 at 32
    with pytest.raises(CompressError):
        aligned_widths(64, align=0)


def test_default_align():
    assert default_align("cpu", torch.float32) == 8
    assert default_align("cuda", torch.bfloat16) == 32
    assert default_align("cuda", torch.float32) == 16


@pytest.mark.parametrize("key", ["grouped:2", "grouped:4", "separable:1", "separable:2", "bottleneck:0.25",
                                 "bottleneck:0.5"])
def test_form_formulas_match_the_rewrite_modules(key):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=True))
    x = torch.randn(1, 16, 12, 12)
    shape = capture_shapes(model, x)["0"]
    form = Form.parse(key)
    assert form.fits(shape) and Form.parse(form.key) == form
    module = form.module(shape)
    with torch.no_grad():
        assert module(x).shape == model(x).shape
    assert form.macs(shape) == conv_macs(module, x)
    assert form.param_count(shape) == sum(p.numel() for p in module.parameters())


def test_shuffle_form_is_for_pointwise_convs_only():
    model = nn.Sequential(nn.Conv2d(32, 32, 1, bias=False), nn.Conv2d(32, 32, 3, padding=1, bias=False))
    x = torch.randn(1, 32, 8, 8)
    shapes = capture_shapes(model, x)
    kinds = ("grouped", "separable", "shuffle", "bottleneck")
    pointwise = {f.key for f in rewrite_forms(shapes["0"], kinds)}
    spatial = {f.key for f in rewrite_forms(shapes["1"], kinds)}
    assert {"shuffle:2", "shuffle:4", "shuffle:8"} <= pointwise
    assert not any(k.startswith("separable") for k in pointwise)
    assert not any(k.startswith("shuffle") for k in spatial) and "separable:4" in spatial
    form = Form.parse("shuffle:4")
    module = form.module(shapes["0"])
    assert form.macs(shapes["0"]) == conv_macs(module, x)
    assert form.param_count(shapes["0"]) == sum(p.numel() for p in module.parameters())


def test_narrow_and_depthwise_convs_get_no_rewrites():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    shapes = capture_shapes(model, torch.randn(1, 8, 8, 8))
    assert rewrite_forms(shapes["0"], ("grouped", "separable")) == []
    assert shapes["1"].depthwise and rewrite_forms(shapes["1"], ("grouped",)) == []
