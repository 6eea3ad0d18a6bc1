#!/usr/bin/env bash
# Every GPU check in one call, for a machine lent for a few minutes: the GPU tests, then
# benchmarks/gpu.py in full. Each step has its own time limit, so a hang in one still
# leaves the others' results; logs go to $OUT (or ./gpu-check) to bring back.
#
#   bash benchmarks/gpu_check.sh          # about 5 minutes on one H200
set -u
out="${OUT:-gpu-check}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python -c "import torch, ray; print('torch', torch.__version__, 'ray', ray.__version__)" | tee -a "$out/gpu.txt"
timeout 240 python -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_batched.py \
    tests/test_gpu_memory.py 2>&1 | tee "$out/tests.txt" | tail -5
timeout 420 python benchmarks/gpu.py 2>&1 | grep -v "WARNING\|INFO" | tee "$out/benchmark.txt"
