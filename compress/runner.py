"""Executes a parsed recipe step by step, with per-step state so a killed run can resume."""
from __future__ import annotations

import logging

import copy
import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .artifacts import ARTIFACT_FILES
from .baseline import given_baseline, obtain_baseline
from .config import to_plain
from .context import RunContext
from .data import build_data
from .env import environment, resolve_device, seed_everything
from .errors import CompressError
from .io import atomic_torch_save, atomic_write_json, atomic_write_text
from .outdir import MARKER, OutDirLock, prepare_out_dir, undo_prepare
from .recipe.registry import get_step
from .records import BaselineDetails, StepRecord
from .recipe.schema import Recipe, load_recipe, recipe_to_data

__all__ = ["run_recipe", "PROGRESS_FILE"]

LOG = logging.getLogger(__name__)

PROGRESS_FILE = "progress.json"  # inside OUT/state: completed steps and their records (plain JSON, for people)
RECORDS_FILE = "records.pt"  # inside OUT/state: the same records, typed (what a resumed run continues with)


def _state_dir(out: Path) -> Path:
    return out / "state"


def _save_progress(ctx: RunContext, completed: int) -> None:
    """After step ``completed`` (-1: baseline only): the model so far, the records, the analysis location."""
    from .serialization import save

    state = _state_dir(ctx.out_dir)
    save(ctx.model, state / "model.pt", spec=ctx.model_spec())
    atomic_torch_save(ctx.records, state / RECORDS_FILE)  # the typed records, exactly (resume restores them)
    atomic_write_json(state / PROGRESS_FILE, {
        "completed": completed,
        "records": [r.to_plain() for r in ctx.records],
        "analysis": str(ctx.out_dir / "analysis") if ctx.analysis is not None else None,
        "recipe": to_plain(ctx.recipe),
    })


def _load_progress(ctx: RunContext) -> int:
    """Restore the model, records and analysis of a killed run; return the index of the last completed step."""
    from .serialization import load

    state = _state_dir(ctx.out_dir)
    progress_path = state / PROGRESS_FILE
    if not progress_path.is_file():
        return -2  # killed before the baseline was recorded: start over (baseline is cached)
    progress = json.loads(progress_path.read_text())
    if progress["recipe"] != to_plain(ctx.recipe):
        raise CompressError(f"--resume {ctx.out_dir}: the recipe differs from the one this run started with "
                            f"(saved in {ctx.out_dir / 'recipe.yaml'}); resume with that recipe")
    ctx.model = load(state / "model.pt").to(ctx.device)
    ctx.records = _load_records(state / RECORDS_FILE)
    if progress.get("analysis"):
        from .analysis import load_analysis

        ctx.analysis = load_analysis(progress["analysis"])
    return int(progress["completed"])


def _load_records(path: Path) -> list[StepRecord]:
    """The typed step records a killed run saved (this run's own file: a pickle of compress's dataclasses)."""
    try:
        records = torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, AttributeError, ModuleNotFoundError) as err:
        raise CompressError(f"--resume: cannot read the saved step records {path} ({type(err).__name__}: {err}); "
                            "start the run again without --resume") from None
    if not isinstance(records, list) or not all(isinstance(r, StepRecord) for r in records):
        raise CompressError(f"--resume: {path} does not hold step records; start the run again without --resume")
    return records


def _build_context(recipe: Recipe, recipe_name: str | None, out: Path, device: torch.device, rank: int,
                   world: int, verbose: bool, *, model: nn.Module | None, splits: Any) -> RunContext:
    from .training.distributed import distributed_loader

    data = build_data(recipe.data, seed=recipe.seed, splits=splits)
    if world > 1:
        data.train = distributed_loader(data.train, shuffle=True, seed=recipe.seed)
    if model is not None:
        baseline, origin = given_baseline(model, data, device=device)
    else:
        baseline, origin = obtain_baseline(recipe.model, recipe.data, recipe.baseline.train, data, device=device,
                                           seed=recipe.seed, cache=recipe.baseline.cache,
                                           cache_dir=recipe.baseline.cache_dir, verbose=verbose and rank == 0)
    for p in baseline.parameters():
        p.requires_grad_(False)
    model = copy.deepcopy(baseline)
    for p in model.parameters():
        p.requires_grad_(True)
    example = torch.zeros(1, *data.input_shape, device=device)
    ctx = RunContext(out_dir=out, device=device, seed=recipe.seed, model=model, baseline=baseline, data=data,
                     example_inputs=example, recipe=recipe, recipe_file=recipe_name, rank=rank, world_size=world,
                     environment=environment(seed=recipe.seed, device=device))
    ctx.environment["world_size"] = world
    ctx.baseline_origin = origin
    ctx.verbose = verbose and rank == 0
    return ctx


def _run_steps(ctx: RunContext, start: int, verbose: bool) -> None:
    from .training.distributed import barrier

    for index in range(start, len(ctx.recipe.steps)):
        entry = ctx.recipe.steps[index]
        ctx.step_index = index
        spec = get_step(entry.name)
        if verbose and ctx.is_main:
            LOG.info(f"[{index + 1}/{len(ctx.recipe.steps)}] {entry.name}")
        seed_everything(ctx.seed + 1000 * (index + 1))
        began = time.perf_counter()
        try:
            details = spec.handler(ctx, entry.config)
        except CompressError as err:  # name the step: the same kind may appear several times in a recipe
            raise CompressError(f"steps[{index}] {entry.name}: {err}") from err
        if not isinstance(details, spec.details):  # a bug in the step, not the user's input
            raise TypeError(f"step {entry.name!r} returned {type(details).__name__}, not {spec.details.__name__}")
        seconds = time.perf_counter() - began
        ctx.resume = False
        if entry.name != "report":
            rec = ctx.record(entry.name, details, seconds=seconds)
            if verbose and ctx.is_main:
                m = rec.metrics
                LOG.info(f"    top1 {m.get('top1', float('nan')):.4f}  params {m.get('params')}  macs {m.get('macs')}"
                         f"  ({seconds:.1f}s)")
        if ctx.is_main:
            _save_progress(ctx, index)
        barrier()


def run_recipe(*, recipe_path: str | None = None, out: str | None = None, device: str | None = None,
               overrides: list[str] | tuple[str, ...] = (), force: bool = False, resume: bool = False,
               verbose: bool = True, model: nn.Module | None = None, data: Any = None) -> RunContext:
    """Run a recipe end to end and return the final context (model, records, analysis); its ``report`` steps
    write the report into ``out`` exactly as the CLI does.

    Args:
        recipe_path: YAML file, or ``None`` for the embedded default recipe.
        out: output directory (default: the recipe's ``out``).
        device: overrides the recipe's device (``auto``, ``cpu``, ``cuda``...).
        overrides: ``a.b=value`` strings applied to the recipe before validation.
        force: replace an existing output directory.
        resume: continue the run in ``out`` (with an in-memory ``model`` / ``data``, pass the same ones again).
        model: an in-memory trained model to compress instead of the recipe's ``model`` section (a copy is
            used; the object passed is never changed). Saved files then pickle the module (its class must be
            importable to load ``model.pt``); ``model.pt2`` / ``model.onnx`` need no code.
        data: in-memory data instead of the recipe's ``data.source``: a mapping with ``train`` and ``test``
            datasets or loaders (``val``, ``calib``, ``num_classes`` optional), as a data factory returns (see
            :mod:`compress.data.factory`); the recipe's loader options (batch sizes, val/calib sizes) apply.

    Raises:
        CompressError: a bad recipe (before the output directory is touched), bad data or model (the new
            output directory is removed again), or a step's error (prefixed ``steps[i] NAME:``).
        KeyboardInterrupt: SIGINT/SIGTERM; its ``out_dir`` attribute names the resumable directory.
    """
    from .training.distributed import barrier, init_distributed

    recipe = load_recipe(recipe_path, overrides=list(overrides))  # all validation before the directory exists
    if device:
        recipe = _with_device(recipe, device)
    rank, world, local_rank = init_distributed()
    out_dir = Path(out or recipe.out)
    dev = resolve_device(recipe.device, local_rank=local_rank)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    lock = OutDirLock(out_dir)
    created = not out_dir.exists() or (force and (out_dir / MARKER).is_file())
    if rank == 0:
        prepare_out_dir(out_dir, force=force, resume=resume,
                        protected=(recipe.model.checkpoint or "", recipe.data.root or ""))
        lock.acquire()
    barrier()
    undo = False
    try:
        seed_everything(recipe.seed)
        ctx = _build_context(recipe, recipe_path, out_dir, dev, rank, world, verbose, model=model, splits=data)
        start = _first_step(ctx, resume, verbose)
        if not ctx.records:
            _record_baseline(ctx)
        _run_steps(ctx, start, verbose)
        if rank == 0:
            _write_results(ctx)
        return ctx
    except KeyboardInterrupt as err:
        err.out_dir = out_dir  # type: ignore[attr-defined]  # the CLI's resume hint names it
        raise
    except Exception:
        # Failed before any output (bad data, model, checkpoint): leave no run directory behind.
        undo = rank == 0 and not resume and not (_state_dir(out_dir) / PROGRESS_FILE).is_file()
        raise
    finally:
        lock.release()
        if undo:
            undo_prepare(out_dir, created=created)


def _first_step(ctx: RunContext, resume: bool, verbose: bool) -> int:
    """Index of the first step to execute (after the last completed one when resuming)."""
    if not resume:
        return 0
    start = max(_load_progress(ctx) + 1, 0)
    ctx.resume = True
    if verbose and ctx.is_main:
        LOG.info(f"resuming {ctx.out_dir} at step {start + 1}/{len(ctx.recipe.steps)}")
    return start


def _record_baseline(ctx: RunContext) -> None:
    """Measure the baseline; write the validated recipe, the baseline model and the first progress state."""
    from .serialization import save

    ctx.records.append(StepRecord("baseline", "baseline", ctx.measure(ctx.baseline),
                                  BaselineDetails(origin=ctx.baseline_origin)))
    if ctx.is_main:
        atomic_write_text(ctx.out_dir / "recipe.yaml", yaml.safe_dump(recipe_to_data(ctx.recipe), sort_keys=False))
        save(ctx.baseline, ctx.out_dir / "baseline.pt", spec=ctx.model_spec())
        _save_progress(ctx, -1)


def _write_results(ctx: RunContext) -> None:
    """The compressed model, its deploy artifacts (unless a report step already wrote them for the final model),
    ``run.json`` (environment, data, every step's record), and one line naming what was written."""
    from .serialization import save

    save(ctx.model, ctx.out_dir / "model.pt", spec=ctx.model_spec())
    notes: list[str] = []
    if ctx.artifacts_step != ctx.step_index:  # none yet, or steps changed the model after the report wrote them
        ctx.write_artifacts(notes)
    for note in notes:
        LOG.warning(note)
    atomic_write_json(ctx.out_dir / "run.json", {"environment": ctx.environment, "data": ctx.data.describe(),
                                                 "baseline": ctx.baseline_origin,
                                                 "steps": [r.to_plain() for r in ctx.records]})
    shipped = ["model.pt", *(n for n in ARTIFACT_FILES if (ctx.out_dir / n).is_file())]
    report = ctx.out_dir / "report.html"
    LOG.info("done: %s; models: %s (in %s)", f"report {report}" if report.is_file() else "no report step",
             ", ".join(shipped), ctx.out_dir)


def _with_device(recipe: Recipe, device: str) -> Recipe:
    """The recipe with ``device`` replaced (validated like the recipe field)."""
    from dataclasses import replace

    new = replace(recipe, device=device)
    try:
        new.validate()
    except CompressError as err:
        raise CompressError(f"--device: {err}") from None
    return new
