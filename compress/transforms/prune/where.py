"""Which layer torch-pruning was working on, read off a Python stack (a live thread's frames or a traceback).

torch-pruning's errors and hangs happen deep in its graph code, where no message names the layer. Its frames
hold the layer in their locals, though: a module of the model (``module``, ``layer``, ``self`` inside a forward),
a dependency-graph node (its ``.module``) or a dependency (its target node). :func:`locate` finds those, innermost
frame first; a node of a functional op (a ``torch.cat``, a split) is named after the nearest module feeding it.

:func:`tp_errors` turns any exception raised inside it into a :class:`~compress.errors.CompressError` that keeps
the original message and names the layer.
"""
from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass
from types import FrameType, TracebackType
from typing import Any, Iterator, Mapping

from torch import nn
from torch_pruning.dependency import Dependency, Node

from ...errors import CompressError

__all__ = ["Location", "locate", "thread_frames", "traceback_frames", "module_names", "describe_error", "tp_errors"]

_MAX_MODULES = 3  # distinct layers a location names (innermost first)
_MAX_HOPS = 4  # how far from a functional op's node to look for a named producer
_MAX_MESSAGE = 300  # characters of an exception message kept by describe_error


@dataclass(frozen=True)
class Location:
    """Where code was: the innermost frame, and the model's layers found in the frames' locals.

    Attributes:
        function / file / line: the innermost frame (``file`` shortened to the part after ``site-packages/``;
            ``line`` is ``None`` when a running frame reports none).
        modules: qualified names of the model's layers, innermost frame first (at most three, no duplicates).
    """

    function: str
    file: str
    line: int | None
    modules: tuple[str, ...] = ()

    @property
    def module(self) -> str | None:
        """The innermost layer found, or ``None``."""
        return self.modules[0] if self.modules else None

    def describe(self) -> str:
        """``"at module 'a' in fn (file:line), outer frames on 'b', 'c'"`` (just the frame when no layer was found)."""
        frame = f"{self.function} ({self.file}" + (f":{self.line})" if self.line is not None else ")")
        if not self.modules:
            return f"in {frame}"
        outer = f", outer frames on {', '.join(repr(m) for m in self.modules[1:])}" if len(self.modules) > 1 else ""
        return f"at module {self.modules[0]!r} in {frame}{outer}"


def module_names(model: nn.Module) -> dict[int, str]:
    """``id(module) -> qualified name`` for every submodule of ``model`` except the model itself."""
    return {id(m): name for name, m in model.named_modules() if name}


def thread_frames(thread_id: int) -> list[FrameType]:
    """The frames of a running thread, innermost first (empty when the thread is gone)."""
    frame = sys._current_frames().get(thread_id)
    out = []
    while frame is not None:
        out.append(frame)
        frame = frame.f_back
    return out


def traceback_frames(tb: TracebackType | None) -> list[FrameType]:
    """The frames of a traceback, innermost first."""
    return [frame for frame, _ in traceback.walk_tb(tb)][::-1]


def _named(value: Any, names: Mapping[int, str]) -> str | None:
    if isinstance(value, Dependency):
        value = value.target
    if isinstance(value, Node):
        return _node_name(value, names)
    return names.get(id(value)) if isinstance(value, nn.Module) else None


def _node_name(node: Node, names: Mapping[int, str]) -> str | None:
    """The node's module name, else that of the nearest named producer (then consumer) within a few hops."""
    frontier, seen = [node], {id(node)}
    for _ in range(_MAX_HOPS + 1):
        for n in frontier:
            if id(n.module) in names:
                return names[id(n.module)]
        nxt = [m for n in frontier for m in (*n.inputs, *n.outputs) if id(m) not in seen]
        seen.update(id(m) for m in nxt)
        frontier = nxt
    return None


def _short(path: str) -> str:
    return path.split("site-packages/")[-1]


def locate(frames: list[FrameType], names: Mapping[int, str]) -> Location | None:
    """Where ``frames`` (innermost first) were, naming the model's layers their locals hold.

    Args:
        frames: from :func:`thread_frames` or :func:`traceback_frames`.
        names: from :func:`module_names`.

    Returns:
        ``None`` for no frames.
    """
    if not frames:
        return None
    found: list[str] = []
    for frame in frames:
        for value in list(frame.f_locals.values()):
            name = _named(value, names)
            if name is not None and name not in found:
                found.append(name)
                break  # one layer per frame: the first local the frame names
        if len(found) >= _MAX_MODULES:
            break
    inner = frames[0]
    return Location(inner.f_code.co_name, _short(inner.f_code.co_filename), inner.f_lineno, tuple(found))


def describe_error(err: BaseException, names: Mapping[int, str]) -> str:
    """``"IndexError: message (at module 'a' in fn (file:line))"`` on one line, the message cut to 300 characters.

    Args:
        names: from :func:`module_names`.
    """
    where = locate(traceback_frames(err.__traceback__), names)
    message = str(err).replace("\n", " ")
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE] + "..."
    return f"{type(err).__name__}: {message}" + (f" ({where.describe()})" if where is not None else "")


@contextlib.contextmanager
def tp_errors(model: nn.Module, doing: str, *, hint: str = "") -> Iterator[None]:
    """Turn an exception raised inside into a :class:`CompressError` naming the layer, with the original message.

    Args:
        model: the model torch-pruning works on (to name its layers).
        doing: what was being done, e.g. ``"building torch-pruning's dependency graph"``; starts the message.
        hint: what the user can do about it; ends the message.

    A :class:`CompressError` passes unchanged, and so do exceptions that do not derive from
    ``Exception`` (``KeyboardInterrupt``, a time budget's expiry). The original is chained (``__cause__``).
    """
    try:
        yield
    except CompressError:
        raise
    except Exception as err:
        where = locate(traceback_frames(err.__traceback__), module_names(model))
        place = f" {where.describe()}" if where is not None else ""
        end = f"; {hint}" if hint else ""
        raise CompressError(f"{doing} failed{place}: {type(err).__name__}: {err}{end}") from err
