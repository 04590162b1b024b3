"""NetAdapt-style greedy search over group widths and rewrites.

Each step asks for a decrement of the predicted resource (ms, MACs or parameters). For every prunable group it
takes the widest candidate width that saves at least the decrement (so a plateau of the measured staircase is
jumped over, never paid for), for every dense conv each rewrite that saves anything, for every droppable
residual block its drop, and applies the move with the lowest accuracy cost per unit saved. When no move
reaches the decrement, the best cost per unit saved among all saving moves is taken. Steps repeat until the target is met or nothing saves any more.
"""
from __future__ import annotations

from dataclasses import dataclass

from tqdm import tqdm

from .candidates import Form
from .predict import Resource, State, site_widths, total
from .problem import Problem

__all__ = ["Move", "greedy", "MIN_FORM_GAIN"]

# A rewrite adds ops and costs accuracy: one predicted to save less than this share of its dense conv's time is
# within the latency table's noise (and the dense time at pruned widths is itself a product-of-staircases model).
MIN_FORM_GAIN = 0.05


@dataclass(frozen=True)
class Move:
    """One greedy step: a group pruned to ``width`` (``group`` set), a conv rewritten (``site`` set) or a
    residual block dropped (``block`` set)."""

    saving: float
    cost: float
    group: int | None = None
    width: int | None = None
    site: str | None = None
    form: Form | None = None
    block: str | None = None

    def apply(self, problem: Problem, state: State) -> None:
        if self.group is not None:
            state.widths[self.group] = self.width
        elif self.block is not None:
            state.drop(problem, self.block)
        else:
            state.forms[self.site] = self.form

    def key(self) -> tuple[float, float]:
        # lowest cost per unit saved; among free moves, the largest saving
        return (self.cost / self.saving, -self.saving)


def _fits(problem: Problem, state: State, names: list[str]) -> bool:
    """Every rewrite chosen for ``names`` still fits the widths of ``state``."""
    for name in names:
        form = state.forms.get(name)
        if form is not None:
            a, b = site_widths(problem.sites[name], state)
            if not form.fits(problem.sites[name].shape.with_channels(b, a)):
                return False
    return True


def _prune_moves(problem: Problem, resource: Resource, state: State, gid: int, names: list[str],
                 decrement: float) -> tuple[Move | None, Move | None]:
    """``(widest width reaching decrement, best cost-per-saving width)`` of group ``gid`` (``None``: none)."""
    g, now = problem.groups[gid], state.widths[gid]
    before = total(problem, resource, state, names)
    reaching, best = None, None
    for width in (w for w in g.grid if w < now):
        trial = state.copy()
        trial.widths[gid] = width
        if not _fits(problem, trial, names):
            continue
        saving = before - total(problem, resource, trial, names)
        if saving <= 0:
            continue
        move = Move(saving, g.cost_to(width) - g.cost_to(now), group=gid, width=width)
        if reaching is None and saving >= decrement:
            reaching = move
        if best is None or move.key() < best.key():
            best = move
    return reaching, best


def _form_moves(problem: Problem, resource: Resource, state: State) -> list[Move]:
    moves = []
    for name, site in problem.sites.items():
        if name in state.forms or not site.forms or not state.runs(site):
            continue
        a, b = site_widths(site, state)
        dense = resource.conv(site, a, b, None)
        for form in site.forms:
            if form.fits(site.shape.with_channels(b, a)):
                saving = dense - resource.conv(site, a, b, form)
                if saving > MIN_FORM_GAIN * dense:
                    moves.append(Move(saving, site.form_costs[form.key], site=name, form=form))
    return moves


def _drop_moves(problem: Problem, resource: Resource, state: State) -> list[Move]:
    """Dropping each block still in place: saves its convs at their current widths plus its overhead."""
    before = total(problem, resource, state)
    moves = []
    for name, block in problem.blocks.items():
        if name not in state.dropped:
            trial = state.copy()
            trial.drop(problem, name)
            saving = before - total(problem, resource, trial)
            if saving > 0:
                moves.append(Move(saving, block.cost, block=name))
    return moves


def greedy(problem: Problem, resource: Resource, *, other: float, target: float, decrement: float,
           max_steps: int = 1000, verbose: bool = False) -> tuple[State, list[Move]]:
    """Shrink the predicted resource ``other + sum over sites`` to ``target`` at least accuracy cost.

    Args:
        problem: sites and groups (:func:`~compress.planning.problem.build_problem`).
        resource: latency, MACs or parameters per conv.
        other: the part of the model's resource no site accounts for (kept constant).
        target: predicted resource to reach.
        decrement: resource each step aims to remove (NetAdapt's per-iteration reduction).
        max_steps: bound on steps.
        verbose: progress bar.

    Returns:
        ``(state, moves)``: the final state and the moves taken, in order.
    """
    state = State.initial(problem)
    members = {gid: problem.group_sites(gid) for gid in range(len(problem.groups))}
    current = other + total(problem, resource, state)
    moves: list[Move] = []
    bar = tqdm(total=max_steps, desc="plan", leave=False, disable=not verbose)
    while current > target and len(moves) < max_steps:
        step = min(decrement, current - target)
        forms = _form_moves(problem, resource, state) + _drop_moves(problem, resource, state)
        found = [_prune_moves(problem, resource, state, gid, names, step) for gid, names in members.items()]
        # NetAdapt: one candidate per group, the widest that reaches the decrement; else the best ratios
        pool = [r for r, _ in found if r is not None] + [m for m in forms if m.saving >= step]
        pool = pool or [b for _, b in found if b is not None] + forms
        if not pool:
            break  # nothing saves any more: the target is out of reach
        move = min(pool, key=Move.key)
        move.apply(problem, state)
        moves.append(move)
        current = other + total(problem, resource, state)
        bar.update()
    bar.close()
    return state, moves
