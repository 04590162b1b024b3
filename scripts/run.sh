#!/usr/bin/env bash
# The main job: set up (idempotent), then run a recipe (default: the embedded default recipe).
# Extra arguments go to `python -m compress.run`, e.g. `bash scripts/run.sh recipes/x.yaml --out runs/x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m compress.run "$@"
