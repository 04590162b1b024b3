"""Runtime registry and sessions (torch, torch-compile, onnxruntime, openvino) and compare_latency(runtimes=...).

Every session is compared here with a deep-copied eager reference, independently of the check the session
runs itself.
"""
from __future__ import annotations

import importlib

import copy

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.measurement import compare_latency
from compress.measurement.runtimes import (Runtime, Session, max_relative_error, register_runtime, runtime,
                                           runtimes, tolerance, unregister_runtime)
from compress.measurement.runtimes import inductor

X = torch.randn(1, 3, 12, 12)
FP32_EXACT = 1e-5  # float32 runtimes compute the same function as eager: only rounding may differ
FAST = ["torch", "onnxruntime", "openvino"]
VERDICT_STARTS = ("faster by ", "SLOWER by ", "no measurable difference")


def net(width: int = 8) -> nn.Sequential:
    """A tiny conv net with a residual-free BN (folded by the sessions) whose statistics are not the identity."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(width, 4))
    bn = model[1]
    bn.running_mean.uniform_(-0.5, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.2, 0.2)
    return model


def usable(name: str) -> Runtime:
    rt = runtime(name)
    reason = rt.unsupported(device="cpu", dtype="float32")
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    return rt


@pytest.fixture
def scratch_runtime():
    """Register test runtimes by name for one test; they are removed afterwards."""
    names: list[str] = []

    def add(cls: type[Runtime]) -> Runtime:
        register_runtime(cls)
        names.append(cls.name)
        return runtime(cls.name)

    yield add
    for name in names:
        unregister_runtime(name)


def test_registry_lists_the_builtins_and_names_them_for_an_unknown_one():
    assert {"torch", "torch-compile", "onnxruntime", "openvino"} <= set(runtimes())
    assert runtimes() == sorted(runtimes())
    with pytest.raises(CompressError, match=r"unknown runtime 'tensorflow'; expected one of .*onnxruntime.*torch"):
        runtime("tensorflow")
    assert runtime("torch").version() == torch.__version__


def _check_matches_eager(rt: Runtime, model: nn.Module) -> Session:
    reference = copy.deepcopy(model).eval()
    before = copy.deepcopy(model.state_dict())
    session = rt.session(model, X, threads=1, batch=1)
    for batch in (1, 4):  # the sessions take any batch size (dynamic batch axis)
        x = torch.randn(batch, *X.shape[1:])
        with torch.no_grad():
            want = reference(x)
        got = session(x)
        assert got.shape == want.shape == (batch, 4)
        assert max_relative_error(got, want) <= FP32_EXACT
    assert session.runtime == rt.name and session.threads == 1 and session.batch == 1
    assert session.max_rel_error is not None and session.max_rel_error <= FP32_EXACT
    assert session.tolerance == tolerance(device="cpu", dtype="float32")
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    return session


@pytest.mark.parametrize("name", FAST)
def test_session_matches_eager_at_batch_1_and_4(name):
    _check_matches_eager(usable(name), net().train())  # a training-mode model: the session uses eval mode


@pytest.mark.slow
def test_torch_compile_session_matches_eager_at_batch_1_and_4():
    """Slow: inductor compiles C++ at each new batch size (~25 s on a shared 2-core CPU)."""
    session = _check_matches_eager(usable("torch-compile"), net())
    assert session.info["compiled"]


def test_threads_are_set_explicitly_in_each_runtime():
    assert runtime("torch").session(net(), X, threads=2).threads == 2
    ort = usable("onnxruntime").session(net(), X, threads=2)
    assert ort.info["intra_op_num_threads"] == ort.info["inter_op_num_threads"] == 2
    assert ort.info["providers"] == ["CPUExecutionProvider"]
    assert ort.info["allow_spinning"] is False  # spinning pools steal the cores of the next interleaved session
    ov = usable("openvino").session(net(), X, threads=2)
    assert ov.info["INFERENCE_NUM_THREADS"] == 2 and ov.info["PERFORMANCE_HINT"] == "LATENCY"
    assert ov.info["INFERENCE_PRECISION_HINT"] == "f32"  # not the CPU's bf16 default
    with pytest.raises(CompressError, match=r"runtime 'torch' threads: expected an integer"):
        runtime("torch").session(net(), X, threads=0)


def test_wrong_outputs_raise_naming_the_runtime(monkeypatch):
    rt = runtime("torch")
    build = rt.build

    def off_by_two_percent(*args, **kwargs) -> Session:
        session = build(*args, **kwargs)
        run = session.run
        session.run = lambda native: run(native) * 1.02
        return session

    monkeypatch.setattr(rt, "build", off_by_two_percent)
    with pytest.raises(CompressError, match=r"runtime 'torch': output differs from eager PyTorch at batch 3: "
                                            r"relative max error 2\.00e-02 > 0\.001 \(float32 on cpu\)"):
        rt.session(net(), X, batch=3)


def test_a_failing_build_is_a_compress_error_naming_the_runtime(monkeypatch):
    def broken_compile(module, **kwargs):
        def run(x):
            raise RuntimeError("C++ compile error: cannot find cstdint\nmore lines")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(inductor, "_cpp_compiler", lambda: "/usr/bin/g++")
    with pytest.raises(CompressError, match=r"^runtime 'torch-compile' could not build or run the model "
                                            r"\(RuntimeError: C\+\+ compile error: cannot find cstdint\)$"):
        runtime("torch-compile").session(net(), X)


def test_torch_compile_without_a_compiler_says_so(monkeypatch):
    monkeypatch.setattr(inductor, "_cpp_compiler", lambda: None)
    assert "no C++ compiler" in runtime("torch-compile").available()
    with pytest.raises(CompressError, match=r"runtime 'torch-compile' cannot run here: .*no C\+\+ compiler"):
        runtime("torch-compile").session(net(), X)


def test_unsupported_device_and_dtype_are_reasons_not_crashes():
    if "CUDAExecutionProvider" not in __import__("onnxruntime").get_available_providers():
        assert "lists no TensorrtExecutionProvider or CUDAExecutionProvider" in \
            runtime("onnxruntime").unsupported(device="cuda", dtype="float32")
    assert runtime("openvino").unsupported(device="cuda", dtype="float32") == "runs on cpu, not cuda"
    with pytest.raises(CompressError, match=r"runtime 'onnxruntime' cannot run here: computes in float32, "
                                            r"not bfloat16"):
        runtime("onnxruntime").session(net(), X, dtype="bfloat16")


def test_bfloat16_session_is_checked_at_its_own_tolerance():
    session = runtime("torch").session(net(), X, dtype="bfloat16", batch=2)
    assert session.dtype == "bfloat16" and session(X).dtype == torch.bfloat16
    assert FP32_EXACT < session.max_rel_error <= tolerance(device="cpu", dtype="bfloat16")


def test_unavailable_runtime_is_skipped_with_its_reason(monkeypatch):
    monkeypatch.setattr(runtime("openvino"), "available", lambda: "openvino not installed")
    with pytest.raises(CompressError, match="runtime 'openvino' cannot run here: openvino not installed"):
        runtime("openvino").session(net(), X)
    comp = compare_latency({"base": net(8), "small": net(4)}, X, runtimes=("torch", "openvino"), batch_sizes=(1, 2),
                           runs=20, warmup=0, threads=1)
    skipped = [r for r in comp.rows() if r["runtime"] == "openvino"]
    assert [(r["batch"], r["skipped"], r["model"]) for r in skipped] == [(1, "openvino not installed", None),
                                                                          (2, "openvino not installed", None)]
    assert all(r["verdict"] == "not measured: openvino not installed" for r in skipped)
    measured = [r for r in comp.rows() if r["runtime"] == "torch"]
    assert [(r["batch"], r["model"]) for r in measured] == [(1, "base"), (1, "small"), (2, "base"), (2, "small")]


def test_compare_latency_across_torch_and_onnxruntime():
    usable("onnxruntime")
    threads = torch.get_num_threads()
    comp = compare_latency({"base": net(8), "small": net(4)}, X, runtimes=("torch", "onnxruntime"),
                           batch_sizes=(1, 3), runs=20, warmup=1, threads=2)
    assert torch.get_num_threads() == threads  # restored
    assert comp.settings.threads == 2 and comp.settings.bn_folded and comp.results == {}
    assert set(comp.timings) == {(rt, "cpu", "float32", b) for rt in ("torch", "onnxruntime") for b in (1, 3)}
    rows = comp.rows()
    assert len(rows) == 8
    for row in rows:
        assert row["threads"] == 2 and row["skipped"] is None and row["runs"] == 20
        assert row["compressed_ms"] > 0 and row["max_rel_error"] <= FP32_EXACT
        if row["model"] == "base":
            assert row["verdict"] == "baseline" and row["ratio"] == 1.0
        else:
            assert row["verdict"].startswith(VERDICT_STARTS)
        if row["runtime"] == "torch":
            assert row["vs_torch"] is None and row["version"] == torch.__version__
        else:
            assert row["vs_torch"].startswith(VERDICT_STARTS)
            eager = comp.timings[("torch", "cpu", "float32", row["batch"])].stats[row["model"]]
            assert row["torch_ms"] == round(eager.median_ms, 6)
    ort = comp.timings[("onnxruntime", "cpu", "float32", 1)]
    assert ort.info["intra_op_num_threads"] == 2 and len(ort.samples_ms["small"]) == 20


def test_all_sessions_are_timed_interleaved(scratch_runtime, monkeypatch):
    # every call counts as long: one untimed and one timed call per round (bursts: test_latency.py)
    monkeypatch.setattr(importlib.import_module("compress.measurement.latency"), "BURST_MS", 0.0)
    monkeypatch.setattr(importlib.import_module("compress.measurement.latency"), "QUIET_S", 0.0)
    calls: list[tuple[str, int]] = []
    models_seen: list[tuple[str, object]] = []

    class Logging(Runtime):
        def build(self, model, x, *, device, dtype, threads, channels_last):
            name = self.name

            def run(native):
                calls.append((name, native.shape[0]))
                models_seen.append((name, model))
                return model(native)

            return Session(runtime=name, device=str(device), dtype="float32", threads=threads, batch=x.shape[0],
                           feed=lambda t: t, run=run, fetch=lambda out: out)

    scratch_runtime(type("A", (Logging,), {"name": "log-a"}))
    scratch_runtime(type("B", (Logging,), {"name": "log-b"}))
    compare_latency({"m": net(), "n": net()}, X, runtimes=("log-a", "log-b"), batch_sizes=(2,), runs=20, warmup=2)
    assert {batch for _, batch in calls} == {2}
    names = [name for name, _ in calls]
    assert names[:4] == ["log-a", "log-a", "log-b", "log-b"]  # each session's numerics check, as it is built
    # one runtime after the other (another runtime's spinning thread pool would take the cores) ...
    # 2 sessions x (2 warm-up + 2 probe + 20 rounds x (1 untimed + 1 timed))
    assert names[4:4 + 88] == ["log-a"] * 88 and names[4 + 88:] == ["log-b"] * 88
    # ... and within one runtime, the models' sessions interleaved, the order reversed every other round
    order = [id(model) for _, model in models_seen[12:92:2]]  # after 4 checks, 4 warm-up and 4 probe calls
    first, second = order[0], order[1]
    assert first != second and order == [first, second, second, first] * 10


def test_bad_runtime_arguments():
    with pytest.raises(CompressError, match="unknown runtime 'nope'"):
        compare_latency({"m": net()}, X, runtimes=("torch", "nope"), runs=20)
    with pytest.raises(CompressError, match="compile and per_layer are not available"):
        compare_latency({"m": net()}, X, runtimes=("torch",), compile=True, runs=20)
    with pytest.raises(CompressError, match="latency threads: expected an integer in 1..1024"):
        compare_latency({"m": net()}, X, threads=0, runs=20)


def test_eager_path_takes_threads_too():
    comp = compare_latency({"m": net()}, X, batch_sizes=(1,), runs=20, warmup=0, threads=2)
    assert comp.settings.threads == 2 and comp.timings == {} and comp.rows() == []
    assert torch.get_num_threads() == 1  # conftest's setting, restored
