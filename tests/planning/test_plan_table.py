"""Latency table: one measured entry per candidate width and form, keyed and cached on disk, reused."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

from compress.planning import aligned_widths, build_table, default_requests
from compress.planning import table as table_mod
from compress.planning.table import Conditions
from compress.planning.shapes import capture_shapes

ALIGN = 8


class FakeTimer:
    """Counts timer calls; every call returns a new value so an entry is visibly its own measurement."""

    def __init__(self) -> None:
        self.calls = 0
        self.values = itertools.count(1)

    def __call__(self, fn, device) -> float:
        self.calls += 1
        return float(next(self.values))


@pytest.fixture
def timer(monkeypatch) -> FakeTimer:
    fake = FakeTimer()
    monkeypatch.setattr(table_mod, "time_call", fake)
    return fake


def two_convs() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Conv2d(32, 32, 3, padding=1, bias=False))
    return model, torch.randn(1, 3, 12, 12)


def requests(model, x, kinds=("prune", "grouped", "separable")):
    return default_requests(capture_shapes(model, x), align=ALIGN, min_keep=0.25, max_widths=8, kinds=kinds)


def test_one_measured_entry_per_width_and_cache_reuse(tmp_path, timer):
    model, x = two_convs()
    reqs = requests(model, x)
    first = build_table(reqs, Conditions(batch=4), cache_dir=tmp_path, runs=3, warmup=0, verbose=False)
    entries = sum(len(r.entries()) for r in reqs.values())
    # FakeTimer values never repeat, so no entry settles early: exactly max_factor * runs calls each
    assert timer.calls == entries * 3 * 5 and first.measured == entries and first.reused == 0
    stairs = first.layers["2"].staircase()
    assert list(stairs) == [32] + aligned_widths(32, align=ALIGN, min_keep=0.25)  # one entry per width
    assert {f"in:{w}" for w in aligned_widths(32, align=ALIGN, min_keep=0.25)} <= set(first.layers["2"].ms)
    assert {"grouped:2", "grouped:4", "grouped:8", "separable:1", "separable:2", "separable:4"} <= set(
        first.layers["2"].ms)
    values = [v for t in first.layers.values() for v in t.ms.values()]
    assert len(set(values)) == len(values)  # every entry is its own measurement, none copied or interpolated

    timer.calls = 0
    second = build_table(reqs, Conditions(batch=4), cache_dir=tmp_path, runs=3, warmup=0, verbose=False)
    assert timer.calls == 0 and second.measured == 0 and second.reused == entries
    assert {n: t.ms for n, t in second.layers.items()} == {n: t.ms for n, t in first.layers.items()}
    assert second.path == first.path and json.loads(first.path.read_text())["key"]["batch"] == 4


def test_cache_is_keyed_by_batch_dtype_and_layout(tmp_path, timer):
    model, x = two_convs()
    reqs = requests(model, x, kinds=("prune",))
    base = build_table(reqs, Conditions(batch=4), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
    paths = {base.path}
    for kwargs in ({"batch": 2}, {"dtype": torch.bfloat16}, {"channels_last": True}):
        timer.calls = 0
        other = build_table(reqs, Conditions(**{"batch": 4, **kwargs}), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
        assert timer.calls > 0 and other.measured == base.measured  # nothing reused across keys
        paths.add(other.path)
    assert len(paths) == 4
    assert base.key.device == table_mod.device_name("cpu") and base.key.torch == torch.__version__


def test_identical_layers_share_measurements(tmp_path, timer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1))
    reqs = requests(model, torch.randn(1, 16, 8, 8), kinds=("prune",))
    table = build_table(reqs, Conditions(batch=2), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
    assert table.measured == len(reqs["0"].entries()) and table.reused == len(reqs["1"].entries())
    assert table.layers["0"].ms == table.layers["1"].ms


def test_damaged_cache_is_measured_again(tmp_path, timer):
    model, x = two_convs()
    reqs = requests(model, x, kinds=("prune",))
    first = build_table(reqs, Conditions(batch=2), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
    first.path.write_text("{not json")
    again = build_table(reqs, Conditions(batch=2), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
    assert again.measured == first.measured
    assert json.loads(again.path.read_text())["format"] == table_mod._FORMAT


def test_real_measurement_of_a_depthwise_staircase(tmp_path):
    model = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16))
    reqs = requests(model, torch.randn(1, 16, 8, 8), kinds=("prune",))
    assert reqs["0"].in_widths == ()  # a depthwise conv shrinks input and output together
    table = build_table(reqs, Conditions(batch=2), cache_dir=tmp_path, runs=2, warmup=1, verbose=False)
    stairs = table.layers["0"].staircase()
    assert list(stairs) == [16, 8] and all(v > 0 for v in stairs.values())
    assert table.as_dict()["layers"]["0"]["signature"].startswith("conv2d_i16_o16_k3x3")


def test_rewrite_at_pruned_widths_is_measured_on_demand_and_cached(tmp_path, timer):
    from compress.planning import Form
    from compress.planning.predict import LatencyResource, State, site_widths
    from compress.planning.problem import Site

    model, x = two_convs()
    reqs = requests(model, x)
    table = build_table(reqs, Conditions(batch=2), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
    before, calls = table.measured, timer.calls
    shape = reqs["2"].shape
    site = Site("2", shape, out_group=0, in_group=1)
    resource = LatencyResource(table)
    form = Form("grouped", 2)
    assert resource.conv(site, 32, 32, form) == table.layers["2"].ms["grouped:2"]  # full width: the table entry
    assert timer.calls == calls
    ms = resource.conv(site, 16, 24, form)  # pruned widths: the rewrite is timed now at exactly that shape
    pruned = shape.with_channels(24, 16)
    assert timer.calls > calls and table.measured == before + 2  # with the dense conv of that shape, interleaved
    cached = json.loads(table.path.read_text())["layers"][pruned.signature()]
    assert set(cached) == {"dense", "grouped:2"}
    t = table.layers["2"]
    dense_here = t.full_ms * (t.out_ms(16) / t.full_ms) * (t.in_ms(24) / t.full_ms)  # the staircases' product
    assert ms == pytest.approx(dense_here * cached["grouped:2"] / cached["dense"])  # times the measured ratio
    assert site_widths(site, State([16, 24])) == (16, 24)
    calls = timer.calls
    assert resource.conv(site, 16, 24, form) == ms and timer.calls == calls  # asked again: no new timing
    again = build_table(reqs, Conditions(batch=2), cache_dir=tmp_path, runs=1, warmup=0, verbose=False)
    assert again.entry_ms(pruned, form) == cached["grouped:2"] and timer.calls == calls  # a later run reuses it
