"""Reports: build the report dict of a run, validate it, write JSON / Markdown / HTML with plots."""
from __future__ import annotations

from .build import build_report
from .console import summary_text
from .schema import REPORT_SCHEMA, SCHEMA_VERSION, SchemaError, schema_errors, validate
from .write import write_report

__all__ = ["build_report", "write_report", "summary_text", "REPORT_SCHEMA", "SCHEMA_VERSION", "SchemaError",
           "schema_errors", "validate"]
