"""A wall-clock budget for in-process work that may hang (torch-pruning's graph code), and its time / memory.

torch-pruning builds its dependency graph and its groups in pure Python, in this process: on some architectures
it loops for minutes. :class:`TimeBudget` runs a watchdog thread that, once the budget is spent, raises an
exception *in the working thread* (CPython's ``PyThreadState_SetAsyncExc``), so it works in any thread (not
only the main one, unlike ``signal.alarm``), on any OS, and leaves signal handlers alone. The budget then
raises a :class:`~compress.errors.CompressError` naming where the work was (:func:`.where.locate`) and what to
try. The same thread samples the resident set size, for :class:`Usage`.

Limits:

* The exception lands between two Python bytecodes: one long native call (a huge convolution, a C loop) runs
  to its end first. Code inside :func:`protected` (snapshots and roll-backs of model state, cleanups) also runs
  to its end; the expiry is raised when it leaves.
* Code that swallows ``BaseException`` (torch-pruning's tracing has a bare ``except:``) delays it: the watchdog
  raises again every :data:`RETRY_S` seconds until the budgeted function has returned.
* Without ``ctypes.pythonapi`` (not CPython) nothing is interrupted: the expiry is only raised when a
  :func:`protected` region ends.
* The peak memory is the process's resident set size (Linux ``/proc``, ``getrusage`` elsewhere), tensors
  included: exact when the work raised the process's high-water mark, otherwise the highest of the samples taken
  every ``interval_s``; it includes whatever else the process holds.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

from torch import nn

from ...errors import CompressError
from .where import locate, module_names, thread_frames

__all__ = ["TimeBudget", "Usage", "protected", "RETRY_S"]

T = TypeVar("T")

RETRY_S = 1.0  # while the expiry has not ended the budget's block, raise it again this often

_LOCK = threading.Lock()
_PROTECTED: dict[int, int] = {}  # thread id -> depth of nested protected() regions
_PENDING: dict[int, "TimeBudget"] = {}  # thread id -> budget whose expiry was raised but may not have landed yet
_BUDGETS: dict[int, list["TimeBudget"]] = {}  # thread id -> budgets running in it, outermost first


@dataclass(frozen=True)
class Usage:
    """What a block run under a :class:`TimeBudget` took.

    Attributes:
        seconds: wall time.
        peak_rss_bytes: highest resident set size of the process seen while the function ran (see the module
            docstring), ``None`` where the OS reports none.
        start_rss_bytes: the resident set size when it started (torch alone holds several hundred MB).
    """

    seconds: float
    peak_rss_bytes: int | None
    start_rss_bytes: int | None

    @property
    def peak_increase_bytes(self) -> int | None:
        """How far the function raised the resident set size above its start."""
        if self.peak_rss_bytes is None or self.start_rss_bytes is None:
            return None
        return max(0, self.peak_rss_bytes - self.start_rss_bytes)


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> bool:
    """Raise ``exc`` in thread ``thread_id`` at its next bytecode (``None``: cancel a pending one)."""
    api = getattr(ctypes, "pythonapi", None)
    if api is None or not hasattr(api, "PyThreadState_SetAsyncExc"):
        return False
    obj = ctypes.py_object(exc) if exc is not None else ctypes.c_void_p(0)
    return api.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), obj) == 1


def _rss_now() -> int | None:
    """Current resident set size of this process in bytes (Linux), else ``None``."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _rss_high_water() -> int | None:
    """The process's peak resident set size so far in bytes (``getrusage``), else ``None``."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def protected() -> Iterator[None]:
    """Defer any :class:`TimeBudget` expiry of this thread to the end of the block (for state that must stay whole).

    Nestable. A budget that expires inside raises when the outermost protected block is left.
    """
    tid = threading.get_ident()
    with _LOCK:
        _PROTECTED[tid] = _PROTECTED.get(tid, 0) + 1
        pending = _PENDING.pop(tid, None)
        if pending is not None:  # raised but maybe not landed: cancel it, raise it at the end instead
            _set_async_exc(tid, None)
    try:
        yield
    finally:
        with _LOCK:
            _PROTECTED[tid] -= 1
            depth = _PROTECTED[tid]
            if not depth:
                del _PROTECTED[tid]
        expired = [b for b in _active(tid) if b.expired] if not depth else []
        if expired:
            raise expired[0].expiry()


def _active(tid: int) -> list["TimeBudget"]:
    with _LOCK:
        return list(_BUDGETS.get(tid, ()))


class TimeBudget:
    """``TimeBudget(120, what="prune", model=model).run(fn)`` runs ``fn()``, raising :class:`CompressError` after 120 s.

    Args:
        seconds: the budget; ``None`` measures only (no expiry).
        what: what ``fn`` does, starting the error message (e.g. ``"prune"``).
        model: the model worked on, to name its layers in the message.
        hint: what the user can try, ending the message.
        interval_s: how often the watchdog wakes (expiry latency and memory sampling period).

    After :meth:`run`, :attr:`usage` holds its :class:`Usage`. Budgets nest (each raises its own expiry).
    """

    def __init__(self, seconds: float | None, *, what: str, model: nn.Module | None = None, hint: str = "",
                 interval_s: float = 0.05) -> None:
        if seconds is not None and not seconds > 0:
            raise CompressError(f"{what}.time_budget_s: expected a number of seconds > 0 or null, got {seconds!r}")
        self.seconds, self.what, self.model, self.hint, self.interval_s = seconds, what, model, hint, interval_s
        self.expired = False
        self.usage: Usage | None = None
        self.where: str | None = None
        self._expiry = type("BudgetExpired", (BaseException,), {})  # unique: nested budgets tell theirs apart
        self._stop = threading.Event()
        self._peak: int | None = None
        self._open_state: bool | None = None  # None: not started, True: running, False: closed

    def expiry(self) -> BaseException:
        """The exception this budget raises in the working thread (:meth:`run` turns it into a CompressError)."""
        return self._expiry(f"{self.what}: time budget of {self.seconds} s spent")

    def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` within the budget (once per budget).

        Raises:
            CompressError: the budget was spent before ``fn`` returned; the message says where it was.
        """
        if self._open_state is not None:
            raise RuntimeError("a TimeBudget runs once")
        try:
            self._open()
            try:
                return fn(*args, **kwargs)
            finally:
                self._close()
        except BaseException as err:
            self._close()  # idempotent: the expiry may land before the first close is done
            if isinstance(err, self._expiry):
                where = f" {self.where}" if self.where else ""
                hint = f"; {self.hint}" if self.hint else ""
                raise CompressError(f"{self.what}: time budget of {self.seconds} s spent, still running{where}"
                                    f"{hint}") from None
            raise

    def _open(self) -> None:
        self._tid = threading.get_ident()
        self._start = time.perf_counter()
        self._high_water = _rss_high_water()
        self._peak = self._start_rss = _rss_now()
        self._names = module_names(self.model) if self.model is not None else {}
        with _LOCK:
            _BUDGETS.setdefault(self._tid, []).append(self)
            self._open_state = True
        self._watchdog = threading.Thread(target=self._watch, name="compress-time-budget", daemon=True)
        self._watchdog.start()

    def _sample(self) -> None:
        rss = _rss_now()
        if rss is not None and (self._peak is None or rss > self._peak):
            self._peak = rss

    def _watch(self) -> None:
        last_raise = None
        while not self._stop.wait(self.interval_s):
            self._sample()
            now = time.perf_counter()
            if self.seconds is None or now - self._start < self.seconds:
                continue
            if last_raise is not None and now - last_raise < RETRY_S:
                continue
            where = None if self.expired else locate(thread_frames(self._tid), self._names)
            with _LOCK:
                if self._stop.is_set():
                    return
                if not self.expired:
                    self.expired, self.where = True, where.describe() if where is not None else None
                if not _PROTECTED.get(self._tid) and _set_async_exc(self._tid, self._expiry):
                    _PENDING[self._tid] = self
                last_raise = now

    def _close(self) -> None:
        with _LOCK:
            if not self._open_state:
                return
            self._open_state = False
            self._stop.set()
            if _PENDING.get(self._tid) is self:  # raised but maybe not landed (fn ended first): cancel it
                del _PENDING[self._tid]
                _set_async_exc(self._tid, None)
            _BUDGETS[self._tid].remove(self)
            if not _BUDGETS[self._tid]:
                del _BUDGETS[self._tid]
        self._watchdog.join()
        self._sample()
        high_water = _rss_high_water()
        peak = self._peak
        if high_water is not None and (self._high_water is None or high_water > self._high_water):
            peak = max(peak or 0, high_water)  # fn set the process's high-water mark: that is its peak
        self.usage = Usage(round(time.perf_counter() - self._start, 3), peak, self._start_rss)
