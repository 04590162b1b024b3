"""Command line: ``python -m compress.run [RECIPE] [--out DIR] [--device ...] [--set a.b=v ...] [--force]``.

Runs a recipe: obtain the baseline, execute its steps in order on a copy of the model, record each step's
accuracy/params/MACs, save the compressed model. Under ``torchrun`` every rank runs the same steps; rank 0 writes.
A killed run continues with ``--resume OUT``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import EXIT_USER_ERROR, CompressError

__all__ = ["main", "build_parser"]


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
        run_recipe(recipe_path=args.recipe, out=args.resume or args.out, device=args.device, overrides=args.set,
                   force=args.force, resume=bool(args.resume), verbose=not args.quiet)
    except CompressError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        out = args.resume or args.out or "OUT"
        print(f"\ninterrupted; continue with: python -m compress.run {args.recipe or ''} --resume {out}".replace("  ", " "),
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
