"""latency / compare_latency / layer_latency on tiny models; the CUDA path runs only where CUDA exists."""
from __future__ import annotations

import copy
import importlib
import time

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.measurement import Stats, compare_latency, latency, layer_latency, verdict

SLEEP_S = 0.004


class Sleep(nn.Module):
    """Adds a fixed wall-clock delay, so 'slower' is certain even on a loaded machine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(SLEEP_S)
        return x


def tiny(extra: nn.Module | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
              nn.Linear(8, 4)]
    if extra is not None:
        layers.insert(3, extra)
    return nn.Sequential(*layers)


X = torch.randn(1, 3, 16, 16)


@pytest.fixture(autouse=True)
def one_thread():
    """On this shared, loaded 2-core machine a tiny forward with two intra-op threads flips between ~0.13 ms and
    20-50 ms (the barrier waits whenever the second thread is descheduled); one thread keeps it stable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_latency_sane_and_model_untouched():
    model = tiny().train()
    before = copy.deepcopy(model.state_dict())
    res = latency(model, X, batch_sizes=(1, 2, 1), dtype="bfloat16", channels_last=True, runs=20, warmup=1)
    assert list(res.stats) == [1, 2]  # repeats dropped
    for batch, stats in res.stats.items():
        assert stats.median_ms > 0 and stats.iqr_ms >= 0 and stats.runs == 20
        assert len(res.samples_ms[batch]) == 20 and all(t > 0 for t in res.samples_ms[batch])
    assert res.settings.threads == torch.get_num_threads()
    assert res.settings.dtype == "bfloat16" and res.settings.channels_last
    # the user's model keeps its dtype, memory format, mode and weights
    assert model.training and all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    assert model[0].weight.is_contiguous()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_arguments_raise_compress_error():
    with pytest.raises(CompressError, match="at least 20"):
        latency(tiny(), X, runs=5)
    with pytest.raises(CompressError, match="batch_sizes"):
        latency(tiny(), X, batch_sizes=(0,))
    with pytest.raises(CompressError, match="dtype"):
        latency(tiny(), X, dtype="int8")
    with pytest.raises(CompressError, match="example_inputs"):
        latency(tiny(), (X,), batch_sizes=(1,))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_cuda_request_without_cuda_is_a_user_error():
    with pytest.raises(CompressError, match="CUDA is not available"):
        latency(tiny(), X, device="cuda")


def _logged(names: tuple[str, ...]) -> tuple[dict[str, nn.Module], list[str]]:
    calls: list[str] = []
    models = {name: tiny() for name in names}
    for name, m in models.items():
        m.register_forward_hook(lambda mod, args, out, n=name: calls.append(n))
    # hooks are deep-copied with the models, so the copies being timed log their calls
    return models, calls


def test_compare_interleaves_models_and_reverses_order_each_round(monkeypatch):
    latency_module = importlib.import_module("compress.measurement.latency")  # the package's `latency` is the function

    monkeypatch.setattr(latency_module, "BURST_MS", 0.0)  # every call "long": one timed call per round
    models, calls = _logged(("a", "b"))
    compare_latency(models, X, batch_sizes=(1,), runs=20, warmup=2)
    # 2 warm-up calls per model, then 2 probe calls each (how long one call takes), then the rounds: each model
    # one untimed call (it warms the caches the other model's call evicted), then its timed one
    assert calls[:8] == ["a", "a", "b", "b", "a", "a", "b", "b"]
    assert calls[8:] == ["a", "a", "b", "b", "b", "b", "a", "a"] * 10


def test_short_calls_are_timed_as_warm_bursts_still_interleaved(monkeypatch):
    import itertools

    latency_module = importlib.import_module("compress.measurement.latency")  # the package's `latency` is the function

    monkeypatch.setattr(latency_module, "BURST_MS", 1e6)  # every call "short": the longest burst
    models, calls = _logged(("a", "b"))
    comp = compare_latency(models, X, batch_sizes=(1,), runs=20, warmup=2)
    runs = [(name, len(list(group))) for name, group in itertools.groupby(calls[8:])]
    burst = 1 + latency_module.MAX_BURST  # one untimed call, then the timed burst
    # rounds alternate a,b / b,a: the bursts of the two rounds around each turn meet
    assert runs == [("a", burst)] + [("b", 2 * burst), ("a", 2 * burst)] * 9 + [("b", 2 * burst), ("a", burst)]
    assert all(len(comp.results[n].samples_ms[1]) == 20 for n in ("a", "b"))  # one sample (a burst mean) a round


def test_compare_verdicts_follow_the_measured_direction():
    slow, fast = tiny(Sleep()), tiny()
    comp = compare_latency({"baseline": slow, "compressed": fast, "slower": tiny(nn.Sequential(Sleep(), Sleep()))},
                           X, batch_sizes=(1, 2), runs=20, warmup=1)
    rows = {(r["model"], r["batch"]): r for r in comp.rows()}
    assert len(rows) == 4
    for batch in (1, 2):
        faster, slower = rows[("compressed", batch)], rows[("slower", batch)]
        assert faster["ratio"] == pytest.approx(faster["baseline_ms"] / faster["compressed_ms"], rel=1e-4)
        assert faster["baseline_ms"] >= SLEEP_S * 1e3 and faster["ratio"] > 1.0
        assert faster["verdict"].startswith("faster by ")
        assert slower["ratio"] < 1 and slower["verdict"].startswith("SLOWER by ") and "on cpu" in slower["verdict"]


def test_verdict_text_and_noise_flag():
    base = Stats(median_ms=10.0, q1_ms=9.5, q3_ms=10.5, min_ms=9.0, runs=20)
    quick = Stats(median_ms=5.0, q1_ms=4.9, q3_ms=5.1, min_ms=4.8, runs=20)
    close = Stats(median_ms=10.2, q1_ms=9.9, q3_ms=10.6, min_ms=9.8, runs=20)
    assert verdict(base, quick, device="cpu") == "faster by 2.00x (measured on cpu)"
    assert verdict(quick, base, device="cuda") == "SLOWER by 2.00x on cuda (measured)"
    assert verdict(base, close, device="cpu") == "no measurable difference on cpu (IQRs overlap; median ratio 0.98x)"
    wide = Stats(median_ms=68.8, q1_ms=8.0, q3_ms=90.0, min_ms=7.0, runs=20)  # a noisy run: no 6.88x verdict
    assert verdict(base, wide, device="cpu").startswith("no measurable difference on cpu")


def test_layer_latency_names_every_leaf_and_sees_the_slow_one():
    model = tiny(Sleep())
    res = layer_latency(model, X, batch=2, runs=20, warmup=1)
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    assert sorted(res.ms) == sorted(leaves)
    assert all(v >= 0 for v in res.ms.values()) and all(v >= 0 for v in res.iqr_ms.values())
    assert res.ms["3"] >= SLEEP_S * 1e3  # the Sleep layer
    assert max(res.ms, key=res.ms.get) == "3"


def test_latency_per_layer_attaches_layer_times():
    res = latency(tiny(), X, batch_sizes=(2,), runs=20, warmup=0, per_layer=True)
    assert res.layers is not None and res.layers.batch == 2 and set(res.layers.ms) >= {"0", "5"}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_cuda_latency_and_layers(dtype):
    model = tiny()
    torch.backends.cudnn.benchmark = False
    comp = compare_latency({"a": model, "b": tiny()}, X, device="cuda", batch_sizes=(1, 8), dtype=dtype,
                           channels_last=True, runs=20, per_layer=True)
    for res in comp.results.values():
        assert all(s.median_ms > 0 and s.iqr_ms >= 0 for s in res.stats.values())
        assert res.settings.device.startswith("cuda") and res.layers is not None
        assert all(v >= 0 for v in res.layers.ms.values())
    assert torch.backends.cudnn.benchmark is False  # enabled only while timing
    assert next(model.parameters()).device.type == "cpu"  # the original stays put
