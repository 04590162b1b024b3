"""Command line: ``python -m compress.run [RECIPE] [--out DIR] [--device ...] [--set a.b=v ...] [--force]``.

Runs a recipe: obtain the baseline, execute its steps in order on a copy of the model, record each step's
accuracy/params/MACs, save the compressed model. Under ``torchrun`` every rank runs the same steps; rank 0 writes.
A killed run continues with ``--resume OUT``.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Iterator

from .errors import EXIT_USER_ERROR, CompressError

__all__ = ["main", "build_parser", "EXIT_INTERRUPTED"]

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compress", description="Analyze, compress, fine-tune and report a convnet as a YAML recipe says.")
    parser.add_argument("recipe", nargs="?", help="recipe YAML (default: the embedded default recipe)")
    parser.add_argument("--out", help="output directory (default: the recipe's `out`)")
    parser.add_argument("--device", choices=None, help="auto, cpu, cuda or cuda:N (default: the recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                        help="override a recipe field, e.g. --set data.train_subset=2000 (repeatable)")
    parser.add_argument("--force", action="store_true", help="replace an existing output directory")
    parser.add_argument("--resume", metavar="OUT", help="continue the killed run in OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status (0 ok, 2 user error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    from .runner import run_recipe

    try:
        with _sigterm_as_interrupt(), _console_logging(quiet=args.quiet):
            run_recipe(recipe_path=args.recipe, out=args.resume or args.out, device=args.device,
                       overrides=args.set, force=args.force, resume=bool(args.resume), verbose=not args.quiet)
    except CompressError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as err:
        print(f"\ninterrupted; continue with: {_resume_command(args, getattr(err, 'out_dir', None))}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _resume_command(args: argparse.Namespace, out_dir: Path | None) -> str:
    """The command that continues this run: same recipe, overrides and device (resume checks the recipe)."""
    parts = ["python -m compress.run"]
    if args.recipe:
        parts.append(shlex.quote(args.recipe))
    parts += ["--resume", shlex.quote(str(out_dir or args.resume or args.out or "OUT"))]
    if args.device:
        parts += ["--device", shlex.quote(args.device)]
    parts += [f"--set {shlex.quote(item)}" for item in args.set]
    return " ".join(parts)


class _Below(logging.Filter):
    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < self.level


@contextlib.contextmanager
def _console_logging(*, quiet: bool) -> Iterator[None]:
    """While the CLI runs: the package's log lines on the console, INFO on stdout (silenced by ``--quiet``), warnings
    on stderr as ``warning: ...``. The handlers are removed afterwards (``main`` may be called again in-process)."""
    logger = logging.getLogger("compress")
    out = logging.StreamHandler(sys.stdout)
    out.addFilter(_Below(logging.WARNING))
    out.setFormatter(logging.Formatter("%(message)s"))
    err = logging.StreamHandler(sys.stderr)
    err.setLevel(logging.WARNING)
    err.setFormatter(logging.Formatter("warning: %(message)s"))
    previous = logger.level, logger.propagate
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False
    logger.addHandler(out)
    logger.addHandler(err)
    try:
        yield
    finally:
        logger.removeHandler(out)
        logger.removeHandler(err)
        logger.setLevel(previous[0])
        logger.propagate = previous[1]


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a scheduler's or ``kill``'s stop request) like Ctrl-C: stop resumably, exit 130.

    The training loop installs its own handler while it runs, to checkpoint before stopping.
    """
    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
