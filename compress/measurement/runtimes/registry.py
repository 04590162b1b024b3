"""Runtime registry: where a model is run for timing (eager PyTorch, torch.compile, ONNX Runtime, OpenVINO).

A runtime is a :class:`Runtime` subclass registered with :func:`register_runtime` under its ``name``; it says
whether it can run here (:meth:`Runtime.available`, :meth:`Runtime.unsupported`) and builds a :class:`Session`
from a model (:meth:`Runtime.build`). :meth:`Runtime.session` is the one way to get a session: it folds the
model's BatchNorms (deploy form), builds the session and checks its output against eager PyTorch, so a timed
session is never one that computes something else.

Adding a runtime is one module defining its subclass (see the sibling modules).
"""
from __future__ import annotations

import copy
import dataclasses
import importlib.util
from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch import nn

from ...config import MAX_THREADS
from ...errors import CompressError
from ..timing import as_dtype, dtype_name, num_threads, resolve_device

__all__ = ["Session", "Runtime", "TOLERANCES", "CHECK_NOISE", "tolerance", "max_relative_error", "check_batch",
           "numpy_input", "missing_modules", "register_runtime", "unregister_runtime", "runtime", "runtimes"]

# Largest relative max error (max |got - want| / max |want|) of a session against the float64 eager reference,
# by dtype; float32 on CUDA allows for TF32 convolutions (on by default in cuDNN).
TOLERANCES: dict[tuple[str, str], float] = {
    ("cpu", "float32"): 1e-3, ("cuda", "float32"): 1e-2,
    ("cpu", "bfloat16"): 6e-2, ("cuda", "bfloat16"): 6e-2,
    ("cpu", "float16"): 1e-2, ("cuda", "float16"): 1e-2,
}
CHECK_NOISE = 0.1  # the check batch: the first example sample plus this much Gaussian noise per sample

R = TypeVar("R", bound="Runtime")
_RUNTIMES: dict[str, "Runtime"] = {}


def tolerance(*, device: str, dtype: str) -> float:
    """The relative max error a session on ``device`` (``"cpu"``, ``"cuda:0"``) in ``dtype`` may have."""
    return TOLERANCES[(torch.device(device).type, dtype_name(dtype))]


def max_relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` of two same-shape tensors, computed in float64 on the CPU."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    if got.shape != want.shape:
        raise CompressError(f"output shape {tuple(got.shape)} differs from eager's {tuple(want.shape)}")
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)


def check_batch(example_inputs: torch.Tensor, batch: int) -> torch.Tensor:
    """The numerics-check input ``(batch, C, H, W)``: the first sample of ``example_inputs`` ``(B, C, H, W)``
    plus :data:`CHECK_NOISE` of seeded noise, so the samples differ (a runtime mixing them up is caught)."""
    if not isinstance(example_inputs, torch.Tensor) or example_inputs.dim() < 2:
        raise CompressError("runtime session: example_inputs must be one tensor of shape (B, C, H, W), got "
                            f"{type(example_inputs).__name__}")
    sample = example_inputs[:1].detach().cpu().float()
    generator = torch.Generator().manual_seed(0)
    return sample + CHECK_NOISE * torch.randn(batch, *sample.shape[1:], generator=generator)


def numpy_input(x: torch.Tensor) -> Any:
    """``x`` ``(B, C, H, W)`` as a C-contiguous float32 NumPy array on the host (what ONNX-based runtimes take)."""
    return x.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()


def missing_modules(*names: str) -> str | None:
    """``"onnxruntime not installed"`` for the first of ``names`` that cannot be imported (``None``: all can)."""
    for name in names:
        if importlib.util.find_spec(name) is None:
            return f"{name} not installed"
    return None


@dataclasses.dataclass(eq=False)
class Session:
    """A model ready to run in one runtime; ``session(x)`` maps ``(B, C, H, W)`` to the model's ``(B, ...)``.

    Timing calls the pieces apart so conversions stay out of the timed region: ``native = feed(x)`` once per
    batch, then ``run(native)`` per timed call; ``fetch(run(native))`` is the output as a tensor.

    Attributes:
        runtime / device / dtype: where and in what precision it runs (``dtype`` is the computing precision).
        threads: CPU threads the runtime was told to use (intra-op; see ``info`` for runtime-specific ones).
        batch: the batch size it was checked at (every built-in session takes any batch size).
        feed: ``x (B, C, H, W) tensor -> the runtime's input`` (device, dtype, layout or NumPy conversion).
        run: ``input -> raw output``: the call that is timed.
        fetch: ``raw output -> torch.Tensor (B, ...)``.
        info: runtime settings actually in force (providers, OpenVINO properties, ...), JSON-friendly.
        max_rel_error: the check's relative max error against eager float64 (set by :meth:`Runtime.session`).
        tolerance: the largest error the check accepted.
    """

    runtime: str
    device: str
    dtype: str
    threads: int
    batch: int
    feed: Callable[[torch.Tensor], Any]
    run: Callable[[Any], Any]
    fetch: Callable[[Any], torch.Tensor]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    max_rel_error: float | None = None
    tolerance: float | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Output ``(B, ...)`` for input ``x`` ``(B, C, H, W)`` (any dtype/device; converted by ``feed``)."""
        with num_threads(self.threads), torch.inference_mode():
            return self.fetch(self.run(self.feed(x)))


class Runtime:
    """One place a model can run; subclasses set the class attributes and implement :meth:`build`.

    Class attributes:
        name: the registry name (``"onnxruntime"``).
        devices: device types it can run on (``"cpu"``, ``"cuda"``); :meth:`unsupported` may narrow further.
        dtypes: computing precisions it can use (``"float32"``, ``"bfloat16"``, ``"float16"``).
        revision: bumped when how :meth:`build` sets a session up changes what it measures, so that latency
            tables cached under the old settings are measured again (see ``compress.planning.table.TableKey``).
    """

    name: ClassVar[str] = ""
    revision: ClassVar[int] = 0
    devices: ClassVar[tuple[str, ...]] = ("cpu",)
    dtypes: ClassVar[tuple[str, ...]] = ("float32",)

    def available(self) -> str | None:
        """``None`` when the runtime is usable here, else why not (``"openvino not installed"``)."""
        return None

    def version(self) -> str:
        """Version of the library doing the work (``""`` when not installed)."""
        return ""

    def unsupported(self, *, device: torch.device | str, dtype: torch.dtype | str) -> str | None:
        """Why this runtime cannot run on ``device`` in ``dtype`` here (``None`` when it can)."""
        reason = self.available()
        if reason is not None:
            return reason
        device_type = torch.device(device).type
        if device_type not in self.devices:
            return f"runs on {', '.join(self.devices)}, not {device_type}"
        if dtype_name(dtype) not in self.dtypes:
            return f"computes in {', '.join(self.dtypes)}, not {dtype_name(dtype)}"
        return None

    def build(self, model: nn.Module, x: torch.Tensor, *, device: torch.device, dtype: torch.dtype, threads: int,
              channels_last: bool) -> Session:
        """A session running ``model`` (an eval-mode, BN-folded float32 CPU copy the session may keep or
        change). ``x`` ``(B, C, H, W)`` float32 is an example input (for tracing or export)."""
        raise NotImplementedError

    def session(self, model: nn.Module, example_inputs: torch.Tensor, *, device: torch.device | str = "cpu",
                dtype: torch.dtype | str = torch.float32, threads: int | None = None, batch: int = 1,
                channels_last: bool = False) -> Session:
        """Build a checked session of ``model`` in this runtime.

        The model is deep-copied, put in eval mode and its BatchNorms folded (:func:`compress.transforms.
        fold_batchnorm`; a model without BatchNorm is passed on as it is, e.g. the latency table's lone convs);
        ``model`` itself is untouched. The session's output at batch ``batch`` (see
        :func:`check_batch`) is compared with eager PyTorch in float64 on the CPU.

        Args:
            model: the network.
            example_inputs: ``(B, C, H, W)``; its first sample builds the check batch.
            device: ``"cpu"`` or ``"cuda"``.
            dtype: computing precision (``float32``, ``bfloat16``, ``float16``; what the runtime supports).
            threads: CPU threads for the runtime (default: ``torch.get_num_threads()``).
            batch: batch size of the numerics check.
            channels_last: NHWC inputs and weights (torch runtimes; the others choose their own layouts).

        Raises:
            CompressError: the runtime is unavailable or cannot run here, building or running the session
                failed, or its relative max error exceeds :func:`tolerance` (the message names the runtime).
        """
        device, dtype = resolve_device(device), as_dtype(dtype)
        threads = torch.get_num_threads() if threads is None else threads
        if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= MAX_THREADS:
            raise CompressError(f"runtime {self.name!r} threads: expected an integer in 1..{MAX_THREADS}, "
                                f"got {threads!r}")
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise CompressError(f"runtime {self.name!r} batch: expected a positive integer, got {batch!r}")
        reason = self.unsupported(device=device, dtype=dtype)
        if reason is not None:
            raise CompressError(f"runtime {self.name!r} cannot run here: {reason}")
        from ...transforms.blocks.fold_bn import fold_batchnorm  # deferred: transforms import measurement

        x = check_batch(example_inputs, batch)
        cpu_model = copy.deepcopy(model).eval().to(device="cpu", dtype=torch.float32)
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in cpu_model.modules())
        folded = fold_batchnorm(cpu_model, example_inputs=x[:1]) if has_bn else copy.deepcopy(cpu_model)
        for p in folded.parameters():
            p.requires_grad_(False)
        try:
            session = self.build(folded, x, device=device, dtype=dtype, threads=threads, channels_last=channels_last)
            got = session(x)
        except CompressError as err:
            raise CompressError(f"runtime {self.name!r}: {err}") from None
        except Exception as err:  # noqa: BLE001 - a model the runtime cannot take is the user's to know, not a bug
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise CompressError(f"runtime {self.name!r} could not build or run the model "
                                f"({type(err).__name__}: {first})") from None
        session.max_rel_error = self._error(cpu_model, x, got)
        session.tolerance = tolerance(device=str(device), dtype=dtype)
        if session.max_rel_error > session.tolerance:
            raise CompressError(f"runtime {self.name!r}: output differs from eager PyTorch at batch {batch}: "
                                f"relative max error {session.max_rel_error:.2e} > {session.tolerance:g} "
                                f"({dtype_name(dtype)} on {device.type})")
        return session

    def _error(self, model: nn.Module, x: torch.Tensor, got: torch.Tensor) -> float:
        """Relative max error of ``got`` against eager ``model`` (unfolded, eval mode) in float64 on ``x``."""
        reference = copy.deepcopy(model).to(dtype=torch.float64)
        with torch.inference_mode():
            want = reference(x.double())
        try:
            return max_relative_error(got, want)
        except CompressError as err:
            raise CompressError(f"runtime {self.name!r}: {err}") from None


def register_runtime(cls: type[R]) -> type[R]:
    """Class decorator: register one instance of the :class:`Runtime` subclass ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a runtime needs a name")
    if cls.name in _RUNTIMES and type(_RUNTIMES[cls.name]) is not cls:
        raise ValueError(f"a runtime named {cls.name!r} is already registered")
    _RUNTIMES[cls.name] = cls()
    return cls


def unregister_runtime(name: str) -> None:
    """Remove a registered runtime (for plug-ins and tests that register one of their own)."""
    _RUNTIMES.pop(name, None)


def runtime(name: str) -> Runtime:
    """The runtime registered under ``name``; :class:`CompressError` listing the known names when unknown."""
    if name not in _RUNTIMES:
        raise CompressError(f"unknown runtime {name!r}; expected one of {', '.join(runtimes())}")
    return _RUNTIMES[name]


def runtimes() -> list[str]:
    """Registered runtime names, sorted (available here or not: see :meth:`Runtime.available`)."""
    return sorted(_RUNTIMES)
