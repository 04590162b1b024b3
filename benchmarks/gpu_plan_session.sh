#!/usr/bin/env bash
# Issue 9's GPU check, one prepared run through the device tool (`carry: [.whl]`; .whl = wheels from
# `pip download torch-pruning==1.6.0 --no-deps -d .whl && pip download pytest -d .whl`): first the `gpu`-marked
# planner test (tests/planning/test_plan_cuda.py), then ResNet-18, MobileNetV2 and EfficientNet-B0 planned for
# CUDA bf16 channels_last batch 64 (latency target 0.7, forms prune + drop, ResNet-18 also separable/grouped),
# each timed against its original and torch-pruning's uniform 50% in one interleaved run. Writes $OUT/gpu_plan.md.
#   run: bash benchmarks/gpu_plan_session.sh      (about 5-8 min on one H100; copy $OUT into benchmarks/results/gpu/)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD COMPRESS_CACHE=/tmp/cache PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/gpu}; mkdir -p "$OUT"
nvidia-smi -L > "$OUT/gpu_plan_device.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" >> "$OUT/gpu_plan_device.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/planning/test_plan_cuda.py > "$OUT/gpu_plan_tests.log" 2>&1
echo "exit $?" >> "$OUT/gpu_plan_tests.log"
timeout 480 python3 benchmarks/gpu_plan.py --out "$OUT/gpu_plan.md" > "$OUT/gpu_plan.log" 2>&1
echo "exit $?" >> "$OUT/gpu_plan.log"
tail -n 30 "$OUT/gpu_plan.md" 2>/dev/null || tail -n 30 "$OUT/gpu_plan.log"
