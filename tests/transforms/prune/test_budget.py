"""TimeBudget: a hang becomes a CompressError naming the layer; protected regions finish; time and memory."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from torch import nn

from compress.errors import CompressError
from compress.transforms.prune.budget import TimeBudget, protected
from compress.transforms.prune.pruner import prune

SLACK_S = 5.0  # a loaded 2-core box may run the watchdog late; expiry must still come well before a hang would


class Spin(nn.Module):
    """A layer whose forward never returns (like torch-pruning looping over a graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        while True:
            x = x + 0


def _wait(seconds: float) -> None:
    """Sleep in short steps (one long ``time.sleep`` is a single C call, which an expiry cannot cut short)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        time.sleep(0.01)


def _spinning_net() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), Spin()))


def test_a_hang_raises_compress_error_naming_the_layer_and_the_hint():
    net = _spinning_net()
    budget = TimeBudget(0.5, what="prune", model=net, hint="put it in ignored_layers")
    start = time.perf_counter()
    with pytest.raises(CompressError, match=r"prune: time budget of 0.5 s spent, still running at module '1.1' "
                                            r"in forward .*; put it in ignored_layers"):
        budget.run(net, torch.randn(1, 3, 8, 8))
    assert time.perf_counter() - start < 0.5 + SLACK_S
    assert budget.usage.seconds >= 0.5


def test_code_swallowing_the_expiry_is_interrupted_again():
    def swallowing() -> None:
        try:
            _wait(60)
        except BaseException:  # like torch-pruning's bare except around the traced forward: it tries again
            _wait(60)

    with pytest.raises(CompressError, match="time budget of 0.2 s spent"):
        TimeBudget(0.2, what="x").run(swallowing)


def test_a_protected_region_finishes_and_the_expiry_follows():
    done = []

    def work() -> None:
        with protected():
            time.sleep(0.6)  # the budget runs out in here
            done.append("protected")
        done.append("after")

    with pytest.raises(CompressError):
        TimeBudget(0.1, what="x").run(work)
    assert done == ["protected"]


def test_nothing_is_raised_after_a_run_that_finished_in_time():
    budget = TimeBudget(0.2, what="x")
    assert budget.run(sum, range(1000)) == 499500
    time.sleep(0.5)  # past the budget: no stray exception lands here
    assert budget.usage.seconds < 0.2 and not budget.expired


def _expiry_message(what: str) -> str:
    """Run a 3 s wait under a 0.2 s budget; the CompressError's message (empty if none was raised)."""
    try:
        TimeBudget(0.2, what=what).run(_wait, 3)
    except CompressError as err:
        return str(err)
    return ""


def test_nested_budgets_raise_their_own_expiry():
    inner_error = []

    def outer() -> str:
        inner_error.append(_expiry_message("inner"))
        return "outer finished"

    assert TimeBudget(10, what="outer").run(outer) == "outer finished"
    assert inner_error[0].startswith("inner: time budget")
    with pytest.raises(CompressError, match="^outer: time budget"):
        TimeBudget(0.2, what="outer").run(lambda: TimeBudget(10, what="inner").run(_wait, 3))


def test_a_budget_works_outside_the_main_thread():
    errors = []
    thread = threading.Thread(target=lambda: errors.append(_expiry_message("thread")))
    thread.start()
    thread.join(timeout=3 + SLACK_S)
    assert errors and errors[0].startswith("thread: time budget")


def test_usage_reports_the_peak_memory_of_the_run():
    budget = TimeBudget(None, what="x")

    def allocate() -> int:
        big = torch.ones(64, 1024, 1024)  # 256 MiB, touched
        time.sleep(0.2)  # a few watchdog samples while it is held
        return int(big[0, 0, 0])

    assert budget.run(allocate) == 1
    if budget.usage.peak_rss_bytes is None:
        pytest.skip("no resident set size on this OS")
    assert budget.usage.peak_increase_bytes >= 200 * 2**20
    assert budget.usage.peak_rss_bytes >= budget.usage.start_rss_bytes + budget.usage.peak_increase_bytes


def test_prune_reports_time_and_memory_and_refuses_a_bad_budget():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    result = prune(model, x, ratio=0.3, time_budget_s=60)
    assert result.time_budget_s == 60 and 0 < result.seconds < 60
    assert result.peak_rss_bytes is None or result.peak_rss_bytes > 0
    with pytest.raises(CompressError, match=r"prune.time_budget_s: expected a number of seconds > 0 or null, got 0"):
        prune(model, x, ratio=0.3, time_budget_s=0)
