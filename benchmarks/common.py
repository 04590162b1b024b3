"""Shared plumbing of the benchmark scripts: where they ran, Markdown tables, isolated subprocess runs.

Every benchmark section records the exact command, the date, the machine (CPU model, threads, load average) and
the package versions next to its figures, so a number never loses its context.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["ROOT", "RESULTS", "machine", "versions", "context", "context_lines", "command_line", "md_table",
           "fmt", "Isolated", "run_isolated", "ensure_path"]


def ensure_path() -> None:
    """Put the repository root on ``sys.path`` so ``import compress`` works when a script runs from anywhere."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def machine() -> dict[str, Any]:
    """CPU model, logical CPUs, torch threads and the 1/5/15-minute load averages at call time."""
    ensure_path()
    import torch

    from compress.env import cpu_model

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_avg": [round(v, 2) for v in load]}


def versions() -> dict[str, str | None]:
    """Versions of the packages the figures depend on."""
    import platform

    from compress.env import package_version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "torch-pruning", "compress", "onnxruntime", "openvino"):
        out[name] = package_version(name)
    import torch

    out["torch"] = torch.__version__  # the build tag (+cpu / +cu130) matters for CPU kernels
    return out


def command_line(script: str, argv: Sequence[str]) -> str:
    """The shell command that reproduces a run, relative to the repository root."""
    return " ".join(["python", script, *(shlex.quote(a) for a in argv)]).strip()


def context(command: str) -> dict[str, Any]:
    """Command, UTC date/time, machine and versions: the header of every section."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"command": command, "date": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
            "versions": versions()}


def context_lines(ctx: dict[str, Any], *, seconds: float | None = None) -> list[str]:
    """Markdown bullet lines describing ``ctx`` (from :func:`context`)."""
    m, v = ctx["machine"], ctx["versions"]
    lines = [f"- command: `{ctx['command']}`",
             f"- date: {ctx['date']}" + (f"; wall time {seconds:.0f} s" if seconds is not None else ""),
             f"- machine: {m['cpu']}, {m['cpu_count']} logical CPUs, load average "
             f"{' / '.join(f'{x:.2f}' for x in m['load_avg'])} (1/5/15 min) at the start",
             "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val)]
    return lines


def fmt(value: Any, spec: str = ".4f", *, missing: str = "—") -> str:
    """``format(value, spec)``, or ``missing`` for ``None``."""
    if value is None:
        return missing
    if isinstance(value, float) and value != value:  # NaN
        return missing
    return format(value, spec) if spec else str(value)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are converted with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Isolated:
    """Outcome of :func:`run_isolated`.

    Attributes:
        status: ``"ok"``, ``"timeout"`` or ``"exit N"``.
        seconds: wall time.
        stdout / stderr: captured text (``stderr`` trimmed to its last lines).
        data: the JSON object printed on the last stdout line, when there is one.
    """

    status: str
    seconds: float
    stdout: str
    stderr: str
    data: dict[str, Any] | None = None


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def run_isolated(args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None,
                 tail_lines: int = 20) -> Isolated:
    """Run ``python ARGS`` from the repository root in a subprocess with a time limit.

    A hang or crash costs one result, never the caller: the child is killed at ``timeout`` seconds.
    """
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                              env=full_env, check=False)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        return Isolated("timeout", time.perf_counter() - start, out, f"killed after {timeout:g} s", _last_json(out))
    stderr = "\n".join(done.stderr.strip().splitlines()[-tail_lines:])
    status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    return Isolated(status, time.perf_counter() - start, done.stdout, stderr, _last_json(done.stdout))
