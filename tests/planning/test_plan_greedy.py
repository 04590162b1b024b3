"""greedy: a rewrite predicted to save less than MIN_FORM_GAIN of its conv's time is not taken."""
from __future__ import annotations

import pytest

from compress.planning import Form
from compress.planning.greedy import MIN_FORM_GAIN, greedy
from compress.planning.problem import Problem, Site
from compress.planning.shapes import ConvShape

SHAPE = ConvShape(32, 32, (3, 3), (1, 1), (1, 1), (1, 1), 1, False, (8, 8), (8, 8))


class FixedTimes:
    """Dense conv 1.0 ms; each rewrite at the time given."""

    unit = "ms"

    def __init__(self, times: dict[str, float]) -> None:
        self.times = times

    def conv(self, site, out_width, in_width, form):
        return 1.0 if form is None else self.times[form.key]


@pytest.mark.parametrize("rewrite_ms, taken", [(1.0 - MIN_FORM_GAIN / 2, False), (1.0 - 2 * MIN_FORM_GAIN, True)])
def test_small_rewrite_gains_are_noise(rewrite_ms, taken):
    form = Form("grouped", 2)
    problem = Problem({"c": Site("c", SHAPE, forms=[form], form_costs={form.key: 0.1})}, [])
    state, moves = greedy(problem, FixedTimes({form.key: rewrite_ms}), other=0.0, target=0.5, decrement=0.05)
    assert (state.forms.get("c") == form) == taken and len(moves) == int(taken)
