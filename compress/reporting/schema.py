"""The documented schema of ``report.json`` and a small validator for the JSON-Schema subset it uses.

Conventions in the report: accuracies are fractions in ``[0, 1]``; ``macs`` are per sample (torch-pruning
conventions, see :mod:`compress.measurement.cost`); times are milliseconds per forward of a whole batch;
``ratio`` in a latency row is ``baseline_ms / compressed_ms`` (above 1: the compressed model is faster).
Optional numbers are ``null`` when not measured (never a made-up value).

The validator understands ``type`` (a name or a list of names), ``properties``, ``required``,
``additionalProperties`` (bool or schema), ``items``, ``enum`` and ``minimum`` -- the subset used below.
"""
from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA_VERSION", "REPORT_SCHEMA", "SchemaError", "validate", "schema_errors", "BEFORE_RECONSTRUCTION"]

SCHEMA_VERSION = "1.2"  # 1.1: latency rows per runtime, the runtimes timed, the model.onnx record; 1.2: artifacts

# A step's details key (the field of compress.transforms.reconstruct.step.Reconstruction): top-1 measured after the
# step's transform and before its least-squares reconstruction (the step's metrics are measured after it).
BEFORE_RECONSTRUCTION = "top1_before_reconstruction"

_NUM = {"type": ["number", "null"]}
_INT = {"type": ["integer", "null"], "minimum": 0}
_STR = {"type": "string"}
_METRICS = {"type": "object", "properties": {
    "top1": _NUM, "top5": _NUM, "agreement": _NUM, "loss": _NUM, "n": _INT,
    "params": _INT, "macs": _INT, "seconds": _NUM}}


def _obj(required: list[str], props: dict[str, Any], *, extra: bool | dict = True) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": extra}


_RECONSTRUCTED = _obj(["layer", "fitted", "status"], {"layer": _STR, "fitted": _STR, "status": _STR, "rows": _INT,
                                                      "error_before": _NUM, "error_after": _NUM})
_STEP = _obj(["name", "kind", "metrics", "details"],
             {"name": _STR, "kind": _STR, "metrics": _METRICS,
              "details": {"type": "object", "properties": {
                  "reconstruction": {"type": ["array", "null"], "items": _RECONSTRUCTED},
                  BEFORE_RECONSTRUCTION: _NUM}}})
_LATENCY_ROW = _obj(
    ["device", "dtype", "batch", "channels_last", "baseline_ms", "compressed_ms", "baseline_iqr_ms",
     "compressed_iqr_ms", "ratio", "verdict"],
    {"device": _STR, "dtype": _STR, "batch": {"type": "integer", "minimum": 1}, "channels_last": {"type": "boolean"},
     "baseline_ms": {"type": "number", "minimum": 0}, "compressed_ms": {"type": "number", "minimum": 0},
     "baseline_iqr_ms": {"type": "number", "minimum": 0}, "compressed_iqr_ms": {"type": "number", "minimum": 0},
     "ratio": {"type": "number", "minimum": 0}, "verdict": _STR, "threads": _INT, "runs": _INT,
     "bn_folded": {"type": "boolean"}, "runtime": _STR, "version": _STR, "model": _STR,
     "compiled": {"type": "boolean"}, "max_rel_error": _NUM, "torch_ms": _NUM,
     "vs_torch": {"type": ["string", "null"]}, "skipped": {"type": "null"}})
_ONNX = {"type": ["object", "null"], "required": ["file", "input", "output", "input_shape", "bn_folded",
                                                   "checked_batches", "max_rel_error", "tolerance",
                                                   "within_tolerance", "onnxruntime"],
         "properties": {"file": _STR, "input": _STR, "output": _STR, "input_shape": {"type": "array"},
                        "bn_folded": {"type": "boolean"},
                        "checked_batches": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                        "max_rel_error": {"type": "number", "minimum": 0}, "tolerance": {"type": "number"},
                        "within_tolerance": {"type": "boolean"}, "onnxruntime": _STR}}
_LAYER_ROW = _obj(["name", "macs_before", "macs_after", "params_before", "params_after", "ms_before", "ms_after"],
                  {"name": _STR, "type": {"type": ["string", "null"]}, "macs_before": _INT, "macs_after": _INT,
                   "params_before": _INT, "params_after": _INT, "ms_before": _NUM, "ms_after": _NUM})
_REWRITE_ROW = _obj(["step", "layer"], {"step": _STR, "layer": _STR, "kind": {"type": ["string", "null"]},
                                        "macs_before": _INT, "macs_after": _INT, "weight_error": _NUM,
                                        "output_error": _NUM})
_SUMMARY = _obj(["params", "macs", "top1", "top5"], {"params": _INT, "macs": _INT, "top1": _NUM, "top5": _NUM,
                                                     "agreement": _NUM})

REPORT_SCHEMA: dict[str, Any] = _obj(
    ["schema_version", "environment", "data", "baseline", "final", "steps", "latency", "layers", "notes"],
    {
        "schema_version": {"type": "string", "enum": [SCHEMA_VERSION]},
        "created": _STR,
        "recipe_file": {"type": ["string", "null"]},
        "environment": _obj(["python", "torch", "torchvision", "torch_pruning", "cpu", "gpu", "threads", "seed",
                             "device"],
                            {"python": _STR, "torch": _STR, "torchvision": {"type": ["string", "null"]},
                             "torch_pruning": {"type": ["string", "null"]}, "cpu": _STR,
                             "gpu": {"type": ["string", "null"]}, "threads": {"type": "integer", "minimum": 1},
                             "seed": {"type": ["integer", "null"]}, "device": _STR}),
        "data": _obj(["source", "synthetic", "sizes"], {"source": _STR, "synthetic": {"type": "boolean"},
                                                         "sizes": {"type": "object",
                                                                   "additionalProperties": _INT}}),
        "baseline": _SUMMARY,
        "final": _SUMMARY,
        "reduction": {"type": "object", "additionalProperties": _NUM},
        "steps": {"type": "array", "items": _STEP},
        "runtimes": {"type": "array", "items": _STR},
        "latency": {"type": "array", "items": _LATENCY_ROW},
        "onnx": _ONNX,
        "artifacts": {"type": "object", "additionalProperties": {"type": "object", "required": ["file"],
                                                                 "properties": {"file": _STR}}},
        "layers": {"type": "array", "items": _LAYER_ROW},
        "layers_timing": {"type": ["object", "null"], "properties": {"device": _STR, "dtype": _STR,
                                                                      "batch": _INT, "runs": _INT}},
        "rewrites": {"type": "array", "items": _REWRITE_ROW},
        "serialized_bytes": {"type": "object", "additionalProperties": _INT},
        "plots": {"type": "array", "items": _STR},
        "notes": {"type": "array", "items": _STR},
    },
)


class SchemaError(ValueError):
    """The report does not match :data:`REPORT_SCHEMA` (a bug in whatever built it, not a user error)."""


_TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _is(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    """Every violation of ``schema`` by ``value``, as ``"path: problem"`` strings (empty when valid)."""
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is(value, n) for n in names):
            return [f"{path}: expected {' or '.join(names)}, got {type(value).__name__}"]
    errors: list[str] = []
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: expected one of {schema['enum']}, got {value!r}")
    if "minimum" in schema and _is(value, "number") and value < schema["minimum"]:
        errors.append(f"{path}: expected >= {schema['minimum']}, got {value!r}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}: missing required key {k!r}" for k in schema.get("required", []) if k not in value]
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                errors += schema_errors(item, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    return errors


def validate(report: dict[str, Any], schema: dict[str, Any] | None = None) -> None:
    """Raise :class:`SchemaError` listing the first violations when ``report`` does not match the schema."""
    errors = schema_errors(report, REPORT_SCHEMA if schema is None else schema)
    if errors:
        shown = "; ".join(errors[:5]) + (f"; ... ({len(errors) - 5} more)" if len(errors) > 5 else "")
        raise SchemaError(f"report.json does not match schema {SCHEMA_VERSION}: {shown}")
