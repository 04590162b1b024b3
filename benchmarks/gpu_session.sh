#!/usr/bin/env bash
# The one GPU session script (run through the device tool with `carry: [.whl, .data]`): GPU latency of
# compressed torchvision models, then the default recipe on CUDA with CPU+CUDA latency rows. Outputs to $OUT.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD COMPRESS_DATA=$PWD/.data COMPRESS_CACHE=/tmp/cache PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/gpu}; mkdir -p "$OUT"
nvidia-smi -L > "$OUT/gpu.txt"; python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" >> "$OUT/gpu.txt"
timeout 80 python3 benchmarks/gpu_latency.py --dtype bfloat16 --batch 64 > "$OUT/gpu_latency.md" 2> "$OUT/gpu_latency.err"
timeout 100 python3 -m compress.run --device cuda --out /tmp/default_cuda --quiet \
    --set 'steps.4.report.devices=[cpu,cuda]' > "$OUT/default_cuda.log" 2>&1
for f in report.json report.md; do cp /tmp/default_cuda/$f "$OUT/default_cuda_$f" 2>/dev/null; done
for f in "$OUT"/*.md; do tail -n 5 "$f"; done
