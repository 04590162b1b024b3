"""Pieces of the report: per-layer matching across rewrites, JSON conversion, the schema validator."""
from __future__ import annotations

import dataclasses

import json
import math

import numpy as np
import torch
from torch import nn

from compress.measurement import LayerLatency, cost
from compress.jsonable import jsonable
from compress.reporting.layers import layer_rows
from compress.reporting.schema import schema_errors


def test_layer_rows_sum_rewritten_children_and_keep_new_leaves():
    before = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU())
    after = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.Conv2d(4, 4, 3, padding=1, groups=4,
                                                                                bias=False)),
                          nn.ReLU(), nn.Identity())
    x = torch.randn(1, 3, 6, 6)
    cb, ca = cost(before, x), cost(after, x)
    rows = {r["name"]: r for r in layer_rows(cb, ca, ms_before=LayerLatency(ms={"0": 1.0, "1": 0.5}),
                                             ms_after=LayerLatency(ms={"0.0": 0.2, "0.1": 0.3, "1": 0.5}))}
    assert list(rows) == ["0", "1", "2"]
    assert rows["0"]["macs_before"] == 36 * 9 * 3 * 4
    assert rows["0"]["macs_after"] == 36 * 3 * 4 + 36 * 9 * 4
    assert rows["0"]["params_after"] == 12 + 36
    assert math.isclose(rows["0"]["ms_after"], 0.5) and rows["0"]["ms_before"] == 1.0
    assert rows["2"]["macs_before"] is None and rows["2"]["macs_after"] == 0  # a new leaf, no baseline row
    assert sum(r["macs_after"] for r in rows.values()) == ca.macs


def test_jsonable_makes_strict_json():
    value = {"t": torch.tensor(2.5), "small": torch.arange(3), "big": torch.zeros(10, 10), "nan": float("nan"),
             "np": np.float32(1.5), "arr": np.arange(2), "tuple": (1, float("inf")), 3: torch.device("cpu")}
    out = jsonable(value)
    assert out == {"t": 2.5, "small": [0, 1, 2], "big": {"tensor": [10, 10], "dtype": "float32"}, "nan": None,
                   "np": 1.5, "arr": [0, 1], "tuple": [1, None], "3": "cpu"}
    json.dumps(out, allow_nan=False)


def test_validator_subset():
    schema = {"type": "object", "required": ["a"], "additionalProperties": False,
              "properties": {"a": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                             "b": {"type": "string", "enum": ["x"]}}}
    assert schema_errors({"a": [1, 2]}, schema) == []
    assert schema_errors({"a": [0, True], "b": "y", "c": 1}, schema) == [
        "$.a[0]: expected >= 1, got 0", "$.a[1]: expected integer, got bool",
        "$.b: expected one of ['x'], got 'y'", "$: unexpected key 'c'"]
    assert schema_errors([], schema) == ["$: expected object, got list"]


def test_report_rewrite_keys_are_rewrite_record_fields():
    from compress.reporting.build import REWRITE_KEYS
    from compress.transforms.rewrite.apply import RewriteRecord

    assert set(REWRITE_KEYS) <= {f.name for f in dataclasses.fields(RewriteRecord)}
