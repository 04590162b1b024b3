"""Where latency is measured: eager PyTorch, torch.compile, ONNX Runtime, OpenVINO (one module each).

:mod:`.registry` holds the :class:`Runtime` base, the :class:`Session` it builds and the lookup; importing this
package registers the built-in runtimes. A runtime whose library is missing stays registered and says why it
cannot run (:meth:`Runtime.available`).
"""
from . import eager, inductor, onnx_runtime, openvino_runtime  # noqa: F401  (registers the built-in runtimes)
from .registry import (TOLERANCES, Runtime, Session, max_relative_error, register_runtime, runtime, runtimes,
                       tolerance, unregister_runtime)

__all__ = ["Runtime", "Session", "TOLERANCES", "max_relative_error", "register_runtime", "runtime", "runtimes",
           "tolerance", "unregister_runtime"]
