"""Save/load round trip, the ``analyze`` recipe step, and the plot helpers."""
from __future__ import annotations

import json

import pytest
import torch

from analysis_helpers import DeadNet, plant_dead, random_batches
from compress.analysis import Analysis, analyze, load_analysis
from compress.analysis.plots import plot_correlation, plot_liveness
from compress.analysis.step import AnalyzeStep, analyze_step
from compress.config import parse
from compress.errors import CompressError, ConfigError
from compress.recipe import registry


@pytest.fixture(scope="module")
def planted():
    torch.manual_seed(0)
    net = DeadNet()
    batches = random_batches(3, batch=4)
    plant_dead(net, batches)
    return net, batches, analyze(net, batches, verbose=False)


def test_save_load_round_trip(planted, tmp_path):
    _, _, analysis = planted
    analysis.save(tmp_path / "a")
    loaded = load_analysis(tmp_path / "a")
    assert isinstance(loaded, Analysis) and loaded.layers == analysis.layers
    assert loaded.info == analysis.info and loaded.notes == analysis.notes
    assert (loaded.batches, loaded.images) == (analysis.batches, analysis.images)
    for layer in analysis.layers:
        a, b = analysis.stats(layer), loaded.stats(layer)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert torch.equal(analysis.correlation(layer), loaded.correlation(layer))
    assert loaded.dead_channels() == analysis.dead_channels()
    assert loaded.summary() == analysis.summary()
    doc = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert list(doc["summary"]["layers"]) == analysis.layers
    assert doc["dead_channels"]["conv1"]["2"]["kind"] == "zero_gamma"
    assert doc["dead_channels"]["conv1"]["2"]["value"] == pytest.approx(0.3, abs=1e-6)
    assert doc["summary"]["layers"]["conv1"]["point"] == "act1"


def test_load_errors_are_user_errors(tmp_path):
    with pytest.raises(CompressError, match="not found"):
        load_analysis(tmp_path)
    (tmp_path / "analysis.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CompressError, match="cannot read"):
        load_analysis(tmp_path)


def test_step_config_validation():
    assert parse(AnalyzeStep, {}) == AnalyzeStep(max_batches=16, apoz_threshold=0.99, save=True)
    assert parse(AnalyzeStep, {"max_batches": None}).max_batches is None
    with pytest.raises(ConfigError, match="max_batches"):
        parse(AnalyzeStep, {"max_batches": 0})
    with pytest.raises(ConfigError, match="apoz_threshold"):
        parse(AnalyzeStep, {"apoz_threshold": 1.5})
    assert registry._STEPS["analyze"].config is AnalyzeStep
    assert registry._STEPS["analyze"].handler is analyze_step


@pytest.mark.parametrize("is_main", [True, False])
def test_step_sets_context_and_saves_on_main(planted, tmp_path, step_context, is_main):
    net, batches, _ = planted
    ctx = step_context(net, calib=batches, rank=0 if is_main else 1)
    details = analyze_step(ctx, AnalyzeStep(max_batches=2))
    assert isinstance(ctx.analysis, Analysis) and ctx.analysis.batches == 2
    assert details.layers["conv2"]["dead_total"] == 4 and details.batches == 2
    assert (tmp_path / "analysis" / "analysis.json").exists() == is_main
    assert details.saved_to == ("analysis" if is_main else None)
    json.dumps(details.to_plain())  # JSON-friendly


def test_plots_write_png(planted, tmp_path):
    _, _, analysis = planted
    for path in (plot_liveness(analysis, tmp_path / "live.png"),
                 plot_correlation(analysis, "conv1", tmp_path / "corr.png", groups=4)):
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 1000
