"""Latency-aware compression planning: measured per-device latency tables, a NetAdapt-style planner, apply.

``plan(model, example_inputs, PlanOptions(target={"latency": 0.5}, runtime="onnxruntime", batch=64))`` returns a
:class:`Plan`;
``apply_plan(model, plan, example_inputs)`` performs it. The recipe step ``plan`` lives in
:mod:`compress.planning.step`.
"""
from .apply import apply_plan
from .candidates import Form, aligned_widths, default_align
from .options import PlanOptions
from .planner import plan
from .result import Iteration, LayerChoice, Plan
from .table import LatencyTable, TableRequest, build_table, default_requests

__all__ = ["plan", "PlanOptions", "apply_plan", "Plan", "LayerChoice", "Iteration", "Form", "aligned_widths", "default_align",
           "LatencyTable", "TableRequest", "build_table", "default_requests"]
